"""Resume without sockets: chained prefix hashes, offers on the wire, stream offsets, sidecars."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from p2p_copy.errors import (
    DestinationExistsError,
    LocalProtocolError,
    RemoteProtocolError,
    UnsafePathError,
)
from p2p_copy.protocol.digests import SHA256
from p2p_copy.protocol.messages import (
    Accept,
    DirEntry,
    FileEntry,
    PrefixDigests,
    Resume,
    StreamEntry,
    encode,
    parse_message,
)
from p2p_copy.protocol.resume import (
    BLOCK,
    CHAIN_WINDOW,
    ChainHasher,
    Offer,
    Prefix,
    Sidecar,
    check_offers,
)
from p2p_copy.protocol.transfer import (
    AcceptReceived,
    FileCompleted,
    FileData,
    ManifestReceived,
    Receiver,
    ReceiverState,
    ResumeAgreed,
    Send,
    Sender,
    SenderJoined,
    SenderState,
)
from p2p_copy.storage.destination import LIST_FROM, SIDECAR_SUFFIX, TEMP_SUFFIX, Destination
from p2p_copy.storage.sources import SourceChains

# Every Destination test here runs with each storage backend (tests/conftest.py); the
# protocol-only ones are cheap enough not to be told apart.
pytestmark = pytest.mark.both_backends

ROOM = "ab" * 32


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_chain_gives_the_digest_of_every_recent_block_prefix() -> None:
    """The chain value at block k is SHA-256(file[:k*BLOCK]); the end is always there."""
    data = os.urandom(3 * BLOCK + 123)
    chain = ChainHasher()
    for i in range(0, len(data), 100_000):
        chain.update(data[i : i + 100_000])
    for k in range(4):
        assert chain.digest_at(k * BLOCK) == sha(data[: k * BLOCK])
    assert chain.digest_at(len(data)) == sha(data) == chain.hexdigest()
    assert chain.digest_at(BLOCK + 1) is None
    assert chain.last_block() == 3 * BLOCK


def test_chain_keeps_a_bounded_window() -> None:
    """Only the last CHAIN_WINDOW block states are kept: memory stays bounded."""
    chain = ChainHasher()
    block = b"x" * BLOCK
    for _ in range(CHAIN_WINDOW + 5):
        chain.update(block)
    assert chain.digest_at(BLOCK) is None
    assert chain.digest_at((CHAIN_WINDOW + 5) * BLOCK) == chain.hexdigest()


def test_chain_continues_from_a_resumed_state() -> None:
    """A hasher seeded with a prefix's state ends at the whole file's SHA-256."""
    data = os.urandom(2 * BLOCK + 7)
    first = ChainHasher()
    first.update(data[:BLOCK])
    state = first.state_at(BLOCK)
    assert state is not None
    resumed = ChainHasher(state, BLOCK)
    resumed.update(data[BLOCK:])
    assert resumed.hexdigest() == sha(data)
    assert resumed.digest_at(2 * BLOCK) == sha(data[: 2 * BLOCK])


@pytest.mark.parametrize("offers, problem", [
    ([Offer(5, BLOCK, "0" * 64)], "does not exist"),
    ([Offer(0, BLOCK, "0" * 64), Offer(0, BLOCK, "0" * 64)], "two resume offers"),
    ([Offer(1, BLOCK, "0" * 64)], "stream"),
    ([Offer(0, 1000, "0" * 64)], "multiple"),
    ([Offer(0, 4 * BLOCK, "0" * 64)], "multiple"),
])
def test_bad_offers_are_named(offers: list[Offer], problem: str) -> None:
    """Offers must name a file (not a stream) once, at a block multiple or its full size."""
    reason = check_offers(offers, [3 * BLOCK + 5, None])
    assert reason is not None and problem in reason


def test_good_offers_pass() -> None:
    """A block multiple and a full size (complete file) are valid offers."""
    assert check_offers([Offer(0, BLOCK, "0" * 64), Offer(1, 77, "1" * 64)],
                        [3 * BLOCK, 77]) is None


def test_accept_prefix_digests_and_resume_round_trip_on_the_wire() -> None:
    """accept carries [file, offset] pairs (``held``, no digest); prefix_digests carries the
    sender's [file, offset, digest] triples; resume carries [file, offset] pairs."""
    accept = Accept(held=(Prefix(2, BLOCK),))
    text = encode(accept)
    assert json.loads(text) == {"type": "accept", "held": [[2, BLOCK]]}
    assert parse_message(text) == accept
    assert encode(Accept()) == '{"type":"accept"}'
    shown = PrefixDigests(files=(Offer(2, BLOCK, "a" * 64),))
    assert json.loads(encode(shown)) == {"type": "prefix_digests",
                                         "files": [[2, BLOCK, "a" * 64]]}
    assert parse_message(encode(shown)) == shown
    resume = Resume(files=((2, BLOCK),))
    assert json.loads(encode(resume)) == {"type": "resume", "files": [[2, BLOCK]]}
    assert parse_message(encode(resume)) == resume


def test_an_older_receivers_accept_with_digests_still_parses() -> None:
    """accept.resume of receivers before ``held``: [file, offset, digest] triples."""
    accept = Accept(resume=(Offer(2, BLOCK, "a" * 64),))
    assert json.loads(encode(accept)) == {"type": "accept", "resume": [[2, BLOCK, "a" * 64]]}
    assert parse_message(encode(accept)) == accept


@pytest.mark.parametrize("text", [
    '{"type":"accept","resume":[[0,0,"' + "a" * 64 + '"]]}',
    '{"type":"accept","resume":[[0,1,"XYZ"]]}',
    '{"type":"accept","resume":[[true,1,"' + "a" * 64 + '"]]}',
    '{"type":"accept","resume":{}}',
    '{"type":"accept","held":[[0,0]]}',
    '{"type":"accept","held":[[0,1,"' + "a" * 64 + '"]]}',
    '{"type":"accept","held":{}}',
    '{"type":"accept","held":[[0,1]],"resume":[[0,1,"' + "a" * 64 + '"]]}',
    '{"type":"prefix_digests","files":[[0,1]]}',
    '{"type":"prefix_digests","files":[[0,1,"A' + "a" * 63 + '"]]}',
    '{"type":"prefix_digests"}',
    '{"type":"resume","files":[[0]]}',
    '{"type":"resume","files":[[-1,5]]}',
    '{"type":"resume"}',
])
def test_malformed_offers_are_refused(text: str) -> None:
    """Offsets start at 1, digests are lowercase hex, lists have the right shape, and an
    accept holds prefixes one way only."""
    with pytest.raises(RemoteProtocolError):
        parse_message(text)


def _pair(entries: list[FileEntry | StreamEntry]) -> tuple[Sender, Receiver]:
    sender, receiver = Sender(ROOM, entries), Receiver(ROOM)
    sender.hello()
    receiver.hello()
    sender.receive('{"type":"ready"}')
    events: list[object] = []
    for part in sender.manifest():
        events += receiver.receive(part)
    assert events[0] == SenderJoined() and isinstance(events[1], ManifestReceived)
    return sender, receiver


def test_the_receiver_never_sends_its_digests() -> None:
    """accept names the prefixes held, never their digests: the sender shows its own first."""
    a = os.urandom(BLOCK + 10)
    sender, receiver = _pair([FileEntry("a", len(a))])
    ours = Offer(0, BLOCK, sha(a[:BLOCK]))
    accept = receiver.accept([ours])
    assert ours.digest not in accept
    assert json.loads(accept)["held"] == [[0, BLOCK]]
    assert sender.receive(accept) == [AcceptReceived(receiver.digest, held=(Prefix(0, BLOCK),))]
    assert sender.state is SenderState.PROVING


def test_resumed_files_stream_only_their_rest() -> None:
    """After resume, the stream holds each file from its agreed offset; the receiver's
    FileData offsets count from the file's start, and checksums stay whole-file."""
    a, b = os.urandom(2 * BLOCK + 10), os.urandom(BLOCK + 3)
    sender, receiver = _pair([FileEntry("a", len(a)), FileEntry("b", len(b))])
    # The receiver holds a's first block, and a block of some other b.
    held = [Offer(0, BLOCK, sha(a[:BLOCK])), Offer(1, BLOCK, sha(b"x" * BLOCK))]
    sender.receive(receiver.accept(held))
    assert receiver.state is ReceiverState.WAIT_PREFIX_DIGESTS
    shown = sender.prefix_digests([Offer(0, BLOCK, sha(a[:BLOCK])),
                                   Offer(1, BLOCK, sha(b[:BLOCK]))])
    events = receiver.receive(shown)
    resume = encode(Resume(files=((0, BLOCK),)))
    # b's digest differs; the machine answers on its own.
    assert events == [ResumeAgreed({0: BLOCK}, frozenset({1})), Send(resume)]
    assert sender.state is SenderState.WAIT_RESUME
    assert sender.receive(resume) == [ResumeAgreed({0: BLOCK}, frozenset({1}))]
    assert sender.state is SenderState.STREAMING
    rest = a[BLOCK:] + b
    buffer = bytearray(1 + len(rest))
    buffer[1:] = rest
    data = receiver.receive(bytes(sender.frame_data(buffer, len(rest))))
    assert [(e.file, e.offset, len(e.data)) for e in data if isinstance(e, FileData)] == [
        (0, BLOCK, len(a) - BLOCK), (1, 0, len(b))]
    done: list[object] = []
    for message in sender.checksums([sha(a), sha(b)]):
        done += receiver.receive(message)
    assert done == [FileCompleted(0, sha(a)), FileCompleted(1, sha(b))]
    assert sender.bytes_sent == len(rest)


def test_a_prefix_the_sender_does_not_show_is_not_compared() -> None:
    """A held prefix the sender leaves out (it could not read it) is neither equal nor
    different: everything of that file comes from 0."""
    sender, receiver = _pair([FileEntry("a", 3 * BLOCK)])
    sender.receive(receiver.accept([Offer(0, BLOCK, "a" * 64)]))
    agreed, reply = receiver.receive(sender.prefix_digests([]))
    assert agreed == ResumeAgreed({}) and isinstance(reply, Send)
    assert sender.receive(reply.message) == [ResumeAgreed({})]


def test_only_held_prefixes_can_be_shown_and_resumed() -> None:
    """A digest for a prefix not held, or a resume for one not shown, breaks the protocol."""
    sender, receiver = _pair([FileEntry("a", 3 * BLOCK)])
    receiver.accept([Offer(0, BLOCK, "a" * 64)])
    with pytest.raises(RemoteProtocolError):
        receiver.receive(encode(PrefixDigests(files=(Offer(0, 2 * BLOCK, "a" * 64),))))
    _, receiver = _pair([FileEntry("a", 3 * BLOCK)])
    receiver.accept([Offer(0, BLOCK, "a" * 64)])
    with pytest.raises(RemoteProtocolError):  # a sender's resume: only the receiver says it
        receiver.receive(encode(Resume(files=((0, BLOCK),))))
    sender2, _ = _pair([FileEntry("a", 3 * BLOCK)])
    sender2.receive(encode(Accept(held=(Prefix(0, BLOCK),))))
    with pytest.raises(LocalProtocolError):
        sender2.prefix_digests([Offer(0, 2 * BLOCK, "a" * 64)])
    sender3, _ = _pair([FileEntry("a", 3 * BLOCK)])
    sender3.receive(encode(Accept(held=(Prefix(0, BLOCK),))))
    sender3.prefix_digests([])
    with pytest.raises(RemoteProtocolError):
        sender3.receive(encode(Resume(files=((0, BLOCK),))))


def test_an_older_receivers_offers_are_checked_by_the_sender() -> None:
    """A receiver before ``held`` shows its digests in accept.resume: the sender compares
    them and answers resume with those that match (only offers it made)."""
    a = os.urandom(2 * BLOCK)
    sender, _ = _pair([FileEntry("a", len(a))])
    offer = Offer(0, BLOCK, sha(a[:BLOCK]))
    assert sender.receive(encode(Accept(resume=(offer,)))) == [
        AcceptReceived(SHA256, offers=(offer,))]
    assert sender.state is SenderState.VERIFYING
    with pytest.raises(LocalProtocolError):
        sender.resume([Offer(0, 2 * BLOCK, "a" * 64)])
    assert json.loads(sender.resume([offer])) == {"type": "resume", "files": [[0, BLOCK]]}
    # Only the rest of the file is sent: the first BLOCK bytes were agreed.
    sender.frame_data(bytearray(1 + BLOCK), BLOCK)
    with pytest.raises(LocalProtocolError, match="more data than the manifest announced"):
        sender.frame_data(bytearray(2), 1)


def test_sender_refuses_offers_out_of_range() -> None:
    """A prefix beyond a file's size is the receiver breaking the protocol."""
    sender, _ = _pair([FileEntry("a", 10)])
    with pytest.raises(RemoteProtocolError):
        sender.receive(encode(Accept(resume=(Offer(0, BLOCK, "a" * 64),))))
    sender, _ = _pair([FileEntry("a", 10)])
    with pytest.raises(RemoteProtocolError):
        sender.receive(encode(Accept(held=(Prefix(0, BLOCK),))))


def test_data_from_a_sender_that_ignores_offers_starts_from_zero() -> None:
    """A sender that does not read ``held`` sends data right after accept: all files
    start at 0, and no offered file counts as compared."""
    _sender, receiver = _pair([FileEntry("a", 4)])
    receiver.accept([Offer(0, 4, sha(b"abcd"))])
    events = receiver.receive(b"\x00abcd")
    assert events[0] == ResumeAgreed({}, frozenset())
    assert isinstance(events[1], FileData) and events[1].offset == 0
    assert not any(isinstance(e, Send) for e in events)  # nothing to answer


def test_sidecar_round_trip_and_garbage() -> None:
    """A sidecar we wrote parses back; anything else is ignored, never trusted."""
    car = Sidecar(size=5 * BLOCK, mtime=1.5, offset=2 * BLOCK, digest="c" * 64)
    assert Sidecar.parse(car.encode()) == car
    for raw in [b"", b"[]", b"{}", b'{"version":1,"size":5,"offset":6,"sha256":"' + b"c" * 64
                + b'"}', b"\xff\xfe"]:
        assert Sidecar.parse(raw) is None


def _write_part(root: Path, name: str, data: bytes, offset: int, mtime: float | None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / f".{name}{TEMP_SUFFIX}").write_bytes(data)
    car = Sidecar(size=len(data) * 2, mtime=mtime, offset=offset, digest=sha(data[:offset]))
    (root / f".{name}{SIDECAR_SUFFIX}").write_bytes(car.encode())


def test_destination_offers_a_part_its_sidecar_vouches_for(tmp_path: Path) -> None:
    """A part file whose prefix still hashes to its sidecar's digest is offered."""
    data = os.urandom(2 * BLOCK + 100)
    _write_part(tmp_path, "a.bin", data, 2 * BLOCK, 7.0)
    dest = Destination(tmp_path, [FileEntry("a.bin", len(data) * 2, mtime=7.0)])
    dest.prepare()
    assert dest.offers() == [Offer(0, 2 * BLOCK, sha(data[: 2 * BLOCK]))]


def test_destination_ignores_a_damaged_part_or_other_time(tmp_path: Path) -> None:
    """A part whose bytes changed, or announced for another mtime, is not offered."""
    data = bytearray(os.urandom(BLOCK + 1))
    _write_part(tmp_path, "a.bin", bytes(data), BLOCK, 7.0)
    data[5] ^= 1
    (tmp_path / f".a.bin{TEMP_SUFFIX}").write_bytes(data)
    dest = Destination(tmp_path, [FileEntry("a.bin", len(data) * 2, mtime=7.0)])
    dest.prepare()
    assert dest.offers() == []
    _write_part(tmp_path, "b.bin", bytes(data), BLOCK, 7.0)
    other = Destination(tmp_path, [FileEntry("b.bin", len(data) * 2, mtime=8.0)])
    other.prepare()
    assert other.offers() == []


def test_destination_never_offers_a_linked_part(tmp_path: Path) -> None:
    """A symlink named like a part file is neither offered nor written through."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious" * BLOCK)
    root = tmp_path / "dest"
    _write_part(root, "a.bin", b"precious" * BLOCK, BLOCK, None)
    (root / f".a.bin{TEMP_SUFFIX}").unlink()
    (root / f".a.bin{TEMP_SUFFIX}").symlink_to(outside)
    dest = Destination(root, [FileEntry("a.bin", 16 * BLOCK)])
    dest.prepare()
    assert dest.offers() == []
    dest.resume({})
    dest.apply([FileData(0, 0, memoryview(b"new"))])
    assert outside.read_bytes() == b"precious" * BLOCK
    dest.abort()


def test_suspend_keeps_a_resumable_part_and_abort_removes_it(tmp_path: Path) -> None:
    """suspend() leaves part + sidecar at the last whole block; abort() leaves nothing."""
    data = os.urandom(BLOCK + 500)
    entry = FileEntry("a.bin", 3 * BLOCK, mtime=3.0)
    dest = Destination(tmp_path, [entry])
    dest.prepare()
    dest.apply([FileData(0, 0, memoryview(data))])
    dest.suspend()
    again = Destination(tmp_path, [entry])
    again.prepare()
    assert again.offers() == [Offer(0, BLOCK, sha(data[:BLOCK]))]
    again.resume({0: BLOCK})
    rest = os.urandom(2 * BLOCK)
    whole = data[:BLOCK] + rest
    done = again.apply([FileData(0, BLOCK, memoryview(rest)), FileCompleted(0, sha(whole))])
    assert done[0].sha256 == sha(whole)
    assert (tmp_path / "a.bin").read_bytes() == whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    third = Destination(tmp_path, [FileEntry("b.bin", 3 * BLOCK)])
    third.prepare()
    third.apply([FileData(0, 0, memoryview(data))])
    third.suspend()
    fourth = Destination(tmp_path, [FileEntry("b.bin", 3 * BLOCK)])
    fourth.prepare()
    assert fourth.offers()
    fourth.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_sender_checks_offers_from_memory_or_by_rereading(tmp_path: Path) -> None:
    """SourceChains accepts a matching prefix (kept state or reread) and refuses others."""
    data = os.urandom(2 * BLOCK + 1)
    path = tmp_path / "s.bin"
    path.write_bytes(data)
    chains = SourceChains([str(path)], [len(data)])
    good = Offer(0, BLOCK, sha(data[:BLOCK]))
    reread = chains.verify(good)
    assert reread is not None and reread.position == BLOCK
    assert chains.verify(Offer(0, BLOCK, sha(b"other"))) is None
    kept = ChainHasher()
    kept.update(data)
    chains.track(0, kept)
    whole = chains.verify(Offer(0, len(data), sha(data)))
    assert whole is not None and whole.hexdigest() == sha(data)


def test_chain_hasher_same_states_in_small_or_large_pieces() -> None:
    """Fed in small pieces (the per-file fast path) or at once, a ChainHasher keeps the same
    digest and the same block-prefix states, including the empty prefix."""
    data = os.urandom(2 * BLOCK + 777)
    whole, pieces = ChainHasher(), ChainHasher()
    whole.update(data)
    for i in range(0, len(data), 4096 + 3):
        pieces.update(data[i : i + 4096 + 3])
    assert pieces.position == whole.position == len(data)
    assert pieces.hexdigest() == whole.hexdigest() == sha(data)
    for offset in (0, BLOCK, 2 * BLOCK, len(data)):
        assert pieces.digest_at(offset) == whole.digest_at(offset) == sha(data[:offset])
    assert pieces.last_block() == whole.last_block() == 2 * BLOCK
    assert ChainHasher().digest_at(0) == sha(b"")


def _receive_small_files(dest: Destination, files: list[bytes]) -> None:
    dest.apply([FileData(i, 0, memoryview(d)) for i, d in enumerate(files)])
    dest.apply([FileCompleted(i, sha(d)) for i, d in enumerate(files)])


def test_many_small_files_leave_no_sidecar_nor_part(tmp_path: Path) -> None:
    """Small files that each arrive whole get their final names, modes and times, and no
    part or sidecar is left beside them (nor the folders' descriptors open)."""
    files = [os.urandom(100 + i) for i in range(300)]
    entries = [DirEntry("d", 0o750, 5.0), DirEntry("d/e", 0o700, 6.0)] + [
        FileEntry(f"d/{'e/' if i % 2 else ''}f{i}", len(b), 0o640, 1000.0 + i)
        for i, b in enumerate(files)]
    fds = len(os.listdir("/proc/self/fd"))
    dest = Destination(tmp_path, entries)
    dest.prepare()
    _receive_small_files(dest, files)
    dest.finish()
    assert len(os.listdir("/proc/self/fd")) == fds
    for i, data in enumerate(files):
        path = tmp_path / "d" / ("e" if i % 2 else "") / f"f{i}"
        assert path.read_bytes() == data
        assert (path.stat().st_mode & 0o777, path.stat().st_mtime) == (0o640, 1000.0 + i)
    names = [p.name for p in tmp_path.rglob("*")]
    assert not [n for n in names if n.endswith((TEMP_SUFFIX, SIDECAR_SUFFIX))]
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "d" / "e").stat().st_mtime == 6.0


@pytest.mark.parametrize("count", [1, LIST_FROM + 1])
def test_part_planted_after_prepare_is_replaced_not_written_through(
        tmp_path: Path, count: int) -> None:
    """A link planted under a part file's name after prepare() saw none is removed, never
    written through; the file is received whole (with names looked up or folders listed)."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    root = tmp_path / "dest"
    root.mkdir()
    files = [os.urandom(5000 + i) for i in range(count)]
    dest = Destination(root, [FileEntry(f"a{i}.bin", len(b)) for i, b in enumerate(files)])
    dest.prepare()
    (root / f".a0.bin{TEMP_SUFFIX}").symlink_to(outside)
    (root / f".a0.bin{SIDECAR_SUFFIX}").symlink_to(outside)
    _receive_small_files(dest, files)
    dest.finish()
    assert outside.read_bytes() == b"precious"
    assert [(root / f"a{i}.bin").read_bytes() for i in range(count)] == files
    assert sorted(p.name for p in root.iterdir()) == sorted(f"a{i}.bin" for i in range(count))


@pytest.mark.parametrize("layout", ["none", "empty", "file", "link", "part"])
def test_a_big_manifest_still_sees_what_its_top_folder_holds(
        tmp_path: Path, layout: str) -> None:
    """prepare() skips every look below a top-level name the destination lacks; below one
    it has, an existing file, a link or a part is still found."""
    root = tmp_path / "dest"
    root.mkdir()
    data = os.urandom(BLOCK + 10)
    files = [data] + [os.urandom(100 + i) for i in range(LIST_FROM)]
    entries = [FileEntry(f"top/f{i}", len(b), mtime=7.0) for i, b in enumerate(files)]
    if layout == "empty":
        (root / "top").mkdir()
    elif layout == "file":
        (root / "top").mkdir()
        (root / "top" / f"f{LIST_FROM}").write_bytes(b"mine")
    elif layout == "link":
        (tmp_path / "elsewhere").mkdir()
        (root / "top").symlink_to(tmp_path / "elsewhere")
    elif layout == "part":
        _write_part(root / "top", "f0", data[:BLOCK] + b"x" * 5, BLOCK, 7.0)
        entries[0] = FileEntry("top/f0", len(data), mtime=7.0)
        # _write_part's sidecar announces twice the part's length: make it this file's.
        car = Sidecar(size=len(data), mtime=7.0, offset=BLOCK, digest=sha(data[:BLOCK]))
        (root / "top" / f".f0{SIDECAR_SUFFIX}").write_bytes(car.encode())
    dest = Destination(root, entries)
    if layout == "file":
        with pytest.raises(DestinationExistsError):
            dest.prepare()
        assert (root / "top" / f"f{LIST_FROM}").read_bytes() == b"mine"
        return
    if layout == "link":
        with pytest.raises(UnsafePathError):
            dest.prepare()
        assert list((tmp_path / "elsewhere").iterdir()) == []
        return
    dest.prepare()
    assert [(o.file, o.offset) for o in dest.offers()] == ([(0, BLOCK)] if layout == "part" else [])
    _receive_small_files(dest, files)
    dest.finish()
    assert [(root / "top" / f"f{i}").read_bytes() for i in range(len(files))] == files


def test_folder_swapped_for_a_link_mid_transfer_is_not_followed(tmp_path: Path,
                                                                storage_backend: str) -> None:
    """Once a folder has been made, later files go into that folder even if its name is
    swapped for a link to elsewhere: nothing is written outside the destination. (By
    path, with no folder descriptor to hold on to, the swap fails the transfer instead.)"""
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "dest"
    files = [b"first", b"second"]
    dest = Destination(root, [FileEntry(f"d/f{i}", len(b)) for i, b in enumerate(files)])
    dest.prepare()
    dest.apply([FileData(0, 0, memoryview(files[0])), FileCompleted(0, sha(files[0]))])
    (root / "d").rename(tmp_path / "moved")
    (root / "d").symlink_to(outside)
    if storage_backend == "portable":
        with pytest.raises(UnsafePathError, match="is a link"):
            dest.apply([FileData(1, 0, memoryview(files[1])), FileCompleted(1, sha(files[1]))])
        dest.abort()
        assert list(outside.iterdir()) == []
        assert sorted(p.name for p in (tmp_path / "moved").iterdir()) == ["f0"]
        return
    dest.apply([FileData(1, 0, memoryview(files[1])), FileCompleted(1, sha(files[1]))])
    dest.finish()
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "moved").iterdir()) == ["f0", "f1"]


def test_final_name_taken_after_prepare_is_left_alone(tmp_path: Path) -> None:
    """A file that takes the final name while receiving is kept as it is (without
    --overwrite), the received copy is discarded, and DestinationExistsError says so."""
    data = os.urandom(3000)
    dest = Destination(tmp_path, [FileEntry("a.bin", len(data))])
    dest.prepare()
    dest.apply([FileData(0, 0, memoryview(data))])
    (tmp_path / "a.bin").write_bytes(b"theirs")
    with pytest.raises(DestinationExistsError):
        dest.apply([FileCompleted(0, sha(data))])
    dest.abort()
    assert (tmp_path / "a.bin").read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_sender_modes_are_limited_by_the_receivers_umask(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sender cannot make received files or folders writable by others: its modes pass
    through the receiver's umask, as with tar and scp, whether a file arrives in one
    piece (created with its mode) or in several (made private, its mode set at the end)."""
    from p2p_copy.storage import destination

    monkeypatch.setattr(destination, "_umask_value", 0o027, raising=False)
    old = os.umask(0o027)
    try:
        data = b"shared"
        dest = Destination(tmp_path, [DirEntry("d", mode=0o777),
                                      FileEntry("d/a.txt", len(data), mode=0o666),
                                      FileEntry("d/b.sh", len(data), mode=0o4777)])
        dest.prepare()
        dest.apply([FileData(0, 0, memoryview(data)), FileCompleted(0, sha(data)),
                    FileData(1, 0, memoryview(data[:2])), FileData(1, 2, memoryview(data[2:])),
                    FileCompleted(1, sha(data))])
        dest.finish()
    finally:
        os.umask(old)
    assert (tmp_path / "d" / "a.txt").stat().st_mode & 0o7777 == 0o640
    assert (tmp_path / "d" / "b.sh").stat().st_mode & 0o7777 == 0o750
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750


@pytest.mark.parametrize("which", [TEMP_SUFFIX, SIDECAR_SUFFIX])
def test_part_others_may_write_is_not_resumed(tmp_path: Path, which: str) -> None:
    """A part (or sidecar) that group or others may write could have been planted or
    changed by another user: it is not offered, and the file starts over."""
    data = os.urandom(BLOCK + 10)
    _write_part(tmp_path, "a.bin", data, BLOCK, 7.0)
    os.chmod(tmp_path / f".a.bin{which}", 0o666)
    dest = Destination(tmp_path, [FileEntry("a.bin", len(data) * 2, mtime=7.0)])
    dest.prepare()
    assert dest.offers() == []


def test_part_swapped_after_prepare_is_not_written_to(tmp_path: Path) -> None:
    """A part replaced by another file between its hashing and its reopening is refused:
    bytes nobody verified are never continued."""
    data = os.urandom(BLOCK + 10)
    _write_part(tmp_path, "a.bin", data, BLOCK, 7.0)
    dest = Destination(tmp_path, [FileEntry("a.bin", len(data) * 2, mtime=7.0)])
    dest.prepare()
    assert dest.offers() == [Offer(0, BLOCK, sha(data[:BLOCK]))]
    swapped = tmp_path / "swapped"
    swapped.write_bytes(os.urandom(BLOCK))
    swapped.replace(tmp_path / f".a.bin{TEMP_SUFFIX}")
    dest.resume({0: BLOCK})
    with pytest.raises(UnsafePathError, match="changed while resuming"):
        dest.apply([FileData(0, BLOCK, memoryview(b"rest"))])
    dest.abort()


def test_out_of_hashing_time_offers_nothing_and_checks_on_arrival(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no time left to hash before accept, nothing is offered (the sender would give
    up waiting); a complete file received again is then kept if equal, refused if not."""
    from p2p_copy.storage import destination

    monkeypatch.setattr(destination, "HASH_BUDGET", -1.0, raising=False)
    same, other = os.urandom(3000), os.urandom(3000)
    (tmp_path / "same.bin").write_bytes(same)
    (tmp_path / "other.bin").write_bytes(os.urandom(3000))
    os.utime(tmp_path / "same.bin", (5.0, 5.0))
    os.utime(tmp_path / "other.bin", (5.0, 5.0))
    _write_part(tmp_path, "part.bin", os.urandom(BLOCK), BLOCK, 5.0)
    entries = [FileEntry("same.bin", 3000, mtime=5.0), FileEntry("other.bin", 3000, mtime=5.0),
               FileEntry("part.bin", 2 * BLOCK, mtime=5.0)]
    dest = Destination(tmp_path, entries)
    dest.prepare()
    assert dest.offers() == []
    dest.resume({})
    done = dest.apply([FileData(0, 0, memoryview(same)), FileCompleted(0, sha(same))])
    assert [r.path for r in done] == ["same.bin"]
    with pytest.raises(DestinationExistsError, match="differs"):
        dest.apply([FileData(1, 0, memoryview(other)), FileCompleted(1, sha(other))])
    dest.abort()
    assert (tmp_path / "same.bin").read_bytes() == same
    assert (tmp_path / "other.bin").read_bytes() != other


def test_suspend_drops_parts_shorter_than_a_block(tmp_path: Path) -> None:
    """Suspending (a drop, a cancel) keeps no part too small to be worth a sidecar."""
    data = os.urandom(5000)
    dest = Destination(tmp_path, [FileEntry("a.bin", len(data)), FileEntry("b.bin", 9000)])
    dest.prepare()
    dest.apply([FileData(0, 0, memoryview(data)), FileData(1, 0, memoryview(data))])
    dest.suspend()
    assert list(tmp_path.iterdir()) == []


def _section_12_4() -> str:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text("utf-8")
    return doc[doc.index("### 12.4 "):doc.index("## 13. ")]


def test_worked_resume_example_is_what_the_machines_send() -> None:
    """docs/protocol.md §12.4: held, prefix_digests, resume and the shortened stream are
    exactly what our sender and receiver say when the receiver holds trip/a.txt."""
    from p2p_copy.protocol.digests import SHA256

    room = "4db57ad8f4f2ce91aca47e419715faf52e952b614d41f7cb6d28cb7684bceac0"
    entries = [DirEntry("trip", mode=0o755, mtime=1700000001.0),
               FileEntry("trip/a.txt", 14, mode=0o644, mtime=1700000000.5),
               FileEntry("trip/b.txt", 4, mode=0o600, mtime=1700000000.0),
               DirEntry("trip/empty", mode=0o755, mtime=1700000000.0)]
    a, b = b"Hello, world!\n", b"p2p\n"
    sender = Sender(room, entries, digests=(SHA256,))
    receiver = Receiver(room, digests=(SHA256,))
    sender.hello()
    receiver.hello()
    sender.receive('{"type":"ready"}')
    for part in sender.manifest():
        receiver.receive(part)
    actual: list[tuple[str, str | bytes]] = []

    def to_receiver(message: str | bytes) -> list[object]:
        actual.append(("S→R", message))
        return list(receiver.receive(message))

    def to_sender(message: str) -> None:
        actual.append(("R→S", message))
        sender.receive(message)

    to_sender(receiver.accept([Offer(0, 14, sha(a))]))
    agreed, reply = to_receiver(sender.prefix_digests([Offer(0, 14, sha(a))]))
    assert agreed == ResumeAgreed({0: 14}) and isinstance(reply, Send)
    to_sender(reply.message)
    buffer = bytearray(1 + len(b))
    buffer[1:] = b
    to_receiver(bytes(sender.frame_data(buffer, len(b))))
    for message in sender.checksums([sha(a), sha(b)]):
        to_receiver(message)
    to_receiver(sender.eof())
    actual.append(("R→S", receiver.done()))

    section = _section_12_4()
    table = section[section.index("| # | direction | kind | message |"):]
    documented: list[tuple[str, str | bytes]] = []
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not cells[2].startswith(("text", "binary")):
            continue
        quoted = cells[3].split("`")[1]
        documented.append((cells[1], quoted if cells[2] == "text" else bytes.fromhex(quoted)))
    assert documented == actual


def test_worked_resume_example_differing_file_error(tmp_path: Path) -> None:
    """§12.4's `exists` error for a held file whose digest differs is our receiver's text,
    and it names no path of the receiver's machine."""
    dest = tmp_path / "incoming"
    (dest / "trip").mkdir(parents=True)
    held = dest / "trip" / "a.txt"
    held.write_bytes(b"Hello, WORLD!\n")
    os.utime(held, (1700000000.5, 1700000000.5))
    entries = [FileEntry("trip/a.txt", 14, mtime=1700000000.5)]
    destination = Destination(dest, entries)
    destination.prepare()
    assert [o.prefix for o in destination.offers()] == [Prefix(0, 14)]
    with pytest.raises(DestinationExistsError) as info:
        destination.resume({}, {0})
    said = re.findall(r"`(\{\"type\":\"error\"[^`]*)`", _section_12_4())
    assert json.loads(said[0])["message"] == info.value.peer_text
    assert str(tmp_path) not in info.value.peer_text and str(held) in str(info.value)
