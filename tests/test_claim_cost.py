"""The claim's work does not grow with the backlog (DESIGN.md: claims are index-driven).

Counted, not timed: sqlite3's progress handler called once per SQLite VM instruction counts
the work of one whole claim (state read, the claim statement, the lease update) on outboxes
that differ only in how many rows a blocked customer has queued. The claim's plan is checked
too: every read of `outbox` goes through an index, and the only index it walks (rather than
seeks) is the one with one entry per customer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tracker_agent.outbox import leases
from tracker_agent.outbox.engine import open_outbox

NOW = 1_800_000_000.0
LEASE_SECONDS = 60.0
BATCH = 50
SMALL, LARGE = 1_000, 100_000
OTHER_CUSTOMERS = 1_000
ROWS_PER_OTHER = 10
#: The claim's work at 100x the backlog may be at most this many times its work at 1x.
MAX_GROWTH = 2.0
BLOCKED = '{"registered":"blocked"}'
INSERT = (
    "INSERT INTO outbox (kind, customer_key, payload, size, created_at)"
    " VALUES ('customers/events', ?, '{}', 2, 0)"
)


def other(n: int) -> str:
    return f'{{"registered":"other-{n % OTHER_CUSTOMERS:04d}"}}'


def make_outbox(path: Path, keys: Iterator[str], block: str) -> sqlite3.Connection:
    """A migrated outbox holding one row per key, in order; the first BATCH rows of the
    blocked customer are leased by another drainer ("leased") or wait for a retry ("retry")."""
    open_outbox(f"sqlite:///{path}").dispose()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")  # set-up, not measured
    conn.execute("BEGIN")
    conn.executemany(INSERT, ((key,) for key in keys))
    first = "SELECT id FROM outbox WHERE customer_key = ? ORDER BY id LIMIT ?"
    if block == "leased":
        sql = f"UPDATE outbox SET lease_owner = 'other', lease_expires_at = ? WHERE id IN ({first})"
    else:
        sql = f"UPDATE outbox SET attempts = 1, next_attempt_at = ? WHERE id IN ({first})"
    conn.execute(sql, (NOW + LEASE_SECONDS, BLOCKED, BATCH))
    conn.execute("COMMIT")
    return conn


def claim_cost(
    conn: sqlite3.Connection, owner: str = "drainer", follow_own: bool = False
) -> tuple[int, list[leases.ClaimedRow]]:
    """VM instructions of one claim of BATCH rows (rolled back), and the rows it leased."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0  # go on

    cur = conn.cursor()
    cur.execute("BEGIN IMMEDIATE")
    conn.set_progress_handler(count, 1)
    try:
        _, rows = leases.claim(
            cur, owner, BATCH, 10**7, LEASE_SECONDS, NOW, None, follow_own=follow_own
        )
    finally:
        conn.set_progress_handler(None, 1)
        cur.execute("ROLLBACK")
    return steps, rows


def only_blocked(rows: int) -> Iterator[str]:
    return (BLOCKED for _ in range(rows))


def blocked_ahead_of_others(rows: int) -> Iterator[str]:
    yield from only_blocked(rows)
    yield from (other(n) for n in range(OTHER_CUSTOMERS * ROWS_PER_OTHER))


def blocked_among_others(rows: int) -> Iterator[str]:
    """The blocked customer's rows spread evenly through the other customers' rows."""
    others = OTHER_CUSTOMERS * ROWS_PER_OTHER
    for n in range(rows):
        yield BLOCKED
        if n * others // rows != (n + 1) * others // rows:
            yield other(n * others // rows)


# name: (rows in queue order, how the customer is blocked, claiming owner + follow_own,
#        rows the claim takes, whose)
SCENARIOS = {
    "one customer, its head batch leased": (only_blocked, "leased", None, 0, None),
    "a customer in backoff ahead of 1,000 others": (
        blocked_ahead_of_others, "retry", None, BATCH, "others"
    ),
    "a customer in backoff spread among 1,000 others": (
        blocked_among_others, "retry", None, BATCH, "others"
    ),
    "one customer, its head batch leased to the claimer (follow_own)": (
        only_blocked, "leased", "other", BATCH, "blocked"
    ),
}  # fmt: skip


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_one_claim_costs_the_same_at_1k_and_100k_rows_of_a_blocked_customer(tmp_path, scenario):
    keys, block, follower, expected, whose = SCENARIOS[scenario]
    costs = {}
    for rows in (SMALL, LARGE):
        conn = make_outbox(tmp_path / f"{rows}.db", keys(rows), block)
        try:
            if follower:
                costs[rows], claimed = claim_cost(conn, follower, follow_own=True)
            else:
                costs[rows], claimed = claim_cost(conn)
            customers = {
                conn.execute("SELECT customer_key FROM outbox WHERE id = ?", (r.id,)).fetchone()[0]
                for r in claimed
            }
        finally:
            conn.close()
        assert len(claimed) == expected
        if whose == "blocked":  # the rows right behind its own batch in flight
            assert [r.id for r in claimed] == list(range(BATCH + 1, 2 * BATCH + 1))
        else:
            assert BLOCKED not in customers
            assert [r.id for r in claimed] == sorted(r.id for r in claimed)
    assert costs[LARGE] <= MAX_GROWTH * costs[SMALL], costs


def test_the_claim_reads_outbox_only_through_indexes(tmp_path):
    conn = make_outbox(tmp_path / "plan.db", blocked_ahead_of_others(SMALL), "retry")
    try:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN " + leases.CLAIM_SQL,
            {"now": NOW, "limit": BATCH, "no_stop": 2**63 - 1, "follow": "drainer"},
        ).fetchall()
    finally:
        conn.close()
    details = [row[3] for row in plan]
    reads = [d for d in details if d.startswith(("SCAN", "SEARCH")) and " USING " in d]
    walks = [d for d in details if d.startswith("SCAN") and "INDEX" in d]
    # Every read of outbox is a search by key, except one walk: the customers' heads.
    assert walks == ["SCAN h USING INDEX ix_outbox_heads"], details
    assert not [d for d in details if d.startswith("SCAN") and d.split()[1] in ("outbox", "o")]
    assert any("ix_outbox_customer" in d for d in reads), details
    assert any("ix_outbox_leased" in d for d in reads) and any(
        "ix_outbox_retry" in d for d in reads
    )
