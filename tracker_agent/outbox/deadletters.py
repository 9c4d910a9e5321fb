"""Dead-letter queries: bury a command with its reason, list, retry (in original order), purge.

Filters shared by list/retry/purge: `ids` (exact ids), `error_contains` (case-insensitive
substring of the reason) and `older_than_s` (dead for at least that many seconds).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import removal

_COLUMNS = "id, kind, customer_key, payload, created_at, dead_at, attempts, reason, status_code"


@dataclass(frozen=True)
class DeadLetter:
    id: int
    kind: str
    customer_ids: dict[str, Any]
    payload: dict[str, Any]
    created_at: float
    dead_at: float
    attempts: int
    reason: str
    status_code: int | None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def bury(
    cur: Any,
    row_id: int,
    owner: str,
    reason: str,
    status: int | None,
    now: float,
    *,
    delete: removal.DeleteFn = removal.delete_rows,
) -> bool:
    """Move one leased outbox row to dead_letters (only while `owner` still holds its lease);
    True if it was moved. It leaves the outbox through `delete` (Backend.delete_rows)."""
    cur.execute(
        "INSERT INTO dead_letters (id, kind, customer_key, payload, size, created_at, attempts,"
        " dead_at, reason, status_code, receipt)"
        " SELECT id, kind, customer_key, payload, size, created_at, attempts + 1, ?, ?, ?, receipt"
        " FROM outbox WHERE id = ? AND lease_owner = ?",
        (now, reason, status, row_id, owner),
    )
    if not cur.rowcount:
        return False
    delete(cur, "id = ?", (row_id,))
    return True


#: The reason-contains filter, SQLite's spelling (backends give theirs: Backend.contains_sql).
CONTAINS = "instr(lower(reason), lower(?)) > 0"


def where(
    now: float,
    contains: str = CONTAINS,
    ids: Iterable[int] | None = None,
    error_contains: str | None = None,
    older_than_s: float | None = None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if ids is not None:
        id_list = [int(i) for i in ids]
        clauses.append(f"id IN ({','.join('?' * len(id_list))})" if id_list else "1 = 0")
        params.extend(id_list)
    if error_contains:
        clauses.append(contains)
        params.append(error_contains)
    if older_than_s is not None:
        clauses.append("dead_at <= ?")
        params.append(now - older_than_s)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def select(conn: Any, *, now: float, limit: int | None = None, **filters: Any) -> list[DeadLetter]:
    clause, params = where(now, **filters)
    sql = f"SELECT {_COLUMNS} FROM dead_letters{clause} ORDER BY id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(int(limit))
    return [
        DeadLetter(
            id=r[0],
            kind=r[1],
            customer_ids=json.loads(r[2]),
            payload=json.loads(r[3]),
            created_at=r[4],
            dead_at=r[5],
            attempts=r[6],
            reason=r[7],
            status_code=r[8],
        )
        for r in conn.execute(sql, params).fetchall()
    ]


def resurrect(cur: Any, *, now: float, **filters: Any) -> int:
    """Re-queue matches under their original ids, so FIFO order is their original order."""
    clause, params = where(now, **filters)
    cur.execute(
        "INSERT INTO outbox (id, kind, customer_key, payload, size, created_at, receipt)"
        " SELECT id, kind, customer_key, payload, size, created_at, receipt"
        f" FROM dead_letters{clause}",
        params,
    )
    moved = int(cur.rowcount)
    cur.execute(f"DELETE FROM dead_letters{clause}", params)
    return moved


def purge(cur: Any, *, now: float, **filters: Any) -> int:
    clause, params = where(now, **filters)
    cur.execute(f"DELETE FROM dead_letters{clause}", params)
    return int(cur.rowcount)
