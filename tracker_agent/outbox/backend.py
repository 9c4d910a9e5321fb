"""The seam between the store and a database: what differs between SQLite and PostgreSQL.

OutboxStore (store.py) keeps what is common: group commit, fork hooks, the public methods, the
enqueue bound's bookkeeping, settle and dead-letter logic on a DB-API cursor with `?`
placeholders. A Backend holds the rest, one module per database, chosen from the URL:

    Backend                 transaction and read connections, error translation, the clock
     +-- SqliteBackend      sqlite.py: BEGIN IMMEDIATE, the TEMP bound trigger, leases.CLAIM_SQL
     +-- PostgresBackend    postgresql.py: psycopg 3, advisory locks, the database's clock

backends.backend_for_engine picks one for an engine.

Stdlib only: `status` imports this module and must not pay for SQLAlchemy.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from ..config.settings import hide_password
from ..exceptions import ConfigError, OutboxError
from .leases import ids_in_list

if TYPE_CHECKING:
    from .commands import NewCommand, Request
    from .leases import PickFn

__all__ = [
    "POSTGRESQL",
    "SQLITE",
    "Backend",
    "WritesRounds",
    "backend_name",
    "hide_password",
]

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
_SCHEMES = {
    "sqlite": SQLITE,
    "sqlite+pysqlite": SQLITE,
    "postgresql": POSTGRESQL,
    "postgres": POSTGRESQL,
    "postgresql+psycopg": POSTGRESQL,
}


def backend_name(database_url: str) -> str:
    """SQLITE or POSTGRESQL for a database URL; ConfigError for anything else. Names the
    scheme only in the error: another database's URL may hold a password."""
    scheme, sep, _ = database_url.partition("://")
    name = _SCHEMES.get(scheme.lower()) if sep else None
    if name is None:
        shown = scheme.lower() if sep else "non-URL"
        raise ConfigError(
            "database_url: the outbox needs an SQLite file URL (sqlite:///path) or a "
            f"PostgreSQL URL (postgresql+psycopg://user@host/db), got a {shown!r} value"
        )
    return name


class WritesRounds(Protocol):
    """What a backend's write_round needs of the store (OutboxStore is one)."""

    max_rows: int
    max_bytes: int

    def insert_round(
        self, cur: Any, requests: Sequence[Request], now: float
    ) -> list[BaseException | None]: ...


class Backend(ABC):
    """What one database does differently; methods run on the store's raw connections.

    `where` names the database in messages (a file path, or a URL without its password).
    SQL handed to the cursors a backend yields uses `?` placeholders (PostgreSQL's cursor
    translates them)."""

    name: str = ""
    where: str = ""
    #: clock() reads the database's clock where it has one (False: the caller's `now`).
    db_clock: bool = True
    #: settle(): add to an agent_state counter, delivered or dead-lettered (params: key, count).
    add_to_counter_sql: str = ""
    #: dead-letter filter: reason contains the parameter, case-insensitively.
    contains_sql: str = ""
    #: At most this many batches per drain claim (DrainPolicy.claim_batches). One settle for
    #: two batches means a transaction twice as big every other batch: on a local file
    #: drained at a raised rate it outlasted the request on the wire, and the drain lost
    #: 10-20% (bench backlog: 0.45-0.64x a bare session with two, 0.53-0.69x with one).
    max_claim_batches: int = 1
    #: One statement that reads the database's clock and deletes every settling record no
    #: other transaction holds (skipped, not waited for), returning (clock, id, owner,
    #: outcome) per record, or one row (clock, NULL, NULL, NULL) when there is none:
    #: settling.pending's clock, read and takes in one round trip. None: clock(), then read
    #: the records and delete each (SQLite: one writer at a time, nothing to skip, and
    #: statements cost no round trip).
    take_records_sql: str | None = None
    #: Statements of this process wait while fork() runs (OutboxStore.hold_for_fork), and so
    #: run one at a time: SQLite keeps its file locks' bookkeeping in the process, which a
    #: child must not inherit half-taken (and one writer at a time is all SQLite allows
    #: anyway). PostgreSQL needs neither: see PostgresBackend.
    fork_guard: bool = True

    @abstractmethod
    def transaction(self, conn: Any) -> AbstractContextManager[Any]:
        """BEGIN .. COMMIT on a raw pooled connection, yielding a cursor; errors translated."""

    def single_statement(self, conn: Any) -> AbstractContextManager[Any]:
        """Like transaction(), for a body whose each statement stands alone (one write, and
        reads that need no snapshot of it): PostgreSQL runs each as its own transaction, one
        round trip instead of BEGIN, statement and COMMIT."""
        return self.transaction(conn)

    @abstractmethod
    def reading(self, conn: Any) -> AbstractContextManager[Any]:
        """A read-only view of a raw connection with execute(); errors translated."""

    @abstractmethod
    def translate(self, exc: BaseException) -> OutboxError:
        """The driver's `exc` as the outbox's own error (disk full, read-only, unavailable)."""

    @abstractmethod
    def errors(self) -> tuple[type[BaseException], ...]:
        """The driver's exception classes that translate() understands."""

    def broken(self, conn: Any) -> bool:
        """True when `conn` can no longer be used (the server went away): drop it."""
        return False

    @abstractmethod
    def prepare_drain(self, conn: Any) -> None:
        """Set up the drain's connection once (SQLite: synchronous=NORMAL, and the thread that
        checkpoints what the drain writes)."""

    def close_drain(self) -> None:
        """Stop what prepare_drain started (SQLite: the checkpoint thread)."""
        return None

    def hold_for_fork(self) -> None:
        """Before fork(), after the store's own lock: no background work of ours in progress
        (SQLite: no checkpoint)."""
        return None

    def release_after_fork(self) -> None:
        """In the parent after fork(): undo hold_for_fork."""
        return None

    def forget_drain(self) -> None:
        """In a forked child: drop what prepare_drain started, without touching it."""
        return None

    def clock(self, cur: Any, now: float) -> float:
        """The time leases and retries are stamped with in this transaction: `now` (the
        caller's clock) for SQLite, the database's own for PostgreSQL."""
        return now

    @abstractmethod
    def write_round(
        self, store: WritesRounds, requests: Sequence[Request], now: float
    ) -> list[BaseException | None]:
        """Commit one group-commit round of enqueues (see OutboxStore._write_round)."""

    @abstractmethod
    def insert(self, cur: Any, commands: Sequence[NewCommand], now: float) -> None:
        """Insert `commands` as outbox rows created at `now`, in one statement; those with a
        receipt learn their row's id (NewCommand.id)."""

    @abstractmethod
    def insert_id(self, cur: Any, sql: str, params: Sequence[Any]) -> int:
        """Run `sql`, an INSERT of one row into a table with an id column; return the id."""

    def lock_ledger(self, cur: Any) -> None:
        """Before the import ledger is read or written in a transaction: serialise with every
        other writer of the ledger (see outbox/ledger.py). Nothing to do on SQLite, where one
        writer holds the whole file."""
        return None

    @abstractmethod
    def queued(self, cur: Any) -> tuple[int, int]:
        """Rows and bytes queued, from queue_counters."""

    def counters(self, cur: Any) -> tuple[int, int]:
        """queued(), as the enqueue's bound check reads it inside write_round."""
        return self.queued(cur)

    #: pick(cur, now, limit, max_bytes, follow, owner, expires): the rows a claim takes (see
    #: leases.claim), leased to `owner` until `expires` inside the claim's transaction;
    #: returned as they were before the lease.
    pick: PickFn

    def delete_rows(self, cur: Any, where: str, params: Sequence[Any]) -> int:
        """`DELETE FROM outbox WHERE <where>`; returns the rows deleted. The queue counters and
        flags follow: here by the database's statement-level triggers (PostgreSQL); SQLite
        has none and keeps them itself (outbox/removal.py)."""
        cur.execute(f"DELETE FROM outbox WHERE {where}", params)
        return int(cur.rowcount)

    def ids_in(self, column: str, ids: Sequence[int]) -> tuple[str, list[Any]]:
        """An SQL condition that `column` is one of `ids`, and its parameters: one `?` per
        id here (SQLite has no arrays)."""
        return ids_in_list(column, ids)

    def lock_customers(self, cur: Any, select_keys: str, params: Sequence[Any]) -> None:
        """Before rows are inserted or deleted: serialise with other writers of the same
        customers (`select_keys` selects their customer_key). Nothing to do on SQLite,
        where one writer holds the whole file."""
        return None

    @abstractmethod
    def close_writer(self) -> None:
        """Close the enqueue connection (back to the pool without per-connection set-up)."""

    @abstractmethod
    def forget_writer(self) -> None:
        """In a forked child: drop the parent's enqueue connection without touching it."""
