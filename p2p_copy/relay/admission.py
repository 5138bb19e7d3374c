"""Who the relay lets in: connection, waiting and pair caps and a join rate, without I/O.

Rules:
- Every TCP connection counts against the total and against its client's address until it
  closes, whether it ever says hello or not (that is what stops slow-loris connections).
  A WebSocket handshake over a cap is refused with HTTP 503 (total) or 429 (address).
- Every WebSocket handshake takes one token from its address's bucket (``join_rate``
  tokens, refilled evenly over ``join_window`` seconds); with none left the peer is closed
  with 4006 as soon as it is open.
- A peer that would wait needs a free waiting slot (total and per address), a peer that
  would pair a free pair slot (total); otherwise it is closed with 4007.
- Addresses are compared by network: an IPv6 client by its /64 (one host gets a whole /64,
  so counting its single addresses would count nothing), an IPv4 client by its address.
- Open connections and waiting peers are also capped per *network*, with caps of their
  own: an IPv6 /48 (what one site gets: 65,536 /64s, each with a per-address budget) or
  an IPv4 /24. A peer over a network cap is refused as one over an address cap is.
- Exempt networks (by default loopback: the machine itself, and what a proxy that does not
  say who its client is looks like) have no per-address limits; the totals still apply.
- Memory stays bounded: an address is forgotten once it has no connection open and its
  bucket would be full again, and never more than ``max_idle_addresses`` idle ones are
  kept (the oldest go first).

Time comes in as ``now`` (seconds, monotonic) from the caller; nothing here reads a clock.
"""

from __future__ import annotations

import collections
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from ..protocol.messages import CloseCode
from .lifecycle import Reason

__all__ = [
    "Limits",
    "Refusal",
    "Admission",
    "Network",
    "parse_networks",
    "client_host",
    "address_key",
    "network_key",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The networks that are exempt from per-address limits, and trusted as proxies, by default.
LOOPBACK: Final = ("127.0.0.1", "::1")


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """``values`` (addresses or CIDR networks) as networks; ValueError names a bad one."""
    out: list[Network] = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or network") from None
    return tuple(out)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _within(host: str, networks: tuple[Network, ...]) -> bool:
    ip = _ip(host)
    return ip is not None and any(ip in net for net in networks)


def client_host(peer: str, forwarded_for: Iterable[str], trusted: tuple[Network, ...]) -> str:
    """The client's address: ``peer``, or what trusted proxies say in X-Forwarded-For.

    Walks the header from the right (each proxy appends the address it saw) past trusted
    proxies; the first address they did not add themselves is the client. A client can
    prepend anything, so nothing left of that is believed.
    """
    if not _within(peer, trusted):
        return peer
    hops = [_without_port(hop.strip()) for value in forwarded_for for hop in value.split(",")]
    client = peer
    for hop in reversed(hops):
        # What does not parse is the client's own doing: count it, never exempt it.
        client = hop
        if _ip(hop) is None or not _within(hop, trusted):
            break
    return client


def _without_port(hop: str) -> str:
    """``203.0.113.5:4711`` or ``[2001:db8::1]:4711`` as the bare address some proxies omit."""
    if hop.startswith("[") and "]" in hop:
        return hop[1:hop.index("]")]
    if hop.count(":") == 1:
        return hop.partition(":")[0]
    return hop


def address_key(host: str) -> str:
    """What per-address limits count by: an IPv4 address, or an IPv6 /64 network."""
    ip = _ip(host)
    if ip is None:
        return host
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


#: The prefix length that makes a network of IPv4 and of IPv6 addresses.
_NETWORK_PREFIX: Final = {4: 24, 6: 48}


def network_key(key: str) -> str:
    """The network an address key belongs to: its IPv6 /48 or IPv4 /24."""
    try:
        net = ipaddress.ip_network(key, strict=False)
    except ValueError:  # a host that is no IP address counts on its own
        return key
    return str(net.supernet(new_prefix=_NETWORK_PREFIX[net.version]))


@dataclass(frozen=True)
class Limits:
    """The caps the relay enforces; 0 turns one off."""

    max_connections: int = 0
    max_connections_per_address: int = 0
    max_waiting: int = 0
    max_waiting_per_address: int = 0
    #: Per IPv6 /48 or IPv4 /24 (network_key()).
    max_connections_per_network: int = 0
    max_waiting_per_network: int = 0
    max_pairs: int = 0
    #: Tokens per address, refilled evenly over ``join_window`` seconds.
    join_rate: int = 0
    join_window: float = 10.0
    #: Networks with no per-address limits.
    exempt: tuple[Network, ...] = ()
    #: Idle addresses remembered at most (for their join rate).
    max_idle_addresses: int = 100_000


@dataclass(frozen=True)
class Refusal:
    """Why a peer is turned away: a metrics label, and what the peer is told."""

    reason: Reason
    message: str
    close_code: CloseCode = CloseCode.RELAY_FULL
    http_status: HTTPStatus = HTTPStatus.SERVICE_UNAVAILABLE


CONNECTIONS_FULL: Final = Refusal(
    Reason.CONNECTIONS_FULL,
    "The relay is full (too many open connections). Try again later.\n")
CONNECTIONS_PER_ADDRESS: Final = Refusal(
    Reason.CONNECTIONS_PER_ADDRESS,
    "Too many open connections from your address. Close some, then try again.\n",
    http_status=HTTPStatus.TOO_MANY_REQUESTS)
RATE_LIMITED: Final = Refusal(
    Reason.RATE_LIMITED,
    "too many connections from your address in a short time; wait, then retry",
    close_code=CloseCode.RATE_LIMITED, http_status=HTTPStatus.TOO_MANY_REQUESTS)
WAITING_FULL: Final = Refusal(
    Reason.WAITING_FULL, "the relay is full (too many peers waiting); try again later")
WAITING_PER_ADDRESS: Final = Refusal(
    Reason.WAITING_PER_ADDRESS,
    "too many peers from your address are waiting; try again later",
    http_status=HTTPStatus.TOO_MANY_REQUESTS)
CONNECTIONS_PER_NETWORK: Final = Refusal(
    Reason.CONNECTIONS_PER_NETWORK,
    "Too many open connections from your network. Close some, then try again.\n",
    http_status=HTTPStatus.TOO_MANY_REQUESTS)
WAITING_PER_NETWORK: Final = Refusal(
    Reason.WAITING_PER_NETWORK,
    "too many peers from your network are waiting; try again later",
    http_status=HTTPStatus.TOO_MANY_REQUESTS)
PAIRS_FULL: Final = Refusal(
    Reason.PAIRS_FULL, "the relay is full (too many transfers running); try again later")


class _Address:
    """What the relay remembers about one address."""

    __slots__ = ("connections", "waiting", "tokens", "stamp")

    def __init__(self, tokens: float, now: float) -> None:
        self.connections = 0
        self.waiting = 0
        self.tokens = tokens
        self.stamp = now  # when ``tokens`` was last brought up to date

    @property
    def idle(self) -> bool:
        return self.connections == 0 and self.waiting == 0


class _Network:
    """Counts of one network, kept while it has any."""

    __slots__ = ("connections", "waiting")

    def __init__(self) -> None:
        self.connections = 0
        self.waiting = 0


class Admission:
    """Counts by address and in total, and says whether the next step is allowed.

    The ``check_*`` and ``take_join`` methods decide; ``opened``/``closed``,
    ``start_waiting``/``stop_waiting`` and ``start_pair``/``end_pair`` record. Keys come
    from ``key()``: None for an exempt address, which only counts in the totals.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.connections = 0
        self.waiting = 0
        self.pairs = 0
        self._addresses: dict[str, _Address] = {}
        #: Per network_key(); an entry goes when its counts are back at zero.
        self._networks: dict[str, _Network] = {}
        #: Idle addresses, oldest first, with when they became idle.
        self._idle: collections.OrderedDict[str, float] = collections.OrderedDict()

    def __len__(self) -> int:
        """How many addresses are remembered now."""
        return len(self._addresses)

    def key(self, host: str) -> str | None:
        """The per-address key of ``host``; None if its network is exempt."""
        if _within(host, self.limits.exempt):
            return None
        return address_key(host)

    # --- connections -----------------------------------------------------------------

    def opened(self, key: str | None, now: float) -> None:
        """A connection from ``key`` is open (counted whatever check_connection says)."""
        self.connections += 1
        if key is not None:
            self._touch(key, now).connections += 1
            self._network(key).connections += 1

    def closed(self, key: str | None, now: float) -> None:
        self.connections -= 1
        if key is not None:
            entry = self._addresses.get(key)
            if entry is not None:
                entry.connections -= 1
                self._settle(key, entry, now)
            self._network_less(key, connections=1)

    def check_connection(self, key: str | None) -> Refusal | None:
        """Whether an open connection (already counted) may become a WebSocket."""
        lim = self.limits
        if lim.max_connections and self.connections > lim.max_connections:
            return CONNECTIONS_FULL
        if key is not None and lim.max_connections_per_address:
            entry = self._addresses.get(key)
            if entry is not None and entry.connections > lim.max_connections_per_address:
                return CONNECTIONS_PER_ADDRESS
        if key is not None and lim.max_connections_per_network:
            net = self._networks.get(network_key(key))
            if net is not None and net.connections > lim.max_connections_per_network:
                return CONNECTIONS_PER_NETWORK
        return None

    def take_join(self, key: str | None, now: float) -> Refusal | None:
        """Take a token from ``key``'s bucket; RATE_LIMITED if it is empty."""
        lim = self.limits
        if key is None or not lim.join_rate:
            return None
        entry = self._touch(key, now)
        entry.tokens = min(
            float(lim.join_rate),
            entry.tokens + (now - entry.stamp) * lim.join_rate / lim.join_window,
        )
        entry.stamp = now
        if entry.tokens < 1.0:
            self._settle(key, entry, now)
            return RATE_LIMITED
        entry.tokens -= 1.0
        self._settle(key, entry, now)
        return None

    # --- waiting and pairs -----------------------------------------------------------

    def check_wait(self, key: str | None) -> Refusal | None:
        lim = self.limits
        if lim.max_waiting and self.waiting >= lim.max_waiting:
            return WAITING_FULL
        if key is not None and lim.max_waiting_per_address:
            entry = self._addresses.get(key)
            if entry is not None and entry.waiting >= lim.max_waiting_per_address:
                return WAITING_PER_ADDRESS
        if key is not None and lim.max_waiting_per_network:
            net = self._networks.get(network_key(key))
            if net is not None and net.waiting >= lim.max_waiting_per_network:
                return WAITING_PER_NETWORK
        return None

    def start_waiting(self, key: str | None, now: float) -> None:
        self.waiting += 1
        if key is not None:
            self._touch(key, now).waiting += 1
            self._network(key).waiting += 1

    def stop_waiting(self, key: str | None, now: float) -> None:
        self.waiting -= 1
        if key is not None:
            entry = self._addresses.get(key)
            if entry is not None:
                entry.waiting -= 1
                self._settle(key, entry, now)
            self._network_less(key, waiting=1)

    def check_pair(self) -> Refusal | None:
        if self.limits.max_pairs and self.pairs >= self.limits.max_pairs:
            return PAIRS_FULL
        return None

    def start_pair(self) -> None:
        self.pairs += 1

    def end_pair(self) -> None:
        self.pairs -= 1

    # --- bookkeeping -----------------------------------------------------------------

    def _network(self, key: str) -> _Network:
        net_key = network_key(key)
        net = self._networks.get(net_key)
        if net is None:
            net = self._networks[net_key] = _Network()
        return net

    def _network_less(self, key: str, *, connections: int = 0, waiting: int = 0) -> None:
        net_key = network_key(key)
        net = self._networks.get(net_key)
        if net is None:
            return
        net.connections -= connections
        net.waiting -= waiting
        if net.connections <= 0 and net.waiting <= 0:
            del self._networks[net_key]

    def _touch(self, key: str, now: float) -> _Address:
        """``key``'s entry, created with a full bucket; no longer idle."""
        entry = self._addresses.get(key)
        if entry is None:
            entry = self._addresses[key] = _Address(float(self.limits.join_rate), now)
        self._idle.pop(key, None)
        self._forget(now)
        return entry

    def _settle(self, key: str, entry: _Address, now: float) -> None:
        """Queue ``entry`` for forgetting once it has nothing open."""
        if entry.idle:
            self._idle[key] = now
            self._idle.move_to_end(key)
        self._forget(now)

    def _forget(self, now: float) -> None:
        """Drop idle addresses whose bucket is full again, and the oldest beyond the cap."""
        # An idle entry's bucket was last touched no later than when it became idle, so
        # after one full window it is full: forgetting it changes nothing.
        window = self.limits.join_window if self.limits.join_rate else 0.0
        while self._idle:
            key, since = next(iter(self._idle.items()))
            if now - since < window and len(self._idle) <= self.limits.max_idle_addresses:
                break
            del self._idle[key]
            del self._addresses[key]
