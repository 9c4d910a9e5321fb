"""What the four API namespaces share: their base class and argument checks for names and ids.

The namespaces live in tracking.py, customer.py, catalog.py and analyses.py; this package
never imports tracker_agent.client, which builds them, nor tracker_agent.transport.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol
from urllib.parse import quote

from tracker_agent.exceptions import ValidationError, ValidationTypeError

__all__ = [
    "Namespace",
    "Transport",
    "normalize_name",
    "normalize_names",
]


class Transport(Protocol):
    """What a namespace needs from the HTTP transport (tracker_agent.transport.HTTPTransport)."""

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        idempotent: bool,
        public_key_ok: bool = False,
        require: Mapping[str, type | tuple[type, ...]] | None = None,
        body: bytes | None = None,
    ) -> dict[str, Any]: ...


class Namespace:
    """Base of Tracking, Customer, Catalog and Analyses: paths under one project."""

    path_prefix: ClassVar[str] = ""
    """Format string with {token}, e.g. "/track/v2/projects/{token}"."""
    public_key_ok: ClassVar[bool] = False
    """Whether this namespace's endpoints accept the public key (tracking only)."""

    def __init__(self, transport: Transport, project_token: str) -> None:
        self._transport = transport
        self._base = self.path_prefix.format(token=quote(project_token, safe=""))

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        read: bool = False,
        require: Mapping[str, type | tuple[type, ...]] | None = None,
        body: bytes | None = None,
    ) -> dict[str, Any]:
        """One API call; `read=True` marks it safe to retry (no side effect)."""
        return self._transport.request(
            method,
            self._base + path,
            json=json,
            body=body,
            params=params,
            idempotent=read,
            public_key_ok=self.public_key_ok,
            require=require,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._base}>"


def normalize_name(value: object, field: str) -> str:
    """A non-empty str argument (catalog id, item id, analysis id, field name...)."""
    if not isinstance(value, str):
        raise ValidationTypeError(field, f"expected str, got {type(value).__name__}")
    if not value:
        raise ValidationError(field, "must not be empty")
    return str.__str__(value)


def normalize_names(values: object, field: str, *, allow_empty: bool = True) -> list[str]:
    """A list (or tuple) of non-empty str; a lone str is refused (it would iterate by char)."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise ValidationTypeError(field, f"expected a list of str, got {type(values).__name__}")
    if not values and not allow_empty:
        raise ValidationError(field, "must not be empty")
    return [normalize_name(value, f"{field}[{index}]") for index, value in enumerate(values)]
