"""OutboxStore: every query the agent runs against the outbox (enqueue, claim, settle, stats).

Hot paths (enqueue, claim, settle) use the engine's raw DB-API connections with explicit
BEGIN IMMEDIATE: a deferred transaction that reads then writes gets "database is locked" at
once, and SQLAlchemy Core would cost ~1.5x per commit. Enqueues from many threads are group
committed (see groupcommit.py). Rows are claimed with a lease, so any number of drainers in any
number of processes never send the same row at the same time.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..clock import wall_clock
from ..constants import DAY_SECONDS, DEFAULT_IMPORT_LEDGER_DAYS
from ..exceptions import ConfigError, OutboxError, OutboxFullError
from . import clock, deadletters, export, leases, ledger, owners, receipts, resume
from .engine import record_warning
from .errors import translate_sqlite_error
from .files import wal_was_lost
from .groupcommit import GroupCommitter
from .leases import ClaimedRow, Settlement
from .ledger import KeyedCommands
from .state import (
    STATE_DROPPED,
    STATE_LAST_ERROR,
    STATE_LAST_ERROR_AT,
    STATE_PAUSE_PROBES,
    STATE_PAUSED_REASON,
    STATE_PROBE_AT,
    STATE_PROJECT,
    read_state,
    set_state,
)
from .stats import collect_stats

log = logging.getLogger(__name__)

OVERFLOW_RAISE = "raise"
OVERFLOW_DROP_OLDEST = "drop_oldest"

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
#: The warning recorded when the -wal file disappears under a running process.
WAL_DELETED_WHILE_OPEN = (
    "the -wal file was deleted while this outbox was open; what this process could still "
    "read of it was checkpointed into the main file, but commands committed by other "
    "processes since the last checkpoint may be lost. Restart every process using the outbox"
)


class NewCommand:
    """A validated command ready to store: its batch name, ordering key and JSON data.

    `size` is the payload's UTF-8 length (computed when not given). With `receipt`, the
    enqueue sets `id` (the receipt's id) once the row is committed. A plain slotted class,
    not a dataclass: one is built per tracking call.
    """

    __slots__ = ("kind", "customer_key", "payload", "size", "receipt", "id", "boot", "mono")

    def __init__(
        self,
        kind: str,
        customer_key: str,
        payload: str,
        size: int = -1,
        receipt: bool = False,
        *,
        boot: str | None = None,
        mono: float | None = None,
    ) -> None:
        """`boot` and `mono`: the boot in which the agent fixed the command's timestamp and
        that boot's clock then (bootclock), for clock correction; None for a caller's."""
        self.kind = kind
        self.boot = boot
        self.mono = mono
        self.customer_key = customer_key
        self.payload = payload
        if size < 0:
            size = len(payload) if payload.isascii() else len(payload.encode("utf-8"))
        self.size = size
        self.receipt = receipt
        self.id = 0

    def __repr__(self) -> str:
        return f"NewCommand({self.kind!r}, {self.customer_key!r}, size={self.size})"


#: What one caller of the group commit hands in: plain commands, or commands to queue once.
Request = Sequence[NewCommand] | KeyedCommands


class OutboxStore:
    """The durable queue on one SQLite file, shared safely by threads and processes."""

    def __init__(
        self,
        engine: Any,
        *,
        max_rows: int,
        max_bytes: int,
        overflow: str = OVERFLOW_RAISE,
        ledger_retention: float = DEFAULT_IMPORT_LEDGER_DAYS * DAY_SECONDS,
        now: Callable[[], float] | None = None,
    ) -> None:
        if overflow not in (OVERFLOW_RAISE, OVERFLOW_DROP_OLDEST):
            raise ValueError(f"overflow must be 'raise' or 'drop_oldest', not {overflow!r}")
        self.engine = engine
        self.path: str = engine.url.database
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.overflow = overflow
        self.ledger_retention = ledger_retention  # seconds an import_ledger key is kept
        self._ledger_log = ledger.LedgerLog()  # used by the writer only
        self._now = now or wall_clock
        self._committer: GroupCommitter[Request] = GroupCommitter(self._write_round)
        self._writer: Any = None  # raw connection owned by whichever thread leads a commit
        self._writer_cursor: tuple[Any, Any] | None = None  # its sqlite3 connection and cursor
        self._drain_lock = threading.Lock()
        self._drain_conn: Any = None
        # Held around every statement this process runs on the file, so that fork() (see
        # hold_for_fork) never happens while one of our connections holds an SQLite lock:
        # the child would inherit SQLite's lock bookkeeping without the locks themselves.
        self._io_lock = threading.Lock()
        self.project: str | None = None  # set by bind_project
        self._wal_loss_recorded = False

    # -- connections ---------------------------------------------------------------------------

    def _raw(self) -> Any:
        return self.engine.raw_connection()

    @contextmanager
    def _transaction(self, conn: Any) -> Iterator[Any]:
        """BEGIN IMMEDIATE .. COMMIT on a raw connection; SQLite errors become OutboxErrors."""
        driver = conn.driver_connection  # skip the pool proxy on the hot path
        self._io_lock.acquire()
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
            self._io_lock.release()

    def _abort(self, driver: Any, cur: Any, exc: BaseException) -> None:
        """Roll back after `exc`; raise it as an OutboxError if SQLite raised it."""
        if driver.in_transaction:
            try:
                cur.execute("ROLLBACK")
            except sqlite3.Error:
                log.warning("rollback failed on %s", self.path, exc_info=True)
        if isinstance(exc, sqlite3.Error):
            raise translate_sqlite_error(exc, self.path) from exc

    def _open_writer(self) -> tuple[Any, Any]:
        """The enqueue connection (pooled, kept until close) and one cursor reused on it."""
        self._writer = self._raw()
        driver = self._writer.driver_connection
        with self._io_lock:
            try:
                driver.execute(_DROP_BOUND_TRIGGER)
                driver.execute(
                    _CREATE_BOUND_TRIGGER.format(max_rows=self.max_rows, max_bytes=self.max_bytes)
                )
            except sqlite3.Error as exc:
                raise translate_sqlite_error(exc, self.path) from exc
        self._writer_cursor = driver, driver.cursor()
        return self._writer_cursor

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        with self._io_lock:
            conn = self._raw()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise translate_sqlite_error(exc, self.path) from exc
            finally:
                conn.close()

    def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(sqlite3.Error):  # back to the pool without the bound
                self._writer.driver_connection.execute(_DROP_BOUND_TRIGGER)
        for conn in (self._writer, self._drain_conn):
            if conn is not None:
                conn.close()
        self._writer = self._drain_conn = None
        self._writer_cursor = None

    def hold_for_fork(self) -> None:
        """Before fork(): wait for the statement in progress and block new ones."""
        self._io_lock.acquire()

    def release_after_fork(self) -> None:
        """In the parent after fork()."""
        self._io_lock.release()

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's connections and locks without touching them."""
        self._writer = self._drain_conn = self._writer_cursor = None
        self._drain_lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._committer.reset_after_fork()
        self._ledger_log.forget()
        self.engine.dispose(close=False)

    # -- enqueue -------------------------------------------------------------------------------

    def enqueue(self, commands: Sequence[NewCommand]) -> None:
        """Commit `commands` atomically (all or none); returns only once they are durable."""
        if commands:
            self._committer.submit(commands)

    def enqueue_once(
        self, commands: Sequence[NewCommand], keys: Sequence[bytes], *, force: bool = False
    ) -> int:
        """Commit the commands whose ledger key is not recorded yet, and record their keys, in
        one transaction (all or none); returns how many were queued. Two processes importing
        the same keys at once queue each exactly once: the lookup and the insert share the
        writer's BEGIN IMMEDIATE. `force` queues them all and records their keys anew."""
        request = KeyedCommands(commands, keys, force=force)
        if commands:
            self._committer.submit(request)
            if self._ledger_log.size >= ledger.COMPACT_KEYS:
                self.compact_ledger()
        return request.queued

    def compact_ledger(self) -> int:
        """Move the keys of the ledger's log into its index (see outbox/ledger.py), in one
        transaction; returns how many."""
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            return ledger.compact(cur)

    def known_keys(self, keys: Sequence[bytes]) -> set[bytes]:
        """The keys among `keys` already in the ledger (a read: a dry run)."""
        with self._reading() as conn:
            return ledger.known(conn.driver_connection.cursor(), keys)

    def prune_ledger(self) -> int:
        """Forget the ledger entries older than `ledger_retention` seconds, in short
        transactions; returns how many. Costs what it deletes (an index on the time)."""
        before = self._now() - self.ledger_retention
        pruned = 0
        while True:
            with self._drain_connection() as conn, self._transaction(conn) as cur:
                count = ledger.prune_slice(cur, before)
            pruned += count
            if count < ledger.PRUNE_SLICE:
                return pruned

    def _write_round(self, requests: Sequence[Request]) -> list[BaseException | None]:
        # Runs in the thread leading the group commit, the only one using the writer.
        driver, cur = self._writer_cursor or self._open_writer()
        now = self._now()
        with self._io_lock:
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
                        errors = self._insert_round(cur, requests, now)  # raise or drop
                    else:
                        errors = [None]
                else:
                    errors = self._insert_round(cur, requests, now)
                cur.execute("COMMIT")
            except BaseException as exc:
                self._ledger_log.forget()  # it may hold keys of the rolled-back transaction
                self._abort(driver, cur, exc)
                raise
        return errors

    def _insert_round(
        self, cur: Any, requests: Sequence[Request], now: float
    ) -> list[BaseException | None]:
        """Insert each request's rows that fit (making room if overflow=drop_oldest); one
        INSERT statement per round, the counters tracked here (the triggers add exactly
        `size` per row) instead of re-read after every request. A KeyedCommands request
        inserts only its commands whose key is not in the ledger, and records their keys."""
        rows, size = cur.execute(_COUNTERS).fetchone()
        errors: list[BaseException | None] = []
        pending: list[NewCommand] = []
        taken: set[bytes] = set()  # keys recorded by earlier requests of this round
        for request in requests:
            keys: list[bytes] | None = None
            commands: Sequence[NewCommand]
            if isinstance(request, KeyedCommands):
                commands, keys = request.fresh(self._ledger_log, cur, taken)
            else:
                commands = request
            need_rows, need_bytes = len(commands), sum(c.size for c in commands)
            error = None
            if rows + need_rows > self.max_rows or size + need_bytes > self.max_bytes:
                _insert_all(cur, pending, now)  # earlier requests' rows first (may be dropped)
                pending = []
                error = self._make_room(cur, rows, size, need_rows, need_bytes, now)
                rows, size = cur.execute(_COUNTERS).fetchone()
            errors.append(error)
            if error is None:
                pending += commands
                rows += need_rows
                size += need_bytes
                if isinstance(request, KeyedCommands) and keys is not None:
                    self._ledger_log.record(cur, keys, now)
                    taken.update(keys)
                    request.queued = len(keys)
        _insert_all(cur, pending, now)
        return errors

    def _make_room(
        self, cur: Any, rows: int, size: int, need_rows: int, need_bytes: int, now: float
    ) -> OutboxFullError | None:
        over_rows = rows + need_rows - self.max_rows
        over_bytes = size + need_bytes - self.max_bytes
        if over_rows <= 0 and over_bytes <= 0:
            return None
        full = OutboxFullError(
            f"outbox {self.path} is full ({rows} rows, {size} bytes; limits {self.max_rows} "
            f"rows, {self.max_bytes} bytes); nothing was written. Deliver or raise the limits, "
            "or set overflow='drop_oldest'"
        )
        if self.overflow != OVERFLOW_DROP_OLDEST or need_rows > self.max_rows:
            return full
        victims: list[int] = []
        freed_rows = freed_bytes = 0
        # Oldest rows that are not in flight; stop as soon as enough room is free.
        for row_id, row_size in cur.execute(
            "SELECT id, size FROM outbox WHERE lease_expires_at <= ? ORDER BY id", (now,)
        ):
            if freed_rows >= over_rows and freed_bytes >= over_bytes:
                break
            victims.append(row_id)
            freed_rows += 1
            freed_bytes += row_size
        if freed_rows < over_rows or freed_bytes < over_bytes:
            return full
        cur.executemany("DELETE FROM outbox WHERE id = ?", [(v,) for v in victims])
        dropped = int(read_state(cur).get(STATE_DROPPED) or 0) + len(victims)
        set_state(cur, {STATE_DROPPED: dropped})
        log.warning(
            "outbox full: dropped the %d oldest commands (overflow=drop_oldest)", len(victims)
        )
        return None

    # -- receipts ------------------------------------------------------------------------------

    def receipts(self, ids: Sequence[int]) -> list[receipts.ReceiptStatus]:
        """Where each id stands (see outbox.receipts), in the order given."""
        with self._reading() as conn:
            return receipts.lookup(conn, ids, self._now())

    def prune_receipts(self, now: float, max_age: float, max_rows: int, *, batch: int) -> int:
        """Forget delivered receipts older than `max_age` seconds at `now` or beyond the newest
        `max_rows`: found on a read connection, deleted `batch` per transaction (the write
        lock is never held for a scan). Returns how many."""
        pruned = 0
        while True:
            with self._reading() as conn:
                ids = receipts.prune_candidates(conn, now, max_age, max_rows, batch)
            if not ids:
                return pruned
            with self._drain_connection() as conn, self._transaction(conn) as cur:
                pruned += receipts.forget(cur, ids)
            if len(ids) < batch:
                return pruned

    # -- drain side ----------------------------------------------------------------------------

    @contextmanager
    def _drain_connection(self) -> Iterator[Any]:
        with self._drain_lock:
            if self._drain_conn is None:
                self._drain_conn = self._raw()
                # Leases and settlements need no fsync of their own: a power cut can only undo
                # some (rows re-sent, deduplicated by their fixed timestamps); a crashed
                # process loses nothing in WAL mode. Enqueues stay synchronous=FULL.
                self._drain_conn.driver_connection.execute("PRAGMA synchronous = NORMAL")
            yield self._drain_conn

    def claim(
        self,
        owner: str,
        *,
        limit: int,
        max_bytes: int,
        lease_seconds: float,
        now: float,
        follow_own: bool = False,
    ) -> list[ClaimedRow]:
        """Lease up to `limit` due rows (at least one, at most `max_bytes` of payload). With
        `follow_own`, rows leased to `owner` do not block it (see leases.claim)."""
        return self.claim_if(
            owner,
            limit=limit,
            max_bytes=max_bytes,
            lease_seconds=lease_seconds,
            now=now,
            follow_own=follow_own,
        )[1]

    def claim_if(
        self,
        owner: str,
        *,
        limit: int,
        max_bytes: int,
        lease_seconds: float,
        now: float,
        may_claim: Callable[[dict[str, Any]], bool] | None = None,
        follow_own: bool = False,
        fix_clock: bool = False,
    ) -> tuple[dict[str, Any], list[ClaimedRow]]:
        """The agent state and, if `may_claim(state)` allows (no pause or backoff in force),
        the rows leased as claim() does; one transaction, so the state is the one acted on."""
        gate = self._project_gate(may_claim)
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            return leases.claim(
                cur, owner, limit, max_bytes, lease_seconds, now, gate,
                follow_own=follow_own, fix_clock=fix_clock,
            )  # fmt: skip

    def settle(self, owner: str, outcome: Settlement, now: float) -> int:
        """Apply `outcome` to rows still leased by `owner`; returns rows delivered."""
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            return leases.settle(cur, owner, outcome, now)

    def settle_and_claim(
        self,
        owner: str,
        outcome: Settlement,
        now: float,
        *,
        limit: int,
        max_bytes: int,
        lease_seconds: float,
        may_claim: Callable[[dict[str, Any]], bool] | None = None,
        follow_own: bool = False,
        fix_clock: bool = False,
    ) -> tuple[int, dict[str, Any], list[ClaimedRow]]:
        """settle() then claim_if() in one transaction: the rows just delivered and the next
        ones share table pages, so one commit writes a third less WAL than two."""
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            delivered = leases.settle(cur, owner, outcome, now)
            gate = self._project_gate(may_claim)
            state, rows = leases.claim(
                cur, owner, limit, max_bytes, lease_seconds, now, gate,
                follow_own=follow_own, fix_clock=fix_clock,
            )  # fmt: skip
            return delivered, state, rows

    def release_all(self, owner: str) -> int:
        """Drop every lease `owner` holds (shutdown): those rows are due again at once."""
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            cur.execute(
                "UPDATE outbox SET lease_owner = NULL, lease_expires_at = 0 WHERE lease_owner = ?",
                (owner,),
            )
            return int(cur.rowcount)

    def state(self) -> dict[str, Any]:
        with self._reading() as conn:
            return read_state(conn)

    # -- the outbox's project and integrity ----------------------------------------------------

    def bind_project(self, project_token: str) -> None:
        """Record that this outbox belongs to `project_token` (the first agent to open it does),
        or refuse with ConfigError if it belongs to another project: its rows must never be
        delivered with another project's token. Later claims check it again."""
        owner = self.state().get(STATE_PROJECT)  # a read: no write lock on every open
        if owner is None:
            with self._drain_connection() as conn, self._transaction(conn) as cur:
                owner = read_state(cur).get(STATE_PROJECT)  # another agent may have won
                if owner is None:
                    set_state(cur, {STATE_PROJECT: project_token})
                    owner = project_token
        if owner != project_token:
            raise ConfigError(
                f"database_url: the outbox {self.path} belongs to project {owner!r}, not "
                f"{project_token!r}; one outbox serves one project: give each project its "
                "own database_url"
            )
        self.project = project_token

    def _project_gate(
        self, may_claim: Callable[[dict[str, Any]], bool] | None
    ) -> Callable[[dict[str, Any]], bool] | None:
        """`may_claim`, preceded by the check that the outbox still belongs to our project."""
        project = self.project
        if project is None:
            return may_claim

        def gate(state: dict[str, Any]) -> bool:
            owner = state.get(STATE_PROJECT)
            if owner is not None and owner != project:
                raise OutboxError(
                    f"{self.path}: the outbox now belongs to project {owner!r}, not "
                    f"{project!r}; not delivering its rows"
                )
            return may_claim is None or may_claim(state)

        return gate

    def renew_leases(self, owner: str, until: float) -> int:
        """Extend every lease `owner` holds to `until` (a batch being split, one queued behind
        it): work in progress must never be claimed by another drainer. Returns rows renewed."""
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            cur.execute(
                "UPDATE outbox SET lease_expires_at = ?"
                " WHERE lease_expires_at > 0 AND lease_owner = ?",
                (until, owner),
            )
            return int(cur.rowcount)

    def probe_now(self) -> str | None:
        """If delivery is paused, make the next probe due at once (a daemon start, a flush, a
        successful `check`, `tracker-agent resume`): the pause lifts the moment the API
        accepts a batch again. Returns the pause reason, None when not paused. Writes only
        when paused: a flush that finds delivery running costs one read."""
        if not self.state().get(STATE_PAUSED_REASON):
            return None
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            reason = read_state(cur).get(STATE_PAUSED_REASON)
            if reason:
                set_state(cur, {STATE_PROBE_AT: 0, STATE_PAUSE_PROBES: 0})
        return str(reason) if reason else None

    def learn_clock(self, boot: str, ref: clock.BootRef, now: float) -> None:
        """Record an answer of the server's clock as `boot`'s reference (clock.py): commands
        of that boot not yet claimed are corrected by it at their first claim."""
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            clock.learn(cur, boot, ref, now)

    def note_error(self, reason: str, now: float) -> None:
        """Record why delivery waits although no batch failed (status shows it): the drain
        could not learn the server's clock, so nothing was claimed."""
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            set_state(cur, {STATE_LAST_ERROR: reason, STATE_LAST_ERROR_AT: now})

    def knows_clock(self, boot: str) -> bool:
        """A reference of `boot`'s clock was learned (by any process on this outbox)."""
        return boot in clock.refs_of(self.state())

    # -- offline bundles (agent.export_bundle) ---------------------------------------------------

    def outbox_id(self) -> str:
        """This outbox's id (made at first use): bundles name commands by it and their id."""
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            return export.outbox_id(cur)

    def lease_for_export(
        self, owner: str, after_id: int, limit: int, until: float
    ) -> list[export.ExportRow]:
        """Lease the next `limit` rows after `after_id` that no drainer holds to `owner`."""
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            return export.lease_for_export(cur, owner, after_id, limit, self._now(), until)

    def delete_exported(self, owner: str, ids: list[int]) -> int:
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            return export.delete_exported(cur, owner, ids)

    def release_exported(self, owner: str, ids: list[int]) -> None:
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            export.release_exported(cur, owner, ids)

    def end_unreachable_backoff(self, now: float) -> bool:
        """A reachability probe was answered: if the backoff in force began with no answer at
        all, end it now (the rows it holds are due at once). A backoff a 429 or 5xx started
        is left alone. True if a backoff ended."""
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            return resume.end_unreachable_backoff(cur, now)

    def reclaim_dead_owners(self, now: float, here: owners.Machine) -> int:
        """Release the leases of drainers of this machine whose process is gone (a SIGKILLed
        daemon), so their rows are due at once instead of after lease_seconds. Reads only the
        few leased rows; writes nothing when no owner is dead. Returns rows released."""
        with self._reading() as conn:
            dead = owners.dead_owners(conn, now, here)
        if not dead:
            return 0
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            freed = owners.release_owners(cur, owners.dead_owners(cur, now, here))
        if freed:
            log.info("took back %d commands leased by a drainer that died", freed)
        return freed

    def rescue_lost_wal(self) -> bool:
        """If the -wal file was deleted while this process has the outbox open, copy what our
        connections still see of it into the main file (a checkpoint reads the deleted file
        through the open descriptor), record a warning and log it. True if it was lost.

        Commands committed after the deletion live in a file nobody can reopen: each call
        rescues them again, but only restarting every process on the outbox ends the risk."""
        if not wal_was_lost(self.path):
            return False
        with self._drain_connection() as conn, self._io_lock:
            try:
                conn.driver_connection.execute("PRAGMA wal_checkpoint(FULL)").fetchall()
            except sqlite3.Error as exc:
                raise translate_sqlite_error(exc, self.path) from exc
        if not self._wal_loss_recorded:
            self._wal_loss_recorded = True
            record_warning(self.engine, self.path, WAL_DELETED_WHILE_OPEN)
        return True

    # -- inspection ----------------------------------------------------------------------------

    def stats(self, now: float | None = None) -> dict[str, Any]:
        with self._reading() as conn:
            return collect_stats(conn, self._now() if now is None else now)

    def list_dead(self, **filters: Any) -> list[deadletters.DeadLetter]:
        with self._reading() as conn:
            return deadletters.select(conn, now=self._now(), **filters)

    def retry_dead(self, **filters: Any) -> int:
        """Put matching dead letters back in the queue under their original ids (FIFO place)."""
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            return deadletters.resurrect(cur, now=self._now(), **filters)

    def purge_dead(self, **filters: Any) -> int:
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            return deadletters.purge(cur, now=self._now(), **filters)


def _insert_one(cur: Any, c: NewCommand, now: float) -> None:
    if c.receipt:
        cur.execute(
            _INSERT_ROUND, (c.kind, c.customer_key, c.payload, c.size, now, c.boot, c.mono, 1)
        )
        c.id = int(cur.lastrowid)
    else:
        cur.execute(_INSERT, (c.kind, c.customer_key, c.payload, c.size, now, c.boot, c.mono))


def _insert_all(cur: Any, commands: Sequence[NewCommand], now: float) -> None:
    """INSERT `commands` in one statement; those with a receipt learn their ids. The ids of
    one statement's rows are consecutive (AUTOINCREMENT in a transaction holding the write
    lock; no trigger inserts into outbox), ending at last_insert_rowid()."""
    if not commands:
        return
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
