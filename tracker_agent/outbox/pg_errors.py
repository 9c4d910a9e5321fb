"""PostgreSQL errors on the outbox, translated by SQLSTATE into tracker_agent's OutboxError
tree in one place (raise the result `from` the original). psycopg is imported lazily.

    53100 disk full                         -> StorageFullError
    25006 read-only transaction (a standby) -> StorageReadOnlyError
    55P03 lock timeout, 57014 cancelled     -> OutboxLockedError
    40P01 deadlock, 40001 serialization     -> OutboxConflictError (an OutboxLockedError that
                                               the drain runs again)
    08xxx connection, 57P01-57P03 shutdown  -> DatabaseUnavailableError (enqueue raises it,
    or start-up, 53300 too many connections,   the drain waits it out)
    no SQLSTATE (refused, timed out)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..exceptions import (
    DatabaseUnavailableError,
    OutboxConflictError,
    OutboxError,
    OutboxLockedError,
    StorageFullError,
    StorageReadOnlyError,
)

__all__ = ["translate_pg_error", "translating"]

_FULL = {"53100"}
_READ_ONLY = {"25006"}
_LOCKED = {"55P03", "57014"}
_CONFLICT = {"40P01", "40001"}
_UNAVAILABLE = {"57P01", "57P02", "57P03", "53300", "53000"}
_AUTH = {"28000", "28P01"}
_NO_DATABASE = {"3D000"}


def translate_pg_error(exc: BaseException, where: str) -> OutboxError:
    """The OutboxError for a psycopg or SQLAlchemy error on the database `where` (a URL
    without its password)."""
    if isinstance(exc, OutboxError):
        return exc
    orig = getattr(exc, "orig", None) or exc  # SQLAlchemy's DBAPIError wraps psycopg's error
    state = getattr(orig, "sqlstate", None) or ""
    detail = " ".join(str(orig).split()) or type(orig).__name__
    if state in _FULL:
        return StorageFullError(f"{where}: the database's disk is full ({detail})")
    if state in _READ_ONLY:
        return StorageReadOnlyError(f"{where}: the database is read-only ({detail})")
    if state in _LOCKED:
        return OutboxLockedError(f"{where}: a lock was held too long ({detail})")
    if state in _CONFLICT:
        return OutboxConflictError(f"{where}: a deadlock with another transaction ({detail})")
    if state in _AUTH:
        return OutboxError(f"{where}: the database refused the credentials ({detail})")
    if state in _NO_DATABASE:
        return OutboxError(f"{where}: no such database ({detail})")
    if state.startswith("08") or state in _UNAVAILABLE or _lost_connection(orig, state):
        return DatabaseUnavailableError(f"{where}: database unavailable ({detail})")
    return OutboxError(f"{where}: {type(orig).__name__}: {detail}")


def _lost_connection(orig: BaseException, state: str) -> bool:
    """psycopg's OperationalError without SQLSTATE: refused, timed out, closed under us."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - only reached with psycopg installed
        return False
    return not state and isinstance(orig, (psycopg.OperationalError, psycopg.InterfaceError))


@contextlib.contextmanager
def translating(where: str) -> Iterator[None]:
    """Turn psycopg/SQLAlchemy errors raised inside into our OutboxError tree."""
    try:
        yield
    except OutboxError:
        raise
    except Exception as exc:
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError) or type(exc).__module__.startswith("psycopg"):
            raise translate_pg_error(exc, where) from exc
        raise
