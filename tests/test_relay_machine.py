"""The relay's per-connection machine (p2p_copy/relay/lifecycle.py), driven without sockets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from p2p_copy.errors import LocalProtocolError
from p2p_copy.protocol.messages import CloseCode
from p2p_copy.relay import metrics
from p2p_copy.relay.lifecycle import (
    PAIR_OUTCOMES,
    TRANSITIONS,
    Event,
    Lifecycle,
    Outcome,
    Reason,
    State,
    closed,
)

ROOT = Path(__file__).resolve().parent.parent

#: The metric label values dashboards query (server/README.md); they must never change.
OUTCOME_LABELS = {"happy", "lonely", "impatient", "redundant", "errory", "drained", "limited"}
PAIR_LABELS = {"happy", "errory", "drained", "limited"}
REASON_LABELS = {
    "bad_path", "bad_hello", "hello_timeout", "code_in_use", "peer_timeout", "too_big",
    "draining", "access_denied", "connections_full", "connections_per_address",
    "connections_per_network", "rate_limited", "waiting_full", "waiting_per_address",
    "waiting_per_network", "pairs_full", "pair_bytes", "pair_duration", "memory_full",
}


def run(*events: Event) -> Lifecycle:
    life = Lifecycle(now=100.0)
    for i, ev in enumerate(events):
        life.handle(ev, now=101.0 + i)
    return life


@pytest.mark.parametrize(("events", "outcome"), [
    ((Event.WAIT, Event.PAIR, Event.FINISHED), Outcome.HAPPY),
    ((Event.PAIR, Event.FINISHED), Outcome.HAPPY),
    ((Event.WAIT, Event.PEER_TIMEOUT), Outcome.LONELY),
    ((Event.WAIT, Event.LEFT), Outcome.IMPATIENT),
    ((Event.CODE_IN_USE,), Outcome.REDUNDANT),
    ((Event.BROKE_RULE,), Outcome.ERRORY),
    ((Event.LEFT,), Outcome.ERRORY),
    ((Event.PAIR, Event.LEFT), Outcome.ERRORY),
    ((Event.WAIT, Event.SHUT), Outcome.DRAINED),
    ((Event.PAIR, Event.SHUT), Outcome.DRAINED),
    ((Event.OVER_LIMIT,), Outcome.LIMITED),
    ((Event.WAIT, Event.PAIR, Event.OVER_LIMIT), Outcome.LIMITED),
])
def test_each_path_through_the_machine_ends_with_its_outcome(
        events: tuple[Event, ...], outcome: Outcome) -> None:
    """The documented lives of a connection (server/README.md) end with their labels."""
    life = run(*events)
    assert life.state is State.DONE and life.outcome is outcome


def test_an_event_the_table_does_not_list_is_the_relays_bug() -> None:
    """A timeout for a peer that never waited, or a clean end of an unpaired one, raises."""
    with pytest.raises(LocalProtocolError, match="PEER_TIMEOUT cannot happen in HELLO"):
        run(Event.PEER_TIMEOUT)
    with pytest.raises(LocalProtocolError, match="FINISHED cannot happen in WAITING"):
        run(Event.WAIT, Event.FINISHED)
    with pytest.raises(LocalProtocolError):
        run(Event.PAIR, Event.WAIT)


def test_the_first_ending_counts_and_later_events_change_nothing() -> None:
    """A limit closes the connection, and the close it causes does not count twice."""
    life = run(Event.WAIT, Event.OVER_LIMIT)
    assert life.handle(Event.LEFT, now=200.0) is None
    assert life.outcome is Outcome.LIMITED and life.ended == 102.0


def test_a_handler_that_failed_still_ends_with_one_outcome() -> None:
    """finish() on a connection nothing ended (its handler raised) gives errory, once."""
    life = run(Event.WAIT)
    assert life.finish(now=110.0) is Outcome.ERRORY
    assert run(Event.PAIR, Event.FINISHED).finish(now=110.0) is Outcome.HAPPY


def test_relayed_seconds_count_from_pairing_to_the_end() -> None:
    """The pair_end log's duration: the clock comes in as ``now``."""
    life = Lifecycle(now=0.0)
    life.handle(Event.WAIT, now=1.0)
    assert life.relayed_seconds() == 0.0
    life.handle(Event.PAIR, now=5.0)
    life.handle(Event.FINISHED, now=12.5)
    assert life.relayed_seconds() == 7.5


@pytest.mark.parametrize(("sent", "peer_first", "event"), [
    (None, False, Event.LEFT),  # the connection dropped
    (CloseCode.NORMAL, True, Event.LEFT),  # the peer closed, the relay echoed
    (CloseCode.RELAY_DRAINING, True, Event.LEFT),  # an echo is never the relay's reason
    (CloseCode.RELAY_DRAINING, False, Event.SHUT),
    (CloseCode.GOING_AWAY, False, Event.SHUT),
    (CloseCode.RELAY_MEMORY, False, Event.OVER_LIMIT),
    (CloseCode.RATE_LIMITED, False, Event.OVER_LIMIT),
    (CloseCode.RELAY_FULL, False, Event.OVER_LIMIT),
    (CloseCode.PAIR_LIMIT, False, Event.OVER_LIMIT),
    (CloseCode.CODE_IN_USE, False, Event.CODE_IN_USE),
    (CloseCode.PEER_TIMEOUT, False, Event.PEER_TIMEOUT),
    (CloseCode.MESSAGE_TOO_BIG, False, Event.BROKE_RULE),
    (CloseCode.BAD_HELLO, False, Event.BROKE_RULE),
    (CloseCode.HELLO_TIMEOUT, False, Event.BROKE_RULE),
])
def test_a_close_becomes_the_event_its_code_says(
        sent: int | None, peer_first: bool, event: Event) -> None:
    """The close code the relay sent first says why the connection ended."""
    assert closed(sent, peer_first) is event


def test_every_outcome_is_reachable_and_every_open_state_can_end() -> None:
    """No outcome is dead code, and no state but DONE is a trap."""
    reached = {step for steps in TRANSITIONS.values() for step in steps.values()}
    assert set(Outcome) <= reached
    for state in State:
        ends = [s for s in TRANSITIONS[state].values() if isinstance(s, Outcome)]
        assert bool(ends) is (state is not State.DONE), state


def test_label_values_are_the_ones_dashboards_use() -> None:
    """Outcomes and reasons are one enum each; metrics.py shows exactly their values."""
    assert {o.value for o in Outcome} == OUTCOME_LABELS
    assert {o.value for o in PAIR_OUTCOMES} == PAIR_LABELS
    assert {r.value for r in Reason} == REASON_LABELS
    assert set(metrics.CONNECTION_OUTCOMES) == OUTCOME_LABELS
    assert set(metrics.PAIR_OUTCOMES) == PAIR_LABELS
    assert set(metrics.REJECTION_REASONS) == REASON_LABELS


def test_the_operators_guide_names_every_label() -> None:
    """server/README.md's metrics table lists each outcome and reason the relay counts."""
    text = (ROOT / "server" / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`([a-z_]+)`", text))
    assert {o.value for o in Outcome} <= named
    assert {r.value for r in Reason} <= named


def test_no_relay_module_spells_a_label_as_a_string() -> None:
    """Outcome and reason labels live in lifecycle.py only: no literal elsewhere in relay/."""
    labels = (OUTCOME_LABELS | REASON_LABELS) - {"draining"}  # also a /readyz body word
    for path in (ROOT / "p2p_copy" / "relay").glob("*.py"):
        if path.name == "lifecycle.py":
            continue
        text = path.read_text(encoding="utf-8")
        spelled = {label for label in labels if f'"{label}"' in text}
        assert not spelled, f"{path.name} spells {spelled}; use lifecycle.Outcome/Reason"
