"""Group commit: many threads' writes share one transaction and one fsync.

A caller that finds no commit in progress becomes the leader and writes every request queued
so far in one transaction; callers that arrive meanwhile wait, and the next of them leads the
next commit. A lone caller leads at once (no thread hop), so single-thread latency is that of a
plain commit, while N waiting callers cost one fsync instead of N. Every caller returns only
after its own rows are committed, or raises its own error.
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
    __slots__ = ("item", "done", "error")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = False
        self.error: BaseException | None = None


class GroupCommitter(Generic[T]):
    """Serialises writers into rounds; see the module docstring."""

    def __init__(self, write: WriteFn[T]) -> None:
        self._write = write
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        """Fresh lock and queue (a forked child must not inherit a lock held by a dead thread)."""
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_Request[T]] = []
        self._leading = False

    def submit(self, item: T) -> None:
        """Write `item`; return once it is committed, or raise its error."""
        request = _Request(item)
        with self._cond:
            self._queue.append(request)
            while self._leading and not request.done:
                self._cond.wait()
            if request.done:
                self._raise_if_failed(request)
                return
            self._leading = True
            # Everything queued, the leader's own request included (the queue is bounded by
            # the number of waiting threads).
            round_, self._queue = self._queue, []
        try:
            self._run_round(round_)
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()
        self._raise_if_failed(request)

    def _run_round(self, round_: list[_Request[T]]) -> None:
        try:
            errors = self._write([r.item for r in round_])
        except BaseException as exc:  # the round failed as a whole: every caller learns why
            errors = [exc] * len(round_)
        with self._cond:
            for req, err in zip(round_, errors, strict=True):
                req.error = err
                req.done = True

    @staticmethod
    def _raise_if_failed(request: _Request[T]) -> None:
        if request.error is not None:
            raise request.error
