"""Putting commands in the queue and pushing them out: `track`, `import` and `flush`."""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Iterator
from typing import IO, Any

import click

from tracker_agent import validation
from tracker_agent.cli.context import EXIT_ALARM, PROG, CliContext, Seconds, fail, pass_cli
from tracker_agent.exceptions import ValidationError

DEFAULT_CHUNK_SIZE = 500  # commands per transaction in `import`
#: A longer line in `import` is refused (a command is under 800 KB as JSON, but a line may
#: spell it with \uXXXX escapes). Without a limit a file with no newline is read to exhaustion.
MAX_IMPORT_LINE_BYTES = 8 * 1024 * 1024
#: `flush --timeout` at most a week: beyond that it is a typo (ms for s).
MAX_FLUSH_TIMEOUT_SECONDS = 7 * 86_400
EVENT_COMMAND = "customers/events"
CUSTOMER_COMMAND = "customers"
EVENT_KEYS = frozenset({"customer_ids", "event_type", "properties", "timestamp"})
CUSTOMER_KEYS = frozenset({"customer_ids", "properties"})
_COMMAND_INDEX = re.compile(r"^commands\[(\d+)\]")


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


def line_to_command(line: str, field: str = "line") -> dict[str, Any]:
    """A JSON Lines record: a raw {"name", "data"} command, an event, or a customer update.

    Raises ValidationError naming `field` for JSON nested too deeply, ValueError otherwise."""
    record = validation.loads(line, field)
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "name" in record:
        return record
    name = EVENT_COMMAND if "event_type" in record else CUSTOMER_COMMAND
    return {"name": name, "data": record}


Chunk = tuple[list[int], list[dict[str, Any]], int]


def read_lines(stream: IO[bytes]) -> Iterator[tuple[int, str, int]]:
    """(line number, text, bytes read) per line; a line that is too long or not UTF-8 raises
    ValidationError naming it."""
    number = 0
    while True:
        raw = stream.readline(MAX_IMPORT_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_IMPORT_LINE_BYTES:
            raise ValidationError(
                f"line {number}", f"longer than {MAX_IMPORT_LINE_BYTES} bytes; is it JSON Lines?"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValidationError(
                f"line {number}", f"not UTF-8 text (byte {exc.start + 1} of the line)"
            ) from None
        yield number, text, len(raw)


def read_chunks(stream: IO[bytes], chunk_size: int) -> Iterator[Chunk]:
    """(line numbers, commands, bytes read) per chunk; a bad line raises ValueError naming it."""
    numbers: list[int] = []
    commands: list[dict[str, Any]] = []
    consumed = 0
    for number, line, size in read_lines(stream):
        consumed += size
        if not line.strip():
            continue
        try:
            commands.append(line_to_command(line, f"line {number}"))
        except ValidationError:
            raise
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        numbers.append(number)
        if len(commands) >= chunk_size:
            yield numbers, commands, consumed
            numbers, commands, consumed = [], [], 0
    if commands:
        yield numbers, commands, consumed


def _line_of(exc: Exception, numbers: list[int]) -> str:
    match = _COMMAND_INDEX.match(getattr(exc, "field", "") or "")
    if match and int(match.group(1)) < len(numbers):
        return f"line {numbers[int(match.group(1))]}"
    return f"lines {numbers[0]}-{numbers[-1]}"


@click.command("import")
@click.argument("source", metavar="FILE|-")
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=DEFAULT_CHUNK_SIZE,
    show_default=True,
    help="Commands per transaction; a failed chunk is not written at all.",
)
@pass_cli
def import_(cli: CliContext, source: str, chunk_size: int) -> None:
    """Queue commands from JSON Lines (FILE, or - for stdin).

    Each line is {"name": "customers/events"|"customers", "data": {...}}, or the data alone
    (an object with "event_type" is an event, else a customer update). Chunks before a bad
    line stay queued; nothing from the chunk holding it is written.
    """
    cli.settings()  # bad settings are reported before any input is read
    queued = 0
    with _open_input(source) as stream, _progress(_file_size(stream), "importing") as bar:
        try:
            # The outbox is opened at the first parsed chunk: unreadable input creates nothing.
            for numbers, commands, consumed in read_chunks(stream, chunk_size):
                try:
                    queued += cli.agent().enqueue_many(commands)
                except ValidationError as exc:
                    raise ValueError(f"{_line_of(exc, numbers)}: {exc}") from exc
                bar.update(consumed)
        except ValueError as exc:  # ValidationError included
            before = f"; the {queued} commands before its chunk are queued" if queued else ""
            fail(f"{exc}{before}")
    click.echo(f"queued {queued} commands")


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
