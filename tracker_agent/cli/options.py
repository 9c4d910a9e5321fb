"""The global options (--config, --database-url, ...): defined once, accepted before the command
name and after it (`tracker-agent status --database-url URL`).

The group takes them with their environment variables and defaults. Every command and
sub-command gets hidden copies without either, so there only what was typed counts. They are
applied in the order click invokes the commands, outermost first: an option given twice takes
the value nearest the end of the command line.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import click

from tracker_agent.cli import logs
from tracker_agent.cli.context import CliContext
from tracker_agent.config import (
    DEFAULT_CONFIG_FILE,
    ENV_CONFIG,
    ENV_CREDENTIALS_DIRECTORY,
    ENV_LOG_FORMAT,
    ENV_LOG_LEVEL,
    FILE_FIELDS,
    env_name,
)

#: Global options that set the setting of the same name.
SETTING_OPTIONS = ("database_url", "project_token", "username", "url")
#: Where each secret can come from on the command line (public_key has no option).
SECRET_OPTIONS = {
    "project_token": "--project-token",
    "username": "--username",
    "password": "--password-file FILE",
}
PASSWORD_FILE_SOURCE = "--password-file"
LOG_FORMATS = ("text", "json")
DEFAULT_LOG_FORMAT = "text"
#: Default log level: the daemon tells what it does; the other commands only warn.
DAEMON_LOG_LEVEL = "INFO"
COMMAND_LOG_LEVEL = "WARNING"
DAEMON_COMMANDS = ("run", "demo")
_LOGGING_KEY = "tracker_agent.logging"  # ctx.meta: the (level, format) logging runs with
AFTER_COMMAND_EPILOG = (
    "The global options (tracker-agent --help) may also be given here; given both before and "
    "after the command, the one after it wins."
)
_ACCEPTS_MARK = "_tracker_agent_global_options"


def global_options(*, after_command: bool = False) -> list[click.Option]:
    """The global options; `after_command`: the hidden copies a command accepts after its name
    (no environment variables, no defaults: only a value typed there overrides)."""

    def option(decls: list[str], *, envvar: str | None = None, **kwargs: Any) -> click.Option:
        if after_command:
            kwargs.pop("default", None)
            kwargs.pop("show_default", None)
            return click.Option(decls, hidden=True, **kwargs)
        return click.Option(decls, envvar=envvar, show_envvar=envvar is not None, **kwargs)

    password_file_var = env_name("password") + "_FILE"
    return [
        option(
            ["--config", "config_file"],
            type=click.Path(dir_okay=False),
            metavar="FILE",
            help=f"TOML settings file [env var: {ENV_CONFIG}; default: {DEFAULT_CONFIG_FILE} "
            "if present]",
        ),
        option(
            ["--database-url"],
            envvar=env_name("database_url"),
            metavar="URL",
            help="The outbox, sqlite:///path (default: $STATE_DIRECTORY or ~/.local/state).",
        ),
        option(
            ["--project-token"],
            envvar=env_name("project_token"),
            metavar="TOKEN",
            help="Exponea project token.",
        ),
        option(
            ["--username"],
            envvar=env_name("username"),
            metavar="NAME",
            help="Private API key id (HTTP Basic user).",
        ),
        option(
            ["--password-file", "password_file"],
            metavar="FILE",
            help="File holding the private API key secret. There is no --password: a command "
            f"line is visible to every user. [env var: {password_file_var}]",
        ),
        option(
            ["--url"],
            envvar=env_name("url"),
            metavar="URL",
            help="API base URL (default https://api.exponea.com).",
        ),
        option(
            ["--log-level"],
            envvar=ENV_LOG_LEVEL,
            type=click.Choice(logs.LEVELS, case_sensitive=False),
            help=f"Default: {DAEMON_LOG_LEVEL} for {' and '.join(DAEMON_COMMANDS)}, "
            f"{COMMAND_LOG_LEVEL} for the others.",
        ),
        option(
            ["--log-format"],
            envvar=ENV_LOG_FORMAT,
            type=click.Choice(LOG_FORMATS),
            default=DEFAULT_LOG_FORMAT,
            show_default=True,
            help="json: one object per line, for journald and log shippers.",
        ),
    ]


NAMES: tuple[str, ...] = tuple(str(o.name) for o in global_options())


def start_logging(ctx: click.Context, level: str, fmt: str) -> None:
    """Attach the stderr handler; a later --log-level or --log-format reconfigures it."""
    cli = ctx.find_object(CliContext)
    logs.configure(level, fmt, cli.env if cli is not None else {})
    ctx.meta[_LOGGING_KEY] = (level, fmt)


def apply(ctx: click.Context, given: Mapping[str, Any]) -> None:
    """Apply global option values (None: not given) to the invocation's CliContext."""
    cli = ctx.find_object(CliContext)
    values = {name: value for name, value in given.items() if value is not None}
    if cli is None or not values:
        return
    for name in SETTING_OPTIONS:
        if name in values:
            cli.overrides[name] = values[name]
    if "config_file" in values:
        cli.config_file = values["config_file"]
    if "password_file" in values:
        cli.overrides["password"] = read_password_file(values["password_file"])
    if "log_level" in values or "log_format" in values:
        level, fmt = ctx.meta.get(_LOGGING_KEY, (COMMAND_LOG_LEVEL, DEFAULT_LOG_FORMAT))
        start_logging(ctx, values.get("log_level", level), values.get("log_format", fmt))


def read_password_file(path: str) -> str:
    """The secret in `path`, read like TRACKER_AGENT_PASSWORD_FILE (size limit, permissions
    warning); a ConfigError names --password-file."""
    from tracker_agent.config.loading import _read_secret_file

    return _read_secret_file(path, "password", PASSWORD_FILE_SOURCE)


def accept_after_commands(group: click.Group) -> None:
    """Give every command under `group`, at any depth, hidden copies of the global options."""
    for command in group.commands.values():
        _accept(command)
        if isinstance(command, click.Group):
            accept_after_commands(command)


def _accept(command: click.Command) -> None:
    if getattr(command, _ACCEPTS_MARK, False):
        return
    clash = {p.name for p in command.params} & set(NAMES)
    if clash:
        raise RuntimeError(f"{command.name}: option {sorted(clash)[0]} is a global option")
    command.params.extend(global_options(after_command=True))
    if command.epilog is None:
        command.epilog = AFTER_COMMAND_EPILOG
    command.callback = _taking_global_options(command.callback)
    setattr(command, _ACCEPTS_MARK, True)


def _taking_global_options(callback: Callable[..., Any] | None) -> Callable[..., Any]:
    def invoke(*args: Any, **kwargs: Any) -> Any:
        apply(click.get_current_context(), {name: kwargs.pop(name) for name in NAMES})
        return None if callback is None else callback(*args, **kwargs)

    return invoke if callback is None else functools.wraps(callback)(invoke)


def secret_sources(name: str) -> str:
    """Where the secret setting `name` may come from, highest precedence first (loading.py)."""
    variable = env_name(name)
    places = [
        f"{variable} or {variable}_FILE",
        f"${ENV_CREDENTIALS_DIRECTORY}/{name}",
        f"{name} or {name}_file in the config file",
    ]
    if name in SECRET_OPTIONS:
        places.insert(0, SECRET_OPTIONS[name])
    return ", ".join(places)


def secret_sources_guide(env: Mapping[str, str]) -> list[str]:
    """Lines telling where every secret may come from, exactly as the settings loader reads
    them; `env` (the process environment) tells whether systemd credentials are present."""
    names = ", ".join(FILE_FIELDS)
    credentials = env.get(ENV_CREDENTIALS_DIRECTORY)
    here = f"here: {credentials}" if credentials else "not set here"
    return [
        f"where secrets ({names}) come from, highest precedence first:",
        "  1. command-line options: "
        + ", ".join(SECRET_OPTIONS.values())
        + " (none for public_key; no --password: a command line is visible to every user)",
        f"  2. environment: {env_name('<name>')}, or {env_name('<name>')}_FILE naming a file "
        "that holds it (not both)",
        f"  3. systemd credentials: ${ENV_CREDENTIALS_DIRECTORY}/<name> (LoadCredential="
        f"<name>:PATH in the unit; systemd sets it only for the service; {here})",
        '  4. config file: <name> = "...", or <name>_file = "PATH" (a relative PATH starts '
        "from the config file's directory)",
    ]
