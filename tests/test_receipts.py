"""Receipts: an id for a tracking call, and where that command stands through every ending
(delivered, dead-lettered, retried then delivered, pruned by retention, unknown) across a
daemon restart; the on_settled hook; `tracker-agent receipt`; ids never reused. The library's
endings and the store's contract run on SQLite and PostgreSQL (@both_backends)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import both_backends, make_agent, sqlite_url, wait_for

from tracker_agent import Receipt, ReceiptStatus
from tracker_agent.cli import cli
from tracker_agent.drain import Drainer
from tracker_agent.exceptions import ValidationError, ValidationTypeError
from tracker_agent.outbox.engine import open_outbox
from tracker_agent.outbox.leases import Settlement
from tracker_agent.outbox.stats import read_status
from tracker_agent.outbox.store import NewCommand, OutboxStore
from tracker_agent.policy import DrainPolicy
from tracker_agent.testing import FakeExponea

ROOT = Path(__file__).resolve().parent.parent
PROCESS_TIMEOUT_SECONDS = 20


@pytest.fixture(autouse=True)
def _isolated(isolated_cli: None) -> None:
    """No config file, environment or logging of the machine leaks into a command."""


def run_daemon_until(fake: FakeExponea, db: Path, tmp_path: Path, done: Any) -> None:
    """`tracker-agent run` on `db` until done() holds, then SIGTERM (exit 0)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tracker_agent", "run"],
        env={
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(ROOT),
            "HOME": str(tmp_path),
            "TRACKER_AGENT_PROJECT_TOKEN": fake.project_token,
            "TRACKER_AGENT_USERNAME": fake.username,
            "TRACKER_AGENT_PASSWORD": fake.password,
            "TRACKER_AGENT_URL": fake.url,
            "TRACKER_AGENT_DATABASE_URL": sqlite_url(db),
            "TRACKER_AGENT_DRAIN_INTERVAL": "0.1",
            "TRACKER_AGENT_BACKOFF_BASE": "0.05",
            "TRACKER_AGENT_BACKOFF_CAP": "0.1",
        },  # fmt: skip
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert wait_for(done, PROCESS_TIMEOUT_SECONDS)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=PROCESS_TIMEOUT_SECONDS)
    assert proc.returncode == 0, err


def settled(db: Path) -> tuple[int, int]:
    """(delivered, dead-lettered) as the outbox counts them."""
    stats = read_status(str(db))
    return stats["delivered"], stats["dead_lettered"]


def cli_receipts(db: Path, *ids: int) -> list[dict[str, Any]]:
    result = CliRunner().invoke(
        cli, ["receipt", *map(str, ids), "--json", "--database-url", sqlite_url(db)]
    )
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_receipts_through_every_ending_across_daemon_restarts(
    fake: FakeExponea, tmp_path: Path
) -> None:
    db = tmp_path / "outbox.db"
    with make_agent(fake, db) as producer:  # drain=False: the daemon delivers
        first = producer.track_event({"registered": "a"}, "viewed", {"n": 1})
        assert producer.tracking.add_event({"registered": "a"}, "viewed", {"n": 2}) is True
        assert producer.receipt(first).state == "queued"
    run_daemon_until(fake, db, tmp_path, lambda: settled(db) == (2, 0))

    with make_agent(fake, db) as producer:  # the app restarted too
        retried = producer.track_customer_update({"registered": "b"}, {"tier": "gold"})
        refused = producer.track_event({"registered": "c"}, "poison")
    fake.fail_next(1, status=503, path_contains="/batch")  # the next batch is retried once ...
    fake.reject_commands(lambda c: c["data"].get("event_type") == "poison", "bad event")
    run_daemon_until(fake, db, tmp_path, lambda: settled(db) == (3, 1))

    with make_agent(fake, db) as reader:
        waiting = reader.track_event({"registered": "d"}, "viewed")
        states = reader.receipts([first, retried, refused, waiting, 10_000])
        assert [s.state for s in states] == [
            "delivered", "delivered", "dead_lettered", "queued", "unknown",
        ]  # fmt: skip
        assert [s.attempts for s in states] == [1, 2, 2, 0, None]
        assert states[0].delivered_at is not None and states[1].delivered_at is not None
        assert states[2].reason == "rejected by the server: bad event"
        assert states[2].status_code == 200 and states[2].dead_at is not None
    from_cli = cli_receipts(db, first.id, retried.id, refused.id, waiting.id, 10_000)
    assert [r["state"] for r in from_cli] == [s.state for s in states]
    assert from_cli[2]["reason"] == "rejected by the server: bad event"


@both_backends
def test_a_dead_letter_put_back_keeps_its_receipt_and_is_then_delivered(
    fake: FakeExponea, database_url: str
) -> None:
    with make_agent(fake, database_url) as agent:
        receipt = agent.track_event({"registered": "a"}, "viewed")
        fake.reject_commands(lambda c: True, "not yet")
        agent.flush()
        assert agent.receipt(receipt).state == "dead_lettered"
        fake.reject_commands(None)
        assert agent.retry_dead_letters(ids=[receipt.id]) == 1
        assert agent.receipt(receipt).state == "queued"
        assert agent.flush().ok
        status = agent.receipt(receipt)
    assert (status.state, status.attempts) == ("delivered", 1)  # counted since put back


@both_backends
def test_on_settled_is_called_once_per_settled_command_off_the_drain_thread(
    fake: FakeExponea, database_url: str
) -> None:
    heard: list[tuple[ReceiptStatus, str]] = []

    def on_settled(status: ReceiptStatus) -> None:
        heard.append((status, threading.current_thread().name))

    with make_agent(fake, database_url, on_settled=on_settled,
                    backoff_base=0.01, backoff_cap=0.02) as agent:  # fmt: skip
        receipts = [agent.track_event({"registered": f"u{i}"}, "viewed") for i in range(60)]
        poison = agent.track_event({"registered": "p"}, "poison")
        agent.tracking.add_event({"registered": "x"}, "no receipt")
        fake.fail_next(1, status=503, path_contains="/batch")
        fake.reject_commands(lambda c: c["data"].get("event_type") == "poison", "bad")
        assert agent.flush(timeout=10).remaining == 0
        assert wait_for(lambda: len(heard) >= 61)
    ids = sorted(status.id for status, _ in heard)
    assert ids == sorted(r.id for r in [*receipts, poison])  # each once; none without receipt
    by_id = {status.id: status for status, _ in heard}
    assert by_id[poison.id].state == "dead_lettered" and by_id[poison.id].reason
    assert {by_id[r.id].state for r in receipts} == {"delivered"}
    assert {thread for _, thread in heard} == {"tracker-agent-on_settled"}


@both_backends
def test_a_failing_or_slow_on_settled_never_holds_up_delivery(
    fake: FakeExponea, database_url: str
) -> None:
    release = threading.Event()
    calls: list[int] = []

    def on_settled(status: ReceiptStatus) -> None:
        calls.append(status.id)
        release.wait(10)
        raise RuntimeError("the app's bug")

    with make_agent(fake, database_url, on_settled=on_settled, shutdown_grace=5) as agent:
        for i in range(120):
            agent.track_event({"registered": f"u{i % 7}"}, "viewed")
        assert agent.flush().ok  # the hook is stuck on its first call meanwhile
        assert wait_for(lambda: len(calls) == 1) and not release.is_set()
        release.set()
        assert wait_for(lambda: len(calls) == 120)


# ---------------------------------------------------------------------------- retention


@pytest.fixture
def store(database_url: str) -> Any:
    engine = open_outbox(database_url)
    # On PostgreSQL too, the tests' clock stamps leases and deliveries (db_clock=False).
    store = OutboxStore(engine, max_rows=100_000, max_bytes=10**9, db_clock=False)
    yield store
    store.close()
    engine.dispose()


def enqueue(store: OutboxStore, customer: str, receipt: bool = True) -> int:
    data = {"customer_ids": {"registered": customer}, "event_type": "e", "timestamp": 1.0}
    command = NewCommand("customers/events", json.dumps(data["customer_ids"]), json.dumps(data),
                         receipt=receipt)  # fmt: skip
    store.enqueue([command])
    return command.id


@both_backends
def test_delivered_receipts_are_pruned_by_age_and_by_rows(
    fake: FakeExponea, store: OutboxStore
) -> None:
    clock = [1_900_000_000.0]
    from tracker_agent.client import Exponea

    with Exponea(fake.project_token, fake.username, fake.password, url=fake.url) as client:
        policy = DrainPolicy(receipt_retention=3600, receipt_max_rows=2, rate_limit=10_000)
        drainer = Drainer(store, client.tracking.send_stored_batch, policy,
                          now=lambda: clock[0])  # fmt: skip

        def deliver_one(customer: str) -> int:
            row_id = enqueue(store, customer)
            clock[0] += 61  # the next pass prunes (at most once a minute)
            assert drainer.drain().delivered == 1
            return row_id

        ids = [deliver_one(c) for c in "abc"]  # each pass prunes before it delivers
        assert [s.state for s in store.receipts(ids)] == ["delivered"] * 3
        clock[0] += 61
        drainer.drain()  # three remembered, two allowed: the oldest delivery goes
        assert [s.state for s in store.receipts(ids)] == ["unknown", "delivered", "delivered"]
        clock[0] += 10  # not a minute since the last prune: nothing happens
        drainer.drain()
        clock[0] += 3600
        drainer.drain()  # past the retention
        assert [s.state for s in store.receipts(ids)] == ["unknown"] * 3
        drainer.close()


@both_backends
def test_prune_deletes_in_batches_until_done(store: OutboxStore) -> None:
    ids = [enqueue(store, f"u{i}") for i in range(25)]
    claimed = store.claim("me", limit=50, max_bytes=10**9, lease_seconds=60, now=100.0)
    outcome = Settlement(delivered=ids, receipts={i: 1 for i in ids})
    assert store.settle("me", outcome, now=100.0) == 25 and len(claimed) == 25
    assert store.prune_receipts(200.0, max_age=10, max_rows=100, batch=7) == 25
    assert {s.state for s in store.receipts(ids)} == {"unknown"}


@both_backends
def test_in_flight_while_leased_then_queued_again_when_released(store: OutboxStore) -> None:
    row_id = enqueue(store, "a")
    store.claim("me", limit=1, max_bytes=10**9, lease_seconds=60, now=store._now())
    assert store.receipts([row_id])[0].state == "in_flight"
    store.release_all("me")
    assert store.receipts([row_id])[0].state == "queued"


# ---------------------------------------------------------------------------- ids


@both_backends
def test_ids_are_never_reused_after_the_newest_row_is_delivered(store: OutboxStore) -> None:
    first = enqueue(store, "a")
    store.claim("me", limit=1, max_bytes=10**9, lease_seconds=60, now=store._now())
    store.settle("me", Settlement(delivered=[first], receipts={first: 1}), now=store._now())
    second = enqueue(store, "a")  # the table is empty: plain rowid would hand out `first`
    assert second > first
    assert store.receipts([first, second])[0].state == "delivered"


@both_backends
def test_a_group_commit_round_gives_each_caller_its_own_consecutive_ids(
    store: OutboxStore,
) -> None:
    plain = NewCommand("customers/events", '{"registered":"x"}', '{"customer_ids":{}}')
    with_receipts = [
        NewCommand("customers/events", '{"registered":"y"}', '{"customer_ids":{}}', receipt=True)
        for _ in range(3)
    ]
    store._write_round([[plain], with_receipts])  # two callers in one round
    ids = [c.id for c in with_receipts]
    assert ids == list(range(ids[0], ids[0] + 3)) and ids[0] > 1
    assert {s.state for s in store.receipts(ids)} == {"queued"}


@both_backends
def test_receipt_refuses_what_is_not_an_id(fake: FakeExponea, database_url: str) -> None:
    with make_agent(fake, database_url) as agent:
        with pytest.raises(ValidationTypeError):
            agent.receipt("12")  # type: ignore[arg-type]
        with pytest.raises(ValidationTypeError):
            agent.receipt(True)
        with pytest.raises(ValidationError):
            agent.receipt(-1)
        with pytest.raises(ValidationTypeError):
            agent.receipts(Receipt(1))  # type: ignore[arg-type]
        assert agent.receipt(0).state == "unknown"


def test_test_mode_receipts_are_unknown_and_nothing_is_stored(
    fake: FakeExponea, tmp_path: Path
) -> None:
    with make_agent(fake, tmp_path / "o.db", enabled=False) as agent:
        receipt = agent.track_event({"registered": "a"}, "viewed")
        assert receipt == Receipt(0)
        assert agent.receipt(receipt).state == "unknown"
    assert not (tmp_path / "o.db").exists()


def test_receipt_cli_table_and_a_file_that_is_not_an_outbox(
    fake: FakeExponea, tmp_path: Path
) -> None:
    db = tmp_path / "o.db"
    with make_agent(fake, db) as agent:
        receipt = agent.track_event({"registered": "a"}, "viewed")
    result = CliRunner().invoke(cli, ["receipt", str(receipt), "7", "--database-url",
                                      sqlite_url(db)])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "ATTEMPTS", "WHEN", "DETAIL"]
    assert lines[1].split()[:3] == [str(receipt), "queued", "0"]
    assert lines[2].split() == ["7", "unknown", "-", "-"]
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    result = CliRunner().invoke(cli, ["receipt", "1", "--database-url", sqlite_url(junk)])
    assert result.exit_code == 1 and "tracker-agent: error:" in result.stderr
    result = CliRunner().invoke(cli, ["receipt", "-3", "--database-url", sqlite_url(db)])
    assert result.exit_code == 2


@both_backends
def test_receipt_cli_reads_the_outbox_of_either_database(
    fake: FakeExponea, database_url: str
) -> None:
    with make_agent(fake, database_url) as agent:
        delivered = agent.track_event({"registered": "a"}, "viewed")
        assert agent.flush().ok
        queued = agent.track_event({"registered": "a"}, "viewed")
    result = CliRunner().invoke(
        cli, ["receipt", str(delivered), str(queued), "7", "--json", "--database-url", database_url]
    )
    assert result.exit_code == 0, result.output
    shown = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(s["id"], s["state"]) for s in shown] == [
        (delivered.id, "delivered"), (queued.id, "queued"), (7, "unknown"),
    ]  # fmt: skip


def test_track_command_prints_a_receipt_that_receipt_then_follows(
    fake: FakeExponea, tmp_path: Path
) -> None:
    db = sqlite_url(tmp_path / "o.db")
    env = {"TRACKER_AGENT_PROJECT_TOKEN": fake.project_token, "TRACKER_AGENT_URL": fake.url,
           "TRACKER_AGENT_USERNAME": fake.username, "TRACKER_AGENT_PASSWORD": fake.password,
           "TRACKER_AGENT_DATABASE_URL": db}  # fmt: skip
    queued = CliRunner().invoke(
        cli, ["track", "event", "--customer", "registered=a", "--type", "viewed"], env=env
    )
    assert queued.exit_code == 0, queued.output
    receipt_id = int(queued.stdout.split("(receipt ")[1].split(":")[0])
    assert CliRunner().invoke(cli, ["flush"], env=env).exit_code == 0
    shown = CliRunner().invoke(cli, ["receipt", str(receipt_id), "--json"], env=env)
    assert json.loads(shown.stdout)["state"] == "delivered"


@both_backends
def test_a_clock_set_back_does_not_stop_retention(fake: FakeExponea, store: OutboxStore) -> None:
    clock = [1_900_000_000.0]
    from tracker_agent.client import Exponea

    with Exponea(fake.project_token, fake.username, fake.password, url=fake.url) as client:
        policy = DrainPolicy(receipt_max_rows=1, rate_limit=10_000)
        drainer = Drainer(store, client.tracking.send_stored_batch, policy,
                          now=lambda: clock[0])  # fmt: skip
        first = enqueue(store, "a")
        assert drainer.drain().delivered == 1  # pruned before it delivered: due next minute
        clock[0] += 1
        second = enqueue(store, "b")
        assert drainer.drain().delivered == 1
        clock[0] += 1
        drainer.drain()  # two receipts, one allowed, but pruning is not due for a minute
        assert [s.state for s in store.receipts([first, second])] == ["delivered"] * 2
        clock[0] -= 3600  # the clock is set back an hour: waiting for the minute would take 61
        drainer.drain()
        assert [s.state for s in store.receipts([first, second])] == ["unknown", "delivered"]
        drainer.close()
