"""The outbox on one SQLite file: BEGIN IMMEDIATE transactions on raw sqlite3 connections, the
enqueue bound as a TEMP trigger on the writer, the claim as leases.CLAIM_SQL.

Hot paths use the engine's raw DB-API connections with explicit BEGIN IMMEDIATE: a deferred
transaction that reads then writes gets "database is locked" at once, and SQLAlchemy Core would
cost ~1.5x per commit. Engine set-up and migrations live in engine.py, errors in errors.py.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..exceptions import OutboxError
from . import leases, removal
from .backend import SQLITE, Backend, WritesRounds
from .checkpointer import Checkpointer
from .engine import record_warning
from .errors import translate_sqlite_error
from .files import wal_was_lost
from .ledger import KeyedCommands

if TYPE_CHECKING:
    from .commands import NewCommand, Request

log = logging.getLogger(__name__)

_INSERT = (
    "INSERT INTO outbox (kind, customer_key, payload, size, created_at, boot_id, mono_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# A round of several callers' rows, some perhaps with a receipt.
_INSERT_ROUND = (
    "INSERT INTO outbox"
    " (kind, customer_key, payload, size, created_at, boot_id, mono_at, receipt)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_COUNTERS = "SELECT rows, bytes FROM queue_counters WHERE id = 1"
# The bound, enforced by SQLite itself on the writer connection only (a TEMP trigger lives and
# dies with its connection; the file's schema is untouched): an INSERT that would pass this
# process's limits fails with _FULL_MESSAGE and changes nothing. It lets a lone caller insert
# with a plain INSERT, where reading the counters first (a SELECT, or INSERT .. SELECT, which
# SQLite materialises because the counter trigger writes the table it reads) costs 15-30% of
# an un-fsynced commit. BEFORE INSERT runs ahead of the AFTER INSERT counter trigger, so the
# counters it reads do not include the new row yet.
_FULL_MESSAGE = "tracker-agent: outbox bound reached"
_BOUND_TRIGGER = "tracker_agent_outbox_bound"
_CREATE_BOUND_TRIGGER = f"""
CREATE TEMP TRIGGER {_BOUND_TRIGGER} BEFORE INSERT ON main.outbox
WHEN (SELECT rows + 1 > {{max_rows:d}} OR bytes + NEW.size > {{max_bytes:d}}
      FROM main.queue_counters WHERE id = 1)
BEGIN SELECT RAISE(ABORT, '{_FULL_MESSAGE}'); END
"""
_DROP_BOUND_TRIGGER = f"DROP TRIGGER IF EXISTS temp.{_BOUND_TRIGGER}"
#: WAL pages the drain's connection lets accumulate before it checkpoints itself (64 MiB at
#: 4 KiB pages): a backstop. The drain's checkpoints run in a thread of their own
#: (checkpointer.py) and keep the WAL far shorter; this one only runs when that thread cannot
#: keep up. (Before that thread, 4000 pages: it took claim + settle of 50 customers' rows from
#: 2.4 to 2.0 ms per batch against the default 1000, but stalled a settle 20-40 ms each time.)
DRAIN_BACKSTOP_PAGES = 16000
#: The warning recorded when the -wal file disappears under a running process.
WAL_DELETED_WHILE_OPEN = (
    "the -wal file was deleted while this outbox was open; what this process could still "
    "read of it was checkpointed into the main file, but commands committed by other "
    "processes since the last checkpoint may be lost. Restart every process using the outbox"
)
_ADD_TO_COUNTER = (
    "INSERT INTO agent_state (key, value) VALUES (?, ?) ON CONFLICT(key)"
    " DO UPDATE SET value = coalesce(CAST(value AS INTEGER), 0) + excluded.value"
)


class SqliteBackend(Backend):
    """One SQLite file shared by threads and processes (the file's write lock serialises)."""

    name = SQLITE
    add_to_counter_sql = _ADD_TO_COUNTER
    contains_sql = "instr(lower(reason), lower(?)) > 0"

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.where = str(engine.url.database)
        self._writer: Any = None  # raw connection owned by whichever thread leads a commit
        self._writer_cursor: tuple[Any, Any] | None = None  # its sqlite3 connection and cursor
        self._wal_loss_recorded = False
        self._checkpointer: Checkpointer | None = None  # made by prepare_drain

    @contextmanager
    def transaction(self, conn: Any) -> Iterator[Any]:
        driver = conn.driver_connection  # skip the pool proxy on the hot path
        cur = driver.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            yield cur
            cur.execute("COMMIT")
        except BaseException as exc:
            self._abort(driver, cur, exc)
            raise
        finally:
            cur.close()
        if self._checkpointer is not None:  # the drain wrote: its pages go back soon
            self._checkpointer.poke()

    def _abort(self, driver: Any, cur: Any, exc: BaseException) -> None:
        """Roll back after `exc`; raise it as an OutboxError if SQLite raised it."""
        if driver.in_transaction:
            try:
                cur.execute("ROLLBACK")
            except sqlite3.Error:
                log.warning("rollback failed on %s", self.where, exc_info=True)
        if isinstance(exc, sqlite3.Error):
            raise translate_sqlite_error(exc, self.where) from exc

    @contextmanager
    def reading(self, conn: Any) -> Iterator[Any]:
        try:
            yield conn
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc, self.where) from exc

    def translate(self, exc: BaseException) -> OutboxError:
        return translate_sqlite_error(exc, self.where)

    def errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def prepare_drain(self, conn: Any) -> None:
        # Leases and settlements need no fsync of their own: a power cut can only undo some
        # (rows re-sent, deduplicated by their fixed timestamps); a crashed process loses
        # nothing in WAL mode. Enqueues stay synchronous=FULL.
        conn.driver_connection.execute("PRAGMA synchronous = NORMAL")
        # The drain's pages are checkpointed by a thread of its own, off the path between
        # one batch and the next (see checkpointer.py); this connection only as a backstop.
        conn.driver_connection.execute(f"PRAGMA wal_autocheckpoint = {DRAIN_BACKSTOP_PAGES}")
        if self._checkpointer is None and self.where not in ("", ":memory:"):
            self._checkpointer = Checkpointer(self.where)

    def close_drain(self) -> None:
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.close()

    def hold_for_fork(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.hold_for_fork()

    def release_after_fork(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.release_after_fork()

    def forget_drain(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.forget()
        self._checkpointer = None

    # -- enqueue -------------------------------------------------------------------------------

    def _open_writer(self, store: WritesRounds) -> tuple[Any, Any]:
        """The enqueue connection (pooled, kept until close) and one cursor reused on it."""
        self._writer = self.engine.raw_connection()
        driver = self._writer.driver_connection
        try:
            driver.execute(_DROP_BOUND_TRIGGER)
            driver.execute(
                _CREATE_BOUND_TRIGGER.format(max_rows=store.max_rows, max_bytes=store.max_bytes)
            )
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc, self.where) from exc
        self._writer_cursor = driver, driver.cursor()
        return self._writer_cursor

    def write_round(
        self, store: WritesRounds, requests: Sequence[Request], now: float
    ) -> list[BaseException | None]:
        driver, cur = self._writer_cursor or self._open_writer(store)
        try:
            cur.execute("BEGIN IMMEDIATE")
            first = requests[0]
            if len(requests) == 1 and not isinstance(first, KeyedCommands) and len(first) == 1:
                c = first[0]  # a lone caller, one row
                try:
                    _insert_one(cur, c, now)
                except sqlite3.IntegrityError as exc:
                    if str(exc) != _FULL_MESSAGE:
                        raise
                    errors = store.insert_round(cur, requests, now)  # raise or drop
                else:
                    errors = [None]
            else:
                errors = store.insert_round(cur, requests, now)
            cur.execute("COMMIT")
        except BaseException as exc:
            self._abort(driver, cur, exc)
            raise
        return errors

    def insert(self, cur: Any, commands: Sequence[NewCommand], now: float) -> None:
        """The ids of one statement's rows are consecutive (AUTOINCREMENT in a transaction
        holding the write lock; no trigger inserts into outbox), ending at
        last_insert_rowid()."""
        cur.executemany(
            _INSERT_ROUND,
            [
                (c.kind, c.customer_key, c.payload, c.size, now, c.boot, c.mono, int(c.receipt))
                for c in commands
            ],
        )
        if any(c.receipt for c in commands):
            (last,) = cur.execute("SELECT last_insert_rowid()").fetchone()
            for offset, command in enumerate(commands, start=last - len(commands) + 1):
                command.id = offset

    def insert_id(self, cur: Any, sql: str, params: Sequence[Any]) -> int:
        cur.execute(sql, params)
        return int(cur.lastrowid)

    def queued(self, cur: Any) -> tuple[int, int]:
        rows, size = cur.execute(_COUNTERS).fetchone()
        return int(rows), int(size)

    def close_writer(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(sqlite3.Error):  # back to the pool without the bound
                self._writer.driver_connection.execute(_DROP_BOUND_TRIGGER)
            self._writer.close()
        self._writer = self._writer_cursor = None

    def forget_writer(self) -> None:
        self._writer = self._writer_cursor = None

    # -- drain ---------------------------------------------------------------------------------

    pick = staticmethod(leases.pick_sqlite)

    def delete_rows(self, cur: Any, where: str, params: Sequence[Any]) -> int:
        """No delete triggers on SQLite since 0009: counters and queue flags kept here."""
        return removal.delete_rows(cur, where, params)

    # -- the file ------------------------------------------------------------------------------

    def rescue_lost_wal(self, conn: Any) -> bool:
        """If the -wal file was deleted while this process has the outbox open, copy what our
        connections still see of it into the main file (a checkpoint reads the deleted file
        through the open descriptor), record a warning and log it. True if it was lost.

        Commands committed after the deletion live in a file nobody can reopen: each call
        rescues them again, but only restarting every process on the outbox ends the risk."""
        if not wal_was_lost(self.where):
            return False
        try:
            conn.driver_connection.execute("PRAGMA wal_checkpoint(FULL)").fetchall()
        except sqlite3.Error as exc:
            raise translate_sqlite_error(exc, self.where) from exc
        if not self._wal_loss_recorded:
            self._wal_loss_recorded = True
            record_warning(self.engine, self.where, WAL_DELETED_WHILE_OPEN)
        return True


def _insert_one(cur: Any, c: NewCommand, now: float) -> None:
    if c.receipt:
        cur.execute(
            _INSERT_ROUND, (c.kind, c.customer_key, c.payload, c.size, now, c.boot, c.mono, 1)
        )
        c.id = int(cur.lastrowid)
    else:
        cur.execute(_INSERT, (c.kind, c.customer_key, c.payload, c.size, now, c.boot, c.mono))
