"""Settings: the frozen, validated dataclass and the rules every field must pass.

Errors name the field and, when known, where its value came from (file, variable, option).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tracker_agent import constants as c
from tracker_agent.api_url import URLRefused, check_scheme, check_url_form
from tracker_agent.exceptions import ConfigError

MIN_BATCH_MAX_BYTES = 1024 * 1024  # 1 MiB: one event may be up to 800 KB

MINUTE_SECONDS = 60
HOUR_SECONDS = 3600
DAY_SECONDS = c.DAY_SECONDS
YEAR_SECONDS = 31_557_600  # a Julian year, 365.25 days
MIB = 1024 * 1024
MAX_SHOWN_INT_BITS = 64  # an error message shows integers up to this size


@dataclass(frozen=True)
class Bounds:
    """The inclusive range of a numeric setting, in `unit` ("s", "bytes", ...)."""

    low: float
    high: float
    unit: str

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"between {_number(self.low)} and {_number(self.high)}{unit}"


#: Every numeric setting's sane range. Beyond it a value is a typo or a unit mix-up (ms for s)
#: and would overflow or stall somewhere (1 / rate_limit, sleep(huge), lease arithmetic).
#: The README's settings table states the same ranges.
BOUNDS: dict[str, Bounds] = {
    "request_timeout": Bounds(0.1, 10 * MINUTE_SECONDS, "s"),
    "connect_timeout": Bounds(0.1, 2 * MINUTE_SECONDS, "s"),
    "read_retries": Bounds(0, 10, "retries"),
    "busy_timeout": Bounds(0, HOUR_SECONDS, "s"),
    "max_rows": Bounds(1, 10**10, "rows"),
    "max_bytes": Bounds(1, 2**50, "bytes"),
    "batch_size": Bounds(1, c.MAX_BATCH_COMMANDS, "commands"),
    "batch_max_bytes": Bounds(MIN_BATCH_MAX_BYTES, 64 * MIB, "bytes"),
    "drain_interval": Bounds(0.01, HOUR_SECONDS, "s"),
    "lease_seconds": Bounds(1, DAY_SECONDS, "s"),
    "backoff_base": Bounds(0.01, HOUR_SECONDS, "s"),
    "backoff_cap": Bounds(0.01, DAY_SECONDS, "s"),
    "max_attempts": Bounds(1, 1_000_000, "attempts"),
    "max_age": Bounds(1, 10 * YEAR_SECONDS, "s"),
    "rate_limit": Bounds(1, 10_000, "requests/s"),
    "concurrent_batches": Bounds(1, c.MAX_CONCURRENT_BATCHES, "batches"),
    "pause_probe_interval": Bounds(0.1, DAY_SECONDS, "s"),
    "reach_probe_interval": Bounds(0.1, HOUR_SECONDS, "s"),
    "shutdown_grace": Bounds(0, HOUR_SECONDS, "s"),
    "close_timeout": Bounds(0, HOUR_SECONDS, "s"),
    "warn_undrained_after": Bounds(0, DAY_SECONDS, "s"),
    "receipt_retention": Bounds(0, 10 * YEAR_SECONDS, "s"),
    "receipt_max_rows": Bounds(0, 10**9, "rows"),
    "import_ledger_days": Bounds(1, 3650, "days"),
}


def _number(value: float) -> str:
    """1, 0.5, 10000000000: exact, never 1e+10 (a reader compares it with what they typed)."""
    if isinstance(value, int):
        # str() of a huge int is slow, then refused (sys.get_int_max_str_digits).
        return str(value) if value.bit_length() <= MAX_SHOWN_INT_BITS else "a huge integer"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return f"{value:g}"


#: How many request deadlines a lease must outlive (the batch in flight, then its own).
LEASE_DEADLINES = 2

#: Fields whose values are redacted everywhere.
SECRET_FIELDS = frozenset({"password", "public_key"})
#: Fields that may also come from a file (<FIELD>_FILE, <field>_file in TOML, systemd credentials).
FILE_FIELDS = ("project_token", "username", "password", "public_key")


def hide_password(url: str) -> str:
    """The URL with its password (if any) shown as ***: a database_url in status, logs and
    `config`. A URL too malformed to parse keeps only its scheme."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url.partition("://")[0] + "://***"
    if password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{name}:***@{host}"))


@dataclass(frozen=True)
class Settings:
    """Everything the agent, the client and the daemon need. Validated on construction."""

    project_token: str
    username: str = ""
    password: str = field(default="", repr=False)
    public_key: str = field(default="", repr=False)
    url: str = c.DEFAULT_URL
    allow_http: bool = False
    request_timeout: float = c.DEFAULT_REQUEST_TIMEOUT_SECONDS  # read timeout
    connect_timeout: float = c.DEFAULT_CONNECT_TIMEOUT_SECONDS
    read_retries: int = c.DEFAULT_READ_RETRIES
    database_url: str | None = None  # None: files.default_database_url(environment)
    rate_limit_file: str | None = None  # None: beside the outbox (outbox.db-rate)
    share_with_group: bool = False  # outbox files 0660 / directory 0770 instead of 0600 / 0700
    synchronous: str = "FULL"
    busy_timeout: float = c.DEFAULT_BUSY_TIMEOUT_SECONDS
    max_rows: int = c.DEFAULT_MAX_ROWS
    max_bytes: int = c.DEFAULT_MAX_BYTES
    overflow: str = "raise"
    batch_size: int = c.MAX_BATCH_COMMANDS
    batch_max_bytes: int = c.DEFAULT_BATCH_MAX_BYTES
    drain_interval: float = c.DEFAULT_DRAIN_INTERVAL_SECONDS
    lease_seconds: float = c.DEFAULT_LEASE_SECONDS
    backoff_base: float = c.DEFAULT_BACKOFF_BASE_SECONDS
    backoff_cap: float = c.DEFAULT_BACKOFF_CAP_SECONDS
    max_attempts: int | None = None  # None: retry forever
    max_age: float | None = None  # seconds; None: forever
    rate_limit: float = c.API_RATE_LIMIT  # requests per second
    # Batches on the wire at once: that many drainers in this process (drain_group.py). More
    # than 1 pays far from the API; a crash then re-sends up to that many batches.
    concurrent_batches: int = 1
    pause_probe_interval: float = c.DEFAULT_PAUSE_PROBE_INTERVAL_SECONDS
    reach_probe_interval: float = c.DEFAULT_REACH_PROBE_INTERVAL_SECONDS
    shutdown_grace: float = c.DEFAULT_SHUTDOWN_GRACE_SECONDS
    # Delivered receipts are remembered this long and at most this many (0: not at all).
    receipt_retention: float = c.DEFAULT_RECEIPT_RETENTION_SECONDS
    receipt_max_rows: int = c.DEFAULT_RECEIPT_MAX_ROWS
    # The embedded agent's life cycle (TrackerAgent; the CLI's one-shot commands never drain).
    enabled: bool = True  # False: test mode: tracking calls are validated, never stored or sent
    # Correct the timestamps the agent fixes at enqueue by the server's clock (README: "Devices
    # that live offline"). The drain asks GET system/time once per boot and outbox before its
    # first batch; a server that answers without its time (CLOCK_LEARN_ATTEMPTS times) never
    # holds delivery back: the boot's commands then go out as recorded, counted.
    clock_correction: bool = True
    drain: bool = True  # deliver from a background thread, started when the agent is created
    close_timeout: float = c.DEFAULT_CLOSE_TIMEOUT_SECONDS  # close()/exit deliver this long
    warn_undrained_after: float = c.DEFAULT_WARN_UNDRAINED_AFTER_SECONDS  # 0: never warn
    import_ledger_days: float = c.DEFAULT_IMPORT_LEDGER_DAYS  # `import` remembers lines this long

    def __post_init__(self) -> None:
        values = {name: getattr(self, name) for name in FIELD_NAMES}
        for name, value in validate(values, sources=None).items():
            if value is not values[name] or type(value) is not type(values[name]):
                object.__setattr__(self, name, value)

    def redacted(self) -> dict[str, Any]:
        """All fields; secrets shown as "***" when set and "" when empty."""
        out = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            out[name] = "***" if out[name] else ""
        if out["database_url"]:
            out["database_url"] = hide_password(out["database_url"])
        return out

    def replace(self, **changes: Any) -> Settings:
        """A validated copy with `changes` applied."""
        return dataclasses.replace(self, **changes)


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Settings))
DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(Settings) if f.default is not dataclasses.MISSING
}
_TYPES = {"str": str, "bool": bool, "int": int, "float": float}


def _kind(annotation: str) -> tuple[type, bool]:
    parts = [p.strip() for p in annotation.split("|")]
    return _TYPES[parts[0]], "None" in parts


#: field -> (base type, optional)
KINDS: dict[str, tuple[type, bool]] = {
    f.name: _kind(str(f.type)) for f in dataclasses.fields(Settings)
}

# ---------------------------------------------------------------------------- validation


class Invalid(Exception):
    """One field's value is wrong; the caller adds the field name and the source."""


def validate(values: dict[str, Any], sources: Mapping[str, str] | None) -> dict[str, Any]:
    """Check and normalise every field, then the cross-field rules. Returns the new values."""

    def fail(name: str, message: str) -> ConfigError:
        where = sources.get(name, "default") if sources is not None else None
        return ConfigError(f"{name} ({where}): {message}" if where else f"{name}: {message}")

    out = dict(values)
    for name in FIELD_NAMES:
        try:
            out[name] = check_type(name, out[name])
            out[name] = check_value(name, out[name])
        except Invalid as exc:
            raise fail(name, str(exc)) from None
    # A request lasts at most one deadline (connect + read timeout); a batch claimed while
    # another is in flight waits for that one's answer first: its lease must outlive two.
    deadline = out["request_timeout"] + out["connect_timeout"]
    if out["lease_seconds"] <= LEASE_DEADLINES * deadline:
        raise fail(
            "lease_seconds",
            f"must exceed {LEASE_DEADLINES} x (request_timeout + connect_timeout) "
            f"({LEASE_DEADLINES * deadline:g} s): a batch queued behind one in flight waits up "
            "to one request deadline before its own",
        )
    if out["backoff_cap"] < out["backoff_base"]:
        raise fail("backoff_cap", f"must be >= backoff_base ({out['backoff_base']:g} s)")
    if bool(out["username"]) != bool(out["password"]):
        have, missing = ("username", "password") if out["username"] else ("password", "username")
        where = f" ({sources[have]})" if sources and have in sources else ""
        raise ConfigError(f"{missing}: is not set, but {have}{where} is; set both or neither")
    try:
        _check_scheme(out["url"], out["allow_http"])
    except Invalid as exc:
        raise fail("url", str(exc)) from None
    return out


def check_type(name: str, value: Any) -> Any:
    """The value if it has the field's type (ints widen to float), else Invalid."""
    kind, optional = KINDS[name]
    if value is None and optional:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
        return value
    expected = {str: "a string", bool: "true or false", int: "an integer", float: "a number"}[kind]
    shown = "<hidden>" if name in SECRET_FIELDS else repr(value)
    raise Invalid(f"expected {expected}{' or none' if optional else ''}, got {shown}")


def check_value(name: str, value: Any) -> Any:  # noqa: C901 - one flat table of rules
    """The value, normalised, if it is in the field's range or enum, else Invalid."""
    if value is None:  # check_type let it through: the field is optional
        return None
    if isinstance(value, str) and any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise Invalid("must not contain control characters or newlines")
    if name == "project_token":
        if not value:
            raise Invalid("is required")
        if any(c.isspace() or c in "/?#%\\" for c in value):
            raise Invalid("must not contain '/', '?', '#', '%', '\\' or whitespace")
    elif name == "url":
        return _check_url(value)
    elif name == "database_url":
        if not value.strip():
            raise Invalid("must not be empty (omit it for the default location)")
        if "%00" in value:  # decodes to a NUL byte, which no file name can hold
            raise Invalid("must not contain %00")
    elif name == "synchronous":
        if value.upper() not in ("FULL", "NORMAL"):
            raise Invalid(f"must be FULL or NORMAL, got {value!r}")
        return value.upper()
    elif name == "overflow":
        if value not in ("raise", "drop_oldest"):
            raise Invalid(f"must be 'raise' or 'drop_oldest', got {value!r}")
    elif name in BOUNDS:
        bounds = BOUNDS[name]
        # NaN fails both comparisons, so it is refused too.
        if not bounds.low <= value <= bounds.high:
            raise Invalid(f"must be {bounds.describe()}, got {_number(value)}")
    return value


def _check_url(url: str) -> str:
    try:
        return check_url_form(url)
    except URLRefused as exc:
        raise Invalid(str(exc)) from None


def _check_scheme(url: str, allow_http: bool) -> None:
    try:
        check_scheme(url, allow_http=allow_http)
    except URLRefused as exc:
        raise Invalid(str(exc)) from None
