"""Transfers in Jupyter: a progress panel with a Cancel button, and the code to share.

``WidgetProgress`` is the display ``make_progress`` picks inside a kernel. Every widget
change is a comm message to the browser, so while bytes flow the panel is redrawn at
most once per ``interval``; state changes and the end are always shown. ``CodeDisplay``
is what a sender shows: the line the receiver runs, a button to copy it, a QR code of it.
The panel's display bundle also holds its text and a static HTML form, for front ends
without the widget manager; when the transfer ends the displayed panel is replaced (its
display id) by that static summary, so that a saved or converted notebook keeps it.

Nothing imports this module (or ipywidgets, or segno) until a notebook display is asked for.
"""

from __future__ import annotations

import asyncio
import html
import json
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..errors import CancelledError, P2PCopyError
from ..protocol.paths import display_name
from ..protocol.policy import OfferSummary
from ..results import FileResult, TransferResult
from .progress import (
    NoProgress,
    Rate,
    human_size,
    in_jupyter_kernel,
    offer_lines,
    receive_lines,
    receive_snippet,
)

__all__ = ["WidgetProgress", "CodeDisplay", "show_code", "UPDATE_INTERVAL"]

#: Seconds between two redraws of a panel while bytes flow.
UPDATE_INTERVAL = 0.1


class WidgetProgress(NoProgress):
    """An ipywidgets panel for one transfer: state, bar (in bytes), file, rate, ETA, Cancel.

    A sender's panel shows the code, the call the other side makes for what is sent
    (``entry``: receive_object for send_object...) and the command line, until the other
    side joins. A receiver's panel also shows what the sender offers, hidden and executable
    entries pointed out. It cannot ask whether to take it: the receiver's policy decides
    (ReceivePolicy(allow_hidden=...)), as for any other use of the Python API.

    Front ends without the widget manager (VS Code without it, nbviewer, a mismatched
    environment) show the panel's text/plain or text/html, which say the same. Once the
    transfer ends, the panel a kernel displayed is replaced (its display id) by a static
    summary that lasts in a saved notebook, nbconvert's HTML and after a restart.

    ``display``: whether ``waiting()`` shows the panel if nobody has yet. ``None`` (the
    default) means only inside a Jupyter kernel; with ``False`` the caller shows ``widget``.
    ``blocking``: the call holds the kernel (a ``*_blocking`` twin), so a click would
    only be heard once it ended: no Cancel button, but how to interrupt instead.
    """

    def __init__(
        self, label: str, *, display: bool | None = None, interval: float = UPDATE_INTERVAL,
        entry: str | None = None, blocking: bool = False,
    ) -> None:
        import ipywidgets as widgets  # type: ignore[import-untyped]

        self.label = label
        self.interval = interval
        self.entry = entry
        self.blocking = blocking
        #: waiting for peer, transferring, verifying, done, cancelled or failed: <error>.
        self.state = "connecting"
        self.bytes_done = 0
        self.bytes_total = 0
        self.files_done = 0
        self.files_total = 0
        self.ended = False
        #: The code shown to the other side (a sender's), once known.
        self.shown_code: CodeDisplay | None = None
        #: Partial files a stopped receive kept (bind_partial), found when it ended.
        self.kept: list[str] = []
        self._show_on_wait = in_jupyter_kernel() if display is None else display
        self._shown = False
        self._cancel: Callable[[], object] | None = None
        self._last_file = ""
        self._summary = ""
        self._started = False
        self._result: TransferResult | None = None
        self._error = ""
        self._dest: str | None = None
        self._find: Callable[[Sequence[str]], list[str]] | None = None
        self._discard_call: Callable[[Sequence[str]], str] | None = None
        self._offered: tuple[str, ...] = ()
        self._start = time.monotonic()
        self._rate = Rate(self._start)
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
            tooltip=CANCEL_TOOLTIP,
            layout=widgets.Layout(width="auto", display="none" if blocking else None),
        )
        self.button.on_click(self._on_cancel)
        self.file: Any = widgets.HTML()
        self.stats: Any = widgets.HTML()
        self.hint: Any = widgets.HTML(
            f"<small>{html.escape(BLOCKING_HINT)}</small>" if blocking else "",
            layout=widgets.Layout(display=None if blocking else "none"))
        self.offered: Any = widgets.HTML(layout=widgets.Layout(display="none"))
        self.widget: Any = _panel_class()(
            [self.code, self.title, widgets.HBox([self.bar, self.button]), self.file, self.stats,
             self.hint, self.offered]
        )
        self.widget._p2p_progress = self
        self._draw()

    # What the transfer tells us (see progress.Progress).

    def bind_cancel(self, cancel: Callable[[], object]) -> None:
        self._cancel = cancel
        self.button.disabled = self.ended

    def bind_partial(self, dest: str, find: Callable[[Sequence[str]], list[str]],
                     discard_call: Callable[[Sequence[str]], str]) -> None:
        """Receiver into a folder: ``find(names)`` lists what a stopped transfer of the
        top-level ``names`` kept in ``dest``; ``discard_call(names)`` is the Python line
        that removes it (peer/partial.py)."""
        self._dest, self._find, self._discard_call = dest, find, discard_call

    def showing_code(self, server: str, code: str) -> None:
        self.shown_code = CodeDisplay(server, code, self.entry)
        self.code.value = self.shown_code._repr_html_()
        self.code.layout.display = None
        self._refresh()

    def waiting(self) -> None:
        self.state = "waiting for peer"
        self._draw()
        if self._show_on_wait and not self._shown:
            self._ipython_display_()

    def offer(self, summary: OfferSummary) -> Awaitable[bool] | None:
        self._offered = summary.top_level
        # The terminal's lines, one per row: each name in them is escaped already.
        first, *rest = offer_lines(summary)
        rows = "".join(f"<li>{html.escape(line.strip())}</li>" for line in rest)
        self.offered.value = (f'<div class="p2p-copy-offer">{html.escape(first)}'
                              f'<ul style="margin:0">{rows}</ul></div>')
        self.offered.layout.display = None
        return None

    def started(self, total_bytes: int, total_files: int) -> None:
        self.state = "transferring"
        self._started = True
        self.bytes_total = total_bytes
        self.files_total = total_files
        self._start = time.monotonic()
        self._rate.restart(self._start)
        self.bar.max = float(max(total_bytes, 1))
        # Paired: the code has done its job, and must not invite a second receiver.
        self.code.layout.display = "none"
        self._draw()
        self._refresh()

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
        self._rate.resumed(bytes_done, time.monotonic())
        self._draw()

    def finished(self, result: TransferResult) -> None:
        self.state = "done"
        self._result = result
        self.bytes_done = self.bytes_total = result.bytes
        self.files_done = self.files_total = len(result.files)
        self._summary = f"{human_size(result.bytes)} in {_clock(result.duration)}"
        crossed = result.bytes - self._rate.resumed_from
        if result.duration > 0 and crossed > 0:
            self._summary += f" · {human_size(crossed / result.duration)}/s"
        if self._rate.resumed_from:
            self._summary += f" · resumed from {human_size(self._rate.resumed_from)}"
        self._end("success")

    def failed(self, error: BaseException) -> None:
        if isinstance(error, (CancelledError, asyncio.CancelledError)):
            self.state = "cancelled"
            self._error = "cancelled"
            self._end("warning")
        else:
            self._error = _message(error)
            self.state = f"failed: {self._error}"
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
        self.hint.layout.display = "none"
        self.code.layout.display = "none"
        if bar_style != "success" and self._find is not None and self._offered:
            try:
                self.kept = self._find(self._offered)
            except OSError:  # the folder went away: nothing to point at
                self.kept = []
        self._draw()
        # A failure before the other side was reached (no relay) shows a panel too.
        if self._show_on_wait and not self._shown:
            self._shown = True
            _display(_Static(self))
        else:
            self._refresh()

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
        self.stats.value = html.escape(self._summary or self._stats(now))

    def _stats(self, now: float) -> str:
        if not self._started:
            return ""  # nothing agreed yet: "0 B of 0 B" would say something false
        text = f"{human_size(self.bytes_done)} of {human_size(self.bytes_total)}"
        if self._rate.resumed_from:
            text += f" (resumed from {human_size(self._rate.resumed_from)})"
        if self.state == "transferring":
            rate = self._rate.rate(self.bytes_done, now)
            eta = self._rate.eta(self.bytes_done, self.bytes_total, now)
            if rate > 0 and eta is not None:
                text += f" · {human_size(rate)}/s · ETA {_clock(eta)}"
        return text

    # What lasts: text and static HTML.

    def _refresh(self) -> None:
        """Update what a kernel displayed: the live panel while it runs, then the summary."""
        if not (self._shown and in_jupyter_kernel()):
            return
        bundle = _Static(self)._repr_mimebundle_() if self.ended else \
            self.widget._repr_mimebundle_()
        _update(bundle, self.widget._p2p_display_id)

    def lines(self) -> list[str]:
        """The panel as lines of text: state, code, bytes, files, time, destination or error."""
        lines = [f"p2p-copy {self.label}: {self.state}"]
        if self.shown_code is not None and not self._started and not self.ended:
            lines += receive_lines(self.shown_code.server, self.shown_code.code, self.entry)
        if self.blocking and not self.ended:
            lines.append(BLOCKING_HINT)
        if self._result is not None:
            result = self._result
            noun = "file" if len(result.files) == 1 else "files"
            lines.append(f"{len(result.files):,} {noun}, {self._summary}")
            if result.destination is not None:
                lines.append(f"in {display_name(str(result.destination))}")
            lines += [f"  {display_name(f.path)}" for f in result.files[:SUMMARY_FILES]]
            if len(result.files) > SUMMARY_FILES:
                lines.append(f"  ... {len(result.files) - SUMMARY_FILES:,} more")
        elif self._started:
            lines.append(self._stats(time.monotonic()))
        lines += self._kept_lines()
        return lines

    def _kept_lines(self) -> list[str]:
        if self._dest is None or not self.ended or self.state == "done":
            return []
        if not self.kept:
            return [f"No partial file was kept in {display_name(self._dest)}."]
        size = sum(_size(path) for path in self.kept)
        noun = "file" if len(self.kept) == 1 else "files"
        lines = [f"Kept for a later run: {len(self.kept)} partial {noun} ({human_size(size)}), "
                 f"hidden (.NAME.p2p-copy-part) in {display_name(self._dest)}.",
                 "Run the same receive again to continue it."]
        if self._discard_call is not None:
            lines.append(f"To discard them instead: {self._discard_call(self._offered)}")
        return lines

    def static_html(self) -> str:
        """The panel as plain HTML (no script, no widget): what lasts once it ended.

        Classes name the state (``p2p-copy-state-done``, ``-cancelled``, ``-failed``,
        ``-running``) and the bar (``p2p-copy-bar``) for pages and tests that look for them.
        """
        if self.ended:
            state = self.state if self.state in ("done", "cancelled") else "failed"
        else:
            state = "running"
        colour = _COLOURS[state]
        fraction = 1.0 if self.state == "done" else (
            min(self.bytes_done / self.bytes_total, 1.0) if self.bytes_total else 0.0)
        first, *rest = self.lines()
        body = "".join(f"<div>{html.escape(line)}</div>" for line in rest)
        return (
            f'<div class="p2p-copy-summary p2p-copy-state-{state}" '
            f'style="border-left:4px solid {colour};padding:0.2em 0.6em">'
            f"<div><b>{html.escape(first)}</b></div>"
            '<div style="background:#e0e0e0;height:6px;max-width:30em;margin:0.3em 0">'
            f'<div class="p2p-copy-bar" style="background:{colour};height:6px;'
            f'width:{fraction:.0%}"></div></div>'
            f'<div style="white-space:pre-wrap">{body}</div></div>'
        )


#: The summary's colours, close to ipywidgets' bar styles (success, warning, danger, info).
_COLOURS = {"done": "#4caf50", "cancelled": "#ff9800", "failed": "#f44336",
            "running": "#2196f3"}
#: The Cancel button's tooltip: what cancelling does, and what it keeps.
CANCEL_TOOLTIP = ("Stop the transfer: the other side is told. A receiver keeps the files that "
                  "arrived in part, hidden as .NAME.p2p-copy-part, so that the same receive run "
                  "again continues them.")
#: What a blocking call's panel says instead of offering a button nobody would hear.
BLOCKING_HINT = ("To cancel, interrupt the kernel (the stop button, or I I): this call holds the "
                 "kernel, so a button here would only be heard once it ended.")
#: Files a summary names before it says how many more there are.
SUMMARY_FILES = 5


class _Static:
    """The ended panel as static HTML and text: what a saved notebook keeps."""

    def __init__(self, progress: WidgetProgress) -> None:
        self._progress = progress

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        return {"text/plain": "\n".join(self._progress.lines()),
                "text/html": self._progress.static_html()}


_PANEL: Any = None


def _panel_class() -> Any:
    """A VBox whose display bundle also carries the panel as text and HTML.

    JupyterLab and Notebook show the widget; a front end without the widget manager
    shows the text or the HTML instead of ``VBox(children=...)``.
    """
    global _PANEL
    if _PANEL is None:
        import ipywidgets as widgets

        class Panel(widgets.VBox):  # type: ignore[misc]
            _p2p_progress: WidgetProgress

            @property
            def _p2p_display_id(self) -> str:
                return f"p2p-copy-{self.model_id}"

            def _repr_mimebundle_(self, **kwargs: Any) -> Any:
                data = super()._repr_mimebundle_(**kwargs) or {}
                progress = self._p2p_progress
                data["text/plain"] = "\n".join(progress.lines())
                data["text/html"] = progress.static_html()
                return data

        _PANEL = Panel
    return _PANEL


class CodeDisplay:
    """What a receiver needs: the code, the lines to run (with a copy button), a QR code.

    ``entry`` is the sender's call (send_object, ...): it decides the receiving call.
    """

    def __init__(self, server: str, code: str, entry: str | None = None) -> None:
        self.server = server
        self.code = code
        self.entry = entry

    @property
    def snippet(self) -> str:
        """The line the receiver runs in a notebook cell."""
        return receive_snippet(self.server, self.code, self.entry)

    @property
    def command(self) -> str:
        """The line the receiver runs on a command line (escaped for a terminal)."""
        return f"p2p-copy receive {display_name(self.server)} {display_name(self.code)}"

    def __str__(self) -> str:
        return "\n".join(receive_lines(self.server, self.code, self.entry))

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
            "<div>or on a command line:</div>"
            '<pre style="margin:0.3em 0;white-space:pre-wrap">'
            f"<code>{html.escape(self.command)}</code></pre>"
            "</div></div>"
        )


def show_code(server: str, code: str) -> None:
    """Show the code and the line a receiver runs (with a copy button and a QR code)."""
    _display(CodeDisplay(server, code))


def _display(obj: object) -> None:
    from IPython.display import display

    # A panel gets a display id, so that its end can replace it (_update).
    display(obj, display_id=getattr(obj, "_p2p_display_id", None))  # type: ignore[no-untyped-call]


def _update(bundle: dict[str, Any], display_id: str) -> None:
    from IPython.display import update_display

    update_display(bundle, raw=True, display_id=display_id)  # type: ignore[no-untyped-call]


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _qr_svg(text: str) -> str:
    import segno

    try:
        qr = segno.make(text, micro=False)
    except segno.DataOverflowError:
        return "<small>(too long for a QR code)</small>"
    # A white background: dark themes would otherwise make the code unreadable.
    return str(qr.svg_inline(scale=3, dark="black", light="white"))


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
