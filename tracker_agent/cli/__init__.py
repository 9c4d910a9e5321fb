"""The `tracker-agent` command (click): global options, error handling, the command list.

Every expected failure (bad settings, unreachable API, locked or corrupt outbox, bad input)
ends as one line "tracker-agent: error: ..." on stderr and exit status 1, never a traceback.
Output nobody reads (`tracker-agent status | head -1`) is dropped, never an error (output.py).
Commands live in the sibling modules; heavy imports happen inside the commands.
"""

from __future__ import annotations

import os
from typing import Any

import click
from click.core import ParameterSource

from tracker_agent._version import __version__
from tracker_agent.cli import options, output
from tracker_agent.cli.admin import check, clear_warning, config_, migrate
from tracker_agent.cli.bundles import export
from tracker_agent.cli.context import EXIT_ERROR, PROG, CliContext, describe, fail
from tracker_agent.cli.deadletters import dead_letters
from tracker_agent.cli.demo import demo
from tracker_agent.cli.queue import flush, import_, track
from tracker_agent.cli.receipts import receipt
from tracker_agent.cli.resume import resume
from tracker_agent.cli.run import run
from tracker_agent.cli.status import status
from tracker_agent.exceptions import TrackerAgentError

__all__ = ["main", "cli", "EXIT_ERROR"]


class _Group(click.Group):
    """Turns the package's expected errors into one stderr line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (TrackerAgentError, OSError) as exc:
            fail(describe(exc))


@click.group(
    cls=_Group,
    params=options.global_options(),
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "-V", "--version", prog_name=PROG)
@click.pass_context
def cli(ctx: click.Context, /, **given: Any) -> None:
    """Durable event delivery to the Exponea (Bloomreach Engagement) API.

    Settings come from the config file, then TRACKER_AGENT_* environment variables, then
    these options. `tracker-agent config` shows the result. The options may also follow the
    command (`tracker-agent status --database-url URL`); given both before and after it, the
    one after it wins.
    """
    ctx.obj = CliContext(env=dict(os.environ), config_file=None, overrides={})
    daemon = ctx.invoked_subcommand in options.DAEMON_COMMANDS
    default_level = options.DAEMON_LOG_LEVEL if daemon else options.COMMAND_LOG_LEVEL
    options.start_logging(ctx, given.pop("log_level") or default_level, given.pop("log_format"))
    # Values click took from the environment are left to the settings loader, which reads the
    # same variables and names them correctly in its error messages.
    options.apply(
        ctx,
        {
            name: value
            for name, value in given.items()
            if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
        },
    )


for _command in (
    run, status, flush, track, import_, dead_letters, migrate, clear_warning, check, config_, demo,
    resume, receipt, export,
):  # fmt: skip
    cli.add_command(_command)
options.accept_after_commands(cli)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: `tracker-agent ...`."""
    output.survive_closed_pipes()
    cli.main(args=argv, prog_name=PROG)
