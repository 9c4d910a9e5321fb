"""`tracker-agent dead-letters list|retry|purge`: see, re-queue or drop what the server refused."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import click

from tracker_agent.cli.context import DURATION, CliContext, fail, pass_cli
from tracker_agent.cli.status import human_duration

REASON_WIDTH = 60  # characters of the reason shown in the table


def _filters(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--older-than",
        type=DURATION,
        default=None,
        metavar="DURATION",
        help="Dead for at least this long (90, 15m, 2h, 7d).",
    )(f)
    f = click.option(
        "--error-contains",
        metavar="TEXT",
        default=None,
        help="The reason contains TEXT (case-insensitive).",
    )(f)
    f = click.option("--id", "ids", type=int, multiple=True, help="Only this id (repeatable).")(f)
    return f


def _selection(
    ids: tuple[int, ...], error_contains: str | None, older_than: float | None
) -> dict[str, Any]:
    return {
        "ids": list(ids) or None,
        "error_contains": error_contains,
        "older_than_s": older_than,
    }


def _require_selection(selection: dict[str, Any], all_: bool, verb: str) -> None:
    chosen = any(value is not None for value in selection.values())
    if not chosen and not all_:
        raise click.UsageError(f"say which dead letters to {verb}: --id, --error-contains, "
                               "--older-than, or --all")  # fmt: skip


@click.group("dead-letters")
def dead_letters() -> None:
    """Commands the server refused (or that ran out of attempts), kept with their reason."""


@dead_letters.command("list")
@_filters
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show at most N.")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines, one dead letter per line.")
@pass_cli
def list_(
    cli: CliContext,
    ids: tuple[int, ...],
    error_contains: str | None,
    older_than: float | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """List dead letters, oldest first."""
    found = cli.agent().store.list_dead(**_selection(ids, error_contains, older_than), limit=limit)
    if as_json:
        for letter in found:
            click.echo(json.dumps(letter.as_dict(), sort_keys=True, ensure_ascii=False))
        return
    if not found:
        click.echo("no dead letters")
        return
    now = time.time()
    click.echo(
        f"{'ID':>8}  {'KIND':<16}  {'DEAD FOR':>8}  {'TRIES':>5}  {'HTTP':>4}  CUSTOMER / REASON"
    )
    for letter in found:
        status = "-" if letter.status_code is None else str(letter.status_code)
        customer = json.dumps(letter.customer_ids, sort_keys=True, ensure_ascii=False)
        reason = (
            letter.reason
            if len(letter.reason) <= REASON_WIDTH
            else letter.reason[: REASON_WIDTH - 1] + "…"
        )
        click.echo(
            f"{letter.id:>8}  {letter.kind:<16}  {human_duration(now - letter.dead_at):>8}  "
            f"{letter.attempts:>5}  {status:>4}  {customer} {reason}"
        )


@dead_letters.command("retry")
@_filters
@click.option("--all", "all_", is_flag=True, help="Every dead letter.")
@pass_cli
def retry(
    cli: CliContext,
    ids: tuple[int, ...],
    error_contains: str | None,
    older_than: float | None,
    all_: bool,
) -> None:
    """Put dead letters back in the queue, under their original ids and in their original order."""
    selection = _selection(ids, error_contains, older_than)
    _require_selection(selection, all_, "retry")
    moved = cli.agent().store.retry_dead(**selection)
    click.echo(f"re-queued {moved} commands")
    if ids and moved < len(set(ids)):
        fail(f"{len(set(ids)) - moved} of the given ids are not dead letters")


@dead_letters.command("purge")
@_filters
@click.option("--all", "all_", is_flag=True, help="Every dead letter.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_cli
def purge(
    cli: CliContext,
    ids: tuple[int, ...],
    error_contains: str | None,
    older_than: float | None,
    all_: bool,
    yes: bool,
) -> None:
    """Delete dead letters for good."""
    selection = _selection(ids, error_contains, older_than)
    _require_selection(selection, all_, "purge")
    store = cli.agent().store
    if not yes:
        count = len(store.list_dead(**selection))
        if count == 0:
            click.echo("no dead letters match")
            return
        click.confirm(f"delete {count} dead letters for good?", abort=True, err=True)
    click.echo(f"purged {store.purge_dead(**selection)} dead letters")
