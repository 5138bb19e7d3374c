"""send_blocking / receive_blocking: the same transfers for code that does not await.

They run on a private loop in a worker thread, so they are tried from plain threads,
from inside a running loop, after nest_asyncio.apply() (in a subprocess: its patches are
for good) and under Ctrl-C (in a subprocess that gets a real SIGINT).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import p2p_copy
from p2p_copy import (
    PeerGoneError,
    RelayUnreachableError,
    TransferTimeoutError,
    UsageError,
)
from p2p_copy.relay import Relay

from .conftest import Processes, cli_env, free_port

#: Upper bound for one transfer (blocking calls cannot be cut short by asyncio.timeout).
TRANSFER_TIMEOUT = 60.0
SCENARIO_TIMEOUT = 60.0
TEMP_SUFFIX = ".p2p-copy-part"


@pytest.fixture
def code() -> str:
    """A fresh code, so that no two tests can ever meet on a relay."""
    return f"{uuid.uuid4().hex[:12]}-blocking"


def files_under(root: Path) -> list[Path]:
    """Every file under ``root``, hidden temporary ones included."""
    return [Path(d) / f for d, _dirs, names in os.walk(root) for f in names]


def temp_bytes(root: Path) -> int:
    total = 0
    for path in files_under(root):
        if path.name.endswith(TEMP_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
    return total


def transfer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("p2p-copy")]


def test_two_plain_threads(processes: Processes, tmp_path: Path, code: str) -> None:
    """A sender and a receiver, each a blocking call in its own plain thread, through a
    relay process: the folder arrives intact and no worker thread is left behind."""
    _relay, url = processes.start_relay()
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    data = os.urandom(3 * 2**20 + 5)
    (src / "sub" / "data.bin").write_bytes(data)
    (src / "empty").write_bytes(b"")
    with ThreadPoolExecutor(2) as pool:
        got = pool.submit(p2p_copy.receive_blocking, url, code, tmp_path / "out",
                          progress="none", wait_timeout=30)
        sent = pool.submit(p2p_copy.send_blocking, url, code, [src], progress="none",
                           wait_timeout=30)
        received, delivered = got.result(TRANSFER_TIMEOUT), sent.result(TRANSFER_TIMEOUT)
    assert (tmp_path / "out" / "src" / "sub" / "data.bin").read_bytes() == data
    assert (tmp_path / "out" / "src" / "empty").read_bytes() == b""
    assert received.role == "receiver" and delivered.role == "sender"
    assert received.files == delivered.files
    assert transfer_threads() == []


async def test_blocking_call_inside_a_running_loop(
    processes: Processes, tmp_path: Path, code: str
) -> None:
    """receive_blocking called straight from a coroutine (as from a notebook cell) works,
    and the caller's loop is the same, still running, afterwards."""
    _relay, url = processes.start_relay()
    (tmp_path / "a.txt").write_bytes(b"from a thread")
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as pool:
        sent = pool.submit(p2p_copy.send_blocking, url, code, [tmp_path / "a.txt"],
                           progress="none", wait_timeout=30)
        got = p2p_copy.receive_blocking(url, code, tmp_path / "out", progress="none",
                                        wait_timeout=30)
        delivered = sent.result(TRANSFER_TIMEOUT)
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"from a thread"
    assert got.files == delivered.files
    assert asyncio.get_running_loop() is loop and loop.is_running()
    await asyncio.sleep(0)


async def test_a_blocking_call_to_a_relay_on_its_own_loop_says_so_at_once(
        relay: Relay, tmp_path: Path, code: str) -> None:
    """A relay started in this loop (a Relay() in one notebook cell) and a blocking call
    made on the same loop (the next cell) would wait for each other until the call gives
    up (~20 s before): the call refuses at once, naming what to use instead."""
    (tmp_path / "a.txt").write_text("x")
    for call in (lambda: p2p_copy.send_blocking(relay.url, code, [tmp_path / "a.txt"],
                                                progress="none"),
                 lambda: p2p_copy.receive_object_blocking(relay.url, code, progress="none")):
        with pytest.raises(UsageError, match=r"runs in this event loop.*await p2p_copy\."):
            call()
    assert relay.stats.connections == 0  # refused before connecting


NEST_ASYNCIO_SCRIPT = """
import asyncio, sys, threading
import nest_asyncio
import p2p_copy

url, code, src, dest = sys.argv[1:5]

def send():
    p2p_copy.send_blocking(url, code + "-1", [src], progress="none", wait_timeout=30)
    p2p_copy.send_blocking(url, code + "-2", [src], progress="none", wait_timeout=30)

async def cell():
    # What a notebook does: patch the kernel's running loop, then run a blocking transfer.
    nest_asyncio.apply()
    loop = asyncio.get_running_loop()
    assert getattr(loop, "_nest_patched", False)
    p2p_copy.receive_blocking(url, code + "-1", dest + "/1", progress="none", wait_timeout=30)
    # The patched loop still nests afterwards.
    loop.run_until_complete(asyncio.sleep(0))

sender = threading.Thread(target=send)
sender.start()
asyncio.run(cell())
# And from plain code, with asyncio patched for good.
p2p_copy.receive_blocking(url, code + "-2", dest + "/2", progress="none", wait_timeout=30)
sender.join(30)
print("ok")
"""


@pytest.mark.slow
def test_blocking_calls_after_nest_asyncio(
    processes: Processes, tmp_path: Path, code: str
) -> None:
    """After nest_asyncio.apply() on a running loop, blocking calls work inside that loop
    and outside it (in a subprocess, so that the patching cannot leak into other tests)."""
    pytest.importorskip("nest_asyncio")
    _relay, url = processes.start_relay()
    (tmp_path / "a.txt").write_bytes(b"nested")
    dest = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", NEST_ASYNCIO_SCRIPT, url, code, str(tmp_path / "a.txt"),
         str(dest)],
        capture_output=True, text=True, timeout=TRANSFER_TIMEOUT * 2, env=cli_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert (dest / "1" / "a.txt").read_bytes() == b"nested"
    assert (dest / "2" / "a.txt").read_bytes() == b"nested"


INTERRUPTED_SCRIPT = """
import json, signal, sys, threading
import p2p_copy

# Ctrl-C as at a terminal, even if this test runs where SIGINT is ignored (a background job).
signal.signal(signal.SIGINT, signal.default_int_handler)
url, code, dest = sys.argv[1:4]
try:
    p2p_copy.receive_blocking(url, code, dest, progress="json", wait_timeout=60)
except KeyboardInterrupt:
    left = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    print(json.dumps({"event": "interrupted", "threads": left}), flush=True)
    sys.exit(42)
print(json.dumps({"event": "returned"}), flush=True)
"""


@contextlib.asynccontextmanager
async def blocking_receiver(url: str, code: str,
                            dest: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """A subprocess in receive_blocking, writing JSON progress events; killed at the end."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", INTERRUPTED_SCRIPT, url, code, str(dest),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(),
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.communicate()


async def read_events_until(proc: asyncio.subprocess.Process, event: str) -> list[dict[str, Any]]:
    assert proc.stdout is not None
    events: list[dict[str, Any]] = []
    while not events or events[-1]["event"] != event:
        line = await proc.stdout.readline()
        assert line, f"the receiver ended before {event!r}: {events}"
        events.append(json.loads(line))
    return events


async def interrupt(proc: asyncio.subprocess.Process) -> list[dict[str, Any]]:
    """Ctrl-C the receiver; return the events it wrote after it, once it has exited."""
    proc.send_signal(signal.SIGINT)
    out, err = await proc.communicate()
    assert proc.returncode == 42, f"exit {proc.returncode}; stderr: {err.decode()}"
    return [json.loads(line) for line in out.decode().splitlines()]


async def test_ctrl_c_while_waiting_for_a_sender(relay: Relay, tmp_path: Path, code: str) -> None:
    """SIGINT while receive_blocking waits for a sender: the transfer is cancelled
    (p2p_copy.CancelledError reaches the display), its worker thread has ended, and
    KeyboardInterrupt is raised in the caller."""
    dest = tmp_path / "out"
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with blocking_receiver(relay.url, code, dest) as proc:
            await read_events_until(proc, "waiting")
            events = await interrupt(proc)
    assert [e["event"] for e in events] == ["error", "interrupted"], events
    assert events[0]["error"] == "CancelledError" and events[0]["exit_code"] == 130
    assert events[1]["threads"] == [], "the transfer's threads outlived the interrupt"
    assert files_under(dest) == []


async def until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


async def test_ctrl_c_mid_transfer(relay: Relay, tmp_path: Path, code: str) -> None:
    """SIGINT while bytes arrive in receive_blocking: the receiver keeps its partial file
    only with its resume sidecar (or none under 1 MiB), tells the sender (who raises
    PeerGoneError), then raises KeyboardInterrupt."""
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        f.truncate(300 * 2**20)  # sparse: instant to make, real bytes on the wire
    dest = tmp_path / "out"
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with blocking_receiver(relay.url, code, dest) as proc:
            await read_events_until(proc, "waiting")
            sender = asyncio.ensure_future(p2p_copy.send(relay.url, code, [src], progress="none"))
            try:
                await until(lambda: temp_bytes(dest) > 0)
                events = await interrupt(proc)
                with pytest.raises(PeerGoneError):
                    await sender
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
    names = [e["event"] for e in events]
    assert "finished" not in names and names[-1] == "interrupted", names
    # Nothing under the final name; a partial file stays only with the sidecar that the
    # cancellation wrote for a later run to resume it.
    left = {p.name for p in files_under(dest)}
    assert left in (set(), {".big.bin.p2p-copy-part", ".big.bin.p2p-copy-resume"}), left
    # The display hears of it after the connection has closed, which can outlast
    # CANCEL_GRACE when the receiver had fallen behind (see blocking.CANCEL_GRACE).
    assert all(e["error"] == "CancelledError" for e in events if e["event"] == "error")


def test_errors_keep_their_class(processes: Processes, tmp_path: Path, code: str) -> None:
    """A blocking call raises the very error class the coroutine would have raised."""
    _relay, url = processes.start_relay()
    with pytest.raises(TransferTimeoutError) as timeout:
        p2p_copy.receive_blocking(url, code, tmp_path / "out", progress="none",
                                  wait_timeout=0.3)
    assert type(timeout.value) is TransferTimeoutError
    with pytest.raises(RelayUnreachableError) as unreachable:
        p2p_copy.send_blocking(f"ws://127.0.0.1:{free_port()}", code, [tmp_path],
                               progress="none")
    assert type(unreachable.value) is RelayUnreachableError
    with pytest.raises(UsageError):
        p2p_copy.send_blocking(url, code, [tmp_path], progress="none", chunk_size=1)
    assert transfer_threads() == []


@pytest.mark.parametrize(
    ("blocking", "coroutine"),
    [(p2p_copy.send_blocking, p2p_copy.send), (p2p_copy.receive_blocking, p2p_copy.receive)],
)
def test_blocking_takes_what_the_coroutine_takes(blocking: Any, coroutine: Any) -> None:
    """send_blocking/receive_blocking accept exactly the parameters of send/receive."""
    assert inspect.signature(blocking).parameters == inspect.signature(coroutine).parameters


def test_only_a_relay_of_this_loop_at_that_address_is_refused() -> None:
    """The check behind the refusal above matches host and port (a scheme's default port
    included), not the port alone: another machine's relay on the same port is not ours."""
    from p2p_copy.inprocess import served_here, serving

    loop, other = asyncio.new_event_loop(), asyncio.new_event_loop()
    serving(loop, "127.0.0.1", 8765, True)
    serving(loop, "0.0.0.0", 443, True)
    assert served_here(loop, "ws://127.0.0.1:8765") and served_here(loop, "ws://localhost:8765")
    assert served_here(loop, "wss://localhost")  # 443 by default, any loopback name
    assert not served_here(loop, "wss://relay.example.org:8765")
    assert not served_here(loop, "ws://127.0.0.1:8766")
    assert not served_here(other, "ws://127.0.0.1:8765")
    serving(loop, "127.0.0.1", 8765, False)
    assert not served_here(loop, "ws://127.0.0.1:8765")
    loop.close()
    other.close()
