"""TrackerAgent: the durable facade users embed. Tracking goes to the outbox, reads go direct.

    with TrackerAgent("project-token", username="key-id", password="secret") as agent:
        agent.tracking.add_event({"registered": "alice"}, "purchase", {"price": 9.5})
        agent.customer.get_customer({"registered": "alice"})   # straight to the API
    # delivered by a background thread; close (the end of the block) delivers what is left
    # for up to close_timeout seconds, and so does interpreter exit for an agent left open

`add_event` returns True only once the command is committed to SQLite (WAL, synchronous=FULL
by default); from then on a crash, kill -9 or power loss cannot lose it. `drain=False` makes a
producer that leaves delivery to the daemon; `enabled=False` a test mode that stores nothing.
"""

from __future__ import annotations

import atexit
import dataclasses
import enum
import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, cast

from .bootclock import boot_id, boot_seconds
from .clock import wall_clock
from .config import Settings
from .constants import DAY_SECONDS
from .drain import Drainer  # imports concurrent.futures.thread first: see _install_exit_hook
from .durable import DurableTracking
from .exceptions import (
    AgentClosedError,
    ConfigError,
    OutboxError,
    StorageReadOnlyError,
    ValidationError,
    ValidationTypeError,
)
from .hookthread import HookThread
from .hostlimit import RATE_FILE_SUFFIX, HostRateLimiter
from .outbox import receipts as receipt_states
from .outbox import state as state_keys
from .outbox.backend import hide_password
from .outbox.clock import BootRef
from .outbox.deadletters import DeadLetter
from .outbox.files import FILE_MODE, GROUP_FILE_MODE
from .outbox.leases import Settlement
from .outbox.receipts import Receipt, ReceiptStatus
from .outbox.stats import STATS_KEYS
from .outbox.store import OutboxStore
from .outcomes import DrainReport, human_seconds
from .policy import DrainPolicy
from .tally import DeliveryTally

if TYPE_CHECKING:
    from .importing import ImportReport
    from .prometheus import AgentCollector

log = logging.getLogger(__name__)

#: How often `flush` polls while rows are in flight elsewhere or waiting for their retry time.
FLUSH_POLL_SECONDS = 0.05
#: How often `run` reports to its heartbeat callback (the daemon's systemd watchdog ping).
HEARTBEAT_SECONDS = 5.0
#: Added to the longest healthy wait before the drain thread counts as stuck (stall_limit).
STALL_SLACK_SECONDS = 1.0
#: How often (at most) an enqueue looks for a drainer when none runs in this process.
UNDRAINED_CHECK_SECONDS = 5.0

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


class _DrainerOutbox:
    """The outbox as this agent's drainer sees it. Settlements pass through, and the ids they
    dead-letter are noted for `on_dead_letter` (a DrainReport only counts them). Once the
    agent is closed, a pass that outlived close() writes nothing more: its rows were given
    back, and the outbox belongs to the next agent."""

    def __init__(
        self, store: OutboxStore, settled: HookThread[ReceiptStatus] | None = None
    ) -> None:
        self._store = store
        self._ids: list[int] = []
        self._lock = threading.Lock()
        self._settled = settled
        self.closed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def settle(self, owner: str, outcome: Settlement, now: float) -> int:
        if self.closed:
            return 0
        delivered = self._store.settle(owner, outcome, now)
        self._note(outcome, now)
        return delivered

    def record_settlement(self, owner: str, outcome: Settlement, now: float) -> int | None:
        return None if self.closed else self._store.record_settlement(owner, outcome, now)

    def settle_and_claim(self, owner: str, outcome: Settlement, now: float, **terms: Any) -> Any:
        if self.closed:
            return 0, {}, []
        result = self._store.settle_and_claim(owner, outcome, now, **terms)
        self._note(outcome, now)
        return result

    def renew_leases(self, owner: str, until: float) -> int:
        return 0 if self.closed else self._store.renew_leases(owner, until)

    def _note(self, outcome: Settlement, now: float) -> None:
        if outcome.dead:
            with self._lock:
                self._ids.extend(row_id for row_id, _reason, _status in outcome.dead)
        if outcome.receipts and self._settled is not None:
            self._settled.submit(_settled_receipts(outcome, now))

    def take(self) -> list[int]:
        """The ids dead-lettered since the last take()."""
        with self._lock:
            ids, self._ids = self._ids, []
        return ids


class TrackerAgent:
    """Durable tracking for the Exponea API; see the module docstring.

    The signature keeps the seed SDK's `Exponea(project_token, username, password, url,
    request_timeout)`; every other keyword is a `Settings` field (batch_size, max_rows, ...),
    except the hooks, called in the thread that delivered (the background drain's, or the one
    calling flush() or close()); an exception they raise is logged and delivery goes on:

    - `on_dead_letter(DeadLetter)`: once for each command this agent's delivery dead-lettered
      (refused by the server, or out of attempts), with its `reason`, after the pass.
    - `on_error(DeliveryError)`: after each pass that failed: a batch not accepted (backing
      off), delivery paused (credentials), or the outbox failed.

    `on_settled(ReceiptStatus)` is different: it is called in a thread of its own (never
    holding up delivery), once for each command with a receipt (track_event and friends)
    that this agent's delivery settled: delivered, or dead-lettered with its reason.
    """

    def __init__(
        self,
        project_token: str,
        username: str = "",
        password: str = "",
        url: str | None = None,
        request_timeout: float | None = None,
        database_url: str | None = None,
        *,
        session: Any = None,
        on_error: ErrorHook | None = None,
        on_dead_letter: DeadLetterHook | None = None,
        on_settled: SettledHook | None = None,
        **settings: Any,
    ) -> None:
        known = {f.name for f in dataclasses.fields(Settings)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        values: dict[str, Any] = dict(settings)
        values.update(project_token=project_token, username=username, password=password)
        for name, value in (
            ("url", url),
            ("request_timeout", request_timeout),
            ("database_url", database_url),
        ):
            if value is not None:
                values[name] = value
        self._setup(Settings(**values), session, on_error, on_dead_letter, on_settled)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        session: Any = None,
        on_error: ErrorHook | None = None,
        on_dead_letter: DeadLetterHook | None = None,
        on_settled: SettledHook | None = None,
    ) -> TrackerAgent:
        agent = cls.__new__(cls)
        agent._setup(settings, session, on_error, on_dead_letter, on_settled)
        return agent

    def _setup(
        self,
        settings: Settings,
        session: Any,
        on_error: ErrorHook | None,
        on_dead_letter: DeadLetterHook | None,
        on_settled: SettledHook | None = None,
    ) -> None:
        from .outbox.files import default_database_url

        self.settings = settings
        self._session = session
        self.on_error = on_error
        self.on_dead_letter = on_dead_letter
        self._settled = (
            HookThread(on_settled, "tracker-agent-on_settled") if on_settled is not None else None
        )
        self.client = self._make_client()
        # The one place the library reads the environment: the default outbox location
        # follows systemd's $STATE_DIRECTORY and XDG's $XDG_STATE_HOME, as documented.
        self.database_url = settings.database_url or default_database_url(os.environ)
        # PostgreSQL: the host's request budget still lives in a file of this host.
        self._rate_file = settings.rate_limit_file or default_rate_file(
            self.database_url, os.environ
        )
        self._scheduler: Any = None
        self._closed = False
        self._state = DeliveryState.IDLE
        self._since_wake = 0
        self._on_state_change: Callable[[DeliveryState, str | None], None] | None = None
        self._undrained_warned = False
        # time.monotonic() of the first look: a command queued now cannot be late yet
        self._undrained_check_at = time.monotonic() + min(
            settings.warn_undrained_after, UNDRAINED_CHECK_SECONDS
        )
        self._undrained_lock = threading.Lock()
        self._tally = DeliveryTally()  # this process's requests, for metrics_collector()
        if settings.enabled:
            self._open_outbox()
        self.tracking = DurableTracking(
            self.client,
            self.store if settings.enabled else None,  # test mode: validate, store nothing
            on_enqueued=self._on_enqueued,
            check_open=self._check_open,
        )
        _register_fork_handler(self)
        if settings.enabled:
            _install_exit_hook()
        if settings.enabled and settings.drain:
            self.start()

    def _open_outbox(self) -> None:
        from .outbox.engine import open_outbox

        settings = self.settings
        engine = open_outbox(
            self.database_url,
            synchronous=settings.synchronous,
            busy_timeout=settings.busy_timeout,
            file_mode=GROUP_FILE_MODE if settings.share_with_group else FILE_MODE,
        )
        self.store = OutboxStore(
            engine,
            max_rows=settings.max_rows,
            max_bytes=settings.max_bytes,
            overflow=settings.overflow,
            ledger_retention=settings.import_ledger_days * DAY_SECONDS,
        )
        try:
            self.store.bind_project(settings.project_token)
        except BaseException:
            self.store.close()
            engine.dispose()
            raise
        self.drainer = self._make_drainer()

    def _make_client(self) -> Any:
        from .client import Exponea

        return Exponea.from_settings(self.settings, session=self._session)

    def _make_drainer(self) -> Drainer:
        policy = DrainPolicy.from_settings(self.settings)
        self._limiter = self._make_limiter()
        self._tap = _DrainerOutbox(self.store, self._settled)
        return Drainer(
            cast(OutboxStore, self._tap),
            self.client.tracking.send_stored_batch,
            policy,
            limiter=self._limiter,
            probe=self._ask_server_time,
            tally=self._tally,
        )

    def _ask_server_time(self) -> float:
        """The drain's probe: one GET system/time (no retries). Its answer, taken at the
        middle of the round trip, becomes this boot's clock reference in the outbox."""
        sent_mono, sent_wall = boot_seconds(), time.time()
        server = float(self.client.tracking.get_system_time(retry=False))
        half = (boot_seconds() - sent_mono) / 2
        ref = BootRef(server=server, mono=sent_mono + half, wall=sent_wall + half)
        self.store.learn_clock(boot_id(), ref, time.time())
        return server

    def _make_limiter(self) -> HostRateLimiter:
        """The host-wide request budget shared by every drainer on this outbox (or on every
        outbox naming the same rate_limit_file)."""
        s = self.settings
        path = self._rate_file
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        mode = GROUP_FILE_MODE if s.share_with_group else FILE_MODE
        try:
            return HostRateLimiter(path, s.rate_limit, file_mode=mode).open()
        except OSError as exc:
            raise StorageReadOnlyError(
                f"rate_limit_file: cannot open {path} ({exc.strerror or exc})"
            ) from exc

    # -- reads go straight to the API ----------------------------------------------------------

    @property
    def customer(self) -> Any:
        return self.client.customer

    @property
    def catalog(self) -> Any:
        return self.client.catalog

    @property
    def analyses(self) -> Any:
        return self.client.analyses

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

    def metrics_collector(self) -> AgentCollector:
        """A prometheus_client collector of this agent's outbox (read at each scrape) and of
        its own delivery requests: `registry.register(agent.metrics_collector())`. Needs the
        `metrics` extra (MissingDependencyError otherwise)."""
        from .prometheus import AgentCollector

        return AgentCollector(self.stats, self._tally)

    def _on_enqueued(self, count: int) -> None:
        self._since_wake += count
        if self._scheduler is None:
            self._check_undrained()
        elif self._since_wake >= self.settings.batch_size:
            self._since_wake = 0
            self._scheduler.wake()

    def _check_undrained(self, *, now_or_never: bool = False) -> None:
        """Log once if commands wait and nothing delivers them: no drain in this process and
        no sign of another drainer on the outbox for warn_undrained_after seconds. Looks at
        most every UNDRAINED_CHECK_SECONDS; never fails the caller."""
        after = self.settings.warn_undrained_after
        clock = time.monotonic()
        if self._undrained_warned or after <= 0:
            return
        if clock < self._undrained_check_at and not now_or_never:
            return
        if not self._undrained_lock.acquire(blocking=False):
            return  # another thread is looking
        try:
            self._undrained_check_at = clock + min(after, UNDRAINED_CHECK_SECONDS)
            waiting = self._undrained_commands(after)
            if waiting and not self._undrained_warned:
                self._undrained_warned = True
                log.warning(
                    "%d commands have waited over %g s and nothing delivers them: this process "
                    "has no background drain (drain=False, stop(), or a forked child) and no "
                    "other drainer has touched %s for as long; run the daemon "
                    "(`tracker-agent run`) on that outbox, or create the agent with drain=True",
                    waiting,
                    after,
                    hide_password(self.database_url),
                )
        except Exception:  # a look at the queue must never fail a tracking call
            log.debug("could not check whether anything drains the outbox", exc_info=True)
        finally:
            self._undrained_lock.release()

    def _undrained_commands(self, after: float) -> int:
        """Commands pending for `after` seconds with no sign of a drainer for as long (none in
        flight, no delivery, failure, backoff or probe recorded), else 0."""
        now = wall_clock()
        stats = self.store.stats(now)
        oldest = stats["oldest_pending_age_s"]
        if not stats["pending"] or stats["in_flight"] or oldest is None or oldest < after:
            return 0
        state = self.store.state()
        keys = (
            state_keys.STATE_LAST_SUCCESS,
            state_keys.STATE_LAST_ERROR_AT,
            state_keys.STATE_BACKOFF_UNTIL,  # a drainer backing off comes back at that time
            state_keys.STATE_PROBE_AT,  # a paused drainer probes then
        )
        signs = [float(state[key]) for key in keys if state.get(key)]
        if signs and now - max(signs) < after:
            return 0
        return int(stats["pending"])

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

    # -- delivery ------------------------------------------------------------------------------

    def start(self) -> TrackerAgent:
        """Drain in a background thread of this process (idempotent; done on creation unless
        drain=False; nothing in test mode). Returns self."""
        self._check_open()
        if self._scheduler is None and self.settings.enabled:
            from .scheduler import DrainScheduler

            self._probe_if_paused("the drain starts")
            self.drainer.stopping.clear()
            scheduler = DrainScheduler(self._scheduled_drain, self.settings.drain_interval)
            scheduler.start()
            self._scheduler = scheduler
        return self

    def _probe_if_paused(self, why: str) -> None:
        """A paused outbox is probed at once rather than at its stored probe time: a drain
        that starts (the daemon, an app restarted after its credentials were fixed) or a
        flush should not wait up to pause_probe_interval to find out that they work now."""
        try:
            # Before any new connection reads the file: a -wal deleted under us is rescued
            # through the connection that still has it open (see rescue_lost_wal).
            self.store.rescue_lost_wal()
            reason = self.store.probe_now()
        except OutboxError as exc:  # the pass that follows meets and reports it
            log.warning("could not ask for a probe of the paused delivery: %s", exc)
            return
        if reason:
            log.info("delivery is paused (%s); %s: probing the API now", reason, why)

    @property
    def draining_in_background(self) -> bool:
        """start() runs a drain thread in this process (False in a forked child until it
        calls start() itself)."""
        return self._scheduler is not None

    def background_drain_idle(self) -> bool:
        """The background drain runs and no pass of it is in progress."""
        return self._scheduler is not None and self._scheduler.idle

    def _scheduled_drain(self) -> None:
        try:
            self.store.rescue_lost_wal()
            report = self.drainer.drain(stop_on_partial=True)
        except OutboxError as exc:
            self._set_state(DeliveryState.STORAGE_ERROR, str(exc))
            log.error("drain failed: %s", exc)
            self._report_error(DeliveryError(ERROR_STORAGE, str(exc), exception=exc))
            return
        except Exception as exc:
            log.exception("drain failed unexpectedly; will try again")
            text = f"{type(exc).__name__}: {exc}"
            self._report_error(DeliveryError(ERROR_UNEXPECTED, text, exception=exc))
            return
        if report.paused_reason:
            self._set_state(DeliveryState.PAUSED, report.paused_reason)
        elif report.backoff_until is not None:
            self._set_state(DeliveryState.BACKING_OFF, report.last_error)
        elif report.requests:
            self._set_state(DeliveryState.DELIVERING, None)
        else:
            self._set_state(DeliveryState.IDLE, None)
        self._after_pass(report)

    def _after_pass(self, report: DrainReport) -> None:
        """Call the hooks for what one drain pass did, in the thread that ran it."""
        if self._closed:
            return  # a pass that outlived close(): its rows were given back, nothing to say
        try:
            dead = self._tap.take()
            if dead and self.on_dead_letter is not None:
                for letter in self.store.list_dead(ids=dead):
                    _call_hook("on_dead_letter", self.on_dead_letter, letter)
            if report.last_error is None or not report.waits:
                return  # no failure in this pass (a backoff already in force is not one)
            if report.paused_reason:
                probe_at = self.store.stats()["next_attempt_at"]
                error = DeliveryError(ERROR_PAUSED, report.paused_reason, probe_at)
            else:
                error = DeliveryError(ERROR_BACKING_OFF, report.last_error, report.backoff_until)
            self._report_error(error)
        except Exception:  # the outbox failed under us: the next pass reports that
            log.warning("could not report a drain pass to the hooks", exc_info=True)

    def _report_error(self, error: DeliveryError) -> None:
        if self.on_error is not None:
            _call_hook("on_error", self.on_error, error)

    def _set_state(self, state: DeliveryState, detail: str | None) -> None:
        previous, self._state = self._state, state
        changed = previous != state and not (previous.quiet and state.quiet)
        if changed and previous is DeliveryState.STORAGE_ERROR:
            log.info("the outbox is writable again")
        if changed and self._on_state_change is not None:
            self._on_state_change(state, detail)

    def flush(
        self,
        timeout: float | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> FlushResult:
        """Deliver now. Without timeout: until nothing is due or delivery must wait (backoff or
        pause). With a timeout: keep going, waiting out backoffs, until empty or out of time.
        A paused delivery is probed at once (not at its stored probe time): if the API
        accepts the credentials again, the pause lifts and the flush delivers."""
        self._check_open()
        if not self.settings.enabled:
            return FlushResult(0, 0, 0, None, None, timed_out=False)
        self._probe_if_paused("flush")
        if self._scheduler is None:
            # stop() leaves the flag set for a pass that outlived its grace; that pass holds
            # the drain lock, so this flush simply waits for it and then delivers.
            self.drainer.stopping.clear()
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._flush(deadline, progress)

    def _flush(
        self,
        deadline: float | None,
        progress: Callable[[int, int], None] | None = None,
        *,
        give_up_early: bool = False,
    ) -> FlushResult:
        """flush() until `deadline` (time.monotonic()). With `give_up_early` (close), each pass
        also stops claiming at the deadline, and the flush ends when the next attempt is due
        only after it."""
        self.store.rescue_lost_wal()
        total = self.store.stats()["pending"]
        done = DrainReport()

        def report_progress(pass_report: DrainReport) -> None:
            if progress is not None:
                moved = done.delivered + done.dead_lettered
                progress(moved + pass_report.delivered + pass_report.dead_lettered, total)

        while True:
            pass_deadline = _on_wall_clock(deadline) if give_up_early else None
            report = self.drainer.drain(deadline=pass_deadline, progress=report_progress)
            done.add(report)
            self._after_pass(report)
            stats = self.store.stats()
            remaining = stats["pending"] + stats["in_flight"]
            if remaining == 0 or deadline is None or done.paused_reason:
                break
            left = deadline - time.monotonic()
            wait = (stats["next_attempt_at"] or 0.0) - time.time()
            if left <= 0 or (give_up_early and wait > left):
                break
            time.sleep(min(max(FLUSH_POLL_SECONDS, min(wait, 1.0)), left))
        return FlushResult(
            delivered=done.delivered,
            dead_lettered=done.dead_lettered,
            remaining=remaining,
            paused_reason=stats["paused_reason"],
            # The stored error is history once the queue is empty: report it only if it may
            # still be why something is left.
            last_error=done.last_error or (stats["last_error"] if remaining else None),
            timed_out=deadline is not None and remaining > 0 and time.monotonic() >= deadline,
        )

    def run(
        self,
        stop_event: threading.Event,
        *,
        on_state_change: Callable[[DeliveryState, str | None], None] | None = None,
        heartbeat: Callable[[], None] | None = None,
        heartbeat_interval: float = HEARTBEAT_SECONDS,
    ) -> None:
        """The daemon: drain on the schedule until `stop_event` is set, then stop gracefully
        (the request in flight gets `shutdown_grace` seconds; leases are released).
        `heartbeat` is called every `heartbeat_interval` seconds (at most HEARTBEAT_SECONDS)."""
        if not self.settings.enabled:
            raise ConfigError("enabled: is false (test mode): there is nothing to deliver")
        self._on_state_change = on_state_change
        self.start()
        interval = min(heartbeat_interval, HEARTBEAT_SECONDS)
        stalled = False
        while not stop_event.wait(interval if heartbeat else None):
            if heartbeat is None:
                continue
            if self.drain_is_alive():
                if stalled:
                    log.warning("the drain thread is making progress again")
                stalled = False
                heartbeat()
            elif not stalled:
                stalled = True
                log.error(
                    "the drain thread has shown no progress for over %.0f s; withholding the "
                    "watchdog ping so that systemd restarts the daemon",
                    self.stall_limit(),
                )
        self._shut(self.settings.shutdown_grace)  # no delivery at close: stop means stop

    def stall_limit(self) -> float:
        """Seconds without a sign of life after which the drain thread counts as stuck: longer
        than anything a healthy pass waits for (two request deadlines, or SQLite's busy
        timeout) plus a tick of the schedule."""
        s = self.settings
        deadline = s.request_timeout + s.connect_timeout
        return max(2 * deadline, s.busy_timeout) + s.drain_interval + STALL_SLACK_SECONDS

    def drain_is_alive(self) -> bool:
        """The background drain runs and showed progress within stall_limit()."""
        if self._scheduler is None:
            return False
        return time.monotonic() - self.drainer.last_progress <= self.stall_limit()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the background drain (the agent stays usable for tracking). True if the pass in
        flight finished within `timeout` (default: shutdown_grace)."""
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is None or not self.settings.enabled:
            return True
        self.drainer.stopping.set()
        grace = self.settings.shutdown_grace if timeout is None else timeout
        finished = scheduler.shutdown(grace)
        if not finished:
            log.warning("drain still busy after %s; releasing its leases", human_seconds(grace))
        released = self.store.release_all(self.drainer.owner)
        if released:
            log.info("released %d leased commands for other drainers", released)
        return bool(finished)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued for up to `timeout` seconds (default: close_timeout; 0: not
        at all) if this agent delivers (drain=True, or start() was called), then stop the
        background drain and close the connections. Whatever is left stays on disk for the
        next agent or the daemon on this file. Idempotent.

        Returns within about `timeout` when it delivers: a request still in flight then is
        left to its own deadline and its rows are given back (it may be sent again; the fixed
        timestamps make that harmless). Otherwise it waits up to `timeout` (default:
        shutdown_grace) for a pass in progress, as stop() does."""
        if self._closed:
            return
        budget = self.settings.close_timeout if timeout is None else max(0.0, timeout)
        if budget > 0 and self._delivers():
            deadline = time.monotonic() + budget
            self._deliver_until(deadline)
            grace = min(max(0.0, deadline - time.monotonic()), self.settings.shutdown_grace)
        else:
            grace = self.settings.shutdown_grace if timeout is None else budget
            if self.settings.enabled and self._scheduler is None:
                self._check_undrained(now_or_never=True)
        self._shut(grace)

    def _shut(self, grace: float) -> None:
        """Stop the background drain (`grace` for the pass in progress), close connections."""
        if self._closed:
            return
        if self.settings.enabled:
            self.stop(grace)
            self.drainer.close(wait=False)  # idle unless a request outlived the grace period
        self._closed = True
        if self._settled is not None and not self._settled.close(grace):
            log.warning("on_settled is still busy after %.1fs; not waiting for it", grace)
        if self.settings.enabled:
            self._tap.closed = True
            self.store.close()
            self.store.engine.dispose()
            self._limiter.close()
        self.client.close()

    def _delivers(self) -> bool:
        """This agent sends: it drains by default, or start() was called."""
        return self.settings.enabled and (self.settings.drain or self._scheduler is not None)

    def _deliver_until(self, deadline: float) -> None:
        """Deliver until the queue is empty, the next attempt is due only after `deadline`
        (time.monotonic()), or it passes. A helper thread does the work, so that a request in
        flight at the deadline cannot hold the caller."""
        try:
            stats = self.store.stats()
        except OutboxError as exc:  # closing must not fail for it
            log.warning("not delivering at close: %s", exc)
            return
        if stats["pending"] + stats["in_flight"] == 0:
            return
        if self._scheduler is None:
            self.drainer.stopping.clear()  # see flush(); cleared here, before the helper runs
        finished = threading.Event()

        def deliver() -> None:
            try:
                left = self._flush(deadline, give_up_early=True).remaining
                if left and not self._closed:
                    log.info("%d commands stay queued for the next agent or the daemon", left)
            except Exception as exc:  # closed under a pass that outlived the deadline
                log.info("delivery at close ended early: %s", exc)
            finally:
                finished.set()

        threading.Thread(target=deliver, name="tracker-agent-close", daemon=True).start()
        if not finished.wait(max(0.0, deadline - time.monotonic())):
            self.drainer.stopping.set()  # claim nothing more; the rest stays queued
            log.info("close_timeout reached while delivering; the rest stays queued")

    def _finish_at_exit(self) -> None:
        """Interpreter exit: deliver for up to close_timeout, then stop the background drain.
        The agent stays open: threads still running may queue more (for the next agent)."""
        if self._closed or not self.settings.enabled:
            return
        budget = self.settings.close_timeout
        if budget > 0 and self._delivers():
            self._deliver_until(time.monotonic() + budget)
        # Python waits for a pass in progress anyway (it joins its thread pools at exit):
        # let it settle its batch rather than give the rows back under it.
        self.stop(self.settings.shutdown_grace)

    def __enter__(self) -> TrackerAgent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        token, url = self.settings.project_token, hide_password(self.database_url)
        return f"TrackerAgent(project_token={token!r}, database_url={url!r})"

    # -- fork safety ---------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """A child of fork() (gunicorn --preload) gets fresh connections and no drain thread;
        the parent keeps draining. Call start() in the child to drain there too."""
        if self._closed:
            return
        if self._scheduler is not None:
            self._scheduler.forget_after_fork()
        self._scheduler = None
        self._undrained_lock = threading.Lock()
        self.client = self._make_client()  # never share the parent's sockets
        if self._settled is not None:
            self._settled.reset_after_fork()
        self.tracking.after_fork(self.client)
        if self.settings.enabled:
            self.store.reset_after_fork()
            self._limiter.close()
            self.drainer = self._make_drainer()


_agents: weakref.WeakSet[TrackerAgent] = weakref.WeakSet()
_fork_hook_installed = False


def _register_fork_handler(agent: TrackerAgent) -> None:
    global _fork_hook_installed
    _agents.add(agent)
    if not _fork_hook_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(
            before=_hold_agents_for_fork,
            after_in_parent=_release_agents_after_fork,
            after_in_child=_reset_agents_in_child,
        )
        _fork_hook_installed = True


def _open_agents() -> list[TrackerAgent]:
    return sorted((a for a in list(_agents) if not a._closed), key=id)


def default_rate_file(database_url: str, env: Mapping[str, str]) -> str:
    """Where drainers of this host keep their shared request budget: beside an SQLite outbox;
    for a database on a server, in this host's default state directory, one file per database
    (the API's rate limit is per source IP: each host limits itself)."""
    from .outbox.files import default_database_url, sqlite_path

    if database_url.partition("://")[0].lower().startswith("postgres"):
        target = database_url.rpartition("@")[2]  # never the password
        digest = hashlib.sha256(target.encode()).hexdigest()[:16]
        folder = os.path.dirname(sqlite_path(default_database_url(env)))
        return os.path.join(folder, f"postgresql-{digest}{RATE_FILE_SUFFIX}")
    return sqlite_path(database_url) + RATE_FILE_SUFFIX


def _outbox_agents() -> list[TrackerAgent]:
    """Open agents with an outbox (not in test mode)."""
    return [a for a in _open_agents() if a.settings.enabled]


_held_for_fork: list[TrackerAgent] = []


def _hold_agents_for_fork() -> None:
    for agent in _outbox_agents():
        agent.store.hold_for_fork()
        _held_for_fork.append(agent)


def _release_agents_after_fork() -> None:
    while _held_for_fork:
        _held_for_fork.pop().store.release_after_fork()


def _reset_agents_in_child() -> None:
    _held_for_fork.clear()  # the child replaces those locks instead of releasing them
    for agent in _open_agents():
        agent._after_fork_in_child()


# -- interpreter exit ------------------------------------------------------------------------

_exit_hook_installed = False


def _install_exit_hook() -> None:
    """Once per process: deliver at interpreter exit (see _deliver_at_exit).

    threading's exit hooks run before Python joins its threads and closes its thread pools
    (concurrent.futures refuses new work after that, and the drain sends through a pool);
    atexit's run after, too late. They run in reverse order of registration: ours, added
    after concurrent.futures.thread was imported (drain.py imports it), runs before its."""
    global _exit_hook_installed
    if _exit_hook_installed:
        return
    register = getattr(threading, "_register_atexit", None) or atexit.register
    try:
        register(_deliver_at_exit)
    except RuntimeError:  # the interpreter is shutting down already
        return
    _exit_hook_installed = True


def _deliver_at_exit() -> None:
    """Each open agent that delivers gets close_timeout seconds to send what is queued, then
    its background drain stops. Never raises: the interpreter's exit must go on."""
    for agent in _outbox_agents():
        try:
            agent._finish_at_exit()
        except BaseException:  # KeyboardInterrupt too: the exit goes on
            log.warning("delivery at exit failed for %r", agent, exc_info=True)


# -- helpers ---------------------------------------------------------------------------------


def _call_hook(name: str, hook: Callable[[Any], None], arg: object) -> None:
    """A user's callback; whatever it raises is logged, and delivery goes on."""
    try:
        hook(arg)
    except Exception:
        log.exception("the %s callback raised; delivery goes on", name)


def _settled_receipts(outcome: Settlement, now: float) -> list[ReceiptStatus]:
    """What on_settled hears of one settlement: its receipts delivered or dead-lettered."""
    attempts = outcome.receipts
    settled = [
        ReceiptStatus(i, receipt_states.DELIVERED, attempts[i], delivered_at=now)
        for i in outcome.delivered
        if i in attempts
    ]
    settled += [
        ReceiptStatus(
            i,
            receipt_states.DEAD_LETTERED,
            attempts[i],
            reason,
            dead_at=now,
            reason=reason,
            status_code=status,
        )  # fmt: skip
        for i, reason, status in outcome.dead
        if i in attempts
    ]
    return settled


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


def _on_wall_clock(deadline: float | None) -> float | None:
    """A time.monotonic() deadline as the drain's clock (wall time) counts it."""
    if deadline is None:
        return None
    return wall_clock() + (deadline - time.monotonic())


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
