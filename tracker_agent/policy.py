"""The drain's policy, pure and table-tested: what a failed batch means, how long to wait,
how fast to send. drain.py applies it.

- classify(exc): a whole-batch failure -> RETRY (transient, an unreadable answer included),
  PAUSE (credentials or configuration, or a failure we do not understand) or SPLIT (the
  server refused the request itself: isolate the bad command)
- backoff_delay(failures, ...): capped exponential backoff with full jitter; a server's
  Retry-After is a floor
- unreachable(exc): the backoff began with no answer at all: a reachability probe may end it
- RateLimiter: at most `rate` requests per second (the API's per-IP limit is 100/s)
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import constants as c
from .constants import DRAIN_MAX_RETRY_AFTER_SECONDS
from .exceptions import (
    APIException,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    RequestTooLargeError,
)

#: The statuses of the server's own refusal of a whole batch: 400 or 413 with the API's JSON
#: error body, or 200 with "success": false and messages (tracker_agent.responses raises
#: BadRequestError / RequestTooLargeError for exactly those).
REFUSAL_STATUSES = frozenset({200, 400, 413})


class Action(enum.Enum):
    RETRY = "retry"  # transient: back off, then send the same batch again
    PAUSE = "pause"  # credentials/configuration: stop delivering, probe now and then
    SPLIT = "split"  # the batch is refused as a whole: isolate the bad command(s)


def classify(exc: APIException) -> Action:
    """What to do when a whole batch request failed with `exc`.

    Only the server's refusal splits (and so may dead-letter): anything else that is not
    retryable (a request that could not be sent, an undocumented 4xx with a JSON body) is
    not evidence against the commands, so delivery pauses, visibly, and nothing is buried.
    """
    if isinstance(exc, (AuthenticationError, PermissionDeniedError, NotFoundError)):
        return Action.PAUSE
    if exc.retryable:
        return Action.RETRY
    refused = isinstance(exc, (BadRequestError, RequestTooLargeError))
    if refused and exc.status_code in REFUSAL_STATUSES:
        return Action.SPLIT
    return Action.PAUSE


def backoff_delay(
    failures: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    max_retry_after: float = DRAIN_MAX_RETRY_AFTER_SECONDS,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after the `failures`-th consecutive failure (1-based); the one backoff
    formula, for the drain and for the client's read retries.

    Full jitter: uniform in [0, min(cap, base * 2**(failures-1))]; a server's Retry-After is a
    floor (never retry sooner than asked), itself bounded by `max_retry_after`.
    """
    exponent = min(max(failures, 1) - 1, 62)
    ceiling = min(cap, base * (2.0**exponent))
    delay = rng() * ceiling
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, max_retry_after))
    return delay


def pause_probe_delay(failed_probes: int, *, interval: float) -> float:
    """Seconds from a pause (or a failed probe) to the next probe: FIRST_PAUSE_PROBE_SECONDS,
    doubling with each failed probe, never more than `interval` (pause_probe_interval)."""
    exponent = min(max(failed_probes, 0), 62)
    return min(interval, c.FIRST_PAUSE_PROBE_SECONDS * 2.0**exponent)


def unreachable(exc: APIException) -> bool:
    """`exc` means the API could not be reached at all (connection refused or reset, DNS,
    TLS, a timeout: no HTTP status): the backoff it starts may end early, as soon as a
    reachability probe is answered. Anything with a status is an answer and keeps its
    backoff: 429 and 5xx are the server asking for time (Retry-After honoured), and an
    unreadable answer (a captive portal's login page, a truncated body) came from something
    that answered; system/time would be answered by it too, or not read, so probing
    proves nothing there."""
    return exc.retryable and exc.status_code is None


def error_text(exc: APIException) -> str:
    messages = "; ".join(exc.errors) if exc.errors else exc.message
    status = f"HTTP {exc.status_code}: " if exc.status_code is not None else ""
    return f"{type(exc).__name__}: {status}{messages}"


@dataclass(frozen=True)
class DrainPolicy:
    """The Settings fields the drain applies (same names, same defaults)."""

    batch_size: int = c.MAX_BATCH_COMMANDS
    batch_max_bytes: int = c.DEFAULT_BATCH_MAX_BYTES
    lease_seconds: float = c.DEFAULT_LEASE_SECONDS
    backoff_base: float = c.DEFAULT_BACKOFF_BASE_SECONDS
    backoff_cap: float = c.DEFAULT_BACKOFF_CAP_SECONDS
    max_attempts: int | None = None
    max_age: float | None = None
    rate_limit: float = c.API_RATE_LIMIT
    pause_probe_interval: float = c.DEFAULT_PAUSE_PROBE_INTERVAL_SECONDS
    reach_probe_interval: float = c.DEFAULT_REACH_PROBE_INTERVAL_SECONDS
    clock_correction: bool = True
    receipt_retention: float = c.DEFAULT_RECEIPT_RETENTION_SECONDS
    receipt_max_rows: int = c.DEFAULT_RECEIPT_MAX_ROWS
    #: Batches one claim takes (Drainer): its rows are leased until the last of them goes
    #: out, so only as many as the lease outlives (from_settings; 1 when it is not known).
    claim_batches: int = 1

    @classmethod
    def from_settings(cls, settings: Any) -> DrainPolicy:
        """The policy of a Settings (any object with these attributes, and the timeouts)."""
        values = {
            f.name: getattr(settings, f.name)
            for f in dataclasses.fields(cls)
            if f.name != "claim_batches"
        }
        deadline = settings.request_timeout + settings.connect_timeout
        return cls(**values, claim_batches=claim_batches(settings.lease_seconds, deadline))


def claim_batches(lease_seconds: float, deadline: float) -> int:
    """How many batches one claim may take: the last of K goes out after the batch in flight
    and the K - 1 before it, each within one request deadline, so its lease must outlive
    K + 1 deadlines. At most MAX_CLAIM_BATCHES; at least 1 (Settings requires a lease longer
    than two deadlines)."""
    fits = math.ceil(lease_seconds / deadline) - 2 if deadline > 0 else 1
    return max(1, min(c.MAX_CLAIM_BATCHES, fits))


class Limiter(Protocol):
    """What the drain needs from a rate limiter (RateLimiter, hostlimit.HostRateLimiter)."""

    def acquire(self) -> float | None:
        """Wait for the next send slot; the seconds waited (None: not measured)."""


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

    def acquire(self) -> float:
        """Wait for this caller's turn; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            wait = self._next - now
            self._next = max(now, self._next) + self._interval
        if wait > 0:
            self._sleep(wait)
        return max(wait, 0.0)
