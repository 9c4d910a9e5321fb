"""The outbox's schema revisions: the head this code knows, the tables it must have, and the
Alembic configuration built in code (Alembic itself is imported only when asked for).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..exceptions import OutboxError, OutboxVersionError

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Connection

log = logging.getLogger("tracker_agent.outbox.engine")  # where Alembic's detail has gone

__all__ = [
    "HEAD_REVISION",
    "alembic_detail_at_debug",
    "OUTBOX_TABLES",
    "REVISION_SQL",
    "TABLES_SQL",
    "alembic_config",
    "known_revisions",
    "version_error",
]

#: The newest migration this code knows; tests check it against the Alembic scripts.
HEAD_REVISION = "0010"
#: Tables a database at HEAD_REVISION must have (tests check it against schema.metadata).
OUTBOX_TABLES = frozenset(
    {
        "outbox",
        "dead_letters",
        "queue_counters",
        "agent_state",
        "import_ledger",
        "import_ledger_log",
        "receipts",
        "settling",
    }
)
TABLES_SQL = (
    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
)
REVISION_SQL = "SELECT version_num FROM alembic_version"


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


class _ToDebug(logging.Filter):
    """Drops Alembic's INFO lines (seven on a first open, in an app at INFO) and repeats them
    at DEBUG on our logger: the one INFO line is ours ("migrating outbox ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        log.debug("alembic: %s", record.getMessage())
        return False


_ALEMBIC_LOGGERS = ("alembic.runtime.migration", "alembic.runtime.plugins")


@contextlib.contextmanager
def alembic_detail_at_debug() -> Iterator[None]:
    quiet = _ToDebug()
    loggers = [logging.getLogger(name) for name in _ALEMBIC_LOGGERS]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)
