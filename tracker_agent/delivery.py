"""What the agent tells the app about delivery: the state `run` reports, what `flush` achieved,
the error `on_error` receives, and the signatures of the three hooks."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from .outbox.deadletters import DeadLetter
from .outbox.receipts import ReceiptStatus

__all__ = [
    "DeadLetterHook",
    "DeliveryError",
    "DeliveryState",
    "ERROR_BACKING_OFF",
    "ERROR_PAUSED",
    "ERROR_STORAGE",
    "ERROR_UNEXPECTED",
    "ErrorHook",
    "FlushResult",
    "SettledHook",
]

#: DeliveryError kinds.
ERROR_PAUSED = "paused"
ERROR_BACKING_OFF = "backing_off"
ERROR_STORAGE = "storage"
ERROR_UNEXPECTED = "unexpected"


class DeliveryState(enum.Enum):
    """What the background drain is doing, as `run` reports it (sd_notify STATUS, the log)."""

    IDLE = "idle"
    DELIVERING = "delivering"
    BACKING_OFF = "backing off"
    PAUSED = "paused"
    STORAGE_ERROR = "storage error"

    @property
    def quiet(self) -> bool:
        """Idle and delivering alternate all day: not worth a line each."""
        return self in (DeliveryState.IDLE, DeliveryState.DELIVERING)


@dataclass(frozen=True)
class FlushResult:
    """What `flush` achieved; `ok` means the queue was empty when it returned."""

    delivered: int
    dead_lettered: int
    remaining: int
    paused_reason: str | None
    last_error: str | None
    timed_out: bool

    @property
    def ok(self) -> bool:
        return self.remaining == 0


@dataclass(frozen=True)
class DeliveryError:
    """What went wrong in a delivery attempt, as `on_error` receives it.

    kind: "paused" (credentials or project refused: delivery waits for the next probe),
    "backing_off" (a transient failure: the batch is retried at `retry_at`), "storage" (the
    outbox could not be read or written), "unexpected" (a bug: the pass was given up).
    `retry_at` is the next attempt's time (epoch seconds) when known.
    """

    kind: str
    message: str
    retry_at: float | None = None
    exception: BaseException | None = None


#: on_error(DeliveryError), on_dead_letter(DeadLetter) and on_settled(ReceiptStatus).
ErrorHook = Callable[[DeliveryError], None]
DeadLetterHook = Callable[[DeadLetter], None]
SettledHook = Callable[[ReceiptStatus], None]
