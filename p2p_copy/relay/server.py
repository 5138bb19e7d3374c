"""The relay server: pairs a sender with a receiver per code and forwards their messages.

One process serves many pairs. Each connection's handler reads the hello, joins a room
(pairing.Rooms decides), then passes on what its own peer sends to the partner: binary
frames as they are parsed (forwarding.py), the rest as whole messages. Memory per pair
stays bounded because reading from a peer pauses while its partner's socket has not
drained, and the incoming queue is small, so a slow receiver slows the sender down
through TCP instead of filling the relay's memory.

Besides WebSocket, the port answers plain GETs: ``/healthz`` (the process is up),
``/readyz`` (it takes new peers: 503 while draining), ``/metrics`` (Prometheus), and
``/`` and ``/static/NAME``: the browser peer's page (web.py; ``RelayConfig.web``).

Limits (admission.py decides, this module enforces): connection, waiting and pair caps
per address and per network, a join rate per address, a budget for the bytes held for
peers in all (forwarding.py counts them), optional byte and time caps per pair, and
optional access tokens. A peer over a limit gets an HTTP status or a close code that says which, and
the relay goes on serving everyone else.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import os
import re
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHeader
from websockets.headers import parse_subprotocol
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.typing import Subprotocol

from .. import inprocess
from ..errors import RemoteProtocolError
from ..protocol.codes import room_from_path
from ..protocol.messages import CloseCode, Hello, Ready, Waiting, encode, parse_hello
from ..signals import DRAIN, on_signals
from .admission import LOOPBACK, Admission, Limits, Refusal, client_host, parse_networks
from .forwarding import Budget, ForwardingConnection, FrameTap, Verdict
from .lifecycle import Event, Lifecycle, Reason, closed
from .logs import AddressMode, event, show_address
from .metrics import LATENCY_SAMPLE_MASK, RelayMetrics, RelayStats, relay_metrics
from .pairing import Paired, Refused, Rooms
from .web import WebApp, connect_source

__all__ = ["RelayConfig", "RelayStats", "Relay", "run_relay", "server_ssl_context",
           "default_max_connections", "default_max_queued_bytes", "SUBPROTOCOL",
           "BEARER_SUBPROTOCOL"]

log = logging.getLogger("p2p_copy.relay")

_READY = encode(Ready())
_WAITING = encode(Waiting())

#: Seconds stop() lets peers complete their close before dropping them; a peer that no
#: longer reads would otherwise never take its close frame, and stop() would never return.
_STOP_GRACE = 3.0

_DRAINING_REASON = "the relay is restarting; reconnect"

#: The WebSocket subprotocol the relay selects whenever a client offers it (protocol.md
#: §3.1): a browser that offered subprotocols fails a handshake that selects none.
SUBPROTOCOL = "p2p-copy"
#: An offered subprotocol that presents an access token (§5.11): this prefix, then the
#: token in base64url without padding. A browser cannot set ``Authorization`` on a
#: WebSocket; it can offer subprotocols. Never selected, so never sent back.
BEARER_SUBPROTOCOL = "p2p-copy.bearer."
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")



class _WithoutDebug(logging.LoggerAdapter):  # type: ignore[type-arg]
    """websockets' logger, never at DEBUG: there it quotes every request header (an access
    token among them) and every frame (a hello's code hash), whatever level the program
    that runs the relay chose."""

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's name
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


_WEBSOCKETS_LOG = _WithoutDebug(logging.getLogger("p2p_copy.relay.websockets"), {})

#: Descriptors kept free below the process's limit for files, logs and the answers that
#: turn connections away.
_SPARE_DESCRIPTORS = 100


def default_max_connections() -> int:
    """The process's open-file limit minus some spare: beyond it accept() would fail."""
    if sys.platform == "win32":  # no per-process descriptor limit there, and no resource
        return 10_000
    try:
        import resource
    except ImportError:  # another system without it
        return 10_000
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):  # pragma: no cover - every POSIX system has it
        return 10_000
    if soft == resource.RLIM_INFINITY:
        return 1_000_000
    return max(int(soft) - _SPARE_DESCRIPTORS, 16)


def default_max_queued_bytes() -> int:
    """A quarter of the machine's memory, from 64 MiB to 1 GiB: what peers may make it hold.

    A quarter, because what is counted is payload: the process's own overhead, the
    allocator's slack and the kernel's socket buffers come on top.
    """
    sysconf = getattr(os, "sysconf", None)  # not on Windows
    try:
        memory = int(sysconf("SC_PHYS_PAGES") * sysconf("SC_PAGE_SIZE")) if sysconf else 2**30
    except (OSError, ValueError):  # pragma: no cover - Linux and macOS have both
        return 2**28
    return min(max(memory // 4, 2**26), 2**30)


@dataclass(frozen=True)
class RelayConfig:
    """Limits and timeouts of a relay; the defaults suit a public relay.

    For every cap and rate below, 0 turns it off.
    """

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
    #: Open connections in all (handshake, waiting or relaying, or not yet said anything).
    max_connections: int = field(default_factory=default_max_connections)
    #: Open connections from one address (an IPv6 /64); stops slow-loris connections.
    max_connections_per_address: int = 64
    #: Peers waiting for their partner, in all and from one address.
    max_waiting: int = 10_000
    max_waiting_per_address: int = 32
    #: Open connections and waiting peers from one network: an IPv6 /48 (what one site
    #: gets, holding 65,536 /64 "addresses") or an IPv4 /24.
    max_connections_per_network: int = 256
    max_waiting_per_network: int = 128
    #: Bytes held for peers in all connections (unfinished frames, queued messages, what
    #: waits in a partner's write buffer); over it, the connection that asks for more
    #: is closed with 4009 (its pair, both peers).
    max_queued_bytes: int = field(default_factory=default_max_queued_bytes)
    #: Pairs relaying at the same time.
    max_pairs: int = 10_000
    #: WebSocket connections one address may open per ``join_window`` seconds (a token
    #: bucket: up to this many at once, then one per window/rate seconds).
    join_rate: int = 30
    join_window: float = 10.0
    #: Bytes (both directions) and seconds a pair may use; 0: no limit.
    max_pair_bytes: int = 0
    max_pair_seconds: float = 0.0
    #: Bearer tokens of a private relay; empty: anyone may connect. Kept out of repr().
    access_tokens: frozenset[str] = field(default=frozenset(), repr=False)
    #: Proxies whose X-Forwarded-For names the client (addresses or CIDR networks).
    trusted_proxies: tuple[str, ...] = LOOPBACK
    #: Clients with no per-address limits (the totals still apply).
    exempt_addresses: tuple[str, ...] = LOOPBACK
    #: Idle addresses remembered for their join rate, at most.
    max_idle_addresses: int = 100_000
    #: Serve the browser peer's page at ``/`` and ``/static/`` (web.py).
    web: bool = True
    #: Other relays (ws:// or wss:// URLs) the page may connect to, besides this one.
    web_connect: tuple[str, ...] = ()
    #: The page's folder; None: the one installed with p2p-copy (tests give their own).
    web_folder: str | None = None

    def __post_init__(self) -> None:
        counts = ("max_connections", "max_connections_per_address", "max_waiting",
                  "max_waiting_per_address", "max_connections_per_network",
                  "max_waiting_per_network", "max_queued_bytes", "max_pairs", "join_rate",
                  "max_pair_bytes", "max_idle_addresses")
        for name in counts:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_pair_seconds < 0:
            raise ValueError("max_pair_seconds must not be negative")
        if self.join_window <= 0:
            raise ValueError("join_window must be positive")
        for token in self.access_tokens:
            if not token or not token.isascii() or not token.isprintable() or " " in token:
                raise ValueError("access tokens must be printable ASCII without spaces")
        parse_networks(self.trusted_proxies)
        parse_networks(self.exempt_addresses)
        for url in self.web_connect:
            connect_source(url)

    def limits(self) -> Limits:
        """The admission caps of this configuration."""
        return Limits(
            max_connections=self.max_connections,
            max_connections_per_address=self.max_connections_per_address,
            max_waiting=self.max_waiting,
            max_waiting_per_address=self.max_waiting_per_address,
            max_connections_per_network=self.max_connections_per_network,
            max_waiting_per_network=self.max_waiting_per_network,
            max_pairs=self.max_pairs,
            join_rate=self.join_rate,
            join_window=self.join_window,
            exempt=parse_networks(self.exempt_addresses),
            max_idle_addresses=self.max_idle_addresses,
        )


class _Connection(ForwardingConnection):
    """A ServerConnection counted by the relay's admission from TCP open to TCP close.

    Counting at the TCP level, not in the handler, covers connections that never finish
    the HTTP handshake or never say hello: the slow-loris kind.
    """

    #: Set on the per-relay subclass that Relay.start() makes.
    relay: Relay
    #: The client's address (after X-Forwarded-For from a trusted proxy) and its key.
    host: str = "?"
    key: str | None = None
    #: A limit found at the HTTP stage that closes this connection once it is open.
    refusal: Refusal | None = None
    #: Its place in the relay, once its hello is taken.
    peer: _Peer | None = None
    _counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.host = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        admission = self.relay.admission
        self.key = admission.key(self.host)
        admission.opened(self.key, time.monotonic())
        self._counted = True

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._counted:
            self._counted = False
            self.relay.admission.closed(self.key, time.monotonic())

    def over_budget(self) -> None:
        # Failed at once, not closed with a handshake: until the peer's close frame
        # came, its unfinished frame (up to max_message_size) would be read and held.
        super().over_budget()
        pair = self.peer.pair if self.peer is not None else None
        if pair is None:
            self.relay.stats.rejections[Reason.MEMORY_FULL] += 1
        else:
            # Its partner learns why as well (4009), with a closing handshake.
            self.relay._end_pair(pair, *pair.peers, Reason.MEMORY_FULL,
                                 "the relay is short of memory; try again later",
                                 CloseCode.RELAY_MEMORY)


class _Pair:
    """What both peers of a pair share: bytes forwarded, and whether a limit ended it."""

    def __init__(self, peers: tuple[_Peer, _Peer]) -> None:
        self.peers = peers
        self.bytes = 0
        #: The limit that ended the pair, once one did.
        self.limited: Reason | None = None
        self.members = 2
        self.deadline: asyncio.Task[None] | None = None
        #: Both peers' closes once a limit ended the pair: held so that the event loop's
        #: weak references are not the only ones to their tasks while they run.
        self.closing: asyncio.Future[Any] | None = None


class _Peer:
    """One connection's place in the relay: its hello, lifecycle and partner."""

    def __init__(self, ws: ServerConnection, hello: Hello, life: Lifecycle) -> None:
        self.ws = ws
        self.hello = hello
        self.life = life
        self.partner: asyncio.Future[_Peer] = asyncio.get_running_loop().create_future()
        self.pair: _Pair | None = None
        #: Counted in the admission's waiting peers.
        self.waiting = False
        #: Payload bytes passed on from this peer.
        self.forwarded = 0


def server_ssl_context(certfile: str, keyfile: str | None = None,
                       password: bytes | None = None) -> ssl.SSLContext:
    """A TLS context for serving wss:// with the given PEM certificate chain and key
    (``password``: the key's, if it is encrypted)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile, password)
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
        #: Bytes held for peers in all connections, against config.max_queued_bytes.
        self.budget = Budget(self.config.max_queued_bytes)
        self.metrics: RelayMetrics | None = relay_metrics(
            self.stats, lambda: self.draining, self.budget)
        self._rooms: Rooms[_Peer] = Rooms()
        #: Counts for the connection, waiting and pair caps; sans-I/O (admission.py).
        self.admission = Admission(self.config.limits())
        self._trusted = parse_networks(self.config.trusted_proxies)
        self._tokens = tuple(t.encode() for t in sorted(self.config.access_tokens))
        #: The page, read once; None with ``config.web`` off.
        self.web = (WebApp(None if self.config.web_folder is None
                           else Path(self.config.web_folder), self.config.web_connect)
                    if self.config.web else None)
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
        connection_type = type("_RelayConnection", (_Connection,),
                               {"relay": self, "budget": self.budget})
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            ssl=self.ssl_context,
            create_connection=connection_type,
            process_request=self._http,
            select_subprotocol=_select_subprotocol,
            compression=None,
            max_size=cfg.max_message_size,
            max_queue=cfg.max_queue,
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout,
            logger=_WEBSOCKETS_LOG,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        inprocess.serving(asyncio.get_running_loop(), self.host, self.port, True)
        # Which loop serves (uvloop's or asyncio's: the CLI's choice, cli/eventloop.py).
        event(log, logging.INFO, "listening", url=self.url,
              loop=type(asyncio.get_running_loop()).__module__.partition(".")[0])

    async def stop(self) -> None:
        """Close every connection (code 1001) and wait for the handlers to end."""
        if self._server is not None:
            inprocess.serving(asyncio.get_running_loop(), self.host, self.port, False)
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
                self.stats.rejections[Reason.DRAINING] += 1
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
        if _offered_subprotocols(request.headers) is None:
            # Answered here: websockets' own 400 would quote the header, and a token in it.
            return connection.respond(HTTPStatus.BAD_REQUEST,
                                      "Invalid Sec-WebSocket-Protocol header.\n")
        if self._tokens and not self._authorized(request.headers):
            self.stats.rejections[Reason.ACCESS_DENIED] += 1
            response = connection.respond(
                HTTPStatus.UNAUTHORIZED,
                "This relay is private: pass its access token (p2p-copy --relay-token).\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="p2p-copy"'
            # A browser is not told why a WebSocket failed; the page asks again with a
            # plain GET, and from another origin it may read this answer only so.
            response.headers["Access-Control-Allow-Origin"] = "*"
            response.headers["Access-Control-Expose-Headers"] = "WWW-Authenticate"
            return response
        if self.web is not None and self.web.wants(path, request.headers):
            # The page is no room: the connection caps apply, the join rate (for peers)
            # and the room counters do not. Served while draining: it holds no pair.
            return self._place(connection, request) or self.web.respond(request)
        try:
            room_from_path(path)
        except ValueError as exc:
            self.stats.rejections[Reason.BAD_PATH] += 1
            return connection.respond(HTTPStatus.NOT_FOUND, f"Not a p2p-copy relay path: {exc}.\n")
        if self.draining:
            self.stats.rejections[Reason.DRAINING] += 1
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE, "The relay is restarting; reconnect.\n")
        return self._admit(connection, request)

    def _authorized(self, headers: Headers) -> bool:
        """Whether the handshake presents a known token, in constant time: one rule for
        the ``Authorization`` header and the bearer subprotocol (§5.11)."""
        ok = False
        for candidate in _presented_tokens(headers):
            for token in self._tokens:  # no early exit: every token costs the same
                ok |= hmac.compare_digest(candidate, token)
        return ok

    def _place(self, connection: ServerConnection, request: Request) -> Response | None:
        """Count the connection against its client and apply the connection caps: a
        refusal, or None."""
        if not isinstance(connection, _Connection):  # pragma: no cover - serve() makes ours
            return None
        now = time.monotonic()
        admission = self.admission
        host = client_host(connection.host, request.headers.get_all("X-Forwarded-For"),
                           self._trusted)
        if host != connection.host:
            # A trusted proxy named its client: count the connection against the client.
            key = admission.key(host)
            admission.closed(connection.key, now)
            admission.opened(key, now)
            connection.host, connection.key = host, key
        refusal = admission.check_connection(connection.key)
        if refusal is not None:
            self.stats.rejections[refusal.reason] += 1
            return connection.respond(refusal.http_status, refusal.message)
        return None

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """Apply the connection caps now, and keep a join-rate refusal for after the upgrade."""
        refused = self._place(connection, request)
        if refused is not None or not isinstance(connection, _Connection):
            return refused
        # The rate limit answers with a close code (4006) that clients understand, so the
        # handshake goes on and the handler closes the connection at once.
        connection.refusal = self.admission.take_join(connection.key, time.monotonic())
        return None

    def _metrics_response(self, connection: ServerConnection, accept: str) -> Response:
        if self.metrics is None:
            return connection.respond(
                HTTPStatus.NOT_FOUND,
                "Metrics are off: install prometheus-client (the p2p-copy[relay] extra).\n",
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
        life = Lifecycle(time.monotonic())
        try:
            await self._serve_peer(ws, life)
        finally:
            self._connections.discard(ws)
            self._unannounced.discard(ws)
            if not self._connections:
                self._idle.set()
            self.stats.open_connections -= 1
            if _relay_closed_with(ws) == CloseCode.MESSAGE_TOO_BIG:
                self.stats.rejections[Reason.TOO_BIG] += 1
            outcome = life.finish(time.monotonic())
            self.stats.outcomes[outcome] += 1
            event(log, logging.DEBUG, "connection_end", outcome=outcome.value,
                  address=self._address(ws))

    async def _turn_away(self, ws: ServerConnection, life: Lifecycle, reason: Reason,
                         code: CloseCode, text: str) -> None:
        """Close ``ws`` with ``code``: counted as ``reason``, ended as the code says."""
        self.stats.rejections[reason] += 1
        life.handle(closed(code), time.monotonic())
        await ws.close(code, _reason(text))

    async def _serve_peer(self, ws: ServerConnection, life: Lifecycle) -> None:
        key = ws.key if isinstance(ws, _Connection) else None
        if isinstance(ws, _Connection) and ws.refusal is not None:
            refusal = ws.refusal
            await self._turn_away(ws, life, refusal.reason, refusal.close_code, refusal.message)
            return
        hello = await self._read_hello(ws, life)
        if hello is None:
            return
        if self.draining:
            await self._turn_away(ws, life, Reason.DRAINING, CloseCode.RELAY_DRAINING,
                                  _DRAINING_REASON)
            return
        peer = _Peer(ws, hello, life)
        if isinstance(ws, _Connection):
            ws.peer = peer
        admission = self.admission
        joined = self._rooms.join(
            hello, peer,
            refuse_wait=_refused(admission.check_wait(key)),
            refuse_pair=_refused(admission.check_pair()),
        )
        if isinstance(joined, Refused):
            await self._turn_away(ws, life, joined.label, joined.code, joined.reason)
            return
        if isinstance(joined, Paired):
            partner: _Peer = joined.partner
            self._stop_waiting(partner)
            self._start_pair(peer, partner)
            sender = peer if hello.role == "sender" else partner
            with contextlib.suppress(ConnectionClosed):
                await sender.ws.send(_READY)
            partner.partner.set_result(peer)
        else:
            life.handle(Event.WAIT, time.monotonic())
            admission.start_waiting(key, time.monotonic())
            peer.waiting = True
            if joined.confirm:
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(_WAITING)
            waited = await self._wait_for_partner(peer)
            if waited is None:
                return
            partner = waited
        await self._relay(peer, partner)

    async def _read_hello(self, ws: ServerConnection, life: Lifecycle) -> Hello | None:
        """The connection's valid hello; None once it ended without one."""
        self._unannounced.add(ws)
        try:
            async with asyncio.timeout(self.config.hello_timeout):
                first = await ws.recv()
            if isinstance(ws, ForwardingConnection):
                ws.handed_on(len(first) if isinstance(first, bytes) else len(first.encode()))
        except TimeoutError:
            await self._turn_away(ws, life, Reason.HELLO_TIMEOUT, CloseCode.HELLO_TIMEOUT,
                                  "no hello arrived in time")
            return None
        except ConnectionClosed:
            life.handle(_how_closed(ws), time.monotonic())
            return None
        finally:
            self._unannounced.discard(ws)
        try:
            hello = parse_hello(first)
        except RemoteProtocolError as exc:
            await self._turn_away(ws, life, Reason.BAD_HELLO, CloseCode.BAD_HELLO, str(exc))
            return None
        room = _room(ws)
        if room is not None and room != hello.code_hash_hex:
            await self._turn_away(
                ws, life, Reason.BAD_HELLO, CloseCode.BAD_HELLO,
                "the room in the URL path and the hello's code_hash_hex disagree")
            return None
        return hello

    async def _wait_for_partner(self, peer: _Peer) -> _Peer | None:
        """The partner that joined; None once ``peer`` ended without one."""
        self.stats.waiting += 1
        closing = asyncio.ensure_future(peer.ws.wait_closed())
        assert self._drain_started is not None
        either: set[asyncio.Future[Any]] = {peer.partner, closing, self._drain_started}
        try:
            await asyncio.wait(
                either,
                timeout=self.config.peer_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            closing.cancel()
            self.stats.waiting -= 1
            self._stop_waiting(peer)
        if peer.partner.done() or not self._rooms.leave(peer.hello, peer):
            # Paired, possibly at the last moment: the partner is about to hand itself over.
            return await peer.partner
        if closing.done() and not closing.cancelled():
            peer.life.handle(_how_closed(peer.ws), time.monotonic())
        elif self.draining:
            await self._turn_away(peer.ws, peer.life, Reason.DRAINING,
                                  CloseCode.RELAY_DRAINING, _DRAINING_REASON)
        else:
            await self._turn_away(peer.ws, peer.life, Reason.PEER_TIMEOUT,
                                  CloseCode.PEER_TIMEOUT,
                                  "no partner joined with this code in time")
        return None

    def _stop_waiting(self, peer: _Peer) -> None:
        """Free ``peer``'s waiting slot (once), when it pairs or leaves."""
        if peer.waiting:
            peer.waiting = False
            key = peer.ws.key if isinstance(peer.ws, _Connection) else None
            self.admission.stop_waiting(key, time.monotonic())

    def _start_pair(self, peer: _Peer, partner: _Peer) -> None:
        now = time.monotonic()
        peer.life.handle(Event.PAIR, now)
        partner.life.handle(Event.PAIR, now)
        pair = _Pair((peer, partner))
        peer.pair = partner.pair = pair
        for ws in (peer.ws, partner.ws):
            if isinstance(ws, ForwardingConnection):
                ws.paired()  # before `ready`: the sender may send at once
        self.admission.start_pair()
        if self.config.max_pair_seconds:
            pair.deadline = asyncio.ensure_future(self._pair_deadline(pair, peer, partner))

    async def _pair_deadline(self, pair: _Pair, peer: _Peer, partner: _Peer) -> None:
        seconds = self.config.max_pair_seconds
        await asyncio.sleep(seconds)
        self._end_pair(pair, peer, partner, Reason.PAIR_DURATION,
                       f"the relay allows a transfer {seconds:g} s at most")

    def _end_pair(self, pair: _Pair, peer: _Peer, partner: _Peer, label: Reason,
                  reason: str, code: CloseCode = CloseCode.PAIR_LIMIT) -> None:
        """Close both peers with ``code`` (once): a limit of the relay ended their pair.

        Synchronous, so that a frame over the byte cap stops the pair before the next one.
        """
        if pair.limited is not None:
            return
        pair.limited = label
        self.stats.rejections[label] += 1
        event(log, logging.INFO, "pair_limit", limit=label.value, bytes=pair.bytes)
        pair.closing = asyncio.gather(
            peer.ws.close(code, _reason(reason)),
            partner.ws.close(code, _reason(reason)),
            return_exceptions=True,
        )

    def _tap(self, pair: _Pair, peer: _Peer, partner: _Peer) -> FrameTap:
        """Counts what ``peer`` passes on, frame by frame, and enforces the byte cap."""
        stats = self.stats
        sampling = self.metrics is not None
        max_bytes = self.config.max_pair_bytes

        def tap(size: int, fin: bool) -> Verdict:
            if pair.limited is not None:
                return Verdict.STOP
            if max_bytes and pair.bytes + size > max_bytes:
                self._end_pair(pair, peer, partner, Reason.PAIR_BYTES,
                               f"the relay allows a transfer {max_bytes:,} bytes at most")
                return Verdict.STOP
            pair.bytes += size
            stats.bytes_forwarded += size
            peer.forwarded += size
            if not fin:
                return Verdict.PASS
            timed = sampling and not stats.messages_forwarded & LATENCY_SAMPLE_MASK
            stats.messages_forwarded += 1
            return Verdict.TIMED if timed else Verdict.PASS

        return tap

    async def _relay(self, peer: _Peer, partner: _Peer) -> None:
        """Forward what ``peer`` sends to ``partner``; the partner's handler does the reverse.

        Binary frames go straight to the partner whenever order allows (forwarding.py);
        this loop passes on the rest: text, and what was queued before the pair formed.
        """
        pair, source = peer.pair, peer.ws
        assert pair is not None
        # Relay.start() has websockets make every connection a _Connection.
        assert isinstance(source, ForwardingConnection)
        assert isinstance(partner.ws, ForwardingConnection)
        is_sender = peer.hello.role == "sender"
        if is_sender:
            self.stats.active_pairs += 1
        observe = self.metrics.observe_forward if self.metrics is not None else None
        tap = self._tap(pair, peer, partner)
        source.forward_to(partner.ws, tap, observe)
        try:
            async for message in source:
                # Text arrives decoded: count its UTF-8 bytes, not its characters.
                size = len(message) if isinstance(message, bytes) else len(message.encode())
                verdict = tap(size, True)
                if verdict is Verdict.STOP:
                    source.discard()
                    break
                if verdict is Verdict.TIMED and observe is not None:
                    sent_at = time.perf_counter()
                    await partner.ws.send(message)
                    observe(time.perf_counter() - sent_at)
                else:
                    await partner.ws.send(message)
                source.handed_on(size)
        except ConnectionClosed:
            pass  # either side closed; the close codes below say which
        finally:
            if is_sender:
                self.stats.active_pairs -= 1
            pair.members -= 1
            if pair.members == 0:
                self.admission.end_pair()
            if pair.deadline is not None:
                pair.deadline.cancel()  # a no-op if the deadline itself ended the pair
        if pair.limited is not None:
            await peer.ws.wait_closed()
            ending = Event.OVER_LIMIT
        else:
            ending = await self._ending(peer, partner)
        outcome = peer.life.handle(ending, time.monotonic())
        if is_sender and outcome is not None:
            self.stats.pairs[outcome] += 1
            event(log, logging.INFO, "pair_end", outcome=outcome.value,
                  seconds=round(peer.life.relayed_seconds(), 3), bytes=peer.forwarded,
                  sender=self._address(peer.ws), receiver=self._address(partner.ws))

    async def _ending(self, peer: _Peer, partner: _Peer) -> Event:
        """Tell the partner how ``peer``'s connection ended; how the pair ended for ``peer``."""
        if peer.ws.close_code is None:
            # The partner went first; its handler closes this side with the right code.
            await peer.ws.wait_closed()
            if _how_closed(peer.ws) is Event.SHUT:
                return Event.SHUT
            return _partner_ended(partner)
        if _how_closed(peer.ws) is Event.SHUT:
            return Event.SHUT  # drain() or stop() closes the partner as well
        # A clean close that the peer started stays clean; anything else (a crash, a
        # dropped network, a close the relay had to start, e.g. for an oversized
        # message) becomes PEER_GONE.
        if peer.ws.close_code == CloseCode.NORMAL and peer.ws.protocol.close_rcvd_then_sent:
            await partner.ws.close(CloseCode.NORMAL, "the peer closed the connection")
            return Event.FINISHED
        if peer.ws.protocol.close_rcvd_then_sent is False:
            # The relay closed this side first (the partner's handler did): it ended as
            # its partner did, and the partner needs no word from here.
            return _partner_ended(partner)
        await partner.ws.close(CloseCode.PEER_GONE, "the peer disconnected")
        return Event.LEFT

    def _address(self, ws: ServerConnection) -> str | None:
        if isinstance(ws, _Connection):
            host = ws.host  # the client's, when a trusted proxy named it
        else:  # pragma: no cover - serve() makes _Connection
            try:
                host = str(ws.remote_address[0])
            except (TypeError, IndexError):
                host = "?"
        return show_address(host, self.config.log_addresses)


def _offered_subprotocols(headers: Headers) -> list[str] | None:
    """The subprotocols a handshake offers, in order; None if the header is malformed."""
    try:
        return [str(item) for value in headers.get_all("Sec-WebSocket-Protocol")
                for item in parse_subprotocol(value)]
    except InvalidHeader:
        return None


def _presented_tokens(headers: Headers) -> list[bytes]:
    """Every access token a handshake presents (protocol.md §5.11): the value of each
    ``Authorization: Bearer`` header and of each offered ``p2p-copy.bearer.`` subprotocol
    (base64url without padding, decoded); the relay compares them all alike."""
    found = []
    for header in headers.get_all("Authorization"):
        scheme, _, given = header.strip().partition(" ")
        if scheme.lower() == "bearer":
            found.append(given.strip().encode(errors="replace"))
    for offered in _offered_subprotocols(headers) or ():
        encoded = offered.removeprefix(BEARER_SUBPROTOCOL)
        if encoded == offered or not _BASE64URL.fullmatch(encoded) or len(encoded) % 4 == 1:
            continue
        try:
            found.append(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
        except binascii.Error:  # pragma: no cover - the pattern and length rule it out
            continue
    return found


def _select_subprotocol(connection: ServerConnection,
                        offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """``p2p-copy`` when the client offers it (a browser with a token does), else none: a
    client that offers nothing connects as before, and a token is never echoed."""
    return Subprotocol(SUBPROTOCOL) if SUBPROTOCOL in offered else None


def _refused(refusal: Refusal | None) -> Refused | None:
    """An admission refusal as pairing's Refused."""
    if refusal is None:
        return None
    return Refused(refusal.close_code, refusal.message, label=refusal.reason)


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


def _relay_closed_with(ws: ServerConnection) -> int | None:
    """The code the relay closed ``ws`` with first (not an echo of the peer's), if it did."""
    sent = ws.protocol.close_sent
    if sent is None or ws.protocol.close_rcvd_then_sent is True:
        return None
    return sent.code


def _how_closed(ws: ServerConnection) -> Event:
    """The lifecycle event that the close of ``ws`` makes."""
    return closed(_relay_closed_with(ws))


def _partner_ended(partner: _Peer) -> Event:
    """How a pair ended that the partner's side ended: cleanly, or not."""
    return Event.FINISHED if partner.ws.close_code == CloseCode.NORMAL else Event.LEFT


async def run_relay(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    config: RelayConfig | None = None,
    announce: bool = True,
) -> None:
    """Serve until SIGTERM (or Ctrl-Break on Windows: signals.DRAIN), then drain and
    return; cancelling (Ctrl-C) stops at once.

    ``announce`` prints the URL on stdout once listening (not for JSON-only output).
    """
    relay = Relay(host, port, ssl_context=ssl_context, config=config)
    terminate = asyncio.Event()
    # Before listening: a SIGTERM as soon as the port is open must drain, not kill.
    with on_signals(dict.fromkeys(DRAIN, terminate.set)):
        try:
            await relay.start()
            if relay.metrics is None:
                # Said by the server only: a relay embedded in a demo or a notebook has no
                # operator to monitor it.
                log.warning("metrics are off: prometheus_client is not installed "
                            "(pip install prometheus-client, the p2p-copy[relay] extra); "
                            "/metrics answers 404")
            if announce:
                print(f"Relay listening on {relay.url}", flush=True)
            await terminate.wait()
            await relay.drain()
        finally:
            await relay.stop()
