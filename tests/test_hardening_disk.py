"""Issue 17, findings 4, 5 and 8: nothing on either side's disk changes or is read unless
it should be, and a manifest's limits hold part by part.

Transfers run through the real API (or CLI) and the in-process relay on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from p2p_copy import P2PCopyError, PolicyError, UsageError, receive, send
from p2p_copy.peer import sending
from p2p_copy.protocol.digests import SHA256
from p2p_copy.protocol.messages import DirEntry, Entry, FileEntry, Manifest, StreamEntry, encode
from p2p_copy.protocol.policy import ReceivePolicy
from p2p_copy.protocol.resume import Offer
from p2p_copy.protocol.transfer import ManifestReceived, Receiver, ReceiverState, SenderJoined
from p2p_copy.relay import Relay
from p2p_copy.storage.destination import Destination
from p2p_copy.storage.sources import SourceChains, Sources, collect_sources

from .conftest import Processes, both_backends
from .handmade_peer import handmade_peer
from .protocol_pair import CODE_HASH
from .test_transfer_e2e import start_measured

#: Bound for one in-process transfer; the data in these tests is small.
TRANSFER_TIMEOUT = 60.0
OLD = 86400 * 365 * 20.5  # a time no test run has: 1990


def _stat(path: Path) -> tuple[int, int, int, int, int]:
    st = path.lstat()
    return st.st_mode, st.st_mtime_ns, st.st_uid, st.st_gid, st.st_ino


async def _transfer(relay: Relay, paths: Sequence[Path], dest: Path, *,
                    overwrite: bool = False, code: str = "1-disk-code") -> None:
    async with asyncio.timeout(TRANSFER_TIMEOUT):
        await asyncio.gather(
            send(relay.url, code, [str(p) for p in paths], progress="none"),
            receive(relay.url, code, dest, progress="none", overwrite=overwrite),
        )


# --- finding 4: existing folders keep their mode and time ----------------------------------


def _private_tree(dest: Path) -> list[Path]:
    """A destination that already holds ``private/``, ``private/keys/`` (with a file) and
    ``private/empty/``, folders 0700 dated 1990."""
    keys = dest / "private" / "keys"
    keys.mkdir(parents=True)
    (keys.parent / "empty").mkdir()
    (keys / "id").write_bytes(b"secret")
    for folder in (keys, keys.parent / "empty", keys.parent):
        folder.chmod(0o700)
        os.utime(folder, (OLD, OLD))
    return [keys.parent, keys, keys.parent / "empty", keys / "id"]


def _sender_tree(src: Path) -> Path:
    """``private/`` with ``keys/``, ``empty/`` and a new folder ``new/``, all 0755, 1970."""
    top = src / "private"
    (top / "keys").mkdir(parents=True)
    (top / "new").mkdir()
    (top / "empty").mkdir()
    (top / "keys" / "added.txt").write_bytes(b"added")
    (top / "new" / "n.txt").write_bytes(b"n")
    for folder in (top / "keys", top / "new", top / "empty", top):
        folder.chmod(0o755)
        os.utime(folder, (0, 0))
    return top


@both_backends
@pytest.mark.parametrize("overwrite", [False, True], ids=["default", "overwrite"])
async def test_existing_folders_keep_their_mode_and_time(relay: Relay, tmp_path: Path,
                                                         overwrite: bool) -> None:
    """A folder entry naming an existing folder merges into it: its mode, time and owner
    stay, with or without overwrite; a folder the transfer makes gets the sender's.

    Only the kernel's own change is seen: a folder that gained names has a new mtime."""
    dest = tmp_path / "out"
    existing = _private_tree(dest)
    before = {p: _stat(p) for p in existing}
    top = _sender_tree(tmp_path / "src")
    await _transfer(relay, [top], dest, overwrite=overwrite)
    after = {p: _stat(p) for p in existing}
    private, keys, empty, key = existing
    assert after[empty] == before[empty] and after[key] == before[key]
    for folder in (private, keys):  # they gained names: the kernel dated them now
        mode, mtime, *owner_inode = after[folder]
        assert (mode, *owner_inode) == (before[folder][0], *before[folder][2:])
        assert mtime > before[folder][1]
    assert (dest / "private" / "keys" / "added.txt").read_bytes() == b"added"
    new = (dest / "private" / "new").stat()
    assert stat.S_IMODE(new.st_mode) == 0o755 & ~_umask() | 0o700
    assert new.st_mtime == 0


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@both_backends
def test_a_folder_made_by_an_earlier_attempt_gets_its_mode(tmp_path: Path) -> None:
    """Folders made by an attempt that was cut off still count as made by this run (the
    caller shares ``made_folders``), so the attempt that finishes gives them their mode."""
    entries: list[Entry] = [DirEntry("d", 0o750, 0.0), FileEntry("d/f", 0, 0o644, 0.0)]
    made: set[Path] = set()
    first = Destination(tmp_path, entries, algorithm=SHA256, made_folders=made)
    first.prepare()
    first._dirs.folder(("d",))  # the first file's folder is made, then the connection drops
    first.suspend()
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700
    second = Destination(tmp_path, entries, algorithm=SHA256, made_folders=made)
    second.prepare()
    second.finish()
    st = (tmp_path / "d").stat()
    assert stat.S_IMODE(st.st_mode) == 0o750 & ~_umask() | 0o700
    assert st.st_mtime == 0


# --- finding 8: a manifest's limits hold part by part --------------------------------------


def _receiver_with(policy: ReceivePolicy) -> Receiver:
    receiver = Receiver(CODE_HASH, policy=policy)
    receiver.hello()
    return receiver


def _part(entries: Sequence[Entry], more: bool) -> str:
    return encode(Manifest(entries=tuple(entries), more=more))


@pytest.mark.parametrize(
    ("policy", "first", "second", "limit"),
    [
        (ReceivePolicy(max_files=2), [FileEntry("a", 0), FileEntry("b", 0)],
         [FileEntry("c", 0)], "--max-files"),
        (ReceivePolicy(max_bytes=10), [FileEntry("a", 6)], [FileEntry("b", 6)], "--max-bytes"),
        (ReceivePolicy(max_depth=2), [DirEntry("a"), DirEntry("a/b")],
         [FileEntry("a/b/c", 0)], "--max-depth"),
    ],
    ids=["files", "bytes", "depth"],
)
def test_receiver_refuses_at_the_first_part_over_a_limit(
    policy: ReceivePolicy, first: list[Entry], second: list[Entry], limit: str,
) -> None:
    """The part that crosses a limit is refused when it arrives, though more would follow."""
    receiver = _receiver_with(policy)
    assert receiver.receive(_part(first, more=True)) == [SenderJoined()]  # nothing more
    with pytest.raises(PolicyError, match=limit):
        receiver.receive(_part(second, more=True))
    assert receiver.state is ReceiverState.FAILED


def test_a_stream_counts_as_a_file() -> None:
    """A stream (only ever last) is one more file for max_files (a check that moved into
    policy.ManifestLimits; the entry cap was and is Receiver's max_entries, part by part)."""
    receiver = _receiver_with(ReceivePolicy(max_files=1))
    assert receiver.receive(_part([FileEntry("a", 0)], more=True)) == [SenderJoined()]
    with pytest.raises(PolicyError, match="--max-files"):
        receiver.receive(_part([StreamEntry("pipe")], more=False))


def test_a_part_within_the_limits_waits_for_the_rest() -> None:
    """Parts that keep within the limits are taken; the whole manifest is judged at the end."""
    receiver = _receiver_with(ReceivePolicy(max_files=2, max_bytes=3))
    assert receiver.receive(_part([FileEntry("a", 1)], more=True)) == [SenderJoined()]
    events = receiver.receive(_part([FileEntry("b", 2)], more=False))
    assert events == [ManifestReceived((FileEntry("a", 1), FileEntry("b", 2)))]


#: Entries a hostile sender offers, in parts of PART_ENTRIES (each ~1.9 MB, under the
#: relay's 2 MiB message limit): held whole, they take ~175 MiB of the receiver's memory.
HOSTILE_ENTRIES = 600_000
PART_ENTRIES = 30_000
#: The receiver's peak RSS must stay below this (idle, it is ~40 MiB).
RSS_LIMIT_KIB = 110 * 1024


@pytest.mark.timeout(300)
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
async def test_cli_receiver_refuses_a_many_part_manifest_in_bounded_memory(
    relay: Relay, processes: Processes, tmp_path: Path,
) -> None:
    """receive --max-files 1 --max-bytes 1 refuses a 600,000-entry manifest at its first
    part: exit 19, the peak RSS of the whole process (wait4) far below what it would hold."""
    code = "7-many-parts"
    report = tmp_path / "receiver.rss"
    dest = tmp_path / "out"
    proc = start_measured(processes, report, "receive", relay.url, code, "--out", str(dest),
                          "--max-files", "1", "--max-bytes", "1")
    parts = HOSTILE_ENTRIES // PART_ENTRIES
    async with asyncio.timeout(240):
        async with handmade_peer(relay.url, code, "sender") as peer:
            await peer.expect("ready")
            with contextlib.suppress(ConnectionClosed):
                for n in range(parts):
                    entries = [{"path": f"p{n}/{i:06d}", "size": 1, "mode": 420, "mtime": 1.5}
                               for i in range(PART_ENTRIES)]
                    await peer.send_json({"type": "manifest", "version": 1,
                                          "entries": entries, "more": n < parts - 1})
            _, err = await asyncio.to_thread(proc.communicate, timeout=180)
    returncode, maxrss = map(int, report.read_text().split())
    print(f"receiver peak RSS {maxrss} KiB")
    assert returncode == 19, err
    assert "--max-files" in err
    assert maxrss < RSS_LIMIT_KIB, f"receiver peak RSS {maxrss} KiB"
    assert not dest.exists() or not any(dest.iterdir())


# --- finding 5: the sender sends only the files it scanned ----------------------------------

SECRET = b"SECRET-KEY-MATERIAL\n"


def _swap_after_scan(monkeypatch: pytest.MonkeyPatch, swap: Callable[[], None]) -> None:
    """Make send() run ``swap`` right after its scan, before any file is opened: the
    window a local attacker races for, made deterministic."""
    real = sending.collect_sources

    def scan_then_swap(*args: Any, **kwargs: Any) -> Sources:
        sources = real(*args, **kwargs)
        swap()
        return sources

    monkeypatch.setattr(sending, "collect_sources", scan_then_swap)


def _nothing_secret_arrived(dest: Path) -> None:
    for dirpath, _, filenames in os.walk(dest):
        for name in filenames:
            assert SECRET not in (Path(dirpath) / name).read_bytes(), name


async def _refused_send(relay: Relay, top: Path, dest: Path, shown: str) -> None:
    async with asyncio.timeout(TRANSFER_TIMEOUT):
        sent, got = await asyncio.gather(
            send(relay.url, "3-swap-code", [str(top)], progress="none"),
            receive(relay.url, "3-swap-code", dest, progress="none"),
            return_exceptions=True,
        )
    assert isinstance(sent, UsageError), repr(sent)
    assert shown in str(sent) and "\n" not in str(sent)
    assert isinstance(got, P2PCopyError), repr(got)
    _nothing_secret_arrived(dest)


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "home" / ".ssh" / "id_ed25519"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(SECRET)
    return secret


def _source(tmp_path: Path) -> Path:
    top = tmp_path / "src" / "project"
    (top / "sub").mkdir(parents=True)
    (top / "a.txt").write_bytes(b"a")
    (top / "sub" / "notes.txt").write_bytes(b"x" * len(SECRET))  # the secret's size
    return top


def _link_file(top: Path, secret: Path) -> None:
    (top / "sub" / "notes.txt").unlink()
    (top / "sub" / "notes.txt").symlink_to(secret)


def _link_folder(top: Path, secret: Path) -> None:
    os.rename(top / "sub", top / "sub.old")
    (secret.parent / "notes.txt").write_bytes(SECRET)
    (top / "sub").symlink_to(secret.parent)


def _replace_file(top: Path, secret: Path) -> None:
    (top / "new").write_bytes(SECRET)
    os.replace(top / "new", top / "sub" / "notes.txt")


def _fifo(top: Path, secret: Path) -> None:
    (top / "sub" / "notes.txt").unlink()
    os.mkfifo(top / "sub" / "notes.txt")


SWAPS = {"file -> link": _link_file, "folder -> link": _link_folder,
         "file -> other file": _replace_file, "file -> fifo": _fifo}


@pytest.mark.skipif(os.name == "nt", reason="symlinks and FIFOs need privileges on Windows")
@pytest.mark.parametrize("swap", list(SWAPS))
async def test_a_file_swapped_after_the_scan_is_not_sent(
    relay: Relay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: str,
) -> None:
    """A same-size file swapped for a link (or its folder for one, or another file, or a
    FIFO) between scan and send fails the transfer with one line naming it; no byte of
    what it now points at leaves the sender."""
    secret = _secret(tmp_path)
    top = _source(tmp_path)
    _swap_after_scan(monkeypatch, lambda: SWAPS[swap](top, secret))
    await _refused_send(relay, top, tmp_path / "out", "notes.txt")


async def test_a_link_the_user_names_is_still_sent(relay: Relay, tmp_path: Path) -> None:
    """A link given on the command line is followed (as before): its target is the file
    the scan records and opens."""
    target = tmp_path / "real.txt"
    target.write_bytes(b"real")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    await _transfer(relay, [link], tmp_path / "out")
    assert (tmp_path / "out" / "link.txt").read_bytes() == b"real"


def test_a_resume_check_rereads_only_the_scanned_file(tmp_path: Path) -> None:
    """Checking a receiver's resume offer rereads the source's prefix: a file swapped for
    a link since the scan is refused there too, not hashed."""
    secret = _secret(tmp_path)
    top = _source(tmp_path)
    sources = collect_sources([top])
    index = sources.files.index(str(top / "sub" / "notes.txt"))
    sizes = [e.size for e in sources.entries if isinstance(e, FileEntry)]
    chains = SourceChains(sources.files, sizes, sources.identities)
    _link_file(top, secret)
    offer = Offer(index, 4, hashlib.sha256(SECRET[:4]).hexdigest())
    with pytest.raises(UsageError, match="no longer the file that was scanned"):
        chains.verify(offer)
