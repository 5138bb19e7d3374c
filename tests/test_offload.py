"""Offload (inline while quick, threads once slow) and the CLI's allocator tuning."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time

import pytest

from p2p_copy.cli.tuning import GC_THRESHOLDS, tune_process
from p2p_copy.peer.offload import Offload, in_thread


def test_quick_calls_run_inline_on_the_loop_thread() -> None:
    async def main() -> None:
        offload = Offload(slow=5.0)
        loop_thread = threading.get_ident()
        assert await offload(threading.get_ident) == loop_thread
        assert not offload.threaded

    asyncio.run(main())


def test_one_slow_call_moves_the_rest_to_worker_threads() -> None:
    async def main() -> None:
        offload = Offload(slow=0.001)
        loop_thread = threading.get_ident()
        await offload(time.sleep, 0.01)
        assert offload.threaded
        assert await offload(threading.get_ident) != loop_thread

    asyncio.run(main())


def test_inline_calls_let_other_tasks_run() -> None:
    """A loop of quick inline calls must not starve the connection's tasks."""

    async def main() -> int:
        offload = Offload(slow=5.0)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        for _ in range(50):
            await offload(len, b"x")
        task.cancel()
        return ticks

    assert asyncio.run(main()) >= 40


def test_errors_propagate_inline_and_threaded() -> None:
    async def main() -> None:
        for offload in (Offload(), Offload(threaded=True)):
            with pytest.raises(ZeroDivisionError):
                await offload(divmod, 1, 0)

    asyncio.run(main())


def test_a_cancelled_thread_call_is_waited_for() -> None:
    finished = threading.Event()

    def work() -> None:
        time.sleep(0.2)
        finished.set()

    async def main() -> None:
        task = asyncio.ensure_future(in_thread(work))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished.is_set()  # the cancellation waited for the thread

    asyncio.run(main())


def test_tune_process_respects_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    thresholds = gc.get_threshold()
    try:
        monkeypatch.setenv("MALLOC_TOP_PAD_", "1048576")
        assert tune_process() is False
        assert gc.get_threshold() == GC_THRESHOLDS
        monkeypatch.delenv("MALLOC_TOP_PAD_")
        assert tune_process() is sys.platform.startswith("linux")
    finally:
        gc.set_threshold(*thresholds)
