"""p2p_copy.drop() and offer() in a real notebook: the browser that shows it is the other peer.

JupyterLab and Notebook 7, with jupyter-server-proxy, run on 127.0.0.1 (free port, random
token) with their root in a temporary folder; Debian's Chromium, driven headless by
Playwright, opens a notebook whose cells call drop() and offer(). The kernel starts its own
relay (no P2P_COPY_RELAY, an empty config folder), which the page reaches through the
Jupyter server at ``<base_url>proxy/<port>/``. Files reach the panel's file input by path
(Playwright's set_input_files with a path: no bytes pass through Playwright), and a save
goes into an origin-private (OPFS) file that stands in for the save picker, which
Playwright cannot drive. What arrived is compared by SHA-256 with what was sent.

Sizes: P2P_COPY_DROP_MIB (default 64; the issue's check is 2048) for the dropped file and
the JupyterLab upload timed beside it, half of it for the save; the reload test uses at
least 256 MiB. P2P_COPY_DROP_RELAY=ws://... makes both sides use that relay instead (to
compare with the proxy). Screenshots go to /tmp/drop-shots/.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from p2p_copy.display.progress import NoProgress

from .conftest import Processes, cli_env, free_port
from .test_browser import (
    REPO,
    SERVER_START_TIMEOUT,
    Lab,
    _get_json,
    _launch,
    _stop,
    _user_settings,
    browser_tools,  # noqa: F401  (a fixture)
)

SHOTS = Path("/tmp/drop-shots")
MIB = 2**20
DROP_BYTES = int(os.environ.get("P2P_COPY_DROP_MIB", "64")) * MIB
#: Milliseconds for the page to show a notebook with an idle kernel.
PAGE_READY_MS = 60_000
#: Milliseconds for a transfer of DROP_BYTES (generous: a shared 2-core machine).
TRANSFER_MS = max(120_000, DROP_BYTES // MIB * 400)
#: Renderer memory above which the page is said to hold the file (the issue's target).
PAGE_MEMORY_LIMIT = 300 * MIB

#: Seconds a test in a browser may take.
BROWSER_TEST_TIMEOUT = TRANSFER_MS // 1000 * 4 + 300


@dataclass
class Server(Lab):
    """A Jupyter server (JupyterLab or Notebook 7), as test_browser's Lab."""

    app: str = "lab"

    def notebook_url(self, name: str) -> str:
        where = "lab/tree" if self.app == "lab" else "notebooks"
        return f"{self.url}/{where}/{name}?token={self.token}"


def _start_server(app: str, tmp_path: Path, *extra: str,
                  kernel_env: dict[str, str] | None = None
                  ) -> tuple[Server, subprocess.Popen[bytes]]:
    root = tmp_path / "root"
    root.mkdir()
    home = tmp_path / "jupyter-home"
    dirs = {name: home / name for name in ("config", "data", "runtime", "ipython", "xdg")}
    for path in dirs.values():
        path.mkdir(parents=True)
    _user_settings(dirs["config"])
    env = cli_env(
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        IPYTHONDIR=str(dirs["ipython"]),
        # No relay of the user's: the kernel starts its own, behind the server's proxy.
        XDG_CONFIG_HOME=str(dirs["xdg"]),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
    )
    env.pop("P2P_COPY_RELAY", None)
    if os.environ.get("P2P_COPY_DROP_RELAY"):  # to compare with a relay reached directly
        env["P2P_COPY_RELAY"] = os.environ["P2P_COPY_DROP_RELAY"]
    env.update(kernel_env or {})  # the kernels inherit the server's environment
    port = free_port()
    token = secrets.token_hex(16)
    log = tmp_path / f"{app}.log"
    module = "jupyterlab" if app == "lab" else "notebook"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", module, "--no-browser",
                "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
                f"--IdentityProvider.token={token}", "--ServerApp.allow_root=True",
                "--ServerApp.terminals_enabled=False",
                "--LabApp.news_url=None" if app == "lab" else "--JupyterNotebookApp.news_url=None",
                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"
                if app == "lab" else
                "--JupyterNotebookApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                *extra,
            ],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            env=env, cwd=root, start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", token, root, log, app=app)
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{module} exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            _get_json(f"{server.url}/api/status?token={token}")
            return server, proc
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                _stop(proc)
                pytest.fail(f"{module} did not answer:\n{server.log_tail()}")
            time.sleep(0.25)


@pytest.fixture
def lab(browser_tools: None, tmp_path: Path) -> Iterator[Server]:  # noqa: F811
    server, proc = _start_server("lab", tmp_path)
    try:
        yield server
    finally:
        _stop(proc)


@pytest.fixture
def notebook7(browser_tools: None, tmp_path: Path) -> Iterator[Server]:  # noqa: F811
    server, proc = _start_server("notebook", tmp_path)
    try:
        yield server
    finally:
        _stop(proc)


def _notebook(server: Server, name: str, cells: list[str]) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook(  # type: ignore[no-untyped-call]
        cells=[nbformat.v4.new_code_cell(c) for c in cells],  # type: ignore[no-untyped-call]
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}},
    )
    nbformat.write(nb, server.root / name)  # type: ignore[no-untyped-call]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _make_file(path: Path, size: int) -> str:
    """``size`` pseudo-random bytes (incompressible), written in 4 MiB pieces; their SHA-256."""
    digest = hashlib.sha256()
    block = os.urandom(4 * MIB)
    with path.open("wb") as f:
        written = 0
        n = 0
        while written < size:
            piece = (n.to_bytes(8, "big") + block)[: min(4 * MIB, size - written)]
            f.write(piece)
            digest.update(piece)
            written += len(piece)
            n += 1
    return digest.hexdigest()


# The notebook is ready: a code cell and a kernel that is idle (Lab's status bar, or
# Notebook 7's kernel indicator).
READY_JS = """
() => document.querySelector('.jp-Notebook .jp-Cell') !== null
    && (Array.from(document.querySelectorAll('#jp-main-statusbar .jp-StatusBar-TextItem'))
          .some(item => /^(?!No Kernel).+ \\| Idle$/.test(item.textContent.trim()))
        || document.querySelector('.jp-Notebook-ExecutionIndicator[data-status="idle"]') !== null)
"""


def _open(context: Any, server: Server, name: str) -> Any:
    page = context.pages[0] if context.pages else context.new_page()
    page.goto(server.notebook_url(name), timeout=PAGE_READY_MS)
    page.wait_for_function(READY_JS, timeout=PAGE_READY_MS, polling=250)
    return page


#: Code cell i was sent to the kernel: its prompt shows [*] or its number.
STARTED_JS = """i => /^\\[(\\*|\\d+)\\]:$/.test(document.querySelectorAll(
    '.jp-Notebook .jp-CodeCell')[i].querySelector('.jp-InputPrompt').textContent.trim())"""


def _accept_dialog(page: Any) -> None:
    dialog = page.locator(".jp-Dialog")
    if dialog.count():
        # Seen under load (kernel selection on a slow start): take its default.
        print(f"\na JupyterLab dialog: {dialog.first.inner_text()[:300]!r}")
        dialog.first.locator(".jp-mod-accept").first.click()


def _run_cell(page: Any, index: int) -> None:
    """Run code cell ``index`` (click into it, Control+Enter) and wait until it started: a
    key press right after the page opened is sometimes lost, so it is tried again."""
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(index)
    for _ in range(5):
        _accept_dialog(page)
        cell.locator(".cm-content").click(timeout=10_000)
        page.keyboard.press("Control+Enter")
        try:
            page.wait_for_function(STARTED_JS, arg=index, timeout=5_000, polling=100)
            return
        except Exception:
            continue
    pytest.fail(f"cell {index} does not run")


def _panel_state(page: Any, index: int = 0) -> dict[str, Any]:
    return page.evaluate("""i => {
        const p = document.querySelectorAll('.p2p-copy-drop')[i];
        if (!p) return null;
        const status = p.querySelector('.p2p-copy-drop-status');
        return {state: p.dataset.state, status: status.textContent,
                kind: status.dataset.kind ?? ''};
    }""", index)


def _wait_panel(page: Any, server: Server, states: tuple[str, ...], timeout_ms: int,
                index: int = 0, shot: str = "timeout") -> dict[str, Any]:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            """([i, states]) => {
                const p = document.querySelectorAll('.p2p-copy-drop')[i];
                return p && (states.includes(p.dataset.state)
                             || p.querySelector('.p2p-copy-drop-status').dataset.kind === 'bad');
            }""", arg=[index, list(states)], timeout=timeout_ms, polling=250)
    except PlaywrightTimeout:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{shot}.png"))
        outputs = "\n---\n".join(t[:1500] for t in page.locator(
            ".jp-OutputArea-output").all_inner_texts())
        pytest.fail(f"the panel never reached {states}: {_panel_state(page, index)}\n"
                    f"outputs:\n{outputs}\nserver log:\n{server.log_tail()}")
    state: dict[str, Any] = _panel_state(page, index)
    return state


def _panel_ready(context: Any, server: Server, name: str, shot: str | None = None) -> Any:
    """Open notebook ``name``, run its panel's cell and, once the panel is ready (a
    screenshot ``shot`` taken then), the cell that awaits the transfer; the page."""
    page = _open(context, server, name)
    _run_cell(page, 0)
    _wait_panel(page, server, ("ready",), 60_000)
    if shot:
        _shot(page, shot)
    _run_cell(page, 1)
    return page


def _renderer_pids(profile: Path) -> list[int]:
    """The renderer processes of the Chromium that runs with ``profile``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"--type=renderer" in cmdline and str(profile).encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def _rss(pids: list[int]) -> int:
    """The largest resident memory of ``pids``, in bytes (0 for those gone)."""
    biggest = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                biggest = max(biggest, int(line.split()[1]) * 1024)
    return biggest


class _Sampler:
    """Samples a value every 0.2 s in a thread; ``peak`` is the largest seen."""

    def __init__(self, measure: Any) -> None:
        self.measure = measure
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.measure())

    def __enter__(self) -> _Sampler:
        self.peak = self.measure()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _dark(page: Any, server: Server) -> None:
    """The dark theme (the user's setting, as Settings → Theme writes it), the notebook saved
    and the page reloaded: the panel comes back from the kernel's model."""
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    page.wait_for_timeout(1000)
    themes = (server.root.parent / "jupyter-home" / "config" / "lab" / "user-settings"
              / "@jupyterlab" / "apputils-extension" / "themes.jupyterlab-settings")
    themes.parent.mkdir(parents=True, exist_ok=True)
    themes.write_text(json.dumps({"theme": "JupyterLab Dark"}))
    page.reload()
    page.wait_for_function(READY_JS, timeout=PAGE_READY_MS, polling=250)
    page.wait_for_function(
        "() => document.body.dataset.jpThemeLight === 'false'"
        " && document.querySelector('.p2p-copy-drop') !== null", timeout=30_000, polling=250)
    page.wait_for_timeout(500)


def _shot(page: Any, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.locator(".p2p-copy-drop").first.scroll_into_view_if_needed()
    page.wait_for_timeout(300)
    page.screenshot(path=str(path))
    return path


DROP_CELLS = [
    "import p2p_copy\n"
    'dropping = p2p_copy.drop("dropped")',
    "result = await dropping\n"
    'print(f"dropped {len(result.files)} files, {result.bytes} bytes")',
]



def _page_memory(cdp: Any) -> int:
    """The page's JavaScript heap in use (Chromium's Performance metrics), in bytes."""
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return int(metrics.get("JSHeapUsedSize", 0))


def _drop_and_measure(page: Any, server: Server, context: Any, profile: Path,
                      source: Path) -> dict[str, Any]:
    """Set ``source`` on the panel's input and wait for the end, sampling the renderer's
    RSS (in a thread, from /proc) and the page's JS heap (CDP, in this thread)."""
    renderers = _renderer_pids(profile)
    assert renderers, "no renderer process found for the profile"
    cdp = context.new_cdp_session(page)
    cdp.send("Performance.enable")
    heap = _page_memory(cdp)
    started = time.monotonic()
    with _Sampler(lambda: _rss(renderers)) as rss:
        baseline = rss.peak
        page.locator(".p2p-copy-drop-files").set_input_files(str(source))
        deadline = time.monotonic() + TRANSFER_MS / 1000
        while True:
            heap = max(heap, _page_memory(cdp))
            state = _panel_state(page)
            if state and (state["state"] in ("done", "failed") or state["kind"] == "bad"):
                break
            if time.monotonic() > deadline:
                _shot(page, "timeout")
                pytest.fail(f"no end of the drop: {state}\n{server.log_tail()}")
            page.wait_for_timeout(250)
    return {"state": state, "seconds": time.monotonic() - started, "rss_before": baseline,
            "rss_peak": rss.peak, "heap_peak": heap}


def _jupyter_upload(page: Any, server: Server, source: Path) -> float:
    """JupyterLab's own upload of ``source`` (file browser, Upload button): seconds until the
    whole file is on the server's disk."""
    target = server.root / source.name
    started = time.monotonic()
    with page.expect_file_chooser() as chooser:
        page.locator('.jp-FileBrowser [data-command="filebrowser:upload"], '
                     '.jp-FileBrowser .jp-id-upload, .jp-FileBrowser button[title*="Upload"]'
                     ).first.click()
    chooser.value.set_files(str(source))
    # Above 15 MiB JupyterLab asks first ("Large file size warning").
    warning = page.get_by_role("button", name="Upload", exact=True)
    try:
        warning.click(timeout=5_000)
    except Exception:
        pass
    deadline = time.monotonic() + TRANSFER_MS / 1000
    while not (target.exists() and target.stat().st_size == source.stat().st_size
               and page.locator(".jp-FileBrowser-uploadProgress, .jp-Statusbar-ProgressBar"
                                ).count() == 0):
        if time.monotonic() > deadline:
            pytest.fail("JupyterLab's upload did not finish")
        time.sleep(0.1)
    took = time.monotonic() - started
    assert _sha256(target) == _sha256(source)
    return took


@pytest.mark.slow
@pytest.mark.timeout(BROWSER_TEST_TIMEOUT)
@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_drop_a_file_into_the_kernel(app: str, browser_tools: None,  # noqa: F811
                                     tmp_path: Path) -> None:
    """A file set on the drop panel's input (by path) arrives in the kernel's folder
    identical, through the kernel's relay behind jupyter-server-proxy, while the page's
    JavaScript heap stays under PAGE_MEMORY_LIMIT and its renderer grows by less than that
    (JupyterLab alone holds ~300 MB). In JupyterLab, its own upload of the same file is
    timed beside it (reported, not asserted)."""
    from playwright.sync_api import sync_playwright

    server, proc = _start_server(app, tmp_path)
    source = tmp_path / "big.bin"
    digest = _make_file(source, DROP_BYTES)
    _notebook(server, "drop.ipynb", DROP_CELLS)
    try:
        with sync_playwright() as pw:
            context = _launch(pw, tmp_path)
            try:
                page = _panel_ready(context, server, "drop.ipynb", f"drop-ready-{app}-light")
                measured = _drop_and_measure(page, server, context,
                                             tmp_path / "chromium-profile", source)
                _shot(page, f"drop-done-{app}-light")
                _dark(page, server)
                _shot(page, f"drop-done-{app}-dark")
                upload = _jupyter_upload(page, server, source) if app == "lab" else None
            finally:
                context.close()
    finally:
        _stop(proc)
    assert measured["state"]["state"] == "done", measured
    assert _sha256(server.root / "dropped" / "big.bin") == digest
    took = measured["seconds"]
    line = (f"\n{app} drop: {DROP_BYTES / MIB:.0f} MiB in {took:.1f} s "
            f"({DROP_BYTES / MIB / took:.0f} MiB/s); JS heap peak "
            f"{measured['heap_peak'] / MIB:.0f} MiB; renderer RSS "
            f"{measured['rss_before'] / MIB:.0f} -> {measured['rss_peak'] / MIB:.0f} MiB")
    if upload is not None:
        line += (f"; JupyterLab upload {upload:.1f} s ({DROP_BYTES / MIB / upload:.0f} MiB/s), "
                 f"drop {upload / took:.1f}x faster")
    print(line)
    assert measured["heap_peak"] < PAGE_MEMORY_LIMIT, line
    assert measured["rss_peak"] - measured["rss_before"] < PAGE_MEMORY_LIMIT, line


#: The ways a person runs a drop whose cell awaits it: one cell (the docstring's
#: ``await p2p_copy.drop(...)``, run alone), or DROP_CELLS with Run All (both execute
#: requests sent at once: the awaiting cell runs before the panel is on screen).
AWAITING = {
    "one-cell": ["import p2p_copy\n"
                 'result = await p2p_copy.drop("dropped")\n'
                 'print(f"dropped {len(result.files)} files, {result.bytes} bytes")'],
    "run-all": DROP_CELLS,
}

def _run_all(page: Any) -> None:
    """Run → Run All Cells, as a person would (every cell's execute request is sent at
    once), and wait until the last cell started; tried again as _run_cell is."""
    last = page.locator(".jp-Notebook .jp-CodeCell").count() - 1
    for _ in range(5):
        _accept_dialog(page)
        # The notebook needs the focus first, or JupyterLab asks for a kernel instead.
        page.locator(".jp-Notebook .jp-CodeCell").first.locator(".cm-content").click(
            timeout=10_000)
        page.keyboard.press("Escape")
        page.locator(".lm-MenuBar").get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        try:
            page.wait_for_function(STARTED_JS, arg=last, timeout=5_000, polling=100)
            return
        except Exception:
            continue
    pytest.fail("Run All does not run the cells")


@pytest.mark.slow
@pytest.mark.timeout(BROWSER_TEST_TIMEOUT)
@pytest.mark.parametrize("app", ["lab", "notebook"])
@pytest.mark.parametrize("how", list(AWAITING))
def test_drop_while_its_cell_awaits(app: str, how: str, browser_tools: None,  # noqa: F811
                                    tmp_path: Path) -> None:
    """The cell awaits the drop before the panel is shown (one cell that awaits
    drop(), or Run All): the kernel's side still starts when the person drops a file, and
    the cell ends with the result."""
    from playwright.sync_api import sync_playwright

    server, proc = _start_server(app, tmp_path)
    source = tmp_path / "small.bin"
    source.write_bytes(os.urandom(300_000))
    _notebook(server, "awaiting.ipynb", AWAITING[how])
    try:
        with sync_playwright() as pw:
            context = _launch(pw, tmp_path)
            try:
                page = _open(context, server, "awaiting.ipynb")
                if how == "run-all":
                    _run_all(page)
                else:
                    _run_cell(page, 0)
                _wait_panel(page, server, ("ready",), 60_000, shot=f"awaiting-{how}-{app}")
                page.locator(".p2p-copy-drop-files").set_input_files(str(source))
                end = _wait_panel(page, server, ("done", "failed"), 60_000,
                                  shot=f"awaiting-{how}-{app}")
                page.wait_for_function(
                    "() => Array.from(document.querySelectorAll('.jp-OutputArea-output'))"
                    ".some(o => o.textContent.includes('dropped 1 files, 300000 bytes'))",
                    timeout=30_000, polling=250)
            finally:
                context.close()
    finally:
        _stop(proc)
    assert end["state"] == "done", end
    assert (server.root / "dropped" / "small.bin").read_bytes() == source.read_bytes()


@pytest.mark.slow
@pytest.mark.timeout(BROWSER_TEST_TIMEOUT)
def test_drop_a_folder(lab: Server, tmp_path: Path) -> None:
    """A folder chosen with the folder button (showDirectoryPicker, stubbed with an
    origin-private folder the page fills first) arrives whole: files, a nested folder and an
    empty one."""
    from playwright.sync_api import sync_playwright

    _notebook(lab, "folder.ipynb", DROP_CELLS)
    with sync_playwright() as pw:
        context = _launch(pw, tmp_path)
        context.add_init_script("""
            window.showDirectoryPicker = async () => {
                const root = await navigator.storage.getDirectory();
                const top = await root.getDirectoryHandle('project', {create: true});
                const write = async (dir, name, text) => {
                    const file = await dir.getFileHandle(name, {create: true});
                    const w = await file.createWritable();
                    await w.write(text); await w.close();
                };
                await write(top, 'a.txt', 'alpha\\n');
                const sub = await top.getDirectoryHandle('sub', {create: true});
                await write(sub, 'b.bin', new Uint8Array(300000).map((_, i) => i % 251));
                await top.getDirectoryHandle('empty', {create: true});
                return top;
            };""")
        try:
            page = _panel_ready(context, lab, "folder.ipynb")
            page.get_by_role("button", name="Choose a folder…").click()
            end = _wait_panel(page, lab, ("done", "failed"), TRANSFER_MS)
        finally:
            context.close()
    assert end["state"] == "done", end
    got = lab.root / "dropped" / "project"
    assert (got / "a.txt").read_text() == "alpha\n"
    assert (got / "sub" / "b.bin").read_bytes() == bytes(i % 251 for i in range(300000))
    assert (got / "empty").is_dir() and not any((got / "empty").iterdir())


SAVE_CELLS = [
    "import p2p_copy\n"
    'saving = p2p_copy.offer("result.bin")',
    "result = await saving\n"
    'print(f"saved {len(result.files)} files, {result.bytes} bytes")',
]

#: The save picker, stubbed: a file of the origin-private file system (Playwright cannot
#: drive the real picker); what it holds is hashed in 64 MiB slices afterwards.
SAVE_PICKER_STUB = """
window.showSaveFilePicker = async ({suggestedName}) => {
    const root = await navigator.storage.getDirectory();
    return root.getFileHandle(suggestedName, {create: true});
};
window.showDirectoryPicker = async () => navigator.storage.getDirectory();
"""
SLICE = 64 * MIB
SLICE_DIGESTS_JS = """async ([name, slice]) => {
    const root = await navigator.storage.getDirectory();
    const file = await (await root.getFileHandle(name)).getFile();
    const out = [];
    for (let at = 0; at < file.size; at += slice) {
        const bytes = await file.slice(at, at + slice).arrayBuffer();
        const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
        out.push(Array.from(digest, b => b.toString(16).padStart(2, '0')).join(''));
    }
    return {size: file.size, digests: out};
}"""


def _slice_digests(path: Path) -> list[str]:
    out = []
    with path.open("rb") as f:
        while piece := f.read(SLICE):
            out.append(hashlib.sha256(piece).hexdigest())
    return out


@pytest.mark.slow
@pytest.mark.timeout(BROWSER_TEST_TIMEOUT)
@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_save_to_this_computer(app: str, browser_tools: None,  # noqa: F811
                               tmp_path: Path) -> None:
    """offer(): the Save button saves the kernel's file through the (stubbed) save picker;
    the saved bytes equal the kernel's file, and the kernel's send ends done. In Notebook 7
    the cells run with Run All: the awaiting cell runs before the panel is shown."""
    from playwright.sync_api import sync_playwright

    lab, proc = _start_server(app, tmp_path)
    size = DROP_BYTES // 2
    _make_file(lab.root / "result.bin", size)
    _notebook(lab, "save.ipynb", SAVE_CELLS)
    with sync_playwright() as pw:
        context = _launch(pw, tmp_path)
        context.add_init_script(SAVE_PICKER_STUB)
        try:
            if app == "lab":
                page = _panel_ready(context, lab, "save.ipynb", f"save-ready-{app}-light")
            else:
                page = _open(context, lab, "save.ipynb")
                _run_all(page)
                _wait_panel(page, lab, ("ready",), 60_000)
                _shot(page, f"save-ready-{app}-light")
            started = time.monotonic()
            page.get_by_role("button", name="Save to this computer…").click()
            end = _wait_panel(page, lab, ("done", "failed"), TRANSFER_MS)
            took = time.monotonic() - started
            _shot(page, f"save-done-{app}-light")
            saved = page.evaluate(SLICE_DIGESTS_JS, ["result.bin", SLICE])
            _dark(page, lab)
            _shot(page, f"save-done-{app}-dark")
        finally:
            context.close()
            _stop(proc)
    assert end["state"] == "done", end
    assert saved["size"] == size
    assert saved["digests"] == _slice_digests(lab.root / "result.bin")
    print(f"\n{app} save: {size / MIB:.0f} MiB in {took:.1f} s ({size / MIB / took:.0f} MiB/s)")


@pytest.mark.slow
@pytest.mark.timeout(BROWSER_TEST_TIMEOUT)
def test_save_a_folder_without_file_system_access(lab: Server, tmp_path: Path) -> None:
    """offer() of a folder in a browser without the pickers (Firefox, Safari): one zip
    download that keeps the folders, the empty file and folder and a Unicode name, not one
    flattened download per file."""
    from playwright.sync_api import sync_playwright

    top = lab.root / "results"
    (top / "sub" / "deeper").mkdir(parents=True)
    (top / "empty").mkdir()
    (top / "a.txt").write_text("alpha\n")
    (top / "sub" / "Grüße ✓.csv").write_text("x,y\n1,2\n")
    (top / "sub" / "deeper" / "none.bin").write_bytes(b"")
    (top / "sub" / "deeper" / "b.bin").write_bytes(os.urandom(300_000))
    _notebook(lab, "save-folder.ipynb", [SAVE_CELLS[0].replace("result.bin", "results"),
                                         SAVE_CELLS[1]])
    with sync_playwright() as pw:
        context = _launch(pw, tmp_path)
        context.add_init_script("window.showSaveFilePicker = undefined;"
                                " window.showDirectoryPicker = undefined;")
        try:
            page = _panel_ready(context, lab, "save-folder.ipynb")
            with page.expect_download(timeout=TRANSFER_MS) as info:
                page.get_by_role("button", name="Save to this computer…").click()
            end = _wait_panel(page, lab, ("done", "failed"), TRANSFER_MS)
            _shot(page, "save-folder-zip-done-lab-light")
            download = info.value
            saved = tmp_path / "saved.zip"
            download.save_as(saved)
            name = download.suggested_filename
        finally:
            context.close()
    assert end["state"] == "done", end
    assert name == "results.zip"
    with zipfile.ZipFile(saved) as archive:
        assert archive.testzip() is None
        archive.extractall(tmp_path / "unzipped")
    got = tmp_path / "unzipped" / "results"
    assert sorted(str(p.relative_to(got)) for p in got.rglob("*")) == sorted(
        str(p.relative_to(top)) for p in top.rglob("*"))
    for path in top.rglob("*"):
        if path.is_file():
            assert (got / path.relative_to(top)).read_bytes() == path.read_bytes(), path


@pytest.mark.slow
@pytest.mark.timeout(BROWSER_TEST_TIMEOUT)
def test_a_reload_mid_transfer_resumes(lab: Server, tmp_path: Path) -> None:
    """The page is reloaded while a drop runs: the panel comes back (the kernel kept its
    model) and says to drop the same file again; dropped again, the transfer continues from
    what the kernel holds (the browser sends less than the whole file) and ends identical."""
    from playwright.sync_api import sync_playwright

    size = max(DROP_BYTES, 256 * MIB)
    source = tmp_path / "big.bin"
    digest = _make_file(source, size)
    _notebook(lab, "reload.ipynb", DROP_CELLS[:1])
    with sync_playwright() as pw:
        context = _launch(pw, tmp_path)
        try:
            page = _open(context, lab, "reload.ipynb")
            _run_cell(page, 0)
            _wait_panel(page, lab, ("ready",), 60_000)
            page.keyboard.press("Control+s")  # the reloaded page shows the saved outputs
            page.wait_for_timeout(1000)
            page.locator(".p2p-copy-drop-files").set_input_files(str(source))
            page.wait_for_function(
                """size => {
                    const bar = document.querySelector('.p2p-copy-drop-bar');
                    return bar && !bar.hidden && bar.value > size / 8;
                }""", arg=size, timeout=TRANSFER_MS, polling=100)
            page.reload()
            page.wait_for_function(READY_JS, timeout=PAGE_READY_MS, polling=250)
            cut = _wait_panel(page, lab, ("running", "interrupted"), 60_000)
            _shot(page, "reload-cut-light")
            page.locator(".p2p-copy-drop-files").set_input_files(str(source))
            end = _wait_panel(page, lab, ("done", "failed"), TRANSFER_MS)
            resent = page.evaluate("() => document.querySelector('.p2p-copy-drop-bar').max")
            _shot(page, "reload-done-light")
        finally:
            context.close()
    assert "again" in cut["status"], cut
    assert end["state"] == "done", end
    assert _sha256(lab.root / "dropped" / "big.bin") == digest
    assert 0 < resent < size, (resent, size)
    print(f"\nreload: the second drop sent {resent / MIB:.0f} of {size / MIB:.0f} MiB")


@pytest.mark.slow
@pytest.mark.timeout(BROWSER_TEST_TIMEOUT)
def test_without_the_proxy_the_panel_says_what_to_install(browser_tools: None,  # noqa: F811
                                                          tmp_path: Path) -> None:
    """A Jupyter server without jupyter-server-proxy: the page cannot reach the kernel's
    relay, and the panel says what to install (or which relay to set) instead of hanging;
    the kernel's side is told and waits for another try."""
    from playwright.sync_api import sync_playwright

    server, proc = _start_server(
        "lab", tmp_path, "--ServerApp.jpserver_extensions={'jupyter_server_proxy': False}")
    (tmp_path / "small.txt").write_text("hello\n")
    _notebook(server, "noproxy.ipynb", DROP_CELLS[:1])
    try:
        with sync_playwright() as pw:
            context = _launch(pw, tmp_path)
            try:
                page = _open(context, server, "noproxy.ipynb")
                _run_cell(page, 0)
                # Said before anyone chooses a file (the panel asks the relay's /healthz)...
                before = _wait_panel(page, server, ("never",), 60_000)
                _shot(page, "no-proxy-light")
                # ... and if they drop one all the same.
                page.locator(".p2p-copy-drop-files").set_input_files(str(tmp_path / "small.txt"))
                said = _wait_panel(page, server, ("interrupted",), 60_000)
            finally:
                context.close()
    finally:
        _stop(proc)
    assert before["state"] == "ready" and before["kind"] == "bad", before
    assert before["status"].startswith("The Jupyter server did not let this page through")
    assert said["kind"] == "bad", said
    assert said["status"].startswith("The Jupyter server did not let this page through"), said
    assert "install jupyter-server-proxy" in said["status"], said
    assert not (server.root / "dropped" / "small.txt").exists()


@pytest.mark.slow
@pytest.mark.timeout(BROWSER_TEST_TIMEOUT)
def test_drop_through_a_private_relay(browser_tools: None, processes: Processes,  # noqa: F811
                                      tmp_path: Path) -> None:
    """The user's relay is private ($P2P_COPY_RELAY and $P2P_COPY_RELAY_TOKEN in the
    kernel's environment): the kernel hands the page its token in a message, the page
    offers it as a subprotocol (protocol.md §5.11), and the dropped file arrives. With
    JupyterLab saving widget state, the saved notebook holds the panel's state but not the
    token or the code, and the relay's log never shows the token."""
    from playwright.sync_api import sync_playwright

    token = "t0k-" + secrets.token_hex(12)
    tokens = tmp_path / "tokens"
    tokens.write_text(token + "\n")
    relay, url = processes.start_relay(None, "--access-token-file", str(tokens))
    server, proc = _start_server("lab", tmp_path, kernel_env={
        "P2P_COPY_RELAY": url, "P2P_COPY_RELAY_TOKEN": token})
    widgets = (tmp_path / "jupyter-home" / "config" / "lab" / "user-settings"
               / "@jupyter-widgets" / "jupyterlab-manager" / "plugin.jupyterlab-settings")
    widgets.parent.mkdir(parents=True)
    widgets.write_text(json.dumps({"saveState": True}))
    saved = server.root / "private.ipynb"
    source = tmp_path / "small.bin"
    source.write_bytes(os.urandom(300_000))
    _notebook(server, "private.ipynb", DROP_CELLS)
    try:
        with sync_playwright() as pw:
            context = _launch(pw, tmp_path)
            try:
                page = _panel_ready(context, server, "private.ipynb")
                page.locator(".p2p-copy-drop-files").set_input_files(str(source))
                end = _wait_panel(page, server, ("done", "failed"), TRANSFER_MS,
                                  shot="private-relay")
                page.keyboard.press("Control+s")
                deadline = time.monotonic() + 30
                while "widget-state" not in saved.read_text() and time.monotonic() < deadline:
                    time.sleep(0.25)
            finally:
                context.close()
    finally:
        _stop(proc)
    relay.terminate()
    _, log = relay.communicate(timeout=30)
    assert end["state"] == "done", end
    assert (server.root / "dropped" / "small.bin").read_bytes() == source.read_bytes()
    notebook = saved.read_text()
    assert "application/vnd.jupyter.widget-state+json" in notebook and url in notebook
    assert token not in notebook
    assert "listening" in log and token not in log
    # Nor the code, which was live in the relay while the panel waited.
    states = json.loads(notebook)["metadata"]["widgets"][
        "application/vnd.jupyter.widget-state+json"]["state"]
    panels = [m["state"] for m in states.values() if m["state"].get("mode") == "drop"]
    assert panels and all("code" not in state for state in panels), panels


# --- without a browser ---------------------------------------------------------------------


@pytest.fixture
def no_user_relay(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("P2P_COPY_RELAY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


async def _stop_kernel_relay() -> None:
    from p2p_copy.jupyter import drop as module

    if module._kernel_relay is not None:
        await module._kernel_relay[1].stop()
        module._kernel_relay = None


@pytest.mark.slow  # importing anywidget and ipywidgets takes a second
async def test_without_a_browser_drop_says_where_it_is_needed(
        no_user_relay: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """No front end ever shows the panel (a script, nbclient): its text says a browser is
    needed, and awaiting drop() ends with that line (a UsageError), nothing received."""
    import p2p_copy
    from p2p_copy.jupyter import drop as module

    monkeypatch.setattr(module, "VIEW_TIMEOUT", 0.2)
    try:
        handle = p2p_copy.drop(tmp_path / "in")
        with pytest.raises(p2p_copy.UsageError, match="needs a notebook front end"):
            await handle
    finally:
        await _stop_kernel_relay()
    assert "drop files into this kernel" in capsys.readouterr().out
    assert not (tmp_path / "in").exists()


async def test_offer_of_a_missing_file_is_one_line(tmp_path: Path) -> None:
    import p2p_copy

    with pytest.raises(p2p_copy.UsageError, match="does not exist"):
        p2p_copy.offer(tmp_path / "nothing-here.csv")


def test_drop_outside_an_event_loop_says_so(tmp_path: Path) -> None:
    import p2p_copy

    with pytest.raises(p2p_copy.UsageError, match="event loop"):
        p2p_copy.drop(tmp_path)


async def test_without_anywidget_the_message_says_what_to_install(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import p2p_copy
    from p2p_copy.jupyter import panel

    monkeypatch.setattr(panel, "_CLASS", None)
    monkeypatch.setitem(sys.modules, "anywidget", None)  # import anywidget fails
    with pytest.raises(p2p_copy.UsageError, match=r"pip install anywidget 'jupyter-server-proxy"):
        p2p_copy.drop(tmp_path)


async def test_the_users_relay_is_used_by_both_sides(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """$P2P_COPY_RELAY (as for the command line): the kernel and the browser use it, and
    no relay is started in the kernel; without it, the kernel's own relay, behind the proxy."""
    from p2p_copy.jupyter import drop as module

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("P2P_COPY_RELAY", "wss://relay.example.org")
    route = await module._route()
    assert (route.url, route.browser_url, route.proxy_port) == (
        "wss://relay.example.org", "wss://relay.example.org", 0)
    assert module._kernel_relay is None
    monkeypatch.delenv("P2P_COPY_RELAY")
    try:
        route = await module._route()
        again = await module._route()
    finally:
        await _stop_kernel_relay()
    assert route.browser_url == "" and route.proxy_port > 0
    assert route.url == f"ws://127.0.0.1:{route.proxy_port}"
    assert again == route  # one relay per kernel, reused


def _custom(panel: Any, content: dict[str, Any]) -> None:
    """What anywidget's model.send(content) in the view brings to the kernel."""
    panel._handle_msg({"content": {"data": {"method": "custom", "content": content}},
                       "buffers": []})


@pytest.mark.slow  # importing anywidget and ipywidgets takes a second
async def test_the_code_and_a_private_relays_token_reach_the_view_by_message_only(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The user's relay is private ($P2P_COPY_RELAY_TOKEN, as for the command line): the
    kernel uses the token, and the view gets it with the code in a custom message, when it
    asks and every SECRETS_EVERY s while the kernel waits. Neither is in a trait, so not in
    the widget state a notebook may save; the kernel's own relay (public, behind the proxy)
    gives the view no token."""
    from p2p_copy.jupyter import drop as module
    from p2p_copy.jupyter.panel import panel_class
    from p2p_copy.peer.options import resolve

    token = "t0k-" + secrets.token_hex(8)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("P2P_COPY_RELAY", "wss://relay.example.org")
    monkeypatch.setenv("P2P_COPY_RELAY_TOKEN", token)
    used: list[str | None] = []

    async def run(url: str, code: str, opts: Any) -> Any:
        used.append(opts.relay_token)
        await asyncio.Future()  # waits in the relay, until cancelled

    monkeypatch.setattr(module, "SECRETS_EVERY", 0.05)

    async def answers(user_relay: bool) -> list[dict[str, Any]]:
        if not user_relay:
            monkeypatch.delenv("P2P_COPY_RELAY")
        panel = panel_class("drop")("drop files", mode="drop", code="7-a-b-c")
        sent: list[dict[str, Any]] = []
        panel.send = lambda content, buffers=None: sent.append(content)
        serving = asyncio.ensure_future(module._serve(
            panel, module._PanelTracker(panel, NoProgress), resolve("receive", None, {}), run))
        _custom(panel, {"event": "shown"})  # a view is shown
        async with asyncio.timeout(10):
            while panel.state != "ready":
                await asyncio.sleep(0.01)
        for secret in (token, "7-a-b-c"):
            assert secret not in json.dumps(panel.get_state(), default=str)
            assert secret not in repr(panel)
        told = len(sent)
        _custom(panel, {"ask": "secrets"})  # answered at once
        assert len(sent) == told + 1
        _custom(panel, {"ask": "other"})  # not answered
        assert len(sent) == told + 1
        await asyncio.sleep(0.2)  # and sent every SECRETS_EVERY s meanwhile
        assert len(sent) >= told + 3
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        after = len(sent)
        await asyncio.sleep(0.2)
        assert len(sent) == after, "nothing sent once the panel is done"
        assert "7-a-b-c" not in json.dumps(panel.get_state(), default=str)
        return sent

    try:
        for user_relay, expected in ((True, token), (False, "")):
            sent = await answers(user_relay)
            assert sent and all(m == {"code": "7-a-b-c", "relay_token": expected} for m in sent)
        # The kernel joined the relay at once, with the token for the user's relay only.
        assert used == [token, None]
    finally:
        await _stop_kernel_relay()


@pytest.mark.slow  # importing anywidget and ipywidgets takes a second
async def test_the_kernel_waits_in_the_relay_for_the_browser(
        no_user_relay: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The kernel's side joins its relay at once, with no word from the view but that it is
    shown, and joins again when the relay's wait for a partner runs out: a sender that
    comes later (the browser, here the Python peer) still pairs with it, and the awaited
    handle gives the result; with a wait_timeout of the user's, the wait ends instead."""
    import dataclasses

    import IPython.display

    import p2p_copy
    from p2p_copy.jupyter import drop as module

    monkeypatch.setattr(module, "_KERNEL_RELAY_CONFIG", dataclasses.replace(
        module._KERNEL_RELAY_CONFIG, peer_timeout=0.5))
    monkeypatch.setattr(module, "REJOIN_DELAY", 0.1)
    panels: list[Any] = []
    monkeypatch.setattr(IPython.display, "display", panels.append)
    source = tmp_path / "hello.txt"
    source.write_text("hello\n")
    try:
        handle = p2p_copy.drop(tmp_path / "in", progress="none")
        _custom(panels[0], {"event": "shown"})
        async with asyncio.timeout(30):
            while module._kernel_relay is None or panels[0].state != "ready":
                await asyncio.sleep(0.05)
            relay = module._kernel_relay[1]
            await asyncio.sleep(1.5)  # the relay sent the waiting kernel away at least once
            assert panels[0].state == "ready"
            sent = await p2p_copy.send(relay.url, panels[0].code, [source], progress="none")
            result = await handle
        assert sent.bytes == result.bytes == 6
        assert (tmp_path / "in" / "hello.txt").read_text() == "hello\n"
        assert panels[0].state == "done"

        handle = p2p_copy.drop(tmp_path / "in", progress="none", wait_timeout=0.3)
        _custom(panels[1], {"event": "shown"})
        with pytest.raises(p2p_copy.TransferTimeoutError):
            async with asyncio.timeout(30):
                await handle
        assert panels[1].state == "failed"
    finally:
        await _stop_kernel_relay()


@pytest.mark.slow  # importing anywidget and ipywidgets takes a second
async def test_an_older_ipykernel_that_cannot_hear_the_view_keeps_waiting(
        no_user_relay: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """ipykernel older than 7.4 hears no comm message while a cell runs (one that awaits
    the handle): a view it did not hear from may be on screen, and the transfer needs no
    message, so the kernel keeps waiting instead of saying that no front end shows it."""
    import types

    import p2p_copy
    from p2p_copy.jupyter import drop as module

    monkeypatch.setattr(module, "VIEW_TIMEOUT", 0.2)
    monkeypatch.setattr(module, "in_jupyter_kernel", lambda: True)
    monkeypatch.setitem(sys.modules, "ipykernel", types.SimpleNamespace(version_info=(7, 3, 0)))
    assert not module._hears_the_panel_during_a_cell()
    try:
        handle = p2p_copy.drop(tmp_path / "in", progress="none")
        await asyncio.sleep(1)
        assert not handle.done()
        handle.cancel()
        with pytest.raises(p2p_copy.CancelledError):
            await handle
        monkeypatch.setitem(sys.modules, "ipykernel", types.SimpleNamespace(version_info=(7, 4, 0)))
        assert module._hears_the_panel_during_a_cell()
    finally:
        await _stop_kernel_relay()


def test_binder_installs_what_drop_needs() -> None:
    """Binder's environment has the widget library and the server proxy (>= 4.2.0)."""
    lines = (REPO / "binder" / "requirements.txt").read_text().splitlines()
    assert "anywidget>=0.9" in lines
    assert "jupyter-server-proxy>=4.2.0" in lines
