"""The drain's policy, pure and table-tested: what a failed batch means, how long to wait,
how fast to send. drain.py applies it.

- classify(exc): a whole-batch failure -> RETRY (transient), PAUSE (credentials or
  configuration) or SPLIT (the request itself is refused: isolate the bad command)
- backoff_delay(failures, ...): capped exponential backoff with full jitter; a server's
  Retry-After is a floor
- RateLimiter: at most `rate` requests per second (the API's per-IP limit is 100/s)
"""

from __future__ import annotations

import enum
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .exceptions import (
    APIException,
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
)

#: Upper bound on a server's Retry-After we obey, so a bogus header cannot stall us for days.
MAX_RETRY_AFTER_SECONDS = 3600.0


class Action(enum.Enum):
    RETRY = "retry"  # transient: back off, then send the same batch again
    PAUSE = "pause"  # credentials/configuration: stop delivering, probe now and then
    SPLIT = "split"  # the batch is refused as a whole: isolate the bad command(s)


def classify(exc: APIException) -> Action:
    """What to do when a whole batch request failed with `exc`."""
    if isinstance(exc, (AuthenticationError, PermissionDeniedError, NotFoundError)):
        return Action.PAUSE
    if exc.retryable:
        return Action.RETRY
    return Action.SPLIT


def backoff_delay(
    failures: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after the `failures`-th consecutive failure (1-based).

    Full jitter: uniform in [0, min(cap, base * 2**(failures-1))]; a server's Retry-After is a
    floor (never retry sooner than asked), itself bounded by MAX_RETRY_AFTER_SECONDS.
    """
    exponent = min(max(failures, 1) - 1, 62)
    ceiling = min(cap, base * (2.0**exponent))
    delay = rng() * ceiling
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
    return delay


def error_text(exc: APIException) -> str:
    messages = "; ".join(exc.errors) if exc.errors else exc.message
    status = f"HTTP {exc.status_code}: " if exc.status_code is not None else ""
    return f"{type(exc).__name__}: {status}{messages}"


@dataclass(frozen=True)
class DrainPolicy:
    batch_size: int = 50
    batch_max_bytes: int = 4 * 1024 * 1024
    lease_seconds: float = 60.0
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    max_attempts: int | None = None
    max_age: float | None = None
    rate_limit: float = 100.0
    pause_probe_interval: float = 60.0


class RateLimiter:
    """At most `rate` acquisitions per second, evenly spaced (the API's per-IP limit)."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = self._clock()
            wait = self._next - now
            self._next = max(now, self._next) + self._interval
        if wait > 0:
            self._sleep(wait)
