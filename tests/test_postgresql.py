"""The outbox on PostgreSQL: what only a shared database across hosts can break. Per-customer
order with concurrent drainers and concurrent enqueuers (each its own engine, as hosts would
be), migrations raced by many hosts, the schema at head, errors by SQLSTATE, secrets in URLs.
The delivery contract itself runs on both databases in the contract suites (`database_url`).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import defaultdict

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import fresh_postgres_url, make_agent, wait_for

try:
    import psycopg
except ImportError:  # the `postgresql` extra is not installed
    if os.environ.get("CI", "").lower() == "true":
        raise
    pytest.skip("PostgreSQL tests need psycopg 3 (the postgresql extra)", allow_module_level=True)

from tracker_agent import DatabaseUnavailableError, OutboxError
from tracker_agent.constants import PG_CUSTOMER_LOCK_CLASS
from tracker_agent.outbox import schema
from tracker_agent.outbox.engine import open_outbox
from tracker_agent.outbox.leases import ClaimedRow, Settlement
from tracker_agent.outbox.pg_engine import pg_revision, pg_url, shown_url
from tracker_agent.outbox.postgresql import PgCursor, PostgresBackend
from tracker_agent.outbox.revisions import HEAD_REVISION
from tracker_agent.outbox.store import NewCommand, OutboxStore

CUSTOMERS = 25


@pytest.fixture
def url(postgres_server) -> str:
    return fresh_postgres_url(postgres_server)


def open_store(url: str, **bounds) -> OutboxStore:
    bounds.setdefault("max_rows", 1_000_000)
    bounds.setdefault("max_bytes", 10**9)
    return OutboxStore(open_outbox(url), **bounds)


def close_store(store: OutboxStore) -> None:
    store.close()
    store.engine.dispose()


def command(customer: str, n: int) -> NewCommand:
    return NewCommand("customers/events", json.dumps({"c": customer}), json.dumps({"n": n}))


def customer_of(row) -> str:
    return json.loads(row.payload)["c"] if "c" in row.payload else ""


def test_concurrent_drainers_on_separate_engines_never_break_a_customers_order(url):
    stores = [open_store(url) for _ in range(6)]
    per_customer = 60
    rows = [command(f"c{i % CUSTOMERS}", i) for i in range(CUSTOMERS * per_customer)]
    for start in range(0, len(rows), 200):
        stores[0].enqueue(rows[start : start + 200])
    delivered: dict[str, list[int]] = defaultdict(list)  # customer -> ids, in delivery order
    log_lock = threading.Lock()
    failures: list[BaseException] = []

    def drain(store: OutboxStore, seed: int) -> None:
        rng = random.Random(seed)
        owner = f"drainer-{seed}"
        try:
            while True:
                claimed = store.claim(
                    owner, limit=rng.randint(1, 50), max_bytes=10**6, lease_seconds=30, now=0
                )
                if not claimed:
                    if store.stats()["pending"] + store.stats()["in_flight"] == 0:
                        return
                    time.sleep(0.005)
                    continue
                # A failed send now and then: its rows wait for a retry, later rows must wait.
                fail = rng.random() < 0.1
                if not fail:
                    with log_lock:
                        for row in claimed:
                            key = json.loads(row.payload)["n"] % CUSTOMERS
                            delivered[f"c{key}"].append(row.id)
                outcome = (
                    Settlement(retry=[r.id for r in claimed], retry_at=time.time() + 0.02)
                    if fail
                    else Settlement(delivered=[r.id for r in claimed])
                )
                store.settle(owner, outcome, time.time())
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=drain, args=(s, i)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for s in stores:
        close_store(s)
    assert not failures
    assert sum(len(ids) for ids in delivered.values()) == len(rows)
    violations = [c for c, ids in delivered.items() if ids != sorted(ids)]
    assert violations == []
    assert all(len(ids) == len(set(ids)) == per_customer for ids in delivered.values())


def test_ids_follow_each_customers_commit_order_across_concurrent_enqueuers(url):
    writers = [open_store(url) for _ in range(4)]
    drainer = open_store(url)
    stop = threading.Event()
    seen: dict[str, list[int]] = defaultdict(list)
    failures: list[BaseException] = []

    def write(store: OutboxStore, me: int) -> None:
        try:
            for n in range(150):  # every writer writes to the same two customers
                store.enqueue([command(f"shared{n % 2}", me * 1000 + n)])
        except BaseException as exc:
            failures.append(exc)

    def drain() -> None:
        try:
            while not stop.is_set() or drainer.stats()["pending"]:
                claimed = drainer.claim("d", limit=50, max_bytes=10**6, lease_seconds=30, now=0)
                for row in claimed:
                    seen[json.loads(row.payload)["n"] % 2 and "shared1" or "shared0"].append(row.id)
                drainer.settle("d", Settlement(delivered=[r.id for r in claimed]), time.time())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(s, i)) for i, s in enumerate(writers)]
    reader = threading.Thread(target=drain)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stop.set()
    reader.join(120)
    for s in [*writers, drainer]:
        close_store(s)
    assert not failures
    assert sum(len(v) for v in seen.values()) == 4 * 150
    # A claim never met an id lower than one it had already taken for that customer.
    assert all(ids == sorted(ids) for ids in seen.values())


def test_many_hosts_starting_at_once_migrate_once(url):
    errors: list[BaseException] = []
    engines = []

    def start() -> None:
        try:
            engines.append(open_outbox(url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert [pg_revision(e) for e in engines] == [HEAD_REVISION] * 5
    for e in engines:
        e.dispose()


def test_database_at_head_matches_schema_metadata_on_postgresql(url):
    engine = open_outbox(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(context, schema.metadata) == []
            ids = conn.exec_driver_sql(
                "SELECT table_name, data_type, is_identity FROM information_schema.columns"
                " WHERE column_name = 'id' AND table_name IN"
                " ('outbox', 'dead_letters', 'receipts', 'import_ledger_log')"
                " ORDER BY table_name"
            ).all()
            (key_type,) = conn.exec_driver_sql(
                "SELECT data_type FROM information_schema.columns"
                " WHERE table_name = 'import_ledger' AND column_name = 'key'"
            ).one()
    finally:
        engine.dispose()
    assert ids == [
        ("dead_letters", "bigint", "NO"),
        ("import_ledger_log", "bigint", "YES"),
        ("outbox", "bigint", "YES"),
        ("receipts", "bigint", "NO"),
    ]
    assert key_type == "bytea"


def test_counters_are_spread_over_rows_and_summed_exactly(url):
    stores = [open_store(url) for _ in range(4)]
    threads = [
        threading.Thread(target=lambda s=s: [s.enqueue([command("x", n)]) for n in range(25)])
        for s in stores
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stats = stores[0].stats()
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        used = conn.execute("SELECT count(*) FROM queue_counters WHERE rows <> 0").fetchone()[0]
        actual = conn.execute("SELECT count(*), sum(size) FROM outbox").fetchone()
    for s in stores:
        close_store(s)
    assert (stats["pending"], stats["bytes"]) == (actual[0], actual[1]) == (100, actual[1])
    assert used >= 2  # four connections, four backend pids: not one hot row


def test_the_bound_holds_on_postgresql(url):
    store = open_store(url, max_rows=3)
    try:
        store.enqueue([command("a", n) for n in range(3)])
        with pytest.raises(OutboxError, match="full"):
            store.enqueue([command("a", 3)])
        assert store.stats()["pending"] == 3
    finally:
        close_store(store)


def test_a_server_that_is_not_there_is_database_unavailable_and_hides_the_password():
    url = "postgresql://tracker:hunter2@127.0.0.1:9/outbox"
    with pytest.raises(DatabaseUnavailableError) as caught:
        open_outbox(url)
    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)
    assert "hunter2" not in shown_url(url)


def test_both_url_spellings_use_psycopg_3():
    assert pg_url("postgresql://u@h/d").drivername == "postgresql+psycopg"
    assert pg_url("postgresql+psycopg://u@h/d").drivername == "postgresql+psycopg"
    with pytest.raises(Exception, match="psycopg 3"):
        pg_url("postgresql+psycopg2://u@h/d")


def test_a_connection_killed_under_the_store_fails_one_call_then_reconnects(url):
    store = open_store(url)
    try:
        store.enqueue([command("a", 0)])
        store.claim("d", limit=1, max_bytes=10**6, lease_seconds=30, now=0)
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'tracker-agent' AND pid <> pg_backend_pid()"
            )
        with pytest.raises(DatabaseUnavailableError):
            store.enqueue([command("a", 1)])
        store.enqueue([command("a", 2)])  # a new connection
        with pytest.raises(DatabaseUnavailableError):
            store.release_all("d")
        assert store.release_all("d") == 1
        assert store.stats()["pending"] == 2
    finally:
        close_store(store)


def test_leases_use_the_databases_clock_not_the_hosts(url):
    skewed = OutboxStore(open_outbox(url), max_rows=100, max_bytes=10**6, now=lambda: 0.0)
    honest = open_store(url)
    try:
        skewed.enqueue([command("a", 0)])
        # A host whose clock says 1970 leases for 30 s: another host must still see the lease.
        assert skewed.claim("slow", limit=1, max_bytes=10**6, lease_seconds=30, now=0.0)
        taken = honest.claim(
            "other", limit=1, max_bytes=10**6, lease_seconds=30, now=time.time() + 3600
        )
        assert taken == []
        assert honest.stats()["in_flight"] == 1
    finally:
        close_store(skewed)
        close_store(honest)


def test_a_backoff_holds_back_only_the_host_that_met_it(url):
    from tracker_agent.outbox.state import STATE_BACKOFF_UNTIL, STATE_FAILURES

    here = OutboxStore(open_outbox(url), max_rows=100, max_bytes=10**6, host="host-a")
    there = OutboxStore(open_outbox(url), max_rows=100, max_bytes=10**6, host="host-b")

    def not_backing_off(state) -> bool:
        return float(state.get(STATE_BACKOFF_UNTIL) or 0) <= time.time()

    terms = {"limit": 50, "max_bytes": 10**6, "lease_seconds": 30, "now": time.time()}
    try:
        here.enqueue([command("a", 0), command("b", 1)])
        state, rows = here.claim_if("a1", **terms, may_claim=not_backing_off)
        throttled = Settlement(
            release=[r.id for r in rows],
            state={STATE_BACKOFF_UNTIL: time.time() + 3600, STATE_FAILURES: 1},
        )
        here.settle("a1", throttled, time.time())  # host a met a 429
        state, rows = here.claim_if("a2", **terms, may_claim=not_backing_off)
        assert rows == [] and state[STATE_FAILURES] == 1
        state, rows = there.claim_if("b1", **terms, may_claim=not_backing_off)
        assert len(rows) == 2 and not state[STATE_FAILURES]
        assert here.stats()["next_attempt_at"] is not None  # status shows the latest backoff
    finally:
        close_store(here)
        close_store(there)


def test_an_agent_waits_out_lost_connections_and_never_shows_the_password(fake, postgres_server):
    url = fresh_postgres_url(postgres_server)
    with_password = url.replace("postgres@", "postgres:hunter2@")  # trust auth ignores it
    with make_agent(fake, with_password, drain=True) as agent:
        assert "hunter2" not in repr(agent)
        agent.tracking.add_event({"registered": "a"}, "first", {})
        assert wait_for(lambda: len(fake.events) == 1)
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'tracker-agent'"
            )
        with pytest.raises(DatabaseUnavailableError):  # the enqueue's connection was lost
            agent.tracking.add_event({"registered": "a"}, "lost", {})
        agent.tracking.add_event({"registered": "a"}, "second", {})  # a new connection
        assert wait_for(lambda: len(fake.events) == 2)  # the drain reconnected on its own
    assert [e["event_type"] for e in fake.events] == ["first", "second"]


def test_a_claim_skips_a_record_another_drainer_is_applying_instead_of_waiting(url):
    """Two drainers each applying its own recorded outcome while reading the other's used to
    wait for each other until the server broke the deadlock, failing one of them."""
    a, b = open_store(url), open_store(url)
    try:
        a.enqueue([command(f"c{i}", i) for i in range(4)])
        terms = {"limit": 1, "max_bytes": 10**6, "lease_seconds": 30}
        mine = a.claim("a", now=0, **terms)
        theirs = b.claim("b", now=0, **terms)
        rec_a = a.record_settlement("a", Settlement(delivered=[r.id for r in mine]), 0)
        rec_b = b.record_settlement("b", Settlement(delivered=[r.id for r in theirs]), 0)
        done = threading.Event()
        errors: list[BaseException] = []

        def other() -> None:
            try:
                outcome = Settlement(delivered=[r.id for r in theirs])
                b.settle_and_claim("b", outcome, 0, recorded=rec_b, **terms)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                done.set()

        with a._drain_connection() as conn, a.backend.transaction(conn) as cur:
            cur.execute("DELETE FROM settling WHERE id = ?", (rec_a,))  # a applies its own...
            thread = threading.Thread(target=other)
            thread.start()
            # ...and b, meanwhile, claims without waiting for a's transaction to end.
            assert done.wait(10), "b's claim waited for a's record"
        thread.join()
        assert errors == []
    finally:
        close_store(a)
        close_store(b)


def test_a_drainer_never_waits_for_its_own_record_while_another_claim_applies_it(url):
    """A claim takes every record no other transaction holds, the owner's own included.
    Its owner then looked its record up again and waited for whichever claim held it to
    end: with four drainers, up to a whole other claim (about 40 ms) on each batch."""
    a, b = open_store(url), open_store(url)
    try:
        a.enqueue([command(f"c{i}", i) for i in range(4)])
        terms = {"limit": 1, "max_bytes": 10**6, "lease_seconds": 30}
        mine = a.claim("a", now=0, **terms)
        outcome = Settlement(delivered=[r.id for r in mine])
        recorded = a.record_settlement("a", outcome, 0)
        done = threading.Event()
        answers: list[int] = []
        errors: list[BaseException] = []

        def own_claim() -> None:
            try:
                delivered, _, _ = a.settle_and_claim("a", outcome, 0, recorded=recorded, **terms)
                answers.append(delivered)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            finally:
                done.set()

        with b._drain_connection() as conn, b.backend.transaction(conn) as cur:
            cur.execute("SELECT id FROM settling WHERE id = ? FOR UPDATE", (recorded,))
            thread = threading.Thread(target=own_claim)
            thread.start()
            # b holds a's record (as a claim applying it does) until this block ends.
            assert done.wait(10), "a's claim waited for the transaction holding its record"
        thread.join()
        assert (errors, answers) == ([], [1])  # counted as recorded, whoever applies it
    finally:
        close_store(a)
        close_store(b)


def test_a_record_is_one_autocommitted_statement_and_the_drain_connection_stays_transactional(
    url,
):
    store = open_store(url)
    try:
        store.enqueue([command("c", i) for i in range(2)])
        rows = store.claim("me", now=0, limit=2, max_bytes=10**6, lease_seconds=30)
        store.record_settlement("me", Settlement(delivered=[r.id for r in rows]), 0)
        with psycopg.connect(url.replace("+psycopg", "")) as other:  # committed: seen
            assert other.execute("SELECT count(*) FROM settling").fetchone() == (1,)
        with store._drain_connection() as conn:
            assert conn.driver_connection.autocommit is False  # claims stay transactions
        store.claim("me", now=0, limit=2, max_bytes=10**6, lease_seconds=30)  # applies it
        assert store.stats(now=0)["delivered"] == 2
    finally:
        close_store(store)


def test_a_drain_transaction_reads_the_clock_with_the_records_in_one_statement(url, monkeypatch):
    """settle_and_claim begins with one statement for the database's clock and the records
    (not a clock query, then the records): and that clock is the one the lease is stamped
    with, not the caller's `now`."""
    store = open_store(url)
    try:
        store.enqueue([command("c", i) for i in range(4)])
        rows = store.claim("me", now=0, limit=2, max_bytes=10**6, lease_seconds=30)
        recorded = store.record_settlement("me", Settlement(delivered=[r.id for r in rows]), 0)
        seen: list[str] = []
        execute = PgCursor.execute

        def spy(self: PgCursor, sql: str, params: object = None) -> PgCursor:
            seen.append(sql)
            return execute(self, sql, params)

        monkeypatch.setattr(PgCursor, "execute", spy)
        delivered, _, more = store.settle_and_claim(
            "me",
            Settlement(delivered=[r.id for r in rows]),
            0,
            limit=2,
            max_bytes=10**6,
            lease_seconds=30,
            recorded=recorded,
        )
        monkeypatch.undo()
        assert (delivered, len(more)) == (2, 2)
        assert seen[0] == PostgresBackend.take_records_sql
        assert "clock_timestamp()" not in " ".join(seen[1:])  # read once, with the records
        with psycopg.connect(url.replace("+psycopg", "")) as other:
            now, expires = other.execute(
                "SELECT extract(epoch FROM clock_timestamp()), max(lease_expires_at) FROM outbox"
            ).fetchone()
        assert now + 20 < expires <= now + 30  # the database's clock, not now=0
        assert store.stats(now=0)["delivered"] == 2
    finally:
        close_store(store)


def test_a_record_on_a_lost_connection_fails_clearly_and_the_next_one_reconnects(url):
    store = open_store(url)
    try:
        store.enqueue([command("c", i) for i in range(2)])
        rows = store.claim("me", now=0, limit=1, max_bytes=10**6, lease_seconds=30)
        with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'tracker-agent'"
            )
        outcome = Settlement(delivered=[r.id for r in rows])
        with pytest.raises(DatabaseUnavailableError):
            store.record_settlement("me", outcome, 0)
        recorded = store.record_settlement("me", outcome, 0)  # a new connection
        delivered, _, _ = store.settle_and_claim(
            "me", outcome, 0, recorded=recorded, limit=1, max_bytes=10**6, lease_seconds=30
        )
        assert delivered == 1 and store.stats(now=0)["delivered"] == 1
    finally:
        close_store(store)


def test_drainers_recording_outcomes_concurrently_deliver_each_row_once_in_order(url):
    stores = [open_store(url) for _ in range(4)]
    rows = [
        NewCommand("customers/events", json.dumps({"c": c}), json.dumps({"c": c, "n": i}))
        for i in range(CUSTOMERS * 40)
        for c in [f"c{i % CUSTOMERS}"]
    ]
    stores[0].enqueue(rows)
    delivered: list[tuple[str, int]] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def drain(store: OutboxStore, owner: str) -> None:
        terms = {"limit": 20, "max_bytes": 10**6, "lease_seconds": 30}
        try:
            batch = store.claim(owner, now=0, **terms)
            while batch:
                with lock:
                    delivered.extend((customer_of(r), r.id) for r in batch)
                outcome = Settlement(delivered=[r.id for r in batch])
                recorded = store.record_settlement(owner, outcome, 0)
                _, _, batch = store.settle_and_claim(
                    owner, outcome, 0, recorded=recorded, follow_own=True, **terms
                )
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=drain, args=(s, f"d{k}")) for k, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert failures == []
        assert sorted(i for _, i in delivered) == sorted(set(i for _, i in delivered))
        assert len(delivered) == len(rows)
        by_customer: dict[str, list[int]] = defaultdict(list)
        for customer, row_id in delivered:
            by_customer[customer].append(row_id)
        disorder = {c: ids for c, ids in by_customer.items() if ids != sorted(ids)}
        assert disorder == {}
        assert stores[0].stats(now=0)["delivered"] == len(rows)
    finally:
        for store in stores:
            close_store(store)


def test_concurrent_settles_add_to_the_delivered_count_without_waiting_on_one_row(url):
    """The count is spread over rows by server backend: a drainer whose settle is open (its
    rows' locks held to the commit) does not hold up another drainer's."""
    from tracker_agent.outbox.postgresql import _ADD_TO_COUNTER, COUNTER_SLOTS, PgCursor

    store = open_store(url)
    plain = url.replace("+psycopg", "")
    conns = [psycopg.connect(plain)]
    while True:  # two sessions in different slots (backend pids differ mod COUNTER_SLOTS)
        conn = psycopg.connect(plain)
        if conn.info.backend_pid % COUNTER_SLOTS != conns[0].info.backend_pid % COUNTER_SLOTS:
            conns.append(conn)
            break
        conn.close()
    try:
        first, second = (PgCursor(c.cursor()) for c in conns)
        first.execute(_ADD_TO_COUNTER, ("delivered_total", 50))  # open, not committed
        second.execute("SET LOCAL lock_timeout = '2s'")
        second.execute(_ADD_TO_COUNTER, ("delivered_total", 20))  # no wait for the first
        for conn in reversed(conns):
            conn.commit()
        assert store.stats()["delivered"] == 70
    finally:
        for conn in conns:
            conn.close()
        close_store(store)


@pytest.mark.parametrize(
    ("customers", "most"),
    [
        # Few customers, many rows each: the k-th by start yields at most 50 - k + 1.
        # (EXPLAIN gives rows per loop as a rounded average: 25.5 = 1,275 / 50 shows as 26.)
        (100, 50 * 26),
        # Many interleaved customers: nothing past the 50th start, one entry each.
        (1000, 50),
    ],
)
def test_a_claim_reads_a_bounded_number_of_index_entries_whatever_the_customers(
    url, customers, most
):
    """Counted, not timed: the claim's per-customer scans of a claim of 50 read at most
    50 x 51 / 2 entries with few customers, not 50 per customer (2,500 here; 5,900 once with
    the customers a drain passes), and about one per customer with many (the limit-th start
    bounds every id taken)."""
    from tracker_agent.outbox.leases import NO_STOP
    from tracker_agent.outbox.pg_claim import PG_CLAIM_SQL

    store = open_store(url)
    try:
        rows = 6000 // customers
        store.enqueue([command(f"c{k:04d}", n) for n in range(rows) for k in range(customers)])
    finally:
        close_store(store)
    params = {
        "now": time.time(), "limit": 50, "no_stop": NO_STOP, "follow": None,
        "max_bytes": 10**7, "owner": "drainer", "expires": time.time() + 60,
    }  # fmt: skip
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        (plan,) = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + PG_CLAIM_SQL, params).fetchone()
        conn.rollback()  # EXPLAIN ANALYZE ran the lease UPDATE too

    def scans(node, inside_picked=False):
        inside_picked = inside_picked or node.get("Subplan Name") == "CTE picked"
        if inside_picked and node.get("Index Name") == "ix_outbox_customer":
            yield node["Actual Rows"] * node["Actual Loops"]
        for child in node.get("Plans", []):
            yield from scans(child, inside_picked)

    read = sum(scans(plan[0]["Plan"]))
    assert 50 <= read <= most, read


def _heads(conn) -> dict[str, tuple[int, ...]]:
    """customer -> the ids flagged as its head, and its oldest id first."""
    rows = conn.execute(
        "SELECT customer_key, min(id), array_agg(id ORDER BY id) FILTER (WHERE is_head > 0)"
        " FROM outbox GROUP BY customer_key"
    ).fetchall()
    return {key: (oldest, *(flagged or ())) for key, oldest, flagged in rows}


def test_a_delete_hands_the_queue_flags_on_in_one_trigger_run(url):
    """Schema 0008: deleting the heads of 50 customers runs the trigger's body once (it ran
    50 times per row before), and every customer left still has exactly its oldest row
    flagged: customers whose head went, a customer whose every row went, rows that were no
    head. Downgrading to 0007 and back keeps the same flags."""
    from alembic import command as alembic_command

    from tracker_agent.outbox.revisions import alembic_config

    store = open_store(url)
    try:
        store.enqueue([command(f"c{k:02d}", n) for n in range(4) for k in range(60)])
    finally:
        close_store(store)
    plain = url.replace("+psycopg", "")
    with psycopg.connect(plain) as conn:
        conn.execute("SET track_functions = 'pl'")
        heads = [r[0] for r in conn.execute("SELECT id FROM outbox WHERE is_head = 1 ORDER BY id")]
        lone = conn.execute("SELECT id FROM outbox WHERE customer_key LIKE '%c59%'").fetchall()
        middle = conn.execute(  # a row that is no head: nothing to hand on
            "SELECT max(id) FROM outbox WHERE customer_key LIKE '%c58%'"
        ).fetchone()
        gone = [*heads[:50], *(r[0] for r in lone), middle[0]]
        deleted = conn.execute("DELETE FROM outbox WHERE id = ANY(%s)", (gone,)).rowcount
        runs = conn.execute(
            "SELECT pg_stat_get_xact_function_calls('trg_outbox_head_delete'::regproc)"
        ).fetchone()[0]
        conn.commit()
        assert deleted == len(set(gone)) and runs == 1
        flags = _heads(conn)
    assert len(flags) == 59  # c59 has no rows left
    assert all(len(f) == 2 and f[0] == f[1] for f in flags.values()), flags

    engine = open_outbox(url)
    try:
        with engine.begin() as conn:
            alembic_command.downgrade(alembic_config(conn), "0007")
        with engine.begin() as conn:
            deleted = conn.exec_driver_sql(  # under 0003's per-row trigger
                'DELETE FROM outbox WHERE is_head = 1 AND customer_key < \'{"c": "c10"}\''
            ).rowcount
        assert deleted == 10
        with engine.begin() as conn:
            alembic_command.upgrade(alembic_config(conn), "head")
        assert pg_revision(engine) == HEAD_REVISION
    finally:
        engine.dispose()
    with psycopg.connect(plain) as conn:
        flags = _heads(conn)
        left = dict(conn.execute("SELECT customer_key, count(*) FROM outbox GROUP BY 1").fetchall())
        conn.execute("DELETE FROM outbox WHERE is_head = 1")  # under 0008's again
        conn.commit()
        after = _heads(conn)
    assert all(len(f) == 2 and f[0] == f[1] for f in flags.values()), flags
    assert all(len(f) == 2 and f[0] == f[1] for f in after.values()), after
    assert set(after) == {key for key, n in left.items() if n > 1}


def test_a_drain_transaction_that_loses_a_deadlock_runs_again(url, caplog):
    """Another host's transaction holds one agent_state row and then wants the one the
    drain's transaction already wrote: PostgreSQL aborts the drain's (it waited first, so
    its deadlock check runs first). The store runs it again instead of failing the pass."""
    from tracker_agent.outbox.store import CONFLICT_RETRIES

    assert CONFLICT_RETRIES >= 1
    store = open_store(url)
    plain = url.replace("+psycopg", "")
    other = psycopg.connect(plain)
    try:
        other.execute(
            "INSERT INTO agent_state (key, value) VALUES ('x_first', '0'), ('x_last', '0')"
        )
        other.commit()
        other.execute("UPDATE agent_state SET value = '1' WHERE key = 'x_last'")  # held
        settled: list[int] = []
        outcome = Settlement(state={"x_first": 2, "x_last": 2})  # written in key order
        thread = threading.Thread(
            target=lambda: settled.append(store.settle("drainer", outcome, time.time()))
        )
        with caplog.at_level("INFO", logger="tracker_agent.outbox.store"):
            thread.start()
            wait_for(
                lambda: (
                    other.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND pid <> pg_backend_pid()"
                    ).fetchone()[0]
                    == 1
                ),
                timeout=10,
            )
            other.execute("UPDATE agent_state SET value = '1' WHERE key = 'x_first'")
            other.commit()  # the deadlock check aborted the drain's transaction, not this one
            thread.join(30)
        assert settled == [0]
        assert "deadlock" in caplog.text and "running the transaction again (1)" in caplog.text
        state = store.state()
        assert (state["x_first"], state["x_last"]) == (2, 2)  # the drain's, run again last
    finally:
        other.close()
        close_store(store)


def _hold_customer(conn: psycopg.Connection, key: str) -> None:
    """Take the advisory lock of customer `key` (as another host's enqueue of it would)."""
    conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (PG_CUSTOMER_LOCK_CLASS, key))


def _free_customer(conn: psycopg.Connection, key: str) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (PG_CUSTOMER_LOCK_CLASS, key))


def _settle_waiting_for_another_host(
    store: OutboxStore, other_host: psycopg.Connection
) -> tuple[threading.Thread, list[int], str]:
    """Customer c0's one row claimed by "d", and a thread settling it as delivered that waits
    for c0's lock, held by `other_host` (as another host's enqueue of c0 would): (the thread,
    what its settle returns once it ends, c0's key)."""
    store.enqueue([command("c0", 0)])
    (row,) = store.claim("d", now=0, limit=50, max_bytes=10**6, lease_seconds=30)
    key = json.dumps({"c": "c0"})
    _hold_customer(other_host, key)
    settled: list[int] = []
    outcome = Settlement(delivered=[row.id])
    drain = threading.Thread(target=lambda: settled.append(store.settle("d", outcome, 0)))
    drain.start()
    assert wait_for(lambda: _waits_for_advisory_lock(other_host))
    return drain, settled, key


def test_an_enqueue_never_waits_for_this_processs_drain_blocked_on_another_host(url):
    """On PostgreSQL a process's statements do not queue behind each other (no fork guard):
    while its drain transaction waits for a customer's lock another host holds, add_event in
    another thread of the same process still commits at once."""
    store = open_store(url)
    other_host = psycopg.connect(url.replace("+psycopg", ""), autocommit=True)
    terms = {"limit": 50, "max_bytes": 10**6, "lease_seconds": 30}
    try:
        drain, settled, key = _settle_waiting_for_another_host(store, other_host)
        enqueued = threading.Event()

        def app() -> None:
            store.enqueue([command("c1", 1)])
            enqueued.set()

        threading.Thread(target=app, daemon=True).start()
        assert enqueued.wait(10), "the enqueue waited for the drain's settle"
        assert drain.is_alive() and not settled  # the settle still waits for the other host
        _free_customer(other_host, key)
        drain.join(10)
        assert settled == [1]
        assert [json.loads(r.payload)["n"] for r in store.claim("d", now=0, **terms)] == [1]
    finally:
        other_host.close()
        close_store(store)


def _waits_for_advisory_lock(conn: psycopg.Connection) -> bool:
    (waiting,) = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    ).fetchone()
    return bool(waiting)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_a_fork_while_a_statement_is_in_flight_harms_neither_process(url):
    """Without the fork guard a statement may be in flight across fork(): the child forgets
    that connection (never closing it: the parent's statement goes on) and enqueues on its
    own; the parent's settle then completes on the connection it was using."""
    store = open_store(url)
    other_host = psycopg.connect(url.replace("+psycopg", ""), autocommit=True)
    terms = {"limit": 50, "max_bytes": 10**6, "lease_seconds": 30}
    try:
        drain, settled, key = _settle_waiting_for_another_host(store, other_host)
        store.hold_for_fork()
        pid = os.fork()
        if pid == 0:  # the child: a pre-fork worker enqueueing on fresh connections
            code = 1
            try:
                store.reset_after_fork()
                store.enqueue([command("c1", 1)])
                code = 0
            finally:
                os._exit(code)
        store.release_after_fork()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        _free_customer(other_host, key)
        drain.join(10)
        assert settled == [1]
        # The child's row, then the parent's: the parent's connections still work.
        assert [json.loads(r.payload)["n"] for r in store.claim("d2", now=0, **terms)] == [1]
        store.enqueue([command("c2", 2)])
        assert [json.loads(r.payload)["n"] for r in store.claim("d3", now=0, **terms)] == [2]
    finally:
        other_host.close()
        close_store(store)


def test_a_settle_of_two_batches_sends_statements_psycopg_converts_from_its_cache(url, monkeypatch):
    """psycopg keeps how it converted a statement of at most 50 parameters and parses a
    longer one again each time (0.28 ms for a batch's 100 ids). Sets of ids go as one array
    parameter, so a claim and settle of 100 rows, receipts included, parse nothing again."""
    import psycopg._queries as queries

    store = open_store(url)
    try:
        commands = [
            NewCommand("customers/events", json.dumps({"c": i}), "{}", receipt=True)
            for i in range(100)
        ]
        store.enqueue(commands)
        ids = [c.id for c in commands]
        rows = store.claim("d", limit=100, max_bytes=10**6, lease_seconds=30, now=0)
        assert [r.id for r in rows] == ids
        parsed: list[bytes] = []
        uncached = queries._query2pg_nocache
        monkeypatch.setattr(
            queries, "_query2pg_nocache", lambda q, enc: parsed.append(q) or uncached(q, enc)
        )
        outcome = Settlement(delivered=ids, receipts={i: 1 for i in ids})
        assert store.settle("d", outcome, 0) == 100
        assert parsed == []
        assert [r.state for r in store.receipts(ids)] == ["delivered"] * 100
    finally:
        close_store(store)


# -- the claim without a claim lock (migration 0010) ------------------------------------------


def _flag_errors(conn: psycopg.Connection) -> list[tuple]:
    """Rows whose is_head breaks 0010's rule: 1 on a customer's oldest row that nothing holds,
    2 on one that is leased or waits for a retry, 0 on every other row."""
    return conn.execute(
        "SELECT o.id, o.customer_key, o.is_head, o.lease_expires_at, o.next_attempt_at"
        " FROM outbox AS o WHERE o.is_head <> CASE"
        "  WHEN o.id <> (SELECT min(x.id) FROM outbox AS x WHERE x.customer_key = o.customer_key)"
        "   THEN 0"
        "  WHEN o.lease_expires_at > 0 OR o.next_attempt_at > 0 THEN 2 ELSE 1 END"
    ).fetchall()


def _claim_params(owner: str, limit: int, follow: str | None = None) -> dict:
    from tracker_agent.outbox.leases import NO_STOP

    now = time.time()
    return {
        "now": now, "limit": limit, "no_stop": NO_STOP, "follow": follow,
        "max_bytes": 10**7, "owner": owner, "expires": now + 60,
    }  # fmt: skip


def test_a_claim_skips_the_customers_another_claim_holds_instead_of_waiting(url):
    """Two claims at once: the second neither waits for the first nor takes the customers
    whose heads the first has locked; once the first commits, those customers are held (flag
    2) and stay out of every claim until their rows are settled."""
    from tracker_agent.outbox.pg_claim import PG_CLAIM_SQL

    store = open_store(url)
    first = psycopg.connect(url.replace("+psycopg", ""))
    try:
        # ids 1..12; a row's n is 10 x its place in its customer's queue + the customer
        store.enqueue([command(f"c{k}", 10 * n + k) for n in range(3) for k in range(4)])
        taken = first.execute(PG_CLAIM_SQL, _claim_params("first", 2)).fetchall()
        assert [json.loads(ClaimedRow(*r).payload)["n"] for r in taken] == [0, 1]  # uncommitted
        terms = {"limit": 50, "max_bytes": 10**6, "lease_seconds": 30}
        second: list[list[ClaimedRow]] = []
        worker = threading.Thread(
            target=lambda: second.append(store.claim("second", now=0, **terms))
        )
        worker.start()
        worker.join(10)
        assert second, "the claim waited for the other claim's transaction"
        assert {json.loads(r.payload)["n"] % 10 for r in second[0]} == {2, 3}
        first.commit()
        assert store.claim("third", now=0, **terms) == []  # c0, c1 held by "first"
        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            assert _flag_errors(conn) == []
            held = conn.execute("SELECT count(*) FROM outbox WHERE is_head = 2").fetchone()[0]
        assert held == 4
        store.settle("first", Settlement(delivered=[r[0] for r in taken]), 0)
        rows = store.claim("third", now=0, **terms)
        assert [json.loads(r.payload)["n"] for r in rows] == [10, 11, 20, 21]  # c0, c1 go on
    finally:
        first.close()
        close_store(store)


def test_a_claim_wakes_a_customer_whose_lease_expired_or_whose_retry_is_due(url):
    """A held head leaves ix_outbox_heads; the claim finds it again once its block has
    passed: a lease that expired (its drainer died), a retry whose time came."""
    store = open_store(url)
    terms = {"max_bytes": 10**6, "now": 0}
    try:
        store.enqueue([command("c0", n) for n in range(3)])
        dead = store.claim("dead", limit=2, lease_seconds=0.3, **terms)
        assert [json.loads(r.payload)["n"] for r in dead] == [0, 1]
        assert store.claim("alive", limit=50, lease_seconds=30, **terms) == []
        time.sleep(0.5)
        rows = store.claim("alive", limit=50, lease_seconds=30, **terms)
        assert [json.loads(r.payload)["n"] for r in rows] == [0, 1, 2]
        # "dead" comes back: its lease was taken over, its outcome touches nothing.
        assert store.settle("dead", Settlement(delivered=[r.id for r in dead]), 0) == 0
        retry = Settlement(retry=[r.id for r in rows], retry_at=0.4, error="503")
        store.settle("alive", retry, 0)  # due in 0.4 s (a delay from the caller's now)
        assert store.claim("alive", limit=50, lease_seconds=30, **terms) == []
        time.sleep(0.6)
        again = store.claim("other", limit=50, lease_seconds=30, **terms)
        assert [(json.loads(r.payload)["n"], r.attempts) for r in again] == [(0, 1), (1, 1), (2, 1)]
        with psycopg.connect(url.replace("+psycopg", "")) as conn:
            assert _flag_errors(conn) == []
            # The lease cleared the retry time: the retried rows left ix_outbox_retry.
            assert conn.execute(
                "SELECT count(*) FROM outbox WHERE next_attempt_at > 0"
            ).fetchone() == (0,)
    finally:
        close_store(store)


def test_head_flags_stay_exact_through_every_way_a_lease_changes(url):
    """Random claims (own rows followed or not), settles (delivered, retried, released, dead),
    renewals, releases of all leases, dead letters put back, export leases given back or
    deleted: after each, every customer's oldest row carries the flag its lease and retry
    columns give, and in the end every row is delivered in each customer's order."""
    rng = random.Random(1010)
    stores = [open_store(url), open_store(url)]
    customers = 6
    delivered: dict[str, list[int]] = defaultdict(list)
    who: dict[int, str] = {}  # n -> its customer
    buried: set[int] = set()
    n = 0
    check = psycopg.connect(url.replace("+psycopg", ""), autocommit=True)
    held: dict[tuple[int, str], list[ClaimedRow]] = defaultdict(list)
    try:
        for step in range(160):
            store_no = rng.randrange(2)
            store, owner = stores[store_no], f"d{store_no}"
            op = rng.random()
            if op < 0.25:
                keys = [f"c{rng.randrange(customers)}" for _ in range(rng.randint(1, 8))]
                batch = [command(key, n + i) for i, key in enumerate(keys)]
                who.update((n + i, key) for i, key in enumerate(keys))
                n += len(batch)
                store.enqueue(batch)
            elif op < 0.55:
                rows = store.claim(
                    owner, limit=rng.randint(1, 10), max_bytes=10**6, lease_seconds=30, now=0,
                    follow_own=rng.random() < 0.5,
                )  # fmt: skip
                held[(store_no, owner)].extend(rows)
            elif op < 0.85 and held[(store_no, owner)]:
                rows = held.pop((store_no, owner))
                outcome = Settlement()
                stopped: set[str] = set()  # a customer's rows after one not delivered wait
                for r in sorted(rows, key=lambda r: r.id):
                    pick = rng.random()
                    key = who[json.loads(r.payload)["n"]]
                    if key in stopped:
                        outcome.release.append(r.id)
                        continue
                    if pick >= 0.6 and pick < 0.9:
                        stopped.add(key)
                    if pick < 0.6:
                        outcome.delivered.append(r.id)
                    elif pick < 0.75:
                        outcome.retry.append(r.id)
                    elif pick < 0.9:
                        outcome.release.append(r.id)
                    else:
                        outcome.dead.append((r.id, "400 rejected", 400))
                outcome.retry_at = 0.01
                outcome.error = "503" if outcome.retry else None
                store.settle(owner, outcome, 0)
                for r in rows:
                    number = json.loads(r.payload)["n"]
                    if r.id in outcome.delivered:
                        delivered[who[number]].append(number)
                    elif any(r.id == d[0] for d in outcome.dead):
                        buried.add(number)
            elif op < 0.9:
                store.release_all(owner)
                held.pop((store_no, owner), None)
            elif op < 0.95:
                store.retry_dead()
            else:
                exported = store.lease_for_export("export", 0, rng.randint(1, 5), time.time() + 30)
                ids = [r.id for r in exported]
                if rng.random() < 0.5:
                    store.release_exported("export", ids)
                else:
                    store.renew_leases(owner, time.time() + 30)
                    store.release_exported("export", ids)
            assert _flag_errors(check) == [], f"step {step}"
        for key in list(held):
            stores[key[0]].release_all(key[1])
        stores[0].retry_dead()
        time.sleep(0.05)  # the last retries come due
        for _ in range(200):
            rows = stores[0].claim("final", limit=50, max_bytes=10**6, lease_seconds=30, now=0)
            if not rows:
                break
            for r in rows:
                number = json.loads(r.payload)["n"]
                delivered[who[number]].append(number)
            stores[0].settle("final", Settlement(delivered=[r.id for r in rows]), 0)
        assert stores[0].stats()["pending"] == 0
        assert _flag_errors(check) == []
        # Every row delivered once, each customer's in order (but for dead letters put back:
        # they return behind rows that went meanwhile).
        assert sorted(x for ns in delivered.values() for x in ns) == list(range(n))
        for key, ns in delivered.items():
            kept = [x for x in ns if x not in buried]
            assert kept == sorted(kept), key
    finally:
        check.close()
        for store in stores:
            close_store(store)


@pytest.mark.parametrize("blocked", [100, 800])
def test_a_claim_reads_as_many_heads_whatever_the_customers_in_flight(url, blocked):
    """Counted, not timed: a claim of 50 reads at most 50 entries of ix_outbox_heads, with 100
    customers in flight or 800 (before 0010 it read every held head it passed, 900 for 800)."""
    from tracker_agent.outbox.pg_claim import CLAIM_SETTINGS, PG_CLAIM_SQL

    store = open_store(url)
    try:
        store.enqueue([command(f"c{k:04d}", n) for n in range(3) for k in range(1000)])
        for k in range(blocked // 100):
            store.claim(f"other{k}", limit=100, max_bytes=10**7, lease_seconds=60, now=0)
    finally:
        close_store(store)
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        for setting in CLAIM_SETTINGS:  # as on the drain's connection
            conn.execute(setting)
        params = _claim_params("drainer", 50, follow="drainer")
        (plan,) = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + PG_CLAIM_SQL, params).fetchone()
        conn.rollback()

    def heads_read(node):
        if node.get("Index Name") == "ix_outbox_heads":
            yield node["Actual Rows"] * node["Actual Loops"]
        for child in node.get("Plans", []):
            yield from heads_read(child)

    assert sum(heads_read(plan[0]["Plan"])) == 50


def test_migration_0010_flags_the_customers_held_when_it_runs_and_back(url):
    """A database at 0009 with batches in flight and rows waiting for a retry: 0010 flags
    those customers' heads 2 (held), the others stay 1, and the claim goes on; downgrading
    to 0009 and upgrading again keeps every flag exact."""
    from alembic import command as alembic_command

    from tracker_agent.outbox.revisions import alembic_config

    store = open_store(url)
    terms = {"max_bytes": 10**6, "lease_seconds": 60, "now": 0}
    try:
        store.enqueue([command(f"c{k}", 10 * n + k) for n in range(3) for k in range(6)])
        leased = store.claim("a", limit=2, **terms)  # c0, c1 in flight
        retried = store.claim("b", limit=2, **terms)  # c2, c3 ...
        store.settle("b", Settlement(retry=[r.id for r in retried], retry_at=30), 0)
    finally:
        close_store(store)
    plain = url.replace("+psycopg", "")
    engine = open_outbox(url)
    try:
        with engine.begin() as conn:
            alembic_command.downgrade(alembic_config(conn), "0009")
        with psycopg.connect(plain) as conn:  # 0008's flags: 1 on every head
            values = conn.execute("SELECT DISTINCT is_head FROM outbox WHERE is_head > 0")
            assert [v for (v,) in values] == [1]
        with engine.begin() as conn:
            alembic_command.upgrade(alembic_config(conn), "head")
        with psycopg.connect(plain) as conn:
            assert _flag_errors(conn) == []
            held = {i for (i,) in conn.execute("SELECT id FROM outbox WHERE is_head = 2")}
        assert held == {r.id for r in (*leased, *retried)}
    finally:
        engine.dispose()
    store = open_store(url)
    try:  # c4 and c5 are free; c0..c3 are held (in flight, or waiting for their retry)
        rows = store.claim("c", limit=50, **terms)
        assert sorted(json.loads(r.payload)["n"] % 10 for r in rows) == [4, 4, 4, 5, 5, 5]
    finally:
        close_store(store)
