"""The benchmarks' long-link emulator (benchmarks/harness/longlink.py) carries a real
transfer intact and never has more than its window in flight."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

import p2p_copy
from p2p_copy.relay import Relay

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from harness.longlink import LongLink  # noqa: E402


async def test_a_transfer_through_the_long_link_arrives_within_the_window(
        relay: Relay, tmp_path: Path) -> None:
    data = os.urandom(3 * 2**20 + 5)
    (tmp_path / "f.bin").write_bytes(data)
    link = LongLink(("127.0.0.1", relay.port), rtt=0.01, window=256 * 1024)
    port = await link.start()
    url = f"ws://127.0.0.1:{port}"
    try:
        await asyncio.wait_for(asyncio.gather(
            p2p_copy.send(url, "5-long-link", [tmp_path / "f.bin"], progress="none"),
            p2p_copy.receive(url, "5-long-link", tmp_path / "out", progress="none"),
        ), 60)
    finally:
        await link.close()
    assert (tmp_path / "out" / "f.bin").read_bytes() == data
    assert len(link.directions) == 4  # two connections, two ways each
    assert max(d.max_in_flight for d in link.directions) <= 256 * 1024
    assert max(d.carried for d in link.directions) > len(data)


def test_only_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        LongLink(("10.0.0.1", 80), rtt=0.1)
