"""Request and reply types shared by FakeExponea's endpoint handlers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: (HTTP status, JSON body) answered by an endpoint handler.
Reply = tuple[int, dict[str, Any]]
#: Decides about one batch command ({"name", "data", "command_id"?}).
Predicate = Callable[[dict[str, Any]], bool]


@dataclass(frozen=True)
class Call:
    """One authenticated request on a known route, as the endpoint handlers see it."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: dict[str, Any] | None

    @property
    def data(self) -> dict[str, Any]:
        """The JSON object body ({} when there is none: GET and DELETE)."""
        return self.body if self.body is not None else {}


class CommandError(Exception):
    """A command or body the real API refuses; `errors` are the messages it would answer."""

    def __init__(self, *errors: str) -> None:
        super().__init__(*errors)
        self.errors = list(errors)


class Refusal(Exception):
    """Stops a handler with a whole-request error answer."""

    def __init__(self, status: int, errors: list[str] | dict[str, list[str]]) -> None:
        super().__init__(status, errors)
        self.reply: Reply = (status, {"success": False, "errors": errors})


def refuse(status: int, *messages: str) -> Refusal:
    """Build the usual {"success": false, "errors": [...]} refusal."""
    return Refusal(status, list(messages))
