"""What a notebook keeps and shows of a transfer, read from a real kernel's messages.

A notebook built here runs in a fresh ``python3`` kernel (nbclient, the Frontend of
test_notebooks.py) against a relay in its own process on loopback, so that a blocking
call, which holds the kernel's loop, has a relay to reach. The tests then read what a front
end without the widget manager would show (text/plain, text/html), the saved notebook and
its nbconvert HTML, and the one-line errors. Another test interrupts a blocking call in a
kernel driven by jupyter_client, and one shows why a blocking call's panel has no Cancel.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from .conftest import free_port, wait_for_port
from .test_notebooks import WIDGET_VIEW, Frontend

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 120

pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT + 60)]

CELLS = [
    # 0
    "import asyncio, os, pathlib, p2p_copy\n"
    "url = os.environ['P2P_COPY_TEST_RELAY']\n"
    "pathlib.Path('f.txt').write_text('hello')",
    # 1: an object sent from the background: its panel names receive_object
    "t = p2p_copy.start_send_object(url, None, {'answer': 42})\nt",
    # 2
    "while t.code is None and not t.done():\n    await asyncio.sleep(0.05)\n"
    "print('object code:', t.code)",
    # 3: received in this kernel; both panels end, replaced by their summaries
    "obj = await p2p_copy.receive_object(url, t.code)\nawait t\nprint('received:', obj)",
    # 4: a blocking send nobody joins: its code shows as text while it waits
    "try:\n    p2p_copy.send_blocking(url, None, 'f.txt', wait_timeout=2)\n"
    "except p2p_copy.TransferTimeoutError as exc:\n    print('blocking:', type(exc).__name__)",
    # 5: a sender still waiting when the notebook is saved
    "w = p2p_copy.start_send(url, None, 'f.txt')\nw",
    # 6
    "while w.code is None and not w.done():\n    await asyncio.sleep(0.05)\n"
    "print('waiting code:', w.code)",
    # 7: an expected failure: one line, and a panel
    "await p2p_copy.receive('ws://127.0.0.1:9', 'a-b-c', 'out')",
]
FAILING_CELL = 7


class Recorder(Frontend):
    """The Frontend that also keeps every display message, whichever cell it belongs to."""

    displays: list[tuple[int, str, dict[str, Any]]]

    def seen(self, msg: dict[str, Any], cell_index: int) -> None:
        if msg["msg_type"] in ("display_data", "update_display_data"):
            self.displays.append((cell_index, msg["msg_type"], msg["content"]["data"]))


@pytest.fixture(scope="module")
def outside_relay() -> Iterator[str]:
    """A relay in its own process: a blocking call in the kernel must not block it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2p_copy", "run-relay-server", "--no-tls", "127.0.0.1",
         str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        wait_for_port(port, proc, timeout=30)
        yield f"ws://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def run(outside_relay: str, tmp_path_factory: pytest.TempPathFactory) -> Recorder:
    workdir = tmp_path_factory.mktemp("nb-outputs")
    nb = nbformat.v4.new_notebook()  # type: ignore[no-untyped-call]
    nb.cells = [nbformat.v4.new_code_cell(c) for c in CELLS]  # type: ignore[no-untyped-call]
    nb.cells[FAILING_CELL].metadata["tags"] = ["raises-exception"]
    nb.metadata.kernelspec = {"name": "python3", "display_name": "Python 3",
                              "language": "python"}
    client = Recorder(nb, timeout=60, startup_timeout=60, kernel_name="python3",
                      resources={"metadata": {"path": str(workdir)}}, store_widget_state=True)
    client.displays = []
    with pytest.MonkeyPatch.context() as env:
        env.setenv("P2P_COPY_TEST_RELAY", outside_relay)
        env.delenv("P2P_COPY_PROGRESS", raising=False)
        asyncio.run(asyncio.wait_for(client.async_execute(), RUN_TIMEOUT))
    nbformat.write(nb, workdir / "saved.ipynb")  # type: ignore[no-untyped-call]
    return client


def _stdout(nb: Any, index: int) -> str:
    return "".join(o.get("text", "") for o in nb.cells[index].outputs
                   if o.output_type == "stream")


def _code(nb: Any, index: int, label: str) -> str:
    found = re.search(rf"^{label} code: (\S+)$", _stdout(nb, index), re.MULTILINE)
    assert found, _stdout(nb, index)
    return found[1]


def _displayed(nb: Any, index: int) -> list[dict[str, Any]]:
    return [o.data for o in nb.cells[index].outputs if o.output_type == "display_data"]


def test_the_code_is_text_without_the_widget_front_end(run: Recorder, outside_relay: str) -> None:
    """The saved output of a waiting sender carries the code and the receive lines as
    text/plain and text/html, beside the widget view, for front ends without widgets."""
    code = _code(run.nb, 6, "waiting")
    [data] = _displayed(run.nb, 5)
    assert WIDGET_VIEW in data  # JupyterLab still shows the live panel
    text = data["text/plain"]
    assert not text.startswith("VBox(")
    assert f"Code: {code}" in text
    assert f'await p2p_copy.receive("{outside_relay}", "{code}")' in text
    assert f"p2p-copy receive {outside_relay} {code}" in text
    assert code in data["text/html"] and "<script" not in data["text/html"]


def test_a_blocking_call_shows_its_code_as_text_while_it_waits(run: Recorder) -> None:
    """send_blocking's panel (updated from its worker thread) shows the code as text, and
    how to cancel instead of a Cancel button nobody would hear."""
    texts = [data.get("text/plain", "") for cell, _, data in run.displays if cell == 4]
    assert any(re.search(r"^Code: \d+-\S+$", t, re.MULTILINE) for t in texts), texts
    assert any("interrupt the kernel" in t for t in texts), texts
    assert "blocking: TransferTimeoutError" in _stdout(run.nb, 4)


def test_send_object_panel_names_receive_object(run: Recorder, outside_relay: str) -> None:
    """The panel of start_send_object tells the other kernel to call receive_object."""
    code = _code(run.nb, 2, "object")
    snippet = f'await p2p_copy.receive_object("{outside_relay}", "{code}")'
    texts = [data.get("text/plain", "") for _, _, data in run.displays]
    assert any(snippet in t for t in texts), texts
    assert not any(f'p2p_copy.receive("{outside_relay}", "{code}")' in t for t in texts)
    assert "received: {'answer': 42}" in _stdout(run.nb, 3)


def test_ended_panels_are_static_summaries_in_the_saved_notebook(run: Recorder) -> None:
    """When a transfer ends its panel is replaced (display id) by HTML and text that need
    no kernel; nbconvert's HTML shows them, never "connecting" or a VBox repr."""
    from nbconvert import HTMLExporter

    for index, role in ((1, "send"), (3, "receive")):
        [data] = _displayed(run.nb, index)
        assert WIDGET_VIEW not in data, data
        assert data["text/plain"].startswith(f"p2p-copy {role}: done"), data
        assert "1 file, 13 B in " in data["text/plain"]
        assert "p2p-copy-state-done" in data["text/html"]
    saved = nbformat.read(Path(run.resources["metadata"]["path"]) / "saved.ipynb",  # type: ignore[no-untyped-call]
                          as_version=4)
    body, _ = HTMLExporter().from_notebook_node(saved)
    assert body.count("p2p-copy-state-done") >= 2
    assert "p2p-copy send: done" in body and "p2p-copy receive: done" in body
    assert "VBox(" not in body and "send: connecting" not in body


def test_an_expected_error_is_one_line_under_its_panel(run: Recorder) -> None:
    """A relay that cannot be reached: the cell's error is one line (_render_traceback_),
    and a failed panel is shown although the transfer never got as far as waiting."""
    [error] = [o for o in run.nb.cells[FAILING_CELL].outputs if o.output_type == "error"]
    assert error.ename == "RelayUnreachableError"
    assert len(error.traceback) == 1, error.traceback
    assert error.traceback[0].startswith("RelayUnreachableError: Cannot reach the relay")
    [data] = _displayed(run.nb, FAILING_CELL)
    assert data["text/plain"].startswith("p2p-copy receive: failed: Cannot reach the relay")
    assert "p2p-copy-state-failed" in data["text/html"]
    assert "0 B of 0 B" not in data["text/plain"] + data["text/html"]


# --- a blocking call in a kernel: Cancel is the kernel's interrupt -------------------------


@pytest.fixture
def kernel() -> Iterator[Any]:
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=60)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _until_idle(kc: Any, msg_id: str, seen: Callable[[dict[str, Any]], None],
                timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(deadline - time.monotonic(), 0.1))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        seen(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return


def test_interrupting_the_kernel_cancels_a_blocking_call(
    kernel: Any, outside_relay: str
) -> None:
    """The kernel's interrupt (what the panel tells to use) cancels send_blocking: the cell
    ends with KeyboardInterrupt at once and the panel ends "cancelled"."""
    km, kc = kernel
    msgs: list[dict[str, Any]] = []
    # The file in a folder of its own: the kernel runs in the checkout.
    code = (f"import p2p_copy, pathlib, tempfile\n"
            f"f = pathlib.Path(tempfile.mkdtemp()) / 'f.txt'\nf.write_text('x')\n"
            f"p2p_copy.send_blocking({outside_relay!r}, None, f, progress='widget')")
    msg_id = kc.execute(code)
    deadline = time.monotonic() + 60
    while not any("Code: " in m["content"].get("data", {}).get("text/plain", "")
                  for m in msgs):
        assert time.monotonic() < deadline, "no code was shown"
        msg = kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") == msg_id:
            msgs.append(msg)
    km.interrupt_kernel()
    _until_idle(kc, msg_id, msgs.append)
    [error] = [m["content"] for m in msgs if m["msg_type"] == "error"]
    assert error["ename"] == "KeyboardInterrupt"
    last = [m["content"]["data"]["text/plain"] for m in msgs
            if m["msg_type"] in ("display_data", "update_display_data")][-1]
    assert last.startswith("p2p-copy send: cancelled"), last


def test_a_widget_click_waits_for_a_blocking_cell(kernel: Any) -> None:
    """Why a blocking call's panel shows no Cancel: ipykernel handles a click's comm
    message on the loop the blocking cell holds, so it runs only once the cell ended."""
    _km, kc = kernel
    out: list[str] = []

    def keep(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    setup = ("import ipywidgets, time\nclicks = []\nb = ipywidgets.Button()\n"
             "b.on_click(lambda _: clicks.append(time.monotonic()))\nprint(b.comm.comm_id)")
    _until_idle(kc, kc.execute(setup), keep)
    comm_id = out[0].strip()
    busy = kc.execute("start = time.monotonic(); time.sleep(3); end = time.monotonic()")
    time.sleep(1)  # the cell is blocked in sleep
    kc.shell_channel.send(kc.session.msg("comm_msg", {
        "comm_id": comm_id, "data": {"method": "custom", "content": {"event": "click"}}}))
    _until_idle(kc, busy, lambda _: None)
    out.clear()
    _until_idle(kc, kc.execute("print(len(clicks), clicks[0] >= end)"), keep)
    assert "".join(out).split() == ["1", "True"]
