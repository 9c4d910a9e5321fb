"""The emulated Exponea API: routing, authentication and the semantics of every endpoint."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from tracker_agent.testing.catalog import CatalogStore
from tracker_agent.testing.protocol import (
    Call,
    CommandError,
    Predicate,
    Refusal,
    Reply,
    refuse,
)
from tracker_agent.testing.state import Customer, CustomerStore, event_view, require_customer_ids

DEFAULT_MAX_BATCH_COMMANDS = 50
#: The commands that carry an object "data" (the ones reject_commands judges).
TRACKING_COMMANDS = frozenset({"customers/events", "customers"})
ANALYSIS_KINDS = ("report", "funnel", "segmentation")
ANALYSIS_FORMAT = "table_json"
EXPORT_FORMAT = "native_json"
BODY_METHODS = frozenset({"POST", "PUT"})
#: attribute type -> the key of the attribute object that names it
ATTRIBUTE_KEYS = {
    "property": "property",
    "consent": "category",
    "id": "id",
    "segmentation": "id",
    "aggregate": "id",
    "prediction": "id",
    "expression": "id",
}
NO_PERMISSION = "No permission"


def _route(
    api: str, tail: str, methods: dict[str, str]
) -> tuple[str, re.Pattern[str], dict[str, str]]:
    return api, re.compile(rf"/{api}/v2/projects/(?P<token>[^/]+)/{tail}"), methods


_ITEM = r"catalogs/(?P<catalog>[^/]+)/items/(?P<item>[^/]+)"
# (api, path pattern, {HTTP method: handler}); "x.y" handlers live on the CatalogStore.
_ROUTES = [
    _route("track", "customers/events", {"POST": "track_event"}),
    _route("track", "customers", {"POST": "update_customer"}),
    _route("track", "system/time", {"GET": "system_time"}),
    _route("track", "batch", {"POST": "batch"}),
    _route("data", "customers/export-one", {"POST": "export_one"}),
    _route("data", "customers/attributes", {"POST": "attributes"}),
    _route("data", "customers/export", {"POST": "export"}),
    _route("data", "customers/events", {"POST": "customer_events"}),
    _route("data", "customers/anonymize", {"POST": "anonymize"}),
    _route("data", "catalogs", {"GET": "c.list_catalogs", "POST": "c.create"}),
    _route(
        "data",
        "catalogs/(?P<catalog>[^/]+)",
        {"GET": "c.get", "PUT": "c.update", "DELETE": "c.delete"},
    ),
    _route(
        "data",
        "catalogs/(?P<catalog>[^/]+)/items",
        {"GET": "c.list_items", "DELETE": "c.delete_items"},
    ),
    _route("data", _ITEM, {"GET": "c.get_item", "PUT": "c.put_item", "DELETE": "c.delete_item"}),
    _route("data", _ITEM + "/partial-update", {"POST": "c.patch_item"}),
    _route("data", "analyses/(?P<kind>report|funnel|segmentation)", {"POST": "analysis"}),
]


def _find_route(path: str) -> tuple[str, re.Match[str], dict[str, str]]:
    for api, pattern, methods in _ROUTES:
        match = pattern.fullmatch(path)
        if match:
            return api, match, methods
    raise refuse(404, "Not found")


def _failure(*errors: str) -> dict[str, Any]:
    return {"success": False, "errors": list(errors)}


class Emulator:
    """State and behaviour of one emulated project. Not locked: FakeExponea serialises calls."""

    def __init__(
        self,
        *,
        project_token: str,
        username: str,
        password: str,
        public_key: str,
        now: Callable[[], float],
    ) -> None:
        self.project_token = project_token
        self.username = username
        self.password = password
        self.public_key = public_key
        self.now = now
        self.store = CustomerStore()
        self.catalogs = CatalogStore()
        self.attribute_values: dict[tuple[str, str], Any] = {}
        self.denied_attributes: set[tuple[str, str]] = set()
        self.analyses: dict[tuple[str, str], dict[str, Any]] = {}
        self.reset()

    def reset(self) -> None:
        self.store.clear()
        self.catalogs.clear()
        self.attribute_values.clear()
        self.denied_attributes.clear()
        self.analyses.clear()
        self.revoked = False
        self.max_batch_commands = DEFAULT_MAX_BATCH_COMMANDS
        self.reject_command: tuple[Predicate, str] | None = None
        self.reject_batch: tuple[Predicate, int, str] | None = None

    # -- routing and authentication -------------------------------------------------------

    def dispatch(self, call: Call) -> Reply:
        """Answer one request: (status, JSON body)."""
        try:
            return self._dispatch(call)
        except Refusal as refusal:
            return refusal.reply
        except CommandError as exc:
            return 400, _failure(*exc.errors)

    def _dispatch(self, call: Call) -> Reply:
        api, match, methods = _find_route(call.path)
        handler = methods.get(call.method)
        if handler is None:
            raise refuse(405, "Method not allowed")
        if handler != "system_time":  # like the real API, system/time needs no credentials
            self._authenticate(call.headers, allow_token=api == "track")
        if unquote(match["token"]) != self.project_token:
            raise refuse(400, "Invalid project id")
        if call.method in BODY_METHODS and call.body is None:
            raise refuse(400, "Request body must be a JSON object")
        params = {k: unquote(v) for k, v in match.groupdict().items() if k != "token"}
        owner, _, name = handler.rpartition(".")
        target: Any = self.catalogs if owner else self
        result: Reply = getattr(target, name if owner else "_" + name)(call, **params)
        return result

    def _authenticate(self, headers: Mapping[str, str], *, allow_token: bool) -> None:
        scheme, _, credentials = headers.get("Authorization", "").partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        accepted = False
        if scheme == "basic":
            try:
                decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            accepted = decoded == f"{self.username}:{self.password}"
        elif scheme == "token" and allow_token:
            accepted = credentials == self.public_key
        if self.revoked or not accepted:
            raise refuse(401, "Could not authenticate")

    # -- tracking --------------------------------------------------------------------------

    def run_command(self, command: Any) -> dict[str, Any]:
        """One batch command's result, with its command_id echoed."""
        if not isinstance(command, dict):
            return _failure("command must be an object")
        name, data = command.get("name"), command.get("data")
        rejection = self._rejection(command)
        if rejection is not None:
            result = _failure(rejection)
        elif name == "system/time":
            result = {"success": True, "time": self.now()}
        elif name not in TRACKING_COMMANDS:
            result = _failure(f"unknown command name: {name!r}")
        elif not isinstance(data, dict):
            result = _failure("data must be an object")
        else:
            try:
                if name == "customers":
                    self.store.update_customer(data, self.now())
                else:
                    self.store.track_event(data, self.now())
                result = {"success": True}
            except CommandError as exc:
                result = _failure(*exc.errors)
        if "command_id" in command:
            result["command_id"] = command["command_id"]
        return result

    def _rejection(self, command: dict[str, Any]) -> str | None:
        """reject_commands' error for `command`, or None; it judges only tracking commands
        whose data is an object (system/time has none)."""
        if self.reject_command is None:
            return None
        judged = command.get("name") in TRACKING_COMMANDS and isinstance(command.get("data"), dict)
        if not judged:
            return None
        predicate, error = self.reject_command
        return error if predicate(command) else None

    def _single(self, name: str, call: Call) -> Reply:
        result = self.run_command({"name": name, "data": call.data})
        if result["success"]:
            return 200, {"success": True, "errors": []}
        return 400, result

    def _track_event(self, call: Call) -> Reply:
        return self._single("customers/events", call)

    def _update_customer(self, call: Call) -> Reply:
        return self._single("customers", call)

    def _system_time(self, call: Call) -> Reply:
        return 200, {"success": True, "errors": [], "time": self.now()}

    def _batch(self, call: Call) -> Reply:
        commands = call.data.get("commands")
        if commands is None:
            raise refuse(400, "commands is required")
        if not isinstance(commands, list):
            raise refuse(400, "commands must be a list")
        if len(commands) > self.max_batch_commands:
            raise refuse(400, "too many commands")
        if self.reject_batch is not None:
            predicate, status, error = self.reject_batch
            if any(isinstance(command, dict) and predicate(command) for command in commands):
                raise refuse(status, error)
        start = self.now()
        results = [self.run_command(command) for command in commands]
        end = self.now()
        return 200, {"success": True, "results": results, "start_time": start, "end_time": end}

    # -- customer data ---------------------------------------------------------------------

    def _customer(self, call: Call) -> Customer:
        customer = self.store.find(require_customer_ids(call.data))
        if customer is None:
            raise Refusal(404, {"_global": ["Customer does not exist"]})
        return customer

    def _export_one(self, call: Call) -> Reply:
        return 200, {"success": True, **self._customer(call).snapshot(with_events=True)}

    def _attributes(self, call: Call) -> Reply:
        customer = self._customer(call)
        attributes = call.data.get("attributes")
        if not isinstance(attributes, list):
            raise refuse(400, "attributes is required")
        return 200, {"success": True, "results": [self._attribute(customer, a) for a in attributes]}

    def _attribute(self, customer: Customer, attribute: Any) -> dict[str, Any]:
        kind = attribute.get("type") if isinstance(attribute, dict) else None
        if kind not in ATTRIBUTE_KEYS:
            return _failure(f"unknown attribute type: {kind!r}")
        key = attribute.get(ATTRIBUTE_KEYS[kind])
        if not isinstance(key, str):
            return _failure(f"{ATTRIBUTE_KEYS[kind]} is required")
        if (kind, key) in self.denied_attributes:
            return {"success": False, "error": NO_PERMISSION, "errors": [NO_PERMISSION]}
        if (kind, key) in self.attribute_values:
            value = self.attribute_values[(kind, key)]
        elif kind == "property":
            value = customer.properties.get(key)
        elif kind == "id":
            value = customer.ids.get(key)
        elif kind == "consent":
            value = self.store.consent(customer, key, self.now())
        else:
            value = None
        return {"success": True, "value": value}

    def _export(self, call: Call) -> Reply:
        export_format = call.data.get("format")
        if export_format is None:
            raise refuse(400, "format is required")
        if export_format != EXPORT_FORMAT:
            raise refuse(400, f"format must be {EXPORT_FORMAT!r}")
        return 200, self.store.export()

    def _customer_events(self, call: Call) -> Reply:
        customer = self._customer(call)
        types = call.data.get("event_types")
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            raise refuse(400, "event_types is required")
        events = [event_view(e) for e in customer.sorted_events() if e["event_type"] in types]
        return 200, {"success": True, "data": events}

    def _anonymize(self, call: Call) -> Reply:
        self.store.remove(self._customer(call))
        return 200, {"success": True}

    # -- analyses --------------------------------------------------------------------------

    def _analysis(self, call: Call, kind: str) -> Reply:
        analysis_id = call.data.get("analysis_id")
        if not isinstance(analysis_id, str) or not analysis_id:
            raise refuse(400, "analysis_id is required")
        if call.data.get("format") != ANALYSIS_FORMAT:
            raise refuse(400, f"format must be {ANALYSIS_FORMAT!r}")
        analysis = self.analyses.get((kind, analysis_id))
        if analysis is None:
            raise refuse(404, "Analysis not found")
        return 200, {"success": True, **analysis}
