"""NewCommand: one validated tracking command on its way into the outbox. Stdlib only."""

from __future__ import annotations

__all__ = ["NewCommand"]


class NewCommand:
    """A validated command ready to store: its batch name, ordering key and JSON data.

    `size` is the payload's UTF-8 length (computed when not given). A plain slotted class,
    not a dataclass: one is built per tracking call.
    """

    __slots__ = ("kind", "customer_key", "payload", "size")

    def __init__(self, kind: str, customer_key: str, payload: str, size: int = -1) -> None:
        self.kind = kind
        self.customer_key = customer_key
        self.payload = payload
        if size < 0:
            size = len(payload) if payload.isascii() else len(payload.encode("utf-8"))
        self.size = size

    def __repr__(self) -> str:
        return f"NewCommand({self.kind!r}, {self.customer_key!r}, size={self.size})"
