"""A peer's connection to the relay, with network failures turned into p2p-copy errors.

Everything a peer learns from the relay itself arrives as a close code; this is the one
place that reads those codes (and connection failures) and says what they mean.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
)
from websockets.protocol import State

from ..errors import (
    AccessDeniedError,
    CodeInUseError,
    ConnectionLostError,
    P2PCopyError,
    PeerGoneError,
    RelayLimitError,
    RelayUnreachableError,
    RemoteProtocolError,
    TransferTimeoutError,
    UsageError,
)
from ..protocol.codes import room_url
from ..protocol.messages import CloseCode, Role
from .pinning import PinMismatchError, parse_fingerprint, pinned_context, shown

__all__ = ["MAX_MESSAGE_SIZE", "open_link", "closed_error", "client_ssl_context", "RelayLink"]

#: Largest message a peer accepts; ours send data messages of at most 1 MiB + 1 byte.
MAX_MESSAGE_SIZE = 2**21 + 2**16


def client_ssl_context(cafile: str | None, fingerprint: str | None = None) -> ssl.SSLContext:
    """Verify the relay against the system's trust store, or against ``cafile`` if given;
    with ``fingerprint``, accept only the certificate it names (pinning.py)."""
    if fingerprint is not None:
        if cafile is not None:
            raise UsageError("--fingerprint and --cafile exclude each other: the fingerprint "
                             "names the relay's certificate itself, no CA is needed.")
        return pinned_context(parse_fingerprint(fingerprint))
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"Cannot read the CA file {cafile!r}: {exc}") from None


def _check_url(server: str) -> str:
    parts = urlsplit(server)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise UsageError(
            f"The relay address {server!r} must look like wss://relay.example.org "
            "or ws://localhost:8765."
        )
    return parts.scheme


@asynccontextmanager
async def open_link(
    server: str,
    *,
    room: str | None = None,
    cafile: str | None = None,
    fingerprint: str | None = None,
    token: str | None = None,
    open_timeout: float = 20.0,
) -> AsyncIterator[ClientConnection]:
    """Connect to the relay at ``server``; RelayUnreachableError says why if we cannot.

    With ``room`` (the hello's code_hash_hex) the URL gets it as its last path segment,
    so that a proxy in front of several relays can route both peers of a room alike.
    ``token`` is a private relay's access token, sent as ``Authorization: Bearer``.
    ``fingerprint`` pins the relay's certificate (a relay served for one transfer).
    """
    scheme = _check_url(server)
    if fingerprint is not None and scheme != "wss":
        raise UsageError(f"--fingerprint names a TLS certificate, but {server} is not TLS: "
                         f"use wss://{server.partition('://')[2]}.")
    context = client_ssl_context(cafile, fingerprint) if scheme == "wss" else None
    try:
        ws = await connect(
            room_url(server, room) if room is not None else server,
            ssl=context,
            open_timeout=open_timeout,
            # After a failure the closing handshake can queue behind unread data; the
            # transfer's outcome is decided by then, so do not wait long for it.
            close_timeout=CLOSE_TIMEOUT,
            compression=None,
            max_size=MAX_MESSAGE_SIZE,
            additional_headers={"Authorization": f"Bearer {token}"} if token else None,
        )
    except PinMismatchError as exc:
        raise RelayUnreachableError(
            f"The relay's certificate is not the one the other side announced: its SHA-256 is "
            f"{shown(exc.got)}, not {fingerprint}. Check that the address "
            "and --fingerprint were copied whole from the same receive line; otherwise "
            "something between you and the relay is answering in its place."
        ) from None
    except ssl.SSLCertVerificationError as exc:
        advice = (
            "Check that the relay's certificate is issued for this host name and signed by "
            "the CA in --cafile."
            if cafile
            else "If the relay uses a private certificate authority, pass its certificate "
            "with --cafile; if the other side serves it (--serve), pass the --fingerprint "
            "its line shows."
        )
        raise RelayUnreachableError(
            f"The relay's TLS certificate is not trusted ({exc.verify_message}). {advice}"
        ) from None
    except InvalidURI as exc:
        # exc.msg, not exc: the URI it quotes carries the room.
        raise UsageError(f"The relay address {server!r} is not valid: {exc.msg}.") from None
    except InvalidHandshake as exc:
        status = exc.response.status_code if isinstance(exc, InvalidStatus) else None
        if status in (401, 403):
            raise AccessDeniedError(
                f"The relay at {server} is private and did not accept "
                + ("our access token. Check --relay-token." if token else
                   "us without an access token. Pass its token with --relay-token.")
            ) from None
        if status == 429:
            raise RelayLimitError(
                f"The relay at {server} is busy with connections from this address. "
                "Wait a minute and try again."
            ) from None
        if status == 503:
            raise RelayUnreachableError(
                f"The relay at {server} takes no new transfers right now (it is restarting "
                "or full). Try again in a moment."
            ) from None
        advice = "Check the address."
        if scheme == "ws" and (status == 400 or isinstance(exc, InvalidMessage)):
            # A TLS server hangs up on (or answers with a TLS alert) a plain HTTP request,
            # and a TLS proxy such as nginx answers 400: the likely slip is the scheme.
            advice = f"If the relay serves TLS, use wss://{server[len('ws://'):]} instead."
        raise RelayUnreachableError(
            f"{server} answered, but not as a p2p-copy relay ({exc}). {advice}"
        ) from None
    except (OSError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        raise RelayUnreachableError(
            f"Cannot reach the relay at {server} ({reason}). "
            "Check the address and that the relay is running."
        ) from None
    timeout = CLOSE_TIMEOUT
    try:
        yield ws
    except asyncio.CancelledError:
        # Ctrl-C: the person waits for the prompt. What we had to say is sent by now; the
        # relay's answer to our close may queue behind data it still forwards to us.
        timeout = CANCEL_CLOSE_TIMEOUT
        raise
    finally:
        await _close(ws, timeout)


#: Seconds the closing handshake with the relay may take before the connection is cut.
CLOSE_TIMEOUT = 3.0
#: The same after a cancellation (measured: ~0.1 s is what a close takes when nothing
#: queues; a receiver cancelled mid-transfer waited the whole CLOSE_TIMEOUT).
CANCEL_CLOSE_TIMEOUT = 0.5


async def _close(ws: ClientConnection, timeout: float = CLOSE_TIMEOUT) -> None:
    """Close ``ws`` within ``timeout``, cutting the TCP connection if the handshake stalls.

    websockets' close() first waits, without a deadline, until what we sent has left the
    write buffer; behind a peer that reads nothing (the case that ends a stalled send)
    that takes as long as the relay keeps the connection, ~17 s measured.
    """
    try:
        async with asyncio.timeout(timeout):
            await ws.close()
    except TimeoutError:
        ws.transport.abort()


def closed_error(exc: ConnectionClosed, role: Role) -> P2PCopyError:
    """What it means for ``role`` that the relay closed the connection before the end."""
    sent = exc.sent
    if sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG and not exc.rcvd_then_sent:
        # We hung up first: a message from the relay was larger than MAX_MESSAGE_SIZE.
        return RemoteProtocolError(
            f"The peer sent a message larger than {MAX_MESSAGE_SIZE:,} bytes; refused it."
        )
    frame = exc.rcvd
    if frame is None:
        return ConnectionLostError(
            "The connection to the relay was lost. Check the network and try again."
        )
    code, reason = frame.code, frame.reason
    other = "receiver" if role == "sender" else "sender"
    if code in (CloseCode.CODE_IN_USE, CloseCode.TRY_AGAIN_LATER):
        return CodeInUseError(
            f"Another {role} is already waiting with this code on the relay. "
            "Use a different code, or wait until that transfer has finished."
        )
    if code == CloseCode.PEER_TIMEOUT:
        return TransferTimeoutError(
            f"No {other} joined with this code in time. Check that both sides typed the "
            "same code and the same relay address, then try again."
        )
    if code == CloseCode.PEER_GONE:
        return PeerGoneError(
            f"The {other} disconnected before the transfer finished. Run both sides again."
        )
    if code == CloseCode.NORMAL:
        return PeerGoneError(
            f"The {other} closed the connection before the transfer finished. "
            "Run both sides again."
        )
    if code == CloseCode.GOING_AWAY:
        return ConnectionLostError("The relay is shutting down. Try again in a moment.")
    if code == CloseCode.RELAY_DRAINING:
        return ConnectionLostError(
            "The relay is restarting and closed the connection. Run the transfer again "
            "on both sides; it will go through a relay that is up."
        )
    if code == CloseCode.RATE_LIMITED:
        return RelayLimitError(
            "The relay refused us: too many connections from this address in a short time. "
            "Wait a minute and try again."
        )
    if code == CloseCode.RELAY_FULL:
        return RelayLimitError(
            "The relay is full right now (too many waiting peers or transfers). "
            "Try again later, or use another relay."
        )
    if code == CloseCode.PAIR_LIMIT:
        return RelayLimitError(
            f"The relay ended the transfer: it allows each pair only so many bytes or so "
            f"much time ({reason or 'limit reached'}). Use a relay without that limit."
        )
    if code == CloseCode.RELAY_MEMORY:
        return RelayLimitError(
            "The relay is short of memory (it holds as much data for transfers as it allows) "
            "and closed the connection. Try again later, or use another relay."
        )
    if code in (CloseCode.BAD_HELLO, CloseCode.HELLO_TIMEOUT, CloseCode.MESSAGE_TOO_BIG):
        return RemoteProtocolError(f"The relay refused our messages: {reason or code}.")
    return ConnectionLostError(f"The relay closed the connection (code {code}: {reason}).")


class RelayLink:
    """The relay connection, raising p2p-copy errors instead of websockets' ones."""

    def __init__(self, ws: ClientConnection, role: Role) -> None:
        self.ws = ws
        self.role = role

    async def send(self, message: str | bytes | memoryview) -> None:
        try:
            await self.ws.send(message)
        except ConnectionClosed as exc:
            raise closed_error(exc, self.role) from None
        except AttributeError:
            # CPython 3.11: a send that meets a connection the relay closed while our
            # buffer was flushing makes websockets abort() a transport that is gone
            # (asyncio's _write_ready forgets to mark it lost). The close frame came.
            if self.ws.protocol.state is not State.CLOSED:
                raise
            raise closed_error(self.ws.protocol.close_exc, self.role) from None

    async def recv(self, timeout: float | None = None, waiting_for: str = "") -> str | bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self.ws.recv()
        except ConnectionClosed as exc:
            raise closed_error(exc, self.role) from None
        except TimeoutError:
            raise TransferTimeoutError(
                f"Gave up after {timeout:g} s waiting for {waiting_for}."
            ) from None

    async def tell_peer(self, message: str | bytes) -> None:
        """Best effort: tell the peer why we stop, without waiting long for a broken link."""
        with contextlib.suppress(P2PCopyError, TimeoutError, OSError):
            async with asyncio.timeout(2):
                await self.send(message)
