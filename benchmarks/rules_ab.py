"""A/B timing of the small-file fast paths (issue 18, point 7): does each one pay?

Compares two source trees of p2p_copy (PYTHONPATH each), run by turns, every run in a
fresh interpreter, and prints min / median / max in ms per case and tree:

    python3 benchmarks/rules_ab.py OLD_TREE NEW_TREE [--runs 7] [--cases manifest,paths,...]

Cases (N = 10,000 entries, as a sender's walk makes them: 100 folders of 100 files):
  manifest  encode_manifest() of N file entries, then parse_message() of every part (ms)
  paths     paths.check_entries() of N entries (every rule and the collision check)
  scan      sources.collect_sources() of a folder of N files of 4 KiB (the sender's walk)
  prepare   Destination.prepare() of N entries into a new folder and into one that
            already holds them (the receiver's look at the disk before ``accept``)
  cli       the whole process: a relay, ``send`` and ``receive`` of N files of 4 KiB over
            loopback with the real CLI (python -m p2p_copy), from the sender's start until
            both have exited: wall ms, and CPU ms (user + system) of the two peers, which
            other load on the machine disturbs less
Only loopback is used. The machine is shared: read the spread, not one figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N = 10_000
FILE_BYTES = 4096


def _entries() -> list[object]:
    from p2p_copy.protocol.messages import DirEntry, FileEntry

    entries: list[object] = [DirEntry("data", 0o755, 1_700_000_000.5)]
    for folder in range(N // 100):
        entries.append(DirEntry(f"data/d{folder:03d}", 0o755, 1_700_000_000.25))
        entries.extend(FileEntry(f"data/d{folder:03d}/file-{i:05d}.bin", FILE_BYTES, 0o644,
                                 1_700_000_000.0 + i / 7) for i in range(100))
    return entries


def _tree(root: Path) -> Path:
    """N files of 4 KiB under root/data (made once, reused by every run)."""
    data = root / "data"
    if not (data / "done").exists():
        shutil.rmtree(data, ignore_errors=True)
        for folder in range(N // 100):
            d = data / f"d{folder:03d}"
            d.mkdir(parents=True)
            for i in range(100):
                (d / f"file-{i:05d}.bin").write_bytes(os.urandom(FILE_BYTES))
        (data / "done").write_bytes(b"")
    return data


def one(case: str, work: Path) -> dict[str, float]:
    """Run ``case`` once in this interpreter; ms per measured step."""
    if case == "manifest":
        from p2p_copy.protocol.messages import encode_manifest, parse_message

        entries = _entries()
        t0 = time.perf_counter()
        parts = list(encode_manifest(entries, 256 * 1024))  # type: ignore[arg-type]
        t1 = time.perf_counter()
        for part in parts:
            parse_message(part)
        t2 = time.perf_counter()
        return {"encode": (t1 - t0) * 1e3, "parse": (t2 - t1) * 1e3}
    if case == "paths":
        from p2p_copy.protocol.paths import check_entries

        entries = _entries()
        t0 = time.perf_counter()
        check_entries(entries)  # type: ignore[arg-type]
        return {"check_entries": (time.perf_counter() - t0) * 1e3}
    if case == "scan":
        from p2p_copy.storage.sources import collect_sources

        data = _tree(work)
        t0 = time.perf_counter()
        collect_sources([data], check=False)
        return {"collect_sources": (time.perf_counter() - t0) * 1e3}
    if case == "prepare":
        from p2p_copy.storage.destination import Destination

        entries = _entries()
        out: dict[str, float] = {}
        for label in ("new", "existing"):
            dest = work / f"dest-{os.getpid()}"
            if label == "existing":
                dest.mkdir()
                shutil.copytree(_tree(work), dest / "data")
            t0 = time.perf_counter()
            Destination(dest, entries, overwrite=True).prepare()  # type: ignore[arg-type]
            out[label] = (time.perf_counter() - t0) * 1e3
            shutil.rmtree(dest)
        return out
    if case == "cli":
        return _cli(work)
    raise SystemExit(f"unknown case {case!r}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(work: Path) -> dict[str, float]:
    data = _tree(work)
    port = _free_port()
    env = {**os.environ, "NO_PROXY": "*"}
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(var, None)
    cli = [sys.executable, "-m", "p2p_copy"]
    relay = subprocess.Popen([*cli, "run-relay-server", "127.0.0.1", str(port), "--no-tls"],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = work / f"out-{os.getpid()}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the relay did not start") from None
                time.sleep(0.05)
        url, code = f"ws://127.0.0.1:{port}", "4242-bench-rules-ab"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        send = subprocess.Popen([*cli, "send", url, code, str(data)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        receive = subprocess.run([*cli, "receive", url, code, "--out", str(out), "--yes"],
                                 env=env, capture_output=True, timeout=300)
        send_err = send.communicate(timeout=300)[1]
        wall = (time.perf_counter() - t0) * 1e3
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # before the relay is reaped
        if send.returncode or receive.returncode:
            raise SystemExit(f"transfer failed: {send_err!r} {receive.stderr!r}")
        cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1e3
        return {"wall": wall, "cpu": cpu}
    finally:
        relay.terminate()
        relay.wait(10)
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("trees", nargs="*", metavar="TREE")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--cases", default="manifest,paths,scan,prepare,cli")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, Path(args.work))))
        return
    work = Path(tempfile.mkdtemp(prefix="rules-ab-"))
    try:
        results: dict[tuple[str, str, str], list[float]] = {}
        for case in args.cases.split(","):
            for _ in range(args.runs):
                for tree in args.trees:  # by turns, so that load drifts hit both alike
                    env = {**os.environ, "PYTHONPATH": tree}
                    line = subprocess.run(
                        [sys.executable, __file__, "--one", case, "--work", str(work)],
                        env=env, capture_output=True, text=True, timeout=600, check=True,
                    ).stdout
                    for step, ms in json.loads(line).items():
                        results.setdefault((case, step, tree), []).append(ms)
        for (case, step, tree), values in results.items():
            print(f"{case:9} {step:14} {tree:28} min {min(values):8.1f}  "
                  f"median {statistics.median(values):8.1f}  max {max(values):8.1f}  "
                  f"(n={len(values)})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
