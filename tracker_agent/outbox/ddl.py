"""Dialect-specific DDL for the outbox's migrations (migrations/versions): one migration serves
SQLite and PostgreSQL. It lives in the package, not beside the scripts, so that a revision can
import it wherever Alembic loads the scripts from (an installed wheel, or a source checkout).

The pattern, for a new revision (see 0001 and 0003):

    from tracker_agent.outbox import ddl

    def upgrade() -> None:
        op.create_table(
            "receipts",
            sa.Column("id", ddl.BIG_ID, sa.Identity(), primary_key=True),  # BIGINT identity on
            ...                                                            # PG, INTEGER on SQLite
        )
        op.create_index("ix_receipts_open", "receipts", ["at"], **ddl.where("at > 0"))
        if ddl.is_postgresql():
            ddl.create_trigger("trg_receipts_x", "receipts", "AFTER INSERT", PLPGSQL_BODY)
        else:
            op.execute(SQLITE_TRIGGER)

    def downgrade() -> None:
        ddl.drop_trigger("trg_receipts_x", "receipts")
        ...

Everything else (tables, columns, plain indexes) is written once with SQLAlchemy types: SQLite
ignores sa.Identity(), PostgreSQL ignores sqlite_* keywords. Migrations run in one transaction
(PostgreSQL's DDL is transactional too) under a lock that makes many hosts starting at once
migrate once: SQLite's write lock, PostgreSQL's pg_advisory_xact_lock (see engine.py and
pg_engine.py).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

__all__ = ["BIG_ID", "create_trigger", "drop_trigger", "is_postgresql", "where"]

#: A 64-bit id on PostgreSQL (32-bit ids run out in days at full rate); SQLite's INTEGER
#: PRIMARY KEY is already 64-bit (and must be spelled INTEGER to be the rowid).
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: A 64-bit count (bytes queued pass 2**31 at the default max_bytes) on PostgreSQL.
BIG_INT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def is_postgresql() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def where(condition: str) -> dict[str, Any]:
    """Keywords that make an index partial on both databases."""
    return {"sqlite_where": sa.text(condition), "postgresql_where": sa.text(condition)}


def create_trigger(name: str, table: str, event: str, body: str, *, options: str = "") -> None:
    """A PL/pgSQL function `name`() holding `body` (between BEGIN and END) and a trigger `name`
    on `table` running it at `event` ("AFTER INSERT", ...); `options` goes before EXECUTE
    (default: FOR EACH ROW; e.g. "REFERENCING NEW TABLE AS added FOR EACH STATEMENT")."""
    op.execute(
        f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $body$\n"
        f"BEGIN\n{body}\nEND\n$body$"
    )
    op.execute(
        f"CREATE TRIGGER {name} {event} ON {table} {options or 'FOR EACH ROW'}"
        f" EXECUTE FUNCTION {name}()"
    )


def drop_trigger(name: str, table: str) -> None:
    """Drop a trigger made by create_trigger (PostgreSQL) or by CREATE TRIGGER (SQLite)."""
    if is_postgresql():
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        op.execute(f"DROP FUNCTION IF EXISTS {name}()")
    else:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
