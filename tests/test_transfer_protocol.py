"""The Sender and Receiver state machines, joined in memory by ProtocolPair: no sockets."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import random
import re
import struct
from collections.abc import Callable, Iterable

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2p_copy.errors import (
    DestinationExistsError,
    DiskFullError,
    IncompatiblePeerError,
    IntegrityError,
    LocalProtocolError,
    P2PCopyError,
    PeerGoneError,
    PolicyError,
    RemoteProtocolError,
    TransferTimeoutError,
    UnsafePathError,
)
from p2p_copy.protocol.digests import BLAKE3, SHA256, available
from p2p_copy.protocol.messages import (
    DATA_RAW,
    DATA_ZSTD,
    Accept,
    Checksums,
    DirEntry,
    Done,
    Entry,
    Eof,
    ErrorMessage,
    FileEntry,
    Hello,
    Manifest,
    Ready,
    StreamEntry,
    Waiting,
    encode,
    encode_manifest,
    parse_message,
)
from p2p_copy.protocol.transfer import (
    AcceptReceived,
    FileCompleted,
    FileData,
    ManifestReceived,
    Receiver,
    ReceiverEvent,
    ReceiverJoined,
    ReceiverState,
    RelayWaiting,
    Send,
    Sender,
    SenderJoined,
    SenderState,
    TransferFinished,
)
from tests.protocol_pair import (
    CODE_HASH,
    FUZZ_EXAMPLES,
    ProtocolPair,
    completed,
    entries_for,
    reassemble,
    run_transfer,
    sha256_hex,
)
from tests.test_compression import csv_text

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def data_events(events: Iterable[object]) -> list[tuple[int, int, bytes]]:
    """The (file, offset, bytes) of every FileData event, in order."""
    return [(e.file, e.offset, bytes(e.data)) for e in events if isinstance(e, FileData)]


def random_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


# A mixed tree: folders (one empty), empty files at the start, middle and end, a large
# file and small ones. File numbers: 0 "a/empty-first", 1 "a/photo.jpg", 2 "a/b/note.txt",
# 3 "a/b/zero", 4 "big.bin", 5 "tiny", 6 "z-empty-last".
TREE_CONTENTS = {
    "a/empty-first": b"",
    "a/photo.jpg": random_bytes(1000, 1),
    "a/b/note.txt": "Grüße, 世界!\n".encode(),
    "a/b/zero": b"",
    "big.bin": random_bytes(5000, 2),
    "tiny": b"x",
    "z-empty-last": b"",
}
TREE: list[Entry] = [
    DirEntry("a", mode=0o750, mtime=1_700_000_000.0),
    DirEntry("a/b"),
    DirEntry("a/empty dir"),
    *entries_for(TREE_CONTENTS),
]


# --- the happy path ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunk_size",
    [1, 7, [333, 1, 4096], 1000, 10**6],
    ids=["1-byte messages", "7-byte", "mixed", "1000", "one message"],
)
@pytest.mark.parametrize("checksums_at_end", [False, True], ids=["eager", "late checksums"])
def test_transfer_delivers_exact_bytes_and_digests(
    chunk_size: int | list[int], checksums_at_end: bool
) -> None:
    """However the stream is cut, FileData rebuilds every file and each digest arrives once."""
    pair = ProtocolPair(TREE)
    events = pair.transfer(TREE_CONTENTS, chunk_size=chunk_size,
                           checksums_at_end=checksums_at_end)
    assert isinstance(events[0], ManifestReceived) and events[0].entries == tuple(TREE)
    assert isinstance(events[-1], TransferFinished)
    assert reassemble(pair.files, events) == TREE_CONTENTS
    assert completed(events) == [(i, sha256_hex(TREE_CONTENTS[f.path]))
                                 for i, f in enumerate(pair.files)]
    assert pair.sender.state is SenderState.DONE
    assert pair.receiver.state is ReceiverState.DONE
    total = sum(map(len, TREE_CONTENTS.values()))
    assert pair.sender.bytes_sent == pair.receiver.bytes_received == total


def test_manifest_received_describes_the_transfer() -> None:
    """ManifestReceived lists the entries, the files only, and their total size."""
    event = ProtocolPair(TREE).open()
    assert event.entries == tuple(TREE)
    assert [f.path for f in event.files] == list(TREE_CONTENTS)
    assert event.total_bytes == sum(map(len, TREE_CONTENTS.values()))


def test_digest_follows_the_last_byte_of_its_file() -> None:
    """With eager checksums each FileCompleted comes after its file's last FileData."""
    events = run_transfer(TREE, TREE_CONTENTS, chunk_size=[333, 1, 4096])
    for done in (e for e in events if isinstance(e, FileCompleted)):
        done_at = events.index(done)
        assert all(events.index(e) < done_at for e in events
                   if isinstance(e, FileData) and e.file == done.file)


def test_one_message_spanning_several_files() -> None:
    """The §12 example: one message holds a whole file, an empty one and the next's start."""
    contents = {"d/a": b"hello", "e": b"", "d/b": b"world!!"}
    pair = ProtocolPair(entries_for(contents))
    pair.open()
    pair.accept()
    first = pair.send_data(b"hellowo")
    assert data_events(first) == [(0, 0, b"hello"), (2, 0, b"wo")]
    assert pair.send_checksums(contents) == [
        FileCompleted(0, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"),
        FileCompleted(1, EMPTY_SHA256),
    ]
    assert data_events(pair.send_data(b"rld!!")) == [(2, 2, b"rld!!")]
    assert pair.send_checksums(contents) == [
        FileCompleted(2, "42a19f77459c45b0218f7d21a485a8a41e3bcb4e80e6e570033c49e2fb16446a"),
    ]
    assert pair.finish() == [TransferFinished()]
    assert pair.to_receiver_log[-5:] == [
        b"\x00hellowo",
        '{"type":"checksums","first":0,"sha256":["2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa74'
        '25e73043362938b9824","e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}',
        b"\x00rld!!",
        '{"type":"checksums","first":2,"sha256":["42a19f77459c45b0218f7d21a485a8a41e3bcb4e80e6e5'
        '70033c49e2fb16446a"]}',
        '{"type":"eof"}',
    ]


def test_file_spanning_several_messages() -> None:
    """A file cut over messages arrives as consecutive slices with growing offsets."""
    content = b"0123456789"
    events = run_transfer([FileEntry("f", 10)], {"f": content}, chunk_size=3)
    assert data_events(events) == [(0, 0, b"012"), (0, 3, b"345"), (0, 6, b"678"), (0, 9, b"9")]
    assert completed(events) == [(0, sha256_hex(content))]


_WORKED_ROOM_HASH = "4db57ad8f4f2ce91aca47e419715faf52e952b614d41f7cb6d28cb7684bceac0"


def _worked_example(digests: tuple[str, ...] = (SHA256,)) -> ProtocolPair:
    """The transfer of docs/protocol.md §12.1, run in memory."""

    room_hash = _WORKED_ROOM_HASH
    entries: list[Entry] = [
        DirEntry("trip", mode=0o755, mtime=1700000001.0),
        FileEntry("trip/a.txt", 14, mode=0o644, mtime=1700000000.5),
        FileEntry("trip/b.txt", 4, mode=0o600, mtime=1700000000.0),
        DirEntry("trip/empty", mode=0o755, mtime=1700000000.0),
    ]

    class RelayThatConfirms(ProtocolPair):
        """The pair, plus the relay's ``waiting`` to the receiver, which arrives first."""

        def connect(self) -> None:
            super().connect()
            self.to_receiver(encode(Waiting()))

    pair = RelayThatConfirms(entries, code_hash_hex=room_hash, digests=digests)
    pair.transfer({"trip/a.txt": b"Hello, world!\n", "trip/b.txt": b"p2p\n"})
    return pair


def _worked_example_section() -> str:
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text("utf-8")
    return doc[doc.index("### 12.1 "):doc.index("### 12.2 ")]


def test_worked_example_transcript() -> None:
    """The exact --no-encrypt traffic of the spec's worked example (docs/protocol.md §12.1)."""
    room_hash = _WORKED_ROOM_HASH
    assert hashlib.sha256(b"p2p-copy room v2\x00purple").hexdigest() == room_hash
    pair = _worked_example()
    assert pair.hello_log == [
        f'{{"type":"hello","code_hash_hex":"{room_hash}","role":"receiver","version":2}}',
        f'{{"type":"hello","code_hash_hex":"{room_hash}","role":"sender","version":2}}',
    ]
    (waiting, manifest, data, checksums_message, eof) = pair.to_receiver_log
    ready, accept, done = pair.to_sender_log
    actual: list[tuple[str, str | bytes]] = [
        ("R→Y", pair.hello_log[0]), ("Y→R", waiting), ("S→Y", pair.hello_log[1]),
        ("Y→S", ready), ("S→R", manifest), ("R→S", accept), ("S→R", data),
        ("S→R", checksums_message), ("S→R", eof), ("R→S", done),
    ]

    # The doc's table: every row whose kind is text or binary, in order.
    section = _worked_example_section()
    table = section[section.index("| # | direction | kind | message |"):]
    documented: list[tuple[str, str | bytes]] = []
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[2] not in ("text", "binary, 19 bytes"):
            continue
        quoted = cells[3].split("`")[1]
        message = quoted if cells[2] == "text" else bytes.fromhex(quoted)
        documented.append((cells[1], message))
    assert documented == actual
    assert data == bytes.fromhex("00 48 65 6c 6c 6f 2c 20 77 6f 72 6c 64 21 0a 70 32 70 0a")


@pytest.mark.skipif(BLAKE3 not in available(), reason="needs the blake3 package")
def test_worked_example_with_blake3() -> None:
    """§12.1's paragraph on the three messages that differ when both peers have BLAKE3."""
    section = _worked_example_section()
    said = section[section.index("With it (§6.7.1)"):section.index("| # | direction")]
    quoted = re.findall(r"`(\{[^`]*)`", said)
    assert len(quoted) == 3, quoted
    manifest_start, accept, checksums_message = quoted
    pair = _worked_example((BLAKE3, SHA256))
    _, manifest, _, checksums_sent, _ = pair.to_receiver_log
    assert isinstance(manifest, str) and manifest.startswith(manifest_start)
    assert pair.to_sender_log[1] == accept
    assert checksums_sent == checksums_message


def test_only_empty_files_send_no_data() -> None:
    """Zero-size files need no data message, but each still gets its digest."""
    contents = {"e1": b"", "dir/e2": b"", "e3": b""}
    pair = ProtocolPair(entries_for(contents))
    events = pair.transfer(contents)
    assert data_events(events) == []
    assert completed(events) == [(0, EMPTY_SHA256), (1, EMPTY_SHA256), (2, EMPTY_SHA256)]
    assert not any(isinstance(m, bytes) for m in pair.to_receiver_log)


@pytest.mark.parametrize("entries", [[], [DirEntry("only"), DirEntry("only/dirs")]],
                         ids=["nothing", "folders only"])
def test_transfer_without_file_bytes(entries: list[Entry]) -> None:
    """With no files the transfer is manifest, accept, eof, done."""
    pair = ProtocolPair(entries)
    assert pair.transfer({}) == [ManifestReceived(tuple(entries)), TransferFinished()]
    assert all(isinstance(m, str) for m in pair.to_receiver_log)
    assert [parse_message(str(m)).type for m in pair.to_receiver_log] == ["manifest", "eof"]
    assert pair.to_sender_log == [encode(Ready()), encode(Accept(compression=("zstd",))),
                                  encode(Done())]


def test_file_data_are_views_of_the_message() -> None:
    """FileData carries memoryviews into the received message, not copies."""
    pair = ProtocolPair([FileEntry("a", 3), FileEntry("b", 2)])
    pair.open()
    pair.accept()
    message = b"\x00abcde"
    pair.sender.frame_data(bytearray(6), 5)  # keep the sender in step
    slices = [e.data for e in pair.receiver.receive(message) if isinstance(e, FileData)]
    assert [bytes(s) for s in slices] == [b"abc", b"de"]
    assert all(s.obj is message for s in slices)


def test_many_digests_are_split_over_messages() -> None:
    """Thousands of finished files get their digests in several consecutive messages."""
    contents = {f"f{i:05}": b"" for i in range(5000)}
    pair = ProtocolPair(entries_for(contents))
    events = pair.transfer(contents)
    messages = [parse_message(m) for m in pair.to_receiver_log if isinstance(m, str)]
    firsts = [m.first for m in messages if isinstance(m, Checksums)]
    assert len(firsts) > 1 and firsts[0] == 0
    assert [i for i, _ in completed(events)] == list(range(5000))


# --- multi-part manifests ---------------------------------------------------------------


def many_entries(n: int) -> list[Entry]:
    return [FileEntry(f"dir/file-{i:03}.txt", i) for i in range(n)]


def test_manifest_in_one_entry_parts() -> None:
    """With a tiny part size every entry is its own part; all but the last say more."""
    entries = many_entries(5) + [DirEntry("dir")]
    pair = ProtocolPair(entries, manifest_part_bytes=1)
    event = pair.open()
    parts = [parse_message(p) for p in pair.manifest_parts]
    manifests = [p for p in parts if isinstance(p, Manifest)]
    assert len(manifests) == len(parts)
    assert [len(p.entries) for p in manifests] == [1] * 6
    assert [p.more for p in manifests] == [True] * 5 + [False]
    assert event.entries == tuple(entries)


def test_manifest_parts_respect_the_part_size() -> None:
    """Parts are cut so that each stays within the configured size."""
    entries = many_entries(60)
    pair = ProtocolPair(entries, manifest_part_bytes=400)
    assert pair.open().entries == tuple(entries)
    assert len(pair.manifest_parts) > 3
    assert all(len(p.encode()) <= 400 for p in pair.manifest_parts)


@pytest.mark.parametrize("part_bytes", [1, 150, 400, 10**6])
def test_manifest_parts_are_what_encode_makes(part_bytes: int) -> None:
    """Each part is byte for byte encode(Manifest(...)) of its entries, non-ASCII names too."""
    entries: list[Entry] = [
        *many_entries(20), DirEntry("d\u00e9j\u00e0", mode=0o700, mtime=1.5),
        FileEntry("d\u00e9j\u00e0/\U0001f600" * 3, 7, mtime=2.0), FileEntry('q"\\', 1),
        # Files as a walk makes them (encoded without the JSON encoder's dict walk).
        FileEntry("w/a\tb\"c\\\x7f\u2028", 2**53, 0o7777, 1700000000.123456),
        FileEntry("w/tiny", 0, 0, 1e-07), FileEntry("w/old", 3, 0o644, -5.5),
        FileEntry("w/far", 1, 0o600, 1e20), FileEntry("w/meta", 1, mtime=1.0, meta={"k": [1]}),
    ]
    parts = list(encode_manifest(entries, part_bytes))
    manifests = [parse_message(p) for p in parts]
    assert all(isinstance(m, Manifest) for m in manifests)
    assert [encode(m) for m in manifests] == parts
    assert [m.more for m in manifests] == [True] * (len(parts) - 1) + [False]
    assert tuple(e for m in manifests for e in m.entries) == tuple(entries)
    if part_bytes >= 150:
        assert all(len(p.encode()) <= part_bytes for p in parts)


def test_manifest_fits_in_one_part_by_default() -> None:
    """A modest manifest is a single message without ``more``."""
    pair = ProtocolPair(many_entries(60))
    pair.open()
    assert len(pair.manifest_parts) == 1 and '"more"' not in pair.manifest_parts[0]


def test_multi_part_transfer_completes() -> None:
    """A transfer announced in many parts carries its files like any other."""
    contents = {f"f{i}": random_bytes(i, i) for i in range(12)}
    events = run_transfer(entries_for(contents), contents, chunk_size=5, manifest_part_bytes=60)
    assert reassemble(entries_for(contents), events) == contents


def test_paths_are_checked_over_all_parts() -> None:
    """Names colliding across two parts are refused once the manifest is complete."""
    pair = ProtocolPair([FileEntry("Readme", 1), FileEntry("README", 1)], manifest_part_bytes=1)
    pair.connect()
    first, last = list(pair.sender.manifest())
    assert pair.to_receiver(first) == []
    with pytest.raises(UnsafePathError):
        pair.to_receiver(last)
    assert pair.receiver.state is ReceiverState.FAILED


def test_every_part_needs_a_version() -> None:
    """A later part without ``version`` is an incompatible peer, not silently accepted."""
    pair = ProtocolPair([])
    pair.connect()
    pair.to_receiver(encode(Manifest(entries=(FileEntry("a", 1),), more=True)))
    with pytest.raises(IncompatiblePeerError):
        pair.to_receiver(json.dumps({"type": "manifest", "entries": []}))
    assert pair.receiver.state is ReceiverState.FAILED


# --- max_entries ------------------------------------------------------------------------


def test_max_entries_allows_the_limit() -> None:
    """Exactly max_entries entries are accepted."""
    assert len(ProtocolPair(many_entries(3), max_entries=3).open().entries) == 3


def test_max_entries_refuses_one_more() -> None:
    """One entry beyond max_entries is a protocol error."""
    pair = ProtocolPair(many_entries(4), max_entries=3)
    with pytest.raises(RemoteProtocolError, match="3 entries"):
        pair.open()
    assert pair.receiver.state is ReceiverState.FAILED


def test_max_entries_counts_over_parts_and_stops_early() -> None:
    """The limit applies to all parts together and trips at the part that crosses it."""
    pair = ProtocolPair(many_entries(6), manifest_part_bytes=1, max_entries=3)
    pair.connect()
    parts = list(pair.sender.manifest())
    for part in parts[:3]:
        assert pair.to_receiver(part) == []
    with pytest.raises(RemoteProtocolError):
        pair.to_receiver(parts[3])
    assert pair.receiver.state is ReceiverState.FAILED


def test_max_entries_zero_still_allows_an_empty_manifest() -> None:
    """A receiver that takes no entries still accepts an empty transfer."""
    pair = ProtocolPair([], max_entries=0)
    assert pair.transfer({}) == [ManifestReceived(()), TransferFinished()]


# --- the sender breaks the protocol (the receiver detects it) ---------------------------

CONTENTS = {"a": b"0123456789", "b": b"", "c": b"wxyz"}  # 14 bytes, three files
ENTRIES = entries_for(CONTENTS)
DIGESTS = [sha256_hex(CONTENTS[p]) for p in CONTENTS]


def waiting(pair: ProtocolPair) -> None:
    pair.connect()


def deciding(pair: ProtocolPair) -> None:
    pair.open()


def streaming(pair: ProtocolPair) -> None:
    pair.open()
    pair.accept()


def mid_file(pair: ProtocolPair) -> None:
    streaming(pair)
    pair.send_data(b"01234")


def all_data(pair: ProtocolPair) -> None:
    streaming(pair)
    pair.send_data(b"0123456789wxyz")


def all_checked(pair: ProtocolPair) -> None:
    all_data(pair)
    pair.send_checksums(CONTENTS)


def finishing(pair: ProtocolPair) -> None:
    all_checked(pair)
    assert pair.to_receiver(pair.sender.eof()) == [TransferFinished()]


def checksums(first: int, digests: list[str]) -> str:
    return encode(Checksums(first=first, digests=tuple(digests)))


MANIFEST = encode(Manifest(entries=tuple(ENTRIES)))

SENDER_VIOLATIONS: list[tuple[str, Callable[[ProtocolPair], None], str | bytes]] = [
    ("data before manifest", waiting, b"\x00abc"),
    ("data before accept", deciding, b"\x00abc"),
    ("data after eof", finishing, b"\x00a"),
    ("checksums before manifest", waiting, checksums(0, DIGESTS[:1])),
    ("checksums before accept", deciding, checksums(0, DIGESTS[:1])),
    ("checksums before any byte", streaming, checksums(0, DIGESTS[:1])),
    ("checksums before the file's last byte", mid_file, checksums(0, DIGESTS[:1])),
    ("checksums for more files than exist", all_data, checksums(0, DIGESTS + DIGESTS[:1])),
    ("checksums skipping a file", all_data, checksums(1, DIGESTS[1:])),
    ("checksums repeated", all_checked, checksums(0, DIGESTS[:1])),
    ("checksums after eof", finishing, checksums(3, DIGESTS[:1])),
    ("eof before manifest", waiting, encode(Eof())),
    ("eof before accept", deciding, encode(Eof())),
    ("eof before any byte", streaming, encode(Eof())),
    ("eof mid-file", mid_file, encode(Eof())),
    ("eof before checksums", all_data, encode(Eof())),
    ("eof twice", finishing, encode(Eof())),
    ("data beyond the total", streaming, b"\x00" + b"x" * 15),
    ("one byte after the total", all_data, b"\x00x"),
    ("unknown kind 0x01", streaming, b"\x01abc"),
    ("unknown kind 0xff", streaming, b"\xffabc"),
    ("empty binary message", streaming, b""),
    ("data message without payload", streaming, b"\x00"),
    ("second manifest while deciding", deciding, MANIFEST),
    ("second manifest while streaming", streaming, MANIFEST),
    ("second manifest after eof", finishing, MANIFEST),
    ("accept from the sender", streaming, encode(Accept())),
    ("done from the sender", streaming, encode(Done())),
    ("ready forwarded to the receiver", waiting, encode(Ready())),
    ("hello forwarded to the receiver", streaming, encode(Hello(CODE_HASH, "sender"))),
    ("not JSON", streaming, "eof"),
    ("unknown type", streaming, '{"type":"file_eof"}'),
]


@pytest.mark.parametrize(("setup", "message"), [v[1:] for v in SENDER_VIOLATIONS],
                         ids=[v[0] for v in SENDER_VIOLATIONS])
def test_receiver_refuses_out_of_order_messages(
    setup: Callable[[ProtocolPair], None], message: str | bytes
) -> None:
    """A message the receiver's state does not allow is a protocol error and fails it."""
    pair = ProtocolPair(ENTRIES)
    setup(pair)
    with pytest.raises(RemoteProtocolError):
        pair.receiver.receive(message)
    assert pair.receiver.state is ReceiverState.FAILED


def test_receiver_refuses_messages_before_its_hello() -> None:
    """A receiver that has not said hello expects nothing yet."""
    receiver = Receiver(CODE_HASH)
    with pytest.raises(RemoteProtocolError):
        receiver.receive(MANIFEST)
    assert receiver.state is ReceiverState.FAILED


def test_failed_receiver_gives_no_more_events() -> None:
    """After a violation, even messages that would have been valid produce no events."""
    pair = ProtocolPair(ENTRIES)
    mid_file(pair)
    with pytest.raises(RemoteProtocolError):
        pair.receiver.receive(encode(Eof()))
    for message in (b"\x00" + b"56789wxyz", checksums(0, DIGESTS), encode(Eof())):
        with pytest.raises(P2PCopyError):
            pair.receiver.receive(message)
        assert pair.receiver.state is ReceiverState.FAILED


# --- the receiver (or relay) breaks the protocol (the sender detects it) ----------------


def sender_started(pair: ProtocolPair) -> None:
    pair.sender.hello()


def sender_ready(pair: ProtocolPair) -> None:
    pair.connect()


def sender_waiting_accept(pair: ProtocolPair) -> None:
    pair.connect()
    pair.sender.manifest()


def sender_waiting_done(pair: ProtocolPair) -> None:
    all_checked(pair)
    pair.sender.eof()


def sender_done(pair: ProtocolPair) -> None:
    pair.transfer(CONTENTS)


RECEIVER_VIOLATIONS: list[tuple[str, Callable[[ProtocolPair], None], str | bytes]] = [
    ("ready before hello", lambda pair: None, encode(Ready())),
    ("accept before ready", sender_started, encode(Accept())),
    ("done before ready", sender_started, encode(Done())),
    ("second ready", sender_ready, encode(Ready())),
    ("accept before the manifest", sender_ready, encode(Accept())),
    ("done before accept", sender_waiting_accept, encode(Done())),
    ("ready instead of accept", sender_waiting_accept, encode(Ready())),
    ("accept twice", streaming, encode(Accept())),
    ("done before eof", streaming, encode(Done())),
    ("done mid-stream", mid_file, encode(Done())),
    ("manifest from the receiver", streaming, MANIFEST),
    ("checksums from the receiver", streaming, checksums(0, DIGESTS[:1])),
    ("eof from the receiver", streaming, encode(Eof())),
    ("hello from the receiver", streaming, encode(Hello(CODE_HASH, "receiver"))),
    ("binary from the receiver", streaming, b"\x00ab"),
    ("binary while waiting for ready", sender_started, b'{"type":"ready"}'),
    ("accept after eof", sender_waiting_done, encode(Accept())),
    ("done twice", sender_done, encode(Done())),
    ("not JSON", sender_waiting_accept, "accept"),
    ("unknown type", sender_waiting_accept, '{"type":"accepted"}'),
]


@pytest.mark.parametrize(("setup", "message"), [v[1:] for v in RECEIVER_VIOLATIONS],
                         ids=[v[0] for v in RECEIVER_VIOLATIONS])
def test_sender_refuses_out_of_order_messages(
    setup: Callable[[ProtocolPair], None], message: str | bytes
) -> None:
    """A message the sender's state does not allow is a protocol error and fails it."""
    pair = ProtocolPair(ENTRIES)
    setup(pair)
    with pytest.raises(RemoteProtocolError):
        pair.sender.receive(message)
    assert pair.sender.state is SenderState.FAILED


def test_sender_returns_what_it_received() -> None:
    """Sender.receive hands back the event of each allowed step, as Receiver.receive does."""
    pair = ProtocolPair(ENTRIES)
    pair.sender.hello()
    assert pair.sender.receive(encode(Waiting())) == [RelayWaiting()]
    assert pair.sender.receive(encode(Ready())) == [ReceiverJoined()]
    pair.sender.manifest()
    assert pair.sender.receive(encode(Accept())) == [AcceptReceived(SHA256)]


# --- local misuse -----------------------------------------------------------------------


def frame(sender: Sender, n: int) -> memoryview:
    return sender.frame_data(bytearray(1 + n), n)


Setup = Callable[[ProtocolPair], None]
LOCAL_MISUSE: list[tuple[str, Setup, Callable[[ProtocolPair], object]]] = [
    ("sender hello twice", sender_started, lambda p: p.sender.hello()),
    ("manifest before ready", sender_started, lambda p: p.sender.manifest()),
    ("manifest twice", sender_waiting_accept, lambda p: p.sender.manifest()),
    ("frame_data before ready", sender_started, lambda p: frame(p.sender, 1)),
    ("frame_data before accept", sender_waiting_accept, lambda p: frame(p.sender, 1)),
    ("frame_data of nothing", streaming, lambda p: frame(p.sender, 0)),
    ("more data than announced", streaming, lambda p: frame(p.sender, 15)),
    ("more data than is left", mid_file, lambda p: frame(p.sender, 10)),
    ("frame_data after eof", sender_waiting_done, lambda p: frame(p.sender, 1)),
    ("frame_data past the buffer", streaming, lambda p: p.sender.frame_data(bytearray(4), 5)),
    ("checksums before accept", sender_waiting_accept, lambda p: p.sender.checksums(DIGESTS)),
    ("checksums of no file", streaming, lambda p: p.sender.checksums([])),
    ("checksums before the bytes", mid_file, lambda p: p.sender.checksums(DIGESTS[:1])),
    ("checksums for too many files", all_data, lambda p: p.sender.checksums(DIGESTS * 2)),
    ("eof before all data", mid_file, lambda p: p.sender.eof()),
    ("eof before all checksums", all_data, lambda p: p.sender.eof()),
    ("eof twice", sender_waiting_done, lambda p: p.sender.eof()),
    ("receiver hello twice", waiting, lambda p: p.receiver.hello()),
    ("accept before the manifest", waiting, lambda p: p.receiver.accept()),
    ("accept twice", streaming, lambda p: p.receiver.accept()),
    ("done before eof", all_checked, lambda p: p.receiver.done()),
    ("done twice", sender_done, lambda p: p.receiver.done()),
]


@pytest.mark.parametrize(("setup", "misuse"), [v[1:] for v in LOCAL_MISUSE],
                         ids=[v[0] for v in LOCAL_MISUSE])
def test_local_misuse_raises_local_protocol_error(
    setup: Callable[[ProtocolPair], None], misuse: Callable[[ProtocolPair], object]
) -> None:
    """Asking a machine to send what the protocol forbids is refused as our own bug."""
    pair = ProtocolPair(ENTRIES)
    setup(pair)
    with pytest.raises(LocalProtocolError):
        misuse(pair)


def test_refused_frame_leaves_the_stream_intact() -> None:
    """A refused oversized frame does not advance the sender; the transfer still completes."""
    pair = ProtocolPair(ENTRIES)
    mid_file(pair)
    with pytest.raises(LocalProtocolError):
        frame(pair.sender, 10)
    assert pair.sender.bytes_sent == 5
    pair.send_data(b"56789wxyz")
    pair.send_checksums(CONTENTS)
    assert pair.finish() == [TransferFinished()]
    assert reassemble(pair.files, pair.events) == CONTENTS


def test_frame_data_writes_the_header_in_place() -> None:
    """frame_data puts the kind byte in the caller's buffer and returns a view of it."""
    pair = ProtocolPair(ENTRIES)
    streaming(pair)
    buffer = bytearray(b"?0123" + b"spare")
    view = pair.sender.frame_data(buffer, 4)
    assert view.obj is buffer and bytes(view) == b"\x000123"


# --- error messages from the peer -------------------------------------------------------

# (``usage`` is left out: whether a peer's usage error is ours or "peer gone" is being decided.)
WIRE_CODES: list[tuple[str, type[P2PCopyError]]] = [
    ("internal", P2PCopyError),
    ("timeout", TransferTimeoutError),
    ("peer_gone", PeerGoneError),
    ("protocol", RemoteProtocolError),
    ("integrity", IntegrityError),
    ("unsafe_path", UnsafePathError),
    ("exists", DestinationExistsError),
    ("disk_full", DiskFullError),
    ("incompatible", IncompatiblePeerError),
    ("cancelled", PeerGoneError),  # the peer's Ctrl-C means, for us, the peer is gone
    ("quantum_flux", P2PCopyError),  # unknown: still a failure
    ("", P2PCopyError),
]


@pytest.mark.parametrize(("code", "cls"), WIRE_CODES, ids=[c or "empty" for c, _ in WIRE_CODES])
@pytest.mark.parametrize("setup", [waiting, deciding, streaming, mid_file, finishing])
def test_receiver_raises_the_class_of_the_senders_error(
    code: str, cls: type[P2PCopyError], setup: Callable[[ProtocolPair], None]
) -> None:
    """An error from the sender, in any state, raises the class its wire code names."""
    pair = ProtocolPair(ENTRIES)
    setup(pair)
    with pytest.raises(P2PCopyError) as info:
        pair.to_receiver(encode(ErrorMessage(code, "it broke")))
    assert type(info.value) is cls
    assert info.value.from_peer
    assert "it broke" in str(info.value)
    assert pair.receiver.state is ReceiverState.FAILED


@pytest.mark.parametrize(("code", "cls"), WIRE_CODES, ids=[c or "empty" for c, _ in WIRE_CODES])
@pytest.mark.parametrize("setup", [sender_waiting_accept, streaming, sender_waiting_done])
def test_sender_raises_the_class_of_the_receivers_error(
    code: str, cls: type[P2PCopyError], setup: Callable[[ProtocolPair], None]
) -> None:
    """An error from the receiver, in any state, raises the class its wire code names."""
    pair = ProtocolPair(ENTRIES)
    setup(pair)
    with pytest.raises(P2PCopyError) as info:
        pair.to_sender(encode(ErrorMessage(code, "no room")))
    assert type(info.value) is cls
    assert info.value.from_peer
    assert pair.sender.state is SenderState.FAILED


@pytest.mark.parametrize(
    "exc",
    [IntegrityError("bad"), DiskFullError("full"), DestinationExistsError("there"),
     P2PCopyError("x")],
    ids=lambda e: type(e).__name__,
)
def test_error_round_trip(exc: P2PCopyError) -> None:
    """What one machine's error() sends, the other raises as the same class; both fail."""
    pair = ProtocolPair(ENTRIES)
    mid_file(pair)
    with pytest.raises(type(exc)) as info:
        pair.to_receiver(pair.sender.error(exc))
    assert type(info.value) is type(exc) and str(exc) in str(info.value)
    assert pair.sender.state is SenderState.FAILED
    assert pair.receiver.state is ReceiverState.FAILED

    pair = ProtocolPair(ENTRIES)
    deciding(pair)
    with pytest.raises(type(exc)):
        pair.to_sender(pair.receiver.error(exc))
    assert pair.sender.state is SenderState.FAILED
    assert pair.receiver.state is ReceiverState.FAILED


def test_local_errors_are_not_marked_as_from_peer() -> None:
    """Only errors reported by the peer carry from_peer, so ours are still sent to it."""
    pair = ProtocolPair(ENTRIES)
    mid_file(pair)
    with pytest.raises(RemoteProtocolError) as info:
        pair.to_receiver(encode(Eof()))
    assert not info.value.from_peer


def test_peer_error_text_is_escaped() -> None:
    """A peer's error text cannot put control characters on our terminal."""
    pair = ProtocolPair(ENTRIES)
    streaming(pair)
    with pytest.raises(IntegrityError) as info:
        pair.to_receiver(encode(ErrorMessage("integrity", "\x1b[2J\x1b]0;owned\x07gone\r\n")))
    assert not CONTROL.search(str(info.value))
    assert "gone" in str(info.value)


def test_malformed_error_message_is_a_protocol_error() -> None:
    """An error whose code is not a string is itself a violation."""
    pair = ProtocolPair(ENTRIES)
    streaming(pair)
    with pytest.raises(RemoteProtocolError):
        pair.to_receiver('{"type":"error","code":9,"message":"x"}')
    assert pair.receiver.state is ReceiverState.FAILED


# --- property tests ---------------------------------------------------------------------

fuzz = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@fuzz
@given(
    st.lists(st.binary(max_size=40), max_size=8),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=5),
    st.booleans(),
)
def test_any_files_any_cuts_arrive_intact(
    blobs: list[bytes], cuts: list[int], checksums_at_end: bool
) -> None:
    """For any file sizes and message cuts, every byte and every digest arrives in place."""
    contents = {f"f{i}": blob for i, blob in enumerate(blobs)}
    entries = entries_for(contents)
    events = run_transfer(entries, contents, chunk_size=cuts, checksums_at_end=checksums_at_end)
    assert reassemble(entries, events) == contents
    assert completed(events) == [(i, sha256_hex(b)) for i, b in enumerate(blobs)]


FUZZ_SIZES = [3, 0, 5]
FUZZ_ENTRIES: list[Entry] = [
    FileEntry("x", 3), FileEntry("y", 0), DirEntry("d"), FileEntry("d/z", 5),
]
FUZZ_DIGESTS = [sha256_hex(b"abc"), EMPTY_SHA256, sha256_hex(b"defgh")]
_fuzz_manifest = encode(Manifest(entries=tuple(FUZZ_ENTRIES)))

plausible_messages = st.one_of(
    st.just(_fuzz_manifest),
    st.builds(lambda n, more: encode(Manifest(entries=tuple(FUZZ_ENTRIES[:n]), more=more)),
              st.integers(0, len(FUZZ_ENTRIES)), st.booleans()),
    st.builds(lambda first, n: checksums(first, (FUZZ_DIGESTS * 2)[first % 3:first % 3 + n]),
              st.integers(0, 4), st.integers(1, 3)),
    st.sampled_from([encode(m) for m in (Eof(), Accept(), Done(), Ready(),
                                         ErrorMessage("integrity", "x"),
                                         ErrorMessage("zzz", "\x1b"),
                                         Hello(CODE_HASH, "sender"))]),
    st.binary(min_size=1, max_size=9).map(lambda b: b"\x00" + b),
)
arbitrary_messages = st.one_of(
    plausible_messages,
    plausible_messages,
    st.binary(max_size=12),
    st.text(max_size=30),
    st.text(max_size=30).map(lambda t: t.encode()),
)


def valid_script(cuts: list[int]) -> list[str | bytes]:
    """What a correct sender sends to FUZZ_ENTRIES' receiver, data cut as ``cuts`` cycles."""
    stream, ends = b"abcdefgh", [3, 3, 8]
    script: list[str | bytes] = [_fuzz_manifest]
    position = digested = 0
    sizes = itertools.cycle(cuts)
    while True:
        complete = bisect.bisect_right(ends, position)
        if complete > digested:
            script.append(checksums(digested, FUZZ_DIGESTS[digested:complete]))
            digested = complete
        if position == len(stream):
            break
        size = next(sizes)
        script.append(b"\x00" + stream[position:position + size])
        position = min(position + size, len(stream))
    return [*script, encode(Eof())]


mutations = st.lists(
    st.tuples(st.sampled_from(["drop", "insert", "replace", "swap"]),
              st.integers(min_value=0, max_value=30), arbitrary_messages),
    max_size=3,
)


def check_receiver(messages: list[str | bytes]) -> bool:
    """Feed ``messages``; assert the events are consistent; True if the transfer finished.

    Consistent: slices are contiguous and within their file, digests come in order and
    only for complete files, a failure leaves FAILED, and a failed receiver never produces
    events again. Only P2PCopyError may escape from receive().
    """
    receiver = Receiver(CODE_HASH)
    receiver.hello()
    sizes: list[int] = []
    received: list[int] = []
    digests = 0
    failed = finished = False
    for message in messages:
        try:
            events = receiver.receive(message)
        except P2PCopyError:
            assert receiver.state is ReceiverState.FAILED
            failed = True
            continue
        if failed:
            assert events == [], "a failed receiver produced events"
        for event in events:
            if isinstance(event, ManifestReceived):
                # Parts may have been combined: the files are whatever the parts listed.
                sizes = [f.size for f in event.files]
                received = [0] * len(sizes)
                receiver.accept()
            elif isinstance(event, FileData):
                assert event.offset == received[event.file]
                assert 0 < len(event.data) <= sizes[event.file] - event.offset
                received[event.file] += len(event.data)
            elif isinstance(event, FileCompleted):
                assert event.file == digests
                assert received[event.file] == sizes[event.file]
                digests += 1
            elif not isinstance(event, SenderJoined):
                assert isinstance(event, TransferFinished)
                assert received == sizes and digests == len(sizes)
                receiver.done()
                finished = True
        assert receiver.bytes_received == sum(received)
    return finished


@fuzz
@given(st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=4), mutations)
def test_receiver_survives_a_mutated_transfer(
    cuts: list[int], changes: list[tuple[str, int, str | bytes]]
) -> None:
    """A correct transfer with messages dropped, added, replaced or swapped stays consistent.

    Unchanged, the transfer must finish.
    """
    script = valid_script(cuts)
    for op, index, message in changes:
        i = index % (len(script) + 1)
        if op == "insert":
            script.insert(i, message)
        elif script and op == "drop":
            del script[i % len(script)]
        elif script and op == "replace":
            script[i % len(script)] = message
        elif len(script) > 1 and op == "swap":
            j = i % (len(script) - 1)
            script[j], script[j + 1] = script[j + 1], script[j]
    finished = check_receiver(script)
    if not changes:
        assert finished


@fuzz
@given(st.booleans(), st.lists(arbitrary_messages, max_size=12))
def test_receiver_survives_any_message_sequence(
    start_with_manifest: bool, messages: list[str | bytes]
) -> None:
    """Any sequence of messages yields consistent events or a P2PCopyError, nothing else."""
    start: list[str | bytes] = [_fuzz_manifest] if start_with_manifest else []
    check_receiver(start + messages)


def test_relay_waiting_is_not_the_sender_speaking() -> None:
    """The relay's ``waiting`` keeps the receiver in its join wait; the first sender message
    ends it (api.py then switches to the idle timeout)."""
    receiver = Receiver("ab" * 32)
    receiver.hello()
    assert receiver.receive('{"type":"waiting"}') == []
    events = receiver.receive('{"type":"manifest","version":1,"entries":[]}')
    assert events[0] == SenderJoined() and isinstance(events[1], ManifestReceived)


# --- compressed data messages (DATA_ZSTD, docs/protocol.md §6.6.1) ---------------------


class CompressingPair(ProtocolPair):
    """A pair whose sender asks for compression on every data message."""

    def send_data(self, payload: bytes) -> list[ReceiverEvent]:
        buffer = bytearray(1 + len(payload))
        buffer[1:] = payload
        return self.to_receiver(self.sender.frame_data(buffer, len(payload), compress=True))


def data_kinds(pair: ProtocolPair) -> list[int]:
    return [m[0] for m in pair.to_receiver_log if isinstance(m, bytes)]


def zstd_message(data: bytes, **options: object) -> bytes:
    return bytes([DATA_ZSTD]) + zstandard.ZstdCompressor(level=1, **options).compress(data)


MIXED_CONTENTS = {
    "log.csv": csv_text(300_000, 1),
    "photo.jpg": random_bytes(200_000, 3),
    "empty": b"",
    "short.csv": csv_text(10_000, 2),
    "tiny": b"x",
}


@pytest.mark.parametrize("chunk_size", [64 * 1024, [1000, 70_000, 7], 100_000],
                         ids=["64 KiB", "mixed", "100 kB"])
def test_compressed_transfer_delivers_plaintext(chunk_size: int | list[int]) -> None:
    """Compressible chunks go as zstd, random ones raw; FileData, offsets and digests are
    those of the plaintext, and every file verifies."""
    pair = CompressingPair(entries_for(MIXED_CONTENTS))
    events = pair.transfer(MIXED_CONTENTS, chunk_size=chunk_size)
    assert json.loads(pair.to_sender_log[1]) == {"type": "accept", "compression": ["zstd"]}
    assert pair.sender.peer_accepts_zstd
    assert reassemble(pair.files, events) == MIXED_CONTENTS  # also checks every offset
    digests = [sha256_hex(d) for d in MIXED_CONTENTS.values()]
    assert completed(events) == list(enumerate(digests))
    assert events[-1] == TransferFinished() and pair.sender.state is SenderState.DONE
    total = sum(map(len, MIXED_CONTENTS.values()))
    assert pair.sender.bytes_sent == pair.receiver.bytes_received == total
    kinds = data_kinds(pair)
    assert set(kinds) == {DATA_RAW, DATA_ZSTD}
    sent, got = pair.sender.compression_stats, pair.receiver.compression_stats
    assert sent is not None and got is not None
    assert sent.data_bytes == total and sent.compressed == got.compressed == kinds.count(DATA_ZSTD)
    wire = sum(len(m) - 1 for m in pair.to_receiver_log if isinstance(m, bytes))
    assert sent.wire_bytes == wire < total * 0.75
    assert got.data_bytes < total


def test_random_data_falls_back_to_raw() -> None:
    """Chunks that do not shrink go raw, in place, even with compress=True."""
    contents = {"a.bin": random_bytes(100_000, 5), "b.bin": random_bytes(50_000, 6)}
    pair = CompressingPair(entries_for(contents))
    events = pair.transfer(contents, chunk_size=8192)
    assert reassemble(pair.files, events) == contents
    assert set(data_kinds(pair)) == {DATA_RAW}
    stats = pair.sender.compression_stats
    assert stats is not None and stats.compressed == 0 and stats.incompressible >= 1
    assert stats.skipped > stats.incompressible  # the back-off spares most attempts
    assert pair.receiver.compression_stats is None


def test_compressed_stream_entry() -> None:
    """A stream after a file: compressed chunks fill it; its digest fixes its size."""
    before, stream = csv_text(50_000, 4), csv_text(123_456, 5)
    pair = CompressingPair([FileEntry("head.csv", len(before)), StreamEntry("stdin")])
    pair.open()
    pair.accept()
    data = before + stream
    for start in range(0, len(data), 32_768):
        pair.send_data(data[start:start + 32_768])
    for message in pair.sender.checksums([sha256_hex(before), sha256_hex(stream)]):
        pair.to_receiver(message)
    assert pair.finish() == [TransferFinished()]
    got = [b"", b""]
    for file, offset, chunk in data_events(pair.events):
        assert offset == len(got[file])
        got[file] += chunk
    assert got == [before, stream]
    assert set(data_kinds(pair)) == {DATA_ZSTD}
    assert completed(pair.events) == [(0, sha256_hex(before)), (1, sha256_hex(stream))]


def test_compressed_data_after_resume_counts_from_the_offsets() -> None:
    """accept offers prefixes and compression at once; positions are plaintext offsets."""
    from p2p_copy.protocol.resume import Offer
    from p2p_copy.protocol.transfer import ResumeAgreed

    block = 1 << 20  # offers are whole MiB (or whole files)
    contents = {"a.csv": csv_text(block + 20_000, 7), "b.csv": csv_text(5_000, 8)}
    pair = CompressingPair(entries_for(contents))
    pair.open()
    offer = Offer(0, block, sha256_hex(contents["a.csv"][:block]))
    accept = pair.receiver.accept([offer])
    assert json.loads(accept)["compression"] == ["zstd"]
    pair.to_sender(accept)
    assert pair.sender.peer_accepts_zstd
    agreed, reply = pair.to_receiver(pair.sender.prefix_digests([offer]))
    assert isinstance(reply, Send)
    pair.to_sender(reply.message)
    pair.send_data(contents["a.csv"][block:] + contents["b.csv"])
    assert data_kinds(pair) == [DATA_ZSTD]
    assert agreed == pair.events[1] == ResumeAgreed({0: block})
    assert data_events(pair.events) == [(0, block, contents["a.csv"][block:]),
                                        (1, 0, contents["b.csv"])]
    for message in pair.sender.checksums([sha256_hex(d) for d in contents.values()]):
        pair.to_receiver(message)
    assert pair.finish() == [TransferFinished()]


def test_the_specs_zstd_example_decodes() -> None:
    """docs/protocol.md §6.6.1: the 35-byte message carries the 144 bytes it says."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text("utf-8")
    section = doc[doc.index("#### 6.6.1 "):doc.index("### 6.7 ")]
    message = bytes.fromhex(section.split("```\n")[1])
    assert len(message) == 35
    plain = b"Hello, world!\np2p\n" * 8
    pair = ProtocolPair([FileEntry("x", len(plain))])
    pair.open()
    pair.accept()
    assert data_events(pair.to_receiver(message)) == [(0, 0, plain)]


@pytest.mark.parametrize("accept", [
    '{"type":"accept"}',
    '{"type":"accept","compression":[]}',
    '{"type":"accept","compression":["lz4","ZSTD"]}',
], ids=["old accept", "empty list", "unknown names"])
def test_sender_never_compresses_unless_zstd_was_listed(accept: str) -> None:
    """A receiver from before compression (or one without zstd) gets raw data only."""
    contents = {"a.csv": csv_text(100_000)}
    pair = CompressingPair(entries_for(contents))
    pair.open()
    pair.receiver.accept()
    pair.to_sender(accept)
    assert not pair.sender.peer_accepts_zstd
    buffer = bytearray(1) + contents["a.csv"]
    message = pair.sender.frame_data(buffer, len(contents["a.csv"]), compress=True)
    assert isinstance(message, memoryview) and message.obj is buffer and message[0] == DATA_RAW
    assert pair.sender.compression_stats is None


def test_receiver_without_compression_refuses_zstd() -> None:
    """Receiver(compression=False) does not advertise zstd, and kind 0x01 is a violation."""
    contents = {"a.csv": csv_text(10_000)}
    pair = CompressingPair(entries_for(contents))
    pair.receiver = Receiver(CODE_HASH, compression=False)
    pair.open()
    pair.accept()
    assert pair.to_sender_log[-1] == '{"type":"accept"}'
    assert not pair.sender.peer_accepts_zstd
    pair.send_data(contents["a.csv"][:5000])  # raw, although asked to compress
    assert data_kinds(pair) == [DATA_RAW]
    with pytest.raises(RemoteProtocolError, match="did not offer compression"):
        pair.to_receiver(zstd_message(contents["a.csv"][5000:]))
    assert pair.receiver.state is ReceiverState.FAILED


def hand_made_frame(content_size: int) -> bytes:
    """A frame header declaring ``content_size`` (8 bytes), then one 1-byte RLE block."""
    header = struct.pack("<IBBQ", 0xFD2FB528, 0xC0, 7 << 3, content_size)
    return header + ((1 << 3) | 2 | 1).to_bytes(3, "little") + b"A"


HOSTILE_FRAMES = [
    ("declares 2 MiB", zstd_message(bytes(2 << 20)), "at most 1048576"),
    ("declares 2**60 bytes", bytes([DATA_ZSTD]) + hand_made_frame(2**60), "at most 1048576"),
    ("declares 1 byte, holds more",
     bytes([DATA_ZSTD]) + hand_made_frame(1)[:-4] + ((1000 << 3) | 2 | 1).to_bytes(3, "little")
     + b"A", "corrupt"),
    ("no content size", zstd_message(csv_text(5000), write_content_size=False), "declare"),
    ("empty content", zstd_message(b""), "empty"),
    ("truncated", zstd_message(csv_text(5000))[:-3], "corrupt"),
    ("trailing bytes", zstd_message(csv_text(5000)) + b"\x00", "corrupt"),
    ("two frames", zstd_message(b"abc" * 40) + zstd_message(b"abc" * 40)[1:], "corrupt"),
    ("skippable frame", bytes([DATA_ZSTD]) + struct.pack("<II", 0x184D2A50, 4) + b"abcd",
     "empty"),
    ("not a frame", bytes([DATA_ZSTD]) + b"not zstd at all", "not a zstd frame"),
    ("one byte", bytes([DATA_ZSTD]), "unknown format"),
]


@pytest.mark.parametrize(("message", "match"), [h[1:] for h in HOSTILE_FRAMES],
                         ids=[h[0] for h in HOSTILE_FRAMES])
def test_hostile_zstd_messages_are_protocol_errors(message: bytes, match: str) -> None:
    """Bombs, frames without a declared size and malformed frames: RemoteProtocolError."""
    pair = ProtocolPair([FileEntry("big", 3 << 20)])
    pair.open()
    pair.accept()
    with pytest.raises(RemoteProtocolError, match=match):
        pair.to_receiver(message)
    assert pair.receiver.state is ReceiverState.FAILED and pair.receiver.bytes_received == 0


def test_frame_beyond_the_manifest_is_refused_before_decompressing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The declared size is checked against the room the manifest leaves, from the header."""
    from p2p_copy.protocol.compression import ChunkDecompressor

    pair = ProtocolPair([FileEntry("a", 60), FileEntry("b", 40)])
    pair.open()
    pair.accept()
    pair.send_data(b"x" * 59)
    called = []
    monkeypatch.setattr(ChunkDecompressor, "decompress", lambda *a: called.append(a))
    with pytest.raises(RemoteProtocolError, match="more bytes than its manifest announced"):
        pair.to_receiver(zstd_message(b"y" * 42))  # 41 bytes are left
    assert not called and pair.receiver.bytes_received == 59


def test_compressed_stream_past_the_policy_limit_is_refused() -> None:
    """max_bytes applies to the plaintext a frame declares, as to raw bytes."""
    from p2p_copy.protocol.policy import ReceivePolicy

    receiver = Receiver(CODE_HASH, policy=ReceivePolicy(max_bytes=1000))
    receiver.hello()
    receiver.receive(encode(Manifest(entries=(StreamEntry("stdin"),))))
    receiver.accept()
    assert receiver.receive(zstd_message(b"z" * 1000))[0] == FileData(0, 0, memoryview(b"z" * 1000))
    with pytest.raises(PolicyError):
        receiver.receive(zstd_message(b"z" * 100))
