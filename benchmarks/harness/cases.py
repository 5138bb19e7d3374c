"""The cases: their data (random, CSV, many files, pair payloads, the longlink file), how
an output is verified, and one measurement of one tool on one case (``Bench.measure``),
with the peers' connections through a long link (longlink.py) in the longlink case.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import random
import re
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import LONGLINK_RTTS, MB, SCRIPT
from .measure import (
    Proc,
    add_noise,
    add_per_gb,
    build_launcher,
    cpu_times,
    kill_everything,
    wait_all,
    wait_listening,
)
from .tls import Certificates, make_certificates
from .tools import clean_env

if TYPE_CHECKING:
    from .tools import RelaySet, Tool


def longlink_key(rtt: float) -> str:
    """The results' name of the longlink case at one round-trip time: longlink-100ms."""
    return f"longlink-{rtt * 1000:g}ms"


def case_keys(cases: Sequence[str], rtts: Sequence[float] = LONGLINK_RTTS) -> list[str]:
    """The measured cases: longlink becomes one per round-trip time."""
    keys: list[str] = []
    for case in cases:
        keys += [longlink_key(r) for r in rtts] if case == "longlink" else [case]
    return keys


def base_case(key: str) -> str:
    return "longlink" if key.startswith("longlink-") else key


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
        self._certificates: Certificates | None = None

    def certificates(self) -> Certificates:
        """The run's certificates for 127.0.0.1 (made at the first call)."""
        if self._certificates is None:
            self._certificates = make_certificates(self.tmp / "tls")
        return self._certificates

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
                + 3 * a.longlink_size * ("longlink" in cases)
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
        if "longlink" in cases:
            if "random" in info and a.longlink_size == a.size:
                file = {k: info["random"][k] for k in ("path", "bytes", "sha256")}
            else:
                path = self.data / "longlink.bin"
                file = {"path": path, "bytes": a.longlink_size,
                        "sha256": write_random(path, a.longlink_size)}
            for rtt in a.rtts:
                info[longlink_key(rtt)] = {**file, "rtt": rtt, "window": a.window,
                                           "cap_mb_s": a.window / rtt / MB if rtt else None}
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
        if "rtt" in data:  # 4 MiB at 150 ms is 28 MB/s at best, and a link may do less
            return 60.0 + float(data["bytes"]) / (2 * MB)
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
        # The relay role's CPU: every process of it (nginx, each relay), each counted from
        # the moment the relay was ready; the parts stay in the JSON.
        parts: dict[str, float] = {}
        for p in relays.role():
            u = usage if p is relays.main else p.rusage()
            if "cpu_s" in u:
                parts[p.name] = max(0.0, u["cpu_s"] - relays.cpu_ready.get(p.name, 0.0))
        if relays.main.name in parts:
            result["relay_cpu_s"] = sum(parts.values())
        if relays.parts:
            result["relay_parts_cpu_s"] = parts
            result["relay_parts_maxrss_kb"] = {p.name: p.rusage().get("maxrss_kb")
                                               for p in relays.role()}
        for p in relays.others:
            u = p.rusage()
            result[f"{p.name}_cpu_s"] = u.get("cpu_s")
            result[f"{p.name}_maxrss_kb"] = u.get("maxrss_kb")
        return result

    def _ready(self, relays: RelaySet) -> None:
        relays.cpu_ready = {p.name: p.cpu_now() or 0.0 for p in relays.role()}
        relays.rss_idle_kb = relays.main.status_kb("VmRSS")
        relays.fd_idle = relays.main.fd_count()

    def _measure_transfer(self, tool: Tool, case: str, work: Path, out: Path,
                          data: dict[str, Any]) -> dict[str, Any]:
        relays = tool.start_relay(work, base_case(case))
        self._ready(relays)
        src: Path = data["path"]
        link = None
        peers_see = relays
        if "rtt" in data:
            link, peers_see = self._start_link(relays, work, data)
        send_argv, recv_argv = tool.commands(peers_see, tool.code(self.counter), src, out,
                                             base_case(case))
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
        if link is not None:
            link.terminate()
            u = link.rusage()
            result["link_cpu_s"], result["link_maxrss_kb"] = u.get("cpu_s"), u.get("maxrss_kb")
            carried = re.search(r"^carried (\d+) bytes$", link.log_path.read_text(), re.M)
            result["link_bytes"] = int(carried.group(1)) if carried else None
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

    def _start_link(self, relays: RelaySet, work: Path,
                    data: dict[str, Any]) -> tuple[Proc, RelaySet]:
        """One process (``bench.py _longlink``, this interpreter) with a long link in front
        of each of the relay's ports; returns it and the relays as the peers see them (every
        port, and the URL's, replaced by its link's)."""
        ports = list(relays.ports.items())
        argv = [sys.executable, SCRIPT, "_longlink", "--rtt", f"{data['rtt']}",
                "--window", str(data["window"]), "--retry-refused", "30"]
        for _, port in ports:
            argv += ["--upstream", f"127.0.0.1:{port}"]
        link = Proc(self.launcher, "link", argv, logdir=work, env=clean_env(self.tmp),
                    cwd=work)
        deadline = time.monotonic() + 30
        found: list[int] = []
        while len(found) < len(ports):
            found = [int(m) for m in re.findall(r"^listening 127\.0\.0\.1:(\d+)$",
                                                link.log_path.read_text(), re.M)]
            if not link.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the long link did not start: {link.log_tail()}")
            time.sleep(0.01)
        for port in found:
            wait_listening(port, [link])
        mapped = {name: new for (name, _), new in zip(ports, found, strict=True)}
        url = relays.url
        for (_, old), new in zip(ports, found, strict=True):
            url = url.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
        return link, dataclasses.replace(relays, ports=mapped, url=url)

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
