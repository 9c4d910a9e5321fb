"""`tracker-agent demo`: the daemon's drain against the bundled fake API, no account needed.

Starts FakeExponea on 127.0.0.1, queues sample events into a fresh demo outbox (never the
real one, so no demo event can ever reach a real project), makes the fake fail a few requests so
the backoff shows, runs the daemon loop until everything is delivered, and prints the status.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Mapping

import click

from tracker_agent.cli.context import CliContext, fail, pass_cli
from tracker_agent.cli.status import status_rows

DEMO_DB_FILENAME = "demo.db"
#: How long the demo waits for delivery before it gives up and says so.
DEMO_TIMEOUT_SECONDS = 60.0
POLL_SECONDS = 0.1


def demo_database_url(env: Mapping[str, str]) -> str:
    """The demo outbox: demo.db beside the default outbox (state directory)."""
    from tracker_agent.outbox.files import default_database_url, sqlite_path

    default_path = sqlite_path(default_database_url(env))
    return "sqlite:///" + os.path.join(os.path.dirname(default_path), DEMO_DB_FILENAME)


@click.command()
@click.option("--events", default=200, show_default=True, help="How many events to queue.")
@click.option(
    "--failures",
    default=2,
    show_default=True,
    help="How many requests the fake API fails with 503 first (to show the backoff).",
)
@pass_cli
def demo(cli: CliContext, events: int, failures: int) -> None:
    """Try it without an Exponea account: queue events, deliver them to a fake API, show status.

    Uses its own outbox (demo.db in the state directory, made afresh each time), never the
    configured one. To point `tracker-agent run` itself at a fake API, start one with
    `python -m tracker_agent.testing`.
    """
    from tracker_agent.agent import TrackerAgent
    from tracker_agent.config import Settings
    from tracker_agent.testing import FakeExponea

    if events < 1:
        fail("--events must be at least 1")
    database_url = demo_database_url(cli.env)
    _start_afresh(database_url)
    with FakeExponea() as fake:
        settings = Settings(
            project_token=fake.project_token,
            username=fake.username,
            password=fake.password,
            url=fake.url,
            database_url=database_url,
            drain_interval=0.2,
            backoff_base=0.5,
            backoff_cap=2.0,
            drain=False,  # agent.run() below is the daemon's loop: it starts the drain
        )
        agent = TrackerAgent.from_settings(settings)
        click.echo(f"fake Exponea API on {fake.url}; outbox {database_url}")
        for n in range(events):
            customer = {"registered": f"demo-{n % 10}"}
            agent.tracking.add_event(customer, "purchase", {"price": round(9.5 + n, 2), "n": n})
        agent.tracking.update_customer_properties({"registered": "demo-0"}, {"first_name": "Ann"})
        click.echo(f"queued {events + 1} commands; the fake fails the first {failures} requests")
        fake.fail_next(failures, status=503, retry_after=1)
        stop = threading.Event()
        watcher = threading.Thread(target=_stop_when_drained, args=(agent, stop), daemon=True)
        watcher.start()
        agent.run(stop)  # the daemon's loop; closes the agent when stop is set
        watcher.join()
        stats = _final_stats(database_url)
        received = len(fake.events) + len(fake.customer_updates)
    width = max(len(label) for label, _ in stats)
    for label, value in stats:
        click.echo(f"{label:<{width}}  {value}")
    click.echo(f"the fake API received {received} commands")
    if received < events + 1:
        fail("not everything was delivered within the demo's time limit")


def _start_afresh(database_url: str) -> None:
    """Remove the previous demo's outbox (and its -wal, -shm, -rate): its counters and any
    commands an interrupted demo left would make this run's report disagree with what the
    fake received. The file is the demo's own; the configured outbox is never touched."""
    from tracker_agent.outbox.files import sqlite_path

    path = sqlite_path(database_url)
    for suffix in ("", "-wal", "-shm", "-rate", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)


def _stop_when_drained(agent: object, stop: threading.Event) -> None:
    deadline = time.monotonic() + DEMO_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        stats = agent.stats()  # type: ignore[attr-defined]
        if stats["pending"] == 0 and stats["in_flight"] == 0:
            break
        time.sleep(POLL_SECONDS)
    stop.set()


def _final_stats(database_url: str) -> list[tuple[str, str]]:
    from tracker_agent.outbox.files import sqlite_path
    from tracker_agent.outbox.stats import read_status

    path = sqlite_path(database_url)
    now = time.time()
    return status_rows({**read_status(path, now=now), "database": path}, now)
