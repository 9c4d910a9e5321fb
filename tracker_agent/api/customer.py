"""The Customer API (private key): export one or all customers, attributes, consents, events,
anonymisation."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tracker_agent.api import Namespace, normalize_names
from tracker_agent.validation import normalize_customer_ids

__all__ = ["Customer", "ATTRIBUTE_KINDS"]

log = logging.getLogger(__name__)

ATTRIBUTE_KINDS: tuple[tuple[str, str, str], ...] = (
    # (result key and argument name, API attribute type, key holding the name in the request)
    ("properties", "property", "property"),
    ("segmentations", "segmentation", "id"),
    ("ids", "id", "id"),
    ("expressions", "expression", "id"),
    ("aggregations", "aggregate", "id"),
    ("predictions", "prediction", "id"),
)


def _value(results: Sequence[object], index: int, what: str) -> Any:
    """The value of one attribute result; None (with a warning) when it was not given."""
    result = results[index] if index < len(results) else None
    if not isinstance(result, Mapping) or result.get("success") is not True:
        log.warning("no value returned for %s (missing permission?)", what)
        return None
    return result.get("value")


class Customer(Namespace):
    """/data/v2/projects/{token}/customers/..."""

    path_prefix = "/data/v2/projects/{token}/customers"

    def get_customer(self, customer_ids: Mapping[str, str | int]) -> dict[str, Any]:
        """{"ids", "properties", "events"} of one customer."""
        payload = {"customer_ids": normalize_customer_ids(customer_ids)}
        response = self._call(
            "POST",
            "/export-one",
            json=payload,
            read=True,
            require={"ids": dict, "properties": dict, "events": list},
        )
        return {key: response[key] for key in ("ids", "properties", "events")}

    def get_customer_consents(
        self, customer_ids: Mapping[str, str | int], consent_types: Sequence[str]
    ) -> dict[str, bool | None]:
        """{consent category: bool}; None for a category the key may not read."""
        categories = normalize_names(consent_types, "consent_types")
        payload = {
            "customer_ids": normalize_customer_ids(customer_ids),
            "attributes": [{"type": "consent", "category": name} for name in categories],
        }
        response = self._call(
            "POST", "/attributes", json=payload, read=True, require={"results": list}
        )
        results = response["results"]
        return {
            name: _value(results, index, f"consent {name!r}")
            for index, name in enumerate(categories)
        }

    def get_customer_attributes(
        self,
        customer_ids: Mapping[str, str | int],
        properties: Sequence[str] | None = None,
        segmentations: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        expressions: Sequence[str] | None = None,
        aggregations: Sequence[str] | None = None,
        predictions: Sequence[str] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """{kind: {name: value}} for each kind asked for; kinds not asked for are absent."""
        asked = {
            "properties": properties,
            "segmentations": segmentations,
            "ids": ids,
            "expressions": expressions,
            "aggregations": aggregations,
            "predictions": predictions,
        }
        wanted = [
            (key, api_type, name_key, normalize_names(asked[key] or [], key))
            for key, api_type, name_key in ATTRIBUTE_KINDS
        ]
        attributes = [
            {"type": api_type, name_key: name}
            for _, api_type, name_key, names in wanted
            for name in names
        ]
        payload = {"customer_ids": normalize_customer_ids(customer_ids), "attributes": attributes}
        response = self._call(
            "POST", "/attributes", json=payload, read=True, require={"results": list}
        )
        results, index = response["results"], 0
        answer: dict[str, dict[str, Any]] = {}
        for key, _, _, names in wanted:
            if not names:
                continue
            answer[key] = {}
            for name in names:
                answer[key][name] = _value(results, index, f"{key} {name!r}")
                index += 1
        return answer

    def get_customers(self) -> list[dict[str, dict[str, Any]]]:
        """Every customer as {"ids": {...}, "properties": {...}}."""
        response = self._call(
            "POST",
            "/export",
            json={"format": "native_json"},
            read=True,
            require={"fields": list, "data": list},
        )
        columns: list[tuple[str | None, Any]] = []
        for field in response["fields"]:
            kind = field.get("type") if isinstance(field, Mapping) else None
            if kind == "id":
                columns.append(("ids", field.get("id")))
            elif kind == "property":
                columns.append(("properties", field.get("property")))
            else:
                columns.append((None, None))  # a column kind we do not map
        customers = []
        for row in response["data"]:
            customer: dict[str, dict[str, Any]] = {"ids": {}, "properties": {}}
            values = row if isinstance(row, list) else []
            for (kind, name), value in zip(columns, values, strict=False):
                if kind is not None and name is not None:
                    customer[kind][name] = value
            customers.append(customer)
        return customers

    def get_events(
        self, customer_ids: Mapping[str, str | int], event_types: Sequence[str]
    ) -> list[dict[str, Any]]:
        """The customer's events of the given types, each {"type", "timestamp", "properties"}."""
        payload = {
            "customer_ids": normalize_customer_ids(customer_ids),
            "event_types": normalize_names(event_types, "event_types"),
        }
        response = self._call("POST", "/events", json=payload, read=True, require={"data": list})
        return list(response["data"])

    def anonymize_customer(self, customer_ids: Mapping[str, str | int]) -> bool:
        """Anonymise the customer (irreversible); True on success."""
        payload = {"customer_ids": normalize_customer_ids(customer_ids)}
        self._call("POST", "/anonymize", json=payload)
        return True
