"""An app's callback run in a thread of its own (the on_settled hook): the drain hands over
what happened and goes on at once, however slow or broken the callback is.

Items are called in the order they were handed over; what the callback raises is logged and
the next item goes on. The thread starts with the first item and is a daemon thread: close()
lets it finish what is queued, for up to a timeout, and a process that exits without close()
never waits for it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger("tracker_agent.agent")

_STOP = None


class HookThread(Generic[T]):
    """Calls `hook(item)` for each item submitted, in a thread named `name`."""

    def __init__(self, hook: Callable[[T], object], name: str) -> None:
        self._hook = hook
        self._name = name
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        """A forked child starts with no thread and nothing queued (the parent calls those)."""
        self._queue: queue.SimpleQueue[Sequence[T] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, items: Sequence[T]) -> None:
        """Queue `items` (never blocks)."""
        if not items:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._queue.put(items)

    def _run(self) -> None:
        while True:
            items = self._queue.get()
            if items is _STOP:
                return
            for item in items:
                try:
                    self._hook(item)
                except Exception:
                    log.exception("the %s callback raised; delivery goes on", self._name)

    def close(self, timeout: float) -> bool:
        """Let the thread call what is queued, for up to `timeout` seconds; True if it did."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None:
            return True
        self._queue.put(_STOP)
        thread.join(timeout)
        return not thread.is_alive()
