"""`tracker-agent receipt ID...`: where commands queued with a receipt stand (queued, in
flight, delivered, dead-lettered, unknown), as a table or JSON Lines.

Reads the outbox read-only, as `status` does (the stdlib on SQLite, psycopg alone on
PostgreSQL): no credentials, no changes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from tracker_agent.cli.context import CliContext, pass_cli
from tracker_agent.cli.table import human_time

if TYPE_CHECKING:
    from tracker_agent.outbox.receipts import ReceiptStatus

#: ids per read (a command line can hold many)
MAX_IDS = 100_000


def _when(status: dict[str, Any], now: float) -> str:
    for key in ("delivered_at", "dead_at", "next_attempt_at"):
        if status.get(key) is not None:
            return human_time(status[key], now)
    return "-"


def _detail(status: dict[str, Any]) -> str:
    if status["state"] == "dead_lettered":
        return str(status["reason"])
    return str(status.get("last_error") or "")


def table(statuses: list[dict[str, Any]], now: float) -> list[str]:
    rows = [("ID", "STATE", "ATTEMPTS", "WHEN", "DETAIL")]
    rows += [
        (str(s["id"]), s["state"], "-" if s["attempts"] is None else str(s["attempts"]),
         _when(s, now), _detail(s))
        for s in statuses
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + ("  " + row[4] if row[4] else "")
        for row in rows
    ]


def read_receipts(database_url: str, ids: Sequence[int], now: float) -> list[ReceiptStatus]:
    """The receipts' statuses, read-only: the SQLite file with the stdlib, or PostgreSQL in
    one read-only transaction (leases on the database's clock)."""
    from tracker_agent.outbox.backend import POSTGRESQL, backend_name
    from tracker_agent.outbox.receipts import lookup

    if backend_name(database_url) == POSTGRESQL:
        from tracker_agent.outbox.pg_status import read_pg

        return read_pg(database_url, lambda cur, db_now: lookup(cur, ids, db_now))
    from tracker_agent.outbox.files import sqlite_path
    from tracker_agent.outbox.stats import read_outbox

    return read_outbox(sqlite_path(database_url), lambda conn: lookup(conn, ids, now))


@click.command()
@click.argument("ids", nargs=-1, required=True, type=click.IntRange(min=0))
@click.option("--json", "as_json", is_flag=True, help="JSON Lines, one receipt per line.")
@pass_cli
def receipt(cli: CliContext, ids: tuple[int, ...], as_json: bool) -> None:
    """Show where the commands with these receipt ids stand.

    queued, in_flight, delivered (remembered for receipt_retention), dead_lettered (with the
    reason), or unknown. Reads the outbox only; needs no credentials.
    """
    if len(ids) > MAX_IDS:
        raise click.UsageError(f"at most {MAX_IDS:,} ids at a time")
    now = time.time()
    statuses = [s.as_dict() for s in read_receipts(cli.database_url(), ids, now)]
    if as_json:
        for status in statuses:
            click.echo(json.dumps(status, sort_keys=True))
    else:
        for line in table(statuses, now):
            click.echo(line.rstrip())
