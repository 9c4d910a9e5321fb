"""`python -m bench [--quick] [--only NAME[,NAME]] [--output FILE] [--workdir DIR]`.

Runs the figure families in order, prints the Markdown report and, for a full run of every
family, writes bench/RESULTS.md (any run writes where --output says).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from types import ModuleType

from bench import (
    backlog,
    coldstart,
    drain,
    enqueue,
    faraway,
    importing,
    latency,
    memory,
    peers,
    postgresql,
    receipts,
    report,
    sysinfo,
)
from bench.common import FULL, QUICK, ROOT, Scale, Section

FAMILIES: dict[str, ModuleType] = {
    "enqueue": enqueue,
    "drain": drain,
    "peers": peers,
    "latency": latency,
    "memory": memory,
    "coldstart": coldstart,
    "backlog": backlog,
    "postgresql": postgresql,
    "receipts": receipts,
    "importing": importing,
    "faraway": faraway,
}
RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")
#: Third-party loggers that would print a line per dropped event or per skipped drain tick.
NOISY_LOGGERS = ("segment", "posthog", "backoff", "apscheduler")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run, < 1 minute")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these families (repeat or comma-separate): {', '.join(FAMILIES)}",
    )
    parser.add_argument("--output", metavar="FILE", help="write the report here")
    parser.add_argument("--workdir", metavar="DIR", help="where outbox files go (default: TMP)")
    args = parser.parse_args(argv)
    names = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    unknown = sorted(set(names) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown family {', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
    args.names = [n for n in FAMILIES if n in names] if names else list(FAMILIES)
    return args


def _run_family(
    name: str, run: Callable[[Scale, str], Section], scale: Scale, workdir: str
) -> Section:
    print(f"bench: {name} ...", file=sys.stderr, flush=True)
    start, ticks = time.perf_counter(), sysinfo.cpu_ticks()
    try:
        section = run(scale, workdir)
    except Exception as exc:  # a broken family must not lose the others' figures
        traceback.print_exc()
        section = Section(name, f"{name}: FAILED", ["error"], [[f"{type(exc).__name__}: {exc}"]])
    section.seconds = time.perf_counter() - start
    section.stolen = sysinfo.stolen_share(ticks, sysinfo.cpu_ticks())
    print(f"bench: {name} done in {section.seconds:.0f} s", file=sys.stderr, flush=True)
    return section


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    scale = QUICK if args.quick else FULL
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    workdir = tempfile.mkdtemp(prefix="tracker-agent-bench-", dir=args.workdir)
    start = time.perf_counter()
    try:
        machine = sysinfo.describe(workdir)
        sections = [_run_family(n, FAMILIES[n].run, scale, workdir) for n in args.names]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    every = len(args.names) == len(FAMILIES)
    command = "python -m bench" + " --quick" * args.quick
    command += "" if every else "".join(f" --only {n}" for n in args.names)
    text = report.render(
        machine,
        sections,
        quick=args.quick,
        total_seconds=time.perf_counter() - start,
        load_at_end=sysinfo.load_average(),
        command=command,
    )
    print(text)
    output = args.output or (RESULTS if every and not args.quick else None)
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"bench: wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
