"""Three relay processes behind Debian's nginx with the shipped configuration (server/nginx/).

server/local_cluster.py starts them on loopback. Both peers of a pair must reach the same
relay process; nginx hashes the room path (consistent hashing), so they do. Skipped when
nginx is missing, except in CI (``$CI`` set), where .ci/run installs it and a missing
nginx is a failure.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
import trustme
from websockets.asyncio.client import ClientConnection, connect

import p2p_copy
from p2p_copy.display.progress import NoProgress
from p2p_copy.errors import ConnectionLostError, P2PCopyError
from p2p_copy.protocol.codes import room_hash_hex
from p2p_copy.results import TransferResult

ROOT = Path(__file__).resolve().parent.parent
KiB, MiB = 2**10, 2**20
PAIRS = 60


def _load_local_cluster() -> ModuleType:
    """server/ is not a package: load server/local_cluster.py by path, as its users may."""
    spec = importlib.util.spec_from_file_location(
        "local_cluster", ROOT / "server" / "local_cluster.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["local_cluster"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


lc = _load_local_cluster()
if TYPE_CHECKING:
    from server.local_cluster import LocalCluster
else:
    LocalCluster = lc.LocalCluster
NGINX = lc.find_nginx()

if NGINX is None and os.environ.get("CI"):
    pytest.fail("nginx is missing, and CI must run the cluster tests: .ci/run installs it",
                pytrace=False)
pytestmark = [
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian: apt-get install "
                       "nginx; CI installs it)"),
    pytest.mark.timeout(120),
]

#: Relays that give up on a missing partner quickly, so a broken pairing fails in seconds.
RELAY_ARGS = ["--peer-timeout", "30", "--hello-timeout", "5", "--drain-timeout", "30"]
HAPPY = 'p2p_copy_relay_pairs_finished_total{outcome="happy"}'


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """Three relays and nginx; every process is stopped (or killed) when the test ends."""
    c = LocalCluster(3, relay_args=RELAY_ARGS, nginx=NGINX)
    c.start()
    assert c.nginx_pid is not None
    groups = [c.relay_pid(i) for i in range(3)] + [c.nginx_pid]  # each leads its own group
    try:
        yield c
    finally:
        c.stop(drain_timeout=5)
        for pgid in groups:  # nginx's workers included: nothing outlives the test
            with pytest.raises(ProcessLookupError):
                os.killpg(pgid, 0)


def happy_pairs_per_relay(cluster: LocalCluster) -> list[int]:
    """Pairs each relay finished cleanly, from its own /metrics (not through nginx)."""
    return [int(cluster.metrics(i)[HAPPY]) for i in range(len(cluster.relay_ports))]


class Watch(NoProgress):
    """A progress display that only records how many bytes arrived."""

    def __init__(self) -> None:
        self.moved = 0
        self.reconnects = 0
        self.moving = asyncio.Event()

    def advance(self, nbytes: int) -> None:
        self.moved += nbytes
        self.moving.set()

    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        self.reconnects += 1


def _codes(n: int) -> list[str]:
    # The room (before the first "-") must differ per code: it is what nginx routes on.
    return [f"{secrets.token_hex(4)}{i}-cluster-{secrets.token_hex(6)}" for i in range(n)]


async def _pair(url: str, code: str, src: Path, dest: Path, watch: Watch | None = None,
                cafile: str | None = None, reconnect_timeout: float = 60.0,
                ) -> tuple[TransferResult, TransferResult]:
    """One sender and one receiver of ``code`` through ``url``, with the public API."""
    dest.mkdir(parents=True)
    sent, received = await asyncio.gather(
        p2p_copy.send(url, code, src, progress=NoProgress(), cafile=cafile,
                      reconnect_timeout=reconnect_timeout),
        p2p_copy.receive(url, code, dest, progress=watch or NoProgress(), cafile=cafile,
                         reconnect_timeout=reconnect_timeout),
    )
    return sent, received


def _room_on(cluster: LocalCluster, index: int) -> str:
    """A fresh room (code hash) that nginx sends to relay ``index``."""
    while True:
        room = secrets.token_hex(32)
        if cluster.relay_index_for_room(room) == index:
            return room


def _codes_on(cluster: LocalCluster, index: int, n: int) -> list[str]:
    """``n`` fresh codes whose rooms nginx sends to relay ``index``."""
    codes: list[str] = []
    while len(codes) < n:
        code = _codes(1)[0]
        if cluster.relay_index_for_room(room_hash_hex(code)) == index:
            codes.append(code)
    return codes


def _hello(room: str, role: str) -> str:
    return json.dumps({"type": "hello", "code_hash_hex": room, "role": role})


async def _raw_pair(url: str, room: str) -> tuple[ClientConnection, ClientConnection]:
    """A sender and a receiver that speak hello by hand at ``url``; paired on return."""
    options: dict[str, Any] = {"open_timeout": 10, "close_timeout": 2, "compression": None}
    sender = await connect(url, **options)
    await sender.send(_hello(room, "sender"))
    receiver = await connect(url, **options)
    await receiver.send(_hello(room, "receiver"))
    assert json.loads(await sender.recv()) == {"type": "ready"}
    return sender, receiver


@pytest.mark.slow
async def test_sixty_pairs_through_nginx_spread_over_three_relays(
        cluster: LocalCluster, tmp_path: Path) -> None:
    """60 concurrent pairs through nginx all arrive intact, and all three relays carry some."""
    codes = _codes(PAIRS)
    sources = {}
    for i, code in enumerate(codes):
        # A different file per pair: a pair wired to the wrong partner cannot pass.
        sources[code] = tmp_path / "src" / f"file-{i}.bin"
        sources[code].parent.mkdir(exist_ok=True)
        sources[code].write_bytes(secrets.token_bytes(16 * KiB + i * 997))
    async with asyncio.timeout(60):
        results = await asyncio.gather(*(
            _pair(cluster.url, code, sources[code], tmp_path / "dst" / code)
            for code in codes
        ))
    for code, (sent, received) in zip(codes, results, strict=True):
        name = sources[code].name
        assert (tmp_path / "dst" / code / name).read_bytes() == sources[code].read_bytes()
        assert sent.bytes == received.bytes == sources[code].stat().st_size

    per_relay = happy_pairs_per_relay(cluster)
    assert all(n > 0 for n in per_relay), f"a relay carried no pair: {per_relay}"
    assert sum(per_relay) == PAIRS, per_relay
    # The spread is nginx's ring, exactly: server/local_cluster.py predicts it.
    predicted = collections.Counter(cluster.relay_index_for_room(room_hash_hex(c)) for c in codes)
    assert per_relay == [predicted[i] for i in range(3)]


@pytest.mark.slow
@pytest.mark.parametrize("reconnect", [0.0, 60.0], ids=["reconnect-off", "reconnect-on"])
async def test_killed_relay_costs_only_its_own_pairs(
        cluster: LocalCluster, tmp_path: Path, reconnect: float) -> None:
    """SIGKILL one relay mid-transfer: all other pairs finish untouched; its own pairs fail
    with a clear error with reconnect off, and with it on reconnect (nginx sends them to
    the next relay) and finish intact."""
    codes = _codes(PAIRS)
    home = {code: cluster.relay_index_for_room(room_hash_hex(code)) for code in codes}
    victim = collections.Counter(home.values()).most_common(1)[0][0]
    survivors = [i for i in range(3) if i != victim]
    src = tmp_path / "big.bin"
    # Large enough that no pair finishes while the others are still starting (~4 s here
    # for all 60; the pairs share the machine's two cores with nginx and the relays).
    src.write_bytes(os.urandom(8 * MiB))
    watches = {code: Watch() for code in codes}

    async with asyncio.timeout(90):
        tasks = [
            asyncio.ensure_future(
                _pair(cluster.url, code, src, tmp_path / "dst" / code, watches[code],
                      reconnect_timeout=reconnect))
            for code in codes
        ]
        doomed = [c for c in codes if home[c] == victim]
        # Every pair on the victim has bytes flowing: mid-run, not waiting for a partner.
        await asyncio.gather(*(watches[c].moving.wait() for c in doomed))
        active_on_victim = cluster.metrics(victim)["p2p_copy_relay_active_pairs"]
        # No await from here to the kill: no client moves on in between. A pair that has
        # received less than half its file cannot finish without its relay; one closer to
        # the end might, from what already sits in socket buffers.
        cut = [c for c in doomed if watches[c].moved < src.stat().st_size // 2]
        cluster.kill_relay(victim)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    outcomes = dict(zip(codes, results, strict=True))

    assert cut, "the killed relay's pairs were all past half way; use more data"
    assert active_on_victim > 0
    for code in codes:
        outcome = outcomes[code]
        if isinstance(outcome, BaseException):
            assert not reconnect, f"with reconnect on, a pair failed: {outcome!r}"
            assert home[code] == victim, (
                f"a pair on relay {home[code]} failed when relay {victim} was killed: "
                f"{outcome!r}\n{cluster.logs()}")
            assert isinstance(outcome, ConnectionLostError), repr(outcome)
            assert "connection to the relay was lost" in str(outcome)
        else:
            assert reconnect or code not in cut, (
                "a pair finished although its relay was killed early")
            assert (tmp_path / "dst" / code / src.name).read_bytes() == src.read_bytes()
            if code in cut:
                assert watches[code].reconnects >= 1
                sent = outcome[0]
                assert sent.bytes < 2 * src.stat().st_size
    # The survivors' own books agree: every pair they carried finished cleanly.
    for i in survivors:
        stats = cluster.metrics(i)
        # With reconnect on, the victim's pairs finish on a survivor too.
        assert stats[HAPPY] >= sum(1 for c in codes if home[c] == i) > 0
        assert stats['p2p_copy_relay_pairs_finished_total{outcome="errory"}'] == 0


@pytest.mark.slow
async def test_new_rooms_of_a_dead_relay_fail_over_together(
        cluster: LocalCluster, tmp_path: Path) -> None:
    """After a relay dies, both peers of its rooms move to the same next relay and pair there."""
    cluster.kill_relay(0)
    codes = [c for c in _codes(200) if cluster.relay_index_for_room(room_hash_hex(c)) == 0][:10]
    assert codes
    src = tmp_path / "small.bin"
    src.write_bytes(secrets.token_bytes(32 * KiB))
    async with asyncio.timeout(60):
        await asyncio.gather(*(
            _pair(cluster.url, code, src, tmp_path / "dst" / code) for code in codes
        ))
    for code in codes:
        assert (tmp_path / "dst" / code / src.name).read_bytes() == src.read_bytes()


@pytest.mark.slow
async def test_draining_relay_hands_its_new_rooms_to_the_next_one(
        cluster: LocalCluster, tmp_path: Path) -> None:
    """SIGTERM: the relay finishes its pairs while nginx sends its new rooms, both peers, on."""
    room = _room_on(cluster, 0)
    sender, receiver = await _raw_pair(f"{cluster.url}/{room}", room)
    cluster.signal_relay(0, signal.SIGTERM)  # drains: the pair above keeps it running
    async with asyncio.timeout(60):
        while _get(cluster.relay_ports[0], "/readyz")[0] != 503:
            await asyncio.sleep(0.05)
        assert _get(cluster.port, "/readyz")[0] == 200  # the other relays take new pairs

        codes = _codes_on(cluster, 0, 5)
        src = tmp_path / "small.bin"
        src.write_bytes(secrets.token_bytes(32 * KiB))
        await asyncio.gather(*(
            _pair(cluster.url, code, src, tmp_path / "dst" / code) for code in codes
        ))
        for code in codes:
            assert (tmp_path / "dst" / code / src.name).read_bytes() == src.read_bytes()
        assert sum(happy_pairs_per_relay(cluster)[1:]) == len(codes)
        # None of them on relay 0: nginx got its 503 (to a handshake, or to the /readyz
        # above if "readyz" hashes there) and moved on to the next relay on the ring.
        assert cluster.metrics(0)[HAPPY] == 0

        # The pair that was running when the drain began still forwards, then ends cleanly.
        await sender.send(b"still here")
        assert await receiver.recv() == b"still here"
        await sender.close()
        await receiver.close()
        while cluster.relay_alive(0):
            await asyncio.sleep(0.05)
    assert cluster.relay_returncode(0) == 0


async def test_clients_without_a_room_path_all_meet_on_one_relay(
        cluster: LocalCluster) -> None:
    """Peers that connect to "/" (p2p-copy 0.1.x) share nginx's key "/": one relay, they meet."""
    rooms = [secrets.token_hex(32) for _ in range(6)]
    async with asyncio.timeout(30):
        pairs = await asyncio.gather(*(_raw_pair(f"{cluster.url}/", room) for room in rooms))
        for room, (sender, receiver) in zip(rooms, pairs, strict=True):
            await sender.send(room)
            assert await receiver.recv() == room
            await sender.close()
            await receiver.close()
    connections = sorted(
        int(cluster.metrics(i)["p2p_copy_relay_connections_total"]) for i in range(3))
    assert connections == [0, 0, 2 * len(rooms)]


@pytest.mark.slow
async def test_wss_through_nginx(tmp_path: Path) -> None:
    """With a certificate, nginx serves wss:// (shipped TLS settings) and pairs still meet."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key, ca_pem = tmp_path / "chain.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_pem))
    src = tmp_path / "tls.bin"
    src.write_bytes(secrets.token_bytes(64 * KiB))
    cluster = LocalCluster(2, relay_args=RELAY_ARGS, nginx=NGINX,
                           certfile=str(chain), keyfile=str(key))
    cluster.start()
    try:
        assert cluster.url.startswith("wss://")
        codes = _codes(4)
        async with asyncio.timeout(30):
            await asyncio.gather(*(
                _pair(cluster.url, code, src, tmp_path / "dst" / code, cafile=str(ca_pem))
                for code in codes
            ))
        with pytest.raises(P2PCopyError, match="not trusted"):
            await p2p_copy.send(cluster.url, "1-untrusted", src, progress=NoProgress())
    finally:
        cluster.stop(drain_timeout=5)
    for code in codes:
        assert (tmp_path / "dst" / code / src.name).read_bytes() == src.read_bytes()


def _get(port: int, path: str, source: str = "127.0.0.1") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5,
                                      source_address=(source, 0))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_health_through_nginx_and_metrics_only_from_the_machine(
        cluster: LocalCluster) -> None:
    """/healthz passes through nginx; /metrics answers loopback only, 403 to anyone else."""
    assert _get(cluster.port, "/healthz") == (200, "ok\n")
    # 127.0.0.2 is loopback too, but not in nginx's allow list: it stands for the internet.
    assert _get(cluster.port, "/metrics", source="127.0.0.2")[0] == 403
    port = cluster.relay_ports[1]
    assert _get(cluster.port, f"/metrics/{port}", source="127.0.0.2")[0] == 403
    assert _get(cluster.port, "/metrics")[0] == 404  # per relay only: /metrics/PORT


def test_the_web_page_passes_through_nginx(cluster: LocalCluster) -> None:
    """/ (no upgrade) and /static/ reach a relay through nginx, headers intact: the page
    where it is built (404 with one line where not), and the generated config.json."""
    built = (ROOT / "p2p_copy" / "web" / "static" / "index.html").exists()
    for path, status in (("/", 200 if built else 404), ("/static/config.json", 200)):
        conn = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        assert response.status == status, (path, body)
        assert "connect-src 'self'" in response.headers["Content-Security-Policy"]
    assert json.loads(body) == {"version": p2p_copy.__version__, "relays": []}
    # nginx resolves the dots itself: /server.py, no relay path and no file of the page.
    assert _get(cluster.port, "/static/../server.py")[0] == 404


def test_shipped_production_config_passes_nginx_t(tmp_path: Path) -> None:
    """server/nginx/p2p-copy.conf as shipped (TLS, 4 relays) is valid for Debian's nginx."""
    ca = trustme.CA()
    cert = ca.issue_cert("relay.example.org")
    conf = tmp_path / "conf"
    (conf / "p2p-copy").mkdir(parents=True)
    # Only the file-system paths change; every directive stays as shipped.
    paths = {
        "/etc/letsencrypt/live/relay.example.org/": f"{tmp_path}/",
        "/var/log/nginx/": f"{tmp_path}/",
    }
    for src in (ROOT / "server" / "nginx").glob("*.conf"):
        text = src.read_text()
        for old, new in paths.items():
            text = text.replace(old, new)
        (conf / "p2p-copy" / src.name).write_text(text)
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "fullchain.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "privkey.pem"))
    temp_paths = "".join(f"    {kind}_temp_path {tmp_path}/{kind};\n"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (conf / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        f"events {{}}\nhttp {{\n{temp_paths}    include p2p-copy/p2p-copy.conf;\n}}\n"
    )
    argv = [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf / "nginx.conf")]
    if lc.nginx_version(NGINX) >= (1, 19, 5):
        argv += ["-e", str(tmp_path / "error.log")]
    check = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


@pytest.mark.slow
async def test_lanes_of_one_transfer_spread_over_the_relays(
        cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One transfer on eight lanes (forced, as a long link would earn them): each lane's
    room is its own path, so nginx sends them to different relay processes, and the bytes
    arrive intact. (All seven lanes on lane 0's relay has odds of 3^-7, once in ~2,000.)"""
    from p2p_copy.peer.lanes import LANES_NOW_ENV

    monkeypatch.setenv(LANES_NOW_ENV, "8")
    src = tmp_path / "big.bin"
    src.write_bytes(secrets.token_bytes(32 * MiB))
    [code] = _codes(1)
    async with asyncio.timeout(90):
        sent, received = await _pair(cluster.url, code, src, tmp_path / "dst")
    assert (tmp_path / "dst" / "big.bin").read_bytes() == src.read_bytes()
    per_relay = happy_pairs_per_relay(cluster)
    assert sum(per_relay) == 8, per_relay
    assert sum(n > 0 for n in per_relay) >= 2, per_relay
