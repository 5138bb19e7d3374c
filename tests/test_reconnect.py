"""The reconnect policy without sockets: backoff, budget, which errors are worth a retry."""

from __future__ import annotations

import asyncio

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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(reconnect.time, "monotonic", c)
    return c


def test_backoff_doubles_up_to_the_cap_within_the_budget(clock: Clock) -> None:
    retry = Reconnect(30.0)
    assert not retry.reconnecting
    delays = []
    while (delay := retry.next_delay()) is not None:
        delays.append(delay)
        clock.now += delay
    assert delays[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert all(d <= 8.0 for d in delays) and sum(delays) == pytest.approx(30.0)
    assert retry.attempt == len(delays)


def test_reaching_the_peer_renews_the_budget(clock: Clock) -> None:
    retry = Reconnect(10.0)
    assert retry.next_delay() == 0.5
    clock.now += 9.0
    assert retry.reconnecting and retry.wait_timeout(None) == pytest.approx(1.0)
    retry.connected()
    assert not retry.reconnecting and retry.wait_timeout(5.0) == 5.0
    clock.now += 100.0
    assert retry.next_delay() == 0.5  # a new outage, a new budget, the first delay again


def test_no_budget_means_no_retry(clock: Clock) -> None:
    assert Reconnect(0.0).next_delay() is None


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
