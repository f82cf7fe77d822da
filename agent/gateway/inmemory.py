"""Readings the core holds in memory before the journal has them: the commit window, and what failed commits left.

Both are bounded: the window by time (``journal.commit_window_ms``, a power cut loses at most its frames) and by
the core's drain size; the readings of failed commits by UNJOURNALED_MAX, dropping the oldest telemetry and
diagnostics first as the quota would, never an SOS or an alarm.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.gateway.reading import EVICTABLE, LANES, Entry, Quarantined
from agent.i18n import _

log = logging.getLogger(__name__)

#: Readings kept in memory while the journal cannot commit (disk full, I/O errors). Above this, telemetry and
#: diagnostics are dropped oldest first, as the quota would; SOS and alarms are always kept.
UNJOURNALED_MAX = 20_000
#: How long the deletion of acknowledged readings (and counters) may wait for a commit when nothing else waits, in
#: seconds (at least the commit window): at a few frames per second it folds into the next frame's commit instead
#: of taking a commit of its own. After a power cut, readings acknowledged up to twice this long before it (a PUBACK
#: may first wait this long for the core, events.CoreTurn) may be sent again (same id and timestamp: an overwrite).
ACK_FOLD_S = 1.0


class CommitWindow:
    """Telemetry and diagnostics (and acknowledgements to delete) gathered over several wake-ups, committed together
    when the window closes, or at once with an SOS or alarm.

    Args:
        window_s: the window, in seconds (0: every wake-up commits).
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.entries: list[Entry] = []
        self.quarantined: list[Quarantined] = []
        self.held = 0  # readings among the waiting ones that will be held for the clock's sync
        self.gathering = False  # frames wait undecoded for this window (gather): it is not quiet
        self.due = 0.0  # monotonic s when what waits must be committed; 0: nothing waits
        self.taken_at = float("-inf")  # monotonic s of the last commit of what waited (or of a frame committed at once)

    @property
    def acks_wait_s(self) -> float:
        """How long acknowledgements alone may wait for a commit, in seconds: ACK_FOLD_S, at least the window."""
        return max(self.window_s, ACK_FOLD_S)

    def closed(self, now: float) -> bool:
        """Whether what waits must be committed now (``now``: monotonic s)."""
        return bool(self.due) and now >= self.due

    def quiet(self, now: float) -> bool:
        """Whether no reading waits and nothing was committed in the last window (``now``: monotonic s): a frame
        then commits at once, with whatever else waits (acknowledgements, node states, counters). Frames further
        apart than the window would each wait out a window alone, for no fewer commits; a burst still shares one
        from its second frame on."""
        return not (self.entries or self.quarantined or self.gathering) and now - self.taken_at >= self.window_s

    def gather(self, now: float, wake_at: float = 0.0) -> float:
        """The end of the window (monotonic s) for telemetry frames that wait for it undecoded, at most a window from
        ``now`` (acknowledgements alone may have set it later, see :meth:`wait`); 0 when they may not wait: the
        window is quiet (a frame commits at once) or over and nobody closes it yet.

        Args:
            wake_at: when the core's thread looks next (monotonic s). A window just over that the core is already
                waking to close (``wake_at <= now``) takes the frames too: that wake-up commits them, instead of a
                turn of their own on the radio's thread, then a core wake-up that finds nothing to do.
        """
        if self.due and now >= self.due:
            return self.due if 0.0 < wake_at <= now else 0.0
        if not self.window_s or self.quiet(now):
            return 0.0
        due = now + self.window_s
        self.due = min(self.due, due) if self.due else due
        self.gathering = True  # decoded before the window's end (a timer, a PUBACK), they still wait for it
        return self.due

    def wait(self, entries: list[Entry], quarantined: list[Quarantined], *, held: int, more_waits: bool,
             now: float) -> None:
        """Keep this wake-up's work for the window's commit.

        Args:
            held: readings waiting (these and those before) that will be held for the clock's sync.
            more_waits: node states or meta rows wait too; if neither they nor readings wait, only
                acknowledgements do, and they may wait up to ACK_FOLD_S.
        """
        self.entries.extend(entries)
        self.quarantined.extend(quarantined)
        self.held = held
        readings_wait = self.entries or self.quarantined or more_waits
        due = now + (self.window_s if readings_wait else self.acks_wait_s)
        self.due = min(self.due, due) if self.due else due

    def take(self, entries: list[Entry], quarantined: list[Quarantined], now: float, *,
             acks_left: bool = False) -> tuple[list[Entry], list[Quarantined]]:
        """What waits, then ``entries`` and ``quarantined``, for a commit now (``now``: monotonic s); the window is
        empty after.

        Args:
            acks_left: acknowledgements stay out of this commit (an SOS's): their deletion keeps the window's end,
                or waits ACK_FOLD_S, so SOS after SOS cannot put it off for ever.
        """
        self.taken_at = now
        self.gathering = False
        if self.entries or self.quarantined:
            entries = self.entries + entries
            quarantined = self.quarantined + quarantined
            self.entries, self.quarantined, self.held = [], [], 0
        self.due = (self.due or now + self.acks_wait_s) if acks_left else 0.0
        return entries, quarantined


def bounded(entries: list[Entry], count: Callable[..., None]) -> list[Entry]:
    """``entries`` within UNJOURNALED_MAX: the oldest telemetry, then diagnostics, dropped and counted as
    ``journal.dropped_unjournaled.<lane>``."""
    excess = len(entries) - UNJOURNALED_MAX
    if excess <= 0:
        return entries
    drop: set[int] = set()
    for lane in EVICTABLE:
        for i, e in enumerate(entries):
            if len(drop) >= excess:
                break
            if e.lane == lane:
                drop.add(i)
    if not drop:
        return entries
    for i in drop:
        count(f"journal.dropped_unjournaled.{LANES[entries[i].lane]}")
    log.error("%s", _("journal cannot commit and {count} readings wait in memory: dropped the {dropped} oldest "
                      "telemetry/diagnostics readings").format(count=len(entries), dropped=len(drop)))
    return [e for i, e in enumerate(entries) if i not in drop]
