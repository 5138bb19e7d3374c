"""From the code two people share to what the relay is allowed to see of it.

The relay sees the code's hash twice: in the ``hello`` and as the last segment of the
URL path (``wss://relay.example.org/<code_hash_hex>``), so that a proxy in front of
several relay processes can send both peers of a room to the same one without reading
WebSocket messages. Both halves of that path rule live here: ``room_url`` for peers,
``room_from_path`` for the relay.
"""

from __future__ import annotations

import hashlib
import os
import re
from urllib.parse import urlsplit, urlunsplit

from .errors import UsageError

__all__ = ["CODE_ENV", "code_hash_hex", "code_from_env", "room_url", "room_from_path"]

#: Environment variable the CLI reads the code from when CODE is given as "-".
CODE_ENV = "P2P_COPY_CODE"

_ROOM = re.compile(r"[0-9a-f]{64}")


def code_hash_hex(code: str) -> str:
    """The hello's ``code_hash_hex``: SHA-256 of the UTF-8 code, as the seed's peers compute it."""
    if not code:
        raise UsageError("The code must not be empty.")
    return hashlib.sha256(code.encode("utf-8")).hexdigest()


def code_from_env() -> str:
    """The code from $P2P_COPY_CODE, so that it never shows in the process list."""
    code = os.environ.get(CODE_ENV, "")
    if not code:
        raise UsageError(f"CODE is '-', so the code is read from ${CODE_ENV}, which is not set.")
    return code


def room_url(server: str, room: str) -> str:
    """``server`` with ``room`` appended as one more path segment; the query is kept.

    ``wss://h`` and ``wss://h/`` give ``wss://h/ROOM``; ``wss://h/p2p?x=1`` gives
    ``wss://h/p2p/ROOM?x=1``, for a relay published under a path prefix.
    """
    parts = urlsplit(server)
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme, parts.netloc, path + room, parts.query, parts.fragment))


def room_from_path(path: str) -> str | None:
    """The room a request path names; None for ``/`` (p2p-copy 0.1.x peers name none).

    ``path`` may carry a query, which is ignored. Any other shape than ``/`` or
    ``.../<64 lowercase hex digits>`` raises ValueError saying what is expected.
    """
    path = path.partition("?")[0]
    if path == "/":
        return None
    room = path.rpartition("/")[2]
    if not path.startswith("/") or not _ROOM.fullmatch(room):
        raise ValueError("the path must be / or end in /<code_hash_hex> (64 lowercase hex digits)")
    return room
