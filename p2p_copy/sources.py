"""The sender's side of the disk: what to send, and the data stream read from it.

Paths given by the user become manifest entries named after their last component
(``send ~/data/run1`` arrives as ``run1/...``). Folders are walked in sorted order
without following symlinks, so that a link cannot leak files from outside the folder.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import UnsafePathError, UsageError
from .messages import DirEntry, Entry, FileEntry
from .paths import check_entries, display_name

__all__ = ["Sources", "collect_sources", "StreamReader"]


@dataclass(frozen=True)
class Sources:
    """Manifest entries and, for each file entry in order, the local path to read."""

    entries: tuple[Entry, ...]
    files: tuple[Path, ...]
    #: Things found inside folders that are not sent (symlinks, sockets, ...).
    skipped: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries if isinstance(e, FileEntry))


def _entry(path: Path, name: str, st: os.stat_result) -> Entry:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        return DirEntry(path=name, mode=mode, mtime=st.st_mtime)
    return FileEntry(path=name, size=st.st_size, mode=mode, mtime=st.st_mtime)


def collect_sources(paths: Sequence[str | os.PathLike[str]]) -> Sources:
    """Walk ``paths`` into manifest entries; UsageError for anything that cannot be sent."""
    if not paths:
        raise UsageError("Nothing to send: give at least one file or folder.")
    entries: list[Entry] = []
    files: list[Path] = []
    skipped: list[str] = []

    def add(path: Path, name: str, st: os.stat_result) -> None:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(
                f"Cannot send {display_name(str(path))!r}: its name is not UTF-8."
            ) from None
        entry = _entry(path, name, st)
        entries.append(entry)
        if isinstance(entry, FileEntry):
            files.append(path)

    for given in paths:
        top = Path(given)
        try:
            st = top.stat()  # a path the user names is followed, even if it is a link
        except OSError as exc:
            raise UsageError(f"Cannot send {display_name(str(top))!r}: {exc.strerror}.") from None
        name = top.resolve().name if top.name in ("", ".", "..") else top.name
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise UsageError(f"Cannot send {display_name(str(top))!r}: not a file or folder.")
        add(top, name, st)
        if stat.S_ISDIR(st.st_mode):
            _walk(top, name, add, skipped)
    try:
        check_entries(entries)
    except UnsafePathError as exc:
        raise UsageError(f"Cannot send these names: {exc}") from None
    return Sources(tuple(entries), tuple(files), tuple(skipped))


def _walk(
    top: Path, prefix: str, add: Callable[[Path, str, os.stat_result], None], skipped: list[str]
) -> None:
    for dirpath, dirnames, filenames in os.walk(top, onerror=_raise):
        dirnames.sort()
        base = Path(dirpath)
        rel = base.relative_to(top).as_posix()
        here = prefix if rel == "." else f"{prefix}/{rel}"
        for name in [*sorted(filenames), *dirnames]:
            path = base / name
            st = path.lstat()
            # Links are not followed (os.walk does not descend into linked folders either).
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                add(path, f"{here}/{name}", st)
            else:
                skipped.append(f"{here}/{name}")


def _raise(exc: OSError) -> None:
    raise UsageError(f"Cannot read {display_name(str(exc.filename))!r}: {exc.strerror}.")


class StreamReader:
    """Reads the files one after another as one stream, hashing each file on the way.

    Blocking: call it from a worker thread. Each call fills one buffer, so a message can
    hold the end of one file and the start of the next.
    """

    def __init__(self, files: Sequence[Path], sizes: Sequence[int]) -> None:
        self._files = list(zip(files, sizes, strict=True))
        self._index = 0
        self._handle: int | None = None
        self._remaining = 0
        self._hash = hashlib.sha256()

    def read_into(self, buffer: bytearray, start: int = 1) -> tuple[int, list[str]]:
        """Fill ``buffer[start:]``; return how many bytes, and SHA-256s of files finished."""
        view = memoryview(buffer)[start:]
        filled = 0
        finished: list[str] = []
        while filled < len(view) and self._index < len(self._files):
            if self._handle is None:
                self._open()
            if self._remaining:
                want = min(len(view) - filled, self._remaining)
                got = os.readv(self._handle, [view[filled : filled + want]])  # type: ignore[arg-type]
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
        try:
            self._handle = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as exc:
            raise UsageError(f"Cannot read {display_name(str(path))!r}: {exc.strerror}.") from None
        self._remaining = size
        self._hash = hashlib.sha256()

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
            f"{display_name(str(path))!r} {how} while it was being sent. "
            "Send it again once nothing writes to it."
        )

    def close(self) -> None:
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None
