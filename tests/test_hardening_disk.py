"""Issue 17, findings 4, 5 and 8: nothing on either side's disk changes or is read unless
it should be, and a manifest's limits hold part by part.

Transfers run through the real API (or CLI) and the in-process relay on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from p2p_copy import receive, send
from p2p_copy.destination import Destination
from p2p_copy.digests import SHA256
from p2p_copy.messages import DirEntry, Entry, FileEntry
from p2p_copy.relay import Relay

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


def test_a_folder_made_by_an_earlier_attempt_gets_its_mode(tmp_path: Path) -> None:
    """Folders made by an attempt that was cut off still count as made by this run (the
    caller shares ``made_folders``), so the attempt that finishes gives them their mode."""
    entries: list[Entry] = [DirEntry("d", 0o750, 0.0), FileEntry("d/f", 0, 0o644, 0.0)]
    made: set[Path] = set()
    first = Destination(tmp_path, entries, algorithm=SHA256, made_folders=made)
    first.prepare()
    first._dirs.fd(("d",))  # the first file's folder is made, then the connection drops
    first.suspend()
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o700
    second = Destination(tmp_path, entries, algorithm=SHA256, made_folders=made)
    second.prepare()
    second.finish()
    st = (tmp_path / "d").stat()
    assert stat.S_IMODE(st.st_mode) == 0o750 & ~_umask() | 0o700
    assert st.st_mtime == 0
