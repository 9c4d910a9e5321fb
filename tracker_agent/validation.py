"""Strict checks and JSON normalisation of everything we send to the tracking API.

Used by the client before any request and by the outbox before anything is stored, so a
command that passes here is plain JSON that the API's size limits accept.

Conversion rule (the only one): values that are not JSON types are converted as follows, and
every other object is refused:

    datetime (timezone-aware)  -> POSIX timestamp, float seconds (naive datetimes are refused:
                                  their instant is ambiguous)
    date                       -> "YYYY-MM-DD"
    Decimal (finite)           -> int when integral, else float
    UUID                       -> its canonical string
    tuple                      -> list
    subclasses of str/int/float/dict/list (enums, OrderedDict, ...) -> the plain base type

NaN and +/-Infinity are refused everywhere (JSON has no such values).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from uuid import UUID

from tracker_agent.constants import (
    COMMAND_NAMES,
    EVENT_COMMAND,
    MAX_BATCH_COMMANDS,
    MAX_COMMAND_BYTES,
    MAX_PROPERTY_VALUE_BYTES,
    SYSTEM_TIME_COMMAND,
)
from tracker_agent.exceptions import ValidationError, ValidationTypeError
from tracker_agent.wire import NestingTooDeep, dumps

__all__ = [
    "MAX_COMMAND_BYTES",
    "MAX_PROPERTY_VALUE_BYTES",
    "MAX_BATCH_COMMANDS",
    "MAX_NESTING_DEPTH",
    "MAX_TIMESTAMP_SECONDS",
    "COMMAND_NAMES",
    "normalize_customer_ids",
    "normalize_event_type",
    "normalize_properties",
    "normalize_timestamp",
    "event_command",
    "customer_command",
    "normalize_batch_command",
    "loads",
    "check_command_size",
]

MAX_NESTING_DEPTH = 32
"""Deepest nesting of lists/dicts accepted in properties (also stops reference cycles)."""
MAX_TIMESTAMP_SECONDS = 4_102_444_800.0
"""2100-01-01 UTC. A larger timestamp is almost surely milliseconds; the API wants seconds."""
TIMESTAMP_DECIMALS = 6
MAX_NUMBER_EXPONENT = 4000  # digits; json.dumps refuses ints over 4300 digits
MAX_INT_BITS = 13_000  # about 3900 digits


_EVENT_KEYS = frozenset({"customer_ids", "event_type", "properties", "timestamp"})
_CUSTOMER_KEYS = frozenset({"customer_ids", "properties", "update_timestamp"})
_COMMAND_KEYS = frozenset({"name", "data", "command_id"})


def _type_name(value: object) -> str:
    return type(value).__name__


def normalize_customer_ids(value: object, field: str = "customer_ids") -> dict[str, str | int]:
    """Return a plain copy of customer ids: a non-empty dict of non-empty str -> str or int."""
    if type(value) is not dict and not isinstance(value, Mapping):
        raise ValidationTypeError(field, f"expected a dict, got {_type_name(value)}")
    if not value:
        raise ValidationError(field, "must name at least one customer id")
    result: dict[str, str | int] = {}
    for key, item in value.items():
        if type(key) is str and key and type(item) is str and item:  # the common case
            result[key] = item
            continue
        if not isinstance(key, str):
            raise ValidationTypeError(field, f"keys must be str, got {_type_name(key)}")
        if not key:
            raise ValidationError(field, "id names must not be empty")
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            path = f"{field}[{key!r}]"
            raise ValidationTypeError(path, f"expected str or int, got {_type_name(item)}")
        if isinstance(item, str):
            if not item:
                raise ValidationError(f"{field}[{key!r}]", "must not be empty")
            result[str.__str__(key)] = str.__str__(item)
        else:
            result[str.__str__(key)] = int(item)
    return result


def normalize_event_type(value: object, field: str = "event_type") -> str:
    """Return the event type: a str that is not empty or only whitespace."""
    if not isinstance(value, str):
        raise ValidationTypeError(field, f"expected str, got {_type_name(value)}")
    if not value or value.isspace():
        raise ValidationError(field, "must not be empty")
    return str.__str__(value)


def _aware_timestamp(value: _dt.datetime, field: str) -> float:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(field, "naive datetime refused; attach a timezone")
    return value.timestamp()


def _normalize_value(value: Any, path: str, depth: int) -> Any:
    # Exact JSON types first: the common case stays cheap.
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            raise ValidationError(path, "integer too large for a JSON number")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(path, "NaN and Infinity are not JSON")
        return float(value)
    if isinstance(value, (dict, list, tuple)):
        if depth >= MAX_NESTING_DEPTH:
            raise ValidationError(path, f"nested deeper than {MAX_NESTING_DEPTH} levels")
        if isinstance(value, dict):
            return _normalize_mapping(value, path, depth + 1)
        return [_normalize_value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    return _convert(value, path)


def _convert(value: Any, path: str) -> Any:
    if isinstance(value, _dt.datetime):
        return _aware_timestamp(value, path)
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        if not value.is_finite() or value.adjusted() > MAX_NUMBER_EXPONENT:
            raise ValidationError(path, "NaN, Infinity and out-of-range Decimals are not JSON")
        if value == value.to_integral_value():
            return int(value)
        number = float(value)
        if not math.isfinite(number):
            raise ValidationError(path, "NaN, Infinity and out-of-range Decimals are not JSON")
        return number
    if isinstance(value, UUID):
        return str(value)
    raise ValidationTypeError(path, f"{_type_name(value)} is not a JSON value")


def _normalize_mapping(value: Mapping[Any, Any], path: str, depth: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, item in value.items():
        if type(key) is not str:
            if not isinstance(key, str):
                raise ValidationTypeError(path, f"keys must be str, got {_type_name(key)}")
            key = str.__str__(key)
        kind = type(item)  # exact JSON scalars: nothing to convert, no error path to build
        # One arm per kind, cheapest test first: the hot path of every tracking call.
        if kind is str or kind is bool or item is None:  # noqa: SIM114
            result[key] = item
        elif kind is float and math.isfinite(item):  # noqa: SIM114
            result[key] = item
        elif kind is int and item.bit_length() <= MAX_INT_BITS:
            result[key] = item
        else:
            result[key] = _normalize_value(item, f"{path}[{key!r}]", depth)
    return result


#: An ASCII str shorter than this cannot reach MAX_PROPERTY_VALUE_BYTES as JSON (a character
#: is at most 6 bytes, "\\u001f", plus 2 quotes): no need to serialise it to measure it.
_SHORT_ASCII = (MAX_PROPERTY_VALUE_BYTES - 2) // 6


def normalize_properties(value: object, field: str = "properties") -> dict[str, Any]:
    """Return a plain-JSON copy of a properties dict, converted by the module's rule.

    Raises ValidationTypeError for non-JSON objects and ValidationError for NaN/Infinity,
    too deep nesting or a top-level value whose JSON is MAX_PROPERTY_VALUE_BYTES or more.
    """
    if type(value) is not dict and not isinstance(value, Mapping):
        raise ValidationTypeError(field, f"expected a dict, got {_type_name(value)}")
    result = _normalize_mapping(value, field, 0)
    for key, item in result.items():
        if type(item) is str and len(item) < _SHORT_ASCII and item.isascii():
            continue
        if isinstance(item, (str, list, dict)):
            size = _json_size(item, f"{field}[{key!r}]")
            if size >= MAX_PROPERTY_VALUE_BYTES:
                raise ValidationError(
                    f"{field}[{key!r}]",
                    f"value is {size} bytes as JSON; the API limit is {MAX_PROPERTY_VALUE_BYTES}",
                )
    return result


def normalize_timestamp(value: object, field: str = "timestamp") -> float:
    """Return POSIX seconds rounded to 6 decimals from a number >= 0 or an aware datetime."""
    if isinstance(value, _dt.datetime):
        seconds = _aware_timestamp(value, field)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationTypeError(field, f"expected seconds or datetime, got {_type_name(value)}")
    else:
        try:
            seconds = float(value)
        except OverflowError as exc:
            raise ValidationError(field, "too large: give seconds, not milliseconds") from exc
    if not math.isfinite(seconds):
        raise ValidationError(field, "NaN and Infinity are not timestamps")
    if seconds < 0:
        raise ValidationError(field, "must not be negative")
    if seconds >= MAX_TIMESTAMP_SECONDS:
        raise ValidationError(field, "too large: give seconds, not milliseconds")
    rounded = round(seconds, TIMESTAMP_DECIMALS)
    if rounded >= MAX_TIMESTAMP_SECONDS:  # 4102444799.9999997 rounds up to the limit
        raise ValidationError(field, "too large: give seconds, not milliseconds")
    return rounded


def loads(text: str, field: str) -> Any:
    """json.loads for input from outside (a file, a command line).

    Input nested too deeply for the parser raises ValidationError naming `field` (never
    RecursionError); other malformed JSON raises json.JSONDecodeError (a ValueError) as usual.
    """
    try:
        return json.loads(text)
    except RecursionError:  # the C scanner recurses once per level of nesting
        raise ValidationError(field, f"nested deeper than {MAX_NESTING_DEPTH} levels") from None


def _json_size(obj: Any, field: str) -> int:
    try:
        return len(dumps(obj).encode("utf-8"))
    except NestingTooDeep:
        raise ValidationError(field, f"nested deeper than {MAX_NESTING_DEPTH} levels") from None
    except UnicodeEncodeError as exc:
        raise ValidationError(field, "contains text that is not valid Unicode") from exc
    except (TypeError, ValueError) as exc:
        raise ValidationTypeError(field, "is not JSON serialisable") from exc


def check_command_size(data: Any, field: str = "command") -> int:
    """Return the UTF-8 JSON size of `data` in bytes; raise when it reaches MAX_COMMAND_BYTES."""
    size = _json_size(data, field)
    if size >= MAX_COMMAND_BYTES:
        raise ValidationError(
            field, f"is {size} bytes as JSON; the API limit is {MAX_COMMAND_BYTES}"
        )
    return size


def event_command(
    customer_ids: object,
    event_type: object,
    properties: object = None,
    timestamp: object = None,
    *,
    check_size: bool = True,
) -> dict[str, Any]:
    """Validated "data" of a customers/events command. No timestamp: the server's clock.
    check_size=False: the caller serialises the data once and checks its size itself."""
    data: dict[str, Any] = {
        "customer_ids": normalize_customer_ids(customer_ids),
        "event_type": normalize_event_type(event_type),
        "properties": {} if properties is None else normalize_properties(properties),
    }
    if timestamp is not None:
        data["timestamp"] = normalize_timestamp(timestamp)
    if check_size:
        check_command_size(data)
    return data


def customer_command(
    customer_ids: object,
    properties: object,
    update_timestamp: object = None,
    *,
    check_size: bool = True,
) -> dict[str, Any]:
    """Validated "data" of a customers (property update) command."""
    data: dict[str, Any] = {
        "customer_ids": normalize_customer_ids(customer_ids),
        "properties": normalize_properties(properties),
    }
    if update_timestamp is not None:
        data["update_timestamp"] = normalize_timestamp(update_timestamp, "update_timestamp")
    if check_size:
        check_command_size(data)
    return data


def _check_keys(data: Mapping[Any, Any], allowed: frozenset[str], field: str) -> None:
    if allowed.issuperset(data):
        return
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise ValidationError(field, f"unknown keys {unknown}; allowed: {sorted(allowed)}")


def _normalize_data(
    name: str, data: Mapping[Any, Any], field: str, check_size: bool
) -> dict[str, Any]:
    try:
        if name == EVENT_COMMAND:
            _check_keys(data, _EVENT_KEYS, field)
            return event_command(
                data.get("customer_ids"),
                data.get("event_type"),
                data.get("properties"),
                data.get("timestamp"),
                check_size=check_size,
            )
        _check_keys(data, _CUSTOMER_KEYS, field)
        return customer_command(
            data.get("customer_ids"),
            data.get("properties"),
            data.get("update_timestamp"),
            check_size=check_size,
        )
    except ValidationError as exc:
        if exc.field == field:
            raise
        # Name the key inside the command: "commands[3]['data']['properties']['price']".
        head, bracket, rest = exc.field.partition("[")
        where = field if head == "command" else f"{field}[{head!r}]{bracket}{rest}"
        raise type(exc)(where, exc.reason) from exc


def normalize_batch_command(
    cmd: object, field: str = "command", *, check_size: bool = True
) -> dict[str, Any]:
    """Validate a raw batch command {"name", "data"[, "command_id"]} and return a clean copy.

    Accepts the seed SDK's builders' output (None for an absent properties/timestamp).
    check_size=False: the caller serialises the data once and checks its size itself.
    """
    if not isinstance(cmd, Mapping):
        raise ValidationTypeError(field, f"expected a dict, got {_type_name(cmd)}")
    _check_keys(cmd, _COMMAND_KEYS, field)
    name = cmd.get("name")
    if name not in COMMAND_NAMES:
        raise ValidationError(f"{field}['name']", f"must be one of {sorted(COMMAND_NAMES)}")
    result: dict[str, Any] = {"name": name}
    data = cmd.get("data")
    data_field = f"{field}['data']"
    if name == SYSTEM_TIME_COMMAND:
        if data:
            raise ValidationError(data_field, "system/time takes no data")
    elif not isinstance(data, Mapping):
        raise ValidationTypeError(data_field, f"expected a dict, got {_type_name(data)}")
    else:
        result["data"] = _normalize_data(name, data, data_field, check_size)
    if cmd.get("command_id") is not None:
        command_id = cmd["command_id"]
        if not isinstance(command_id, str) or not command_id:
            raise ValidationError(f"{field}['command_id']", "must be a non-empty str")
        result["command_id"] = command_id
    return result
