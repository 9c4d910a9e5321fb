"""TrackerAgent: the durable facade users embed. Tracking goes to the outbox, reads go direct.

    with TrackerAgent("project-token", username="key-id", password="secret") as agent:
        agent.tracking.add_event({"registered": "alice"}, "purchase", {"price": 9.5})
        agent.customer.get_customer({"registered": "alice"})   # straight to the API
    # delivered by a background thread; close (the end of the block) delivers what is left
    # for up to close_timeout seconds, and so does interpreter exit for an agent left open

`add_event` returns True only once the command is committed to SQLite (WAL, synchronous=FULL
by default); from then on a crash, kill -9 or power loss cannot lose it. `drain=False` makes a
producer that leaves delivery to the daemon; `enabled=False` a test mode that stores nothing.

This module holds the agent's setup and delivery (start, flush, run, stop, close). Its calls on
what is queued (imports, bundles, receipts, dead letters) are in queueing.py, what every agent
of a process shares (fork and exit hooks) in lifecycle.py, the result types in delivery.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from .bootclock import boot_id, boot_seconds
from .clock import wall_clock
from .config import Settings
from .constants import DAY_SECONDS
from .delivery import (
    ERROR_BACKING_OFF,
    ERROR_PAUSED,
    ERROR_STORAGE,
    ERROR_UNEXPECTED,
    DeadLetterHook,
    ErrorHook,
    SettledHook,
)
from .delivery import DeliveryError as DeliveryError  # re-exported: agent.py was their home
from .delivery import DeliveryState as DeliveryState
from .delivery import FlushResult as FlushResult
from .drain import Drainer  # imports concurrent.futures.thread first: see install_exit_hook
from .drain_group import DrainerGroup
from .drainer_outbox import DrainerOutbox
from .durable import DurableTracking
from .exceptions import ConfigError, OutboxError, StorageReadOnlyError
from .hookthread import HookThread
from .hostlimit import HostRateLimiter, default_rate_file
from .lifecycle import install_exit_hook, register_fork_handler
from .outbox.backend import hide_password
from .outbox.clock import BootRef
from .outbox.files import FILE_MODE, GROUP_FILE_MODE
from .outbox.store import OutboxStore
from .outcomes import DrainReport, human_seconds
from .policy import DrainPolicy
from .queueing import QueueMethods
from .tally import DeliveryTally
from .undrained import UndrainedWatch

if TYPE_CHECKING:
    from .prometheus import AgentCollector

log = logging.getLogger(__name__)

#: How often `flush` polls while rows are in flight elsewhere or waiting for their retry time.
FLUSH_POLL_SECONDS = 0.05
#: How often `run` reports to its heartbeat callback (the daemon's systemd watchdog ping).
HEARTBEAT_SECONDS = 5.0
#: Added to the longest healthy wait before the drain thread counts as stuck (stall_limit).
STALL_SLACK_SECONDS = 1.0


class TrackerAgent(QueueMethods):
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
        self._tally = DeliveryTally()  # this process's requests, for metrics_collector()
        if settings.enabled:
            self._open_outbox()
            self._undrained = UndrainedWatch(
                self.store, settings.warn_undrained_after, self.database_url
            )
        self.tracking = DurableTracking(
            self.client,
            self.store if settings.enabled else None,  # test mode: validate, store nothing
            on_enqueued=self._on_enqueued,
            check_open=self._check_open,
        )
        register_fork_handler(self)
        if settings.enabled:
            install_exit_hook()
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

    def _make_drainer(self) -> Drainer | DrainerGroup:
        policy = DrainPolicy.from_settings(self.settings)
        most = self.store.backend.max_claim_batches
        if policy.claim_batches > most:
            policy = dataclasses.replace(policy, claim_batches=most)
        self._limiter = self._make_limiter()
        self._tap = DrainerOutbox(self.store, self._settled)
        stopping = threading.Event()
        drainers = [
            Drainer(
                cast(OutboxStore, self._tap),
                self.client.tracking.send_stored_batch,
                policy,
                limiter=self._limiter,
                probe=self._ask_server_time,
                tally=self._tally,
                stopping=stopping,
            )
            for _ in range(self.settings.concurrent_batches)
        ]
        return drainers[0] if len(drainers) == 1 else DrainerGroup(drainers)

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

    # -- queue (the rest: queueing.QueueMethods) ---------------------------------------------------

    def metrics_collector(self) -> AgentCollector:
        """A prometheus_client collector of this agent's outbox (read at each scrape) and of
        its own delivery requests: `registry.register(agent.metrics_collector())`. Needs the
        `metrics` extra (MissingDependencyError otherwise)."""
        from .prometheus import AgentCollector

        return AgentCollector(self.stats, self._tally)

    def _on_enqueued(self, count: int) -> None:
        self._since_wake += count
        if self._scheduler is None:
            self._undrained.check()
        elif self._since_wake >= self.settings.batch_size:
            self._since_wake = 0
            self._scheduler.wake()

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
        released = sum(self.store.release_all(owner) for owner in self.drainer.owners)
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
                self._undrained.check(now_or_never=True)
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
        self.client = self._make_client()  # never share the parent's sockets
        if self._settled is not None:
            self._settled.reset_after_fork()
        self.tracking.after_fork(self.client)
        if self.settings.enabled:
            self.store.reset_after_fork()
            self._undrained.reset_after_fork()
            self._limiter.close()
            self.drainer = self._make_drainer()


# -- helpers ---------------------------------------------------------------------------------


def _call_hook(name: str, hook: Callable[[Any], None], arg: object) -> None:
    """A user's callback; whatever it raises is logged, and delivery goes on."""
    try:
        hook(arg)
    except Exception:
        log.exception("the %s callback raised; delivery goes on", name)


def _on_wall_clock(deadline: float | None) -> float | None:
    """A time.monotonic() deadline as the drain's clock (wall time) counts it."""
    if deadline is None:
        return None
    return wall_clock() + (deadline - time.monotonic())
