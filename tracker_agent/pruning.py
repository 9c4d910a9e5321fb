"""Forgetting delivered receipts past their retention: at most once a RECEIPT_PRUNE_INTERVAL
(or at once after the clock went back), from the start of a drain pass, in small batches."""

from __future__ import annotations

import logging
from collections.abc import Callable

from .constants import RECEIPT_PRUNE_BATCH_ROWS, RECEIPT_PRUNE_INTERVAL_SECONDS
from .exceptions import OutboxError
from .outbox.store import OutboxStore
from .policy import DrainPolicy

__all__ = ["ReceiptPruner"]

log = logging.getLogger("tracker_agent.drain")


class ReceiptPruner:
    """Prunes `store`'s delivered receipts by the policy's retention (time and rows)."""

    def __init__(self, store: OutboxStore, policy: DrainPolicy, now: Callable[[], float]) -> None:
        self._store = store
        self._policy = policy
        self._now = now
        self._due_at = 0.0  # when receipts are next pruned (the `now` clock)

    def __call__(self) -> None:
        """Prune if due; a failure is logged and waits for the next interval."""
        now = self._now()
        if self._due_at - RECEIPT_PRUNE_INTERVAL_SECONDS <= now < self._due_at:
            return
        self._due_at = now + RECEIPT_PRUNE_INTERVAL_SECONDS
        p = self._policy
        try:
            pruned = self._store.prune_receipts(
                now, p.receipt_retention, p.receipt_max_rows, batch=RECEIPT_PRUNE_BATCH_ROWS
            )
        except OutboxError as exc:
            log.warning("could not prune delivered receipts: %s", exc)
            return
        if pruned:
            log.debug("forgot %d delivered receipts past their retention", pruned)
