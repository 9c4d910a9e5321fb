"""Every error tracker-agent raises, in one tree.

    TrackerAgentError
    ├── APIException                  the API did not do what was asked (the seed SDK's name)
    │   ├── TransportError            no HTTP answer at all: refused, reset, DNS, TLS (retryable),
    │   │   │                         or a request that could not be built or sent (not retryable)
    │   │   └── APITimeoutError       connect or read timeout, or the request's total deadline
    │   ├── InvalidResponseError      an answer we cannot read: not the API's JSON, a redirect,
    │   │                             a non-JSON 4xx from a proxy, a body over the cap (retryable)
    │   ├── BadRequestError           400, or 200 with "success": false: the request is wrong
    │   ├── AuthenticationError       401, or 400 "Could not authenticate" / "Invalid project id"
    │   ├── PermissionDeniedError     403
    │   ├── NotFoundError             404
    │   ├── RequestTooLargeError      413
    │   ├── RateLimitedError          429 (the server dropped the data)
    │   └── ServerError               5xx
    ├── ValidationError (ValueError)  bad input refused at the call site, before any I/O
    │   └── ValidationTypeError (TypeError)
    ├── ConfigError (ValueError)      bad settings
    ├── PatchedRequestsError (RuntimeError)  a test patched requests.request, which tracker-agent
    │                                 never calls: the request was stopped before it left
    ├── OutboxError                   the durable queue cannot take or give data
    │   ├── OutboxFullError           the configured row/byte bound is reached (overflow="raise")
    │   ├── StorageFullError          the disk (or SQLite's page limit) is full
    │   ├── StorageReadOnlyError      the file or its folder cannot be written
    │   ├── OutboxLockedError         another process held the write lock for too long
    │   ├── DatabaseUnavailableError  the database server cannot be reached (PostgreSQL)
    │   ├── OutboxVersionError        the file was migrated by a newer tracker-agent
    │   └── NotAnOutboxError          the file is corrupt or belongs to something else
    ├── BundleError (ValueError)      an offline bundle that is corrupt, truncated, of another
    │                                 format or another project (tracker-agent import --bundle)
    ├── AgentClosedError              a call on a TrackerAgent after close()
    └── MissingDependencyError (ImportError)  an optional library (an extra) is not installed

Code decides by attributes (`retryable`, `retry_after`, `status_code`), never by message text.
Messages are for people and never contain credentials. As in exponea-python-sdk, an
APIException's `str()` (and `args[0]`, and `message`) is the server's message alone, e.g.
"access key not found"; what was asked and what answered are attributes, shown together by
`context` ("POST /data/v2/projects/t/analyses/report HTTP 200") and by `repr()`.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BundleError",
    "TrackerAgentError",
    "APIException",
    "TransportError",
    "APITimeoutError",
    "InvalidResponseError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "RequestTooLargeError",
    "RateLimitedError",
    "ServerError",
    "ValidationError",
    "ValidationTypeError",
    "ConfigError",
    "OutboxError",
    "OutboxFullError",
    "StorageFullError",
    "StorageReadOnlyError",
    "OutboxLockedError",
    "DatabaseUnavailableError",
    "OutboxVersionError",
    "NotAnOutboxError",
    "AgentClosedError",
    "PatchedRequestsError",
    "MissingDependencyError",
]


class TrackerAgentError(Exception):
    """Root of every exception this package raises on purpose."""


class APIException(TrackerAgentError):
    """The API call failed. Carries what code needs to decide what to do next.

    Attributes:
        status_code: HTTP status, or None when no answer arrived.
        method, path: the request (the path holds the project token, never a key).
        errors: the server's messages, parsed from any of the documented body shapes.
        retryable: True when the same request may succeed later unchanged.
        retry_after: seconds the server asked us to wait, if it said.
    """

    default_retryable = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        method: str | None = None,
        path: str | None = None,
        errors: list[str] | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.method = method
        self.path = path
        self.errors = list(errors or [])
        self.retryable = self.default_retryable if retryable is None else retryable
        self.retry_after = retry_after
        self.body = body

    @property
    def context(self) -> str:
        """What was asked and what answered, "POST /track/v2/projects/t/batch HTTP 400", or ""
        when neither is known. Not in str(), which is the message alone (as in the seed SDK,
        code compares str(exc) with the server's text)."""
        where = f"{self.method} {self.path}" if self.method and self.path else ""
        status = f"HTTP {self.status_code}" if self.status_code is not None else ""
        return " ".join(x for x in (where, status) if x)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status_code={self.status_code!r}, "
            f"method={self.method!r}, path={self.path!r}, retryable={self.retryable!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep keyword attributes across pickling (multiprocessing, logging queues).
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(cls: type[APIException], message: str, state: dict[str, Any]) -> APIException:
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(state)
    return exc


class TransportError(APIException):
    """No HTTP answer: connection refused or reset, DNS or TLS failure (retryable). With
    retryable=False the request could not even be built or sent (an invalid URL, a header
    that cannot be encoded): a configuration fault, which pauses delivery."""

    default_retryable = True


class APITimeoutError(TransportError):
    """The connect or read timeout expired, or the request's total deadline passed."""


class InvalidResponseError(APIException):
    """An answer we cannot read: not the JSON the API documents (a captive portal's HTML login
    page, truncated JSON, a 200 without "results"), a redirect, a non-JSON 4xx from a proxy,
    or a body over the size cap. Retryable: it says nothing about our request, so it is a
    network fault (reads retry it; writes are never retried by the transport)."""

    default_retryable = True


class BadRequestError(APIException):
    """400, or 200 with "success": false: the request itself is wrong; never retried as is."""


class AuthenticationError(APIException):
    """Credentials or project token were refused (401, or the API's 400 variants)."""


class PermissionDeniedError(APIException):
    """403: the key lacks a permission this call needs."""


class NotFoundError(APIException):
    """404: no such customer, catalog, item or analysis."""


class RequestTooLargeError(APIException):
    """413: the request body is over the server's limit."""


class RateLimitedError(APIException):
    """429: the server is rate limiting us and dropped the request."""

    default_retryable = True


class ServerError(APIException):
    """5xx: the API is unavailable for now."""

    default_retryable = True


class ValidationError(TrackerAgentError, ValueError):
    """Input refused at the call site. `field` names the offending argument or key path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class ValidationTypeError(ValidationError, TypeError):
    """Input of the wrong type (also a TypeError, as Python users expect)."""


class ConfigError(TrackerAgentError, ValueError):
    """Settings that cannot work; the message names the setting and where it came from."""


class OutboxError(TrackerAgentError):
    """The durable outbox cannot accept or return data. Nothing already accepted is lost."""


class OutboxFullError(OutboxError):
    """The outbox reached its configured max_rows / max_bytes and overflow is "raise"."""


class StorageFullError(OutboxError):
    """The disk (or the database's page limit) is full; the write was rolled back."""


class StorageReadOnlyError(OutboxError):
    """The database file or its directory is not writable."""


class OutboxLockedError(OutboxError):
    """Another process kept the database locked longer than the busy timeout."""


class OutboxConflictError(OutboxLockedError):
    """The database aborted a transaction that met another host's in a deadlock or a
    serialization conflict (PostgreSQL): nothing of it was written and running it again is
    safe. The drain's transactions are run again a few times before it is raised."""


class DatabaseUnavailableError(OutboxError):
    """The database server cannot be reached, or is shutting down or starting up (PostgreSQL):
    nothing was written. Enqueue raises it; the drain waits it out."""


class OutboxVersionError(OutboxError):
    """The database was migrated by a newer tracker-agent than this one."""


class NotAnOutboxError(OutboxError):
    """The file is corrupt, or is a database that belongs to something else."""


class BundleError(TrackerAgentError, ValueError):
    """An offline bundle refused: corrupt, truncated, another format or another project.
    Its message is one line that names the file."""


class AgentClosedError(TrackerAgentError):
    """The TrackerAgent was closed; it accepts no more calls."""


class MissingDependencyError(TrackerAgentError, ImportError):
    """A feature needs an optional library that is not installed; `extra` names the
    tracker-agent extra that installs it (pip install 'tracker-agent[<extra>]')."""

    def __init__(self, feature: str, library: str, extra: str) -> None:
        super().__init__(
            f"{feature} needs the {library} library: pip install 'tracker-agent[{extra}]'"
        )
        self.library = library
        self.extra = extra


class PatchedRequestsError(TrackerAgentError, RuntimeError):
    """A test replaced `requests.request` (exponea-python-sdk's way to fake the API), but
    tracker-agent sends through a requests.Session that the patch does not reach: the request
    was stopped before any connection, so a ported test suite cannot reach the real API.
    Never raised in production, where `requests.request` is requests' own function. Not an
    APIException, so no `except APIException` (nor the read retries) swallows it.
    """
