"""The drain against FakeExponea over real HTTP: batching, settling, backoff, pause, isolation."""

from __future__ import annotations

import datetime
import json
import threading
import time
from collections import Counter
from typing import Any

import pytest
from conftest import both_backends, make_agent
from freezegun import freeze_time

from tracker_agent.client import Exponea
from tracker_agent.drain import Drainer
from tracker_agent.outbox.engine import open_outbox
from tracker_agent.outbox.store import NewCommand, OutboxStore
from tracker_agent.policy import DrainPolicy

START = "2030-01-01 00:00:00"


@pytest.fixture
def store(database_url):
    engine = open_outbox(database_url)
    store = OutboxStore(engine, max_rows=100_000, max_bytes=10**9)
    yield store
    store.close()
    engine.dispose()


@pytest.fixture
def client(fake):
    with Exponea(
        fake.project_token,
        username=fake.username,
        password=fake.password,
        url=fake.url,
        request_timeout=0.5,
        connect_timeout=0.5,
    ) as exponea:
        yield exponea


def drainer_for(store, client, **policy) -> Drainer:
    policy.setdefault("rate_limit", 10_000.0)
    return Drainer(store, client.tracking.send_stored_batch, DrainPolicy(**policy), rng=lambda: 1.0)


def enqueue_events(store, customer: str, count: int, start: int = 0) -> None:
    rows = []
    for n in range(start, start + count):
        data = {
            "customer_ids": {"registered": customer},
            "event_type": "purchase",
            "timestamp": 1_700_000_000 + n / 1000,
            "properties": {"n": n},
        }
        rows.append(
            NewCommand("customers/events", json.dumps(data["customer_ids"]), json.dumps(data))
        )
    store.enqueue(rows)


def delivered_ns(fake, customer: str | None = None) -> list[int]:
    return [
        e["properties"]["n"]
        for e in fake.events
        if customer is None or e["customer_ids"]["registered"] == customer
    ]


@both_backends
def test_delivers_in_batches_of_at_most_fifty_with_row_ids_as_command_ids(fake, store, client):
    enqueue_events(store, "alice", 120)
    report = drainer_for(store, client).drain()
    assert report.delivered == 120
    assert [len(b) for b in fake.batches] == [50, 50, 20]
    ids = [int(c["command_id"]) for b in fake.batches for c in b]
    assert ids == sorted(ids) and len(set(ids)) == 120
    assert delivered_ns(fake) == list(range(120))
    stats = store.stats()
    assert (stats["pending"], stats["delivered"]) == (0, 120)
    assert stats["last_success_at"] is not None


@both_backends
def test_byte_cap_splits_requests(fake, store, client):
    enqueue_events(store, "alice", 10)
    drainer_for(store, client, batch_max_bytes=400).drain()
    assert len(fake.batches) > 1
    assert delivered_ns(fake) == list(range(10))


@both_backends
def test_command_rejected_inside_a_batch_is_dead_lettered_alone(fake, store, client):
    fake.reject_commands(lambda c: c["data"]["properties"]["n"] == 3, error="bad price")
    enqueue_events(store, "alice", 6)
    report = drainer_for(store, client).drain()
    assert (report.delivered, report.dead_lettered) == (5, 1)
    assert delivered_ns(fake) == [0, 1, 2, 4, 5]
    (dead,) = store.list_dead()
    assert dead.payload["properties"] == {"n": 3}
    assert "bad price" in dead.reason


@both_backends
def test_whole_batch_400_is_split_until_the_poison_command_is_isolated(fake, store, client):
    fake.reject_batches_containing(lambda c: c["data"]["properties"]["n"] == 13, status=400)
    enqueue_events(store, "alice", 20)
    report = drainer_for(store, client).drain()
    assert (report.delivered, report.dead_lettered) == (19, 1)
    assert delivered_ns(fake) == [n for n in range(20) if n != 13]
    (dead,) = store.list_dead()
    assert dead.payload["properties"] == {"n": 13}
    assert dead.status_code == 400


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(lambda f: f.fail_next(1, status=503), id="503"),
        pytest.param(
            lambda f: f.fail_next(1, status=502, body="<html>bad gw</html>"), id="502-html"
        ),
        pytest.param(lambda f: f.drop_next(1), id="dropped-connection"),
        pytest.param(lambda f: f.delay_next(1, seconds=1.5), id="timeout"),
    ],
)
def test_transient_failure_backs_off_then_the_same_batch_is_delivered(fake, store, client, fault):
    enqueue_events(store, "alice", 3)
    fault(fake)
    with freeze_time(START) as frozen:
        drainer = drainer_for(store, client, backoff_base=2.0, backoff_cap=60.0)
        first = drainer.drain()
        assert first.delivered == 0 and first.backoff_until is not None
        assert first.backoff_until - frozen_now(frozen) == pytest.approx(2.0)  # rng=1: ceiling
        assert store.stats()["pending"] == 3
        frozen.tick(1.0)
        assert drainer.drain().requests == 0  # still backing off
        frozen.tick(1.5)
        assert drainer.drain().delivered == 3
    assert delivered_ns(fake) == [0, 1, 2]
    assert fake.duplicate_events == 0


UNREADABLE_ANSWERS = [
    pytest.param(lambda f: f.captive_portal_next(), "InvalidResponseError", id="captive-200-html"),
    pytest.param(
        lambda f: f.captive_portal_next(redirect=True), "InvalidResponseError", id="captive-302"
    ),
    pytest.param(
        lambda f: f.fail_next(status=200, body='{"success": true, "results": [{"succ'),
        "InvalidResponseError",
        id="truncated-json",
    ),
    pytest.param(
        lambda f: f.fail_next(status=200, body={"success": True}),
        "InvalidResponseError",
        id="200-without-results",
    ),
    pytest.param(
        lambda f: f.fail_next(status=400, body="<html><h1>400 Bad Request</h1>nginx</html>"),
        "InvalidResponseError",
        id="proxy-html-400",
    ),
    pytest.param(lambda f: f.oversize_next(), "InvalidResponseError", id="oversized"),
    pytest.param(
        lambda f: f.mangle_results_next(keep=1), "InvalidResponseError", id="wrong-result-count"
    ),
    pytest.param(lambda f: f.trickle_next(interval=0.1), "APITimeoutError", id="trickle"),
]


@pytest.mark.parametrize(("fault", "error"), UNREADABLE_ANSWERS)
def test_an_unreadable_answer_backs_off_shows_the_error_and_never_dead_letters(
    fake, store, client, fault, error
):
    enqueue_events(store, "alice", 3)
    fault(fake)
    with freeze_time(START) as frozen:
        drainer = drainer_for(store, client, backoff_base=2.0, backoff_cap=60.0)
        first = drainer.drain()
        assert (first.delivered, first.dead_lettered, first.requests) == (0, 0, 1)
        assert first.backoff_until is not None and first.paused_reason is None
        stats = store.stats()
        assert (stats["pending"], stats["dead"], stats["in_flight"]) == (3, 0, 0)
        assert stats["last_error"].startswith(error), stats["last_error"]
        frozen.tick(2.5)
        assert drainer.drain().delivered == 3
    assert delivered_ns(fake) == [0, 1, 2]
    assert store.stats()["dead"] == 0


def test_a_wrong_result_count_resends_the_whole_batch_and_dedup_absorbs_it(fake, store, client):
    enqueue_events(store, "alice", 4)
    fake.mangle_results_next(keep=3)  # applied, but one result short
    with freeze_time(START) as frozen:
        drainer = drainer_for(store, client, backoff_base=1.0)
        assert drainer.drain().delivered == 0
        frozen.tick(1.5)
        assert drainer.drain().delivered == 4
    assert [r.processed for r in fake.requests] == [True, True]
    assert delivered_ns(fake) == [0, 1, 2, 3]
    assert fake.duplicate_events == 4  # each command applied twice, stored once


@both_backends
def test_a_request_that_cannot_be_sent_pauses_delivery_and_dead_letters_nothing(fake, store):
    enqueue_events(store, "alice", 5)
    with Exponea(
        fake.project_token,
        username=fake.username,
        password=fake.password,
        url=fake.url,
        user_agent="app\r\nX-Injected: yes",  # a header value http.client refuses to send
    ) as bad:
        report = drainer_for(store, bad).drain()
    assert report.paused_reason and report.paused_reason.startswith("TransportError")
    stats = store.stats()
    assert (stats["pending"], stats["dead"], stats["in_flight"]) == (5, 0, 0)
    assert stats["paused_reason"] == report.paused_reason
    assert fake.requests == []


def frozen_now(frozen) -> float:
    """The frozen clock's current time (tick() moves it)."""
    return frozen.time_to_freeze.replace(tzinfo=datetime.timezone.utc).timestamp()


def test_consecutive_failures_grow_the_delay_and_retry_after_is_honoured(fake, store, client):
    enqueue_events(store, "alice", 1)
    with freeze_time(START) as frozen:
        drainer = drainer_for(store, client, backoff_base=1.0, backoff_cap=8.0)
        delays = []
        for _ in range(5):
            fake.fail_next(1, status=500)
            report = drainer.drain()
            delay = report.backoff_until - frozen_now(frozen)
            delays.append(round(delay, 3))
            frozen.tick(delay)
        fake.fail_next(1, status=429, retry_after=30)
        report = drainer.drain()
        assert report.backoff_until - frozen_now(frozen) == pytest.approx(30.0)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert fake.events == []
    assert store.stats()["last_error"].startswith("RateLimitedError")


def test_max_attempts_dead_letters_instead_of_deleting(fake, store, client):
    enqueue_events(store, "alice", 2)
    with freeze_time(START) as frozen:
        drainer = drainer_for(store, client, max_attempts=2, backoff_base=1.0)
        for _ in range(2):
            fake.fail_next(1, status=503)
            drainer.drain()
            frozen.tick(10)
    assert store.stats()["dead"] == 2
    assert all("gave up after 2 attempts" in d.reason for d in store.list_dead())


def test_revoked_credentials_pause_delivery_without_dead_lettering(fake, store, client):
    enqueue_events(store, "alice", 5)
    fake.revoke_credentials()
    with freeze_time(START) as frozen:
        drainer = drainer_for(store, client, pause_probe_interval=60.0)
        report = drainer.drain()
        assert report.paused_reason and "AuthenticationError" in report.paused_reason
        stats = store.stats()
        assert (stats["pending"], stats["dead"], stats["in_flight"]) == (5, 0, 0)
        assert stats["paused_reason"] == report.paused_reason
        # Probes come soon after the pause began, then less and less often, up to the interval.
        probes = []
        for waited in (0.9, 0.2, 1.9, 0.2, 3.9, 0.2):
            before = len(fake.requests)
            frozen.tick(waited)
            drainer.drain()
            probes.append(len(fake.requests) - before)
        assert probes == [0, 1, 0, 1, 0, 1]  # at 1 s, then 2 s later, then 4 s later
        for _ in range(8):  # the wait doubles up to pause_probe_interval, never beyond
            frozen.tick(60.1)
            before = len(fake.requests)
            drainer.drain()
            assert len(fake.requests) == before + 1
        fake.restore_credentials()
        frozen.tick(61)
        assert drainer.drain().delivered == 5
    stats = store.stats()
    assert (stats["paused_reason"], stats["dead"]) == (None, 0)


def test_a_brief_401_blip_costs_seconds_not_the_probe_interval(fake, store, client):
    enqueue_events(store, "alice", 3)
    with freeze_time(START) as frozen:
        drainer = drainer_for(store, client, pause_probe_interval=60.0)
        fake.fail_next(1, status=401, body={"errors": ["Could not authenticate"]})
        assert drainer.drain().paused_reason
        frozen.tick(1.1)  # the first probe is due after a second
        assert drainer.drain().delivered == 3
    assert store.stats()["paused_reason"] is None


@both_backends
def test_invalid_project_token_pauses_too(fake, store, client):
    enqueue_events(store, "alice", 1)
    with Exponea(
        "no-such-project", username=fake.username, password=fake.password, url=fake.url
    ) as bad:
        report = drainer_for(store, bad).drain()
    assert report.paused_reason and "Invalid project id" in report.paused_reason
    assert store.stats()["dead"] == 0


def test_per_customer_order_is_kept_when_an_earlier_batch_is_retried(fake, store, client):
    enqueue_events(store, "alice", 60)
    with freeze_time(START) as frozen:
        drainer = drainer_for(store, client, backoff_base=1.0)
        fake.fail_next(1, status=503)
        drainer.drain()
        frozen.tick(2)
        drainer.drain()
    assert delivered_ns(fake, "alice") == list(range(60))


def test_one_customers_next_batch_is_claimed_while_its_batch_is_in_flight(fake, store, client):
    """Pipelining for a single customer (a kiosk's backlog): the drainer's own next batch is
    leased while the one before it is on the wire, and goes out only after that answer."""
    enqueue_events(store, "kiosk", 300)
    seen_next_leased: list[bool] = []

    def send(stored):
        # Wait (bounded) for the next batch to be claimed behind this one: it can only be if
        # the drainer's own batch in flight does not block its customer.
        leased = lambda: store.stats()["in_flight"]  # noqa: E731
        deadline = time.monotonic() + 2.0
        while leased() <= len(stored) and time.monotonic() < deadline:
            time.sleep(0.005)
        seen_next_leased.append(leased() > len(stored))
        return client.tracking.send_stored_batch(stored)

    report = Drainer(store, send, DrainPolicy(rate_limit=10_000.0)).drain()
    assert report.delivered == 300
    assert delivered_ns(fake, "kiosk") == list(range(300))
    assert seen_next_leased[:-1] == [True] * 5  # every batch but the last had one behind it
    assert seen_next_leased[-1] is False


def test_a_batch_claimed_behind_a_failed_one_is_held_back_and_order_kept(fake, store, client):
    """The batch queued behind a failed request holds the same customer's next commands: it
    must not go out, and the pass must not keep claiming batches that are held back."""
    enqueue_events(store, "kiosk", 200)
    with freeze_time(START) as frozen:
        drainer = drainer_for(store, client, backoff_base=1.0)
        fake.fail_next(1, status=503)
        first = drainer.drain()
        assert first.delivered == 0 and first.backoff_until is not None
        assert first.requests == 1  # the batch behind the failure never went out
        frozen.tick(2)
        drainer.drain()
    assert delivered_ns(fake, "kiosk") == list(range(200))
    assert fake.duplicate_events == 0


def test_resuming_after_failures_is_logged_once_though_two_batches_were_claimed(
    fake, store, client, caplog
):
    enqueue_events(store, "kiosk", 300)  # a backlog: two batches on the way at a time
    with freeze_time(START) as frozen, caplog.at_level("INFO", logger="tracker_agent.drain"):
        drainer = drainer_for(store, client, backoff_base=1.0)
        fake.fail_next(2, status=503)
        for _ in range(4):
            drainer.drain()
            frozen.tick(5)
    assert delivered_ns(fake, "kiosk") == list(range(300))
    resumed = [r.getMessage() for r in caplog.records if "delivery resumed" in r.getMessage()]
    assert resumed == ["delivery resumed: after 2 failed attempts"]


@both_backends
def test_a_send_batch_that_raises_unexpectedly_gives_its_rows_back(store):
    def broken(stored):
        raise RuntimeError("a bug in send_batch")

    enqueue_events(store, "alice", 3)
    drainer = Drainer(store, broken, DrainPolicy(rate_limit=10_000.0))
    with pytest.raises(RuntimeError, match="a bug"):
        drainer.drain()
    stats = store.stats()
    assert (stats["pending"], stats["in_flight"], stats["dead"]) == (3, 0, 0)
    drainer.close()


@both_backends
def test_two_drainers_a_slow_server_short_leases_and_a_poison_command(fake, database_url):
    """Bisecting a batch takes one request per half, one after another: longer than one
    lease. Renewed leases keep the other drainer off the rows being worked on."""
    db = database_url
    timing = {"lease_seconds": 2.0, "request_timeout": 0.6, "connect_timeout": 0.3}
    poison = 17
    first, second = make_agent(fake, db, **timing), make_agent(fake, db, **timing)
    try:
        first.tracking.batch_commands(
            [
                first.tracking.add_event({"registered": f"c{n}"}, "view", {"n": n}, batch=True)
                for n in range(50)
            ]
        )
        fake.reject_batches_containing(lambda c: c["data"]["properties"]["n"] == poison)
        fake.latency = 0.4
        results: list[Any] = []
        threads = [
            threading.Thread(target=lambda a=a: results.append(a.flush(timeout=30)))
            for a in (first, second)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(e["properties"]["n"] for e in fake.events) == [
            n for n in range(50) if n != poison
        ]
        assert first.stats()["dead"] == 1
        applied = Counter(
            command["data"]["properties"]["n"]
            for request in fake.requests
            if request.processed and request.path.endswith("/batch") and request.status == 200
            for command in request.json["commands"]
        )
        assert max(applied.values()) <= 2, applied.most_common(3)
    finally:
        first.close()
        second.close()


@both_backends
def test_an_outcome_that_cannot_be_recorded_holds_the_queued_batch_back_and_loses_nothing(
    fake, store, client
):
    from tracker_agent.exceptions import StorageFullError

    enqueue_events(store, "alice", 400)
    record = store.record_settlement
    recorded: list[int] = []

    def disk_full_on_the_second(owner, outcome, now):
        recorded.append(len(outcome.delivered))
        if len(recorded) == 2:  # the server applied batch 2; its outcome cannot be written
            raise StorageFullError("the disk is full")
        return record(owner, outcome, now)

    store.record_settlement = disk_full_on_the_second
    drainer = drainer_for(store, client)
    with pytest.raises(StorageFullError):
        drainer.drain()
    # Batch 3 was queued behind batch 2 (same customer): it never went out, since batch 2's
    # outcome was not durable. Batch 2's answer is settled when its rows are given back.
    assert [len(b) for b in fake.batches] == [50, 50]
    assert store.stats()["delivered"] == 100
    store.record_settlement = record
    report = drainer_for(store, client).drain()
    assert report.delivered == 300
    assert delivered_ns(fake) == list(range(400))
    assert sum(len(b) for b in fake.batches) == 400  # nothing sent twice


_COUNT_STATE_WRITES = {
    "sqlite": [
        "CREATE TABLE state_writes (key TEXT)",
        "CREATE TRIGGER count_state_inserts AFTER INSERT ON agent_state"
        " BEGIN INSERT INTO state_writes VALUES (NEW.key); END",
        "CREATE TRIGGER count_state_updates AFTER UPDATE ON agent_state"
        " BEGIN INSERT INTO state_writes VALUES (NEW.key); END",
    ],
    "postgresql": [
        "CREATE TABLE state_writes (key text)",
        "CREATE FUNCTION count_state_write() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN INSERT INTO state_writes VALUES (NEW.key); RETURN NEW; END $$",
        "CREATE TRIGGER count_state_writes AFTER INSERT OR UPDATE ON agent_state"
        " FOR EACH ROW EXECUTE FUNCTION count_state_write()",
    ],
}


def state_writes(store) -> list[str]:
    """The agent_state keys written since count_state_writes(store), in order."""
    with store.engine.begin() as conn:
        return [k for (k,) in conn.exec_driver_sql("SELECT key FROM state_writes").fetchall()]


def count_state_writes(store) -> None:
    with store.engine.begin() as conn:
        for sql in _COUNT_STATE_WRITES[store.engine.dialect.name]:
            conn.exec_driver_sql(sql)


@both_backends
def test_a_steady_drain_writes_the_delivered_count_and_little_else(fake, store, client):
    """Every agent_state row a settle writes is one every other drainer's settle waits for
    (PostgreSQL holds the row's lock to the commit): a success writes only what it changes,
    and the time of the last success about once a second."""
    enqueue_events(store, "kiosk", 500)  # ten batches, each pipelined behind the one before
    count_state_writes(store)
    with freeze_time(START) as frozen:
        report = drainer_for(store, client).drain()
        assert report.delivered == 500
        writes = state_writes(store)
        counted = [k for k in writes if k.startswith("delivered_total")]
        others = Counter(k for k in writes if not k.startswith("delivered_total"))
        assert len(counted) == 10  # one per batch
        # The first batch writes what a success sets; the one claimed behind it, under the
        # same state, again; none after them (old: every key, every batch: 70 writes).
        assert others and max(others.values()) <= 2, others
        assert store.stats()["delivered"] == 500
        first_success = store.stats()["last_success_at"]

        frozen.tick(0.5)  # within the resolution: the time is not written again
        enqueue_events(store, "kiosk", 50, start=500)
        drainer_for(store, client).drain()
        assert Counter(state_writes(store))["last_success_at"] == others["last_success_at"]
        frozen.tick(1.0)
        enqueue_events(store, "kiosk", 50, start=550)
        drainer_for(store, client).drain()
    stats = store.stats()
    assert stats["last_success_at"] == pytest.approx(first_success + 1.5)
    assert stats["delivered"] == 600
    assert delivered_ns(fake, "kiosk") == list(range(600))


class CountingStore:
    """The store, counting the drain's transactions by kind."""

    def __init__(self, store) -> None:
        self._store = store
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name not in ("record_settlement", "settle_and_claim", "settle", "claim_if"):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


def settling_rows(store) -> int:
    with store.engine.begin() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM settling").scalar_one())


@both_backends
def test_a_claim_of_two_batches_settles_both_in_one_transaction(fake, store, client):
    """claim_batches=2: one claim leases two batches; the first's outcome is only recorded
    when it lets the second go, and the next claim's transaction applies both. Order, counts
    and receipts are as with one batch per claim, and nothing is left in flight."""
    enqueue_events(store, "kiosk", 300)
    enqueue_events(store, "shop", 120, start=1000)
    counting = CountingStore(store)
    report = Drainer(
        counting,
        client.tracking.send_stored_batch,
        DrainPolicy(rate_limit=10_000.0, claim_batches=2),
    ).drain()
    assert report.delivered == 420
    assert delivered_ns(fake, "kiosk") == list(range(300))
    assert delivered_ns(fake, "shop") == list(range(1000, 1120))
    assert all(len(b) <= 50 for b in fake.batches) and len(fake.batches) == 9
    # Nine batches: every outcome recorded (the last one settled instead), and about one
    # claim-and-settle transaction per two batches (was one per batch).
    assert counting.calls["settle_and_claim"] <= 5, counting.calls
    stats = store.stats()
    assert (stats["pending"], stats["in_flight"], stats["delivered"]) == (0, 0, 420)
    assert settling_rows(store) == 0


@both_backends
def test_a_failed_batch_gives_back_the_batch_claimed_with_it(fake, store, client):
    """The second batch of a claim may hold the next commands of the first's customers: when
    the first fails, it is given back unsent, and the retry keeps each customer's order."""
    enqueue_events(store, "kiosk", 100)
    # Real time (PostgreSQL keeps the backoff on its own clock): a 50 ms backoff.
    drainer = drainer_for(store, client, claim_batches=2, backoff_base=0.05)
    fake.fail_next(1, status=503)
    first = drainer.drain()
    assert first.delivered == 0 and len(fake.requests) == 1
    stats = store.stats()
    assert (stats["pending"], stats["in_flight"]) == (100, 0)
    time.sleep(0.2)
    assert drainer.drain().delivered == 100
    assert delivered_ns(fake, "kiosk") == list(range(100))


@pytest.mark.parametrize(
    ("lease", "deadline", "batches"),
    [(60.0, 15.0, 2), (45.0, 15.0, 1), (45.1, 15.0, 2), (31.0, 15.0, 1), (3600.0, 1.0, 2)],
)
def test_a_claim_takes_only_as_many_batches_as_its_lease_outlives(lease, deadline, batches):
    from tracker_agent.policy import claim_batches

    # The last of K batches goes out after the one in flight and the K - 1 before it.
    assert claim_batches(lease, deadline) == batches
    assert lease > (batches + 1) * deadline or batches == 1


def test_an_sqlite_agent_claims_one_batch_at_a_time_and_postgresql_two(fake, tmp_path):
    """Two batches per claim halve PostgreSQL's claims (and its CPU per batch by a quarter); on
    a local file at a raised rate the bigger settle every other batch slowed the drain (see
    Backend)."""
    from tracker_agent.outbox.postgresql import PostgresBackend
    from tracker_agent.outbox.sqlite import SqliteBackend

    with make_agent(fake, tmp_path / "outbox.db") as agent:
        assert agent.drainer.policy.claim_batches == 1
    assert SqliteBackend.max_claim_batches == 1
    assert PostgresBackend.max_claim_batches == 2
