"""--serve: one side hosts the relay for its transfer, and the other pins its certificate.

Real CLI processes on 127.0.0.1 for the paths a person takes (the printed line pasted as
it is, a wrong fingerprint); the pin itself against TLS servers with other certificates.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shlex
import signal
import socket
import ssl
import stat
import tempfile
from pathlib import Path

import pytest
import trustme

from p2p_copy.cli.serve import parse_serve, serve
from p2p_copy.errors import RelayUnreachableError, TransferCancelledError, UsageError
from p2p_copy.peer.link import open_link
from p2p_copy.peer.pinning import fingerprint_of, parse_fingerprint
from p2p_copy.relay import server

from .conftest import Processes, free_port, run_cli
from .test_cli_everyday import _env, _lines_until, _one_line

TIMEOUT = 60
RUN = "On the other machine run: "


def _run_line(lines: list[str]) -> list[str]:
    """The printed command for the other side, split as a shell would."""
    line = next(line for line in lines if line.startswith(RUN)).removeprefix(RUN)
    return shlex.split(line)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_send_serve_then_the_printed_line_receives(processes: Processes,
                                                   tmp_path: Path) -> None:
    """send --serve 127.0.0.1:PORT prints a receive line with wss:// and --fingerprint;
    pasted as it is, it receives the same bytes, and the serving sender then exits 0."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(300_000))
    (src / "sub" / "b.txt").write_text("served here\n")
    port = free_port()
    sender = processes.start("send", "--serve", f"127.0.0.1:{port}", str(src),
                             env=_env(tmp_path))
    words = _run_line(_lines_until(sender, RUN))
    assert words[:4] == ["p2p-copy", "receive", "--fingerprint", words[3]]
    assert words[3].startswith("sha256:") and f"wss://127.0.0.1:{port}" in words
    out = tmp_path / "out"
    got = run_cli(*words[1:], "--out", str(out), env=_env(tmp_path, "peer"), timeout=TIMEOUT)
    assert got.returncode == 0, got.stderr
    assert sender.wait(timeout=TIMEOUT) == 0, sender.communicate()
    assert _tree(out / "src") == _tree(src)


@pytest.mark.slow
def test_receive_serve_prints_a_send_line_that_works(processes: Processes,
                                                      tmp_path: Path) -> None:
    """receive --serve chooses the code and prints the send line; the sender runs it with
    its file in place of FILE..., and the file arrives."""
    src = tmp_path / "note.txt"
    src.write_text("from the other side")
    out = tmp_path / "out"
    receiver = processes.start("receive", "--serve", f"127.0.0.1:{free_port()}", "--out",
                               str(out), "--yes", env=_env(tmp_path))
    words = _run_line(_lines_until(receiver, RUN))
    assert words[:2] == ["p2p-copy", "send"] and words[-1] == "FILE..."
    got = run_cli(*words[1:-1], str(src), env=_env(tmp_path, "peer"), timeout=TIMEOUT)
    assert got.returncode == 0, got.stderr
    assert receiver.wait(timeout=TIMEOUT) == 0, receiver.communicate()
    assert (out / "note.txt").read_text() == "from the other side"


@pytest.mark.slow
def test_a_wrong_fingerprint_is_refused_and_nothing_written(processes: Processes,
                                                            tmp_path: Path) -> None:
    """The printed line with one digit of the fingerprint changed: one line saying the
    certificate is not the announced one, exit 3 (relay unreachable), nothing received."""
    src = tmp_path / "secret.txt"
    src.write_text("only for the pinned relay")
    sender = processes.start("send", "--serve", f"127.0.0.1:{free_port()}", str(src),
                             env=_env(tmp_path))
    words = _run_line(_lines_until(sender, RUN))
    pin = words[3]
    words[3] = pin[:-1] + ("0" if pin[-1] != "0" else "1")
    out = tmp_path / "out"
    got = run_cli(*words[1:], "--out", str(out), env=_env(tmp_path, "peer"), timeout=TIMEOUT)
    line = _one_line(got, 3)
    assert "certificate is not the one the other side announced" in line
    assert pin in line  # the certificate it did see, to compare with the sender's line
    assert not out.exists() or not any(out.iterdir())
    assert sender.poll() is None  # still waiting for the right receiver


def test_serve_refuses_a_relay_of_its_own(tmp_path: Path) -> None:
    """--serve with a relay address or a --fingerprint is a usage error, before anything
    listens or connects."""
    src = tmp_path / "a.txt"
    src.write_text("x")
    port = str(free_port())
    line = _one_line(run_cli("send", "--serve", port, "--relay", "ws://127.0.0.1:1",
                             str(src), env=_env(tmp_path)))
    assert "--serve" in line and "relay address" in line
    line = _one_line(run_cli("receive", "--serve", port, "--fingerprint", "sha256:" + "a" * 64,
                             env=_env(tmp_path)))
    assert "--fingerprint" in line


# --- the pin ---------------------------------------------------------------------------


class _TlsServer:
    """A TCP server that does a TLS handshake with ``context`` and records the application
    bytes the client sends (None: the handshake did not complete)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.received: asyncio.Future[bytes | None] | None = None

    async def __aenter__(self) -> str:
        self.received = asyncio.get_running_loop().create_future()
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"wss://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        assert self.received is not None
        try:
            await writer.start_tls(self.context)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            self.received.set_result(None)
            writer.close()
            return
        try:
            data = await reader.read(4096)
        except (OSError, ssl.SSLError):
            data = b""
        self.received.set_result(data)
        writer.close()  # not a relay: the client fails after its request


def _trustme_server() -> tuple[ssl.SSLContext, bytes]:
    """A server context with a trustme certificate, and that certificate (DER)."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    return context, der


async def test_the_pin_refuses_another_certificate_before_any_byte() -> None:
    """A server with another certificate than the pinned one: RelayUnreachableError naming
    the certificate it saw, and the server got no application byte (no room, no token)."""
    context, der = _trustme_server()
    server = _TlsServer(context)
    async with asyncio.timeout(20), server as url:
        with pytest.raises(RelayUnreachableError, match="not the one the other side") as info:
            async with open_link(url, room="ab" * 32, token="secret",
                                 fingerprint="sha256:" + "0" * 64):
                pass
        assert fingerprint_of(der) in str(info.value)
        assert server.received is not None
        assert not await server.received


async def test_the_pinned_certificate_is_accepted_without_a_ca() -> None:
    """The same server pinned by its own certificate's SHA-256: no CA, and a host name the
    certificate may not carry, yet the connection goes on to the WebSocket request."""
    context, der = _trustme_server()
    server = _TlsServer(context)
    async with asyncio.timeout(20), server as url:
        with pytest.raises(RelayUnreachableError, match="not as a p2p-copy relay"):
            async with open_link(url.replace("127.0.0.1", "localhost"),
                                 fingerprint=fingerprint_of(der).upper()):
                pass
        assert server.received is not None
        assert (await server.received or b"").startswith(b"GET /")


def test_fingerprint_forms() -> None:
    """openssl's form (upper case with colons) and the printed compact form are the same
    pin; anything else is a usage error."""
    digest = hashlib.sha256(b"cert").digest()
    colons = "SHA256:" + ":".join(f"{b:02X}" for b in digest)
    assert parse_fingerprint(colons) == parse_fingerprint(fingerprint_of(b"cert")) == digest
    for bad in ("sha256:12", "md5:" + "a" * 32, "sha256:" + "g" * 64, ""):
        with pytest.raises(UsageError, match="not a SHA-256 fingerprint"):
            parse_fingerprint(bad)


def test_serve_address_forms() -> None:
    """PORT listens on every IPv4 interface; HOST:PORT and [IPv6]:PORT on that address."""
    assert parse_serve("8765") == ("0.0.0.0", 8765)
    assert parse_serve("127.0.0.1:9") == ("127.0.0.1", 9)
    assert parse_serve("[::1]:8765") == ("::1", 8765)
    for bad in ("::1:8765", ":8765", "0", "70000", "host:", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_serve(bad)


def test_the_key_reaches_the_disk_only_encrypted_and_briefly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ssl loads keys from files only: the one file is 0600, holds the key encrypted, and
    is gone once loaded. A wildcard HOST puts this machine's name in the other's URL."""
    seen: list[tuple[int, bytes]] = []
    original = server.server_ssl_context

    def spy(path: str, keyfile: str | None = None,
            password: bytes | None = None) -> ssl.SSLContext:
        seen.append((stat.S_IMODE(os.stat(path).st_mode), Path(path).read_bytes()))
        return original(path, keyfile, password)

    monkeypatch.setattr(server, "server_ssl_context", spy)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    served = serve("0.0.0.0", 8765)
    [(mode, pem)] = seen
    assert mode == 0o600
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in pem and b"BEGIN PRIVATE KEY" not in pem
    assert list(tmp_path.iterdir()) == []
    assert served.guessed and served.local_url == "wss://127.0.0.1:8765"
    assert served.fingerprint.startswith("sha256:")


@pytest.mark.slow
def test_ctrl_c_stops_the_transfer_and_the_relay(processes: Processes,
                                                 tmp_path: Path) -> None:
    """Ctrl-C while the serving sender waits: it says cancelled, exits with the cancel
    code, and nothing listens on its port any more."""
    src = tmp_path / "a.txt"
    src.write_text("x")
    port = free_port()
    sender = processes.start("send", "--serve", f"127.0.0.1:{port}", str(src),
                             env=_env(tmp_path))
    _lines_until(sender, RUN)
    sender.send_signal(signal.SIGINT)
    _, err = sender.communicate(timeout=TIMEOUT)
    assert sender.returncode == TransferCancelledError.exit_code, err
    assert "cancelled" in err and "Traceback" not in err
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
