"""The drain thread's side of a batch that came back: settle it from its answer (and claim the
next batch, in the same transaction or right after), give its rows back, or abandon it.

drain.py keeps the window and the sending thread; this module owns what happens to a batch's
rows once its answer (or the decision not to send it) is known. What an answer does to each
row is settle.py's AnswerHandler (and outcomes.py's rules).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .outbox import state as state_keys
from .outbox.leases import ClaimedRow, Settlement
from .outbox.store import OutboxStore
from .outcomes import DrainReport, claim_terms
from .policy import DrainPolicy
from .settle import AnswerHandler
from .window import Batch, Claim, NotSent, answered_in_full

__all__ = ["Lander"]

log = logging.getLogger("tracker_agent.drain")


class Lander:
    """Settles, releases and abandons one drainer's batches (the drain thread only)."""

    def __init__(
        self,
        store: OutboxStore,
        owner: str,
        policy: DrainPolicy,
        answers: AnswerHandler,
        *,
        now: Callable[[], float],
        claim: Callable[[bool], Claim],
    ) -> None:
        self._store = store
        self._owner = owner
        self._policy = policy
        self._answers = answers
        self._now = now
        self._claim = claim  # claim(follow_own) -> Claim: the Drainer's own claim
        self._resumed_from: tuple[Any, ...] | None = None  # the failure last logged as over

    def claimed(self, rows: list[ClaimedRow], state: dict[str, Any], report: DrainReport) -> Claim:
        """A claim's rows as the batches they go out in (policy.claim_batches at most)."""
        p = self._policy
        return Claim.of(rows, state, report, p.batch_size, p.batch_max_bytes)

    def finish(
        self, batch: Batch, claim_next: bool = False, *, defer: bool = False
    ) -> tuple[DrainReport, Claim | None]:
        """Settle `batch` from its answer; with `claim_next`, claim the next batch (returned
        second) in the same transaction. A batch queued behind this one goes out once this
        outcome is durable: recorded first (outbox/settling.py), or settled if it will be
        held back. With `defer` (the drain holds the next batch already), an outcome that
        lets the queued batch go is only recorded: the next claim's transaction applies it,
        so one transaction settles two batches."""
        rows, state, report = batch.rows, batch.state, batch.report
        assert batch.answer is not None
        answer = batch.answer.result()
        assert not isinstance(answer, NotSent)  # never finished: they are released
        outcome = Settlement()
        try:
            self._answers.handle(rows, answer, outcome, report, state)
        except BaseException:
            # Unexpected: let the rows go back to the queue untouched before propagating.
            outcome.release_the_rest(r.id for r in rows)
            self._store.settle(self._owner, outcome, self._now())
            raise
        outcome.release_the_rest(r.id for r in rows)
        outcome.receipts = {r.id: r.attempts + 1 for r in rows if r.receipt}
        begun: Claim | None = None
        now = self._now()
        if defer and batch.followed and answered_in_full(answer):
            self._store.record_settlement(self._owner, outcome, now)
            batch.clear_the_way(True)
            delivered = len(outcome.delivered)  # as recorded: applied with the next claim
        elif not claim_next:
            delivered = self._store.settle(self._owner, outcome, now)
        elif batch.followed and not answered_in_full(answer):
            # The batch queued behind this one will be held back: settle, tell it, claim.
            delivered = self._store.settle(self._owner, outcome, now)
            batch.clear_the_way(False)
            begun = self._claim(True)
        else:
            recorded: int | None = None
            if batch.followed:
                # A batch waits in the sending thread for this outcome to be durable: commit
                # it as one small record (outbox/settling.py), let that batch go, then apply
                # it and claim in one transaction while that batch is on the wire. Applying
                # the outcome before letting the batch go held a drain at a raised rate limit
                # to about half a bare session's rate.
                recorded = self._store.record_settlement(self._owner, outcome, now)
                batch.clear_the_way(True)
            terms, why_not = claim_terms(self._policy, now)
            delivered, next_state, next_rows = self._store.settle_and_claim(
                self._owner, outcome, now, follow_own=True, recorded=recorded, **terms
            )
            begun = self.claimed(next_rows, next_state, why_not)
        self._count(report, outcome, delivered)
        self._log_resumed(state, report)
        return report, begun

    def release(self, batch: Batch) -> None:
        """Drop the leases of `batch` (best effort: leases expire anyway)."""
        try:
            released = Settlement(release=[r.id for r in batch.rows])
            self._store.settle(self._owner, released, self._now())
        except Exception:
            log.warning("could not release %d leased rows", len(batch.rows), exc_info=True)

    def abandon(self, batch: Batch | None) -> None:
        """Give a claimed batch's rows back (best effort: leases expire anyway). A batch whose
        request was answered is settled from its answer instead, so that an error elsewhere
        never re-sends what the server already took."""
        if batch is None:
            return
        try:
            self._settle_or_release(batch)
        finally:
            batch.clear_the_way(False)  # whatever waits behind it is given back unsent

    def _settle_or_release(self, batch: Batch) -> None:
        answer = batch.answer  # a send_batch that raised: its error is on its way up already
        if answer is not None and answer.exception() is None and isinstance(answer.result(), list):
            try:
                self.finish(batch)
                return
            except Exception:
                log.warning("could not settle an answered batch", exc_info=True)
        self.release(batch)

    @staticmethod
    def _count(report: DrainReport, outcome: Settlement, delivered: int) -> None:
        report.delivered += delivered
        report.dead_lettered += len(outcome.dead)
        report.retried += len(outcome.retry)
        if outcome.dead:
            row_id, reason, _status = outcome.dead[0]
            log.warning(
                "dead-lettered %d command(s), e.g. %d: %s", len(outcome.dead), row_id, reason
            )

    def _log_resumed(self, state: dict[str, Any], report: DrainReport) -> None:
        """One INFO line when a batch claimed during a pause or backoff was accepted: the two
        batches of the window were claimed under the same state, and only one says so."""
        paused = state.get(state_keys.STATE_PAUSED_REASON)
        failures = int(state.get(state_keys.STATE_FAILURES) or 0)
        if report.backoff_until is not None or report.paused_reason or not (paused or failures):
            return
        episode = (paused, failures, state.get(state_keys.STATE_BACKOFF_UNTIL))
        if episode == self._resumed_from:
            return
        self._resumed_from = episode
        why = "a probe batch was accepted" if paused else f"after {failures} failed attempts"
        log.info("delivery resumed: %s", why)
