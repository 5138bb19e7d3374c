"""The CLI's event loop (cli/eventloop.py): uvloop where installed, asyncio's without it.

uvloop is in the [test] extra (not on Windows), so CI runs the uvloop test; the CLI's other
subprocess tests run on it too wherever it is installed. The tests without it hide it
from the process (a ``uvloop`` package on PYTHONPATH that fails to import).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import uuid
from pathlib import Path

import pytest
import trustme

import p2p_copy
from p2p_copy.cli import eventloop
from p2p_copy.relay.server import Relay, server_ssl_context
from p2p_copy.testing import TEST_CONFIG

from .conftest import Processes, cli_env, free_port, wait_for_port
from .test_tls import _assert_same

TIMEOUT = 60
HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "inner").mkdir(parents=True)
    (src / "note.txt").write_text("on another loop\n")
    # Several MiB: enough messages for the relay to pause and resume reading on the way.
    (src / "inner" / "blob.bin").write_bytes(os.urandom(6 * 2**20 + 17))
    return src


def _without_uvloop(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import uvloop`` fails, as where it is not installed."""
    shim = tmp_path / "no-uvloop" / "uvloop"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('uvloop hidden by the test')\n")
    path = os.environ.get("PYTHONPATH")
    return cli_env(PYTHONPATH=os.pathsep.join(filter(None, [str(shim.parent), path])))


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed (the [fast] extra)")
def test_transfer_through_a_tls_relay_on_uvloop(tmp_path: Path) -> None:
    """eventloop.run() runs on uvloop, and a folder crosses a wss:// relay on it intact
    (uvloop's TLS layer, and the relay's forwarding hooks on uvloop's transports)."""
    ca = trustme.CA()
    chain = tmp_path / "chain.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(chain))
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    src = _source(tmp_path)
    code = f"{uuid.uuid4().hex[:12]}-loop"

    async def transfer() -> str:
        context = server_ssl_context(str(chain))
        async with Relay("127.0.0.1", 0, ssl_context=context, config=TEST_CONFIG) as relay:
            async with asyncio.timeout(TIMEOUT):
                await asyncio.gather(
                    p2p_copy.send(relay.url, code, [src], cafile=str(ca_pem), progress="none"),
                    p2p_copy.receive(relay.url, code, tmp_path / "out", cafile=str(ca_pem),
                                     progress="none"),
                )
            assert relay.stats.bytes_forwarded > 6 * 2**20
        return type(asyncio.get_running_loop()).__module__

    assert eventloop.run(transfer()).startswith("uvloop")
    _assert_same(src, tmp_path / "out" / "src")


def test_without_uvloop_the_cli_runs_on_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where uvloop does not import, eventloop.run() uses asyncio's own loop."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert eventloop.loop_factory() is None

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert eventloop.run(loop_module()).startswith("asyncio")


@pytest.mark.slow
def test_cli_and_relay_transfer_without_uvloop(processes: Processes, tmp_path: Path) -> None:
    """Relay, sender and receiver processes in which uvloop cannot be imported still move a
    folder intact, and the relay says it runs on asyncio's loop."""
    env = _without_uvloop(tmp_path)
    port = free_port()
    relay = processes.start("run-relay-server", "127.0.0.1", str(port), "--no-tls",
                            "--log-level", "INFO", env=env)
    wait_for_port(port, relay)
    url = f"ws://127.0.0.1:{port}"
    src = _source(tmp_path)
    code = f"{uuid.uuid4().hex[:12]}-plain"
    receiver = processes.start("receive", url, code, "--out", str(tmp_path / "out"), env=env)
    sender = processes.start("send", url, code, str(src), env=env)
    _, s_err = sender.communicate(timeout=TIMEOUT)
    _, r_err = receiver.communicate(timeout=TIMEOUT)
    assert sender.returncode == 0, s_err
    assert receiver.returncode == 0, r_err
    _assert_same(src, tmp_path / "out" / "src")
    relay.terminate()
    _, relay_err = relay.communicate(timeout=TIMEOUT)
    assert "listening" in relay_err and "loop=asyncio" in relay_err, relay_err


@pytest.mark.slow
@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed (the [fast] extra)")
def test_relay_process_runs_on_uvloop(processes: Processes) -> None:
    """Where uvloop is installed, the relay command runs on it (and says so in its log)."""
    port = free_port()
    relay = processes.start("run-relay-server", "127.0.0.1", str(port), "--no-tls",
                            "--log-level", "INFO")
    wait_for_port(port, relay)
    relay.terminate()
    _, relay_err = relay.communicate(timeout=TIMEOUT)
    assert "loop=uvloop" in relay_err, relay_err
