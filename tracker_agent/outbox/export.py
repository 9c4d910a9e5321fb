"""Moving pending commands out of the outbox into an offline bundle (agent.export_bundle), on a
DB-API cursor inside the caller's transaction. Stdlib only.

The rows are first leased to the exporting process (as a drainer leases a batch), so that no
drain sends them while the bundle is written; only once the bundle is complete on disk are
they deleted. A crash in between leaves them leased by a dead process: the next drain on this
machine takes them back at once (owners.reclaim), elsewhere the lease expires.
"""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple

from . import removal
from .state import read_state, set_state

__all__ = ["ExportRow", "delete_exported", "lease_for_export", "outbox_id"]

#: This outbox's own name, made at its first export: with a row's id it names a command
#: wherever a bundle carries it (ids are never reused: AUTOINCREMENT).
STATE_OUTBOX_ID = "outbox_id"

_PICK = (
    "SELECT id, kind, payload, created_at FROM outbox"
    " WHERE id > ? AND (lease_expires_at = 0 OR lease_expires_at <= ?) ORDER BY id LIMIT ?"
)


class ExportRow(NamedTuple):
    id: int
    kind: str
    payload: str
    created_at: float


def outbox_id(cur: Any) -> str:
    """This outbox's id (made and stored on first use)."""
    known = read_state(cur).get(STATE_OUTBOX_ID)
    if known:
        return str(known)
    made = uuid.uuid4().hex
    set_state(cur, {STATE_OUTBOX_ID: made})
    return made


def lease_for_export(
    cur: Any, owner: str, after_id: int, limit: int, now: float, until: float
) -> list[ExportRow]:
    """Up to `limit` rows after `after_id` in id order that no drainer holds, leased to
    `owner` until `until` (rows in flight stay: their drainer settles them)."""
    rows = [ExportRow(*r) for r in cur.execute(_PICK, (after_id, now, limit)).fetchall()]
    if rows:
        marks = ",".join("?" * len(rows))
        cur.execute(
            f"UPDATE outbox SET lease_owner = ?, lease_expires_at = ? WHERE id IN ({marks})",
            (owner, until, *(r.id for r in rows)),
        )
    return rows


def delete_exported(
    cur: Any, owner: str, ids: list[int], delete: removal.DeleteFn = removal.delete_rows
) -> int:
    """Delete exported rows still leased by `owner` (the bundle holding them is complete),
    through `delete` (Backend.delete_rows)."""
    if not ids:
        return 0
    marks = ",".join("?" * len(ids))
    return delete(cur, f"lease_owner = ? AND id IN ({marks})", (owner, *ids))


def release_exported(cur: Any, owner: str, ids: list[int]) -> None:
    """Give rows back to the queue (the bundle could not be written)."""
    if ids:
        marks = ",".join("?" * len(ids))
        cur.execute(
            "UPDATE outbox SET lease_owner = NULL, lease_expires_at = 0"
            f" WHERE lease_owner = ? AND id IN ({marks})",
            (owner, *ids),
        )
