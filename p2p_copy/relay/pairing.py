"""How the relay pairs peers, as a table without I/O.

Rules:
- A peer joins the room named by its hello's ``code_hash_hex`` with its role.
- An empty room: the peer waits there.
- A room with a waiting peer of the other role: the two are paired and the room is freed.
- A room with a waiting peer of the same role: the newcomer is refused (CODE_IN_USE) and
  the waiting peer is left alone, so that a stray or hostile peer cannot evict it.
- A ``fresh`` hello (its code was just generated) meets nobody it did not expect: if
  anyone waits in the room, of either role, it is refused (CODE_IN_USE) and the waiting
  peer is left alone. A generated code must never pair with a stranger's.
- The relay's caps: a peer that would wait, or would pair, may instead be refused with
  the refusal the relay passes in (``refuse_wait``, ``refuse_pair``); the room is then
  left as it was.
- A version-2 hello that has to wait is told so (``Wait.confirm``); version-1 peers
  (p2p-copy 0.1.x, no ``version``) are told nothing, as before.
- A waiting peer that leaves or times out frees its room.

What a connection goes through around this table, and how it ends, is lifecycle.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from ..protocol.messages import CloseCode, Hello, Role
from .lifecycle import Reason

__all__ = ["Wait", "Paired", "Refused", "Rooms"]

Conn = TypeVar("Conn")


@dataclass(frozen=True)
class Wait:
    """The peer is now the room's waiting peer; if ``confirm``, send it ``waiting``."""

    confirm: bool = False


@dataclass(frozen=True)
class Paired(Generic[Conn]):
    """The peer met ``partner``, who was waiting; the room is free again."""

    partner: Conn
    partner_role: Role


@dataclass(frozen=True)
class Refused:
    """The peer cannot join; close it with ``code`` and ``reason``, count it as ``label``."""

    code: CloseCode
    reason: str
    label: Reason = Reason.CODE_IN_USE


class Rooms(Generic[Conn]):
    """Waiting peers by room. At most one peer waits per room."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[Role, Conn]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def join(
        self,
        hello: Hello,
        conn: Conn,
        *,
        refuse_wait: Refused | None = None,
        refuse_pair: Refused | None = None,
    ) -> Wait | Paired[Conn] | Refused:
        """Seat ``conn`` per the rules above; ``refuse_*``: the relay's cap is reached."""
        waiting = self._waiting.get(hello.code_hash_hex)
        if waiting is None:
            if refuse_wait is not None:
                return refuse_wait
            self._waiting[hello.code_hash_hex] = (hello.role, conn)
            return Wait(confirm=(hello.version or 1) >= 2)
        role, partner = waiting
        if hello.fresh:
            return Refused(
                CloseCode.CODE_IN_USE,
                "this new code is already in use on the relay; start again for another code",
            )
        if role == hello.role:
            return Refused(
                CloseCode.CODE_IN_USE,
                f"a {role} is already waiting with this code; use another code",
            )
        if refuse_pair is not None:
            return refuse_pair
        del self._waiting[hello.code_hash_hex]
        return Paired(partner, role)

    def leave(self, hello: Hello, conn: Conn) -> bool:
        """Free the room if ``conn`` still waits in it; False if it was paired meanwhile."""
        waiting = self._waiting.get(hello.code_hash_hex)
        if waiting is not None and waiting[1] is conn:
            del self._waiting[hello.code_hash_hex]
            return True
        return False
