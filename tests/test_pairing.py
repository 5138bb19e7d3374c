"""The relay's pairing table, without a relay: who waits, who pairs, who is refused."""

from __future__ import annotations

from p2p_copy.protocol.messages import CloseCode, Hello, Role
from p2p_copy.relay.pairing import Paired, Refused, Rooms, Wait
from tests.protocol_pair import sha256_hex

ROOM = sha256_hex(b"room one")
OTHER_ROOM = sha256_hex(b"room two")


class Conn:
    """A stand-in connection: only its identity matters to Rooms."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Conn({self.name!r})"


def hello(role: Role, room: str = ROOM) -> Hello:
    return Hello(code_hash_hex=room, role=role)


def test_first_peer_waits() -> None:
    """The first peer in an empty room waits there."""
    rooms: Rooms[Conn] = Rooms()
    assert rooms.join(hello("sender"), Conn("s")) == Wait()
    assert len(rooms) == 1


def test_other_role_pairs_and_frees_the_room() -> None:
    """A peer of the other role meets the waiting one, and the room is empty again."""
    rooms: Rooms[Conn] = Rooms()
    receiver, sender = Conn("r"), Conn("s")
    rooms.join(hello("receiver"), receiver)
    result = rooms.join(hello("sender"), sender)
    assert isinstance(result, Paired)
    assert result.partner is receiver and result.partner_role == "receiver"
    assert len(rooms) == 0


def test_pairing_works_in_either_order() -> None:
    """Whoever comes second is told the first one's connection and role."""
    rooms: Rooms[Conn] = Rooms()
    sender, receiver = Conn("s"), Conn("r")
    rooms.join(hello("sender"), sender)
    result = rooms.join(hello("receiver"), receiver)
    assert result == Paired(sender, "sender")


def test_third_peer_starts_a_new_transfer() -> None:
    """After a pair formed, a third peer with the same code waits as a fresh transfer."""
    rooms: Rooms[Conn] = Rooms()
    rooms.join(hello("sender"), Conn("s1"))
    rooms.join(hello("receiver"), Conn("r1"))
    assert rooms.join(hello("sender"), Conn("s2")) == Wait()
    assert len(rooms) == 1


def test_same_role_refused_and_waiting_peer_stays() -> None:
    """A second peer of the same role is refused with CODE_IN_USE; the first keeps waiting."""
    rooms: Rooms[Conn] = Rooms()
    first, intruder, receiver = Conn("s1"), Conn("s2"), Conn("r")
    rooms.join(hello("sender"), first)
    refused = rooms.join(hello("sender"), intruder)
    assert isinstance(refused, Refused)
    assert refused.code is CloseCode.CODE_IN_USE and int(refused.code) == 4002
    assert "sender" in refused.reason
    # Close reasons must fit a WebSocket close frame.
    assert len(refused.reason.encode()) <= 123
    assert rooms.join(hello("receiver"), receiver) == Paired(first, "sender")


def test_same_role_refused_for_receivers_too() -> None:
    """The rule holds for a waiting receiver as well, named in the reason."""
    rooms: Rooms[Conn] = Rooms()
    rooms.join(hello("receiver"), Conn("r1"))
    refused = rooms.join(hello("receiver"), Conn("r2"))
    assert isinstance(refused, Refused) and refused.code is CloseCode.CODE_IN_USE
    assert "receiver" in refused.reason


def test_refused_peer_leaving_does_not_evict_the_waiting_one() -> None:
    """The refused newcomer's leave() is a no-op; the waiting peer still pairs."""
    rooms: Rooms[Conn] = Rooms()
    first, intruder = Conn("s1"), Conn("s2")
    rooms.join(hello("sender"), first)
    rooms.join(hello("sender"), intruder)
    assert rooms.leave(hello("sender"), intruder) is False
    assert len(rooms) == 1
    assert rooms.join(hello("receiver"), Conn("r")) == Paired(first, "sender")


def test_leave_frees_a_waiting_peers_room() -> None:
    """A waiting peer that leaves frees its room; the next peer waits instead of pairing."""
    rooms: Rooms[Conn] = Rooms()
    sender = Conn("s")
    rooms.join(hello("sender"), sender)
    assert rooms.leave(hello("sender"), sender) is True
    assert len(rooms) == 0
    assert rooms.join(hello("receiver"), Conn("r")) == Wait()


def test_leave_after_pairing_returns_false() -> None:
    """Once paired, leave() reports False and does not touch a new waiting peer."""
    rooms: Rooms[Conn] = Rooms()
    sender, receiver, newcomer = Conn("s"), Conn("r"), Conn("s2")
    rooms.join(hello("sender"), sender)
    rooms.join(hello("receiver"), receiver)
    rooms.join(hello("sender"), newcomer)
    assert rooms.leave(hello("sender"), sender) is False
    assert rooms.leave(hello("receiver"), receiver) is False
    assert len(rooms) == 1
    assert rooms.join(hello("receiver"), Conn("r2")) == Paired(newcomer, "sender")


def test_leave_twice_returns_false() -> None:
    """A second leave() of the same peer finds nothing to free."""
    rooms: Rooms[Conn] = Rooms()
    sender = Conn("s")
    rooms.join(hello("sender"), sender)
    assert rooms.leave(hello("sender"), sender) is True
    assert rooms.leave(hello("sender"), sender) is False


def test_leave_matches_the_connection_not_an_equal_one() -> None:
    """Only the very connection that waits can free the room, not an equal-looking one."""

    class EqualConn(Conn):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = Conn.__hash__

    rooms: Rooms[EqualConn] = Rooms()
    waiting = EqualConn("a")
    rooms.join(hello("sender"), waiting)
    assert rooms.leave(hello("sender"), EqualConn("b")) is False
    assert len(rooms) == 1


def test_rooms_are_independent() -> None:
    """Peers with different code hashes neither pair nor refuse each other."""
    rooms: Rooms[Conn] = Rooms()
    s1, s2, r2 = Conn("s1"), Conn("s2"), Conn("r2")
    assert rooms.join(hello("sender", ROOM), s1) == Wait()
    assert rooms.join(hello("sender", OTHER_ROOM), s2) == Wait()
    assert len(rooms) == 2
    assert rooms.join(hello("receiver", OTHER_ROOM), r2) == Paired(s2, "sender")
    assert len(rooms) == 1
    assert rooms.leave(hello("sender", OTHER_ROOM), s2) is False
    assert rooms.leave(hello("sender", ROOM), s1) is True
    assert len(rooms) == 0


def test_rooms_differ_by_any_hex_digit() -> None:
    """Code hashes that differ in their last digit are different rooms."""
    rooms: Rooms[Conn] = Rooms()
    near = ROOM[:-1] + ("0" if ROOM[-1] != "0" else "1")
    rooms.join(hello("sender", ROOM), Conn("s"))
    assert rooms.join(hello("receiver", near), Conn("r")) == Wait()
    assert len(rooms) == 2


# --- hello version 2, fresh codes and the relay's caps -----------------------------------


def hello_v2(role: Role, room: str = ROOM, *, fresh: bool | None = None) -> Hello:
    return Hello(code_hash_hex=room, role=role, version=2, fresh=fresh)


FULL = Refused(CloseCode.RELAY_FULL, "the relay is full; try again later", label="waiting_full")


def test_version_2_peer_that_waits_is_told_so() -> None:
    """A version-2 hello that has to wait gets Wait(confirm=True): the relay sends waiting."""
    rooms: Rooms[Conn] = Rooms()
    assert rooms.join(hello_v2("sender"), Conn("s")) == Wait(confirm=True)


def test_version_1_peer_that_waits_is_told_nothing() -> None:
    """A hello without version (p2p-copy 0.1.x) or with version 1 waits silently, as before."""
    rooms: Rooms[Conn] = Rooms()
    assert rooms.join(hello("sender"), Conn("s")) == Wait(confirm=False)
    v1 = Hello(code_hash_hex=OTHER_ROOM, role="sender", version=1)
    assert rooms.join(v1, Conn("s1")) == Wait(confirm=False)


def test_version_2_peer_that_pairs_at_once_pairs() -> None:
    """A version-2 hello meeting a waiting partner pairs as any other (no waiting to confirm)."""
    rooms: Rooms[Conn] = Rooms()
    sender = Conn("s")
    rooms.join(hello("sender"), sender)
    assert rooms.join(hello_v2("receiver"), Conn("r")) == Paired(sender, "sender")


def test_fresh_hello_in_an_empty_room_waits() -> None:
    """A fresh code's first peer waits as usual, and is told so."""
    rooms: Rooms[Conn] = Rooms()
    assert rooms.join(hello_v2("sender", fresh=True), Conn("s")) == Wait(confirm=True)


def test_fresh_hello_never_meets_a_waiting_stranger() -> None:
    """A fresh hello where a peer of the other role waits is refused 4002, not paired."""
    rooms: Rooms[Conn] = Rooms()
    stranger = Conn("r")
    rooms.join(hello("receiver"), stranger)
    refused = rooms.join(hello_v2("sender", fresh=True), Conn("s"))
    assert isinstance(refused, Refused)
    assert refused.code is CloseCode.CODE_IN_USE and refused.label == "code_in_use"
    assert len(refused.reason.encode()) <= 123
    # The waiting peer is left alone and still pairs with its real partner.
    assert len(rooms) == 1
    assert rooms.join(hello("sender"), Conn("s2")) == Paired(stranger, "receiver")


def test_fresh_hello_refused_when_the_same_role_waits() -> None:
    """A fresh hello where a peer of the same role waits is refused too; that peer stays."""
    rooms: Rooms[Conn] = Rooms()
    first = Conn("s1")
    rooms.join(hello_v2("sender"), first)
    refused = rooms.join(hello_v2("sender", fresh=True), Conn("s2"))
    assert isinstance(refused, Refused) and refused.code is CloseCode.CODE_IN_USE
    assert rooms.join(hello_v2("receiver"), Conn("r")) == Paired(first, "sender")


def test_fresh_false_pairs_as_usual() -> None:
    """fresh: false (a typed code) pairs with whoever waits, like a hello without it."""
    rooms: Rooms[Conn] = Rooms()
    sender = Conn("s")
    rooms.join(hello_v2("sender", fresh=True), sender)
    assert rooms.join(hello_v2("receiver", fresh=False), Conn("r")) == Paired(sender, "sender")


def test_wait_refusal_applies_only_to_a_peer_that_would_wait() -> None:
    """With the waiting cap reached, a newcomer that would wait is refused; the room stays empty."""
    rooms: Rooms[Conn] = Rooms()
    assert rooms.join(hello("sender"), Conn("s"), refuse_wait=FULL) is FULL
    assert len(rooms) == 0


def test_wait_refusal_does_not_stop_a_pairing() -> None:
    """A peer that pairs takes no waiting slot, so the waiting cap does not refuse it."""
    rooms: Rooms[Conn] = Rooms()
    sender = Conn("s")
    rooms.join(hello("sender"), sender)
    assert rooms.join(hello("receiver"), Conn("r"), refuse_wait=FULL) == Paired(sender, "sender")


def test_pair_refusal_keeps_the_waiting_peer() -> None:
    """With the pair cap reached, the newcomer is refused and the waiting peer keeps its room."""
    rooms: Rooms[Conn] = Rooms()
    sender = Conn("s")
    rooms.join(hello("sender"), sender)
    pairs_full = Refused(CloseCode.RELAY_FULL, "too many transfers", label="pairs_full")
    assert rooms.join(hello("receiver"), Conn("r1"), refuse_pair=pairs_full) is pairs_full
    assert len(rooms) == 1
    assert rooms.join(hello("receiver"), Conn("r2")) == Paired(sender, "sender")


def test_pair_refusal_does_not_stop_a_peer_that_waits() -> None:
    """The pair cap does not refuse a peer that only waits."""
    rooms: Rooms[Conn] = Rooms()
    pairs_full = Refused(CloseCode.RELAY_FULL, "too many transfers", label="pairs_full")
    assert rooms.join(hello("sender"), Conn("s"), refuse_pair=pairs_full) == Wait()


def test_code_in_use_wins_over_a_cap() -> None:
    """A same-role newcomer is told the code is in use, not that the relay is full."""
    rooms: Rooms[Conn] = Rooms()
    rooms.join(hello("sender"), Conn("s1"))
    refused = rooms.join(hello("sender"), Conn("s2"), refuse_wait=FULL, refuse_pair=FULL)
    assert isinstance(refused, Refused) and refused.code is CloseCode.CODE_IN_USE
