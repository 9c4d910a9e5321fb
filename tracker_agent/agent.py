"""TrackerAgent: the durable facade users embed. Tracking goes to the outbox, reads go direct.

    with TrackerAgent("project-token", username="key-id", password="secret") as agent:
        agent.start()                                   # background drain in this process
        agent.tracking.add_event({"registered": "alice"}, "purchase", {"price": 9.5})
        agent.customer.get_customer({"registered": "alice"})   # straight to the API

`add_event` returns True only once the command is committed to SQLite (WAL, synchronous=FULL
by default); from then on a crash, kill -9 or power loss cannot lose it.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import Settings
from .drain import Drainer
from .durable import DurableTracking
from .exceptions import AgentClosedError, ConfigError, OutboxError, StorageReadOnlyError
from .hostlimit import RATE_FILE_SUFFIX, HostRateLimiter
from .outbox.files import FILE_MODE, GROUP_FILE_MODE
from .outcomes import DrainReport
from .policy import DrainPolicy

log = logging.getLogger(__name__)

#: How often `flush` polls while rows are in flight elsewhere or waiting for their retry time.
FLUSH_POLL_SECONDS = 0.05
#: How often `run` reports to its heartbeat callback (the daemon's systemd watchdog ping).
HEARTBEAT_SECONDS = 5.0
#: Added to the longest healthy wait before the drain thread counts as stuck (stall_limit).
STALL_SLACK_SECONDS = 1.0


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


class TrackerAgent:
    """Durable tracking for the Exponea API; see the module docstring.

    The signature keeps the seed SDK's `Exponea(project_token, username, password, url,
    request_timeout)`; every other keyword is a `Settings` field (batch_size, max_rows, ...).
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
        self._setup(Settings(**values), session)

    @classmethod
    def from_settings(cls, settings: Settings, *, session: Any = None) -> TrackerAgent:
        agent = cls.__new__(cls)
        agent._setup(settings, session)
        return agent

    def _setup(self, settings: Settings, session: Any) -> None:
        from .outbox.engine import open_outbox
        from .outbox.files import default_database_url
        from .outbox.store import OutboxStore

        self.settings = settings
        self._session = session
        self.client = self._make_client()
        # The one place the library reads the environment: the default outbox location
        # follows systemd's $STATE_DIRECTORY and XDG's $XDG_STATE_HOME, as documented.
        self.database_url = settings.database_url or default_database_url(os.environ)
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
        )
        try:
            self.store.bind_project(settings.project_token)
        except BaseException:
            self.store.close()
            engine.dispose()
            raise
        self.drainer = self._make_drainer()
        self.tracking = DurableTracking(
            self.client, self.store, on_enqueued=self._on_enqueued, check_open=self._check_open
        )
        self._scheduler: Any = None
        self._closed = False
        self._state = DeliveryState.IDLE
        self._since_wake = 0
        self._on_state_change: Callable[[DeliveryState, str | None], None] | None = None
        _register_fork_handler(self)

    def _make_client(self) -> Any:
        from .client import Exponea

        return Exponea.from_settings(self.settings, session=self._session)

    def _make_drainer(self) -> Drainer:
        policy = DrainPolicy.from_settings(self.settings)
        self._limiter = self._make_limiter()
        return Drainer(
            self.store, self.client.tracking.send_stored_batch, policy, limiter=self._limiter
        )

    def _make_limiter(self) -> HostRateLimiter:
        """The host-wide request budget shared by every drainer on this outbox (or on every
        outbox naming the same rate_limit_file)."""
        from .outbox.files import sqlite_path

        s = self.settings
        path = s.rate_limit_file or sqlite_path(self.database_url) + RATE_FILE_SUFFIX
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

    def stats(self) -> dict[str, Any]:
        """Queue counts and delivery state (same keys as `tracker-agent status --json`)."""
        return self.store.stats()

    def _on_enqueued(self, count: int) -> None:
        self._since_wake += count
        if self._since_wake >= self.settings.batch_size and self._scheduler is not None:
            self._since_wake = 0
            self._scheduler.wake()

    def _check_open(self) -> None:
        if self._closed:
            raise AgentClosedError("this TrackerAgent is closed")

    # -- delivery ------------------------------------------------------------------------------

    def start(self) -> TrackerAgent:
        """Drain in a background thread of this process (idempotent). Returns self."""
        self._check_open()
        if self._scheduler is None:
            from .scheduler import DrainScheduler

            self.drainer.stopping.clear()
            scheduler = DrainScheduler(self._scheduled_drain, self.settings.drain_interval)
            scheduler.start()
            self._scheduler = scheduler
        return self

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
            return
        except Exception:
            log.exception("drain failed unexpectedly; will try again")
            return
        if report.paused_reason:
            self._set_state(DeliveryState.PAUSED, report.paused_reason)
        elif report.backoff_until is not None:
            self._set_state(DeliveryState.BACKING_OFF, report.last_error)
        elif report.requests:
            self._set_state(DeliveryState.DELIVERING, None)
        else:
            self._set_state(DeliveryState.IDLE, None)

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
        pause). With a timeout: keep going, waiting out backoffs, until empty or out of time."""
        self._check_open()
        if self._scheduler is None:
            # stop() leaves the flag set for a pass that outlived its grace; that pass holds
            # the drain lock, so this flush simply waits for it and then delivers.
            self.drainer.stopping.clear()
        deadline = None if timeout is None else time.monotonic() + timeout
        self.store.rescue_lost_wal()
        total = self.store.stats()["pending"]
        done = DrainReport()

        def report_progress(pass_report: DrainReport) -> None:
            if progress is not None:
                moved = done.delivered + done.dead_lettered
                progress(moved + pass_report.delivered + pass_report.dead_lettered, total)

        while True:
            done.add(self.drainer.drain(progress=report_progress))
            stats = self.store.stats()
            remaining = stats["pending"] + stats["in_flight"]
            if remaining == 0 or deadline is None or done.paused_reason:
                break
            if time.monotonic() >= deadline:
                break
            wait_until = stats["next_attempt_at"] or 0.0
            pause = max(FLUSH_POLL_SECONDS, min(wait_until - time.time(), 1.0))
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
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
        self.close(timeout=self.settings.shutdown_grace)

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
        if scheduler is None:
            return True
        self.drainer.stopping.set()
        grace = self.settings.shutdown_grace if timeout is None else timeout
        finished = scheduler.shutdown(grace)
        if not finished:
            log.warning("drain still busy after %.1fs; releasing its leases", grace)
        released = self.store.release_all(self.drainer.owner)
        if released:
            log.info("released %d leased commands for other drainers", released)
        return bool(finished)

    def close(self, timeout: float | None = None) -> None:
        """Stop draining (see `stop`), then close connections. Queued commands stay on disk
        and are delivered by the next agent or daemon on this file. Idempotent."""
        if self._closed:
            return
        self.stop(timeout)
        self.drainer.close(wait=False)  # idle unless a request outlived the grace period
        self._closed = True
        self.store.close()
        self.store.engine.dispose()
        self.client.close()
        self._limiter.close()

    def __enter__(self) -> TrackerAgent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        token, url = self.settings.project_token, self.database_url
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
        self.store.reset_after_fork()
        self.client = self._make_client()  # never share the parent's sockets
        self._limiter.close()
        self.drainer = self._make_drainer()
        self.tracking.after_fork(self.client)


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


_held_for_fork: list[TrackerAgent] = []


def _hold_agents_for_fork() -> None:
    for agent in _open_agents():
        agent.store.hold_for_fork()
        _held_for_fork.append(agent)


def _release_agents_after_fork() -> None:
    while _held_for_fork:
        _held_for_fork.pop().store.release_after_fork()


def _reset_agents_in_child() -> None:
    _held_for_fork.clear()  # the child replaces those locks instead of releasing them
    for agent in _open_agents():
        agent._after_fork_in_child()
