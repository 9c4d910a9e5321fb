"""Hostile storage under a real TrackerAgent: a full disk, corrupt and foreign files, a read-only
directory, and a file written by a newer tracker-agent."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import conftest
import pytest
from conftest import wait_for
from sqlalchemy import event

from tracker_agent import TrackerAgent
from tracker_agent.exceptions import (
    NotAnOutboxError,
    OutboxVersionError,
    StorageFullError,
    StorageReadOnlyError,
)
from tracker_agent.testing import FakeExponea

#: A tmpfs this small holds the migrated outbox and a handful of padded events.
SMALL_TMPFS_BYTES = 256 * 1024
ROOMY_TMPFS_BYTES = 8 * 1024 * 1024
#: Each test event carries this much padding, so a few fill the space left.
PAD_BYTES = 2000
#: Pages granted above the current size when SQLite's max_page_count plays the full disk.
SPARE_PAGES = 8
#: Upper bound on events written while looking for the full disk (the test fails past it).
FILL_LIMIT = 2000
WAIT_SECONDS = 10.0
THREADS = 6


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def make_agent(fake: FakeExponea, path: Path, **settings: Any) -> TrackerAgent:
    settings.setdefault("drain_interval", 0.05)
    settings.setdefault("rate_limit", 10_000.0)
    return conftest.make_agent(fake, path, **settings)


def _snapshot(path: Path) -> tuple[str, list[str]]:
    """The file's hash and its directory listing: proof that nothing was written."""
    return hashlib.sha256(path.read_bytes()).hexdigest(), sorted(os.listdir(path.parent))


def _read_only(path: Path) -> sqlite3.Connection:
    # With no -wal beside it everything is in the main file: immutable=1 reads it creating
    # nothing (mode=ro would need to create -shm, impossible in a read-only directory).
    mode = "mode=ro" if os.path.exists(f"{path}-wal") else "immutable=1"
    return sqlite3.connect(f"file:{path}?{mode}", uri=True)


def integrity(path: Path) -> list[str]:
    with contextlib.closing(_read_only(path)) as conn:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]


def stored_ns(path: Path) -> list[int]:
    """The `n` property of every queued event, in queue (id) order."""
    with contextlib.closing(_read_only(path)) as conn:
        rows = conn.execute("SELECT payload FROM outbox ORDER BY id").fetchall()
    return [json.loads(payload)["properties"]["n"] for (payload,) in rows]


def delivered_ns(fake: FakeExponea) -> list[int]:
    return [e["properties"]["n"] for e in fake.events]


def add(agent: TrackerAgent, n: int, customer: str = "alice") -> bool:
    return agent.tracking.add_event(
        {"registered": customer}, "page", {"n": n, "pad": "x" * PAD_BYTES}
    )


def fill_until_full(agent: TrackerAgent, start: int = 0) -> tuple[list[int], int, StorageFullError]:
    """Add events until the disk is full: (accepted ns, the refused n, the error)."""
    accepted: list[int] = []
    for n in range(start, start + FILL_LIMIT):
        try:
            assert add(agent, n) is True
        except StorageFullError as exc:
            return accepted, n, exc
        accepted.append(n)
    raise AssertionError(f"{FILL_LIMIT} events fitted: the disk never filled up")


# --- a full disk: a real one (tmpfs) ------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path) -> Iterator[tuple[Path, Callable[[int], None]]]:
    """A tiny tmpfs (root only) and a function that resizes it: a disk that really fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SMALL_TMPFS_BYTES}", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr!r}")

    def resize(size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    try:
        yield mount, resize
    finally:  # a lazy unmount if something still holds a file open there
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True)


def test_full_disk_refuses_the_event_clearly_keeps_the_file_and_resumes(fake, small_disk):
    mount, resize = small_disk
    path = mount / "outbox.db"
    with make_agent(fake, path) as agent:
        accepted, refused, error = fill_until_full(agent)
        assert accepted, "the outbox should take some events before the disk fills"
        assert str(path) in str(error) and "full" in str(error)
        # Still full: still a clear error, not a crash. The space a failed write left can
        # differ by a few pages (the WAL it grew and gave back), so the event refused may fit
        # now (seen once in CI): then the next ones must be refused within a few events.
        more, refused, error = fill_until_full(agent, start=refused)
        assert len(more) <= 3 and str(path) in str(error) and "full" in str(error)
        accepted += more
        assert integrity(path) == ["ok"]
        assert stored_ns(path) == accepted  # everything accepted is there, nothing refused is

        resize(ROOMY_TMPFS_BYTES)  # space returns: the same agent takes events again
        later = list(range(refused + 1, refused + 4))
        for n in later:
            assert add(agent, n) is True
        result = agent.flush()
        assert result.ok and result.delivered == len(accepted) + len(later)
    assert delivered_ns(fake) == accepted + later
    assert fake.duplicate_events == 0
    assert integrity(path) == ["ok"]


def test_background_drain_survives_a_full_disk_and_delivers_when_space_returns(fake, small_disk):
    mount, resize = small_disk
    path = mount / "outbox.db"
    # A short lease: a batch sent while its settle could not be written is due again soon.
    with make_agent(
        fake, path, lease_seconds=1.0, request_timeout=0.2, connect_timeout=0.2
    ) as agent:
        accepted, _, _ = fill_until_full(agent)
        agent.start()
        time.sleep(0.3)  # several scheduled passes meet the full disk meanwhile
        stats = agent.stats()  # reads still work
        assert stats["pending"] + stats["in_flight"] + stats["delivered"] == len(accepted)
        resize(ROOMY_TMPFS_BYTES)
        assert wait_for(lambda: agent.stats()["pending"] + agent.stats()["in_flight"] == 0)
    assert delivered_ns(fake) == accepted  # fake.events keeps one copy of a re-sent event
    assert integrity(path) == ["ok"]


# --- a full disk: SQLite's page limit (runs anywhere) ---------------------------------------


class PageLimit:
    """Caps the outbox file at `pages` for every new connection of the agent's engine."""

    def __init__(self, agent: TrackerAgent) -> None:
        self.agent = agent
        self.pages: int | None = None
        event.listen(agent.store.engine, "connect", self._apply)

    def _apply(self, dbapi_connection, _record) -> None:
        if self.pages is not None:
            dbapi_connection.execute(f"PRAGMA max_page_count = {self.pages}")

    def set(self, pages: int | None) -> None:
        self.pages = pages
        self.agent.store.close()  # the store's pinned connections go back to the pool...
        self.agent.store.engine.dispose()  # ...and every next connection gets the new limit

    def current_pages(self) -> int:
        conn = self.agent.store.engine.raw_connection()
        try:
            return conn.execute("PRAGMA page_count").fetchone()[0]
        finally:
            conn.close()


def test_page_limit_full_refuses_clearly_keeps_everything_and_resumes(fake, tmp_path):
    path = tmp_path / "outbox.db"
    with make_agent(fake, path) as agent:
        limit = PageLimit(agent)
        limit.set(limit.current_pages() + SPARE_PAGES)
        accepted, refused, error = fill_until_full(agent)
        assert accepted and str(path) in str(error)
        assert integrity(path) == ["ok"]
        assert stored_ns(path) == accepted
        limit.set(None)
        assert add(agent, refused + 1) is True
        assert agent.flush().ok
    assert delivered_ns(fake) == accepted + [refused + 1]


def test_a_batch_that_does_not_fit_is_refused_whole(fake, tmp_path):
    path = tmp_path / "outbox.db"
    with make_agent(fake, path) as agent:
        limit = PageLimit(agent)
        limit.set(limit.current_pages() + SPARE_PAGES)
        assert add(agent, 0) is True
        batch = [
            agent.tracking.add_event(
                {"registered": "bob"}, "page", {"n": n, "pad": "y" * PAD_BYTES}, batch=True
            )
            for n in range(100, 100 + 4 * SPARE_PAGES)
        ]
        with pytest.raises(StorageFullError):
            agent.tracking.batch_commands(batch)
        assert stored_ns(path) == [0]  # all or none
        limit.set(None)
        assert agent.tracking.batch_commands(batch) == [True] * len(batch)
        assert agent.flush().ok
    assert delivered_ns(fake) == [0] + [c["data"]["properties"]["n"] for c in batch]


def test_threads_on_a_full_disk_each_learn_whether_their_own_event_was_stored(fake, tmp_path):
    path = tmp_path / "outbox.db"
    with make_agent(fake, path) as agent:
        limit = PageLimit(agent)
        limit.set(limit.current_pages() + SPARE_PAGES)
        accepted: list[int] = []
        refused: list[int] = []
        others: list[BaseException] = []
        lock = threading.Lock()

        def writer(offset: int) -> None:
            for n in range(offset, offset + 40 * THREADS, THREADS):
                try:
                    add(agent, n, customer=f"c{offset}")
                except StorageFullError:
                    outcome = refused
                except BaseException as exc:  # noqa: BLE001 - reported below
                    with lock:
                        others.append(exc)
                    return
                else:
                    outcome = accepted
                with lock:
                    outcome.append(n)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert others == []
        assert accepted and refused
        assert sorted(stored_ns(path)) == sorted(accepted)  # returned True iff stored
        assert integrity(path) == ["ok"]
        limit.set(None)
        assert agent.flush().ok
    assert sorted(delivered_ns(fake)) == sorted(accepted)


# --- files that are not ours --------------------------------------------------------------


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(16384))


def _foreign_app(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        conn.execute("INSERT INTO invoices (total) VALUES (9.5)")


def _foreign_wal_app(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
        conn.commit()


def _foreign_alembic_app(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('3f2a1b0c9d8e')")
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")


def _garbled_after_header(path: Path) -> None:
    _foreign_app(path)
    data = path.read_bytes()
    path.write_bytes(data[:100] + os.urandom(len(data) - 100))


def _outbox_with_garbled_data_pages(path: Path) -> None:
    """A real outbox whose queued rows were hit by a bad sector: catalog fine, data pages not."""
    with FakeExponea() as fake, make_agent(fake, path) as agent:
        agent.enqueue_many(
            [
                {
                    "name": "customers/events",
                    "data": {
                        "customer_ids": {"registered": "a"},
                        "event_type": "page",
                        "properties": {"n": n, "pad": "z" * 500},
                    },
                }
                for n in range(300)
            ]
        )
    data = bytearray(path.read_bytes())
    page = 4096
    start = len(data) // 2 // page * page
    data[start : start + 8 * page] = random.Random(0).randbytes(8 * page)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (_random_bytes, "not an SQLite database"),
        (_garbled_after_header, "corrupt"),
        (_outbox_with_garbled_data_pages, "corrupt"),
        (_foreign_app, "not a tracker-agent outbox.*invoices"),
        (_foreign_wal_app, "not a tracker-agent outbox.*photos"),
        (_foreign_alembic_app, "not a tracker-agent outbox.*users"),
    ],
)
def test_a_corrupt_or_foreign_file_is_refused_by_name_and_left_byte_identical(
    fake, tmp_path, make, match
):
    path = tmp_path / "theirs.db"
    make(path)
    before = _snapshot(path)
    with pytest.raises(NotAnOutboxError, match=match) as info:
        make_agent(fake, path)
    assert str(path) in str(info.value)
    assert _snapshot(path) == before  # same bytes, and no -wal/-shm/-journal beside it
    assert fake.requests == []


def test_an_outbox_from_a_newer_tracker_agent_is_refused_and_left_byte_identical(fake, tmp_path):
    path = tmp_path / "outbox.db"
    with make_agent(fake, path) as agent:
        add(agent, 1)
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    before = _snapshot(path)
    with pytest.raises(OutboxVersionError, match="9999_from_the_future") as info:
        make_agent(fake, path)
    assert str(path) in str(info.value) and "upgrade" in str(info.value)
    assert _snapshot(path) == before
    assert stored_ns(path) == [1]


# --- storage that cannot be written -------------------------------------------------------


def test_a_new_outbox_in_a_read_only_directory_gives_a_clear_error(fake, tmp_path, make_read_only):
    folder = tmp_path / "state"
    folder.mkdir()
    make_read_only(folder)
    path = folder / "outbox.db"
    with pytest.raises(StorageReadOnlyError, match="not writable") as info:
        make_agent(fake, path)
    assert str(path) in str(info.value)
    assert os.listdir(folder) == []


def test_an_existing_outbox_in_a_read_only_directory_gives_a_clear_error(
    fake, tmp_path, make_read_only
):
    folder = tmp_path / "state"
    path = folder / "outbox.db"
    with make_agent(fake, path) as agent:
        add(agent, 7)
    before = _snapshot(path)
    make_read_only(folder)
    with pytest.raises(StorageReadOnlyError, match="not writable") as info:
        make_agent(fake, path)
    assert str(path) in str(info.value)
    assert _snapshot(path) == before
    assert stored_ns(path) == [7]


def test_a_read_only_outbox_file_gives_a_clear_error(fake, tmp_path, make_read_only):
    path = tmp_path / "outbox.db"
    with make_agent(fake, path) as agent:
        add(agent, 3)
    make_read_only(path)
    with pytest.raises(StorageReadOnlyError, match="not writable") as info:
        make_agent(fake, path)
    assert str(path) in str(info.value)
    assert stored_ns(path) == [3]
