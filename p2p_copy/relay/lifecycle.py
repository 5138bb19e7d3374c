"""One relay connection's life as a table without I/O, and the labels it ends with.

Rules (after magic-wormhole's transit relay, ``server_state.py``):
- A connection is in one ``State``: ``HELLO`` (open, its hello not yet taken), ``WAITING``
  (in a room, no partner yet), ``RELAYING`` (paired), ``DONE``.
- The server tells the machine what happened (an ``Event``); ``TRANSITIONS`` says where
  that leads. An event that ends the connection leads to an ``Outcome`` instead of a
  state: that table is the one place where outcomes are decided.
- An event the table does not list for the current state is a bug of the relay
  (``LocalProtocolError``); after ``DONE`` nothing more happens.
- A peer the relay turns away is also counted by a ``Reason``. Outcome and reason values
  are the label values of the relay's metrics (server/README.md), so they never change.

How a close becomes an event is decided by ``closed()`` from what the WebSocket layer
knows of the close; time comes in as ``now`` (seconds, monotonic): nothing here reads a
clock.
"""

from __future__ import annotations

import enum
from typing import Final

from ..errors import LocalProtocolError
from ..protocol.messages import CloseCode

__all__ = ["State", "Event", "Outcome", "Reason", "TRANSITIONS", "PAIR_OUTCOMES",
           "Lifecycle", "closed"]


class State(enum.Enum):
    HELLO = "hello"
    WAITING = "waiting"
    RELAYING = "relaying"
    DONE = "done"


class Event(enum.Enum):
    """What happened to a connection, as the server saw it."""

    #: It joined an empty room (or the room's peer of the same role left it).
    WAIT = "wait"
    #: It met its partner.
    PAIR = "pair"
    #: Its hello is missing, malformed or disagrees with the path; or it sent more than
    #: the relay takes (1009); or its connection failed before it was paired.
    BROKE_RULE = "broke_rule"
    #: A cap of the relay refused it (4006, 4007) or ended its pair (4008, 4009).
    OVER_LIMIT = "over_limit"
    #: Its code was in use (4002).
    CODE_IN_USE = "code_in_use"
    #: No partner came in time (4003).
    PEER_TIMEOUT = "peer_timeout"
    #: It closed, or its connection dropped, on its own; in a pair: either side did so
    #: without a clean close.
    LEFT = "left"
    #: Both sides of its pair closed cleanly.
    FINISHED = "finished"
    #: The relay closed it because it drains or stops (4005, 1001).
    SHUT = "shut"


class Outcome(enum.StrEnum):
    """How a connection ended: the ``outcome`` label of the metrics and logs."""

    HAPPY = "happy"  # paired, and both sides closed cleanly
    LONELY = "lonely"  # no partner joined in time
    IMPATIENT = "impatient"  # left while still waiting for a partner
    REDUNDANT = "redundant"  # its role was already taken for this code, or the code was fresh
    ERRORY = "errory"  # bad or missing hello, or a dropped connection while relaying
    DRAINED = "drained"  # the relay closed it because it was draining or stopping
    LIMITED = "limited"  # a relay limit refused it (4006, 4007) or ended its pair (4008, 4009)


class Reason(enum.StrEnum):
    """Why the relay turned a peer away: the ``reason`` label of the rejections metric."""

    BAD_PATH = "bad_path"  # the request path is neither / nor .../<room hash> (HTTP 404)
    BAD_HELLO = "bad_hello"  # close 4000, including a hello that disagrees with the path
    HELLO_TIMEOUT = "hello_timeout"  # close 4001
    CODE_IN_USE = "code_in_use"  # close 4002
    PEER_TIMEOUT = "peer_timeout"  # close 4003
    TOO_BIG = "too_big"  # close 1009
    DRAINING = "draining"  # HTTP 503 or close 4005 for a peer that was not yet paired
    ACCESS_DENIED = "access_denied"  # HTTP 401: a private relay, and no valid access token
    CONNECTIONS_FULL = "connections_full"  # HTTP 503: too many open connections in all
    CONNECTIONS_PER_ADDRESS = "connections_per_address"  # HTTP 429: from one address
    CONNECTIONS_PER_NETWORK = "connections_per_network"  # HTTP 429: from one /48 or /24
    RATE_LIMITED = "rate_limited"  # close 4006: too many connections from one address lately
    WAITING_FULL = "waiting_full"  # close 4007: too many waiting peers in all
    WAITING_PER_ADDRESS = "waiting_per_address"  # close 4007: from one address
    WAITING_PER_NETWORK = "waiting_per_network"  # close 4007: from one /48 or /24
    PAIRS_FULL = "pairs_full"  # close 4007: too many pairs relaying
    PAIR_BYTES = "pair_bytes"  # close 4008 to both peers (counted once per pair): byte cap
    PAIR_DURATION = "pair_duration"  # close 4008 to both peers (once per pair): time cap
    MEMORY_FULL = "memory_full"  # close 4009 (to both peers of a pair, once): queued bytes


_ENDINGS_UNPAIRED: Final[dict[Event, Outcome]] = {
    Event.BROKE_RULE: Outcome.ERRORY,
    Event.OVER_LIMIT: Outcome.LIMITED,
    Event.SHUT: Outcome.DRAINED,
}

#: State → event → the next state, or the outcome that ends the connection.
TRANSITIONS: Final[dict[State, dict[Event, State | Outcome]]] = {
    State.HELLO: {
        Event.WAIT: State.WAITING,
        Event.PAIR: State.RELAYING,
        Event.CODE_IN_USE: Outcome.REDUNDANT,
        # Gone before it said who it is: nothing it did counts as a peer's.
        Event.LEFT: Outcome.ERRORY,
        **_ENDINGS_UNPAIRED,
    },
    State.WAITING: {
        Event.PAIR: State.RELAYING,
        Event.PEER_TIMEOUT: Outcome.LONELY,
        Event.LEFT: Outcome.IMPATIENT,
        **_ENDINGS_UNPAIRED,
    },
    State.RELAYING: {
        Event.FINISHED: Outcome.HAPPY,
        # Its partner is told PEER_GONE: for the pair, that is a failure.
        Event.LEFT: Outcome.ERRORY,
        Event.BROKE_RULE: Outcome.ERRORY,
        Event.OVER_LIMIT: Outcome.LIMITED,
        Event.SHUT: Outcome.DRAINED,
    },
    State.DONE: {},
}

#: How a pair can end: the outcomes reachable from RELAYING, in the table's order.
PAIR_OUTCOMES: Final[tuple[Outcome, ...]] = tuple(dict.fromkeys(
    step for step in TRANSITIONS[State.RELAYING].values() if isinstance(step, Outcome)))


class Lifecycle:
    """One connection's state; ``handle()`` moves it on per ``TRANSITIONS``."""

    __slots__ = ("state", "outcome", "opened", "paired_at", "ended")

    def __init__(self, now: float) -> None:
        self.state = State.HELLO
        #: Set once the connection is DONE.
        self.outcome: Outcome | None = None
        self.opened = now
        self.paired_at: float | None = None
        self.ended: float | None = None

    def handle(self, event: Event, now: float) -> Outcome | None:
        """Apply ``event``; the outcome if it ended the connection, else None.

        After DONE every event is ignored: the first ending is the one that counts (a
        limit that closed the connection also makes it look closed).
        """
        if self.state is State.DONE:
            return None
        try:
            step = TRANSITIONS[self.state][event]
        except KeyError:
            raise LocalProtocolError(
                f"relay connection: {event.name} cannot happen in {self.state.name}") from None
        if isinstance(step, Outcome):
            self.state, self.outcome, self.ended = State.DONE, step, now
            return step
        if step is State.RELAYING:
            self.paired_at = now
        self.state = step
        return None

    def finish(self, now: float) -> Outcome:
        """The outcome, ending the connection as broken if nothing ended it before (the
        handler failed): a connection always ends with exactly one outcome."""
        if self.outcome is None:
            self.handle(Event.BROKE_RULE, now)
        assert self.outcome is not None
        return self.outcome

    def relayed_seconds(self) -> float:
        """How long it relayed (0 if it never paired)."""
        if self.paired_at is None or self.ended is None:
            return 0.0
        return self.ended - self.paired_at


def closed(sent: int | None, peer_first: bool = False) -> Event:
    """The event that closing a connection makes, from the close code the relay sent.

    ``sent``: the code the relay sent, if it sent one; ``peer_first``: the peer's close
    came first and the relay's only echoed it, or the connection dropped. Then the peer
    LEFT; otherwise the relay's code says why it closed the connection.
    """
    if sent is None or peer_first:
        return Event.LEFT
    return _BY_CODE.get(sent, Event.BROKE_RULE)


#: Why the relay closes a connection, by its close code; any other code (4000, 4001,
#: 1009, ...) says that the peer broke a rule.
_BY_CODE: Final[dict[int, Event]] = {
    CloseCode.GOING_AWAY: Event.SHUT,
    CloseCode.RELAY_DRAINING: Event.SHUT,
    CloseCode.CODE_IN_USE: Event.CODE_IN_USE,
    CloseCode.PEER_TIMEOUT: Event.PEER_TIMEOUT,
    CloseCode.RATE_LIMITED: Event.OVER_LIMIT,
    CloseCode.RELAY_FULL: Event.OVER_LIMIT,
    CloseCode.PAIR_LIMIT: Event.OVER_LIMIT,
    CloseCode.RELAY_MEMORY: Event.OVER_LIMIT,
}
