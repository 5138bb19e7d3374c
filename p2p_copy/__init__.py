"""p2p-copy: copy files and folders between two machines through a relay, paired by a code.

    result = await p2p_copy.send("wss://relay.example.org", None, ["data/"])  # shows a code
    result = await p2p_copy.receive("wss://relay.example.org", "7-crossover-clockwork-puma")

Both are coroutines for the caller's running loop (a Jupyter kernel's, or asyncio.run).
``send_object``/``receive_object`` move an array, a DataFrame, a text... between two
kernels without a file and without pickle; ``send_stream``/``receive_stream`` move a pipe.
In a notebook, ``drop(dest)`` takes files dropped on a panel from the browser's computer
into the kernel, and ``offer(paths)`` saves files from the kernel to that computer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    AccessDeniedError,
    CancelledError,
    CodeInUseError,
    ConnectionLostError,
    DestinationExistsError,
    DiskFullError,
    EncryptionMismatchError,
    IncompatiblePeerError,
    IntegrityError,
    LocalProtocolError,
    P2PCopyError,
    PeerGoneError,
    PolicyError,
    ProtocolError,
    RelayLimitError,
    RelayUnreachableError,
    RemoteProtocolError,
    TamperingError,
    TransferCancelledError,
    TransferTimeoutError,
    UnsafePathError,
    UsageError,
    WrongCodeError,
)
from .protocol.codes import generate_code
from .protocol.policy import ReceivePolicy
from .results import FileResult, TransferResult

# The transfer, relay and notebook layers import websockets, cryptography and more:
# they load on first use, so that `p2p-copy --help` and `import p2p_copy` stay quick.
_LAZY = {
    **dict.fromkeys(
        ("send", "receive", "send_object", "receive_object", "send_stream", "receive_stream",
         "send_text", "receive_text", "DEFAULT_RECONNECT_TIMEOUT"), "peer.api"),
    **dict.fromkeys(
        ("send_blocking", "receive_blocking", "send_stream_blocking", "receive_stream_blocking",
         "send_text_blocking", "receive_text_blocking", "send_object_blocking",
         "receive_object_blocking"), "peer.blocking"),
    **dict.fromkeys(
        ("Transfer", "transfers", "start_send", "start_receive", "start_send_stream",
         "start_receive_stream",
         "start_send_text", "start_receive_text", "start_send_object", "start_receive_object"),
        "peer.background"),
    "Options": "peer.options",
    "discard_partial": "peer.partial",
    **dict.fromkeys(("Relay", "RelayConfig"), "relay.server"),
    **dict.fromkeys(("drop", "offer"), "jupyter.drop"),
}

if TYPE_CHECKING:
    from .jupyter.drop import drop, offer
    from .peer.api import (
        DEFAULT_RECONNECT_TIMEOUT,
        receive,
        receive_object,
        receive_stream,
        receive_text,
        send,
        send_object,
        send_stream,
        send_text,
    )
    from .peer.background import (
        Transfer,
        start_receive,
        start_receive_object,
        start_receive_stream,
        start_receive_text,
        start_send,
        start_send_object,
        start_send_stream,
        start_send_text,
        transfers,
    )
    from .peer.blocking import (
        receive_blocking,
        receive_object_blocking,
        receive_stream_blocking,
        receive_text_blocking,
        send_blocking,
        send_object_blocking,
        send_stream_blocking,
        send_text_blocking,
    )
    from .peer.options import Options
    from .peer.partial import discard_partial
    from .relay.server import Relay, RelayConfig


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'p2p_copy' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # found once, then a plain attribute
    return value


def __dir__() -> list[str]:
    # The public names only: tab completion must not offer the helpers this module
    # imports for itself (Any, TYPE_CHECKING, annotations).
    return sorted(__all__)


__all__ = [
    "__version__",
    "DEFAULT_RECONNECT_TIMEOUT",
    "Options",
    "send",
    "receive",
    "send_stream",
    "receive_stream",
    "send_text",
    "receive_text",
    "send_object",
    "receive_object",
    "send_blocking",
    "receive_blocking",
    "send_stream_blocking",
    "receive_stream_blocking",
    "send_text_blocking",
    "receive_text_blocking",
    "send_object_blocking",
    "receive_object_blocking",
    "Transfer",
    "transfers",
    "discard_partial",
    "start_send",
    "start_receive",
    "start_send_stream",
    "start_receive_stream",
    "start_send_text",
    "start_receive_text",
    "start_send_object",
    "start_receive_object",
    "drop",
    "offer",
    "generate_code",
    "ReceivePolicy",
    "Relay",
    "RelayConfig",
    "TransferResult",
    "FileResult",
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
]
