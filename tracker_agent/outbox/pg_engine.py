"""Opening the outbox on PostgreSQL: the URL (either spelling, always psycopg 3), the engine,
migrations under pg_advisory_xact_lock, and refusing a database a newer tracker-agent migrated.

URLs are shown with their password hidden (render_as_string(hide_password=True)), everywhere.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..constants import PG_CONNECT_TIMEOUT_SECONDS, PG_MIGRATE_LOCK
from ..exceptions import ConfigError
from .pg_errors import translating
from .revisions import (
    HEAD_REVISION,
    alembic_config,
    alembic_detail_at_debug,
    known_revisions,
    version_error,
)

if TYPE_CHECKING:
    from sqlalchemy import URL, Connection, Engine

__all__ = ["create_pg_engine", "migrate_pg", "open_pg_outbox", "pg_url", "shown_url"]

log = logging.getLogger(__name__)

_DRIVER = "postgresql+psycopg"
_ACCEPTED = ("postgresql", "postgres", _DRIVER)
_HAS_REVISION_SQL = "SELECT to_regclass('alembic_version') IS NOT NULL"
_REVISION_SQL = "SELECT version_num FROM alembic_version"


def pg_url(database_url: str) -> URL:
    """The URL with psycopg 3 as its driver (SQLAlchemy would pick psycopg2 for
    postgresql://); ConfigError for a malformed one (without echoing it: it may hold a
    password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(database_url)
    except (ArgumentError, ValueError) as exc:
        raise ConfigError("database_url: not a valid PostgreSQL URL") from exc
    if url.drivername not in _ACCEPTED:
        raise ConfigError(
            f"database_url: PostgreSQL URLs use psycopg 3 (postgresql+psycopg://), "
            f"not {url.drivername!r}"
        )
    return url.set(drivername=_DRIVER)


def shown_url(url: URL | str) -> str:
    """A URL fit for messages and logs: the password replaced by ***."""
    if isinstance(url, str):
        url = pg_url(url)
    return str(url.render_as_string(hide_password=True))


def create_pg_engine(database_url: str, *, busy_timeout: float = 30.0) -> Engine:
    """An engine on the database; lock waits end after `busy_timeout` (lock_timeout)."""
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "database_url: PostgreSQL needs psycopg 3: pip install 'tracker-agent[postgresql]'"
        ) from exc
    from sqlalchemy import create_engine, event

    url = pg_url(database_url)
    engine = create_engine(
        url,
        pool_pre_ping=True,  # a connection the server dropped is replaced, not handed out
        connect_args={
            "connect_timeout": PG_CONNECT_TIMEOUT_SECONDS,
            "application_name": "tracker-agent",
        },
    )
    lock_ms = max(1, int(busy_timeout * 1000))

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        try:
            dbapi_connection.execute(f"SET lock_timeout = {lock_ms}")
        finally:
            dbapi_connection.autocommit = autocommit

    return engine


def open_pg_outbox(database_url: str, *, busy_timeout: float = 30.0) -> Engine:
    """An engine on the outbox database, migrated to HEAD_REVISION as needed (once, however
    many hosts start at the same time). The caller owns the engine (dispose() when done)."""
    engine = create_pg_engine(database_url, busy_timeout=busy_timeout)
    try:
        if pg_revision(engine) != HEAD_REVISION:
            migrate_pg(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def pg_revision(engine: Engine) -> str | None:
    where = shown_url(engine.url)
    with translating(where), engine.connect() as conn:
        return _revision(conn)


def _revision(conn: Connection) -> str | None:
    if not conn.exec_driver_sql(_HAS_REVISION_SQL).scalar():
        return None
    value = conn.exec_driver_sql(_REVISION_SQL).scalar()
    return None if value is None else str(value)


def migrate_pg(engine: Engine) -> None:
    """Bring the database to HEAD_REVISION in one transaction, under a transaction-level
    advisory lock: a host that waited for it finds the work done and does nothing."""
    from alembic import command

    where = shown_url(engine.url)
    with translating(where), alembic_detail_at_debug(), engine.connect() as conn, conn.begin():
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_MIGRATE_LOCK})")
        revision = _revision(conn)
        if revision == HEAD_REVISION:
            return
        config = alembic_config(conn)
        if revision is not None and revision not in known_revisions(config):
            raise version_error(where, revision)
        log.info("migrating outbox %s from %s to %s", where, revision or "empty", HEAD_REVISION)
        command.upgrade(config, "head")
