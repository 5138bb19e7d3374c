"""One code guess per run, even across reconnects (issue 17, finding 1).

A relay (or anyone who can cut a connection) that ends a connection in the middle of the
key exchange hides whether its code guess was right. Each test here first lets a real
pair meet and start a transfer through a relay written for the test, cuts it so that
both peers reconnect, and then plays the peer of one side with a guessed code and ends
that connection after the pake, with each close code the protocol knows and with a
plain TCP drop. The side must stop with WrongCodeError (exit 14) and never come back
for a second guess: before the fix, close codes other than 1000/1001/4004/4005 were
retried (CodeInUseError) or reported as something else.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import p2p_copy
from p2p_copy.errors import WrongCodeError
from p2p_copy.protocol.messages import CloseCode, Confirm, Pake, parse_message
from p2p_copy.protocol.secure import KeyExchange

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]

CODE = "7-alpha-bravo-charlie"
GUESS = "7-wrong-guess-here"
#: Every close code a relay can send, plus an internal error, plus a TCP drop (None).
ENDINGS: list[int | None] = [*sorted({int(c) for c in CloseCode}), 1011, None]


class GuessingRelay:
    """Pairs the real peers once and cuts them mid-transfer; then plays the peer of
    ``victim`` with a guessed code and ends each such connection with ``ending``."""

    def __init__(self, victim: Literal["sender", "receiver"], ending: int | None) -> None:
        self.victim = victim
        self.ending = ending
        self.honest: dict[str, ServerConnection] = {}
        self.paired = asyncio.Event()
        self.cut = False
        #: Connections of the victim after the cut, and the confirmations it showed us.
        self.victim_connections = 0
        self.confirmations_seen = 0
        self.url = ""

    async def handle(self, ws: ServerConnection) -> None:
        role = json.loads(await ws.recv())["role"]
        if not self.cut:
            await self._honest(ws, role)
        elif role == self.victim:
            self.victim_connections += 1
            await self._guess(ws, role)
        else:
            await ws.wait_closed()  # the other real peer waits in vain

    async def _honest(self, ws: ServerConnection, role: str) -> None:
        self.honest[role] = ws
        if len(self.honest) == 2:
            self.paired.set()
        await self.paired.wait()
        if role == "sender":
            await ws.send('{"type":"ready"}')
        other = self.honest["receiver" if role == "sender" else "sender"]
        data = 0
        try:
            async for message in ws:
                if isinstance(message, bytes) and role == "sender":
                    data += 1
                    if data == 3:  # the transfer is under way: cut both, as a restart would
                        self.cut = True
                        await asyncio.gather(ws.close(CloseCode.GOING_AWAY),
                                             other.close(CloseCode.GOING_AWAY))
                        return
                await other.send(message)
        except ConnectionClosed:
            pass

    async def _guess(self, ws: ServerConnection, role: str) -> None:
        mine = KeyExchange(GUESS, "receiver" if role == "sender" else "sender")
        if role == "sender":
            await ws.send('{"type":"ready"}')
            parsed = parse_message(await ws.recv())
            assert isinstance(parsed, Pake)
            await ws.send(mine.message())
            # No confirmation of ours: hang up, hiding whether the guess was right.
        else:
            await ws.send(mine.message())
            assert isinstance(parse_message(await ws.recv()), Pake)
        async with asyncio.timeout(2):
            try:
                while True:
                    if isinstance(parse_message(await ws.recv()), Confirm):
                        self.confirmations_seen += 1
                        break
            except (ConnectionClosed, TimeoutError):
                pass
        if self.ending is None:
            ws.transport.abort()  # a plain TCP drop: no close frame
        else:
            await ws.close(self.ending, "")

    @asynccontextmanager
    async def running(self) -> AsyncIterator[GuessingRelay]:
        async with serve(self.handle, "127.0.0.1", 0, compression=None,
                         max_size=2**22) as server:
            port = server.sockets[0].getsockname()[1]
            self.url = f"ws://127.0.0.1:{port}"
            yield self


async def _run(tmp_path: Path, relay: GuessingRelay) -> BaseException | object:
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(4_000_000))
    async with relay.running():
        receiving = asyncio.ensure_future(p2p_copy.receive(
            relay.url, CODE, tmp_path / "dest", progress="none", wait_timeout=20,
            reconnect_timeout=120))
        await asyncio.sleep(0.1)
        sending = asyncio.ensure_future(p2p_copy.send(
            relay.url, CODE, [source], progress="none", wait_timeout=20, reconnect_timeout=120,
            chunk_size=65536))
        victim, bystander = ((sending, receiving) if relay.victim == "sender"
                             else (receiving, sending))
        try:
            # Before the fix the victim kept reconnecting: each attempt, one more guess.
            async with asyncio.timeout(15):
                await asyncio.wait({victim})
        except TimeoutError:
            pass
        finally:
            for task in (victim, bystander):
                task.cancel()
            results = await asyncio.gather(victim, bystander, return_exceptions=True)
    return results[0]


@pytest.mark.parametrize("ending", ENDINGS, ids=lambda e: f"close-{e}" if e else "tcp-drop")
async def test_a_receiver_gives_a_hidden_guess_one_chance_only(
        tmp_path: Path, ending: int | None) -> None:
    relay = GuessingRelay("receiver", ending)
    outcome = await _run(tmp_path, relay)
    assert isinstance(outcome, WrongCodeError), repr(outcome)
    assert "does not retry" in str(outcome)
    # It showed its confirmation once (the one guess) and did not come back.
    assert (relay.victim_connections, relay.confirmations_seen) == (1, 1)
    assert not list((tmp_path / "dest").glob("data.bin"))


@pytest.mark.parametrize("ending", ENDINGS, ids=lambda e: f"close-{e}" if e else "tcp-drop")
async def test_a_sender_ends_a_key_exchange_cut_short(tmp_path: Path, ending: int | None) -> None:
    relay = GuessingRelay("sender", ending)
    outcome = await _run(tmp_path, relay)
    assert isinstance(outcome, WrongCodeError), repr(outcome)
    # A sender shows its confirmation only after checking the receiver's: nothing to test.
    assert (relay.victim_connections, relay.confirmations_seen) == (1, 0)
