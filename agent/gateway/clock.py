"""Is the wall clock trustworthy, and how to correct readings stamped before it was?

Pi-class boards have no RTC: they boot in 1970, or at the time of the last shutdown (fake-hwclock), until NTP syncs.
A reading stamped while the clock is not synchronised is marked ``"clock": "unsynced"`` in its JSON, and the
gateway remembers when it was made on the boot-time clock (``CLOCK_BOOTTIME``, which counts from boot and is never
stepped). Once the clock syncs, ``wall - boottime`` is the true offset, so such a reading's true time is its
boot-time stamp plus that offset; the gateway rewrites the readings still in its journal with it and marks them
``"corrected"``. A timestamp before 2020 is never marked synced, whatever the kernel says.

Where no time service can ever sync the clock (a container, CI, a board whose clock is set from a GPS or a
battery-backed RTC), set ``DENEN_CLOCK=trusted`` in the agent's environment to trust the wall clock as it is.
"""

from __future__ import annotations

import ctypes
import functools
import os
import time

#: 2020-01-01T00:00:00Z in microseconds: no honest reading of this product is older.
EPOCH_FLOOR_US = 1_577_836_800_000_000

#: Environment variable: ``trusted`` trusts the wall clock without asking the kernel (see the module docstring).
CLOCK_ENV = "DENEN_CLOCK"

_TIME_ERROR = 5  # adjtimex() return value: clock not synchronised
_CHECK_EVERY_S = 10.0


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h>; only the leading fields are read, the padding covers the rest.
    _fields_ = [("modes", ctypes.c_uint), ("_pad", ctypes.c_byte * 512)]


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library the process already has mapped (dlopen of the program itself): no file search, and no
    ``ldconfig -p`` child, which ``ctypes.util.find_library`` forks from the agent at every call."""
    return ctypes.CDLL(None, use_errno=True)


def kernel_synced() -> bool | None:
    """True/False from the kernel's NTP state (adjtimex), None where it cannot be asked."""
    try:
        libc = _libc()
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


def wall_us() -> int:
    """Wall-clock time, µs since the Unix epoch."""
    return time.time_ns() // 1000


def boot_us() -> int:
    """Time since boot on a clock that NTP never steps (``CLOCK_BOOTTIME``), µs."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME) // 1000


def offset_us() -> int:
    """``wall - boottime`` now, µs: constant while the wall clock is not stepped or slewed."""
    return wall_us() - boot_us()


def boot_id() -> str:
    """The kernel's id of this boot (boot-time stamps of another boot mean nothing now); "" if unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


class ClockState:
    """Caches the kernel's sync state; asking costs a system call, so it is refreshed at most every 10 s."""

    def __init__(self) -> None:
        self._checked = -_CHECK_EVERY_S
        self._synced: bool | None = None
        self._trusted = False  # the answer of the last synced()
        # Wall time from which stamps are trusted: the moment the sync was noticed (0: trusted from the start).
        self._since_us = 0
        self._asked = False  # whether synced() was ever answered (a sync needs a "no" before it)
        self._wall = 0  # the wall clock when synced() last looked, µs
        # Set by tests, and by DENEN_CLOCK=trusted (an RTC or GPS sets the clock; or no time service exists).
        self.assume_synced = os.environ.get(CLOCK_ENV, "").strip().lower() == "trusted"

    def synced(self) -> bool:
        """Whether the wall clock can be trusted now (the kernel's answer, at most 10 s old)."""
        now = time.monotonic()
        if now - self._checked > _CHECK_EVERY_S:
            self._synced = kernel_synced()
            self._checked = now
        wall = wall_us()
        # Where the kernel cannot tell (some containers), trust a plausible wall clock.
        trusted = wall >= EPOCH_FLOOR_US and (self.assume_synced or self._synced is not False)
        if trusted and not self._trusted and self._asked:
            # The sync itself: stamps taken before this moment were taken on the old, wrong clock.
            self._since_us = wall
        self._trusted = trusted
        self._asked = True
        self._wall = wall
        return trusted

    def trusts(self, ts_us: int) -> bool:
        """Whether a stamp ``ts_us`` (µs since the epoch, taken a moment ago) was taken on a synchronised clock.

        A stamp from before the sync was noticed, or from the future (a clock stepped back since), is not.
        """
        if not self.synced() or ts_us < EPOCH_FLOOR_US:
            return False
        return self._since_us <= ts_us <= self._wall + 1_000_000  # _wall: read by synced() just now


_state = ClockState()


def trust_wall_clock() -> None:
    """Trust the wall clock from now on, as ``DENEN_CLOCK=trusted`` does (the demo on simulated hardware)."""
    _state.assume_synced = True


def synced() -> bool:
    """Whether the wall clock can be trusted now."""
    return _state.synced()


def quality(ts_us: int) -> str:
    """``"synced"`` or ``"unsynced"`` for a stamp ``ts_us`` taken a moment ago, in µs since the epoch."""
    return "synced" if _state.trusts(ts_us) else "unsynced"
