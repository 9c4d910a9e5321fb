"""DrainScheduler: one pass at a time on an interval, woken on demand, quiet about long passes."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from conftest import wait_for

from tracker_agent.scheduler import DrainScheduler


def test_a_pass_longer_than_the_interval_never_overlaps_and_warns_of_no_skips(caplog):
    running = 0
    overlaps: list[int] = []
    runs: list[float] = []
    lock = threading.Lock()

    def job() -> None:
        nonlocal running
        with lock:
            running += 1
            overlaps.append(running)
        runs.append(time.monotonic())
        time.sleep(0.15)  # three intervals long
        with lock:
            running -= 1

    caplog.set_level(logging.DEBUG, logger="apscheduler")
    scheduler = DrainScheduler(job, interval=0.05)
    scheduler.start()
    try:
        assert wait_for(lambda: len(runs) >= 3)
    finally:
        assert scheduler.shutdown(timeout=2.0)
    assert max(overlaps) == 1
    skips = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert skips and all(r.levelno == logging.DEBUG for r in skips)  # ticks did meet the pass
    gaps = [b - a for a, b in zip(runs, runs[1:], strict=False)]
    assert all(gap >= 0.15 - 0.02 for gap in gaps)  # a pass never starts inside another


def test_wake_runs_the_next_pass_now_instead_of_after_the_interval():
    runs: list[float] = []
    scheduler = DrainScheduler(lambda: runs.append(time.monotonic()), interval=60.0)
    scheduler.start()
    try:
        assert wait_for(lambda: len(runs) == 1)  # the first pass runs at start
        assert scheduler.wait_idle(2)
        scheduler.wake()  # at once, while APScheduler may still be closing the first run
        assert wait_for(lambda: len(runs) == 2, timeout=2.0)
    finally:
        assert scheduler.shutdown(timeout=2.0)


def test_shutdown_waits_for_the_running_pass_within_the_timeout():
    started = threading.Event()
    release = threading.Event()

    def job() -> None:
        started.set()
        release.wait(5)

    scheduler = DrainScheduler(job, interval=0.05)
    scheduler.start()
    assert started.wait(2)
    assert scheduler.shutdown(timeout=0.1) is False  # still running
    release.set()
    assert scheduler.wait_idle(2)


@pytest.mark.parametrize("calls", [1, 3])
def test_shutdown_is_idempotent(calls):
    scheduler = DrainScheduler(lambda: None, interval=0.05)
    scheduler.start()
    for _ in range(calls):
        assert scheduler.shutdown(timeout=1.0)
