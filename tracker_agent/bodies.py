"""Reading an HTTP answer's body: streamed in chunks and cut off at a size cap for a real
response, or read from the attributes of a test's made-up stand-in (status_code and text are
enough, as exponea-python-sdk's tests made them). Errors are BodyTooLarge / NoStatus; the
transport translates them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from tracker_agent.wire import dumps

__all__ = ["BodyTooLarge", "NoStatus", "body_closer", "close_quietly", "headers_of", "read_body"]

log = logging.getLogger("tracker_agent.transport")

READ_CHUNK_BYTES = 64 * 1024


class BodyTooLarge(Exception):
    """The answer is longer than the cap (raised while reading, translated in _failure)."""


class NoStatus(Exception):
    """A test's fake response without an int status_code (translated in _failure)."""


def _is_streamed(response: Any) -> bool:
    import requests

    return isinstance(response, requests.Response) and response.raw is not None


def _plain_content(response: Any) -> bytes:
    """The body of a response a test made up: `content` (bytes), else `text` (str), else
    `json()`. exponea-python-sdk's tests faked answers with just status_code and text."""
    content = getattr(response, "content", None)
    if isinstance(content, (bytes, bytearray)):
        return bytes(content)
    text = getattr(response, "text", None)
    if isinstance(text, str):
        return text.encode("utf-8")
    decode = getattr(response, "json", None)
    return dumps(decode()).encode("utf-8") if callable(decode) else b""


def read_body(response: Any, limit: int) -> bytes:
    """The body of `response`: streamed and capped for a real one (read_capped), or read from
    the attributes of a minimal stand-in (a test's fake: status_code and text are enough)."""
    status = getattr(response, "status_code", None)
    if isinstance(status, bool) or not isinstance(status, int):
        raise NoStatus
    if _is_streamed(response):
        return read_capped(response, limit)
    content = _plain_content(response)
    if len(content) > limit:
        raise BodyTooLarge
    return content


def headers_of(response: Any) -> Mapping[str, str]:
    headers = getattr(response, "headers", None)
    return headers if isinstance(headers, Mapping) else {}


def read_capped(response: Any, limit: int) -> bytes:
    """The whole body of a streamed `response`, or BodyTooLarge as soon as it passes `limit`."""
    declared = response.headers.get("Content-Length") or ""
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    parts: list[bytes] = []
    total = 0
    for chunk in response.iter_content(READ_CHUNK_BYTES):
        total += len(chunk)
        if total > limit:
            raise BodyTooLarge
        parts.append(chunk)
    return b"".join(parts)


def body_closer(response: Any) -> Callable[[], None]:
    """Cuts off the body of a response (urllib3 >= 2.3); a no-op where that is not offered."""
    shutdown = getattr(getattr(response, "raw", None), "shutdown", None)
    return shutdown if callable(shutdown) else lambda: None


def close_quietly(response: Any) -> None:
    close = getattr(response, "close", None)
    if not callable(close):  # a test's minimal fake response
        return
    try:
        close()  # a body read to the end frees the connection, anything else closes it
    except Exception:
        log.debug("closing a response failed", exc_info=True)
