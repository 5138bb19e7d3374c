"""Throughput of the browser peer next to the CLI, through one relay on loopback (issue 20).

One relay (``p2p-copy run-relay-server 127.0.0.1 PORT --no-tls``, which serves the page) and
one file of random bytes on tmpfs (default 1 GiB). Four cases, interleaved when repeated:

- ``cli->cli``: ``p2p-copy send`` to ``p2p-copy receive``, timed from starting the sender
  until both processes have exited (start-up and key exchange included, as in bench.py);
- ``browser->cli``: Debian's Chromium (headless) sends the file chosen in
  the page's file input; timed from starting ``p2p-copy receive`` until it has exited and
  the page shows the transfer checked;
- ``cli->browser (fsa)``: the page receives through the File System Access path, the picker
  replaced by a handle into the origin-private file system (the browser's profile, on
  tmpfs here); timed from the click on Accept until the page shows the files checked and
  the sender has exited;
- ``cli->browser (download)``: the same through the service-worker download (the path
  of browsers without File System Access), the download folder on tmpfs.

Chromium is driven through its DevTools protocol directly (``--remote-debugging-port``), not
through Playwright: Playwright enables the Network domain, under which Chromium base64-encodes
every WebSocket frame for the debugger. That costs more CPU than the transfer itself (256 MiB
sent: renderer 3.8, browser process 3.0, Playwright's driver ~2 CPU-s) and made the page look
3-4 times slower than it is. Only Page, Runtime, DOM and Browser commands are used here.

Every output is compared with the input (SHA-256; the fsa case by size) outside the timed
part. Rates are 10^6 bytes per second of wall time; ratios are to cli->cli of the same
repetition. Needs /usr/bin/chromium and the page built (p2p_copy/web/static).

    python benchmarks/bench_web.py [--size 1GiB] [--repeat 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OPFS_PICKERS = """
window.showDirectoryPicker = async () =>
  (await navigator.storage.getDirectory()).getDirectoryHandle("picked", {create: true});
window.showSaveFilePicker = async (o) =>
  (await (await navigator.storage.getDirectory()).getDirectoryHandle("picked", {create: true}))
    .getFileHandle(o.suggestedName, {create: true});
"""
NO_FSA = "window.showSaveFilePicker = undefined; window.showDirectoryPicker = undefined;"
OPFS_SIZE_AND_CLEAR = """
async (name) => {
  const root = await navigator.storage.getDirectory();
  const dir = await root.getDirectoryHandle("picked", {create: true});
  const file = await (await dir.getFileHandle(name)).getFile();
  await root.removeEntry("picked", {recursive: true});
  return file.size;
}
"""
TIMEOUT = 900.0
#: The page of the relay has loaded.
PAGE_READY = "document.readyState === 'complete' && !!document.querySelector('main')"


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1] if text and text[-1] in "KMG" else ""
    return int(float(text.removesuffix(unit)) * units[unit])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def cli(*args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.pop("P2P_COPY_PROGRESS", None)
    return subprocess.Popen([sys.executable, "-m", "p2p_copy", *args], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes], what: str) -> None:
    _out, err = proc.communicate(timeout=TIMEOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({proc.returncode}): {err.decode(errors='replace')}")


def code() -> str:
    from p2p_copy.protocol.codes import generate_code

    return generate_code()


class Cdp:
    """One DevTools connection: commands in order; events kept in ``events`` (Page's only)."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(url, max_size=None, open_timeout=20, legacy=True)  # not a with block
        self.id = 0
        self.events: list[dict[str, Any]] = []

    def __call__(self, method: str, **params: Any) -> Any:
        self.id += 1
        self.ws.send(json.dumps({"id": self.id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=120))
            if msg.get("id") == self.id:
                if "error" in msg:
                    raise SystemExit(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events = [*self.events[-99:], msg]

    def event(self, method: str, timeout: float) -> Any:
        """The params of the first event ``method`` (seen already or arriving in ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.events:
                if msg["method"] == method:
                    self.events.remove(msg)
                    return msg.get("params", {})
            msg = json.loads(self.ws.recv(timeout=max(0.0, deadline - time.monotonic())))
            if "method" in msg:
                self.events.append(msg)

    def close(self) -> None:
        self.ws.close()


class Browser:
    """Headless Chromium with the DevTools protocol on a free loopback port."""

    def __init__(self, profile: Path, downloads: Path) -> None:
        self.profile = profile
        self.proc = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_ARGS, "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if match := re.search(r"DevTools listening on (ws://\S+)", line):
                break
        else:
            raise SystemExit("chromium did not start")
        # Keep reading its log: a full pipe would stall Chromium.
        log = self.proc.stderr
        threading.Thread(target=lambda: (log.read(), log.close()), daemon=True).start()
        self.base = match.group(1).split("/devtools/")[0]
        self.cdp = Cdp(match.group(1))
        self.cdp("Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))

    def page(self, url: str, init: str | None = None, ready: str = PAGE_READY) -> Page:
        target = self.cdp("Target.createTarget", url="about:blank")["targetId"]
        return Page(self, target, url, init, ready)

    def close(self) -> None:
        try:
            self.cdp("Browser.close")
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait()


class Page:
    def __init__(self, browser: Browser, target: str, url: str, init: str | None,
                 ready: str) -> None:
        self.browser, self.target = browser, target
        self.cdp = Cdp(f"{browser.base}/devtools/page/{target}")
        self.cdp("Page.enable")  # addScriptToEvaluateOnNewDocument needs it
        if init:
            self.cdp("Page.addScriptToEvaluateOnNewDocument", source=init)
        self.cdp("Page.navigate", url=url)
        self.wait(ready)

    def eval(self, expression: str) -> Any:
        answer = self.cdp("Runtime.evaluate", expression=expression, awaitPromise=True,
                          returnByValue=True, userGesture=True)
        if "exceptionDetails" in answer:
            raise SystemExit(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def wait(self, expression: str, timeout: float = TIMEOUT,
             tick: Callable[[], None] | None = None) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := self.eval(expression)):
            if tick:
                tick()
            if time.monotonic() > deadline:
                shot = Path(tempfile.gettempdir()) / "bench-timeout.png"
                shot.write_bytes(base64.b64decode(self.cdp("Page.captureScreenshot")["data"]))
                raise SystemExit(f"timed out waiting for {expression} (the page: {shot})")
            time.sleep(0.1)
        return value

    def click(self, selector: str) -> None:
        self.eval(f"document.querySelector({json.dumps(selector)}).click()")

    def set_file(self, selector: str, path: Path) -> None:
        root = self.cdp("DOM.getDocument")["root"]["nodeId"]
        node = self.cdp("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.cdp("DOM.setFileInputFiles", files=[str(path)], nodeId=node)

    def close(self) -> None:
        self.cdp.close()
        self.browser.cdp("Target.closeTarget", targetId=self.target)


class Bench:
    def __init__(self, relay: str, source: Path, work: Path, browser: Browser | None,
                 tick: Callable[[], None] | None = None) -> None:
        self.relay, self.source, self.work, self.browser = relay, source, work, browser
        self.url = "http" + relay[2:] + "/"
        self.digest = sha256(source)
        self.size = source.stat().st_size
        #: Called about every 0.1 s while a browser case runs (the memory sampler).
        self.tick = tick
        self.page: Page | None = None

    def fresh_dest(self) -> Path:
        dest = self.work / "dest"
        shutil.rmtree(dest, ignore_errors=True)
        return dest

    def check(self, path: Path) -> None:
        if sha256(path) != self.digest:
            raise SystemExit(f"{path} differs from the source")

    def open(self, url: str, init: str | None = None) -> Page:
        assert self.browser is not None
        self.page = self.browser.page(url, init)
        return self.page

    def wait_done(self, page: Page, selector: str) -> None:
        kind = page.wait(f"document.querySelector('{selector}')?.dataset.kind", tick=self.tick)
        if kind != "done":
            raise SystemExit(f"the page ended with {kind}: "
                             + page.eval(f"document.querySelector('{selector}').innerText"))

    def cli_to_cli(self) -> float:
        dest, the_code = self.fresh_dest(), code()
        receiver = cli("receive", self.relay, the_code, "--out", str(dest))
        time.sleep(0.5)  # the receiver waits in its room first, as in bench.py's runs
        start = time.perf_counter()
        sender = cli("send", self.relay, the_code, str(self.source))
        finish(sender, "send")
        finish(receiver, "receive")
        elapsed = time.perf_counter() - start
        self.check(dest / self.source.name)
        return elapsed

    def browser_to_cli(self) -> float:
        dest = self.fresh_dest()
        page = self.open(self.url)
        page.set_file("#file-input", self.source)
        page.click("#send")
        the_code = page.wait("!document.querySelector('#share').hidden"
                             " && document.querySelector('#code').innerText", timeout=60)
        start = time.perf_counter()
        receiver = cli("receive", self.relay, the_code, "--out", str(dest))
        while receiver.poll() is None:
            if self.tick:
                self.tick()
            time.sleep(0.1)
        finish(receiver, "receive")
        self.wait_done(page, "#send-state")
        elapsed = time.perf_counter() - start
        page.close()
        self.check(dest / self.source.name)
        shutil.rmtree(dest)
        return elapsed

    def cli_to_browser(self, how: str) -> float:
        the_code = code()
        sender = cli("send", self.relay, the_code, str(self.source))
        page = self.open(f"{self.url}#{the_code}", OPFS_PICKERS if how == "fsa" else NO_FSA)
        page.wait("!document.querySelector('#offer').hidden", timeout=60)
        start = time.perf_counter()
        page.click("#accept")
        self.wait_done(page, "#recv-state")
        finish(sender, "send")
        elapsed = time.perf_counter() - start
        if how == "fsa":
            size = page.eval(f"({OPFS_SIZE_AND_CLEAR})({json.dumps(self.source.name)})")
            if size != self.size:
                raise SystemExit(f"the page saved {size} bytes of {self.size}")
        else:
            saved = self.work / "downloads" / self.source.name
            deadline = time.monotonic() + 60
            while not (saved.exists() and saved.stat().st_size == self.size):
                if time.monotonic() > deadline:
                    raise SystemExit(f"no complete download of {saved.name}")
                time.sleep(0.1)
            self.check(saved)
            saved.unlink()
        page.close()
        return elapsed


def summarize(results: dict[str, list[float]], size: int, base: str, title: str,
              extra: Callable[[str], dict[str, Any]] = lambda name: {}) -> dict[str, Any]:
    """Print each case's median rate and its ratio to case ``base``'s; the table for --json."""
    reference = statistics.median(results[base])
    print(f"\n{size / 2**20:.0f} MiB {title}, load average {os.getloadavg()[0]:.1f}:")
    table = {}
    for name, times in results.items():
        seconds = statistics.median(times)
        table[name] = {"seconds": seconds, "mb_per_s": size / seconds / 1e6,
                       "ratio": reference / seconds, **extra(name)}
        print(f"  {name:26s} {size / seconds / 1e6:7.0f} MB/s   x{reference / seconds:.2f}"
              f" of {base}")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GiB", help="file size (default 1GiB)")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repetitions")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if not (REPO / "p2p_copy" / "web" / "static" / "index.html").exists():
        raise SystemExit("the page is not built: npm run build in p2p_copy/web")
    size = parse_size(args.size)
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    work = Path(tempfile.mkdtemp(prefix="bench-web-", dir=shm))
    port = free_port()
    relay_proc = cli("run-relay-server", "127.0.0.1", str(port), "--no-tls",
                     "--log-level", "WARNING")
    relay = f"ws://127.0.0.1:{port}"
    results: dict[str, list[float]] = {}
    try:
        deadline = time.monotonic() + 20
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.monotonic() > deadline or relay_proc.poll() is not None:
                raise SystemExit("the relay did not start")
            time.sleep(0.05)
        source = work / "random.bin"
        with source.open("wb") as f:
            left = size
            while left:
                f.write(os.urandom(min(left, 16 << 20)))
                left -= min(left, 16 << 20)
        (work / "downloads").mkdir()
        browser = Browser(work / "profile", work / "downloads")
        try:
            bench = Bench(relay, source, work, browser)
            cases: dict[str, Callable[[], float]] = {
                "cli->cli": bench.cli_to_cli,
                "browser->cli": bench.browser_to_cli,
                "cli->browser (fsa)": lambda: bench.cli_to_browser("fsa"),
                "cli->browser (download)": lambda: bench.cli_to_browser("download"),
            }
            for rep in range(args.repeat):
                for name, case in cases.items():
                    seconds = case()
                    results.setdefault(name, []).append(seconds)
                    print(f"[{rep + 1}/{args.repeat}] {name}: {size / seconds / 1e6:.0f} MB/s "
                          f"({seconds:.2f} s)", flush=True)
        finally:
            browser.close()
    finally:
        relay_proc.kill()
        relay_proc.communicate()
        shutil.rmtree(work, ignore_errors=True)
    table = summarize(results, size, "cli->cli", f"on loopback, median of {args.repeat}")
    if args.json:
        args.json.write_text(json.dumps({"size": size, "repeat": args.repeat, "cases": table},
                                        indent=2))


if __name__ == "__main__":
    main()
