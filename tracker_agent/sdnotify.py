"""sd_notify(3) for the daemon: READY, STOPPING, WATCHDOG and STATUS over $NOTIFY_SOCKET.

Stdlib only. A no-op when the process was not started by systemd with Type=notify.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier", "watchdog_interval"]

log = logging.getLogger(__name__)

ENV_NOTIFY_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"
MICROSECONDS_PER_SECOND = 1_000_000
# Ping twice per watchdog period, as sd_watchdog_enabled(3) recommends.
WATCHDOG_PINGS_PER_PERIOD = 2


def watchdog_interval(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings, or None when systemd does not watch this process."""
    usec = env.get(ENV_WATCHDOG_USEC, "")
    owner = env.get(ENV_WATCHDOG_PID, "")
    if owner and owner.strip() != str(os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / MICROSECONDS_PER_SECOND / WATCHDOG_PINGS_PER_PERIOD


def _address(raw: str) -> str | bytes | None:
    if raw.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of the "@".
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None


class Notifier:
    """Sends sd_notify messages; every method is a no-op when $NOTIFY_SOCKET is unset.

    Sending never raises: a daemon must not die because systemd's socket went away.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        raw = env.get(ENV_NOTIFY_SOCKET, "")
        self._address = _address(raw) if raw else None
        if raw and self._address is None:
            log.warning("ignoring %s=%r: not a path or @abstract name", ENV_NOTIFY_SOCKET, raw)
        self.watchdog_interval = watchdog_interval(env) if self._address else None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send "KEY=value" lines in one datagram. True when it was sent."""
        if self._address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *self._status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *self._status(status))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(*self._status(text))

    @staticmethod
    def _status(text: str | None) -> list[str]:
        if text is None:
            return []
        return ["STATUS=" + " ".join(text.splitlines())]
