"""The benchmarks' long-link emulator (benchmarks/harness/longlink.py) carries a real
transfer intact, never has more than its window in flight, and retries a refused upstream
only when asked."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

import p2p_copy
from p2p_copy.relay import Relay

from .conftest import free_port

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



@pytest.mark.parametrize("retry", [0.0, 10.0])
async def test_a_refused_upstream_is_retried_only_when_asked(retry: float) -> None:
    """retry_refused: a peer that connects before its relay listens (socat's second port)
    gets through once it listens; without it, the peer's connection is closed."""
    upstream = free_port()
    link = LongLink(("127.0.0.1", upstream), rtt=0.0, retry_refused=retry)
    port = await link.start()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0.1)  # the link has tried (and been refused) by now
    server = await asyncio.start_server(echo, "127.0.0.1", upstream)
    try:
        writer.write(b"hello")
        await writer.drain()
        got = await asyncio.wait_for(reader.read(100), 10)
    except ConnectionError:
        got = b""
    finally:
        writer.close()
        server.close()
        await link.close()
    assert got == (b"hello" if retry else b"")
