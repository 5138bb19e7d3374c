"""The browser peer applies the receiver's path rules (protocol.md §7, paths.py, policy.py)
exactly as Python does: one list of hostile manifests, Python's verdicts written to
p2p_copy/web/test/path-verdicts.json, and a Node test (paths.test.mjs) that checks the
JavaScript's verdicts against that file. Regenerate it after a rule change with
``python tests/test_web_paths.py``.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from p2p_copy.errors import PolicyError, UnsafePathError
from p2p_copy.protocol.messages import DirEntry, Entry, FileEntry
from p2p_copy.protocol.paths import fold
from p2p_copy.protocol.policy import ReceivePolicy, check_policy

WEB = Path(__file__).resolve().parent.parent / "p2p_copy" / "web"
VERDICTS = WEB / "test" / "path-verdicts.json"

# One path each (from tests/test_paths.py, test_policy.py, test_windows_names.py, and more).
SINGLE = [
    "a", "file.txt", "My Documents/report (final) v2.docx", " leading and trailing ",
    "日本語/ファイル.txt", "Grüße/naïve café.md", "emoji 😀/🎉.png", ".hidden/.config", "...",
    "..a/a..b/b..", "-rf/~/$HOME/*", "a\u00a0b", "1:x", "dir/C:x", "é" * 127, "x" * 255,
    "/".join(["a" * 240] * 17), "/".join(["a" * 240] * 17) + "b", "",
    "/", "/etc/passwd", "//server/share", "/a/../b", "..", "../x", "a/../../b", "a/..",
    "a/b/../../..", ".", "./a", "a/./b", "a/.", "a//b", "a/", "a/b/", "//",
    "a\\b", "\\", "..\\x", "\\\\server\\share", "C:\\x", "C:", "c:x", "a:b.txt", "C:/Windows",
    "z:foo/bar", "Z:", "é:x", "\x1b[2J\x1b[Hrm -rf ~", "report\x1b]0;pwned\x07.txt",
    "ok/\x1b[31mred\x1b[0m", "\x9b31mred", "a\rb.txt", "\ud800", "a/\udcff.txt", "x\udc80y",
    "x" * 256, "ok/" + "x" * 256, "é" * 128, "😀" * 64, "😀" * 63, "a" * 200 + "é" * 28,
    "invoice\u202egpj.exe", "a\u2066b\u2069", "\u200bsame", "soft\xadhyphen", "line\u2028sep",
    "tag\U000e0041", "a.p2p-copy-part", ".x.p2p-copy-part", "d/.x.P2P-COPY-RESUME",
    "x.p2p-copy-resume.new", "x.p2p-copy-part/y", "x.p2p-copy-partial", "x.p2p-copy-resume.newer",
    "x.p2p-copy-\u017fart",  # LONG S: Unicode IGNORECASE matches it to "s"
    "x.P2P-COPY-PAR\u212a", "/".join(f"d{i}" for i in range(64)) + "/f",
    "/".join(f"d{i}" for i in range(63)) + "/f", "/".join(["é" * 120] * 18),
    "CON", "con.txt", "NUL.tar.gz", "aux.c", "COM1", "lpt9.log", "COM\u00b9", "CONIN$", "prn ",
    "a.", "a ", "a<b", 'q"uote', "pipe|x", "star*", "what?", "GIT~1", "git~1", "PROGRA~1",
    "README~1.TXT", "docume~1.d", "backup~", "a~b", "~1", "verylongname~1", "foo~1.tar.gz",
    "GIT~1.html", "notes~x.txt", "~$report.docx", "\uff23\uff2f\uff2e",
    "\uff2e\uff35\uff2c.txt", "\uff43\uff4f\uff4e", "\uff2c\uff30\uff34\uff11",
    "\uff23\uff2f\uff2d\u00b9.log", "AUX\uff0etxt", "\uff27\uff29\uff34~\uff11", "LPT\u2074",
    "..\uff0fetc", "a\uff3cb", "\uff0e\uff0e", "x\uff0e", "y\u3000", "\u306a\u305c\uff1f.txt",
    "\u5831\u544a\uff1a\u6700\u7d42", "\uff08\uff11\uff09.txt", "caf\u00e9",
    "\uff23\uff2f\uff2e\uff33\uff2f\uff2c\uff25", "dir/CON.txt", "CON/hooks/pre-commit",
    "x\u00e9\u0301.", "\u2126hm", "\ufb01le", "\u0130stanbul",
]
# Whole manifests: collisions and files used as folders.
PAIRS = [
    ("a.txt", "a.txt"), ("A.txt", "a.txt"), ("README", "readme"), ("dir/File", "DIR/file"),
    ("straße", "STRASSE"), ("\u00e9", "e\u0301"), ("caf\u00e9/x", "cafe\u0301/x"),
    ("\u00c9", "e\u0301"),
    ("\u212b", "\u00e5"), ("ﬁle", "FILE"), ("\u1f00\u0345", "\u1f80"), ("ab", "a\u200cb"),
    ("git", "g\u200di\ufefft"), ("x\u202e", "X"), ("d\u0307/é", "ḋ/E\u0301"), ("résumé", "resume"),
    ("ΣΟΦΟΣ", "σοφος"), ("σοφος", "σοφοσ"), ("ẞ", "ss"), ("ǅ", "ǆ"), ("K", "\u212a"), ("ſ", "S"),
    ("\u0130", "i\u0307"), ("\u0130", "i"), ("Ꭰ", "\uab70"), ("ŉ", "ʼN"),
    ("\u0390", "\u03b9\u0308\u0301"), ("ı", "i"), ("ı", "I"),
]


def _entry(path: str, kind: str) -> Entry:
    return DirEntry(path) if kind == "dir" else FileEntry(path, 1)


def _cases() -> list[list[list[str]]]:
    cases = [[[path, "file"]] for path in SINGLE] + [[[path, "dir"]] for path in SINGLE[:40]]
    cases += [[[a, "file"], [b, "file"]] for a, b in PAIRS]
    cases += [[[a, "dir"], [b + "/x", "file"]] for a, b in PAIRS]
    cases += [[["a", "file"], ["a/b", "file"]], [["a/b", "file"], ["a", "file"]],
              [["a/b/c", "file"], ["a/b", "file"]], [["A", "file"], ["a/b", "file"]],
              [["\u00e9", "file"], ["e\u0301/sub", "dir"]], [["x", "dir"], ["X", "file"]],
              [["d", "dir"], ["d", "dir"]], [["a", "dir"], ["a/x", "file"]]]
    # Seeded random names from hostile pieces: the same list on every run.
    pieces = ["a", "/", ".", "..", "\\", ":", "C:", "\x1b", "\x85", "\ud800", "é", "e\u0301",
              "ß", "SS", "\u200c", "CON", "~1", " ", ".p2p-copy-part", "Σ", "ς", "\uff0f", "\u00ad",
              "\x7f"]
    rng = random.Random(20)
    for _ in range(400):
        names = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 6)))
                 for _ in range(rng.randint(1, 3))]
        cases.append([[name, rng.choice(["file", "dir"])] for name in names])
    return cases


def _verdict(case: list[list[str]], windows: bool) -> str:
    try:
        check_policy([_entry(path, kind) for path, kind in case],
                     ReceivePolicy(windows_names=windows))
    except UnsafePathError:
        return "unsafe_path"
    except PolicyError:
        return "policy"
    return "ok"


def _folds() -> list[list[str]]:
    """Every cased code point Python knows, with its fold, and the fold of that fold."""
    strings: set[str] = set()
    for code in range(0x110000):
        char = chr(code)
        if 0xD800 <= code <= 0xDFFF or unicodedata.category(char) == "Cn":
            continue
        if char.casefold() != char or char.lower() != char or char.upper() != char:
            strings.update((char, fold(char), char.upper(), char.lower()))
    for a, b in PAIRS:
        strings.update((a, b))
    return [[text, fold(text)] for text in sorted(strings)]


def verdicts() -> dict[str, Any]:
    cases = _cases()
    return {
        "note": "Generated by tests/test_web_paths.py from p2p_copy.protocol.paths and "
                "policy; do not edit.",
        "unicode": unicodedata.unidata_version,
        "cases": [{"entries": case, "posix": _verdict(case, False), "windows": _verdict(case, True)}
                  for case in cases],
        "folds": _folds(),
    }


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=True, indent=0) + "\n"


@pytest.mark.slow
def test_the_verdicts_file_is_pythons_current_verdicts() -> None:
    """path-verdicts.json holds what paths.py/policy.py decide today (else regenerate it)."""
    assert VERDICTS.read_text("utf-8") == _dump(verdicts()), (
        "p2p_copy/web/test/path-verdicts.json is stale: run python tests/test_web_paths.py")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node")
def test_the_browser_peer_gives_the_same_verdicts() -> None:
    """The JS rules (src/protocol/paths.js) refuse exactly what Python refuses, and fold alike."""
    done = subprocess.run(["node", "--test", "test/paths.test.mjs"], cwd=WEB, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


if __name__ == "__main__":
    VERDICTS.write_text(_dump(verdicts()), "utf-8")
    print(f"wrote {VERDICTS}", file=sys.stderr)
