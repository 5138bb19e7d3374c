"""A third-party p2p-copy peer written only from docs/protocol.md (peer protocol version 1).

It deliberately shares no code with ``p2p_copy``: it speaks the wire protocol directly over
``websockets.asyncio.client.connect``, keeps everything in memory and cuts the data stream
into 1000-byte payloads, so that its message boundaries differ from p2p-copy's.

Section numbers in comments refer to docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import math
import string
import unicodedata
from collections.abc import Sequence
from typing import Any, TypeGuard

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

PROTOCOL_VERSION = 1
KIND_RAW = 0x00
PAYLOAD_SIZE = 1000  # our own choice (§6.6: message sizes are the sender's choice)
MAX_MESSAGE = 2 * 1024 * 1024  # §3.3: accept at least, and never send more than, 2 MiB
MAX_FILE_SIZE = 2**53  # §6.4
MAX_DIGESTS_PER_MESSAGE = 4096  # §6.7 rule 4
ACCEPT_TIMEOUT = 60.0  # §10
DONE_TIMEOUT = 300.0  # §10
ERROR_SEND_TIMEOUT = 2.0  # §6.11
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# §8: the only codes a peer may put on the wire.
SENDABLE_CODES = frozenset({
    "internal", "usage", "timeout", "peer_gone", "protocol", "integrity", "unsafe_path",
    "exists", "disk_full", "incompatible", "cancelled",
})


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


def code_hash_hex(code: str) -> str:
    """§4: lowercase hex SHA-256 of the UTF-8 code, used exactly as given."""
    if code == "":
        raise ValueError("the code must not be empty (§4)")
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def _dumps(obj: dict[str, Any]) -> str:
    # Standard JSON only (§3.2); unlike p2p-copy: spaces after separators, ASCII escapes.
    text = json.dumps(obj, allow_nan=False, ensure_ascii=True, separators=(", ", ": "))
    if len(text.encode("utf-8")) > MAX_MESSAGE:
        raise ValueError("control message would exceed 2 MiB (§3.3)")
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


async def _send_error_and_close(ws: ClientConnection, code: str, message: str) -> PeerError:
    """§6.10/§6.11: send ``error`` (best effort, 2 s), close with 1000; return what to raise."""
    assert code in SENDABLE_CODES
    try:
        async with asyncio.timeout(ERROR_SEND_TIMEOUT):
            await ws.send(_dumps({"type": "error", "code": code, "message": message}))
    except (ConnectionClosed, TimeoutError):
        pass
    await ws.close(1000)
    return PeerError(code, message, sent=True)


def _ended(ws: ClientConnection) -> ConnectionEnded:
    # close_code/close_reason are those of the close frame received (None: no close frame).
    return ConnectionEnded(ws.close_code, ws.close_reason or "")


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
    manifest_parts: int = 1,
    late_digests: bool = False,
    corrupt_digest_of: str | None = None,
    fail_after_accept_with: str | None = None,
) -> None:
    """Send ``files`` (path -> content, in dict order) and empty ``dirs`` to a receiver.

    ``manifest_parts`` > 1 splits the manifest into that many parts (§6.4, ``more``; parts
    may be empty). ``late_digests`` withholds all digests until the end of the stream (§6.7
    rule 3 allows it). ``corrupt_digest_of`` announces a wrong SHA-256 for that file.
    ``fail_after_accept_with`` = a wire code simulates a local failure right after ``accept``
    (e.g. ``usage``: a source file became unreadable): we send that ``error`` and close.
    Returns once ``done`` arrived; raises PeerError / ConnectionEnded otherwise.
    """
    hello = {"type": "hello", "role": "sender", "code_hash_hex": code_hash_hex(code)}
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
        await ws.send(_dumps(hello))
        # WAIT_READY (§5.3): the first message on our connection must be `ready`.
        try:
            first = await ws.recv()
        except ConnectionClosed:
            raise _ended(ws) from None
        try:
            ready = parse_control(first)["type"] == "ready"
        except _Violation:
            ready = False
        if not ready:  # not from the partner (phase 2 has not begun): no `error`, just leave
            await ws.close(1000)
            raise ThirdPartyError(f"expected ready from the relay, got {first!r}")

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
            await _sender_phase2(ws, inbox, entries, files, names, ends, digests,
                                 manifest_parts, late_digests, fail_after_accept_with)
        finally:
            reader_task.cancel()
            try:
                await reader_task
            except asyncio.CancelledError:
                pass


async def _sender_phase2(
    ws: ClientConnection,
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
    async def fail(code: str, message: str) -> PeerError:
        return await _send_error_and_close(ws, code, message)

    def classify(message: str | bytes | None, wanted: str | None) -> None:
        """Raise for anything but the one acceptable message ``wanted`` (§6.2, §9.3)."""
        if message is None:
            raise _ended(ws)
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
            await ws.send(_dumps(part))

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
                await ws.send(_dumps({"type": "checksums", "first": sent_digests,
                                      "sha256": batch}))
                sent_digests += len(batch)

        def complete(p: int) -> int:
            return bisect.bisect_right(ends, p)  # §6.7: files with end(i) <= p

        if not late_digests:
            await flush_digests(complete(0))  # zero-size files at the very start
        while sent_bytes < len(stream):
            await check_inbox_while_streaming()
            chunk = stream[sent_bytes:sent_bytes + PAYLOAD_SIZE]
            await ws.send(bytes([KIND_RAW]) + chunk)
            sent_bytes += len(chunk)
            if not late_digests:
                await flush_digests(complete(sent_bytes))
        await flush_digests(len(digests))  # every file, incl. trailing empty ones (rule 5)
        await check_inbox_while_streaming()
        await ws.send(_dumps({"type": "eof"}))

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


async def thirdparty_receive(
    url: str,
    code: str,
    *,
    answer_manifest_with: str | None = None,
    manifest_out: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, bytes], list[str]]:
    """Receive one transfer into memory: returns ({file path: bytes}, [dir paths]).

    ``answer_manifest_with`` = a wire code makes us refuse the manifest with that ``error``
    (then PeerError(sent=True) is raised). ``manifest_out``, if given, receives the
    normalised manifest entries (with modes and mtimes).
    """
    hello = {"code_hash_hex": code_hash_hex(code), "role": "receiver", "type": "hello"}
    async with _connect(url) as ws:
        await ws.send(_dumps(hello))
        try:
            return await _receiver_phase2(ws, answer_manifest_with, manifest_out)
        except _Violation as v:
            raise await _send_error_and_close(ws, v.code, v.message) from None
        except ConnectionClosed:
            raise _ended(ws) from None
        except PeerError as e:
            if not e.sent:
                await ws.close(1000)
            raise


async def _receiver_phase2(
    ws: ClientConnection,
    answer_manifest_with: str | None,
    manifest_out: list[dict[str, Any]] | None,
) -> tuple[dict[str, bytes], list[str]]:
    def control(message: str | bytes) -> dict[str, Any]:
        msg = parse_control(message)
        if msg["type"] == "error":
            raise _check_error_message(msg)
        if msg["type"] not in ("manifest", "checksums", "eof"):
            # unknown types, 0.1.x `file`/`file_eof`, hello/ready/accept/done from the sender
            raise _Violation("protocol", f"unexpected {msg['type']!r} message")
        return msg

    # WAIT_MANIFEST: collect parts until `more` is absent or false.
    entries: list[dict[str, Any]] = []
    while True:
        message = await ws.recv()
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
            ws, answer_manifest_with,
            f"refused by the third-party receiver ({answer_manifest_with})")
    await ws.send(_dumps({"type": "accept"}))

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
        message = await ws.recv()
        if isinstance(message, bytes):
            # §6.6: kind byte + at least one payload byte, kind must be 0x00.
            if len(message) < 2:
                raise _Violation("protocol", "data message shorter than 2 bytes")
            if message[0] != KIND_RAW:
                raise _Violation("protocol", f"data message kind {message[0]:#04x} is reserved")
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
    await ws.send(_dumps({"type": "done"}))
    await ws.close(1000)
    return result, dirs
