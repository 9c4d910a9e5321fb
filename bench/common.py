"""Shared pieces of the benchmarks: the scale of a run, result records, outbox files, timing."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: The folder that holds the `bench` package (the checkout root): children run from there.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Project token and credentials the benchmarks give FakeExponea and the agent.
TOKEN, USERNAME, PASSWORD = "bench-project", "bench-key", "bench-secret"
#: The drain's rate limit where a figure measures the code, not the API's 100 requests/s policy.
UNLIMITED_RATE = 10_000.0  # the highest rate_limit Settings accept; far above what a drain reaches
#: SQLite pragmas of the outbox (tracker_agent.outbox.engine applies the same ones).
BUSY_TIMEOUT_SECONDS = 30.0
KIB = 1024


@dataclass(frozen=True)
class Scale:
    """How big a run is: the full run (< 10 min) or --quick (< 1 min)."""

    quick: bool
    enqueue_seconds: float  # per enqueue configuration
    drain_events: int
    peer_burst: int
    peer_wait_seconds: float  # how long to wait for a peer to deliver after its burst
    latency_rate: float  # events/s
    latency_seconds: float
    memory_backlogs: tuple[int, ...]
    memory_drain: int  # events each memory drain process delivers
    coldstart_runs: int
    backlogs: tuple[int, ...]  # queued events before a drain (the backlog family)
    backlog_window: int  # events each of those drains delivers


FULL = Scale(
    False, 2.5, 20_000, 20_000, 60.0, 200.0, 10.0, (100_000, 1_000_000), 100_000, 9,
    (10_000, 100_000, 1_000_000), 25_000,
)  # fmt: skip
QUICK = Scale(
    True, 0.4, 3_000, 2_000, 15.0, 200.0, 2.0, (10_000, 50_000), 5_000, 5, (2_000, 20_000), 2_000
)


@dataclass(frozen=True)
class Target:
    """A goal from the issue, and whether this run met it."""

    name: str
    goal: str
    measured: str
    met: bool


@dataclass
class Section:
    """One family of figures: a table (with its baselines and ratios), notes and targets."""

    key: str
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    seconds: float = 0.0
    stolen: float | None = None  # share of the machine's CPU time the hypervisor took


# -- formatting ------------------------------------------------------------------------------


def rate(value: float) -> str:
    """A rate with thousands separators: 12,345/s."""
    return f"{value:,.0f}/s"


def ratio(value: float, base: float) -> str:
    if base <= 0:
        return "n/a"
    return f"{value / base:.2f}x" if value / base < 10 else f"{value / base:.0f}x"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def mib(kib: float) -> str:
    return f"{kib / KIB:.1f} MiB"


def percentile(values: Sequence[float], pct: float) -> float:
    """The pct-th percentile (nearest rank) of `values`; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered)) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


# -- outbox files ----------------------------------------------------------------------------


def remove_db(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


def copy_outbox(template: str, path: str, *, on_disk: bool = False) -> str:
    """A fresh copy of the outbox file `template` at `path` (anything there before removed),
    private as the agent creates it (else it warns and fixes the mode on open). With
    `on_disk`, fsynced, as an outbox filled a while ago is: left to the kernel, a big copy's
    write-back runs during the measured work (at 1M rows, 400 MB that the first checkpoint's
    fsync waited for: a 150-200 ms stall). Returns `path`."""
    remove_db(path)
    shutil.copyfile(template, path)
    os.chmod(path, 0o600)
    if on_disk:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def db_bytes(path: str) -> int:
    """The file plus its WAL and shared-memory index, as they are on disk now."""
    return sum(os.path.getsize(path + s) for s in ("", "-wal", "-shm") if os.path.exists(path + s))


def fresh_outbox(path: str) -> str:
    """An empty outbox at `path`, migrated to head with the package's own code; its URL."""
    from tracker_agent.outbox.engine import open_outbox

    remove_db(path)
    url = "sqlite:///" + path
    open_outbox(url).dispose()
    return url


def raw_connect(path: str, synchronous: str = "FULL") -> sqlite3.Connection:
    """A plain sqlite3 connection with the outbox's pragmas (WAL, synchronous, busy_timeout)."""
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def agent_kwargs(url: str, database_url: str, **settings: Any) -> dict[str, Any]:
    return dict(
        project_token=TOKEN,
        username=USERNAME,
        password=PASSWORD,
        url=url,
        database_url=database_url,
        **settings,
    )


# -- processes -------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment for child processes: `bench` (and a checkout's package) importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH", "")) if p)
    return env


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by this process (all its threads), or by
    process `pid` (read from /proc; 0.0 once it is gone): what a figure divides by the
    batches it sent, to show where a drain's time goes on a machine of few cores."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    seen = _proc_cpu(str(pid))
    return seen[1] if seen is not None else 0.0


def _proc_cpu(entry: str) -> tuple[str, float] | None:
    """(name, CPU seconds so far) of process `entry` (a pid) from /proc; None if gone."""
    try:
        with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
            text = fh.read()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    name = text[text.index("(") + 1 : text.rindex(")")]
    return name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuWatch:
    """CPU seconds used over a span by groups of processes (e.g. "postgres": every process so
    named), sampled from /proc every INTERVAL seconds by a thread, so that processes which
    exit before the span ends still count: each counts from its first sample in the span to
    its last (what it used in its last interval before exiting is missed)."""

    INTERVAL = 0.05

    def __init__(self, groups: dict[str, Callable[[int, str], bool]]) -> None:
        self._groups = groups
        self._first: dict[int, float] = {}
        self._last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-cpu-watch", daemon=True)

    def _sample(self) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            seen = _proc_cpu(entry)
            if seen is None or not any(match(pid, seen[0]) for match in self._groups.values()):
                continue
            self._first.setdefault(pid, seen[1])
            self._last[pid] = seen

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            self._sample()

    def __enter__(self) -> CpuWatch:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def seconds(self) -> dict[str, float]:
        """CPU seconds per group over the span."""
        totals = dict.fromkeys(self._groups, 0.0)
        for pid, (name, last) in self._last.items():
            for group, match in self._groups.items():
                if match(pid, name):
                    totals[group] += last - self._first[pid]
                    break
        return totals


def vmhwm_kib() -> int:
    """This process's peak resident set size (VmHWM), in KiB."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


# Linux gotcha: a child's ru_maxrss counts the RSS of the process it was forked from (the mm
# it had before exec), so children forked from this big benchmark process would all report
# its size. A tiny interpreter (-S, stdlib os/json only) forks and measures them instead.
_MEASURE = r"""
import json, os, sys, time
argv = json.loads(sys.argv[1])
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
print(json.dumps({"wall": wall, "maxrss": usage.ru_maxrss,
                  "code": os.waitstatus_to_exitcode(status)}))
"""


def measure_process(argv: Sequence[str], timeout: float = 120.0) -> tuple[float, int]:
    """Run `argv` to its end: (its wall seconds, its peak RSS in KiB). Its stdout is dropped."""
    done = subprocess.run(
        [sys.executable, "-S", "-c", _MEASURE, json.dumps(list(argv))],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        timeout=timeout,
        check=True,
    )
    out = json.loads(done.stdout)
    if out["code"] != 0:
        raise RuntimeError(f"{' '.join(argv[:5])} failed ({out['code']}): {done.stderr[-2000:]}")
    return float(out["wall"]), int(out["maxrss"])


def run_json(argv: Sequence[str], timeout: float = 900.0) -> dict[str, Any]:
    """Run a benchmark child to its end and parse the JSON object on its last stdout line."""
    done = subprocess.run(
        list(argv), capture_output=True, text=True, env=child_env(), cwd=ROOT, timeout=timeout
    )
    if done.returncode != 0:
        where = " ".join(argv[:5])
        raise RuntimeError(f"{where} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
