"""wss:// end to end, with a private certificate authority made at test time (trustme)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

import p2p_copy
from p2p_copy.errors import RelayUnreachableError
from p2p_copy.relay.server import Relay, server_ssl_context
from p2p_copy.testing import TEST_CONFIG

from .conftest import Processes, free_port, run_cli, wait_for_port

TIMEOUT = 60


@dataclass(frozen=True)
class Pki:
    """PEM files on disk: the CA that clients may trust, and a relay certificate it signed."""

    ca_pem: Path
    combined_pem: Path  # the relay's key and certificate chain in one file
    cert_pem: Path
    key_pem: Path


def _write_pki(ca: trustme.CA, directory: Path, *hosts: str) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    server = ca.issue_cert(*hosts)
    pki = Pki(
        ca_pem=directory / "ca.pem",
        combined_pem=directory / "server.pem",
        cert_pem=directory / "cert.pem",
        key_pem=directory / "key.pem",
    )
    ca.cert_pem.write_to_path(str(pki.ca_pem))
    server.private_key_and_cert_chain_pem.write_to_path(str(pki.combined_pem))
    server.private_key_pem.write_to_path(str(pki.key_pem))
    pki.cert_pem.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    return pki


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pki(ca: trustme.CA, tmp_path: Path) -> Pki:
    """A relay certificate for both names the tests connect to: localhost and 127.0.0.1."""
    return _write_pki(ca, tmp_path / "pki", "localhost", "127.0.0.1")


def _code() -> str:
    return f"{uuid.uuid4().hex[:12]}-tls"


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "inner").mkdir(parents=True)
    (src / "note.txt").write_text("over TLS\n")
    (src / "inner" / "blob.bin").write_bytes(os.urandom(600_000))
    return src


def _assert_same(src: Path, dst: Path) -> None:
    files = sorted(p.relative_to(src) for p in src.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(dst) for p in dst.rglob("*") if p.is_file())
    for rel in files:
        assert (dst / rel).read_bytes() == (src / rel).read_bytes(), rel


@pytest.fixture
async def tls_relay(pki: Pki) -> AsyncIterator[Relay]:
    """An in-process relay serving wss:// on 127.0.0.1 with the combined key+chain PEM file."""
    context = server_ssl_context(str(pki.combined_pem))
    async with Relay("127.0.0.1", 0, ssl_context=context, config=TEST_CONFIG) as relay:
        yield relay


# --- in-process relay ----------------------------------------------------------------


async def test_transfer_over_wss_with_cafile(tls_relay: Relay, pki: Pki, tmp_path: Path) -> None:
    """With cafile= the client trusts the private CA and a folder crosses wss://localhost."""
    assert tls_relay.url.startswith("wss://")
    url = f"wss://localhost:{tls_relay.port}"
    src = _source(tmp_path)
    code = _code()
    async with asyncio.timeout(TIMEOUT):
        sent, got = await asyncio.gather(
            p2p_copy.send(url, code, [src], cafile=str(pki.ca_pem), progress="none"),
            p2p_copy.receive(url, code, tmp_path / "out", cafile=str(pki.ca_pem),
                             progress="none"),
        )
    _assert_same(src, tmp_path / "out" / "src")
    assert [f.sha256 for f in got.files] == [f.sha256 for f in sent.files]
    assert tls_relay.stats.bytes_forwarded > 600_000


@pytest.mark.parametrize("role", ["sender", "receiver"])
async def test_untrusted_certificate_is_refused(
    tls_relay: Relay, tmp_path: Path, role: str
) -> None:
    """Without the CA the client refuses the relay: RelayUnreachableError naming --cafile."""
    url = f"wss://localhost:{tls_relay.port}"
    src = _source(tmp_path)
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(RelayUnreachableError) as info:
            if role == "sender":
                await p2p_copy.send(url, _code(), [src], progress="none")
            else:
                await p2p_copy.receive(url, _code(), tmp_path / "out", progress="none")
    message = str(info.value)
    assert "certificate" in message
    assert "--cafile" in message
    assert info.value.exit_code == 3
    assert not (tmp_path / "out").exists()


async def test_certificate_for_another_host_is_refused(ca: trustme.CA, tmp_path: Path) -> None:
    """A certificate from the trusted CA but for another host name does not verify."""
    pki = _write_pki(ca, tmp_path / "wrong", "relay.example.org")
    context = server_ssl_context(str(pki.cert_pem), str(pki.key_pem))
    async with Relay("127.0.0.1", 0, ssl_context=context, config=TEST_CONFIG) as relay:
        for host in ("localhost", "127.0.0.1"):
            url = f"wss://{host}:{relay.port}"
            async with asyncio.timeout(TIMEOUT):
                with pytest.raises(RelayUnreachableError) as info:
                    await p2p_copy.receive(url, _code(), tmp_path / "out",
                                           cafile=str(pki.ca_pem), progress="none")
            assert "certificate" in str(info.value), host
            assert host in str(info.value)  # the reason names the host it does not cover
        assert relay.stats.outcomes.total() == 0  # no connection got as far as a hello


# --- relay and clients as processes --------------------------------------------------


@pytest.fixture
def tls_relay_process(processes: Processes, pki: Pki) -> str:
    """``run-relay-server --certfile --keyfile`` on 127.0.0.1; returns its wss:// URL."""
    port = free_port()
    proc = processes.start("run-relay-server", "127.0.0.1", str(port), "--certfile",
                           str(pki.cert_pem), "--keyfile", str(pki.key_pem))
    wait_for_port(port, proc)
    return f"wss://127.0.0.1:{port}"


@pytest.mark.slow
def test_cli_transfer_over_wss_with_cafile(
    processes: Processes, tls_relay_process: str, pki: Pki, tmp_path: Path
) -> None:
    """CLIs given --cafile send a folder through a TLS relay process at wss://127.0.0.1."""
    src = _source(tmp_path)
    code = _code()
    out = tmp_path / "out"
    receiver = processes.start("receive", tls_relay_process, code, "--out", str(out),
                               "--cafile", str(pki.ca_pem))
    sender = processes.start("send", tls_relay_process, code, str(src),
                             "--cafile", str(pki.ca_pem))
    _, s_err = sender.communicate(timeout=TIMEOUT)
    _, r_err = receiver.communicate(timeout=TIMEOUT)
    assert sender.returncode == 0, s_err
    assert receiver.returncode == 0, r_err
    _assert_same(src, out / "src")


@pytest.mark.slow
def test_cli_without_cafile_exits_3_with_a_hint(
    processes: Processes, tls_relay_process: str, pki: Pki, tmp_path: Path
) -> None:
    """Without --cafile the CLI exits 3 with one line about the certificate and --cafile."""
    src = _source(tmp_path)
    for args in (("send", tls_relay_process, _code(), str(src)),
                 ("receive", tls_relay_process, _code(), "--out", str(tmp_path / "out"))):
        result = run_cli(*args, timeout=TIMEOUT)
        assert result.returncode == RelayUnreachableError.exit_code, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "certificate" in lines[0] and "--cafile" in lines[0]
        assert "Traceback" not in result.stderr
        assert result.stdout == ""
    assert not (tmp_path / "out").exists()
    # The refused handshakes did not hurt the relay: a trusting pair still gets through.
    code = _code()
    receiver = processes.start("receive", tls_relay_process, code, "--out", str(tmp_path / "ok"),
                               "--cafile", str(pki.ca_pem))
    sender = run_cli("send", tls_relay_process, code, str(src), "--cafile", str(pki.ca_pem),
                     timeout=TIMEOUT)
    _, r_err = receiver.communicate(timeout=TIMEOUT)
    assert sender.returncode == 0, sender.stderr
    assert receiver.returncode == 0, r_err
    _assert_same(src, tmp_path / "ok" / "src")


def test_cli_refuses_a_relay_certificate_for_another_host(
    processes: Processes, ca: trustme.CA, tmp_path: Path
) -> None:
    """A relay process whose certificate names another host is refused even with --cafile."""
    wrong = _write_pki(ca, tmp_path / "wrong", "relay.example.org")
    port = free_port()
    proc = processes.start("run-relay-server", "127.0.0.1", str(port), "--certfile",
                           str(wrong.cert_pem), "--keyfile", str(wrong.key_pem))
    wait_for_port(port, proc)
    result = run_cli("receive", f"wss://127.0.0.1:{port}", _code(), "--out",
                     str(tmp_path / "out"), "--cafile", str(wrong.ca_pem), timeout=TIMEOUT)
    assert result.returncode == RelayUnreachableError.exit_code, result.stderr
    assert "certificate" in result.stderr
    assert "Traceback" not in result.stderr
