"""What FakeExponea recorded, returned as copies, and direct seeding of its state."""

from __future__ import annotations

import copy
import dataclasses
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from tracker_agent.testing.emulator import ANALYSIS_KINDS, Emulator

SINGLE_TRACKING_SUFFIXES = ("/customers/events", "/customers")


@dataclass
class RecordedRequest:
    """One request FakeExponea received (see FakeExponea.requests).

    path excludes the query string (that is in `query`); header names are Title-Case
    ("Authorization", "Content-Type"); json is the parsed body or None; status is None when
    the connection was dropped; command_count is the number of commands of a batch, 1 for a
    single tracking call, None otherwise; received_at is time.monotonic() on arrival.
    processed is True when the emulated API handled the request (whatever it answered),
    False when a fault answered instead or the client hung up before it was handled: only
    processed requests can have changed anything. hung_up_at is time.monotonic() when the
    fake saw the client close the connection before the whole answer was written (a client
    giving up on a trickled or oversized answer), else None.
    """

    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    body: bytes = field(default=b"", repr=False)
    json: Any = field(default=None, repr=False)
    status: int | None = None
    command_count: int | None = None
    query: str = ""
    received_at: float = field(default=0.0, repr=False)
    processed: bool = False
    hung_up_at: float | None = field(default=None, repr=False)


def parse_json(body: bytes) -> Any:
    """The parsed body, or None when it is not strict JSON."""

    def reject_constant(name: str) -> Any:
        raise ValueError(name)  # NaN and Infinity are not JSON

    try:
        return json.loads(body.decode("utf-8"), parse_constant=reject_constant)
    except ValueError:  # also UnicodeDecodeError and JSONDecodeError
        return None


def command_count(path: str, parsed: Any) -> int | None:
    """RecordedRequest.command_count for a request to `path` with this parsed body."""
    if not path.startswith("/track/"):
        return None
    if path.endswith("/batch"):
        commands = parsed.get("commands") if isinstance(parsed, dict) else None
        return len(commands) if isinstance(commands, list) else None
    return 1 if path.endswith(SINGLE_TRACKING_SUFFIXES) else None


class StateAccess:
    """FakeExponea's accessors: snapshots taken under its lock, and seeding helpers."""

    _lock: threading.Lock
    _api: Emulator
    _requests: list[RecordedRequest]
    _batches: list[list[Any]]

    # -- recorded state (copies) -----------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in arrival order, including refused and dropped ones."""
        with self._lock:
            return [
                dataclasses.replace(r, headers=dict(r.headers), json=copy.deepcopy(r.json))
                for r in self._requests
            ]

    @property
    def batches(self) -> list[list[Any]]:
        """The "commands" list of every batch request received (also faulted/refused ones)."""
        with self._lock:
            return copy.deepcopy(self._batches)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Unique accepted events in arrival order:
        {"customer_ids", "event_type", "timestamp" (as used by the server), "properties"}."""
        with self._lock:
            return copy.deepcopy(self._api.store.events)

    @property
    def received_events(self) -> list[dict[str, Any]]:
        """Every valid event received, duplicates included."""
        with self._lock:
            return copy.deepcopy(self._api.store.received_events)

    @property
    def duplicate_events(self) -> int:
        """How many events were acknowledged but dropped as exact repeats."""
        with self._lock:
            return self._api.store.duplicate_events

    @property
    def customer_updates(self) -> list[dict[str, Any]]:
        """Accepted customer updates: {"customer_ids", "properties", "update_timestamp"}
        (update_timestamp as sent: None when the client sent none)."""
        with self._lock:
            return copy.deepcopy(self._api.store.customer_updates)

    @property
    def customers(self) -> list[dict[str, Any]]:
        """Every customer profile: {"ids", "properties"} (properties merged, newest wins)."""
        with self._lock:
            return [customer.snapshot() for customer in self._api.store.customers]

    def customer(self, customer_ids: dict[str, Any]) -> dict[str, Any] | None:
        """The profile matching any of `customer_ids`, as export-one shows it, or None."""
        with self._lock:
            found = self._api.store.find(customer_ids)
            return None if found is None else found.snapshot(with_events=True)

    @property
    def catalogs(self) -> dict[str, dict[str, Any]]:
        """catalog id -> {"name", "fields": [field names], "items": {item_id: properties}}."""
        with self._lock:
            return {cid: c.snapshot() for cid, c in self._api.catalogs.catalogs.items()}

    # -- seeding ---------------------------------------------------------------------------

    @property
    def attribute_values(self) -> dict[tuple[str, str], Any]:
        """(type, id) -> value answered by customers/attributes for every customer; set
        items directly, e.g. fake.attribute_values[("segmentation", "seg-1")] = "vip"."""
        return self._api.attribute_values

    def deny_attribute(self, attribute_type: str, attribute_id: str) -> None:
        """Answer {"success": false} for this attribute, as when the key lacks permission."""
        with self._lock:
            self._api.denied_attributes.add((attribute_type, attribute_id))

    @property
    def analyses(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(kind, analysis_id) -> {"name", "header", "rows"}; prefer add_analysis()."""
        return self._api.analyses

    def add_analysis(
        self,
        kind: str,
        analysis_id: str,
        name: str,
        header: list[str],
        rows: list[list[Any]],
    ) -> None:
        """Make POST .../analyses/{kind} answer this table for `analysis_id`."""
        if kind not in ANALYSIS_KINDS:
            raise ValueError(f"kind must be one of {ANALYSIS_KINDS}, not {kind!r}")
        table = copy.deepcopy({"name": name, "header": header, "rows": rows})
        with self._lock:
            self._api.analyses[(kind, analysis_id)] = table

    def add_customer(
        self,
        customer_ids: dict[str, Any],
        properties: dict[str, Any] | None = None,
        update_timestamp: float | None = None,
    ) -> None:
        """Create or update a profile directly (not recorded as a customer update)."""
        if not isinstance(customer_ids, dict) or not customer_ids:
            raise ValueError("customer_ids must be a non-empty dict")
        with self._lock:
            stamp = self._api.now() if update_timestamp is None else update_timestamp
            self._api.store.apply_update(
                copy.deepcopy(customer_ids), copy.deepcopy(properties or {}), stamp
            )

    def add_catalog(
        self,
        name: str,
        fields: list[str],
        items: dict[str, dict[str, Any]] | None = None,
    ) -> str:
        """Create a catalog with items directly; returns its id."""
        specs = [{"name": field_name} for field_name in fields]
        with self._lock:
            catalog = self._api.catalogs.add(name, specs)
            catalog.items.update(copy.deepcopy(items or {}))
            return catalog.id
