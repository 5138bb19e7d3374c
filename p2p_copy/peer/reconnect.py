"""When to reconnect after a drop, and what a stopped receiver keeps (no sockets, no files).

The drivers (peer/sending.py, peer/receiving.py, peer/session.py) ask ``Reconnect`` how
long to wait before the next attempt and how long an attempt may wait for the peer,
``retryable`` whether an error is a drop that a new connection can get past, and
``keeps_partial`` whether a receiver stopped by an error keeps its partial data for a
later run to resume. Time comes in as ``now`` (seconds, monotonic) from the caller, as in
relay/admission.py; nothing here reads a clock.
"""

from __future__ import annotations

import asyncio

from ..errors import (
    CancelledError,
    CodeInUseError,
    ConnectionLostError,
    P2PCopyError,
    PeerGoneError,
    RelayUnreachableError,
    TransferTimeoutError,
    UsageError,
)

__all__ = [
    "DEFAULT_RECONNECT_TIMEOUT",
    "IDLE_TIMEOUT",
    "RECONNECT_FIRST_DELAY",
    "RECONNECT_MAX_DELAY",
    "Reconnect",
    "keeps_partial",
    "reconnect_budget",
    "retryable",
]

#: How long, after the connection drops, both peers keep reconnecting (seconds; 0: never).
DEFAULT_RECONNECT_TIMEOUT = 120.0
#: How long the receiver waits for the next message once the sender has spoken, and how
#: long a sender waits for a receiver that reads nothing (its buffers full) before giving up.
IDLE_TIMEOUT = 300.0
#: Backoff between reconnect attempts: from the first delay, doubling up to the last.
RECONNECT_FIRST_DELAY = 0.5
RECONNECT_MAX_DELAY = 8.0


class Reconnect:
    """Whether and when to try again after a drop: bounded backoff, within a time budget.

    The budget runs from the first failed attempt of an outage and is renewed once an
    attempt reaches the peer again, so a long transfer may survive many short outages.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.attempt = 0
        self._delay = RECONNECT_FIRST_DELAY
        self._deadline: float | None = None

    @property
    def reconnecting(self) -> bool:
        """Whether we are in an outage: the attempt under way is a reconnect."""
        return self._deadline is not None

    def connected(self) -> None:
        self._deadline = None
        self._delay = RECONNECT_FIRST_DELAY

    def next_delay(self, now: float) -> float | None:
        """Seconds to wait before the next attempt, or None once the budget is spent."""
        if self.timeout <= 0:
            return None
        if self._deadline is None:
            self._deadline = now + self.timeout
        left = self._deadline - now
        if left <= 0:
            return None
        delay = min(self._delay, left)
        self._delay = min(self._delay * 2, RECONNECT_MAX_DELAY)
        self.attempt += 1
        return delay

    def wait_timeout(self, default: float | None, now: float) -> float | None:
        """How long an attempt may wait for the peer: the budget left, while reconnecting."""
        if self._deadline is None:
            return default
        return max(self._deadline - now, 0.1)


def retryable(exc: BaseException, reconnecting: bool) -> bool:
    """Whether ``exc`` is a drop that a new connection can get past (not a peer's verdict)."""
    if not isinstance(exc, P2PCopyError) or exc.from_peer:
        return False
    if isinstance(exc, (ConnectionLostError, PeerGoneError)):
        return True
    # While the relay restarts it is unreachable, and it may still hold our old room.
    return reconnecting and isinstance(exc, (RelayUnreachableError, CodeInUseError))


def keeps_partial(exc: BaseException) -> bool:
    """Whether a receiver stopped by ``exc`` keeps its partial data for a re-run to resume.

    A drop, a stall or a cancellation (ours, or the peer's) says nothing against the bytes
    already written; a failed check (integrity, path, policy, code, tampering) does.
    """
    return isinstance(exc, (
        asyncio.CancelledError, KeyboardInterrupt, CancelledError, ConnectionLostError,
        PeerGoneError, TransferTimeoutError, RelayUnreachableError, CodeInUseError,
    ))


def reconnect_budget(timeout: float | None) -> float:
    """The reconnect budget in seconds from a user's ``reconnect_timeout`` (None: 0, off)."""
    if timeout is None:
        return 0.0
    if not timeout >= 0:  # NaN too
        raise UsageError("reconnect_timeout must be 0 (off) or a number of seconds.")
    return float(timeout)
