"""The claim on PostgreSQL: the same rule as leases.CLAIM_SQL (a customer's rows go in id order,
none after one of its rows that is blocked), kept across concurrent drainers on many hosts
without serialising their claims.

A customer's oldest row is its head, and the head's flag says whether the customer is free
(is_head = 1) or held (2: leased, or waiting for a retry; migration 0010's triggers keep it).
A claim locks the heads of the customers it takes (FOR UPDATE SKIP LOCKED) before it reads
their rows, and only the drainer holding a customer's head may lease that customer's rows:
- a free head (ix_outbox_heads holds only those): any drainer;
- a held head whose block has passed (its lease expired, its retry is due): any drainer. These
  are found through the two partial indexes of leased and retried rows, whose ranges below
  `now` hold only such rows;
- a head leased to the claiming drainer itself (with follow_own): that drainer, from the first
  row after its own.
In READ COMMITTED the lock re-reads the head's newest version and drops it if its flag or lease
no longer match: a drainer that took the customer first and committed has flagged it 2, and
one still in its transaction holds the lock (skipped). So two drainers never hold one customer,
and no claim waits for another (plain `FOR UPDATE SKIP LOCKED` on the rows themselves could
not keep the order: two drainers each saw the other's customer as free).

The statement's cost is bounded by the batch, never by the backlog or the customers in flight:
`limit` free heads from ix_outbox_heads, the few heads whose block passed, this drainer's own
held heads, and each chosen customer's next rows from ix_outbox_customer (PostgreSQL's
recursive CTEs cannot keep a priority queue, so each chosen customer yields up to `limit` ids
and the smallest `limit` of those are taken). Two bounds keep that small. The customer whose
start is the k-th smallest yields at most limit - k + 1: the k - 1 before it each give a
smaller id. And when `limit` customers are chosen, no id past the limit-th smallest start is
taken (`edge`): those starts are `limit` claimable ids already. A customer's rows stop before
its first blocked one (a row leased by another drainer, or waiting for a retry, behind a head
that is free: a dead letter put back ahead of a batch in flight).

Before 0010 every claim walked the heads of the customers in flight too, under an advisory lock
that serialised all claims: 15 ms for a claim of 100 rows with 800 customers in flight.
"""

from __future__ import annotations

from typing import Any

from .leases import NO_STOP, ClaimedRow

__all__ = ["CLAIM_SETTINGS", "PG_CLAIM_SQL", "pick_postgresql"]

# For the drain's connection (Backend.prepare_drain): no bitmap scans. A bitmap scan of
# ix_outbox_leased read every entry a delivered row left behind (14,000 entries for 50 live
# leases, 20,000 rows into a drain; autovacuum comes too late), and never marks them dead; a
# plain index scan marks each dead entry the first time it meets it and skips it after.
CLAIM_SETTINGS = ("SET enable_bitmapscan = off", "SET enable_seqscan = off")

# - free: the first `limit` free heads in id order, locked (those another claim holds skipped).
# - woken: held heads whose block has passed, locked; the same condition is checked again on
#   the locked version.
# - mine / own (follow_own): customers whose head is leased to :follow and live; such a
#   customer goes on from its first row not leased to :follow, if every row of it leased to
#   :follow comes before that row (its oldest rows are exactly ours: a row of ours after a
#   row that is not must not be overtaken) and that row is not blocked (every start must be
#   claimable: `edge` counts on it).
# - ranked / edge / picked: the chosen customers' next rows, as described in the docstring.
# - leased: the lease; a head's flag becomes 2 (its retry time cleared: the lease blocks now).
#   Only rows it leased are returned (a row gone meanwhile, deleted by a drainer whose lease
#   had expired, is not).
PG_CLAIM_SQL = """WITH free AS MATERIALIZED (
    SELECT h.id, h.customer_key FROM outbox AS h
    WHERE h.is_head = 1
    ORDER BY h.id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED),
woken AS MATERIALIZED (
    SELECT h.id, h.customer_key FROM outbox AS h
    WHERE h.id IN (
            SELECT id FROM outbox WHERE lease_expires_at > 0 AND lease_expires_at <= %(now)s
            UNION
            SELECT id FROM outbox WHERE next_attempt_at > 0 AND next_attempt_at <= %(now)s)
        AND h.is_head = 2 AND h.lease_expires_at <= %(now)s AND h.next_attempt_at <= %(now)s
    ORDER BY h.id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED),
mine AS MATERIALIZED (
    SELECT min(id) FILTER (WHERE is_head = 2) AS head, max(id) AS last FROM outbox
    WHERE lease_expires_at > 0 AND lease_expires_at > %(now)s AND lease_owner = %(follow)s
    GROUP BY customer_key),
own AS MATERIALIZED (
    SELECT h.id, h.customer_key, m.last FROM mine AS m JOIN outbox AS h ON h.id = m.head
    WHERE h.is_head = 2 AND h.lease_owner = %(follow)s AND h.lease_expires_at > %(now)s
    FOR UPDATE OF h SKIP LOCKED),
starts AS MATERIALIZED (
    SELECT customer_key, id AS start FROM free
    UNION ALL
    SELECT customer_key, id FROM woken
    UNION ALL
    SELECT o.customer_key, n.id FROM own AS o CROSS JOIN LATERAL (
        SELECT x.id, x.lease_expires_at, x.next_attempt_at FROM outbox AS x
        WHERE x.customer_key = o.customer_key AND x.id > o.id
            AND (x.lease_owner IS DISTINCT FROM %(follow)s OR x.lease_expires_at <= %(now)s)
        ORDER BY x.id LIMIT 1) AS n
    WHERE n.id > o.last AND n.lease_expires_at <= %(now)s AND n.next_attempt_at <= %(now)s),
ranked AS MATERIALIZED (
    SELECT customer_key, start, row_number() OVER (ORDER BY start) AS rank FROM starts),
edge AS MATERIALIZED (
    SELECT coalesce(max(start), %(no_stop)s) AS last FROM ranked WHERE rank = %(limit)s),
picked AS MATERIALIZED (
    SELECT r.id FROM ranked AS c CROSS JOIN LATERAL (
        SELECT q.id FROM (
            SELECT x.id, bool_or(x.lease_expires_at > %(now)s OR x.next_attempt_at > %(now)s)
                OVER (ORDER BY x.id) AS stopped
            FROM outbox AS x
            WHERE x.customer_key = c.customer_key AND x.id >= c.start
                AND x.id <= (SELECT last FROM edge)
            ORDER BY x.id LIMIT %(limit)s - c.rank + 1) AS q
        WHERE NOT q.stopped) AS r
    WHERE c.rank <= %(limit)s
    ORDER BY r.id LIMIT %(limit)s),
chosen AS MATERIALIZED (
    SELECT o.id, o.kind, o.payload, o.size, o.attempts, o.created_at, o.receipt, o.boot_id,
           o.mono_at, sum(o.size) OVER (ORDER BY o.id) AS running,
           row_number() OVER (ORDER BY o.id) AS n
    FROM picked JOIN outbox AS o ON o.id = picked.id),
kept AS MATERIALIZED (
    SELECT * FROM chosen WHERE running <= %(max_bytes)s OR n = 1),
leased AS (
    UPDATE outbox SET lease_owner = %(owner)s, lease_expires_at = %(expires)s, boot_id = NULL,
        next_attempt_at = 0, is_head = CASE WHEN outbox.is_head = 0 THEN 0 ELSE 2 END
    FROM kept WHERE outbox.id = kept.id
    RETURNING outbox.id)
SELECT id, kind, payload, size, attempts, created_at, receipt, boot_id, mono_at
FROM kept WHERE id IN (SELECT id FROM leased) ORDER BY id
"""


def pick_postgresql(
    cur: Any,
    now: float,
    limit: int,
    max_bytes: int,
    follow: str | None,
    owner: str,
    expires: float,
) -> list[ClaimedRow]:
    """The claim's rows (see leases.claim), chosen and leased in one statement: no other
    claim is waited for (the heads it locks are skipped by the others)."""
    params = {
        "now": now,
        "limit": limit,
        "no_stop": NO_STOP,
        "follow": follow,
        "max_bytes": max_bytes,
        "owner": owner,
        "expires": expires,
    }
    return [ClaimedRow(*row) for row in cur.execute(PG_CLAIM_SQL, params).fetchall()]
