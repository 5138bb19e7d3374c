"""The relay's frame path (forwarding.py): frames go on as parsed, in order, with backpressure.

Real relay on loopback, real websockets clients. The relay-wide behaviour (one-to-one
forwarding, slow receivers, limits, metrics) is tested in test_relay*.py; these tests pin
what is particular to passing frames on before their message is complete.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from p2p_copy.protocol.messages import CloseCode
from p2p_copy.relay import Relay
from p2p_copy.relay.forwarding import ForwardingConnection, Verdict
from p2p_copy.testing import running_relay

from .test_relay import READY, Peers, closed, join_waiting, new_hash, pair

KiB = 1024


@pytest.fixture
async def peers(relay: Relay) -> AsyncIterator[Peers]:
    """Clients of conftest's relay, closed after the test."""
    async with Peers(relay.url) as p:
        yield p


async def fragments(parts: list[bytes], gate: asyncio.Event | None = None,
                    after: int = 1) -> AsyncIterator[bytes]:
    """``parts`` as one fragmented message; waits for ``gate`` after the first ``after``."""
    for i, part in enumerate(parts):
        if gate is not None and i == after:
            await gate.wait()
        yield part


async def first_fragment(ws: ClientConnection) -> bytes:
    """The first fragment of the next message, as soon as it arrives."""
    async for fragment in ws.recv_streaming():
        assert isinstance(fragment, bytes)
        return fragment
    raise AssertionError("no fragment")


async def test_binary_fragments_arrive_before_their_message_is_complete(
        relay: Relay, peers: Peers) -> None:
    """The receiver reads a message's first fragment while the sender still holds the rest."""
    async with asyncio.timeout(9):
        sender, receiver = await pair(relay, peers)
        gate = asyncio.Event()
        parts = [b"a" * 100 * KiB, b"b" * 100 * KiB, b"c"]
        sending = asyncio.ensure_future(sender.send(fragments(parts, gate)))
        reading = receiver.recv_streaming()
        assert await anext(reading) == parts[0]
        assert not sending.done()
        gate.set()
        rest = [part async for part in reading if isinstance(part, bytes)]
        assert b"".join(rest) == b"".join(parts[1:])
        await sending
        await sender.send(b"next")
        assert await receiver.recv() == b"next"


async def test_what_waited_for_the_partner_arrives_first_and_in_order(
        relay: Relay, peers: Peers) -> None:
    """Text and binary sent before pairing, then a stream of both: one order, both ways."""
    async with asyncio.timeout(9):
        code_hash = new_hash()
        receiver = await join_waiting(relay, peers, code_hash, "receiver")
        # Within the 4 KiB a peer may send before it is paired (protocol.md §5.1).
        early: list[str | bytes] = [b"early-0", "early-1", b"early-2" * 500]
        for message in early:
            await receiver.send(message)
        sender = await peers.join(code_hash, "sender")
        assert json.loads(await sender.recv()) == READY
        later: list[str | bytes] = [
            f"text-{i}" if i % 5 == 0 else i.to_bytes(4, "big") * (i * 97 % 4096)
            for i in range(300)]
        sending = asyncio.ensure_future(_send_all(receiver, later))
        got = [await sender.recv() for _ in range(len(early) + len(later))]
        await sending
        assert got == early + later


async def _send_all(ws: ClientConnection, messages: list[str | bytes]) -> None:
    for message in messages:
        await ws.send(message)


async def test_fragmented_text_then_binary_keeps_its_order(
        relay: Relay, peers: Peers) -> None:
    """A text message in fragments (through the handler) is not overtaken by binary frames."""
    async with asyncio.timeout(9):
        sender, receiver = await pair(relay, peers)
        for round_ in range(20):
            text = [f"t{round_}-" + "é" * 3000, "x" * 5000, "end"]
            await sender.send(iter(text))
            await sender.send(fragments([b"1" * 70 * KiB, b"2" * KiB]))
            await sender.send(b"whole")
        for round_ in range(20):
            assert await receiver.recv() == f"t{round_}-" + "é" * 3000 + "x" * 5000 + "end"
            assert await receiver.recv() == b"1" * 70 * KiB + b"2" * KiB
            assert await receiver.recv() == b"whole"


async def test_byte_cap_in_the_middle_of_a_fragmented_message_closes_both() -> None:
    """Over max_pair_bytes between two fragments: 4008 to both, the relay serves on."""
    async with asyncio.timeout(20), running_relay(max_pair_bytes=200 * KiB) as capped, \
            Peers(capped.url) as clients:
        sender, receiver = await pair(capped, clients)
        parts = [bytes(150 * KiB), bytes(150 * KiB), bytes(10)]
        try:
            await sender.send(fragments(parts))
        except ConnectionClosed:
            pass
        codes = []
        for ws in (sender, receiver):
            try:
                while True:
                    await ws.recv()
            except ConnectionClosed as exc:
                codes.append(exc.rcvd.code if exc.rcvd else None)
        assert codes == [CloseCode.PAIR_LIMIT, CloseCode.PAIR_LIMIT]
        assert capped.stats.rejections["pair_bytes"] == 1
        again_sender, again_receiver = await pair(capped, clients)
        await again_sender.send(b"fine")
        assert await again_receiver.recv() == b"fine"


async def test_partner_gone_mid_message_ends_the_pair_cleanly(
        relay: Relay, peers: Peers) -> None:
    """The receiver drops while a fragmented message streams: the sender hears 4004."""
    async with asyncio.timeout(9):
        sender, receiver = await pair(relay, peers)
        gate = asyncio.Event()
        sending = asyncio.ensure_future(
            sender.send(fragments([bytes(64 * KiB)] * 50, gate)))
        assert len(await first_fragment(receiver)) == 64 * KiB
        receiver.transport.abort()
        gate.set()
        code, _ = await closed_or_sending(sender, sending)
        assert code == CloseCode.PEER_GONE


async def closed_or_sending(ws: ClientConnection,
                            sending: asyncio.Future[None]) -> tuple[int | None, str]:
    """The close code ``ws`` gets while its fragmented send may still be running."""
    try:
        await sending
    except ConnectionClosed:
        pass
    return await closed(ws)


async def test_text_over_the_byte_cap_drops_what_follows_and_closes_both() -> None:
    """The handler's path stops at the cap too; frames behind it are dropped, not queued."""
    async with asyncio.timeout(20), running_relay(max_pair_bytes=1000) as capped, \
            Peers(capped.url) as clients:
        sender, receiver = await pair(capped, clients)
        await sender.send("a" * 600)
        try:
            await sender.send("b" * 600)
            for _ in range(20):
                await sender.send(bytes(64 * KiB))
        except ConnectionClosed:
            pass
        assert await receiver.recv() == "a" * 600
        assert (await closed(receiver))[0] == CloseCode.PAIR_LIMIT
        assert (await closed(sender))[0] == CloseCode.PAIR_LIMIT
        assert capped.stats.bytes_forwarded == 600


# --- the pause bookkeeping, without sockets --------------------------------------------


class _Transport(asyncio.Transport):
    """Records reading and buffers writes, calling the protocol's flow control at 32 KiB."""

    def __init__(self) -> None:
        super().__init__()
        self.reading, self.buffered = True, 0
        self.protocol: ForwardingConnection | None = None

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self.protocol is not None
        before, self.buffered = self.buffered, self.buffered + len(data)
        if before <= 32 * KiB < self.buffered:
            self.protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def drain(self) -> None:
        assert self.protocol is not None
        self.buffered = 0
        self.protocol.resume_writing()


class _Server:
    """What a ServerConnection needs of its server: a handler and the set of its tasks."""

    def __init__(self) -> None:
        self.handler_tasks: set[asyncio.Task[None]] = set()

    async def handler(self, connection: object) -> None:
        pass

    def start_connection_handler(self, connection: object) -> None:
        """websockets 16 starts the handler through this (17: handler, handler_tasks)."""


def _open_connection() -> tuple[ForwardingConnection, _Transport]:
    protocol = ServerProtocol()
    protocol.receive_data(b"GET / HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    [request] = protocol.events_received()
    assert isinstance(request, Request)
    protocol.send_response(protocol.accept(request))  # the opening handshake, done
    protocol.data_to_send()
    assert protocol.state is State.OPEN
    connection = ForwardingConnection(protocol, _Server(), max_queue=4)  # type: ignore[arg-type]
    transport = _Transport()
    transport.protocol = connection
    connection.connection_made(transport)
    connection.request = request
    return connection, transport


async def test_reading_resumes_only_when_neither_the_partner_nor_the_queue_holds_it() -> None:
    """The partner drains while the assembler's queue is full: reading stays paused."""
    a, reading_a = _open_connection()
    b, writing_b = _open_connection()
    a.forward_to(b, lambda size, fin: Verdict.PASS)
    a.process_event(Frame(Opcode.BINARY, bytes(40 * KiB)))  # direct: b's buffer is full
    assert not reading_a.reading
    a.process_event(Frame(Opcode.TEXT, b"t"))  # the same read: to the handler, in order
    for _ in range(5):
        a.process_event(Frame(Opcode.BINARY, b"s"))  # behind the text: queued too
    writing_b.drain()
    assert not reading_a.reading, "the assembler's full queue must keep reading paused"
    for _ in range(6):
        await a.recv()
        a.handed_on(1)
    assert reading_a.reading
    # Now the other way round: the partner is full again and holds reading, and then the
    # assembler's queue fills and drains. Its drain must not resume reading.
    a.process_event(Frame(Opcode.BINARY, bytes(40 * KiB)))
    assert not reading_a.reading
    a.process_event(Frame(Opcode.TEXT, b"t"))
    for _ in range(5):
        a.process_event(Frame(Opcode.BINARY, b"s"))
    for _ in range(6):
        await a.recv()
        a.handed_on(1)
    assert not reading_a.reading, "the partner's full buffer must keep reading paused"
    writing_b.drain()
    assert reading_a.reading
    a.discard()


async def test_discard_reads_on_though_the_queue_is_full() -> None:
    """A pair ending at a limit: the handler stops taking messages, yet the close frame
    behind a full queue must still be read."""
    a, reading_a = _open_connection()
    b, _ = _open_connection()
    a.forward_to(b, lambda size, fin: Verdict.PASS)
    a.process_event(Frame(Opcode.TEXT, b"t"))
    for _ in range(5):
        a.process_event(Frame(Opcode.BINARY, b"s"))  # behind the text: the queue fills
    assert not reading_a.reading
    a.discard()
    assert reading_a.reading
    a.process_event(Frame(Opcode.BINARY, b"late"))  # dropped, not queued
    assert len(a.recv_messages.frames) == 6


#: 300 pings of 125 bytes, masked as a client's: their answers pass the 32 KiB mark.
PINGS = Frame(Opcode.PING, b"x" * 125).serialize(mask=True, extensions=[]) * 300


async def test_answers_a_paired_peer_leaves_unread_hold_its_reading_until_taken() -> None:
    """Pongs over the high-water mark hold reading like a full partner does, and each
    hold is let go on its own: reading resumes only when neither holds it."""
    a, socket_a = _open_connection()
    b, socket_b = _open_connection()
    a.forward_to(b, lambda size, fin: Verdict.PASS)
    a.data_received(PINGS)
    assert socket_a.buffered > 32 * KiB and not socket_a.reading
    socket_a.drain()  # the peer read its answers
    assert socket_a.reading
    a.data_received(PINGS[:131])  # one answer, under the mark: read on
    assert socket_a.reading
    a.process_event(Frame(Opcode.BINARY, bytes(40 * KiB)))  # the partner is full
    a.data_received(PINGS)
    socket_b.drain()
    assert not socket_a.reading, "its own unread answers must keep reading paused"
    a.process_event(Frame(Opcode.BINARY, bytes(40 * KiB)))
    socket_a.drain()
    assert not socket_a.reading, "the partner's full buffer must keep reading paused"
    socket_b.drain()
    assert socket_a.reading
    a.discard()


async def test_answers_a_peer_not_yet_paired_leaves_unread_close_it_with_1009() -> None:
    """Not paired, such a peer is closed at once, and what it sends next is dropped."""
    a, socket_a = _open_connection()
    a.data_received(PINGS)
    assert a.protocol.close_sent is not None
    assert a.protocol.close_sent.code == CloseCode.MESSAGE_TOO_BIG
    written = socket_a.buffered
    a.data_received(PINGS)
    assert socket_a.buffered == written and socket_a.reading
