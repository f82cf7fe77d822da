"""The core's counters and when the journal gets them.

Counters are statistics (frames by outcome, reopens, evictions ...) shown by ``denen status`` and restored at start;
nothing that keeps readings or identities correct is a counter (replay windows live in the node table, the gateway's
own sequence and the state snapshots in meta). So they ride with a commit at most every COUNTERS_EVERY_S instead of
with each one: at 20 telemetry frames/s the counter table's page was one of the 8 pages every commit wrote
(tests/bench/bench_field.py). An SOS's or alarm's commit, a commit without new readings (the deletions once the
broker has acknowledged a burst: a drained journal shows current counters) and the agent's last commit take them
whenever they changed; while some wait the core wakes for them (:meth:`CounterWrites.deadline`), so an idle agent
writes them once and then nothing. A power cut loses at most the last COUNTERS_EVERY_S seconds of counts.
"""

from __future__ import annotations

import time
from collections import Counter

#: Changed counters are written at most this often, in seconds (and at least this often while some changed).
COUNTERS_EVERY_S = 10.0


class CounterWrites:
    """The core's counters (``values``, shared with :class:`agent.gateway.health.GatewayStats`) and which of them
    the journal does not have yet.

    Args:
        values: the counters as the journal had them at open; counted on in place.
    """

    def __init__(self, values: Counter[str]) -> None:
        self.values = values
        self.dirty: set[str] = set()
        # Monotonic s from which changed counters join a commit: the first commit after the start takes them.
        self.due_at = time.monotonic()
        self._taken: dict[str, int] = {}

    def count(self, name: str, n: int = 1, *, at_once: bool = False) -> None:
        """Add ``n`` to counter ``name``; ``at_once``: the changed counters join the next commit, or a commit of
        their own within the commit window (readings evicted for the quota: ``denen status`` shows the loss with the
        rows it left, not up to COUNTERS_EVERY_S later)."""
        self.values[name] += n
        self.dirty.add(name)
        if at_once:
            self.due_at = min(self.due_at, time.monotonic())

    def due(self, now: float) -> bool:
        """Whether changed counters must join a commit at ``now`` (monotonic s)."""
        return bool(self.dirty) and now >= self.due_at

    def deadline(self, *, planned: float = 0.0) -> float:
        """Monotonic s by which the core must commit for the counters; 0 when none changed or when a commit is
        ``planned`` anyway (the open commit window's end, the next retry of a failed commit: it takes them)."""
        return self.due_at if self.dirty and not planned else 0.0

    def take(self, now: float, *, force: bool = False) -> dict[str, int] | None:
        """The changed counters' values for the commit about to be made, if they are due or ``force`` (an SOS or
        alarm commit, the last commit); None otherwise. :meth:`written` once that commit succeeded."""
        self._taken = {k: self.values[k] for k in self.dirty} if self.dirty and (force or now >= self.due_at) else {}
        return self._taken or None

    def written(self, now: float) -> None:
        """The commit carrying what :meth:`take` gave succeeded at ``now`` (monotonic s); a counter counted on
        since then stays changed."""
        if self._taken:
            self.dirty.difference_update(k for k, v in self._taken.items() if self.values[k] == v)
            self.due_at = now + COUNTERS_EVERY_S
            self._taken = {}
