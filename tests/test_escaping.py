"""Nothing a peer or a relay chooses reaches a terminal unescaped (finding 11 of issue 17).

The review saw a relay's close reason with C1 controls and bidi overrides printed raw by
``--json``: JSON escapes only C0 controls. paths.display_name is the one escaping rule for
text shown as text; JSON lines are ASCII.
"""

from __future__ import annotations

import asyncio
import json
import sys
import unicodedata
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

import p2p_copy
from p2p_copy.errors import ConnectionLostError
from p2p_copy.protocol.paths import display_name
from p2p_copy.relay import Relay

from .conftest import run_async

TIMEOUT = 60.0

#: What must never reach a terminal as it is: C0, DEL, C1, the bidi controls, zero-width
#: and other format characters, the line and paragraph separators.
UNSAFE = (
    [chr(c) for c in range(0x20)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xA0)]
    + [chr(c) for c in range(0x202A, 0x202F)] + [chr(c) for c in range(0x2066, 0x206A)]
    + ["\u200e", "\u200f", "\u061c", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff",
       "\u00ad", "\U000e0041", "\u2028", "\u2029"]
)
#: A close reason a hostile relay picks: CSI (C1) colour, a bidi override, a zero-width
#: space, a line separator; 123 bytes at most, as a close frame allows.
HOSTILE_REASON = "\x9b31mred\x9b0m \u202egnp.exe\u202c zero\u200bwidth\u2028next \x1b]0;title\x07"


def _raw_unsafe(text: str) -> list[str]:
    return sorted({f"U+{ord(c):04X}" for c in text if c in UNSAFE and c != "\n"})


@pytest.mark.parametrize("char", UNSAFE, ids=lambda c: f"U+{ord(c):04X}")
def test_display_name_escapes_every_unsafe_character(char: str) -> None:
    """The one escaping rule covers C0, DEL, C1, bidi, zero-width/format and separators."""
    shown = display_name(f"a{char}b")
    assert char not in shown
    assert shown.startswith("a\\") and shown.endswith("b")
    assert unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")


@asynccontextmanager
async def hostile_relay(reason: str) -> AsyncIterator[str]:
    """A 'relay' on loopback that reads the hello and closes with ``reason``; its URL."""

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(4999, reason)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


async def _cli(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    return await run_async(sys.executable, "-m", "p2p_copy", *args, stdin=stdin, timeout=TIMEOUT)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["receive", "send"])
async def test_a_hostile_close_reason_reaches_json_and_stderr_escaped(
    tmp_path: Path, command: str
) -> None:
    """--json and the error line show a relay's close reason, but no control of it raw."""
    assert len(HOSTILE_REASON.encode()) <= 123
    src = tmp_path / "a.txt"
    src.write_text("x")
    code = f"{uuid.uuid4().hex[:12]}-escape"
    extra = [str(src)] if command == "send" else ["--out", str(tmp_path / "out")]
    async with hostile_relay(HOSTILE_REASON) as url:
        rc, out, err = await _cli(command, url, code, *extra, "--json",
                                  "--reconnect-timeout", "0")
    assert rc == ConnectionLostError.exit_code, err
    assert _raw_unsafe(out) == [] and _raw_unsafe(err) == []
    error = json.loads(out.splitlines()[-1])
    assert error["event"] == "error"
    assert HOSTILE_REASON in error["message"]  # escaped for the terminal, not lost to scripts
    assert "\\x9b31mred" in err and "\\u202egnp.exe" in err


@pytest.mark.timeout(120)
async def test_hostile_names_in_json_events_are_escaped(relay: Relay, tmp_path: Path) -> None:
    """A sender's bidi and zero-width names reach --json events (offer, file) escaped."""
    src = tmp_path / "src"
    src.mkdir()
    names = ["invoice\u202efdp.exe", "zero\u200bwidth.txt", "sep\u2028line.txt"]
    for name in names:
        (src / name).write_text(name)
    code = f"{uuid.uuid4().hex[:12]}-escape"
    receiving = asyncio.ensure_future(_cli("receive", relay.url, code, "--out",
                                           str(tmp_path / "out"), "--json"))
    async with asyncio.timeout(TIMEOUT):
        await p2p_copy.send(relay.url, code, [src / n for n in names], progress="none")
        rc, out, err = await receiving
    assert rc == 0, err
    assert _raw_unsafe(out) == []
    events = [json.loads(line) for line in out.splitlines()]
    offer, = (e for e in events if e["event"] == "offer")
    assert offer["top_level"] == names  # escaped by JSON only: a script gets the names
    assert offer["files"] == 3 and offer["hidden"] == []
    shown = {e["path"] for e in events if e["event"] == "file"}
    assert shown == {display_name(n) for n in names}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)
