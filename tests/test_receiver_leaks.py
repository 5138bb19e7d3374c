"""What a receiver tells a sender: never a digest of what it held, never where it keeps it.

A hand-made sender (tests/handmade_peer.py) talks through the real relay on 127.0.0.1 to
our real receiver (API or CLI). It announces the name, size and time of a file the
destination already holds, or of a part an earlier run left, and everything the receiver
sends back is searched for digests of that content: there must be none (a 4-digit PIN
file was brute-forced offline from the digest that ``accept`` used to carry). Error texts
sent to the sender name files as the sender named them, relative, with no figure of the
receiver's disk. Interop: a sender that ignores ``held`` and a receiver that still shows
its digests in ``accept`` (both as older p2p-copy versions do) still work.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

import p2p_copy
from p2p_copy.protocol.digests import BLAKE3, available, new
from p2p_copy.protocol.resume import BLOCK, Sidecar
from p2p_copy.relay import Relay

from .conftest import Processes
from .handmade_peer import HandmadePeer, file_entry, handmade_peer, sha256_hex
from .test_failures import CLI_TIMEOUT, background, communicate

SCENARIO_TIMEOUT = 60.0
_HEX64 = re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
PIN = b"4821\n"
PIN_MTIME = 1_700_000_000.0


def _digests(data: bytes) -> set[str]:
    """Every digest of ``data`` a receiver could show: SHA-256, and BLAKE3 if we have it."""
    found = {sha256_hex(data)}
    if BLAKE3 in available():
        h = new(BLAKE3)
        h.update(data)
        found.add(h.hexdigest())
    return found


def _pin_destination(tmp_path: Path) -> Path:
    dest = tmp_path / "incoming"
    dest.mkdir()
    pin = dest / "pin.txt"
    pin.write_bytes(PIN)
    os.utime(pin, (PIN_MTIME, PIN_MTIME))
    return dest


async def _offer_pin_file(peer: HandmadePeer, digests: bool = True) -> dict[str, Any]:
    """As the hostile sender: the PIN file's name, size and time; returns the accept."""
    await peer.expect("ready")
    extra = {"digests": ["blake3", "sha256"]} if digests else {}
    await peer.send_manifest([file_entry("pin.txt", len(PIN), mtime=PIN_MTIME)], **extra)
    return await peer.expect("accept")


async def test_hostile_sender_learns_no_digest_of_an_existing_file(relay: Relay,
                                                                   tmp_path: Path) -> None:
    """A sender that guesses name, size and time of an existing file gets no digest of
    it in accept, only that a prefix is held; a wrong guess of its content is refused
    with `exists` (one yes/no per run, online), and the file stays as it was."""
    dest = _pin_destination(tmp_path)
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(relay.url, "leak-1-pin", "sender") as peer:
            async with background(p2p_copy.receive(relay.url, "leak-1-pin", dest,
                                                    progress="none")) as task:
                accept = await _offer_pin_file(peer)
                assert not _HEX64.search(json.dumps(accept)), accept
                assert accept["held"] == [[0, len(PIN)]]
                algorithm = accept.get("digest", "sha256")
                guess = new(algorithm)
                guess.update(b"0000\n")
                await peer.send_json({"type": "prefix_digests",
                                      "files": [[0, len(PIN), guess.hexdigest()]]})
                told = await peer.expect_error()
                with pytest.raises(p2p_copy.DestinationExistsError):
                    await task
    assert told["code"] == "exists"
    assert str(tmp_path) not in told["message"] and "pin.txt" in told["message"]
    assert (dest / "pin.txt").read_bytes() == PIN


async def test_a_right_guess_only_confirms_what_the_sender_knew(relay: Relay,
                                                                tmp_path: Path) -> None:
    """With the right digest the receiver says `resume` for it and keeps its file: the
    sender learns one yes, for content it had to know already, and still no digest."""
    dest = _pin_destination(tmp_path)
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(relay.url, "leak-2-pin", "sender") as peer:
            async with background(p2p_copy.receive(relay.url, "leak-2-pin", dest,
                                                    progress="none")) as task:
                accept = await _offer_pin_file(peer, digests=False)
                assert "digest" not in accept and not _HEX64.search(json.dumps(accept))
                await peer.send_json({"type": "prefix_digests",
                                      "files": [[0, len(PIN), sha256_hex(PIN)]]})
                assert (await peer.expect("resume"))["files"] == [[0, len(PIN)]]
                await peer.send_checksums(0, [sha256_hex(PIN)])
                await peer.send_json({"type": "eof"})
                await peer.expect("done")
                result = await task
    assert [f.path for f in result.files] == ["pin.txt"]
    assert (dest / "pin.txt").read_bytes() == PIN


async def test_hostile_sender_learns_no_digest_of_a_part_left_by_an_earlier_run(
        relay: Relay, tmp_path: Path) -> None:
    """A part an earlier, interrupted run kept (and its sidecar) is offered as held; its
    prefix digest never crosses, and a sender that ignores the offer overwrites nothing
    but that part, from byte 0."""
    dest = tmp_path / "incoming"
    dest.mkdir()
    earlier = os.urandom(BLOCK + 4096)
    size, mtime = 3 * BLOCK, PIN_MTIME
    part = dest / ".big.bin.p2p-copy-part"
    part.write_bytes(earlier)
    part.chmod(0o600)
    car = Sidecar(size=size, mtime=mtime, offset=BLOCK, digest=sha256_hex(earlier[:BLOCK]))
    (dest / ".big.bin.p2p-copy-resume").write_bytes(car.encode())
    (dest / ".big.bin.p2p-copy-resume").chmod(0o600)
    fresh = os.urandom(size)
    sent: list[str | bytes] = []
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(relay.url, "leak-3-part", "sender") as peer:
            async with background(p2p_copy.receive(relay.url, "leak-3-part", dest,
                                                    progress="none")) as task:
                await peer.expect("ready")
                await peer.send_manifest([file_entry("big.bin", size, mtime=mtime)])
                accept = await peer.expect("accept")
                # Like a sender that predates `held`: it ignores it and sends everything.
                for start in range(0, size, BLOCK):
                    await peer.send_data(fresh[start:start + BLOCK])
                await peer.send_checksums(0, [sha256_hex(fresh)])
                await peer.send_json({"type": "eof"})
                await peer.expect("done")
                await task
                sent = await peer.drain(5)
    assert accept["held"] == [[0, BLOCK]]
    everything = json.dumps(accept) + "".join(m for m in sent if isinstance(m, str))
    assert not _digests(earlier[:BLOCK]) & set(_HEX64.findall(everything))
    assert (dest / "big.bin").read_bytes() == fresh
    assert not part.exists() and not (dest / ".big.bin.p2p-copy-resume").exists()


async def test_a_sender_that_ignores_held_gets_an_existing_equal_file_kept(
        relay: Relay, tmp_path: Path) -> None:
    """A sender before `held` sends the whole file; the receiver compares it with the file
    it held and keeps that (no `exists`): re-sending a folder still works with it."""
    dest = _pin_destination(tmp_path)
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(relay.url, "leak-4-old", "sender") as peer:
            async with background(p2p_copy.receive(relay.url, "leak-4-old", dest,
                                                    progress="none")) as task:
                await _offer_pin_file(peer, digests=False)
                await peer.send_data(PIN)
                await peer.send_checksums(0, [sha256_hex(PIN)])
                await peer.send_json({"type": "eof"})
                await peer.expect("done")
                await task
    assert (dest / "pin.txt").read_bytes() == PIN
    assert os.listdir(dest) == ["pin.txt"]


async def test_our_sender_still_resumes_with_a_receiver_that_shows_digests(
        relay: Relay, tmp_path: Path) -> None:
    """An older receiver offers [file, offset, digest] in accept.resume: our sender checks
    it, answers `resume` and sends only the rest."""
    data = os.urandom(2 * BLOCK + 100)
    src = tmp_path / "a.bin"
    src.write_bytes(data)
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(relay.url, "leak-5-older", "receiver") as peer:
            async with background(p2p_copy.send(relay.url, "leak-5-older", src,
                                                 progress="none")) as task:
                manifest = await peer.expect("manifest")
                assert manifest["entries"][0]["size"] == len(data)
                await peer.send_json({"type": "accept",
                                      "resume": [[0, BLOCK, sha256_hex(data[:BLOCK])]]})
                assert (await peer.expect("resume"))["files"] == [[0, BLOCK]]
                rest = b""
                while True:
                    message = await peer.recv()
                    if isinstance(message, bytes):
                        rest += message[1:]
                        continue
                    if json.loads(message)["type"] == "eof":
                        break
                await peer.send_json({"type": "done"})
                result = await task
    assert rest == data[BLOCK:]
    assert result.bytes == len(data) - BLOCK


async def test_error_texts_to_the_sender_name_no_local_path_or_free_space(
        relay: Relay, tmp_path: Path) -> None:
    """`disk_full` before accept tells the sender neither where nor how much is free;
    the local user still sees both."""
    dest = tmp_path / "incoming"
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(relay.url, "leak-6-full", "sender") as peer:
            async with background(p2p_copy.receive(relay.url, "leak-6-full", dest,
                                                    progress="none")) as task:
                await peer.expect("ready")
                await peer.send_manifest([file_entry("huge.bin", 2**52)])
                told = await peer.expect_error()
                with pytest.raises(p2p_copy.DiskFullError) as info:
                    await task
    assert told["code"] == "disk_full"
    assert str(tmp_path) not in told["message"] and "free space" in told["message"]
    assert not re.search(r"\d", told["message"]), told  # no figure at all
    assert str(dest) in str(info.value) and "are free" in str(info.value)


async def test_cli_exists_error_tells_the_sender_a_relative_name(
        relay: Relay, tmp_path: Path, processes: Processes) -> None:
    """`p2p-copy receive` without --overwrite refuses an existing file: the sender is told
    the name it sent, not the receiver's absolute path; the local user sees the path."""
    dest = (tmp_path / "incoming").resolve()
    (dest / "trip").mkdir(parents=True)
    (dest / "trip" / "a.txt").write_bytes(b"mine\n")
    async with asyncio.timeout(SCENARIO_TIMEOUT + CLI_TIMEOUT):
        async with handmade_peer(relay.url, "leak-7-cli", "sender") as peer:
            proc = processes.start("receive", relay.url, "leak-7-cli", "--out", str(dest))
            await peer.expect("ready")
            await peer.send_manifest([file_entry("trip/a.txt", 14)])
            told = await peer.expect_error()
            returncode, err = await communicate(proc)
    assert returncode == 11, err
    assert told["code"] == "exists"
    assert str(tmp_path) not in told["message"], told
    assert "'trip/a.txt'" in told["message"], told
    assert str(dest / "trip" / "a.txt") in err
    assert (dest / "trip" / "a.txt").read_bytes() == b"mine\n"


def test_a_source_that_cannot_be_read_is_not_named_to_the_receiver(tmp_path: Path) -> None:
    """The sender's error for an unreadable or changed source does not say where it lives
    on the sender's machine; the sender's own user sees the path."""
    from p2p_copy.errors import UsageError
    from p2p_copy.storage.sources import StreamReader

    src = tmp_path / "secret-folder" / "a.bin"
    src.parent.mkdir()
    src.write_bytes(b"abc")
    reader = StreamReader([str(src)], [10])  # announced 10 bytes, 3 are there
    with pytest.raises(UsageError) as info:
        reader.read_into(bytearray(65))
    assert str(src) in str(info.value)
    assert "secret-folder" not in info.value.peer_text
    src.unlink()
    with pytest.raises(UsageError) as info:
        StreamReader([str(src)], [3]).read_into(bytearray(65))
    assert str(tmp_path) not in info.value.peer_text


@pytest.mark.parametrize("left", ["final file, --overwrite", "part of an earlier run"])
async def test_a_sender_that_comes_back_gets_no_second_guess(
        relay: Relay, tmp_path: Path, left: str) -> None:
    """A sender whose guess was answered "no" hangs up and reconnects: the receiver, still
    in the same run, does not offer that content again (review of issue 17, finding 7: four
    guesses in one run were answered before)."""
    dest = tmp_path / "in"
    dest.mkdir()
    if left.startswith("final"):
        name, size, offset = "pin.txt", len(PIN), len(PIN)
        (dest / name).write_bytes(PIN)
        os.utime(dest / name, (PIN_MTIME, PIN_MTIME))
    else:
        name, size, offset = "big.bin", 3 * BLOCK, BLOCK
        earlier = b"S" * BLOCK
        part = dest / f".{name}.p2p-copy-part"
        part.write_bytes(earlier)
        sidecar = dest / f".{name}.p2p-copy-resume"
        sidecar.write_bytes(Sidecar(size=size, mtime=PIN_MTIME, offset=BLOCK,
                                    digest=sha256_hex(earlier)).encode())
        for path in (part, sidecar):
            path.chmod(0o600)
    code = "7-no-second-guess"
    held: list[object] = []
    async with asyncio.timeout(SCENARIO_TIMEOUT), background(p2p_copy.receive(
            relay.url, code, dest, progress="none", overwrite=left.startswith("final"),
            reconnect_timeout=60)):
        for guess in (b"0000\n", b"1111\n"):
            async with handmade_peer(relay.url, code, "sender") as peer:
                await peer.expect("ready")
                await peer.send_manifest([file_entry(name, size, mtime=PIN_MTIME)])
                accept = await peer.expect("accept")
                held.append(accept.get("held"))
                if accept.get("held"):
                    wrong = sha256_hex((guess * BLOCK)[:offset])
                    await peer.send_json({"type": "prefix_digests",
                                          "files": [[0, offset, wrong]]})
                    assert (await peer.expect("resume"))["files"] == []
            await asyncio.sleep(0.3)  # the receiver notices and reconnects
    assert held[0] == [[0, offset]]  # one guess, answered "no"
    assert not held[1]  # and no second one in the same run
