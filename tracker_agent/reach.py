"""Fast resume: while delivery backs off because the API could not be reached at all
(policy.unreachable), ask a cheap question (one GET system/time, no retries) every
reach_probe_interval seconds; when it is answered, the drain ends the backoff and delivers at
once instead of after up to backoff_cap.

Only the timing and the question live here (no outbox, no HTTP client: the probe is a callable
the agent gives the Drainer); drain.py ends the backoff in the outbox. A probe carries no
tracking data, so it can never deliver a command twice. A backoff a 429 or 5xx started is never
probed: the server asked for time, and gets it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .exceptions import APIException
from .outcomes import DrainReport

__all__ = ["Probe", "ReachProbe"]

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
