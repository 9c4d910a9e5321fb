"""Putting commands in the queue and pushing them out: `track`, `import` and `flush`."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import click

from tracker_agent import validation
from tracker_agent.cli.bundles import import_bundle
from tracker_agent.cli.context import EXIT_ALARM, PROG, CliContext, Seconds, fail, pass_cli
from tracker_agent.constants import DEFAULT_IMPORT_CHUNK_SIZE
from tracker_agent.exceptions import TrackerAgentError, ValidationError

if TYPE_CHECKING:
    from tracker_agent.importing import ImportReport

#: `flush --timeout` at most a week: beyond that it is a typo (ms for s).
MAX_FLUSH_TIMEOUT_SECONDS = 7 * 86_400
EVENT_KEYS = frozenset({"customer_ids", "event_type", "properties", "timestamp"})
CUSTOMER_KEYS = frozenset({"customer_ids", "properties"})


def parse_value(text: str, field: str) -> Any:
    """JSON when it parses (9.5, true, [1,2], {"a":1}, "quoted"), else the text as is.

    JSON nested too deeply to parse is refused (ValidationError naming `field`)."""
    try:
        return validation.loads(text, field)
    except ValidationError:
        raise
    except ValueError:
        return text


def parse_pairs(pairs: tuple[str, ...], option: str, *, json_values: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=option)
        out[key] = parse_value(value, f"{option} {key}") if json_values else value
    return out


def parse_json_object(text: str | None, option: str, keys: frozenset[str]) -> dict[str, Any]:
    """The --json object; only `keys` may appear in it."""
    if text is None:
        return {}
    try:
        value = validation.loads(text, option)
    except ValidationError:
        raise
    except ValueError as exc:
        raise click.BadParameter(f"invalid JSON: {exc}", param_hint=option) from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint=option)
    unknown = sorted(set(value) - keys)
    if unknown:
        raise click.BadParameter(
            f"unknown key {unknown[0]!r} (expected {', '.join(sorted(keys))})", param_hint=option
        )
    return value


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise click.BadParameter(f"{key!r} must be a JSON object", param_hint="--json")
    return value


# ---------------------------------------------------------------------------- track

_CUSTOMER_OPTION = click.option(
    "--customer",
    "customer",
    multiple=True,
    metavar="ID=VALUE",
    help="Customer id, e.g. registered=alice (repeatable; values stay strings).",
)
_PROP_OPTION = click.option(
    "--prop",
    "props",
    multiple=True,
    metavar="KEY=VALUE",
    help="Property (repeatable); VALUE is JSON when it parses (9.5, true, [1]) else a string.",
)


@click.group()
def track() -> None:
    """Queue an event or a customer update (delivered by the daemon or `flush`)."""


@track.command("event")
@_CUSTOMER_OPTION
@click.option("--type", "event_type", metavar="TYPE", help="Event type, e.g. purchase.")
@_PROP_OPTION
@click.option("--timestamp", type=float, help="POSIX seconds (default: now, fixed at enqueue).")
@click.option(
    "--json",
    "as_json",
    metavar="OBJECT",
    help='The event as JSON: {"customer_ids", "event_type", "properties", "timestamp"}; '
    "the options above add to it.",
)
@pass_cli
def track_event(
    cli: CliContext,
    customer: tuple[str, ...],
    event_type: str | None,
    props: tuple[str, ...],
    timestamp: float | None,
    as_json: str | None,
) -> None:
    """Queue one event: --customer registered=alice --type purchase --prop price=9.5"""
    data = parse_json_object(as_json, "--json", EVENT_KEYS)
    customer_ids = {
        **_object(data, "customer_ids"),
        **parse_pairs(customer, "--customer", json_values=False),
    }
    properties = {**_object(data, "properties"), **parse_pairs(props, "--prop", json_values=True)}
    event_type = event_type or data.get("event_type")
    timestamp = timestamp if timestamp is not None else data.get("timestamp")
    if not event_type:
        raise click.UsageError("give the event type with --type or in --json")
    # Checked before the outbox is opened: refused input creates no file.
    validation.event_command(customer_ids, event_type, properties, timestamp)
    receipt = cli.agent().track_event(customer_ids, event_type, properties, timestamp=timestamp)
    click.echo(
        f"queued event {event_type!r} for {json.dumps(customer_ids, sort_keys=True)}"
        f" (receipt {receipt}: `tracker-agent receipt {receipt}`)"
    )


@track.command("customer")
@_CUSTOMER_OPTION
@_PROP_OPTION
@click.option(
    "--json",
    "as_json",
    metavar="OBJECT",
    help='The update as JSON: {"customer_ids", "properties"}; the options above add to it.',
)
@pass_cli
def track_customer(
    cli: CliContext, customer: tuple[str, ...], props: tuple[str, ...], as_json: str | None
) -> None:
    """Queue a customer properties update: --customer registered=alice --prop plan=pro"""
    data = parse_json_object(as_json, "--json", CUSTOMER_KEYS)
    customer_ids = {
        **_object(data, "customer_ids"),
        **parse_pairs(customer, "--customer", json_values=False),
    }
    properties = {**_object(data, "properties"), **parse_pairs(props, "--prop", json_values=True)}
    validation.customer_command(customer_ids, properties)  # before the outbox is opened
    receipt = cli.agent().track_customer_update(customer_ids, properties)
    click.echo(
        f"queued customer update for {json.dumps(customer_ids, sort_keys=True)}"
        f" (receipt {receipt}: `tracker-agent receipt {receipt}`)"
    )


# ---------------------------------------------------------------------------- import


@click.command("import")
@click.argument("source", metavar="FILE|-", required=False)
@click.option(
    "--bundle",
    "bundle_path",
    metavar="FILE",
    help="Import an offline bundle made by `tracker-agent export` instead of JSON Lines.",
)
@click.option(
    "--force", is_flag=True, help="With --bundle: import a bundle made for another project."
)
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=DEFAULT_IMPORT_CHUNK_SIZE,
    show_default=True,
    help="Lines per transaction.",
)
@click.option(
    "--reimport",
    is_flag=True,
    help="Queue every line, even those imported before (the ledger would skip them).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check every line and count what would be queued; queue nothing.",
)
@pass_cli
def import_(
    cli: CliContext,
    source: str | None,
    bundle_path: str | None,
    force: bool,
    chunk_size: int,
    reimport: bool,
    dry_run: bool,
) -> None:
    """Queue commands from JSON Lines (FILE, or - for stdin); safe to run again.

    Each line is {"name": "customers/events"|"customers", "data": {...}}, or the data alone
    (an object with "event_type" is an event, else a customer update). Lines imported before
    (within import_ledger_days) are skipped, so after a failure run the same import again,
    or a fixed copy of the file: nothing is queued twice. Bad lines are reported (exit 1)
    and the good ones queued; a line over 8 MiB stops the import.

    With --bundle FILE: verify an offline bundle (tracker-agent export) and queue its
    commands with their original timestamps; a bundle imported before adds nothing.
    """
    from tracker_agent.importing import JsonLinesImport

    if (source is None) == (bundle_path is None):
        raise click.UsageError("give either FILE|- (JSON Lines) or --bundle FILE")
    if bundle_path is not None:
        import_bundle(cli, bundle_path, dry_run=dry_run, force=force)
        return
    assert source is not None
    cli.settings()  # bad settings are reported before any input is read
    # The outbox is opened at the first good line: input without one creates nothing.
    job = JsonLinesImport(
        lambda: cli.agent().tracking, chunk_size=chunk_size, reimport=reimport, dry_run=dry_run
    )
    with _open_input(source) as stream, _progress(_file_size(stream), "importing") as bar:
        try:
            job.run(stream, bar.update)
        except TrackerAgentError as exc:  # a full outbox or disk: what was queued stays
            if not job.report.queued:
                raise
            fail(f"{exc}; {job.report.queued} commands were queued before it. {_AGAIN}")
    _print_report(job.report)


_SKIPPED = "lines already queued are skipped"
_AGAIN = f"Run the same import again to go on: {_SKIPPED}"


def _print_report(report: ImportReport) -> None:
    verb = "would queue" if report.dry_run else "queued"
    skipped = f", skipped {report.skipped} imported before" if report.skipped else ""
    click.echo(f"{verb} {report.queued} commands{skipped}")
    for bad in report.bad:
        click.echo(f"{PROG}: {bad}", err=True)
    hidden = report.bad_count - len(report.bad)
    if hidden:
        click.echo(f"{PROG}: ... and {hidden} more bad lines", err=True)
    if report.stopped_at is not None:
        fail(f"{report.stopped_at}; the import stopped at this line: fix it and run the same "
             f"import again ({_SKIPPED})")  # fmt: skip
    if report.bad_count:
        which = "1 bad line was" if report.bad_count == 1 else f"{report.bad_count} bad lines were"
        fail(f"{which} not queued; fix and run the same import again ({_SKIPPED})")


@contextlib.contextmanager
def _open_input(source: str) -> Iterator[IO[bytes]]:
    """The import's input as bytes: lines are decoded one by one, so an error names its line."""
    if source == "-":
        yield sys.stdin.buffer
        return
    try:
        stream = open(source, "rb")  # noqa: SIM115 - closed by the `with` below; open errors first
    except OSError as exc:
        fail(f"cannot read {source}: {exc.strerror or exc}")
    with stream:
        yield stream


def _file_size(source: IO[bytes]) -> int | None:
    """Bytes in a regular file (for the progress bar); None for pipes and terminals."""
    try:
        if not source.seekable():
            return None
        size = source.seek(0, 2)
        source.seek(0)
        return size or None
    except (OSError, ValueError):
        return None


class _NoBar:
    pos = 0

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def update(self, steps: int) -> None:
        self.pos += steps


def _progress(length: int | None, label: str) -> Any:
    """click.progressbar on stderr when it is a terminal and the total is known."""
    if not length or not sys.stderr.isatty():
        return _NoBar()
    return click.progressbar(length=length, label=label, file=sys.stderr)


# ---------------------------------------------------------------------------- flush


@click.command()
@click.option(
    "--timeout",
    type=Seconds(high=MAX_FLUSH_TIMEOUT_SECONDS),
    default=None,
    metavar="SECONDS",
    help="Keep trying (waiting out backoff) for up to this long. Default: one pass, no waiting.",
)
@click.option(
    "--fail-on-dead/--no-fail-on-dead",
    default=True,
    show_default=True,
    help=f"Exit {EXIT_ALARM} when this flush dead-lettered a command (refused by the server, "
    "or out of attempts).",
)
@pass_cli
def flush(cli: CliContext, timeout: float | None, fail_on_dead: bool) -> None:
    """Deliver the queue now.

    Exit 0 when everything was delivered, 1 when commands remain (paused, timed out, waiting
    for a retry), 2 when everything left the queue but some were dead-lettered
    (`tracker-agent dead-letters list` shows why; --no-fail-on-dead exits 0 then).
    """
    agent = cli.agent()
    total = agent.stats()["pending"]
    with _progress(total or None, "delivering") as bar:

        def progress(done: int, _total: int) -> None:
            if done > bar.pos:
                bar.update(done - bar.pos)

        result = agent.flush(timeout=timeout, progress=progress)
    click.echo(
        f"delivered {result.delivered}, dead-lettered {result.dead_lettered}, "
        f"remaining {result.remaining}"
    )
    if result.remaining:
        fail(f"{result.remaining} commands remain ({why_flush_stopped(result, agent.stats())})")
    if result.dead_lettered and fail_on_dead:
        click.echo(
            f"{PROG}: alarm: {result.dead_lettered} commands were dead-lettered "
            f"(see `{PROG} dead-letters list`)",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_ALARM)


def why_flush_stopped(result: Any, stats: dict[str, Any], now: float | None = None) -> str:
    """Why a flush (a FlushResult) ended with commands left, from the outbox's `stats`: the
    pause, the time limit, the error that made delivery back off and when it tries again,
    rows another drainer holds, or a backlog still going out when time ran out."""
    import time

    from tracker_agent.cli.status import human_duration

    if result.paused_reason:
        return f"delivery is paused: {result.paused_reason}"
    now = time.time() if now is None else now
    reasons = ["timed out"] if result.timed_out else []
    if result.last_error:
        reasons.append(f"last error: {result.last_error}")
    next_attempt = stats.get("next_attempt_at")
    if next_attempt is not None and next_attempt > now:
        wait = next_attempt - now
        reasons.append(f"next attempt in {human_duration(wait) if wait >= 1 else 'under 1s'}")
    if stats.get("in_flight"):
        reasons.append(f"{stats['in_flight']} in flight with another drainer")
    if result.timed_out and len(reasons) == 1:
        reasons.append("still delivering when time ran out")
    return "; ".join(reasons) or "waiting for a retry"
