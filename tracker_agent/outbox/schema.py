"""The outbox's tables, as SQLAlchemy Core metadata (the migrations at head must match it).

outbox          one row per accepted tracking command, FIFO by id; delivered rows are deleted
dead_letters    commands the server rejected (or that hit max attempts/age), kept with the reason
queue_counters  one row (id=1): rows and bytes in `outbox`, kept exact by triggers, so that the
                bound check at enqueue never counts a million rows
agent_state     small key/value facts shared by every process on the file: delivered total,
                last success and error, pause reason, backoff deadline
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

#: Command names, as the batch endpoint spells them.
KIND_EVENT = "customers/events"
KIND_CUSTOMER = "customers"

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
    sqlite_autoincrement=True,
)
# Partial: only leased rows are in it (a handful), so counting in-flight rows stays O(leased)
# and inserting a new (unleased) row never touches it.
Index(
    "ix_outbox_leased",
    outbox.c.lease_expires_at,
    sqlite_where=outbox.c.lease_expires_at > 0,
)
# Partial: only rows retried at least once. With ix_outbox_leased it finds the rows that block
# their customer's later rows (in flight, or waiting for a retry) without an index over every
# row's customer, which cost a scattered page write per enqueue and per delivered row.
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
)
Index("ix_dead_letters_dead_at", dead_letters.c.dead_at)

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

#: Triggers that keep queue_counters exact; created by the initial migration.
COUNTER_TRIGGERS = (
    """CREATE TRIGGER IF NOT EXISTS trg_outbox_count_insert AFTER INSERT ON outbox
    BEGIN UPDATE queue_counters SET rows = rows + 1, bytes = bytes + NEW.size WHERE id = 1; END""",
    """CREATE TRIGGER IF NOT EXISTS trg_outbox_count_delete AFTER DELETE ON outbox
    BEGIN UPDATE queue_counters SET rows = rows - 1, bytes = bytes - OLD.size WHERE id = 1; END""",
)
