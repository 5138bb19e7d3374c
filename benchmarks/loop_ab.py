"""Interleaved A/B of the CLI's event loop: asyncio's against uvloop, over ws:// and wss://.

Whole CLI processes (relay, sender, receiver) of this checkout, one random file on tmpfs
through a relay on 127.0.0.1, the four variants in turn within each repetition (order
rotated), medians reported. Per role: CPU-s per GB (10^9 bytes) with the CPU of a 1-byte
transfer of the same variant subtracted (start-up and the key exchange), so that a
256 MiB file measures the bytes, not the ~0.2 s each process takes to start. asyncio's
loop is had by hiding uvloop (a ``uvloop`` package that fails to import, first on
PYTHONPATH), as where it is not installed.

    python benchmarks/loop_ab.py --repeat 12 --size 256
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trustme

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
VARIANTS = {  # name: (scheme, uvloop)
    "ws-asyncio": ("ws", False), "ws-uvloop": ("ws", True),
    "wss-asyncio": ("wss", False), "wss-uvloop": ("wss", True),
}
ROLES = ("send", "recv", "relay")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _listening(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"no relay on port {port}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def transfer(work: Path, src: Path, scheme: str, uvloop: bool) -> dict[str, float]:
    """One transfer of ``src``: each role's CPU seconds and the wall time."""
    path = [str(ROOT)] if uvloop else [str(work / "no-uvloop"), str(ROOT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    port = _free_port()
    tls, ca = (["--no-tls"], []) if scheme == "ws" else (
        ["--certfile", str(work / "chain.pem")], ["--cafile", str(work / "ca.pem")])
    cli = [sys.executable, "-m", "p2p_copy"]
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    relay = subprocess.Popen([*cli, "run-relay-server", "127.0.0.1", str(port), *tls,
                              "--log-level", "WARNING"], **quiet)  # type: ignore[call-overload]
    try:
        _listening(port)
        time.sleep(0.1)
        relay_start = _cpu(relay.pid)
        url, code, out = f"{scheme}://127.0.0.1:{port}", "7-loop-ab", work / "out"
        started = time.perf_counter()
        peers = {
            "recv": subprocess.Popen([*cli, "receive", url, code, "--out", str(out), *ca],
                                     **quiet),  # type: ignore[call-overload]
            "send": subprocess.Popen([*cli, "send", url, code, str(src), *ca],
                                     **quiet),  # type: ignore[call-overload]
        }
        result = {}
        for role, proc in peers.items():
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode:
                raise RuntimeError(f"{role} exited {proc.returncode}")
            result[role] = usage.ru_utime + usage.ru_stime
        result["wall"] = time.perf_counter() - started
        result["relay"] = _cpu(relay.pid) - relay_start
        if (out / src.name).stat().st_size != src.stat().st_size:
            raise RuntimeError("the received file differs in size")
        return result
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(15)
        shutil.rmtree(work / "out", ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=12)
    parser.add_argument("--size", type=int, default=256, help="MiB (default 256)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="loop-ab-") as tmp:
        work = Path(tmp)
        (work / "no-uvloop" / "uvloop").mkdir(parents=True)
        (work / "no-uvloop" / "uvloop" / "__init__.py").write_text("raise ImportError\n")
        ca = trustme.CA()
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
            str(work / "chain.pem"))
        ca.cert_pem.write_to_path(str(work / "ca.pem"))
        big, tiny = work / "data.bin", work / "tiny.bin"
        tiny.write_bytes(b"x")
        with open(big, "wb") as f:
            for _ in range(args.size):
                f.write(os.urandom(2**20))
        gb = args.size * 2**20 / 1e9
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
        loads = []
        names = list(VARIANTS)
        for rep in range(args.repeat):
            for name in names[rep % 4:] + names[:rep % 4]:
                loads.append(os.getloadavg()[0])
                whole = transfer(work, big, *VARIANTS[name])
                start = transfer(work, tiny, *VARIANTS[name])
                run = {role: (whole[role] - start[role]) / gb for role in ROLES}
                run["MB/s"] = args.size * 2**20 / 1e6 / whole["wall"]
                runs[name].append(run)
                print(rep, name, {k: round(v, 3) for k, v in run.items()}, flush=True)
    print(f"load average (1 min) at the runs: min {min(loads):.2f}, "
          f"median {statistics.median(loads):.2f}, max {max(loads):.2f}")
    print(f"{'variant':12} {'MB/s':>6} " + " ".join(f"{r:>6}" for r in ROLES)
          + f"   CPU-s/GB, medians of {args.repeat}")
    for name, rs in runs.items():
        medians = [statistics.median(r[k] for r in rs) for k in ("MB/s", *ROLES)]
        print(f"{name:12} {medians[0]:6.0f} " + " ".join(f"{m:6.3f}" for m in medians[1:]))


if __name__ == "__main__":
    main()
