"""TrackerAgent's life cycle: delivery starts by itself, close and interpreter exit deliver for
a bounded time, drain=False leaves delivery to others, enabled=False stores and sends nothing,
and one warning when queued commands have nobody to deliver them."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import click
import pytest
from conftest import AGENT_DRAIN_INTERVAL_SECONDS, make_agent, sqlite_url, wait_for

from tracker_agent import ConfigError, TrackerAgent, ValidationError
from tracker_agent.cli.context import CliContext
from tracker_agent.outbox.stats import read_status
from tracker_agent.testing import FakeExponea

ROOT = Path(__file__).resolve().parent.parent
#: Slack for timing assertions on a loaded 2-core machine.
SLACK_SECONDS = 1.5
#: How long a program in a subprocess may take to start (imports) and end.
PROCESS_TIMEOUT_SECONDS = 60
#: Long enough that the background drain never ticks twice in a test: after its first tick
#: (at once, on an empty queue), only close() or exit can deliver.
NEVER_SECONDS = 3600.0
#: Time for the background drain's first tick (immediate) to find the queue empty.
FIRST_TICK_SECONDS = 0.3


def default_agent(fake: FakeExponea, db: Path, **settings: Any) -> TrackerAgent:
    """A TrackerAgent with the library's defaults (conftest's make_agent turns drain off)."""
    return TrackerAgent(
        fake.project_token,
        username=fake.username,
        password=fake.password,
        url=fake.url,
        database_url=sqlite_url(db),
        **settings,
    )


def track(agent: TrackerAgent, count: int, event_type: str = "purchase") -> None:
    for n in range(count):
        assert agent.tracking.add_event({"registered": f"c{n}"}, event_type, {"n": n}) is True


def queued(db: Path) -> int:
    stats = read_status(str(db))
    return int(stats["pending"] + stats["in_flight"])


def drain_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "APScheduler" in t.name]


# -- delivery starts by itself -----------------------------------------------------------------


def test_a_new_agent_delivers_in_the_background_without_start_or_flush(fake, tmp_path):
    with default_agent(fake, tmp_path / "outbox.db", drain_interval=0.1) as agent:
        assert agent.draining_in_background
        track(agent, 3)
        assert wait_for(lambda: len(fake.events) == 3)


def test_the_end_of_a_with_block_delivers_what_is_still_queued(fake, tmp_path):
    db = tmp_path / "outbox.db"
    with default_agent(fake, db, drain_interval=NEVER_SECONDS) as agent:
        time.sleep(FIRST_TICK_SECONDS)
        track(agent, 3)  # fewer than batch_size: nothing wakes the drain before close
    assert len(fake.events) == 3
    assert queued(db) == 0


def test_drain_false_sends_nothing_and_its_close_delivers_nothing(fake, tmp_path):
    db = tmp_path / "outbox.db"
    threads_before = set(drain_threads())
    with default_agent(fake, db, drain=False, drain_interval=AGENT_DRAIN_INTERVAL_SECONDS) as a:
        assert not a.draining_in_background
        assert set(drain_threads()) == threads_before
        track(a, 3)
        time.sleep(5 * AGENT_DRAIN_INTERVAL_SECONDS)
    assert fake.requests == []
    assert queued(db) == 3  # for the daemon or the next agent


def test_drain_false_with_start_delivers_and_its_close_delivers_the_rest(fake, tmp_path):
    db = tmp_path / "outbox.db"
    with default_agent(fake, db, drain=False, drain_interval=NEVER_SECONDS) as agent:
        agent.start()
        time.sleep(FIRST_TICK_SECONDS)
        track(agent, 2)
    assert len(fake.events) == 2


def test_the_cli_builds_its_agent_without_a_background_drain(isolated_cli, fake, tmp_path):
    env = {
        "TRACKER_AGENT_PROJECT_TOKEN": fake.project_token,
        "TRACKER_AGENT_USERNAME": fake.username,
        "TRACKER_AGENT_PASSWORD": fake.password,
        "TRACKER_AGENT_URL": fake.url,
        "TRACKER_AGENT_DATABASE_URL": sqlite_url(tmp_path / "outbox.db"),
    }
    cli = CliContext(env=env, config_file=None, overrides={})
    with click.Context(click.Command("track"), obj=cli):
        agent = cli.agent()
        assert not agent.draining_in_background
        assert cli.settings().drain is True  # what `config` shows is left alone


# -- close delivers for a bounded time -------------------------------------------------------


def test_close_gives_up_after_close_timeout_against_a_dead_server_and_keeps_the_rows(tmp_path):
    db = tmp_path / "outbox.db"
    with FakeExponea() as fake:
        agent = default_agent(
            fake, db, drain_interval=NEVER_SECONDS, close_timeout=1.0, backoff_base=0.05,
            backoff_cap=0.2,
        )  # fmt: skip
        time.sleep(FIRST_TICK_SECONDS)
    track(agent, 3)  # the server is gone: every attempt is refused
    started = time.monotonic()
    agent.close()
    assert time.monotonic() - started < 1.0 + SLACK_SECONDS
    assert queued(db) == 3


def test_close_returns_at_close_timeout_while_a_request_hangs_and_gives_its_rows_back(
    fake, tmp_path
):
    db = tmp_path / "outbox.db"
    agent = default_agent(
        fake, db, drain_interval=NEVER_SECONDS, close_timeout=0.3, request_timeout=5.0,
    )  # fmt: skip
    time.sleep(FIRST_TICK_SECONDS)
    fake.latency = 1.0  # the request goes out and is answered only after close_timeout
    track(agent, 3)
    started = time.monotonic()
    agent.close()
    assert time.monotonic() - started < 0.3 + SLACK_SECONDS
    stats = read_status(str(db))
    assert (stats["pending"], stats["in_flight"]) == (3, 0)  # leases released: not lost
    assert wait_for(lambda: len(fake.events) == 3)  # the abandoned request got through
    time.sleep(0.5)  # its answer reached the closed agent: it writes nothing
    stats = read_status(str(db))
    assert (stats["pending"], stats["delivered"], stats["last_success_at"]) == (3, 0, None)


def test_close_timeout_zero_closes_without_delivering(fake, tmp_path):
    db = tmp_path / "outbox.db"
    # clock_correction off: its first tick's GET system/time is not what this test counts.
    with default_agent(
        fake, db, drain_interval=NEVER_SECONDS, close_timeout=0, clock_correction=False
    ) as agent:
        time.sleep(FIRST_TICK_SECONDS)
        track(agent, 2)
    assert fake.requests == []
    assert queued(db) == 2


def test_close_with_an_explicit_timeout_overrides_close_timeout(fake, tmp_path):
    db = tmp_path / "outbox.db"
    agent = default_agent(fake, db, drain_interval=NEVER_SECONDS, close_timeout=0)
    time.sleep(FIRST_TICK_SECONDS)
    track(agent, 2)
    agent.close(timeout=5)
    assert len(fake.events) == 2


def test_close_while_paused_returns_at_once(fake, tmp_path):
    db = tmp_path / "outbox.db"
    fake.revoke_credentials()
    agent = default_agent(fake, db, drain_interval=NEVER_SECONDS, close_timeout=30)
    time.sleep(FIRST_TICK_SECONDS)
    track(agent, 1)
    started = time.monotonic()
    agent.close()
    assert time.monotonic() - started < SLACK_SECONDS  # a pause waits for a probe: no point
    assert queued(db) == 1


# -- interpreter exit ------------------------------------------------------------------------


def run_program(fake_url: str, db: Path, body: str, **settings: Any) -> tuple[float, Any]:
    """Run `body` after opening an agent (library defaults plus `settings`) in a new Python;
    return (seconds from the end of `body` to the end of the process, the result)."""
    settings = {"url": fake_url, "database_url": sqlite_url(db), **settings}
    code = (
        textwrap.dedent(
            f"""
        import sys, time
        from tracker_agent import TrackerAgent
        agent = TrackerAgent("test-project", username="key-id", password="secret",
                             **{settings!r})
        """
        )
        + textwrap.dedent(body)
        + "\nprint(time.time(), flush=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        check=False,
    )
    ended = time.time()
    lines = result.stdout.strip().splitlines()
    last = float(lines[-1]) if lines else ended
    return ended - last, result


TRACK_WITHOUT_CLOSING = """
time.sleep(0.3)  # the background drain's first tick finds nothing; the next is an hour away
for n in range(3):
    agent.tracking.add_event({"registered": "c%d" % n}, "purchase")
"""


def test_interpreter_exit_delivers_for_an_agent_left_open(fake, tmp_path):
    db = tmp_path / "outbox.db"
    _, result = run_program(fake.url, db, TRACK_WITHOUT_CLOSING, drain_interval=NEVER_SECONDS)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert len(fake.events) == 3
    assert queued(db) == 0


def test_interpreter_exit_against_a_dead_server_waits_close_timeout_at_most(tmp_path):
    with FakeExponea() as gone:
        url = gone.url  # stopped below: nothing listens there
    db = tmp_path / "outbox.db"
    exit_seconds, result = run_program(
        url, db, TRACK_WITHOUT_CLOSING, drain_interval=NEVER_SECONDS, close_timeout=1.0,
        backoff_base=0.05, backoff_cap=0.2,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert exit_seconds < 1.0 + SLACK_SECONDS
    assert queued(db) == 3


def test_interpreter_exit_while_a_request_hangs_waits_at_most_one_request_deadline_more(
    fake, tmp_path
):
    db = tmp_path / "outbox.db"
    fake.latency = 10.0
    settings = {"request_timeout": 1.0, "connect_timeout": 0.5, "close_timeout": 0.5}
    exit_seconds, result = run_program(
        fake.url, db, TRACK_WITHOUT_CLOSING, drain_interval=NEVER_SECONDS, **settings
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    # Python joins its thread pools at exit: the request in flight ends at its deadline.
    assert exit_seconds < 0.5 + 1.0 + 0.5 + SLACK_SECONDS
    assert queued(db) == 3


def test_interpreter_exit_with_drain_false_sends_nothing(fake, tmp_path):
    db = tmp_path / "outbox.db"
    _, result = run_program(fake.url, db, TRACK_WITHOUT_CLOSING, drain=False)
    assert result.returncode == 0, result.stderr
    assert fake.requests == []
    assert queued(db) == 3


# -- test mode -------------------------------------------------------------------------------


def test_enabled_false_validates_but_stores_and_sends_nothing_and_creates_no_file(fake, tmp_path):
    db = tmp_path / "state" / "outbox.db"
    threads_before = set(drain_threads())
    with default_agent(fake, db, enabled=False) as agent:
        assert agent.tracking.add_event({"registered": "a"}, "purchase", {"price": 1}) is True
        assert agent.tracking.update_customer_properties({"registered": "a"}, {"x": 1}) is True
        commands = [
            agent.tracking.add_event({"registered": "b"}, "view", batch=True),
            agent.tracking.update_customer_properties({"registered": "b"}, {"y": 2}, batch=True),
        ]
        assert agent.tracking.batch_commands(commands) == [True, True]
        assert agent.enqueue_many([{"name": "customers/events", "data": commands[0]["data"]}]) == 1
        with pytest.raises(ValidationError, match="event_type"):
            agent.tracking.add_event({"registered": "a"}, "")
        with pytest.raises(ValidationError, match="API limit"):
            agent.tracking.add_event({"registered": "a"}, "big", {"p": "x" * 15_000} | {
                f"k{i}": "x" * 15_000 for i in range(60)
            })  # fmt: skip
        with pytest.raises(ValidationError, match="system/time"):
            agent.tracking.batch_commands([{"name": "system/time"}])
        assert not agent.draining_in_background
        assert set(drain_threads()) == threads_before
        assert agent.stats()["pending"] == 0
        assert agent.flush(timeout=1).ok
        assert agent.dead_letters() == []
        assert agent.retry_dead_letters(all=True) == 0
        assert agent.purge_dead_letters(all=True) == 0
        with pytest.raises(ConfigError, match="enabled"):
            agent.run(threading.Event())
    assert fake.requests == []
    assert list(tmp_path.iterdir()) == []  # not even the directory


def test_enabled_false_still_refuses_bad_settings(fake, tmp_path):
    with pytest.raises(ConfigError, match="batch_size"):
        default_agent(fake, tmp_path / "outbox.db", enabled=False, batch_size=0)


# -- nothing drains: one warning -------------------------------------------------------------

WARN_AFTER_SECONDS = 0.3


def undrained_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "nothing delivers them" in r.getMessage()]


def test_one_warning_when_commands_wait_and_nothing_drains_them(fake, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="tracker_agent")
    with make_agent(fake, tmp_path / "outbox.db", warn_undrained_after=WARN_AFTER_SECONDS) as a:
        track(a, 1)
        assert undrained_warnings(caplog) == []  # too young to be late
        for _ in range(3):
            time.sleep(WARN_AFTER_SECONDS + 0.1)
            track(a, 1)
    (warning,) = undrained_warnings(caplog)
    assert warning.levelno == logging.WARNING
    assert "drain=False" in warning.getMessage() and "tracker-agent run" in warning.getMessage()


def test_no_warning_while_another_drainer_on_the_outbox_backs_off(fake, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="tracker_agent")
    db = tmp_path / "outbox.db"
    fake.fail_next(100, status=503, retry_after=30, path_contains="/batch")
    daemon = make_agent(fake, db, drain=True, backoff_cap=60.0)
    with make_agent(fake, db, warn_undrained_after=WARN_AFTER_SECONDS) as producer:
        track(producer, 1)
        assert wait_for(lambda: fake.batches != [])  # the other drainer tried, and waits
        for _ in range(3):
            time.sleep(WARN_AFTER_SECONDS + 0.1)
            track(producer, 1)
    daemon.close(timeout=0)
    assert undrained_warnings(caplog) == []


def test_no_warning_when_this_process_drains(fake, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="tracker_agent")
    fake.fail_next(100, status=503, retry_after=30, path_contains="/batch")
    db = tmp_path / "outbox.db"
    with make_agent(fake, db, drain=True, warn_undrained_after=WARN_AFTER_SECONDS) as agent:
        for _ in range(3):
            track(agent, 1)
            time.sleep(WARN_AFTER_SECONDS + 0.1)
        agent.close(timeout=0)
    assert undrained_warnings(caplog) == []


def test_warn_undrained_after_zero_never_warns(fake, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="tracker_agent")
    with make_agent(fake, tmp_path / "outbox.db", warn_undrained_after=0) as agent:
        for _ in range(2):
            track(agent, 1)
            time.sleep(0.2)
    assert undrained_warnings(caplog) == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
@pytest.mark.parametrize(("parent_drains", "warnings"), [(True, 0), (False, 1)])
def test_a_forked_child_warns_only_when_nothing_drains_the_outbox(
    fake, tmp_path, parent_drains, warnings
):
    fake.fail_next(
        100, status=503, retry_after=30, path_contains="/batch"
    )  # the parent's drain, if any, backs off
    agent = make_agent(
        fake, tmp_path / "outbox.db", drain=parent_drains, backoff_cap=60.0,
        warn_undrained_after=WARN_AFTER_SECONDS,
    )  # fmt: skip
    if parent_drains:
        track(agent, 1)
        assert wait_for(lambda: fake.batches != [])
    pid = os.fork()
    if pid == 0:  # a pre-fork web worker: no drain thread of its own
        code = 99
        try:
            records: list[logging.LogRecord] = []
            handler = logging.Handler()
            handler.emit = records.append
            logging.getLogger("tracker_agent").addHandler(handler)
            for _ in range(3):
                track(agent, 1)
                time.sleep(WARN_AFTER_SECONDS + 0.1)
            code = sum("nothing delivers them" in r.getMessage() for r in records)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    agent.close(timeout=0)
    assert os.waitstatus_to_exitcode(status) == warnings
