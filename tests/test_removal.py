"""Deleting outbox rows keeps the queue counters and each customer's queue flag exact.

SQLite has no delete triggers since revision 0009 (outbox/removal.py does their work in the
deleting transaction); PostgreSQL keeps statement-level triggers. Either way, after any mix
of deliveries, dead letters, retries, releases, exports, drop_oldest evictions and dead letters
put back: queue_counters holds the outbox's rows and bytes, and is_head is set on exactly the
oldest row of each customer (the claim walks those flags: a customer without one would never
be claimed again).
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
from conftest import both_backends
from sqlalchemy import Engine

from tracker_agent.exceptions import OutboxFullError
from tracker_agent.outbox import removal
from tracker_agent.outbox.engine import open_outbox
from tracker_agent.outbox.store import NewCommand, OutboxStore, Settlement

NOW = 1_800_000_000.0
LEASE = 60.0
CUSTOMERS = 7


def cmd(customer: int, n: int) -> NewCommand:
    key = f'{{"registered":"c{customer}"}}'
    payload = f'{{"customer_ids":{key},"event_type":"e","properties":{{"n":{n}}}}}'
    return NewCommand("customers/events", key, payload + " " * (n % 5))


def books(
    engine: Engine,
) -> tuple[tuple[int, int], tuple[int, int], dict[str, int], dict[str, int]]:
    """(counted rows and bytes, actual rows and bytes, flagged row per customer, oldest row
    per customer)."""
    with engine.connect() as conn:
        q = conn.exec_driver_sql
        counted = q("SELECT sum(rows), sum(bytes) FROM queue_counters").one()
        actual = q("SELECT count(*), coalesce(sum(size), 0) FROM outbox").one()
        flagged = dict(q("SELECT customer_key, id FROM outbox WHERE is_head > 0").all())
        oldest = dict(q("SELECT customer_key, min(id) FROM outbox GROUP BY customer_key").all())
    counted_pair = (int(counted[0] or 0), int(counted[1] or 0))
    return counted_pair, (int(actual[0]), int(actual[1])), flagged, oldest


def assert_books_exact(engine: Engine, where: str) -> None:
    counted, actual, flagged, oldest = books(engine)
    assert counted == actual, where
    assert flagged == oldest, where


@both_backends
def test_every_way_out_of_the_outbox_keeps_counters_and_queue_flags_exact(database_url):
    engine = open_outbox(database_url)
    store = OutboxStore(
        engine,
        max_rows=20,
        max_bytes=10**7,
        overflow="drop_oldest",
        now=lambda: NOW,
        db_clock=False,
    )
    rng = random.Random(20261203)
    n = 0
    try:
        for step in range(160):
            op = rng.choice(("enqueue",) * 4 + ("settle", "settle", "record", "export", "retry"))
            if op == "enqueue":  # past max_rows: drop_oldest deletes the oldest rows not leased
                batch = [cmd(rng.randrange(CUSTOMERS), n + i) for i in range(rng.randint(1, 6))]
                n += len(batch)
                try:
                    store.enqueue(batch)
                except OutboxFullError:
                    pass  # every row leased: nothing to drop, nothing written
            elif op in ("settle", "record"):
                owner = rng.choice("ab")
                rows = store.claim(
                    owner, limit=rng.randint(1, 12), max_bytes=10**7, lease_seconds=LEASE, now=NOW
                )
                outcome = Settlement(retry_at=NOW - 1, error="later")  # due again at once
                for row in rows:
                    fate = rng.choice(("delivered", "delivered", "dead", "retry", "release"))
                    if fate == "dead":
                        outcome.dead.append((row.id, "refused", 400))
                    else:
                        getattr(outcome, fate).append(row.id)
                if op == "record":  # applied by the next drain transaction, as in the drain
                    store.record_settlement(owner, outcome, NOW)
                else:
                    store.settle(owner, outcome, NOW)
            elif op == "export":
                rows = store.lease_for_export("x", 0, rng.randint(1, 8), NOW + LEASE)
                store.delete_exported("x", [r.id for r in rows if rng.random() < 0.7])
                store.release_exported("x", [r.id for r in rows])
            else:  # dead letters back into the queue, ahead of their customers' later rows
                store.retry_dead()
            store.settle("a", Settlement(), NOW)  # applies any recorded outcome
            assert_books_exact(engine, f"after step {step}: {op}")
        assert store.stats()["dropped"] > 0  # drop_oldest did run
        assert books(engine)[1][0] > 0
    finally:
        store.close()
        engine.dispose()


def _raw_outbox(path: Path) -> sqlite3.Connection:
    open_outbox(f"sqlite:///{path}").dispose()
    conn = sqlite3.connect(path, isolation_level=None)
    return conn


def _insert(conn: sqlite3.Connection, customers: list[str]) -> None:
    conn.executemany(
        "INSERT INTO outbox (kind, customer_key, payload, size, created_at)"
        " VALUES ('customers/events', ?, '{}', 3, 0)",
        [(key,) for key in customers],
    )


def test_delete_rows_hands_each_flag_to_the_oldest_remaining_row(tmp_path):
    conn = _raw_outbox(tmp_path / "outbox.db")
    try:
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        _insert(conn, ["a", "b", "a", "b", "a", "c"])  # ids 1..6
        # a loses its two oldest rows, b all of its rows, c nothing; 99 does not exist.
        assert removal.delete_rows(cur, "id IN (?, ?, ?, ?, ?)", (1, 2, 3, 4, 99)) == 4
        cur.execute("COMMIT")
        flagged = cur.execute("SELECT customer_key, id FROM outbox WHERE is_head = 1").fetchall()
        assert sorted(flagged) == [("a", 5), ("c", 6)]
        assert cur.execute("SELECT rows, bytes FROM queue_counters").fetchone() == (2, 6)
        assert removal.delete_rows(cur, "id = ?", (42,)) == 0  # nothing to count down
        assert cur.execute("SELECT rows, bytes FROM queue_counters").fetchone() == (2, 6)
    finally:
        conn.close()


def test_a_delete_that_fails_midway_leaves_nothing_counted_down(tmp_path):
    conn = _raw_outbox(tmp_path / "outbox.db")
    try:
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        _insert(conn, ["a", "a"])
        cur.execute("COMMIT")
        cur.execute("BEGIN IMMEDIATE")
        removal.delete_rows(cur, "id = ?", (1,))
        cur.execute("ROLLBACK")  # the deleting transaction failed after the delete
        assert cur.execute("SELECT rows FROM queue_counters").fetchone() == (2,)
        assert cur.execute("SELECT id FROM outbox WHERE is_head = 1").fetchall() == [(1,)]
    finally:
        conn.close()


def test_handing_on_many_customers_flags_takes_several_statements(tmp_path):
    conn = _raw_outbox(tmp_path / "outbox.db")
    customers = removal.HANDOVER_CHUNK + 7
    try:
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        _insert(conn, [f"k{i}" for i in range(customers)] * 2)
        first = ",".join(str(i) for i in range(1, customers + 1))
        assert removal.delete_rows(cur, f"id IN ({first})", ()) == customers
        cur.execute("COMMIT")
        flagged = cur.execute("SELECT min(id), count(*) FROM outbox WHERE is_head = 1").fetchone()
        assert flagged == (customers + 1, customers)
    finally:
        conn.close()


def test_handing_on_the_flag_costs_the_same_behind_a_long_queue(tmp_path):
    # Deterministic (SQLite VM steps, not time): deleting a customer's oldest row hands its
    # flag on with one index seek, whether 10 or 20,000 rows of that customer are queued.
    def steps_for(queued: int, name: str) -> int:
        conn = _raw_outbox(tmp_path / f"{name}.db")
        try:
            cur = conn.cursor()
            cur.execute("BEGIN")
            _insert(conn, ["long"] * queued)
            cur.execute("COMMIT")
            count = 0

            def tick() -> int:
                nonlocal count
                count += 1
                return 0

            cur.execute("BEGIN IMMEDIATE")
            conn.set_progress_handler(tick, 1)
            assert removal.delete_rows(cur, "id = ?", (1,)) == 1
            conn.set_progress_handler(None, 1)
            cur.execute("COMMIT")
            assert cur.execute("SELECT id FROM outbox WHERE is_head = 1").fetchall() == [(2,)]
            return count
        finally:
            conn.close()

    small, large = steps_for(10, "small"), steps_for(20_000, "large")
    assert large <= small * 1.5, (small, large)


def test_the_outbox_has_no_delete_triggers_on_sqlite(tmp_path):
    conn = _raw_outbox(tmp_path / "outbox.db")
    try:
        found = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'outbox'"
            " AND sql LIKE '%AFTER DELETE%'"
        ).fetchall()
    finally:
        conn.close()
    assert found == []


@pytest.mark.parametrize("rows", [1, 3])
def test_the_drain_delete_is_one_statement_plus_the_books(tmp_path, rows):
    # What the trigger-free delete runs: read, delete, count down, hand on (if a flag went).
    conn = _raw_outbox(tmp_path / "outbox.db")
    statements: list[str] = []
    try:
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        _insert(conn, ["a"] * 3)
        conn.set_trace_callback(statements.append)
        marks = ",".join("?" * rows)
        removal.delete_rows(cur, f"id IN ({marks})", tuple(range(1, rows + 1)))
        conn.set_trace_callback(None)
        cur.execute("COMMIT")
    finally:
        conn.close()
    verbs = [s.split()[0] for s in statements]
    assert verbs == ["SELECT", "DELETE", "UPDATE", "UPDATE"]
