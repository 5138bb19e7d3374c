"""A first end-to-end check: a folder crosses a real relay on loopback intact."""

from __future__ import annotations

import asyncio
from pathlib import Path

import p2p_copy


async def test_folder_arrives_identical(tmp_path: Path) -> None:
    """A nested folder with an empty file goes through a real relay and arrives byte-identical."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"hello")
    (src / "sub" / "empty").write_bytes(b"")
    async with p2p_copy.Relay() as relay:
        sent, got = await asyncio.gather(
            p2p_copy.send(relay.url, "1-code", [src], progress="none"),
            p2p_copy.receive(relay.url, "1-code", tmp_path / "out", progress="none"),
        )
    assert (tmp_path / "out" / "src" / "a.txt").read_bytes() == b"hello"
    assert (tmp_path / "out" / "src" / "sub" / "empty").read_bytes() == b""
    assert [f.path for f in got.files] == [f.path for f in sent.files]
