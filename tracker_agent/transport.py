"""The HTTP transport: one requests.Session, auth, timeouts, the translation of HTTP outcomes
and `requests` exceptions into tracker_agent.exceptions, and read retries.

`requests` is imported on the first request, not when this module is imported.
"""

from __future__ import annotations

import email.utils
import json as _json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tracker_agent._version import __version__
from tracker_agent.api import parse_error_messages
from tracker_agent.exceptions import (
    APIException,
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
    ValidationTypeError,
)
from tracker_agent.validation import dumps

if TYPE_CHECKING:
    import requests

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_SECONDS",
    "DEFAULT_READ_RETRIES",
    "DEFAULT_READ_TIMEOUT_SECONDS",
    "MAX_RETRY_AFTER_SECONDS",
    "RETRY_BASE_SECONDS",
    "RETRY_CAP_SECONDS",
    "HTTPTransport",
    "parse_retry_after",
    "read_retry_delay",
    "translate_response",
]

log = logging.getLogger(__name__)

DEFAULT_READ_TIMEOUT_SECONDS = 10.0
DEFAULT_CONNECT_TIMEOUT_SECONDS = 3.05
DEFAULT_READ_RETRIES = 2
RETRY_BASE_SECONDS = 0.5
RETRY_CAP_SECONDS = 10.0
MAX_RETRY_AFTER_SECONDS = 60.0
_MAX_BACKOFF_EXPONENT = 32
ERROR_SNIPPET_CHARS = 200
_AUTH_FAILURE_MARKERS = ("could not authenticate", "invalid project id")
_STATUS_ERRORS: dict[int, type[APIException]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: APITimeoutError,
    413: RequestTooLargeError,
    429: RateLimitedError,
}


def read_retry_delay(
    attempt: int, retry_after: float | None = None, rng: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry number `attempt` (1-based) of a read.

    The server's Retry-After wins (capped at MAX_RETRY_AFTER_SECONDS); otherwise exponential
    backoff from RETRY_BASE_SECONDS, capped at RETRY_CAP_SECONDS, with full jitter.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    if retry_after is not None:
        return min(max(retry_after, 0.0), MAX_RETRY_AFTER_SECONDS)
    exponent = min(attempt - 1, _MAX_BACKOFF_EXPONENT)
    return min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2**exponent) * rng()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent/garbled."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _snippet(content: bytes) -> str:
    text = " ".join(content.decode("utf-8", errors="replace").split())
    if len(text) > ERROR_SNIPPET_CHARS:
        return text[:ERROR_SNIPPET_CHARS] + "..."
    return text


def _error_class(status: int, messages: list[str]) -> type[APIException]:
    lowered = " ".join(messages).lower()
    if status in (200, 400) and any(marker in lowered for marker in _AUTH_FAILURE_MARKERS):
        return AuthenticationError
    if status in _STATUS_ERRORS:
        return _STATUS_ERRORS[status]
    if status >= 500:
        return ServerError
    if 400 <= status < 500 or status == 200:
        return BadRequestError
    return InvalidResponseError


def _has_type(value: object, expected: type | tuple[type, ...]) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):  # bool is an int; only accept it where bool is asked for
        return bool in types
    return isinstance(value, types)


def _check_required(
    body: dict[str, Any], require: Mapping[str, type | tuple[type, ...]] | None
) -> str | None:
    for key, expected in (require or {}).items():
        if not _has_type(body.get(key), expected):
            return f"answer lacks {key!r} of the documented type"
    return None


def translate_response(
    method: str,
    path: str,
    status: int,
    content: bytes,
    retry_after_header: str | None = None,
    require: Mapping[str, type | tuple[type, ...]] | None = None,
) -> dict[str, Any]:
    """The parsed JSON object of a successful answer, or the matching APIException raised."""
    context: dict[str, Any] = {"status_code": status, "method": method, "path": path}
    try:
        body: Any = _json.loads(content) if content else None
        parsed = True
    except ValueError:
        body, parsed = None, False
    if 200 <= status < 300 and (not parsed or not isinstance(body, dict)):
        snippet = _snippet(content)
        raise InvalidResponseError(
            f"expected a JSON object, got {snippet!r}", body=snippet, **context
        )
    if 200 <= status < 300 and body.get("success") is not False:
        problem = _check_required(body, require)
        if problem:
            raise InvalidResponseError(problem, body=_snippet(content), **context)
        return body
    messages = parse_error_messages(body)
    snippet = _snippet(content)
    if messages:
        text = "; ".join(messages)
    elif not parsed:
        text = f"non-JSON answer {snippet!r}"
    else:
        text = "request failed" if status == 200 else "unexpected HTTP status"
    cls = _error_class(status, messages)
    raise cls(
        text,
        errors=messages,
        retry_after=parse_retry_after(retry_after_header),
        body=snippet,
        **context,
    )


def _requests() -> ModuleType:
    import requests

    return requests


def _reason(exc: BaseException) -> str:
    """A short human reason from a requests/urllib3 exception chain (never holds headers)."""
    current: BaseException = exc
    for _ in range(8):
        inner = getattr(current, "reason", None)
        if not isinstance(inner, BaseException) and current.args:
            inner = current.args[0]
        if not isinstance(inner, BaseException):
            break
        current = inner
    text = str(current)
    if text.startswith("<") and ">: " in text:  # "<HTTPConnection object at 0x..>: reason"
        text = text.split(">: ", 1)[1]
    return text[:ERROR_SNIPPET_CHARS] or type(current).__name__


class HTTPTransport:
    """One requests.Session (created on first use) plus auth, timeouts and read retries.

    Proxies and the CA bundle come from the environment (HTTPS_PROXY, NO_PROXY,
    REQUESTS_CA_BUNDLE...) as requests reads them, but only once, when the session is
    created; the session then has trust_env=False, which saves a proxy and .netrc lookup on
    every request. A session passed in by the caller is used as is and never closed here.
    """

    def __init__(
        self,
        url: str,
        *,
        username: str = "",
        password: str = "",
        public_key: str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
        read_timeout: float = DEFAULT_READ_TIMEOUT_SECONDS,
        read_retries: int = DEFAULT_READ_RETRIES,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        user_agent: str | None = None,
        rng: Callable[[], float] | None = None,
    ) -> None:
        self.url = url
        self._basic_auth = (username, password) if username or password else None
        self._token_header = f"Token {public_key}" if public_key else None
        self.timeout = (connect_timeout, read_timeout)
        self.read_retries = read_retries
        self._session = session
        self._owns_session = session is None
        self._lock = threading.Lock()
        self._sleep = sleep
        self._rng = rng or random.Random().random
        agent = f"tracker-agent/{__version__}"
        self._headers = {
            "User-Agent": f"{agent} {user_agent}" if user_agent else agent,
            "Accept": "application/json",
        }

    def __repr__(self) -> str:
        return f"<HTTPTransport {self.url}>"

    def _get_session(self) -> requests.Session:
        with self._lock:
            if self._session is None:
                session = _requests().Session()
                env = session.merge_environment_settings(self.url, {}, None, None, None)
                session.proxies.update(env.get("proxies") or {})
                session.verify = env.get("verify", True)
                session.trust_env = False
                self._session = session
            return self._session

    def close(self) -> None:
        """Release pooled connections. A later request opens a new session."""
        with self._lock:
            session, self._session = self._session, None
            if not self._owns_session:
                self._session = session
                return
        if session is not None:
            session.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotent: bool,
        public_key_ok: bool = False,
        require: Mapping[str, type | tuple[type, ...]] | None = None,
        body: bytes | None = None,
    ) -> dict[str, Any]:
        """Send one API call and return its JSON object; retry only if `idempotent`.
        `body`: an already serialised JSON body (instead of `json`)."""
        if json is not None:
            try:
                body = dumps(json).encode("utf-8")
            except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
                raise ValidationTypeError("request body", "is not strict JSON") from exc
        attempts = 1 + (self.read_retries if idempotent else 0)
        for attempt in range(1, attempts + 1):
            try:
                return self._send(method, path, body, params, public_key_ok, require)
            except APIException as exc:
                if attempt >= attempts or not exc.retryable:
                    raise
                delay = read_retry_delay(attempt, exc.retry_after, self._rng)
                log.info(
                    "retrying %s %s in %.2f s (retry %d of %d): %s",
                    method,
                    path,
                    delay,
                    attempt,
                    attempts - 1,
                    type(exc).__name__,
                )
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        params: Mapping[str, Any] | None,
        public_key_ok: bool,
        require: Mapping[str, type | tuple[type, ...]] | None,
    ) -> dict[str, Any]:
        requests = _requests()
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        auth = None
        if public_key_ok and self._token_header:
            headers["Authorization"] = self._token_header
        elif self._basic_auth:
            auth = self._basic_auth
        session = self._get_session()
        started = time.monotonic()
        try:
            response = session.request(
                method,
                self.url + path,
                data=body,
                params=params,
                headers=headers,
                auth=auth,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout as exc:
            self._log_failure(method, path, started, exc)
            raise APITimeoutError(
                f"no answer within the timeout (connect, read) = {self.timeout} s",
                method=method,
                path=path,
            ) from exc
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            self._log_failure(method, path, started, exc)
            raise TransportError(
                f"connection failed: {_reason(exc)}", method=method, path=path
            ) from exc
        except requests.RequestException as exc:
            self._log_failure(method, path, started, exc)
            raise TransportError(
                f"request failed: {_reason(exc)}", method=method, path=path, retryable=False
            ) from exc
        with response:
            status, content = response.status_code, response.content
            retry_after = response.headers.get("Retry-After")
        log.debug(
            "%s %s -> %d in %.1f ms",
            method,
            path,
            status,
            (time.monotonic() - started) * 1000,
        )
        return translate_response(method, path, status, content, retry_after, require)

    @staticmethod
    def _log_failure(method: str, path: str, started: float, exc: BaseException) -> None:
        log.debug(
            "%s %s -> no answer after %.1f ms (%s)",
            method,
            path,
            (time.monotonic() - started) * 1000,
            type(exc).__name__,
        )
