"""Lanes: more connections to the relay for one transfer (docs/protocol.md §6.12).

Lane 0 is the connection the transfer runs on; lane k >= 1 is one more WebSocket
connection in a room of its own, whose hash and keys both peers derive from the
handshake's key (secure.LaneKeys): no second key exchange. The sender opens a lane when
protocol/lanes.py's rule says so, tells the receiver with a ``lane`` message on lane 0,
and both prove the lane's keys with a first sealed ``lane`` message each way before it
carries data. A lane that cannot be opened or proved is closed and never used: the
transfer goes on with the others. Data messages say their offset, so any lane may carry
any of them; control messages stay on lane 0.

The sender keeps what each lane carried until the receiver acknowledged it, and when a
lane drops it sends that again on the others; the receiver drops what it already has.
Losing lane 0 is a drop of the transfer: the reconnect path (reconnect.py) takes over
and the next attempt opens its own lanes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass

from ..errors import P2PCopyError, RemoteProtocolError, TransferTimeoutError
from ..protocol.lanes import MIN_LEFT, MIN_RTT, LaneGovernor
from ..protocol.messages import Hello, Lane, Ready, Waiting, encode, parse_message
from ..protocol.secure import Channel, LaneKeys, is_control
from ..protocol.transfer import HELLO_VERSION, Sender, SenderState
from .handshake import Link, SealedLink
from .link import RelayLink
from .options import Options
from .session import relay_link

__all__ = ["LANES_NOW_ENV", "ReceiverLanes", "SenderLanes", "ping_early"]

#: Tests only: open this many lanes at once, without waiting for the rule's measurements.
LANES_NOW_ENV = "P2P_COPY_LANES_NOW"
#: Seconds a lane may take from its hello to its proof.
LANE_TIMEOUT = 30.0
#: Seconds the first data message waits for the round trip to the relay (lanes need it).
FIRST_PING_WAIT = 1.0
#: How often the sender asks the rule whether to open a lane.
LANE_TICK = 0.1
#: Bytes a lane's socket may hold not yet sent (TCP_NOTSENT_LOWAT, Linux) once lanes carry
#: data: a lane whose path is slow then refuses the next piece, which goes to one that
#: moves, rather than waiting in its kernel buffer; the receiver puts bytes in order, so
#: one lane's queue delays every lane's acknowledgement.
UNSENT_BYTES = 512 * 1024
#: Data messages queued for the lanes beyond one per lane: the window bounds the rest.
QUEUE_SLACK = 2


@dataclass(frozen=True)
class _Piece:
    """A framed data message and the stream bytes it carries."""

    offset: int
    end: int
    message: bytes | memoryview


def _short_queue(link: object) -> None:
    """Keep ``link``'s unsent kernel buffer at UNSENT_BYTES, where the system allows it."""
    transport = getattr(getattr(link, "ws", None), "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if sock is not None and option is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, UNSENT_BYTES)


async def ping_early(link: Link, proto: Sender, size: int) -> Awaitable[float] | None:
    """After the key exchange, before the manifest: ping the relay on lane 0 if the
    manifest will offer lanes and ``size`` bytes are enough for them, so that the round
    trip is known when the accept comes, a round trip sooner than a ping after it. Waits
    at most MIN_RTT for the pong, with nothing else on the loop: a pong back by then was
    measured exactly (a LAN stays on one lane), a later one shows a long link, whatever
    sending the manifest adds to its measurement. Returns the pong (SenderLanes takes it),
    or None."""
    ws = getattr(getattr(link, "link", None), "ws", None)
    if not isinstance(link, SealedLink) or ws is None or proto.lanes_offered < 2 \
            or size < MIN_LEFT:
        return None
    try:
        pong: asyncio.Future[float] = await ws.ping()
    except Exception:  # the connection's own failure shows on its next send or recv
        return None
    await asyncio.wait({pong}, timeout=MIN_RTT)
    return pong


class _LaneRefused(Exception):
    """A lane did not prove its keys: closed and not used."""


def _is(message: str | bytes, kind: type | tuple[type, ...]) -> bool:
    if not isinstance(message, str):
        return False
    with contextlib.suppress(P2PCopyError):
        return isinstance(parse_message(message), kind)
    return False


def _proof(channel: Channel, message: str | bytes, lane: int) -> None:
    """Check the first sealed message of a lane: ``lane`` naming this lane, or refused."""
    try:
        inner = channel.open(message)
        proved = is_control(inner) and parse_message(inner.decode("utf-8")) == Lane(lane)
    except (P2PCopyError, UnicodeDecodeError):
        proved = False
    if not proved:
        raise _LaneRefused(f"lane {lane} did not prove the transfer's keys")


class SenderLanes:
    """The sender's lanes of one connection; data messages go out on whichever is free."""

    def __init__(self, proto: Sender, link: SealedLink, server: str, options: Options,
                 force: int = 0, pong: Awaitable[float] | None = None) -> None:
        self.proto = proto
        #: ping_early's pong, if it sent one: the round trip to the relay.
        self.pong = pong
        self.link = link
        self.server = server
        self.options = options
        self.governor = LaneGovernor(proto.lanes, force=force)
        self._queue: deque[_Piece] = deque()
        self._more = asyncio.Event()
        self._room = asyncio.Event()
        #: Lanes carrying data, lane 0 included.
        self.active = 1
        #: Lanes that carried data at some point, lane 0 included (for tests and logs).
        self.used = 1
        self._next = 1
        #: Lanes being opened (one step of the rule at a time, unless forced).
        self._opening = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None

    async def start(self) -> None:
        """Before the first data message: measure the round trip to the relay while the
        buffers are empty (or take ping_early's), and announce the first lanes the rule
        asks for, so that their ``lane`` messages go ahead of the data rather than behind
        it."""
        ws = getattr(self.link.link, "ws", None)
        if ws is not None:
            measuring = self._spawn(self._measure(ws))
            if not self.governor.force and self.proto.bytes_left >= MIN_LEFT:
                # One round trip to the relay (under a millisecond on a LAN), paid only by
                # transfers big enough for lanes; a slower answer is taken when it comes.
                await asyncio.wait({measuring}, timeout=FIRST_PING_WAIT)
                await self._open()
        self._spawn(self._carry(self.link, None))
        self._spawn(self._grow())

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            # Lane 0's carrier: the transfer's own connection failed.
            self._failure = task.exception()
            self._more.set()
            self._room.set()

    @property
    def alone(self) -> bool:
        """Lane 0 carries everything: no other lane is open or opening, nothing queued."""
        return self.active == 1 and not self._opening and not self._queue

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def put(self, offset: int, end: int, message: bytes | memoryview) -> None:
        """Queue a data message for the next free lane; waits while the queue is full."""
        self._check()
        self._queue.append(_Piece(offset, end, message))
        self._more.set()
        while len(self._queue) > self.active + QUEUE_SLACK:
            self._room.clear()
            await self._room.wait()
            self._check()

    async def _take(self) -> _Piece:
        while True:
            while not self._queue:
                self._more.clear()
                await self._more.wait()
            piece = self._queue.popleft()
            self._room.set()
            if piece.end > self.proto.acked:
                return piece

    async def _carry(self, lane: SealedLink,
                     outstanding: deque[_Piece] | None) -> None:
        """Send queued data messages on ``lane``; ``outstanding`` keeps what it sent until
        acknowledged (None for lane 0, whose loss ends the connection)."""
        while True:
            piece = await self._take()
            if outstanding is not None:
                while outstanding and outstanding[0].end <= self.proto.acked:
                    outstanding.popleft()
                outstanding.append(piece)
            await lane.send(piece.message)
            # A send that did not have to wait returns at once: let the other lanes take
            # their turn rather than this one taking every piece.
            await asyncio.sleep(0)

    async def _measure(self, ws: object) -> None:
        with contextlib.suppress(Exception):
            pong = self.pong if self.pong is not None else await ws.ping()  # type: ignore[attr-defined]
            self.governor.rtt = await asyncio.wait_for(pong, LANE_TIMEOUT)

    async def _grow(self) -> None:
        while self.proto.state is SenderState.STREAMING:
            left = self.proto.bytes_left
            if not self._opening or self.active + self._opening < self.governor.force:
                await self._open(left)
            await asyncio.sleep(LANE_TICK)

    async def _open(self, left: int | None = None) -> None:
        """Open the lanes the rule asks for now: each announced on lane 0 first, so that
        the receiver connects while we do."""
        more = self.governor.decide(time.monotonic(), self.proto.acked,
                                    self.proto.bytes_left if left is None else left,
                                    self.active + self._opening)
        more = min(more, self.proto.lanes - self._next)
        if more and self._next == 1:
            _short_queue(self.link.link)
        for _ in range(more):
            lane = self._next
            self._next += 1
            await self.link.send(self.proto.lane(lane))
            self._opening += 1
            self._spawn(self._lane(lane))

    async def _lane(self, lane: int) -> None:
        keys: LaneKeys = self.link.lanes
        room = keys.room(lane)
        outstanding: deque[_Piece] = deque()
        carrying = False
        try:
            async with relay_link(self.server, room, self.options, "sender") as plain:
                _short_queue(plain)
                # No ``fresh`` and no wait for ``waiting``: only the two peers know the
                # room, so the receiver was told before we connected and either may arrive
                # first; whoever answers must still prove the lane's keys.
                await plain.send(encode(Hello(code_hash_hex=room, role="sender",
                                              version=HELLO_VERSION)))
                first = await plain.recv(LANE_TIMEOUT, "the receiver to join a lane")
                if _is(first, Waiting):
                    first = await plain.recv(LANE_TIMEOUT, "the receiver to join a lane")
                if not _is(first, Ready):
                    raise _LaneRefused("the relay did not pair the lane")
                channel = keys.channel(lane)
                await plain.send(channel.seal(encode(Lane(lane))))
                _proof(channel, await plain.recv(LANE_TIMEOUT, "the receiver's lane proof"),
                       lane)
                carrying = True
                self._opening -= 1
                self._started(1)
                carrier = asyncio.ensure_future(
                    # Sealed like lane 0, into one reused buffer per lane.
                    self._carry(SealedLink(plain, channel, keys), outstanding))
                # The receiver sends nothing more on a lane: a recv ends only with it.
                watcher = asyncio.ensure_future(plain.recv())
                try:
                    await asyncio.wait({carrier, watcher}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (carrier, watcher):
                        task.cancel()
                    await asyncio.gather(carrier, watcher, return_exceptions=True)
        except (P2PCopyError, _LaneRefused, OSError, TimeoutError):
            pass  # the lane is closed and not used; the others carry on
        finally:
            if not carrying:
                self._opening -= 1
            if carrying:
                self._started(-1)
                # What it carried and the receiver did not acknowledge goes out again first.
                lost = [p for p in outstanding if p.end > self.proto.acked]
                self._queue.extendleft(reversed(lost))
                self._more.set()
            elif self.governor.force == 0:
                self.governor.stop()

    def _started(self, change: int) -> None:
        self.active += change
        if change > 0:
            self.used += 1
        self.governor.changed(time.monotonic(), self.proto.acked, self.proto.bytes_sent)


class ReceiverLanes:
    """The receiver's lanes: what lane 0 and every proved lane bring, as one ``recv``."""

    def __init__(self, link: SealedLink, server: str, options: Options) -> None:
        self.link = link
        self.server = server
        self.options = options
        # Bounded: a lane that gets ahead waits here, and TCP slows its sender down. Small,
        # as websockets' own queue per connection is behind it.
        self._queue: asyncio.Queue[str | bytes | BaseException] = asyncio.Queue(8)
        self._tasks: set[asyncio.Task[None]] = set()
        #: Lanes that proved their keys (for tests and logs).
        self.proved = 0
        self._spawn(self._read_lane0())

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def recv(self, timeout: float | None = None, waiting_for: str = "") -> str | bytes:
        try:
            async with asyncio.timeout(timeout):
                item = await self._queue.get()
        except TimeoutError:
            raise TransferTimeoutError(
                f"Gave up after {timeout:g} s waiting for {waiting_for}."
            ) from None
        if isinstance(item, BaseException):
            raise item
        return item

    async def _read_lane0(self) -> None:
        try:
            while True:
                await self._queue.put(await self.link.recv())
        except P2PCopyError as exc:
            await self._queue.put(exc)

    def join(self, lane: int) -> None:
        """The sender opened ``lane``: join it."""
        self._spawn(self._lane(lane))

    async def _lane(self, lane: int) -> None:
        keys: LaneKeys = self.link.lanes
        room = keys.room(lane)
        channel = keys.channel(lane)
        try:
            async with relay_link(self.server, room, self.options, "receiver") as plain:
                await plain.send(encode(Hello(code_hash_hex=room, role="receiver",
                                              version=HELLO_VERSION)))
                first = await plain.recv(LANE_TIMEOUT, "the sender's lane")
                if _is(first, Waiting):
                    first = await plain.recv(LANE_TIMEOUT, "the sender's lane")
                _proof(channel, first, lane)
                await plain.send(channel.seal(encode(Lane(lane))))
                self.proved += 1
                await self._carry(plain, channel)
        except (P2PCopyError, _LaneRefused, OSError, TimeoutError):
            pass  # not proved: closed and not used; the sender carries on without it

    async def _carry(self, plain: RelayLink, channel: Channel) -> None:
        while True:
            try:
                message = await plain.recv()
            except P2PCopyError:
                return  # the lane ended: the sender sends what it lost on the others
            try:
                inner = channel.open(message)
                if is_control(inner):
                    raise RemoteProtocolError(
                        "The sender broke the protocol: a control message arrived on a lane.")
            except P2PCopyError as exc:
                # A proved lane that carries something else was tampered with: as on lane 0.
                await self._queue.put(exc)
                return
            await self._queue.put(inner)
