"""From the code two people share to what the relay is allowed to see of it."""

from __future__ import annotations

import hashlib
import os

from .errors import UsageError

__all__ = ["CODE_ENV", "code_hash_hex", "code_from_env"]

#: Environment variable the CLI reads the code from when CODE is given as "-".
CODE_ENV = "P2P_COPY_CODE"


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
