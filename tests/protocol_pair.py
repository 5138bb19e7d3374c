"""A Sender and a Receiver joined in memory, with no sockets: the tests' stand-in for a relay.

After h11's ``ConnectionPair``. The pair plays the relay: it checks both hellos with the
relay's parser, pairs them through ``Rooms``, sends ``ready`` to the sender and then
forwards every message verbatim, binary messages as ``bytes`` as a WebSocket would::

    pair = ProtocolPair([FileEntry("a.txt", 5)])
    events = pair.transfer({"a.txt": b"hello"}, chunk_size=2)
    assert reassemble(pair.files, events) == {"a.txt": b"hello"}

Each step is also available on its own (``connect``, ``open``, ``accept``, ``send_data``,
``send_checksums``, ``finish``) so that a test can stop anywhere and inject a message
with ``to_receiver`` or ``to_sender``.

The receiver's SenderJoined, which only tells a driver that the sender is there, is
checked (at most once, first) and left out of the events that the pair returns and
records; ``sender_joined`` says whether it came.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import os
from collections.abc import Iterable, Mapping, Sequence

from p2p_copy.protocol import digests
from p2p_copy.protocol.digests import SHA256
from p2p_copy.protocol.messages import (
    Entry,
    FileEntry,
    Ready,
    encode,
    parse_hello,
)
from p2p_copy.protocol.policy import DEFAULT_MAX_ENTRIES
from p2p_copy.protocol.transfer import (
    MANIFEST_PART_BYTES,
    FileCompleted,
    FileData,
    ManifestReceived,
    Receiver,
    ReceiverEvent,
    ReceiverJoined,
    Sender,
    SenderEvent,
    SenderJoined,
    TransferConfirmed,
    TransferFinished,
)
from p2p_copy.relay.pairing import Paired, Rooms, Wait

__all__ = [
    "CODE_HASH",
    "FUZZ_EXAMPLES",
    "completed",
    "ProtocolPair",
    "entries_for",
    "reassemble",
    "run_transfer",
    "sha256_hex",
    "hex_digest",
]

#: The room both peers of a pair join: the SHA-256 of an arbitrary code.
CODE_HASH = hashlib.sha256(b"7-test-code").hexdigest()

#: Examples per hypothesis test; set P2P_COPY_FUZZ_EXAMPLES for a longer run.
FUZZ_EXAMPLES = int(os.environ.get("P2P_COPY_FUZZ_EXAMPLES", "300"))


def hex_digest(algorithm: str, data: bytes) -> str:
    """``data``'s digest in ``algorithm`` (digests.py), as 64 hex digits."""
    hasher = digests.new(algorithm)
    hasher.update(data)
    return hasher.hexdigest()


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as the protocol writes it: 64 lowercase hex digits."""
    return hex_digest(SHA256, data)


def entries_for(contents: Mapping[str, bytes]) -> list[FileEntry]:
    """A FileEntry of the right size for every path of ``contents``, in the mapping's order."""
    return [FileEntry(path=path, size=len(data)) for path, data in contents.items()]


def reassemble(files: Sequence[FileEntry], events: Iterable[ReceiverEvent]) -> dict[str, bytes]:
    """Every file's bytes rebuilt from FileData events; AssertionError on any gap or overlap.

    Files must be filled in order and each slice must start where the last one ended,
    which is what a receiver writing straight to disk relies on.
    """
    chunks: list[bytearray] = [bytearray() for _ in files]
    current = 0
    for event in events:
        if not isinstance(event, FileData):
            continue
        assert isinstance(event.data, memoryview), f"FileData.data is a {type(event.data)}"
        assert len(event.data) > 0, f"empty FileData for file {event.file}"
        assert event.file >= current, f"file {event.file} after file {current}"
        assert event.offset == len(chunks[event.file]), (
            f"file {event.file}: slice at {event.offset}, expected {len(chunks[event.file])}"
        )
        current = event.file
        chunks[event.file] += event.data
    for entry, chunk in zip(files, chunks, strict=True):
        assert len(chunk) == entry.size, f"{entry.path}: {len(chunk)} of {entry.size} bytes"
    return {entry.path: bytes(chunk) for entry, chunk in zip(files, chunks, strict=True)}


class ProtocolPair:
    """A Sender and a Receiver for ``entries``, joined by this object playing the relay."""

    def __init__(
        self,
        entries: Sequence[Entry],
        *,
        code_hash_hex: str = CODE_HASH,
        manifest_part_bytes: int = MANIFEST_PART_BYTES,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        digests: Sequence[str] = (SHA256,),
    ) -> None:
        self.entries = tuple(entries)
        self.files = tuple(e for e in self.entries if isinstance(e, FileEntry))
        # SHA-256 only by default: the wire is then docs/protocol.md's worked example.
        self.sender = Sender(code_hash_hex, self.entries, manifest_part_bytes=manifest_part_bytes,
                             digests=digests)
        self.receiver = Receiver(code_hash_hex, max_entries=max_entries)
        #: Every event the receiver returned, in order (SenderJoined left out).
        self.events: list[ReceiverEvent] = []
        #: The receiver reported SenderJoined.
        self.sender_joined = False
        #: The hellos the relay received (the receiver's first), and every message forwarded
        #: to the receiver / to the sender afterwards, in order (``ready`` included).
        self.hello_log: list[str] = []
        self.to_receiver_log: list[str | bytes] = []
        self.to_sender_log: list[str] = []
        #: The manifest parts the sender produced (after ``open``).
        self.manifest_parts: list[str] = []
        self._ends = tuple(itertools.accumulate(f.size for f in self.files))
        self._checksummed = 0

    # --- forwarding, as the relay does --------------------------------------------------

    def to_receiver(self, message: str | bytes | bytearray | memoryview) -> list[ReceiverEvent]:
        """Deliver one message to the receiver, binary ones as bytes; return its events."""
        delivered = message if isinstance(message, str) else bytes(message)
        self.to_receiver_log.append(delivered)
        events = self.receiver.receive(delivered)
        if events and events[0] == SenderJoined():
            assert not self.sender_joined, "SenderJoined twice"
            self.sender_joined = True
            events = events[1:]
        assert SenderJoined() not in events, events
        self.events.extend(events)
        return events

    def to_sender(self, message: str) -> list[SenderEvent]:
        """Deliver one message to the sender; return its events."""
        self.to_sender_log.append(message)
        return self.sender.receive(message)

    # --- the steps of a transfer ----------------------------------------------------------

    def connect(self) -> None:
        """Both hellos pass the relay's checks and meet in a room; the sender gets ``ready``."""
        rooms: Rooms[str] = Rooms()
        self.hello_log += [self.receiver.hello(), self.sender.hello()]
        receiver_hello, sender_hello = (parse_hello(text) for text in self.hello_log[-2:])
        assert receiver_hello.role == "receiver" and sender_hello.role == "sender"
        assert isinstance(rooms.join(receiver_hello, "receiver"), Wait)
        paired = rooms.join(sender_hello, "sender")
        assert isinstance(paired, Paired) and paired.partner == "receiver", paired
        assert self.to_sender(encode(Ready())) == [ReceiverJoined()]

    def open(self) -> ManifestReceived:
        """``connect``, then every manifest part; return the receiver's ManifestReceived."""
        self.connect()
        self.manifest_parts = list(self.sender.manifest())
        for part in self.manifest_parts[:-1]:
            assert self.to_receiver(part) == [], "a manifest part with more=true gave events"
        events = self.to_receiver(self.manifest_parts[-1])
        assert len(events) == 1 and isinstance(events[0], ManifestReceived), events
        return events[0]

    def accept(self) -> None:
        """The receiver accepts the manifest and the sender starts streaming."""
        self.to_sender(self.receiver.accept())

    def send_data(self, payload: bytes) -> list[ReceiverEvent]:
        """Frame ``payload`` as one data message from the sender and deliver it."""
        buffer = bytearray(1 + len(payload))
        buffer[1:] = payload
        return self.to_receiver(self.sender.frame_data(buffer, len(payload)))

    def send_checksums(self, contents: Mapping[str, bytes]) -> list[ReceiverEvent]:
        """The checksums of every file whose bytes were all sent and not yet checksummed.

        Sends nothing (and returns []) when no such file exists. The sender may split the
        digests over several messages; the events of all of them are returned.
        """
        complete = bisect.bisect_right(self._ends, self.sender.bytes_sent)
        if complete <= self._checksummed:
            return []
        algorithm = self.sender.digest
        digests = [hex_digest(algorithm, contents[f.path])
                   for f in self.files[self._checksummed:complete]]
        self._checksummed = complete
        events: list[ReceiverEvent] = []
        for message in self.sender.checksums(digests):
            events += self.to_receiver(message)
        return events

    def finish(self) -> list[ReceiverEvent]:
        """Eof to the receiver and, if it reports TransferFinished, its ``done`` to the sender."""
        events = self.to_receiver(self.sender.eof())
        if events and isinstance(events[-1], TransferFinished):
            assert self.to_sender(self.receiver.done()) == [TransferConfirmed()]
        return events

    def transfer(
        self,
        contents: Mapping[str, bytes],
        *,
        chunk_size: int | Sequence[int] = 64 * 1024,
        checksums_at_end: bool = False,
    ) -> list[ReceiverEvent]:
        """Run the whole transfer with ``contents`` (by path); return all receiver events.

        The stream is cut into data messages of ``chunk_size`` bytes (a sequence is cycled,
        the last message may be shorter). Checksums follow each data message that completes
        files, or all come just before eof with ``checksums_at_end``.
        """
        stream = self._stream_of(contents)
        sizes = itertools.cycle([chunk_size] if isinstance(chunk_size, int) else chunk_size)
        self.open()
        self.accept()
        position = 0
        while True:
            if not checksums_at_end:
                self.send_checksums(contents)  # also covers zero-size files before any data
            if position >= len(stream):
                break
            size = next(sizes)
            if size <= 0:
                raise ValueError("chunk sizes must be positive")
            self.send_data(stream[position:position + size])
            position += size
        self.send_checksums(contents)
        self.finish()
        return list(self.events)

    def _stream_of(self, contents: Mapping[str, bytes]) -> bytes:
        if set(contents) != {f.path for f in self.files}:
            raise ValueError("contents must give the bytes of exactly the manifest's files")
        for entry in self.files:
            if len(contents[entry.path]) != entry.size:
                raise ValueError(f"{entry.path}: {len(contents[entry.path])} bytes, "
                                 f"the entry says {entry.size}")
        return b"".join(contents[f.path] for f in self.files)


def run_transfer(
    entries: Sequence[Entry],
    contents: Mapping[str, bytes],
    *,
    chunk_size: int | Sequence[int] = 64 * 1024,
    checksums_at_end: bool = False,
    manifest_part_bytes: int = MANIFEST_PART_BYTES,
) -> list[ReceiverEvent]:
    """A whole transfer of ``entries`` with ``contents`` through a fresh pair; its events."""
    pair = ProtocolPair(entries, manifest_part_bytes=manifest_part_bytes)
    return pair.transfer(contents, chunk_size=chunk_size, checksums_at_end=checksums_at_end)


def completed(events: Iterable[ReceiverEvent]) -> list[tuple[int, str]]:
    """The (file, sha256) of every FileCompleted event, in order."""
    return [(e.file, e.digest) for e in events if isinstance(e, FileCompleted)]

