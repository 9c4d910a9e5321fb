"""Opening the outbox file: where it lives, SQLite pragmas, migrations, SQLite error translation
(inspect.py refuses foreign or newer files before anything here writes).

Importing this module is cheap: SQLAlchemy and Alembic are imported only by the functions that
need them, and Alembic only when the file is not already at HEAD_REVISION.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from ..exceptions import (
    ConfigError,
    NotAnOutboxError,
    OutboxError,
    OutboxLockedError,
    OutboxVersionError,
    StorageFullError,
    StorageReadOnlyError,
)

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Connection, Engine

__all__ = [
    "BEGIN_OPTION",
    "HEAD_REVISION",
    "OUTBOX_TABLES",
    "alembic_config",
    "create_outbox_engine",
    "current_revision",
    "default_database_url",
    "migrate",
    "open_outbox",
    "sqlite_path",
    "translate_sqlite_error",
    "wal_was_lost",
]

log = logging.getLogger(__name__)

#: The newest migration this code knows; tests check it against the Alembic scripts.
HEAD_REVISION = "0002"
#: Tables a database at HEAD_REVISION must have (tests check it against schema.metadata).
OUTBOX_TABLES = frozenset({"outbox", "dead_letters", "queue_counters", "agent_state"})
#: Connection execution option naming the BEGIN flavour our "begin" hook emits:
#: conn.execution_options(tracker_agent_begin="IMMEDIATE") takes the write lock up front.
BEGIN_OPTION = "tracker_agent_begin"

#: Permissions of the outbox file (and so of its -wal and -shm, which SQLite creates with the
#: file's mode): it holds customer ids and properties, personal data. Whatever the umask.
FILE_MODE = 0o600
#: With share_with_group: the apps' group may enqueue into the daemon's outbox.
GROUP_FILE_MODE = 0o660
DIRECTORY_MODE = 0o700
GROUP_DIRECTORY_MODE = 0o770
_OTHERS_BITS = 0o007
DB_FILENAME = "outbox.db"
APP_DIRNAME = "tracker-agent"
SYNCHRONOUS_MODES = ("FULL", "NORMAL")
_BEGIN_MODES = ("DEFERRED", "IMMEDIATE", "EXCLUSIVE")
_SQLITE_SCHEMES = ("sqlite", "sqlite+pysqlite")
TABLES_SQL = (
    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
)
REVISION_SQL = "SELECT version_num FROM alembic_version"

# Primary SQLite result codes (https://www.sqlite.org/rescode.html).
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY, _SQLITE_IOERR = 3, 5, 6, 8, 10
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 11, 13, 14, 26
# Python < 3.11 exceptions carry no code; fall back to SQLite's fixed English messages.
_CODE_BY_TEXT = (
    ("database or disk is full", _SQLITE_FULL),
    ("readonly database", _SQLITE_READONLY),
    ("unable to open database", _SQLITE_CANTOPEN),
    ("database is locked", _SQLITE_BUSY),
    ("database table is locked", _SQLITE_LOCKED),
    ("file is not a database", _SQLITE_NOTADB),
    ("malformed", _SQLITE_CORRUPT),
    ("disk i/o error", _SQLITE_IOERR),
)


def default_database_url(env: Mapping[str, str]) -> str:
    """The outbox URL when none is configured: the systemd or XDG state directory, else ~."""
    state_dirs = env.get("STATE_DIRECTORY", "")
    if state_dirs:
        folder = state_dirs.split(":")[0]
    elif os.path.isabs(env.get("XDG_STATE_HOME", "")):  # the XDG spec ignores relative paths
        folder = os.path.join(env["XDG_STATE_HOME"], APP_DIRNAME)
    else:
        folder = os.path.join(_home(env), ".local", "state", APP_DIRNAME)
    path = os.path.join(folder, DB_FILENAME)
    return "sqlite:///" + path.replace("%", "%25").replace("?", "%3F")


def _home(env: Mapping[str, str]) -> str:
    if env.get("HOME"):
        return env["HOME"]
    import pwd  # POSIX only, like systemd; imported here so the module imports anywhere

    try:  # services without User= get no $HOME; the password database still knows it
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError as exc:
        raise ConfigError(
            "database_url: not set, and there is no STATE_DIRECTORY, XDG_STATE_HOME or HOME"
        ) from exc


def sqlite_path(database_url: str) -> str:
    """The absolute file path of an SQLite URL; ConfigError for anything but an SQLite file."""
    scheme, sep, rest = database_url.partition("://")
    if not sep or scheme.lower() not in _SQLITE_SCHEMES:
        # Name the scheme only: another database's URL may hold a password.
        raise ConfigError(
            f"database_url: the outbox needs an SQLite file URL (sqlite:///path), "
            f"got a {scheme.lower() if sep else 'non-URL'!r} value"
        )
    if rest and not rest.startswith("/"):
        raise ConfigError("database_url: an SQLite URL has no host: use sqlite:///path")
    database, _, query = rest[1:].partition("?")
    if query:
        raise ConfigError("database_url: query options (?...) are not supported; use settings")
    database = unquote(database)
    if database in ("", ":memory:") or database.startswith("file:"):
        raise ConfigError("database_url: the outbox must be a file, not an in-memory database")
    return os.path.abspath(database)


def translate_sqlite_error(exc: BaseException, path: str) -> OutboxError:
    """The OutboxError for a sqlite3 or SQLAlchemy error on the file at `path` (raise it `from`)."""
    if isinstance(exc, OutboxError):
        return exc
    orig = getattr(exc, "orig", None) or exc  # SQLAlchemy's DBAPIError wraps the driver's error
    detail = str(orig)
    code = getattr(orig, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else _code_from_text(detail)
    if primary == _SQLITE_FULL:
        return StorageFullError(f"{path}: the disk or the database is full ({detail})")
    if primary in (_SQLITE_READONLY, _SQLITE_CANTOPEN, _SQLITE_PERM):
        return StorageReadOnlyError(f"{path}: the file or its directory is not writable ({detail})")
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return OutboxLockedError(
            f"{path}: another process held the database lock past the busy timeout ({detail})"
        )
    if primary == _SQLITE_IOERR and wal_was_lost(path):
        return OutboxError(
            f"{path}: the outbox's -wal file was deleted while it was open ({detail}); "
            "restart every process using the outbox"
        )
    if primary in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
        return NotAnOutboxError(f"{path}: the file is corrupt or not an SQLite database ({detail})")
    return OutboxError(f"{path}: {type(orig).__name__}: {detail}")


def wal_was_lost(path: str) -> bool:
    """True when the file's -shm is there but its -wal is not.

    SQLite creates the -wal before the -shm and, on the last clean close, deletes the -shm
    before the -wal; a crash leaves both. A lone -shm therefore means the -wal was deleted
    (by hand, or by a cleaner) while a process had the outbox open: whatever was committed
    to it since the last checkpoint is gone.
    """
    return os.path.exists(path + "-shm") and not os.path.exists(path + "-wal")


def _code_from_text(detail: str) -> int | None:
    lowered = detail.lower()
    return next((code for text, code in _CODE_BY_TEXT if text in lowered), None)


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
    inspect.wal_was_lost) is recorded as a warning in the outbox state and logged at ERROR.
    The caller owns the engine (engine.dispose() when done).
    """
    from .inspect import inspect_existing, wal_was_lost  # inspect.py imports this module

    path = sqlite_path(database_url)
    _check_options(synchronous, busy_timeout)
    if file_mode not in (FILE_MODE, GROUP_FILE_MODE):
        raise ConfigError(f"file_mode: must be 0o600 or 0o660, got {file_mode:#o}")
    inspect_existing(path)
    wal_lost = os.path.exists(path) and wal_was_lost(path)
    _prepare_directory(path, file_mode)
    _create_private_file(path, file_mode)
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
    from .leases import set_state
    from .status import STATE_WARNING, STATE_WARNING_AT, read_state

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
        mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise OutboxError(f"{path}: SQLite would not switch to WAL journal mode (got {mode!r})")
        cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def migrate(engine: Engine) -> None:
    """Bring the database to HEAD_REVISION; safe when several processes do it at once.

    The lock is SQLite's own write lock (BEGIN IMMEDIATE), not a side lock file: it needs no
    extra file or fcntl, is released by the OS if the process dies, covers exactly the file being
    migrated, and lets the revision re-check and the whole migration commit as one transaction.
    Waiting for it is bounded by busy_timeout (then OutboxLockedError). In WAL mode EXCLUSIVE
    would lock no more than IMMEDIATE does, and readers keep working meanwhile either way.
    """
    path = engine.url.database or ""
    with _translating(path), engine.connect() as conn:
        conn.execution_options(**{BEGIN_OPTION: "IMMEDIATE"})
        with conn.begin():
            revision = _connection_revision(conn)
            if revision != HEAD_REVISION:  # another process may have done it meanwhile
                _upgrade_locked(conn, path, revision)


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


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic settings built in code (no alembic.ini); `connection` is handed to env.py."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", _migrations_dir())
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _migrations_dir() -> str:
    spec = importlib.util.find_spec("tracker_agent.migrations")
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    # A source checkout: setup.cfg maps the top-level migrations/ folder to that package.
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").is_file():
        return str(checkout)
    raise OutboxError("tracker-agent's migration scripts are missing: reinstall tracker-agent")


def known_revisions(config: Config | None = None) -> set[str]:
    """Every revision in our migration scripts (imports Alembic)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(config or alembic_config())
    return {rev.revision for rev in script.walk_revisions()}


def version_error(path: str, revision: str) -> OutboxVersionError:
    """The refusal of a file migrated by a newer tracker-agent."""
    return OutboxVersionError(
        f"{path}: the outbox is at schema revision {revision!r}, newer than this tracker-agent "
        f"knows (up to {HEAD_REVISION!r}); upgrade tracker-agent. The file was not changed."
    )


def current_revision(engine_or_path: Engine | str) -> str | None:
    """The Alembic revision of an outbox (None when it has none yet), read without writing.

    Takes an engine, a file path or an SQLite URL.
    """
    if not isinstance(engine_or_path, str):
        return _engine_revision(engine_or_path, engine_or_path.url.database or "")
    from .inspect import read_catalog, read_header  # inspect.py imports this module

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


def _prepare_directory(path: str, file_mode: int = FILE_MODE) -> None:
    folder = os.path.dirname(path)
    mode = GROUP_DIRECTORY_MODE if file_mode == GROUP_FILE_MODE else DIRECTORY_MODE
    try:
        if not os.path.isdir(folder):
            os.makedirs(folder, mode=mode, exist_ok=True)
            os.chmod(folder, mode)  # makedirs applies the umask to the mode
    except OSError as exc:
        raise StorageReadOnlyError(
            f"{path}: cannot create its directory {folder} ({exc.strerror})"
        ) from exc
    # os.access honours read-only mounts and the immutable flag, even for root.
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageReadOnlyError(f"{path}: its directory {folder} is not writable")
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        raise StorageReadOnlyError(f"{path}: the file is not writable")


def _create_private_file(path: str, mode: int) -> None:
    """Create the outbox file empty with `mode` before SQLite does (SQLite would apply the
    umask to 0644); an existing file and its -wal/-shm lose any bits for "others"."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        for name in (path, path + "-wal", path + "-shm"):
            _restrict(name)
        return
    except OSError as exc:
        raise translate_os_error(exc, path) from exc
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits the mode asks for
    finally:
        os.close(fd)


def _restrict(name: str) -> None:
    try:
        current = os.stat(name).st_mode & 0o777
        if current & _OTHERS_BITS:
            os.chmod(name, current & ~_OTHERS_BITS)
            log.warning(
                "%s was readable by every user (mode %#o); now %#o",
                name, current, current & ~_OTHERS_BITS,
            )  # fmt: skip
    except FileNotFoundError:
        return
    except OSError as exc:  # not ours to change: say so, but the outbox still works
        log.warning("%s is readable by every user and cannot be restricted: %s", name, exc)


def translate_os_error(exc: OSError, path: str) -> OutboxError:
    """The OutboxError for an OSError raised while creating the outbox file."""
    if exc.errno == errno.ENOSPC:
        return StorageFullError(f"{path}: the disk is full ({exc.strerror})")
    return StorageReadOnlyError(f"{path}: cannot create the file ({exc.strerror})")
