"""The outbox as an agent's drainer sees it: settlements pass through to the store, the ids they
dead-letter are noted for on_dead_letter, the receipts they settle go to on_settled, and a
closed agent's pass that outlived close() writes nothing more."""

from __future__ import annotations

import threading
from typing import Any

from .hookthread import HookThread
from .outbox import receipts as receipt_states
from .outbox.leases import Settlement
from .outbox.receipts import ReceiptStatus
from .outbox.store import OutboxStore

__all__ = ["DrainerOutbox"]


class DrainerOutbox:
    """The outbox as this agent's drainer sees it. Settlements pass through, and the ids they
    dead-letter are noted for `on_dead_letter` (a DrainReport only counts them). Once the
    agent is closed, a pass that outlived close() writes nothing more: its rows were given
    back, and the outbox belongs to the next agent."""

    def __init__(
        self, store: OutboxStore, settled: HookThread[ReceiptStatus] | None = None
    ) -> None:
        self._store = store
        self._ids: list[int] = []
        self._lock = threading.Lock()
        self._settled = settled
        self.closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def settle(self, owner: str, outcome: Settlement, now: float) -> int:
        if self.closed:
            return 0
        delivered = self._store.settle(owner, outcome, now)
        self._note(outcome, now)
        return delivered

    def record_settlement(self, owner: str, outcome: Settlement, now: float) -> int | None:
        return None if self.closed else self._store.record_settlement(owner, outcome, now)

    def settle_and_claim(self, owner: str, outcome: Settlement, now: float, **terms: Any) -> Any:
        if self.closed:
            return 0, {}, []
        result = self._store.settle_and_claim(owner, outcome, now, **terms)
        self._note(outcome, now)
        return result

    def renew_leases(self, owner: str, until: float) -> int:
        return 0 if self.closed else self._store.renew_leases(owner, until)

    def _note(self, outcome: Settlement, now: float) -> None:
        if outcome.dead:
            with self._lock:
                self._ids.extend(row_id for row_id, _reason, _status in outcome.dead)
        if outcome.receipts and self._settled is not None:
            self._settled.submit(_settled_receipts(outcome, now))

    def take(self) -> list[int]:
        """The ids dead-lettered since the last take()."""
        with self._lock:
            ids, self._ids = self._ids, []
        return ids


def _settled_receipts(outcome: Settlement, now: float) -> list[ReceiptStatus]:
    """What on_settled hears of one settlement: its receipts delivered or dead-lettered."""
    attempts = outcome.receipts
    settled = [
        ReceiptStatus(i, receipt_states.DELIVERED, attempts[i], delivered_at=now)
        for i in outcome.delivered
        if i in attempts
    ]
    settled += [
        ReceiptStatus(
            i,
            receipt_states.DEAD_LETTERED,
            attempts[i],
            reason,
            dead_at=now,
            reason=reason,
            status_code=status,
        )  # fmt: skip
        for i, reason, status in outcome.dead
        if i in attempts
    ]
    return settled
