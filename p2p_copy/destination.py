"""Where received bytes reach the disk, and why nothing corrupt ever gets a final name.

Every file is written to a hidden temporary name beside its final name, hashed while it
is written, and renamed only after its SHA-256 matches the sender's. Folders are
created one component at a time and never through a symlink, so a manifest cannot
reach outside the destination even if the destination already holds hostile links.
On any failure ``abort`` removes the temporary files and the folders this transfer made.

All methods block: the asyncio layer calls them from a worker thread.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import shutil
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import (
    DestinationExistsError,
    DiskFullError,
    IntegrityError,
    P2PCopyError,
    RemoteProtocolError,
    UnsafePathError,
)
from .messages import DataEntry, DirEntry, Entry, FileEntry
from .paths import display_name, split_safe_path
from .results import FileResult
from .transfer import FileCompleted, FileData, data_entries

__all__ = ["Destination", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".p2p-copy-part"
#: Free space wanted beyond the announced bytes, for folders and metadata: per entry, and once.
SPACE_PER_ENTRY = 4096
SPACE_MARGIN = 2**20


def _set_mtime(path: Path, mtime: float) -> None:
    try:
        os.utime(path, (mtime, mtime))
    except OverflowError:  # finite, but beyond this platform's time_t
        raise RemoteProtocolError(
            f"The sender sent a modification time this system cannot store ({mtime:g} s)."
        ) from None


def _os_error(exc: OSError, path: Path) -> P2PCopyError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(
            f"The disk ran out of space while writing {display_name(str(path))!r}. "
            "Free some space and receive again."
        )
    return P2PCopyError(f"Cannot write {display_name(str(path))!r}: {exc.strerror}.")


class _Open:
    """A file being received: its temporary name, descriptor and running hash."""

    def __init__(self, final: Path, entry: DataEntry) -> None:
        self.final = final
        self.entry = entry
        self.written = 0
        # Hidden, unique, and recognisable as ours; cut so the name stays under 255 bytes.
        stem = final.name.encode()[:180].decode(errors="ignore")
        self.temp = final.with_name(f".{stem}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self.hash = hashlib.sha256()


class Destination:
    """Writes one transfer's files into ``root``."""

    def __init__(self, root: Path, entries: Sequence[Entry], *, overwrite: bool = False) -> None:
        self.root = root
        self.entries = tuple(entries)
        # Files and a final stream, by file number.
        self.files = data_entries(self.entries)
        self.overwrite = overwrite
        self._open: dict[int, _Open] = {}
        self._made_dirs: list[Path] = []
        self.results: list[FileResult] = []

    # --- before any byte ---------------------------------------------------------

    def prepare(self) -> None:
        """Refuse the transfer now if it cannot end well: existing files, links, space."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, self.root) from None
        for entry in self.entries:
            self._check_target(entry)
        # A stream's size is unknown: it can only fail when the disk fills up.
        needed = sum(f.size for f in self.files if isinstance(f, FileEntry))
        free = shutil.disk_usage(self.root).free
        if needed + SPACE_MARGIN + SPACE_PER_ENTRY * len(self.entries) > free:
            raise DiskFullError(
                f"Not enough free space in {display_name(str(self.root))!r}: the transfer "
                f"needs {needed:,} bytes, {free:,} are free. Free some space or pick "
                "another folder with --out."
            )

    def _check_target(self, entry: Entry) -> None:
        parts = split_safe_path(entry.path)
        path = self.root
        for i, part in enumerate(parts):
            path = path / part
            try:
                st = path.lstat()
            except FileNotFoundError:
                return  # nothing there yet, nor below it
            last = i == len(parts) - 1
            if stat.S_ISLNK(st.st_mode):
                raise UnsafePathError(
                    f"{display_name(str(path))!r} is a symbolic link; p2p-copy never writes "
                    "through links. Remove it or receive into another folder."
                )
            if not last and not stat.S_ISDIR(st.st_mode):
                raise DestinationExistsError(
                    f"{display_name(str(path))!r} exists and is not a folder."
                )
            if last and isinstance(entry, DirEntry) and not stat.S_ISDIR(st.st_mode):
                raise DestinationExistsError(
                    f"{display_name(str(path))!r} exists and is not a folder."
                )
            if last and not isinstance(entry, DirEntry):
                if stat.S_ISDIR(st.st_mode) or not self.overwrite:
                    raise DestinationExistsError(
                        f"{display_name(str(path))!r} already exists. Pass --overwrite "
                        "(overwrite=True) to replace it, or receive into another folder."
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
                current.hash.update(data[:written])
                current.written += written
                data = data[written:]
            entry = current.entry
            if isinstance(entry, FileEntry) and event.offset + len(event.data) == entry.size:
                # Its checksum may come a few thousand files later: free the descriptor now.
                self._seal(current)
        except OSError as exc:
            raise _os_error(exc, current.final) from None

    @staticmethod
    def _seal(current: _Open) -> None:
        """Give the complete temporary file its mode and close it."""
        if current.fd >= 0:
            os.fchmod(current.fd, stat.S_IMODE(current.entry.mode) & 0o777)
            os.close(current.fd)
            current.fd = -1

    def _start(self, file: int) -> _Open:
        entry = self.files[file]
        final = self._make_parents(entry.path)
        try:
            return _Open(final, entry)
        except OSError as exc:
            raise _os_error(exc, final) from None

    def _make_parents(self, relpath: str) -> Path:
        parts = split_safe_path(relpath)
        return self._make_dirs(parts[:-1]) / parts[-1]

    def _make_dirs(self, parts: Sequence[str]) -> Path:
        path = self.root
        for part in parts:
            path = path / part
            try:
                os.mkdir(path, 0o700)
                self._made_dirs.append(path)
            except FileExistsError:
                if not stat.S_ISDIR(path.lstat().st_mode):  # lstat: a link is not a folder
                    raise UnsafePathError(
                        f"{display_name(str(path))!r} is not a folder (or is a link)."
                    ) from None
            except OSError as exc:
                raise _os_error(exc, path) from None
        return path

    def _complete(self, event: FileCompleted) -> FileResult:
        current = self._open.pop(event.file, None) or self._start(event.file)
        entry = current.entry
        digest = current.hash.hexdigest()
        try:
            if digest != event.sha256:
                raise IntegrityError(
                    f"{display_name(entry.path)!r} arrived damaged (SHA-256 mismatch); it was "
                    "discarded. Send it again."
                )
            self._seal(current)
            if entry.mtime is not None:
                _set_mtime(current.temp, entry.mtime)
            if not self.overwrite and os.path.lexists(current.final):
                raise DestinationExistsError(
                    f"{display_name(str(current.final))!r} appeared while receiving; "
                    "it was left as it is."
                )
            os.replace(current.temp, current.final)
        except OSError as exc:
            self._discard(current)
            raise _os_error(exc, current.final) from None
        except P2PCopyError:
            self._discard(current)
            raise
        result = FileResult(entry.path, current.written, digest)
        self.results.append(result)
        return result

    # --- at the end ----------------------------------------------------------------

    def finish(self) -> None:
        """Create the announced folders and give them their modes and times, deepest first."""
        dirs = [e for e in self.entries if isinstance(e, DirEntry)]
        for entry in sorted(dirs, key=lambda e: e.path.count("/"), reverse=True):
            path = self._make_dirs(split_safe_path(entry.path))
            try:
                # The owner keeps full rights so that a later transfer can add to it.
                os.chmod(path, (stat.S_IMODE(entry.mode) & 0o777) | 0o700)
                if entry.mtime is not None:
                    _set_mtime(path, entry.mtime)
            except OSError as exc:
                raise _os_error(exc, path) from None
        self._made_dirs.clear()

    def abort(self) -> None:
        """Remove every temporary file, and the folders this transfer made if still empty."""
        for current in list(self._open.values()):
            self._discard(current)
        self._open.clear()
        for path in reversed(self._made_dirs):
            try:
                path.rmdir()
            except OSError:
                pass
        self._made_dirs.clear()

    @staticmethod
    def _discard(current: _Open) -> None:
        if current.fd >= 0:
            os.close(current.fd)
            current.fd = -1
        try:
            os.unlink(current.temp)
        except FileNotFoundError:
            pass
