"""The relay server: pairs a sender with a receiver per code and forwards their messages.

One process serves many pairs. Each connection's handler reads the hello, joins a room
(pairing.Rooms decides), then pumps what its own peer sends to the partner. Memory per
pair stays bounded because a pump awaits the partner's ``send`` (which waits for the
socket to drain) before reading the next message, and the incoming queue is small, so a
slow receiver slows the sender down through TCP instead of filling the relay's memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .errors import RemoteProtocolError
from .messages import CloseCode, Hello, Ready, encode, parse_hello
from .pairing import Outcome, Paired, Phase, Refused, Rooms

__all__ = ["RelayConfig", "RelayStats", "Relay", "server_ssl_context"]

log = logging.getLogger("p2p_copy.relay")

_READY = encode(Ready())

#: Seconds stop() lets peers complete their close before dropping them; a peer that no
#: longer reads would otherwise never take its close frame, and stop() would never return.
_STOP_GRACE = 3.0


@dataclass(frozen=True)
class RelayConfig:
    """Limits and timeouts of a relay; the defaults suit a public relay."""

    #: Seconds a new connection has to send its hello.
    hello_timeout: float = 10.0
    #: Seconds a peer waits for its partner before the relay gives up on it.
    peer_timeout: float = 600.0
    #: Largest message, in bytes. p2p-copy 0.1.x clients send messages up to 2 MiB.
    max_message_size: int = 2**21
    #: Incoming frames buffered per connection before the relay stops reading from it.
    max_queue: int = 4
    #: Keepalive pings find peers that vanished without closing.
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0


@dataclass
class RelayStats:
    """Counters an operator (and the tests) can read while the relay runs."""

    connections: int = 0
    open_connections: int = 0
    active_pairs: int = 0
    messages_forwarded: int = 0
    bytes_forwarded: int = 0
    waiting: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)


class _Peer:
    """One connection's place in the relay: its hello, phase and partner."""

    def __init__(self, ws: ServerConnection, hello: Hello) -> None:
        self.ws = ws
        self.hello = hello
        self.phase = Phase.WAITING
        self.partner: asyncio.Future[_Peer] = asyncio.get_running_loop().create_future()


def server_ssl_context(certfile: str, keyfile: str | None = None) -> ssl.SSLContext:
    """A TLS context for serving wss:// with the given PEM certificate chain and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    return context


class Relay:
    """A running relay. ``async with Relay() as relay:`` serves on a free loopback port."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        config: RelayConfig | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.config = config or RelayConfig()
        self.stats = RelayStats()
        self._rooms: Rooms[_Peer] = Rooms()
        self._server: Server | None = None
        self._connections: set[ServerConnection] = set()

    @property
    def url(self) -> str:
        """The ws:// or wss:// URL clients use, with the port actually bound."""
        scheme = "wss" if self.ssl_context else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        cfg = self.config
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            ssl=self.ssl_context,
            process_request=self._http,
            compression=None,
            max_size=cfg.max_message_size,
            max_queue=cfg.max_queue,
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout,
            logger=logging.getLogger("p2p_copy.relay.websockets"),
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("relay listening on %s", self.url)

    async def stop(self) -> None:
        """Close every connection (code 1001) and wait for the handlers to end."""
        if self._server is not None:
            self._server.close()
            try:
                async with asyncio.timeout(_STOP_GRACE):
                    await self._server.wait_closed()
            except TimeoutError:
                for ws in self._connections:
                    ws.transport.abort()
                await self._server.wait_closed()
            self._server = None

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def __aenter__(self) -> Relay:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- HTTP and WebSocket handling ------------------------------------------------

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.partition("?")[0] == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        self.stats.connections += 1
        self.stats.open_connections += 1
        self._connections.add(ws)
        outcome = Outcome.ERRORY
        try:
            outcome = await self._serve_peer(ws)
        finally:
            self._connections.discard(ws)
            self.stats.open_connections -= 1
            self.stats.outcomes[outcome.value] += 1
            log.debug("connection from %s ended: %s", _address(ws), outcome.value)

    async def _serve_peer(self, ws: ServerConnection) -> Outcome:
        hello = await self._read_hello(ws)
        if hello is None:
            return Outcome.ERRORY
        peer = _Peer(ws, hello)
        joined = self._rooms.join(hello, peer)
        if isinstance(joined, Refused):
            await ws.close(joined.code, joined.reason)
            return Outcome.REDUNDANT
        if isinstance(joined, Paired):
            partner: _Peer = joined.partner
            sender = peer if hello.role == "sender" else partner
            with contextlib.suppress(ConnectionClosed):
                await sender.ws.send(_READY)
            partner.partner.set_result(peer)
        else:
            waited = await self._wait_for_partner(peer)
            if isinstance(waited, Outcome):
                return waited
            partner = waited
        return await self._relay(peer, partner)

    async def _read_hello(self, ws: ServerConnection) -> Hello | None:
        try:
            async with asyncio.timeout(self.config.hello_timeout):
                first = await ws.recv()
        except TimeoutError:
            await ws.close(CloseCode.HELLO_TIMEOUT, "no hello arrived in time")
            return None
        except ConnectionClosed:
            return None
        try:
            return parse_hello(first)
        except RemoteProtocolError as exc:
            await ws.close(CloseCode.BAD_HELLO, _reason(str(exc)))
            return None

    async def _wait_for_partner(self, peer: _Peer) -> _Peer | Outcome:
        self.stats.waiting += 1
        closed = asyncio.ensure_future(peer.ws.wait_closed())
        either: set[asyncio.Future[Any]] = {peer.partner, closed}
        try:
            await asyncio.wait(
                either,
                timeout=self.config.peer_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            closed.cancel()
            self.stats.waiting -= 1
        if peer.partner.done() or not self._rooms.leave(peer.hello, peer):
            # Paired, possibly at the last moment: the partner is about to hand itself over.
            return await peer.partner
        if closed.done() and not closed.cancelled():
            return Outcome.IMPATIENT
        await peer.ws.close(CloseCode.PEER_TIMEOUT, "no partner joined with this code in time")
        return Outcome.LONELY

    async def _relay(self, peer: _Peer, partner: _Peer) -> Outcome:
        """Forward what ``peer`` sends to ``partner``; the partner's handler does the reverse."""
        peer.phase = Phase.RELAYING
        if peer.hello.role == "sender":
            self.stats.active_pairs += 1
        stats = self.stats
        try:
            async for message in peer.ws:
                await partner.ws.send(message)
                stats.messages_forwarded += 1
                # Text arrives decoded: count its UTF-8 bytes, not its characters.
                stats.bytes_forwarded += (
                    len(message) if isinstance(message, bytes) else len(message.encode())
                )
        except ConnectionClosed:
            pass  # either side closed; the close codes below say which
        finally:
            if peer.hello.role == "sender":
                self.stats.active_pairs -= 1
            peer.phase = Phase.CLOSED
        if peer.ws.close_code is None:
            # The partner went first; its handler closes this side with the right code.
            await peer.ws.wait_closed()
            return Outcome.HAPPY if partner.ws.close_code == CloseCode.NORMAL else Outcome.ERRORY
        # Tell the partner how this side ended: a clean close that the peer started stays
        # clean; anything else (a crash, a dropped network, a close the relay had to
        # start, e.g. for an oversized message) becomes PEER_GONE.
        if peer.ws.close_code == CloseCode.NORMAL and peer.ws.protocol.close_rcvd_then_sent:
            await partner.ws.close(CloseCode.NORMAL, "the peer closed the connection")
            return Outcome.HAPPY
        if peer.ws.protocol.close_rcvd_then_sent is False:
            # The relay closed this side first (the partner's handler or stop() did): it
            # ended as its partner did, and the partner needs no word from here.
            return Outcome.HAPPY if partner.ws.close_code == CloseCode.NORMAL else Outcome.ERRORY
        await partner.ws.close(CloseCode.PEER_GONE, "the peer disconnected")
        return Outcome.ERRORY


def _reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    data = text.encode()[:123]
    return data.decode(errors="ignore")


def _address(ws: ServerConnection) -> str:
    try:
        return str(ws.remote_address[0])
    except (TypeError, IndexError):
        return "?"


async def run_relay(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    config: RelayConfig | None = None,
) -> None:
    """Serve until cancelled (the CLI cancels on SIGINT and SIGTERM)."""
    relay = Relay(host, port, ssl_context=ssl_context, config=config)
    await relay.start()
    print(f"Relay listening on {relay.url}", flush=True)
    try:
        await relay.serve_forever()
    finally:
        await relay.stop()
