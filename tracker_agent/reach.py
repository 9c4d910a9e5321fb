"""Fast resume: while delivery backs off because the API could not be reached at all
(policy.unreachable), ask a cheap question (one GET system/time, no retries) every
reach_probe_interval seconds; when it is answered, the drain ends the backoff and delivers at
once instead of after up to backoff_cap.

Only the timing and the question live here (no outbox, no HTTP client: the probe is a callable
the agent gives the Drainer); drain.py ends the backoff in the outbox. A probe carries no
tracking data, so it can never deliver a command twice. A backoff a 429 or 5xx started is never
probed: the server asked for time, and gets it.

The same question teaches the agent the server's clock (the agent's probe records each answer
as this boot's reference): ClockGate holds claims back, with clock_correction, until one was
answered in this boot (or the server answered CLOCK_LEARN_ATTEMPTS times without its time),
and asks again every CLOCK_RELEARN_SECONDS.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from .bootclock import boot_id
from .constants import (
    CLOCK_LEARN_ATTEMPTS,
    CLOCK_RELEARN_SECONDS,
    CLOCK_UNKNOWN_RETRY_SECONDS,
)
from .exceptions import APIException
from .outcomes import DrainReport
from .policy import error_text, unreachable

__all__ = ["ClockGate", "Probe", "ReachProbe"]

log = logging.getLogger("tracker_agent.drain")

#: Asks the API a question that sends nothing (GET system/time); raises APIException if
#: there is no answer.
Probe = Callable[[], object]


class ReachProbe:
    """When to probe, and whether the last probe was answered."""

    def __init__(
        self,
        probe: Probe | None,
        interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._interval = interval
        self._clock = clock
        self._next = 0.0  # clock() of the next probe (a new drainer probes at its first look)

    @property
    def enabled(self) -> bool:
        return self._probe is not None

    @property
    def interval(self) -> float:
        return self._interval

    def due(self) -> bool:
        return self._probe is not None and self._clock() >= self._next

    def ask(self) -> APIException | None:
        """Probe now; None if the API answered, else why not (the next is an interval away)."""
        assert self._probe is not None
        self._next = self._clock() + self._interval
        try:
            self._probe()
        except APIException as exc:
            log.debug("reachability probe: no answer (%s)", exc)
            return exc
        return None

    def answered(self, report: DrainReport) -> bool:
        """After a pass: if delivery waits on a backoff that began with no answer at all and a
        probe is due, probe; True if the API answered. A request of this pass that just failed
        so counts as a probe: the next one comes an interval later."""
        if self._probe is None or not report.unreachable or report.backoff_until is None:
            return False
        if report.requests:
            self._next = self._clock() + self._interval
            return False
        return self.due() and self.ask() is None


class ClockStore(Protocol):
    """What the gate needs of the outbox."""

    def knows_clock(self, boot: str) -> bool: ...

    def note_error(self, reason: str, now: float) -> None: ...


class ClockGate:
    """With clock_correction, nothing is claimed (and so frozen uncorrected) before the
    server's clock is known for this boot: the probe learns it, once per boot and outbox.
    Without an answer at all delivery waits as after a request that got none (it would not
    have got one either) and asks again every reach_probe_interval; status shows why.

    A server that answers but not with its time (system/time refused, missing, failing) never
    stalls delivery: after CLOCK_LEARN_ATTEMPTS such answers the gate opens for this boot,
    its commands go out as recorded (counted: clock_unknown) and the clock is asked again,
    at best effort, every CLOCK_UNKNOWN_RETRY_SECONDS until it is learned."""

    def __init__(
        self,
        reach: ReachProbe,
        store: ClockStore,
        *,
        enabled: bool,
        now: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reach = reach
        self._store = store
        self._enabled = enabled and reach.enabled
        self._now = now
        self._clock = clock
        self._ready = False
        self._relearn_at = 0.0  # clock() of the next refresh of the reference
        self._refused = 0  # answers without the server's time, since the last learned one

    def closed(self) -> DrainReport | None:
        """None: claim. Else why not (a report that waits, as after no answer)."""
        if not self._enabled:
            return None
        if self._ready or self._store.knows_clock(boot_id()):
            self._refresh()
            return None
        report = DrainReport(unreachable=True)
        if self._reach.due():
            failure = self._reach.ask()
            if failure is None:
                self._learned()
                return None
            report.last_error = f"no answer to GET system/time: {error_text(failure)}"
            self._store.note_error(report.last_error, self._now())
            if self._gives_up(failure):
                return None
        report.backoff_until = self._now() + self._reach.interval
        return report

    def _learned(self) -> None:
        self._ready, self._refused = True, 0
        self._relearn_at = self._clock() + CLOCK_RELEARN_SECONDS

    def _gives_up(self, failure: APIException) -> bool:
        """The server answered without its time often enough: deliver as recorded."""
        if unreachable(failure):
            return False  # no answer at all: a batch would get none either
        self._refused += 1
        if self._refused < CLOCK_LEARN_ATTEMPTS:
            return False
        log.warning(
            "the server's clock is unknown after %d answers without it to GET system/time:"
            " this boot's timestamps go out as recorded (counted as clock_unknown)",
            self._refused,
        )
        self._ready, self._relearn_at = True, self._clock() + CLOCK_UNKNOWN_RETRY_SECONDS
        return True

    def _refresh(self) -> None:
        """Known (or given up on): ask again now and then, at best effort, so that a long
        boot's reference stays fresh; one never learned is asked for more often."""
        now = self._clock()
        if not self._ready:
            self._ready, self._relearn_at = True, now + CLOCK_RELEARN_SECONDS
        elif now >= self._relearn_at:
            if self._reach.ask() is None or not self._refused:
                self._learned()  # answered, or a known reference stays (a failure changes nothing)
            else:
                self._relearn_at = now + CLOCK_UNKNOWN_RETRY_SECONDS  # still unknown
