"""The drain's policy is pure: status -> action, failures -> delay. Tested by tables."""

from __future__ import annotations

import pytest

from tracker_agent.constants import DRAIN_MAX_RETRY_AFTER_SECONDS as MAX_RETRY_AFTER_SECONDS
from tracker_agent.exceptions import (
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InvalidResponseError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    RequestTooLargeError,
    ServerError,
    TransportError,
)
from tracker_agent.policy import Action, RateLimiter, backoff_delay, classify


@pytest.mark.parametrize(
    ("exc", "action"),
    [
        (TransportError("refused"), Action.RETRY),
        (APITimeoutError("timeout"), Action.RETRY),
        (APITimeoutError("total deadline passed"), Action.RETRY),
        (RateLimitedError("slow down", status_code=429, retry_after=3), Action.RETRY),
        (ServerError("down", status_code=503), Action.RETRY),
        (ServerError("bad gateway", status_code=502), Action.RETRY),
        # An answer we cannot read is a network fault, never a refusal of our data:
        (InvalidResponseError("html", status_code=502, retryable=True), Action.RETRY),
        (InvalidResponseError("captive portal login page", status_code=200), Action.RETRY),
        (InvalidResponseError("redirected", status_code=302), Action.RETRY),
        (InvalidResponseError("html 400 from a proxy", status_code=400), Action.RETRY),
        (InvalidResponseError("2 results for 3 commands", status_code=200), Action.RETRY),
        (InvalidResponseError("answer over the cap", status_code=200), Action.RETRY),
        (AuthenticationError("Could not authenticate", status_code=400), Action.PAUSE),
        (AuthenticationError("bad key", status_code=401), Action.PAUSE),
        (PermissionDeniedError("no perm", status_code=403), Action.PAUSE),
        (NotFoundError("wrong url", status_code=404), Action.PAUSE),
        # Could not even be sent (invalid URL, header encoding): configuration, not the data.
        (TransportError("invalid header", retryable=False), Action.PAUSE),
        # An undocumented 4xx with a JSON body: not evidence against the commands.
        (BadRequestError("method not allowed", status_code=405), Action.PAUSE),
        (BadRequestError("no status", status_code=None), Action.PAUSE),
        (InvalidResponseError("told not to retry", status_code=200, retryable=False), Action.PAUSE),
        # Only the server's own refusal splits (and so may dead-letter):
        (BadRequestError("bad", status_code=400), Action.SPLIT),
        (BadRequestError("success false", status_code=200), Action.SPLIT),
        (RequestTooLargeError("big", status_code=413), Action.SPLIT),
    ],
)
def test_classify_maps_whole_batch_failures_to_actions(exc, action):
    assert classify(exc) is action


@pytest.mark.parametrize(
    ("failures", "rng", "retry_after", "expected"),
    [
        (1, 1.0, None, 1.0),  # ceiling base * 2**0
        (2, 1.0, None, 2.0),
        (3, 1.0, None, 4.0),
        (4, 0.5, None, 4.0),  # full jitter: rng * ceiling
        (9, 1.0, None, 256.0),
        (10, 1.0, None, 300.0),  # capped
        (500, 1.0, None, 300.0),  # no overflow at huge counts
        (1, 0.0, None, 0.0),  # jitter may pick zero
        (1, 0.1, 30.0, 30.0),  # Retry-After is a floor
        (10, 1.0, 5.0, 300.0),  # ...not a ceiling
        (1, 0.0, 10**9, MAX_RETRY_AFTER_SECONDS),  # a bogus Retry-After is bounded
        (0, 1.0, None, 1.0),  # defensive: attempt 0 treated as the first
    ],
)
def test_backoff_delay_is_capped_exponential_full_jitter_with_retry_after_floor(
    failures, rng, retry_after, expected
):
    delay = backoff_delay(failures, base=1.0, cap=300.0, retry_after=retry_after, rng=lambda: rng)
    assert delay == pytest.approx(expected)


def test_rate_limiter_spaces_requests_evenly():
    clock = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    limiter = RateLimiter(100.0, clock=lambda: clock[0], sleep=sleep)
    for _ in range(5):
        limiter.acquire()
    assert slept == pytest.approx([0.01, 0.01, 0.01, 0.01])
    clock[0] += 1.0  # idle time is not banked as a burst beyond one slot
    limiter.acquire()
    limiter.acquire()
    assert slept[-1] == pytest.approx(0.01)
