"""Customers and events held by FakeExponea: validates and applies tracking commands."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from tracker_agent.testing.protocol import CommandError

MAX_COMMAND_BYTES = 800 * 1024
MAX_PROPERTY_VALUE_BYTES = 16 * 1024
#: The real API never deduplicates consent events.
CONSENT_EVENT_TYPE = "consent"
CONSENT_ACCEPT = "accept"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _size(text: str) -> int:
    return len(text.encode())


def require_customer_ids(data: dict[str, Any]) -> dict[str, Any]:
    """The body's customer_ids, checked like the API does."""
    ids = data.get("customer_ids")
    if ids is None:
        raise CommandError("customer_ids is required")
    if not isinstance(ids, dict) or not ids:
        raise CommandError("customer_ids must be a non-empty object")
    for name, value in ids.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise CommandError(f"customer_ids.{name} must be a string or a number")
    return ids


def _optional_timestamp(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CommandError(f"{key} must be a number")
    return float(value)


def _optional_properties(data: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The properties (or {}) and their canonical JSON, with the API's size limits checked."""
    properties = data.get("properties")
    if properties is None:
        properties = {}
    if not isinstance(properties, dict):
        raise CommandError("properties must be an object")
    canonical = _canonical(properties)
    if _size(canonical) > MAX_PROPERTY_VALUE_BYTES:  # only then can a single value be too large
        for name, value in properties.items():
            if _size(_canonical(value)) > MAX_PROPERTY_VALUE_BYTES:
                raise CommandError(f"property {name} is too large")
    return properties, canonical


def _check_size(*parts: str) -> None:
    if sum(_size(part) for part in parts) > MAX_COMMAND_BYTES:
        raise CommandError("command is too large")


def event_view(event: dict[str, Any]) -> dict[str, Any]:
    """An event the way the data API shows it: {"type", "timestamp", "properties"}."""
    return {
        "type": event["event_type"],
        "timestamp": event["timestamp"],
        "properties": event["properties"],
    }


@dataclass
class Customer:
    """One customer profile: ids, merged properties (with the stamp of each value), events."""

    ids: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    stamps: dict[str, float] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)

    def matches(self, ids: dict[str, Any]) -> bool:
        return any(name in self.ids and self.ids[name] == value for name, value in ids.items())

    def sorted_events(self) -> list[dict[str, Any]]:
        return sorted(self.events, key=lambda event: event["timestamp"])

    def snapshot(self, *, with_events: bool = False) -> dict[str, Any]:
        view: dict[str, Any] = {"ids": self.ids, "properties": self.properties}
        if with_events:
            view["events"] = [event_view(event) for event in self.sorted_events()]
        return copy.deepcopy(view)


class CustomerStore:
    """Customer profiles and the event log, with the server-side dedup of the real API."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget every customer and event."""
        self.customers: list[Customer] = []
        self.events: list[dict[str, Any]] = []
        self.received_events: list[dict[str, Any]] = []
        self.customer_updates: list[dict[str, Any]] = []
        self.duplicate_events = 0
        self._by_id: dict[tuple[str, Any], Customer] = {}
        self._seen: set[tuple[str, str, float, str]] = set()

    def find(self, ids: dict[str, Any]) -> Customer | None:
        """The customer who has any of these ids, if one exists."""
        for item in ids.items():
            customer = self._by_id.get(item)
            if customer is not None:
                return customer
        return None

    def resolve(self, ids: dict[str, Any]) -> Customer:
        """The customer these ids name, created if new; ids it lacked are merged in."""
        customer = self.find(ids)
        if customer is None:
            customer = Customer()
            self.customers.append(customer)
        for name, value in ids.items():
            if name not in customer.ids:
                customer.ids[name] = value
                self._by_id.setdefault((name, value), customer)
        return customer

    def remove(self, customer: Customer) -> None:
        self.customers.remove(customer)
        for item in customer.ids.items():
            if self._by_id.get(item) is customer:
                del self._by_id[item]

    def track_event(self, data: dict[str, Any], now: float) -> None:
        """Apply a customers/events command; an exact repeat is acknowledged, not stored."""
        ids = require_customer_ids(data)
        event_type = data.get("event_type")
        if event_type is None:
            raise CommandError("event_type is required")
        if not isinstance(event_type, str) or not event_type.strip():
            raise CommandError("event_type must be a non-empty string")
        timestamp = _optional_timestamp(data, "timestamp")
        properties, canonical_properties = _optional_properties(data)
        canonical_ids = _canonical(ids)
        _check_size(canonical_ids, event_type, canonical_properties)
        when = now if timestamp is None else timestamp
        # The body was parsed for the store alone: keeping its objects needs no copy.
        event = {
            "customer_ids": ids,
            "event_type": event_type,
            "timestamp": when,
            "properties": properties,
        }
        self.received_events.append(event)
        key = (canonical_ids, event_type, when, canonical_properties)
        if event_type != CONSENT_EVENT_TYPE and key in self._seen:
            self.duplicate_events += 1
            return
        self._seen.add(key)
        self.events.append(event)
        self.resolve(ids).events.append(event)

    def update_customer(self, data: dict[str, Any], now: float) -> None:
        """Apply a customers command; update_timestamp decides which value is newer."""
        ids = require_customer_ids(data)
        properties, canonical_properties = _optional_properties(data)
        stamp = _optional_timestamp(data, "update_timestamp")
        _check_size(_canonical(ids), canonical_properties)
        self.customer_updates.append(
            {"customer_ids": ids, "properties": properties, "update_timestamp": stamp}
        )
        self.apply_update(ids, properties, now if stamp is None else stamp)

    def apply_update(self, ids: dict[str, Any], properties: dict[str, Any], stamp: float) -> None:
        customer = self.resolve(ids)
        for name, value in properties.items():
            if stamp >= customer.stamps.get(name, float("-inf")):
                customer.properties[name] = value
                customer.stamps[name] = stamp

    @staticmethod
    def consent(customer: Customer, category: str, now: float) -> bool:
        """Whether the customer's latest consent event for `category` accepts and is valid."""
        latest: dict[str, Any] | None = None
        for event in customer.sorted_events():
            properties = event["properties"]
            if event["event_type"] == CONSENT_EVENT_TYPE and properties.get("category") == category:
                latest = properties
        if latest is None:
            return False
        valid_until = latest.get("valid_until")
        if (
            isinstance(valid_until, (int, float))
            and not isinstance(valid_until, bool)
            and valid_until < now
        ):
            return False
        return bool(latest.get("action") == CONSENT_ACCEPT)

    def export(self) -> dict[str, Any]:
        """All customers in the customers/export "native_json" shape (fields + rows)."""
        id_names = sorted({name for customer in self.customers for name in customer.ids})
        property_names = sorted(
            {name for customer in self.customers for name in customer.properties}
        )
        fields = [{"type": "id", "id": name} for name in id_names]
        fields += [{"type": "property", "property": name} for name in property_names]
        rows = [
            [customer.ids.get(name) for name in id_names]
            + [customer.properties.get(name) for name in property_names]
            for customer in self.customers
        ]
        return {"success": True, "fields": fields, "data": rows}
