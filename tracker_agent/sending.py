"""The drain's sending thread: one request at a time, through the host's rate limit.

A batch handed over (`launch`) is posted by the one sending thread. A batch queued behind
another waits there until that one's outcome is durable (recorded or settled), and goes out
only if that one was answered in full and the pass is not stopping; otherwise it comes back
NOT_SENT, unsent, for the drain thread to give back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .exceptions import APIException
from .outcomes import request_outcome
from .policy import Limiter
from .tally import DeliveryTally
from .window import NOT_SENT, Answer, Batch

__all__ = ["Sender", "SendBatch"]

#: Sends one batch request of stored commands, given as (name, data JSON text, command_id)
#: triples, and returns one result dict per command in order (Tracking.send_stored_batch).
SendBatch = Callable[[list[tuple[str, str, str]]], list[dict[str, Any]]]


class Sender:
    """Posts batches for one Drainer: `send_batch` through `limiter`, counted in `tally`;
    `alive()` is called as each request goes out (the watchdog's sign of life)."""

    def __init__(
        self,
        send_batch: SendBatch,
        limiter: Limiter,
        stopping: threading.Event,
        alive: Callable[[], None],
        tally: DeliveryTally | None = None,
    ) -> None:
        self._send_batch = send_batch
        self._limiter = limiter
        self._stopping = stopping
        self._alive = alive
        self.tally = tally
        self._pool: ThreadPoolExecutor | None = None

    def launch(self, batch: Batch, after: Batch | None = None) -> Batch:
        """Hand `batch` to the sending thread. With `after`, it waits in that thread until
        `after`'s outcome is committed, and goes out at once if that batch was answered in
        full, or not at all."""
        batch.after = after
        if after is not None:
            after.followed = True
        batch.answer = self._executor().submit(self._send, batch)
        return batch

    def _send(self, batch: Batch) -> Answer:
        """In the sending thread: post `batch`, unless it was queued behind a batch that was
        not answered in full or the pass is stopping."""
        after, batch.after = batch.after, None  # no chain of batches kept alive
        if after is not None:
            # Sent once the outcome of the batch before it is durable (recorded or settled),
            # never sooner: a crash then leaves at most one batch applied by the server but
            # not settled (DESIGN.md's duplicate bound), even when this one holds the next
            # commands of the same customers.
            after.settled.wait()
            # Held back unless the request just before was answered in full (the drain thread
            # decides what comes next: back off, pause, split, or retry a command the server
            # returned no result for, which a later command of its customer must not
            # overtake), or if the pass is stopping. A batch queued behind one that was
            # itself held back is held back too: it may follow that one's customers.
            if not after.cleared or self._stopping.is_set():
                return NOT_SENT
        return self.post(batch)

    def post(self, batch: Batch) -> list[dict[str, Any]] | APIException:
        """One request for `batch`, in the calling thread (splits and retries post here)."""
        waited = self._limiter.acquire()
        self._alive()  # bounded by the request's deadline
        started = time.monotonic()
        batch.report.requests += 1
        answer: list[dict[str, Any]] | APIException
        try:
            # Payloads were validated and serialised at enqueue: they go out as stored.
            answer = self._send_batch([(r.kind, r.payload, str(r.id)) for r in batch.rows])
        except APIException as exc:
            answer = exc
        if self.tally is not None:
            took = time.monotonic() - started
            self.tally.request_done(request_outcome(answer), took, float(waited or 0.0))
        return answer

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracker-agent-send")
        return self._pool

    def close(self, wait: bool = True) -> None:
        """Stop the sending thread (idle between passes; a new pass starts it again)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait)
