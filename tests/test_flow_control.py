"""The flow-control window of protocol.md §6.6.2, on our sender: the machine keeps what it
sent beyond the receiver's last ``ack`` under the ``window``, and the driver waits for acks
instead of sending; a receiver that misuses ``ack`` gets ``protocol``. The receivers here
are hand-made, as a browser page would be: ours announces no window."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest

import p2p_copy
from p2p_copy.errors import LocalProtocolError, RemoteProtocolError, TransferTimeoutError
from p2p_copy.protocol.messages import MIN_WINDOW, Accept, Ack, Done, FileEntry, Ready, encode
from p2p_copy.protocol.transfer import Acked, Sender, SenderState
from p2p_copy.relay import Relay
from tests.handmade_peer import RECV_TIMEOUT, HandmadePeer, handmade_peer
from tests.test_failures import SCENARIO_TIMEOUT, assert_one_line, background, code, make_file

__all__ = ["code"]  # the fixture, used by name

HASH = hashlib.sha256(b"flow").hexdigest()
CHUNK = 64 * 1024


# --- the machine ------------------------------------------------------------------------


def streaming(window: int | None, size: int = 4 * MIN_WINDOW) -> tuple[Sender, bytearray]:
    """A sender in STREAMING whose receiver's accept carried ``window``, and a chunk buffer."""
    sender = Sender(HASH, [FileEntry("f", size)])
    sender.hello()
    sender.receive(encode(Ready()))
    [first] = list(sender.manifest())
    assert json.loads(first)["ack"] is True
    sender.receive(encode(Accept(window=window)))
    return sender, bytearray(1 + CHUNK)


def test_the_sender_stops_at_the_window_and_an_ack_moves_it() -> None:
    """With W = 256 KiB and 64 KiB messages: four go, the fifth must wait for an ack;
    framing it anyway is our bug (LocalProtocolError), not something sent."""
    sender, buffer = streaming(MIN_WINDOW)
    for _ in range(4):
        assert sender.window_open
        sender.frame_data(buffer, CHUNK)
    assert not sender.window_open
    with pytest.raises(LocalProtocolError, match="window"):
        sender.frame_data(buffer, CHUNK)
    assert sender.receive(encode(Ack(bytes=1))) == [Acked(1)]
    assert sender.window_open  # 4 * 64 KiB - 1 < W
    sender.frame_data(buffer, CHUNK)
    assert not sender.window_open
    assert sender.receive(encode(Ack(bytes=1))) == [Acked(1)]  # repeated: allowed, no gain
    assert not sender.window_open


def test_without_a_window_nothing_waits() -> None:
    """An accept without ``window`` (every receiver before §6.6.2, and ours): no limit."""
    sender, buffer = streaming(None, size=64 * CHUNK)
    for _ in range(64):
        assert sender.window_open
        sender.frame_data(buffer, CHUNK)


@pytest.mark.parametrize(("window", "acks", "why"), [
    (None, [0], "without a 'window'"),
    (MIN_WINDOW, [CHUNK, CHUNK - 1], f"acknowledged {CHUNK - 1} bytes after {CHUNK}"),
    (MIN_WINDOW, [CHUNK + 1], f"acknowledged {CHUNK + 1} bytes after 0, of {CHUNK} sent"),
], ids=["no window", "decreasing", "more than sent"])
def test_a_wrong_ack_is_the_receivers_violation(window: int | None, acks: list[int],
                                               why: str) -> None:
    """An ack without a window, one that goes back, one beyond what was sent: FAILED."""
    sender, buffer = streaming(window)
    sender.frame_data(buffer, CHUNK)
    *fine, wrong = acks
    for n in fine:
        sender.receive(encode(Ack(bytes=n)))
    with pytest.raises(RemoteProtocolError, match=why):
        sender.receive(encode(Ack(bytes=wrong)))
    assert sender.state is SenderState.FAILED


def test_acks_are_taken_after_eof_but_not_before_the_accept() -> None:
    """An ack of the last bytes may follow eof (WAIT_DONE); before any data it is out of turn."""
    sender, buffer = streaming(MIN_WINDOW, size=CHUNK)
    sender.frame_data(buffer, CHUNK)
    sender.checksums([hashlib.sha256(bytes(CHUNK)).hexdigest()])
    sender.eof()
    assert sender.receive(encode(Ack(bytes=CHUNK))) == [Acked(CHUNK)]
    sender.receive(encode(Done()))
    assert sender.state is SenderState.DONE

    early = Sender(HASH, [FileEntry("f", 1)])
    early.hello()
    early.receive(encode(Ready()))
    list(early.manifest())
    with pytest.raises(RemoteProtocolError, match="'ack' arrived while the sender was in"):
        early.receive(encode(Ack(bytes=0)))


# --- our sender against a receiver that sets a window -----------------------------------


#: How long the receiver below lets a pause last before it stores and acknowledges.
IDLE = 0.02


async def windowed_receive(peer: HandmadePeer, window: int, total: int) -> tuple[bytes, int]:
    """Receive the whole data stream as a busy page would: announce ``window``, then store
    (and acknowledge) what arrived only when the sender pauses. A sender that ignores the
    window never pauses, so what it sent beyond our last ack reaches the window: caught
    before each data message (§6.6.2: sent - acked < W; the sender's acked is at most ours).
    Returns the stream and the most ever held unacknowledged."""
    manifest = await peer.expect("manifest")
    assert manifest["ack"] is True
    await peer.send_json({"type": "accept", "window": window})
    received, acked, most = bytearray(), 0, 0
    while True:
        try:
            message = await peer.recv(IDLE if len(received) > acked else RECV_TIMEOUT)
        except TimeoutError:
            acked = len(received)
            await peer.send_json({"type": "ack", "bytes": acked})
            continue
        if isinstance(message, bytes):
            assert message[0] == 0
            assert len(received) - acked < window, (len(received), acked)
            received += message[1:]
            most = max(most, len(received) - acked)
            continue
        obj = json.loads(message)
        if obj["type"] == "eof":
            assert len(received) == total
            await peer.send_json({"type": "done"})
            return bytes(received), most
        assert obj["type"] == "checksums", obj


@pytest.mark.slow
async def test_a_receiver_with_a_small_window_gets_every_byte(
        relay: Relay, tmp_path: Path, code: str) -> None:
    """A 6 MiB file to a receiver announcing 256 KiB: identical bytes, and the sender never
    had the window's worth unacknowledged when it sent (counted on the receiving side)."""
    data = os.urandom(6 * 2**20 + 12345)
    src = make_file(tmp_path / "big.bin", data)
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(relay.url, code, "receiver") as peer:
            async with background(p2p_copy.send(relay.url, code, [src], progress="none",
                                                chunk_size=CHUNK, compress="never")) as task:
                got, most = await windowed_receive(peer, MIN_WINDOW, len(data))
                result = await task
    assert got == data and result.bytes == len(data)
    assert most <= MIN_WINDOW - 1 + CHUNK


@pytest.mark.slow
async def test_a_receiver_that_never_acks_is_one_that_reads_nothing(
        relay: Relay, tmp_path: Path, code: str) -> None:
    """With a window and no ack, the sender waits, then gives up after idle_timeout, as
    with a receiver that stopped reading; it sent no more than the window."""
    src = make_file(tmp_path / "big.bin", bytes(4 * 2**20))
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(relay.url, code, "receiver") as peer:
            async with background(p2p_copy.send(relay.url, code, [src], progress="none",
                                                chunk_size=CHUNK, compress="never",
                                                idle_timeout=1)) as task:
                await peer.expect("manifest")
                await peer.send_json({"type": "accept", "window": MIN_WINDOW})
                with pytest.raises(TransferTimeoutError) as info:
                    await task
                rest = await peer.drain()
    assert "has not read anything for 1 s" in str(info.value)
    data = [m for m in rest if isinstance(m, bytes)]
    assert sum(len(m) - 1 for m in data) == MIN_WINDOW  # four 64 KiB messages, then nothing
    assert json.loads(str(rest[-1]))["code"] == "timeout"


@pytest.mark.parametrize(("accept", "acks"), [
    ({"type": "accept"}, [CHUNK]),
    ({"type": "accept", "window": MIN_WINDOW}, [CHUNK, 1]),
], ids=["ack without window", "decreasing ack"])
async def test_a_receiver_that_misuses_ack_gets_protocol(
        relay: Relay, tmp_path: Path, code: str, accept: dict[str, object],
        acks: list[int]) -> None:
    """``ack`` when the accept had no ``window``, or an ``ack`` lower than the one before:
    send() raises RemoteProtocolError and tells the receiver ``protocol``."""
    src = make_file(tmp_path / "big.bin", bytes(4 * 2**20))
    async with asyncio.timeout(SCENARIO_TIMEOUT):
        async with handmade_peer(relay.url, code, "receiver") as peer:
            async with background(p2p_copy.send(relay.url, code, [src], progress="none",
                                                chunk_size=CHUNK, compress="never")) as task:
                await peer.expect("manifest")
                await peer.send_json(accept)
                first = await peer.recv()
                assert isinstance(first, bytes)
                for n in acks:
                    await peer.send_json({"type": "ack", "bytes": n})
                told = await peer.expect_error()
                with pytest.raises(RemoteProtocolError) as info:
                    await task
    assert told["code"] == "protocol"
    assert "'ack'" in str(info.value) or "acknowledged" in str(info.value)
    assert_one_line(info.value)
