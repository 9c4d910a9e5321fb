"""The HTTP transport: one requests.Session, auth, timeouts, a total deadline and a size cap on
every request, the translation of `requests` exceptions into tracker_agent.exceptions (what an
answer means is tracker_agent.responses), and read retries.

`requests` is imported on the first request, not when this module is imported.
"""

from __future__ import annotations

import base64
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tracker_agent._version import __version__
from tracker_agent.bodies import (
    BodyTooLarge,
    NoStatus,
    body_closer,
    close_quietly,
    headers_of,
    read_body,
)
from tracker_agent.constants import (
    DEFAULT_CONNECT_TIMEOUT_SECONDS,
    DEFAULT_READ_RETRIES,
    DEFAULT_REQUEST_TIMEOUT_SECONDS,
    MAX_RESPONSE_BYTES,
    READ_MAX_RETRY_AFTER_SECONDS,
    READ_RETRY_BASE_SECONDS,
    READ_RETRY_CAP_SECONDS,
)
from tracker_agent.deadline import Watch, Watchdog
from tracker_agent.exceptions import (
    APIException,
    APITimeoutError,
    InvalidResponseError,
    TransportError,
    ValidationTypeError,
)
from tracker_agent.policy import backoff_delay
from tracker_agent.responses import (
    ERROR_SNIPPET_CHARS,
    Requirements,
    parse_retry_after,
    translate_response,
)
from tracker_agent.testguard import refuse_escaping_test_request
from tracker_agent.wire import dumps

if TYPE_CHECKING:
    import requests

__all__ = [
    "USER_AGENT_PRODUCT",
    "HTTPTransport",
    "basic_authorization",
    "parse_retry_after",
    "read_retry_delay",
    "translate_response",
]

log = logging.getLogger(__name__)

#: The product token that starts our User-Agent (tracker_agent.testing.porting tells our
#: requests from other code's by it).
USER_AGENT_PRODUCT = "tracker-agent"


def read_retry_delay(
    attempt: int, retry_after: float | None = None, rng: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry number `attempt` (1-based) of a read: the drain's backoff
    formula (policy.backoff_delay) from READ_RETRY_BASE_SECONDS up to READ_RETRY_CAP_SECONDS,
    the server's Retry-After as a floor, itself capped at READ_MAX_RETRY_AFTER_SECONDS (the
    caller is waiting)."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    return backoff_delay(
        attempt,
        base=READ_RETRY_BASE_SECONDS,
        cap=READ_RETRY_CAP_SECONDS,
        retry_after=retry_after,
        max_retry_after=READ_MAX_RETRY_AFTER_SECONDS,
        rng=rng,
    )


def basic_authorization(username: str, password: str) -> str:
    """The HTTP Basic Authorization value, from UTF-8 (RFC 7617's charset, what servers expect
    today). requests would encode latin-1 and fail on a password like "pässwörd€"."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def _keep_headers(request: Any) -> Any:
    """An auth hook that changes nothing: our Authorization header wins over a session's
    `auth` or a .netrc entry."""
    return request


def _request_replaced(session: requests.Session) -> bool:
    """Whether Session.request is not requests' own (mock.patch, a porting route)."""
    request = getattr(type(session), "request", None)
    return (
        getattr(request, "__module__", None) != "requests.sessions"
        or getattr(request, "__qualname__", None) != "Session.request"
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

    Every request has a total deadline of connect_timeout + read_timeout covering connect,
    headers and body; when it passes, the socket is shut down (the server sees the connection
    close) and APITimeoutError is raised. Answers longer than MAX_RESPONSE_BYTES are cut off
    (InvalidResponseError).

    Proxies and the CA bundle come from the environment (HTTPS_PROXY, NO_PROXY,
    REQUESTS_CA_BUNDLE...) as requests reads them, but only once, when the session is
    created; the session then has trust_env=False, which saves a proxy and .netrc lookup on
    every request. A session passed in by the caller is used as is and never closed here: it
    gets the size cap, but the deadline can cut off only its body (urllib3 >= 2.3), not a
    connect or a wait for headers, which its per-read timeout alone bounds.
    """

    def __init__(
        self,
        url: str,
        *,
        username: str = "",
        password: str = "",
        public_key: str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
        read_timeout: float = DEFAULT_REQUEST_TIMEOUT_SECONDS,
        read_retries: int = DEFAULT_READ_RETRIES,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        user_agent: str | None = None,
        rng: Callable[[], float] | None = None,
    ) -> None:
        self.url = url
        basic = username or password
        self._basic_header = basic_authorization(username, password) if basic else None
        # Header values go out as UTF-8 bytes: http.client would encode a str as latin-1.
        self._token_header = f"Token {public_key}".encode() if public_key else None
        self.timeout = (connect_timeout, read_timeout)
        self.deadline_seconds = connect_timeout + read_timeout
        self.max_response_bytes = MAX_RESPONSE_BYTES
        self.read_retries = read_retries
        self._session = session
        self._owns_session = session is None
        #: (method, path, has_body, public_key_ok) -> a request prepared once by the session,
        #: copied for each request of ours (see _prepared).
        self._templates: dict[tuple[str, str, bool, bool], Any] = {}
        self._lock = threading.Lock()
        self._watchdog = Watchdog()
        self._sleep = sleep
        self._rng = rng or random.Random().random
        agent = f"{USER_AGENT_PRODUCT}/{__version__}"
        self._headers: dict[str, str | bytes] = {
            "User-Agent": (f"{agent} {user_agent}" if user_agent else agent).encode(),
            "Accept": "application/json",
        }

    def __repr__(self) -> str:
        return f"<HTTPTransport {self.url}>"

    def _get_session(self) -> requests.Session:
        with self._lock:
            if self._session is None:
                from tracker_agent.http_adapter import DeadlineAdapter

                session = _requests().Session()
                env = session.merge_environment_settings(self.url, {}, None, None, None)
                session.proxies.update(env.get("proxies") or {})
                session.verify = env.get("verify", True)
                session.trust_env = False
                for prefix in ("http://", "https://"):
                    session.mount(prefix, DeadlineAdapter())
                self._session = session
            return self._session

    def close(self) -> None:
        """Release pooled connections and the deadline thread. A later request opens a new
        session (and starts the thread again)."""
        self._watchdog.stop()
        with self._lock:
            session, self._session = self._session, None
            self._templates = {}
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
        require: Requirements | None = None,
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

    def _request_kwargs(self, has_body: bool, public_key_ok: bool) -> dict[str, Any]:
        headers = dict(self._headers)
        if has_body:
            headers["Content-Type"] = "application/json"
        authorization: str | bytes | None = self._basic_header
        if public_key_ok and self._token_header:
            authorization = self._token_header
        if authorization is None:
            return {"headers": headers}
        headers["Authorization"] = authorization
        return {"headers": headers, "auth": _keep_headers}

    def _send(
        self,
        method: str,
        path: str,
        body: bytes | None,
        params: Mapping[str, Any] | None,
        public_key_ok: bool,
        require: Requirements | None,
    ) -> dict[str, Any]:
        session = self._get_session()
        refuse_escaping_test_request(session, method, path)  # not retried, never sent
        started = time.monotonic()
        watch = self._watchdog.arm(self.deadline_seconds)
        response: Any = None
        failure: Exception | None = None
        content = b""
        try:
            prepared = self._prepared(session, method, path, body, params, public_key_ok)
            if prepared is not None:
                response = session.send(
                    prepared,
                    timeout=self.timeout,
                    allow_redirects=False,
                    stream=True,
                    proxies=session.proxies,
                    verify=session.verify,
                    cert=session.cert,
                )
            else:
                response = session.request(
                    method,
                    self.url + path,
                    data=body,
                    params=params,
                    timeout=self.timeout,
                    allow_redirects=False,
                    stream=True,
                    **self._request_kwargs(body is not None, public_key_ok),
                )
            if not watch.attached:  # a session of the caller's: cut off the body, at least
                watch.attach(body_closer(response))
            content = read_body(response, self.max_response_bytes)
        except Exception as exc:  # translated below: nothing third-party escapes
            failure = exc
        finally:
            self._watchdog.disarm(watch)  # before the connection can go back to the pool
            if response is not None:
                close_quietly(response)
        if failure is not None or watch.expired:
            self._log_failure(method, path, started, failure)
            status = getattr(response, "status_code", None)  # None, or a fake's: ints only
            status = status if isinstance(status, int) and not isinstance(status, bool) else None
            raise self._failure(failure, watch, method, path, status) from failure
        log.debug(
            "%s %s -> %d in %.1f ms",
            method,
            path,
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        headers = headers_of(response)
        return translate_response(
            method,
            path,
            response.status_code,
            content,
            headers.get("Retry-After"),
            require,
            location=headers.get("Location"),
        )

    def _prepared(
        self,
        session: requests.Session,
        method: str,
        path: str,
        body: bytes | None,
        params: Mapping[str, Any] | None,
        public_key_ok: bool,
    ) -> Any:
        """The request as session.request would prepare it, from a template the session
        prepared once (URL, headers, auth), with this `body`; None where only the full path
        gives the same request: a session of the caller's (its own hooks and adapters), query
        parameters, cookies in the jar (they change from one answer to the next), or
        Session.request replaced (a test's mock, testing.porting's route: they must see
        every request).

        Why: preparing costs about a quarter of a request's CPU in `requests` (merging the
        session's settings, parsing and re-quoting the URL), and on the drain it is paid
        between one answer and the next request, on every batch."""
        if not self._owns_session or params or session.cookies or _request_replaced(session):
            return None
        key = (method, path, body is not None, public_key_ok)
        template = self._templates.get(key)
        if template is None:
            kwargs = self._request_kwargs(body is not None, public_key_ok)
            request = _requests().Request(
                method, self.url + path, headers=kwargs["headers"], auth=kwargs.get("auth")
            )
            template = session.prepare_request(request)
            self._templates[key] = template
        prepared = template.copy()
        if body is not None:
            prepared.body = body
            prepared.headers["Content-Length"] = str(len(body))
        return prepared

    def _failure(
        self, exc: Exception | None, watch: Watch, method: str, path: str, status: int | None
    ) -> APIException:
        """The APIException for a request that got no readable answer."""
        requests = _requests()
        where: dict[str, Any] = {"method": method, "path": path}
        if watch.expired:  # whatever the cut-off socket made requests raise
            return APITimeoutError(
                f"no complete answer within the deadline of {self.deadline_seconds:g} s "
                "(connect + read timeout)",
                **where,
            )
        if isinstance(exc, NoStatus):  # a fake that will not answer better when asked again
            return InvalidResponseError(
                "the response has no int status_code (a test's fake response?)",
                retryable=False,
                **where,
            )
        if isinstance(exc, BodyTooLarge):
            return InvalidResponseError(
                f"answer longer than {self.max_response_bytes} bytes: cut off",
                status_code=status,
                **where,
            )
        if isinstance(exc, requests.Timeout):
            return APITimeoutError(
                f"no answer within the timeout (connect, read) = {self.timeout} s", **where
            )
        if isinstance(exc, (requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
            return TransportError(f"connection failed: {_reason(exc)}", **where)
        if isinstance(exc, requests.exceptions.ContentDecodingError):
            message = f"answer could not be decoded: {_reason(exc)}"
            return InvalidResponseError(message, status_code=status, **where)
        if isinstance(exc, requests.RequestException):  # invalid URL, header, schema...
            return TransportError(f"request failed: {_reason(exc)}", retryable=False, **where)
        if isinstance(exc, OSError):
            return TransportError(f"connection failed: {_reason(exc)}", **where)
        # Could not even be built or sent (a value that cannot be encoded...): configuration.
        # Only the type: a UnicodeError's text can quote the value, and it may be a secret.
        kind = type(exc).__name__
        return TransportError(f"request could not be sent ({kind})", retryable=False, **where)

    @staticmethod
    def _log_failure(method: str, path: str, started: float, exc: BaseException | None) -> None:
        log.debug(
            "%s %s -> no answer after %.1f ms (%s)",
            method,
            path,
            (time.monotonic() - started) * 1000,
            type(exc).__name__ if exc is not None else "deadline",
        )
