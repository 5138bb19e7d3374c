"""Windows and macOS, as far as Linux can show them (issue 23, docs/platforms.md): signals
without asyncio's handlers, paths with the system's separator.

Windows' default event loop has no ``add_signal_handler`` and Windows has Ctrl-Break
(SIGBREAK), which Linux has not. The CLI and the relay run here in a process where asyncio's
signal handlers raise NotImplementedError, as on Windows, and SIGUSR1 stands for SIGBREAK:
what they do must not change.
"""

from __future__ import annotations

import asyncio
import ntpath
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from p2p_copy import signals
from p2p_copy.cli import report
from p2p_copy.cli.config import Relay
from p2p_copy.display.progress import NoProgress
from p2p_copy.errors import TransferCancelledError
from p2p_copy.results import FileResult, TransferResult

from .conftest import Processes, cli_env, free_port, wait_for_port
from .test_offer import Terminal

TIMEOUT = 60

#: What stands for Ctrl-Break in the processes below.
CTRL_BREAK = signal.SIGUSR1

#: ``python -c WINDOWS_LIKE ARGS`` runs the CLI as ``p2p-copy ARGS`` would, but with
#: asyncio's signal handlers missing, as on Windows' Proactor loop, and a SIGBREAK.
WINDOWS_LIKE = f"""
import asyncio, signal
loop = asyncio.unix_events._UnixSelectorEventLoop
loop.add_signal_handler = asyncio.AbstractEventLoop.add_signal_handler
loop.remove_signal_handler = asyncio.AbstractEventLoop.remove_signal_handler
signal.SIGBREAK = signal.Signals({int(CTRL_BREAK)})
from p2p_copy.cli import console_main
console_main()
"""


def _argv(windows_like: bool, *args: str) -> list[str]:
    if windows_like:
        return [sys.executable, "-c", WINDOWS_LIKE, *args]
    return [sys.executable, "-m", "p2p_copy", *args]


class _Terminal(Terminal):
    """Terminal (tests/test_offer.py) of 80 x 24, running the CLI Windows-like if asked,
    with stdout on the terminal too if ``stdout``."""

    def __init__(self, processes: Processes, windows_like: bool, *args: str,
                 cwd: Path, env: dict[str, str] | None = None, stdout: bool = False) -> None:
        import fcntl
        import pty
        import struct
        import termios

        self.master, slave = pty.openpty()
        try:
            # A terminal of no size gets no progress bar from tqdm.
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            self.proc = subprocess.Popen(
                _argv(windows_like, *args), stdin=slave, stderr=slave,
                stdout=slave if stdout else subprocess.PIPE, cwd=cwd, env=env)
        finally:
            os.close(slave)
        processes.procs.append(self.proc)  # type: ignore[arg-type]
        self.seen = b""


@pytest.mark.slow
@pytest.mark.parametrize(("windows_like", "sig"), [
    (False, signal.SIGINT),
    (True, signal.SIGINT),
    (True, CTRL_BREAK),
    (True, signal.SIGTERM),
], ids=["ctrl-c", "ctrl-c-windows-like", "ctrl-break-windows-like", "sigterm-windows-like"])
def test_an_interrupt_cancels_a_receive_as_on_linux(
    processes: Processes, tmp_path: Path, windows_like: bool, sig: signal.Signals
) -> None:
    """Ctrl-C and Ctrl-Break on a receiver waiting for its sender say "cancelling…" at once,
    then "cancelled.", exit 130 and write nothing, with or without asyncio's signal
    handlers (SIGTERM the same without the "cancelling…")."""
    _, url = processes.start_relay()
    out = tmp_path / "out"
    term = _Terminal(processes, windows_like, "receive", url, "7-signal-test-code",
                     "--out", str(out), cwd=tmp_path)
    term.read_until("waiting for the other side")
    term.proc.send_signal(sig)
    status, shown = term.finish()
    assert status == TransferCancelledError.exit_code, shown
    after = shown.split("waiting for the other side", 1)[1]
    interrupt = sig != signal.SIGTERM
    assert ("p2p-copy: cancelling…" in after) == interrupt, shown
    assert after.strip().splitlines()[-1] == "p2p-copy: cancelled.", shown
    assert "Traceback" not in shown
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGTERM, CTRL_BREAK], ids=["sigterm", "ctrl-break"])
def test_the_relay_drains_on_sigterm_and_ctrl_break_without_asyncio_signal_handlers(
    processes: Processes, tmp_path: Path, sig: signal.Signals
) -> None:
    """A relay whose loop has no signal handlers (Windows) drains on SIGTERM and on
    Ctrl-Break, and exits 0."""
    port = free_port()
    relay = subprocess.Popen(
        _argv(True, "run-relay-server", "127.0.0.1", str(port), "--no-tls"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    processes.procs.append(relay)
    wait_for_port(port, relay)
    relay.send_signal(sig)
    _, err = relay.communicate(timeout=TIMEOUT)
    assert relay.returncode == 0, err
    assert "drain_start" in err and "drain_end" in err, err


def _without_asyncio_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    loop_class = asyncio.unix_events._UnixSelectorEventLoop  # type: ignore[attr-defined]
    for name in ("add_signal_handler", "remove_signal_handler"):
        monkeypatch.setattr(loop_class, name, getattr(asyncio.AbstractEventLoop, name))


@pytest.mark.parametrize("windows_like", [False, True], ids=["asyncio", "signal.signal"])
def test_on_signals_runs_the_handler_on_the_loop_and_then_restores(
    monkeypatch: pytest.MonkeyPatch, windows_like: bool
) -> None:
    """A caught signal runs its handler in the loop's thread; after the block the signal is
    handled as before it."""
    if windows_like:
        _without_asyncio_handlers(monkeypatch)
    before = signal.getsignal(CTRL_BREAK)
    seen: list[int] = []

    async def main() -> None:
        got = asyncio.Event()

        def handler() -> None:
            seen.append(threading.get_ident())
            got.set()

        with signals.on_signals({CTRL_BREAK: handler}):
            assert signal.getsignal(CTRL_BREAK) != before
            os.kill(os.getpid(), CTRL_BREAK)
            await asyncio.wait_for(got.wait(), TIMEOUT)

    asyncio.run(main())
    assert seen == [threading.get_ident()]
    assert signal.getsignal(CTRL_BREAK) == before


def test_on_signals_outside_the_main_thread_changes_nothing() -> None:
    """A loop in another thread (a relay in a notebook's thread) cannot catch signals:
    on_signals leaves them as they are instead of failing."""
    before = signal.getsignal(signal.SIGTERM)
    failed: list[BaseException] = []

    async def main() -> None:
        with signals.on_signals({signal.SIGTERM: lambda: None}):
            assert signal.getsignal(signal.SIGTERM) == before

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported below
            failed.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(TIMEOUT)
    assert not failed, failed


def test_interrupts_and_drain_name_ctrl_break_where_it_exists() -> None:
    """SIGBREAK, where the system has it, cancels like Ctrl-C and drains like SIGTERM."""
    assert signal.SIGINT in signals.INTERRUPTS and signal.SIGTERM in signals.DRAIN
    code = ("import signal; signal.SIGBREAK = 21\n"
            "from p2p_copy import signals\n"
            "print(signals.INTERRUPTS[-1], signals.DRAIN[-1])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT, check=True)
    assert done.stdout.split() == ["21", "21"]


# --- paths as the receiving system writes them ---------------------------------------


@pytest.fixture
def on_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """cli/report.py writes paths as Windows does (ntpath's separators and quoting)."""
    monkeypatch.setattr(report, "_PATHS", ntpath)


def test_shown_path_uses_this_systems_separator(on_windows: None) -> None:
    """A name from the transfer ('/'-separated) and a local path are shown with
    backslashes on Windows, quoted without repr()'s doubled backslashes, still escaped."""
    assert report.shown_path("src/sub/a.txt") == r"src\sub\a.txt"
    assert report.shown_path(r"C:\Users\me/out", quoted=True) == r"'C:\Users\me\out'"
    assert report.shown_path("a/\x1b[2Jb") == r"a\\x1b[2Jb"


def test_shown_path_keeps_posix_paths() -> None:
    """On a POSIX system a path is shown as it is (a backslash is part of a name there)."""
    assert report.shown_path("src/a\\b.txt") == "src/a\\b.txt"
    assert report.shown_path(Path("/tmp/x"), quoted=True) == "'/tmp/x'"


def test_summary_names_the_folder_with_windows_separators(on_windows: None) -> None:
    """The last line of a receive on Windows: the destination and the folders that arrived
    as Windows writes them."""
    result = TransferResult("receiver", (FileResult("src/a.txt", 3, "0" * 64),
                                         FileResult("b.txt", 1, "0" * 64)), 4, 1.0)
    line = report.summary(result, report.Tally(NoProgress()), r"C:\Users\me\out")
    assert line.startswith(r"Received 2 file(s), 4 B, into C:\Users\me\out: src\, b.txt."), line


def test_the_command_lines_shown_follow_the_system(on_windows: None, tmp_path: Path) -> None:
    """On Windows, the line to run elsewhere quotes a CA path for cmd and PowerShell alike,
    and a stopped receive's discard command is PowerShell's (there is no find -delete)."""
    relay = Relay("wss://relay.example:443", "argument", r"C:\Program Files\ca.pem", None)
    lines, _ = report.receive_lines(relay, "7-amber-crossover-wayside")
    assert r'--cafile "C:\Program Files\ca.pem" ' in lines[-1], lines
    out = tmp_path / "it's here"
    out.mkdir()
    (out / ".big.bin.p2p-copy-part").write_bytes(b"x" * 10)
    note = report.kept_partial(str(out))
    assert note is not None and "Get-ChildItem -LiteralPath '" in note, note
    assert "it''s here' -Recurse" in note and "find " not in note, note


def test_the_discard_command_on_posix_deletes_only_what_a_receive_kept(
        tmp_path: Path) -> None:
    """The find(1) command kept_partial gives, run as it is, deletes the part file and the
    sidecar and nothing else."""
    out = tmp_path / "a folder"
    (out / "sub").mkdir(parents=True)
    for name in (".f.p2p-copy-part", "sub/.g.p2p-copy-part", "sub/.g.p2p-copy-resume",
                 "keep.txt", ".keep"):
        (out / name).write_bytes(b"x")
    note = report.kept_partial(str(out))
    assert note is not None
    command = note.split("discard it with: ", 1)[1]
    subprocess.run(["sh", "-c", command], check=True, timeout=TIMEOUT)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        ".keep", "keep.txt", "sub"]


# --- escapes -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_transfer_on_a_terminal_writes_no_escape_sequences(
        processes: Processes, tmp_path: Path) -> None:
    """Sender (with its QR code) and receiver on terminals, with FORCE_COLOR set: the bar,
    the code, the offer and the summaries hold no escape sequence (the bar redraws with
    a carriage return only), so no terminal shows them as garbage: a legacy Windows
    console, TERM=dumb, or with NO_COLOR. A colour added one day must follow
    _colorize.can_colorize's rules (docs/platforms.md)."""
    _, url = processes.start_relay()
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big.bin", "wb") as f:  # sparse: quick to make and to read
        f.truncate(64 * 2**20)
    env = cli_env(FORCE_COLOR="1", TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    code = "7-escape-free-terminal"
    sender = _Terminal(processes, False, "send", url, code, str(src), "--qr", cwd=tmp_path,
                       env=env, stdout=True)
    receiver = _Terminal(processes, False, "receive", url, code, "--out", str(tmp_path / "out"),
                         "--yes", cwd=tmp_path, env=env, stdout=True)
    receiver.read_until("100%")
    r_status, received = receiver.finish()
    s_status, sent = sender.finish()
    assert (r_status, s_status) == (0, 0), received + sent
    assert "\u2580" in sent or "\u2584" in sent  # the QR code was drawn
    assert "\x1b" not in sent and "\x1b" not in received, repr(sent + received)
