"""Repeat until confirmed: the bookkeeping that re-sends each alert until the backend confirms its id."""

from __future__ import annotations

import heapq
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.i18n import gettext
from agent.rules.alert import _SEVERITY_RANK, _US_PER_S, Alert, _is_int

log = logging.getLogger("agent.rules")  # one logger for the package: journal lines keep the name operators filter on

TRACKER_SCHEMA = "denen.alert_tracker/1"


@dataclass(slots=True)
class _Tracked:
    alert: Alert
    added_us: int
    next_us: int
    order: int


class AlertTracker:
    """Repeats each alert until the backend confirms its id, or until its deadline passes.

    The caller sends an alert once when it is raised or cleared and :meth:`add` s it here; then it re-sends what
    :meth:`due` returns, and sleeps until :meth:`next_due_us`. Confirmation and expiry drop the alert; expiry is
    counted in :attr:`expired` and logged. Not thread-safe: owned by the gateway's core thread.

    Args:
        repeat_s: seconds between re-sends of an unconfirmed alert.
        deadline_s: seconds after :meth:`add` at which an unconfirmed alert stops being re-sent.
    """

    def __init__(self, *, repeat_s: float, deadline_s: float) -> None:
        if not repeat_s > 0 or not deadline_s > 0:
            raise ValueError("repeat_s and deadline_s must be positive numbers of seconds")
        self._repeat_us = round(repeat_s * _US_PER_S)
        self._deadline_us = round(deadline_s * _US_PER_S)
        self._entries: dict[str, _Tracked] = {}
        self._heap: list[tuple[int, int, str]] = []
        self._order = 0
        #: Alerts dropped because their deadline passed unconfirmed.
        self.expired = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, alert_id: object) -> bool:
        """Whether ``alert_id`` is still being repeated (neither confirmed nor expired)."""
        return alert_id in self._entries

    def pending(self) -> list[Alert]:
        """Alerts awaiting confirmation, oldest first."""
        return [t.alert for t in sorted(self._entries.values(), key=lambda t: t.order)]

    def add(self, alert: Alert, now_us: int) -> None:
        """Track an alert just sent at ``now_us`` (µs since the epoch). Adding an id again changes nothing."""
        if alert.id in self._entries:
            return
        self._order += 1
        entry = _Tracked(alert, now_us, self._next(now_us, now_us), self._order)
        self._entries[alert.id] = entry
        heapq.heappush(self._heap, (entry.next_us, entry.order, alert.id))

    def confirm(self, alert_id: str) -> bool:
        """The backend confirmed receipt of ``alert_id``. Returns False for an id not (or no longer) tracked."""
        return self._entries.pop(alert_id, None) is not None

    def due(self, now_us: int) -> list[Alert]:
        """Alerts to send again now, most severe first; expired ones are dropped and counted instead."""
        out: list[_Tracked] = []
        while self._heap and self._heap[0][0] <= now_us:
            when, _, alert_id = heapq.heappop(self._heap)
            entry = self._entries.get(alert_id)
            if entry is None or entry.next_us != when:
                continue  # confirmed, or superseded
            if now_us >= entry.added_us + self._deadline_us:
                del self._entries[alert_id]
                self.expired += 1
                log.warning("%s", gettext("alert {id} expired unconfirmed after {seconds} s").format(
                    id=alert_id, seconds=f"{self._deadline_us / _US_PER_S:.0f}"))
                continue
            out.append(entry)
            entry.next_us = self._next(entry.added_us, now_us)
            heapq.heappush(self._heap, (entry.next_us, entry.order, alert_id))
        out.sort(key=lambda t: (_SEVERITY_RANK.get(t.alert.severity, 3), t.order))
        return [t.alert for t in out]

    def next_due_us(self) -> int | None:
        """When :meth:`due` has work next (a re-send or an expiry), µs since the epoch; None when idle."""
        while self._heap:
            when, _, alert_id = self._heap[0]
            entry = self._entries.get(alert_id)
            if entry is not None and entry.next_us == when:
                return when
            heapq.heappop(self._heap)
        return None

    def shift(self, delta_us: int) -> None:
        """Move every stored time by a clock step of ``delta_us`` µs."""
        for entry in self._entries.values():
            entry.added_us += delta_us
            entry.next_us += delta_us
        self._rebuild()

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: tracked alerts with their times, and the expired count."""
        return {
            "schema": TRACKER_SCHEMA,
            "expired": self.expired,
            "entries": [
                {"alert": t.alert.to_dict(), "added_us": t.added_us, "next_us": t.next_us}
                for t in sorted(self._entries.values(), key=lambda t: t.order)
            ],
        }

    def restore(self, snap: Mapping[str, Any]) -> None:
        """Load a :meth:`snapshot`. Raises ValueError when it is malformed (the tracker is left unchanged)."""
        if not isinstance(snap, Mapping) or snap.get("schema") != TRACKER_SCHEMA:
            raise ValueError(f"alert tracker snapshot: not a {TRACKER_SCHEMA} snapshot")
        expired = snap.get("expired")
        raw = snap.get("entries")
        if not _is_int(expired) or not isinstance(raw, list):
            raise ValueError("alert tracker snapshot: expired must be an integer and entries a list")
        entries: dict[str, _Tracked] = {}
        for i, item in enumerate(raw, start=1):
            if not isinstance(item, Mapping) or not _is_int(item.get("added_us")) or not _is_int(item.get("next_us")):
                raise ValueError("alert tracker snapshot: each entry needs alert, added_us and next_us")
            alert = Alert.from_dict(item.get("alert"))  # type: ignore[arg-type]
            entries[alert.id] = _Tracked(alert, item["added_us"], item["next_us"], i)
        self.expired = expired  # type: ignore[assignment]
        self._entries = entries
        self._order = len(raw)
        self._rebuild()

    def _next(self, added_us: int, now_us: int) -> int:
        # Never past the deadline: popping at the deadline is what drops the alert, promptly.
        return min(now_us + self._repeat_us, added_us + self._deadline_us)

    def _rebuild(self) -> None:
        self._heap = [(t.next_us, t.order, alert_id) for alert_id, t in self._entries.items()]
        heapq.heapify(self._heap)
