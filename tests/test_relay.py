"""The relay over real sockets on 127.0.0.1, driven by raw clients that speak hello by hand."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from p2p_copy.protocol.messages import CloseCode
from p2p_copy.relay import Relay
from p2p_copy.testing import TEST_CONFIG, running_relay

from .conftest import Processes

READY = {"type": "ready"}
MiB = 2**20


def new_hash() -> str:
    """A fresh room name: 64 lowercase hex digits."""
    return secrets.token_hex(32)


def hello(code_hash: str, role: str) -> str:
    return json.dumps({"type": "hello", "code_hash_hex": code_hash, "role": role})


class Peers:
    """Raw clients of one relay; every one still open is closed when the block ends."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conns: list[ClientConnection] = []

    async def connect(self, **kwargs: Any) -> ClientConnection:
        options: dict[str, Any] = {
            "open_timeout": 5, "close_timeout": 2, "ping_interval": None,
            "max_size": 4 * MiB, "compression": None,
        }
        options.update(kwargs)
        ws = await connect(self.url, **options)
        self.conns.append(ws)
        return ws

    async def join(self, code_hash: str, role: str, **kwargs: Any) -> ClientConnection:
        ws = await self.connect(**kwargs)
        await ws.send(hello(code_hash, role))
        return ws

    async def __aenter__(self) -> Peers:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        async def close(ws: ClientConnection) -> None:
            try:
                async with asyncio.timeout(3):
                    await ws.close()
            except TimeoutError:
                ws.transport.abort()
                await ws.wait_closed()
        await asyncio.gather(*(close(ws) for ws in self.conns))


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    """conftest's relay (without the web page), but a stop() that hangs fails the test
    instead of stalling the run."""
    r = Relay("127.0.0.1", 0, config=dataclasses.replace(TEST_CONFIG, web=False))
    await r.start()
    try:
        yield r
    finally:
        async with asyncio.timeout(5):
            await r.stop()


@pytest.fixture
async def peers(relay: Relay) -> AsyncIterator[Peers]:
    async with Peers(relay.url) as p:
        yield p


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll until ``predicate()`` holds; the caller's asyncio.timeout bounds the wait."""
    while not predicate():
        await asyncio.sleep(0.005)


async def closed(ws: ClientConnection) -> tuple[int | None, str]:
    """Wait for the relay to close ``ws`` (no message may arrive first); its code and reason."""
    try:
        message = await ws.recv()
    except ConnectionClosed as exc:
        if exc.rcvd is None:
            return None, ""
        return exc.rcvd.code, exc.rcvd.reason
    raise AssertionError(f"expected a close from the relay, got {message!r:.100}")


async def join_waiting(relay: Relay, peers: Peers, code_hash: str, role: str) -> ClientConnection:
    """Join and return once the relay has this peer waiting in its room."""
    before = relay.stats.waiting
    ws = await peers.join(code_hash, role)
    await wait_until(lambda: relay.stats.waiting == before + 1)
    return ws


async def pair(relay: Relay, peers: Peers, code_hash: str | None = None,
               first: str = "sender") -> tuple[ClientConnection, ClientConnection]:
    """A sender and a receiver paired through ``relay``; ``first`` waits before the other joins."""
    code_hash = code_hash or new_hash()
    second = "receiver" if first == "sender" else "sender"
    a = await join_waiting(relay, peers, code_hash, first)
    b = await peers.join(code_hash, second)
    sender, receiver = (a, b) if first == "sender" else (b, a)
    assert json.loads(await sender.recv()) == READY
    return sender, receiver


def mixed_messages(tag: str, count: int, seed: int) -> list[str | bytes]:
    """Text and binary messages of varied sizes, empty ones and one of 1 MiB among them."""
    rng = random.Random(seed)
    out: list[str | bytes] = []
    for i in range(count):
        if i % 3 == 0:
            out.append(f"{tag}:{i}:" + "é€😀x" * rng.randrange(0, 200))
        else:
            out.append(i.to_bytes(4, "big") + rng.randbytes(rng.randrange(0, 70_000)))
    out[5] = ""
    out[7] = b""
    out[count // 2] = rng.randbytes(MiB)
    return out


# --- pairing -----------------------------------------------------------------------------


@pytest.mark.parametrize("first", ["sender", "receiver"])
async def test_pairs_in_either_order_and_ready_goes_to_sender_only(
        relay: Relay, peers: Peers, first: str) -> None:
    """Whoever waits first, the sender gets one ready and the receiver nothing from the relay."""
    async with asyncio.timeout(8):
        code_hash = new_hash()
        second = "receiver" if first == "sender" else "sender"
        a = await join_waiting(relay, peers, code_hash, first)
        if first == "receiver":
            await a.send("sent while waiting")
        b = await peers.join(code_hash, second)
        sender, receiver = (a, b) if first == "sender" else (b, a)
        assert json.loads(await sender.recv()) == READY
        if first == "receiver":
            assert await sender.recv() == "sent while waiting"
        await sender.send("marker")
        assert await receiver.recv() == "marker"  # not a ready, not anything else
        await receiver.send("back")
        assert await sender.recv() == "back"  # exactly one ready came before
        assert relay.stats.waiting == 0


async def test_messages_forwarded_one_to_one_both_ways(relay: Relay, peers: Peers) -> None:
    """200 mixed text/binary messages each way (1 MiB and empty ones) keep type, content, order."""
    async with asyncio.timeout(9):
        sender, receiver = await pair(relay, peers)
        to_receiver = mixed_messages("s", 200, seed=1)
        to_sender = mixed_messages("r", 200, seed=2)

        async def send_all(ws: ClientConnection, messages: list[str | bytes]) -> None:
            for m in messages:
                await ws.send(m)

        async def recv_n(ws: ClientConnection, n: int) -> list[str | bytes]:
            return [await ws.recv() for _ in range(n)]

        _, _, got_by_receiver, got_by_sender = await asyncio.gather(
            send_all(sender, to_receiver), send_all(receiver, to_sender),
            recv_n(receiver, len(to_receiver)), recv_n(sender, len(to_sender)),
        )
        assert [type(m) for m in got_by_receiver] == [type(m) for m in to_receiver]
        assert got_by_receiver == to_receiver
        assert [type(m) for m in got_by_sender] == [type(m) for m in to_sender]
        assert got_by_sender == to_sender


async def test_different_hashes_never_pair(relay: Relay, peers: Peers) -> None:
    """A sender and a receiver with different hashes both wait; each pairs only by its own hash."""
    async with asyncio.timeout(8):
        h1, h2 = new_hash(), new_hash()
        s1 = await join_waiting(relay, peers, h1, "sender")
        r2 = await join_waiting(relay, peers, h2, "receiver")
        assert relay.stats.waiting == 2 and relay.stats.active_pairs == 0
        r1 = await peers.join(h1, "receiver")
        s2 = await peers.join(h2, "sender")
        assert json.loads(await s1.recv()) == READY
        assert json.loads(await s2.recv()) == READY
        for s, r, tag in ((s1, r1, "one"), (s2, r2, "two")):
            await s.send(f"from sender {tag}")
            await r.send(f"from receiver {tag}".encode())
        assert await r1.recv() == "from sender one"
        assert await r2.recv() == "from sender two"
        assert await s1.recv() == b"from receiver one"
        assert await s2.recv() == b"from receiver two"


# --- refusing a second peer with the same role ------------------------------------------------


@pytest.mark.parametrize("role", ["sender", "receiver"])
async def test_duplicate_role_is_refused_and_first_peer_still_pairs(
        relay: Relay, peers: Peers, role: str) -> None:
    """A second peer with the role already waiting gets 4002 and a reason; the first still pairs."""
    async with asyncio.timeout(8):
        code_hash = new_hash()
        first = await join_waiting(relay, peers, code_hash, role)
        intruder = await peers.join(code_hash, role)
        code, reason = await closed(intruder)
        assert code == CloseCode.CODE_IN_USE
        assert "already waiting" in reason
        assert first.state is State.OPEN
        assert relay.stats.waiting == 1
        other = "receiver" if role == "sender" else "sender"
        late = await peers.join(code_hash, other)
        sender, receiver = (first, late) if role == "sender" else (late, first)
        assert json.loads(await sender.recv()) == READY
        await sender.send(b"still works")
        assert await receiver.recv() == b"still works"
        assert relay.stats.outcomes["redundant"] == 1


# --- bad first messages and timeouts ---------------------------------------------------------


@pytest.mark.parametrize("first_message", [
    pytest.param(b'{"type":"hello"}', id="binary"),
    pytest.param("{not json", id="invalid-json"),
    pytest.param("[1, 2]", id="not-an-object"),
    pytest.param('{"type":"ready"}', id="wrong-type"),
    pytest.param(hello("A" * 64, "sender"), id="uppercase-hash"),
    pytest.param(hello("a" * 63, "sender"), id="short-hash"),
    pytest.param(json.dumps({"type": "hello", "role": "sender"}), id="no-hash"),
    pytest.param(hello("a" * 64, "both"), id="bad-role"),
    pytest.param(json.dumps({"type": "hello", "code_hash_hex": "a" * 64}), id="no-role"),
])
async def test_bad_first_message_closes_4000(relay: Relay, peers: Peers,
                                             first_message: str | bytes) -> None:
    """Anything but a valid text hello first is closed with 4000 and a reason; the relay goes on."""
    async with asyncio.timeout(8):
        ws = await peers.connect()
        await ws.send(first_message)
        code, reason = await closed(ws)
        assert code == CloseCode.BAD_HELLO
        assert reason
        assert relay.stats.waiting == 0
        sender, receiver = await pair(relay, peers)
        await sender.send("ok")
        assert await receiver.recv() == "ok"


async def test_no_hello_in_time_closes_4001() -> None:
    """A connection that sends nothing is closed with 4001 once hello_timeout passes."""
    async with asyncio.timeout(8), running_relay(hello_timeout=0.5) as relay, \
            Peers(relay.url) as peers:
        ws = await peers.connect()
        code, _ = await closed(ws)
        assert code == CloseCode.HELLO_TIMEOUT
        await wait_until(lambda: relay.stats.open_connections == 0)
        assert relay.stats.outcomes["errory"] == 1


async def test_no_partner_in_time_closes_4003_and_frees_room() -> None:
    """A lonely peer is closed with 4003 after peer_timeout; a new pair with its hash then works."""
    async with asyncio.timeout(8), running_relay(peer_timeout=0.5) as relay, \
            Peers(relay.url) as peers:
        code_hash = new_hash()
        lonely = await peers.join(code_hash, "sender")
        code, reason = await closed(lonely)
        assert code == CloseCode.PEER_TIMEOUT
        assert reason
        await wait_until(lambda: relay.stats.outcomes["lonely"] == 1)
        assert relay.stats.waiting == 0
        # Open both first so that the pair forms well within the short peer_timeout.
        sender, receiver = await peers.connect(), await peers.connect()
        await sender.send(hello(code_hash, "sender"))
        await receiver.send(hello(code_hash, "receiver"))
        assert json.loads(await sender.recv()) == READY
        await receiver.send("works")
        assert await sender.recv() == "works"


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_waiting_peer_that_leaves_frees_its_room(
        relay: Relay, peers: Peers, how: str) -> None:
    """A waiting sender that closes or drops frees the room: a next sender with that hash pairs."""
    async with asyncio.timeout(8):
        code_hash = new_hash()
        gone = await join_waiting(relay, peers, code_hash, "sender")
        if how == "close":
            await gone.close()
        else:
            gone.transport.abort()
            await gone.wait_closed()
        await wait_until(lambda: relay.stats.waiting == 0)
        await wait_until(lambda: relay.stats.outcomes["impatient"] == 1)
        sender, receiver = await pair(relay, peers, code_hash, first="sender")
        await sender.send("new sender")
        assert await receiver.recv() == "new sender"


# --- closing -------------------------------------------------------------------------------


@pytest.mark.parametrize("closer", ["sender", "receiver"])
async def test_clean_close_is_passed_on_as_1000(relay: Relay, peers: Peers, closer: str) -> None:
    """As one paired side closes with 1000, the relay closes the other with 1000 citing the peer."""
    async with asyncio.timeout(8):
        sender, receiver = await pair(relay, peers)
        going, staying = (sender, receiver) if closer == "sender" else (receiver, sender)
        await going.close()
        assert going.close_code == CloseCode.NORMAL
        code, reason = await closed(staying)
        assert code == CloseCode.NORMAL
        assert "peer" in reason
        await wait_until(lambda: relay.stats.open_connections == 0)
        assert relay.stats.outcomes["happy"] == 2


@pytest.mark.parametrize("dropper", ["sender", "receiver"])
async def test_dropped_peer_is_passed_on_as_4004(relay: Relay, peers: Peers, dropper: str) -> None:
    """When one paired side vanishes without a close frame, the relay closes the other with 4004."""
    async with asyncio.timeout(8):
        sender, receiver = await pair(relay, peers)
        await sender.send("before")
        assert await receiver.recv() == "before"
        going, staying = (sender, receiver) if dropper == "sender" else (receiver, sender)
        going.transport.abort()
        await going.wait_closed()
        code, reason = await closed(staying)
        assert code == CloseCode.PEER_GONE
        assert reason
        await wait_until(lambda: relay.stats.open_connections == 0)
        assert relay.stats.outcomes["errory"] == 2
        assert relay.stats.active_pairs == 0


async def test_messages_before_clean_close_all_arrive_first(relay: Relay, peers: Peers) -> None:
    """All sent right before a clean close (~6 MiB, more than buffers hold) arrives, then 1000."""
    async with asyncio.timeout(9):
        sender, receiver = await pair(relay, peers)
        messages: list[str | bytes] = []
        for i in range(300):
            messages.append(f"text {i}" if i % 2 else i.to_bytes(4, "big") * 5000)

        async def send_then_close() -> None:
            for m in messages:
                await sender.send(m)
            await sender.close()

        async def read_until_closed() -> tuple[list[str | bytes], int | None]:
            got: list[str | bytes] = []
            try:
                while True:
                    got.append(await receiver.recv())
            except ConnectionClosed as exc:
                return got, exc.rcvd.code if exc.rcvd else None

        _, (got, code) = await asyncio.gather(send_then_close(), read_until_closed())
        assert len(got) == len(messages)
        assert got == messages
        assert code == CloseCode.NORMAL


async def test_stop_closes_waiting_and_paired_with_1001() -> None:
    """Relay.stop() closes a waiting peer and both sides of a pair with 1001 and returns."""
    async with asyncio.timeout(8), running_relay() as relay, Peers(relay.url) as peers:
        sender, receiver = await pair(relay, peers)
        await sender.send(b"x")
        assert await receiver.recv() == b"x"
        waiting = await join_waiting(relay, peers, new_hash(), "receiver")
        await relay.stop()
        for ws in (sender, receiver, waiting):
            code, _ = await closed(ws)
            assert code == CloseCode.GOING_AWAY
        assert relay.stats.open_connections == 0


@pytest.mark.slow
async def test_stop_ends_despite_a_receiver_that_does_not_read() -> None:
    """Relay.stop() returns though a paired receiver stopped reading; the sender still gets 1001."""
    async with asyncio.timeout(9), running_relay() as relay, Peers(relay.url) as peers:
        code_hash = new_hash()
        receiver = await peers.join(code_hash, "receiver", max_queue=1,
                                    sock=await small_socket(relay.port))
        sender = await peers.join(code_hash, "sender", sock=await small_socket(relay.port))
        assert json.loads(await sender.recv()) == READY

        async def push() -> None:
            for i in range(400):
                await sender.send(chunk(i))

        pusher = asyncio.create_task(push())
        try:
            forwarded = -1
            while relay.stats.messages_forwarded != forwarded:  # until the relay is stuck
                forwarded = relay.stats.messages_forwarded
                await asyncio.sleep(0.5)
            assert not pusher.done()
            await relay.stop()
        finally:
            pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await pusher
        code, _ = await closed(sender)
        assert code == CloseCode.GOING_AWAY
        assert relay.stats.open_connections == 0
        receiver.transport.abort()


# --- plain HTTP ----------------------------------------------------------------------------


async def http_request(port: int, raw: bytes) -> bytes:
    """Send ``raw`` to 127.0.0.1:port and return everything until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_healthz_answers_200(relay: Relay) -> None:
    """GET /healthz over plain HTTP answers 200."""
    async with asyncio.timeout(8):
        response = await http_request(
            relay.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        status_line = response.split(b"\r\n", 1)[0]
        assert status_line.split()[1] == b"200"
        assert response.endswith(b"ok\n")


async def test_plain_http_and_garbage_do_not_hurt_the_relay(relay: Relay, peers: Peers) -> None:
    """Plain GETs of other paths get an HTTP error, garbage is dropped, the relay still pairs."""
    async with asyncio.timeout(8):
        for path in (b"/", b"/nothing", b"/healthz/more"):
            response = await http_request(
                relay.port, b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status = int(response.split(b"\r\n", 1)[0].split()[1])
            assert 400 <= status < 500
        await http_request(relay.port, b"\x16\x03\x01garbage\r\n\r\n")
        _, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.close()  # connect and hang up without a request
        await writer.wait_closed()
        sender, receiver = await pair(relay, peers)
        await sender.send("still serving")
        assert await receiver.recv() == "still serving"


# --- backpressure -----------------------------------------------------------------------------

CHUNK = 256 * 1024


async def small_socket(port: int) -> socket.socket:
    """A TCP socket connected to 127.0.0.1:port with 128 KiB kernel buffers (no autotuning)."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 128 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 * 1024)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def chunk(i: int) -> bytes:
    return i.to_bytes(4, "big") * (CHUNK // 4)


@pytest.mark.slow
async def test_receiver_that_does_not_read_blocks_sender(relay: Relay, peers: Peers) -> None:
    """A sender facing a receiver that does not read stalls after a bounded amount; all arrives."""
    count = 800  # 200 MiB attempted
    async with asyncio.timeout(9):
        code_hash = new_hash()
        # The clients' own buffers are kept small: what piles up is the relay's doing.
        receiver = await peers.join(code_hash, "receiver", max_queue=1,
                                    sock=await small_socket(relay.port))
        sender = await peers.join(code_hash, "sender", sock=await small_socket(relay.port))
        assert json.loads(await sender.recv()) == READY
        accepted = 0

        async def push() -> None:
            nonlocal accepted
            for i in range(count):
                await sender.send(chunk(i))
                accepted += CHUNK

        pusher = asyncio.create_task(push())
        try:
            last = -1
            while accepted != last:  # until a whole second passes without a send completing
                last = accepted
                await asyncio.sleep(1.0)
            assert not pusher.done()
            assert accepted < 24 * MiB, f"{accepted / MiB:.1f} MiB accepted without a reader"
            for i in range(count):
                message = await receiver.recv()
                assert message == chunk(i), f"message {i} differs"
            await pusher
            assert accepted == count * CHUNK
        finally:
            pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pusher


# --- statistics -----------------------------------------------------------------------------


@pytest.mark.slow
async def test_stats_count_connections_pairs_traffic_and_outcomes() -> None:
    """RelayStats counts connections, the active pair, forwarded messages/bytes and each outcome."""
    async with asyncio.timeout(8), running_relay(peer_timeout=1.0) as relay, \
            Peers(relay.url) as peers:
        stats = relay.stats
        sender, receiver = await pair(relay, peers)
        payloads: list[str | bytes] = ["hello", b"\x00" * 1000, "grüße €", b"", ""]
        for m in payloads:
            await sender.send(m)
            assert await receiver.recv() == m
        await receiver.send(b"12345")
        assert await sender.recv() == b"12345"
        assert stats.connections == 2 and stats.open_connections == 2
        assert stats.active_pairs == 1
        assert stats.waiting == 0
        assert stats.messages_forwarded == len(payloads) + 1
        expected = sum(len(m.encode() if isinstance(m, str) else m) for m in payloads) + 5
        assert stats.bytes_forwarded == expected

        bad = await peers.connect()
        await bad.send("nonsense")
        assert (await closed(bad))[0] == CloseCode.BAD_HELLO
        code_hash = new_hash()
        lonely = await join_waiting(relay, peers, code_hash, "sender")
        redundant = await peers.join(code_hash, "sender")
        assert (await closed(redundant))[0] == CloseCode.CODE_IN_USE
        impatient = await join_waiting(relay, peers, new_hash(), "receiver")
        await impatient.close()
        assert (await closed(lonely))[0] == CloseCode.PEER_TIMEOUT
        await sender.close()
        assert (await closed(receiver))[0] == CloseCode.NORMAL

        await wait_until(lambda: stats.open_connections == 0)
        assert stats.connections == 6
        assert stats.active_pairs == 0 and stats.waiting == 0
        assert stats.outcomes == {"happy": 2, "errory": 1, "lonely": 1, "redundant": 1,
                                  "impatient": 1}


# --- many pairs ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_hundred_concurrent_pairs_without_cross_talk(relay: Relay, peers: Peers) -> None:
    """100 pairs joining concurrently in random order each talk only to their own partner."""
    pairs = 100
    rng = random.Random(3)

    async def one_pair(i: int) -> None:
        code_hash = new_hash()

        async def sender_side() -> None:
            if rng.random() < 0.5:
                await asyncio.sleep(0)
            ws = await peers.join(code_hash, "sender")
            assert json.loads(await ws.recv()) == READY
            for k in range(3):
                await ws.send(f"s {i} {k}")
            await ws.send(i.to_bytes(2, "big") * 100)
            got = [await ws.recv() for _ in range(4)]
            assert got == [f"r {i} {k}" for k in range(3)] + [i.to_bytes(2, "big") * 50]
            await ws.close()

        async def receiver_side() -> None:
            ws = await peers.join(code_hash, "receiver")
            for k in range(3):
                await ws.send(f"r {i} {k}")
            await ws.send(i.to_bytes(2, "big") * 50)
            got = [await ws.recv() for _ in range(4)]
            assert got == [f"s {i} {k}" for k in range(3)] + [i.to_bytes(2, "big") * 100]
            code, _ = await closed(ws)
            assert code == CloseCode.NORMAL

        sides = [sender_side(), receiver_side()]
        rng.shuffle(sides)
        await asyncio.gather(*sides)

    async with asyncio.timeout(9):
        await asyncio.gather(*(one_pair(i) for i in range(pairs)))
        await wait_until(lambda: relay.stats.open_connections == 0)
    assert relay.stats.connections == 2 * pairs
    assert relay.stats.outcomes["happy"] == 2 * pairs
    assert relay.stats.messages_forwarded == 8 * pairs


# --- the relay as a process ---------------------------------------------------------------


async def test_relay_process_pairs_and_survives_oversized_message(processes: Processes) -> None:
    """A relay process pairs raw clients, closes one that exceeds max_message_size with 1009."""
    _, url = await asyncio.to_thread(processes.start_relay)
    async with asyncio.timeout(9), Peers(url) as peers:
        code_hash = new_hash()
        sender = await peers.join(code_hash, "sender")
        receiver = await peers.join(code_hash, "receiver")
        assert json.loads(await sender.recv()) == READY
        await sender.send(b"small")
        assert await receiver.recv() == b"small"
        with contextlib.suppress(ConnectionClosed):
            await sender.send(os.urandom(2**21 + 1))
        code, _ = await closed(sender)
        assert code == CloseCode.MESSAGE_TOO_BIG
        code, _ = await closed(receiver)
        assert code == CloseCode.PEER_GONE

        code_hash = new_hash()
        receiver = await peers.join(code_hash, "receiver")
        sender = await peers.join(code_hash, "sender")
        assert json.loads(await sender.recv()) == READY
        big = os.urandom(2**21)  # exactly the limit still passes
        await sender.send(big)
        assert await receiver.recv() == big
        await receiver.send("thanks")
        assert await sender.recv() == "thanks"
        await sender.close()
        assert (await closed(receiver))[0] == CloseCode.NORMAL
