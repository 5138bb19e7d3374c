#!/usr/bin/env python3
"""N p2p-copy relay processes behind nginx on loopback, for local use, tests and measurements.

    python3 server/local_cluster.py --relays 3 --port 8080
    # ... prints ws://127.0.0.1:8080; Ctrl-C (or SIGTERM) stops everything

From Python (the tests do this):

    with LocalCluster(relays=3) as cluster:
        await p2p_copy.send(cluster.url, code, paths)    # peers connect to cluster.url/<hash>
        cluster.metrics(0)                                # relay 0's /metrics, parsed

nginx runs with its own prefix in a temporary directory (-p DIR -c DIR/nginx.conf,
``daemon off``), as the current user, and writes nothing outside that directory. Its
configuration is local.conf.template around the production snippets in server/nginx/, so
what is tested here is what operators deploy. Only the standard library is used; the
relays are ``python -m p2p_copy run-relay-server 127.0.0.1 PORT --no-tls`` with this
interpreter, so the p2p-copy installed next to it is the one that runs.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import http.client
import os
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = [
    "ClusterError",
    "LocalCluster",
    "NginxHashRing",
    "find_nginx",
    "parse_metrics",
    "render_nginx_conf",
]

NGINX_DIR = Path(__file__).resolve().parent / "nginx"
#: The snippets shared with production; copied to PREFIX/conf/p2p-copy/ so that the
#: template's relative includes resolve as they do under /etc/nginx.
SNIPPETS = ("p2p-copy-http.conf", "p2p-copy-locations.conf", "p2p-copy-tls.conf")
TEMPLATE = NGINX_DIR / "local.conf.template"

#: Seconds a process gets to start listening, and to stop after SIGTERM before SIGKILL.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class ClusterError(RuntimeError):
    """The cluster could not start; the message includes what the processes logged."""


def find_nginx() -> str | None:
    """The nginx binary: on PATH, or in /usr/sbin (not on a normal user's PATH on Debian)."""
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def nginx_version(nginx: str) -> tuple[int, ...]:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10)
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out.stderr + out.stdout)
    if not match:
        raise ClusterError(f"cannot tell the version of {nginx}: {out.stderr.strip()}")
    return tuple(int(part) for part in match.groups())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nofile_limit() -> int:
    """The file limit children may raise themselves to (nginx, relays): the hard limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 65536 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)


def render_nginx_conf(
    *,
    prefix: Path,
    port: int,
    relay_ports: Sequence[int],
    worker_processes: int | str = 1,
    certfile: str | None = None,
    keyfile: str | None = None,
    access_log: bool = True,
) -> str:
    """local.conf.template filled in for relays on 127.0.0.1 and nginx on 127.0.0.1:port."""
    nofile = _nofile_limit()
    user = ""
    if os.geteuid() == 0:
        # nginx started as root switches its workers to "nobody", who could not enter our
        # 0700 prefix; stay the current user, as a local tool should.
        import grp
        import pwd

        user = (
            f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
        )
    tls = ""
    if certfile:
        tls = (
            f"        ssl_certificate {certfile};\n"
            f"        ssl_certificate_key {keyfile or certfile};\n"
            "        include p2p-copy/p2p-copy-tls.conf;"
        )
    servers = "\n".join(
        f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;" for p in relay_ports
    )
    values = {
        "PREFIX": str(prefix),
        "PORT": str(port),
        "LISTEN_SSL": " ssl" if certfile else "",
        "TLS": tls,
        "SERVERS": servers,
        "WORKER_PROCESSES": str(worker_processes),
        "WORKER_CONNECTIONS": str(max(1024, min(65536, nofile // 2))),
        "NOFILE": str(nofile),
        "USER": user,
        "ACCESS_LOG": f"{prefix}/logs/access.log p2p_copy" if access_log else "off",
    }
    text = TEMPLATE.read_text()
    for name, value in values.items():
        text = text.replace(f"@@{name}@@", value)
    leftover = re.findall(r"@@\w+@@", text)
    if leftover:
        raise ClusterError(f"{TEMPLATE} has placeholders nobody fills: {leftover}")
    return text


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format as {'name{label="v"}': value}; comments and blank lines skipped."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        # A sample is NAME[{LABELS}] VALUE [TIMESTAMP]; label values may contain spaces.
        match = re.match(r"^(\S+?(?:\{.*\})?)\s+(\S+)(?:\s+\d+)?$", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


class NginxHashRing:
    """nginx's ``hash $key consistent`` ring (ngx_http_upstream_hash_module), in Python.

    Each server, named as written in the upstream block ("127.0.0.1:8001"), gets
    160 x weight points: CRC32(host NUL port PREV), PREV being the previous point's hash.
    A key goes to the first point at or after CRC32(key), wrapping around. The same
    scheme as Cache::Memcached::Fast (ketama); nginx has used it since 1.7.2. Used to
    predict which relay serves a room, and by docs/scaling.md for balance and movement.
    """

    POINTS_PER_WEIGHT = 160

    def __init__(self, servers: Sequence[str], weights: Sequence[int] | None = None) -> None:
        points: dict[int, str] = {}
        for server, weight in zip(servers, weights or [1] * len(servers), strict=True):
            host, port = self._split(server)
            base = host + b"\0" + port
            previous = 0
            for _ in range(self.POINTS_PER_WEIGHT * weight):
                point = zlib.crc32(base + struct.pack("<I", previous))
                # nginx keeps one of equal points (which one depends on its qsort).
                points.setdefault(point, server)
                previous = point
        self._hashes = sorted(points)
        self._servers = [points[h] for h in self._hashes]

    @staticmethod
    def _split(server: str) -> tuple[bytes, bytes]:
        data = server.encode()
        if data[:5].lower() == b"unix:":
            return data[5:], b""
        digits = 0
        for char in reversed(data):
            if char == ord(":"):
                return data[: len(data) - digits - 1], data[len(data) - digits :]
            if not ord("0") <= char <= ord("9"):
                break
            digits += 1
        return data, b""

    def servers_for(self, key: str) -> list[str]:
        """Every server in the order nginx tries them for ``key`` (first = normal choice)."""
        start = bisect.bisect_left(self._hashes, zlib.crc32(key.encode()))
        order: list[str] = []
        for i in range(len(self._hashes)):
            server = self._servers[(start + i) % len(self._hashes)]
            if server not in order:
                order.append(server)
        return order

    def server_for(self, key: str) -> str:
        return self.servers_for(key)[0]


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    # Children may use as many files as the hard limit allows (a relay needs 2 per pair).
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if sys.platform.startswith("linux"):
        # If whoever started the cluster dies without cleaning up (a killed test run),
        # the kernel sends the children SIGTERM, so no relay or nginx outlives it.
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class _Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int


class LocalCluster:
    """``relays`` relay processes on 127.0.0.1 and nginx in front of them at :attr:`url`."""

    def __init__(
        self,
        relays: int = 3,
        *,
        port: int | None = None,
        relay_ports: Sequence[int] | None = None,
        relay_args: Sequence[str] = (),
        worker_processes: int | str = 1,
        certfile: str | None = None,
        keyfile: str | None = None,
        access_log: bool = True,
        nginx: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        keep_workdir: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        if relays < 1:
            raise ValueError("a cluster needs at least one relay")
        self.nginx = nginx or find_nginx()
        if self.nginx is None:
            raise ClusterError("nginx is not installed (Debian: apt-get install nginx)")
        self.port = port or free_port()
        self.relay_ports = list(relay_ports or [free_port() for _ in range(relays)])
        if len(self.relay_ports) != relays:
            raise ValueError("relay_ports must name one port per relay")
        self.relay_args = list(relay_args)
        self.worker_processes = worker_processes
        self.certfile, self.keyfile = certfile, keyfile
        self.access_log = access_log
        self.env = env
        self._own_workdir = workdir is None
        self.keep_workdir = keep_workdir
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="p2p-copy-cluster-"))
        self.ring = NginxHashRing([f"127.0.0.1:{p}" for p in self.relay_ports])
        self._relays: list[_Proc] = []
        self._nginx: _Proc | None = None

    # --- addresses ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where clients connect: ws://127.0.0.1:PORT (wss:// with a certificate)."""
        return f"{'wss' if self.certfile else 'ws'}://127.0.0.1:{self.port}"

    def relay_url(self, index: int) -> str:
        return f"ws://127.0.0.1:{self.relay_ports[index]}"

    def relay_index_for_room(self, room: str) -> int:
        """Which relay nginx sends ``room`` (a code hash) to while all relays are up."""
        server = self.ring.server_for(room)
        return self.relay_ports.index(int(server.rpartition(":")[2]))

    # --- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the relays, then nginx; return once nginx answers /healthz."""
        try:
            for port in self.relay_ports:
                self._relays.append(self._start_relay(port))
            for relay in self._relays:
                self._wait_listening(relay)
            self._nginx = self._start_nginx()
            self._wait_listening(self._nginx)
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def stop(self, drain_timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the relays (they drain), then nginx; SIGKILL whatever outlives its timeout."""
        for relay in self._relays:
            _signal(relay.popen, signal.SIGTERM)
        for relay in self._relays:
            _reap(relay.popen, drain_timeout)
        if self._nginx is not None:
            _signal(self._nginx.popen, signal.SIGTERM)
            _reap(self._nginx.popen, STOP_TIMEOUT, group=True)
        self._relays, self._nginx = [], None
        if self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def kill_relay(self, index: int) -> None:
        """SIGKILL relay ``index`` (a crash: no close frames, no drain) and reap it."""
        popen = self._relays[index].popen
        _signal(popen, signal.SIGKILL)
        popen.wait(STOP_TIMEOUT)

    def signal_relay(self, index: int, sig: int) -> None:
        """Send ``sig`` to relay ``index`` and return at once (SIGTERM: it starts draining)."""
        _signal(self._relays[index].popen, sig)

    def relay_alive(self, index: int) -> bool:
        return self._relays[index].popen.poll() is None

    def relay_returncode(self, index: int) -> int | None:
        return self._relays[index].popen.poll()

    def relay_pid(self, index: int) -> int:
        return self._relays[index].popen.pid

    @property
    def nginx_pid(self) -> int | None:
        return self._nginx.popen.pid if self._nginx else None

    # --- looking inside ----------------------------------------------------------------

    def http_get(self, path: str, port: int | None = None, timeout: float = 5) -> tuple[int, str]:
        """GET http://127.0.0.1:PORT/path (default: nginx, plain HTTP only)."""
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            conn.close()

    def metrics_text(self, index: int) -> str:
        """Relay ``index``'s /metrics, read from the relay itself (not through nginx)."""
        status, body = self.http_get("/metrics", self.relay_ports[index])
        if status != 200:
            raise ClusterError(f"relay {index} answered /metrics with {status}: {body[:200]}")
        return body

    def metrics(self, index: int) -> dict[str, float]:
        return parse_metrics(self.metrics_text(index))

    def logs(self) -> str:
        """Everything the relays and nginx logged so far, for failure messages."""
        parts = []
        for proc in [*self._relays, *([self._nginx] if self._nginx else [])]:
            parts.append(f"--- {proc.name} ({proc.log}) ---\n{_tail(proc.log)}")
        error_log = self.workdir / "logs" / "error.log"
        if error_log.exists():
            parts.append(f"--- nginx error.log ---\n{_tail(error_log)}")
        return "\n".join(parts)

    # --- internals ---------------------------------------------------------------------

    def _popen(self, name: str, argv: list[str], port: int) -> _Proc:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                # Its own session: a Ctrl-C in the terminal reaches only this script, which
                # then stops the relays (letting them drain) before nginx.
                start_new_session=True,
                preexec_fn=_child_setup,
            )
        return _Proc(name, popen, log, port)

    def _start_relay(self, port: int) -> _Proc:
        argv = [
            sys.executable, "-m", "p2p_copy", "run-relay-server", "127.0.0.1", str(port),
            "--no-tls", *self.relay_args,
        ]
        return self._popen(f"relay-{port}", argv, port)

    def _start_nginx(self) -> _Proc:
        assert self.nginx is not None
        prefix = self.workdir
        conf_dir = prefix / "conf"
        (conf_dir / "p2p-copy").mkdir(parents=True, exist_ok=True)
        for sub in ("logs", "tmp"):
            (prefix / sub).mkdir(exist_ok=True)
        for name in SNIPPETS:
            shutil.copyfile(NGINX_DIR / name, conf_dir / "p2p-copy" / name)
        conf = conf_dir / "nginx.conf"
        conf.write_text(
            render_nginx_conf(
                prefix=prefix,
                port=self.port,
                relay_ports=self.relay_ports,
                worker_processes=self.worker_processes,
                certfile=self.certfile,
                keyfile=self.keyfile,
                access_log=self.access_log,
            )
        )
        argv = [self.nginx, "-p", str(prefix), "-c", str(conf)]
        if nginx_version(self.nginx) >= (1, 19, 5):
            # Otherwise nginx first opens its compiled-in error log (/var/log/nginx/...).
            argv += ["-e", str(prefix / "logs" / "error.log")]
        check = subprocess.run([*argv, "-t", "-q"], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise ClusterError(f"nginx rejects {conf}:\n{check.stderr}")
        return self._popen("nginx", argv, self.port)

    def _wait_listening(self, proc: _Proc) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise ClusterError(
                    f"{proc.name} exited with {proc.popen.returncode}:\n{self.logs()}"
                )
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", proc.port)) == 0:
                    return
            time.sleep(0.05)
        raise ClusterError(f"{proc.name} does not listen on :{proc.port}:\n{self.logs()}")

    def _wait_healthy(self) -> None:
        if self.certfile:
            return  # http.client without our CA; the TLS port listens, that must do
        deadline = time.monotonic() + START_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                status, body = self.http_get("/healthz")
                if status == 200:
                    return
                last = f"{status} {body[:200]}"
            time.sleep(0.05)
        raise ClusterError(f"nginx /healthz never answered 200 (last: {last}):\n{self.logs()}")


def _signal(popen: subprocess.Popen[bytes], sig: int) -> None:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(sig)


def _reap(popen: subprocess.Popen[bytes], timeout: float, group: bool = False) -> bool:
    """Wait for ``popen``; SIGKILL it (and with ``group``, its workers) after ``timeout``."""
    try:
        popen.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                # nginx's workers share the master's process group (its own session);
                # a killed master would leave them serving.
                os.killpg(popen.pid, signal.SIGKILL)
            else:
                popen.kill()
        popen.wait(timeout)
        return False


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode(errors="replace")


@contextlib.contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM, with the previous handlers restored afterwards."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run N p2p-copy relays behind nginx on 127.0.0.1 until Ctrl-C.",
        epilog="Arguments after -- go to every relay, e.g. -- --peer-timeout 60",
    )
    parser.add_argument("--relays", type=int, default=os.cpu_count() or 1,
                        help="relay processes (default: one per core)")
    parser.add_argument("--port", type=int, default=8080, help="nginx port (default 8080)")
    parser.add_argument("--relay-base-port", type=int, default=8001,
                        help="relays listen on this port and the following ones (default 8001)")
    parser.add_argument("--workers", default="1",
                        help="nginx worker_processes (a number or 'auto'; default 1)")
    parser.add_argument("--certfile", help="serve wss:// with this PEM certificate chain")
    parser.add_argument("--keyfile", help="the certificate's key (default: in --certfile)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("relay_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    cluster = LocalCluster(
        args.relays,
        port=args.port,
        relay_ports=[args.relay_base_port + i for i in range(args.relays)],
        relay_args=args.relay_args,
        worker_processes=args.workers,
        certfile=args.certfile,
        keyfile=args.keyfile,
        keep_workdir=args.keep,
    )
    with _stop_signals() as stop:
        try:
            cluster.start()
        except ClusterError as exc:
            print(f"local_cluster: {exc}", file=sys.stderr)
            return 1
        try:
            print(f"p2p-copy relays behind nginx: {cluster.url}", flush=True)
            for i, port in enumerate(cluster.relay_ports):
                print(f"  relay {i}: pid {cluster.relay_pid(i)}, "
                      f"metrics http://127.0.0.1:{port}/metrics", flush=True)
            print(f"  nginx: pid {cluster.nginx_pid}, files in {cluster.workdir}", flush=True)
            print("Ctrl-C stops everything.", flush=True)
            while not stop.wait(0.5):
                for i in range(len(cluster.relay_ports)):
                    if not cluster.relay_alive(i):
                        print(f"local_cluster: relay {i} exited; stopping.", file=sys.stderr)
                        stop.set()
        finally:
            print("stopping: relays first (they drain), then nginx", flush=True)
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
