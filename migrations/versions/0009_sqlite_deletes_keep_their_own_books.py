"""SQLite: no delete triggers; the deleting transaction keeps the counters and queue flags

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

SQLite has only row-level triggers, and the mere presence of an AFTER DELETE trigger turns off
its one-pass delete and runs a trigger program for every row: deleting a delivered batch of
50 rows cost 0.61 ms with 0001's counter trigger and 0003's hand-over trigger, 0.45 ms with
triggers that never fire, 0.14 ms with none. At a raised rate limit that was 0.7 ms of the
drain's CPU per request (paired runs, 50 customers). Both delete triggers are dropped; every
delete of outbox rows goes through tracker_agent.outbox.removal.delete_rows (Backend.
delete_rows), which lowers the counters once per statement and hands each customer's flag on
in one statement. The insert triggers stay. PostgreSQL keeps its statement-level triggers.
"""

from __future__ import annotations

from alembic import op

from tracker_agent.outbox import ddl

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Frozen copies of 0001's and 0003's delete triggers, for the downgrade.
_TRIGGERS = {
    "trg_outbox_count_delete": """CREATE TRIGGER IF NOT EXISTS trg_outbox_count_delete
    AFTER DELETE ON outbox
    BEGIN UPDATE queue_counters SET rows = rows - 1, bytes = bytes - OLD.size WHERE id = 1; END""",
    "trg_outbox_head_delete": """CREATE TRIGGER IF NOT EXISTS trg_outbox_head_delete
    AFTER DELETE ON outbox
    WHEN OLD.is_head = 1
    BEGIN
    UPDATE outbox SET is_head = 1 WHERE id = (SELECT min(id) FROM outbox
        WHERE customer_key = OLD.customer_key);
    END""",
}


def upgrade() -> None:
    if ddl.is_postgresql():
        return
    for name in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")


def downgrade() -> None:
    if ddl.is_postgresql():
        return
    for sql in _TRIGGERS.values():
        op.execute(sql)
