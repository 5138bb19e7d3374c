"""What a receiver is willing to accept, checked against the whole manifest before ``accept``.

paths.py holds the rules every receiver applies (no ``..``, no control characters, no
collisions). This module adds the limits a user may tighten (how many files, how many
bytes, how deep) and the names that this system cannot store. Nothing here touches the
disk: the manifest is judged on what it says, before any byte is written.

Two kinds of refusal, two exit codes:

- PolicyError (exit 19): the offer is well formed but bigger than the receiver allows, or
  it holds hidden top-level entries nobody agreed to; the message names the limit and the
  option that raises it.
- UnsafePathError (exit 10): a name is unsafe or impossible here (too long, reserved by
  Windows); no option makes it safe, the sender has to rename it.
"""

from __future__ import annotations

import os
import re
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Final

from ..errors import Hint, PolicyError, UnsafePathError, UsageError
from .messages import DirEntry, Entry, FileEntry, StreamEntry
from .paths import MAX_COMPONENT_BYTES, check_entries, display_name, fold

__all__ = [
    "ReceivePolicy",
    "ManifestLimits",
    "OfferSummary",
    "check_policy",
    "summarize_offer",
    "check_offer",
    "shown_names",
    "windows_name_problem",
]

#: Path components a receiver accepts by default: far beyond real trees, short of a
#: tree built to exhaust the file system's or the tools' recursion.
DEFAULT_MAX_DEPTH: Final = 64
DEFAULT_MAX_ENTRIES: Final = 1_000_000
#: Bytes of UTF-8 in one whole relative path (Linux's PATH_MAX).
DEFAULT_MAX_PATH_BYTES: Final = 4096

# Device names Windows opens instead of a file, whatever the extension ("NUL.txt" too).
# COM0/LPT0 and the superscript digits are listed by Microsoft's naming rules as well.
_WINDOWS_DEVICES: Final = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{port}{n}" for port in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"}
)
_WINDOWS_CHARS = re.compile(r'[<>:"|?*]')
# A short (8.3) name: at most 8 characters ending in "~" and digits, at most 3 after one
# dot. Where a volume makes short names, one can name another file's long name (".git"
# is "GIT~1"), so that a path could reach a folder no entry names: git refuses "git~1"
# for this (core.protectNTFS); we refuse every name of that form.
_SHORT_NAME = re.compile(r"[^.~]{1,7}~[0-9]{1,7}(?:\.[^.]{0,3})?")
# Path separators a compatibility character becomes in NFKC ("／", "＼").
_SEPARATORS = re.compile(r"[/\\]")
# On Windows there is no way round; elsewhere the check was asked for and can be dropped.
_WINDOWS_HOW_TO: Final = None if os.name == "nt" else Hint(
    "windows_names", "turn off Windows name checks with {} to accept it")
# The ReceivePolicy fields that are switches, not limits.
_SWITCHES: Final = frozenset({"windows_names", "fold_names", "allow_hidden"})
# Names shown in a one-line message before "and N more".
_SHOWN_NAMES: Final = 10
# Longest name shown in a message: enough to recognise it, short enough to read.
_SHOWN_CHARS: Final = 120


@dataclass(frozen=True)
class ReceivePolicy:
    """Limits on what a receiver accepts; the defaults accept any sane transfer.

    ``max_files`` and ``max_bytes`` (None: no limit) count file entries (a stream is one)
    and the sum of their announced sizes. ``max_depth`` counts path components ("a/b/c" is 3),
    ``max_entries`` files and folders together. ``max_name_bytes`` and ``max_path_bytes``
    are UTF-8 bytes of one component and of a whole relative path; names are never
    allowed beyond 255 bytes, the limit of every common file system.

    ``windows_names`` refuses names Windows cannot store: device names (CON, NUL.txt,
    com1, ...), the characters <>:"|?*, names ending in a dot or a space, names of 8.3
    short-name form (GIT~1) and names whose NFKC form breaks one of these rules (ＣＯＮ,
    ..／x: see windows_name_problem). It is on by
    default on Windows, where such a name would open a device, write into another
    file's data stream or be silently trimmed into another file's name; there it stays on
    even when turned off. Elsewhere they are ordinary names (a Linux tree may well hold
    ``aux.c``), so refusing them by default would refuse honest transfers; turn it on to
    receive onto a disk or share that a Windows machine will read.

    ``fold_names`` refuses a received name that differs from a name already in the
    destination folder only in case or Unicode form (``README`` where ``readme`` is,
    ``café`` composed where it is decomposed): on a file system that folds names the two
    are one file, so a receive onto a disk that such a system will read, or into a
    case-folding folder the receiver cannot tell apart, would mix them up. On by default on
    macOS and Windows, whose usual file systems fold names; there the file system finds the
    existing file itself and the usual rules apply (refused, replaced with ``overwrite``).
    Two names in one offer that differ only so are refused everywhere (paths.check_entries).

    ``allow_hidden``: accept hidden entries at the top level (``.ssh/``, ``.bashrc``) when
    nobody is asked about the offer (scripts, the Python API, a notebook). Received into a
    home folder such names change what programs do there, so they are refused unless
    allowed. Hidden names inside a sent folder (``project/.git/``) are always accepted.
    """

    max_files: int | None = None
    max_bytes: int | None = None
    max_depth: int = DEFAULT_MAX_DEPTH
    max_entries: int = DEFAULT_MAX_ENTRIES
    max_name_bytes: int = MAX_COMPONENT_BYTES
    max_path_bytes: int = DEFAULT_MAX_PATH_BYTES
    windows_names: bool = os.name == "nt"
    fold_names: bool = sys.platform in ("darwin", "win32")
    allow_hidden: bool = False

    def __post_init__(self) -> None:
        lowest = {"max_depth": 1, "max_name_bytes": 1, "max_path_bytes": 1}
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name in _SWITCHES:
                if not isinstance(value, bool):
                    raise UsageError(f"ReceivePolicy({field.name}=...) must be True or False.")
                continue
            if value is None and field.name in ("max_files", "max_bytes"):
                continue
            low = lowest.get(field.name, 0)
            # bool is an int in Python; True files is a bug in the caller, not a limit.
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UsageError(
                    f"ReceivePolicy({field.name}=...) must be a whole number of at least "
                    f"{low}, not {value!r}."
                )
        if self.max_name_bytes > MAX_COMPONENT_BYTES:
            raise UsageError(
                f"ReceivePolicy(max_name_bytes=...) cannot exceed {MAX_COMPONENT_BYTES}: "
                "no common file system stores longer names."
            )


def _shown(name: str) -> str:
    """``name`` quoted for a message: escaped, and cut if it is long."""
    cut = name if len(name) <= _SHOWN_CHARS else name[:_SHOWN_CHARS] + "..."
    return f"'{display_name(cut)}'"


def windows_name_problem(name: str) -> str | None:
    """Why Windows cannot store the path component ``name`` safely, or None if it can.

    The rules are applied to the name and to its NFKC form. NTFS itself stores "ＣＯＮ"
    (fullwidth letters) as an ordinary name, but a program that uses Windows' ANSI
    functions gets names converted to its code page with "best fit", which turns
    fullwidth forms into ASCII in many code pages (1252 among them): "ＣＯＮ" opens the
    console, "..／x" climbs out of its folder. NFKC maps every fullwidth form to ASCII.
    Only fullwidth "<>:"|?*" stay allowed: they are common in CJK names, and what best
    fit makes of them is a name such a program cannot open, not another file.
    """
    problem = _windows_problem(name, name)
    if problem or name.isascii():
        return problem
    folded = unicodedata.normalize("NFKC", name)
    if folded == name:
        return None
    if _SEPARATORS.search(folded):
        return (f"reads as {display_name(folded)!r} to Windows programs that convert names "
                "to their code page: a path with a separator")
    problem = _windows_problem(folded, name)
    return problem and (f"reads as {display_name(folded)!r} to Windows programs that "
                        f"convert names to their code page; that name {problem}")


def _windows_problem(name: str, given: str) -> str | None:
    if name.endswith((".", " ")):
        return "ends in a dot or a space, which Windows drops (it would become another name)"
    # Only in the name as given: see windows_name_problem().
    found = _WINDOWS_CHARS.search(given)
    if found:
        return f"holds {found.group()!r}, a character Windows does not allow in names"
    # Windows ignores the extension and trailing spaces when it looks for a device name.
    if name.partition(".")[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        return "is a device name on Windows (CON, PRN, AUX, NUL, COM1-9, LPT1-9)"
    if len(name.partition(".")[0]) <= 8 and _SHORT_NAME.fullmatch(name):
        return ("has the form of a Windows short (8.3) name, which can stand for another "
                "file's long name (GIT~1 is .git)")
    return None


def _raise(option: str) -> Hint:
    """How to raise the limit ``option`` (a ReceivePolicy field) to accept an offer."""
    return Hint(option, "raise the limit with {} to accept it")


def _too_many(what: str, offered: int, limit: int, option: str, *, more: bool) -> PolicyError:
    at_least = "at least " if more else ""
    return PolicyError(
        f"The sender offers {at_least}{offered:,} {what}, more than this receiver accepts "
        f"({limit:,}).",
        hint=_raise(option),
    )


class ManifestLimits:
    """The limits of ``policy`` that can be judged entry by entry (entries, files, bytes,
    depth), kept over a manifest that arrives in parts.

    ``add`` each part as it arrives: the part that crosses a limit is refused before the
    next is read, so that a receiver never holds much more of a manifest than its limits
    allow (issue 17: 39 -> 427 MiB with --max-files 1). A stream counts as a file.
    """

    def __init__(self, policy: ReceivePolicy) -> None:
        self.policy = policy
        self.entries = 0
        self.files = 0
        self.bytes = 0

    def add(self, entries: Sequence[Entry], *, more: bool = False) -> None:
        """Count ``entries``; PolicyError if the manifest so far breaks a limit. ``more``:
        other parts follow (the message then says "at least")."""
        policy = self.policy
        self.entries += len(entries)
        if self.entries > policy.max_entries:
            raise _too_many("files and folders", self.entries, policy.max_entries,
                            "max_entries", more=more)
        sizes = [e.size for e in entries if isinstance(e, FileEntry)]
        self.files += len(sizes) + sum(isinstance(e, StreamEntry) for e in entries)
        if policy.max_files is not None and self.files > policy.max_files:
            raise _too_many("files", self.files, policy.max_files, "max_files", more=more)
        self.bytes += sum(sizes)
        if policy.max_bytes is not None and self.bytes > policy.max_bytes:
            raise _too_many("bytes", self.bytes, policy.max_bytes, "max_bytes", more=more)
        # The components of a path are counted by its slashes: names are checked later,
        # once the whole manifest is there (check_policy).
        for entry in entries:
            depth = entry.path.count("/") + 1
            if depth > policy.max_depth:
                raise PolicyError(
                    f"The sender offers {_shown(entry.path)}, {depth} levels deep; this "
                    f"receiver accepts at most {policy.max_depth}.",
                    hint=_raise("max_depth"),
                )


def check_policy(entries: Sequence[Entry], policy: ReceivePolicy,
                 limits: ManifestLimits | None = None) -> None:
    """Refuse the manifest ``entries`` if it breaks a path rule or one of ``policy``'s limits.

    Includes paths.check_entries, so a receiver needs only this call. Counts come first:
    a huge offer is refused before any of its names is parsed. ``limits``: the counts
    already kept while the parts arrived (ManifestLimits.add), not counted again. Linear
    in the manifest's total length.
    """
    if limits is None:
        ManifestLimits(policy).add(entries)
    all_parts = check_entries(entries)
    checked: set[str] = set()  # folders whose names passed: most entries share a few
    for entry, parts in zip(entries, all_parts, strict=True):
        folder, _, _ = entry.path.rpartition("/")
        names = parts[-1:] if folder in checked else parts
        checked.add(folder)
        _check_names(entry.path, parts, names, policy)


def _check_names(
    path: str, parts: tuple[str, ...], names: tuple[str, ...], policy: ReceivePolicy
) -> None:
    # A code point is at most 4 bytes of UTF-8: most names need no encoding to pass.
    path_bytes = len(path.encode()) if len(path) * 4 > policy.max_path_bytes else 0
    if path_bytes > policy.max_path_bytes:
        raise UnsafePathError(
            f"The sender offers a path of {path_bytes:,} bytes, {_shown(path)}; this receiver "
            f"accepts at most {policy.max_path_bytes:,}. Ask the sender to shorten it.",
            # The peer reading this is that sender: what to do is said to it.
            peer_message=f"The receiver accepts paths of at most {policy.max_path_bytes:,} "
            f"bytes; {_shown(path)} has {path_bytes:,}: shorten it.",
            hint=_raise("max_path_bytes"),
        )
    for part in names:
        name_bytes = len(part.encode()) if len(part) * 4 > policy.max_name_bytes else 0
        if name_bytes > policy.max_name_bytes:
            raise UnsafePathError(
                f"The sender offers a name of {name_bytes} bytes, {_shown(part)} in "
                f"{_shown(path)}; names here may have at most {policy.max_name_bytes}. "
                "Ask the sender to rename it.",
                peer_message=f"The receiver accepts names of at most {policy.max_name_bytes} "
                f"bytes; {_shown(part)} in {_shown(path)} has {name_bytes}: rename it.",
                # No file system stores longer names than the default: only a lowered
                # limit can be raised.
                hint=_raise("max_name_bytes")
                if policy.max_name_bytes < MAX_COMPONENT_BYTES else None,
            )
        # On Windows such a name opens a device, or a stream of another (maybe existing)
        # file ("a.txt:x"), whatever the caller asked: the switch only matters elsewhere.
        if policy.windows_names or os.name == "nt":
            problem = windows_name_problem(part)
            if problem:
                raise UnsafePathError(
                    f"The sender offers {_shown(path)}, whose name {_shown(part)} {problem}. "
                    "Ask the sender to rename it.",
                    peer_message=f"{_shown(path)} cannot be stored on the receiver's side: "
                    f"its name {_shown(part)} {problem}. Rename it.",
                    hint=_WINDOWS_HOW_TO,
                )


# --- the offer, as the person receiving it judges it ----------------------------------


@dataclass(frozen=True)
class OfferSummary:
    """What a manifest offers, summed up for the person who decides whether to take it.

    Names are as sent (escape them with paths.display_name before showing them); a folder's
    name ends in ``/``. ``top_level`` lists the names that appear in the destination,
    ``hidden`` those of them that start with a dot. ``executables`` are the files with an
    execute bit, anywhere; ``git_hooks`` the files in a ``.git`` folder's ``hooks/`` and
    its ``config``, anywhere: git runs them (or what they name) in that folder, so a
    sent git checkout can run code. ``hidden_inside`` counts the other hidden entries
    deeper down (``project/.gitignore``): ordinary in a copied tree, only counted.
    ``total_bytes`` is the announced size of the files; a stream's size is unknown until
    it ends (``stream``).
    """

    top_level: tuple[str, ...]
    files: int
    folders: int
    total_bytes: int
    stream: bool
    hidden: tuple[str, ...]
    executables: tuple[str, ...]
    git_hooks: tuple[str, ...]
    hidden_inside: int


def summarize_offer(entries: Sequence[Entry]) -> OfferSummary:
    """Sum up the manifest ``entries`` (already checked by check_policy) for the receiver.

    Linear in the number of entries; names are split, never touched on a disk.
    """
    tops: dict[str, bool] = {}  # top-level name -> is a folder, in manifest order
    files = folders = total = hidden_inside = 0
    stream = False
    executables: list[str] = []
    git_hooks: list[str] = []
    for entry in entries:
        parts = entry.path.split("/")
        is_dir = isinstance(entry, DirEntry)
        tops[parts[0]] = tops.get(parts[0], False) or is_dir or len(parts) > 1
        if is_dir:
            folders += 1
        else:
            files += 1
            if isinstance(entry, FileEntry):
                total += entry.size
            else:
                stream = True
            if entry.mode & 0o111:
                executables.append(entry.path)
        hidden_inside += any(_hidden(part) for part in parts[1:])
        if not is_dir and _in_git_hooks(parts):
            git_hooks.append(entry.path)
    shown = tuple(name + "/" if folder else name for name, folder in tops.items())
    return OfferSummary(
        top_level=shown, files=files, folders=folders, total_bytes=total, stream=stream,
        hidden=tuple(name for name in shown if _hidden(name)),
        executables=tuple(executables), git_hooks=tuple(git_hooks),
        hidden_inside=hidden_inside,
    )


def _in_git_hooks(parts: Sequence[str]) -> bool:
    """Whether ``parts`` is in ``.git/hooks`` or is ``.git/config``, at any depth.

    Case-folded: on a case-insensitive disk ``.GIT/HOOKS`` is the same folder to git.
    """
    for i, part in enumerate(parts[:-1]):
        if part.lower() == ".git":
            below = parts[i + 1].lower()
            if below == "hooks" or (below == "config" and i + 2 == len(parts)):
                return True
    return False


def shown_names(names: Sequence[str], limit: int = _SHOWN_NAMES) -> str:
    """``names`` quoted, escaped and joined for one line; past ``limit``, "and N more"."""
    text = ", ".join(_shown(name) for name in names[:limit])
    if len(names) > limit:
        text += f" and {len(names) - limit:,} more"
    return text


def _hidden(name: str) -> bool:
    """Whether ``name`` is hidden where it lands: judged on its folded form, so that a
    code point a file system ignores (HFS+ drops U+200C) cannot hide the leading dot."""
    return fold(name).startswith(".")


def check_offer(summary: OfferSummary, policy: ReceivePolicy) -> None:
    """Refuse an offer that nobody was asked about if it holds what ``policy`` does not allow.

    Only hidden top-level entries: the rest of an offer is judged by check_policy.
    """
    if summary.hidden and not policy.allow_hidden:
        noun = "entry" if len(summary.hidden) == 1 else "entries"
        raise PolicyError(
            f"The sender offers hidden {noun} at the top level, {shown_names(summary.hidden)}, "
            "which could change how programs here behave; nothing was written.",
            hint=Hint("allow_hidden",
                      "receive on a terminal and answer yes, or pass {}, to accept them"),
        )
