"""How the relay pairs peers, as a table without I/O.

Rules:
- A peer joins the room named by its hello's ``code_hash_hex`` with its role.
- An empty room: the peer waits there.
- A room with a waiting peer of the other role: the two are paired and the room is freed.
- A room with a waiting peer of the same role: the newcomer is refused (CODE_IN_USE) and
  the waiting peer is left alone, so that a stray or hostile peer cannot evict it.
- A waiting peer that leaves or times out frees its room.

Each connection also moves through ``Phase`` and ends with one ``Outcome`` for logs
and metrics (after magic-wormhole's transit relay).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, TypeVar

from .messages import CloseCode, Hello, Role

__all__ = ["Phase", "Outcome", "Wait", "Paired", "Refused", "Rooms"]

Conn = TypeVar("Conn")


class Phase(enum.IntEnum):
    AWAIT_HELLO = 0
    WAITING = 1
    RELAYING = 2
    CLOSED = 3


class Outcome(enum.Enum):
    HAPPY = "happy"  # paired, and both sides closed cleanly
    LONELY = "lonely"  # no partner joined in time
    IMPATIENT = "impatient"  # left while still waiting for a partner
    REDUNDANT = "redundant"  # its role was already taken for this code
    ERRORY = "errory"  # bad or missing hello, or a dropped connection while relaying
    DRAINED = "drained"  # the relay closed it because it was draining or stopping


@dataclass(frozen=True)
class Wait:
    """The peer is now the room's waiting peer."""


@dataclass(frozen=True)
class Paired(Generic[Conn]):
    """The peer met ``partner``, who was waiting; the room is free again."""

    partner: Conn
    partner_role: Role


@dataclass(frozen=True)
class Refused:
    """The peer cannot join; close it with ``code`` and ``reason``."""

    code: CloseCode
    reason: str


class Rooms(Generic[Conn]):
    """Waiting peers by room. At most one peer waits per room."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[Role, Conn]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def join(self, hello: Hello, conn: Conn) -> Wait | Paired[Conn] | Refused:
        waiting = self._waiting.get(hello.code_hash_hex)
        if waiting is None:
            self._waiting[hello.code_hash_hex] = (hello.role, conn)
            return Wait()
        role, partner = waiting
        if role == hello.role:
            return Refused(
                CloseCode.CODE_IN_USE,
                f"a {role} is already waiting with this code; use another code",
            )
        del self._waiting[hello.code_hash_hex]
        return Paired(partner, role)

    def leave(self, hello: Hello, conn: Conn) -> bool:
        """Free the room if ``conn`` still waits in it; False if it was paired meanwhile."""
        waiting = self._waiting.get(hello.code_hash_hex)
        if waiting is not None and waiting[1] is conn:
            del self._waiting[hello.code_hash_hex]
            return True
        return False
