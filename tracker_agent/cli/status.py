"""`tracker-agent status`: the queue at a glance, as a table or JSON, and a monitoring mode.

Reads the outbox file read-only with the stdlib (tracker_agent.outbox.stats): no SQLAlchemy,
no requests, so it starts in well under 0.3 s and never needs credentials.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from tracker_agent.cli.context import DURATION, EXIT_ALARM, PROG, CliContext, pass_cli
from tracker_agent.cli.table import human_bytes, human_duration, human_time, status_rows

__all__ = ["human_bytes", "human_duration", "human_time", "status", "status_rows"]


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


FORMATS = ("table", "json", "prometheus")


def render(stats: dict[str, Any], output_format: str, now: float) -> str:
    """The status in `output_format` (FORMATS), ending with a newline."""
    if output_format == "json":
        return json.dumps(stats, indent=2, sort_keys=True) + "\n"
    if output_format == "prometheus":
        from tracker_agent.prometheus import status_text

        return status_text(stats)
    rows = status_rows(stats, now)
    width = max(len(label) for label, _ in rows)
    return "".join(f"{label:<{width}}  {value}\n" for label, value in rows)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (--format json).")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default=None,
    help="table (default), json, or prometheus: the text exposition format, for "
    "node_exporter's textfile collector (needs the metrics extra).",
)
@click.option(
    "--watch",
    type=click.FloatRange(min=0.1),
    is_flag=False,
    flag_value=2.0,
    default=None,
    metavar="[SECONDS]",
    help="Refresh the table in place every SECONDS (default 2), with the delivery rate and "
    "the backlog's ETA; Ctrl-C quits.",
)
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
    cli: CliContext,
    as_json: bool,
    output_format: str | None,
    watch: float | None,
    max_age: float | None,
    fail_if_paused: bool,
    fail_if_dead: bool,
) -> None:
    """Show the queue: pending, in flight, dead-lettered, delivery state.

    Reads the outbox file only; needs no credentials and never changes the file. On
    PostgreSQL: one read-only transaction.
    """
    if as_json and output_format not in (None, "json"):
        raise click.UsageError(f"--json and --format {output_format}: give one of them")
    chosen = "json" if as_json else output_format or "table"
    if chosen == "prometheus":  # before reading anything: a missing library is the error
        from tracker_agent.prometheus import require_client

        require_client("status --format prometheus")
    url = cli.database_url()
    if watch is not None:
        _watch(url, watch, chosen, bool(max_age is not None or fail_if_paused or fail_if_dead))
        return
    now = time.time()
    stats = read_any_status(url, now)
    click.echo(render(stats, chosen, now), nl=False)
    if stats.get("warning"):
        click.echo(f"{PROG}: warning: {stats['warning']}", err=True)
    problems = alarms(stats, max_age, fail_if_paused, fail_if_dead)
    for problem in problems:
        click.echo(f"{PROG}: alarm: {problem}", err=True)
    if problems:
        raise click.exceptions.Exit(EXIT_ALARM)


def read_any_status(database_url: str, now: float) -> dict[str, Any]:
    """The outbox's stats and where it is (a file, or a URL without its password)."""
    from tracker_agent.outbox.backend import POSTGRESQL, backend_name

    if backend_name(database_url) == POSTGRESQL:
        from tracker_agent.outbox.pg_status import hide_password, read_pg_status

        return {**read_pg_status(database_url), "database": hide_password(database_url)}
    from tracker_agent.outbox.files import sqlite_path
    from tracker_agent.outbox.stats import read_status

    path = sqlite_path(database_url)
    return {**read_status(path, now=now), "database": path}


def _watch(database_url: str, interval: float, output_format: str, alarms_asked: bool) -> None:
    from tracker_agent.cli.watch import watch as refresh

    if output_format != "table" or alarms_asked:
        raise click.UsageError(
            "--watch shows the table to a person; --json, --format and the monitoring options "
            "are for scripts: give one or the other"
        )

    def read(now: float) -> dict[str, Any]:
        return read_any_status(database_url, now)

    try:
        refresh(read, interval, in_place=sys.stdout.isatty())
    except KeyboardInterrupt:  # Ctrl-C is how a watch ends: quietly, status 0
        click.echo("")
