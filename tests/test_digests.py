"""The per-file hash: BLAKE3 when both peers have it, SHA-256 otherwise (protocol/digests.py).

Without sockets: the negotiation through the state machines (manifest ``digests``, accept
``digest``, checksums keyed by the algorithm), its refusals, and the resume sidecar. The
end-to-end tests (test_transfer_e2e.py) see BLAKE3 between two of our peers, and
test_thirdparty_peer.py SHA-256 with a peer written from the protocol document.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from p2p_copy.errors import RemoteProtocolError, UsageError
from p2p_copy.peer.session import digests_from_environment
from p2p_copy.protocol import digests
from p2p_copy.protocol.digests import BLAKE3, SHA256
from p2p_copy.protocol.messages import (
    Accept,
    Checksums,
    FileEntry,
    Manifest,
    encode,
    encode_manifest,
    parse_message,
)
from p2p_copy.protocol.resume import BLOCK, ChainHasher, Offer, Sidecar
from p2p_copy.protocol.transfer import FileCompleted, FileData, Receiver, Sender
from p2p_copy.results import FileResult
from p2p_copy.storage.destination import SIDECAR_SUFFIX, TEMP_SUFFIX, Destination

from .conftest import both_backends
from .protocol_pair import CODE_HASH, ProtocolPair, hex_digest

#: BLAKE3 of nothing, from the BLAKE3 reference (its test vectors' empty input).
EMPTY_BLAKE3 = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
CONTENTS = {"a.txt": b"hello", "b/c.bin": os.urandom(70_000), "d": b""}
ENTRIES = [FileEntry(path, len(data)) for path, data in CONTENTS.items()]


def test_both_algorithms_hash_as_their_references() -> None:
    assert hex_digest(BLAKE3, b"") == EMPTY_BLAKE3
    assert hex_digest(SHA256, b"") == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    assert digests.available() == (BLAKE3, SHA256)
    with pytest.raises(ValueError):
        digests.new("md5")


@pytest.mark.parametrize(("offered", "allowed", "picked"), [
    ((BLAKE3, SHA256), None, BLAKE3),
    ((SHA256, BLAKE3), None, SHA256),  # the sender's order wins
    ((BLAKE3, SHA256), (SHA256,), SHA256),
    (("k12", BLAKE3), None, BLAKE3),  # names we do not know are skipped
    (("k12",), None, SHA256),
    (None, None, SHA256),  # a sender from before the negotiation
])
def test_the_receiver_picks_the_senders_first_offer_it_has(
        offered: tuple[str, ...] | None, allowed: tuple[str, ...] | None, picked: str) -> None:
    assert digests.choose(offered, allowed) == picked


@pytest.mark.parametrize(("value", "expected"), [
    ("", (BLAKE3, SHA256)),
    ("sha256", (SHA256,)),
    (" SHA256 , blake3", (BLAKE3, SHA256)),
    ("blake3", (BLAKE3,)),
])
def test_the_environment_limits_what_a_peer_offers_and_picks(
        monkeypatch: pytest.MonkeyPatch, value: str, expected: tuple[str, ...]) -> None:
    """The driver reads $P2P_COPY_DIGESTS once and hands the machines what it says."""
    monkeypatch.setenv(digests.DIGESTS_ENV, value)
    assert digests_from_environment() == digests.preferred(value) == expected
    assert Sender(CODE_HASH, ENTRIES, digests=expected).digests_offered == expected
    assert Receiver(CODE_HASH, digests=expected).digests_allowed == expected


def test_the_machines_do_not_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sender and Receiver take what they may hash as an argument: without it, all we have."""
    monkeypatch.setenv(digests.DIGESTS_ENV, "sha256")
    assert Sender(CODE_HASH, ENTRIES).digests_offered == digests.available()
    assert Receiver(CODE_HASH).digests_allowed == digests.available()


def test_an_unknown_name_in_the_environment_is_a_usage_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(digests.DIGESTS_ENV, "sha256,md5")
    with pytest.raises(UsageError, match="'md5'"):
        digests_from_environment()


def test_two_peers_with_blake3_check_every_file_with_it() -> None:
    pair = ProtocolPair(ENTRIES, digests=(BLAKE3, SHA256))
    events = pair.transfer(CONTENTS)
    assert json.loads(pair.manifest_parts[0])["digests"] == [BLAKE3, SHA256]
    assert json.loads(pair.to_sender_log[-2])["digest"] == BLAKE3  # the accept
    assert pair.sender.digest == pair.receiver.digest == BLAKE3
    checksums = [json.loads(m) for m in pair.to_receiver_log
                 if isinstance(m, str) and '"checksums"' in m]
    assert checksums and all(BLAKE3 in m and SHA256 not in m for m in checksums)
    completed = [e for e in events if isinstance(e, FileCompleted)]
    assert [e.digest for e in completed] == [hex_digest(BLAKE3, d) for d in CONTENTS.values()]


def test_a_sender_with_sha256_only_sends_the_manifest_of_before() -> None:
    """No offer, no choice in the accept: byte for byte what peers before BLAKE3 exchange."""
    pair = ProtocolPair(ENTRIES)
    pair.transfer(CONTENTS)
    assert "digests" not in json.loads(pair.manifest_parts[0])
    assert "digest" not in json.loads(pair.to_sender_log[-2])
    assert pair.receiver.digest == SHA256


def test_a_receiver_without_the_negotiation_gets_sha256() -> None:
    """An accept that names no hash (a receiver before BLAKE3 ignores the offer)."""
    sender = Sender(CODE_HASH, ENTRIES, digests=(BLAKE3, SHA256))
    sender.hello()
    sender.receive('{"type":"ready"}')
    list(sender.manifest())
    sender.receive(encode(Accept()))
    assert sender.digest == SHA256
    sender.frame_data(bytearray(b"\0hello"), 5)
    assert '"sha256":[' in sender.checksums([hex_digest(SHA256, b"hello")])[0]


def test_a_receiver_limited_to_sha256_says_so() -> None:
    pair = ProtocolPair(ENTRIES, digests=(BLAKE3, SHA256))
    pair.receiver = Receiver(CODE_HASH, digests=(SHA256,))
    pair.transfer(CONTENTS)
    assert json.loads(pair.to_sender_log[-2])["digest"] == SHA256
    assert pair.sender.digest == SHA256


@pytest.mark.parametrize("picked", [BLAKE3, "", "md5"])
def test_an_accept_picking_a_hash_not_offered_is_refused(picked: str) -> None:
    """Only a missing ``digest`` means SHA-256; any name the manifest did not offer fails."""
    sender = Sender(CODE_HASH, ENTRIES, digests=(SHA256,))
    sender.hello()
    sender.receive('{"type":"ready"}')
    list(sender.manifest())
    with pytest.raises(RemoteProtocolError, match="did not offer"):
        sender.receive(encode(Accept(digest=picked)))


def test_checksums_in_another_hash_than_agreed_are_refused() -> None:
    pair = ProtocolPair(ENTRIES, digests=(BLAKE3, SHA256))
    pair.open()
    pair.accept()
    pair.send_data(CONTENTS["a.txt"])
    wrong = encode(Checksums(first=0, digests=(hex_digest(SHA256, b"hello"),)))
    with pytest.raises(RemoteProtocolError, match="not the agreed blake3"):
        pair.to_receiver(wrong)


@pytest.mark.parametrize("text", [
    '{"type":"checksums","first":0}',
    '{"type":"checksums","first":0,"sha256":["' + "a" * 64 + '"],"blake3":["' + "a" * 64
    + '"]}',
    '{"type":"checksums","first":0,"blake3":["' + "A" * 64 + '"]}',
    '{"type":"manifest","version":1,"digests":"blake3","entries":[]}',
    '{"type":"manifest","version":1,"digests":[' + ",".join(['"x"'] * 33) + '],"entries":[]}',
    '{"type":"accept","digest":7}',
    '{"type":"accept","digest":"' + "x" * 65 + '"}',
])
def test_malformed_negotiation_fields_are_protocol_errors(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_message(text)


def test_every_manifest_part_is_what_encode_gives_and_only_the_first_offers() -> None:
    entries = [FileEntry(f"f{i:04}", i) for i in range(300)]
    parts = list(encode_manifest(entries, 2_000, (BLAKE3, SHA256)))
    assert len(parts) > 2
    parsed = [parse_message(p) for p in parts]
    assert all(isinstance(m, Manifest) for m in parsed)
    assert [m.digests for m in parsed] == [(BLAKE3, SHA256)] + [None] * (len(parts) - 1)
    for text, message in zip(parts, parsed, strict=True):
        assert text == encode(message)


def test_file_results_say_which_hash_they_carry() -> None:
    blake = FileResult("a", 0, EMPTY_BLAKE3, BLAKE3)
    assert blake.sha256 is None and blake.algorithm == BLAKE3
    assert FileResult("a", 0, "e" * 64).sha256 == "e" * 64


@both_backends
def test_a_sidecar_records_its_algorithm(tmp_path: Path) -> None:
    car = Sidecar(size=3 * BLOCK, mtime=2.0, offset=BLOCK, digest="c" * 64, algorithm=BLAKE3)
    assert json.loads(car.encode())[BLAKE3] == "c" * 64
    assert Sidecar.parse(car.encode()) == car
    old = b'{"version":1,"size":5,"mtime":null,"offset":5,"sha256":"' + b"c" * 64 + b'"}'
    assert Sidecar.parse(old) == Sidecar(5, None, 5, "c" * 64, SHA256)


@both_backends
def test_a_part_kept_with_one_hash_resumes_with_it_and_starts_over_with_the_other(
        tmp_path: Path) -> None:
    data = os.urandom(BLOCK + 300)
    entry = FileEntry("a.bin", 2 * BLOCK, mtime=3.0)
    first = Destination(tmp_path, [entry], algorithm=BLAKE3)
    first.prepare()
    first.apply([FileData(0, 0, memoryview(data))])
    first.suspend()
    assert json.loads((tmp_path / f".a.bin{SIDECAR_SUFFIX}").read_bytes())[BLAKE3]
    again = Destination(tmp_path, [entry], algorithm=BLAKE3)
    again.prepare()
    assert again.offers() == [Offer(0, BLOCK, hex_digest(BLAKE3, data[:BLOCK]))]
    other = Destination(tmp_path, [entry], algorithm=SHA256)
    other.prepare()
    assert other.offers() == []  # started over: the next data replaces the part
    other.resume({})
    rest = os.urandom(BLOCK)
    whole = data + rest[: 2 * BLOCK - len(data)]
    done = other.apply([FileData(0, 0, memoryview(whole)),
                        FileCompleted(0, hex_digest(SHA256, whole))])
    assert done == [FileResult("a.bin", len(whole), hex_digest(SHA256, whole))]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    assert not (tmp_path / f".a.bin{TEMP_SUFFIX}").exists()


def test_a_chain_continues_in_its_own_algorithm() -> None:
    data = os.urandom(2 * BLOCK + 7)
    chain = ChainHasher(algorithm=BLAKE3)
    chain.update(data)
    state = chain.state_at(BLOCK)
    assert state is not None
    resumed = ChainHasher(state, BLOCK, BLAKE3)
    resumed.update(data[BLOCK:])
    assert resumed.hexdigest() == chain.hexdigest() == hex_digest(BLAKE3, data)
    assert ChainHasher(algorithm=BLAKE3).digest_at(0) == EMPTY_BLAKE3
