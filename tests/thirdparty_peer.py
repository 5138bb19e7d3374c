"""A third-party p2p-copy peer written only from docs/protocol.md (peer protocol version 1).

It deliberately shares no code with ``p2p_copy``: it speaks the wire protocol directly over
``websockets.asyncio.client.connect``, keeps everything in memory and cuts the data stream
into 1000-byte payloads, so that its message boundaries differ from p2p-copy's. It sends
version-2 hellos with the room hash (§4.2, §5.1) and speaks both modes: the encryption
layer of §6.0 (default; SPAKE2 from the ``spake2`` package, HKDF and AES-GCM from
``cryptography``, wired up here from the text of §6.0) and plain text (``encrypt=False``).

Section numbers in comments refer to docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import hashlib
import hmac
import json
import math
import re
import string
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, TypeGuard

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from spake2 import SPAKE2_A, SPAKE2_B, SPAKEError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

PROTOCOL_VERSION = 1
HELLO_VERSION = 2  # §5.1: the relay may answer a waiting peer with one `waiting`
ROOM_DOMAIN = b"p2p-copy room v2\x00"  # §4.2
KIND_RAW = 0x00
KIND_ZSTD = 0x01  # §6.6.1, only after offering "zstd" in accept
MAX_ZSTD_CONTENT = 1024 * 1024
PAYLOAD_SIZE = 1000  # our own choice (§6.6: message sizes are the sender's choice)
MAX_MESSAGE = 2 * 1024 * 1024  # §3.3: accept at least, and never send more than, 2 MiB
MAX_FILE_SIZE = 2**53  # §6.4
MAX_DIGESTS_PER_MESSAGE = 4096  # §6.7 rule 4
ACCEPT_TIMEOUT = 60.0  # §10
HANDSHAKE_TIMEOUT = 60.0  # §10: each handshake message once the peer has spoken
DONE_TIMEOUT = 300.0  # §10
ERROR_SEND_TIMEOUT = 2.0  # §6.11
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# §8: the only codes a peer may put on the wire.
SENDABLE_CODES = frozenset({
    "internal", "usage", "timeout", "peer_gone", "protocol", "integrity", "unsafe_path",
    "exists", "disk_full", "incompatible", "wrong_code", "encryption_mismatch", "tampered",
    "policy", "cancelled",
})

# §6.0.3-6.0.6: the one suite, the SPAKE2 identities, the HKDF salt and labels, the tag.
SUITE = "spake2-ed25519+hkdf-sha256+aes-256-gcm/1"
ID_SENDER = b"p2p-copy sender"
ID_RECEIVER = b"p2p-copy receiver"
HKDF_SALT = b"p2p-copy e2e v1"
TAG_BYTES = 16
_PAKE_MSG = re.compile(r"[A-Za-z0-9+/]{1,1024}={0,2}")
_MAC = re.compile(r"[0-9a-f]{2,256}")


class ThirdPartyError(Exception):
    """Base class of everything this peer raises."""


class PeerError(ThirdPartyError):
    """An ``error`` message was exchanged: ``sent`` tells whether we sent it or received it."""

    def __init__(self, code: str, message: str, *, sent: bool) -> None:
        who = "we sent" if sent else "partner sent"
        super().__init__(f"{who} error {code!r}: {message}")
        self.code = code
        self.message = message
        self.sent = sent


class ConnectionEnded(ThirdPartyError):
    """The connection ended (relay close or network loss) before the transfer finished."""

    def __init__(self, close_code: int | None, reason: str) -> None:
        super().__init__(f"connection ended before the transfer finished: {close_code} {reason!r}")
        self.close_code = close_code
        self.reason = reason


class _Violation(Exception):
    """Internal: the partner broke the protocol; carries the wire code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------------
# helpers shared by both roles


def room_hash_hex(code: str) -> str:
    """§4.1/§4.2: domain-separated SHA-256 of the room part (text before the first '-')."""
    room, dash, secret = code.partition("-")
    if not dash or not room or not secret:
        raise ValueError("the code must be ROOM-SECRET, both parts non-empty (§4.1)")
    return hashlib.sha256(ROOM_DOMAIN + room.encode("utf-8")).hexdigest()


def whole_code_hash_hex(code: str) -> str:
    """§4.5: what p2p-copy 0.1.x puts in its hello (never sent by this peer)."""
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def _hello(code: str, role: str) -> dict[str, Any]:
    # §5.1, hello version 2; never `fresh`: our codes are typed, not generated (§4.3).
    return {"type": "hello", "role": role, "code_hash_hex": room_hash_hex(code),
            "version": HELLO_VERSION}


def _dumps(obj: dict[str, Any]) -> str:
    # Standard JSON only (§3.2); unlike p2p-copy: spaces after separators, ASCII escapes.
    # It starts with "{", as an inner control message must (§6.0.7).
    text = json.dumps(obj, allow_nan=False, ensure_ascii=True, separators=(", ", ": "))
    if len(text.encode("utf-8")) > MAX_MESSAGE - TAG_BYTES:
        raise ValueError("control message would exceed 2 MiB once sealed (§3.3)")
    return text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def parse_control(message: str | bytes) -> dict[str, Any]:
    """§3.2: one JSON object with a string ``type``; anything else is ``protocol``."""
    if isinstance(message, bytes):
        raise _Violation("protocol", "unexpected binary message")
    try:
        value = json.loads(message, parse_constant=_reject_constant)
    except ValueError as exc:
        raise _Violation("protocol", f"control message is not valid JSON: {exc}") from None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise _Violation("protocol", "control message is not an object with a string 'type'")
    return value


def _is_int(value: Any) -> TypeGuard[int]:
    # §3.2: integers are JSON numbers without fraction/exponent; json gives those as int.
    return isinstance(value, int) and not isinstance(value, bool)


def _check_error_message(msg: dict[str, Any]) -> PeerError:
    """§6.10: an incoming ``error``; non-string code/message is itself a violation."""
    code, text = msg.get("code"), msg.get("message")
    if not isinstance(code, str) or not isinstance(text, str):
        raise _Violation("protocol", "error message with a non-string code or message")
    return PeerError(code, text, sent=False)


# ---------------------------------------------------------------------------------------------
# §6.0 the encryption layer


def hkdf32(key: bytes, info: bytes) -> bytes:
    """§6.0.5: HKDF-SHA256, salt "p2p-copy e2e v1", 32 bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=info).derive(key)


def key_schedule(key: bytes) -> dict[str, bytes]:
    """§6.0.5: the four values both peers derive from the SPAKE2 key K."""
    return {
        "confirm sender": hkdf32(key, b"confirm sender"),
        "confirm receiver": hkdf32(key, b"confirm receiver"),
        "key sender to receiver": hkdf32(key, b"key sender to receiver"),
        "key receiver to sender": hkdf32(key, b"key receiver to sender"),
    }


def nonce(counter: int) -> bytes:
    """§6.0.6: 12-byte big-endian count of messages sealed before, in this direction."""
    return counter.to_bytes(12, "big")


class Handshake:
    """One side of §6.0.4-6.0.5. ``entropy`` (tests only) fixes the random scalar."""

    def __init__(self, code: str, role: str,
                 entropy: Callable[[int], bytes] | None = None) -> None:
        side = SPAKE2_A if role == "sender" else SPAKE2_B  # sender = A, receiver = B
        extra = {} if entropy is None else {"entropy_f": entropy}
        self.role = role
        self._spake = side(code.encode("utf-8"), idA=ID_SENDER, idB=ID_RECEIVER, **extra)
        self.outbound = self._spake.start()  # side byte + 32-byte element
        self.key: bytes | None = None
        self.values: dict[str, bytes] = {}

    def pake(self) -> dict[str, Any]:
        return {"type": "pake", "suite": SUITE,
                "msg": base64.b64encode(self.outbound).decode("ascii")}

    def take_pake(self, msg: dict[str, Any]) -> None:
        """§6.0.3 validation, in the order given there, then SPAKE2 finish."""
        suite, data = msg.get("suite"), msg.get("msg")
        if not isinstance(suite, str) or len(suite) > 100:
            raise _Violation("protocol", "pake 'suite' is not a string of at most 100 characters")
        if not isinstance(data, str) or not _PAKE_MSG.fullmatch(data):
            raise _Violation("protocol", "pake 'msg' is not base64 of at most 1024 characters")
        if suite != SUITE:
            raise _Violation("incompatible", f"unknown suite {suite!r}; this peer speaks {SUITE}")
        try:
            inbound = base64.b64decode(data, validate=True)
            other = b"B" if self.role == "sender" else b"A"
            if len(inbound) != 33 or inbound[:1] != other:  # §6.0.4: the other side's byte
                raise ValueError("not a 33-byte message from the other side")
            self.key = self._spake.finish(inbound)
        except (binascii.Error, ValueError, SPAKEError) as exc:
            raise _Violation("protocol", f"invalid SPAKE2 message ({exc})") from None
        self.values = key_schedule(self.key)

    def confirm(self) -> dict[str, Any]:
        mine = self.values["confirm sender" if self.role == "sender" else "confirm receiver"]
        return {"type": "confirm", "mac": mine.hex()}

    def check_confirm(self, msg: dict[str, Any]) -> None:
        mac = msg.get("mac")
        if not isinstance(mac, str) or not _MAC.fullmatch(mac):
            raise _Violation("protocol", "confirm 'mac' is not 2-256 lowercase hex digits")
        theirs = self.values["confirm receiver" if self.role == "sender" else "confirm sender"]
        if not hmac.compare_digest(mac, theirs.hex()):  # constant time (§6.0.5)
            raise _Violation("wrong_code", "the key confirmation failed: the codes differ")

    def keys(self) -> tuple[bytes, bytes]:
        """(key we seal with, key we open with)."""
        to_r, to_s = self.values["key sender to receiver"], self.values["key receiver to sender"]
        return (to_r, to_s) if self.role == "sender" else (to_s, to_r)


class Link:
    """The connection to the partner: plain until ``seal_with``, sealed afterwards (§6.0.6)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._seal: AESGCM | None = None
        self._open: AESGCM | None = None
        self.sealed = 0
        self.opened = 0

    @property
    def is_sealed(self) -> bool:
        return self._open is not None

    def seal_with(self, send_key: bytes, receive_key: bytes) -> None:
        self._seal, self._open = AESGCM(send_key), AESGCM(receive_key)

    async def send(self, message: str | bytes) -> None:
        if self._seal is None:
            await self.ws.send(message)
            return
        inner = message.encode("utf-8") if isinstance(message, str) else message
        sealed = self._seal.encrypt(nonce(self.sealed), inner, None)  # ciphertext + tag
        self.sealed += 1
        await self.ws.send(sealed)

    def unwrap(self, raw: str | bytes) -> str | bytes:
        """What a message from the partner means in the plain protocol (§6.0.7, §6.0.8)."""
        if self._open is None:
            return raw
        if isinstance(raw, str):
            raise _Violation("tampered", "a text message arrived after the handshake")
        if len(raw) < TAG_BYTES:
            raise _Violation("tampered", "a message too short to be sealed arrived")
        try:
            inner = self._open.decrypt(nonce(self.opened), raw, None)
        except InvalidTag:
            raise _Violation("tampered", f"message {self.opened} failed authentication") from None
        self.opened += 1
        if inner[:1] == b"{":
            try:
                return inner.decode("utf-8")
            except UnicodeDecodeError:
                raise _Violation("protocol", "inner control message is not UTF-8") from None
        return inner

    async def recv(self, timeout: float | None = None) -> str | bytes:
        async with asyncio.timeout(timeout):
            return self.unwrap(await self.ws.recv())


def _handshake_message(raw: str | bytes, wanted: str) -> dict[str, Any]:
    """A handshake message (§6.0.2): plain text, exactly the one ``wanted`` at this place."""
    if isinstance(raw, bytes):
        raise _Violation("protocol", "binary message during the handshake")
    msg = parse_control(raw)
    if msg["type"] == "error":
        raise _check_error_message(msg)
    if wanted == "pake" and msg["type"] == "manifest":
        raise _Violation("encryption_mismatch",
                         "the sender does not encrypt, this receiver does (§6.0.9)")
    if msg["type"] != wanted:
        raise _Violation("protocol", f"{msg['type']!r} during the handshake, expected {wanted!r}")
    return msg


async def _recv_handshake(link: Link, timeout: float | None) -> str | bytes:
    try:
        return await link.recv(timeout)
    except TimeoutError:
        raise _Violation("timeout", "no handshake message in time") from None


async def _sender_handshake(link: Link, code: str) -> None:
    """§6.0.2 steps 1 and 3."""
    side = Handshake(code, "sender")
    await link.send(_dumps(side.pake()))
    side.take_pake(_handshake_message(await _recv_handshake(link, HANDSHAKE_TIMEOUT), "pake"))
    side.check_confirm(
        _handshake_message(await _recv_handshake(link, HANDSHAKE_TIMEOUT), "confirm"))
    await link.send(_dumps(side.confirm()))
    link.seal_with(*side.keys())


async def _receiver_handshake(link: Link, code: str, first: str | bytes) -> None:
    """§6.0.2 steps 2 and 4; ``first`` is the sender's first message (``waiting`` skipped)."""
    side = Handshake(code, "receiver")
    side.take_pake(_handshake_message(first, "pake"))
    await link.send(_dumps(side.pake()))
    await link.send(_dumps(side.confirm()))
    side.check_confirm(
        _handshake_message(await _recv_handshake(link, HANDSHAKE_TIMEOUT), "confirm"))
    link.seal_with(*side.keys())


async def _send_error_and_close(link: Link, code: str, message: str) -> PeerError:
    """§6.10/§6.11: send ``error`` (best effort, 2 s), close with 1000; return what to raise.

    Plain text during the handshake, sealed after it (§6.0.8): the link knows which.
    """
    assert code in SENDABLE_CODES
    try:
        async with asyncio.timeout(ERROR_SEND_TIMEOUT):
            await link.send(_dumps({"type": "error", "code": code, "message": message}))
    except (ConnectionClosed, TimeoutError):
        pass
    await link.ws.close(1000)
    return PeerError(code, message, sent=True)


def _ended(ws: ClientConnection) -> ConnectionEnded:
    # close_code/close_reason are those of the close frame received (None: no close frame).
    return ConnectionEnded(ws.close_code, ws.close_reason or "")


async def _first_after_hello(ws: ClientConnection) -> str | bytes:
    """The first message after hello, skipping one relay `waiting` (§5.1, §6.0.2)."""
    first = await ws.recv()
    if isinstance(first, str):
        try:
            skip = parse_control(first)["type"] == "waiting"
        except _Violation:
            skip = False
        if skip:
            first = await ws.recv()
    return first


def _connect(url: str) -> connect:
    # No subprotocol (§3.1). We *offer* permessage-deflate (allowed: "a client MAY offer it but
    # MUST work when it is declined"); raise the 1 MiB default limit to 2 MiB (§3.3).
    return connect(url, max_size=MAX_MESSAGE, proxy=None, open_timeout=20)


# ---------------------------------------------------------------------------------------------
# §7 path rules


def _fold(path: str) -> str:
    return unicodedata.normalize("NFC", path).casefold()


def path_problem(path: str) -> str | None:
    """Rules 1-9 of §7 for a single path; returns a description of the problem, or None."""
    if path == "":
        return "empty path"
    if len(path) > 4096:
        return "path longer than 4096 code points"
    for ch in path:
        o = ord(ch)
        if o <= 0x1F or o == 0x7F or 0x80 <= o <= 0x9F:
            return "control character in path"
        if 0xD800 <= o <= 0xDFFF:
            return "surrogate code point in path"
    if "\\" in path:
        return "backslash in path"
    if path.startswith("/"):
        return "absolute path"
    if len(path) >= 2 and path[0] in string.ascii_letters and path[1] == ":":
        return "drive letter in path"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return "empty, '.' or '..' component"
        if len(part.encode("utf-8")) > 255:
            return "component longer than 255 UTF-8 bytes"
    return None


def manifest_path_problem(entries: Sequence[dict[str, Any]]) -> str | None:
    """All of §7 (rules 1-11) over a complete manifest."""
    seen: set[str] = set()
    prefixes: set[str] = set()
    for entry in entries:
        problem = path_problem(entry["path"])
        if problem is not None:
            return f"{entry['path']!r}: {problem}"
        folded = _fold(entry["path"])
        if folded in seen:
            return f"{entry['path']!r}: collides with another entry"
        seen.add(folded)
        parts = folded.split("/")
        for i in range(1, len(parts)):
            prefixes.add("/".join(parts[:i]))
    for entry in entries:
        if entry["kind"] == "file" and _fold(entry["path"]) in prefixes:
            return f"{entry['path']!r}: a file is used as a folder"
    return None


# ---------------------------------------------------------------------------------------------
# sender


async def thirdparty_send(
    url: str,
    code: str,
    files: dict[str, bytes],
    dirs: list[str] = [],  # noqa: B006 - never mutated
    *,
    encrypt: bool = True,
    manifest_parts: int = 1,
    late_digests: bool = False,
    corrupt_digest_of: str | None = None,
    fail_after_accept_with: str | None = None,
) -> None:
    """Send ``files`` (path -> content, in dict order) and empty ``dirs`` to a receiver.

    ``encrypt`` runs the handshake of §6.0 after ``ready`` and seals everything after it.

    ``manifest_parts`` > 1 splits the manifest into that many parts (§6.4, ``more``; parts
    may be empty). ``late_digests`` withholds all digests until the end of the stream (§6.7
    rule 3 allows it). ``corrupt_digest_of`` announces a wrong SHA-256 for that file.
    ``fail_after_accept_with`` = a wire code simulates a local failure right after ``accept``
    (e.g. ``usage``: a source file became unreadable): we send that ``error`` and close.
    Returns once ``done`` arrived; raises PeerError / ConnectionEnded otherwise.
    """
    hello = _hello(code, "sender")
    names = list(files)
    sizes = [len(files[n]) for n in names]
    ends: list[int] = []
    total = 0
    for size in sizes:
        total += size
        ends.append(total)
    digests = [hashlib.sha256(files[n]).hexdigest() for n in names]
    if corrupt_digest_of is not None:
        i = names.index(corrupt_digest_of)
        digests[i] = hashlib.sha256(b"not " + files[corrupt_digest_of]).hexdigest()

    # Dirs first, then files: any order is allowed (§6.4), and it differs from p2p-copy's.
    entries: list[dict[str, Any]] = [{"kind": "dir", "path": d} for d in dirs]
    entries += [{"kind": "file", "path": n, "size": len(files[n])} for n in names]
    problem = manifest_path_problem(entries)
    if problem is not None:
        raise ValueError(f"refusing to send: {problem}")  # §7: a compliant sender checks too

    async with _connect(url) as ws:
        link = Link(ws)
        await ws.send(_dumps(hello))
        # WAIT_READY (§5.3): after at most one `waiting` (§5.1), the relay's `ready`.
        try:
            first = await _first_after_hello(ws)
        except ConnectionClosed:
            raise _ended(ws) from None
        try:
            ready = parse_control(first)["type"] == "ready"
        except _Violation:
            ready = False
        if not ready:  # not from the partner (phase 2 has not begun): no `error`, just leave
            await ws.close(1000)
            raise ThirdPartyError(f"expected ready from the relay, got {first!r}")

        if encrypt:  # HANDSHAKE (§6.0.2); errors in plain text, the link is not sealed yet
            try:
                await _sender_handshake(link, code)
            except _Violation as v:
                raise await _send_error_and_close(link, v.code, v.message) from None
            except ConnectionClosed:
                raise _ended(ws) from None
            except PeerError:
                await ws.close(1000)
                raise

        # From here on a background reader collects everything the receiver says (§6.2:
        # a sender MUST keep reading while it streams).
        inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()

        async def reader() -> None:
            try:
                async for message in ws:
                    inbox.put_nowait(message)
            except ConnectionClosed:
                pass
            finally:
                inbox.put_nowait(None)  # end of connection

        reader_task = asyncio.create_task(reader())
        try:
            await _sender_phase2(link, inbox, entries, files, names, ends, digests,
                                 manifest_parts, late_digests, fail_after_accept_with)
        finally:
            reader_task.cancel()
            try:
                await reader_task
            except asyncio.CancelledError:
                pass


async def _sender_phase2(
    link: Link,
    inbox: asyncio.Queue[str | bytes | None],
    entries: list[dict[str, Any]],
    files: dict[str, bytes],
    names: list[str],
    ends: list[int],
    digests: list[str],
    manifest_parts: int,
    late_digests: bool,
    fail_after_accept_with: str | None,
) -> None:
    ws = link.ws

    async def fail(code: str, message: str) -> PeerError:
        return await _send_error_and_close(link, code, message)

    def classify(raw: str | bytes | None, wanted: str | None) -> None:
        """Raise for anything but the one acceptable message ``wanted`` (§6.2, §9.3)."""
        if raw is None:
            raise _ended(ws)
        message = link.unwrap(raw)  # sealed: open in arrival order (§6.0.6)
        if isinstance(message, bytes):
            raise _Violation("protocol", "binary message from the receiver")
        msg = parse_control(message)
        if msg["type"] == "error":
            raise _check_error_message(msg)
        if msg["type"] != wanted:
            raise _Violation("protocol", f"unexpected {msg['type']!r} message from the receiver")

    async def check_inbox_while_streaming() -> None:
        # STREAMING: nothing but `error` is acceptable.
        while not inbox.empty():
            classify(inbox.get_nowait(), None)

    try:
        # SEND_MANIFEST: n parts, `more: true` on all but the last; every part has version 1.
        n = max(1, manifest_parts)
        per_part = math.ceil(len(entries) / n) if entries else 0
        for k in range(n):
            part: dict[str, Any] = {
                "type": "manifest", "version": PROTOCOL_VERSION,
                "entries": entries[k * per_part:(k + 1) * per_part] if per_part else [],
            }
            if k < n - 1:
                part["more"] = True
            elif k > 0:
                part["more"] = False  # exercise the explicit form too
            await link.send(_dumps(part))

        # WAIT_ACCEPT
        try:
            async with asyncio.timeout(ACCEPT_TIMEOUT):
                classify(await inbox.get(), "accept")
        except TimeoutError:
            raise await fail("timeout",
                             "no accept within 60 s (is the receiver p2p-copy 0.1.x?)") from None
        if fail_after_accept_with is not None:
            raise await fail(fail_after_accept_with,
                             f"simulated local failure ({fail_after_accept_with})")

        # STREAMING: one data stream, 1000-byte payloads, digests as files complete.
        stream = b"".join(files[n] for n in names)
        sent_digests = 0
        sent_bytes = 0

        async def flush_digests(upto: int) -> None:
            nonlocal sent_digests
            while sent_digests < upto:
                batch = digests[sent_digests:min(upto, sent_digests + MAX_DIGESTS_PER_MESSAGE)]
                await link.send(_dumps({"type": "checksums", "first": sent_digests,
                                        "sha256": batch}))
                sent_digests += len(batch)

        def complete(p: int) -> int:
            return bisect.bisect_right(ends, p)  # §6.7: files with end(i) <= p

        if not late_digests:
            await flush_digests(complete(0))  # zero-size files at the very start
        while sent_bytes < len(stream):
            await check_inbox_while_streaming()
            chunk = stream[sent_bytes:sent_bytes + PAYLOAD_SIZE]
            await link.send(bytes([KIND_RAW]) + chunk)
            sent_bytes += len(chunk)
            if not late_digests:
                await flush_digests(complete(sent_bytes))
        await flush_digests(len(digests))  # every file, incl. trailing empty ones (rule 5)
        await check_inbox_while_streaming()
        await link.send(_dumps({"type": "eof"}))

        # WAIT_DONE
        try:
            async with asyncio.timeout(DONE_TIMEOUT):
                classify(await inbox.get(), "done")
        except TimeoutError:
            raise await fail("timeout", "no done within 300 s after eof") from None
        await ws.close(1000)  # DONE
    except _Violation as v:
        raise await fail(v.code, v.message) from None
    except ConnectionClosed:
        # Our send failed because the receiver went away; it may have said why first.
        while True:
            message = await inbox.get()
            if message is None:
                raise _ended(ws) from None
            try:
                classify(message, None)
            except PeerError:
                await ws.close(1000)
                raise
            except (_Violation, ConnectionEnded):
                raise _ended(ws) from None
    except PeerError as e:
        if not e.sent:
            await ws.close(1000)  # §6.10: after receiving error, close with 1000
        raise


# ---------------------------------------------------------------------------------------------
# receiver


def _check_entry(raw: Any) -> dict[str, Any]:
    """§6.4 entry fields; returns a normalised entry or raises a ``protocol`` violation."""
    if not isinstance(raw, dict):
        raise _Violation("protocol", "manifest entry is not an object")
    path = raw.get("path")
    if not isinstance(path, str):
        raise _Violation("protocol", "entry path is not a string")
    kind = raw.get("kind", "file")
    if not isinstance(kind, str) or kind not in ("file", "dir"):
        raise _Violation("protocol", f"entry {path!r}: unknown kind {kind!r}")
    default_mode = 420 if kind == "file" else 493
    mode = raw.get("mode", default_mode)
    if not _is_int(mode) or not 0 <= mode <= 4095:
        raise _Violation("protocol", f"entry {path!r}: bad mode {mode!r}")
    mtime = raw.get("mtime")
    if mtime is not None and (isinstance(mtime, bool) or not isinstance(mtime, (int, float))
                              or not math.isfinite(mtime)):
        raise _Violation("protocol", f"entry {path!r}: bad mtime {mtime!r}")
    entry: dict[str, Any] = {"path": path, "kind": kind, "mode": mode, "mtime": mtime}
    if kind == "file":
        size = raw.get("size")
        if not _is_int(size) or not 0 <= size <= MAX_FILE_SIZE:
            raise _Violation("protocol", f"entry {path!r}: bad size {size!r}")
        entry["size"] = size
    return entry


def _unzstd(frame: bytes, room: int) -> bytes:
    """§6.6.1: exactly one zstd frame declaring 1..min(1 MiB, room) bytes, no dictionary."""
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise _Violation("protocol", f"kind 0x01 payload is not a zstd frame ({exc})") from None
    size = params.content_size
    if size in (0, zstandard.CONTENTSIZE_UNKNOWN) or size > min(MAX_ZSTD_CONTENT, room):
        raise _Violation("protocol", f"zstd frame declares {size} bytes")
    if params.dict_id or params.window_size > MAX_ZSTD_CONTENT:
        raise _Violation("protocol", "zstd frame needs a dictionary or a window over 1 MiB")
    try:
        data = zstandard.ZstdDecompressor().decompress(
            frame, max_output_size=size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise _Violation("protocol", f"zstd frame does not decode ({exc})") from None
    if len(data) != size:
        raise _Violation("protocol", "zstd frame decodes to another size than it declares")
    return data


async def thirdparty_receive(
    url: str,
    code: str,
    *,
    encrypt: bool = True,
    answer_manifest_with: str | None = None,
    manifest_out: list[dict[str, Any]] | None = None,
    zstd: bool = False,
) -> tuple[dict[str, bytes], list[str]]:
    """Receive one transfer into memory: returns ({file path: bytes}, [dir paths]).

    ``zstd`` offers compression in `accept` and decodes kind-0x01 messages (§6.6.1).

    ``encrypt`` expects the sender's `pake` first and runs the handshake of §6.0.

    ``answer_manifest_with`` = a wire code makes us refuse the manifest with that ``error``
    (then PeerError(sent=True) is raised). ``manifest_out``, if given, receives the
    normalised manifest entries (with modes and mtimes).
    """
    hello = _hello(code, "receiver")
    async with _connect(url) as ws:
        link = Link(ws)
        await ws.send(_dumps(hello))
        try:
            first = await _first_after_hello(ws)  # no timeout: the relay has its own (§10)
            if encrypt:
                await _receiver_handshake(link, code, first)
                first = await link.recv()
            return await _receiver_phase2(link, first, answer_manifest_with, manifest_out,
                                          zstd)
        except _Violation as v:
            raise await _send_error_and_close(link, v.code, v.message) from None
        except ConnectionClosed:
            raise _ended(ws) from None
        except PeerError as e:
            if not e.sent:
                await ws.close(1000)
            raise


async def _receiver_phase2(
    link: Link,
    opening: str | bytes,
    answer_manifest_with: str | None,
    manifest_out: list[dict[str, Any]] | None,
    zstd: bool = False,
) -> tuple[dict[str, bytes], list[str]]:
    """WAIT_MANIFEST onwards; ``opening`` is the sender's first (inner) message."""
    pending: list[str | bytes] = [opening]
    first_part = True  # a plain receiver that gets `pake` here: the sender encrypts

    async def next_message() -> str | bytes:
        return pending.pop() if pending else await link.recv()

    def control(message: str | bytes) -> dict[str, Any]:
        msg = parse_control(message)
        if msg["type"] == "error":
            raise _check_error_message(msg)
        if msg["type"] == "pake" and not link.is_sealed and first_part:
            raise _Violation("encryption_mismatch",
                             "the sender encrypts, this receiver does not (§6.0.9)")
        if msg["type"] not in ("manifest", "checksums", "eof"):
            # unknown types, 0.1.x `file`/`file_eof`, hello/ready/accept/done from the sender
            raise _Violation("protocol", f"unexpected {msg['type']!r} message")
        return msg

    # WAIT_MANIFEST: collect parts until `more` is absent or false.
    entries: list[dict[str, Any]] = []
    while True:
        message = await next_message()
        if isinstance(message, bytes):
            raise _Violation("protocol", "data message before the manifest was accepted")
        msg = control(message)
        if msg["type"] != "manifest":
            raise _Violation("protocol", f"{msg['type']!r} before the manifest")
        version = msg.get("version")
        if not (_is_int(version) and version == PROTOCOL_VERSION):
            raise _Violation("incompatible",
                             f"manifest version {version!r} is not supported; this peer "
                             "speaks version 1 (upgrade the sender)")
        more = msg.get("more", False)
        if not isinstance(more, bool):
            raise _Violation("protocol", "manifest 'more' is not a boolean")
        raw_entries = msg.get("entries")
        if not isinstance(raw_entries, list):
            raise _Violation("protocol", "manifest 'entries' is not an array")
        entries += [_check_entry(e) for e in raw_entries]
        first_part = False
        if not more:
            break

    # DECIDING: §7 over the complete manifest, then our own (trivial, in-memory) checks.
    problem = manifest_path_problem(entries)
    if problem is not None:
        raise _Violation("unsafe_path", problem)
    if manifest_out is not None:
        manifest_out.extend(entries)
    if answer_manifest_with is not None:
        raise await _send_error_and_close(
            link, answer_manifest_with,
            f"refused by the third-party receiver ({answer_manifest_with})")
    await link.send(_dumps({"type": "accept", "compression": ["zstd"]} if zstd
                           else {"type": "accept"}))

    # STREAMING
    file_entries = [e for e in entries if e["kind"] == "file"]
    ends: list[int] = []
    total = 0
    for e in file_entries:
        total += e["size"]
        ends.append(total)
    buffers = [bytearray() for _ in file_entries]
    hashes = [hashlib.sha256() for _ in file_entries]
    received = 0  # stream bytes so far
    verified = 0  # digests so far
    current = 0  # file number the next stream byte belongs to (skipping empty files)

    while True:
        message = await link.recv()
        if isinstance(message, bytes):
            # §6.6: kind byte + at least one payload byte, kind must be 0x00.
            if len(message) < 2:
                raise _Violation("protocol", "data message shorter than 2 bytes")
            if message[0] == KIND_ZSTD and zstd:
                payload = memoryview(_unzstd(message[1:], total - received))
            elif message[0] != KIND_RAW:
                raise _Violation("protocol", f"data message kind {message[0]:#04x} is reserved")
            else:
                payload = memoryview(message)[1:]
            if received + len(payload) > total:
                raise _Violation("protocol",
                                 f"data beyond the announced total of {total} bytes")
            pos = 0
            while pos < len(payload):
                while ends[current] <= received:  # skip finished (and zero-size) files
                    current += 1
                take = min(len(payload) - pos, ends[current] - received)
                piece = payload[pos:pos + take]
                buffers[current] += piece
                hashes[current].update(piece)
                pos += take
                received += take
            continue

        msg = control(message)
        kind = msg["type"]
        if kind == "manifest":
            raise _Violation("protocol", "manifest part after the last one")
        if kind == "checksums":
            first, digests = msg.get("first"), msg.get("sha256")
            if not _is_int(first) or not 0 <= first <= MAX_FILE_SIZE:
                raise _Violation("protocol", "checksums 'first' is not a valid integer")
            if not isinstance(digests, list) or not digests:
                raise _Violation("protocol", "checksums 'sha256' is not a non-empty array")
            for d in digests:
                if not (isinstance(d, str) and len(d) == 64
                        and all(c in "0123456789abcdef" for c in d)):
                    raise _Violation("protocol", f"malformed digest {d!r}")
            if first != verified:
                raise _Violation("protocol",
                                 f"checksums start at file {first}, expected {verified}")
            if first + len(digests) > bisect.bisect_right(ends, received):
                raise _Violation("protocol", "checksums for a file whose bytes are incomplete")
            for k, digest in enumerate(digests):
                i = first + k
                if hashes[i].hexdigest() != digest:
                    buffers[i] = bytearray()  # discard the bad file
                    raise _Violation("integrity",
                                     f"SHA-256 mismatch for {file_entries[i]['path']!r}")
            verified += len(digests)
            continue
        # eof
        if received != total or verified != len(file_entries):
            raise _Violation("protocol",
                             f"eof after {received}/{total} bytes and "
                             f"{verified}/{len(file_entries)} checksums")
        break

    # FINISHING: nothing to create on disk; report and say `done`.
    result = {e["path"]: bytes(b) for e, b in zip(file_entries, buffers, strict=True)}
    dirs = [e["path"] for e in entries if e["kind"] == "dir"]
    await link.send(_dumps({"type": "done"}))
    await link.ws.close(1000)
    return result, dirs
