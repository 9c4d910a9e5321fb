"""Which boot this is, and a clock that only runs forward within it: what each command records
at enqueue beside its wall-clock timestamp, so that a wrong wall clock can be corrected later
(README: "Devices that live offline"). Stdlib only.

On Linux the boot id is the kernel's (/proc/sys/kernel/random/boot_id) and the clock is
CLOCK_BOOTTIME (it counts suspended time: a tablet asleep in a drawer keeps its place). Where
the system has no boot id, each process is its own "boot" with time.monotonic().
"""

from __future__ import annotations

import time
import uuid

__all__ = ["boot_id", "boot_seconds"]

_BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
_boot_id: str | None = None


def boot_id() -> str:
    """This boot's id (read once per process)."""
    global _boot_id
    if _boot_id is None:
        try:
            with open(_BOOT_ID_FILE, encoding="ascii") as f:
                _boot_id = f.read().strip() or None
        except OSError:
            _boot_id = None
        if _boot_id is None:
            _boot_id = "process-" + uuid.uuid4().hex
    return _boot_id


def boot_seconds() -> float:
    """Seconds on a clock that never jumps within this boot (whatever the wall clock does)."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()
