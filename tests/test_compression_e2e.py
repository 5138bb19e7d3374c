"""Compressed data (zstd, kind 0x01) through the real relay: fewer bytes, identical files."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import random
from pathlib import Path

import pytest

from p2p_copy import UsageError, receive, send
from p2p_copy.peer.api import receive_stream, send_stream
from p2p_copy.relay import Relay

from .conftest import Processes, run_cli
from .test_compression import csv_text

TRANSFER_TIMEOUT = 60.0
MiB = 2**20


async def transfer(
    relay: Relay, src: Path, dest: Path, encrypt: bool = True, **extra: object
) -> int:
    """Send ``src`` to ``dest``; return the bytes the relay forwarded for it."""
    before = relay.stats.bytes_forwarded
    code = f"7-compress-{random.randrange(10**6)}"
    async with asyncio.timeout(TRANSFER_TIMEOUT):
        await asyncio.gather(
            send(relay.url, code, src, progress="none", encrypt=encrypt,
                 **extra),  # type: ignore[arg-type]
            receive(relay.url, code, dest, progress="none", encrypt=encrypt),
        )
    return relay.stats.bytes_forwarded - before


def same(a: Path, b: Path) -> bool:
    return hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()


@pytest.mark.parametrize("encrypt", [True, False])
async def test_always_compresses_text_and_keeps_it_identical(
    relay: Relay, tmp_path: Path, encrypt: bool
) -> None:
    src = tmp_path / "readings.csv"
    src.write_bytes(csv_text(3 * MiB + 12345))
    wire = await transfer(relay, src, tmp_path / "out", compress="always", encrypt=encrypt)
    assert same(src, tmp_path / "out" / "readings.csv")
    assert wire < 0.5 * src.stat().st_size


async def test_never_sends_raw(relay: Relay, tmp_path: Path) -> None:
    src = tmp_path / "readings.csv"
    src.write_bytes(csv_text(2 * MiB))
    wire = await transfer(relay, src, tmp_path / "out", compress="never")
    assert same(src, tmp_path / "out" / "readings.csv")
    assert wire >= src.stat().st_size


async def test_incompressible_data_goes_raw_even_when_always(
    relay: Relay, tmp_path: Path
) -> None:
    src = tmp_path / "noise.bin"
    src.write_bytes(os.urandom(3 * MiB))
    wire = await transfer(relay, src, tmp_path / "out", compress="always")
    assert same(src, tmp_path / "out" / "noise.bin")
    assert wire >= src.stat().st_size


async def test_many_files_mixed_compressibility(relay: Relay, tmp_path: Path) -> None:
    """Small and large, compressible and not, across chunk boundaries, in folders."""
    src = tmp_path / "tree"
    rng = random.Random(3)
    for i in range(40):
        folder = src / f"d{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        size = rng.choice([0, 1, 100, 4096, 300_000, 700_001])
        data = csv_text(size, seed=i) if i % 2 else os.urandom(size)
        (folder / f"f{i}.dat").write_bytes(data)
    await transfer(relay, src, tmp_path / "out", compress="always")
    for path in src.rglob("*.dat"):
        assert same(path, tmp_path / "out" / "tree" / path.relative_to(src))


async def test_auto_is_the_default_and_keeps_data_identical(
    relay: Relay, tmp_path: Path
) -> None:
    src = tmp_path / "readings.csv"
    src.write_bytes(csv_text(4 * MiB))
    await transfer(relay, src, tmp_path / "out")
    assert same(src, tmp_path / "out" / "readings.csv")


async def test_a_compressed_stream(relay: Relay, tmp_path: Path) -> None:
    data = csv_text(2 * MiB + 7)
    out = io.BytesIO()
    code = "7-compress-stream"
    before = relay.stats.bytes_forwarded
    async with asyncio.timeout(TRANSFER_TIMEOUT):
        await asyncio.gather(
            send_stream(relay.url, code, io.BytesIO(data), progress="none", compress="always"),
            receive_stream(relay.url, code, out, progress="none"),
        )
    assert out.getvalue() == data
    assert relay.stats.bytes_forwarded - before < len(data) / 2


async def test_an_unknown_mode_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x")
    with pytest.raises(UsageError, match="compress must be one of"):
        await send("ws://127.0.0.1:9", "7-a-b", tmp_path / "a", progress="none",
                   compress="sometimes")  # type: ignore[arg-type]


@pytest.mark.slow
def test_cli_compress_always(tmp_path: Path, processes: Processes) -> None:
    _, url = processes.start_relay()
    src = tmp_path / "readings.csv"
    src.write_bytes(csv_text(MiB))
    receiver = processes.start("receive", url, "7-cli-compress", "--out", str(tmp_path / "out"))
    sent = run_cli("send", url, "7-cli-compress", str(src), "--compress", "always")
    assert sent.returncode == 0, sent.stderr
    assert receiver.wait(timeout=60) == 0
    assert same(src, tmp_path / "out" / "readings.csv")
    bad = run_cli("send", url, "7-cli-compress", str(src), "--compress", "maybe")
    assert bad.returncode == 2 and "--compress" in bad.stderr
