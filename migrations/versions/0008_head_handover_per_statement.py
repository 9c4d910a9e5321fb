"""PostgreSQL: the queue flag is handed on once per DELETE statement, not once per row

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

0003's AFTER DELETE trigger ran its PL/pgSQL body for every deleted head: a customer lock and
an UPDATE per row, 50 per delivered batch when the batch spans 50 customers (1.1 of the 1.8 ms
its DELETE cost the server, measured with pg_stat_statements). It is now a statement-level
trigger over the deleted rows (a transition table): one body per DELETE takes the customers'
locks in one sorted pass (the order the store takes them in, so two deletes cannot deadlock)
and sets the flag on each such customer's oldest remaining row in one UPDATE. The rule is
0003's: the customer's lock first, so the queries see every other writer's committed rows.

SQLite has no statement-level triggers; its per-row trigger is compiled into the DELETE and
stays as it is.
"""

from __future__ import annotations

from tracker_agent.outbox import ddl

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

#: 0003's value (tracker_agent.constants.PG_CUSTOMER_LOCK_CLASS), frozen with the migration.
_PG_CUSTOMER_LOCK = 1953655649
_NAME = "trg_outbox_head_delete"
_PER_STATEMENT = f"""PERFORM count(pg_advisory_xact_lock({_PG_CUSTOMER_LOCK}, h)) FROM (
    SELECT DISTINCT hashtext(customer_key) AS h FROM removed WHERE is_head = 1 ORDER BY 1) AS s;
UPDATE outbox SET is_head = 1 WHERE id IN (
    SELECT (SELECT min(x.id) FROM outbox AS x WHERE x.customer_key = r.customer_key)
    FROM (SELECT DISTINCT customer_key FROM removed WHERE is_head = 1) AS r);
RETURN NULL;"""
# 0003's per-row trigger, for the downgrade.
_PER_ROW = f"""PERFORM pg_advisory_xact_lock({_PG_CUSTOMER_LOCK}, hashtext(OLD.customer_key));
UPDATE outbox SET is_head = 1 WHERE id = (SELECT min(id) FROM outbox
    WHERE customer_key = OLD.customer_key);
RETURN NULL;"""


def upgrade() -> None:
    if not ddl.is_postgresql():
        return
    ddl.drop_trigger(_NAME, "outbox")
    ddl.create_trigger(
        _NAME,
        "outbox",
        "AFTER DELETE",
        _PER_STATEMENT,
        options="REFERENCING OLD TABLE AS removed FOR EACH STATEMENT",
    )


def downgrade() -> None:
    if not ddl.is_postgresql():
        return
    ddl.drop_trigger(_NAME, "outbox")
    ddl.create_trigger(
        _NAME, "outbox", "AFTER DELETE", _PER_ROW, options="FOR EACH ROW WHEN (OLD.is_head = 1)"
    )
