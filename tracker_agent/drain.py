"""One drain pass: claim -> build batch -> send -> settle rows, pipelined.

The only module that joins the HTTP client and the outbox. What it applies is pure: the rules
in policy.py (`classify`, `backoff_delay`, `RateLimiter`), and what an answer
does to each row in outcomes.py (`DrainReport`):

- command succeeded                      -> row deleted, counted as delivered
- command rejected inside a 200 batch    -> that row dead-lettered with the server's message
- network error, timeout (incl. the      -> batch retried after exponential backoff with full
  request's total deadline), 429, 5xx,      jitter (capped, Retry-After honoured); drain waits;
  an answer we cannot read (HTML login      last_error shows why
  page, redirect, truncated JSON, no
  "results", wrong result count)
- 401/403, "Could not authenticate",     -> delivery paused (no attempt counted, nothing dead-
  404, a request that could not be sent     lettered); a probe re-sends a batch now and then
  (bad URL, header encoding), any other
  failure that is not a refusal
- the server's refusal of the whole      -> batch split in halves until the bad command is
  batch (400/413 with its JSON error        alone; only it is dead-lettered
  body, 200 "success": false)
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .clock import wall_clock
from .exceptions import APIException
from .outbox import owners
from .outbox import state as state_keys
from .outbox.leases import ClaimedRow, Settlement
from .outbox.store import OutboxStore
from .outcomes import DrainReport, back_off, pause, settle_results
from .policy import Action, DrainPolicy, Limiter, RateLimiter, classify, error_text

__all__ = ["Drainer", "SendBatch"]

log = logging.getLogger(__name__)

#: Sends one batch request of stored commands, given as (name, data JSON text, command_id)
#: triples, and returns one result dict per command in order (Tracking.send_stored_batch).
SendBatch = Callable[[list[tuple[str, str, str]]], list[dict[str, Any]]]


class _Stop(Exception):
    """Raised inside a round to end the pass (backoff or pause began)."""


class _NotSent:
    """The answer of a batch queued behind one whose request failed (or of a stopping pass):
    it was never sent, and its rows go back to the queue as they were."""


NOT_SENT = _NotSent()
Answer = list[dict[str, Any]] | APIException | _NotSent


@dataclass
class _Batch:
    """A claimed batch on its way: its rows, the state seen at claim time, its report."""

    rows: list[ClaimedRow]
    state: dict[str, Any]
    report: DrainReport
    answer: Future[Answer] | None = None
    after: _Batch | None = None  # queued behind this batch's request: sent only if answered


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
        limiter: Limiter | None = None,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.send_batch = send_batch
        self.policy = policy or DrainPolicy()
        self._machine = owners.Machine.here()
        self.owner = owner or owners.make_owner_id(self._machine)
        self._now = now or wall_clock
        self._rng = rng
        self._limiter = limiter or RateLimiter(self.policy.rate_limit)
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        #: time.monotonic() of the last sign of life: a pass began or ended, a request went
        #: out, a batch was settled (the daemon's watchdog reads it).
        self.last_progress = time.monotonic()

    def drain(  # noqa: C901 - to become a depth-2 window of batches (issue 11)
        self,
        *,
        deadline: float | None = None,
        progress: Callable[[DrainReport], None] | None = None,
        stop_on_partial: bool = False,
    ) -> DrainReport:
        """Deliver due rows until none is due, delivery waits (backoff/pause), stop or deadline.

        Pipelined: while one batch's request is in flight, the previous batch is settled and
        the next one claimed (the lease keeps the next batch clear of customers in flight, so
        per-customer order holds). `deadline` is on the `now` clock. With `stop_on_partial`
        the pass ends after a batch smaller than batch_size (the scheduler's ticks). Only one
        pass runs at a time per Drainer.
        """
        report = DrainReport()
        self.last_progress = time.monotonic()
        self.store.reclaim_dead_owners(self._now(), self._machine)
        in_flight: _Batch | None = None  # its request is out (or about to be)
        queued: _Batch | None = None  # launched behind in_flight, goes out the moment it lands
        claimed: _Batch | DrainReport | None = None  # claimed with the last settlement
        caught_up = False
        with self._lock:
            try:
                while True:
                    # Claim beside a flight only when that batch was full (a backlog): beside a
                    # short one, the claim would catch a trickle of new rows one request each.
                    stop = self._should_stop(deadline) or (stop_on_partial and caught_up)
                    ready = in_flight is None or (queued is None and self._is_full(in_flight))
                    begun, claimed = claimed, None
                    if ready and not stop:
                        begun = begun if begun is not None else self._begin()
                        if isinstance(begun, DrainReport):
                            if in_flight is None:
                                if begun.waits:
                                    report.add(begun)
                                break
                        elif in_flight is None:
                            # A short claim with nothing in flight: the queue is caught up.
                            caught_up = not self._is_full(begun)
                            in_flight = self._launch(begun)
                            continue
                        else:
                            queued = self._launch(begun, after=in_flight)
                    elif isinstance(begun, _Batch):  # claimed, then told to stop: give back
                        self._release(begun)
                    if in_flight is None:
                        break
                    # Claim the next batch in the settlement's transaction when the loop will
                    # want one (the same test as `ready`, once queued has taken off).
                    stop = self._should_stop(deadline) or (stop_on_partial and caught_up)
                    claim_next = not stop and (queued is None or self._is_full(queued))
                    finished, claimed = self._land(in_flight, claim_next)
                    in_flight, queued = queued, None
                    if finished is None:  # never sent: nothing to report
                        continue
                    self.last_progress = time.monotonic()
                    report.add(finished)
                    if progress is not None:
                        progress(report)
                    if finished.waits:
                        break
            finally:
                # Claimed but never settled (delivery must wait, or an error): rows go back.
                self._abandon(claimed if isinstance(claimed, _Batch) else None)
                self._abandon(queued)
                self._abandon(in_flight)
        self.last_progress = time.monotonic()
        return report

    def _is_full(self, batch: _Batch) -> bool:
        """The claim hit a cap (commands, or about half the byte cap): more is likely due."""
        p = self.policy
        size = sum(r.size for r in batch.rows)
        return len(batch.rows) >= p.batch_size or size * 2 >= p.batch_max_bytes

    def _launch(self, batch: _Batch, after: _Batch | None = None) -> _Batch:
        """Hand `batch` to the sending thread. With `after`, it waits in that thread's queue
        and goes out as soon as `after`'s request is answered (no hop back through this
        thread), or not at all if that request failed."""
        batch.after = after
        batch.answer = self._executor().submit(self._send, batch)
        return batch

    def _land(
        self, batch: _Batch, claim_next: bool = False
    ) -> tuple[DrainReport | None, _Batch | DrainReport | None]:
        """Wait for the answer of `batch` and settle it (report None if it was never sent);
        with `claim_next`, also claim the next batch in the same transaction."""
        assert batch.answer is not None
        if batch.answer.result() is NOT_SENT:
            self._release(batch)
            return None, None
        return self._finish(batch, claim_next)

    def _should_stop(self, deadline: float | None) -> bool:
        return self.stopping.is_set() or (deadline is not None and self._now() >= deadline)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracker-agent-send")
        return self._pool

    def close(self, wait: bool = True) -> None:
        """Stop the sending thread (idle between passes; a new pass starts it again)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait)

    # -- one batch: begin (state, claim), send, finish (settle) --------------------------------

    def _begin(self) -> _Batch | DrainReport:
        """Claim the next batch, or say why not (`waits`: backoff or pause in force)."""
        now = self._now()
        terms, report = self._claim_terms(now)
        state, rows = self.store.claim_if(self.owner, now=now, **terms)
        return _Batch(rows, state, report) if rows else report

    def _claim_terms(self, now: float) -> tuple[dict[str, Any], DrainReport]:
        """The store's claim arguments (the policy's caps and a may_claim(state) gate), and
        the report the gate fills in when it says no (backoff or pause in force)."""
        report = DrainReport()

        def may_claim(state: dict[str, Any]) -> bool:
            paused = state.get(state_keys.STATE_PAUSED_REASON)
            if paused and now < float(state.get(state_keys.STATE_PROBE_AT) or 0):
                report.paused_reason = paused
                return False
            backoff_until = float(state.get(state_keys.STATE_BACKOFF_UNTIL) or 0)
            if backoff_until > now:
                report.backoff_until = backoff_until
                return False
            return True

        p = self.policy
        terms = {
            "limit": p.batch_size,
            "max_bytes": p.batch_max_bytes,
            "lease_seconds": p.lease_seconds,
            "may_claim": may_claim,
        }
        return terms, report

    def _send(self, batch: _Batch) -> Answer:
        after, batch.after = batch.after, None  # no chain of batches kept alive
        if after is not None:  # one worker thread: `after` has its answer by now
            assert after.answer is not None
            # Held back if the request just before failed (the drain thread decides what
            # comes next: back off, pause or split) or the pass is stopping. A batch queued
            # behind one that was itself held back goes out: that failure was handled before
            # it was claimed.
            if isinstance(after.answer.result(), APIException) or self.stopping.is_set():
                return NOT_SENT
        return self._post(batch)

    def _post(self, batch: _Batch) -> list[dict[str, Any]] | APIException:
        self._limiter.acquire()
        self.last_progress = time.monotonic()  # a request goes out: bounded by its deadline
        batch.report.requests += 1
        try:
            # Payloads were validated and serialised at enqueue: they go out as stored.
            return self.send_batch([(r.kind, r.payload, str(r.id)) for r in batch.rows])
        except APIException as exc:
            return exc

    def _abandon(self, batch: _Batch | None) -> None:
        """Give a claimed batch's rows back (best effort: leases expire anyway). A batch whose
        request was answered is settled from its answer instead, so that an error elsewhere
        never re-sends what the server already took."""
        if batch is None:
            return
        answer = batch.answer  # a send_batch that raised: its error is on its way up already
        if answer is not None and answer.exception() is None and isinstance(answer.result(), list):
            try:
                self._finish(batch)
                return
            except Exception:
                log.warning("could not settle an answered batch", exc_info=True)
        self._release(batch)

    def _release(self, batch: _Batch) -> None:
        """Drop the leases of `batch` (best effort: leases expire anyway)."""
        try:
            released = Settlement(release=[r.id for r in batch.rows])
            self.store.settle(self.owner, released, self._now())
        except Exception:
            log.warning("could not release %d leased rows", len(batch.rows), exc_info=True)

    def _finish(
        self, batch: _Batch, claim_next: bool = False
    ) -> tuple[DrainReport, _Batch | DrainReport | None]:
        """Settle `batch` from its answer; with `claim_next`, claim the next batch in the same
        transaction (returned second: a _Batch, or the report of why there is none)."""
        rows, state, report = batch.rows, batch.state, batch.report
        assert batch.answer is not None
        answer = batch.answer.result()
        assert not isinstance(answer, _NotSent)  # _land and _abandon never finish those
        outcome = Settlement()
        try:
            self._handle(rows, answer, outcome, report, state)
        except _Stop:
            pass
        except BaseException:
            # Unexpected: let the rows go back to the queue untouched before propagating.
            outcome.release_the_rest(r.id for r in rows)
            self.store.settle(self.owner, outcome, self._now())
            raise
        outcome.release_the_rest(r.id for r in rows)
        begun: _Batch | DrainReport | None = None
        now = self._now()
        if claim_next:
            terms, why_not = self._claim_terms(now)
            delivered, next_state, next_rows = self.store.settle_and_claim(
                self.owner, outcome, now, **terms
            )
            begun = _Batch(next_rows, next_state, why_not) if next_rows else why_not
        else:
            delivered = self.store.settle(self.owner, outcome, now)
        report.delivered += delivered
        report.dead_lettered += len(outcome.dead)
        if outcome.dead:
            log.warning(
                "dead-lettered %d command(s), e.g. %d: %s",
                len(outcome.dead),
                outcome.dead[0][0],
                outcome.dead[0][1],
            )
        report.retried += len(outcome.retry)
        paused = state.get(state_keys.STATE_PAUSED_REASON)
        failures = int(state.get(state_keys.STATE_FAILURES) or 0)
        if report.backoff_until is None and not report.paused_reason and (paused or failures):
            why = "a probe batch was accepted" if paused else f"after {failures} failed attempts"
            log.info("delivery resumed: %s", why)
        return report, begun

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
        self.store.renew_leases(self.owner, self._now() + self.policy.lease_seconds)
        batch = _Batch(list(rows), state, report)
        self._handle(rows, self._post(batch), outcome, report, state)

    def _handle(
        self,
        rows: Sequence[ClaimedRow],
        answer: list[dict[str, Any]] | APIException,
        outcome: Settlement,
        report: DrainReport,
        state: dict[str, Any],
    ) -> None:
        """Settle rows from their results; on a whole-batch rejection, bisect. Raises _Stop."""
        if isinstance(answer, APIException):
            action = classify(answer)
            if action is Action.SPLIT:
                self._split(rows, answer, outcome, report, state)
                return
            now = self._now()
            if action is Action.PAUSE:
                pause(rows, answer, outcome, report, state, now=now, policy=self.policy)
            else:
                back_off(
                    rows, answer, outcome, report, state,
                    now=now, policy=self.policy, rng=self._rng,
                )  # fmt: skip
            raise _Stop from answer
        settle_results(rows, answer, outcome, now=self._now(), policy=self.policy)

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
