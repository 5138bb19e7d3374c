"""The command-line processes' event loop: uvloop where it is installed, else asyncio's.

uvloop (the ``p2p-copy[fast]`` extra; there is none for Windows) runs the same asyncio
code on libuv, with its transports and its TLS layer compiled instead of written in
Python. Measured on whole transfers through a relay (benchmarks/README.md, "TLS and per-role
cost"), it is what pays of everything tried for the cost per byte, TLS or not. It is never
required: without it the same coroutines run on asyncio's loop, through the same
``asyncio.Runner``.

Only the CLI chooses (send, receive, the relay): a library runs on its caller's loop (a
notebook kernel's, an application's), so the peer and relay modules never import uvloop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["loop_factory", "run"]

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory if uvloop imports, else None (asyncio's default loop)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)`` on the loop :func:`loop_factory` chooses."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)
