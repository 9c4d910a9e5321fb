"""The Tracking API: events, customer property updates, system time and batches."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

from tracker_agent.api import Namespace
from tracker_agent.constants import (
    COMMAND_NAMES,
    CUSTOMER_COMMAND,
    EVENT_COMMAND,
    MAX_BATCH_COMMANDS,
    SYSTEM_TIME_COMMAND,
)
from tracker_agent.exceptions import InvalidResponseError, ValidationError, ValidationTypeError
from tracker_agent.responses import parse_error_messages
from tracker_agent.validation import customer_command, event_command, normalize_batch_command

__all__ = [
    "Tracking",
    "align_batch_results",
    "check_results_readable",
    "sdk_event_command",
    "MISSING_RESULT_ERROR",
]

MISSING_RESULT_ERROR = "no result returned"


def sdk_event_command(data: Mapping[str, Any], properties: object) -> dict[str, Any]:
    """The batch command exponea-python-sdk's add_event(batch=True) returned, for validated
    event `data` (what `properties` the caller passed tells None from {}): all four keys, in
    its order, None for a timestamp or properties left out. batch_commands reads None as
    absent; the payload sent stays normalised."""
    return {
        "name": EVENT_COMMAND,
        "data": {
            "customer_ids": data["customer_ids"],
            "timestamp": data.get("timestamp"),
            "properties": None if properties is None else data["properties"],
            "event_type": data["event_type"],
        },
    }


def _is_mapping(raw: object) -> TypeGuard[Mapping[str, Any]]:
    """isinstance(raw, Mapping), without the ABC check for a plain dict (what JSON gives):
    three checks per command on every batch answer."""
    return type(raw) is dict or isinstance(raw, Mapping)


def _result(command_id: str, raw: object) -> dict[str, Any]:
    if not _is_mapping(raw):
        return {
            "command_id": command_id,
            "success": False,
            "errors": [MISSING_RESULT_ERROR],
            "missing": True,
        }
    if raw.get("success") is True and not raw.get("errors") and "time" not in raw:
        return {"command_id": command_id, "success": True, "errors": []}
    result: dict[str, Any] = {
        "command_id": command_id,
        "success": raw.get("success") is True,
        "errors": parse_error_messages(raw),
    }
    when = raw.get("time")
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        result["time"] = float(when)
    return result


def align_batch_results(
    command_ids: Sequence[str], results: Sequence[object]
) -> list[dict[str, Any]]:
    """One result per command id, in the commands' order.

    A result is matched by its echoed "command_id", else by position (when the result at that
    position carries no other command's id). Every returned result is
    {"command_id", "success": bool, "errors": [str], "time"?: float}. A command without a
    result gets {"success": False, "errors": [MISSING_RESULT_ERROR], "missing": True}: the
    server may or may not have applied it. Tracking.send_batch checks the answer with
    check_results_readable first, so there this happens only with one result per command.
    """
    by_id = {
        raw["command_id"]: raw
        for raw in results
        if _is_mapping(raw) and isinstance(raw.get("command_id"), str)
    }
    aligned = []
    for index, command_id in enumerate(command_ids):
        raw = by_id.get(command_id)
        if raw is None and index < len(results):
            candidate = results[index]
            if _is_mapping(candidate) and candidate.get("command_id") in (None, command_id):
                raw = candidate
        aligned.append(_result(command_id, raw))
    return aligned


def check_results_readable(command_ids: Sequence[str], results: Sequence[object]) -> str | None:
    """Why a batch answer cannot be read, or None when it can.

    With one result per command, results match by echoed command_id, else by position, and a
    command left without one (its slot echoes another command's id) is retried alone
    (align_batch_results marks it "missing"). With a different number of results, positions
    mean nothing: unless every command finds its result by echoed command_id, the answer is
    unreadable, and the whole batch is retried (settling nothing from it), so a mangled answer
    can never dead-letter or drop a command on the strength of another command's result.
    """
    if len(results) == len(command_ids):
        return None
    echoed = {
        raw.get("command_id")
        for raw in results
        if _is_mapping(raw) and isinstance(raw.get("command_id"), str)
    }
    unmatched = sum(1 for command_id in command_ids if command_id not in echoed)
    if not unmatched:
        return None
    return (
        f"{len(results)} results for {len(command_ids)} commands, "
        f"{unmatched} of them not matched by command_id"
    )


def _check_sendable(commands: object) -> list[str]:
    if isinstance(commands, (str, bytes)) or not isinstance(commands, Sequence):
        raise ValidationTypeError("commands", f"expected a list, got {type(commands).__name__}")
    if not commands:
        raise ValidationError("commands", "a batch needs at least one command")
    if len(commands) > MAX_BATCH_COMMANDS:
        raise ValidationError(
            "commands", f"{len(commands)} commands; the API takes at most {MAX_BATCH_COMMANDS}"
        )
    ids: list[str] = []
    for index, command in enumerate(commands):
        field = f"commands[{index}]"
        if not isinstance(command, Mapping) or command.get("name") not in COMMAND_NAMES:
            raise ValidationError(field, f"expected a dict named one of {sorted(COMMAND_NAMES)}")
        command_id = command.get("command_id")
        if not isinstance(command_id, str) or not command_id:
            raise ValidationError(f"{field}['command_id']", "must be a non-empty str")
        ids.append(command_id)
    if len(set(ids)) != len(ids):
        raise ValidationError("commands", "command_id values must be unique within a batch")
    return ids


class Tracking(Namespace):
    """POST /track/v2/projects/{token}/...: accepts the public key as well as the private one."""

    path_prefix = "/track/v2/projects/{token}"
    public_key_ok = True

    def get_system_time(self, batch: bool = False, *, retry: bool = True) -> float | dict[str, Any]:
        """The server's time in POSIX seconds, or the batch command asking for it. With
        retry=False, one request only (the drain's reachability probe: no read retries)."""
        if batch:
            return {"name": SYSTEM_TIME_COMMAND}
        response = self._call("GET", "/system/time", read=retry, require={"time": (int, float)})
        return float(response["time"])

    def update_customer_properties(
        self,
        customer_ids: Mapping[str, str | int],
        properties: Mapping[str, Any],
        batch: bool = False,
        *,
        update_timestamp: Any = None,
    ) -> bool | dict[str, Any]:
        """Merge `properties` into the customer; True on success, or the batch command
        {"name": "customers", "data": {"customer_ids", "properties"}} ("update_timestamp" too
        when given), exponea-python-sdk's shape."""
        data = customer_command(customer_ids, properties, update_timestamp)
        if batch:
            return {"name": CUSTOMER_COMMAND, "data": data}
        self._call("POST", "/customers", json=data)
        return True

    def add_event(
        self,
        customer_ids: Mapping[str, str | int],
        event_type: str,
        properties: Mapping[str, Any] | None = None,
        timestamp: Any = None,
        batch: bool = False,
    ) -> bool | dict[str, Any]:
        """Track one event; True on success, or the batch command (exponea-python-sdk's shape,
        see sdk_event_command). No timestamp: server time."""
        data = event_command(customer_ids, event_type, properties, timestamp)
        if batch:
            return sdk_event_command(data, properties)
        self._call("POST", "/customers/events", json=data)
        return True

    def send_batch(self, commands: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Exactly one POST /batch of 1..50 commands, each with a unique "command_id".

        Commands are sent as given (validate them with normalize_batch_command first). Never
        retried or split. Returns one result per command in input order (see
        align_batch_results); a failure of the whole request raises an APIException, and so
        does an answer with a wrong number of results (see check_results_readable).
        """
        command_ids = _check_sendable(commands)
        payload = {"commands": [dict(command) for command in commands]}
        response = self._call("POST", "/batch", json=payload, require={"results": list})
        return self._read_results(command_ids, response["results"])

    def send_stored_batch(self, stored: Sequence[tuple[str, str, str]]) -> list[dict[str, Any]]:
        """One POST /batch of (name, data as compact JSON text, command_id): the outbox's
        payloads, validated at enqueue, go out as stored (no parse, no re-encode)."""
        parts = [
            f'{{"name":"{name}","data":{data},"command_id":"{command_id}"}}'
            for name, data, command_id in stored
        ]
        body = ('{"commands":[' + ",".join(parts) + "]}").encode("utf-8")
        response = self._call("POST", "/batch", body=body, require={"results": list})
        return self._read_results([c for _, _, c in stored], response["results"])

    def _read_results(
        self, command_ids: Sequence[str], results: Sequence[object]
    ) -> list[dict[str, Any]]:
        """Aligned results, or InvalidResponseError (retryable) if the answer is unreadable."""
        problem = check_results_readable(command_ids, results)
        if problem:
            raise InvalidResponseError(
                problem, status_code=200, method="POST", path=self._base + "/batch"
            )
        return align_batch_results(command_ids, results)

    def batch_commands(self, commands: Sequence[Mapping[str, Any]]) -> list[bool | float]:
        """Send commands in batches of 50; per command True/False, or the time for system/time.

        Every command is validated before anything is sent. A command_id is added to those
        without one. If a later batch fails as a whole the exception is raised; the batches
        before it were delivered.
        """
        if isinstance(commands, (str, bytes)) or not isinstance(commands, Sequence):
            raise ValidationTypeError("commands", f"expected a list, got {type(commands).__name__}")
        prepared = []
        for index, command in enumerate(commands):
            normalized = normalize_batch_command(command, f"commands[{index}]")
            normalized.setdefault("command_id", uuid.uuid4().hex)
            prepared.append(normalized)
        if len({command["command_id"] for command in prepared}) != len(prepared):
            raise ValidationError("commands", "command_id values must be unique")
        outcome: list[bool | float] = []
        for start in range(0, len(prepared), MAX_BATCH_COMMANDS):
            for result in self.send_batch(prepared[start : start + MAX_BATCH_COMMANDS]):
                outcome.append(
                    result["time"] if result["success"] and "time" in result else result["success"]
                )
        return outcome
