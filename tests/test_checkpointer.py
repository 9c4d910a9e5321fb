"""The drain's WAL checkpoints run in a thread of their own (outbox/checkpointer.py), so that
no settle between one batch and the next stalls copying the WAL into the file. Counted in WAL
frames, not timed."""

from __future__ import annotations

import sqlite3
import threading

from conftest import wait_for

from tracker_agent.outbox.checkpointer import Checkpointer
from tracker_agent.outbox.engine import open_outbox
from tracker_agent.outbox.sqlite import DRAIN_BACKSTOP_PAGES
from tracker_agent.outbox.store import NewCommand, OutboxStore, Settlement

NOW = 1_700_000_000.0


def _store(path) -> OutboxStore:
    return OutboxStore(open_outbox(f"sqlite:///{path}"), max_rows=10**6, max_bytes=10**9)


def _fill(store: OutboxStore, rows: int, customers: int) -> None:
    store.enqueue(
        [NewCommand("customers/events", f'{{"c": "c{i % customers}"}}', "{}") for i in range(rows)]
    )


def _drain_batches(store: OutboxStore, batches: int, rows=None) -> list:
    """Settle `rows` (claimed by a call before) or a first claim as delivered, claiming the
    next batch with each settlement, `batches` times; returns the rows claimed last."""
    if rows is None:
        rows = store.claim("me", limit=50, max_bytes=10**7, lease_seconds=60, now=NOW)
    for _ in range(batches):
        assert rows
        outcome = Settlement(delivered=[r.id for r in rows])
        _, _, rows = store.settle_and_claim(
            "me", outcome, NOW, limit=50, max_bytes=10**7, lease_seconds=60
        )
    return rows


def test_the_drain_connection_leaves_checkpoints_to_the_thread(tmp_path):
    store = _store(tmp_path / "outbox.db")
    try:
        _fill(store, 2000, 50)
        _drain_batches(store, 5)
        with store._drain_connection() as conn:
            pages = conn.driver_connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert pages == DRAIN_BACKSTOP_PAGES
        checkpointer = store.backend._checkpointer
        assert checkpointer is not None
        # Poked by the drain's commits: it ran, and copied every frame it found.
        assert wait_for(lambda: checkpointer.runs > 0 and checkpointer.last is not None)
        busy, frames, copied = checkpointer.last
        assert busy == 0 and frames > 0 and copied == frames
    finally:
        store.close()
        store.engine.dispose()
    assert checkpointer._thread is None and checkpointer._conn is None  # closed with the store


def test_a_passive_checkpoint_lets_the_next_commit_start_the_wal_over(tmp_path):
    """Without the thread (interval never reached), the WAL grows batch after batch; one
    PASSIVE checkpoint copies it all, and the drain's next commit writes from the start of
    the WAL again: the file stays about one interval of pages long."""
    path = tmp_path / "outbox.db"
    store = _store(path)
    try:
        _fill(store, 3000, 50)
        rows = _drain_batches(store, 1)  # the drain connection and its checkpointer exist
        checkpointer = store.backend._checkpointer
        checkpointer.close()  # no thread: steps are taken by hand below
        probe = Checkpointer(str(path))
        before = probe.step()
        rows = _drain_batches(store, 10, rows)
        grown = probe.step()  # copies what 10 batches wrote
        _drain_batches(store, 1, rows)
        after = probe.step()
        probe.close()
    finally:
        store.close()
        store.engine.dispose()
    assert before is not None and grown is not None and after is not None
    assert grown[1] == grown[2] > 10 * 10  # every frame copied, 10+ pages per batch
    assert after[1] == after[2] < grown[1] / 5  # the WAL started over: one batch's frames


def test_a_checkpoint_never_blocks_a_writer(tmp_path):
    """A PASSIVE checkpoint on the thread's connection while another connection holds the
    write lock (an enqueue, a drain in progress): it copies what it can and returns at once,
    and the writer commits."""
    path = tmp_path / "outbox.db"
    store = _store(path)
    try:
        _fill(store, 500, 5)
        _drain_batches(store, 2)
    finally:
        store.close()
        store.engine.dispose()
    writer = sqlite3.connect(path, isolation_level=None, timeout=0)
    checkpointer = Checkpointer(str(path))
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE agent_state SET value = value WHERE key = 'x'")
        done = threading.Event()
        result: list[object] = []
        thread = threading.Thread(target=lambda: (result.append(checkpointer.step()), done.set()))
        thread.start()
        assert done.wait(10)
        writer.execute("COMMIT")
        assert result[0] is not None
    finally:
        checkpointer.close()
        writer.close()


def test_a_failing_checkpoint_is_logged_once_and_the_drain_goes_on(tmp_path, caplog):
    path = tmp_path / "outbox.db"
    store = _store(path)
    try:
        _fill(store, 500, 5)
        rows = _drain_batches(store, 1)
        checkpointer = store.backend._checkpointer
        checkpointer.close()
        broken = Checkpointer(str(path))
        broken._conn.close()  # every step now raises (sqlite3.ProgrammingError)
        with caplog.at_level("WARNING", logger="tracker_agent.outbox.checkpointer"):
            assert broken.step() is None and broken.step() is None
        assert caplog.text.count("background checkpoint") == 1
        _drain_batches(store, 3, rows)  # the drain does not depend on it
        broken._conn = None
        broken.close()
    finally:
        store.close()
        store.engine.dispose()
