"""The relay server: pairs a sender with a receiver per code and forwards their messages.

One process serves many pairs. Each connection's handler reads the hello, joins a room
(pairing.Rooms decides), then pumps what its own peer sends to the partner. Memory per
pair stays bounded because a pump awaits the partner's ``send`` (which waits for the
socket to drain) before reading the next message, and the incoming queue is small, so a
slow receiver slows the sender down through TCP instead of filling the relay's memory.

Besides WebSocket, the port answers plain GETs: ``/healthz`` (the process is up),
``/readyz`` (it takes new peers: 503 while draining) and ``/metrics`` (Prometheus).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from .codes import room_from_path
from .errors import RemoteProtocolError
from .logs import AddressMode, event, show_address
from .messages import CloseCode, Hello, Ready, encode, parse_hello
from .metrics import LATENCY_SAMPLE_MASK, RelayMetrics, RelayStats, relay_metrics
from .pairing import Outcome, Paired, Phase, Refused, Rooms

__all__ = ["RelayConfig", "RelayStats", "Relay", "run_relay", "server_ssl_context"]

log = logging.getLogger("p2p_copy.relay")

_READY = encode(Ready())

#: Seconds stop() lets peers complete their close before dropping them; a peer that no
#: longer reads would otherwise never take its close frame, and stop() would never return.
_STOP_GRACE = 3.0

_DRAINING_REASON = "the relay is restarting; reconnect"


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
    #: Seconds drain() lets running pairs finish before closing them with 4005.
    drain_timeout: float = 60.0
    #: How peer addresses appear in logs.
    log_addresses: AddressMode = "blur"


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
        #: True from drain() on: no new peers are taken.
        self.draining = False
        #: The Prometheus view of ``stats``; None without prometheus_client.
        self.metrics: RelayMetrics | None = relay_metrics(self.stats, lambda: self.draining)
        self._rooms: Rooms[_Peer] = Rooms()
        self._server: Server | None = None
        self._connections: set[ServerConnection] = set()
        #: Connected, but no hello yet: drain() closes these at once.
        self._unannounced: set[ServerConnection] = set()
        self._idle = asyncio.Event()  # set while no connection is open
        self._idle.set()
        self._drain_started: asyncio.Future[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        """The ws:// or wss:// URL clients use, with the port actually bound."""
        scheme = "wss" if self.ssl_context else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        cfg = self.config
        self._drain_started = asyncio.get_running_loop().create_future()
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
        event(log, logging.INFO, "listening", url=self.url)
        if self.metrics is None:
            log.warning("metrics are off: prometheus_client is not installed "
                        "(pip install 'p2p-copy[relay]'); /metrics answers 404")

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

    async def drain(self, timeout: float | None = None) -> None:
        """Take no new peers, let running pairs finish for ``timeout`` s, then stop.

        While draining, ``/readyz`` answers 503, new WebSocket handshakes get HTTP 503,
        and peers not yet paired are closed with 4005; so are the pairs still running at
        the deadline (default ``config.drain_timeout``). Their clients can reconnect to a
        relay that is up.
        """
        if self._server is None:
            return
        timeout = self.config.drain_timeout if timeout is None else timeout
        if not self.draining:
            self.draining = True
            assert self._drain_started is not None
            self._drain_started.set_result(None)
            event(log, logging.INFO, "drain_start", timeout=timeout,
                  active_pairs=self.stats.active_pairs, waiting=self.stats.waiting)
            for ws in list(self._unannounced):
                self.stats.rejections["draining"] += 1
                task = asyncio.ensure_future(ws.close(CloseCode.RELAY_DRAINING, _DRAINING_REASON))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        cut = self.stats.active_pairs
        await self._close_all(CloseCode.RELAY_DRAINING, _DRAINING_REASON)
        await self.stop()
        event(log, logging.INFO, "drain_end", pairs_cut=cut)

    async def _close_all(self, code: int, reason: str) -> None:
        """Close every connection, dropping those that do not finish closing in time."""
        connections = list(self._connections)
        if not connections:
            return
        closing = [asyncio.ensure_future(ws.close(code, reason)) for ws in connections]
        await asyncio.wait(closing, timeout=_STOP_GRACE)
        for ws in connections:
            if ws.state is not State.CLOSED:
                ws.transport.abort()
        await asyncio.gather(*closing, return_exceptions=True)

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
        path = request.path.partition("?")[0]
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/readyz":
            if self.draining:
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
            return connection.respond(HTTPStatus.OK, "ready\n")
        if path == "/metrics":
            return self._metrics_response(connection, request.headers.get("Accept", ""))
        try:
            room_from_path(path)
        except ValueError as exc:
            self.stats.rejections["bad_path"] += 1
            return connection.respond(HTTPStatus.NOT_FOUND, f"Not a p2p-copy relay path: {exc}.\n")
        if self.draining:
            self.stats.rejections["draining"] += 1
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE, "The relay is restarting; reconnect.\n")
        return None

    def _metrics_response(self, connection: ServerConnection, accept: str) -> Response:
        if self.metrics is None:
            return connection.respond(
                HTTPStatus.NOT_FOUND,
                "Metrics are off: install prometheus-client (pip install 'p2p-copy[relay]').\n",
            )
        body, content_type = self.metrics.exposition(accept)
        response = connection.respond(HTTPStatus.OK, body.decode())
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = content_type
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        self.stats.connections += 1
        self.stats.open_connections += 1
        self._connections.add(ws)
        self._idle.clear()
        outcome = Outcome.ERRORY
        try:
            outcome = await self._serve_peer(ws)
        finally:
            self._connections.discard(ws)
            self._unannounced.discard(ws)
            if not self._connections:
                self._idle.set()
            self.stats.open_connections -= 1
            if _refused_as_too_big(ws):
                self.stats.rejections["too_big"] += 1
            self.stats.outcomes[outcome.value] += 1
            event(log, logging.DEBUG, "connection_end", outcome=outcome.value,
                  address=self._address(ws))

    async def _serve_peer(self, ws: ServerConnection) -> Outcome:
        hello = await self._read_hello(ws)
        if isinstance(hello, Outcome):
            return hello
        if self.draining:
            self.stats.rejections["draining"] += 1
            await ws.close(CloseCode.RELAY_DRAINING, _DRAINING_REASON)
            return Outcome.DRAINED
        peer = _Peer(ws, hello)
        joined = self._rooms.join(hello, peer)
        if isinstance(joined, Refused):
            self.stats.rejections["code_in_use"] += 1
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

    async def _read_hello(self, ws: ServerConnection) -> Hello | Outcome:
        self._unannounced.add(ws)
        try:
            async with asyncio.timeout(self.config.hello_timeout):
                first = await ws.recv()
        except TimeoutError:
            self.stats.rejections["hello_timeout"] += 1
            await ws.close(CloseCode.HELLO_TIMEOUT, "no hello arrived in time")
            return Outcome.ERRORY
        except ConnectionClosed:
            return Outcome.DRAINED if _shut_by_relay(ws) else Outcome.ERRORY
        finally:
            self._unannounced.discard(ws)
        try:
            hello = parse_hello(first)
        except RemoteProtocolError as exc:
            self.stats.rejections["bad_hello"] += 1
            await ws.close(CloseCode.BAD_HELLO, _reason(str(exc)))
            return Outcome.ERRORY
        room = _room(ws)
        if room is not None and room != hello.code_hash_hex:
            self.stats.rejections["bad_hello"] += 1
            await ws.close(CloseCode.BAD_HELLO,
                           "the room in the URL path and the hello's code_hash_hex disagree")
            return Outcome.ERRORY
        return hello

    async def _wait_for_partner(self, peer: _Peer) -> _Peer | Outcome:
        self.stats.waiting += 1
        closed = asyncio.ensure_future(peer.ws.wait_closed())
        assert self._drain_started is not None
        either: set[asyncio.Future[Any]] = {peer.partner, closed, self._drain_started}
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
            return Outcome.DRAINED if _shut_by_relay(peer.ws) else Outcome.IMPATIENT
        if self.draining:
            self.stats.rejections["draining"] += 1
            await peer.ws.close(CloseCode.RELAY_DRAINING, _DRAINING_REASON)
            return Outcome.DRAINED
        self.stats.rejections["peer_timeout"] += 1
        await peer.ws.close(CloseCode.PEER_TIMEOUT, "no partner joined with this code in time")
        return Outcome.LONELY

    async def _relay(self, peer: _Peer, partner: _Peer) -> Outcome:
        """Forward what ``peer`` sends to ``partner``; the partner's handler does the reverse."""
        peer.phase = Phase.RELAYING
        is_sender = peer.hello.role == "sender"
        if is_sender:
            self.stats.active_pairs += 1
        started = time.monotonic()
        stats = self.stats
        observe = self.metrics.observe_forward if self.metrics is not None else None
        forwarded = 0
        try:
            async for message in peer.ws:
                if observe is None or stats.messages_forwarded & LATENCY_SAMPLE_MASK:
                    await partner.ws.send(message)
                else:
                    sent_at = time.perf_counter()
                    await partner.ws.send(message)
                    observe(time.perf_counter() - sent_at)
                # Text arrives decoded: count its UTF-8 bytes, not its characters.
                size = len(message) if isinstance(message, bytes) else len(message.encode())
                stats.messages_forwarded += 1
                stats.bytes_forwarded += size
                forwarded += size
        except ConnectionClosed:
            pass  # either side closed; the close codes below say which
        finally:
            if is_sender:
                self.stats.active_pairs -= 1
            peer.phase = Phase.CLOSED
        outcome = await self._ending(peer, partner)
        if is_sender:
            self.stats.pairs[outcome.value] += 1
            event(log, logging.INFO, "pair_end", outcome=outcome.value,
                  seconds=round(time.monotonic() - started, 3), bytes=forwarded,
                  sender=self._address(peer.ws), receiver=self._address(partner.ws))
        return outcome

    async def _ending(self, peer: _Peer, partner: _Peer) -> Outcome:
        """Tell the partner how ``peer``'s connection ended; the outcome for ``peer``."""
        if peer.ws.close_code is None:
            # The partner went first; its handler closes this side with the right code.
            await peer.ws.wait_closed()
            if _shut_by_relay(peer.ws):
                return Outcome.DRAINED
            return Outcome.HAPPY if partner.ws.close_code == CloseCode.NORMAL else Outcome.ERRORY
        if _shut_by_relay(peer.ws):
            return Outcome.DRAINED  # drain() or stop() closes the partner as well
        # A clean close that the peer started stays clean; anything else (a crash, a
        # dropped network, a close the relay had to start, e.g. for an oversized
        # message) becomes PEER_GONE.
        if peer.ws.close_code == CloseCode.NORMAL and peer.ws.protocol.close_rcvd_then_sent:
            await partner.ws.close(CloseCode.NORMAL, "the peer closed the connection")
            return Outcome.HAPPY
        if peer.ws.protocol.close_rcvd_then_sent is False:
            # The relay closed this side first (the partner's handler did): it ended as
            # its partner did, and the partner needs no word from here.
            return Outcome.HAPPY if partner.ws.close_code == CloseCode.NORMAL else Outcome.ERRORY
        await partner.ws.close(CloseCode.PEER_GONE, "the peer disconnected")
        return Outcome.ERRORY

    def _address(self, ws: ServerConnection) -> str | None:
        try:
            host = str(ws.remote_address[0])
        except (TypeError, IndexError):
            host = "?"
        return show_address(host, self.config.log_addresses)


def _reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    data = text.encode()[:123]
    return data.decode(errors="ignore")


def _room(ws: ServerConnection) -> str | None:
    """The room named by the request path; the HTTP hook refused every other shape."""
    if ws.request is None:
        return None
    try:
        return room_from_path(ws.request.path)
    except ValueError:
        return None


def _shut_by_relay(ws: ServerConnection) -> bool:
    """Whether the relay closed ``ws`` first because it drains or stops."""
    sent = ws.protocol.close_sent
    return (
        sent is not None
        and sent.code in (CloseCode.GOING_AWAY, CloseCode.RELAY_DRAINING)
        and ws.protocol.close_rcvd_then_sent is not True
    )


def _refused_as_too_big(ws: ServerConnection) -> bool:
    """Whether the relay closed ``ws`` for a message over its size limit (not an echo)."""
    sent = ws.protocol.close_sent
    return (
        sent is not None
        and sent.code == CloseCode.MESSAGE_TOO_BIG
        and ws.protocol.close_rcvd_then_sent is not True
    )


async def run_relay(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    config: RelayConfig | None = None,
    announce: bool = True,
) -> None:
    """Serve until SIGTERM, then drain and return; cancelling (Ctrl-C) stops at once.

    ``announce`` prints the URL on stdout once listening (not for JSON-only output).
    """
    relay = Relay(host, port, ssl_context=ssl_context, config=config)
    await relay.start()
    if announce:
        print(f"Relay listening on {relay.url}", flush=True)
    loop = asyncio.get_running_loop()
    terminate = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, terminate.set)
    try:
        await terminate.wait()
        await relay.drain()
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)
        await relay.stop()
