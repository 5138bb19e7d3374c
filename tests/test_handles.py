"""start_send / start_receive: transfers in the background of the caller's loop, behind a handle."""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import p2p_copy
from p2p_copy import CancelledError, RelayUnreachableError, Transfer, TransferTimeoutError
from p2p_copy.display.progress import NoProgress, Progress, ProgressKind
from p2p_copy.relay import Relay

from .conftest import free_port

#: Upper bound for one scenario.
SCENARIO_TIMEOUT = 60.0


@pytest.fixture
def code() -> str:
    """A fresh code, so that no two tests can ever meet on a relay."""
    return f"{uuid.uuid4().hex[:12]}-handles"


def files_under(root: Path) -> list[Path]:
    """Every file under ``root``, hidden temporary ones included."""
    return [Path(d) / f for d, _dirs, names in os.walk(root) for f in names]


class Recorder(NoProgress):
    """A display that notes which calls it got, by name."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def waiting(self) -> None:
        self.calls.append("waiting")

    def failed(self, error: BaseException) -> None:
        self.calls.append("failed")


async def until(predicate: Callable[[], bool]) -> None:
    """Poll on the loop; the caller bounds the wait with asyncio.timeout."""
    while not predicate():
        await asyncio.sleep(0.005)


def statuses(transfer: Transfer, seen: list[str]) -> None:
    if not seen or seen[-1] != transfer.status:
        seen.append(transfer.status)


async def test_background_transfer_while_the_caller_keeps_working(
    relay: Relay, tmp_path: Path, code: str
) -> None:
    """Both sides run as handles while the caller goes on awaiting other things; each
    status moves waiting -> transferring -> (verifying) -> done, and the file arrives."""
    data = os.urandom(24 * 2**20)
    (tmp_path / "big.bin").write_bytes(data)
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        receiving = p2p_copy.start_receive(relay.url, code, tmp_path / "out", progress="none",
                                           wait_timeout=30)
        assert receiving.status == "waiting" and not receiving.done()
        assert receiving.role == "receiver"
        await asyncio.sleep(0.05)  # other work: the receiver is now waiting on the relay
        sending = p2p_copy.start_send(relay.url, code, [tmp_path / "big.bin"], progress="none",
                                      chunk_size=64 * 1024)
        seen_send: list[str] = []
        seen_receive: list[str] = []
        ticks = 0
        while not (sending.done() and receiving.done()):
            ticks += 1
            statuses(sending, seen_send)
            statuses(receiving, seen_receive)
            await asyncio.sleep(0.001)
        statuses(sending, seen_send)
        statuses(receiving, seen_receive)
        sent = await sending
        got = await receiving
    assert ticks > 10, "the caller's loop was not free while the transfer ran"
    for seen in (seen_send, seen_receive):
        assert seen[0] == "waiting" and "transferring" in seen and seen[-1] == "done", seen
        order = ["waiting", "transferring", "verifying", "done"]
        assert [order.index(s) for s in seen] == sorted(order.index(s) for s in seen), seen
    assert (tmp_path / "out" / "big.bin").read_bytes() == data
    assert got.files == sent.files and got.bytes == len(data)
    for t, result in ((sending, sent), (receiving, got)):
        assert t.bytes_done == t.bytes_total == len(data)
        assert t.result() is result
        assert t.exception() is None and t.error is None
        assert await t is result  # a handle can be awaited again


async def test_cancel_a_waiting_receive(relay: Relay, tmp_path: Path, code: str) -> None:
    """cancel() while the receiver waits for a sender: the handle ends "cancelled" with
    p2p_copy.CancelledError, the display is told, and nothing is left in the destination."""
    display = Recorder()
    dest = tmp_path / "out"
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        t = p2p_copy.start_receive(relay.url, code, dest, progress=display)
        await until(lambda: "waiting" in display.calls)
        assert repr(t) == "<Transfer p2p-copy receiver: waiting>"
        assert t.cancel()
        with pytest.raises(CancelledError) as info:
            await t
    assert t.status == "cancelled"
    assert t.exception() is info.value and t.error is info.value
    assert info.value.exit_code == 130
    assert display.calls[-1] == "failed"
    assert t.progress is display
    assert files_under(dest) == []
    assert not t.cancel(), "a finished transfer cannot be cancelled again"


async def test_cancel_before_the_transfer_began(relay: Relay, tmp_path: Path, code: str) -> None:
    """A handle cancelled before its task ever ran still ends "cancelled" with
    p2p_copy.CancelledError, not a bare asyncio.CancelledError."""
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        t = p2p_copy.start_receive(relay.url, code, tmp_path / "out", progress="none")
        t.cancel()
        with pytest.raises(CancelledError):
            await t
    assert t.status == "cancelled"
    assert isinstance(t.exception(), CancelledError)
    with pytest.raises(CancelledError):
        t.result()


async def test_awaiting_task_cancelled_takes_the_transfer_along(
    relay: Relay, tmp_path: Path, code: str
) -> None:
    """As with any task, a timeout around ``await t`` cancels the transfer too; the
    awaiting code gets TimeoutError, the handle p2p_copy.CancelledError."""
    display = Recorder()
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        t = p2p_copy.start_receive(relay.url, code, tmp_path / "out", progress=display)
        await until(lambda: "waiting" in display.calls)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await t
        assert t.done()
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    assert t.status == "cancelled"
    assert isinstance(t.exception(), CancelledError)


@pytest.mark.slow
async def test_failed_background_transfer_is_not_logged(tmp_path: Path, code: str) -> None:
    """A handle whose transfer fails and that nobody ever looks into again ends "failed",
    and asyncio never complains "Task exception was never retrieved"."""
    (tmp_path / "a.txt").write_bytes(b"a")
    loop = asyncio.get_running_loop()
    complaints: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: complaints.append(context))
    try:
        async with asyncio.timeout(SCENARIO_TIMEOUT):
            t = p2p_copy.start_send(f"ws://127.0.0.1:{free_port()}", code,
                                    [tmp_path / "a.txt"], progress="none")
            await until(t.done)
        assert t.status == "failed"
        del t
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert complaints == []


async def test_failed_background_transfer_keeps_its_error(tmp_path: Path, code: str) -> None:
    """The error of a failed handle nobody awaited is still there: exception(), error,
    result() and await all give the same RelayUnreachableError."""
    (tmp_path / "a.txt").write_bytes(b"a")
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        t = p2p_copy.start_send(f"ws://127.0.0.1:{free_port()}", code,
                                [tmp_path / "a.txt"], progress="none")
        await until(t.done)
        error = t.exception()
        assert isinstance(error, RelayUnreachableError)
        assert t.error is error
        with pytest.raises(RelayUnreachableError) as info:
            t.result()
        assert info.value is error
        with pytest.raises(RelayUnreachableError) as info:
            await t
        assert info.value is error
    assert t.status == "failed"
    assert "failed" in repr(t) and "RelayUnreachableError" in repr(t)


async def test_timeout_of_a_background_receive(relay: Relay, tmp_path: Path, code: str) -> None:
    """Awaiting a failed handle raises the transfer's own error class."""
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        t = p2p_copy.start_receive(relay.url, code, tmp_path / "out", progress="none",
                                   wait_timeout=0.2)
        with pytest.raises(TransferTimeoutError):
            await t
    assert t.status == "failed"


def test_start_needs_a_running_loop(tmp_path: Path) -> None:
    """Outside a running loop start_* say so, and name the blocking twin to use instead."""
    with pytest.raises(p2p_copy.UsageError, match="send_blocking"):
        p2p_copy.start_send("ws://127.0.0.1:1", "c", [tmp_path])
    with pytest.raises(p2p_copy.UsageError, match="receive_blocking"):
        p2p_copy.start_receive("ws://127.0.0.1:1", "c", tmp_path)


@pytest.mark.parametrize(
    ("starter", "coroutine"),
    [(p2p_copy.start_send, p2p_copy.send), (p2p_copy.start_receive, p2p_copy.receive)],
)
def test_start_takes_what_the_coroutine_takes(starter: Any, coroutine: Any) -> None:
    """start_send/start_receive accept exactly the parameters of send/receive."""
    assert inspect.signature(starter).parameters == inspect.signature(coroutine).parameters


class Panel(NoProgress):
    """A display with a widget that shows itself, as notebook.WidgetProgress does."""

    def __init__(self) -> None:
        self.widget = object()
        self.shown = 0

    def _ipython_display_(self) -> None:
        self.shown += 1


class BareWidget(NoProgress):
    """A display with a widget and nothing to show it with."""

    def __init__(self) -> None:
        self.widget = object()


async def test_displaying_a_handle(
    relay: Relay, tmp_path: Path, code: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a notebook a handle shows its display's widget (through the display itself
    when it can, so that it knows it is on screen), or else one line of text."""
    shown: list[object] = []
    monkeypatch.setattr("p2p_copy.peer.background._show", lambda obj, raw=False: shown.append(obj))
    panel, bare = Panel(), BareWidget()
    displays: list[ProgressKind | Progress] = [panel, bare, "none"]
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        handles = [
            p2p_copy.start_receive(relay.url, f"{code}-{i}", tmp_path, progress=display)
            for i, display in enumerate(displays)
        ]
        for t in handles:
            t._ipython_display_()
        assert panel.shown == 1
        assert shown == [bare.widget, {"text/plain": "p2p-copy receiver: waiting"}]
        for t in handles:
            t.cancel()
            with pytest.raises(CancelledError):
                await t
