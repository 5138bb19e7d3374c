"""A real browser runs notebooks/quickstart.ipynb in JupyterLab and sees both transfers end.

JupyterLab is started on 127.0.0.1 (free port, random token, no browser) with its root in a
temporary copy of ``notebooks/``. Debian's Chromium, driven headless by Playwright, opens the
quickstart, waits for its kernel, runs all cells from the Run menu and waits until every cell
has run and the ipywidgets progress bars (the sender's and the receiver's) are full and green.
A screenshot is kept under ``tmp_path`` and copied to ``.cache/browser/quickstart.png``
(gitignored) for a person to look at; on a timeout the screenshot of that moment goes there.

Without /usr/bin/chromium, Playwright or JupyterLab the test is skipped, unless CI is set:
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
        tracebacks: all(
            '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
        ).map(o => o.innerText).filter(text => text.includes('Traceback')),
        widgetErrors: all('.jp-OutputArea-output').map(o => o.innerText)
            .filter(text => text.includes('Error displaying widget')),
    };
}
"""

# Every code cell has run and at least MIN_BARS bars are full and green. A failure ends the
# wait early, for the assertions to report: Run All stops at a traceback, and a red ("danger")
# bar is a transfer that failed.
FINISHED_JS = f"""
() => {{
    const state = ({PAGE_STATE_JS})();
    if (state.tracebacks.length > 0 || state.widgetErrors.length > 0
        || state.bars.some(b => b.classes.includes('progress-bar-danger'))) return true;
    return state.prompts.length > 0
        && state.prompts.every(p => /^\\[\\d+\\]:$/.test(p))
        && state.bars.length >= {MIN_BARS}
        && state.bars.every(b => b.width === '100%'
                                 && b.classes.includes('progress-bar-success'));
}}
"""


def _save_screenshot(page: Any, path: Path) -> None:
    page.screenshot(path=str(path))
    SCREENSHOT_COPY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SCREENSHOT_COPY)


def _wait_for(page: Any, what: str, js: str, timeout_ms: int, lab: Lab) -> None:
    """Wait until ``js`` is true in the page; on a timeout fail with all there is to see."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(js, timeout=timeout_ms, polling=250)
    except PlaywrightTimeout:
        shot = lab.root.parent / "timeout.png"
        _save_screenshot(page, shot)
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
            f"(copied to {SCREENSHOT_COPY})\npage: {state}\noutputs:\n{outputs}\n"
            f"JupyterLab log:\n{lab.log_tail()}"
        )


@pytest.mark.timeout(180)
def test_quickstart_runs_in_jupyterlab(jupyter_lab: Lab, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    lab = jupyter_lab
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    screenshot = tmp_path / "quickstart.png"

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            user_data_dir=str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(f"{lab.url}/lab/tree/{NOTEBOOK}?token={lab.token}",
                      timeout=PAGE_READY_TIMEOUT_MS)
            _wait_for(page, "the notebook with an idle kernel", KERNEL_READY_JS,
                      PAGE_READY_TIMEOUT_MS, lab)

            # Run → Run All Cells, as a person would.
            page.locator("#jp-MainMenu").get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
            _wait_for(page, f"all cells to run and {MIN_BARS} full green progress bars",
                      FINISHED_JS, RUN_TIMEOUT_MS, lab)

            state = page.evaluate(PAGE_STATE_JS)
            # Show the first progress panel (or else the first traceback) at the top.
            page.evaluate("""() => {
                const notebook = document.querySelector('.jp-Notebook');
                const first = notebook.querySelector('.widget-hprogress')
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
    bars = state["bars"]
    assert len(bars) >= MIN_BARS, bars
    for bar in bars:
        assert bar["width"] == "100%", bars
        assert "progress-bar-success" in bar["classes"], bars
    assert screenshot.stat().st_size > 0
