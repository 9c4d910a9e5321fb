"""Importing JSON Lines so that running an import again never queues a line twice.

Each good line is queued together with its ledger key (outbox/ledger.py), in one transaction
per chunk: a digest of the line's content (its JSON with sorted keys: layout and key order do
not matter) and its occurrence number among identical lines of the input, so two identical
lines are two commands, each queued once. A line whose key is recorded is skipped, so after a
failure (a bad line, a full outbox, a kill -9) the same or a fixed file is simply imported
again: lines already queued are skipped, an edited line is new content and is queued. A line
with no timestamp gets the time of its first import, which stays its timestamp since later
runs skip it. Keys are kept `import_ledger_days`; a line imported longer ago is new again.

Bad lines do not stop the import: every good line is queued, the first MAX_REPORTED_BAD_LINES
bad ones are reported with their line numbers (and all are counted). Only a line too long to
be JSON Lines stops it (its end may never come: /dev/zero).

Other importers (offline bundles) use the same ledger with keys of their own: `ledger_key`
with a namespace of theirs, passed to `TrackerAgent.enqueue_once`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from . import constants as c
from . import validation
from .durable import check_command
from .exceptions import ValidationError
from .outbox.commands import NewCommand
from .wire import tree_encoder

DEFAULT_CHUNK_SIZE = c.DEFAULT_IMPORT_CHUNK_SIZE
MAX_IMPORT_LINE_BYTES = c.MAX_IMPORT_LINE_BYTES
MAX_REPORTED_BAD_LINES = c.MAX_REPORTED_BAD_LINES
#: The ledger namespace of JSON Lines keys (blake2b's personalisation, at most 16 bytes).
JSONL_NAMESPACE = b"ta-jsonl-line"
DIGEST_BYTES = 16

_canonical = tree_encoder(sort_keys=True)


def ledger_key(namespace: bytes, content: bytes, occurrence: int = 1) -> bytes:
    """The ledger key of the `occurrence`-th (from 1) item with this content in an input.

    A bundle importer passes a namespace of its own (at most 16 bytes) and its own stable
    content (e.g. a bundle id and sequence number), so its keys never meet another's."""
    return _with_occurrence(_digest(namespace, content), occurrence)


def _digest(namespace: bytes, content: bytes) -> bytes:
    return hashlib.blake2b(content, digest_size=DIGEST_BYTES, person=namespace).digest()


def _with_occurrence(digest: bytes, occurrence: int) -> bytes:
    return digest if occurrence == 1 else digest + occurrence.to_bytes(8, "big")


@dataclass(frozen=True)
class BadLine:
    """A line not queued: its number (from 1) and why, e.g. "line 4: Expecting ','..."."""

    number: int
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class ImportReport:
    """What an import did: lines read (blank ones aside), queued, skipped (already imported),
    bad (the first MAX_REPORTED_BAD_LINES; `bad_count` counts all), and the line that stopped
    it early, if any. With dry_run nothing was written: `queued` is what would be."""

    lines: int = 0
    queued: int = 0
    skipped: int = 0
    bad: list[BadLine] = field(default_factory=list)
    bad_count: int = 0
    stopped_at: BadLine | None = None
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return self.bad_count == 0 and self.stopped_at is None

    def _bad_line(self, number: int, message: str) -> None:
        self.bad_count += 1
        if len(self.bad) < MAX_REPORTED_BAD_LINES:
            self.bad.append(BadLine(number, message))


class ImportSink(Protocol):
    """Where good lines go: DurableTracking (timestamps, the outbox and its ledger)."""

    def prepare_row(self, command: dict[str, Any], field: str) -> NewCommand: ...

    def commit_rows(self, rows: list[NewCommand], keys: list[bytes], *, reimport: bool) -> int: ...

    def known_keys(self, keys: list[bytes]) -> set[bytes]: ...

    def prune_ledger(self) -> int: ...


class _LineTooLong(Exception):
    pass


def read_lines(stream: IO[bytes]) -> Iterator[tuple[int, str | BadLine, int]]:
    """(line number, text or why it is unreadable, bytes read) per line. A line longer than
    MAX_IMPORT_LINE_BYTES raises _LineTooLong (its rest is not read)."""
    number = 0
    while True:
        raw = stream.readline(MAX_IMPORT_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_IMPORT_LINE_BYTES:
            raise _LineTooLong(
                BadLine(
                    number,
                    f"line {number}: longer than {MAX_IMPORT_LINE_BYTES} bytes; is it JSON Lines?",
                )
            )
        try:
            yield number, raw.decode("utf-8"), len(raw)
        except UnicodeDecodeError as exc:
            reason = f"line {number}: not UTF-8 text (byte {exc.start + 1} of the line)"
            yield number, BadLine(number, reason), len(raw)


def line_to_command(line: str, field: str = "line") -> tuple[dict[str, Any], Any]:
    """A JSON Lines record as a raw {"name", "data"} command, and the parsed record. A record
    is a command, an event (it has "event_type") or a customer update.

    Raises ValidationError naming `field` for JSON nested too deeply, ValueError otherwise."""
    record = validation.loads(line, field)
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if "name" in record:
        return record, record
    name = c.EVENT_COMMAND if "event_type" in record else c.CUSTOMER_COMMAND
    return {"name": name, "data": record}, record


class JsonLinesImport:
    """One import of a JSON Lines stream; `report` holds what it did so far, also after an
    OutboxError (a full outbox, a full disk) interrupted it.

    `open_sink` is called at the first good line: input with none opens (creates) nothing.
    `reimport` queues every line, even those imported before (their keys are recorded anew,
    so a plain import later still skips them). `dry_run` reads the ledger, writes nothing.
    """

    def __init__(
        self,
        open_sink: Callable[[], ImportSink],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        reimport: bool = False,
        dry_run: bool = False,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self._open_sink = open_sink
        self._sink: ImportSink | None = None
        self.chunk_size = chunk_size
        self.reimport = reimport
        self.report = ImportReport(dry_run=dry_run)
        self._seen: set[int] = set()  # digest prefixes of the lines so far
        self._repeats: dict[bytes, int] = {}  # digest -> occurrences, for repeated content

    def run(self, stream: IO[bytes], progress: Callable[[int], None] | None = None) -> ImportReport:
        """Import every line of `stream`; `progress(bytes)` after each chunk."""
        rows: list[NewCommand] = []
        keys: list[bytes] = []
        consumed = 0
        try:
            for number, text, size in read_lines(stream):
                consumed += size
                self._take(number, text, rows, keys)
                if len(rows) >= self.chunk_size:
                    self._commit(rows, keys)
                    rows, keys = [], []
                    if progress is not None:
                        progress(consumed)
                    consumed = 0
        except _LineTooLong as exc:
            self.report.stopped_at = exc.args[0]
        self._commit(rows, keys)
        if progress is not None and consumed:
            progress(consumed)
        return self.report

    def _take(
        self, number: int, text: str | BadLine, rows: list[NewCommand], keys: list[bytes]
    ) -> None:
        if isinstance(text, BadLine):
            self.report._bad_line(number, text.message)
            return
        if not text.strip():
            return
        self.report.lines += 1
        where = f"line {number}"
        try:
            command, record = line_to_command(text, where)
            checked = check_command(command, where)
            content = _canonical(record).encode("utf-8")
        except (ValueError, RecursionError) as exc:
            self._refuse(number, exc)
            return
        sink = self._sink_now()  # outside the try: failing to open the outbox is no line's fault
        try:
            row = sink.prepare_row(checked, where)
        except ValueError as exc:
            self._refuse(number, exc)
            return
        digest = _digest(JSONL_NAMESPACE, content)
        rows.append(row)
        keys.append(_with_occurrence(digest, self._occurrence(digest)))

    def _occurrence(self, digest: bytes) -> int:
        """How many lines of this input had this content so far, this one included.

        A set of 64-bit prefixes remembers the lines seen once (70 bytes a line, against
        90 for a dict of digests); repeated content is counted by its whole digest. Two
        contents sharing a prefix (odds 3e-6 in 10M lines) only shift an occurrence number,
        the same way in every run of the same input: their keys stay distinct and stable."""
        prefix = int.from_bytes(digest[:8], "big")
        if prefix not in self._seen:
            self._seen.add(prefix)
            return 1
        occurrence = self._repeats.get(digest, 1) + 1
        self._repeats[digest] = occurrence
        return occurrence

    def _refuse(self, number: int, exc: BaseException) -> None:
        """Report line `number` as bad: ValidationError names it; other errors (bad JSON, NaN,
        text that is not Unicode) get its number here."""
        if isinstance(exc, ValidationError):
            self.report._bad_line(number, str(exc))
        elif isinstance(exc, UnicodeError):
            self.report._bad_line(number, f"line {number}: contains text that is not valid Unicode")
        else:
            self.report._bad_line(number, f"line {number}: {exc}")

    def _sink_now(self) -> ImportSink:
        if self._sink is None:
            self._sink = self._open_sink()
            if not self.report.dry_run:
                self._sink.prune_ledger()
        return self._sink

    def _commit(self, rows: list[NewCommand], keys: list[bytes]) -> None:
        if not rows or self._sink is None:
            return
        if self.report.dry_run:
            new = len(rows) if self.reimport else len(set(keys) - self._sink.known_keys(keys))
        else:
            new = self._sink.commit_rows(rows, keys, reimport=self.reimport)
        self.report.queued += new
        self.report.skipped += len(rows) - new
