"""The drain's window: batches on their way (claimed, queued behind another, in flight) and
what an answer allows the batch queued behind it.

A batch queued behind another goes out only once that one is settled and was answered in
full (a result for every command): it may hold the next commands of the same customers.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .exceptions import APIException
from .outbox.leases import ClaimedRow
from .outcomes import DrainReport

__all__ = ["NOT_SENT", "Answer", "Batch", "Claim", "NotSent", "answered_in_full", "last"]


class NotSent:
    """The answer of a batch queued behind one whose request failed (or of a stopping pass):
    it was never sent, and its rows go back to the queue as they were."""


NOT_SENT = NotSent()


def answered_in_full(answer: Answer) -> bool:
    """A result for every command (accepted or refused): what a batch claimed behind it, which
    may hold the next commands of the same customers, needs before it may go out."""
    return isinstance(answer, list) and not any(r.get("missing") for r in answer)


def last(window: deque[Batch]) -> Batch | None:
    return window[-1] if window else None


Answer = list[dict[str, Any]] | APIException | NotSent


@dataclass
class Batch:
    """A claimed batch on its way: its rows, the state seen at claim time, its report."""

    rows: list[ClaimedRow]
    state: dict[str, Any]
    report: DrainReport
    answer: Future[Answer] | None = None
    after: Batch | None = None  # queued behind this batch: sent only once it is cleared
    #: Set by the drain thread once this batch's outcome is committed (or it was given back);
    #: `cleared` then says whether the batch queued behind it may go out.
    settled: threading.Event = field(default_factory=threading.Event)
    cleared: bool = False
    followed: bool = False  # a batch was queued behind this one

    def clear_the_way(self, cleared: bool) -> None:
        """Let the batch queued behind this one go out (`cleared`), or hold it back."""
        self.cleared = cleared
        self.settled.set()


@dataclass
class Claim:
    """What asking for the next batch gave: a batch, or the report of why there is none
    (`report.waits`: a backoff or pause is in force; otherwise nothing is due). A claim of
    several batches holds the ones after the first in `rest`, in order: each may hold the
    next commands of the customers of the one before it."""

    batch: Batch | None
    report: DrainReport
    rest: list[Batch] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        rows: list[ClaimedRow],
        state: dict[str, Any],
        report: DrainReport,
        batch_size: int,
        batch_max_bytes: int,
    ) -> Claim:
        """The claimed `rows` (in id order) cut into batches of at most `batch_size` rows and
        `batch_max_bytes` of payload (at least one row each), the first with `report`."""
        cuts: list[list[ClaimedRow]] = []
        size = 0
        for row in rows:
            if not cuts or len(cuts[-1]) >= batch_size or size + row.size > batch_max_bytes:
                cuts.append([])
                size = 0
            cuts[-1].append(row)
            size += row.size
        if not cuts:
            return cls(None, report)
        first, *rest = cuts
        return cls(
            Batch(first, state, report), report, [Batch(r, state, DrainReport()) for r in rest]
        )

    def after_first(self) -> Claim | None:
        """The claim of the batches after the first (None if there are none)."""
        if not self.rest:
            return None
        return Claim(self.rest[0], self.rest[0].report, self.rest[1:])

    def batches(self) -> list[Batch]:
        return ([self.batch] if self.batch is not None else []) + self.rest
