"""The notebook displays: WidgetProgress driven by real transfers without a kernel,
CodeDisplay's HTML, and how ``make_progress`` picks a display.

Widgets built outside a kernel talk to a dummy comm, so their state can be read back.
"""

from __future__ import annotations

import ast
import asyncio
import io
import json
import os
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import ipywidgets  # type: ignore[import-untyped]  # noqa: F401  (before any fake IPython)
import pytest

import p2p_copy
from p2p_copy.display import notebook
from p2p_copy.display.notebook import CodeDisplay, WidgetProgress, show_code
from p2p_copy.display.progress import (
    JsonProgress,
    NoProgress,
    TqdmProgress,
    in_jupyter_kernel,
    make_progress,
)
from p2p_copy.relay import Relay
from p2p_copy.results import FileResult, TransferResult

TRANSFER_TIMEOUT = 60.0


class RecordingWidget(WidgetProgress):
    """A WidgetProgress that remembers every state it drew and the cancel it was given."""

    def __init__(self, label: str, **kwargs: Any) -> None:
        self.states: list[str] = []
        self.cancel: Callable[[], object] | None = None
        super().__init__(label, display=False, **kwargs)

    def bind_cancel(self, cancel: Callable[[], object]) -> None:
        self.cancel = cancel
        super().bind_cancel(cancel)

    def _draw(self) -> None:
        if not self.states or self.states[-1] != self.state:
            self.states.append(self.state)
        super()._draw()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


async def wait_for_state(progress: WidgetProgress, state: str) -> None:
    async with asyncio.timeout(10):
        while progress.state != state:
            await asyncio.sleep(0.01)


def assert_done(progress: WidgetProgress, nbytes: int) -> None:
    assert progress.state == "done"
    assert progress.bar.value == progress.bar.max
    assert progress.bar.bar_style == "success"
    assert progress.button.disabled
    assert progress.button.layout.display == "none"
    assert progress.bytes_done == progress.bytes_total == nbytes


# --- whole transfers ---------------------------------------------------------------------


async def test_widgets_follow_a_transfer_to_done(relay: Relay, tmp_path: Path) -> None:
    """Both panels go waiting → transferring → verifying → done and end full and green."""
    src = tmp_path / "src"
    write(src / "a.bin", b"a" * 300_000)
    write(src / "sub" / "b.txt", b"hello")
    sender, receiver = RecordingWidget("send"), RecordingWidget("receive")
    async with asyncio.timeout(TRANSFER_TIMEOUT):
        sent, _ = await asyncio.gather(
            p2p_copy.send(relay.url, "widget-ok", [src], progress=sender, chunk_size=64 * 1024),
            p2p_copy.receive(relay.url, "widget-ok", tmp_path / "out", progress=receiver),
        )
    for progress in (sender, receiver):
        assert_done(progress, sent.bytes)
        assert progress.bar.max == sent.bytes
        assert progress.states == [
            "connecting", "waiting for peer", "transferring", "verifying", "done"
        ]
        assert progress.files_done == progress.files_total == 2
        assert "2 of 2 files" in progress.file.value
    assert (tmp_path / "out" / "src" / "sub" / "b.txt").read_bytes() == b"hello"
    # Only the sender shows the code the receiver needs, and only until they are paired:
    # then it must not invite a second receiver (issue 19).
    assert "widget-ok" in sender.code.value and "<svg" in sender.code.value
    assert sender.code.layout.display == "none"
    assert receiver.code.value == "" and receiver.code.layout.display == "none"


async def test_an_empty_transfer_ends_with_a_full_bar(relay: Relay, tmp_path: Path) -> None:
    """A transfer of 0 bytes still ends with value == max, not an empty or NaN bar."""
    empty = write(tmp_path / "empty.txt", b"")
    sender, receiver = RecordingWidget("send"), RecordingWidget("receive")
    async with asyncio.timeout(TRANSFER_TIMEOUT):
        await asyncio.gather(
            p2p_copy.send(relay.url, "widget-empty", [empty], progress=sender),
            p2p_copy.receive(relay.url, "widget-empty", tmp_path / "out", progress=receiver),
        )
    for progress in (sender, receiver):
        assert_done(progress, 0)
        assert progress.bar.max > 0


async def test_a_failed_transfer_turns_the_bar_red_with_the_error(
    relay: Relay, tmp_path: Path
) -> None:
    """A refused transfer ends with bar_style danger and the error's text in the state line."""
    src = write(tmp_path / "src" / "clash.txt", b"new")
    dest = tmp_path / "out"
    write(dest / "clash.txt", b"<precious> & old")
    sender, receiver = RecordingWidget("send"), RecordingWidget("receive")
    async with asyncio.timeout(TRANSFER_TIMEOUT):
        outcomes = await asyncio.gather(
            p2p_copy.send(relay.url, "widget-clash", [src], progress=sender),
            p2p_copy.receive(relay.url, "widget-clash", dest, progress=receiver),
            return_exceptions=True,
        )
    assert [type(o) for o in outcomes] == [p2p_copy.DestinationExistsError] * 2
    for progress, error in zip((sender, receiver), outcomes, strict=True):
        assert progress.state == f"failed: {error}"
        assert progress.bar.bar_style == "danger"
        assert progress.button.disabled
        assert "clash.txt" in progress.title.value
    assert (dest / "clash.txt").read_bytes() == b"<precious> & old"


async def test_cancel_button_cancels_a_waiting_receive(relay: Relay, tmp_path: Path) -> None:
    """Cancel, clicked from another thread, stops the transfer with p2p_copy.CancelledError."""
    progress = RecordingWidget("receive")
    task = asyncio.create_task(
        p2p_copy.receive(relay.url, "nobody-comes", tmp_path / "out", progress=progress)
    )
    await wait_for_state(progress, "waiting for peer")
    assert not progress.button.disabled
    clicked_from = await asyncio.to_thread(click_and_report_thread, progress)
    assert clicked_from != threading.get_ident()
    assert progress.button.disabled
    async with asyncio.timeout(TRANSFER_TIMEOUT):
        with pytest.raises(p2p_copy.CancelledError):
            await task
    assert progress.state == "cancelled"
    assert progress.bar.bar_style == "warning"
    assert progress.button.layout.display == "none"
    # The request was answered by the error: the task is not left half-cancelled.
    assert task.cancelling() == 0
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def click_and_report_thread(progress: WidgetProgress) -> int:
    progress.button.click()
    return threading.get_ident()


async def test_a_click_after_the_end_cancels_nothing(relay: Relay, tmp_path: Path) -> None:
    """The cancel a display was given does nothing once its transfer is over."""
    src = write(tmp_path / "f.txt", b"data")
    sender, receiver = RecordingWidget("send"), RecordingWidget("receive")
    async with asyncio.timeout(TRANSFER_TIMEOUT):
        await asyncio.gather(
            p2p_copy.send(relay.url, "widget-late", [src], progress=sender),
            p2p_copy.receive(relay.url, "widget-late", tmp_path / "out", progress=receiver),
        )
    assert receiver.cancel is not None
    receiver.cancel()
    receiver.button.click()
    await asyncio.sleep(0.05)  # a wrongly scheduled cancel would land here
    assert receiver.state == "done"
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


# --- the panel on its own ----------------------------------------------------------------


def test_updates_are_throttled_but_the_end_is_always_shown() -> None:
    """While bytes flow the bar moves at most once per interval; verifying and done redraw."""
    progress = WidgetProgress("send", display=False, interval=3600)
    progress.started(1000, 1)
    for _ in range(50):
        progress.advance(10)
    assert progress.bar.value == 0
    progress.verifying()
    assert progress.bar.value == 500
    progress.finished(TransferResult("sender", (FileResult("f", 1000, "0" * 64),), 1000, 1.0))
    assert progress.bar.value == progress.bar.max == 1000


def test_every_advance_redraws_without_throttle() -> None:
    """With interval 0 the bar follows each advance (shows the throttle is what held it)."""
    progress = WidgetProgress("send", display=False, interval=0)
    progress.started(100, 1)
    progress.advance(40)
    assert progress.bar.value == 40
    assert "ETA" in progress.stats.value


def test_error_text_is_escaped_in_the_state_line() -> None:
    """An error message with markup shows as text; the plain text stays in ``state``."""
    progress = WidgetProgress("receive", display=False)
    progress.failed(p2p_copy.PeerGoneError("<img src=x onerror=alert(1)> left\u202e"))
    assert progress.state == "failed: <img src=x onerror=alert(1)> left\\u202e"
    assert "<img" not in progress.title.value
    assert "&lt;img src=x onerror=alert(1)&gt;" in progress.title.value


def test_a_bug_shows_its_type() -> None:
    """An error that is not a P2PCopyError names its class, so a bug is recognisable."""
    progress = WidgetProgress("send", display=False)
    progress.failed(KeyError("x"))
    assert progress.state == "failed: KeyError: 'x'"


def test_the_panel_is_shown_once_when_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """display=True shows the panel at the first waiting(), and not again after."""
    shown: list[object] = []
    monkeypatch.setattr(notebook, "_display", shown.append)
    progress = WidgetProgress("receive", display=True)
    assert shown == []
    progress.waiting()
    progress.waiting()
    assert shown == [progress.widget]


def test_a_panel_shown_by_the_caller_is_not_shown_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """display(progress) before the transfer waits means waiting() adds no second view."""
    shown: list[object] = []
    monkeypatch.setattr(notebook, "_display", shown.append)
    progress = WidgetProgress("receive", display=True)
    progress._ipython_display_()
    progress.waiting()
    assert shown == [progress.widget]


def test_no_display_outside_a_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """By default the panel only shows itself inside a Jupyter kernel."""
    shown: list[object] = []
    monkeypatch.setattr(notebook, "_display", shown.append)
    progress = WidgetProgress("receive")
    progress.waiting()
    assert shown == []


def test_cancel_is_offered_only_once_bound() -> None:
    """The Cancel button starts disabled and calls the bound cancel once clicked."""
    progress = WidgetProgress("receive", display=False)
    assert progress.button.disabled
    calls: list[str] = []
    progress.bind_cancel(lambda: calls.append("cancel"))
    assert not progress.button.disabled
    progress.button.click()
    progress.button.click()
    assert calls == ["cancel"]
    assert progress.button.disabled


# --- CodeDisplay -------------------------------------------------------------------------


class Elements(HTMLParser):
    """Every start tag with its (decoded) attributes, and the text outside tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(markup: str) -> Elements:
    parser = Elements()
    parser.feed(markup)
    parser.close()
    return parser


def copied_text(onclick: str) -> str:
    """The string the copy button's handler writes to the clipboard (JSON is valid JS)."""
    start = onclick.index("writeText(") + len("writeText(")
    value, end = json.JSONDecoder().raw_decode(onclick, start)
    assert onclick[end:].startswith(") : Promise.reject())"), onclick[end:]
    assert isinstance(value, str)
    return value


def test_code_display_shows_snippet_copy_button_and_qr() -> None:
    """The HTML has the code, the receive line, a button copying exactly it, and an SVG QR."""
    shown = CodeDisplay("wss://relay.example.org", "7-purple-sausages")
    snippet = 'await p2p_copy.receive("wss://relay.example.org", "7-purple-sausages")'
    assert shown.snippet == snippet
    markup = shown._repr_html_()
    assert "<svg" in markup
    assert "await p2p_copy.receive(&quot;wss://relay.example.org&quot;" in markup
    elements = parse(markup)
    assert snippet in "".join(elements.text)
    [onclick] = [a["onclick"] for tag, a in elements.tags if tag == "button"]
    assert onclick is not None and copied_text(onclick) == snippet
    assert "7-purple-sausages" in str(shown)


HOSTILE = "x</script><script>alert(1)</script>\"'`${1}\\\u2028\u202e<!--"


def test_hostile_code_and_server_cannot_escape_html_or_js() -> None:
    """Quotes, </script>, backslashes and line separators stay data in HTML, JS and Python."""
    server = "wss://h.example/\"onmouseover='alert(2)'"
    shown = CodeDisplay(server, HOSTILE)
    markup = shown._repr_html_()
    assert "<script" not in markup.lower()
    assert "<!--" not in markup
    elements = parse(markup)
    allowed = {"div", "code", "pre", "button", "svg", "g", "path"}
    assert {tag for tag, _ in elements.tags} <= allowed
    handlers = {name for _, attrs in elements.tags for name in attrs if name.startswith("on")}
    assert handlers == {"onclick"}
    [onclick] = [a["onclick"] for tag, a in elements.tags if tag == "button"]
    assert onclick is not None
    assert copied_text(onclick) == shown.snippet
    assert "<" not in onclick  # even decoded, nothing in the handler looks like markup
    # The snippet is one Python call whose arguments are exactly the server and the code.
    call = ast.parse(shown.snippet.removeprefix("await "), mode="eval").body
    assert isinstance(call, ast.Call)
    assert [ast.literal_eval(arg) for arg in call.args] == [server, HOSTILE]
    # Nothing that reorders or breaks lines is shown raw.
    assert "\u202e" not in markup and "\u2028" not in markup


def test_show_code_displays_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    """show_code() displays a CodeDisplay (outside IPython: its text form is printed)."""
    show_code("ws://127.0.0.1:9", "a-b-c")
    out = capsys.readouterr().out
    assert 'await p2p_copy.receive("ws://127.0.0.1:9", "a-b-c")' in out


def test_a_code_too_long_for_a_qr_code_still_displays() -> None:
    """A snippet beyond a QR code's capacity shows without one instead of failing."""
    markup = CodeDisplay("ws://h", "c" * 5000)._repr_html_()
    assert "<svg" not in markup and "too long for a QR code" in markup


# --- choosing the display ----------------------------------------------------------------


class Shell:
    """Stands in for IPython's shell: a kernel's has a ``kernel`` attribute."""

    def __init__(self, kernel: object | None) -> None:
        if kernel is not None:
            self.kernel = kernel


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No $P2P_COPY_PROGRESS, and stderr no terminal (even under pytest -s)."""
    monkeypatch.delenv("P2P_COPY_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    return monkeypatch


def fake_ipython(monkeypatch: pytest.MonkeyPatch, shell: object | None) -> None:
    """Make ``IPython.get_ipython()`` (as already imported) return ``shell``."""
    module = types.ModuleType("IPython")
    module.get_ipython = lambda: shell  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", module)


def test_auto_picks_the_widget_inside_a_kernel(no_env: pytest.MonkeyPatch) -> None:
    """auto means widget when get_ipython() has a kernel."""
    fake_ipython(no_env, Shell(kernel=object()))
    assert in_jupyter_kernel()
    assert isinstance(make_progress("auto", "send"), WidgetProgress)
    assert isinstance(make_progress(None, "send"), WidgetProgress)


@pytest.mark.parametrize("shell", [None, Shell(kernel=None)], ids=["no-shell", "terminal"])
def test_auto_is_no_widget_outside_a_kernel(no_env: pytest.MonkeyPatch, shell: object) -> None:
    """Plain Python or IPython in a terminal: no widget (and stderr here is no terminal)."""
    fake_ipython(no_env, shell)
    assert not in_jupyter_kernel()
    assert type(make_progress("auto", "send")) is NoProgress


def test_auto_does_not_import_ipython(no_env: pytest.MonkeyPatch) -> None:
    """Without IPython imported, auto decides without importing it."""
    no_env.delitem(sys.modules, "IPython")
    assert type(make_progress("auto", "send")) is NoProgress
    assert "IPython" not in sys.modules


def test_auto_uses_tqdm_on_a_terminal(no_env: pytest.MonkeyPatch) -> None:
    """Outside a kernel with a terminal on stderr, auto keeps the tqdm bar."""
    fake_ipython(no_env, None)
    tty = io.StringIO()
    tty.isatty = lambda: True  # type: ignore[method-assign]
    no_env.setattr(sys, "stderr", tty)
    assert isinstance(make_progress("auto", "send"), TqdmProgress)


def test_env_and_argument_override_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """P2P_COPY_PROGRESS beats the kernel check; an explicit argument beats both."""
    fake_ipython(monkeypatch, Shell(kernel=object()))
    monkeypatch.setenv("P2P_COPY_PROGRESS", "none")
    assert type(make_progress(None, "send")) is NoProgress
    assert isinstance(make_progress("json", "send"), JsonProgress)
    fake_ipython(monkeypatch, None)
    monkeypatch.setenv("P2P_COPY_PROGRESS", "widget")
    assert isinstance(make_progress(None, "receive"), WidgetProgress)
    assert isinstance(make_progress("widget", "receive"), WidgetProgress)


def test_unknown_kind_names_widget_among_the_choices(no_env: pytest.MonkeyPatch) -> None:
    """A bad name is a UsageError listing the displays, widget included."""
    with pytest.raises(p2p_copy.UsageError, match="widget"):
        make_progress("bogus", "send")  # type: ignore[arg-type]


def test_cli_start_up_imports_no_notebook_libraries() -> None:
    """Importing the CLI and choosing a display loads neither ipywidgets, IPython nor segno."""
    check = (
        "import sys; import p2p_copy.cli.commands; "
        "from p2p_copy.display.progress import make_progress; "
        "make_progress('auto', 'send'); "
        "print(sorted({'ipywidgets', 'IPython', 'segno'} & set(sys.modules)))"
    )
    env = {k: v for k, v in os.environ.items() if k != "P2P_COPY_PROGRESS"}
    out = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_json_reports_verifying() -> None:
    """The JSON display writes a verifying event with the bytes moved so far."""
    stream = io.StringIO()
    progress = JsonProgress(stream)
    progress.started(10, 1)
    progress.advance(10)
    progress.verifying()
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert events[-1] == {"event": "verifying", "bytes_done": 10, "bytes_total": 10}


# --- issue 19: what lasts, what the other side runs, resume figures ------------------------


def test_the_panel_bundle_carries_its_text_and_html() -> None:
    """Displayed without the widget manager, the panel shows text with the code and the
    receive lines, never ``VBox(children=...)``; once paired the code is gone."""
    progress = WidgetProgress("send", display=False)
    progress.waiting()
    progress.showing_code("ws://127.0.0.1:9", "7-a-b")
    data = progress.widget._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in data
    text = data["text/plain"]
    assert text.splitlines()[:2] == ["p2p-copy send: waiting for peer", "Code: 7-a-b"]
    assert 'await p2p_copy.receive("ws://127.0.0.1:9", "7-a-b")' in text
    assert "p2p-copy receive ws://127.0.0.1:9 7-a-b" in text
    assert "7-a-b" in data["text/html"]
    progress.started(10, 1)
    assert "7-a-b" not in progress.widget._repr_mimebundle_()["text/plain"]
    assert progress.code.layout.display == "none"


@pytest.mark.parametrize("entry, call", [
    ("send", "receive"), ("send_stream", "receive"), ("send_text", "receive_text"),
    ("send_object", "receive_object"),
])
def test_the_code_names_the_call_that_receives_what_is_sent(entry: str, call: str) -> None:
    """An object comes back with receive_object, a text with receive_text."""
    progress = WidgetProgress("send", display=False, entry=entry)
    progress.showing_code("ws://h", "1-x-y")
    assert f'await p2p_copy.{call}("ws://h", "1-x-y")' in progress.code.value.replace(
        "&quot;", '"')
    assert "p2p-copy receive ws://h 1-x-y" in progress.code.value
    assert str(CodeDisplay("ws://h", "1-x-y", entry)).count(f"p2p_copy.{call}(") == 1


def test_a_blocking_panel_says_to_interrupt_instead_of_cancel() -> None:
    """A *_blocking call holds the kernel: no Cancel button, but how to stop it."""
    progress = WidgetProgress("receive", display=False, blocking=True)
    progress.bind_cancel(lambda: None)
    assert progress.button.layout.display == "none"
    assert progress.hint.layout.display is None and "interrupt the kernel" in progress.hint.value
    assert "interrupt the kernel" in "\n".join(progress.lines())
    assert "nothing partial is kept" not in progress.button.tooltip
    assert ".p2p-copy-part" in WidgetProgress("receive", display=False).button.tooltip


def test_a_failure_before_any_byte_shows_no_byte_count() -> None:
    """Failing before the manifest is agreed says why, not "0 B of 0 B"."""
    progress = WidgetProgress("receive", display=False)
    progress.waiting()
    progress.failed(p2p_copy.RelayUnreachableError("Cannot reach the relay."))
    assert progress.stats.value == ""
    assert "0 B" not in "\n".join(progress.lines()) + progress.static_html()
    assert "p2p-copy-state-failed" in progress.static_html()


def test_a_failure_that_never_waited_still_shows_a_panel(monkeypatch: pytest.MonkeyPatch) -> None:
    """A relay that cannot be reached ends before ``waiting``: the ended panel shows anyway."""
    shown: list[object] = []
    monkeypatch.setattr(notebook, "_display", shown.append)
    progress = WidgetProgress("receive", display=True)
    progress.failed(p2p_copy.RelayUnreachableError("Cannot reach the relay."))
    [summary] = shown
    data = summary._repr_mimebundle_()  # type: ignore[attr-defined]
    assert data["text/plain"] == "p2p-copy receive: failed: Cannot reach the relay."
    assert "application/vnd.jupyter.widget-view+json" not in data


def test_the_rate_after_a_resume_counts_only_what_crossed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """900 of 1000 bytes were there; 10 more in 1 s is 10 B/s, not 910 B/s, and the
    panel and the JSON events say "resumed"."""
    clock = [100.0]
    monkeypatch.setattr(notebook.time, "monotonic", lambda: clock[0])
    progress = WidgetProgress("receive", display=False, interval=0)
    progress.started(1000, 1)
    clock[0] += 5
    progress.resumed(900)
    clock[0] += 1
    progress.advance(10)
    assert "910 B of 1000 B (resumed from 900 B)" in progress.stats.value
    assert "10 B/s · ETA 0:09" in progress.stats.value
    progress.finished(TransferResult("receiver", (FileResult("f", 1000, "0" * 64),), 1000, 10.0))
    assert "resumed from 900 B" in progress.stats.value and "10 B/s" in progress.stats.value

    from p2p_copy.display import progress as progress_module

    out = io.StringIO()
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: clock[0])
    events = JsonProgress(out, interval=0)
    events.started(1000, 1)
    events.resumed(900)
    clock[0] += 2
    events.advance(20)
    last = json.loads(out.getvalue().splitlines()[-1])
    assert last == {"event": "progress", "bytes_done": 920, "bytes_total": 1000, "rate": 10,
                    "resumed_from": 900}


def test_tqdm_restarts_its_rate_at_a_resume() -> None:
    """The tqdm bar after a resume starts at what was there (initial), and says so."""
    out = io.StringIO()
    bar = TqdmProgress("receive", out)
    bar.started(1000, 1)
    bar.resumed(900)
    assert bar.bar.n == bar.bar.initial == 900
    assert "resumed from 900 B" in bar.bar.desc
    bar.finished(TransferResult("receiver", (), 1000, 1.0))


def test_tqdm_prints_the_code_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """In IPython or a script on a terminal the code shows above the bar; the CLI's own
    line (with_code_on_stderr) replaces it rather than doubling it."""
    from p2p_copy.display.progress import with_code_on_stderr

    out = io.StringIO()
    TqdmProgress("send", out, entry="send_text").showing_code("ws://h", "3-a-b")
    assert out.getvalue().splitlines() == [
        "Code: 3-a-b",
        'On the other side run:  await p2p_copy.receive_text("ws://h", "3-a-b")',
        "or on a command line:   p2p-copy receive ws://h 3-a-b",
    ]
    out, err = io.StringIO(), io.StringIO()
    with_code_on_stderr(TqdmProgress("send", out), err).showing_code("ws://h", "3-a-b")
    assert out.getvalue() == "" and "3-a-b" in err.getvalue()


def test_an_expected_error_renders_as_one_line() -> None:
    """IPython shows P2PCopyError._render_traceback_() instead of the traceback: one line,
    controls escaped."""
    error = p2p_copy.PeerGoneError("The sender left.\x1b[2J")
    assert error._render_traceback_() == ["PeerGoneError: The sender left.\\x1b[2J"]


def test_tab_completion_lists_only_public_names() -> None:
    """dir(p2p_copy) is the public surface, without Any, TYPE_CHECKING or annotations."""
    names = dir(p2p_copy)
    assert not {"Any", "TYPE_CHECKING", "annotations"} & set(names)
    assert {"send", "transfers", "discard_partial"} <= set(names)
