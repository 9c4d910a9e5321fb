"""Shared fixtures: a FakeExponea per test module (reset before each test) and a client on it."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tracker_agent import TrackerAgent
from tracker_agent.cli import cli
from tracker_agent.client import Exponea
from tracker_agent.testing import FakeExponea

TOKEN = "test-project"
USERNAME = "key-id"
PASSWORD = "secret"
PUBLIC_KEY = "public-key"
TEST_READ_TIMEOUT_SECONDS = 2.0


POLL_SECONDS = 0.02
AGENT_DRAIN_INTERVAL_SECONDS = 0.1  # tests wait for the background drain: keep its ticks short
AGENT_REQUEST_TIMEOUT_SECONDS = 2.0


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `predicate` until it is true (True) or `timeout` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def sqlite_url(path: Path | str) -> str:
    """The outbox URL of a file path ('%' and '?' escaped); URLs pass through unchanged."""
    text = str(path)
    if "://" in text:
        return text
    return "sqlite:///" + text.replace("%", "%25").replace("?", "%3F")


#: A `tracker-agent` command's retries in tests: fast, so a retrying command ends soon.
FAST_BACKOFF_ENV = {"TRACKER_AGENT_BACKOFF_BASE": "0.05", "TRACKER_AGENT_BACKOFF_CAP": "0.2"}
Invoke = Callable[..., Result]


def cli_env(fake: FakeExponea, database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a `tracker-agent` command aimed at `fake` and the outbox at
    `database_url` (request timeout 5 s); `extra` adds or overrides variables."""
    return {
        "TRACKER_AGENT_PROJECT_TOKEN": fake.project_token,
        "TRACKER_AGENT_USERNAME": fake.username,
        "TRACKER_AGENT_PASSWORD": fake.password,
        "TRACKER_AGENT_URL": fake.url,
        "TRACKER_AGENT_DATABASE_URL": database_url,
        "TRACKER_AGENT_REQUEST_TIMEOUT": "5",
        **extra,
    }


def cli_invoker(env: dict[str, str]) -> Invoke:
    """invoke(*args, input=None, **extra_env): the `tracker-agent` command in-process (click's
    CliRunner) with `env` plus `extra_env` (a None value unsets a variable); exceptions are
    not caught, so a traceback fails the test."""

    def invoke(*args: str, input: str | bytes | None = None, **extra_env: str | None) -> Result:
        return CliRunner().invoke(
            cli, list(args), env={**env, **extra_env}, input=input, catch_exceptions=False
        )

    return invoke


def make_agent(
    fake: FakeExponea, database: Path | str, *, project: str | None = None, **settings: Any
) -> TrackerAgent:
    """A TrackerAgent on `fake` with the outbox at `database` (a path or an SQLite URL).

    No background drain unless the test asks (drain=True, or start()): most tests deliver
    with flush() or look at what stays queued."""
    settings.setdefault("drain", False)
    settings.setdefault("drain_interval", AGENT_DRAIN_INTERVAL_SECONDS)
    settings.setdefault("request_timeout", AGENT_REQUEST_TIMEOUT_SECONDS)
    return TrackerAgent(
        project or fake.project_token,
        username=fake.username,
        password=fake.password,
        url=fake.url,
        database_url=sqlite_url(database),
        **settings,
    )


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeExponea]:
    """One FakeExponea for the whole test module (starting one per test costs time)."""
    with FakeExponea(
        project_token=TOKEN, username=USERNAME, password=PASSWORD, public_key=PUBLIC_KEY
    ) as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeExponea) -> FakeExponea:
    """The module's FakeExponea with empty state, no faults and an empty request log."""
    fake_server.reset()
    return fake_server


@pytest.fixture
def sleeps() -> list[float]:
    """Delays the `exponea` client asked to sleep, recorded instead of slept."""
    return []


@pytest.fixture
def exponea(fake: FakeExponea, sleeps: list[float]) -> Iterator[Exponea]:
    """A private-key client on `fake` whose retry sleeps go to `sleeps`."""
    with Exponea(
        TOKEN,
        username=USERNAME,
        password=PASSWORD,
        url=fake.url,
        request_timeout=TEST_READ_TIMEOUT_SECONDS,
        sleep=sleeps.append,
    ) as client:
        yield client


@pytest.fixture
def isolated_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """For CLI tests: no /etc config file, no TRACKER_AGENT_* or systemd variables of the
    machine, and the root logger (the CLI installs a stderr handler) restored afterwards."""
    from tracker_agent.cli import logs
    from tracker_agent.config import loading as config_loading

    monkeypatch.setattr(config_loading, "DEFAULT_CONFIG_FILE", str(tmp_path / "absent.toml"))
    for name in list(os.environ):
        if name.startswith("TRACKER_AGENT_") or name in ("NOTIFY_SOCKET", "CREDENTIALS_DIRECTORY"):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    quiet = {name: logging.getLogger(name).level for name in logs.QUIET_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)


@pytest.fixture
def make_read_only() -> Iterator[Callable[[Path], None]]:
    """Make a path unwritable even for root: the immutable flag (as root) or chmod (others)."""
    changed: list[Path] = []

    def make(path: Path) -> None:
        if os.geteuid() != 0:
            path.chmod(0o555 if path.is_dir() else 0o444)
        else:
            result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
            if result.returncode != 0:
                pytest.skip(f"root without chattr +i here: {result.stderr!r}")
        changed.append(path)

    yield make
    for path in changed:  # undo first, or tmp_path cannot be cleaned up
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o755 if path.is_dir() else 0o644)


# -- PostgreSQL: one throwaway server per session, a fresh database per test --------------------

#: The backends the contract suites run against (tests ask for `database_url`).
BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A PostgreSQL server on 127.0.0.1 for the whole session (started on first use). Without
    the server binaries or psycopg the PostgreSQL tests skip, saying why; under CI=true they
    fail instead (CI installs both)."""
    import shutil
    import tempfile

    from tracker_agent.testing.postgres import PostgresUnavailable, TemporaryPostgres

    # Not under tmp_path_factory: its base folder is 0700 root's, which the server's own user
    # could not enter when the tests run as root.
    folder = tempfile.mkdtemp(prefix="tracker-agent-pg-")
    try:
        import psycopg  # noqa: F401

        server = TemporaryPostgres(folder).start()
    except (ImportError, PostgresUnavailable) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        reason = f"PostgreSQL tests need a server and psycopg 3: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


_databases = iter(range(1, 1_000_000))


def fresh_postgres_url(server: Any) -> str:
    """A new empty database on the session's server."""
    return str(server.create_database(f"t{next(_databases)}"))


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The outbox URL of a fresh outbox: an SQLite file in tmp_path (the default), or a new
    database on the session's PostgreSQL server for tests marked @both_backends."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return sqlite_url(tmp_path / "outbox.db")
    return fresh_postgres_url(request.getfixturevalue("postgres_server"))


#: Runs a test (that uses `database_url`, directly or through another fixture) on both.
both_backends = pytest.mark.parametrize("database_url", BACKENDS, indirect=True)


def is_postgresql(url: str) -> bool:
    return url.startswith("postgresql")
