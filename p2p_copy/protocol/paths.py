"""Rules for names that arrive from the network, applied before any byte reaches the disk.

A manifest comes from a peer we do not trust. Every path in it must be a plain relative
POSIX path that stays inside the destination, contains nothing a terminal would
interpret, and differs from every other path even on case-insensitive file systems.
These rules hold on every system and for every receiver; the limits a receiver may tune
(counts, sizes, depth, Windows names) live in policy.py. The receiver's file layer adds
the checks that need the file system (symlinks, existing files); this module needs none.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from ..errors import UnsafePathError
from .messages import DirEntry, Entry

__all__ = ["split_safe_path", "check_entries", "display_name", "fold"]

MAX_PATH_CHARS: Final = 4096
MAX_COMPONENT_BYTES: Final = 255
# Shown escaped: controls, lone surrogates, invisible format characters (bidi overrides
# such as U+202E that make "txt.exe" look like "exe.txt", zero-width spaces and joiners
# that make two different names look alike) and the line and paragraph separators.
_HIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cs", "Cf", "Zl", "Zp"})
# Code points HFS+ ignores when it compares names (the list git uses against ".g\u200cit"):
# two names that differ only by them are one file there.
_IGNORED_BY_HFS = re.compile("[\u200c-\u200f\u202a-\u202e\u206a-\u206f\ufeff]")


def display_name(name: str) -> str:
    """``name`` with control, invisible-format and separator characters escaped, safe to print.

    What is left can neither drive a terminal (escape sequences) nor hide or reorder
    characters (bidi overrides, zero-width characters); every other character is kept.
    """
    if name.isprintable():  # fast path: isprintable() is False for every category escaped
        return name
    return "".join(_escape(c) if unicodedata.category(c) in _HIDDEN_CATEGORIES else c
                   for c in name)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


@dataclass(frozen=True)
class _Rule:
    """One rule for a path: where ``pattern`` matches, the path may break it."""

    pattern: str
    #: What the sender sent, for the error message ("The sender sent <what>: 'name'").
    what: str
    #: Whether the matched text does break the rule (most patterns say it themselves).
    breaks: Callable[[str], bool] = lambda matched: True


def _too_long(component: str) -> bool:
    return len(component.encode()) > MAX_COMPONENT_BYTES


# Every rule a non-empty path of at most MAX_PATH_CHARS characters must pass, each written
# once: split_safe_path() screens a path with all of them in one search and goes rule by
# rule (for the message) only on a hit. Patterns are searched in the whole path.
_RULES: Final = (
    # C0 controls, DEL and C1 controls: a name holding one could rewrite the user's terminal.
    _Rule("[\x00-\x1f\x7f-\x9f]", "a name with control characters"),
    # Lone surrogates are not characters: they cannot be encoded as UTF-8 file names.
    _Rule("[\ud800-\udfff]", "a name that is not valid Unicode"),
    _Rule(r"\\", "a name with a backslash"),
    _Rule("^/", "an absolute path"),
    _Rule("^[A-Za-z]:", "a path with a drive letter"),
    _Rule(r"(?:^|/)\.{0,2}(?:/|$)", "a path with an empty, '.' or '..' component"),
    # The names the receiver gives its partial data and resume sidecars (destination.py):
    # an entry named like one could be overwritten by, or overwrite, another's partial file.
    _Rule(r"(?i:\.p2p-copy-(part|resume)(\.new)?(/|$))",
          "a name that p2p-copy keeps for its own partial files"),
    # A component that may exceed 255 bytes (a code point is at most 4 bytes of UTF-8).
    _Rule(f"[^/]{{{MAX_COMPONENT_BYTES // 4 + 1},}}", "a name longer than 255 bytes",
          _too_long),
)
_COMPILED: Final = tuple((re.compile(rule.pattern), rule) for rule in _RULES)
# All of them at once: most names match none and need no rule-by-rule look.
_SUSPECT: Final = re.compile("|".join(rule.pattern for rule in _RULES))


def split_safe_paths(paths: Sequence[str]) -> list[tuple[str, ...]]:
    """split_safe_path() of each path: the error is the one for the first bad name."""
    return [split_safe_path(path) for path in paths]


def split_safe_path(path: str) -> tuple[str, ...]:
    """The components of a manifest path, or UnsafePathError if it is not a safe relative path."""
    if path and len(path) <= MAX_PATH_CHARS and not _SUSPECT.search(path):
        return tuple(path.split("/"))
    return _split_checked(path)


def _split_checked(path: str) -> tuple[str, ...]:
    """split_safe_path() rule by rule, for the error message (and tests of the screen)."""
    shown = display_name(path[:200]) + ("..." if len(path) > 200 else "")
    if not path:
        raise UnsafePathError("The sender sent an empty file name.")
    if len(path) > MAX_PATH_CHARS:
        raise UnsafePathError(f"The sender sent a path longer than {MAX_PATH_CHARS} characters.")
    for pattern, rule in _COMPILED:
        if any(rule.breaks(match.group()) for match in pattern.finditer(path)):
            raise UnsafePathError(f"The sender sent {rule.what}: {shown!r}")
    return tuple(path.split("/"))


def fold(path: str) -> str:
    """The key under which a case-insensitive, normalising file system stores ``path``.

    Two names that such a file system (macOS, Windows) would store as one must not both
    arrive: one would overwrite the other. Decompose first: casefold() of some composed
    letters (Greek with two accents) differs from casefold() of their decomposed form, and
    NFC alone would miss the collision. Code points HFS+ ignores are dropped. Folding keeps
    every ``/`` and makes none, so the key's components are the components' keys.
    """
    if path.isascii():  # nothing to decompose or ignore, and casefold() is lower() there
        return path.lower()
    decomposed = unicodedata.normalize("NFD", _IGNORED_BY_HFS.sub("", path))
    return unicodedata.normalize("NFC", decomposed.casefold())


def check_entries(entries: Iterable[Entry]) -> list[tuple[str, ...]]:
    """Check every path and that no two entries collide; raise UnsafePathError otherwise.

    Returns each entry's components, in order, for callers that check more (policy.py).
    Linear in the manifest's total length, however deep its paths: folders are nodes of
    a tree keyed by (parent node, folded name), never strings of every prefix.
    """
    entries = list(entries)
    all_parts = split_safe_paths([entry.path for entry in entries])
    nodes: dict[tuple[int, str], int] = {}  # (parent node, folded name) -> node; root is 0
    folders: dict[str, int] = {"": 0}  # a parent path as sent -> its node (most share one)
    names: dict[int, str] = {}  # node of an entry -> the entry's path as sent
    files: set[int] = set()
    parents: set[int] = {0}
    for entry in entries:
        folder, _, name = entry.path.rpartition("/")
        parent = folders.get(folder)
        if parent is None:
            parent = 0
            for key in fold(folder).split("/"):
                parent = nodes.setdefault((parent, key), len(nodes) + 1)
                parents.add(parent)
            folders[folder] = parent
        node = nodes.setdefault((parent, fold(name)), len(nodes) + 1)
        if node in names:
            raise UnsafePathError(
                f"The sender sent two names that would be the same file here: "
                f"{display_name(names[node])!r} and {display_name(entry.path)!r}"
            )
        names[node] = entry.path
        if not isinstance(entry, DirEntry):
            files.add(node)
    clash = files & parents
    if clash:
        name = names[min(clash)]
        raise UnsafePathError(
            f"The sender sent {display_name(name)!r} both as a file and as a folder."
        )
    return all_parts
