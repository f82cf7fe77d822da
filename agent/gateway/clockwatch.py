"""The core's watch on the wall clock: steps, the NTP sync, and the readings held back until it.

Telemetry and diagnostics stamped before the clock synchronised wait (held) until the sync, then get their true
time (a correction rewriting journaled rows, a slice per wake-up), or go out flagged ``unsynced`` after
CLOCK_HOLD_S. SOS and alarms never wait. The core owns one :class:`ClockWatch` and calls it from its thread only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from agent.errors import JournalError
from agent.gateway import clock
from agent.gateway.journal import Journal
from agent.gateway.reading import TELEMETRY, Entry
from agent.i18n import _, local_time

log = logging.getLogger(__name__)

#: How long telemetry and diagnostics stamped on an unsynchronised clock wait for the clock to sync before they go
#: out flagged ``unsynced`` anyway, in seconds from the agent's start. (SOS and alarms never wait.)
CLOCK_HOLD_S = 900.0
_CLOCK_STEP_US = 1_000_000  # a change of wall - boottime above this is a step, not drift
CLOCK_CHECK_S = 10.0  # while the clock is unsynchronised, the core looks at least this often, in seconds
_CORRECT_PER_STEP = 2000  # readings corrected per wake-up, so an SOS never waits behind a long correction
_UNSYNCED_MARK = '"clock":"unsynced"'


class ClockWatch:
    """Clock steps, the sync, and the hold of readings stamped before it.

    Args:
        journal: the journal at start (its readings of an earlier boot that can no longer be corrected are
            counted and go out flagged).
        count: adds to one of the core's counters.
        on_step: called with the size of a clock step, in µs.
    """

    def __init__(self, journal: Journal, *, count: Callable[..., None], on_step: Callable[[int], Any]) -> None:
        self._count = count
        self._on_step = on_step
        self.synced = clock.synced()
        self.offset_us = clock.offset_us()
        self._boot_us = clock.boot_us()
        self.hold_until = time.monotonic() + CLOCK_HOLD_S  # monotonic s
        self.hold_until_us = clock.wall_us() + int(CLOCK_HOLD_S * 1e6)  # the same, for people
        self.fresh_held = 0  # readings of this wake-up (and the commit window) that will be held, not yet journaled
        self._held_count = 0
        self._held_was = False  # whether readings were held at the last wake-up (for the log lines)
        given_up = journal.adopt_boot(clock.boot_id())
        if given_up:
            count("clock.uncorrectable", given_up)
            log.warning("%s", _("{count} readings were stamped before the clock synced in an earlier boot; they "
                                "cannot be corrected and go out flagged unsynced").format(count=given_up))
        self.to_correct = journal.unsynced_count() > 0

    @property
    def correction_due(self) -> bool:
        """Synchronised, with readings stamped before the sync still to correct."""
        return self.to_correct and self.synced

    def watch(self, entries: list[Entry]) -> None:
        """Notice clock steps and the sync; give entries stamped on an unsynchronised clock their boot-time stamp."""
        synced = clock.synced()
        boot = clock.boot_us()
        offset = clock.wall_us() - boot
        old_offset, prev_boot = self.offset_us, self._boot_us
        stepped = abs(offset - old_offset) > _CLOCK_STEP_US
        if stepped:
            self._count("clock.steps")
            stepped_to = (_("the wall clock was stepped by {step} s (synchronised now)") if synced and not self.synced
                          else _("the wall clock was stepped by {step} s"))
            log.warning("%s", stepped_to.format(step=f"{(offset - old_offset) / 1e6:+.3f}"))
            self._on_step(offset - old_offset)
            self.hold_until_us += offset - old_offset
        if not synced or not self.synced or stepped:
            for e in entries:
                if e.boot_us is None and _UNSYNCED_MARK in e.body:
                    # Stamped at ts_us on the wall clock of the time: if the clock was stepped since the last
                    # wake-up, the entry was made under the old offset or the new one, and only one of the two
                    # puts it between the last wake-up and now on the boot-time clock.
                    made = e.ts_us - offset
                    if stepped and not prev_boot - _CLOCK_STEP_US <= made <= boot:
                        made = e.ts_us - old_offset
                    e.boot_us = made
                    self.to_correct = True
        if synced and not self.synced:
            log.info("%s", _("clock synchronised; readings stamped before are corrected and then published"))
        self.synced, self.offset_us, self._boot_us = synced, offset, boot

    def correct(self, journal: Journal) -> None:
        """Rewrite a slice of the readings stamped before the sync with their true time."""
        try:
            n = journal.correct_clock(self.offset_us, limit=_CORRECT_PER_STEP)
        except JournalError as exc:
            self._count("clock.correction_failed")
            log.error("%s", _("{error}; trying again at the next wake-up").format(error=exc))
            return
        if n:
            self._count("clock.corrected", n)
            log.info("%s", _("clock: {count} readings stamped before the sync got their true time").format(count=n))
        if n < _CORRECT_PER_STEP:
            self.to_correct = False

    def holding(self) -> bool:
        """Whether telemetry and diagnostics stamped on an unsynchronised clock wait (for the sync or a correction)."""
        return self.to_correct and (self.synced or time.monotonic() < self.hold_until)

    def held(self, journal: Journal) -> dict[str, Any]:
        """The ``held`` object of the state document: readings held back because the clock is unsynchronised."""
        if not self.holding():
            return {"active": False, "reason": None, "count": 0, "until_us": None}
        try:
            self._held_count = journal.unsynced_count(TELEMETRY) + self.fresh_held
        except JournalError as exc:
            # The last count stands meanwhile.
            log.error("%s", _("counting the held readings failed: {error}").format(error=exc))
        # Synchronised, they wait only for their correction, which takes a few wake-ups.
        until = None if self.synced else self.hold_until_us
        return {"active": True, "reason": "clock_unsynced", "count": self._held_count, "until_us": until}

    def log_hold(self, journal: Journal) -> None:
        """Log when readings start and stop being held (the state document shows it too)."""
        holding = self.holding()
        if holding == self._held_was:
            return
        self._held_was = holding
        if holding:
            held = self.held(journal)
            log.info("%s", _("readings held: {count} stamped before the clock synchronised wait for the sync, until "
                             "{until} at the latest; SOS and alarms go out at once").format(
                count=held["count"], until=local_time(self.hold_until_us)))
        elif self.synced:
            log.info("%s", _("readings no longer held: the clock synchronised and their timestamps are corrected"))
        else:
            log.info("%s", _("readings no longer held: the clock did not synchronise within {seconds} s; they go out "
                             "flagged unsynced").format(seconds=f"{CLOCK_HOLD_S:.0f}"))

    def deadlines(self, now: float) -> list[float]:
        """When the core must look again for the clock's sake (monotonic s)."""
        if self.synced:
            return []
        out = [now + CLOCK_CHECK_S]  # to notice the sync soon after it happens
        if self.to_correct and now < self.hold_until:
            out.append(self.hold_until)
        return out

