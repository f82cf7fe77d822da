"""A ``denen.readings/1`` batch to points: the reading envelope checked in one place (:meth:`ReadingPoints._checked`),
then each reading mapped to its points (README "InfluxDB schema"; the rules: :mod:`agent.bridge.lineproto`).

This is the bridge's hot path (``tests/bench/bench_bridge.py``): a reading costs a few function calls, none per
value or per point, and the tag sets of a node are escaped once and cached.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from typing import Any

from agent.bridge.dedupe import alert_key, frame_key
from agent.bridge.encoding import (
    CONTROL_RE,
    FIELD_KEY_MAX,
    FIELDS_MAX,
    escape_key,
    escape_string_field,
    escape_tag_value,
    valid_key,
)
from agent.bridge.registry import GatewayRegistry
from agent.bridge.schema import (
    GATEWAY_KINDS,
    ID_RE,
    KINDS,
    LANES,
    READINGS_SCHEMA,
    RESERVED_FIELDS,
    SHAPE_ERRORS,
    Converted,
    Invalid,
    Reject,
    checked_object,
    is_int,
    is_number,
    lone_surrogate,
    reading_json,
    show,
)
from agent.gateway.clock import EPOCH_FLOOR_US

__all__ = ["ReadingPoints"]

_NODE_RE = re.compile(r"(?:[0-9a-f]{8}|gateway)\Z")
_BATCH_KEYS = frozenset({"schema", "gateway", "site", "lane", "sent_us", "readings"})
_READING_REQUIRED = ("id", "node", "fcnt", "kind", "lane", "ts_us", "clock", "values")
_READING_REQUIRED_SET = frozenset(_READING_REQUIRED)
_READING_KEYS = _READING_REQUIRED_SET | {"name", "radio", "rssi", "snr", "auth", "receipt", "alert"}
_ALERT_REQUIRED = ("id", "key", "type", "state", "severity", "node", "name", "message")
_ALERT_KEYS = frozenset(_ALERT_REQUIRED) | {"unit", "reading"}
#: Alert types are tags, so they must stay few; a new type of a newer gateway still fits this pattern.
_ALERT_TYPE_RE = re.compile(r"[a-z][a-z0-9_]{0,39}\Z")
_NODE_HEX_RE = re.compile(r"[0-9a-f]{8}\Z")
_FCNT_MAX = 0xFFFFFFFF
_TAG_CACHE_MAX = 50_000


class ReadingPoints:
    """The readings half of :class:`agent.bridge.lineproto.Serializer` (which sets these attributes)."""

    prefix: str
    registry: GatewayRegistry
    max_future_us: int
    _now_us: Callable[[], int]
    _tags: dict[tuple[Any, ...], str]
    _field_keys: dict[str, str]
    #: The redis key prefix of frame claims; None: no de-duplication (no claims, no ``node_link`` points).
    dedupe_prefix: str | None

    _site: Callable[[str, str | None, Converted], str]
    _outside_window: Callable[..., int]

    def batch_of_one(self, topic: str, reading: bytes) -> bytes:
        """A readings batch holding one reading (a stored dead letter), as its gateway would have sent it on
        ``topic``: the reading's own bytes go in unchanged, so the checks judge them as they did the first time."""
        prefix = self.prefix
        parts = topic[len(prefix):].split("/") if topic.startswith(prefix) else []
        gateway = parts[0] if parts else ""
        lane = parts[2] if len(parts) == 3 and parts[2] in LANES else "telemetry"
        info = self.registry.lookup(gateway) if gateway else None
        head = json.dumps({"schema": READINGS_SCHEMA, "gateway": gateway, "site": info.site if info else "unknown",
                           "lane": lane, "sent_us": time.time_ns() // 1000})
        return head[:-1].encode() + b', "readings": [' + reading + b"]}"

    def _readings(self, doc: Any, gateway: str, topic: str, out: Converted, check_text: bool, latest: int) -> None:
        if not isinstance(doc, dict):
            raise Invalid("invalid_schema", "payload is not a JSON object")
        schema = doc.get("schema")
        if schema != READINGS_SCHEMA:
            raise Invalid("unknown_schema" if isinstance(schema, str) else "invalid_schema",
                          f"schema {show.repr(schema)} is not {READINGS_SCHEMA!r}; a newer major version needs a "
                          "newer bridge" if isinstance(schema, str) else "'schema' is missing")
        extra = doc.keys() - _BATCH_KEYS
        if extra:
            raise Invalid("invalid_schema", f"unknown keys in the batch: {', '.join(map(repr, sorted(extra)))}")
        for key in ("gateway", "site"):
            value = doc.get(key)
            if not isinstance(value, str) or not ID_RE.match(value):
                raise Invalid("invalid_schema", f"'{key}' is missing or not a valid id: {show.repr(value)}")
        if doc["gateway"] != gateway:
            raise Invalid("wrong_gateway", f"the batch names gateway {doc['gateway']!r} but was published under "
                          f"{topic}")
        if doc.get("lane") not in LANES:
            raise Invalid("invalid_schema", f"'lane' is missing or unknown: {show.repr(doc.get('lane'))}")
        if not is_int(doc.get("sent_us")):
            raise Invalid("invalid_schema", "'sent_us' is missing or not an integer")
        readings = doc.get("readings")
        if not isinstance(readings, list) or not readings:
            raise Invalid("invalid_schema", "'readings' is missing, not a list, or empty")
        site = self._site(gateway, doc["site"], out)
        for reading in readings:
            try:
                try:
                    if check_text:
                        bad = lone_surrogate(reading)
                        if bad is not None:
                            raise Invalid("invalid_text", f"the reading holds a lone surrogate, which is not "
                                          f"text: {show.repr(bad)}")
                    self._reading(reading, site, gateway, out, latest)
                except SHAPE_ERRORS as exc:
                    # JSON can hold what no check above expects (a list where a name goes, an integer beyond
                    # the float range): that reading is malformed, the others of the batch are not.
                    raise Invalid("invalid_reading", f"{type(exc).__name__}: {exc}") from None
            except Invalid as exc:
                rid = reading.get("id") if isinstance(reading, dict) and isinstance(reading.get("id"), str) else None
                out.rejects.append(Reject(exc.reason, exc.detail, reading_json(reading), "reading", rid))

    def _reading(self, r: Any, site: str, gateway: str, out: Converted, latest: int) -> None:
        ts, node, kind, rid, name, clock, rssi, snr, auth = self._checked(r, gateway, latest)
        values = r["values"]
        fields: list[str] = []
        keys = self._field_keys
        for key, v in values.items():
            if type(v) is not float:
                if v is True or v is False:
                    v = 1.0 if v else 0.0
                elif type(v) is int:
                    v = float(v)
                else:
                    raise Invalid("invalid_reading", f"values.{key} {show.repr(v)} is not a number")
            if not (v - v == 0.0):  # NaN and ±inf, without a function call per value
                raise Invalid("not_finite", f"values.{key} is {v}")
            ek = keys.get(key)
            if ek is None:
                ek = keys[key] = self._field_key(key)
            fields.append(f"{ek}={v!r}")
        lines, sources = out.lines, out.sources
        if kind == "gateway_health":
            if not fields:
                raise Invalid("invalid_reading", "gateway_health reading without values")
            lines.append(f"{self._tag_prefix(('gateway_health', site, gateway))} {_field_set(fields)} {ts}")
        elif kind == "alert":
            lines.append(self._alert(r["alert"], fields, site, gateway, name, ts))
            key = alert_key(self.dedupe_prefix, r["alert"], gateway) if self.dedupe_prefix is not None else None
            if key is not None:
                out.claims.append((len(lines) - 1, 1, key))
        else:
            # A node reading: its own point (the values, then the radio's fields) and node_health.
            fcnt_f = f"{float(r['fcnt'])!r}"
            health = [f"rssi={float(rssi)!r}"] if rssi is not None else []
            if snr is not None:
                health.append(f"snr={float(snr)!r}")
            fields.append(f"fcnt={fcnt_f}")
            fields += health
            battery = values.get("battery_v")
            if battery is not None:
                health.append(f"battery_v={float(battery)!r}")
            health.append(f"fcnt={fcnt_f}")
            if auth is not None and auth != "local":
                # local: measured by the gateway itself (GPIO); there is no radio frame to authenticate, so the
                # field is absent rather than 0, which dashboards show as "unauthenticated".
                fields.append("auth_ok=1.0" if auth == "mic" else "auth_ok=0.0")
            fields.append("clock_ok=0.0" if clock == "unsynced" else "clock_ok=1.0")
            # The cache looked up here, not in a call: this runs once a reading.
            tags = self._tags.get(("node", kind, site, gateway, node, name)) or self._node_tags(kind, site, gateway,
                                                                                                 node, name)
            field_set = ",".join(fields)
            if len(field_set) > FIELDS_MAX:
                _field_set(fields)  # raises
            lines.append(f"{kind},{tags} {field_set} {ts}")
            lines.append(f"node_health,{tags} {','.join(health)} {ts}")
            sources.append(rid)
            if self.dedupe_prefix is not None:
                self._link(r, node, kind, tags, fcnt_f, rssi, snr, ts, out)
        sources.append(rid)
        out.readings += 1

    def _link(self, r: Any, node: str, kind: str, tags: str, fcnt_f: str, rssi: Any, snr: Any, ts: int,
              out: Converted) -> None:
        """De-duplication on: the frame's claim (its identity and where its two points are) and this reception's
        ``node_link`` point, at this gateway's receive time (:mod:`agent.bridge.dedupe`)."""
        link = [f"fcnt={fcnt_f}"]
        if rssi is not None:
            link.append(f"rssi={float(rssi)!r}")
        if snr is not None:
            link.append(f"snr={float(snr)!r}")
        out.claims.append((len(out.lines) - 2, 2, frame_key(self.dedupe_prefix or "", node, r["fcnt"], kind,
                                                             r["values"])))
        out.lines.append(f"node_link,{tags} {','.join(link)} {ts}")
        out.sources.append(r["id"])

    def _checked(self, r: Any, gateway: str, latest: int) -> tuple[int, str, str, str, Any, str, Any, Any, Any]:
        """The reading envelope: every check a reading passes before it maps to points, or :class:`Invalid`.
        Returns what the mapping reads of it: (the time to write it at in µs since the epoch, node, kind, id, name,
        clock, rssi, snr, auth)."""
        if not isinstance(r, dict):
            raise Invalid("invalid_reading", "a reading is not a JSON object")
        keys = r.keys()
        # Set comparisons run in C; the lists for the detail are made only for a reading that fails them.
        if not keys >= _READING_REQUIRED_SET:
            missing = [k for k in _READING_REQUIRED if k not in r]
            raise Invalid("invalid_reading", f"reading lacks {', '.join(missing)}")
        if len(r) > len(_READING_REQUIRED) and not keys <= _READING_KEYS:
            raise Invalid("invalid_reading", f"unknown keys in the reading: "
                          f"{', '.join(map(repr, sorted(keys - _READING_KEYS)))}")
        node, fcnt, kind, ts = r["node"], r["fcnt"], r["kind"], r["ts_us"]
        if not isinstance(node, str) or not _NODE_RE.match(node):
            raise Invalid("invalid_reading", f"node {show.repr(node)} is not 8 lowercase hex digits or 'gateway'")
        if not is_int(fcnt) or not 0 <= fcnt <= _FCNT_MAX:
            raise Invalid("invalid_reading", f"fcnt {show.repr(fcnt)} is not an integer 0..4294967295")
        if kind not in KINDS:
            raise Invalid("invalid_reading", f"kind {show.repr(kind)} is unknown")
        if (kind in GATEWAY_KINDS) != (node == "gateway"):
            raise Invalid("invalid_reading", f"kind {kind} does not fit node {node}")
        if ("alert" in r) != (kind == "alert"):
            raise Invalid("invalid_reading", "an alert object belongs to readings of kind alert, and only there")
        rid = f"{gateway}/{node}/{fcnt}"
        if r["id"] != rid:
            raise Invalid("invalid_reading", f"id {show.repr(r['id'])} is not <gateway>/<node>/<fcnt> = {rid!r}")
        if r["lane"] not in LANES:
            raise Invalid("invalid_reading", f"lane {show.repr(r['lane'])} is unknown")
        if not is_int(ts):
            raise Invalid("invalid_reading", f"ts_us {show.repr(ts)} is not an integer")
        clock = r["clock"]
        if clock not in ("synced", "unsynced", "corrected"):
            raise Invalid("invalid_reading", f"clock {show.repr(clock)} is not synced, unsynced or corrected")
        if ts < EPOCH_FLOOR_US or ts > latest:
            ts = self._outside_window(ts, latest, unsynced=clock == "unsynced", clock=clock)
        name = r.get("name")
        if name is not None and not isinstance(name, str):
            raise Invalid("invalid_reading", "name is not text")
        rssi, snr, auth = r.get("rssi"), r.get("snr"), r.get("auth")
        for key, v in (("rssi", rssi), ("snr", snr)):
            if v is not None and not is_number(v):
                raise Invalid("invalid_reading", f"{key} {show.repr(v)} is not a number")
            if v is not None and not math.isfinite(v):
                raise Invalid("not_finite", f"{key} is {v}")
        if auth is not None and auth not in ("mic", "none", "local"):
            raise Invalid("invalid_reading", f"auth {show.repr(auth)} is not mic, none or local")
        if "radio" in r and not isinstance(r["radio"], str):
            raise Invalid("invalid_reading", "radio is not text")
        if "receipt" in r and not isinstance(r["receipt"], bool):
            raise Invalid("invalid_reading", "receipt is not true or false")
        if not isinstance(r["values"], dict):
            raise Invalid("invalid_reading", "values is not an object")
        return ts, node, kind, rid, name, clock, rssi, snr, auth

    @staticmethod
    def _field_key(key: str) -> str:
        """A values key as a field key, or :class:`Invalid` (only keys that pass are cached)."""
        if CONTROL_RE.search(key):
            raise Invalid("invalid_text", f"values key {show.repr(key)} holds a control character")
        if key in RESERVED_FIELDS or not valid_key(key):
            raise Invalid("invalid_reading", f"values key {show.repr(key)} collides with a field the bridge adds, "
                          f"or cannot be a field key (1-{FIELD_KEY_MAX} characters, no backslash, no '\"', not "
                          "'time', not a tag key such as 'gateway')")
        return escape_key(key)

    def _alert(self, alert: Any, fields: list[str], site: str, gateway: str, name: str | None, ts: int) -> str:
        alert = checked_object(alert, "alert", _ALERT_KEYS, _ALERT_REQUIRED, "invalid_reading", where="the alert")
        atype, state, severity, node = alert["type"], alert["state"], alert["severity"], alert["node"]
        if not isinstance(atype, str) or not _ALERT_TYPE_RE.match(atype):
            raise Invalid("invalid_reading", f"alert type {show.repr(atype)} is not a type name")
        if state not in ("raised", "cleared"):
            raise Invalid("invalid_reading", f"alert state {show.repr(state)} is not raised or cleared")
        if severity not in ("emergency", "warning", "info"):
            raise Invalid("invalid_reading", f"alert severity {show.repr(severity)} is unknown")
        if node is not None and (not isinstance(node, str) or not _NODE_HEX_RE.match(node)):
            raise Invalid("invalid_reading", f"alert node {show.repr(node)} is not 8 lowercase hex digits")
        for key in ("id", "key", "message"):
            if not isinstance(alert[key], str):
                raise Invalid("invalid_reading", f"alert {key} is not text")
        for key in ("name", "unit", "reading"):
            if alert.get(key) is not None and not isinstance(alert[key], str):
                raise Invalid("invalid_reading", f"alert {key} is not text")
        if not any(f.startswith("raised=") for f in fields):
            raise Invalid("invalid_reading", "alert reading without values.raised")
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
        fields.append(f"message={escape_string_field(alert['message'])}")
        return f"{prefix} {_field_set(fields)} {ts}"

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


def _field_set(fields: list[str]) -> str:
    text = ",".join(fields)
    if len(text) > FIELDS_MAX:
        raise Invalid("invalid_reading", f"the reading's fields take {len(text)} characters, more than the "
                      f"{FIELDS_MAX} a line may hold")
    return text
