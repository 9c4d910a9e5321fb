"""Figure 8: `import` of JSON Lines with the ledger of imported lines, next to the import
without it (what `tracker-agent import` did before issue 12).

Both sides read the same in-memory file of event lines without timestamps (the typical export)
and commit one transaction per 500 lines (synchronous=FULL) on a fresh copy of a migrated,
empty outbox, alternating in rounds. The baseline parses each line and hands each chunk to
`enqueue_many`, as the import did before; the ledger side is `TrackerAgent.import_lines`
(every line validated on its own, its key computed, looked up and recorded in the chunk's
transaction). Also measured: the same file imported a second time (every line skipped) and
with `reimport=True` (keys recorded, not looked up).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from bench import workload
from bench.common import Scale, Section, Target, agent_kwargs, fresh_outbox, rate, ratio, remove_db

#: Nothing listens there: an import never touches the network (the drain is not started).
NO_SERVER_URL = "http://127.0.0.1:9"
FULL_LINES = 100_000
QUICK_LINES = 10_000
ROUNDS = 3
CHUNK = 500
#: Goal (issue 12): the ledger costs at most ~20% of the import rate.
TARGET_RATIO = 0.8


def make_file(lines: int) -> bytes:
    """JSON Lines of `lines` distinct events without timestamps (~230 bytes each)."""
    out = []
    for i in range(lines):
        customer_ids, event_type, properties = workload.event_args(i)
        properties = {**properties, "order": i}  # every line distinct
        record = {"customer_ids": customer_ids, "event_type": event_type, "properties": properties}
        out.append(json.dumps(record) + "\n")
    return "".join(out).encode()


def _without_ledger(agent: Any, data: bytes) -> int:
    """The import before the ledger: parse lines, enqueue_many per chunk (all or none)."""
    from tracker_agent.importing import line_to_command

    queued = 0
    chunk: list[dict[str, Any]] = []
    for number, raw in enumerate(io.BytesIO(data), 1):
        text = raw.decode("utf-8")
        if not text.strip():
            continue
        chunk.append(line_to_command(text, f"line {number}")[0])
        if len(chunk) >= CHUNK:
            queued += agent.enqueue_many(chunk)
            chunk = []
    if chunk:
        queued += agent.enqueue_many(chunk)
    return queued


def _with_ledger(agent: Any, data: bytes, **options: Any) -> int:
    report = agent.import_lines(io.BytesIO(data), chunk_size=CHUNK, **options)
    assert report.ok, report.bad[:3]
    return int(report.queued + report.skipped)


class _Runner:
    def __init__(self, workdir: str) -> None:
        self.template = os.path.join(workdir, "import-template.db")
        fresh_outbox(self.template)
        self.path = os.path.join(workdir, "import.db")

    def once(self, run: Callable[[Any], int], *, before: Callable[[Any], Any] | None) -> float:
        """Lines per second of `run` on a fresh outbox (after `before`, not timed)."""
        from tracker_agent import TrackerAgent

        remove_db(self.path)
        shutil.copyfile(self.template, self.path)
        agent = TrackerAgent(**agent_kwargs(NO_SERVER_URL, "sqlite:///" + self.path, drain=False))
        try:
            if before is not None:
                before(agent)
            start = time.perf_counter()
            lines = run(agent)
            return lines / (time.perf_counter() - start)
        finally:
            agent.close()

    def cleanup(self) -> None:
        remove_db(self.template)
        remove_db(self.path)


def run(scale: Scale, workdir: str) -> Section:
    lines = QUICK_LINES if scale.quick else FULL_LINES
    data = make_file(lines)
    section = Section(
        "importing",
        f"8. Import of {lines:,} JSON lines (lines per second)",
        ["workload", "with the ledger", "without (the import before)", "ratio"],
    )
    sides: dict[str, tuple[Callable[[Any], int], Callable[[Any], Any] | None]] = {
        "without": (lambda agent: _without_ledger(agent, data), None),
        "first": (lambda agent: _with_ledger(agent, data), None),
        "again": (
            lambda agent: _with_ledger(agent, data),
            lambda agent: _with_ledger(agent, data),
        ),
        "reimport": (lambda agent: _with_ledger(agent, data, reimport=True), None),
    }
    runner = _Runner(workdir)
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for index in range(ROUNDS):
        order = list(sides) if index % 2 == 0 else list(reversed(sides))
        for name in order:
            rates[name].append(runner.once(sides[name][0], before=sides[name][1]))
    runner.cleanup()
    best = {name: max(values) for name, values in rates.items()}
    base = best["without"]
    for label, name in (
        ("first import of the file", "first"),
        ("the same file again (every line skipped)", "again"),
        ("reimport=True (keys recorded, not looked up)", "reimport"),
    ):
        section.rows.append([label, rate(best[name]), rate(base), ratio(best[name], base)])
    section.notes += [
        f"Best of {ROUNDS} alternating rounds per side; {CHUNK} lines per transaction, "
        "synchronous=FULL, a fresh copy of an empty migrated outbox each time (the second "
        "import's first run is not timed).",
        "Without the ledger a bad line used to fail its whole chunk; with it every line is "
        "validated on its own and the good ones are queued.",
    ]
    first = best["first"]
    section.targets.append(
        Target(
            "first import with the ledger vs without",
            f">= {TARGET_RATIO:.0%}",
            f"{first / base:.0%}",
            first >= TARGET_RATIO * base,
        )
    )
    return section
