"""Receipts: where a command queued with a receipt stands, read from the outbox itself (queued
or in flight), the dead letters, or the compact record of delivered ones (`receipts`: id,
time, attempts; no payload), which retention prunes. On a DB-API cursor or connection, inside
the caller's transaction; stdlib only (`tracker-agent receipt` reads the file read-only).

A receipt's id is its outbox row id: AUTOINCREMENT (an identity on PostgreSQL) never hands out
an id twice, a dead letter keeps its id, and a dead letter put back returns under it. The
SQL is the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

QUEUED = "queued"
IN_FLIGHT = "in_flight"
DELIVERED = "delivered"
DEAD_LETTERED = "dead_lettered"
UNKNOWN = "unknown"
STATES = (QUEUED, IN_FLIGHT, DELIVERED, DEAD_LETTERED, UNKNOWN)

#: Ids per statement (SQLite's default limit on parameters is far above; a read stays short).
_CHUNK = 500


@dataclass(frozen=True)
class Receipt:
    """What a tracking call with a receipt returns: the id to ask about later
    (TrackerAgent.receipt, `tracker-agent receipt ID`). An id of 0 is a test-mode receipt
    (enabled=False): nothing was stored, and it is always "unknown"."""

    id: int

    def __str__(self) -> str:
        return str(self.id)


@dataclass(frozen=True)
class ReceiptStatus:
    """Where one command stands. `state` is one of STATES:

    queued         waiting in the outbox (`attempts` made so far, `last_error` of the last one,
                   `next_attempt_at` if it waits for a retry)
    in_flight      leased by a drainer now
    delivered      the API accepted it at `delivered_at`, after `attempts` requests
    dead_lettered  refused (or out of attempts) at `dead_at`: `reason`, `status_code`
    unknown        no such id, or delivered longer ago than the retention (or never queued
                   with a receipt, or purged from the dead letters, or dropped)
    """

    id: int
    state: str
    attempts: int | None = None
    last_error: str | None = None
    created_at: float | None = None
    next_attempt_at: float | None = None
    delivered_at: float | None = None
    dead_at: float | None = None
    reason: str | None = None
    status_code: int | None = None

    @property
    def settled(self) -> bool:
        """Delivered or dead-lettered: nothing more happens to it unless an operator acts."""
        return self.state in (DELIVERED, DEAD_LETTERED)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def _rows(conn: Any, sql: str, ids: Sequence[int]) -> list[tuple[Any, ...]]:
    found: list[tuple[Any, ...]] = []
    for chunk in _chunks(ids):
        marks = ",".join("?" * len(chunk))
        found += conn.execute(sql.format(marks=marks), tuple(chunk)).fetchall()
    return found


def lookup(conn: Any, ids: Sequence[int], now: float) -> list[ReceiptStatus]:
    """The status of each id, in the order given (a file from before receipts: no delivered
    ones remembered)."""
    wanted = sorted(set(ids))
    found: dict[int, ReceiptStatus] = {}
    for row_id, attempts, error, created, due, lease in _rows(
        conn,
        "SELECT id, attempts, last_error, created_at, next_attempt_at, lease_expires_at"
        " FROM outbox WHERE id IN ({marks})",
        wanted,
    ):
        state = IN_FLIGHT if lease > now else QUEUED
        found[row_id] = ReceiptStatus(
            row_id, state, attempts, error, created, next_attempt_at=due if due > now else None
        )
    for row_id, attempts, created, dead_at, reason, status in _rows(
        conn,
        "SELECT id, attempts, created_at, dead_at, reason, status_code"
        " FROM dead_letters WHERE id IN ({marks})",
        [i for i in wanted if i not in found],
    ):
        found[row_id] = ReceiptStatus(
            row_id, DEAD_LETTERED, attempts, reason, created,
            dead_at=dead_at, reason=reason, status_code=status,
        )  # fmt: skip
    try:
        delivered = _rows(
            conn,
            "SELECT id, delivered_at, attempts FROM receipts WHERE id IN ({marks})",
            [i for i in wanted if i not in found],
        )
    except sqlite3.OperationalError as exc:  # read-only status of a file not migrated yet
        if "no such table" not in str(exc):
            raise
        delivered = []
    for row_id, delivered_at, attempts in delivered:
        found[row_id] = ReceiptStatus(row_id, DELIVERED, attempts, delivered_at=delivered_at)
    return [found.get(i) or ReceiptStatus(i, UNKNOWN) for i in ids]


def record_delivered(
    cur: Any,
    owner: str,
    ids: Sequence[int],
    now: float,
    ids_in: Callable[[str, Sequence[int]], tuple[str, list[Any]]],
) -> None:
    """Remember `ids` (receipts being delivered, rows still leased by `owner`, about to be
    deleted) as delivered now, with the attempt that delivered them counted. `ids_in`
    writes the set of ids (Backend.ids_in)."""
    if ids:  # one statement (at most batch_size ids)
        among, params = ids_in("id", ids)
        cur.execute(
            "INSERT INTO receipts (id, delivered_at, attempts)"
            f" SELECT id, ?, attempts + 1 FROM outbox WHERE lease_owner = ? AND {among}"
            " ON CONFLICT (id) DO UPDATE SET delivered_at = excluded.delivered_at,"
            " attempts = excluded.attempts",
            (now, owner, *params),
        )


def prune_candidates(conn: Any, now: float, max_age: float, max_rows: int, limit: int) -> list[int]:
    """Up to `limit` receipts to forget, oldest commands (smallest ids) first: those beyond
    the newest `max_rows`, then those delivered more than `max_age` seconds before `now`.
    A read (run it outside the write lock): a count, then a walk of the table in id order
    that stops after `limit` finds (delivery order follows id order, so it stops early)."""
    (count,) = conn.execute("SELECT count(*) FROM receipts").fetchone()
    excess = min(max(0, count - max_rows), limit)
    ids = [i for (i,) in conn.execute("SELECT id FROM receipts ORDER BY id LIMIT ?", (excess,))]
    if len(ids) < limit:
        after = ids[-1] if ids else -1
        ids += [
            i
            for (i,) in conn.execute(
                "SELECT id FROM receipts WHERE id > ? AND delivered_at < ? ORDER BY id LIMIT ?",
                (after, now - max_age, limit - len(ids)),
            )
        ]
    return ids


def forget(cur: Any, ids: Sequence[int]) -> int:
    """Delete the receipts `ids`; how many there were."""
    forgotten = 0
    for chunk in _chunks(ids):
        cur.execute(f"DELETE FROM receipts WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        forgotten += int(cur.rowcount)
    return forgotten
