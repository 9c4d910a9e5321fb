"""The events every benchmark sends: a realistic purchase event, spread over many customers.

Both sides of a comparison get the same events: the agent gets the call arguments, the raw
baselines get the exact rows (or batch bodies) the agent would have written (or sent).
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Iterable
from typing import Any

CUSTOMERS = 1000
ITEMS = 5000
EVENT_TYPE = "purchase"
#: Distinct events pre-built per pool; the loops cycle through it (no allocation in the loop).
POOL_SIZE = 1000
_BASE_TIMESTAMP = 1_750_000_000.0
FILL_CHUNK = 50_000
INSERT = "INSERT INTO outbox (kind, customer_key, payload, size, created_at) VALUES (?, ?, ?, ?, ?)"


def event_args(i: int, customer: int | None = None) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(customer_ids, event_type, properties) of the i-th event (about 200 bytes as JSON), of
    customer number `customer` (default: i % CUSTOMERS)."""
    return (
        {"registered": f"customer-{i % CUSTOMERS if customer is None else customer:06d}"},
        EVENT_TYPE,
        {
            "item_id": f"sku-{i % ITEMS:05d}",
            "price": 19.99 + i % 7,
            "currency": "EUR",
            "quantity": 1 + i % 3,
            "page": "/checkout/confirm",
            "campaign": "spring-sale",
        },
    )


@functools.cache
def event_pool(size: int = POOL_SIZE) -> list[tuple[dict[str, Any], str, dict[str, Any]]]:
    """Pre-built call arguments (shared, never modified: the agent copies what it stores)."""
    return [event_args(i) for i in range(size)]


def event_command(
    i: int, timestamp: float | None = None, customer: int | None = None
) -> dict[str, Any]:
    """The i-th event as a raw batch command {"name", "data"} (what enqueue_many takes)."""
    customer_ids, event_type, properties = event_args(i, customer)
    data: dict[str, Any] = {
        "customer_ids": customer_ids,
        "event_type": event_type,
        "properties": properties,
        "timestamp": _BASE_TIMESTAMP + i / 1000 if timestamp is None else timestamp,
    }
    return {"name": "customers/events", "data": data}


def stored_row(i: int, customer: int | None = None) -> tuple[str, str, str, int]:
    """(kind, customer_key, payload, size): the outbox row the agent writes for event i (of
    `customer`), built with the package's own normalisation and serialisation."""
    from tracker_agent import validation, wire
    from tracker_agent.durable import customer_key

    command = event_command(i, customer=customer)
    data = validation.normalize_batch_command(command)["data"]
    payload = wire.dumps(data)
    return command["name"], customer_key(data["customer_ids"]), payload, len(payload.encode())


_PAYLOAD = (
    '{"customer_ids":%s,"event_type":"purchase","properties":{"item_id":"sku-%05d","price":%r,'
    '"currency":"EUR","quantity":%d,"page":"/checkout/confirm","campaign":"spring-sale"},'
    '"timestamp":%r}'
)


def fast_row(i: int, customer: int | None = None) -> tuple[str, str, str, int]:
    """stored_row(i, customer) by string formatting (~20x faster), for pre-filling big
    backlogs; check_fast_rows() proves it equal to stored_row on a sample first."""
    key = f'{{"registered":"customer-{i % CUSTOMERS if customer is None else customer:06d}"}}'
    price = 19.99 + i % 7
    stamp = round(_BASE_TIMESTAMP + i / 1000, 6)
    payload = _PAYLOAD % (key, i % ITEMS, price, 1 + i % 3, stamp)
    return "customers/events", key, payload, len(payload)


def check_fast_rows(sample: range = range(0, 20_000, 97)) -> None:
    for i in sample:
        for customer in (None, i * 7919 % 1_000_000):
            if fast_row(i, customer) != stored_row(i, customer):
                raise RuntimeError(f"fast_row({i}) differs from the agent's row: {fast_row(i)}")


@functools.cache
def row_pool(size: int = POOL_SIZE) -> list[tuple[str, str, str, int]]:
    return [stored_row(i) for i in range(size)]


def prefill(path: str, count: int, customers: int = CUSTOMERS) -> str:
    """A migrated outbox at `path` holding `count` queued events over `customers` customers
    (event i is customer i % customers's); its URL."""
    return fill(path, ((i, i % customers) for i in range(count)))


def fill(path: str, events: Iterable[tuple[int, int]]) -> str:
    """A migrated outbox at `path` holding event i of customer c for each (i, c) of `events`,
    in that order, inserted as the agent would have stored them, FILL_CHUNK per transaction;
    its URL."""
    from bench.common import fresh_outbox, raw_connect

    database_url = fresh_outbox(path)
    check_fast_rows()
    conn = raw_connect(path)
    conn.execute("PRAGMA synchronous = OFF")  # the fill is set-up, not measured
    rows = iter(events)
    try:
        chunk = list(itertools.islice(rows, FILL_CHUNK))
        while chunk:
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT, [(*fast_row(i, c), now) for i, c in chunk])
            conn.execute("COMMIT")
            chunk = list(itertools.islice(rows, FILL_CHUNK))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return database_url
