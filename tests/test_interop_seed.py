"""Interoperability with the seed's published p2p-copy 0.1.1, run from its own virtualenv.

Our relay must serve 0.1.1 peers unchanged and our peers must work through a 0.1.1 relay.
0.1.1 peers and ours no longer pair (different room hashes), and nothing crosses when
they try.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p2p_copy.errors import TransferTimeoutError
from p2p_copy.testing import running_relay

from . import seed
from .conftest import Processes

# Making the virtualenv (once, then cached) may take up to seed.CREATE_TIMEOUT.
pytestmark = pytest.mark.timeout(seed.CREATE_TIMEOUT + 180)

TIMEOUT = 90


@pytest.fixture(scope="session")
def seed_venv() -> Path:
    """The 0.1.1 virtualenv; fails loudly on CI when it cannot be made, skips elsewhere."""
    try:
        return seed.ensure_seed_venv()
    except seed.SeedUnavailable as exc:
        reason = f"p2p-copy {seed.SEED_VERSION} is not available: {exc}"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def seed_procs(seed_venv: Path) -> Iterator[seed.SeedProcesses]:
    procs = seed.SeedProcesses(seed_venv)
    try:
        yield procs
    finally:
        procs.cleanup()


def _code() -> str:
    # Unique before the first "-" too: that part is the room of our peers.
    return f"{uuid.uuid4().hex[:12]}-seed"


def _make_sources(root: Path, *, empty: bool = False) -> list[Path]:
    """A folder of several files (nested, compressible and not) and a ~5 MB file."""
    tree = root / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "readme.txt").write_text("p2p-copy interop\n" * 2000)  # compresses well
    (tree / "sub" / "random.bin").write_bytes(os.urandom(200_000))
    (tree / "sub" / "deeper" / "small.dat").write_bytes(b"\x00\x01\x02 tiny")
    (tree / "sub" / "zeros.bin").write_bytes(bytes(1_500_000))
    if empty:
        (tree / "empty.txt").write_bytes(b"")
    big = root / "big.bin"
    big.write_bytes(os.urandom(5 * 1024 * 1024 + 123))
    return [tree, big]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_arrived(sources: list[Path], out: Path) -> None:
    """Every file of ``sources`` is in ``out`` under its name, byte for byte, and nothing else."""
    expected: dict[str, bytes] = {}
    for src in sources:
        if src.is_dir():
            expected.update({f"{src.name}/{k}": v for k, v in _files(src).items()})
        else:
            expected[src.name] = src.read_bytes()
    got = _files(out)
    assert sorted(got) == sorted(expected)
    for name, data in expected.items():
        assert got[name] == data, name


def _finish(proc: subprocess.Popen[str], timeout: float = TIMEOUT) -> tuple[str, str]:
    return proc.communicate(timeout=timeout)


# --- (a) 0.1.1 peers through our relay -----------------------------------------------


@pytest.mark.slow
def test_seed_peers_through_our_relay(
    processes: Processes, seed_procs: seed.SeedProcesses, tmp_path: Path
) -> None:
    """A 0.1.1 sender and receiver copy a folder and a 5 MB file through our relay intact."""
    relay, url = processes.start_relay()
    sources = _make_sources(tmp_path / "src")
    out = tmp_path / "out"
    code = _code()
    receiver = seed_procs.start("receive", url, code, "--out", str(out))
    sender = seed_procs.start("send", url, code, *map(str, sources))
    s_out, s_err = _finish(sender)
    r_out, r_err = _finish(receiver)
    assert sender.returncode == 0, s_out + s_err
    assert receiver.returncode == 0, r_out + r_err
    _assert_arrived(sources, out)
    assert relay.poll() is None  # the relay serves on


# --- (b) our peers through a 0.1.1 relay ---------------------------------------------


@pytest.mark.slow
def test_our_peers_through_seed_relay(
    processes: Processes, seed_procs: seed.SeedProcesses, tmp_path: Path
) -> None:
    """Our sender and receiver copy a folder and a 5 MB file through a 0.1.1 relay intact."""
    relay, url = seed_procs.start_relay()
    sources = _make_sources(tmp_path / "src", empty=True)
    out = tmp_path / "out"
    code = _code()
    receiver = processes.start("receive", url, code, "--out", str(out), "--json")
    sender = processes.start("send", url, code, *map(str, sources))
    s_out, s_err = _finish(sender)
    r_out, r_err = _finish(receiver)
    assert sender.returncode == 0, s_err
    assert receiver.returncode == 0, r_err
    _assert_arrived(sources, out)
    finished = json.loads(r_out.splitlines()[-1])
    assert finished["event"] == "finished" and finished["files"] == 6
    assert relay.poll() is None


# --- (c) a 0.1.1 sender and our receiver ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("json_output", [False, True], ids=["plain", "json"])
def test_seed_sender_and_our_receiver_never_meet(
    processes: Processes, seed_procs: seed.SeedProcesses, tmp_path: Path, json_output: bool
) -> None:
    """A 0.1.1 sender hashes its whole code, ours only the room part: with the same code they
    land in different rooms, so nothing crosses; our receiver gives up with exit 4."""
    relay, url = processes.start_relay()
    sources = _make_sources(tmp_path / "src")
    out = tmp_path / "out"
    code = _code()
    extra = ("--json",) if json_output else ()
    sender = seed_procs.start("send", url, code, *map(str, sources))
    receiver = processes.start("receive", url, code, "--out", str(out), "--wait-timeout", "3",
                               *extra)
    r_out, r_err = _finish(receiver)
    assert receiver.returncode == TransferTimeoutError.exit_code, r_err
    lines = r_err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r_err, r_err
    if json_output:
        error = json.loads(r_out.splitlines()[-1])
        assert error["event"] == "error" and error["exit_code"] == receiver.returncode
    assert sender.poll() is None  # still waiting in its own room
    assert not out.exists() or not any(out.iterdir())
    assert relay.poll() is None


# --- (d) a duplicate 0.1.1 role on our relay -----------------------------------------


async def _until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` without blocking the loop (the relay runs in it)."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"gave up after {timeout:g} s waiting for {what}") from None


async def _exited(proc: subprocess.Popen[str], timeout: float = TIMEOUT) -> tuple[str, str]:
    await _until(lambda: proc.poll() is not None, "exit", timeout)
    return proc.communicate(timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("role", ["sender", "receiver"])
async def test_our_relay_refuses_a_duplicate_seed_peer(
    processes: Processes, seed_procs: seed.SeedProcesses, tmp_path: Path, role: str
) -> None:
    """A second 0.1.1 peer of a taken role is refused (4002) like ours, the first one stays."""
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(100_000))
    code = _code()

    def seed_peer(as_role: str, name: str) -> subprocess.Popen[str]:
        if as_role == "sender":
            return seed_procs.start("send", url, code, str(src))
        return seed_procs.start("receive", url, code, "--out", str(tmp_path / name))

    async with running_relay(peer_timeout=120.0) as relay:
        url = relay.url
        first = seed_peer(role, "first")
        await _until(lambda: relay.stats.waiting == 1 or first.poll() is not None, "waiting")
        assert first.poll() is None, first.communicate()

        second = seed_peer(role, "second")
        out, err = await _exited(second)
        assert second.returncode != 0
        assert "already waiting" in out + err  # the relay's close reason, code 4002
        assert "4002" in out + err

        # The relay counts a refusal once the close handshake is over, maybe after the exit.
        await _until(lambda: relay.stats.outcomes["redundant"] == 1, "the refusal")
        assert relay.stats.waiting == 1 and first.poll() is None  # left alone

        partner = seed_peer("receiver" if role == "sender" else "sender", "partner")
        p_out, p_err = await _exited(partner)
        f_out, f_err = await _exited(first)
        assert partner.returncode == 0, p_out + p_err
        assert first.returncode == 0, f_out + f_err
    received = tmp_path / ("partner" if role == "sender" else "first") / "payload.bin"
    assert received.read_bytes() == src.read_bytes()
    assert not (tmp_path / "ours").exists() or not any((tmp_path / "ours").iterdir())
