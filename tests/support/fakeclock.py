"""Run ``denen`` on a board without RTC: ``python -m tests.support.fakeclock CONTROL denen-args...``.

The agent process gets a wall clock that is ``offset_s`` seconds off the real one, and a kernel that reports the
clock as synchronised or not, both read from the JSON file CONTROL (``{"offset_s": -1.7e9, "synced": false}``),
which the test rewrites to step the clock at the "NTP sync", as chrony or systemd-timesyncd would. Only the wall
clock moves: the boot-time and monotonic clocks stay real, as on a real board.

libfaketime would do this from outside, but its 0.9.10 (Debian 12) breaks ``time.sleep`` (EINVAL from
clock_nanosleep), so the wall clock is replaced inside the process, before the agent is imported.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

_real_time_ns = time.time_ns
_real_monotonic = time.monotonic


class _Control:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset_ns = 0
        self.synced = False
        self._read_at = -1.0

    def refresh(self) -> None:
        now = _real_monotonic()
        if now - self._read_at < 0.02:  # re-read at most every 20 ms: a step shows within that
            return
        self._read_at = now
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return  # being rewritten: keep the last state
        self.offset_ns = int(float(doc["offset_s"]) * 1e9)
        self.synced = bool(doc["synced"])


def main() -> None:
    control = _Control(Path(sys.argv[1]))
    control.refresh()

    def time_ns() -> int:
        control.refresh()
        return _real_time_ns() + control.offset_ns

    def time_s() -> float:
        return time_ns() / 1e9

    time.time_ns = time_ns  # type: ignore[assignment]
    time.time = time_s  # type: ignore[assignment]

    from agent.gateway import clock  # noqa: PLC0415 - imported after the clock is replaced

    def kernel_synced() -> bool:
        control.refresh()
        return control.synced

    clock.kernel_synced = kernel_synced  # type: ignore[assignment]
    clock._CHECK_EVERY_S = 0.5  # the agent asks the kernel every 10 s; the test should not wait that long
    clock._state.assume_synced = False

    from agent.cli import main as denen  # noqa: PLC0415

    sys.exit(denen(sys.argv[2:]))


if __name__ == "__main__":
    main()
