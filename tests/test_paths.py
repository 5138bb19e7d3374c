"""The rules for names from the network: one path at a time, then the manifest as a whole."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p_copy.errors import UnsafePathError
from p2p_copy.protocol.messages import DirEntry, Entry, FileEntry
from p2p_copy.protocol.paths import (
    _split_checked,
    check_entries,
    display_name,
    split_safe_path,
    split_safe_paths,
)
from tests.protocol_pair import FUZZ_EXAMPLES

# What a terminal could interpret: C0, DEL, C1.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _unsafe(path: str) -> UnsafePathError:
    with pytest.raises(UnsafePathError) as info:
        split_safe_path(path)
    return info.value


# --- ordinary names pass ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("a", ("a",)),
        ("file.txt", ("file.txt",)),
        ("My Documents/report (final) v2.docx", ("My Documents", "report (final) v2.docx")),
        (" leading and trailing ", (" leading and trailing ",)),
        ("日本語/ファイル.txt", ("日本語", "ファイル.txt")),
        ("Grüße/naïve café.md", ("Grüße", "naïve café.md")),
        ("emoji 😀/🎉.png", ("emoji 😀", "🎉.png")),
        (".hidden/.config", (".hidden", ".config")),
        ("...", ("...",)),
        ("..a/a..b/b..", ("..a", "a..b", "b..")),
        ("-rf/~/$HOME/*", ("-rf", "~", "$HOME", "*")),
        ("a\u00a0b", ("a\u00a0b",)),  # NO-BREAK SPACE is not a control character
        ("1:x", ("1:x",)),  # a digit is no drive letter
        ("dir/C:x", ("dir", "C:x")),  # a drive letter only matters at the start
        ("é" * 127, ("é" * 127,)),  # 254 bytes
        ("x" * 255, ("x" * 255,)),
        ("/".join(["a" * 240] * 17), ("a" * 240,) * 17),  # exactly 4096 characters
    ],
    ids=lambda v: repr(v)[:30],
)
def test_ordinary_names_pass(path: str, parts: tuple[str, ...]) -> None:
    """Plain relative names, Unicode and spaces included, split into their components."""
    assert split_safe_path(path) == parts


# --- each rule --------------------------------------------------------------------------


def test_empty_path_refused() -> None:
    """An empty name is refused."""
    _unsafe("")


@pytest.mark.parametrize("path", ["/", "/etc/passwd", "//server/share", "/a/../b"])
def test_absolute_paths_refused(path: str) -> None:
    """A path starting at the root could land anywhere."""
    _unsafe(path)


@pytest.mark.parametrize(
    "path", ["..", "../x", "a/../../b", "a/..", "a/b/../../.."], ids=repr
)
def test_dot_dot_refused(path: str) -> None:
    """No '..' component anywhere, even one that would stay inside after normalising."""
    _unsafe(path)


@pytest.mark.parametrize("path", [".", "./a", "a/./b", "a/."], ids=repr)
def test_dot_refused(path: str) -> None:
    """A '.' component is refused: every path has one spelling."""
    _unsafe(path)


@pytest.mark.parametrize("path", ["a//b", "a/", "a/b/", "//"], ids=repr)
def test_empty_components_refused(path: str) -> None:
    """Doubled or trailing slashes are refused."""
    _unsafe(path)


@pytest.mark.parametrize("path", ["a\\b", "\\", "..\\x", "\\\\server\\share", "C:\\x"], ids=repr)
def test_backslash_refused(path: str) -> None:
    """A backslash is a separator on Windows, so it may not hide in a name."""
    _unsafe(path)


@pytest.mark.parametrize("path", ["C:", "c:x", "a:b.txt", "C:/Windows", "z:foo/bar", "Z:"],
                         ids=repr)
def test_drive_letters_refused(path: str) -> None:
    """A leading drive letter would leave the destination on Windows."""
    _unsafe(path)


@pytest.mark.parametrize(
    "char",
    ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f",
     "\x80", "\x85", "\x9b", "\x9d", "\x9f"],
    ids=lambda c: f"U+{ord(c):04X}",
)
def test_control_characters_refused(char: str) -> None:
    """C0, DEL and C1 controls (a C1 CSI can start a terminal sequence on its own) are refused."""
    _unsafe(f"a{char}b")
    _unsafe(f"dir/name{char}")


@pytest.mark.parametrize(
    "path",
    ["\x1b[2J\x1b[Hrm -rf ~", "report\x1b]0;pwned\x07.txt", "ok/\x1b[31mred\x1b[0m",
     "\x9b31mred", "a\rb.txt"],
    ids=repr,
)
def test_terminal_escape_sequences_refused_and_not_echoed(path: str) -> None:
    """An escape sequence in a name is refused, and the error does not carry it raw."""
    exc = _unsafe(path)
    assert not CONTROL.search(str(exc))


@pytest.mark.parametrize("path", ["\ud800", "a/\udcff.txt", "x\udc80y"], ids=ascii)
def test_lone_surrogates_refused(path: str) -> None:
    """A lone surrogate (possible via a JSON \\u escape) is not a name any disk can store."""
    _unsafe(path)


@pytest.mark.parametrize(
    "path",
    ["x" * 256, "ok/" + "x" * 256, "é" * 128, "😀" * 64, "a" * 200 + "é" * 28],
    ids=lambda p: f"{len(p.encode())} bytes",
)
def test_component_over_255_bytes_refused(path: str) -> None:
    """A component is limited to 255 bytes of UTF-8, not 255 characters."""
    _unsafe(path)


def test_path_over_4096_characters_refused() -> None:
    """A path may not exceed 4096 characters, even with short components."""
    path = "/".join(["a" * 240] * 17) + "b"
    assert len(path) == 4097
    _unsafe(path)


# --- display_name -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("plain name.txt", "plain name.txt"),
        ("café 😀", "café 😀"),
        ("a\x1b[31mb", "a\\x1b[31mb"),
        ("line\nbreak", "line\\x0abreak"),
        ("\x00\x7f\x9b", "\\x00\\x7f\\x9b"),
        ("\t", "\\x09"),
    ],
    ids=repr,
)
def test_display_name_escapes_control_characters(name: str, shown: str) -> None:
    """Control characters become visible \\xNN escapes; everything else is left alone."""
    assert display_name(name) == shown


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("invoice\u202egpj.exe", "invoice\\u202egpj.exe"),  # RIGHT-TO-LEFT OVERRIDE
        ("a\u2066b\u2069", "a\\u2066b\\u2069"),  # bidi isolates
        ("\u200bsame", "\\u200bsame"),  # ZERO WIDTH SPACE
        ("a\u200db", "a\\u200db"),  # ZERO WIDTH JOINER
        ("\ufeffbom", "\\ufeffbom"),
        ("soft\xadhyphen", "soft\\xadhyphen"),
        ("line\u2028sep", "line\\u2028sep"),
        ("tag\U000e0041", "tag\\U000e0041"),  # astral: eight hex digits
        ("\udc80", "\\udc80"),
        ("a\u00a0b \ue000", "a\u00a0b \ue000"),  # no-break space, private use: visible
    ],
    ids=ascii,
)
def test_display_name_escapes_invisible_characters(name: str, shown: str) -> None:
    """Bidi overrides, zero-width and other format characters, and separators are escaped."""
    assert display_name(name) == shown


def _hidden(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp")


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None)
@given(st.text())
def test_display_name_never_leaves_a_control_character(name: str) -> None:
    """Whatever the name, its displayed form holds no control, format or separator character."""
    shown = display_name(name)
    assert not any(_hidden(c) for c in shown)
    if not any(_hidden(c) for c in name):
        assert shown == name
    assert display_name(shown) == shown


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None)
@given(st.text(max_size=40))
def test_split_safe_path_accepts_only_safe_paths(path: str) -> None:
    """Whatever comes in, split_safe_path refuses it or returns plain, rejoinable parts."""
    try:
        parts = split_safe_path(path)
    except UnsafePathError as exc:
        assert not CONTROL.search(str(exc))
        return
    assert "/".join(parts) == path
    for part in parts:
        assert part not in ("", ".", "..")
        assert "\\" not in part and not CONTROL.search(part)
        assert len(part.encode()) <= 255
    assert not re.match("[A-Za-z]:", parts[0])


_NAME_PIECES = st.sampled_from(["a", "/", ".", "..", "\\", ":", "C:", "\x1b", "\x85", "\ud800",
                                ".p2p-copy-part", ".P2P-COPY-resume.new", "x" * 64, "\u00e9" * 64,
                                "\U0001f600" * 63])


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None)
@given(st.one_of(st.text(max_size=40), st.lists(_NAME_PIECES, max_size=8).map("".join)))
def test_fast_path_agrees_with_every_rule(path: str) -> None:
    """A name the quick screen lets through passes every rule one by one, and splits alike."""
    try:
        slow: tuple[str, ...] | None = _split_checked(path)
    except UnsafePathError:
        slow = None
    try:
        fast: tuple[str, ...] | None = split_safe_path(path)
    except UnsafePathError:
        fast = None
    assert fast == slow


def _judged(paths: list[str]) -> list[tuple[str, ...]] | str:
    try:
        return [split_safe_path(path) for path in paths]
    except UnsafePathError as exc:
        return str(exc)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None)
@given(st.lists(st.one_of(st.text(max_size=20), st.lists(_NAME_PIECES, max_size=6).map("".join),
                          st.sampled_from(["a/b", "dir/file.txt", "", "\n", "a\nb", "x\n"])),
                max_size=6))
def test_screening_many_paths_at_once_agrees_with_one_at_a_time(paths: list[str]) -> None:
    """Joined by newlines and screened in one pass, names get the same answer as alone:
    the same parts, or the same error for the first bad name."""
    try:
        together: list[tuple[str, ...]] | str = split_safe_paths(paths)
    except UnsafePathError as exc:
        together = str(exc)
    assert together == _judged(paths)


def test_screening_many_paths_catches_what_joining_could_hide() -> None:
    """Newlines inside names, names that are empty or too long, and bad first names of
    later lines are all still refused."""
    for paths in (["a", "b\nc"], ["a", ""], ["", "a"], ["a", "/etc"], ["a", "C:x"],
                  ["a", "b/.."], ["a\n", "b"], ["a", "x" * 5000], ["ok", "a/./b"]):
        with pytest.raises(UnsafePathError):
            split_safe_paths(paths)
    assert split_safe_paths(["a/b", "c"]) == [("a", "b"), ("c",)]
    assert split_safe_paths([]) == []


# --- check_entries ----------------------------------------------------------------------


def test_check_entries_accepts_a_normal_tree() -> None:
    """Folders, their files, empty folders and similar-looking distinct names pass."""
    check_entries([
        DirEntry("project"),
        DirEntry("project/src"),
        FileEntry("project/src/main.py", 10),
        FileEntry("project/src/main.pyc", 10),
        FileEntry("project/README", 3),
        DirEntry("project/empty"),
        FileEntry("project/résumé.txt", 1),
        FileEntry("project/resume.txt", 1),  # no accent: a different name
        FileEntry("top.txt", 0),
    ])


def test_check_entries_accepts_nothing() -> None:
    """An empty manifest is fine."""
    check_entries([])


def test_check_entries_applies_the_path_rules() -> None:
    """One unsafe path among good ones refuses the whole manifest."""
    with pytest.raises(UnsafePathError):
        check_entries([FileEntry("ok", 1), FileEntry("../evil", 1)])


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("a.txt", "a.txt"),
        ("A.txt", "a.txt"),
        ("README", "readme"),
        ("dir/File", "DIR/file"),
        ("straße", "STRASSE"),  # casefold, not lower
        ("\u00e9", "e\u0301"),  # é composed vs decomposed
        ("caf\u00e9/x", "cafe\u0301/x"),
        ("\u00c9", "e\u0301"),  # case and normalisation at once
        ("\u212b", "\u00e5"),  # ANGSTROM SIGN is canonically Å
        ("ﬁle", "FILE"),  # the 'fi' ligature casefolds to "fi"
        ("\u1f00\u0345", "\u1f80"),  # Greek with two accents, decomposed vs composed
        ("ab", "a\u200cb"),  # HFS+ ignores ZERO WIDTH NON-JOINER
        ("git", "g\u200di\ufefft"),  # ... and joiners and BOMs
        ("x\u202e", "X"),  # ... and bidi overrides
        ("d\u0307/é", "ḋ/E\u0301"),  # normalisation in every component
    ],
    ids=ascii,
)
def test_colliding_names_refused(first: str, second: str) -> None:
    """Two names one case-insensitive or normalising file system would merge are refused."""
    with pytest.raises(UnsafePathError):
        check_entries([FileEntry(first, 1), FileEntry(second, 2)])


def test_file_and_dir_with_one_name_refused() -> None:
    """A file and a folder may not share a name."""
    with pytest.raises(UnsafePathError):
        check_entries([DirEntry("x"), FileEntry("X", 1)])


def test_dir_listed_twice_refused() -> None:
    """Even two identical folder entries are refused: each name appears once."""
    with pytest.raises(UnsafePathError):
        check_entries([DirEntry("d"), DirEntry("d")])


@pytest.mark.parametrize(
    "entries",
    [
        [FileEntry("a", 1), FileEntry("a/b", 1)],
        [FileEntry("a/b", 1), FileEntry("a", 1)],  # order does not matter
        [FileEntry("a/b/c", 1), FileEntry("a/b", 1)],  # deeper
        [FileEntry("A", 1), FileEntry("a/b", 1)],  # through a case collision
        [FileEntry("\u00e9", 1), DirEntry("e\u0301/sub")],  # through normalisation
        [FileEntry("a", 1), DirEntry("a/d")],
    ],
    ids=lambda es: " + ".join(ascii(e.path) for e in es),
)
def test_file_used_as_folder_refused(entries: list[Entry]) -> None:
    """A path that is a file cannot also be a parent of another entry."""
    with pytest.raises(UnsafePathError, match="both as a file and as a folder"):
        check_entries(entries)


def test_folder_parents_may_be_implicit_or_explicit() -> None:
    """A listed folder and files inside it, in either order, are not a collision."""
    check_entries([FileEntry("a/b", 1), DirEntry("a"), FileEntry("a/c/d", 1), DirEntry("a/c")])


def test_collision_error_shows_names_escaped() -> None:
    """The collision message names both entries without raw control characters."""
    with pytest.raises(UnsafePathError) as info:
        check_entries([FileEntry("Ab", 1), FileEntry("aB", 1)])
    assert "Ab" in str(info.value) and "aB" in str(info.value)


# Code points HFS+ ignores in names (as git lists them).
HFS_IGNORED = re.compile("[\u200c-\u200f\u202a-\u202e\u206a-\u206f\ufeff]")


def _spec_fold(name: str) -> str:
    # docs/protocol.md §7 rule 10, written out independently of p2p_copy.protocol.paths.
    return unicodedata.normalize("NFC", HFS_IGNORED.sub("", name)).casefold()


def _variants(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.upper(), name.lower(), name.swapcase(), name.title(),
                            unicodedata.normalize("NFD", name),
                            unicodedata.normalize("NFC", name)])


# Single names (no "/"), so that only rule 10 can make a list of safe names fail.
component = st.text(st.characters(exclude_characters="/", exclude_categories=("Cs", "Cc")),
                    min_size=1, max_size=6)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None)
@given(st.lists(component, min_size=1, max_size=4).flatmap(
    lambda names: st.tuples(st.just(names), _variants(names[0]))))
def test_check_entries_refuses_exactly_the_folded_duplicates(
    names_and_variant: tuple[list[str], str]
) -> None:
    """Safe single names are refused if and only if two of them fold to the same key."""
    names, variant = names_and_variant
    names = [*names, variant]  # often a case or normalisation variant of the first name
    safe = True
    for name in names:
        try:
            split_safe_path(name)
        except UnsafePathError:
            safe = False
    folded = [_spec_fold(name) for name in names]
    should_pass = safe and len(set(folded)) == len(folded)
    try:
        check_entries([FileEntry(name, 0) for name in names])
    except UnsafePathError:
        assert not should_pass
    else:
        assert should_pass


def test_zero_width_space_is_a_different_name() -> None:
    """A ZERO WIDTH SPACE (not ignored by any file system) keeps names apart; it shows escaped."""
    check_entries([FileEntry("ab", 1), FileEntry("a\u200bb", 1)])
    assert display_name("a\u200bb") == "a\\u200bb"


def test_collision_error_escapes_bidi_overrides() -> None:
    """Names in a collision message cannot reorder or hide text on the terminal."""
    with pytest.raises(UnsafePathError) as info:
        check_entries([FileEntry("evil\u202etxt", 1), FileEntry("EVIL\u202eTXT", 1)])
    assert "\u202e" not in str(info.value) and "\\u202e" in str(info.value)


def test_check_entries_returns_the_components() -> None:
    """check_entries hands back each entry's components, in order, for further checks."""
    parts = check_entries([DirEntry("a"), FileEntry("a/b/c", 1), FileEntry("d", 0)])
    assert parts == [("a",), ("a", "b", "c"), ("d",)]


def test_deep_paths_are_checked_in_linear_time() -> None:
    """Thousands of 2000-level paths pass quickly: prefixes are not rebuilt per level."""
    stem = "/".join(["d"] * 2000)
    entries = [FileEntry(f"{stem}/{i}", 0) for i in range(2000)]  # 8 MB of paths
    assert len(check_entries(entries)) == 2000


def test_file_under_a_deep_file_refused() -> None:
    """A file used as a folder is found at any depth."""
    stem = "/".join(["d"] * 500)
    with pytest.raises(UnsafePathError, match="both as a file and as a folder"):
        check_entries([FileEntry(f"{stem}/x/y", 1), FileEntry(f"{stem.upper()}/X", 1)])


def test_long_path_shown_cut_in_errors() -> None:
    """An error about a very long path shows its start, not 4096 characters."""
    exc = _unsafe("a/" * 1000 + "..")
    assert len(str(exc)) < 400


@pytest.mark.parametrize("name", [
    ".a.txt.p2p-copy-part", "dir/.a.txt.p2p-copy-resume", ".a.p2p-copy-resume.new",
    "x.P2P-COPY-PART", ".a.p2p-copy-part/inside",
])
def test_names_of_partial_files_are_refused(name: str) -> None:
    """Entries named like the receiver's partial files or sidecars could clash with them."""
    with pytest.raises(UnsafePathError, match="partial files"):
        split_safe_path(name)
