"""Clock correction (issue 14): a device whose clock is wrong still delivers true timestamps,
corrected once before the first send and frozen, so that retries stay deduplicated.

The server's clock is the fake's (`time=`); the device's is this process's (shifted with
freezegun where it must be wildly wrong). Timestamps the caller gave are never touched.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from conftest import PASSWORD, TOKEN, USERNAME, both_backends, make_agent
from freezegun import freeze_time

from tracker_agent import constants as c
from tracker_agent.bootclock import boot_id
from tracker_agent.cli.table import clock_row
from tracker_agent.config.settings import Settings
from tracker_agent.exceptions import NotFoundError, TransportError
from tracker_agent.outbox.clock import BootRef, correct_time
from tracker_agent.outbox.engine import open_outbox
from tracker_agent.outbox.revisions import alembic_config
from tracker_agent.outbox.store import NewCommand, OutboxStore
from tracker_agent.policy import DrainPolicy
from tracker_agent.reach import ClockGate, ReachProbe
from tracker_agent.testing import FakeExponea

ROOT = Path(__file__).resolve().parent.parent
HOURS_3 = 3 * 3600.0
YEAR_1970 = "1970-01-02 00:00:00"
CLOCK = {"clock_correction": True}


def real_time() -> float:
    """The true time, whatever freezegun says (it does not patch clock_gettime)."""
    return time.clock_gettime(time.CLOCK_REALTIME)


def server_ahead(seconds: float) -> Callable[[], float]:
    return lambda: real_time() + seconds


@pytest.fixture
def fake_ahead(request: pytest.FixtureRequest) -> Iterator[FakeExponea]:
    """A FakeExponea whose clock is `request.param` seconds ahead of this device's."""
    with FakeExponea(
        project_token=TOKEN, username=USERNAME, password=PASSWORD, time=server_ahead(request.param)
    ) as fake:
        yield fake


def batch_stamps(fake: FakeExponea) -> list[list[float]]:
    """The timestamp of each command of each batch request received (faulted ones too)."""
    return [
        [cmd["data"].get("timestamp") or cmd["data"].get("update_timestamp") for cmd in batch]
        for batch in fake.batches
    ]


def asked_time(fake: FakeExponea) -> int:
    """How many GET system/time the fake received (answered or not)."""
    return sum("system/time" in r.path for r in fake.requests)


def stored_stamps(db: Path) -> list[float]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT payload FROM outbox ORDER BY id").fetchall()
    conn.close()
    return [json.loads(p).get("timestamp") or json.loads(p)["update_timestamp"] for (p,) in rows]


@both_backends
@pytest.mark.parametrize("fake_ahead", [HOURS_3], indirect=True)
def test_a_device_three_hours_slow_delivers_true_timestamps(fake_ahead, database_url):
    fake = fake_ahead
    truth: list[float] = []
    with make_agent(fake, database_url, **CLOCK) as agent:
        for n in range(3):
            truth.append(real_time() + HOURS_3)
            agent.tracking.add_event({"registered": "ann"}, "view", {"n": n})
        truth.append(real_time() + HOURS_3)
        agent.tracking.update_customer_properties({"registered": "ann"}, {"plan": "gold"})
        assert agent.flush().delivered == 4
        stats = agent.stats()
    delivered = [e["timestamp"] for e in fake.events]
    assert all(abs(d - t) < 1.0 for d, t in zip(delivered, truth[:3], strict=True)), delivered
    update_stamp = fake.batches[-1][-1]["data"]["update_timestamp"]
    assert abs(update_stamp - truth[3]) < 1.0
    assert delivered == sorted(delivered) and len(set(delivered)) == 3  # order, no collisions
    assert abs(stats["clock_offset_s"] - HOURS_3) < 1.0
    assert stats["clock_corrected"] == 4
    assert clock_row(stats).startswith("server +10") and clock_row(stats).endswith("4 corrected")


@pytest.mark.parametrize("fake_ahead", [HOURS_3], indirect=True)
def test_a_corrected_timestamp_is_identical_across_a_forced_retry(fake_ahead, tmp_path):
    fake = fake_ahead
    fake.fail_next(status=503, path_contains="/batch")
    with make_agent(fake, tmp_path / "outbox.db", backoff_base=0.05, **CLOCK) as agent:
        agent.tracking.add_event({"registered": "ann"}, "view")
        agent.tracking.add_event({"registered": "bob"}, "view")
        assert agent.flush(timeout=10).delivered == 2
    first, second = batch_stamps(fake)
    assert first == second
    assert all(abs(s - (real_time() + HOURS_3)) < 30 for s in first)  # corrected, not raw


@pytest.mark.parametrize("fake_ahead", [1.5], indirect=True)
def test_jitter_below_the_threshold_never_changes_a_timestamp(fake_ahead, tmp_path):
    fake, db = fake_ahead, tmp_path / "outbox.db"
    with make_agent(fake, db, **CLOCK) as agent:
        for n in range(5):
            agent.tracking.add_event({"registered": "ann"}, "view", {"n": n})
        recorded = stored_stamps(db)
        assert agent.flush().delivered == 5
        assert agent.stats()["clock_corrected"] == 0
    assert [e["timestamp"] for e in fake.events] == recorded


@pytest.mark.parametrize("fake_ahead", [HOURS_3], indirect=True)
def test_a_timestamp_the_caller_gave_is_never_corrected(fake_ahead, tmp_path):
    fake = fake_ahead
    given = float(int(real_time()) - 60)
    with make_agent(fake, tmp_path / "outbox.db", **CLOCK) as agent:
        agent.tracking.add_event({"registered": "ann"}, "view", timestamp=given)
        agent.tracking.batch_commands(
            [{"name": "customers/events", "data": {"customer_ids": {"registered": "bob"},
              "event_type": "view", "timestamp": given}}]
        )  # fmt: skip
        assert agent.flush().delivered == 2
    assert [e["timestamp"] for e in fake.events] == [given, given]


@pytest.mark.parametrize("fake_ahead", [0.0], indirect=True)
def test_a_boot_in_1970_is_corrected_from_what_its_boot_learned(fake_ahead, tmp_path):
    """The RTC battery died: the device believes it is 1970. The boot's offset (56 years) is
    learned from the server before anything is claimed, and every timestamp is true."""
    fake = fake_ahead
    with freeze_time(YEAR_1970, tick=True):
        with make_agent(fake, tmp_path / "outbox.db", **CLOCK) as agent:
            agent.tracking.add_event({"registered": "ann"}, "view")
            truth = real_time()
            assert agent.flush().delivered == 1
            assert agent.stats()["clock_offset_s"] > 50 * 365 * 86400
    assert abs(fake.events[0]["timestamp"] - truth) < 1.0


def enqueue_from_another_boot(agent: Any, stamp: float) -> None:
    """A command recorded in an earlier boot whose offset was never learned."""
    data = {"customer_ids": {"registered": "old"}, "event_type": "view", "timestamp": stamp}
    row = NewCommand("customers/events", '{"registered":"old"}', json.dumps(data),
                     boot="an-earlier-boot", mono=12.5)  # fmt: skip
    agent.store.enqueue([row])


@pytest.mark.parametrize("fake_ahead", [0.0], indirect=True)
def test_a_1970_command_of_an_unlearned_boot_is_corrected_from_a_learned_one(fake_ahead, tmp_path):
    """Both boots started in 1970 (same dead battery): the learned boot's offset makes the old
    boot's timestamp possible again, so it is applied."""
    fake = fake_ahead
    with freeze_time(YEAR_1970, tick=True):
        with make_agent(fake, tmp_path / "outbox.db", **CLOCK) as agent:
            recorded = time.time() - 600  # ten minutes before this boot, as its clock said
            enqueue_from_another_boot(agent, recorded)
            assert agent.flush().delivered == 1
            offset = agent.stats()["clock_offset_s"]
    assert abs(fake.events[0]["timestamp"] - (recorded + offset)) < 1.0
    assert fake.events[0]["timestamp"] > c.CLOCK_SANE_FLOOR


@pytest.mark.parametrize("fake_ahead", [0.0], indirect=True)
def test_an_impossible_timestamp_no_boot_can_fix_is_sent_as_recorded_and_counted(
    fake_ahead, tmp_path
):
    fake = fake_ahead
    with make_agent(fake, tmp_path / "outbox.db", **CLOCK) as agent:  # this clock is right
        enqueue_from_another_boot(agent, 86_400.0)  # 1970-01-02
        assert agent.flush().delivered == 1
        stats = agent.stats()
    assert fake.events[0]["timestamp"] == 86_400.0
    assert (stats["clock_corrected"], stats["clock_uncorrected"]) == (0, 1)


def test_clock_correction_is_on_by_default():
    assert Settings(TOKEN).clock_correction is True
    assert DrainPolicy().clock_correction is True


@both_backends
@pytest.mark.parametrize("fake_ahead", [HOURS_3], indirect=True)
def test_a_server_that_never_tells_its_time_does_not_stall_delivery(fake_ahead, database_url):
    """system/time answers 404 forever (a proxy, an emulator without it): after
    CLOCK_LEARN_ATTEMPTS answers the commands go out as recorded, counted; the default
    settings (no clock_correction given) behave so."""
    fake = fake_ahead
    fake.fail_next(n=1000, status=404, path_contains="system/time")
    with make_agent(fake, database_url, reach_probe_interval=0.1) as agent:
        agent.tracking.add_event({"registered": "ann"}, "view")
        agent.tracking.update_customer_properties({"registered": "ann"}, {"plan": "gold"})
        assert agent.flush(timeout=10).delivered == 2
        stats = agent.stats()
    assert asked_time(fake) == c.CLOCK_LEARN_ATTEMPTS  # then no more while delivering
    (stamps,) = batch_stamps(fake)
    assert all(abs(s - real_time()) < 30 for s in stamps), stamps  # as recorded, not +3 h
    assert (stats["clock_unknown"], stats["clock_corrected"], stats["clock_offset_s"]) == (
        2,
        0,
        None,
    )
    assert "system/time" in stats["last_error"]  # status says why
    assert clock_row(stats) == "unknown; 2 sent as recorded"


@pytest.mark.parametrize("fake_ahead", [HOURS_3], indirect=True)
def test_an_unreachable_server_still_holds_claims_until_its_clock_is_known(fake_ahead, tmp_path):
    """No answer at all is not "answered without its time": an offline device keeps waiting
    (a batch would get no answer either), so nothing is frozen uncorrected."""
    fake = fake_ahead
    fake.drop_next(n=1000, path_contains="system/time")
    with make_agent(fake, tmp_path / "outbox.db", reach_probe_interval=0.1) as agent:
        agent.tracking.add_event({"registered": "ann"}, "view")
        assert agent.flush(timeout=1.0).delivered == 0
        assert asked_time(fake) > c.CLOCK_LEARN_ATTEMPTS  # more than a refusing server gets
        assert fake.batches == []  # and still held
        fake.clear_faults()
        assert agent.flush(timeout=10).delivered == 1
        assert agent.stats()["clock_unknown"] == 0
    assert abs(fake.events[0]["timestamp"] - (real_time() + HOURS_3)) < 30


@pytest.mark.parametrize("fake_ahead", [HOURS_3], indirect=True)
def test_nothing_is_claimed_before_the_servers_clock_is_known(fake_ahead, tmp_path):
    """The API does not answer system/time: rows stay undecided (not frozen), nothing is sent;
    once it answers, they go out corrected."""
    fake = fake_ahead
    fake.fail_next(n=1, status=503, path_contains="/system/time")
    with make_agent(fake, tmp_path / "outbox.db", reach_probe_interval=0.2, **CLOCK) as agent:
        agent.tracking.add_event({"registered": "ann"}, "view")
        result = agent.flush()
        assert result.delivered == 0 and "system/time" in (result.last_error or "")
        assert fake.batches == []
        assert "system/time" in agent.stats()["last_error"]  # status says why
        assert agent.flush(timeout=10).delivered == 1
    assert abs(fake.events[0]["timestamp"] - (real_time() + HOURS_3)) < 30


def test_correct_time_keeps_distinct_stamps_distinct_and_respects_the_threshold():
    ref = BootRef(server=1_800_000_100.0, mono=100.0, wall=1_800_000_000.0)  # 100 s offset
    refs = {"b": ref}
    a, _ = correct_time(1_799_999_990.000001, "b", 90.0, refs, 1_800_000_100.0)
    b, _ = correct_time(1_799_999_990.000002, "b", 90.0, refs, 1_800_000_100.0)
    assert a is not None and b is not None and a < b
    small = {"b": BootRef(server=1_800_000_001.9, mono=100.0, wall=1_800_000_000.0)}
    assert correct_time(1_799_999_990.0, "b", 90.0, small, 1_800_000_000.0) == (None, False)
    # The wall clock jumped after the command (NTP fixed it): the boot clock knows better.
    jumped = correct_time(86_400.0, "b", 40.0, refs, 1_800_000_100.0)
    assert jumped == (pytest.approx(1_800_000_040.0), False)


CHILD = """
import json, os, signal, sys, time
from tracker_agent import TrackerAgent
agent = TrackerAgent(sys.argv[1], "key-id", "secret", url=sys.argv[2],
                     database_url="sqlite:///" + sys.argv[3], drain=False, clock_correction=True)
agent.tracking.add_event({"registered": "ann"}, "view")
agent.tracking.add_event({"registered": "bob"}, "view")
agent._ask_server_time()
_, rows = agent.store.claim_if(agent.drainer.owner, limit=50, max_bytes=10**6,
                               lease_seconds=3600, now=time.time(), fix_clock=True)
# claimed: corrected and frozen; killed as if its request went out
print(json.dumps([json.loads(r.payload)["timestamp"] for r in rows]), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("fake_ahead", [HOURS_3], indirect=True)
def test_a_corrected_timestamp_survives_a_kill_9_unchanged(fake_ahead, tmp_path):
    """Killed right after the claim that corrected the rows (as if its request was applied):
    the next process sends the same timestamps, even though it learned another offset."""
    fake, db = fake_ahead, tmp_path / "outbox.db"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, TOKEN, fake.url, str(db)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == -9, proc.stderr
    claimed = json.loads(proc.stdout)
    assert all(abs(s - (real_time() + HOURS_3)) < 30 for s in claimed)
    with make_agent(fake, db, **CLOCK) as agent:
        # A different reference now (an hour off): a row not frozen would change.
        agent.store.learn_clock(boot_id(), BootRef(real_time() + 4 * 3600, 0.0, real_time()), 0)
        assert agent.flush().delivered == 2
    assert sorted(e["timestamp"] for e in fake.events) == sorted(claimed)


def test_a_0005_file_with_queued_rows_gets_the_clock_columns_in_place_and_sends_them_as_is(
    tmp_path,
):
    path = tmp_path / "from-0005.db"
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", f"sqlite:///{path}")
    command.upgrade(config, "0005")
    old = sqlite3.connect(path)
    old.executemany(
        "INSERT INTO outbox (kind, customer_key, payload, size, created_at) VALUES (?,?,?,?,?)",
        [("customers/events", "a", '{"timestamp":86400.0}', 21, 1.0)] * 3,
    )
    old.commit()
    (rootpage,) = old.execute("SELECT rootpage FROM sqlite_master WHERE name = 'outbox'").fetchone()
    old.close()
    engine = open_outbox(f"sqlite:///{path}")
    try:
        store = OutboxStore(engine, max_rows=100, max_bytes=10**6)
        store.learn_clock("this-boot", BootRef(2_000_000_000.0, 1.0, 1_000_000_000.0), 0.0)
        _, rows = store.claim_if(
            "x", limit=10, max_bytes=10**6, lease_seconds=10, now=100.0, fix_clock=True
        )
        assert [r.payload for r in rows] == ['{"timestamp":86400.0}'] * 3  # no boot: as is
        store.close()
    finally:
        engine.dispose()
    check = sqlite3.connect(path)
    assert check.execute("SELECT rootpage FROM sqlite_master WHERE name = 'outbox'").fetchone() == (
        rootpage,
    )  # ALTER TABLE ADD COLUMN: the table was not copied
    check.close()


class _Store:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def knows_clock(self, boot: str) -> bool:
        return False

    def note_error(self, reason: str, now: float) -> None:
        self.errors.append(reason)


def test_the_gate_holds_claims_until_answered_then_refreshes_hourly_at_best_effort():
    clock, asked, answers = [0.0], [], [False, True, False, True]

    def probe() -> None:
        asked.append(clock[0])
        if not answers.pop(0):
            raise TransportError("refused")

    reach = ReachProbe(probe, 5.0, clock=lambda: clock[0])
    store = _Store()
    gate = ClockGate(reach, store, enabled=True, now=lambda: 1e9, clock=lambda: clock[0])
    waiting = gate.closed()
    assert waiting is not None and waiting.waits and "system/time" in store.errors[0]
    clock[0] = 1.0
    assert gate.closed() is not None and asked == [0.0]  # not due: no request
    clock[0] = 5.0
    assert gate.closed() is None  # answered: claims go on
    clock[0] = 5.0 + c.CLOCK_RELEARN_SECONDS - 1
    assert gate.closed() is None and asked == [0.0, 5.0]
    clock[0] = 5.0 + c.CLOCK_RELEARN_SECONDS
    assert gate.closed() is None  # asked again; its failure holds nothing back
    clock[0] = 5.0 + 2 * c.CLOCK_RELEARN_SECONDS
    assert gate.closed() is None
    assert asked == [0.0, 5.0, 5.0 + c.CLOCK_RELEARN_SECONDS, 5.0 + 2 * c.CLOCK_RELEARN_SECONDS]


def test_the_gate_is_open_without_clock_correction():
    reach = ReachProbe(lambda: 1.0, 5.0)
    assert ClockGate(reach, _Store(), enabled=False, now=lambda: 0.0).closed() is None


def test_the_gate_gives_up_after_answers_without_the_time_and_asks_again_later():
    clock, asked = [0.0], []
    failures: list[Exception] = [TransportError("refused")] + [
        NotFoundError("no such path", status_code=404)
    ] * (c.CLOCK_LEARN_ATTEMPTS + 1)

    def probe() -> None:
        asked.append(clock[0])
        if failures:
            raise failures.pop(0)

    reach = ReachProbe(probe, 5.0, clock=lambda: clock[0])
    gate = ClockGate(reach, _Store(), enabled=True, now=lambda: 1e9, clock=lambda: clock[0])
    for _ in range(c.CLOCK_LEARN_ATTEMPTS):  # the refusal counts for nothing; 404s do
        assert gate.closed() is not None
        clock[0] += 5.0
    assert gate.closed() is None  # the last 404: delivery goes on, as recorded
    gave_up = clock[0]
    assert len(asked) == c.CLOCK_LEARN_ATTEMPTS + 1
    clock[0] = gave_up + c.CLOCK_UNKNOWN_RETRY_SECONDS - 1
    assert gate.closed() is None and len(asked) == c.CLOCK_LEARN_ATTEMPTS + 1
    clock[0] = gave_up + c.CLOCK_UNKNOWN_RETRY_SECONDS
    assert gate.closed() is None and len(asked) == c.CLOCK_LEARN_ATTEMPTS + 2  # a 404 again
    clock[0] += c.CLOCK_UNKNOWN_RETRY_SECONDS
    assert gate.closed() is None and len(asked) == c.CLOCK_LEARN_ATTEMPTS + 3  # answered
    clock[0] += c.CLOCK_UNKNOWN_RETRY_SECONDS
    assert gate.closed() is None and len(asked) == c.CLOCK_LEARN_ATTEMPTS + 3  # hourly now
    clock[0] += c.CLOCK_RELEARN_SECONDS
    assert gate.closed() is None and len(asked) == c.CLOCK_LEARN_ATTEMPTS + 4
