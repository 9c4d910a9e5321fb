"""A daemon killed with SIGKILL mid-drain: the restarted one takes the dead one's leases back
at once (same machine), instead of waiting lease_seconds with those customers stalled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_agent, wait_for

from tracker_agent.outbox import owners

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
    pytest.mark.skipif(not owners.Machine.here().key, reason="needs /proc to know processes"),
]

ROOT = Path(__file__).resolve().parent.parent
LONG_LEASE_SECONDS = 60.0  # what the restarted daemon would otherwise wait for
SLOW_SERVER_SECONDS = 3.0  # the first daemon's batch is still in flight when it is killed
RESTART_DELIVERY_SECONDS = 2.0  # the bound for the first delivery after a restart
CUSTOMERS = 5
EVENTS_EACH = 20


def daemon(fake, db: Path, tmp_path: Path, **extra: str) -> subprocess.Popen[bytes]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "TRACKER_AGENT_CONFIG": str(tmp_path / "empty.toml"),
        "TRACKER_AGENT_PROJECT_TOKEN": fake.project_token,
        "TRACKER_AGENT_USERNAME": fake.username,
        "TRACKER_AGENT_PASSWORD": fake.password,
        "TRACKER_AGENT_URL": fake.url,
        "TRACKER_AGENT_DATABASE_URL": f"sqlite:///{db}",
        "TRACKER_AGENT_LEASE_SECONDS": str(LONG_LEASE_SECONDS),
        "TRACKER_AGENT_DRAIN_INTERVAL": "0.1",
        **{f"TRACKER_AGENT_{name.upper()}": value for name, value in extra.items()},
    }
    (tmp_path / "empty.toml").write_text("")
    return subprocess.Popen(
        [sys.executable, "-m", "tracker_agent", "run"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_a_restarted_daemon_delivers_within_two_seconds_of_a_kill_9(fake, tmp_path):
    db = tmp_path / "outbox.db"
    with make_agent(fake, db) as agent:
        for n in range(EVENTS_EACH):
            for c in range(CUSTOMERS):
                agent.tracking.add_event({"registered": f"c{c}"}, "view", {"n": n})
    fake.latency = SLOW_SERVER_SECONDS
    first = daemon(fake, db, tmp_path)
    try:
        assert wait_for(lambda: any(r.path.endswith("/batch") for r in fake.requests), 20)
        first.send_signal(signal.SIGKILL)  # mid-request: its leases cover every customer
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    fake.latency = 0.0
    before = len(fake.requests)
    restarted_at = time.monotonic()
    second = daemon(fake, db, tmp_path)
    try:
        assert wait_for(
            lambda: any(r.status == 200 for r in fake.requests[before:]), LONG_LEASE_SECONDS
        )
        took = time.monotonic() - restarted_at
        assert took <= RESTART_DELIVERY_SECONDS + 1.5, took  # + interpreter start-up
        assert wait_for(lambda: len(fake.events) == CUSTOMERS * EVENTS_EACH, 30)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(15)
    for c in range(CUSTOMERS):  # order kept per customer despite the kill
        seen = [
            e["properties"]["n"] for e in fake.events if e["customer_ids"]["registered"] == f"c{c}"
        ]
        assert seen == list(range(EVENTS_EACH))


def test_a_kill_9_with_four_batches_on_the_wire_resends_at_most_those_four(fake, tmp_path):
    """concurrent_batches = 4: four drainers in the daemon, four requests on the wire when it
    is killed. The restarted daemon takes all four drainers' leases back at once, and only
    those four batches (at most 200 events) reach the server twice; order holds."""
    db = tmp_path / "outbox.db"
    customers, each = 400, 3
    with make_agent(fake, db) as agent:
        for n in range(each):
            for c in range(customers):
                agent.tracking.add_event({"registered": f"c{c}"}, "view", {"n": n})
    fake.latency = SLOW_SERVER_SECONDS
    first = daemon(fake, db, tmp_path, concurrent_batches="4")
    try:
        batches = lambda: [r for r in fake.requests if r.path.endswith("/batch")]  # noqa: E731
        assert wait_for(lambda: len(batches()) >= 4, 20)
        # Four requests arrived and none has been answered yet: all four are on the wire
        # (one drainer's second request would come only after its first's answer).
        assert not any(r.processed for r in batches())
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    fake.latency = 0.0
    second = daemon(fake, db, tmp_path, concurrent_batches="4")
    try:
        assert wait_for(lambda: len(fake.events) == customers * each, 30)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(15)
    resent = len(fake.received_events) - customers * each
    assert 0 <= resent <= 4 * 50, resent
    for c in range(customers):
        seen = [
            e["properties"]["n"] for e in fake.events if e["customer_ids"]["registered"] == f"c{c}"
        ]
        assert seen == list(range(each)), c
