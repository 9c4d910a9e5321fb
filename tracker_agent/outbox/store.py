"""OutboxStore: every query the agent runs against the outbox (enqueue, claim, settle, stats).

What differs between databases (transactions, the enqueue bound's fast path, the claim, the
clock, errors) is behind backend.Backend, chosen from the engine's URL; what is common stays
here. Hot paths use the engine's raw DB-API connections (SQLAlchemy Core would cost ~1.5x per
commit). Enqueues from many threads are group committed (see groupcommit.py). Rows are claimed
with a lease, so any number of drainers in any number of processes never send the same row at
the same time.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from ..clock import wall_clock
from ..constants import DAY_SECONDS, DEFAULT_IMPORT_LEDGER_DAYS
from ..exceptions import ConfigError, OutboxConflictError, OutboxError, OutboxFullError
from . import clock, deadletters, export, leases, ledger, owners, receipts, resume, settling
from .backend import SQLITE
from .backends import backend_for_engine
from .commands import NewCommand, Request
from .groupcommit import GroupCommitter
from .leases import ClaimedRow, Settlement
from .ledger import KeyedCommands
from .state import (
    HOST_STATE,
    STATE_DROPPED,
    STATE_LAST_ERROR,
    STATE_LAST_ERROR_AT,
    STATE_PAUSE_PROBES,
    STATE_PAUSED_REASON,
    STATE_PROBE_AT,
    STATE_PROJECT,
    STATE_WARNING,
    STATE_WARNING_AT,
    host_keys,
    host_view,
    read_state,
    set_state,
)
from .stats import collect_stats

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Times a drain transaction is run again after the database aborted it in a deadlock with
#: another host's (see _drain_transaction).
CONFLICT_RETRIES = 3
#: Seconds before the first of those runs (then doubling), jittered by +-50%.
CONFLICT_PAUSE = 0.02

#: Rows per DELETE when drop_oldest makes room (SQLite before 3.32 allows 999 parameters).
DELETE_CHUNK = 500
OVERFLOW_RAISE = "raise"
OVERFLOW_DROP_OLDEST = "drop_oldest"


class _Unguarded:
    """The io lock of a backend without a fork guard (Backend.fork_guard): it holds nothing."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        return None


def _io_lock(guarded: bool) -> threading.Lock | _Unguarded:
    """OutboxStore's lock around every statement of the process (see hold_for_fork)."""
    return threading.Lock() if guarded else _Unguarded()


class OutboxStore:
    """The durable queue on one database, shared safely by threads, processes and hosts."""

    def __init__(
        self,
        engine: Any,
        *,
        max_rows: int,
        max_bytes: int,
        overflow: str = OVERFLOW_RAISE,
        ledger_retention: float = DEFAULT_IMPORT_LEDGER_DAYS * DAY_SECONDS,
        now: Callable[[], float] | None = None,
        host: str | None = None,
        db_clock: bool = True,
    ) -> None:
        if overflow not in (OVERFLOW_RAISE, OVERFLOW_DROP_OLDEST):
            raise ValueError(f"overflow must be 'raise' or 'drop_oldest', not {overflow!r}")
        self.engine = engine
        self.backend = backend_for_engine(engine)
        # PostgreSQL stamps leases and retries with its own clock unless told to use the
        # times callers pass (tests that move time; one host, where both clocks are one).
        self.backend.db_clock = db_clock
        #: The database in messages: the file, or the URL without its password.
        self.path: str = self.backend.where
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.overflow = overflow
        self.ledger_retention = ledger_retention  # seconds an import_ledger key is kept
        self._ledger_log = ledger.LedgerLog(self.backend.insert_id)  # used by the writer only
        self._now = now or wall_clock
        self._committer: GroupCommitter[Request] = GroupCommitter(self._write_round)
        self._drain_lock = threading.Lock()
        self._drain_conn: Any = None
        # Held around every statement this process runs on the file, so that fork() (see
        # hold_for_fork) never happens while one of our connections holds an SQLite lock:
        # the child would inherit SQLite's lock bookkeeping without the locks themselves.
        # On PostgreSQL a lock that holds nothing (Backend.fork_guard).
        self._io_lock = _io_lock(self.backend.fork_guard)
        self.project: str | None = None  # set by bind_project
        # A database shared by hosts: each host backs off on its own (see HOST_STATE).
        self._host = None if self.backend.name == SQLITE else (host or owners.host_key())

    # -- connections ---------------------------------------------------------------------------

    def _raw(self) -> Any:
        return self.engine.raw_connection()

    @contextmanager
    def _transaction(self, conn: Any) -> Iterator[Any]:
        """BEGIN .. COMMIT on a raw connection (the backend's); errors become OutboxErrors."""
        with self._io_lock, self.backend.transaction(conn) as cur:
            yield cur

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        with self._io_lock:
            conn = self._raw()
            try:
                with self.backend.reading(conn) as view:
                    yield view
            finally:
                self._give_back(conn)

    def _give_back(self, conn: Any) -> None:
        """Return a raw connection to the pool; a broken one (server gone) is discarded."""
        if self.backend.broken(conn):
            conn.invalidate()
        else:
            conn.close()

    def close(self) -> None:
        self.backend.close_writer()
        self.backend.close_drain()
        if self._drain_conn is not None:
            self._drain_conn.close()
        self._drain_conn = None

    def hold_for_fork(self) -> None:
        """Before fork(): wait for the statement in progress and block new ones (SQLite; on
        PostgreSQL statements go on, see Backend.fork_guard)."""
        self._io_lock.acquire()
        self.backend.hold_for_fork()

    def release_after_fork(self) -> None:
        """In the parent after fork()."""
        self.backend.release_after_fork()
        self._io_lock.release()

    def reset_after_fork(self) -> None:
        """In a forked child: forget the parent's connections and locks without touching them."""
        self._drain_conn = None
        self.backend.forget_writer()
        self.backend.forget_drain()
        self._drain_lock = threading.Lock()
        self._io_lock = _io_lock(self.backend.fork_guard)
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
        one transaction (all or none); returns how many were queued. Two processes (or hosts)
        importing the same keys at once queue each exactly once: the lookup and the insert
        share the writer's BEGIN IMMEDIATE on SQLite, the ledger's advisory lock on PostgreSQL
        (Backend.lock_ledger). `force` queues them all and records their keys anew."""
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
            self.backend.lock_ledger(cur)
            return ledger.compact(cur)

    def known_keys(self, keys: Sequence[bytes]) -> set[bytes]:
        """The keys among `keys` already in the ledger (a read: a dry run)."""
        with self._reading() as conn:
            return ledger.known(conn, keys)

    def prune_ledger(self) -> int:
        """Forget the ledger entries older than `ledger_retention` seconds, in short
        transactions; returns how many. Costs what it deletes (an index on the time)."""
        before = self._now() - self.ledger_retention
        pruned = 0
        while True:
            with self._drain_connection() as conn, self._transaction(conn) as cur:
                self.backend.lock_ledger(cur)
                count = ledger.prune_slice(cur, before)
            pruned += count
            if count < ledger.PRUNE_SLICE:
                return pruned

    def _write_round(self, requests: Sequence[Request]) -> list[BaseException | None]:
        # Runs in the thread leading the group commit, the only one using the writer.
        with self._io_lock:
            try:
                return self.backend.write_round(self, requests, self._now())
            except BaseException:
                self._ledger_log.forget()  # it may hold keys of the rolled-back transaction
                raise

    def insert_round(
        self, cur: Any, requests: Sequence[Request], now: float
    ) -> list[BaseException | None]:
        """Insert each request's rows that fit (making room if overflow=drop_oldest); one
        INSERT statement per round, the counters tracked here (the triggers add exactly
        `size` per row) instead of re-read after every request. A KeyedCommands request
        inserts only its commands whose key is not in the ledger, and records their keys.
        Called by the backend's write_round inside its transaction."""
        backend = self.backend
        rows, size = backend.counters(cur)
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
                if pending:  # earlier requests' rows go in first (they may be dropped)
                    backend.insert(cur, pending, now)
                    pending = []
                error = self._make_room(cur, rows, size, need_rows, need_bytes, now)
                rows, size = backend.counters(cur)
            errors.append(error)
            if error is None:
                pending += commands
                rows += need_rows
                size += need_bytes
                if isinstance(request, KeyedCommands) and keys is not None:
                    self._ledger_log.record(cur, keys, now)
                    taken.update(keys)
                    request.queued = len(keys)
        if pending:
            backend.insert(cur, pending, now)
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
        self.backend.lock_customers(
            cur,
            f"SELECT customer_key FROM outbox WHERE id IN ({','.join('?' * len(victims))})",
            victims,
        )
        for start in range(0, len(victims), DELETE_CHUNK):
            chunk = victims[start : start + DELETE_CHUNK]
            self.backend.delete_rows(cur, f"id IN ({','.join('?' * len(chunk))})", chunk)
        dropped = int(read_state(cur).get(STATE_DROPPED) or 0) + len(victims)
        set_state(cur, {STATE_DROPPED: dropped})
        log.warning(
            "outbox full: dropped the %d oldest commands (overflow=drop_oldest)", len(victims)
        )
        return None

    # -- receipts ------------------------------------------------------------------------------

    def receipts(self, ids: Sequence[int]) -> list[receipts.ReceiptStatus]:
        """Where each id stands (see outbox.receipts), in the order given."""
        with self._reading() as conn:  # leases are on the database's clock (PostgreSQL)
            return receipts.lookup(conn, ids, self.backend.clock(conn, self._now()))

    def prune_receipts(self, now: float, max_age: float, max_rows: int, *, batch: int) -> int:
        """Forget delivered receipts older than `max_age` seconds at `now` or beyond the newest
        `max_rows`: found on a read connection, deleted `batch` per transaction (the write
        lock is never held for a scan). Returns how many. `now` is taken as the database's
        clock on PostgreSQL, as settle() stamped the deliveries."""
        pruned = 0
        while True:
            with self._reading() as conn:
                stamped = self.backend.clock(conn, now)
                ids = receipts.prune_candidates(conn, stamped, max_age, max_rows, batch)
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
                conn = self._raw()
                try:
                    with self._io_lock, self.backend.reading(conn):
                        self.backend.prepare_drain(conn)
                except BaseException:
                    self._give_back(conn)
                    raise
                self._drain_conn = conn
            try:
                yield self._drain_conn
            except OutboxError:
                if self.backend.broken(self._drain_conn):  # the next call reconnects
                    self._drain_conn.invalidate()
                    self._drain_conn = None
                raise

    def _drain_transaction(self, body: Callable[[Any], T]) -> T:
        """body(cur) in one transaction on the drain's connection. A transaction the database
        aborted in a deadlock (PostgreSQL: drainers on several hosts applying each other's
        recorded outcomes take customers' locks in different orders) wrote nothing and runs
        again, up to CONFLICT_RETRIES times, rather than failing the drain pass: after a pause
        (CONFLICT_PAUSE, doubling, jittered) in which the transaction that won goes on. Run
        again at once, it could take back the row the winner was about to lock, and deadlock
        with it again, the winner aborted this time (seen under load)."""
        for attempt in range(CONFLICT_RETRIES):
            try:
                with self._drain_connection() as conn, self._transaction(conn) as cur:
                    return body(cur)
            except OutboxConflictError as exc:
                log.info("%s; running the transaction again (%d)", exc, attempt + 1)
                time.sleep(CONFLICT_PAUSE * 2**attempt * random.uniform(0.5, 1.5))
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            return body(cur)

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
        return self._drain_transaction(
            lambda cur: self._claim(
                cur, owner, limit, max_bytes, lease_seconds, now, gate, follow_own, fix_clock
            )
        )

    def _claim(
        self,
        cur: Any,
        owner: str,
        limit: int,
        max_bytes: int,
        lease_seconds: float,
        now: float,
        gate: Callable[[dict[str, Any]], bool] | None,
        follow_own: bool,
        fix_clock: bool = False,
        db_now: float | None = None,
    ) -> tuple[dict[str, Any], list[ClaimedRow]]:
        """leases.claim in the caller's transaction. `db_now`: the database's clock, read by
        a caller that has also applied the recorded outcomes in this transaction."""
        if db_now is None:  # a crashed drainer's outcome: applied before its rows go again
            db_now = self._apply_recorded(cur, now)
        host = self._host
        if host is not None:  # a backoff is this host's: see HOST_STATE
            outer = gate

            def gate(state: dict[str, Any]) -> bool:
                return outer is None or outer(host_view(state, host))

        state, rows = leases.claim(
            cur,
            owner,
            limit,
            max_bytes,
            lease_seconds,
            db_now,
            gate,
            follow_own=follow_own,
            pick=self.backend.pick,
            fix_clock=fix_clock,
            add_to_counter_sql=self.backend.add_to_counter_sql,
        )
        return (state if host is None else host_view(state, host)), rows

    def settle(self, owner: str, outcome: Settlement, now: float) -> int:
        """Apply `outcome` to rows still leased by `owner`; returns rows delivered. Recorded
        outcomes are applied first (a drainer that recorded its last batches' outcomes
        without applying them, see Lander.finish, leaves nothing in flight at the end)."""

        def body(cur: Any) -> int:
            db_now = self._apply_recorded(cur, now)
            return self._settle(cur, owner, outcome, now, db_now)

        return self._drain_transaction(body)

    def _settle(
        self, cur: Any, owner: str, outcome: Settlement, now: float, db_now: float | None = None
    ) -> int:
        outcome, stamped = self._stamped(cur, outcome, now, db_now)
        return self._apply(cur, owner, outcome, stamped)

    def _stamped(
        self, cur: Any, outcome: Settlement, now: float, db_now: float | None = None
    ) -> tuple[Settlement, float]:
        """`outcome` on the database's clock (`db_now` if the caller read it already) and with
        this host's keys; the database's now."""
        stamped = self.backend.clock(cur, now) if db_now is None else db_now
        if stamped != now and outcome.retry:  # a retry time is a delay from `now`
            outcome = dataclasses.replace(outcome, retry_at=outcome.retry_at + stamped - now)
        if self._host is not None and HOST_STATE.intersection(outcome.state):
            outcome = dataclasses.replace(outcome, state=host_keys(outcome.state, self._host))
        return outcome, stamped

    def _apply(self, cur: Any, owner: str, outcome: Settlement, stamped: float) -> int:
        backend = self.backend
        return leases.settle(
            cur,
            owner,
            outcome,
            stamped,
            add_to_counter_sql=backend.add_to_counter_sql,
            lock_customers=None if backend.name == SQLITE else backend.lock_customers,
            delete=backend.delete_rows,
            ids_in=backend.ids_in,
        )

    def record_settlement(self, owner: str, outcome: Settlement, now: float) -> int:
        """Commit `outcome` as a record (see settling.py), not yet applied to the outbox: the
        batch queued behind it may go out now. Pass the returned id to settle_and_claim."""

        def body(cur: Any) -> int:
            # The database's clock only for a retry time (recorded_at is for people): on
            # PostgreSQL one round trip less before the batch queued behind this one goes.
            stamped_outcome, stamped = self._stamped(
                cur, outcome, now, None if outcome.retry else now
            )
            return settling.record(self.backend, cur, owner, stamped_outcome, stamped)

        # One INSERT, a transaction of its own (PostgreSQL: no BEGIN and COMMIT round trips).
        with (
            self._drain_connection() as conn,
            self._io_lock,
            self.backend.single_statement(conn) as cur,
        ):
            return body(cur)

    def _apply_recorded(self, cur: Any, now: float) -> float:
        """Apply every recorded outcome (usually none); returns the transaction's clock
        (Backend.clock), read with the records."""
        stamped, records = settling.pending(self.backend, cur, now)
        # An owner's consecutive records (the two batches of a claim) as one settle: on
        # PostgreSQL three statements fewer per claim.
        runs: list[tuple[str, Settlement]] = []
        for record in records:
            last = runs[-1] if runs else None
            joined = last[1].merged(record.outcome) if last and last[0] == record.owner else None
            if joined is not None:
                runs[-1] = (record.owner, joined)
            else:
                runs.append((record.owner, record.outcome))
        for owner, outcome in runs:
            self._apply(cur, owner, outcome, stamped)
        return stamped

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
        recorded: int | None = None,
    ) -> tuple[int, dict[str, Any], list[ClaimedRow]]:
        """settle() then claim_if() in one transaction: the rows just delivered and the next
        ones share table pages, so one commit writes a third less WAL than two.

        With `recorded` (record_settlement's id for this `outcome`), the record is applied
        and deleted with the others instead (or by another drainer's claim that took it
        first); the outcome's deliveries are counted as they were recorded."""
        gate = self._project_gate(may_claim)

        def body(cur: Any) -> tuple[int, dict[str, Any], list[ClaimedRow]]:
            # Records first, in the order they were made (this outcome's, and the ones
            # recorded without being applied before it, see Lander.finish); the database's
            # clock once for all, read with them (PostgreSQL: one round trip).
            db_now = self._apply_recorded(cur, now)
            if recorded is None:
                delivered = self._settle(cur, owner, outcome, now, db_now)
            else:
                # Applied just now with the other records, or by another drainer's claim
                # (gone, or held by a transaction applying it: never waited for; waiting for
                # it held a drainer up to a whole other claim, about 40 ms with 4 drainers).
                delivered = len(outcome.delivered)
            state, rows = self._claim(
                cur, owner, limit, max_bytes, lease_seconds, now, gate, follow_own, fix_clock,
                db_now,
            )  # fmt: skip
            return delivered, state, rows

        return self._drain_transaction(body)

    def release_all(self, owner: str) -> int:
        """Drop every lease `owner` holds (shutdown): those rows are due again at once."""

        def body(cur: Any) -> int:
            self._apply_recorded(cur, self._now())  # delivered rows are never given back
            cur.execute(
                "UPDATE outbox SET lease_owner = NULL, lease_expires_at = 0 WHERE lease_owner = ?",
                (owner,),
            )
            return int(cur.rowcount)

        return self._drain_transaction(body)

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
            local = self._now()
            cur.execute(
                "UPDATE outbox SET lease_expires_at = ?"
                " WHERE lease_expires_at > 0 AND lease_owner = ?",
                (until - local + self.backend.clock(cur, local), owner),
            )
            return int(cur.rowcount)

    def clear_warning(self) -> str | None:
        """Acknowledge the outbox's warning (status stops showing it); returns it."""
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            previous = read_state(cur).get(STATE_WARNING)
            set_state(cur, {STATE_WARNING: None, STATE_WARNING_AT: None})
        return None if previous is None else str(previous)

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
            local = self._now()
            # A recorded delivery is never exported; the lease on the database's clock.
            stamped = self._apply_recorded(cur, local)
            return export.lease_for_export(
                cur, owner, after_id, limit, stamped, until - local + stamped
            )

    def delete_exported(self, owner: str, ids: list[int]) -> int:
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            if ids:  # PostgreSQL: the customers' locks first (see Backend.lock_customers)
                marks = ",".join("?" * len(ids))
                keys = f"SELECT customer_key FROM outbox WHERE id IN ({marks})"
                self.backend.lock_customers(cur, keys, ids)
            return export.delete_exported(cur, owner, ids, self.backend.delete_rows)

    def release_exported(self, owner: str, ids: list[int]) -> None:
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            export.release_exported(cur, owner, ids)

    def end_unreachable_backoff(self, now: float) -> bool:
        """A reachability probe was answered: if the backoff in force began with no answer at
        all, end it now (the rows it holds are due at once). A backoff a 429 or 5xx started
        is left alone. True if a backoff ended."""
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            return resume.end_unreachable_backoff(cur, self.backend.clock(cur, now), self._host)

    def reclaim_dead_owners(self, now: float, here: owners.Machine) -> int:
        """Release the leases of drainers of this machine whose process is gone (a SIGKILLed
        daemon), so their rows are due at once instead of after lease_seconds. Reads only the
        few leased rows; writes nothing when no owner is dead. Returns rows released."""
        with self._reading() as conn:
            dead = owners.dead_owners(conn, self.backend.clock(conn, now), here)
        if not dead:
            return 0
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            stamped = self._apply_recorded(cur, now)  # its delivered rows are not released
            freed = owners.release_owners(cur, owners.dead_owners(cur, stamped, here))
        if freed:
            log.info("took back %d commands leased by a drainer that died", freed)
        return freed

    def rescue_lost_wal(self) -> bool:
        """If the -wal file was deleted while this process has the outbox open, copy what our
        connections still see of it into the main file and record a warning (see
        sqlite.SqliteBackend.rescue_lost_wal). True if it was lost; always False on
        PostgreSQL."""
        if self.backend.name != SQLITE:
            return False
        with self._drain_connection() as conn, self._io_lock:
            return bool(self.backend.rescue_lost_wal(conn))  # type: ignore[attr-defined]

    # -- inspection ----------------------------------------------------------------------------

    def stats(self, now: float | None = None) -> dict[str, Any]:
        backend = self.backend
        with self._reading() as conn:
            stamped = backend.clock(conn, self._now() if now is None else now)
            return collect_stats(conn, stamped, counters=backend.queued)

    def list_dead(self, **filters: Any) -> list[deadletters.DeadLetter]:
        with self._reading() as conn:
            return deadletters.select(conn, **self._dead_terms(conn), **filters)

    def retry_dead(self, **filters: Any) -> int:
        """Put matching dead letters back in the queue under their original ids (FIFO place)."""
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            terms = self._dead_terms(cur)
            clause, params = deadletters.where(**terms, **filters)
            keys = f"SELECT customer_key FROM dead_letters{clause}"
            self.backend.lock_customers(cur, keys, params)
            return deadletters.resurrect(cur, **terms, **filters)

    def purge_dead(self, **filters: Any) -> int:
        with self._drain_connection() as conn, self._transaction(conn) as cur:
            return deadletters.purge(cur, **self._dead_terms(cur), **filters)

    def _dead_terms(self, cur: Any) -> dict[str, Any]:
        return {"now": self.backend.clock(cur, self._now()), "contains": self.backend.contains_sql}
