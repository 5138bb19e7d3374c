"""Relays that run in this process, by the event loop that serves them.

A blocking call (peer/blocking.py) waits in the thread whose loop it blocks; if that loop
serves the relay the call connects to, the call would wait for itself until it times out
(a Relay() started in a notebook cell, then send_blocking() in the next). The relay notes
here where it listens, so that the call can say so at once instead. Imported by relay/ and
peer/ alike: it knows neither.
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["serving", "served_here"]

#: Loop -> the ports relays of this process listen on in that loop.
_PORTS: weakref.WeakKeyDictionary[Any, set[int]] = weakref.WeakKeyDictionary()


def serving(loop: Any, port: int, listening: bool) -> None:
    """Note that a relay on ``loop`` started (or, not ``listening``, stopped) on ``port``."""
    ports = _PORTS.setdefault(loop, set())
    if listening:
        ports.add(port)
    else:
        ports.discard(port)


def served_here(loop: Any, port: int | None) -> bool:
    """Whether a relay of this process listens on ``port`` in ``loop``."""
    return port is not None and port in _PORTS.get(loop, ())
