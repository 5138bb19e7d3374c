"""When a sender opens one more lane (docs/protocol.md §6.12), as a rule without I/O.

One TCP connection carries at most its window per round trip: ~40 MB/s at 100 ms with
Linux's 4 MiB default, whatever the link. More connections ("lanes") each bring a window
of their own, but on loopback or a LAN they only cost CPU. So the sender starts with one
and opens more only when the link looks window-limited: a round trip to the relay of
MIN_RTT or more, measured before the data flowed, and MIN_LEFT bytes or more still to
send. How many at once is a table of that round trip (FIRST_LANES): two lanes in all from
5 ms, four from 20 ms (a continent away, where one window is a small share of any link),
eight from 50 ms (where one window carries at most ~80 MB/s and four ~340 MB/s: eight
were always reached there, a step later, and that step cost a second of a 512 MiB
transfer at 100 ms). It then doubles the lanes while the last step raised the
acknowledged rate by GAIN or more, each rate measured over an interval of a few round
trips (``interval()``) with the lanes it has, up to the cap; a measurement starts once
the bytes sent before the lanes changed are acknowledged, as the acks of bytes already
on their way tell of the lanes before. Doubling rather than adding one: opening a lane
and measuring it costs some ten round trips, and one at a time would reach eight lanes
only after seven of those, when a transfer of a few hundred MiB is over; a step that did
not pay stops the growth, and its lanes cost only memory. The driver (peer/lanes.py)
passes the clock and the counts in; nothing here reads either.

The first lanes are opened as soon as the round trip is known, before the first data
message, without a measurement on one lane first: an announcement sent later travels on
lane 0 behind the data already in the buffers (up to a second on a long link). The rate
of lane 0 alone, until the first lane carries data, is the reference of the first step.
"""

from __future__ import annotations

from typing import Final

__all__ = ["LANE_CAP", "MIN_RTT", "FIRST_LANES", "MIN_LEFT", "GAIN", "LaneGovernor",
           "first_lanes", "interval"]

#: The most lanes our peers use (the protocol allows up to messages.MAX_LANES).
LANE_CAP: Final = 8
#: A round trip shorter than this is a LAN or loopback: one lane is enough.
MIN_RTT: Final = 0.005
#: The lanes in all (lane 0 included) that the first step opens to, by the round trip to
#: the relay: (from this round trip in seconds, this many), longest first.
FIRST_LANES: Final = ((0.05, 8), (0.02, 4), (MIN_RTT, 2))
#: With less left to send, a new lane would not be paired before the end.
MIN_LEFT: Final = 32 * 2**20
#: A lane must raise the rate by this factor to earn the next one.
GAIN: Final = 1.15
#: A measurement lasts ROUND_TRIPS round trips, at least MIN_INTERVAL and at most
#: MAX_INTERVAL seconds: long enough for acks every 2 MiB to show a rate, short enough
#: that lanes are in place while there is much left to send.
ROUND_TRIPS: Final = 4
MIN_INTERVAL: Final = 0.3
MAX_INTERVAL: Final = 2.0


def first_lanes(rtt: float) -> int:
    """The lanes in all that the first step opens to at round trip ``rtt`` (1: none)."""
    return next((lanes for since, lanes in FIRST_LANES if rtt >= since), 1)


def interval(rtt: float | None) -> float:
    """Seconds of acknowledged bytes that make one measurement at round trip ``rtt``."""
    if rtt is None:
        return MAX_INTERVAL
    return min(MAX_INTERVAL, max(MIN_INTERVAL, ROUND_TRIPS * rtt))


class LaneGovernor:
    """Says when to open one more lane; ``force`` (tests) opens that many at once."""

    def __init__(self, cap: int, *, force: int = 0) -> None:
        self.cap = cap
        self.force = min(force, cap)
        self.rtt: float | None = None
        self.settled = False
        self._mark: tuple[float, int] | None = None
        self._last_rate = 0.0
        self._reference = False
        #: The measurement starts once this many bytes are acknowledged.
        self._after = 0

    def changed(self, now: float, acked: int, sent: int | None = None) -> None:
        """The lanes carrying data changed (one opened or was lost): measure anew, from
        when the ``sent`` bytes sent so far are acknowledged (None: from now). Acks of
        bytes already on their way, a round trip or more of them, still tell of the lanes
        before. The first time, what lane 0 carried until now is the rate of one lane."""
        if self._mark is not None and not self._reference and now > self._mark[0]:
            # Zero if nothing was acknowledged yet: then the first step counts as paid.
            self._last_rate = (acked - self._mark[1]) / (now - self._mark[0])
            self._reference = True
        self._mark = (now, acked) if sent is None else None
        self._after = sent or 0

    def stop(self) -> None:
        """No more lanes for this connection (one could not be opened)."""
        self.settled = True

    def decide(self, now: float, acked: int, left: int, lanes: int) -> int:
        """How many lanes to open now (0: none), with ``lanes`` carrying data, ``acked``
        bytes acknowledged so far and ``left`` bytes still to send."""
        if lanes >= self.cap:
            return 0
        if self.force:
            return max(0, self.force - lanes)  # tests: exactly that many, no rule
        if self.settled or left < MIN_LEFT:
            return 0
        if self._mark is None:
            if acked < self._after:
                return 0
            self._mark = (now, acked)
        if lanes == 1:
            if self.rtt is None:
                return 0  # not measured yet: wait for it
            first = min(first_lanes(self.rtt), self.cap)
            if first <= 1:
                self.settled = True
            return first - 1
        since, base = self._mark
        if now - since < interval(self.rtt):
            return 0
        rate = (acked - base) / (now - since)
        if rate < self._last_rate * GAIN:
            self.settled = True
            return 0
        self._last_rate = rate
        return min(lanes, self.cap - lanes)
