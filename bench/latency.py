"""Figure 4: end-to-end latency (enqueue to arrival at FakeExponea) at a steady load.

The app thread makes `latency_rate` calls per second for `latency_seconds`; each event carries
its call time (time.monotonic(), system-wide on Linux) in a "t0" property, and FakeExponea
(its own process) records each request's arrival on the same clock. Baseline: the same events
posted one request each, synchronously, on a keep-alive requests.Session (the fastest an event
can get there); then a started agent with drain_interval 1.0 s (the default) and 0.1 s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from bench import workload
from bench.common import (
    PASSWORD,
    TOKEN,
    USERNAME,
    Scale,
    Section,
    agent_kwargs,
    fresh_outbox,
    ms,
    percentile,
    ratio,
    remove_db,
)
from bench.servers import ServerProcess

POLL_SECONDS = 0.05
SETTLE_TIMEOUT_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 10.0
INTERVALS = (1.0, 0.1)

Send = Callable[[int, dict[str, Any]], None]


def _steady(send: Send, per_second: float, seconds: float) -> int:
    """Call send(i, properties-with-t0) at an even pace; returns the number of calls."""
    count = int(per_second * seconds)
    pool = workload.event_pool()
    start = time.monotonic()
    for i in range(count):
        wait = start + i / per_second - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        properties = dict(pool[i % len(pool)][2])
        properties["t0"] = time.monotonic()
        send(i, properties)
    return count


def _latencies(server: ServerProcess) -> tuple[list[float], int]:
    """Each event's call-to-arrival time, and how many requests carried them."""
    arrivals = server.call("arrivals")
    return [arrived - t0 for arrived, t0, _ in arrivals], len({a[2] for a in arrivals})


def _bare(
    server: ServerProcess, per_second: float, seconds: float
) -> tuple[int, tuple[list[float], int]]:
    import requests

    server.call("reset")
    endpoint = f"{server.url}/track/v2/projects/{TOKEN}/customers/events"
    pool = workload.event_pool()
    with requests.Session() as session:
        session.trust_env = False
        session.auth = (USERNAME, PASSWORD)

        def send(i: int, properties: dict[str, Any]) -> None:
            customer_ids, event_type, _ = pool[i % len(pool)]
            body = {
                "customer_ids": customer_ids,
                "event_type": event_type,
                "timestamp": time.time(),
                "properties": properties,
            }
            session.post(endpoint, json=body, timeout=REQUEST_TIMEOUT_SECONDS)

        sent = _steady(send, per_second, seconds)
    return sent, _latencies(server)


def _agent(
    server: ServerProcess, workdir: str, interval: float, per_second: float, seconds: float
) -> tuple[int, tuple[list[float], int]]:
    from tracker_agent import TrackerAgent

    server.call("reset")
    path = os.path.join(workdir, "latency.db")
    database_url = fresh_outbox(path)
    pool = workload.event_pool()
    with TrackerAgent(**agent_kwargs(server.url, database_url, drain_interval=interval)) as agent:
        agent.start()

        def send(i: int, properties: dict[str, Any]) -> None:
            customer_ids, event_type, _ = pool[i % len(pool)]
            agent.tracking.add_event(customer_ids, event_type, properties)

        sent = _steady(send, per_second, seconds)
        deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            stats = agent.stats()
            if stats["pending"] + stats["in_flight"] == 0:
                break
            time.sleep(POLL_SECONDS)
    remove_db(path)
    return sent, _latencies(server)


def run(scale: Scale, workdir: str) -> Section:
    per_second, seconds = scale.latency_rate, scale.latency_seconds
    section = Section(
        "latency",
        f"4. End-to-end latency at {per_second:g} events/s for {seconds:g} s "
        "(call to arrival at FakeExponea)",
        ["client", "arrived", "events/request", "p50", "p99", "max", "p50 vs baseline"],
    )
    with ServerProcess("fake") as server:
        runs = [
            (
                "bare requests.Session, one request per event (baseline)",
                _bare(server, per_second, seconds),
            )
        ]
        for interval in INTERVALS:
            runs.append(
                (
                    f"tracker-agent, drain_interval={interval:g} s",
                    _agent(server, workdir, interval, per_second, seconds),
                )
            )
    base_p50 = percentile(runs[0][1][1][0], 50)
    for label, (sent, (lat, requests)) in runs:
        p50 = percentile(lat, 50)
        section.rows.append(
            [
                label,
                f"{len(lat):,}/{sent:,}",
                f"{len(lat) / max(requests, 1):.1f}",
                ms(p50),
                ms(percentile(lat, 99)),
                ms(max(lat, default=0.0)),
                ratio(p50, base_p50),
            ]
        )
    section.notes += [
        "tracker-agent: defaults otherwise (rate_limit 100 requests/s, batch_size 50, "
        "synchronous=FULL); the latency includes the durable commit of add_event.",
        "A drain pass starts every drain_interval (and at once when 50 events are waiting), "
        "sends full batches back to back and ends at the first short one, so a steady trickle "
        "leaves in batches of about rate x drain_interval (see events/request) and waits up to "
        "about one interval.",
    ]
    return section
