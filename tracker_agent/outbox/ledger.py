"""The import ledger: the keys of imported lines, written in the enqueue's own transaction (a
line is queued exactly when its key is recorded), looked up before, pruned after the retention.
Keys are opaque bytes chosen by the importer. Stdlib only.

Two tables, so that recording a key costs an append rather than a random B-tree insert (which
writes a page per key at commit once the ledger outgrows a chunk: 30 us per line at a million
keys):

import_ledger_log   one row per committed request: its keys, packed. Appending is sequential.
                    Each process keeps the log's keys in memory (LedgerLog), reading only the
                    rows appended since its last look, inside the writer's transaction.
import_ledger       the keys, one row each, for lookups. Filled from the log in one sorted pass
                    once the log holds COMPACT_KEYS keys (pages written once per pass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

#: Keys per `IN (...)` lookup: below every SQLite build's variable limit (999 before 3.32).
LOOKUP_SLICE = 500
#: Ledger rows deleted per prune transaction: a month of a big import is pruned in short
#: transactions, never holding the write lock long enough to stall the app's enqueues.
PRUNE_SLICE = 10_000
#: Keys the log holds before they are moved into import_ledger (each process holds the log's
#: keys in memory: about 100 bytes each).
COMPACT_KEYS = 100_000
#: The longest key (its length is packed in one byte).
MAX_KEY_BYTES = 255

_APPEND = "INSERT INTO import_ledger_log (keys, imported_at) VALUES (?, ?)"
_PRUNE = (
    "DELETE FROM import_ledger WHERE key IN (SELECT key FROM import_ledger"
    " WHERE imported_at < ? ORDER BY imported_at LIMIT ?)"
)


def pack(keys: Sequence[bytes]) -> bytes:
    """Keys as one blob: each one's length in a byte, then the key."""
    return b"".join(bytes((len(key),)) + key for key in keys)


def unpack(blob: bytes) -> Iterator[bytes]:
    at = 0
    while at < len(blob):
        size = blob[at]
        yield blob[at + 1 : at + 1 + size]
        at += 1 + size


def indexed(cur: Any, keys: Sequence[bytes]) -> set[bytes]:
    """The keys among `keys` in import_ledger (not the log)."""
    found: set[bytes] = set()
    for start in range(0, len(keys), LOOKUP_SLICE):
        part = keys[start : start + LOOKUP_SLICE]
        marks = ",".join("?" * len(part))
        found.update(
            row[0]
            for row in cur.execute(f"SELECT key FROM import_ledger WHERE key IN ({marks})", part)
        )
    return found


def known(cur: Any, keys: Sequence[bytes]) -> set[bytes]:
    """The keys among `keys` in the ledger (a read: reads the whole log, which is small)."""
    wanted = set(keys)
    logged = {
        key for (blob,) in cur.execute("SELECT keys FROM import_ledger_log") for key in unpack(blob)
    }
    return indexed(cur, keys) | (wanted & logged)


class LedgerLog:
    """One process's copy of the keys in import_ledger_log, used by the enqueue's writer inside
    its transaction. It reads the rows appended since its last look; when rows it had read are
    gone (moved into import_ledger, or pruned) it reads the log again. `forget()` after a
    rolled-back transaction: keys it added then were never committed."""

    def __init__(self, insert_id: Callable[[Any, str, Sequence[Any]], int]) -> None:
        self._insert_id = insert_id  # runs an INSERT of one row, returns its id (the backend's)
        self.forget()

    def forget(self) -> None:
        self._keys: set[bytes] = set()
        self._first_id: int | None = None  # the oldest log row read
        self._last_id = 0  # the newest log row read (ids are never reused)

    @property
    def size(self) -> int:
        return len(self._keys)

    def _refresh(self, cur: Any) -> None:
        first = cur.execute("SELECT min(id) FROM import_ledger_log").fetchone()[0]
        if self._first_id is not None and (first is None or first > self._first_id):
            self.forget()
        for row_id, blob in cur.execute(
            "SELECT id, keys FROM import_ledger_log WHERE id > ? ORDER BY id", (self._last_id,)
        ):
            self._note(row_id, unpack(blob))

    def _note(self, row_id: int, keys: Iterator[bytes] | Sequence[bytes]) -> None:
        self._keys.update(keys)
        self._last_id = row_id
        if self._first_id is None:
            self._first_id = row_id

    def fresh(
        self, cur: Any, items: Sequence[Any], keys: Sequence[bytes], taken: set[bytes]
    ) -> tuple[list[Any], list[bytes]]:
        """The items whose key is neither in the ledger nor in `taken` (keys recorded earlier
        in this transaction), each key once, with their keys; in order."""
        self._refresh(cur)
        seen = indexed(cur, keys) | taken
        logged = self._keys
        out_items: list[Any] = []
        out_keys: list[bytes] = []
        for item, key in zip(items, keys, strict=True):
            if key not in seen and key not in logged:
                seen.add(key)
                out_items.append(item)
                out_keys.append(key)
        return out_items, out_keys

    def record(self, cur: Any, keys: Sequence[bytes], now: float) -> None:
        """Append `keys` to the log (in the caller's transaction)."""
        if keys:
            self._note(self._insert_id(cur, _APPEND, (pack(keys), now)), keys)


def compact(cur: Any) -> int:
    """Move every key of the log into import_ledger (in key order, so each page is written
    once; a key logged again by a forced re-import keeps its newest time). Returns how many."""
    rows = cur.execute("SELECT id, keys, imported_at FROM import_ledger_log ORDER BY id").fetchall()
    if not rows:
        return 0
    newest: dict[bytes, float] = {}
    for _row_id, blob, imported_at in rows:
        for key in unpack(blob):
            newest[key] = imported_at
    cur.executemany(
        "INSERT INTO import_ledger (key, imported_at) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET imported_at = excluded.imported_at",
        sorted(newest.items()),
    )
    cur.execute("DELETE FROM import_ledger_log WHERE id <= ?", (rows[-1][0],))
    return len(newest)


def prune_slice(cur: Any, before: float) -> int:
    """Delete up to PRUNE_SLICE of the oldest keys recorded before `before` (and the log's old
    rows: the log is small); returns how many keys."""
    old = "FROM import_ledger_log WHERE imported_at < ?"
    logged = sum(
        len(list(unpack(blob))) for (blob,) in cur.execute(f"SELECT keys {old}", (before,))
    )
    cur.execute(f"DELETE {old}", (before,))
    cur.execute(_PRUNE, (before, PRUNE_SLICE))
    return logged + int(cur.rowcount)


class KeyedCommands:
    """An enqueue request whose commands are queued once each: `keys[i]` names `commands[i]`
    in the ledger. Once committed, `queued` says how many were new (the others were skipped).
    With `force` every command is queued and its key recorded anew."""

    __slots__ = ("commands", "keys", "force", "queued")

    def __init__(
        self, commands: Sequence[Any], keys: Sequence[bytes], *, force: bool = False
    ) -> None:
        if len(commands) != len(keys):
            raise ValueError(f"{len(commands)} commands but {len(keys)} ledger keys")
        if not all(0 < len(key) <= MAX_KEY_BYTES for key in keys):
            raise ValueError(f"ledger keys must be 1 to {MAX_KEY_BYTES} bytes long")
        self.commands = commands
        self.keys = keys
        self.force = force
        self.queued = 0

    def fresh(
        self, log: LedgerLog, cur: Any, taken: set[bytes]
    ) -> tuple[Sequence[Any], list[bytes]]:
        """The commands to insert in this transaction, and their keys (see LedgerLog.fresh)."""
        if self.force:
            return self.commands, list(self.keys)
        return log.fresh(cur, self.commands, self.keys, taken)
