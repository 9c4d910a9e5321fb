"""The drain's side of the outbox, on a cursor inside the caller's transaction: leasing the
next rows (claim) and applying a batch's outcome to them (settle).

A claim takes due rows in id order, skipping every row of a customer that comes after one of
its rows that is blocked (leased by a drainer, or waiting for a retry), so that a customer's
later command never overtakes an earlier pending one; a lease expires on its own, so a
crashed drainer's rows come back. Settling only touches rows the settling owner still leases.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import deadletters
from .state import STATE_DELIVERED, read_state, set_state

_ADD_DELIVERED = (
    "INSERT INTO agent_state (key, value) VALUES (?, ?) ON CONFLICT(key)"
    " DO UPDATE SET value = coalesce(CAST(value AS INTEGER), 0) + excluded.value"
)
# The claim: due rows in id order, minus every row of a customer that comes after one of its
# rows that is blocked (leased by a drainer, or waiting for a retry), so that a customer's
# later command never overtakes an earlier pending one. The blocked rows are few (the batches
# in flight, the rows in backoff) and both kinds sit in a partial index.
_BLOCKED = """
SELECT customer_key, min(id) FROM outbox
WHERE (lease_expires_at > 0 AND lease_expires_at > :now)
   OR (next_attempt_at > 0 AND next_attempt_at > :now)
GROUP BY customer_key
"""
_DUE = """
SELECT id, kind, payload, size, attempts, created_at, customer_key FROM outbox
WHERE lease_expires_at <= :now AND next_attempt_at <= :now ORDER BY id
"""


class ClaimedRow(NamedTuple):
    """A leased outbox row, as the claim query returns it (a tuple: 50 are built per batch)."""

    id: int
    kind: str
    payload: str
    size: int
    attempts: int
    created_at: float


@dataclass
class Settlement:
    """How one drain round ends for the rows it claimed; applied in one transaction."""

    delivered: list[int] = field(default_factory=list)
    dead: list[tuple[int, str, int | None]] = field(default_factory=list)  # id, reason, status
    retry: list[int] = field(default_factory=list)  # attempt counted, wait until retry_at
    release: list[int] = field(default_factory=list)  # lease dropped, no attempt counted
    retry_at: float = 0.0
    error: str | None = None
    state: dict[str, Any] = field(default_factory=dict)  # agent_state keys to set

    def release_the_rest(self, ids: Iterable[int]) -> None:
        """Release every id of `ids` that no other outcome covers (nothing is left leased)."""
        covered = {*self.delivered, *(d[0] for d in self.dead), *self.retry, *self.release}
        self.release.extend(i for i in ids if i not in covered)


def claim(
    cur: Any,
    owner: str,
    limit: int,
    max_bytes: int,
    lease_seconds: float,
    now: float,
    may_claim: Callable[[dict[str, Any]], bool] | None,
) -> tuple[dict[str, Any], list[ClaimedRow]]:
    """The agent state and, unless may_claim(state) says no, the next rows leased to owner."""
    state = read_state(cur)
    if may_claim is not None and not may_claim(state):
        return state, []
    picked = _pick(cur, now, limit, max_bytes)
    if picked:  # one statement (at most batch_size ids): a fifth cheaper than 50
        marks = ",".join("?" * len(picked))
        cur.execute(
            f"UPDATE outbox SET lease_owner = ?, lease_expires_at = ? WHERE id IN ({marks})",
            (owner, now + lease_seconds, *(r.id for r in picked)),
        )
    return state, picked


def settle(cur: Any, owner: str, outcome: Settlement, now: float) -> int:
    """Apply `outcome` to the rows `owner` still leases; returns rows delivered."""
    delivered = 0
    if outcome.delivered:  # one statement (at most batch_size ids, 50 by default)
        marks = ",".join("?" * len(outcome.delivered))
        cur.execute(
            f"DELETE FROM outbox WHERE lease_owner = ? AND id IN ({marks})",
            (owner, *outcome.delivered),
        )
        delivered = cur.rowcount
    for row_id, reason, status in outcome.dead:
        deadletters.bury(cur, row_id, owner, reason, status, now)
    cur.executemany(
        "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?,"
        " lease_owner = NULL, lease_expires_at = 0 WHERE id = ? AND lease_owner = ?",
        [(outcome.retry_at, outcome.error, row_id, owner) for row_id in outcome.retry],
    )
    cur.executemany(
        "UPDATE outbox SET lease_owner = NULL, lease_expires_at = 0"
        " WHERE id = ? AND lease_owner = ?",
        [(row_id, owner) for row_id in outcome.release],
    )
    if delivered:  # counted in SQL: no read of the state
        cur.execute(_ADD_DELIVERED, (STATE_DELIVERED, delivered))
    set_state(cur, outcome.state)
    return delivered


def _pick(cur: Any, now: float, limit: int, max_bytes: int) -> list[ClaimedRow]:
    """Up to `limit` due rows in id order that no blocked row of their customer precedes,
    within `max_bytes` (at least one row)."""
    params = {"now": now}
    blocked = dict(cur.execute(_BLOCKED, params).fetchall())
    picked: list[ClaimedRow] = []
    total = 0
    due = cur.execute(_DUE, params)
    while chunk := due.fetchmany(limit):
        for row_id, kind, payload, size, attempts, created_at, key in chunk:
            first = blocked.get(key)
            if first is not None and first < row_id:
                continue
            if picked and total + size > max_bytes:
                return picked
            picked.append(ClaimedRow(row_id, kind, payload, size, attempts, created_at))
            total += size
            if len(picked) >= limit:
                return picked
    return picked
