"""Settings from a TOML file, the environment and overrides, validated into one frozen object.

Every environment variable name the package reads is defined here (loading.py); only the CLI
reads os.environ and passes it in. settings.py owns the dataclass and its rules.
"""

from __future__ import annotations

from tracker_agent.config.loading import (
    DEFAULT_CONFIG_FILE,
    ENV_CONFIG,
    ENV_CREDENTIALS_DIRECTORY,
    ENV_LOG_FORMAT,
    ENV_LOG_LEVEL,
    ENV_METRICS_LISTEN,
    ENV_PREFIX,
    env_name,
    explain_settings,
    load_database_url,
    load_settings,
)
from tracker_agent.config.settings import (
    FIELD_NAMES,
    FILE_FIELDS,
    SECRET_FIELDS,
    Settings,
)

__all__ = [
    "Settings",
    "load_settings",
    "load_database_url",
    "explain_settings",
    "env_name",
    "ENV_PREFIX",
    "ENV_CONFIG",
    "ENV_LOG_LEVEL",
    "ENV_LOG_FORMAT",
    "ENV_METRICS_LISTEN",
    "ENV_CREDENTIALS_DIRECTORY",
    "DEFAULT_CONFIG_FILE",
    "FIELD_NAMES",
    "FILE_FIELDS",
    "SECRET_FIELDS",
]
