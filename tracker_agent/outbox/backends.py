"""Choosing the outbox backend (backend.Backend) for an engine, from its URL's dialect."""

from __future__ import annotations

from typing import Any

from ..exceptions import ConfigError
from .backend import POSTGRESQL, SQLITE, Backend

__all__ = ["backend_for_engine"]


def backend_for_engine(engine: Any) -> Backend:
    """The backend for an engine from open_outbox (its URL's dialect picks it)."""
    dialect = engine.url.get_backend_name()
    if dialect == SQLITE:
        from .sqlite import SqliteBackend

        return SqliteBackend(engine)
    if dialect == POSTGRESQL:
        from .postgresql import PostgresBackend

        return PostgresBackend(engine)
    raise ConfigError(f"database_url: no outbox backend for {dialect!r}")
