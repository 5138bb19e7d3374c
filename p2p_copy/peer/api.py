"""The public coroutines: ``await send(...)``, ``await receive(...)`` and their kin.

Each one says what goes out or where it lands (files, a pipe, a text, an object), takes
the same ``options=Options(...)`` and keywords (peer/options.py), and hands over to the
drivers: peer/sending.py and peer/receiving.py. Their blocking and background twins are
made from ``ENTRY_POINTS`` (peer/blocking.py, peer/background.py), so all of them exist in
all three forms.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal, Unpack

from ..display.progress import make_progress
from ..errors import Hint, UsageError
from ..protocol.codes import GENERATE
from ..protocol.messages import Entry, FileEntry, StreamEntry
from ..protocol.objects import encode_object
from ..protocol.policy import ReceivePolicy
from ..results import TransferResult
from ..storage.destination import Destination
from ..storage.streams import ChunkReader, ObjectSink, PipeReader, PipeSink, Sink, default_name
from .options import DEFAULT_CHUNK_SIZE, EntryPoint, OptionFields, Options, resolve
from .partial import tell_display
from .receiving import MakeSink, object_sink, receive_into
from .reconnect import DEFAULT_RECONNECT_TIMEOUT
from .sending import Outgoing, entry_name, send_files, send_outgoing
from .session import shown

__all__ = [
    "ENTRY_POINTS",
    "send",
    "receive",
    "send_stream",
    "receive_stream",
    "send_object",
    "receive_object",
    "send_text",
    "receive_text",
    "receive_any",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_RECONNECT_TIMEOUT",
]


async def send(
    server: str,
    code: str | None,
    paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    options: Options | None = None,
    **keywords: Unpack[OptionFields],
) -> TransferResult:
    """Send files and folders to the receiver that uses the same ``code`` on ``server``.

    ``code`` None (or ``"auto"``) generates one, shown by the progress display and
    returned in the result. Returns once the receiver has verified every file and given
    it its final name. ``options`` and the keywords (``cafile=``, ``compress=``, ...: see
    p2p_copy.Options) say how the transfer runs.

    When the connection drops, both sides reconnect with the same code for up to
    ``reconnect_timeout`` seconds (0: never) and continue each file from the prefix the
    receiver already holds; so does running the same send and receive again later.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    opts = resolve("send", options, keywords)
    display = make_progress(opts.progress, "send")
    return await shown(display, send_files(server, code, paths, opts, display))


async def receive(
    server: str,
    code: str,
    dest: str | os.PathLike[str] = ".",
    *,
    options: Options | None = None,
    **keywords: Unpack[OptionFields],
) -> TransferResult:
    """Receive what the sender with the same ``code`` sends, into the folder ``dest``.

    ``dest`` is created if it does not exist. Files appear under their final names only
    once verified (whole-file BLAKE3, or SHA-256 with a peer that lacks it). Existing
    files are kept unless ``overwrite`` is true; one with the size and time the sender
    announces is compared with the sender's and, if equal, kept and not sent again.
    ``policy`` limits what is accepted (files, bytes, depth, hidden names); an offer over
    it is refused before any byte. Other options as for send().

    When the connection drops (and reconnecting does not help), a side cancels or times
    out, partial files stay as hidden ``.NAME.p2p-copy-part`` files with a
    ``.p2p-copy-resume`` sidecar, so that running the same receive again continues them;
    a definitive error (integrity, unsafe path, policy, wrong code, tampering) removes them.
    """
    opts = _receiver("receive", code, options, keywords)
    return await _received(server, code, _folder(Path(dest), opts), opts, dest)


async def send_stream(
    server: str,
    code: str | None,
    source: BinaryIO,
    *,
    name: str = "stdin",
    options: Options | None = None,
    **keywords: Unpack[OptionFields],
) -> TransferResult:
    """Send what can be read from the binary file ``source`` (a pipe) until its end.

    The length need not be known: the receiver learns it, and the digest, at the end.
    ``source`` is read in chunks from a worker thread, never whole, and only once the
    receiver has accepted. A receiver that saves files gets it as ``name``. Options as
    for send().
    """
    opts = resolve("send_stream", options, keywords)
    # A pipe is read once: after a drop mid-stream there is nothing to send again.
    outgoing = Outgoing((StreamEntry(entry_name(name)),),
                        lambda _, digest: PipeReader(source, digest), once=True)
    display = make_progress(opts.progress, "send", entry="send_stream")
    return await shown(display, send_outgoing(server, code, outgoing, opts, display))


async def receive_stream(
    server: str,
    code: str,
    out: BinaryIO,
    *,
    max_bytes: int | None = None,
    options: Options | None = None,
    **keywords: Unpack[OptionFields],
) -> TransferResult:
    """Write the single file, stream or object the sender sends to the binary file ``out``.

    Nothing touches the disk. Bytes are written as they arrive; the digest is checked at
    the end, and a mismatch raises IntegrityError *after* the bytes were written: a pipe
    cannot be unwritten, so treat the output as valid only if this returns. More than one
    file, or more than ``max_bytes`` (short for ``policy=ReceivePolicy(max_bytes=...)``),
    is refused (PolicyError).
    """
    opts = _receiver("receive_stream", code, options, keywords)
    if max_bytes is not None:
        # Short for the policy's max_bytes: the policy's other limits stay as they were.
        opts = dataclasses.replace(opts, policy=dataclasses.replace(
            opts.policy or ReceivePolicy(), max_bytes=max_bytes))
    return await _received(server, code, lambda entries, digest: PipeSink(entries, out, digest),
                           opts)


async def send_object(
    server: str,
    code: str | None,
    obj: object,
    *,
    name: str | None = None,
    options: Options | None = None,
    **keywords: Unpack[OptionFields],
) -> TransferResult:
    """Send a Python object to the receiver's receive_object(), without pickle.

    Supported: bytes, str, JSON values, NumPy arrays, pandas DataFrames, pyarrow Tables and
    RecordBatches (protocol/objects.py says how each travels); anything else is a
    UsageError before anything starts. Large arrays and tables are streamed from their
    own memory, so do not modify ``obj`` until this returns. A receiver that saves files
    gets the bytes as ``name`` (default by kind: array.npy, dataframe.arrows, ...).
    Options as for send().
    """
    return await _send_object("send_object", server, code, obj, name, options, keywords)


async def send_text(
    server: str,
    code: str | None,
    text: str,
    *,
    name: str = "text.txt",
    options: Options | None = None,
    **keywords: Unpack[OptionFields],
) -> TransferResult:
    """Send ``text``: receive_text() returns it, ``p2p-copy receive`` prints it."""
    if not isinstance(text, str):
        raise UsageError(f"send_text() sends a str, not a {type(text).__name__}.")
    return await _send_object("send_text", server, code, text, name, options, keywords)


async def receive_object(
    server: str,
    code: str,
    *,
    max_bytes: int | None | Literal["default"] = "default",
    options: Options | None = None,
    **keywords: Unpack[OptionFields],
) -> object:
    """Receive the object the sender's send_object() sends; nothing touches the disk.

    The object is rebuilt from data-only formats (never pickle), after its description was
    checked and before it is returned, its digest. A plain file or stream arrives as
    ``bytes``. ``max_memory`` (or its older name ``max_bytes``) caps the bytes held: 32 MiB
    by default, None for as much as this machine's memory. A bigger offer is refused
    before anything is allocated, a stream once it grows past it (PolicyError).
    """
    return await _receive_object("receive_object", server, code, None, max_bytes, options,
                                 keywords)


async def receive_text(
    server: str,
    code: str,
    *,
    max_bytes: int | None | Literal["default"] = "default",
    options: Options | None = None,
    **keywords: Unpack[OptionFields],
) -> str:
    """Receive the text the sender's send_text() (or ``p2p-copy send --text``) sends.

    Anything but a text, or a text of more than ``max_memory`` bytes of UTF-8 (as for
    receive_object()), is refused before any byte moves (PolicyError).
    """
    text = await _receive_object("receive_text", server, code, "str", max_bytes, options,
                                 keywords)
    assert isinstance(text, str)
    return text


async def receive_any(
    server: str,
    code: str,
    dest: str | os.PathLike[str] = ".",
    *,
    out: BinaryIO | None = None,
    options: Options | None = None,
) -> tuple[TransferResult, str | None]:
    """The CLI's receive: to ``out`` if given, else a text is returned, else files to ``dest``.

    What the sender offers decides between a text and files, once its manifest arrived.
    A text is held in memory: more than ``options.max_memory`` of it is refused before any
    byte moves (PolicyError).
    """
    opts = options if options is not None else Options()
    texts: list[ObjectSink] = []
    to_folder = _folder(Path(dest), opts)

    def sink(entries: Sequence[Entry], digest: str) -> Sink:
        if out is not None:
            return PipeSink(entries, out, digest)
        if len(entries) == 1 and isinstance(entries[0], FileEntry) and entries[0].meta \
                and entries[0].meta.get("kind") == "str":
            texts.append(object_sink(
                entries, opts.max_memory, "str", digest,
                Hint("max_text", "raise the limit with {} to accept it")))
            return texts[-1]
        return to_folder(entries, digest)

    result = await _received(server, code, sink, opts)
    text = texts[-1].value if texts else None
    assert text is None or isinstance(text, str)
    return result, text


#: Every public coroutine by name, with the side it plays: the table the blocking and
#: background twins are made from (and that tests/test_entry_points.py checks).
ENTRY_POINTS: Mapping[EntryPoint, tuple[Callable[..., Coroutine[Any, Any, Any]],
                                        Literal["send", "receive"]]] = {
    "send": (send, "send"),
    "receive": (receive, "receive"),
    "send_stream": (send_stream, "send"),
    "receive_stream": (receive_stream, "receive"),
    "send_text": (send_text, "send"),
    "receive_text": (receive_text, "receive"),
    "send_object": (send_object, "send"),
    "receive_object": (receive_object, "receive"),
}


def twin_names(entry: EntryPoint) -> tuple[str, str]:
    """The names of ``entry``'s blocking and background twins (start_send and start_receive
    came first; the others follow their pattern)."""
    return f"{entry}_blocking", f"start_{entry}"


# --- shared by the entry points above ------------------------------------------------------


def _receiver(entry: EntryPoint, code: str, options: Options | None,
              keywords: Mapping[str, Any]) -> Options:
    if code is None or code == GENERATE:
        raise UsageError("The receiver needs the code the sender shows.")
    return resolve(entry, options, keywords)


async def _received(server: str, code: str, sink: MakeSink, options: Options,
                    dest: str | os.PathLike[str] | None = None) -> TransferResult:
    display = make_progress(options.progress, "receive")
    if dest is not None:
        tell_display(display, dest)  # so that a stop can say what it kept, and where
    return await shown(display, receive_into(server, code, sink, options, display))


def _folder(root: Path, options: Options) -> MakeSink:
    """A sink maker for files into ``root``. What one attempt learns lasts the run: the
    folders it made get their modes when the run finishes, and a file the sender did not
    take is not offered again (storage/destination.py)."""
    made: set[Path] = set()
    refused: set[str] = set()
    fold_names = (options.policy or ReceivePolicy()).fold_names

    def sink(entries: Sequence[Entry], digest: str) -> Sink:
        return Destination(root, entries, overwrite=options.overwrite, algorithm=digest,
                           made_folders=made, refused=refused, fold_names=fold_names)

    return sink


async def _send_object(entry: EntryPoint, server: str, code: str | None, obj: object,
                       name: str | None, options: Options | None,
                       keywords: Mapping[str, Any]) -> TransferResult:
    opts = resolve(entry, options, keywords)
    encoded = await asyncio.to_thread(encode_object, obj, chunk_size=opts.chunk_size)
    path = entry_name(name if name is not None else default_name(encoded.meta["kind"]))
    # An object starts over from its first byte after a drop (each chunks() call does).
    outgoing = Outgoing((FileEntry(path, encoded.size, meta=encoded.meta),),
                        lambda _, digest: ChunkReader(encoded.chunks(), encoded.size, digest))
    display = make_progress(opts.progress, "send", entry=entry)
    return await shown(display, send_outgoing(server, code, outgoing, opts, display))


async def _receive_object(entry: EntryPoint, server: str, code: str, kind: str | None,
                          max_bytes: int | None | Literal["default"], options: Options | None,
                          keywords: Mapping[str, Any]) -> object:
    if max_bytes != "default":
        if "max_memory" in keywords:
            raise UsageError(f"{entry}() takes max_bytes or max_memory, not both "
                             "(max_bytes is its older name).")
        keywords = {**keywords, "max_memory": max_bytes}
    # An object is held in memory, capped by max_memory; the folder policy does not apply.
    opts = dataclasses.replace(_receiver(entry, code, options, keywords), policy=None)
    sinks: list[ObjectSink] = []

    def sink(entries: Sequence[Entry], digest: str) -> Sink:
        raise_with = Hint("max_memory", f"pass a larger {{}} to {entry}() to accept it")
        sinks.append(object_sink(entries, opts.max_memory, kind, digest, raise_with))
        return sinks[-1]

    # The sink caps a stream itself, with a message about objects rather than files.
    await _received(server, code, sink, opts)
    return sinks[-1].value
