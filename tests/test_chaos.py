"""Chaos: the daemon killed with SIGKILL mid-drain while producers enqueue and the API flaps.

Real processes on one outbox (an SQLite file, or a PostgreSQL database: each test runs on
both), a real FakeExponea on 127.0.0.1. The storm is seeded (CHAOS_SEED in the environment
replays another one) and every loop in it is bounded.

What the delivery contract promises, and these tests assert:

- every accepted event (add_event returned True) is delivered, nothing is dead-lettered;
- per customer, the server first sees the events in the order they were made. The claim never
  leases a customer's command while an earlier one of that customer is leased or waiting for
  its retry, and the rows it claims are a prefix of each customer's queue; so a later command
  is sent only after every earlier one was acknowledged, or in the same batch after it. A batch
  whose answer was lost is resent before anything later of its customers, and the server's
  dedup drops the repeat: first arrivals (FakeExponea.events) keep the exact enqueue order;
- duplicates: the server can receive an event twice only when a request it applied was not
  settled as delivered by the sender. That happens when the answer is lost (a timeout after
  the server acted: here only the apply_first delays, every other fault applies nothing and a
  late request is not applied once the client hung up) or when the drainer dies between the
  server applying its batch and the commit of that batch's outcome (recorded in `settling`,
  or settled). A daemon may have a second batch claimed and queued behind the one in flight,
  but sends it only once the first's outcome is durable: so at most one batch per kill was
  applied by the server and not settled. Each such request holds at most 50 commands, and
  each extra receipt of an event maps to the unsettled request that preceded it, so
      duplicates <= 50 * (kills + lost-answer requests).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import both_backends, is_postgresql, wait_for

from tracker_agent import TrackerAgent
from tracker_agent.outbox.files import sqlite_path
from tracker_agent.outbox.pg_status import read_pg_status
from tracker_agent.outbox.stats import read_status
from tracker_agent.testing import FakeExponea

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

ROOT = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("CHAOS_SEED", "5051"))

BATCH_COMMANDS = 50  # the API's batch limit: at most this many commands per request
REQUEST_TIMEOUT_SECONDS = 0.8
CONNECT_TIMEOUT_SECONDS = 0.3  # leases must outlive two deadlines (2.2 s)
STORM_LEASE_SECONDS = 3.0
KILL_TEST_LEASE_SECONDS = 2.5
RETRY_AFTER_SECONDS = 0.2
#: How long hold_writes keeps trying to take the outbox's tables from a busy daemon.
LOCK_WAIT_SECONDS = 10.0
HEALTHY_LATENCY_SECONDS = 0.05  # a real network's round trip: batches are in flight a while
SLOW_SECONDS = 0.3  # latency well under the request timeout: slow but answered
SPIKE_SECONDS = 2.0  # twice the request timeout: the client has long hung up
MODE_USES = 1_000_000  # a fault queued this many times acts on every request until cleared
PROCESS_TIMEOUT_SECONDS = 30.0
DRAIN_TIMEOUT_SECONDS = 60.0
POLL_SECONDS = 0.01
LEASE_WAIT_SECONDS = 1.5  # how long a kill waits for the live daemon to lease a batch
KILL_OFFSET_SECONDS = 0.15  # then it strikes at a random point within this

FAULT_MODES = ("5xx", "429", "drop", "slow", "spike", "lost-answer", "revoked")
STORM_ROUNDS = 2  # every fault mode comes this many times, in a seeded order
STORM_KILLS = (5, 8)  # SIGKILLs in a storm: a seeded number in this range
# PostgreSQL's storm is half as long (every fault mode once, about half the kills) to keep the
# suite's time in check: the full one would add about 50 s. The kill test runs in full on both.
PG_STORM_ROUNDS = 1
PG_STORM_KILLS = (3, 4)

PRODUCERS = 4
CUSTOMERS_PER_PRODUCER = 3
MAX_EVENTS_PER_PRODUCER = 4000
PRODUCER_PAUSE_SECONDS = 0.04  # between two add_event calls: uniform in [0, this]

# A producer-only process: add_event without start(); each accepted event is appended to its
# file ("id customer seq") right after add_event returned True. Any failure exits non-zero.
PRODUCER = """
import json, os, random, sys, time
from tracker_agent import TrackerAgent
name, accepted_path, stop_path, seed, config = sys.argv[1:6]
config = json.loads(config)
rng = random.Random(seed)
agent = TrackerAgent(**config["agent"])
sequence = [0] * config["customers"]
with open(accepted_path, "w") as accepted:
    for n in range(config["max_events"]):
        if os.path.exists(stop_path):
            break
        c = rng.randrange(config["customers"])
        customer, seq = f"{name}-c{c}", sequence[c]
        ok = agent.tracking.add_event(
            {"registered": customer}, "chaos", {"id": f"{name}-{n}", "seq": seq}
        )
        if ok is not True:
            sys.exit(f"add_event returned {ok!r}")
        sequence[c] += 1
        accepted.write(f"{name}-{n} {customer} {seq}\\n")
        accepted.flush()
        time.sleep(rng.uniform(0, config["pause"]))
agent.close()
"""


@pytest.fixture
def fake() -> Iterator[FakeExponea]:
    with FakeExponea() as server:
        yield server


def base_env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "empty.toml"  # never pick up a machine-wide config file
    config.write_text("")
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "TRACKER_AGENT_CONFIG": str(config),
    }


def daemon_env(fake: FakeExponea, tmp_path: Path, db_url: str, lease: float) -> dict[str, str]:
    return {
        **base_env(tmp_path),
        "TRACKER_AGENT_PROJECT_TOKEN": fake.project_token,
        "TRACKER_AGENT_USERNAME": fake.username,
        "TRACKER_AGENT_PASSWORD": fake.password,
        "TRACKER_AGENT_URL": fake.url,
        "TRACKER_AGENT_DATABASE_URL": db_url,
        "TRACKER_AGENT_LEASE_SECONDS": str(lease),
        "TRACKER_AGENT_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_SECONDS),
        "TRACKER_AGENT_CONNECT_TIMEOUT": str(CONNECT_TIMEOUT_SECONDS),
        "TRACKER_AGENT_DRAIN_INTERVAL": "0.1",
        "TRACKER_AGENT_BACKOFF_BASE": "0.05",
        "TRACKER_AGENT_BACKOFF_CAP": "0.5",
        "TRACKER_AGENT_PAUSE_PROBE_INTERVAL": "0.5",
        "TRACKER_AGENT_RATE_LIMIT": "1000",
        "TRACKER_AGENT_SHUTDOWN_GRACE": "3",
    }


def open_agent(fake: FakeExponea, db_url: str) -> TrackerAgent:
    return TrackerAgent(
        fake.project_token,
        username=fake.username,
        password=fake.password,
        url=fake.url,
        database_url=db_url,
        drain=False,  # it only queues: the daemon delivers
    )


class Daemon:
    """`python -m tracker_agent run` on the outbox, restarted after each SIGKILL."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd
        self.log_path = cwd / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    def start(self) -> None:
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tracker_agent", "run"],
                env=self.env,
                cwd=self.cwd,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        self.starts += 1

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(PROCESS_TIMEOUT_SECONDS) == -signal.SIGKILL, "exited before the kill"
        self.kills += 1

    def terminate(self) -> int:
        """SIGTERM (graceful stop); returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(PROCESS_TIMEOUT_SECONDS)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(PROCESS_TIMEOUT_SECONDS)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class OutboxPeek(ABC):
    """Read-only looks at the outbox (as `tracker-agent status` reads it), and a hold on its
    writes; `open_peek` picks the backend's twin from the URL. Leases are compared with this
    host's clock: on PostgreSQL they are on the database's, the same one here (127.0.0.1)."""

    mark = "?"  # the driver's placeholder

    @abstractmethod
    def rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """The outbox's stats, read as `tracker-agent status` reads them."""

    @abstractmethod
    def hold_writes(self) -> AbstractContextManager[None]:
        """A context: while in it, no other connection commits a write to `outbox` or
        `settling` (readers go on); nothing is written, and the hold ends in a rollback."""

    @abstractmethod
    def end_dead_sessions(self) -> None:
        """After a kill inside hold_writes: make the database drop what the dead daemon had
        sent but not committed."""

    @abstractmethod
    def close(self) -> None: ...

    def lease_owners(self) -> set[str]:
        """Drainers holding an unexpired lease (live ones, or dead ones until it runs out)."""
        rows = self.rows(
            f"SELECT DISTINCT lease_owner FROM outbox WHERE lease_expires_at > {self.mark}",
            (time.time(),),
        )
        return {owner for (owner,) in rows if owner}

    def leased_event_ids(self, owners: set[str]) -> set[Any]:
        """The "id" property of every event leased by one of `owners`."""
        if not owners:
            return set()
        marks = ",".join([self.mark] * len(owners))
        rows = self.rows(
            f"SELECT payload FROM outbox WHERE lease_owner IN ({marks})"
            f" AND lease_expires_at > {self.mark}",
            (*owners, time.time()),
        )
        return {json.loads(payload)["properties"]["id"] for (payload,) in rows}


class SqlitePeek(OutboxPeek):
    """The outbox file through stdlib sqlite3, opened read-only."""

    def __init__(self, db_url: str) -> None:
        self.path = sqlite_path(db_url)
        self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)

    def rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()

    def status(self) -> dict[str, Any]:
        return read_status(self.path)

    def end_dead_sessions(self) -> None:
        pass  # the dead process held its write transaction: it died with it

    @contextmanager
    def hold_writes(self) -> Iterator[None]:
        with closing(sqlite3.connect(self.path, timeout=10, isolation_level=None)) as conn:
            conn.execute("BEGIN IMMEDIATE")  # the file's one write lock: every writer waits
            try:
                yield
            finally:
                conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()


class PostgresPeek(OutboxPeek):
    """The outbox database through psycopg: a read-only session in autocommit (each look is
    its own snapshot, and holds no lock between looks)."""

    mark = "%s"

    def __init__(self, db_url: str) -> None:
        import psycopg

        self.url = db_url
        self.conninfo = "postgresql://" + db_url.partition("://")[2]
        self.conn = psycopg.connect(
            self.conninfo, autocommit=True, options="-c default_transaction_read_only=on"
        )

    def rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()

    def status(self) -> dict[str, Any]:
        return read_pg_status(self.url)

    @contextmanager
    def hold_writes(self) -> Iterator[None]:
        import psycopg

        with psycopg.connect(self.conninfo) as conn:  # its own session: the peek's reads only
            # EXCLUSIVE conflicts with every lock a write takes (ROW EXCLUSIVE; FOR UPDATE's
            # ROW SHARE), not with plain reads: SQLite's BEGIN IMMEDIATE, for these tables.
            # Both at once or neither (NOWAIT, then again): a daemon transaction holding one
            # table while it waits for the other (a settle writes outbox, then its claim
            # reads settling) would otherwise deadlock with a hold that got the other first.
            deadline = time.monotonic() + LOCK_WAIT_SECONDS
            while True:
                try:
                    conn.execute("LOCK TABLE settling, outbox IN EXCLUSIVE MODE NOWAIT")
                    break
                except psycopg.errors.LockNotAvailable:
                    conn.rollback()
                    assert time.monotonic() < deadline, "the daemon held the outbox too long"
                    time.sleep(0.002)
            try:
                yield
            finally:
                conn.rollback()

    def end_dead_sessions(self) -> None:
        # A drainer's outcome record is one autocommitted INSERT: sent before the kill, it
        # waits for the hold and then commits on its own, the process gone or not (the
        # outcome is true: that batch is not sent again). The window this test is after is
        # the one before the INSERT reached the server: ending the dead daemon's blocked
        # sessions makes it so, as a crash a moment earlier would have.
        import psycopg

        with psycopg.connect(self.conninfo, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'tracker-agent' AND wait_event_type = 'Lock'"
            )

    def close(self) -> None:
        self.conn.close()


def open_peek(db_url: str) -> OutboxPeek:
    return PostgresPeek(db_url) if is_postgresql(db_url) else SqlitePeek(db_url)


@dataclass
class KillRecord:
    """One SIGKILL: how many events the dead daemon had leased, and how many of them the
    server applied in its last request (to come again: the drainer never settled them)."""

    mode: str
    waited: float  # for the running daemon to lease a batch (LEASE_WAIT_SECONDS: it did not)
    leased: int
    applied_before_settle: int


@dataclass
class Killer:
    """Kills the daemon at random points of its drain and starts a new one at once."""

    daemon: Daemon
    peek: OutboxPeek
    fake: FakeExponea
    rng: random.Random
    dead_owners: set[str] = field(default_factory=set)
    records: list[KillRecord] = field(default_factory=list)

    def wait_for_live_lease(self, timeout: float) -> bool:
        """Until the running daemon holds a lease, i.e. a batch is between claim and settle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.peek.lease_owners() - self.dead_owners:
                return True
            time.sleep(POLL_SECONDS)
        return False

    def kill_and_restart(
        self, mode: str, *, hold_settle: bool = False, lease_wait: float = LEASE_WAIT_SECONDS
    ) -> bool:
        """SIGKILL mid-drain, then restart; True if a batch was leased when it began.

        hold_settle: the test holds off every write to the outbox and `settling` while the
        batch in flight is applied, so the daemon dies after the server acted and before that
        batch's outcome is committed, recorded or settled (the case that produces duplicates;
        a batch queued behind it is not sent before that commit)."""
        began = time.monotonic()
        mid_batch = self.wait_for_live_lease(lease_wait)
        waited = time.monotonic() - began
        before = self.receipts()
        if hold_settle:
            with self.peek.hold_writes():  # the daemon's outcome commit now waits for us
                time.sleep(self.fake.latency + 0.5)  # the server applies and answers meanwhile
                self.daemon.kill()
                self.peek.end_dead_sessions()
        else:
            time.sleep(self.rng.uniform(0, KILL_OFFSET_SECONDS))
            self.daemon.kill()
        owners = self.peek.lease_owners() - self.dead_owners  # nobody else drains: the dead one
        leased = self.peek.leased_event_ids(owners)
        after = self.receipts()
        applied = sum(1 for event_id in leased if after[event_id] > before[event_id])
        self.records.append(KillRecord(mode, round(waited, 2), len(leased), applied))
        self.dead_owners |= owners
        self.daemon.start()
        return mid_batch

    def receipts(self) -> Counter[Any]:
        """How many times the server received each event id so far."""
        return Counter(e["properties"]["id"] for e in self.fake.received_events)


def storm_schedule(rng: random.Random, rounds: int) -> list[tuple[str, float]]:
    """(mode, seconds) phases: each fault mode `rounds` times, healthy spells between some."""
    phases: list[tuple[str, float]] = [("healthy", 1.5)]
    for _ in range(rounds):
        modes = list(FAULT_MODES)
        rng.shuffle(modes)
        for mode in modes:
            phases.append((mode, rng.uniform(1.5, 3.0)))
            if rng.random() < 0.5:
                phases.append(("healthy", rng.uniform(1.0, 2.0)))
    return phases


def enter_mode(fake: FakeExponea, mode: str, rng: random.Random) -> None:
    if mode == "5xx":
        status = rng.choice((500, 502, 503, 504))
        body = "<html><body>502 Bad Gateway</body></html>" if status == 502 else None
        fake.fail_next(MODE_USES, status=status, body=body, path_contains="/batch")
    elif mode == "429":
        fake.fail_next(
            MODE_USES, status=429, retry_after=RETRY_AFTER_SECONDS, path_contains="/batch"
        )
    elif mode == "drop":
        fake.drop_next(MODE_USES, path_contains="/batch")
    elif mode == "slow":
        fake.latency = SLOW_SECONDS
    elif mode == "spike":
        fake.delay_next(MODE_USES, seconds=SPIKE_SECONDS, path_contains="/batch")
    elif mode == "lost-answer":
        fake.delay_next(MODE_USES, seconds=SPIKE_SECONDS, path_contains="/batch", apply_first=True)
    elif mode == "revoked":
        fake.revoke_credentials()
    else:
        assert mode == "healthy", mode


def fault_reached_daemon(fake: FakeExponea, peek: OutboxPeek, mode: str) -> bool:
    """Revoked: delivery paused (visible in status) rather than dead-lettering. Queued fault
    modes: at least one request got the fault."""
    if mode == "revoked":
        return "Could not authenticate" in (peek.status()["paused_reason"] or "")
    if mode in ("5xx", "429", "drop", "spike", "lost-answer"):
        return fake.pending_faults < MODE_USES
    return True


def leave_mode(fake: FakeExponea) -> int:
    """Back to healthy; returns how many requests the mode's queued fault acted on."""
    left = fake.clear_faults()
    fake.latency = HEALTHY_LATENCY_SECONDS
    fake.restore_credentials()
    return MODE_USES - left if left else 0


def start_producers(fake: FakeExponea, tmp_path: Path, db_url: str) -> list[subprocess.Popen]:
    config = {
        "agent": {
            "project_token": fake.project_token,
            "username": fake.username,
            "password": fake.password,
            "url": fake.url,
            "database_url": db_url,
            "drain": False,  # producer-only: the daemon delivers
        },
        "customers": CUSTOMERS_PER_PRODUCER,
        "max_events": MAX_EVENTS_PER_PRODUCER,
        "pause": PRODUCER_PAUSE_SECONDS,
    }
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                PRODUCER,
                f"p{i}",
                str(tmp_path / f"accepted-p{i}.txt"),
                str(tmp_path / "stop-producers"),
                str(SEED * 100 + i),
                json.dumps(config),
            ],
            env=base_env(tmp_path),
            cwd=tmp_path,
        )
        for i in range(PRODUCERS)
    ]


def read_accepted(tmp_path: Path) -> dict[str, list[tuple[str, int]]]:
    """customer -> [(event id, seq)] in the order its producer's add_event calls returned."""
    accepted: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for i in range(PRODUCERS):
        for line in (tmp_path / f"accepted-p{i}.txt").read_text().splitlines():
            event_id, customer, seq = line.split()
            accepted[customer].append((event_id, int(seq)))
    return accepted


def status_json(env: dict[str, str], cwd: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "tracker_agent", "status", "--json"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
    )
    assert done.returncode == 0, done.stderr
    stats: dict[str, Any] = json.loads(done.stdout)
    return stats


def wait_until_drained(peek: OutboxPeek, timeout: float) -> None:
    def empty() -> bool:
        stats = peek.status()
        return stats["pending"] == 0 and stats["in_flight"] == 0

    assert wait_for(empty, timeout), "timed out waiting for the outbox to drain"


def events_by_customer(events: list[dict[str, Any]]) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for e in events:
        out[e["customer_ids"]["registered"]].append((e["properties"]["id"], e["properties"]["seq"]))
    return out


def assert_clean_daemon_log(text: str) -> None:
    for sign in ("Traceback", "drain failed", "dead-lettered", "storage error"):
        assert sign not in text, f"daemon log has {sign!r}:\n{text[-4000:]}"


# ---------------------------------------------------------------------------- the storm


@pytest.mark.chaos
@both_backends
def test_storm_of_kills_and_flapping_api_delivers_every_accepted_event_in_customer_order(
    fake: FakeExponea, tmp_path: Path, database_url: str
) -> None:
    rng = random.Random(SEED)
    with open_agent(fake, database_url):
        pass  # create and migrate the outbox once, as a deployment would
    env = daemon_env(fake, tmp_path, database_url, STORM_LEASE_SECONDS)
    postgresql = is_postgresql(database_url)
    schedule = storm_schedule(rng, PG_STORM_ROUNDS if postgresql else STORM_ROUNDS)
    storm_seconds = sum(seconds for _, seconds in schedule)
    fewest, most = PG_STORM_KILLS if postgresql else STORM_KILLS
    kill_at = sorted(
        rng.uniform(2.0, storm_seconds - 1.0) for _ in range(rng.randint(fewest, most))
    )
    fake.latency = HEALTHY_LATENCY_SECONDS
    planned_kills = len(kill_at)

    daemon = Daemon(env, tmp_path)
    peek = open_peek(database_url)
    killer = Killer(daemon, peek, fake, rng)
    producers: list[subprocess.Popen] = []
    lost_answers = 0
    phases_run: list[tuple[str, bool]] = []  # (mode, its fault reached the daemon)
    try:
        daemon.start()
        producers = start_producers(fake, tmp_path, database_url)
        started = time.monotonic()
        for mode, seconds in schedule:
            enter_mode(fake, mode, rng)
            end = time.monotonic() + seconds
            reached = False
            # A phase lasts its time, and on until its fault reached the daemon (bounded: a
            # freshly restarted daemon may first wait out its predecessor's leases).
            while time.monotonic() < end or (not reached and time.monotonic() < end + 10.0):
                if kill_at and time.monotonic() - started >= kill_at[0]:
                    kill_at.pop(0)
                    killer.kill_and_restart(mode)
                reached = reached or fault_reached_daemon(fake, peek, mode)
                time.sleep(0.05)
            phases_run.append((mode, reached))
            used = leave_mode(fake)
            if mode == "lost-answer":
                lost_answers += used
            assert peek.status()["dead"] == 0, f"dead letters after {mode}"
        while kill_at:  # a kill the loop did not reach (phases ran short of it)
            kill_at.pop(0)
            killer.kill_and_restart("healthy")
        storm_took = time.monotonic() - started

        # The storm is over: healthy server, producers stop, the running daemon drains it all.
        (tmp_path / "stop-producers").write_text("stop")
        for proc in producers:
            assert proc.wait(PROCESS_TIMEOUT_SECONDS) == 0, "a producer failed"
        wait_until_drained(peek, DRAIN_TIMEOUT_SECONDS)
        assert daemon.terminate() == 0
    finally:
        (tmp_path / "stop-producers").write_text("stop")
        daemon.close()
        for proc in producers:
            if proc.poll() is None:
                proc.kill()
            proc.wait(PROCESS_TIMEOUT_SECONDS)
        peek.close()

    stats = status_json(env, tmp_path)
    assert (stats["pending"], stats["in_flight"], stats["dead"]) == (0, 0, 0), stats
    assert stats["paused_reason"] is None, stats

    accepted = read_accepted(tmp_path)
    accepted_ids = {event_id for items in accepted.values() for event_id, _ in items}
    events, received = fake.events, fake.received_events
    delivered_ids = [e["properties"]["id"] for e in events]
    duplicates = len(received) - len(events)
    kills = daemon.kills
    summary = (
        f"seed={SEED} storm={storm_took:.1f}s phases={phases_run} accepted={len(accepted_ids)} "
        f"received={len(received)} duplicates={duplicates} kills={kills} "
        f"lost_answers={lost_answers} kill_records={killer.records}"
    )
    print(summary)

    assert kills == planned_kills and daemon.starts == kills + 1
    assert len(accepted_ids) > 1000, summary  # the storm had something to deliver
    # Every accepted event was delivered, once in fake.events (nothing else came).
    assert len(delivered_ids) == len(set(delivered_ids)), summary
    assert set(delivered_ids) == accepted_ids, summary
    assert duplicates == fake.duplicate_events
    # At-least-once, with duplicates bounded by the batches the server applied unsettled.
    assert duplicates <= BATCH_COMMANDS * (kills + lost_answers), summary
    assert lost_answers >= 1 and duplicates >= 1, summary  # that path was really exercised
    # Per customer, first arrivals are exactly the enqueue order.
    assert events_by_customer(events) == accepted, summary
    # Every fault really reached the daemon; revoked credentials paused it each time.
    statuses = {r.status for r in fake.requests if r.path.endswith("/batch")}
    assert {200, 401, 429} <= statuses and statuses & {500, 502, 503, 504}, statuses
    assert None in statuses  # dropped connections and requests abandoned by the client
    assert all(reached for _, reached in phases_run), summary
    assert_clean_daemon_log(daemon.log())


# ---------------------------------------------------------------------------- kills only


@pytest.mark.chaos
@both_backends
def test_daemon_killed_mid_batch_repeatedly_loses_nothing_and_resends_only_applied_batches(
    fake: FakeExponea, tmp_path: Path, database_url: str
) -> None:
    rng = random.Random(SEED + 1)
    customers, total = 6, 1000
    with open_agent(fake, database_url) as agent:
        for i in range(total):
            agent.tracking.add_event(
                {"registered": f"c{i % customers}"}, "kill", {"id": i, "seq": i // customers}
            )
    fake.latency = 0.2  # every batch is in flight a while: the kills land inside requests
    env = daemon_env(fake, tmp_path, database_url, KILL_TEST_LEASE_SECONDS)
    daemon = Daemon(env, tmp_path)
    peek = open_peek(database_url)
    killer = Killer(daemon, peek, fake, rng)
    try:
        daemon.start()
        for n in range(6):
            # Every other kill waits until the server applied the batch, before its outcome
            # is committed.
            # The new daemon first waits out the dead one's leases (they block every customer).
            wait = KILL_TEST_LEASE_SECONDS + PROCESS_TIMEOUT_SECONDS
            assert killer.kill_and_restart("healthy", hold_settle=n % 2 == 1, lease_wait=wait)
        wait_until_drained(peek, DRAIN_TIMEOUT_SECONDS)
        assert daemon.terminate() == 0
    finally:
        daemon.close()
        peek.close()

    stats = status_json(env, tmp_path)
    assert (stats["pending"], stats["in_flight"], stats["dead"]) == (0, 0, 0), stats
    events, received = fake.events, fake.received_events
    duplicates = len(received) - len(events)
    applied_unsettled = sum(r.applied_before_settle for r in killer.records)
    summary = f"seed={SEED + 1} duplicates={duplicates} kills={killer.records}"
    print(summary)
    assert daemon.kills == 6
    assert sorted(e["properties"]["id"] for e in events) == list(range(total)), summary
    # Exactly the events the server had applied in the batch each dead daemon left unsettled
    # came again: at most one batch per kill.
    assert duplicates == applied_unsettled, summary
    assert all(r.applied_before_settle <= BATCH_COMMANDS for r in killer.records), summary
    assert duplicates <= BATCH_COMMANDS * daemon.kills, summary
    assert duplicates >= 1, summary  # the kills after apply, before settle, did happen
    by_customer = events_by_customer(events)
    for c in range(customers):
        seqs = [seq for _, seq in by_customer[f"c{c}"]]
        assert seqs == list(range(len(seqs))), (c, seqs)
    assert_clean_daemon_log(daemon.log())
