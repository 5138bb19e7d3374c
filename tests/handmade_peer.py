"""Hostile peers for the failure tests: raw WebSocket clients that send whatever they are told.

A ``HandmadePeer`` speaks to the real relay with ``websockets.asyncio.client.connect``
and none of p2p-copy's own state machines, so a test can send messages in the wrong
order, lie about sizes and checksums, or name paths that must never be written. By
default it runs the key exchange (p2p_copy.protocol.secure) like an honest peer and then seals
whatever it is told to send: the hostile messages reach our peer's protocol machines
through a valid encrypted channel, as they would from a malicious peer that knows the code.
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

from p2p_copy.protocol.codes import room_hash_hex
from p2p_copy.protocol.secure import Channel, KeyExchange, is_control

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

    def __init__(self, ws: ClientConnection, role: str, code: str, encrypt: bool) -> None:
        self.ws = ws
        self.role = role
        self.exchange = KeyExchange(code, "sender" if role == "sender" else "receiver") \
            if encrypt else None
        self.channel: Channel | None = None

    async def _send(self, message: str | bytes) -> None:
        await self.ws.send(self.channel.seal(message) if self.channel else message)

    async def _open(self, message: str | bytes) -> str | bytes:
        if self.channel is None:
            return message
        inner = self.channel.open(message)
        return inner.decode() if is_control(inner) else inner

    async def _handshake(self, first_pake: str | None) -> None:
        """The honest key exchange (protocol.md §6.0), so that what follows is sealed."""
        assert self.exchange is not None
        if self.role == "sender":
            await self.ws.send(self.exchange.message())
            first_pake = await self.ws.recv()
        assert isinstance(first_pake, str)
        from p2p_copy.protocol.messages import parse_message

        pake = parse_message(first_pake)
        self.exchange.receive(pake)  # type: ignore[arg-type]
        if self.role == "receiver":
            await self.ws.send(self.exchange.message())
            await self.ws.send(self.exchange.confirmation())
        self.exchange.check(parse_message(await self.ws.recv()))  # type: ignore[arg-type]
        if self.role == "sender":
            await self.ws.send(self.exchange.confirmation())
        self.channel = self.exchange.channel()

    async def send_json(self, obj: dict[str, Any]) -> None:
        await self._send(json.dumps(obj))

    async def send_text(self, text: str) -> None:
        await self._send(text)

    async def send_binary(self, payload: bytes) -> None:
        """A binary message exactly as given (no header added)."""
        await self._send(payload)

    async def send_data(self, payload: bytes) -> None:
        """A data message: the 0x00 header, then ``payload``."""
        await self._send(b"\x00" + payload)

    async def send_manifest(self, entries: Sequence[dict[str, Any]], **extra: Any) -> None:
        await self.send_json({"type": "manifest", "version": 1, "entries": list(entries), **extra})

    async def send_checksums(self, first: int, digests: Sequence[str]) -> None:
        await self.send_json({"type": "checksums", "first": first, "sha256": list(digests)})

    async def recv(self, timeout: float = RECV_TIMEOUT) -> str | bytes:
        """The next message from the relay or the peer (opened, once sealed)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.ws.recv()
                if self.channel is not None:
                    return await self._open(message)
                kind = _type_of(message)
                if kind == "waiting":
                    continue  # the relay: nobody here yet
                if self.exchange is not None and kind == "pake" and self.role == "receiver":
                    await self._handshake(str(message))
                    continue
                if self.exchange is not None and kind == "ready":
                    await self._handshake(None)
                return message

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
                    message = await self.ws.recv()
                    with contextlib.suppress(Exception):
                        message = await self._open(message)
                    received.append(message)
        return received

    async def start_sending(self, entries: Sequence[dict[str, Any]]) -> None:
        """As a sender: wait for ``ready``, send the manifest, wait for ``accept``."""
        await self.expect("ready")
        await self.send_manifest(entries)
        await self.expect("accept")


def _type_of(message: str | bytes) -> object:
    if not isinstance(message, str):
        return None
    with contextlib.suppress(ValueError, AttributeError):
        return json.loads(message).get("type")
    return None


@asynccontextmanager
async def handmade_peer(url: str, code: str, role: str,
                        encrypt: bool = True) -> AsyncIterator[HandmadePeer]:
    """Connect to the relay at ``url`` and say hello as ``role`` with ``code``."""
    async with connect(url, compression=None, max_size=None, open_timeout=10) as ws:
        await ws.send(json.dumps(
            {"type": "hello", "code_hash_hex": room_hash_hex(code), "role": role, "version": 2}
        ))
        yield HandmadePeer(ws, role, code, encrypt)


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
