"""What ours is compared with: the raw TCP relay (socat with 256 KiB buffers, or
bench.py's asyncio forwarder), socat with its default 8 KiB, the minimal websockets
pipeline (wsmin), p2p-copy 0.1.1 (the seed) and magic-wormhole.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import (
    BENCHMARKS,
    LOOPBACK_CASES,
    SCRIPT,
    SEED_VENV,
    SEED_VERSION,
    SOCAT_BUFFER,
    WORMHOLE_PACKAGES,
    WORMHOLE_VENV,
)
from .measure import free_port, wait_listening
from .tools import RelaySet, Tool, clean_env, ensure_venv, isolated_env

if TYPE_CHECKING:
    from .cases import Bench


class Baseline(Tool):
    name = "baseline"
    label = "raw TCP relay"
    cases: tuple[str, ...] = (*LOOPBACK_CASES, "longlink")
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
            argv = [self.socat, "-b", str(self.buffer), self.listen(p1), self.listen(p2)]
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
                to_relay, from_relay = self.connect('"$2"'), self.connect('"$1"')
                send = ["sh", "-c", f'tar -C "$1" -cf - . | {self.socat} -u -b {bs} - '
                        f'{to_relay}', "sh", str(src), str(p1)]
                recv = ["sh", "-c", f'{self.socat} -u -b {bs} '
                        f'{from_relay},retry=2000,interval=0.005 - | tar -C "$2" -xf -',
                        "sh", str(p2), str(out)]
            else:
                send = [self.socat, "-u", "-b", bs, f"OPEN:{src},rdonly", self.connect(str(p1))]
                recv = [self.socat, "-u", "-b", bs,
                        f"{self.connect(str(p2))},retry=2000,interval=0.005",
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

    def listen(self, port: int) -> str:
        """socat's address for the relay's side of a peer."""
        return f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr"

    def connect(self, port: str) -> str:
        """socat's address for a peer (``port`` may be a shell word such as '"$1"')."""
        return f"TCP:127.0.0.1:{port}"

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


class SocatTls(Baseline):
    """The raw relay with TLS on both legs (socat with OpenSSL): what TLS costs a C relay
    and C peers, the reference for the tools measured over TLS."""

    name = "socat-tls"
    label = "raw TCP relay, socat OpenSSL"
    cases = ("random", "compressible", "files")
    reference = "socat-tls"

    def __init__(self, bench: Bench) -> None:
        super().__init__(bench)
        if not self.socat:
            self.available, self.reason = False, "socat is not installed (or --baseline python)"
            return
        try:
            self.certs = bench.certificates()
        except RuntimeError as exc:
            self.available, self.reason = False, str(exc)
            return
        b = self.buffer
        self.description = (
            f"the baseline with OpenSSL on both legs: relay socat -b {b} "
            "OPENSSL-LISTEN:P1,cert=CHAIN,key=KEY,verify=0 OPENSSL-LISTEN:P2,... (peers are "
            f"not asked for certificates); peers socat -u -b {b} ... OPENSSL:127.0.0.1:Pn,"
            "cafile=CA (the relay's certificate verified, as our peers do with --cafile); "
            f"files through tar as in the baseline; certificates: {self.certs.how}")

    def listen(self, port: int) -> str:
        return (f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,cert={self.certs.chain},"
                f"key={self.certs.key},verify=0")

    def connect(self, port: str) -> str:
        return f"OPENSSL:127.0.0.1:{port},cafile={self.certs.ca}"


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
            cwd=BENCHMARKS)
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
