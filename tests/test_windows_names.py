"""Issue 17, finding 12: names that pass Windows' own check but reach another file or a
device there (8.3 short names, fullwidth forms) are refused under ``windows_names``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from p2p_copy.errors import UnsafePathError
from p2p_copy.protocol import policy
from p2p_copy.protocol.messages import FileEntry
from p2p_copy.protocol.policy import ReceivePolicy, check_policy, windows_name_problem

WINDOWS = ReceivePolicy(windows_names=True)
POSIX = ReceivePolicy(windows_names=False)

SHORT_NAMES = ["GIT~1", "git~1", "PROGRA~1", "progra~2", "AB12CD~1", "X~12345",
               "README~1.TXT", "docume~1.d"]


@pytest.mark.parametrize("name", SHORT_NAMES)
@pytest.mark.parametrize("form", ["{}", "dir/{}", "{}/hooks/pre-commit"])
def test_short_names_refused(name: str, form: str) -> None:
    """A name of 8.3 short-name form could stand for another entry's long name (.git)."""
    path = form.format(name)
    with pytest.raises(UnsafePathError, match=r"short \(8\.3\) name"):
        check_policy([FileEntry(path, 1)], WINDOWS)
    check_policy([FileEntry(path, 1)], POSIX)


@pytest.mark.parametrize("name", ["backup~", "a~b", "~1", "verylongname~1", "foo~1.tar.gz",
                                  "GIT~1.html", "notes~x.txt", "~$report.docx"])
def test_names_with_a_tilde_that_no_short_name_has_pass(name: str) -> None:
    """Only the 8.3 form is refused: more than 8 characters, a long extension, no digits."""
    assert windows_name_problem(name) is None
    check_policy([FileEntry(name, 1)], WINDOWS)


FULLWIDTH = {
    "\uff23\uff2f\uff2e": "CON",  # ＣＯＮ
    "\uff2e\uff35\uff2c.txt": "NUL.txt",  # ＮＵＬ.txt
    "\uff43\uff4f\uff4e": "con",
    "\uff2c\uff30\uff34\uff11": "LPT1",  # fullwidth digit too
    "\uff23\uff2f\uff2d\u00b9.log": "COM1.log",
    "AUX\uff0etxt": "AUX.txt",  # fullwidth full stop before the extension
    "\uff27\uff29\uff34~\uff11": "GIT~1",
    # Windows itself takes only ¹²³ as COM/LPT digits; best fit and NFKC read ⁴ as 4.
    "LPT\u2074": "LPT4",
}


@pytest.mark.parametrize("name", list(FULLWIDTH), ids=ascii)
def test_names_whose_nfkc_form_is_reserved_are_refused(name: str) -> None:
    """Best-fit conversion in Windows' ANSI functions reads fullwidth forms as ASCII."""
    with pytest.raises(UnsafePathError) as info:
        check_policy([FileEntry(f"dir/{name}", 1)], WINDOWS)
    assert repr(FULLWIDTH[name]) in str(info.value)
    check_policy([FileEntry(f"dir/{name}", 1)], POSIX)


@pytest.mark.parametrize("name", ["..\uff0fetc", "a\uff3cb", "\uff0e\uff0e", "x\uff0e",
                                  "y\u3000"], ids=ascii)
def test_names_whose_nfkc_form_climbs_or_is_trimmed_are_refused(name: str) -> None:
    """Fullwidth solidus, reverse solidus, full stop and ideographic space read as / \\ . ' '."""
    assert windows_name_problem(name) is not None
    with pytest.raises(UnsafePathError):
        check_policy([FileEntry(name, 1)], WINDOWS)


@pytest.mark.parametrize("name", ["\u306a\u305c\uff1f.txt", "\u5831\u544a\uff1a\u6700\u7d42",
                                  "\uff08\uff11\uff09.txt", "\u65e5\u672c\u8a9e",
                                  "caf\u00e9", "\uff23\uff2f\uff2e\uff33\uff2f\uff2c\uff25"],
                         ids=ascii)
def test_ordinary_cjk_and_accented_names_pass(name: str) -> None:
    """Fullwidth punctuation common in CJK names (？ ： （ ）) and accents stay allowed."""
    assert windows_name_problem(name) is None
    check_policy([FileEntry(name, 1)], WINDOWS)


@pytest.mark.parametrize("policy, entry", [
    (WINDOWS, FileEntry("docs/CON.txt", 1)),
    (ReceivePolicy(max_name_bytes=8), FileEntry("docs/a-long-name.txt", 1)),
    (ReceivePolicy(max_path_bytes=8), FileEntry("docs/a.txt", 1)),
])
def test_a_refused_name_tells_the_sender_what_to_do(policy: ReceivePolicy,
                                                    entry: FileEntry) -> None:
    """The receiver's user reads "ask the sender to rename it"; the sender, who gets the
    peer text, is told to rename or shorten it itself."""
    with pytest.raises(UnsafePathError) as info:
        check_policy([entry], policy)
    assert "Ask the sender" in str(info.value)
    assert "Ask the sender" not in info.value.peer_text
    assert "ename it" in info.value.peer_text or "shorten it" in info.value.peer_text


@pytest.mark.parametrize("name", ["a.txt:hidden", "NUL.txt", "notes."])
def test_on_windows_turning_the_check_off_changes_nothing(
    monkeypatch: pytest.MonkeyPatch, name: str,
) -> None:
    """Issue 23: on Windows such a name would write into a stream of another (maybe
    existing) file, open a device or be trimmed onto another name, so windows_names=False
    does not let it through there; elsewhere it does."""
    check_policy([FileEntry(name, 1)], POSIX)
    monkeypatch.setattr(policy, "os", SimpleNamespace(name="nt"))  # what policy.py asks
    with pytest.raises(UnsafePathError, match="rename it"):
        check_policy([FileEntry(name, 1)], POSIX)
