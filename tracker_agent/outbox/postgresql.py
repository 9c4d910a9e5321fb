"""The outbox on PostgreSQL (psycopg 3): one queue shared by many hosts' apps and drainers.

- Transactions are READ COMMITTED on raw psycopg connections; the store's SQL uses `?`
  placeholders, which PgCursor turns into psycopg's `%s`.
- Time comes from the database (clock_timestamp()) for leases, retries and dead letters, so
  one host's clock skew cannot expire another host's lease. Callers' absolute times (a retry
  at, a lease until) are taken as delays from the caller's `now`.
- An enqueue first takes the advisory lock of each of its customers (sorted, so two
  enqueues never deadlock): ids are drawn after the lock and committed before it is released,
  so a customer's ids follow its commit order across hosts. Deletes of a customer's rows take
  the same lock (the head-flag triggers rely on it, see migration 0003).
- The bound (max_rows, max_bytes) is checked against the counters each enqueue reads: hosts
  enqueueing at the same moment may pass it by one round each.
- The import ledger's readers and writers take one more advisory lock (PG_LEDGER_LOCK, before
  any customer's), so a lookup and the insert after it see no other importer in between and
  the ledger log's ids commit in order (see outbox/ledger.py).
- A receipt's id is the row's identity, read back with RETURNING id.
- Claims run side by side: each locks the heads of the customers it takes and skips those
  another claim holds (see pg_claim.py). The drain's connection commits with
  synchronous_commit off, like SQLite's drain with synchronous=NORMAL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..constants import MAX_CLAIM_BATCHES, PG_CUSTOMER_LOCK_CLASS, PG_LEDGER_LOCK
from ..exceptions import OutboxError
from .backend import POSTGRESQL, Backend, WritesRounds
from .commands import commands_of
from .ledger import KeyedCommands
from .pg_claim import CLAIM_SETTINGS, pick_postgresql
from .pg_engine import shown_url
from .pg_errors import translate_pg_error
from .state import COUNTER_SLOT

if TYPE_CHECKING:
    from .commands import NewCommand, Request

__all__ = ["PgCursor", "PostgresBackend"]

log = logging.getLogger(__name__)

_NOW = "extract(epoch FROM clock_timestamp())::float8"
_NOW_SQL = f"SELECT {_NOW}"
_COUNTERS = "SELECT coalesce(sum(rows), 0), coalesce(sum(bytes), 0) FROM queue_counters"
# One statement for a whole round; ORDER BY n draws the ids in the callers' order (so the ids
# RETURNING gives, sorted, are the rows' in that order).
_INSERT = (
    "INSERT INTO outbox (kind, customer_key, payload, size, created_at, receipt, boot_id, mono_at)"
    " SELECT k, c, p, s, extract(epoch FROM statement_timestamp()), r, b, m"
    " FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::int[], %s::text[],"
    " %s::float8[]) WITH ORDINALITY AS u(k, c, p, s, r, b, m, n) ORDER BY n"
)
# An enqueue's first statement: its customers' locks (sorted: two enqueues never deadlock),
# the database's clock and the counters, in one round trip. The counters are read in the
# statement's snapshot, before the locks: the bound is a soft one across hosts anyway.
_LOCK_KEYS = (
    f"SELECT (SELECT count(pg_advisory_xact_lock({PG_CUSTOMER_LOCK_CLASS}, h))"
    " FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest(%s::text[]) AS k ORDER BY h) AS s),"
    " extract(epoch FROM clock_timestamp())::float8,"
    " coalesce(sum(rows), 0), coalesce(sum(bytes), 0) FROM queue_counters"
)
# A lone caller's one row in one statement (two round trips with the commit, as a plain
# INSERT): its customer's lock, then the bound, then the id (drawn after both, when the row is
# formed). No row inserted means over the bound: the round path then raises or makes room.
_INSERT_ONE = (
    f"WITH locked AS (SELECT count(pg_advisory_xact_lock({PG_CUSTOMER_LOCK_CLASS},"
    " hashtext(%(key)s))) AS n),"
    " room AS (SELECT coalesce(sum(rows), 0) + 1 <= %(max_rows)s"
    " AND coalesce(sum(bytes), 0) + %(size)s <= %(max_bytes)s AS ok FROM queue_counters)"
    " INSERT INTO outbox"
    " (kind, customer_key, payload, size, created_at, receipt, boot_id, mono_at)"
    " SELECT %(kind)s, %(key)s, %(payload)s, %(size)s,"
    " extract(epoch FROM statement_timestamp()), %(receipt)s, %(boot)s::text, %(mono)s::float8"
    " FROM locked, room WHERE room.ok AND locked.n = 1 RETURNING id"
)
_LOCK_LEDGER = f"SELECT pg_advisory_xact_lock({PG_LEDGER_LOCK})"
_LOCK_SELECTED = (
    f"SELECT count(pg_advisory_xact_lock({PG_CUSTOMER_LOCK_CLASS}, h))"
    " FROM (SELECT DISTINCT hashtext(customer_key) AS h FROM ({}) AS k ORDER BY h) AS s"
)
#: Rows each agent_state counter is spread over (see state.read_state).
COUNTER_SLOTS = 16
# Into one of COUNTER_SLOTS rows per counter, chosen by the server backend: concurrent
# drainers' settles (each holds its row's lock to its commit) rarely meet on one row.
_ADD_TO_COUNTER = (
    "INSERT INTO agent_state (key, value)"
    f" VALUES (? || '{COUNTER_SLOT}' || mod(pg_backend_pid(), {COUNTER_SLOTS})::text,"
    " CAST(? AS text)) ON CONFLICT (key)"
    " DO UPDATE SET value = CAST(coalesce(CAST(agent_state.value AS bigint), 0)"
    " + CAST(excluded.value AS bigint) AS text)"
)


class PgCursor:
    """A psycopg cursor taking the store's `?` placeholders (and psycopg's own)."""

    __slots__ = ("_cur",)
    _translated: dict[str, str] = {}

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    @classmethod
    def _sql(cls, sql: str) -> str:
        text = cls._translated.get(sql)
        if text is None:
            text = cls._translated[sql] = sql.replace("?", "%s")
        return text

    def execute(self, sql: str, params: Any = None) -> PgCursor:
        self._cur.execute(self._sql(sql), params)
        return self

    def executemany(self, sql: str, seq: Any) -> None:
        rows = list(seq)
        if rows:
            self._cur.executemany(self._sql(sql), rows)

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cur.fetchall())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cur)

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)

    def close(self) -> None:
        self._cur.close()


class PostgresBackend(Backend):
    """A PostgreSQL database shared by hosts; see the module docstring."""

    name = POSTGRESQL
    add_to_counter_sql = _ADD_TO_COUNTER
    contains_sql = "strpos(lower(reason), lower(?)) > 0"
    # With the clock: every drain transaction begins with both (one round trip, not two).
    take_records_sql = (
        "WITH taken AS (DELETE FROM settling WHERE id IN"
        " (SELECT id FROM settling ORDER BY id FOR UPDATE SKIP LOCKED)"
        " RETURNING id, owner, outcome)"
        f" SELECT {_NOW}, t.id, t.owner, t.outcome"
        " FROM (SELECT 1) AS one LEFT JOIN taken AS t ON true"
    )
    # Half the claims and a quarter less server CPU per batch: with claims serialised (before
    # migration 0010), 4 drainers with 20 ms answers went from 2.35x to 2.6-2.7x one drainer;
    # with claims side by side one batch a claim did no better (server CPU per request
    # 7.1-8.0 ms against 6.6-7.2 ms with two, single runs).
    max_claim_batches = MAX_CLAIM_BATCHES
    # A forked child forgets its parent's connections without closing them (psycopg never
    # ends a connection from a process other than the one that opened it), so a statement
    # may be in flight across a fork. Without the guard, an enqueue no longer waits for the
    # drain's transaction in this process, which may wait for other hosts' locks (then
    # their claim lock; now a customer's lock): add_event's p90 with a drain running here
    # and another host draining, 20 ms -> 8 ms.
    fork_guard = False

    def __init__(self, engine: Any) -> None:
        import psycopg

        self._errors: tuple[type[BaseException], ...] = (psycopg.Error,)
        self.engine = engine
        self.where = shown_url(engine.url)
        self._writer: Any = None
        self._counted: tuple[int, int] | None = None  # read with the enqueue's locks

    def translate(self, exc: BaseException) -> OutboxError:
        return translate_pg_error(exc, self.where)

    def errors(self) -> tuple[type[BaseException], ...]:
        return self._errors

    @contextmanager
    def transaction(self, conn: Any) -> Iterator[Any]:
        driver = conn.driver_connection
        cur = PgCursor(driver.cursor())
        try:
            yield cur
            driver.commit()
        except BaseException as exc:
            self._rollback(driver)
            if isinstance(exc, self._errors):
                raise self.translate(exc) from exc
            raise
        finally:
            cur.close()

    @contextmanager
    def single_statement(self, conn: Any) -> Iterator[Any]:
        # Autocommit: each statement commits on its own. A settling record went out as
        # BEGIN, INSERT and COMMIT, three round trips between an answer and the next
        # request; with four drainers on a 2-core host each cost about 0.8 ms.
        driver = conn.driver_connection
        cur: PgCursor | None = None
        try:
            driver.autocommit = True
            cur = PgCursor(driver.cursor())
            yield cur
        except self._errors as exc:
            raise self.translate(exc) from exc
        finally:
            if cur is not None:
                cur.close()
            if not driver.closed:
                try:
                    driver.autocommit = False
                except self._errors:  # broken meanwhile: broken() tells the store
                    log.warning("could not leave autocommit on %s", self.where, exc_info=True)

    def _rollback(self, driver: Any) -> None:
        if driver.closed:
            return
        try:
            driver.rollback()
        except self._errors:
            log.warning("rollback failed on %s", self.where, exc_info=True)

    @contextmanager
    def reading(self, conn: Any) -> Iterator[Any]:
        driver = conn.driver_connection
        cur = PgCursor(driver.cursor())
        try:
            yield cur
        except self._errors as exc:
            raise self.translate(exc) from exc
        finally:
            cur.close()
            self._rollback(driver)

    def prepare_drain(self, conn: Any) -> None:
        # As on SQLite (synchronous=NORMAL): leases and settlements need no flush to disk of
        # their own; a crash of the server can only undo some (rows re-sent, deduplicated by
        # their fixed timestamps), never an enqueue (the writer commits synchronously). It
        # also keeps short the hold of the heads a claim locks: held until the commit.
        # The claim's plan settings are the session's too (see pg_claim.CLAIM_SETTINGS).
        driver = conn.driver_connection
        driver.execute("SET synchronous_commit = off")
        for setting in CLAIM_SETTINGS:
            driver.execute(setting)
        driver.commit()

    def broken(self, conn: Any) -> bool:
        driver = conn.driver_connection
        return driver is None or bool(driver.closed) or bool(getattr(driver, "broken", False))

    def clock(self, cur: Any, now: float) -> float:
        if not self.db_clock:
            return now
        return float(cur.execute(_NOW_SQL).fetchone()[0])

    # -- enqueue -------------------------------------------------------------------------------

    def write_round(
        self, store: WritesRounds, requests: Sequence[Request], now: float
    ) -> list[BaseException | None]:
        if self._writer is None:
            self._writer = self.engine.raw_connection()
        try:
            with self.transaction(self._writer) as cur:
                first = requests[0]
                if any(isinstance(r, KeyedCommands) for r in requests):
                    self.lock_ledger(cur)  # before the customers' locks (see lock_ledger)
                elif (
                    len(requests) == 1
                    and not isinstance(first, KeyedCommands)
                    and len(first) == 1
                    and self._insert_one(cur, store, first[0])
                ):
                    return [None]
                keys = sorted({c.customer_key for r in requests for c in commands_of(r)})
                _, stamped, rows, size = cur.execute(_LOCK_KEYS, (keys,)).fetchone()
                self._counted = (int(rows), int(size))  # insert_round's first counters()
                return store.insert_round(cur, requests, float(stamped) if self.db_clock else now)
        except OutboxError:
            if self.broken(self._writer):  # the next round reconnects
                self._writer.invalidate()
                self._writer = None
            raise

    def _insert_one(self, cur: Any, store: WritesRounds, c: NewCommand) -> bool:
        """The lone caller's row, if it fits the bound (see _INSERT_ONE)."""
        params = {
            "kind": c.kind,
            "key": c.customer_key,
            "payload": c.payload,
            "size": c.size,
            "receipt": int(c.receipt),
            "boot": c.boot,
            "mono": c.mono,
            "max_rows": store.max_rows,
            "max_bytes": store.max_bytes,
        }
        row = cur.execute(_INSERT_ONE, params).fetchone()
        if row is None:
            return False
        c.id = int(row[0]) if c.receipt else 0
        return True

    def insert(self, cur: Any, commands: Sequence[NewCommand], now: float) -> None:
        receipt = any(c.receipt for c in commands)
        columns = (
            [c.kind for c in commands],
            [c.customer_key for c in commands],
            [c.payload for c in commands],
            [c.size for c in commands],
            [int(c.receipt) for c in commands],
            [c.boot for c in commands],
            [c.mono for c in commands],
        )
        cur.execute(_INSERT + " RETURNING id" if receipt else _INSERT, columns)
        if receipt:
            ids = sorted(int(row[0]) for row in cur.fetchall())
            for command, row_id in zip(commands, ids, strict=True):
                command.id = row_id

    def insert_id(self, cur: Any, sql: str, params: Sequence[Any]) -> int:
        return int(cur.execute(sql + " RETURNING id", params).fetchone()[0])

    def lock_ledger(self, cur: Any) -> None:
        """The ledger's lock, taken before any customer's lock in a transaction (enqueues
        take the customers' locks after it; compaction and pruning take no other), so the
        locks are always taken in one order and never deadlock."""
        cur.execute(_LOCK_LEDGER)

    def queued(self, cur: Any) -> tuple[int, int]:
        rows, size = cur.execute(_COUNTERS).fetchone()
        return int(rows), int(size)

    def counters(self, cur: Any) -> tuple[int, int]:
        counted, self._counted = self._counted, None  # only the writer's thread gets here
        return counted if counted is not None else self.queued(cur)

    def close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = None

    def forget_writer(self) -> None:
        self._writer = None

    # -- drain ---------------------------------------------------------------------------------

    pick = staticmethod(pick_postgresql)

    def ids_in(self, column: str, ids: Sequence[int]) -> tuple[str, list[Any]]:
        """`column = ANY(?)`, one parameter: psycopg keeps how it converted a statement of at
        most 50 parameters, but parses one with a batch's ids (100 with two batches a claim)
        again each time, 0.28 ms, twice per settle (against 0.008 ms). The array goes as its
        text form: psycopg's list dumper looks at every element, 180 us for 100 ids against
        27 us for the string."""
        return f"{column} = ANY(CAST(? AS bigint[]))", [
            "{" + ",".join(str(int(i)) for i in ids) + "}"
        ]

    def lock_customers(self, cur: Any, select_keys: str, params: Sequence[Any]) -> None:
        cur.execute(_LOCK_SELECTED.format(select_keys), list(params))
