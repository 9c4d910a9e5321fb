"""Ending a backoff early (fast resume): when the backoff in force began because the API could
not be reached at all and a reachability probe was answered since, the backoff deadline and the
retry times of the rows waiting for it are brought forward to now. On a DB-API cursor, inside
the caller's transaction (OutboxStore.end_unreachable_backoff). Stdlib only.
"""

from __future__ import annotations

from typing import Any

from .state import (
    STATE_BACKOFF_UNREACHABLE,
    STATE_BACKOFF_UNTIL,
    host_keys,
    host_view,
    read_state,
    set_state,
)

#: Rows waiting for a retry, found through the partial index ix_outbox_retry (a handful: those
#: the failed requests carried). They stay in that index (next_attempt_at > 0): they were tried.
_RETRY_NOW = (
    "UPDATE outbox SET next_attempt_at = ? WHERE next_attempt_at > 0 AND next_attempt_at > ?"
)


def end_unreachable_backoff(cur: Any, now: float, host: str | None = None) -> bool:
    """End the backoff in force if it is still one that began with no answer at all (another
    process may have met a 429 since: that one is honoured). True if it ended. With `host`
    (a database shared by hosts) the backoff is that host's (state.HOST_STATE)."""
    state = read_state(cur)
    if host is not None:
        state = host_view(state, host)
    if not state.get(STATE_BACKOFF_UNREACHABLE):
        return False
    if float(state.get(STATE_BACKOFF_UNTIL) or 0) <= now:
        return False
    cur.execute(_RETRY_NOW, (now, now))
    ended = {STATE_BACKOFF_UNTIL: 0}
    set_state(cur, ended if host is None else host_keys(ended, host))
    return True
