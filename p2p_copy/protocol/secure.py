"""End-to-end encryption between the two peers, as objects without I/O.

The relay pairs peers by a hash of the code's room part only (codes.py). Right after
pairing, both peers run SPAKE2 (the ``spake2`` package) with the *whole* code as the
password: each learns the same 32-byte key if and only if both typed the same code, and
a relay or eavesdropper learns nothing it could test guesses against offline. An active
attacker gets one guess per run, and a wrong guess shows up at once as a wrong code.

From that key, HKDF-SHA256 derives four independent values: a key per direction for
AES-256-GCM and a confirmation value per direction. Each side sends its confirmation
(``confirm``) and checks the other's before anything else is said: a wrong code fails
within one round trip (WrongCodeError), before any file name is revealed.

After that every message, control and data alike, is one binary WebSocket message:
AES-256-GCM over the inner message with a nonce that counts the messages of that
direction (0, 1, 2, ...). The counter is never sent: both sides know what comes next, so
a message that was altered, dropped, duplicated, reordered, replayed or injected fails
to authenticate (TamperingError). The inner message is the plain protocol's message:
UTF-8 JSON for control messages (first byte ``{``), kind byte + payload for data.

    sender                                   receiver
    pake (SPAKE2 A) ------------------------>
              <------------------------------ pake (SPAKE2 B), confirm (B)
    confirm (A), then sealed messages ------>
              <------------------------------ sealed messages
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from spake2 import SPAKE2_A, SPAKE2_B

from ..errors import (
    IncompatiblePeerError,
    LocalProtocolError,
    RemoteProtocolError,
    TamperingError,
    WrongCodeError,
)
from .codes import normalize_code
from .messages import Confirm, Pake, Role, encode

__all__ = ["SUITE", "TAG_SIZE", "KeyExchange", "Channel", "LaneKeys", "is_control"]

#: Names every algorithm of the handshake and the channel; peers must agree on it.
SUITE: Final = "spake2-ed25519+hkdf-sha256+aes-256-gcm/1"
#: Bytes AES-GCM adds to every message.
TAG_SIZE: Final = 16
_SENDER_ID: Final = b"p2p-copy sender"
_RECEIVER_ID: Final = b"p2p-copy receiver"
_SALT: Final = b"p2p-copy e2e v1"
#: Inner control messages are JSON objects; data messages start with a kind byte < 0x20.
_CONTROL_FIRST_BYTE: Final = ord("{")


def _derive(key: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=label).derive(key)


def is_control(inner: bytes | bytearray | memoryview) -> bool:
    """Whether an opened inner message is a control message (JSON) rather than data."""
    return len(inner) > 0 and inner[0] == _CONTROL_FIRST_BYTE


class KeyExchange:
    """One side's SPAKE2 run and key confirmation; ``channel()`` once both checked out."""

    def __init__(self, code: str, role: Role) -> None:
        # The normalised code (codes.py): "7-Foo-bar " and "7-foo-bar" are the same password.
        password = normalize_code(code).encode("utf-8")
        spake = SPAKE2_A if role == "sender" else SPAKE2_B
        self.role: Role = role
        self._spake = spake(password, idA=_SENDER_ID, idB=_RECEIVER_ID)
        self._outbound = self._spake.start()
        self._key: bytes | None = None
        self._confirmed = False

    def message(self) -> str:
        """Our ``pake`` message; send it once, first."""
        return encode(Pake(suite=SUITE, msg=base64.b64encode(self._outbound).decode("ascii")))

    def receive(self, pake: Pake) -> None:
        """Take the peer's ``pake``; afterwards ``confirmation()`` can be sent."""
        if self._key is not None:
            raise RemoteProtocolError("The peer sent its key exchange message twice.")
        if pake.suite != SUITE:
            raise IncompatiblePeerError(
                f"The peer encrypts with {pake.suite!r}, this p2p-copy with {SUITE!r}. "
                "Install the same p2p-copy version on both sides."
            )
        try:
            inbound = base64.b64decode(pake.msg, validate=True)
        except binascii.Error as exc:
            raise RemoteProtocolError(f"The peer's key exchange message is not base64 ({exc}).") \
                from None
        try:
            self._key = self._spake.finish(inbound)
        except Exception as exc:  # spake2 raises bare Exception subclasses (NotOnCurve, ...)
            raise RemoteProtocolError(
                f"The peer's key exchange message is invalid ({type(exc).__name__})."
            ) from None

    def _values(self) -> tuple[bytes, bytes]:
        """(our confirmation, the peer's confirmation)."""
        if self._key is None:
            raise LocalProtocolError("no key yet: receive the peer's pake first")
        sender = _derive(self._key, b"confirm sender")
        receiver = _derive(self._key, b"confirm receiver")
        return (sender, receiver) if self.role == "sender" else (receiver, sender)

    def confirmation(self) -> str:
        """Our ``confirm`` message: proof that we derived the key, useless to anyone else."""
        ours, _ = self._values()
        return encode(Confirm(mac=ours.hex()))

    def check(self, confirm: Confirm) -> None:
        """Compare the peer's confirmation with ours; WrongCodeError if they differ."""
        _, theirs = self._values()
        if not hmac.compare_digest(confirm.mac, theirs.hex()):
            raise WrongCodeError(
                "The code does not match the other side's: either one of you typed it "
                "wrong, or someone tried to guess it. Nothing was sent. Check the code "
                "and run both sides again."
            )
        self._confirmed = True

    def channel(self) -> Channel:
        """The encrypted channel; only after the peer's confirmation checked out."""
        if self._key is None or not self._confirmed:
            raise LocalProtocolError("the channel opens only after key confirmation")
        to_receiver = _derive(self._key, b"key sender to receiver")
        to_sender = _derive(self._key, b"key receiver to sender")
        if self.role == "sender":
            return Channel(send_key=to_receiver, receive_key=to_sender)
        return Channel(send_key=to_sender, receive_key=to_receiver)

    def lanes(self) -> LaneKeys:
        """The rooms and keys of this transfer's extra lanes (§6.12), after confirmation."""
        self.channel()  # the same precondition
        assert self._key is not None
        return LaneKeys(self._key, self.role)


class LaneKeys:
    """Lane k's room and channel, derived from the handshake's key like the channel's
    keys (§6.0.5, §6.12): no second key exchange, no new guess for an attacker.

    Every run draws a new key, so a lane's room and nonces are never reused across runs;
    within a run, each lane number is opened at most once.
    """

    def __init__(self, key: bytes, role: Role) -> None:
        self._key = key
        self.role: Role = role

    def room(self, lane: int) -> str:
        """The lane's room hash (the hello's code_hash_hex), secret to the two peers."""
        return _derive(self._key, f"lane {lane} room".encode("ascii")).hex()

    def channel(self, lane: int) -> Channel:
        to_receiver = _derive(self._key, f"lane {lane} key sender to receiver".encode("ascii"))
        to_sender = _derive(self._key, f"lane {lane} key receiver to sender".encode("ascii"))
        if self.role == "sender":
            return Channel(send_key=to_receiver, receive_key=to_sender)
        return Channel(send_key=to_sender, receive_key=to_receiver)


def _nonce(counter: int) -> bytes:
    return counter.to_bytes(12, "big")


class Channel:
    """AES-256-GCM in both directions, with message counters as nonces."""

    def __init__(self, *, send_key: bytes, receive_key: bytes) -> None:
        self._send = AESGCM(send_key)
        self._receive = AESGCM(receive_key)
        self.sent = 0
        self.received = 0

    def seal(self, inner: str | bytes | bytearray | memoryview) -> bytes:
        """The ciphertext of the next outgoing message (text is sent as UTF-8)."""
        data = inner.encode("utf-8") if isinstance(inner, str) else inner
        nonce = _nonce(self.sent)
        self.sent += 1
        return self._send.encrypt(nonce, data, None)

    def seal_into(self, inner: memoryview, out: bytearray) -> memoryview:
        """Like ``seal``, writing into ``out`` (len(inner) + TAG_SIZE bytes at least).

        Saves allocating a new buffer per data message on the hot path.
        """
        size = len(inner) + TAG_SIZE
        if len(out) < size:
            raise LocalProtocolError("the output buffer is too small for the sealed message")
        nonce = _nonce(self.sent)
        self.sent += 1
        view = memoryview(out)[:size]
        self._send.encrypt_into(nonce, inner, None, view)
        return view

    def open(self, sealed: bytes | bytearray | memoryview | str) -> bytes:
        """The inner message of the next incoming message; TamperingError if not authentic."""
        if isinstance(sealed, str):
            raise TamperingError(
                "An unencrypted message arrived in the middle of an encrypted transfer: "
                "the relay or the network injected it. Nothing unverified was kept."
            )
        if len(sealed) < TAG_SIZE:
            raise TamperingError("A message too short to be encrypted arrived; it was injected.")
        nonce = _nonce(self.received)
        try:
            inner = self._receive.decrypt(nonce, sealed, None)
        except InvalidTag:
            raise TamperingError(
                f"Message {self.received} from the peer failed authentication: the relay or "
                "the network altered, dropped, reordered, replayed or injected data. "
                "Nothing unverified was kept; run both sides again, ideally via another relay."
            ) from None
        self.received += 1
        return inner
