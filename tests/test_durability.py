"""The delivery contract under process death: real processes, SIGKILL, one outbox (an SQLite
file, or a PostgreSQL database)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections import defaultdict

import pytest
from conftest import both_backends

from tracker_agent import TrackerAgent

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def agent_code(fake, db_url: str, body: str, **settings) -> str:
    """A Python program that opens a TrackerAgent on the shared file and runs `body`."""
    settings = {
        "database_url": db_url,
        "url": fake.url,
        "request_timeout": 5.0,
        "drain": False,  # the programs deliver with flush() or start() when they mean to
        **settings,
    }
    return textwrap.dedent(
        f"""
        import os, signal, sys, time
        from tracker_agent import TrackerAgent
        agent = TrackerAgent({fake.project_token!r}, username={fake.username!r},
                             password={fake.password!r}, **{settings!r})
        """
    ) + textwrap.dedent(body)


def run_python(code: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], **kwargs)


def open_agent(fake, db_url, **settings) -> TrackerAgent:
    return TrackerAgent(
        fake.project_token,
        username=fake.username,
        password=fake.password,
        url=fake.url,
        database_url=db_url,
        **{"drain": False, **settings},
    )


@both_backends
def test_event_accepted_right_before_sigkill_is_delivered_later(fake, database_url):
    db_url = database_url
    body = """
        assert agent.tracking.add_event({"registered": "k"}, "purchase", {"price": 10})
        os.kill(os.getpid(), signal.SIGKILL)
    """
    proc = run_python(agent_code(fake, db_url, body))
    assert proc.wait(60) == -signal.SIGKILL
    with open_agent(fake, db_url) as agent:
        assert agent.stats()["pending"] == 1
        assert agent.flush(timeout=10).delivered == 1
    assert [(e["event_type"], e["properties"]) for e in fake.events] == [
        ("purchase", {"price": 10})
    ]


@both_backends
def test_drainer_killed_mid_batch_loses_nothing_and_resends_at_most_that_batch(fake, database_url):
    db_url = database_url
    with open_agent(fake, db_url) as agent:
        for n in range(120):
            agent.tracking.add_event({"registered": "m"}, "view", {"n": n})
    fake.latency = 0.5  # each batch is in flight long enough to be killed mid-request
    body = """
        agent.flush()
    """
    settings = {"lease_seconds": 2.0, "request_timeout": 0.6, "connect_timeout": 0.3}
    proc = run_python(agent_code(fake, db_url, body, rate_limit=1000.0, **settings))
    deadline = time.monotonic() + 30
    while len(fake.batches) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(fake.batches) == 2, "the drainer never got to its second batch"
    time.sleep(0.2)  # inside the second batch's request
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL  # killed, not finished
    fake.latency = 0.0
    time.sleep(2.1)  # the dead drainer's lease runs out
    with open_agent(fake, db_url) as agent:
        assert agent.flush(timeout=20).ok
    received = [e["properties"]["n"] for e in fake.received_events]
    assert sorted(set(received)) == list(range(120))
    assert len(received) - 120 <= 50  # at most the one batch in flight when killed
    assert [e["properties"]["n"] for e in fake.events] == list(range(120))


@both_backends
def test_four_producers_and_a_drainer_deliver_every_event_once_in_customer_order(
    fake, tmp_path, database_url
):
    db_url = database_url
    per_process = 150
    producer = f"""
        me = sys.argv[1]
        for n in range({per_process}):
            agent.tracking.add_event({{"registered": f"{{me}}-{{n % 3}}"}}, "view", {{"n": n}})
        agent.close()
    """
    drainer = """
        stop = time.monotonic() + 60
        while time.monotonic() < stop:
            agent.flush()
            if os.path.exists(sys.argv[1]) and agent.stats()["pending"] == 0:
                break
            time.sleep(0.05)
        agent.close()
    """
    done_flag = tmp_path / "producers-done"
    with open_agent(fake, db_url):
        pass  # create and migrate the file once, as a deployment would
    drain_proc = subprocess.Popen(
        [sys.executable, "-c", agent_code(fake, db_url, drainer, rate_limit=1000.0), str(done_flag)]
    )
    producers = [
        subprocess.Popen([sys.executable, "-c", agent_code(fake, db_url, producer), f"p{i}"])
        for i in range(4)
    ]
    assert [p.wait(120) for p in producers] == [0, 0, 0, 0]
    done_flag.write_text("done")
    assert drain_proc.wait(120) == 0
    assert len(fake.received_events) == 4 * per_process  # exactly once: no resends
    by_customer: dict[str, list[int]] = defaultdict(list)
    for e in fake.events:
        by_customer[e["customer_ids"]["registered"]].append(e["properties"]["n"])
    assert len(by_customer) == 12
    for customer, ns in by_customer.items():
        expected = [n for n in range(per_process) if f"-{n % 3}" == customer[-2:]]
        assert ns == expected, customer
