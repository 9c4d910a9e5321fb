"""`tracker-agent status` (and `receipt`) on PostgreSQL: the queue's figures read in one short
read-only transaction with psycopg alone (no SQLAlchemy, no migration, nothing written), on
the database's clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ..constants import PG_CONNECT_TIMEOUT_SECONDS
from ..exceptions import NotAnOutboxError
from .backend import hide_password
from .pg_errors import translate_pg_error
from .stats import collect_stats

__all__ = ["hide_password", "read_pg", "read_pg_status"]

T = TypeVar("T")

_COUNTERS = "SELECT coalesce(sum(rows), 0), coalesce(sum(bytes), 0) FROM queue_counters"
_NOW = "SELECT extract(epoch FROM clock_timestamp())::float8"


def read_pg_status(database_url: str) -> dict[str, Any]:
    """Stats of the outbox in the database at `database_url` (see stats.STATS_KEYS); ages and
    leases on the database's clock, whatever this host's says."""
    return read_pg(database_url, lambda cur, db_now: collect_stats(cur, db_now, counters=_counters))


def read_pg(database_url: str, read: Callable[[Any, float], T]) -> T:
    """read(cursor, the database's clock) in one read-only transaction on the outbox at
    `database_url` (a cursor taking `?` placeholders); NotAnOutboxError when nothing was
    migrated there, errors translated (the password never shown)."""
    import psycopg

    from .postgresql import PgCursor

    where = hide_password(database_url)
    conninfo = "postgresql://" + database_url.partition("://")[2]
    try:
        with psycopg.connect(conninfo, connect_timeout=PG_CONNECT_TIMEOUT_SECONDS) as conn:
            conn.read_only = True
            cur = PgCursor(conn.cursor())
            if not cur.execute("SELECT to_regclass('queue_counters') IS NOT NULL").fetchone()[0]:
                raise NotAnOutboxError(f"{where}: no outbox in this database (nothing migrated)")
            db_now = float(cur.execute(_NOW).fetchone()[0])
            return read(cur, db_now)
    except psycopg.Error as exc:
        raise translate_pg_error(exc, where) from exc


def _counters(cur: Any) -> tuple[int, int]:
    rows, size = cur.execute(_COUNTERS).fetchone()
    return int(rows), int(size)
