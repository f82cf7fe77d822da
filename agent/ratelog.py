"""Rate-limited warnings: the first of a kind with full context, then one summary line per interval.

A hostile node or gateway can produce thousands of bad frames or messages a minute. Each is counted and kept
(quarantine, dead-letter store), but a log line each would fill an SD card and bury everything else, so::

    frame quarantined from node 00a1b2c3 via rak0: bad_mic: ... (rssi -97)       <- the first, with its context
    ... 2,999 more bad_mic frames from node 00a1b2c3 in the last 60 s            <- at most one line per key and interval

Keys are bounded (``max_keys``); when a flood brings more distinct keys than that, the rest are summed under one
overflow line, so memory stays bounded whatever the input.

The lines are for the operator, in the language in use (:mod:`agent.i18n`): callers pass their line formatted
from a catalog message (``"%s", _("...").format(...)``), ``what`` marked with ``N_`` and a ``subject`` that is a
:class:`drivers.settings.Text` or a name; the summary lines are looked up here. ``reason`` is a machine token
(a counter's suffix) and stays as it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from agent.i18n import _, translate

__all__ = ["RateLimitedLog"]

_OVERFLOW = ("*", "*")


class RateLimitedLog:
    """One logger's warnings, limited per key.

    Args:
        logger: where the lines go.
        interval_s: length of a window, in seconds: per key, the first event of a window is logged in full, the
            others are counted and summarised when the window has passed.
        max_keys: distinct keys tracked per window; more are counted under one overflow summary.
        clock: monotonic seconds (tests pass their own).

    Not thread-safe: one owner thread (the gateway's core, the bridge's writer).
    """

    def __init__(self, logger: logging.Logger, *, interval_s: float = 60.0, max_keys: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self.interval_s = interval_s
        self.max_keys = max_keys
        self._clock = clock
        self._window_start = clock()
        # key -> (what, count of events not logged) for this window
        self._held: dict[tuple[str, str], list] = {}
        self.suppressed = 0  # lines not written in full, since start

    def warning(self, reason: str, subject: str, what: str, msg: str, *args: object,
                level: int = logging.WARNING) -> bool:
        """Log ``msg % args`` if it is the first ``(reason, subject)`` of this window; otherwise count it.

        Args:
            reason: the kind of problem (``bad_mic``, ``invalid_json``); part of the key.
            subject: who caused it (``node 00a1b2c3``, ``gateway gw-x``); part of the key.
            what: the plural noun for the summary line (``frames``, ``messages``), marked with ``N_``.

        Returns:
            True when the line was written in full.
        """
        self.tick()
        key = (reason, subject)
        held = self._held.get(key)
        if held is None:
            if len(self._held) >= self.max_keys:
                key = _OVERFLOW
                held = self._held.get(key)
                if held is None:
                    held = self._held[key] = [what, 0]
                held[1] += 1
                self.suppressed += 1
                return False
            self._held[key] = [what, 0]
            self._log.log(level, msg, *args)
            return True
        held[1] += 1
        self.suppressed += 1
        return False

    def tick(self) -> None:
        """Write the summaries of a window that has passed (also called by :meth:`warning`)."""
        now = self._clock()
        if now - self._window_start >= self.interval_s:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Write the summary lines of the current window now and start a new one."""
        now = self._clock() if now is None else now
        span = now - self._window_start
        for (reason, subject), (what, count) in self._held.items():
            if not count:
                continue
            if (reason, subject) == _OVERFLOW:
                line = _("... {count} more {what} of other kinds and senders in the last {seconds} s (too many "
                         "distinct senders to name each)").format(count=f"{count:,}", what=_word(what),
                                                                  seconds=f"{span:.0f}")
            else:
                line = _("... {count} more {reason} {what} from {subject} in the last {seconds} s").format(
                    count=f"{count:,}", reason=reason, what=_word(what), subject=_word(subject),
                    seconds=f"{span:.0f}")
            self._log.warning("%s", line)
        self._held.clear()
        self._window_start = now


def _word(text: str) -> str:
    """A noun or subject for a summary line in the language in use; an empty text stays empty (the catalog's
    entry for "" is its header)."""
    return translate(text) if text else text
