"""Lease owners: a dead drainer of this machine is told from a live one or another machine's."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from tracker_agent.outbox import owners
from tracker_agent.outbox.engine import open_outbox

pytestmark = pytest.mark.skipif(
    not owners.Machine.here().key, reason="needs /proc (Linux) to know processes"
)
NOW = 1_000_000.0


def dead_pid_and_start() -> tuple[int, int]:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = owners.process_start(child.pid)
    child.wait()
    assert started is not None
    return child.pid, started


def test_owner_ids_round_trip_and_stay_short():
    here = owners.Machine.here()
    owner = owners.make_owner_id(here)
    parsed = owners.parse_owner_id(owner)
    assert parsed is not None and parsed.pid == os.getpid() and parsed.machine == here.key
    assert len(owner) <= 64  # the lease_owner column's declared size
    assert owner != owners.make_owner_id(here)  # two drainers of one process differ


@pytest.mark.parametrize("garbage", ["", "3f2a9c", "o1::1:2:x", "o1:abc:x:y:z", "o2:a:1:2:x"])
def test_ids_of_other_formats_are_never_taken_for_dead(garbage):
    parsed = owners.parse_owner_id(garbage)
    assert parsed is None or not parsed.is_dead_on(owners.Machine.here())


def test_a_dead_process_is_dead_and_a_live_one_or_another_machines_is_not():
    here = owners.Machine.here()
    pid, started = dead_pid_and_start()
    assert owners.OwnerId(here.key, pid, started).is_dead_on(here)
    me = owners.parse_owner_id(owners.make_owner_id(here))
    assert me is not None and not me.is_dead_on(here)
    assert not owners.OwnerId("another-machine", pid, started).is_dead_on(here)
    assert not owners.OwnerId(here.key, pid, started).is_dead_on(owners.Machine(""))
    # A recycled pid: the number is in use, by a process that started at another time.
    assert owners.OwnerId(here.key, os.getpid(), (me.started or 0) + 1).is_dead_on(here)


def test_only_a_dead_local_owners_leases_are_released(tmp_path):
    db = tmp_path / "outbox.db"
    open_outbox(f"sqlite:///{db}").dispose()
    here = owners.Machine.here()
    pid, started = dead_pid_and_start()
    dead = f"o1:{here.key}:{pid}:{started}:aaaa"
    live = owners.make_owner_id(here)
    remote = f"o1:elsewhere0000000:{pid}:{started}:bbbb"
    with sqlite3.connect(db, isolation_level=None) as conn:
        for owner in (dead, dead, live, remote, "legacy-uuid"):
            conn.execute(
                "INSERT INTO outbox (kind, customer_key, payload, size, created_at, lease_owner,"
                " lease_expires_at) VALUES ('customers', '{}', '{}', 2, 0, ?, ?)",
                (owner, NOW + 60),
            )
        cur = conn.cursor()
        found = owners.dead_owners(cur, NOW, here)
        assert found == [dead]
        assert owners.release_owners(cur, found) == 2
        held = sorted(
            r[0]
            for r in conn.execute("SELECT lease_owner FROM outbox WHERE lease_owner IS NOT NULL")
        )
        assert held == sorted([live, remote, "legacy-uuid"])
