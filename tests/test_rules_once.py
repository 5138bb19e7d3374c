"""Each rule and constant has one source; the copies users read are checked against it.

errors.py's classes are the one table of exit codes: README.md's table and the module's
own docstring tree must agree with it, row by row. p2p_copy.CancelledError keeps working
under its old name but is not mistaken for asyncio's.
"""

from __future__ import annotations

import argparse
import ast
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


def _module_assignments(name: str) -> list[str]:
    """The modules of the package that assign ``name`` at their top level."""
    found = []
    for path in sorted((REPO / "p2p_copy").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            targets = (node.targets if isinstance(node, ast.Assign)
                       else [node.target] if isinstance(node, ast.AnnAssign) else [])
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                found.append(path.relative_to(REPO).as_posix())
    return found


def test_shared_constants_are_defined_once() -> None:
    """Limits and patterns several modules use have one definition, which the others import."""
    for name, home in (("DEFAULT_MAX_ENTRIES", "p2p_copy/protocol/policy.py"),
                       ("DEFAULT_RECONNECT_TIMEOUT", "p2p_copy/peer/reconnect.py"),
                       ("HEX_DIGEST", "p2p_copy/protocol/digests.py"),
                       ("DEFAULT_CHUNK_SIZE", "p2p_copy/protocol/messages.py"),
                       ("MAX_CHUNK_SIZE", "p2p_copy/protocol/messages.py"),
                       ("OFFER_TIMEOUT", "p2p_copy/peer/session.py"),
                       ("MAX_COMPONENT_BYTES", "p2p_copy/protocol/paths.py")):
        assert _module_assignments(name) == [home], name
    sources = "".join(path.read_text(encoding="utf-8")
                      for path in (REPO / "p2p_copy").rglob("*.py"))
    assert sources.count("[0-9a-f]{64}") == 1  # a digest or room hash in hex: HEX_DIGEST


def test_help_states_the_reconnect_default_of_the_api() -> None:
    """``--reconnect-timeout``'s help gives the default the API uses, not a copy of it."""
    from p2p_copy.cli.commands import build_parser
    from p2p_copy.peer.reconnect import DEFAULT_RECONNECT_TIMEOUT

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["send"].format_help().split())
    assert f"(default {DEFAULT_RECONNECT_TIMEOUT:g}; 0 turns it off)" in text
