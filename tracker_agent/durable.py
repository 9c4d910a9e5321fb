"""The durable tracking namespace: validate, fix timestamps, commit to the outbox, return True.

Timestamps are fixed here, at enqueue, and never change: an event's `timestamp` (when the
caller gave none) and a customer update's `update_timestamp`. The server drops an event that is
identical to one it already has, so a retry after a crash cannot create a duplicate, and a late
retry of an update cannot overwrite newer values. Within one process the fixed timestamps are
strictly increasing (microsecond steps), so two events of one customer never tie.

Without a store (the agent's test mode, enabled=False) every call validates and returns what it
would, and nothing is stored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from . import validation
from .api.tracking import sdk_event_command
from .bootclock import boot_id, boot_seconds
from .clock import wall_clock
from .constants import CUSTOMER_COMMAND as KIND_CUSTOMER
from .constants import EVENT_COMMAND as KIND_EVENT
from .constants import SYSTEM_TIME_COMMAND
from .exceptions import ValidationError, ValidationTypeError
from .outbox.commands import NewCommand
from .outbox.ledger import MAX_KEY_BYTES
from .outbox.receipts import Receipt
from .outbox.store import OutboxStore
from .wire import tree_encoder


class MonotonicTimestamps:
    """Wall-clock seconds, rounded to 1 µs, strictly increasing within this process.

    Six decimals is what the API stores, so two calls in the same microsecond are told apart
    by a 1 µs step."""

    def __init__(self, now: Callable[[], float] | None = None) -> None:
        self._now = now or wall_clock
        self._last_us = 0  # in whole microseconds: no decimal rounding per call
        self._lock = threading.Lock()

    def next(self) -> float:
        micros = round(self._now() * 1_000_000)
        with self._lock:
            if micros <= self._last_us:
                micros = self._last_us + 1
            self._last_us = micros
        # The double nearest to micros / 10**6: exactly what round(seconds, 6) gives.
        return micros / 1_000_000


_dumps = tree_encoder()
_key_dumps = tree_encoder(sort_keys=True)
#: The timestamp field the agent fixes at enqueue when the caller gave none, per command name.
_STAMPED = {KIND_EVENT: "timestamp", KIND_CUSTOMER: "update_timestamp"}


def customer_key(customer_ids: dict[str, Any]) -> str:
    """Canonical JSON of a customer's (normalised) ids: the ordering key of the outbox."""
    return _key_dumps(customer_ids)


class DurableTracking:
    """`agent.tracking`: the seed's tracking calls, made durable (or, with no store, checked
    and dropped)."""

    def __init__(
        self,
        client: Any,
        store: OutboxStore | None,
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
        """Queue an event; True once it is durable. batch=True returns the command instead,
        in exponea-python-sdk's shape: a timestamp not given stays None there, and is fixed
        when batch_commands queues the command (as the original left it to the server)."""
        data = validation.event_command(
            customer_ids, event_type, properties, timestamp, check_size=False
        )  # _commit serialises once and checks the size
        if batch:
            return sdk_event_command(data, properties)
        if timestamp is None:  # ours is valid by construction: no second rounding
            data["timestamp"] = self._timestamps.next()
        return self._commit_one(KIND_EVENT, data, stamped=timestamp is None)

    def update_customer_properties(
        self, customer_ids: dict[str, Any], properties: dict[str, Any], batch: bool = False
    ) -> Any:
        """Queue a customer update stamped now; True once durable. batch=True returns the
        command, exponea-python-sdk's {"customer_ids", "properties"}: batch_commands stamps it."""
        data = validation.customer_command(customer_ids, properties, check_size=False)
        if batch:
            return {"name": KIND_CUSTOMER, "data": data}
        data["update_timestamp"] = self._timestamps.next()  # valid by construction
        return self._commit_one(KIND_CUSTOMER, data, stamped=True)

    def batch_commands(self, commands: list[dict[str, Any]]) -> list[bool]:
        """Queue every command in one transaction (all or none); a True per command."""
        count = self.enqueue_commands(commands)
        return [True] * count

    def get_system_time(self, batch: bool = False) -> Any:
        """Straight to the API. batch=True returns {"name": "system/time"} as the original
        did, but batch_commands refuses it: a clock reading cannot be queued."""
        if batch:
            return {"name": SYSTEM_TIME_COMMAND}
        return self._client.tracking.get_system_time()

    def enqueue_commands(self, commands: list[dict[str, Any]]) -> int:
        """Validate raw {"name", "data"} commands and commit them all in one transaction."""
        if not isinstance(commands, list):
            raise ValidationTypeError("commands", f"must be a list, not {type(commands).__name__}")
        prepared = [self._prepare(f"commands[{i}]", command) for i, command in enumerate(commands)]
        self._commit(prepared)
        return len(prepared)

    def _prepare(self, field: str, command: Any) -> dict[str, Any]:
        return self._stamp(check_command(command, field))

    def prepare_row(self, command: dict[str, Any], field: str) -> NewCommand:
        """A command checked by check_command(), its timestamps fixed now, as a stored row
        (its size checked: ValidationError naming `field`)."""
        stamped = self._stamp(command)
        return _row(field, stamped["name"], stamped["data"], stamped=stamped["stamped"])

    def commit_rows(
        self, rows: list[NewCommand], keys: list[bytes], *, reimport: bool = False
    ) -> int:
        """Queue the rows whose import-ledger key is new (all with `reimport`), recording
        their keys, in one transaction; returns how many were queued (test mode: all)."""
        self._check_open()
        if self._store is None:
            return len(rows)
        queued = self._store.enqueue_once(rows, keys, force=reimport)
        if queued:
            self._on_enqueued(queued)
        return queued

    def enqueue_commands_once(
        self, commands: list[dict[str, Any]], keys: list[bytes], *, reimport: bool = False
    ) -> int:
        """enqueue_commands() for commands named by import-ledger keys: those whose key is
        recorded are skipped. Returns how many were queued."""
        if not isinstance(commands, list):
            raise ValidationTypeError("commands", f"must be a list, not {type(commands).__name__}")
        if not isinstance(keys, list) or len(keys) != len(commands):
            raise ValidationError("keys", "must be a list with one key (bytes) per command")
        if not all(isinstance(key, bytes) and 0 < len(key) <= MAX_KEY_BYTES for key in keys):
            raise ValidationTypeError("keys", f"every key must be bytes, 1 to {MAX_KEY_BYTES} long")
        rows = [
            self.prepare_row(check_command(command, f"commands[{i}]"), f"commands[{i}]")
            for i, command in enumerate(commands)
        ]
        return self.commit_rows(rows, keys, reimport=reimport)

    def known_keys(self, keys: list[bytes]) -> set[bytes]:
        """The keys among `keys` the import ledger holds (none in test mode)."""
        return set() if self._store is None else self._store.known_keys(keys)

    def prune_ledger(self) -> int:
        """Forget import-ledger keys older than the retention (import_ledger_days)."""
        return 0 if self._store is None else self._store.prune_ledger()

    def _stamp(self, normalized: dict[str, Any]) -> dict[str, Any]:
        data = normalized["data"]
        stamp = _STAMPED.get(normalized["name"])
        stamped = stamp is not None and data.get(stamp) is None
        if stamp is not None and stamped:
            data[stamp] = self._timestamps.next()
        return {"name": normalized["name"], "data": data, "stamped": stamped}

    # -- with a receipt (not in the seed's API: its calls keep returning True) ----------------

    def track_event(
        self,
        customer_ids: dict[str, Any],
        event_type: str,
        properties: dict[str, Any] | None = None,
        timestamp: float | None = None,
    ) -> Receipt:
        """add_event, returning a Receipt once the event is durable."""
        data = validation.event_command(
            customer_ids, event_type, properties, timestamp, check_size=False
        )
        if timestamp is None:
            data["timestamp"] = self._timestamps.next()
        return self._commit_with_receipts([(KIND_EVENT, data, timestamp is None)])[0]

    def track_customer_update(
        self, customer_ids: dict[str, Any], properties: dict[str, Any]
    ) -> Receipt:
        """update_customer_properties, returning a Receipt once the update is durable."""
        data = validation.customer_command(customer_ids, properties, check_size=False)
        data["update_timestamp"] = self._timestamps.next()
        return self._commit_with_receipts([(KIND_CUSTOMER, data, True)])[0]

    def track_commands(self, commands: list[dict[str, Any]]) -> list[Receipt]:
        """batch_commands (all or none), returning a Receipt per command."""
        if not isinstance(commands, list):
            raise ValidationTypeError("commands", f"must be a list, not {type(commands).__name__}")
        prepared = [self._prepare(f"commands[{i}]", command) for i, command in enumerate(commands)]
        return self._commit_with_receipts([(c["name"], c["data"], c["stamped"]) for c in prepared])

    def _commit_with_receipts(
        self, commands: list[tuple[str, dict[str, Any], bool]]
    ) -> list[Receipt]:
        """Commit (name, data, stamped) triples; `stamped`: the agent fixed the timestamp."""
        self._check_open()
        rows = [
            _row(f"commands[{i}]", kind, data, receipt=True, stamped=stamped)
            for i, (kind, data, stamped) in enumerate(commands)
        ]
        if self._store is not None:
            self._store.enqueue(rows)
            self._on_enqueued(len(rows))
        return [Receipt(row.id) for row in rows]  # id 0 in test mode: nothing stored

    def _commit_one(self, kind: str, data: dict[str, Any], *, stamped: bool) -> bool:
        """_commit for one validated command: the add_event/update path, kept short."""
        self._check_open()
        row = _row("commands[0]", kind, data, stamped=stamped)
        if self._store is not None:
            self._store.enqueue((row,))
            self._on_enqueued(1)
        return True

    def _commit(self, commands: list[dict[str, Any]]) -> bool:
        self._check_open()
        rows = [
            _row(f"commands[{i}]", command["name"], command["data"], stamped=command["stamped"])
            for i, command in enumerate(commands)
        ]
        if self._store is not None:
            self._store.enqueue(rows)
            self._on_enqueued(len(rows))
        return True


def check_command(command: Any, field: str) -> dict[str, Any]:
    """A raw {"name", "data"} command checked and normalised, timestamps not yet fixed;
    ValidationError naming `field` when it is wrong. Pure: touches no store."""
    # _row serialises each command once and checks its size
    normalized = validation.normalize_batch_command(command, field, check_size=False)
    if normalized["name"] == SYSTEM_TIME_COMMAND:
        raise ValidationError(
            f"{field}['name']", "system/time cannot be queued; call get_system_time() directly"
        )
    return normalized


def _row(
    field: str, kind: str, data: dict[str, Any], receipt: bool = False, *, stamped: bool = False
) -> NewCommand:
    """The stored form of a validated command: serialised once, its size checked here. When
    the agent fixed its timestamp (`stamped`), the boot and its clock go with it: a wrong wall
    clock can then be corrected before the first send (outbox/clock.py)."""
    try:
        row = NewCommand(
            kind,
            _key_dumps(data["customer_ids"]),
            _dumps(data),
            receipt=receipt,
            boot=boot_id() if stamped else None,
            mono=boot_seconds() if stamped else None,
        )
    except UnicodeEncodeError as exc:  # lone surrogates: not encodable as UTF-8
        raise ValidationError(field, "contains text that is not valid Unicode") from exc
    if row.size >= validation.MAX_COMMAND_BYTES:
        raise ValidationError(
            field,
            f"is {row.size} bytes; the API limit is {validation.MAX_COMMAND_BYTES}",
        )
    return row
