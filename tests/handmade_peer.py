"""Hostile peers for the failure tests: raw WebSocket clients that send whatever they are told.

A ``HandmadePeer`` speaks to the real relay with ``websockets.asyncio.client.connect``
and none of p2p-copy's own state machines, so a test can send messages in the wrong
order, lie about sizes and checksums, or name paths that must never be written.
``tampering_proxy`` sits between one of our peers and the relay and changes data bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from p2p_copy.codes import code_hash_hex

__all__ = [
    "HandmadePeer",
    "handmade_peer",
    "file_entry",
    "sha256_hex",
    "tampering_proxy",
    "flip_last_byte_once",
]

#: How long a hand-made peer waits for any one message before the test fails.
RECV_TIMEOUT = 20.0


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_entry(path: str, size: int, **extra: Any) -> dict[str, Any]:
    """A manifest entry for a regular file, as the wire format spells it."""
    return {"path": path, "size": size, "mode": 0o644, **extra}


class HandmadePeer:
    """One raw connection to the relay, after its hello; every method sends or reads one thing."""

    def __init__(self, ws: ClientConnection, role: str) -> None:
        self.ws = ws
        self.role = role

    async def send_json(self, obj: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(obj))

    async def send_text(self, text: str) -> None:
        await self.ws.send(text)

    async def send_binary(self, payload: bytes) -> None:
        """A binary message exactly as given (no header added)."""
        await self.ws.send(payload)

    async def send_data(self, payload: bytes) -> None:
        """A data message: the 0x00 header, then ``payload``."""
        await self.ws.send(b"\x00" + payload)

    async def send_manifest(self, entries: Sequence[dict[str, Any]], **extra: Any) -> None:
        await self.send_json({"type": "manifest", "version": 1, "entries": list(entries), **extra})

    async def send_checksums(self, first: int, digests: Sequence[str]) -> None:
        await self.send_json({"type": "checksums", "first": first, "sha256": list(digests)})

    async def recv(self, timeout: float = RECV_TIMEOUT) -> str | bytes:
        async with asyncio.timeout(timeout):
            return await self.ws.recv()

    async def expect(self, kind: str, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        """Read control messages, skipping data, until one arrives; it must be of type ``kind``."""
        while True:
            message = await self.recv(timeout)
            if isinstance(message, bytes):
                continue
            obj: dict[str, Any] = json.loads(message)
            assert obj.get("type") == kind, f"expected {kind!r}, got {obj!r}"
            return obj

    async def expect_error(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        """The ``error`` message the peer sends before it closes (data before it is skipped)."""
        return await self.expect("error", timeout)

    async def drain(self, timeout: float = RECV_TIMEOUT) -> list[str | bytes]:
        """Everything that still arrives until the connection closes."""
        received: list[str | bytes] = []
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(timeout):
                while True:
                    received.append(await self.ws.recv())
        return received

    async def start_sending(self, entries: Sequence[dict[str, Any]]) -> None:
        """As a sender: wait for ``ready``, send the manifest, wait for ``accept``."""
        await self.expect("ready")
        await self.send_manifest(entries)
        await self.expect("accept")


@asynccontextmanager
async def handmade_peer(url: str, code: str, role: str) -> AsyncIterator[HandmadePeer]:
    """Connect to the relay at ``url`` and say hello as ``role`` with ``code``."""
    async with connect(url, compression=None, max_size=None, open_timeout=10) as ws:
        await ws.send(json.dumps(
            {"type": "hello", "code_hash_hex": code_hash_hex(code), "role": role}
        ))
        yield HandmadePeer(ws, role)


def _sendable(code: int | None) -> int:
    """A close code that may be sent on (1005/1006 may not: they mean 'none' and 'dropped')."""
    if code is None or code in (1005, 1006, 1015):
        return 1011
    return code


async def _pump(
    source: ClientConnection | ServerConnection,
    target: ClientConnection | ServerConnection,
    change: Callable[[bytes], bytes] | None,
) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in source:
            if change is not None and isinstance(message, bytes):
                message = change(message)
            await target.send(message)
    # Pass on how the source ended, so the far side sees the relay's close codes.
    await target.close(_sendable(source.close_code), source.close_reason or "")


@asynccontextmanager
async def tampering_proxy(upstream: str, change: Callable[[bytes], bytes]) -> AsyncIterator[str]:
    """A ws:// URL that forwards to ``upstream``, passing binary messages from the client
    through ``change`` and everything else unchanged; yields the URL."""

    async def handler(down: ServerConnection) -> None:
        async with connect(upstream, compression=None, max_size=None) as up:
            await asyncio.gather(_pump(down, up, change), _pump(up, down, None))

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


def flip_last_byte_once() -> Callable[[bytes], bytes]:
    """A ``change`` for tampering_proxy: the first data message gets its last bit flipped."""
    done = False

    def change(message: bytes) -> bytes:
        nonlocal done
        if done or not message or message[0] != 0:
            return message
        done = True
        return message[:-1] + bytes([message[-1] ^ 0x01])

    return change
