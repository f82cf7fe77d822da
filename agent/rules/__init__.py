"""Edge alert rules: readings and gateway events in, alerts out, evaluated on the gateway even while offline.

The gateway core feeds every accepted reading (the JSON object of README "Reading batch schema", as a mapping)
to :meth:`RuleEngine.on_reading`, its own events to :meth:`RuleEngine.on_gateway_event`, and calls
:meth:`RuleEngine.tick` when :meth:`RuleEngine.next_tick_us` says so. Each call returns the alerts it raised or
cleared; the core journals them at alarm priority and hands them to an :class:`AlertTracker`, which repeats each one
until the backend confirms it or a deadline passes. The siren and the status lamp follow
:meth:`RuleEngine.siren_wanted` and :meth:`RuleEngine.lamp_state`, pure functions of the active alerts, so they
work without the backhaul.

Public API::

    RulesConfig, RiverRule, RiverStages, SlopeRule      the ``rules:`` config section (pydantic, extra="forbid")
    NodeInfo, node_infos(config_nodes)                  what the engine needs to know of each configured node
    Alert                                               one raise or clear event (frozen; to_dict / from_dict)
    RuleEngine                                          the rules; owned by one thread (the core), not locked
    AlertTracker                                        repeat-until-confirmed bookkeeping
    siren_for(active, names), lamp_for(active)          the offline siren/lamp decision

Alerts. Each condition has a ``key`` (its identity, shared by its raise and its clear) and a ``type``. Every event
gets a new ``id`` = ``<key>#<sequence>`` (the sequence is per gateway, survives restarts through the snapshot), so a
repeat of the same event carries the same id and the backend can deduplicate. A clear carries the type, severity,
node and name of its raise; the cleared condition is known from the key.

=================== ====================== ================= =====================================================
type                key                    severity          raised when / cleared when
=================== ====================== ================= =====================================================
sos                 sos:<node>             emergency         an SOS frame with pressed=1 (lat/lon in the message
                                                             and fields when the node has a fix) / a frame with
                                                             pressed=0 (the caller cancelled). Never times out.
trap_fired          trap_fired:<node>      warning           a trap frame with fired=1 / fired=0 (trap re-armed).
river_stage         river_stage:<node>:<k> k=1 info,         the level reaches stage k's threshold (>=), one alert
                                           k=2 warning,      per stage crossed, lowest first / the level drops
                                           k=3,4 emergency   below threshold_k - hysteresis_cm, highest first.
                                                             k: 1 水防団待機水位 (standby), 2 はん濫注意水位
                                                             (caution), 3 避難判断水位 (evacuation decision),
                                                             4 はん濫危険水位 (danger). ``level`` is the stage
                                                             reached by the crossing: k on a raise, k-1 on a
                                                             clear (0 = below standby).
river_rise          river_rise:<node>      warning           the rise over rise_window_s reaches rise_cm_per_h /
                                                             it falls below rise_clear_fraction x rise_cm_per_h.
slope_tilt          slope_tilt:<node>      emergency         |tilt - zero| on either axis reaches max_deg / both
                                                             axes are below max_deg - hysteresis_deg.
slope_rate          slope_rate:<node>      emergency         the tilt change over rate_window_s on either axis
                                                             reaches rate_deg_per_h / it falls below
                                                             rate_clear_fraction x rate_deg_per_h.
node_silent         node_silent:<node>     warning           no frame for silence_factor x the node's interval_s
                                                             (counted from engine start for a node never heard;
                                                             raised by tick()) / any frame from the node.
battery_low         battery_low:<node>     info              battery_v below the node kind's threshold / battery_v
                                                             at or above threshold + battery_hysteresis_v.
journal_near_quota  journal_near_quota     warning           journal usage reaches journal_near_quota_pct / it is
                                                             below journal_near_quota_pct - journal_hysteresis_pct.
module_lost         module_lost:<radio>    warning           the core reports the radio module lost / back.
=================== ====================== ================= =====================================================

Rate rules compare the newest sample with a reference: the oldest sample inside the window when it is at least half
a window old, else the last sample before the window (an average over a longer span never overstates the peak
rate, and it lets a gauge that drops back to daily reports clear its alert). No reference, no rate: a single
sample never raises a rate alert.

Duplicate and out-of-order readings. A reading is ignored (counted in :attr:`RuleEngine.stale`) when neither its
frame counter nor its timestamp is newer than the node's last accepted reading: a journal replay or a duplicate
never re-raises or clears anything. A reading newer by counter but older by time means the gateway clock was set
back; it is evaluated (an SOS is never dropped), but rate histories restart, so no rate is computed across the step.
A reading newer by time but not by counter means the node's counter restarted; it is evaluated too.

Time. All times are µs since the Unix epoch on the clock that stamps readings (``ts_us``). When that clock is
stepped (NTP sync on a board without RTC), the core reports ``on_gateway_event("clock_step", delta_us=...)`` so
silence deadlines move with it instead of every node turning silent at once.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ALERT_TYPES",
    "CLEARED",
    "EMERGENCY",
    "INFO",
    "RAISED",
    "SIREN_NAMES",
    "SNAPSHOT_SCHEMA",
    "STAGE_NAMES",
    "WARNING",
    "Alert",
    "AlertTracker",
    "NodeInfo",
    "RiverRule",
    "RiverStages",
    "RuleEngine",
    "RulesConfig",
    "SlopeRule",
    "lamp_for",
    "node_infos",
    "siren_for",
]

log = logging.getLogger(__name__)

RAISED = "raised"
CLEARED = "cleared"
EMERGENCY = "emergency"
WARNING = "warning"
INFO = "info"
_SEVERITY_RANK = {EMERGENCY: 0, WARNING: 1, INFO: 2}

#: Every alert type this module produces.
ALERT_TYPES: tuple[str, ...] = (
    "sos",
    "trap_fired",
    "river_stage",
    "river_rise",
    "slope_tilt",
    "slope_rate",
    "node_silent",
    "battery_low",
    "journal_near_quota",
    "module_lost",
)

#: Stage k (1..4): (siren name, Japanese name, English name).
STAGE_NAMES: Mapping[int, tuple[str, str, str]] = {
    1: ("river_standby", "水防団待機水位", "flood-fighting standby level"),
    2: ("river_caution", "はん濫注意水位", "flood caution level"),
    3: ("river_evacuation", "避難判断水位", "evacuation decision level"),
    4: ("river_danger", "はん濫危険水位", "flood danger level"),
}
_STAGE_SEVERITY = {1: INFO, 2: WARNING, 3: EMERGENCY, 4: EMERGENCY}

#: Names accepted in ``rules.siren``: every alert type, one name per river stage (active while the river is at or
#: above that stage), and ``slope`` for slope_tilt or slope_rate.
SIREN_NAMES: tuple[str, ...] = (*ALERT_TYPES, *(v[0] for v in STAGE_NAMES.values()), "slope")

SNAPSHOT_SCHEMA = "denen.rules/1"
TRACKER_SCHEMA = "denen.alert_tracker/1"

_NODE_KINDS: tuple[str, ...] = ("sos", "trap", "water_level", "rain", "tilt", "weather", "heartbeat")
NodeKind = Literal["sos", "trap", "water_level", "rain", "tilt", "weather", "heartbeat"]

_US_PER_S = 1_000_000
_US_PER_H = 3_600_000_000
# Samples kept per node for a rate window. Nodes send a few frames a minute at most (airtime), so this covers
# hours; a longer window with a chattier node keeps the newest samples and the rate span shrinks accordingly.
_HISTORY_MAX = 1024


# ---------------------------------------------------------------------------------------------------------------
# Config


def _node_id(value: object) -> str:
    """Normalise a node id to 8 lowercase hex digits (text, or an int written in YAML hex such as 0x00000301)."""
    if isinstance(value, bool):
        raise ValueError("node id must be 8 hex digits, not true/false")
    if isinstance(value, int):
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"node id {value} does not fit in 32 bits")
        return f"{value:08x}"
    if not isinstance(value, str):
        raise ValueError("node id must be 8 hex digits in quotes, e.g. \"00000301\"")
    text = value.strip()
    if len(text) != 8 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise ValueError(f"node id '{text}' is not 8 hex digits (write it in quotes, e.g. \"00000301\")")
    return text.lower()


class _RulesSection(BaseModel):
    # Same conventions as agent.config's sections: unknown keys are errors, the config is shared read-only.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True, validate_default=True)


class RiverStages(_RulesSection):
    """The four Japanese river levels of one gauge, in cm on the gauge's own datum (the datum of ``level_cm``)."""

    standby: float = Field(description="水防団待機水位 (flood-fighting standby level), cm on the gauge datum.")
    caution: float = Field(description="はん濫注意水位 (flood caution level), cm; above standby.")
    evacuation: float = Field(description="避難判断水位 (evacuation decision level), cm; above caution.")
    danger: float = Field(description="はん濫危険水位 (flood danger level), cm; above evacuation.")

    @model_validator(mode="after")
    def _increasing(self) -> RiverStages:
        values = self.as_tuple()
        if not all(math.isfinite(v) for v in values):
            raise ValueError("river stages must be finite numbers of cm")
        names = ("standby", "caution", "evacuation", "danger")
        for i in range(1, 4):
            if values[i] <= values[i - 1]:
                raise ValueError(
                    f"river stages must increase strictly: {names[i]} ({values[i]:g} cm) is not above "
                    f"{names[i - 1]} ({values[i - 1]:g} cm)"
                )
        return self

    def as_tuple(self) -> tuple[float, float, float, float]:
        """Thresholds of stages 1..4 in cm."""
        return (self.standby, self.caution, self.evacuation, self.danger)


class RiverRule(_RulesSection):
    """Stage and rate-of-rise alerts for one water_level node."""

    node: str = Field(description="Node id of the water_level gauge: 8 hex digits in quotes, as in nodes[].id.")
    stages_cm: RiverStages = Field(description="The four river levels in cm on the gauge datum, strictly increasing.")
    hysteresis_cm: float = Field(
        default=5.0,
        ge=0,
        description="cm the level must fall below a stage's threshold before that stage clears (stops alerts "
        "chattering while the water hovers at a line).",
    )
    rise_cm_per_h: float | None = Field(
        default=None,
        gt=0,
        description="Rate of rise in cm per hour that raises river_rise, measured over rise_window_s. "
        "Optional: null turns the rate-of-rise alert off.",
    )
    rise_window_s: float = Field(
        default=3600.0,
        ge=60,
        description="Window in seconds over which the rate of rise is measured (at least 60 s).",
    )
    rise_clear_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="river_rise clears when the rate falls below this fraction of rise_cm_per_h (0-1, ratio).",
    )

    @field_validator("node", mode="before")
    @classmethod
    def _node(cls, value: object) -> str:
        return _node_id(value)


class SlopeRule(_RulesSection):
    """Tilt and tilt-rate alerts for one tilt node."""

    node: str = Field(description="Node id of the tilt sensor: 8 hex digits in quotes, as in nodes[].id.")
    max_deg: float | None = Field(
        default=None,
        gt=0,
        description="Tilt in degrees from the installation zero, on either axis, that raises slope_tilt. "
        "Optional: null turns the tilt alert off.",
    )
    hysteresis_deg: float = Field(
        default=0.1, ge=0, description="Degrees the tilt must fall below max_deg before slope_tilt clears."
    )
    zero_x_deg: float = Field(default=0.0, description="Installation zero of the x axis in degrees (subtracted).")
    zero_y_deg: float = Field(default=0.0, description="Installation zero of the y axis in degrees (subtracted).")
    rate_deg_per_h: float | None = Field(
        default=None,
        gt=0,
        description="Tilt change in degrees per hour, on either axis, over rate_window_s, that raises slope_rate. "
        "Optional: null turns the tilt-rate alert off.",
    )
    rate_window_s: float = Field(
        default=3600.0, ge=60, description="Window in seconds over which the tilt rate is measured (at least 60 s)."
    )
    rate_clear_fraction: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="slope_rate clears when the rate falls below this fraction of rate_deg_per_h (0-1, ratio).",
    )

    @field_validator("node", mode="before")
    @classmethod
    def _node(cls, value: object) -> str:
        return _node_id(value)

    @model_validator(mode="after")
    def _something(self) -> SlopeRule:
        if self.max_deg is None and self.rate_deg_per_h is None:
            raise ValueError(f"slope rule for node {self.node} sets neither max_deg nor rate_deg_per_h, so it would "
                             "never alert; set at least one")
        return self


class RulesConfig(_RulesSection):
    """Edge alert rules (the ``rules:`` section). Every default is usable: an empty section works."""

    sos: bool = Field(default=True, description="Raise an emergency on SOS pressed; clear it when cancelled.")
    trap: bool = Field(default=True, description="Raise an alert when a trap fires; clear it when re-armed.")
    rivers: list[RiverRule] = Field(
        default_factory=list, description="River stage and rate-of-rise rules, one per water_level node."
    )
    slopes: list[SlopeRule] = Field(
        default_factory=list, description="Tilt and tilt-rate rules, one per tilt node."
    )
    silence_factor: float = Field(
        default=3.0,
        ge=1,
        description="A node is silent once silence_factor x its interval_s seconds pass without a frame (ratio).",
    )
    silence_kinds: list[NodeKind] = Field(
        default_factory=lambda: list(_NODE_KINDS),
        description="Node kinds watched for silence (e.g. drop sos for buttons that are switched off when not "
        "carried).",
    )
    battery_low_v: float = Field(
        default=3.3, ge=0, description="Battery voltage in V below which battery_low is raised (0 turns it off)."
    )
    battery_low_v_by_kind: dict[NodeKind, float] = Field(
        default_factory=dict,
        description="Per node kind override of battery_low_v in V, e.g. {trap: 2.2} for 2 x AA cells "
        "(0 turns it off for that kind).",
    )
    battery_hysteresis_v: float = Field(
        default=0.1, ge=0, description="V above the threshold the battery must reach before battery_low clears."
    )
    journal_near_quota_pct: float = Field(
        default=90.0, gt=0, le=100, description="Journal usage in % of its quota that raises journal_near_quota."
    )
    journal_hysteresis_pct: float = Field(
        default=5.0, ge=0, description="Percentage points below the threshold before journal_near_quota clears."
    )
    repeat_s: float = Field(
        default=300.0,
        ge=1,
        description="Seconds between re-sends of an alert the backend has not confirmed (at least 1 s).",
    )
    deadline_s: float = Field(
        default=86400.0,
        ge=1,
        description="Seconds after which an unconfirmed alert stops being re-sent (it is counted as expired).",
    )
    siren: list[str] = Field(
        default_factory=lambda: ["sos", "river_evacuation", "river_danger", "slope"],
        description="Alerts that sound the local siren while active, offline too: alert types (sos, trap_fired, "
        "river_stage, river_rise, slope_tilt, slope_rate, node_silent, battery_low, journal_near_quota, "
        "module_lost), a river stage (river_standby, river_caution, river_evacuation, river_danger: that stage "
        "or higher) or slope (slope_tilt or slope_rate).",
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_keys(cls, data: object) -> object:
        # A list key left empty in YAML (every item commented out) reads as null: it means "none", not an error.
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items()
                    if not (v is None and k in ("rivers", "slopes", "siren", "battery_low_v_by_kind"))}
        return data

    @field_validator("rivers")
    @classmethod
    def _unique_rivers(cls, rivers: list[RiverRule]) -> list[RiverRule]:
        _unique_nodes("rivers", [r.node for r in rivers])
        return rivers

    @field_validator("slopes")
    @classmethod
    def _unique_slopes(cls, slopes: list[SlopeRule]) -> list[SlopeRule]:
        _unique_nodes("slopes", [s.node for s in slopes])
        return slopes

    @field_validator("siren")
    @classmethod
    def _siren_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in SIREN_NAMES:
                raise ValueError(f"unknown siren alert '{name}'; known: {', '.join(SIREN_NAMES)}")
        return names

    @field_validator("battery_low_v_by_kind")
    @classmethod
    def _battery_values(cls, by_kind: dict[str, float]) -> dict[str, float]:
        for kind, volts in by_kind.items():
            if not (math.isfinite(volts) and volts >= 0):
                raise ValueError(f"battery_low_v_by_kind.{kind} must be a voltage >= 0 V (0 turns it off)")
        return by_kind

    def battery_threshold_v(self, kind: str | None) -> float:
        """The battery_low threshold in V for a node kind (0 = off)."""
        if kind is not None and kind in self.battery_low_v_by_kind:
            return self.battery_low_v_by_kind[kind]  # type: ignore[index]
        return self.battery_low_v


def _unique_nodes(section: str, nodes: list[str]) -> None:
    first: dict[str, int] = {}
    for i, node in enumerate(nodes):
        if node in first:
            raise ValueError(f"{section}[{i}]: node {node} already has a rule at {section}[{first[node]}]; "
                             "give each node one rule")
        first[node] = i


# ---------------------------------------------------------------------------------------------------------------
# Nodes and alerts


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What the engine needs of a configured node.

    Attributes:
        name: node name from the config.
        kind: configured kind (sos, trap, water_level, rain, tilt, weather, heartbeat).
        interval_s: expected reporting interval in seconds.
    """

    name: str
    kind: str
    interval_s: float


def node_infos(nodes: Iterable[Any]) -> dict[str, NodeInfo]:
    """Build the engine's node map from config nodes (objects with ``id``, ``name``, ``kind``, ``interval_s``)."""
    return {n.id: NodeInfo(n.name, n.kind, float(n.interval_s)) for n in nodes}


@dataclass(frozen=True, slots=True)
class Alert:
    """One raise or clear event of a condition.

    Attributes:
        id: unique per event, stable on repeats: ``<key>#<sequence>``.
        key: identity of the condition; its raise and its clear share it.
        type: one of :data:`ALERT_TYPES`.
        state: ``"raised"`` or ``"cleared"``.
        severity: ``"emergency"``, ``"warning"`` or ``"info"`` (a clear keeps the severity of its raise).
        node: node id (8 hex digits), or None for gateway conditions.
        name: node name, or None.
        level: river_stage only: the stage reached by this crossing, 0..4 (0 = below standby); else None.
        value: the measured value that decided, in ``unit``; None when there is none (sos, trap, module).
        threshold: the threshold it was compared with, in ``unit``; None when there is none.
        message: Japanese with English alongside.
        ts_us: when the condition was detected: the reading's ts_us, the tick time or the event time, µs since
            the Unix epoch.
        unit: unit of value and threshold (``cm``, ``cm/h``, ``deg``, ``deg/h``, ``s``, ``V``, ``%``), or None.
        lat_deg: sos only: the caller's latitude in degrees when the node had a GPS fix.
        lon_deg: sos only: the caller's longitude in degrees.
        reading: id of the reading that decided (``<gateway>/<node>/<fcnt>``), or None.
    """

    id: str
    key: str
    type: str
    state: str
    severity: str
    node: str | None
    name: str | None
    level: int | None
    value: float | None
    threshold: float | None
    message: str
    ts_us: int
    unit: str | None = None
    lat_deg: float | None = None
    lon_deg: float | None = None
    reading: str | None = None

    @property
    def ack_key(self) -> str:
        """The key staff acknowledge and silence it by: ``<type>:<node>`` for a node's alert (what a Grafana
        notification carries; every river stage of one gauge shares it), else :attr:`key`."""
        return f"{self.type}:{self.node}" if self.node is not None else self.key

    def to_dict(self) -> dict[str, Any]:
        """The alert as a JSON-able dict (every field)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        """Rebuild an alert from :meth:`to_dict` output.

        Raises:
            ValueError: a field is missing, unknown or of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise ValueError("alert must be an object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"alert has unknown fields: {', '.join(sorted(unknown))}")
        try:
            alert = cls(**data)
        except TypeError as exc:
            raise ValueError(f"alert is incomplete: {exc}") from None
        for field in ("id", "key", "type", "message"):
            if not isinstance(getattr(alert, field), str):
                raise ValueError(f"alert {field} must be text")
        if alert.state not in (RAISED, CLEARED) or alert.severity not in _SEVERITY_RANK:
            raise ValueError(f"alert {alert.id}: bad state {alert.state!r} or severity {alert.severity!r}")
        if not _is_int(alert.ts_us):
            raise ValueError(f"alert {alert.id}: ts_us must be an integer")
        return alert


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> float | None:
    """A finite float from a reading value, else None (bad values are ignored, never alerted on)."""
    if type(value) is float:  # nearly every value: one check instead of three (this runs per value per reading)
        return value if value - value == 0.0 else None  # NaN and ±inf fail x - x == 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _n(value: float, digits: int = 1) -> str:
    """Number for a message: rounded, without trailing zeros (352, 352.5)."""
    text = f"{round(value, digits):.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{_n(seconds / 86400)} d"
    if seconds >= 2 * 3600:
        return f"{_n(seconds / 3600)} h"
    if seconds >= 120:
        return f"{_n(seconds / 60)} min"
    return f"{_n(seconds)} s"


def _siren_names_of(alert: Alert) -> set[str]:
    names = {alert.type}
    if alert.type == "river_stage" and alert.level in STAGE_NAMES:
        # A raised stage alert's level is its stage. A stage's siren name is wanted while the river is at that
        # stage or higher, so stage k's alert carries the names of stages 1..k: it wants the siren by itself (a
        # higher stage sounds a siren silenced for the lower ones again).
        names.update(STAGE_NAMES[k][0] for k in range(1, alert.level + 1))
    elif alert.type in ("slope_tilt", "slope_rate"):
        names.add("slope")
    return names


def siren_for(active: Iterable[Alert], names: Collection[str]) -> bool:
    """Whether the siren should sound: any active alert matches one of ``names`` (see :data:`SIREN_NAMES`)."""
    wanted = set(names)
    return any(a.state == RAISED and _siren_names_of(a) & wanted for a in active)


def lamp_for(active: Iterable[Alert]) -> str:
    """``"alarm"`` when any emergency or warning is active, else ``"ok"`` (the core adds ``"no_backhaul"``)."""
    return "alarm" if any(a.state == RAISED and a.severity in (EMERGENCY, WARNING) for a in active) else "ok"


# ---------------------------------------------------------------------------------------------------------------
# Engine


@dataclass(slots=True)
class _NodeState:
    silence_base_us: int  # last heard (or engine start), moved by downtime and clock steps; silence counts from it
    last_ts_us: int | None = None  # ts_us of the newest accepted reading (ordering)
    last_fcnt: int | None = None  # fcnt of the newest accepted reading (ordering)


def _rate_reference(history: deque[tuple[Any, ...]], window_us: int) -> tuple[Any, ...] | None:
    """The sample a rate is measured against (module docstring), or None when there is none yet.

    ``history`` is trimmed so that at most its first sample lies before the window.
    """
    if len(history) < 2:
        return None
    now_ts = history[-1][0]
    first = history[0]
    if now_ts - first[0] > window_us:
        anchor, inside = first, history[1]
    else:
        anchor, inside = None, first
    if inside is not history[-1] and now_ts - inside[0] >= window_us / 2:
        return inside
    return anchor


def _push_sample(history: deque[tuple[Any, ...]], sample: tuple[Any, ...], window_us: int) -> None:
    history.append(sample)
    cutoff = sample[0] - window_us
    # Keep one sample before the window (the anchor): drop the oldest while the next one is also outside.
    while len(history) >= 2 and history[1][0] <= cutoff:
        history.popleft()


class RuleEngine:
    """Evaluates the edge alert rules. Not thread-safe: owned by the gateway's core thread.

    Args:
        config: the ``rules:`` section.
        nodes: configured nodes by id (8 lowercase hex digits); see :func:`node_infos`.
        start_us: engine start, µs since the Unix epoch; nodes never heard count their silence from here.
    """

    def __init__(self, config: RulesConfig, nodes: Mapping[str, NodeInfo], *, start_us: int) -> None:
        self.config = config
        self._nodes = dict(nodes)
        self._rivers = {r.node: r for r in config.rivers}
        self._slopes = {s.node: s for s in config.slopes}
        self._start_us = start_us
        self._now_us = start_us  # newest time seen (snapshot time)
        self._seq = 0
        self._active: dict[str, Alert] = {}
        self._state: dict[str, _NodeState] = {}
        self._river_hist: dict[str, deque[tuple[int, float]]] = {}
        self._slope_hist: dict[str, deque[tuple[int, float, float]]] = {}
        watched = set(config.silence_kinds)
        self._silence_us: dict[str, int] = {
            node: math.ceil(config.silence_factor * info.interval_s * _US_PER_S)
            for node, info in self._nodes.items()
            if info.kind in watched
        }
        # Silence deadlines: _deadline holds each watched node's true deadline; the heap holds at most one live
        # entry per node (_scheduled), possibly earlier than the true deadline. A reading only moves _deadline
        # (O(1)); when an early entry pops, tick() re-pushes the node at its true deadline. So the heap never
        # holds more than about one entry per node, and tick() touches only nodes whose entry is due.
        self._deadline: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        self._scheduled: dict[str, int] = {}
        #: Readings ignored as duplicates or out of order.
        self.stale = 0
        for node in self._nodes:
            self._state[node] = _NodeState(silence_base_us=start_us)
        self._rebuild_deadlines()
        for rule_node, what, kind in [(r, "rivers", "water_level") for r in self._rivers] + [
            (s, "slopes", "tilt") for s in self._slopes
        ]:
            info = self._nodes.get(rule_node)
            if info is None:
                log.warning("rules.%s names node %s, which is not in nodes:; its rule applies if it is heard",
                            what, rule_node)
            elif info.kind != kind:
                log.warning("rules.%s names node %s (%s), which is configured as %s, not %s",
                            what, rule_node, info.name, info.kind, kind)

    # -- public API -------------------------------------------------------------------------------------------

    def on_reading(self, reading: Mapping[str, Any]) -> list[Alert]:
        """Evaluate one accepted reading (README "Reading batch schema"). Never raises for bad input.

        Returns:
            Alerts raised or cleared by it, in the order they happened.
        """
        node = reading.get("node")
        ts_us = reading.get("ts_us")
        if not isinstance(node, str) or node == "gateway":
            return []
        if not _is_int(ts_us):
            log.warning("reading from node %s without an integer ts_us ignored by the rules", node)
            return []
        assert isinstance(ts_us, int)
        fcnt_raw = reading.get("fcnt")
        fcnt = fcnt_raw if _is_int(fcnt_raw) else None
        values = reading.get("values")
        if not isinstance(values, Mapping):
            values = {}

        st = self._state.get(node)
        if st is None:
            st = self._state[node] = _NodeState(silence_base_us=ts_us)
        newer_time = st.last_ts_us is None or ts_us > st.last_ts_us
        newer_count = fcnt is not None and st.last_fcnt is not None and fcnt > st.last_fcnt
        if not newer_time and not newer_count:
            self.stale += 1
            log.debug("stale reading from %s ignored by the rules (fcnt %s, ts_us %s)", node, fcnt, ts_us)
            return []
        if not newer_time:
            # Newer frame stamped earlier: the clock was set back. Rates across the step would be nonsense.
            log.info("node %s: reading stamped before the previous one (clock set back?); rate windows restart", node)
            self._river_hist.pop(node, None)
            self._slope_hist.pop(node, None)
        st.last_ts_us = ts_us
        if fcnt is not None:
            st.last_fcnt = fcnt
        self._now_us = max(self._now_us, ts_us)

        info = self._nodes.get(node)
        raw_name, raw_id = reading.get("name"), reading.get("id")
        name = info.name if info is not None else (raw_name if isinstance(raw_name, str) else None)
        rid = raw_id if isinstance(raw_id, str) else None
        ctx = _Ctx(node, name, ts_us, rid)
        kind = reading.get("kind")

        out: list[Alert] = []
        self._heard(ctx, st, out)
        if kind == "sos" and self.config.sos:
            self._sos(ctx, values, out)
        if kind == "trap" and self.config.trap:
            self._trap(ctx, values, out)
        rule = self._rivers.get(node)
        if rule is not None:
            level = _number(values.get("level_cm"))
            if level is not None:
                self._river(ctx, rule, level, out)
        slope = self._slopes.get(node)
        if slope is not None:
            tx, ty = _number(values.get("tilt_x_deg")), _number(values.get("tilt_y_deg"))
            if tx is not None and ty is not None:
                self._slope(ctx, slope, tx - slope.zero_x_deg, ty - slope.zero_y_deg, out)
        battery = _number(values.get("battery_v"))
        if battery is not None:
            node_kind = info.kind if info is not None else (kind if isinstance(kind, str) else None)
            self._battery(ctx, self.config.battery_threshold_v(node_kind), battery, out)
        return out

    def tick(self, now_us: int) -> list[Alert]:
        """Raise node_silent for every node whose silence deadline has passed. Cost: O(due nodes x log n)."""
        self._now_us = max(self._now_us, now_us)
        out: list[Alert] = []
        while self._heap and self._heap[0][0] <= now_us:
            when, node = heapq.heappop(self._heap)
            if self._scheduled.get(node) != when:
                continue  # superseded entry (an earlier one for this node was pushed after a clock step)
            del self._scheduled[node]
            deadline = self._deadline[node]
            if deadline > now_us:
                self._schedule(node, deadline)  # heard since this entry was pushed
                continue
            key = f"node_silent:{node}"
            if key in self._active:
                continue
            silent_s = (now_us - self._state[node].silence_base_us) / _US_PER_S
            limit_s = self._silence_us[node] / _US_PER_S
            info = self._nodes[node]
            out.append(self._raise(
                key, "node_silent", WARNING, _Ctx(node, info.name, now_us, None),
                f"ノードからの受信途絶 / node silent: no frame for {_duration(silent_s)} "
                f"(expected every {_duration(info.interval_s)})",
                value=silent_s, threshold=limit_s, unit="s",
            ))
        return out

    def next_tick_us(self) -> int | None:
        """When :meth:`tick` must run next (µs since the epoch), or None when nothing is time-based."""
        while self._heap and self._scheduled.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def on_gateway_event(self, kind: str, *, now_us: int, **detail: Any) -> list[Alert]:
        """Evaluate an event of the gateway itself.

        Events:
            ``journal_usage`` (pct: journal size in % of its quota),
            ``module_lost`` (radio: radio name; optional detail: text), ``module_back`` (radio),
            ``clock_step`` (delta_us: how far the clock was stepped, µs; positive = forward).
            Unknown kinds are logged and ignored.

        Args:
            kind: the event name.
            now_us: when it happened, µs since the epoch.
            **detail: the event's fields.

        Raises:
            ValueError: a known event lacks a field or has one of the wrong type (a bug in the caller).
        """
        out: list[Alert] = []
        if kind == "clock_step":
            delta = detail.get("delta_us")
            if not _is_int(delta):
                raise ValueError("clock_step needs delta_us as an integer number of µs")
            self._shift(delta)
            return out
        self._now_us = max(self._now_us, now_us)
        ctx = _Ctx(None, None, now_us, None)
        if kind == "journal_usage":
            pct = _number(detail.get("pct"))
            if pct is None:
                raise ValueError("journal_usage needs pct as a finite number (% of the quota)")
            key = "journal_near_quota"
            limit = self.config.journal_near_quota_pct
            clear_below = limit - self.config.journal_hysteresis_pct
            if key not in self._active and pct >= limit:
                out.append(self._raise(key, key, WARNING, ctx,
                                       f"ジャーナル容量が上限に接近 / journal near quota: {_n(pct)} % ≥ {_n(limit)} %",
                                       value=pct, threshold=limit, unit="%"))
            elif key in self._active and pct < clear_below:
                out.append(self._clear(key, ctx,
                                       f"ジャーナル容量が回復 / journal usage down: {_n(pct)} % < {_n(clear_below)} %",
                                       value=pct, threshold=clear_below))
        elif kind in ("module_lost", "module_back"):
            radio = detail.get("radio")
            if not isinstance(radio, str) or not radio:
                raise ValueError(f"{kind} needs radio as the radio's name")
            key = f"module_lost:{radio}"
            if kind == "module_lost" and key not in self._active:
                why = detail.get("detail")
                extra = f" ({why})" if isinstance(why, str) and why else ""
                out.append(self._raise(key, "module_lost", WARNING, ctx,
                                       f"無線モジュール喪失 / radio module lost: {radio}{extra}"))
            elif kind == "module_back" and key in self._active:
                out.append(self._clear(key, ctx, f"無線モジュール復帰 / radio module back: {radio}"))
        else:
            log.warning("unknown gateway event %r ignored by the rules", kind)
        return out

    def active(self) -> list[Alert]:
        """Raised conditions, most severe first, then oldest first."""
        return sorted(self._active.values(), key=lambda a: (_SEVERITY_RANK[a.severity], a.ts_us, a.id))

    def siren_wanted(self) -> bool:
        """Whether the local siren should sound now (offline too): see :func:`siren_for` and ``config.siren``."""
        return siren_for(self._active.values(), self.config.siren)

    def siren_alerts(self) -> list[Alert]:
        """The active alerts that want the siren (``config.siren``), most severe first, then oldest first."""
        wanted = set(self.config.siren)
        return [a for a in self.active() if _siren_names_of(a) & wanted]

    def lamp_state(self) -> str:
        """``"alarm"`` or ``"ok"``: see :func:`lamp_for`."""
        return lamp_for(self._active.values())

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: active alerts, sequence, per-node ordering and last heard, rate histories."""
        return {
            "schema": SNAPSHOT_SCHEMA,
            "taken_us": self._now_us,
            "seq": self._seq,
            "stale": self.stale,
            "active": [a.to_dict() for a in self._active.values()],
            "nodes": {
                node: {"silence_base_us": st.silence_base_us, "last_ts_us": st.last_ts_us, "last_fcnt": st.last_fcnt}
                for node, st in self._state.items()
            },
            "river_history": {node: [list(s) for s in h] for node, h in self._river_hist.items()},
            "slope_history": {node: [list(s) for s in h] for node, h in self._slope_hist.items()},
        }

    def restore(self, snap: Mapping[str, Any]) -> list[Alert]:
        """Load a :meth:`snapshot` taken before a restart. Call it right after construction.

        Active alerts, the sequence and the stages come back as they were, so nothing is raised twice. Silence
        counts only time the gateway was listening: the outage (``start_us`` minus the snapshot's time) is added
        to every node's last-heard time, so a daily trap is not reported silent because the gateway was off.

        Returns:
            Clears for restored conditions whose rule no longer exists in the config (river or slope rule
            removed, sos/trap turned off, node no longer watched for silence); they would otherwise stay active.

        Raises:
            ValueError: the snapshot is not one of this schema or is malformed; the engine is left unchanged.
        """
        parsed = _parse_snapshot(snap)
        downtime = max(0, self._start_us - parsed.taken_us)
        self._seq = max(self._seq, parsed.seq)
        self.stale = parsed.stale
        self._active = {a.key: a for a in parsed.active}
        for node, (base, last_ts, last_fcnt) in parsed.nodes.items():
            self._state[node] = _NodeState(silence_base_us=base + downtime, last_ts_us=last_ts, last_fcnt=last_fcnt)
        self._river_hist = {
            node: deque(((int(s[0]), float(s[1])) for s in h), maxlen=_HISTORY_MAX)
            for node, h in parsed.river_history.items() if node in self._rivers
        }
        self._slope_hist = {
            node: deque(((int(s[0]), float(s[1]), float(s[2])) for s in h), maxlen=_HISTORY_MAX)
            for node, h in parsed.slope_history.items() if node in self._slopes
        }
        self._rebuild_deadlines()

        out: list[Alert] = []
        ctx = _Ctx(None, None, self._start_us, None)
        for alert in sorted(self._active.values(), key=lambda a: a.id):
            node = alert.node or ""
            gone = (
                (alert.type in ("river_stage", "river_rise") and node not in self._rivers)
                or (alert.type in ("slope_tilt", "slope_rate") and node not in self._slopes)
                or (alert.type == "sos" and not self.config.sos)
                or (alert.type == "trap_fired" and not self.config.trap)
                or (alert.type == "node_silent" and node not in self._silence_us)
            )
            if gone:
                out.append(self._clear(alert.key, ctx, "規則が設定から削除された / rule removed from the config"))
        return out

    # -- rules ------------------------------------------------------------------------------------------------

    def _heard(self, ctx: _Ctx, st: _NodeState, out: list[Alert]) -> None:
        assert ctx.node is not None
        silent_for = (ctx.ts_us - st.silence_base_us) / _US_PER_S
        st.silence_base_us = ctx.ts_us
        key = f"node_silent:{ctx.node}"
        if key in self._active:
            out.append(self._clear(key, ctx, f"ノードから再受信 / node heard again after {_duration(silent_for)}",
                                   value=silent_for))
        limit = self._silence_us.get(ctx.node)
        if limit is not None:
            self._deadline[ctx.node] = ctx.ts_us + limit
            self._schedule(ctx.node, ctx.ts_us + limit)

    def _sos(self, ctx: _Ctx, values: Mapping[str, Any], out: list[Alert]) -> None:
        pressed = _number(values.get("pressed"))
        if pressed is None:
            return
        key = f"sos:{ctx.node}"
        if pressed >= 0.5 and key not in self._active:
            lat, lon = _number(values.get("lat_deg")), _number(values.get("lon_deg"))
            if lat is not None and lon is not None:
                alt = _number(values.get("alt_m"))
                where = f"{lat:.5f}, {lon:.5f}" + (f" (alt {_n(alt, 0)} m)" if alt is not None else "")
                text = f"SOS発信 / SOS pressed at {where}"
            else:
                lat = lon = None
                text = "SOS発信（位置不明） / SOS pressed, no GPS position"
            out.append(self._raise(key, "sos", EMERGENCY, ctx, text, lat_deg=lat, lon_deg=lon))
        elif pressed < 0.5 and key in self._active:
            out.append(self._clear(key, ctx, "SOS取消 / SOS cancelled by the caller"))

    def _trap(self, ctx: _Ctx, values: Mapping[str, Any], out: list[Alert]) -> None:
        fired = _number(values.get("fired"))
        if fired is None:
            return
        key = f"trap_fired:{ctx.node}"
        if fired >= 0.5 and key not in self._active:
            out.append(self._raise(key, "trap_fired", WARNING, ctx, "わなが作動 / trap fired"))
        elif fired < 0.5 and key in self._active:
            out.append(self._clear(key, ctx, "わな再設置 / trap re-armed"))

    def _stage(self, node: str) -> int:
        stage = 0
        for k in range(1, 5):
            if f"river_stage:{node}:{k}" in self._active:
                stage = k
        return stage

    def _river(self, ctx: _Ctx, rule: RiverRule, level: float, out: list[Alert]) -> None:
        node = ctx.node
        thresholds = (0.0, *rule.stages_cm.as_tuple())  # thresholds[k] for stage k = 1..4
        stage = self._stage(node or "")
        raised = False
        while stage < 4 and level >= thresholds[stage + 1]:
            stage += 1
            raised = True
            _, ja, en = STAGE_NAMES[stage]
            out.append(self._raise(
                f"river_stage:{node}:{stage}", "river_stage", _STAGE_SEVERITY[stage], ctx,
                f"{ja}に到達 / reached {en}: {_n(level)} cm ≥ {_n(thresholds[stage])} cm",
                level=stage, value=level, threshold=thresholds[stage], unit="cm",
            ))
        while not raised and stage > 0 and level < thresholds[stage] - rule.hysteresis_cm:
            _, ja, en = STAGE_NAMES[stage]
            below = thresholds[stage] - rule.hysteresis_cm
            out.append(self._clear(
                f"river_stage:{node}:{stage}", ctx,
                f"{ja}を下回った / fell below {en}: {_n(level)} cm < {_n(below)} cm "
                f"({_n(thresholds[stage])} cm - {_n(rule.hysteresis_cm)} cm)",
                level=stage - 1, value=level, threshold=below,
            ))
            stage -= 1

        if rule.rise_cm_per_h is None:
            return
        window_us = round(rule.rise_window_s * _US_PER_S)
        hist = self._river_hist.setdefault(node or "", deque(maxlen=_HISTORY_MAX))
        _push_sample(hist, (ctx.ts_us, level), window_us)
        ref = _rate_reference(hist, window_us)
        if ref is None:
            return
        span_us = ctx.ts_us - ref[0]
        rate = (level - ref[1]) * _US_PER_H / span_us
        key = f"river_rise:{node}"
        over = f"over {_duration(span_us / _US_PER_S)}"
        clear_below = rule.rise_cm_per_h * rule.rise_clear_fraction
        if key not in self._active and rate >= rule.rise_cm_per_h:
            out.append(self._raise(
                key, "river_rise", WARNING, ctx,
                f"水位が急上昇 / water rising fast: {_n(rate)} cm/h ≥ {_n(rule.rise_cm_per_h)} cm/h ({over})",
                value=rate, threshold=rule.rise_cm_per_h, unit="cm/h",
            ))
        elif key in self._active and rate < clear_below:
            out.append(self._clear(
                key, ctx, f"水位上昇が鈍化 / rise slowed: {_n(rate)} cm/h < {_n(clear_below)} cm/h ({over})",
                value=rate, threshold=clear_below,
            ))

    def _slope(self, ctx: _Ctx, rule: SlopeRule, x: float, y: float, out: list[Alert]) -> None:
        node = ctx.node or ""
        if rule.max_deg is not None:
            axis, tilt = ("x", abs(x)) if abs(x) >= abs(y) else ("y", abs(y))
            key = f"slope_tilt:{node}"
            clear_below = rule.max_deg - rule.hysteresis_deg
            if key not in self._active and tilt >= rule.max_deg:
                out.append(self._raise(
                    key, "slope_tilt", EMERGENCY, ctx,
                    f"斜面の傾斜が限界を超過 / slope tilt beyond limit: {axis} {_n(tilt, 2)}° ≥ {_n(rule.max_deg, 2)}°",
                    value=tilt, threshold=rule.max_deg, unit="deg",
                ))
            elif key in self._active and tilt < clear_below:
                out.append(self._clear(
                    key, ctx, f"傾斜が限界内に戻った / tilt back within limit: {_n(tilt, 2)}° < {_n(clear_below, 2)}°",
                    value=tilt, threshold=clear_below,
                ))
        if rule.rate_deg_per_h is None:
            return
        window_us = round(rule.rate_window_s * _US_PER_S)
        hist = self._slope_hist.setdefault(node, deque(maxlen=_HISTORY_MAX))
        _push_sample(hist, (ctx.ts_us, x, y), window_us)
        ref = _rate_reference(hist, window_us)
        if ref is None:
            return
        span_h = (ctx.ts_us - ref[0]) / _US_PER_H
        rate_x, rate_y = abs(x - ref[1]) / span_h, abs(y - ref[2]) / span_h
        axis, rate = ("x", rate_x) if rate_x >= rate_y else ("y", rate_y)
        key = f"slope_rate:{node}"
        clear_below = rule.rate_deg_per_h * rule.rate_clear_fraction
        if key not in self._active and rate >= rule.rate_deg_per_h:
            out.append(self._raise(
                key, "slope_rate", EMERGENCY, ctx,
                f"斜面の傾斜が急変 / slope tilting fast: {axis} {_n(rate, 2)}°/h ≥ {_n(rule.rate_deg_per_h, 2)}°/h "
                f"(over {_duration(span_h * 3600)})",
                value=rate, threshold=rule.rate_deg_per_h, unit="deg/h",
            ))
        elif key in self._active and rate < clear_below:
            out.append(self._clear(
                key, ctx, f"傾斜変化が鈍化 / tilting slowed: {_n(rate, 2)}°/h < {_n(clear_below, 2)}°/h",
                value=rate, threshold=clear_below,
            ))

    def _battery(self, ctx: _Ctx, threshold: float, volts: float, out: list[Alert]) -> None:
        key = f"battery_low:{ctx.node}"
        if threshold <= 0:
            return
        clear_at = threshold + self.config.battery_hysteresis_v
        if key not in self._active and volts < threshold:
            out.append(self._raise(key, "battery_low", INFO, ctx,
                                   f"電池残量低下 / battery low: {_n(volts, 2)} V < {_n(threshold, 2)} V",
                                   value=volts, threshold=threshold, unit="V"))
        elif key in self._active and volts >= clear_at:
            out.append(self._clear(key, ctx,
                                   f"電池電圧回復 / battery recovered: {_n(volts, 2)} V ≥ {_n(clear_at, 2)} V",
                                   value=volts, threshold=clear_at))

    # -- bookkeeping ------------------------------------------------------------------------------------------

    def _raise(self, key: str, type_: str, severity: str, ctx: _Ctx, message: str, *, level: int | None = None,
               value: float | None = None, threshold: float | None = None, unit: str | None = None,
               lat_deg: float | None = None, lon_deg: float | None = None) -> Alert:
        self._seq += 1
        alert = Alert(
            id=f"{key}#{self._seq}", key=key, type=type_, state=RAISED, severity=severity, node=ctx.node,
            name=ctx.name, level=level, value=value, threshold=threshold, message=message, ts_us=ctx.ts_us,
            unit=unit, lat_deg=lat_deg, lon_deg=lon_deg, reading=ctx.reading,
        )
        self._active[key] = alert
        log.warning("alert raised: %s %s: %s", key, severity, message)
        return alert

    def _clear(self, key: str, ctx: _Ctx, message: str, *, level: int | None = None, value: float | None = None,
               threshold: float | None = None) -> Alert:
        raised = self._active.pop(key)
        self._seq += 1
        alert = Alert(
            id=f"{key}#{self._seq}", key=key, type=raised.type, state=CLEARED, severity=raised.severity,
            node=raised.node, name=raised.name, level=level, value=value, threshold=threshold, message=message,
            ts_us=ctx.ts_us, unit=raised.unit if value is not None else None, reading=ctx.reading,
        )
        log.info("alert cleared: %s: %s", key, message)
        return alert

    def _schedule(self, node: str, when: int) -> None:
        current = self._scheduled.get(node)
        if current is not None and current <= when:
            return  # an earlier entry is pending; when it pops, tick() re-pushes the node at its true deadline
        self._scheduled[node] = when
        heapq.heappush(self._heap, (when, node))

    def forget(self, node: str) -> None:
        """Drop what the rules remember of a node that is not configured (the decoder aged it out or evicted it:
        ``unknown_nodes: accept``), so forged node ids cannot grow this state. Configured nodes are kept."""
        if node not in self._nodes:
            self._state.pop(node, None)

    def _rebuild_deadlines(self) -> None:
        self._deadline = {}
        self._scheduled = {}
        self._heap = []
        for node, limit in self._silence_us.items():
            st = self._state[node]
            self._deadline[node] = st.silence_base_us + limit
            if f"node_silent:{node}" not in self._active:
                self._scheduled[node] = self._deadline[node]
                self._heap.append((self._deadline[node], node))
        heapq.heapify(self._heap)

    def _shift(self, delta_us: int) -> None:
        """Move every stored time by a clock step, so durations measured across the step stay true."""
        log.info("rules: clock stepped by %+.3f s; silence deadlines and rate windows moved with it",
                 delta_us / _US_PER_S)
        self._start_us += delta_us
        self._now_us += delta_us
        for st in self._state.values():
            st.silence_base_us += delta_us
            if st.last_ts_us is not None:
                st.last_ts_us += delta_us
        for node, h in self._river_hist.items():
            self._river_hist[node] = deque(((t + delta_us, v) for t, v in h), maxlen=_HISTORY_MAX)
        for node, sh in self._slope_hist.items():
            self._slope_hist[node] = deque(((t + delta_us, x, y) for t, x, y in sh), maxlen=_HISTORY_MAX)
        self._rebuild_deadlines()


@dataclass(frozen=True, slots=True)
class _Ctx:
    """Who and when an alert is about."""

    node: str | None
    name: str | None
    ts_us: int
    reading: str | None


@dataclass(frozen=True, slots=True)
class _Snapshot:
    taken_us: int
    seq: int
    stale: int
    active: list[Alert]
    nodes: dict[str, tuple[int, int | None, int | None]]
    river_history: dict[str, list[list[float]]]
    slope_history: dict[str, list[list[float]]]


def _parse_snapshot(snap: Mapping[str, Any]) -> _Snapshot:
    if not isinstance(snap, Mapping) or snap.get("schema") != SNAPSHOT_SCHEMA:
        raise ValueError(f"rules snapshot: not a {SNAPSHOT_SCHEMA} snapshot")

    def int_of(value: object, what: str, *, optional: bool = False) -> Any:
        if value is None and optional:
            return None
        if not _is_int(value):
            raise ValueError(f"rules snapshot: {what} must be an integer")
        return value

    taken = int_of(snap.get("taken_us"), "taken_us")
    seq = int_of(snap.get("seq"), "seq")
    stale = int_of(snap.get("stale", 0), "stale")
    raw_active = snap.get("active")
    if not isinstance(raw_active, list):
        raise ValueError("rules snapshot: active must be a list")
    active = [Alert.from_dict(a) for a in raw_active]
    raw_nodes = snap.get("nodes")
    if not isinstance(raw_nodes, Mapping):
        raise ValueError("rules snapshot: nodes must be an object")
    nodes: dict[str, tuple[int, int | None, int | None]] = {}
    for node, st in raw_nodes.items():
        if not isinstance(st, Mapping):
            raise ValueError(f"rules snapshot: nodes.{node} must be an object")
        nodes[str(node)] = (
            int_of(st.get("silence_base_us"), f"nodes.{node}.silence_base_us"),
            int_of(st.get("last_ts_us"), f"nodes.{node}.last_ts_us", optional=True),
            int_of(st.get("last_fcnt"), f"nodes.{node}.last_fcnt", optional=True),
        )
    histories: list[dict[str, list[list[float]]]] = []
    for field, width in (("river_history", 2), ("slope_history", 3)):
        raw = snap.get(field, {})
        if not isinstance(raw, Mapping):
            raise ValueError(f"rules snapshot: {field} must be an object")
        parsed: dict[str, list[list[float]]] = {}
        for node, samples in raw.items():
            if not isinstance(samples, list) or not all(
                isinstance(s, list) and len(s) == width and _is_int(s[0])
                and all(_number(v) is not None for v in s[1:]) for s in samples
            ):
                raise ValueError(f"rules snapshot: {field}.{node} must be a list of [ts_us, value...] samples")
            parsed[str(node)] = samples
        histories.append(parsed)
    return _Snapshot(taken, seq, stale, active, nodes, histories[0], histories[1])


# ---------------------------------------------------------------------------------------------------------------
# Repeat until confirmed


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
                log.warning("alert %s expired unconfirmed after %.0f s", alert_id, self._deadline_us / _US_PER_S)
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
