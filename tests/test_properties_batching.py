"""Property tests of batching: the client's 50-command splitter, result alignment, the drain's
claims (command and byte caps, id order) and its bisection of refused batches."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tracker_agent.api.tracking import align_batch_results
from tracker_agent.client import Exponea
from tracker_agent.drain import Drainer
from tracker_agent.outbox.engine import open_outbox
from tracker_agent.outbox.store import NewCommand, OutboxStore
from tracker_agent.policy import DrainPolicy
from tracker_agent.testing import FakeExponea
from tracker_agent.validation import MAX_BATCH_COMMANDS

# Each example costs a few HTTP requests on loopback.
HTTP = settings(max_examples=40, deadline=None)
BISECT = settings(max_examples=25, deadline=None)  # tens of requests each
PURE = settings(max_examples=100, deadline=None)
CUSTOMERS = ("ann", "bob", "cid")
FAST_RATE = 100_000.0  # requests/s: the rate limiter never waits in these tests
TIMEOUT_SECONDS = 2.0
#: Padding sizes of queued events: mostly small, some large, a few over any byte cap drawn.
PADS = (
    lambda r: r.randint(0, 100),
    lambda r: r.randint(100, 3000),
    lambda r: r.randint(12_000, 15_000),  # the API takes < 16 KB per value
)
PAD_WEIGHTS = (6, 3, 1)


@pytest.fixture(scope="module")
def client(fake_server: FakeExponea) -> Iterator[Exponea]:
    with Exponea(
        fake_server.project_token,
        username=fake_server.username,
        password=fake_server.password,
        url=fake_server.url,
        request_timeout=TIMEOUT_SECONDS,
    ) as exponea:
        yield exponea


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A migrated, empty outbox; each example works on a fresh copy (no migration cost)."""
    path = tmp_path_factory.mktemp("template") / "outbox.db"
    open_outbox(f"sqlite:///{path}").dispose()
    return path


@contextlib.contextmanager
def fresh_store(template: Path) -> Iterator[OutboxStore]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "outbox.db"
        shutil.copyfile(template, path)
        # NORMAL: no fsync per claim/settle (durability is not what these tests are about).
        engine = open_outbox(f"sqlite:///{path}", synchronous="NORMAL")
        store = OutboxStore(engine, max_rows=10**6, max_bytes=10**9)
        try:
            yield store
        finally:
            store.close()
            engine.dispose()


def event_data(n: int, customer: str, pad: int = 0) -> dict[str, Any]:
    return {
        "customer_ids": {"registered": customer},
        "event_type": "page",
        "timestamp": 1_700_000_000 + n / 1000,
        "properties": {"n": n, "pad": "x" * pad},
    }


def enqueue(store: OutboxStore, rows: list[tuple[str, int]]) -> dict[int, int]:
    """Queue one event per (customer, pad); returns {row id: stored size}, ids in queue order."""
    store.enqueue(
        [
            NewCommand(
                "customers/events",
                json.dumps({"registered": customer}),
                json.dumps(event_data(n, customer, pad)),
            )
            for n, (customer, pad) in enumerate(rows)
        ]
    )
    with contextlib.closing(store.engine.raw_connection()) as conn:
        return dict(conn.execute("SELECT id, size FROM outbox ORDER BY id").fetchall())


def delivered_ns(fake: FakeExponea) -> list[int]:
    return [e["properties"]["n"] for e in fake.events]


# --- the client's splitter: batch_commands -------------------------------------------------

COMMAND_KINDS = ("event", "customer", "time")
REJECTED_SHARE = 0.1


def build_command(index: int, kind: str, customer: str) -> dict[str, Any]:
    if kind == "time":
        return {"name": "system/time"}
    if kind == "customer":
        data = {"customer_ids": {"registered": customer}, "properties": {"n": index}}
        return {"name": "customers", "data": data}
    return {"name": "customers/events", "data": event_data(index, customer)}


@HTTP
@given(st.integers(min_value=0, max_value=200), st.randoms(use_true_random=False))
def test_batch_commands_sends_at_most_50_per_request_and_answers_in_input_order(
    fake_server, client, count, rnd
):
    # Sizes come from integers() (spread over 0..200, unlike lists()); contents from a seeded
    # Random, so a failure still reproduces.
    kinds = [rnd.choice(COMMAND_KINDS) for _ in range(count)]
    customers = [rnd.choice(CUSTOMERS) for _ in range(count)]
    rejected = {n for n in range(count) if rnd.random() < REJECTED_SHARE}
    fake_server.reset()
    fake_server.reject_commands(
        lambda c: c.get("data", {}).get("properties", {}).get("n") in rejected, error="no"
    )
    commands = [
        build_command(i, kind, cid)
        for i, (kind, cid) in enumerate(zip(kinds, customers, strict=True))
    ]

    results = client.tracking.batch_commands(commands)

    sizes = [len(batch) for batch in fake_server.batches]
    assert len(sizes) == math.ceil(len(commands) / MAX_BATCH_COMMANDS)
    assert all(1 <= size <= MAX_BATCH_COMMANDS for size in sizes)
    sent = [c for batch in fake_server.batches for c in batch]
    assert [(c["name"], c.get("data")) for c in sent] == [
        (c["name"], c.get("data")) for c in commands
    ]
    assert len(results) == len(commands)
    for index, (command, result) in enumerate(zip(commands, results, strict=True)):
        if command["name"] == "system/time":
            assert type(result) is float
        else:
            assert result is (index not in rejected)
    accepted = [
        i for i, c in enumerate(commands) if c["name"] == "customers/events" and i not in rejected
    ]
    assert delivered_ns(fake_server) == accepted


@PURE
@given(
    st.lists(st.text(min_size=1, max_size=6), unique=True, max_size=60),
    st.randoms(use_true_random=False),
    st.data(),
)
def test_results_are_aligned_by_echoed_command_id_whatever_order_they_come_in(ids, rnd, data):
    outcomes = {command_id: data.draw(st.booleans()) for command_id in ids}
    missing = data.draw(st.sets(st.sampled_from(ids))) if ids else set()
    raw = [{"command_id": i, "success": outcomes[i]} for i in ids if i not in missing]
    rnd.shuffle(raw)

    aligned = align_batch_results(ids, raw)

    assert [r["command_id"] for r in aligned] == ids
    for result in aligned:
        command_id = result["command_id"]
        if command_id in missing:
            assert result["success"] is False and result.get("missing") is True
        else:
            assert result["success"] is outcomes[command_id] and not result.get("missing")


# --- the drain's claims: command cap, byte cap, id order -----------------------------------


@BISECT
@given(
    st.integers(min_value=1, max_value=60),
    st.randoms(use_true_random=False),
    st.integers(min_value=1, max_value=MAX_BATCH_COMMANDS),
    st.integers(min_value=200, max_value=12_000),
)
def test_drained_batches_respect_both_caps_and_keep_each_customers_order(
    fake_server, client, template, count, rnd, batch_size, max_bytes
):
    rows = [(rnd.choice(CUSTOMERS), rnd.choices(PADS, PAD_WEIGHTS)[0](rnd)) for _ in range(count)]
    fake_server.reset()
    with fresh_store(template) as store:
        sizes = enqueue(store, rows)
        policy = DrainPolicy(batch_size=batch_size, batch_max_bytes=max_bytes, rate_limit=FAST_RATE)
        report = Drainer(store, client.tracking.send_stored_batch, policy).drain()
        assert report.delivered == len(rows) and store.stats()["pending"] == 0

    batches = [[int(c["command_id"]) for c in batch] for batch in fake_server.batches]
    sent = [i for batch in batches for i in batch]
    assert sorted(sent) == list(sizes)  # every row exactly once
    customer_of = dict(zip(sizes, (customer for customer, _ in rows), strict=True))
    for customer in CUSTOMERS:  # per-customer FIFO (the pipeline may reorder customers)
        mine = [i for i in sent if customer_of[i] == customer]
        assert mine == sorted(mine)
    for batch in batches:
        total = sum(sizes[i] for i in batch)
        assert batch == sorted(batch)  # each claim takes the oldest eligible rows in order
        assert len(batch) <= batch_size
        assert total <= max_bytes or len(batch) == 1  # only a lone oversize row may exceed
    arrived = [(e["customer_ids"]["registered"], e["properties"]["n"]) for e in fake_server.events]
    for customer in CUSTOMERS:
        ns = [n for who, n in arrived if who == customer]
        assert ns == sorted(ns)
    assert len(arrived) == len(rows)


# --- the drain's bisection of refused batches ------------------------------------------------


@BISECT
@given(st.integers(min_value=1, max_value=60), st.data())
def test_bisection_dead_letters_exactly_the_poison_and_delivers_the_rest_in_order(
    fake_server, client, template, count, data
):
    numbers = list(range(count))
    poison = data.draw(st.sets(st.sampled_from(numbers), max_size=6), label="poison")
    refused = data.draw(st.sets(st.sampled_from(numbers), max_size=4), label="refused") - poison
    customers = data.draw(st.lists(st.sampled_from(CUSTOMERS), min_size=count, max_size=count))
    batch_size = data.draw(st.integers(min_value=1, max_value=MAX_BATCH_COMMANDS), label="batch")
    fake_server.reset()
    # A poison command makes the server refuse its whole batch (400); a refused one is
    # rejected alone inside a 200 answer.
    fake_server.reject_batches_containing(lambda c: c["data"]["properties"]["n"] in poison)
    fake_server.reject_commands(lambda c: c["data"]["properties"]["n"] in refused)
    with fresh_store(template) as store:
        ids = list(enqueue(store, [(customer, 0) for customer in customers]))
        policy = DrainPolicy(batch_size=batch_size, rate_limit=FAST_RATE)
        report = Drainer(store, client.tracking.send_stored_batch, policy).drain()
        dead = {ids.index(d.id): d for d in store.list_dead()}
        assert store.stats()["pending"] == 0

    assert set(dead) == poison | refused
    assert all(dead[n].status_code == 400 for n in poison)
    assert report.dead_lettered == len(poison | refused)
    arrived = [(e["customer_ids"]["registered"], e["properties"]["n"]) for e in fake_server.events]
    assert sorted(n for _, n in arrived) == [n for n in numbers if n not in poison | refused]
    for customer in CUSTOMERS:  # each customer's commands arrive in the order they were made
        ns = [n for who, n in arrived if who == customer]
        assert ns == sorted(ns)
    assert fake_server.duplicate_events == 0
    # Bisection, not one request per command: each poison costs at most two requests per level.
    # The pipeline may add one smaller batch per full one (claimed while customers are in
    # flight), hence the factor 2 on the plain batch count.
    first_batches = math.ceil(count / batch_size)
    levels = math.ceil(math.log2(batch_size)) if batch_size > 1 else 0
    assert len(fake_server.batches) <= 2 * first_batches + 2 * levels * len(poison)


def test_a_lone_oversize_row_is_sent_alone_rather_than_stuck(fake_server, client, template):
    fake_server.reset()
    with fresh_store(template) as store:
        sizes = enqueue(store, [("ann", 10), ("ann", 5000), ("ann", 10)])
        policy = DrainPolicy(batch_max_bytes=1000, rate_limit=FAST_RATE)
        assert Drainer(store, client.tracking.send_stored_batch, policy).drain().delivered == 3
    assert [len(b) for b in fake_server.batches] == [1, 1, 1]
    assert max(sizes.values()) > 1000
    assert delivered_ns(fake_server) == [0, 1, 2]
