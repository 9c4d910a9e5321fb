"""claims walk a queue of queues: a customer index and a flag on each customer's oldest row

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

0002's claim read every due row in id order and skipped those of a blocked customer (a batch in
flight, or waiting for a retry): one customer with 200k rows behind its batch in flight cost
200k rows per claim. The claim now walks the customers (ix_outbox_heads: one entry per customer,
at its oldest row, in id order), skips a blocked customer at the cost of one entry, and takes a
chosen customer's next rows through ix_outbox_customer. Triggers keep is_head on exactly the
oldest row of each customer. The column is added in place (ALTER TABLE, no copy of the
backlog); queued rows get their flags from one grouped pass over the new index.

On PostgreSQL the triggers are PL/pgSQL: a BEFORE INSERT trigger sets the new row's flag (no
second row version), an AFTER DELETE one hands it on. Both first take the customer's
transaction-level advisory lock (class _PG_CUSTOMER_LOCK, key hashtext(customer_key)), the lock
the store takes before enqueueing or deleting a customer's rows: the trigger's queries then see
every other writer's committed rows of that customer, so two hosts never leave a customer with
no head or two.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tracker_agent.outbox import ddl

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Frozen copies of tracker_agent/outbox/schema.py QUEUE_TRIGGERS as of this revision (a test
# compares the triggers at head with the schema's).
_TRIGGERS = {
    "trg_outbox_head_insert": """CREATE TRIGGER IF NOT EXISTS trg_outbox_head_insert
    AFTER INSERT ON outbox
    WHEN NOT EXISTS (SELECT 1 FROM outbox WHERE customer_key = NEW.customer_key AND id < NEW.id)
    BEGIN
    UPDATE outbox SET is_head = 0 WHERE is_head = 1 AND id = (SELECT min(id) FROM outbox
        WHERE customer_key = NEW.customer_key AND id > NEW.id);
    UPDATE outbox SET is_head = 1 WHERE id = NEW.id;
    END""",
    "trg_outbox_head_delete": """CREATE TRIGGER IF NOT EXISTS trg_outbox_head_delete
    AFTER DELETE ON outbox
    WHEN OLD.is_head = 1
    BEGIN
    UPDATE outbox SET is_head = 1 WHERE id = (SELECT min(id) FROM outbox
        WHERE customer_key = OLD.customer_key);
    END""",
}


#: The advisory-lock class of a customer's lock; tracker_agent.constants.PG_CUSTOMER_LOCK_CLASS
#: is the same number (frozen here: a migration never changes after release).
_PG_CUSTOMER_LOCK = 1953655649
_PG_TRIGGERS = {
    "trg_outbox_head_insert": (
        "BEFORE INSERT",
        "FOR EACH ROW",
        f"""PERFORM pg_advisory_xact_lock({_PG_CUSTOMER_LOCK}, hashtext(NEW.customer_key));
IF EXISTS (SELECT 1 FROM outbox WHERE customer_key = NEW.customer_key AND id < NEW.id) THEN
    NEW.is_head := 0;
ELSE
    UPDATE outbox SET is_head = 0
    WHERE customer_key = NEW.customer_key AND is_head = 1 AND id > NEW.id;
    NEW.is_head := 1;
END IF;
RETURN NEW;""",
    ),
    "trg_outbox_head_delete": (
        "AFTER DELETE",
        "FOR EACH ROW WHEN (OLD.is_head = 1)",
        f"""PERFORM pg_advisory_xact_lock({_PG_CUSTOMER_LOCK}, hashtext(OLD.customer_key));
UPDATE outbox SET is_head = 1 WHERE id = (SELECT min(id) FROM outbox
    WHERE customer_key = OLD.customer_key);
RETURN NULL;""",
    ),
}


def upgrade() -> None:
    # ALTER TABLE .. ADD COLUMN: SQLite adds a column with a constant default in place.
    with op.batch_alter_table("outbox", recreate="never") as batch:
        batch.add_column(sa.Column("is_head", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_outbox_customer", "outbox", ["customer_key", "id"])
    # The queued rows: each customer's oldest one becomes its head (read from the new index).
    op.execute(
        "UPDATE outbox SET is_head = 1"
        " WHERE id IN (SELECT min(id) FROM outbox GROUP BY customer_key)"
    )
    op.create_index("ix_outbox_heads", "outbox", ["id", "customer_key"], **ddl.where("is_head = 1"))
    if ddl.is_postgresql():
        for name, (event, options, body) in _PG_TRIGGERS.items():
            ddl.create_trigger(name, "outbox", event, body, options=options)
    else:
        for sql in _TRIGGERS.values():
            op.execute(sql)


def downgrade() -> None:
    for name in _TRIGGERS:
        ddl.drop_trigger(name, "outbox")
    op.drop_index("ix_outbox_heads", table_name="outbox")
    op.drop_index("ix_outbox_customer", table_name="outbox")
    # ALTER TABLE .. DROP COLUMN (SQLite >= 3.35): a copy of the table would lose AUTOINCREMENT.
    with op.batch_alter_table("outbox", recreate="never") as batch:
        batch.drop_column("is_head")
