"""The receiver's policy: each limit, each Windows rule, and messages safe to print."""

from __future__ import annotations

import os
import re
import sys
import unicodedata

import pytest

from p2p_copy.errors import PolicyError, UnsafePathError, UsageError
from p2p_copy.protocol.messages import DirEntry, Entry, FileEntry
from p2p_copy.protocol.policy import ReceivePolicy, check_policy, windows_name_problem

WINDOWS = ReceivePolicy(windows_names=True)
POSIX = ReceivePolicy(windows_names=False)


def _hidden(text: str) -> bool:
    """True if ``text`` holds a character a terminal would interpret or not show."""
    return any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in text)


def files(n: int, size: int = 1) -> list[Entry]:
    return [FileEntry(f"f{i}", size) for i in range(n)]


def deep(levels: int) -> str:
    return "/".join(f"d{i}" for i in range(levels))


# --- the policy itself ------------------------------------------------------------------


def test_defaults() -> None:
    """The defaults limit nothing an honest transfer needs; Windows rules follow the system."""
    policy = ReceivePolicy()
    assert (policy.max_files, policy.max_bytes) == (None, None)
    assert (policy.max_depth, policy.max_entries) == (64, 1_000_000)
    assert (policy.max_name_bytes, policy.max_path_bytes) == (255, 4096)
    assert policy.windows_names is (os.name == "nt")


def test_fold_names_is_on_where_the_usual_file_systems_fold_names() -> None:
    """fold_names defaults to on for macOS and Windows only, and is a switch."""
    assert ReceivePolicy().fold_names is (sys.platform in ("darwin", "win32"))
    with pytest.raises(UsageError, match="fold_names"):
        ReceivePolicy(fold_names=1)  # type: ignore[arg-type]


def test_the_cli_and_the_api_keep_the_systems_name_rules() -> None:
    """What the CLI builds from its flags and what the API uses without a policy leave
    windows_names and fold_names at the defaults above (on for Windows, and for macOS and
    Windows): neither has a flag, nothing turns them off on the way."""
    from p2p_copy.cli.commands import _policy, build_parser
    from p2p_copy.protocol.transfer import Receiver

    args = build_parser().parse_args(["receive", "ws://127.0.0.1:9", "1-some-code"])
    assert _policy(args) == ReceivePolicy()
    args = build_parser().parse_args(["receive", "ws://127.0.0.1:9", "1-some-code",
                                      "--max-files", "3", "--allow-hidden"])
    cli = _policy(args)
    assert (cli.windows_names, cli.fold_names) == (os.name == "nt", ReceivePolicy().fold_names)
    assert Receiver("ab" * 32).policy == ReceivePolicy()


def test_two_names_that_fold_together_are_refused_whatever_the_switches() -> None:
    """README and readme in one offer are refused even with fold_names and windows_names
    off: a receiver never knows which system will read the files later."""
    entries = [FileEntry("README", 1), FileEntry("readme", 1)]
    with pytest.raises(UnsafePathError, match="same file"):
        check_policy(entries, ReceivePolicy(fold_names=False, windows_names=False))


@pytest.mark.parametrize(
    "fields",
    [
        {"max_files": -1},
        {"max_bytes": -5},
        {"max_depth": 0},
        {"max_entries": -1},
        {"max_name_bytes": 0},
        {"max_name_bytes": 256},
        {"max_path_bytes": 0},
        {"max_files": True},
        {"max_bytes": 1.5},
        {"max_depth": None},
        {"windows_names": 1},
    ],
    ids=repr,
)
def test_impossible_limits_are_usage_errors(fields: dict[str, object]) -> None:
    """A negative, fractional, boolean or impossible limit is refused when the policy is made."""
    with pytest.raises(UsageError):
        ReceivePolicy(**fields)  # type: ignore[arg-type]


def test_policy_is_frozen() -> None:
    """A policy cannot be changed after it was checked."""
    policy = ReceivePolicy()
    with pytest.raises(AttributeError):
        policy.max_files = 3  # type: ignore[misc]


# --- counts -----------------------------------------------------------------------------


def test_max_entries_allows_the_limit_and_refuses_one_more() -> None:
    """Files and folders together count against max_entries."""
    entries: list[Entry] = [DirEntry("d"), *files(2)]
    check_policy(entries, ReceivePolicy(max_entries=3))
    with pytest.raises(PolicyError, match="3 files and folders.*--max-entries"):
        check_policy(entries, ReceivePolicy(max_entries=2))


def test_max_files_counts_files_only() -> None:
    """Folders do not count as files; one file too many is refused."""
    entries: list[Entry] = [DirEntry("a"), DirEntry("b"), *files(3)]
    check_policy(entries, ReceivePolicy(max_files=3))
    with pytest.raises(PolicyError) as info:
        check_policy(entries, ReceivePolicy(max_files=2))
    text = str(info.value)
    assert "3 files" in text and "(2)" in text
    assert "--max-files" in text and "ReceivePolicy(max_files=...)" in text


def test_max_files_zero_accepts_only_folders() -> None:
    """max_files=0 still lets empty folders arrive."""
    check_policy([DirEntry("a")], ReceivePolicy(max_files=0))
    with pytest.raises(PolicyError):
        check_policy(files(1), ReceivePolicy(max_files=0))


def test_max_bytes_sums_announced_sizes() -> None:
    """The announced sizes are summed; exactly the limit passes, one byte more does not."""
    entries = [FileEntry("a", 600), FileEntry("b", 400), FileEntry("c", 0)]
    check_policy(entries, ReceivePolicy(max_bytes=1000))
    with pytest.raises(PolicyError, match=r"1,000 bytes.*\(999\).*--max-bytes"):
        check_policy(entries, ReceivePolicy(max_bytes=999))


def test_max_bytes_counts_huge_announced_sizes_exactly() -> None:
    """A million files of 2**53 bytes each sum without overflow and are refused."""
    entries = [FileEntry(f"f{i}", 2**53) for i in range(1000)]
    with pytest.raises(PolicyError, match="9,007,199,254,740,992,000 bytes"):
        check_policy(entries, ReceivePolicy(max_bytes=2**60))


def test_counts_are_checked_before_names() -> None:
    """An offer over a count limit is refused as such, before its names are looked at."""
    with pytest.raises(PolicyError):
        check_policy([FileEntry("../evil", 1), *files(3)], ReceivePolicy(max_files=2))


def test_path_rules_still_apply() -> None:
    """check_policy includes every rule of paths.check_entries."""
    for entries in ([FileEntry("../x", 1)], [FileEntry("a", 1), FileEntry("A", 1)],
                    [FileEntry("a", 1), FileEntry("a/b", 1)]):
        with pytest.raises(UnsafePathError):
            check_policy(entries, POSIX)


# --- depth and lengths ------------------------------------------------------------------


def test_depth_64_passes_by_default() -> None:
    """A path of 64 components is within the default depth."""
    check_policy([FileEntry(deep(64), 1)], ReceivePolicy())


def test_depth_65_refused_by_default() -> None:
    """A path of 65 components is refused, naming the limit and the option."""
    with pytest.raises(PolicyError) as info:
        check_policy([FileEntry(deep(65), 1)], ReceivePolicy())
    text = str(info.value)
    assert "65 levels deep" in text and "at most 64" in text
    assert "--max-depth" in text and "ReceivePolicy(max_depth=...)" in text
    assert len(text) < 400  # the path is shown cut


def test_depth_65_fine_with_a_raised_limit() -> None:
    """Raising max_depth lets a deeper tree through."""
    check_policy([FileEntry(deep(65), 1), DirEntry(f"x/{deep(99)}")], ReceivePolicy(max_depth=100))


def test_depth_counts_folders_too() -> None:
    """A deep folder entry is refused like a deep file."""
    with pytest.raises(PolicyError):
        check_policy([DirEntry("a/b/c")], ReceivePolicy(max_depth=2))


def test_tightened_name_length_counts_utf8_bytes() -> None:
    """max_name_bytes counts bytes, not characters, in every component."""
    policy = ReceivePolicy(max_name_bytes=10)
    check_policy([FileEntry("éééé/0123456789", 1)], policy)  # 8 and 10 bytes
    with pytest.raises(UnsafePathError, match="11 bytes.*max_name_bytes"):
        check_policy([FileEntry("ok/ééééé.", 1)], policy)


def test_path_bytes_default_refuses_long_multibyte_paths() -> None:
    """Within the protocol's 4096 characters, a path may still exceed 4096 bytes."""
    path = "/".join(["é" * 100] * 30)  # 3029 characters, 6029 bytes
    with pytest.raises(UnsafePathError, match="6,029 bytes.*max_path_bytes"):
        check_policy([FileEntry(path, 1)], POSIX)
    check_policy([FileEntry(path, 1)], ReceivePolicy(max_path_bytes=6029))


def test_tightened_path_length() -> None:
    """max_path_bytes can be tightened below the default."""
    with pytest.raises(UnsafePathError):
        check_policy([FileEntry("abc/def", 1)], ReceivePolicy(max_path_bytes=6))
    check_policy([FileEntry("abc/de", 1)], ReceivePolicy(max_path_bytes=6))


# --- Windows names ----------------------------------------------------------------------

RESERVED = ["CON", "con", "Prn", "AUX", "nul", "COM1", "com9", "COM0", "LPT1", "lpt9",
            "COM\u00b9", "LPT\u00b3", "CONIN$", "conout$"]


@pytest.mark.parametrize("name", RESERVED, ids=ascii)
@pytest.mark.parametrize("form", ["{}", "{}.txt", "{}.tar.gz", "dir/{}", "{}/file", "{} .txt"])
def test_windows_device_names_refused(name: str, form: str) -> None:
    """A device name, with any extension and in any component, is refused."""
    path = form.format(name)
    with pytest.raises(UnsafePathError, match="device name"):
        check_policy([FileEntry(path, 1)], WINDOWS)
    check_policy([FileEntry(path, 1)], POSIX)


@pytest.mark.parametrize(
    "name",
    ["CONSOLE", "com10", "COM", "LPT", "auxiliary.c", "NULL", "a.con", "x.NUL", "COMA",
     "prn_", "_aux", "CON_"],
    ids=ascii,
)
def test_names_like_devices_pass(name: str) -> None:
    """Names that only look like device names are ordinary names."""
    assert windows_name_problem(name) is None
    check_policy([FileEntry(name, 1)], WINDOWS)


@pytest.mark.parametrize("char", list('<>:"|?*'))
def test_windows_forbidden_characters_refused(char: str) -> None:
    """Each character Windows forbids in names is refused, anywhere in the path."""
    with pytest.raises(UnsafePathError, match="character Windows does not allow"):
        check_policy([FileEntry(f"dir/a{char}b", 1)], WINDOWS)
    check_policy([FileEntry(f"dir/a{char}b", 1)], POSIX)


@pytest.mark.parametrize("path", ["a.", "a ", "dir./x", "dir /x", "x/...", "x/. ."], ids=repr)
def test_windows_trailing_dot_or_space_refused(path: str) -> None:
    """A name ending in a dot or a space would be trimmed into another name on Windows."""
    with pytest.raises(UnsafePathError, match="ends in a dot or a space"):
        check_policy([FileEntry(path, 1)], WINDOWS)
    check_policy([FileEntry(path, 1)], POSIX)


def test_windows_rules_leave_ordinary_names_alone() -> None:
    """Spaces, dots, Unicode and punctuation Windows allows all pass."""
    check_policy([FileEntry("My Docs/report v2.final.docx", 1), FileEntry(".hidden", 1),
                  FileEntry("日本語/ファイル (1).txt", 1), FileEntry("a+b=c,d;e[f]{g}#h%", 1)],
                 WINDOWS)


def test_windows_message_says_how_to_proceed() -> None:
    """The message names the file and the way out (rename, or drop the check off Windows)."""
    with pytest.raises(UnsafePathError) as info:
        check_policy([FileEntry("logs/aux.log", 1)], WINDOWS)
    text = str(info.value)
    assert "'logs/aux.log'" in text and "'aux.log'" in text and "rename" in text
    if os.name != "nt":
        assert "windows_names=False" in text


# --- messages are safe to print ---------------------------------------------------------

HOSTILE = "\u202eexe.\u200btxt"


@pytest.mark.parametrize(
    ("entries", "policy"),
    [
        ([FileEntry(f"{HOSTILE}/{deep(70)}", 1)], ReceivePolicy()),
        ([FileEntry(f"{HOSTILE}/" + "é" * 3000, 1)], POSIX),
        ([FileEntry(f"{HOSTILE}/{HOSTILE}.", 1)], WINDOWS),
        ([FileEntry(f"x{HOSTILE}/nul.{HOSTILE}", 1)], WINDOWS),
        ([FileEntry(f"{HOSTILE}{'x' * 20}", 1)], ReceivePolicy(max_name_bytes=20)),
        ([FileEntry(HOSTILE, 1), FileEntry(HOSTILE.upper(), 1)], POSIX),
    ],
    ids=["depth", "path bytes", "trailing dot", "device", "name bytes", "collision"],
)
def test_names_in_messages_are_escaped(entries: list[Entry], policy: ReceivePolicy) -> None:
    """Bidi overrides and zero-width characters in names reach the message escaped."""
    with pytest.raises((PolicyError, UnsafePathError)) as info:
        check_policy(entries, policy)
    text = str(info.value)
    assert not _hidden(text)
    assert re.search(r"\\u202e", text)


# --- size -------------------------------------------------------------------------------


@pytest.mark.slow
def test_200k_entries_checked() -> None:
    """A 200,000-entry manifest in a folder tree passes (linear: pytest-timeout guards it)."""
    entries: list[Entry] = []
    for d in range(200):
        entries.append(DirEntry(f"folder {d}"))
        entries.extend(FileEntry(f"folder {d}/sub/file {i}.txt", i) for i in range(999))
    assert len(entries) == 200_000
    check_policy(entries, WINDOWS)
    with pytest.raises(PolicyError, match="199,800 files"):
        check_policy(entries, ReceivePolicy(max_files=199_799))


@pytest.mark.slow
def test_200k_deep_entries_checked() -> None:
    """200,000 entries 20 levels deep are checked without per-level string rebuilding."""
    stem = deep(19)
    entries = [FileEntry(f"{stem}/{i}", 0) for i in range(200_000)]
    check_policy(entries, ReceivePolicy())
