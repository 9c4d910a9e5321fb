"""What a batch's answer does to its rows and to the shared delivery state (pure: no I/O).

The drain (drain.py) sends and stores; these functions decide, from one answer, which rows are
delivered, retried, dead-lettered or given back, what goes into agent_state, and what the
pass reports. policy.py holds the rules they apply (classify, backoff_delay).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .exceptions import APIException
from .outbox import state as state_keys
from .outbox.leases import ClaimedRow, Settlement
from .policy import (
    Action,
    DrainPolicy,
    backoff_delay,
    classify,
    error_text,
    pause_probe_delay,
    unreachable,
)

log = logging.getLogger("tracker_agent.drain")

#: human_seconds rounds to whole milliseconds: below this a delay would read "0 ms".
SUB_MILLISECOND = 0.0005
#: The time of the last success is stored to about this many seconds: a drain delivering a
#: hundred batches a second writes it about once a second, not with every batch.
LAST_SUCCESS_RESOLUTION = 1.0


@dataclass
class DrainReport:
    """What one `Drainer.drain` call did."""

    requests: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    retried: int = 0
    paused_reason: str | None = None
    backoff_until: float | None = None
    #: The backoff in force began with no answer at all (policy.unreachable): a reachability
    #: probe may end it early.
    unreachable: bool = False
    last_error: str | None = None

    @property
    def waits(self) -> bool:
        """Delivery must wait: a backoff or a pause is in force."""
        return bool(self.paused_reason) or self.backoff_until is not None

    def add_waits(self, other: DrainReport | None) -> None:
        """Take over why `other` (a claim that found nothing) had to wait, if it did."""
        if other is not None and other.waits:
            self.add(other)

    def add(self, other: DrainReport) -> None:
        self.requests += other.requests
        self.delivered += other.delivered
        self.dead_lettered += other.dead_lettered
        self.retried += other.retried
        self.paused_reason = other.paused_reason
        self.backoff_until = other.backoff_until
        self.unreachable = other.unreachable
        self.last_error = other.last_error or self.last_error


#: The `outcome` of a request that failed as a whole, by what the drain does about it.
_REQUEST_OUTCOMES = {Action.RETRY: "retry", Action.PAUSE: "pause", Action.SPLIT: "refused"}


def request_outcome(answer: list[dict[str, Any]] | APIException) -> str:
    """One batch request's outcome, as tally.REQUEST_OUTCOMES names it: "ok" (a result per
    command, accepted or not), "retry", "pause" or "refused" (see policy.classify)."""
    if isinstance(answer, APIException):
        return _REQUEST_OUTCOMES[classify(answer)]
    return "ok"


def human_seconds(seconds: float) -> str:
    """ "2.5 s", "40 ms" under a second, "under 1 ms" below that (a full-jitter delay is
    often tiny: never "0.0s" or "0 ms")."""
    if seconds >= 1:
        return f"{seconds:.1f} s"
    if seconds >= SUB_MILLISECOND:
        return f"{seconds * 1000:.0f} ms"
    return "under 1 ms"


def claim_terms(policy: DrainPolicy, now: float) -> tuple[dict[str, Any], DrainReport]:
    """The store's claim arguments (the policy's caps and a may_claim(state) gate), and the
    report the gate fills in when it says no (a backoff or pause in force)."""
    report = DrainReport()

    def may_claim(state: dict[str, Any]) -> bool:
        paused = state.get(state_keys.STATE_PAUSED_REASON)
        if paused and now < float(state.get(state_keys.STATE_PROBE_AT) or 0):
            report.paused_reason = paused
            return False
        backoff_until = float(state.get(state_keys.STATE_BACKOFF_UNTIL) or 0)
        if backoff_until > now:
            report.backoff_until = backoff_until
            report.unreachable = bool(state.get(state_keys.STATE_BACKOFF_UNREACHABLE))
            return False
        return True

    terms = {
        "limit": policy.batch_size * policy.claim_batches,
        "max_bytes": policy.batch_max_bytes * policy.claim_batches,
        "lease_seconds": policy.lease_seconds,
        "may_claim": may_claim,
        "fix_clock": policy.clock_correction,
    }
    return terms, report


def settle_results(
    rows: Sequence[ClaimedRow],
    results: list[dict[str, Any]],
    outcome: Settlement,
    *,
    now: float,
    policy: DrainPolicy,
    state: dict[str, Any] | None = None,
) -> None:
    """A 200 answer: each row delivered, retried (no result for it) or dead-lettered. With
    `state` (what the batch was claimed under), only the agent state it changes is written."""
    for row, result in zip(rows, results, strict=True):
        if result.get("success"):
            outcome.delivered.append(row.id)
        elif result.get("missing"):
            # One result per command came back, but its slot echoed another command's id
            # (an answer with a wrong result count never gets here: it is unreadable and
            # the whole batch retries). It may or may not have been applied: send it again
            # (the fixed timestamp makes a duplicate harmless), a bit later.
            outcome.retry.append(row.id)
            outcome.retry_at = max(outcome.retry_at, now + policy.backoff_base)
            outcome.error = "the server returned no result for this command"
        else:
            errors = result.get("errors") or ["rejected without a message"]
            reason = "; ".join(str(e) for e in errors) if isinstance(errors, list) else str(errors)
            outcome.dead.append((row.id, f"rejected by the server: {reason}", 200))
    success = {
        state_keys.STATE_LAST_SUCCESS: now,
        state_keys.STATE_FAILURES: 0,
        state_keys.STATE_BACKOFF_UNTIL: 0,
        state_keys.STATE_BACKOFF_UNREACHABLE: None,
        state_keys.STATE_PAUSED_REASON: None,
        state_keys.STATE_PROBE_AT: None,
        state_keys.STATE_PAUSE_PROBES: None,
    }
    outcome.state.update(success if state is None else changes(success, state, now))


def changes(values: dict[str, Any], state: dict[str, Any], now: float) -> dict[str, Any]:
    """`values` less what `state` holds already, and less a last-success time when the one
    held is under LAST_SUCCESS_RESOLUTION old. Every key written is a row every other drainer's
    settle must then wait for (PostgreSQL holds its lock to the commit): a success in the
    steady state writes nothing but that time, about once a second."""
    kept = {}
    for key, value in values.items():
        held = state.get(key)
        if key == state_keys.STATE_LAST_SUCCESS:
            if isinstance(held, (int, float)) and 0 <= now - held < LAST_SUCCESS_RESOLUTION:
                continue
        elif held == value:  # an absent key holds None
            continue
        kept[key] = value
    return kept


def pause(
    rows: Sequence[ClaimedRow],
    exc: APIException,
    outcome: Settlement,
    report: DrainReport,
    state: dict[str, Any],
    *,
    now: float,
    policy: DrainPolicy,
) -> None:
    """Credentials or project refused: give the rows back, pause until the next probe."""
    reason = error_text(exc)
    outcome.release.extend(r.id for r in rows)
    was_paused = bool(state.get(state_keys.STATE_PAUSED_REASON))
    probes = int(state.get(state_keys.STATE_PAUSE_PROBES) or 0) if was_paused else 0
    delay = pause_probe_delay(probes, interval=policy.pause_probe_interval)
    # One WARNING when a pause begins; INFO when a probe asked for at once (probe_now: a
    # daemon start, flush, check, resume) finds the API still refusing (an app that
    # flushes in a loop must not repeat the warning); failed scheduled probes are DEBUG.
    log.log(
        logging.WARNING if not was_paused else logging.INFO if probes == 0 else logging.DEBUG,
        "delivery %s: %s (probing in %s, then less often, up to every %s)",
        "still paused" if was_paused else "paused",
        reason,
        human_seconds(delay),
        human_seconds(policy.pause_probe_interval),
    )
    outcome.state.update(
        {
            state_keys.STATE_PAUSED_REASON: reason,
            state_keys.STATE_PAUSED_AT: state.get(state_keys.STATE_PAUSED_AT) or now,
            state_keys.STATE_PROBE_AT: now + delay,
            state_keys.STATE_PAUSE_PROBES: probes + 1,
            state_keys.STATE_LAST_ERROR: reason,
            state_keys.STATE_LAST_ERROR_AT: now,
        }
    )
    report.paused_reason = reason
    report.last_error = reason


def back_off(
    rows: Sequence[ClaimedRow],
    exc: APIException,
    outcome: Settlement,
    report: DrainReport,
    state: dict[str, Any],
    *,
    now: float,
    policy: DrainPolicy,
    rng: Callable[[], float],
) -> None:
    """A transient failure: the rows retry after the backoff (or die at max attempts/age)."""
    p = policy
    failures = int(state.get(state_keys.STATE_FAILURES) or 0) + 1
    delay = backoff_delay(
        failures,
        base=p.backoff_base,
        cap=p.backoff_cap,
        retry_after=exc.retry_after,
        rng=rng,
    )
    reason = error_text(exc)
    retry_at = now + delay
    for row in rows:
        if gives_up(row, now, policy):
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
            state_keys.STATE_BACKOFF_UNREACHABLE: unreachable(exc),
            state_keys.STATE_LAST_ERROR: reason,
            state_keys.STATE_LAST_ERROR_AT: now,
        }
    )
    # One line when delivery starts backing off; the retries that follow log at DEBUG.
    log.log(
        logging.WARNING if failures == 1 else logging.DEBUG,
        "delivery backing off %s after failure %d: %s",
        human_seconds(delay),
        failures,
        reason,
    )
    report.backoff_until = retry_at
    report.unreachable = unreachable(exc)
    report.last_error = reason


def gives_up(row: ClaimedRow, now: float, policy: DrainPolicy) -> bool:
    """max_attempts or max_age reached (both off by default: retry forever)."""
    p = policy
    if p.max_attempts is not None and row.attempts + 1 >= p.max_attempts:
        return True
    return p.max_age is not None and now - row.created_at >= p.max_age
