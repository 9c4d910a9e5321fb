"""tracker-agent: durable, offline-capable event tracking for the Exponea (Bloomreach) API v2.

    from tracker_agent import Exponea, TrackerAgent, APIException

`Exponea` is the direct HTTP client (same calls as the original exponea-python-sdk);
`TrackerAgent` writes tracking calls to a durable SQLite outbox and delivers them in the
background. Heavy modules (requests, SQLAlchemy) load on first use, not on import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .exceptions import (
    AgentClosedError,
    APIException,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BundleError,
    ConfigError,
    DatabaseUnavailableError,
    InvalidResponseError,
    MissingDependencyError,
    NotAnOutboxError,
    NotFoundError,
    OutboxConflictError,
    OutboxError,
    OutboxFullError,
    OutboxLockedError,
    OutboxVersionError,
    PatchedRequestsError,
    PermissionDeniedError,
    RateLimitedError,
    RequestTooLargeError,
    ServerError,
    StorageFullError,
    StorageReadOnlyError,
    TrackerAgentError,
    TransportError,
    ValidationError,
    ValidationTypeError,
)

if TYPE_CHECKING:
    from .agent import TrackerAgent
    from .client import Exponea
    from .config import Settings
    from .delivery import DeliveryError, DeliveryState, FlushResult
    from .outbox.deadletters import DeadLetter
    from .outbox.receipts import Receipt, ReceiptStatus

__all__ = [
    "__version__",
    "Exponea",
    "TrackerAgent",
    "FlushResult",
    "DeliveryState",
    "DeliveryError",
    "DeadLetter",
    "Receipt",
    "ReceiptStatus",
    "Settings",
    "AgentClosedError",
    "BundleError",
    "APIException",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigError",
    "DatabaseUnavailableError",
    "InvalidResponseError",
    "MissingDependencyError",
    "NotAnOutboxError",
    "NotFoundError",
    "OutboxError",
    "OutboxFullError",
    "OutboxConflictError",
    "OutboxLockedError",
    "OutboxVersionError",
    "PatchedRequestsError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RequestTooLargeError",
    "ServerError",
    "StorageFullError",
    "StorageReadOnlyError",
    "TrackerAgentError",
    "TransportError",
    "ValidationError",
    "ValidationTypeError",
]

_LAZY = {
    "Exponea": "client",
    "TrackerAgent": "agent",
    "FlushResult": "delivery",
    "DeliveryState": "delivery",
    "DeliveryError": "delivery",
    "DeadLetter": "outbox.deadletters",
    "Receipt": "outbox.receipts",
    "ReceiptStatus": "outbox.receipts",
    "Settings": "config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tracker_agent' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
