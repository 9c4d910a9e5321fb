"""Catalogs held by FakeExponea: the /data/v2/projects/{token}/catalogs endpoints."""

from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass, field
from typing import Any

from tracker_agent.testing.protocol import Call, Reply, refuse

DEFAULT_ITEMS_LIMIT = 20
MAX_ITEMS_LIMIT = 1000
MAX_ITEMS_SKIP = 10**9
CATALOG_ID_BYTES = 12  # 24 hex digits, like the real API's ids


@dataclass
class Catalog:
    """One catalog: its name, field definitions and items (item_id -> properties)."""

    id: str
    name: str
    fields: list[dict[str, Any]]
    items: dict[str, dict[str, Any]] = field(default_factory=dict)

    def item_view(self, item_id: str) -> dict[str, Any]:
        return {"catalog_id": self.id, "item_id": item_id, "properties": self.items[item_id]}

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(
            {
                "name": self.name,
                "fields": [spec["name"] for spec in self.fields],
                "items": self.items,
            }
        )


def _name_and_fields(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise refuse(400, "name is required")
    fields = body.get("fields")
    if not isinstance(fields, list) or not all(
        isinstance(spec, dict) and isinstance(spec.get("name"), str) and spec["name"]
        for spec in fields
    ):
        raise refuse(400, 'fields must be a list of {"name": string}')
    return name, copy.deepcopy(fields)


def _properties(body: dict[str, Any]) -> dict[str, Any]:
    properties = body.get("properties")
    if properties is None:
        raise refuse(400, "properties is required")
    if not isinstance(properties, dict):
        raise refuse(400, "properties must be an object")
    return copy.deepcopy(properties)


def _int_param(call: Call, name: str, default: int, low: int, high: int) -> int:
    raw = call.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise refuse(400, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise refuse(400, f"{name} must be between {low} and {high}")
    return value


def _item_matches(item_id: str, properties: dict[str, Any], text: str, field: str | None) -> bool:
    values = [properties.get(field)] if field else [item_id, *properties.values()]
    return any(value is not None and text in str(value).lower() for value in values)


class CatalogStore:
    """All catalogs of the project; each public method is one endpoint (method, path)."""

    def __init__(self) -> None:
        self.catalogs: dict[str, Catalog] = {}

    def clear(self) -> None:
        self.catalogs.clear()

    def add(self, name: str, fields: list[dict[str, Any]]) -> Catalog:
        catalog = Catalog(secrets.token_hex(CATALOG_ID_BYTES), name, fields)
        self.catalogs[catalog.id] = catalog
        return catalog

    def _get(self, catalog_id: str) -> Catalog:
        catalog = self.catalogs.get(catalog_id)
        if catalog is None:
            raise refuse(404, "Catalog not found")
        return catalog

    def _item(self, catalog_id: str, item_id: str) -> Catalog:
        catalog = self._get(catalog_id)
        if item_id not in catalog.items:
            raise refuse(404, "Item not found")
        return catalog

    def list_catalogs(self, call: Call) -> Reply:
        data = [{"id": c.id, "name": c.name} for c in self.catalogs.values()]
        return 200, {"success": True, "data": data}

    def create(self, call: Call) -> Reply:
        name, fields = _name_and_fields(call.data)
        return 200, {"success": True, "id": self.add(name, fields).id}

    def get(self, call: Call, catalog: str) -> Reply:
        found = self._get(catalog)
        data = {"id": found.id, "name": found.name, "fields": found.fields}
        return 200, {"success": True, "data": data}

    def update(self, call: Call, catalog: str) -> Reply:
        found = self._get(catalog)
        name, fields = _name_and_fields(call.data)
        kept = {spec["name"] for spec in fields}
        dropped = [spec["name"] for spec in found.fields if spec["name"] not in kept]
        if dropped:
            raise refuse(400, "fields must keep the existing fields: " + ", ".join(dropped))
        found.name, found.fields = name, fields
        return 200, {"success": True}

    def delete(self, call: Call, catalog: str) -> Reply:
        del self.catalogs[self._get(catalog).id]
        return 200, {"success": True}

    def list_items(self, call: Call, catalog: str) -> Reply:
        found = self._get(catalog)
        skip = _int_param(call, "skip", 0, 0, MAX_ITEMS_SKIP)
        limit = _int_param(call, "limit", DEFAULT_ITEMS_LIMIT, 1, MAX_ITEMS_LIMIT)
        text = call.query.get("query", "").lower()
        field_name = call.query.get("field") or None
        matched = [
            item_id
            for item_id, properties in found.items.items()
            if not text or _item_matches(item_id, properties, text, field_name)
        ]
        return 200, {
            "success": True,
            "data": [found.item_view(item_id) for item_id in matched[skip : skip + limit]],
            "skip": skip,
            "limit": limit,
            "matched": len(matched),
            "matched_limited": False,
            "total": len(found.items),
        }

    def delete_items(self, call: Call, catalog: str) -> Reply:
        self._get(catalog).items.clear()
        return 200, {"success": True}

    def get_item(self, call: Call, catalog: str, item: str) -> Reply:
        return 200, {"success": True, "data": self._item(catalog, item).item_view(item)}

    def put_item(self, call: Call, catalog: str, item: str) -> Reply:
        found = self._get(catalog)
        found.items[item] = _properties(call.data)
        return 200, {"success": True}

    def patch_item(self, call: Call, catalog: str, item: str) -> Reply:
        found = self._item(catalog, item)
        found.items[item].update(_properties(call.data))
        return 200, {"success": True}

    def delete_item(self, call: Call, catalog: str, item: str) -> Reply:
        del self._item(catalog, item).items[item]
        return 200, {"success": True}
