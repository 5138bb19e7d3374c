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
          <------------------------------------------------------- [ack, if it set a window]
    eof -------------------------------------------------------->
          <------------------------------------------------------- done

The data stream is every file's bytes concatenated in manifest order (each from the
offset agreed in ``resume``, else from 0), cut into binary messages of any
size, so that one message can carry many small files. A ``checksums``
message gives the digests of files whose last byte has been sent: SHA-256, or BLAKE3 if
the manifest offered it and the receiver's accept picked it (digests.py). Either side may
send ``error`` at any time and then close.

Both machines have one interface, after h11 and websockets' sans-I/O protocol: what
arrives goes into ``receive(message)``, which returns events (``ManifestReceived``,
``AcceptReceived``, ``FileData``, ...), among them ``Send(message)`` for a reply the
machine makes on its own; what the program decides to send (``hello()``, ``manifest()``,
``accept()``, ``frame_data()``, ``checksums()``, ``eof()``, ``done()``, ``error()``, ...) is
a method that returns the wire message(s), as h11's ``send``. A call in the wrong state
raises LocalProtocolError; a message in the wrong state raises RemoteProtocolError. The
transitions are the tables SENDER_TRANSITIONS and RECEIVER_TRANSITIONS below. The asyncio
layer (peer/sending.py, peer/receiving.py) does the I/O and reads no machine's state:
it reacts to the events. Nothing here reads a clock or the environment.

Flow control: the sender's first manifest part says ``ack``; a receiver that then puts a
``window`` in its accept acknowledges what it stored (``ack``), and the sender frames a
data message only while what it sent beyond the last ack is under the window
(``window_open``; ``Acked`` tells the driver when it may go on).

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..errors import (
    EncryptionMismatchError,
    Hint,
    LocalProtocolError,
    P2PCopyError,
    PolicyError,
    RemoteProtocolError,
    error_for_wire_code,
)
from .compression import DEFAULT_LEVEL, ChunkCompressor, ChunkDecompressor, CompressionStats
from .digests import SHA256, available, choose
from .messages import (
    DATA_RAW,
    DATA_RAW_AT,
    DATA_ZSTD,
    DATA_ZSTD_AT,
    MAX_CHUNK_SIZE,
    MAX_ZSTD_CONTENT,
    OFFSET_SIZE,
    ZSTD,
    Accept,
    Ack,
    Checksums,
    DataEntry,
    Done,
    Entry,
    Eof,
    ErrorMessage,
    FileEntry,
    Hello,
    Lane,
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
    "SENDER_TRANSITIONS",
    "RECEIVER_TRANSITIONS",
    "TRANSITIONS",
    "Sender",
    "Receiver",
    "Send",
    "RelayWaiting",
    "ReceiverJoined",
    "AcceptReceived",
    "TransferConfirmed",
    "SenderJoined",
    "ManifestReceived",
    "FileData",
    "FileCompleted",
    "TransferFinished",
    "ResumeAgreed",
    "Acked",
    "LaneOpened",
    "LANE_WINDOW",
    "ACK_STEP",
    "SenderEvent",
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
#: The window our receiver announces when lanes are agreed (§6.12): room for 8 lanes of
#: 4 MiB TCP windows on both legs of the relay. It bounds the receiver's reorder buffer
#: and what the sender keeps to send again after a lane drops.
LANE_WINDOW = 64 * 2**20
#: With lanes, our receiver acknowledges every ACK_STEP bytes it stored (and the last).
ACK_STEP = 2 * 2**20


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
    #: Prefixes were offered (``held``): the sender's ``prefix_digests`` (or, from a
    #: sender that ignores them, data, checksums or eof) is next.
    WAIT_PREFIX_DIGESTS = 7


# --- The transitions -------------------------------------------------------------------
#
# Rules (docs/protocol.md §6.2 and §6.3 print these tables; tests/test_state_tables.py
# fails when the two differ):
#
# - A machine is in one state. Its inputs are what it sends ("send hello": a method
#   call) and what it receives ("receive ready": receive()), named by the message's
#   ``type``; a binary data message is "data".
# - An input not listed under the current state is illegal: one received is the peer's
#   fault (RemoteProtocolError; the machine is then FAILED and stays so), one sent is
#   ours (LocalProtocolError, a bug in the driver; the state does not change).
# - Where a message's content leads elsewhere, the input says which: "receive accept
#   with held", "receive accept with resume" (an older receiver's digests, §6.5.2),
#   "receive manifest with more" (a part that is not the last).
# - Sending or receiving ``error``, and any failure, lead from every state to FAILED;
#   those rows are not listed.
# - The table says which inputs a state admits; the rules about their content (sizes,
#   the order of checksums, eof only after every byte, the relay's ``waiting`` only once
#   and before anything from the peer) are checked by the code that takes the input.
# - The encryption handshake (§6.0) is not a state: peer/handshake.py runs it on the
#   link below these machines (sender: after ``ready``; receiver: after ``hello``), and
#   they only see the messages inside it.
#
# The tables are built once, here; receive() and the methods only look them up.

_S = SenderState
_R = ReceiverState

#: state -> input -> next state, for the sender.
SENDER_TRANSITIONS: Final[Mapping[SenderState, Mapping[str, SenderState]]] = {
    _S.START: {"send hello": _S.WAIT_READY},
    _S.WAIT_READY: {"receive waiting": _S.WAIT_READY, "receive ready": _S.SEND_MANIFEST},
    _S.SEND_MANIFEST: {"send manifest": _S.WAIT_ACCEPT},
    _S.WAIT_ACCEPT: {
        "receive accept": _S.STREAMING,
        "receive accept with held": _S.PROVING,
        "receive accept with resume": _S.VERIFYING,
    },
    _S.PROVING: {"send prefix_digests": _S.WAIT_RESUME},
    _S.WAIT_RESUME: {"receive resume": _S.STREAMING},
    _S.VERIFYING: {"send resume": _S.STREAMING},
    _S.STREAMING: {
        "send data": _S.STREAMING,
        "send checksums": _S.STREAMING,
        "send lane": _S.STREAMING,
        "send eof": _S.WAIT_DONE,
        "receive ack": _S.STREAMING,
    },
    # Acks of the last bytes may come after eof has gone.
    _S.WAIT_DONE: {"receive done": _S.DONE, "receive ack": _S.WAIT_DONE},
    _S.DONE: {},
    _S.FAILED: {},
}

#: state -> input -> next state, for the receiver.
RECEIVER_TRANSITIONS: Final[Mapping[ReceiverState, Mapping[str, ReceiverState]]] = {
    _R.START: {"send hello": _R.WAIT_MANIFEST},
    _R.WAIT_MANIFEST: {
        "receive waiting": _R.WAIT_MANIFEST,
        "receive manifest with more": _R.WAIT_MANIFEST,
        "receive manifest": _R.DECIDING,
    },
    _R.DECIDING: {"send accept": _R.STREAMING, "send accept with held": _R.WAIT_PREFIX_DIGESTS},
    # A sender that does not know ``held`` goes on as if nothing were held.
    _R.WAIT_PREFIX_DIGESTS: {
        "receive prefix_digests": _R.STREAMING,
        "receive data": _R.STREAMING,
        "receive checksums": _R.STREAMING,
        "receive eof": _R.FINISHING,
    },
    _R.STREAMING: {
        "receive data": _R.STREAMING,
        "receive checksums": _R.STREAMING,
        "receive lane": _R.STREAMING,
        "receive eof": _R.FINISHING,
    },
    _R.FINISHING: {"send done": _R.DONE},
    _R.DONE: {},
    _R.FAILED: {},
}

#: Both tables by role, as h11 keeps them.
TRANSITIONS: Final[Mapping[Role, Mapping[SenderState, Mapping[str, SenderState]]
                           | Mapping[ReceiverState, Mapping[str, ReceiverState]]]] = {
    "sender": SENDER_TRANSITIONS,
    "receiver": RECEIVER_TRANSITIONS,
}


# --- Events ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send ``message`` to the peer: a reply the machine made on its own."""

    message: str


@dataclass(frozen=True)
class RelayWaiting:
    """The relay confirmed that the room is ours; ``ready`` follows when a receiver joins."""


@dataclass(frozen=True)
class ReceiverJoined:
    """``ready``: the receiver is there; send the manifest (after the handshake, if any)."""


@dataclass(frozen=True)
class AcceptReceived:
    """The receiver accepted the manifest and picked ``digest``, the hash of the checksums.

    ``held``: prefixes it holds; show our digests of them with prefix_digests(). ``offers``
    (not None): an older receiver's prefixes with its digests (§6.5.2), maybe none; answer
    with resume(). Neither: stream every file from 0.
    """

    digest: str
    held: tuple[Prefix, ...] = ()
    offers: tuple[Offer, ...] | None = None


@dataclass(frozen=True)
class Acked:
    """The receiver stored ``bytes`` of this connection's data stream: the window moved."""

    bytes: int


@dataclass(frozen=True)
class LaneOpened:
    """The sender opened lane ``lane`` (§6.12): join its room, prove its keys, take data."""

    lane: int


@dataclass(frozen=True)
class TransferConfirmed:
    """``done``: the receiver has every file, verified and under its final name."""


@dataclass(frozen=True)
class SenderJoined:
    """The first message from the sender arrived (the relay's ``waiting`` is not one)."""


@dataclass(frozen=True)
class ManifestReceived:
    """The whole manifest arrived and its paths are safe; call accept() or error().

    ``digest``: the hash this receiver picked from the manifest's offer (SHA-256 if none).
    """

    entries: tuple[Entry, ...]
    digest: str = SHA256

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

    Both sides get it once the ``resume`` is known. The receiver gets it before any
    FileData of the transfer whenever prefixes were offered. ``differs``: files whose
    prefix the sender showed (in ``prefix_digests``) to be other than the receiver's; a
    held file in neither was not compared (the sender ignored the offer or could not
    read its prefix).
    """

    starts: dict[int, int]
    differs: frozenset[int] = frozenset()


SenderEvent = (RelayWaiting | ReceiverJoined | AcceptReceived | ResumeAgreed | Acked
               | TransferConfirmed)
ReceiverEvent = (SenderJoined | ManifestReceived | ResumeAgreed | FileData | FileCompleted
                 | TransferFinished | LaneOpened | Send)


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
    """The sending peer: announces the entries, streams their bytes, waits for ``done``.

    Read-only for its driver: ``state``, ``digest`` (the agreed hash), ``bytes_sent`` and
    ``compression_stats`` (counters a display shows), ``window_open`` (whether a data
    message may go now); everything else it learns from the events of receive().
    """

    def __init__(
        self,
        room_hash: str,
        entries: Sequence[Entry],
        *,
        manifest_part_bytes: int = MANIFEST_PART_BYTES,
        fresh: bool = False,
        digests: Sequence[str] | None = None,
        lanes: int = 1,
    ) -> None:
        self.state = SenderState.START
        #: The hash algorithms the manifest offers, best first: those of ``digests`` this
        #: peer can hash (SHA-256 if none), by default all it can (digests.available(); the
        #: driver passes digests.preferred(), which the environment may limit).
        self.digests_offered = available() if digests is None else (
            tuple(name for name in digests if name in available()) or (SHA256,))
        #: The one the receiver picked in its accept (SHA-256 until then, and if it says none).
        self.digest = SHA256
        #: codes.room_hash_hex() of the code: the room the hello asks the relay for.
        self.room_hash = room_hash
        #: The code was just generated: the relay must not pair it with anyone waiting.
        self.fresh = fresh
        self._waiting_seen = False
        self.entries = tuple(entries)
        self._part_bytes = manifest_part_bytes
        self._stream = _Stream(_sizes(self.entries))
        #: What an older receiver offered in its accept (state VERIFYING), checked for shape.
        self._offers: tuple[Offer, ...] = ()
        #: The prefixes the receiver holds (state PROVING), checked for shape.
        self._held: tuple[Prefix, ...] = ()
        #: What prefix_digests told the receiver, by file number.
        self._claims: dict[int, Offer] = {}
        #: The receiver's accept listed "zstd": frame_data may send DATA_ZSTD messages.
        self.peer_accepts_zstd = False
        self._compressor: ChunkCompressor | None = None
        #: The receiver's flow-control window (§6.6.2); None: it set none.
        self.window: int | None = None
        #: The largest ``bytes`` of its acks on this connection.
        self._acked = 0
        # Lanes (§6.12) are offered only without a stream entry: a stream's size is fixed
        # by its checksum, which must not overtake its bytes on another lane.
        streams = any(isinstance(e, StreamEntry) for e in self.entries)
        self._lanes_offered = 1 if streams else lanes
        #: The lanes agreed in the accept (1: none, the plain data messages of §6.6).
        self.lanes = 1
        self._lanes_opened: set[int] = set()

    @property
    def acked(self) -> int:
        """The largest ``bytes`` the receiver acknowledged on this connection."""
        return self._acked

    @property
    def lanes_offered(self) -> int:
        """The most lanes the manifest offers (1: none, as with a stream entry)."""
        return self._lanes_offered

    @property
    def bytes_left(self) -> int:
        """Bytes of the data stream still to frame (0 while a stream's size is unknown)."""
        return self._stream.room() or 0

    @property
    def data_start(self) -> int:
        """Where frame_data() wants the chunk in its buffer: after the kind byte, and the
        offset once lanes are agreed."""
        return 1 + OFFSET_SIZE if self.lanes > 1 else 1

    @property
    def compression_stats(self) -> CompressionStats | None:
        """What compression did so far, or None if frame_data never tried it."""
        return None if self._compressor is None else self._compressor.stats

    @property
    def bytes_sent(self) -> int:
        """Bytes of file data framed so far (resumed prefixes are not sent, so not counted)."""
        return self._stream.position

    @property
    def window_open(self) -> bool:
        """Whether frame_data() may send now: always, unless the receiver set a window and
        what was sent beyond its last ack has reached it (then wait for Acked)."""
        return self.window is None or self._stream.position - self._acked < self.window

    def _next(self, action: str) -> SenderState:
        """The state after sending ``action``, or LocalProtocolError if it is not allowed."""
        following = SENDER_TRANSITIONS[self.state].get(action)
        if following is None:
            raise LocalProtocolError(f"sender cannot do that in state {self.state.name}")
        return following

    def hello(self) -> str:
        self.state = self._next("send hello")
        return encode(Hello(code_hash_hex=self.room_hash, role="sender",
                            version=HELLO_VERSION, fresh=self.fresh or None))

    def manifest(self) -> Iterator[str]:
        """The manifest as one or more text messages, each under the part size.

        Send each part as it comes: the next is encoded meanwhile (see encode_manifest).
        """
        self.state = self._next("send manifest")
        # Only SHA-256: no offer, and the manifest is what a peer before BLAKE3 sends.
        offer = None if self.digests_offered == (SHA256,) else self.digests_offered
        # ack: this sender honours a window (window_open); receivers before it ignore it,
        # and lanes too.
        lanes = self._lanes_offered if self._lanes_offered > 1 else None
        return encode_manifest(self.entries, self._part_bytes, offer, ack=True, lanes=lanes)

    def receive(self, message: str | bytes) -> list[SenderEvent]:
        """Feed a message from the relay or the receiver; return what it means."""
        if isinstance(message, (bytes, bytearray, memoryview)):
            raise self._fail(RemoteProtocolError("the receiver sent binary data to the sender"))
        try:
            parsed = parse_message(message)
            if isinstance(parsed, ErrorMessage):
                raise peer_error(parsed, "receiver")
            following = SENDER_TRANSITIONS[self.state].get(_sender_input(parsed))
            if following is None or (isinstance(parsed, Waiting) and self._waiting_seen):
                raise RemoteProtocolError(
                    f"'{parsed.type}' arrived while the sender was in state {self.state.name}")
            events = _SENDER_TAKES[type(parsed)](self, parsed)
        except P2PCopyError as exc:
            raise self._fail(exc) from None
        self.state = following
        return events

    def _take_waiting(self, message: Waiting) -> list[SenderEvent]:
        # The relay confirms that the room is ours; ``ready`` follows when a receiver joins.
        self._waiting_seen = True
        return [RelayWaiting()]

    def _take_ready(self, message: Ready) -> list[SenderEvent]:
        return [ReceiverJoined()]

    def _take_accept(self, message: Accept) -> list[SenderEvent]:
        # Names we do not know are ignored: the receiver may decode more than we send.
        self.peer_accepts_zstd = ZSTD in (message.compression or ())
        # Only a missing field means SHA-256 (§6.5); "" is a name nobody offered.
        digest = SHA256 if message.digest is None else message.digest
        if digest != SHA256 and digest not in self.digests_offered:
            raise RemoteProtocolError(
                f"The receiver broke the protocol: it picked the hash {digest!r}, which "
                "the manifest did not offer.")
        self.digest = digest
        # Our manifest said ``ack``, so any receiver may set a window.
        self.window = message.window
        if message.lanes is not None:
            if self._lanes_offered < 2:
                raise RemoteProtocolError(
                    "The receiver broke the protocol: it answered 'lanes' to a manifest "
                    "that offered none.")
            agreed = min(self._lanes_offered, message.lanes)
            if agreed > 1 and message.window is None:
                raise RemoteProtocolError(
                    "The receiver broke the protocol: it took lanes without a 'window'.")
            self.lanes = agreed
        offers = message.held or message.resume or ()
        problem = check_offers(offers, _sizes(self.entries))
        if problem:
            raise RemoteProtocolError(f"The receiver broke the protocol: {problem}.")
        if message.held:
            self._held = message.held
            return [AcceptReceived(digest, held=message.held)]
        if message.resume is not None:
            # A receiver before ``held`` showed its digests; nothing to hide any more.
            self._offers = message.resume
            return [AcceptReceived(digest, offers=message.resume)]
        return [AcceptReceived(digest)]

    def _take_resume(self, message: Resume) -> list[SenderEvent]:
        """The receiver's ``resume``: prefixes we showed and it found equal."""
        starts: dict[int, int] = {}
        for file, offset in message.files:
            claim = self._claims.get(file)
            if claim is None or claim.offset != offset or file in starts:
                raise RemoteProtocolError(
                    f"The receiver broke the protocol: it resumes file {file} at {offset}, "
                    "which the sender did not show a digest for.")
            starts[file] = offset
        self._stream = _Stream(_remaining(_sizes(self.entries), starts))
        return [ResumeAgreed(starts, frozenset(self._claims) - frozenset(starts))]

    def _take_done(self, message: Done) -> list[SenderEvent]:
        return [TransferConfirmed()]

    def _take_ack(self, message: Ack) -> list[SenderEvent]:
        # Counts are of this connection's data stream: _stream starts anew with each Sender.
        if self.window is None:
            raise RemoteProtocolError(
                "The receiver broke the protocol: it sent 'ack' without a 'window' in its "
                "accept.")
        if not self._acked <= message.bytes <= self._stream.position:
            raise RemoteProtocolError(
                f"The receiver broke the protocol: it acknowledged {message.bytes} bytes "
                f"after {self._acked}, of {self._stream.position} sent.")
        self._acked = message.bytes
        return [Acked(message.bytes)]

    def prefix_digests(self, digests: Sequence[Offer]) -> str:
        """The ``prefix_digests`` message: our digest of each held prefix we could read.

        ``digests`` must name prefixes among AcceptReceived.held; the others are sent from 0.
        """
        following = self._next("send prefix_digests")
        held = set(self._held)
        claims = {o.file: o for o in digests}
        if len(claims) != len(digests) or not all(o.prefix in held for o in digests):
            raise LocalProtocolError("only prefixes the receiver holds can be shown, once")
        self._claims = claims
        self.state = following
        return encode(PrefixDigests(files=tuple(digests)))

    def resume(self, accepted: Sequence[Offer]) -> str:
        """The ``resume`` message for the offers whose prefixes match our sources.

        ``accepted`` must be among AcceptReceived.offers; every other file is sent from 0.
        """
        following = self._next("send resume")
        if not set(accepted) <= set(self._offers):
            raise LocalProtocolError("only offers the receiver made can be accepted")
        starts = {o.file: o.offset for o in accepted}
        self._stream = _Stream(_remaining(_sizes(self.entries), starts))
        self.state = following
        return encode(Resume(files=tuple((o.file, o.offset) for o in accepted)))

    def lane(self, lane: int) -> str:
        """The ``lane`` message that tells the receiver to join lane ``lane`` (§6.12), which
        the caller has opened; each lane number once per connection."""
        following = self._next("send lane")
        if not 1 <= lane < self.lanes or lane in self._lanes_opened:
            raise LocalProtocolError(f"lane {lane} is not one to open")
        self._lanes_opened.add(lane)
        self.state = following
        return encode(Lane(lane))

    def frame_data(
        self, buffer: bytearray, length: int, compress: bool = False
    ) -> memoryview | bytes:
        """Turn ``buffer[s:s+length]`` (filled by the caller; s = ``data_start``) into a
        data message.

        A raw message is made in place: writing the header into the caller's buffer keeps
        file bytes from being copied. With ``compress`` and a receiver that accepts zstd,
        the chunk is offered to the compressor first and, if it shrinks enough, sent as a
        new DATA_ZSTD message instead. Either way ``length`` plaintext bytes are sent.
        With lanes, the header also says at which offset of the data stream they belong.
        """
        self.state = self._next("send data")
        if length <= 0:
            raise LocalProtocolError("a data message must carry at least one byte")
        if not self.window_open:
            raise LocalProtocolError("the receiver's window is full: wait for its ack")
        start = self.data_start
        if len(buffer) < start + length:
            raise LocalProtocolError("the buffer is shorter than the data it should carry")
        room = self._stream.room()
        if room is not None and length > room:
            raise LocalProtocolError("more data than the manifest announced")
        at = self._stream.position.to_bytes(OFFSET_SIZE, "big") if self.lanes > 1 else b""
        if compress and self.peer_accepts_zstd:
            if self._compressor is None:
                self._compressor = ChunkCompressor(DEFAULT_LEVEL)
            with memoryview(buffer) as view, view[start : start + length] as chunk:
                frame = self._compressor.compress(chunk)
            if frame is not None:
                self._stream.position += length
                return b"".join((bytes((DATA_ZSTD_AT if at else DATA_ZSTD,)), at, frame))
        buffer[0] = DATA_RAW_AT if at else DATA_RAW
        buffer[1:start] = at
        self._stream.position += length
        return memoryview(buffer)[: start + length]

    def checksums(self, digests: Sequence[str]) -> list[str]:
        """Checksums messages for the next files whose bytes have all been framed.

        ``digests`` are in the agreed algorithm (``digest``).
        """
        self.state = self._next("send checksums")
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

    @property
    def all_acked(self) -> bool:
        """Whether the receiver acknowledged every byte sent: with lanes, eof waits for it."""
        return self._acked == self._stream.position

    def eof(self) -> str:
        following = self._next("send eof")
        if not self._stream.finished():
            raise LocalProtocolError("eof before every byte and checksum was sent")
        if self.lanes > 1 and not self.all_acked:
            raise LocalProtocolError("with lanes, eof waits until every byte was acknowledged")
        self.state = following
        return encode(Eof())

    def error(self, exc: P2PCopyError) -> str:
        """The error message that tells the receiver why we stop (its peer-safe text)."""
        self.state = SenderState.FAILED
        return encode(ErrorMessage(code=exc.wire_code, message=exc.peer_text))

    def _fail(self, exc: P2PCopyError) -> P2PCopyError:
        self.state = SenderState.FAILED
        return exc


def _sender_input(message: object) -> str:
    """The row of SENDER_TRANSITIONS that receiving ``message`` is."""
    if isinstance(message, Accept):
        if message.held:
            return "receive accept with held"
        if message.resume is not None:
            return "receive accept with resume"
    return "receive " + getattr(message, "type", "?")


_SenderTake = Callable[[Sender, Any], list[SenderEvent]]
#: Who takes each message the sender may receive; the table has said it is in turn.
_SENDER_TAKES: Final[Mapping[type, _SenderTake]] = {
    Waiting: Sender._take_waiting,
    Ready: Sender._take_ready,
    Accept: Sender._take_accept,
    Resume: Sender._take_resume,
    Done: Sender._take_done,
    Ack: Sender._take_ack,
}


class Receiver:
    """The receiving peer: checks the manifest, splits the stream into files, confirms.

    With ``compression`` (the default) its accept offers zstd and DATA_ZSTD messages are
    decoded, each bounded by MAX_ZSTD_CONTENT and by what the manifest and policy leave;
    without it they are a protocol violation.

    Read-only for its driver: ``state``, ``digest``, ``entries``, ``bytes_received`` and
    ``compression_stats``; everything else it learns from the events of receive().
    """

    def __init__(
        self,
        room_hash: str,
        *,
        max_entries: int | None = None,
        policy: ReceivePolicy | None = None,
        compression: bool = True,
        digests: Sequence[str] | None = None,
        lanes: int = 1,
    ) -> None:
        self.state = ReceiverState.START
        #: The hash algorithms it may pick from the manifest's offer (default: all this peer
        #: has, digests.available(); the driver passes digests.preferred()).
        self.digests_allowed = tuple(digests) if digests is not None else available()
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
        self._starts: dict[int, int] = {}
        self._lanes_cap = lanes
        self._lanes_offered = 1
        #: The lanes agreed in our accept (1: none); with lanes, ``window`` is set.
        self.lanes = 1
        self.window: int | None = None
        self._lanes_opened: set[int] = set()
        #: Data that arrived ahead of its place: stream offset -> its plaintext.
        self._ahead: dict[int, memoryview] = {}
        self._ahead_bytes = 0
        #: Checksums that arrived (on lane 0) before their files' bytes (on other lanes).
        self._pending: list[FileCompleted] = []
        self._announced = 0
        #: ``bytes`` of our last ack.
        self.acked = 0

    @property
    def bytes_received(self) -> int:
        return self._stream.position

    @property
    def ack_due(self) -> bool:
        """Whether to send an ack now (with lanes): ACK_STEP stored since the last, or the
        last bytes of the stream."""
        position = self._stream.position
        return self.window is not None and position > self.acked and (
            position - self.acked >= ACK_STEP or position == self._stream.total)

    def ack(self) -> str:
        """The ``ack`` of every byte received so far; call it once they were handed to
        storage."""
        if self.window is None or self.state not in (ReceiverState.STREAMING,
                                                     ReceiverState.FINISHING):
            raise LocalProtocolError("ack only after an accept with a window, while streaming")
        self.acked = self._stream.position
        return encode(Ack(self.acked))

    @property
    def compression_stats(self) -> CompressionStats | None:
        """What the DATA_ZSTD messages carried so far, or None if none arrived."""
        return None if self._decompressor is None else self._decompressor.stats

    def _next(self, action: str, why: str) -> ReceiverState:
        """The state after sending ``action``, or LocalProtocolError(``why``)."""
        following = RECEIVER_TRANSITIONS[self.state].get(action)
        if following is None:
            raise LocalProtocolError(why)
        return following

    def hello(self) -> str:
        self.state = self._next("send hello", "hello is sent once, first")
        return encode(Hello(code_hash_hex=self.room_hash, role="receiver",
                            version=HELLO_VERSION))

    def receive(self, message: str | bytes) -> list[ReceiverEvent]:
        """Feed a message from the sender (or the relay); return what it means, in order."""
        try:
            if isinstance(message, (bytes, bytearray, memoryview)):
                return self._receive_data(memoryview(message))
            return self._receive_control(parse_message(message))
        except P2PCopyError as exc:
            self.state = ReceiverState.FAILED
            raise exc from None

    def _receive_control(self, msg: object) -> list[ReceiverEvent]:
        if isinstance(msg, ErrorMessage):
            raise peer_error(msg, "sender")
        following = RECEIVER_TRANSITIONS[self.state].get(_receiver_input(msg))
        # Only before anything else from the sender (its manifest may come in parts).
        first = self.state is ReceiverState.WAIT_MANIFEST and not self._parts
        if (isinstance(msg, Waiting) and first and following is not None
                and not self._waiting_seen):
            self._waiting_seen = True  # the relay's word that no sender is there yet
            return []
        if isinstance(msg, Pake) and first:
            raise EncryptionMismatchError(
                "The sender encrypts, but the receiver was started with --no-encrypt. "
                "Run both sides with encryption (the default)."
            )
        if following is None or isinstance(msg, Waiting):
            kind = getattr(msg, "type", "?")
            raise RemoteProtocolError(
                f"The sender broke the protocol: '{kind}' arrived in state {self.state.name}."
            )
        events: list[ReceiverEvent] = []
        if not self._sender_spoke:
            self._sender_spoke = True
            events.append(SenderJoined())
        if self.state is ReceiverState.WAIT_PREFIX_DIGESTS and not isinstance(
                msg, PrefixDigests):
            # A sender from before resume ignores the offers: everything comes from 0.
            events.append(self._agree({}))
        events += _RECEIVER_TAKES[type(msg)](self, msg)
        self.state = following
        return events

    def _take_manifest(self, part: Manifest) -> list[ReceiverEvent]:
        self._manifest_parts += 1
        if self._manifest_parts == 1 and part.digests is not None:
            self._digest_offered = True
            self.digest = choose(part.digests, self.digests_allowed)
        if self._manifest_parts == 1 and part.ack and part.lanes is not None:
            self._lanes_offered = part.lanes
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
        return [ManifestReceived(self.entries, self.digest)]

    def _take_prefix_digests(self, message: PrefixDigests) -> list[ReceiverEvent]:
        """The sender's digests of the prefixes we hold, against ours: equal ones resume,
        and the ``resume`` that says so goes back."""
        starts: dict[int, int] = {}
        differs: set[int] = set()
        for claim in message.files:
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
        return [self._agree(starts, frozenset(differs)),
                Send(encode(Resume(files=tuple(starts.items()))))]

    def _agree(self, starts: dict[int, int],
               differs: frozenset[int] = frozenset()) -> ResumeAgreed:
        self._starts = starts
        self._stream = _Stream(_remaining(_sizes(self.entries), starts))
        return ResumeAgreed(dict(starts), differs)

    def _take_checksums(self, msg: Checksums) -> list[ReceiverEvent]:
        if self.lanes > 1:
            return self._take_checksums_ahead(msg)
        problem = self._stream.check_checksums(msg.first, len(msg.digests))
        if msg.algorithm != self.digest:
            problem = f"it sent {msg.algorithm} checksums, not the agreed {self.digest}"
        if problem:
            raise RemoteProtocolError(f"The sender broke the protocol: {problem}.")
        self._stream.checksummed += len(msg.digests)
        return [FileCompleted(msg.first + i, d) for i, d in enumerate(msg.digests)]

    def _take_checksums_ahead(self, msg: Checksums) -> list[ReceiverEvent]:
        """With lanes, checksums may overtake their files' bytes: kept until those came.

        No stream entry travels with lanes, so a checksum never fixes a size.
        """
        if msg.algorithm != self.digest:
            raise RemoteProtocolError(
                f"The sender broke the protocol: it sent {msg.algorithm} checksums, not "
                f"the agreed {self.digest}.")
        if msg.first != self._announced or msg.first + len(msg.digests) > self._stream.count:
            raise RemoteProtocolError(
                f"The sender broke the protocol: checksums for files {msg.first} and on "
                f"arrived, file {self._announced} was next.")
        self._announced += len(msg.digests)
        self._pending += [FileCompleted(msg.first + i, d) for i, d in enumerate(msg.digests)]
        return self._complete([])

    def _complete(self, events: list[ReceiverEvent]) -> list[ReceiverEvent]:
        """``events``, then FileCompleted for the pending checksums whose bytes all came."""
        stream = self._stream
        ready = stream.files_complete() - stream.checksummed
        if ready > 0 and self._pending:
            events += self._pending[:ready]
            stream.checksummed += len(self._pending[:ready])
            del self._pending[:ready]
        return events

    def _take_lane(self, msg: Lane) -> list[ReceiverEvent]:
        if not msg.lane < self.lanes or msg.lane in self._lanes_opened:
            raise RemoteProtocolError(
                f"The sender broke the protocol: it opened lane {msg.lane}, which was not "
                "agreed or is open already.")
        self._lanes_opened.add(msg.lane)
        return [LaneOpened(msg.lane)]

    def _take_eof(self, msg: Eof) -> list[ReceiverEvent]:
        stream = self._stream
        if not stream.finished():
            total = "a stream of unknown length" if stream.open_end else stream.total
            raise RemoteProtocolError(
                f"The sender ended the transfer early: {stream.position} of "
                f"{total} bytes and {stream.checksummed} of "
                f"{stream.count} checksums arrived."
            )
        return [TransferFinished()]

    def _receive_data(self, data: memoryview) -> list[ReceiverEvent]:
        # The per-chunk path: one table lookup, one list of FileData, nothing more.
        following = RECEIVER_TRANSITIONS[self.state].get("receive data")
        if following is None:
            raise RemoteProtocolError(
                f"The sender broke the protocol: data arrived in state {self.state.name}."
            )
        events: list[ReceiverEvent] = []
        if self.state is ReceiverState.WAIT_PREFIX_DIGESTS:
            # A sender from before resume ignores the offers: everything comes from 0.
            events.append(self._agree({}))
        self.state = following
        if self.lanes > 1:
            return events + self._receive_at(data)
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
        return self._place(payload, events)

    def _receive_at(self, data: memoryview) -> list[ReceiverEvent]:
        """A data message of a transfer with lanes: placed by its offset, in order.

        What arrives ahead of its place waits, within the window: an honest sender never
        has more than the window beyond our last ack. What arrived already (sent again
        after a lane dropped) is dropped.
        """
        header = 1 + OFFSET_SIZE
        kind = data[0] if len(data) > header else None
        if kind not in (DATA_RAW_AT, DATA_ZSTD_AT) or (kind == DATA_ZSTD_AT
                                                       and not self.compression):
            raise RemoteProtocolError(
                "The sender sent a data message of unknown format (lanes were agreed: "
                "each says its offset).")
        offset = int.from_bytes(data[1:header], "big")
        payload = data[header:]
        assert self.window is not None
        stream = self._stream
        if offset >= self.acked + self.window:
            raise RemoteProtocolError(
                f"The sender broke the protocol: data at offset {offset} is beyond the "
                f"window of {self.window} bytes after the last ack ({self.acked}).")
        if offset < stream.position or offset in self._ahead:
            return []  # sent again after a lane dropped: we have it
        if kind == DATA_ZSTD_AT:
            if self._decompressor is None:
                self._decompressor = ChunkDecompressor(MAX_ZSTD_CONTENT)
            self._check_size(self._decompressor.declared_size(payload), offset)
            payload = memoryview(self._decompressor.decompress(payload))
        else:
            self._check_size(len(payload), offset)
        if offset > stream.position:
            if self._ahead_bytes + len(payload) > self.window + MAX_CHUNK_SIZE:
                raise RemoteProtocolError(
                    "The sender broke the protocol: more data ahead of its place than the "
                    "window allows.")
            self._ahead[offset] = payload
            self._ahead_bytes += len(payload)
            return []
        events = self._place(payload, [])
        while (following := self._ahead.pop(stream.position, None)) is not None:
            self._ahead_bytes -= len(following)
            events = self._place(following, events)
        return self._complete(events)

    def _place(self, payload: memoryview, events: list[ReceiverEvent]) -> list[ReceiverEvent]:
        """FileData events for ``payload``, the next bytes of the stream, after ``events``."""
        stream = self._stream
        file = stream.files_complete()
        while payload:
            if file == len(stream.sizes):  # the open stream: it takes everything
                start, size = stream.total, stream.position - stream.total + len(payload)
            else:
                start, size = stream.ends[file] - stream.sizes[file], stream.sizes[file]
            offset = stream.position - start
            take = min(len(payload), size - offset)
            if take:
                events.append(FileData(file, self._starts.get(file, 0) + offset,
                                       payload[:take]))
                payload = payload[take:]
                stream.position += take
            file += 1
        return events

    def _check_size(self, size: int, offset: int | None = None) -> None:
        """Refuse ``size`` more plaintext bytes (at ``offset``, else the position) beyond
        the manifest or the policy."""
        stream = self._stream
        room = stream.room()
        if room is not None and offset is not None:
            room -= offset - stream.position
        if room is not None and size > room:
            raise RemoteProtocolError("The sender sent more bytes than its manifest announced.")
        limit = self.policy.max_bytes
        if limit is not None and stream.position + size > limit:
            # Only a stream gets here: the sizes of files were checked with the manifest.
            raise PolicyError(
                f"The sender's stream grew past {limit:,} bytes, the most this receiver "
                "accepts; what arrived was discarded.",
                hint=Hint("max_bytes", "raise the limit with {} to accept more"),
            )

    def accept(self, offers: Sequence[Offer] = ()) -> str:
        """Accept the manifest, offering the prefixes in ``offers`` (resume.py) if any.

        Only their (file, offset) go out, as ``held``: their digests stay here, to compare
        with the sender's. A digest of what the receiver had before this transfer would
        let a sender that guessed a file's name, size and time test guesses of its
        content offline.
        """
        following = self._next("send accept with held" if offers else "send accept",
                               "accept answers a manifest")
        problem = check_offers(offers, _sizes(self.entries))
        if problem:
            raise LocalProtocolError(problem)
        compression = (ZSTD,) if self.compression else None
        # Named whenever the manifest offered a choice; a sender before BLAKE3 gets none.
        digest = self.digest if self._digest_offered else None
        self.state = following
        lanes = None
        # No stream entry travels with lanes: its checksum would fix its size too early.
        if self._lanes_offered > 1 and self._lanes_cap > 1 and not self._stream.open_end:
            lanes = self._lanes_cap
            self.lanes = min(self._lanes_cap, self._lanes_offered)
            self.window = LANE_WINDOW
        self._offers = {o.file: o for o in offers}
        return encode(Accept(compression=compression, digest=digest, window=self.window,
                             lanes=lanes, held=tuple(o.prefix for o in offers) or None))

    def done(self) -> str:
        self.state = self._next("send done", "done answers eof")
        return encode(Done())

    def error(self, exc: P2PCopyError) -> str:
        """The error message that tells the sender why we stop (its peer-safe text)."""
        self.state = ReceiverState.FAILED
        return encode(ErrorMessage(code=exc.wire_code, message=exc.peer_text))


def _receiver_input(message: object) -> str:
    """The row of RECEIVER_TRANSITIONS that receiving ``message`` is."""
    if isinstance(message, Manifest) and message.more:
        return "receive manifest with more"
    return "receive " + getattr(message, "type", "?")


_ReceiverTake = Callable[[Receiver, Any], list[ReceiverEvent]]
#: Who takes each message the receiver may receive; the table has said it is in turn.
_RECEIVER_TAKES: Final[Mapping[type, _ReceiverTake]] = {
    Manifest: Receiver._take_manifest,
    PrefixDigests: Receiver._take_prefix_digests,
    Checksums: Receiver._take_checksums,
    Lane: Receiver._take_lane,
    Eof: Receiver._take_eof,
}
