"""Relays that run in this process, by the event loop that serves them.

A blocking call (peer/blocking.py) waits in the thread whose loop it blocks; if that loop
serves the relay the call connects to, the call would wait for itself until it times out
(a Relay() started in a notebook cell, then send_blocking() in the next). The relay notes
here where it listens, so that the call can say so at once instead. Imported by relay/ and
peer/ alike: it knows neither.
"""

from __future__ import annotations

import ipaddress
import weakref
from typing import Any
from urllib.parse import urlsplit

__all__ = ["serving", "served_here"]

#: Loop -> the (host, port) pairs relays of this process listen on in that loop.
_LISTENING: weakref.WeakKeyDictionary[Any, set[tuple[str, int]]] = weakref.WeakKeyDictionary()
#: Bound to one of these, a relay is reached through any loopback name of this machine.
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})
_DEFAULT_PORTS = {"ws": 80, "wss": 443}


def serving(loop: Any, host: str, port: int, listening: bool) -> None:
    """Note that a relay on ``loop`` started (or, not ``listening``, stopped) on host:port."""
    where = _LISTENING.setdefault(loop, set())
    if listening:
        where.add((host, port))
    else:
        where.discard((host, port))


def served_here(loop: Any, url: str) -> bool:
    """Whether ``url`` reaches a relay that this process serves in ``loop``."""
    parts = urlsplit(url)
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return False
    host = parts.hostname or ""
    return any(port == bound_port and (host == bound or _local(host) and
                                       (bound in _WILDCARDS or _local(bound)))
               for bound, bound_port in _LISTENING.get(loop, ()))


def _local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
