"""receipts: a flag on the commands that asked for one, and the delivered ones remembered

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

A command queued with a receipt (TrackerAgent.track_event and friends) carries receipt = 1 in
outbox, and in dead_letters if it gets there (a dead letter put back keeps it). When one is
delivered, its id, time and attempt count go to `receipts` (no payload), kept for a bounded
retention (receipt_retention seconds, receipt_max_rows rows). The flag columns are added in
place (ALTER TABLE, no copy of the backlog): existing rows have no receipt. On PostgreSQL
(see tracker_agent/outbox/ddl.py) a receipt's id is a BIGINT, as the outbox's identity is.

"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tracker_agent.outbox import ddl

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("outbox", "dead_letters"):
        # ALTER TABLE .. ADD COLUMN: in place, whatever the backlog (a copy of outbox would
        # also lose AUTOINCREMENT, and with it the promise that an id is never reused).
        with op.batch_alter_table(table, recreate="never") as batch:
            batch.add_column(sa.Column("receipt", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "receipts",
        sa.Column("id", ddl.BIG_ID, primary_key=True, autoincrement=False),
        sa.Column("delivered_at", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("receipts")
    for table in ("dead_letters", "outbox"):
        with op.batch_alter_table(table, recreate="never") as batch:
            batch.drop_column("receipt")
