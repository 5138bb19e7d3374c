"""The browser peer's core (p2p_copy/web, run under Node) against the Python peer: a real
relay on loopback, the real CLI or API on one side, test/cli-peer.mjs on the other, both
directions, encrypted. Bytes must be identical; a wrong code, tampering and the
flow-control window each behave as protocol.md says.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import p2p_copy
from p2p_copy.errors import TamperingError

from .conftest import WEB, Processes, cli_env, need_node_packages, run_async
from .test_tampering import CLOSE, ManInTheMiddle, Message

CLI_PEER = WEB / "test" / "cli-peer.mjs"
NODE = shutil.which("node")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def _node() -> None:
    need_node_packages()


def node_args(mode: str, url: str, code: str, path: Path) -> list[str]:
    return [str(NODE), "--experimental-websocket", str(CLI_PEER), mode, url, code, str(path)]


def run_node(mode: str, url: str, code: str, path: Path,
             **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(node_args(mode, url, code, path), capture_output=True, text=True,
                          timeout=100, env=cli_env(**env))


def folder(root: Path) -> Path:
    """A folder with an empty file, an empty folder, a Unicode name and some bytes."""
    trip = root / "trip"
    (trip / "empty folder").mkdir(parents=True)
    (trip / "deeper" / "still").mkdir(parents=True)
    (trip / "empty.txt").write_bytes(b"")
    (trip / "naïve café 日本語 😀.txt").write_text("ünïcödé\n", "utf-8")
    (trip / "deeper" / "still" / "data.bin").write_bytes(os.urandom(300_000))
    (trip / "a.txt").write_bytes(b"hello\n")
    return trip


def tree(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root``: files with their bytes, folders as None."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def result_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_node_sends_a_folder_to_the_python_cli(processes: Processes, tmp_path: Path) -> None:
    """JS sender -> Python receiver: empty file, empty folder and Unicode names arrive as sent."""
    _, url = processes.start_relay()
    source = folder(tmp_path / "src")
    receiving = processes.start("receive", url, "7-alpha-bravo-charlie", "--out",
                                str(tmp_path / "out"), "--wait-timeout", "60")
    sent = run_node("send", url, "7-alpha-bravo-charlie", source)
    assert receiving.wait(timeout=60) == 0, receiving.communicate()
    assert result_of(sent)["files"] == 4
    assert tree(tmp_path / "out" / "trip") == tree(source)


def test_the_python_cli_sends_a_folder_to_node(processes: Processes, tmp_path: Path) -> None:
    """Python sender -> JS receiver: the same folder arrives byte for byte, BLAKE3 checked."""
    _, url = processes.start_relay()
    source = folder(tmp_path / "src")
    sending = processes.start("send", url, "8-alpha-bravo-charlie", str(source),
                              "--wait-timeout", "60")
    received = run_node("receive", url, "8-alpha-bravo-charlie", tmp_path / "out")
    assert sending.wait(timeout=60) == 0, sending.communicate()
    assert result_of(received)["digest"] == "blake3"
    assert tree(tmp_path / "out" / "trip") == tree(source)


def test_node_presents_a_token_to_a_private_relay(processes: Processes, tmp_path: Path) -> None:
    """A private relay: the JS core offers its token as a subprotocol (protocol.md §5.11),
    the Python CLI sends it as the header, and they pair; without it, or with another, the
    JS side says access_denied (exit 18, as the CLI's AccessDeniedError). The relay's log
    never shows the token."""
    token = "?>?~>t0k-" + os.urandom(6).hex()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# the relay's\n{token}\n")
    relay, url = processes.start_relay(None, "--access-token-file", str(tokens))
    source = folder(tmp_path / "src")
    receiving = processes.start("receive", url, "6-alpha-bravo-charlie", "--out",
                                str(tmp_path / "out"), "--wait-timeout", "60",
                                env=cli_env(P2P_COPY_RELAY_TOKEN=token))
    sent = run_node("send", url, "6-alpha-bravo-charlie", source, P2P_COPY_RELAY_TOKEN=token)
    assert receiving.wait(timeout=60) == 0, receiving.communicate()
    assert result_of(sent)["files"] == 4
    assert tree(tmp_path / "out" / "trip") == tree(source)
    for given, said in ((None, "needs an access token"),
                        ("other", "did not accept our access token")):
        refused = run_node("receive", url, "6-alpha-bravo-delta", tmp_path / "no",
                           **({"P2P_COPY_RELAY_TOKEN": given} if given else {}))
        assert refused.returncode == 18, refused.stderr
        assert last_line(refused.stderr).startswith("access_denied: ") and said in refused.stderr
    relay.terminate()
    _, log = relay.communicate(timeout=30)
    encoded = base64.urlsafe_b64encode(token.encode()).rstrip(b"=").decode()
    assert "listening" in log and token not in log and encoded not in log
@pytest.mark.parametrize("direction", ["node-to-python", "python-to-node"])
def test_64_mib_of_random_bytes(processes: Processes, tmp_path: Path, direction: str) -> None:
    """A 64 MiB file arrives identical, either way."""
    _, url = processes.start_relay()
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(64 * 2**20))
    out = tmp_path / "out"
    code = "9-alpha-bravo-charlie"
    if direction == "node-to-python":
        receiving = processes.start("receive", url, code, "--out", str(out), "--wait-timeout", "60")
        result_of(run_node("send", url, code, source))
        assert receiving.wait(timeout=60) == 0, receiving.communicate()
    else:
        sending = processes.start("send", url, code, str(source), "--wait-timeout", "60")
        result_of(run_node("receive", url, code, out))
        assert sending.wait(timeout=60) == 0, sending.communicate()
    assert (out / "big.bin").read_bytes() == source.read_bytes()


@pytest.mark.parametrize("wrong_side", ["node-receiver", "node-sender"])
def test_a_wrong_code_fails_both_sides(processes: Processes, tmp_path: Path,
                                       wrong_side: str) -> None:
    """A wrong code: exit 14 on both sides, the JS side says wrong_code, nothing written."""
    _, url = processes.start_relay()
    source = folder(tmp_path / "src")
    out = tmp_path / "out"
    if wrong_side == "node-receiver":
        python = processes.start("send", url, "5-alpha-bravo-charlie", str(source),
                                 "--wait-timeout", "60")
        node = run_node("receive", url, "5-alpha-bravo-delta", out)
    else:
        python = processes.start("receive", url, "5-alpha-bravo-charlie", "--out", str(out),
                                 "--wait-timeout", "60")
        node = run_node("send", url, "5-alpha-bravo-delta", source)
    assert python.wait(timeout=60) == 14, python.communicate()
    assert "does not match" in python.communicate()[1]
    assert node.returncode == 14, node.stderr
    assert last_line(node.stderr).startswith("wrong_code: "), node.stderr
    assert not out.exists() or tree(out) == {}


def tamper_data(direction: str, index: int, message: Message) -> list[Message]:
    """Flip one bit of the sealed message 4 of ``direction`` (a data message)."""
    if index == 4 and isinstance(message, bytes):
        at = min(100, len(message) - 1)
        return [message[:at] + bytes([message[at] ^ 0x04]) + message[at + 1:]]
    return [message]


async def node_peer(mode: str, url: str, code: str, path: Path) -> tuple[int, str, str]:
    return await run_async(*node_args(mode, url, code, path))


async def test_node_receiver_detects_a_tampering_relay(tmp_path: Path) -> None:
    """A relay that alters one sealed data message: the JS receiver reports tampered
    (exit 16), keeps nothing, and the Python sender hears it."""
    source = tmp_path / "secret.bin"
    source.write_bytes(os.urandom(3_000_000))
    mitm = ManInTheMiddle(lambda d, i, m: tamper_data(d, i, m) if d == "s2r" else [m])
    async with mitm.running():
        receiving = asyncio.ensure_future(
            node_peer("receive", mitm.url, "7-a-b-c", tmp_path / "out"))
        await asyncio.sleep(0.3)
        sent = await asyncio.gather(p2p_copy.send(mitm.url, "7-a-b-c", [source], progress="none",
                                                  wait_timeout=20, reconnect_timeout=0),
                                    return_exceptions=True)
        code, _, err = await receiving
    assert code == 16, err
    assert last_line(err).startswith("tampered: "), err
    assert isinstance(sent[0], TamperingError)
    assert not (tmp_path / "out" / "secret.bin").exists()


async def test_python_receiver_detects_tampering_of_what_node_sends(tmp_path: Path) -> None:
    """The other way: the Python receiver finds the altered message, the JS sender hears
    `tampered` from it."""
    source = tmp_path / "secret.bin"
    source.write_bytes(os.urandom(3_000_000))
    mitm = ManInTheMiddle(lambda d, i, m: tamper_data(d, i, m) if d == "s2r" else [m])
    async with mitm.running():
        receiving = asyncio.ensure_future(p2p_copy.receive(
            mitm.url, "7-a-b-c", tmp_path / "out", progress="none", wait_timeout=20,
            reconnect_timeout=0))
        await asyncio.sleep(0.3)
        code, _, err = await node_peer("send", mitm.url, "7-a-b-c", source)
        received = await asyncio.gather(receiving, return_exceptions=True)
    assert isinstance(received[0], TamperingError)
    assert code == 16, err
    assert last_line(err).startswith("tampered: "), err


async def test_node_receiver_reports_a_dropped_connection(tmp_path: Path) -> None:
    """The connection ends in the middle of the data: the JS receiver says the sender is
    gone (connection_lost, exit 7) and keeps no unverified file."""
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(8 * 2**20))
    mitm = ManInTheMiddle(lambda d, i, m: [CLOSE] if d == "s2r" and i == 5 else [m])
    async with mitm.running():
        receiving = asyncio.ensure_future(
            node_peer("receive", mitm.url, "7-a-b-c", tmp_path / "out"))
        await asyncio.sleep(0.3)
        await asyncio.gather(p2p_copy.send(mitm.url, "7-a-b-c", [source], progress="none",
                                           wait_timeout=20, reconnect_timeout=0),
                             return_exceptions=True)
        code, _, err = await receiving
    assert code == 7, err
    assert last_line(err).startswith("connection_lost: The sender closed the connection"), err
    assert not (tmp_path / "out" / "big.bin").exists()


async def test_node_receiver_and_the_window(tmp_path: Path) -> None:
    """A Python sender, a JS receiver: the receiver announces a window and acks only when
    the manifest says "ack": true (older senders treat `ack` as an error), and the
    transfer completes either way. Counted at a relay in the middle: without a window the
    receiver sends accept and done only; with one, an ack per 2 MiB at least."""
    size = 32 * 2**20
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(size))
    mitm = ManInTheMiddle()
    async with mitm.running():
        receiving = asyncio.ensure_future(
            node_peer("receive", mitm.url, "7-a-b-c", tmp_path / "out"))
        await asyncio.sleep(0.3)
        await p2p_copy.send(mitm.url, "7-a-b-c", [source], progress="none", wait_timeout=20,
                            reconnect_timeout=0)
        code, out, err = await receiving
    assert code == 0, err
    assert (tmp_path / "out" / "big.bin").read_bytes() == source.read_bytes()
    window = json.loads(out.strip().splitlines()[-1])["window"]
    from_receiver = [m for d, m in mitm.recorded if d == "r2s" and isinstance(m, bytes)]
    if window:
        assert len(from_receiver) >= 2 + size // (window // 4) - 1
    else:
        assert len(from_receiver) == 2  # accept, done


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
