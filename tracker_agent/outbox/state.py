"""agent_state: the small key/value facts every process on one outbox shares (delivered
total, last success and error, pause and backoff, the project, a warning), read and written
on a DB-API cursor inside the caller's transaction. Values are stored as JSON. Stdlib only.
"""

from __future__ import annotations

import json
from typing import Any

#: agent_state keys, shared by every process on one outbox file.
STATE_DELIVERED = "delivered_total"
STATE_DROPPED = "dropped_total"
#: Commands moved to dead_letters since this counter was added (never decreases: a retried or
#: purged dead letter stays counted), for the dead-lettered rate.
STATE_DEAD_LETTERED = "dead_lettered_total"
STATE_LAST_SUCCESS = "last_success_at"
STATE_LAST_ERROR = "last_error"
STATE_LAST_ERROR_AT = "last_error_at"
STATE_PAUSED_REASON = "paused_reason"
STATE_PAUSED_AT = "paused_at"
STATE_PROBE_AT = "probe_at"
#: How many probes failed since the pause began (the next one waits longer).
STATE_PAUSE_PROBES = "pause_probes"
STATE_BACKOFF_UNTIL = "backoff_until"
STATE_FAILURES = "consecutive_failures"
#: True while the backoff in force began with no answer at all (policy.unreachable): a
#: reachability probe that is answered may end it early (fast resume).
STATE_BACKOFF_UNREACHABLE = "backoff_unreachable"
#: Clock correction (outbox/clock.py): each boot's reference of the server's clock
#: ({boot_id: [server, boot_seconds, wall, learned_at]}), the latest learned offset (server
#: minus wall, s), commands corrected, impossible timestamps sent as recorded, and commands of
#: a boot whose offset was never learned sent as recorded.
STATE_CLOCK_REFS = "clock_refs"
STATE_CLOCK_OFFSET = "clock_offset"
STATE_CLOCK_CORRECTED = "clock_corrected"
STATE_CLOCK_UNCORRECTED = "clock_uncorrected"
STATE_CLOCK_UNKNOWN = "clock_unknown"
#: The project token this outbox belongs to, recorded by the first agent that opens it.
STATE_PROJECT = "project_token"
#: Something an operator must know (e.g. the -wal file was lost), and since when.
STATE_WARNING = "warning"
STATE_WARNING_AT = "warning_at"


#: agent_state keys that are per host when hosts share the database: a 429 or a network fault
#: one host meets backs off that host, not all (the API limits per source IP). The store reads
#: and writes them as "key@host"; the plain key keeps the latest value of any host, for status.
#: A pause (credentials) stays global. Whether a host's backoff began with no answer at all
#: (fast resume) is that host's too.
HOST_STATE = frozenset({STATE_BACKOFF_UNTIL, STATE_FAILURES, STATE_BACKOFF_UNREACHABLE})


def host_view(state: dict[str, Any], host: str) -> dict[str, Any]:
    """The agent state as drainers of `host` act on it."""
    return {**state, **{key: state.get(f"{key}@{host}") for key in HOST_STATE}}


def host_keys(values: dict[str, Any], host: str) -> dict[str, Any]:
    """State to set, with each HOST_STATE key also set under this host's name."""
    return {**values, **{f"{k}@{host}": v for k, v in values.items() if k in HOST_STATE}}


#: A counter spread over rows "key#n" (PostgreSQL: one per server backend slot, so that
#: concurrent drainers never wait on one row); read_state sums them into "key".
COUNTER_SLOT = "#"


def read_state(conn: Any) -> dict[str, Any]:
    """All agent_state values, JSON-decoded; a spread counter's slots summed into its key."""
    rows = conn.execute("SELECT key, value FROM agent_state").fetchall()
    state = {key: (json.loads(value) if value is not None else None) for key, value in rows}
    for key in [k for k in state if COUNTER_SLOT in k]:
        count = state.pop(key)
        base = key.partition(COUNTER_SLOT)[0]
        if isinstance(count, int) and not isinstance(count, bool):
            state[base] = int(state.get(base) or 0) + count
    return state


def set_state(cur: Any, values: dict[str, Any]) -> None:
    """Upsert `values`, in key order: two hosts' transactions that write the same keys take
    their row locks in one order (PostgreSQL), so they wait for each other, never deadlock."""
    if values:
        cur.executemany(
            "INSERT INTO agent_state (key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [(key, json.dumps(values[key])) for key in sorted(values)],
        )
