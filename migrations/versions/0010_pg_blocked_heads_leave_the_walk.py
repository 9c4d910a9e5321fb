"""PostgreSQL: a blocked customer's head leaves the queue of queues (is_head = 2)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

Until now, every claim walked ix_outbox_heads past each blocked customer (a batch in flight, a
retry pending), under one advisory lock that serialised all claims. With 4 drainers and 1,000
customers, 800 customers were in flight: a claim read 900 heads and folded 800 blocked rows
into jsonb maps, 15 ms, and the drainers spent 3.4 ms per request waiting for the lock.

Now the flag says whether the head is free: 1 on the oldest row of a customer with nothing
holding it, 2 on the oldest row of a customer that is leased or waits for a retry (the row's
lease_expires_at > 0 or next_attempt_at > 0), 0 on every other row. ix_outbox_heads (is_head =
1) holds only free customers, so the claim reads about as many heads as it takes; it finds the
blocked heads whose block has passed (an expired lease, a retry now due) through the two
partial indexes of leased and retried rows, which hold only those rows.

Triggers keep the flag whoever writes:
- insert (0003's, per row): the new row's flag follows its lease and retry columns (a new row
  has neither: 1), and a row inserted ahead of a customer's head (a dead letter put back)
  takes the flag from it, whatever the old head's value.
- delete (0008's, per statement): the oldest remaining row of each customer whose head went
  gets 1 or 2 by the same rule. It is sought after the old head's id: below it lie only the
  index entries of the customer's rows deleted since the last vacuum, which 0008's seek
  walked through each time.
- state (new, per row, BEFORE UPDATE): a head whose lease or retry columns change and whose
  flag the statement did not set itself gets the flag the rule gives (a release, a retry, an
  owner taken back, an export lease). The claim sets 2 itself, so it does not fire there.

SQLite keeps 0/1 flags and its claim (one writer at a time: it has no claim lock to lose).
"""

from __future__ import annotations

from alembic import op

from tracker_agent.outbox import ddl

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

#: tracker_agent.constants.PG_CUSTOMER_LOCK_CLASS, frozen with the migration.
_PG_CUSTOMER_LOCK = 1953655649
_INSERT = "trg_outbox_head_insert"
_DELETE = "trg_outbox_head_delete"
_STATE = "trg_outbox_head_state"

_FLAG_OF_NEW = "CASE WHEN NEW.lease_expires_at > 0 OR NEW.next_attempt_at > 0 THEN 2 ELSE 1 END"

_LOCK_NEW = f"PERFORM pg_advisory_xact_lock({_PG_CUSTOMER_LOCK}, hashtext(NEW.customer_key));"
_INSERT_BODY = f"""{_LOCK_NEW}
IF EXISTS (SELECT 1 FROM outbox WHERE customer_key = NEW.customer_key AND id < NEW.id) THEN
    NEW.is_head := 0;
ELSE
    UPDATE outbox SET is_head = 0
    WHERE customer_key = NEW.customer_key AND is_head > 0 AND id > NEW.id;
    NEW.is_head := {_FLAG_OF_NEW};
END IF;
RETURN NEW;"""
_DELETE_BODY = f"""PERFORM count(pg_advisory_xact_lock({_PG_CUSTOMER_LOCK}, h)) FROM (
    SELECT DISTINCT hashtext(customer_key) AS h FROM removed WHERE is_head > 0 ORDER BY 1) AS s;
UPDATE outbox SET is_head = CASE WHEN lease_expires_at > 0 OR next_attempt_at > 0
    THEN 2 ELSE 1 END
WHERE id IN (
    SELECT (SELECT min(x.id) FROM outbox AS x
            WHERE x.customer_key = r.customer_key AND x.id > r.id)
    FROM removed AS r WHERE r.is_head > 0);
RETURN NULL;"""
_STATE_BODY = f"""NEW.is_head := {_FLAG_OF_NEW};
RETURN NEW;"""
_STATE_WHEN = (
    "FOR EACH ROW WHEN (OLD.is_head > 0 AND NEW.is_head = OLD.is_head"
    " AND (NEW.lease_expires_at <> OLD.lease_expires_at"
    " OR NEW.next_attempt_at <> OLD.next_attempt_at))"
)

# 0003's insert trigger and 0008's delete trigger, for the downgrade.
_OLD_INSERT_BODY = f"""{_LOCK_NEW}
IF EXISTS (SELECT 1 FROM outbox WHERE customer_key = NEW.customer_key AND id < NEW.id) THEN
    NEW.is_head := 0;
ELSE
    UPDATE outbox SET is_head = 0
    WHERE customer_key = NEW.customer_key AND is_head = 1 AND id > NEW.id;
    NEW.is_head := 1;
END IF;
RETURN NEW;"""
_OLD_DELETE_BODY = f"""PERFORM count(pg_advisory_xact_lock({_PG_CUSTOMER_LOCK}, h)) FROM (
    SELECT DISTINCT hashtext(customer_key) AS h FROM removed WHERE is_head = 1 ORDER BY 1) AS s;
UPDATE outbox SET is_head = 1 WHERE id IN (
    SELECT (SELECT min(x.id) FROM outbox AS x WHERE x.customer_key = r.customer_key)
    FROM (SELECT DISTINCT customer_key FROM removed WHERE is_head = 1) AS r);
RETURN NULL;"""
_DELETE_OPTIONS = "REFERENCING OLD TABLE AS removed FOR EACH STATEMENT"


def _replace(name: str, event: str, body: str, options: str) -> None:
    ddl.drop_trigger(name, "outbox")
    ddl.create_trigger(name, "outbox", event, body, options=options)


def upgrade() -> None:
    if not ddl.is_postgresql():
        return
    _replace(_INSERT, "BEFORE INSERT", _INSERT_BODY, "FOR EACH ROW")
    _replace(_DELETE, "AFTER DELETE", _DELETE_BODY, _DELETE_OPTIONS)
    _replace(_STATE, "BEFORE UPDATE", _STATE_BODY, _STATE_WHEN)
    # The heads of customers held now: only those rows are leased or retried.
    op.execute(
        "UPDATE outbox SET is_head = 2 WHERE is_head = 1"
        " AND (lease_expires_at > 0 OR next_attempt_at > 0)"
    )


def downgrade() -> None:
    if not ddl.is_postgresql():
        return
    ddl.drop_trigger(_STATE, "outbox")
    op.execute("UPDATE outbox SET is_head = 1 WHERE is_head = 2")
    _replace(_INSERT, "BEFORE INSERT", _OLD_INSERT_BODY, "FOR EACH ROW")
    _replace(_DELETE, "AFTER DELETE", _OLD_DELETE_BODY, _DELETE_OPTIONS)
