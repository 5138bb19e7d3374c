"""Options named where the message is shown (issue 19, item 8).

The command line reads its flags (``--overwrite``), never Python's spelling
(``overwrite=True``); the Python API reads Python's; the sender is told what the
receiver must pass, not to pass it itself. One table holds both spellings
(errors.SPELLINGS), each error a Hint that names its row.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

import p2p_copy
from p2p_copy import DestinationExistsError, PolicyError
from p2p_copy.cli.commands import build_parser
from p2p_copy.errors import SPELLINGS
from p2p_copy.protocol.messages import FileEntry
from p2p_copy.protocol.policy import ReceivePolicy, check_offer, summarize_offer
from p2p_copy.relay import Relay

from .conftest import Processes

TIMEOUT = 60


def _code() -> str:
    return f"{uuid.uuid4().hex[:12]}-spell"


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


async def _cli_pair(processes: Processes, url: str, receive_args: list[str],
                    send_args: list[str]) -> tuple[int, str, int, str]:
    """Run ``receive URL CODE RECEIVE_ARGS`` and ``send URL CODE SEND_ARGS``; both
    return codes and standard errors (off the loop: the relay runs on it)."""
    code = _code()
    receiver = processes.start("receive", url, code, *receive_args)
    sender = processes.start("send", url, code, *send_args)
    _, r_err = await asyncio.to_thread(receiver.communicate, timeout=TIMEOUT)
    _, s_err = await asyncio.to_thread(sender.communicate, timeout=TIMEOUT)
    assert receiver.returncode is not None and sender.returncode is not None
    return receiver.returncode, r_err, sender.returncode, s_err


@pytest.mark.parametrize(
    ("case", "flag", "python"),
    [("exists", "--overwrite", "overwrite=True"),
     ("max_files", "--max-files", "ReceivePolicy"),
     ("hidden", "--allow-hidden", "ReceivePolicy"),
     ("max_text", "--max-text", "max_memory")],
)
async def test_cli_names_the_flag_and_tells_the_sender_the_receiver_must_pass_it(
    relay: Relay, processes: Processes, tmp_path: Path, case: str, flag: str, python: str,
) -> None:
    """A refusal on the command line names the receiver's flag and no Python spelling;
    the sending CLI reads that the receiver must pass it."""
    out = tmp_path / "out"
    receive_args = ["--out", str(out)]
    if case == "exists":
        _write(out / "report.txt", b"old report")
        send_args = [str(_write(tmp_path / "src" / "report.txt", b"new report"))]
        exit_code = DestinationExistsError.exit_code
    elif case == "max_files":
        receive_args += ["--max-files", "1"]
        send_args = [str(_write(tmp_path / "src" / name, b"x")) for name in ("a", "b")]
        exit_code = PolicyError.exit_code
    elif case == "hidden":
        send_args = [str(_write(tmp_path / "src" / ".bashrc", b"alias ls=rm"))]
        exit_code = PolicyError.exit_code
    else:
        receive_args += ["--max-text", "1K"]
        send_args = ["--text", "x" * 2000]
        exit_code = PolicyError.exit_code
    r_code, r_err, s_code, s_err = await _cli_pair(processes, relay.url, receive_args,
                                                   send_args)
    assert (r_code, s_code) == (exit_code, exit_code), (r_err, s_err)
    line, = r_err.strip().splitlines()
    assert flag in line and python not in line and "Python" not in line, line
    told, = s_err.strip().splitlines()
    assert "The receiver must " in told and flag in told, told
    assert f"Pass {flag}" not in told and "Raise the limit" not in told, told
    if case == "exists":
        assert (out / "report.txt").read_bytes() == b"old report"


async def test_api_names_overwrite_in_python_and_tells_the_sender_the_receivers_flag(
    relay: Relay, tmp_path: Path,
) -> None:
    """Through the API the same refusal reads ``overwrite=True``; the sending side's
    error says what the receiver must pass, in both spellings."""
    _write(tmp_path / "out" / "report.txt", b"old report")
    src = _write(tmp_path / "src" / "report.txt", b"new report")
    code = _code()
    async with asyncio.timeout(TIMEOUT):
        received, sent = await asyncio.gather(
            p2p_copy.receive(relay.url, code, tmp_path / "out", progress="none"),
            p2p_copy.send(relay.url, code, [src], progress="none"),
            return_exceptions=True)
    assert isinstance(received, DestinationExistsError), received
    assert "overwrite=True" in str(received)
    assert isinstance(sent, DestinationExistsError), sent
    assert "The receiver must pass --overwrite (overwrite=True in Python)" in str(sent)
    assert (tmp_path / "out" / "report.txt").read_bytes() == b"old report"


def test_one_error_reads_three_ways() -> None:
    """The hidden-names refusal: Python's spelling in str(), the flag alone for the CLI,
    the receiver's flag (and Python's) for the peer; the peer never sees the local text's
    advice addressed to itself."""
    summary = summarize_offer([FileEntry(".bashrc", 1)])
    with pytest.raises(PolicyError) as info:
        check_offer(summary, ReceivePolicy())
    error = info.value
    assert "ReceivePolicy(allow_hidden=True)" in str(error)
    cli = error.render("cli")
    assert "--allow-hidden" in cli and "ReceivePolicy" not in cli
    assert error.peer_text.endswith(
        "The receiver must receive on a terminal and answer yes, or pass --allow-hidden "
        "(ReceivePolicy(allow_hidden=True) in Python), to accept them.")


def test_every_flag_in_the_table_is_an_option_of_receive() -> None:
    """A message never names a flag the CLI lacks (before this, the refusal of too many
    entries named --max-entries, which did not exist)."""
    parser = build_parser()
    for option, spelling in SPELLINGS.items():
        if spelling.cli is None:
            continue
        words = spelling.cli.split()
        argv = ["receive", "7-crossover-clockwork-puma"]
        for word, after in zip(words, [*words[1:], ""], strict=True):
            if word.startswith("--"):
                argv += [word, "1"] if after.isupper() else [word]
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{option}: receive does not take {spelling.cli!r}")
