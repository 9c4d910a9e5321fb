"""Figure 2: drain throughput of agent.flush() next to a bare requests.Session posting the same
50-command batches to the same FakeExponea (in its own process).

In each of ROUNDS rounds the outbox is filled (enqueue_many, 1000 per call); the bare session
posts the exact batches the agent will send (same commands, same command_ids), pre-serialised,
one after the other on one keep-alive connection, and the agent drains the outbox; the order of
the two alternates between rounds and the server is reset before each, so that both sides see
the same machine load. Rates are totals over all rounds. The agent's rate limit is raised to
UNLIMITED_RATE: the default 100 requests/s is the API's policy, not a limit of the code.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any

from bench import workload
from bench.common import (
    PASSWORD,
    TOKEN,
    UNLIMITED_RATE,
    USERNAME,
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

BATCH_COMMANDS = 50
FILL_CHUNK = 1000
TARGET_RATIO = 0.7
ROUNDS = 3
REQUEST_TIMEOUT_SECONDS = 30.0


def fill(agent: Any, count: int, first: int = 0) -> None:
    """Queue `count` distinct events through agent.enqueue_many, FILL_CHUNK per call."""
    for start in range(first, first + count, FILL_CHUNK):
        stop = min(start + FILL_CHUNK, first + count)
        agent.enqueue_many([workload.event_command(i) for i in range(start, stop)])


def prebuilt_bodies(path: str, count: int = -1, skip: int = 0) -> list[bytes]:
    """The request bodies the agent will send for the outbox at `path` (its first `count`
    rows after `skip`; every row by default), serialised now."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT id, kind, payload FROM outbox ORDER BY id LIMIT ? OFFSET ?", (count, skip)
        ).fetchall()
    finally:
        conn.close()
    commands = [
        {"name": kind, "data": json.loads(payload), "command_id": str(row_id)}
        for row_id, kind, payload in rows
    ]
    return [
        json.dumps({"commands": commands[i : i + BATCH_COMMANDS]}).encode()
        for i in range(0, len(commands), BATCH_COMMANDS)
    ]


def post_bare(url: str, bodies: list[bytes]) -> float:
    """Post every body on one requests.Session; seconds taken. Fails on any rejection."""
    import requests

    endpoint = f"{url}/track/v2/projects/{TOKEN}/batch"
    with requests.Session() as session:
        session.trust_env = False
        session.auth = (USERNAME, PASSWORD)
        session.headers["Content-Type"] = "application/json"
        start = time.perf_counter()
        for body in bodies:
            response = session.post(endpoint, data=body, timeout=REQUEST_TIMEOUT_SECONDS)
            if response.status_code != 200 or not response.json().get("success"):
                raise RuntimeError(f"bare session: HTTP {response.status_code} {response.text}")
        return time.perf_counter() - start


def run(scale: Scale, workdir: str) -> Section:
    from tracker_agent import TrackerAgent

    section = Section(
        "drain",
        "2. Drain throughput (events/s delivered to FakeExponea)",
        ["workload", "tracker-agent", "bare requests.Session (baseline)", "ratio"],
    )
    count = scale.drain_events
    path = os.path.join(workdir, "drain.db")
    bare_seconds = ours_seconds = 0.0
    delivered = remaining = arrived = 0
    with ServerProcess("fake") as server:
        # drain=False: flush() is timed alone; a background drain would race it
        settings = agent_kwargs(
            server.url, fresh_outbox(path), rate_limit=UNLIMITED_RATE, drain=False
        )
        for round_ in range(ROUNDS):
            with TrackerAgent(**settings) as agent:
                fill(agent, count, first=round_ * count)
                bodies = prebuilt_bodies(path)
                for side in ("bare", "agent") if round_ % 2 == 0 else ("agent", "bare"):
                    server.call("reset")
                    if side == "bare":
                        bare_seconds += post_bare(server.url, bodies)
                        continue
                    start = time.perf_counter()
                    result = agent.flush()
                    ours_seconds += time.perf_counter() - start
                    delivered += result.delivered
                    remaining += result.remaining
                    arrived += server.call("count")["events"]
    remove_db(path)
    ours, bare = delivered / ours_seconds, ROUNDS * count / bare_seconds
    section.rows.append(
        [
            f"{ROUNDS} x {count:,} events, 50 per request",
            rate(ours),
            rate(bare),
            ratio(ours, bare),
        ]
    )
    section.notes += [
        f"agent.flush() with rate_limit={UNLIMITED_RATE:,.0f} requests/s (the default 100/s "
        "is the API's per-IP policy, not a code limit; at 100/s the drain tops out at "
        "5,000 events/s). The batch queued behind one on the wire goes out once that one's "
        "outcome is recorded (one small row; it is applied, and the next batch claimed, "
        "while the queued one is on the wire); drain commits skip fsync "
        "(synchronous=NORMAL; enqueues stay FULL).",
        f"bare session: {len(bodies)} pre-serialised bodies, trust_env=False, one keep-alive "
        "connection, nothing stored.",
        f"{ROUNDS} rounds, bare and agent alternating first; FakeExponea held {arrived:,} "
        f"unique events after the agent's drains (delivered {delivered:,}, remaining "
        f"{remaining}).",
    ]
    section.targets.append(
        Target(
            "drain vs bare requests.Session",
            f">= {TARGET_RATIO:.0%}",
            f"{ours / bare:.0%}",
            ours >= TARGET_RATIO * bare,
        )
    )
    return section
