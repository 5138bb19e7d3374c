"""Transfers that run in the background of the caller's event loop, behind a handle.

A notebook cell that starts ``t = p2p_copy.start_receive(...)`` returns at once; the
transfer goes on in the kernel's loop while the notebook is used for other things, and
``t`` says how far it got, can be cancelled, and is awaited for the result. The handle
learns what happens by standing between the transfer and its display.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import sys
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Generic, Literal, ParamSpec, TypeVar, cast

from ..display.progress import Progress
from ..errors import CancelledError, UsageError
from ..protocol.messages import Role
from ..protocol.paths import display_name
from ..protocol.policy import OfferSummary
from ..results import FileResult, TransferResult
from . import api
from .blocking import split_display
from .options import EntryPoint
from .session import optional

__all__ = [
    "Transfer",
    "Status",
    "transfers",
    "background_twin",
    "start_send",
    "start_receive",
    "start_send_stream",
    "start_receive_stream",
    "start_send_text",
    "start_receive_text",
    "start_send_object",
    "start_receive_object",
]

Status = Literal["waiting", "transferring", "reconnecting", "verifying", "done", "failed",
                 "cancelled"]

T = TypeVar("T")
P = ParamSpec("P")

# The loop keeps only weak references to tasks: a handle the caller drops must not
# take its transfer with it to the garbage collector. In start order, for transfers().
_RUNNING: dict[asyncio.Task[Any], Transfer[Any]] = {}




class _Tracker:
    """A Progress that notes the state of the transfer, then tells the real display."""

    def __init__(self, inner: Progress) -> None:
        self.inner = inner
        self.status: Status = "waiting"
        self.bytes_done = 0
        self.bytes_total = 0
        #: The peer was reached (paired() was called), whatever the status says.
        self.joined = False
        self.code: str | None = None

    def bind_cancel(self, cancel: Callable[[], object]) -> None:
        self.inner.bind_cancel(cancel)

    def bind_partial(self, *args: Any) -> None:
        optional(self.inner, "bind_partial", *args)

    def showing_code(self, server: str, code: str) -> None:
        self.code = code
        self.inner.showing_code(server, code)

    def paired(self) -> None:
        # Still "waiting" for the peer's answer, but no longer for a peer: someone is there.
        self.joined = True
        optional(self.inner, "paired")

    def waiting(self) -> None:
        self.status = "waiting"
        self.inner.waiting()

    def offer(self, summary: OfferSummary) -> Awaitable[bool] | None:
        # A receiver's panel shows what is offered (and an asking display asks).
        method = getattr(self.inner, "offer", None)
        return method(summary) if method is not None else None

    def started(self, total_bytes: int, total_files: int) -> None:
        self.status = "transferring"
        self.bytes_total = total_bytes
        self.inner.started(total_bytes, total_files)

    def advance(self, nbytes: int) -> None:
        self.bytes_done += nbytes
        self.inner.advance(nbytes)

    def file_done(self, result: FileResult) -> None:
        self.inner.file_done(result)

    def verifying(self) -> None:
        self.status = "verifying"
        self.inner.verifying()

    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        self.status = "reconnecting"
        optional(self.inner, "reconnecting", attempt, delay, reason)

    def resumed(self, bytes_done: int) -> None:
        self.status = "transferring"
        self.bytes_done = bytes_done
        optional(self.inner, "resumed", bytes_done)

    def finished(self, result: TransferResult) -> None:
        self.status = "done"
        self.bytes_done = self.bytes_total = result.bytes
        self.inner.finished(result)

    def failed(self, error: BaseException) -> None:
        self.status = "cancelled" if _is_cancellation(error) else "failed"
        self.inner.failed(error)


class Transfer(Generic[T]):
    """A send or receive running as a task in the loop that started it.

    ``await t`` gives the transfer's result (a TransferResult; the object or text for
    start_receive_object and start_receive_text) or raises the transfer's error; a cancelled
    transfer raises p2p_copy.CancelledError, however early it was cancelled. Cancelling
    the task that awaits ``t`` cancels the transfer too, as with any task.
    """

    def __init__(
        self, role: Role, work: Coroutine[Any, Any, T], tracker: _Tracker,
        cell: tuple[str, str] | None = None,
    ) -> None:
        self.role: Role = role
        self._tracker = tracker
        self._cell = cell
        self._cancelled: CancelledError | None = None
        self._task = asyncio.get_running_loop().create_task(work, name=f"p2p-copy {role}")
        _RUNNING[self._task] = self
        self._task.add_done_callback(self._settle)

    def _settle(self, task: asyncio.Task[T]) -> None:
        _RUNNING.pop(task, None)
        # Retrieving the error here spares a caller who never awaits the handle asyncio's
        # "Task exception was never retrieved"; exception() still returns it.
        error = self._final_error()
        if error is None:
            self._tracker.status = "done"
        else:
            self._tracker.status = "cancelled" if _is_cancellation(error) else "failed"

    def _final_error(self) -> BaseException | None:
        return self._cancellation() if self._task.cancelled() else self._task.exception()

    def _cancellation(self) -> CancelledError:
        """The error of a task cancelled before the transfer could raise its own."""
        if self._cancelled is None:
            self._cancelled = CancelledError(f"The {self.role} cancelled the transfer.")
        return self._cancelled

    @property
    def status(self) -> Status:
        """waiting, transferring, verifying, done, failed or cancelled."""
        return self._tracker.status

    @property
    def code(self) -> str | None:
        """The code, once known: the receiver's; the sender's once shown (a generated one
        once the relay confirmed its room)."""
        return self._tracker.code

    @property
    def bytes_done(self) -> int:
        return self._tracker.bytes_done

    @property
    def bytes_total(self) -> int:
        """0 until both sides have agreed on what is sent."""
        return self._tracker.bytes_total

    @property
    def progress(self) -> Progress:
        """The display the transfer reports to (a widget panel in a notebook)."""
        return self._tracker.inner

    @property
    def task(self) -> asyncio.Task[T]:
        """The asyncio task, for asyncio.wait and friends."""
        return self._task

    @property
    def error(self) -> BaseException | None:
        """Why the transfer failed; None while it runs or if it succeeded."""
        return self._final_error() if self._task.done() else None

    def done(self) -> bool:
        return self._task.done()

    def cancel(self) -> bool:
        """Stop the transfer: the peer is told; a receiver keeps the files that arrived in
        part, hidden as ``.NAME.p2p-copy-part``, so that the same receive run again
        continues them. False if it had already ended.
        """
        return self._task.cancel()

    def result(self) -> T:
        """The result, or the transfer's error raised; InvalidStateError while it runs."""
        error = self.exception()
        if error is not None:
            raise error
        return self._task.result()

    def exception(self) -> BaseException | None:
        """The transfer's error, or None if it succeeded; InvalidStateError while it runs."""
        if not self._task.done():
            raise asyncio.InvalidStateError("The transfer has not finished yet: await it.")
        return self._final_error()

    def __await__(self) -> Generator[Any, None, T]:
        return self._outcome().__await__()

    async def _outcome(self) -> T:
        me = asyncio.current_task()
        before = me.cancelling() if me is not None else 0
        try:
            return await self._task
        except (asyncio.CancelledError, CancelledError) as exc:
            if me is not None and me.cancelling() > before:
                # Whoever awaits was cancelled (a timeout, say) and, as with any task, took
                # the transfer along: they see their own cancellation, so that
                # asyncio.timeout() can turn it into TimeoutError.
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise asyncio.CancelledError() from exc
            if isinstance(exc, asyncio.CancelledError):
                raise self._cancellation() from None
            raise

    def summary(self) -> str:
        """One line: role, state and bytes, or the error (and a waiting sender's code)."""
        text = f"p2p-copy {self.role}: {self.status}"
        if self.status in ("failed", "cancelled") and self.error is not None:
            return f"{text} ({type(self.error).__name__}: {self.error})"
        if self.bytes_total or self.status != "waiting":
            text += f", {self.bytes_done:,} of {self.bytes_total:,} bytes"
        elif self.role == "sender" and self.code is not None:
            # The code a sender waits with is what the other side needs.
            text += f", code {display_name(self.code)}"
        return text

    def __repr__(self) -> str:
        return f"<Transfer {self.summary()}>"

    def _ipython_display_(self) -> None:
        inner = self._tracker.inner
        widget = getattr(inner, "widget", None)
        if widget is None:
            _show({"text/plain": self.summary()}, raw=True)
            return
        # The display's own method also notes that it is on screen, so that it does not
        # show itself a second time when the transfer starts waiting.
        show = getattr(inner, "_ipython_display_", None)
        if callable(show):
            show()
        else:
            _show(widget)


def transfers() -> list[Transfer[Any]]:
    """The transfers started with ``start_*`` in this process that have not ended yet,
    oldest first: to see them, or cancel the ones a re-run cell left behind."""
    return list(_RUNNING.values())


def _current_cell() -> tuple[str, str] | None:
    """The id of the notebook cell running now, else None.

    JupyterLab and Notebook 7 put it in an execute request's metadata (``cellId``); the
    kernel keeps the request it is handling as its parent. Looks only at an IPython that
    is already imported, as progress.in_jupyter_kernel does.
    """
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    try:
        kernel = getattr(get_ipython(), "kernel", None) if get_ipython is not None else None
        parent = kernel.get_parent() if kernel is not None else None
    except Exception:  # a foreign or half-initialised kernel: no cell to tell
        return None
    metadata = parent.get("metadata") if isinstance(parent, dict) else None
    cell = metadata.get("cellId") if isinstance(metadata, dict) else None
    header = parent.get("header") if isinstance(parent, dict) else None
    run = header.get("msg_id") if isinstance(header, dict) else None
    # The cell, and which run of it: transfers one run starts together do not replace
    # each other (a loop, or a send and a receive in one cell).
    return (cell, str(run)) if isinstance(cell, str) else None


def _replace_earlier(cell: tuple[str, str] | None) -> None:
    """A cell run again replaces what it started before.

    A transfer from an earlier run of this cell that still waits for its peer to join
    (not one whose peer is there, answering the offer, say) is cancelled: its
    panel (and the code on it) went with the cell's old output, so nobody can join it,
    and it would hold its relay room until the wait times out. One that is under way
    is left alone, with a warning: someone is receiving it, and stopping it is their
    call (``p2p_copy.transfers()`` lists it, ``.cancel()`` stops it).
    """
    if cell is None:
        return
    for transfer in transfers():
        if transfer._cell is None or transfer._cell[0] != cell[0] or transfer._cell == cell:
            continue  # another cell, or this same run of it
        if transfer.status == "waiting" and not transfer._tracker.joined:
            transfer.cancel()
        else:
            warnings.warn(
                f"An earlier run of this cell is still transferring ({transfer.summary()}); "
                "it goes on. p2p_copy.transfers() lists it; its .cancel() stops it.",
                RuntimeWarning, stacklevel=3)


def _is_cancellation(error: BaseException) -> bool:
    return isinstance(error, (CancelledError, asyncio.CancelledError))


def _show(obj: object, raw: bool = False) -> None:
    from IPython.display import display  # deferred: only a notebook displays a handle

    display(obj, raw=raw)  # type: ignore[no-untyped-call]


def _running_loop(name: str, twin: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise UsageError(
            f"p2p_copy.{name}() runs the transfer in the background of a running event loop "
            f"(a notebook cell, or a coroutine), and there is none here. Outside a loop use "
            f"p2p_copy.{twin}(...), which waits for the transfer to end."
        ) from None


def background_twin(entry: EntryPoint, coroutine: Callable[P, Coroutine[Any, Any, T]],
                    side: Literal["send", "receive"]) -> Callable[P, Transfer[T]]:
    """``coroutine`` started in the background of the running loop: the same arguments,
    and it returns a Transfer handle at once."""
    blocking = api.twin_names(entry)[0]

    @functools.wraps(coroutine)
    def twin(*args: P.args, **kwargs: P.kwargs) -> Transfer[T]:
        _running_loop(twin.__name__, blocking)
        options, rest = split_display(entry, side, kwargs)
        tracker = _Tracker(cast(Progress, options.progress))
        if side == "receive":
            tracker.code = _given_code(coroutine, args, kwargs)
        call = cast(Callable[..., Coroutine[Any, Any, T]], coroutine)
        work = call(*args, **rest, options=dataclasses.replace(options, progress=tracker))
        cell = _current_cell()
        _replace_earlier(cell)
        return Transfer("sender" if side == "send" else "receiver", work, tracker, cell)

    twin.__name__ = twin.__qualname__ = api.twin_names(entry)[1]
    twin.__doc__ = (f"Start ``p2p_copy.{entry}(...)`` in the background of the running loop; "
                    f"return its handle (await it for the result).\n\n{coroutine.__doc__ or ''}")
    return twin


def _given_code(coroutine: Callable[..., Any], args: tuple[Any, ...],
                kwargs: dict[str, Any]) -> str | None:
    try:
        code = inspect.signature(coroutine).bind_partial(*args, **kwargs).arguments.get("code")
    except TypeError:
        return None  # the call itself says what is wrong with its arguments
    return code if isinstance(code, str) else None



start_send = background_twin("send", *api.ENTRY_POINTS["send"])
start_receive = background_twin("receive", *api.ENTRY_POINTS["receive"])
start_send_stream = background_twin("send_stream", *api.ENTRY_POINTS["send_stream"])
start_receive_stream = background_twin("receive_stream", *api.ENTRY_POINTS["receive_stream"])
start_send_text = background_twin("send_text", *api.ENTRY_POINTS["send_text"])
start_receive_text = background_twin("receive_text", *api.ENTRY_POINTS["receive_text"])
start_send_object = background_twin("send_object", *api.ENTRY_POINTS["send_object"])
start_receive_object = background_twin("receive_object", *api.ENTRY_POINTS["receive_object"])
