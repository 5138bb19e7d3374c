"""Rules for names that arrive from the network, applied before any byte reaches the disk.

A manifest comes from a peer we do not trust. Every path in it must be a plain relative
POSIX path that stays inside the destination, contains nothing a terminal would
interpret, and differs from every other path even on case-insensitive file systems.
The receiver's file layer adds the checks that need the file system (symlinks, existing
files); this module needs none.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Final

from .errors import UnsafePathError
from .messages import DirEntry, Entry

__all__ = ["split_safe_path", "check_entries", "display_name"]

MAX_PATH_CHARS: Final = 4096
MAX_COMPONENT_BYTES: Final = 255
# C0 controls, DEL and C1 controls: a name holding one could rewrite the user's terminal.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# Lone surrogates are not characters: they cannot be encoded as UTF-8 file names.
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_DRIVE = re.compile(r"[A-Za-z]:")


def display_name(name: str) -> str:
    """``name`` with control characters (and lone surrogates) escaped, safe to print or log."""
    return _UNPRINTABLE.sub(_escape, name)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def split_safe_path(path: str) -> tuple[str, ...]:
    """The components of a manifest path, or UnsafePathError if it is not a safe relative path."""
    shown = display_name(path)
    if not path:
        raise UnsafePathError("The sender sent an empty file name.")
    if len(path) > MAX_PATH_CHARS:
        raise UnsafePathError(f"The sender sent a path longer than {MAX_PATH_CHARS} characters.")
    if _CONTROL.search(path):
        raise UnsafePathError(f"The sender sent a name with control characters: {shown!r}")
    if _SURROGATE.search(path):
        raise UnsafePathError(f"The sender sent a name that is not valid Unicode: {shown!r}")
    if "\\" in path:
        raise UnsafePathError(f"The sender sent a name with a backslash: {shown!r}")
    if path.startswith("/"):
        raise UnsafePathError(f"The sender sent an absolute path: {shown!r}")
    parts = tuple(path.split("/"))
    if _DRIVE.match(parts[0]):
        raise UnsafePathError(f"The sender sent a path with a drive letter: {shown!r}")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePathError(
                f"The sender sent a path with an empty, '.' or '..' component: {shown!r}"
            )
        if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES:
            raise UnsafePathError(f"The sender sent a name longer than 255 bytes: {shown!r}")
    return parts


def _fold(path: str) -> str:
    # Two names that a case-insensitive or normalising file system (macOS, Windows)
    # would store as one must not both arrive: one would overwrite the other.
    # Decompose first: casefold() of some composed letters (Greek with two accents) differs
    # from casefold() of their decomposed form, and NFC alone would miss the collision.
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", path).casefold())


def check_entries(entries: Iterable[Entry]) -> None:
    """Check every path and that no two entries collide; raise UnsafePathError otherwise."""
    seen: dict[str, str] = {}
    files: set[str] = set()
    parents: set[str] = set()
    for entry in entries:
        parts = split_safe_path(entry.path)
        key = _fold(entry.path)
        if key in seen:
            raise UnsafePathError(
                f"The sender sent two names that would be the same file here: "
                f"{display_name(seen[key])!r} and {display_name(entry.path)!r}"
            )
        seen[key] = entry.path
        if not isinstance(entry, DirEntry):
            files.add(key)
        parents.update(_fold("/".join(parts[:i])) for i in range(1, len(parts)))
    clash = files & parents
    if clash:
        name = seen[min(clash)]
        raise UnsafePathError(
            f"The sender sent {display_name(name)!r} both as a file and as a folder."
        )
