"""The Alembic migrations: at head they build exactly tracker_agent.outbox.schema."""

from __future__ import annotations

import io
import re
import sqlite3
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from conftest import both_backends
from sqlalchemy import Engine, Identity, create_engine

from tracker_agent.outbox import removal, schema
from tracker_agent.outbox.engine import current_revision, open_outbox
from tracker_agent.outbox.revisions import HEAD_REVISION, OUTBOX_TABLES, alembic_config


@pytest.fixture
def engine(database_url) -> Iterator[Engine]:
    """A migrated outbox: an SQLite file, or a PostgreSQL database for @both_backends."""
    engine = open_outbox(database_url)
    yield engine
    engine.dispose()


def _schema_diffs(engine: Engine) -> list:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        diffs = compare_metadata(context, schema.metadata)
    if engine.dialect.name == "sqlite":  # SQLite has no IDENTITY (its DDL ignores sa.Identity)
        diffs = [d for d in diffs if not _is_identity_default(d)]
    return diffs


def _is_identity_default(diff: object) -> bool:
    changes = diff if isinstance(diff, list) else [diff]
    return all(
        isinstance(c, tuple) and c[0] == "modify_default" and isinstance(c[-1], Identity)
        for c in changes
    )


def _sqlite_master(engine: Engine, kind: str) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = ?", (kind,)
        ).all()
    return {name: sql for name, sql in rows}


def _normalised(sql: str) -> str:
    """The DDL without layout: ALTER TABLE .. ADD COLUMN (0003) splices its column into the
    stored CREATE TABLE text with its own spacing; create_all lays it out differently."""
    text = " ".join(sql.replace("IF NOT EXISTS ", "").split())
    return re.sub(r" ?([(),]) ?", r"\1", text)


def test_head_revision_constant_is_the_alembic_script_head():
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [HEAD_REVISION]


def test_outbox_tables_constant_lists_every_schema_table():
    assert OUTBOX_TABLES == set(schema.metadata.tables)


@both_backends
def test_database_at_head_matches_schema_metadata(engine):
    with engine.connect() as conn:  # Alembic's own reading: current_revision is SQLite's
        assert MigrationContext.configure(conn).get_current_revision() == HEAD_REVISION
    assert _schema_diffs(engine) == []


def test_database_at_head_has_the_ddl_of_schema_create_all(engine, tmp_path):
    # compare_metadata misses AUTOINCREMENT and partial-index WHERE clauses: compare the DDL too
    # (column order included), up to layout.
    reference = create_engine(f"sqlite:///{tmp_path / 'reference.db'}")
    try:
        schema.metadata.create_all(reference)
        for kind in ("table", "index"):
            expected = _sqlite_master(reference, kind)
            actual = _sqlite_master(engine, kind)
            actual.pop("alembic_version", None)
            actual.pop("sqlite_autoindex_alembic_version_1", None)
            assert set(actual) == set(expected)
            for name, sql in expected.items():
                assert (sql is None and actual[name] is None) or (
                    _normalised(actual[name]) == _normalised(sql)
                ), name
    finally:
        reference.dispose()
    assert "AUTOINCREMENT" in _sqlite_master(engine, "table")["outbox"]


def test_triggers_at_head_are_the_schema_triggers(engine):
    expected = {
        sql.split()[5]: _normalised(sql) for sql in schema.COUNTER_TRIGGERS + schema.QUEUE_TRIGGERS
    }  # CREATE TRIGGER IF NOT EXISTS <name> ...
    actual = {name: _normalised(sql) for name, sql in _sqlite_master(engine, "trigger").items()}
    assert actual == expected


def test_initial_migration_seeds_the_single_counters_row(engine):
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT id, rows, bytes FROM queue_counters").all() == [
            (1, 0, 0)
        ]


def test_the_insert_trigger_and_delete_rows_keep_rows_and_bytes_exact(engine):
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        cursor.executemany(
            "INSERT INTO outbox (kind, customer_key, payload, size, created_at) "
            "VALUES ('customers', '{}', '{}', ?, 0)",
            [(size,) for size in (10, 250, 3, 4096, 77)],
        )
        cursor.execute("COMMIT")
        cursor.execute("BEGIN IMMEDIATE")
        assert removal.delete_rows(cursor, "size IN (?, ?)", (250, 77)) == 2
        cursor.execute("COMMIT")
        counters = cursor.execute("SELECT rows, bytes FROM queue_counters WHERE id = 1").fetchone()
        actual = cursor.execute("SELECT COUNT(*), SUM(size) FROM outbox").fetchone()
        cursor.close()
    finally:
        raw.close()
    assert tuple(counters) == tuple(actual) == (3, 10 + 3 + 4096)


def test_counter_triggers_roll_back_with_the_transaction(engine):
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        cursor.execute(
            "INSERT INTO outbox (kind, customer_key, payload, size, created_at) "
            "VALUES ('customers', '{}', '{}', 99, 0)"
        )
        cursor.execute("ROLLBACK")
        counters = cursor.execute("SELECT rows, bytes FROM queue_counters").fetchall()
        cursor.close()
    finally:
        raw.close()
    assert [tuple(row) for row in counters] == [(0, 0)]


def test_downgrade_to_base_then_upgrade_rebuilds_the_schema(engine, tmp_path):
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    # sqlite_sequence (made by AUTOINCREMENT) cannot be dropped; it is harmless.
    assert set(_sqlite_master(engine, "table")) == {"alembic_version", "sqlite_sequence"}
    assert _sqlite_master(engine, "index") == {"sqlite_autoindex_alembic_version_1": None}
    assert _sqlite_master(engine, "trigger") == {}
    assert current_revision(engine) is None

    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
    assert current_revision(engine) == HEAD_REVISION
    assert _schema_diffs(engine) == []
    triggers = schema.COUNTER_TRIGGERS + schema.QUEUE_TRIGGERS
    assert len(_sqlite_master(engine, "trigger")) == len(triggers)


def test_open_outbox_rebuilds_a_file_downgraded_to_base(engine, tmp_path):
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    engine.dispose()
    reopened = open_outbox(f"sqlite:///{tmp_path / 'outbox.db'}")
    try:
        assert current_revision(reopened) == HEAD_REVISION
        assert _schema_diffs(reopened) == []
    finally:
        reopened.dispose()


def test_offline_mode_renders_the_migration_as_sql(tmp_path):
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", f"sqlite:///{tmp_path / 'never-created.db'}")
    config.output_buffer = io.StringIO()
    command.upgrade(config, "head", sql=True)
    sql = config.output_buffer.getvalue()
    assert "CREATE TABLE outbox" in sql and "CREATE TRIGGER" in sql
    assert "INSERT INTO alembic_version (version_num) VALUES ('0001')" in sql
    assert f"UPDATE alembic_version SET version_num='{HEAD_REVISION}'" in sql
    assert not (tmp_path / "never-created.db").exists()


def test_env_py_opens_its_own_engine_when_run_without_a_connection(tmp_path):
    path = tmp_path / "by-hand.db"
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", f"sqlite:///{path}")
    command.upgrade(config, "head")
    assert current_revision(str(path)) == HEAD_REVISION


def test_failed_migration_leaves_the_file_at_its_old_revision(engine, tmp_path):
    # DDL runs inside our BEGIN: a migration that breaks half-way commits nothing.
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
        conn.exec_driver_sql("CREATE TABLE dead_letters (id INTEGER)")  # upgrade will collide
    with pytest.raises(Exception, match="dead_letters"):
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
    path = tmp_path / "outbox.db"
    with sqlite3.connect(path) as check:
        tables = {row[0] for row in check.execute("SELECT name FROM sqlite_master")}
    check.close()
    assert "outbox" not in tables and "queue_counters" not in tables
    assert current_revision(str(path)) is None


def test_a_0001_file_with_queued_rows_is_migrated_on_open_and_keeps_them_in_order(tmp_path):
    from tracker_agent.outbox.store import OutboxStore

    path = tmp_path / "from-0001.db"
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", f"sqlite:///{path}")
    command.upgrade(config, "0001")
    old = sqlite3.connect(path)
    old.executemany(
        "INSERT INTO outbox (kind, customer_key, payload, size, created_at) VALUES (?,?,?,?,?)",
        [("customers/events", key, "{}", 2, 1.0) for key in ("a", "a", "b")],
    )
    old.execute("UPDATE outbox SET next_attempt_at = 5000 WHERE id = 1")  # a backs off
    old.commit()
    old.close()

    engine = open_outbox(f"sqlite:///{path}")
    try:
        assert current_revision(engine) == HEAD_REVISION
        indexes = _sqlite_master(engine, "index")
        assert "ix_outbox_retry" in indexes and "ix_outbox_customer_key_id" not in indexes
        store = OutboxStore(engine, max_rows=100, max_bytes=10**6)
        claim = dict(limit=50, max_bytes=10**6, lease_seconds=10_000)
        # a's second row waits behind its first, which waits for its retry; b goes.
        assert [r.id for r in store.claim("x", now=100.0, **claim)] == [3]
        assert [r.id for r in store.claim("y", now=6000.0, **claim)] == [1, 2]
        assert store.stats(now=6000.0)["in_flight"] == 3  # nothing lost in the migration
        store.close()
    finally:
        engine.dispose()


def test_a_0002_file_with_queued_rows_is_migrated_on_open_and_drains_in_order(tmp_path):
    from tracker_agent.outbox.store import OutboxStore, Settlement

    path = tmp_path / "from-0002.db"
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", f"sqlite:///{path}")
    command.upgrade(config, "0002")
    customers = ["a", "b", "a", "c", "b", "a", "c", "a"]  # row i + 1 belongs to customers[i]
    old = sqlite3.connect(path)
    old.executemany(
        "INSERT INTO outbox (kind, customer_key, payload, size, created_at) VALUES (?,?,?,?,?)",
        [("customers/events", key, "{}", 2, 1.0) for key in customers],
    )
    old.execute("UPDATE outbox SET next_attempt_at = 5000, attempts = 1 WHERE id = 1")  # a waits
    old.execute("UPDATE outbox SET lease_owner = 'old', lease_expires_at = 5000 WHERE id = 2")
    old.commit()
    old.close()

    engine = open_outbox(f"sqlite:///{path}")
    try:
        assert current_revision(engine) == HEAD_REVISION
        with engine.connect() as conn:
            heads = conn.exec_driver_sql("SELECT id FROM outbox WHERE is_head = 1 ORDER BY id")
            assert [row[0] for row in heads] == [1, 2, 4]  # each customer's oldest row
        store = OutboxStore(engine, max_rows=100, max_bytes=10**6)
        claim = dict(limit=2, max_bytes=10**6, lease_seconds=10)
        # a waits for its retry, b's row is leased by a drainer of the old version: only c goes.
        assert [r.id for r in store.claim("x", now=100.0, **claim)] == [4, 7]
        assert store.claim("x", now=100.0, **claim) == []
        store.settle("x", Settlement(delivered=[4, 7]), now=100.0)
        order: list[int] = []
        while rows := store.claim("y", now=6000.0, **claim):
            order += [r.id for r in rows]
            store.settle("y", Settlement(delivered=[r.id for r in rows]), now=6000.0)
        assert order == [1, 2, 3, 5, 6, 8]  # id order, so each customer's order
        assert store.stats(now=6000.0)["pending"] == 0
        store.close()
    finally:
        engine.dispose()


def test_a_0003_file_with_queued_rows_gets_the_import_ledger_on_open(tmp_path):
    from tracker_agent.outbox.commands import NewCommand
    from tracker_agent.outbox.store import OutboxStore

    path = tmp_path / "from-0003.db"
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", f"sqlite:///{path}")
    command.upgrade(config, "0003")
    old = sqlite3.connect(path)
    old.executemany(
        "INSERT INTO outbox (kind, customer_key, payload, size, created_at) VALUES (?,?,?,?,?)",
        [("customers", "a", "{}", 2, 1.0)] * 3,
    )
    old.commit()
    old.close()

    engine = open_outbox(f"sqlite:///{path}")
    try:
        assert current_revision(engine) == HEAD_REVISION
        store = OutboxStore(engine, max_rows=100, max_bytes=10**6)
        row = NewCommand("customers", "a", "{}")
        assert store.enqueue_once([row, row], [b"k1", b"k2"]) == 2
        assert store.enqueue_once([row], [b"k1"]) == 0
        assert store.stats()["pending"] == 5
        store.close()
    finally:
        engine.dispose()
