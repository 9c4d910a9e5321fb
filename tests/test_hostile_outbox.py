"""The outbox file against a hostile host: permissions, a second project, a lost -wal, odd paths
(a FIFO, '#' in the name), foreign WAL databases, and flush() after stop().

Real SQLite files in tmp_path; a real FakeExponea on 127.0.0.1 where something is delivered.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_agent, sqlite_url

from tracker_agent import ConfigError, NotAnOutboxError, OutboxError
from tracker_agent.cli import cli
from tracker_agent.outbox.stats import read_status
from tracker_agent.testing import FakeExponea

ROOT = Path(__file__).resolve().parent.parent
PROCESS_TIMEOUT_SECONDS = 30
HANG_TIMEOUT_SECONDS = 10
OTHER_PROJECT = "another-project"


@pytest.fixture
def fake() -> Iterator[FakeExponea]:
    with FakeExponea() as server:
        yield server


@pytest.fixture(autouse=True)
def _isolated(isolated_cli: None) -> None:
    """No config file or environment of the machine leaks into the commands run here."""


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# -- permissions ---------------------------------------------------------------------------


def test_outbox_files_are_created_private_whatever_the_umask(fake, tmp_path, umask_022):
    db = tmp_path / "state" / "outbox.db"
    with make_agent(fake, db) as agent:
        agent.tracking.add_event({"registered": "ann"}, "purchase")
        files = {p.name: mode(p) for p in db.parent.iterdir()}
        assert files == {
            "outbox.db": 0o600, "outbox.db-wal": 0o600, "outbox.db-shm": 0o600,
            "outbox.db-rate": 0o600,  # the host-wide rate limit's slot file
        }  # fmt: skip
        assert mode(db.parent) == 0o700


def test_an_existing_world_readable_outbox_loses_the_bits_for_others(fake, tmp_path, umask_022):
    db = tmp_path / "outbox.db"
    with make_agent(fake, db) as agent:
        agent.tracking.add_event({"registered": "ann"}, "purchase")
    db.chmod(0o644)
    with make_agent(fake, db) as agent:
        assert mode(db) == 0o640
        assert agent.stats()["pending"] == 1


# -- one outbox, one project ---------------------------------------------------------------


def test_a_second_project_is_refused_at_open_and_gets_nothing(fake, tmp_path):
    db = tmp_path / "outbox.db"
    with make_agent(fake, db) as agent:
        for n in range(10):
            agent.tracking.add_event({"registered": f"c{n}"}, "purchase")
        with pytest.raises(ConfigError, match="belongs to project 'test-project'"):
            make_agent(fake, db, project=OTHER_PROJECT)  # while the first is open
    with pytest.raises(ConfigError, match="one outbox serves one project"):
        make_agent(fake, db, project=OTHER_PROJECT)  # and after it closed
    assert fake.requests == []
    with make_agent(fake, db) as agent:
        assert agent.stats()["project"] == fake.project_token
        assert agent.flush(timeout=10).delivered == 10


def test_an_outbox_made_before_projects_were_recorded_is_adopted_by_its_first_agent(fake, tmp_path):
    db = tmp_path / "outbox.db"
    with make_agent(fake, db) as agent:
        agent.tracking.add_event({"registered": "ann"}, "purchase")
    with sqlite3.connect(db) as conn:  # as an older tracker-agent left it
        conn.execute("DELETE FROM agent_state WHERE key = 'project_token'")
    with make_agent(fake, db) as agent:
        assert agent.stats()["project"] == fake.project_token
        assert agent.flush(timeout=10).delivered == 1


def test_rows_are_not_delivered_if_the_outbox_changes_project_under_an_open_agent(fake, tmp_path):
    db = tmp_path / "outbox.db"
    with make_agent(fake, db) as agent:
        agent.tracking.add_event({"registered": "ann"}, "purchase")
        with sqlite3.connect(db) as conn:
            conn.execute(
                "UPDATE agent_state SET value = ? WHERE key = 'project_token'",
                (json.dumps(OTHER_PROJECT),),
            )
        with pytest.raises(OutboxError, match="now belongs to project 'another-project'"):
            agent.flush(timeout=1)
        assert agent.stats()["pending"] == 1
    assert [r for r in fake.requests if r.path.endswith("/batch")] == []


# -- flush after stop ------------------------------------------------------------------------


def test_flush_after_stop_delivers(fake, tmp_path):
    with make_agent(fake, tmp_path / "outbox.db") as agent:
        agent.start()
        assert agent.stop() is True
        for n in range(5):
            agent.tracking.add_event({"registered": f"c{n}"}, "purchase")
        result = agent.flush(timeout=10)
        assert (result.delivered, result.remaining) == (5, 0)
        agent.start()  # and it can start again
        agent.tracking.add_event({"registered": "late"}, "purchase")
        assert agent.flush(timeout=10).ok


# -- odd paths: a FIFO, '#' in the name, another application's WAL database -------------------


def _run_with_timeout(target) -> list[BaseException]:
    errors: list[BaseException] = []

    def call() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            errors.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(HANG_TIMEOUT_SECONDS)
    assert not thread.is_alive(), "hung on the path"
    return errors


def test_a_fifo_as_database_url_is_refused_without_hanging(fake, tmp_path):
    fifo = tmp_path / "outbox.db"
    os.mkfifo(fifo)
    errors = _run_with_timeout(lambda: make_agent(fake, fifo))
    assert len(errors) == 1 and isinstance(errors[0], NotAnOutboxError), errors
    assert "not a regular file" in str(errors[0])
    errors = _run_with_timeout(lambda: read_status(str(fifo)))
    assert len(errors) == 1 and isinstance(errors[0], NotAnOutboxError), errors
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outbox.db"]


def status_cli(db: Path, *args: str):
    return CliRunner().invoke(cli, ["--database-url", sqlite_url(db), "status", *args])


def test_status_reads_a_path_with_hash_and_question_mark_and_creates_nothing(fake, tmp_path):
    folder = tmp_path / "odd#dir?x"
    folder.mkdir()
    db = folder / "out#box.db"
    with make_agent(fake, db) as agent:
        agent.tracking.add_event({"registered": "ann"}, "purchase")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = status_cli(db, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["pending"] == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_status_on_another_applications_wal_database_creates_no_file_beside_it(tmp_path):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.commit()
    conn.close()  # the last close checkpoints and removes -wal and -shm
    content = db.read_bytes()
    result = status_cli(db)
    assert result.exit_code == 1
    assert "not a tracker-agent outbox" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]
    assert db.read_bytes() == content


# -- a lost -wal -----------------------------------------------------------------------------

_LOSE_THE_WAL = """
import os, sys
from tracker_agent import TrackerAgent
db, url = sys.argv[1], sys.argv[2]
agent = TrackerAgent("test-project", username="key-id", password="secret", url=url,
                     database_url="sqlite:///" + db, request_timeout=1.0, connect_timeout=0.5,
                     drain=False)
for n in range(10):
    agent.tracking.add_event({"registered": "c%d" % n}, "purchase")
os.remove(db + "-wal")
{after}
os._exit(0)  # a crash: nothing is closed or checkpointed
"""


def _lose_the_wal(db: Path, url: str, after: str = "") -> str:
    script = _LOSE_THE_WAL.replace("{after}", after)
    done = subprocess.run(
        [sys.executable, "-c", script, str(db), url],
        check=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return done.stdout


def test_a_wal_lost_before_a_crash_is_reported_by_status_and_the_next_open(fake, tmp_path, caplog):
    db = tmp_path / "outbox.db"
    _lose_the_wal(db, fake.url)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "outbox.db", "outbox.db-rate", "outbox.db-shm",
    ]  # fmt: skip
    result = status_cli(db, "--json")  # read-only: it says so without writing
    assert result.exit_code == 0, result.output
    assert "-wal file is missing" in json.loads(result.stdout)["warning"]
    assert "warning:" in result.stderr
    with caplog.at_level("ERROR", logger="tracker_agent"):
        agent = make_agent(fake, db)  # the outbox survived: created and checkpointed at once
    with agent:
        stats = agent.stats()
        assert stats["pending"] == 0  # the ten commands were only in the lost file
        assert "-wal file was missing when the outbox was opened" in stats["warning"]
        assert stats["warning_at"] is not None
    assert any("-wal file was missing" in r.getMessage() for r in caplog.records)
    result = status_cli(db)
    assert result.exit_code == 0
    assert "WARNING" in result.stdout
    cleared = CliRunner().invoke(cli, ["--database-url", sqlite_url(db), "clear-warning"])
    assert cleared.exit_code == 0, cleared.output
    assert "cleared the warning: the -wal file was missing" in cleared.stdout
    result = status_cli(db)
    assert "WARNING" not in result.stdout and "warning:" not in result.stderr


def test_a_wal_deleted_under_a_running_agent_is_rescued_into_the_main_file(fake, tmp_path):
    db = tmp_path / "outbox.db"
    fake.stop()  # nothing can be delivered: the rows must stay queued
    after = "try:\n    agent.flush(timeout=0)\nexcept Exception as exc:\n    print(exc)"
    _lose_the_wal(db, fake.url, after=after)
    stats = read_status(str(db))
    assert stats["pending"] == 10
    assert "deleted while this outbox was open" in stats["warning"]


def test_share_with_group_creates_group_writable_files_whatever_the_umask(fake, tmp_path):
    old = os.umask(0o077)
    try:
        db = tmp_path / "shared" / "outbox.db"
        with make_agent(fake, db, share_with_group=True) as agent:
            agent.tracking.add_event({"registered": "ann"}, "purchase")
            assert {p.name: mode(p) for p in db.parent.iterdir()} == {
                "outbox.db": 0o660, "outbox.db-wal": 0o660, "outbox.db-shm": 0o660,
                "outbox.db-rate": 0o660,
            }  # fmt: skip
            assert mode(db.parent) == 0o770
    finally:
        os.umask(old)
