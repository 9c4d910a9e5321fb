"""Offline bundles between outboxes: export pending commands into a bundle file, import a
bundle into any outbox (README: "Devices that live offline"). bundle.py owns the file; this
module moves commands between it and an outbox (no HTTP).

Export: lease the rows to this process (no drain sends them meanwhile), write them to a
temporary file, fsync, rename, and only then delete them. A crash at any step leaves every
command in the outbox (leases of a dead process are taken back), or in a complete bundle, or
both: importing dedupes them, since a command's import key is its source outbox and its id
there (ids are never reused), whichever bundle carries it.

Import: verify the whole bundle first (format, count, checksum, project), then queue its
commands in order with their original timestamps through the import ledger (enqueue_once):
importing the same bundle twice, or two bundles holding the same command, adds nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import bundle
from . import constants as c
from .clock import wall_clock
from .exceptions import BundleError, ValidationError
from .importing import ledger_key
from .outbox import owners
from .outbox.store import OutboxStore

__all__ = ["ExportReport", "ImportBundleReport", "export_bundle", "import_bundle"]

#: The ledger namespace of bundle keys (blake2b personalisation: at most 16 bytes).
BUNDLE_NAMESPACE = b"ta-bundle"
#: Rows leased, written and deleted per transaction.
EXPORT_CHUNK_ROWS = 1000
#: Commands queued per import transaction.
IMPORT_CHUNK_COMMANDS = 1000
#: How long exported rows stay leased to the exporter (a crash: taken back sooner by a drain
#: on this machine, which sees the process is gone).
EXPORT_LEASE_SECONDS = c.DAY_SECONDS

#: Called after each step of an export ("leased", "written", "fsynced", "renamed", "deleted"):
#: tests kill the process there.
Step = Callable[[str], None]


@dataclass(frozen=True)
class ExportReport:
    exported: int
    path: Path | None  # None: nothing was pending, no file written
    bundle_id: str | None


@dataclass(frozen=True)
class ImportBundleReport:
    """What an import did (with dry_run: would do): queued, skipped as imported before."""

    manifest: bundle.Manifest
    queued: int
    skipped: int
    dry_run: bool


class KeyedQueue(Protocol):
    """What import needs (DurableTracking): queue commands named by ledger keys, each once,
    and look keys up (a dry run)."""

    def enqueue_commands_once(self, commands: list[dict[str, Any]], keys: list[bytes]) -> int: ...

    def known_keys(self, keys: list[bytes]) -> set[bytes]: ...


def export_bundle(
    store: OutboxStore,
    project_token: str,
    out: str | Path,
    *,
    limit: int | None = None,
    now: Callable[[], float] = wall_clock,
    step: Step | None = None,
) -> ExportReport:
    """Move up to `limit` pending commands (all by default) into a new bundle at `out`."""
    note = step or (lambda _name: None)
    here = owners.Machine.here()
    store.reclaim_dead_owners(now(), here)  # an export killed before: its rows come back
    owner = owners.make_owner_id(here)
    writer = bundle.BundleWriter(
        out, project=project_token, source_outbox=store.outbox_id(), now=now()
    )
    ids: list[int] = []
    try:
        for rows in _leased(store, owner, limit, now() + EXPORT_LEASE_SECONDS):
            for row in rows:
                writer.add(row.id, row.kind, row.payload, row.created_at)
            ids += [row.id for row in rows]
            note("leased")
        if not ids:
            writer.abort()
            return ExportReport(0, None, None)
        note("written")
        path = writer.commit(note)
        note("renamed")
    except BaseException:
        writer.abort()
        store.release_exported(owner, ids)
        raise
    for start in range(0, len(ids), EXPORT_CHUNK_ROWS):
        store.delete_exported(owner, ids[start : start + EXPORT_CHUNK_ROWS])
        note("deleted")
    return ExportReport(len(ids), path, writer.bundle_id)


def _leased(store: OutboxStore, owner: str, limit: int | None, until: float) -> Iterator[list[Any]]:
    taken, after = 0, 0
    while limit is None or taken < limit:
        want = EXPORT_CHUNK_ROWS if limit is None else min(EXPORT_CHUNK_ROWS, limit - taken)
        rows = store.lease_for_export(owner, after, want, until)
        if not rows:
            return
        yield rows
        taken += len(rows)
        after = rows[-1].id


def import_bundle(
    queue: KeyedQueue,
    project_token: str,
    path: str | Path,
    *,
    dry_run: bool = False,
    force: bool = False,
) -> ImportBundleReport:
    """Verify the bundle at `path` and queue its commands (see the module docstring).
    BundleError (one line) if it is corrupt, truncated, or for another project unless
    `force`; nothing is queued then."""
    manifest, commands = bundle.read(path)
    mine = bundle.fingerprint(project_token)
    if manifest.project != mine and not force:
        raise BundleError(
            f"{path}: made for another project (token fingerprint {manifest.project}, this "
            f"outbox's is {mine}); --force imports it anyway"
        )
    queued = skipped = 0
    for chunk in _chunks(commands, IMPORT_CHUNK_COMMANDS):
        keys = [_key(manifest, cmd) for cmd in chunk]
        if dry_run:
            known = queue.known_keys(keys)
            added = sum(key not in known for key in keys)
        else:
            added = _queue(queue, path, chunk, keys, queued)
        queued += added
        skipped += len(chunk) - added
    return ImportBundleReport(manifest, queued, skipped, dry_run)


def _queue(
    queue: KeyedQueue,
    path: str | Path,
    chunk: list[bundle.BundleCommand],
    keys: list[bytes],
    before: int,
) -> int:
    """Queue one chunk (one transaction); a command the agent refuses stops the import."""
    try:
        return queue.enqueue_commands_once([{"name": c.name, "data": c.data} for c in chunk], keys)
    except ValidationError as exc:
        queued = f"; {before} commands before its chunk are queued" if before else ""
        raise BundleError(f"{path}: a command is refused ({exc}){queued}") from exc


def _key(manifest: bundle.Manifest, command: bundle.BundleCommand) -> bytes:
    return ledger_key(BUNDLE_NAMESPACE, f"{manifest.source_outbox}:{command.id}".encode())


def _chunks(
    items: Iterator[bundle.BundleCommand], size: int
) -> Iterator[list[bundle.BundleCommand]]:
    chunk: list[bundle.BundleCommand] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
