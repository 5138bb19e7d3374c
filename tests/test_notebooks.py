"""The notebooks in notebooks/ run from top to bottom in a real kernel and show that they worked.

Each notebook is executed once (per module run) with nbclient and a fresh ``python3``
kernel in a temporary working directory, with no relay configured in the environment, so
everything stays on loopback. The tests then read the executed notebook: no errors, the
"identical: True" lines the notebooks print, and the final state of the progress widgets.
Also checked: the committed notebooks carry no outputs, and binder/ can build them.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionComplete
from nbclient.util import ensure_async

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
BINDER = ROOT / "binder"
NOTEBOOK_PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))

#: Seconds one cell may take.
CELL_TIMEOUT = 60
#: Seconds a whole notebook run (kernel start, every cell, kernel shutdown) may take.
RUN_TIMEOUT = 120

WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PROGRESS_MODELS = {"FloatProgressModel", "IntProgressModel"}

#: How many "identical: True" lines each notebook prints when all its transfers worked.
IDENTICAL_LINES = {"quickstart": 1, "two-machines": 2, "own-relay": 1, "kernel-to-kernel": 2}

# A test runs at most one notebook (the first to ask for it); the others reuse its result.
pytestmark = pytest.mark.timeout(RUN_TIMEOUT + 30)


class Frontend(NotebookClient):
    """An nbclient that, like JupyterLab, applies every widget message, whatever its cell.

    nbclient only reads the messages that belong to the cell it runs. ipykernel >= 7 tags a
    background task's messages with the cell that *started* the task (the parent lives in a
    context variable the task copied), so the updates of a widget driven by a task started
    in an earlier cell (``p2p_copy.start_send``) would be dropped and its recorded state would
    be stale. A browser's widget manager applies them all; so does this client. Likewise
    JupyterLab applies an ``update_display_data`` to the output with its display id in any
    cell (a panel replaced by its summary when a background transfer ends).
    """

    kernel_pid: int | None = None

    async def async_start_new_kernel(self, **kwargs: Any) -> None:
        await super().async_start_new_kernel(**kwargs)
        self.kernel_pid = getattr(getattr(self.km, "provisioner", None), "pid", None)

    def seen(self, msg: dict[str, Any], cell_index: int) -> None:
        """Every iopub message, whichever cell it belongs to, before it is handled."""

    async def _async_poll_output_msg(
        self, parent_msg_id: str, cell: Any, cell_index: int
    ) -> None:
        assert self.kc is not None
        while True:
            msg = await ensure_async(self.kc.iopub_channel.get_msg(timeout=None))
            self.seen(msg, cell_index)
            if msg["parent_header"].get("msg_id") == parent_msg_id:
                try:
                    self.process_message(msg, cell, cell_index)
                except CellExecutionComplete:
                    return
            elif msg["msg_type"] in ("comm_open", "comm_msg", "comm_close"):
                self.handle_comm_msg([], msg, cell_index)
            elif msg["msg_type"] == "update_display_data":
                display_id = msg["content"].get("transient", {}).get("display_id")
                if display_id:
                    self._update_display_id(display_id, msg)


def _read(path: Path) -> Any:
    return nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _run(path: Path, workdir: Path) -> Any:
    """Execute the notebook at ``path`` in ``workdir``; check its kernel is gone afterwards."""
    # Frontend overrides this nbclient internal; without it the widget states would be stale.
    assert hasattr(NotebookClient, "_async_poll_output_msg"), "nbclient changed: update Frontend"
    nb = _read(path)
    client = Frontend(
        nb,
        timeout=CELL_TIMEOUT,
        startup_timeout=60,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
        store_widget_state=True,
    )
    try:
        # Cancelled on overtime, nbclient still shuts its kernel down on the way out.
        asyncio.run(asyncio.wait_for(client.async_execute(), RUN_TIMEOUT))
    except TimeoutError:
        pytest.fail(f"{path.name} did not finish within {RUN_TIMEOUT} s")
    finally:
        pid = client.kernel_pid
        if pid is not None:
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the kernel of {path.name} (pid {pid}) was still running")
    assert client.kernel_pid is not None, "could not tell which process the kernel was"
    return nb


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Any]]:
    """``executed(name)``: the notebook ``notebooks/NAME.ipynb`` after one run, cached."""
    cache: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as env:
        # The kernel inherits this environment: no relay from outside (two-machines.ipynb
        # falls back to its own loopback relay), and the default progress display.
        env.delenv("P2P_COPY_RELAY", raising=False)
        env.delenv("P2P_COPY_PROGRESS", raising=False)

        def run(name: str) -> Any:
            if name not in cache:
                workdir = tmp_path_factory.mktemp(f"nb-{name}")
                try:
                    cache[name] = _run(NOTEBOOKS / f"{name}.ipynb", workdir)
                except Exception as exc:  # reported by the first test; the others need not rerun
                    cache[name] = exc
                    raise
            if isinstance(cache[name], Exception):
                pytest.fail(f"{name}.ipynb failed to run: {type(cache[name]).__name__}")
            return cache[name]

        yield run


def _outputs(nb: Any) -> Iterator[tuple[int, Any]]:
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            yield index, output


def _stdout(nb: Any) -> str:
    return "".join(
        output.get("text", "")
        for _, output in _outputs(nb)
        if output.output_type == "stream" and output.name == "stdout"
    )


def _widget_state(nb: Any) -> dict[str, Any]:
    return dict(nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {}))


# --- every notebook --------------------------------------------------------------------------


def test_there_are_the_three_notebooks() -> None:
    assert {p.stem for p in NOTEBOOK_PATHS} >= set(IDENTICAL_LINES)


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path: Path) -> None:
    """Valid nbformat 4, kernel python3, and no outputs or execution counts in the repository."""
    nb = _read(path)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    assert "widgets" not in nb.metadata
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a cell has outputs, clear them"
            assert cell.execution_count is None, f"{path.name}: clear the execution counts"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path, executed: Callable[[str], Any]) -> None:
    """Every cell runs without an error or a warning, and every copy arrived identical."""
    nb = executed(path.stem)
    for index, output in _outputs(nb):
        assert output.output_type != "error", f"cell {index}: {output.get('ename')}"
        if output.output_type == "stream":
            assert output.name == "stdout", f"cell {index} wrote to stderr: {output.text}"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.execution_count is not None, f"cell {index} did not run"
    text = _stdout(nb)
    assert "identical: False" not in text
    identical = re.findall(r"^identical: True$", text, re.MULTILINE)
    assert len(identical) == IDENTICAL_LINES.get(path.stem, 1), text


# --- what each notebook shows --------------------------------------------------------------


def test_quickstart_shows_two_progress_bars_that_end_in_success(
    executed: Callable[[str], Any],
) -> None:
    """The sender's and the receiver's panels were displayed, and both ended full and green."""
    nb = executed("quickstart")
    state = _widget_state(nb)
    bars = {m: s for m, s in state.items() if s["model_name"] in PROGRESS_MODELS}
    assert len(bars) >= 2, sorted(s["model_name"] for s in state.values())
    for model_id, bar in bars.items():
        values = bar["state"]
        assert values.get("bar_style") == "success", (model_id, values)
        assert values.get("value") == values.get("max"), (model_id, values)
        assert values.get("max", 0) > 1  # in bytes, not a placeholder

    # Displayed: the sender's panel in one cell, the receiver's in a later one; each was
    # replaced, once its transfer ended, by a summary that needs no kernel (issue 19: a
    # saved notebook must not show "model not found").
    summaries: dict[int, list[str]] = {}
    for index, output in _outputs(nb):
        data = output.get("data", {})
        if "p2p-copy-state-done" in data.get("text/html", ""):
            assert WIDGET_VIEW not in data, data
            summaries.setdefault(index, []).append(data["text/plain"].splitlines()[0])
    assert len(summaries) >= 2, summaries
    roles = sorted(line for lines in summaries.values() for line in lines)
    assert roles[:1] == ["p2p-copy receive: done"] and "p2p-copy send: done" in roles, roles

    text = _stdout(nb)
    assert "sender: done" in text
    assert re.search(r"same digest for every file: True$", text, re.MULTILINE)
    assert len(re.findall(r"^sample/\S+\s+[\d,]+\s+blake3:[0-9a-f]{64}$", text, re.MULTILINE)) >= 5


def test_two_machines_falls_back_to_a_loopback_relay(executed: Callable[[str], Any]) -> None:
    text = _stdout(executed("two-machines"))
    assert "P2P_COPY_RELAY is not set" in text
    assert re.search(r"ws://127\.0\.0\.1:\d+", text)
    assert "machine A's command exited with 0" in text


def test_own_relay_checks_health_and_shows_stats(executed: Callable[[str], Any]) -> None:
    text = _stdout(executed("own-relay"))
    assert re.search(r"/healthz -> 200 ok$", text, re.MULTILINE), text
    forwarded = re.search(r"^bytes forwarded: +([\d,]+)$", text, re.MULTILINE)
    assert forwarded and int(forwarded[1].replace(",", "")) > 2 * 2**20
    assert "no longer answers" in text


def test_kernel_to_kernel_moves_objects_between_two_kernels(
    executed: Callable[[str], Any],
) -> None:
    """Kernel B is another process than kernel A, received a DataFrame and an array, and is gone."""
    text = _stdout(executed("kernel-to-kernel"))
    pids = dict(re.findall(r"^kernel ([AB]) pid: (\d+)$", text, re.MULTILINE))
    assert set(pids) == {"A", "B"} and pids["A"] != pids["B"], text
    assert "kernel B received: DataFrame (50000, 3) ndarray float32 (512, 256)" in text
    assert "kernel B stopped: True" in text
    assert not _alive(int(pids["B"]))


# --- Binder ----------------------------------------------------------------------------------


def test_binder_builds_the_package_for_the_quickstart() -> None:
    """repo2docker config: a Python the package supports, JupyterLab with widgets, and the
    package itself with the objects extra (the kernel-to-kernel notebook needs pandas)."""
    runtime = (BINDER / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-(\d+)\.(\d+)", runtime)
    assert match, runtime
    version = (int(match[1]), int(match[2]))
    assert version >= (3, 11)
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    floor = re.fullmatch(r">=\s*(\d+)\.(\d+)", requires)
    assert floor and version >= (int(floor[1]), int(floor[2]))

    requirements = {
        re.split(r"[<>=!~;\[ ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
        for line in (BINDER / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"jupyterlab", "ipywidgets", "jupyterlab-widgets"} <= requirements

    post_build = BINDER / "postBuild"
    assert post_build.stat().st_mode & stat.S_IXUSR, "binder/postBuild must be executable"
    script = post_build.read_text()
    assert script.startswith("#!")
    install = r"^(python3? -m )?pip install (--no-cache-dir )?(\.|\"\.\[objects\]\")$"
    assert re.search(install, script, re.MULTILINE)


def test_readme_launches_the_quickstart_on_binder() -> None:
    readme = (ROOT / "README.md").read_text()
    title, _, rest = readme.partition("\n")
    assert title.startswith("# ")
    badge = rest.lstrip("\n").splitlines()[0]
    link = re.search(r"\]\((https://mybinder\.org/v2/gh/[^)]+)\)", badge)
    assert link, "the Binder badge goes right under the title"
    target = re.search(r"urlpath=lab/tree/(\S+\.ipynb)$", link[1])
    assert target and (ROOT / target[1]).is_file()
    for path in NOTEBOOK_PATHS:
        assert f"notebooks/{path.name}" in readme


def test_binder_pins_an_ipykernel_that_hears_cancel() -> None:
    """Cancel during an awaited cell needs ipykernel 7: binder must not pick an older one."""
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    assert any(re.fullmatch(r"ipykernel\s*>=\s*7(\b.*)?", line.strip()) for line in lines)


#: Claims that were true of older versions and must not come back.
STALE = [
    "no end-to-end encryption",  # SPAKE2 + AES-GCM since 0.4 (docs/security.md)
    "unsalted",  # the relay sees a domain-separated hash of the room part only
    "no partial file is left behind",  # a cancelled receive keeps .NAME.p2p-copy-part
    "sender's SHA-256",  # BLAKE3 when both sides have it
    "then the SHA-256 before",
]


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_notebooks_say_nothing_stale(path: Path) -> None:
    text = " ".join(" ".join(cell.source.split()) for cell in _read(path).cells)
    for claim in STALE:
        assert claim not in text, f"{path.name}: {claim!r}"


def test_quickstart_says_where_the_browser_is_needed(executed: Callable[[str], Any]) -> None:
    """Run headless, the quickstart's drop() and offer() panels still run their cells (no
    error: each returns a handle) and their text says that a browser is needed, and for what."""
    nb = executed("quickstart")
    texts = [output.get("data", {}).get("text/plain", "") for _, output in _outputs(nb)]
    needs = [t for t in texts if "needs a notebook front end with Jupyter widgets" in t]
    assert any("drop files into this kernel" in t for t in needs), texts
    assert any("save files from this kernel to your computer" in t for t in needs), texts
