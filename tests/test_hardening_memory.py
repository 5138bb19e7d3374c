"""What a receiver holds in memory is capped, and what a piped stream leaves behind is removed.

Issue 17, findings 2, 9 and 10. Hostile senders are hand-made peers (tests/handmade_peer.py)
speaking the real protocol through the real relay on 127.0.0.1; receivers are the real CLI
(a subprocess, so that its memory can be measured) or the real API.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

import p2p_copy
from p2p_copy import PolicyError, RemoteProtocolError
from p2p_copy.relay import Relay

from .conftest import Processes, cli_env, run_cli
from .handmade_peer import HandmadePeer, file_entry, handmade_peer

TIMEOUT = 60
MiB = 2**20
#: How far above its idle size a receiver may go, whatever a sender announces or sends.
RSS_MARGIN = 100 * 10**6
#: What the hostile sender announces: far beyond any sane text, well within this machine.
ANNOUNCED = 8 * 2**30
#: What it sends if accepted: enough to show unbounded growth, in a few seconds.
FLOOD = 384 * MiB

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(),
                                reason="reads /proc for the receiver's memory")


def _code() -> str:
    return f"{uuid.uuid4().hex[:12]}-mem"


def _vm_hwm(pid: int) -> int:
    """The peak resident set (VmHWM) of the live process ``pid``, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


# Runs ``python -m p2p_copy ARGS`` and writes to REPORT its pid, then, once it exited, its
# peak RSS. wait4's ru_maxrss is the child's VmHWM at exit, which /proc no longer shows
# then; but it also counts the memory of the process it was spawned from (Linux records
# the old mm's peak at exec), so the spawner must be this small launcher, not pytest.
_LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-m", "p2p_copy", *sys.argv[2:]])
with open(sys.argv[1], "w") as report:
    report.write(f"{child.pid}\\n")
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "a") as report:
    report.write(f"{usage.ru_maxrss * 1024}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


class _Measured:
    """A CLI process whose peak RSS is known once it has exited."""

    def __init__(self, processes: Processes, tmp_path: Path, *args: str) -> None:
        self.report = tmp_path / f"rss-{uuid.uuid4().hex}.txt"
        self.launcher = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(self.report), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
        processes.procs.append(self.launcher)
        self.pid: int | None = None

    async def started(self) -> int:
        """The CLI's pid, once the launcher has started it."""
        while self.pid is None:
            lines = self.report.read_text().split() if self.report.exists() else []
            if lines:
                self.pid = int(lines[0])
            else:
                assert self.launcher.poll() is None, self.launcher.communicate()
                await asyncio.sleep(0.02)
        return self.pid

    async def finished(self) -> tuple[int, int, str, str]:
        """Exit code, peak RSS in bytes, standard output and standard error."""
        out, err = await asyncio.to_thread(self.launcher.communicate, timeout=TIMEOUT)
        return self.launcher.returncode, int(self.report.read_text().split()[1]), out, err

    def kill(self) -> None:
        """Stop the CLI if it still runs (the launcher then exits with it)."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def _text_entry(size: int) -> dict[str, Any]:
    """A text as send_text() describes it, of ``size`` bytes."""
    return file_entry("text.txt", size, meta={"kind": "str", "encoding": "utf-8",
                                              "size": size})


async def _flood(peer: HandmadePeer, total: int) -> None:
    """Send ``total`` bytes of 'a' as zstd frames of 1 MiB (about 60 bytes each on the wire)."""
    frame = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(b"a" * MiB)
    assert len(frame) < 200
    for _ in range(total // MiB):
        await peer.send_binary(b"\x01" + frame)


async def test_cli_receiver_memory_stays_bounded_whatever_a_sender_announces(
    relay: Relay, processes: Processes, tmp_path: Path,
) -> None:
    """8 GiB of text announced, a flood of tiny zstd frames ready: the receiver refuses at
    the manifest (exit 19, the sender told "policy") and its peak RSS stays within 100 MB
    of its idle size. Before the cap, it accepted and grew by every frame."""
    code = _code()
    receiver = _Measured(processes, tmp_path, "receive", relay.url, code,
                         "--out", str(tmp_path / "in"), "--reconnect-timeout", "0",
                         "--wait-timeout", str(TIMEOUT))
    try:
        async with asyncio.timeout(TIMEOUT), handmade_peer(relay.url, code, "sender") as peer:
            await peer.expect("ready")  # paired, keys agreed: the receiver waits, idle
            idle = _vm_hwm(await receiver.started())
            await peer.send_manifest([_text_entry(ANNOUNCED)])
            answer = await peer.recv()
            if '"accept"' in str(answer):
                await _flood(peer, FLOOD)
                # A checksum for a file not yet complete: the receiver answers with an
                # error only after it has taken in every frame before it.
                await peer.send_checksums(0, ["00" * 32])
                told = await peer.expect_error()
            else:
                assert '"error"' in str(answer), answer
                told = json.loads(answer)
            status, peak, _, err = await receiver.finished()
    finally:
        receiver.kill()
    assert peak - idle < RSS_MARGIN, (
        f"receiver grew from {idle / MiB:.0f} to {peak / MiB:.0f} MiB for {told}")
    assert status == 19, err
    assert told["code"] == "policy"
    assert "--max-text" in err and "a str of 8,589,934,592 bytes" in err
    assert not (tmp_path / "in").exists() or not any((tmp_path / "in").iterdir())


async def test_cli_receiver_prints_a_text_at_the_default_cap_within_the_bound(
    relay: Relay, processes: Processes, tmp_path: Path,
) -> None:
    """The default cap itself keeps the bound: a text of exactly MEMORY_LIMIT bytes is
    received, decoded and printed to a pipe within 100 MB of the receiver's idle size.
    (A guard on the choice of the default, which the old code did not have.)"""
    from p2p_copy.storage.streams import MEMORY_LIMIT

    code = _code()
    receiver = _Measured(processes, tmp_path, "receive", relay.url, code,
                         "--out", str(tmp_path / "in"), "--reconnect-timeout", "0",
                         "--wait-timeout", str(TIMEOUT))
    try:
        async with asyncio.timeout(TIMEOUT), handmade_peer(relay.url, code, "sender") as peer:
            await peer.expect("ready")
            idle = _vm_hwm(await receiver.started())
            # Read while the receiver prints, so that a full pipe does not stop it.
            finished = asyncio.ensure_future(receiver.finished())
            await peer.send_manifest([_text_entry(MEMORY_LIMIT)])
            await peer.expect("accept")
            await _flood(peer, MEMORY_LIMIT)
            await peer.send_checksums(0, [hashlib.sha256(b"a" * MEMORY_LIMIT).hexdigest()])
            await peer.send_json({"type": "eof"})
            await peer.expect("done")
            status, peak, text, err = await finished
    finally:
        receiver.kill()
    assert status == 0, err
    assert len(text) == MEMORY_LIMIT and text.count("a") == MEMORY_LIMIT, err[-3000:]
    assert peak - idle < RSS_MARGIN, f"receiver grew from {idle / MiB:.0f} to {peak / MiB:.0f} MiB"


# --- the cap, through the API and the CLI flag ----------------------------------------------


async def _offer(url: str, entry: dict[str, Any],
                 receive: Callable[[str, str], Awaitable[object]],
                 ) -> tuple[dict[str, Any], BaseException | None]:
    """A hand-made sender offers ``entry`` to ``receive(url, code)``: the receiver's answer
    to the manifest (``accept`` or ``error``), and the P2PCopyError it raised, if any."""
    code = _code()
    task = asyncio.ensure_future(receive(url, code))
    try:
        async with asyncio.timeout(TIMEOUT), handmade_peer(url, code, "sender") as peer:
            await peer.expect("ready")
            await peer.send_manifest([entry])
            answer: dict[str, Any] = json.loads(await peer.recv())
    finally:
        task.cancel()  # an accepted offer would wait for data that never comes
        (outcome,) = await asyncio.gather(task, return_exceptions=True)
    return answer, outcome if isinstance(outcome, p2p_copy.P2PCopyError) else None


def _receive_text(**kwargs: Any) -> Callable[[str, str], Awaitable[object]]:
    return lambda url, code: p2p_copy.receive_text(url, code, progress="none", **kwargs)


def _receive_object(**kwargs: Any) -> Callable[[str, str], Awaitable[object]]:
    return lambda url, code: p2p_copy.receive_object(url, code, progress="none", **kwargs)


@pytest.mark.parametrize("receive", [_receive_text(), _receive_object()],
                         ids=["receive_text", "receive_object"])
async def test_api_refuses_more_than_the_default_cap_before_reading(
    relay: Relay, receive: Callable[[str, str], Awaitable[object]],
) -> None:
    """One byte over MEMORY_LIMIT announced: PolicyError at the manifest, the sender told
    "policy", and the message says which keyword raises the cap."""
    from p2p_copy.storage.streams import MEMORY_LIMIT

    answer, error = await _offer(relay.url, _text_entry(MEMORY_LIMIT + 1), receive)
    assert answer["type"] == "error" and answer["code"] == "policy", answer
    assert isinstance(error, PolicyError)
    assert "max_bytes" in str(error) and f"str of {MEMORY_LIMIT + 1:,} bytes" in str(error)


@pytest.mark.parametrize("receive", [_receive_text(max_bytes=256 * MiB),
                                     _receive_object(max_bytes=None)],
                         ids=["max_bytes", "None"])
async def test_api_takes_more_once_the_user_raises_the_cap(
    relay: Relay, receive: Callable[[str, str], Awaitable[object]],
) -> None:
    """The cap is the user's to raise (None: up to this machine's memory): then an offer
    of 128 MiB, four times the default, is accepted."""
    answer, _ = await _offer(relay.url, _text_entry(128 * MiB), receive)
    assert answer["type"] == "accept", answer


async def _cli_text(url: str, processes: Processes, tmp_path: Path, text: str,
                    *receive_args: str) -> tuple[subprocess.Popen[str], str, str]:
    """send --text TEXT | receive RECEIVE_ARGS: the receiver, its stdout and stderr."""
    code = _code()
    receiver = processes.start("receive", url, code, "--out", str(tmp_path / "in"),
                               *receive_args)
    sender = processes.start("send", url, code, "--text", text)
    out, err = await asyncio.to_thread(receiver.communicate, timeout=TIMEOUT)
    await asyncio.to_thread(sender.communicate, timeout=TIMEOUT)
    return receiver, out, err


async def test_cli_max_text_takes_units_and_sets_the_cap(
    relay: Relay, processes: Processes, tmp_path: Path,
) -> None:
    """--max-text 1K refuses a 2,000-byte text (exit 19, the flag named), 2K prints it."""
    text = "x" * 2000
    refused, out, err = await _cli_text(relay.url, processes, tmp_path, text, "--max-text", "1K")
    assert refused.returncode == 19 and out == "", err
    assert "2,000 bytes" in err and "--max-text" in err
    taken, out, err = await _cli_text(relay.url, processes, tmp_path, text, "--max-text", "2K")
    assert taken.returncode == 0 and out == text, err


@pytest.mark.parametrize("size", ["10X", "0", "-1M", "1.5G"])
def test_cli_max_text_refuses_what_is_not_a_size(size: str) -> None:
    """A size that does not parse is a usage error (exit 2) before anything starts."""
    done = subprocess.run([sys.executable, "-m", "p2p_copy", "receive", "ws://127.0.0.1:9",
                           "1-a-b-c", f"--max-text={size}"], capture_output=True, text=True,
                          env=cli_env(), timeout=TIMEOUT)
    assert done.returncode == 2 and "is not a size" in done.stderr


def test_cli_help_states_the_default_cap() -> None:
    """The help's default is MEMORY_LIMIT's, the one place it is set (the CLI does not
    import streams.py just to print its help)."""
    from p2p_copy.storage.streams import MEMORY_LIMIT

    done = run_cli("receive", "--help")
    assert f"(default {MEMORY_LIMIT // MiB}M)" in " ".join(done.stdout.split())


# --- finding 10: a kind that is not a string ---------------------------------------------


@pytest.mark.parametrize("kind", [["str"], {"str": 1}], ids=["list", "object"])
@pytest.mark.parametrize("receive", [_receive_text(), _receive_object()],
                         ids=["receive_text", "receive_object"])
async def test_a_kind_that_is_not_a_string_is_a_protocol_error_and_the_sender_is_told(
    relay: Relay, receive: Callable[[str, str], Awaitable[object]], kind: object,
) -> None:
    """Like every malformed description: RemoteProtocolError (exit 8), "protocol" sent."""
    entry = file_entry("o", 5, meta={"kind": kind, "encoding": "utf-8", "size": 5})
    answer, error = await _offer(relay.url, entry, receive)
    assert answer["type"] == "error" and answer["code"] == "protocol", answer
    assert isinstance(error, RemoteProtocolError) and "malformed" in str(error)


# --- finding 9: a piped stream that stops leaves nothing ---------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sender killed", "receiver cancelled"])
async def test_an_interrupted_stream_leaves_no_part_file(
    relay: Relay, processes: Processes, tmp_path: Path, how: str,
) -> None:
    """send - | receive --out: stopped mid-stream, the receiver removes the hidden part,
    which nothing could resume (a pipe is read once, a stream has no sidecar)."""
    code = _code()
    out = tmp_path / "in"
    receiver = processes.start("receive", relay.url, code, "--out", str(out),
                               "--reconnect-timeout", "0")
    sender = subprocess.Popen(
        [sys.executable, "-m", "p2p_copy", "send", relay.url, code, "-", "--name", "s",
         "--reconnect-timeout", "0"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, env=cli_env())
    processes.procs.append(sender)
    assert sender.stdin is not None
    # Not closed: the stream stays open, as a long-running producer's would.
    feeding = asyncio.ensure_future(asyncio.to_thread(
        sender.stdin.buffer.write, os.urandom(3 * MiB)))
    part = out / ".s.p2p-copy-part"
    async with asyncio.timeout(TIMEOUT):
        while not (part.exists() and part.stat().st_size >= 2 * MiB):
            assert receiver.poll() is None, receiver.communicate()
            await asyncio.sleep(0.05)
        await feeding
        if how == "sender killed":
            sender.kill()
        else:
            receiver.send_signal(signal.SIGTERM)
        _, err = await asyncio.to_thread(receiver.communicate, timeout=TIMEOUT)
    assert receiver.returncode == (6 if how == "sender killed" else 130), err
    assert list(out.iterdir()) == []
