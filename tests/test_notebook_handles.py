"""Handles as a notebook uses them: Transfer.code, p2p_copy.transfers(), a cell run again,
and what a stopped receive kept (p2p_copy.discard_partial), with a real relay on loopback."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import p2p_copy
from p2p_copy.display.notebook import WidgetProgress
from p2p_copy.peer import background
from p2p_copy.peer.partial import kept, tell_display
from p2p_copy.protocol.policy import OfferSummary
from p2p_copy.relay import Relay

from .handmade_peer import handmade_peer

TIMEOUT = 30.0


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


async def test_transfer_code_and_transfers(relay: Relay, tmp_path: Path) -> None:
    """A sender's handle knows its generated code once shown, a receiver's the one given;
    transfers() lists the running handles and forgets them once they end."""
    (tmp_path / "f.txt").write_text("hi")
    async with asyncio.timeout(TIMEOUT):
        sender = p2p_copy.start_send(relay.url, None, tmp_path / "f.txt", progress="none")
        await until(lambda: sender.code is not None)
        assert sender.code is not None and f"code {sender.code}" in repr(sender)
        receiver = p2p_copy.start_receive(relay.url, sender.code, tmp_path / "out",
                                          progress="none")
        assert receiver.code == sender.code
        assert p2p_copy.transfers() == [sender, receiver]
        await sender
        await receiver
    assert p2p_copy.transfers() == []


async def test_a_cell_run_again_cancels_its_waiting_transfer(
    relay: Relay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-running a start_send cell cancels the sender its earlier run left waiting (its
    code went with the old output); one from another cell is left alone."""
    (tmp_path / "f.txt").write_text("hi")
    cell = [("cell-1", "run-1")]
    monkeypatch.setattr(background, "_current_cell", lambda: cell[0])
    async with asyncio.timeout(TIMEOUT):
        first = p2p_copy.start_send(relay.url, None, tmp_path / "f.txt", progress="none")
        # The same run starting a second transfer (a loop) replaces nothing.
        sibling = p2p_copy.start_send(relay.url, None, tmp_path / "f.txt", progress="none")
        cell[0] = ("cell-2", "run-a")
        other = p2p_copy.start_send(relay.url, None, tmp_path / "f.txt", progress="none")
        await until(lambda: None not in (first.code, sibling.code, other.code))
        assert p2p_copy.transfers() == [first, sibling, other]
        cell[0] = ("cell-1", "run-2")
        second = p2p_copy.start_send(relay.url, None, tmp_path / "f.txt", progress="none")
        for earlier in (first, sibling):
            with pytest.raises(p2p_copy.CancelledError):
                await earlier
        await asyncio.sleep(0)  # their done-callbacks take them off the list
        assert p2p_copy.transfers() == [other, second]
        other.cancel()
        second.cancel()
        await asyncio.gather(other.task, second.task, return_exceptions=True)


async def test_a_cell_run_again_leaves_a_paired_transfer_alone(
    relay: Relay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender whose receiver has joined (and is, say, reading the offer) still reports
    "waiting", but is not cancelled by a re-run: its peer is there (review of issue 19)."""
    (tmp_path / "f.txt").write_text("hi")
    cell = [("cell-1", "run-1")]
    monkeypatch.setattr(background, "_current_cell", lambda: cell[0])
    code = "7-paired-already"
    async with asyncio.timeout(TIMEOUT):
        first = p2p_copy.start_send(relay.url, code, tmp_path / "f.txt", progress="none")
        async with handmade_peer(relay.url, code, "receiver") as peer:
            await peer.expect("manifest")  # paired, keys exchanged; no answer yet
            assert first.status == "waiting"
            cell[0] = ("cell-1", "run-2")
            with pytest.warns(RuntimeWarning, match="still"):
                background._replace_earlier(cell[0])
            assert not first.done()
            first.cancel()
            await asyncio.gather(first.task, return_exceptions=True)


async def test_a_cell_run_again_warns_about_a_transfer_under_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transfer of the earlier run that is under way is not stopped: a warning says how."""
    class Busy:
        _cell = ("cell-1", "run-1")
        status = "transferring"
        cancelled = False

        def summary(self) -> str:
            return "p2p-copy sender: transferring, 5 of 10 bytes"

        def cancel(self) -> None:
            self.cancelled = True

    busy = Busy()
    monkeypatch.setattr(background, "transfers", lambda: [busy])
    with pytest.warns(RuntimeWarning, match="still transferring.*transfers"):
        background._replace_earlier(("cell-1", "run-2"))
    assert not busy.cancelled


def _partial(path: Path, data: bytes = b"x" * 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_a_stopped_receive_says_what_it_kept_and_how_to_discard_it(tmp_path: Path) -> None:
    """The ended panel of a cancelled receive names the hidden partial files of *its*
    offer and prints a call that removes those, and nothing else."""
    dest = tmp_path / "out"
    ours = [_partial(dest / ".a.bin.p2p-copy-part"), _partial(dest / ".a.bin.p2p-copy-resume"),
            _partial(dest / "src" / "sub" / ".b.txt.p2p-copy-part")]
    others = [_partial(dest / ".other.p2p-copy-part"), _partial(dest / "a.bin", b"final"),
              _partial(dest / "src" / "done.txt")]
    assert kept(dest, ["a.bin", "src/"]) == sorted(ours)

    progress = WidgetProgress("receive", display=False)
    tell_display(progress, dest)
    progress.offer(OfferSummary(top_level=("a.bin", "src/"), files=3, folders=1,
                                total_bytes=100, stream=False, hidden=(), executables=(),
                                git_hooks=(), hidden_inside=0))
    progress.failed(p2p_copy.CancelledError("The transfer was cancelled."))
    text = "\n".join(progress.lines())
    assert "Kept for a later run: 3 partial files (30 B)" in text
    assert str(dest) in text and "Run the same receive again" in text
    [call] = [line.split(": ", 1)[1] for line in text.splitlines() if "discard them" in line]
    assert call == f'p2p_copy.discard_partial("{dest}", ["a.bin", "src/"])'
    removed = eval(call, {"p2p_copy": p2p_copy})
    assert sorted(removed) == sorted(ours)
    assert all(not p.exists() for p in ours) and all(p.exists() for p in others)


def test_a_finished_receive_lists_nothing_kept(tmp_path: Path) -> None:
    """Only a stopped receive looks for partial files."""
    _partial(tmp_path / ".a.bin.p2p-copy-part")
    progress = WidgetProgress("receive", display=False)
    tell_display(progress, tmp_path)
    progress.offer(OfferSummary(top_level=("a.bin",), files=1, folders=0, total_bytes=1,
                                stream=False, hidden=(), executables=(), git_hooks=(),
                                hidden_inside=0))
    progress.finished(p2p_copy.TransferResult("receiver", (), 0, 0.1, destination=tmp_path))
    assert progress.kept == [] and "Kept" not in "\n".join(progress.lines())


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_discarding_does_not_follow_links(tmp_path: Path) -> None:
    """A link in the destination is not followed into another folder."""
    elsewhere = _partial(tmp_path / "elsewhere" / ".x.p2p-copy-part")
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "src").symlink_to(elsewhere.parent, target_is_directory=True)
    assert p2p_copy.discard_partial(dest, ["src/"]) == []
    assert p2p_copy.discard_partial(dest) == []
    assert elsewhere.exists()


def test_only_top_level_names_are_looked_up(tmp_path: Path) -> None:
    """A name that is not a top-level name (it never is, from a checked offer) finds nothing."""
    _partial(tmp_path / ".x.p2p-copy-part")
    _partial(tmp_path / "dest" / "keep.txt")
    assert kept(tmp_path / "dest", ["../", "..", "/", "a/../../"]) == []
