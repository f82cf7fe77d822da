"""The bridge's report on itself: ``bridge_health`` points in its own database, and its systemd ``STATUS=``.

Every ``health.interval_s`` seconds (default 60) the bridge writes, to the same database as the readings:

=====================================================  ==============================================================
point (tags)                                           fields
=====================================================  ==============================================================
``bridge_health,client_id=<id>``                       ``readings``, ``lines``, ``messages``, ``dead_letters``
                                                       (counts in this interval), ``readings_per_min`` (float),
                                                       ``lag_p50_ms``, ``lag_p99_ms``, ``lag_max_ms`` (edge timestamp
                                                       of a reading to its accepted write, over the readings written
                                                       in the interval; absent when none were), ``broker_connected``
                                                       and ``db_write_ok`` (0/1 now), ``interval_s``,
                                                       ``health_dropped`` (health points not written since start:
                                                       the database was failing)
``bridge_health,client_id=<id>,reason=<reason>``       ``reason_dead_letters``: dead letters of that reason in the
                                                       interval (only reasons that occurred)
``bridge_health,client_id=<id>,gateway=<gateway>``     ``gateway_messages``, ``gateway_readings``: what came from
                                                       that gateway in the interval (only gateways heard, at most
                                                       ``health.max_gateways``); the point's time is its last seen
=====================================================  ==============================================================

Every numeric field is a float, as in the rest of the schema. Counts are per interval rather than since start: they need no ``non_negative_derivative`` in Grafana, do not jump
when the bridge restarts, and several bridges of one group add up with ``sum()``. Each kind of point has its own
field names, so a query needs no tag filter to pick its kind.

A health point is written once, with no retry: when the database is failing it is dropped and counted
(``health_dropped``), never queued. Lag is measured on a bounded sample: every reading of a write of up to
:data:`LAG_LINES_PER_WRITE` lines, evenly spaced lines of a larger one, and at most :data:`LAG_SAMPLE_MAX` per
interval for the percentiles (a reservoir); ``lag_max_ms`` is the largest lag measured. A reading held for hours on a gateway that was offline shows here as a long lag: that is
the point of it.

The systemd status line (``systemctl status denen-bridge``), refreshed every few seconds::

    broker ok, influx ok, 1,204 readings/min, lag p99 0.4 s, dead letters 3
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.i18n import _

__all__ = ["LAG_LINES_PER_WRITE", "LAG_SAMPLE_MAX", "HealthMonitor", "HealthReport"]

#: Lag samples kept per interval (a reservoir: every reading written has the same chance to be in it).
LAG_SAMPLE_MAX = 4096
#: Lines of one write whose lag is measured at most (evenly spaced).
LAG_LINES_PER_WRITE = 512
#: Recent lag samples the status line's p99 is taken from.
_RECENT_LAGS = 1024
#: Seconds of history the status line's readings/min is taken over.
_RATE_WINDOW_S = 60.0


def _escape_tag(value: str) -> str:
    # Tag values here are the bridge's client id (config), reason codes (the bridge's own) and gateway ids (checked
    # against the topic scheme's id pattern); escaped all the same.
    out = "".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in value[:256])
    out = out.replace("\\", "\uff3c")
    return out.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ") or "unknown"


def _percentile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of sorted values, nearest rank."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


@dataclass(frozen=True, slots=True)
class HealthReport:
    """One interval's report, as lines of line protocol (µs timestamps) and the numbers behind them."""

    lines: list[str]
    readings: int
    lag_p99_ms: float | None


class HealthMonitor:
    """Collects what the report needs from the bridge's threads; thread-safe.

    Args:
        client_id: the bridge's MQTT client id (the ``client_id`` tag).
        max_gateways: gateways reported per interval at most; more are counted in ``gateways_over_limit``.
        clock_us: wall clock, µs since the epoch: the points' time (tests pass their own).
        monotonic: the clock intervals are measured with, in seconds (tests pass their own).
    """

    def __init__(self, client_id: str, *, max_gateways: int = 1000, clock_us: Callable[[], int] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.client_id = client_id
        self.max_gateways = max_gateways
        self._clock_us = clock_us or (lambda: time.time_ns() // 1000)
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._lags: list[float] = []  # ms, reservoir of this interval
        self._lags_seen = 0
        self._lag_max = 0.0
        self._recent: deque[float] = deque(maxlen=_RECENT_LAGS)
        self._gateways: dict[str, list[int]] = {}  # gateway -> [messages, readings, last seen µs]
        self.gateways_over_limit = 0
        self.broker_connected = False
        self.dropped = 0  # health points not written (database failing), since start
        self._last_counters: dict[str, int] = {}
        self._last_report = monotonic()
        self._rate: deque[tuple[float, int]] = deque()  # (monotonic s, readings written since start)
        self._random = random.Random()

    # -- fed by the bridge ----------------------------------------------------------------------------------------
    def note_message(self, gateway: str | None, readings: int) -> None:
        """A message arrived from ``gateway`` (None: a topic outside the scheme) holding ``readings`` readings."""
        if gateway is None:
            return
        now = self._clock_us()
        with self._lock:
            entry = self._gateways.get(gateway)
            if entry is None:
                if len(self._gateways) >= self.max_gateways:
                    self.gateways_over_limit += 1
                    return
                self._gateways[gateway] = [1, readings, now]
                return
            entry[0] += 1
            entry[1] += readings
            entry[2] = now

    def note_written(self, lines: Sequence[str], sources: Sequence[str], refused: set[int] | frozenset[int]) -> None:
        """Lines the database accepted: the lag of each reading's line (its timestamp, µs, ends the line)."""
        now = self._clock_us()
        lags = []
        previous = None
        # A large write is sampled (evenly, LAG_LINES_PER_WRITE lines): parsing every timestamp would cost the
        # writer about 1 µs per reading, near a tenth of its whole work per reading.
        for i in range(0, len(lines), max(1, len(lines) // LAG_LINES_PER_WRITE)):
            source = sources[i]
            # A document's point, a line that was not written, or the reading's second line (node_health: the
            # same timestamp): one lag per reading.
            if source == previous or ":" in source or i in refused:
                continue
            previous = source
            line = lines[i]
            try:
                ts = int(line[line.rfind(" ") + 1:])
            except ValueError:
                continue
            lags.append((now - ts) / 1000.0)
        if not lags:
            return
        with self._lock:
            self._recent.extend(lags[-256:])
            top = max(lags)
            if top > self._lag_max:
                self._lag_max = top
            room = LAG_SAMPLE_MAX - len(self._lags)
            if room > 0:
                self._lags.extend(lags[:room])
                self._lags_seen += min(room, len(lags))
                lags = lags[room:]
            rnd = self._random.randrange
            for lag in lags:  # reservoir sampling (algorithm R)
                self._lags_seen += 1
                j = rnd(self._lags_seen)
                if j < LAG_SAMPLE_MAX:
                    self._lags[j] = lag

    # -- read by the health thread --------------------------------------------------------------------------------
    def report(self, counters: dict[str, int], *, db_write_ok: bool) -> HealthReport:
        """The points of the interval since the last report (and starts the next interval)."""
        now_us = self._clock_us()
        mono = self._monotonic()
        with self._lock:
            lags, self._lags, self._lags_seen = self._lags, [], 0
            lag_max, self._lag_max = self._lag_max, 0.0
            gateways, self._gateways = self._gateways, {}
            over, self.gateways_over_limit = self.gateways_over_limit, 0
        last = self._last_counters
        self._last_counters = dict(counters)
        interval = max(1e-3, mono - self._last_report)
        self._last_report = mono

        def delta(key: str) -> int:
            return max(0, counters.get(key, 0) - last.get(key, 0))

        tag = f"bridge_health,client_id={_escape_tag(self.client_id)}"
        readings = delta("readings_written")
        fields = [f"readings={readings}", f"lines={delta('lines_written')}", f"messages={delta('messages')}",
                  f"dead_letters={delta('dead_letters')}", f"readings_per_min={readings * 60 / interval:.3f}",
                  f"broker_connected={int(self.broker_connected)}", f"db_write_ok={int(db_write_ok)}",
                  f"interval_s={interval:.3f}", f"health_dropped={self.dropped}"]
        p99 = None
        if lags:
            lags.sort()
            p99 = _percentile(lags, 0.99)
            fields += [f"lag_p50_ms={_percentile(lags, 0.5):.3f}", f"lag_p99_ms={p99:.3f}",
                       f"lag_max_ms={lag_max:.3f}"]
        if over:
            fields.append(f"gateways_over_limit={over}")
        out = [f"{tag} {','.join(fields)} {now_us}"]
        for key in sorted(counters):
            if key.startswith("dead_letters.") and delta(key):
                out.append(f"{tag},reason={_escape_tag(key.split('.', 1)[1])} reason_dead_letters={delta(key)} "
                           f"{now_us}")
        for gateway in sorted(gateways):
            messages, gw_readings, seen_us = gateways[gateway]
            out.append(f"{tag},gateway={_escape_tag(gateway)} gateway_messages={messages},"
                       f"gateway_readings={gw_readings} {seen_us}")
        return HealthReport(out, readings, p99)

    def status_line(self, counters: dict[str, int], *, db_ok: bool, db_name: str = "influx") -> str:
        """The one-line ``STATUS=`` text: connectivity, readings/min over the last minute, lag p99, dead letters."""
        mono = self._monotonic()
        written = counters.get("readings_written", 0)
        rate = self._rate
        rate.append((mono, written))
        while len(rate) > 2 and mono - rate[1][0] >= _RATE_WINDOW_S:
            rate.popleft()
        span = mono - rate[0][0]
        per_min = (written - rate[0][1]) * 60 / span if span >= 1 else 0.0
        with self._lock:
            recent = sorted(self._recent)
        parts = [_("broker ok") if self.broker_connected else _("broker down"),
                 (_("{database} ok") if db_ok else _("{database} failing")).format(database=db_name),
                 _("{rate} readings/min").format(rate=f"{per_min:,.0f}")]
        if recent:
            parts.append(_("lag p99 {seconds} s").format(seconds=f"{_percentile(recent, 0.99) / 1000:.1f}"))
        parts.append(_("dead letters {count}").format(count=f"{counters.get('dead_letters', 0):,}"))
        if self.dropped:
            parts.append(_("health points dropped {count}").format(count=f"{self.dropped:,}"))
        return ", ".join(parts)
