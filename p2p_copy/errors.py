"""Every error p2p-copy raises on purpose, and the exit code the CLI gives it.

    P2PCopyError                      exit 1   root; catch this to catch them all
    ├── UsageError                    exit 2   bad arguments, a source that cannot be read
    ├── RelayUnreachableError         exit 3   no connection to the relay (DNS, refused, TLS)
    ├── TransferTimeoutError          exit 4   no peer joined, or an answer never came
    ├── CodeInUseError                exit 5   the relay already has a peer with our role and code
    ├── PeerGoneError                 exit 6   the other side left or cancelled before the end
    ├── ConnectionLostError           exit 7   our own connection to the relay dropped
    ├── ProtocolError                 exit 8   a message arrived that the protocol forbids
    │   ├── RemoteProtocolError                ... the peer or relay sent it
    │   └── LocalProtocolError                 ... we tried to send it (a bug in p2p-copy)
    ├── IntegrityError                exit 9   a file's digest differs from the sender's
    ├── UnsafePathError               exit 10  a name would escape or damage the destination
    ├── DestinationExistsError        exit 11  a file exists and overwriting was not asked for
    ├── DiskFullError                 exit 12  not enough free space for what is coming
    ├── IncompatiblePeerError         exit 13  the peer speaks another protocol version
    ├── WrongCodeError                exit 14  the two sides do not share the same code
    ├── EncryptionMismatchError       exit 15  one side encrypts, the other used --no-encrypt
    ├── TamperingError                exit 16  a message was altered, dropped, replayed or reordered
    ├── RelayLimitError               exit 17  the relay refused us: over one of its limits
    ├── AccessDeniedError             exit 18  the relay is private and our access token is wrong
    ├── PolicyError                   exit 19  the offer exceeds a limit the receiver set
    └── TransferCancelledError        exit 130 the user interrupted the transfer
                                               (also named CancelledError, as before 0.7)

Each class carries its ``exit_code`` and a ``wire_code``: the name a peer puts in an
``error`` message so that the other side raises the same class (see docs/protocol.md).
Messages are written for the person at the keyboard: what happened, what to do next.
An error whose text names local details (an absolute path, free space, an OS error) also
carries ``peer_message``, the text the peer is told instead (``peer_text``): only names
the peer sent itself, so that nothing about this machine's folders reaches it.

An error that tells someone to set an option carries a ``Hint`` naming it, spelled where
the text is shown (``P2PCopyError.render``): ``str(error)`` in Python (``overwrite=True``),
the command line's (``--overwrite``) in the CLI, and both for the peer, as what the
receiver must do. The spellings are in one table, ``SPELLINGS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Final, Literal

__all__ = [
    "P2PCopyError",
    "UsageError",
    "RelayUnreachableError",
    "TransferTimeoutError",
    "CodeInUseError",
    "PeerGoneError",
    "ConnectionLostError",
    "ProtocolError",
    "RemoteProtocolError",
    "LocalProtocolError",
    "IntegrityError",
    "UnsafePathError",
    "DestinationExistsError",
    "DiskFullError",
    "IncompatiblePeerError",
    "WrongCodeError",
    "EncryptionMismatchError",
    "TamperingError",
    "RelayLimitError",
    "AccessDeniedError",
    "PolicyError",
    "TransferCancelledError",
    "CancelledError",
    "error_for_wire_code",
    "exit_codes",
]
# Hint, Spelling, SPELLINGS and Style are for p2p-copy's own modules: __all__ names the
# exception tree and its two functions.


@dataclass(frozen=True)
class Spelling:
    """How one thing a user can do is written on the command line and in Python."""

    #: None: the command line has no way to do it (its text then leaves the hint out).
    cli: str | None
    python: str


#: What messages may tell a user to set, by name. All are the receiver's: the peer's text
#: (the sender's) says "The receiver must ...". A new hint adds its row here.
SPELLINGS: Final[Mapping[str, Spelling]] = MappingProxyType({
    "overwrite": Spelling("--overwrite", "overwrite=True"),
    "allow_hidden": Spelling("--allow-hidden", "ReceivePolicy(allow_hidden=True)"),
    "max_files": Spelling("--max-files N", "ReceivePolicy(max_files=...)"),
    "max_bytes": Spelling("--max-bytes SIZE", "ReceivePolicy(max_bytes=...)"),
    "max_depth": Spelling("--max-depth N", "ReceivePolicy(max_depth=...)"),
    "max_entries": Spelling("--max-entries N", "ReceivePolicy(max_entries=...)"),
    "max_name_bytes": Spelling(None, "ReceivePolicy(max_name_bytes=...)"),
    "max_path_bytes": Spelling(None, "ReceivePolicy(max_path_bytes=...)"),
    "windows_names": Spelling(None, "ReceivePolicy(windows_names=False)"),
    # The CLI's receive of a text (api.receive_any) and receive_text()/receive_object().
    "max_text": Spelling("--max-text SIZE", "Options(max_memory=...)"),
    "max_memory": Spelling(None, "max_bytes=... (or Options(max_memory=...))"),
    "into_folder": Spelling("--out DIR instead of --stdout", "p2p_copy.receive()"),
})

#: Where a message is shown: ``str()`` (the Python API, a notebook), the CLI, the peer.
Style = Literal["python", "cli", "peer"]


@dataclass(frozen=True)
class Hint:
    """What to do about an error, as a verb phrase with ``{}`` where the option goes.

    ``Hint("overwrite", "pass {} to replace it")`` reads "Pass --overwrite to replace
    it." on the command line and "The receiver must pass --overwrite (overwrite=True in
    Python) to replace it." for the peer.
    """

    option: str
    advice: str

    def __post_init__(self) -> None:
        if self.option not in SPELLINGS or self.advice.count("{}") != 1:
            raise ValueError(f"not a hint: {self!r}")  # a bug in p2p-copy

    def render(self, style: Style) -> str | None:
        """The sentence for ``style``, or None where there is no way to do it."""
        spelling = SPELLINGS[self.option]
        if style == "cli":
            if spelling.cli is None:
                return None
            named = spelling.cli
        elif style == "python":
            # The command line's spelling stays beside Python's: the same person may
            # use both, and str() is what logs and tests of the protocol layer see.
            named = spelling.python + ("" if spelling.cli is None
                                       else f" ({spelling.cli} on the command line)")
        else:
            named = spelling.python + " in Python" if spelling.cli is None \
                else f"{spelling.cli} ({spelling.python} in Python)"
        # replace(), not format(): the advice may quote a name that holds braces.
        advice = self.advice.replace("{}", named)
        if style == "peer":
            return f"The receiver must {advice}."
        return f"{advice[:1].upper()}{advice[1:]}."


class P2PCopyError(Exception):
    """Root of every error p2p-copy raises on purpose."""

    exit_code: ClassVar[int] = 1
    wire_code: ClassVar[str] = "internal"
    #: True when the peer reported this error in an ``error`` message (so we do not echo it).
    from_peer: bool = False

    def __init__(self, *args: object, peer_message: str | None = None,
                 hint: Hint | None = None) -> None:
        super().__init__(*args)
        #: What the peer is told instead of the local text, when that names local details.
        self.peer_message = peer_message
        #: What to do, spelled where the text is shown (render()); None: nothing to set.
        self.hint = hint

    def render(self, style: Style) -> str:
        """The message as shown in ``style``: its hint spelled for Python, the CLI or the peer.

        ``str(error)`` is ``render("python")``; the CLI prints ``render("cli")``.
        """
        text = super().__str__()
        if style == "peer" and self.peer_message is not None:
            text = self.peer_message
        advice = self.hint.render(style) if self.hint is not None else None
        return text if advice is None else f"{text} {advice}"

    def __str__(self) -> str:
        return self.render("python")

    @property
    def peer_text(self) -> str:
        """The text for the peer's ``error`` message: never a path or figure of this machine,
        and what the receiver must do in the receiver's spellings."""
        return self.render("peer")

    def _render_traceback_(self) -> list[str]:
        """What IPython and Jupyter show for this error: its one line, not a traceback.

        An expected failure says what happened and what to do; the frames of api.py and
        handshake.py under it would only hide that. ``%tb`` or ``raise ... from`` in
        your own code still reach the traceback. Control characters (a peer's or relay's
        text may hold some) are shown escaped, never sent to the terminal.
        """
        text = "".join(c if c == "\n" or c.isprintable() else ascii(c)[1:-1] for c in str(self))
        return [f"{type(self).__name__}: {text}"]


class UsageError(P2PCopyError):
    """The arguments cannot work: a missing file, a bad URL, a bad option."""

    exit_code = 2
    wire_code = "usage"


class RelayUnreachableError(P2PCopyError):
    """No WebSocket connection to the relay could be opened."""

    exit_code = 3
    wire_code = "relay_unreachable"


class TransferTimeoutError(P2PCopyError):
    """Waited too long: for the peer to join, or for an answer that never came."""

    exit_code = 4
    wire_code = "timeout"


class CodeInUseError(P2PCopyError):
    """Another peer with the same role is already waiting with this code."""

    exit_code = 5
    wire_code = "code_in_use"


class PeerGoneError(P2PCopyError):
    """The other side disconnected or cancelled before the transfer finished."""

    exit_code = 6
    wire_code = "peer_gone"


class ConnectionLostError(P2PCopyError):
    """Our own connection to the relay broke part-way."""

    exit_code = 7
    wire_code = "connection_lost"


class ProtocolError(P2PCopyError):
    """A message broke the protocol: malformed, or in the wrong order."""

    exit_code = 8
    wire_code = "protocol"


class RemoteProtocolError(ProtocolError):
    """The peer (or the relay) sent something the protocol forbids."""


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol forbids: a bug in p2p-copy."""


class IntegrityError(P2PCopyError):
    """Received bytes do not match the sender's digest; nothing was kept."""

    exit_code = 9
    wire_code = "integrity"


class UnsafePathError(P2PCopyError):
    """A name in the manifest could escape or damage the destination folder."""

    exit_code = 10
    wire_code = "unsafe_path"


class DestinationExistsError(P2PCopyError):
    """A file to be received already exists and overwriting was not asked for."""

    exit_code = 11
    wire_code = "exists"


class DiskFullError(P2PCopyError):
    """The destination has not enough free space, or ran out of it while writing."""

    exit_code = 12
    wire_code = "disk_full"


class IncompatiblePeerError(P2PCopyError):
    """The peer speaks a protocol version (or mode) that we do not."""

    exit_code = 13
    wire_code = "incompatible"


class WrongCodeError(P2PCopyError):
    """The key exchange showed that the two sides do not use the same code."""

    exit_code = 14
    wire_code = "wrong_code"


class EncryptionMismatchError(P2PCopyError):
    """One side encrypts and the other does not (--no-encrypt on one side only)."""

    exit_code = 15
    wire_code = "encryption_mismatch"


class TamperingError(P2PCopyError):
    """An encrypted message failed authentication: altered, dropped, replayed or reordered."""

    exit_code = 16
    wire_code = "tampered"


class RelayLimitError(P2PCopyError):
    """The relay refused us because one of its limits was reached (rate, capacity, size)."""

    exit_code = 17
    wire_code = "relay_limit"


class AccessDeniedError(P2PCopyError):
    """The relay is private: it wants an access token we did not give, or not this one."""

    exit_code = 18
    wire_code = "access_denied"


class PolicyError(P2PCopyError):
    """What the sender offers exceeds a limit the receiver set (files, bytes, depth)."""

    exit_code = 19
    wire_code = "policy"


class TransferCancelledError(P2PCopyError):
    """The transfer was cancelled on this side (Ctrl-C, a Cancel button, task cancellation).

    Not asyncio.CancelledError (a BaseException that asks a task to stop): this one
    reports, like every P2PCopyError, how a transfer ended.
    """

    exit_code = 130
    wire_code = "cancelled"


#: The name this class had up to 0.6, kept so that code catching it keeps working; it
#: shadowed asyncio.CancelledError in ``from p2p_copy import *``.
CancelledError = TransferCancelledError


def exit_codes() -> dict[int, type[P2PCopyError]]:
    """Each exit code and the class of this module that sets it, in order of the code.

    The one table of exit codes: the CLI's --help lists it, README.md's table is checked
    against it (tests/test_rules_once.py). Subclasses that inherit a code are left out.
    """
    classes = (value for value in globals().values()
               if isinstance(value, type) and issubclass(value, P2PCopyError))
    own = {cls.exit_code: cls for cls in classes if "exit_code" in vars(cls)}
    return dict(sorted(own.items()))


_BY_WIRE_CODE: dict[str, type[P2PCopyError]] = {
    cls.wire_code: cls
    for cls in (
        P2PCopyError,
        UsageError,
        TransferTimeoutError,
        PeerGoneError,
        ProtocolError,
        IntegrityError,
        UnsafePathError,
        DestinationExistsError,
        DiskFullError,
        IncompatiblePeerError,
        WrongCodeError,
        EncryptionMismatchError,
        TamperingError,
        PolicyError,
    )
}


def error_for_wire_code(wire_code: str, message: str) -> P2PCopyError:
    """The exception to raise when the peer reports ``wire_code`` in an ``error`` message.

    A peer that cancelled means, for us, that the peer is gone; a code we do not
    know still becomes a P2PCopyError rather than being ignored.
    """
    error: P2PCopyError
    if wire_code in (CancelledError.wire_code, UsageError.wire_code):
        # The peer stopped for its own reasons (Ctrl-C, a source file that changed):
        # for us the peer is gone, not our arguments wrong.
        error = PeerGoneError(message)
    elif wire_code == ProtocolError.wire_code:
        error = RemoteProtocolError(message)
    else:
        error = _BY_WIRE_CODE.get(wire_code, P2PCopyError)(message)
    error.from_peer = True
    return error
