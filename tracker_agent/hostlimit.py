"""One request rate for every drainer on a host: the API limits tracking per source IP, so the
daemon, the apps that drain in their workers and a second outbox on the same machine must
share one budget, not each spend their own.

HostRateLimiter keeps the next free send slot, a CLOCK_MONOTONIC time (one clock for all
processes of a host, blind to wall-clock jumps), in a small file locked with flock(2): each
acquisition takes the lock, reserves the slot, releases the lock and sleeps until the slot.
By default (default_rate_file) the file sits beside the outbox (`outbox.db-rate`), so every
process on that outbox shares it; processes on different outbox files share a budget when they
name the same `rate_limit_file`. A PostgreSQL outbox's file is in the host's state directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import threading
import time
from collections.abc import Callable, Mapping

__all__ = ["HostRateLimiter", "RATE_FILE_SUFFIX", "default_rate_file"]

RATE_FILE_SUFFIX = "-rate"
_SLOT = struct.Struct("<d")
#: A slot further ahead than this is stale (the host rebooted and its monotonic clock
#: restarted) or bogus: start from now instead of waiting for it.
MAX_AHEAD_SECONDS = 10.0


class HostRateLimiter:
    """At most `rate` acquisitions per second across every process using `path`."""

    def __init__(
        self,
        path: str,
        rate: float,
        *,
        file_mode: int = 0o600,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path = path
        self._interval = 1.0 / rate
        self._file_mode = file_mode
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()  # flock does not exclude threads sharing one descriptor
        self._fd: int | None = None
        self._pid = 0

    def open(self) -> HostRateLimiter:
        """Open (create) the file now, so that a path we cannot write fails at start-up, not
        in the sending thread. OSError propagates. Returns self."""
        with self._lock:
            self._descriptor()
        return self

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            # A forked child shares the parent's open file description, and with it the flock:
            # it opens its own.
            self._fd = self._open_file()
            self._pid = os.getpid()
        return self._fd

    def _open_file(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        os.fchmod(fd, self._file_mode)  # the umask must not take the group bits asked for
        return fd

    def acquire(self) -> float:
        """Wait for this process's turn; returns the seconds waited."""
        with self._lock:
            fd = self._descriptor()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                now = self._clock()
                raw = os.pread(fd, _SLOT.size, 0)
                booked = _SLOT.unpack(raw)[0] if len(raw) == _SLOT.size else 0.0
                if not now - MAX_AHEAD_SECONDS <= booked <= now + MAX_AHEAD_SECONDS:
                    booked = now  # stale (a reboot), garbled, or NaN: start afresh
                slot = max(now, booked)
                os.pwrite(fd, _SLOT.pack(slot + self._interval), 0)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        wait = slot - now
        if wait > 0:
            self._sleep(wait)
        return max(wait, 0.0)

    def close(self) -> None:
        """Close the file (in a forked child too: the parent's lock lives on in its own copy)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


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
