"""Queued fault injection for FakeExponea: injected answers, dropped connections, delays."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from tracker_agent.testing.server import JSON_TYPE, Outgoing

INJECTED_ERRORS = ["injected"]
TEXT_TYPE = ("Content-Type", "text/plain; charset=utf-8")

FaultKind = Literal["fail", "drop", "delay"]


@dataclass
class Fault:
    """One queued fault; `remaining` requests still get it."""

    kind: FaultKind
    remaining: int
    path_contains: str | None = None
    status: int = 503
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    apply_first: bool = False

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
    """The injected answer of a "fail" fault."""
    body = {"success": False, "errors": INJECTED_ERRORS} if fault.body is None else fault.body
    if isinstance(body, bytes):
        raw, headers = body, {TEXT_TYPE[0]: TEXT_TYPE[1]}
    elif isinstance(body, str):
        raw, headers = body.encode(), {TEXT_TYPE[0]: TEXT_TYPE[1]}
    else:
        raw, headers = json.dumps(body).encode(), {JSON_TYPE[0]: JSON_TYPE[1]}
    headers.update(fault.headers)
    return Outgoing(fault.status, raw, tuple(headers.items()), delay)
