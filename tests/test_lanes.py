"""Lanes: one transfer over several relay connections (issue 22, point 3; protocol §6.12).

The machines and the rule without sockets first; then real transfers through the real
relay on loopback, and through a relay written for the test that pairs every room like
the real one but can cut, alter or impersonate a lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import p2p_copy
from p2p_copy.errors import LocalProtocolError, RemoteProtocolError, TamperingError
from p2p_copy.peer.lanes import LANES_NOW_ENV, SenderLanes
from p2p_copy.protocol.lanes import FIRST_LANES, MIN_LEFT, LaneGovernor, first_lanes
from p2p_copy.protocol.messages import (
    DATA_RAW,
    DATA_RAW_AT,
    Accept,
    FileEntry,
    Ready,
    StreamEntry,
    encode,
)
from p2p_copy.protocol.secure import KeyExchange
from p2p_copy.protocol.transfer import (
    LANE_WINDOW,
    FileCompleted,
    FileData,
    LaneOpened,
    Receiver,
    ReceiverEvent,
    Sender,
    TransferFinished,
)
from p2p_copy.relay import Relay

from .conftest import cli_env, run_cli
from .protocol_pair import CODE_HASH, entries_for, sha256_hex

MiB = 2**20


# --- the machines ----------------------------------------------------------------------


def _agreed(contents: dict[str, bytes], sender_lanes: int = 8,
            receiver_lanes: int = 8) -> tuple[Sender, Receiver, str]:
    """A sender and a receiver past manifest and accept; the accept's text."""
    sender = Sender(CODE_HASH, entries_for(contents), lanes=sender_lanes)
    receiver = Receiver(CODE_HASH, lanes=receiver_lanes)
    sender.hello()
    receiver.hello()
    sender.receive(encode(Ready()))
    for part in sender.manifest():
        receiver.receive(part)
    accept = receiver.accept()
    sender.receive(accept)
    return sender, receiver, accept


def _frames(sender: Sender, stream: bytes, chunk: int) -> list[bytes]:
    frames = []
    for at in range(0, len(stream), chunk):
        piece = stream[at:at + chunk]
        buffer = bytearray(sender.data_start + len(piece))
        buffer[sender.data_start:] = piece
        frames.append(bytes(sender.frame_data(buffer, len(piece))))
    return frames


def _placed(events: list[ReceiverEvent]) -> bytes:
    return b"".join(bytes(e.data) for e in events if isinstance(e, FileData))


def test_data_on_lanes_is_put_back_in_order_and_duplicates_are_dropped() -> None:
    """Messages that arrive shuffled and twice (sent again after a lane dropped) give the
    stream once, in order; checksums that overtook their bytes complete the files after
    them, and acks follow what was placed."""
    contents = {"a.bin": os.urandom(300_000), "b.bin": b"", "c.bin": os.urandom(123_457)}
    sender, receiver, accept = _agreed(contents)
    assert json.loads(accept)["lanes"] == 8 and sender.lanes == receiver.lanes == 8
    stream = contents["a.bin"] + contents["c.bin"]
    frames = _frames(sender, stream, 40_000)
    assert all(f[0] == DATA_RAW_AT for f in frames)
    events: list[ReceiverEvent] = []
    # Every checksum first, as lane 0 may deliver them before the data on other lanes.
    for message in sender.checksums([sha256_hex(contents[n]) for n in contents]):
        events += receiver.receive(message)
    assert not events
    shuffled = frames + frames[2:5]
    random.Random(7).shuffle(shuffled)
    for frame in shuffled:
        events += receiver.receive(frame)
        if receiver.ack_due:
            sender.receive(receiver.ack())
    assert _placed(events) == stream
    done = [e for e in events if isinstance(e, FileCompleted)]
    assert [e.file for e in done] == [0, 1, 2]
    last_data = max(i for i, e in enumerate(events) if isinstance(e, FileData))
    assert events.index(done[-1]) > last_data
    assert sender.all_acked
    assert receiver.receive(sender.eof()) == [TransferFinished()]


def test_eof_waits_until_every_byte_was_acknowledged() -> None:
    """With lanes, eof cannot overtake data still on another lane."""
    contents = {"a.bin": os.urandom(5000)}
    sender, receiver, _ = _agreed(contents)
    _frames(sender, contents["a.bin"], 5000)
    sender.checksums([sha256_hex(contents["a.bin"])])
    with pytest.raises(LocalProtocolError, match="acknowledged"):
        sender.eof()


def test_data_beyond_the_window_is_a_violation() -> None:
    """What a receiver holds out of order is bounded by its window."""
    _, receiver, _ = _agreed({"a.bin": b"x" * (LANE_WINDOW + 10)})
    far = bytes([DATA_RAW_AT]) + LANE_WINDOW.to_bytes(8, "big") + b"x"
    with pytest.raises(RemoteProtocolError, match="window"):
        receiver.receive(far)


def test_plain_data_is_a_violation_once_lanes_are_on() -> None:
    _, receiver, _ = _agreed({"a.bin": b"abc"})
    with pytest.raises(RemoteProtocolError, match="offset"):
        receiver.receive(bytes([DATA_RAW]) + b"abc")


def test_a_lane_is_opened_once_and_only_below_the_agreed_count() -> None:
    sender, receiver, _ = _agreed({"a.bin": b"abc"}, sender_lanes=8, receiver_lanes=3)
    assert sender.lanes == receiver.lanes == 3
    assert receiver.receive(sender.lane(2)) == [LaneOpened(2)]
    with pytest.raises(LocalProtocolError):
        sender.lane(3)
    with pytest.raises(RemoteProtocolError, match="lane 2"):
        receiver.receive('{"type":"lane","lane":2}')


def test_peers_without_lanes_speak_todays_protocol() -> None:
    """A receiver that does not take lanes (an older one ignores the field) leaves the
    sender on one lane with plain data messages; a sender that offers none gets today's
    accept, without window or lanes."""
    contents = {"a.bin": b"hello"}
    sender, receiver, accept = _agreed(contents, receiver_lanes=1)
    assert json.loads(accept) == {"type": "accept", "compression": ["zstd"],
                                  "digest": receiver.digest}
    assert sender.lanes == 1 and _frames(sender, b"hello", 5)[0][0] == DATA_RAW
    old_accept = encode(Accept(compression=("zstd",)))  # what 0.6.0 and older send
    sender = Sender(CODE_HASH, entries_for(contents))
    sender.hello()
    sender.receive(encode(Ready()))
    list(sender.manifest())
    sender.receive(old_accept)
    assert sender.lanes == 1
    _, receiver, accept = _agreed(contents, sender_lanes=1)
    assert "lanes" not in json.loads(accept) and "window" not in json.loads(accept)


def test_a_stream_never_travels_on_lanes() -> None:
    """Its size is fixed by its checksum, which must not overtake its bytes."""
    sender = Sender(CODE_HASH, [FileEntry("a", 1), StreamEntry("s")], lanes=8)
    sender.hello()
    sender.receive(encode(Ready()))
    assert all('"lanes"' not in part for part in sender.manifest())


def test_lane_keys_are_shared_distinct_and_not_lane_zeros() -> None:
    """Both sides derive the same room and keys per lane from the one handshake; each lane
    has its own room and nonce space, so lane 0's messages do not open on lane 1."""
    sender, receiver = KeyExchange("7-purple-sausages", "sender"), KeyExchange(
        "7-purple-sausages", "receiver")
    sender.receive(receiver_pake := _pake(receiver))
    receiver.receive(_pake(sender))
    del receiver_pake
    sender.check(_confirm(receiver))
    receiver.check(_confirm(sender))
    s_lanes, r_lanes = sender.lanes(), receiver.lanes()
    assert s_lanes.room(1) == r_lanes.room(1) != s_lanes.room(2)
    assert len(s_lanes.room(1)) == 64
    sealed = s_lanes.channel(1).seal(b"\x02data")
    assert r_lanes.channel(1).open(sealed) == b"\x02data"
    with pytest.raises(TamperingError):
        r_lanes.channel(2).open(sealed)
    with pytest.raises(TamperingError):
        receiver.channel().open(sealed)


def _pake(exchange: KeyExchange) -> object:
    from p2p_copy.protocol.messages import parse_message
    return parse_message(exchange.message())


def _confirm(exchange: KeyExchange) -> object:
    from p2p_copy.protocol.messages import parse_message
    return parse_message(exchange.confirmation())


# --- the rule --------------------------------------------------------------------------


def test_the_rule_stays_at_one_lane_on_a_short_round_trip() -> None:
    rule = LaneGovernor(8)
    assert not rule.decide(0.0, 0, 10 * MIN_LEFT, 1)  # no round trip measured yet
    rule.rtt = 0.0005
    assert not rule.decide(0.1, 0, 10 * MIN_LEFT, 1)
    assert not rule.decide(2.0, 500 * MiB, 10 * MIN_LEFT, 1)
    assert rule.settled


def test_the_rule_doubles_the_lanes_while_each_step_raises_the_rate() -> None:
    """A round trip of a few ms: lane 2 at once, then twice the lanes per measurement while
    the rate rose by 15 % or more; it stops at the first step that did not, and near the
    end."""
    rule = LaneGovernor(8)
    rule.rtt = 0.01
    assert rule.decide(0.0, 0, 10 * MIN_LEFT, 1) == 1
    rule.changed(1.0, 40 * MiB)  # lane 2 carries: lane 0 alone made 40 MiB/s
    assert rule.decide(1.2, 50 * MiB, 10 * MIN_LEFT, 2) == 0  # measuring
    assert rule.decide(2.0, 120 * MiB, 10 * MIN_LEFT, 2) == 2  # 80 MiB/s: +100 %
    rule.changed(2.0, 120 * MiB)
    assert rule.decide(3.0, 205 * MiB, 10 * MIN_LEFT, 4) == 0  # 85 MiB/s: +6 %
    assert rule.settled
    near_end = LaneGovernor(8)
    near_end.rtt = 0.1
    assert near_end.decide(5.0, 40 * MiB, MIN_LEFT - 1, 1) == 0


def test_the_rule_starts_with_four_lanes_on_a_long_round_trip() -> None:
    """From 20 ms one window is a small share of any link: four lanes at once, then eight
    if they raised the rate of lane 0 alone; with nothing acknowledged before the lanes
    carried, the first step counts as paid."""
    rule = LaneGovernor(8)
    rule.rtt = 0.02
    assert rule.decide(0.0, 0, 10 * MIN_LEFT, 1) == 3
    rule.changed(0.5, 0)  # lane 1 carries before any ack: no reference
    rule.changed(0.6, 2 * MiB)
    rule.changed(0.7, 4 * MiB)
    assert rule.decide(0.8, 6 * MiB, 10 * MIN_LEFT, 4) == 0  # measuring
    assert rule.decide(1.0, 40 * MiB, 10 * MIN_LEFT, 4) == 4
    assert LaneGovernor(2).decide(0.0, 0, 10 * MIN_LEFT, 1) == 0  # no rtt yet


def test_the_rule_opens_every_lane_at_once_from_50_ms() -> None:
    """From 50 ms one window carries at most ~80 MB/s: the first step opens all eight,
    fewer if fewer were agreed, and there is no step after it."""
    assert [first_lanes(rtt) for rtt in (0.001, 0.005, 0.019, 0.02, 0.049, 0.05, 0.3)] == \
        [1, 2, 2, 4, 4, 8, 8]
    assert FIRST_LANES == tuple(sorted(FIRST_LANES, reverse=True))  # longest first
    rule = LaneGovernor(8)
    rule.rtt = 0.1
    assert rule.decide(0.0, 0, 10 * MIN_LEFT, 1) == 7
    rule.changed(1.0, 10 * MiB, sent=30 * MiB)
    assert rule.decide(9.0, 900 * MiB, 10 * MIN_LEFT, 8) == 0
    capped = LaneGovernor(3)
    capped.rtt = 0.1
    assert capped.decide(0.0, 0, 10 * MIN_LEFT, 1) == 2


def test_the_rule_measures_only_bytes_sent_after_the_lanes_changed() -> None:
    """The acks of what was on its way when lanes opened tell of the lanes before: the
    measurement starts once the bytes sent by then are acknowledged."""
    rule = LaneGovernor(8)
    rule.rtt = 0.03
    assert rule.decide(0.0, 0, 10 * MIN_LEFT, 1) == 3
    rule.changed(1.0, 40 * MiB, sent=60 * MiB)  # lane 0 alone: 40 MiB/s
    # 38 MiB/s from 1.0 to 1.5: counted from the change, this would stop the growth.
    assert rule.decide(1.5, 59 * MiB, 10 * MIN_LEFT, 4) == 0
    assert not rule.settled
    assert rule.decide(1.6, 60 * MiB, 10 * MIN_LEFT, 4) == 0  # measuring from here
    assert rule.decide(1.8, 80 * MiB, 10 * MIN_LEFT, 4) == 0  # 0.2 s: not yet
    assert rule.decide(2.1, 125 * MiB, 10 * MIN_LEFT, 4) == 4  # 130 MiB/s
    assert not rule.settled


def test_the_rule_never_passes_the_cap_and_forced_lanes_open_at_once() -> None:
    assert not LaneGovernor(1, force=4).decide(0.0, 0, 0, 1)
    forced = LaneGovernor(8, force=4)
    assert forced.decide(0.0, 0, 0, 1) and forced.decide(0.0, 0, 0, 3)
    assert not forced.decide(0.0, 0, 0, 4)
    forced.rtt = 0.1  # a long link: still no more than forced
    assert not forced.decide(9.0, 900 * MiB, 10 * MIN_LEFT, 4)


def test_the_cli_takes_lanes_from_1_to_8() -> None:
    """--lanes 0 or 9 is refused before anything connects (exit 2)."""
    for bad in ("0", "9", "two"):
        result = run_cli("send", "--lanes", bad, "ws://127.0.0.1:9", "7-a-b", "x",
                         env=cli_env())
        assert result.returncode == 2 and "--lanes" in result.stderr, result.stderr


# --- real transfers --------------------------------------------------------------------


def _tree(root: Path, big: int = 64 * MiB) -> Path:
    """A folder of many small files and one large one."""
    src = root / "src"
    (src / "docs" / "deep").mkdir(parents=True)
    for i in range(40):
        (src / "docs" / f"note-{i}.txt").write_bytes(os.urandom(i * 997))
    (src / "docs" / "deep" / "empty").write_bytes(b"")
    (src / "big.bin").write_bytes(os.urandom(big))
    return src


def _same_tree(src: Path, dest: Path) -> None:
    files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
    got = sorted(p.relative_to(dest) for p in dest.rglob("*") if p.is_file())
    assert got == files
    for rel in files:
        assert (dest / rel).read_bytes() == (src / rel).read_bytes(), rel


async def _both(url: str, code: str, src: Path, dest: Path,
                **keywords: object) -> tuple[object, object]:
    receiving = asyncio.ensure_future(p2p_copy.receive(
        url, code, dest, progress="none", wait_timeout=20, idle_timeout=30,
        **keywords))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    sending = asyncio.ensure_future(p2p_copy.send(
        url, code, [src], progress="none", wait_timeout=20, idle_timeout=30,
        **keywords))  # type: ignore[arg-type]
    async with asyncio.timeout(90):
        sent, received = await asyncio.gather(sending, receiving, return_exceptions=True)
    return sent, received


@pytest.mark.slow
async def test_forced_lanes_deliver_identical_bytes(
        relay: Relay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder and a 64 MiB file over four lanes: the relay paired four connections per
    side, and every byte arrived as sent."""
    monkeypatch.setenv(LANES_NOW_ENV, "4")
    src = _tree(tmp_path)
    sent, received = await _both(relay.url, "7-four-lanes-please", src, tmp_path / "dst")
    assert isinstance(sent, p2p_copy.TransferResult), sent
    assert isinstance(received, p2p_copy.TransferResult), received
    _same_tree(src, tmp_path / "dst" / "src")
    # Lane 0 and the lanes that paired before the end (all three, unless the machine is
    # so slow that the data was through first).
    assert 2 <= sum(relay.stats.pairs.values()) <= 4


@pytest.mark.slow
async def test_a_receiver_with_one_lane_gets_everything_on_one(
        relay: Relay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--lanes 1 on the receiver (as a receiver before lanes): one pair, same bytes."""
    monkeypatch.setenv(LANES_NOW_ENV, "4")
    src = _tree(tmp_path, big=4 * MiB)
    dest = tmp_path / "dst"
    receiving = asyncio.ensure_future(p2p_copy.receive(
        relay.url, "7-one-lane-only", dest, progress="none", wait_timeout=20, lanes=1))
    await asyncio.sleep(0.05)
    async with asyncio.timeout(60):
        await asyncio.gather(p2p_copy.send(relay.url, "7-one-lane-only", [src],
                                           progress="none", wait_timeout=20), receiving)
    _same_tree(src, dest / "src")
    assert sum(relay.stats.pairs.values()) == 1


@pytest.mark.slow
async def test_adaptive_lanes_stay_at_one_on_loopback(
        relay: Relay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Enough data for lanes, no forcing: the sender pings the relay before its manifest
    (ping_early) and takes that round trip, under MIN_RTT on loopback (~0.1 ms against
    5 ms), so it opens no lane and one pair carries everything."""
    made: list[SenderLanes] = []
    init = SenderLanes.__init__

    def keep(self: SenderLanes, *args: object, **keywords: object) -> None:
        init(self, *args, **keywords)  # type: ignore[arg-type]
        made.append(self)

    monkeypatch.setattr(SenderLanes, "__init__", keep)
    src = _tree(tmp_path, big=MIN_LEFT + 4 * MiB)
    sent, received = await _both(relay.url, "7-loopback-one-lane", src, tmp_path / "dst")
    assert isinstance(sent, p2p_copy.TransferResult), sent
    assert isinstance(received, p2p_copy.TransferResult), received
    _same_tree(src, tmp_path / "dst" / "src")
    [lanes] = made
    assert lanes.pong is not None and lanes.pong.done()  # type: ignore[attr-defined]
    assert lanes.governor.rtt is not None and lanes.governor.settled
    assert lanes.used == 1 and sum(relay.stats.pairs.values()) == 1


# --- a relay that pairs every room and lets a test interfere --------------------------

#: (room index: 0 for the transfer's first room, 1.. for lanes in order of arrival,
#:  pair number in that room, direction "s2r"/"r2s", message index, message) -> what to
#: deliver; CLOSE cuts the pair.
Hook = Callable[[int, int, str, int, str | bytes], list[object]]
CLOSE = object()


class LaneRelay:
    """Pairs a sender and a receiver per room, as the real relay does (hello, waiting,
    fresh, ready), and forwards through ``hook``. ``impostor``: a lane room's sender is
    answered by the relay itself, as if a stranger had joined it."""

    def __init__(self, hook: Hook | None = None, impostor: bool = False) -> None:
        self.hook: Hook = hook or (lambda *_a: [_a[-1]])
        self.impostor = impostor
        self.rooms: dict[str, int] = {}
        self.waiting: dict[str, tuple[str, ServerConnection, asyncio.Future[ServerConnection]]] = {}
        self.pairs: dict[str, int] = {}
        self.url = ""

    async def handle(self, ws: ServerConnection) -> None:
        hello = json.loads(await ws.recv())
        room, role = hello["code_hash_hex"], hello["role"]
        index = self.rooms.setdefault(room, len(self.rooms))
        if self.impostor and index > 0 and role == "sender":
            with contextlib.suppress(ConnectionClosed):
                await ws.send('{"type":"ready"}')
                await ws.send(os.urandom(40))  # not the lane's proof
                async for _ in ws:
                    pass
            return
        waiting = self.waiting.get(room)
        if waiting is not None and hello.get("fresh"):
            await ws.close(4002, "in use")
            return
        if waiting is None:
            partner: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()
            self.waiting[room] = (role, ws, partner)
            if hello.get("version", 1) >= 2:
                await ws.send('{"type":"waiting"}')
            gone = asyncio.ensure_future(ws.wait_closed())
            await asyncio.wait({partner, gone}, return_when=asyncio.FIRST_COMPLETED)
            gone.cancel()
            if not partner.done():  # left before anyone joined
                del self.waiting[room]
                return
            other = partner.result()
        else:
            del self.waiting[room]
            other = waiting[1]
            waiting[2].set_result(ws)
        number = self.pairs[room] = self.pairs.get(room, 0) + (role == "sender")
        if role == "sender":
            await ws.send('{"type":"ready"}')
        direction = "s2r" if role == "sender" else "r2s"
        counter = itertools.count()
        try:
            async for message in ws:
                for out in self.hook(index, number, direction, next(counter), message):
                    if out is CLOSE:
                        await ws.close(1011)
                        await other.close(1011)
                        return
                    await other.send(out)  # type: ignore[arg-type]
        except ConnectionClosed:
            pass
        await other.close(1000)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[LaneRelay]:
        async with serve(self.handle, "127.0.0.1", 0, compression=None,
                         max_size=2**22) as server:
            self.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            yield self


@pytest.mark.slow
async def test_a_lane_cut_mid_transfer_is_sent_again_on_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay cuts a lane after 10 data messages: what it carried unacknowledged goes
    out on the other lanes and the files arrive intact, without a reconnect."""
    monkeypatch.setenv(LANES_NOW_ENV, "4")
    cut: list[int] = []

    def hook(room: int, _pair: int, direction: str, i: int, m: str | bytes) -> list[object]:
        if room > 0 and direction == "s2r" and i == 10 and not cut:
            cut.append(i)
            return [CLOSE]
        return [m]

    src = _tree(tmp_path, big=48 * MiB)
    relay = LaneRelay(hook)
    async with relay.running():
        sent, received = await _both(relay.url, "7-cut-one-lane", src, tmp_path / "dst",
                                     reconnect_timeout=0)
    assert cut, "no lane carried 10 messages"
    assert isinstance(sent, p2p_copy.TransferResult), sent
    assert isinstance(received, p2p_copy.TransferResult), received
    _same_tree(src, tmp_path / "dst" / "src")


@pytest.mark.slow
async def test_lane_zero_cut_reconnects_resumes_and_opens_lanes_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cutting the transfer's own connection is a drop: both reconnect, resume what was
    stored, and the new attempt opens its own lanes."""
    monkeypatch.setenv(LANES_NOW_ENV, "3")
    cuts: list[int] = []

    def hook(room: int, pair: int, direction: str, i: int, m: str | bytes) -> list[object]:
        if room == 0 and pair == 1 and direction == "s2r" and i == 20:
            cuts.append(i)
            return [CLOSE]
        return [m]

    src = _tree(tmp_path, big=48 * MiB)
    relay = LaneRelay(hook)
    async with relay.running():
        sent, received = await _both(relay.url, "7-cut-lane-zero", src, tmp_path / "dst",
                                     reconnect_timeout=30)
    assert cuts
    assert isinstance(sent, p2p_copy.TransferResult), sent
    assert isinstance(received, p2p_copy.TransferResult), received
    _same_tree(src, tmp_path / "dst" / "src")
    assert relay.pairs[next(r for r, i in relay.rooms.items() if i == 0)] == 2
    assert len(relay.rooms) > 3  # lanes in new rooms after the reconnect too


@pytest.mark.slow
async def test_a_tampered_lane_message_fails_the_transfer_as_tampering(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bit flipped in a proved lane's data: TamperingError on both sides (exit 16), and
    nothing under a final name."""
    monkeypatch.setenv(LANES_NOW_ENV, "2")

    def hook(room: int, _pair: int, direction: str, i: int, m: str | bytes) -> list[object]:
        if room == 1 and direction == "s2r" and i == 5 and isinstance(m, bytes):
            return [m[:30] + bytes([m[30] ^ 1]) + m[31:]]
        return [m]

    src = tmp_path / "one.bin"
    src.write_bytes(os.urandom(48 * MiB))
    relay = LaneRelay(hook)
    async with relay.running():
        sent, received = await _both(relay.url, "7-tamper-a-lane", src, tmp_path / "dst",
                                     reconnect_timeout=0)
    assert isinstance(received, TamperingError), received
    assert isinstance(sent, TamperingError), sent
    assert TamperingError.exit_code == 16
    assert not (tmp_path / "dst" / "one.bin").exists()


@pytest.mark.slow
async def test_a_stranger_answering_in_a_lane_room_is_refused_not_fatal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whoever answers a lane without the transfer's key is not used: the lane is closed
    and the transfer finishes on lane 0 with every byte."""
    monkeypatch.setenv(LANES_NOW_ENV, "3")
    src = _tree(tmp_path, big=24 * MiB)
    relay = LaneRelay(impostor=True)
    async with relay.running():
        sent, received = await _both(relay.url, "7-stranger-in-lane", src, tmp_path / "dst",
                                     reconnect_timeout=0)
    assert isinstance(sent, p2p_copy.TransferResult), sent
    assert isinstance(received, p2p_copy.TransferResult), received
    _same_tree(src, tmp_path / "dst" / "src")
    assert len(relay.rooms) >= 2  # lanes were tried
