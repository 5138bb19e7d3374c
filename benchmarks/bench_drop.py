"""A file dropped into a notebook's kernel next to JupyterLab's own upload (issue 21).

JupyterLab with jupyter-server-proxy runs on 127.0.0.1 (free port, random token, its root
and the file on tmpfs); Debian's Chromium (headless) opens a notebook whose first cell calls
``p2p_copy.drop("dropped")``. With no relay of the user's the kernel starts its own, which
the page reaches through the Jupyter server at ``<base_url>proxy/<port>/`` (what Binder and a
hub do); ``--relay ws://...`` makes both sides use that relay instead. Cases, interleaved
when repeated:

- ``drop``: the file set on the panel's input (by path: no bytes pass through the driver);
  timed from then until the panel shows it checked (the kernel has it, verified);
- ``jupyterlab upload``: the file browser's Upload button and the same file, the "Large file
  size warning" accepted; timed from the click until the whole file is on the server's disk
  and JupyterLab shows no upload in progress.

Chromium is driven over its DevTools protocol directly, as in bench_web.py (Playwright's
Network domain makes Chromium base64-encode every WebSocket frame, which slows the drop 3-4
times and the upload not). The renderer's resident memory is sampled from /proc during
each case (peak minus the value before it). Outputs are compared with the input by SHA-256
outside the timed part. Rates are 10^6 bytes per second.

    python benchmarks/bench_drop.py [--size 2GiB] [--repeat 1] [--relay URL] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench_web import REPO, Browser, Page, free_port, parse_size, sha256, summarize

TIMEOUT = 1200.0
#: The transfer runs in the kernel's loop while the kernel is idle: no cell needs to await it.
CELLS = ['import p2p_copy\ndropping = p2p_copy.drop("dropped")']
NOTEBOOK_READY = ("!!window.jupyterapp && !!document.querySelector('.jp-Notebook .jp-Cell')"
                  " && [...document.querySelectorAll('.jp-StatusBar-TextItem')]"
                  ".some(e => / \\| Idle$/.test(e.textContent.trim()))")
UPLOAD_INPUT = ("[...[...window.jupyterapp.shell.widgets('left')].find(w => w.id === 'filebrowser')"
                ".toolbar.children()].find(w => w._input)?._input")
PANEL_STATE = ("(() => { const p = document.querySelector('.p2p-copy-drop'); if (!p) return '';"
               " const s = p.querySelector('.p2p-copy-drop-status');"
               " return s.dataset.kind === 'bad' ? 'bad: ' + s.textContent : p.dataset.state; })()")


def start_lab(work: Path, relay: str | None) -> tuple[subprocess.Popen[bytes], str, str, Path]:
    root, home = work / "root", work / "home"
    root.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and not k.startswith("P2P_COPY")}
    for name in ("config", "data", "runtime", "ipython", "xdg"):
        (home / name).mkdir(parents=True)
    settings = home / "config" / "lab" / "user-settings" / "@jupyterlab"
    (settings / "apputils-extension").mkdir(parents=True)
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env.update(JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / "ipython"),
               XDG_CONFIG_HOME=str(home / "xdg"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])))
    if relay:
        env["P2P_COPY_RELAY"] = relay
    port, token = free_port(), secrets.token_hex(16)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}",
         "--ServerApp.allow_root=True", "--ServerApp.terminals_enabled=False",
         "--LabApp.news_url=None", "--LabApp.expose_app_in_browser=True",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=(work / "lab.log").open("wb"),
        env=env, cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).read()
            return proc, url, token, root
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("JupyterLab did not start:\n"
                                 + (work / "lab.log").read_text()[-2000:]) from None
            time.sleep(0.25)


def write_notebook(path: Path) -> None:
    cells: list[dict[str, object]] = [
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
         "source": source} for source in CELLS]
    path.write_text(json.dumps({
        "cells": cells, "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}}}))


def renderer_pids(profile: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            # Renderers rewrite their title: one string with spaces, not \0-separated.
            cmd = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        if b"--type=renderer" in cmd and f"--user-data-dir={profile}".encode() in cmd:
            pids.append(int(entry.name))
    return pids


class RssPeak:
    """Samples the renderers' summed RSS every 0.1 s while in a with block."""

    def __init__(self, profile: Path) -> None:
        self.pids = renderer_pids(profile)
        self.before = self.peak = self.read()
        self._stop = threading.Event()

    def read(self) -> int:
        total = 0
        for pid in self.pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total

    def __enter__(self) -> RssPeak:
        def run() -> None:
            while not self._stop.wait(0.1):
                self.peak = max(self.peak, self.read())
        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class Bench:
    def __init__(self, browser: Browser, profile: Path, url: str, token: str, root: Path,
                 source: Path) -> None:
        self.browser, self.profile, self.url, self.token = browser, profile, url, token
        self.root, self.source = root, source
        self.size = source.stat().st_size
        self.digest = sha256(source)
        #: Per case, the renderers' RSS before each run and its peak during it.
        self.memory: dict[str, list[tuple[int, int]]] = {}

    def open(self) -> Page:
        write_notebook(self.root / "drop.ipynb")
        page = self.browser.page(f"{self.url}/lab/tree/drop.ipynb?token={self.token}",
                                 ready=NOTEBOOK_READY)
        return page

    def drop(self) -> float:
        shutil.rmtree(self.root / "dropped", ignore_errors=True)
        page = self.open()
        # The notebook must have the focus for the command to find it.
        page.eval("document.querySelector('.jp-Notebook').focus();"
                  " void window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait(f"{PANEL_STATE} === 'ready'", timeout=40)
        with RssPeak(self.profile) as rss:
            start = time.perf_counter()
            page.set_file(".p2p-copy-drop-files", self.source)
            state = page.wait(f"(s => ['done', 'failed'].includes(s) || s.startsWith('bad')"
                              f" ? s : '')({PANEL_STATE})", timeout=TIMEOUT)
            elapsed = time.perf_counter() - start
        if state != "done":
            raise SystemExit(f"the drop ended with {state}")
        self.memory.setdefault("drop", []).append((rss.before, rss.peak))
        page.close()
        if sha256(self.root / "dropped" / self.source.name) != self.digest:
            raise SystemExit("the dropped file differs from the source")
        shutil.rmtree(self.root / "dropped")
        return elapsed

    def upload(self) -> float:
        target = self.root / self.source.name
        target.unlink(missing_ok=True)
        page = self.open()
        with RssPeak(self.profile) as rss:
            start = time.perf_counter()
            # The Upload button's file input is not in the document: take it from the file
            # browser's toolbar (JupyterLab 4's Uploader) and give it the file by path.
            found = page.cdp("Runtime.evaluate", expression=UPLOAD_INPUT)["result"]
            if "objectId" not in found:
                raise SystemExit("JupyterLab's upload input was not found")
            page.cdp("DOM.setFileInputFiles", files=[str(self.source)],
                     objectId=found["objectId"])
            # Above 15 MiB JupyterLab asks first ("Large file size warning").
            page.wait("(b => b ? (b.click(), true) : false)"
                      "(document.querySelector('.jp-Dialog .jp-mod-accept'))", timeout=30)
            deadline = time.monotonic() + TIMEOUT
            while not (target.exists() and target.stat().st_size == self.size and not page.eval(
                    "!!document.querySelector('.jp-FileBrowser-uploadProgress')")):
                if time.monotonic() > deadline:
                    raise SystemExit("JupyterLab's upload did not finish")
                time.sleep(0.1)
            elapsed = time.perf_counter() - start
        self.memory.setdefault("jupyterlab upload", []).append((rss.before, rss.peak))
        page.close()
        if sha256(target) != self.digest:
            raise SystemExit("the uploaded file differs from the source")
        target.unlink()
        return elapsed


def mib(before_peak: tuple[int, int]) -> str:
    return f"{before_peak[0] / 2**20:.0f} MiB before, peak {before_peak[1] / 2**20:.0f} MiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="2GiB", help="file size (default 2GiB)")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repetitions")
    parser.add_argument("--relay", help="a relay both sides use (default: the kernel's, proxied)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    size = parse_size(args.size)
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    work = Path(tempfile.mkdtemp(prefix="bench-drop-", dir=shm))
    results: dict[str, list[float]] = {}
    lab, url, token, root = start_lab(work, args.relay)
    try:
        source = work / "big.bin"
        with source.open("wb") as f:
            for left in range(size, 0, -(16 << 20)):
                f.write(os.urandom(min(left, 16 << 20)))
        (work / "downloads").mkdir()
        browser = Browser(work / "profile", work / "downloads")
        try:
            bench = Bench(browser, work / "profile", url, token, root, source)
            cases: dict[str, Callable[[], float]] = {
                "drop": bench.drop, "jupyterlab upload": bench.upload}
            for rep in range(args.repeat):
                for name, case in cases.items():
                    seconds = case()
                    results.setdefault(name, []).append(seconds)
                    print(f"[{rep + 1}/{args.repeat}] {name}: {size / seconds / 1e6:.0f} MB/s "
                          f"({seconds:.1f} s), renderers' RSS {mib(bench.memory[name][-1])}",
                          flush=True)
        finally:
            browser.close()
    finally:
        os.killpg(lab.pid, 15)
        try:
            lab.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(lab.pid, 9)
            lab.wait()
        shutil.rmtree(work, ignore_errors=True)
    where = f"relay {args.relay}" if args.relay else "the kernel's relay via jupyter-server-proxy"
    table = summarize(results, size, "jupyterlab upload", f"{where}, median of {args.repeat}",
                      lambda name: {"renderer_rss": bench.memory[name]})
    if args.json:
        args.json.write_text(json.dumps({"size": size, "repeat": args.repeat,
                                         "relay": args.relay, "cases": table}, indent=2))


if __name__ == "__main__":
    main()
