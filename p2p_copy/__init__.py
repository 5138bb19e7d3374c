"""p2p-copy: copy files and folders between two machines through a relay, paired by a code.

    result = await p2p_copy.send("wss://relay.example.org", None, ["data/"])  # shows a code
    result = await p2p_copy.receive("wss://relay.example.org", "7-crossover-clockwork-puma")

Both are coroutines for the caller's running loop (a Jupyter kernel's, or asyncio.run).
``send_object``/``receive_object`` move an array, a DataFrame, a text... between two
kernels without a file and without pickle; ``send_stream``/``receive_stream`` move a pipe.
"""

from ._version import __version__
from .api import (
    receive,
    receive_object,
    receive_stream,
    receive_text,
    send,
    send_object,
    send_stream,
    send_text,
)
from .blocking import (
    receive_blocking,
    receive_object_blocking,
    send_blocking,
    send_object_blocking,
)
from .codes import generate_code
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
    TransferTimeoutError,
    UnsafePathError,
    UsageError,
    WrongCodeError,
)
from .handles import Transfer, start_receive, start_send
from .policy import ReceivePolicy
from .relay import Relay, RelayConfig
from .results import FileResult, TransferResult

__all__ = [
    "__version__",
    "send",
    "receive",
    "start_send",
    "start_receive",
    "Transfer",
    "send_blocking",
    "receive_blocking",
    "send_text",
    "receive_text",
    "send_object",
    "receive_object",
    "send_object_blocking",
    "receive_object_blocking",
    "send_stream",
    "receive_stream",
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
    "CancelledError",
]
