"""Resuming when the credentials work again (issue 12 item 3).

After a 401 pause, the stored probe time may be a minute away (probes back off towards
pause_probe_interval). A daemon start, a flush (library or CLI) and a successful `check` probe
at once instead, so fixed credentials deliver within seconds. And a brief 401 blip while events
flow costs seconds, not pause_probe_interval.

Each test first pushes the stored probe time an hour out (as after a long pause): a test that
passed because the regular probe came soon would prove nothing.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from conftest import cli_env, cli_invoker, make_agent, sqlite_url, wait_for

from tracker_agent.testing import FakeExponea

ROOT = Path(__file__).resolve().parent.parent
#: Far beyond any wait below: reaching it would mean the probe was not asked for.
LONG_PAUSE_SECONDS = 3600.0
#: "Within seconds": a daemon start (a Python process importing the package) included.
PROMPT_SECONDS = 15.0
PROCESS_TIMEOUT_SECONDS = 20.0


def track(agent: Any, n: int = 0) -> None:
    agent.tracking.add_event({"registered": "ann"}, "view", {"n": n})


def paused_for_long(fake: FakeExponea, db: Path) -> None:
    """An outbox with one queued event, paused on a 401, its next probe an hour away; then
    the credentials are fixed."""
    fake.revoke_credentials()
    with make_agent(fake, db) as agent:
        track(agent)
        assert agent.flush().paused_reason
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE agent_state SET value = ? WHERE key = 'probe_at'",
            (json.dumps(time.time() + LONG_PAUSE_SECONDS),),
        )
    conn.close()
    fake.restore_credentials()
    assert fake.events == []


def probe_at(db: Path) -> float:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT value FROM agent_state WHERE key = 'probe_at'").fetchone()
    conn.close()
    return float(json.loads(row[0]) or 0)


# -- the library -----------------------------------------------------------------------------


def test_flush_probes_a_paused_outbox_at_once_instead_of_refusing(fake, tmp_path):
    db = tmp_path / "outbox.db"
    paused_for_long(fake, db)
    with make_agent(fake, db) as agent:
        result = agent.flush()
        assert (result.delivered, result.remaining, result.paused_reason) == (1, 0, None)
    assert len(fake.events) == 1


def test_flush_with_credentials_still_refused_probes_once_and_stays_paused(fake, tmp_path):
    db = tmp_path / "outbox.db"
    paused_for_long(fake, db)
    fake.revoke_credentials()
    with make_agent(fake, db) as agent:
        before = len(fake.batches)
        result = agent.flush()
        assert len(fake.batches) == before + 1  # one probe, then the pause holds
        assert result.paused_reason and result.remaining == 1
        assert agent.stats()["dead"] == 0
    # The failed probe made the next one due soon again, not an hour away.
    assert probe_at(db) < time.time() + 2 * 1.0 + 1


def test_an_agent_that_starts_its_drain_probes_a_paused_outbox_at_once(fake, tmp_path):
    db = tmp_path / "outbox.db"
    paused_for_long(fake, db)
    with make_agent(fake, db, drain=True) as agent:  # an app restarted with fixed credentials
        assert wait_for(lambda: len(fake.events) == 1, PROMPT_SECONDS)
        assert agent.stats()["paused_reason"] is None


def received_at_least(fake: FakeExponea, count: int) -> Callable[[], bool]:
    return lambda: len(fake.events) >= count


def test_a_blip_of_401s_while_events_flow_costs_seconds_each_time(fake, tmp_path):
    """The soak of issue 12 in small: 2 s of 401 now and then while events flow. Each blip
    pauses delivery, and delivery is back within seconds of its end, far sooner than the
    pause_probe_interval (60 s); nothing is lost or sent twice."""
    produced: list[int] = []
    stop = threading.Event()
    with make_agent(fake, tmp_path / "outbox.db", drain=True, pause_probe_interval=60.0) as agent:

        def produce() -> None:
            while not stop.is_set():
                track(agent, len(produced))
                produced.append(len(produced))
                time.sleep(0.02)

        producer = threading.Thread(target=produce)
        producer.start()
        try:
            for _blip in range(2):
                time.sleep(0.5)  # events flow and are delivered as they come
                assert wait_for(received_at_least(fake, len(produced)), PROMPT_SECONDS)
                fake.revoke_credentials()
                assert wait_for(lambda: agent.stats()["paused_reason"] is not None, 5)
                time.sleep(2.0)
                fake.restore_credentials()
                # caught up with what was produced by the end of the blip, well before a
                # probe at pause_probe_interval could have come
                assert wait_for(received_at_least(fake, len(produced)), 6.0)
                assert agent.stats()["paused_reason"] is None
        finally:
            stop.set()
            producer.join()
        assert agent.flush(timeout=10).ok
    delivered = sorted(e["properties"]["n"] for e in fake.events)
    assert delivered == produced  # none lost, none twice


# -- the command line ------------------------------------------------------------------------


@pytest.fixture
def env(fake: FakeExponea, tmp_path: Path, isolated_cli: None) -> dict[str, str]:
    return cli_env(fake, sqlite_url(tmp_path / "outbox.db"))


def invoke(env: dict[str, str], *args: str) -> Result:
    return cli_invoker(env)(*args)


def test_cli_flush_probes_a_paused_outbox_at_once(fake, tmp_path, env):
    paused_for_long(fake, tmp_path / "outbox.db")
    result = invoke(env, "flush")
    assert result.exit_code == 0, result.output
    assert "delivered 1," in result.stdout
    assert len(fake.events) == 1


def test_a_successful_check_makes_the_next_pass_probe_at_once(fake, tmp_path, env):
    db = tmp_path / "outbox.db"
    paused_for_long(fake, db)
    result = invoke(env, "check")
    assert result.exit_code == 0, result.output
    assert "delivery: was paused (AuthenticationError" in result.stdout
    assert probe_at(db) <= time.time()
    with make_agent(fake, db) as agent:  # the daemon's next pass, no flush's own probe
        assert agent.drainer.drain().delivered == 1


def test_a_failed_check_leaves_the_pause_alone(fake, tmp_path, env):
    db = tmp_path / "outbox.db"
    paused_for_long(fake, db)
    fake.revoke_credentials()
    assert invoke(env, "check").exit_code == 1
    assert probe_at(db) > time.time() + LONG_PAUSE_SECONDS / 2


def test_check_on_a_file_that_is_not_an_outbox_still_checks_the_api(fake, tmp_path, env):
    (tmp_path / "outbox.db").write_bytes(b"not a database at all, " * 100)
    result = invoke(env, "check")
    assert result.exit_code == 0, result.output
    assert "warn delivery: could not look at the outbox" in result.stdout


def test_a_restarted_daemon_delivers_at_once_after_the_credentials_are_fixed(fake, tmp_path, env):
    paused_for_long(fake, tmp_path / "outbox.db")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracker_agent", "run"],
        env={
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),
            "PYTHONPATH": str(ROOT),
            "TRACKER_AGENT_DRAIN_INTERVAL": "0.1",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert wait_for(lambda: len(fake.events) == 1, PROMPT_SECONDS)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=PROCESS_TIMEOUT_SECONDS)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "the drain starts: probing the API now" in err
    assert "delivery resumed: a probe batch was accepted" in err
