"""The warning that nothing delivers an outbox: commands wait, this process runs no drain, and
no other drainer has shown a sign of life for warn_undrained_after seconds."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from .clock import wall_clock
from .outbox import state as state_keys
from .outbox.backend import hide_password

if TYPE_CHECKING:
    from .outbox.store import OutboxStore

__all__ = ["UNDRAINED_CHECK_SECONDS", "UndrainedWatch"]

log = logging.getLogger("tracker_agent.agent")

#: How often (at most) an enqueue looks for a drainer when none runs in this process.
UNDRAINED_CHECK_SECONDS = 5.0


class UndrainedWatch:
    """Logs once if commands wait and nothing delivers them: no drain in this process and no
    sign of another drainer on the outbox for `after` seconds (warn_undrained_after; 0 never
    warns). Looks at most every UNDRAINED_CHECK_SECONDS; never fails the caller."""

    def __init__(self, store: OutboxStore, after: float, database_url: str) -> None:
        self._store = store
        self._after = after
        self._database_url = database_url
        self._warned = False
        # time.monotonic() of the first look: a command queued now cannot be late yet
        self._check_at = time.monotonic() + min(after, UNDRAINED_CHECK_SECONDS)
        self.reset_after_fork()

    def reset_after_fork(self) -> None:
        """A forked child gets a lock of its own (the parent's may be held)."""
        self._lock = threading.Lock()

    def check(self, *, now_or_never: bool = False) -> None:
        """Look now if it is time (`now_or_never`: at once, as close() does)."""
        after = self._after
        clock = time.monotonic()
        if self._warned or after <= 0:
            return
        if clock < self._check_at and not now_or_never:
            return
        if not self._lock.acquire(blocking=False):
            return  # another thread is looking
        try:
            self._check_at = clock + min(after, UNDRAINED_CHECK_SECONDS)
            waiting = self._undrained_commands(after)
            if waiting and not self._warned:
                self._warned = True
                log.warning(
                    "%d commands have waited over %g s and nothing delivers them: this process "
                    "has no background drain (drain=False, stop(), or a forked child) and no "
                    "other drainer has touched %s for as long; run the daemon "
                    "(`tracker-agent run`) on that outbox, or create the agent with drain=True",
                    waiting,
                    after,
                    hide_password(self._database_url),
                )
        except Exception:  # a look at the queue must never fail a tracking call
            log.debug("could not check whether anything drains the outbox", exc_info=True)
        finally:
            self._lock.release()

    def _undrained_commands(self, after: float) -> int:
        """Commands pending for `after` seconds with no sign of a drainer for as long (none in
        flight, no delivery, failure, backoff or probe recorded), else 0."""
        now = wall_clock()
        stats = self._store.stats(now)
        oldest = stats["oldest_pending_age_s"]
        if not stats["pending"] or stats["in_flight"] or oldest is None or oldest < after:
            return 0
        state = self._store.state()
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
