"""The wire format: every message p2p-copy sends, parsed strictly and encoded compactly.

Control messages are WebSocket text messages holding one JSON object with a ``type``;
file bytes travel in binary messages whose first byte says how the rest is encoded.
Nothing here does I/O: parsing turns untrusted input into frozen dataclasses or raises
``RemoteProtocolError``. docs/protocol.md is the normative description of this module.
"""

from __future__ import annotations

import enum
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from ..errors import IncompatiblePeerError, RemoteProtocolError
from .digests import HEX_DIGEST, NAMES, SHA256
from .resume import Offer, Prefix

__all__ = [
    "PROTOCOL_VERSION",
    "MIN_WINDOW",
    "MAX_WINDOW",
    "CloseCode",
    "encode_manifest",
    "DATA_RAW",
    "DATA_ZSTD",
    "DATA_RAW_AT",
    "DATA_ZSTD_AT",
    "OFFSET_SIZE",
    "MAX_LANES",
    "Lane",
    "MAX_ZSTD_CONTENT",
    "ZSTD",
    "Role",
    "Hello",
    "Ready",
    "Waiting",
    "Pake",
    "Confirm",
    "FileEntry",
    "DirEntry",
    "StreamEntry",
    "Entry",
    "DataEntry",
    "Manifest",
    "Accept",
    "Resume",
    "PrefixDigests",
    "Checksums",
    "Eof",
    "Done",
    "Ack",
    "ErrorMessage",
    "Message",
    "parse_hello",
    "parse_message",
    "encode",
]

#: Version of the peer-to-peer protocol spoken after pairing; carried in the manifest.
PROTOCOL_VERSION: Final = 1

#: First byte of a binary message: the rest is raw bytes of the file stream.
DATA_RAW: Final = 0x00
#: First byte of a binary message: the rest is one zstd frame holding the next bytes of the
#: file stream. Only sent to a receiver whose ``accept`` listed ``ZSTD`` in ``compression``.
DATA_ZSTD: Final = 0x01
#: With lanes (§6.12): first byte of a data message whose next 8 bytes are the big-endian
#: offset in the data stream where the rest, raw bytes, belongs.
DATA_RAW_AT: Final = 0x02
#: With lanes: the same offset, then one zstd frame (as DATA_ZSTD) of the bytes there.
DATA_ZSTD_AT: Final = 0x03
#: Bytes of the offset after the kind byte of DATA_RAW_AT and DATA_ZSTD_AT.
OFFSET_SIZE: Final = 8
#: The largest ``lanes`` a manifest or accept may carry (§6.12).
MAX_LANES: Final = 64
#: Name of the zstd algorithm in ``accept.compression``.
ZSTD: Final = "zstd"
#: Bytes of file data per data message our senders use by default, and the most they
#: may be set to. 64-256 KiB beat 1 MiB and more on loopback (benchmarks/README.md).
DEFAULT_CHUNK_SIZE: Final = 256 * 1024
MAX_CHUNK_SIZE: Final = 2**20
#: Most bytes of the file stream one DATA_ZSTD message may carry (its frame's content
#: size): our senders' largest chunk.
MAX_ZSTD_CONTENT: Final = MAX_CHUNK_SIZE

#: The flow-control window a receiver may announce in ``accept``, in bytes (§6.6.2).
MIN_WINDOW: Final = 2**18
MAX_WINDOW: Final = 2**31

Role = Literal["sender", "receiver"]
ROLES: Final = ("sender", "receiver")

_HEX_RUN = re.compile(r"[0-9a-f]*")
_MAX_MODE: Final = 0o7777
# Far beyond any real file, small enough that arithmetic on sums stays exact in JSON doubles.
MAX_FILE_SIZE: Final = 2**53


@dataclass(frozen=True)
class Hello:
    """A peer's first message to the relay: which room it wants and which side it is.

    ``version`` 2 asks the relay to confirm with ``waiting`` when the peer has to wait,
    so that a sender shows its code only once the room is its own. ``fresh`` says the
    room was just generated: the relay refuses it if anyone already waits there, so that
    a generated code never meets a stranger's.
    """

    code_hash_hex: str
    role: Role
    version: int | None = None
    fresh: bool | None = None
    type: Literal["hello"] = "hello"


@dataclass(frozen=True)
class Waiting:
    """Relay to a version-2 peer: the room is yours, a partner has not joined yet."""

    type: Literal["waiting"] = "waiting"


@dataclass(frozen=True)
class Pake:
    """Either peer, right after pairing: its SPAKE2 message (base64) for ``suite``."""

    suite: str
    msg: str
    type: Literal["pake"] = "pake"


@dataclass(frozen=True)
class Confirm:
    """Either peer: proof (hex) that it derived the same key, i.e. knows the same code."""

    mac: str
    type: Literal["confirm"] = "confirm"


@dataclass(frozen=True)
class Ready:
    """Relay to sender: a receiver has joined, the line is open."""

    type: Literal["ready"] = "ready"


@dataclass(frozen=True)
class FileEntry:
    """A regular file in the manifest; its bytes follow in the data stream.

    ``meta`` describes a Python object whose bytes these are (objects.py); a receiver
    that saves files ignores it.
    """

    path: str
    size: int
    mode: int = 0o644
    mtime: float | None = None
    kind: Literal["file"] = "file"
    meta: dict[str, Any] | None = field(default=None, hash=False)


@dataclass(frozen=True)
class DirEntry:
    """A folder in the manifest, so that empty folders and folder modes arrive too."""

    path: str
    mode: int = 0o755
    mtime: float | None = None
    kind: Literal["dir"] = "dir"


@dataclass(frozen=True)
class StreamEntry:
    """Bytes of a length nobody knows up front (a pipe): only ever the manifest's last entry.

    Its bytes run from where the files before it end until the sender's ``checksums``
    for it; that message fixes its size.
    """

    path: str
    mode: int = 0o644
    mtime: float | None = None
    kind: Literal["stream"] = "stream"
    meta: dict[str, Any] | None = field(default=None, hash=False)


Entry = FileEntry | DirEntry | StreamEntry
#: The entries that have bytes in the data stream, numbered in manifest order.
DataEntry = FileEntry | StreamEntry


@dataclass(frozen=True)
class Manifest:
    """Sender to receiver: what is coming. Long manifests are split into parts (``more``)."""

    entries: tuple[Entry, ...]
    more: bool = False
    version: int = PROTOCOL_VERSION
    #: First part only: the hash algorithms the sender can check files with, best first
    #: (digests.py); None means SHA-256 only. Names we do not know are kept and ignored.
    digests: tuple[str, ...] | None = None
    #: First part only: true if the sender honours a receiver's flow-control ``window``
    #: (§6.6.2); None: it does not, and the receiver must send neither window nor ack.
    ack: bool | None = None
    #: First part only: the most lanes (connections) the sender would use (§6.12); None: 1.
    lanes: int | None = None
    type: Literal["manifest"] = "manifest"


@dataclass(frozen=True)
class Accept:
    """Receiver to sender: the manifest is acceptable, start the data.

    ``held`` lists prefixes the receiver already holds, without digests (resume.py); a
    sender that reads it answers with ``prefix_digests`` before any data. ``resume`` is
    what receivers before ``held`` sent instead: the prefixes with the receiver's digests,
    answered with ``resume``; ours never sends it (it shows the digest of what the
    receiver had). ``compression`` names the algorithms the receiver decodes in data
    messages (``"zstd"``: DATA_ZSTD); names it does not know are kept here and ignored by
    the sender. ``digest`` is the algorithm the receiver picked from the manifest's
    ``digests`` for checksums and prefix digests (None: SHA-256). ``window``: the bytes
    the sender may have sent beyond the receiver's last ``ack`` (§6.6.2); only to a
    sender whose manifest said ``ack``.
    """

    resume: tuple[Offer, ...] | None = None
    compression: tuple[str, ...] | None = None
    digest: str | None = None
    held: tuple[Prefix, ...] | None = None
    window: int | None = None
    #: The most lanes the receiver takes, only to a manifest that offered lanes (§6.12).
    lanes: int | None = None
    type: Literal["accept"] = "accept"


@dataclass(frozen=True)
class PrefixDigests:
    """Sender to receiver, answering ``accept.held``: its digest of each held prefix of
    its own source (those it could read); the receiver compares them with its own."""

    files: tuple[Offer, ...]
    type: Literal["prefix_digests"] = "prefix_digests"


@dataclass(frozen=True)
class Resume:
    """The prefixes whose digests matched, as (file, offset); the rest start at 0.

    From the receiver, answering ``prefix_digests``; from a sender, answering an older
    receiver's ``accept.resume``.
    """

    files: tuple[tuple[int, int], ...]
    type: Literal["resume"] = "resume"


@dataclass(frozen=True)
class Checksums:
    """Sender to receiver: digests of files ``first``, ``first+1``, ... whose bytes are all sent.

    On the wire the digests' key is their algorithm, the one the receiver's accept named.
    """

    first: int
    digests: tuple[str, ...]
    algorithm: str = SHA256
    type: Literal["checksums"] = "checksums"


@dataclass(frozen=True)
class Eof:
    """Sender to receiver: no more data or checksums follow."""

    type: Literal["eof"] = "eof"


@dataclass(frozen=True)
class Done:
    """Receiver to sender: every file was verified and now has its final name."""

    type: Literal["done"] = "done"


@dataclass(frozen=True)
class Ack:
    """Receiver to sender, after an ``accept`` with ``window``: ``bytes`` of the data stream
    (decoded) it received and handed to storage on this connection (§6.6.2)."""

    bytes: int
    type: Literal["ack"] = "ack"


@dataclass(frozen=True)
class Lane:
    """Sender to receiver on lane 0: lane ``lane`` is open, join it. On lane ``lane``
    itself: the first sealed message each way, which proves the lane's keys (§6.12)."""

    lane: int
    type: Literal["lane"] = "lane"


@dataclass(frozen=True)
class ErrorMessage:
    """Either peer: the transfer failed for ``code`` (an errors.py wire code); close follows."""

    code: str
    message: str
    type: Literal["error"] = "error"


Message = (
    Hello | Ready | Waiting | Pake | Confirm | Manifest | Accept | PrefixDigests | Resume
    | Checksums | Eof | Done | Ack | Lane | ErrorMessage
)


def encode(message: Message) -> str:
    """The JSON text of a control message, compact, with fields left at None omitted."""
    obj: dict[str, Any]
    if isinstance(message, Manifest):
        return _manifest_text(_manifest_head(message.version, message.digests, message.ack,
                                             message.lanes),
                              [_entry_text(entry) for entry in message.entries], message.more)
    if isinstance(message, Checksums):
        obj = {"type": "checksums", "first": message.first,
               message.algorithm: list(message.digests)}
    elif isinstance(message, Accept):
        obj = {"type": "accept"}
        if message.resume is not None:
            obj["resume"] = [[o.file, o.offset, o.digest] for o in message.resume]
        if message.compression is not None:
            obj["compression"] = list(message.compression)
        if message.digest is not None:
            obj["digest"] = message.digest
        if message.held is not None:
            obj["held"] = [list(p) for p in message.held]
        if message.window is not None:
            obj["window"] = message.window
        if message.lanes is not None:
            obj["lanes"] = message.lanes
    elif isinstance(message, PrefixDigests):
        obj = {"type": "prefix_digests",
               "files": [[o.file, o.offset, o.digest] for o in message.files]}
    elif isinstance(message, Resume):
        obj = {"type": "resume", "files": [list(f) for f in message.files]}
    else:
        obj = {k: v for k, v in message.__dict__.items() if v is not None}
        obj = {"type": obj.pop("type"), **obj}
    return _dumps(obj)


# One encoder for every message: json.dumps() with options builds a new one per call.
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def encode_manifest(entries: Sequence[Entry], part_bytes: int,
                    digests: Sequence[str] | None = None,
                    ack: bool | None = None, lanes: int | None = None) -> Iterator[str]:
    """The manifest as text messages of at most ``part_bytes`` UTF-8 bytes where possible.

    Each part is exactly ``encode(Manifest(batch, more=...))``, the first with
    ``digests=digests``, ``ack=ack`` and ``lanes=lanes``; every entry is encoded once, and
    an entry too long for a part alone still gets a part of its own. Parts are made as they
    are asked for, so that the first can be on its way (and parsed) while the next is
    encoded.
    """
    head = _manifest_head(PROTOCOL_VERSION, None, None, None)
    first = _manifest_head(PROTOCOL_VERSION, digests, ack, lanes)
    ending = len(_manifest_text("", [], more=True)) + 1  # the longest ending, and a comma
    batch: list[str] = []
    size = len(first) + ending
    for entry in entries:
        text = _entry_text(entry)
        cost = (len(text) if text.isascii() else len(text.encode())) + 1
        if batch and size + cost > part_bytes:
            yield _manifest_text(first, batch, more=True)
            first, batch, size = head, [], len(head) + ending
        batch.append(text)
        size += cost
    yield _manifest_text(first, batch, more=False)


# A manifest's text is built around its entries' texts, so that encode_manifest() encodes
# each entry once however the parts fall; encode() of a Manifest gives the same text.
def _manifest_head(version: int, digests: Sequence[str] | None, ack: bool | None,
                   lanes: int | None) -> str:
    obj: dict[str, Any] = {"type": "manifest", "version": version}
    if digests is not None:
        obj["digests"] = list(digests)
    if ack is not None:
        obj["ack"] = ack
    if lanes is not None:
        obj["lanes"] = lanes
    return _dumps(obj)[:-1] + ',"entries":['


def _manifest_text(head: str, entry_texts: Sequence[str], more: bool) -> str:
    ending = '],"more":true}' if more else "]}"
    return head + ",".join(entry_texts) + ending


def _entry_text(entry: Entry) -> str:
    """One entry's JSON text, as it stands in a manifest (parts are sized by it)."""
    return _dumps(_entry_to_json(entry))


def _entry_to_json(entry: Entry) -> dict[str, Any]:
    obj: dict[str, Any] = {"path": entry.path}
    if isinstance(entry, FileEntry):
        obj["size"] = entry.size
    else:
        obj["kind"] = entry.kind
    obj["mode"] = entry.mode
    if entry.mtime is not None:
        obj["mtime"] = entry.mtime
    if not isinstance(entry, DirEntry) and entry.meta is not None:
        obj["meta"] = entry.meta
    return obj


# --- parsing untrusted input ---------------------------------------------------------


def _load_object(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"a control message is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("a control message is not a JSON object")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise RemoteProtocolError("a control message has no string 'type'")
    return obj


def _int(obj: dict[str, Any], key: str, lo: int, hi: int, default: int | None = None) -> int:
    value = obj.get(key, default)
    # Exactly int: bool is an int subclass in Python, and on the wire true is not 1.
    if type(value) is not int or not lo <= value <= hi:
        raise RemoteProtocolError(f"field {key!r} must be an integer from {lo} to {hi}")
    return value


def _mtime(obj: dict[str, Any]) -> float | None:
    value = obj.get("mtime")
    if value is None:
        return None
    # abs(...) <= max is False for NaN and inf, and compares huge ints without overflow.
    if (type(value) is not float and type(value) is not int) or not (
        abs(value) <= sys.float_info.max
    ):
        raise RemoteProtocolError("field 'mtime' must be a finite number of seconds")
    return float(value)


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise RemoteProtocolError(f"field {key!r} must be a string")
    return value


def parse_hello(text: str | bytes) -> Hello:
    """The relay's parser for a peer's first message; unknown extra fields are ignored."""
    if not isinstance(text, str):
        raise RemoteProtocolError("the first message must be a text 'hello', not binary data")
    obj = _load_object(text)
    if obj["type"] != "hello":
        raise RemoteProtocolError(f"the first message must be 'hello', not {obj['type']!r}")
    code_hash = obj.get("code_hash_hex")
    if not isinstance(code_hash, str) or not HEX_DIGEST.fullmatch(code_hash):
        raise RemoteProtocolError("'code_hash_hex' must be 64 lowercase hex digits")
    role = obj.get("role")
    if role not in ROLES:
        raise RemoteProtocolError("'role' must be 'sender' or 'receiver'")
    version = obj.get("version")
    if version is not None:
        version = _int(obj, "version", 1, 2**31)
    fresh = obj.get("fresh")
    if fresh is not None and not isinstance(fresh, bool):
        raise RemoteProtocolError("'fresh' must be true or false")
    return Hello(code_hash_hex=code_hash, role=role, version=version, fresh=fresh)


_BASE64 = re.compile(r"[A-Za-z0-9+/]{1,1024}={0,2}")
_HEX = re.compile(r"[0-9a-f]{2,256}")


def _parse_pake(obj: dict[str, Any]) -> Pake:
    suite = _str(obj, "suite")
    if len(suite) > 100:
        raise RemoteProtocolError("'suite' is too long")
    msg = _str(obj, "msg")
    if not _BASE64.fullmatch(msg):
        raise RemoteProtocolError("'msg' must be base64, at most 1024 characters")
    return Pake(suite=suite, msg=msg)


def _parse_confirm(obj: dict[str, Any]) -> Confirm:
    mac = _str(obj, "mac")
    if not _HEX.fullmatch(mac):
        raise RemoteProtocolError("'mac' must be lowercase hex, at most 256 digits")
    return Confirm(mac=mac)


def _parse_entry(obj: Any) -> Entry:
    if not isinstance(obj, dict):
        raise RemoteProtocolError("a manifest entry is not a JSON object")
    path = _str(obj, "path")
    kind = obj.get("kind", "file")
    if kind == "file":
        return FileEntry(
            path=path,
            size=_int(obj, "size", 0, MAX_FILE_SIZE),
            mode=_int(obj, "mode", 0, _MAX_MODE, 0o644),
            mtime=_mtime(obj),
            meta=_meta(obj),
        )
    if kind == "stream":
        return StreamEntry(path=path, mode=_int(obj, "mode", 0, _MAX_MODE, 0o644),
                           mtime=_mtime(obj), meta=_meta(obj))
    if kind == "dir":
        return DirEntry(path=path, mode=_int(obj, "mode", 0, _MAX_MODE, 0o755), mtime=_mtime(obj))
    raise RemoteProtocolError(f"unknown manifest entry kind {kind!r}")


def _meta(obj: dict[str, Any]) -> dict[str, Any] | None:
    # Only its shape is checked here; objects.ObjectDecoder judges what it says.
    value = obj.get("meta")
    if value is not None and not isinstance(value, dict):
        raise RemoteProtocolError("an entry's 'meta' must be a JSON object")
    return value


def _parse_manifest(obj: dict[str, Any]) -> Manifest:
    if "version" not in obj:
        # p2p-copy 0.1.x sends a manifest without a version and a message per file.
        raise IncompatiblePeerError(
            "The sender runs an old p2p-copy (0.1.x) that this version cannot receive from. "
            "Ask them to upgrade p2p-copy."
        )
    version = obj["version"]
    if type(version) is not int or version != PROTOCOL_VERSION:  # true == 1 in Python
        raise IncompatiblePeerError(
            f"The sender speaks protocol version {version!r}, this p2p-copy speaks "
            f"{PROTOCOL_VERSION}. Install the same p2p-copy version on both sides."
        )
    entries = obj.get("entries")
    if not isinstance(entries, list):
        raise RemoteProtocolError("the manifest's 'entries' must be a list")
    more = obj.get("more", False)
    if not isinstance(more, bool):
        raise RemoteProtocolError("the manifest's 'more' must be true or false")
    parsed = tuple(_parse_entry(e) for e in entries)
    for index, entry in enumerate(parsed):
        # A stream ends the whole manifest: nothing follows it, in this part or another.
        if isinstance(entry, StreamEntry) and (more or index != len(parsed) - 1):
            raise RemoteProtocolError("a stream entry must be the manifest's last entry")
    ack = obj.get("ack")
    if ack is not None and not isinstance(ack, bool):
        raise RemoteProtocolError("the manifest's 'ack' must be true or false")
    return Manifest(entries=parsed, more=more, digests=_names(obj, "digests"), ack=ack,
                    lanes=_lanes(obj))


def _lanes(obj: dict[str, Any]) -> int | None:
    return None if obj.get("lanes") is None else _int(obj, "lanes", 1, MAX_LANES)




def _parse_checksums(obj: dict[str, Any]) -> Checksums:
    first = _int(obj, "first", 0, MAX_FILE_SIZE)
    # Its digests are keyed by their algorithm: any that digests.py defines.
    keys = [key for key in NAMES if key in obj]
    if len(keys) != 1:
        raise RemoteProtocolError(
            "a checksums message must carry its digests under exactly one of "
            + " or ".join(map(repr, NAMES)))
    algorithm = keys[0]
    digests = obj[algorithm]
    if not isinstance(digests, list) or not digests:
        raise RemoteProtocolError(f"{algorithm!r} must be a non-empty list")
    # Checked all at once (one message holds thousands): only strings join, each must be
    # 64 long, and then the joined text must be lowercase hex throughout.
    try:
        joined = "".join(digests)
    except TypeError:
        joined = None
    if joined is None or set(map(len, digests)) != {64} or not _HEX_RUN.fullmatch(joined):
        raise RemoteProtocolError("each digest must be 64 lowercase hex digits")
    return Checksums(first=first, digests=tuple(digests), algorithm=algorithm)


#: Offers in one accept: one per file at most, bounded like the manifest.
MAX_OFFERS: Final = 1_000_000


def _pairs(obj: dict[str, Any], key: str, width: int) -> list[list[Any]]:
    value = obj.get(key)
    if not isinstance(value, list) or len(value) > MAX_OFFERS or not all(
        isinstance(item, list) and len(item) == width for item in value
    ):
        raise RemoteProtocolError(f"{key!r} must be a list of {width}-element lists")
    return value


def _index_offset(item: list[Any]) -> tuple[int, int]:
    return (_int({"file": item[0]}, "file", 0, MAX_FILE_SIZE),
            _int({"offset": item[1]}, "offset", 1, MAX_FILE_SIZE))


#: Algorithm names in one list (accept's ``compression``, a manifest's ``digests``), and
#: characters per name.
MAX_ALGORITHM_NAMES: Final = 32
MAX_ALGORITHM_NAME: Final = 64


def _names(obj: dict[str, Any], key: str) -> tuple[str, ...] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_ALGORITHM_NAMES or not all(
        isinstance(name, str) and len(name) <= MAX_ALGORITHM_NAME for name in value
    ):
        raise RemoteProtocolError(
            f"{key!r} must be a list of at most {MAX_ALGORITHM_NAMES} strings of "
            f"at most {MAX_ALGORITHM_NAME} characters"
        )
    return tuple(value)


def _parse_accept(obj: dict[str, Any]) -> Accept:
    compression = _names(obj, "compression")
    digest = obj.get("digest")
    if digest is not None and (not isinstance(digest, str)
                               or len(digest) > MAX_ALGORITHM_NAME):
        raise RemoteProtocolError(
            f"'digest' must be a string of at most {MAX_ALGORITHM_NAME} characters")
    held = None
    if obj.get("held") is not None:
        held = tuple(Prefix(*_index_offset(item)) for item in _pairs(obj, "held", 2))
    window = None
    if obj.get("window") is not None:
        window = _int(obj, "window", MIN_WINDOW, MAX_WINDOW)
    lanes = _lanes(obj)
    if obj.get("resume") is None:
        return Accept(compression=compression, digest=digest, held=held, window=window,
                      lanes=lanes)
    if held is not None:
        raise RemoteProtocolError("an accept carries 'held' or 'resume', not both")
    return Accept(resume=_offers(obj, "resume"), compression=compression, digest=digest,
                  window=window, lanes=lanes)


def _offers(obj: dict[str, Any], key: str) -> tuple[Offer, ...]:
    """``obj[key]``: a list of [file, offset, digest]."""
    offers = []
    for item in _pairs(obj, key, 3):
        file, offset = _index_offset(item)
        if not isinstance(item[2], str) or not HEX_DIGEST.fullmatch(item[2]):
            raise RemoteProtocolError("a prefix digest must be 64 lowercase hex digits")
        offers.append(Offer(file, offset, item[2]))
    return tuple(offers)


def _parse_resume(obj: dict[str, Any]) -> Resume:
    return Resume(files=tuple(_index_offset(item) for item in _pairs(obj, "files", 2)))


def parse_message(text: str) -> Message:
    """Parse a peer's control message (text); unknown fields are ignored, unknown types are not."""
    obj = _load_object(text)
    kind = obj["type"]
    if kind == "manifest":
        return _parse_manifest(obj)
    if kind == "checksums":
        return _parse_checksums(obj)
    if kind == "accept":
        return _parse_accept(obj)
    if kind == "resume":
        return _parse_resume(obj)
    if kind == "prefix_digests":
        return PrefixDigests(files=_offers(obj, "files"))
    if kind == "error":
        return ErrorMessage(code=_str(obj, "code"), message=_str(obj, "message"))
    if kind == "pake":
        return _parse_pake(obj)
    if kind == "confirm":
        return _parse_confirm(obj)
    if kind == "ack":
        return Ack(bytes=_int(obj, "bytes", 0, MAX_FILE_SIZE))
    if kind == "lane":
        return Lane(lane=_int(obj, "lane", 1, MAX_LANES - 1))
    simple: dict[str, Message] = {
        "ready": Ready(),
        "waiting": Waiting(),
        "eof": Eof(),
        "done": Done(),
    }
    if kind in simple:
        return simple[kind]
    if kind == "hello":
        return parse_hello(text)
    raise RemoteProtocolError(f"unknown message type {kind!r}")



class CloseCode(enum.IntEnum):
    """WebSocket close codes the relay uses to tell a peer why its connection ends."""

    NORMAL = 1000  # the partner finished and closed cleanly
    GOING_AWAY = 1001  # the relay is shutting down
    MESSAGE_TOO_BIG = 1009  # a message exceeded the relay's size limit
    TRY_AGAIN_LATER = 1013  # p2p-copy 0.1.x relays: role already taken for this code
    BAD_HELLO = 4000  # the first message was not a valid hello
    HELLO_TIMEOUT = 4001  # no hello arrived in time
    CODE_IN_USE = 4002  # a peer with the same role already waits for this code
    PEER_TIMEOUT = 4003  # no partner joined in time
    PEER_GONE = 4004  # the partner disconnected without a clean close
    RELAY_DRAINING = 4005  # the relay is restarting; reconnect (to it or another one)
    RATE_LIMITED = 4006  # this address joins too often; wait before trying again
    RELAY_FULL = 4007  # too many waiting peers or pairs (in all, or from this address)
    PAIR_LIMIT = 4008  # the pair exceeded the relay's byte or duration limit
    RELAY_MEMORY = 4009  # the relay holds as much queued data as it allows, in all
