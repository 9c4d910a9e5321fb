"""An app that logs at INFO hears from tracker-agent what matters, not its libraries' chatter:
no APScheduler line per tick, no Alembic lines on a first open, one line per pause (also in
the daemon), no delay that reads "0.0s"; `flush` says why it stopped; `demo` agrees with
itself however often it runs."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from conftest import FAST_BACKOFF_ENV, cli_env, cli_invoker, make_agent, sqlite_url, wait_for

from tracker_agent.agent import FlushResult
from tracker_agent.cli.queue import why_flush_stopped
from tracker_agent.cli.run import _state_reporter
from tracker_agent.drain import Drainer
from tracker_agent.outcomes import human_seconds
from tracker_agent.policy import DrainPolicy
from tracker_agent.sdnotify import Notifier

#: A delay or duration printed as zero: "0.0s", "0.0 s", "0 ms", "0s".
ZERO_DELAY = re.compile(r"(?<![\d.])0(\.0+)? ?(s|ms)\b")


def test_an_app_at_info_gets_no_scheduler_or_migration_chatter(fake, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with make_agent(fake, tmp_path / "outbox.db", drain_interval=0.05) as agent:
        agent.start()
        assert wait_for(agent.background_drain_idle, 2)
        agent.tracking.add_event({"registered": "a"}, "view")
        assert wait_for(lambda: len(fake.events) == 1, 5)
    chatty = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.INFO and r.name.startswith(("apscheduler", "alembic"))
    ]
    assert chatty == []
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("tracker_agent")]
    assert any(m.startswith("migrating outbox") for m in ours)
    assert len(ours) <= 3, ours


def test_a_pause_is_one_line(fake, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    fake.revoke_credentials()
    with make_agent(fake, tmp_path / "outbox.db", pause_probe_interval=0.2) as agent:
        agent.tracking.add_event({"registered": "a"}, "view")
        agent.flush(timeout=1.0)  # the pause, then a few failed probes
    paused = [r for r in caplog.records if "paused" in r.getMessage()]
    assert len(paused) == 1 and paused[0].levelno == logging.WARNING


def test_a_daemon_logs_a_pause_once_at_warning_not_error_plus_warning(fake, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    fake.revoke_credentials()
    stop = threading.Event()
    with make_agent(fake, tmp_path / "outbox.db", pause_probe_interval=0.2) as agent:
        agent.tracking.add_event({"registered": "a"}, "view")
        daemon = threading.Thread(
            target=agent.run,
            args=(stop,),
            kwargs={"on_state_change": _state_reporter(Notifier({}))},
        )
        daemon.start()
        try:  # the pause, then failed probes every 0.2 s
            assert wait_for(lambda: len(fake.batches) >= 4, 10)
        finally:
            stop.set()
            daemon.join()
    paused = [r for r in caplog.records if "paused" in r.getMessage() and r.levelno >= logging.INFO]
    assert [r.levelno for r in paused] == [logging.WARNING], [r.getMessage() for r in paused]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "under 1 ms"),
        (0.0004, "under 1 ms"),
        (-0.5, "under 1 ms"),
        (0.0006, "1 ms"),
        (0.04, "40 ms"),
        (0.9994, "999 ms"),
        (1.0, "1.0 s"),
        (2.46, "2.5 s"),
    ],
)
def test_delays_are_written_for_people_never_as_zero(seconds, text):
    assert human_seconds(seconds) == text


def test_a_backoff_of_almost_nothing_is_not_logged_as_zero_seconds(fake, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    with make_agent(fake, tmp_path / "outbox.db") as agent:
        agent.tracking.add_event({"registered": "a"}, "view")
        send = agent.client.tracking.send_stored_batch
        no_jitter = Drainer(
            agent.store, send, DrainPolicy(), rng=lambda: 0.0
        )  # full jitter's low end
        fake.fail_next(1, status=503)
        assert no_jitter.drain().backoff_until is not None
        assert no_jitter.drain().delivered == 1
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("tracker_agent")]
    assert any("backing off under 1 ms" in m for m in messages), messages
    assert not [m for m in messages if ZERO_DELAY.search(m)]


# -- flush --timeout and demo ----------------------------------------------------------------


def flushed(**fields: Any) -> FlushResult:
    values: dict[str, Any] = {
        "delivered": 0,
        "dead_lettered": 0,
        "remaining": 5,
        "paused_reason": None,
        "last_error": None,
        "timed_out": False,
    }
    return FlushResult(**{**values, **fields})


NOW = 1_000_000.0


@pytest.mark.parametrize(
    ("result", "stats", "why"),
    [
        (
            flushed(paused_reason="AuthenticationError: HTTP 401: no", timed_out=True),
            {},
            "delivery is paused: AuthenticationError: HTTP 401: no",
        ),
        (
            flushed(timed_out=True, last_error="ServerError: HTTP 503: down"),
            {"next_attempt_at": NOW + 12},
            "timed out; last error: ServerError: HTTP 503: down; next attempt in 12s",
        ),
        (
            flushed(timed_out=True),
            {"in_flight": 50},
            "timed out; 50 in flight with another drainer",
        ),
        (flushed(timed_out=True), {}, "timed out; still delivering when time ran out"),
        (
            flushed(last_error="RateLimitedError: HTTP 429: slow down"),
            {"next_attempt_at": NOW + 0.2},
            "last error: RateLimitedError: HTTP 429: slow down; next attempt in under 1s",
        ),
        (flushed(), {"next_attempt_at": NOW - 5}, "waiting for a retry"),
    ],
)
def test_why_a_flush_stopped_names_the_reason(result, stats, why):
    assert why_flush_stopped(result, stats, now=NOW) == why


@pytest.fixture
def env(fake: Any, tmp_path: Path, isolated_cli: None) -> dict[str, str]:
    return cli_env(fake, sqlite_url(tmp_path / "outbox.db"), **FAST_BACKOFF_ENV)


def invoke(env: dict[str, str], *args: str) -> Result:
    return cli_invoker(env)(*args)


def test_flush_timeout_says_it_timed_out_and_what_kept_failing(fake, env):
    assert invoke(env, "track", "event", "--customer", "registered=a", "--type", "t").exit_code == 0
    fake.fail_next(10_000, status=503)
    result = invoke(env, "flush", "--timeout", "0.5")
    assert result.exit_code == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("tracker-agent: error: 1 commands remain (timed out; last error: ")
    assert "ServerError: HTTP 503" in line


def delivered_and_received(result: Result) -> tuple[int, int]:
    assert result.exit_code == 0, result.output
    delivered = re.search(r"^delivered\s+([\d,]+)$", result.stdout, re.MULTILINE)
    received = re.search(r"the fake API received (\d+) commands", result.stdout)
    assert delivered and received, result.stdout
    return int(delivered.group(1).replace(",", "")), int(received.group(1))


def test_demo_run_twice_reports_counts_that_agree(env, tmp_path):
    state = {**env, "XDG_STATE_HOME": str(tmp_path / "state")}
    first = delivered_and_received(invoke(state, "demo", "--events", "20", "--failures", "1"))
    second = delivered_and_received(invoke(state, "demo", "--events", "20", "--failures", "1"))
    assert first == second == (21, 21)
