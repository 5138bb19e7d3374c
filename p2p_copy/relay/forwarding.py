"""The relay's fast path: binary frames passed on as they are parsed, not as messages.

Read as whole messages, every 256 KiB chunk the relay only passes on went through
websockets' assembler (a queue, a wake-up of the handler's task, a join) and out through
``send()`` (a lock and a drain). Once a pair relays, a binary frame that the parser
produces is framed again for the partner on the spot, inside the same ``data_received``
call, through the sans-I/O protocol's ``send_binary`` / ``send_continuation``. Measured
on 1 GiB transfers (benchmarks/README.md, 0.5.1): relay CPU 1.34 → 1.17 s.

Order and backpressure stay what they were:

- Text messages (the peers' protocol messages, a few per file) and anything queued before
  the pair formed still go through the assembler to the handler's loop. A frame goes
  direct only when no earlier message is queued there or being sent, so nothing overtakes.
- While the partner's write buffer is over its high-water mark, reading from this side
  is paused, as the handler's awaited ``send()`` did; TCP then slows the sender down.
  websockets' assembler pauses and resumes the same transport when its queue fills and
  drains; its resume callback is replaced so that reading resumes only when neither
  holds it, whichever lets go last.

Memory (protocol.md §5.1, §5.11):

- Until the relay pairs a connection (``paired()``), it takes at most ``PRE_PAIR_LIMIT``
  bytes of messages from it, hello included: websockets refuses a larger frame from its
  header alone (1009), and more small ones close the connection with 1009 too. A waiting
  peer therefore holds a few KiB, not ``max_queue`` messages of the full size.
- Pings are answered, and the answers (PONG frames, written by websockets inside
  ``data_received``) wait on the peer's own socket until it reads them. A read that leaves
  answers on a socket whose write buffer is over its high-water mark stops reading from
  that peer until the buffer drains (``resume_writing``), the same pause as for a full
  partner: a peer that does not read what it asked for gets nothing more read. A peer not
  yet paired is closed with 1009 instead; it has nothing to wait for (§5.1). So a peer
  that floods pings and reads nothing makes the relay hold the high-water mark plus the
  answers to one read (256 KiB), not all of them.
- Every connection keeps what it holds for its peer (an unfinished frame in the reader,
  messages in the assembler's queue, what it wrote to the partner and the partner has not
  taken; before pairing, what waits on its own socket) counted in one ``Budget`` shared by
  the relay. The count is brought up to date once per read, not per frame (a read that
  leaves answers piling up on a paired peer's socket updates the partner's count of that
  socket as well); a connection whose read takes the total over the limit is closed with
  4009 (its pair, by the relay).

Hooks. websockets has no public way to take frames as they are parsed on its asyncio
connection, so this class uses its internals: it overrides ``process_event`` (every parsed
frame) and calls ``send_data`` (writes the protocol's output), replaces the assembler's
``recv_messages.resume`` callback, reads ``protocol.reader.buffer``, the ``paused`` flag
and ``connection_lost_waiter``, lowers ``protocol.max_message_size`` until pairing, and
counts on ``data_received`` writing the answers to pings before it returns. Should one of
them change, frames could take the slow path, answers could pile up unseen or, worse,
reading might never resume. So pyproject.toml bounds websockets to the majors the relay
tests passed with, and tests/test_relay_websockets_hooks.py checks each hook's shape and
behaviour: run it, and the relay tests, before raising the bound. The alternative, a
connection of our own on websockets' sans-I/O ``Protocol`` (``receive_data``,
``events_received``, ``data_to_send``), would mean owning the opening handshake, the HTTP
answers, keepalive and the closing handshake that websockets' asyncio server does for the
relay now; what the public ``recv()``/``send()`` path costs instead is measured in
benchmarks/README.md.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, State

from ..protocol.messages import CloseCode

__all__ = ["ForwardingConnection", "FrameTap", "Verdict", "Budget", "PRE_PAIR_LIMIT"]

#: Bytes of messages, hello included, that a peer may send before it is paired (§5.1).
PRE_PAIR_LIMIT = 4096


class Budget:
    """Bytes the relay holds for peers across all its connections, against ``limit``.

    ``limit`` 0: counted, never refused.
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.used = 0


class Verdict(enum.Enum):
    """What the relay says of one frame about to go direct."""

    #: Pass it on.
    PASS = "pass"
    #: Pass it on and time its hand-over (a latency sample).
    TIMED = "timed"
    #: Drop it and every later frame: a limit ends the pair.
    STOP = "stop"


#: Called with a frame's payload size and ``fin`` before it goes direct.
FrameTap = Callable[[int, bool], Verdict]


class ForwardingConnection(ServerConnection):
    """A server connection whose binary frames can go straight to a partner connection."""

    _target: ForwardingConnection | None = None
    _tap: FrameTap | None = None
    _timer: Callable[[float], None] | None = None
    #: Messages begun in the assembler and not yet handed on by the handler.
    _backlog = 0
    #: The message in progress went direct: its continuation frames follow it.
    _direct_message = False
    #: Data frames are dropped (a limit ended the pair, or the partner is closing).
    _discarding = False
    #: The partner whose writing paused this connection's reading.
    _paused_by: ForwardingConnection | None = None
    #: On the partner: the connection whose reading waits for this one's buffer to drain.
    _held_source: ForwardingConnection | None = None
    #: Hand-overs being timed until the write buffer drains (perf_counter at the start).
    _timing: list[float] | None = None
    #: The relay's shared count of held bytes; None: nothing is counted.
    budget: Budget | None = None
    #: Bytes this connection has counted in ``budget``; once closed, it counts no more.
    _held = 0
    _released = False
    #: Payload bytes in the assembler's queue (messages not yet handed on).
    _queued = 0
    #: Bytes it may still send before it is paired; None once paired.
    _early: int | None = None
    #: The message size limit that applies once paired.
    _max_size: int | None = None
    #: Reading waits until the answers to this peer's own frames (pongs) are taken.
    _unread_answers = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # The assembler resumes reading when its queue drains; not while a partner holds it.
        self.recv_messages.resume = self._queue_drained
        self._max_size = self.protocol.max_message_size
        self._early = PRE_PAIR_LIMIT
        if self._max_size is None or self._max_size > PRE_PAIR_LIMIT:
            self.protocol.max_message_size = PRE_PAIR_LIMIT

    def paired(self) -> None:
        """The relay paired this connection: messages of the full size may come now."""
        if self._early is not None:
            self._early = None
            self.protocol.max_message_size = self._max_size

    def _queue_drained(self) -> None:
        self._read_if_free()

    def _read_if_free(self) -> None:
        """Read again unless something still holds reading: the partner's full write
        buffer, answers this peer has not read, or the assembler's full queue."""
        if (self._paused_by is None and not self._unread_answers
                and not self.recv_messages.paused):
            self.transport.resume_reading()

    def forward_to(self, target: ForwardingConnection, tap: FrameTap,
                   timer: Callable[[float], None] | None = None) -> None:
        """From now on, pass binary frames straight to ``target`` whenever order allows."""
        self.paired()
        self._target, self._tap, self._timer = target, tap, timer

    def handed_on(self, size: int) -> None:
        """The handler is done with a message of ``size`` bytes it took with ``recv()``."""
        self._backlog -= 1
        self._queued -= size
        self._account()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        queued = transport.get_write_buffer_size()
        super().data_received(data)  # parses, answers pings (and a close), passes frames on
        if self.paused and transport.get_write_buffer_size() > queued:
            self._answers_pile_up()
        self._account()

    def _answers_pile_up(self) -> None:
        """This read left answers (pongs) on a socket already over its high-water mark."""
        if self._early is not None and self.protocol.state is State.OPEN:
            # Not paired: the relay sent it nothing but `waiting` and its own answers, so
            # it reads nothing at all. A compliant peer reads them (ours ping every 20 s).
            self.refuse(CloseCode.MESSAGE_TOO_BIG,
                        "a peer that is not paired must read the relay's answers to its pings")
            return
        # Paired, or closing: a slow receiver pings with a full buffer too, so wait for it
        # to read rather than close it. Until then its answers count in the budget.
        self._unread_answers = True
        self.transport.pause_reading()
        target = self._target
        if target is not None and target._recount():  # the partner counts this socket
            self.over_budget()  # this read asked for the answers: this peer is refused

    def _account(self) -> None:
        """Bring this connection's share of the budget up to date; refuse it if over."""
        if self._recount():
            self.over_budget()

    def _recount(self) -> bool:
        """Bring this connection's share of the budget up to date: whether it grew and the
        relay now holds more than it allows."""
        budget = self.budget
        if budget is None or self._released:
            return False
        held = len(self.protocol.reader.buffer) + self._queued
        target = self._target
        if target is not None:
            # What went direct and the partner has not taken yet: its write buffer.
            held += target.transport.get_write_buffer_size()
        elif self._early is not None:
            # Not paired: only the relay's own answers wait on this peer's socket.
            held += self.transport.get_write_buffer_size()
        grown, self._held = held - self._held, held
        budget.used += grown
        return grown > 0 and 0 < budget.limit < budget.used

    def over_budget(self) -> None:
        """The relay holds all it allows, and this connection asks for more: close it."""
        self.refuse(CloseCode.RELAY_MEMORY, "the relay is short of memory; try again later")

    def refuse(self, code: int, reason: str) -> None:
        """Close with ``code`` now: the close frame and a FIN go out, and from here on
        websockets drops what arrives unparsed, so nothing of the peer's is held."""
        if self.protocol.state is State.OPEN:
            self.protocol.fail(code, reason)
            self.send_data()
        self.discard()  # read on: what arrives is dropped, and the peer's FIN must come
        # A peer that never closes its side is dropped after the usual closing time.
        self.loop.call_later(self.close_timeout or 10.0, self._abort_unless_closed)

    def _abort_unless_closed(self) -> None:
        if not self.connection_lost_waiter.done():
            self.transport.abort()

    def discard(self) -> None:
        """Drop every later data frame: the pair is ending, nobody will pass them on.

        Reading goes on even while the assembler's queue is full: nothing joins the queue
        any more, and the handler may never empty it, but the close frame must get through.
        """
        self._discarding = True
        self._unread_answers = False  # a read that answers again holds it again
        self._unhold()
        self.transport.resume_reading()

    def process_event(self, event: Event) -> None:
        if isinstance(event, Frame) and event.opcode in _DATA_OPCODES:
            if self._discarding:
                return
            if self._direct_message or (
                    event.opcode is Opcode.BINARY and not self._backlog
                    and self._target is not None):
                self._pass_on(event)
                return
            if self._early is not None:
                self._early -= len(event.data)
                if self._early < 0:
                    self.refuse(CloseCode.MESSAGE_TOO_BIG,
                                f"a peer may send {PRE_PAIR_LIMIT} bytes at most before it "
                                "is paired")
                    return
            if event.opcode is not Opcode.CONT:
                self._backlog += 1
            self._queued += len(event.data)
        super().process_event(event)

    def _pass_on(self, frame: Frame) -> None:
        target, tap = self._target, self._tap
        assert target is not None and tap is not None
        if target.protocol.state is not State.OPEN:
            # The partner is closing; its handler closes this side in turn.
            self.discard()
            return
        verdict = tap(len(frame.data), frame.fin)
        if verdict is Verdict.STOP:
            self.discard()
            return
        started = time.perf_counter() if verdict is Verdict.TIMED else 0.0
        if frame.opcode is Opcode.CONT:
            target.protocol.send_continuation(frame.data, frame.fin)
        else:
            target.protocol.send_binary(frame.data, frame.fin)
        self._direct_message = not frame.fin
        target.send_data()
        if target.paused:  # websockets' flag: its write buffer is over the high-water mark
            if self._paused_by is None:
                self._hold(target)
            if verdict is Verdict.TIMED:
                if target._timing is None:
                    target._timing = []
                target._timing.append(started)
        elif verdict is Verdict.TIMED and self._timer is not None:
            self._timer(time.perf_counter() - started)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._unread_answers:  # the peer read its answers: read it again
            self._unread_answers = False
            self._read_if_free()
        self._release_source(timed=True)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # What is still queued is dropped with the connection, or soon handed on.
        if self.budget is not None and not self._released:
            self._released = True
            self.budget.used -= self._held
            self._held = 0
        # The source must read again, if only to take its close frame.
        self._release_source(timed=False)

    def _hold(self, target: ForwardingConnection) -> None:
        """Stop reading until ``target``'s write buffer drains."""
        self._paused_by = target
        target._held_source = self
        self.transport.pause_reading()

    def _unhold(self) -> None:
        """The partner's buffer drained: read again, unless something else holds reading."""
        target, self._paused_by = self._paused_by, None
        if target is not None and target._held_source is self:
            target._held_source = None
        self._read_if_free()

    def _release_source(self, *, timed: bool) -> None:
        source, self._held_source = self._held_source, None
        timing, self._timing = self._timing, None
        if source is None or source._paused_by is not self:
            return
        source._unhold()
        source._account()  # this side's write buffer drained
        if timed and timing and source._timer is not None:
            now = time.perf_counter()
            for started in timing:
                source._timer(now - started)


_DATA_OPCODES = frozenset({Opcode.TEXT, Opcode.BINARY, Opcode.CONT})
