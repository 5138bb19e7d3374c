#!/usr/bin/env python3
"""Measure p2p_copy.protocol.compression to choose its defaults (issue 6): level, whether it pays.

For random bytes and CSV-like text, chunked as the sender chunks files, it prints per zstd
level the compression ratio, compress and decompress speed (CPU time of this thread, best
of --repeat runs, so that other work on a shared machine matters less), what a sender
would achieve on a link of --link MB/s, and the link speed below which compression wins.
For random data it also prints the cost of the adaptive back-off next to a SHA-256 pass,
which the sender makes over every byte anyway.

    python benchmarks/compression_probe.py           # 64 MiB of each, levels 1 2 3 -1 -3 -5
    python benchmarks/compression_probe.py --size 16 --levels 1 -1 --link 120

Model: a sender that compresses spends 1/c + r/L seconds per byte (c compress speed, r ratio,
L link speed) instead of 1/L, so compression wins while L < c * (1 - r). The receiver
decompresses in parallel on its own core; "one core" adds 1/d for when both share one.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2p_copy.protocol.compression import ChunkCompressor, ChunkDecompressor  # noqa: E402

MB = 1e6


def csv_text(size: int, seed: int = 6) -> bytes:
    """Sensor-log CSV: timestamps, ids, decimals, words; zstd level 1 makes it ~3.6x smaller."""
    rng = random.Random(seed)
    stations = [f"station-{i:03d}" for i in range(200)]
    states = ["OK", "OK", "OK", "WARN", "FAIL"]
    words = "north south gust calm rain dry sensor reset drift".split()
    parts = ["timestamp,station,temperature_c,humidity_pct,status,comment\n"]
    total, stamp = 0, 1_700_000_000
    while total < size:
        stamp += rng.randint(1, 30)
        row = (f"{stamp},{rng.choice(stations)},{rng.uniform(-20, 40):.2f},"
               f"{rng.randint(0, 100)},{rng.choice(states)},"
               f"{rng.choice(words)} {rng.choice(words)}\n")
        parts.append(row)
        total += len(row)
    return "".join(parts).encode()[:size]


def best_cpu(run: Callable[[], object], repeat: int) -> float:
    """Least CPU time of this thread over ``repeat`` runs (zstandard works in this thread)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        run()
        best = min(best, time.thread_time() - start)
    return best


def chunks_of(data: bytes, chunk: int) -> list[memoryview]:
    view = memoryview(data)
    return [view[i : i + chunk] for i in range(0, len(data), chunk)]


def sha256_seconds(data: bytes, chunk: int, repeat: int) -> float:
    def run() -> None:
        digest = hashlib.sha256()
        for piece in chunks_of(data, chunk):
            digest.update(piece)
    return best_cpu(run, repeat)


def probe_level(data: bytes, chunk: int, level: int, repeat: int, max_skip: int
                ) -> tuple[float, float, float, ChunkCompressor]:
    """(compress s, decompress s, ratio, last compressor) for ``data`` at ``level``."""
    pieces = chunks_of(data, chunk)
    frames: list[bytes] = []
    last = ChunkCompressor(level, max_skip=max_skip)

    def compress() -> None:
        nonlocal last
        last = ChunkCompressor(level, max_skip=max_skip)
        frames.clear()
        for piece in pieces:
            frame = last.compress(piece)
            if frame is not None:
                frames.append(frame)

    def decompress() -> None:
        decompressor = ChunkDecompressor(chunk)
        for frame in frames:
            decompressor.decompress(frame)

    compress_s = best_cpu(compress, repeat)
    decompress_s = best_cpu(decompress, repeat)
    return compress_s, decompress_s, last.stats.ratio, last


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="MiB of each kind of data")
    parser.add_argument("--chunk", type=int, default=256, help="chunk size in KiB")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 3, -1, -3, -5])
    parser.add_argument("--link", type=float, default=1000.0, help="link speed in MB/s")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    size, chunk, link = args.size << 20, args.chunk << 10, args.link * MB

    print(f"zstd via python-zstandard; {args.size} MiB per data set, {args.chunk} KiB chunks, "
          f"CPU time best of {args.repeat}, link {args.link:g} MB/s")
    samples = {"random": os.urandom(size), "csv": csv_text(size)}
    sha = sha256_seconds(samples["random"], chunk, args.repeat)
    print(f"SHA-256 pass: {size / sha / MB:.0f} MB/s\n")

    header = (f"{'data':7}{'level':>6}{'ratio':>7}{'comp MB/s':>11}{'dec MB/s':>10}"
              f"{'c+d MB/s':>10}{'sender@link':>13}{'one core@link':>15}{'wins below':>12}")
    print(header)
    print("-" * len(header))
    for name, data in samples.items():
        for level in args.levels:
            # Every chunk goes through zstd here (no back-off): the level's own speed.
            comp_s, dec_s, ratio, last = probe_level(data, chunk, level, args.repeat, 0)
            c = size / comp_s
            if not last.stats.compressed:  # all sent raw: nothing to decompress
                print(f"{name:7}{level:>6}{ratio:>7.3f}{c / MB:>11.0f}{'-':>10}{'-':>10}"
                      f"{1 / (1 / c + 1 / link) / MB:>13.0f}{'-':>15}{'never':>12}")
                continue
            d = size / dec_s
            sender = 1 / (1 / c + ratio / link)
            one_core = 1 / (1 / c + 1 / d + ratio / link)
            wins_below = c * (1 - ratio)
            print(f"{name:7}{level:>6}{ratio:>7.3f}{c / MB:>11.0f}{d / MB:>10.0f}"
                  f"{1 / (1 / c + 1 / d) / MB:>10.0f}{sender / MB:>13.0f}{one_core / MB:>15.0f}"
                  f"{wins_below / MB:>12.0f}")
    print(f"(raw at the link: {link / MB:.0f} MB/s; 'wins below' = link speed in MB/s under "
          "which compressing beats sending raw)\n")

    level = args.levels[0]
    for label, max_skip in (("adaptive back-off", 64), ("every chunk tried", 0)):
        comp_s, _, _, last = probe_level(samples["random"], chunk, level, args.repeat, max_skip)
        stats = last.stats
        print(f"random, level {level}, {label}: {comp_s / sha * 100:.2f}% of a SHA-256 pass "
              f"({stats.attempts} of {stats.attempts + stats.skipped} chunks run through zstd)")


if __name__ == "__main__":
    main()
