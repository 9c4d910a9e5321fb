"""Figure 1: durable enqueue rate of the agent next to raw sqlite3 doing the same inserts.

Both sides write to an outbox created by the package's migration (same tables, indexes and
counter triggers), with the same pragmas (WAL, synchronous, busy_timeout) and the same rows:
the raw side inserts the exact (kind, customer_key, payload, size) the agent would have
stored, pre-built, one BEGIN IMMEDIATE .. COMMIT per call. Each configuration runs for a
fixed time; the rate is events committed per second over the span all workers ran.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from bench import workload
from bench.common import (
    Scale,
    Section,
    Target,
    agent_kwargs,
    copy_outbox,
    fresh_outbox,
    rate,
    ratio,
    raw_connect,
    remove_db,
)

INSERT = workload.INSERT
#: Nothing listens there: enqueue never touches the network (the drain is not started).
NO_SERVER_URL = "http://127.0.0.1:9"
BATCH_COMMANDS = 50
IMPORT_CHUNK = 1000
WARMUP_SECONDS = 0.3
TARGET_SINGLE_RATIO = 0.8
TARGET_THREAD_SCALING = 2.0

# mode -> events per call
MODES = {"single": 1, "batch": BATCH_COMMANDS, "import": IMPORT_CHUNK}

Op = Callable[[], int]


def _raw_op(conn: Any, mode: str, lock: Any = None) -> Op:
    """One commit per call on `conn`; `lock` serialises threads sharing the connection."""
    rows = workload.row_pool()
    per_call = MODES[mode]
    state = {"i": 0}
    guard = lock or contextlib.nullcontext()

    def op() -> int:
        i = state["i"]
        state["i"] = i + per_call
        if per_call == 1:
            params = [(*rows[i % len(rows)], time.time())]
        else:
            now = time.time()
            params = [(*rows[(i + k) % len(rows)], now) for k in range(per_call)]
        with guard:
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            if per_call == 1:
                cur.execute(INSERT, params[0])
            else:
                cur.executemany(INSERT, params)
            cur.execute("COMMIT")
            cur.close()
        return per_call

    return op


def _agent_op(agent: Any, mode: str) -> Op:
    per_call = MODES[mode]
    state = {"i": 0}
    if mode == "single":
        pool = workload.event_pool()

        def single() -> int:
            i = state["i"]
            state["i"] = i + 1
            customer_ids, event_type, properties = pool[i % len(pool)]
            agent.tracking.add_event(customer_ids, event_type, properties)
            return 1

        return single
    chunks = _command_chunks(per_call)
    call = agent.tracking.batch_commands if mode == "batch" else agent.enqueue_many

    def many() -> int:
        i = state["i"]
        state["i"] = i + 1
        call(chunks[i % len(chunks)])
        return per_call

    return many


@functools.cache
def _command_chunks(per_call: int) -> list[list[dict[str, Any]]]:
    """Pre-built raw commands with fixed timestamps, in chunks (the agent copies them)."""
    return [
        [workload.event_command(start + k) for k in range(per_call)]
        for start in range(0, workload.POOL_SIZE, per_call)
    ]


def _make_agent(path: str, synchronous: str) -> Any:
    from tracker_agent import TrackerAgent

    # Producer only (no server): a background drain would contend for the file, and
    # close() would spend close_timeout trying to deliver.
    settings = agent_kwargs(NO_SERVER_URL, "sqlite:///" + path, synchronous=synchronous)
    return TrackerAgent(**settings, drain=False)


def _loop(op: Op, seconds: float) -> tuple[int, float, float]:
    start = time.monotonic()
    deadline = start + seconds
    done = 0
    while time.monotonic() < deadline:
        done += op()
    return done, start, time.monotonic()


def _run_threads(ops: list[Op], seconds: float) -> tuple[int, float]:
    """Run each op in its own thread for `seconds`: (events, span in seconds)."""
    barrier = threading.Barrier(len(ops))
    results: list[tuple[int, float, float]] = []
    lock = threading.Lock()

    def body(op: Op) -> None:
        barrier.wait()
        outcome = _loop(op, seconds)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=body, args=(op,)) for op in ops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return _span(results)


def _span(results: list[tuple[int, float, float]]) -> tuple[int, float]:
    """Events done by all workers, and the time from the first start to the last end."""
    total = sum(r[0] for r in results)
    return total, max(r[2] for r in results) - min(r[1] for r in results)


def _process_worker(
    side: str, path: str, mode: str, sync: str, seconds: float, barrier: Any, results: Any
) -> None:
    if side == "raw":
        conn = raw_connect(path, sync)
        op = _raw_op(conn, mode)
    else:
        agent = _make_agent(path, sync)
        op = _agent_op(agent, mode)
    barrier.wait()
    results.put(_loop(op, seconds))
    if side == "raw":
        conn.close()
    else:
        agent.close()


def _run_processes(
    side: str, path: str, mode: str, sync: str, count: int, seconds: float
) -> tuple[int, float]:
    # forkserver: a clean (thread-free) parent with the imports done once, so every round's
    # processes start in milliseconds instead of re-importing SQLAlchemy.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["bench.enqueue", "tracker_agent", "sqlalchemy"])
    barrier = ctx.Barrier(count)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_process_worker, args=(side, path, mode, sync, seconds, barrier, results)
        )
        for _ in range(count)
    ]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=seconds + 120) for _ in procs]
    for proc in procs:
        proc.join()
    return _span(outcomes)


class _Runner:
    """Measures configurations on fresh copies of a migrated, empty outbox.

    The disk's fsync latency drifts (other processes share the machine), so the two sides
    alternate in short rounds (raw, agent, agent, raw, ...) and each side's rate is its
    events over its own time, summed over the rounds.
    """

    def __init__(self, workdir: str) -> None:
        self.template = os.path.join(workdir, "enqueue-template.db")
        fresh_outbox(self.template)
        self.path = os.path.join(workdir, "enqueue.db")

    def _fresh(self) -> str:
        return copy_outbox(self.template, self.path)

    def once(
        self, side: str, mode: str, threads: int, processes: int, sync: str, seconds: float
    ) -> tuple[int, float]:
        path = self._fresh()
        if processes:
            return _run_processes(side, path, mode, sync, processes, seconds)
        if side == "raw":
            # Threads share one connection under a lock: each thread on its own connection
            # would fight over SQLite's lock in its busy handler (sleeps of up to 100 ms,
            # starvation), which is slower still and would flatter the agent.
            conn = raw_connect(path, sync)
            lock = threading.Lock()
            try:
                return _run_threads([_raw_op(conn, mode, lock) for _ in range(threads)], seconds)
            finally:
                conn.close()
        agent = _make_agent(path, sync)
        try:
            # One agent shared by every thread: that is how an app embeds it.
            return _run_threads([_agent_op(agent, mode) for _ in range(threads)], seconds)
        finally:
            agent.close()

    def compare(
        self, mode: str, threads: int, processes: int, sync: str, seconds: float, rounds: int
    ) -> tuple[float, float]:
        """(agent rate, raw rate), each side running `seconds` in total."""
        totals = {"raw": [0, 0.0], "agent": [0, 0.0]}
        for index in range(rounds):
            order = ("raw", "agent") if index % 2 == 0 else ("agent", "raw")
            for side in order:
                events, span = self.once(side, mode, threads, processes, sync, seconds / rounds)
                totals[side][0] += events
                totals[side][1] += span
        return (totals["agent"][0] / totals["agent"][1], totals["raw"][0] / totals["raw"][1])

    def cleanup(self) -> None:
        remove_db(self.template)
        remove_db(self.path)


CONFIGS = [
    # label, mode, threads, processes, synchronous
    ("add_event, 1 thread", "single", 1, 0, "FULL"),
    ("add_event, 8 threads", "single", 8, 0, "FULL"),
    ("add_event, 32 threads", "single", 32, 0, "FULL"),
    ("add_event, 4 processes", "single", 1, 4, "FULL"),
    ("batch_commands, 50/call, 1 thread", "batch", 1, 0, "FULL"),
    ("enqueue_many (import), 1000/call, 1 thread", "import", 1, 0, "FULL"),
    ("add_event, 1 thread, synchronous=NORMAL", "single", 1, 0, "NORMAL"),
]


#: Rounds per configuration (alternating sides); process configurations start processes per
#: round, so they get fewer, longer rounds.
THREAD_ROUNDS = 6
PROCESS_ROUNDS = 2


def run(scale: Scale, workdir: str) -> Section:
    section = Section(
        "enqueue",
        "1. Durable enqueue (events committed per second)",
        ["workload", "tracker-agent", "raw sqlite3 (baseline)", "ratio"],
    )
    runner = _Runner(workdir)
    runner.compare("single", 1, 0, "FULL", WARMUP_SECONDS, 2)  # page cache, imports
    measured: dict[str, tuple[float, float]] = {}
    for label, mode, threads, processes, sync in CONFIGS:
        rounds = PROCESS_ROUNDS if processes else THREAD_ROUNDS
        ours, raw = runner.compare(mode, threads, processes, sync, scale.enqueue_seconds, rounds)
        measured[label] = (ours, raw)
        section.rows.append([label, rate(ours), rate(raw), ratio(ours, raw)])
    runner.cleanup()
    one, raw_one = measured["add_event, 1 thread"]
    eight = measured["add_event, 8 threads"][0]
    section.rows.append(
        ["add_event, 8 threads vs 1 thread (scaling)", rate(eight), rate(one), ratio(eight, one)]
    )
    section.notes += [
        f"{scale.enqueue_seconds:g} s per side and configuration, in alternating rounds; "
        "WAL, busy_timeout 30 s, synchronous=FULL unless said; "
        f"rows of ~{_row_bytes()} bytes of JSON payload over 1000 customers.",
        "raw sqlite3: BEGIN IMMEDIATE / INSERT(s) / COMMIT per call, rows pre-built; threads "
        "share one connection under a lock (own connections per thread are slower: SQLite's "
        "busy handler sleeps), processes have one each. tracker-agent: one TrackerAgent per "
        "process shared by its threads, validating, serialising and group-committing every call.",
        "The scaling row compares the agent with itself (baseline column = 1 thread).",
    ]
    section.targets += [
        Target(
            "single-thread enqueue vs raw sqlite3",
            f">= {TARGET_SINGLE_RATIO:.0%}",
            f"{one / raw_one:.0%}",
            one >= TARGET_SINGLE_RATIO * raw_one,
        ),
        Target(
            "8 threads vs our 1 thread",
            f">= {TARGET_THREAD_SCALING:g}x",
            f"{eight / one:.2f}x",
            eight >= TARGET_THREAD_SCALING * one,
        ),
    ]
    return section


def _row_bytes() -> int:
    rows = workload.row_pool(100)
    return round(sum(r[3] for r in rows) / len(rows))
