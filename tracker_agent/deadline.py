"""Total deadlines for HTTP requests: a watchdog thread that cuts off a request outliving its
deadline, so that a server trickling bytes cannot hold it (and its rows' lease) open.

requests' read timeout bounds each socket read, not the request: one byte a second keeps a
request alive forever. The transport arms a `Watch` around each request; the connection that
carries it attaches itself to the watch of the current thread (tracker_agent.http_adapter),
or the transport attaches the response once its headers are in. When the deadline passes the
watchdog shuts the socket down in both directions: the blocked read returns at once, the
server sees the connection close, and the transport raises APITimeoutError.

One Watchdog (one daemon thread) per transport, started on the first request and ended by
`stop()` or after IDLE_EXIT_SECONDS without requests. Cost per request: two short lock holds
and, almost always, no wake-up of the thread: it sleeps until the earliest deadline, and a
later request of the same length never has an earlier one.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["IDLE_EXIT_SECONDS", "Watch", "Watchdog", "current_watch", "shutdown_socket"]

#: The watchdog thread ends after this long without a watched request; the next one starts it
#: again (so a client that is never closed leaves no thread behind for long).
IDLE_EXIT_SECONDS = 60.0
#: How long stop() waits for the thread to end (it only ever waits on its condition).
STOP_JOIN_SECONDS = 1.0

_local = threading.local()


def current_watch() -> Watch | None:
    """The watch of the request this thread is sending, if any."""
    watch: Watch | None = getattr(_local, "watch", None)
    return watch


def shutdown_socket(sock: Any) -> None:
    """Shut `sock` down both ways (best effort). The plain socket method, also on an SSL
    socket: SSLSocket.shutdown would tear down TLS state under the reading thread's feet."""
    if sock is None:
        return
    with contextlib.suppress(OSError, TypeError, ValueError):  # closed, or not a real socket
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Watch:
    """One request's deadline (on the watchdog's clock) and how to cut it off."""

    __slots__ = ("deadline", "expired", "_closer")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self._closer: Callable[[], None] | None = None

    @property
    def attached(self) -> bool:
        return self._closer is not None

    def attach(self, closer: Callable[[], None]) -> None:
        """`closer` cuts the request off (shuts its socket); called now if already expired.

        No lock: attach writes the closer then reads `expired`, fire writes `expired` then
        reads the closer, so one of them always sees the other (a second shutdown is a no-op).
        """
        self._closer = closer
        if self.expired:
            closer()

    def fire(self) -> None:
        self.expired = True
        closer = self._closer
        if closer is not None:
            closer()


class Watchdog:
    """Fires each armed Watch whose deadline passes before it is disarmed."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, name: str = "tracker-agent-deadline"
    ) -> None:
        self._clock = clock
        self._name = name
        self._reset()
        _WATCHDOGS.add(self)

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active: set[Watch] = set()
        self._next_wake = math.inf
        self._thread: threading.Thread | None = None
        self._stopping = False

    def arm(self, seconds: float) -> Watch:
        """A watch that fires `seconds` from now unless disarmed; the current thread's watch
        until disarm()."""
        watch = Watch(self._clock() + seconds)
        with self._cond:
            self._active.add(watch)
            if self._thread is None:
                self._start()
            elif watch.deadline < self._next_wake:
                self._cond.notify()
        _local.watch = watch
        return watch

    def disarm(self, watch: Watch) -> None:
        """The request is over: the watch never fires after this returns."""
        _local.watch = None
        with self._cond:
            self._active.discard(watch)

    def stop(self) -> None:
        """End the thread (idempotent); a later arm() starts a new one."""
        with self._cond:
            thread, self._thread = self._thread, None
            self._stopping = True
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(STOP_JOIN_SECONDS)

    def _start(self) -> None:
        self._stopping = False
        thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread = thread
        thread.start()

    def _run(self) -> None:
        me = threading.current_thread()
        idle_since = self._clock()
        with self._cond:
            while not self._stopping and self._thread is me:
                now = self._clock()
                for watch in [w for w in self._active if w.deadline <= now]:
                    self._active.discard(watch)
                    watch.fire()
                if self._active:
                    idle_since = now
                elif now - idle_since >= IDLE_EXIT_SECONDS:
                    self._thread = None  # the next arm() starts a new thread
                    return
                earliest = min((w.deadline for w in self._active), default=math.inf)
                self._next_wake = min(earliest, idle_since + IDLE_EXIT_SECONDS)
                self._cond.wait(max(0.0, self._next_wake - now))


_WATCHDOGS: weakref.WeakSet[Watchdog] = weakref.WeakSet()


def _reset_after_fork() -> None:
    # The child has no watchdog thread, and its lock may have been held by it at the fork.
    for watchdog in list(_WATCHDOGS):
        watchdog._reset()
    _local.__dict__.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)
