"""Logging for the command: one stderr handler, text or JSON, with secrets redacted.

The only place in the package that attaches handlers. Under journald (JOURNAL_STREAM names our
stderr) text lines carry a "<N>" syslog priority prefix and no timestamp of their own.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

__all__ = ["configure", "add_secrets", "redact", "JsonFormatter", "TextFormatter"]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: Loggers that are chatty at INFO; they only speak up from WARNING unless asked for DEBUG.
QUIET_LOGGERS = ("apscheduler", "urllib3", "alembic")
#: sd-daemon(3) priorities by logging level.
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
_MIN_SECRET_LENGTH = 4  # shorter values would redact ordinary words
_MASK = "***"
_PATTERNS = (
    # Authorization headers, HTTP Basic/Token/Bearer.
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?(?:basic|token|bearer)\s+)[^\s'\",}]+"),
     r"\1" + _MASK),
    # Credentials inside URLs: scheme://user:secret@host
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), r"\1" + _MASK + "@"),
)  # fmt: skip

_secrets: set[str] = set()
_HANDLER_MARK = "_tracker_agent_cli"


def add_secrets(values: Iterable[str]) -> None:
    """Remember values that must never appear in a log line (passwords, keys)."""
    _secrets.update(v for v in values if v and len(v) >= _MIN_SECRET_LENGTH)


def redact(text: str) -> str:
    """`text` with known secrets, Authorization values and URL credentials masked."""
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, _MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class TextFormatter(logging.Formatter):
    """Human-readable lines; with `journal=True` a "<N>" priority prefix instead of a time."""

    def __init__(self, *, journal: bool = False) -> None:
        fmt = (
            "%(name)s: %(message)s"
            if journal
            else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        super().__init__(fmt)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))
        if not self.journal:
            return text
        priority = _SYSLOG_PRIORITY.get(record.levelno, 2 if record.levelno > 40 else 7)
        # Every line of a traceback gets the prefix, or journald files it at the default level.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC ISO 8601), level, logger, message[, exception]."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


if TYPE_CHECKING:
    _StreamHandler = logging.StreamHandler[Any]
else:  # generic only from Python 3.11 on
    _StreamHandler = logging.StreamHandler


class _StderrHandler(_StreamHandler):
    """Writes to whatever sys.stderr is at the time (click's test runner swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _under_journald(env: Mapping[str, str]) -> bool:
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):  # a test runner's stderr has no descriptor
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def configure(level: str, fmt: str, env: Mapping[str, str]) -> None:
    """Replace our stderr handler on the root logger (idempotent per process)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = _StderrHandler()
    setattr(handler, _HANDLER_MARK, True)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(journal=_under_journald(env)))
    root.addHandler(handler)
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(numeric if numeric <= logging.DEBUG else logging.WARNING)
