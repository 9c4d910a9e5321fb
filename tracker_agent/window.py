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
    (`report.waits`: a backoff or pause is in force; otherwise nothing is due)."""

    batch: Batch | None
    report: DrainReport
