"""Where received bytes reach the disk, and why nothing corrupt ever gets a final name.

Every file is written to a hidden temporary name beside its final name, hashed while it
is written, and renamed only after its SHA-256 matches the sender's. Folders are
created one component at a time and never through a symlink, so a manifest cannot
reach outside the destination even if the destination already holds hostile links.
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

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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
from .resume import BLOCK, ChainHasher, Offer, Sidecar, mtime_matches
from .transfer import FileCompleted, FileData, data_entries

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


def _hidden(final: Path, suffix: str) -> Path:
    # Hidden, recognisable as ours and the same on every run, so that a later run finds
    # it; cut so that the name stays under 255 bytes.
    stem = final.name.encode()[:180].decode(errors="ignore")
    return final.with_name(f".{stem}{suffix}")


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _lone_regular(path: Path) -> os.stat_result | None:
    """lstat of ``path`` if it is a regular file with no other name (never a planted link)."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 else None


def _hash_prefix(path: Path, length: int) -> ChainHasher | None:
    """The hash of ``path``'s first ``length`` bytes, or None if it is shorter or unreadable."""
    chain = ChainHasher()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        while chain.position < length:
            data = os.read(fd, min(READ_BYTES, length - chain.position))
            if not data:
                return None
            chain.update(data)
    except OSError:
        return None
    finally:
        os.close(fd)
    return chain


@dataclass
class _Found:
    """A prefix of file ``file`` found on disk: in its part file, or its final file whole."""

    file: int
    chain: ChainHasher
    final: bool

    @property
    def offer(self) -> Offer:
        return Offer(self.file, self.chain.position, self.chain.hexdigest())


class _Open:
    """A file being received: its temporary name, descriptor and running hash."""

    def __init__(self, final: Path, entry: DataEntry, chain: ChainHasher | None = None) -> None:
        self.final = final
        self.entry = entry
        self.temp = _hidden(final, TEMP_SUFFIX)
        self.sidecar = _hidden(final, SIDECAR_SUFFIX)
        self.synced = 0
        if chain is None:
            # A fresh start: whatever has this name goes (never written through), and
            # O_EXCL makes sure that the file written is the one created here.
            _unlink(self.sidecar)
            _unlink(self.temp)
            self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                              0o600)
            self.chain = ChainHasher()
        else:
            self.fd = os.open(self.temp, os.O_WRONLY | os.O_NOFOLLOW)
            st = os.fstat(self.fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                os.close(self.fd)
                raise UnsafePathError(
                    f"{display_name(str(self.temp))!r} changed while resuming; remove it and "
                    "receive again."
                )
            os.ftruncate(self.fd, chain.position)
            os.lseek(self.fd, chain.position, os.SEEK_SET)
            self.chain = chain
            self.synced = chain.position

    @property
    def written(self) -> int:
        return self.chain.position

    @property
    def entry_size(self) -> int | None:
        return self.entry.size if isinstance(self.entry, FileEntry) else None

    def save_point(self) -> None:
        """Make what was written durable, then record its last whole-block prefix."""
        size = self.entry.size if isinstance(self.entry, FileEntry) else None
        offset = self.chain.position if self.chain.position == size else self.chain.last_block()
        digest = self.chain.digest_at(offset) if offset else None
        if self.fd >= 0:
            os.fdatasync(self.fd)
        self.synced = self.chain.position
        if digest is None or size is None:
            return
        sidecar = Sidecar(size=size, mtime=self.entry.mtime, offset=offset, sha256=digest)
        temp = self.sidecar.with_name(self.sidecar.name + ".new")
        _unlink(temp)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, sidecar.encode())
        finally:
            os.close(fd)
        os.replace(temp, self.sidecar)


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
        #: Prefixes found by prepare(), by file number: what offers() offers.
        self._found: dict[int, _Found] = {}
        #: Final files kept as they are, by file number: their whole-file hash.
        self._kept: dict[int, ChainHasher] = {}
        #: Files that continue from a prefix: their hash so far.
        self._starts: dict[int, ChainHasher] = {}

    #: A new attempt after a failure worth retrying starts from what is on disk.
    restartable = True

    # --- before any byte ---------------------------------------------------------

    def prepare(self) -> None:
        """Refuse the transfer now if it cannot end well: existing files, links, space."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, self.root) from None
        for entry in self.entries:
            self._check_target(entry)
        for file, entry in enumerate(self.files):
            if isinstance(entry, FileEntry):
                self._find(file, entry)
        # A stream's size is unknown: it can only fail when the disk fills up.
        needed = sum(f.size for f in self.files if isinstance(f, FileEntry))
        needed -= sum(f.chain.position for f in self._found.values())
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
                if self._same_stat(entry, st):
                    return  # maybe this very file from an earlier run: prepare() checks
                if stat.S_ISDIR(st.st_mode) or not self.overwrite:
                    raise DestinationExistsError(
                        f"{display_name(str(path))!r} already exists. Pass --overwrite "
                        "(overwrite=True) to replace it, or receive into another folder."
                    )

    @staticmethod
    def _same_stat(entry: Entry, st: os.stat_result) -> bool:
        return (isinstance(entry, FileEntry) and stat.S_ISREG(st.st_mode) and st.st_nlink == 1
                and st.st_size == entry.size and mtime_matches(entry.mtime, st.st_mtime))

    def _final_path(self, entry: Entry) -> Path:
        return self.root.joinpath(*split_safe_path(entry.path))

    def _find(self, file: int, entry: FileEntry) -> None:
        """Look for a prefix of ``entry`` from an earlier attempt: final file, or part."""
        final = self._final_path(entry)
        st = _lone_regular(final)
        if st is not None and self._same_stat(entry, st):
            if entry.size == 0:
                self._kept[file] = ChainHasher()  # nothing to offer, nothing to differ
                return
            chain = _hash_prefix(final, entry.size)
            if chain is not None:
                self._found[file] = _Found(file, chain, final=True)
            return
        part, sidecar_path = _hidden(final, TEMP_SUFFIX), _hidden(final, SIDECAR_SUFFIX)
        part_stat = _lone_regular(part)
        sidecar_stat = _lone_regular(sidecar_path)
        if part_stat is None or sidecar_stat is None or sidecar_stat.st_size > 4096:
            return  # no part, or one from p2p-copy 0.2 without a sidecar: started over
        sidecar = Sidecar.parse(sidecar_path.read_bytes())
        if (sidecar is None or sidecar.size != entry.size or sidecar.mtime != entry.mtime
                or part_stat.st_size < sidecar.offset):
            return
        chain = _hash_prefix(part, sidecar.offset)
        if chain is not None and chain.hexdigest() == sidecar.sha256:
            self._found[file] = _Found(file, chain, final=False)

    def offers(self) -> list[Offer]:
        """The prefixes found by prepare(), to offer the sender in ``accept``."""
        return [found.offer for found in self._found.values()]

    def resume(self, starts: dict[int, int]) -> None:
        """The sender accepted the offers of ``starts``; the others start over."""
        for file, found in self._found.items():
            if file in starts:
                if found.final:
                    self._kept[file] = found.chain
                else:
                    self._starts[file] = found.chain
            elif found.final and not self.overwrite:
                path = self._final_path(self.files[file])
                raise DestinationExistsError(
                    f"{display_name(str(path))!r} already exists and differs from the "
                    "sender's. Pass --overwrite (overwrite=True) to replace it, or receive "
                    "into another folder."
                )
        self._found.clear()

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
                current.chain.update(data[:written])
                data = data[written:]
            entry = current.entry
            if isinstance(entry, FileEntry) and event.offset + len(event.data) == entry.size:
                # Its checksum may come a few thousand files later: free the descriptor now.
                self._seal(current)
            elif current.written - current.synced >= SIDECAR_EVERY:
                current.save_point()
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
            return _Open(final, entry, self._starts.pop(file, None))
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
        kept = self._kept.pop(event.file, None)
        if kept is not None:
            return self._keep(event, kept)
        current = self._open.pop(event.file, None) or self._start(event.file)
        entry = current.entry
        digest = current.chain.hexdigest()
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
            _unlink(current.sidecar)
        except OSError as exc:
            self._discard(current)
            raise _os_error(exc, current.final) from None
        except P2PCopyError:
            self._discard(current)
            raise
        result = FileResult(entry.path, current.written, digest)
        self.results.append(result)
        return result

    def _keep(self, event: FileCompleted, kept: ChainHasher) -> FileResult:
        """A final file from an earlier attempt that the sender's SHA-256 confirms."""
        entry = self.files[event.file]
        digest = kept.hexdigest()
        if digest != event.sha256:
            # The sender's file changed after it checked our offer: ours stays as it was.
            raise IntegrityError(
                f"{display_name(entry.path)!r} changed on the sender's side while it was "
                "being sent. Send it again."
            )
        result = FileResult(entry.path, kept.position, digest)
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

    def suspend(self) -> None:
        """Stop for now, keeping every part with a prefix worth offering next time.

        For failures worth retrying (a lost connection): the next attempt, in this run
        or a later one, resumes from the sidecars written here.
        """
        for current in list(self._open.values()):
            try:
                current.save_point()
            except OSError:
                self._discard(current)
                continue
            if current.fd >= 0:
                os.close(current.fd)
                current.fd = -1
            if not current.chain.last_block() and current.written != current.entry_size:
                self._discard(current)  # nothing a sidecar can vouch for
        self._open.clear()
        self._made_dirs.clear()  # they hold the parts

    def abort(self) -> None:
        """Remove every temporary file, and the folders this transfer made if still empty."""
        for current in list(self._open.values()):
            self._discard(current)
        self._open.clear()
        for file, found in [*self._found.items()]:
            if not found.final:
                final = self._final_path(self.files[file])
                _unlink(_hidden(final, TEMP_SUFFIX))
                _unlink(_hidden(final, SIDECAR_SUFFIX))
        for file in self._starts:
            final = self._final_path(self.files[file])
            _unlink(_hidden(final, TEMP_SUFFIX))
            _unlink(_hidden(final, SIDECAR_SUFFIX))
        self._found.clear()
        self._starts.clear()
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
        _unlink(current.temp)
        _unlink(current.sidecar)
