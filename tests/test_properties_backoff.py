"""Property tests of the one backoff formula (policy.backoff_delay) in its two uses: the drain
and the client's read retries (read_retry_delay). Bounds hold for every input, and the
ceiling only grows."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from tracker_agent.constants import DRAIN_MAX_RETRY_AFTER_SECONDS as MAX_RETRY_AFTER_SECONDS
from tracker_agent.constants import READ_MAX_RETRY_AFTER_SECONDS as READ_MAX_RETRY_AFTER
from tracker_agent.constants import READ_RETRY_BASE_SECONDS as RETRY_BASE_SECONDS
from tracker_agent.constants import READ_RETRY_CAP_SECONDS as RETRY_CAP_SECONDS
from tracker_agent.policy import backoff_delay
from tracker_agent.transport import read_retry_delay

PURE = settings(max_examples=300, deadline=None)

failures = st.integers(min_value=1, max_value=10_000)
bases = st.floats(min_value=1e-3, max_value=1e4)
cap_factors = st.floats(min_value=1.0, max_value=1e6)  # cap = base * factor >= base
unit = st.floats(min_value=0.0, max_value=1.0)
retry_afters = st.one_of(st.none(), st.floats(allow_nan=False), st.floats(0, 7200))


# --- the drain: backoff_delay ---------------------------------------------------------------


@PURE
@given(failures, bases, cap_factors, unit, retry_afters)
def test_drain_delay_stays_within_its_bounds(count, base, factor, draw, retry_after):
    cap = base * factor
    delay = backoff_delay(count, base=base, cap=cap, retry_after=retry_after, rng=lambda: draw)
    assert math.isfinite(delay) and delay >= 0
    honoured = 0.0 if retry_after is None else min(retry_after, MAX_RETRY_AFTER_SECONDS)
    assert delay <= max(cap, honoured)
    assert delay >= honoured  # never sooner than the server asked (bounded by the maximum)


@PURE
@given(failures, bases, cap_factors)
def test_drain_ceiling_is_base_doubling_up_to_the_cap_and_never_shrinks(count, base, factor):
    cap = base * factor

    def ceiling(n: int) -> float:
        return backoff_delay(n, base=base, cap=cap, rng=lambda: 1.0)

    assert ceiling(count) == min(cap, base * 2.0 ** min(count - 1, 1000))
    assert ceiling(count) <= ceiling(count + 1)
    assert ceiling(1) == base


@PURE
@given(failures, bases, cap_factors, unit)
def test_drain_delay_is_full_jitter_over_the_ceiling(count, base, factor, draw):
    cap = base * factor
    ceiling = backoff_delay(count, base=base, cap=cap, rng=lambda: 1.0)
    assert backoff_delay(count, base=base, cap=cap, rng=lambda: draw) == draw * ceiling
    assert backoff_delay(count, base=base, cap=cap, rng=lambda: 0.0) == 0.0


# --- the client: read_retry_delay -----------------------------------------------------------


@PURE
@given(failures, unit, retry_afters)
def test_read_retry_delay_stays_within_its_bounds(attempt, draw, retry_after):
    delay = read_retry_delay(attempt, retry_after, rng=lambda: draw)
    assert math.isfinite(delay) and delay >= 0
    honoured = 0.0 if retry_after is None else min(retry_after, READ_MAX_RETRY_AFTER)
    assert delay <= max(RETRY_CAP_SECONDS, honoured)
    assert delay >= honoured  # the server's word is a floor, as in the drain
    if retry_after is not None and retry_after > 0:
        backoff = read_retry_delay(attempt, rng=lambda: draw)
        assert delay == max(backoff, min(retry_after, READ_MAX_RETRY_AFTER))


@PURE
@given(failures, unit)
def test_read_retry_ceiling_doubles_up_to_the_cap_and_never_shrinks(attempt, draw):
    def ceiling(n: int) -> float:
        return read_retry_delay(n, rng=lambda: 1.0)

    assert ceiling(attempt) == min(
        RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2.0 ** min(attempt - 1, 32)
    )
    assert ceiling(attempt) <= ceiling(attempt + 1)
    assert read_retry_delay(attempt, rng=lambda: draw) == draw * ceiling(attempt)
