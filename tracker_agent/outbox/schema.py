"""The outbox's tables, as SQLAlchemy Core metadata (the migrations at head must match it).

outbox          one row per accepted tracking command, FIFO by id; delivered rows are deleted.
                Each customer's rows are a queue of their own (ix_outbox_customer), and the
                oldest row of each is flagged (is_head, kept by triggers): the claim walks that
                queue of queues in id order and never reads the rows of a blocked customer
dead_letters    commands the server rejected (or that hit max attempts/age), kept with the reason
queue_counters  one row (id=1): rows and bytes in `outbox`, kept exact by triggers, so that the
                bound check at enqueue never counts a million rows
receipts        commands with a receipt that were delivered: id, time, attempts (no payload),
                kept for receipt_retention seconds and receipt_max_rows rows
agent_state     small key/value facts shared by every process on the file: delivered total,
                last success and error, pause reason, backoff deadline
import_ledger   one row per imported line (a key of its content), so that an import run
                again queues nothing twice; rows older than import_ledger_days are pruned
import_ledger_log  the keys recorded lately, one row per transaction (appending is cheaper
                than inserting each key in import_ledger), moved there in bulk now and then
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

outbox = Table(
    "outbox",
    metadata,
    # AUTOINCREMENT: ids are never reused, so a dead letter can return under its original id
    # and keep its place in FIFO order.
    Column("id", Integer, primary_key=True),
    Column("kind", String(32), nullable=False),
    # Canonical JSON of customer_ids (sorted keys): commands with equal keys keep their order
    # (the claim skips a customer's rows after one that is in flight or waiting to retry).
    Column("customer_key", Text, nullable=False),
    # The batch command's "data" object, as compact JSON, timestamps already fixed.
    Column("payload", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", Float, nullable=False, server_default="0"),
    Column("lease_owner", String(64), nullable=True),
    # 0 means "not leased"; a lease is live while lease_expires_at > now.
    Column("lease_expires_at", Float, nullable=False, server_default="0"),
    Column("last_error", Text, nullable=True),
    # 1 on the oldest row of its customer (QUEUE_TRIGGERS keep exactly one per customer), 0 on
    # the others. Last: migration 0003 added it with ALTER TABLE (no copy of the backlog).
    Column("is_head", Integer, nullable=False, server_default="0"),
    # 1 if the caller asked for a receipt (delivery is then remembered in `receipts`). Added
    # by migration 0005 with ALTER TABLE, hence after is_head.
    Column("receipt", Integer, nullable=False, server_default="0"),
    # The boot the agent fixed the timestamp in and a reading of that boot's clock (bootclock);
    # NULL once the row was first claimed (its timestamp corrected or not, then frozen: see
    # outbox/clock.py), and for rows whose timestamp the caller gave. Migration 0006 added
    # them with ALTER TABLE (no copy of the backlog), hence after receipt.
    Column("boot_id", Text, nullable=True),
    Column("mono_at", Float, nullable=True),
    sqlite_autoincrement=True,
)
# A customer's queue in id order: the claim takes a customer's next rows here, one seek each,
# and the triggers find a customer's oldest row. It costs one index page per enqueued row and
# per delivered row (the price of a claim that never reads a blocked customer's rows).
Index("ix_outbox_customer", outbox.c.customer_key, outbox.c.id)
# Partial: one entry per customer with queued rows, in the order of its oldest row (the queue
# of queues). Covering (customer_key), so skipping a blocked customer costs one index entry.
Index(
    "ix_outbox_heads",
    outbox.c.id,
    outbox.c.customer_key,
    sqlite_where=outbox.c.is_head == 1,
)
# Partial: only leased rows are in it (a handful), so counting in-flight rows stays O(leased)
# and inserting a new (unleased) row never touches it.
Index(
    "ix_outbox_leased",
    outbox.c.lease_expires_at,
    sqlite_where=outbox.c.lease_expires_at > 0,
)
# Partial: only rows retried at least once. With ix_outbox_leased it finds the rows that block
# their customer's later rows (in flight, or waiting for a retry): a handful, whatever the
# backlog.
Index(
    "ix_outbox_retry",
    outbox.c.next_attempt_at,
    sqlite_where=outbox.c.next_attempt_at > 0,
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("kind", String(32), nullable=False),
    Column("customer_key", Text, nullable=False),
    Column("payload", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("dead_at", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("receipt", Integer, nullable=False, server_default="0"),  # kept when put back
)
Index("ix_dead_letters_dead_at", dead_letters.c.dead_at)

receipts = Table(
    "receipts",
    metadata,
    # The outbox id the receipt was given (never reused: outbox ids are AUTOINCREMENT).
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("delivered_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False),
)
# No index on delivered_at: a second b-tree per delivered receipt cost 6% of the settling
# commit; retention scans the table by id once a minute instead, on a read connection.

queue_counters = Table(
    "queue_counters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("rows", Integer, nullable=False, server_default="0"),
    Column("bytes", Integer, nullable=False, server_default="0"),
)

agent_state = Table(
    "agent_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=True),
)

import_ledger = Table(
    "import_ledger",
    metadata,
    # Opaque and chosen by the importer (see tracker_agent/importing.py, ledger_key): a digest
    # of a line's content and its occurrence number. WITHOUT ROWID: the key is the table's only
    # B-tree. Filled from import_ledger_log in sorted passes (see outbox/ledger.py).
    Column("key", LargeBinary, primary_key=True),
    Column("imported_at", Float, nullable=False),
    sqlite_with_rowid=False,
)
# The retention prune deletes the oldest keys through it, costing what it deletes.
Index("ix_import_ledger_imported_at", import_ledger.c.imported_at)

import_ledger_log = Table(
    "import_ledger_log",
    metadata,
    # AUTOINCREMENT: ids are never reused, so a process that read the log up to an id reads
    # exactly the rows appended since.
    Column("id", Integer, primary_key=True),
    # The keys a committed enqueue recorded, packed (ledger.pack).
    Column("keys", LargeBinary, nullable=False),
    Column("imported_at", Float, nullable=False),
    sqlite_autoincrement=True,
)

#: Triggers that keep queue_counters exact; created by the initial migration.
COUNTER_TRIGGERS = (
    """CREATE TRIGGER IF NOT EXISTS trg_outbox_count_insert AFTER INSERT ON outbox
    BEGIN UPDATE queue_counters SET rows = rows + 1, bytes = bytes + NEW.size WHERE id = 1; END""",
    """CREATE TRIGGER IF NOT EXISTS trg_outbox_count_delete AFTER DELETE ON outbox
    BEGIN UPDATE queue_counters SET rows = rows - 1, bytes = bytes - OLD.size WHERE id = 1; END""",
)

#: Triggers that keep is_head on exactly the oldest row of each customer, whoever writes the
#: table (the enqueue, a dead letter put back under its old id, drop_oldest, a delivery);
#: created by migration 0003. A row that becomes its customer's oldest takes the flag from the
#: one after it (a dead letter returns ahead of its customer's queue); deleting the oldest row
#: hands the flag to the next one. Each is one or two seeks in ix_outbox_customer.
QUEUE_TRIGGERS = (
    """CREATE TRIGGER IF NOT EXISTS trg_outbox_head_insert AFTER INSERT ON outbox
    WHEN NOT EXISTS (SELECT 1 FROM outbox WHERE customer_key = NEW.customer_key AND id < NEW.id)
    BEGIN
    UPDATE outbox SET is_head = 0 WHERE is_head = 1 AND id = (SELECT min(id) FROM outbox
        WHERE customer_key = NEW.customer_key AND id > NEW.id);
    UPDATE outbox SET is_head = 1 WHERE id = NEW.id;
    END""",
    """CREATE TRIGGER IF NOT EXISTS trg_outbox_head_delete AFTER DELETE ON outbox
    WHEN OLD.is_head = 1
    BEGIN
    UPDATE outbox SET is_head = 1 WHERE id = (SELECT min(id) FROM outbox
        WHERE customer_key = OLD.customer_key);
    END""",
)
