"""Trusting a relay by its certificate's SHA-256 fingerprint instead of a CA.

A relay served for one transfer (``p2p-copy send --serve``) has a certificate made on the
spot that no CA signed; the side that made it announces its fingerprint in the receive
line. The other side accepts the TLS connection only if the certificate the server shows
has that SHA-256: the check runs inside the TLS handshake (``do_handshake`` of the
context's SSLObject class, the hook ssl documents for this), so that a wrong certificate
fails the connection before websockets sends a byte of its own (the room, a token).
Certificate and host-name checks are off only in a context that carries a pin.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl

from ..errors import UsageError
from ..protocol.digests import HEX_DIGEST

__all__ = ["PREFIX", "PinMismatchError", "fingerprint_of", "parse_fingerprint",
           "pinned_context", "shown"]

#: The fingerprint's algorithm, as written before the hex digits.
PREFIX = "sha256:"


def fingerprint_of(der: bytes) -> str:
    """The fingerprint as printed for a DER certificate: ``sha256:`` and 64 hex digits.

    Without the colons of ``openssl x509 -fingerprint`` (which parse_fingerprint accepts
    too): a shorter line to paste and a smaller QR code, the same digits.
    """
    return shown(hashlib.sha256(der).digest())


def shown(digest: bytes) -> str:
    """A SHA-256 digest as a fingerprint is printed."""
    return PREFIX + digest.hex()


def parse_fingerprint(text: str) -> bytes:
    """The SHA-256 digest that ``text`` (``sha256:AB:CD:...`` or ``sha256:abcd...``) names."""
    body = text.strip().lower()
    if body.startswith(PREFIX):
        body = body[len(PREFIX):]
    body = body.replace(":", "")
    if not HEX_DIGEST.fullmatch(body):
        raise UsageError(
            f"The fingerprint {text!r} is not a SHA-256 fingerprint: copy it whole from the "
            "receive line, e.g. sha256: followed by 64 hex digits.")
    return bytes.fromhex(body)


class PinMismatchError(ssl.SSLCertVerificationError):
    """The server's certificate is not the pinned one (an ssl error, so that asyncio
    fails the handshake with it and logs nothing)."""

    def __init__(self, expected: bytes, got: bytes) -> None:
        super().__init__(f"certificate SHA-256 {got.hex()} is not the pinned {expected.hex()}")
        self.expected = expected
        self.got = got


class _PinnedObject(ssl.SSLObject):
    #: Set on the subclass pinned_context() makes for each pin.
    pin: bytes = b""

    def do_handshake(self) -> None:
        super().do_handshake()  # SSLWantReadError etc. until the handshake is done
        der = self.getpeercert(binary_form=True)
        got = hashlib.sha256(der or b"").digest()
        if not self.pin or not hmac.compare_digest(got, self.pin):
            raise PinMismatchError(self.pin, got)


def pinned_context(digest: bytes) -> ssl.SSLContext:
    """A client context that accepts exactly the certificate whose SHA-256 is ``digest``."""
    if len(digest) != hashlib.sha256().digest_size:
        raise ValueError("a pin is a SHA-256 digest")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The pin replaces both checks: no CA signed the certificate, and the host name the
    # other side was told may be one the certificate does not carry.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.sslobject_class = type("_Pinned", (_PinnedObject,), {"pin": digest})
    return context
