"""Figure 5: peak RSS of a process draining a big backlog, and on-disk bytes per queued event.

A backlog is pre-filled in a separate step (the rows the agent would write, inserted in big
transactions), then a separate process opens it with TrackerAgent and drains with a high
rate_limit into FakeExponea (its own process, forgetting what it received every few seconds).
The drain process reports its own peak RSS (VmHWM) when done. Baseline: the same process
opening the same outbox and reading its stats, without draining. Each drain process delivers
the same number of events (scale.memory_drain), so the backlogs differ only in size.

    python -m bench.memory drain DATABASE_URL SERVER_URL LIMIT   (the child; prints JSON)
    python -m bench.memory idle DATABASE_URL                      (the baseline child)
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from typing import Any

from bench import coldstart, workload
from bench.common import (
    UNLIMITED_RATE,
    Scale,
    Section,
    Target,
    agent_kwargs,
    db_bytes,
    mib,
    rate,
    ratio,
    remove_db,
    run_json,
    vmhwm_kib,
)
from bench.servers import ServerProcess

#: FakeExponea keeps every request; long drains make it forget every few seconds.
FAKE_RESET_SECONDS = 2.0
TARGET_RSS_KIB = 100 * 1024
NO_SERVER_URL = "http://127.0.0.1:9"


def payload_bytes(path: str) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT bytes FROM queue_counters WHERE id = 1").fetchone()[0])
    finally:
        conn.close()


def _child_drain(database_url: str, server_url: str, limit: int) -> None:
    from tracker_agent import TrackerAgent

    settings = agent_kwargs(server_url, database_url, rate_limit=UNLIMITED_RATE, drain=False)
    with TrackerAgent(**settings) as agent:
        opened = vmhwm_kib()

        def progress(done: int, _total: int) -> None:
            if done >= limit:
                agent.drainer.stopping.set()  # ends the pass after this batch

        start = time.perf_counter()
        result = agent.flush(progress=progress)
        seconds = time.perf_counter() - start
    out = {
        "delivered": result.delivered,
        "seconds": seconds,
        "opened_kib": opened,
        "vmhwm_kib": vmhwm_kib(),
    }
    print(json.dumps(out))


def _child_idle(database_url: str) -> None:
    from tracker_agent import TrackerAgent

    with TrackerAgent(**agent_kwargs(NO_SERVER_URL, database_url, drain=False)) as agent:
        agent.stats()
    print(json.dumps({"vmhwm_kib": vmhwm_kib()}))


def _drain(database_url: str, server_url: str, limit: int) -> dict[str, Any]:
    return run_json(
        [sys.executable, "-m", "bench.memory", "drain", database_url, server_url, str(limit)]
    )


def run(scale: Scale, workdir: str) -> Section:
    section = Section(
        "memory",
        "5. Memory and disk",
        ["measure", "tracker-agent", "baseline", "ratio"],
    )
    limit = scale.memory_drain
    peaks: dict[int, int] = {}
    with ServerProcess("fake", "--reset-every", str(FAKE_RESET_SECONDS)) as server:
        for backlog in scale.memory_backlogs:
            path = os.path.join(workdir, f"backlog-{backlog}.db")
            database_url = workload.prefill(path, backlog)
            on_disk, payload = db_bytes(path), payload_bytes(path)
            status_wall, status_rss = coldstart.status_figures(path, scale.coldstart_runs)
            idle = run_json([sys.executable, "-m", "bench.memory", "idle", database_url])
            idle_rss = idle["vmhwm_kib"]
            drained = _drain(database_url, server.url, limit)
            peak = drained["vmhwm_kib"]
            remove_db(path)
            peaks[backlog] = peak
            section.rows += [
                [
                    f"peak RSS, draining {drained['delivered']:,.0f} of a {backlog:,} backlog "
                    f"({rate(drained['delivered'] / drained['seconds'])})",
                    mib(peak),
                    f"{mib(idle_rss)} (same process, not draining)",
                    ratio(peak, idle_rss),
                ],
                [
                    f"on-disk bytes per queued event, {backlog:,} backlog",
                    f"{on_disk / backlog:,.0f} B",
                    f"{payload / backlog:,.0f} B (JSON payload)",
                    ratio(on_disk, payload),
                ],
                [
                    f"`tracker-agent status --json` on the {backlog:,} backlog (median wall)",
                    f"{status_wall * 1000:.0f} ms ({mib(status_rss)} peak RSS)",
                    "-",
                    "-",
                ],
            ]
    small, big = min(peaks), max(peaks)
    section.rows.append(
        [
            f"peak RSS, {big:,} vs {small:,} backlog (flatness)",
            mib(peaks[big]),
            mib(peaks[small]),
            ratio(peaks[big], peaks[small]),
        ]
    )
    section.notes += [
        f"Each drain process delivers the first {limit:,} events of its backlog (same work, "
        "different backlog size; a full 1M drain would take minutes at the figure-2 rate) with "
        f"rate_limit={UNLIMITED_RATE:,.0f}, then exits; peak RSS is its VmHWM read at the end.",
        "On-disk size: the SQLite file after the fill (WAL checkpointed), table + indexes; "
        "baseline = the JSON payload bytes alone.",
    ]
    section.targets.append(
        Target(
            f"peak RSS draining a {big:,} backlog",
            "< 100 MiB",
            mib(peaks[big]),
            peaks[big] < TARGET_RSS_KIB,
        )
    )
    return section


def main(argv: list[str]) -> None:
    if argv[0] == "drain":
        _child_drain(argv[1], argv[2], int(argv[3]))
    elif argv[0] == "idle":
        _child_idle(argv[1])
    else:
        raise SystemExit(f"usage: python -m bench.memory drain|idle ... (got {argv[0]!r})")


if __name__ == "__main__":
    main(sys.argv[1:])
