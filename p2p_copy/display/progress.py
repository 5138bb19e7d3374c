"""The one place that decides how a transfer shows its progress, and shows it.

``make_progress`` picks a display: an explicit choice, else $P2P_COPY_PROGRESS, else a
widget inside a Jupyter kernel, a tqdm bar when stderr is a terminal and nothing
otherwise. ``json`` writes one event per line to stdout for scripts; the widget lives in
notebook.py. Displays only watch, with one exception: a receiver's display is shown the
offer before anything is written (``offer``) and may ask the person whether to take it.
Everything a display shows on a terminal is escaped (paths.display_name, or JSON's
ASCII escapes): names and reasons come from the peer or the relay.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any, Literal, Protocol, cast

from ..errors import CancelledError, P2PCopyError, UsageError
from ..protocol.paths import display_name
from ..protocol.policy import OfferSummary, shown_names
from ..results import FileResult, TransferResult

__all__ = [
    "Progress",
    "ProgressKind",
    "NoProgress",
    "TqdmProgress",
    "JsonProgress",
    "with_code_on_stderr",
    "make_progress",
    "in_jupyter_kernel",
    "offer_lines",
    "human_size",
    "is_terminal",
    "receive_lines",
    "receiver_call",
    "receive_snippet",
    "python_str",
    "Rate",
]

ProgressKind = Literal["auto", "widget", "tqdm", "json", "none"]
PROGRESS_ENV = "P2P_COPY_PROGRESS"


class Progress(Protocol):
    """What a transfer tells its display, in this order.

    ``bind_cancel`` comes first; a sender may call ``showing_code`` before ``waiting``.
    A receive into a folder may also call ``bind_partial(dest, find, discard_call)``
    (peer/partial.py) on a display that has it, so that a stop can say what was kept.
    """

    def bind_cancel(self, cancel: Callable[[], object]) -> None:
        """``cancel()`` stops the transfer, from any thread: for a Cancel control."""

    def showing_code(self, server: str, code: str) -> None:
        """Sender: the relay and code the receiver needs, for the display to show."""

    def waiting(self) -> None:
        """Connected to the relay; waiting for the other side."""

    def offer(self, summary: OfferSummary) -> Awaitable[bool] | None:
        """Receiver, before anything is written to its disk: what the sender offers.

        Show it, and return None if nobody can be asked (the receiver's policy then
        decides: see policy.check_offer), or an awaitable of the person's answer. The
        sender waits for the answer: see peer/session.py OFFER_TIMEOUT. Optional: a display without
        it is treated as returning None. Not called on a reconnect that offers the same.
        """

    def started(self, total_bytes: int, total_files: int) -> None:
        """The manifest is agreed; bytes start to flow."""

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more bytes were sent or written."""

    def file_done(self, result: FileResult) -> None:
        """A file is complete (receiver: verified and under its final name)."""

    def verifying(self) -> None:
        """Every byte has moved; waiting for the final checks and the peer's confirmation.

        A sender reports its ``file_done`` after this, once the receiver has confirmed.
        """

    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        """The connection dropped (``reason``); attempt ``attempt`` starts in ``delay`` s.

        Optional: a display without it is not told. ``waiting`` follows once connected.
        """

    def resumed(self, bytes_done: int) -> None:
        """After ``started``: ``bytes_done`` bytes were already there (verified prefixes).

        Optional, like ``reconnecting``; it replaces the count ``advance`` added up.
        """

    def finished(self, result: TransferResult) -> None:
        """Everything arrived and was verified."""

    def failed(self, error: BaseException) -> None:
        """The transfer failed with ``error``."""


class NoProgress:
    """Shows nothing: for pipes, logs and library use."""

    def bind_cancel(self, cancel: Callable[[], object]) -> None: ...
    def showing_code(self, server: str, code: str) -> None: ...
    def waiting(self) -> None: ...
    def offer(self, summary: OfferSummary) -> Awaitable[bool] | None: return None
    def started(self, total_bytes: int, total_files: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def file_done(self, result: FileResult) -> None: ...
    def verifying(self) -> None: ...
    def reconnecting(self, attempt: int, delay: float, reason: str) -> None: ...
    def resumed(self, bytes_done: int) -> None: ...
    def finished(self, result: TransferResult) -> None: ...
    def failed(self, error: BaseException) -> None: ...


class TqdmProgress(NoProgress):
    """A tqdm bar on stderr (tqdm's notebook bar in a kernel): bytes, rate, ETA.

    The code a sender shows is printed above the bar, with the call and the command the
    other side runs (``entry`` says which kind is sent: see receive_lines). The rate and
    ETA count the bytes that crossed in this run: after a resume the bar starts again at
    what was already there (tqdm's ``initial``) and says so.
    """

    def __init__(self, label: str, stream: IO[str] | None = None, *,
                 entry: str | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.entry = entry
        #: Whether showing_code prints; with_code_on_stderr turns it off (it prints its own).
        self.prints_code = True
        self.bar: Any = None
        self._total = 0
        self._files = 0

    def showing_code(self, server: str, code: str) -> None:
        if self.prints_code:
            print("\n".join(receive_lines(server, code, self.entry)), file=self.stream,
                  flush=True)

    def waiting(self) -> None:
        print(f"{self.label}: waiting for the other side...", file=self.stream, flush=True)

    def offer(self, summary: OfferSummary) -> Awaitable[bool] | None:
        print("\n".join(offer_lines(summary)), file=self.stream, flush=True)
        return None

    def started(self, total_bytes: int, total_files: int) -> None:
        self._total, self._files = total_bytes, total_files
        self._open(0, "")

    def _open(self, initial: int, note: str) -> None:
        # tqdm.auto gives the notebook bar in a kernel; outside one the plain bar, without
        # importing tqdm.auto (and IPython's checks) on every CLI run.
        if in_jupyter_kernel():
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm  # deferred: importing tqdm costs start-up time for every CLI run

        noun = "file" if self._files == 1 else "files"
        self.bar = tqdm(
            total=self._total,
            initial=initial,
            desc=f"{self.label} {self._files} {noun}{note}",
            unit="iB",  # with 1024: KiB, MiB, GiB, as every other size p2p-copy prints
            unit_scale=True,
            unit_divisor=1024,
            file=self.stream,
            dynamic_ncols=True,
            leave=True,
        )

    def advance(self, nbytes: int) -> None:
        if self.bar is not None:
            self.bar.update(nbytes)

    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        line = (f"{self.label}: reconnecting in {delay:.1f} s (attempt {attempt}): "
                f"{display_name(reason)}")
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def resumed(self, bytes_done: int) -> None:
        if self.bar is None:
            return
        # A new bar from what was already there: tqdm's rate is (n - initial) / elapsed,
        # so bytes that did not cross in this run do not make it jump.
        self.bar.leave = False
        self.bar.close()
        note = f" (resumed from {human_size(bytes_done)})" if bytes_done else ""
        self._open(bytes_done, note)

    def finished(self, result: TransferResult) -> None:
        self._close()

    def failed(self, error: BaseException) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Rate:
    """Bytes per second and ETA over the bytes that crossed since the start or a resume.

    After ``resumed(n)`` the n bytes that were already there count towards done, not
    towards the rate: a resume of 1 GiB of 1.1 GiB must not show 1.5 GiB/s.
    """

    def __init__(self, now: float) -> None:
        self.since = now
        self.base = 0
        #: The bytes a resume found already there (0: nothing was resumed).
        self.resumed_from = 0

    def restart(self, now: float) -> None:
        self.since, self.base = now, 0

    def resumed(self, bytes_done: int, now: float) -> None:
        self.since, self.base = now, bytes_done
        self.resumed_from = bytes_done

    def rate(self, done: int, now: float) -> float:
        elapsed = now - self.since
        return max(done - self.base, 0) / elapsed if elapsed > 0 else 0.0

    def eta(self, done: int, total: int, now: float) -> float | None:
        rate = self.rate(done, now)
        return (total - done) / rate if rate > 0 and total >= done else None


class JsonProgress(NoProgress):
    """One JSON object per line: waiting, started, progress (at most every ``interval`` s),
    file, reconnecting, resumed, verifying, finished, error.
    """

    def __init__(self, stream: IO[str] | None = None, interval: float = 0.5) -> None:
        self.stream = stream or sys.stdout
        self.interval = interval
        self.total = 0
        self.done = 0
        self._last = 0.0
        self._rate = Rate(time.monotonic())

    def _emit(self, event: str, **fields: Any) -> None:
        # ASCII only: a name or a relay's close reason holding C1 controls or bidi
        # overrides would otherwise reach a terminal as they are (JSON escapes only C0).
        line = json.dumps({"event": event, **fields}, ensure_ascii=True)
        self.stream.write(line + "\n")
        self.stream.flush()

    def showing_code(self, server: str, code: str) -> None:
        self._emit("code", server=server, code=code)

    def waiting(self) -> None:
        self._emit("waiting")

    def offer(self, summary: OfferSummary) -> Awaitable[bool] | None:
        # Lists are cut: a manifest may name a million entries, a line should stay short.
        def first(names: tuple[str, ...]) -> list[str]:
            return list(names[:JSON_NAMES])

        self._emit("offer", files=summary.files, folders=summary.folders,
                   bytes_total=summary.total_bytes, stream=summary.stream,
                   top_level=first(summary.top_level), top_level_total=len(summary.top_level),
                   hidden=first(summary.hidden), hidden_total=len(summary.hidden),
                   executables=first(summary.executables),
                   executables_total=len(summary.executables),
                   git_hooks=first(summary.git_hooks), git_hooks_total=len(summary.git_hooks),
                   hidden_inside=summary.hidden_inside)
        return None

    def started(self, total_bytes: int, total_files: int) -> None:
        self.total = total_bytes
        self._rate.restart(time.monotonic())
        self._emit("started", bytes_total=total_bytes, files_total=total_files)

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._progress(now)

    def _progress(self, now: float) -> None:
        # The rate of the bytes that crossed in this run, not of those a resume found.
        extra = {"resumed_from": self._rate.resumed_from} if self._rate.resumed_from else {}
        self._emit("progress", bytes_done=self.done, bytes_total=self.total,
                   rate=round(self._rate.rate(self.done, now)), **extra)

    def file_done(self, result: FileResult) -> None:
        # ``algorithm`` and ``digest`` for scripts; the digest also under its algorithm's
        # name, so that "sha256" is there whenever SHA-256 was used, as before BLAKE3.
        self._emit("file", path=display_name(result.path), size=result.size,
                   algorithm=result.algorithm, digest=result.digest,
                   **{result.algorithm: result.digest})

    def verifying(self) -> None:
        self._emit("verifying", bytes_done=self.done, bytes_total=self.total)

    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        self._emit("reconnecting", attempt=attempt, delay=round(delay, 3), reason=reason)

    def resumed(self, bytes_done: int) -> None:
        self.done = bytes_done
        self._rate.resumed(bytes_done, time.monotonic())
        self._emit("resumed", bytes_done=bytes_done, bytes_total=self.total)

    def finished(self, result: TransferResult) -> None:
        self._progress(time.monotonic())
        self._emit(
            "finished",
            files=len(result.files),
            bytes=result.bytes,
            seconds=round(result.duration, 3),
            exit_code=0,
        )

    def failed(self, error: BaseException) -> None:
        message = str(error) or "The transfer was cancelled."
        self._emit("error", error=type(error).__name__, message=message,
                   exit_code=exit_code_for(error))


#: Names listed per kind in a JSON ``offer`` event (the ``*_total`` fields count them all).
JSON_NAMES = 100


def human_size(n: float) -> str:
    """``n`` bytes in binary units: 512 B, 1.5 KiB, 3.0 GiB."""
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} TiB"


def offer_lines(summary: OfferSummary) -> list[str]:
    """The offer as lines for a terminal: what arrives, and what deserves a second look.

    Every name is escaped and quoted (policy.shown_names): the sender chose them.
    """
    def count(n: int, noun: str) -> str:
        return f"{n:,} {noun}{'' if n == 1 else 's'}"

    size = human_size(summary.total_bytes)
    if summary.stream:
        size += " and a stream of unknown length"
    lines = [f"The sender offers {count(summary.files, 'file')} and "
             f"{count(summary.folders, 'folder')}, {size}:",
             f"  {shown_names(summary.top_level)}"]
    if summary.hidden:
        lines.append(f"  Hidden, at the top level (they may change how programs here "
                     f"behave): {shown_names(summary.hidden)}")
    if summary.git_hooks:
        lines.append(f"  Git hooks or config (git runs them in that folder): "
                     f"{shown_names(summary.git_hooks, 5)}")
    if summary.executables:
        lines.append(f"  Executable: {shown_names(summary.executables, 5)}")
    if summary.hidden_inside == 1:
        lines.append("  1 entry inside a folder is hidden or in a hidden folder.")
    elif summary.hidden_inside:
        lines.append(f"  {summary.hidden_inside:,} entries inside folders are hidden or in "
                     "hidden folders.")
    return lines


#: The call the other side makes for what each sender sends: an object or a text comes
#: back as a value (``receive`` would save it to a file), files and a stream land in a folder.
RECEIVER_CALLS = {
    "send": "receive", "send_stream": "receive",
    "send_text": "receive_text", "send_object": "receive_object",
}


def receiver_call(entry: str | None) -> str:
    """The name of the p2p_copy call that receives what ``entry`` (send_object...) sends."""
    return RECEIVER_CALLS.get(entry or "send", "receive")


def python_str(text: str) -> str:
    """``text`` as a double-quoted Python literal that shows every character it holds."""
    return '"' + display_name(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def receive_snippet(server: str, code: str, entry: str | None) -> str:
    """The line the other side runs in Python to receive what ``entry`` sends."""
    return f"await p2p_copy.{receiver_call(entry)}({python_str(server)}, {python_str(code)})"


def receive_lines(server: str, code: str, entry: str | None = None) -> list[str]:
    """The code and what the other side runs (in Python, and on a command line), as text.

    Escaped for a terminal: the server comes from the caller, but a chosen code may hold
    anything.
    """
    shown_server, shown_code = display_name(server), display_name(code)
    return [f"Code: {shown_code}",
            f"On the other side run:  {receive_snippet(server, code, entry)}",
            f"or on a command line:   p2p-copy receive {shown_server} {shown_code}"]


def code_shown_elsewhere(display: Progress) -> None:
    """The caller prints the code and the other side's line: ``display`` (a text display)
    must not print them a second time."""
    if hasattr(display, "prints_code"):
        display.prints_code = False


class _CodeOnStderr:
    """Shows the code on stderr, then forwards every call to the display it wraps."""

    def __init__(self, display: Progress, stream: IO[str] | None = None) -> None:
        self._display = display
        self._stream = stream or sys.stderr
        code_shown_elsewhere(display)

    def showing_code(self, server: str, code: str) -> None:
        code, server = display_name(code), display_name(server)
        print(f"Code: {code}\nOn the other machine run: p2p-copy receive {server} {code}",
              file=self._stream, flush=True)
        self._display.showing_code(server, code)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._display, name)


def with_code_on_stderr(display: Progress, stream: IO[str] | None = None) -> Progress:
    """``display``, made to print a generated code for the person at the terminal."""
    return cast(Progress, _CodeOnStderr(display, stream))


def make_progress(kind: ProgressKind | Progress | None, label: str, *,
                  entry: str | None = None, blocking: bool = False) -> Progress:
    """The display to use: an object is used as it is; a name, the env or auto decide otherwise.

    ``entry`` (send_object, ...) says which call the other side needs; ``blocking``, that
    the kernel's loop is blocked while the transfer runs, so a widget button would never
    be heard (notebook.py).
    """
    if kind is not None and not isinstance(kind, str):
        return kind
    chosen = kind or os.environ.get(PROGRESS_ENV) or "auto"
    if chosen == "auto":
        if in_jupyter_kernel():
            chosen = "widget"
        else:
            chosen = "tqdm" if is_terminal(sys.stderr) else "none"
    if chosen == "widget":
        from .notebook import WidgetProgress  # deferred: ipywidgets takes ~0.3 s to import

        return WidgetProgress(label, entry=entry, blocking=blocking)
    if chosen == "tqdm":
        return TqdmProgress(label, entry=entry)
    if chosen == "json":
        return JsonProgress()
    if chosen == "none":
        return NoProgress()
    raise UsageError(
        f"Unknown progress display {chosen!r}: use auto, widget, tqdm, json or none."
    )


def in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel (not plain IPython in a terminal).

    Looks only at an IPython that is already imported: importing it to find out would
    cost every CLI run a third of a second.
    """
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    if get_ipython is None:
        return False
    try:
        shell = get_ipython()
    except Exception:  # a half-initialised or foreign IPython: not a kernel we can use
        return False
    return getattr(shell, "kernel", None) is not None


def is_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` is a terminal (a closed or replaced stream is not)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def exit_code_for(exc: BaseException) -> int:
    """The CLI exit code for ``exc``: its class's, 130 for an interruption, else 1."""
    if isinstance(exc, P2PCopyError):
        return exc.exit_code
    if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)):
        return CancelledError.exit_code
    return 1
