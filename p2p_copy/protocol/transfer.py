"""The sender's and the receiver's side of a transfer as state machines without I/O.

Rules, in the order a transfer follows them (docs/protocol.md has the full text):

    sender                          relay                    receiver
    hello ---------------------->          <---------------------- hello
          <--------------------- ready
    manifest (one or more parts) ------------------------------->
          <------------------------------------------------------- accept
    [if the accept lists prefixes the receiver holds:
    prefix_digests (the sender's digest of each) --------------->
          <------------------------------------------------------- resume (those equal)]
    data, data, checksums, data ... ---------------------------->
    eof -------------------------------------------------------->
          <------------------------------------------------------- done

The data stream is every file's bytes concatenated in manifest order (each from the
offset agreed in ``resume``, else from 0), cut into binary messages of any
size, so that one message can carry many small files. A ``checksums``
message gives the digests of files whose last byte has been sent: SHA-256, or BLAKE3 if
the manifest offered it and the receiver's accept picked it (digests.py). Either side may
send ``error`` at any time and then close.

Each machine is fed what arrived (``receive``) and asked for what to send (``hello``,
``manifest``, ...). A call in the wrong state raises LocalProtocolError; a message in the
wrong state raises RemoteProtocolError. The asyncio layer in api.py does the I/O.

Compression: the receiver's ``accept`` lists ``"zstd"`` in ``compression``; a sender that
reads it may then send a chunk as one zstd frame (DATA_ZSTD) instead of raw bytes
(``frame_data(..., compress=True)``). Positions, limits and checksums always count the
plaintext.
"""

from __future__ import annotations

import bisect
import enum
import hmac
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..errors import (
    EncryptionMismatchError,
    LocalProtocolError,
    P2PCopyError,
    PolicyError,
    RemoteProtocolError,
    error_for_wire_code,
)
from .compression import DEFAULT_LEVEL, ChunkCompressor, ChunkDecompressor, CompressionStats
from .digests import SHA256, available, choose, preferred
from .messages import (
    DATA_RAW,
    DATA_ZSTD,
    MAX_ZSTD_CONTENT,
    ZSTD,
    Accept,
    Checksums,
    DataEntry,
    Done,
    Entry,
    Eof,
    ErrorMessage,
    FileEntry,
    Hello,
    Manifest,
    Pake,
    PrefixDigests,
    Ready,
    Resume,
    Role,
    StreamEntry,
    Waiting,
    encode,
    encode_manifest,
    parse_message,
)
from .paths import display_name
from .policy import ManifestLimits, ReceivePolicy, check_policy
from .resume import Offer, Prefix, check_offers

__all__ = [
    "SenderState",
    "ReceiverState",
    "Sender",
    "Receiver",
    "ManifestReceived",
    "FileData",
    "FileCompleted",
    "TransferFinished",
    "ResumeAgreed",
    "ReceiverEvent",
    "data_entries",
    "MANIFEST_PART_BYTES",
    "HELLO_VERSION",
    "peer_error",
    "DATA_RAW",
    "DATA_ZSTD",
]

#: The hello version our peers send: 2 asks the relay to confirm a wait with ``waiting``.
HELLO_VERSION = 2

#: Manifest parts stay well below the 1 MiB default message limit of WebSocket stacks.
MANIFEST_PART_BYTES = 256 * 1024
#: Characters of a peer's error text that we show.
MAX_ERROR_TEXT = 1000
#: Digests per checksums message: about 280 KiB of JSON, well under any message limit.
MAX_CHECKSUMS_PER_MESSAGE = 4096


class SenderState(enum.IntEnum):
    START = 0
    WAIT_READY = 1
    SEND_MANIFEST = 2
    WAIT_ACCEPT = 3
    STREAMING = 4
    WAIT_DONE = 5
    DONE = 6
    FAILED = 7
    #: A receiver before ``held`` offered prefixes with its digests: the caller checks
    #: them, then calls resume().
    VERIFYING = 8
    #: The receiver holds prefixes (``held``): the caller hashes ours, then calls
    #: prefix_digests().
    PROVING = 9
    #: prefix_digests was sent: the receiver's ``resume`` says which prefixes matched.
    WAIT_RESUME = 10


class ReceiverState(enum.IntEnum):
    START = 0
    WAIT_MANIFEST = 1
    DECIDING = 2
    STREAMING = 3
    FINISHING = 4
    DONE = 5
    FAILED = 6
    #: Prefixes were offered: the sender's ``prefix_digests`` (or, from a sender that
    #: ignores them, data) is next.
    WAIT_RESUME = 7
    #: The sender's prefix digests were compared: call resume() to tell it the result.
    ANSWER_RESUME = 8


@dataclass(frozen=True)
class ManifestReceived:
    """The whole manifest arrived and its paths are safe; call accept() or error()."""

    entries: tuple[Entry, ...]

    @property
    def files(self) -> tuple[FileEntry, ...]:
        return tuple(e for e in self.entries if isinstance(e, FileEntry))

    @property
    def data(self) -> tuple[DataEntry, ...]:
        """The entries with bytes, in the order of their file numbers (a stream is last)."""
        return data_entries(self.entries)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class FileData:
    """Bytes of file number ``file`` (index among file entries) starting at ``offset``."""

    file: int
    offset: int
    data: memoryview


@dataclass(frozen=True)
class FileCompleted:
    """All bytes of file number ``file`` arrived; the sender says their digest is ``digest``."""

    file: int
    digest: str


@dataclass(frozen=True)
class TransferFinished:
    """The sender sent eof after every byte and checksum; verify, then call done()."""


@dataclass(frozen=True)
class ResumeAgreed:
    """Files continue from these offsets (file number -> bytes already held); others from 0.

    Comes before any FileData of the transfer whenever prefixes were offered. ``differs``:
    offered files whose prefix the sender showed to be other than ours (an offered file in
    neither was not compared: the sender ignored the offer or could not read its prefix).
    """

    starts: dict[int, int]
    differs: frozenset[int] = frozenset()


ReceiverEvent = ManifestReceived | ResumeAgreed | FileData | FileCompleted | TransferFinished


class _Stream:
    """Where file boundaries fall in the concatenated data stream.

    The last file may be a stream of unknown size (``None``): it takes every byte after
    the files before it until its checksum arrives, which fixes its size (``close_open``).
    """

    def __init__(self, sizes: Sequence[int | None]) -> None:
        self.open_end = bool(sizes) and sizes[-1] is None
        known = [s for s in sizes if s is not None]
        if len(known) != len(sizes) - self.open_end:
            raise LocalProtocolError("only the last file may have an unknown size")
        self.sizes: tuple[int, ...] = tuple(known)
        # ends[i] is the stream offset just after file i's last byte.
        self.ends = tuple(itertools.accumulate(self.sizes))
        self.total = self.ends[-1] if self.ends else 0
        self.count = len(sizes)
        self.position = 0
        self.checksummed = 0

    def files_complete(self) -> int:
        """How many files have all their bytes before ``position``."""
        return bisect.bisect_right(self.ends, self.position)

    def room(self) -> int | None:
        """How many more bytes may come, or None while a stream is open."""
        return None if self.open_end else self.total - self.position

    def close_open(self) -> None:
        """The open stream ends here: it has every byte after the files before it."""
        self.sizes += (self.position - self.total,)
        self.ends += (self.position,)
        self.total = self.position
        self.open_end = False

    def check_checksums(self, first: int, count: int) -> str | None:
        """Why a checksums message for files first..first+count-1 is out of place, or None.

        A checksum for an open stream closes it, once the files before it are complete.
        """
        if first != self.checksummed:
            return f"checksums for file {first} arrived, file {self.checksummed} was next"
        if self.open_end and first + count == self.count and self.position >= self.total:
            self.close_open()
        if first + count > self.files_complete():
            return "checksums arrived for a file whose bytes were not all sent"
        return None

    def finished(self) -> bool:
        return not self.open_end and self.position == self.total and (
            self.checksummed == self.count)


def data_entries(entries: Sequence[Entry]) -> tuple[DataEntry, ...]:
    """The entries that have bytes in the data stream, numbered in this order."""
    return tuple(e for e in entries if isinstance(e, (FileEntry, StreamEntry)))


def _sizes(entries: Sequence[Entry]) -> list[int | None]:
    return [e.size if isinstance(e, FileEntry) else None for e in data_entries(entries)]


def _remaining(sizes: Sequence[int | None], starts: dict[int, int]) -> list[int | None]:
    """What of each file is still to cross, once ``starts`` were agreed."""
    return [None if s is None else s - starts.get(i, 0) for i, s in enumerate(sizes)]


def peer_error(message: ErrorMessage, peer: Role) -> P2PCopyError:
    """The error to raise when ``peer`` reports ``message``, its text made safe to show."""
    # Escaped, so that the peer's text cannot reach our terminal as control characters,
    # and cut, so that it stays one readable line.
    text = display_name(message.message[:MAX_ERROR_TEXT])
    return error_for_wire_code(message.code, f"The {peer} reported: {text}")


class Sender:
    """The sending peer: announces the entries, streams their bytes, waits for ``done``."""

    def __init__(
        self,
        room_hash: str,
        entries: Sequence[Entry],
        *,
        manifest_part_bytes: int = MANIFEST_PART_BYTES,
        fresh: bool = False,
        digests: Sequence[str] | None = None,
    ) -> None:
        self.state = SenderState.START
        #: The hash algorithms the manifest offers, best first: digests.preferred(), or those
        #: of ``digests`` this peer can hash (SHA-256 if none).
        self.digests_offered = preferred() if digests is None else (
            tuple(name for name in digests if name in available()) or (SHA256,))
        #: The one the receiver picked in its accept (SHA-256 until then, and if it says none).
        self.digest = SHA256
        #: codes.room_hash_hex() of the code: the room the hello asks the relay for.
        self.room_hash = room_hash
        #: The code was just generated: the relay must not pair it with anyone waiting.
        self.fresh = fresh
        self.waiting_confirmed = False
        self.entries = tuple(entries)
        self._part_bytes = manifest_part_bytes
        self._stream = _Stream(_sizes(self.entries))
        #: What an older receiver offered in its accept (state VERIFYING), checked for shape.
        self.offers: tuple[Offer, ...] = ()
        #: The prefixes the receiver holds (state PROVING), checked for shape.
        self.held: tuple[Prefix, ...] = ()
        #: What prefix_digests told the receiver, by file number.
        self._claims: dict[int, Offer] = {}
        #: The agreed offsets: file number -> first byte sent.
        self.starts: dict[int, int] = {}
        #: The receiver's accept listed "zstd": frame_data may send DATA_ZSTD messages.
        self.peer_accepts_zstd = False
        self._compressor: ChunkCompressor | None = None

    @property
    def compression_stats(self) -> CompressionStats | None:
        """What compression did so far, or None if frame_data never tried it."""
        return None if self._compressor is None else self._compressor.stats

    @property
    def bytes_sent(self) -> int:
        """Bytes of file data framed so far (resumed prefixes are not sent, so not counted)."""
        return self._stream.position

    def _expect(self, *states: SenderState) -> None:
        if self.state not in states:
            raise LocalProtocolError(f"sender cannot do that in state {self.state.name}")

    def hello(self) -> str:
        self._expect(SenderState.START)
        self.state = SenderState.WAIT_READY
        return encode(Hello(code_hash_hex=self.room_hash, role="sender",
                            version=HELLO_VERSION, fresh=self.fresh or None))

    def manifest(self) -> Iterator[str]:
        """The manifest as one or more text messages, each under the part size.

        Send each part as it comes: the next is encoded meanwhile (see encode_manifest).
        """
        self._expect(SenderState.SEND_MANIFEST)
        self.state = SenderState.WAIT_ACCEPT
        # Only SHA-256: no offer, and the manifest is what a peer before BLAKE3 sends.
        offer = None if self.digests_offered == (SHA256,) else self.digests_offered
        return encode_manifest(self.entries, self._part_bytes, offer)

    def receive(self, message: str | bytes) -> Ready | Waiting | Accept | Resume | Done:
        """Feed a message from the relay or the receiver; return what it was."""
        if isinstance(message, (bytes, bytearray, memoryview)):
            raise self._fail(RemoteProtocolError("the receiver sent binary data to the sender"))
        try:
            parsed = parse_message(message)
        except P2PCopyError as exc:
            raise self._fail(exc) from None
        if isinstance(parsed, ErrorMessage):
            raise self._fail(peer_error(parsed, "receiver"))
        if (isinstance(parsed, Waiting) and self.state is SenderState.WAIT_READY
                and not self.waiting_confirmed):
            # The relay confirms that the room is ours; ``ready`` follows when a receiver joins.
            self.waiting_confirmed = True
            return parsed
        expected: dict[SenderState, type[Ready | Accept | Resume | Done]] = {
            SenderState.WAIT_READY: Ready,
            SenderState.WAIT_ACCEPT: Accept,
            SenderState.WAIT_RESUME: Resume,
            SenderState.WAIT_DONE: Done,
        }
        wanted = expected.get(self.state)
        if wanted is None or not isinstance(parsed, wanted):
            raise self._fail(
                RemoteProtocolError(
                    f"'{parsed.type}' arrived while the sender was in state {self.state.name}"
                )
            )
        self.state = {
            Ready: SenderState.SEND_MANIFEST,
            Accept: SenderState.STREAMING,
            Resume: SenderState.STREAMING,
            Done: SenderState.DONE,
        }[wanted]
        if isinstance(parsed, Resume):
            self._agreed(parsed)
        if isinstance(parsed, Accept):
            # Names we do not know are ignored: the receiver may decode more than we send.
            self.peer_accepts_zstd = ZSTD in (parsed.compression or ())
            # Only a missing field means SHA-256 (§6.5); "" is a name nobody offered.
            digest = SHA256 if parsed.digest is None else parsed.digest
            if digest != SHA256 and digest not in self.digests_offered:
                raise self._fail(RemoteProtocolError(
                    f"The receiver broke the protocol: it picked the hash {digest!r}, which "
                    "the manifest did not offer."))
            self.digest = digest
        if isinstance(parsed, Accept) and (parsed.held or parsed.resume is not None):
            offers = parsed.held or parsed.resume or ()
            problem = check_offers(offers, _sizes(self.entries))
            if problem:
                raise self._fail(
                    RemoteProtocolError(f"The receiver broke the protocol: {problem}."))
            if parsed.held:
                self.held = parsed.held
                self.state = SenderState.PROVING
            else:
                # A receiver before ``held`` showed its digests; nothing to hide any more.
                self.offers = parsed.resume or ()
                self.state = SenderState.VERIFYING
        return parsed

    def prefix_digests(self, digests: Sequence[Offer]) -> str:
        """The ``prefix_digests`` message: our digest of each held prefix we could read.

        ``digests`` must name prefixes among ``held``; the others are sent from 0.
        """
        self._expect(SenderState.PROVING)
        held = set(self.held)
        claims = {o.file: o for o in digests}
        if len(claims) != len(digests) or not all(o.prefix in held for o in digests):
            raise LocalProtocolError("only prefixes the receiver holds can be shown, once")
        self._claims = claims
        self.state = SenderState.WAIT_RESUME
        return encode(PrefixDigests(files=tuple(digests)))

    def _agreed(self, message: Resume) -> None:
        """Take the receiver's ``resume``: prefixes we showed and it found equal."""
        starts: dict[int, int] = {}
        for file, offset in message.files:
            claim = self._claims.get(file)
            if claim is None or claim.offset != offset or file in starts:
                raise self._fail(RemoteProtocolError(
                    f"The receiver broke the protocol: it resumes file {file} at {offset}, "
                    "which the sender did not show a digest for."))
            starts[file] = offset
        self.starts = starts
        self._stream = _Stream(_remaining(_sizes(self.entries), starts))

    def resume(self, accepted: Sequence[Offer]) -> str:
        """The ``resume`` message for the offers whose prefixes match our sources.

        ``accepted`` must be among ``offers``; every other file is sent from 0.
        """
        self._expect(SenderState.VERIFYING)
        if not set(accepted) <= set(self.offers):
            raise LocalProtocolError("only offers the receiver made can be accepted")
        self.starts = {o.file: o.offset for o in accepted}
        self._stream = _Stream(_remaining(_sizes(self.entries), self.starts))
        self.state = SenderState.STREAMING
        return encode(Resume(files=tuple((o.file, o.offset) for o in accepted)))

    def frame_data(
        self, buffer: bytearray, length: int, compress: bool = False
    ) -> memoryview | bytes:
        """Turn ``buffer[1:1+length]`` (filled by the caller) into a data message.

        A raw message is made in place: writing the header into the caller's buffer keeps
        file bytes from being copied. With ``compress`` and a receiver that accepts zstd,
        the chunk is offered to the compressor first and, if it shrinks enough, sent as a
        new DATA_ZSTD message instead. Either way ``length`` plaintext bytes are sent.
        """
        self._expect(SenderState.STREAMING)
        if length <= 0:
            raise LocalProtocolError("a data message must carry at least one byte")
        if len(buffer) < 1 + length:
            raise LocalProtocolError("the buffer is shorter than the data it should carry")
        room = self._stream.room()
        if room is not None and length > room:
            raise LocalProtocolError("more data than the manifest announced")
        if compress and self.peer_accepts_zstd:
            if self._compressor is None:
                self._compressor = ChunkCompressor(DEFAULT_LEVEL)
            with memoryview(buffer) as view, view[1 : 1 + length] as chunk:
                frame = self._compressor.compress(chunk)
            if frame is not None:
                self._stream.position += length
                return b"".join((bytes((DATA_ZSTD,)), frame))
        buffer[0] = DATA_RAW
        self._stream.position += length
        return memoryview(buffer)[: 1 + length]

    def checksums(self, digests: Sequence[str]) -> list[str]:
        """Checksums messages for the next files whose bytes have all been framed.

        ``digests`` are in the agreed algorithm (``digest``).
        """
        self._expect(SenderState.STREAMING)
        problem = self._stream.check_checksums(self._stream.checksummed, len(digests))
        if problem or not digests:
            raise LocalProtocolError(problem or "no checksums given")
        messages = []
        for i in range(0, len(digests), MAX_CHECKSUMS_PER_MESSAGE):
            batch = tuple(digests[i : i + MAX_CHECKSUMS_PER_MESSAGE])
            messages.append(encode(Checksums(first=self._stream.checksummed, digests=batch,
                                             algorithm=self.digest)))
            self._stream.checksummed += len(batch)
        return messages

    def eof(self) -> str:
        self._expect(SenderState.STREAMING)
        if not self._stream.finished():
            raise LocalProtocolError("eof before every byte and checksum was sent")
        self.state = SenderState.WAIT_DONE
        return encode(Eof())

    def error(self, exc: P2PCopyError) -> str:
        """The error message that tells the receiver why we stop (its peer-safe text)."""
        self.state = SenderState.FAILED
        return encode(ErrorMessage(code=exc.wire_code, message=exc.peer_text))

    def _fail(self, exc: P2PCopyError) -> P2PCopyError:
        self.state = SenderState.FAILED
        return exc


class Receiver:
    """The receiving peer: checks the manifest, splits the stream into files, confirms.

    With ``compression`` (the default) its accept offers zstd and DATA_ZSTD messages are
    decoded, each bounded by MAX_ZSTD_CONTENT and by what the manifest and policy leave;
    without it they are a protocol violation.
    """

    def __init__(
        self,
        room_hash: str,
        *,
        max_entries: int | None = None,
        policy: ReceivePolicy | None = None,
        compression: bool = True,
        digests: Sequence[str] | None = None,
    ) -> None:
        self.state = ReceiverState.START
        #: The hash algorithms it may pick from the manifest's offer (default: preferred()).
        self.digests_allowed = tuple(digests) if digests is not None else preferred()
        #: The one picked (SHA-256 unless the manifest offered one we prefer).
        self.digest = SHA256
        self._digest_offered = False
        self._manifest_parts = 0
        #: Advertise zstd in accept and decode DATA_ZSTD messages; else they are refused.
        self.compression = compression
        self._decompressor: ChunkDecompressor | None = None
        self.policy = policy or ReceivePolicy()
        self._waiting_seen = False
        self._sender_spoke = False
        #: codes.room_hash_hex() of the code: the room the hello asks the relay for.
        self.room_hash = room_hash
        self.max_entries = self.policy.max_entries if max_entries is None else max_entries
        self.entries: tuple[Entry, ...] = ()
        self._parts: list[Entry] = []
        self._limits = ManifestLimits(self.policy)
        self._stream = _Stream(())
        self._offers: dict[int, Offer] = {}
        #: The agreed offsets: file number -> first byte that arrives.
        self.starts: dict[int, int] = {}

    @property
    def bytes_received(self) -> int:
        return self._stream.position

    @property
    def compression_stats(self) -> CompressionStats | None:
        """What the DATA_ZSTD messages carried so far, or None if none arrived."""
        return None if self._decompressor is None else self._decompressor.stats

    @property
    def sender_spoke(self) -> bool:
        """Whether anything but the relay's ``waiting`` arrived: the sender is there."""
        return self._sender_spoke

    def hello(self) -> str:
        if self.state is not ReceiverState.START:
            raise LocalProtocolError("hello is sent once, first")
        self.state = ReceiverState.WAIT_MANIFEST
        return encode(Hello(code_hash_hex=self.room_hash, role="receiver",
                            version=HELLO_VERSION))

    def receive(self, message: str | bytes) -> list[ReceiverEvent]:
        """Feed a message from the sender; return what it means, in order."""
        try:
            if isinstance(message, (bytes, bytearray, memoryview)):
                self._sender_spoke = True
                return self._receive_data(memoryview(message))
            return self._receive_control(parse_message(message))
        except P2PCopyError as exc:
            self.state = ReceiverState.FAILED
            raise exc from None

    def _receive_control(self, msg: object) -> list[ReceiverEvent]:
        if isinstance(msg, ErrorMessage):
            raise peer_error(msg, "sender")
        waiting = self.state is ReceiverState.WAIT_MANIFEST and not self._parts
        if waiting and isinstance(msg, Waiting) and not self._waiting_seen:
            self._waiting_seen = True  # the relay's word that no sender is there yet
            return []
        self._sender_spoke = True
        if waiting and isinstance(msg, Pake):
            raise EncryptionMismatchError(
                "The sender encrypts, but the receiver was started with --no-encrypt. "
                "Run both sides with encryption (the default)."
            )
        if self.state is ReceiverState.WAIT_MANIFEST and isinstance(msg, Manifest):
            return self._receive_manifest(msg)
        if self.state is ReceiverState.WAIT_RESUME and isinstance(msg, PrefixDigests):
            return [self._compare(msg.files)]
        if self.state is ReceiverState.WAIT_RESUME and isinstance(msg, (Checksums, Eof)):
            # A sender from before resume ignores the offers: everything comes from 0.
            return [self._agree({}), *self._receive_control(msg)]
        if self.state is ReceiverState.STREAMING and isinstance(msg, Checksums):
            problem = self._stream.check_checksums(msg.first, len(msg.digests))
            if msg.algorithm != self.digest:
                problem = f"it sent {msg.algorithm} checksums, not the agreed {self.digest}"
            if problem:
                raise RemoteProtocolError(f"The sender broke the protocol: {problem}.")
            self._stream.checksummed += len(msg.digests)
            return [FileCompleted(msg.first + i, d) for i, d in enumerate(msg.digests)]
        if self.state is ReceiverState.STREAMING and isinstance(msg, Eof):
            stream = self._stream
            if not stream.finished():
                total = "a stream of unknown length" if stream.open_end else stream.total
                raise RemoteProtocolError(
                    f"The sender ended the transfer early: {stream.position} of "
                    f"{total} bytes and {stream.checksummed} of "
                    f"{stream.count} checksums arrived."
                )
            self.state = ReceiverState.FINISHING
            return [TransferFinished()]
        kind = getattr(msg, "type", "?")
        raise RemoteProtocolError(
            f"The sender broke the protocol: '{kind}' arrived in state {self.state.name}."
        )

    def _receive_manifest(self, part: Manifest) -> list[ReceiverEvent]:
        self._manifest_parts += 1
        if self._manifest_parts == 1 and part.digests is not None:
            self._digest_offered = True
            self.digest = choose(part.digests, self.digests_allowed)
        if len(self._parts) + len(part.entries) > self.max_entries:
            raise RemoteProtocolError(
                f"The manifest lists more than {self.max_entries} entries; refusing it."
            )
        # Each part is counted against the policy as it arrives, before it is kept: a
        # sender cannot make us hold more of a manifest than the limits let through.
        self._limits.add(part.entries, more=part.more)
        self._parts.extend(part.entries)
        if part.more:
            return []
        self.entries = tuple(self._parts)
        self._parts = []
        # paths.check_entries' rules included; the counts were kept part by part.
        check_policy(self.entries, self.policy, self._limits)
        self._stream = _Stream(_sizes(self.entries))
        self.state = ReceiverState.DECIDING
        return [ManifestReceived(self.entries)]

    def _compare(self, claims: Sequence[Offer]) -> ResumeAgreed:
        """The sender's digests of the prefixes we hold, against ours: equal ones resume."""
        starts: dict[int, int] = {}
        differs: set[int] = set()
        for claim in claims:
            ours = self._offers.get(claim.file)
            if (ours is None or ours.offset != claim.offset or claim.file in starts
                    or claim.file in differs):
                raise RemoteProtocolError(
                    f"The sender broke the protocol: it shows a digest of file {claim.file} "
                    f"up to {claim.offset}, a prefix the receiver did not offer."
                )
            # Compared in constant time: how long it takes says nothing about our digest.
            if hmac.compare_digest(ours.digest, claim.digest):
                starts[claim.file] = claim.offset
            else:
                differs.add(claim.file)
        agreed = self._agree(starts, frozenset(differs))
        self.state = ReceiverState.ANSWER_RESUME
        return agreed

    def _agree(self, starts: dict[int, int],
               differs: frozenset[int] = frozenset()) -> ResumeAgreed:
        self.starts = starts
        self._stream = _Stream(_remaining(_sizes(self.entries), starts))
        self.state = ReceiverState.STREAMING
        return ResumeAgreed(dict(starts), differs)

    def resume(self) -> str:
        """The ``resume`` message: which prefixes the sender showed to be equal to ours."""
        if self.state is not ReceiverState.ANSWER_RESUME:
            raise LocalProtocolError("resume answers the sender's prefix digests")
        self.state = ReceiverState.STREAMING
        return encode(Resume(files=tuple(self.starts.items())))

    def _receive_data(self, data: memoryview) -> list[ReceiverEvent]:
        if self.state is ReceiverState.WAIT_RESUME:
            return [self._agree({}), *self._receive_data(data)]
        if self.state is not ReceiverState.STREAMING:
            raise RemoteProtocolError(
                f"The sender broke the protocol: data arrived in state {self.state.name}."
            )
        kind = data[0] if len(data) >= 2 else None
        payload = data[1:]
        if kind == DATA_ZSTD and self.compression:
            if self._decompressor is None:
                self._decompressor = ChunkDecompressor(MAX_ZSTD_CONTENT)
            # Checked against the header before decompressing allocates anything.
            self._check_size(self._decompressor.declared_size(payload))
            payload = memoryview(self._decompressor.decompress(payload))
        elif kind == DATA_ZSTD:
            raise RemoteProtocolError(
                "The sender sent a compressed data message, but this receiver did not "
                "offer compression."
            )
        elif kind == DATA_RAW:
            self._check_size(len(payload))
        else:
            raise RemoteProtocolError("The sender sent a data message of unknown format.")
        stream = self._stream
        events: list[ReceiverEvent] = []
        file = stream.files_complete()
        while payload:
            if file == len(stream.sizes):  # the open stream: it takes everything
                start, size = stream.total, stream.position - stream.total + len(payload)
            else:
                start, size = stream.ends[file] - stream.sizes[file], stream.sizes[file]
            offset = stream.position - start
            take = min(len(payload), size - offset)
            if take:
                events.append(FileData(file, self.starts.get(file, 0) + offset, payload[:take]))
                payload = payload[take:]
                stream.position += take
            file += 1
        return events

    def _check_size(self, size: int) -> None:
        """Refuse ``size`` more plaintext bytes beyond the manifest or the policy."""
        stream = self._stream
        room = stream.room()
        if room is not None and size > room:
            raise RemoteProtocolError("The sender sent more bytes than its manifest announced.")
        limit = self.policy.max_bytes
        if limit is not None and stream.position + size > limit:
            # Only a stream gets here: the sizes of files were checked with the manifest.
            raise PolicyError(
                f"The sender's stream grew past {limit:,} bytes, the most this receiver "
                "accepts; what arrived was discarded. To accept more, raise the limit: "
                "--max-bytes on the command line, ReceivePolicy(max_bytes=...) in Python."
            )

    def accept(self, offers: Sequence[Offer] = ()) -> str:
        """Accept the manifest, offering the prefixes in ``offers`` (resume.py) if any.

        Only their (file, offset) go out, as ``held``: their digests stay here, to compare
        with the sender's. A digest of what the receiver had before this transfer would
        let a sender that guessed a file's name, size and time test guesses of its
        content offline.
        """
        if self.state is not ReceiverState.DECIDING:
            raise LocalProtocolError("accept answers a manifest")
        problem = check_offers(offers, _sizes(self.entries))
        if problem:
            raise LocalProtocolError(problem)
        compression = (ZSTD,) if self.compression else None
        # Named whenever the manifest offered a choice; a sender before BLAKE3 gets none.
        digest = self.digest if self._digest_offered else None
        if not offers:
            self.state = ReceiverState.STREAMING
            return encode(Accept(compression=compression, digest=digest))
        self._offers = {o.file: o for o in offers}
        self.state = ReceiverState.WAIT_RESUME
        return encode(Accept(compression=compression, digest=digest,
                             held=tuple(o.prefix for o in offers)))

    def done(self) -> str:
        if self.state is not ReceiverState.FINISHING:
            raise LocalProtocolError("done answers eof")
        self.state = ReceiverState.DONE
        return encode(Done())

    def error(self, exc: P2PCopyError) -> str:
        """The error message that tells the sender why we stop (its peer-safe text)."""
        self.state = ReceiverState.FAILED
        return encode(ErrorMessage(code=exc.wire_code, message=exc.peer_text))
