"""Figure 11: drain rate far from the API, by concurrent_batches.

One drainer has one request on the wire at a time, so far from the API its rate is about 50
events per round trip, whatever the rate limit allows. FakeExponea (its own process) answers
each request after 20, 50 or 100 ms; the agent (default rate limit: 100 requests/s, at most
5,000 events/s, the API's cap) flushes a backlog of 1,000 customers (event i is customer
i % 1,000) with concurrent_batches 1, 4, 8 and 16: that many drainers in one process, each
with its own request on the wire. Baselines in the same run: the API's cap, and the same
drain with one batch on the wire. Then the cases concurrency cannot help, at 50 ms: one
customer, and 50 customers (a batch of 50 holds one command of each, so one drainer holds
them all and the others find nothing due): per-customer order allows one request per customer
on the wire.

    python -m bench --only faraway [--quick]
"""

from __future__ import annotations

import os
import time

from bench import workload
from bench.common import Scale, Section, Target, agent_kwargs, copy_outbox, rate, ratio, remove_db
from bench.servers import ServerProcess

API_CAP = 5_000.0  # events/s: 100 requests/s x 50 commands
CUSTOMERS = 1_000
LATENCIES = (0.02, 0.05, 0.1)
CONCURRENCY = (1, 4, 8, 16)
FEW_CUSTOMERS = (1, 50)
FEW_LATENCY = 0.05
#: The goal: with enough batches on the wire, the cap is reached this far from the API.
GOAL_LATENCY, GOAL_SHARE = 0.05, 0.8


def _events(scale: Scale) -> int:
    return 2_000 if scale.quick else 10_000


def _drain(template: str, path: str, server: ServerProcess, latency: float, batches: int) -> float:
    """events/s of one flush of a copy of `template` with `batches` on the wire at once."""
    from tracker_agent import TrackerAgent

    copy_outbox(template, path, on_disk=True)
    server.call("reset")
    server.call(f"latency:{latency}")
    settings = agent_kwargs(
        server.url, "sqlite:///" + path, drain=False, concurrent_batches=batches
    )
    with TrackerAgent(**settings) as agent:
        start = time.perf_counter()
        agent.flush()
        seconds = time.perf_counter() - start
    return float(server.call("count")["events"]) / seconds


def run(scale: Scale, workdir: str) -> Section:
    events = _events(scale)
    section = Section(
        "faraway",
        f"11. Drain far from the API: {events:,} events, answers after 20-100 ms, "
        "by concurrent_batches",
        [
            "answer latency, customers",
            "concurrent_batches",
            "events/s",
            "share of the API cap (5,000/s)",
            "vs 1 batch on the wire",
        ],
    )
    template = os.path.join(workdir, "faraway-template.db")
    path = os.path.join(workdir, "faraway.db")
    server = ServerProcess("fake").start()
    best: dict[float, float] = {}
    try:
        workload.fill(template, ((i, i % CUSTOMERS) for i in range(events)))
        for latency in LATENCIES:
            single = 0.0
            for batches in CONCURRENCY:
                got = _drain(template, path, server, latency, batches)
                single = single or got
                best[latency] = max(best.get(latency, 0.0), got)
                section.rows.append(
                    [
                        f"{latency * 1000:.0f} ms, {CUSTOMERS:,} customers",
                        str(batches),
                        rate(got),
                        ratio(got, API_CAP),
                        ratio(got, single),
                    ]
                )
        for customers in FEW_CUSTOMERS:
            workload.fill(template, ((i, i % customers) for i in range(events)))
            single = 0.0
            for batches in (1, 4):
                got = _drain(template, path, server, FEW_LATENCY, batches)
                single = single or got
                section.rows.append(
                    [
                        f"{FEW_LATENCY * 1000:.0f} ms, {customers:,} customer(s)",
                        str(batches),
                        rate(got),
                        ratio(got, API_CAP),
                        ratio(got, single),
                    ]
                )
    finally:
        server.stop()
        remove_db(template)
        remove_db(path)
    reached = best[GOAL_LATENCY]
    section.targets.append(
        Target(
            f"1,000 customers, answers after {GOAL_LATENCY * 1000:.0f} ms, best concurrent_batches",
            f">= {GOAL_SHARE:.1f}x the API cap, never above it",
            ratio(reached, API_CAP),
            GOAL_SHARE * API_CAP <= reached <= API_CAP * 1.01,
        )
    )
    section.notes += [
        "Default rate limit (100 requests/s for every drainer on the host together). Each "
        "figure is one flush of a copy of the same pre-filled outbox (raw sqlite3 inserts of "
        "the rows the agent writes); rate = events the server received / seconds of the flush.",
        "concurrent_batches = N runs N drainers in the agent's process (own owner ids, own "
        "sending threads, one outbox connection, one host rate limit): a customer is held by "
        "one of them at a time, so each customer's order holds; a crash re-sends up to N "
        "batches instead of one.",
        "One customer, or fewer customers than a batch holds: a drainer's batch takes every "
        "customer, the others find nothing due, and the rate stays one round trip per batch.",
    ]
    return section
