"""Where file work runs: in a worker thread, or inline on the event loop while it is quick.

Handing every 256 KiB chunk to a worker thread costs more CPU than reading, hashing or
writing it does when the file is in the page cache or on tmpfs: on the 2-core machine of
benchmarks/README.md the sender spent 1.20 CPU-s per 512 MiB with a hand-off per chunk,
1.03 with one per 8 chunks and 0.87 inline, and the transfer ran ~15 % faster inline. A
read or write that blocks (a slow disk, a network file system, a full page cache being
written back) must not stall the loop that also serves the connection, the progress
display and a notebook's kernel, though: the first inline call that takes longer than
``slow`` seconds moves every later call of that transfer to worker threads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

__all__ = ["SLOW_CALL", "Offload", "in_thread"]

#: An inline call longer than this (seconds) moves the rest of the transfer to threads.
SLOW_CALL: Final = 0.02

_T = TypeVar("_T")


async def in_thread(func: Callable[..., _T], *args: Any) -> _T:
    """``func(*args)`` in a worker thread that is always waited for, even when cancelled.

    Cancelling does not stop the thread: it must finish before anything else touches the
    state it works on (suspend() or abort() after a cancellation, or files it creates
    afterwards would be left behind). The cancellation is what gets reported.
    """
    work = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        return await asyncio.shield(work)
    finally:
        if not work.done():
            await asyncio.wait({work})
            work.exception()


class Offload:
    """Run per-chunk calls inline while they are quick, in worker threads once one is not."""

    def __init__(self, slow: float = SLOW_CALL, *, threaded: bool = False) -> None:
        self.slow = slow
        self.threaded = threaded

    async def __call__(self, func: Callable[..., _T], *args: Any) -> _T:
        if self.threaded:
            return await in_thread(func, *args)
        started = time.perf_counter()
        try:
            result = func(*args)
        finally:
            if time.perf_counter() - started > self.slow:
                self.threaded = True
        # Let the connection, the progress display and other tasks run between chunks
        # (a send that fits the socket buffer does not suspend).
        await asyncio.sleep(0)
        return result
