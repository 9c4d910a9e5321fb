"""A test that fakes the API the way exponea-python-sdk's tests did, by patching
`requests.request`, must never let one of our requests reach the real API: our Session does
not go through that function, so such a request is stopped before any connection
(PatchedRequestsError). The check is one identity comparison per request, and nothing counts
as a fake while no test framework is loaded.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

from tracker_agent.exceptions import PatchedRequestsError

__all__ = ["refuse_escaping_test_request", "requests_request_is_faked"]

#: Modules loaded only where a test replaced requests.request: without one, nothing is a fake.
_TEST_FRAMEWORKS = ("pytest", "unittest")
_PORTING_HELP = (
    "requests.request is patched in this test (the way exponea-python-sdk's tests faked the "
    "API), but tracker-agent sends through a requests.Session, which the patch does not "
    "reach: the request was stopped before any connection. Add one line to conftest.py, "
    "`from tracker_agent.testing.porting import route_requests_request  # noqa: F401`, or "
    "patch 'requests.Session.request' instead: see \"Porting your tests\" in README.md"
)


def requests_request_is_faked(requests: ModuleType) -> bool:
    """Whether a test replaced `requests.request` (or requests.api.request).

    One identity check where it is requests' own function, as in production. A wrapper that
    calls the real function (functools.wraps, wrapt: an APM's instrumentation) is not a fake,
    and nothing is while no test framework is loaded. Compared with requests.api.request at
    every call, nothing captured: a patch made before requests was first imported is seen."""
    current = requests.request
    real = requests.api.request
    if current is real:
        return False
    if not any(name in sys.modules for name in _TEST_FRAMEWORKS):
        return False
    import inspect

    try:
        return inspect.unwrap(current) is not real
    except ValueError:  # a cycle of __wrapped__: not requests' function either
        return True


def _sends_for_real(session: Any, requests: ModuleType) -> bool:
    """Whether `session.request` is requests' own method, not a test's patch of it."""
    func = getattr(getattr(session, "request", None), "__func__", None)
    return (
        getattr(func, "__module__", None) == requests.sessions.__name__
        and getattr(func, "__qualname__", None) == "Session.request"
        and not hasattr(func, "__wrapped__")
    )


def refuse_escaping_test_request(session: Any, method: str, path: str) -> None:
    """PatchedRequestsError when a test faked requests.request but `session` would really send:
    exponea-python-sdk's tests fake the API so, and a ported suite must never reach it."""
    import requests

    if requests_request_is_faked(requests) and _sends_for_real(session, requests):
        raise PatchedRequestsError(f"{method} {path}: {_PORTING_HELP}")
