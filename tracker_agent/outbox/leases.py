"""The drain's side of the outbox, on a cursor inside the caller's transaction: leasing the
next rows (claim) and applying a batch's outcome to them (settle).

A claim takes due rows in id order, skipping every row of a customer that comes after one of
its rows that is blocked (leased by a drainer, or waiting for a retry), so that a customer's
later command never overtakes an earlier pending one, and the rows it takes are a prefix of
each customer's queue; a lease expires on its own, so a crashed drainer's rows come back.
Settling only touches rows the settling owner still leases.

The claim is one statement whose cost is bounded by the batch and the blocked customers, never
by the backlog: it reads the blocked rows (two partial indexes), walks the customers in the id
order of their oldest row (ix_outbox_heads) skipping each blocked one at the cost of one index
entry, and merges the chosen customers' queues (ix_outbox_customer) in id order up to `limit`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import clock, deadletters, receipts, removal
from .state import STATE_DEAD_LETTERED, STATE_DELIVERED, read_state, set_state

_ADD_TO_COUNTER = (
    "INSERT INTO agent_state (key, value) VALUES (?, ?) ON CONFLICT(key)"
    " DO UPDATE SET value = coalesce(CAST(value AS INTEGER), 0) + excluded.value"
)
# The claim, as one statement (see the module docstring); EXPLAIN QUERY PLAN shows every read
# of outbox going through an index (tests check it). Bounded work:
# - blocked: customer -> its first blocked row (leased and live, or waiting for a retry), and
#   the first and last of its rows leased to :follow (the claiming owner, with follow_own; NULL
#   otherwise). Read through the two partial indexes, so only rows blocked now: the batches in
#   flight, the rows in backoff. A customer's rows before its first blocked one may still go (a
#   dead letter put back under its old id, a row released while a later one waits to retry).
# - following (follow_own only): a customer whose oldest rows are exactly the ones leased to
#   :follow goes on after them (start; NULL if it has no more), up to its first row blocked by
#   anything else (checked by counting those rows in ix_outbox_customer: at most the rows in
#   flight). Own rows that are not the customer's oldest block like any other lease.
# - heads: the first `limit` customers (plus the following ones, whose rows start later), in
#   the id order of their oldest row, that have a claimable row. A blocked customer costs one
#   entry of ix_outbox_heads, however many rows it has queued; a customer whose oldest row is
#   past those cannot have a row among the first `limit` claimable ones.
# - merged: a k-way merge of those customers' queues (the recursive CTE's queue, ordered by id,
#   is a priority queue): take the smallest id, push the next row of its customer (one seek in
#   ix_outbox_customer) unless that one is blocked; stop after `limit` rows.
CLAIM_SQL = """
WITH RECURSIVE
blocked(customer_key, stop, own_first, own_last, own_rows) AS MATERIALIZED (
    SELECT customer_key, min(CASE WHEN own THEN NULL ELSE id END),
           min(CASE WHEN own THEN id END), max(CASE WHEN own THEN id END), sum(own)
    FROM (
        SELECT customer_key, id, coalesce(lease_owner = :follow, 0) AS own
        FROM outbox INDEXED BY ix_outbox_leased
        WHERE lease_expires_at > 0 AND lease_expires_at > :now
        UNION ALL
        SELECT customer_key, id, 0 FROM outbox INDEXED BY ix_outbox_retry
        WHERE next_attempt_at > 0 AND next_attempt_at > :now)
    GROUP BY customer_key),
following(customer_key, start, stop) AS MATERIALIZED (
    SELECT b.customer_key, (
        SELECT min(x.id) FROM outbox AS x INDEXED BY ix_outbox_customer
        WHERE x.customer_key = b.customer_key AND x.id > b.own_last), coalesce(b.stop, :no_stop)
    FROM blocked AS b
    WHERE b.own_rows > 0 AND b.own_rows = (
        SELECT count(*) FROM outbox AS y INDEXED BY ix_outbox_customer
        WHERE y.customer_key = b.customer_key AND y.id <= b.own_last)),
heads(id, customer_key, stop) AS MATERIALIZED (
    SELECT CASE WHEN f.customer_key IS NULL THEN h.id ELSE f.start END, h.customer_key,
        CASE WHEN f.customer_key IS NULL
            THEN coalesce(min(b.stop, b.own_first), b.stop, b.own_first, :no_stop)
            ELSE f.stop END
    FROM outbox AS h INDEXED BY ix_outbox_heads
    LEFT JOIN blocked AS b ON b.customer_key = h.customer_key
    LEFT JOIN following AS f ON f.customer_key = h.customer_key
    WHERE h.is_head = 1
        AND CASE WHEN f.customer_key IS NULL THEN h.id ELSE f.start END
        < CASE WHEN f.customer_key IS NULL
            THEN coalesce(min(b.stop, b.own_first), b.stop, b.own_first, :no_stop)
            ELSE f.stop END
    ORDER BY h.id LIMIT :limit + (SELECT count(*) FROM following)),
merged(id, customer_key, stop) AS (
    SELECT id, customer_key, stop FROM heads
    UNION ALL
    SELECT n.id, m.customer_key, m.stop FROM merged AS m
    JOIN outbox AS n ON n.id = (
        SELECT x.id FROM outbox AS x INDEXED BY ix_outbox_customer
        WHERE x.customer_key = m.customer_key AND x.id > m.id ORDER BY x.id LIMIT 1)
    WHERE n.id < m.stop
    ORDER BY 1 LIMIT :limit)
SELECT o.id, o.kind, o.payload, o.size, o.attempts, o.created_at, o.receipt, o.boot_id, o.mono_at
FROM merged JOIN outbox AS o ON o.id = merged.id
ORDER BY o.id
"""
#: Greater than any row id: the "stop" of a customer with nothing blocked.
NO_STOP = 2**63 - 1


#: pick(cur, now, limit, max_bytes, follow) -> the rows a claim leases.
PickFn = Callable[[Any, float, int, int, "str | None", str, float], "list[ClaimedRow]"]
#: lock_customers(cur, select_keys, params): see Backend.lock_customers.
LockFn = Callable[[Any, str, Sequence[Any]], None]
#: ids_in(column, ids) -> (an SQL condition that `column` is one of `ids`, its parameters):
#: see Backend.ids_in.
IdsInFn = Callable[[str, Sequence[int]], "tuple[str, list[Any]]"]


def ids_in_list(column: str, ids: Sequence[int]) -> tuple[str, list[Any]]:
    """`column IN (?, ...)`, one parameter per id (SQLite, which has no arrays)."""
    return f"{column} IN ({','.join('?' * len(ids))})", list(ids)


class ClaimedRow(NamedTuple):
    """A leased outbox row, as the claim query returns it (a tuple: 50 are built per batch)."""

    id: int
    kind: str
    payload: str
    size: int
    attempts: int
    created_at: float
    receipt: int = 0  # 1: the caller holds a receipt for it
    boot_id: str | None = None  # set until the first claim decides the timestamp (clock.py)
    mono_at: float | None = None


@dataclass
class Settlement:
    """How one drain round ends for the rows it claimed; applied in one transaction."""

    delivered: list[int] = field(default_factory=list)
    dead: list[tuple[int, str, int | None]] = field(default_factory=list)  # id, reason, status
    retry: list[int] = field(default_factory=list)  # attempt counted, wait until retry_at
    release: list[int] = field(default_factory=list)  # lease dropped, no attempt counted
    retry_at: float = 0.0
    error: str | None = None
    state: dict[str, Any] = field(default_factory=dict)  # agent_state keys to set
    # The batch's rows that carry a receipt -> requests made for each, this one included.
    receipts: dict[int, int] = field(default_factory=dict)

    def merged(self, later: Settlement) -> Settlement | None:
        """This outcome and the `later` one of the same owner as one (applied by one settle:
        one DELETE, one counter update), or None when they cannot be: both retry rows (each
        has its own retry time and error). Applying the result is applying the two in order:
        their rows are distinct, and a state key both set takes the later value."""
        if self.retry and later.retry:
            return None
        retrying = self if self.retry else later
        return Settlement(
            delivered=[*self.delivered, *later.delivered],
            dead=[*self.dead, *later.dead],
            retry=[*self.retry, *later.retry],
            release=[*self.release, *later.release],
            retry_at=retrying.retry_at,
            error=retrying.error,
            state={**self.state, **later.state},
            receipts={**self.receipts, **later.receipts},
        )

    def release_the_rest(self, ids: Iterable[int]) -> None:
        """Release every id of `ids` that no other outcome covers (nothing is left leased)."""
        covered = {*self.delivered, *(d[0] for d in self.dead), *self.retry, *self.release}
        self.release.extend(i for i in ids if i not in covered)


def claim(
    cur: Any,
    owner: str,
    limit: int,
    max_bytes: int,
    lease_seconds: float,
    now: float,
    may_claim: Callable[[dict[str, Any]], bool] | None,
    *,
    follow_own: bool = False,
    pick: PickFn | None = None,
    fix_clock: bool = False,
    add_to_counter_sql: str = _ADD_TO_COUNTER,
) -> tuple[dict[str, Any], list[ClaimedRow]]:
    """The agent state and, unless may_claim(state) says no, the next rows leased to owner.

    With `follow_own`, rows leased to `owner` itself do not block it: a customer whose oldest
    rows are all leased to `owner` yields the rows that follow them (never those rows again).
    The caller must then send such rows only after the earlier ones came back accepted (and
    give them back otherwise): that is what keeps the customer's order.

    Each row's timestamp is decided at its first claim (with `fix_clock`, corrected by the
    server's clock, see clock.py) and frozen by the lease UPDATE (boot_id cleared)."""
    state = read_state(cur)
    if may_claim is not None and not may_claim(state):
        return state, []
    follow = owner if follow_own else None
    picked = (pick or pick_sqlite)(cur, now, limit, max_bytes, follow, owner, now + lease_seconds)
    if picked and fix_clock:  # the rows as they were before the lease (boot_id included)
        fixed = dict(clock.decide(cur, picked, state, now, add_to_counter_sql))
        if fixed:
            picked = [r._replace(payload=fixed.get(r.id, r.payload)) for r in picked]
    return state, picked


def settle(
    cur: Any,
    owner: str,
    outcome: Settlement,
    now: float,
    *,
    add_to_counter_sql: str = _ADD_TO_COUNTER,
    lock_customers: LockFn | None = None,
    delete: removal.DeleteFn = removal.delete_rows,
    ids_in: IdsInFn = ids_in_list,
) -> int:
    """Apply `outcome` to the rows `owner` still leases; returns rows delivered.

    `lock_customers(cur, select_keys, params)` runs first when given (PostgreSQL: the
    customers whose rows are deleted, see Backend.lock_customers). Rows leave the outbox
    through `delete` (Backend.delete_rows; SQLite's by default). Sets of ids are written as
    `ids_in` says (Backend.ids_in)."""
    delivered = 0
    gone = [*outcome.delivered, *(d[0] for d in outcome.dead)]
    if lock_customers is not None and gone:
        among, params = ids_in("id", gone)
        lock_customers(cur, f"SELECT customer_key FROM outbox WHERE {among}", params)
    if outcome.delivered:  # one statement (at most batch_size ids, 50 by default)
        if outcome.receipts:
            wanted = [i for i in outcome.delivered if i in outcome.receipts]
            receipts.record_delivered(cur, owner, wanted, now, ids_in)
        among, params = ids_in("id", outcome.delivered)
        delivered = delete(cur, f"lease_owner = ? AND {among}", (owner, *params))
    buried = sum(
        deadletters.bury(cur, row_id, owner, reason, status, now, delete=delete)
        for row_id, reason, status in outcome.dead
    )
    cur.executemany(
        "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?,"
        " lease_owner = NULL, lease_expires_at = 0 WHERE id = ? AND lease_owner = ?",
        [(outcome.retry_at, outcome.error, row_id, owner) for row_id in outcome.retry],
    )
    cur.executemany(
        "UPDATE outbox SET lease_owner = NULL, lease_expires_at = 0"
        " WHERE id = ? AND lease_owner = ?",
        [(row_id, owner) for row_id in outcome.release],
    )
    if delivered:  # counted in SQL: no read of the state
        cur.execute(add_to_counter_sql, (STATE_DELIVERED, delivered))
    if buried:
        cur.execute(add_to_counter_sql, (STATE_DEAD_LETTERED, buried))
    set_state(cur, outcome.state)
    return delivered


def pick_sqlite(
    cur: Any,
    now: float,
    limit: int,
    max_bytes: int,
    follow: str | None,
    owner: str,
    expires: float,
) -> list[ClaimedRow]:
    """Up to `limit` due rows in id order that no blocked row of their customer precedes (rows
    leased to `follow` excepted, see claim), within `max_bytes` (at least one row), leased to
    `owner` until `expires`; returned as they were before the lease (boot_id included)."""
    params = {"now": now, "limit": limit, "no_stop": NO_STOP, "follow": follow}
    picked = within_bytes(cur.execute(CLAIM_SQL, params), max_bytes)
    if picked:  # one statement (at most batch_size ids): a fifth cheaper than 50
        marks = ",".join("?" * len(picked))
        cur.execute(
            "UPDATE outbox SET lease_owner = ?, lease_expires_at = ?, boot_id = NULL"
            f" WHERE id IN ({marks})",
            (owner, expires, *(r.id for r in picked)),
        )
    return picked


def within_bytes(rows: Iterable[Sequence[Any]], max_bytes: int) -> list[ClaimedRow]:
    """The leading `rows` whose payloads fit in `max_bytes` (at least one row)."""
    picked: list[ClaimedRow] = []
    total = 0
    for row in rows:
        claimed = ClaimedRow(*row)
        if picked and total + claimed.size > max_bytes:
            break
        picked.append(claimed)
        total += claimed.size
    return picked
