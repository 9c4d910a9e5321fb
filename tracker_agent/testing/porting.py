"""Running test suites written for exponea-python-sdk against tracker-agent.

Those suites fake the API by patching `requests.request` with a function that returns an
object with just `status_code` and `text`. tracker-agent sends through a requests.Session,
which such a patch does not reach (and the transport stops the request instead of letting
it go to the real API: tracker_agent.exceptions.PatchedRequestsError). One line in the
suite's conftest.py makes every such patch reach tracker-agent again::

    from tracker_agent.testing.porting import route_requests_request  # noqa: F401

`route_requests_request` is an autouse pytest fixture: while a test runs, each request of
tracker-agent (told from other code's by its User-Agent) goes to `requests.request` whenever
the test has replaced it, called the way exponea-python-sdk called it
(sdk_request_arguments); when the test has not, the request goes out as usual (to a
FakeExponea, say). Without pytest, `requests_request_route()` does the same as a context
manager or decorator. Imports requests (test code only).
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator, Mapping
from typing import Any
from unittest import mock
from urllib.parse import urlencode

import requests
from requests.auth import HTTPBasicAuth

from tracker_agent.testguard import requests_request_is_faked
from tracker_agent.transport import USER_AGENT_PRODUCT

__all__ = ["requests_request_route", "route_requests_request", "sdk_request_arguments"]

_BASIC = "Basic "


def _is_ours(kwargs: Mapping[str, Any]) -> bool:
    headers = kwargs.get("headers") or {}
    agent = headers.get("User-Agent", b"")
    if isinstance(agent, bytes):
        agent = agent.decode("utf-8", errors="replace")
    return isinstance(agent, str) and agent.startswith(f"{USER_AGENT_PRODUCT}/")


def _sdk_auth(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The SDK passed auth=HTTPBasicAuth(username, password), empty ones included; a public
    key (tracker-agent only) goes as the header it is."""
    value = headers.get("Authorization")
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, str) and value.startswith(_BASIC):
        username, _, password = base64.b64decode(value[len(_BASIC) :]).decode().partition(":")
        return {"auth": HTTPBasicAuth(username, password)}
    if isinstance(value, str):
        return {"headers": {"Authorization": value}}
    return {"auth": HTTPBasicAuth("", "")}


def sdk_request_arguments(
    method: str, url: str, kwargs: Mapping[str, Any]
) -> tuple[tuple[str, str], dict[str, Any]]:
    """The arguments exponea-python-sdk gave `requests.request` for the request tracker-agent
    makes with Session.request(method, url, **kwargs): (method, url with its query string),
    json=the body, auth=HTTPBasicAuth(username, password), timeout=the read timeout."""
    params = kwargs.get("params")
    if params:
        url = f"{url}?{urlencode(params)}"
    body = kwargs.get("data")
    sdk_kwargs: dict[str, Any] = {"json": json.loads(body) if body else None}
    sdk_kwargs.update(_sdk_auth(kwargs.get("headers") or {}))
    timeout = kwargs.get("timeout")
    sdk_kwargs["timeout"] = timeout[1] if isinstance(timeout, tuple) else timeout
    return (method, url), sdk_kwargs


@contextlib.contextmanager
def requests_request_route() -> Iterator[None]:
    """While active, tracker-agent's requests go to `requests.request` when a test replaced it
    (see the module docstring); everything else goes out as usual."""
    original = requests.Session.request

    def request(session: requests.Session, method: str, url: str, **kwargs: Any) -> Any:
        if _is_ours(kwargs) and requests_request_is_faked(requests):
            args, sdk_kwargs = sdk_request_arguments(method, url, kwargs)
            return requests.request(*args, **sdk_kwargs)
        return original(session, method, url, **kwargs)

    with mock.patch.object(requests.Session, "request", request):
        yield


try:
    import pytest
except ImportError:  # unittest suites use requests_request_route() itself
    pass
else:

    @pytest.fixture(autouse=True)
    def route_requests_request() -> Iterator[None]:
        """Autouse: a test's patch of `requests.request` reaches tracker-agent, as it reached
        exponea-python-sdk. Import it into conftest.py to turn it on for a whole suite."""
        with requests_request_route():
            yield
