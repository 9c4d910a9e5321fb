"""Figure 10: `import` of JSON Lines with the ledger of imported lines, next to the import
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

import hashlib
import io
import json
import os
import sqlite3
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
    median,
    rate,
    ratio,
    remove_db,
)
from tracker_agent.constants import DEFAULT_IMPORT_CHUNK_SIZE

#: Nothing listens there: an import never touches the network (the drain is not started).
NO_SERVER_URL = "http://127.0.0.1:9"
FULL_LINES = 100_000
QUICK_LINES = 10_000
#: Keys already in the ledger for the last row (a month of big imports).
FULL_LEDGER_KEYS = 1_000_000
QUICK_LEDGER_KEYS = 50_000
ROUNDS = 5
QUICK_ROUNDS = 2
#: Lines per transaction: the import's default before the ledger (and of the baseline), and
#: now (a bad line no longer fails its chunk, so chunks no longer need to be small).
BEFORE_CHUNK = 500
CHUNK = DEFAULT_IMPORT_CHUNK_SIZE
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


def _without_ledger(agent: Any, data: bytes, chunk_size: int = BEFORE_CHUNK) -> int:
    """The import before the ledger: parse lines, enqueue_many per chunk (all or none)."""
    from tracker_agent.importing import line_to_command

    queued = 0
    chunk: list[dict[str, Any]] = []
    for number, raw in enumerate(io.BytesIO(data), 1):
        text = raw.decode("utf-8")
        if not text.strip():
            continue
        chunk.append(line_to_command(text, f"line {number}")[0])
        if len(chunk) >= chunk_size:
            queued += agent.enqueue_many(chunk)
            chunk = []
    if chunk:
        queued += agent.enqueue_many(chunk)
    return queued


def _with_ledger(agent: Any, data: bytes, chunk_size: int = CHUNK, **options: Any) -> int:
    report = agent.import_lines(io.BytesIO(data), chunk_size=chunk_size, **options)
    assert report.ok, report.bad[:3]
    return int(report.queued + report.skipped)


def prefill_ledger(path: str, keys: int) -> None:
    """`keys` ledger keys of earlier imports, as import_ledger holds them after compaction."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        rows = sorted(
            (hashlib.blake2b(b"earlier %d" % i, digest_size=16).digest(), time.time())
            for i in range(keys)
        )
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO import_ledger (key, imported_at) VALUES (?, ?)", rows)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


class _Runner:
    def __init__(self, workdir: str, ledger_keys: int) -> None:
        self.template = os.path.join(workdir, "import-template.db")
        self.big = os.path.join(workdir, "import-big-ledger.db")
        fresh_outbox(self.template)
        fresh_outbox(self.big)
        prefill_ledger(self.big, ledger_keys)
        self.path = os.path.join(workdir, "import.db")

    def once(
        self,
        run: Callable[[Any], int],
        *,
        before: Callable[[Any], Any] | None,
        big_ledger: bool = False,
    ) -> float:
        """Lines per second of `run` on a fresh outbox (after `before`, not timed)."""
        from tracker_agent import TrackerAgent

        copy_outbox(self.big if big_ledger else self.template, self.path)
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
        for path in (self.template, self.big, self.path):
            remove_db(path)


#: (label, side name, big ledger); every side at the default chunk size but "same chunk"
ROWS = (
    (f"first import, {BEFORE_CHUNK} lines per transaction on both sides", "same chunk", False),
    (
        f"first import, the defaults ({CHUNK} lines per transaction vs {BEFORE_CHUNK})",
        "first",
        False,
    ),
    ("the same file again (every line skipped)", "again", False),
    ("reimport=True (keys recorded, not looked up)", "reimport", False),
    ("first import, the ledger holding {keys} keys of earlier imports", "first", True),
)


def run(scale: Scale, workdir: str) -> Section:
    lines = QUICK_LINES if scale.quick else FULL_LINES
    ledger_keys = QUICK_LEDGER_KEYS if scale.quick else FULL_LEDGER_KEYS
    data = make_file(lines)
    section = Section(
        "importing",
        f"10. Import of {lines:,} JSON lines (lines per second)",
        ["workload", "with the ledger", "without (the import before)", "ratio"],
    )
    sides: dict[str, tuple[Callable[[Any], int], Callable[[Any], Any] | None]] = {
        "without": (lambda agent: _without_ledger(agent, data), None),
        "same chunk": (lambda agent: _with_ledger(agent, data, BEFORE_CHUNK), None),
        "first": (lambda agent: _with_ledger(agent, data), None),
        "again": (
            lambda agent: _with_ledger(agent, data),
            lambda agent: _with_ledger(agent, data),
        ),
        "reimport": (lambda agent: _with_ledger(agent, data, reimport=True), None),
    }
    runner = _Runner(workdir, ledger_keys)
    rounds = QUICK_ROUNDS if scale.quick else ROUNDS
    # (ours, baseline) per round: each pair runs back to back, so load that drifts during the
    # run hits both sides of a pair alike; the ratio reported is the median of the pairs'.
    pairs: dict[int, list[tuple[float, float]]] = {row: [] for row in range(len(ROWS))}
    for index in range(rounds):
        for row in range(len(ROWS)) if index % 2 == 0 else reversed(range(len(ROWS))):
            _label, name, big = ROWS[row]
            run_side, before = sides[name]
            ours_first = (index + row) % 2 == 0
            if ours_first:
                ours = runner.once(run_side, before=before, big_ledger=big)
            base = runner.once(sides["without"][0], before=None, big_ledger=big)
            if not ours_first:
                ours = runner.once(run_side, before=before, big_ledger=big)
            pairs[row].append((ours, base))
    runner.cleanup()
    ratios = {row: median([o / b for o, b in values]) for row, values in pairs.items()}
    for row, (label, _name, _big) in enumerate(ROWS):
        ours = median([o for o, _ in pairs[row]])
        base = median([b for _, b in pairs[row]])
        section.rows.append(
            [label.format(keys=f"{ledger_keys:,}"), rate(ours), rate(base), ratio(ratios[row], 1)]
        )
    section.notes += [
        f"{rounds} rounds; each figure is a pair run back to back (the order alternating), "
        "rates are medians and the ratio is the median of the pairs' ratios. "
        f"The baseline commits {BEFORE_CHUNK} lines per transaction (the import's default "
        f"before the ledger), the ledger side {CHUNK} (its default now) unless said; "
        "synchronous=FULL, a fresh copy of a migrated outbox each time (the second import's "
        "first run is not timed); the last row's baseline runs on the same outbox.",
        "Without the ledger a bad line used to fail its whole chunk; with it every line is "
        "validated on its own and the good ones are queued.",
    ]
    first = ratios[1]
    section.targets.append(
        Target(
            "first import with the ledger vs without (defaults)",
            f">= {TARGET_RATIO:.0%}",
            f"{first:.0%}",
            first >= TARGET_RATIO,
        )
    )
    return section
