"""Several drainers in one process, so that several batches are on the wire at once.

One Drainer has one request on the wire at a time: the batch behind waits for the answer of the
batch in flight, whatever customers it holds. Far from the API that answer is the bound: at 50
ms a round trip, one drainer delivers about 800 events/s of the 5,000 the API allows.
`concurrent_batches = N` runs N drainers in this process, each with its own owner id, its own
sending thread and its own window, as N drainers on N hosts would, sharing what one host
shares: the outbox connection, the host-wide rate limit and the delivery tally.

Per-customer order holds as it does between any two drainers: a customer whose rows one drainer
has leased is skipped by every other until they are settled (outbox/leases.py, pg_claim.py).
So concurrency needs customers: a backlog of one customer, or of fewer customers than a batch
holds, still goes one request at a time. What changes is the duplicate bound: each drainer may
have one batch answered but not yet settled, so a crash re-sends at most N batches, not one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from .drain import Drainer, SendBatch
from .outcomes import DrainReport

__all__ = ["DrainerGroup", "merge_reports"]

#: A lane whose pass sent nothing looks again no sooner than this (and a waiting lane checks
#: this often for a stop or a deadline).
IDLE_LOOK_SECONDS = 0.05


def merge_reports(reports: Sequence[DrainReport]) -> DrainReport:
    """The drainers' reports as one. DrainReport.add keeps the wait state of the report added
    last: the ones that wait (a pause before a backoff) go last, so it survives."""
    merged = DrainReport()
    for report in sorted(reports, key=lambda r: (r.waits, bool(r.paused_reason))):
        merged.add(report)
    return merged


class DrainerGroup:
    """`drainers` draining side by side: `drain()` runs them all and returns their reports
    merged. The interface is Drainer's where the agent uses it (stopping, last_progress,
    owners, send_batch, close)."""

    def __init__(self, drainers: Sequence[Drainer]) -> None:
        if len(drainers) < 2:
            raise ValueError("a DrainerGroup needs at least two drainers")
        first = drainers[0]
        if any(d.stopping is not first.stopping for d in drainers):
            raise ValueError("the drainers of a group must share one stopping event")
        self.drainers = tuple(drainers)
        self.stopping = first.stopping
        self.policy = first.policy
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # one drain() at a time

    @property
    def owner(self) -> str:
        """The first drainer's owner id (see `owners` for all of them)."""
        return self.drainers[0].owner

    @property
    def owners(self) -> tuple[str, ...]:
        return tuple(d.owner for d in self.drainers)

    @property
    def send_batch(self) -> SendBatch:
        return self.drainers[0].send_batch

    @send_batch.setter
    def send_batch(self, send: SendBatch) -> None:
        for drainer in self.drainers:
            drainer.send_batch = send

    @property
    def last_progress(self) -> float:
        """The latest sign of life of any drainer (the watchdog's reading)."""
        return max(d.last_progress for d in self.drainers)

    def drain(
        self,
        *,
        deadline: float | None = None,
        progress: Callable[[DrainReport], None] | None = None,
        stop_on_partial: bool = False,
    ) -> DrainReport:
        """Passes of every drainer at once (see Drainer.drain), the first in the calling
        thread; returns when each has ended, their reports merged. `progress` gets the merged
        report so far, from one thread at a time.

        A drainer whose pass ended while another still delivers (the customers due were all
        held by the others, or it caught up) starts a new pass when one of them settles a
        batch, rather than idle until the slowest ends; not after a wait (a backoff or a
        pause is the host's: every drainer meets it). The last one running ends as a lone
        Drainer would, so a pass of the group ends when each has."""
        with self._lock:
            run = _Run(self.drainers, deadline, progress, stop_on_partial)
            pool = self._executor()
            others = [pool.submit(run.lane, i) for i in range(1, len(self.drainers))]
            try:
                run.lane(0)
            finally:
                # Every lane ends on its own (nothing due, a wait, stop, deadline): each is
                # waited for, so no drainer's batch is left unsettled behind a returned pass.
                errors = [e for e in map(_error_of, others) if e is not None]
            if errors:
                raise errors[0]
            return run.merged()

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=len(self.drainers) - 1, thread_name_prefix="tracker-agent-drain"
            )
        return self._pool

    def close(self, wait: bool = True) -> None:
        """Stop every drainer's sending thread and the group's drain threads."""
        for drainer in self.drainers:
            drainer.close(wait)
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait)


def _error_of(future: Future[None]) -> BaseException | None:
    try:
        future.result()
    except BaseException as exc:  # raised by drain() once every lane has ended
        return exc
    return None


class _Run:
    """One DrainerGroup.drain call: each drainer's passes in its lane, what they reported,
    and which lanes still deliver."""

    def __init__(
        self,
        drainers: Sequence[Drainer],
        deadline: float | None,
        progress: Callable[[DrainReport], None] | None,
        stop_on_partial: bool,
    ) -> None:
        self._drainers = drainers
        self._deadline = deadline
        self._progress = progress
        self._stop_on_partial = stop_on_partial
        self._changed = threading.Condition()  # a batch was settled, or a pass ended
        self._settles = 0  # batches settled by any lane in this run
        self._active: set[int] = set()  # lanes in a pass
        self._passes: list[list[DrainReport]] = [[] for _ in drainers]  # ended passes
        self._current = [DrainReport() for _ in drainers]  # the pass in progress, so far

    def lane(self, index: int) -> None:
        """Passes of drainer `index` until one ends on a wait or a stop, or ends when no other
        lane is in a pass and nothing was settled since it began."""
        drainer = self._drainers[index]
        while True:
            with self._changed:
                self._active.add(index)
                seen = self._settles
            try:
                report = drainer.drain(
                    deadline=self._deadline,
                    progress=lambda so_far: self._settled(index, so_far),
                    stop_on_partial=self._stop_on_partial,
                )
            finally:
                with self._changed:
                    self._active.discard(index)
                    self._changed.notify_all()
            with self._changed:
                self._passes[index].append(report)
                self._current[index] = DrainReport()
                idle = report.requests == 0
                if report.waits or not self._wait_for_news(drainer, seen, idle):
                    return

    def _wait_for_news(self, drainer: Drainer, seen: int, idle: bool) -> bool:
        """Under the lock: True once a batch was settled since `seen` (customers may be free,
        more may be due: look again); False if the pass must stop, or no lane is in a pass
        (nothing more will change). Every pass after the first follows a settle, so a lane
        never loops on passes that find nothing; after one that sent nothing (a backlog of
        fewer customers than the lanes could hold) it looks again only IDLE_LOOK_SECONDS
        later, so that idle lanes do not claim once per batch of the busy one."""
        not_before = time.monotonic() + (IDLE_LOOK_SECONDS if idle else 0.0)
        while not drainer.should_stop(self._deadline):
            if self._settles != seen and time.monotonic() >= not_before:
                return True
            if not self._active:
                return False
            self._changed.wait(IDLE_LOOK_SECONDS)
        return False

    def _settled(self, index: int, so_far: DrainReport) -> None:
        with self._changed:
            self._current[index] = so_far
            self._settles += 1
            self._changed.notify_all()
            if self._progress is not None:
                self._progress(self.merged())

    def merged(self) -> DrainReport:
        return merge_reports([r for passes in self._passes for r in passes] + self._current)
