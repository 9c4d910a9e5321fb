"""Where settings come from: TOML file, systemd credentials, environment, overrides.

Precedence, lowest first: defaults < config file < $CREDENTIALS_DIRECTORY (secrets only)
< environment (TRACKER_AGENT_<FIELD>, <FIELD>_FILE for secrets) < overrides (command-line options).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from tracker_agent.config.settings import (
    DEFAULTS,
    FIELD_NAMES,
    FILE_FIELDS,
    KINDS,
    SECRET_FIELDS,
    Invalid,
    Settings,
    check_type,
    check_value,
    validate,
)
from tracker_agent.exceptions import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

log = logging.getLogger(__name__)

ENV_PREFIX = "TRACKER_AGENT_"
ENV_CONFIG = "TRACKER_AGENT_CONFIG"
ENV_LOG_LEVEL = "TRACKER_AGENT_LOG_LEVEL"
ENV_LOG_FORMAT = "TRACKER_AGENT_LOG_FORMAT"
ENV_CREDENTIALS_DIRECTORY = "CREDENTIALS_DIRECTORY"  # set by systemd for LoadCredential=
#: `tracker-agent run --metrics-listen`: where the daemon serves /metrics (HOST:PORT).
ENV_METRICS_LISTEN = "TRACKER_AGENT_METRICS_LISTEN"
DEFAULT_CONFIG_FILE = "/etc/tracker-agent/config.toml"  # used only when it exists
TOML_TABLE = "tracker_agent"
WORLD_READABLE = 0o004
#: A secret file (<FIELD>_FILE, systemd credential) holds one short line; more is a wrong
#: path (/dev/zero, a log file) and is refused rather than read forever.
MAX_SECRET_FILE_BYTES = 64 * 1024
#: A config file holds a few dozen settings.
MAX_CONFIG_FILE_BYTES = 1024 * 1024
_BOOL_WORDS = {
    "1": True, "true": True, "yes": True, "on": True,
    "0": False, "false": False, "no": False, "off": False,
}  # fmt: skip


def env_name(field_name: str) -> str:
    """The environment variable for a field: TRACKER_AGENT_<FIELD>."""
    return ENV_PREFIX + field_name.upper()


def _known_env_names() -> frozenset[str]:
    names = {env_name(n) for n in FIELD_NAMES} | {env_name(n) + "_FILE" for n in FILE_FIELDS}
    return frozenset(names | {ENV_CONFIG, ENV_LOG_LEVEL, ENV_LOG_FORMAT, ENV_METRICS_LISTEN})


def _parse_text(name: str, text: str) -> Any:
    """Turn an environment/command-line string into the field's type."""
    kind, optional = KINDS[name]
    if optional and text.strip().lower() in ("", "none"):
        return None
    if kind is str:
        return text
    word = text.strip()
    try:
        if kind is bool:
            return _BOOL_WORDS[word.lower()]
        return kind(word)
    except (KeyError, ValueError):
        expected = {bool: "true/false/yes/no/1/0", int: "an integer", float: "a number"}[kind]
        raise Invalid(f"expected {expected}, got {text!r}") from None


class _TooLarge(Exception):
    """The file holds more than the caller's limit."""


def _read_bounded(path: str, limit: int) -> tuple[bytes, int]:
    """The file's bytes and mode, reading at most `limit` bytes (then _TooLarge).

    Works for regular files, pipes and FIFOs (`<(echo secret)`), devices; refuses a directory
    with the usual OSError.
    """
    with open(path, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        data = fh.read(limit + 1)  # a pipe gives what it has: read until EOF or the limit
    if len(data) > limit:
        raise _TooLarge
    return data, mode


def _read_secret_file(path: str, name: str, source: str) -> str:
    try:
        data, mode = _read_bounded(path, MAX_SECRET_FILE_BYTES)
        value = data.decode("utf-8").strip()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{name} ({source}): cannot read {path}: {reason}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"{name} ({source}): file {path} is not UTF-8 text") from None
    except _TooLarge:
        raise ConfigError(
            f"{name} ({source}): file {path} is larger than {MAX_SECRET_FILE_BYTES} bytes; "
            "is it the right file?"
        ) from None
    if not value:
        raise ConfigError(f"{name} ({source}): file {path} is empty")
    if mode & WORLD_READABLE:
        log.warning("%s (%s): file %s is readable by every user; chmod o-r it", name, source, path)
    return value


def _read_toml(path: str) -> tuple[dict[str, Any], int]:
    """The document and the file's mode."""
    try:
        data, mode = _read_bounded(path, MAX_CONFIG_FILE_BYTES)
        doc = tomllib.loads(data.decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror or exc}") from exc
    except _TooLarge:
        raise ConfigError(
            f"config file {path}: larger than {MAX_CONFIG_FILE_BYTES} bytes; is it a TOML file?"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path}: not UTF-8 text (at byte offset {exc.start}); is it a TOML file?"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from exc
    except RecursionError:  # tomllib recurses once per level of nested arrays and tables
        raise ConfigError(f"config file {path}: invalid TOML: nested too deeply") from None
    table = doc.get(TOML_TABLE)
    if isinstance(table, dict):
        others = [k for k in doc if k != TOML_TABLE]
        if others:
            raise ConfigError(
                f"config file {path}: unknown key {others[0]!r} outside [{TOML_TABLE}]"
            )
        doc = table
    return doc, mode


def _config_file_layer(
    path: str, values: dict[str, Any], sources: dict[str, str], *, secrets: bool
) -> None:
    doc, mode = _read_toml(path)
    source = f"config file {path}"
    file_keys = {f + "_file": f for f in FILE_FIELDS}
    for key, value in doc.items():
        if key in file_keys:
            target = file_keys[key]
            if target in doc:
                raise ConfigError(f"{target} ({source}): set either {target} or {key}, not both")
            if not isinstance(value, str):
                raise ConfigError(f"{key} ({source}): expected a file path string")
            if not secrets:
                continue
            secret_path = os.path.join(os.path.dirname(os.path.abspath(path)), value)
            values[target] = _read_secret_file(secret_path, target, f"{source}, {key}")
            sources[target] = f"{source}, {key}"
        elif key in KINDS:
            values[key] = value
            sources[key] = source
        else:
            raise ConfigError(f"config file {path}: unknown key {key!r}")
    held = [k for k in SECRET_FIELDS if k in doc]
    if held and mode & WORLD_READABLE:
        log.warning(
            "config file %s holds %s and is readable by every user; chmod o-r it, or move "
            "the secret to a credential file", path, " and ".join(sorted(held)),
        )  # fmt: skip


def _credentials_layer(
    env: Mapping[str, str], values: dict[str, Any], sources: dict[str, str]
) -> None:
    directory = env.get(ENV_CREDENTIALS_DIRECTORY)
    if not directory:
        return
    for name in FILE_FIELDS:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            source = f"systemd credential {path}"
            values[name] = _read_secret_file(path, name, source)
            sources[name] = source


def _env_layer(
    env: Mapping[str, str], values: dict[str, Any], sources: dict[str, str], *, secrets: bool
) -> None:
    known = _known_env_names()
    for key in sorted(env):
        if key.startswith(ENV_PREFIX) and key not in known:
            log.warning("ignoring unknown environment variable %s", key)
    for name in FILE_FIELDS:
        direct, file_var = env_name(name), env_name(name) + "_FILE"
        if file_var not in env:
            continue
        if direct in env:
            raise ConfigError(f"{name}: set either {direct} or {file_var}, not both")
        if not secrets:
            continue
        source = f"environment variable {file_var}"
        values[name] = _read_secret_file(env[file_var], name, source)
        sources[name] = source
    for name in FIELD_NAMES:
        var = env_name(name)
        if var in env:
            values[name] = _coerce(name, env[var], f"environment variable {var}")
            sources[name] = f"environment variable {var}"


def _coerce(name: str, value: Any, source: str) -> Any:
    kind, optional = KINDS[name]
    if isinstance(value, str) and (kind is not str or optional):
        try:
            return _parse_text(name, value)
        except Invalid as exc:
            raise ConfigError(f"{name} ({source}): {exc}") from None
    return value


def _gather(
    config_file: str | None,
    env: Mapping[str, str],
    overrides: Mapping[str, object] | None,
    overrides_source: str,
    *,
    secrets: bool = True,
) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = dict(DEFAULTS)
    sources: dict[str, str] = {}
    path = config_file or env.get(ENV_CONFIG) or None
    if path is None and os.path.exists(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    if path is not None:
        if not os.path.exists(path):
            named = "--config" if config_file else ENV_CONFIG
            raise ConfigError(f"config file {path} (from {named}) does not exist")
        _config_file_layer(path, values, sources, secrets=secrets)
    for name in list(sources):
        values[name] = _coerce(name, values[name], sources[name])
    if secrets:
        _credentials_layer(env, values, sources)
    _env_layer(env, values, sources, secrets=secrets)
    for name, value in (overrides or {}).items():
        if name not in KINDS:
            raise ConfigError(f"{name} ({overrides_source}): unknown setting")
        if value is not None:
            values[name] = _coerce(name, value, overrides_source)
            sources[name] = overrides_source
    return values, sources


def load_settings(
    *,
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    overrides_source: str = "command-line option",
) -> Settings:
    """Build Settings from defaults < config file < credentials < env < overrides.

    `env` is the environment to read (the CLI passes os.environ; None means empty). The config
    file is `config_file`, else $TRACKER_AGENT_CONFIG, else DEFAULT_CONFIG_FILE when it exists.
    None values in `overrides` are ignored (click's unset options can be passed as they are).
    Raises ConfigError naming the field and where its value came from.
    """
    return explain_settings(
        config_file=config_file, env=env, overrides=overrides, overrides_source=overrides_source
    )[0]


def explain_settings(
    *,
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    overrides_source: str = "command-line option",
) -> tuple[Settings, dict[str, str]]:
    """load_settings, plus where each non-default value came from ({field: source})."""
    values, sources = _gather(config_file, env or {}, overrides, overrides_source)
    if "project_token" not in values:
        names = f"{env_name('project_token')}, project_token in the config file, or --project-token"
        raise ConfigError(f"project_token: is required (set {names})")
    return Settings(**validate(values, sources)), sources


def load_database_url(
    *,
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> str | None:
    """Only the database_url setting, for commands that read the outbox without credentials."""
    values, sources = _gather(
        config_file, env or {}, overrides, "command-line option", secrets=False
    )
    value = values.get("database_url")
    try:
        check_type("database_url", value)
        url: str | None = check_value("database_url", value)
        return url
    except Invalid as exc:
        where = sources.get("database_url", "default")
        raise ConfigError(f"database_url ({where}): {exc}") from None
