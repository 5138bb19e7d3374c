#!/usr/bin/env python3
"""Benchmark p2p-copy against a raw TCP relay, a minimal Python websockets relay,
p2p-copy 0.1.1 and magic-wormhole (issue 6).

Whole processes on loopback (127.0.0.1 only), files on tmpfs, every output verified.
Each measured process runs under a tiny launcher that fork()s it and reports its own
``wait4`` rusage (user+sys CPU, ru_maxrss), so that a peak RSS is never inherited from
this (bigger) Python process. Our package is measured as installed (non-editable) from
the working tree into its own virtualenv, .cache/ours-venv, like a user's pip install.
See benchmarks/README.md for what each pipeline is.

    python benchmarks/bench.py                      # full run: 1 GiB, 10,000 files, 1000 pairs
    python benchmarks/bench.py --size 256MiB        # quicker
    python benchmarks/bench.py --quick --only ours,baseline --json /tmp/x.json   # smoke

Only the standard library is needed for this process (it imports nothing from the
repository, so that the venvs' pythons can run its helper subcommands); the wsmin helpers
need websockets and cryptography in the current interpreter; matplotlib is used if --plot
is given and present.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import random
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent  # benchmarks/
REPO = HERE.parent
#: what every helper subprocess runs (``python SCRIPT _helper ...``): the thin entry point,
#: which any python can run, the venvs' too
SCRIPT = str(HERE / "bench.py")
CACHE = REPO / ".cache"
SEED_VENV = CACHE / "seed-venv"  # shared with tests/seed.py (same lock file)
SEED_VERSION = "0.1.1"
WORMHOLE_VENV = CACHE / "wormhole-venv"
WORMHOLE_PACKAGES = ["magic-wormhole", "magic-wormhole-mailbox-server",
                     "magic-wormhole-transit-relay"]
OURS_VENV = CACHE / "ours-venv"  # the working tree, installed non-editable
#: in OURS_VENV: SHA-256 of pyproject.toml + p2p_copy/ as last installed there
OURS_STAMP = "p2p-copy-source.sha256"
LAUNCHER_DIR = CACHE / "bench"
DEFAULT_JSON = HERE / "results" / "latest.json"
#: socat's -b (bytes per read/write). Its default, 8192, runs at ~40 % of what the
#: machine can do; 256 KiB (= our message size) makes the baseline a fair upper bar.
SOCAT_BUFFER = 262144
ALL_TOOLS = ("baseline", "socat8k", "wsmin", "ours", "seed", "wormhole")
ALL_CASES = ("random", "compressible", "files", "pairs")
MB = 1e6
GB = 1e9

# --------------------------------------------------------------------------------------
# The launcher: fork, exec, wait4, write "pid N" then "exit C user U sys S maxrss KB".
# --------------------------------------------------------------------------------------

LAUNCHER_C = r"""
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile pid_t child = -1;

static void forward(int sig) {
    if (child > 0) kill(child, sig);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: launcher OUT CMD [ARG...]\n"); return 127; }
    FILE *out = fopen(argv[1], "w");
    if (!out) { perror("launcher: open"); return 127; }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    pid_t pid = fork();
    if (pid < 0) { perror("launcher: fork"); return 127; }
    if (pid == 0) {
        execvp(argv[2], argv + 2);
        perror("launcher: exec");
        _exit(127);
    }
    child = pid;
    fprintf(out, "pid %d\n", (int)pid);
    fflush(out);
    int status = 0;
    struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0) {
        if (errno != EINTR) { perror("launcher: wait4"); return 127; }
    }
    int code = WIFEXITED(status) ? WEXITSTATUS(status)
             : WIFSIGNALED(status) ? -WTERMSIG(status) : 1;
    fprintf(out, "exit %d user %ld.%06ld sys %ld.%06ld maxrss %ld\n", code,
            (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec,
            (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec, ru.ru_maxrss);
    fclose(out);
    return code >= 0 ? code : 128 - code;
}
"""

LAUNCHER_PY = r"""
import os, signal, sys
out = open(sys.argv[1], "w")
child = -1
def forward(sig, frame):
    if child > 0:
        try: os.kill(child, sig)
        except OSError: pass
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, forward)
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
child = pid
out.write(f"pid {pid}\n"); out.flush()
while True:
    try:
        _, status, ru = os.wait4(pid, 0); break
    except InterruptedError:
        continue
code = os.waitstatus_to_exitcode(status)
out.write(f"exit {code} user {ru.ru_utime:.6f} sys {ru.ru_stime:.6f} maxrss {ru.ru_maxrss}\n")
out.close()
sys.exit(code if code >= 0 else 128 - code)
"""


def build_launcher(force_python: bool = False) -> tuple[list[str], str]:
    """The launcher command prefix and its kind ("c" if a C compiler is here, else "python")."""
    cc = None if force_python else (shutil.which("cc") or shutil.which("gcc"))
    if cc:
        digest = hashlib.sha256(LAUNCHER_C.encode()).hexdigest()[:12]
        exe = LAUNCHER_DIR / f"launcher-{digest}"
        if not exe.exists():
            LAUNCHER_DIR.mkdir(parents=True, exist_ok=True)
            src = LAUNCHER_DIR / f"launcher-{digest}.c"
            src.write_text(LAUNCHER_C)
            tmp = exe.with_suffix(f".tmp{os.getpid()}")
            try:
                subprocess.run([cc, "-O2", "-o", str(tmp), str(src)], check=True,
                               capture_output=True, timeout=60)
                os.replace(tmp, exe)
            except (OSError, subprocess.SubprocessError):
                with contextlib.suppress(OSError):
                    tmp.unlink()
        if exe.exists():
            return [str(exe)], "c"
    return [sys.executable, "-I", "-S", "-c", LAUNCHER_PY, ], "python"


# --------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")
_LIVE: set[Proc] = set()


class Proc:
    """One measured process (under the launcher), in its own process group."""

    def __init__(self, launcher: list[str], name: str, argv: Sequence[str], *,
                 logdir: Path, env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.rusage_path = logdir / f"{name}.rusage"
        self.log_path = logdir / f"{name}.log"
        self.ended: float | None = None
        self._child: int | None = None
        with open(self.log_path, "wb") as log:
            self.started = time.monotonic()
            self.popen = subprocess.Popen(
                [*launcher, str(self.rusage_path), *self.argv], stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                start_new_session=True,
            )
        _LIVE.add(self)

    def child_pid(self, timeout: float = 10.0) -> int | None:
        """The measured process's pid (the launcher's child)."""
        deadline = time.monotonic() + timeout
        while self._child is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                for line in self.rusage_path.read_text().splitlines():
                    if line.startswith("pid "):
                        self._child = int(line.split()[1])
            if self._child is None:
                if self.popen.poll() is not None:
                    break
                time.sleep(0.005)
        return self._child

    def cpu_now(self) -> float | None:
        """User+sys CPU seconds of the measured process so far (/proc, 10 ms ticks)."""
        pid = self.child_pid()
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, TypeError):
            return None
        fields = stat.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def status_kb(self, key: str) -> int | None:
        """A /proc/PID/status field in kB (VmRSS, VmHWM) of the measured process."""
        pid = self.child_pid()
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except (OSError, TypeError):
            pass
        return None

    def fd_count(self) -> int | None:
        pid = self.child_pid()
        try:
            return len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, TypeError):
            return None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def terminate(self, grace: float = 10.0) -> None:
        """SIGTERM (forwarded by the launcher), then SIGKILL to the whole group."""
        if self.popen.poll() is None:
            with contextlib.suppress(OSError):
                os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        if self.ended is None:
            self.ended = time.monotonic()

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)
        _LIVE.discard(self)

    def rusage(self) -> dict[str, Any]:
        """exit code, user/sys/total CPU seconds and peak RSS (kB) from the launcher."""
        result: dict[str, Any] = {"exit": self.popen.returncode}
        with contextlib.suppress(OSError):
            for line in self.rusage_path.read_text().splitlines():
                parts = line.split()
                if parts and parts[0] == "exit":
                    kv = dict(zip(parts[0::2], parts[1::2], strict=True))
                    result.update(exit=int(kv["exit"]), user_s=float(kv["user"]),
                                  sys_s=float(kv["sys"]), maxrss_kb=int(kv["maxrss"]))
                    result["cpu_s"] = result["user_s"] + result["sys_s"]
        return result

    def log_tail(self, lines: int = 8) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace")
            return "\n".join(text.strip().splitlines()[-lines:])
        return ""


def wait_all(procs: Sequence[Proc], timeout: float) -> bool:
    """Wait until every process exited (recording each exit time precisely) or timeout."""
    deadline = time.monotonic() + timeout
    pending = [p for p in procs if p.ended is None]
    fds: dict[int, Proc] = {}
    try:
        poller = select.poll()
        for p in pending:
            try:
                fd = os.pidfd_open(p.popen.pid)
            except (AttributeError, OSError):
                fds = {}
                break
            fds[fd] = p
            poller.register(fd, select.POLLIN)
        if fds:
            while fds:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                for fd, _ in poller.poll(remaining * 1000):
                    p = fds.pop(fd)
                    p.ended = time.monotonic()
                    poller.unregister(fd)
                    os.close(fd)
                    p.popen.wait()
            return True
        # No pidfd: poll every 2 ms.
        while pending:
            for p in list(pending):
                if p.popen.poll() is not None:
                    p.ended = time.monotonic()
                    pending.remove(p)
            if not pending:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True
    finally:
        for fd in fds:
            os.close(fd)


def kill_everything() -> None:
    for p in list(_LIVE):
        p.kill()


def cpu_times() -> tuple[float, float]:
    """Machine-wide busy CPU seconds (all cores, idle and iowait excluded) and steal."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK, steal / CLK_TCK


def add_noise(result: dict[str, Any], before: tuple[float, float]) -> None:
    """CPU that other processes used on this machine while we measured (noise)."""
    busy, steal = cpu_times()
    ours = sum(v for k, v in result.items() if k.endswith("_cpu_s") and k.split("_")[0] in
               ("sender", "receiver", "relay", "mailbox") and isinstance(v, (int, float)))
    result["other_cpu_s"] = max(0.0, busy - before[0] - ours)
    result["steal_s"] = steal - before[1]


def wait_quiet(max_wait: float, busy_cores: float = 0.15) -> float:
    """Wait (up to max_wait s) until other processes use under busy_cores for 0.25 s."""
    start = time.monotonic()
    while True:
        b0, t0 = cpu_times()[0], time.monotonic()
        time.sleep(0.25)
        busy = (cpu_times()[0] - b0) / (time.monotonic() - t0)
        if busy < busy_cores or time.monotonic() - start >= max_wait:
            return time.monotonic() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """True if something listens on 127.0.0.1:port (read from /proc; never connects)."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 3 and parts[1] == want and parts[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def wait_listening(port: int, procs: Sequence[Proc], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not listening(port):
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited early ({p.popen.returncode}): "
                                   f"{p.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")
        time.sleep(0.01)


# --------------------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def write_random(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 4 << 20))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def csv_pool(size: int, seed: int = 7) -> bytes:
    """CSV-like sensor readings, about 80 bytes a line (zlib -1 ratio about 3.4)."""
    rng = random.Random(seed)
    sensors = [f"sensor-{i:04d}" for i in range(5000)]
    metrics = ["temperature", "humidity", "pressure", "voltage", "current", "rpm", "flow"]
    states = ["OK"] * 12 + ["WARN", "FAIL", "MAINT"]
    regions = ["eu-west-1", "eu-central-1", "us-east-1", "us-west-2", "ap-south-1", "sa-east-1"]
    choice, rand, randrange = rng.choice, rng.random, rng.randrange
    parts = [b"id,time,sensor,metric,value,state,region,batch\n"]
    total, i = len(parts[0]), 0
    while total < size:
        block = []
        for _ in range(4096):
            i += 1
            block.append(
                f"{i},2023-11-{(i // 86400) % 28 + 1:02d}T{(i // 3600) % 24:02d}:"
                f"{(i // 60) % 60:02d}:{i % 60:02d}Z,{choice(sensors)},{choice(metrics)},"
                f"{rand() * 160 - 40:.3f},{choice(states)},{choice(regions)},"
                f"{randrange(100000)}\n")
        data = "".join(block).encode()
        parts.append(data)
        total += len(data)
    return b"".join(parts)


def write_compressible(path: Path, size: int) -> tuple[str, float]:
    """A CSV file: a pool of up to 32 MiB of distinct lines, written cyclically from a new
    random line each cycle, so repeats are 32 MiB apart (beyond any compressor's window
    short of zstd --long). Returns the SHA-256 and zlib level-1 ratio of the first 16 MiB."""
    import zlib

    pool = csv_pool(min(size, 32 << 20))
    rng = random.Random(11)
    h = hashlib.sha256()
    left = size
    first = bytearray()
    with open(path, "wb") as f:
        start = 0
        while left:
            piece = memoryview(pool)[start:start + left]
            f.write(piece)
            h.update(piece)
            if len(first) < 16 << 20:
                first += piece[: (16 << 20) - len(first)]
            left -= len(piece)
            nl = pool.find(b"\n", rng.randrange(len(pool)))
            start = nl + 1 if 0 <= nl < len(pool) - 1 else 0
    ratio = len(first) / max(1, len(zlib.compress(bytes(first), 1)))
    return h.hexdigest(), ratio


def write_files(root: Path, count: int, size: int) -> None:
    """count files of size random bytes, 1000 per folder (d000/f000000.bin ...)."""
    for i in range(count):
        folder = root / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:06d}.bin").write_bytes(os.urandom(size))


def verify_tree(src: Path, out: Path) -> tuple[bool, str]:
    """Every file of src arrived byte for byte (under out/<src.name> or out), nothing else."""
    root = out / src.name if (out / src.name).is_dir() else out
    want = {p.relative_to(src) for p in src.rglob("*") if p.is_file()}
    got = {p.relative_to(root) for p in root.rglob("*") if p.is_file()}
    if want != got:
        return False, (f"{len(want - got)} files missing, {len(got - want)} unexpected "
                       f"(e.g. {sorted(map(str, want ^ got))[:3]})")
    for rel in want:
        if (src / rel).read_bytes() != (root / rel).read_bytes():
            return False, f"{rel} differs"
    return True, ""


def find_output(out: Path, name: str) -> Path | None:
    direct = out / name
    if direct.is_file():
        return direct
    return next((p for p in out.rglob(name) if p.is_file()), None)


# --------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------


def clean_env(tmpdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                "ALL_PROXY", "P2P_COPY_PROGRESS", "P2P_COPY_CODE", "WORMHOLE_RELAY_URL",
                "WORMHOLE_TRANSIT_HELPER"):
        env.pop(var, None)
    env["NO_PROXY"] = env["no_proxy"] = "*"
    env["TMPDIR"] = str(tmpdir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def isolated_env(tmpdir: Path) -> dict[str, str]:
    """For a tool in its own venv: nothing that could import the repository's package."""
    env = clean_env(tmpdir)
    for var in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE"):
        env.pop(var, None)
    env["PYTHONNOUSERSITE"] = "1"
    return env


@dataclass
class RelaySet:
    """The server side of one measurement: the relay (whose CPU is per GB) and helpers."""

    main: Proc
    others: list[Proc] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    url: str = ""
    cpu_ready: float = 0.0
    rss_idle_kb: int | None = None
    fd_idle: int | None = None

    def all(self) -> list[Proc]:
        return [self.main, *self.others]


class Tool:
    name = ""
    label = ""
    available = True
    reason = ""
    version = ""
    description = ""
    cases: tuple[str, ...] = ALL_CASES

    def __init__(self, bench: Bench) -> None:
        self.bench = bench

    def env(self, tmp: Path) -> dict[str, str]:
        return clean_env(tmp)

    def cwd(self, work: Path) -> Path:
        return work

    def start_relay(self, work: Path, case: str) -> RelaySet:
        raise NotImplementedError

    def commands(self, relays: RelaySet, code: str, src: Path,
                 out: Path, case: str) -> tuple[list[str], list[str]]:
        """The sender's and the receiver's argv."""
        raise NotImplementedError

    def pairs_client(self) -> list[str]:
        """argv prefix of the python that runs ``bench.py _pairs-client --impl ...``."""
        raise NotImplementedError

    def code(self, n: int) -> str:
        return f"{n}-bench-{os.urandom(4).hex()}"


class Baseline(Tool):
    name = "baseline"
    label = "raw TCP relay"
    buffer = SOCAT_BUFFER

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench)
        self.socat = None if bench.args.baseline == "python" else shutil.which("socat")
        if self.socat:
            first = subprocess.run([self.socat, "-V"], capture_output=True, text=True,
                                   timeout=30).stdout.splitlines()
            self.version = next((ln for ln in first if "version" in ln), "socat").strip()
            b = self.buffer
            self.description = (
                f"relay: socat -b {b} TCP-LISTEN:P1 TCP-LISTEN:P2 (one pair, then exits); "
                f"file: socat -u -b {b} OPEN:FILE TCP:P1 -> socat -u -b {b} TCP:P2 CREATE:OUT; "
                f"files: tar -cf - . | socat -u -b {b} - TCP:P1 -> "
                f"socat -u -b {b} TCP:P2 - | tar -xf -; "
                "pairs: bench.py's asyncio TCP pairing relay (socat cannot pair by code)"
            )
        else:
            self.version = "python asyncio forwarder (bench.py)"
            self.description = (
                "relay: bench.py _forward (asyncio, 256 KiB reads; socat not found or "
                "--baseline python); "
                "file: bench.py _tcp-send FILE -> _tcp-recv OUT; files: tar -cf - . | "
                "_tcp-send - -> _tcp-recv - | tar -xf -; "
                "pairs: bench.py's asyncio pairing relay"
            )

    def start_relay(self, work: Path, case: str) -> RelaySet:
        b = self.bench
        if case == "pairs":
            port = free_port()
            relay = b.proc("relay", [sys.executable, SCRIPT, "_pairing-relay", str(port)],
                           work, self.env(b.tmp))
            wait_listening(port, [relay])
            return RelaySet(relay, ports={"relay": port})
        p1, p2 = free_port(), free_port()
        if self.socat:
            argv = [self.socat, "-b", str(self.buffer),
                    f"TCP-LISTEN:{p1},bind=127.0.0.1,reuseaddr",
                    f"TCP-LISTEN:{p2},bind=127.0.0.1,reuseaddr"]
        else:
            argv = [sys.executable, SCRIPT, "_forward", str(p1), str(p2)]
        relay = b.proc("relay", argv, work, self.env(b.tmp))
        wait_listening(p1, [relay])
        return RelaySet(relay, ports={"in": p1, "out": p2})

    def commands(self, relays: RelaySet, code: str, src: Path,
                 out: Path, case: str) -> tuple[list[str], list[str]]:
        p1, p2 = relays.ports["in"], relays.ports["out"]
        bs = str(self.buffer)
        if self.socat:
            if case == "files":
                send = ["sh", "-c", f'tar -C "$1" -cf - . | {self.socat} -u -b {bs} - '
                        f'TCP:127.0.0.1:"$2"', "sh", str(src), str(p1)]
                recv = ["sh", "-c", f'{self.socat} -u -b {bs} '
                        f'TCP:127.0.0.1:"$1",retry=2000,interval=0.005 - | tar -C "$2" -xf -',
                        "sh", str(p2), str(out)]
            else:
                send = [self.socat, "-u", "-b", bs, f"OPEN:{src},rdonly",
                        f"TCP:127.0.0.1:{p1}"]
                recv = [self.socat, "-u", "-b", bs,
                        f"TCP:127.0.0.1:{p2},retry=2000,interval=0.005",
                        f"CREATE:{out / src.name}"]
            return send, recv
        py = [sys.executable, SCRIPT]
        if case == "files":
            send = ["sh", "-c", f'tar -C "$1" -cf - . | {sys.executable} {SCRIPT} '
                    f'_tcp-send "$2" -', "sh", str(src), str(p1)]
            recv = ["sh", "-c", f'{sys.executable} {SCRIPT} _tcp-recv "$1" - | '
                    f'tar -C "$2" -xf -', "sh", str(p2), str(out)]
        else:
            send = [*py, "_tcp-send", str(p1), str(src)]
            recv = [*py, "_tcp-recv", str(p2), str(out / src.name)]
        return send, recv

    def pairs_client(self) -> list[str]:
        return [sys.executable, SCRIPT, "_pairs-client", "--impl", "tcp"]


class SocatDefault(Baseline):
    """socat with its default 8 KiB buffer, as in the issue's first measurements."""

    name = "socat8k"
    label = "raw TCP relay, socat -b 8192"
    buffer = 8192
    cases = ("random", "compressible", "files")

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench)
        if not self.socat:
            self.available, self.reason = False, "socat is not installed (or --baseline python)"
        else:
            self.description = "the baseline with socat's default buffer (-b 8192) everywhere"


def _our_cli() -> list[str]:
    script = Path(sys.executable).parent / "p2p-copy"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "p2p_copy"]


def git_short_hash() -> str:
    """The checked-out commit (read from .git without running git), or ""."""
    try:
        git = REPO / ".git"
        if git.is_file():  # a worktree: "gitdir: PATH"
            git = (REPO / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head[:10]
        ref = head.split(":", 1)[1].strip()
        if (git / ref).is_file():
            return (git / ref).read_text().strip()[:10]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:10]
    except (OSError, IndexError):
        pass
    return ""


def source_digest(tree: Path) -> str:
    """SHA-256 over pyproject.toml and every file under p2p_copy/ (names and contents;
    bytecode caches left out)."""
    h = hashlib.sha256()
    files = [tree / "pyproject.toml", *sorted(
        f for f in (tree / "p2p_copy").rglob("*")
        if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc")]
    for f in files:
        h.update(f.relative_to(tree).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def snapshot_tree(dest: Path) -> Path:
    """A copy of what the package is built from (pyproject.toml, README.md, p2p_copy/), so
    that pip builds from a fixed snapshot and writes no build/ into the working tree."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "p2p_copy", dest / "p2p_copy",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _pip(python: Path, *args: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "pip", *args], capture_output=True, text=True,
        cwd=CACHE, env=isolated_env(Path("/tmp")), timeout=timeout)


def ensure_ours_venv() -> tuple[str, str]:
    """OURS_VENV holding the working tree's package, installed non-editable like a user's
    ``pip install p2p-copy`` (dependencies from the package index). Our package is
    reinstalled (--no-deps --force-reinstall) only when pyproject.toml or p2p_copy/
    changed. Returns (source digest, installed version)."""
    python = OURS_VENV / "bin" / "python"
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ours-src-", dir=CACHE) as tmp:
        src = snapshot_tree(Path(tmp) / "p2p-copy")
        digest = source_digest(src)
        fresh = ensure_venv(OURS_VENV, [str(src)], "p2p-copy", None, False)
        stamp = OURS_VENV / OURS_STAMP
        with venv_lock(OURS_VENV):
            old = stamp.read_text().strip() if stamp.is_file() else ""
            if fresh or old != digest:
                if not fresh:
                    print(f"  reinstalling p2p-copy from the working tree into {OURS_VENV} ...",
                          flush=True)
                    run = _pip(python, "install", "--quiet", "--no-input", "--no-deps",
                               "--force-reinstall", str(src))
                    if run.returncode == 0 and _pip(python, "check").returncode != 0:
                        # pyproject.toml gained a dependency: let pip fetch what is missing.
                        run = _pip(python, "install", "--quiet", "--no-input", str(src))
                    if run.returncode != 0:
                        stamp.unlink(missing_ok=True)
                        tail = "\n".join((run.stdout + run.stderr).strip().splitlines()[-5:])
                        raise RuntimeError(f"pip install {src} into {OURS_VENV} failed: {tail}")
                # pip compiles bytecode when it installs; make sure (a missing __pycache__
                # would cost every process ~0.1 s of compiling).
                for pkg in OURS_VENV.glob("lib/python*/site-packages/p2p_copy"):
                    sources = {f.stem for f in pkg.glob("*.py")}
                    compiled = {f.name.split(".")[0] for f in pkg.glob("__pycache__/*.pyc")}
                    if not sources <= compiled:
                        subprocess.run([str(python), "-m", "compileall", "-q", str(pkg)],
                                       capture_output=True, timeout=120, cwd=CACHE,
                                       env=isolated_env(Path("/tmp")))
                stamp.write_text(digest + "\n")
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('p2p-copy'))"],
        capture_output=True, text=True, timeout=60, env=isolated_env(Path("/tmp")), cwd=OURS_VENV)
    if out.returncode != 0:
        raise RuntimeError(f"{OURS_VENV}: p2p-copy not importable: {out.stderr.strip()[-300:]}")
    return digest, out.stdout.strip()


class Ours(Tool):
    name = "ours"
    label = "p2p-copy (this repo)"

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench)
        self.venv = not bench.args.no_install
        commands = ("run-relay-server 127.0.0.1 PORT --no-tls; send ws://127.0.0.1:PORT CODE "
                    "PATH; receive ws://127.0.0.1:PORT CODE --out DIR (default settings; "
                    "pairs: N p2p_copy.send()/receive() coroutines in one sender and one "
                    "receiver process")
        if self.venv:
            self.python = str(OURS_VENV / "bin" / "python")
            self.cli = [str(OURS_VENV / "bin" / "p2p-copy")]
            commit = git_short_hash()
            try:
                digest, version = ensure_ours_venv()
                self.version = (f"p2p-copy {version} in {OURS_VENV}, installed from the working "
                                f"tree at {commit or 'an unknown commit'} (sources sha256 "
                                f"{digest[:12]})")
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                self.available, self.reason = False, str(exc)[-500:]
            self.description = (
                f"{self.cli[0]} {commands}, run with {self.python}); the working tree "
                f"(pyproject.toml, README.md, p2p_copy/ at {commit or '?'} plus any uncommitted "
                f"changes) installed non-editable with pip into its own virtualenv {OURS_VENV} "
                "(python -m venv, no system site-packages, dependencies from the package "
                "index, bytecode compiled by pip), reinstalled only when the sources' SHA-256 "
                "changes; run from the venv directory with PYTHONPATH etc. removed, like seed"
            )
            return
        # --no-install: the current interpreter's install (today's editable one).
        self.python = sys.executable
        self.cli = _our_cli()
        probe = subprocess.run(
            [sys.executable, "-c", "import p2p_copy; print(p2p_copy.__version__, "
             "p2p_copy.__file__)"], capture_output=True, text=True, timeout=60,
            env=clean_env(Path("/tmp")), cwd=REPO)
        if probe.returncode != 0:
            self.available, self.reason = False, probe.stderr.strip()[-500:]
        self.version = probe.stdout.strip() + " (--no-install: the current interpreter's install)"
        # pip compiles a package's bytecode when it installs it (the seed's and
        # magic-wormhole's venvs have theirs); an editable install under
        # PYTHONDONTWRITEBYTECODE never gets it and would compile ~0.1 s of source at
        # every start. Compile once, like an install would.
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "p2p_copy")],
                       capture_output=True, timeout=120, cwd=REPO)
        self.description = (
            f"{' '.join(self.cli)} {commands}); --no-install was given, so NOT the clean "
            f"venv {OURS_VENV}: the console script next to {sys.executable} (whatever install "
            "it has, e.g. editable, with its site-packages' .pth files paid at every start), "
            "bytecode compiled with compileall"
        )

    def env(self, tmp: Path) -> dict[str, str]:
        return isolated_env(tmp) if self.venv else clean_env(tmp)

    def cwd(self, work: Path) -> Path:
        # From the venv directory, so that the repository's p2p_copy can never be imported.
        return OURS_VENV if self.venv else work

    def start_relay(self, work: Path, case: str) -> RelaySet:
        port = free_port()
        relay = self.bench.proc(
            "relay", [*self.cli, "run-relay-server", "127.0.0.1", str(port), "--no-tls",
                      "--log-level", "WARNING"], self.cwd(work), self.env(self.bench.tmp))
        wait_listening(port, [relay])
        return RelaySet(relay, ports={"relay": port}, url=f"ws://127.0.0.1:{port}")

    def commands(self, relays: RelaySet, code: str, src: Path,
                 out: Path, case: str) -> tuple[list[str], list[str]]:
        return ([*self.cli, "send", relays.url, code, str(src)],
                [*self.cli, "receive", relays.url, code, "--out", str(out)])

    def pairs_client(self) -> list[str]:
        return [self.python, SCRIPT, "_pairs-client", "--impl", "ours"]


class WsMin(Tool):
    """The issue's "practical ceiling for Python": a minimal websockets relay."""

    name = "wsmin"
    label = "minimal websockets relay"
    cases = ("random", "compressible")

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench)
        probe = subprocess.run(
            [sys.executable, "-c", "import websockets, cryptography; "
             "from websockets.asyncio.server import serve; "
             "print(websockets.__version__, cryptography.__version__)"],
            capture_output=True, text=True, timeout=60, env=clean_env(Path("/tmp")),
            cwd=HERE)
        if probe.returncode != 0:
            self.available = False
            self.reason = ("needs websockets>=14 and cryptography in " + sys.executable + ": "
                           + probe.stderr.strip()[-300:])
        ws, _, crypto = probe.stdout.strip().partition(" ")
        self.version = f"websockets {ws}, cryptography {crypto} ({sys.executable})"
        self.description = (
            "minimal Python websockets relay, 256 KiB messages, AES-GCM + SHA-256 on both "
            f"ends (the issue's practical ceiling for Python), run with {sys.executable}: "
            "relay bench.py _wsmin-relay PORT (websockets.asyncio.server.serve on 127.0.0.1, "
            "compression=None; pairs the first /send with the first /recv and forwards "
            "`async for msg in ws: await other.send(msg)`, closing the other side when one "
            "closes); sender bench.py _wsmin-send ws://127.0.0.1:PORT/send FILE (readinto a "
            "256 KiB buffer, SHA-256, AES-256-GCM with a fixed demo key and a counter nonce, "
            "one binary message per chunk, then the hex SHA-256 as a text message); receiver "
            "bench.py _wsmin-recv ws://127.0.0.1:PORT/recv OUT (decrypt, hash, write, compare "
            "the digest). No threads, blocking file I/O on the event loop, no pairing codes, "
            "no key exchange, no metadata, no compression"
        )

    def start_relay(self, work: Path, case: str) -> RelaySet:
        port = free_port()
        relay = self.bench.proc("relay", [sys.executable, SCRIPT, "_wsmin-relay", str(port)],
                                work, self.env(self.bench.tmp))
        wait_listening(port, [relay])
        return RelaySet(relay, ports={"relay": port}, url=f"ws://127.0.0.1:{port}")

    def commands(self, relays: RelaySet, code: str, src: Path,
                 out: Path, case: str) -> tuple[list[str], list[str]]:
        return ([sys.executable, SCRIPT, "_wsmin-send", relays.url + "/send", str(src)],
                [sys.executable, SCRIPT, "_wsmin-recv", relays.url + "/recv",
                 str(out / src.name)])


class Seed(Tool):
    name = "seed"
    label = f"p2p-copy {SEED_VERSION}"

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench)
        self.description = (
            f"p2p-copy {SEED_VERSION} from the package index in {SEED_VENV} (default settings: "
            "--no-encrypt, --compress auto); same commands as ours; pairs: its "
            "send()/receive() coroutines"
        )
        try:
            ensure_venv(SEED_VENV, [f"p2p-copy=={SEED_VERSION}"], "p2p-copy", SEED_VERSION,
                        bench.args.no_install)
            self.version = SEED_VERSION
        except RuntimeError as exc:
            self.available, self.reason = False, str(exc)
        self.cli = [str(SEED_VENV / "bin" / "p2p-copy")]

    def env(self, tmp: Path) -> dict[str, str]:
        return isolated_env(tmp)

    def cwd(self, work: Path) -> Path:
        return SEED_VENV  # so that the repository's p2p_copy can never be imported

    def start_relay(self, work: Path, case: str) -> RelaySet:
        port = free_port()
        relay = self.bench.proc(
            "relay", [*self.cli, "run-relay-server", "127.0.0.1", str(port), "--no-tls"],
            self.cwd(work), self.env(self.bench.tmp))
        wait_listening(port, [relay])
        return RelaySet(relay, ports={"relay": port}, url=f"ws://127.0.0.1:{port}")

    def commands(self, relays: RelaySet, code: str, src: Path,
                 out: Path, case: str) -> tuple[list[str], list[str]]:
        return ([*self.cli, "send", relays.url, code, str(src)],
                [*self.cli, "receive", relays.url, code, "--out", str(out)])

    def pairs_client(self) -> list[str]:
        return [str(SEED_VENV / "bin" / "python"), SCRIPT, "_pairs-client", "--impl", "seed"]


class Wormhole(Tool):
    name = "wormhole"
    label = "magic-wormhole"
    cases = ("random", "compressible", "files")

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench)
        self.bin = WORMHOLE_VENV / "bin"
        try:
            ensure_venv(WORMHOLE_VENV, WORMHOLE_PACKAGES, "magic-wormhole", None,
                        bench.args.no_install)
            out = subprocess.run([str(self.bin / "wormhole"), "--version"], capture_output=True,
                                 text=True, timeout=60, env=isolated_env(Path("/tmp")),
                                 cwd=WORMHOLE_VENV)
            self.version = (out.stdout + out.stderr).strip()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            self.available, self.reason = False, str(exc)
        self.description = (
            f"{self.version or 'magic-wormhole'} in {WORMHOLE_VENV}: twist wormhole-mailbox "
            "and twist transitrelay on 127.0.0.1; wormhole --relay-url ws://127.0.0.1:M/v1 "
            "--transit-helper tcp:127.0.0.1:T send --code N-bench-x --no-listen "
            "--hide-progress --no-qr PATH / receive --no-listen --hide-progress --accept-file "
            "-o DIR N-bench-x (both --no-listen: every byte goes through the transit relay; "
            "folders are zipped by the sender, unzipped by the receiver, in TMPDIR on tmpfs)"
        )
        self._nameplate = 0

    def env(self, tmp: Path) -> dict[str, str]:
        return isolated_env(tmp)

    def start_relay(self, work: Path, case: str) -> RelaySet:
        b = self.bench
        mport, tport = free_port(), free_port()
        twist = str(self.bin / "twist")
        transit = b.proc("relay", [twist, "transitrelay",
                                   f"--port=tcp:{tport}:interface=127.0.0.1"],
                         work, self.env(b.tmp))
        mailbox = b.proc("mailbox", [twist, "wormhole-mailbox",
                                     f"--port=tcp:{mport}:interface=127.0.0.1",
                                     f"--channel-db={work / 'mailbox.sqlite'}"],
                         work, self.env(b.tmp))
        relays = RelaySet(transit, [mailbox], ports={"mailbox": mport, "transit": tport})
        wait_listening(tport, relays.all())
        wait_listening(mport, relays.all())
        return relays

    def code(self, n: int) -> str:
        self._nameplate += 1
        return f"{self._nameplate}-bench-{os.urandom(3).hex()}"

    def commands(self, relays: RelaySet, code: str, src: Path,
                 out: Path, case: str) -> tuple[list[str], list[str]]:
        common = [str(self.bin / "wormhole"),
                  "--relay-url", f"ws://127.0.0.1:{relays.ports['mailbox']}/v1",
                  "--transit-helper", f"tcp:127.0.0.1:{relays.ports['transit']}"]
        return ([*common, "send", "--code", code, "--no-listen", "--hide-progress",
                 "--no-qr", str(src)],
                [*common, "receive", "--no-listen", "--hide-progress", "--accept-file",
                 "-o", str(out), code])


@contextlib.contextmanager
def venv_lock(venv: Path, timeout: float = 600.0) -> Iterator[None]:
    """Hold ``<venv>.lock`` (flock), shared with tests/seed.py for the seed venv."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{venv} stayed locked for {timeout:g} s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_venv(venv: Path, packages: list[str], dist: str, version: str | None,
                no_install: bool, timeout: float = 600.0) -> bool:
    """A virtualenv holding ``dist`` (at ``version``), made with pip if missing. True if
    it was (re)made now."""

    def works() -> bool:
        python = venv / "bin" / "python"
        if not python.is_file():
            return False
        try:
            out = subprocess.run(
                [str(python), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                capture_output=True, text=True, timeout=60, env=isolated_env(Path("/tmp")),
                cwd=venv)
        except (OSError, subprocess.SubprocessError):
            return False
        return out.returncode == 0 and (version is None or out.stdout.strip() == version)

    if works():
        return False
    if no_install:
        raise RuntimeError(f"{venv} does not hold {dist} and --no-install was given")
    deadline = time.monotonic() + timeout
    with venv_lock(venv, timeout):
        if works():
            return False
        shutil.rmtree(venv, ignore_errors=True)
        print(f"  installing {' '.join(packages)} into {venv} ...", flush=True)
        for args in ([sys.executable, "-m", "venv", str(venv)],
                     [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                      "--disable-pip-version-check", "--no-input", *packages]):
            try:
                run = subprocess.run(args, capture_output=True, text=True, cwd=venv.parent,
                                     env=isolated_env(Path("/tmp")),
                                     timeout=max(1.0, deadline - time.monotonic()))
            except (OSError, subprocess.TimeoutExpired) as exc:
                shutil.rmtree(venv, ignore_errors=True)
                raise RuntimeError(f"{' '.join(args[:4])}: {exc}") from None
            if run.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                tail = "\n".join((run.stdout + run.stderr).strip().splitlines()[-5:])
                raise RuntimeError(f"{' '.join(args[:5])} failed: {tail}")
        if not works():
            raise RuntimeError(f"{venv}: {dist} {version or ''} not importable after pip")
        return True


TOOL_CLASSES: dict[str, type[Tool]] = {
    "baseline": Baseline, "socat8k": SocatDefault, "wsmin": WsMin, "ours": Ours,
    "seed": Seed, "wormhole": Wormhole}


# --------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """'1GiB', '256MiB', '256M', '64k', '4096B'; a bare number is MiB."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    if text.strip().lower().endswith("b") and not text.strip().lower().endswith("ib"):
        return int(float(t))
    return int(float(t) * (1 << 20))


def machine_facts() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return {"nproc": int(nproc) if nproc.isdigit() else os.cpu_count(), "cpu_model": model,
            "mem_total": mem, "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_start": list(os.getloadavg())}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.launcher, self.launcher_kind = build_launcher(args.launcher == "python")
        base = Path(args.tmp)
        base.mkdir(parents=True, exist_ok=True)
        self.root = base / f"p2p-copy-bench-{os.getpid()}"
        self.root.mkdir()
        self.tmp = self.root / "tmp"
        self.tmp.mkdir()
        self.data = self.root / "data"
        self.data.mkdir()
        self.counter = 0
        self.tools: dict[str, Tool] = {}
        self.results: dict[str, Any] = {}

    def proc(self, name: str, argv: Sequence[str], work: Path,
             env: dict[str, str]) -> Proc:
        return Proc(self.launcher, name, argv, logdir=work, env=env, cwd=work)

    def close(self) -> None:
        kill_everything()
        shutil.rmtree(self.root, ignore_errors=True)

    # ---- data ----------------------------------------------------------------------

    def prepare(self, cases: Sequence[str]) -> dict[str, Any]:
        a = self.args
        info: dict[str, Any] = {}
        need = (sum(a.size for c in ("random", "compressible") if c in cases) + 2 * a.size
                + 3 * a.files * max(a.file_size, 4096) + 3 * a.pairs * a.pair_payload)
        free = shutil.disk_usage(self.root).free
        if free < need:
            raise SystemExit(f"{self.root}: {free / 2**30:.1f} GiB free, the run needs about "
                             f"{need / 2**30:.1f} GiB; use --size or --tmp")
        t = time.monotonic()
        if "random" in cases:
            path = self.data / "random.bin"
            info["random"] = {"path": path, "bytes": a.size, "sha256": write_random(path, a.size)}
        if "compressible" in cases:
            path = self.data / "data.csv"
            digest, ratio = write_compressible(path, a.size)
            info["compressible"] = {"path": path, "bytes": a.size, "sha256": digest,
                                    "zlib1_ratio": round(ratio, 2)}
        if "files" in cases:
            path = self.data / "files"
            write_files(path, a.files, a.file_size)
            info["files"] = {"path": path, "bytes": a.files * a.file_size, "files": a.files}
        if "pairs" in cases:
            path = self.data / "pairs"
            path.mkdir()
            for i in range(a.pairs):
                (path / f"pair-{i}.bin").write_bytes(os.urandom(a.pair_payload))
            info["pairs"] = {"path": path, "bytes": a.pairs * a.pair_payload, "pairs": a.pairs}
        print(f"data ready in {time.monotonic() - t:.1f} s under {self.data}", flush=True)
        return info

    # ---- one measurement -----------------------------------------------------------

    def timeout_for(self, case: str, data: dict[str, Any]) -> float:
        if self.args.timeout:
            return float(self.args.timeout)
        if case == "files":
            return 60.0 + float(data["files"]) * 0.02
        if case == "pairs":
            return 120.0 + float(data["pairs"]) * 0.3
        return 60.0 + float(data["bytes"]) / (10 * MB)

    def measure(self, tool: Tool, case: str, data: dict[str, Any]) -> dict[str, Any]:
        self.counter += 1
        work = self.root / f"run{self.counter:03d}-{case}-{tool.name}"
        work.mkdir()
        out = work / "out"
        out.mkdir()
        try:
            if case == "pairs":
                return self._measure_pairs(tool, work, out, data)
            return self._measure_transfer(tool, case, work, out, data)
        except Exception as exc:  # a broken tool must not stop the run
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        finally:
            kill_everything()
            shutil.rmtree(work, ignore_errors=True)

    def _stop_relays(self, relays: RelaySet) -> dict[str, Any]:
        for p in relays.all():
            p.terminate()
        usage = relays.main.rusage()
        result: dict[str, Any] = {
            "relay_maxrss_kb": usage.get("maxrss_kb"),
            "relay_rss_idle_kb": relays.rss_idle_kb,
        }
        if "cpu_s" in usage:
            result["relay_cpu_s"] = max(0.0, usage["cpu_s"] - relays.cpu_ready)
        for p in relays.others:
            u = p.rusage()
            result[f"{p.name}_cpu_s"] = u.get("cpu_s")
            result[f"{p.name}_maxrss_kb"] = u.get("maxrss_kb")
        return result

    def _ready(self, relays: RelaySet) -> None:
        relays.cpu_ready = relays.main.cpu_now() or 0.0
        relays.rss_idle_kb = relays.main.status_kb("VmRSS")
        relays.fd_idle = relays.main.fd_count()

    def _measure_transfer(self, tool: Tool, case: str, work: Path, out: Path,
                          data: dict[str, Any]) -> dict[str, Any]:
        relays = tool.start_relay(work, case)
        self._ready(relays)
        src: Path = data["path"]
        send_argv, recv_argv = tool.commands(relays, tool.code(self.counter), src, out, case)
        env, cwd = tool.env(self.tmp), tool.cwd(work)
        before = cpu_times()
        t0 = time.monotonic()
        sender = Proc(self.launcher, "sender", send_argv, logdir=work, env=env, cwd=cwd)
        receiver = Proc(self.launcher, "receiver", recv_argv, logdir=work, env=env, cwd=cwd)
        finished = wait_all([sender, receiver], self.timeout_for(case, data))
        wall = max(p.ended or time.monotonic() for p in (sender, receiver)) - t0
        for p in (sender, receiver):
            p.terminate(grace=2)
        result: dict[str, Any] = {"wall_s": wall}
        result.update(self._stop_relays(relays))
        for p in (sender, receiver):
            u = p.rusage()
            result[f"{p.name}_exit"] = u.get("exit")
            result[f"{p.name}_cpu_s"] = u.get("cpu_s")
            result[f"{p.name}_user_s"] = u.get("user_s")
            result[f"{p.name}_sys_s"] = u.get("sys_s")
            result[f"{p.name}_maxrss_kb"] = u.get("maxrss_kb")
        add_noise(result, before)
        problems = []
        if not finished:
            problems.append(f"timeout after {self.timeout_for(case, data):g} s")
        for p in (sender, receiver):
            if p.popen.returncode != 0:
                problems.append(f"{p.name} exit {p.popen.returncode}: {p.log_tail()}")
        if case == "files":
            intact, why = verify_tree(src, out)
        else:
            found = find_output(out, src.name)
            intact = found is not None and sha256_file(found) == data["sha256"]
            why = "" if intact else ("no output" if found is None else "SHA-256 differs")
        if not intact:
            problems.append(f"output not intact: {why}")
        result["intact"] = intact
        result["ok"] = intact and not problems
        if problems:
            result["error"] = "; ".join(problems)[:2000]
        if result["ok"]:
            if case == "files":
                result["files_s"] = data["files"] / wall
            result["mb_s"] = data["bytes"] / MB / wall
            add_per_gb(result, data["bytes"])
        return result

    def _measure_pairs(self, tool: Tool, work: Path, out: Path,
                       data: dict[str, Any]) -> dict[str, Any]:
        n = data["pairs"]
        relays = tool.start_relay(work, "pairs")
        self._ready(relays)
        port = next(iter(relays.ports.values()))
        target = relays.url or f"127.0.0.1:{port}"
        prefix = f"pairs-{self.counter}-{os.urandom(3).hex()}"
        common = ["--target", target, "--prefix", prefix, "--n", str(n),
                  "--src", str(data["path"]), "--out", str(out),
                  "--timeout", str(self.timeout_for("pairs", data)),
                  "--ramp", str(self.args.pair_ramp)]
        env, cwd = tool.env(self.tmp), tool.cwd(work)
        peak = {"fds": relays.fd_idle or 0, "rss": relays.rss_idle_kb or 0}
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                fds = relays.main.fd_count()
                rss = relays.main.status_kb("VmRSS")
                if fds:
                    peak["fds"] = max(peak["fds"], fds)
                if rss:
                    peak["rss"] = max(peak["rss"], rss)
                stop.wait(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        before = cpu_times()
        t0 = time.monotonic()
        receivers = Proc(self.launcher, "receiver", [*tool.pairs_client(), "--role", "receive",
                                                      *common], logdir=work, env=env, cwd=cwd)
        # All receivers connect and wait first, so that all N pairs are open at once.
        idle_fds = relays.fd_idle or 0
        deadline = time.monotonic() + 60 + n * 0.05
        while time.monotonic() < deadline and receivers.alive():
            if (relays.main.fd_count() or 0) >= idle_fds + n:
                break
            time.sleep(0.01)
        t_connected = time.monotonic() - t0
        t1 = time.monotonic()
        senders = Proc(self.launcher, "sender", [*tool.pairs_client(), "--role", "send",
                                                  *common], logdir=work, env=env, cwd=cwd)
        timeout = self.timeout_for("pairs", data)
        finished = wait_all([senders, receivers], timeout)
        end = max(p.ended or time.monotonic() for p in (senders, receivers))
        stop.set()
        watcher.join()
        for p in (senders, receivers):
            p.terminate(grace=2)
        result: dict[str, Any] = {"wall_s": end - t0, "connect_s": t_connected,
                                  "transfer_s": end - t1}
        result.update(self._stop_relays(relays))
        for p in (senders, receivers):
            u = p.rusage()
            result[f"{p.name}_exit"] = u.get("exit")
            result[f"{p.name}_cpu_s"] = u.get("cpu_s")
            result[f"{p.name}_maxrss_kb"] = u.get("maxrss_kb")
        add_noise(result, before)
        # Connections open at once = relay fds above idle (two per pair when all are in).
        result["peak_connections"] = max(0, peak["fds"] - idle_fds)
        bad = 0
        for i in range(n):
            name = f"pair-{i}.bin"
            got = find_output(out / str(i), name) if (out / str(i)).is_dir() else None
            if got is None or got.read_bytes() != (data["path"] / name).read_bytes():
                bad += 1
        result["intact_pairs"] = n - bad
        result["intact"] = bad == 0
        problems = []
        if not finished:
            problems.append(f"timeout after {timeout:g} s")
        for p in (senders, receivers):
            if p.popen.returncode != 0:
                problems.append(f"{p.name}s exit {p.popen.returncode}: {p.log_tail(4)}")
        if bad:
            problems.append(f"{bad} of {n} outputs missing or wrong")
        result["ok"] = not problems
        if problems:
            result["error"] = "; ".join(problems)[:2000]
        maxrss = result.get("relay_maxrss_kb") or peak["rss"]
        if relays.rss_idle_kb is not None and maxrss:
            result["relay_kb_per_pair"] = (maxrss - relays.rss_idle_kb) / n
        result["pairs_s"] = n / result["wall_s"]
        add_per_gb(result, data["bytes"])
        return result


# --------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------


def add_per_gb(result: dict[str, Any], nbytes: int) -> None:
    """relay CPU per GB forwarded, and all processes' CPU per GB (what 2 cores must do)."""
    gb = nbytes / GB
    if result.get("relay_cpu_s") is not None:
        result["relay_cpu_s_per_gb"] = result["relay_cpu_s"] / gb
    parts = [result.get(k) for k in ("sender_cpu_s", "receiver_cpu_s", "relay_cpu_s",
                                     "mailbox_cpu_s")]
    if all(isinstance(v, (int, float)) for v in parts[:3]):
        result["all_cpu_s_per_gb"] = sum(v for v in parts if isinstance(v, (int, float))) / gb

#: metrics summarised as medians, and whether bigger is better (for the printed ratio).
METRICS = ["mb_s", "files_s", "pairs_s", "wall_s", "connect_s", "transfer_s",
           "sender_cpu_s", "receiver_cpu_s", "relay_cpu_s", "relay_cpu_s_per_gb",
           "all_cpu_s_per_gb",
           "mailbox_cpu_s", "sender_maxrss_kb", "receiver_maxrss_kb", "relay_maxrss_kb",
           "relay_rss_idle_kb", "mailbox_maxrss_kb", "relay_kb_per_pair", "peak_connections",
           "intact_pairs", "sender_user_s", "sender_sys_s", "receiver_user_s",
           "receiver_sys_s", "other_cpu_s", "steal_s", "noise"]


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if r.get("ok") and r.get("counted", True)]
    median: dict[str, float] = {}
    for m in METRICS:
        values = [r[m] for r in good if isinstance(r.get(m), (int, float))]
        if values:
            median[m] = statistics.median(values)
    failed = [r for r in runs if not r.get("ok")]
    return {"runs": runs, "ok": bool(good) and not failed, "failures": len(failed),
            "counted": len(good), "discarded_noisy": sum(1 for r in runs
                                   if r.get("noisy") and not r.get("counted", True)),
            "median": median}


def add_ratios(case: dict[str, Any]) -> None:
    """ratio_to_baseline (and ratio_to_wsmin where wsmin ran): each median ÷ theirs."""
    base = case["results"].get("baseline", {}).get("median", {})
    wsmin = case["results"].get("wsmin", {}).get("median", {})
    for res in case["results"].values():
        res["ratio_to_baseline"] = {
            m: res["median"][m] / base[m]
            for m in res.get("median", {}) if base.get(m)
        }
        if wsmin:
            res["ratio_to_wsmin"] = {
                m: res["median"][m] / wsmin[m]
                for m in res.get("median", {}) if wsmin.get(m)
            }


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def print_case(name: str, case: dict[str, Any]) -> None:
    print(f"\n== {name}: {case['description']}")
    rate = {"files": "files_s", "pairs": "pairs_s"}.get(name, "mb_s")
    unit = {"files_s": "files/s", "pairs_s": "pairs/s", "mb_s": "MB/s"}[rate]
    head = (f"{'tool':<22}{unit:>10}{'x base':>8}{'wall s':>8}{'snd CPU':>9}{'rcv CPU':>9}"
            f"{'relay CPU':>10}{'relay s/GB':>11}{'all s/GB':>9}{'snd MB':>8}{'rcv MB':>8}"
            f"{'relay MB':>9}")
    if name == "pairs":
        head += f"{'KiB/pair':>9}{'conns':>7}{'intact':>8}"
    print(head)
    for tool, res in case["results"].items():
        if "skipped" in res:
            print(f"{tool:<22}skipped: {res['skipped']}")
            continue
        m, r = res.get("median", {}), res.get("ratio_to_baseline", {})

        def mb(key: str, m: dict[str, float] = m) -> str:
            return fmt(m[key] / 1024, 0) if key in m else "-"

        line = (f"{tool:<22}{fmt(m.get(rate)):>10}"
                f"{(fmt(r.get(rate), 2) + 'x') if rate in r else '-':>8}"
                f"{fmt(m.get('wall_s'), 2):>8}{fmt(m.get('sender_cpu_s'), 2):>9}"
                f"{fmt(m.get('receiver_cpu_s'), 2):>9}{fmt(m.get('relay_cpu_s'), 2):>10}"
                f"{fmt(m.get('relay_cpu_s_per_gb'), 2):>11}"
                f"{fmt(m.get('all_cpu_s_per_gb'), 2):>9}{mb('sender_maxrss_kb'):>8}"
                f"{mb('receiver_maxrss_kb'):>8}{mb('relay_maxrss_kb'):>9}")
        if name == "pairs":
            line += (f"{fmt(m.get('relay_kb_per_pair'), 1):>9}"
                     f"{fmt(m.get('peak_connections')):>7}"
                     f"{fmt(m.get('intact_pairs')):>8}")
        if res.get("discarded_noisy"):
            line += f"  ({res['discarded_noisy']} noisy runs not counted)"
        if res.get("failures"):
            errors = [x.get("error", "?") for x in res["runs"] if not x.get("ok")]
            line += f"  ({res['failures']} failed: {errors[0][:300]})"
        print(line)


def markdown(results: dict[str, Any]) -> str:
    """The figures as Markdown tables (for benchmarks/README.md)."""
    lines: list[str] = []
    for name, case in results["cases"].items():
        rate = {"files": "files_s", "pairs": "pairs_s"}.get(name, "mb_s")
        unit = {"files_s": "files/s", "pairs_s": "pairs/s", "mb_s": "MB/s"}[rate]
        lines += [f"**{name}**: {case['description']}", ""]
        with_wsmin = any(rate in res.get("ratio_to_wsmin", {})
                         for res in case["results"].values())
        head = [unit, "× baseline", *(["× wsmin"] if with_wsmin else []), "wall s",
                "sender CPU s", "receiver CPU s", "relay CPU s", "relay CPU s/GB",
                "all CPU s/GB", "sender RSS MiB", "receiver RSS MiB", "relay RSS MiB"]
        if name == "pairs":
            head += ["relay KiB/pair", "peak conns", "intact"]
        lines += ["| tool | " + " | ".join(head) + " |",
                  "| --- |" + " ---: |" * len(head)]
        for tool, res in case["results"].items():
            if "skipped" in res:
                lines.append(f"| {tool} | {res['skipped']} |" + " |" * (len(head) - 1))
                continue
            m, r = res.get("median", {}), res.get("ratio_to_baseline", {})

            def mb(key: str, m: dict[str, float] = m) -> str:
                return fmt(m[key] / 1024) if key in m else "-"

            w = res.get("ratio_to_wsmin", {})
            cells = [fmt(m.get(rate), 0 if rate != "pairs_s" else 0),
                     f"{r[rate]:.2f}" if rate in r else "-",
                     *([f"{w[rate]:.2f}" if rate in w else "-"] if with_wsmin else []),
                     fmt(m.get("wall_s"), 2),
                     fmt(m.get("sender_cpu_s"), 2), fmt(m.get("receiver_cpu_s"), 2),
                     fmt(m.get("relay_cpu_s"), 2), fmt(m.get("relay_cpu_s_per_gb"), 2),
                     fmt(m.get("all_cpu_s_per_gb"), 2), mb("sender_maxrss_kb"),
                     mb("receiver_maxrss_kb"), mb("relay_maxrss_kb")]
            if name == "pairs":
                cells += [fmt(m.get("relay_kb_per_pair"), 1), fmt(m.get("peak_connections")),
                          f"{fmt(m.get('intact_pairs'))}/{results['config']['pairs']:,}"]
            note = f" ({res['failures']} of {len(res['runs'])} runs failed)" \
                if res.get("failures") else ""
            if res.get("discarded_noisy"):
                note += f" ({res['discarded_noisy']} noisy runs redone)"
            lines.append(f"| {tool}{note} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    cases = [c for c in ALL_CASES if c in results["cases"]]
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 4), squeeze=False)
    for ax, name in zip(axes[0], cases, strict=True):
        case = results["cases"][name]
        rate = {"files": "files_s", "pairs": "pairs_s"}.get(name, "mb_s")
        tools = [t for t, r in case["results"].items() if rate in r.get("median", {})]
        values = [case["results"][t]["median"][rate] for t in tools]
        colors = {"baseline": "#777", "socat8k": "#aaa", "ours": "#2a7", "seed": "#c73",
                  "wormhole": "#37c", "wsmin": "#a5a"}
        bars = ax.bar(tools, values, color=[colors.get(t, "#999") for t in tools])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        unit = {"mb_s": "MB/s", "files_s": "files/s", "pairs_s": "pairs/s"}[rate]
        ax.set_title(f"{name} ({unit}, median)", fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"p2p-copy benchmark, {results['machine']['nproc']} cores, "
                 f"{results['started'][:16]}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return f"plot written to {path}"


def warm_up(bench: Bench, tools: list[Tool], args: argparse.Namespace,
            data: dict[str, Any]) -> list[dict[str, Any]]:
    """Unmeasured runs: the baseline once per large-file case (fresh tmpfs memory gets
    touched once, which on a VM can be slow), every tool once on the smallest case (its
    imports reach the page cache)."""
    plan: list[tuple[Tool, str]] = []
    if args.warmup:
        by_name = {t.name: t for t in tools}
        for case in ("random", "compressible"):
            if case in args.cases and "baseline" in by_name:
                plan.append((by_name["baseline"], case))
        small = next((c for c in ("files", "pairs", "random", "compressible")
                      if c in args.cases), None)
        for tool in tools:
            case = small if small in tool.cases else next(
                (c for c in args.cases if c in tool.cases), None)
            if case and (tool, case) not in plan:
                plan.append((tool, case))
    done = []
    for tool, case in plan:
        t = time.monotonic()
        r = bench.measure(tool, case, data[case])
        done.append({"tool": tool.name, "case": case, "ok": r.get("ok"),
                     "wall_s": r.get("wall_s"), "error": r.get("error")})
        print(f"  warm-up  {case:<12} {tool.name:<9} ({time.monotonic() - t:.1f} s) "
              f"{'ok' if r.get('ok') else 'FAILED: ' + str(r.get('error'))[:300]}", flush=True)
    return done


def run(args: argparse.Namespace) -> int:
    started = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    machine = machine_facts()
    b0, t0 = cpu_times()[0], time.monotonic()
    time.sleep(1.0)
    machine["busy_cores_start"] = (cpu_times()[0] - b0) / (time.monotonic() - t0)
    print(f"p2p-copy benchmark: {machine['nproc']} cores, {machine['cpu_model']}, "
          f"load average {machine['loadavg_start'][0]:.2f}, other processes use "
          f"{machine['busy_cores_start']:.2f} cores now", flush=True)
    if machine["busy_cores_start"] > 0.2:
        print("  note: the machine is busy; figures will be noisy (runs during which others "
              f"take over {100 * (args.max_noise or 0):.0f} % of the CPUs are redone)",
              flush=True)
    bench = Bench(args)
    results: dict[str, Any] = {
        "schema": 1, "started": started, "command": [sys.executable, *sys.argv],
        "machine": machine, "tmpfs": str(args.tmp),
        "launcher": {"kind": bench.launcher_kind},
        "config": {"size": args.size, "files": args.files, "file_size": args.file_size,
                   "pairs": args.pairs, "pair_payload": args.pair_payload,
                   "repeat": args.repeat, "warmup": args.warmup, "max_noise": args.max_noise,
                   "retries": args.retries, "quiet_wait": args.quiet_wait, "tools": args.only,
                   "cases": args.cases,
                   "socat_buffer": SOCAT_BUFFER, "pair_ramp": args.pair_ramp},
        "tools": {}, "cases": {},
    }
    try:
        floor = Proc(bench.launcher, "floor", ["true"], logdir=bench.tmp,
                     env=clean_env(bench.tmp), cwd=bench.tmp)
        wait_all([floor], 30)
        results["launcher"]["rss_floor_kb"] = floor.rusage().get("maxrss_kb")
        print(f"launcher: {bench.launcher_kind}, peak RSS of `true` under it: "
              f"{results['launcher']['rss_floor_kb']} kB", flush=True)
        tools: list[Tool] = []
        for name in args.only:
            t0 = time.monotonic()
            tool = TOOL_CLASSES[name](bench)
            results["tools"][name] = {"label": tool.label, "available": tool.available,
                                      "version": tool.version, "description": tool.description}
            if tool.available:
                tools.append(tool)
                print(f"tool {name}: {tool.version} ({time.monotonic() - t0:.1f} s)", flush=True)
            else:
                results["tools"][name]["reason"] = tool.reason
                print(f"tool {name}: NOT AVAILABLE: {tool.reason}", flush=True)
        data = bench.prepare(args.cases)
        descriptions = {
            "random": f"one {args.size / 2**20:g} MiB file of random bytes",
            "compressible": f"one {args.size / 2**20:g} MiB CSV text file "
                            f"(zlib -1 ratio {data.get('compressible', {}).get('zlib1_ratio')})",
            "files": f"{args.files:,} files of {args.file_size:,} bytes in "
                     f"{(args.files + 999) // 1000} folders",
            "pairs": f"{args.pairs:,} pairs at once through one relay, "
                     f"{args.pair_payload:,} random bytes each",
        }
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {c: {} for c in args.cases}
        results["warmup"] = warm_up(bench, tools, args, data)
        for rep in range(args.repeat):
            for case in args.cases:
                order = tools[rep % len(tools):] + tools[:rep % len(tools)] if tools else []
                for tool in order:
                    if case not in tool.cases:
                        continue
                    attempts = []
                    for attempt in range(1 + args.retries):
                        waited = wait_quiet(args.quiet_wait) if args.quiet_wait else 0.0
                        t = time.monotonic()
                        r = bench.measure(tool, case, data[case])
                        r["rep"], r["attempt"], r["waited_for_quiet_s"] = rep, attempt, waited
                        # Share of the machine that other processes took during the run.
                        r["noise"] = r.get("other_cpu_s", 0.0) / max(
                            1e-9, r.get("wall_s", 0.0) * machine["nproc"])
                        attempts.append(r)
                        rate = r.get("files_s") or r.get("pairs_s") or r.get("mb_s")
                        noisy = bool(args.max_noise) and r["noise"] > args.max_noise
                        status = ("ok" if r.get("ok") else
                                  f"FAILED: {r.get('error', '')[:400]}")
                        if noisy and r.get("ok"):
                            status += (" - noisy, " + ("measured again" if attempt < args.retries
                                                       else "no retries left"))
                        print(f"  rep {rep + 1}/{args.repeat} {case:<12} {tool.name:<9} "
                              f"{fmt(rate, 1):>9} in {r.get('wall_s', 0):.2f} s "
                              f"({time.monotonic() - t:.1f} s; others took "
                              f"{100 * r['noise']:.0f} % of the CPUs) {status}", flush=True)
                        if not (noisy and r.get("ok")):
                            break
                    # Count the least noisy attempt; keep the others, marked, in the JSON.
                    best = min(attempts, key=lambda x: (not x.get("ok"), x["noise"]))
                    for r in attempts:
                        r["counted"] = r is best
                        r["noisy"] = bool(args.max_noise) and r["noise"] > args.max_noise
                    runs[case].setdefault(tool.name, []).extend(attempts)
        for case in args.cases:
            c: dict[str, Any] = {"description": descriptions[case],
                                 "bytes": data[case]["bytes"], "results": {}}
            if case == "compressible":
                c["zlib1_ratio"] = data[case]["zlib1_ratio"]
            for name in args.only:
                if name in runs[case]:
                    c["results"][name] = summarise(runs[case][name])
                elif not results["tools"][name]["available"]:
                    c["results"][name] = {"skipped": "not available: "
                                          + results["tools"][name].get("reason", "")[:300]}
                else:
                    why = {"wormhole": " (it needs two ~60 MB processes per pair; 1000 pairs "
                                       "would be 2000 processes)",
                           "socat8k": " (socat cannot pair by code; the baseline row uses "
                                      "bench.py's asyncio pairing relay)",
                           "wsmin": " (a reference for one stream of bytes: its relay pairs "
                                    "only the first /send with the first /recv, no codes, and "
                                    "it has no format for many files)"}.get(name, "")
                    c["results"][name] = {"skipped": f"{name} does not take part in {case}{why}"}
            add_ratios(c)
            results["cases"][case] = c
        results["machine"]["loadavg_end"] = list(os.getloadavg())
        results["finished"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        for case in args.cases:
            print_case(case, results["cases"][case])
        for case in ("random", "compressible"):
            res = results["cases"].get(case, {}).get("results", {})
            ours = res.get("ours", {})
            if "mb_s" in ours.get("ratio_to_wsmin", {}):
                print(f"\n{case}: ours ÷ wsmin (minimal websockets relay, AES-GCM + SHA-256) = "
                      f"{ours['ratio_to_wsmin']['mb_s']:.2f}x in MB/s, "
                      f"ours ÷ baseline = {ours['ratio_to_baseline'].get('mb_s', 0):.2f}x, "
                      f"wsmin ÷ baseline = "
                      f"{res['wsmin'].get('ratio_to_baseline', {}).get('mb_s', 0):.2f}x")
        print("\nCPU in seconds (user+sys of the whole process, from wait4); relay CPU is "
              "counted from the moment it listens; MB/s and GB are 10^6 and 10^9 bytes; the "
              "RSS columns are ru_maxrss in MiB.")
    finally:
        bench.close()
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1, default=str) + "\n")
        print(f"results written to {path}")
    if args.plot:
        print(plot(results, Path(args.plot)))
    failed = [f"{case}/{tool}" for case, c in results["cases"].items()
              for tool, r in c["results"].items() if r.get("failures")]
    if failed:
        print(f"some runs failed: {', '.join(failed)}")
    return 0


# --------------------------------------------------------------------------------------
# Helpers run as subprocesses: raw TCP baseline without socat, and the pairs clients
# --------------------------------------------------------------------------------------

CHUNK = 256 * 1024


def _connect_retry(port: int, timeout: float = 30.0) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port))
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def helper_tcp_send(port: int, path: str) -> int:
    sock = _connect_retry(port)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with sock, (open(path, "rb", buffering=0) if path != "-"
                else os.fdopen(0, "rb", buffering=0)) as f:
        while n := f.readinto(buf):
            sock.sendall(view[:n])
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # the relay closes once the receiver has everything
    return 0


def helper_tcp_recv(port: int, path: str) -> int:
    sock = _connect_retry(port)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with sock, (open(path, "wb", buffering=0) if path != "-"
                else os.fdopen(1, "wb", buffering=0)) as f:
        while n := sock.recv_into(buf):
            f.write(view[:n])
    return 0


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def helper_forward(p1: int, p2: int) -> int:
    """A minimal relay: one connection on p1, one on p2, bytes copied both ways."""
    got: list[asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = [
        asyncio.get_running_loop().create_future() for _ in range(2)]

    def accept(i: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], None]:
        def cb(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            if not got[i].done():
                got[i].set_result((r, w))
        return cb

    servers = [await asyncio.start_server(accept(i), "127.0.0.1", p)
               for i, p in enumerate((p1, p2))]
    (r1, w1), (r2, w2) = await asyncio.gather(*got)
    for s in servers:
        s.close()
    await asyncio.gather(_pump(r1, w2), _pump(r2, w1))
    for w in (w1, w2):
        w.close()
    return 0


async def helper_pairing_relay(port: int) -> int:
    """Pairs raw TCP connections by a first line "S|R CODE\\n" and copies S -> R."""
    waiting: dict[str, tuple[str, asyncio.StreamReader, asyncio.StreamWriter,
                             asyncio.Future[None]]] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            role, _, code = (await reader.readline()).decode().strip().partition(" ")
        except (ConnectionError, UnicodeDecodeError):
            writer.close()
            return
        other = waiting.pop(code, None)
        if other is None:
            done = asyncio.get_running_loop().create_future()
            waiting[code] = (role, reader, writer, done)
            await done
            return
        orole, oreader, owriter, odone = other
        (sr, _sw), (_rr, rw) = (((reader, writer), (oreader, owriter)) if role == "S"
                                else ((oreader, owriter), (reader, writer)))
        await _pump(sr, rw)
        for w in (writer, owriter):
            w.close()
        odone.set_result(None)

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    loop = asyncio.get_running_loop()
    stopping = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stopping.set_result, None)
    async with server:
        await stopping
    return 0


async def pairs_client(args: argparse.Namespace) -> int:
    """N senders or N receivers at once (``--impl``: ours, seed or tcp)."""
    src, out = Path(args.src), Path(args.out)

    if args.impl == "ours":
        import p2p_copy

        async def one(i: int) -> None:
            code = f"{i}-{args.prefix}"  # the room is the part before the first "-"
            if args.role == "send":
                await p2p_copy.send(args.target, code, [src / f"pair-{i}.bin"],
                                    progress="none", wait_timeout=args.timeout)
            else:
                await p2p_copy.receive(args.target, code, out / str(i), progress="none",
                                       wait_timeout=args.timeout)
    elif args.impl == "seed":
        import p2p_copy  # the venv's 0.1.1

        async def one(i: int) -> None:
            code = f"{args.prefix}-{i}"
            if args.role == "send":
                rc = await p2p_copy.send(args.target, code, [str(src / f"pair-{i}.bin")])
            else:
                (out / str(i)).mkdir(parents=True, exist_ok=True)
                rc = await p2p_copy.receive(  # type: ignore[call-arg]
                    args.target, code, out=str(out / str(i)))
            if rc:
                raise RuntimeError(f"exit code {rc}")
    else:
        host, _, port = args.target.rpartition(":")

        async def one(i: int) -> None:
            code = f"{args.prefix}-{i}"
            reader, writer = await asyncio.open_connection(host, int(port))
            if args.role == "send":
                writer.write(f"S {code}\n".encode() + (src / f"pair-{i}.bin").read_bytes())
                await writer.drain()
                writer.write_eof()
                await reader.read()
            else:
                writer.write(f"R {code}\n".encode())
                await writer.drain()
                data = await reader.read()
                (out / str(i)).mkdir(parents=True, exist_ok=True)
                (out / str(i) / f"pair-{i}.bin").write_bytes(data)
            writer.close()

    errors: list[str] = []

    async def guarded(i: int) -> None:
        try:
            async with asyncio.timeout(args.timeout):
                await one(i)
        except Exception as exc:
            errors.append(f"{i}: {type(exc).__name__}: {exc}")

    tasks = []
    for i in range(args.n):
        tasks.append(asyncio.ensure_future(guarded(i)))
        if args.ramp and (i + 1) % args.ramp == 0:
            await asyncio.sleep(0.01)  # --ramp connections per 10 ms: no SYN flood
    await asyncio.gather(*tasks)
    print(json.dumps({"role": args.role, "ok": args.n - len(errors), "failed": len(errors),
                      "errors": errors[:5]}), flush=True)
    return 1 if errors else 0


#: wsmin's fixed demo key (a reference pipeline, not a secure tool: no key exchange).
WSMIN_KEY = bytes(range(32))
WSMIN_MAX_SIZE = 1 << 20  # > one 256 KiB chunk + the GCM tag


def _wsmin_nonce(i: int) -> bytes:
    return i.to_bytes(12, "big")


async def helper_wsmin_relay(port: int) -> int:
    """The first connection on /send and the first on /recv are paired; every message is
    forwarded to the other side; when one side closes, the other is closed."""
    from websockets.asyncio.server import ServerConnection, serve

    loop = asyncio.get_running_loop()
    peers: dict[str, asyncio.Future[ServerConnection]] = {
        "/send": loop.create_future(), "/recv": loop.create_future()}

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else ""
        mine = peers.get(path)
        if mine is None or mine.done():
            await ws.close(1008, "only one /send and one /recv")
            return
        mine.set_result(ws)
        other = await peers["/recv" if path == "/send" else "/send"]
        try:
            async for msg in ws:
                await other.send(msg)
        finally:
            await other.close()

    stopping = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stopping.set_result, None)
    async with serve(handler, "127.0.0.1", port, compression=None,
                     max_size=WSMIN_MAX_SIZE):
        await stopping
    return 0


async def helper_wsmin_send(url: str, path: str) -> int:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from websockets.asyncio.client import connect

    aes, h = AESGCM(WSMIN_KEY), hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    async with connect(url, compression=None, max_size=WSMIN_MAX_SIZE) as ws:
        with open(path, "rb", buffering=0) as f:
            i = 0
            while n := f.readinto(buf):
                h.update(view[:n])
                await ws.send(aes.encrypt(_wsmin_nonce(i), view[:n], None))
                i += 1
        await ws.send(h.hexdigest())
    return 0


async def helper_wsmin_recv(url: str, path: str) -> int:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from websockets.asyncio.client import connect

    aes, h = AESGCM(WSMIN_KEY), hashlib.sha256()
    digest = None
    async with connect(url, compression=None, max_size=WSMIN_MAX_SIZE) as ws:
        with open(path, "wb", buffering=0) as f:
            i = 0
            async for msg in ws:
                if isinstance(msg, str):
                    digest = msg
                    break
                data = aes.decrypt(_wsmin_nonce(i), msg, None)
                h.update(data)
                f.write(data)
                i += 1
    if digest != h.hexdigest():
        print(f"SHA-256 mismatch: sender {digest}, received {h.hexdigest()}", file=sys.stderr)
        return 1
    return 0


def helper_main(argv: list[str]) -> int:
    cmd = argv[0]
    if cmd == "_wsmin-relay":
        return asyncio.run(helper_wsmin_relay(int(argv[1])))
    if cmd == "_wsmin-send":
        return asyncio.run(helper_wsmin_send(argv[1], argv[2]))
    if cmd == "_wsmin-recv":
        return asyncio.run(helper_wsmin_recv(argv[1], argv[2]))
    if cmd == "_tcp-send":
        return helper_tcp_send(int(argv[1]), argv[2])
    if cmd == "_tcp-recv":
        return helper_tcp_recv(int(argv[1]), argv[2])
    if cmd == "_forward":
        return asyncio.run(helper_forward(int(argv[1]), int(argv[2])))
    if cmd == "_pairing-relay":
        return asyncio.run(helper_pairing_relay(int(argv[1])))
    if cmd == "_pairs-client":
        p = argparse.ArgumentParser(prog="bench.py _pairs-client")
        p.add_argument("--impl", choices=["ours", "seed", "tcp"], required=True)
        p.add_argument("--role", choices=["send", "receive"], required=True)
        for opt in ("--target", "--prefix", "--src", "--out"):
            p.add_argument(opt, required=True)
        p.add_argument("--n", type=int, required=True)
        p.add_argument("--timeout", type=float, default=300)
        p.add_argument("--ramp", type=int, default=50)
        return asyncio.run(pairs_client(p.parse_args(argv[1:])))
    raise SystemExit(f"unknown helper {cmd}")


# --------------------------------------------------------------------------------------


def _list(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return [x for x in allowed if x in items]
    return parse


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark p2p-copy against a raw TCP relay, a minimal websockets "
        "relay, p2p-copy 0.1.1 and magic-wormhole on loopback (see benchmarks/README.md).")
    p.add_argument("--size", type=parse_size, default=None,
                   help="large file size: 1GiB (default), 256MiB, 64M; a bare number is MiB")
    p.add_argument("--files", type=int, default=None, help="small files (default 10000)")
    p.add_argument("--file-size", type=parse_size, default=None,
                   help="size of each small file (default 4KiB)")
    p.add_argument("--pairs", type=int, default=None,
                   help="pairs at once through one relay (default 1000)")
    p.add_argument("--pair-payload", type=parse_size, default=None,
                   help="bytes each pair sends (default 256KiB)")
    p.add_argument("--pair-ramp", type=int, default=50,
                   help="pair clients open this many connections per 10 ms (default 50)")
    p.add_argument("--repeat", type=int, default=None,
                   help="interleaved repetitions; medians are reported (default 5, as the issue)")
    p.add_argument("--only", type=_list(ALL_TOOLS), default=list(ALL_TOOLS),
                   help="tools, comma-separated: baseline,socat8k,wsmin,ours,seed,wormhole "
                   "(default all)")
    p.add_argument("--cases", type=_list(ALL_CASES), default=list(ALL_CASES),
                   help="cases, comma-separated: random,compressible,files,pairs (default all)")
    p.add_argument("--warmup", type=int, choices=[0, 1], default=None,
                   help="1: unmeasured warm-up runs first (default; 0 with --quick)")
    p.add_argument("--max-noise", type=float, default=None,
                   help="measure a run again if other processes took more than this share "
                   "of the CPUs during it (default 0.1; 0 = never; 0 with --quick)")
    p.add_argument("--retries", type=int, default=2,
                   help="at most this many extra attempts for a noisy run (default 2)")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="before each run, wait up to this many seconds for other processes "
                   "to use under 15 %% of a core (default 20; 0 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes for a smoke test: 4 MiB, 200 files, 10 pairs, 1 repetition")
    p.add_argument("--json", default=str(DEFAULT_JSON),
                   help=f"where to write the results (default {DEFAULT_JSON.relative_to(REPO)})")
    p.add_argument("--plot", default=None, help="draw a PNG plot here (needs matplotlib)")
    p.add_argument("--markdown", metavar="JSON", default=None,
                   help="print the figures of a results file as Markdown tables and exit")
    p.add_argument("--tmp", default="/dev/shm" if os.path.isdir("/dev/shm") else "/tmp",
                   help="tmpfs for data and outputs (default /dev/shm)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per transfer before it is killed (default: from the size)")
    p.add_argument("--no-install", action="store_true",
                   help="do not create or refresh virtualenvs (ours, 0.1.1, magic-wormhole); "
                   "ours then runs from the current interpreter's install")
    p.add_argument("--baseline", choices=["auto", "python"], default="auto",
                   help="'python' uses bench.py's asyncio forwarder even if socat is present")
    p.add_argument("--launcher", choices=["auto", "python"], default="auto",
                   help="'python' uses the Python launcher even if a C compiler is present")
    args = p.parse_args(argv)
    quick = {"size": 4 << 20, "files": 200, "file_size": 4096, "pairs": 10,
             "pair_payload": 64 << 10, "repeat": 1, "warmup": 0, "max_noise": 0.0,
             "quiet_wait": 0.0}
    full = {"size": 1 << 30, "files": 10000, "file_size": 4096, "pairs": 1000,
            "pair_payload": 256 << 10, "repeat": 5, "warmup": 1, "max_noise": 0.1,
            "quiet_wait": 20.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.repeat < 1 or args.size < 1 or args.files < 1 or args.pairs < 1:
        p.error("--repeat, --size, --files and --pairs must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("_"):
        return helper_main(argv)
    args = parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    try:
        return run(args)
    finally:
        kill_everything()

