"""A batch's outcome committed as one small row, ahead of the outbox writes it stands for.

Why: a drainer with a batch queued behind the one just answered may send it only once the
answered batch's outcome is durable (DESIGN.md: a crash duplicates at most one batch). Applying
the outcome (deleting 50 delivered rows from every index, handing each customer's queue flag
on, receipts, counters) is the drain's most expensive write; on the path between an answer and
the next request it held a drain at a raised rate limit to about half a bare session's rate.
Recording it is one INSERT of a JSON Settlement: the queued batch goes out after that commit,
and the outcome is applied in the drainer's next transaction, the one that claims.

Who applies: the first claim that takes it, usually the recording drainer's next one. Every
claim, export and reclaim first applies whatever the table holds, whoever wrote it (`pending`):
a record left by a crash between the two commits is applied before any of its rows can be
leased again, so its rows are never sent twice. A record is deleted in the transaction that
applies it; on PostgreSQL a claim skips the records another transaction holds (SKIP LOCKED),
never waiting for them. The recording drainer counts its outcome's deliveries as recorded,
whoever applies it (counted once).

Applying an outcome twice (a record, then the same outcome settled again after an error) is
harmless: settle only touches rows the owner still leases.
"""

from __future__ import annotations

import json
import logging
from typing import Any, NamedTuple

from .leases import Settlement

__all__ = ["Recorded", "decode", "encode", "pending", "record"]

log = logging.getLogger(__name__)

_INSERT = "INSERT INTO settling (owner, outcome, recorded_at) VALUES (?, ?, ?)"


class Recorded(NamedTuple):
    id: int
    owner: str
    outcome: Settlement


def encode(outcome: Settlement) -> str:
    """`outcome` as compact JSON (receipt ids become strings: JSON object keys)."""
    return json.dumps(
        {
            "delivered": outcome.delivered,
            "dead": outcome.dead,
            "retry": outcome.retry,
            "release": outcome.release,
            "retry_at": outcome.retry_at,
            "error": outcome.error,
            "state": outcome.state,
            "receipts": outcome.receipts,
        },
        separators=(",", ":"),
    )


def decode(text: str) -> Settlement:
    raw = json.loads(text)
    return Settlement(
        delivered=[int(i) for i in raw["delivered"]],
        dead=[(int(i), str(reason), status) for i, reason, status in raw["dead"]],
        retry=[int(i) for i in raw["retry"]],
        release=[int(i) for i in raw["release"]],
        retry_at=float(raw["retry_at"]),
        error=raw["error"],
        state=dict(raw["state"]),
        receipts={int(k): int(v) for k, v in raw["receipts"].items()},
    )


def record(backend: Any, cur: Any, owner: str, outcome: Settlement, now: float) -> int:
    """Record `outcome` of `owner`'s batch; returns the record's id."""
    return int(backend.insert_id(cur, _INSERT, (owner, encode(outcome), now)))


def _take(cur: Any, record_id: int) -> bool:
    """Delete the record `record_id`; False if it is gone."""
    cur.execute("DELETE FROM settling WHERE id = ?", (record_id,))
    return int(cur.rowcount) == 1


def pending(backend: Any, cur: Any, now: float) -> tuple[float, list[Recorded]]:
    """The transaction's clock (Backend.clock) and every record not applied yet, oldest
    first, each already taken (deleted) by this transaction (on PostgreSQL clock and records
    in one statement: Backend.take_records_sql): the caller applies them before it commits.
    Usually none: one read of an empty table. A record that cannot be read (a damaged file,
    a hand edit) is dropped with a warning: its rows go out again when their lease ends
    (at-least-once), instead of every claim failing on it.

    On PostgreSQL a record another transaction holds (its owner applying it, or another
    claim) is skipped, not waited for: two drainers each applying its own record while
    reading the other's waited for each other (a deadlock the server broke after a second,
    failing one of the two: 2 drainers delivered 103 events/s where 1 delivered 1,871)."""
    found: list[Recorded] = []
    if backend.take_records_sql is not None:  # clock, read and takes in one statement
        rows = cur.execute(backend.take_records_sql).fetchall()
        stamped = float(rows[0][0]) if backend.db_clock else now
        taken = sorted(row[1:] for row in rows if row[1] is not None)
    else:
        stamped = backend.clock(cur, now)
        listed = cur.execute("SELECT id, owner, outcome FROM settling ORDER BY id").fetchall()
        taken = [row for row in listed if _take(cur, int(row[0]))]
    for record_id, owner, text in taken:
        try:
            found.append(Recorded(int(record_id), str(owner), decode(text)))
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning(
                "dropped recorded outcome %s of %s: it cannot be read; its commands will be"
                " sent again when their lease ends",
                record_id,
                owner,
            )
    return stamped, found
