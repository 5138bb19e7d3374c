#!/usr/bin/env python3
"""Measure one relay process behind nginx: memory per pair, CPU per byte, pairs per process.

    python3 server/measure.py --pairs 500 --message-size 262144 --seconds 10

Starts a LocalCluster with ONE relay (server/local_cluster.py), then, with raw WebSocket
clients in this process (hello, ready, then bytes; no files, no hashing):

1. idle:    opens PAIRS pairs through nginx and keeps them paired; reads the relay's and
            nginx's resident memory before and after (per pair = difference / PAIRS).
2. active:  every pair streams MESSAGE_SIZE binary messages sender -> receiver for SECONDS;
            reads bytes delivered and the CPU time the relay and nginx used meanwhile.
            Bytes per CPU-second is what one core can forward, whatever else shares the
            machine (here the clients do: they run on the same two cores).
3. stalled: receivers stop reading; senders push until the relay stops reading from them
            (its backpressure); the relay's memory then is its worst case per pair.

Linux only (/proc). Numbers are printed as one JSON object, and quoted in docs/scaling.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_cluster import LocalCluster  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    return total


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Pair:
    sender: ClientConnection
    receiver: ClientConnection
    received: int = 0
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)


def _hello(room: str, role: str) -> str:
    return json.dumps({"type": "hello", "code_hash_hex": room, "role": role})


async def open_pair(url: str, gate: asyncio.Semaphore, max_size: int) -> Pair:
    room = secrets.token_hex(32)
    options: dict[str, Any] = {
        "open_timeout": 30, "close_timeout": 2, "compression": None,
        "max_size": max_size + 1024, "ping_interval": None,
    }
    async with gate:
        sender = await connect(f"{url}/{room}", **options)
        await sender.send(_hello(room, "sender"))
        receiver = await connect(f"{url}/{room}", **options)
        await receiver.send(_hello(room, "receiver"))
        ready = json.loads(await sender.recv())
        assert ready == {"type": "ready"}, ready
    return Pair(sender, receiver)


async def stream(pair: Pair, message: bytes, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await pair.sender.send(message)


async def drain(pair: Pair, stop: asyncio.Event) -> None:
    while not stop.is_set():
        data = await pair.receiver.recv()
        pair.received += len(data)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    cluster = LocalCluster(1, relay_args=["--peer-timeout", "120"], access_log=False,
                           worker_processes=args.workers)
    cluster.start()
    try:
        relay = [cluster.relay_pid(0)]
        nginx_master = cluster.nginx_pid
        assert nginx_master is not None
        if args.proxy_buffer_size:
            # Only for comparing buffer sizes: change the copy nginx runs and reload it.
            old_workers = set(_children(nginx_master))
            snippet = cluster.workdir / "conf" / "p2p-copy" / "p2p-copy-locations.conf"
            text = snippet.read_text()
            size = args.proxy_buffer_size
            text = re.sub(r"proxy_buffer_size \w+;", f"proxy_buffer_size {size};", text)
            text = re.sub(r"proxy_buffers 4 \w+;", f"proxy_buffers 4 {size};", text)
            snippet.write_text(text)
            os.kill(nginx_master, signal.SIGHUP)
            deadline = time.monotonic() + 10
            while set(_children(nginx_master)) & old_workers:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not reload:\n{cluster.logs()}")
                await asyncio.sleep(0.1)
        workers = _children(nginx_master)
        url = cluster.relay_url(0) if args.direct else cluster.url
        await asyncio.sleep(0.5)
        base = {"relay_rss": rss_bytes(relay), "nginx_rss": rss_bytes(workers),
                "relay_fds": open_fds(relay[0])}

        # 1. idle pairs
        gate = asyncio.Semaphore(50)
        started = time.monotonic()
        pairs = await asyncio.gather(
            *(open_pair(url, gate, args.message_size) for _ in range(args.pairs)))
        setup = time.monotonic() - started
        await asyncio.sleep(1.0)
        idle = {"relay_rss": rss_bytes(relay), "nginx_rss": rss_bytes(workers),
                "relay_fds": open_fds(relay[0])}
        idle_cpu = None
        if args.idle_seconds:
            # Idle pairs still cost: the relay pings every connection every 20 s.
            before = cpu_seconds(relay) + cpu_seconds(workers)
            await asyncio.sleep(args.idle_seconds)
            idle_cpu = (cpu_seconds(relay) + cpu_seconds(workers) - before) / args.idle_seconds
        if args.idle_only:
            for p in pairs:
                p.sender.transport.abort()
                p.receiver.transport.abort()
            return {"setup": {"pairs": args.pairs, "through": "relay directly" if args.direct
                              else "nginx", "cpus": os.cpu_count()},
                    "idle": _idle_report(base, idle, args.pairs, setup, idle_cpu)}

        # 2. active pairs
        message = os.urandom(args.message_size)
        stop = asyncio.Event()
        cpu0 = (cpu_seconds(relay), cpu_seconds(workers), time.process_time())
        t0 = time.monotonic()
        for p in pairs:
            p.tasks = [asyncio.ensure_future(stream(p, message, stop)),
                       asyncio.ensure_future(drain(p, stop))]
        peak_rss = 0
        while time.monotonic() - t0 < args.seconds:
            await asyncio.sleep(0.5)
            peak_rss = max(peak_rss, rss_bytes(relay))
        received = sum(p.received for p in pairs)
        wall = time.monotonic() - t0
        cpu1 = (cpu_seconds(relay), cpu_seconds(workers), time.process_time())
        stop.set()
        for p in pairs:
            p.tasks[0].cancel()  # the sender; the receiver drains what is in flight
        await asyncio.sleep(1.0)
        for p in pairs:
            p.tasks[1].cancel()
        await asyncio.gather(*(t for p in pairs for t in p.tasks), return_exceptions=True)
        relay_cpu, nginx_cpu, client_cpu = (b - a for a, b in zip(cpu0, cpu1, strict=True))

        # 3. stalled receivers: senders push until backpressure holds them
        async def push(p: Pair) -> None:
            while True:
                await p.sender.send(message)

        pushing = [asyncio.ensure_future(push(p)) for p in pairs]
        await asyncio.sleep(args.stall_seconds)
        stalled_rss = rss_bytes(relay)
        stalled_nginx = rss_bytes(workers)
        for t in pushing:
            t.cancel()
        await asyncio.gather(*pushing, return_exceptions=True)
        for p in pairs:
            p.sender.transport.abort()
            p.receiver.transport.abort()

        mib = 2**20
        return {
            "setup": {"pairs": args.pairs, "message_size": args.message_size,
                      "through": "relay directly" if args.direct else "nginx",
                      "proxy_buffer_size": args.proxy_buffer_size or "shipped",
                      "cpus": os.cpu_count(), "seconds": round(wall, 1)},
            "idle": _idle_report(base, idle, args.pairs, setup, idle_cpu),
            "active": {
                "delivered_mb_s": round(received / wall / 1e6, 1),
                "relay_cpu_s": round(relay_cpu, 2),
                "nginx_cpu_s": round(nginx_cpu, 2),
                "clients_cpu_s": round(client_cpu, 2),
                "relay_mb_per_cpu_s": round(received / relay_cpu / 1e6, 1) if relay_cpu else None,
                "nginx_mb_per_cpu_s": round(received / nginx_cpu / 1e6, 1) if nginx_cpu else None,
                "relay_messages_per_cpu_s": round(
                    received / args.message_size / relay_cpu) if relay_cpu else None,
                "relay_peak_rss_mib": round(peak_rss / mib, 1),
                "relay_kib_per_active_pair": round(
                    (peak_rss - base["relay_rss"]) / args.pairs / 1024, 1),
            },
            "stalled": {
                "relay_rss_mib": round(stalled_rss / mib, 1),
                "relay_kib_per_stalled_pair": round(
                    (stalled_rss - base["relay_rss"]) / args.pairs / 1024, 1),
                "nginx_kib_per_stalled_pair": round(
                    (stalled_nginx - base["nginx_rss"]) / args.pairs / 1024, 1),
            },
        }
    finally:
        cluster.stop(drain_timeout=3)


def _idle_report(base: dict[str, int], idle: dict[str, int], pairs: int, setup: float,
                 idle_cpu: float | None) -> dict[str, Any]:
    return {
        "pairs_open_s": round(setup, 2),
        "relay_rss_base_mib": round(base["relay_rss"] / 2**20, 1),
        "relay_rss_idle_mib": round(idle["relay_rss"] / 2**20, 1),
        "relay_kib_per_idle_pair": round((idle["relay_rss"] - base["relay_rss"]) / pairs / 1024, 1),
        "nginx_kib_per_idle_pair": round((idle["nginx_rss"] - base["nginx_rss"]) / pairs / 1024, 1),
        "relay_fds_per_pair": round((idle["relay_fds"] - base["relay_fds"]) / pairs, 2),
        "relay_and_nginx_cpu_share_while_idle": None if idle_cpu is None else round(idle_cpu, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--message-size", type=int, default=256 * 1024,
                        help="bytes per message (p2p-copy sends 256 KiB chunks by default)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--stall-seconds", type=float, default=3.0)
    parser.add_argument("--proxy-buffer-size",
                        help="nginx proxy_buffer_size instead of the shipped one, e.g. 4k")
    parser.add_argument("--idle-seconds", type=float, default=0.0,
                        help="also hold the idle pairs this long and measure the CPU they cost")
    parser.add_argument("--idle-only", action="store_true", help="stop after the idle phase")
    parser.add_argument("--workers", default="1", help="nginx worker_processes")
    parser.add_argument("--direct", action="store_true",
                        help="clients connect to the relay itself, not through nginx")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(measure(args)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
