"""`tracker-agent resume`: after fixing the credentials of a paused outbox, ask for a probe now.

Needs no credentials itself: it marks the next probe due at once in the outbox, and whichever
drainer runs next (the daemon within a second) sends it. The pause lifts the moment the API
accepts that batch.
"""

from __future__ import annotations

import click

from tracker_agent.cli.context import CliContext, fail, pass_cli


@click.command()
@pass_cli
def resume(cli: CliContext) -> None:
    """Probe a paused delivery now (after fixing its credentials)."""
    import os

    from tracker_agent.outbox.backend import POSTGRESQL, backend_name
    from tracker_agent.outbox.engine import open_outbox
    from tracker_agent.outbox.files import sqlite_path
    from tracker_agent.outbox.store import OutboxStore

    url = cli.database_url()
    if backend_name(url) != POSTGRESQL and not os.path.exists(sqlite_path(url)):
        fail(f"no outbox at {sqlite_path(url)}")
    engine = open_outbox(url)
    store = OutboxStore(engine, max_rows=1, max_bytes=1)  # no enqueue: the bounds are unused
    try:
        reason = store.probe_now()
    finally:
        store.close()
        engine.dispose()
    if reason:
        click.echo(f"paused ({reason}): the next drain pass probes the API now")
    else:
        click.echo("delivery is not paused")
