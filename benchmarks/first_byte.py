"""Time from both peers connected to the first byte at the receiver (issue 6 target: <= 50 ms).

The receiver waits on an in-process relay on 127.0.0.1; the clock starts when the sender has
said hello (both peers are then connected and the relay pairs them at once) and stops when
the receiver's progress display is told about its first byte. Pairing, the key exchange
(SPAKE2 both ways + key confirmation), the manifest round trip and the first data message
are all inside. Prints median and 90th percentile for the default (encrypted) and
--no-encrypt settings; a timing script, not a test.

    python benchmarks/first_byte.py [--repeat 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import p2p_copy
from p2p_copy.display.progress import NoProgress
from p2p_copy.testing import running_relay


class _Mark(NoProgress):
    def __init__(self, stamps: dict[str, float], key: str, on: str) -> None:
        self.stamps, self.key, self.on = stamps, key, on

    def waiting(self) -> None:
        if self.on == "waiting":
            self.stamps.setdefault(self.key, time.perf_counter())

    def advance(self, nbytes: int) -> None:
        if self.on == "advance":
            self.stamps.setdefault(self.key, time.perf_counter())


async def one(relay_url: str, src: Path, dest: Path, code: str, encrypt: bool) -> float:
    stamps: dict[str, float] = {}
    receiving = asyncio.ensure_future(p2p_copy.receive(
        relay_url, code, dest, progress=_Mark(stamps, "end", "advance"), encrypt=encrypt))
    await asyncio.sleep(0.05)  # the receiver waits in the room
    await p2p_copy.send(relay_url, code, [src], progress=_Mark(stamps, "start", "waiting"),
                        encrypt=encrypt)
    await receiving
    return (stamps["end"] - stamps["start"]) * 1000


async def main(repeat: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "payload.bin"
        src.write_bytes(b"x" * 65536)
        async with running_relay() as relay:
            for encrypt in (True, False):
                times = []
                for i in range(repeat):
                    dest = Path(tmp) / f"out-{encrypt}-{i}"
                    times.append(await one(relay.url, src, dest, f"{i + 1}-first-byte", encrypt))
                times.sort()
                p90 = times[int(0.9 * (len(times) - 1))]
                label = "encrypted (default)" if encrypt else "--no-encrypt"
                print(f"{label:20} first byte after {statistics.median(times):6.1f} ms median, "
                      f"{p90:6.1f} ms p90 ({repeat} runs; target <= 50 ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    asyncio.run(main(parser.parse_args().repeat))
