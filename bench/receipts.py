"""Figure 9: receipts on next to off, for enqueue and drain (goal: within 10%).

Off: the seed's calls (add_event, batch_commands, enqueue_many), whose rows carry no receipt.
On: the same events through track_event / track_commands, each row flagged and its id handed
back; delivering one also writes its receipt (id, time, attempts) in the settling commit.
Each pair runs ROUNDS times, alternating which side goes first, so both see the same machine
load; rates are totals over all rounds.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from typing import Any

from bench import workload
from bench.common import (
    UNLIMITED_RATE,
    Scale,
    Section,
    Target,
    agent_kwargs,
    fresh_outbox,
    rate,
    ratio,
    remove_db,
)
from bench.servers import ServerProcess

#: Nothing listens there: enqueue never touches the network (the drain is not started).
NO_SERVER_URL = "http://127.0.0.1:9"
BATCH_COMMANDS = 50
FILL_CHUNK = 1000
ROUNDS = 4
TARGET_RATIO = 0.9


def _single(agent: Any, receipts: bool) -> Callable[[int], int]:
    pool = workload.event_pool()
    call = agent.track_event if receipts else agent.tracking.add_event

    def op(i: int) -> int:
        customer_ids, event_type, properties = pool[i % len(pool)]
        call(customer_ids, event_type, properties)
        return 1

    return op


def _batch(agent: Any, receipts: bool) -> Callable[[int], int]:
    chunks = [
        [workload.event_command(start + k) for k in range(BATCH_COMMANDS)]
        for start in range(0, workload.POOL_SIZE, BATCH_COMMANDS)
    ]
    call = agent.track_commands if receipts else agent.tracking.batch_commands

    def op(i: int) -> int:
        call(chunks[i % len(chunks)])
        return BATCH_COMMANDS

    return op


def _enqueue_rate(path: str, make_op: Any, receipts: bool, seconds: float) -> tuple[int, float]:
    from tracker_agent import TrackerAgent

    with TrackerAgent(**agent_kwargs(NO_SERVER_URL, fresh_outbox(path), drain=False)) as agent:
        op = make_op(agent, receipts)
        done, i = 0, 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            done += op(i)
            i += 1
        took = time.perf_counter() - start
    remove_db(path)
    return done, took


def _enqueue_pair(
    path: str, make_op: Any, seconds: float, receipts: bool, _round: int
) -> tuple[int, float]:
    return _enqueue_rate(path, make_op, receipts, seconds)


def _drain_once(url: str, path: str, count: int, first: int, receipts: bool) -> tuple[int, float]:
    from tracker_agent import TrackerAgent

    settings = agent_kwargs(url, fresh_outbox(path), rate_limit=UNLIMITED_RATE, drain=False)
    with TrackerAgent(**settings) as agent:
        for start in range(first, first + count, FILL_CHUNK):
            chunk = [workload.event_command(i) for i in range(start, start + FILL_CHUNK)]
            if receipts:
                agent.track_commands(chunk)
            else:
                agent.enqueue_many(chunk)
        begin = time.perf_counter()
        result = agent.flush()
        took = time.perf_counter() - begin
    remove_db(path)
    return result.delivered, took


def _pairs(measure: Callable[[bool, int], tuple[int, float]]) -> tuple[float, float]:
    """(rate off, rate on) over ROUNDS alternating rounds."""
    totals = {False: [0, 0.0], True: [0, 0.0]}
    for round_ in range(ROUNDS):
        for receipts in (False, True) if round_ % 2 == 0 else (True, False):
            done, took = measure(receipts, round_)
            totals[receipts][0] += done
            totals[receipts][1] += took
    return (totals[False][0] / totals[False][1], totals[True][0] / totals[True][1])


def run(scale: Scale, workdir: str) -> Section:
    section = Section(
        "receipts",
        "9. Receipts on vs off (events/s)",
        ["workload", "receipts off", "receipts on", "on / off"],
    )
    path = os.path.join(workdir, "receipts.db")
    seconds = scale.enqueue_seconds
    for name, make_op in (("enqueue, 1 event per call", _single),
                          (f"enqueue, {BATCH_COMMANDS} per call", _batch)):  # fmt: skip
        off, on = _pairs(functools.partial(_enqueue_pair, path, make_op, seconds))
        section.rows.append([name, rate(off), rate(on), ratio(on, off)])
        section.targets.append(
            Target(
                f"{name}: receipts on vs off",
                f">= {TARGET_RATIO:.0%}",
                f"{on / off:.0%}",
                on >= TARGET_RATIO * off,
            )  # fmt: skip
        )
    count = scale.drain_events // FILL_CHUNK * FILL_CHUNK or FILL_CHUNK
    with ServerProcess("fake") as server:

        def drain(receipts: bool, round_: int) -> tuple[int, float]:
            server.call("reset")
            return _drain_once(server.url, path, count, round_ * count, receipts)

        off, on = _pairs(drain)
    section.rows.append([f"drain (flush), {count:,} events", rate(off), rate(on), ratio(on, off)])
    section.targets.append(
        Target(
            "drain: receipts on vs off",
            f">= {TARGET_RATIO:.0%}",
            f"{on / off:.0%}",
            on >= TARGET_RATIO * off,
        )  # fmt: skip
    )
    section.notes += [
        "off: add_event / batch_commands / enqueue_many (no receipt); on: track_event / "
        "track_commands (a Receipt per event; delivering one writes its id, time and attempts "
        "in the settling commit).",
        f"enqueue: {seconds:g} s per side and round, synchronous=FULL, no drain; drain: "
        f"agent.flush() with rate_limit={UNLIMITED_RATE:,.0f}. {ROUNDS} rounds, sides "
        "alternating first.",
    ]
    return section
