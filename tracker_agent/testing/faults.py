"""Queued fault injection for FakeExponea: injected answers (captive portals, redirects,
truncated or oversized bodies, trickled answers), dropped connections, delays, and batch
answers that lose results."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from tracker_agent.testing.server import JSON_TYPE, Outgoing

DEFAULT_FAULT_STATUS = 503
DEFAULT_DELAY_SECONDS = 1.0
DEFAULT_TRICKLE_INTERVAL_SECONDS = 0.2
CAPTIVE_REDIRECT_STATUS = 302
INJECTED_ERRORS = ["injected"]
TEXT_TYPE = ("Content-Type", "text/plain; charset=utf-8")
HTML_TYPE = "text/html; charset=utf-8"
#: Where the captive portal's 302 sends the client (never followed by tracker-agent).
CAPTIVE_PORTAL_URL = "http://portal.example/login?continue=1"
CAPTIVE_PORTAL_PAGE = (
    "<!DOCTYPE html><html><head><title>Welcome</title></head><body>"
    "<h1>Welcome to the hotel Wi-Fi</h1><form method=post action=/login>"
    "<input name=room><button>Connect</button></form></body></html>"
)
#: Over the client's 16 MiB answer cap (tracker_agent.transport.MAX_RESPONSE_BYTES).
DEFAULT_OVERSIZE_BYTES = 17 * 1024 * 1024
_OVERSIZE_HEAD = b'{"success": true, "results": [], "padding": "'
_OVERSIZE_TAIL = b'"}'

#: "fail", "drop", "trickle" and "oversize" answer instead of the API (nothing is applied);
#: "delay" and "mangle" let the API handle the request first.
FaultKind = Literal["fail", "drop", "delay", "trickle", "oversize", "mangle"]


@dataclass
class Fault:
    """One queued fault; `remaining` requests still get it."""

    kind: FaultKind
    remaining: int
    path_contains: str | None = None
    status: int = 503
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # delay: the wait; trickle: the seconds between two bytes
    apply_first: bool = False
    size: int = 0  # oversize: the body's length in bytes
    declare_length: bool = True  # oversize: send Content-Length (else: body until close)
    headers_first: bool = False  # trickle: status line and headers at once, then the body
    keep: int = 0  # mangle: how many of the batch's results the answer keeps

    @property
    def answers_instead(self) -> bool:
        """The fault replaces the API's answer: the request is not handled at all."""
        return self.kind in ("fail", "drop", "trickle", "oversize")

    def matches(self, path: str) -> bool:
        return self.path_contains is None or self.path_contains in path


class FaultQueue:
    """Faults in the order they were queued; each request consumes at most one.

    Not locked itself: FakeExponea calls it under its own lock.
    """

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        if isinstance(fault.remaining, bool) or not isinstance(fault.remaining, int):
            raise TypeError("n must be an int")
        if fault.remaining < 1:
            raise ValueError("n must be at least 1")
        self._faults.append(fault)

    def take(self, path: str) -> Fault | None:
        """Consume one use of the first queued fault that applies to `path`."""
        for fault in self._faults:
            if fault.matches(path):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None

    def pending(self) -> int:
        """How many requests are still going to get an injected fault."""
        return sum(fault.remaining for fault in self._faults)

    def clear(self) -> None:
        self._faults.clear()


def format_retry_after(value: float | str) -> str:
    """Retry-After header value: whole seconds without ".0"; strings (HTTP dates) as given."""
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


def fault_answer(fault: Fault, delay: float) -> Outgoing:
    """The injected answer of a fault that answers instead of the API."""
    if fault.kind == "drop":
        return Outgoing(None, delay=delay)
    if fault.kind == "oversize":
        return oversize_answer(fault, delay)
    body = {"success": False, "errors": INJECTED_ERRORS} if fault.body is None else fault.body
    if isinstance(body, bytes):
        raw, headers = body, {TEXT_TYPE[0]: TEXT_TYPE[1]}
    elif isinstance(body, str):
        raw, headers = body.encode(), {TEXT_TYPE[0]: TEXT_TYPE[1]}
    else:
        raw, headers = json.dumps(body).encode(), {JSON_TYPE[0]: JSON_TYPE[1]}
    headers.update(fault.headers)
    if fault.kind == "trickle":
        return Outgoing(
            fault.status,
            raw,
            tuple(headers.items()),
            delay,
            byte_interval=fault.seconds,
            headers_first=fault.headers_first,
        )
    return Outgoing(fault.status, raw, tuple(headers.items()), delay)


def oversize_answer(fault: Fault, delay: float) -> Outgoing:
    """A 200 JSON-looking answer of `fault.size` bytes (padding in one long string)."""
    padding = max(0, fault.size - len(_OVERSIZE_HEAD) - len(_OVERSIZE_TAIL))
    body = _OVERSIZE_HEAD + b"x" * padding + _OVERSIZE_TAIL
    headers = (JSON_TYPE, *fault.headers.items())
    return Outgoing(200, body, headers, delay, declare_length=fault.declare_length)


def mangle_results(payload: dict[str, Any], keep: int) -> dict[str, Any]:
    """A batch answer that lost all but its first `keep` results."""
    results = payload.get("results")
    if isinstance(results, list):
        payload = {**payload, "results": results[:keep]}
    return payload


class FaultInjection:
    """FakeExponea's fault-queueing methods (see the package docstring for the whole list)."""

    _lock: threading.Lock
    _faults: FaultQueue

    def fail_next(
        self,
        n: int = 1,
        status: int = DEFAULT_FAULT_STATUS,
        body: Any = None,
        retry_after: float | str | None = None,
        headers: dict[str, str] | None = None,
        path_contains: str | None = None,
        content_type: str | None = None,
    ) -> None:
        """Answer the next `n` matching requests with `status` and `body`, doing nothing else.

        body: dict/list -> JSON, str/bytes -> sent raw as text/plain (or `content_type`);
        default {"success": false, "errors": ["injected"]}. A str body can be truncated JSON.
        retry_after adds a Retry-After header (seconds, or an HTTP date string). path_contains
        limits the fault to matching paths.
        """
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = format_retry_after(retry_after)
        if content_type is not None:
            extra["Content-Type"] = content_type
        fault = Fault("fail", n, path_contains, status=status, body=body, headers=extra)
        with self._lock:
            self._faults.add(fault)

    def captive_portal_next(
        self, n: int = 1, *, redirect: bool = False, path_contains: str | None = None
    ) -> None:
        """Answer the next `n` matching requests like a captive portal, doing nothing else:
        200 with an HTML login page, or with redirect=True a 302 to CAPTIVE_PORTAL_URL."""
        if redirect:
            self.fail_next(
                n,
                status=CAPTIVE_REDIRECT_STATUS,
                body=f'<html><a href="{CAPTIVE_PORTAL_URL}">Log in</a></html>',
                headers={"Location": CAPTIVE_PORTAL_URL},
                content_type=HTML_TYPE,
                path_contains=path_contains,
            )
        else:
            self.fail_next(
                n,
                status=200,
                body=CAPTIVE_PORTAL_PAGE,
                content_type=HTML_TYPE,
                path_contains=path_contains,
            )

    def trickle_next(
        self,
        n: int = 1,
        interval: float = DEFAULT_TRICKLE_INTERVAL_SECONDS,
        status: int = DEFAULT_FAULT_STATUS,
        body: Any = None,
        *,
        headers_first: bool = False,
        path_contains: str | None = None,
    ) -> None:
        """Answer the next `n` matching requests one byte every `interval` seconds, doing
        nothing else: the answer (status and body as in fail_next) takes minutes to arrive.
        With headers_first, the status line and headers come at once and only the body
        trickles. The request's RecordedRequest.hung_up_at tells when the client gave up."""
        fault = Fault(
            "trickle", n, path_contains, status=status, body=body, seconds=float(interval),
            headers_first=headers_first,
        )  # fmt: skip
        with self._lock:
            self._faults.add(fault)

    def oversize_next(
        self,
        n: int = 1,
        size: int = DEFAULT_OVERSIZE_BYTES,
        *,
        declare_length: bool = True,
        path_contains: str | None = None,
    ) -> None:
        """Answer the next `n` matching requests with a 200 JSON-looking body of `size` bytes
        (by default just over the client's 16 MiB cap), doing nothing else. Without
        declare_length there is no Content-Length: the body ends when the connection does."""
        fault = Fault("oversize", n, path_contains, size=size, declare_length=declare_length)
        with self._lock:
            self._faults.add(fault)

    def mangle_results_next(self, n: int = 1, keep: int = 0) -> None:
        """Handle the next `n` batch requests normally (their commands ARE applied) but answer
        only the first `keep` results: a wrong result count, as from a buggy server or proxy.
        A client that retries the whole batch then gets its events deduplicated."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ValueError("keep must be an int >= 0")
        with self._lock:
            self._faults.add(Fault("mangle", n, "/batch", keep=keep))

    def drop_next(self, n: int = 1, path_contains: str | None = None) -> None:
        """Close the connection of the next `n` matching requests without answering."""
        with self._lock:
            self._faults.add(Fault("drop", n, path_contains))

    def delay_next(
        self,
        n: int = 1,
        seconds: float = DEFAULT_DELAY_SECONDS,
        path_contains: str | None = None,
        *,
        apply_first: bool = False,
    ) -> None:
        """Make the next `n` matching requests wait `seconds` (on top of `latency`).

        By default the request is handled after the wait, and not at all if the client hung
        up meanwhile (a client timeout then leaves no trace but status None in the log).
        apply_first=True applies it at once and delays only the answer: the client times out
        although the server acted (the at-least-once case; its retry is deduplicated).
        """
        fault = Fault("delay", n, path_contains, seconds=seconds, apply_first=apply_first)
        with self._lock:
            self._faults.add(fault)

    def clear_faults(self) -> int:
        """Drop every queued fault (data, settings and the request log stay); returns how many
        fault uses were still pending. A fault queued with a large `n` acts as a mode ("every
        batch gets a 503") until this ends it, e.g. to make the fake flap between modes."""
        with self._lock:
            left = self._faults.pending()
            self._faults.clear()
            return left

    @property
    def pending_faults(self) -> int:
        """How many requests are still going to get a queued fault."""
        with self._lock:
            return self._faults.pending()
