"""Group commit: many threads' writes share one transaction and one fsync.

A caller that finds no commit in progress becomes the leader and writes its item at once (no
thread hop: single-thread latency is that of a plain commit). Callers that arrive while a
commit is in progress queue up and sleep, each on its own lock. When the leader's round is
written it wakes exactly the callers whose items were in it, and hands the lead to the first
queued caller, who writes everything queued by then in one transaction. So N waiting callers
cost one fsync instead of N, nobody is woken for nothing, and nobody leads for others'
sake more than once. Every caller returns only after its own item is committed, or raises its
own error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

#: write(items) -> one entry per item: None (committed) or the exception for that item alone.
#: If write raises, every item of that round gets the exception.
WriteFn = Callable[[Sequence[T]], Sequence[BaseException | None]]


class _Request(Generic[T]):
    __slots__ = ("item", "done", "error", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False  # written (error None) or failed (error set)
        self.error: BaseException | None = None
        self.wake = threading.Lock()  # held until the request is done or must lead
        self.wake.acquire()


class GroupCommitter(Generic[T]):
    """Serialises writers into rounds; see the module docstring."""

    def __init__(self, write: WriteFn[T]) -> None:
        self._write = write
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        """Fresh lock and queue (a forked child must not inherit a lock held by a dead thread)."""
        self._mutex = threading.Lock()
        self._queue: list[_Request[T]] = []  # waiting, not yet taken into a round
        self._leading = False  # invariant: a non-empty queue has a leader to serve it

    @property
    def queued(self) -> int:
        """Callers waiting for the round in progress to finish (0 when none is)."""
        with self._mutex:
            return len(self._queue)

    def submit(self, item: T) -> None:
        """Write `item`; return once it is committed, or raise its error."""
        with self._mutex:
            lone = not self._leading
            if lone:
                self._leading = True
            else:
                request = _Request(item)
                self._queue.append(request)
        if lone:  # nobody to wait for or to take along: no request object, no round list
            try:
                error = self._write((item,))[0]
            except BaseException as exc:
                error = exc
            finally:
                self._hand_over()
            if error is not None:
                raise error
            return
        try:
            request.wake.acquire()  # until our round is written or the lead passes to us
        except BaseException:  # KeyboardInterrupt while waiting: leave, but keep others going
            self._abandon(request)
            raise
        if not request.done:
            with self._mutex:  # we lead: everything queued so far, ours first
                round_, self._queue = self._queue, []
            self._lead(round_)
        if request.error is not None:
            raise request.error

    def _lead(self, round_: list[_Request[T]]) -> None:
        errors: Sequence[BaseException | None] = ()
        try:
            errors = self._write([r.item for r in round_])
        except BaseException as exc:  # the round failed as a whole: every caller learns why
            errors = [exc] * len(round_)
        finally:
            try:
                for req, err in zip(round_, errors, strict=True):
                    req.error = err
                    req.done = True
                    if req is not round_[0]:  # the first is the leader itself, awake
                        req.wake.release()
            finally:
                self._hand_over()

    def _abandon(self, request: _Request[T]) -> None:
        with self._mutex:
            if request not in self._queue:
                return  # a leader has taken it into its round: it may yet be written
            promoted = request.wake.acquire(blocking=False)  # only the lead releases it
            self._queue.remove(request)
            if promoted:  # pass the lead on, as _hand_over would have done for us
                self._pass_lead()

    def _hand_over(self) -> None:
        """After a round: wake the first queued caller to lead the next one, or stand down."""
        with self._mutex:
            self._pass_lead()

    def _pass_lead(self) -> None:
        # Holding _mutex.
        if self._queue:
            self._queue[0].wake.release()
        else:
            self._leading = False
