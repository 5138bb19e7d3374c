"""Hostile input for every parser: only P2PCopyError may escape, and what passes is safe.

Each test runs the "fuzz" hypothesis profile (tests/conftest.py): 10,000 examples by
default, P2P_COPY_FUZZ_EXAMPLES for more. Inputs are fully random (text, JSON-like values
built with st.recursive, binary messages with any header byte) or valid messages mutated
(fields dropped, replaced or added; characters inserted, deleted or cut). Whatever a
parser accepts is checked against the path rules written out here independently of
p2p_copy.protocol.paths and p2p_copy.protocol.policy.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p_copy.errors import P2PCopyError, PolicyError, UnsafePathError
from p2p_copy.protocol.messages import (
    MIN_WINDOW,
    Accept,
    Ack,
    Checksums,
    Confirm,
    DirEntry,
    Done,
    Entry,
    Eof,
    ErrorMessage,
    FileEntry,
    Hello,
    Manifest,
    Message,
    Pake,
    Ready,
    Waiting,
    encode,
    parse_hello,
)
from p2p_copy.protocol.paths import check_entries
from p2p_copy.protocol.policy import ReceivePolicy, check_policy
from p2p_copy.protocol.transfer import (
    AcceptReceived,
    Acked,
    FileCompleted,
    FileData,
    ManifestReceived,
    Receiver,
    ReceiverJoined,
    ReceiverState,
    RelayWaiting,
    Sender,
    SenderJoined,
    SenderState,
    TransferConfirmed,
    TransferFinished,
)
from tests.test_messages import _parse_both

fuzz = settings(settings.get_profile("fuzz"))
# About 45 s for 10,000 examples of the slowest test here; a nightly run with many more
# examples gets a proportionally longer bound.
pytestmark = pytest.mark.timeout(120 + fuzz.max_examples // 20)

CODE_HASH = hashlib.sha256(b"fuzz").hexdigest()
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
HEX = hashlib.sha256(b"x").hexdigest()

# --- the rules, written out independently -----------------------------------------------

_DEVICES = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{p}{n}" for p in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"
}


def _key(path: str) -> str:
    path = re.sub("[\u200c-\u200f\u202a-\u202e\u206a-\u206f\ufeff]", "", path)
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", path).casefold())


def assert_safe(entries: Sequence[Entry]) -> None:
    """Every path is a plain relative path, and no two (folded) collide or nest in a file."""
    keys: set[str] = set()
    file_keys: set[str] = set()
    prefixes: set[str] = set()
    for entry in entries:
        path = entry.path
        parts = path.split("/")
        assert path and len(path) <= 4096 and not path.startswith("/")
        assert "\\" not in path and not re.match("[A-Za-z]:", path)
        assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in path)
        assert all(part not in ("", ".", "..") for part in parts)
        assert all(len(part.encode()) <= 255 for part in parts)
        key = _key(path)
        assert key not in keys
        keys.add(key)
        if isinstance(entry, FileEntry):
            file_keys.add(key)
        folded = key.split("/")
        prefixes.update("/".join(folded[:i]) for i in range(1, len(folded)))
    assert not file_keys & prefixes


def assert_within(entries: Sequence[Entry], policy: ReceivePolicy) -> None:
    """What check_policy accepted respects every limit of ``policy``."""
    assert_safe(entries)
    sizes = [e.size for e in entries if isinstance(e, FileEntry)]
    assert len(entries) <= policy.max_entries
    assert policy.max_files is None or len(sizes) <= policy.max_files
    assert policy.max_bytes is None or sum(sizes) <= policy.max_bytes
    for entry in entries:
        parts = entry.path.split("/")
        assert len(parts) <= policy.max_depth
        assert len(entry.path.encode()) <= policy.max_path_bytes
        assert all(len(part.encode()) <= policy.max_name_bytes for part in parts)
        if policy.windows_names:
            for part in parts:
                assert not re.search(r'[<>:"|?*]', part) and part[-1] not in ". "
                assert part.split(".")[0].rstrip(" ").upper() not in _DEVICES


def judge(entries: Sequence[Entry], policy: ReceivePolicy) -> None:
    """Run check_entries and check_policy; each refuses with its own errors or passes safely."""
    try:
        check_entries(entries)
    except UnsafePathError:
        refused_by_paths = True
    else:
        refused_by_paths = False
        assert_safe(entries)
    try:
        check_policy(entries, policy)
    except (PolicyError, UnsafePathError):
        return
    assert not refused_by_paths
    assert_within(entries, policy)


# --- what the inputs are made of -------------------------------------------------------

TYPES = ["hello", "ready", "waiting", "pake", "confirm", "manifest", "accept", "checksums",
         "eof", "done", "ack", "error", "nope", "", "Manifest"]
FIELDS = ["type", "code_hash_hex", "role", "version", "fresh", "suite", "msg", "mac",
          "entries", "more", "path", "size", "mode", "mtime", "kind", "first", "sha256",
          "code", "message", "ack", "window", "bytes"]
SCALARS: list[Any] = [
    None, True, False, 0, 1, -1, 2, 420, 4095, 4096, 2**31, 2**53, 2**53 + 1, 2**63, 10**400,
    -(10**400), 0.5, -2.0, 1e308, 1e-320, "", "a", "file", "dir", "link", "sender", "receiver",
    "x" * 300, "\ud800", "\x1b[2J", "../x", "C:", CODE_HASH, HEX, "AB" * 32, "QUJD", "=", *TYPES,
]
# Characters that reach the rules: separators, dots, drive colons, controls (C0, DEL, C1),
# surrogates, bidi and zero-width, case and normalisation variants, Windows' forbidden set.
CHARS = list("aA0/\\.:-_ <>|?*\"'{}[],") + [
    "\x00", "\x1b", "\x7f", "\x85", "\x9b", "\ud800", "\udfff", "\u202e", "\u200b", "\u200c",
    "\u200d", "\ufeff", "\u2028", "\u00e9", "e\u0301", "\u00c9", "\u00df", "\u212b", "\u1f80",
    "\u0345", "\u00b9", "\U0001f600", "\U000e0041", "\uffff", "\u0130",
]
# Path components chosen to reach every rule: traversal, drive letters, controls, lengths,
# case and normalisation variants, ignorables, Windows names.
TRICKY = ["a", "A", "b", "\u00df", "SS", "ss", "\u00e9", "e\u0301", "\u00c9", "\u212b",
          "\u00e5", "..", ".", "", "C:", "c:x", "a\\b", "\x1b[2J", "\x9b", "\x00", "\ud800",
          "\u200c", "a\u200db", "\u202e", "x" * 255, "x" * 256, "\u00e9" * 128, "😀" * 63,
          "CON", "nul.txt", "Aux ", "com1", "LPT\u00b9.log", "conout$", "x.", "y ", "a:b", "<",
          "?", "|", "*", '"', "COM10", "console", " ", "..."]

VALID: list[Message] = [
    Hello(code_hash_hex=CODE_HASH, role="sender"),
    Hello(code_hash_hex=CODE_HASH, role="receiver", version=2, fresh=True),
    Ready(),
    Waiting(),
    Pake(suite="spake2-ed25519", msg="QUJD+/=="),
    Confirm(mac="ab" * 32),
    Manifest(entries=(DirEntry("d", mode=0o700, mtime=1.5), FileEntry("d/a", 3, mtime=-2.0),
                      FileEntry("e", 0)), more=True),
    Manifest(entries=(FileEntry("x", 1),)),
    Manifest(entries=(FileEntry("x", 1),), ack=True),
    Accept(),
    Accept(window=MIN_WINDOW),
    Ack(bytes=0),
    Ack(bytes=2**18),
    Checksums(first=0, digests=(HEX, EMPTY_SHA256)),
    Eof(),
    Done(),
    ErrorMessage(code="integrity", message="bad \x1b[2J"),
]
VALID_TEXTS = [encode(m) for m in VALID]
# A receiver opened with this manifest streams 5 bytes over files a, b (empty) and d/c.
OPEN_MANIFEST = encode(Manifest(entries=(FileEntry("a", 3), FileEntry("b", 0), DirEntry("d"),
                                         FileEntry("d/c", 2))))


class Choices:
    """Decisions read from bytes that hypothesis draws, like a fuzzer's data provider.

    One ``st.binary()`` draw per example is several times cheaper than drawing nested
    strategies, which is what makes 10,000 examples per parser affordable; hypothesis
    still shrinks the bytes, and zero bytes (the shrunk form) mean the first choice.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def __repr__(self) -> str:  # trailing zero bytes change nothing: leave them out
        return f"Choices({self.data.rstrip(bytes(1))!r})"

    def below(self, n: int) -> int:
        """A number from 0 to n - 1 (n at most 65,536)."""
        value = int.from_bytes(self.data[self.at:self.at + (1 if n <= 256 else 2)], "big")
        self.at += 1 if n <= 256 else 2
        return value % n

    def chance(self, one_in: int) -> bool:
        return self.below(one_in) == 0

    def pick(self, options: Sequence[Any]) -> Any:
        return options[self.below(len(options))]

    def char(self) -> str:
        if self.chance(3):  # any code point at all, surrogates included
            code = int.from_bytes(self.data[self.at:self.at + 3], "big") % 0x110000
            self.at += 3
            return chr(code)
        return str(self.pick(CHARS))

    def text(self, longest: int) -> str:
        return "".join(self.char() for _ in range(self.below(longest + 1)))

    def scalar(self) -> Any:
        kind = self.below(4)
        if kind == 0:
            return self.text(8)
        if kind == 1:
            return self.below(65536) - 2 ** self.below(64)
        return self.pick(SCALARS)

    def value(self, depth: int = 0) -> Any:
        """A random JSON-like value: scalars, lists and objects, nested a few levels."""
        kind = self.below(5) if depth < 3 else 0
        if kind == 3:
            return [self.value(depth + 1) for _ in range(self.below(4))]
        if kind == 4:
            return {self.key(): self.value(depth + 1) for _ in range(self.below(4))}
        return self.scalar()

    def key(self) -> str:
        return str(self.pick(FIELDS)) if self.below(4) else self.text(4)

    def component(self) -> str:
        return str(self.pick(TRICKY)) if self.below(3) else self.text(5)

    def path(self) -> str:
        if self.chance(16):  # around the default depth limit
            return "/".join(["d"] * (60 + self.below(10)) + [self.component()])
        return "/".join(self.component() for _ in range(1 + self.below(4)))

    def entry(self) -> Entry:
        if self.chance(3):
            return DirEntry(self.path())
        size = self.below(10) if self.below(4) else self.pick([2**40, 2**53])
        return FileEntry(self.path(), size)

    def entries(self) -> list[Entry]:
        if self.chance(3):  # variants of few names: collisions, files used as folders
            names = ["a", "A", "a/b", "A/B", "\u00e9", "e\u0301/x", "\u00c9/x/y", "a\u200c",
                     "\u00df", "SS/t", "d", "D/e"]
            return [FileEntry(self.pick(names), 1) if self.below(2) else DirEntry(
                self.pick(names)) for _ in range(self.below(6))]
        return [self.entry() for _ in range(self.below(7))]

    def policy(self) -> ReceivePolicy:
        return ReceivePolicy(
            max_files=None if self.below(2) else self.below(7),
            max_bytes=self.pick([None, None, 2**53, self.below(31)]),
            max_depth=64 if self.below(2) else 1 + self.below(5),
            max_entries=1_000_000 if self.below(2) else self.below(9),
            max_name_bytes=1 + self.below(255),
            max_path_bytes=1 + self.below(4096),
            windows_names=bool(self.below(2)),
        )

    def mutated(self) -> str:
        """A valid message changed: in its JSON (fields dropped, set, added) or in its text."""
        if self.below(2):
            obj = json.loads(self.pick(VALID_TEXTS))
            for _ in range(1 + self.below(3)):
                obj = self._mutate(obj)
            return json.dumps(obj)
        text = str(self.pick(VALID_TEXTS))
        for _ in range(1 + self.below(3)):
            i = self.below(len(text) + 1)
            op = self.below(4)
            piece = self.pick(['"', "{", "}", "]", ",", ":", "\\", "\\u0000", "\\ud800", "1e999",
                               "-", "null", self.text(3)])
            if op == 0:
                text = text[:i] + piece + text[i:]
            elif op == 1:
                text = text[:i] + text[i + 1 + self.below(8):]
            elif op == 2:
                text = text[:i]
            else:
                text = text[:i] + piece + text[i + len(piece):]
        return text

    def _mutate(self, obj: Any) -> Any:
        if isinstance(obj, dict) and obj and self.below(3):
            name = self.pick(sorted(obj))
            return {**obj, name: self._mutate(obj[name])}
        if isinstance(obj, list) and obj and self.below(3):
            i = self.below(len(obj))
            return [*obj[:i], self._mutate(obj[i]), *obj[i + 1:]]
        if isinstance(obj, dict) and obj and self.below(2):
            name = self.pick(sorted(obj))
            return {k: v for k, v in obj.items() if k != name}
        if isinstance(obj, dict):
            return {**obj, self.key(): self.value(1)}
        if isinstance(obj, list) and self.below(2):
            return obj[:-1]
        return self.value(1)

    def message(self) -> str | bytes | bytearray | memoryview:
        """Any message a peer could send: text of any shape, or binary with any header."""
        kind = self.below(12)
        if kind == 0:
            return self.text(30)
        if kind == 1:
            return json.dumps(self.value())
        if kind == 2:
            obj = self.value(1)
            return json.dumps({"type": self.pick(TYPES), **(obj if isinstance(obj, dict) else {})})
        if kind in (3, 4):
            return self.mutated()
        if kind == 5:
            return str(self.pick(VALID_TEXTS))
        if kind == 6:
            return encode(Manifest(entries=tuple(self.entries()), more=self.chance(4)))
        if kind == 7:
            first, count = self.below(4), 1 + self.below(3)
            return encode(Checksums(first=first, digests=(HEX,) * count))
        data = self.data[self.at:self.at + self.below(13)]
        self.at += len(data)
        if kind == 8:
            return data  # any first byte: an unknown frame header, or none
        if kind == 9:
            return b"\x00" + data
        return bytearray(data) if kind == 10 else memoryview(b"\x00" + data)


# Fixed-size: hypothesis draws short byte strings by default, which would decode to the
# same first choices again and again.
choices = st.binary(min_size=256, max_size=256).map(Choices)

def parse_all(text: str) -> None:
    """Both parsers on ``text``; what they accept re-encodes equal and, if a manifest, is judged."""
    for parsed in _parse_both(text):
        if isinstance(parsed, Manifest):
            judge(parsed.entries, ReceivePolicy(windows_names=True))
            judge(parsed.entries, ReceivePolicy(windows_names=False, max_depth=3))


# --- the parsers ------------------------------------------------------------------------


@pytest.mark.slow
@fuzz
@given(st.text(max_size=60))
def test_parsers_survive_random_text(text: str) -> None:
    """Any text at all: parse_message and parse_hello raise only P2PCopyError."""
    parse_all(text)
    with pytest.raises(P2PCopyError):
        parse_hello(text.encode("utf-8", "surrogatepass"))  # a binary first message


json_leaves = st.sampled_from(SCALARS) | st.integers() | st.floats() | st.text(max_size=6)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), inner, max_size=4),
    max_leaves=8,
)


@pytest.mark.slow
@fuzz
@given(st.sampled_from(TYPES), json_values)
def test_parsers_survive_random_json(kind: str, value: Any) -> None:
    """Random JSON values, objects with a known type and random fields: only P2PCopyError."""
    parse_all(json.dumps(value))
    if isinstance(value, dict):
        parse_all(json.dumps({**value, "type": kind}))


@pytest.mark.slow
@fuzz
@given(choices)
def test_parsers_survive_mutated_messages(source: Choices) -> None:
    """Every message type with fields dropped, replaced or added, or its text cut or spliced."""
    parse_all(source.mutated())


@pytest.mark.slow
@fuzz
@given(choices)
def test_policy_on_generated_manifests(source: Choices) -> None:
    """check_entries and check_policy refuse with their own errors; what passes is safe."""
    judge(source.entries(), source.policy())


# --- the state machines -----------------------------------------------------------------

# What a correct sender sends after OPEN_MANIFEST: "abc" for a, nothing for b, "de" for d/c.
RECEIVER_SCRIPT: list[str | bytes] = [
    OPEN_MANIFEST,
    b"\x00ab",
    b"\x00c",
    encode(Checksums(first=0, digests=(hashlib.sha256(b"abc").hexdigest(), EMPTY_SHA256))),
    b"\x00de",
    encode(Checksums(first=2, digests=(hashlib.sha256(b"de").hexdigest(),))),
    encode(Eof()),
]
SENDER_SCRIPT = [encode(Waiting()), encode(Ready()), encode(Accept(window=MIN_WINDOW)),
                 encode(Ack(bytes=0)), encode(Done())]


def _next_or_hostile(source: Choices, script: list[Any]) -> Any:
    """Mostly the next message of a correct peer, so that late states are reached too;
    otherwise a hostile message instead of it or before it."""
    op = source.below(8)
    if op < 5 and script:
        return script.pop(0)
    if op == 5 and script:
        script.pop(0)
    return source.message()


def _check_events(receiver: Receiver, events: list[Any], policy: ReceivePolicy) -> None:
    for event in events:
        if isinstance(event, ManifestReceived):
            assert_within(event.entries, policy)
            receiver.accept()
        elif isinstance(event, TransferFinished):
            receiver.done()
        else:
            assert isinstance(event, (FileData, FileCompleted, SenderJoined))


@pytest.mark.slow
@fuzz
@given(choices)
def test_receiver_survives_any_message_sequence(source: Choices) -> None:
    """The receiver, fed a transfer with hostile text and binary messages mixed in,
    raises only P2PCopyError, accepts only manifests within its policy, fails into FAILED."""
    policy = source.policy() if source.chance(4) else ReceivePolicy()
    receiver = Receiver(CODE_HASH, policy=policy)
    receiver.hello()
    script = list(RECEIVER_SCRIPT)
    for _ in range(source.below(12)):
        try:
            events = receiver.receive(_next_or_hostile(source, script))
        except P2PCopyError:
            assert receiver.state is ReceiverState.FAILED
            continue
        _check_events(receiver, events, policy)


@pytest.mark.slow
@fuzz
@given(choices)
def test_sender_survives_any_message_sequence(source: Choices) -> None:
    """The sender, fed a receiver's answers with hostile messages mixed in, raises only
    P2PCopyError, returns only what its state expects, and fails into FAILED."""
    sender = Sender(CODE_HASH, [FileEntry("e", 0)])
    sender.hello()
    script = list(SENDER_SCRIPT)
    for _ in range(source.below(8)):
        try:
            answer = sender.receive(_next_or_hostile(source, script))
        except P2PCopyError:
            assert sender.state is SenderState.FAILED
            continue
        assert len(answer) == 1 and isinstance(
            answer[0], (RelayWaiting, ReceiverJoined, AcceptReceived, Acked, TransferConfirmed))
        if sender.state is SenderState.SEND_MANIFEST:
            assert len(list(sender.manifest())) == 1
        elif sender.state is SenderState.STREAMING:
            sender.checksums([EMPTY_SHA256])
            sender.eof()
