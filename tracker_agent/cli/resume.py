"""`tracker-agent resume`: after fixing the credentials of a paused outbox, ask for a probe now.

Needs no credentials itself: it marks the next probe due at once in the outbox, and whichever
drainer runs next (the daemon within a second) sends it. The pause lifts the moment the API
accepts that batch. `check` does the same after it has verified the credentials.
"""

from __future__ import annotations

import click

from tracker_agent.cli.context import CliContext, fail, pass_cli


def probe_paused_outbox(url: str) -> str | None:
    """Make the next probe of a paused outbox due at once; its pause reason, or None when it
    is not paused. The outbox must exist (this never creates one)."""
    from tracker_agent.outbox.engine import open_outbox
    from tracker_agent.outbox.store import OutboxStore

    engine = open_outbox(url)
    store = OutboxStore(engine, max_rows=1, max_bytes=1)  # no enqueue: the bounds are unused
    try:
        return store.probe_now()
    finally:
        store.close()
        engine.dispose()


def outbox_exists(url: str) -> bool:
    """False for an SQLite file that is not there; True for a PostgreSQL URL (its database
    is the server's to have; opening it says if it is not there)."""
    import os

    from tracker_agent.outbox.backend import POSTGRESQL, backend_name
    from tracker_agent.outbox.files import sqlite_path

    return backend_name(url) == POSTGRESQL or os.path.exists(sqlite_path(url))


@click.command()
@pass_cli
def resume(cli: CliContext) -> None:
    """Probe a paused delivery now (after fixing its credentials)."""
    from tracker_agent.outbox.files import sqlite_path

    url = cli.database_url()
    if not outbox_exists(url):
        fail(f"no outbox at {sqlite_path(url)}")
    reason = probe_paused_outbox(url)
    if reason:
        click.echo(f"paused ({reason}): the next drain pass probes the API now")
    else:
        click.echo("delivery is not paused")
