"""What an HTTP answer means: the JSON object of a success, or the APIException it stands for.

Pure (no I/O); tracker_agent.transport reads the answer and calls translate_response. The rule
that the drain relies on (DESIGN.md, "Delivery semantics"): only the server's own refusal is a
BadRequestError or RequestTooLargeError, i.e. a 400 or 413 with one of the API's JSON error
bodies, or a 2xx with "success": false and error messages. An answer we cannot read (an HTML
login page, a redirect, truncated JSON, a 200 without the documented keys, a non-JSON 4xx from
a proxy) is an InvalidResponseError, which is retryable like any other network fault.
"""

from __future__ import annotations

import email.utils
import json as _json
import math
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

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
)

__all__ = [
    "ERROR_SNIPPET_CHARS",
    "parse_error_messages",
    "parse_retry_after",
    "translate_response",
]

ERROR_SNIPPET_CHARS = 200
GLOBAL_ERRORS_KEY = "_global"
_AUTH_FAILURE_MARKERS = ("could not authenticate", "invalid project id")
#: Statuses that mean the same whatever the body says (a proxy's HTML 401 is still a 401).
_STATUS_ERRORS: dict[int, type[APIException]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: APITimeoutError,
    429: RateLimitedError,
}
#: Statuses whose JSON error body is the server refusing the request itself.
_REFUSALS: dict[int, type[APIException]] = {
    400: BadRequestError,
    413: RequestTooLargeError,
}

Requirements = Mapping[str, type | tuple[type, ...]]


def _as_messages(value: object) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value if item not in (None, "")]
    if value in (None, ""):
        return []
    return [str(value)]


def parse_error_messages(body: object) -> list[str]:
    """The server's messages from any documented error shape, in a stable order.

    Shapes: {"error": str}, {"errors": [str]}, {"errors": {"_global": [str], "<field>": [str]}}
    (field messages become "<field>: <message>") and {"message": str}. Anything else: [].
    """
    if not isinstance(body, Mapping):
        return []
    messages = _as_messages(body.get("error"))
    errors = body.get("errors")
    if isinstance(errors, Mapping):
        messages.extend(_as_messages(errors.get(GLOBAL_ERRORS_KEY)))
        for key, value in errors.items():
            if key != GLOBAL_ERRORS_KEY:
                messages.extend(f"{key}: {message}" for message in _as_messages(value))
    else:
        messages.extend(_as_messages(errors))
    messages.extend(_as_messages(body.get("message")))
    return messages


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


def snippet(content: bytes) -> str:
    """The start of a body, whitespace folded, for messages (never more than the cap)."""
    text = " ".join(content.decode("utf-8", errors="replace").split())
    if len(text) > ERROR_SNIPPET_CHARS:
        return text[:ERROR_SNIPPET_CHARS] + "..."
    return text


def _has_type(value: object, expected: type | tuple[type, ...]) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):  # bool is an int; only accept it where bool is asked for
        return bool in types
    return isinstance(value, types)


def _check_required(body: dict[str, Any], require: Requirements | None) -> str | None:
    for key, expected in (require or {}).items():
        if not _has_type(body.get(key), expected):
            return f"answer lacks {key!r} of the documented type"
    return None


def _error_class(status: int, messages: list[str]) -> type[APIException]:
    """The exception for a failed answer; `messages` come from the API's JSON error body."""
    if status in _STATUS_ERRORS:
        return _STATUS_ERRORS[status]
    if status >= 500:
        return ServerError
    if not messages or status < 200 or 300 <= status < 400:
        return InvalidResponseError  # not the API speaking: a portal, a proxy, a redirect
    lowered = " ".join(messages).lower()
    if status in (200, 400) and any(marker in lowered for marker in _AUTH_FAILURE_MARKERS):
        return AuthenticationError  # the API's way to refuse a key or a project token
    return _REFUSALS.get(status, BadRequestError)


def _describe(
    status: int, messages: list[str], parsed: bool, text: str, location: str | None
) -> str:
    if messages:
        return "; ".join(messages)
    if 300 <= status < 400:
        where = urlsplit(location or "").netloc  # the host only: a query may hold ids
        return f"redirected{f' to {where}' if where else ''} (a captive portal or a proxy?)"
    if not parsed:
        return f"non-JSON answer {text!r}"
    return "request failed" if status == 200 else "unexpected HTTP status"


def translate_response(
    method: str,
    path: str,
    status: int,
    content: bytes,
    retry_after_header: str | None = None,
    require: Requirements | None = None,
    location: str | None = None,
) -> dict[str, Any]:
    """The parsed JSON object of a successful answer, or the matching APIException raised."""
    context: dict[str, Any] = {"status_code": status, "method": method, "path": path}
    try:
        body: Any = _json.loads(content) if content else None
        parsed = True
    except ValueError:  # also UnicodeDecodeError
        body, parsed = None, False
    text = snippet(content)
    if 200 <= status < 300:
        if not isinstance(body, dict):
            raise InvalidResponseError(
                f"expected a JSON object, got {text!r}", body=text, **context
            )
        if body.get("success") is not False:
            problem = _check_required(body, require)
            if problem:
                raise InvalidResponseError(problem, body=text, **context)
            return body
    messages = parse_error_messages(body)
    cls = _error_class(status, messages)
    raise cls(
        _describe(status, messages, parsed, text, location),
        errors=messages,
        retry_after=parse_retry_after(retry_after_header),
        body=text,
        **context,
    )
