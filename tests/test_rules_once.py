"""Each rule and constant has one source; the copies users read are checked against it.

errors.py's classes are the one table of exit codes: README.md's table and the module's
own docstring tree must agree with it, row by row. p2p_copy.CancelledError keeps working
under its old name but is not mistaken for asyncio's.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import p2p_copy
from p2p_copy import errors

REPO = Path(__file__).resolve().parent.parent


def _readme_rows() -> dict[int, str]:
    """README.md's exit-code table: code -> the first class named in its row."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Exit codes", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*(?:`(\w+)`|—)", section, re.MULTILINE)
    assert rows, "README.md's exit-code section has no table"
    return {int(code): name for code, name in rows}


def test_readme_exit_code_table_is_errors_py() -> None:
    """Every row of README.md's table names the class whose exit_code is that row's code,
    and every exit code of errors.py has a row."""
    rows = _readme_rows()
    assert rows.pop(0) == ""
    table = errors.exit_codes()
    assert set(rows) == set(table), (sorted(rows), sorted(table))
    for code, name in rows.items():
        assert getattr(errors, name) is table[code], (code, name)


def test_errors_docstring_tree_is_the_exit_codes() -> None:
    """The exception tree in errors.py's docstring gives each class its own exit code."""
    tree = re.findall(r"(\w+Error)\s+exit (\d+)", errors.__doc__ or "")
    assert {name: int(code) for name, code in tree} == {
        cls.__name__: code for code, cls in errors.exit_codes().items()}


def test_exit_codes_lists_each_class_that_sets_one() -> None:
    """exit_codes() has the classes that set a code, not their subclasses that inherit it."""
    table = errors.exit_codes()
    assert table[8] is errors.ProtocolError
    assert errors.RemoteProtocolError not in table.values()
    assert list(table) == sorted(table)
    assert table[130] is errors.TransferCancelledError


def test_cancelled_error_keeps_its_old_name_and_is_not_asyncios() -> None:
    """p2p_copy.CancelledError is the same class as TransferCancelledError (old code that
    catches it keeps working), and neither is asyncio.CancelledError."""
    assert p2p_copy.CancelledError is p2p_copy.TransferCancelledError
    assert errors.CancelledError is errors.TransferCancelledError
    assert p2p_copy.TransferCancelledError.__name__ == "TransferCancelledError"
    assert not issubclass(p2p_copy.TransferCancelledError, asyncio.CancelledError)
    assert issubclass(p2p_copy.TransferCancelledError, p2p_copy.P2PCopyError)
    assert "TransferCancelledError" in p2p_copy.__all__
