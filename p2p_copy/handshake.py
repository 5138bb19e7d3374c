"""The asyncio side of secure.py: run the key exchange over the relay, then seal everything.

``handshake()`` turns a paired RelayLink into a SealedLink, which has the same
``send``/``recv``/``tell_peer`` as RelayLink, so that api.py drives the transfer state
machines the same way with or without encryption (``--no-encrypt``).
"""

from __future__ import annotations

import contextlib
from typing import Protocol, TypeVar

from .client import RelayLink
from .errors import (
    ConnectionLostError,
    EncryptionMismatchError,
    P2PCopyError,
    PeerGoneError,
    RemoteProtocolError,
    WrongCodeError,
)
from .messages import (
    Confirm,
    ErrorMessage,
    Manifest,
    Pake,
    Role,
    Waiting,
    parse_message,
)
from .secure import TAG_SIZE, Channel, KeyExchange, is_control
from .transfer import peer_error

__all__ = ["HANDSHAKE_TIMEOUT", "Link", "SealedLink", "handshake"]

#: Seconds to wait for each key exchange message once the peer has spoken.
HANDSHAKE_TIMEOUT = 60.0


class Link(Protocol):
    """What api.py needs of a connection to the peer: RelayLink or SealedLink."""

    role: Role

    async def send(self, message: str | bytes | memoryview) -> None: ...

    async def recv(self, timeout: float | None = None, waiting_for: str = "") -> str | bytes: ...

    async def tell_peer(self, message: str) -> None: ...


class SealedLink:
    """A RelayLink whose messages are sealed with the channel's keys in both directions."""

    def __init__(self, link: RelayLink, channel: Channel) -> None:
        self.link = link
        self.role: Role = link.role
        self.channel = channel
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
        first = await link.recv(timeout, waiting_for)
        exchange.receive(_expect(first, Pake, peer))
        exchange.check(_expect(await link.recv(HANDSHAKE_TIMEOUT, later), Confirm, peer))
        await link.send(exchange.confirmation())
    else:
        first = await link.recv(timeout, waiting_for)
        if isinstance(first, str) and isinstance(_parse_quietly(first), Waiting):
            first = await link.recv(timeout, waiting_for)  # the relay: no sender yet
        exchange.receive(_expect(first, Pake, peer))
        await link.send(exchange.message())
        await link.send(exchange.confirmation())
        try:
            answer = await link.recv(HANDSHAKE_TIMEOUT, later)
        except (ConnectionLostError, PeerGoneError):
            # Our confirmation lets whoever sent that pake test one code guess offline;
            # a sender that hangs up now is what a guessing relay looks like. Retrying
            # would hand it another guess each time, so this counts as a wrong code.
            raise WrongCodeError(
                "The other side hung up in the middle of the key exchange, which is what a "
                "wrong code guess looks like, so p2p-copy does not retry. Check the code and "
                "run both sides again."
            ) from None
        exchange.check(_expect(answer, Confirm, peer))
    return SealedLink(link, exchange.channel())


def _parse_quietly(text: str) -> object:
    with contextlib.suppress(P2PCopyError):
        return parse_message(text)
    return None

