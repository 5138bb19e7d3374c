"""The relay's limits: admission's bookkeeping without I/O, then each limit on a real relay.

Every limit test runs a real relay on 127.0.0.1 and checks three things: the limited client
gets its HTTP status or close code, p2p-copy's client turns that into the right error, and
a legitimate pair at the same time still goes through. Loopback is exempt from per-address
limits by default, so the tests that need them on 127.0.0.1 clear ``exempt_addresses``;
the legitimate pairs come from 127.0.0.2 (its own address, so it has its own budget).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from p2p_copy.cli.commands import _relay_limits, build_parser, main
from p2p_copy.errors import (
    AccessDeniedError,
    CodeInUseError,
    P2PCopyError,
    RelayLimitError,
    RelayUnreachableError,
)
from p2p_copy.peer.link import RelayLink, open_link
from p2p_copy.protocol.messages import CloseCode
from p2p_copy.relay import Relay, RelayConfig
from p2p_copy.relay.admission import (
    CONNECTIONS_FULL,
    CONNECTIONS_PER_ADDRESS,
    PAIRS_FULL,
    RATE_LIMITED,
    WAITING_FULL,
    WAITING_PER_ADDRESS,
    Admission,
    Limits,
    address_key,
    client_host,
    parse_networks,
)
from p2p_copy.relay.server import BEARER_SUBPROTOCOL
from p2p_copy.testing import running_relay

from .conftest import http_request

KiB = 1024
MiB = 2**20
LEGIT = "127.0.0.2"  # where the legitimate pairs connect from
READY = {"type": "ready"}
WAITING = {"type": "waiting"}


# --- helpers ----------------------------------------------------------------------------


def new_hash() -> str:
    return secrets.token_hex(32)


def hello(room: str, role: str, **extra: Any) -> str:
    return json.dumps({"type": "hello", "code_hash_hex": room, "role": role, **extra})


async def ws_connect(url: str, room: str | None = None, source: str = "127.0.0.1",
                     **kwargs: Any) -> ClientConnection:
    """A raw WebSocket client from ``source`` (any 127.x address), on ``room``'s path."""
    options: dict[str, Any] = {
        "open_timeout": 10, "close_timeout": 2, "ping_interval": None, "compression": None,
        "max_size": 4 * MiB, "local_addr": (source, 0),
    }
    options.update(kwargs)
    return await connect(f"{url}/{room}" if room else url, **options)


async def join(url: str, room: str, role: str, source: str = "127.0.0.1",
               **extra: Any) -> ClientConnection:
    ws = await ws_connect(url, room, source)
    with contextlib.suppress(ConnectionClosed):  # a refusal may come before the hello
        await ws.send(hello(room, role, **extra))
    return ws


async def closed(ws: ClientConnection) -> tuple[int | None, str]:
    """Wait for the relay to close ``ws`` (nothing may arrive first); its code and reason."""
    try:
        message = await ws.recv()
    except ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")
    raise AssertionError(f"expected a close from the relay, got {message!r:.100}")


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll until ``predicate()`` holds; the caller's asyncio.timeout bounds the wait."""
    while not predicate():
        await asyncio.sleep(0.005)


async def http_status(url: str, room: str | None = None, source: str = "127.0.0.1",
                      **kwargs: Any) -> int:
    """The HTTP status the relay answers a WebSocket handshake with (101 if it opens)."""
    try:
        ws = await ws_connect(url, room or new_hash(), source, **kwargs)
    except InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return 101


async def client_error(url: str, *, role: str = "sender", token: str | None = None,
                       **extra: Any) -> P2PCopyError:
    """What p2p-copy's own client raises when it says hello and waits for the relay."""
    room = new_hash()
    try:
        async with open_link(url, room=room, token=token, open_timeout=10) as ws:
            link = RelayLink(ws, "sender" if role == "sender" else "receiver")
            await link.send(hello(room, role, **extra))
            message = await link.recv(timeout=15, waiting_for="the relay")
    except P2PCopyError as exc:
        return exc
    raise AssertionError(f"the relay let us in and sent {message!r:.100}")


async def transfer(url: str, nbytes: int = 256 * KiB, *, source: str = LEGIT,
                   chunk: int = 64 * KiB, headers: dict[str, str] | None = None,
                   **options: Any) -> None:
    """A sender and a receiver from ``source`` pair and push ``nbytes`` through intact
    (``options`` for websockets' connect)."""
    room = new_hash()
    extra: dict[str, Any] = {"additional_headers": headers} if headers else {}
    extra.update(options)
    sender = await ws_connect(url, room, source, **extra)
    receiver = await ws_connect(url, room, source, **extra)
    try:
        await sender.send(hello(room, "sender"))
        await receiver.send(hello(room, "receiver"))
        assert json.loads(await sender.recv()) == READY
        data = hashlib.shake_256(room.encode()).digest(nbytes)

        async def push() -> None:
            for at in range(0, nbytes, chunk):
                await sender.send(data[at:at + chunk])

        async def pull() -> bytes:
            got = bytearray()
            while len(got) < nbytes:
                message = await receiver.recv()
                assert isinstance(message, bytes)
                got += message
            return bytes(got)

        _, got = await asyncio.gather(push(), pull())
        assert got == data
    finally:
        await sender.close()
        await receiver.close()


@contextlib.asynccontextmanager
async def idle_sockets(relay: Relay, count: int, source: str = "127.0.0.1"
                       ) -> AsyncIterator[list[asyncio.StreamWriter]]:
    """``count`` TCP connections that never send a byte (slow-loris), closed at the end."""
    writers: list[asyncio.StreamWriter] = []
    try:
        for _ in range(count):
            _, writer = await asyncio.open_connection(relay.host, relay.port,
                                                      local_addr=(source, 0))
            writers.append(writer)
        yield writers
    finally:
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def rejections(relay: Relay) -> dict[str, float]:
    """The relay's rejections counter, as /metrics shows it."""
    assert relay.metrics is not None
    text = relay.metrics.exposition()[0].decode()
    prefix = 'p2p_copy_relay_rejections_total{reason="'
    return {line[len(prefix):].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix)}


# --- admission without I/O -----------------------------------------------------------------


def test_join_rate_is_a_token_bucket() -> None:
    """An address gets join_rate joins at once, then one more per window/rate seconds."""
    adm = Admission(Limits(join_rate=3, join_window=3.0))
    assert [adm.take_join("a", 0.0) for _ in range(3)] == [None, None, None]
    assert adm.take_join("a", 0.0) is RATE_LIMITED
    assert adm.take_join("a", 0.5) is RATE_LIMITED  # half a token
    assert adm.take_join("a", 1.0) is None
    assert adm.take_join("b", 1.0) is None  # another address has its own bucket


def test_join_rate_off_never_refuses() -> None:
    """join_rate 0 turns the rate limit off."""
    adm = Admission(Limits(join_rate=0))
    assert all(adm.take_join("a", 0.0) is None for _ in range(1000))


def test_connection_caps_per_address_and_in_total() -> None:
    """Connections over the per-address cap get 429, over the total cap 503; closing frees."""
    adm = Admission(Limits(max_connections=3, max_connections_per_address=2))
    adm.opened("a", 0.0)
    adm.opened("a", 0.0)
    assert adm.check_connection("a") is None
    adm.opened("a", 0.0)
    assert adm.check_connection("a") is CONNECTIONS_PER_ADDRESS
    assert CONNECTIONS_PER_ADDRESS.http_status == 429
    adm.closed("a", 0.0)
    adm.opened("b", 0.0)
    adm.opened("b", 0.0)
    assert adm.check_connection("b") is CONNECTIONS_FULL
    assert CONNECTIONS_FULL.http_status == 503
    adm.closed("b", 0.0)
    assert adm.check_connection("b") is None


def test_waiting_caps_per_address_and_in_total() -> None:
    """Waiting slots are capped per address and in total; stopping to wait frees one."""
    adm = Admission(Limits(max_waiting=3, max_waiting_per_address=2))
    adm.start_waiting("a", 0.0)
    adm.start_waiting("a", 0.0)
    assert adm.check_wait("a") is WAITING_PER_ADDRESS
    assert adm.check_wait("b") is None
    adm.start_waiting("b", 0.0)
    assert adm.check_wait("c") is WAITING_FULL
    adm.stop_waiting("a", 0.0)
    assert adm.check_wait("a") is None and adm.check_wait("c") is None
    assert WAITING_FULL.close_code is CloseCode.RELAY_FULL


def test_pair_cap() -> None:
    """With max_pairs pairs running the next is refused; a pair that ends frees its slot."""
    adm = Admission(Limits(max_pairs=1))
    assert adm.check_pair() is None
    adm.start_pair()
    assert adm.check_pair() is PAIRS_FULL
    adm.end_pair()
    assert adm.check_pair() is None


def test_exempt_addresses_count_only_in_totals() -> None:
    """An exempt address has no key and no per-address cap, but fills the total cap."""
    adm = Admission(Limits(max_connections=2, max_connections_per_address=1,
                           exempt=parse_networks(["127.0.0.1", "10.0.0.0/8"])))
    assert adm.key("127.0.0.1") is None and adm.key("10.1.2.3") is None
    assert adm.key("192.0.2.1") == "192.0.2.1"
    for _ in range(2):
        adm.opened(None, 0.0)
        assert adm.check_connection(None) is None
    adm.opened(None, 0.0)
    assert adm.check_connection(None) is CONNECTIONS_FULL
    assert len(adm) == 0


def test_addresses_are_grouped_by_ipv6_64_and_unmapped() -> None:
    """IPv6 clients count by their /64; an IPv4-mapped address counts as the IPv4 one."""
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"


def test_idle_addresses_are_forgotten() -> None:
    """Ten thousand addresses that came and went leave nothing behind once their bucket refills."""
    adm = Admission(Limits(join_rate=5, join_window=10.0, max_connections_per_address=5))
    for i in range(10_000):
        key = f"198.51.{i // 256}.{i % 256}"
        adm.opened(key, 0.0)
        adm.take_join(key, 0.0)
        adm.closed(key, 0.0)
    assert len(adm) == 10_000  # their buckets are not full yet: still remembered
    adm.opened("192.0.2.1", 10.0)  # any later call forgets what has refilled
    assert len(adm) == 1
    assert adm.connections == 1


def test_idle_addresses_are_capped() -> None:
    """However fast new addresses come, at most max_idle_addresses idle ones are kept."""
    adm = Admission(Limits(join_rate=5, join_window=10.0, max_idle_addresses=100))
    for i in range(5000):
        key = f"203.0.{i // 256}.{i % 256}"
        adm.opened(key, 0.0)
        adm.take_join(key, 0.0)
        adm.closed(key, 0.0)
    assert len(adm) <= 101


def test_an_address_with_open_connections_is_kept() -> None:
    """Forgetting never drops an address that still has a connection or a waiting peer."""
    adm = Admission(Limits(join_rate=5, join_window=1.0, max_idle_addresses=0))
    adm.opened("a", 0.0)
    adm.start_waiting("b", 0.0)
    adm.opened("c", 100.0)
    adm.closed("c", 100.0)
    assert len(adm) == 2


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    """X-Forwarded-For names the client only when a trusted proxy sent it, read from the right."""
    trusted = parse_networks(["127.0.0.1", "10.0.0.0/8"])
    assert client_host("127.0.0.1", ["198.51.100.7"], trusted) == "198.51.100.7"
    assert client_host("127.0.0.1", ["1.2.3.4, 198.51.100.7"], trusted) == "198.51.100.7"
    assert client_host("127.0.0.1", ["198.51.100.7, 10.0.0.2"], trusted) == "198.51.100.7"
    assert client_host("127.0.0.1", [], trusted) == "127.0.0.1"
    # What a trusted proxy passes on but does not parse is counted, never exempt as the proxy.
    assert client_host("127.0.0.1", ["not-an-address"], trusted) == "not-an-address"
    assert client_host("127.0.0.1", ["203.0.113.5:4711"], trusted) == "203.0.113.5"
    assert client_host("127.0.0.1", ["[2001:db8::1]:4711"], trusted) == "2001:db8::1"
    assert client_host("192.0.2.9", ["198.51.100.7"], trusted) == "192.0.2.9"
    assert client_host("127.0.0.1", ["198.51.100.7"], ()) == "127.0.0.1"


# --- configuration and the CLI --------------------------------------------------------------


def test_config_defaults_are_on_and_pair_caps_off() -> None:
    """A default RelayConfig limits connections, waiting, pairs and join rate, not pair size."""
    cfg = RelayConfig()
    assert cfg.max_connections > 0 and cfg.max_connections_per_address == 64
    assert (cfg.max_waiting, cfg.max_waiting_per_address, cfg.max_pairs) == (10_000, 32, 10_000)
    assert (cfg.join_rate, cfg.join_window) == (30, 10.0)
    assert cfg.max_pair_bytes == 0 and cfg.max_pair_seconds == 0
    assert cfg.access_tokens == frozenset()


@pytest.mark.parametrize("bad", [
    {"max_pairs": -1}, {"join_window": 0}, {"max_pair_seconds": -1.0},
    {"access_tokens": frozenset({"has space"})}, {"exempt_addresses": ("not-an-ip",)},
])
def test_config_refuses_bad_limits(bad: dict[str, Any]) -> None:
    """Negative caps, an empty window, odd tokens and bad networks are refused at once."""
    with pytest.raises(ValueError):
        RelayConfig(**bad)


def test_cli_options_build_the_config(tmp_path: Path) -> None:
    """run-relay-server's limit options become RelayConfig fields; tokens come from the file."""
    tokens = tmp_path / "tokens"
    tokens.write_text("# team\nalpha-1\n\n  bravo-2  \n")
    args = build_parser().parse_args([
        "run-relay-server", "127.0.0.1", "0", "--no-tls", "--max-connections", "100",
        "--max-connections-per-address", "5", "--max-waiting", "7",
        "--max-waiting-per-address", "2", "--max-pairs", "3", "--join-rate", "4",
        "--join-window", "2.5", "--max-pair-bytes", "1000", "--max-pair-seconds", "60",
        "--access-token-file", str(tokens), "--trusted-proxies", "10.0.0.0/8",
        "--exempt-addresses", "",
    ])
    cfg = RelayConfig(**_relay_limits(args))
    assert (cfg.max_connections, cfg.max_connections_per_address) == (100, 5)
    assert (cfg.max_waiting, cfg.max_waiting_per_address, cfg.max_pairs) == (7, 2, 3)
    assert (cfg.join_rate, cfg.join_window) == (4, 2.5)
    assert (cfg.max_pair_bytes, cfg.max_pair_seconds) == (1000, 60.0)
    assert cfg.access_tokens == frozenset({"alpha-1", "bravo-2"})
    assert cfg.trusted_proxies == ("10.0.0.0/8",) and cfg.exempt_addresses == ()


def test_cli_refuses_an_empty_token_file_and_bad_limits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token file without tokens, or a negative cap, exits 2 with one line saying which."""
    empty = tmp_path / "tokens"
    empty.write_text("# nothing yet\n\n")
    base = ["run-relay-server", "127.0.0.1", "0", "--no-tls"]
    assert main([*base, "--access-token-file", str(empty)]) == 2
    assert "holds no token" in capsys.readouterr().err
    assert main([*base, "--max-pairs", "-1"]) == 2
    assert "max_pairs must not be negative" in capsys.readouterr().err
    assert main([*base, "--access-token-file", str(tmp_path / "missing")]) == 2
    assert "Cannot read the access token file" in capsys.readouterr().err


# --- hello version 2 and fresh codes on a real relay ----------------------------------------


async def test_version_2_sender_is_told_it_waits_then_ready() -> None:
    """A version-2 sender gets waiting as soon as it waits, then ready when the receiver joins."""
    async with asyncio.timeout(20), running_relay() as relay:
        room = new_hash()
        sender = await join(relay.url, room, "sender", version=2)
        assert json.loads(await sender.recv()) == WAITING
        receiver = await join(relay.url, room, "receiver", version=2)
        assert json.loads(await sender.recv()) == READY
        await sender.send(b"\x00data")
        assert await receiver.recv() == b"\x00data"
        await sender.close()
        await receiver.close()


async def test_version_2_receiver_that_waits_gets_waiting_only() -> None:
    """A waiting version-2 receiver gets waiting, and then the sender's messages, never ready."""
    async with asyncio.timeout(20), running_relay() as relay:
        room = new_hash()
        receiver = await join(relay.url, room, "receiver", version=2)
        assert json.loads(await receiver.recv()) == WAITING
        sender = await join(relay.url, room, "sender")
        assert json.loads(await sender.recv()) == READY
        await sender.send('{"type":"manifest"}')
        assert await receiver.recv() == '{"type":"manifest"}'
        await sender.close()
        await receiver.close()


async def test_version_1_hello_behaves_as_before() -> None:
    """A hello without version (p2p-copy 0.1.1) waits silently: its first message is ready."""
    async with asyncio.timeout(20), running_relay() as relay:
        room = new_hash()
        sender = await join(relay.url, room, "sender")
        await wait_until(lambda: relay.stats.waiting == 1)
        receiver = await join(relay.url, room, "receiver")
        assert json.loads(await sender.recv()) == READY
        await sender.close()
        await receiver.close()


async def test_fresh_code_never_meets_a_waiting_stranger() -> None:
    """A fresh hello where a stranger waits gets 4002 (CodeInUseError); the stranger stays."""
    async with asyncio.timeout(20), running_relay() as relay:
        room = new_hash()
        stranger = await join(relay.url, room, "receiver", version=2)
        assert json.loads(await stranger.recv()) == WAITING
        fresh = await join(relay.url, room, "sender", version=2, fresh=True)
        assert (await closed(fresh))[0] == CloseCode.CODE_IN_USE
        # The same through p2p-copy's client: a clear error, not a pairing.
        async with open_link(relay.url, room=room) as ws:
            link = RelayLink(ws, "sender")
            await link.send(hello(room, "sender", version=2, fresh=True))
            with pytest.raises(CodeInUseError):
                await link.recv(timeout=10)
        sender = await join(relay.url, room, "sender")
        assert json.loads(await sender.recv()) == READY
        await sender.close()
        await stranger.close()
        assert relay.stats.rejections["code_in_use"] == 2


# --- each limit on a real relay ---------------------------------------------------------------


async def test_join_rate_limit_closes_with_4006_and_others_go_on() -> None:
    """An address over its join rate gets 4006 (RelayLimitError); another address pairs."""
    async with asyncio.timeout(30), running_relay(exempt_addresses=(), join_rate=2,
                                                  join_window=60.0) as relay:
        waiting = [await join(relay.url, new_hash(), "sender") for _ in range(2)]
        error = await client_error(relay.url)
        assert isinstance(error, RelayLimitError)
        assert "too many connections from this address" in str(error)
        raw = await join(relay.url, new_hash(), "sender")
        code, reason = await closed(raw)
        assert code == CloseCode.RATE_LIMITED and "wait" in reason
        await transfer(relay.url)
        for ws in waiting:
            await ws.close()
        assert relay.stats.rejections["rate_limited"] == 2
        assert rejections(relay)["rate_limited"] == 2
        assert relay.stats.outcomes["limited"] == 2


async def test_connection_cap_per_address_covers_silent_connections() -> None:
    """Connections that never send a byte fill their address's cap: the next gets HTTP 429."""
    async with asyncio.timeout(30), running_relay(exempt_addresses=(),
                                                  max_connections_per_address=3) as relay:
        async with idle_sockets(relay, 3):
            await wait_until(lambda: relay.admission.connections == 3)
            assert await http_status(relay.url) == 429
            error = await client_error(relay.url)
            assert isinstance(error, RelayLimitError)
            assert "busy with connections from this address" in str(error)
            await transfer(relay.url)  # 127.0.0.2 has its own budget
        await wait_until(lambda: relay.admission.connections == 0)
        assert await http_status(relay.url) == 101
        assert relay.stats.rejections["connections_per_address"] == 2


async def test_total_connection_cap_answers_503() -> None:
    """With max_connections open, a handshake gets HTTP 503; pairs already in keep working."""
    async with asyncio.timeout(30), running_relay(max_connections=6) as relay:
        async with idle_sockets(relay, 4, source="127.0.0.3"):
            await wait_until(lambda: relay.admission.connections == 4)
            await transfer(relay.url)  # connections 5 and 6
            room = new_hash()
            sender = await join(relay.url, room, "sender", source=LEGIT)
            receiver = await join(relay.url, room, "receiver", source=LEGIT)
            assert json.loads(await sender.recv()) == READY
            assert await http_status(relay.url) == 503
            error = await client_error(relay.url)
            assert isinstance(error, RelayUnreachableError)
            await sender.send(b"still here")
            assert await receiver.recv() == b"still here"
            await sender.close()
            await receiver.close()
        assert relay.stats.rejections["connections_full"] == 2


async def test_waiting_cap_per_address_closes_with_4007() -> None:
    """An address with max_waiting_per_address peers waiting gets 4007 for one more."""
    async with asyncio.timeout(30), running_relay(exempt_addresses=(),
                                                  max_waiting_per_address=2) as relay:
        rooms = [new_hash(), new_hash()]
        waiting = [await join(relay.url, room, "sender") for room in rooms]
        await wait_until(lambda: relay.stats.waiting == 2)
        error = await client_error(relay.url)
        assert isinstance(error, RelayLimitError) and "full" in str(error)
        # Pairing with a waiting peer takes no waiting slot, so it is never refused.
        receiver = await join(relay.url, rooms[0], "receiver")
        assert json.loads(await waiting[0].recv()) == READY
        await transfer(relay.url)
        for ws in [*waiting, receiver]:
            await ws.close()
        assert relay.stats.rejections["waiting_per_address"] == 1


async def test_total_waiting_cap_closes_with_4007() -> None:
    """With max_waiting peers waiting, a newcomer from any address that would wait gets 4007."""
    async with asyncio.timeout(30), running_relay(max_waiting=2) as relay:
        room = new_hash()
        first = await join(relay.url, room, "sender", source="127.0.0.3")
        second = await join(relay.url, new_hash(), "sender", source="127.0.0.4")
        await wait_until(lambda: relay.stats.waiting == 2)
        late = await join(relay.url, new_hash(), "receiver", source="127.0.0.5")
        code, reason = await closed(late)
        assert code == CloseCode.RELAY_FULL and "waiting" in reason
        assert isinstance(await client_error(relay.url), RelayLimitError)
        partner = await join(relay.url, room, "receiver", source=LEGIT)
        assert json.loads(await first.recv()) == READY
        for ws in (first, second, partner):
            await ws.close()
        await wait_until(lambda: relay.stats.waiting == 0)
        await transfer(relay.url)
        assert relay.stats.rejections["waiting_full"] == 2


async def test_pair_cap_closes_the_extra_pairs_newcomer_with_4007() -> None:
    """With max_pairs relaying, the peer that would pair is refused; the waiting one stays."""
    async with asyncio.timeout(30), running_relay(max_pairs=1) as relay:
        busy_room = new_hash()
        busy_sender = await join(relay.url, busy_room, "sender", source=LEGIT)
        busy_receiver = await join(relay.url, busy_room, "receiver", source=LEGIT)
        assert json.loads(await busy_sender.recv()) == READY
        room = new_hash()
        waiting = await join(relay.url, room, "receiver")
        await wait_until(lambda: relay.stats.waiting == 1)
        async with open_link(relay.url, room=room) as ws:
            link = RelayLink(ws, "sender")
            await link.send(hello(room, "sender"))
            with pytest.raises(RelayLimitError, match="full"):
                await link.recv(timeout=10)
        await busy_sender.send(b"the running pair is untouched")
        assert await busy_receiver.recv() == b"the running pair is untouched"
        await busy_sender.close()
        await busy_receiver.close()
        await wait_until(lambda: relay.admission.pairs == 0)
        sender = await join(relay.url, room, "sender")
        assert json.loads(await sender.recv()) == READY  # the waiting peer kept its room
        await sender.close()
        await waiting.close()
        assert relay.stats.rejections["pairs_full"] == 1


async def test_pair_byte_cap_closes_both_peers_with_4008(caplog: pytest.LogCaptureFixture) -> None:
    """A pair over max_pair_bytes: both get 4008 naming the byte limit; another pair is fine."""
    caplog.set_level(logging.DEBUG, logger="p2p_copy.relay")
    async with asyncio.timeout(30), running_relay(max_pair_bytes=MiB) as relay:
        room = new_hash()
        sender = await join(relay.url, room, "sender")
        receiver = await join(relay.url, room, "receiver")
        assert json.loads(await sender.recv()) == READY
        other = asyncio.ensure_future(transfer(relay.url, 512 * KiB))
        chunk = b"\x00" + bytes(256 * KiB)
        got = 0
        with contextlib.suppress(ConnectionClosed):
            for _ in range(5):
                await sender.send(chunk)
        while True:
            try:
                got += len(await receiver.recv())
            except ConnectionClosed as exc:
                assert exc.rcvd is not None
                assert exc.rcvd.code == CloseCode.PAIR_LIMIT
                assert "1,048,576 bytes" in exc.rcvd.reason
                break
        assert got <= MiB
        code, reason = await closed(sender)
        assert code == CloseCode.PAIR_LIMIT and "bytes" in reason
        await other
        await wait_until(lambda: relay.stats.pairs["limited"] == relay.stats.pairs["happy"] == 1)
        assert relay.stats.rejections["pair_bytes"] == 1
        await wait_until(lambda: relay.admission.pairs == 0)
    # The relay's own log (websockets' frame log below it is kept at WARNING in production).
    ours = [r.getMessage() for r in caplog.records if r.name == "p2p_copy.relay"]
    assert any("pair_limit limit=pair_bytes" in line for line in ours)
    assert not any(room in line for line in ours)


async def test_pair_byte_cap_through_the_client_is_a_relay_limit_error() -> None:
    """p2p-copy's client reports 4008 as RelayLimitError that says which limit."""
    async with asyncio.timeout(30), running_relay(max_pair_bytes=1000) as relay:
        room = new_hash()
        receiver = await join(relay.url, room, "receiver")
        async with open_link(relay.url, room=room) as ws:
            link = RelayLink(ws, "sender")
            await link.send(hello(room, "sender"))
            assert json.loads(await link.recv(timeout=10)) == READY
            await link.send(bytes(600))
            await link.send(bytes(600))
            with pytest.raises(RelayLimitError, match="1,000 bytes"):
                await link.recv(timeout=10)
        assert (await closed_after_data(receiver))[0] == CloseCode.PAIR_LIMIT


async def closed_after_data(ws: ClientConnection) -> tuple[int | None, str]:
    """Read whatever is forwarded until the relay closes ``ws``; its close code and reason."""
    while True:
        try:
            await ws.recv()
        except ConnectionClosed as exc:
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")


@pytest.mark.slow
async def test_pair_duration_cap_closes_both_peers_with_4008() -> None:
    """A pair older than max_pair_seconds: both get 4008 naming the time limit."""
    async with asyncio.timeout(30), running_relay(max_pair_seconds=1.0) as relay:
        room = new_hash()
        sender = await join(relay.url, room, "sender")
        receiver = await join(relay.url, room, "receiver")
        assert json.loads(await sender.recv()) == READY
        await transfer(relay.url, 64 * KiB)  # a short pair meanwhile is not cut
        code, reason = await closed(sender)
        assert code == CloseCode.PAIR_LIMIT and "1 s" in reason
        assert (await closed(receiver))[0] == CloseCode.PAIR_LIMIT
        await wait_until(lambda: relay.stats.pairs["limited"] == 1)
        assert relay.stats.rejections["pair_duration"] == 1
        assert rejections(relay)["pair_duration"] == 1


async def test_access_token_guards_rooms_but_not_health() -> None:
    """A private relay answers 401 without the right token; health and metrics stay open."""
    async with asyncio.timeout(30), running_relay(access_tokens=frozenset({"t0k-A", "t0k-B"})
                                                  ) as relay:
        assert await http_status(relay.url) == 401
        wrong = await client_error(relay.url, token="t0k-C")
        assert isinstance(wrong, AccessDeniedError)
        assert "did not accept our access token" in str(wrong)
        missing = await client_error(relay.url)
        assert isinstance(missing, AccessDeniedError) and "without an access token" in str(missing)
        await transfer(relay.url, headers={"Authorization": "Bearer t0k-B"})
        for path in ("/healthz", "/readyz", "/metrics"):
            reader, writer = await asyncio.open_connection(relay.host, relay.port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert (await reader.readline()).startswith(b"HTTP/1.1 200"), path
            writer.close()
        assert relay.stats.rejections["access_denied"] == 3


def bearer(token: str) -> str:
    """The subprotocol that presents ``token`` (§5.11): base64url, no padding."""
    return BEARER_SUBPROTOCOL + base64.urlsafe_b64encode(token.encode()).rstrip(b"=").decode()


async def test_a_token_offered_as_a_subprotocol_counts_as_the_header(
        caplog: pytest.LogCaptureFixture) -> None:
    """A browser's way to present a token (§5.11): offered as p2p-copy.bearer.<base64url>
    beside p2p-copy. The same check as the header: the right token pairs, the relay
    selecting p2p-copy (never the token); a wrong, undecodable or missing one gets the same
    401. Neither the token nor its encoding reaches a log line (at DEBUG, websockets' too)
    or the metrics."""
    caplog.set_level(logging.DEBUG)
    token = "?>?~>t0k"  # its base64url has '_' and '-' and drops one '='
    assert bearer(token).endswith("Pz4_fj50MGs")
    async with asyncio.timeout(30), running_relay(access_tokens=frozenset({"t0k-A", token})
                                                  ) as relay:
        offered = ["p2p-copy", bearer(token)]
        await transfer(relay.url, subprotocols=offered)
        ws = await ws_connect(relay.url, new_hash(), subprotocols=offered)
        assert ws.subprotocol == "p2p-copy"
        assert ws.response is not None
        assert ws.response.headers.get_all("Sec-WebSocket-Protocol") == ["p2p-copy"]
        await ws.close()
        # Only the token's subprotocol: let in, no subprotocol selected.
        ws = await ws_connect(relay.url, new_hash(), subprotocols=[bearer("t0k-A")])
        assert ws.subprotocol is None
        await ws.close()
        for wrong in ([bearer("t0k-C")], ["p2p-copy"], [BEARER_SUBPROTOCOL + "dDBrLUE"[:5]],
                      [BEARER_SUBPROTOCOL + "dDBrLUE.x"], ["p2p-copy", "t0k-A"]):
            with pytest.raises(InvalidStatus) as refused:
                await ws_connect(relay.url, new_hash(), subprotocols=["p2p-copy", *wrong])
            response = refused.value.response
            assert response.status_code == 401, wrong
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="p2p-copy"'
            # So that a page on another origin can tell a private relay from a dead one.
            assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert relay.stats.rejections["access_denied"] == 5
        # A header that is no list of tokens: 400, without quoting it back.
        status, _, body = await http_request(
            relay.port, f"/{new_hash()}",
            extra=f"Sec-WebSocket-Protocol: p2p-copy, {token} x\r\n")
        assert status == 400 and token.encode() not in body
        metrics = relay.metrics.exposition()[0].decode() if relay.metrics else ""
    # The relay's records (the test's own client, websockets.client, logs what it sends).
    ours = [r for r in caplog.records if r.name.startswith("p2p_copy")]
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in ours)
    assert "p2p_copy.relay" in {r.name for r in ours}
    for secret in (token, bearer(token), bearer(token).removeprefix(BEARER_SUBPROTOCOL)):
        assert secret not in logged and secret not in metrics


async def test_a_public_relay_selects_p2p_copy_when_offered() -> None:
    """Without tokens the bearer subprotocol is ignored; p2p-copy is selected when offered
    (so a browser that offers it works with any relay of ours) and a client offering none,
    or others, connects as before."""
    async with asyncio.timeout(30), running_relay() as relay:
        for offered, selected in ((["p2p-copy", bearer("whatever")], "p2p-copy"),
                                  (["p2p-copy"], "p2p-copy"), (None, None), (["chat"], None)):
            ws = await ws_connect(relay.url, new_hash(), subprotocols=offered)
            assert ws.subprotocol == selected, offered
            await ws.close()
        await transfer(relay.url, subprotocols=["p2p-copy", bearer("whatever")])


async def test_forwarded_for_from_a_trusted_proxy_names_the_client() -> None:
    """Behind a proxy on loopback, limits apply per X-Forwarded-For client, not to the proxy."""
    async with asyncio.timeout(30), running_relay(join_rate=1, join_window=60.0) as relay:
        def via_proxy(client: str) -> dict[str, Any]:
            return {"additional_headers": {"X-Forwarded-For": client}}

        first = await ws_connect(relay.url, new_hash(), **via_proxy("198.51.100.7"))
        second = await ws_connect(relay.url, new_hash(), **via_proxy("198.51.100.7"))
        assert (await closed(second))[0] == CloseCode.RATE_LIMITED
        room = new_hash()
        other = await ws_connect(relay.url, room, **via_proxy("203.0.113.9"))
        await other.send(hello(room, "sender"))
        await wait_until(lambda: relay.stats.waiting == 1)
        await first.close()
        await other.close()


async def test_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    """A client cannot pick its own address: without trust the header changes nothing."""
    async with asyncio.timeout(30), running_relay(trusted_proxies=(), exempt_addresses=(),
                                                  join_rate=1, join_window=60.0) as relay:
        first = await ws_connect(relay.url, new_hash(), additional_headers={
            "X-Forwarded-For": "198.51.100.1"})
        second = await ws_connect(relay.url, new_hash(), additional_headers={
            "X-Forwarded-For": "198.51.100.2"})
        assert (await closed(second))[0] == CloseCode.RATE_LIMITED
        await first.close()


async def test_per_address_bookkeeping_forgets_closed_addresses() -> None:
    """After clients from many addresses come and go, the relay forgets them (rate off)."""
    async with asyncio.timeout(30), running_relay(exempt_addresses=(), join_rate=0) as relay:
        for i in range(2, 22):
            assert await http_status(relay.url, source=f"127.0.1.{i}") == 101
        await wait_until(lambda: relay.admission.connections == 0)
        assert len(relay.admission) == 0


def test_cli_defaults_are_relay_config_defaults() -> None:
    """run-relay-server without options builds RelayConfig() itself, and its help shows
    every option's default: the CLI restates no default of its own."""
    from p2p_copy.cli.commands import _RELAY_LIMITS, _RELAY_OPTIONS

    args = build_parser().parse_args(["run-relay-server", "127.0.0.1", "0", "--no-tls"])
    assert RelayConfig(**_relay_limits(args)) == RelayConfig()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args(["run-relay-server", "--help"])
    # One entry per option: its name, then its help, rewrapped onto one line.
    entries = {entry.split()[0]: " ".join(entry.split())
               for entry in re.split(r"\n  (?=--)", out.getvalue())[1:]}
    defaults = RelayConfig()
    for name, _, _ in (*_RELAY_OPTIONS, *_RELAY_LIMITS):
        value = getattr(defaults, name)
        shown = (f"{value:g}" if isinstance(value, float)
                 else ",".join(value) if isinstance(value, tuple) else str(value))
        entry = entries[f"--{name.replace('_', '-')}"]
        assert re.search(rf"(default|here) {re.escape(shown)}\b", entry), (name, entry)
