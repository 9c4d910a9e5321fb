"""Alembic environment for the outbox: runs on the connection open_outbox hands over.

tracker_agent.outbox.engine.migrate() passes its connection (already inside a BEGIN IMMEDIATE
transaction; on PostgreSQL pg_engine.migrate_pg(), inside a transaction holding the migration's
advisory lock) in config.attributes["connection"]. Dialect differences: outbox/ddl.py. Run by
hand (developers writing a revision), the database comes from `sqlalchemy.url` in the config or
`-x url=sqlite:///path` (or a PostgreSQL URL).
"""

from __future__ import annotations

from alembic import context

from tracker_agent.outbox.engine import create_outbox_engine
from tracker_agent.outbox.schema import metadata

# SQLite cannot ALTER most things in place: batch mode copies the table instead.
# Our "begin" hook emits a real BEGIN, so DDL is transactional: a migration commits whole or not.
_OPTIONS = {"target_metadata": metadata, "render_as_batch": True, "transactional_ddl": True}


def _database_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    url = url or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database: alembic -x url=sqlite:///path/to/outbox.db ...")
    return url


def run_offline() -> None:
    context.configure(url=_database_url(), literal_binds=True, **_OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **_OPTIONS)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_outbox_engine(_database_url())
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, **_OPTIONS)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
