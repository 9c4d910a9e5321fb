"""claims check the few blocked rows instead of an index over every customer's rows

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

ix_outbox_customer_key_id put one entry per queued row at a random place in the index (the
customer's), so every enqueue and every delivered batch of 50 rewrote ~50 scattered index
pages: a third of the WAL volume of the drain. The claim now reads the small set of blocked
rows (leased, or waiting for a retry) through two partial indexes and skips the later rows of
their customers. ix_outbox_retry holds only rows that have been retried at least once.
"""

from __future__ import annotations

from alembic import op

from tracker_agent.outbox import ddl

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_outbox_customer_key_id", table_name="outbox")
    op.create_index(
        "ix_outbox_retry", "outbox", ["next_attempt_at"], **ddl.where("next_attempt_at > 0")
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_retry", table_name="outbox")
    op.create_index("ix_outbox_customer_key_id", "outbox", ["customer_key", "id"])
