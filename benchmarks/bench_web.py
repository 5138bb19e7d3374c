"""Throughput of the browser peer next to the CLI, through one relay on loopback (issue 20).

One relay (``p2p-copy run-relay-server 127.0.0.1 PORT --no-tls``, which serves the page) and
one file of random bytes on tmpfs (default 1 GiB). Four cases, interleaved when repeated:

- ``cli->cli``: ``p2p-copy send`` to ``p2p-copy receive``, timed from starting the sender
  until both processes have exited (start-up and key exchange included, as in bench.py);
- ``browser->cli``: Debian's Chromium (headless, via Playwright) sends the file chosen in
  the page's file input; timed from starting ``p2p-copy receive`` until it has exited and
  the page shows the transfer checked;
- ``cli->browser (fsa)``: the page receives through the File System Access path, the picker
  replaced by a handle into the origin-private file system (the browser's profile, on
  tmpfs here); timed from the click on Accept until the page shows the files checked and
  the sender has exited;
- ``cli->browser (download)``: the same through the service-worker download (the path
  of browsers without File System Access), the download folder on tmpfs.

Every output is compared with the input (SHA-256) outside the timed part. Rates are 10^6
bytes per second of wall time; ratios are to cli->cli of the same repetition. Needs
Playwright and /usr/bin/chromium, and the page built (p2p_copy/web/static).

    python benchmarks/bench_web.py [--size 1GiB] [--repeat 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
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


class Bench:
    def __init__(self, relay: str, source: Path, work: Path, context: Any) -> None:
        self.relay, self.source, self.work, self.context = relay, source, work, context
        self.url = "http" + relay[2:] + "/"
        self.digest = sha256(source)
        self.size = source.stat().st_size

    def fresh_dest(self) -> Path:
        dest = self.work / "dest"
        shutil.rmtree(dest, ignore_errors=True)
        return dest

    def check(self, path: Path) -> None:
        if sha256(path) != self.digest:
            raise SystemExit(f"{path} differs from the source")

    def wait_done(self, page: Any, selector: str) -> None:
        page.wait_for_selector(f"{selector}[data-kind]", timeout=TIMEOUT * 1000)
        kind = page.locator(selector).get_attribute("data-kind")
        if kind != "done":
            raise SystemExit(f"the page ended with {kind}: {page.locator(selector).inner_text()}")

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
        page = self.context.new_page()
        page.goto(self.url)
        page.set_input_files("#file-input", str(self.source))
        page.click("#send")
        page.wait_for_selector("#share:not([hidden])")
        the_code = page.locator("#code").inner_text()
        start = time.perf_counter()
        receiver = cli("receive", self.relay, the_code, "--out", str(dest))
        finish(receiver, "receive")
        self.wait_done(page, "#send-state")
        elapsed = time.perf_counter() - start
        page.close()
        self.check(dest / self.source.name)
        return elapsed

    def cli_to_browser(self, how: str) -> float:
        the_code = code()
        sender = cli("send", self.relay, the_code, str(self.source))
        page = self.context.new_page()
        page.add_init_script(OPFS_PICKERS if how == "fsa" else NO_FSA)
        page.goto(f"{self.url}#{the_code}")
        page.wait_for_selector("#offer:not([hidden])", timeout=60_000)
        start = time.perf_counter()
        if how == "fsa":
            page.click("#accept")
            self.wait_done(page, "#recv-state")
            finish(sender, "send")
            elapsed = time.perf_counter() - start
            size = page.evaluate(OPFS_SIZE_AND_CLEAR, self.source.name)
            if size != self.size:
                raise SystemExit(f"the page saved {size} bytes of {self.size}")
        else:
            with page.expect_download() as info:
                page.click("#accept")
            self.wait_done(page, "#recv-state")
            finish(sender, "send")
            download = info.value
            saved = Path(download.path())
            elapsed = time.perf_counter() - start
            self.check(saved)
            download.delete()
        page.close()
        return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GiB", help="file size (default 1GiB)")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repetitions")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if not (REPO / "p2p_copy" / "web" / "static" / "index.html").exists():
        raise SystemExit("the page is not built: npm run build in p2p_copy/web")
    from playwright.sync_api import sync_playwright

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
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                user_data_dir=str(work / "profile"), executable_path=CHROMIUM, headless=True,
                args=CHROMIUM_ARGS, accept_downloads=True, downloads_path=str(work / "downloads"))
            bench = Bench(relay, source, work, context)
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
            context.close()
    finally:
        relay_proc.kill()
        relay_proc.communicate()
        shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(results["cli->cli"])
    print(f"\n{size / 2**20:.0f} MiB on loopback, median of {args.repeat}:")
    table = {}
    for name, times in results.items():
        seconds = statistics.median(times)
        table[name] = {"seconds": seconds, "mb_per_s": size / seconds / 1e6,
                       "ratio_to_cli": base / seconds}
        print(f"  {name:26s} {size / seconds / 1e6:7.0f} MB/s   x{base / seconds:.2f} of cli->cli")
    if args.json:
        args.json.write_text(json.dumps({"size": size, "repeat": args.repeat, "cases": table},
                                        indent=2))


if __name__ == "__main__":
    main()
