"""In-process delivery tallies: batch requests by outcome, their durations, and the time spent
waiting for the rate limiter. The drain feeds them (drain.py); the Prometheus collector
(prometheus.py) reads them at scrape time. Stdlib only: the drain keeps no dependency on the
metrics library, and a tally costs one lock per request.

What the outbox itself knows (queue depth, delivered and dead-lettered totals, pause) is read
from the store at scrape time instead: it is shared by every process on the file.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

from .constants import REQUEST_DURATION_BUCKETS_SECONDS

__all__ = ["DeliveryTally", "TallySnapshot", "REQUEST_OUTCOMES"]

#: Request outcomes (the `outcome` label): answered with a result per command; a transient
#: failure (backing off); credentials or configuration (paused); refused as a whole (split).
REQUEST_OUTCOMES = ("ok", "retry", "pause", "refused")


@dataclass(frozen=True)
class TallySnapshot:
    """A consistent copy of the tallies. `duration_buckets[i]` counts requests that took at
    most `bucket_bounds[i]` seconds (cumulative, as Prometheus histograms are)."""

    requests: dict[str, int]
    bucket_bounds: tuple[float, ...]
    duration_buckets: tuple[int, ...]
    duration_sum: float
    duration_count: int
    rate_limit_wait_seconds: float


@dataclass
class DeliveryTally:
    """Thread-safe counters one Drainer feeds; never reset (Prometheus counters)."""

    bucket_bounds: tuple[float, ...] = REQUEST_DURATION_BUCKETS_SECONDS
    _requests: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REQUEST_OUTCOMES, 0))
    _buckets: list[int] = field(default_factory=list)
    _sum: float = 0.0
    _count: int = 0
    _waited: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._buckets = [0] * len(self.bucket_bounds)

    def request_done(self, outcome: str, seconds: float, waited: float = 0.0) -> None:
        """One batch request ended with `outcome` after `seconds`, having waited `waited`
        seconds for the rate limiter before it went out."""
        index = bisect.bisect_left(self.bucket_bounds, seconds)
        with self._lock:
            self._requests[outcome] = self._requests.get(outcome, 0) + 1
            if index < len(self._buckets):
                self._buckets[index] += 1
            self._sum += seconds
            self._count += 1
            self._waited += max(waited, 0.0)

    def snapshot(self) -> TallySnapshot:
        with self._lock:
            buckets = list(self._buckets)
            running = 0
            for i, count in enumerate(buckets):  # per-bucket counts -> cumulative
                running += count
                buckets[i] = running
            return TallySnapshot(
                requests=dict(self._requests),
                bucket_bounds=self.bucket_bounds,
                duration_buckets=tuple(buckets),
                duration_sum=self._sum,
                duration_count=self._count,
                rate_limit_wait_seconds=self._waited,
            )
