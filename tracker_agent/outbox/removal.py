"""Deleting outbox rows on SQLite, with the bookkeeping its delete triggers did before revision
0009: the queue counters (queue_counters) and the queue flags (is_head on the oldest row of
each customer, which the claim walks; see leases.py).

Why not triggers: SQLite has only row-level triggers, and the mere presence of an AFTER DELETE
trigger turns off its one-pass delete and runs a trigger program per row. A 50-row DELETE of
delivered rows cost 0.61 ms with the two triggers (0.45 ms with triggers that never fire)
against 0.14 ms with none; at a raised rate limit the drain spent 0.7 ms less CPU per request
without them (paired runs, 50 customers). PostgreSQL keeps its statement-level triggers (one
body per DELETE, revision 0008): its Backend.delete_rows is a plain DELETE.

So every delete of outbox rows on SQLite goes through delete_rows, inside the deleting
transaction (the write lock held: nothing changes between the read and the delete): the rows'
customers, sizes and flags are read, the rows deleted, the counters lowered in one UPDATE, and
the flag handed to the oldest remaining row of each customer whose flagged row went, in one
statement (a seek in ix_outbox_customer per customer). Inserts keep their triggers: a row
inserted by any means (a dead letter put back, an import) is counted and flagged.

A row deleted by hand (a DELETE typed into the sqlite3 shell) is not counted down, and a
customer whose oldest row it was keeps no flag, so the claim no longer sees its queue: use the
CLI (dead-letters, export) to take rows out of the outbox. After such an edit, repair_books
(`tracker-agent migrate --repair`) recounts the queue and flags each customer's oldest row
again, in one pass over the table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

__all__ = ["DeleteFn", "HANDOVER_CHUNK", "Repair", "delete_rows", "repair_books"]

#: delete_rows(cur, where, params) -> rows deleted: `DELETE FROM outbox WHERE <where>`, with
#: whatever bookkeeping the database does not do itself (see Backend.delete_rows).
DeleteFn = Callable[[Any, str, Sequence[Any]], int]

#: Customers per hand-over statement (SQLite before 3.32 allows 999 parameters).
HANDOVER_CHUNK = 500

_COUNT_DOWN = "UPDATE queue_counters SET rows = rows - ?, bytes = bytes - ? WHERE id = 1"


def _handover_sql(customers: int) -> str:
    """Flag the oldest row of each of `customers` customer keys (parameters)."""
    values = ", ".join("(?)" for _ in range(customers))
    return (
        "UPDATE outbox SET is_head = 1 WHERE id IN ("
        " SELECT (SELECT min(x.id) FROM outbox AS x WHERE x.customer_key = k.column1)"
        f" FROM (VALUES {values}) AS k)"
    )


def delete_rows(cur: Any, where: str, params: Sequence[Any]) -> int:
    """`DELETE FROM outbox WHERE <where>` on SQLite, counters and queue flags kept (see the
    module docstring); in the caller's write transaction. Returns the rows deleted."""
    gone = cur.execute(
        f"SELECT customer_key, size, is_head FROM outbox WHERE {where}", params
    ).fetchall()
    if not gone:
        return 0
    cur.execute(f"DELETE FROM outbox WHERE {where}", params)
    cur.execute(_COUNT_DOWN, (len(gone), sum(size for _, size, _ in gone)))
    heads = sorted({key for key, _, head in gone if head})
    for start in range(0, len(heads), HANDOVER_CHUNK):
        chunk = heads[start : start + HANDOVER_CHUNK]
        cur.execute(_handover_sql(len(chunk)), chunk)
    return len(gone)


class Repair(NamedTuple):
    """What repair_books found: the counters before and after, and the flags it moved."""

    counted: tuple[int, int]  # rows, bytes
    actual: tuple[int, int]
    flags_fixed: int

    @property
    def exact(self) -> bool:
        return self.counted == self.actual and not self.flags_fixed


_OLDEST = "SELECT min(id) FROM outbox GROUP BY customer_key"
_COUNTERS = "SELECT rows, bytes FROM queue_counters WHERE id = 1"
_ACTUAL = "SELECT count(*), coalesce(sum(size), 0) FROM outbox"


def repair_books(cur: Any) -> Repair:
    """Recount queue_counters and put is_head on exactly each customer's oldest row (SQLite;
    in the caller's write transaction). One pass over the outbox and its customer index: for
    an operator after rows were deleted by hand, not for the drain."""
    counted = tuple(cur.execute(_COUNTERS).fetchone() or (0, 0))
    actual = tuple(cur.execute(_ACTUAL).fetchone())
    if counted != actual:
        cur.execute(
            "UPDATE queue_counters SET rows = ?, bytes = ? WHERE id = 1", (actual[0], actual[1])
        )
    cur.execute(f"UPDATE outbox SET is_head = 0 WHERE is_head = 1 AND id NOT IN ({_OLDEST})")
    fixed = cur.rowcount
    cur.execute(f"UPDATE outbox SET is_head = 1 WHERE is_head = 0 AND id IN ({_OLDEST})")
    fixed += cur.rowcount
    return Repair((int(counted[0]), int(counted[1])), (int(actual[0]), int(actual[1])), fixed)
