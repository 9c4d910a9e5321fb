"""`tracker-agent status`: the queue at a glance, as a table or JSON, and a monitoring mode.

Reads the outbox file read-only with the stdlib (tracker_agent.outbox.stats): no SQLAlchemy,
no requests, so it starts in well under 0.3 s and never needs credentials.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click

from tracker_agent.cli.context import DURATION, EXIT_ALARM, PROG, CliContext, pass_cli

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
    if offset is None:
        return "-"
    text = f"server {offset:+.1f} s; {stats.get('clock_corrected') or 0:,} corrected"
    uncorrected = stats.get("clock_uncorrected") or 0
    if uncorrected:
        text += f", {uncorrected:,} impossible sent as recorded"
    return text


def alarms(
    stats: dict[str, Any], max_age: float | None, fail_if_paused: bool, fail_if_dead: bool = False
) -> list[str]:
    """Why monitoring should page someone; empty when all is well."""
    found = []
    age = stats.get("oldest_pending_age_s")
    if max_age is not None and age is not None and age > max_age:
        found.append(f"oldest pending command is {human_duration(age)} old (limit {max_age:g}s)")
    if fail_if_paused and stats.get("paused_reason"):
        found.append(f"delivery is paused: {stats['paused_reason']}")
    if fail_if_dead and stats.get("dead"):
        found.append(f"{stats['dead']:,} dead-lettered commands (see `{PROG} dead-letters list`)")
    return found


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (for machines).")
@click.option(
    "--max-age",
    type=DURATION,
    default=None,
    metavar="SECONDS",
    help=f"Monitoring: exit {EXIT_ALARM} when the oldest pending command is older (90, 15m, 2h).",
)
@click.option(
    "--fail-if-paused",
    is_flag=True,
    help=f"Monitoring: exit {EXIT_ALARM} when delivery is paused (credentials, configuration).",
)
@click.option(
    "--fail-if-dead",
    is_flag=True,
    help=f"Monitoring: exit {EXIT_ALARM} when any command is dead-lettered (refused by the "
    "server, or out of attempts).",
)
@pass_cli
def status(
    cli: CliContext, as_json: bool, max_age: float | None, fail_if_paused: bool, fail_if_dead: bool
) -> None:
    """Show the queue: pending, in flight, dead-lettered, delivery state.

    Reads the outbox file only; needs no credentials and never changes the file.
    """
    from tracker_agent.outbox.files import sqlite_path
    from tracker_agent.outbox.stats import read_status

    path = sqlite_path(cli.database_url())
    now = time.time()
    stats = {**read_status(path, now=now), "database": path}
    if as_json:
        click.echo(json.dumps(stats, indent=2, sort_keys=True))
    else:
        rows = status_rows(stats, now)
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            click.echo(f"{label:<{width}}  {value}")
    if stats.get("warning"):
        click.echo(f"{PROG}: warning: {stats['warning']}", err=True)
    problems = alarms(stats, max_age, fail_if_paused, fail_if_dead)
    for problem in problems:
        click.echo(f"{PROG}: alarm: {problem}", err=True)
    if problems:
        raise click.exceptions.Exit(EXIT_ALARM)
