"""Sources and sinks that are not files on disk: pipes, and Python objects in memory.

The sender reads its data stream from a *reader*; sources.StreamReader reads files, and
here ``PipeReader`` reads a pipe (standard input) of unknown length and ``ChunkReader``
the chunks of an encoded object (objects.py). The receiver hands the stream to a *sink*;
destination.Destination writes files, and here ``PipeSink`` writes one file or stream to
a pipe (standard output) and ``ObjectSink`` rebuilds one object in memory.

Memory stays bounded by the chunk size: nothing holds a whole stream, except an object
that has to exist in memory anyway (ObjectDecoder writes an array straight into place),
and that is capped: by default at ``MEMORY_LIMIT``, checked against the announced size
before ``accept`` and again as bytes arrive.
Every sink checks each file's digest (SHA-256 or BLAKE3, digests.py) before it reports
the file complete. What a pipe sink has written cannot be taken back: when the check
fails, the bytes are already out, and only the error (the CLI's exit code) says that they
are not to be trusted.

All methods block: the asyncio layer calls them from a worker thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from typing import BinaryIO, Final, NoReturn, Protocol

from ..errors import (
    Hint,
    IntegrityError,
    LocalProtocolError,
    P2PCopyError,
    PolicyError,
    RemoteProtocolError,
    UsageError,
)
from ..protocol.digests import NAMES, SHA256, new
from ..protocol.messages import DataEntry, Entry, FileEntry
from ..protocol.objects import ObjectDecoder, object_kind
from ..protocol.paths import display_name
from ..protocol.resume import Offer
from ..protocol.transfer import FileCompleted, FileData, data_entries
from ..results import FileResult

__all__ = [
    "write_all",
    "Reader",
    "Sink",
    "PipeReader",
    "ChunkReader",
    "PipeSink",
    "ObjectSink",
    "single_entry",
    "default_name",
    "memory_limit",
    "MEMORY_LIMIT",
]

#: What a receiver holds in memory by default, at most: a text or an object (its body).
#: A sender chooses what it announces, so the default must be safe for any receiver: with
#: it a receiver stays within 100 MB of its idle size, although a text is held twice
#: while it is decoded (bytes, then str) and printing it copies it once more. Bigger
#: texts and objects are refused before any byte moves unless the user raises the cap
#: (``max_bytes=``, ``--max-text``); files and pipes are not held, so not capped.
MEMORY_LIMIT: Final = 32 * 2**20


class Reader(Protocol):
    """Where a sender's data stream comes from (sources.StreamReader is one)."""

    def read_into(self, buffer: bytearray, start: int = 1) -> tuple[int, list[str]]:
        """Fill ``buffer[start:]`` (maybe partly); bytes read and digests of files finished."""

    @property
    def exhausted(self) -> bool:
        """True once every byte has been read and every digest returned."""

    def close(self) -> None: ...


class Sink(Protocol):
    """Where a receiver's data stream goes (destination.Destination is one)."""

    results: list[FileResult]

    def prepare(self) -> None:
        """Refuse now, before ``accept``, what cannot end well."""

    def apply(self, events: Iterable[FileData | FileCompleted]) -> list[FileResult]:
        """Take data and verify files, in order; return the files that are complete."""

    def finish(self) -> None:
        """After eof: everything was verified."""

    def abort(self) -> None:
        """The transfer failed: drop what is partial."""

    def offers(self) -> list[Offer]:
        """After prepare: prefixes already held, to offer in ``accept`` (resume.py)."""

    def resume(self, starts: dict[int, int], differs: Collection[int] = ()) -> None:
        """The sender continues these files from these offsets; the rest from 0.

        ``differs``: offered files whose prefix the sender showed to differ from ours.
        """

    def suspend(self) -> None:
        """The transfer stopped for a reason worth retrying: keep what can be resumed."""

    @property
    def restartable(self) -> bool:
        """Whether a new attempt may start this transfer over (nothing irrevocable done)."""


class PipeReader:
    """A stream of unknown length read from a binary file (standard input), hashed."""

    def __init__(self, source: BinaryIO, algorithm: str = SHA256) -> None:
        self._source = source
        # One read returns what the pipe holds now: a slow producer is not kept waiting
        # for a full message.
        read: Callable[[memoryview], int | None] | None = (
            getattr(source, "readinto1", None) or getattr(source, "readinto", None))
        if read is None:
            raise UsageError("A stream to send must be a binary file opened for reading.")
        self._read = read
        self._hash = new(algorithm)
        self._exhausted = False

    def read_into(self, buffer: bytearray, start: int = 1) -> tuple[int, list[str]]:
        view = memoryview(buffer)[start:]
        try:
            got = self._read(view)
        except OSError as exc:
            raise UsageError(f"Cannot read standard input: {exc.strerror or exc}.") from None
        if not got:
            self._exhausted = True
            return 0, [self._hash.hexdigest()]
        self._hash.update(view[:got])
        return got, []

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def close(self) -> None:
        pass  # the caller's file: the caller closes it


class ChunkReader:
    """The chunks of one encoded object (objects.EncodedObject), ``size`` bytes in all."""

    def __init__(self, chunks: Iterator[memoryview], size: int,
                 algorithm: str = SHA256) -> None:
        self._chunks = chunks
        self._left = size
        self._pending = memoryview(b"")
        self._hash = new(algorithm)
        self._exhausted = False

    def read_into(self, buffer: bytearray, start: int = 1) -> tuple[int, list[str]]:
        view = memoryview(buffer)[start:]
        filled = 0
        while filled < len(view) and self._left:
            if not self._pending:
                chunk = next(self._chunks, None)
                if chunk is None:
                    self._changed()
                self._pending = memoryview(chunk).cast("B")
                continue
            take = min(len(view) - filled, len(self._pending), self._left)
            view[filled : filled + take] = self._pending[:take]
            self._pending = self._pending[take:]
            filled += take
            self._left -= take
        self._hash.update(view[:filled])
        if self._left or self._exhausted:
            return filled, []
        if self._pending or any(len(rest) for rest in self._chunks):
            self._changed()
        self._exhausted = True
        return filled, [self._hash.hexdigest()]

    @staticmethod
    def _changed() -> NoReturn:
        raise UsageError(
            "The object changed size while it was being sent. Send it again once nothing "
            "modifies it."
        )

    @property
    def exhausted(self) -> bool:
        return self._exhausted

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


def single_entry(entries: Sequence[Entry], what: str) -> DataEntry:
    """The one file or stream of a transfer that ``what`` takes, else PolicyError."""
    data = data_entries(entries)
    if len(data) != 1 or len(entries) != 1:
        raise PolicyError(
            f"The sender offers {len(data):,} files and {len(entries) - len(data):,} folders; "
            f"{what} takes exactly one file, stream or object.",
            hint=Hint("into_folder", "receive into a folder with {}"),
        )
    return data[0]


class _Verified:
    """A running digest and byte count for the single file of a pipe or object sink."""

    def __init__(self, entry: DataEntry, algorithm: str) -> None:
        self.entry = entry
        self.algorithm = algorithm
        self.hash = new(algorithm)
        self.size = 0

    def update(self, data: memoryview) -> None:
        self.hash.update(data)
        self.size += len(data)

    def check(self, event: FileCompleted, damaged: str) -> FileResult:
        digest = self.hash.hexdigest()
        if digest != event.digest:
            raise IntegrityError(
                f"{display_name(self.entry.path)!r} arrived damaged ({NAMES[self.algorithm]} "
                f"mismatch); {damaged}"
            )
        return FileResult(self.entry.path, self.size, digest, self.algorithm)



def write_all(out: BinaryIO, data: bytes | memoryview) -> None:
    """All of ``data`` to ``out``. A raw (unbuffered) file, such as standard output under
    ``python -u`` or PYTHONUNBUFFERED, may take only part of a write, e.g. when a signal
    interrupts a write to a pipe (seen with 32 MiB texts: the rest was lost, exit 0); a
    non-blocking one may take nothing (None). A buffered file takes all at once."""
    view = memoryview(data).cast("B")
    while view:
        written = out.write(view)
        if written is None:  # a non-blocking file that is full: wait for the reader
            time.sleep(0.01)
            continue
        view = view[written:]

class PipeSink:
    """Writes the one file or stream of a transfer to a binary file (standard output)."""

    def __init__(self, entries: Sequence[Entry], out: BinaryIO,
                 algorithm: str = SHA256) -> None:
        self._file = _Verified(single_entry(entries, "writing to standard output"), algorithm)
        self._out = out
        self.results: list[FileResult] = []

    def prepare(self) -> None:
        pass

    def apply(self, events: Iterable[FileData | FileCompleted]) -> list[FileResult]:
        done: list[FileResult] = []
        for event in events:
            if isinstance(event, FileData):
                self._file.update(event.data)
                self._write(event.data)
            else:
                self._flush()
                done.append(self._file.check(
                    event, "what was written cannot be taken back: do not use it, and send "
                    "it again."))
                self.results.extend(done)
        return done

    def _write(self, data: memoryview) -> None:
        try:
            write_all(self._out, data)
        except BrokenPipeError:
            raise P2PCopyError(
                "Standard output was closed before the transfer ended (the program reading "
                "it stopped). Nothing more was received."
            ) from None
        except OSError as exc:
            raise P2PCopyError(f"Cannot write to standard output: {exc.strerror}.") from None

    def _flush(self) -> None:
        try:
            self._out.flush()
        except BrokenPipeError:
            raise P2PCopyError(
                "Standard output was closed before the transfer ended."
            ) from None
        except OSError as exc:
            raise P2PCopyError(f"Cannot write to standard output: {exc.strerror}.") from None

    def finish(self) -> None:
        self._flush()

    def abort(self) -> None:
        pass  # written bytes cannot be taken back; the error says so

    # A pipe cannot be rewound: a stream restarts from 0, which is only allowed while
    # nothing was written yet.
    def offers(self) -> list[Offer]:
        return []

    def resume(self, starts: dict[int, int], differs: Collection[int] = ()) -> None:
        pass

    def suspend(self) -> None:
        pass

    @property
    def restartable(self) -> bool:
        return self._file.size == 0


#: How to hold a larger object in memory (the receive_*() functions name themselves).
_RAISE_MEMORY = Hint("max_memory", "pass a larger {} to accept it")


class ObjectSink:
    """Rebuilds the one object of a transfer in memory; ``value`` once verified.

    An entry with ``meta`` (objects.py) is checked by an ObjectDecoder before ``accept``;
    a plain file or stream arrives as ``bytes``. ``max_bytes`` caps what is held (None:
    this machine's memory): an announced size above it is refused before ``accept``, a
    stream when it grows past it. ``raise_with`` tells the user how to raise it.
    """

    def __init__(self, entries: Sequence[Entry], max_bytes: int | None,
                 algorithm: str = SHA256, *,
                 raise_with: Hint = _RAISE_MEMORY) -> None:
        entry = single_entry(entries, "receive_object()")
        self._file = _Verified(entry, algorithm)
        self.meta = entry.meta
        self._decoder: ObjectDecoder | None = None
        self._buffer = bytearray()
        self._max_bytes = memory_limit() if max_bytes is None else max_bytes
        self._raise_with = raise_with
        self._value: object = None
        self._done = False
        self.results: list[FileResult] = []

    @property
    def kind(self) -> str:
        """What the sender sends: an objects.KINDS name, or "bytes" for a plain file.

        A description without a kind this receiver knows is a RemoteProtocolError.
        """
        return object_kind(self.meta) if self.meta is not None else "bytes"

    def prepare(self) -> None:
        entry = self._file.entry
        if isinstance(entry, FileEntry):
            # The announced size, before anything is read or allocated.
            self._check_size(entry.size, announced=True)
        if self.meta is None:
            return
        self._decoder = ObjectDecoder(self.meta, max_bytes=self._max_bytes)
        if isinstance(entry, FileEntry) and entry.size != self._decoder.size:
            raise RemoteProtocolError(
                f"The sender's object is malformed: its description says {self._decoder.size} "
                f"bytes, its entry {entry.size}. Nothing was kept."
            )

    def apply(self, events: Iterable[FileData | FileCompleted]) -> list[FileResult]:
        done: list[FileResult] = []
        for event in events:
            if isinstance(event, FileData):
                self._file.update(event.data)
                if self._decoder is not None:
                    self._decoder.feed(event.data)
                else:
                    self._check_size(self._file.size)
                    self._buffer += event.data
            else:
                result = self._file.check(event, "it was discarded. Send it again.")
                self._value = self._decode()
                self._done = True
                self.results.append(result)
                done.append(result)
        return done

    def _check_size(self, size: int, *, announced: bool = False) -> None:
        limit = self._max_bytes
        if limit is not None and size > limit:
            kind = self.kind if self.meta is not None else "file"
            offered = f"a {kind} of {size:,} bytes" if announced else f"more than {limit:,} bytes"
            raise PolicyError(
                f"The sender offers {offered} to hold in memory; this receiver holds at "
                f"most {limit:,}, so nothing was kept.",
                hint=self._raise_with,
            )

    def _decode(self) -> object:
        if self._decoder is not None:
            return self._decoder.finish()
        data, self._buffer = bytes(self._buffer), bytearray()
        return data

    @property
    def value(self) -> object:
        """The object, once verified."""
        if not self._done:
            raise LocalProtocolError("the object has not arrived yet")
        return self._value

    def finish(self) -> None:
        if not self._done:
            raise LocalProtocolError("eof before the object was complete")

    def abort(self) -> None:
        self._decoder = None
        self._buffer = bytearray()
        self._value = None

    # An object in memory restarts from 0 on a new attempt (a new sink is made for it).
    def offers(self) -> list[Offer]:
        return []

    def resume(self, starts: dict[int, int], differs: Collection[int] = ()) -> None:
        pass

    def suspend(self) -> None:
        self.abort()

    restartable = True


def default_name(kind: str) -> str:
    """The file name an object gets on a receiver that saves it to disk."""
    return {
        "bytes": "object.bin",
        "str": "text.txt",
        "json": "object.json",
        "numpy.ndarray": "array.npy",
        "pandas.DataFrame": "dataframe.arrows",
        "arrow.Table": "table.arrows",
        "arrow.RecordBatch": "batch.arrows",
    }.get(kind, "object.bin")


def memory_limit() -> int | None:
    """This machine's physical memory in bytes: no object bigger than that can arrive.

    The cap of a receiver that was told to hold anything (``max_bytes=None``).
    """
    sysconf = getattr(os, "sysconf", None)  # not on Windows
    try:
        return int(sysconf("SC_PHYS_PAGES") * sysconf("SC_PAGE_SIZE")) if sysconf else None
    except (ValueError, OSError):
        return None
