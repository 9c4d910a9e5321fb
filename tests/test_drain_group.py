"""concurrent_batches: several drainers in one process, several batches on the wire at once,
each customer's commands still in order and never in two requests at the same time."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from typing import Any

import pytest
from conftest import both_backends, make_agent

from tracker_agent import TrackerAgent
from tracker_agent.drain import Drainer
from tracker_agent.drain_group import DrainerGroup, merge_reports
from tracker_agent.exceptions import ConfigError
from tracker_agent.outcomes import DrainReport

WAIT_SECONDS = 20.0


def agent_on(fake: Any, database_url: str, **settings: Any) -> TrackerAgent:
    settings.setdefault("rate_limit", 10_000.0)
    return make_agent(fake, database_url, **settings)


class Wire:
    """Wraps a drainer's send_batch: which customers each request on the wire holds, and the
    most requests seen on the wire at once."""

    def __init__(self, send: Any, gate: threading.Barrier | None = None) -> None:
        self._send = send
        self._gate = gate
        self._lock = threading.Lock()
        self.on_wire: list[set[str]] = []
        self.most = 0
        self.overlaps: list[str] = []
        self.requests = 0

    def __call__(self, commands: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
        customers = {json.dumps(json.loads(data)["customer_ids"]) for _, data, _ in commands}
        with self._lock:
            self.overlaps += sorted(c for held in self.on_wire for c in held & customers)
            self.on_wire.append(customers)
            self.most = max(self.most, len(self.on_wire))
            self.requests += 1
            gated = self._gate is not None and self.requests <= self._gate.parties
        try:
            if gated:
                # The first requests wait until all of them are on the wire (else
                # BrokenBarrierError, and that batch backs off).
                self._gate.wait(WAIT_SECONDS)
            return self._send(commands)
        finally:
            with self._lock:
                self.on_wire.remove(customers)


def delivered_in_order(fake: Any, expected: dict[str, list[int]]) -> None:
    got: dict[str, list[int]] = defaultdict(list)
    for event in fake.events:
        got[event["customer_ids"]["registered"]].append(event["properties"]["n"])
    assert dict(got) == expected


def enqueue(agent: TrackerAgent, counts: dict[str, int]) -> dict[str, list[int]]:
    """Each customer's events, interleaved round-robin; what each customer must receive."""
    expected: dict[str, list[int]] = {c: list(range(n)) for c, n in counts.items()}
    for n in range(max(counts.values())):
        for customer, count in counts.items():
            if n < count:
                agent.tracking.add_event({"registered": customer}, "view", {"n": n})
    return expected


@both_backends
def test_four_batches_go_on_the_wire_at_once_and_each_is_delivered_once(fake, database_url):
    with agent_on(fake, database_url, concurrent_batches=4) as agent:
        assert isinstance(agent.drainer, DrainerGroup) and len(agent.drainer.owners) == 4
        # 8 batches of 50 customers each: a drainer holds at most two before an answer.
        expected = enqueue(agent, {f"c{i}": 1 for i in range(400)})
        # The first four requests wait until all four are on the wire: one drainer alone
        # would never get past its first (BrokenBarrierError after WAIT_SECONDS).
        wire = Wire(agent.drainer.send_batch, threading.Barrier(4))
        agent.drainer.send_batch = wire
        result = agent.flush()
    assert (result.delivered, result.remaining, result.last_error) == (400, 0, None)
    assert wire.most == 4 and wire.overlaps == []
    assert len(fake.received_events) == 400  # none sent twice
    delivered_in_order(fake, expected)


@both_backends
def test_one_customers_backlog_is_never_in_two_requests_at_once(fake, database_url):
    """A kiosk's backlog: the drainers take turns on its customer; order holds."""
    with agent_on(fake, database_url, concurrent_batches=4) as agent:
        expected = enqueue(agent, {"kiosk": 600})
        fake.latency = 0.01  # answers late enough for the drainers to try to overlap
        wire = Wire(agent.drainer.send_batch)
        agent.drainer.send_batch = wire
        result = agent.flush()
    assert (result.delivered, result.remaining) == (600, 0)
    assert wire.overlaps == [] and wire.most == 1
    assert len(fake.received_events) == 600
    delivered_in_order(fake, expected)


@both_backends
def test_mixed_customers_with_a_slow_server_keep_each_customers_order(fake, database_url):
    counts = {"big": 300, **{f"c{i}": 1 + i % 7 for i in range(150)}}
    with agent_on(fake, database_url, concurrent_batches=3, batch_size=20) as agent:
        expected = enqueue(agent, counts)
        fake.latency = 0.005
        wire = Wire(agent.drainer.send_batch)
        agent.drainer.send_batch = wire
        result = agent.flush()
    total = sum(counts.values())
    assert (result.delivered, result.remaining) == (total, 0)
    assert wire.overlaps == [] and wire.most >= 2
    assert len(fake.received_events) == total
    delivered_in_order(fake, expected)


def test_a_backoff_met_by_one_drainer_ends_the_pass_and_keeps_every_row(fake, tmp_path):
    with agent_on(fake, tmp_path / "o.db", concurrent_batches=4) as agent:
        enqueue(agent, {f"c{i}": 3 for i in range(100)})
        fake.fail_next(1, status=503, path_contains="batch")
        result = agent.flush()
        stats = agent.stats()
    assert result.last_error is not None and "503" in result.last_error
    assert result.delivered + result.remaining == 300 and result.remaining > 0
    assert stats["in_flight"] == 0  # every drainer's batch settled or given back
    assert "503" in stats["last_error"]


def test_stop_gives_back_what_every_drainer_holds(fake, tmp_path):
    release = threading.Event()
    with agent_on(fake, tmp_path / "o.db", concurrent_batches=3, shutdown_grace=0.2) as agent:
        enqueue(agent, {f"c{i}": 1 for i in range(300)})  # two batches for each drainer
        send = agent.drainer.send_batch
        started = threading.Barrier(4)

        def stuck(commands: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
            started.wait(WAIT_SECONDS)
            release.wait(WAIT_SECONDS)
            return send(commands)

        agent.drainer.send_batch = stuck
        agent.start()
        agent._scheduler.wake()  # type: ignore[union-attr]
        started.wait(WAIT_SECONDS)  # three requests on the wire, one per drainer
        held = agent.stats()["in_flight"]
        assert agent.stop() is False  # the requests outlive the grace
        assert agent.stats()["in_flight"] == 0 < held
        release.set()
    assert held >= 150  # one batch on the wire and one queued behind it, or more


def test_concurrent_batches_is_a_bounded_setting(fake, tmp_path):
    with pytest.raises(ConfigError, match=r"concurrent_batches.*between 1 and 16"):
        agent_on(fake, tmp_path / "o.db", concurrent_batches=17)
    with agent_on(fake, tmp_path / "o.db") as agent:
        assert isinstance(agent.drainer, Drainer)  # the default: one batch on the wire


def test_merged_report_adds_counts_and_keeps_the_wait():
    backing_off = DrainReport(requests=1, backoff_until=5.0, last_error="HTTP 503")
    delivering = DrainReport(requests=3, delivered=150)
    for order in ((backing_off, delivering), (delivering, backing_off)):
        merged = merge_reports(order)
        assert (merged.requests, merged.delivered) == (4, 150)
        assert merged.backoff_until == 5.0 and merged.last_error == "HTTP 503"
    paused = DrainReport(paused_reason="401")
    assert merge_reports([paused, backing_off]).paused_reason == "401"


def test_a_group_needs_two_drainers_sharing_one_stop_flag(store_and_send):
    store, send = store_and_send
    with pytest.raises(ValueError, match="at least two"):
        DrainerGroup([Drainer(store, send)])
    with pytest.raises(ValueError, match="share one stopping"):
        DrainerGroup([Drainer(store, send), Drainer(store, send)])
    stopping = threading.Event()
    group = DrainerGroup([Drainer(store, send, stopping=stopping) for _ in range(2)])
    assert len(set(group.owners)) == 2 and group.stopping is stopping


@pytest.fixture
def store_and_send(fake, tmp_path):
    with agent_on(fake, tmp_path / "o.db") as agent:
        yield agent.store, agent.drainer.send_batch
