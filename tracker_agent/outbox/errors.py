"""SQLite and file-system errors on the outbox, translated into tracker_agent's OutboxError
tree in one place (raise the result `from` the original). Stdlib only.
"""

from __future__ import annotations

from ..exceptions import (
    NotAnOutboxError,
    OutboxError,
    OutboxLockedError,
    StorageFullError,
    StorageReadOnlyError,
)
from .files import wal_was_lost

__all__ = ["is_busy", "translate_sqlite_error"]

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


def translate_sqlite_error(exc: BaseException, path: str) -> OutboxError:
    """The OutboxError for a sqlite3 or SQLAlchemy error on the file at `path` (raise it `from`)."""
    if isinstance(exc, OutboxError):
        return exc
    orig = getattr(exc, "orig", None) or exc  # SQLAlchemy's DBAPIError wraps the driver's error
    detail = str(orig)
    primary = _primary_code(orig)
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


def is_busy(exc: BaseException) -> bool:
    """Whether `exc` is SQLite's "database is locked" (SQLITE_BUSY or SQLITE_LOCKED)."""
    return _primary_code(getattr(exc, "orig", None) or exc) in (_SQLITE_BUSY, _SQLITE_LOCKED)


def _primary_code(orig: BaseException) -> int | None:
    code = getattr(orig, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else _code_from_text(str(orig))


def _code_from_text(detail: str) -> int | None:
    lowered = detail.lower()
    return next((code for text, code in _CODE_BY_TEXT if text in lowered), None)
