"""commands record their boot and a boot-clock reading, for clock correction

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

A device whose wall clock is wrong stamps every event wrong. Each command whose timestamp the
agent fixes now also records the boot it was fixed in and a reading of that boot's clock; the
drain corrects it once, at its first claim, from what it learned of the server's clock, and
clears boot_id (frozen). The columns are added in place (ALTER TABLE, no copy of the backlog);
queued rows get NULL: they are sent as recorded, as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ALTER TABLE .. ADD COLUMN: SQLite adds a nullable column in place.
    with op.batch_alter_table("outbox", recreate="never") as batch:
        batch.add_column(sa.Column("boot_id", sa.Text(), nullable=True))
        batch.add_column(sa.Column("mono_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox", recreate="never") as batch:
        batch.drop_column("mono_at")
        batch.drop_column("boot_id")
