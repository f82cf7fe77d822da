"""The bridge's line protocol to NGSI entities (Smart Data Models), for the NGSI sinks (:mod:`agent.bridge.ngsi`).

The NGSI sink takes the same lines as the InfluxDB sinks, so one conversion (:mod:`agent.bridge.lineproto`), one
write policy and one dead-letter path serve every sink; this module reads our own lines back and maps the ones
that describe a node or an alert (README "NGSI-LD export" has the table):

* every node reading -> the node's ``Device`` (``urn:ngsi-ld:Device:<site>:<node>``): ``deviceState``, ``rssi``,
  ``batteryLevel``, ``location``, ``controlledProperty``, ``dateLastValueReported``;
* ``weather`` and ``rain`` -> also ``WeatherObserved`` (``urn:ngsi-ld:WeatherObserved:<site>:<node>``), and
  ``water_level`` -> ``FloodMonitoring``; both with ``refDevice`` to the node's Device;
* an ``alert`` point -> an ``Alert`` (``urn:ngsi-ld:Alert:<site>:<type>:<node>``, one per condition: a raise sets
  ``validFrom``, a clear ``validTo``).

``node_health`` (the same values again), ``gateway_health``, ``gateway_status``, ``gateway_state``,
``command_result``, ``alert_ack`` and ``bridge_health`` points are not exported (they stay in InfluxDB).
Each attribute carries ``observedAt``: the reading's edge timestamp, ISO 8601 UTC with microseconds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ALERT_CATEGORY", "DEVICE_PROPERTY", "Fragment", "fragments", "iso_time", "parse_line", "to_v2"]

#: What each kind's Device controls (Smart Data Models ``controlledProperty`` vocabulary).
DEVICE_PROPERTY: Mapping[str, tuple[str, ...]] = {
    "sos": ("location", "motion"), "trap": ("motion",), "tilt": ("motion",), "heartbeat": ("batterySupply",),
    "water_level": ("waterLevel",), "rain": ("precipitation",),
    "weather": ("temperature", "humidity", "atmosphericPressure"),
}
#: Alert type -> (category, subCategory or None) of the Smart Data Models ``Alert``. The model has no category for
#: a technical fault; a silent node or a failing gateway is a safety matter here (an SOS may not get through).
ALERT_CATEGORY: Mapping[str, tuple[str, str | None]] = {
    "sos": ("security", None), "trap_fired": ("agriculture", None),
    "river_stage": ("naturalDisaster", "flood"), "river_rise": ("naturalDisaster", "floodRisk"),
    "slope_tilt": ("naturalDisaster", None), "slope_rate": ("naturalDisaster", None),
    "node_silent": ("security", None), "battery_low": ("security", None), "journal_near_quota": ("security", None),
    "module_lost": ("security", None), "journal_damaged": ("security", None),
}
_SEVERITY = {"emergency": "critical", "warning": "high", "info": "informational"}
#: River stages from which a river_stage alert is a flood rather than a flood risk (README "Alerts": 0-4).
_FLOOD_STAGE = 3
_NODE_KINDS = frozenset(DEVICE_PROPERTY)


@dataclass(slots=True)
class Fragment:
    """What one line says about one entity at one time: NGSI-LD normalized attributes.

    Attributes:
        id, type: the entity.
        site: the gateway's site (picks the tenant).
        ts_us: the reading's edge time, µs since the epoch (orders fragments of one entity).
        attrs: attribute name -> normalized NGSI-LD attribute.
        lines: indexes of the lines it comes from (dead-lettered together when the broker refuses it).
    """

    id: str
    type: str
    site: str
    ts_us: int
    attrs: dict[str, dict[str, Any]]
    lines: list[int] = field(default_factory=list)

    def entity(self, context: Sequence[str] | None = None) -> dict[str, Any]:
        """The NGSI-LD entity (``@context`` in it when given: application/ld+json)."""
        out: dict[str, Any] = {"id": self.id, "type": self.type, **self.attrs}
        if context is not None:
            out["@context"] = list(context)
        return out


def iso_time(ts_us: int) -> str:
    """µs since the epoch as ISO 8601 UTC with microseconds (``2026-01-01T00:00:00.000001Z``)."""
    t = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ts_us)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, float | str], int]:
    """One line of our own output: (measurement, tags, fields, timestamp in µs). Raises ValueError otherwise."""
    # The measurement and tags hold no string fields, so a '"' there (in a name) is plain text.
    head = _split(line, " ", quotes=False)[0]
    parts = [head, *_split(line[len(head) + 1:], " ")]
    if len(parts) != 3:
        raise ValueError(f"not a line of three parts: {line[:200]!r}")
    _, field_text, ts = parts
    items = _split(head, ",", quotes=False)
    measurement = _unescape(items[0])
    tags = dict(_pair(t, quotes=False) for t in items[1:])
    fields: dict[str, float | str] = {}
    for f in _split(field_text, ","):
        key, value = _pair(f, raw=True)
        if value.startswith('"'):
            fields[key] = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        else:
            fields[key] = float(value)
    return measurement, tags, fields, int(ts)


def _split(text: str, sep: str, quotes: bool = True) -> list[str]:
    """``text`` cut at every ``sep`` that is neither escaped by a backslash nor (``quotes``) inside a string
    field."""
    out: list[str] = []
    buf: list[str] = []
    i, quoted = 0, False
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            buf.append(text[i:i + 2])
            i += 2
            continue
        if c == '"' and quotes:
            quoted = not quoted
        if c == sep and not quoted:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(c)
        i += 1
    out.append("".join(buf))
    return out


def _pair(text: str, raw: bool = False, quotes: bool = True) -> tuple[str, str]:
    parts = _split(text, "=", quotes)
    key, value = parts[0], "=".join(parts[1:])
    return _unescape(key), value if raw else _unescape(value)


def _unescape(text: str) -> str:
    return text.replace("\\,", ",").replace("\\=", "=").replace("\\ ", " ")


def _prop(value: Any, at: str | None, unit: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "Property", "value": value}
    if at is not None:
        out["observedAt"] = at
    if unit is not None:
        out["unitCode"] = unit
    return out


def _rel(target: str, at: str) -> dict[str, Any]:
    return {"type": "Relationship", "object": target, "observedAt": at}


def _point(lat: float, lon: float, alt: float | None, at: str | None) -> dict[str, Any]:
    coords = [lon, lat] if alt is None else [lon, lat, alt]
    out: dict[str, Any] = {"type": "GeoProperty", "value": {"type": "Point", "coordinates": coords}}
    if at is not None:
        out["observedAt"] = at
    return out


def _location(fields: Mapping[str, Any], node: str, positions: Mapping[str, Any], at: str) -> dict[str, Any] | None:
    """A reported position (with its time) wins over the configured one (no time: it is not an observation)."""
    lat, lon = fields.get("lat_deg"), fields.get("lon_deg")
    if isinstance(lat, float) and isinstance(lon, float) and -90 <= lat <= 90 and -180 <= lon <= 180:
        alt = fields.get("alt_m")
        return _point(lat, lon, alt if isinstance(alt, float) else None, at)
    pos = positions.get(node)
    return _point(pos.lat_deg, pos.lon_deg, None, None) if pos is not None else None


def _state(kind: str, f: Mapping[str, Any]) -> str:
    """The node's state in words (the Device model's ``deviceState`` is free text)."""
    if kind == "sos":
        return "sos pressed" if f.get("pressed") == 1.0 else "sos cancelled"
    if kind == "trap":
        return "trap fired" if f.get("fired") == 1.0 else "trap armed"
    if kind == "tilt":
        return f"tilt x {f.get('tilt_x_deg', 0.0):.2f} deg, y {f.get('tilt_y_deg', 0.0):.2f} deg"
    return "reporting"


def _node(index: int, kind: str, tags: Mapping[str, str], f: Mapping[str, Any], ts: int,
          positions: Mapping[str, Any]) -> list[Fragment]:
    site, node = tags["site"], tags["node"]
    at = iso_time(ts)
    device_id = f"urn:ngsi-ld:Device:{site}:{node}"
    attrs: dict[str, dict[str, Any]] = {
        "controlledProperty": _prop(list(DEVICE_PROPERTY[kind]), None),
        "deviceState": _prop(_state(kind, f), at),
        "dateLastValueReported": _prop(at, None),
    }
    if isinstance(f.get("rssi"), float):
        attrs["rssi"] = _prop(f["rssi"], at)  # dBm; the model gives rssi no unit
    pct = f.get("battery_pct")
    if isinstance(pct, float) and 0 <= pct <= 100:
        attrs["batteryLevel"] = _prop(round(pct / 100, 4), at)
    where = _location(f, node, positions, at)
    if where is not None:
        attrs["location"] = where
    out = [Fragment(device_id, "Device", site, ts, attrs, [index])]
    obs: dict[str, dict[str, Any]] = {}
    obs_type = time_key = ""
    if kind == "weather":
        if isinstance(f.get("temperature_c"), float):
            obs["temperature"] = _prop(f["temperature_c"], at, "CEL")
        h = f.get("humidity_pct")
        if isinstance(h, float) and 0 <= h <= 100:
            obs["relativeHumidity"] = _prop(round(h / 100, 4), at, "C62")
        p = f.get("pressure_hpa")
        if isinstance(p, float) and p >= 0:
            obs["atmosphericPressure"] = _prop(p, at, "A97")
        obs_type, time_key = "WeatherObserved", "dateObserved"
    elif kind == "rain":
        r = f.get("rain_mm")
        if isinstance(r, float) and r >= 0:
            obs["precipitation"] = _prop(r, at, "MMT")
        obs_type, time_key = "WeatherObserved", "dateObserved"
    elif kind == "water_level":
        if isinstance(f.get("level_cm"), float):
            obs["currentLevel"] = _prop(f["level_cm"], at, "CMT")
        obs_type, time_key = "FloodMonitoring", "observationDateTime"
    if obs:
        obs[time_key] = _prop(at, None)
        obs["refDevice"] = _rel(device_id, at)
        if where is not None:
            obs["location"] = where
        out.append(Fragment(f"urn:ngsi-ld:{obs_type}:{site}:{node}", obs_type, site, ts, obs, [index]))
    return out


def _alert(index: int, tags: Mapping[str, str], f: Mapping[str, Any], ts: int) -> Fragment | None:
    site, node, atype = tags.get("site"), tags.get("node"), tags.get("type")
    if not site or not node or not atype:
        return None
    at = iso_time(ts)
    category, sub = ALERT_CATEGORY.get(atype, ("security", None))
    if atype == "river_stage" and isinstance(f.get("level"), float) and f["level"] < _FLOOD_STAGE:
        sub = "floodRisk"
    attrs: dict[str, dict[str, Any]] = {
        "category": _prop(category, at),
        "severity": _prop(_SEVERITY.get(tags.get("severity", ""), "medium"), at),
        "alertSource": _rel(f"urn:ngsi-ld:Device:{site}:{node}", at),
        "dateIssued": _prop(at, None),
        ("validFrom" if f.get("raised") == 1.0 else "validTo"): _prop(at, None),
    }
    if sub is not None:
        attrs["subCategory"] = _prop(sub, at)
    if isinstance(f.get("message"), str):
        attrs["description"] = _prop(f["message"], at)
    if isinstance(f.get("value"), float):
        attrs["measuredValue"] = _prop(f["value"], at)
    if isinstance(f.get("threshold"), float):
        attrs["thresholdValue"] = _prop(f["threshold"], at)
    where = _location(f, node, {}, at)
    if where is not None:
        attrs["location"] = where
    return Fragment(f"urn:ngsi-ld:Alert:{site}:{atype}:{node}", "Alert", site, ts, attrs, [index])


def fragments(lines: Sequence[str], positions: Mapping[str, Any]) -> tuple[list[Fragment], int]:
    """The entity fragments of a batch of lines, and how many lines map to none (not exported).

    Raises:
        ValueError: a line is not one of ours (the caller treats it as refused).
    """
    out: list[Fragment] = []
    skipped = 0
    for i, line in enumerate(lines):
        if not line:
            continue
        measurement, tags, f, ts = parse_line(line)
        if measurement in _NODE_KINDS and "site" in tags and "node" in tags:
            out.extend(_node(i, measurement, tags, f, ts, positions))
        elif measurement == "alert" and (frag := _alert(i, tags, f, ts)) is not None:
            out.append(frag)
        else:
            skipped += 1
    return out, skipped


#: Orion refuses these characters in a text value; their full-width forms read the same (an alert's message).
_ORION_FORBIDDEN = str.maketrans({c: chr(ord(c) + 0xFEE0) for c in "<>\"'=;()"})
_V2_TYPES = {bool: "Boolean", int: "Number", float: "Number", str: "Text", list: "StructuredValue"}


def to_v2(frag: Fragment) -> dict[str, Any]:
    """An entity fragment in NGSI v2 (Orion) form: ``observedAt`` as ``TimeInstant`` metadata, ``unitCode`` as
    metadata, a GeoProperty as ``geo:json``, a Relationship as type ``Relationship``."""
    out: dict[str, Any] = {"id": frag.id, "type": frag.type}
    for name, a in frag.attrs.items():
        meta: dict[str, Any] = {}
        if "observedAt" in a:
            meta["TimeInstant"] = {"type": "DateTime", "value": a["observedAt"]}
        if "unitCode" in a:
            meta["unitCode"] = {"type": "Text", "value": a["unitCode"]}
        if a["type"] == "GeoProperty":
            attr = {"type": "geo:json", "value": a["value"]}
        elif a["type"] == "Relationship":
            attr = {"type": "Relationship", "value": a["object"]}
        elif name.startswith("date") or name in ("validFrom", "validTo", "observationDateTime"):
            attr = {"type": "DateTime", "value": a["value"]}
        else:
            value = a["value"]
            if isinstance(value, str):
                value = value.translate(_ORION_FORBIDDEN)
            attr = {"type": _V2_TYPES.get(type(value), "StructuredValue"), "value": value}
        if meta:
            attr["metadata"] = meta
        out[name] = attr
    return out
