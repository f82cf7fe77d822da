"""From MQTT messages to InfluxDB line protocol, following README "InfluxDB schema" exactly.

One :class:`Serializer` serves both sinks. :meth:`Serializer.convert` takes one MQTT message (topic and payload)
and returns the lines to write plus the parts that can never be written, each with a reason, for the dead-letter
store. It never raises for bad input.

What is written, per reading of a ``denen.readings/1`` batch:

* a point in the measurement named by the reading's ``kind`` (``sos``, ``trap``, ``water_level``, ...), tags
  ``site, gateway, node, name, kind``, fields: every value, then ``fcnt``, ``rssi``, ``snr``, ``auth_ok``,
  ``clock_ok``;
* a ``node_health`` point (tags as above; ``rssi``, ``snr``, ``battery_v``, ``fcnt``) for every node reading;
* for ``gateway_health`` readings, a ``gateway_health`` point (tags ``site, gateway``; the values) and nothing else;
* for ``alert`` readings (an alert the gateway's edge rules raised or cleared, README "Alerts"), an ``alert`` point:
  tags ``site, gateway, node`` (the node concerned, or the gateway id for gateway conditions), ``name``, ``type``,
  ``severity``; fields: every value (``raised`` 1/0, and ``value``, ``threshold``, ``level``, ``lat_deg``,
  ``lon_deg`` where the alert has them) and ``message`` as a string.

and per ``denen.status/1`` document a ``gateway_status`` point (tag ``gateway``; ``online`` 1/0 and the ``agent``
version as a string), at the document's ``ts_us`` or, for the broker-published Last Will which has none, at the
time the bridge received it.

Every point carries the reading's edge timestamp ``ts_us`` (precision ``u``), so a redelivered reading produces
byte-identical lines and overwrites itself. One exception: a reading stamped before 2020 by a gateway whose clock
was never set (``"clock": "unsynced"``; an SOS pressed on a board that booted in 1970 goes out at once, before
NTP) is written at the time the bridge received it, with ``clock_ok=0``, so it is seen where people look; a
redelivery of such a reading may make a second point. ``"clock": "corrected"`` (stamped before the sync, given
its true time by the gateway) counts as a good clock: ``clock_ok=1``. Every number is written as a float (``3.0``, never ``3i``: an integer
would fix the field's type and every later float would conflict); booleans become ``1.0``/``0.0``.

Rejected, with a reason code (the dead-letter store keeps the content):

=========================  ===========================================================================
``invalid_json``           the payload is not UTF-8 JSON (the whole message)
``invalid_schema``         not a ``denen.readings/1`` / ``denen.status/1`` document (the whole message)
``unknown_schema``         a schema or major version this bridge does not know (the whole message)
``wrong_gateway``          the document names another gateway than its topic (the whole message): the
                           broker's ACL vouches for the topic, so the topic wins
``invalid_reading``        one reading does not follow the schema (only that reading)
``timestamp_before_2020``  ``ts_us`` before 2020-01-01 on a clock the gateway calls synced or corrected: never a
                           real reading of this product
``not_finite``             a value is NaN or infinite, which line protocol cannot carry
=========================  ===========================================================================
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from agent.clock import EPOCH_FLOOR_US

__all__ = [
    "READINGS_SCHEMA",
    "STATUS_SCHEMA",
    "Converted",
    "Reject",
    "Serializer",
    "escape_key",
    "escape_measurement",
    "escape_string_field",
    "escape_tag_value",
    "format_float",
    "valid_key",
]

READINGS_SCHEMA = "denen.readings/1"
STATUS_SCHEMA = "denen.status/1"

NODE_KINDS = frozenset({"sos", "trap", "water_level", "rain", "tilt", "weather", "heartbeat"})
KINDS = NODE_KINDS | {"gateway_health", "alert"}
#: Kinds the gateway makes itself (node ``gateway``).
GATEWAY_KINDS = frozenset({"gateway_health", "alert"})
LANES = frozenset({"sos", "alarm", "telemetry", "diagnostics"})
#: Field names the bridge adds to a reading's measurement; a value of the same name would collide with them.
RESERVED_FIELDS = frozenset({"fcnt", "rssi", "snr", "auth_ok", "clock_ok"})

_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\Z")
_NODE_RE = re.compile(r"(?:[0-9a-f]{8}|gateway)\Z")
_BATCH_KEYS = frozenset({"schema", "gateway", "site", "lane", "sent_us", "readings"})
_READING_REQUIRED = ("id", "node", "fcnt", "kind", "lane", "ts_us", "clock", "values")
_READING_KEYS = frozenset(_READING_REQUIRED) | {"name", "radio", "rssi", "snr", "auth", "receipt", "alert"}
_ALERT_REQUIRED = ("id", "key", "type", "state", "severity", "node", "name", "message")
_ALERT_KEYS = frozenset(_ALERT_REQUIRED) | {"unit", "reading"}
#: Alert types are tags, so they must stay few; a new type of a newer gateway still fits this pattern.
_ALERT_TYPE_RE = re.compile(r"[a-z][a-z0-9_]{0,39}\Z")
_NODE_HEX_RE = re.compile(r"[0-9a-f]{8}\Z")
_STATUS_KEYS = frozenset({"schema", "gateway", "state", "agent", "ts_us"})
_FCNT_MAX = 0xFFFFFFFF
#: Control characters cannot travel in a line protocol tag (a newline ends the line).
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_TAG_CACHE_MAX = 50_000


# -- escaping (https://docs.influxdata.com/influxdb/v1/write_protocols/line_protocol_reference/) ------------------
def escape_measurement(name: str) -> str:
    """Escape a measurement name: commas and spaces."""
    return name.replace(",", "\\,").replace(" ", "\\ ") if _needs(name, ", ") else name


def escape_key(key: str) -> str:
    """Escape a tag key or field key: commas, equals signs and spaces.

    A backslash is not an escape character of its own in InfluxDB 1.x and is stored as written, except before one
    of those three; so a key ending in a backslash cannot be written (:func:`valid_key` refuses it).
    """
    return key.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ") if _needs(key, ",= ") else key


def valid_key(key: str) -> bool:
    """Whether a field key can be written: not empty, no control characters, no trailing backslash."""
    return bool(key) and not _CONTROL_RE.search(key) and not key.endswith("\\")


def escape_tag_value(value: str) -> str:
    """Escape a tag value: commas, equals signs and spaces.

    Control characters (a newline would end the line) become spaces, and trailing backslashes are dropped:
    InfluxDB 1.x refuses a tag value ending in a backslash ("invalid tag format") and has no escape for it.
    Only free-text names can contain either; ids are checked against the schema's patterns first.
    """
    if _CONTROL_RE.search(value):
        value = _CONTROL_RE.sub(" ", value)
    value = value.rstrip("\\")
    if _needs(value, ",= "):
        value = value.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")
    return value


def escape_string_field(value: str) -> str:
    """Quote a string field value: backslashes and double quotes are escaped.

    Line protocol cannot carry a line break even inside a quoted string (InfluxDB 1.x refuses it), so CR and LF
    become spaces: a message stays readable and the line stays one line.
    """
    value = value.replace("\r", " ").replace("\n", " ")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_float(value: float) -> str:
    """A float field value: the shortest text that reads back as the same float (``3.0``, ``182.5``,
    ``1e+16``). Never an integer literal. The caller checks that the value is finite."""
    return repr(float(value))


def _needs(text: str, chars: str) -> bool:
    return any(c in text for c in chars)


# -- results ---------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Reject:
    """Something that can never be written, for the dead-letter store.

    Attributes:
        reason: short code (module docstring table), counted per code.
        detail: what exactly is wrong, in plain English.
        content: what is kept: the raw payload (``kind`` "payload") or one reading as JSON text ("reading").
        kind: ``"payload"`` when the whole message is rejected, ``"reading"`` for one reading of it.
        reading_id: the reading's ``id`` when known.
    """

    reason: str
    detail: str
    content: bytes
    kind: str = "payload"
    reading_id: str | None = None


@dataclass(slots=True)
class Converted:
    """The outcome for one MQTT message.

    Attributes:
        lines: line protocol lines, without newlines.
        sources: for each line, the id of the reading it comes from (``status:<gateway>`` for status points).
        rejects: parts of the message that can never be written.
        readings: readings in the message that produced lines.
        gateway: the gateway named by the topic, or None for a topic outside the scheme.
    """

    lines: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    readings: int = 0
    gateway: str | None = None


class _Invalid(Exception):
    """Internal: a document or reading breaks the schema (never leaves this module)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _is_int(v: object) -> bool:
    return type(v) is int


def _is_number(v: object) -> bool:
    return (type(v) is float or type(v) is int) and not isinstance(v, bool)


class Serializer:
    """Converts MQTT messages of the denen topic scheme into line protocol.

    Args:
        topic_prefix: the gateways' ``mqtt.topic_prefix`` (``denen/v1``); topics are
            ``<prefix>/<gateway>/readings/<lane>`` and ``<prefix>/<gateway>/status``.
        now_us: clock for status documents without ``ts_us`` (the Last Will), µs since the epoch.
    """

    def __init__(self, topic_prefix: str = "denen/v1", *, now_us: Any = None) -> None:
        self.prefix = topic_prefix.rstrip("/") + "/"
        self._now_us = now_us or (lambda: time.time_ns() // 1000)
        # Tag sets repeat for every reading of a node; escaping them once per node is most of the saving.
        self._tags: dict[tuple[Any, ...], str] = {}
        self._field_keys: dict[str, str] = {}

    # -- entry point -------------------------------------------------------------------------------------------
    def convert(self, topic: str, payload: bytes) -> Converted:
        """Convert one message. Never raises for bad input: it becomes a :class:`Reject`."""
        out = Converted()
        rest = topic[len(self.prefix):] if topic.startswith(self.prefix) else None
        parts = rest.split("/") if rest else []
        if len(parts) == 3 and parts[1] == "readings":
            kind, gateway = "readings", parts[0]
        elif len(parts) == 2 and parts[1] == "status":
            kind, gateway = "status", parts[0]
        else:
            out.rejects.append(Reject("invalid_schema", f"topic {topic} is not part of the topic scheme "
                                      f"{self.prefix}<gateway>/readings/<lane> or .../status", payload))
            return out
        out.gateway = gateway
        try:
            doc = json.loads(payload)
        except (UnicodeDecodeError, ValueError) as exc:
            # json.JSONDecodeError is a ValueError; a payload that is not UTF-8 raises UnicodeDecodeError.
            out.rejects.append(Reject("invalid_json", f"payload is not UTF-8 JSON: {exc}", payload))
            return out
        try:
            try:
                if kind == "readings":
                    self._readings(doc, gateway, topic, out)
                else:
                    self._status(doc, gateway, out)
            except (TypeError, OverflowError, ValueError) as exc:
                raise _Invalid("invalid_schema", f"{type(exc).__name__}: {exc}") from None
        except _Invalid as exc:
            out.lines.clear()
            out.sources.clear()
            out.readings = 0
            out.rejects.append(Reject(exc.reason, exc.detail, payload))
        return out

    # -- reading batches ---------------------------------------------------------------------------------------
    def _readings(self, doc: Any, gateway: str, topic: str, out: Converted) -> None:
        if not isinstance(doc, dict):
            raise _Invalid("invalid_schema", "payload is not a JSON object")
        schema = doc.get("schema")
        if schema != READINGS_SCHEMA:
            raise _Invalid("unknown_schema" if isinstance(schema, str) else "invalid_schema",
                           f"schema {schema!r} is not {READINGS_SCHEMA!r}; a newer major version needs a newer "
                           "bridge" if isinstance(schema, str) else "'schema' is missing")
        extra = doc.keys() - _BATCH_KEYS
        if extra:
            raise _Invalid("invalid_schema", f"unknown keys in the batch: {', '.join(sorted(extra))}")
        for key in ("gateway", "site"):
            value = doc.get(key)
            if not isinstance(value, str) or not _ID_RE.match(value):
                raise _Invalid("invalid_schema", f"'{key}' is missing or not a valid id: {value!r}")
        if doc["gateway"] != gateway:
            raise _Invalid("wrong_gateway", f"the batch names gateway {doc['gateway']!r} but was published under "
                           f"{topic}")
        if doc.get("lane") not in LANES:
            raise _Invalid("invalid_schema", f"'lane' is missing or unknown: {doc.get('lane')!r}")
        if not _is_int(doc.get("sent_us")):
            raise _Invalid("invalid_schema", "'sent_us' is missing or not an integer")
        readings = doc.get("readings")
        if not isinstance(readings, list) or not readings:
            raise _Invalid("invalid_schema", "'readings' is missing, not a list, or empty")
        site = doc["site"]
        for reading in readings:
            try:
                try:
                    self._reading(reading, site, gateway, out)
                except (TypeError, OverflowError, ValueError) as exc:
                    # JSON can hold what no check above expects (a list where a name goes, an integer beyond
                    # the float range): that reading is malformed, the others of the batch are not.
                    raise _Invalid("invalid_reading", f"{type(exc).__name__}: {exc}") from None
            except _Invalid as exc:
                rid = reading.get("id") if isinstance(reading, dict) and isinstance(reading.get("id"), str) else None
                content = json.dumps(reading, ensure_ascii=False, separators=(",", ":")).encode()
                out.rejects.append(Reject(exc.reason, exc.detail, content, "reading", rid))

    def _reading(self, r: Any, site: str, gateway: str, out: Converted) -> None:
        if not isinstance(r, dict):
            raise _Invalid("invalid_reading", "a reading is not a JSON object")
        missing = [k for k in _READING_REQUIRED if k not in r]
        if missing:
            raise _Invalid("invalid_reading", f"reading lacks {', '.join(missing)}")
        if len(r) > len(_READING_REQUIRED):
            extra = r.keys() - _READING_KEYS
            if extra:
                raise _Invalid("invalid_reading", f"unknown keys in the reading: {', '.join(sorted(extra))}")
        node, fcnt, kind, ts = r["node"], r["fcnt"], r["kind"], r["ts_us"]
        if not isinstance(node, str) or not _NODE_RE.match(node):
            raise _Invalid("invalid_reading", f"node {node!r} is not 8 lowercase hex digits or 'gateway'")
        if not _is_int(fcnt) or not 0 <= fcnt <= _FCNT_MAX:
            raise _Invalid("invalid_reading", f"fcnt {fcnt!r} is not an integer 0..4294967295")
        if kind not in KINDS:
            raise _Invalid("invalid_reading", f"kind {kind!r} is unknown")
        if (kind in GATEWAY_KINDS) != (node == "gateway"):
            raise _Invalid("invalid_reading", f"kind {kind} does not fit node {node}")
        if ("alert" in r) != (kind == "alert"):
            raise _Invalid("invalid_reading", "an alert object belongs to readings of kind alert, and only there")
        rid = f"{gateway}/{node}/{fcnt}"
        if r["id"] != rid:
            raise _Invalid("invalid_reading", f"id {r['id']!r} is not <gateway>/<node>/<fcnt> = {rid!r}")
        if r["lane"] not in LANES:
            raise _Invalid("invalid_reading", f"lane {r['lane']!r} is unknown")
        if not _is_int(ts):
            raise _Invalid("invalid_reading", f"ts_us {ts!r} is not an integer")
        clock = r["clock"]
        if clock not in ("synced", "unsynced", "corrected"):
            raise _Invalid("invalid_reading", f"clock {clock!r} is not synced, unsynced or corrected")
        if ts < EPOCH_FLOOR_US:
            if clock != "unsynced":
                # A clock that claims to be right yet says 1970: a bug, not a time. The dead-letter store keeps it.
                raise _Invalid("timestamp_before_2020", f"ts_us {ts} is before 2020-01-01 (clock {clock})")
            # A board that booted without a clock: writing its stamp would put the point decades back where nobody
            # looks (an SOS among them). The bridge's own clock is the best time there is for it.
            ts = self._now_us()
        name = r.get("name")
        if name is not None and not isinstance(name, str):
            raise _Invalid("invalid_reading", "name is not text")
        rssi, snr, auth = r.get("rssi"), r.get("snr"), r.get("auth")
        for key, v in (("rssi", rssi), ("snr", snr)):
            if v is not None and not _is_number(v):
                raise _Invalid("invalid_reading", f"{key} {v!r} is not a number")
            if v is not None and not math.isfinite(v):
                raise _Invalid("not_finite", f"{key} is {v}")
        if auth is not None and auth not in ("mic", "none", "local"):
            raise _Invalid("invalid_reading", f"auth {auth!r} is not mic, none or local")
        if "radio" in r and not isinstance(r["radio"], str):
            raise _Invalid("invalid_reading", "radio is not text")
        if "receipt" in r and not isinstance(r["receipt"], bool):
            raise _Invalid("invalid_reading", "receipt is not true or false")
        values = r["values"]
        if not isinstance(values, dict):
            raise _Invalid("invalid_reading", "values is not an object")
        fields: list[str] = []
        keys = self._field_keys
        for key, v in values.items():
            if type(v) is not float:
                if v is True or v is False:
                    v = 1.0 if v else 0.0
                elif type(v) is int:
                    v = float(v)
                else:
                    raise _Invalid("invalid_reading", f"values.{key} {v!r} is not a number")
            if not (v - v == 0.0):  # NaN and ±inf, without a function call per value
                raise _Invalid("not_finite", f"values.{key} is {v}")
            ek = keys.get(key)
            if ek is None:
                if key in RESERVED_FIELDS or not valid_key(key):
                    raise _Invalid("invalid_reading", f"values key {key!r} collides with a field the bridge adds, "
                                   "or cannot be a field key")
                ek = keys[key] = escape_key(key)
            fields.append(f"{ek}={v!r}")

        if kind == "gateway_health":
            if not fields:
                raise _Invalid("invalid_reading", "gateway_health reading without values")
            prefix = self._tag_prefix(("gateway_health", site, gateway))
            out.lines.append(f"{prefix} {','.join(fields)} {ts}")
            out.sources.append(rid)
            out.readings += 1
            return
        if kind == "alert":
            out.lines.append(self._alert(r["alert"], fields, site, gateway, name, ts))
            out.sources.append(rid)
            out.readings += 1
            return

        fcnt_f = f"{float(fcnt)!r}"
        extra = [f"fcnt={fcnt_f}"]
        health = []
        if rssi is not None:
            extra.append(f"rssi={float(rssi)!r}")
            health.append(extra[-1])
        if snr is not None:
            extra.append(f"snr={float(snr)!r}")
            health.append(extra[-1])
        battery = values.get("battery_v")
        if battery is not None:
            health.append(f"battery_v={float(battery)!r}")
        health.append(f"fcnt={fcnt_f}")
        if auth is not None and auth != "local":
            # local: measured by the gateway itself (GPIO); there is no radio frame to authenticate, so the field
            # is absent rather than 0, which dashboards show as "unauthenticated".
            extra.append("auth_ok=1.0" if auth == "mic" else "auth_ok=0.0")
        extra.append("clock_ok=0.0" if clock == "unsynced" else "clock_ok=1.0")
        fields.extend(extra)

        tags = self._node_tags(kind, site, gateway, node, name)
        lines, sources = out.lines, out.sources
        lines.append(f"{kind},{tags} {','.join(fields)} {ts}")
        lines.append(f"node_health,{tags} {','.join(health)} {ts}")
        sources.append(rid)
        sources.append(rid)
        out.readings += 1

    def _alert(self, alert: Any, fields: list[str], site: str, gateway: str, name: str | None, ts: int) -> str:
        if not isinstance(alert, dict):
            raise _Invalid("invalid_reading", "alert is not an object")
        missing = [k for k in _ALERT_REQUIRED if k not in alert]
        if missing:
            raise _Invalid("invalid_reading", f"alert lacks {', '.join(missing)}")
        extra = alert.keys() - _ALERT_KEYS
        if extra:
            raise _Invalid("invalid_reading", f"unknown keys in the alert: {', '.join(sorted(extra))}")
        atype, state, severity, node = alert["type"], alert["state"], alert["severity"], alert["node"]
        if not isinstance(atype, str) or not _ALERT_TYPE_RE.match(atype):
            raise _Invalid("invalid_reading", f"alert type {atype!r} is not a type name")
        if state not in ("raised", "cleared"):
            raise _Invalid("invalid_reading", f"alert state {state!r} is not raised or cleared")
        if severity not in ("emergency", "warning", "info"):
            raise _Invalid("invalid_reading", f"alert severity {severity!r} is unknown")
        if node is not None and (not isinstance(node, str) or not _NODE_HEX_RE.match(node)):
            raise _Invalid("invalid_reading", f"alert node {node!r} is not 8 lowercase hex digits")
        for key in ("id", "key", "message"):
            if not isinstance(alert[key], str):
                raise _Invalid("invalid_reading", f"alert {key} is not text")
        for key in ("name", "unit", "reading"):
            if alert.get(key) is not None and not isinstance(alert[key], str):
                raise _Invalid("invalid_reading", f"alert {key} is not text")
        if not any(f.startswith("raised=") for f in fields):
            raise _Invalid("invalid_reading", "alert reading without values.raised")
        # A gateway condition (journal near quota, module lost) has no node: the gateway id stands in, and the
        # reading's own name (the gateway's) when the alert names nobody.
        label = alert["name"] or name
        key = ("alert", site, gateway, node or gateway, label, atype, severity)
        prefix = self._tags.get(key)
        if prefix is None:
            tags = [f"gateway={gateway}"]
            ename = escape_tag_value(label) if label else ""
            if ename:
                tags.append(f"name={ename}")
            tags += [f"node={node or gateway}", f"severity={severity}", f"site={site}", f"type={atype}"]
            prefix = self._remember(key, "alert," + ",".join(tags))
        return f"{prefix} {','.join(fields)},message={escape_string_field(alert['message'])} {ts}"

    def _node_tags(self, kind: str, site: str, gateway: str, node: str, name: str | None) -> str:
        key = ("node", kind, site, gateway, node, name)
        cached = self._tags.get(key)
        if cached is None:
            # Sorted by key (gateway, kind, name, node, site): InfluxDB's own order, so it skips re-sorting.
            tags = [f"gateway={gateway}", f"kind={kind}"]
            if name:
                ename = escape_tag_value(name)
                if ename:
                    tags.append(f"name={ename}")
            tags.append(f"node={node}")
            tags.append(f"site={site}")
            cached = self._remember(key, ",".join(tags))
        return cached

    def _tag_prefix(self, key: tuple[Any, ...]) -> str:
        cached = self._tags.get(key)
        if cached is None:
            _, site, gateway = key  # gateway_health
            cached = self._remember(key, f"gateway_health,gateway={gateway},site={site}")
        return cached

    def _remember(self, key: tuple[Any, ...], text: str) -> str:
        if len(self._tags) >= _TAG_CACHE_MAX:
            self._tags.clear()  # bounded: a node renamed every minute must not grow memory forever
        self._tags[key] = text
        return text

    # -- status documents --------------------------------------------------------------------------------------
    def _status(self, doc: Any, gateway: str, out: Converted) -> None:
        if not isinstance(doc, dict):
            raise _Invalid("invalid_schema", "payload is not a JSON object")
        schema = doc.get("schema")
        if schema != STATUS_SCHEMA:
            raise _Invalid("unknown_schema" if isinstance(schema, str) else "invalid_schema",
                           f"schema {schema!r} is not {STATUS_SCHEMA!r}")
        extra = doc.keys() - _STATUS_KEYS
        if extra:
            raise _Invalid("invalid_schema", f"unknown keys in the status: {', '.join(sorted(extra))}")
        if doc.get("gateway") != gateway:
            raise _Invalid("wrong_gateway", f"the status names gateway {doc.get('gateway')!r}, its topic {gateway!r}")
        state = doc.get("state")
        if state not in ("online", "offline"):
            raise _Invalid("invalid_schema", f"state {state!r} is not online or offline")
        agent = doc.get("agent")
        if agent is not None and not isinstance(agent, str):
            raise _Invalid("invalid_schema", "agent is not text")
        ts = doc.get("ts_us")
        if ts is None:
            ts = self._now_us()  # the Last Will carries no time: the broker sent it when the gateway vanished
        elif not _is_int(ts):
            raise _Invalid("invalid_schema", f"ts_us {ts!r} is not an integer")
        elif ts < EPOCH_FLOOR_US:
            raise _Invalid("timestamp_before_2020", f"ts_us {ts} is before 2020-01-01")
        fields = ["online=1.0" if state == "online" else "online=0.0"]
        if agent is not None:
            fields.append(f"agent={escape_string_field(agent)}")
        out.lines.append(f"gateway_status,gateway={gateway} {','.join(fields)} {ts}")
        out.sources.append(f"status:{gateway}")

