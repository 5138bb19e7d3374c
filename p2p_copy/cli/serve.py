"""``--serve [HOST:]PORT``: this side hosts the relay for its own transfer.

For two machines with no relay between them: the relay (relay/server.py's, in this
process and loop) listens here for as long as the transfer runs, with TLS under a
certificate made on the spot. No CA signed it; the line printed for the other side carries
its SHA-256 fingerprint, which that side pins (peer/pinning.py). The private key is never
on disk in the clear: the ssl module loads keys from files only, so it passes through a
0600 temporary file, encrypted with a random password held in memory, and the file is
removed as soon as it is loaded.
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_HOST", "Served", "hosting", "parse_serve", "serve"]

#: Where --serve listens without a HOST: every IPv4 interface, since the other machine
#: must reach this one (loopback would serve only this machine). The relay is as safe
#: there as any relay: it sees only sealed data, a stranger needs the code to pair.
DEFAULT_HOST = "0.0.0.0"
#: Addresses that mean "every interface": the other side needs a real name instead.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}
#: Seconds the relay stays up after our transfer ended, for the other side's close.
_LINGER = 5.0
#: How long the certificate says it is valid (the pin, not the dates, is checked).
_VALID_DAYS = 7


def parse_serve(value: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[IPv6]:PORT`` (argparse type)."""
    host, colon, port_text = value.rpartition(":")
    if not colon:
        host = DEFAULT_HOST
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host or not host:
        host = "\0"  # an IPv6 address needs its brackets; "":PORT names no host
    try:
        port = int(port_text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535 or host == "\0":
        raise argparse.ArgumentTypeError(
            f"{value!r} is not [HOST:]PORT: give a port from 1 to 65535, e.g. 8765, "
            "192.0.2.10:8765 or [::]:8765")
    return host, port


@dataclass(frozen=True)
class Served:
    """A relay this process serves for its transfer, as planned before it listens."""

    host: str
    port: int
    context: ssl.SSLContext
    #: The relay's certificate, as the other side pins it (``sha256:...``).
    fingerprint: str
    #: The URL the other side uses (the peer here uses one on loopback).
    public_url: str
    #: Whether public_url's host is this machine's name, put there for a wildcard HOST.
    guessed: bool

    @property
    def local_url(self) -> str:
        return _url(_WILDCARDS.get(self.host, self.host), self.port)


def _url(host: str, port: int) -> str:
    return f"wss://[{host}]:{port}" if ":" in host else f"wss://{host}:{port}"


def serve(host: str, port: int) -> Served:
    """Plan the relay on ``host``:``port``: its certificate and what the other side uses."""
    from ..peer.pinning import fingerprint_of

    context, der = _self_signed()
    guessed = host in _WILDCARDS
    public = socket.gethostname() if guessed else host
    return Served(host, port, context, fingerprint_of(der), _url(public, port), guessed)


def _self_signed() -> tuple[ssl.SSLContext, bytes]:
    """A server context with a certificate and key made now, and the certificate (DER)."""
    import datetime
    import secrets

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from ..relay.server import server_ssl_context

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p2p-copy relay")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    password = secrets.token_bytes(32)
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password))
    fd, path = tempfile.mkstemp(prefix="p2p-copy-relay-", suffix=".pem")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        context = server_ssl_context(path, password=password)
    finally:
        os.unlink(path)
    return context, cert.public_bytes(serialization.Encoding.DER)


async def hosting(served: Served, work: Coroutine[Any, Any, Any],
                  listening: Callable[[], None] | None = None) -> Any:
    """Serve the relay while ``work`` (the transfer through it) runs; stop it after.

    ``listening`` is called once the relay listens (the line for the other side is
    printed then, not before). A cancelled ``work`` (Ctrl-C) stops the relay at once.
    """
    from ..errors import UsageError
    from ..relay.server import Relay, RelayConfig

    # No web page: a browser cannot pin the certificate, and a page loaded past a
    # certificate warning is code anyone on the way could have swapped.
    relay = Relay(served.host, served.port, ssl_context=served.context,
                  config=RelayConfig(web=False))
    try:
        await relay.start()
    except OSError as exc:
        work.close()
        # A name that does not resolve is not a busy port: say which it is.
        advice = ("Give an address of this machine (or leave the host out)."
                  if isinstance(exc, socket.gaierror) else "Choose another port.")
        raise UsageError(f"--serve cannot listen on {served.host}:{served.port}: "
                         f"{exc.strerror or exc}. {advice}") from None
    ended = False
    try:
        if listening is not None:
            listening()
        result = await work
        ended = True
        return result
    finally:
        if ended:
            # The other side's last messages and close may still be on their way.
            await relay.drain(_LINGER)
        await relay.stop()
