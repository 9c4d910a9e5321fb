"""What every command shares: the settings, the agent (opened lazily, closed on exit), helpers.

Heavy modules (SQLAlchemy through the agent, requests through the client) are imported only
when a command asks for them, so `status` and `--help` start fast.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from tracker_agent.config import Settings, load_database_url, load_settings

if TYPE_CHECKING:
    from tracker_agent.agent import TrackerAgent
    from tracker_agent.client import Exponea

log = logging.getLogger(__name__)

PROG = "tracker-agent"
#: Exit codes: 1 for errors, 2 for `status` monitoring alarms (and click's usage errors).
EXIT_ERROR = 1
EXIT_ALARM = 2

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

F = TypeVar("F", bound=Callable[..., Any])


class CliContext:
    """Settings and resources for one invocation; `env` is the process environment."""

    def __init__(
        self,
        *,
        env: Mapping[str, str],
        config_file: str | None,
        overrides: dict[str, object],
    ) -> None:
        self.env = env
        self.config_file = config_file
        self.overrides = overrides
        self._settings: Settings | None = None
        self._agent: TrackerAgent | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(
                config_file=self.config_file, env=self.env, overrides=self.overrides
            )
        return self._settings

    def database_url(self) -> str:
        """The outbox URL without needing credentials (status, migrate)."""
        from tracker_agent.outbox.files import default_database_url

        url = load_database_url(
            config_file=self.config_file, env=self.env, overrides=self.overrides
        )
        return url or default_database_url(self.env)

    def agent(self) -> TrackerAgent:
        """The TrackerAgent on the configured outbox; closed when the command ends. It starts
        no background drain (a one-shot command delivers only if it says so: flush; run starts
        the drain itself), so its close delivers nothing either."""
        if self._agent is None:
            from tracker_agent.agent import TrackerAgent

            self._agent = TrackerAgent.from_settings(self.settings().replace(drain=False))
            click.get_current_context().call_on_close(self._close_agent)
        return self._agent

    def client(self) -> Exponea:
        """A direct API client (no outbox); closed when the command ends."""
        from tracker_agent.client import Exponea

        client = Exponea.from_settings(self.settings())
        click.get_current_context().call_on_close(client.close)
        return client

    def _close_agent(self) -> None:
        agent, self._agent = self._agent, None
        if agent is None:
            return
        try:
            agent.close()
        except Exception as exc:  # the command's own outcome matters more than a close error
            log.warning("closing the outbox failed: %s", exc)


def pass_cli(f: F) -> F:
    """Decorator: pass the CliContext as the first argument."""
    return click.pass_obj(f)  # type: ignore[return-value]


def describe(exc: BaseException) -> str:
    """One line for people: an API error's message with what was asked and what answered
    ("POST /track/... HTTP 503: ..."), any other error's text."""
    text = str(exc) or type(exc).__name__
    context = getattr(exc, "context", "")
    return f"{context}: {text}" if isinstance(context, str) and context else text


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """One line on stderr, then exit with `code` (never a traceback)."""
    click.echo(f"{PROG}: error: {message}", err=True)
    raise click.exceptions.Exit(code)


def parse_duration(text: str) -> float:
    """Seconds from "90", "90s", "15m", "2h", "7d" or "1w"."""
    match = _DURATION.match(text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration such as 90, 15m, 2h or 7d")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic only in newer click stubs
    """A click type for durations (see parse_duration)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(value)
        except click.BadParameter as exc:
            self.fail(exc.message, param, ctx)


DURATION = Duration()


class Seconds(click.FloatRange):
    """A number of seconds from 0 to `high`; NaN is refused too (it passes any range check)."""

    name = "seconds"

    def __init__(self, high: float) -> None:
        super().__init__(min=0, max=high)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds
