"""The Exponea client: the seed SDK's public entry point, which checks its settings and hands
the four API namespaces one shared HTTPTransport (tracker_agent.transport).

Importing this module imports neither `requests` nor SQLAlchemy.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from tracker_agent.api.analyses import Analyses
from tracker_agent.api.catalog import Catalog
from tracker_agent.api.customer import Customer
from tracker_agent.api.tracking import Tracking
from tracker_agent.api_url import DEFAULT_URL, URLRefused, check_api_url
from tracker_agent.config.settings import BOUNDS
from tracker_agent.constants import (
    DEFAULT_CONNECT_TIMEOUT_SECONDS,
    DEFAULT_READ_RETRIES,
    DEFAULT_REQUEST_TIMEOUT_SECONDS,
)
from tracker_agent.exceptions import ValidationError, ValidationTypeError
from tracker_agent.transport import HTTPTransport

if TYPE_CHECKING:
    import requests

    from .config import Settings

__all__ = ["Exponea"]


def _seconds(value: object, field: str) -> float:
    """A timeout within the range Settings allow for the same field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationTypeError(field, f"expected seconds, got {type(value).__name__}")
    bounds = BOUNDS[field]
    if not (math.isfinite(value) and bounds.low <= value <= bounds.high):
        raise ValidationError(field, f"must be {bounds.describe()}, got {value!r}")
    return float(value)


def _text(value: object, field: str, *, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValidationTypeError(field, f"expected str, got {type(value).__name__}")
    if required and not value:
        raise ValidationError(field, "must not be empty")
    return value


class Exponea:
    """Client for the Exponea (Bloomreach Engagement) API, compatible with the seed SDK.

    `tracking`, `customer`, `catalog` and `analyses` hold the calls. One pooled HTTP session
    per client; use `close()` or `with Exponea(...) as exponea:` to release it.
    `request_timeout` is the read timeout in seconds (default 10), `connect_timeout` the
    connect timeout; together they are each request's total deadline (connect, headers and
    body): a server that trickles its answer is cut off then (APITimeoutError). Answers over
    MAX_RESPONSE_BYTES are cut off too (InvalidResponseError). Reads retry `read_retries` times
    on transient faults, an unreadable answer included; writes never retry. `public_key`
    authenticates tracking calls with "Authorization: Token"; username/password (the private
    key id and secret, any Unicode: sent as UTF-8) use HTTP Basic. `session`: a
    requests.Session of yours, used as is; it gets the size cap, but the deadline can only cut
    off its body, not its connect or its wait for headers. `sleep` is injectable for tests.
    `url` must be https://, or plain http:// to a loopback host (a local fake or proxy):
    `allow_http=True` permits plain http:// elsewhere, as Settings' allow_http does.
    """

    def __init__(
        self,
        project_token: str,
        username: str = "",
        password: str = "",
        url: str | None = None,
        request_timeout: float | None = None,
        *,
        public_key: str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
        read_retries: int = DEFAULT_READ_RETRIES,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        user_agent: str | None = None,
        allow_http: bool = False,
    ) -> None:
        self.project_token = _text(project_token, "project_token", required=True)
        self.username = _text(username, "username")
        try:  # the same rule as Settings: no credentials over plain http to another host
            self.url = check_api_url(_text(url, "url") or DEFAULT_URL, allow_http=allow_http)
        except URLRefused as exc:
            raise ValidationError("url", str(exc)) from None
        self.request_timeout = (
            DEFAULT_REQUEST_TIMEOUT_SECONDS
            if request_timeout is None
            else _seconds(request_timeout, "request_timeout")
        )
        self.connect_timeout = _seconds(connect_timeout, "connect_timeout")
        retries = BOUNDS["read_retries"]
        if (
            isinstance(read_retries, bool)
            or not isinstance(read_retries, int)
            or not retries.low <= read_retries <= retries.high
        ):
            raise ValidationError("read_retries", f"must be an int {retries.describe()}")
        self.read_retries = read_retries
        self._auth_kind = (
            "public key" if public_key else "basic" if username or password else "none"
        )
        self.logger = logging.getLogger("tracker_agent")
        self._transport = HTTPTransport(
            self.url,
            username=self.username,
            password=_text(password, "password"),
            public_key=_text(public_key, "public_key") or None,
            connect_timeout=self.connect_timeout,
            read_timeout=self.request_timeout,
            read_retries=read_retries,
            session=session,
            sleep=sleep,
            user_agent=user_agent,
        )
        self.tracking = Tracking(self._transport, self.project_token)
        self.customer = Customer(self._transport, self.project_token)
        self.catalog = Catalog(self._transport, self.project_token)
        self.analyses = Analyses(self._transport, self.project_token)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, session: requests.Session | None = None
    ) -> Exponea:
        """A client configured by tracker-agent's `Settings` (what the agent and CLI use)."""
        return cls(
            settings.project_token,
            username=settings.username,
            password=settings.password,
            url=settings.url,
            request_timeout=settings.request_timeout,
            public_key=settings.public_key or None,
            connect_timeout=settings.connect_timeout,
            read_retries=settings.read_retries,
            session=session,
            allow_http=settings.allow_http,
        )

    def close(self) -> None:
        """Close pooled connections (idempotent)."""
        self._transport.close()

    def __enter__(self) -> Exponea:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Exponea(project_token={self.project_token!r}, url={self.url!r}, "
            f"username={self.username!r}, auth={self._auth_kind!r})"
        )
