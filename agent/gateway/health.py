"""What the gateway says about itself: the values of its ``gateway_health`` reading and the systemd status line.

Both are built from figures the core already keeps (:class:`GatewayStats`, node states, the state document); the health
reading also reads the journal's depth and size, once per ``health.interval_s``.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent import systemd
from agent.config import Config
from agent.errors import JournalError
from agent.gateway import clock
from agent.gateway.journal import Journal
from agent.gateway.reading import NodeState
from agent.i18n import _

log = logging.getLogger(__name__)

#: systemd's STATUS= line is sent at most this often, in seconds, unless the broker connection or an SOS changed it
#: (one datagram each; the text is built from figures the core already keeps, with no journal read).
STATUS_MIN_S = 5.0


@dataclass
class GatewayStats:
    """Live figures the core keeps in memory (persisted as counters at each commit)."""

    counters: Counter[str] = field(default_factory=Counter)
    started_us: int = field(default_factory=clock.wall_us)


def health_values(journal: Journal, depth: Mapping[str, int], counters: Counter[str], nodes: Mapping[str, NodeState],
                  *, now_us: int, started_us: int, siren_on: bool, held: int) -> dict[str, float]:
    """The ``values`` of a ``gateway_health`` reading.

    Args:
        journal: the journal (its oldest unsent reading, its size, the free space beside it).
        depth: readings per lane in the journal, as ``journal.depth()`` just read.
        counters: the core's counters.
        nodes: node states by node id.
        now_us: the reading's time, µs since the epoch; ``started_us``: the agent's start, likewise.
        siren_on: whether the siren sounds.
        held: readings held back for the clock's sync.
    """
    oldest = journal.oldest_ts_us()
    values: dict[str, float] = {f"depth_{k}": float(v) for k, v in depth.items()}
    values.update(
        uptime_s=round((now_us - started_us) / 1e6, 1),
        oldest_unsent_s=round((now_us - oldest) / 1e6, 1) if oldest else 0.0,
        journal_mb=round(journal.size_bytes() / 1048576, 3),
        frames_ok=float(counters["frames.ok"]),
        frames_bad=float(sum(v for k, v in counters.items() if k.startswith("frames.") and k != "frames.ok")),
        reopens=float(sum(v for k, v in counters.items() if k.endswith(".reopen"))),
        nodes_heard=float(sum(1 for n in nodes.values() if n.last_seen_us)),
        siren_on=1.0 if siren_on else 0.0,
        held_readings=float(held),
    )
    try:
        values["disk_free_mb"] = round(shutil.disk_usage(os.path.dirname(os.path.abspath(journal.path))).free
                                       / 1048576, 1)
    except OSError:
        pass
    temp = cpu_temp_c()
    if temp is not None:
        values["cpu_temp_c"] = temp
    return values


def cpu_temp_c() -> float | None:
    """The SoC temperature in °C, None where the kernel does not tell it."""
    try:
        with open("/sys/class/thermal/thermal_zone0/temp") as f:
            return round(int(f.read().strip()) / 1000, 1)
    except (OSError, ValueError):
        return None


def status_text(state: Mapping[str, Any], *, unjournaled: int | None, backlog: int | None, online: bool,
                broker_ever: bool, broker_for_s: float, nodes_heard: str, clock_synced: bool) -> str:
    """The line ``systemctl status denen`` shows, most urgent first, e.g. ``12/15 nodes heard, backlog 0,
    broker ok 3 h`` or ``SOS 1 unacknowledged, offline 2 h, 3,120 readings held, 12/15 nodes heard``.

    Args:
        state: the last state document (alerts, siren, held readings); empty before the first.
        unjournaled: readings kept in memory while journal commits fail; None while they succeed.
        backlog: readings not yet acknowledged by the broker; None when the journal cannot say.
        online: an MQTT session is up; ``broker_ever``: one was, since start.
        broker_for_s: seconds since the broker connection last came up or went down.
        nodes_heard: see :func:`nodes_heard`.
        clock_synced: whether the wall clock is synchronised.
    """
    parts: list[str] = []
    waiting = [a for a in state.get("alerts", ()) if not a.get("acknowledged_by")]
    sos = sum(1 for a in waiting if a.get("type") == "sos")
    if sos:
        parts.append(_("SOS {count} unacknowledged").format(count=sos))
    if len(waiting) > sos:
        n = len(waiting) - sos
        parts.append(_("1 alert unacknowledged") if n == 1 else _("{count} alerts unacknowledged").format(count=n))
    if (state.get("siren") or {}).get("on"):
        parts.append(_("siren on"))
    if unjournaled is not None:
        parts.append(_("journal failing, {count} readings in memory").format(count=f"{unjournaled:,}"))
    count = "?" if backlog is None else f"{backlog:,}"
    since = duration(broker_for_s)
    if not online:
        parts.append(_("offline {since}").format(since=since) if broker_ever
                     else _("broker not reached yet ({since})").format(since=since))
        parts.append(_("{count} readings held").format(count=count))
        parts.append(nodes_heard)
    else:
        parts += [nodes_heard, _("backlog {count}").format(count=count), _("broker ok {since}").format(since=since)]
    held = state.get("held") or {}
    waiting_for_sync = f"{held.get('count', 0):,}"
    if not clock_synced:
        parts.append(_("clock unsynced, {count} readings wait for it").format(count=waiting_for_sync)
                     if held.get("active") else _("clock unsynced"))
    elif held.get("active"):
        parts.append(_("clock synced, correcting {count} readings").format(count=waiting_for_sync))
    return ", ".join(parts)


def nodes_heard(nodes: Mapping[str, NodeState], late_after_us: Mapping[str, int], now_us: int) -> str:
    """``12/15 nodes heard``: configured nodes not late (``late_after_us``, the node_silent threshold per node id);
    without configured nodes, every node heard at least once."""
    if not late_after_us:
        return _("{count} nodes heard").format(count=sum(1 for st in nodes.values() if st.last_seen_us))
    heard = 0
    for node, late_us in late_after_us.items():
        st = nodes.get(node)
        if st is not None and st.last_seen_us and now_us < st.last_seen_us + late_us:
            heard += 1
    return _("{heard}/{total} nodes heard").format(heard=heard, total=len(late_after_us))


def late_after_us(config: Config) -> dict[str, int]:
    """When each configured node counts as not heard: the node_silent alert's threshold, in µs, by node id."""
    factor = config.rules.silence_factor
    return {n.id: math.ceil(factor * n.interval_s * 1_000_000) for n in config.nodes}


def duration(seconds: float) -> str:
    """A span for people, in its largest sensible unit: ``45 s``, ``12 min``, ``3 h``, ``4 d``."""
    if seconds < 90:
        return _("{n} s").format(n=f"{max(0.0, seconds):.0f}")
    if seconds < 90 * 60:
        return _("{n} min").format(n=f"{seconds / 60:.0f}")
    if seconds < 48 * 3600:
        return _("{n} h").format(n=f"{seconds / 3600:.0f}")
    return _("{n} d").format(n=f"{seconds / 86400:.0f}")


class Backlog:
    """Readings not yet acknowledged by the broker, without a COUNT(*) per status line (160 ms at 1 M rows).

    The last ``depth()`` read (at each health report) moved on by the counters of readings journaled,
    acknowledged and evicted since; so it costs no SQL per status, and any drift lasts one health interval.

    Args:
        counters: the core's counters (``readings.journaled``, ``readings.acked``, ``journal.evicted.<lane>``).
    """

    def __init__(self, counters: Counter[str]) -> None:
        self._counters = counters
        self._base: tuple[int, int, int, int] | None = None  # (total, journaled, acked, evicted) at the last read

    def forget(self) -> None:
        """The journal was replaced: counted again at the next :meth:`count`."""
        self._base = None

    def anchor(self, depth_total: int, acked_waiting: int) -> None:
        """Anchor the count on a journal count just read (``depth_total`` readings, of which ``acked_waiting``
        are acknowledged and deleted with the next commit: still counted by depth(), already in acked)."""
        c = self._counters
        self._base = (depth_total - acked_waiting, c["readings.journaled"], c["readings.acked"], _evicted(c))

    def count(self, journal: Journal, *, acked_waiting: int, in_window: int) -> int | None:
        """Readings in the journal not yet acknowledged, plus ``in_window`` waiting in memory for the commit
        window (journal.commit_window_ms); None when the journal cannot say."""
        c = self._counters
        if self._base is None:
            try:
                total = sum(journal.depth().values())
            except JournalError:
                return None
            self.anchor(total, acked_waiting)
            assert self._base is not None
        total, journaled, acked, evicted0 = self._base
        return max(0, total + (c["readings.journaled"] - journaled) - (c["readings.acked"] - acked)
                   - (_evicted(c) - evicted0)) + in_window


def _evicted(counters: Counter[str]) -> int:
    return sum(v for k, v in counters.items() if k.startswith("journal.evicted."))


class SystemdStatus:
    """systemd's STATUS= line for the gateway, and when the broker connection last changed (the line tells it).

    The line is sent when it changed, at most every STATUS_MIN_S, at once when forced (the broker connection
    changed, an SOS came). Not thread-safe: the core owns it.

    Args:
        count: adds to one of the core's counters.
    """

    def __init__(self, count: Callable[..., None]) -> None:
        self.line = systemd.StatusLine(STATUS_MIN_S)
        self._count = count
        self.force = False  # sent at the next update without waiting for the limit
        self.broker_since = time.monotonic()  # when the broker connection last came up or went down
        self.broker_ever = False  # it came up at least once since start

    def broker_changed(self, *, up: bool) -> None:
        self.broker_since = time.monotonic()
        self.broker_ever = self.broker_ever or up
        self.force = True

    def update(self, text: Callable[[], str], *, now: float, force: bool = False) -> None:
        """Send ``text()`` if due (built only then); a change held back by the limit is ``line.pending`` until
        ``line.next_at``."""
        force, self.force = force or self.force, False
        try:
            self.line.update(text, force=force, now=now)
        except Exception:  # noqa: BLE001 - a status line is never worth stopping the core for
            self._count("status.internal_error")
            log.exception("%s", _("building the systemd status line failed"))
