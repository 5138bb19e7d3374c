"""Transfers for code that does not await: a plain script, or a cell that should wait.

Each call runs the coroutine on a private event loop in a worker thread and waits for
the thread. The calling thread's own loop, if it runs one (a Jupyter kernel, a loop that
nest_asyncio patched), is never touched, only blocked: so the relay and the peer must not
run on that loop. Ctrl-C while waiting cancels the transfer as a Cancel button would (the
peer is told; a receiver keeps its partial files, hidden, for a later run to resume),
waits a moment for that (a second Ctrl-C stops the wait), and raises KeyboardInterrupt.

Every public coroutine has its twin here, made from api.ENTRY_POINTS by blocking_twin().
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Generic, Literal, ParamSpec, TypeVar, cast

from .. import inprocess
from ..display.progress import make_progress
from ..errors import CancelledError, UsageError
from . import api
from .options import EntryPoint, OptionFields, Options, resolve

__all__ = [
    "CANCEL_GRACE",
    "blocking_twin",
    "send_blocking",
    "receive_blocking",
    "send_stream_blocking",
    "receive_stream_blocking",
    "send_text_blocking",
    "receive_text_blocking",
    "send_object_blocking",
    "receive_object_blocking",
]

#: Seconds a cancelled transfer gets to tidy up. Removing partial files and telling the
#: peer take milliseconds; the closing handshake with the relay that follows can take
#: longer (up to websockets' close_timeout when the receiver had fallen behind).
CANCEL_GRACE = 5.0
#: Waiting in slices keeps the caller interruptible even where a lock wait is not (Windows).
_POLL = 0.2

T = TypeVar("T")
P = ParamSpec("P")


class _Worker(Generic[T]):
    """One transfer on its own event loop in its own thread."""

    def __init__(self, work: Callable[[], Coroutine[Any, Any, T]]) -> None:
        self._work = work
        # Made here, not in the thread, so that a cancel can be queued before it runs.
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[T] | None = None
        self._result: T | None = None
        self._has_result = False
        self._error: BaseException | None = None
        # Waited on instead of the thread itself: on Python 3.11 a Ctrl-C that interrupts
        # Thread.join() leaves the thread marked as ended while it still runs.
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._main, name="p2p-copy transfer", daemon=True)

    def _main(self) -> None:
        loop = self._loop
        try:
            self._task = loop.create_task(self._work())
            self._result = loop.run_until_complete(self._task)
            self._has_result = True
        except BaseException as exc:
            self._error = exc
        finally:
            try:
                _wind_down(loop)
            finally:
                loop.close()
                self._ended.set()

    def start(self) -> None:
        try:
            self._thread.start()
        except RuntimeError:  # no thread to be had: no loop to keep either
            self._loop.close()
            raise

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the transfer and its clean-up, in slices; True once they are over."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ended.is_set():
            if self._loop.is_closed() and not self._thread.is_alive():
                return True  # the thread never started
            left = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
            if left <= 0:
                return False
            self._ended.wait(left)
        self._thread.join(_POLL)  # it has nothing left to do but end
        return True

    def cancel(self) -> None:
        """Cancel the transfer from any thread (a no-op once it has ended)."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to cancel
            self._loop.call_soon_threadsafe(self._cancel_in_loop)

    def _cancel_in_loop(self) -> None:
        # Runs in the loop, so after _main created the task.
        if self._task is not None:
            self._task.cancel()

    def outcome(self) -> T:
        if self._error is not None:
            error, self._error = self._error, None  # no reference cycle through the traceback
            if isinstance(error, asyncio.CancelledError):
                # Not the caller's task being cancelled: the transfer was.
                raise CancelledError("The transfer was cancelled.") from None
            raise error
        assert self._has_result
        return self._result  # type: ignore[return-value]


def _wind_down(loop: asyncio.AbstractEventLoop) -> None:
    """What asyncio.run does after the main coroutine: no task, generator or thread left."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())


def _run(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    worker = _Worker(work)
    try:
        # Within the try: the transfer may be under way before start() has returned.
        worker.start()
        worker.wait()
    except BaseException:
        # Ctrl-C, or anything else that stops the wait: the transfer must not outlive it
        # half-done, so cancel it and give it a moment to tidy up.
        worker.cancel()
        worker.wait(CANCEL_GRACE)
        raise
    return worker.outcome()


def blocking_twin(entry: EntryPoint, coroutine: Callable[P, Coroutine[Any, Any, T]],
                  side: Literal["send", "receive"]) -> Callable[P, T]:
    """``coroutine`` for code that does not await: the same arguments, and it returns when
    the transfer ends. The display is made here, in the caller's thread (a widget belongs
    to it), and the transfer runs on a private loop in a worker thread."""

    @functools.wraps(coroutine)
    def twin(*args: P.args, **kwargs: P.kwargs) -> T:
        # The kernel's loop is blocked until this returns: a widget's click would not be
        # heard (ipykernel handles comm messages on that loop), so the panel says to
        # interrupt the kernel instead, which cancels (see _run).
        _refuse_own_relay(entry, args[0] if args else kwargs.get("server"))
        options, rest = split_display(entry, side, kwargs, blocking=True)
        call = cast(Callable[..., Coroutine[Any, Any, T]], coroutine)
        return _run(lambda: call(*args, **rest, options=options))

    twin.__name__ = twin.__qualname__ = api.twin_names(entry)[0]
    twin.__doc__ = (f"``p2p_copy.{entry}(...)`` for code that does not await: returns when "
                    f"the transfer ends.\n\n{coroutine.__doc__ or ''}")
    return twin


def _refuse_own_relay(entry: EntryPoint, server: object) -> None:
    """A UsageError at once if the relay at ``server`` runs on the loop this call blocks."""
    loop = asyncio._get_running_loop()  # None outside a loop: nothing to block
    if loop is None or not isinstance(server, str):
        return
    if inprocess.served_here(loop, server):
        raise UsageError(
            f"The relay at {server} runs in this event loop, which {entry}_blocking() "
            f"would block until it gives up. Use await p2p_copy.{entry}(...) or "
            f"p2p_copy.{api.twin_names(entry)[1]}(...) here, or run the "
            "relay in another process."
        )


def split_display(entry: EntryPoint, side: Literal["send", "receive"],
                  kwargs: Mapping[str, Any], *,
                  blocking: bool = False) -> tuple[Options, dict[str, Any]]:
    """The options of a call (with its display made now) and its other keywords."""
    fields = OptionFields.__annotations__
    options = resolve(entry, kwargs.get("options"),
                      {k: v for k, v in kwargs.items() if k in fields})
    rest = {k: v for k, v in kwargs.items() if k not in fields and k != "options"}
    display = make_progress(options.progress, side, entry=entry, blocking=blocking)
    return dataclasses.replace(options, progress=display), rest


send_blocking = blocking_twin("send", *api.ENTRY_POINTS["send"])
receive_blocking = blocking_twin("receive", *api.ENTRY_POINTS["receive"])
send_stream_blocking = blocking_twin("send_stream", *api.ENTRY_POINTS["send_stream"])
receive_stream_blocking = blocking_twin("receive_stream", *api.ENTRY_POINTS["receive_stream"])
send_text_blocking = blocking_twin("send_text", *api.ENTRY_POINTS["send_text"])
receive_text_blocking = blocking_twin("receive_text", *api.ENTRY_POINTS["receive_text"])
send_object_blocking = blocking_twin("send_object", *api.ENTRY_POINTS["send_object"])
receive_object_blocking = blocking_twin("receive_object", *api.ENTRY_POINTS["receive_object"])
