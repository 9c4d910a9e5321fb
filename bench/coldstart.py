"""Figure 6: cold start of `tracker-agent status --json` (wall time and peak RSS).

Each run is a fresh process; the figure is the median wall time of several runs and the
largest peak RSS (wait4's ru_maxrss, measured by a tiny forking parent: see
common.measure_process). The console script is used when it is installed next to
this interpreter, else `python -m tracker_agent` (the same entry point). Baseline: the
interpreter alone (`python -c pass`). Also the library's stdlib-only reader, read_status().
"""

from __future__ import annotations

import os
import sys

from bench import workload
from bench.common import Scale, Section, Target, measure_process, median, mib, ratio, remove_db

STATUS_BACKLOG = 10_000
TARGET_SECONDS = 0.3


def status_argv(path: str) -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "tracker-agent")
    base = [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "tracker_agent"]
    return [*base, "--database-url", "sqlite:///" + path, "status", "--json"]


def measure(argv: list[str], runs: int) -> tuple[float, int]:
    """(median wall seconds, largest peak RSS in KiB) over `runs` fresh processes."""
    measure_process(argv)  # warm the page cache: every run then starts alike
    walls, peaks = [], []
    for _ in range(runs):
        wall, maxrss = measure_process(argv)
        walls.append(wall)
        peaks.append(maxrss)
    return median(walls), max(peaks)


def status_figures(path: str, runs: int) -> tuple[float, int]:
    return measure(status_argv(path), runs)


def run(scale: Scale, workdir: str) -> Section:
    section = Section(
        "coldstart",
        "6. Cold start of `tracker-agent status --json`",
        ["command", "median wall", "baseline: python -c pass", "ratio", "peak RSS", "baseline RSS"],
    )
    path = os.path.join(workdir, "status.db")
    workload.prefill(path, STATUS_BACKLOG)
    runs = scale.coldstart_runs
    base_wall, base_rss = measure([sys.executable, "-c", "pass"], runs)
    argv = status_argv(path)
    wall, rss = measure(argv, runs)
    reader = (
        "import sys; from tracker_agent.outbox.stats import read_status; read_status(sys.argv[1])"
    )
    lib_wall, lib_rss = measure([sys.executable, "-c", reader, path], runs)
    remove_db(path)
    script = os.path.basename(argv[0]) == "tracker-agent"
    shown = "tracker-agent" if script else "python -m tracker_agent"
    section.rows += [
        [
            f"`{shown} status --json` ({STATUS_BACKLOG:,} queued)",
            f"{wall * 1000:.0f} ms",
            f"{base_wall * 1000:.0f} ms",
            ratio(wall, base_wall),
            mib(rss),
            mib(base_rss),
        ],
        [
            "`python -c 'read_status(path)'` (library, stdlib only)",
            f"{lib_wall * 1000:.0f} ms",
            f"{base_wall * 1000:.0f} ms",
            ratio(lib_wall, base_wall),
            mib(lib_rss),
            mib(base_rss),
        ],
    ]
    section.notes.append(
        f"Median of {runs} fresh processes after one warm-up run (page cache warm); "
        + (
            "the console script is not installed in this environment, so the command ran as "
            "`python -m tracker_agent` (the same click entry point)."
            if not script
            else "the installed console script."
        )
    )
    section.targets.append(
        Target("status cold start", f"< {TARGET_SECONDS} s", f"{wall:.3f} s", wall < TARGET_SECONDS)
    )
    return section
