"""p2p-copy: copy files and folders between two machines through a relay, paired by a code.

    result = await p2p_copy.send("wss://relay.example.org", None, ["data/"])  # shows a code
    result = await p2p_copy.receive("wss://relay.example.org", "7-crossover-clockwork-puma")

Both are coroutines for the caller's running loop (a Jupyter kernel's, or asyncio.run).
"""

from ._version import __version__
from .api import receive, send
from .blocking import receive_blocking, send_blocking
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
