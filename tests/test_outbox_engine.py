"""Opening the outbox: default location, pragmas, refusing foreign files, errors, concurrency."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import Engine, text

from tracker_agent.exceptions import (
    ConfigError,
    NotAnOutboxError,
    OutboxError,
    OutboxLockedError,
    OutboxVersionError,
    StorageFullError,
    StorageReadOnlyError,
)
from tracker_agent.outbox.engine import (
    BEGIN_OPTION,
    _switch_to_wal,
    create_outbox_engine,
    current_revision,
    open_outbox,
)
from tracker_agent.outbox.errors import translate_sqlite_error
from tracker_agent.outbox.files import default_database_url, sqlite_path
from tracker_agent.outbox.revisions import HEAD_REVISION

REPO_ROOT = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 60
PROCESSES = 4


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "state" / "outbox.db"


@pytest.fixture
def outbox(db_path) -> Iterator[Engine]:
    engine = open_outbox(_url(db_path))
    yield engine
    engine.dispose()


def _snapshot(path: Path) -> tuple[str, list[str]]:
    """The file's hash and its directory listing: proof that nothing was written."""
    return hashlib.sha256(path.read_bytes()).hexdigest(), sorted(os.listdir(path.parent))


# --- where the outbox lives ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"STATE_DIRECTORY": "/var/lib/ta", "XDG_STATE_HOME": "/x", "HOME": "/h"},
            "/var/lib/ta/outbox.db",
        ),
        ({"STATE_DIRECTORY": "/var/lib/ta:/var/lib/other"}, "/var/lib/ta/outbox.db"),
        ({"XDG_STATE_HOME": "/x/state", "HOME": "/h"}, "/x/state/tracker-agent/outbox.db"),
        (
            {"XDG_STATE_HOME": "relative/state", "HOME": "/h"},
            "/h/.local/state/tracker-agent/outbox.db",
        ),
        (
            {"STATE_DIRECTORY": "", "XDG_STATE_HOME": "", "HOME": "/home/u"},
            "/home/u/.local/state/tracker-agent/outbox.db",
        ),
        ({"HOME": "/odd 100%?dir"}, "/odd 100%?dir/.local/state/tracker-agent/outbox.db"),
    ],
)
def test_default_database_url_resolves_the_state_directory(env, expected):
    url = default_database_url(env)
    assert url.startswith("sqlite:////")
    assert sqlite_path(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:////var/lib/ta/outbox.db", "/var/lib/ta/outbox.db"),
        ("sqlite+pysqlite:////tmp/x.db", "/tmp/x.db"),
        ("sqlite:///with%20space.db", os.path.abspath("with space.db")),
        ("sqlite:///relative/outbox.db", os.path.abspath("relative/outbox.db")),
    ],
)
def test_sqlite_path_returns_the_absolute_file_path(url, expected):
    assert sqlite_path(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://user:s3cret@db.example/outbox",
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite:///file:mem?mode=memory&uri=true",
        "sqlite://host/outbox.db",
        "sqlite:////tmp/outbox.db?timeout=3",
        "/tmp/outbox.db",
    ],
)
def test_sqlite_path_refuses_anything_but_an_sqlite_file(url):
    with pytest.raises(ConfigError, match="database_url") as info:
        sqlite_path(url)
    assert "s3cret" not in str(info.value)


# --- engine settings ----------------------------------------------------------------------


def _pragmas(conn) -> tuple:
    return tuple(
        conn.exec_driver_sql(f"PRAGMA {name}").scalar()
        for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
    )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, ("wal", 2, 30000, 1)),
        ({"synchronous": "NORMAL", "busy_timeout": 2.5}, ("wal", 1, 2500, 1)),
        ({"synchronous": "full", "busy_timeout": 0}, ("wal", 2, 0, 1)),
    ],
)
def test_every_connection_gets_the_outbox_pragmas(db_path, kwargs, expected):
    engine = open_outbox(_url(db_path), **kwargs)
    try:
        with engine.connect() as first, engine.connect() as second:  # two pooled connections
            assert _pragmas(first) == expected
            assert _pragmas(second) == expected
        raw = engine.raw_connection()
        try:
            assert raw.driver_connection.isolation_level is None
        finally:
            raw.close()
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"synchronous": "OFF"}, "synchronous"), ({"busy_timeout": -1}, "busy_timeout")],
)
def test_bad_engine_options_raise_config_error_before_touching_disk(db_path, kwargs, field):
    with pytest.raises(ConfigError, match=field):
        open_outbox(_url(db_path), **kwargs)
    assert not db_path.parent.exists()


def test_new_outbox_directory_is_private(outbox, db_path):
    assert db_path.parent.stat().st_mode & 0o777 == 0o700


def test_core_transactions_really_roll_back(outbox):
    # Without the "begin" hook, isolation_level=None would autocommit this insert.
    with outbox.connect() as conn:
        with conn.begin() as transaction:
            conn.execute(text("INSERT INTO agent_state (key, value) VALUES ('k', 'v')"))
            transaction.rollback()
        assert conn.execute(text("SELECT COUNT(*) FROM agent_state")).scalar() == 0


def test_begin_option_immediate_takes_the_write_lock_up_front(outbox, db_path):
    with outbox.connect() as conn:
        conn.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})
        with conn.begin():
            conn.execute(text("SELECT 1"))  # a read only: DEFERRED would take no write lock
            other = sqlite3.connect(db_path, timeout=0, isolation_level=None)
            try:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            finally:
                other.close()


def test_begin_option_refuses_unknown_modes(outbox):
    with outbox.connect() as conn:
        conn.execution_options(**{BEGIN_OPTION: "IMMEDIATE; DROP TABLE outbox"})
        with pytest.raises(ConfigError, match=BEGIN_OPTION):
            conn.execute(text("SELECT 1"))


def test_reopening_an_outbox_at_head_skips_migration_and_alembic(outbox, db_path):
    outbox.dispose()
    script = textwrap.dedent(
        f"""
        import sys
        import tracker_agent.outbox.engine as engine_module
        assert "sqlalchemy" not in sys.modules, "importing engine.py must stay light"
        engine = engine_module.open_outbox({_url(db_path)!r})
        engine.dispose()
        assert "alembic" not in sys.modules, "the fast path must not import alembic"
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert current_revision(str(db_path)) == HEAD_REVISION


# --- refusing files that are not ours -----------------------------------------------------


def _foreign_rollback_db(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices (total) VALUES (9.5)")
    conn.close()


def _foreign_wal_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY)")
    conn.commit()
    conn.close()  # the last close checkpoints and removes -wal/-shm


def _foreign_alembic_db(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('ae1027a6acf')")
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    conn.close()


def _outbox_missing_a_table(path: Path) -> None:
    engine = open_outbox(_url(path))
    engine.dispose()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE dead_letters")
    conn.close()


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(8192))


def _truncated_header(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00\x10\x00")


def _corrupt_sqlite(path: Path) -> None:
    _foreign_rollback_db(path)
    data = path.read_bytes()
    path.write_bytes(data[:100] + os.urandom(len(data) - 100))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (_foreign_rollback_db, "not a tracker-agent outbox.*invoices"),
        (_foreign_wal_db, "not a tracker-agent outbox.*photos"),
        (_foreign_alembic_db, "not a tracker-agent outbox.*users"),
        (_outbox_missing_a_table, "missing tables: dead_letters"),
        (_random_bytes, "not an SQLite database"),
        (_truncated_header, "not an SQLite database"),
        (_corrupt_sqlite, "corrupt or not an SQLite database"),
    ],
)
def test_a_file_that_is_not_an_outbox_is_refused_and_left_byte_identical(tmp_path, make, match):
    path = tmp_path / "their.db"
    make(path)
    before = _snapshot(path)
    with pytest.raises(NotAnOutboxError, match=match) as info:
        open_outbox(_url(path))
    assert str(path) in str(info.value)
    assert _snapshot(path) == before  # same bytes, and no -wal/-shm/-journal beside it


def test_an_outbox_from_a_newer_version_is_refused_and_left_byte_identical(outbox, db_path):
    outbox.dispose()
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_future'")
    conn.close()
    before = _snapshot(db_path)
    with pytest.raises(OutboxVersionError, match="9999_future") as info:
        open_outbox(_url(db_path))
    assert str(db_path) in str(info.value)
    assert _snapshot(db_path) == before


def test_an_empty_file_becomes_a_new_outbox(db_path):
    db_path.parent.mkdir()
    db_path.touch()
    engine = open_outbox(_url(db_path))
    engine.dispose()
    assert current_revision(_url(db_path)) == HEAD_REVISION


# --- storage that cannot be written -------------------------------------------------------


def test_a_directory_that_cannot_be_created_raises_storage_read_only(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a regular file where a directory should be")
    path = blocker / "outbox.db"
    with pytest.raises(StorageReadOnlyError) as info:
        open_outbox(_url(path))
    assert str(path) in str(info.value)


def test_a_read_only_directory_raises_storage_read_only(db_path, make_read_only):
    db_path.parent.mkdir()
    make_read_only(db_path.parent)
    with pytest.raises(StorageReadOnlyError, match="not writable") as info:
        open_outbox(_url(db_path))
    assert str(db_path) in str(info.value)
    assert os.listdir(db_path.parent) == []


def test_a_read_only_outbox_file_raises_storage_read_only(outbox, db_path, make_read_only):
    outbox.dispose()
    make_read_only(db_path)
    with pytest.raises(StorageReadOnlyError, match="not writable") as info:
        open_outbox(_url(db_path))
    assert str(db_path) in str(info.value)


def test_a_held_write_lock_gives_outbox_locked_error_after_busy_timeout(db_path):
    db_path.parent.mkdir()
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("PRAGMA journal_mode=WAL")
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(OutboxLockedError) as info:
            open_outbox(_url(db_path), busy_timeout=0.05)
        assert str(db_path) in str(info.value)
    finally:
        holder.close()


# --- error translation --------------------------------------------------------------------


def _disk_full(path: Path) -> BaseException:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA max_page_count = 3")
        conn.execute("CREATE TABLE t (blob BLOB)")
        conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError("expected SQLITE_FULL")


def _write_read_only(path: Path) -> BaseException:
    _foreign_rollback_db(path)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        conn.execute("INSERT INTO invoices (total) VALUES (1)")
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError("expected SQLITE_READONLY")


def _cannot_open(path: Path) -> BaseException:
    try:
        sqlite3.connect(path.parent / "no" / "such" / "dir.db")
    except sqlite3.Error as exc:
        return exc
    raise AssertionError("expected SQLITE_CANTOPEN")


def _locked(path: Path) -> BaseException:
    holder = sqlite3.connect(path, isolation_level=None)
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        return exc
    finally:
        other.close()
        holder.close()
    raise AssertionError("expected SQLITE_BUSY")


def _error_reading(path: Path, expected: str) -> BaseException:
    """The error stdlib sqlite3 raises when it reads the catalog of the file at `path`."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("SELECT * FROM sqlite_master")
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError(f"expected {expected}")


def _not_a_database(path: Path) -> BaseException:
    _random_bytes(path)
    return _error_reading(path, "SQLITE_NOTADB")


def _malformed(path: Path) -> BaseException:
    _corrupt_sqlite(path)
    return _error_reading(path, "SQLITE_CORRUPT")


def _wrapped_by_sqlalchemy(path: Path) -> BaseException:
    engine = sqlalchemy.create_engine(f"sqlite:///{path.parent / 'missing' / 'x.db'}")
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.DBAPIError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("expected a wrapped error")


@pytest.mark.parametrize(
    ("make_error", "expected"),
    [
        (_disk_full, StorageFullError),
        (_write_read_only, StorageReadOnlyError),
        (_cannot_open, StorageReadOnlyError),
        (_locked, OutboxLockedError),
        (_not_a_database, NotAnOutboxError),
        (_malformed, NotAnOutboxError),
        (_wrapped_by_sqlalchemy, StorageReadOnlyError),
        # Python 3.10 errors carry no code: the message decides.
        (lambda _: sqlite3.OperationalError("database or disk is full"), StorageFullError),
        (lambda _: sqlite3.OperationalError("database is locked"), OutboxLockedError),
        (lambda _: sqlite3.OperationalError("disk I/O error"), OutboxError),
    ],
)
def test_sqlite_errors_translate_to_the_outbox_error_tree(tmp_path, make_error, expected):
    path = tmp_path / "db.sqlite"
    error = translate_sqlite_error(make_error(path), str(path))
    assert type(error) is expected
    assert str(path) in str(error)


def test_translating_an_outbox_error_returns_it_unchanged():
    error = OutboxLockedError("already ours")
    assert translate_sqlite_error(error, "/x") is error


# --- several processes at once ------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import json, logging, sys
    from tracker_agent.outbox.engine import open_outbox

    class Recorder(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    recorder = Recorder()
    log = logging.getLogger("tracker_agent.outbox.engine")
    log.addHandler(recorder)
    log.setLevel(logging.INFO)
    print("ready", flush=True)
    sys.stdin.readline()  # everyone starts together
    engine = open_outbox(sys.argv[1])
    with engine.connect() as conn:
        counters = conn.exec_driver_sql("SELECT id, rows, bytes FROM queue_counters").all()
    engine.dispose()
    migrated = any(m.startswith("migrating outbox") for m in recorder.messages)
    print(json.dumps({"migrated": migrated, "counters": [list(r) for r in counters]}))
    """
)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def test_processes_opening_one_new_file_at_once_all_succeed_and_migrate_once(db_path):
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, _url(db_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_child_env(),
        )
        for _ in range(PROCESSES)
    ]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready"
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        outcomes = [child.communicate(timeout=CHILD_TIMEOUT_S) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait()
            for stream in (child.stdin, child.stdout, child.stderr):
                stream.close()
    for child, (_, stderr) in zip(children, outcomes, strict=True):
        assert child.returncode == 0, stderr
    reports = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outcomes]
    assert sum(report["migrated"] for report in reports) == 1
    assert all(report["counters"] == [[1, 0, 0]] for report in reports)
    assert current_revision(str(db_path)) == HEAD_REVISION


def _connect_together(path: Path, barrier: threading.Barrier, errors: list[BaseException]) -> None:
    engine = create_outbox_engine(_url(path))
    try:
        barrier.wait()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    except BaseException as exc:
        errors.append(exc)
    finally:
        engine.dispose()


def test_two_connections_switching_a_new_file_to_wal_at_once_both_succeed(tmp_path):
    # SQLite answers one of two simultaneous switches of a fresh file SQLITE_BUSY at once,
    # without the busy handler (about 1 try in 7 here): the switch must wait like a lock does.
    errors: list[BaseException] = []
    for attempt in range(150):
        path = tmp_path / f"{attempt}.db"
        path.touch()
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=_connect_together, args=(path, barrier, errors))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []


class _BusyCursor:
    """A cursor whose journal-mode switch is refused `busy` times (None: always)."""

    def __init__(self, busy: int | None, error: str = "database is locked") -> None:
        self.busy, self.error, self.tries = busy, error, 0

    def execute(self, sql: str) -> _BusyCursor:
        self.tries += 1
        if self.busy is None or self.tries <= self.busy:
            raise sqlite3.OperationalError(self.error)
        return self

    def fetchone(self) -> tuple[str]:
        return ("wal",)


def test_the_wal_switch_is_tried_again_while_busy_then_succeeds():
    cursor = _BusyCursor(busy=4)
    assert _switch_to_wal(cursor, busy_timeout=5.0) == "wal"
    assert cursor.tries == 5


def test_the_wal_switch_gives_up_at_the_busy_timeout_and_other_errors_at_once():
    forever = _BusyCursor(busy=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _switch_to_wal(forever, busy_timeout=0.05)
    assert 2 <= forever.tries <= 10  # 1, 2, 4, 8, 16 ms pauses fit in 50 ms; then it stops
    broken = _BusyCursor(busy=None, error="disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="I/O"):
        _switch_to_wal(broken, busy_timeout=5.0)
    assert broken.tries == 1
