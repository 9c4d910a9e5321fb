"""Read-only checks of an existing outbox file before the engine touches it: its SQLite header,
its tables and Alembic revision, PRAGMA quick_check, and refusing what is not ours to migrate.

Nothing here writes to the file or creates files beside it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import quote

from ..exceptions import NotAnOutboxError, StorageReadOnlyError
from .errors import translate_sqlite_error
from .revisions import (
    HEAD_REVISION,
    OUTBOX_TABLES,
    REVISION_SQL,
    TABLES_SQL,
    known_revisions,
    version_error,
)

__all__ = ["inspect_existing", "read_catalog", "read_header", "read_only"]

T = TypeVar("T")

_SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_BYTES = 100
_READ_VERSION_OFFSET = 18  # file-format read version: 1 = rollback journal, 2 = WAL
_WAL_FORMAT = 2
_SHOWN_TABLES = 5
_READ_TIMEOUT = 5.0  # seconds a read-only connection waits for a lock


def inspect_existing(path: str) -> str | None:
    """Refuse a file that is not ours, without writing to it; its revision, None when new."""
    header = read_header(path)
    if header is None:
        return None
    tables, revision = read_catalog(path, header, check=True)
    if not tables:
        return None  # an empty SQLite database holds nothing to lose
    if "alembic_version" not in tables:
        raise _foreign_error(path, tables)
    if revision is None:
        if tables - {"alembic_version"}:
            raise _foreign_error(path, tables)
        return None  # downgraded to base: an empty shell
    if revision != HEAD_REVISION and revision not in known_revisions():
        if "outbox" not in tables:
            raise _foreign_error(path, tables)
        raise version_error(path, revision)
    missing = (OUTBOX_TABLES if revision == HEAD_REVISION else {"outbox"}) - tables
    if missing:
        raise NotAnOutboxError(
            f"{path}: not a complete tracker-agent outbox (missing tables: "
            f"{', '.join(sorted(missing))}); left untouched"
        )
    return revision


def _foreign_error(path: str, tables: set[str]) -> NotAnOutboxError:
    shown = ", ".join(sorted(tables)[:_SHOWN_TABLES])
    more = ", ..." if len(tables) > _SHOWN_TABLES else ""
    return NotAnOutboxError(
        f"{path}: an SQLite database that is not a tracker-agent outbox (tables: {shown}{more}); "
        "left untouched - point database_url elsewhere"
    )


def read_header(path: str) -> bytes | None:
    """The file's SQLite header, None for an absent or empty (new) file.

    Anything but a regular file (a FIFO, a device, a directory) is refused before a byte is
    read: opening a FIFO for reading would block until a writer appears, and a device may
    never end. O_NONBLOCK makes the open itself return at once whatever the path is.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageReadOnlyError(f"{path}: cannot read the file ({exc.strerror})") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotAnOutboxError(
                f"{path}: not a regular file (a directory, FIFO or device); left untouched"
            )
        header = os.read(fd, _HEADER_BYTES)
    except OSError as exc:
        raise StorageReadOnlyError(f"{path}: cannot read the file ({exc.strerror})") from exc
    finally:
        os.close(fd)
    if not header:
        return None
    if len(header) < _HEADER_BYTES or not header.startswith(_SQLITE_MAGIC):
        raise NotAnOutboxError(f"{path}: not an SQLite database; left untouched")
    return header


def read_catalog(path: str, header: bytes, check: bool = False) -> tuple[set[str], str | None]:
    """The tables and Alembic revision of the SQLite file at `path` (read-only)."""
    try:
        return read_only(path, header, lambda conn: _query_catalog(conn, check))
    except sqlite3.Error as exc:
        raise translate_sqlite_error(exc, path) from exc


def read_only(path: str, header: bytes, read: Callable[[sqlite3.Connection], T]) -> T:
    """`read(conn)` on a read-only connection to `path` that creates nothing beside it.

    mode=ro on a WAL-format file creates -wal/-shm beside it when they are missing, which we
    must not do to a file that may not be ours. With no -wal file everything is in the main
    file, so immutable=1 reads it creating nothing and taking no lock; should a process open
    the file meanwhile (a -wal appears) and the read fail, it is repeated with mode=ro.
    The path is %-quoted: a '#' or '?' in it must not end the file name. sqlite3.Error
    propagates.
    """
    immutable = header[_READ_VERSION_OFFSET] == _WAL_FORMAT and not os.path.exists(path + "-wal")
    try:
        return _read_with(path, "immutable=1" if immutable else "mode=ro", read)
    except sqlite3.Error:
        if not (immutable and os.path.exists(path + "-wal")):
            raise
    # A process opened the file meanwhile and may have checkpointed under our read.
    return _read_with(path, "mode=ro", read)


def _read_with(path: str, options: str, read: Callable[[sqlite3.Connection], T]) -> T:
    uri = f"file:{quote(path)}?{options}"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=_READ_TIMEOUT)) as conn:
        return read(conn)


def _query_catalog(conn: sqlite3.Connection, check: bool = False) -> tuple[set[str], str | None]:
    if check:
        verdict = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        if verdict != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed: {verdict}")
    tables = {row[0] for row in conn.execute(TABLES_SQL)}
    revision = None
    if "alembic_version" in tables:
        row = conn.execute(REVISION_SQL).fetchone()
        revision = row[0] if row else None
    return tables, revision
