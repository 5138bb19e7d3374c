"""What a relay counts, and its Prometheus view of those counts.

Forwarding only bumps plain ints in ``RelayStats`` (as the relay did before it had
metrics); a collector turns them into metric families when ``/metrics`` is scraped. So
metrics cost the hot path nothing but one forward-latency sample per 64 messages.

prometheus_client is optional (the ``relay`` extra): without it the relay
runs with metrics off. Each relay has its own CollectorRegistry, so that several relays
in one process (tests, the in-process API) never share or clash over metrics.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from .lifecycle import PAIR_OUTCOMES, Outcome, Reason

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily
    from prometheus_client.metrics_core import Metric

    from .forwarding import Budget

__all__ = [
    "RelayStats",
    "RelayMetrics",
    "relay_metrics",
    "PAIR_OUTCOMES",
    "CONNECTION_OUTCOMES",
    "REJECTION_REASONS",
    "LATENCY_SAMPLE_MASK",
]

#: The label values of the outcome and reason metrics, all shown from the start (zeros
#: too): lifecycle.py's enums, whose values dashboards use (server/README.md).
CONNECTION_OUTCOMES: Final[tuple[str, ...]] = tuple(Outcome)
REJECTION_REASONS: Final[tuple[str, ...]] = tuple(Reason)
#: Forward latency is measured for a message when ``messages_forwarded & MASK == 0``.
LATENCY_SAMPLE_MASK: Final = 63

#: From a fast loopback hop to a receiver that keeps the sender waiting for seconds.
_LATENCY_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)


@dataclass
class RelayStats:
    """Counters an operator (and the tests) can read while the relay runs."""

    connections: int = 0
    open_connections: int = 0
    active_pairs: int = 0
    messages_forwarded: int = 0
    bytes_forwarded: int = 0
    waiting: int = 0
    #: Finished connections by Outcome (a str, so plain label strings read it too).
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Finished pairs by Outcome (one of PAIR_OUTCOMES).
    pairs: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Refused peers by Reason.
    rejections: collections.Counter[str] = field(default_factory=collections.Counter)


class _StatsCollector:
    """Reads RelayStats at scrape time."""

    def __init__(self, stats: RelayStats, draining: Callable[[], bool],
                 budget: Budget | None) -> None:
        self._stats = stats
        self._draining = draining
        self._budget = budget

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self._stats
        p = "p2p_copy_relay_"
        yield CounterMetricFamily(
            p + "connections", "WebSocket connections accepted (one per peer).",
            value=s.connections)
        yield GaugeMetricFamily(
            p + "open_connections", "WebSocket connections open now.", value=s.open_connections)
        yield GaugeMetricFamily(
            p + "waiting_peers", "Peers waiting for their partner.", value=s.waiting)
        yield GaugeMetricFamily(p + "active_pairs", "Pairs relaying now.", value=s.active_pairs)
        yield CounterMetricFamily(
            p + "forwarded_messages", "Messages forwarded, both directions.",
            value=s.messages_forwarded)
        yield CounterMetricFamily(
            p + "forwarded_bytes", "Payload bytes forwarded, both directions.",
            value=s.bytes_forwarded)
        yield _labelled(CounterMetricFamily(
            p + "pairs_finished", "Pairs finished, by outcome.", labels=["outcome"]),
            PAIR_OUTCOMES, s.pairs)
        yield _labelled(CounterMetricFamily(
            p + "connections_finished", "Connections finished, by outcome.",
            labels=["outcome"]), CONNECTION_OUTCOMES, s.outcomes)
        yield _labelled(CounterMetricFamily(
            p + "rejections", "Peers turned away, by reason.", labels=["reason"]),
            REJECTION_REASONS, s.rejections)
        if self._budget is not None:
            yield GaugeMetricFamily(
                p + "queued_bytes",
                "Bytes held for peers now: unfinished frames, queued messages, "
                "unsent writes.", value=max(self._budget.used, 0))
            yield GaugeMetricFamily(
                p + "queued_bytes_limit",
                "The relay's budget for queued_bytes (0: none); over it, close 4009.",
                value=self._budget.limit)
        yield GaugeMetricFamily(
            p + "draining", "1 while the relay drains (takes no new peers), else 0.",
            value=1 if self._draining() else 0)


def _labelled(
    family: CounterMetricFamily, known: tuple[str, ...], counts: collections.Counter[str]
) -> CounterMetricFamily:
    """Every known label value, zeros included, so that rate() works from the start."""
    for value in (*known, *sorted(set(counts) - set(known))):
        family.add_metric([value], counts[value])
    return family


class RelayMetrics:
    """One relay's registry: its RelayStats plus a sampled forward-latency histogram."""

    def __init__(self, stats: RelayStats, draining: Callable[[], bool],
                 budget: Budget | None = None) -> None:
        from prometheus_client import CollectorRegistry, Histogram

        self.registry: CollectorRegistry = CollectorRegistry()
        self.registry.register(_StatsCollector(stats, draining, budget))
        latency = Histogram(
            "p2p_copy_relay_forward_latency_seconds",
            "Time from reading a message to its send completing, for 1 message in 64.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        #: Record one sample, in seconds.
        self.observe_forward: Callable[[float], None] = latency.observe

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """Every metric in the format the scraper's Accept header asks for, and its type."""
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def relay_metrics(stats: RelayStats, draining: Callable[[], bool],
                  budget: Budget | None = None) -> RelayMetrics | None:
    """Metrics over ``stats`` and ``budget``, or None when prometheus_client is missing."""
    try:
        return RelayMetrics(stats, draining, budget)
    except ImportError:
        return None
