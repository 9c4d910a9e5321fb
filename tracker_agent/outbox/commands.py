"""NewCommand: one validated tracking command on its way into the outbox; Request: what one
caller of the enqueue's group commit hands in. Stdlib only."""

from __future__ import annotations

from collections.abc import Sequence

from .ledger import KeyedCommands

__all__ = ["NewCommand", "Request", "commands_of"]


class NewCommand:
    """A validated command ready to store: its batch name, ordering key and JSON data.

    `size` is the payload's UTF-8 length (computed when not given). With `receipt`, the
    enqueue sets `id` (the receipt's id) once the row is committed. A plain slotted class,
    not a dataclass: one is built per tracking call.
    """

    __slots__ = ("kind", "customer_key", "payload", "size", "receipt", "id", "boot", "mono")

    def __init__(
        self,
        kind: str,
        customer_key: str,
        payload: str,
        size: int = -1,
        receipt: bool = False,
        *,
        boot: str | None = None,
        mono: float | None = None,
    ) -> None:
        """`boot` and `mono`: the boot in which the agent fixed the command's timestamp and
        that boot's clock then (bootclock), for clock correction; None for a caller's."""
        self.kind = kind
        self.boot = boot
        self.mono = mono
        self.customer_key = customer_key
        self.payload = payload
        if size < 0:
            size = len(payload) if payload.isascii() else len(payload.encode("utf-8"))
        self.size = size
        self.receipt = receipt
        self.id = 0

    def __repr__(self) -> str:
        return f"NewCommand({self.kind!r}, {self.customer_key!r}, size={self.size})"


#: What one caller of the group commit hands in: plain commands, or commands to queue once.
Request = Sequence[NewCommand] | KeyedCommands


def commands_of(request: Request) -> Sequence[NewCommand]:
    """Every command of a request (a KeyedCommands' before the ledger's lookup)."""
    return request.commands if isinstance(request, KeyedCommands) else request
