"""settling: a batch's outcome recorded in one small row, applied to the outbox just after

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

A drainer with a batch queued behind the one just answered must not send it before the
answered batch's outcome is durable (DESIGN.md: a crash duplicates at most one batch). Deleting
the delivered rows is that durable outcome, but it is also the drain's most expensive write
(every index of 50 rows, the queue flags handed on): with it on the path between an answer and
the next request, a drain at a raised rate limit ran at about half a bare session's rate. The
drainer now commits the outcome as one row of `settling` (a JSON Settlement), lets the queued
batch go, and applies the outcome to the outbox in its next transaction, the one that claims.
Every claim (and an export) first applies whatever `settling` holds, whoever wrote it: a row
left by a crash between the two commits is applied before any of its rows can be leased again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tracker_agent.outbox import ddl

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "settling",
        sa.Column("id", ddl.BIG_ID, sa.Identity(), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.Float(), nullable=False),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    # A recorded outcome not applied yet would be lost with the table: its rows would go out
    # again (at-least-once still holds). Downgrade is for an idle outbox.
    op.drop_table("settling")
