"""TrackerAgent's calls on what is queued, none of which delivers: keyed and JSON Lines imports,
offline bundles, receipts, dead letters and the queue's counts (QueueMethods, a base class of
TrackerAgent), and the checks of their arguments."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any

from .exceptions import AgentClosedError, ConfigError, ValidationError, ValidationTypeError
from .outbox import receipts as receipt_states
from .outbox.deadletters import DeadLetter
from .outbox.receipts import Receipt, ReceiptStatus
from .outbox.stats import STATS_KEYS

if TYPE_CHECKING:
    from .config import Settings
    from .durable import DurableTracking
    from .importing import ImportReport
    from .outbox.store import OutboxStore

__all__ = ["QueueMethods"]


class QueueMethods:
    """The queue's side of TrackerAgent, which sets these attributes (agent.py: delivery)."""

    settings: Settings
    store: OutboxStore
    tracking: DurableTracking
    _closed: bool
    _scheduler: Any  # the background drain (None when none runs): woken by a retry

    # -- queue ---------------------------------------------------------------------------------

    def enqueue_many(self, commands: list[dict[str, Any]]) -> int:
        """Validate raw {"name", "data"} batch commands and commit them in one transaction."""
        self._check_open()
        return self.tracking.enqueue_commands(commands)

    def enqueue_once(
        self, commands: list[dict[str, Any]], keys: list[bytes], *, reimport: bool = False
    ) -> int:
        """enqueue_many() for commands named by stable keys (bytes; see
        importing.ledger_key): a command whose key the import ledger holds is skipped, so
        queueing the same keyed commands again queues nothing twice. Returns how many were
        queued. Keys are kept import_ledger_days; `reimport` queues them all anyway."""
        self._check_open()
        return self.tracking.enqueue_commands_once(commands, keys, reimport=reimport)

    def import_lines(
        self,
        stream: IO[bytes],
        *,
        reimport: bool = False,
        dry_run: bool = False,
        chunk_size: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> ImportReport:
        """Queue the commands of a JSON Lines byte stream (see tracker_agent.importing):
        lines imported before (the same file run again, or a fixed copy) are skipped, bad
        lines are reported in the result and the good ones queued. OutboxError (a full
        outbox, a full disk) may interrupt it: the same import run again goes on."""
        from .importing import DEFAULT_CHUNK_SIZE, JsonLinesImport

        self._check_open()
        job = JsonLinesImport(
            lambda: self.tracking,
            chunk_size=chunk_size or DEFAULT_CHUNK_SIZE,
            reimport=reimport,
            dry_run=dry_run,
        )
        return job.run(stream, progress)

    def export_bundle(self, out: str | os.PathLike[str], *, limit: int | None = None) -> Any:
        """Move up to `limit` pending commands (all by default, oldest first) out of the outbox
        into a new offline bundle at `out` (tracker_agent.offline): written to a temporary
        file, fsynced and renamed before the rows are deleted. Returns an ExportReport
        (`exported`, `path`: None when nothing was pending, `bundle_id`)."""
        from .offline import export_bundle

        self._check_open()
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise ConfigError(f"limit: must be a positive integer, got {limit!r}")
        return export_bundle(self.store, self.settings.project_token, os.fspath(out), limit=limit)

    def import_bundle(
        self, path: str | os.PathLike[str], *, dry_run: bool = False, force: bool = False
    ) -> Any:
        """Verify an offline bundle and queue its commands with their original timestamps
        (tracker_agent.offline). Commands imported before (the same bundle again, or another
        bundle carrying the same command) are skipped. BundleError (one line) for a corrupt or
        truncated bundle, or one of another project unless `force`. Returns an
        ImportBundleReport (`queued`, `skipped`, `manifest`; with dry_run, what would be)."""
        from .offline import import_bundle

        self._check_open()
        return import_bundle(
            self.tracking,
            self.settings.project_token,
            os.fspath(path),
            dry_run=dry_run,
            force=force,
        )

    def stats(self) -> dict[str, Any]:
        """Queue counts and delivery state (same keys as `tracker-agent status --json`; all
        zero in test mode)."""
        if not self.settings.enabled:
            empty: dict[str, Any] = dict.fromkeys(STATS_KEYS)
            empty.update(dict.fromkeys(("pending", "in_flight", "dead", "bytes"), 0))
            return {**empty, "delivered": 0, "dead_lettered": 0, "dropped": 0}
        return self.store.stats()

    # -- receipts ------------------------------------------------------------------------------

    def track_event(
        self,
        customer_ids: dict[str, Any],
        event_type: str,
        properties: dict[str, Any] | None = None,
        timestamp: float | None = None,
    ) -> Receipt:
        """tracking.add_event, returning a Receipt (its id) once the event is durable: ask
        receipt(id) later, from any process on this outbox, whether it was delivered."""
        return self.tracking.track_event(customer_ids, event_type, properties, timestamp)

    def track_customer_update(
        self, customer_ids: dict[str, Any], properties: dict[str, Any]
    ) -> Receipt:
        """tracking.update_customer_properties, returning a Receipt once it is durable."""
        return self.tracking.track_customer_update(customer_ids, properties)

    def track_commands(self, commands: list[dict[str, Any]]) -> list[Receipt]:
        """tracking.batch_commands (one transaction: all or none), a Receipt per command."""
        return self.tracking.track_commands(commands)

    def receipt(self, receipt: Receipt | int) -> ReceiptStatus:
        """Where a command queued with a receipt stands: queued, in_flight, delivered (kept
        for receipt_retention / receipt_max_rows), dead_lettered, or unknown."""
        return self.receipts([receipt])[0]

    def receipts(self, receipts: Iterable[Receipt | int]) -> list[ReceiptStatus]:
        """receipt() for each of `receipts`, in the same order, in one read."""
        ids = [_receipt_id(r) for r in _receipt_list(receipts)]
        self._check_open()
        if not self.settings.enabled:
            return [ReceiptStatus(i, receipt_states.UNKNOWN) for i in ids]
        return self.store.receipts(ids)

    # -- dead letters --------------------------------------------------------------------------

    def dead_letters(
        self,
        *,
        ids: Iterable[int] | None = None,
        error_contains: str | None = None,
        older_than: float | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """Dead letters (refused by the server, or out of attempts), oldest first: all, or
        those matching every filter given: `ids`, `error_contains` (a case-insensitive part
        of the reason), `older_than` (dead for at least that many seconds)."""
        filters = _dead_letter_filters(ids, error_contains, older_than)
        if limit is not None and limit < 1:
            raise ValidationError("limit", f"must be at least 1, got {limit}")
        self._check_open()
        if not self.settings.enabled:
            return []
        return self.store.list_dead(**filters, limit=limit)

    def retry_dead_letters(
        self,
        *,
        ids: Iterable[int] | None = None,
        error_contains: str | None = None,
        older_than: float | None = None,
        all: bool = False,
    ) -> int:
        """Queue matching dead letters again (the same payload, under their original ids, so
        in their original order); `all=True` for every one. Returns how many."""
        filters = _dead_letter_selection("retry", ids, error_contains, older_than, all)
        self._check_open()
        if not self.settings.enabled:
            return 0
        moved = self.store.retry_dead(**filters)
        if moved and self._scheduler is not None:
            self._scheduler.wake()
        return moved

    def purge_dead_letters(
        self,
        *,
        ids: Iterable[int] | None = None,
        error_contains: str | None = None,
        older_than: float | None = None,
        all: bool = False,
    ) -> int:
        """Delete matching dead letters for good; `all=True` for every one. Returns how many."""
        filters = _dead_letter_selection("purge", ids, error_contains, older_than, all)
        self._check_open()
        if not self.settings.enabled:
            return 0
        return self.store.purge_dead(**filters)

    def _check_open(self) -> None:
        if self._closed:
            raise AgentClosedError("this TrackerAgent is closed")


def _receipt_list(receipts: Iterable[Receipt | int]) -> list[Receipt | int]:
    if isinstance(receipts, (str, bytes, Receipt, int)):
        raise ValidationTypeError("receipts", "must be a list of receipts or ids")
    return list(receipts)


def _receipt_id(receipt: object) -> int:
    """A receipt's id, checked: a Receipt, or its id (an int >= 0)."""
    if isinstance(receipt, Receipt):
        return receipt.id
    if isinstance(receipt, bool) or not isinstance(receipt, int):
        raise ValidationTypeError(
            "receipt", f"must be a Receipt or its id (an int), not {type(receipt).__name__}"
        )
    if receipt < 0:
        raise ValidationError("receipt", f"ids are never negative, got {receipt}")
    return receipt


def _dead_letter_filters(
    ids: Iterable[int] | None, error_contains: str | None, older_than: float | None
) -> dict[str, Any]:
    """The store's dead-letter filters (see outbox.deadletters), checked."""
    if older_than is not None and not older_than >= 0:  # NaN too
        raise ValidationError("older_than", f"must be seconds >= 0, got {older_than!r}")
    if isinstance(ids, (str, bytes)):
        raise ValidationError("ids", "must be a list of ids, not a string")
    return {
        "ids": None if ids is None else [int(i) for i in ids],
        "error_contains": error_contains or None,
        "older_than_s": older_than,
    }


def _dead_letter_selection(
    verb: str,
    ids: Iterable[int] | None,
    error_contains: str | None,
    older_than: float | None,
    everything: bool,
) -> dict[str, Any]:
    """Filters for retry/purge, which act on every dead letter only when told so."""
    filters = _dead_letter_filters(ids, error_contains, older_than)
    if not everything and not any(value is not None for value in filters.values()):
        raise ValidationError(
            "selection",
            f"say which dead letters to {verb}: ids=, error_contains=, older_than=, or all=True",
        )
    return filters
