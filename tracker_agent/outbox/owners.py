"""Who holds a lease. An owner id names the drainer's machine (host name, kernel boot and PID
namespace, hashed), its process id and that process's start time, plus a random part. A
drainer on the same machine can then tell a dead owner from a live one and take its rows back
at once: a daemon killed with SIGKILL no longer stalls its customers for lease_seconds. Owners
on other machines, and live ones, keep their leases until they expire.

Where /proc is missing (not Linux), ids carry no machine part and nothing is reclaimed early.
Stdlib only.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

__all__ = ["Machine", "OwnerId", "dead_owners", "host_key", "make_owner_id", "release_owners"]

_PREFIX = "o1"
_SEPARATOR = ":"
_MACHINE_HASH_CHARS = 16
_STAT_START_FIELD = 21  # starttime, 0-based among the fields after "(comm)"'s closing paren


@dataclass(frozen=True)
class Machine:
    """This process's machine, as far as leases are concerned."""

    key: str  # hash of host name, boot id and PID namespace; "" when unknown

    @classmethod
    def here(cls) -> Machine:
        boot = _read("/proc/sys/kernel/random/boot_id").strip()
        try:
            pid_ns = os.readlink("/proc/self/ns/pid")
        except OSError:
            pid_ns = ""
        if not boot or not pid_ns:
            return cls("")
        seed = _SEPARATOR.join((socket.gethostname(), boot, pid_ns)).encode()
        return cls(hashlib.sha256(seed).hexdigest()[:_MACHINE_HASH_CHARS])


@dataclass(frozen=True)
class OwnerId:
    machine: str
    pid: int
    started: int  # the process's start time in clock ticks since boot (/proc/PID/stat)

    def is_dead_on(self, here: Machine) -> bool:
        """True only when this owner ran on `here` and its process is gone (its pid is free or
        now belongs to a process that started at another time)."""
        if not here.key or self.machine != here.key:
            return False
        return process_start(self.pid) != self.started


def process_start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot; None if there is none."""
    text = _read(f"/proc/{pid}/stat")
    if not text or ")" not in text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    try:
        return int(fields[_STAT_START_FIELD - 2])
    except (IndexError, ValueError):
        return None


def host_key() -> str:
    """A name for this machine, stable across its processes (the Machine key, or the host
    name where /proc is missing)."""
    return Machine.here().key or socket.gethostname()


def make_owner_id(here: Machine | None = None) -> str:
    """A fresh owner id for a drainer of this process (unique even within it)."""
    machine = here if here is not None else Machine.here()
    pid = os.getpid()
    started = process_start(pid) if machine.key else None
    suffix = uuid.uuid4().hex[:12]
    if started is None:
        return _SEPARATOR.join((_PREFIX, "", "0", "0", suffix))
    return _SEPARATOR.join((_PREFIX, machine.key, str(pid), str(started), suffix))


def parse_owner_id(owner: str) -> OwnerId | None:
    """The parts of an id made by make_owner_id; None for any other string (older ids)."""
    parts = owner.split(_SEPARATOR)
    if len(parts) != 5 or parts[0] != _PREFIX or not parts[1]:
        return None
    try:
        return OwnerId(parts[1], int(parts[2]), int(parts[3]))
    except ValueError:
        return None


_LIVE_OWNERS = (
    "SELECT DISTINCT lease_owner FROM outbox"
    " WHERE lease_expires_at > 0 AND lease_expires_at > ? AND lease_owner IS NOT NULL"
)


def dead_owners(cur: Any, now: float, here: Machine) -> list[str]:
    """Owners holding unexpired leases that are dead processes of this machine (reads only
    the few leased rows, through the partial index of leased rows)."""
    if not here.key:
        return []
    owners = [row[0] for row in cur.execute(_LIVE_OWNERS, (now,)).fetchall()]
    dead = []
    for owner in owners:
        parsed = parse_owner_id(owner)
        if parsed is not None and parsed.is_dead_on(here):
            dead.append(owner)
    return dead


def release_owners(cur: Any, owners: list[str]) -> int:
    """Drop every lease of `owners` (their rows are due again at once); returns rows freed."""
    freed = 0
    for owner in owners:
        cur.execute(
            "UPDATE outbox SET lease_owner = NULL, lease_expires_at = 0 WHERE lease_owner = ?",
            (owner,),
        )
        freed += int(cur.rowcount)
    return freed


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""
