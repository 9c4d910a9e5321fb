"""`tracker-agent status --watch`: the status table refreshed in place, with the delivery rate
and the time the backlog needs at that rate (like `vector top`, for this queue).

Read-only and stdlib-only like `status`. On a terminal each refresh overwrites the previous
one; piped, the tables follow each other. Ctrl-C ends it with status 0.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import click

from tracker_agent.cli.table import human_duration, status_rows
from tracker_agent.exceptions import OutboxError

#: The rate is measured over this many refreshes (a moving window: steady, yet current).
RATE_WINDOW_SAMPLES = 10
DEFAULT_WATCH_SECONDS = 2.0
MIN_WATCH_SECONDS = 0.1
#: Cursor home, then each line cleared to its end, then the rest of the screen: no flicker.
_HOME = "\x1b[H"
_CLEAR_LINE = "\x1b[K"
_CLEAR_BELOW = "\x1b[J"

#: (time.monotonic(), commands settled so far: delivered + dead-lettered)
Sample = tuple[float, int]


def delivery_rate(samples: deque[Sample]) -> float | None:
    """Commands settled per second over the window; None until two samples exist."""
    if len(samples) < 2:
        return None
    (t0, n0), (t1, n1) = samples[0], samples[-1]
    if t1 <= t0:
        return None
    return max(0, n1 - n0) / (t1 - t0)


def eta_text(backlog: int, rate: float | None, paused: bool) -> str:
    """How long the backlog needs at `rate`: "-" when there is none."""
    if backlog == 0:
        return "-"
    if paused:
        return "never while paused"
    if rate is None:
        return "measuring..."
    if rate <= 0:
        return "unknown (nothing delivered lately)"
    return human_duration(backlog / rate)


def watch_rows(stats: dict[str, Any], now: float, rate: float | None) -> list[tuple[str, str]]:
    """The status table with the rate and ETA after the queue counts."""
    backlog = int(stats["pending"]) + int(stats["in_flight"])
    extra = [
        ("delivery rate", "measuring..." if rate is None else f"{rate:,.1f}/s"),
        ("backlog ETA", eta_text(backlog, rate, bool(stats.get("paused_reason")))),
    ]
    rows = status_rows(stats, now)
    at = next(i for i, (label, _) in enumerate(rows) if label == "delivered") + 1
    return rows[:at] + extra + rows[at:]


def screen(rows: list[tuple[str, str]], footer: str, in_place: bool) -> str:
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows] + ["", footer]
    if not in_place:
        return "\n".join(lines) + "\n\n"
    return _HOME + "".join(f"{line}{_CLEAR_LINE}\n" for line in lines) + _CLEAR_BELOW


def watch(
    read: Callable[[float], dict[str, Any]],
    interval: float,
    *,
    in_place: bool,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    rounds: int | None = None,
) -> None:
    """Show read(now) every `interval` seconds (`rounds` times, or until Ctrl-C). A failure
    to read after the first shows in place of the table; the watch goes on."""
    samples: deque[Sample] = deque(maxlen=RATE_WINDOW_SAMPLES)
    footer = f"every {interval:g}s, Ctrl-C to quit"
    shown = 0
    while rounds is None or shown < rounds:
        now = time.time()
        try:
            stats = read(now)
        except OutboxError as exc:
            if not shown:
                raise
            rows = [("error", str(exc))]
        else:
            samples.append((clock(), int(stats["delivered"]) + int(stats["dead_lettered"])))
            rows = watch_rows(stats, now, delivery_rate(samples))
        click.echo(screen(rows, footer, in_place), nl=False, color=in_place or None)
        shown += 1
        if rounds is None or shown < rounds:
            sleep(interval)
