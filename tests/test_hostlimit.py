"""One request budget per host: HostRateLimiter, and four processes draining one outbox."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from conftest import make_agent

from tracker_agent.hostlimit import HostRateLimiter

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 4
SMALL_LIMIT = 20.0  # requests per second, for all four processes together
EVENTS = 3_600  # 72 batches of 50: 3.6 s of budget, well over the two-second window
PROCESS_TIMEOUT_SECONDS = 60


class FakeClock:
    """A monotonic clock that advances only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def test_two_limiters_on_one_file_share_one_budget(tmp_path):
    clock = FakeClock()
    path = str(tmp_path / "rate")
    a = HostRateLimiter(path, 10.0, clock=clock, sleep=lambda s: None)
    b = HostRateLimiter(path, 10.0, clock=clock, sleep=lambda s: None)
    waits = [limiter.acquire() for limiter in (a, b, a, b, a)]
    # Nobody slept, so every acquisition books the next 0.1 s slot after the one before.
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    a.close()
    b.close()


def test_a_slot_booked_before_a_reboot_or_garbled_is_ignored(tmp_path):
    path = tmp_path / "rate"
    clock = FakeClock()
    for garbage in (struct.pack("<d", clock.now + 1e6), struct.pack("<d", float("nan")), b"xy"):
        path.write_bytes(garbage)
        limiter = HostRateLimiter(str(path), 10.0, clock=clock, sleep=clock.sleep)
        assert limiter.acquire() == 0.0
        limiter.close()


def test_the_rate_file_is_private_and_a_forked_child_opens_its_own(tmp_path):
    old = os.umask(0o022)
    try:
        limiter = HostRateLimiter(str(tmp_path / "rate"), 100.0).open()
    finally:
        os.umask(old)
    assert (tmp_path / "rate").stat().st_mode & 0o777 == 0o600
    parent_fd = limiter._fd
    pid = os.fork()
    if pid == 0:  # the child: a new descriptor, and acquiring works
        try:
            limiter.acquire()
            os._exit(0 if limiter._fd != parent_fd else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    limiter.close()


_DRAINER = """
import sys
from tracker_agent import TrackerAgent
url, db = sys.argv[1], sys.argv[2]
agent = TrackerAgent("test-project", username="key-id", password="secret", url=url,
                     database_url="sqlite:///" + db, rate_limit=float(sys.argv[3]),
                     drain=False)  # flush() below is this process's drainer
result = agent.flush(timeout=50)
agent.close()
sys.exit(0 if result.remaining == 0 else 1)
"""


def test_four_processes_draining_one_outbox_stay_under_the_limit_together(fake, tmp_path):
    db = tmp_path / "outbox.db"
    with make_agent(fake, db) as agent:  # many customers: nothing orders one drainer's claims
        agent.enqueue_many(
            [
                {"name": "customers/events", "data": {"customer_ids": {"registered": f"c{n}"},
                                                       "event_type": "view"}}
                for n in range(EVENTS)
            ]
        )  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _DRAINER, fake.url, str(db), str(SMALL_LIMIT)], cwd=ROOT
        )
        for _ in range(PROCESSES)
    ]
    codes = [p.wait(PROCESS_TIMEOUT_SECONDS) for p in procs]
    assert codes == [0] * PROCESSES
    batches = sorted(r.received_at for r in fake.requests if r.path.endswith("/batch"))
    assert len(fake.events) == EVENTS
    # Any two-second window holds at most twice the limit, +4 for arrival jitter at its edges
    # (a request booked in time may reach the server late on a loaded machine, bunched with
    # the next ones); four processes at 20/s each would put about 160 there, all 72 batches.
    busiest = max(sum(1 for t in batches if start <= t < start + 2.0) for start in batches)
    assert busiest <= 2 * SMALL_LIMIT + 4, busiest
    per_second = Counter(int(t - batches[0]) for t in batches)
    assert len(per_second) >= len(batches) // (SMALL_LIMIT + 1)
