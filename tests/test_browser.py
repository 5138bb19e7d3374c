"""A real browser runs notebooks in JupyterLab: the quickstart, and the panel's Cancel button.

JupyterLab is started on 127.0.0.1 (free port, random token, no browser) with its root in a
temporary copy of ``notebooks/``. Debian's Chromium, driven headless by Playwright, opens the
quickstart, waits for its kernel, runs all cells from the Run menu and waits until every cell
has run and the progress panels (the sender's and the receiver's) ended full and green: an
ended panel is replaced by its static summary, which lasts in the saved notebook.
A screenshot is kept under ``tmp_path`` and copied to ``.cache/browser/quickstart.png``
(gitignored) for a person to look at; on a timeout the screenshot of that moment goes there.

The second test clicks the Cancel button of a receiver's panel, once while its cell is still
awaiting ``p2p_copy.receive(...)`` and once for a background ``p2p_copy.start_receive(...)``
(screenshot: ``.cache/browser/cancel.png``).

Without /usr/bin/chromium, Playwright or JupyterLab the tests are skipped, unless CI is set:
``.ci/run`` installs all three, so there a missing one is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import cli_env, free_port

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
NOTEBOOK = "quickstart.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_COPY = REPO / ".cache" / "browser" / "quickstart.png"
CANCEL_SCREENSHOT_COPY = REPO / ".cache" / "browser" / "cancel.png"

# Chromium as this machine's closed network needs it: no background connections at all.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: Seconds for JupyterLab to answer its REST API.
SERVER_START_TIMEOUT = 45
#: Milliseconds for the page to show the notebook with a started, idle kernel.
PAGE_READY_TIMEOUT_MS = 45_000
#: Milliseconds for all cells to run.
RUN_TIMEOUT_MS = 75_000
#: The quickstart shows two progress panels: the sender's and the receiver's.
MIN_BARS = 2
#: Milliseconds for a cell with a quick job (start a relay, start a handle) to finish.
CELL_TIMEOUT_MS = 20_000
#: Milliseconds from a click on Cancel to the panel (and an awaiting cell) ending; about
#: one second in practice.
CANCEL_TIMEOUT_MS = 20_000


def _missing_tools() -> str | None:
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (Debian package chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("playwright (pip install -e '.[test]')")
    if importlib.util.find_spec("jupyterlab") is None:
        missing.append("jupyterlab (pip install -e '.[test]')")
    return ", ".join(missing) or None


@pytest.fixture
def browser_tools() -> None:
    """Skip when a tool is missing on a developer's machine; fail on CI, which installs them."""
    missing = _missing_tools()
    if missing is None:
        return
    reason = f"the browser test needs {missing}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, and .ci/run should have installed it")
    pytest.skip(reason)


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    log: Path

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def _get_json(url: str, timeout: float = 5) -> Any:
    # No proxy, whatever the environment says: the server is on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        return json.loads(response.read())


def _proc_stat(pid: int | str) -> list[str] | None:
    """Fields 3... of /proc/PID/stat (state, ppid, ..., starttime at [19]), or None if gone."""
    try:
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def _children(pid: int) -> dict[int, str]:
    """``pid``'s children (the kernels, each in a session of its own) and their start times."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _proc_stat(entry.name)) and int(fields[1]) == pid:
            children[int(entry.name)] = fields[19]
    return children


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM lets jupyter_server shut its kernels down; SIGKILL whatever is left after that."""
    kernels = _children(proc.pid)
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    for pid, started in kernels.items():
        fields = _proc_stat(pid)
        # The same process (same start time, not a reused pid) outlived the server: end it.
        if fields is not None and fields[19] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _user_settings(config_dir: Path) -> None:
    """JupyterLab settings for the test, in its own (temporary) user settings folder."""
    settings = config_dir / "lab" / "user-settings" / "@jupyterlab"
    for plugin, values in {
        # No "get notified about official Jupyter news?" toast, no update check: no going online.
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        # Every cell in the DOM, in view or not, so that the page can be read as a whole.
        "notebook-extension/tracker": {"windowingMode": "none"},
    }.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@pytest.fixture
def jupyter_lab(browser_tools: None, tmp_path: Path) -> Iterator[Lab]:
    """JupyterLab on 127.0.0.1 with its root in a temporary copy of notebooks/."""
    root = tmp_path / "notebooks"
    shutil.copytree(NOTEBOOKS, root)
    if not (root / NOTEBOOK).exists():
        pytest.fail(f"{NOTEBOOKS / NOTEBOOK} does not exist")

    # The developer's Jupyter and IPython settings, workspaces and runtime files stay out of
    # the test, and the test's out of them.
    home = tmp_path / "jupyter-home"
    dirs = {name: home / name for name in ("config", "data", "runtime", "ipython")}
    for path in dirs.values():
        path.mkdir(parents=True)
    _user_settings(dirs["config"])
    env = cli_env(  # without P2P_COPY_PROGRESS: the kernel picks the widget display itself
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        IPYTHONDIR=str(dirs["ipython"]),
        # The kernel imports this checkout's p2p_copy, as the tests do, whatever copy of it
        # happens to be installed (the notebooks' folder is not the repository's root).
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    port = free_port()
    token = secrets.token_hex(16)
    log = tmp_path / "jupyterlab.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "jupyterlab",
                "--no-browser",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}",
                "--ServerApp.port_retries=0",
                f"--ServerApp.root_dir={root}",
                f"--IdentityProvider.token={token}",
                # CI runs as root; the server refuses that unless told.
                "--ServerApp.allow_root=True",
                "--ServerApp.terminals_enabled=False",
                # Nothing but loopback: no news feed, no update check, no PyPI extension manager.
                "--LabApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.extension_manager=readonly",
            ],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            env=env, cwd=root, start_new_session=True,
        )
    lab = Lab(url=f"http://127.0.0.1:{port}", token=token, root=root, log=log)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{lab.log_tail()}")
            try:
                _get_json(f"{lab.url}/api/status?token={token}")
                break
            except (OSError, ValueError):  # URLError is an OSError
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within {SERVER_START_TIMEOUT} s:\n"
                                f"{lab.log_tail()}")
                time.sleep(0.25)
        yield lab
    finally:
        _stop(proc)


# The notebook has a kernel that has started and is idle. The toolbar's execution indicator
# says "idle" before any kernel exists, so the status bar's "<kernel name> | Idle" decides.
KERNEL_READY_JS = """
() => document.querySelector('.jp-Notebook .jp-Cell') !== null
    && Array.from(document.querySelectorAll('#jp-main-statusbar .jp-StatusBar-TextItem'))
        .some(item => /^(?!No Kernel).+ \\| Idle$/.test(item.textContent.trim()))
"""

# ipywidgets 8 renders a horizontal FloatProgress as
#   div.widget-hprogress > div.progress > div.progress-bar
# with the bar's inline style width = 100 * (value - min) / (max - min) percent, and
# bar_style "success" adds the class progress-bar-success to div.progress-bar. (There is no
# element with the class widget-progress and no aria-value* attribute.)
PAGE_STATE_JS = """
() => {
    const notebook = document.querySelector('.jp-Notebook');
    const all = selector => Array.from(notebook.querySelectorAll(selector));
    return {
        // Run All leaves an empty code cell unnumbered; it is no sign of anything.
        prompts: all('.jp-CodeCell')
            .filter(cell => (cell.querySelector('.cm-content')?.textContent ?? 'x').trim() !== '')
            .map(cell => cell.querySelector('.jp-InputPrompt').textContent.trim()),
        bars: all('.widget-hprogress .progress-bar').map(bar => ({
            width: bar.style.width, classes: Array.from(bar.classList),
        })),
        // An ended panel is replaced by its static summary (display id): state and bar.
        summaries: all('.p2p-copy-summary').map(summary => ({
            classes: Array.from(summary.classList),
            width: summary.querySelector('.p2p-copy-bar')?.style.width ?? null,
            title: summary.querySelector('b')?.textContent ?? null,
        })),
        tracebacks: all(
            '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
        ).map(o => o.innerText).filter(text => text.includes('Traceback')),
        widgetErrors: all('.jp-OutputArea-output').map(o => o.innerText)
            .filter(text => text.includes('Error displaying widget')),
    };
}
"""

# Every code cell has run and at least MIN_BARS panels ended full and green (as summaries:
# an ended panel is replaced by its static summary). A failure ends the wait early, for the
# assertions to report: Run All stops at a traceback, and a red ("danger") bar or a failed
# summary is a transfer that failed.
FINISHED_JS = f"""
() => {{
    const state = ({PAGE_STATE_JS})();
    if (state.tracebacks.length > 0 || state.widgetErrors.length > 0
        || state.bars.some(b => b.classes.includes('progress-bar-danger'))
        || state.summaries.some(b => b.classes.includes('p2p-copy-state-failed'))) return true;
    return state.prompts.length > 0
        && state.prompts.every(p => /^\\[\\d+\\]:$/.test(p))
        && state.summaries.length >= {MIN_BARS}
        && state.summaries.every(b => b.width === '100%'
                                      && b.classes.includes('p2p-copy-state-done'));
}}
"""


def _save_screenshot(page: Any, path: Path, copy: Path = SCREENSHOT_COPY) -> None:
    page.screenshot(path=str(path))
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, copy)


def _wait_for(
    page: Any, what: str, js: str, timeout_ms: int, lab: Lab, copy: Path = SCREENSHOT_COPY
) -> None:
    """Wait until ``js`` is true in the page; on a timeout fail with all there is to see."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(js, timeout=timeout_ms, polling=250)
    except PlaywrightTimeout:
        shot = lab.root.parent / "timeout.png"
        _save_screenshot(page, shot, copy)
        try:
            state = page.evaluate(PAGE_STATE_JS)
            outputs = "\n---\n".join(
                text[:2000]
                for text in page.locator(".jp-Notebook .jp-OutputArea-output").all_inner_texts()
            )
        except Exception as exc:  # the page itself may be what broke
            state, outputs = f"(page unreadable: {exc!r})", ""
        pytest.fail(
            f"timed out after {timeout_ms / 1000:.0f} s waiting for {what}; screenshot {shot} "
            f"(copied to {copy})\npage: {state}\noutputs:\n{outputs}\n"
            f"JupyterLab log:\n{lab.log_tail()}"
        )


def _launch(pw: Any, tmp_path: Path) -> Any:
    """Headless Chromium with a fresh profile under ``tmp_path``: a browser context."""
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    return pw.chromium.launch_persistent_context(
        user_data_dir=str(profile),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 1000},
    )


def _open_notebook(context: Any, lab: Lab, name: str, copy: Path = SCREENSHOT_COPY) -> Any:
    """The page with notebook ``name`` open and its kernel started and idle."""
    page = context.pages[0] if context.pages else context.new_page()
    page.goto(f"{lab.url}/lab/tree/{name}?token={lab.token}", timeout=PAGE_READY_TIMEOUT_MS)
    _wait_for(page, "the notebook with an idle kernel", KERNEL_READY_JS,
              PAGE_READY_TIMEOUT_MS, lab, copy)
    return page


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quickstart_runs_in_jupyterlab(jupyter_lab: Lab, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    lab = jupyter_lab
    screenshot = tmp_path / "quickstart.png"

    with sync_playwright() as pw:
        context = _launch(pw, tmp_path)
        try:
            page = _open_notebook(context, lab, NOTEBOOK)

            # Run → Run All Cells, as a person would.
            page.locator("#jp-MainMenu").get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            _wait_for(page, f"all cells to run and {MIN_BARS} full green progress bars",
                      FINISHED_JS, RUN_TIMEOUT_MS, lab)

            state = page.evaluate(PAGE_STATE_JS)
            # Show the first progress panel (or else the first traceback) at the top.
            page.evaluate("""() => {
                const notebook = document.querySelector('.jp-Notebook');
                const first = notebook.querySelector('.p2p-copy-summary')
                    ?? notebook.querySelector('[data-mime-type="application/vnd.jupyter.stderr"]');
                first?.closest('.jp-Cell')?.scrollIntoView({block: 'start'});
            }""")
            page.wait_for_timeout(300)  # let the scroll settle before the picture
            _save_screenshot(page, screenshot)
        finally:
            context.close()

    assert not state["tracebacks"], "\n---\n".join(state["tracebacks"])
    assert not state["widgetErrors"], "\n---\n".join(state["widgetErrors"])
    assert all(p.startswith("[") and p[1:-2].isdigit() for p in state["prompts"]), state["prompts"]
    bars = state["summaries"]
    assert len(bars) >= MIN_BARS, bars
    for bar in bars:
        assert bar["width"] == "100%", bars
        assert "p2p-copy-state-done" in bar["classes"], bars
    assert sorted(b["title"] for b in bars)[:2] == ["p2p-copy receive: done",
                                                     "p2p-copy send: done"], bars
    assert screenshot.stat().st_size > 0


# The cancel test's notebook: a relay, then two receivers that no sender ever joins, so that
# only the panel's Cancel button can end them. A cell prints a line only if the transfer
# ended with p2p_copy.CancelledError; anything else shows as a traceback.
CANCEL_NOTEBOOK = "cancel.ipynb"
CANCEL_CELLS = [
    # 0: the relay
    "import asyncio\n"
    "import p2p_copy\n"
    "\n"
    "relay = p2p_copy.Relay()\n"
    "await relay.start()",
    # 1: (a) the cell itself awaits the transfer while Cancel is clicked
    "try:\n"
    '    await p2p_copy.receive(relay.url, "nobody-sends-this", "dest-a")\n'
    "except p2p_copy.CancelledError as exc:\n"
    '    print(f"awaited: {type(exc).__name__}: {exc}")',
    # 2: (b) a background transfer; the cell is over when Cancel is clicked
    't = p2p_copy.start_receive(relay.url, "nobody-sends-that", "dest-b")\n'
    "t",
    # 3: (b) what awaiting the cancelled handle gives, and what the relay has left open
    "try:\n"
    "    await t\n"
    "except p2p_copy.CancelledError as exc:\n"
    '    print(f"background: {t.status}, {type(exc).__name__}: {exc}")\n'
    "for _ in range(50):  # the relay's side of the connections closes a moment later\n"
    "    if relay.stats.open_connections == 0:\n"
    "        break\n"
    "    await asyncio.sleep(0.1)\n"
    'print(f"relay: {relay.stats.open_connections} open, {relay.stats.waiting} waiting")',
]

# What code cell ``i`` shows: its prompt ("[*]:" while it runs), its progress panel (title
# "<b>receive</b> · <state>", bar classes, the Cancel button), its stdout and any traceback.
CELL_STATE_JS = """
i => {
    const cell = document.querySelectorAll('.jp-Notebook .jp-CodeCell')[i];
    const button = cell.querySelector('.widget-button');
    return {
        prompt: cell.querySelector('.jp-InputPrompt').textContent.trim(),
        title: Array.from(cell.querySelectorAll('.widget-html-content'))
            .map(e => e.textContent.trim()).find(t => t.startsWith('receive ·')) ?? null,
        bar: Array.from(cell.querySelector('.widget-hprogress .progress-bar')?.classList ?? []),
        summary: (s => s === null ? null : {
            classes: Array.from(s.classList),
            title: s.querySelector('b')?.textContent ?? null,
        })(cell.querySelector('.p2p-copy-summary')),
        button: button === null ? null : {
            text: button.textContent.trim(),
            disabled: button.disabled,
            visible: button.offsetParent !== null,
        },
        stdout: Array.from(cell.querySelectorAll(
            '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stdout"]'
        )).map(o => o.innerText).join(''),
        tracebacks: Array.from(cell.querySelectorAll(
            '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
        )).map(o => o.innerText).filter(text => text.includes('Traceback')),
    };
}
"""


def _cell_js(index: int, condition: str) -> str:
    """JS that is true once ``condition`` holds for cell ``index``'s state ``s``, or once the
    cell shows a traceback (for the assertions to report)."""
    return f"""
    () => {{
        const s = ({CELL_STATE_JS})({index});
        return s.tracebacks.length > 0 || ({condition});
    }}
    """


# The panel waits for a sender and its Cancel button can be clicked.
PANEL_WAITING = (
    "s.title === 'receive · waiting for peer' && s.button !== null"
    " && s.button.text === 'Cancel' && !s.button.disabled && s.button.visible"
)
# The panel ended cancelled: replaced by its summary, which says so (orange).
PANEL_CANCELLED = (
    "s.summary !== null && s.summary.classes.includes('p2p-copy-state-cancelled')"
)
CELL_DONE = "/^\\[\\d+\\]:$/.test(s.prompt)"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_cancel_button_in_a_live_notebook(jupyter_lab: Lab, tmp_path: Path) -> None:
    """The Cancel button ends (a) a transfer its cell is still awaiting: the kernel handles
    the click's comm message during the awaited cell, which ends with
    p2p_copy.CancelledError; and (b) a background start_receive whose cell has finished:
    awaiting its handle then raises p2p_copy.CancelledError. Each panel ends with the state
    "cancelled" (its static summary, orange; its bar empty here, as no byte moved), and the
    relay is left with no connection open."""
    import nbformat
    from playwright.sync_api import sync_playwright

    lab = jupyter_lab
    notebook = nbformat.v4.new_notebook(  # type: ignore[no-untyped-call]
        cells=[
            nbformat.v4.new_code_cell(source)  # type: ignore[no-untyped-call]
            for source in CANCEL_CELLS
        ],
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}},
    )
    nbformat.write(notebook, lab.root / CANCEL_NOTEBOOK)  # type: ignore[no-untyped-call]
    screenshot = tmp_path / "cancel.png"
    copy = CANCEL_SCREENSHOT_COPY

    with sync_playwright() as pw:
        context = _launch(pw, tmp_path)
        try:
            page = _open_notebook(context, lab, CANCEL_NOTEBOOK, copy)
            cells = page.locator(".jp-Notebook .jp-CodeCell")

            def run(index: int) -> None:
                cells.nth(index).locator(".cm-content").click()
                page.keyboard.press("Control+Enter")  # run the cell, stay on it

            def wait(index: int, what: str, condition: str, timeout_ms: int) -> dict[str, Any]:
                _wait_for(page, f"cell {index}: {what}", _cell_js(index, condition),
                          timeout_ms, lab, copy)
                state: dict[str, Any] = page.evaluate(CELL_STATE_JS, index)
                assert not state["tracebacks"], "\n---\n".join(state["tracebacks"])
                return state

            def click_cancel(index: int) -> None:
                cells.nth(index).locator(".widget-button", has_text="Cancel").click()

            run(0)
            wait(0, "the relay started", CELL_DONE, CELL_TIMEOUT_MS)

            # (a) Cancel while the cell is still awaiting the transfer.
            run(1)
            before = wait(1, "a waiting panel", PANEL_WAITING, CELL_TIMEOUT_MS)
            assert before["prompt"] == "[*]:", before  # the cell is still running
            click_cancel(1)
            awaited = wait(1, "the click to cancel the awaited transfer and end the cell",
                           f"{PANEL_CANCELLED} && {CELL_DONE} && s.stdout !== ''",
                           CANCEL_TIMEOUT_MS)

            # (b) Cancel a background transfer whose cell has finished.
            run(2)
            waiting = wait(2, "a waiting panel and a finished cell",
                           f"{PANEL_WAITING} && {CELL_DONE}", CELL_TIMEOUT_MS)
            click_cancel(2)
            background = wait(2, "the click to cancel the background transfer",
                              PANEL_CANCELLED, CANCEL_TIMEOUT_MS)
            run(3)
            ending = wait(3, "awaiting the cancelled handle",
                          f"{CELL_DONE} && s.stdout.includes('relay:')", CELL_TIMEOUT_MS)

            cells.nth(1).scroll_into_view_if_needed()
            page.wait_for_timeout(300)  # let the scroll settle before the picture
            _save_screenshot(page, screenshot, copy)
        finally:
            context.close()

    expected = "awaited: TransferCancelledError: The transfer was cancelled."
    assert awaited["stdout"].strip() == expected, awaited
    assert waiting["prompt"] != "[*]:", waiting
    assert "p2p-copy-state-cancelled" in background["summary"]["classes"], background
    assert ending["stdout"].splitlines() == [
        "background: cancelled, TransferCancelledError: The transfer was cancelled.",
        "relay: 0 open, 0 waiting",
    ], ending
    for panel in (awaited, background):
        assert panel["summary"]["title"] == "p2p-copy receive: cancelled", panel
        # An ended panel is a static summary: no widget, no button left to click.
        assert panel["button"] is None and panel["bar"] == [], panel
    assert screenshot.stat().st_size > 0
