"""Alerts and what decides on them offline: the Alert event, the node facts the rules need, severities, the river
stage names, and the siren and lamp decisions (pure functions of the active alerts). See agent/rules/__init__.py."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

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

_US_PER_S = 1_000_000
_US_PER_H = 3_600_000_000


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

