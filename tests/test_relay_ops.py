"""The relay as an operator runs it: room paths, /metrics, /readyz, graceful drain, JSON logs.

Every relay here is real and bound to 127.0.0.1: in-process (``running_relay``) or as a
``p2p-copy run-relay-server`` process, which the tests stop or kill.
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidStatus

import p2p_copy
import p2p_copy.peer.receiving
from p2p_copy import ConnectionLostError, RelayUnreachableError
from p2p_copy.display.progress import NoProgress
from p2p_copy.peer.offload import SLOW_CALL, Offload
from p2p_copy.protocol.codes import room_from_path, room_hash_hex, room_url
from p2p_copy.protocol.messages import CloseCode
from p2p_copy.relay import Relay
from p2p_copy.relay.logs import show_address
from p2p_copy.storage.destination import Destination
from p2p_copy.testing import TEST_CONFIG, running_relay

from .conftest import Processes, cli_env, free_port, http_request, wait_for_port
from .test_relay import READY, Peers, closed, hello, new_hash, wait_until

MiB = 2**20


def fresh_code() -> str:
    return f"{uuid.uuid4().hex[:12]}-ops"


async def raw_connect(url: str) -> ClientConnection:
    return await connect(url, open_timeout=5, close_timeout=2, ping_interval=None,
                         compression=None)


async def http_get(port: int, path: str, accept: str = "") -> tuple[int, dict[str, str], str]:
    """GET http://127.0.0.1:port/path; status, headers (lowercase names) and body."""
    extra = f"Accept: {accept}\r\n" if accept else ""
    status, headers, body = await http_request(port, path, extra=extra)
    return status, headers, body.decode()


def http_get_sync(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def samples(text: str) -> dict[str, float]:
    """Prometheus text as {'name': v, 'name{label="x"}': v}."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


async def scrape(relay: Relay) -> dict[str, float]:
    status, headers, body = await http_get(relay.port, "/metrics")
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain")
    return samples(body)


class Gate:
    """Holds the receiver's first disk write (the first once ``when()`` is true) until
    released, so a transfer stays running."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch,
                 when: Callable[[], bool] = lambda: True) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()
        original = Destination.apply
        gate = self

        def apply(destination: Destination, events: Any) -> Any:
            if not gate.released.is_set() and when():
                gate.entered.set()
                gate.released.wait(30)
            return original(destination, events)

        monkeypatch.setattr(Destination, "apply", apply)

        class Threaded(Offload):
            """Writes in worker threads from the start: held inline, the write would stop
            this process's event loop, the relay's included."""

            def __init__(self, slow: float = SLOW_CALL, *, threaded: bool = False) -> None:
                super().__init__(slow, threaded=True)

        monkeypatch.setattr(p2p_copy.peer.receiving, "Offload", Threaded)

    async def reached(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 10), "the transfer never got going"


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    g = Gate(monkeypatch)
    try:
        yield g
    finally:
        g.released.set()  # never leave a worker thread blocked


# --- the room in the URL path -----------------------------------------------------------


@pytest.mark.parametrize(("server", "expected"), [
    ("ws://h:1", "ws://h:1/ROOM"),
    ("ws://h:1/", "ws://h:1/ROOM"),
    ("wss://h/p2p", "wss://h/p2p/ROOM"),
    ("wss://h/p2p/", "wss://h/p2p/ROOM"),
    ("ws://h:1/a/b?x=1&y=2", "ws://h:1/a/b/ROOM?x=1&y=2"),
])
def test_room_url_appends_one_segment_and_keeps_the_query(server: str, expected: str) -> None:
    """The room becomes one more path segment, whatever path and query the server URL has."""
    assert room_url(server, "ROOM") == expected


@pytest.mark.parametrize(("path", "room"), [
    ("/", None), ("/?x=1", None), ("/" + "a" * 64, "a" * 64),
    ("/p2p/" + "b" * 64 + "?x=1", "b" * 64),
])
def test_room_from_path_accepts_root_and_a_trailing_hash(path: str, room: str | None) -> None:
    """``/`` names no room (0.1.x clients); ``.../<hash>`` names that hash."""
    assert room_from_path(path) == room


@pytest.mark.parametrize("path", [
    "/nothing", "/" + "a" * 64 + "/", "/" + "A" * 64, "/" + "a" * 63, "/" + "a" * 65, "",
    "//", "/healthz/more",
])
def test_room_from_path_refuses_other_shapes(path: str) -> None:
    """Any path that is neither ``/`` nor ends in 64 lowercase hex digits is refused."""
    with pytest.raises(ValueError, match="code_hash_hex"):
        room_from_path(path)


@pytest.mark.parametrize("suffix", ["", "/", "/prefix?x=1"])
async def test_our_client_names_its_room_in_the_path(suffix: str) -> None:
    """send() connects to SERVER/<code_hash_hex> and sends the same hash in its hello."""
    seen: list[tuple[str, str | bytes]] = []

    async def record(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen.append((ws.request.path, await ws.recv()))
        await ws.close(CloseCode.BAD_HELLO, "recorded")

    code = fresh_code()
    async with asyncio.timeout(10), serve(record, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(p2p_copy.RemoteProtocolError):
            await p2p_copy.send(f"ws://127.0.0.1:{port}{suffix}", code, __file__,
                                progress=NoProgress())
    (path, first), = seen
    prefix, _, query = suffix.partition("?")
    expected = prefix.rstrip("/") + "/" + room_hash_hex(code) + (f"?{query}" if query else "")
    assert path == expected
    assert json.loads(first)["code_hash_hex"] == room_hash_hex(code)


async def test_path_that_disagrees_with_the_hello_is_closed_4000() -> None:
    """A hello whose code_hash_hex is not the path's room is closed with 4000, saying so."""
    async with asyncio.timeout(8), running_relay() as relay:
        path_hash, hello_hash = new_hash(), new_hash()
        ws = await raw_connect(f"{relay.url}/{path_hash}")
        try:
            await ws.send(hello(hello_hash, "sender"))
            code, reason = await closed(ws)
        finally:
            await ws.close()
        assert code == CloseCode.BAD_HELLO
        assert "disagree" in reason
        assert (await scrape(relay))['p2p_copy_relay_rejections_total{reason="bad_hello"}'] == 1


async def test_root_and_room_paths_pair_by_the_hello() -> None:
    """A peer on ``/`` (p2p-copy 0.1.1) pairs with one on ``/prefix/<hash>``: the hello decides."""
    async with asyncio.timeout(8), running_relay() as relay:
        code_hash = new_hash()
        old = await raw_connect(relay.url)
        new = await raw_connect(f"{relay.url}/prefix/{code_hash}?v=2")
        try:
            await old.send(hello(code_hash, "receiver"))
            await wait_until(lambda: relay.stats.waiting == 1)
            await new.send(hello(code_hash, "sender"))
            assert json.loads(await new.recv()) == READY
            await new.send(b"through")
            assert await old.recv() == b"through"
        finally:
            await asyncio.gather(old.close(), new.close())


@pytest.mark.parametrize("path", ["/nothing", "/{h}/", "/{H}", "/{h}x", "/healthz/more"])
async def test_other_paths_are_refused_at_the_handshake(path: str) -> None:
    """A WebSocket to any other path shape is refused with HTTP 404 and counted as bad_path."""
    h = new_hash()
    async with asyncio.timeout(8), running_relay() as relay:
        with pytest.raises(InvalidStatus) as refused:
            await raw_connect(relay.url + path.format(h=h, H=h.upper()))
        assert refused.value.response.status_code == 404
        assert relay.stats.connections == 0
        assert (await scrape(relay))['p2p_copy_relay_rejections_total{reason="bad_path"}'] == 1


# --- metrics ------------------------------------------------------------------------------


async def test_metrics_count_a_transfer_and_each_rejection(tmp_path: Path) -> None:
    """After a transfer and a few refusals, /metrics shows counts, outcomes and reasons."""
    src = tmp_path / "data.bin"
    src.write_bytes(os.urandom(3 * MiB + 17))
    async with asyncio.timeout(20), running_relay(peer_timeout=0.5) as relay:
        code = fresh_code()
        await asyncio.gather(
            p2p_copy.send(relay.url, code, src, progress=NoProgress()),
            p2p_copy.receive(relay.url, code, tmp_path / "out", progress=NoProgress()),
        )
        async with Peers(relay.url) as peers:
            bad = await peers.join(new_hash(), "nobody")
            assert (await closed(bad))[0] == CloseCode.BAD_HELLO
            code_hash = new_hash()
            lonely = await peers.join(code_hash, "sender")
            await wait_until(lambda: relay.stats.waiting == 1)
            twin = await peers.join(code_hash, "sender")
            assert (await closed(twin))[0] == CloseCode.CODE_IN_USE
            assert (await closed(lonely))[0] == CloseCode.PEER_TIMEOUT
        await wait_until(lambda: relay.stats.open_connections == 0)
        m = await scrape(relay)
    assert (tmp_path / "out" / "data.bin").read_bytes() == src.read_bytes()
    assert m["p2p_copy_relay_connections_total"] == 5
    assert m["p2p_copy_relay_open_connections"] == 0
    assert m["p2p_copy_relay_active_pairs"] == 0
    assert m["p2p_copy_relay_waiting_peers"] == 0
    assert m["p2p_copy_relay_forwarded_bytes_total"] > src.stat().st_size
    assert m["p2p_copy_relay_forwarded_messages_total"] >= 3 * MiB // (256 * 1024)
    assert m['p2p_copy_relay_pairs_finished_total{outcome="happy"}'] == 1
    assert m['p2p_copy_relay_pairs_finished_total{outcome="errory"}'] == 0
    assert m['p2p_copy_relay_connections_finished_total{outcome="happy"}'] == 2
    assert m['p2p_copy_relay_connections_finished_total{outcome="lonely"}'] == 1
    assert m['p2p_copy_relay_connections_finished_total{outcome="redundant"}'] == 1
    rejections = {reason: m[f'p2p_copy_relay_rejections_total{{reason="{reason}"}}']
                  for reason in ("bad_path", "bad_hello", "hello_timeout", "code_in_use",
                                 "peer_timeout", "too_big", "draining")}
    assert rejections == {"bad_path": 0, "bad_hello": 1, "hello_timeout": 0, "code_in_use": 1,
                          "peer_timeout": 1, "too_big": 0, "draining": 0}
    assert m["p2p_copy_relay_draining"] == 0
    assert m["p2p_copy_relay_forward_latency_seconds_count"] >= 1


async def test_forward_latency_is_sampled_one_message_in_64() -> None:
    """640 forwarded messages give about 10 latency samples, not 640."""
    async with asyncio.timeout(10), running_relay() as relay, Peers(relay.url) as peers:
        code_hash = new_hash()
        sender = await peers.join(code_hash, "sender")
        receiver = await peers.join(code_hash, "receiver")
        assert json.loads(await sender.recv()) == READY
        for i in range(640):
            await sender.send(i.to_bytes(4, "big"))
            assert await receiver.recv() == i.to_bytes(4, "big")
        m = await scrape(relay)
    assert m["p2p_copy_relay_forwarded_messages_total"] == 640
    assert m["p2p_copy_relay_forward_latency_seconds_count"] == 10
    assert 0 < m["p2p_copy_relay_forward_latency_seconds_sum"] < 10


async def test_too_big_message_is_counted() -> None:
    """A message over max_message_size is refused with 1009 and counted as too_big."""
    async with asyncio.timeout(10), running_relay(max_message_size=1024) as relay, \
            Peers(relay.url) as peers:
        code_hash = new_hash()
        sender = await peers.join(code_hash, "sender")
        receiver = await peers.join(code_hash, "receiver")
        assert json.loads(await sender.recv()) == READY
        await sender.send(b"x" * 2048)
        assert (await closed(sender))[0] == CloseCode.MESSAGE_TOO_BIG
        assert (await closed(receiver))[0] == CloseCode.PEER_GONE
        await wait_until(lambda: relay.stats.open_connections == 0)
        m = await scrape(relay)
    assert m['p2p_copy_relay_rejections_total{reason="too_big"}'] == 1
    assert m['p2p_copy_relay_pairs_finished_total{outcome="errory"}'] == 1


async def test_two_relays_in_one_process_keep_separate_metrics() -> None:
    """Traffic on one in-process relay never shows in another's /metrics."""
    async with asyncio.timeout(10), running_relay() as busy, running_relay() as idle:
        assert busy.metrics is not None and idle.metrics is not None
        assert busy.metrics.registry is not idle.metrics.registry
        async with Peers(busy.url) as peers:
            code_hash = new_hash()
            sender = await peers.join(code_hash, "sender")
            receiver = await peers.join(code_hash, "receiver")
            assert json.loads(await sender.recv()) == READY
            await sender.send(b"only here")
            assert await receiver.recv() == b"only here"
            busy_m, idle_m = await scrape(busy), await scrape(idle)
    assert busy_m["p2p_copy_relay_connections_total"] == 2
    assert busy_m["p2p_copy_relay_forwarded_bytes_total"] == len(b"only here")
    assert idle_m["p2p_copy_relay_connections_total"] == 0
    assert idle_m["p2p_copy_relay_forwarded_bytes_total"] == 0


async def test_metrics_speak_openmetrics_when_asked() -> None:
    """A scraper that asks for OpenMetrics gets it (Prometheus does by default)."""
    async with asyncio.timeout(8), running_relay() as relay:
        status, headers, body = await http_get(
            relay.port, "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_relay_runs_without_prometheus_client(tmp_path: Path) -> None:
    """Without prometheus_client the relay still pairs, says metrics are off, /metrics is 404."""
    port = free_port()
    hide = ("import sys; sys.modules['prometheus_client'] = None; "
            "from p2p_copy.cli.commands import main; sys.exit(main())")
    proc = subprocess.Popen(
        [sys.executable, "-c", hide, "run-relay-server", "127.0.0.1", str(port), "--no-tls"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )
    try:
        wait_for_port(port, proc)
        status, body = http_get_sync(port, "/metrics")
        assert status == 404 and "p2p-copy[relay]" in body
        assert http_get_sync(port, "/healthz") == (200, "ok\n")
        assert http_get_sync(port, "/readyz") == (200, "ready\n")

        async def one_pair() -> None:
            async with Peers(f"ws://127.0.0.1:{port}") as peers:
                code_hash = new_hash()
                sender = await peers.join(code_hash, "sender")
                receiver = await peers.join(code_hash, "receiver")
                assert json.loads(await sender.recv()) == READY
                await sender.send("still relays")
                assert await receiver.recv() == "still relays"

        asyncio.run(asyncio.wait_for(one_pair(), 10))
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "metrics are off" in err and "p2p-copy[relay]" in err


# --- readiness and drain -------------------------------------------------------------------


async def test_readyz_turns_503_while_draining_and_healthz_stays_200() -> None:
    """/readyz is 200 while serving and 503 during drain(); /healthz answers 200 throughout."""
    async with asyncio.timeout(10), running_relay() as relay, Peers(relay.url) as peers:
        assert (await http_get(relay.port, "/readyz"))[::2] == (200, "ready\n")
        code_hash = new_hash()
        sender = await peers.join(code_hash, "sender")
        receiver = await peers.join(code_hash, "receiver")
        assert json.loads(await sender.recv()) == READY
        draining = asyncio.create_task(relay.drain(timeout=8))
        await wait_until(lambda: relay.draining)
        assert (await http_get(relay.port, "/readyz"))[::2] == (503, "draining\n")
        assert (await http_get(relay.port, "/readyz?verbose"))[0] == 503
        assert (await http_get(relay.port, "/healthz"))[::2] == (200, "ok\n")
        assert (await scrape(relay))["p2p_copy_relay_draining"] == 1
        await sender.send("the pair still works")
        assert await receiver.recv() == "the pair still works"
        started = time.monotonic()
        await sender.close()
        assert (await closed(receiver))[0] == CloseCode.NORMAL
        await draining  # done as soon as the last pair ended, long before the deadline
        assert time.monotonic() - started < 4
        assert relay.stats.pairs["happy"] == 1


async def test_drain_lets_a_running_transfer_finish_and_refuses_newcomers(
        tmp_path: Path, gate: Gate) -> None:
    """During drain() a running transfer ends intact; new, waiting and silent peers get refused."""
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(24 * MiB))
    code = fresh_code()
    async with asyncio.timeout(40), running_relay() as relay, Peers(relay.url) as peers:
        waiting = await peers.join(new_hash(), "receiver")
        silent = await peers.connect()  # connected, but no hello yet
        transfer = asyncio.gather(
            p2p_copy.send(relay.url, code, src, progress=NoProgress()),
            p2p_copy.receive(relay.url, code, tmp_path / "out", progress=NoProgress()),
        )
        try:
            await gate.reached()
            assert relay.stats.active_pairs == 1
            draining = asyncio.create_task(relay.drain(timeout=30))
            await wait_until(lambda: relay.draining)
            for ws in (waiting, silent):
                code_, reason = await closed(ws)
                assert code_ == CloseCode.RELAY_DRAINING
                assert "reconnect" in reason
            with pytest.raises(InvalidStatus) as refused:
                await raw_connect(f"{relay.url}/{new_hash()}")
            assert refused.value.response.status_code == 503
            with pytest.raises(RelayUnreachableError, match="restarting"):
                await p2p_copy.receive(relay.url, fresh_code(), tmp_path / "late",
                                       progress=NoProgress())
            assert not draining.done()
            gate.released.set()
            sent, got = await transfer
        finally:
            gate.released.set()
            await asyncio.gather(transfer, return_exceptions=True)
        await draining
    assert (tmp_path / "out" / "big.bin").read_bytes() == src.read_bytes()
    assert sent.bytes == got.bytes == src.stat().st_size
    assert relay.stats.pairs == {"happy": 1}
    assert relay.stats.rejections["draining"] == 4  # waiting, silent, raw, late
    assert not (tmp_path / "late").exists() or not any((tmp_path / "late").iterdir())


async def test_drain_deadline_closes_a_running_pair_with_4005() -> None:
    """Pairs still running at the drain deadline are closed with 4005 on both sides."""
    async with asyncio.timeout(10), running_relay() as relay, Peers(relay.url) as peers:
        code_hash = new_hash()
        sender = await peers.join(code_hash, "sender")
        receiver = await peers.join(code_hash, "receiver")
        assert json.loads(await sender.recv()) == READY
        started = time.monotonic()
        await relay.drain(timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 5
        for ws in (sender, receiver):
            code, reason = await closed(ws)
            assert code == CloseCode.RELAY_DRAINING
            assert reason == "the relay is restarting; reconnect"
    assert relay.stats.pairs == {"drained": 1}
    assert relay.stats.outcomes == {"drained": 2}
    assert relay.stats.open_connections == 0


@pytest.mark.slow
async def test_drain_deadline_makes_our_clients_raise_connection_lost(
        tmp_path: Path, gate: Gate) -> None:
    """With reconnect off, a transfer cut by the drain deadline ends in ConnectionLostError
    saying to run it again; no file gets its final name."""
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(24 * MiB))
    code = fresh_code()
    async with asyncio.timeout(40), running_relay() as relay:
        send = asyncio.ensure_future(p2p_copy.send(relay.url, code, src, progress=NoProgress(),
                                                   reconnect_timeout=0))
        receive = asyncio.ensure_future(
            p2p_copy.receive(relay.url, code, tmp_path / "out", progress=NoProgress(),
                             reconnect_timeout=0))
        try:
            await gate.reached()
            draining = asyncio.create_task(relay.drain(timeout=0.3))
            with pytest.raises(ConnectionLostError, match="restarting.*Run the transfer again"):
                await send
            gate.released.set()
            with pytest.raises(ConnectionLostError):
                await receive
            await draining
        finally:
            gate.released.set()
            for task in (send, receive):
                task.cancel()
            await asyncio.gather(send, receive, return_exceptions=True)
    assert relay.stats.pairs == {"drained": 1}
    # Only the hidden part and its sidecar may stay, for a later run to resume.
    assert not (tmp_path / "out" / "big.bin").exists()
    assert all(p.name.startswith(".big.bin.p2p-copy-") for p in (tmp_path / "out").rglob("*"))


@pytest.mark.slow
async def test_drain_deadline_cut_is_resumed_through_the_next_relay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """4005 at the drain deadline is worth a reconnect: both peers go on through a relay
    started on the same port and the file arrives intact, mostly not sent twice."""
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(48 * MiB))
    code = fresh_code()
    moved = Moved()
    # Held once 12 MiB are written, so that the drain deadline cuts a running transfer
    # however fast the rest would go.
    gate = Gate(monkeypatch, when=lambda: moved.bytes > 12 * MiB)
    async with asyncio.timeout(90):
        async with running_relay() as relay:
            port = relay.port
            send = asyncio.ensure_future(p2p_copy.send(relay.url, code, src,
                                                       progress=NoProgress()))
            receive = asyncio.ensure_future(
                p2p_copy.receive(relay.url, code, tmp_path / "out", progress=moved))
            try:
                await gate.reached()
                await relay.drain(timeout=0.1)
            finally:
                gate.released.set()
        assert relay.stats.pairs == {"drained": 1}
        next_relay = Relay("127.0.0.1", port, config=TEST_CONFIG)
        async with next_relay:
            sent, got = await asyncio.gather(send, receive)
    assert (tmp_path / "out" / "big.bin").read_bytes() == src.read_bytes()
    assert got.files[0].digest == sent.files[0].digest
    assert sent.bytes < 1.5 * src.stat().st_size
    assert moved.reconnects >= 1
    assert next_relay.stats.pairs.get("happy") == 1


class Moved(NoProgress):
    """Bytes written so far (after a resume: the prefix kept) and reconnects seen."""

    def __init__(self) -> None:
        self.bytes = 0
        self.reconnects = 0

    def advance(self, nbytes: int) -> None:
        self.bytes += nbytes

    def resumed(self, bytes_done: int) -> None:
        self.bytes = bytes_done

    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        self.reconnects += 1


def _start_big_pair(processes: Processes, tmp_path: Path, size: int,
                    *extra: str) -> tuple[subprocess.Popen[str], subprocess.Popen[str],
                                          subprocess.Popen[str], int]:
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(size)  # sparse: costs no disk, takes seconds to send
    port = free_port()
    relay, url = processes.start_relay(port, "--drain-timeout", "0.5")
    code = fresh_code()
    receiver = processes.start("receive", url, code, "--out", str(tmp_path / "out"), *extra)
    sender = processes.start("send", url, code, str(big), *extra)
    deadline = time.monotonic() + 30
    while True:  # until the pair is moving data
        m = samples(http_get_sync(port, "/metrics")[1])
        if m["p2p_copy_relay_active_pairs"] == 1 and \
                m["p2p_copy_relay_forwarded_bytes_total"] > 8 * MiB:
            break
        assert time.monotonic() < deadline, "the transfer never got going"
        assert sender.poll() is None and receiver.poll() is None
        time.sleep(0.05)
    return relay, sender, receiver, port


@pytest.mark.slow
def test_sigterm_drains_the_relay_process_and_a_cut_transfer_exits_7(
        processes: Processes, tmp_path: Path) -> None:
    """SIGTERM during a long transfer with reconnect off: after --drain-timeout both CLIs
    exit 7, the relay 0."""
    relay, sender, receiver, _port = _start_big_pair(processes, tmp_path, 2 * 2**30,
                                                     "--reconnect-timeout", "0")
    relay.send_signal(signal.SIGTERM)
    _, s_err = sender.communicate(timeout=30)
    _, r_err = receiver.communicate(timeout=30)
    _, relay_err = relay.communicate(timeout=30)
    assert sender.returncode == ConnectionLostError.exit_code, s_err
    assert "restarting" in s_err and "Run the transfer again" in s_err
    assert "Traceback" not in s_err
    assert receiver.returncode == ConnectionLostError.exit_code, r_err
    assert relay.returncode == 0, relay_err
    assert "drain_end pairs_cut=1" in relay_err
    assert not (tmp_path / "out" / "big.bin").exists()


@pytest.mark.slow
def test_sigterm_mid_transfer_continues_after_reconnect(
        processes: Processes, tmp_path: Path) -> None:
    """SIGTERM during a transfer (reconnect on, the default): the relay drains and exits 0,
    the peers reconnect to the relay started again on the port, and both CLIs exit 0."""
    size = 768 * MiB
    relay, sender, receiver, port = _start_big_pair(processes, tmp_path, size)
    relay.send_signal(signal.SIGTERM)
    _, relay_err = relay.communicate(timeout=30)
    assert relay.returncode == 0, relay_err
    assert "drain_end" in relay_err
    processes.start_relay(port)
    _, s_err = sender.communicate(timeout=120)
    _, r_err = receiver.communicate(timeout=120)
    assert sender.returncode == 0, s_err
    assert receiver.returncode == 0, r_err
    assert (tmp_path / "out" / "big.bin").stat().st_size == size
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != "big.bin"]


def test_sigterm_on_an_idle_relay_exits_0_at_once(processes: Processes) -> None:
    """With nothing to drain, SIGTERM ends the relay process right away, with exit 0."""
    relay, _ = processes.start_relay()
    started = time.monotonic()
    relay.send_signal(signal.SIGTERM)
    _, err = relay.communicate(timeout=10)
    assert relay.returncode == 0, err
    assert time.monotonic() - started < 5


# --- logs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "mode", "shown"), [
    ("203.0.113.77", "blur", "203.0.113.0/24"),
    ("2001:db8:1:2::5", "blur", "2001:db8:1::/48"),
    ("::ffff:198.51.100.9", "blur", "198.51.100.0/24"),
    ("203.0.113.77", "full", "203.0.113.77"),
    ("203.0.113.77", "none", None),
    ("not-an-ip", "blur", "?"),
])
def test_addresses_are_blurred_to_their_network(host: str, mode: Any, shown: str | None) -> None:
    """blur keeps the /24 or /48 network, full keeps the address, none leaves it out."""
    assert show_address(host, mode) == shown


def test_json_logs_parse_and_never_hold_a_code_or_its_hash(
        processes: Processes, tmp_path: Path) -> None:
    """--log-json writes only JSON lines; no code, hash or room path appears in them."""
    src = tmp_path / "note.txt"
    src.write_text("logged?\n")
    port = free_port()
    relay, url = processes.start_relay(port, "--log-json", "--log-level", "DEBUG")
    code = fresh_code()
    room = room_hash_hex(code)
    receiver = processes.start("receive", url, code, "--out", str(tmp_path / "out"))
    sender = processes.start("send", url, code, str(src))
    assert sender.wait(30) == 0 and receiver.wait(30) == 0

    async def refused_ones() -> None:
        ws = await raw_connect(f"{url}/{room}")
        await ws.send(hello(new_hash(), "sender"))
        assert (await closed(ws))[0] == CloseCode.BAD_HELLO
        with pytest.raises(InvalidStatus):
            await raw_connect(f"{url}/{room}/extra")

    asyncio.run(asyncio.wait_for(refused_ones(), 10))
    relay.send_signal(signal.SIGTERM)
    out, err = relay.communicate(timeout=20)
    assert relay.returncode == 0, err
    assert out == ""  # no "Relay listening" line among JSON consumers' input
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert records, "nothing was logged"
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record)
    text = err.lower()
    for secret in (code, room, hashlib.sha256(code.encode()).hexdigest()[:16]):
        assert secret.lower() not in text
    pair = [r for r in records if r.get("event") == "pair_end"]
    assert len(pair) == 1 and pair[0]["outcome"] == "happy"
    assert pair[0]["sender"] == pair[0]["receiver"] == "127.0.0.0/24"
    assert pair[0]["bytes"] > len("logged?\n")
    assert any(r.get("event") == "drain_end" for r in records)


def test_relay_requirements_cover_its_imports() -> None:
    """server/requirements-relay.txt (what the relay container installs instead of all of
    p2p-copy's dependencies) lists pyproject's own requirements, and the relay process
    imports no other third-party module."""
    import tomllib

    repo = Path(__file__).resolve().parent.parent
    wanted = [line.strip() for line in
              (repo / "server" / "requirements-relay.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    known = set(project["dependencies"]) | set(project["optional-dependencies"]["relay"])
    assert set(wanted) <= known, set(wanted) - known
    listing = "print(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)))"

    def third_party(imports: str) -> set[str]:
        out = subprocess.run([sys.executable, "-c", f"import sys{imports}; {listing}"],
                             capture_output=True, text=True, timeout=60, check=True)
        return set(ast.literal_eval(out.stdout.strip()))

    # Minus what this interpreter loads before any import of ours (its site hooks).
    imported = third_party(", p2p_copy.cli.commands, p2p_copy.relay.server") - third_party("")
    names = {re.split(r"[<>=!~ ]", w)[0].replace("-", "_") for w in wanted}
    assert imported - {"p2p_copy"} <= names, imported - names
