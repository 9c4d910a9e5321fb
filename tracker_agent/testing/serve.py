"""`python -m tracker_agent.testing`: FakeExponea as a process, to try the daemon without an
account. Prints its URL, the test credentials and the environment that points tracker-agent
at it, and serves until SIGINT or SIGTERM (then exits 0).
"""

from __future__ import annotations

import shlex
import signal
import threading
from collections.abc import Iterator
from types import FrameType

import click

from tracker_agent.config import env_name
from tracker_agent.testing.fake import (
    DEFAULT_HOST,
    DEFAULT_PASSWORD,
    DEFAULT_PROJECT_TOKEN,
    DEFAULT_PUBLIC_KEY,
    DEFAULT_USERNAME,
    FakeExponea,
)

PROG = "python -m tracker_agent.testing"
EXIT_ERROR = 1
#: A separate outbox for the fake: an outbox belongs to one project token.
FAKE_OUTBOX_URL = "sqlite:///$PWD/fake-exponea-outbox.db"
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def environment(fake: FakeExponea) -> Iterator[tuple[str, str]]:
    """(variable, value) pairs that point tracker-agent at `fake`."""
    yield env_name("url"), fake.url
    yield env_name("project_token"), fake.project_token
    yield env_name("username"), fake.username
    yield env_name("password"), fake.password


def describe(fake: FakeExponea) -> list[str]:
    """What an operator needs to point tracker-agent at `fake`."""
    lines = [
        f"FakeExponea (a test server; nothing leaves this machine) on {fake.url}",
        f"  project token  {fake.project_token}",
        f"  username       {fake.username}",
        f"  password       {fake.password}",
        f"  public key     {fake.public_key}",
        "Point tracker-agent at it (with its own outbox: an outbox belongs to one project):",
    ]
    lines += [f"  export {name}={shlex.quote(value)}" for name, value in environment(fake)]
    lines.append(f'  export {env_name("database_url")}="{FAKE_OUTBOX_URL}"')
    if not _loopback(fake.host):
        lines.append(f"  export {env_name('allow_http')}=true   # plain http:// beyond loopback")
    lines.append("Serving until Ctrl-C or SIGTERM.")
    return lines


def _loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="IPv4 address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    help="TCP port [default: a free one, printed at start].",
)
@click.option("--project-token", default=DEFAULT_PROJECT_TOKEN, show_default=True)
@click.option("--username", default=DEFAULT_USERNAME, show_default=True)
@click.option(
    "--password",
    default=DEFAULT_PASSWORD,
    show_default=True,
    help="The fake's test password (not a secret: it guards nothing real).",
)
@click.option("--public-key", default=DEFAULT_PUBLIC_KEY, show_default=True)
def serve(
    host: str, port: int, project_token: str, username: str, password: str, public_key: str
) -> None:
    """Serve the fake Exponea API (tracker_agent.testing.FakeExponea) until SIGINT or SIGTERM.

    It keeps what it is sent in memory (gone when it stops) and answers like the real API.
    """
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for signum in _STOP_SIGNALS:
        signal.signal(signum, on_signal)
    fake = FakeExponea(
        project_token=project_token,
        username=username,
        password=password,
        public_key=public_key,
        host=host,
        port=port,
    )
    try:
        fake.start()
    except OSError as exc:
        click.echo(
            f"{PROG}: error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True
        )
        raise click.exceptions.Exit(EXIT_ERROR) from None
    try:
        for line in describe(fake):
            click.echo(line)
        while not stop.wait(timeout=None):
            pass
    finally:
        fake.stop()


def main() -> None:
    serve.main(prog_name=PROG)
