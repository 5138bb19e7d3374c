"""The websockets internals that the relay's frame path (forwarding.py) relies on.

forwarding.py hooks into websockets' asyncio connection below its public API (measured in
benchmarks/README.md: going through recv()/send() costs the relay more CPU per GB). If a
release changes one of these hooks, the relay could stop resuming its reads and hang its
pairs, so each hook is checked here by its shape and, where it matters, its behaviour;
pyproject.toml bounds websockets to the major versions these tests passed with. A failure
here means: read forwarding.py's "Hooks" section against the new release before raising
the bound.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from pathlib import Path

from websockets.asyncio.connection import Connection
from websockets.asyncio.messages import Assembler
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State
from websockets.streams import StreamReader
from websockets.version import version as websockets_version

from p2p_copy.protocol.messages import CloseCode

ROOT = Path(__file__).resolve().parent.parent


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_connection_methods_the_frame_path_overrides_or_calls() -> None:
    """process_event(event) takes every parsed frame; send_data() writes the protocol's
    output; both are what forwarding.py overrides and calls."""
    assert _parameters(Connection.process_event) == ["self", "event"]
    assert _parameters(Connection.send_data) == ["self"]
    source = inspect.getsource(Connection.data_received)
    assert "self.process_event(event)" in source, "frames no longer reach process_event"
    assert "self.recv_messages.put(event)" in inspect.getsource(Connection.process_event)
    for name in ("pause_writing", "resume_writing", "connection_made", "connection_lost"):
        assert callable(getattr(Connection, name))


def test_connection_attributes_the_frame_path_reads() -> None:
    """paused (write buffer over its high-water mark), recv_messages (the assembler),
    connection_lost_waiter and close_timeout are set by the connection itself."""
    init = inspect.getsource(Connection.__init__)
    for name in ("self.paused", "self.connection_lost_waiter", "self.close_timeout"):
        assert name in init, name
    assert "self.recv_messages = Assembler(" in inspect.getsource(Connection.connection_made)
    assert "self.paused = True" in inspect.getsource(Connection.pause_writing)
    # server.py reads how a connection ended from these.
    assert isinstance(inspect.getattr_static(Connection, "close_code"), property)


async def test_the_assemblers_resume_callback_can_be_replaced() -> None:
    """forwarding.py replaces recv_messages.resume so that reading resumes only when the
    partner does not hold it either: the assembler must call the attribute it has then."""
    calls: list[str] = []
    assembler = Assembler(high=1, low=0, pause=lambda: calls.append("pause"),
                          resume=lambda: calls.append("original"))
    assembler.resume = lambda: calls.append("replaced")
    assembler.put(Frame(Opcode.BINARY, b"a"))
    assembler.put(Frame(Opcode.BINARY, b"b"))
    assert assembler.paused and calls == ["pause"]
    async with asyncio.timeout(5):
        await assembler.get()
        await assembler.get()
    assert calls == ["pause", "replaced"] and not assembler.paused
    assert hasattr(assembler, "frames")


def test_the_protocols_parser_reads_its_size_limit_per_frame() -> None:
    """Lowering protocol.max_message_size after the handshake (the pre-pair limit) makes
    the next larger frame fail with 1009; the unparsed input stays in reader.buffer."""
    protocol = Protocol(Side.SERVER, state=State.OPEN, max_size=2**20)
    assert isinstance(protocol.reader, StreamReader)
    assert isinstance(protocol.reader.buffer, bytearray)
    protocol.max_message_size = 16
    mask = b"\x00\x00\x00\x00"
    protocol.receive_data(bytes([0x82, 0x80 | 17]) + mask + bytes(17))
    assert protocol.close_sent is not None
    assert protocol.close_sent.code == CloseCode.MESSAGE_TOO_BIG
    assert protocol.close_rcvd_then_sent is None  # the relay closed first, nothing echoed
    for name in ("send_binary", "send_continuation", "fail", "data_to_send"):
        assert callable(getattr(protocol, name))


def test_a_ping_is_answered_inside_data_received() -> None:
    """forwarding.py sees the answers a read leaves on a peer's socket (pongs) by the size
    of its write buffer before and after data_received: the answer must be written there."""
    assert "self.send_data()" in inspect.getsource(Connection.data_received)
    protocol = Protocol(Side.SERVER, state=State.OPEN)
    protocol.receive_data(Frame(Opcode.PING, b"p").serialize(mask=True, extensions=[]))
    assert protocol.data_to_send() == [
        Frame(Opcode.PONG, b"p").serialize(mask=False, extensions=[])]


def test_pyproject_bounds_websockets_to_a_tested_major() -> None:
    """The installed websockets (the one these tests ran with) is inside the bound, and
    the bound stops before the next major, whose internals nobody has checked."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    spec = next(d for d in project["project"]["dependencies"] if d.startswith("websockets"))
    match = re.fullmatch(r"websockets>=([0-9.]+),<([0-9]+)", spec.replace(" ", ""))
    assert match, f"{spec!r}: websockets needs an upper bound (see forwarding.py)"
    installed = tuple(int(part) for part in re.findall(r"[0-9]+", websockets_version)[:2])
    lower = tuple(int(part) for part in match[1].split(".")[:2])
    assert lower <= installed and installed[0] < int(match[2]), (spec, websockets_version)
    assert int(match[2]) <= installed[0] + 1, f"{spec!r} allows an untested major"
