"""Every way a transfer can fail ends in one clear error, the right exit code, and a clean disk.

Hostile or broken peers are hand-written (tests/handmade_peer.py) and talk to a real
relay on 127.0.0.1. After each failure the receiver's destination holds no file under a
final name that was not verified, no ``*.p2p-copy-part`` temporary file, and nothing
outside the destination changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

import p2p_copy
from p2p_copy import (
    CodeInUseError,
    DestinationExistsError,
    DiskFullError,
    IncompatiblePeerError,
    IntegrityError,
    P2PCopyError,
    PeerGoneError,
    RelayUnreachableError,
    RemoteProtocolError,
    TransferTimeoutError,
    UnsafePathError,
    UsageError,
)
from p2p_copy.relay import Relay
from p2p_copy.testing import running_relay

from .conftest import Processes, both_backends, free_port, run_cli
from .handmade_peer import (
    HandmadePeer,
    file_entry,
    flip_last_byte_once,
    handmade_peer,
    sha256_hex,
    tampering_proxy,
)

TEMP_SUFFIX = ".p2p-copy-part"
#: Upper bound for one API scenario; CLI runs have their own subprocess timeouts.
SCENARIO_TIMEOUT = 60.0
CLI_TIMEOUT = 90.0
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


# --- helpers ---------------------------------------------------------------------------


@pytest.fixture
def code() -> str:
    """A fresh code, so that no two tests can ever meet on a relay."""
    return f"{uuid.uuid4().hex[:12]}-failures"


def temp_files(root: Path) -> list[Path]:
    """Every p2p-copy temporary file under ``root``, hidden ones included."""
    found: list[Path] = []
    for dirpath, _dirs, files in os.walk(root):
        found.extend(Path(dirpath) / f for f in files if f.endswith(TEMP_SUFFIX))
    return found


def tree(root: Path) -> set[str]:
    """Every file and folder under ``root`` (links not followed), relative, as POSIX paths."""
    if not root.exists():
        return set()
    found: set[str] = set()
    for dirpath, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            found.add((Path(dirpath) / name).relative_to(root).as_posix())
    return found


def assert_one_line(exc: BaseException) -> None:
    """An error message a person can read: non-empty, one line, no control characters."""
    text = str(exc)
    assert text.strip(), f"{type(exc).__name__} has an empty message"
    assert not _CONTROL.search(text), f"message is not one clean line: {text!r}"


def assert_cli_failed(proc: subprocess.CompletedProcess[str] | tuple[int | None, str],
                      exit_code: int) -> str:
    """The CLI exited with ``exit_code`` and said why in one line, without a traceback."""
    if isinstance(proc, tuple):
        returncode, stderr = proc
    else:
        returncode, stderr = proc.returncode, proc.stderr
    assert returncode == exit_code, f"exit {returncode}, expected {exit_code}; stderr: {stderr!r}"
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {stderr!r}"
    assert lines[0].startswith("p2p-copy: "), lines[0]
    assert not _CONTROL.search(lines[0]), lines[0]
    return lines[0]


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, Any]) -> AsyncIterator[asyncio.Task[Any]]:
    """Run ``coro`` as a task that is cancelled and awaited when the block ends."""
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def communicate(proc: subprocess.Popen[str], timeout: float = CLI_TIMEOUT) -> tuple[int, str]:
    """Wait (without blocking the event loop) for a CLI process; return exit code and stderr."""
    _out, err = await asyncio.to_thread(proc.communicate, timeout=timeout)
    return proc.returncode, err


def finish(proc: subprocess.Popen[str], timeout: float = CLI_TIMEOUT) -> tuple[int, str]:
    _out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def make_file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_big_file(path: Path, size: int) -> Path:
    """A sparse file of ``size`` zero bytes: instant to make, real bytes on the wire."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def temp_bytes(root: Path) -> int:
    """Bytes in the temporary files under ``root`` right now (0 if there are none)."""
    total = 0
    for path in temp_files(root):
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60,
               watch: Sequence[subprocess.Popen[str]] = ()) -> None:
    """Poll ``predicate``; fail if it stays false or a watched process ends first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        for proc in watch:
            if proc.poll() is not None:
                raise AssertionError(f"{what}: {proc.args!r} ended first: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.005)


async def async_wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` on the event loop (the caller bounds the wait with asyncio.timeout)."""
    while not predicate():
        await asyncio.sleep(0.005)


Step = tuple[str, Any]


@dataclass
class Hostile:
    """What a hand-made sender does: maybe a manifest (then it waits for accept), then steps."""

    manifest: list[dict[str, Any]] | None
    steps: list[Step] = field(default_factory=list)
    #: Files verified before the protocol broke: they may keep their final names.
    verified: dict[str, bytes] = field(default_factory=dict)

    async def play(self, peer: HandmadePeer) -> None:
        if self.manifest is None:
            await peer.expect("ready")
        else:
            await peer.start_sending(self.manifest)
        for kind, value in self.steps:
            if kind == "data":
                await peer.send_data(value)
            elif kind == "binary":
                await peer.send_binary(value)
            elif kind == "json":
                await peer.send_json(value)
            elif kind == "text":
                await peer.send_text(value)
            elif kind == "checksums":
                await peer.send_checksums(*value)
            else:  # pragma: no cover - a typo in a test
                raise ValueError(kind)


async def receive_from_hostile(
    url: str, code: str, dest: Path, hostile: Hostile, expected: type[P2PCopyError],
    **receive_args: Any,
) -> tuple[P2PCopyError, dict[str, Any]]:
    """Our receive() against a hand-made sender; returns receive's error and the error
    message the sender was told (it must name the same class)."""
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(url, code, "sender") as peer:
            async with background(
                p2p_copy.receive(url, code, dest, progress="none", **receive_args)
            ) as task:
                await hostile.play(peer)
                with pytest.raises(expected) as info:
                    await task
                told = await peer.expect_error()
    assert type(info.value) is expected, repr(info.value)
    assert told["code"] == expected.wire_code, told
    assert_one_line(info.value)
    return info.value, told


async def cli_receive_from_hostile(
    processes: Processes, url: str, code: str, dest: Path, hostile: Hostile,
    *extra: str,
) -> tuple[int, str, dict[str, Any]]:
    """The receive CLI against a hand-made sender; returns exit code, stderr, what it told."""
    async with asyncio.timeout(SCENARIO_TIMEOUT + CLI_TIMEOUT):
        async with handmade_peer(url, code, "sender") as peer:
            proc = processes.start("receive", url, code, "--out", str(dest), *extra)
            await hostile.play(peer)
            returncode, err = await communicate(proc)
            told = await peer.expect_error()
    return returncode, err, told


# --- wrong message order, size lies: the sender breaks the protocol --------------------

_TEN = b"0123456789"

PROTOCOL_CASES: dict[str, Hostile] = {
    "data before manifest": Hostile(None, [("data", b"abc")]),
    "eof before manifest": Hostile(None, [("json", {"type": "eof"})]),
    "checksums before manifest": Hostile(None, [("checksums", (0, [sha256_hex(b"")]))]),
    "eof before all bytes": Hostile(
        [file_entry("a.bin", 10)], [("data", _TEN[:4]), ("json", {"type": "eof"})]
    ),
    "eof with no bytes at all": Hostile([file_entry("a.bin", 10)], [("json", {"type": "eof"})]),
    "checksums before the last byte": Hostile(
        [file_entry("a.bin", 10)], [("data", _TEN[:4]), ("checksums", (0, [sha256_hex(_TEN)]))]
    ),
    "checksums for the wrong file": Hostile(
        [file_entry("a.bin", 5), file_entry("b.bin", 5)],
        [("data", _TEN), ("checksums", (1, [sha256_hex(_TEN[5:])]))],
    ),
    "eof without checksums": Hostile(
        [file_entry("a.bin", 10)], [("data", _TEN), ("json", {"type": "eof"})]
    ),
    "more bytes than announced, one message": Hostile(
        [file_entry("a.bin", 10)], [("data", _TEN + b"extra")]
    ),
    "more bytes than announced, after the last": Hostile(
        [file_entry("a.bin", 10)],
        [("data", _TEN), ("checksums", (0, [sha256_hex(_TEN)])), ("data", b"x")],
        verified={"a.bin": _TEN},
    ),
    "bytes for an empty manifest": Hostile([], [("data", b"x")]),
    "a second manifest": Hostile(
        [file_entry("a.bin", 10)], [("json", {"type": "manifest", "version": 1, "entries": []})]
    ),
    "data message of unknown format": Hostile(
        [file_entry("a.bin", 10)], [("binary", b"\x07" + _TEN)]
    ),
    "data message without payload": Hostile([file_entry("a.bin", 10)], [("binary", b"\x00")]),
    "not JSON": Hostile([file_entry("a.bin", 10)], [("text", "{this is not json")]),
    "unknown message type": Hostile([file_entry("a.bin", 10)], [("json", {"type": "gift"})]),
    "done from the sender": Hostile([file_entry("a.bin", 10)], [("json", {"type": "done"})]),
    "data between manifest parts": Hostile(None, [
        ("json", {"type": "manifest", "version": 1, "entries": [file_entry("a", 1)],
                  "more": True}),
        ("data", b"x"),
    ]),
    "checksum not hex": Hostile(
        [file_entry("a.bin", 10)],
        [("data", _TEN), ("json", {"type": "checksums", "first": 0, "sha256": ["XYZ"]})],
    ),
    "negative size": Hostile(None, [("json", {"type": "manifest", "version": 1,
                                              "entries": [file_entry("a", -1)]})]),
    "size true": Hostile(None, [("json", {"type": "manifest", "version": 1,
                                          "entries": [file_entry("a", True)]})]),
    "size beyond 2**53": Hostile(None, [("json", {"type": "manifest", "version": 1,
                                                  "entries": [file_entry("a", 2**53 + 1)]})]),
    "mtime NaN": Hostile(None, [("text", '{"type":"manifest","version":1,'
                                         '"entries":[{"path":"a","size":0,"mtime":NaN}]}')]),
    "mtime with 400 digits": Hostile(None, [("json", {
        "type": "manifest", "version": 1, "entries": [file_entry("a", 0, mtime=10**400)]})]),
    "number with 5000 digits": Hostile(None, [("text", '{"type":"eof","x":' + "9" * 5000 + "}")]),
    "JSON nested 100000 deep": Hostile(None, [("text", "[" * 100_000 + "]" * 100_000)]),
    "error without a code": Hostile(None, [("json", {"type": "error", "message": "?"})]),
}


@pytest.mark.parametrize("case", list(PROTOCOL_CASES))
async def test_sender_breaking_protocol_is_refused(
    relay: Relay, tmp_path: Path, code: str, case: str
) -> None:
    """A sender that sends messages in the wrong order, or more or fewer bytes than it
    announced, makes receive() raise RemoteProtocolError and leaves nothing on disk but
    files verified before the violation."""
    dest = tmp_path / "dest"
    hostile = PROTOCOL_CASES[case]
    await receive_from_hostile(relay.url, code, dest, hostile, RemoteProtocolError)
    assert tree(tmp_path) <= {"dest"} | {f"dest/{name}" for name in hostile.verified}
    for name, content in hostile.verified.items():
        assert (dest / name).read_bytes() == content
    assert temp_files(tmp_path) == []


async def test_manifest_without_version_is_incompatible(
    relay: Relay, tmp_path: Path, code: str
) -> None:
    """A manifest without a version (p2p-copy 0.1.x) gives IncompatiblePeerError, not a crash."""
    hostile = Hostile(None, [("json", {"type": "manifest", "entries": []})])
    await receive_from_hostile(relay.url, code, tmp_path / "dest", hostile, IncompatiblePeerError)
    assert tree(tmp_path) == set()


@pytest.mark.parametrize("case", ["data before manifest", "eof before all bytes",
                                  "more bytes than announced, one message"])
async def test_cli_receiver_exits_8_on_protocol_violation(
    relay: Relay, processes: Processes, tmp_path: Path, code: str, case: str
) -> None:
    """The receive CLI exits 8 with one line on stderr when the sender breaks the protocol."""
    dest = tmp_path / "dest"
    returncode, err, told = await cli_receive_from_hostile(
        processes, relay.url, code, dest, PROTOCOL_CASES[case]
    )
    assert_cli_failed((returncode, err), 8)
    assert told["code"] == "protocol"
    assert tree(dest) == set()


# --- the receiver breaks the protocol: our sender ------------------------------------


async def test_done_instead_of_accept_is_refused(relay: Relay, tmp_path: Path, code: str) -> None:
    """A receiver that answers the manifest with ``done`` makes send() raise RemoteProtocolError."""
    src = make_file(tmp_path / "a.txt", b"hello")
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(relay.url, code, "receiver") as peer:
            async with background(p2p_copy.send(relay.url, code, [src], progress="none")) as task:
                await peer.expect("manifest")
                await peer.send_json({"type": "done"})
                with pytest.raises(RemoteProtocolError) as info:
                    await task
                told = await peer.expect_error()
    assert told["code"] == "protocol"
    assert_one_line(info.value)


async def test_done_before_eof_is_refused(relay: Relay, tmp_path: Path, code: str) -> None:
    """A receiver that says ``done`` while data still flows makes send() raise
    RemoteProtocolError instead of reporting success."""
    src = make_big_file(tmp_path / "big.bin", 64 * 2**20)
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(relay.url, code, "receiver") as peer:
            async with background(p2p_copy.send(relay.url, code, [src], progress="none")) as task:
                await peer.expect("manifest")
                await peer.send_json({"type": "accept"})
                first = await peer.recv()
                assert isinstance(first, bytes) and first[0] == 0
                await peer.send_json({"type": "done"})
                told = await peer.expect_error()  # skips the data still in flight
                with pytest.raises(RemoteProtocolError) as info:
                    await task
    assert told["code"] == "protocol"
    assert_one_line(info.value)


@pytest.mark.slow
async def test_a_receiver_that_stops_reading_does_not_hold_the_sender_forever(
        relay: Relay, tmp_path: Path, code: str) -> None:
    """A receiver that accepts and then reads nothing (issue 17, finding 12): once the relay
    and the sockets are full, the sender's send waits; after idle_timeout it gives up with
    TransferTimeoutError instead of waiting forever."""
    src = make_big_file(tmp_path / "big.bin", 512 * 2**20)
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(relay.url, code, "receiver") as peer:
            async with background(p2p_copy.send(relay.url, code, [src], progress="none",
                                                compress="never", idle_timeout=1)) as task:
                await peer.expect("manifest")
                await peer.send_json({"type": "accept"})
                with pytest.raises(TransferTimeoutError) as info:
                    await task  # before the fix: waits until the scenario's timeout
    assert "has not read anything for 1 s" in str(info.value)
    assert_one_line(info.value)


async def test_binary_from_receiver_is_refused(relay: Relay, tmp_path: Path, code: str) -> None:
    """A receiver that sends binary data to the sender makes send() raise RemoteProtocolError."""
    src = make_file(tmp_path / "a.txt", b"hello")
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(relay.url, code, "receiver") as peer:
            async with background(p2p_copy.send(relay.url, code, [src], progress="none")) as task:
                await peer.expect("manifest")
                await peer.send_binary(b"\x00surprise")
                with pytest.raises(RemoteProtocolError) as info:
                    await task
                told = await peer.expect_error()
    assert told["code"] == "protocol"
    assert_one_line(info.value)


async def test_cli_sender_exits_8_on_early_done(
    relay: Relay, processes: Processes, tmp_path: Path, code: str
) -> None:
    """The send CLI exits 8 with one line when the receiver says ``done`` out of turn."""
    src = make_file(tmp_path / "a.txt", b"hello")
    async with asyncio.timeout(SCENARIO_TIMEOUT + CLI_TIMEOUT):
        async with handmade_peer(relay.url, code, "receiver") as peer:
            proc = processes.start("send", relay.url, code, str(src))
            await peer.expect("manifest")
            await peer.send_json({"type": "done"})
            result = await communicate(proc)
    assert_cli_failed(result, 8)


# --- duplicate role ---------------------------------------------------------------------


@pytest.mark.parametrize("role", ["sender", "receiver"])
async def test_second_peer_with_same_role_gets_code_in_use(
    relay: Relay, tmp_path: Path, code: str, role: str
) -> None:
    """A second sender (or receiver) with a code already waiting gets CodeInUseError; the
    first one is left alone and completes once its partner comes."""
    src = make_file(tmp_path / "src" / "a.txt", b"first one wins")
    dest = tmp_path / "dest"

    def start(which: str, out: Path = dest) -> Coroutine[Any, Any, p2p_copy.TransferResult]:
        if which == "sender":
            return p2p_copy.send(relay.url, code, [src], progress="none")
        return p2p_copy.receive(relay.url, code, out, progress="none")

    other = "receiver" if role == "sender" else "sender"
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with background(start(role)) as first:
            await async_wait_until(lambda: relay.stats.waiting == 1, "the first peer to wait")
            with pytest.raises(CodeInUseError) as info:
                await start(role, tmp_path / "dest2")
            assert_one_line(info.value)
            assert not first.done()
            results = await asyncio.gather(first, start(other))
    assert all(len(r.files) == 1 for r in results)
    assert (dest / "a.txt").read_bytes() == b"first one wins"
    assert not (tmp_path / "dest2").exists()


@pytest.mark.slow
async def test_cli_second_sender_exits_5(
    relay: Relay, processes: Processes, tmp_path: Path, code: str
) -> None:
    """The send CLI exits 5 when another sender already waits with the code; the first
    sender still delivers to a receiver that comes afterwards."""
    src = make_file(tmp_path / "a.txt", b"payload")
    dest = tmp_path / "dest"
    async with asyncio.timeout(3 * CLI_TIMEOUT):
        first = processes.start("send", relay.url, code, str(src))
        await async_wait_until(lambda: relay.stats.waiting == 1, "the first sender to wait")
        second = await asyncio.to_thread(run_cli, "send", relay.url, code, str(src),
                                         timeout=CLI_TIMEOUT)
        assert_cli_failed(second, 5)
        assert first.poll() is None
        receiver = processes.start("receive", relay.url, code, "--out", str(dest))
        assert await communicate(receiver) == (0, "")
        assert await communicate(first) == (0, "")
    assert (dest / "a.txt").read_bytes() == b"payload"


# --- a peer killed or cancelled mid-transfer ---------------------------------------------

BIG = 300 * 2**20
#: All a receiver stopped part-way (killed, interrupted, cancelled) may leave behind.
KEPT = {".big.bin.p2p-copy-part", ".big.bin.p2p-copy-resume"}


@pytest.mark.slow
def test_receiver_killed_mid_transfer(processes: Processes, tmp_path: Path, code: str) -> None:
    """SIGKILL on the receiver while bytes arrive: the sender exits 6 (PeerGoneError), no
    process exits 0, and nothing appears under the file's final name."""
    _relay, url = processes.start_relay()
    src = make_big_file(tmp_path / "src" / "big.bin", BIG)
    dest = tmp_path / "dest"
    # Reconnect off: with it on, the sender would wait for the receiver to come back.
    receiver = processes.start("receive", url, code, "--out", str(dest))
    sender = processes.start("send", url, code, str(src), "--reconnect-timeout", "0")
    wait_until(lambda: temp_bytes(dest) > 0, "the first bytes to arrive", watch=[receiver, sender])
    receiver.kill()
    assert finish(receiver)[0] == -signal.SIGKILL
    result = finish(sender)
    assert result[0] != 0, "a transfer cut off part-way must never exit 0"
    assert_cli_failed(result, 6)
    assert not (dest / "big.bin").exists()
    # A killed process cannot tidy up: only its hidden part file (and the sidecar that
    # lets a re-run resume it) may remain.
    assert {p.name for p in dest.iterdir()} <= {".big.bin.p2p-copy-part",
                                                ".big.bin.p2p-copy-resume"}


@pytest.mark.slow
def test_sender_killed_mid_transfer(processes: Processes, tmp_path: Path, code: str) -> None:
    """SIGKILL on the sender while bytes flow (reconnect off): the receiver exits 6, never
    0, and leaves no file under its final name, only what a re-run resumes from."""
    _relay, url = processes.start_relay()
    src = make_big_file(tmp_path / "src" / "big.bin", BIG)
    dest = tmp_path / "dest"
    receiver = processes.start("receive", url, code, "--out", str(dest),
                               "--reconnect-timeout", "0")
    sender = processes.start("send", url, code, str(src))
    wait_until(lambda: temp_bytes(dest) > 0, "the first bytes to arrive", watch=[receiver, sender])
    sender.kill()
    assert finish(sender)[0] == -signal.SIGKILL
    result = finish(receiver)
    assert result[0] != 0, "a transfer cut off part-way must never exit 0"
    assert_cli_failed(result, 6)
    assert tree(dest) <= {".big.bin.p2p-copy-part", ".big.bin.p2p-copy-resume"}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_receiver_interrupted(processes: Processes, tmp_path: Path, code: str,
                                  sig: signal.Signals) -> None:
    """SIGTERM or SIGINT (Ctrl-C) on the receiver mid-transfer: it exits 130 keeping only
    its hidden part and sidecar (for a re-run to resume), and the sender exits 6."""
    _relay, url = processes.start_relay()
    src = make_big_file(tmp_path / "src" / "big.bin", BIG)
    dest = tmp_path / "dest"
    receiver = processes.start("receive", url, code, "--out", str(dest))
    sender = processes.start("send", url, code, str(src))
    wait_until(lambda: temp_bytes(dest) > 0, "the first bytes to arrive", watch=[receiver, sender])
    receiver.send_signal(sig)
    assert_cli_failed(finish(receiver), 130)
    assert_cli_failed(finish(sender), 6)
    assert tree(dest) <= KEPT


@both_backends
async def test_cancelled_receive(relay: Relay, tmp_path: Path, code: str) -> None:
    """Cancelling the receive task mid-transfer stays an asyncio cancellation (so timeouts
    and task groups work around receive()), the sender learns it as PeerGoneError, and only
    the hidden part and sidecar a re-run resumes from are left."""
    src = make_big_file(tmp_path / "src" / "big.bin", BIG)
    dest = tmp_path / "dest"
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with background(p2p_copy.send(relay.url, code, [src], progress="none")) as sender, \
                background(p2p_copy.receive(relay.url, code, dest, progress="none")) as receiver:
            await async_wait_until(lambda: temp_bytes(dest) > 0, "the first bytes")
            receiver.cancel()
            with pytest.raises(asyncio.CancelledError):
                await receiver
            with pytest.raises(PeerGoneError) as gone:
                await sender
    assert "cancelled" in str(gone.value)
    assert_one_line(gone.value)
    assert tree(dest) <= KEPT


@pytest.mark.slow
async def test_cancelled_receive_of_many_small_files(relay: Relay, tmp_path: Path,
                                                     code: str) -> None:
    """Cancelling while a worker thread is creating many small files still leaves no
    temporary file behind, not even one the thread created after the cancellation."""
    src = tmp_path / "src"
    for i in range(6000):
        make_file(src / f"d{i // 1000}" / f"f{i:05}.txt", b"x" * 100)
    dest = tmp_path / "dest"
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with background(p2p_copy.send(relay.url, code, [src], progress="none")) as sender, \
                background(p2p_copy.receive(relay.url, code, dest, progress="none")) as receiver:
            await async_wait_until(lambda: bool(temp_files(dest)), "the first temporary file")
            receiver.cancel()
            with pytest.raises(asyncio.CancelledError):
                await receiver
            with pytest.raises(PeerGoneError):
                await sender
    # A worker thread still writing after the cancellation would show up here late.
    await asyncio.sleep(0.5)
    assert temp_files(dest) == []


async def test_cancelled_send(relay: Relay, tmp_path: Path, code: str) -> None:
    """Cancelling the send task mid-transfer stays an asyncio cancellation; the receiver
    raises PeerGoneError and keeps nothing but what a re-run resumes from."""
    src = make_big_file(tmp_path / "src" / "big.bin", BIG)
    dest = tmp_path / "dest"
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with background(p2p_copy.send(relay.url, code, [src], progress="none")) as sender, \
                background(p2p_copy.receive(relay.url, code, dest, progress="none")) as receiver:
            await async_wait_until(lambda: temp_bytes(dest) > 0, "the first bytes")
            sender.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sender
            with pytest.raises(PeerGoneError) as gone:
                await receiver
    assert_one_line(gone.value)
    assert tree(dest) <= KEPT


async def test_cancel_while_preparing_waits_for_the_worker_thread(relay: Relay, tmp_path: Path,
                                                                  code: str) -> None:
    """A receive cancelled while prepare() runs in its worker thread cleans up only once that
    thread is done: suspend() never works on the same files beside it."""
    import threading

    from p2p_copy.display.progress import NoProgress
    from p2p_copy.peer.options import Options
    from p2p_copy.peer.receiving import receive_into
    from p2p_copy.protocol.messages import Entry
    from p2p_copy.storage.destination import Destination

    src = make_file(tmp_path / "src" / "a.bin", b"x" * 5000)
    dest = tmp_path / "dest"
    started, release = threading.Event(), threading.Event()
    log: list[str] = []

    class Slow(Destination):
        def prepare(self) -> None:
            log.append("prepare")
            started.set()
            release.wait(SCENARIO_TIMEOUT)
            super().prepare()
            log.append("prepared")

        def suspend(self) -> None:
            log.append("suspend")
            super().suspend()

        def abort(self) -> None:
            log.append("abort")
            super().abort()

    def sink(entries: Sequence[Entry], digest: str) -> Destination:
        return Slow(dest, entries, algorithm=digest)

    options = Options(reconnect_timeout=0)
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with background(p2p_copy.send(relay.url, code, [src], progress="none",
                                            reconnect_timeout=0)) as sender, \
                background(receive_into(relay.url, code, sink, options, NoProgress())) as receiver:
            await asyncio.to_thread(started.wait, SCENARIO_TIMEOUT)
            receiver.cancel()
            # Room for a clean-up that does not wait to run now (it must not).
            await asyncio.wait({receiver}, timeout=0.5)
            release.set()
            with pytest.raises(asyncio.CancelledError):
                await receiver
            with pytest.raises(PeerGoneError):
                await sender
    assert log == ["prepare", "prepared", "suspend"]


# --- codes that never pair ----------------------------------------------------------------


@pytest.mark.slow
async def test_wrong_room_never_pairs(tmp_path: Path, code: str) -> None:
    """A sender and a receiver whose codes differ in the room part never meet: both give up
    with TransferTimeoutError once the relay's peer timeout passes. (A typo in the secret
    part meets in the room and fails at once: tests/test_tampering.py.)"""
    src = make_file(tmp_path / "a.txt", b"never")
    async with asyncio.timeout(SCENARIO_TIMEOUT), running_relay(peer_timeout=1) as relay:
        results = await asyncio.gather(
            p2p_copy.send(relay.url, code, [src], progress="none"),
            p2p_copy.receive(relay.url, "x" + code, tmp_path / "dest", progress="none"),
            return_exceptions=True,
        )
    for result in results:
        assert type(result) is TransferTimeoutError, repr(result)
        assert_one_line(result)
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("role", ["sender", "receiver"])
async def test_wait_timeout(relay: Relay, tmp_path: Path, code: str, role: str) -> None:
    """``wait_timeout=`` gives up on a missing partner with TransferTimeoutError, well before
    the relay's own timeout, and frees the code on the relay."""
    src = make_file(tmp_path / "a.txt", b"x")
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        with pytest.raises(TransferTimeoutError) as info:
            if role == "sender":
                await p2p_copy.send(relay.url, code, [src], progress="none", wait_timeout=0.3)
            else:
                await p2p_copy.receive(relay.url, code, tmp_path / "dest", progress="none",
                                       wait_timeout=0.3)
        assert_one_line(info.value)
        await async_wait_until(lambda: relay.stats.waiting == 0, "the relay to free the code")
    assert not (tmp_path / "dest").exists()


@pytest.mark.slow
def test_cli_wrong_code_exits_4(processes: Processes, tmp_path: Path, code: str) -> None:
    """With a relay whose peer timeout is 1 s, send and receive whose codes differ in the room
    both exit 4; so does ``--wait-timeout`` on its own."""
    _relay, url = processes.start_relay(None, "--peer-timeout", "1")
    src = make_file(tmp_path / "a.txt", b"x")
    sender = processes.start("send", url, code, str(src))
    receiver = processes.start("receive", url, "x" + code, "--out", str(tmp_path / "dest"))
    assert_cli_failed(finish(sender), 4)
    assert_cli_failed(finish(receiver), 4)
    _relay2, url2 = processes.start_relay()
    alone = run_cli("receive", url2, code, "--out", str(tmp_path / "dest"),
                    "--wait-timeout", "0.3", timeout=CLI_TIMEOUT)
    assert_cli_failed(alone, 4)
    assert not (tmp_path / "dest").exists()


# --- tampered bytes -----------------------------------------------------------------------


@both_backends
async def test_wrong_checksum_discards_the_file(relay: Relay, tmp_path: Path, code: str) -> None:
    """A checksum that does not match the bytes gives IntegrityError: the damaged file never
    gets its final name, the earlier, verified file stays, no temporary file remains."""
    good, bad = b"good!", b"evil!"
    hostile = Hostile(
        [file_entry("a.bin", 5), file_entry("b.bin", 5)],
        [("data", good + bad), ("checksums", (0, [sha256_hex(good), sha256_hex(b"other")]))],
    )
    dest = tmp_path / "dest"
    await receive_from_hostile(relay.url, code, dest, hostile, IntegrityError)
    assert tree(dest) == {"a.bin"}
    assert (dest / "a.bin").read_bytes() == good


@both_backends
async def test_flipped_bit_in_data(relay: Relay, tmp_path: Path, code: str) -> None:
    """One data bit flipped after its checksum was computed gives IntegrityError."""
    data = bytes(range(256)) * 40
    flipped = data[:-1] + bytes([data[-1] ^ 0x80])
    hostile = Hostile([file_entry("a.bin", len(data))],
                      [("data", flipped), ("checksums", (0, [sha256_hex(data)]))])
    dest = tmp_path / "dest"
    await receive_from_hostile(relay.url, code, dest, hostile, IntegrityError)
    assert tree(dest) == set()


async def test_tampered_stream_fails_on_both_sides(relay: Relay, tmp_path: Path,
                                                   code: str) -> None:
    """Our sender, with a bit flipped on the way by a proxy, and our receiver: the receiver
    raises IntegrityError and the sender learns it through the ``error`` message."""
    src = tmp_path / "src"
    make_file(src / "a.bin", b"a" * 1000)
    make_file(src / "b.bin", b"b" * 1000)  # the flipped bit is the stream's last: in b.bin
    dest = tmp_path / "dest"
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with tampering_proxy(relay.url, flip_last_byte_once()) as proxy_url:
            sent, got = await asyncio.gather(
                # Plain protocol: encrypted, the same flip is a TamperingError
                # (tests/test_tampering.py); here the SHA-256 check must catch it.
                p2p_copy.send(proxy_url, code, [src], progress="none", encrypt=False),
                p2p_copy.receive(relay.url, code, dest, progress="none", encrypt=False),
                return_exceptions=True,
            )
    assert type(got) is IntegrityError, repr(got)
    assert type(sent) is IntegrityError, repr(sent)
    assert "b.bin" in str(got)
    assert_one_line(got)
    assert_one_line(sent)
    # a.bin was verified (same checksums message, first entry) before b.bin failed: it
    # stays, intact; b.bin never gets its final name.
    assert tree(dest) == {"src", "src/a.bin"}
    assert (dest / "src" / "a.bin").read_bytes() == b"a" * 1000


async def test_cli_integrity_exits_9(relay: Relay, processes: Processes, tmp_path: Path,
                                     code: str) -> None:
    """The receive CLI exits 9 on a checksum mismatch and keeps no file."""
    hostile = Hostile([file_entry("a.bin", 5)],
                      [("data", b"12345"), ("checksums", (0, [sha256_hex(b"54321")]))])
    dest = tmp_path / "dest"
    returncode, err, told = await cli_receive_from_hostile(processes, relay.url, code, dest,
                                                           hostile)
    assert_cli_failed((returncode, err), 9)
    assert told["code"] == "integrity"
    assert tree(dest) == set()


# --- unsafe paths ---------------------------------------------------------------------------

UNSAFE_MANIFESTS: dict[str, list[dict[str, Any]]] = {
    "parent": [file_entry("../evil", 4)],
    "absolute": [file_entry("/etc/p2p-copy-evil", 4)],
    "parent in the middle": [file_entry("a/../../evil", 4)],
    "dot component": [file_entry("./evil", 4)],
    "empty component": [file_entry("a//evil", 4)],
    "trailing slash": [file_entry("evil/", 4)],
    "empty name": [file_entry("", 4)],
    "drive letter": [file_entry("C:evil", 4)],
    "drive letter absolute": [file_entry("C:/evil", 4)],
    "backslash": [file_entry("a\\b", 4)],
    "backslash parent": [file_entry("..\\evil", 4)],
    "escape sequence": [file_entry("red\x1b[31m.txt", 4)],
    "newline": [file_entry("two\nlines.txt", 4)],
    "NUL": [file_entry("nul\x00.txt", 4)],
    "C1 control": [file_entry("csi\x9b2J.txt", 4)],
    "too long": [file_entry("x" * 256, 4)],
    "case collision": [file_entry("A.txt", 2), file_entry("a.txt", 2)],
    "unicode collision": [file_entry("caf\u00e9", 2), file_entry("cafe\u0301", 2)],
    "same name twice": [file_entry("a.txt", 2), file_entry("a.txt", 2)],
    "file as folder": [file_entry("a", 2), file_entry("a/b", 2)],
    "folder entry as file parent": [file_entry("a", 2), {"path": "a/b", "kind": "dir"}],
    "file and folder with one name": [{"path": "a", "kind": "dir"}, file_entry("A", 2)],
    "parent folder entry": [{"path": "..", "kind": "dir"}],
    "evil entry after a good one": [file_entry("ok.txt", 2), file_entry("../evil", 2)],
}


@both_backends
@pytest.mark.parametrize("case", list(UNSAFE_MANIFESTS))
async def test_unsafe_path_is_refused(relay: Relay, tmp_path: Path, code: str, case: str) -> None:
    """A manifest with a name that could escape or damage the destination gives
    UnsafePathError before any byte is written, inside or outside the destination."""
    parent = tmp_path / "parent"
    dest = parent / "dest"
    dest.mkdir(parents=True)
    assert not Path("/etc/p2p-copy-evil").exists()
    hostile = Hostile(None, [("json", {"type": "manifest", "version": 1,
                                       "entries": UNSAFE_MANIFESTS[case]})])
    _error, told = await receive_from_hostile(relay.url, code, dest, hostile, UnsafePathError)
    assert tree(tmp_path) == {"parent", "parent/dest"}
    assert not Path("/etc/p2p-copy-evil").exists()
    assert not _CONTROL.search(told["message"])


async def test_names_the_receiver_would_refuse_fail_the_sender_with_its_own_error(
        relay: Relay, tmp_path: Path, code: str) -> None:
    """Two names one file on a case-insensitive disk: the sender, which checks its names
    while the receiver reads the manifest, says so itself; nothing is written."""
    top = tmp_path / "top"
    top.mkdir()
    (top / "Notes.txt").write_bytes(b"one")
    (top / "notes.txt").write_bytes(b"two")
    dest = tmp_path / "dest"
    sent, received = await asyncio.wait_for(asyncio.gather(
        p2p_copy.send(relay.url, code, [top], progress="none"),
        p2p_copy.receive(relay.url, code, dest, progress="none"),
        return_exceptions=True), 30)
    assert isinstance(sent, UsageError), sent
    assert "Cannot send these names" in str(sent) and "notes.txt" in str(sent).lower()
    assert isinstance(received, P2PCopyError), received
    assert tree(dest) == set()


async def test_cli_unsafe_path_exits_10(relay: Relay, processes: Processes, tmp_path: Path,
                                        code: str) -> None:
    """The receive CLI exits 10 on a name with '..' and writes nothing next to its folder."""
    parent = tmp_path / "parent"
    dest = parent / "dest"
    hostile = Hostile(None, [("json", {"type": "manifest", "version": 1,
                                       "entries": [file_entry("a/../../evil", 4)]})])
    returncode, err, told = await cli_receive_from_hostile(processes, relay.url, code, dest,
                                                           hostile)
    assert_cli_failed((returncode, err), 10)
    assert told["code"] == "unsafe_path"
    assert tree(tmp_path) == set()


async def test_cli_control_characters_are_escaped(relay: Relay, processes: Processes,
                                                  tmp_path: Path, code: str) -> None:
    """A name with an escape sequence and a newline is refused with exit 10, and the one
    line the CLI prints shows the name escaped, not interpreted by the terminal."""
    hostile = Hostile(None, [("json", {"type": "manifest", "version": 1,
                                       "entries": [file_entry("a\x1b[2J\nb", 4)]})])
    returncode, err, _told = await cli_receive_from_hostile(processes, relay.url, code,
                                                            tmp_path / "dest", hostile)
    line = assert_cli_failed((returncode, err), 10)
    assert "\\x1b" in line


# --- links and existing files in the destination ----------------------------------------


@both_backends
async def test_symlinked_folder_in_destination(relay: Relay, tmp_path: Path, code: str) -> None:
    """A manifest writing ``sub/x`` where ``sub`` is a link to another folder is refused with
    UnsafePathError; nothing appears in the link's target."""
    dest, elsewhere = tmp_path / "dest", tmp_path / "elsewhere"
    dest.mkdir()
    elsewhere.mkdir()
    (dest / "sub").symlink_to(elsewhere, target_is_directory=True)
    hostile = Hostile(None, [("json", {"type": "manifest", "version": 1,
                                       "entries": [file_entry("sub/x", 3)]})])
    await receive_from_hostile(relay.url, code, dest, hostile, UnsafePathError)
    assert list(elsewhere.iterdir()) == []
    assert tree(dest) == {"sub"} and (dest / "sub").is_symlink()


@both_backends
@pytest.mark.parametrize("overwrite", [False, True])
async def test_symlinked_file_in_destination(relay: Relay, tmp_path: Path, code: str,
                                             overwrite: bool) -> None:
    """A file whose final name is a link is refused (even with overwrite); the file the
    link points to keeps its content."""
    dest, target = tmp_path / "dest", make_file(tmp_path / "elsewhere" / "t.txt", b"mine")
    dest.mkdir()
    (dest / "x").symlink_to(target)
    hostile = Hostile(None, [("json", {"type": "manifest", "version": 1,
                                       "entries": [file_entry("x", 3)]})])
    await receive_from_hostile(relay.url, code, dest, hostile, UnsafePathError,
                               overwrite=overwrite)
    assert target.read_bytes() == b"mine"
    assert (dest / "x").is_symlink()


@both_backends
async def test_symlink_planted_after_accept(relay: Relay, tmp_path: Path, code: str) -> None:
    """A link planted in the destination after the manifest was checked is still never
    written through: UnsafePathError, and the link's target stays empty."""
    dest, elsewhere = tmp_path / "dest", tmp_path / "elsewhere"
    elsewhere.mkdir()
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(relay.url, code, "sender") as peer:
            async with background(
                p2p_copy.receive(relay.url, code, dest, progress="none")
            ) as task:
                await peer.start_sending([file_entry("sub/x", 3)])
                (dest / "sub").symlink_to(elsewhere, target_is_directory=True)
                await peer.send_data(b"abc")
                with pytest.raises(UnsafePathError) as info:
                    await task
                told = await peer.expect_error()
    assert told["code"] == "unsafe_path"
    assert_one_line(info.value)
    assert list(elsewhere.iterdir()) == []
    assert tree(dest) == {"sub"}


@both_backends
async def test_file_planted_after_accept_is_kept(relay: Relay, tmp_path: Path,
                                                 code: str) -> None:
    """A file (or link) that appears under the final name while receiving is left as it is:
    DestinationExistsError, and the received copy is discarded."""
    dest, target = tmp_path / "dest", make_file(tmp_path / "elsewhere" / "t.txt", b"mine")
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(relay.url, code, "sender") as peer:
            async with background(
                p2p_copy.receive(relay.url, code, dest, progress="none")
            ) as task:
                await peer.start_sending([file_entry("x", 3)])
                await peer.send_data(b"abc")
                (dest / "x").symlink_to(target)
                await peer.send_checksums(0, [sha256_hex(b"abc")])
                with pytest.raises(DestinationExistsError):
                    await task
                told = await peer.expect_error()
    assert told["code"] == "exists"
    assert target.read_bytes() == b"mine"
    assert (dest / "x").is_symlink()
    assert temp_files(dest) == []


@both_backends
async def test_existing_file_is_kept(relay: Relay, tmp_path: Path, code: str) -> None:
    """An existing file is not replaced without overwrite: the receiver raises
    DestinationExistsError, the sender gets the same class, the file keeps its content."""
    src = make_file(tmp_path / "src" / "a.txt", b"new content")
    dest = tmp_path / "dest"
    make_file(dest / "a.txt", b"old content")
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        sent, got = await asyncio.gather(
            p2p_copy.send(relay.url, code, [src], progress="none"),
            p2p_copy.receive(relay.url, code, dest, progress="none"),
            return_exceptions=True,
        )
    assert type(got) is DestinationExistsError, repr(got)
    assert type(sent) is DestinationExistsError, repr(sent)
    assert "receiver" in str(sent)
    assert_one_line(got)
    assert_one_line(sent)
    assert (dest / "a.txt").read_bytes() == b"old content"
    assert tree(dest) == {"a.txt"}


@both_backends
async def test_existing_file_replaced_with_overwrite(relay: Relay, tmp_path: Path,
                                                     code: str) -> None:
    """With overwrite=True the same transfer succeeds and replaces the file."""
    src = make_file(tmp_path / "src" / "a.txt", b"new content")
    dest = tmp_path / "dest"
    make_file(dest / "a.txt", b"old content")
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        await asyncio.gather(
            p2p_copy.send(relay.url, code, [src], progress="none"),
            p2p_copy.receive(relay.url, code, dest, progress="none", overwrite=True),
        )
    assert (dest / "a.txt").read_bytes() == b"new content"
    assert tree(dest) == {"a.txt"}


@both_backends
async def test_existing_file_where_folder_is_needed(relay: Relay, tmp_path: Path,
                                                    code: str) -> None:
    """A file in the destination where the manifest needs a folder is refused with
    DestinationExistsError (even with overwrite) and keeps its content."""
    dest = tmp_path / "dest"
    make_file(dest / "a", b"a file")
    hostile = Hostile(None, [("json", {"type": "manifest", "version": 1,
                                       "entries": [file_entry("a/b", 1)]})])
    await receive_from_hostile(relay.url, code, dest, hostile, DestinationExistsError,
                               overwrite=True)
    assert (dest / "a").read_bytes() == b"a file"


def test_cli_existing_file_exits_11(processes: Processes, tmp_path: Path, code: str) -> None:
    """Both CLIs exit 11 when the receiver's file exists; the file keeps its content."""
    _relay, url = processes.start_relay()
    src = make_file(tmp_path / "src" / "a.txt", b"new")
    dest = tmp_path / "dest"
    make_file(dest / "a.txt", b"old")
    receiver = processes.start("receive", url, code, "--out", str(dest))
    sender = processes.start("send", url, code, str(src))
    assert_cli_failed(finish(receiver), 11)
    assert_cli_failed(finish(sender), 11)
    assert (dest / "a.txt").read_bytes() == b"old"
    assert tree(dest) == {"a.txt"}


# --- the peer reports an error ------------------------------------------------------------

REPORTED: dict[str, type[P2PCopyError]] = {
    "exists": DestinationExistsError,
    "disk_full": DiskFullError,
    "unsafe_path": UnsafePathError,
    "integrity": IntegrityError,
    "incompatible": IncompatiblePeerError,
    "usage": PeerGoneError,  # the peer stopped for its own reasons; our arguments are fine
    "timeout": TransferTimeoutError,
    "cancelled": PeerGoneError,
    "peer_gone": PeerGoneError,
    "protocol": RemoteProtocolError,
    "internal": P2PCopyError,
    "no-such-code": P2PCopyError,
}


@pytest.mark.parametrize("wire_code", list(REPORTED))
async def test_receiver_error_reaches_sender(relay: Relay, tmp_path: Path, code: str,
                                             wire_code: str) -> None:
    """An ``error`` from the receiver makes send() raise the class its code names (an
    unknown code still gives a P2PCopyError), with the receiver's words in one line."""
    src = make_file(tmp_path / "a.txt", b"hello")
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(relay.url, code, "receiver") as peer:
            async with background(p2p_copy.send(relay.url, code, [src], progress="none")) as task:
                await peer.expect("manifest")
                await peer.send_json({"type": "error", "code": wire_code,
                                      "message": "it went wrong over here"})
                with pytest.raises(P2PCopyError) as info:
                    await task
    assert type(info.value) is REPORTED[wire_code], repr(info.value)
    assert "it went wrong over here" in str(info.value)
    assert_one_line(info.value)


async def test_sender_error_reaches_receiver(relay: Relay, tmp_path: Path, code: str) -> None:
    """A sender that stops mid-stream with its own ``usage`` error is, for the receiver, a
    peer gone (exit 6, not "bad arguments"), and the partial file is dropped."""
    hostile = Hostile([file_entry("a.bin", 10)], [
        ("data", b"12345"),
        ("json", {"type": "error", "code": "usage", "message": "a.bin shrank while sending"}),
    ])
    dest = tmp_path / "dest"
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(relay.url, code, "sender") as peer:
            async with background(
                p2p_copy.receive(relay.url, code, dest, progress="none")
            ) as task:
                await hostile.play(peer)
                with pytest.raises(PeerGoneError) as info:
                    await task
    assert "shrank" in str(info.value)
    assert tree(dest) == set()


async def test_hostile_error_message_cannot_control_the_terminal(
    relay: Relay, processes: Processes, tmp_path: Path, code: str
) -> None:
    """A peer's error text with escape sequences and newlines reaches us as one clean line,
    from the API and from the CLI."""
    evil = "disk \x1b[2J\x1b[31mfull\nFAKE: all files received\r"
    src = make_file(tmp_path / "a.txt", b"hello")
    async with asyncio.timeout(SCENARIO_TIMEOUT + CLI_TIMEOUT):
        async with handmade_peer(relay.url, code, "receiver") as peer:
            async with background(p2p_copy.send(relay.url, code, [src], progress="none")) as task:
                await peer.expect("manifest")
                await peer.send_json({"type": "error", "code": "disk_full", "message": evil})
                with pytest.raises(DiskFullError) as info:
                    await task
        assert_one_line(info.value)
        async with handmade_peer(relay.url, code, "receiver") as peer:
            proc = processes.start("send", relay.url, code, str(src))
            await peer.expect("manifest")
            await peer.send_json({"type": "error", "code": "disk_full", "message": evil})
            result = await communicate(proc)
    assert_cli_failed(result, 12)


# --- disk space ----------------------------------------------------------------------------


@both_backends
async def test_announced_size_beyond_free_space(relay: Relay, tmp_path: Path, code: str) -> None:
    """A manifest announcing 2**50 bytes gives DiskFullError before ``accept`` and before
    any write."""
    dest = tmp_path / "dest"
    hostile = Hostile(None, [("json", {"type": "manifest", "version": 1,
                                       "entries": [file_entry("huge.bin", 2**50)]})])
    # receive_from_hostile checks that ``error``, not ``accept``, answered the manifest.
    await receive_from_hostile(relay.url, code, dest, hostile, DiskFullError)
    assert tree(dest) == set()


@both_backends
async def test_cli_disk_full_exits_12(relay: Relay, processes: Processes, tmp_path: Path,
                                      code: str) -> None:
    """The receive CLI exits 12 when the announced bytes cannot fit."""
    hostile = Hostile(None, [("json", {"type": "manifest", "version": 1, "entries": [
        file_entry("a.bin", 2**49), file_entry("b.bin", 2**49)]})])
    returncode, err, told = await cli_receive_from_hostile(processes, relay.url, code,
                                                           tmp_path / "dest", hostile)
    assert_cli_failed((returncode, err), 12)
    assert told["code"] == "disk_full"
    assert tree(tmp_path / "dest") == set()


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path``, or skip the test if mounting is not allowed."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


@both_backends
async def test_small_disk_refused_up_front(relay: Relay, tmp_path: Path, code: str) -> None:
    """Sending 4 MiB to a 1 MiB file system gives DiskFullError on both sides and leaves
    the small disk empty."""
    src = make_big_file(tmp_path / "src" / "four.bin", 4 * 2**20)
    with small_tmpfs(tmp_path / "small", "1m") as small:
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            sent, got = await asyncio.gather(
                p2p_copy.send(relay.url, code, [src], progress="none"),
                p2p_copy.receive(relay.url, code, small / "dest", progress="none"),
                return_exceptions=True,
            )
        assert type(got) is DiskFullError, repr(got)
        assert type(sent) is DiskFullError, repr(sent)
        assert_one_line(got)
        assert tree(small) <= {"dest"}
        assert temp_files(small) == []


@both_backends
async def test_disk_filling_up_while_writing(relay: Relay, tmp_path: Path, code: str) -> None:
    """When the disk fills up after the space check (ENOSPC while writing), receive()
    raises DiskFullError, tells the sender, and removes its temporary file."""
    size = 4 * 2**20
    data = os.urandom(size)
    with small_tmpfs(tmp_path / "small", "24m") as small:
        dest = small / "dest"
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            async with handmade_peer(relay.url, code, "sender") as peer:
                async with background(
                    p2p_copy.receive(relay.url, code, dest, progress="none")
                ) as task:
                    await peer.start_sending([file_entry("four.bin", size)])
                    # Someone else fills the disk, leaving less than the file needs.
                    free = os.statvfs(small).f_bavail * os.statvfs(small).f_frsize
                    with open(small / "filler", "wb") as f:
                        f.write(b"\xff" * (free - 2**20))
                    chunk = 256 * 1024
                    with contextlib.suppress(ConnectionClosed):  # the receiver may hang up early
                        for start in range(0, size, chunk):
                            await peer.send_data(data[start:start + chunk])
                        await peer.send_checksums(0, [sha256_hex(data)])
                        await peer.send_json({"type": "eof"})
                    with pytest.raises(DiskFullError) as info:
                        await task
                    told = await peer.expect_error()
        assert told["code"] == "disk_full"
        assert_one_line(info.value)
        assert tree(small) == {"dest", "filler"}
        assert temp_files(small) == []


# --- the relay cannot be used ----------------------------------------------------------


@pytest.mark.parametrize("role", ["sender", "receiver"])
async def test_relay_unreachable(tmp_path: Path, role: str) -> None:
    """A relay address where nothing listens gives RelayUnreachableError naming it."""
    src = make_file(tmp_path / "a.txt", b"x")
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        with pytest.raises(RelayUnreachableError) as info:
            if role == "sender":
                await p2p_copy.send(url, "1-c", [src], progress="none")
            else:
                await p2p_copy.receive(url, "1-c", tmp_path / "dest", progress="none")
    assert f"127.0.0.1:{port}" in str(info.value)
    assert_one_line(info.value)
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765", "127.0.0.1:8765", "ws://",
                                 "ftp://127.0.0.1/x", ""])
async def test_bad_relay_url(tmp_path: Path, url: str) -> None:
    """A relay address that is not ws:// or wss:// gives UsageError without connecting."""
    src = make_file(tmp_path / "a.txt", b"x")
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        with pytest.raises(UsageError) as info:
            await p2p_copy.send(url, "1-c", [src], progress="none")
        assert_one_line(info.value)
        with pytest.raises(UsageError):
            await p2p_copy.receive(url, "1-c", tmp_path / "dest", progress="none")
    assert not (tmp_path / "dest").exists()


def test_cli_relay_unreachable_and_bad_url(tmp_path: Path) -> None:
    """The CLI exits 3 naming the address when nothing listens, and 2 for an http:// URL."""
    src = make_file(tmp_path / "a.txt", b"x")
    port = free_port()
    refused = run_cli("send", f"ws://127.0.0.1:{port}", "1-c", str(src), timeout=CLI_TIMEOUT)
    line = assert_cli_failed(refused, 3)
    assert f"127.0.0.1:{port}" in line
    refused = run_cli("receive", f"ws://127.0.0.1:{port}", "1-c", "--out", str(tmp_path / "d"),
                      timeout=CLI_TIMEOUT)
    assert_cli_failed(refused, 3)
    bad = run_cli("send", "http://127.0.0.1:8765", "1-c", str(src), timeout=CLI_TIMEOUT)
    assert_cli_failed(bad, 2)
    assert not (tmp_path / "d").exists()


# --- more hostile manifests --------------------------------------------------------------


@both_backends
@pytest.mark.parametrize("kind", ["file", "dir"])
async def test_mtime_the_system_cannot_store(relay: Relay, tmp_path: Path, code: str,
                                             kind: str) -> None:
    """A modification time far beyond what the file system can store (1e20 s) ends in a
    clear RemoteProtocolError, not a crash, and leaves no temporary file."""
    data = b"abc"
    if kind == "file":
        entries = [file_entry("a.bin", 3, mtime=1e20)]
    else:
        entries = [{"path": "d", "kind": "dir", "mtime": 1e20}, file_entry("d/a.bin", 3)]
    hostile = Hostile(entries, [("data", data), ("checksums", (0, [sha256_hex(data)])),
                                ("json", {"type": "eof"})])
    dest = tmp_path / "dest"
    await receive_from_hostile(relay.url, code, dest, hostile, RemoteProtocolError)
    if kind == "file":
        assert tree(dest) == set()
    else:
        # The folder's time is set last, after its file was verified: the file stays.
        assert tree(dest) == {"d", "d/a.bin"}
        assert (dest / "d" / "a.bin").read_bytes() == data


@both_backends
async def test_damaged_file_keeps_the_old_one_with_overwrite(relay: Relay, tmp_path: Path,
                                                             code: str) -> None:
    """With overwrite, a file that arrives damaged does not replace the existing one."""
    dest = tmp_path / "dest"
    make_file(dest / "a.bin", b"old content")
    hostile = Hostile([file_entry("a.bin", 5)],
                      [("data", b"12345"), ("checksums", (0, [sha256_hex(b"54321")]))])
    await receive_from_hostile(relay.url, code, dest, hostile, IntegrityError, overwrite=True)
    assert (dest / "a.bin").read_bytes() == b"old content"
    assert tree(dest) == {"a.bin"}


@both_backends
async def test_folder_where_a_file_goes(relay: Relay, tmp_path: Path, code: str) -> None:
    """A folder in the destination where the manifest has a file is refused with
    DestinationExistsError even with overwrite, and the folder keeps its content."""
    dest = tmp_path / "dest"
    make_file(dest / "a" / "inside.txt", b"keep")
    hostile = Hostile(None, [("json", {"type": "manifest", "version": 1,
                                       "entries": [file_entry("a", 1)]})])
    await receive_from_hostile(relay.url, code, dest, hostile, DestinationExistsError,
                               overwrite=True)
    assert (dest / "a" / "inside.txt").read_bytes() == b"keep"
    assert tree(dest) == {"a", "a/inside.txt"}


async def test_timeout_around_receive_raises_timeout_error(relay: Relay, tmp_path: Path,
                                                           code: str) -> None:
    """asyncio.timeout() around receive() raises TimeoutError, as around any coroutine."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await p2p_copy.receive(relay.url, code, tmp_path / "dest", progress="none")
    assert not (tmp_path / "dest").exists()


async def test_cancelled_while_waiting_for_the_sender(relay: Relay, tmp_path: Path,
                                                      code: str) -> None:
    """Cancelling a receive that still waits for its sender propagates the cancellation,
    frees the code on the relay and creates nothing."""
    dest = tmp_path / "dest"
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with background(p2p_copy.receive(relay.url, code, dest, progress="none")) as task:
            await async_wait_until(lambda: relay.stats.waiting == 1, "the receiver to wait")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await async_wait_until(lambda: relay.stats.waiting == 0, "the relay to free the code")
    assert not dest.exists()


async def test_message_too_big_for_the_relay(relay: Relay, tmp_path: Path, code: str) -> None:
    """A sender whose message exceeds the relay's limit is cut off by the relay; our
    receiver raises PeerGoneError and keeps nothing."""
    size = 3 * 2**20
    dest = tmp_path / "dest"
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(relay.url, code, "sender") as peer:
            async with background(
                p2p_copy.receive(relay.url, code, dest, progress="none", reconnect_timeout=0)
            ) as task:
                await peer.start_sending([file_entry("a.bin", size)])
                with contextlib.suppress(ConnectionClosed):
                    await peer.send_data(b"\x01" * size)
                with pytest.raises(PeerGoneError) as info:
                    await task
    assert_one_line(info.value)
    assert tree(dest) == set()


async def test_message_too_big_for_the_receiver(tmp_path: Path, code: str) -> None:
    """Through a relay with a larger limit, a data message beyond what our receiver accepts
    gives RemoteProtocolError (not a network error) and keeps nothing."""
    size = 3 * 2**20
    dest = tmp_path / "dest"
    async with asyncio.timeout(SCENARIO_TIMEOUT), running_relay(max_message_size=2**23) as relay:
        async with handmade_peer(relay.url, code, "sender") as peer:
            async with background(
                p2p_copy.receive(relay.url, code, dest, progress="none")
            ) as task:
                await peer.start_sending([file_entry("a.bin", size)])
                await peer.send_data(b"\x01" * size)
                with pytest.raises(RemoteProtocolError) as info:
                    await task
    assert_one_line(info.value)
    assert tree(dest) == set()
