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
from collections.abc import Collection, Iterable, Sequence
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
from ..protocol.paths import display_name, split_safe_path, split_safe_paths
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


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _unlink_at(name: str, dir_fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


class _Dirs:
    """Descriptors of the folders files are written into, each opened without following links.

    Files are created, renamed and removed relative to them: a folder checked once stays
    the folder written into, even if it is swapped for a link later, and the kernel does
    not walk the whole path again for every file. The most recently used ones stay open.
    """

    def __init__(self, root: Path, made: list[Path], ours: set[Path]) -> None:
        self.root = root
        self._made = made
        self._ours = ours
        self._fds: collections.OrderedDict[tuple[str, ...], int] = collections.OrderedDict()

    def fd(self, parts: tuple[str, ...], *, create: bool = True) -> int:
        """The descriptor of folder ``root/parts``, made (mode 0700) if missing and ``create``."""
        fd = self._fds.get(parts)
        if fd is not None:
            self._fds.move_to_end(parts)
            return fd
        if not parts:
            try:
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                raise _os_error(exc, self.root, self.root) from None
        else:
            parent = self.fd(parts[:-1], create=create)
            name = parts[-1]
            if create:
                try:
                    os.mkdir(name, 0o700, dir_fd=parent)
                    path = self.root.joinpath(*parts)
                    self._made.append(path)
                    self._ours.add(path)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise _os_error(exc, self.root.joinpath(*parts), self.root) from None
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
            except OSError as exc:
                path = self.root.joinpath(*parts)
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePathError(
                        f"{display_name(str(path))!r} is not a folder (or is a link).",
                        peer_message=f"{_peer_name(path, self.root)} is not a folder (or is "
                        "a link) on the receiver's side.",
                    ) from None
                raise _os_error(exc, path, self.root) from None
        self._fds[parts] = fd
        while len(self._fds) > DIRS_KEPT:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])


def _exists_at(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _link_at(temp: str, name: str, dir_fd: int) -> bool:
    """Give ``temp`` its final ``name`` unless that name exists (FileExistsError), atomically.

    False if this file system has no hard links: then the caller checks and renames.
    """
    try:
        os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            raise
        return False
    os.unlink(temp, dir_fd=dir_fd)
    return True


def _lone_regular(path: Path) -> os.stat_result | None:
    """lstat of ``path`` if it is a regular file with no other name (never a planted link)."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 else None


class _OutOfTime(Exception):
    """prepare() used up HASH_BUDGET."""


def _hash_prefix(path: Path, length: int, algorithm: str, deadline: float | None = None, *,
                 part: bool = False) -> tuple[ChainHasher, tuple[int, int]] | None:
    """The hash of ``path``'s first ``length`` bytes and the (device, inode) it was read
    from, or None if it is shorter, unreadable, or (``part``) not one we may resume.

    Raises _OutOfTime once ``deadline`` (time.monotonic()) has passed.
    """
    chain = ChainHasher(algorithm=algorithm)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
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
    return chain, (st.st_dev, st.st_ino)


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

    def __init__(self, dirs: _Dirs, parts: tuple[str, ...], entry: DataEntry,
                 start: _Found | None = None, *, algorithm: str) -> None:
        self.dirs = dirs
        self.folder, self.name = parts[:-1], parts[-1]
        self.entry = entry
        self.temp = _hidden_name(self.name, TEMP_SUFFIX)
        #: Whether a sidecar may be beside it (one we resume from, or one we wrote).
        self.has_sidecar = start is not None
        self.synced = 0
        at = dirs.fd(self.folder)
        if start is None:
            # A fresh start: whatever has this name goes (never written through), and
            # O_EXCL makes sure that the file written is the one created here. It stays
            # private until seal() gives it its mode.
            _unlink_at(self.sidecar, at)
            _unlink_at(self.temp, at)
            self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                              0o600, dir_fd=at)
            self.chain = ChainHasher(algorithm=algorithm)
        else:
            self.fd = os.open(self.temp, os.O_WRONLY | os.O_NOFOLLOW, dir_fd=at)
            st = os.fstat(self.fd)
            # The very file prepare() hashed, still ours: not one swapped in since.
            if (not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or not _owned(st)
                    or (st.st_dev, st.st_ino) != start.identity):
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
            os.fchmod(self.fd, stat.S_IMODE(self.entry.mode) & 0o777 & ~_umask())
            if self.entry.mtime is not None:
                _set_mtime(self.fd, self.entry.mtime)
            os.close(self.fd)
            self.fd = -1

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
        at = self.dirs.fd(self.folder)
        temp = self.sidecar + ".new"
        _unlink_at(temp, at)
        self.has_sidecar = True
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                     dir_fd=at)
        try:
            os.write(fd, sidecar.encode())
        finally:
            os.close(fd)
        os.replace(temp, self.sidecar, src_dir_fd=at, dst_dir_fd=at)
        return True

    def discard(self) -> None:
        """Close and remove the temporary file and its sidecar (never making folders)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            at = self.dirs.fd(self.folder, create=False)
        except P2PCopyError:
            return  # its folder is gone, and the file with it
        _unlink_at(self.temp, at)
        _unlink_at(self.sidecar, at)


class Destination:
    """Writes one transfer's files into ``root``."""

    def __init__(self, root: Path, entries: Sequence[Entry], *, overwrite: bool = False,
                 algorithm: str = SHA256, made_folders: set[Path] | None = None,
                 refused: set[str] | None = None) -> None:
        self.root = root
        #: The transfer's hash (digests.py): what files are checked and prefixes offered with.
        self.algorithm = algorithm
        self.entries = tuple(entries)
        # Files and a final stream, by file number.
        self.files = data_entries(self.entries)
        self.overwrite = overwrite
        self._open: dict[int, _Open] = {}
        self._made_dirs: list[Path] = []
        #: Every folder this run made, in this attempt or an earlier one (``made_folders``,
        #: shared by the caller across attempts): the only ones finish() gives a mode and time.
        self.made_folders: set[Path] = set() if made_folders is None else made_folders
        self._dirs = _Dirs(root, self._made_dirs, self.made_folders)
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
            if not self._may_exist(parts[:i], part, listings):
                return  # nothing there yet, nor below it
            path = self.root.joinpath(*parts[: i + 1])
            try:
                st = path.lstat()
            except FileNotFoundError:
                return
            if stat.S_ISLNK(st.st_mode):
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
                hashed = _hash_prefix(final, entry.size, self.algorithm, deadline)
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
            hashed = _hash_prefix(part, sidecar.offset, self.algorithm, deadline, part=True)
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
        final = self._final_path(self.files[file])
        _unlink(_hidden(final, TEMP_SUFFIX))
        _unlink(_hidden(final, SIDECAR_SUFFIX))

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
                same = _hash_prefix(current.final, current.written, self.algorithm)
                if same is not None and same[0].hexdigest() == digest:
                    # The file prepare() had no time to check was this one: it stays.
                    current.discard()
                    result = FileResult(entry.path, current.written, digest, self.algorithm)
                    self.results.append(result)
                    return result
            at = self._dirs.fd(current.folder)
            if self.overwrite or not _link_at(current.temp, current.name, at):
                if not self.overwrite and _exists_at(current.name, at):
                    raise FileExistsError
                os.replace(current.temp, current.name, src_dir_fd=at, dst_dir_fd=at)
            if current.has_sidecar:
                _unlink_at(current.sidecar, at)
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
            fd = self._dirs.fd(self._split(entry))
            if self._final_path(entry) not in self.made_folders:
                continue
            try:
                # The owner keeps full rights so that a later transfer can add to it.
                os.fchmod(fd, (stat.S_IMODE(entry.mode) & 0o777 & ~_umask()) | 0o700)
                if entry.mtime is not None:
                    _set_mtime(fd, entry.mtime)
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
        self._dirs.close()
        for file, found in [*self._found.items()]:
            if not found.final:
                self._drop_part(file)
        for file in self._starts:
            self._drop_part(file)
        self._found.clear()
        self._starts.clear()
        for path in reversed(self._made_dirs):
            try:
                path.rmdir()
            except OSError:
                pass
        self._made_dirs.clear()
