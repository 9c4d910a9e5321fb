"""tracker_agent.validation: strict checks and the one JSON conversion rule."""

from __future__ import annotations

import datetime as dt
import enum
import json
from collections import OrderedDict
from decimal import Decimal
from uuid import UUID

import pytest

from tracker_agent.exceptions import ValidationError, ValidationTypeError
from tracker_agent.validation import (
    MAX_COMMAND_BYTES,
    MAX_NESTING_DEPTH,
    MAX_PROPERTY_VALUE_BYTES,
    check_command_size,
    customer_command,
    event_command,
    loads,
    normalize_batch_command,
    normalize_customer_ids,
    normalize_event_type,
    normalize_properties,
    normalize_timestamp,
)
from tracker_agent.wire import dumps

UTC = dt.timezone.utc


class Color(str, enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


# --- customer_ids -----------------------------------------------------------------------------


def test_customer_ids_accepts_str_and_int_values_and_returns_a_plain_copy():
    source = OrderedDict(registered="test", user_id=42)
    result = normalize_customer_ids(source)
    assert result == {"registered": "test", "user_id": 42}
    assert type(result) is dict and result is not source


@pytest.mark.parametrize(
    ("value", "error", "field"),
    [
        ({}, ValidationError, "customer_ids"),
        (None, ValidationTypeError, "customer_ids"),
        ([("registered", "x")], ValidationTypeError, "customer_ids"),
        ({"registered": ""}, ValidationError, "customer_ids['registered']"),
        ({"registered": True}, ValidationTypeError, "customer_ids['registered']"),
        ({"registered": 1.5}, ValidationTypeError, "customer_ids['registered']"),
        ({"registered": None}, ValidationTypeError, "customer_ids['registered']"),
        ({"": "x"}, ValidationError, "customer_ids"),
        ({1: "x"}, ValidationTypeError, "customer_ids"),
    ],
)
def test_customer_ids_refuses_bad_shapes_naming_the_field(value, error, field):
    with pytest.raises(error) as info:
        normalize_customer_ids(value)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_customer_ids_type_errors_are_also_python_type_errors():
    with pytest.raises(TypeError):
        normalize_customer_ids("registered")


# --- event_type ----------------------------------------------------------------------------


def test_event_type_keeps_a_non_empty_str():
    assert normalize_event_type("purchase") == "purchase"
    assert type(normalize_event_type(Color.RED)) is str


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("", ValidationError),
        ("  ", ValidationError),
        (None, ValidationTypeError),
        (1, ValidationTypeError),
    ],
)
def test_event_type_refuses_empty_or_non_str(value, error):
    with pytest.raises(error) as info:
        normalize_event_type(value)
    assert info.value.field == "event_type"


# --- properties: conversion rule ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, True),
        (3, 3),
        (2.5, 2.5),
        ("text", "text"),
        ([1, "a", None], [1, "a", None]),
        ((1, 2), [1, 2]),
        ({"nested": {"deep": [1.5]}}, {"nested": {"deep": [1.5]}}),
        (dt.datetime(2018, 8, 7, 17, 34, 43, 500000, tzinfo=UTC), 1533663283.5),
        (
            dt.datetime(2018, 8, 7, 19, 34, 43, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            1533663283.0,
        ),
        (dt.date(2018, 8, 7), "2018-08-07"),
        (Decimal("10"), 10),
        (Decimal("1E+2"), 100),
        (Decimal("1E+400"), 10**400),  # integral: an exact JSON integer
        (Decimal("19.99"), 19.99),
        (UUID("12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678"),
        (Color.RED, "red"),
        (Level.HIGH, 3),
        (OrderedDict(a=1), {"a": 1}),
    ],
)
def test_properties_convert_by_the_documented_rule(value, expected):
    result = normalize_properties({"value": value})["value"]
    assert result == expected
    assert type(result) is type(expected)


def test_properties_output_is_plain_json_that_round_trips():
    props = {"when": dt.datetime(2020, 1, 1, tzinfo=UTC), "price": Decimal("9.5"), "tags": ("a",)}
    result = normalize_properties(props)
    assert (
        json.loads(dumps(result)) == result == {"when": 1577836800.0, "price": 9.5, "tags": ["a"]}
    )


@pytest.mark.parametrize(
    ("props", "error", "field"),
    [
        ({"price": float("nan")}, ValidationError, "properties['price']"),
        ({"price": float("inf")}, ValidationError, "properties['price']"),
        ({"price": Decimal("NaN")}, ValidationError, "properties['price']"),
        ({"price": Decimal("1" * 400 + ".5")}, ValidationError, "properties['price']"),
        ({"nested": {"x": [1, float("-inf")]}}, ValidationError, "properties['nested']['x'][1]"),
        ({"when": dt.datetime(2020, 1, 1)}, ValidationError, "properties['when']"),
        ({"obj": object()}, ValidationTypeError, "properties['obj']"),
        ({"set": {1, 2}}, ValidationTypeError, "properties['set']"),
        ({"raw": b"bytes"}, ValidationTypeError, "properties['raw']"),
        ({1: "int key"}, ValidationTypeError, "properties"),
        ({"d": {2: "int key"}}, ValidationTypeError, "properties['d']"),
    ],
)
def test_properties_refuse_non_json_values_naming_the_path(props, error, field):
    with pytest.raises(error) as info:
        normalize_properties(props)
    assert info.value.field == field


def test_properties_must_be_a_dict():
    with pytest.raises(ValidationTypeError) as info:
        normalize_properties([("a", 1)])
    assert info.value.field == "properties"


def test_properties_refuse_a_reference_cycle_instead_of_recursing_forever():
    looped: dict = {}
    looped["self"] = looped
    with pytest.raises(ValidationError, match="nested deeper"):
        normalize_properties({"loop": looped})


def test_properties_accept_nesting_up_to_the_limit():
    value: object = "leaf"
    for _ in range(MAX_NESTING_DEPTH):
        value = [value]
    assert normalize_properties({"deep": value})["deep"] == value
    with pytest.raises(ValidationError):
        normalize_properties({"deep": [value]})


HOSTILE_DEPTH = 100_000  # far beyond Python's recursion limit


def nested_dicts(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth):
        value = {"a": value}
    return value


def nested_lists(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: normalize_properties(nested_dicts(HOSTILE_DEPTH)), "properties['a']"),
        (lambda: normalize_properties({"k": nested_lists(HOSTILE_DEPTH)}), "properties['k'][0]"),
        (
            lambda: event_command({"registered": "a"}, "t", nested_dicts(HOSTILE_DEPTH)),
            "properties['a']",
        ),
        (lambda: customer_command({"registered": "a"}, nested_dicts(HOSTILE_DEPTH)), "properties"),
        (
            lambda: normalize_batch_command(
                {
                    "name": "customers/events",
                    "data": {
                        "customer_ids": {"registered": "a"},
                        "event_type": "t",
                        "properties": {"k": nested_lists(HOSTILE_DEPTH)},
                    },
                },
                "commands[4]",
            ),
            "commands[4]['data']['properties']['k'][0]",
        ),
        (lambda: check_command_size(nested_lists(HOSTILE_DEPTH), "row"), "row"),
    ],
)
def test_input_nested_far_too_deeply_is_a_validation_error_naming_the_field(call, field):
    with pytest.raises(ValidationError, match="nested deeper than 32 levels") as info:
        call()
    assert info.value.field.startswith(field)


def test_customer_ids_nested_far_too_deeply_are_refused_by_type():
    with pytest.raises(ValidationTypeError) as info:
        normalize_customer_ids({"registered": nested_dicts(HOSTILE_DEPTH)})
    assert info.value.field == "customer_ids['registered']"


def test_dumps_refuses_a_value_too_deep_to_encode_as_a_value_error():
    with pytest.raises(ValueError, match="nested too deeply"):
        dumps(nested_lists(HOSTILE_DEPTH))


def test_loads_refuses_json_too_deep_to_parse_naming_the_field():
    text = "[" * HOSTILE_DEPTH + "]" * HOSTILE_DEPTH
    with pytest.raises(ValidationError, match="nested deeper than 32 levels") as info:
        loads(text, "line 7")
    assert info.value.field == "line 7"
    assert loads('{"a": [1, 2.5]}', "x") == {"a": [1, 2.5]}
    with pytest.raises(json.JSONDecodeError):
        loads("{nope", "x")


def test_property_value_size_limit_counts_serialised_utf8_bytes():
    just_under = "x" * (MAX_PROPERTY_VALUE_BYTES - 3)  # + 2 quotes = limit - 1
    assert normalize_properties({"text": just_under})["text"] == just_under
    with pytest.raises(ValidationError) as info:
        normalize_properties({"text": just_under + "x"})
    assert info.value.field == "properties['text']"
    with pytest.raises(ValidationError):  # 2 bytes per char in UTF-8
        normalize_properties({"text": "é" * (MAX_PROPERTY_VALUE_BYTES // 2)})


def test_property_value_limit_applies_to_whole_nested_values():
    with pytest.raises(ValidationError) as info:
        normalize_properties({"items": ["y" * 1000] * 20})
    assert info.value.field == "properties['items']"


def test_lone_surrogate_text_is_refused():
    with pytest.raises(ValidationError) as info:
        normalize_properties({"bad": "\ud800"})
    assert info.value.field == "properties['bad']"


def test_validation_messages_do_not_echo_values():
    with pytest.raises(ValidationTypeError) as info:
        normalize_properties({"card": object.__new__(type("Secret", (), {}))})
    assert "Secret" in str(info.value)  # the type name only
    with pytest.raises(ValidationError) as info2:
        normalize_customer_ids({"registered": True})
    assert "True" not in str(info2.value)


# --- timestamps --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0.0),
        (1533663283, 1533663283.0),
        (1533663283.12345678, 1533663283.123457),
        (dt.datetime(2018, 8, 7, 17, 34, 43, 123456, tzinfo=UTC), 1533663283.123456),
    ],
)
def test_timestamp_becomes_seconds_with_six_decimals(value, expected):
    assert normalize_timestamp(value) == expected


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (-1, ValidationError),
        (float("nan"), ValidationError),
        (float("inf"), ValidationError),
        (1533663283000, ValidationError),  # milliseconds by mistake
        (True, ValidationTypeError),
        ("1533663283", ValidationTypeError),
        (dt.datetime(2018, 8, 7), ValidationError),
    ],
)
def test_timestamp_refuses_bad_values(value, error):
    with pytest.raises(error) as info:
        normalize_timestamp(value, "update_timestamp")
    assert info.value.field == "update_timestamp"


# --- commands ----------------------------------------------------------------------------------


def test_event_command_builds_the_api_body():
    assert event_command({"registered": "a"}, "view", {"p": 1}, 1533663283) == {
        "customer_ids": {"registered": "a"},
        "event_type": "view",
        "properties": {"p": 1},
        "timestamp": 1533663283.0,
    }


def test_event_command_without_timestamp_leaves_it_to_the_server():
    data = event_command({"registered": "a"}, "view")
    assert data == {"customer_ids": {"registered": "a"}, "event_type": "view", "properties": {}}


def test_customer_command_builds_the_api_body_with_update_timestamp():
    assert customer_command({"registered": "a"}, {"name": "L"}, 10) == {
        "customer_ids": {"registered": "a"},
        "properties": {"name": "L"},
        "update_timestamp": 10.0,
    }


def test_customer_command_requires_properties():
    with pytest.raises(ValidationTypeError) as info:
        customer_command({"registered": "a"}, None)
    assert info.value.field == "properties"


def test_command_size_limit():
    many = {f"k{i}": "v" * 15_000 for i in range(60)}  # each value fine, total ~900 KB
    with pytest.raises(ValidationError) as info:
        event_command({"registered": "a"}, "big", many)
    assert info.value.field == "command"
    assert check_command_size({"a": 1}) == len('{"a":1}')
    with pytest.raises(ValidationError):
        check_command_size("x" * MAX_COMMAND_BYTES)


def test_dumps_is_compact_ordered_utf8_and_refuses_nan():
    assert dumps({"b": 1, "a": "é"}) == '{"b":1,"a":"é"}'
    with pytest.raises(ValueError):
        dumps({"x": float("nan")})


def test_normalize_batch_command_accepts_seed_builder_output_with_none_values():
    raw = {
        "name": "customers/events",
        "data": {
            "customer_ids": {"registered": "t"},
            "event_type": "e",
            "properties": None,
            "timestamp": None,
        },
    }
    assert normalize_batch_command(raw) == {
        "name": "customers/events",
        "data": {"customer_ids": {"registered": "t"}, "event_type": "e", "properties": {}},
    }


def test_normalize_batch_command_keeps_command_id_and_handles_each_name():
    assert normalize_batch_command({"name": "system/time"}) == {"name": "system/time"}
    assert normalize_batch_command({"name": "system/time", "data": {}, "command_id": "c1"}) == {
        "name": "system/time",
        "command_id": "c1",
    }
    update = {
        "name": "customers",
        "data": {"customer_ids": {"id": 1}, "properties": {"a": 1}, "update_timestamp": 5},
    }
    assert normalize_batch_command(update)["data"]["update_timestamp"] == 5.0


@pytest.mark.parametrize(
    ("command", "field"),
    [
        ("customers", "command"),
        ({"name": "customers/delete", "data": {}}, "command['name']"),
        ({"name": "customers", "data": None}, "command['data']"),
        ({"name": "system/time", "data": {"x": 1}}, "command['data']"),
        (
            {"name": "customers", "data": {"customer_ids": {"a": "b"}}},
            "command['data']['properties']",
        ),
        (
            {
                "name": "customers/events",
                "data": {
                    "customer_ids": {"a": "b"},
                    "event_type": "e",
                    "properties": {"p": float("nan")},
                },
            },
            "command['data']['properties']['p']",
        ),
        (
            {
                "name": "customers/events",
                "data": {"customer_ids": {"a": "b"}, "event_type": "e", "colour": "red"},
            },
            "command['data']",
        ),
        ({"name": "customers", "data": {}, "extra": 1}, "command"),
        ({"name": "system/time", "command_id": ""}, "command['command_id']"),
    ],
)
def test_normalize_batch_command_refuses_bad_commands_naming_the_path(command, field):
    with pytest.raises(ValidationError) as info:
        normalize_batch_command(command)
    assert info.value.field == field
