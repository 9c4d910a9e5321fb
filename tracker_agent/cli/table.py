"""The status table and the human forms of its values (durations, sizes, times), shared by
`status`, `status --watch`, `receipt`, `dead-letters` and `demo`.
"""

from __future__ import annotations

import time
from typing import Any

SECONDS_PER_MINUTE = 60
SECONDS_PER_HOUR = 3600
SECONDS_PER_DAY = 86400
BYTES_PER_KIB = 1024


def human_duration(seconds: float) -> str:
    """12s, 3m 12s, 5h 3m, 2d 4h."""
    seconds = max(0, int(round(seconds)))
    if seconds < SECONDS_PER_MINUTE:
        return f"{seconds}s"
    if seconds < SECONDS_PER_HOUR:
        return f"{seconds // SECONDS_PER_MINUTE}m {seconds % SECONDS_PER_MINUTE}s"
    if seconds < SECONDS_PER_DAY:
        hours, rest = divmod(seconds, SECONDS_PER_HOUR)
        return f"{hours}h {rest // SECONDS_PER_MINUTE}m"
    days, rest = divmod(seconds, SECONDS_PER_DAY)
    return f"{days}d {rest // SECONDS_PER_HOUR}h"


def human_bytes(size: float) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < BYTES_PER_KIB or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= BYTES_PER_KIB
    return f"{value:.1f} GiB"  # pragma: no cover - the loop always returns


def human_time(stamp: Any, now: float) -> str:
    """A local timestamp with how long ago (or from now) it is; "never" for None."""
    if stamp is None:
        return "never"
    if not isinstance(stamp, (int, float)):
        return str(stamp)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))
    delta = now - stamp
    relative = f"{human_duration(delta)} ago" if delta >= 0 else f"in {human_duration(-delta)}"
    return f"{when} ({relative})"


def status_rows(stats: dict[str, Any], now: float) -> list[tuple[str, str]]:
    age = stats.get("oldest_pending_age_s")
    last_error = stats.get("last_error")
    if last_error and stats.get("last_error_at") is not None:
        last_error = f"{last_error} [{human_time(stats['last_error_at'], now)}]"
    paused = stats.get("paused_reason")
    warning = stats.get("warning")
    if warning and stats.get("warning_at") is not None:
        warning = f"{warning} [{human_time(stats['warning_at'], now)}]"
    rows = [
        ("database", str(stats.get("database", ""))),
        ("project", stats.get("project") or "-"),
        ("pending", f"{stats['pending']:,}"),
        ("in flight", f"{stats['in_flight']:,}"),
        ("dead-lettered", f"{stats['dead']:,}"),
        ("queued size", human_bytes(stats.get("bytes") or 0)),
        ("oldest pending", "-" if age is None else human_duration(age)),
        ("delivered", f"{stats['delivered']:,}"),
        ("dropped", f"{stats.get('dropped') or 0:,}"),
        ("last success", human_time(stats.get("last_success_at"), now)),
        ("last error", last_error or "-"),
        ("paused", f"yes: {paused}" if paused else "no"),
        ("next attempt", human_time(stats.get("next_attempt_at"), now)
         if stats.get("next_attempt_at") else "-"),
        ("clock", clock_row(stats)),
    ]  # fmt: skip
    if warning:  # loud, and last: the line an operator's eye lands on
        rows.append(("WARNING", warning))
    return rows


def clock_row(stats: dict[str, Any]) -> str:
    """The server's clock minus ours, and what clock correction did (README: "Devices that
    live offline")."""
    offset = stats.get("clock_offset_s")
    unknown = stats.get("clock_unknown") or 0
    if offset is None:
        return f"unknown; {unknown:,} sent as recorded" if unknown else "-"
    text = f"server {offset:+.1f} s; {stats.get('clock_corrected') or 0:,} corrected"
    uncorrected = stats.get("clock_uncorrected") or 0
    if uncorrected:
        text += f", {uncorrected:,} impossible sent as recorded"
    if unknown:
        text += f", {unknown:,} of unlearned boots sent as recorded"
    return text
