"""Hostile networks: captive portals, redirects, trickled and oversized answers, truncated JSON,
wrong result counts. A TrackerAgent draining in the background through a seeded minute of them.

The contract (DESIGN.md, "Delivery semantics"): an answer we cannot read is a network fault,
so delivery backs off and retries, with the error in status; only the server's own refusal
dead-letters. Every request ends by its total deadline (connect + read timeout).

Why "each command applied at most twice" holds in the soak: every fault here except
mangle_results_next answers instead of the API (nothing applied), and a mangled batch is
applied and then resent whole. A mangle is queued once per phase, and the phase ends only
after a batch was delivered past it, i.e. after the mangled batch itself went through again
(its rows are the oldest due ones, so they make up the next batch claimed after the backoff).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_for

from tracker_agent import TrackerAgent
from tracker_agent.testing import FakeExponea

SEED = int(os.environ.get("HOSTILE_SEED", "9090"))

REQUEST_TIMEOUT_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 0.5
DEADLINE_SECONDS = REQUEST_TIMEOUT_SECONDS + CONNECT_TIMEOUT_SECONDS
DEADLINE_SLACK_SECONDS = 1.0  # thread wake-ups on a loaded 2-core machine
TRICKLE_INTERVAL_SECONDS = 0.2  # a byte every 0.2 s: never trips the 1 s read timeout
AGENT_SETTINGS: dict[str, Any] = {
    "drain": False,  # the tests deliver with flush()
    "request_timeout": REQUEST_TIMEOUT_SECONDS,
    "connect_timeout": CONNECT_TIMEOUT_SECONDS,
    "lease_seconds": 5.0,  # > two deadlines: a batch queued behind one in flight
    "drain_interval": 0.1,
    "backoff_base": 0.05,
    "backoff_cap": 0.5,
    "pause_probe_interval": 0.5,
    "rate_limit": 1000,
}
BATCH_COMMANDS = 50

MODE_USES = 1_000_000  # a fault queued this many times acts on every batch until cleared
TOTAL_EVENTS = 2000
PRODUCE_SECONDS = 50.0  # the events are enqueued over this long, evenly in seeded bursts
SOAK_SECONDS = 44.0  # no new phase starts after this: the producer outlives the last phase
PHASE_SECONDS = (1.5, 3.0)
GAP_SECONDS = (0.5, 1.2)
PHASE_REACH_SECONDS = 6.0  # bound on waiting for a fault to reach the drain / a delivery after
FINAL_FLUSH_SECONDS = 30.0
POLL_SECONDS = 0.05

TRUNCATED_BATCH_ANSWER = '{"success": true, "start_time": 1.0, "results": [{"success": tr'
PROXY_400_PAGE = "<html><head><title>400 Bad Request</title></head><body>nginx</body></html>"

# mode -> what status shows after it: an unreadable answer, or the deadline cutting a request
FAULT_MODES = {
    "captive-html": "InvalidResponseError",
    "captive-302": "InvalidResponseError",
    "trickle": "APITimeoutError",
    "truncated-json": "InvalidResponseError",
    "no-results": "InvalidResponseError",
    "proxy-html-400": "InvalidResponseError",
    "oversize": "InvalidResponseError",
    "wrong-count": "InvalidResponseError",
    "503": "ServerError",
    "drop": "TransportError",
}


@pytest.fixture
def fake() -> Iterator[FakeExponea]:
    with FakeExponea() as server:
        yield server


def open_agent(fake: FakeExponea, tmp_path: Path, **overrides: Any) -> TrackerAgent:
    settings = {**AGENT_SETTINGS, **overrides}
    return TrackerAgent(
        fake.project_token,
        username=settings.pop("username", fake.username),
        password=settings.pop("password", fake.password),
        url=fake.url,
        database_url=f"sqlite:///{tmp_path / 'outbox.db'}",
        **settings,
    )


def track(agent: TrackerAgent, first: int, count: int) -> None:
    for n in range(first, first + count):
        assert agent.tracking.add_event({"registered": f"c{n % 7}"}, "hostile", {"id": n})


# ---------------------------------------------------------------------------- focused cases


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (
            lambda f: f.captive_portal_next(MODE_USES, path_contains="/batch"),
            "InvalidResponseError",
        ),
        (
            lambda f: f.trickle_next(1, TRICKLE_INTERVAL_SECONDS, path_contains="/batch"),
            "APITimeoutError",
        ),
    ],
    ids=["captive-portal", "trickle"],
)
def test_the_error_shows_in_status_and_nothing_is_dead_lettered(fake, tmp_path, fault, error):
    with open_agent(fake, tmp_path) as agent:
        track(agent, 0, 120)
        fault(fake)
        first = agent.flush()  # stops at the first backoff
        assert first.dead_lettered == 0 and first.remaining == 120
        stats = agent.stats()
        assert stats["last_error"].startswith(error), stats["last_error"]
        assert (stats["dead"], stats["paused_reason"]) == (0, None)
        fake.clear_faults()
        done = agent.flush(timeout=FINAL_FLUSH_SECONDS)
        assert (done.remaining, done.dead_lettered) == (0, 0)
    assert sorted(e["properties"]["id"] for e in fake.events) == list(range(120))


def test_flush_against_a_trickling_server_returns_within_its_timeout_and_one_deadline(
    fake, tmp_path
):
    timeout = 2.0
    with open_agent(fake, tmp_path) as agent:
        track(agent, 0, 10)
        fake.trickle_next(MODE_USES, TRICKLE_INTERVAL_SECONDS, path_contains="/batch")
        started = time.monotonic()
        result = agent.flush(timeout=timeout)
        took = time.monotonic() - started
        assert took <= timeout + DEADLINE_SECONDS + DEADLINE_SLACK_SECONDS, took
        assert result.timed_out and result.remaining == 10 and result.dead_lettered == 0
        assert result.last_error and result.last_error.startswith("APITimeoutError")
        fake.clear_faults()
        assert agent.flush(timeout=FINAL_FLUSH_SECONDS).remaining == 0

    # The server saw each trickled request's connection close, at its deadline (the batches:
    # the clock correction's GET system/time before them was answered at once).
    def batches() -> list[Any]:
        return [r for r in fake.requests if r.path.endswith("/batch")]

    trickled = [r for r in batches() if not r.processed]
    assert trickled
    assert wait_for(lambda: all(r.hung_up_at for r in batches()[: len(trickled)]), 2.0)
    for request in batches()[: len(trickled)]:
        assert request.hung_up_at - request.received_at <= DEADLINE_SECONDS + 0.5


def test_an_agent_with_a_password_outside_latin1_delivers(tmp_path):
    password = "pässwörd€"
    with FakeExponea(password=password) as fake:
        with open_agent(fake, tmp_path, password=password) as agent:
            track(agent, 0, 3)
            result = agent.flush(timeout=FINAL_FLUSH_SECONDS)
            stats = agent.stats()
        assert (result.delivered, result.remaining) == (3, 0)
        assert (stats["dead"], stats["paused_reason"], stats["in_flight"]) == (0, None, 0)
        assert len(fake.events) == 3


# ---------------------------------------------------------------------------- the soak


def enter_mode(fake: FakeExponea, mode: str, rng: random.Random) -> None:
    batch = "/batch"
    if mode == "captive-html":
        fake.captive_portal_next(MODE_USES, path_contains=batch)
    elif mode == "captive-302":
        fake.captive_portal_next(MODE_USES, redirect=True, path_contains=batch)
    elif mode == "trickle":
        fake.trickle_next(MODE_USES, TRICKLE_INTERVAL_SECONDS, path_contains=batch)
    elif mode == "truncated-json":
        body = TRUNCATED_BATCH_ANSWER
        fake.fail_next(MODE_USES, 200, body, content_type="application/json", path_contains=batch)
    elif mode == "no-results":
        fake.fail_next(MODE_USES, 200, {"success": True}, path_contains=batch)
    elif mode == "proxy-html-400":
        html = "text/html"
        fake.fail_next(MODE_USES, 400, PROXY_400_PAGE, content_type=html, path_contains=batch)
    elif mode == "oversize":
        fake.oversize_next(MODE_USES, declare_length=rng.random() < 0.5, path_contains=batch)
    elif mode == "wrong-count":
        fake.mangle_results_next(1, keep=0)  # applied, and once only (see the docstring)
    elif mode == "503":
        fake.fail_next(MODE_USES, 503, path_contains=batch)
    else:
        assert mode == "drop", mode
        fake.drop_next(MODE_USES, path_contains=batch)


def fault_reached(fake: FakeExponea, mode: str) -> bool:
    if mode == "wrong-count":
        return fake.pending_faults == 0
    return fake.pending_faults < MODE_USES


@dataclass
class Phase:
    mode: str
    reached: bool  # the fault acted on at least one batch request
    last_error: str | None  # status at the end of the phase
    error_is_new: bool  # ...recorded during this phase


@dataclass
class Soak:
    """Runs the seeded fault phases, each followed by a healthy gap."""

    fake: FakeExponea
    agent: TrackerAgent
    rng: random.Random
    phases: list[Phase] = field(default_factory=list)
    mangles: int = 0

    def run_phase(self, mode: str) -> None:
        began, began_wall = time.monotonic(), time.time()
        enter_mode(self.fake, mode, self.rng)
        end = began + self.rng.uniform(*PHASE_SECONDS)
        reached = wait_for(lambda: fault_reached(self.fake, mode), PHASE_REACH_SECONDS)
        wait_for(lambda: time.monotonic() >= end, PHASE_SECONDS[1])
        stats = self.agent.stats()
        self.fake.clear_faults()
        self.mangles += mode == "wrong-count" and reached
        error_is_new = (stats["last_error_at"] or 0) >= began_wall
        self.phases.append(Phase(mode, reached, stats["last_error"], error_is_new))
        self.healthy_gap()

    def healthy_gap(self) -> None:
        """A healthy spell that lasts until a batch was delivered after the fault ended."""
        cleared = time.time()
        gap_end = time.monotonic() + self.rng.uniform(*GAP_SECONDS)

        def delivered() -> bool:
            stats = self.agent.stats()
            return (stats["last_success_at"] or 0) > cleared or stats["pending"] == 0

        assert wait_for(delivered, PHASE_REACH_SECONDS), f"stuck after {self.phases[-1]}"
        wait_for(lambda: time.monotonic() >= gap_end, GAP_SECONDS[1])

    def schedule(self) -> Iterator[str]:
        """Every fault mode once in a seeded order, then seeded picks."""
        modes = list(FAULT_MODES)
        self.rng.shuffle(modes)
        yield from modes
        while True:
            yield self.rng.choice(list(FAULT_MODES))


def produce(agent: TrackerAgent, stop: threading.Event, rng: random.Random) -> None:
    """Enqueue TOTAL_EVENTS in seeded bursts, evenly over PRODUCE_SECONDS."""
    began = time.monotonic()
    n = 0
    while n < TOTAL_EVENTS and not stop.is_set():
        burst = min(rng.randint(1, 19), TOTAL_EVENTS - n)
        track(agent, n, burst)
        n += burst
        due = began + PRODUCE_SECONDS * n / TOTAL_EVENTS
        stop.wait(max(0.0, due - time.monotonic()))


def applied_per_event(fake: FakeExponea) -> Counter[int]:
    """How many times the server handled each event: the batches of processed requests."""
    applied: Counter[int] = Counter()
    for request in fake.requests:
        if request.processed and request.path.endswith("/batch") and request.status == 200:
            for command in request.json["commands"]:
                applied[command["data"]["properties"]["id"]] += 1
    return applied


@pytest.mark.chaos
@pytest.mark.slow
def test_a_minute_of_hostile_network_loses_nothing_buries_nothing_and_applies_at_most_twice(
    fake, tmp_path, caplog
):
    rng = random.Random(SEED)
    stop = threading.Event()
    began = time.monotonic()
    with open_agent(fake, tmp_path) as agent:
        agent.start()
        producer = threading.Thread(target=produce, args=(agent, stop, random.Random(SEED + 1)))
        producer.start()
        soak = Soak(fake, agent, rng)
        try:
            for mode in soak.schedule():
                if time.monotonic() - began >= SOAK_SECONDS:
                    break
                soak.run_phase(mode)
                assert agent.stats()["dead"] == 0, f"dead letters after {mode}"
        except BaseException:
            stop.set()
            raise
        finally:
            producer.join(PRODUCE_SECONDS)
        fake.clear_faults()
        result = agent.flush(timeout=FINAL_FLUSH_SECONDS)
        stats = agent.stats()
    took = time.monotonic() - began

    summary = f"seed={SEED} took={took:.1f}s mangles={soak.mangles} phases={soak.phases}"
    print(summary)
    assert not producer.is_alive(), summary
    assert (result.remaining, stats["pending"], stats["in_flight"]) == (0, 0, 0), summary
    assert stats["dead"] == 0 and result.dead_lettered == 0, summary
    assert stats["paused_reason"] is None, summary
    # Nothing lost: every enqueued event reached the server, and was stored once.
    ids = [e["properties"]["id"] for e in fake.events]
    assert sorted(ids) == list(range(TOTAL_EVENTS)), summary
    # At least once, at most twice: only a mangled answer's batch is applied again.
    applied = applied_per_event(fake)
    assert set(applied) == set(range(TOTAL_EVENTS)), summary
    assert max(applied.values()) <= 2, summary
    assert sum(applied.values()) - TOTAL_EVENTS <= BATCH_COMMANDS * soak.mangles, summary
    received = Counter(e["properties"]["id"] for e in fake.received_events)
    assert received == applied, summary
    # Every fault reached the agent, and status named what it was.
    assert {phase.mode for phase in soak.phases} == set(FAULT_MODES), summary
    for phase in soak.phases:
        assert phase.reached and phase.error_is_new, phase
        assert (phase.last_error or "").startswith(FAULT_MODES[phase.mode]), phase
    # No request outlived its deadline by more than the slack (the server saw each close).
    for request in fake.requests:
        if request.hung_up_at is not None and not request.processed:
            assert request.hung_up_at - request.received_at <= DEADLINE_SECONDS + 1.0
    for record in caplog.records:
        if record.levelno >= logging.WARNING:
            assert "dead-letter" not in record.getMessage()
            assert not record.exc_info, record.getMessage()
