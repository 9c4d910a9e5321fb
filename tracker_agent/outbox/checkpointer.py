"""The drain's WAL checkpoints, in a thread of their own (SQLite).

A drain at a raised rate writes 25 to 80 WAL pages a batch. Checkpointed by the drain's own
connection (wal_autocheckpoint), every few dozen batches one settle copied 16 MiB back into
the file and fsynced it, 20 to 40 ms while the batch queued behind it waited: 7 to 10 of every
400 settles, 170 to 200 ms of a 2.2 s drain of 20,000 events over 50 customers.

The Checkpointer runs PASSIVE checkpoints on a connection of its own, when the drain has
committed (`poke`), at most once per `interval`. A PASSIVE checkpoint never waits for, nor
blocks, a reader or a writer; once it has copied the whole WAL, the next commit starts the WAL
over from its beginning, so the file stays about one interval's pages long. The drain's
connection keeps an autocheckpoint of its own as a backstop (sqlite.DRAIN_BACKSTOP_PAGES), for
when this thread cannot keep up (another process reading an old snapshot).

Fork: hold_for_fork waits for a checkpoint in progress and blocks the next one, so a forked
child never inherits a connection in the middle of one; the child forgets this object
(forget) and makes its own when it drains.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_INTERVAL", "Checkpointer"]

#: Seconds between two checkpoints at most: at a raised rate about 3,000 pages (12 MiB).
CHECKPOINT_INTERVAL = 0.1


class Checkpointer:
    """PASSIVE checkpoints of the SQLite file at `path` in a daemon thread, after pokes."""

    def __init__(self, path: str, interval: float = CHECKPOINT_INTERVAL) -> None:
        """Opens its connection now, beside the drain's (see sqlite.prepare_drain): a -wal
        file deleted later is seen by both through their open descriptors alike."""
        self.path = path
        self.interval = interval
        #: Checkpoints run, and the last one's (busy, frames in the WAL, frames copied).
        self.runs = 0
        self.last: tuple[int, int, int] | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # held for each checkpoint, and across a fork
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._thread: threading.Thread | None = None
        self._failed = False  # logged once

    def poke(self) -> None:
        """The drain committed: checkpoint soon (starts the thread on first use)."""
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(
                target=self._run, name="tracker-agent-checkpoint", daemon=True
            )
            self._thread.start()
        self._wake.set()

    def step(self) -> tuple[int, int, int] | None:
        """One PASSIVE checkpoint now, in the calling thread; its (busy, log, checkpointed),
        or None if it failed (the backstop covers; logged once)."""
        with self._lock:
            if self._conn is None:  # closed
                return None
            try:
                row = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                if not self._failed:
                    log.warning("background checkpoint of %s failed: %s", self.path, exc)
                    self._failed = True
                return None
            self.runs += 1
            self.last = (int(row[0]), int(row[1]), int(row[2]))
            return self.last

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self._stop.is_set():
                return
            self._wake.clear()
            self.step()
            if self._stop.wait(self.interval):
                return

    def close(self) -> None:
        """Stop the thread (after the checkpoint in progress) and close the connection."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None

    def hold_for_fork(self) -> None:
        self._lock.acquire()

    def release_after_fork(self) -> None:
        self._lock.release()

    def forget(self) -> None:
        """In a forked child: drop the parent's connection and thread without touching them."""
        self._conn = None
        self._thread = None
        self._stop.set()
