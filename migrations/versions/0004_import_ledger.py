"""a ledger of imported lines, so that an import run again queues nothing twice

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

`tracker-agent import` of a file that failed half-way, then fixed and run again, queued its
first lines twice (with new timestamps, so the server's deduplication could not help). Each
imported line now leaves a key (a digest of its content and its occurrence number), written in
the transaction that queues the line; a line whose key is known is skipped. Keys are appended
to import_ledger_log (one row per transaction) and moved into import_ledger (one row per key)
in sorted passes. Keys older than import_ledger_days are pruned by the next import.

On PostgreSQL (see tracker_agent/outbox/ddl.py): keys are bytea, the log's id a BIGINT identity.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tracker_agent.outbox import ddl

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "import_ledger",
        sa.Column("key", sa.LargeBinary(), primary_key=True),
        sa.Column("imported_at", sa.Float(), nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_import_ledger_imported_at", "import_ledger", ["imported_at"])
    op.create_table(
        "import_ledger_log",
        sa.Column("id", ddl.BIG_ID, sa.Identity(), primary_key=True),
        sa.Column("keys", sa.LargeBinary(), nullable=False),
        sa.Column("imported_at", sa.Float(), nullable=False),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("import_ledger_log")
    op.drop_index("ix_import_ledger_imported_at", table_name="import_ledger")
    op.drop_table("import_ledger")
