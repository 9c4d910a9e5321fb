"""Clock correction in the outbox: what the drain learned about the server's clock (one
reference per boot, in agent_state), and the correction each command gets once, at its first
claim, inside the claim's transaction; it is frozen from then on (boot_id cleared), so every
retry carries the identical timestamp and the server's deduplication still holds.

A command whose timestamp the agent fixed at enqueue carries its boot id and a reading of the
boot's clock (bootclock). With a reference (server time, boot clock reading, wall time) for its
boot, its offset is the boot's (server minus wall), unless the wall clock jumped since (the
boot clock says where it really was): the true time is then the reference's plus the boot
clock's distance. Below CLOCK_THRESHOLD_SECONDS nothing changes. Without a reference for its
boot, a timestamp is kept unless impossible (before CLOCK_SANE_FLOOR, or beyond the server's
now by CLOCK_FUTURE_TOLERANCE_SECONDS): then the offset of the most recently learned boot that
makes it possible is applied, else it is sent as recorded and counted (clock_uncorrected); a
possible one is sent as recorded and counted too (clock_unknown). On a DB-API cursor;
the arithmetic is pure (correct_time). Stdlib only, plus the package's constants.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from .. import constants as c
from .state import (
    STATE_CLOCK_CORRECTED,
    STATE_CLOCK_OFFSET,
    STATE_CLOCK_REFS,
    STATE_CLOCK_UNCORRECTED,
    STATE_CLOCK_UNKNOWN,
    read_state,
    set_state,
)

__all__ = ["BootRef", "correct_time", "decide", "learn", "refs_of"]


_FIELD = {c.EVENT_COMMAND: "timestamp", c.CUSTOMER_COMMAND: "update_timestamp"}
_ADD = (
    "INSERT INTO agent_state (key, value) VALUES (?, ?) ON CONFLICT(key)"
    " DO UPDATE SET value = coalesce(CAST(value AS INTEGER), 0) + excluded.value"
)
_MICRO = 1_000_000


class BootRef(NamedTuple):
    """One answer of the server's clock: its time, the boot clock then, the wall clock then."""

    server: float
    mono: float
    wall: float

    @property
    def offset(self) -> float:
        return self.server - self.wall


def refs_of(state: dict[str, Any]) -> dict[str, BootRef]:
    raw = state.get(STATE_CLOCK_REFS) or {}
    return {boot: BootRef(*map(float, v[:3])) for boot, v in raw.items()}


def _shift(recorded: float, offset: float) -> float:
    """recorded + offset in whole microseconds: equal offsets keep distinct stamps distinct."""
    return (round(recorded * _MICRO) + round(offset * _MICRO)) / _MICRO


def _impossible(stamp: float, server_now: float) -> bool:
    return stamp < c.CLOCK_SANE_FLOOR or stamp > server_now + c.CLOCK_FUTURE_TOLERANCE_SECONDS


def correct_time(
    recorded: float,
    boot: str,
    mono: float | None,
    refs: dict[str, BootRef],
    server_now: float,
) -> tuple[float | None, bool]:
    """(the corrected timestamp or None to keep it, whether it is impossible and kept)."""
    ref = refs.get(boot)
    if ref is not None:
        offset = ref.offset
        if mono is not None:
            true = ref.server + (mono - ref.mono)
            if abs(true - (recorded + offset)) >= c.CLOCK_THRESHOLD_SECONDS:
                offset = true - recorded  # the wall clock jumped since: the boot clock knows
        return (
            _shift(recorded, offset) if abs(offset) >= c.CLOCK_THRESHOLD_SECONDS else None
        ), False
    if not _impossible(recorded, server_now):
        return None, False
    for other in sorted(refs.values(), key=lambda r: r.server, reverse=True):
        fixed = _shift(recorded, other.offset)
        if not _impossible(fixed, server_now):
            return fixed, False
    return None, True


class _Fix(NamedTuple):
    id: int
    payload: str


def decide(
    cur: Any, rows: Sequence[Any], state: dict[str, Any], now: float, add_sql: str = _ADD
) -> list[_Fix]:
    """Correct the rows of a claim that carry a boot (not yet decided); returns the new
    payloads (the caller's lease UPDATE clears boot_id on every claimed row: frozen).
    `add_sql` adds to an agent_state counter (Backend.add_to_counter_sql: the database's)."""
    undecided = [r for r in rows if r.boot_id is not None and r.kind in _FIELD]
    if not undecided:
        return []
    refs = refs_of(state)
    server_now = now + float(state.get(STATE_CLOCK_OFFSET) or 0.0)
    fixes: list[_Fix] = []
    kept = unknown = 0
    for row in undecided:
        data = json.loads(row.payload)
        field = _FIELD[row.kind]
        recorded = data.get(field)
        if not isinstance(recorded, (int, float)) or isinstance(recorded, bool):
            continue
        fixed, impossible = correct_time(
            float(recorded), row.boot_id, row.mono_at, refs, server_now
        )
        kept += impossible
        unknown += fixed is None and not impossible and row.boot_id not in refs
        if fixed is not None:
            data[field] = fixed
            fixes.append(_Fix(row.id, json.dumps(data, ensure_ascii=False, separators=(",", ":"))))
    if fixes:
        cur.executemany(
            "UPDATE outbox SET payload = ? WHERE id = ?", [(f.payload, f.id) for f in fixes]
        )
        cur.execute(add_sql, (STATE_CLOCK_CORRECTED, len(fixes)))
    if kept:
        cur.execute(add_sql, (STATE_CLOCK_UNCORRECTED, kept))
    if unknown:
        cur.execute(add_sql, (STATE_CLOCK_UNKNOWN, unknown))
    return fixes


def learn(cur: Any, boot: str, ref: BootRef, learned_at: float) -> None:
    """Record `ref` as the reference of `boot` (the CLOCK_MAX_BOOTS most recent boots kept)."""
    raw = dict(read_state(cur).get(STATE_CLOCK_REFS) or {})
    raw[boot] = [ref.server, ref.mono, ref.wall, learned_at]
    newest = sorted(raw.items(), key=lambda kv: kv[1][3], reverse=True)[: c.CLOCK_MAX_BOOTS]
    set_state(cur, {STATE_CLOCK_REFS: dict(newest), STATE_CLOCK_OFFSET: round(ref.offset, 3)})
