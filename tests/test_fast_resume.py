"""Fast resume (issue 14): while delivery backs off because the API could not be reached at
all, a cheap probe (GET system/time, no tracking data) every reach_probe_interval ends the
backoff as soon as the API answers; a 429 or 5xx backoff is never shortened.

Every test pushes the stored backoff an hour out ("deep in backoff", as after many failures
with backoff_cap raised): delivery within seconds can then only come from a probe.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import both_backends, make_agent, sqlite_url, wait_for
from sqlalchemy import text

from tracker_agent.exceptions import APITimeoutError, RateLimitedError, TransportError
from tracker_agent.outbox.engine import open_outbox
from tracker_agent.outcomes import DrainReport
from tracker_agent.policy import unreachable
from tracker_agent.reach import ReachProbe
from tracker_agent.testing import FakeExponea

DEEP_BACKOFF_SECONDS = 3600.0
PROBE_INTERVAL = 0.3
#: Far below DEEP_BACKOFF_SECONDS: a probe interval and a drain tick, with room for a slow CI.
PROMPT_SECONDS = 10.0
#: These tests are about the backoff: no GET system/time before the first batch (the default;
#: said here so that a changed default cannot make them test the clock gate instead).
NO_CLOCK = {"clock_correction": False}


def track(agent: Any, n: int) -> None:
    agent.tracking.add_event({"registered": f"c{n % 3}"}, "view", {"n": n})


def push_backoff_out(db: Path | str) -> None:
    """As after many failures with a large backoff_cap: the stored backoff (each host's too,
    on PostgreSQL) and the retry time of every waiting row an hour away."""
    until = time.time() + DEEP_BACKOFF_SECONDS
    engine = open_outbox(sqlite_url(db))
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE agent_state SET value = :value WHERE key = 'backoff_until'"
                    " OR substr(key, 1, 14) = 'backoff_until@'"
                ),
                {"value": json.dumps(until)},
            )
            conn.execute(
                text("UPDATE outbox SET next_attempt_at = :until WHERE next_attempt_at > 0"),
                {"until": until},
            )
    finally:
        engine.dispose()


def probes(fake: FakeExponea) -> list[Any]:
    return [r for r in fake.requests if r.path.endswith("/system/time")]


@pytest.fixture
def down(fake: FakeExponea) -> Iterator[FakeExponea]:
    """The fake, stopped (its port refuses connections); started again afterwards."""
    fake.stop()
    try:
        yield fake
    finally:
        fake.start()


@both_backends
def test_delivery_resumes_within_the_probe_interval_when_the_api_comes_back(down, database_url):
    fake, db = down, database_url
    with make_agent(
        fake, db, drain=True, reach_probe_interval=PROBE_INTERVAL, backoff_cap=86_400, **NO_CLOCK
    ) as agent:
        for n in range(5):
            track(agent, n)
        assert wait_for(lambda: agent.stats()["last_error"] is not None, PROMPT_SECONDS)
        assert "TransportError" in agent.stats()["last_error"]
        push_backoff_out(db)
        time.sleep(3 * PROBE_INTERVAL)  # probes meet a refused connection: still backing off
        assert agent.stats()["next_attempt_at"] > time.time() + DEEP_BACKOFF_SECONDS / 2
        fake.start()
        assert wait_for(lambda: len(fake.events) == 5, PROMPT_SECONDS)
        assert agent.stats()["pending"] == 0
    assert sorted(e["properties"]["n"] for e in fake.events) == list(range(5))
    assert fake.duplicate_events == 0
    # What reached the fake after it came back: probes carry nothing; each command went once.
    assert all(r.method == "GET" and not r.body for r in probes(fake))
    assert probes(fake), "resumed without a probe: the test proves nothing"
    assert sum(len(b) for b in fake.batches) == 5


def test_a_flush_with_a_timeout_resumes_when_the_api_comes_back(down, tmp_path):
    fake, db = down, tmp_path / "outbox.db"
    with make_agent(fake, db, reach_probe_interval=PROBE_INTERVAL, **NO_CLOCK) as agent:
        track(agent, 0)
        assert agent.flush().remaining == 1  # refused: backing off
        push_backoff_out(db)
        fake.start()
        result = agent.flush(timeout=PROMPT_SECONDS)
        assert (result.delivered, result.remaining, result.timed_out) == (1, 0, False)
    assert len(fake.events) == 1


def test_a_429_with_retry_after_is_honoured_and_never_probed(fake, tmp_path):
    db = tmp_path / "outbox.db"
    fake.fail_next(status=429, retry_after=DEEP_BACKOFF_SECONDS, path_contains="/batch")
    with make_agent(fake, db, reach_probe_interval=0.1, **NO_CLOCK) as agent:
        track(agent, 0)
        result = agent.flush()
        assert result.remaining == 1 and "RateLimitedError" in (result.last_error or "")
        assert agent.stats()["next_attempt_at"] > time.time() + DEEP_BACKOFF_SECONDS - 60
        for _ in range(5):
            time.sleep(0.15)
            assert agent.drainer.drain().requests == 0
        assert agent.stats()["pending"] == 1
    assert probes(fake) == [] and fake.events == []


def test_a_429_after_a_network_error_is_not_shortened_by_a_probe(down, tmp_path):
    """Another process met a 429 after this one lost the network: the probe is answered, but
    the backoff in force is the server's, and it holds."""
    fake, db = down, tmp_path / "outbox.db"
    with make_agent(fake, db, reach_probe_interval=0.1, **NO_CLOCK) as agent:
        track(agent, 0)
        agent.flush()
        fake.start()
        with sqlite3.connect(db) as conn:  # what back_off writes for a 429
            conn.execute("UPDATE agent_state SET value = 'false' WHERE key = 'backoff_unreachable'")
        conn.close()
        push_backoff_out(db)
        time.sleep(0.15)
        assert agent.drainer.drain().requests == 0
        assert agent.stats()["pending"] == 1
    assert fake.events == [] and probes(fake) == []


def test_a_captive_portal_answer_keeps_its_backoff(fake, tmp_path):
    """An unreadable answer is an answer (see policy.unreachable): no probe shortens it."""
    db = tmp_path / "outbox.db"
    fake.captive_portal_next(path_contains="/batch")
    with make_agent(fake, db, reach_probe_interval=0.1, **NO_CLOCK) as agent:
        track(agent, 0)
        assert agent.flush().remaining == 1
        push_backoff_out(db)
        time.sleep(0.15)
        assert agent.drainer.drain().requests == 0
    assert probes(fake) == [] and fake.events == []


def test_the_probe_sends_no_tracking_data_even_when_the_batch_was_applied(down, tmp_path):
    """A batch whose answer was lost (connection dropped after the server applied it) is sent
    again once, after the probe: never by the probe itself; the fixed timestamp makes the
    second copy a server-side duplicate, as with any retry."""
    fake, db = down, tmp_path / "outbox.db"
    fake.start()
    fake.drop_next(path_contains="/batch")
    with make_agent(fake, db, reach_probe_interval=0.1, **NO_CLOCK) as agent:
        track(agent, 0)
        assert agent.flush().remaining == 1
        push_backoff_out(db)
        time.sleep(0.15)
        report = agent.drainer.drain()
        assert (report.requests, report.delivered) == (1, 1)
    assert len(probes(fake)) == 1
    assert [r.command_count for r in fake.requests if r.path.endswith("/batch")] == [1, 1]


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TransportError("connection refused"), True),
        (APITimeoutError("no answer"), True),
        (TransportError("bad URL", retryable=False), False),
        (RateLimitedError("slow down", status_code=429, retry_after=30), False),
    ],
)
def test_only_a_failure_with_no_answer_at_all_may_be_ended_by_a_probe(exc, expected):
    assert unreachable(exc) is expected


def test_probes_are_spaced_by_the_interval_and_a_failed_request_counts_as_one():
    clock = [0.0]
    asked: list[float] = []

    def probe() -> None:
        asked.append(clock[0])
        raise TransportError("refused")

    reach = ReachProbe(probe, 5.0, clock=lambda: clock[0])
    failed = DrainReport(requests=1, backoff_until=1e9, unreachable=True)
    waiting = DrainReport(backoff_until=1e9, unreachable=True)
    assert not reach.answered(failed)  # the request that just failed was the probe
    for t in range(0, 30):
        clock[0] = float(t)
        assert not reach.answered(waiting)
    assert asked == [5.0, 10.0, 15.0, 20.0, 25.0]
    clock[0] = 100.0
    assert not reach.answered(DrainReport(backoff_until=1e9, unreachable=False))
    assert not reach.answered(DrainReport(paused_reason="401", unreachable=False))
    assert asked[-1] == 25.0


def test_an_answered_probe_says_so():
    reach = ReachProbe(lambda: 1.0, 5.0, clock=lambda: 0.0)
    assert reach.answered(DrainReport(backoff_until=1e9, unreachable=True))
