"""docs/protocol.md §6.2 and §6.3 print the transition tables of the Sender and Receiver
machines; these tests read them there and compare them with the code's, so that neither
changes without the other."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from p2p_copy.protocol.transfer import (
    RECEIVER_TRANSITIONS,
    SENDER_TRANSITIONS,
    TRANSITIONS,
    ReceiverState,
    SenderState,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
SECTIONS = {"sender": ("### 6.2 ", "### 6.3 "), "receiver": ("### 6.3 ", "### 6.4 ")}
STATES: dict[str, type[enum.IntEnum]] = {"sender": SenderState, "receiver": ReceiverState}

Row = tuple[str, str, str]


def _section(role: str) -> str:
    text = DOC.read_text("utf-8")
    start, end = SECTIONS[role]
    return text[text.index(start):text.index(end)]


def documented_rows(section: str) -> set[Row]:
    """The rows of the section's ``| state | input | next state |`` table, backticks dropped."""
    table = section[section.index("| state | input | next state |"):]
    rows: set[Row] = set()
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        state, event, following = (c.strip().replace("`", "") for c in line.strip("|").split("|"))
        rows.add((state, event, following))
    return rows


def code_rows(table: Mapping[Any, Mapping[str, Any]]) -> set[Row]:
    return {(state.name, event, following.name)
            for state, row in table.items() for event, following in row.items()}


def diagram_states(section: str) -> set[str]:
    """The state names drawn in the section's first code block."""
    diagram = section.split("```\n")[1]
    return set(re.findall(r"\b[A-Z][A-Z_]{2,}\b", diagram))


@pytest.mark.parametrize("role", ["sender", "receiver"])
def test_the_documented_transitions_are_the_codes(role: str) -> None:
    """Every row of the doc's table is in the code's table and the other way round."""
    documented = documented_rows(_section(role))
    coded = code_rows(TRANSITIONS["sender" if role == "sender" else "receiver"])
    assert documented - coded == set(), "in docs/protocol.md only"
    assert coded - documented == set(), "in protocol/transfer.py only"


@pytest.mark.parametrize("role", ["sender", "receiver"])
def test_the_diagram_draws_exactly_the_machines_states(role: str) -> None:
    """No state drawn that no enum has (HANDSHAKE was one), none of the enum's left out."""
    assert diagram_states(_section(role)) == {s.name for s in STATES[role]}


@pytest.mark.parametrize("role", ["sender", "receiver"])
def test_every_state_has_a_row_and_every_row_names_a_state(role: str) -> None:
    """The tables are total over the enums (terminal states map to nothing)."""
    table: Mapping[Any, Mapping[str, Any]] = TRANSITIONS[
        "sender" if role == "sender" else "receiver"]
    assert set(table) == set(STATES[role])
    terminal = {s for s, row in table.items() if not row}
    assert {s.name for s in terminal} == {"DONE", "FAILED"}


def test_a_changed_row_is_noticed() -> None:
    """The comparison sees a row that differs in its next state only."""
    section = _section("sender").replace(
        "| WAIT_DONE | receive `done` | DONE |", "| WAIT_DONE | receive `done` | FAILED |")
    assert documented_rows(section) != code_rows(SENDER_TRANSITIONS)
    section = _section("receiver").replace("| STREAMING | receive `eof` | FINISHING |\n", "")
    assert documented_rows(section) != code_rows(RECEIVER_TRANSITIONS)
