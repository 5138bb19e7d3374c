"""The reconnect policy without sockets: backoff, budget, which errors are worth a retry."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from p2p_copy.errors import (
    CodeInUseError,
    ConnectionLostError,
    IntegrityError,
    PeerGoneError,
    RelayUnreachableError,
    TamperingError,
    TransferTimeoutError,
    UsageError,
)
from p2p_copy.peer import reconnect
from p2p_copy.peer.reconnect import Reconnect, keeps_partial, reconnect_budget, retryable


def test_backoff_doubles_up_to_the_cap_within_the_budget() -> None:
    retry = Reconnect(30.0)
    assert not retry.reconnecting
    now = 1000.0
    delays = []
    while (delay := retry.next_delay(now)) is not None:
        delays.append(delay)
        now += delay
    assert delays[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert all(d <= 8.0 for d in delays) and sum(delays) == pytest.approx(30.0)
    assert retry.attempt == len(delays)


def test_reaching_the_peer_renews_the_budget() -> None:
    retry = Reconnect(10.0)
    now = 1000.0
    assert retry.next_delay(now) == 0.5
    now += 9.0
    assert retry.reconnecting and retry.wait_timeout(None, now) == pytest.approx(1.0)
    retry.connected()
    assert not retry.reconnecting and retry.wait_timeout(5.0, now) == 5.0
    now += 100.0
    assert retry.next_delay(now) == 0.5  # a new outage, a new budget, the first delay again


def test_no_budget_means_no_retry() -> None:
    assert Reconnect(0.0).next_delay(1000.0) is None


def test_the_policy_reads_no_clock() -> None:
    """Time is an argument, as in relay/admission.py: the same inputs, the same answers."""
    source = Path(reconnect.__file__).read_text("utf-8")
    assert "time" not in {n.split(".")[0] for n in _imported(source)}
    first, second = Reconnect(10.0), Reconnect(10.0)
    assert [first.next_delay(t) for t in (5.0, 9.0, 16.0)] == [
        second.next_delay(t) for t in (5.0, 9.0, 16.0)] == [0.5, 1.0, None]


def _imported(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize(("timeout", "budget"), [(None, 0.0), (0, 0.0), (2.5, 2.5)])
def test_reconnect_budget(timeout: float | None, budget: float) -> None:
    assert reconnect_budget(timeout) == budget


@pytest.mark.parametrize("timeout", [-1.0, float("nan")])
def test_a_negative_budget_is_a_usage_error(timeout: float) -> None:
    with pytest.raises(UsageError):
        reconnect_budget(timeout)


def test_drops_are_retried_verdicts_are_not() -> None:
    assert retryable(ConnectionLostError("x"), reconnecting=False)
    assert retryable(PeerGoneError("x"), reconnecting=False)
    assert not retryable(RelayUnreachableError("x"), reconnecting=False)
    assert retryable(RelayUnreachableError("x"), reconnecting=True)
    assert retryable(CodeInUseError("x"), reconnecting=True)
    assert not retryable(IntegrityError("x"), reconnecting=True)
    assert not retryable(ValueError("x"), reconnecting=True)
    told = ConnectionLostError("x")
    told.from_peer = True
    assert not retryable(told, reconnecting=True)


def test_partial_data_is_kept_after_drops_and_cancels_only() -> None:
    for kept in (asyncio.CancelledError(), ConnectionLostError("x"), PeerGoneError("x"),
                 TransferTimeoutError("x")):
        assert keeps_partial(kept)
    for dropped in (IntegrityError("x"), TamperingError("x"), ValueError("x")):
        assert not keeps_partial(dropped)
