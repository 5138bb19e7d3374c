"""Transfers in Jupyter: a progress panel with a Cancel button, and the code to share.

``WidgetProgress`` is the display ``make_progress`` picks inside a kernel. Every widget
change is a comm message to the browser, so while bytes flow the panel is redrawn at
most once per ``interval``; state changes and the end are always shown. ``CodeDisplay``
is what a sender shows: the line the receiver runs, a button to copy it, a QR code of it.

Nothing imports this module (or ipywidgets, or segno) until a notebook display is asked for.
"""

from __future__ import annotations

import asyncio
import html
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import CancelledError, P2PCopyError
from ..protocol.paths import display_name
from ..protocol.policy import OfferSummary
from ..results import FileResult, TransferResult
from .progress import NoProgress, human_size, in_jupyter_kernel, offer_lines

__all__ = ["WidgetProgress", "CodeDisplay", "show_code", "UPDATE_INTERVAL"]

#: Seconds between two redraws of a panel while bytes flow.
UPDATE_INTERVAL = 0.1


class WidgetProgress(NoProgress):
    """An ipywidgets panel for one transfer: state, bar (in bytes), file, rate, ETA, Cancel.

    A receiver's panel also shows what the sender offers, hidden and executable entries
    pointed out. It cannot ask whether to take it: the receiver's policy decides
    (ReceivePolicy(allow_hidden=...)), as for any other use of the Python API.

    ``display``: whether ``waiting()`` shows the panel if nobody has yet. ``None`` (the
    default) means only inside a Jupyter kernel; with ``False`` the caller shows ``widget``.
    """

    def __init__(
        self, label: str, *, display: bool | None = None, interval: float = UPDATE_INTERVAL
    ) -> None:
        import ipywidgets as widgets  # type: ignore[import-untyped]

        self.label = label
        self.interval = interval
        #: waiting for peer, transferring, verifying, done, cancelled or failed: <error>.
        self.state = "connecting"
        self.bytes_done = 0
        self.bytes_total = 0
        self.files_done = 0
        self.files_total = 0
        self.ended = False
        self._show_on_wait = in_jupyter_kernel() if display is None else display
        self._shown = False
        self._cancel: Callable[[], object] | None = None
        self._last_file = ""
        self._summary = ""
        self._start = time.monotonic()
        self._last_draw = -math.inf

        self.code: Any = widgets.HTML(layout=widgets.Layout(display="none"))
        self.title: Any = widgets.HTML()
        # max stays >= 1 so that an empty transfer can end full (value == max).
        self.bar: Any = widgets.FloatProgress(
            value=0.0, min=0.0, max=1.0, layout=widgets.Layout(flex="1 1 auto", width="auto")
        )
        self.button: Any = widgets.Button(
            description="Cancel",
            icon="stop",
            disabled=True,
            tooltip="Stop the transfer: the other side is told, nothing partial is kept",
            layout=widgets.Layout(width="auto"),
        )
        self.button.on_click(self._on_cancel)
        self.file: Any = widgets.HTML()
        self.stats: Any = widgets.HTML()
        self.offered: Any = widgets.HTML(layout=widgets.Layout(display="none"))
        self.widget: Any = widgets.VBox(
            [self.code, self.title, widgets.HBox([self.bar, self.button]), self.file, self.stats,
             self.offered]
        )
        self._draw()

    # What the transfer tells us (see progress.Progress).

    def bind_cancel(self, cancel: Callable[[], object]) -> None:
        self._cancel = cancel
        self.button.disabled = self.ended

    def showing_code(self, server: str, code: str) -> None:
        self.code.value = CodeDisplay(server, code)._repr_html_()
        self.code.layout.display = None

    def waiting(self) -> None:
        self.state = "waiting for peer"
        self._draw()
        if self._show_on_wait and not self._shown:
            self._ipython_display_()

    def offer(self, summary: OfferSummary) -> Awaitable[bool] | None:
        # The terminal's lines, one per row: each name in them is escaped already.
        first, *rest = offer_lines(summary)
        rows = "".join(f"<li>{html.escape(line.strip())}</li>" for line in rest)
        self.offered.value = (f'<div class="p2p-copy-offer">{html.escape(first)}'
                              f'<ul style="margin:0">{rows}</ul></div>')
        self.offered.layout.display = None
        return None

    def started(self, total_bytes: int, total_files: int) -> None:
        self.state = "transferring"
        self.bytes_total = total_bytes
        self.files_total = total_files
        self._start = time.monotonic()
        self.bar.max = float(max(total_bytes, 1))
        self._draw()

    def advance(self, nbytes: int) -> None:
        self.bytes_done += nbytes
        self._draw_now_and_then()

    def file_done(self, result: FileResult) -> None:
        self.files_done += 1
        self._last_file = display_name(result.path)
        self._draw_now_and_then()

    def verifying(self) -> None:
        self.state = "verifying"
        self._draw()

    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        self.state = f"reconnecting... (attempt {attempt})"
        self._draw()

    def resumed(self, bytes_done: int) -> None:
        self.state = "transferring"
        self.bytes_done = bytes_done
        self._draw()

    def finished(self, result: TransferResult) -> None:
        self.state = "done"
        self.bytes_done = self.bytes_total = result.bytes
        self.files_done = self.files_total = len(result.files)
        self._summary = f"{human_size(result.bytes)} in {_clock(result.duration)}"
        if result.duration > 0:
            self._summary += f" · {human_size(result.rate)}/s"
        self._end("success")

    def failed(self, error: BaseException) -> None:
        if isinstance(error, (CancelledError, asyncio.CancelledError)):
            self.state = "cancelled"
            self._end("warning")
        else:
            self.state = f"failed: {_message(error)}"
            self._end("danger")

    # The panel itself.

    def _ipython_display_(self) -> None:
        self._shown = True
        _display(self.widget)

    def _on_cancel(self, _button: object) -> None:
        # click() from code, or a click already on its way, ignores ``disabled``.
        if self._cancel is None or self.button.disabled:
            return
        try:
            self._cancel()
        finally:
            self.button.disabled = True
            self.button.description = "Cancelling"

    def _end(self, bar_style: str) -> None:
        self.ended = True
        if bar_style == "success":
            self.bar.value = self.bar.max
        self.bar.bar_style = bar_style
        self.button.disabled = True
        self.button.layout.display = "none"
        self._draw()

    def _draw_now_and_then(self) -> None:
        if time.monotonic() - self._last_draw >= self.interval:
            self._draw()

    def _draw(self) -> None:
        """Bring every widget up to date; only values that changed reach the browser."""
        now = time.monotonic()
        self._last_draw = now
        self.title.value = f"<b>{html.escape(self.label)}</b> · {html.escape(self.state)}"
        if self.state != "done":
            self.bar.value = float(min(self.bytes_done, self.bar.max))
        files = ""
        if self.files_total:
            noun = "file" if self.files_total == 1 else "files"
            files = f"{self.files_done} of {self.files_total} {noun}"
            if self._last_file:
                files += f" · last: <code>{html.escape(self._last_file)}</code>"
        self.file.value = files
        self.stats.value = self._summary or self._stats(now)

    def _stats(self, now: float) -> str:
        if not self.bytes_total and self.state in ("connecting", "waiting for peer"):
            return ""
        text = f"{human_size(self.bytes_done)} of {human_size(self.bytes_total)}"
        elapsed = now - self._start
        if self.state == "transferring" and self.bytes_done and elapsed > 0:
            rate = self.bytes_done / elapsed
            eta = (self.bytes_total - self.bytes_done) / rate
            text += f" · {human_size(rate)}/s · ETA {_clock(eta)}"
        return text


class CodeDisplay:
    """What a receiver needs: the code, the line to run (with a copy button), a QR code of it."""

    def __init__(self, server: str, code: str) -> None:
        self.server = server
        self.code = code

    @property
    def snippet(self) -> str:
        """The line the receiver runs in a notebook cell."""
        return f"await p2p_copy.receive({_python_str(self.server)}, {_python_str(self.code)})"

    def __str__(self) -> str:
        return f"Code: {display_name(self.code)}\nOn the receiving side run:\n    {self.snippet}"

    def __repr__(self) -> str:
        return f"CodeDisplay({self.server!r}, {self.code!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def _repr_html_(self) -> str:
        snippet = self.snippet
        # A JS string literal with no <, > or & left, then escaped for the attribute.
        literal = json.dumps(snippet)
        for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
            literal = literal.replace(char, escape)
        copy = (
            f"(navigator.clipboard ? navigator.clipboard.writeText({literal}) : Promise.reject())"
            ".then(() => { this.textContent = 'Copied'; },"
            " () => { this.textContent = 'Copy failed: select the line'; })"
        )
        return (
            '<div class="p2p-copy-code" style="display:flex;flex-wrap:wrap;'
            'align-items:center;gap:1em">'
            f"<div>{_qr_svg(snippet)}</div>"
            "<div>"
            f"<div>Code: <code>{html.escape(display_name(self.code))}</code></div>"
            "<div>On the receiving side run:</div>"
            '<pre style="margin:0.3em 0;white-space:pre-wrap">'
            f"<code>{html.escape(snippet)}</code></pre>"
            f'<button type="button" onclick="{html.escape(copy, quote=True)}">Copy</button>'
            "</div></div>"
        )


def show_code(server: str, code: str) -> None:
    """Show the code and the line a receiver runs (with a copy button and a QR code)."""
    _display(CodeDisplay(server, code))


def _display(obj: object) -> None:
    from IPython.display import display

    display(obj)  # type: ignore[no-untyped-call]


def _qr_svg(text: str) -> str:
    import segno

    try:
        qr = segno.make(text, micro=False)
    except segno.DataOverflowError:
        return "<small>(too long for a QR code)</small>"
    # A white background: dark themes would otherwise make the code unreadable.
    return str(qr.svg_inline(scale=3, dark="black", light="white"))


def _python_str(text: str) -> str:
    """``text`` as a double-quoted Python literal that shows every character it holds."""
    return '"' + display_name(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def _message(error: BaseException) -> str:
    """The text a user sees for ``error``; a bug (not a P2PCopyError) shows its type too."""
    text = display_name(str(error))
    if isinstance(error, P2PCopyError):
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _clock(seconds: float) -> str:
    """``seconds`` as m:ss or h:mm:ss."""
    minutes, secs = divmod(round(max(seconds, 0.0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"
