"""The `tracker-agent` command (click): global options, error handling, the command list.

Every expected failure (bad settings, unreachable API, locked or corrupt outbox, bad input)
ends as one line "tracker-agent: error: ..." on stderr and exit status 1, never a traceback.
Commands live in the sibling modules; heavy imports happen inside the commands.
"""

from __future__ import annotations

import os
from typing import Any

import click
from click.core import ParameterSource

from tracker_agent._version import __version__
from tracker_agent.cli import logs
from tracker_agent.cli.admin import check, clear_warning, config_, migrate
from tracker_agent.cli.context import EXIT_ERROR, PROG, CliContext, describe, fail
from tracker_agent.cli.deadletters import dead_letters
from tracker_agent.cli.demo import demo
from tracker_agent.cli.queue import flush, import_, track
from tracker_agent.cli.run import run
from tracker_agent.cli.status import status
from tracker_agent.config import (
    DEFAULT_CONFIG_FILE,
    ENV_CONFIG,
    ENV_LOG_FORMAT,
    ENV_LOG_LEVEL,
    env_name,
)
from tracker_agent.exceptions import TrackerAgentError

__all__ = ["main", "cli", "EXIT_ERROR"]

#: Settings that can be given as global options (the rest: config file or environment).
OPTION_SETTINGS = ("database_url", "project_token", "url")
#: Default log level: the daemon tells what it does; the other commands only warn.
DAEMON_LOG_LEVEL = "INFO"
COMMAND_LOG_LEVEL = "WARNING"


class _Group(click.Group):
    """Turns the package's expected errors into one stderr line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (TrackerAgentError, OSError) as exc:
            fail(describe(exc))


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help=f"TOML settings file [env var: {ENV_CONFIG}; default: {DEFAULT_CONFIG_FILE} if present]",
)
@click.option(
    "--database-url",
    envvar=env_name("database_url"),
    show_envvar=True,
    metavar="URL",
    help="The outbox, sqlite:///path (default: $STATE_DIRECTORY or ~/.local/state).",
)
@click.option(
    "--project-token",
    envvar=env_name("project_token"),
    show_envvar=True,
    metavar="TOKEN",
    help="Exponea project token.",
)
@click.option(
    "--url",
    envvar=env_name("url"),
    show_envvar=True,
    metavar="URL",
    help="API base URL (default https://api.exponea.com).",
)
@click.option(
    "--log-level",
    envvar=ENV_LOG_LEVEL,
    show_envvar=True,
    type=click.Choice(logs.LEVELS, case_sensitive=False),
    default=None,
    help=f"Default: {DAEMON_LOG_LEVEL} for run, {COMMAND_LOG_LEVEL} for the others.",
)
@click.option(
    "--log-format",
    envvar=ENV_LOG_FORMAT,
    show_envvar=True,
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one object per line, for journald and log shippers.",
)
@click.version_option(__version__, "-V", "--version", prog_name=PROG)
@click.pass_context
def cli(
    ctx: click.Context,
    config_file: str | None,
    database_url: str | None,
    project_token: str | None,
    url: str | None,
    log_level: str | None,
    log_format: str,
) -> None:
    """Durable event delivery to the Exponea (Bloomreach Engagement) API.

    Settings come from the config file, then TRACKER_AGENT_* environment variables, then
    these options. `tracker-agent config` shows the result.
    """
    env = dict(os.environ)
    default_level = (
        DAEMON_LOG_LEVEL if ctx.invoked_subcommand in ("run", "demo") else COMMAND_LOG_LEVEL
    )
    logs.configure(log_level or default_level, log_format, env)
    given = {"database_url": database_url, "project_token": project_token, "url": url}
    # Values click took from the environment are left to the settings loader, which reads the
    # same variables and names them correctly in its error messages.
    overrides: dict[str, object] = {
        name: value
        for name, value in given.items()
        if value is not None and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }
    ctx.obj = CliContext(env=env, config_file=config_file, overrides=overrides)


for _command in (
    run, status, flush, track, import_, dead_letters, migrate, clear_warning, check, config_, demo,
):  # fmt: skip
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: `tracker-agent ...`."""
    cli.main(args=argv, prog_name=PROG)
