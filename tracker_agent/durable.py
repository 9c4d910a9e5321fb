"""The durable tracking namespace: validate, fix timestamps, commit to the outbox, return True.

Timestamps are fixed here, at enqueue, and never change: an event's `timestamp` (when the
caller gave none) and a customer update's `update_timestamp`. The server drops an event that is
identical to one it already has, so a retry after a crash cannot create a duplicate, and a late
retry of an update cannot overwrite newer values. Within one process the fixed timestamps are
strictly increasing (microsecond steps), so two events of one customer never tie.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from . import validation
from .clock import wall_clock
from .exceptions import ValidationError, ValidationTypeError
from .outbox.schema import KIND_CUSTOMER, KIND_EVENT
from .outbox.store import NewCommand, OutboxStore

#: Timestamps keep six decimals (what the API stores), so ties are broken in 1 µs steps.
TIMESTAMP_STEP = 1e-6


class MonotonicTimestamps:
    """Wall-clock seconds, rounded to 1 µs, strictly increasing within this process."""

    def __init__(self, now: Callable[[], float] | None = None) -> None:
        self._now = now or wall_clock
        self._last = 0.0
        self._lock = threading.Lock()

    def next(self) -> float:
        with self._lock:
            stamp = round(self._now(), 6)
            if stamp <= self._last:
                stamp = round(self._last + TIMESTAMP_STEP, 6)
            self._last = stamp
            return stamp


_KEY_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def customer_key(customer_ids: dict[str, Any]) -> str:
    """Canonical JSON of a customer's ids: the ordering key of the outbox."""
    return _KEY_ENCODER.encode(customer_ids)


class DurableTracking:
    """`agent.tracking`: the seed's tracking calls, made durable."""

    def __init__(
        self,
        client: Any,
        store: OutboxStore,
        *,
        on_enqueued: Callable[[int], None],
        check_open: Callable[[], None],
        timestamps: MonotonicTimestamps | None = None,
    ) -> None:
        self._client = client
        self._store = store
        self._on_enqueued = on_enqueued
        self._check_open = check_open
        self._timestamps = timestamps or MonotonicTimestamps()

    def after_fork(self, client: Any) -> None:
        self._client = client
        self._timestamps._lock = threading.Lock()

    def add_event(
        self,
        customer_ids: dict[str, Any],
        event_type: str,
        properties: dict[str, Any] | None = None,
        timestamp: float | None = None,
        batch: bool = False,
    ) -> Any:
        """Queue an event; True once it is durable. batch=True returns the command instead."""
        if timestamp is None:
            timestamp = self._timestamps.next()
        data = validation.event_command(
            customer_ids, event_type, properties, timestamp, check_size=False
        )  # _commit serialises once and checks the size
        command = {"name": KIND_EVENT, "data": data}
        return command if batch else self._commit([command])

    def update_customer_properties(
        self, customer_ids: dict[str, Any], properties: dict[str, Any], batch: bool = False
    ) -> Any:
        """Queue a customer update stamped now; True once durable (batch=True: the command)."""
        data = validation.customer_command(
            customer_ids, properties, self._timestamps.next(), check_size=False
        )
        command = {"name": KIND_CUSTOMER, "data": data}
        return command if batch else self._commit([command])

    def batch_commands(self, commands: list[dict[str, Any]]) -> list[bool]:
        """Queue every command in one transaction (all or none); a True per command."""
        count = self.enqueue_commands(commands)
        return [True] * count

    def get_system_time(self, batch: bool = False) -> Any:
        """Straight to the API (a clock reading cannot be queued)."""
        if batch:
            raise ValidationError(
                "commands", "system/time cannot be queued; call get_system_time() directly"
            )
        return self._client.tracking.get_system_time()

    def enqueue_commands(self, commands: list[dict[str, Any]]) -> int:
        """Validate raw {"name", "data"} commands and commit them all in one transaction."""
        if not isinstance(commands, list):
            raise ValidationTypeError("commands", f"must be a list, not {type(commands).__name__}")
        prepared = [self._prepare(f"commands[{i}]", command) for i, command in enumerate(commands)]
        self._commit(prepared)
        return len(prepared)

    def _prepare(self, field: str, command: Any) -> dict[str, Any]:
        normalized = validation.normalize_batch_command(command, field)
        if normalized["name"] == validation.SYSTEM_TIME_COMMAND:
            raise ValidationError(
                f"{field}['name']", "system/time cannot be queued; call get_system_time() directly"
            )
        data = normalized["data"]
        if normalized["name"] == KIND_EVENT and data.get("timestamp") is None:
            data["timestamp"] = self._timestamps.next()
        if normalized["name"] == KIND_CUSTOMER and data.get("update_timestamp") is None:
            data["update_timestamp"] = self._timestamps.next()
        return {"name": normalized["name"], "data": data}

    def _commit(self, commands: list[dict[str, Any]]) -> bool:
        self._check_open()
        rows = []
        for index, command in enumerate(commands):
            data = command["data"]
            try:
                row = NewCommand(
                    command["name"], customer_key(data["customer_ids"]), validation.dumps(data)
                )
            except UnicodeEncodeError as exc:  # check_command_size used to catch it
                raise ValidationError(
                    f"commands[{index}]", "contains text that is not valid Unicode"
                ) from exc
            if row.size >= validation.MAX_COMMAND_BYTES:  # serialised once, checked here
                raise ValidationError(
                    f"commands[{index}]",
                    f"is {row.size} bytes; the API limit is {validation.MAX_COMMAND_BYTES}",
                )
            rows.append(row)
        self._store.enqueue(rows)
        self._on_enqueued(len(rows))
        return True
