"""`tracker-agent dead-letters list|retry|purge`: see, re-queue or drop what the server refused."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from tracker_agent.cli.context import DURATION, CliContext, fail, pass_cli
from tracker_agent.cli.status import human_duration
from tracker_agent.constants import CUSTOMER_COMMAND, EVENT_COMMAND

if TYPE_CHECKING:
    from tracker_agent.outbox.deadletters import DeadLetter

REASON_WIDTH = 60  # characters of the reason shown in the table
TYPE_WIDTH = 20  # characters of the event type
PAYLOAD_WIDTH = 90  # characters of the customer ids and properties shown under each row


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
    """The options as TrackerAgent.dead_letters and friends take them."""
    return {"ids": list(ids) or None, "error_contains": error_contains, "older_than": older_than}


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
    """List dead letters, oldest first: the event type, why and when it died, and under each
    row the start of its payload (customer ids, properties; cut short)."""
    found = cli.agent().dead_letters(**_selection(ids, error_contains, older_than), limit=limit)
    if as_json:
        for letter in found:
            click.echo(json.dumps(letter.as_dict(), sort_keys=True, ensure_ascii=False))
        return
    if not found:
        click.echo("no dead letters")
        return
    now = time.time()
    header = f"{'ID':>8}  {'DEAD FOR':>8}  {'TRIES':>5}  {'HTTP':>4}  {'TYPE':<{TYPE_WIDTH}}"
    click.echo(f"{header}  REASON")
    for letter in found:
        status = "-" if letter.status_code is None else str(letter.status_code)
        dead_for = human_duration(now - letter.dead_at)
        click.echo(
            f"{letter.id:>8}  {dead_for:>8}  {letter.attempts:>5}  {status:>4}  "
            f"{letter_type(letter):<{TYPE_WIDTH}}  {excerpt(letter.reason, REASON_WIDTH)}"
        )
        click.echo(f"{'':>8}  {payload_excerpt(letter)}")


def excerpt(text: str, width: int) -> str:
    """`text` on one line, cut to `width` characters ("…" marks the cut); characters a
    terminal would act on (control, escape) are shown as escapes."""
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def letter_type(letter: DeadLetter) -> str:
    """The event type of an event, "(customer update)" for a customer properties update."""
    if letter.kind == EVENT_COMMAND:
        return excerpt(str(letter.payload.get("event_type", "?")), TYPE_WIDTH)
    if letter.kind == CUSTOMER_COMMAND:
        return "(customer update)"
    return excerpt(letter.kind, TYPE_WIDTH)


def payload_excerpt(letter: DeadLetter) -> str:
    """Customer ids and the start of the properties: user data, so cut short, never in full."""
    customer = json.dumps(letter.customer_ids, sort_keys=True, ensure_ascii=False)
    properties = json.dumps(letter.payload.get("properties", {}), ensure_ascii=False)
    return excerpt(f"{customer} {properties}", PAYLOAD_WIDTH)


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
    """Put dead letters back in the queue, under their original ids and in their original order.

    The command is re-sent exactly as stored: the same payload, the same event timestamp,
    nothing re-validated or changed. Retry refusals that no longer apply (a limit since raised,
    attempts or max_age run out during an outage); for data the server refused, fix it
    upstream, track it anew and purge the dead letter. Its age still counts from when it was
    first queued (max_age), and identical events are deduplicated by the API.
    """
    selection = _selection(ids, error_contains, older_than)
    _require_selection(selection, all_, "retry")
    moved = cli.agent().retry_dead_letters(**selection, all=all_)
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
    agent = cli.agent()
    if not yes:
        count = len(agent.dead_letters(**selection))
        if count == 0:
            click.echo("no dead letters match")
            return
        click.confirm(f"delete {count} dead letters for good?", abort=True, err=True)
    click.echo(f"purged {agent.purge_dead_letters(**selection, all=all_)} dead letters")
