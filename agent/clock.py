"""Is the wall clock trustworthy? Pi-class boards have no RTC and boot in the past until NTP syncs.

A reading stamped while the clock is not synchronised is marked ``"clock": "unsynced"`` in its JSON; a timestamp
before 2020 is never marked synced, whatever the kernel says.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time

#: 2020-01-01T00:00:00Z in microseconds: no honest reading of this product is older.
EPOCH_FLOOR_US = 1_577_836_800_000_000

_TIME_ERROR = 5  # adjtimex() return value: clock not synchronised


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>; only the leading fields are read, the padding covers the rest.
    _fields_ = [("modes", ctypes.c_uint), ("_pad", ctypes.c_byte * 512)]


def _kernel_synced() -> bool | None:
    """True/False from the kernel's NTP state (adjtimex), None where it cannot be asked."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


class ClockState:
    """Caches the kernel's sync state; asking costs a system call, so it is refreshed at most every 10 s."""

    def __init__(self) -> None:
        self._checked = 0.0
        self._synced: bool | None = None
        self.assume_synced = False  # set by tests and by configs that trust the clock (e.g. an RTC HAT)

    def synced(self) -> bool:
        now = time.monotonic()
        if now - self._checked > 10.0:
            self._synced = _kernel_synced()
            self._checked = now
        # Where the kernel cannot tell (containers), trust a plausible wall clock.
        return self.assume_synced or self._synced is not False


_state = ClockState()


def quality(ts_us: int) -> str:
    """``"synced"`` or ``"unsynced"`` for a timestamp taken now, in µs since the epoch."""
    if ts_us < EPOCH_FLOOR_US:
        return "unsynced"
    return "synced" if _state.synced() else "unsynced"
