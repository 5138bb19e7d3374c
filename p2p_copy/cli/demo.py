"""``p2p-copy demo``: the whole product in one command, on loopback only.

Starts a relay on a free 127.0.0.1 port, makes a sample folder (a large random file,
small files, an empty file and folder, a Unicode name), sends it to a second folder
through the relay, and checks that every byte arrived.
"""

from __future__ import annotations

import asyncio
import filecmp
import os
import sys
import tempfile
from pathlib import Path

from ..peer.api import receive, send
from ..protocol.codes import generate_code
from ..protocol.digests import NAMES
from ..relay.server import Relay

__all__ = ["run_demo", "make_sample"]


def make_sample(root: Path, size_mib: int) -> Path:
    """A folder with one file of ``size_mib`` MiB and a few small and odd ones."""
    sample = root / "sample"
    (sample / "notes" / "empty folder").mkdir(parents=True)
    with open(sample / "big.bin", "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(2**20))
    for i in range(20):
        (sample / "notes" / f"note-{i:02}.txt").write_text(f"note {i}\n" * (i + 1))
    (sample / "notes" / "empty.txt").write_bytes(b"")
    (sample / "notes" / "grüße-σ.txt").write_text("Unicode names arrive intact.\n")
    return sample


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


async def run_demo(size_mib: int = 64) -> int:
    with tempfile.TemporaryDirectory(prefix="p2p-copy-demo-") as tmp:
        root = Path(tmp)
        sample = await asyncio.to_thread(make_sample, root, size_mib)
        out = root / "received"
        async with Relay("127.0.0.1", 0) as relay:
            code = generate_code()
            # What the demo stands for: the commands two machines would run.
            print(f"A relay runs at {relay.url}, as if started with\n"
                  f"  p2p-copy run-relay-server 127.0.0.1 {relay.port} --no-tls\n"
                  f"and a sample folder goes through it with the code {code}, as with\n"
                  f"  p2p-copy send {relay.url} {code} {sample}\n"
                  f"  p2p-copy receive {relay.url} {code} --out {out}", file=sys.stderr)
            sent, got = await asyncio.gather(
                send(relay.url, code, [sample], progress="none"),
                receive(relay.url, code, out),
            )
        ok = await asyncio.to_thread(_same_tree, sample, out / "sample")
        rate = got.bytes / max(got.duration, 1e-9) / 2**20
        hashes = sorted({NAMES[f.algorithm] for f in got.files}) or ["SHA-256"]
        print(
            f"{'OK' if ok else 'MISMATCH'}: {len(got.files)} files, {got.bytes:,} bytes, "
            f"{rate:.0f} MiB/s, every file's {' / '.join(hashes)} verified.",
            file=sys.stderr,
        )
        return 0 if ok and sent.bytes == got.bytes else 9
