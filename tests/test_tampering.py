"""A relay that records or alters traffic learns and changes nothing (issue 4, point 3).

The relay here is a man in the middle written for the test: it pairs peers like the real
one (hello, ready) and forwards every message, but lets a test flip bits, drop, reorder,
duplicate, truncate or inject messages, and records everything it saw.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import p2p_copy
from p2p_copy.errors import (
    ConnectionLostError,
    P2PCopyError,
    PeerGoneError,
    TamperingError,
    WrongCodeError,
)
from p2p_copy.protocol import codes, secure
from p2p_copy.protocol.messages import Confirm, Pake, parse_message

from .thirdparty_peer import whole_code_hash_hex

pytestmark = pytest.mark.timeout(60)

Message = str | bytes
#: (direction "s2r" or "r2s", index of the message in that direction, message) -> what to deliver.
Tamper = Callable[[str, int, Message], list[Message]]
CLOSE = object()  # a tamper function's way to say: cut the connection here


class ManInTheMiddle:
    """Pairs one sender and one receiver, forwards through ``tamper`` and records it all."""

    def __init__(self, tamper: Tamper | None = None) -> None:
        self.tamper: Tamper = tamper or (lambda _d, _i, m: [m])
        self.recorded: list[tuple[str, Message]] = []
        self.hellos: list[dict[str, object]] = []
        self.peers: dict[str, ServerConnection] = {}
        self.paired = asyncio.Event()
        self.url = ""

    async def handle(self, ws: ServerConnection) -> None:
        hello = json.loads(await ws.recv())
        self.hellos.append(hello)
        role = hello["role"]
        self.peers[role] = ws
        if len(self.peers) == 2:
            self.paired.set()
        await self.paired.wait()
        if role == "sender":
            await ws.send('{"type":"ready"}')
        other = self.peers["receiver" if role == "sender" else "sender"]
        direction = "s2r" if role == "sender" else "r2s"
        counter = itertools.count()
        try:
            async for message in ws:
                self.recorded.append((direction, message))
                for out in self.tamper(direction, next(counter), message):
                    if out is CLOSE:
                        await other.close(1000)
                        return
                    await other.send(out)
        except ConnectionClosed:
            pass
        await other.close(1000)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ManInTheMiddle]:
        async with serve(self.handle, "127.0.0.1", 0, compression=None,
                         max_size=2**22) as server:
            port = server.sockets[0].getsockname()[1]
            self.url = f"ws://127.0.0.1:{port}"
            yield self


async def transfer(mitm: ManInTheMiddle, tmp_path: Path, code: str = "7-alpha-bravo-charlie",
                   *, receiver_code: str | None = None, size: int = 2_000_000,
                   receiver_reconnect: float = 0) -> tuple[BaseException | p2p_copy.TransferResult,
                              BaseException | p2p_copy.TransferResult, Path, bytes]:
    source = tmp_path / "secret-report.bin"
    content = os.urandom(size)
    source.write_bytes(content)
    dest = tmp_path / "dest"
    async with mitm.running():
        receiving = asyncio.ensure_future(p2p_copy.receive(
            mitm.url, receiver_code or code, dest, progress="none", wait_timeout=20,
            reconnect_timeout=receiver_reconnect))
        await asyncio.sleep(0.1)
        sending = asyncio.ensure_future(p2p_copy.send(
            mitm.url, code, [source], progress="none", wait_timeout=20,
            reconnect_timeout=0))
        sent, received = await asyncio.gather(sending, receiving, return_exceptions=True)
    return sent, received, dest, content


def final_files(dest: Path) -> list[str]:
    if not dest.exists():
        return []
    # A cut connection leaves a hidden part and its sidecar, for a later run to resume.
    return sorted(str(p.relative_to(dest)) for p in dest.rglob("*")
                  if not p.name.endswith((".p2p-copy-part", ".p2p-copy-resume")))


# s2r messages: 0 pake, 1 confirm, 2 manifest, 3.. data (256 KiB each), then checksums, eof.
TARGET = 5


def flip(_d: str, i: int, m: Message) -> list[Message]:
    if i == TARGET and isinstance(m, bytes):
        at = min(100, len(m) - 1)
        return [m[:at] + bytes([m[at] ^ 0x04]) + m[at + 1:]]
    return [m]


def drop(_d: str, i: int, m: Message) -> list[Message]:
    return [] if i == TARGET else [m]


def duplicate(_d: str, i: int, m: Message) -> list[Message]:
    return [m, m] if i == TARGET else [m]


_held: list[Message] = []


def reorder(_d: str, i: int, m: Message) -> list[Message]:
    if i == TARGET:
        _held.append(m)
        return []
    if i == TARGET + 1:
        return [m, _held.pop()]
    return [m]


def truncate_message(_d: str, i: int, m: Message) -> list[Message]:
    return [m[: len(m) // 2]] if i == TARGET else [m]


def inject_binary(_d: str, i: int, m: Message) -> list[Message]:
    return [os.urandom(1000), m] if i == TARGET else [m]


def inject_text(_d: str, i: int, m: Message) -> list[Message]:
    return ['{"type":"eof"}', m] if i == TARGET else [m]


def replay_first(_d: str, i: int, m: Message) -> list[Message]:
    if i == 2:
        _held.append(m)
    return [_held[0]] if i == TARGET else [m]


@pytest.mark.slow
@pytest.mark.parametrize("tamper", [flip, drop, duplicate, reorder, truncate_message,
                                    inject_binary, inject_text, replay_first],
                         ids=lambda f: f.__name__)
async def test_tampering_with_data_is_detected(tmp_path: Path, tamper: Tamper) -> None:
    """Each way of altering the sender's messages fails the transfer with TamperingError."""
    _held.clear()
    mitm = ManInTheMiddle(lambda d, i, m: tamper(d, i, m) if d == "s2r" else [m])
    sent, received, dest, _ = await transfer(mitm, tmp_path)
    assert isinstance(received, TamperingError), received
    assert "failed authentication" in str(received) or "injected" in str(received)
    # The receiver tells the sender why, sealed: the sender fails with the same class.
    assert isinstance(sent, TamperingError), sent
    assert final_files(dest) == []


async def test_tampering_with_the_receivers_answers_is_detected(tmp_path: Path) -> None:
    """Altering the receiver's sealed 'accept' fails the sender with TamperingError."""
    mitm = ManInTheMiddle(lambda d, i, m: flip(d, TARGET, m) if (d, i) == ("r2s", 2) else [m])
    sent, received, dest, _ = await transfer(mitm, tmp_path)
    assert isinstance(sent, TamperingError), sent
    assert isinstance(received, (TamperingError, PeerGoneError)), received
    assert final_files(dest) == []


async def test_cutting_the_stream_short_leaves_nothing(tmp_path: Path) -> None:
    """A relay that cuts the transfer off part-way (truncation) gets an error, no file."""
    mitm = ManInTheMiddle(lambda d, i, m: [CLOSE] if (d, i) == ("s2r", TARGET) else [m])  # type: ignore[list-item]
    sent, received, dest, _ = await transfer(mitm, tmp_path)
    assert isinstance(received, (PeerGoneError, ConnectionLostError)), received
    assert isinstance(sent, P2PCopyError), sent
    assert final_files(dest) == []


async def test_altered_key_exchange_looks_like_a_wrong_code(tmp_path: Path) -> None:
    """A relay that replaces a pake message (a man-in-the-middle attempt) gets WrongCodeError."""

    def swap_pake(d: str, i: int, m: Message) -> list[Message]:
        if (d, i) == ("s2r", 0):
            return [secure.KeyExchange("7-alpha-bravo-charlie", "sender").message()]
        return [m]

    sent, received, dest, _ = await transfer(ManInTheMiddle(swap_pake), tmp_path)
    assert isinstance(sent, WrongCodeError), sent
    assert isinstance(received, WrongCodeError), received
    assert final_files(dest) == []


async def test_wrong_code_is_reported_to_both_sides(tmp_path: Path) -> None:
    """Different secrets in the same room: both sides fail with WrongCodeError, nothing sent."""
    mitm = ManInTheMiddle()
    sent, received, dest, _ = await transfer(mitm, tmp_path, "7-alpha-bravo-charlie",
                                             receiver_code="7-alpha-bravo-delta")
    assert isinstance(sent, WrongCodeError) and isinstance(received, WrongCodeError)
    assert final_files(dest) == []
    # Nothing but the handshake and an error crossed: no sealed byte was ever sent.
    assert all(isinstance(m, str) for _, m in mitm.recorded)


@pytest.mark.slow
async def test_recording_relay_learns_nothing_by_trying_every_code(tmp_path: Path) -> None:
    """A relay that stores all traffic, then tries each code of the space, gains only the room.

    The space here is small on purpose (room 7, three words out of six: 216 codes), so
    that the attacker can really try all of them; the real space is 512**3 per room.
    """
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    space = ["-".join(("7", *w)) for w in itertools.product(words, repeat=3)]
    code = "7-echo-bravo-foxtrot"
    assert code in space
    mitm = ManInTheMiddle()
    sent, received, _, content = await transfer(mitm, tmp_path, code, size=300_000)
    assert isinstance(sent, p2p_copy.TransferResult)
    assert isinstance(received, p2p_copy.TransferResult)

    # 1. What the hello tells: the room, and nothing about the secret words.
    room = {h["code_hash_hex"] for h in mitm.hellos}
    assert len(room) == 1
    matching = [c for c in space if codes.room_hash_hex(c) in room]
    assert matching == space  # every code of room 7 fits equally well
    assert whole_code_hash_hex(code) not in room  # the whole code's hash is never sent

    # 2. What the traffic tells: no file name, no content, no code in the clear.
    for _, message in mitm.recorded:
        raw = message.encode() if isinstance(message, str) else message
        assert b"secret-report" not in raw and b"echo" not in raw
        assert content[:64] not in raw
    pakes: dict[str, object] = {}
    for direction, message in mitm.recorded:
        if isinstance(message, str):
            parsed = parse_message(message)
            if isinstance(parsed, (Pake, Confirm)):
                pakes.setdefault(f"{direction}-{parsed.type}", parsed)
    sender_pake = pakes["s2r-pake"]
    receiver_confirm = pakes["r2s-confirm"]
    first_sealed = next(m for d, m in mitm.recorded if d == "s2r" and isinstance(m, bytes))
    assert isinstance(sender_pake, Pake) and isinstance(receiver_confirm, Confirm)

    # 3. Offline guessing: for every candidate, play the receiver against the recorded
    # sender message. Without the receiver's secret scalar no candidate, not even the
    # right code, reproduces the confirmation or opens a single recorded message.
    hits = 0
    for candidate in space:
        guess = secure.KeyExchange(candidate, "receiver")
        guess.receive(sender_pake)
        if parse_message(guess.confirmation()) == receiver_confirm:
            hits += 1
        guess._confirmed = True  # the attacker skips the check it cannot pass
        try:
            guess.channel().open(first_sealed)
            hits += 1
        except TamperingError:
            pass
    assert hits == 0


async def test_hanging_up_after_the_receivers_confirm_is_a_wrong_code(tmp_path: Path) -> None:
    """A relay that collects the receiver's confirmation (enough to test one code guess offline)
    and hangs up gets WrongCodeError, not a reconnect that would hand it another guess."""
    mitm = ManInTheMiddle(
        lambda d, i, m: [CLOSE] if (d, i) == ("r2s", 1) else [m])  # type: ignore[list-item]
    async with asyncio.timeout(30):
        _, received, dest, _ = await transfer(mitm, tmp_path, receiver_reconnect=120)
    assert isinstance(received, WrongCodeError), received
    assert "does not retry" in str(received)
    assert final_files(dest) == []
