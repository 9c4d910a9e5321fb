"""What to do with one batch's answer, the bisection of a refused batch included: the server's
per-command results, a transient failure (backoff), a credentials or configuration fault
(pause), or the server's refusal of the whole batch, split in halves (each sent as its own
request, leases renewed first) until the bad command is alone and only it is dead-lettered.

The rules are policy.classify's; what each does to rows is outcomes.py's. This module only
sequences them and sends the halves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from .exceptions import APIException
from .outbox.leases import ClaimedRow, Settlement
from .outcomes import DrainReport, back_off, pause, settle_results
from .policy import Action, DrainPolicy, classify, error_text

__all__ = ["AnswerHandler", "Answered"]

log = logging.getLogger("tracker_agent.drain")

#: One request's answer: a result per command, or the failure of the whole request.
Answered = list[dict[str, Any]] | APIException
#: Sends `rows` as one request now (rate-limited) and returns its answer.
Post = Callable[[Sequence[ClaimedRow], dict[str, Any], DrainReport], Answered]


class AnswerHandler:
    """Turns answers into a Settlement; sends the halves of a refused batch itself."""

    def __init__(
        self,
        *,
        post: Post,
        renew: Callable[[], object],
        policy: DrainPolicy,
        now: Callable[[], float],
        rng: Callable[[], float],
    ) -> None:
        self._post = post
        self._renew = renew
        self._policy = policy
        self._now = now
        self._rng = rng

    def _deliver(
        self,
        rows: Sequence[ClaimedRow],
        outcome: Settlement,
        report: DrainReport,
        state: dict[str, Any],
    ) -> None:
        """Send `rows` now, as one request, and handle the answer (the bisection's path). The
        leases of the whole batch being split are renewed first: its halves go out one after
        another, which may take longer than the lease taken for one request."""
        self._renew()
        self.handle(rows, self._post(rows, state, report), outcome, report, state)

    def handle(
        self,
        rows: Sequence[ClaimedRow],
        answer: list[dict[str, Any]] | APIException,
        outcome: Settlement,
        report: DrainReport,
        state: dict[str, Any],
    ) -> None:
        """Settle rows from their results; on a whole-batch rejection, bisect. A backoff or
        pause that begins shows in `report.waits`."""
        if isinstance(answer, APIException):
            action = classify(answer)
            if action is Action.SPLIT:
                self._split(rows, answer, outcome, report, state)
                return
            now = self._now()
            if action is Action.PAUSE:
                pause(rows, answer, outcome, report, state, now=now, policy=self._policy)
            else:
                back_off(
                    rows, answer, outcome, report, state,
                    now=now, policy=self._policy, rng=self._rng,
                )  # fmt: skip
            return
        settle_results(rows, answer, outcome, now=self._now(), policy=self._policy, state=state)

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
            if report.waits:  # a half met a backoff or pause: the rest waits too (released)
                return
            self._deliver(half, outcome, report, state)
