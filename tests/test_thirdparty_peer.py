"""Interoperability of p2p-copy with a third-party peer written only from docs/protocol.md."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Protocol

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import p2p_copy

from .thirdparty_peer import (
    ConnectionEnded,
    PeerError,
    code_hash_hex,
    thirdparty_receive,
    thirdparty_send,
)


class Relay(Protocol):
    """What these tests use of the ``relay`` fixture: its ws:// URL."""

    url: str

LIMIT = 60.0  # seconds per test


def _pattern(n: int, seed: int) -> bytes:
    """Deterministic non-repeating-looking bytes (SHA-256 counter stream)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


async def _both(a: Awaitable[Any], b: Awaitable[Any]) -> list[Any]:
    """Run both peers concurrently; return their results or exceptions."""
    async with asyncio.timeout(LIMIT):
        return list(await asyncio.gather(a, b, return_exceptions=True))


def _tree(root: Path) -> tuple[dict[str, bytes], set[str]]:
    """All files (relative path -> bytes) and all folders under root."""
    files: dict[str, bytes] = {}
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            dirs.add(Path(dirpath, d).relative_to(root).as_posix())
        for f in filenames:
            p = Path(dirpath, f)
            files[p.relative_to(root).as_posix()] = p.read_bytes()
    return files, dirs


async def test_thirdparty_sender_to_p2p_copy_receiver(relay: Relay, tmp_path: Path) -> None:
    """Files (empty, small, multi-message, Unicode, nested) and an empty folder arrive intact."""
    files = {
        "root/0-empty-first": b"",  # zero-size file at the start: digest before any data
        "root/small.txt": b"hello, third party\n",
        "root/big/data.bin": _pattern(5 * 1000 + 321, 1),  # spans 6+ of our 1000-byte payloads
        "root/Grüße/日本語 ✓.txt": "naïve café ✓\n".encode(),
        "root/a/b/c/deep.txt": _pattern(999, 2),  # ends just before a message boundary
        "root/middle-empty": b"",
        "root/tail.bin": _pattern(1, 3),
        "root/z-empty-last": b"",  # zero-size file at the end
    }
    dirs = ["root/empty", "root/a/b/also-empty"]
    dest = tmp_path / "incoming"
    dest.mkdir()

    got, sent = await _both(
        p2p_copy.receive(relay.url, "third-party-1", dest, progress="none"),
        thirdparty_send(relay.url, "third-party-1", files, dirs),
    )
    assert not isinstance(got, BaseException), repr(got)
    assert sent is None, repr(sent)

    on_disk, folders = _tree(dest)
    assert on_disk == files  # identical bytes, and no leftover temporary files
    for d in dirs:
        assert d in folders and not any((dest / d).iterdir())
    # §6.4 defaults and §11: files get mode & 0o777 = 0o644, dir entries (0o755 & 0o777) | 0o700.
    assert stat.S_IMODE((dest / "root/small.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "root/empty").stat().st_mode) == 0o755


async def test_p2p_copy_sender_to_thirdparty_receiver(relay: Relay, tmp_path: Path) -> None:
    """A folder sent by p2p-copy arrives byte-identical and p2p-copy's send() succeeds."""
    src = tmp_path / "pack"
    contents = {
        "a.txt": b"alpha\n",
        "empty.txt": b"",
        "sub/big.bin": _pattern(600 * 1024 + 7, 4),  # several p2p-copy data messages
        "sub/deeper/x.bin": _pattern(70_000, 5),
        "Ünïcødé/名前.txt": "中身\n".encode(),
    }
    for rel, data in contents.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    (src / "nothing").mkdir()
    os.chmod(src / "a.txt", 0o600)
    os.utime(src / "a.txt", (1_700_000_000.5, 1_700_000_000.5))

    manifest: list[dict[str, Any]] = []
    sent, received = await _both(
        p2p_copy.send(relay.url, "third-party-2", [src], progress="none"),
        thirdparty_receive(relay.url, "third-party-2", manifest_out=manifest),
    )
    assert not isinstance(sent, BaseException), repr(sent)  # our `done` was right
    assert not isinstance(received, BaseException), repr(received)
    files, dirs = received

    assert files == {f"pack/{rel}": data for rel, data in contents.items()}
    assert "pack/nothing" in dirs
    assert set(dirs) <= {"pack", "pack/sub", "pack/sub/deeper", "pack/nothing", "pack/Ünïcødé"}
    a = next(e for e in manifest if e["path"] == "pack/a.txt")
    assert a["mode"] == 0o600 and a["mtime"] == 1_700_000_000.5


async def test_multipart_manifest_accepted(relay: Relay, tmp_path: Path) -> None:
    """A manifest in several parts (more=true, one part empty) with late digests is accepted."""
    files = {
        "m/one": _pattern(2500, 6),
        "m/two": b"",
        "m/three": _pattern(10, 7),
    }
    dest = tmp_path / "incoming"
    dest.mkdir()

    got, sent = await _both(
        p2p_copy.receive(relay.url, "third-party-3", dest, progress="none"),
        # 4 entries over 5 parts: four parts of one entry, then an empty last part (more=false)
        thirdparty_send(relay.url, "third-party-3", files, ["m/dir"], manifest_parts=5,
                        late_digests=True),
    )
    assert not isinstance(got, BaseException), repr(got)
    assert sent is None, repr(sent)
    on_disk, folders = _tree(dest)
    assert on_disk == files
    assert "m/dir" in folders


async def test_wrong_digest_is_integrity_error(relay: Relay, tmp_path: Path) -> None:
    """A wrong SHA-256 fails p2p-copy's receiver with IntegrityError and wire code integrity."""
    files = {"bad/first.txt": b"fine\n", "bad/second.bin": _pattern(3000, 8)}
    dest = tmp_path / "incoming"
    dest.mkdir()

    got, sent = await _both(
        p2p_copy.receive(relay.url, "third-party-4", dest, progress="none"),
        thirdparty_send(relay.url, "third-party-4", files,
                        corrupt_digest_of="bad/second.bin"),
    )
    assert isinstance(got, p2p_copy.IntegrityError), repr(got)
    assert isinstance(sent, PeerError), repr(sent)
    assert sent.code == "integrity" and not sent.sent
    # §11: a file never appears under its final name before it was verified.
    assert not (dest / "bad/second.bin").exists()


async def test_receiver_error_exists(relay: Relay, tmp_path: Path) -> None:
    """Our receiver's `exists` error makes p2p-copy's sender raise DestinationExistsError."""
    src = tmp_path / "thing.txt"
    src.write_bytes(b"already there on the other side\n")

    sent, received = await _both(
        p2p_copy.send(relay.url, "third-party-5", [src], progress="none"),
        thirdparty_receive(relay.url, "third-party-5", answer_manifest_with="exists"),
    )
    assert isinstance(sent, p2p_copy.DestinationExistsError), repr(sent)
    assert isinstance(received, PeerError) and received.sent and received.code == "exists"


async def test_thirdparty_pair_self_check(relay: Relay) -> None:
    """Sanity check of the third-party peer against itself, incl. the §12 hand-made stream."""
    files = {"d/a": b"hello", "e": b"", "d/b": b"world!!"}
    received, sent = await _both(
        thirdparty_receive(relay.url, "third-party-6"),
        thirdparty_send(relay.url, "third-party-6", files, ["d/x"], manifest_parts=2),
    )
    assert sent is None, repr(sent)
    assert received == (files, ["d/x"])


@pytest.mark.parametrize("code", ["protocol", "unsafe_path"])
async def test_thirdparty_receiver_error_codes_reach_sender(relay: Relay, code: str) -> None:
    """Sanity check: an error our receiver sends reaches our sender with its code."""
    received, sent = await _both(
        thirdparty_receive(relay.url, f"third-party-7-{code}", answer_manifest_with=code),
        thirdparty_send(relay.url, f"third-party-7-{code}", {"f": b"x"}),
    )
    assert isinstance(received, PeerError) and received.sent
    assert isinstance(sent, PeerError) and not sent.sent and sent.code == code


async def test_duplicate_sender_refused_waiting_one_untouched(relay: Relay, tmp_path: Path) -> None:
    """§5.2: a second sender gets close 4002; the waiting p2p-copy sender still completes."""
    src = tmp_path / "waiting.txt"
    src.write_bytes(b"I was here first\n")
    async with asyncio.timeout(LIMIT):
        first = asyncio.create_task(p2p_copy.send(relay.url, "third-party-8", [src],
                                                  progress="none"))
        await asyncio.sleep(0.5)  # let p2p-copy's sender take its place in the room
        with pytest.raises(ConnectionEnded) as refused:
            await thirdparty_send(relay.url, "third-party-8", {"intruder": b"x"})
        assert refused.value.close_code == 4002
        files, dirs = await thirdparty_receive(relay.url, "third-party-8")
        await first
    assert files == {"waiting.txt": b"I was here first\n"} and dirs == []


async def test_usage_error_means_peer_gone(relay: Relay, tmp_path: Path) -> None:
    """§8: an `error` with code usage from the sender (it stopped for its own reasons) makes
    p2p-copy's receiver raise PeerGoneError, not a usage error of its own."""
    dest = tmp_path / "incoming"
    dest.mkdir()
    got, sent = await _both(
        p2p_copy.receive(relay.url, "third-party-9", dest, progress="none"),
        thirdparty_send(relay.url, "third-party-9", {"f": b"x"}, fail_after_accept_with="usage"),
    )
    assert isinstance(sent, PeerError) and sent.sent and sent.code == "usage"
    assert isinstance(got, p2p_copy.PeerGoneError), repr(got)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_MAN = json.dumps({"type": "manifest", "version": 1,
                   "entries": [{"path": "a", "size": 3}, {"path": "b", "size": 0},
                               {"path": "c", "size": 4}]})


@pytest.mark.parametrize(("first", "after_accept", "wire_code"), [
    (_MAN, [b"\x00abcwxyz", json.dumps({"type": "checksums", "first": 0,
                                         "sha256": [_sha(b"abc"), _sha(b""), _sha(b"wxyZ")]})],
     "integrity"),
    (_MAN, [b"\x00ab", json.dumps({"type": "checksums", "first": 0, "sha256": [_sha(b"abc")]})],
     "protocol"),  # digest for an incomplete file
    (_MAN, [b"\x00abc", json.dumps({"type": "checksums", "first": 1, "sha256": [_sha(b"")]})],
     "protocol"),  # gap
    (_MAN, [b"\x00abcwxyz", json.dumps({"type": "checksums", "first": 0,
                                         "sha256": [_sha(b"abc"), _sha(b"")]}),
            json.dumps({"type": "eof"})], "protocol"),  # eof before every digest
    (_MAN, [b"\x01abc"], "protocol"),  # reserved kind
    (_MAN, [b"\x00"], "protocol"),  # empty payload
    (_MAN, [b"\x00abcwxyz!"], "protocol"),  # beyond the total
    (_MAN, ['{"type":"ready"}'], "protocol"),
    (_MAN, [_MAN], "protocol"),  # manifest after the last part
    ('{"type":"manifest","resume":false,"entries":[]}', [], "incompatible"),
    ('{"type":"manifest","version":1.0,"entries":[]}', [], "incompatible"),
    ('{"type":"manifest","version":1,"entries":[{"path":"a/../b","size":0}]}', [],
     "unsafe_path"),
    ('{"type":"manifest","version":1,"entries":[{"path":"A","size":0},{"path":"a","kind":"dir"}]}',
     [], "unsafe_path"),
    ('{"type":"manifest","version":1,"entries":[{"path":"x","size":1.0}]}', [], "protocol"),
])
async def test_thirdparty_receiver_rejects_violations(
    relay: Relay, first: str, after_accept: list[str | bytes], wire_code: str,
) -> None:
    """Sanity check: our receiver answers §9.2 violations of a raw sender with the right code."""
    code = f"third-party-10-{_sha(first.encode() + repr(after_accept).encode())[:12]}"

    async def raw_sender() -> list[str | bytes]:
        got: list[str | bytes] = []
        async with connect(relay.url, proxy=None) as ws:
            await ws.send(json.dumps({"type": "hello", "code_hash_hex": code_hash_hex(code),
                                      "role": "sender"}))
            assert json.loads(await ws.recv()) == {"type": "ready"}
            await ws.send(first)
            try:
                got.append(await ws.recv())
                for message in after_accept:
                    await ws.send(message)
                while True:
                    got.append(await ws.recv())
            except ConnectionClosed:
                assert ws.close_code == 1000  # the receiver closed deliberately (§5.5)
        return got

    received, got = await _both(thirdparty_receive(relay.url, code), raw_sender())
    assert isinstance(received, PeerError) and received.sent and received.code == wire_code
    assert not isinstance(got, BaseException), repr(got)
    error = json.loads(got[-1])
    assert error["type"] == "error" and error["code"] == wire_code
    assert (got[0] == '{"type": "accept"}') == bool(after_accept)
