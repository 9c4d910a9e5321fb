"""The Catalog API (private key): catalogs and their items."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from tracker_agent.api import Namespace, normalize_name, normalize_names
from tracker_agent.exceptions import ValidationTypeError
from tracker_agent.validation import check_command_size, normalize_properties

__all__ = ["Catalog"]


def _segment(value: object, field: str) -> str:
    """A validated id, escaped so it stays one path segment."""
    return quote(normalize_name(value, field), safe="")


def _fields(fields: object) -> list[dict[str, str]]:
    return [{"name": name} for name in normalize_names(fields, "fields", allow_empty=False)]


def _item_payload(properties: object) -> dict[str, Any]:
    payload = {"properties": normalize_properties(properties)}
    check_command_size(payload, "properties")
    return payload


class Catalog(Namespace):
    """/data/v2/projects/{token}/catalogs..."""

    path_prefix = "/data/v2/projects/{token}/catalogs"

    def create_catalog(self, catalog_name: str, fields: Sequence[str]) -> str:
        """Create a catalog with these field names; returns its id."""
        payload = {"name": normalize_name(catalog_name, "catalog_name"), "fields": _fields(fields)}
        response = self._call("POST", "", json=payload, require={"id": str})
        return str(response["id"])

    def get_catalog_name(self, catalog_id: str) -> str:
        """The catalog's name."""
        path = "/" + _segment(catalog_id, "catalog_id")
        response = self._call("GET", path, read=True, require={"data": dict})
        name = response["data"].get("name")
        return name if isinstance(name, str) else str(name)

    def get_catalog_items(
        self, catalog_id: str, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Items matching `params` (query string: query, skip, limit, ...), without "success".

        Each item is {"item_id", "properties"}; "catalog_id" is removed when the server sends it.
        """
        if params is not None and not isinstance(params, Mapping):
            raise ValidationTypeError("params", f"expected a dict, got {type(params).__name__}")
        path = f"/{_segment(catalog_id, 'catalog_id')}/items"
        response = self._call(
            "GET", path, params=dict(params or {}), read=True, require={"data": list}
        )
        result = {key: value for key, value in response.items() if key != "success"}
        result["data"] = [
            {k: v for k, v in item.items() if k != "catalog_id"} if isinstance(item, dict) else item
            for item in response["data"]
        ]
        return result

    def update_catalog_name(
        self, catalog_id: str, catalog_name: str, fields: Sequence[str]
    ) -> bool:
        """Rename the catalog; `fields` must list the fields that already exist (plus new ones)."""
        path = "/" + _segment(catalog_id, "catalog_id")
        payload = {"name": normalize_name(catalog_name, "catalog_name"), "fields": _fields(fields)}
        self._call("PUT", path, json=payload)
        return True

    def create_catalog_item(
        self, catalog_id: str, item_id: str, properties: Mapping[str, Any]
    ) -> bool:
        """Create the item, replacing an existing one with the same id."""
        path = f"/{_segment(catalog_id, 'catalog_id')}/items/{_segment(item_id, 'item_id')}"
        self._call("PUT", path, json=_item_payload(properties))
        return True

    def update_catalog_item(
        self, catalog_id: str, item_id: str, properties: Mapping[str, Any]
    ) -> bool:
        """Update only the given fields of the item."""
        path = (
            f"/{_segment(catalog_id, 'catalog_id')}/items/{_segment(item_id, 'item_id')}"
            "/partial-update"
        )
        self._call("POST", path, json=_item_payload(properties))
        return True

    def delete_catalog_item(self, catalog_id: str, item_id: str) -> bool:
        """Delete one item."""
        path = f"/{_segment(catalog_id, 'catalog_id')}/items/{_segment(item_id, 'item_id')}"
        self._call("DELETE", path)
        return True

    def delete_catalog_items(self, catalog_id: str) -> bool:
        """Delete every item of the catalog (the catalog stays)."""
        self._call("DELETE", f"/{_segment(catalog_id, 'catalog_id')}/items")
        return True

    def delete_catalog(self, catalog_id: str) -> bool:
        """Delete the catalog and its items."""
        self._call("DELETE", "/" + _segment(catalog_id, "catalog_id"))
        return True
