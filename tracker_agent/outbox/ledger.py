"""import_ledger: the keys of imported lines, read and written on a DB-API cursor inside the
enqueue's own transaction (so a line is queued exactly when its key is recorded), and pruned
after the retention. Keys are opaque bytes chosen by the importer. Stdlib only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Keys per `IN (...)` lookup: below every SQLite build's variable limit (999 before 3.32).
LOOKUP_SLICE = 500
#: Ledger rows deleted per prune transaction: a month of a big import is pruned in short
#: transactions, never holding the write lock long enough to stall the app's enqueues.
PRUNE_SLICE = 10_000

_INSERT = "INSERT INTO import_ledger (key, imported_at) VALUES (?, ?)"
_REPLACE = "INSERT OR REPLACE INTO import_ledger (key, imported_at) VALUES (?, ?)"
_PRUNE = (
    "DELETE FROM import_ledger WHERE key IN (SELECT key FROM import_ledger"
    " WHERE imported_at < ? ORDER BY imported_at LIMIT ?)"
)


def known(cur: Any, keys: Sequence[bytes]) -> set[bytes]:
    """The keys among `keys` already in the ledger."""
    found: set[bytes] = set()
    for start in range(0, len(keys), LOOKUP_SLICE):
        part = keys[start : start + LOOKUP_SLICE]
        marks = ",".join("?" * len(part))
        found.update(
            row[0]
            for row in cur.execute(f"SELECT key FROM import_ledger WHERE key IN ({marks})", part)
        )
    return found


def fresh(
    cur: Any, items: Sequence[Any], keys: Sequence[bytes], taken: set[bytes]
) -> tuple[list[Any], list[bytes]]:
    """The items whose key is neither in the ledger nor in `taken` (keys accepted earlier in
    this transaction), each key once, with their keys; in order."""
    seen = known(cur, keys) | taken
    out_items: list[Any] = []
    out_keys: list[bytes] = []
    for item, key in zip(items, keys, strict=True):
        if key not in seen:
            seen.add(key)
            out_items.append(item)
            out_keys.append(key)
    return out_items, out_keys


def record(cur: Any, keys: Sequence[bytes], now: float, *, again: bool = False) -> None:
    """Add `keys` (none of them present: `fresh` chose them in this transaction), or with
    `again` add or refresh them (a forced re-import)."""
    if keys:
        cur.executemany(_REPLACE if again else _INSERT, [(key, now) for key in keys])


def prune_slice(cur: Any, before: float) -> int:
    """Delete up to PRUNE_SLICE of the oldest entries recorded before `before`."""
    cur.execute(_PRUNE, (before, PRUNE_SLICE))
    return int(cur.rowcount)


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
        self.commands = commands
        self.keys = keys
        self.force = force
        self.queued = 0

    def fresh(self, cur: Any, taken: set[bytes]) -> tuple[Sequence[Any], list[bytes]]:
        """The commands to insert in this transaction, and their keys (see `fresh`)."""
        if self.force:
            return self.commands, list(self.keys)
        return fresh(cur, self.commands, self.keys, taken)
