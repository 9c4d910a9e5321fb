"""One drain pass: claim -> build batch -> send -> settle rows; and the policy that decides.

The only module that joins the HTTP client and the outbox. The policy is pure (`classify`,
`backoff_delay`) and tested by tables; `Drainer` applies it:

- command succeeded                      -> row deleted, counted as delivered
- command rejected inside a 200 batch    -> that row dead-lettered with the server's message
- network error, timeout, 429, 5xx       -> batch retried after exponential backoff with full
                                            jitter (capped, Retry-After honoured); drain waits
- 401/403, "Could not authenticate", 404 -> delivery paused (no attempt counted, nothing dead-
                                            lettered); a probe re-sends a batch now and then
- any other rejection of the whole batch -> batch split in halves until the bad command is
                                            alone; only it is dead-lettered
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .clock import wall_clock
from .exceptions import (
    APIException,
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
)
from .outbox import status as state_keys
from .outbox.store import ClaimedRow, OutboxStore, Settlement

log = logging.getLogger(__name__)

#: Upper bound on a server's Retry-After we obey, so a bogus header cannot stall us for days.
MAX_RETRY_AFTER_SECONDS = 3600.0

#: Sends one batch request of stored commands, given as (name, data JSON text, command_id)
#: triples, and returns one result dict per command in order (Tracking.send_stored_batch).
SendBatch = Callable[[list[tuple[str, str, str]]], list[dict[str, Any]]]


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


@dataclass
class DrainReport:
    """What one `Drainer.drain` call did."""

    requests: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    retried: int = 0
    paused_reason: str | None = None
    backoff_until: float | None = None
    last_error: str | None = None

    def add(self, other: DrainReport) -> None:
        self.requests += other.requests
        self.delivered += other.delivered
        self.dead_lettered += other.dead_lettered
        self.retried += other.retried
        self.paused_reason = other.paused_reason
        self.backoff_until = other.backoff_until
        self.last_error = other.last_error or self.last_error


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


class _Stop(Exception):
    """Raised inside a round to end the pass (backoff or pause began)."""


class Drainer:
    """Delivers the outbox through `send_batch`; one instance per process is enough."""

    def __init__(
        self,
        store: OutboxStore,
        send_batch: SendBatch,
        policy: DrainPolicy | None = None,
        *,
        now: Callable[[], float] | None = None,
        rng: Callable[[], float] = random.random,
        limiter: RateLimiter | None = None,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.send_batch = send_batch
        self.policy = policy or DrainPolicy()
        self.owner = owner or uuid.uuid4().hex
        self._now = now or wall_clock
        self._rng = rng
        self._limiter = limiter or RateLimiter(self.policy.rate_limit)
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._last_claimed = 0

    def drain(
        self,
        *,
        deadline: float | None = None,
        progress: Callable[[DrainReport], None] | None = None,
        stop_on_partial: bool = False,
    ) -> DrainReport:
        """Deliver due rows until none is due, delivery waits (backoff/pause), stop or deadline.

        `deadline` is on the `now` clock. Only one pass runs at a time per Drainer.
        """
        report = DrainReport()
        with self._lock:
            while not self.stopping.is_set():
                if deadline is not None and self._now() >= deadline:
                    break
                round_report = self._round()
                report.add(round_report)
                if progress is not None:
                    progress(report)
                if stop_on_partial and 0 < self._last_claimed < self.policy.batch_size:
                    break  # a partial batch: the rest waits for the next tick or a full batch
                if (
                    round_report.requests == 0
                    or round_report.paused_reason
                    or (round_report.backoff_until is not None)
                ):
                    break
        return report

    # -- one round: claim a batch, send it, settle it -----------------------------------------

    def _round(self) -> DrainReport:
        report = DrainReport()
        now = self._now()
        state = self.store.state()
        paused = state.get(state_keys.STATE_PAUSED_REASON)
        if paused and now < float(state.get(state_keys.STATE_PROBE_AT) or 0):
            report.paused_reason = paused
            return report
        backoff_until = float(state.get(state_keys.STATE_BACKOFF_UNTIL) or 0)
        if backoff_until > now:
            report.backoff_until = backoff_until
            return report
        p = self.policy
        rows = self.store.claim(
            self.owner,
            limit=p.batch_size,
            max_bytes=p.batch_max_bytes,
            lease_seconds=p.lease_seconds,
            now=now,
        )
        self._last_claimed = len(rows)
        if not rows:
            return report
        outcome = Settlement()
        try:
            self._deliver(rows, outcome, report, state)
        except _Stop:
            pass
        except BaseException:
            # Unexpected: let the rows go back to the queue untouched before propagating.
            handled = set(outcome.delivered) | {d[0] for d in outcome.dead} | set(outcome.retry)
            outcome.release.extend(r.id for r in rows if r.id not in handled)
            self.store.settle(self.owner, outcome, self._now())
            raise
        handled = set(outcome.delivered) | {d[0] for d in outcome.dead} | set(outcome.retry)
        outcome.release.extend(
            r.id for r in rows if r.id not in handled and r.id not in outcome.release
        )
        report.delivered += self.store.settle(self.owner, outcome, self._now())
        report.dead_lettered += len(outcome.dead)
        if outcome.dead:
            log.warning(
                "dead-lettered %d command(s), e.g. %d: %s",
                len(outcome.dead),
                outcome.dead[0][0],
                outcome.dead[0][1],
            )
        report.retried += len(outcome.retry)
        failures = int(state.get(state_keys.STATE_FAILURES) or 0)
        if report.backoff_until is None and not report.paused_reason and (paused or failures):
            why = "a probe batch was accepted" if paused else f"after {failures} failed attempts"
            log.info("delivery resumed: %s", why)
        return report

    def _deliver(
        self,
        rows: Sequence[ClaimedRow],
        outcome: Settlement,
        report: DrainReport,
        state: dict[str, Any],
    ) -> None:
        """Send `rows` as one request; on a whole-batch rejection, bisect. Raises _Stop."""
        self._limiter.acquire()
        report.requests += 1
        try:
            # Payloads were validated and serialised at enqueue: they go out as stored.
            results = self.send_batch([(r.kind, r.payload, str(r.id)) for r in rows])
        except APIException as exc:
            action = classify(exc)
            if action is Action.SPLIT:
                self._split(rows, exc, outcome, report, state)
                return
            if action is Action.PAUSE:
                self._pause(rows, exc, outcome, report, state)
            else:
                self._back_off(rows, exc, outcome, report, state)
            raise _Stop from exc
        self._settle_results(rows, results, outcome)

    def _settle_results(
        self, rows: Sequence[ClaimedRow], results: list[dict[str, Any]], outcome: Settlement
    ) -> None:
        now = self._now()
        for row, result in zip(rows, results, strict=True):
            if result.get("success"):
                outcome.delivered.append(row.id)
            elif result.get("missing"):
                # The server returned no result for it: it may or may not have been applied.
                # Send it again (the fixed timestamp makes a duplicate harmless), a bit later.
                outcome.retry.append(row.id)
                outcome.retry_at = max(outcome.retry_at, now + self.policy.backoff_base)
                outcome.error = "the server returned no result for this command"
            else:
                errors = result.get("errors") or ["rejected without a message"]
                reason = (
                    "; ".join(str(e) for e in errors) if isinstance(errors, list) else str(errors)
                )
                outcome.dead.append((row.id, f"rejected by the server: {reason}", 200))
        outcome.state.update(
            {
                state_keys.STATE_LAST_SUCCESS: now,
                state_keys.STATE_FAILURES: 0,
                state_keys.STATE_BACKOFF_UNTIL: 0,
                state_keys.STATE_PAUSED_REASON: None,
                state_keys.STATE_PROBE_AT: None,
            }
        )

    def _split(
        self,
        rows: Sequence[ClaimedRow],
        exc: APIException,
        outcome: Settlement,
        report: DrainReport,
        state: dict[str, Any],
    ) -> None:
        if len(rows) == 1:
            reason = f"rejected by the server: {error_text(exc)}"
            outcome.dead.append((rows[0].id, reason, exc.status_code))
            return
        middle = len(rows) // 2
        log.info("batch of %d refused (%s); splitting to isolate it", len(rows), error_text(exc))
        for half in (rows[:middle], rows[middle:]):
            self._deliver(half, outcome, report, state)

    def _pause(
        self,
        rows: Sequence[ClaimedRow],
        exc: APIException,
        outcome: Settlement,
        report: DrainReport,
        state: dict[str, Any],
    ) -> None:
        now = self._now()
        reason = error_text(exc)
        outcome.release.extend(r.id for r in rows)
        if not state.get(state_keys.STATE_PAUSED_REASON):
            log.error(
                "delivery paused: %s (probing every %ss)", reason, self.policy.pause_probe_interval
            )
        outcome.state.update(
            {
                state_keys.STATE_PAUSED_REASON: reason,
                state_keys.STATE_PAUSED_AT: state.get(state_keys.STATE_PAUSED_AT) or now,
                state_keys.STATE_PROBE_AT: now + self.policy.pause_probe_interval,
                state_keys.STATE_LAST_ERROR: reason,
                state_keys.STATE_LAST_ERROR_AT: now,
            }
        )
        report.paused_reason = reason
        report.last_error = reason

    def _back_off(
        self,
        rows: Sequence[ClaimedRow],
        exc: APIException,
        outcome: Settlement,
        report: DrainReport,
        state: dict[str, Any],
    ) -> None:
        p = self.policy
        now = self._now()
        failures = int(state.get(state_keys.STATE_FAILURES) or 0) + 1
        delay = backoff_delay(
            failures,
            base=p.backoff_base,
            cap=p.backoff_cap,
            retry_after=exc.retry_after,
            rng=self._rng,
        )
        reason = error_text(exc)
        retry_at = now + delay
        for row in rows:
            if self._gives_up(row, now):
                why = f"gave up after {row.attempts + 1} attempts: {reason}"
                outcome.dead.append((row.id, why, exc.status_code))
            else:
                outcome.retry.append(row.id)
        outcome.retry_at = retry_at
        outcome.error = reason
        outcome.state.update(
            {
                state_keys.STATE_FAILURES: failures,
                state_keys.STATE_BACKOFF_UNTIL: retry_at,
                state_keys.STATE_LAST_ERROR: reason,
                state_keys.STATE_LAST_ERROR_AT: now,
            }
        )
        # One line when delivery starts backing off; the retries that follow log at DEBUG.
        log.log(
            logging.WARNING if failures == 1 else logging.DEBUG,
            "delivery backing off %.1fs after failure %d: %s",
            delay,
            failures,
            reason,
        )
        report.backoff_until = retry_at
        report.last_error = reason

    def _gives_up(self, row: ClaimedRow, now: float) -> bool:
        p = self.policy
        if p.max_attempts is not None and row.attempts + 1 >= p.max_attempts:
            return True
        return p.max_age is not None and now - row.created_at >= p.max_age
