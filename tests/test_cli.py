"""The ``p2p-copy`` command as a user runs it: real processes, a real relay on loopback."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import sysconfig
import termios
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

import p2p_copy
from p2p_copy import errors
from p2p_copy.cli.commands import EXAMPLES
from p2p_copy.protocol.codes import CODE_ENV

from .conftest import Processes, cli_env, free_port, run_cli

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 60

# What a progress display leaves on a stream: a tqdm bar, a rate, a percentage, a
# carriage return, or the "waiting" line of the bar display.
PROGRESS_LIKE = re.compile(r"\r|\d+%|B/s|it/s|\|[#█▏▎▍▌▋▊▉ ]+\||waiting for the other side")


def _code() -> str:
    return f"{uuid.uuid4().hex[:12]}-test"


def _make_tree(root: Path) -> Path:
    """A small folder with a nested file and a binary file; returns the folder."""
    src = root / "payload"
    (src / "nested").mkdir(parents=True)
    (src / "hello.txt").write_text("hello, relay\n")
    (src / "nested" / "data.bin").write_bytes(os.urandom(300_000))
    return src


def _same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(
        (a / rel).read_bytes() == (b / rel).read_bytes() for rel in files_a
    )


def _finish(proc: subprocess.Popen[str], timeout: float = TIMEOUT) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    return out, err


def _json_lines(stdout: str) -> list[dict[str, Any]]:
    """Every stdout line parsed as JSON; fails the test on a line that is not an object."""
    events = []
    for line in stdout.splitlines():
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        assert isinstance(obj.get("event"), str), line
        events.append(obj)
    return events


def _env_without_code() -> dict[str, str]:
    env = cli_env()
    env.pop(CODE_ENV, None)
    return env


# --- help, version, usage ------------------------------------------------------------


def test_help_shows_examples_and_exit_codes() -> None:
    """--help ends with runnable examples for every command and the exit-code table."""
    result = run_cli("--help", timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "examples:" in out
    for line in (
        "p2p-copy run-relay-server 127.0.0.1 8765 --no-tls",
        "p2p-copy send ws://127.0.0.1:8765",
        "p2p-copy receive ws://127.0.0.1:8765",
        f"{CODE_ENV}=",
    ):
        assert line in out
    assert "exit codes:" in out
    for code in (0, 2, 3, 13, 130):
        assert re.search(rf"\b{code} [a-z]", out), code
    for command in ("send", "receive"):
        sub = run_cli(command, "--help", timeout=TIMEOUT)
        assert sub.returncode == 0, sub.stderr
        assert "examples:" in sub.stdout and "exit codes:" in sub.stdout


def test_version_prints_package_version() -> None:
    """--version prints exactly the version p2p_copy.__version__ holds."""
    result = run_cli("--version", timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"p2p-copy {p2p_copy.__version__}"


@pytest.mark.parametrize("code", [0, 3])
def test_console_script_flushes_output_and_keeps_the_exit_code(code: int) -> None:
    """After a success the script skips teardown, but buffered output still comes out whole."""
    script = ("import sys, p2p_copy.cli.commands as cli\n"
              "cli.main = lambda: (sys.stdout.write('x' * 100_000),\n"
              f"                   print('done', file=sys.stderr), {code})[-1]\n"
              "cli.console_main()\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=TIMEOUT, env=cli_env())
    assert result.returncode == code
    assert result.stdout == "x" * 100_000 and result.stderr == "done\n"


def test_relay_without_tls_choice_is_a_clear_usage_error() -> None:
    """A relay given neither a certificate nor --no-tls exits 2 with one line that says which."""
    result = run_cli("run-relay-server", "127.0.0.1", str(free_port()), timeout=TIMEOUT)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for option in ("--certfile", "--keyfile", "--no-tls"):
        assert option in lines[0]
    assert "Traceback" not in result.stderr


# --- transfers through a relay process -----------------------------------------------


def test_send_receive_through_relay_process_is_quiet_off_a_terminal(
    processes: Processes, tmp_path: Path
) -> None:
    """Sender and receiver CLIs pair through a relay process, exit 0, and print nothing to pipes."""
    _, url = processes.start_relay()
    src = _make_tree(tmp_path)
    single = tmp_path / "single.dat"
    single.write_bytes(os.urandom(70_000))
    out = tmp_path / "out"
    code = _code()
    receiver = processes.start("receive", url, code, "--out", str(out))
    sender = processes.start("send", url, code, str(src), str(single))
    s_out, s_err = _finish(sender)
    r_out, r_err = _finish(receiver)
    assert sender.returncode == 0, s_err
    assert receiver.returncode == 0, r_err
    assert _same_tree(src, out / "payload")
    assert (out / "single.dat").read_bytes() == single.read_bytes()
    for stream in (s_out, r_out):
        assert stream == ""
    for stream in (s_err, r_err):
        assert not PROGRESS_LIKE.search(stream), stream


def test_progress_bar_on_a_terminal(processes: Processes, tmp_path: Path) -> None:
    """With stderr on a (pseudo-)terminal the sender draws a tqdm bar with bytes and a rate."""
    _, url = processes.start_relay()
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    code = _code()
    receiver = processes.start("receive", url, code, "--out", str(tmp_path / "out"))

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    chunks: list[bytes] = []

    def read_terminal() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: every writer of the terminal has closed it
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read_terminal, daemon=True)
    try:
        sender = subprocess.Popen(
            [sys.executable, "-m", "p2p_copy", "send", url, code, str(src)],
            stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, text=True,
            env=cli_env(),
        )
        processes.procs.append(sender)
        os.close(slave)
        slave = -1
        reader.start()
        s_out, _ = sender.communicate(timeout=TIMEOUT)
        _, r_err = _finish(receiver)
        reader.join(timeout=10)
    finally:
        if slave != -1:
            os.close(slave)
        os.close(master)
    terminal = b"".join(chunks).decode(errors="replace")
    assert sender.returncode == 0, terminal
    assert receiver.returncode == 0, r_err
    assert (tmp_path / "out" / "big.bin").read_bytes() == src.read_bytes()
    assert s_out == ""  # the bar goes to stderr only
    assert "waiting for the other side" in terminal
    assert "100%" in terminal
    assert re.search(r"3\.00M/3\.00M", terminal), terminal  # bytes done / total, in binary units
    assert re.search(r"[\d.?]+[kMG]?i?B/s", terminal), terminal  # the rate (MiB/s)
    assert "Sent 1 file(s)" in terminal


def test_json_events_one_object_per_line(processes: Processes, tmp_path: Path) -> None:
    """--json prints one JSON object per stdout line: waiting, started, progress, file, finished."""
    _, url = processes.start_relay()
    src = _make_tree(tmp_path)
    code = _code()
    receiver = processes.start("receive", url, code, "--out", str(tmp_path / "out"), "--json")
    sender = processes.start("send", url, code, str(src), "--json")
    s_out, s_err = _finish(sender)
    r_out, r_err = _finish(receiver)
    assert sender.returncode == 0, s_err
    assert receiver.returncode == 0, r_err
    assert _same_tree(src, tmp_path / "out" / "payload")
    for stdout, stderr in ((s_out, s_err), (r_out, r_err)):
        events = _json_lines(stdout)
        names = [e["event"] for e in events]
        order = ["waiting", "started", "progress", "file", "finished"]
        firsts = [names.index(n) for n in order]  # ValueError if an event is missing
        assert firsts == sorted(firsts), names
        assert names[-1] == "finished"
        assert names.count("file") == 2
        for file in (e for e in events if e["event"] == "file"):
            assert file["algorithm"] in ("blake3", "sha256"), file
            assert re.fullmatch(r"[0-9a-f]{64}", file["digest"]), file
            assert file[file["algorithm"]] == file["digest"]
        assert "error" not in names
        finished = events[-1]
        assert finished["exit_code"] == 0
        assert finished["files"] == 2
        assert finished["bytes"] == sum(f.stat().st_size for f in src.rglob("*") if f.is_file())
        progress = [e for e in events if e["event"] == "progress"]
        assert progress[-1]["bytes_done"] == progress[-1]["bytes_total"] == finished["bytes"]
        assert not PROGRESS_LIKE.search(stderr), stderr


def test_json_error_event_carries_the_exit_code(tmp_path: Path) -> None:
    """A failure under --json ends with an ``error`` event whose exit_code is the process's."""
    url = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    src = tmp_path / "a.txt"
    src.write_text("x")
    for args in (("send", url, _code(), str(src)), ("receive", url, _code(), "--out",
                                                     str(tmp_path / "out"))):
        result = run_cli(*args, "--json", timeout=TIMEOUT)
        assert result.returncode == errors.RelayUnreachableError.exit_code, result.stderr
        events = _json_lines(result.stdout)
        assert events[-1]["event"] == "error"
        assert events[-1]["exit_code"] == result.returncode
        assert events[-1]["error"] == "RelayUnreachableError"
        assert "Traceback" not in result.stderr


def test_json_error_event_on_both_sides_of_a_refused_transfer(
    processes: Processes, tmp_path: Path
) -> None:
    """A receiver refusing to overwrite exits 11, and both sides' error events say 11."""
    _, url = processes.start_relay()
    src = tmp_path / "report.txt"
    src.write_text("new")
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.txt").write_text("old")
    code = _code()
    receiver = processes.start("receive", url, code, "--out", str(out), "--json")
    sender = processes.start("send", url, code, str(src), "--json")
    s_out, s_err = _finish(sender)
    r_out, r_err = _finish(receiver)
    assert receiver.returncode == errors.DestinationExistsError.exit_code, r_err
    assert sender.returncode == errors.DestinationExistsError.exit_code, s_err
    for stdout, proc in ((s_out, sender), (r_out, receiver)):
        events = _json_lines(stdout)
        assert events[-1]["event"] == "error", events
        assert events[-1]["exit_code"] == proc.returncode
    assert (out / "report.txt").read_text() == "old"


def test_sigterm_cancels_with_exit_130_and_an_error_event(
    processes: Processes, tmp_path: Path
) -> None:
    """SIGTERM to a waiting receiver exits 130 with one line, and --json says 130 too."""
    _, url = processes.start_relay()
    receiver = processes.start("receive", url, _code(), "--out", str(tmp_path / "out"), "--json")
    assert receiver.stdout is not None
    ready, _, _ = select.select([receiver.stdout], [], [], TIMEOUT)
    assert ready, "the receiver never said it was waiting"
    assert json.loads(receiver.stdout.readline()) == {"event": "waiting"}
    receiver.send_signal(signal.SIGTERM)
    r_out, r_err = _finish(receiver)
    assert receiver.returncode == errors.CancelledError.exit_code, r_err
    events = _json_lines(r_out)
    assert [e["event"] for e in events] == ["error"]
    assert events[0]["exit_code"] == receiver.returncode
    assert len(r_err.strip().splitlines()) == 1 and "Traceback" not in r_err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --- the code from the environment ---------------------------------------------------


def test_code_dash_is_read_from_the_environment(processes: Processes, tmp_path: Path) -> None:
    """A receiver given CODE '-' pairs with a sender that typed the code from $P2P_COPY_CODE."""
    _, url = processes.start_relay()
    src = tmp_path / "secret.txt"
    src.write_text("pairs only if the code came from the environment")
    code = _code()
    env = _env_without_code()
    env[CODE_ENV] = code
    receiver = processes.start("receive", url, "-", "--out", str(tmp_path / "out"), env=env)
    sender = processes.start("send", url, code, str(src), env=_env_without_code())
    _, s_err = _finish(sender)
    _, r_err = _finish(receiver)
    assert receiver.returncode == 0, r_err
    assert sender.returncode == 0, s_err
    assert (tmp_path / "out" / "secret.txt").read_text() == src.read_text()


@pytest.mark.parametrize("value", [None, ""])
def test_code_dash_without_the_variable_is_a_usage_error(
    tmp_path: Path, value: str | None
) -> None:
    """CODE '-' with $P2P_COPY_CODE unset or empty exits 2 with one line naming the variable."""
    env = _env_without_code()
    if value is not None:
        env[CODE_ENV] = value
    src = tmp_path / "a.txt"
    src.write_text("x")
    url = f"ws://127.0.0.1:{free_port()}"
    for args in (("send", url, "-", str(src)), ("receive", url, "-", "--out", str(tmp_path))):
        result = run_cli(*args, env=env, timeout=TIMEOUT)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert f"${CODE_ENV}" in lines[0]
        assert "Traceback" not in result.stderr


# --- exit codes ----------------------------------------------------------------------


def _error_classes() -> list[type[errors.P2PCopyError]]:
    found: list[type[errors.P2PCopyError]] = []
    todo: list[type[errors.P2PCopyError]] = [errors.P2PCopyError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [c for c in found if c.__module__ == errors.__name__]


def _own_exit_codes() -> dict[int, type[errors.P2PCopyError]]:
    """Exit code -> the class of errors.py that defines it (subclasses inherit theirs)."""
    codes: dict[int, type[errors.P2PCopyError]] = {}
    for cls in _error_classes():
        if "exit_code" in vars(cls):
            assert cls.exit_code not in codes, (cls, codes.get(cls.exit_code))
            codes[cls.exit_code] = cls
    return codes


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if w != "error"}


def _class_words(cls: type) -> set[str]:
    return _words(re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__))


def test_exit_codes_are_distinct() -> None:
    """Each error class that sets an exit code has its own, and wire codes are unique too."""
    codes = _own_exit_codes()
    assert 0 not in codes
    assert all(0 < code < 256 for code in codes)
    public = [getattr(errors, name) for name in errors.__all__ if isinstance(
        getattr(errors, name), type)]
    assert set(_error_classes()) == set(public)
    wire = [c.wire_code for c in _error_classes() if "wire_code" in vars(c)]
    assert len(wire) == len(set(wire))


def _epilog_table() -> dict[int, str]:
    text = EXAMPLES.split("exit codes:", 1)[1]
    return {int(n): label.strip() for n, label in re.findall(r"(\d+) ([a-z][a-z ]*)", text)}


def test_help_exit_code_table_agrees_with_errors_py() -> None:
    """The --help table lists every exit code of errors.py, each beside its own class's name."""
    help_text = run_cli("--help", timeout=TIMEOUT).stdout
    table = _epilog_table()
    assert "exit codes:" in help_text
    for code, label in table.items():
        assert f"{code} {label}" in " ".join(help_text.split()), (code, label)
    codes = _own_exit_codes()
    assert table.pop(0) == "ok"
    # Exit 1 is the root class: a bug or an unknown peer error, not a case to look up.
    assert table.pop(errors.P2PCopyError.exit_code) == "other error"
    assert set(table) == set(codes) - {errors.P2PCopyError.exit_code}
    for code, label in table.items():
        assert _words(label) and _words(label) <= _class_words(codes[code]), (code, label)


def _readme_exit_code_section(readme: str) -> str | None:
    """The text under the first heading that mentions exit codes, up to the next heading."""
    match = re.search(r"^(#+)[^\n]*exit codes?[^\n]*$", readme, re.MULTILINE | re.IGNORECASE)
    if match is None:
        return None
    rest = readme[match.end():]
    end = re.search(rf"^#{{1,{len(match.group(1))}}}\s", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def test_readme_exit_code_table_agrees_with_errors_py() -> None:
    """If README.md has an exit-code table, it has the codes of errors.py and the same classes."""
    section = _readme_exit_code_section((REPO / "README.md").read_text(encoding="utf-8"))
    if section is None:
        pytest.skip("README.md has no exit-code section yet")
    rows = re.findall(r"^\s*(?:\|\s*|[-*]\s+)`?(\d{1,3})`?\s*(?:\||[:\-\u2013\u2014]|\s)(.*)$",
                      section, re.MULTILINE)
    table = {int(n): rest for n, rest in rows}
    if not table:
        pytest.skip("README.md's exit-code section has no table of them that this test reads")
    codes = _own_exit_codes()
    table.pop(0, None)
    table.pop(errors.P2PCopyError.exit_code, None)
    assert set(table) == set(codes) - {errors.P2PCopyError.exit_code}, table
    for code, rest in table.items():
        for cls in _error_classes():
            if re.search(rf"\b{cls.__name__}\b", rest):
                assert cls.exit_code == code, (code, rest)


# --- the installed command -----------------------------------------------------------


def test_console_script_is_installed() -> None:
    """The ``p2p-copy`` console script next to this Python runs and reports our version."""
    script = Path(sysconfig.get_path("scripts")) / "p2p-copy"
    assert script.is_file(), f"{script} is missing: pip install -e . installs it"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                            timeout=TIMEOUT, env=cli_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"p2p-copy {p2p_copy.__version__}"
