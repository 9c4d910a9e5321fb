"""Queue statistics from a DB-API connection, and the read-only path `tracker-agent status` uses.

Stdlib only on purpose: `status` must start in well under 0.3 s, and importing SQLAlchemy alone
costs more than that. The store computes its stats with the same `collect_stats`.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ..exceptions import NotAnOutboxError, OutboxError
from .state import (
    STATE_BACKOFF_UNTIL,
    STATE_CLOCK_CORRECTED,
    STATE_CLOCK_OFFSET,
    STATE_CLOCK_UNCORRECTED,
    STATE_CLOCK_UNKNOWN,
    STATE_DEAD_LETTERED,
    STATE_DELIVERED,
    STATE_DROPPED,
    STATE_LAST_ERROR,
    STATE_LAST_ERROR_AT,
    STATE_LAST_SUCCESS,
    STATE_PAUSED_REASON,
    STATE_PROBE_AT,
    STATE_PROJECT,
    STATE_WARNING,
    STATE_WARNING_AT,
    read_state,
)

T = TypeVar("T")

STATS_KEYS = (
    "pending",
    "in_flight",
    "dead",
    "bytes",
    "oldest_pending_age_s",
    "delivered",
    "dead_lettered",
    "dropped",
    "last_success_at",
    "last_error",
    "last_error_at",
    "paused_reason",
    "next_attempt_at",
    "project",
    "warning",
    "warning_at",
    "clock_offset_s",
    "clock_corrected",
    "clock_uncorrected",
    "clock_unknown",
)


def collect_stats(
    conn: Any, now: float, counters: Callable[[Any], tuple[int, int]] | None = None
) -> dict[str, Any]:
    """Counts and state of the queue; cheap at any backlog (no full scans of `outbox`).
    `counters(conn)` reads rows and bytes queued (default: SQLite's one counter row)."""
    rows, size = (counters or _sqlite_counters)(conn)
    # "lease_expires_at > 0" lets SQLite use the partial index of leased rows.
    (in_flight,) = conn.execute(
        "SELECT count(*) FROM outbox WHERE lease_expires_at > 0 AND lease_expires_at > ?", (now,)
    ).fetchone()
    oldest = conn.execute("SELECT created_at FROM outbox ORDER BY id LIMIT 1").fetchone()
    (dead,) = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
    state = read_state(conn)
    backoff_until = state.get(STATE_BACKOFF_UNTIL)
    paused = state.get(STATE_PAUSED_REASON)
    if paused:  # a probe that met a transient fault waits for the backoff too
        next_attempt = max(float(state.get(STATE_PROBE_AT) or 0), float(backoff_until or 0))
    elif backoff_until and backoff_until > now:
        next_attempt = backoff_until
    else:
        next_attempt = None
    return {
        "pending": rows - in_flight,
        "in_flight": in_flight,
        "dead": dead,
        "bytes": size,
        "oldest_pending_age_s": round(max(0.0, now - oldest[0]), 3) if oldest else None,
        "delivered": int(state.get(STATE_DELIVERED) or 0),
        "dead_lettered": int(state.get(STATE_DEAD_LETTERED) or 0),
        "dropped": int(state.get(STATE_DROPPED) or 0),
        "last_success_at": state.get(STATE_LAST_SUCCESS),
        "last_error": state.get(STATE_LAST_ERROR),
        "last_error_at": state.get(STATE_LAST_ERROR_AT),
        "paused_reason": paused,
        "next_attempt_at": next_attempt,
        "project": state.get(STATE_PROJECT),
        "warning": state.get(STATE_WARNING),
        "warning_at": state.get(STATE_WARNING_AT),
        "clock_offset_s": state.get(STATE_CLOCK_OFFSET),
        "clock_corrected": int(state.get(STATE_CLOCK_CORRECTED) or 0),
        "clock_uncorrected": int(state.get(STATE_CLOCK_UNCORRECTED) or 0),
        "clock_unknown": int(state.get(STATE_CLOCK_UNKNOWN) or 0),
    }


def _sqlite_counters(conn: Any) -> tuple[int, int]:
    counted = conn.execute("SELECT rows, bytes FROM queue_counters WHERE id = 1").fetchone()
    return (int(counted[0]), int(counted[1])) if counted else (0, 0)


def read_status(database_path: str, now: float | None = None) -> dict[str, Any]:
    """Stats of the outbox at `database_path`, opened read-only; never creates or changes it
    (nor any file beside it), and never blocks on a FIFO or reads a device."""
    from .files import wal_was_lost

    stats = read_outbox(
        database_path, lambda conn: _stats_of_outbox(conn, time.time() if now is None else now)
    )
    if wal_was_lost(database_path) and not stats["warning"]:
        stats["warning"] = WAL_LOST_WARNING
    return stats


def read_outbox(database_path: str, read: Callable[[sqlite3.Connection], T]) -> T:
    """read(conn) on the outbox at `database_path`, opened read-only (as read_status does);
    OutboxError or NotAnOutboxError when it is missing, empty or not an outbox."""
    from .preflight import read_header, read_only

    if not os.path.exists(database_path):
        raise OutboxError(
            f"no outbox at {database_path} (nothing has been tracked yet, or a different "
            "database_url is configured)"
        )
    header = read_header(database_path)
    if header is None:
        raise NotAnOutboxError(f"{database_path} is empty: not an outbox (yet)")
    try:
        return read_only(database_path, header, read)
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "no such table" in text or "not a database" in text or "malformed" in text:
            raise NotAnOutboxError(
                f"{database_path} is not a tracker-agent outbox ({text})"
            ) from exc
        raise OutboxError(f"cannot read {database_path}: {text}") from exc
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot read {database_path}: {exc}") from exc


#: What status says when the -wal file is gone but its -shm is not (see files.wal_was_lost).
WAL_LOST_WARNING = (
    "the outbox's -wal file is missing but its -shm is not: it was deleted while a process had "
    "the outbox open, and commands committed since the last checkpoint may be lost"
)


def _stats_of_outbox(conn: sqlite3.Connection, now: float) -> dict[str, Any]:
    conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return collect_stats(conn, now)
