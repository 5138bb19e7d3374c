"""The command line as croc and magic-wormhole users expect it (issue 19): a relay from the
environment or a config file, generated codes by default, a code alone receives, the
receive line that works when pasted, the prompt, Ctrl-C, and the slips that used to pass."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import trustme

from p2p_copy.cli.report import Tally, summary
from p2p_copy.display.progress import NoProgress
from p2p_copy.errors import RelayUnreachableError
from p2p_copy.peer.link import open_link
from p2p_copy.protocol.codes import CODE_ENV
from p2p_copy.relay.server import Relay, server_ssl_context
from p2p_copy.results import FileResult, TransferResult
from p2p_copy.testing import TEST_CONFIG

from .conftest import Processes, cli_env, free_port, run_cli, wait_for_port
from .test_offer import Terminal
from .test_tls import _write_pki

TIMEOUT = 60
GENERATED = re.compile(r"[1-9][0-9]*(-[a-z]+){3}")


def _code() -> str:
    return f"{uuid.uuid4().hex[:8]}-amber-crossover-wayside"


def _env(tmp_path: Path, name: str = "home", **extra: str) -> dict[str, str]:
    """A CLI environment with its own empty $HOME and $XDG_CONFIG_HOME, and no relay."""
    home = tmp_path / name
    home.mkdir(exist_ok=True)
    env = cli_env(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), **extra)
    for var in ("P2P_COPY_RELAY", "P2P_COPY_RELAY_TOKEN", CODE_ENV):
        env.pop(var, None)
    env.update(extra)
    return env


def _config(env: dict[str, str], text: str) -> Path:
    path = Path(env["XDG_CONFIG_HOME"]) / "p2p-copy" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _unreachable() -> str:
    return f"ws://127.0.0.1:{free_port()}"  # nothing listens: reaching it would exit 3


def _one_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


class FullTerminal(Terminal):
    """Terminal (tests/test_offer.py) with stdout on the terminal too, as in a shell."""

    def __init__(self, processes: Processes, *args: str, cwd: Path,
                 env: dict[str, str]) -> None:
        import pty

        self.master, slave = pty.openpty()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "p2p_copy", *args], stdin=slave, stderr=slave,
                stdout=slave, cwd=cwd, env=env, start_new_session=True)
        finally:
            os.close(slave)
        processes.procs.append(self.proc)  # type: ignore[arg-type]
        self.seen = b""


# --- where the relay comes from ------------------------------------------------------


@pytest.mark.slow
def test_relay_from_config_then_send_file_and_receive_code(
    processes: Processes, tmp_path: Path
) -> None:
    """With relay in config.toml ($XDG_CONFIG_HOME), `send FILE --code C` and `receive C`
    pair; with $P2P_COPY_RELAY, `p2p-copy C` alone receives."""
    _, url = processes.start_relay()
    src = tmp_path / "report.txt"
    src.write_text("from the config file's relay")
    env = _env(tmp_path)
    _config(env, f'relay = "{url}"\n')
    code = _code()
    receiver = processes.start("receive", code, "--out", str(tmp_path / "a"), env=env)
    sent = run_cli("send", str(src), "--code", code, env=env, timeout=TIMEOUT)
    assert sent.returncode == 0, sent.stderr
    assert receiver.wait(timeout=TIMEOUT) == 0
    assert (tmp_path / "a" / "report.txt").read_text() == src.read_text()

    env = _env(tmp_path, "other", P2P_COPY_RELAY=url)  # no config file: the variable
    code = _code()
    receiver = processes.start(code, "--out", str(tmp_path / "b"), env=env)  # croc's habit
    sent = run_cli("send", "--code", code, str(src), env=env, timeout=TIMEOUT)
    assert sent.returncode == 0, sent.stderr
    assert receiver.wait(timeout=TIMEOUT) == 0, receiver.communicate()
    assert (tmp_path / "b" / "report.txt").read_text() == src.read_text()


def test_without_any_relay_the_error_names_every_way_to_give_one(tmp_path: Path) -> None:
    """No argument, variable or config file: exit 2 naming --relay, the variable and the file."""
    env = _env(tmp_path)
    src = tmp_path / "a.txt"
    src.write_text("x")
    for args in (("send", str(src)), ("receive", _code())):
        line = _one_line(run_cli(*args, env=env, timeout=TIMEOUT))
        assert "--relay" in line and "$P2P_COPY_RELAY" in line
        assert str(Path(env["XDG_CONFIG_HOME"]) / "p2p-copy" / "config.toml") in line


def test_a_bad_config_file_is_named(tmp_path: Path) -> None:
    """A config file with an unknown key or bad TOML gives exit 2 naming the file."""
    env = _env(tmp_path)
    for text in ('relay = "ws://127.0.0.1:1"\nrelais = "x"\n', "relay = ws://\n"):
        path = _config(env, text)
        line = _one_line(run_cli("receive", _code(), env=env, timeout=TIMEOUT))
        assert str(path) in line


# --- the receive line, pasted --------------------------------------------------------


def _tls_relay(processes: Processes, tmp_path: Path) -> tuple[str, Path]:
    """A TLS relay process with a private CA; its wss:// URL and the CA's PEM file."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_pem, server_pem = tmp_path / "ca.pem", tmp_path / "server.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    cert.private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    port = free_port()
    proc = processes.start("run-relay-server", "127.0.0.1", str(port), "--certfile",
                           str(server_pem))
    wait_for_port(port, proc)
    return f"wss://127.0.0.1:{port}", ca_pem


def _lines_until(proc: subprocess.Popen[str], prefix: str) -> list[str]:
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    while not any(line.startswith(prefix) for line in lines):
        assert time.monotonic() < deadline, lines
        line = proc.stderr.readline()
        assert line, lines
        lines.append(line.rstrip("\n"))
    return lines


def _pasted(line: str, *extra: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a printed `p2p-copy receive ...` line as the other side would paste it."""
    words = shlex.split(line)
    assert words[:2] == ["p2p-copy", "receive"], line
    return run_cli(*words[1:], *extra, env=env, timeout=TIMEOUT)


@pytest.mark.slow
def test_printed_receive_line_works_when_pasted_with_a_private_ca(
    processes: Processes, tmp_path: Path
) -> None:
    """A relay with a private CA and a token from the config: the sender prints the short
    line and the whole one (with --cafile, not the token); pasted on a machine without
    defaults but with the token in its environment, the whole one receives."""
    url, ca_pem = _tls_relay(processes, tmp_path)
    env = _env(tmp_path)
    _config(env, f'relay = "{url}"\ncafile = "{ca_pem}"\n')
    src = tmp_path / "report.txt"
    src.write_text("pasted")
    sender = processes.start("send", str(src), env=env)
    lines = _lines_until(sender, "  (if its default relay")
    code = lines[0].removeprefix("Code: ")
    assert GENERATED.fullmatch(code), lines
    assert lines[1] == f"On the other machine run: p2p-copy receive {code}"
    whole = lines[2].split(": ", 1)[1].rstrip(")")
    assert "--cafile" in whole and url in whole
    got = _pasted(whole, "--out", str(tmp_path / "out"), env=_env(tmp_path, "bare"))
    assert got.returncode == 0, got.stderr
    assert sender.wait(timeout=TIMEOUT) == 0
    assert (tmp_path / "out" / "report.txt").read_text() == "pasted"


@pytest.mark.slow
def test_a_relay_token_is_mentioned_but_never_printed(
    processes: Processes, tmp_path: Path
) -> None:
    """With a relay token the printed lines say one is needed and do not contain it."""
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret-token-value\n")
    _, url = processes.start_relay(None, "--access-token-file", str(tokens))
    src = tmp_path / "a.txt"
    src.write_text("x")
    env = _env(tmp_path, P2P_COPY_RELAY_TOKEN="s3cret-token-value")
    sender = processes.start("send", "--relay", url, str(src), env=env)
    lines = _lines_until(sender, "  The relay needs its access token")
    assert lines[1].startswith(f"On the other machine run: p2p-copy receive {url} ")
    assert not any("s3cret" in line for line in lines)
    got = _pasted(lines[1].split(": ", 1)[1], "--out", str(tmp_path / "out"),
                  env=_env(tmp_path, "peer", P2P_COPY_RELAY_TOKEN="s3cret-token-value"))
    assert got.returncode == 0, got.stderr
    assert sender.wait(timeout=TIMEOUT) == 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_qr_code_on_a_terminal(processes: Processes, tmp_path: Path) -> None:
    """send --qr draws the receive line as a QR code (half blocks) under the lines."""
    _, url = processes.start_relay()
    src = tmp_path / "a.txt"
    src.write_text("x")
    term = FullTerminal(processes, "send", "--relay", url, "--qr", str(src), cwd=tmp_path,
                        env=_env(tmp_path))
    shown = term.read_until("█")
    code = re.search(r"Code: (\S+)", shown)
    assert code is not None, shown
    got = run_cli("receive", url, code[1], "--out", str(tmp_path / "out"), timeout=TIMEOUT)
    assert got.returncode == 0, got.stderr
    status, shown = term.finish()
    assert status == 0, shown
    assert "▀" in shown or "▄" in shown
    assert shown.count("Code: ") == 1, shown  # not once more by the progress display


# --- slips that used to pass silently ------------------------------------------------


@pytest.mark.slow
def test_seed_form_with_a_lone_file_generates_the_code(
    processes: Processes, tmp_path: Path
) -> None:
    """`send SERVER report.txt` sends report.txt with a generated code (was: Nothing to send)."""
    _, url = processes.start_relay()
    (tmp_path / "report.txt").write_text("not a code")
    sender = processes.start("send", url, "report.txt", cwd=tmp_path, env=_env(tmp_path))
    code = _lines_until(sender, "Code: ")[-1].removeprefix("Code: ")
    got = run_cli("receive", url, code, "--out", str(tmp_path / "out"), timeout=TIMEOUT)
    assert got.returncode == 0, got.stderr
    assert sender.wait(timeout=TIMEOUT) == 0
    assert (tmp_path / "out" / "report.txt").read_text() == "not a code"


@pytest.mark.slow
def test_slips_are_usage_errors_before_connecting(tmp_path: Path) -> None:
    """Each slip exits 2 with one line before any connection (the relay is unreachable,
    which would be exit 3): a folder where the code goes, the relay after the code,
    'auto' to receive, two sources of one name, --out a file, a bad port, a missing
    --keyfile, and `p2p-copy FILE`."""
    url = _unreachable()
    env = _env(tmp_path)
    (tmp_path / "7-day-report").mkdir()
    (tmp_path / "small.bin").write_bytes(b"x")
    for folder in ("a", "b"):
        (tmp_path / folder / "data").mkdir(parents=True)
    (tmp_path / "a-file").write_text("x")

    def run(*args: str) -> str:
        return _one_line(run_cli(*args, env=env, cwd=tmp_path, timeout=TIMEOUT))

    line = run("send", url, "7-day-report", "small.bin")
    assert "'7-day-report'" in line and "--code" in line
    line = run("receive", _code(), url)
    assert "before the code" in line and "auto" not in line
    assert "receive needs the code" in run("receive", url, "auto")
    assert "'data'" in run("send", "--relay", url, "a/data", "b/data")
    assert "--out" in run("receive", url, _code(), "--out", "a-file")
    result = run_cli("run-relay-server", "127.0.0.1", "70000", "--no-tls", timeout=TIMEOUT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "70000" in result.stderr
    assert str(tmp_path / "nokey.pem") in run(
        "run-relay-server", "127.0.0.1", str(free_port()), "--certfile", "a-file",
        "--keyfile", str(tmp_path / "nokey.pem"))
    line = run("small.bin")
    assert "p2p-copy send small.bin" in line


def test_max_bytes_takes_units(tmp_path: Path) -> None:
    """--max-bytes 10G is accepted (the run gets as far as the relay: exit 3)."""
    result = run_cli("receive", _unreachable(), _code(), "--max-bytes", "10G", "--out",
                     str(tmp_path / "out"), env=_env(tmp_path), timeout=TIMEOUT)
    assert result.returncode == 3, result.stderr


@pytest.mark.slow
def test_codes_are_normalised_on_both_sides(processes: Processes, tmp_path: Path) -> None:
    """A sender typing the code with capitals and spaces pairs with a receiver typing it
    in lower case, and the encrypted transfer goes through."""
    _, url = processes.start_relay()
    code = _code()
    src = tmp_path / "a.txt"
    src.write_text("same code, other spelling")
    receiver = processes.start("receive", url, code, "--out", str(tmp_path / "out"))
    sent = run_cli("send", url, f"  {code.upper()} ", str(src), timeout=TIMEOUT)
    assert sent.returncode == 0, sent.stderr
    assert receiver.wait(timeout=TIMEOUT) == 0
    assert (tmp_path / "out" / "a.txt").read_text() == src.read_text()


# --- the terminal: warning, prompt, binary, Ctrl-C, the last line --------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_weak_code_is_warned_on_a_terminal_only(processes: Processes, tmp_path: Path) -> None:
    """`--code 1-a` on a terminal warns about guessing; through a pipe it stays quiet."""
    src = tmp_path / "a.txt"
    src.write_text("x")
    url = _unreachable()
    term = FullTerminal(processes, "send", "--relay", url, "--code", "1-a", str(src),
                        cwd=tmp_path, env=_env(tmp_path))
    term.read_until("easy to guess")
    assert term.finish()[0] == 3
    piped = run_cli("send", "--relay", url, "--code", "1-a", str(src), env=_env(tmp_path),
                    timeout=TIMEOUT)
    assert "guess" not in piped.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_receive_asks_for_the_code_with_tab_completion(
    processes: Processes, tmp_path: Path
) -> None:
    """`receive` without a code asks on a terminal; Tab completes a word of the list; the
    typed code pairs."""
    _, url = processes.start_relay()
    src = tmp_path / "a.txt"
    src.write_text("asked")
    term = FullTerminal(processes, "receive", "--relay", url, "--yes", "--out",
                        str(tmp_path / "out"), cwd=tmp_path, env=_env(tmp_path))
    term.read_until("Enter the code")
    room = uuid.uuid4().hex[:8]
    term.type(f"{room}-amber-crossov\t".encode())
    term.read_until("crossover")
    term.type(b"-wayside\n")
    term.read_until("waiting for the other side")
    sent = run_cli("send", url, f"{room}-amber-crossover-wayside", str(src), timeout=TIMEOUT)
    assert sent.returncode == 0, sent.stderr
    status, shown = term.finish()
    assert status == 0, shown
    assert (tmp_path / "out" / "a.txt").read_text() == "asked"


@pytest.mark.timeout(120)
def test_stdout_onto_a_terminal_is_refused(processes: Processes, tmp_path: Path) -> None:
    """`receive --stdout` with stdout on a terminal exits 2 before connecting."""
    term = FullTerminal(processes, "receive", _unreachable(), _code(), "--stdout",
                        cwd=tmp_path, env=_env(tmp_path))
    status, shown = term.finish()
    assert status == 2, shown
    assert "pipe it" in shown


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_ctrl_c_says_cancelling_and_what_was_kept_then_resumes(
    processes: Processes, tmp_path: Path
) -> None:
    """Ctrl-C on a receiver mid-transfer says "cancelling…" at once, then what it kept and
    how to go on; running the same receive again resumes, and the last line says what
    arrived, where, how much was already there and what crossed."""
    _, url = processes.start_relay()
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big.bin", "wb") as f:  # sparse: quick to make and to read
        f.truncate(192 * 2**20)
    code = _code()
    out = tmp_path / "out"
    args = ("receive", url, code, "--out", str(out), "--yes", "--reconnect-timeout", "0")
    send = ("send", url, code, str(src), "--reconnect-timeout", "0", "--compress", "never")
    sender = processes.start(*send)
    term = FullTerminal(processes, *args, cwd=tmp_path, env=_env(tmp_path))
    deadline = time.monotonic() + TIMEOUT
    # Stop the sender once a few MiB arrived, so that the receiver is cut mid-file.
    while sum(p.stat().st_size for p in out.rglob(".*.p2p-copy-part")) < 2 * 2**20:
        assert time.monotonic() < deadline and term.proc.poll() is None
        time.sleep(0.002)
    sender.send_signal(signal.SIGSTOP)
    os.killpg(term.proc.pid, signal.SIGINT)  # what Ctrl-C does to the foreground group
    term.read_until("cancelling…")
    status, shown = term.finish()
    assert status == 130, shown
    assert "Kept " in shown and "run the same receive again" in shown, shown
    sender.kill()
    sender.wait(timeout=TIMEOUT)

    sender = processes.start(*send)
    term = FullTerminal(processes, *args, cwd=tmp_path, env=_env(tmp_path))
    status, shown = term.finish()
    assert status == 0, shown
    assert sender.wait(timeout=TIMEOUT) == 0
    assert (out / "src" / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    last = [line for line in shown.splitlines() if line.startswith("Received")][-1]
    assert f"into {out}: src/" in last, last
    assert "already here" in last, last


def test_summary_counts_what_crossed_apart_from_what_was_there() -> None:
    """The last line's rate is what crossed; what resumed or was skipped is said apart."""
    result = TransferResult("receiver", (FileResult("dir/a", 3 * 2**20, "0" * 64),), 3 * 2**20,
                            2.0, destination=Path("/x"))
    tally = Tally(NoProgress())
    tally.resumed(3 * 2**20)  # a folder already there: nothing crosses
    line = summary(result, tally, "/x")
    assert line.startswith("Received 1 file(s), 3.0 MiB, into /x: dir/")
    assert "(3.0 MiB already here" in line and "0 B crossed in 2.0 s." in line
    tally = Tally(NoProgress())
    tally.resumed(2**20)
    tally.advance(2 * 2**20)
    tally.resumed(2 * 2**20)  # after a reconnect: counted by advance already
    line = summary(result, tally, "/x")
    assert "(1.0 MiB already here" in line and "2.0 MiB crossed in 2.0 s (1.0 MiB/s)" in line


def test_completion_scripts_come_from_the_parser() -> None:
    """`completion bash|zsh|fish` prints a script naming the commands (needs shtab)."""
    pytest.importorskip("shtab")
    for shell in ("bash", "zsh", "fish"):
        result = run_cli("completion", shell, timeout=TIMEOUT)
        assert result.returncode == 0, result.stderr
        assert "run-relay-server" in result.stdout and "--relay" in result.stdout


async def test_ws_to_a_tls_relay_says_to_use_wss(tmp_path: Path) -> None:
    """ws:// to a relay that serves TLS fails with exit 3 and the wss:// URL to use."""
    pki = _write_pki(trustme.CA(), tmp_path, "127.0.0.1")
    context = server_ssl_context(str(pki.combined_pem))
    async with Relay("127.0.0.1", 0, ssl_context=context, config=TEST_CONFIG) as relay:
        plain = relay.url.replace("wss://", "ws://")
        with pytest.raises(RelayUnreachableError, match="use wss://127.0.0.1:"):
            async with open_link(plain, room="0" * 64):
                pass
