"""Many hosts on one PostgreSQL outbox: 3 writer processes and 3 `tracker-agent run` drainers,
each with its own state directory (its own host's request budget), one drainer SIGKILLed in the
middle of a batch and restarted. Every event arrives, duplicates stay within the killed
drainer's window, each customer's commands arrive in order, and `status --json` is right.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import fresh_postgres_url, wait_for

from tracker_agent.outbox.engine import open_outbox
from tracker_agent.testing import FakeExponea

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

ROOT = Path(__file__).resolve().parent.parent
WRITERS = 3
DRAINERS = 3
PER_WRITER = 400
CUSTOMERS_PER_WRITER = 5
BATCH = 50
WINDOW = 2  # batches a drainer has out at once (drain.py): what a SIGKILL can leave unsettled
TIMEOUT_SECONDS = 120

_WRITER = """
import sys
from tracker_agent import TrackerAgent
me = sys.argv[1]
agent = TrackerAgent({token!r}, username={user!r}, password={password!r}, url={url!r},
                     database_url={db!r}, drain=False)
for n in range({count}):
    agent.tracking.add_event({{"registered": f"{{me}}-{{n % {customers}}}"}}, "view", {{"n": n}})
agent.close(timeout=0)
"""


def host_env(fake: FakeExponea, db: str, home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    config = home / "empty.toml"
    config.write_text("")
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / "state"),  # this "host's" rate file lives here
        "PYTHONPATH": str(ROOT),
        "TRACKER_AGENT_CONFIG": str(config),
        "TRACKER_AGENT_PROJECT_TOKEN": fake.project_token,
        "TRACKER_AGENT_USERNAME": fake.username,
        "TRACKER_AGENT_PASSWORD": fake.password,
        "TRACKER_AGENT_URL": fake.url,
        "TRACKER_AGENT_DATABASE_URL": db,
        "TRACKER_AGENT_LEASE_SECONDS": "4",
        "TRACKER_AGENT_DRAIN_INTERVAL": "0.1",
        "TRACKER_AGENT_REQUEST_TIMEOUT": "1",
        "TRACKER_AGENT_CONNECT_TIMEOUT": "0.5",
        "TRACKER_AGENT_RATE_LIMIT": "100",
        "TRACKER_AGENT_SHUTDOWN_GRACE": "3",
    }


def start_drainer(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "tracker_agent", "run"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def status_json(env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "tracker_agent", "status", "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def test_three_writers_and_three_drainers_one_killed_deliver_everything_in_order(
    postgres_server, tmp_path: Path
) -> None:
    db = fresh_postgres_url(postgres_server)
    open_outbox(db).dispose()  # migrated once, as a deployment would
    total = WRITERS * PER_WRITER
    with FakeExponea() as fake:
        fake.latency = 0.05  # batches stay in flight long enough to be killed mid-request
        envs = [host_env(fake, db, tmp_path / f"host{i}") for i in range(DRAINERS)]
        logs = [tmp_path / f"drainer{i}.log" for i in range(DRAINERS)]
        drainers = [start_drainer(env, log) for env, log in zip(envs, logs, strict=True)]
        try:
            code = _WRITER.format(
                token=fake.project_token,
                user=fake.username,
                password=fake.password,
                url=fake.url,
                db=db,
                count=PER_WRITER,
                customers=CUSTOMERS_PER_WRITER,
            )
            writers = [
                subprocess.Popen(
                    [sys.executable, "-c", textwrap.dedent(code), f"w{i}"],
                    env=host_env(fake, db, tmp_path / f"writer{i}"),
                    cwd=ROOT,
                )
                for i in range(WRITERS)
            ]
            assert wait_for(lambda: len(fake.batches) >= 6, TIMEOUT_SECONDS), [
                log.read_text(errors="replace")[-2000:] for log in logs
            ]
            drainers[0].send_signal(signal.SIGKILL)  # mid-drain: its window is unsettled
            assert drainers[0].wait(30) == -signal.SIGKILL
            drainers[0] = start_drainer(envs[0], logs[0])
            assert [w.wait(TIMEOUT_SECONDS) for w in writers] == [0] * WRITERS
            assert wait_for(lambda: len(fake.events) >= total, TIMEOUT_SECONDS), (
                f"{len(fake.events)} of {total} delivered; "
                + logs[0].read_text(errors="replace")[-2000:]
            )
            assert wait_for(lambda: status_json(envs[1])["in_flight"] == 0, TIMEOUT_SECONDS)
            stats = status_json(envs[2])
        finally:
            for proc in drainers:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            codes = [proc.wait(60) for proc in drainers]
        assert codes == [0] * DRAINERS, [log.read_text(errors="replace")[-2000:] for log in logs]
        received = [e["properties"]["n"] for e in fake.received_events]
        events = list(fake.events)
    assert len(events) == total  # every event, once after the server's dedup
    assert len(received) - total <= WINDOW * BATCH  # resent: at most the killed window
    by_customer: dict[str, list[int]] = defaultdict(list)
    for e in events:
        by_customer[e["customer_ids"]["registered"]].append(e["properties"]["n"])
    assert len(by_customer) == WRITERS * CUSTOMERS_PER_WRITER
    assert all(ns == sorted(ns) for ns in by_customer.values())
    assert (stats["pending"], stats["in_flight"], stats["dead"]) == (0, 0, 0)
    assert stats["delivered"] == total
    assert stats["database"].startswith("postgresql+psycopg://postgres@127.0.0.1:")
