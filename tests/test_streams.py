"""Stream entries (unknown length) and object entries, without sockets: the wire format,
the state machines joined in memory, and the readers and sinks of p2p_copy.storage.streams."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2p_copy.errors import (
    IntegrityError,
    LocalProtocolError,
    PolicyError,
    RemoteProtocolError,
    UsageError,
)
from p2p_copy.protocol.messages import (
    DirEntry,
    FileEntry,
    Manifest,
    StreamEntry,
    encode,
    parse_message,
)
from p2p_copy.protocol.objects import encode_object
from p2p_copy.protocol.policy import ReceivePolicy
from p2p_copy.protocol.transfer import (
    FileCompleted,
    FileData,
    ManifestReceived,
    Receiver,
    ReceiverEvent,
    Sender,
    TransferFinished,
)
from p2p_copy.storage.destination import Destination
from p2p_copy.storage.streams import ChunkReader, ObjectSink, PipeReader, PipeSink
from tests.conftest import both_backends
from tests.protocol_pair import CODE_HASH, ProtocolPair, sha256_hex


def manifest(*entries: dict[str, object], more: bool = False) -> str:
    return json.dumps({"type": "manifest", "version": 1, "entries": list(entries),
                       "more": more})


def stream_bytes(events: list[ReceiverEvent], file: int) -> bytes:
    return b"".join(bytes(e.data) for e in events if isinstance(e, FileData) and e.file == file)


def send_stream(pair: ProtocolPair, before: dict[str, bytes], stream: bytes,
                chunk: int = 3) -> list[ReceiverEvent]:
    """Files ``before`` (in order), then ``stream``, in data messages of ``chunk`` bytes."""
    pair.open()
    pair.accept()
    data = b"".join(before.values()) + stream
    for start in range(0, len(data), chunk):
        pair.send_data(data[start:start + chunk])
    digests = [sha256_hex(d) for d in [*before.values(), stream]]
    for message in pair.sender.checksums(digests):
        pair.to_receiver(message)
    pair.finish()
    return pair.events


# --- the wire format ------------------------------------------------------------------------


def test_stream_and_meta_entries_round_trip_through_the_manifest() -> None:
    """A stream entry and an object's meta are encoded and parsed back unchanged."""
    entries = (
        FileEntry("array.npy", 10, meta={"kind": "bytes", "type": "bytes", "size": 10}),
        StreamEntry("stdin", mode=0o600, meta={"kind": "x"}),
    )
    text = encode(Manifest(entries))
    assert '"kind":"stream"' in text and '"meta":{"kind":"x"}' in text
    parsed = parse_message(text)
    assert isinstance(parsed, Manifest) and parsed.entries == entries


def test_plain_entries_carry_no_meta_field() -> None:
    """Files without an object keep the exact wire form of earlier versions."""
    assert encode(Manifest((FileEntry("a", 1),))) == (
        '{"type":"manifest","version":1,"entries":[{"path":"a","size":1,"mode":420}]}')


@pytest.mark.parametrize("text", [
    manifest({"path": "s", "kind": "stream"}, {"path": "a", "size": 1}),
    manifest({"path": "s", "kind": "stream"}, more=True),
])
def test_a_stream_must_end_the_manifest(text: str) -> None:
    """A stream entry followed by anything, in this part or a later one, is refused."""
    with pytest.raises(RemoteProtocolError, match="last entry"):
        parse_message(text)


@pytest.mark.parametrize("meta", [[1], "npy", 3])
def test_meta_must_be_an_object(meta: object) -> None:
    with pytest.raises(RemoteProtocolError, match="meta"):
        parse_message(manifest({"path": "a", "size": 1, "meta": meta}))


# --- the state machines -------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_files_then_a_stream_arrive_in_order(chunk: int) -> None:
    """The stream takes every byte after the files, whatever the message cuts."""
    before = {"a": b"hello", "empty": b"", "b": b"xy"}
    stream = b"the stream of unknown length"
    pair = ProtocolPair([*(FileEntry(p, len(d)) for p, d in before.items()),
                         StreamEntry("pipe")])
    events = send_stream(pair, before, stream, chunk)
    assert stream_bytes(events, 0) == b"hello" and stream_bytes(events, 2) == b"xy"
    assert stream_bytes(events, 3) == stream
    assert [(e.file, e.digest) for e in events if isinstance(e, FileCompleted)][-1] == (
        3, sha256_hex(stream))
    assert isinstance(events[-1], TransferFinished)
    assert pair.sender.bytes_sent == pair.receiver.bytes_received == 7 + len(stream)


def test_an_empty_stream_is_a_valid_transfer() -> None:
    pair = ProtocolPair([StreamEntry("pipe")])
    events = send_stream(pair, {}, b"")
    assert FileCompleted(0, sha256_hex(b"")) in events
    assert isinstance(events[-1], TransferFinished)


def test_manifest_received_numbers_the_stream_after_the_files() -> None:
    pair = ProtocolPair([DirEntry("d"), FileEntry("d/a", 2), StreamEntry("pipe")])
    received = pair.open()
    assert isinstance(received, ManifestReceived)
    assert [e.path for e in received.data] == ["d/a", "pipe"]
    assert received.total_bytes == 2


def test_data_after_the_streams_checksum_is_refused() -> None:
    """The checksum fixes the stream's size: a sender that keeps sending is caught."""
    pair = ProtocolPair([StreamEntry("pipe")])
    pair.open()
    pair.accept()
    pair.send_data(b"abc")
    pair.to_receiver(pair.sender.checksums([sha256_hex(b"abc")])[0])
    with pytest.raises(RemoteProtocolError, match="more bytes"):
        pair.to_receiver(b"\x00more")


def test_eof_while_the_stream_is_open_is_refused() -> None:
    pair = ProtocolPair([StreamEntry("pipe")])
    pair.open()
    pair.accept()
    pair.send_data(b"abc")
    with pytest.raises(RemoteProtocolError, match="ended the transfer early.*unknown length"):
        pair.to_receiver('{"type":"eof"}')


def test_the_streams_checksum_before_the_files_end_is_refused() -> None:
    """A stream cannot close while the file before it still misses bytes."""
    pair = ProtocolPair([FileEntry("a", 5), StreamEntry("pipe")])
    pair.open()
    pair.accept()
    pair.send_data(b"abc")
    with pytest.raises(RemoteProtocolError, match="not all sent"):
        pair.to_receiver(json.dumps({"type": "checksums", "first": 0,
                                     "sha256": [sha256_hex(b"abcde"), sha256_hex(b"")]}))


def test_a_file_that_lies_about_its_size_is_still_caught_before_a_stream() -> None:
    """A known-size file's bytes are counted exactly even when a stream follows it."""
    pair = ProtocolPair([FileEntry("a", 2), StreamEntry("pipe")])
    pair.open()
    pair.accept()
    pair.send_data(b"abcd")  # 2 for "a", 2 for the stream: legal
    with pytest.raises(RemoteProtocolError, match="not all sent|was next"):
        pair.to_receiver(json.dumps({"type": "checksums", "first": 1, "sha256": ["0" * 64]}))


def test_the_receivers_byte_limit_caps_a_stream() -> None:
    """A stream that grows past max_bytes is refused when it does, not at the manifest."""
    receiver = Receiver(CODE_HASH, policy=ReceivePolicy(max_bytes=10))
    receiver.hello()
    receiver.receive(manifest({"path": "pipe", "kind": "stream"}))
    receiver.accept()
    receiver.receive(b"\x00" + b"x" * 10)
    with pytest.raises(PolicyError, match="10 bytes"):
        receiver.receive(b"\x00y")


def test_max_files_counts_the_stream() -> None:
    receiver = Receiver(CODE_HASH, policy=ReceivePolicy(max_files=1))
    receiver.hello()
    with pytest.raises(PolicyError, match="max-files"):
        receiver.receive(manifest({"path": "a", "size": 1}, {"path": "pipe", "kind": "stream"}))


def test_the_sender_cannot_end_before_the_streams_checksum() -> None:
    pair = ProtocolPair([StreamEntry("pipe")])
    pair.open()
    pair.accept()
    pair.send_data(b"abc")
    with pytest.raises(LocalProtocolError, match="eof before"):
        pair.sender.eof()


def test_only_the_last_data_entry_may_be_a_stream() -> None:
    with pytest.raises(LocalProtocolError):
        Sender(CODE_HASH, [StreamEntry("s"), FileEntry("a", 1)])


# --- readers --------------------------------------------------------------------------------


def read_all(reader: PipeReader | ChunkReader, size: int = 7) -> tuple[bytes, list[str]]:
    out, digests = bytearray(), []
    while not reader.exhausted:
        buffer = bytearray(1 + size)
        length, finished = reader.read_into(buffer)
        out += buffer[1:1 + length]
        digests += finished
    return bytes(out), digests


def test_pipe_reader_reads_to_the_end_and_hashes() -> None:
    data = bytes(range(256)) * 3
    assert read_all(PipeReader(io.BufferedReader(io.BytesIO(data)))) == (data, [sha256_hex(data)])


def test_chunk_reader_regroups_chunks_into_messages() -> None:
    """Chunks of any size (empty ones too) fill the message buffers exactly."""
    data = b"0123456789" * 5
    chunks = [memoryview(data[:3]), memoryview(b""), memoryview(data[3:40]), memoryview(data[40:])]
    assert read_all(ChunkReader(iter(chunks), len(data))) == (data, [sha256_hex(data)])


@pytest.mark.parametrize("actual", [b"short", b"longer than announced"])
def test_chunk_reader_refuses_an_object_that_changed_size(actual: bytes) -> None:
    with pytest.raises(UsageError, match="changed size"):
        read_all(ChunkReader(iter([memoryview(actual)]), 10))


# --- sinks ----------------------------------------------------------------------------------


def test_pipe_sink_writes_and_verifies() -> None:
    out = io.BytesIO()
    sink = PipeSink([StreamEntry("pipe")], out)
    data = memoryview(b"some bytes")
    done = sink.apply([FileData(0, 0, data), FileCompleted(0, sha256_hex(b"some bytes"))])
    assert out.getvalue() == b"some bytes" and done[0].size == 10


def test_pipe_sink_reports_a_damaged_stream_after_writing_it() -> None:
    """Written bytes cannot be unwritten: the mismatch is an IntegrityError that says so."""
    out = io.BytesIO()
    sink = PipeSink([FileEntry("a", 3)], out)
    with pytest.raises(IntegrityError, match="cannot be taken back"):
        sink.apply([FileData(0, 0, memoryview(b"abc")), FileCompleted(0, "0" * 64)])
    assert out.getvalue() == b"abc"


def test_pipe_sink_takes_a_single_file_only() -> None:
    with pytest.raises(PolicyError, match="exactly one"):
        PipeSink([FileEntry("a", 1), FileEntry("b", 1)], io.BytesIO())
    with pytest.raises(PolicyError, match="exactly one"):
        PipeSink([DirEntry("d"), FileEntry("d/a", 1)], io.BytesIO())


def test_pipe_sink_reports_a_closed_reader() -> None:
    class Closed(io.RawIOBase):
        def write(self, data: object) -> int:
            raise BrokenPipeError

    sink = PipeSink([StreamEntry("pipe")], Closed())  # type: ignore[arg-type]
    with pytest.raises(Exception, match="Standard output was closed"):
        sink.apply([FileData(0, 0, memoryview(b"x"))])


def object_events(data: bytes, cut: int = 5) -> Iterator[FileData | FileCompleted]:
    for start in range(0, len(data), cut):
        yield FileData(0, start, memoryview(data[start:start + cut]))
    yield FileCompleted(0, sha256_hex(data))


def test_object_sink_rebuilds_an_object_after_its_checksum() -> None:
    encoded = encode_object({"a": [1, 2]})
    data = b"".join(encoded.chunks())
    sink = ObjectSink([FileEntry("object.json", encoded.size, meta=encoded.meta)], None)
    sink.prepare()
    sink.apply(object_events(data))
    sink.finish()
    assert sink.value == {"a": [1, 2]} and sink.kind == "json"


def test_object_sink_refuses_an_entry_and_meta_that_disagree() -> None:
    """The size in the entry (what the stream carries) must be the object's size."""
    encoded = encode_object("text")
    sink = ObjectSink([FileEntry("t", encoded.size + 1, meta=encoded.meta)], None)
    with pytest.raises(RemoteProtocolError, match="malformed"):
        sink.prepare()


def test_object_sink_checks_the_sha256_before_decoding() -> None:
    encoded = encode_object(b"payload")
    sink = ObjectSink([FileEntry("o", encoded.size, meta=encoded.meta)], None)
    sink.prepare()
    with pytest.raises(IntegrityError):
        sink.apply([FileData(0, 0, memoryview(b"payload")), FileCompleted(0, "1" * 64)])


def test_object_sink_caps_a_plain_stream() -> None:
    sink = ObjectSink([StreamEntry("pipe")], 4)
    sink.prepare()
    with pytest.raises(PolicyError, match="4 bytes"):
        sink.apply([FileData(0, 0, memoryview(b"12345"))])


@both_backends
def test_destination_writes_a_stream_to_disk(tmp_path: Path) -> None:
    """A stream saved to disk gets its final name only after its checksum, with its size."""
    destination = Destination(tmp_path, [FileEntry("a", 1), StreamEntry("pipe")])
    destination.prepare()
    results = destination.apply([
        FileData(0, 0, memoryview(b"a")), FileCompleted(0, sha256_hex(b"a")),
        FileData(1, 0, memoryview(b"stream")),
    ])
    assert [r.path for r in results] == ["a"] and not (tmp_path / "pipe").exists()
    results = destination.apply([FileCompleted(1, sha256_hex(b"stream"))])
    destination.finish()
    assert results[0].size == 6 and (tmp_path / "pipe").read_bytes() == b"stream"


def test_write_all_writes_everything_to_a_raw_file_that_takes_part() -> None:
    """A raw stdout (python -u, PYTHONUNBUFFERED) may take part of a write, or nothing;
    write_all() goes on until every byte is out (the CLI's printed text lost its tail)."""
    from p2p_copy.storage.streams import write_all

    class Raw(io.RawIOBase):
        def __init__(self) -> None:
            self.got = bytearray()
            self.calls = 0

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int | None:
            self.calls += 1
            if self.calls == 2:
                return None  # full, as a non-blocking pipe
            part = bytes(b[:1000])
            self.got += part
            return len(part)

    raw = Raw()
    data = bytes(range(256)) * 40
    write_all(raw, data)  # type: ignore[arg-type]
    assert bytes(raw.got) == data
