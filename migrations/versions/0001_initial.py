"""initial outbox: outbox, dead_letters, queue_counters (+ triggers), agent_state

Revision ID: 0001
Revises:
Create Date: 2024-06-01

Frozen copy of tracker_agent/outbox/schema.py as of this revision (a test compares them at head).
On PostgreSQL (see tracker_agent/outbox/ddl.py): BIGINT identity ids, 16 counter rows (one row would
serialise every writer on its lock) kept by statement-level PL/pgSQL triggers, each
transaction adding to the row of its backend's pid; readers sum them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tracker_agent.outbox import ddl

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TRIGGERS = {
    "trg_outbox_count_insert": """CREATE TRIGGER IF NOT EXISTS trg_outbox_count_insert
    AFTER INSERT ON outbox
    BEGIN UPDATE queue_counters SET rows = rows + 1, bytes = bytes + NEW.size WHERE id = 1; END""",
    "trg_outbox_count_delete": """CREATE TRIGGER IF NOT EXISTS trg_outbox_count_delete
    AFTER DELETE ON outbox
    BEGIN UPDATE queue_counters SET rows = rows - 1, bytes = bytes - OLD.size WHERE id = 1; END""",
}


#: PostgreSQL: queue_counters rows 1.._PG_COUNTER_ROWS, summed on read.
_PG_COUNTER_ROWS = 16
_PG_COUNT = """
UPDATE queue_counters SET rows = rows {sign} n.n_rows, bytes = bytes {sign} n.n_bytes
FROM (SELECT count(*) AS n_rows, coalesce(sum(size), 0) AS n_bytes FROM {table}) AS n
WHERE id = 1 + pg_backend_pid() % {slots} AND n.n_rows > 0;
RETURN NULL;"""


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", ddl.BIG_ID, sa.Identity(), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("customer_key", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Float(), nullable=False, server_default="0"),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", sa.Float(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text(), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_outbox_customer_key_id", "outbox", ["customer_key", "id"])
    # Partial: only leased rows are in it, so counting in-flight rows stays cheap.
    op.create_index(
        "ix_outbox_leased", "outbox", ["lease_expires_at"], **ddl.where("lease_expires_at > 0")
    )

    op.create_table(
        "dead_letters",
        sa.Column("id", ddl.BIG_ID, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("customer_key", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("dead_at", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
    )
    op.create_index("ix_dead_letters_dead_at", "dead_letters", ["dead_at"])

    counters = op.create_table(
        "queue_counters",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("rows", ddl.BIG_INT, nullable=False, server_default="0"),
        sa.Column("bytes", ddl.BIG_INT, nullable=False, server_default="0"),
    )
    slots = _PG_COUNTER_ROWS if ddl.is_postgresql() else 1
    op.bulk_insert(counters, [{"id": i, "rows": 0, "bytes": 0} for i in range(1, slots + 1)])

    op.create_table(
        "agent_state",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=True),
    )

    if ddl.is_postgresql():
        for name, event, table, sign in (
            ("trg_outbox_count_insert", "AFTER INSERT", "added", "+"),
            ("trg_outbox_count_delete", "AFTER DELETE", "removed", "-"),
        ):
            transition = "NEW" if sign == "+" else "OLD"
            body = _PG_COUNT.format(sign=sign, table=table, slots=_PG_COUNTER_ROWS)
            options = f"REFERENCING {transition} TABLE AS {table} FOR EACH STATEMENT"
            ddl.create_trigger(name, "outbox", event, body, options=options)
    else:
        for sql in _TRIGGERS.values():
            op.execute(sql)


def downgrade() -> None:
    for name in _TRIGGERS:
        ddl.drop_trigger(name, "outbox")
    op.drop_table("agent_state")
    op.drop_table("queue_counters")
    op.drop_index("ix_dead_letters_dead_at", table_name="dead_letters")
    op.drop_table("dead_letters")
    op.drop_index("ix_outbox_leased", table_name="outbox")
    op.drop_index("ix_outbox_customer_key_id", table_name="outbox")
    op.drop_table("outbox")
