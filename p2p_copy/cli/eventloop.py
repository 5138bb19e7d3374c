"""The command-line processes' event loop: uvloop where it is installed, else asyncio's.

uvloop (the ``p2p-copy[fast]`` extra; there is none for Windows) runs the same asyncio
code on libuv, with its transports and its TLS layer compiled instead of written in
Python. Of everything tried for the cost per byte it is what paid (benchmarks/README.md,
"TLS and per-role cost", CPU-s/GB, median of 12 interleaved 256 MiB transfers): relay over
ws 2.70 → 0.84 (on asyncio's loop it swung between ~0.8 and ~2.8 run by run), over wss
1.92 → 1.79; receiver 1.36 → 1.20 (ws), 2.03 → 1.76 (wss); sender unchanged. It is never
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
