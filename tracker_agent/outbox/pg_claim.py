"""The claim on PostgreSQL: the same rule as leases.CLAIM_SQL (a customer's rows go in id order,
none after one of its rows that is blocked), kept across concurrent drainers on many hosts.

Plain `FOR UPDATE SKIP LOCKED` does not keep per-customer order: two drainers each see the other's
customer as free in their snapshots. So claims are serialised by a transaction-level advisory
lock (PG_CLAIM_LOCK), taken in its own statement first: in READ COMMITTED the claim statement
that follows takes a fresh snapshot, which holds every earlier claim (committed before the lock
was released). The statement that follows chooses the rows and leases them (the byte cap
applied in SQL), so the lock is held for one statement and the commit: drainers serialise
only their claims, never their sends.

The statement's cost is bounded by the batch and the blocked customers, as on SQLite: blocked
rows come from the two partial indexes, customers in the id order of their oldest row from
ix_outbox_heads (a blocked one costs an index entry and a jsonb key lookup), and each chosen
customer's next rows from ix_outbox_customer (PostgreSQL's
recursive CTEs cannot keep a priority queue, so each chosen customer yields up to `limit` ids
and the smallest `limit` of those are taken). Two bounds keep that small.
The customer whose start is the k-th smallest yields at most limit - k + 1: the k - 1 before it
each give a smaller id. And when `limit` customers are chosen, no id past the limit-th smallest
start is taken (`edge`): those starts are `limit` claimable ids already. Each customer yielded
`limit` once, 5,900 index entries read for a claim of 50 with 150 customers passed (3.6 of
6.9 ms); at most limit x (limit + 1) / 2 with few customers now, and about one per customer
with many (a claim of 100 over 1,000 interleaved customers: 100 entries, not 3,220).
"""

from __future__ import annotations

from typing import Any

from ..constants import PG_CLAIM_LOCK
from .leases import NO_STOP, ClaimedRow

__all__ = ["CLAIM_LOCK_SQL", "PG_CLAIM_SQL", "pick_postgresql"]

# With the lock, for this transaction: no bitmap scans. A bitmap scan of ix_outbox_leased
# read every entry a delivered row left behind (14,000 entries for 50 live leases, 20,000 rows
# into a drain; autovacuum comes too late), and never marks them dead; a plain index scan
# marks each dead entry the first time it meets it and skips it after.
CLAIM_LOCK_SQL = (
    f"SELECT pg_advisory_xact_lock({PG_CLAIM_LOCK}),"
    " set_config('enable_bitmapscan', 'off', true), set_config('enable_seqscan', 'off', true)"
)

# blocked / following / heads as in leases.CLAIM_SQL (read that comment first). PostgreSQL cannot
# index a CTE: joining each head passed to `blocked` would cost (heads passed x blocked
# customers), 56 ms per claim with 5,000 customers waiting for a retry. So `maps` folds the
# blocked and following customers into two jsonb objects once per claim, and each head passed
# costs one key lookup (10 ms in that case; about 3 ms with the usual hundred in flight).
PG_CLAIM_SQL = """WITH blocked AS MATERIALIZED (
    SELECT customer_key,
           min(id) FILTER (WHERE NOT own) AS stop,
           min(id) FILTER (WHERE own) AS own_first,
           max(id) FILTER (WHERE own) AS own_last,
           count(*) FILTER (WHERE own) AS own_rows
    FROM (
        SELECT customer_key, id, coalesce(lease_owner = %(follow)s, false) AS own
        FROM outbox WHERE lease_expires_at > 0 AND lease_expires_at > %(now)s
        UNION ALL
        SELECT customer_key, id, false FROM outbox
        WHERE next_attempt_at > 0 AND next_attempt_at > %(now)s) AS b
    GROUP BY customer_key),
following AS MATERIALIZED (
    SELECT b.customer_key, (
        SELECT min(x.id) FROM outbox AS x
        WHERE x.customer_key = b.customer_key AND x.id > b.own_last) AS start,
        coalesce(b.stop, %(no_stop)s) AS stop
    FROM blocked AS b
    WHERE b.own_rows > 0 AND b.own_rows = (
        SELECT count(*) FROM outbox AS y
        WHERE y.customer_key = b.customer_key AND y.id <= b.own_last)),
maps AS MATERIALIZED (
    SELECT
        (SELECT coalesce(jsonb_object_agg(customer_key, least(stop, own_first)), '{}')
         FROM blocked) AS stops,
        (SELECT coalesce(jsonb_object_agg(customer_key, jsonb_build_array(start, stop)), '{}')
         FROM following) AS follows,
        (SELECT count(*) FROM following) AS follow_count),
heads AS MATERIALIZED (
    SELECT s.start, h.customer_key, s.stop
    FROM maps AS m CROSS JOIN outbox AS h
    CROSS JOIN LATERAL (SELECT m.follows -> h.customer_key AS f) AS fl
    CROSS JOIN LATERAL (SELECT
        CASE WHEN fl.f IS NULL THEN h.id ELSE (fl.f ->> 0)::bigint END AS start,
        CASE WHEN fl.f IS NULL
            THEN coalesce((m.stops ->> h.customer_key)::bigint, %(no_stop)s)
            ELSE (fl.f ->> 1)::bigint END AS stop) AS s
    WHERE h.is_head = 1 AND s.start < s.stop
    ORDER BY h.id
    LIMIT %(limit)s + (SELECT follow_count FROM maps)),
ranked AS MATERIALIZED (
    SELECT customer_key, start, stop, row_number() OVER (ORDER BY start) AS rank FROM heads),
edge AS MATERIALIZED (
    SELECT coalesce(max(start), %(no_stop)s) AS last FROM ranked WHERE rank = %(limit)s),
picked AS MATERIALIZED (
    SELECT r.id FROM ranked AS c CROSS JOIN LATERAL (
        SELECT x.id FROM outbox AS x
        WHERE x.customer_key = c.customer_key AND x.id >= c.start AND x.id < c.stop
            AND x.id <= (SELECT last FROM edge)
        ORDER BY x.id LIMIT %(limit)s - c.rank + 1) AS r
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
    UPDATE outbox SET lease_owner = %(owner)s, lease_expires_at = %(expires)s, boot_id = NULL
    FROM kept WHERE outbox.id = kept.id)
SELECT id, kind, payload, size, attempts, created_at, receipt, boot_id, mono_at
FROM kept ORDER BY id
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
    """The claim's rows (see leases.claim), chosen and leased in one statement under the
    claim lock (held to the commit): one round trip less while every other drainer waits."""
    cur.execute(CLAIM_LOCK_SQL)
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
