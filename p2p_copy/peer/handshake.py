"""The asyncio side of secure.py: run the key exchange over the relay, then seal everything.

``handshake()`` turns a paired RelayLink into a SealedLink, which has the same
``send``/``recv``/``tell_peer`` as RelayLink, so that the drivers (sending.py,
receiving.py) run the transfer state machines the same way with or without encryption
(``--no-encrypt``): the handshake is not a state of those machines (docs/protocol.md §6.2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import Protocol, TypeVar

from ..errors import (
    EncryptionMismatchError,
    P2PCopyError,
    RemoteProtocolError,
    WrongCodeError,
)
from ..protocol.messages import (
    Confirm,
    ErrorMessage,
    Manifest,
    Pake,
    Role,
    Waiting,
    parse_message,
)
from ..protocol.secure import TAG_SIZE, Channel, KeyExchange, LaneKeys, is_control
from ..protocol.transfer import peer_error
from .link import RelayLink

__all__ = ["HANDSHAKE_TIMEOUT", "Link", "SealedLink", "handshake"]

#: Seconds to wait for each key exchange message once the peer has spoken.
HANDSHAKE_TIMEOUT = 60.0


class Link(Protocol):
    """What the drivers need of a connection to the peer: RelayLink or SealedLink."""

    role: Role

    async def send(self, message: str | bytes | memoryview) -> None: ...

    async def recv(self, timeout: float | None = None, waiting_for: str = "") -> str | bytes: ...

    async def tell_peer(self, message: str) -> None: ...


class SealedLink:
    """A RelayLink whose messages are sealed with the channel's keys in both directions."""

    def __init__(self, link: RelayLink, channel: Channel, lanes: LaneKeys) -> None:
        self.link = link
        self.role: Role = link.role
        self.channel = channel
        #: The rooms and keys of this transfer's other lanes (peer/lanes.py).
        self.lanes = lanes
        self._out = bytearray()

    async def send(self, message: str | bytes | memoryview) -> None:
        if isinstance(message, memoryview) and len(message) > 4096:
            # Data: seal into one reused buffer instead of a new one per message.
            if len(self._out) < len(message) + TAG_SIZE:
                self._out = bytearray(len(message) + TAG_SIZE)
            await self.link.send(self.channel.seal_into(message, self._out))
        else:
            await self.link.send(self.channel.seal(message))

    async def recv(self, timeout: float | None = None, waiting_for: str = "") -> str | bytes:
        inner = self.channel.open(await self.link.recv(timeout, waiting_for))
        if not is_control(inner):
            return inner
        try:
            return inner.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("The peer sent a control message not in UTF-8.") from None

    async def tell_peer(self, message: str) -> None:
        with contextlib.suppress(P2PCopyError):
            await self.link.tell_peer(self.channel.seal(message))


_Wanted = TypeVar("_Wanted", Pake, Confirm)
_T = TypeVar("_T")


def _expect(message: str | bytes, wanted: type[_Wanted], peer: Role) -> _Wanted:
    """The handshake message ``wanted`` from ``message``, or the error it amounts to."""
    if not isinstance(message, str):
        raise RemoteProtocolError(f"The {peer} sent binary data before the key exchange ended.")
    parsed = parse_message(message)
    if isinstance(parsed, ErrorMessage):
        error = peer_error(parsed, peer)
        # Nothing authenticates a message before key confirmation: say so.
        error.args = (f"{error} (Sent before the key exchange finished, so it may come from "
                      "the relay instead.)",)
        raise error
    if isinstance(parsed, Manifest) and peer == "sender":
        raise EncryptionMismatchError(
            "The sender was started with --no-encrypt, but the receiver encrypts. "
            "Run both sides with encryption (the default)."
        )
    if not isinstance(parsed, wanted):
        raise RemoteProtocolError(
            f"The {peer} broke the protocol: '{parsed.type}' arrived during the key exchange."
        )
    return parsed


async def handshake(
    link: RelayLink, code: str, *, timeout: float | None, waiting_for: str
) -> SealedLink:
    """Run SPAKE2 and key confirmation with the peer; the sender calls this after ``ready``.

    ``timeout`` bounds the wait for the peer's first message (the receiver waits for the
    sender to join here), HANDSHAKE_TIMEOUT each later one. On an error the caller tells
    the peer over ``link``, in plain text: no shared key may exist.
    """
    exchange = KeyExchange(code, link.role)
    peer: Role = "receiver" if link.role == "sender" else "sender"
    later = f"the {peer}'s key exchange"
    if link.role == "sender":
        await link.send(exchange.message())
        exchange.receive(_expect(await link.recv(timeout, waiting_for), Pake, peer))
        confirm = await _cut_short_is_a_guess(link.recv(HANDSHAKE_TIMEOUT, later))
        exchange.check(_expect(confirm, Confirm, peer))
        await _cut_short_is_a_guess(link.send(exchange.confirmation()))
    else:
        first = await link.recv(timeout, waiting_for)
        if isinstance(first, str) and isinstance(_parse_quietly(first), Waiting):
            first = await link.recv(timeout, waiting_for)  # the relay: no sender yet
        exchange.receive(_expect(first, Pake, peer))
        await _cut_short_is_a_guess(link.send(exchange.message()))
        await _cut_short_is_a_guess(link.send(exchange.confirmation()))
        answer = await _cut_short_is_a_guess(link.recv(HANDSHAKE_TIMEOUT, later))
        exchange.check(_expect(answer, Confirm, peer))
    return SealedLink(link, exchange.channel(), exchange.lanes())


async def _cut_short_is_a_guess(io: Awaitable[_T]) -> _T:
    """``io`` on the link once the peer's pake arrived; any end of the connection is a wrong code.

    From here until both confirmations have crossed, a peer that stops is what a code
    guess looks like: the receiver has shown its confirmation (enough to test one guess
    offline), and a relay that hangs up, whatever its close code, or times out, hides
    whether the guess was right. Retrying would hand it one more guess per attempt, and
    the reconnect budget is renewed whenever the real pair meets again, so the run ends
    here on both sides, which keeps it at one guess per run. (The peer's own verdicts,
    parsed from a message, keep their meaning: they are not raised by the link.)
    """
    try:
        return await io
    except P2PCopyError as exc:
        raise WrongCodeError(
            "The other side stopped in the middle of the key exchange, which is what a "
            "wrong code guess looks like, so p2p-copy does not retry. Check the code and "
            f"run both sides again. ({exc})"
        ) from exc


def _parse_quietly(text: str) -> object:
    with contextlib.suppress(P2PCopyError):
        return parse_message(text)
    return None

