"""Property tests of validation: whatever goes in, plain JSON or a ValidationError comes out."""

from __future__ import annotations

import datetime as dt
import json
import math
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tracker_agent.exceptions import ValidationError
from tracker_agent.validation import (
    MAX_COMMAND_BYTES,
    MAX_TIMESTAMP_SECONDS,
    event_command,
    normalize_customer_ids,
    normalize_properties,
    normalize_timestamp,
)
from tracker_agent.wire import dumps, tree_encoder

FAST = settings(max_examples=150, deadline=None)
# Generating nested property dicts is slow (~20 ms each): fewer, still varied, examples.
NESTED = settings(max_examples=50, deadline=None)
HUGE_INT = 10**5000  # more digits than Python's default int-to-str limit (4300)

offsets = st.timedeltas(
    min_value=-dt.timedelta(hours=23, minutes=59), max_value=dt.timedelta(hours=23, minutes=59)
)
aware_datetimes = st.builds(
    lambda naive, offset: naive.replace(tzinfo=dt.timezone(offset)), st.datetimes(), offsets
)
finite_decimals = st.decimals(min_value=-(10**30), max_value=10**30)
# Values the conversion rule accepts; small, so the 16 KB per-value limit is never reached.
valid_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    aware_datetimes,
    st.dates(),
    finite_decimals,
    st.uuids(),
)
valid_values = st.recursive(
    valid_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)
valid_properties = st.dictionaries(st.text(max_size=10), valid_values, max_size=6)

# Anything at all: the accepted values plus the ones the rule refuses.
hostile_leaves = st.one_of(
    valid_leaves,
    st.floats(),  # NaN and +/-Infinity included
    st.datetimes(),  # naive
    st.decimals(),  # NaN, sNaN, Infinity, any exponent
    st.integers(),
    st.binary(max_size=4),
    st.sets(st.integers(), max_size=2),
    st.complex_numbers(max_magnitude=10),
    st.just(object()),
)
hostile_values = st.recursive(
    hostile_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner),
        st.dictionaries(st.text(max_size=8) | st.integers() | st.none(), inner, max_size=4),
    ),
    max_leaves=12,
)
hostile_properties = st.one_of(
    st.dictionaries(st.text(max_size=10), hostile_values, max_size=6), hostile_values
)


def is_plain_json(value: Any) -> bool:
    """Only dict (str keys) / list / str / int / float / bool / None, exactly those types."""
    if value is None or type(value) in (bool, str, int):
        return True
    if type(value) is float:
        return math.isfinite(value)
    if type(value) is list:
        return all(is_plain_json(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and is_plain_json(v) for k, v in value.items())
    return False


def round_trips(value: Any) -> bool:
    return json.loads(json.dumps(value, allow_nan=False)) == value


def expected_conversion(value: Any) -> Any:
    """The module docstring's conversion rule, written out independently."""
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [expected_conversion(v) for v in value]
    if isinstance(value, dict):
        return {k: expected_conversion(v) for k, v in value.items()}
    return value


# --- properties ---------------------------------------------------------------------------


@NESTED
@given(valid_properties)
def test_accepted_values_convert_by_the_documented_rule_to_plain_json(properties):
    result = normalize_properties(properties)
    assert result == expected_conversion(properties)
    assert is_plain_json(result)
    assert round_trips(result)


@NESTED
@given(hostile_properties)
@example({"signalling": Decimal("sNaN")})
@example({"huge": Decimal("1e5000")})
@example({"huge": HUGE_INT})
@example({"nested": [HUGE_INT]})
def test_any_properties_give_plain_json_or_a_validation_error_and_nothing_else(properties):
    try:
        result = normalize_properties(properties)
    except ValidationError:
        return
    assert is_plain_json(result)
    assert round_trips(result)  # json.dumps(allow_nan=False) accepts it


FAST_DUMPS = tree_encoder()
FAST_SORTED_DUMPS = tree_encoder(sort_keys=True)


@NESTED
@given(hostile_properties)
@example({"huge": 10**1200, "text": '\u2028 \x00 "q" \ud83d\ude00', "f": -0.0})
def test_the_reused_encoder_writes_exactly_what_dumps_writes(properties):
    try:
        result = normalize_properties(properties)
    except ValidationError:
        return
    # On CPython the C encoder is there: the reused one runs, not the fallback bound method.
    assert getattr(FAST_DUMPS, "__self__", None) is None
    assert FAST_DUMPS(result) == dumps(result)
    assert FAST_SORTED_DUMPS(result) == json.dumps(
        result, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


@NESTED
@given(hostile_properties)
@example({"signalling": Decimal("sNaN")})
def test_normalizing_properties_twice_is_the_same_as_once(properties):
    try:
        once = normalize_properties(properties)
    except ValidationError:
        return
    assert normalize_properties(once) == once


@NESTED
@given(
    valid_properties,
    st.sampled_from([math.nan, math.inf, -math.inf, dt.datetime(2024, 1, 1), Decimal("NaN")]),
    st.text(max_size=5),
)
def test_a_non_json_value_anywhere_is_refused(properties, poison, key):
    properties = dict(properties)
    properties[key] = [{"deep": poison}]
    try:
        normalize_properties(properties)
    except ValidationError as exc:
        assert "deep" in exc.field
    else:
        raise AssertionError(f"{poison!r} was accepted")


# --- customer ids -------------------------------------------------------------------------

id_values = st.one_of(
    st.text(max_size=10), st.integers(), st.booleans(), st.floats(), st.none(), st.lists(st.text())
)


@FAST
@given(
    st.one_of(
        st.dictionaries(st.text(max_size=10), id_values, max_size=4),
        st.dictionaries(st.integers(), st.text(), max_size=2),
        st.lists(st.text(), max_size=2),
        st.text(max_size=5),
        st.none(),
    )
)
def test_customer_ids_give_a_plain_id_dict_or_a_validation_error(value):
    try:
        result = normalize_customer_ids(value)
    except ValidationError:
        return
    assert type(result) is dict and result
    for key, item in result.items():
        assert type(key) is str and key
        assert (type(item) is str and item) or type(item) is int
    assert normalize_customer_ids(result) == result  # idempotent
    assert json.loads(dumps(result)) == result


# --- timestamps ---------------------------------------------------------------------------

timestamp_inputs = st.one_of(
    st.floats(),
    st.integers(),
    st.floats(min_value=MAX_TIMESTAMP_SECONDS - 1, max_value=MAX_TIMESTAMP_SECONDS + 1),
    aware_datetimes,
    st.datetimes(),
    st.booleans(),
    st.decimals(allow_nan=False),
    st.text(max_size=5),
    st.none(),
)


@FAST
@given(timestamp_inputs)
@example(10**400)  # an int too large for a float
@example(MAX_TIMESTAMP_SECONDS - 3e-7)  # rounds up to the limit itself
def test_timestamps_give_seconds_in_range_with_six_decimals_or_a_validation_error(value):
    try:
        seconds = normalize_timestamp(value)
    except ValidationError:
        return
    assert type(seconds) is float and math.isfinite(seconds)
    assert 0 <= seconds < MAX_TIMESTAMP_SECONDS
    assert round(seconds, 6) == seconds
    assert normalize_timestamp(seconds) == seconds  # idempotent


# --- the whole event command --------------------------------------------------------------


@NESTED
@given(
    st.dictionaries(st.text(max_size=6), id_values, max_size=2),
    st.text(max_size=6) | st.integers(),
    hostile_properties | st.none(),
    timestamp_inputs,
)
@example({"registered": "a"}, "view", {"s": Decimal("sNaN")}, None)
def test_event_command_gives_a_sendable_command_or_a_validation_error(ids, kind, props, stamp):
    try:
        data = event_command(ids, kind, props, stamp)
    except ValidationError:
        return
    assert is_plain_json(data)
    assert len(dumps(data).encode("utf-8")) < MAX_COMMAND_BYTES
    assert event_command(**data) == data  # idempotent: a stored command re-validates as is


# --- a targeted regression: huge exponents must not stall the caller --------------------------

HUGE_EXPONENT_DECIMAL = Decimal("1e200000")


def test_a_decimal_with_a_huge_exponent_is_refused_before_any_conversion():
    # int() of a 200,001-digit Decimal takes seconds and yields a number json.dumps refuses; the
    # exponent check must refuse it first. (Asserted by outcome, not by timing: noisy machines.)
    with pytest.raises(ValidationError, match="amount"):
        normalize_properties({"amount": HUGE_EXPONENT_DECIMAL})
