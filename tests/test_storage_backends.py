"""Issue 23: the two ways storage/destination.py reaches the disk (folder descriptors, and
by path as on Windows) keep the same guarantees. Tests marked ``both_backends`` run once
with each (tests/conftest.py); the Destination suites elsewhere are marked the same way."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from p2p_copy import receive, send
from p2p_copy.errors import DestinationExistsError, UnsafePathError
from p2p_copy.protocol.messages import FileEntry
from p2p_copy.protocol.policy import ReceivePolicy
from p2p_copy.protocol.transfer import FileCompleted, FileData
from p2p_copy.relay import Relay
from p2p_copy.storage import destination
from p2p_copy.storage.destination import TEMP_SUFFIX, Destination

from .conftest import Processes, both_backends, cli_env
from .test_failures import finish, make_file, tree


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _receive(dest: Destination, data: bytes) -> None:
    dest.apply([FileData(0, 0, memoryview(data)), FileCompleted(0, _sha(data))])


@both_backends
def test_a_folder_turned_into_a_link_after_the_check_is_never_written_through(
    tmp_path: Path,
) -> None:
    """A link planted where a folder will be made, after prepare() looked, is refused when
    the first file goes there: UnsafePathError, nothing where the link points."""
    root, elsewhere = tmp_path / "dest", tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = Destination(root, [FileEntry("sub/x", 3)])
    dest.prepare()
    (root / "sub").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="is a link"):
        _receive(dest, b"abc")
    dest.abort()
    assert list(elsewhere.iterdir()) == []
    assert (root / "sub").is_symlink()


@both_backends
def test_a_folder_swapped_while_a_file_is_created_gets_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, storage_backend: str,
) -> None:
    """The folder is swapped for a link at the last moment, between the checks and the
    call that creates the file (the race made deterministic). Descriptors hold on to the
    folder checked: the file lands there. By path the swap is seen right after, the
    transfer fails and the file made through the link is removed: nothing elsewhere."""
    root, elsewhere, moved = tmp_path / "dest", tmp_path / "elsewhere", tmp_path / "moved"
    elsewhere.mkdir()
    dest = Destination(root, [FileEntry("sub/x", 3)])
    dest.prepare()
    real_open = os.open

    def swap_then_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(TEMP_SUFFIX) and not moved.exists():
            (root / "sub").rename(moved)
            (root / "sub").symlink_to(elsewhere, target_is_directory=True)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", swap_then_open)
    if storage_backend == "portable":
        with pytest.raises(UnsafePathError, match="changed while receiving"):
            _receive(dest, b"abc")
        dest.abort()
    else:
        _receive(dest, b"abc")
        dest.finish()
        assert (moved / "x").read_bytes() == b"abc"
    assert moved.exists()
    assert list(elsewhere.iterdir()) == []


@both_backends
def test_a_file_swapped_for_a_link_before_its_rename_is_refused(
    tmp_path: Path, storage_backend: str,
) -> None:
    """The received file's folder is swapped for a link after the data was written: the
    rename never happens through the link (descriptors: it happens in the folder that
    was checked; by path: the transfer fails)."""
    root, elsewhere = tmp_path / "dest", tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = b"abc"
    dest = Destination(root, [FileEntry("sub/x", len(data))])
    dest.prepare()
    dest.apply([FileData(0, 0, memoryview(data))])  # sealed: the whole file arrived
    (root / "sub").rename(tmp_path / "moved")
    (root / "sub").symlink_to(elsewhere, target_is_directory=True)
    if storage_backend == "portable":
        with pytest.raises(UnsafePathError):
            dest.apply([FileCompleted(0, _sha(data))])
        dest.abort()
    else:
        dest.apply([FileCompleted(0, _sha(data))])
        assert (tmp_path / "moved" / "x").read_bytes() == data
    assert list(elsewhere.iterdir()) == []


def test_windows_junctions_and_mount_points_count_as_links() -> None:
    """On Windows lstat() shows a junction as a folder: its reparse attribute and tag say
    it is an alias of another path. A cloud placeholder (OneDrive) is a file itself."""
    folder = stat.S_IFDIR | 0o777
    reparse = stat.FILE_ATTRIBUTE_REPARSE_POINT

    def lstat(attributes: int, tag: int) -> Any:
        return SimpleNamespace(st_mode=folder, st_file_attributes=attributes,
                               st_reparse_tag=tag)

    assert destination._is_link(lstat(reparse, 0xA0000003))  # IO_REPARSE_TAG_MOUNT_POINT
    assert destination._is_link(lstat(reparse, 0xA000000C))  # IO_REPARSE_TAG_SYMLINK
    assert destination._is_link(lstat(reparse, 0))  # a tag we cannot read: a link
    assert not destination._is_link(lstat(reparse, 0x9000001A))  # IO_REPARSE_TAG_CLOUD_6
    assert not destination._is_link(lstat(stat.FILE_ATTRIBUTE_DIRECTORY, 0))
    assert destination._is_link(SimpleNamespace(st_mode=stat.S_IFLNK | 0o777))  # type: ignore[arg-type]


def test_the_backend_is_chosen_by_what_the_system_has(monkeypatch: pytest.MonkeyPatch) -> None:
    """Descriptors where every call they need exists (this Linux), the path backend as soon
    as one is missing, whatever the system's name, or when the testing switch asks."""
    monkeypatch.delenv(destination.PORTABLE_ENV, raising=False)
    assert destination._Folders.choose() is destination._DirFdFolders
    monkeypatch.setattr(destination, "_O_DIRECTORY", 0)  # as on Windows
    assert destination._Folders.choose() is destination._PathFolders
    monkeypatch.undo()
    monkeypatch.setattr(destination, "_fchmod", None)
    assert destination._Folders.choose() is destination._PathFolders
    monkeypatch.undo()
    monkeypatch.setenv(destination.PORTABLE_ENV, "1")
    assert destination._Folders.choose() is destination._PathFolders


def test_the_switch_reaches_a_cli_process(tmp_path: Path) -> None:
    """P2P_COPY_PORTABLE_STORAGE=1 in the environment makes a new process write by path."""
    show = "from p2p_copy.storage import destination as d; print(d.FOLDERS.__name__)"
    for value, expected in (("1", "_PathFolders"), ("", "_DirFdFolders")):
        env = cli_env(**{destination.PORTABLE_ENV: value})
        out = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True,
                             env=env, timeout=30, check=True).stdout
        assert out.strip() == expected


@pytest.mark.slow
def test_cli_transfer_by_path_refuses_a_link_trap_and_an_existing_file(
    processes: Processes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real CLI with the path backend forced (as Windows runs it): a folder is
    received whole; into a destination with a link where a folder goes it exits 10 and
    nothing reaches the link's target; over an existing file it exits 11 and the file
    keeps its bytes; with --overwrite it is replaced."""
    monkeypatch.setenv(destination.PORTABLE_ENV, "1")  # cli_env() copies it for each process
    _relay, url = processes.start_relay()
    src = tmp_path / "src" / "proj"
    make_file(src / "a.txt", b"new a")
    make_file(src / "sub" / "b.txt", b"new b")

    def receive(dest: Path, code: str, *extra: str) -> tuple[int, str]:
        receiver = processes.start("receive", url, code, "--out", str(dest), *extra)
        sender = processes.start("send", url, code, str(src))
        result = finish(receiver)
        finish(sender)
        return result

    clean = tmp_path / "clean"
    assert receive(clean, "2-clean-copy")[0] == 0
    assert (clean / "proj" / "sub" / "b.txt").read_bytes() == b"new b"
    assert tree(clean) == {"proj", "proj/a.txt", "proj/sub", "proj/sub/b.txt"}

    trap, elsewhere = tmp_path / "trap", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (trap / "proj").mkdir(parents=True)
    (trap / "proj" / "sub").symlink_to(elsewhere, target_is_directory=True)
    code, err = receive(trap, "3-link-trap")
    assert code == 10, err
    assert list(elsewhere.iterdir()) == []

    existing = tmp_path / "existing"
    make_file(existing / "proj" / "a.txt", b"old a")
    code, err = receive(existing, "4-existing-file")
    assert code == 11, err
    assert (existing / "proj" / "a.txt").read_bytes() == b"old a"
    assert tree(existing) == {"proj", "proj/a.txt"}
    assert receive(existing, "5-overwrite", "--overwrite")[0] == 0
    assert (existing / "proj" / "a.txt").read_bytes() == b"new a"



# --- names that a folding file system would take for one (ReceivePolicy.fold_names) -------

NFD_CAFE, NFC_CAFE = "cafe\u0301", "caf\u00e9"


@both_backends
@pytest.mark.parametrize(("existing", "received"), [
    ("readme", "README"), (NFD_CAFE, NFC_CAFE), ("Docs/", "docs/x"),
], ids=["case", "normalisation", "folder"])
@pytest.mark.parametrize("overwrite", [False, True], ids=["default", "overwrite"])
def test_a_name_only_case_or_unicode_form_away_from_an_existing_one_is_refused(
    tmp_path: Path, existing: str, received: str, overwrite: bool,
) -> None:
    """With fold_names, ``README`` is refused where ``readme`` exists (and a composed name
    where it is decomposed, a folder name in another case): on macOS or Windows they would
    be one file. Overwrite cannot make them one here. The existing entry is untouched."""
    root = tmp_path / "dest"
    if existing.endswith("/"):
        (root / existing).mkdir(parents=True)
    else:
        make_file(root / existing, b"mine")
    before = sorted(os.listdir(root))
    dest = Destination(root, [FileEntry(received, 3)], fold_names=True, overwrite=overwrite)
    with pytest.raises(DestinationExistsError, match="differ only in case or Unicode form"):
        dest.prepare()
    assert sorted(os.listdir(root)) == before
    if not existing.endswith("/"):
        assert (root / existing).read_bytes() == b"mine"
    # Without the switch they are two names, as this file system keeps them.
    dest = Destination(root, [FileEntry(received, 3)], fold_names=False)
    dest.prepare()
    _receive(dest, b"new")
    dest.finish()
    assert (root / received).read_bytes() == b"new"


@both_backends
def test_the_same_name_with_fold_names_is_the_usual_existing_file(tmp_path: Path) -> None:
    """The very name that exists is judged by the usual rules: refused without overwrite,
    replaced with it (fold_names only adds the names this file system tells apart)."""
    make_file(tmp_path / "README", b"old")
    with pytest.raises(DestinationExistsError, match="already exists"):
        Destination(tmp_path, [FileEntry("README", 3)], fold_names=True).prepare()
    dest = Destination(tmp_path, [FileEntry("README", 3)], fold_names=True, overwrite=True)
    dest.prepare()
    _receive(dest, b"new")
    assert (tmp_path / "README").read_bytes() == b"new"


async def test_fold_names_reaches_the_receiver_through_the_policy(
    relay: Relay, tmp_path: Path,
) -> None:
    """receive(policy=ReceivePolicy(fold_names=True)) refuses README where readme exists;
    the sender is told it exists on the receiver's side. The default on Linux receives it."""
    make_file(tmp_path / "src" / "README", b"new")
    dest = tmp_path / "dest"
    make_file(dest / "readme", b"mine")

    async def transfer(code: str, policy: ReceivePolicy) -> list[Any]:
        async with asyncio.timeout(60):
            return await asyncio.gather(
                send(relay.url, code, [str(tmp_path / "src" / "README")], progress="none"),
                receive(relay.url, code, dest, progress="none", policy=policy),
                return_exceptions=True)

    sent, got = await transfer("5-fold-names", ReceivePolicy(fold_names=True))
    assert isinstance(got, DestinationExistsError), repr(got)
    assert isinstance(sent, DestinationExistsError) and "receiver's side" in str(sent)
    assert tree(dest) == {"readme"}
    assert ReceivePolicy().fold_names is (sys.platform in ("darwin", "win32"))
    if not ReceivePolicy().fold_names:
        sent, got = await transfer("6-fold-names", ReceivePolicy())
        assert not isinstance(got, BaseException), repr(got)
        assert tree(dest) == {"readme", "README"}


def test_a_read_only_file_is_received_where_read_only_files_cannot_be_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Windows refuses to remove a read-only file, and a received file is sealed with the
    sender's mode (0444: read-only) before its hidden name goes: the path backend makes its
    own hidden file writable to remove it. Emulated here: os.unlink refuses as Windows does."""
    real_unlink = os.unlink

    def unlink_as_windows(path: Any, *args: Any, **kwargs: Any) -> None:
        if not os.lstat(path).st_mode & stat.S_IWRITE:
            raise PermissionError(13, "Access is denied", str(path))
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink_as_windows)
    dest = Destination(tmp_path, [FileEntry("ro.txt", 3, mode=0o444)],
                       folders=destination._PathFolders)
    dest.prepare()
    _receive(dest, b"abc")
    dest.finish()
    assert (tmp_path / "ro.txt").read_bytes() == b"abc"
    assert os.listdir(tmp_path) == ["ro.txt"]
    assert not (tmp_path / "ro.txt").stat().st_mode & stat.S_IWRITE
