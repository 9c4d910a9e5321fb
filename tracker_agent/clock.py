"""The default clock: wall time, looked up on every call so that tests can freeze it.

Components take `now=` (inject, don't patch); this is what they use when given none.
Binding `time.time` as a default argument would bypass freezegun, which swaps the attribute.
"""

from __future__ import annotations

import time


def wall_clock() -> float:
    """Seconds since the epoch, as `time.time()` says at the moment of the call."""
    return time.time()
