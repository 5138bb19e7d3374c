"""The wire format: encoding, strict parsing of untrusted control messages, and fuzzing."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2p_copy.errors import IncompatiblePeerError, P2PCopyError, RemoteProtocolError
from p2p_copy.protocol.messages import (
    DATA_RAW,
    DATA_ZSTD,
    MAX_FILE_SIZE,
    MAX_WINDOW,
    MIN_WINDOW,
    PROTOCOL_VERSION,
    Accept,
    Ack,
    Checksums,
    CloseCode,
    DirEntry,
    Done,
    Eof,
    ErrorMessage,
    FileEntry,
    Hello,
    Manifest,
    Message,
    Ready,
    encode,
    encode_manifest,
    parse_hello,
    parse_message,
)
from p2p_copy.protocol.resume import Offer
from tests.protocol_pair import FUZZ_EXAMPLES, sha256_hex

HEX = sha256_hex(b"code")
OTHER_HEX = sha256_hex(b"other")

ALL_MESSAGES: list[Message] = [
    Hello(code_hash_hex=HEX, role="sender"),
    Hello(code_hash_hex=HEX, role="receiver"),
    Ready(),
    Manifest(entries=()),
    Manifest(
        entries=(
            DirEntry("d", mode=0o700, mtime=1_700_000_000.5),
            FileEntry("d/a.txt", 5, mode=0o600, mtime=-12.25),
            FileEntry("d/empty", 0),
            FileEntry("Grüße aus Köln/日本語 file.txt", MAX_FILE_SIZE, mode=0o7777, mtime=0.0),
            DirEntry("e", mode=0),
        ),
        more=True,
    ),
    Accept(),
    Accept(compression=("zstd",)),
    Accept(compression=()),
    Accept(resume=(Offer(0, 1 << 20, HEX),), compression=("lz4", "zstd")),
    Checksums(first=0, digests=(HEX,)),
    Checksums(first=41, digests=(HEX, OTHER_HEX, HEX)),
    Eof(),
    Done(),
    Manifest(entries=(FileEntry("a", 1),), digests=("sha256",), ack=True),
    Accept(window=MIN_WINDOW, compression=("zstd",)),
    Accept(window=MAX_WINDOW, held=()),
    Ack(bytes=0),
    Ack(bytes=MAX_FILE_SIZE),
    ErrorMessage(code="integrity", message="file 'a' differs\nsee \"b\" ✓"),
]


def manifest_json(**fields: Any) -> str:
    """A manifest message with ``fields`` over a valid one-file default."""
    obj: dict[str, Any] = {
        "type": "manifest",
        "version": PROTOCOL_VERSION,
        "entries": [{"path": "a", "size": 1}],
    }
    obj.update(fields)
    return json.dumps(obj)


def entry_json(**fields: Any) -> str:
    """A manifest holding a single entry made of ``fields`` (None values are left out)."""
    return manifest_json(entries=[{k: v for k, v in fields.items() if v is not None}])


# --- encoding and round trips -----------------------------------------------------------


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    """Every message type parses back from its encoding to an equal message."""
    assert parse_message(encode(message)) == message


@pytest.mark.parametrize("role", ["sender", "receiver"])
def test_hello_round_trip_through_relay_parser(role: str) -> None:
    """The relay's hello parser reads back what encode wrote."""
    hello = Hello(code_hash_hex=HEX, role=role)  # type: ignore[arg-type]
    assert parse_hello(encode(hello)) == hello


def test_encoding_is_compact_with_type_first() -> None:
    """Encoded messages have no whitespace and start with their type."""
    assert encode(Eof()) == '{"type":"eof"}'
    assert encode(ErrorMessage("timeout", "late")) == (
        '{"type":"error","code":"timeout","message":"late"}'
    )
    for message in ALL_MESSAGES:
        text = encode(message)
        assert text.startswith(f'{{"type":"{message.type}"')
        assert json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False) == text


def test_encoding_omits_absent_fields() -> None:
    """No mtime and ``more=False`` are left out instead of being sent as null or false."""
    text = encode(Manifest(entries=(FileEntry("a", 1), DirEntry("b"))))
    obj = json.loads(text)
    assert "more" not in obj
    assert obj["entries"] == [{"path": "a", "size": 1, "mode": 0o644},
                              {"path": "b", "kind": "dir", "mode": 0o755}]


def test_encoding_keeps_unicode_readable() -> None:
    """Non-ASCII names are written as UTF-8 text, not as \\u escapes."""
    assert "é" in encode(Manifest(entries=(FileEntry("é", 0),)))


def test_encoding_refuses_nan_mtime() -> None:
    """encode never writes NaN, which strict JSON readers (and our parser) reject."""
    with pytest.raises(ValueError):
        encode(Manifest(entries=(FileEntry("a", 0, mtime=math.nan),)))


def test_manifest_defaults() -> None:
    """A file entry without mode gets 0o644, a dir 0o755, and neither gets an mtime."""
    parsed = parse_message(manifest_json(entries=[{"path": "a", "size": 3},
                                                  {"path": "b", "kind": "dir"}]))
    assert parsed == Manifest(entries=(FileEntry("a", 3, 0o644, None), DirEntry("b", 0o755)))


def test_integer_mtime_becomes_float() -> None:
    """An integral mtime on the wire is accepted and returned as a float."""
    parsed = parse_message(entry_json(path="a", size=0, mtime=1_700_000_000))
    assert isinstance(parsed, Manifest)
    mtime = parsed.entries[0].mtime
    assert type(mtime) is float and mtime == 1_700_000_000.0


# --- extra and unknown fields -----------------------------------------------------------


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_unknown_extra_fields_are_ignored(message: Message) -> None:
    """Fields a newer peer might add do not change what a message means."""
    obj = json.loads(encode(message))
    obj.update({"x-future": [1, {"nested": None}], "zzz": None})
    for entry in obj.get("entries", []):
        entry["owner"] = "root"
    assert parse_message(json.dumps(obj)) == message


def test_hello_ignores_unknown_fields() -> None:
    """The relay accepts a hello carrying fields it does not know."""
    text = json.dumps({"type": "hello", "code_hash_hex": HEX, "role": "receiver",
                       "client": "p2p-copy 9.9", "features": ["zstd"]})
    assert parse_hello(text) == Hello(HEX, "receiver")


@pytest.mark.parametrize("kind", ["data", "Manifest", "EOF", "", "hello ", "file"])
def test_unknown_type_rejected(kind: str) -> None:
    """A message type this version does not know is a protocol error, not ignored."""
    with pytest.raises(RemoteProtocolError):
        parse_message(json.dumps({"type": kind}))


@pytest.mark.parametrize(
    "text",
    ['{"kind":"eof"}', '{"type":null}', '{"type":1}', '{"type":["eof"]}', '{"type":true}'],
)
def test_missing_or_non_string_type_rejected(text: str) -> None:
    """A control message needs a string ``type``."""
    with pytest.raises(RemoteProtocolError):
        parse_message(text)


@pytest.mark.parametrize(
    "text",
    ["", " ", "{", "eof", "{'type': 'eof'}", '{"type":"eof"', '{"type":"eof"}x',
     "[]", '["eof"]', "1", '"eof"', "null", "true", "[" * 100_000, '{"a":' * 100_000],
    ids=lambda t: repr(t[:20]),
)
def test_not_a_json_object_rejected(text: str) -> None:
    """Invalid JSON, JSON that is not an object, and absurd nesting are protocol errors."""
    with pytest.raises(RemoteProtocolError):
        parse_message(text)
    with pytest.raises(RemoteProtocolError):
        parse_hello(text)


# --- hello ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code_hash",
    [HEX.upper(), HEX[:63], HEX + "0", HEX[:63] + "g", HEX + "\n", " " + HEX[1:], "",
     None, 12345, ["a"] * 64, HEX[:32] + "-" + HEX[33:], "٣" * 64],
    ids=repr,
)
def test_hello_needs_64_lowercase_hex(code_hash: Any) -> None:
    """Only exactly 64 lowercase hex digits name a room."""
    with pytest.raises(RemoteProtocolError):
        parse_hello(json.dumps({"type": "hello", "code_hash_hex": code_hash, "role": "sender"}))


def test_hello_without_code_hash_rejected() -> None:
    """A hello must name its room."""
    with pytest.raises(RemoteProtocolError):
        parse_hello(json.dumps({"type": "hello", "role": "sender"}))


@pytest.mark.parametrize("role", ["Sender", "relay", "", None, ["sender"], 0, True], ids=repr)
def test_hello_needs_a_known_role(role: Any) -> None:
    """The role is 'sender' or 'receiver', nothing else."""
    with pytest.raises(RemoteProtocolError):
        parse_hello(json.dumps({"type": "hello", "code_hash_hex": HEX, "role": role}))


def test_hello_without_role_rejected() -> None:
    """A hello must say which side it is."""
    with pytest.raises(RemoteProtocolError):
        parse_hello(json.dumps({"type": "hello", "code_hash_hex": HEX}))


@pytest.mark.parametrize("message", [m for m in ALL_MESSAGES if not isinstance(m, Hello)],
                         ids=lambda m: type(m).__name__)
def test_relay_wants_hello_first(message: Message) -> None:
    """Any other valid message as the first one is refused by the relay's parser."""
    with pytest.raises(RemoteProtocolError, match="hello"):
        parse_hello(encode(message))


def test_hello_must_be_text() -> None:
    """A binary first message is refused, even if its bytes spell a valid hello."""
    with pytest.raises(RemoteProtocolError, match="binary"):
        parse_hello(encode(Hello(HEX, "sender")).encode())


def test_parse_message_validates_hello_too() -> None:
    """A hello between peers goes through the same checks as at the relay."""
    with pytest.raises(RemoteProtocolError):
        parse_message(json.dumps({"type": "hello", "code_hash_hex": HEX, "role": "both"}))


# --- manifest ---------------------------------------------------------------------------


def test_manifest_without_version_is_an_old_peer() -> None:
    """A 0.1.x manifest (no version) is reported as an incompatible peer, with the fix."""
    text = json.dumps({"type": "manifest", "files": [{"name": "a", "size": 1}]})
    with pytest.raises(IncompatiblePeerError, match="upgrade|pip install"):
        parse_message(text)


@pytest.mark.parametrize("version", [0, 2, PROTOCOL_VERSION + 1, -1, "1", None, [1], True],
                         ids=repr)
def test_manifest_with_other_version_is_incompatible(version: Any) -> None:
    """Any version but this one's (also one spelled as a string or a boolean) is incompatible."""
    with pytest.raises(IncompatiblePeerError):
        parse_message(manifest_json(version=version))


def test_incompatible_is_not_a_protocol_error() -> None:
    """A version mismatch gets its own error class (and exit code), not a protocol error."""
    with pytest.raises(IncompatiblePeerError) as info:
        parse_message(manifest_json(version=2))
    assert not isinstance(info.value, RemoteProtocolError)


@pytest.mark.parametrize(
    "fields",
    [
        {"size": True}, {"size": False}, {"size": -1}, {"size": MAX_FILE_SIZE + 1},
        {"size": 10**30}, {"size": 1.5}, {"size": 1.0}, {"size": "1"}, {"size": None},
        {"size": [1]},
        {"mode": -1}, {"mode": 0o10000}, {"mode": True}, {"mode": "644"}, {"mode": 420.0},
        {"mode": None},
        {"mtime": math.nan}, {"mtime": math.inf}, {"mtime": -math.inf}, {"mtime": "0"},
        {"mtime": True}, {"mtime": [0]}, {"mtime": 10**400}, {"mtime": -(10**400)},
        {"mtime": 2**1024}, {"mtime": 1e308 * 10},
        {"path": None, "size": 1}, {"path": 1}, {"path": ["a"]},
        {"kind": "symlink"}, {"kind": None}, {"kind": 0}, {"kind": "DIR"},
    ],
    ids=lambda fields: repr(fields)[:40],
)
def test_bad_entry_fields_rejected(fields: dict[str, Any]) -> None:
    """Wrong types and out-of-range values in an entry are protocol errors, never crashes."""
    entry: dict[str, Any] = {"path": "a", "size": 1}
    entry.update(fields)
    if "path" in fields and fields["path"] is None:
        del entry["path"]
    with pytest.raises(RemoteProtocolError):
        parse_message(manifest_json(entries=[entry]))


def test_file_entry_needs_a_size() -> None:
    """A file entry without a size is refused, not taken as empty."""
    with pytest.raises(RemoteProtocolError):
        parse_message(entry_json(path="a"))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"size": 0}, FileEntry("a", 0)),
        ({"size": MAX_FILE_SIZE}, FileEntry("a", MAX_FILE_SIZE)),
        ({"size": 1, "mode": 0}, FileEntry("a", 1, mode=0)),
        ({"size": 1, "mode": 0o7777}, FileEntry("a", 1, mode=0o7777)),
        ({"size": 1, "mtime": -1.5}, FileEntry("a", 1, mtime=-1.5)),
        ({"size": 1, "mtime": None}, FileEntry("a", 1)),
        ({"kind": "dir", "size": "ignored"}, DirEntry("a")),
    ],
    ids=repr,
)
def test_boundary_entry_values_accepted(fields: dict[str, Any],
                                       expected: FileEntry | DirEntry) -> None:
    """The limits themselves are valid; a dir's size field is an ignored extra."""
    parsed = parse_message(entry_json(path="a", **fields))
    assert isinstance(parsed, Manifest)
    assert parsed.entries == (expected,)


@pytest.mark.parametrize("entries", [None, {}, "a", 1, {"path": "a", "size": 1}], ids=repr)
def test_manifest_entries_must_be_a_list(entries: Any) -> None:
    """``entries`` is a list, not an object, a string or missing."""
    with pytest.raises(RemoteProtocolError):
        parse_message(manifest_json(entries=entries))


def test_manifest_without_entries_rejected() -> None:
    """A manifest must carry its entries field, even if empty."""
    with pytest.raises(RemoteProtocolError):
        parse_message(json.dumps({"type": "manifest", "version": PROTOCOL_VERSION}))


@pytest.mark.parametrize("entry", [1, "a", None, ["a", 1], True], ids=repr)
def test_manifest_entry_must_be_an_object(entry: Any) -> None:
    """Each entry is a JSON object."""
    with pytest.raises(RemoteProtocolError):
        parse_message(manifest_json(entries=[{"path": "ok", "size": 0}, entry]))


@pytest.mark.parametrize("more", [1, 0, "true", None, []], ids=repr)
def test_manifest_more_must_be_boolean(more: Any) -> None:
    """``more`` is true or false, nothing truthy."""
    with pytest.raises(RemoteProtocolError):
        parse_message(manifest_json(more=more))


# --- accept's compression ----------------------------------------------------------------


def test_accept_compression_on_the_wire() -> None:
    """A JSON list of names after the other fields; left out when None."""
    assert encode(Accept()) == '{"type":"accept"}'
    assert encode(Accept(compression=("zstd",))) == '{"type":"accept","compression":["zstd"]}'
    assert json.loads(encode(Accept(resume=(Offer(1, 5, HEX),), compression=("zstd",)))) == {
        "type": "accept", "resume": [[1, 5, HEX]], "compression": ["zstd"]}
    assert parse_message('{"type":"accept","compression":null}') == Accept()
    assert (DATA_RAW, DATA_ZSTD) == (0x00, 0x01)


def test_accept_keeps_unknown_compression_names() -> None:
    """Names from a newer receiver parse; the sender ignores what it does not know."""
    text = json.dumps({"type": "accept", "compression": ["brotli-9", "", "zstd", "zstd"]})
    assert parse_message(text) == Accept(compression=("brotli-9", "", "zstd", "zstd"))


@pytest.mark.parametrize(
    "compression",
    ["zstd", {"zstd": True}, [1], ["zstd", None], [["zstd"]], True, 0, ["x" * 65],
     ["z"] * 33],
    ids=repr,
)
def test_bad_accept_compression_rejected(compression: Any) -> None:
    """``compression`` is a list of at most 32 strings of at most 64 characters."""
    with pytest.raises(RemoteProtocolError):
        parse_message(json.dumps({"type": "accept", "compression": compression}))
    with pytest.raises(RemoteProtocolError):
        parse_message(json.dumps({"type": "accept", "resume": [], "compression": compression}))


def test_accept_compression_limits_are_inclusive() -> None:
    names = ["y" * 64] * 32
    assert parse_message(json.dumps({"type": "accept", "compression": names})) == Accept(
        compression=tuple(names))


# --- checksums and error -----------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"first": -1}, {"first": True}, {"first": "0"}, {"first": 0.0}, {"first": None},
        {"first": MAX_FILE_SIZE + 1},
        {"sha256": []}, {"sha256": HEX}, {"sha256": None}, {"sha256": {"0": HEX}},
        {"sha256": [HEX.upper()]}, {"sha256": [HEX[:-1]]}, {"sha256": [HEX + "0"]},
        {"sha256": [HEX, 1]}, {"sha256": [HEX, None]}, {"sha256": [HEX, HEX[:-1] + "g"]},
        {"sha256": [HEX + "\n"]},
    ],
    ids=repr,
)
def test_bad_checksums_rejected(fields: dict[str, Any]) -> None:
    """Checksums need a non-negative integer ``first`` and a non-empty list of hex digests."""
    obj: dict[str, Any] = {"type": "checksums", "first": 0, "sha256": [HEX]}
    obj.update(fields)
    obj = {k: v for k, v in obj.items() if v is not None}
    with pytest.raises(RemoteProtocolError):
        parse_message(json.dumps(obj))


def test_checksums_missing_first_rejected() -> None:
    """``first`` has no default: a checksums message must say which file it starts at."""
    with pytest.raises(RemoteProtocolError):
        parse_message(json.dumps({"type": "checksums", "sha256": [HEX]}))


@pytest.mark.parametrize(
    "fields",
    [{"code": None}, {"message": None}, {"code": 1}, {"message": ["x"]}, {"code": True}],
    ids=repr,
)
def test_bad_error_message_rejected(fields: dict[str, Any]) -> None:
    """An error message needs a string code and a string message."""
    obj: dict[str, Any] = {"type": "error", "code": "timeout", "message": "late"}
    obj.update(fields)
    obj = {k: v for k, v in obj.items() if v is not None}
    with pytest.raises(RemoteProtocolError):
        parse_message(json.dumps(obj))


def test_error_message_with_unknown_code_parses() -> None:
    """An error code from a newer peer still parses; mapping it is the state machine's job."""
    parsed = parse_message(json.dumps({"type": "error", "code": "quantum", "message": "m"}))
    assert parsed == ErrorMessage("quantum", "m")


def test_application_close_codes_are_in_private_range() -> None:
    """The relay's own close codes use the range RFC 6455 leaves to applications."""
    own = [c for c in CloseCode if c >= 4000]
    assert own and all(4000 <= c <= 4999 for c in own)
    assert len(set(CloseCode)) == len(list(CloseCode.__members__))


# --- fuzzing ----------------------------------------------------------------------------

fuzz = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# Integers far beyond what a float holds, positive and negative.
huge_ints = st.builds(lambda sign, exp: sign * 10**exp, st.sampled_from([1, -1]),
                      st.integers(min_value=300, max_value=400))
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | huge_ints
    | st.floats()
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12,
)
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
message_types = st.sampled_from(
    ["hello", "ready", "manifest", "accept", "checksums", "eof", "done", "error", "nope"]
)
_MISSING = object()


def _shaped(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects whose fields are mostly valid-looking, sometimes junk, sometimes missing.

    Mostly valid, so that the parser gets past the first fields to the later checks;
    a ``type`` field is always kept as given.
    """
    def field(name: str, valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        if name == "type":
            return valid
        choice = {"valid": valid, "junk": json_values, "missing": st.just(_MISSING)}
        # (st.one_of with a repeated branch did not favour that branch in practice.)
        return st.sampled_from(["valid"] * 6 + ["junk", "missing"]).flatmap(choice.__getitem__)

    strategies = {name: field(name, valid) for name, valid in fields.items()}
    return st.fixed_dictionaries(strategies).map(
        lambda obj: {k: v for k, v in obj.items() if v is not _MISSING}
    )


entry_like = _shaped(
    path=st.text(max_size=12),
    size=st.integers(min_value=-2, max_value=2**54),
    mode=st.integers(min_value=-1, max_value=0o10000),
    mtime=st.floats() | huge_ints,
    kind=st.sampled_from(["file", "dir", "link"]),
)
message_like = st.one_of(
    _shaped(type=st.just("hello"), code_hash_hex=hex64,
            role=st.sampled_from(["sender", "receiver"])),
    _shaped(
        type=st.just("manifest"),
        version=st.sampled_from([PROTOCOL_VERSION] * 8 + [2, True, 1.0]),
        entries=st.lists(entry_like, max_size=4),
        more=st.booleans(),
    ),
    _shaped(type=st.just("checksums"), first=st.integers(min_value=-1, max_value=2**54),
            sha256=st.lists(hex64 | json_values, max_size=3)),
    _shaped(type=st.just("error"), code=st.text(max_size=8), message=st.text(max_size=8)),
    _shaped(type=st.just("accept"), compression=st.lists(st.text(max_size=8), max_size=3),
            resume=st.lists(st.tuples(st.integers(-1, 3), st.integers(0, 2**21), hex64)
                            .map(list), max_size=2)),
    _shaped(type=message_types, x=json_values),
)


def _parse_both(text: str) -> list[Message]:
    """Run both parsers; only P2PCopyError may escape, and what parses re-encodes equal.

    Returns what parsed (tests/test_fuzz_parsers.py judges the manifests among them).
    """
    parsed_ok: list[Message] = []
    for parse in (parse_message, parse_hello):
        try:
            parsed = parse(text)
        except P2PCopyError:
            continue
        assert parse_message(encode(parsed)) == parsed
        parsed_ok.append(parsed)
    return parsed_ok


@fuzz
@given(st.text())
def test_fuzz_arbitrary_text(text: str) -> None:
    """Arbitrary text never makes the parsers raise anything but P2PCopyError."""
    _parse_both(text)


@pytest.mark.slow
@fuzz
@given(json_values)
def test_fuzz_arbitrary_json(value: Any) -> None:
    """Arbitrary JSON values never make the parsers raise anything but P2PCopyError."""
    _parse_both(json.dumps(value))


@pytest.mark.slow
@fuzz
@given(message_like)
def test_fuzz_message_shaped_json(obj: dict[str, Any]) -> None:
    """Objects shaped like real messages, with fuzzed fields, only raise P2PCopyError."""
    _parse_both(json.dumps(obj))


@pytest.mark.slow
@fuzz
@given(st.lists(entry_like, min_size=1, max_size=4), st.booleans())
def test_fuzz_manifest_entries(entry_objs: list[dict[str, Any]], more: bool) -> None:
    """A valid manifest envelope around fuzzed entries only ever raises P2PCopyError."""
    _parse_both(manifest_json(entries=entry_objs, more=more))


path_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)
valid_entries = st.one_of(
    st.builds(
        FileEntry,
        path=path_text,
        size=st.integers(min_value=0, max_value=MAX_FILE_SIZE),
        mode=st.integers(min_value=0, max_value=0o7777),
        mtime=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    ),
    st.builds(
        DirEntry,
        path=path_text,
        mode=st.integers(min_value=0, max_value=0o7777),
        mtime=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    ),
)


@fuzz
@given(st.lists(valid_entries, max_size=6).map(tuple), st.booleans())
def test_fuzz_manifest_round_trip(manifest_entries: tuple[FileEntry | DirEntry, ...],
                                  more: bool) -> None:
    """Any manifest of valid entries parses back to an equal manifest."""
    manifest = Manifest(entries=manifest_entries, more=more)
    assert parse_message(encode(manifest)) == manifest


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30),
       st.integers(0, 2**53), st.integers(0, 0o7777),
       st.floats(allow_nan=False, allow_infinity=False))
def test_a_walked_file_entry_is_encoded_as_the_json_encoder_would(
        path: str, size: int, mode: int, mtime: float) -> None:
    """The manifest's quick way for files gives the encoder's text, byte for byte."""
    from p2p_copy.protocol.messages import _dumps, _entry_text, _entry_to_json

    entry = FileEntry(path, size, mode, mtime)
    assert _entry_text(entry) == _dumps(_entry_to_json(entry))


# --- flow control: manifest ack, accept window, ack (protocol.md §6.6.2) ------------------


def test_flow_control_on_the_wire() -> None:
    """The manifest's ``ack`` before the entries, accept's ``window``, ``ack``'s ``bytes``."""
    assert encode(Ack(bytes=5)) == '{"type":"ack","bytes":5}'
    assert encode(Accept(window=2**20)) == '{"type":"accept","window":1048576}'
    assert encode(Manifest(entries=(), ack=True)) == (
        '{"type":"manifest","version":1,"ack":true,"entries":[]}')
    assert parse_message('{"type":"accept","window":null}') == Accept()
    assert parse_message(manifest_json(ack=None)).ack is None


@pytest.mark.parametrize("window", [MIN_WINDOW - 1, MAX_WINDOW + 1, 0, -1, True, 262144.0,
                                    "262144", [262144]], ids=repr)
def test_accept_window_out_of_range_is_refused(window: Any) -> None:
    """A window must be an integer from 256 KiB to 2^31 (a bool or float is not one)."""
    with pytest.raises(RemoteProtocolError, match="window"):
        parse_message(json.dumps({"type": "accept", "window": window}))


@pytest.mark.parametrize("bytes_", [-1, MAX_FILE_SIZE + 1, 1.0, True, "5", None], ids=repr)
def test_ack_bytes_must_be_a_count(bytes_: Any) -> None:
    """``bytes`` must be an integer from 0 to 2^53, and is required."""
    with pytest.raises(RemoteProtocolError, match="bytes"):
        parse_message(json.dumps({"type": "ack", "bytes": bytes_}))
    with pytest.raises(RemoteProtocolError, match="bytes"):
        parse_message('{"type":"ack"}')


@pytest.mark.parametrize("ack", [1, 0, "true", [], {}], ids=repr)
def test_manifest_ack_must_be_boolean(ack: Any) -> None:
    with pytest.raises(RemoteProtocolError, match="'ack'"):
        parse_message(manifest_json(ack=ack))


def test_only_the_first_manifest_part_says_ack() -> None:
    """encode_manifest puts ``ack`` in the first part only, as with ``digests``."""
    parts = list(encode_manifest([FileEntry(f"f{i:03}", i) for i in range(200)], 1024,
                                 ack=True))
    assert len(parts) > 2
    assert [json.loads(p).get("ack") for p in parts] == [True] + [None] * (len(parts) - 1)
