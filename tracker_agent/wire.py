"""The JSON wire format the API speaks: compact, UTF-8, strict (no NaN or Infinity), one
encoder reused. The transport encodes request bodies with it, validation sizes commands with
it, the outbox stores payloads in it. Imports only the stdlib.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

__all__ = ["NestingTooDeep", "dumps", "tree_encoder"]

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class NestingTooDeep(ValueError):
    """dumps() met a value nested deeper than Python's recursion limit allows to encode."""


def dumps(obj: Any) -> str:
    """Compact JSON, keys in insertion order, UTF-8 text; NaN and values nested too deeply
    to encode are refused (ValueError)."""
    try:
        return _ENCODER.encode(obj)
    except RecursionError:  # the C encoder recurses once per level of nesting
        raise NestingTooDeep("nested too deeply to encode as JSON") from None


def tree_encoder(*, sort_keys: bool = False) -> Callable[[Any], str]:
    """`dumps` (optionally with sorted keys) for values this module returned: plain JSON trees.

    It reuses one C encoder instead of building one per call (JSONEncoder.encode does), and
    skips the circular-reference bookkeeping that such a tree cannot need; a third of the
    cost of serialising one event. Falls back to JSONEncoder.encode where the C encoder is
    missing or does not behave as expected.
    """
    safe = json.JSONEncoder(
        separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=sort_keys
    )
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return safe.encode
    try:
        fast = make(
            None, safe.default, json.encoder.encode_basestring, None, ":", ",",
            sort_keys, False, False,
        )  # fmt: skip
        probe = {"b": [1, 2.5, "\u00e9\n", None, True, {}], "a": {"z": -0.0, "y": 10**20}}

        def encode(obj: Any) -> str:
            return "".join(fast(obj, 0))

        if encode(probe) != safe.encode(probe):
            return safe.encode
    except Exception:  # a different C signature in some Python version
        return safe.encode
    return encode
