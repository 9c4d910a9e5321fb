"""OutboxStore: atomic enqueue, bounds, leases, per-customer order, settling, dead letters."""

from __future__ import annotations

import dataclasses
import random
import threading

import pytest
from conftest import both_backends
from sqlalchemy import text

from tracker_agent.exceptions import OutboxFullError
from tracker_agent.outbox.engine import open_outbox
from tracker_agent.outbox.store import NewCommand, OutboxStore, Settlement

NOW = 1_800_000_000.0
LEASE = 60.0


def cmd(customer: str, n: int = 0, pad: int = 0) -> NewCommand:
    key = f'{{"registered":"{customer}"}}'
    payload = (
        f'{{"customer_ids":{key},"event_type":"e","properties":{{"n":{n},"p":"{"x" * pad}"}}}}'
    )
    return NewCommand("customers/events", key, payload)


@pytest.fixture
def make_store(database_url):
    made: list[OutboxStore] = []

    def make(**kwargs) -> OutboxStore:
        engine = open_outbox(database_url)
        kwargs.setdefault("max_rows", 1000)
        kwargs.setdefault("max_bytes", 10**7)
        # On PostgreSQL too, the tests' clock (NOW, moved by hand) stamps leases and retries.
        store = OutboxStore(engine, now=lambda: NOW, db_clock=False, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
        store.engine.dispose()


def claim(store, owner="a", limit=50, now=NOW, max_bytes=10**7):
    return store.claim(owner, limit=limit, max_bytes=max_bytes, lease_seconds=LEASE, now=now)


def test_enqueue_commits_rows_and_counts_them(make_store):
    store = make_store()
    store.enqueue([cmd("a", 1), cmd("b", 2)])
    stats = store.stats(now=NOW + 5)
    assert stats["pending"] == 2
    assert stats["in_flight"] == 0
    assert stats["bytes"] == sum(c.size for c in (cmd("a", 1), cmd("b", 2)))
    assert stats["oldest_pending_age_s"] == pytest.approx(5.0)


def test_full_outbox_raises_and_writes_nothing_of_the_call(make_store):
    store = make_store(max_rows=3)
    store.enqueue([cmd("a", 1), cmd("a", 2)])
    with pytest.raises(OutboxFullError, match="full"):
        store.enqueue([cmd("a", 3), cmd("a", 4)])
    assert store.stats()["pending"] == 2
    store.enqueue([cmd("a", 3)])
    assert store.stats()["pending"] == 3


def test_byte_bound_is_enforced_too(make_store):
    store = make_store(max_bytes=cmd("a", pad=100).size * 2)
    store.enqueue([cmd("a", pad=100), cmd("a", pad=100)])
    with pytest.raises(OutboxFullError):
        store.enqueue([cmd("a")])


def test_one_row_calls_stop_exactly_at_each_bound_even_when_another_process_filled_it(
    make_store,
):
    # A lone one-row enqueue relies on a TEMP trigger on its own connection, which reads the
    # live counters: rows written through another engine (another process) count too.
    row = cmd("a", pad=10)
    store = make_store(max_rows=3, max_bytes=row.size * 3)
    other = make_store(max_rows=1000)
    other.enqueue([row, row])
    store.enqueue([row])  # the third row fits both bounds exactly
    with pytest.raises(OutboxFullError, match="nothing was written"):
        store.enqueue([row])
    assert store.stats()["pending"] == 3
    roomy = make_store(max_rows=10, max_bytes=row.size * 3 + row.size - 1)
    with pytest.raises(OutboxFullError):
        roomy.enqueue([row])  # a byte short
    other.enqueue([row])  # the other process's own, larger limits still apply to it
    assert store.stats()["pending"] == 4


def test_the_bound_stays_with_the_enqueue_connection(make_store):
    store = make_store(max_rows=1)
    store.enqueue([cmd("a")])
    store.close()  # the writer goes back to the pool without its bound
    with store.engine.connect() as conn:
        conn.exec_driver_sql(
            "INSERT INTO outbox (kind, customer_key, payload, size, created_at)"
            " VALUES ('customers/events', 'k', '{}', 2, 0)"
        )
        conn.commit()
    assert store.stats()["pending"] == 2


@both_backends
def test_drop_oldest_makes_room_and_counts_what_it_dropped(make_store):
    store = make_store(max_rows=3, overflow="drop_oldest")
    for n in range(5):
        store.enqueue([cmd("a", n)])
    rows = claim(store)
    assert [r.payload.count('"n":3') + r.payload.count('"n":4') for r in rows] == [0, 1, 1]
    assert '"n":2' in rows[0].payload
    assert store.stats()["dropped"] == 2


@both_backends
def test_drop_oldest_never_drops_rows_in_flight(make_store):
    store = make_store(max_rows=2, overflow="drop_oldest")
    store.enqueue([cmd("a", 0), cmd("b", 1)])
    claim(store)  # both leased
    with pytest.raises(OutboxFullError):
        store.enqueue([cmd("c", 2)])


@both_backends
def test_two_drainers_never_hold_the_same_row(make_store):
    store = make_store()
    store.enqueue([cmd(f"c{i}", i) for i in range(10)])
    first = claim(store, "a", limit=4)
    second = claim(store, "b", limit=50)
    assert len(first) == 4
    assert len(second) == 6
    assert not {r.id for r in first} & {r.id for r in second}


@both_backends
def test_expired_lease_returns_rows_to_the_queue(make_store):
    store = make_store()
    store.enqueue([cmd("a")])
    assert claim(store, "dead-drainer")
    assert claim(store, "b", now=NOW + LEASE - 1) == []
    again = claim(store, "b", now=NOW + LEASE + 1)
    assert len(again) == 1


@both_backends
def test_later_command_of_a_customer_waits_for_an_earlier_one_in_flight_or_backoff(make_store):
    store = make_store()
    store.enqueue([cmd("a", 1)])
    first = claim(store, "x")
    store.enqueue([cmd("a", 2), cmd("b", 3)])
    picked = claim(store, "y")
    assert [('"n":3' in r.payload) for r in picked] == [True]  # b only, not a's second
    store.settle("y", Settlement(delivered=[r.id for r in picked]), NOW)
    # a's first goes into backoff: a's second must still wait
    store.settle("x", Settlement(retry=[first[0].id], retry_at=NOW + 100, error="503"), NOW)
    assert claim(store, "y", now=NOW + 1) == []
    later = claim(store, "y", now=NOW + 101)
    assert [('"n":1' in r.payload, '"n":2' in r.payload) for r in later] == [
        (True, False),
        (False, True),
    ]


@both_backends
def test_claim_respects_the_byte_cap_but_always_takes_one(make_store):
    store = make_store()
    big = cmd("a", pad=1000)
    store.enqueue([big, cmd("b", pad=1000), cmd("c", pad=1000)])
    assert len(claim(store, max_bytes=big.size * 2)) == 2
    assert len(claim(store, "b", max_bytes=10)) == 1


@both_backends
def test_settle_applies_each_outcome_only_to_rows_still_leased_by_the_owner(make_store):
    store = make_store()
    store.enqueue([cmd(f"c{i}", i) for i in range(4)])
    rows = claim(store, "me")
    outcome = Settlement(
        delivered=[rows[0].id],
        dead=[(rows[1].id, "rejected by the server: bad", 200)],
        retry=[rows[2].id],
        release=[rows[3].id],
        retry_at=NOW + 30,
        error="ServerError",
    )
    assert store.settle("someone-else", outcome, NOW) == 0
    assert store.stats(now=NOW)["in_flight"] == 4
    assert store.settle("me", outcome, NOW) == 1
    stats = store.stats(now=NOW)
    assert (stats["pending"], stats["in_flight"], stats["dead"], stats["delivered"]) == (2, 0, 1, 1)
    (dead,) = store.list_dead()
    assert (dead.id, dead.reason, dead.status_code, dead.attempts) == (
        rows[1].id,
        "rejected by the server: bad",
        200,
        1,
    )
    assert dead.customer_ids == {"registered": "c1"}
    due = claim(store, "me", now=NOW + 31)
    assert {r.id: r.attempts for r in due} == {rows[2].id: 1, rows[3].id: 0}


@both_backends
def test_dead_letters_retry_in_original_order_and_purge_by_filter(make_store):
    store = make_store()
    store.enqueue([cmd(f"c{i}", i) for i in range(4)])
    rows = claim(store, "me")
    reasons = ["timeout gave up", "rejected: bad price", "rejected: bad price", "other"]
    dead = [(r.id, why, 400) for r, why in zip(rows, reasons, strict=True)]
    store.settle("me", Settlement(dead=dead), NOW)
    assert [d.id for d in store.list_dead(error_contains="BAD PRICE")] == [rows[1].id, rows[2].id]
    assert [d.id for d in store.list_dead(ids=[rows[3].id])] == [rows[3].id]
    assert store.list_dead(older_than_s=10) == []
    store.enqueue([cmd("new")])
    assert store.retry_dead(error_contains="bad price") == 2
    order = [r.id for r in claim(store, "again")]
    assert order == [rows[1].id, rows[2].id, max(order)]  # back under their ids, ahead of new
    assert store.purge_dead(ids=[rows[0].id]) == 1
    assert [d.id for d in store.list_dead()] == [rows[3].id]


def test_concurrent_enqueues_from_many_threads_all_land(make_store):
    store = make_store(max_rows=10_000)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for n in range(50):
                store.enqueue([cmd(f"t{t}", n)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert store.stats()["pending"] == 400
    rows = claim(store, limit=400)
    per_thread: dict[str, list[int]] = {}
    for r in rows:
        t = r.payload.split('"registered":"')[1].split('"')[0]
        per_thread.setdefault(t, []).append(int(r.payload.split('"n":')[1].split(",")[0]))
    assert all(ns == list(range(50)) for ns in per_thread.values())


def heads_and_oldest(store: OutboxStore) -> tuple[list[int], list[int]]:
    """The rows flagged as their customer's head, and each customer's oldest row."""
    with store.engine.connect() as conn:
        # 1, or 2 on PostgreSQL when the customer is held (migration 0010)
        flagged = conn.exec_driver_sql("SELECT id FROM outbox WHERE is_head > 0 ORDER BY id")
        oldest = conn.exec_driver_sql("SELECT min(id) FROM outbox GROUP BY customer_key ORDER BY 1")
        return [r[0] for r in flagged], [r[0] for r in oldest]


@both_backends
def test_a_blocked_customer_with_a_long_queue_does_not_hold_back_the_others(make_store):
    store = make_store()
    store.enqueue([cmd("busy", n) for n in range(300)])
    in_flight = claim(store, "x")
    assert len(in_flight) == 50
    store.enqueue([cmd(f"c{i}", i) for i in range(60)])
    picked = claim(store, "y")
    assert len(picked) == 50
    assert all('"registered":"c' in r.payload for r in picked)
    assert [r.id for r in picked] == sorted(r.id for r in picked)
    assert min(r.id for r in picked) == 301  # the first row after busy's 300
    store.settle("x", Settlement(retry=[r.id for r in in_flight], retry_at=NOW + 100), NOW)
    assert ['"registered":"c5' in r.payload for r in claim(store, "z")] == [True] * 10
    assert claim(store, "z") == []  # busy waits for its retry, its 250 others behind it
    assert [r.id for r in claim(store, "z", now=NOW + 101)] == list(range(1, 51))


@both_backends
def test_claims_merge_the_customers_queues_in_id_order(make_store):
    store = make_store()
    store.enqueue([cmd("ann" if n % 3 else "bob", n) for n in range(30)])
    assert [r.id for r in claim(store, limit=7)] == list(range(1, 8))
    assert [r.id for r in claim(store, "b", limit=7)] == []  # both customers are in flight


@both_backends
def test_rows_before_a_customers_first_blocked_row_still_go(make_store):
    store = make_store()
    store.enqueue([cmd("a", n) for n in range(3)])
    first, second, third = claim(store, "x")
    # A partial answer: the first row given back, the second retried later, the third done.
    outcome = Settlement(release=[first.id], retry=[second.id], delivered=[third.id])
    store.settle("x", dataclasses.replace(outcome, retry_at=NOW + 30), NOW)
    store.enqueue([cmd("a", 3)])
    assert [r.id for r in claim(store, "y")] == [first.id]  # the second blocks the fourth
    assert [r.id for r in claim(store, "y", now=NOW + 31)] == []  # the first is in flight
    store.settle("y", Settlement(delivered=[first.id]), NOW + 31)
    assert [r.id for r in claim(store, "y", now=NOW + 31)] == [second.id, third.id + 1]


@both_backends
def test_a_dead_letter_put_back_goes_ahead_of_its_customers_queue(make_store):
    store = make_store()
    store.enqueue([cmd("a", 0)])
    (dead,) = claim(store, "x")
    store.settle("x", Settlement(dead=[(dead.id, "rejected", 400)]), NOW)
    store.enqueue([cmd("a", 1), cmd("b", 2), cmd("a", 3)])
    assert heads_and_oldest(store) == ([2, 3], [2, 3])
    assert store.retry_dead() == 1
    assert heads_and_oldest(store) == ([1, 3], [1, 3])
    assert [r.id for r in claim(store, "y", limit=2)] == [1, 2]
    assert [r.id for r in claim(store, "z")] == [3]  # b's; a's 4 waits behind its 1 in flight


@both_backends
@pytest.mark.parametrize("seed", range(5))
def test_each_customer_keeps_exactly_one_head_whatever_writes_the_table(make_store, seed):
    # Enqueues, claims, every outcome of a settlement, dead letters put back and drop_oldest,
    # in a seeded random order: the flag is always on each customer's oldest row.
    rnd = random.Random(seed)
    store = make_store(max_rows=40, overflow="drop_oldest")
    now = NOW
    for step in range(150):
        now += 1
        action = rnd.random()
        if action < 0.4:
            store.enqueue([cmd(rnd.choice("abcd"), step) for _ in range(rnd.randint(1, 5))])
        elif action < 0.8:
            rows = claim(store, "x", limit=rnd.randint(1, 8), now=now)
            outcome = Settlement(retry_at=now + rnd.choice((0, 3)))
            for row in rows:
                kind = rnd.choice(("delivered", "dead", "retry", "release"))
                if kind == "dead":
                    outcome.dead.append((row.id, "rejected", 400))
                else:
                    getattr(outcome, kind).append(row.id)
            store.settle("x", outcome, now)
        else:
            store.retry_dead(ids=[d.id for d in store.list_dead() if rnd.random() < 0.5])
        flagged, oldest = heads_and_oldest(store)
        assert flagged == oldest, step


def follow(store, owner, limit=50, now=NOW):
    return store.claim(
        owner, limit=limit, max_bytes=10**7, lease_seconds=LEASE, now=now, follow_own=True
    )


@both_backends
def test_with_follow_own_a_drainers_own_batch_in_flight_does_not_block_it(make_store):
    store = make_store()
    store.enqueue([cmd("a", n) for n in range(120)])
    assert [r.id for r in claim(store, "x")] == list(range(1, 51))
    assert claim(store, "x") == []  # by default its own lease blocks it too
    assert [r.id for r in follow(store, "x")] == list(range(51, 101))  # never 1..50 again
    assert follow(store, "y") == []  # another drainer still waits for both batches
    store.enqueue([cmd("b", 0)])
    assert [r.id for r in follow(store, "x", limit=30)] == [*range(101, 121), 121]
    assert follow(store, "x") == []  # all of a's and b's rows are x's, in flight
    store.settle("x", Settlement(delivered=list(range(1, 51))), NOW)
    assert follow(store, "y") == []


def test_with_follow_own_anything_else_that_blocks_still_blocks(make_store):
    store = make_store()
    store.enqueue([cmd("a", n) for n in range(6)])
    first = claim(store, "x", limit=2)
    # Its first batch failed: waiting for the retry, it blocks its own owner as well.
    store.settle("x", Settlement(retry=[r.id for r in first], retry_at=NOW + 30), NOW)
    assert follow(store, "x") == []
    later = NOW + 31
    assert [r.id for r in follow(store, "x", limit=2, now=later)] == [1, 2]
    with store.engine.begin() as conn:  # y leases row 4 (say, after a lease of x's expired)
        conn.exec_driver_sql(
            "UPDATE outbox SET lease_owner = 'y', lease_expires_at = ? WHERE id = 4", (later + 60,)
        )
    assert [r.id for r in follow(store, "x", now=later)] == [3]  # up to y's row
    # x gives 1 back while it holds 2 and 3: its rows are no longer the customer's oldest, so
    # they block like anyone's lease; 1, ahead of every blocked row, may go (as without
    # follow_own), and then x's rows are the oldest again, up to y's.
    store.settle("x", Settlement(release=[1]), later)
    assert [r.id for r in follow(store, "x", now=later)] == [1]
    assert follow(store, "x", now=later) == []


def expected_claim(store, owner, limit, max_bytes, now, follow_own):
    """What a claim must take, computed naively from every row (the contract, not the SQL):
    due rows in id order, none after a blocked row of its customer (with follow_own, the
    owner's own live leases do not block it when they are its customer's oldest rows)."""
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT id, customer_key, size, lease_owner, lease_expires_at, next_attempt_at"
            " FROM outbox ORDER BY id"
        ).all()
    queues: dict[str, list] = {}
    for row in rows:
        queues.setdefault(row[1], []).append(row)
    claimable = []
    for queue in queues.values():
        own = [r for r in queue if r[4] > now and r[3] == owner] if follow_own else []
        if own and queue[: len(own)] == own:
            queue = queue[len(own) :]
        for r in queue:
            if r[4] > now or r[5] > now:  # leased, or waiting for its retry
                break
            claimable.append(r)
    picked, total = [], 0
    for r in sorted(claimable)[:limit]:
        if picked and total + r[2] > max_bytes:
            break
        picked.append(r[0])
        total += r[2]
    return picked


@both_backends
@pytest.mark.parametrize("seed", range(8))
def test_claims_take_what_the_contract_says_in_any_state(make_store, seed):
    rnd = random.Random(seed)
    store = make_store(max_rows=10_000)
    now = NOW
    for step in range(120):
        now += rnd.choice((0, 1, 7))  # leases (10 s here) and retries (0-20 s) run out
        if rnd.random() < 0.3:
            store.enqueue(
                [cmd(rnd.choice("abcde"), step, pad=rnd.randint(0, 300)) for _ in range(4)]
            )
        owner, follow_own = rnd.choice("xyz"), rnd.random() < 0.5
        limit, max_bytes = rnd.randint(1, 12), rnd.choice((400, 2000, 10**6))
        expected = expected_claim(store, owner, limit, max_bytes, now, follow_own)
        rows = store.claim(
            owner,
            limit=limit,
            max_bytes=max_bytes,
            lease_seconds=10,
            now=now,
            follow_own=follow_own,
        )
        assert [r.id for r in rows] == expected, step
        outcome = Settlement(retry_at=now + rnd.randint(0, 20), error="503")
        for row in rows:
            kind = rnd.choice(("delivered", "retry", "release", "keep", "keep", "dead"))
            if kind == "dead":
                outcome.dead.append((row.id, "rejected", 400))
            elif kind != "keep":  # keep: left leased, in flight
                getattr(outcome, kind).append(row.id)
        store.settle(owner, outcome, now)
        if rnd.random() < 0.1:
            store.retry_dead()


# -- a batch's outcome recorded ahead of its writes (outbox/settling.py) ------------------------


def settling_rows(store: OutboxStore) -> int:
    with store.engine.connect() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM settling").scalar_one()


def delivered_outcome(rows) -> Settlement:
    receipt_ids = {r.id: r.attempts + 1 for r in rows if r.receipt}
    return Settlement(delivered=[r.id for r in rows], receipts=receipt_ids)


@both_backends
def test_a_recorded_outcome_left_by_a_crash_is_applied_before_any_claim_leases_its_rows(
    make_store,
):
    store = make_store()
    commands = [cmd(f"c{i % 3}", i) for i in range(6)]
    commands[0].receipt = True
    store.enqueue(commands)
    rows = claim(store, "dead", limit=4)
    store.record_settlement("dead", delivered_outcome(rows), NOW)
    # The drainer dies here: its outcome is durable, its rows still leased to it, and the
    # lease runs out. The next claim (another drainer, later) must not send them again.
    after_expiry = NOW + LEASE + 1
    again = claim(make_store(), "next", now=after_expiry)
    assert [r.id for r in again] == [c.id for c in commands[4:]]
    assert settling_rows(store) == 0
    stats = store.stats(now=after_expiry)
    assert (stats["delivered"], stats["pending"] + stats["in_flight"]) == (4, 2)
    (receipt,) = store.receipts([commands[0].id])
    assert receipt.state == "delivered"


@both_backends
def test_the_recording_drainer_applies_its_outcome_once_even_if_another_claim_did(make_store):
    store, other = make_store(), make_store()
    store.enqueue([cmd(f"c{i}", i) for i in range(4)])
    rows = claim(store, "me", limit=2)
    outcome = delivered_outcome(rows)
    recorded = store.record_settlement("me", outcome, NOW)
    assert settling_rows(store) == 1
    claim(other, "other", limit=1)  # applies the record first (whoever wrote it)
    delivered, _state, _next = store.settle_and_claim(
        "me", outcome, NOW, limit=50, max_bytes=10**7, lease_seconds=LEASE, recorded=recorded
    )
    assert delivered == 2  # as recorded: the rows went, whoever deleted them
    stats = store.stats(now=NOW)
    assert (stats["delivered"], settling_rows(store)) == (2, 0)  # counted once


@both_backends
def test_settle_and_claim_applies_its_own_record_and_claims_in_one_go(make_store):
    store = make_store()
    store.enqueue([cmd("one", i) for i in range(4)])
    first = claim(store, "me", limit=2)
    outcome = delivered_outcome(first)
    recorded = store.record_settlement("me", outcome, NOW)
    delivered, _state, rows = store.settle_and_claim(
        "me", outcome, NOW, limit=50, max_bytes=10**7, lease_seconds=LEASE, recorded=recorded
    )
    assert delivered == 2 and len(rows) == 2 and settling_rows(store) == 0
    assert store.stats(now=NOW)["delivered"] == 2


@both_backends
def test_one_owners_consecutive_records_are_applied_as_one_settle(make_store, monkeypatch):
    """The two batches of a claim are recorded one after the other and applied by the next
    claim: as one settle (one DELETE, one counter update), the same rows as two would."""
    store = make_store()
    store.enqueue([cmd(f"c{i % 2}", i) for i in range(6)])
    first = claim(store, "me", limit=2)
    second = store.claim(
        "me", limit=2, max_bytes=10**7, lease_seconds=LEASE, now=NOW, follow_own=True
    )  # the next rows of the same two customers
    assert {r.id for r in first}.isdisjoint(r.id for r in second) and len(second) == 2
    store.record_settlement("me", delivered_outcome(first), NOW)
    store.record_settlement("me", delivered_outcome(second), NOW)
    applied: list[Settlement] = []
    real = store._apply

    def counted(cur, owner, outcome, stamped):
        applied.append(outcome)
        return real(cur, owner, outcome, stamped)

    monkeypatch.setattr(store, "_apply", counted)
    rest = claim(store, "me", limit=5)
    assert [sorted(s.delivered) for s in applied] == [sorted(r.id for r in [*first, *second])]
    assert len(rest) == 2 and store.stats(now=NOW)["delivered"] == 4 and settling_rows(store) == 0


def test_merged_outcomes_keep_each_ones_rows_and_the_later_state():
    early = Settlement(delivered=[1], release=[2], state={"a": 1, "b": 1}, receipts={1: 1})
    late = Settlement(
        delivered=[3], retry=[4], retry_at=9.0, error="503", state={"b": 2}, receipts={3: 2}
    )
    both = early.merged(late)
    assert both == Settlement(
        delivered=[1, 3],
        retry=[4],
        release=[2],
        retry_at=9.0,
        error="503",
        state={"a": 1, "b": 2},
        receipts={1: 1, 3: 2},
    )
    # Two retries keep their own retry times and errors: applied one after the other.
    assert late.merged(Settlement(retry=[5], retry_at=1.0, error="429")) is None


@both_backends
def test_giving_leases_back_or_exporting_never_resends_a_recorded_delivery(make_store):
    store = make_store()
    store.enqueue([cmd("one", i) for i in range(4)])
    rows = claim(store, "me", limit=2)
    store.record_settlement("me", delivered_outcome(rows), NOW)
    assert store.release_all("me") == 0  # the recorded rows were delivered, not given back
    exported = store.lease_for_export("export", 0, 10, NOW + LEASE)
    assert len(exported) == 2 and not {r.id for r in rows} & {r.id for r in exported}
    assert store.stats(now=NOW)["delivered"] == 2


@both_backends
@pytest.mark.parametrize("damage", ["not json", '{"delivered": [1]}', '{"delivered": "x"}', "[]"])
def test_a_damaged_record_is_dropped_and_its_rows_go_out_again_instead_of_stopping_claims(
    make_store, damage, caplog
):
    store = make_store()
    store.enqueue([cmd("one", i) for i in range(2)])
    rows = claim(store, "dead")
    store.record_settlement("dead", delivered_outcome(rows), NOW)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE settling SET outcome = :o"), {"o": damage})
    again = claim(store, "next", now=NOW + LEASE + 1)
    assert [r.id for r in again] == [r.id for r in rows]  # at-least-once: sent again
    assert settling_rows(store) == 0
    assert "dropped recorded outcome" in caplog.text


class _Rows:
    def __init__(self, rows):
        self._rows = rows

    def execute(self, _sql):
        return self

    def fetchall(self):
        return self._rows


def test_read_state_sums_a_counters_slots_and_ignores_a_damaged_one():
    from tracker_agent.outbox.state import read_state

    state = read_state(
        _Rows(
            [
                ("delivered_total", "7"),  # written before counters were spread
                ("delivered_total#3", "5"),
                ("delivered_total#11", "30"),
                ("dead_lettered_total#2", "1"),
                ("dead_lettered_total#4", '"x"'),  # damaged: not a count
                ("dead_lettered_total#5", "true"),
                ("last_error", '"boom"'),
            ]
        )
    )
    assert state == {"delivered_total": 42, "dead_lettered_total": 1, "last_error": "boom"}
