"""The sender's side of the disk: what to send, and the data stream read from it.

Paths given by the user become manifest entries named after their last component
(``send ~/data/run1`` arrives as ``run1/...``). Folders are walked in sorted order
without following symlinks, so that a link cannot leak files from outside the folder.

The scan records each file's device and inode, and every later open checks that it got
that very file (open_scanned): one swapped for a link, or a folder above it swapped for
one, after the scan is refused rather than sent (issue 17, finding 5).
"""

from __future__ import annotations

import collections
import errno
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISDIR, S_ISREG
from typing import NoReturn

from ..errors import UnsafePathError, UsageError
from ..protocol.digests import SHA256
from ..protocol.messages import DirEntry, Entry, FileEntry
from ..protocol.paths import check_entries, display_name
from ..protocol.resume import ChainHasher, Offer

__all__ = ["Sources", "collect_sources", "check_names", "StreamReader", "SourceChains",
           "open_scanned"]

#: Files whose prefix states a sender keeps across reconnects (the ones read last).
CHAINS_KEPT = 4
#: Bytes per read when a sender rereads a source's prefix to check an offer.
REREAD_BYTES = 2**20


#: (st_dev, st_ino) of a file when it was scanned; (0, 0) where the scan could not tell
#: (os.scandir on Windows): then only the file type and size are compared.
Identity = tuple[int, int]

# No link is followed at the last component (O_NOFOLLOW where the system has it; else
# open_scanned compares an lstat with the fstat), and a FIFO swapped in cannot block the
# open (O_NONBLOCK; it changes nothing for the regular files that are read).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


@dataclass(frozen=True)
class Sources:
    """Manifest entries and, for each file entry in order, the local path to read."""

    entries: tuple[Entry, ...]
    files: tuple[str, ...]
    #: Things found inside folders that are not sent (symlinks, sockets, ...).
    skipped: tuple[str, ...] = ()
    #: For each file, what the scan saw (``Identity``): open_scanned() insists on it.
    identities: tuple[Identity, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries if isinstance(e, FileEntry))


def _entry(name: str, st: os.stat_result) -> Entry:
    """The manifest entry for a file or folder ``st`` (an lstat, or a stat the user named)."""
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        return DirEntry(path=name, mode=mode, mtime=st.st_mtime)
    return FileEntry(path=name, size=st.st_size, mode=mode, mtime=st.st_mtime)


def _utf8(path: str, name: str) -> None:
    if not name.isascii():
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(
                f"Cannot send {display_name(path)!r}: its name is not UTF-8."
            ) from None


def collect_sources(paths: Sequence[str | os.PathLike[str]], *, check: bool = True) -> Sources:
    """Walk ``paths`` into manifest entries; UsageError for anything that cannot be sent.

    ``check=False`` leaves out check_names(), for a caller that runs it later (the CLI
    does, while the receiver reads the manifest: 10,000 names take ~10 ms).
    """
    if not paths:
        raise UsageError("Nothing to send: give at least one file or folder.")
    entries: list[Entry] = []
    files: list[str] = []
    skipped: list[str] = []
    identities: list[Identity] = []
    for given in paths:
        top = Path(given)
        try:
            st = top.stat()  # a path the user names is followed, even if it is a link
        except OSError as exc:
            raise UsageError(f"Cannot send {display_name(str(top))!r}: {exc.strerror}.") from None
        name = top.resolve().name if top.name in ("", ".", "..") else top.name
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise UsageError(f"Cannot send {display_name(str(top))!r}: not a file or folder.")
        _utf8(str(top), name)
        entries.append(_entry(name, st))
        if stat.S_ISDIR(st.st_mode):
            _walk(str(top), name, entries, files, skipped, identities)
        else:
            # A link the user names is read where it pointed at the scan: files are
            # opened without following links, and must be the file seen here.
            files.append(os.path.realpath(top) if top.is_symlink() else str(top))
            identities.append((st.st_dev, st.st_ino))
    if check:
        check_names(entries)
    return Sources(tuple(entries), tuple(files), tuple(skipped), tuple(identities))


def check_names(entries: Sequence[Entry]) -> None:
    """UsageError if a receiver would refuse one of these names (paths.check_entries)."""
    try:
        check_entries(entries)
    except UnsafePathError as exc:
        raise UsageError(f"Cannot send these names: {exc}") from None


def _walk(top: str, prefix: str, entries: list[Entry], files: list[str],
          skipped: list[str], identities: list[Identity]) -> None:
    """Add what ``top`` holds, depth first in sorted order: a folder's files, then its folders.

    One lstat per entry (os.scandir caches it); links are not followed. A stack, not
    recursion, so that no depth of folders runs into Python's recursion limit.
    """
    stack = [(top, prefix)]
    while stack:
        folder, here = stack.pop()
        try:
            with os.scandir(folder) as listing:
                found = list(listing)
            # As os.walk lists them: files (and links to files) first, then folders (and
            # links to folders, skipped below), each in sorted order.
            found.sort(key=lambda e: (e.is_dir(), e.name))
        except OSError as exc:
            _raise(exc)
        folders: list[tuple[str, str]] = []
        for item in found:
            name = f"{here}/{item.name}"
            try:
                st = item.stat(follow_symlinks=False)
            except OSError as exc:
                _raise(exc)
            if not (S_ISREG(st.st_mode) or S_ISDIR(st.st_mode)):
                skipped.append(name)  # a link, socket...: its name need not be UTF-8
                continue
            _utf8(item.path, name)
            entry = _entry(name, st)
            entries.append(entry)
            if isinstance(entry, DirEntry):
                folders.append((item.path, name))
            else:
                files.append(item.path)
                identities.append((st.st_dev, st.st_ino))
        stack.extend(reversed(folders))


def _raise(exc: OSError) -> NoReturn:
    raise UsageError(f"Cannot read {display_name(str(exc.filename))!r}: {exc.strerror}.")


#: What a receiver is told when a source cannot be read: not where it is, nor why.
_UNREADABLE = "The sender cannot read one of its files."


def open_scanned(path: str, size: int, identity: Identity | None) -> int:
    """A descriptor for reading ``path``, which must still be the regular file of ``size``
    bytes (and ``identity``) that the scan saw; UsageError naming it otherwise.

    Comparing the identity of what was opened also catches a folder above the file that
    was swapped for a link: the path then reaches another inode.
    """
    before = None
    try:
        if not _NOFOLLOW:
            before = os.lstat(path)  # compared with the fstat below: not a link, same file
            if not stat.S_ISREG(before.st_mode):
                raise _swapped(path)
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link
            raise _swapped(path) from None
        raise UsageError(f"Cannot read {display_name(path)!r}: {exc.strerror}.",
                         peer_message=_UNREADABLE) from None
    try:
        st = os.fstat(fd)
        seen = (st.st_dev, st.st_ino)
        if (not stat.S_ISREG(st.st_mode) or (identity is not None and any(identity)
                                             and seen != identity)
                or (before is not None and seen != (before.st_dev, before.st_ino))):
            raise _swapped(path)
        if st.st_size != size:
            raise UsageError(
                f"{display_name(path)!r} changed size since it was scanned. "
                "Send it again once nothing writes to it.",
                peer_message=_UNREADABLE,
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _swapped(path: str) -> UsageError:
    return UsageError(
        f"{display_name(path)!r} is no longer the file that was scanned (it was replaced, "
        "or it or a folder above it is now a link); it was not sent. Send it again.",
        peer_message=_UNREADABLE,
    )


def _read_into(fd: int, into: memoryview) -> int:
    """Read from ``fd`` straight into ``into``; the number of bytes read (0 at the end).

    os.readv fills the buffer without a copy; Windows has no readv, so there the bytes are
    read and copied (the only place that differs).
    """
    if _READV is not None:
        return _READV(fd, [into])
    data = os.read(fd, len(into))
    into[: len(data)] = data
    return len(data)


#: os.readv where the system has it (not Windows).
_READV: Callable[[int, Sequence[memoryview]], int] | None = getattr(os, "readv", None)


class SourceChains:
    """What a sender remembers of its sources across reconnects: their prefix hashes.

    Checks a receiver's resume offer against the prefix states kept while the files were
    read (no I/O), else by rereading the prefix. Blocking: call from a worker thread.
    """

    def __init__(self, files: Sequence[str], sizes: Sequence[int],
                 identities: Sequence[Identity] = ()) -> None:
        self._files = list(zip(files, sizes, strict=True))
        self._identities = identities
        self._chains: collections.OrderedDict[int, ChainHasher] = collections.OrderedDict()

    def track(self, file: int, chain: ChainHasher) -> None:
        self._chains[file] = chain
        self._chains.move_to_end(file)
        while len(self._chains) > CHAINS_KEPT:
            self._chains.popitem(last=False)

    def verify(self, offer: Offer, algorithm: str = SHA256) -> ChainHasher | None:
        """A hasher (of ``algorithm``) holding the offered prefix if our source has it."""
        chain = self.prefix(offer.file, offer.offset, algorithm)
        return chain if chain is not None and chain.hexdigest() == offer.digest else None

    def prefix(self, file: int, offset: int, algorithm: str = SHA256) -> ChainHasher | None:
        """A hasher (of ``algorithm``) holding file ``file``'s first ``offset`` bytes, or
        None if our source has fewer."""
        if file >= len(self._files):
            return None
        path, size = self._files[file]
        if offset > size:
            return None
        chain = self._chains.get(file)
        state = (chain.state_at(offset)
                 if chain is not None and chain.algorithm == algorithm else None)
        if state is None:
            identity = self._identities[file] if file < len(self._identities) else None
            return self._reread(path, size, identity, offset, algorithm)
        return ChainHasher(state, offset, algorithm)

    @staticmethod
    def _reread(path: str, size: int, identity: Identity | None, offset: int,
                algorithm: str) -> ChainHasher | None:
        chain = ChainHasher(algorithm=algorithm)
        fd = open_scanned(path, size, identity)
        try:
            while chain.position < offset:
                data = os.read(fd, min(REREAD_BYTES, offset - chain.position))
                if not data:
                    return None  # the source shrank: send it again, from 0
                chain.update(data)
        finally:
            os.close(fd)
        return chain


class StreamReader:
    """Reads the files one after another as one stream, hashing each file on the way.

    Blocking: call it from a worker thread. Each call fills one buffer, so a message can
    hold the end of one file and the start of the next. A file in ``starts`` continues
    from its hasher's position (a resumed prefix); ``chains`` learns every file's hasher.
    """

    def __init__(
        self, files: Sequence[str], sizes: Sequence[int],
        starts: Mapping[int, ChainHasher] | None = None, chains: SourceChains | None = None,
        algorithm: str = SHA256, identities: Sequence[Identity] = (),
    ) -> None:
        self.algorithm = algorithm
        self._files = list(zip(files, sizes, strict=True))
        self._identities = identities
        self._index = 0
        self._handle: int | None = None
        self._remaining = 0
        self._starts = dict(starts or {})
        self._chains = chains
        self._hash = ChainHasher(algorithm=algorithm)

    def read_into(self, buffer: bytearray, start: int = 1) -> tuple[int, list[str]]:
        """Fill ``buffer[start:]``; return how many bytes, and digests of files finished."""
        view = memoryview(buffer)[start:]
        filled = 0
        finished: list[str] = []
        while filled < len(view) and self._index < len(self._files):
            if self._handle is None:
                self._open()
            if self._remaining:
                want = min(len(view) - filled, self._remaining)
                got = _read_into(self._handle, view[filled : filled + want])  # type: ignore[arg-type]
                if got == 0:
                    self._changed("shrank")
                self._hash.update(view[filled : filled + got])
                filled += got
                self._remaining -= got
            if not self._remaining:
                finished.append(self._close())
        return filled, finished

    @property
    def exhausted(self) -> bool:
        return self._index >= len(self._files)

    def _open(self) -> None:
        path, size = self._files[self._index]
        identity = (self._identities[self._index]
                    if self._index < len(self._identities) else None)
        self._handle = open_scanned(path, size, identity)
        start = self._starts.pop(self._index) if self._index in self._starts else None
        self._hash = start or ChainHasher(algorithm=self.algorithm)
        if self._hash.position:
            os.lseek(self._handle, self._hash.position, os.SEEK_SET)
        self._remaining = size - self._hash.position
        if self._chains is not None:
            self._chains.track(self._index, self._hash)

    def _close(self) -> str:
        assert self._handle is not None
        grew = os.fstat(self._handle).st_size != self._files[self._index][1]
        os.close(self._handle)
        self._handle = None
        if grew:
            self._changed("changed size")
        self._index += 1
        return self._hash.hexdigest()

    def _changed(self, how: str) -> None:
        path = self._files[self._index][0]
        raise UsageError(
            f"{display_name(path)!r} {how} while it was being sent. "
            "Send it again once nothing writes to it.",
            # The receiver knows the file by its number, not by where it is here.
            peer_message=f"File {self._index} of the manifest {how} on the sender's side "
            "while it was being sent.",
        )

    def close(self) -> None:
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None
