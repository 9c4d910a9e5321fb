"""Setup and diagnosis: `migrate` the outbox, `check` the API and credentials, show `config`."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import click

from tracker_agent.cli import options
from tracker_agent.cli.context import CliContext, describe, fail, pass_cli
from tracker_agent.config import FIELD_NAMES, FILE_FIELDS, explain_settings

#: Clock skew above which `check` warns: event timestamps come from this host's clock.
SKEW_WARN_SECONDS = 2.0
#: The customer id `check` looks up to prove the private key can read (it should not exist).
PROBE_ID_PREFIX = "tracker-agent-check-"
HTTP_SERVER_ERROR = 500


@click.command()
@click.option(
    "--repair",
    is_flag=True,
    help="Also recount the queue and flag each customer's oldest command again (SQLite: "
    "after rows were deleted from the outbox by hand).",
)
@pass_cli
def migrate(cli: CliContext, repair: bool) -> None:
    """Create the outbox or bring its schema to the current version."""
    from tracker_agent.outbox.backend import POSTGRESQL, backend_name
    from tracker_agent.outbox.engine import current_revision, open_outbox
    from tracker_agent.outbox.files import sqlite_path
    from tracker_agent.outbox.revisions import HEAD_REVISION

    url = cli.database_url()
    if backend_name(url) == POSTGRESQL:
        from tracker_agent.outbox.pg_engine import create_pg_engine, pg_revision, shown_url

        path = shown_url(url)
        probe = create_pg_engine(url)
        try:
            before = pg_revision(probe)
        finally:
            probe.dispose()
    else:
        path = sqlite_path(url)
        before = current_revision(path) if _exists(path) else None
    engine = open_outbox(url)
    try:
        if before == HEAD_REVISION:
            click.echo(f"{path}: already at revision {HEAD_REVISION}")
        else:
            click.echo(f"{path}: migrated from {before or 'nothing'} to {HEAD_REVISION}")
        if repair:
            click.echo(f"{path}: {_repair(engine, backend_name(url) == POSTGRESQL)}")
    finally:
        engine.dispose()


def _repair(engine: Any, postgresql: bool) -> str:
    """Run engine.repair (SQLite's write lock held); what it found, in words."""
    if postgresql:
        return "nothing to repair: PostgreSQL's triggers keep the counters and flags"
    from tracker_agent.outbox.engine import repair as repair_outbox

    found = repair_outbox(engine)
    if found.exact:
        return f"the queue's counters and flags were exact ({found.actual[0]:,} commands)"
    (rows, size), (was_rows, was_size) = found.actual, found.counted
    return (
        f"recounted {rows:,} commands, {size:,} bytes (counted: {was_rows:,}, "
        f"{was_size:,}); moved {found.flags_fixed:,} queue flags"
    )


@click.command("clear-warning")
@pass_cli
def clear_warning(cli: CliContext) -> None:
    """Acknowledge the outbox's warning (a lost -wal file) so that status stops showing it."""
    from tracker_agent.outbox.backend import POSTGRESQL, backend_name
    from tracker_agent.outbox.engine import clear_warning as clear
    from tracker_agent.outbox.engine import open_outbox
    from tracker_agent.outbox.files import sqlite_path

    url = cli.database_url()
    if backend_name(url) == POSTGRESQL:
        from tracker_agent.outbox.pg_engine import shown_url
        from tracker_agent.outbox.store import OutboxStore

        path = shown_url(url)
        engine = open_outbox(url)
        store = OutboxStore(engine, max_rows=1, max_bytes=1)  # no enqueue: bounds unused
        try:
            previous = store.clear_warning()
        finally:
            store.close()
            engine.dispose()
    else:
        path = sqlite_path(url)
        if not _exists(path):
            fail(f"no outbox at {path}")
        engine = open_outbox(url)
        try:
            previous = clear(engine, path)
        finally:
            engine.dispose()
    click.echo(f"{path}: cleared the warning: {previous}" if previous else f"{path}: no warning")


def _exists(path: str) -> bool:
    import os

    return os.path.exists(path)


_MARKS = {True: ("ok  ", "green"), False: ("FAIL", "red"), None: ("warn", "yellow")}


def _step(name: str, ok: bool | None, detail: str) -> None:
    """One line of the report; ok=None is a warning that does not fail the check."""
    text, colour = _MARKS[ok]
    click.echo(f"{click.style(text, fg=colour)} {name}: {detail}")


@click.command()
@pass_cli
def check(cli: CliContext) -> None:
    """Verify connectivity, project token and credentials against the API; show clock skew.

    system/time answers without any credentials, so it proves only that the API is reachable;
    the token and key are proved by a batch (which needs them) that asks only for the time.
    """
    from tracker_agent.exceptions import APIException, AuthenticationError, PermissionDeniedError

    settings = cli.settings()
    client = cli.client()
    _check_time(settings.url, client)
    if not (settings.username or settings.public_key):
        _step("credentials", False, "none configured (username/password or public_key)")
        fail("no credentials to check")
    auth = "public key" if settings.public_key else "private key"  # as the client chooses
    try:
        answer = client.tracking.batch_commands([{"name": "system/time"}])
    except (AuthenticationError, PermissionDeniedError) as exc:
        _step("project token and credentials", False, describe(exc))
        fail(f"the API refused project {settings.project_token!r} with this {auth}")
    except APIException as exc:
        _step("project token and credentials", False, describe(exc))
        fail("could not verify the credentials")
    if answer and answer[0] is False:
        _step("project token and credentials", False, "the batch command was refused")
        fail("could not verify the credentials")
    _step("project token and credentials", True, f"tracking accepted ({auth})")
    if settings.username:
        _check_reads(client)
    _probe_paused_delivery(cli)


def _probe_paused_delivery(cli: CliContext) -> None:
    """The credentials work: a paused outbox (if there is one) is probed on the next pass
    instead of at its stored probe time. Informational: `check` never fails for the outbox."""
    from tracker_agent.cli.resume import outbox_exists, probe_paused_outbox
    from tracker_agent.exceptions import TrackerAgentError

    try:
        url = cli.database_url()
        reason = probe_paused_outbox(url) if outbox_exists(url) else None
    except TrackerAgentError as exc:
        _step("delivery", None, f"could not look at the outbox: {describe(exc)}")
        return
    if reason:
        _step("delivery", True, f"was paused ({reason}); the next drain pass probes the API now")


def _check_time(url: str, client: Any) -> None:
    """Connectivity (any HTTP answer proves it) and the clock skew against the server."""
    from tracker_agent.exceptions import APIException

    started = time.time()
    try:
        server_time = float(client.tracking.get_system_time())
    except APIException as exc:
        if exc.status_code is None or exc.status_code >= HTTP_SERVER_ERROR:
            _step("connectivity", False, f"{url}: {exc}")
            fail("the API is not reachable")
        # An answer, even a refusal (a wrong project token), proves the network path.
        _step("connectivity", True, f"{url} answered HTTP {exc.status_code}")
        return
    finished = time.time()
    skew = server_time - (started + finished) / 2
    _step("connectivity", True, f"{url} answered in {1000 * (finished - started):.0f} ms")
    side = "behind" if skew > 0 else "ahead of"
    ok = abs(skew) <= SKEW_WARN_SECONDS or None
    _step("clock", ok, f"this host is {abs(skew):.3f} s {side} the server")
    if abs(skew) > SKEW_WARN_SECONDS:
        click.echo(
            f"warning: clock skew {skew:+.3f} s; event timestamps come from this host's clock "
            "(enable NTP)",
            err=True,
        )


def _check_reads(client: Any) -> None:
    """Informational: whether the private key may read customers (tracking does not need it)."""
    from tracker_agent.exceptions import APIException, NotFoundError, PermissionDeniedError

    probe = {"registered": PROBE_ID_PREFIX + uuid.uuid4().hex}
    try:
        client.customer.get_customer(probe)
    except NotFoundError:
        pass  # the key was accepted; the made-up customer does not exist
    except PermissionDeniedError:
        _step("data API", True, "the key may not read customers (not needed for tracking)")
        return
    except APIException as exc:
        _step("data API", False, describe(exc))
        return
    _step("data API", True, "the key can read customers")


@click.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_cli
def config_(cli: CliContext, as_json: bool) -> None:
    """Print the effective settings (secrets redacted) and where each value came from.

    A secret that is not set is shown with the places it may come from. When the settings
    cannot be loaded, the report is a guide to where secrets come from (the error itself is
    the one line on stderr).
    """
    from tracker_agent.exceptions import ConfigError

    try:
        settings, sources = explain_settings(
            config_file=cli.config_file, env=cli.env, overrides=cli.overrides
        )
    except ConfigError as exc:
        if not as_json:
            for line in options.secret_sources_guide(cli.env):
                click.echo(line)
        fail(describe(exc))
    shown = settings.redacted()
    if as_json:
        click.echo(json.dumps(shown, indent=2, sort_keys=True))
        return
    width = max(len(name) for name in FIELD_NAMES)
    for name in FIELD_NAMES:
        value = "none" if shown[name] is None else json.dumps(shown[name])
        where = sources.get(name, "default")
        if name in FILE_FIELDS and not shown[name] and name not in sources:
            where = f"not set; from {options.secret_sources(name)}"
        click.echo(f"{name:<{width}} = {value:<30} # {where}")
