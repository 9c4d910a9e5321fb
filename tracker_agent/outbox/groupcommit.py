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
        # A plain Lock is taken with C-level `with`; the Condition on it is only touched when
        # a caller has to wait (counted in _waiting), so a lone caller never pays for it.
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._queue: list[_Request[T]] = []
        self._leading = False
        self._waiting = 0

    def submit(self, item: T) -> None:
        """Write `item`; return once it is committed, or raise its error."""
        with self._mutex:
            lone = not self._leading and not self._queue
            if lone:
                self._leading = True
        if lone:  # nobody to wait for or to take along: no request object, no round list
            try:
                error = self._write((item,))[0]
            except BaseException as exc:
                error = exc
            finally:
                with self._mutex:
                    self._leading = False
                    if self._waiting:
                        self._cond.notify_all()
            if error is not None:
                raise error
            return
        self._submit_in_round(item)

    def _submit_in_round(self, item: T) -> None:
        request = _Request(item)
        with self._mutex:
            if self._leading:
                self._queue.append(request)
                self._waiting += 1
                try:
                    while self._leading and not request.done:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
                if request.done:
                    self._raise_if_failed(request)
                    return
                # The last leader finished before our rows were taken: we lead the next round
                # with everything queued meanwhile (ours is in there).
                round_, self._queue = self._queue, []
            else:
                round_ = [*self._queue, request] if self._queue else [request]
                self._queue = []
            self._leading = True
        errors: Sequence[BaseException | None] = ()
        try:
            errors = self._write([r.item for r in round_])
        except BaseException as exc:  # the round failed as a whole: every caller learns why
            errors = [exc] * len(round_)
        finally:
            with self._mutex:
                try:
                    for req, err in zip(round_, errors, strict=True):
                        req.error = err
                        req.done = True
                finally:
                    self._leading = False
                    if self._waiting:
                        self._cond.notify_all()
        self._raise_if_failed(request)

    @staticmethod
    def _raise_if_failed(request: _Request[T]) -> None:
        if request.error is not None:
            raise request.error
