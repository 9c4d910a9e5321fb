"""Opening the outbox: the engine with SQLite's pragmas, migrations under SQLite's own write
lock, checkpoints and the outbox's warning (a PostgreSQL URL goes to pg_engine.py instead).
preflight.py refuses foreign or newer files before anything here writes; files.py says where
the file lives and with which permissions.

Importing this module is cheap: SQLAlchemy and Alembic are imported only by the functions that
need them, and Alembic only when the file is not already at HEAD_REVISION.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..exceptions import ConfigError, OutboxError
from .backend import POSTGRESQL, backend_name
from .errors import is_busy, translate_sqlite_error
from .files import (
    FILE_MODE,
    GROUP_FILE_MODE,
    create_private_file,
    prepare_directory,
    sqlite_path,
    wal_was_lost,
)
from .preflight import inspect_existing, read_catalog, read_header
from .removal import Repair, repair_books
from .revisions import (
    HEAD_REVISION,
    REVISION_SQL,
    TABLES_SQL,
    alembic_config,
    alembic_detail_at_debug,
    known_revisions,
    version_error,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

__all__ = [
    "BEGIN_OPTION",
    "SYNCHRONOUS_MODES",
    "checkpoint",
    "clear_warning",
    "create_outbox_engine",
    "current_revision",
    "migrate",
    "open_outbox",
    "record_warning",
    "repair",
]

log = logging.getLogger(__name__)

#: Connection execution option naming the BEGIN flavour our "begin" hook emits:
#: conn.execution_options(tracker_agent_begin="IMMEDIATE") takes the write lock up front.
BEGIN_OPTION = "tracker_agent_begin"

SYNCHRONOUS_MODES = ("FULL", "NORMAL")
_BEGIN_MODES = ("DEFERRED", "IMMEDIATE", "EXCLUSIVE")


def open_outbox(
    database_url: str,
    *,
    synchronous: str = "FULL",
    busy_timeout: float = 30.0,
    file_mode: int = FILE_MODE,
) -> Engine:
    """An engine on the outbox file, created or migrated to HEAD_REVISION as needed.

    A file that is not an outbox, or that a newer tracker-agent migrated, is refused before
    anything writes to it. A new file is created with `file_mode` (0600) whatever the umask,
    and an existing one loses any permission for "others". A -wal file found lost (see
    files.wal_was_lost) is recorded as a warning in the outbox state and logged at ERROR.
    The caller owns the engine (engine.dispose() when done).

    A PostgreSQL URL (postgresql+psycopg://, or postgresql://) opens that database instead
    (see pg_engine.open_pg_outbox; `synchronous` and `file_mode` do not apply there).
    """
    if backend_name(database_url) == POSTGRESQL:
        from .pg_engine import open_pg_outbox

        _check_options(synchronous, busy_timeout)
        return open_pg_outbox(database_url, busy_timeout=busy_timeout)
    path = sqlite_path(database_url)
    _check_options(synchronous, busy_timeout)
    if file_mode not in (FILE_MODE, GROUP_FILE_MODE):
        raise ConfigError(f"file_mode: must be 0o600 or 0o660, got {file_mode:#o}")
    inspect_existing(path)
    wal_lost = os.path.exists(path) and wal_was_lost(path)
    prepare_directory(path, file_mode)
    create_private_file(path, file_mode)
    engine = create_outbox_engine(database_url, synchronous=synchronous, busy_timeout=busy_timeout)
    try:
        if _engine_revision(engine, path) != HEAD_REVISION:
            migrate(engine)
            # Into the main file now: were the -wal lost before the first checkpoint, a new
            # outbox would otherwise vanish whole and the next open start afresh, unnoticed.
            checkpoint(engine, path)
        if wal_lost:
            record_warning(engine, path, WAL_LOST_AT_OPEN)
    except BaseException:
        engine.dispose()
        raise
    return engine


#: The warning recorded when an outbox is opened with its -wal gone (see wal_was_lost).
WAL_LOST_AT_OPEN = (
    "the -wal file was missing when the outbox was opened (its -shm was not): it was deleted "
    "while a process had the outbox open, and commands committed to it since the last "
    "checkpoint were lost"
)


def checkpoint(engine: Engine, path: str, mode: str = "PASSIVE") -> None:
    """Copy what the WAL holds into the main file (PASSIVE: without waiting for readers)."""
    if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
        raise ValueError(f"unknown checkpoint mode {mode!r}")
    with _translating(path), engine.connect() as conn:
        conn.exec_driver_sql(f"PRAGMA wal_checkpoint({mode})").fetchall()


def record_warning(engine: Engine, path: str, message: str) -> None:
    """Keep `message` in the outbox state (status shows it until cleared) and log it."""
    log.error("outbox %s: %s", path, message)
    _set_warning(engine, path, message, time.time())


def clear_warning(engine: Engine, path: str) -> str | None:
    """Acknowledge the outbox's warning (`tracker-agent clear-warning`); returns it."""
    return _set_warning(engine, path, None, None)


def _set_warning(engine: Engine, path: str, message: str | None, at: float | None) -> str | None:
    from .state import STATE_WARNING, STATE_WARNING_AT, read_state, set_state

    with _translating(path), engine.connect() as conn:
        conn.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})
        with conn.begin():
            driver: Any = conn.connection.driver_connection
            cursor = driver.cursor()
            try:
                previous = read_state(cursor).get(STATE_WARNING)
                set_state(cursor, {STATE_WARNING: message, STATE_WARNING_AT: at})
            finally:
                cursor.close()
    return previous


def create_outbox_engine(
    database_url: str, *, synchronous: str = "FULL", busy_timeout: float = 30.0
) -> Engine:
    """An engine with the outbox's pragmas on every connection; no checks, no migration."""
    from sqlalchemy import URL, create_engine, event

    path = sqlite_path(database_url)
    sync = _check_options(synchronous, busy_timeout)
    busy_ms = int(busy_timeout * 1000)
    engine = create_engine(
        URL.create("sqlite+pysqlite", database=path),
        connect_args={"check_same_thread": False, "timeout": busy_timeout},
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        try:
            _apply_pragmas(dbapi_connection, path, sync, busy_ms)
        except BaseException:
            dbapi_connection.close()  # SQLAlchemy < 2.1 would strand it
            raise

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        mode = str(conn.get_execution_options().get(BEGIN_OPTION, "DEFERRED")).upper()
        if mode not in _BEGIN_MODES:
            raise ConfigError(f"{BEGIN_OPTION}: must be one of {_BEGIN_MODES}, got {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _check_options(synchronous: str, busy_timeout: float) -> str:
    sync = str(synchronous).upper()
    if sync not in SYNCHRONOUS_MODES:
        raise ConfigError(f"synchronous: must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
    if not busy_timeout >= 0:  # also refuses NaN
        raise ConfigError(f"busy_timeout: must be >= 0 seconds, got {busy_timeout!r}")
    return sync


def _apply_pragmas(dbapi_connection: Any, path: str, synchronous: str, busy_ms: int) -> None:
    # The driver must not open transactions itself: the store issues BEGIN IMMEDIATE, and
    # SQLAlchemy's "begin" hook emits BEGIN for Core transactions (transactional DDL included).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")  # before WAL: switching may wait
        mode = _switch_to_wal(cursor, busy_ms / 1000)
        if str(mode).lower() != "wal":
            raise OutboxError(f"{path}: SQLite would not switch to WAL journal mode (got {mode!r})")
        cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


#: First and longest pause between tries of the switch to WAL (seconds).
_WAL_RETRY_FIRST, _WAL_RETRY_MAX = 0.001, 0.05


def _switch_to_wal(cursor: Any, busy_timeout: float) -> Any:
    """`PRAGMA journal_mode = WAL`, tried again until `busy_timeout` while SQLite says busy.

    When two connections switch a new, empty file at the same moment, one of them gets
    SQLITE_BUSY at once: SQLite does not call the busy handler there (measured: 2 threads on a
    fresh file, 14% of tries; 2 processes opening one new outbox, 5%). Waiting here is what the
    busy timeout promises everywhere else.
    """
    deadline = time.monotonic() + busy_timeout
    pause = _WAL_RETRY_FIRST
    while True:
        try:
            return cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, _WAL_RETRY_MAX)


def migrate(engine: Engine) -> None:
    """Bring the database to HEAD_REVISION; safe when several processes do it at once.

    The lock is SQLite's own write lock (BEGIN IMMEDIATE), not a side lock file: it needs no
    extra file or fcntl, is released by the OS if the process dies, covers exactly the file being
    migrated, and lets the revision re-check and the whole migration commit as one transaction.
    Waiting for it is bounded by busy_timeout (then OutboxLockedError). In WAL mode EXCLUSIVE
    would lock no more than IMMEDIATE does, and readers keep working meanwhile either way.
    """
    path = engine.url.database or ""
    with _translating(path), alembic_detail_at_debug(), engine.connect() as conn:
        conn.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})
        with conn.begin():
            revision = _connection_revision(conn)
            if revision != HEAD_REVISION:  # another process may have done it meanwhile
                _upgrade_locked(conn, path, revision)


def repair(engine: Engine) -> Repair:
    """Recount the queue and re-flag each customer's oldest row (removal.repair_books) under
    SQLite's write lock, as migrate() takes it; for `tracker-agent migrate --repair`."""
    path = engine.url.database or ""
    with _translating(path), engine.connect() as conn:
        conn.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})
        with conn.begin():
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                return repair_books(cursor)
            finally:
                cursor.close()


@contextlib.contextmanager
def _translating(path: str) -> Iterator[None]:
    """Turn sqlite3/SQLAlchemy errors raised inside into our OutboxError tree."""
    try:
        yield
    except OutboxError:
        raise
    except Exception as exc:
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, (sqlite3.Error, SQLAlchemyError)):
            raise translate_sqlite_error(exc, path) from exc
        raise


def _upgrade_locked(conn: Connection, path: str, revision: str | None) -> None:
    from alembic import command

    config = alembic_config(conn)
    if revision is not None and revision not in known_revisions(config):
        raise version_error(path, revision)
    log.info("migrating outbox %s from %s to %s", path, revision or "empty", HEAD_REVISION)
    command.upgrade(config, "head")


def current_revision(engine_or_path: Engine | str) -> str | None:
    """The Alembic revision of an outbox (None when it has none yet), read without writing.

    Takes an engine, a file path or an SQLite URL.
    """
    if not isinstance(engine_or_path, str):
        return _engine_revision(engine_or_path, engine_or_path.url.database or "")
    path = sqlite_path(engine_or_path) if "://" in engine_or_path else engine_or_path
    header = read_header(path)
    return None if header is None else read_catalog(path, header)[1]


def _engine_revision(engine: Engine, path: str) -> str | None:
    with _translating(path), engine.connect() as conn:
        return _connection_revision(conn)


def _connection_revision(conn: Connection) -> str | None:
    tables = {row[0] for row in conn.exec_driver_sql(TABLES_SQL)}
    if "alembic_version" not in tables:
        return None
    return conn.exec_driver_sql(REVISION_SQL).scalar()
