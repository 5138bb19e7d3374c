"""The public surface, pinned: what users import and run must survive any reshaping inside.

docs/architecture.md says where things live; these names are the promise to users
(README.md, the notebooks, server/), so a move that breaks one fails here first.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import subprocess
import sys

import pytest

import p2p_copy

#: p2p_copy.__all__ as released; a new public name is added here on purpose.
PUBLIC = [
    "__version__", "DEFAULT_RECONNECT_TIMEOUT", "Options",
    "send", "receive", "send_stream", "receive_stream", "send_text", "receive_text",
    "send_object", "receive_object",
    "send_blocking", "receive_blocking", "send_stream_blocking", "receive_stream_blocking",
    "send_text_blocking", "receive_text_blocking", "send_object_blocking",
    "receive_object_blocking",
    "Transfer", "transfers", "discard_partial",
    "start_send", "start_receive", "start_send_stream", "start_receive_stream",
    "start_send_text", "start_receive_text", "start_send_object", "start_receive_object",
    "drop", "offer",
    "generate_code", "ReceivePolicy", "Relay", "RelayConfig", "TransferResult", "FileResult",
    "P2PCopyError", "UsageError", "RelayUnreachableError", "TransferTimeoutError",
    "CodeInUseError", "PeerGoneError", "ConnectionLostError", "ProtocolError",
    "RemoteProtocolError", "LocalProtocolError", "IntegrityError", "UnsafePathError",
    "DestinationExistsError", "DiskFullError", "IncompatiblePeerError", "WrongCodeError",
    "EncryptionMismatchError", "TamperingError", "RelayLimitError", "AccessDeniedError",
    "PolicyError", "TransferCancelledError", "CancelledError",
]


def test_all_is_the_released_surface() -> None:
    """``p2p_copy.__all__`` lists exactly the public names, each of which resolves."""
    assert sorted(p2p_copy.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(p2p_copy, name) is not None, name


def test_importing_the_package_stays_light() -> None:
    """``import p2p_copy`` loads neither websockets nor asyncio's transports: the transfer,
    relay and notebook layers load on first use of one of their names."""
    code = ("import sys, p2p_copy; "
            "print(sorted({'websockets', 'p2p_copy.peer.api', 'ipywidgets'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_every_error_is_one_tree_with_an_exit_code() -> None:
    """Every public exception derives from P2PCopyError and has its own documented exit code."""
    errors = [getattr(p2p_copy, n) for n in PUBLIC if n.endswith("Error")]
    assert all(issubclass(e, p2p_copy.P2PCopyError) for e in errors)
    assert all(isinstance(e.exit_code, int) for e in errors)


@pytest.mark.parametrize("module, names", [
    ("p2p_copy.relay", ["Relay", "RelayConfig", "run_relay"]),
    ("p2p_copy.testing", ["running_relay", "TEST_CONFIG"]),
    ("p2p_copy.cli", ["main", "console_main"]),
])
def test_documented_modules_keep_their_names(module: str, names: list[str]) -> None:
    """Modules that README.md, server/ and the notebooks name keep what they offer."""
    imported = importlib.import_module(module)
    for name in names:
        assert callable(getattr(imported, name)) or getattr(imported, name) is not None, name


def test_the_console_script_and_python_m_run_the_cli() -> None:
    """The installed ``p2p-copy`` script points at p2p_copy.cli:console_main, and
    ``python -m p2p_copy`` runs the same command."""
    scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("p2p-copy") == "p2p_copy.cli:console_main"
    out = subprocess.run([sys.executable, "-m", "p2p_copy", "--version"], capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == f"p2p-copy {p2p_copy.__version__}"


def test_relay_logger_names_are_stable() -> None:
    """Operators filter on these logger names (server/README.md)."""
    from p2p_copy.relay import server

    assert server.log.name == "p2p_copy.relay"
    assert logging.getLogger("p2p_copy.relay.websockets").parent is logging.getLogger(
        "p2p_copy.relay")
