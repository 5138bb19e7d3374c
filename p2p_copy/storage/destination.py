"""Where received bytes reach the disk, and why nothing corrupt ever gets a final name.

Every file is written to a hidden temporary name beside its final name, hashed while it
is written, and renamed only after its digest (BLAKE3 or SHA-256) matches the sender's.
Folders are created one component at a time and never through a symlink, so a manifest
cannot reach outside the destination even if the destination already holds hostile links.
On a definitive failure ``abort`` removes the temporary files and the folders this
transfer made.

Resume: the temporary name is deterministic (``.NAME.p2p-copy-part``), and a sidecar
(``.NAME.p2p-copy-resume``, resume.Sidecar) records a verified prefix of it every few MiB
and when a transfer stops for a reason worth retrying (``suspend``). The next attempt
offers that prefix, after rehashing it, and a final file that already has the announced
size and time; the sender accepts only what matches its own bytes.

Two ways to reach the disk, with the same rules (only _Folders differs): through folder
descriptors (openat, O_NOFOLLOW, fchmod: Linux, macOS, the BSDs), and by path where the
system lacks them (Windows), every component checked with lstat just before each use and
again after, links, junctions and mount points refused alike. The choice is made once, at
import, by what the system has (has_folder_descriptors()). Testing switch:
P2P_COPY_PORTABLE_STORAGE=1 forces the path backend, so that Linux runs it too.

All methods block: the asyncio layer calls them from a worker thread.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import (
    DestinationExistsError,
    DiskFullError,
    Hint,
    IntegrityError,
    P2PCopyError,
    RemoteProtocolError,
    UnsafePathError,
)
from ..protocol.digests import NAMES, SHA256
from ..protocol.messages import DataEntry, DirEntry, Entry, FileEntry
from ..protocol.paths import display_name, fold, split_safe_path, split_safe_paths
from ..protocol.resume import BLOCK, ChainHasher, Offer, Sidecar, mtime_matches
from ..protocol.transfer import FileCompleted, FileData, data_entries
from ..results import FileResult

__all__ = ["Destination", "TEMP_SUFFIX", "SIDECAR_SUFFIX"]

TEMP_SUFFIX = ".p2p-copy-part"
SIDECAR_SUFFIX = ".p2p-copy-resume"
#: The sidecar is brought up to date (after an fdatasync) each time this much more arrived.
SIDECAR_EVERY = 8 * BLOCK
#: Bytes per read when rehashing a prefix found on disk.
READ_BYTES = 2**20
#: Free space wanted beyond the announced bytes, for folders and metadata: per entry, and once.
SPACE_PER_ENTRY = 4096
SPACE_MARGIN = 2**20
#: Seconds prepare() may spend rehashing what earlier attempts left, before ``accept``: the
#: sender waits api.ACCEPT_TIMEOUT (60 s) for it. What is not hashed in time is sent again.
HASH_BUDGET = 20.0
#: Folder descriptors kept open while writing (the most recently used ones).
DIRS_KEPT = 64
#: From this many entries on, prepare() lists each folder once instead of looking up each
#: name (a single file received into a folder of thousands lists nothing).
LIST_FROM = 64
#: What to do about a file that exists (in the receiver's spellings: errors.SPELLINGS).
_REPLACE = Hint("overwrite", "pass {} to replace it, or receive into another folder")


def _set_mtime(target: int | Path, mtime: float) -> None:
    """Set the modification time of a path or of an open descriptor (``target``)."""
    try:
        os.utime(target, (mtime, mtime))
    except OverflowError:  # finite, but beyond this platform's time_t
        raise RemoteProtocolError(
            f"The sender sent a modification time this system cannot store ({mtime:g} s)."
        ) from None


def _peer_name(path: Path, root: Path) -> str:
    """``path`` as the sender may be told it: relative to the destination, a name it sent.

    The destination's own place on this machine (its absolute path, the user's folders)
    is nobody's business but the local user's.
    """
    try:
        relative = path.relative_to(root)
    except ValueError:
        relative = Path()
    if not relative.parts:
        return "the receiver's destination folder"
    return repr(display_name(relative.as_posix()))


def _os_error(exc: OSError, path: Path, root: Path) -> P2PCopyError:
    """The error for ``exc`` at ``path`` (inside ``root``): full text here, a name for the peer."""
    name = _peer_name(path, root)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"The disk ran out of space while writing {display_name(str(path))!r}. "
            "Free some space and receive again.",
            peer_message=f"The receiver's disk ran out of space while writing {name}.",
        )
    return P2PCopyError(f"Cannot write {display_name(str(path))!r}: {exc.strerror}.",
                        peer_message=f"The receiver cannot write {name}.")


_umask_lock = threading.Lock()
#: The process umask, read once (reading it means setting it: see _umask()).
_umask_value: int | None = None


def _umask() -> int:
    """The receiver's umask, which the sender's modes never override (as tar and scp do)."""
    global _umask_value
    if _umask_value is not None:
        return _umask_value
    with _umask_lock:
        if _umask_value is None:
            # os.umask can only be read by setting it; the stricter value in between can
            # only make a file another thread creates meanwhile less accessible.
            _umask_value = os.umask(0o077)
            os.umask(_umask_value)
        return _umask_value


def _owned(st: os.stat_result) -> bool:
    """Whether a part file found on disk may be resumed: ours, writable by nobody else.

    In a shared folder another user could plant a part (and a sidecar vouching for it).
    """
    geteuid = getattr(os, "geteuid", None)
    if geteuid is not None and st.st_uid != geteuid():
        return False
    return not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _hidden_name(name: str, suffix: str) -> str:
    # Hidden, recognisable as ours and the same on every run, so that a later run finds
    # it. A long name is cut to stay under 255 bytes (45 characters are at most 180), and
    # then gets a hash of the whole name: two long names that share their first bytes
    # must never share a partial file (one would overwrite the other's verified bytes).
    if len(name) <= 45:
        return f".{name}{suffix}"
    stem = name.encode()[:150].decode(errors="ignore")
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f".{stem}.{digest}{suffix}"


#: macOS has no fdatasync.
_datasync = getattr(os, "fdatasync", os.fsync)


def _hidden(final: Path, suffix: str) -> Path:
    return final.with_name(_hidden_name(final.name, suffix))


# The flags and calls of the descriptor backend, looked up by name: Windows has none of
# them, and a missing one leaves 0 or None (then _Folders.choose() never picks it).
_O_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)
_O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
# Windows opens files in text mode unless told otherwise: "\n" would become "\r\n".
_O_BINARY: int = getattr(os, "O_BINARY", 0)
_fchmod: Callable[[int, int], None] | None = getattr(os, "fchmod", None)
# Windows' lstat leaves symlinks and junctions unfollowed and marks them with this attribute
# and a reparse tag that has the "name surrogate" bit (an alias of another path). Other
# reparse points (OneDrive's cloud files, deduplicated files) are the files themselves.
_REPARSE_POINT = stat.FILE_ATTRIBUTE_REPARSE_POINT
_NAME_SURROGATE = 0x20000000


def _is_link(st: os.stat_result) -> bool:
    """Whether lstat's ``st`` is a link of any kind: symbolic link, junction, mount point."""
    if stat.S_ISLNK(st.st_mode):
        return True
    if not getattr(st, "st_file_attributes", 0) & _REPARSE_POINT:
        return False
    tag: int = getattr(st, "st_reparse_tag", 0)
    return not tag or bool(tag & _NAME_SURROGATE)  # an unknown tag is taken for a link


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _unsafe_folder(path: Path, root: Path) -> UnsafePathError:
    return UnsafePathError(
        f"{display_name(str(path))!r} is not a folder (or is a link).",
        peer_message=f"{_peer_name(path, root)} is not a folder (or is a link) on the "
        "receiver's side.",
    )


def _changed(path: Path, root: Path) -> UnsafePathError:
    return UnsafePathError(
        f"{display_name(str(path))!r} changed while receiving (a folder or file was "
        "swapped, maybe for a link); nothing more was written there. Receive again.",
        peer_message=f"{_peer_name(path, root)} changed on the receiver's side while "
        "receiving.",
    )


def has_folder_descriptors() -> bool:
    """Whether this system has every call _DirFdFolders makes (found by capability, so
    that a system is judged by what it has, not by its name)."""
    needed = {os.open, os.mkdir, os.unlink, os.stat, os.link, os.rename}
    return bool(_O_DIRECTORY and _O_NOFOLLOW and _fchmod is not None
                and needed <= os.supports_dir_fd and os.utime in os.supports_fd)


class _Folders:
    """The file-system calls a Destination makes, relative to a folder of the destination.

    Everything else (names, overwrite rules, sidecars, hashing, abort) is Destination's and
    _Open's, the same whatever the system. Two implementations: _DirFdFolders works through
    folder descriptors (openat and friends) where the system has them (Linux, macOS, the
    BSDs); _PathFolders works by path, checking each component just before each use and
    again after (Windows, and any system without them). ``folder`` is a tuple of names below
    ``root``; ``name`` a single name in it.
    """

    def __init__(self, root: Path, made: list[Path], ours: set[Path]) -> None:
        self.root = root
        self._made = made
        self._ours = ours

    @staticmethod
    def choose() -> type[_Folders]:
        """The descriptor backend where every call it needs exists, else the path one.

        P2P_COPY_PORTABLE_STORAGE=1 picks the path backend anyway (a testing switch: the
        test suites run both on Linux).
        """
        if os.environ.get(PORTABLE_ENV, "") not in ("", "0"):
            return _PathFolders
        return _DirFdFolders if has_folder_descriptors() else _PathFolders

    def _record_made(self, path: Path) -> None:
        self._made.append(path)
        self._ours.add(path)

    # --- what each backend provides ---

    def folder(self, parts: tuple[str, ...], *, create: bool = True) -> None:
        """Make sure ``root/parts`` is a folder and no link (made, mode 0700, if ``create``)."""
        raise NotImplementedError

    def create(self, folder: tuple[str, ...], name: str) -> int:
        """A new private file (0600), opened for writing; FileExistsError if ``name`` exists."""
        raise NotImplementedError

    def open_write(self, folder: tuple[str, ...], name: str) -> int:
        """The existing regular file ``name`` (never through a link), opened for writing."""
        raise NotImplementedError

    def open_read(self, path: Path) -> int:
        """``path`` (below ``root``) opened for reading, never through a link; OSError if not."""
        raise NotImplementedError

    def exists(self, folder: tuple[str, ...], name: str) -> bool:
        raise NotImplementedError

    def unlink(self, folder: tuple[str, ...], name: str) -> None:
        """Remove ``name`` if it is there (a link itself, never what it points at)."""
        raise NotImplementedError

    def _link(self, folder: tuple[str, ...], temp: str, name: str) -> None:
        raise NotImplementedError

    def replace(self, folder: tuple[str, ...], temp: str, name: str) -> None:
        """Rename ``temp`` to ``name`` in ``folder``, replacing what had that name (atomic)."""
        raise NotImplementedError

    def seal(self, folder: tuple[str, ...], name: str, fd: int, mode: int,
             mtime: float | None) -> None:
        """Give the file open as ``fd`` (named ``name``) its mode and time, and close ``fd``."""
        raise NotImplementedError

    def set_folder(self, parts: tuple[str, ...], mode: int, mtime: float | None) -> None:
        """Give folder ``root/parts`` its mode and time."""
        raise NotImplementedError

    def close(self) -> None:
        """Let go of what is held open (the next call opens again)."""

    # --- shared ---

    def link(self, folder: tuple[str, ...], temp: str, name: str) -> bool:
        """Give ``temp`` its final ``name`` unless that name exists (FileExistsError), atomically.

        False if this file system has no hard links: then the caller checks and renames.
        """
        try:
            self._link(folder, temp, name)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
                raise
            return False
        self.unlink(folder, temp)
        return True


class _DirFdFolders(_Folders):
    """Descriptors of the folders files are written into, each opened without following links.

    Files are created, renamed and removed relative to them: a folder checked once stays
    the folder written into, even if it is swapped for a link later, and the kernel does
    not walk the whole path again for every file. The most recently used ones stay open.
    """

    def __init__(self, root: Path, made: list[Path], ours: set[Path]) -> None:
        super().__init__(root, made, ours)
        self._fds: collections.OrderedDict[tuple[str, ...], int] = collections.OrderedDict()

    def folder(self, parts: tuple[str, ...], *, create: bool = True) -> None:
        self.fd(parts, create=create)

    def fd(self, parts: tuple[str, ...], *, create: bool = True) -> int:
        """The descriptor of folder ``root/parts``, made (mode 0700) if missing and ``create``."""
        fd = self._fds.get(parts)
        if fd is not None:
            self._fds.move_to_end(parts)
            return fd
        if not parts:
            try:
                fd = os.open(self.root, os.O_RDONLY | _O_DIRECTORY)
            except OSError as exc:
                raise _os_error(exc, self.root, self.root) from None
        else:
            parent = self.fd(parts[:-1], create=create)
            name = parts[-1]
            if create:
                try:
                    os.mkdir(name, 0o700, dir_fd=parent)
                    self._record_made(self.root.joinpath(*parts))
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise _os_error(exc, self.root.joinpath(*parts), self.root) from None
            try:
                fd = os.open(name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW, dir_fd=parent)
            except OSError as exc:
                path = self.root.joinpath(*parts)
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _unsafe_folder(path, self.root) from None
                raise _os_error(exc, path, self.root) from None
        self._fds[parts] = fd
        while len(self._fds) > DIRS_KEPT:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def create(self, folder: tuple[str, ...], name: str) -> int:
        return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o600,
                       dir_fd=self.fd(folder))

    def open_write(self, folder: tuple[str, ...], name: str) -> int:
        return os.open(name, os.O_WRONLY | _O_NOFOLLOW, dir_fd=self.fd(folder))

    def open_read(self, path: Path) -> int:
        return os.open(path, os.O_RDONLY | _O_NOFOLLOW)

    def exists(self, folder: tuple[str, ...], name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.fd(folder), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def unlink(self, folder: tuple[str, ...], name: str) -> None:
        at = self.fd(folder, create=False)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=at)

    def _link(self, folder: tuple[str, ...], temp: str, name: str) -> None:
        at = self.fd(folder)
        os.link(temp, name, src_dir_fd=at, dst_dir_fd=at, follow_symlinks=False)

    def replace(self, folder: tuple[str, ...], temp: str, name: str) -> None:
        at = self.fd(folder)
        os.replace(temp, name, src_dir_fd=at, dst_dir_fd=at)

    def seal(self, folder: tuple[str, ...], name: str, fd: int, mode: int,
             mtime: float | None) -> None:
        try:
            assert _fchmod is not None  # choose() picks this backend only where it exists
            _fchmod(fd, mode)
            if mtime is not None:
                _set_mtime(fd, mtime)
        finally:
            os.close(fd)

    def set_folder(self, parts: tuple[str, ...], mode: int, mtime: float | None) -> None:
        fd = self.fd(parts)
        assert _fchmod is not None
        _fchmod(fd, mode)
        if mtime is not None:
            _set_mtime(fd, mtime)

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])


class _PathFolders(_Folders):
    """Folders reached by path, for systems without folder descriptors (Windows).

    Each component is checked (lstat: a folder, no link, junction or other alias) just
    before each use, and again after it: a file opened is the one lstat sees under its
    name (same device and inode), and every folder on the way is still the one checked.
    That narrows a race with a local user who swaps a folder for a link to a short
    window, and any swap seen fails the transfer (a file just made through the swapped
    folder is removed again); it cannot close it as descriptors do: within that window
    a folder, or a rename or removal of our own hidden files, may reach where the link
    points.
    """

    def _chain(self, parts: tuple[str, ...], *, create: bool) -> tuple[Path, list[tuple[int, int]]]:
        """``root/parts`` checked component by component, and each one's (device, inode)."""
        try:
            st = os.stat(self.root)  # the destination itself may be a link the user chose
        except OSError as exc:
            raise _os_error(exc, self.root, self.root) from None
        if not stat.S_ISDIR(st.st_mode):
            raise _unsafe_folder(self.root, self.root)
        identities = [_identity(st)]
        path = self.root
        for name in parts:
            path = path / name
            if create:
                try:
                    os.mkdir(path, 0o700)
                    self._record_made(path)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise _os_error(exc, path, self.root) from None
            try:
                st = os.lstat(path)
            except OSError as exc:
                raise _os_error(exc, path, self.root) from None
            if _is_link(st) or not stat.S_ISDIR(st.st_mode):
                raise _unsafe_folder(path, self.root)
            identities.append(_identity(st))
        return path, identities

    def _still(self, parts: tuple[str, ...], identities: list[tuple[int, int]]) -> None:
        """Fail if a folder of ``root/parts`` is no longer the one _chain() checked."""
        try:
            _, now = self._chain(parts, create=False)
        except P2PCopyError:
            now = []
        if now != identities:
            raise _changed(self.root.joinpath(*parts), self.root)

    def _opened(self, path: Path, fd: int) -> None:
        """Fail (closing ``fd``) unless ``fd`` is the regular file lstat finds at ``path``."""
        try:
            st, seen = os.fstat(fd), os.lstat(path)
        except OSError:
            os.close(fd)
            raise
        if _is_link(seen) or not stat.S_ISREG(st.st_mode) or _identity(st) != _identity(seen):
            os.close(fd)
            raise _changed(path, self.root)

    def folder(self, parts: tuple[str, ...], *, create: bool = True) -> None:
        self._chain(parts, create=create)

    def create(self, folder: tuple[str, ...], name: str) -> int:
        where, identities = self._chain(folder, create=True)
        # O_EXCL never opens what is there, a link included (CREATE_NEW on Windows).
        fd = os.open(where / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o600)
        self._opened(where / name, fd)
        try:
            self._still(folder, identities)
        except P2PCopyError:
            # A folder was swapped while the file was made: it may have been made where a
            # link points. It is empty and ours (the one still open): it goes.
            with contextlib.suppress(OSError):
                if _identity(os.lstat(where / name)) == _identity(os.fstat(fd)):
                    os.unlink(where / name)
            os.close(fd)
            raise
        return fd

    def open_write(self, folder: tuple[str, ...], name: str) -> int:
        where, identities = self._chain(folder, create=False)
        if _is_link(os.lstat(where / name)):
            raise _changed(where / name, self.root)
        fd = os.open(where / name, os.O_WRONLY | _O_BINARY)
        self._opened(where / name, fd)
        try:
            self._still(folder, identities)
        except P2PCopyError:
            os.close(fd)
            raise
        return fd

    def open_read(self, path: Path) -> int:
        try:
            parts = path.relative_to(self.root).parts
            where, identities = self._chain(parts[:-1], create=False)
            if _is_link(os.lstat(where / parts[-1])):
                raise _changed(path, self.root)
            fd = os.open(where / parts[-1], os.O_RDONLY | _O_BINARY)
            self._opened(where / parts[-1], fd)
            try:
                self._still(parts[:-1], identities)
            except P2PCopyError:
                os.close(fd)
                raise
        except (P2PCopyError, ValueError, IndexError):
            raise OSError(errno.ELOOP, "not a file of the destination") from None
        return fd

    def exists(self, folder: tuple[str, ...], name: str) -> bool:
        where, _ = self._chain(folder, create=False)
        try:
            os.lstat(where / name)
        except FileNotFoundError:
            return False
        return True

    def unlink(self, folder: tuple[str, ...], name: str) -> None:
        where, identities = self._chain(folder, create=False)
        path = where / name
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except PermissionError:
            # Windows removes no read-only file, and a sealed file has the sender's mode
            # (0444 is the read-only flag there): our own hidden file is made writable
            # first, if it has no other name (whose mode would change with it).
            st = os.lstat(path)
            if (_is_link(st) or not stat.S_ISREG(st.st_mode) or st.st_nlink != 1
                    or st.st_mode & stat.S_IWRITE):
                raise
            os.chmod(path, stat.S_IREAD | stat.S_IWRITE)
            os.unlink(path)
        self._still(folder, identities)

    def link(self, folder: tuple[str, ...], temp: str, name: str) -> bool:
        where, _ = self._chain(folder, create=False)
        mode = stat.S_IMODE(os.lstat(where / temp).st_mode)
        if mode & stat.S_IWRITE:
            return super().link(folder, temp, name)
        # Read-only: Windows could not remove the hidden name once the final one is made,
        # so it is writable while it has two names, then read-only again under one.
        os.chmod(where / temp, mode | stat.S_IWRITE)
        linked = False
        try:
            linked = super().link(folder, temp, name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(where / (name if linked else temp), mode)
        return linked

    def _link(self, folder: tuple[str, ...], temp: str, name: str) -> None:
        where, identities = self._chain(folder, create=False)
        os.link(where / temp, where / name)
        self._still(folder, identities)

    def replace(self, folder: tuple[str, ...], temp: str, name: str) -> None:
        where, identities = self._chain(folder, create=False)
        os.replace(where / temp, where / name)
        self._still(folder, identities)

    def seal(self, folder: tuple[str, ...], name: str, fd: int, mode: int,
             mtime: float | None) -> None:
        # Closed first: Windows may date a file written through a handle when it closes.
        try:
            identity = _identity(os.fstat(fd))
        finally:
            os.close(fd)
        where, identities = self._chain(folder, create=False)
        path = where / name
        seen = os.lstat(path)
        if _is_link(seen) or _identity(seen) != identity:
            raise _changed(path, self.root)
        self._set(path, mode, mtime)
        self._still(folder, identities)

    def set_folder(self, parts: tuple[str, ...], mode: int, mtime: float | None) -> None:
        path, identities = self._chain(parts, create=False)
        self._set(path, mode, mtime)
        self._still(parts, identities)

    @staticmethod
    def _set(path: Path, mode: int, mtime: float | None) -> None:
        # The time first: a mode without write permission is Windows' read-only flag.
        if mtime is not None:
            _set_mtime(path, mtime)
        # Where the system can, not even a link swapped in since the check is followed.
        os.chmod(path, mode, follow_symlinks=os.chmod not in os.supports_follow_symlinks)


#: P2P_COPY_PORTABLE_STORAGE=1: write by path (_PathFolders) even where descriptors exist.
PORTABLE_ENV = "P2P_COPY_PORTABLE_STORAGE"
#: The backend every Destination uses unless given another, chosen once at import.
FOLDERS: type[_Folders] = _Folders.choose()


def _lone_regular(path: Path) -> os.stat_result | None:
    """lstat of ``path`` if it is a regular file with no other name (never a planted link)."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 else None


class _OutOfTime(Exception):
    """prepare() used up HASH_BUDGET."""


def _hash_prefix(folders: _Folders, path: Path, length: int, algorithm: str,
                 deadline: float | None = None, *,
                 part: bool = False) -> tuple[ChainHasher, tuple[int, int]] | None:
    """The hash of ``path``'s first ``length`` bytes and the (device, inode) it was read
    from, or None if it is shorter, unreadable, or (``part``) not one we may resume.

    Raises _OutOfTime once ``deadline`` (time.monotonic()) has passed.
    """
    chain = ChainHasher(algorithm=algorithm)
    try:
        fd = folders.open_read(path)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or (part and not _owned(st)):
            return None
        while chain.position < length:
            if deadline is not None and time.monotonic() > deadline:
                raise _OutOfTime
            data = os.read(fd, min(READ_BYTES, length - chain.position))
            if not data:
                return None
            chain.update(data)
    except OSError:
        return None
    finally:
        os.close(fd)
    return chain, _identity(st)


@dataclass
class _Found:
    """A prefix of file ``file`` found on disk: in its part file, or its final file whole."""

    file: int
    chain: ChainHasher
    final: bool
    #: (st_dev, st_ino) of the file hashed: a part reopened later must be that same file.
    identity: tuple[int, int] = (0, 0)

    @property
    def offer(self) -> Offer:
        return Offer(self.file, self.chain.position, self.chain.hexdigest())


class _Open:
    """A file being received: its folder, temporary name, descriptor and running hash."""

    def __init__(self, dirs: _Folders, parts: tuple[str, ...], entry: DataEntry,
                 start: _Found | None = None, *, algorithm: str) -> None:
        self.dirs = dirs
        self.folder, self.name = parts[:-1], parts[-1]
        self.entry = entry
        self.temp = _hidden_name(self.name, TEMP_SUFFIX)
        #: Whether a sidecar may be beside it (one we resume from, or one we wrote).
        self.has_sidecar = start is not None
        self.synced = 0
        dirs.folder(self.folder)
        if start is None:
            # A fresh start: whatever has this name goes (never written through), and
            # O_EXCL makes sure that the file written is the one created here. It stays
            # private until seal() gives it its mode.
            dirs.unlink(self.folder, self.sidecar)
            dirs.unlink(self.folder, self.temp)
            self.fd = dirs.create(self.folder, self.temp)
            self.chain = ChainHasher(algorithm=algorithm)
        else:
            self.fd = dirs.open_write(self.folder, self.temp)
            st = os.fstat(self.fd)
            # The very file prepare() hashed, still ours: not one swapped in since.
            if (not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or not _owned(st)
                    or _identity(st) != start.identity):
                os.close(self.fd)
                part = self.final.with_name(self.temp)
                raise UnsafePathError(
                    f"{display_name(str(part))!r} changed while resuming; remove it and "
                    "receive again.",
                    peer_message=f"{_peer_name(part, dirs.root)} changed on the receiver's "
                    "side while resuming.",
                )
            chain = start.chain
            os.ftruncate(self.fd, chain.position)
            os.lseek(self.fd, chain.position, os.SEEK_SET)
            self.chain = chain
            self.synced = chain.position

    @property
    def sidecar(self) -> str:
        """The sidecar's name (made when needed: most small files never have one)."""
        return _hidden_name(self.name, SIDECAR_SUFFIX)

    @property
    def final(self) -> Path:
        """The final path (for messages: the file is reached through its folder's descriptor)."""
        return self.dirs.root.joinpath(*self.folder, self.name)

    @property
    def written(self) -> int:
        return self.chain.position

    @property
    def entry_size(self) -> int | None:
        return self.entry.size if isinstance(self.entry, FileEntry) else None

    def seal(self) -> None:
        """Give the complete temporary file its mode and time, and close it."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            self.dirs.seal(self.folder, self.temp, fd,
                           stat.S_IMODE(self.entry.mode) & 0o777 & ~_umask(), self.entry.mtime)

    def save_point(self) -> bool:
        """Make what was written durable, then record its last whole-block prefix.

        Whether a sidecar now vouches for a prefix: none can for less than a block, nor
        for a stream, whose size (part of what a sidecar records) is not known yet.
        """
        size = self.entry.size if isinstance(self.entry, FileEntry) else None
        offset = self.chain.position if self.chain.position == size else self.chain.last_block()
        digest = self.chain.digest_at(offset) if offset else None
        if self.fd >= 0:
            _datasync(self.fd)
        self.synced = self.chain.position
        if digest is None or size is None:
            return False
        sidecar = Sidecar(size=size, mtime=self.entry.mtime, offset=offset, digest=digest,
                          algorithm=self.chain.algorithm)
        temp = self.sidecar + ".new"
        self.dirs.unlink(self.folder, temp)
        self.has_sidecar = True
        fd = self.dirs.create(self.folder, temp)
        try:
            os.write(fd, sidecar.encode())
        finally:
            os.close(fd)
        self.dirs.replace(self.folder, temp, self.sidecar)
        return True

    def discard(self) -> None:
        """Close and remove the temporary file and its sidecar (never making folders)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            self.dirs.unlink(self.folder, self.temp)
            self.dirs.unlink(self.folder, self.sidecar)
        except P2PCopyError:
            return  # its folder is gone, and the file with it (or is no longer ours)


class Destination:
    """Writes one transfer's files into ``root``."""

    def __init__(self, root: Path, entries: Sequence[Entry], *, overwrite: bool = False,
                 algorithm: str = SHA256, made_folders: set[Path] | None = None,
                 refused: set[str] | None = None, fold_names: bool = False,
                 folders: type[_Folders] | None = None) -> None:
        self.root = root
        #: The transfer's hash (digests.py): what files are checked and prefixes offered with.
        self.algorithm = algorithm
        self.entries = tuple(entries)
        # Files and a final stream, by file number.
        self.files = data_entries(self.entries)
        self.overwrite = overwrite
        #: Refuse names an existing one differs from only in case or Unicode form
        #: (ReceivePolicy.fold_names).
        self.fold_names = fold_names
        #: The names in a folder by their folded key (fold_names only, read when needed).
        self._folded: dict[tuple[str, ...], dict[str, str]] = {}
        self._open: dict[int, _Open] = {}
        self._made_dirs: list[Path] = []
        #: Every folder this run made, in this attempt or an earlier one (``made_folders``,
        #: shared by the caller across attempts): the only ones finish() gives a mode and time.
        self.made_folders: set[Path] = set() if made_folders is None else made_folders
        self._dirs = (folders or FOLDERS)(root, self._made_dirs, self.made_folders)
        #: Final files the sender did not take in an earlier attempt of this run, to be
        #: replaced (``refused``, shared by the caller like ``made_folders``): never offered
        #: again, so that a sender learns at most one yes or no about each file per run.
        self.refused: set[str] = set() if refused is None else refused
        #: Path components of each entry, by path (checked once).
        self._parts: dict[str, tuple[str, ...]] = {}
        self.results: list[FileResult] = []
        #: Prefixes found by prepare(), by file number: what offers() offers.
        self._found: dict[int, _Found] = {}
        #: Final files kept as they are, by file number: their whole-file hash.
        self._kept: dict[int, ChainHasher] = {}
        #: Files that continue from a prefix: that prefix.
        self._starts: dict[int, _Found] = {}
        #: Final files like the announced ones that prepare() had no time to hash: if
        #: received again, they are compared then (not replaced without ``overwrite``).
        self._unchecked: set[int] = set()

    #: A new attempt after a failure worth retrying starts from what is on disk.
    restartable = True

    # --- before any byte ---------------------------------------------------------

    def prepare(self) -> None:
        """Refuse the transfer now if it cannot end well: existing files, links, space."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, self.root, self.root) from None
        paths = [entry.path for entry in self.entries]
        self._parts.update(zip(paths, split_safe_paths(paths), strict=True))
        # One listing per folder says which names exist; only those are looked at.
        listings: dict[tuple[str, ...], frozenset[str] | None] = {}
        folders: set[tuple[str, ...]] = set()
        for entry in self.entries:
            self._check_target(entry, listings, folders)
        deadline = time.monotonic() + HASH_BUDGET
        for file, entry in enumerate(self.files):
            if isinstance(entry, FileEntry):
                self._find(file, entry, listings, deadline)
        # A stream's size is unknown: it can only fail when the disk fills up.
        needed = sum(f.size for f in self.files if isinstance(f, FileEntry))
        needed -= sum(f.chain.position for f in self._found.values())
        free = shutil.disk_usage(self.root).free
        if needed + SPACE_MARGIN + SPACE_PER_ENTRY * len(self.entries) > free:
            raise DiskFullError(
                f"Not enough free space in {display_name(str(self.root))!r}: the transfer "
                f"needs {needed:,} bytes, {free:,} are free. Free some space or pick "
                "another folder with --out.",
                # Neither its folder nor how full its disk is: the sender knows the size.
                peer_message="The receiver has not enough free space for this transfer.",
            )

    def _split(self, entry: Entry) -> tuple[str, ...]:
        parts = self._parts.get(entry.path)
        if parts is None:
            parts = self._parts[entry.path] = split_safe_path(entry.path)
        return parts

    def _may_exist(self, folder: tuple[str, ...], name: str,
                   listings: dict[tuple[str, ...], frozenset[str] | None]) -> bool:
        """Whether ``folder/name`` may exist: False only if a listing of ``folder`` lacks it."""
        if len(self.entries) < LIST_FROM:
            return True
        if folder not in listings:
            try:
                listings[folder] = frozenset(os.listdir(self.root.joinpath(*folder)))
            except (FileNotFoundError, NotADirectoryError):
                listings[folder] = frozenset()
            except OSError:
                listings[folder] = None  # unknown: look at each name
        names = listings[folder]
        return names is None or name in names

    def _check_target(self, entry: Entry,
                      listings: dict[tuple[str, ...], frozenset[str] | None],
                      folders: set[tuple[str, ...]]) -> None:
        parts = self._split(entry)
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if not last and parts[: i + 1] in folders:
                continue  # a folder already checked for an earlier entry
            path = self.root.joinpath(*parts[: i + 1])
            st = None
            if self._may_exist(parts[:i], part, listings):
                with contextlib.suppress(FileNotFoundError):
                    st = path.lstat()
            if st is None:
                if self.fold_names:
                    self._check_folded(parts[:i], part, path)
                return  # nothing there yet, nor below it
            if _is_link(st):
                raise UnsafePathError(
                    f"{display_name(str(path))!r} is a symbolic link; p2p-copy never writes "
                    "through links. Remove it or receive into another folder.",
                    peer_message=f"{_peer_name(path, self.root)} is a symbolic link on the "
                    "receiver's side; p2p-copy never writes through links.",
                )
            if not last and not stat.S_ISDIR(st.st_mode):
                raise self._not_a_folder(path)
            if not last:
                folders.add(parts[: i + 1])
            if last and isinstance(entry, DirEntry) and not stat.S_ISDIR(st.st_mode):
                raise self._not_a_folder(path)
            if last and not isinstance(entry, DirEntry):
                if self._same_stat(entry, st):
                    return  # maybe this very file from an earlier run: prepare() checks
                if stat.S_ISDIR(st.st_mode) or not self.overwrite:
                    raise DestinationExistsError(
                        f"{display_name(str(path))!r} already exists.",
                        peer_message=f"{_peer_name(path, self.root)} already exists on the "
                        "receiver's side.",
                        hint=_REPLACE,
                    )

    def _check_folded(self, folder: tuple[str, ...], name: str, path: Path) -> None:
        """Refuse ``name`` if ``folder`` holds a name only case or Unicode form away from it.

        Reached only when this file system did not find ``name`` itself (it tells them
        apart): the two would be two files here, one on a system that folds names, and no
        ``overwrite`` can make them one here.
        """
        names = self._folded.get(folder)
        if names is None:
            try:
                listed = os.listdir(self.root.joinpath(*folder))
            except OSError:
                listed = []  # no folder yet: nothing to collide with
            names = self._folded[folder] = {fold(n): n for n in listed}
        other = names.get(fold(name))
        if other is None or other == name:
            return
        raise DestinationExistsError(
            f"{display_name(str(path))!r} and the existing {display_name(other)!r} differ only "
            "in case or Unicode form: a system that ignores the difference sees one name. "
            "Receive into another folder, or rename one of them.",
            peer_message=f"{_peer_name(path, self.root)} differs only in case or Unicode form "
            f"from {display_name(other)!r}, which exists on the receiver's side.",
        )

    def _not_a_folder(self, path: Path) -> DestinationExistsError:
        return DestinationExistsError(
            f"{display_name(str(path))!r} exists and is not a folder.",
            peer_message=f"{_peer_name(path, self.root)} exists on the receiver's side and is "
            "not a folder.",
        )

    @staticmethod
    def _same_stat(entry: Entry, st: os.stat_result) -> bool:
        return (isinstance(entry, FileEntry) and stat.S_ISREG(st.st_mode) and st.st_nlink == 1
                and st.st_size == entry.size and entry.mtime is not None
                # Without an announced mtime any file of that name and size would be
                # hashed and its digest offered: a hostile sender could test guesses.
                and mtime_matches(entry.mtime, st.st_mtime))

    def _final_path(self, entry: Entry) -> Path:
        return self.root.joinpath(*self._split(entry))

    def _find(self, file: int, entry: FileEntry,
              listings: dict[tuple[str, ...], frozenset[str] | None], deadline: float) -> None:
        """Look for a prefix of ``entry`` from an earlier attempt: final file, or part.

        Past ``deadline`` nothing more is offered: a part starts over, and a final file
        is compared when it arrives again.
        """
        if entry.path in self.refused:
            return  # answered once this run: it will be replaced (--overwrite)
        parts = self._split(entry)
        folder, name = parts[:-1], parts[-1]
        # Listings (when there are many entries) spare a look at names that are not there.
        final = self._final_path(entry) if self._may_exist(folder, name, listings) else None
        st = None if final is None else _lone_regular(final)
        if final is not None and st is not None and self._same_stat(entry, st):
            if entry.size == 0:
                # Nothing to offer, nothing to differ.
                self._kept[file] = ChainHasher(algorithm=self.algorithm)
                return
            try:
                hashed = _hash_prefix(self._dirs, final, entry.size, self.algorithm, deadline)
            except _OutOfTime:
                self._unchecked.add(file)
                return
            if hashed is not None:
                self._found[file] = _Found(file, hashed[0], final=True)
            return
        if not (self._may_exist(folder, _hidden_name(name, TEMP_SUFFIX), listings)
                and self._may_exist(folder, _hidden_name(name, SIDECAR_SUFFIX), listings)):
            return  # no part with a sidecar from an earlier attempt
        final = self._final_path(entry)
        part, sidecar_path = _hidden(final, TEMP_SUFFIX), _hidden(final, SIDECAR_SUFFIX)
        part_stat = _lone_regular(part)
        sidecar_stat = _lone_regular(sidecar_path)
        if (part_stat is None or sidecar_stat is None or sidecar_stat.st_size > 4096
                or not _owned(part_stat) or not _owned(sidecar_stat)):
            # No part, one from p2p-copy 0.2 without a sidecar, or one another user could
            # have planted or changed: started over.
            return
        sidecar = Sidecar.parse(sidecar_path.read_bytes())
        # A part recorded with another hash than this transfer's starts over (rare: one
        # side lacked BLAKE3 then or now); rehashing it twice would cost more than it saves.
        if (sidecar is None or sidecar.size != entry.size or sidecar.mtime != entry.mtime
                or part_stat.st_size < sidecar.offset or sidecar.algorithm != self.algorithm):
            return
        try:
            hashed = _hash_prefix(self._dirs, part, sidecar.offset, self.algorithm, deadline,
                                  part=True)
        except _OutOfTime:
            return
        if hashed is not None and hashed[0].hexdigest() == sidecar.digest:
            self._found[file] = _Found(file, hashed[0], final=False, identity=hashed[1])

    def offers(self) -> list[Offer]:
        """The prefixes found by prepare() with their digests: ``accept`` offers the
        (file, offset) only, and the digests stay here to check the sender's (transfer.py)."""
        return [found.offer for found in self._found.values()]

    def resume(self, starts: dict[int, int], differs: Collection[int] = ()) -> None:
        """Files of ``starts`` continue from those offsets; the others start over.

        ``differs``: offered files whose prefix the sender showed to differ from ours. A
        final file among them stays as it is and fails the transfer (``exists``) unless
        overwriting is allowed; one the sender did not compare is compared on arrival.
        """
        for file, found in self._found.items():
            if file in starts:
                if found.final:
                    self._kept[file] = found.chain
                else:
                    self._starts[file] = found
                continue
            # Not taken. A sender that hangs up now and comes back must not get a second
            # guess at the same content: a part goes at once (a new one holds only what
            # this run wrote), a final file that will be replaced is not offered again.
            if not found.final:
                self._drop_part(file)
            elif self.overwrite:
                self.refused.add(self.files[file].path)
            else:
                if file not in differs:
                    # The sender did not compare it (it ignored the offer, or could not
                    # read its own prefix): compared when it arrives, like one not hashed.
                    self._unchecked.add(file)
                    continue
                raise self._differs(self._final_path(self.files[file]))
        self._found.clear()

    def _drop_part(self, file: int) -> None:
        """Remove file ``file``'s part and sidecar from an earlier attempt."""
        parts = self._split(self.files[file])
        folder, name = parts[:-1], parts[-1]
        with contextlib.suppress(P2PCopyError):  # its folder is gone, or no longer ours
            self._dirs.unlink(folder, _hidden_name(name, TEMP_SUFFIX))
            self._dirs.unlink(folder, _hidden_name(name, SIDECAR_SUFFIX))

    def _differs(self, path: Path) -> DestinationExistsError:
        return DestinationExistsError(
            f"{display_name(str(path))!r} already exists and differs from the sender's.",
            peer_message=f"{_peer_name(path, self.root)} already exists on the receiver's "
            "side and differs from the sender's.",
            hint=_REPLACE,
        )

    # --- while data arrives ------------------------------------------------------

    def apply(self, events: Iterable[FileData | FileCompleted]) -> list[FileResult]:
        """Write data and finish files, in order; return the files that became final."""
        done: list[FileResult] = []
        for event in events:
            if isinstance(event, FileData):
                self._write(event)
            else:
                done.append(self._complete(event))
        return done

    def _write(self, event: FileData) -> None:
        current = self._open.get(event.file)
        if current is None:
            current = self._open[event.file] = self._start(event.file)
        data = event.data
        try:
            while data:
                written = os.write(current.fd, data)
                if written == len(data):  # nearly always: no slices
                    current.chain.update(data)
                    break
                current.chain.update(data[:written])
                data = data[written:]
            entry = current.entry
            if isinstance(entry, FileEntry) and event.offset + len(event.data) == entry.size:
                # Its checksum may come a few thousand files later: free the descriptor now.
                current.seal()
            elif current.written - current.synced >= SIDECAR_EVERY:
                current.save_point()
        except OSError as exc:
            raise _os_error(exc, current.final, self.root) from None

    def _start(self, file: int) -> _Open:
        entry = self.files[file]
        parts = self._split(entry)
        start = self._starts.pop(file, None)
        try:
            return _Open(self._dirs, parts, entry, start, algorithm=self.algorithm)
        except OSError as exc:
            raise _os_error(exc, self.root.joinpath(*parts), self.root) from None

    def _complete(self, event: FileCompleted) -> FileResult:
        kept = self._kept.pop(event.file, None)
        if kept is not None:
            return self._keep(event, kept)
        current = self._open.pop(event.file, None) or self._start(event.file)
        entry = current.entry
        digest = current.chain.hexdigest()
        try:
            if digest != event.digest:
                raise IntegrityError(
                    f"{display_name(entry.path)!r} arrived damaged ({NAMES[self.algorithm]} "
                    "mismatch); it was discarded. Send it again."
                )
            current.seal()
            if event.file in self._unchecked and not self.overwrite:
                same = _hash_prefix(self._dirs, current.final, current.written, self.algorithm)
                if same is not None and same[0].hexdigest() == digest:
                    # The file prepare() had no time to check was this one: it stays.
                    current.discard()
                    result = FileResult(entry.path, current.written, digest, self.algorithm)
                    self.results.append(result)
                    return result
            dirs, folder = self._dirs, current.folder
            if self.overwrite or not dirs.link(folder, current.temp, current.name):
                if not self.overwrite and dirs.exists(folder, current.name):
                    raise FileExistsError
                dirs.replace(folder, current.temp, current.name)
            if current.has_sidecar:
                dirs.unlink(folder, current.sidecar)
        except FileExistsError:
            current.discard()
            if event.file in self._unchecked:
                raise self._differs(current.final) from None
            raise DestinationExistsError(
                f"{display_name(str(current.final))!r} appeared while receiving; "
                "it was left as it is.",
                peer_message=f"{_peer_name(current.final, self.root)} appeared on the "
                "receiver's side while receiving; it was left as it is.",
            ) from None
        except OSError as exc:
            current.discard()
            raise _os_error(exc, current.final, self.root) from None
        except P2PCopyError:
            current.discard()
            raise
        result = FileResult(entry.path, current.written, digest, self.algorithm)
        self.results.append(result)
        return result

    def _keep(self, event: FileCompleted, kept: ChainHasher) -> FileResult:
        """A final file from an earlier attempt that the sender's digest confirms."""
        entry = self.files[event.file]
        digest = kept.hexdigest()
        if digest != event.digest:
            # The sender's file changed after it checked our offer: ours stays as it was.
            raise IntegrityError(
                f"{display_name(entry.path)!r} changed on the sender's side while it was "
                "being sent. Send it again."
            )
        result = FileResult(entry.path, kept.position, digest, self.algorithm)
        self.results.append(result)
        return result

    # --- at the end ----------------------------------------------------------------

    def finish(self) -> None:
        """Create the announced folders and give those this run made their modes and times.

        A folder that existed before keeps its mode and time, even with ``overwrite``
        (which replaces files, never a folder): a folder entry only says "merge into it",
        and a sender must not open up ``.ssh/`` (0700) or date it back to 1970.
        """
        dirs = [e for e in self.entries if isinstance(e, DirEntry)]
        for entry in sorted(dirs, key=lambda e: e.path.count("/"), reverse=True):
            parts = self._split(entry)
            self._dirs.folder(parts)
            if self._final_path(entry) not in self.made_folders:
                continue
            try:
                # The owner keeps full rights so that a later transfer can add to it.
                self._dirs.set_folder(
                    parts, (stat.S_IMODE(entry.mode) & 0o777 & ~_umask()) | 0o700, entry.mtime)
            except OSError as exc:
                raise _os_error(exc, self._final_path(entry), self.root) from None
        self._dirs.close()
        self._made_dirs.clear()

    def suspend(self) -> None:
        """Stop for now, keeping every part with a prefix worth offering next time.

        For failures worth retrying (a lost connection, a cancellation): the next
        attempt, in this run or a later one, resumes from the sidecars written here.
        A part no sidecar vouches for goes, since nothing could ever resume it: one
        shorter than a block (sending it again is cheaper), and a stream's (a pipe is
        read once, and its size is unknown).
        """
        for current in list(self._open.values()):
            if current.written < BLOCK:
                current.discard()
                continue
            try:
                vouched = current.save_point()
            except OSError:
                vouched = False
            if not vouched:
                current.discard()
                continue
            if current.fd >= 0:
                os.close(current.fd)
                current.fd = -1
        self._open.clear()
        self._dirs.close()
        self._made_dirs.clear()  # they hold the parts

    def abort(self) -> None:
        """Remove every temporary file, and the folders this transfer made if still empty."""
        for current in list(self._open.values()):
            current.discard()
        self._open.clear()
        for file, found in [*self._found.items()]:
            if not found.final:
                self._drop_part(file)
        for file in self._starts:
            self._drop_part(file)
        self._found.clear()
        self._starts.clear()
        self._dirs.close()
        for path in reversed(self._made_dirs):
            try:
                path.rmdir()
            except OSError:
                pass
        self._made_dirs.clear()
