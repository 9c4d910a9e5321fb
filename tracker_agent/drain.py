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
from collections import deque
from collections.abc import Callable, Sequence

from .clock import wall_clock
from .landing import Lander
from .outbox import owners
from .outbox.store import OutboxStore
from .outcomes import DrainReport, claim_terms
from .policy import DrainPolicy, Limiter, RateLimiter
from .pruning import ReceiptPruner
from .reach import ClockGate, Probe, ReachProbe
from .sending import SendBatch, Sender
from .settle import AnswerHandler
from .tally import DeliveryTally
from .window import NOT_SENT, Batch, Claim, answered_in_full, last

__all__ = ["Drainer", "SendBatch"]

log = logging.getLogger(__name__)


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
        tally: DeliveryTally | None = None,
        probe: Probe | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        self.store = store
        self.send_batch = send_batch  # looked up at each request (tests replace it)
        self.policy = policy or DrainPolicy()
        self._machine = owners.Machine.here()
        self.owner = owner or owners.make_owner_id(self._machine)
        self._now = now or wall_clock
        self._lock = threading.Lock()
        #: Set to end the pass after the batches on their way (shared by a DrainerGroup).
        self.stopping = stopping or threading.Event()
        #: The sending thread; its tally counts requests by outcome, durations, waits.
        self.sender = Sender(
            lambda commands: self.send_batch(commands),
            limiter or RateLimiter(self.policy.rate_limit),
            self.stopping,
            alive=self._alive,
            tally=tally,
        )
        self._answers = AnswerHandler(
            post=lambda rows, state, report: self.sender.post(Batch(list(rows), state, report)),
            renew=lambda: self.store.renew_leases(
                self.owner, self._now() + self.policy.lease_seconds
            ),
            policy=self.policy,
            now=self._now,
            rng=rng,
        )
        #: Fast resume: `probe` (GET system/time) ends a backoff that began with no answer.
        self._reach = ReachProbe(probe, self.policy.reach_probe_interval)
        self._clock_gate = ClockGate(
            self._reach, self.store, enabled=self.policy.clock_correction, now=self._now
        )
        self._prune_receipts = ReceiptPruner(self.store, self.policy, self._now)
        self._lander = Lander(
            self.store, self.owner, self.policy, self._answers, now=self._now, claim=self._claim
        )
        #: time.monotonic() of the last sign of life: a pass began or ended, a request went
        #: out, a batch was settled (the daemon's watchdog reads it).
        self.last_progress = time.monotonic()

    @property
    def owners(self) -> tuple[str, ...]:
        """The owner ids this drainer leases rows under (one; a DrainerGroup has several)."""
        return (self.owner,)

    def drain(
        self,
        *,
        deadline: float | None = None,
        progress: Callable[[DrainReport], None] | None = None,
        stop_on_partial: bool = False,
    ) -> DrainReport:
        """Deliver due rows until none is due, delivery waits (backoff/pause), stop or deadline.

        A window of at most two batches: the first's request is in flight; the second, claimed
        only while a full batch is in flight (a backlog; beside a short one the claim would
        catch a trickle of new rows one request each), waits in the sending thread and goes
        out the moment the first's outcome is durable, if it was answered in full (else it is
        given back unsent). It may hold the next commands of the first's customers (a single
        customer's backlog pipelines too): nothing else of ours, and no other drainer's lease,
        is passed, so per-customer order holds; and at most one batch is ever answered but
        without a durable outcome, so a crash re-sends at most one batch. The outcome is made
        durable as one small record (outbox/settling.py), so the next batch goes out without
        waiting for the outbox writes; those are applied in the transaction that claims the
        batch after it. A claim may take two batches (policy.claim_batches, as many as the lease
        outlives): the second joins the window when the first is sent, and the outcome that
        lets it go is only recorded, so one transaction applies two batches' outcomes and
        claims the next two. `deadline` is on the `now` clock. With `stop_on_partial` the pass ends
        after a batch smaller than batch_size (the scheduler's ticks). Only one pass runs at a
        time per Drainer.

        When delivery waits on a backoff that began with no answer at all (refused, reset,
        DNS, timeout), a probe (given to the Drainer) is due every reach_probe_interval; if
        the API answers it, the backoff ends and the pass goes on delivering (fast resume).
        """
        waiting = self._clock_gate.closed()
        if waiting is not None:
            return waiting
        report = self._pass(deadline, progress, stop_on_partial)
        if self._resumes(report, deadline):
            log.info("the API answers again: the backoff ends, delivery resumes now")
            report.add(self._pass(deadline, progress, stop_on_partial))
        return report

    def _resumes(self, report: DrainReport, deadline: float | None) -> bool:
        """A probe was due and answered, and the backoff in force (still one that began with
        no answer at all) was ended in the outbox."""
        if self.should_stop(deadline) or not self._reach.answered(report):
            return False
        return self.store.end_unreachable_backoff(self._now())

    def _pass(
        self,
        deadline: float | None,
        progress: Callable[[DrainReport], None] | None,
        stop_on_partial: bool,
    ) -> DrainReport:
        report = DrainReport()
        self._alive()
        self.store.reclaim_dead_owners(self._now(), self._machine)
        self._prune_receipts()
        window: deque[Batch] = deque()  # [0] in flight; [1] queued behind it
        # Claimed, not yet in the window: by the last settlement's transaction, or the
        # batches after the first of a claim of several (policy.claim_batches).
        pending: Claim | None = None
        caught_up = False  # a short batch went out alone: nothing more was due then

        def done() -> bool:
            return self.should_stop(deadline) or (stop_on_partial and caught_up)

        with self._lock:
            try:
                while True:
                    claim, pending = pending, None
                    if not done() and self._has_room(window):
                        claim = claim or self._claim(follow_own=bool(window))
                        if claim.batch is not None:
                            caught_up = caught_up if window else not self._is_full(claim.batch)
                            window.append(self.sender.launch(claim.batch, after=last(window)))
                            pending = claim.after_first()
                            continue
                    elif claim is not None:
                        pending = self._keep_or_give_back(claim, done())
                    if not window:
                        report.add_waits(claim.report if claim is not None else None)
                        break
                    # The next batch is claimed with this settlement, unless one is in hand:
                    # then this outcome is only recorded, and applied with the next claim.
                    in_hand = pending is not None and not done()
                    claim_next = not in_hand and not done() and self._has_room(list(window)[1:])
                    finished, begun = self._land(window[0], claim_next, defer=in_hand)
                    pending = begun or pending
                    window.popleft()  # only now: a batch that failed to land is abandoned
                    if finished is None:  # held back: so is what was claimed behind it
                        self._release_held_back(window, pending)
                        pending = None
                    if finished is not None and self._record(report, finished, progress):
                        break
            finally:
                # Claimed but never settled (delivery must wait, or an error): rows go back.
                self._abandon_all(pending, window)
        self._alive()
        return report

    def _record(
        self,
        report: DrainReport,
        finished: DrainReport,
        progress: Callable[[DrainReport], None] | None,
    ) -> bool:
        """Add a settled batch's report to the pass's; True if delivery must now wait."""
        self._alive()
        report.add(finished)
        if progress is not None:
            progress(report)
        return finished.waits

    def _release_held_back(self, window: deque[Batch], pending: Claim | None) -> None:
        """Empty the window behind a batch that was never sent, and give back the batches
        claimed after them: what waits behind it is held back too (it may follow that batch's
        customers), and a batch claimed now must not queue behind it, or each claim would
        take the rows just released and be held back in turn."""
        while window:
            self._land(window[0])
            window.popleft()
        if pending is not None:
            self._give_back(pending)

    def _keep_or_give_back(self, claim: Claim, stopping: bool) -> Claim | None:
        """A claim that cannot join the window now: kept for when the batch in flight is
        answered, or given back if the pass is stopping."""
        if stopping:
            self._give_back(claim)
            return None
        return claim

    def _give_back(self, claim: Claim) -> None:
        for batch in claim.batches():
            self._lander.release(batch)

    def _abandon_all(self, pending: Claim | None, window: deque[Batch]) -> None:
        for batch in pending.batches() if pending is not None else []:
            self._lander.abandon(batch)
        for batch in window:
            self._lander.abandon(batch)

    def _has_room(self, window: Sequence[Batch]) -> bool:
        """Another batch may join the window: nothing is in flight, or one full batch is."""
        return not window or (len(window) == 1 and self._is_full(window[0]))

    def _alive(self) -> None:
        self.last_progress = time.monotonic()

    def _is_full(self, batch: Batch) -> bool:
        """The claim hit a cap (commands, or about half the byte cap): more is likely due."""
        p = self.policy
        size = sum(r.size for r in batch.rows)
        return len(batch.rows) >= p.batch_size or size * 2 >= p.batch_max_bytes

    def _land(
        self, batch: Batch, claim_next: bool = False, defer: bool = False
    ) -> tuple[DrainReport | None, Claim | None]:
        """Wait for the answer of `batch` and settle it (report None if it was never sent);
        with `claim_next`, also claim the next batch in the same transaction; with `defer`,
        only record its outcome when it lets the batch behind it go (see Lander.finish)."""
        assert batch.answer is not None
        cleared = False
        try:
            answer = batch.answer.result()
            if answer is NOT_SENT:
                self._lander.release(batch)
                return None, None
            finished = self._lander.finish(batch, claim_next, defer=defer)
            cleared = answered_in_full(answer)
            return finished
        finally:
            batch.clear_the_way(cleared)

    def close(self, wait: bool = True) -> None:
        """Stop the sending thread (idle between passes; a new pass starts it again)."""
        self.sender.close(wait)

    def should_stop(self, deadline: float | None) -> bool:
        """The pass must end: stop was asked, or `deadline` (the `now` clock) has passed."""
        return self.stopping.is_set() or (deadline is not None and self._now() >= deadline)

    # -- one batch: begin (state, claim), send, finish (settle) --------------------------------

    def _claim(self, follow_own: bool = False) -> Claim:
        """Claim the next batch, or say why not. With `follow_own` (a batch of ours is in
        flight), the batch may hold the next commands of that batch's customers: it is then
        sent only behind an answer in full (see Sender)."""
        now = self._now()
        terms, report = claim_terms(self.policy, now)
        state, rows = self.store.claim_if(self.owner, now=now, follow_own=follow_own, **terms)
        return self._lander.claimed(rows, state, report)
