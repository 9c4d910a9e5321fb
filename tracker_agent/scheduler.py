"""APScheduler wiring: one drain job per process, on an interval, with an immediate wake-up.

A tick that finds the last pass still running is skipped (max_instances=1, coalesced), and
logged at DEBUG rather than APScheduler's WARNING: a long drain is normal.

The job runs in APScheduler's background thread (max_instances=1, coalesced, no misfire
limit), so a library app's threads never wait on the network; the daemon uses the same
scheduler and parks its main thread on a stop event, where signals land. APScheduler is
imported only when a scheduler starts (producer-only processes never load it).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

JOB_ID = "tracker-agent-drain"
#: Where APScheduler's per-run lines for our job go (WARNING unless the app lowers it).
JOB_LOGGER = "tracker_agent.scheduler.jobs"


class DrainScheduler:
    """Runs `job` every `interval` seconds, and at once on `wake()`; never two at a time."""

    def __init__(self, job: Callable[[], Any], interval: float) -> None:
        self._job_fn = job
        self._interval = interval
        self._scheduler: Any = None
        self._job: Any = None
        self._idle = threading.Event()
        self._idle.set()
        self._active = 0  # passes running (the worker runs one at a time; APScheduler counts)
        self._count_lock = threading.Lock()
        self._wake_pending = False

    @property
    def running(self) -> bool:
        return self._scheduler is not None

    def start(self) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        class QuietExecutor(ThreadPoolExecutor):  # type: ignore[misc]
            """APScheduler logs "Running job" and "executed successfully" at INFO for every
            tick, on the executor's logger: an app with basicConfig(level=INFO) got two lines a
            second. Ours go to JOB_LOGGER, at WARNING unless the app set its level."""

            def start(self, scheduler: Any, alias: str) -> None:
                super().start(scheduler, alias)
                jobs = logging.getLogger(JOB_LOGGER)
                if jobs.level == logging.NOTSET:
                    jobs.setLevel(logging.WARNING)
                self._logger = jobs

        scheduler = BackgroundScheduler(
            executors={"default": QuietExecutor(max_workers=1)},
            # Two instances: one running and at most one queued behind it in the single worker
            # thread (so passes never overlap). With one, a wake-up that came while APScheduler
            # still counted the pass that just ended was dropped until the next interval.
            job_defaults={"coalesce": True, "max_instances": 2, "misfire_grace_time": None},
            timezone=dt.timezone.utc,
            daemon=True,
            logger=_SchedulerLog(logging.getLogger("apscheduler.scheduler"), {}),
        )
        self._job = scheduler.add_job(
            self._run,
            "interval",
            seconds=self._interval,
            id=JOB_ID,
            name="tracker-agent drain",
            next_run_time=_utcnow(),
        )
        scheduler.start()
        self._scheduler = scheduler

    @property
    def idle(self) -> bool:
        """No pass is running."""
        return self._idle.is_set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no pass is running; True if that happened within `timeout`."""
        return self._idle.wait(timeout)

    def wake(self) -> None:
        """Run the job now, or right after the pass that is running (new rows may have come
        after its last claim). Wake-ups while one is pending are folded into it."""
        if self._scheduler is None or self._wake_pending:
            return
        self._wake_pending = True
        try:
            self._job.modify(next_run_time=_utcnow())
        except Exception:  # the scheduler may be shutting down under us
            log.debug("wake-up ignored", exc_info=True)

    def _run(self) -> None:
        with self._count_lock:
            self._active += 1
            self._idle.clear()
        self._wake_pending = False
        try:
            self._job_fn()
        finally:
            with self._count_lock:
                self._active -= 1
                if self._active == 0:
                    self._idle.set()

    def shutdown(self, timeout: float | None) -> bool:
        """Stop scheduling; wait up to `timeout` s for a running pass. True if it finished."""
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is None:
            return True
        scheduler.shutdown(wait=False)
        return self._idle.wait(timeout)

    def forget_after_fork(self) -> None:
        """In a forked child the scheduler's thread does not exist; drop it without stopping."""
        self._scheduler = None
        self._idle = threading.Event()
        self._idle.set()
        self._active = 0
        self._count_lock = threading.Lock()
        self._wake_pending = False


class _SchedulerLog(logging.LoggerAdapter):  # type: ignore[type-arg]  # generic only in 3.11+ stubs
    """APScheduler's own logger, one level quieter where it narrates our job: its INFO lines
    (job added, scheduler started, each run) are DEBUG, and a tick that finds the previous pass
    still running is how a long drain looks (a bounded number of instances on purpose), not a
    warning."""

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        if "maximum number of running instances" in str(msg):
            self.debug(msg, *args, **kwargs)
        else:
            super().warning(msg, *args, **kwargs)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
