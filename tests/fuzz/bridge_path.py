"""Hostile messages through the WHOLE bridge path: MQTT -> convert -> encode -> sink -> dead-letter store, on real
servers (Mosquitto, InfluxDB 1.6.7 or VictoriaMetrics), with a valid "sentinel" SOS from another gateway after
every few hostile messages.

The other fuzz targets check :meth:`Serializer.convert` alone; a message that passes it can still stop the bridge
at a later step (a lone surrogate that cannot be encoded, a dead-letter detail SQLite refuses). Here every message
takes the path a gateway's message takes, and the run checks what the issue's "Done when" asks:

* the bridge never stops: its writer thread is alive, no exception escapes a step (an ``internal_error`` dead
  letter or an ERROR log line of ``agent.bridge`` is a bug found, with the message that caused it);
* every message is acknowledged (``messages_acked`` catches up with what was delivered; nothing is redelivered);
* every sentinel is in the database, and the last one arrives within ``stall_s`` of the last publish (no message
  blocks the ones after it);
* every hostile message is written or dead-lettered, as a reference conversion of the same message predicts (lines
  written + refused = lines predicted; dead letters by reason = predicted, plus the lines the server refused);
* the dead-letter store reads back (every row, every text column valid UTF-8) and holds what the counters say;
* the database holds no measurement, tag key or field type our schema does not have (no injected tags or points).

Two drivers: ``mqtt`` publishes each message with paho at QoS 1 as a gateway would, to a real Mosquitto and a real
:class:`~agent.bridge.bridge.Bridge`; ``direct`` hands the same messages to the bridge's MQTT callback without a
broker (same conversion, batching, sink and dead-letter code; acknowledgements go to a recorder), which is faster
for runs of 10^6. When the bridge dies or stalls, the run records it with the messages of the batch that did it,
finds the single message by bisection on fresh bridges (direct driver), shrinks it, and goes on with a new bridge
(the poison's session is removed, as an operator would have to).

Message ``i`` of a run with seed ``s`` is generated from ``random.Random(f"{s}/bridge_path/{i}")`` alone, so any
message of any run is reproducible from the two numbers in the report.
"""

from __future__ import annotations

import collections
import inspect
import json
import logging
import random
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import traceback
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.bridge import Bridge, DeadLetterStore, parse_bridge_config
from agent.bridge.errors import BridgeError
from agent.bridge.lineproto import Serializer
from agent.bridge.schema import COMMANDS, OUTCOMES
from agent.dev.devbroker import Mosquitto
from tests.fuzz.mutate import mutate_bytes, shrink, small
from tests.fuzz.targets import MEASUREMENTS, mutate_tree
from tests.support.influx import InfluxDB1, VictoriaMetrics

__all__ = [
    "Message",
    "PathReport",
    "Servers",
    "hostile",
    "message",
    "minimize",
    "probe",
    "publishable",
    "run_bridge_path",
    "sentinel",
]

log = logging.getLogger(__name__)

PREFIX = "denen/v1"
DB = "denen"
#: 2026-01-01T00:00:00Z in µs: the seed documents' time (well before the bridge's clock, never "in the future").
T0_US = 1_767_225_600_000_000
SENTINEL_GATEWAY = "gw-sentinel"
SENTINEL_NODE = "5e000001"
HOSTILE_GATEWAYS = ("gw-fuzz-01", "gw-okutama-01", "g")
#: A small pool of nodes and names: a 10^6 run must not make millions of series (tags) in the database.
NODES = tuple(f"{0x0A000100 + i:08x}" for i in range(24))
NAMES = ("river-1", "sos-7", "ノード 1", "木曽川 日原", None)
NODE_KINDS = ("sos", "trap", "water_level", "rain", "tilt", "weather", "heartbeat")
LANE_OF = {"sos": "sos", "trap": "alarm", "alert": "alarm", "gateway_health": "diagnostics"}
VALUES = {
    "sos": {"pressed": 1.0, "lat_deg": 35.8123, "lon_deg": 139.0987, "battery_v": 3.61},
    "trap": {"fired": 1.0, "battery_v": 3.4},
    "water_level": {"level_cm": 182.5, "battery_v": 3.6},
    "rain": {"rain_mm": 0.5, "battery_v": 3.55},
    "tilt": {"tilt_deg": 1.25, "battery_v": 3.5},
    "weather": {"temp_c": 11.5, "humidity_pct": 80.0, "pressure_hpa": 1003.2},
    "heartbeat": {"battery_v": 3.3, "uptime_s": 86400.0},
}

#: Characters that break a naive step somewhere: lone surrogates (UTF-8 cannot encode them), C0/C1 controls, line
#: and paragraph separators, the line-protocol specials, a BOM and non-characters, a quote, non-ASCII text.
POISON_CHARS = ("\ud800", "\udfff", "\udbff", "\x00", "\x01", "\x08", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f",
                "\x85", "\x9f", "\u2028", "\u2029", "\ufeff", "\ufffe", "\uffff", "\\", '"', "'", ",", "=", " ",
                "\u3000", "é", "木", "\U0001f4a9", "\u202e")
POISON_STRINGS = ("", " ", "\\", "a\\", "a\\,b", "a\\ b", "a\\=b", "\\\\,", "a,gateway=victim", "x online=1.0 1",
                  "m f=1.0 1\nsos,gateway=x pressed=1.0 1", "0.1.0\ud800", "\ud800", "\udc80\ud800", "\x00",
                  "fcnt", "rssi", "clock_ok", "message", "raised", "site", "gateway", "time", "_field", "__name__",
                  "$share/x", "+", "#", "denen.readings/2", "${jndi:x}", "%s%n", "\u202egw")
#: Numbers (and non-numbers) for any numeric position; RAW_NUMBERS are written into the JSON text as they are.
HOSTILE_NUMBERS: tuple[Any, ...] = (0, -1, 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63),
                                    10**30, 1e308, -1e308, 5e-324, 0.5, -0.0, 1e16, True, False, None, "1", [], {})
RAW_NUMBERS = ("1e400", "-1e400", "NaN", "Infinity", "-Infinity", "9" * 5000, "1" + "0" * 400, "-0", "1E+2",
               "0.1e-400", "123456789012345678901234567890.5")
#: Timestamps: 1970, just before 2020, 2200, past InfluxDB's end of time (2262), 64-bit edges, a float, the future.
HOSTILE_TS: tuple[Any, ...] = (0, 1, -1, 1_000_000, 1_577_836_799_999_999, 7_258_118_400_000_000,
                               9_223_372_036_854_775, 9_223_372_036_854_776, 2**63 - 1, 2**63, 2**64, -(2**63),
                               T0_US + 0.5, float(T0_US), "1767225600000000", None, "future")
#: Bytes that are not UTF-8: a stray continuation, an overlong '/', an encoded surrogate (CESU), beyond U+10FFFF,
#: a cut sequence, 0xff.
BAD_UTF8 = (b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xe6\x9c", b"\xff",
            b"\xfe\xff")
JSON_TOKENS = (b'"', b",", b"{", b"}", b"[", b"]", b":", b"NaN", b"1e999", b"\\", b"\\u0000", b"\\ud800",
               b"\\udfff", b"\xff", b"null", b"true")
#: Payloads that are not a document at all.
ODD_PAYLOADS = (b"", b" ", b"\n", b"null", b"[]", b"{}", b'""', b"1", b"true", b"[{}]", b"\xef\xbb\xbf{}",
                b'{"schema":"denen.readings/1"}', b'{"schema":"denen.status/1"}', b"\x00" * 16)

#: Every measurement the bridge writes: the readings', and the alert loop's gateway state and command results.
SCHEMA_MEASUREMENTS = frozenset(MEASUREMENTS) | {"gateway_state", "command_result", "bridge_health"}
#: Tag keys each measurement may carry (README "InfluxDB schema"); anything else was injected.
NODE_TAGS = frozenset({"gateway", "kind", "name", "node", "site"})
TAG_KEYS = {**{m: NODE_TAGS for m in (*NODE_KINDS, "node_health")},
            "gateway_health": frozenset({"gateway", "site"}),
            "alert": frozenset({"gateway", "name", "node", "severity", "site", "type"}),
            "gateway_status": frozenset({"gateway", "site"}),
            "gateway_state": frozenset({"gateway", "site"}),
            "command_result": frozenset({"command", "gateway", "outcome", "site"}),
            # The bridge's own report: its client id, and one point per dead-letter reason or per gateway heard.
            "bridge_health": frozenset({"client_id", "gateway", "reason"})}
#: What each tag's values look like (ids, fixed words); any other value was injected or slipped through a check.
_ID = r"[a-z0-9][a-z0-9_-]{0,62}"
TAG_VALUES = {"gateway": re.compile(_ID), "site": re.compile(_ID), "node": re.compile(f"[0-9a-f]{{8}}|{_ID}"),
              "kind": re.compile("|".join((*NODE_KINDS, "gateway_health", "alert"))),
              "severity": re.compile("emergency|warning|info"), "type": re.compile(r"[a-z][a-z0-9_]{0,39}"),
              "command": re.compile("|".join(COMMANDS)), "outcome": re.compile("|".join(OUTCOMES)),
              "client_id": re.compile(_ID), "reason": re.compile(r"[a-z][a-z0-9_]{0,39}")}
STRING_FIELDS = {"alert": frozenset({"message"}), "gateway_status": frozenset({"agent"}),
                 "gateway_state": frozenset({"siren_why", "siren_alert", "lamp"}),
                 "command_result": frozenset({"target", "by", "request_id", "via"})}


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message: topic, payload and what was done to it (for the report)."""

    topic: str
    payload: bytes
    label: str = "valid"

    def describe(self, limit: int = 400) -> str:
        """A printable form: the topic and the payload's repr, cut in the middle when long."""
        text = repr(self.payload)
        if len(text) > limit:
            text = f"{text[:limit // 2]} ...({len(self.payload)} bytes)... {text[-limit // 4:]}"
        return f"{self.topic!r} {text}"


# =====================================================================================================================
# The generator


def _reading(rng: random.Random, gateway: str, kind: str | None = None) -> dict[str, Any]:
    ts = T0_US + rng.randrange(86_400_000_000)
    kind = kind or rng.choice((*NODE_KINDS, *NODE_KINDS, "gateway_health", "alert"))
    fcnt = rng.getrandbits(rng.choice((8, 16, 32)))
    if kind == "gateway_health":
        return {"id": f"{gateway}/gateway/{fcnt}", "node": "gateway", "name": rng.choice(("gw", None)), "fcnt": fcnt,
                "kind": kind, "lane": "diagnostics", "ts_us": ts, "clock": "synced",
                "values": {"cpu_temp_c": 51.5, "journal_mb": float(rng.randrange(100)), "uptime_s": 3600.0}}
    if kind == "alert":
        node = rng.choice((*NODES[:4], None))
        state = rng.choice(("raised", "cleared"))
        alert = {"id": f"{gateway}:river:{node}#{fcnt}", "key": f"river:{node}",
                 "type": rng.choice(("river_stage", "sos", "battery_low", "journal_near_quota")), "state": state,
                 "severity": rng.choice(("emergency", "warning", "info")), "node": node,
                 "name": rng.choice(NAMES), "message": "水位 182.5 cm (警戒 150 cm) / level 182.5 cm above 150",
                 "unit": rng.choice(("cm", None)), "reading": rng.choice((f"{gateway}/{NODES[0]}/7", None))}
        return {"id": f"{gateway}/gateway/{fcnt}", "node": "gateway", "name": "gw", "fcnt": fcnt, "kind": "alert",
                "lane": "alarm", "ts_us": ts, "clock": "synced", "alert": alert,
                "values": {"raised": float(state == "raised"), "value": 182.5, "threshold": 150.0}}
    node = rng.choice(NODES)
    r: dict[str, Any] = {"id": f"{gateway}/{node}/{fcnt}", "node": node, "name": rng.choice(NAMES), "fcnt": fcnt,
                         "kind": kind, "lane": LANE_OF.get(kind, "telemetry"), "ts_us": ts,
                         "clock": rng.choice(("synced", "synced", "unsynced", "corrected")), "radio": "lora0",
                         "rssi": rng.randint(-140, 0), "snr": round(rng.uniform(-20, 15), 1),
                         "auth": rng.choice(("mic", "none", "local")), "receipt": rng.random() < 0.2,
                         "values": dict(VALUES[kind])}
    if r["clock"] == "unsynced" and rng.random() < 0.5:
        r["ts_us"] = rng.randrange(10**12, 10**14)  # a board that booted in 1970
    return r


def _state(rng: random.Random, gateway: str) -> dict[str, Any]:
    on = rng.random() < 0.5
    held = rng.choice((0, 0, 12))
    return {"schema": "denen.state/1", "gateway": gateway, "ts_us": T0_US + rng.randrange(86_400_000_000),
            "siren": {"configured": True, "on": on, "why": "alert" if on else None,
                      "alert": f"sos:{rng.choice(NODES)}" if on else None, "silenced": []},
            "lamp": {"configured": True, "state": rng.choice(("ok", "alarm", "no_backhaul", "off"))}, "relays": [],
            "held": {"active": held > 0, "reason": "clock_unsynced" if held else None, "count": held,
                     "until_us": None},
            "alerts": [{"key": f"sos:{node}", "id": f"{gateway}:sos:{node}#1", "type": "sos", "node": node,
                        "name": rng.choice(NAMES), "severity": "emergency", "since_us": T0_US, "message": "SOS",
                        "value": None, "lat_deg": 35.8, "lon_deg": 139.0, "repeating": True,
                        "acknowledged_by": rng.choice((None, "山田 太郎"))} for node in NODES[:rng.randrange(3)]]}


def _result(rng: random.Random, gateway: str) -> dict[str, Any]:
    command = rng.choice(sorted(COMMANDS))
    targets = [None] if command == "test-chirp" else [f"sos:{rng.choice(NODES)}" for _ in range(rng.randint(1, 3))]
    return {"schema": "denen.result/1", "gateway": gateway, "ts_us": T0_US + rng.randrange(86_400_000_000),
            "command": command, "request_id": rng.choice(("req-01", None)), "by": rng.choice(("山田 太郎", None)),
            "via": rng.choice(("console", "cli", None)),
            "results": [{"target": t, "outcome": rng.choice(sorted(OUTCOMES))} for t in targets]}


def seed_document(rng: random.Random, gateway: str | None = None) -> tuple[str, dict[str, Any]]:
    """A valid message as gateways publish it: a ``denen.readings/1`` batch (one lane), a ``denen.status/1``
    document (sometimes the Last Will, without ``ts_us`` and ``agent``), a ``denen.state/1`` or a
    ``denen.result/1`` document."""
    gateway = gateway or rng.choice(HOSTILE_GATEWAYS)
    which = rng.random()
    if which < 0.06:
        return f"{PREFIX}/{gateway}/state", _state(rng, gateway)
    if which < 0.12:
        return f"{PREFIX}/{gateway}/results", _result(rng, gateway)
    if which < 0.27:
        doc: dict[str, Any] = {"schema": "denen.status/1", "gateway": gateway,
                               "state": rng.choice(("online", "offline")), "agent": "0.1.0",
                               "ts_us": T0_US + rng.randrange(86_400_000_000)}
        if rng.random() < 0.3:
            del doc["ts_us"], doc["agent"]
        return f"{PREFIX}/{gateway}/status", doc
    first = _reading(rng, gateway)
    lane = first["lane"]
    readings = [first]
    for _ in range(rng.choice((0, 0, 1, 2, 5))):
        r = _reading(rng, gateway)
        if r["lane"] == lane:
            readings.append(r)
    doc = {"schema": "denen.readings/1", "gateway": gateway, "site": "testville", "lane": lane,
           "sent_us": T0_US + 86_400_000_000, "readings": readings}
    return f"{PREFIX}/{gateway}/readings/{lane}", doc


def _slots(obj: Any, out: list[tuple[Any, Any, str]]) -> list[tuple[Any, Any, str]]:
    """Every place a string sits in a JSON tree: ``(container, key, "value")`` for a string value and
    ``(dict, key, "key")`` for a dict key."""
    if isinstance(obj, dict):
        for k, v in list(obj.items()):
            out.append((obj, k, "key"))
            if isinstance(v, str):
                out.append((obj, k, "value"))
            elif isinstance(v, dict | list):
                _slots(v, out)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if isinstance(v, str):
                out.append((obj, i, "value"))
            elif isinstance(v, dict | list):
                _slots(v, out)
    return out


def _numbers(obj: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every place a number (or bool or null) sits in a JSON tree."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        if v is None or isinstance(v, int | float):
            out.append((obj, k))
        elif isinstance(v, dict | list):
            _numbers(v, out)
    return out


def _poison_text(rng: random.Random, text: str) -> str:
    r = rng.random()
    if r < 0.55:  # poison characters inserted
        for _ in range(1 + small(rng, 0.8, 5)):
            pos = rng.randrange(len(text) + 1)
            text = text[:pos] + rng.choice(POISON_CHARS) + text[pos:]
        return text
    if r < 0.8:
        return rng.choice(POISON_STRINGS)
    if r < 0.9:  # at the end: a trailing backslash or surrogate is what an escaper forgets
        return text + rng.choice(("\\", "\ud800", "\n", " ", "\\\\", "\x00"))
    unit = text[:64] or "x"
    return unit * (rng.randrange(1, 20_000) // len(unit) + 1) + rng.choice(POISON_CHARS)  # long


def _set(container: Any, key: Any, kind: str, new: Any) -> None:
    if kind == "key":
        container[new] = container.pop(key)
    else:
        container[key] = new


_RAW = "\x00@raw{}@\x00"


def _encode(rng: random.Random, doc: Any, raw: Sequence[str] = ()) -> bytes:
    """JSON text of ``doc`` as a gateway (or an attacker) would send it: ASCII with ``\\u`` escapes, or UTF-8 (a lone
    surrogate then becomes CESU bytes, which are not UTF-8); placeholders replaced by raw number tokens."""
    ascii_only = rng.random() < 0.6
    text = json.dumps(doc, ensure_ascii=ascii_only, separators=(",", ":") if rng.random() < 0.8 else None,
                      allow_nan=True)
    for i, token in enumerate(raw):
        text = text.replace(json.dumps(_RAW.format(i), ensure_ascii=ascii_only), token)
    return text.encode("utf-8", "surrogatepass")


def _insert_raw(text: bytes, rng: random.Random, piece: bytes) -> bytes:
    """``piece`` inside a string of the JSON text (after a quote), or anywhere."""
    quotes = [i for i in range(len(text)) if text[i] == 0x22]
    pos = rng.choice(quotes) + 1 if quotes and rng.random() < 0.8 else rng.randrange(len(text) + 1)
    return text[:pos] + piece + text[pos:]


def _deep(depth: int, opener: str) -> str:
    """JSON text nested ``depth`` levels: lists or objects."""
    return "[" * depth + "]" * depth if opener == "[" else '{"a":' * depth + "1" + "}" * depth


def hostile(rng: random.Random, *, large: float = 0.003, max_large: int = 1_200_000) -> Message:
    """One hostile message, seeded from a valid document.

    Args:
        rng: the message's own random source.
        large: share of large payloads (64 KiB up to ``max_large`` bytes, some past the bridge's 1 MiB cap).
        max_large: the largest payload made, in bytes.
    """
    topic, doc = seed_document(rng)
    gateway = doc["gateway"]
    # One document (status, state, result) rather than a batch of readings.
    is_status = topic.endswith(("/status", "/state", "/results"))
    raw: list[str] = []
    labels: list[str] = []
    ops = ["string"] * 26 + ["tree"] * 12 + ["number"] * 8 + ["timestamp"] * 8 + ["unknown_key"] * 4 + \
        ["duplicate_key"] * 4 + ["wrong_gateway"] * 5 + ["topic"] * 5 + ["nesting"] * 2 + ["bytes"] * 8 + \
        ["bad_utf8"] * 5 + ["odd"] * 2 + ["valid"] * 8
    n_ops = 1 if rng.random() < 0.7 else 2
    chosen = [rng.choice(ops) for _ in range(n_ops)]
    if rng.random() < large:
        chosen = ["large"]
    # Edits of the tree first, then of the topic, then of the bytes.
    for op in sorted(chosen, key=("string", "tree", "number", "timestamp", "unknown_key", "wrong_gateway",
                                  "nesting", "large", "valid", "topic", "duplicate_key", "bytes", "bad_utf8",
                                  "odd").index):
        labels.append(op)
        try:
            if op == "string":
                slots = _slots(doc, [])
                for _ in range(1 + small(rng, 0.6, 4)):
                    container, key, kind = rng.choice(slots)
                    if kind == "key" and key not in container:
                        continue
                    old = key if kind == "key" else container[key]
                    new = _poison_text(rng, old)
                    if kind == "key" and new in container:
                        continue
                    _set(container, key, kind, new)
                    slots = _slots(doc, [])
            elif op == "tree":
                mutate_tree(rng, doc, values=(*HOSTILE_NUMBERS, *POISON_STRINGS),
                            keys=(*POISON_STRINGS, "schema", "gateway", "site", "readings", "values", "alert", "name"))
            elif op == "number":
                places = _numbers(doc, [])
                if places:
                    for _ in range(1 + small(rng, 0.5, 3)):
                        container, key = rng.choice(places)
                        if rng.random() < 0.35:
                            container[key] = _RAW.format(len(raw))
                            raw.append(rng.choice(RAW_NUMBERS))
                        else:
                            container[key] = rng.choice(HOSTILE_NUMBERS)
            elif op == "timestamp":
                holder = doc if is_status else rng.choice(doc["readings"] + [doc])
                key = "sent_us" if holder is doc and not is_status else "ts_us"
                ts = rng.choice(HOSTILE_TS)
                holder[key] = (time.time_ns() // 1000 + rng.choice((900, 3600, 86400 * 365)) * 1_000_000
                               if ts == "future" else ts)
                if not is_status and holder is not doc:
                    holder["clock"] = rng.choice(("synced", "unsynced", "corrected", "bogus"))
            elif op == "unknown_key":
                holder = doc if is_status else rng.choice([doc, *doc["readings"],
                                                           *[r["alert"] for r in doc["readings"] if "alert" in r]])
                holder[rng.choice(POISON_STRINGS + ("extra", "signature", "site_name"))] = rng.choice(HOSTILE_NUMBERS)
            elif op == "wrong_gateway":
                other = rng.choice(("gw-other", SENTINEL_GATEWAY, "GW-FUZZ-01", "gw fuzz", "gw,site=victim", "",
                                    "gw-fuzz-01 ", "ゲートウェイ", "g" * 64, "gw\u2028x"))
                if rng.random() < 0.5:
                    doc["gateway"] = other
                else:
                    topic = topic.replace(f"/{gateway}/", f"/{other}/", 1)
                    if rng.random() < 0.5:
                        doc["gateway"] = other  # topic and document agree: only the pattern can refuse it
            elif op == "nesting":
                holder = doc if is_status else rng.choice([doc, *doc["readings"]])
                depth = rng.choice((30, 200, 1_000, 5_000, 20_000))
                holder[rng.choice(("values", "agent", "readings", "name", "extra"))] = _RAW.format(len(raw))
                raw.append(_deep(depth, rng.choice("[{")))
            elif op == "large":
                target = rng.choice((64 * 1024, 256 * 1024, 900 * 1024, 1_000_000, max_large))
                target = min(max_large, int(target * rng.uniform(0.9, 1.1)))
                how = rng.random()
                if is_status or how < 0.4:
                    # A document's free text: the status's agent, the siren's alert key, a result's target.
                    holder, key = (doc, "agent") if topic.endswith("/status") else \
                        (doc["siren"], "alert") if topic.endswith("/state") else \
                        (doc["results"][0], "target") if is_status else (rng.choice(doc["readings"]),
                                                                         rng.choice(("name", "radio")))
                    ch = rng.choice(("x", "木", "\\", "\ud800", "a,b"))
                    holder[key] = ch * (target // (len(json.dumps(ch)) - 2))
                elif how < 0.7:
                    base = doc["readings"][0]
                    n = max(1, target // max(1, len(json.dumps(base))))
                    doc["readings"] = [dict(base, fcnt=i, id=f"{gateway}/{base['node']}/{i}") for i in range(n)]
                else:
                    r = rng.choice(doc["readings"])
                    r["values"] = {f"v{i}_{'é' * (i % 3)}": float(i) for i in range(target // 28)}
            elif op == "topic":
                topic = rng.choice((
                    f"{PREFIX}/{gateway}/readings", f"{PREFIX}/{gateway}/readings/sos/extra",
                    f"{PREFIX}//readings/sos", f"{PREFIX}//status", f"{PREFIX}/{gateway}/readings/bogus",
                    f"{PREFIX}/{gateway}/readings/{'x' * 5000}", f"{PREFIX}/{gateway} /status",
                    f"{PREFIX}/{gateway},site=victim/status", f"{PREFIX}/victim online=1.0 1/status",
                    f"{PREFIX}/{gateway}\u2028/status", f"{PREFIX}/\ufeff{gateway}/status",
                    f"{PREFIX}/{'g' * 300}/status", f"{PREFIX}/{gateway}/readings/\ud800",
                    f"{PREFIX}/{gateway}\x00/status", f"{PREFIX}/{gateway}\x1b/status", f"{PREFIX}/+/status",
                    f"{PREFIX}/{gateway}/readings/#", topic.upper(), f"{PREFIX}/{gateway}/Readings/sos",
                    f"{PREFIX}/{gateway}/state/x", f"{PREFIX}/{gateway}/result", f"{PREFIX}//state",
                    f"{PREFIX}/{gateway},site=victim/results", f"{PREFIX}/{gateway}/cmd/alert-ack"))
                if rng.random() < 0.5 and "/" in topic[len(PREFIX) + 1:]:
                    # the document names the topic's gateway, so only the topic's own check can refuse it
                    doc["gateway"] = topic[len(PREFIX) + 1:].split("/", 1)[0]
            elif op == "valid":
                pass
        except (KeyError, TypeError, IndexError, AttributeError, ValueError):
            pass  # an earlier edit broke the structure this one expects: the message is hostile anyway
    payload = _encode(rng, doc, raw)
    for op in labels:
        if op == "duplicate_key":
            key = rng.choice((b"gateway", b"schema", b"site", b"readings", b"ts_us", b"name", b"values", b"state"))
            value = rng.choice((b'"gw-other"', b'"x"', b"1", b"null", b"[]", b'"denen.readings/1"', b'"\\ud800"'))
            piece = b'"' + key + b'":' + value
            first, last = payload.find(b"{"), payload.rfind(b"}")
            if first >= 0 and rng.random() < 0.5:  # before the real key: the real one wins (the last wins)
                payload = payload[:first + 1] + piece + b"," + payload[first + 1:]
            elif last >= 0:  # after it: the attacker's wins
                payload = payload[:last] + b"," + piece + payload[last:]
        elif op == "bytes":
            payload = mutate_bytes(rng, payload, tokens=JSON_TOKENS, max_len=len(payload) + 4096)
        elif op == "bad_utf8":
            for _ in range(1 + small(rng, 0.5, 3)):
                payload = _insert_raw(payload, rng, rng.choice(BAD_UTF8))
        elif op == "odd":
            payload = rng.choice(ODD_PAYLOADS)
    if len(payload) > max_large:
        payload = payload[:max_large]  # cut: no longer JSON, and still at most what the run asked for
    return Message(topic, payload, "+".join(labels))


def message(seed: int, index: int, **kwargs: Any) -> Message:
    """Hostile message ``index`` of a run with ``seed`` (a pure function of the two)."""
    return hostile(random.Random(f"{seed}/bridge_path/{index}"), **kwargs)


def sentinel(k: int) -> Message:
    """The ``k``-th valid SOS of the sentinel gateway: node 5e000001, fcnt ``k + 1``, a unique timestamp."""
    fcnt = k + 1
    r = {"id": f"{SENTINEL_GATEWAY}/{SENTINEL_NODE}/{fcnt}", "node": SENTINEL_NODE, "name": "sentinel", "fcnt": fcnt,
         "kind": "sos", "lane": "sos", "ts_us": T0_US + 2 * 86_400_000_000 + fcnt * 1000, "clock": "synced",
         "radio": "lora0", "rssi": -90, "snr": 7.5, "auth": "mic", "receipt": True,
         "values": {"pressed": 1.0, "battery_v": 3.6}}
    doc = {"schema": "denen.readings/1", "gateway": SENTINEL_GATEWAY, "site": "sentinel", "lane": "sos",
           "sent_us": T0_US + 3 * 86_400_000_000, "readings": [r]}
    return Message(f"{PREFIX}/{SENTINEL_GATEWAY}/readings/sos", json.dumps(doc, separators=(",", ":")).encode(),
                   "sentinel")


def publishable(topic: str) -> bool:
    """Whether a client can publish on ``topic`` at all: Mosquitto closes the connection of a client that sends a
    topic that is not UTF-8, holds a control character (C0 or C1), a non-character or a wildcard, or is empty."""
    if not topic or "+" in topic or "#" in topic:
        return False
    try:
        data = topic.encode()
    except UnicodeEncodeError:
        return False
    if len(data) > 65535:
        return False
    for ch in topic:
        o = ord(ch)
        if o < 0x20 or 0x7F <= o <= 0x9F or 0xFDD0 <= o <= 0xFDEF or (o & 0xFFFE) == 0xFFFE:
            return False
    return True


def delivered(topic: str, prefix: str = PREFIX) -> bool:
    """Whether the bridge's subscriptions (``<prefix>/+/readings/#``, ``<prefix>/+/status``, ``.../state``,
    ``.../results``) match ``topic``."""
    if not topic.startswith(prefix + "/"):
        return False
    levels = topic[len(prefix) + 1:].split("/")
    return (len(levels) >= 2 and levels[1] == "readings") or (
        len(levels) == 2 and levels[1] in ("status", "state", "results"))


# =====================================================================================================================
# What a message should become


@dataclass(slots=True)
class Expect:
    """What the bridge should make of one message (see :class:`Reference`)."""

    lines: int = 0
    rejects: collections.Counter[str] = field(default_factory=collections.Counter)
    too_large: bool = False
    crash: str | None = None  # the reference conversion itself raised (a bug of convert): its traceback


class Reference:
    """The bridge's per-message steps before batching, rebuilt from its parts: the size cap (``limits``), a
    :class:`Serializer` like the bridge's (same prefix, registry and future bound), and the UTF-8 encoding of the
    lines. Run on the same message, it predicts how many lines the bridge writes and which dead letters it keeps,
    so the run can tell "written or dead-lettered" from "lost" without a marker in the (hostile) payload."""

    def __init__(self, bridge: Bridge) -> None:
        cfg = bridge.config
        limits = getattr(cfg, "limits", None)
        self.max_bytes: int | None = getattr(limits, "max_message_bytes", None)
        kwargs: dict[str, Any] = {}
        params = inspect.signature(Serializer).parameters
        if "registry" in params and getattr(bridge, "registry", None) is not None:
            kwargs["registry"] = bridge.registry
        if "max_future_s" in params and limits is not None:
            kwargs["max_future_s"] = limits.max_future_s
        self.serializer = Serializer(cfg.mqtt.topic_prefix, **kwargs)

    def expect(self, msg: Message) -> Expect:
        out = Expect()
        if self.max_bytes is not None and len(msg.payload) > self.max_bytes:
            out.too_large = True
            out.rejects["too_large"] += 1
            return out
        try:
            conv = self.serializer.convert(msg.topic, msg.payload)
        except Exception:  # noqa: BLE001 - a converter that raises is a finding, reported with its traceback
            out.crash = traceback.format_exc(limit=-6)
            out.rejects["internal_error"] += 1
            return out
        try:
            "\n".join(conv.lines).encode()
        except UnicodeEncodeError:
            out.rejects["invalid_text"] += 1
            return out
        out.lines = len(conv.lines)
        out.rejects.update(r.reason for r in conv.rejects)
        return out


# =====================================================================================================================
# Servers and bridges


class Servers:
    """A Mosquitto and one database (``influx``: InfluxDB 1.6.7 with database ``denen``; ``victoria``:
    VictoriaMetrics), started in ``workdir`` and stopped by :meth:`close`. Servers given are used, not owned."""

    def __init__(self, workdir: Path, db: str = "influx", *, broker: Mosquitto | None = None,
                 server: InfluxDB1 | VictoriaMetrics | None = None) -> None:
        if db not in ("influx", "victoria"):
            raise ValueError(f"db must be influx or victoria, not {db!r}")
        self.workdir = Path(workdir)
        self.db = db
        self._owned: list[Any] = []
        try:
            if broker is None:
                broker = Mosquitto(self.workdir / "broker")
                broker.start()
                self._owned.append(broker)
            if server is None:
                server = InfluxDB1(self.workdir / "influx") if db == "influx" else VictoriaMetrics(self.workdir / "vm")
                server.start()
                self._owned.append(server)
                if db == "influx":
                    server.create_database(DB)
        except BaseException:
            self.close()
            raise
        self.broker = broker
        self.server = server

    def close(self) -> None:
        for s in reversed(self._owned):
            s.stop()
        self._owned.clear()

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the sink's side ----------------------------------------------------------------------------------------
    def sink_text(self) -> str:
        if self.db == "influx":
            return (f"  type: v1\n  url: {self.server.url}\n  database: {DB}\n  timeout_s: 10\n"
                    "  retry_min_s: 0.05\n  retry_max_s: 0.5")
        return (f"  type: v2\n  url: {self.server.url}\n  org: fuzz\n  bucket: {DB}\n  token: fuzz-token\n"
                "  timeout_s: 10\n  retry_min_s: 0.05\n  retry_max_s: 0.5")

    def _vm_get(self, path: str, params: Sequence[tuple[str, str]] = ()) -> bytes:
        url = f"{self.server.url}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.read()

    def sentinels(self) -> set[int]:
        """The fcnt of every sentinel SOS the database holds."""
        if self.db == "influx":
            # ::tag: a hostile reading may have added a field named like a tag (a finding of its own, see
            # schema_problems); the sentinels are looked up by their tags all the same.
            rows = self.server.rows(f"SELECT \"fcnt\" FROM \"sos\" WHERE \"gateway\"::tag = '{SENTINEL_GATEWAY}' "
                                    f"AND \"node\"::tag = '{SENTINEL_NODE}'", DB)
            return {int(r["fcnt"]) for r in rows}
        self._vm_get("/internal/force_flush")
        series = self.server.export(f'{{__name__="sos_fcnt",gateway="{SENTINEL_GATEWAY}",node="{SENTINEL_NODE}"}}')
        return {int(v) for s in series for v in s["values"]}

    def schema_problems(self) -> list[str]:
        """Measurements, tag keys and field types the schema does not have (something was injected)."""
        problems: list[str] = []
        if self.db == "influx":
            names = {r["name"] for r in self.server.rows("SHOW MEASUREMENTS", DB)}
            for m in sorted(names - SCHEMA_MEASUREMENTS):
                problems.append(f"measurement {m!r} is not one of the schema's")
            for s in self.server.query("SHOW TAG KEYS", DB):
                extra = {v[0] for v in s["values"]} - TAG_KEYS.get(s["name"], frozenset())
                if extra:
                    problems.append(f"measurement {s['name']!r} has tag keys {sorted(extra)!r}")
            for s in self.server.query("SHOW FIELD KEYS", DB):
                strings = STRING_FIELDS.get(s["name"], frozenset())
                for key, ftype in s["values"]:
                    want = "string" if key in strings else "float"
                    if ftype != want:
                        problems.append(f"field {s['name']}.{key!r} is {ftype}, not {want}")
                    if key in TAG_KEYS.get(s["name"], frozenset()):
                        # InfluxQL's WHERE then compares the field, not the tag: every point without that field
                        # (every other gateway's) drops out of the dashboards' queries.
                        problems.append(f"measurement {s['name']!r} has a field named like its tag {key!r}")
            for key, pattern in TAG_VALUES.items():
                for s in self.server.query(f'SHOW TAG VALUES WITH KEY = "{key}"', DB):
                    bad = [v[1] for v in s["values"] if not pattern.fullmatch(v[1])]
                    if bad:
                        problems.append(f"measurement {s['name']!r} has {key} tag values {bad[:3]!r}")
            return problems
        self._vm_get("/internal/force_flush")
        allowed = set().union(*TAG_KEYS.values()) | {"__name__"}
        labels = set(json.loads(self._vm_get("/api/v1/labels", [("start", "0")]))["data"])
        if labels - allowed:
            problems.append(f"label names {sorted(labels - allowed)!r} are not tags of the schema")
        names = json.loads(self._vm_get("/api/v1/label/__name__/values", [("start", "0")]))["data"]
        for name in names:
            if not any(name.startswith(m + "_") for m in SCHEMA_MEASUREMENTS):
                problems.append(f"metric {name!r} is not <measurement>_<field> of the schema")
        for m, tags in TAG_KEYS.items():
            body = self._vm_get("/api/v1/labels", [("match[]", f'{{__name__=~"{m}_.+"}}'), ("start", "0")])
            extra = set(json.loads(body)["data"]) - tags - {"__name__"}
            if extra:
                problems.append(f"measurement {m!r} has tag keys {sorted(extra)!r}")
        for key, pattern in TAG_VALUES.items():
            values = json.loads(self._vm_get(f"/api/v1/label/{key}/values", [("start", "0")]))["data"]
            bad = [v for v in values if not pattern.fullmatch(v)]
            if bad:
                problems.append(f"{key} label values {bad[:3]!r}")
        return problems


def bridge_config_text(servers: Servers, dead_letter: Path, client_id: str, *, max_messages: int = 500,
                       max_wait_ms: int = 50) -> str:
    """A bridge config for the servers (group ``fuzz``; no gateway registry: every gateway accepted, site
    'unknown')."""
    return f"""\
mqtt:
  host: {servers.broker.host}
  port: {servers.broker.port}
  client_id: {client_id}
  group: fuzz
  topic_prefix: {PREFIX}
  reconnect_min_s: 0.1
  reconnect_max_s: 0.5
sink:
{servers.sink_text()}
batch:
  max_lines: 5000
  max_messages: {max_messages}
  max_wait_ms: {max_wait_ms}
dead_letter:
  path: {dead_letter.name}
health:
  interval_s: 1     # bridge_health points every second, so the hostile gateways' ids pass through them too
"""


class _AckRecorder:
    """Stands in for paho's client in the direct driver: records acknowledgements."""

    def __init__(self) -> None:
        self.acked = 0

    def ack(self, mid: int, qos: int) -> None:
        self.acked += 1

    def disconnect(self, properties: Any = None) -> None:
        pass

    def loop_stop(self) -> None:
        pass


class _ErrorLog(logging.Handler):
    """Keeps the ERROR records of ``agent.bridge`` (a step that failed on data: a bug found)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("agent.bridge"):
            self.records.append(record)


@contextmanager
def captured_errors() -> Iterator[_ErrorLog]:
    handler = _ErrorLog()
    logger = logging.getLogger("agent")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


class Segment:
    """One bridge (from a config text, with its real sink and dead-letter store) and the way messages reach it.

    ``driver="mqtt"``: the bridge connects to the broker; a paho client publishes at QoS 1 as a gateway would.
    ``driver="direct"``: no broker; :meth:`send` calls the bridge's own ``on_message`` callback, the writer thread
    runs as in a started bridge, and acknowledgements go to a recorder.
    """

    def __init__(self, servers: Servers, workdir: Path, number: int, driver: str, *, max_messages: int = 500,
                 max_wait_ms: int = 50) -> None:
        self.servers = servers
        self.driver = driver
        self.dir = workdir / f"segment-{number}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dead_path = self.dir / "dead.db"
        self.client_id = f"fuzz-bridge-{number}"
        text = bridge_config_text(servers, self.dead_path, self.client_id, max_messages=max_messages,
                                  max_wait_ms=max_wait_ms)
        cfg_path = self.dir / "bridge.yaml"
        cfg_path.write_text(text)
        self.config = parse_bridge_config(text, source=str(cfg_path), base_dir=self.dir)
        self.bridge = Bridge(self.config)
        self.reference = Reference(self.bridge)
        self.sent = 0
        self._publisher: mqtt.Client | None = None
        self._infos: list[mqtt.MQTTMessageInfo] = []
        self.publisher_disconnects = 0
        if driver == "mqtt":
            self.bridge.start()
            if not self.bridge.wait_subscribed(15):
                raise RuntimeError("the bridge did not subscribe within 15 s")
            pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"fuzz-gw-{number}",
                              protocol=MQTTProtocolVersion.MQTTv5)
            pub.max_inflight_messages_set(0)
            pub.max_queued_messages_set(0)
            pub.on_disconnect = self._on_publisher_disconnect
            pub.connect(servers.broker.host, servers.broker.port)
            pub.loop_start()
            self._publisher = pub
        elif driver == "direct":
            self._recorder = _AckRecorder()
            self.bridge._client = self._recorder  # type: ignore[assignment]  # the bridge acks through it
            self.bridge._writer = threading.Thread(target=self.bridge._writer_main, name="bridge-writer", daemon=True)
            self.bridge._writer.start()
        else:
            raise ValueError(f"driver must be mqtt or direct, not {driver!r}")

    def _on_publisher_disconnect(self, *args: Any) -> None:
        self.publisher_disconnects += 1

    def send(self, msg: Message) -> None:
        self.sent += 1
        if self._publisher is not None:
            self._infos.append(self._publisher.publish(msg.topic, msg.payload, qos=1))
            return
        m = mqtt.MQTTMessage(self.sent % 65535 + 1, msg.topic.encode())
        m.payload = msg.payload
        m.qos = 1
        self.bridge._on_message(self._recorder, None, m)  # type: ignore[arg-type]

    def sync(self, timeout: float = 60.0) -> bool:
        """Wait until the broker acknowledged every publish (MQTT driver); False when it did not in time."""
        deadline = time.monotonic() + timeout
        for info in self._infos:
            info.wait_for_publish(max(0.01, deadline - time.monotonic()))
            if not info.is_published():
                return False
        self._infos.clear()
        return True

    def counters(self) -> dict[str, int]:
        return self.bridge.counters()

    def failure(self) -> BaseException | None:
        """What stopped the writer, or None while it runs."""
        writer = self.bridge._writer
        if self.bridge._failure is not None:
            return self.bridge._failure
        if writer is not None and not writer.is_alive() and not self.bridge._stop.is_set():
            return RuntimeError("the writer thread ended without an error")
        return None

    def acked(self) -> int:
        return self.counters().get("messages_acked", 0)

    def close(self, *, drop_session: bool = False) -> BaseException | None:
        """Stop the bridge (and the publisher); returns the writer's failure if it had one. ``drop_session``
        removes the bridge's session from the broker, with whatever it still holds (after a poison)."""
        failure = None
        if self._publisher is not None:
            self._publisher.disconnect()
            self._publisher.loop_stop()
            self._publisher = None
        try:
            self.bridge.stop()
        except BridgeError as exc:
            failure = exc.__cause__ or exc
        if drop_session and self.driver == "mqtt":
            _drop_session(self.servers.broker, self.client_id)
        return failure


def _drop_session(broker: Mosquitto, client_id: str) -> None:
    """Remove a client's persistent session (and what is queued for it): connect clean with expiry 0."""
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=MQTTProtocolVersion.MQTTv5)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    c.connect(broker.host, broker.port, clean_start=True, properties=props)
    c.loop_start()
    time.sleep(0.2)
    c.disconnect()
    c.loop_stop()


# =====================================================================================================================
# Findings


def _innermost(exc_text: str) -> str:
    """``File "agent/...", line N`` of the innermost project frame in a traceback text, shortened."""
    frames = [ln.strip() for ln in exc_text.splitlines() if ln.strip().startswith("File ")]
    own = [f for f in frames if "/agent/" in f or "/drivers/" in f] or frames
    if not own:
        return "?"
    f = own[-1]
    path = f.split('"')[1] if '"' in f else f
    path = path[path.find("agent/"):] if "agent/" in path else path
    line = f.split("line ")[1].split(",")[0] if "line " in f else "?"
    func = f.rsplit("in ", 1)[-1] if " in " in f else "?"
    return f"{path}:{line} {func}()"


def _record_text(rec: logging.LogRecord) -> str:
    exc = "".join(traceback.format_exception(*rec.exc_info)) if rec.exc_info else ""
    return f"{rec.getMessage()}\n{exc}"


def _record_signature(rec: logging.LogRecord) -> str:
    """An ERROR line of the bridge: its message template (without the data), and the exception's type and
    innermost project frame."""
    if rec.exc_info and rec.exc_info[1] is not None:
        return f"step error: {str(rec.msg)[:60]!r}: {signature_of(rec.exc_info[1])}"
    return f"step error: {str(rec.msg)[:80]!r}"


def signature_of(exc: BaseException) -> str:
    """Exception type and innermost project frame: what identifies a bug."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"{type(exc).__name__} at {_innermost(text)}"


def _text(value: str) -> str:
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class Finding:
    """One distinct problem (by ``signature``) with how often it happened and the smallest message known to cause
    it (``example``, printable; ``index``: the message's index in the run, -1 when not known)."""

    kind: str  # writer_died, stall, step_error, convert_raised, accounting, sentinel, dead_letter, schema, ack
    signature: str
    count: int = 0
    detail: str = ""
    index: int = -1
    example: str = ""
    minimized: str = ""


@dataclass
class PathReport:
    """The outcome of a run through the whole path (also printed as one JSON line)."""

    driver: str
    db: str
    seed: int
    inputs: int = 0
    published: int = 0
    not_publishable: int = 0
    not_subscribed: int = 0
    delivered: int = 0
    sentinels: int = 0
    sentinels_missing: int = 0
    sentinels_blocked: int = 0
    elapsed_s: float = 0.0
    probe_s: float = 0.0
    drain_s: float = 0.0
    segments: int = 0
    written_lines: int = 0
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    expected_by_reason: dict[str, int] = field(default_factory=dict)
    server_refused: int = 0
    server_refused_examples: list[str] = field(default_factory=list)
    redelivered: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    findings: dict[str, Finding] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.inputs / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def crashes(self) -> int:
        return sum(f.count for f in self.findings.values() if f.kind in ("writer_died", "step_error",
                                                                         "convert_raised"))

    @property
    def stalls(self) -> int:
        return sum(f.count for f in self.findings.values() if f.kind == "stall")

    @property
    def ok(self) -> bool:
        return not self.findings

    def add(self, kind: str, signature: str, *, detail: str = "", index: int = -1, example: str = "",
            count: int = 1) -> Finding:
        # Report text must itself be writable as UTF-8 whatever the messages held (a lone surrogate in a traceback).
        signature, detail, example = (_text(t) for t in (signature, detail, example))
        f = self.findings.get(signature)
        if f is None:
            f = self.findings[signature] = Finding(kind, signature, 0, detail[:2000], index, example)
        elif example and (not f.example or len(example) < len(f.example)):
            f.example, f.index = example, index
        f.count += count
        return f

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("findings", "labels")}
        out.update(rate_per_s=round(self.rate, 1), crashes=self.crashes, stalls=self.stalls, ok=self.ok,
                   findings=[asdict(f) for f in self.findings.values()],
                   labels=dict(sorted(self.labels.items(), key=lambda kv: -kv[1])[:25]))
        return out

    def summary(self) -> str:
        lines = [f"bridge path ({self.driver}, {self.db}, seed {self.seed}): {self.inputs} hostile messages "
                 f"({self.published} published, {self.not_publishable} not publishable, {self.not_subscribed} "
                 f"outside the subscription) + {self.sentinels} sentinels in {self.elapsed_s:.1f} s "
                 f"({self.rate:.0f} messages/s); {self.segments} bridge(s); drain {self.drain_s:.1f} s",
                 f"  dead letters by reason: {self.dead_letters_by_reason}",
                 f"  lines written {self.written_lines}; refused by the server {self.server_refused}; "
                 f"sentinels missing {self.sentinels_missing} (blocked behind a poison {self.sentinels_blocked}); "
                 f"crashes {self.crashes}; stalls {self.stalls}; redelivered {self.redelivered}"]
        for ex in self.server_refused_examples[:5]:
            lines.append(f"  refused by the server: {ex}")
        for f in self.findings.values():
            lines.append(f"  [{f.kind}] {f.signature} -- {f.count}x" + (f" (message #{f.index})" if f.index >= 0
                                                                      else ""))
            if f.detail:
                lines.append(f"      {f.detail[:600]}")
            if f.example:
                lines.append(f"      example: {f.example[:600]}")
            if f.minimized:
                lines.append(f"      minimized: {f.minimized[:600]}")
        lines.append("result: " + ("OK: no crash, no stall, nothing lost or blocked" if self.ok else
                                   f"FAILED ({len(self.findings)} distinct problems)"))
        return "\n".join(lines)


# =====================================================================================================================
# Probing single messages (direct driver, fresh bridge each time)


def probe(servers: Servers, messages: Sequence[Message], *, timeout: float = 20.0) -> str | None:
    """Feed ``messages`` to a fresh bridge (direct driver) and return the signature of the worst thing that went
    wrong (the writer died; a message was not acknowledged in time; a step logged an error), or None."""
    with tempfile.TemporaryDirectory(prefix="probe-", dir=servers.workdir) as tmp, captured_errors() as errors:
        seg = Segment(servers, Path(tmp), 0, "direct", max_wait_ms=5)
        try:
            for m in messages:
                seg.send(m)
            deadline = time.monotonic() + timeout
            while seg.acked() < len(messages) and seg.failure() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            failure = seg.failure()
            acked = seg.acked()
        finally:
            closed = seg.close()
        failure = failure or closed
        if failure is not None:
            return "writer died: " + signature_of(failure)
        if acked < len(messages):
            return "stall: not acknowledged"
        if errors.records:
            return _record_signature(errors.records[0])
        return None


def find_poison(servers: Servers, suspects: Sequence[tuple[int, Message]], prefix: str = "",
                ) -> tuple[int, Message, str] | None:
    """One of ``suspects`` that fails alone in :func:`probe` with a signature starting with ``prefix`` (the kind
    of failure that was seen: ``writer died``, ``stall``), found by halving the group that fails."""
    group = list(suspects)
    sig = probe(servers, [m for _, m in group])
    if sig is None or not sig.startswith(prefix):
        return None
    while len(group) > 1:
        first, second = group[:len(group) // 2], group[len(group) // 2:]
        s1 = probe(servers, [m for _, m in first])
        if s1 is not None and s1.startswith(prefix):
            group, sig = first, s1
            continue
        s2 = probe(servers, [m for _, m in second])
        if s2 is not None and s2.startswith(prefix):
            group, sig = second, s2
            continue
        break  # only the two halves together fail: report the group's first message with the group's signature
    index, msg = group[0]
    return index, msg, sig


def poison_path(msg: Message) -> str:
    """Where the odd text of a (minimized) message sits: the JSON path of the first key or string that is not
    printable (a lone surrogate, a control character, a line separator), e.g. ``readings[].values.<key>``;
    ``bytes`` when the payload is not JSON text; ``topic`` for an odd topic; empty when nothing is odd."""
    if not msg.topic.isprintable():
        return "topic"
    try:
        doc = json.loads(msg.payload)
    except RecursionError:
        return "nesting"
    except (ValueError, UnicodeDecodeError):
        return "bytes"

    def walk(obj: Any, path: str) -> str | None:
        if isinstance(obj, str):
            return path if not obj.isprintable() else None
        items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
        for k, v in items:
            if isinstance(k, str) and not k.isprintable():
                return f"{path}.<key>".lstrip(".")
            sub = f"{path}[]" if isinstance(obj, list) else f"{path}.{k}".lstrip(".")
            found = walk(v, sub)
            if found is not None:
                return found
        return None

    return walk(doc, "") or ""


def _shrink_tree(obj: Any) -> Iterator[Any]:
    """Smaller variants of a JSON tree: a dict or list member removed, a container replaced by a member, a string
    halved (keeping the characters that matter most: those that are not plain ASCII)."""
    if isinstance(obj, dict):
        for k in list(obj):
            yield {kk: vv for kk, vv in obj.items() if kk != k}
        for k, v in obj.items():
            for smaller in _shrink_tree(v):
                yield {**obj, k: smaller}
            if isinstance(k, str) and len(k) > 1:
                for sk in _shrink_text(k):
                    if sk not in obj:
                        yield {(sk if kk == k else kk): vv for kk, vv in obj.items()}
    elif isinstance(obj, list):
        for i in range(len(obj)):
            yield obj[:i] + obj[i + 1:]
        for i, v in enumerate(obj):
            for smaller in _shrink_tree(v):
                yield obj[:i] + [smaller] + obj[i + 1:]
    elif isinstance(obj, str) and len(obj) > 1:
        yield from _shrink_text(obj)


def _shrink_text(s: str) -> Iterator[str]:
    special = "".join(c for c in s if not (c.isascii() and c.isalnum()))
    if special and special != s:
        yield special
    n = len(s)
    yield s[: n // 2]
    yield s[n // 2:]
    if n > 2:
        yield s[1:]
        yield s[:-1]


def minimize(msg: Message, fails: Callable[[Message], bool], *, budget_s: float = 30.0) -> Message:
    """Greedily shrink ``msg`` while ``fails`` holds: JSON-aware when the payload is JSON (re-encoded with ``\\u``
    escapes, so a lone surrogate survives), bytewise otherwise."""
    deadline = time.monotonic() + budget_s
    best = msg

    try:
        doc = json.loads(best.payload)
        as_json = True
    except (ValueError, UnicodeDecodeError, RecursionError):
        as_json = False
    if as_json:
        compact = Message(best.topic, json.dumps(doc, separators=(",", ":")).encode(), best.label)
        if len(compact.payload) <= len(best.payload) and fails(compact):
            best = compact
        def as_message(d: Any) -> Message:
            return Message(best.topic, json.dumps(d, separators=(",", ":")).encode(), best.label)

        _, best = shrink((doc, best), lambda cur: ((d, as_message(d)) for d in _shrink_tree(cur[0])),
                         lambda cand, cur: len(cand[1].payload) < len(cur[1].payload) and fails(cand[1]), deadline)
        return best
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        data = best.payload
        size = len(data) // 2
        while size >= 1 and not improved and time.monotonic() < deadline:
            for i in range(0, len(data), size):
                cand = Message(best.topic, data[:i] + data[i + size:], best.label)
                if fails(cand):
                    best, improved = cand, True
                    break
            size //= 2
    return best


# =====================================================================================================================
# The run


#: Messages before the first unacknowledged one that are also suspects: the broker drops a packet over the bridge's
#: Maximum Packet Size, so positions may be off by the oversized messages in the window.
RING_SLACK = 16


@dataclass
class _Sent:
    index: int  # hostile index, or -1 - k for sentinel k
    msg: Message


def run_bridge_path(inputs: int, *, seed: int = 1, db: str = "influx", driver: str = "mqtt",
                    workdir: str | Path | None = None, servers: Servers | None = None, sentinel_every: int = 50,
                    window: int = 1000, stall_s: float = 30.0, max_messages: int = 500, large: float = 0.003,
                    minimize_s: float = 30.0, max_findings_probed: int = 8, quiet: bool = False,
                    progress: Callable[[str], None] | None = None) -> PathReport:
    """Send ``inputs`` hostile messages (and a sentinel after every ``sentinel_every``) through a real bridge.

    Args:
        inputs: hostile messages to generate.
        seed: message ``i`` is :func:`message` ``(seed, i)``.
        db: ``influx`` (InfluxDB 1.6.7, v1 sink) or ``victoria`` (VictoriaMetrics, v2 sink).
        driver: ``mqtt`` (through Mosquitto) or ``direct`` (the bridge's MQTT callback called directly).
        workdir: where servers, bridges and dead-letter stores live (default: a temporary directory, removed).
        servers: running servers to use (default: started here and stopped at the end).
        sentinel_every: hostile messages between two sentinels.
        window: messages sent before the run waits for the bridge (the backlog it lets build up).
        stall_s: seconds without progress (acknowledgements) that count as a stall; also the bound on the time
            from the last publish to the last sentinel stored.
        max_messages: the bridge's ``batch.max_messages``.
        large: share of large payloads (64 KiB .. 1.2 MB).
        minimize_s: seconds spent shrinking each poison found.
        max_findings_probed: poisons located and shrunk at most (each costs a few probes).
        quiet: keep the bridge's log lines off the root logger (a console run); ERROR lines are still checked.
        progress: called with a status line now and then.
    """
    tmp_owned = workdir is None
    work = Path(tempfile.mkdtemp(prefix="denen-bridge-path-")) if workdir is None else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    own_servers = servers is None
    report = PathReport(driver, servers.db if servers is not None else db, seed)
    labels: collections.Counter[str] = collections.Counter()
    expected: collections.Counter[str] = collections.Counter()
    got_dead: collections.Counter[str] = collections.Counter()
    sentinels_sent: set[int] = set()
    sentinels_lost: set[int] = set()  # sent to a bridge that then died: blocked behind the poison
    probed = 0
    agent_log = logging.getLogger("agent")
    propagate = agent_log.propagate
    if quiet:
        agent_log.propagate = False
    try:
        if servers is None:
            servers = Servers(work / "servers", db)
        with captured_errors() as errors:
            t0 = time.monotonic()
            seg_no = 0
            seg: Segment | None = None
            ring: collections.deque[_Sent] = collections.deque()
            seg_expected_lines = 0
            seg_expected: collections.Counter[str] = collections.Counter()
            seg_too_large = 0
            seg_sentinels: list[int] = []
            errors_seen = 0
            last_progress = time.monotonic()
            next_index = 0
            k = 0
            last_publish = t0

            def new_segment() -> Segment:
                nonlocal seg_no, seg_expected_lines, seg_too_large
                seg_no += 1
                report.segments += 1
                s = Segment(servers, work, seg_no, driver, max_messages=max_messages)
                ring.clear()
                seg_expected.clear()
                seg_expected_lines = 0
                seg_too_large = 0
                seg_sentinels.clear()
                return s

            def note_errors() -> None:
                nonlocal errors_seen
                for rec in errors.records[errors_seen:]:
                    if rec.exc_info and id(rec.exc_info[1]) in failures_seen:
                        continue
                    report.add("step_error", _record_signature(rec), detail=_record_text(rec)[-2000:])
                errors_seen = len(errors.records)

            def locate(kind: str, signature: str, acked: int) -> None:
                """Find, among the unacknowledged messages, the one that does it alone; shrink it. Findings are
                told apart by the signature and where the minimized message carries its odd text."""
                nonlocal probed
                suspects = [(s.index, s.msg) for pos, s in enumerate(ring)
                            if pos >= acked - ring_base[0] - RING_SLACK and s.index >= 0]
                detail = f"{len(suspects)} messages were not acknowledged"
                if probed >= max_findings_probed or not suspects:
                    report.add(kind, signature, detail=detail)
                    return
                probed += 1
                started = time.monotonic()
                before = len(errors.records)
                try:
                    found = find_poison(servers, suspects[: 4 * max_messages], signature.split(":")[0])
                    if found is None:
                        report.add(kind, signature, detail=detail + "; none of them fails alone (an interaction, "
                                   "or the server's state)")
                        return
                    index, msg, sig = found
                    small_msg = minimize(msg, lambda m: probe(servers, [m], timeout=10.0) == sig,
                                         budget_s=minimize_s)
                    where = poison_path(small_msg)
                    f = report.add(kind, f"{signature} [{where}]" if where else signature,
                                   detail=f"{detail}; alone it gives: {sig}", index=index, example=msg.describe())
                    if not f.minimized or len(small_msg.describe(2000)) < len(f.minimized):
                        f.minimized = small_msg.describe(2000)
                finally:
                    del errors.records[before:]  # the probes' own error lines are not new findings
                    probe_s[0] += time.monotonic() - started

            ring_base = [0]  # delivered count of the segment before ring[0]
            probe_s = [0.0]  # time spent locating and shrinking poisons (not part of the rate)
            failures_seen: set[int] = set()  # writer failures already reported (their ERROR line is the same)

            def close_segment(s: Segment, *, dead: bool) -> None:
                """Reconcile a segment's counters, store and the reference's prediction."""
                failure = s.close(drop_session=dead)
                note_errors()
                c = s.counters()
                for key, v in c.items():
                    if key.startswith("dead_letters.") and not key.startswith("dead_letters_"):
                        got_dead[key.split(".", 1)[1]] += v
                report.written_lines += c.get("lines_written", 0)
                report.server_refused += c.get("lines_refused", 0)
                report.redelivered += c.get("messages_redelivered", 0)
                _check_store(report, s, c)
                for ex in _refused_examples(s.dead_path, 5 - len(report.server_refused_examples)):
                    report.server_refused_examples.append(ex)
                if dead:
                    return
                if failure is not None:
                    report.add("writer_died", "writer died at stop: " + signature_of(failure))
                    return
                n = s.sent
                msgs = c.get("messages", 0)
                too_large_delivered = msgs - (n - seg_too_large)
                if not 0 <= too_large_delivered <= seg_too_large:
                    report.add("ack", "messages delivered to the bridge differ from those published",
                               detail=f"published {n} (of them {seg_too_large} over the size cap), the bridge "
                                      f"counted {msgs}")
                if c.get("messages_acked", 0) != msgs:
                    report.add("ack", "not every delivered message was acknowledged",
                               detail=f"delivered {msgs}, acknowledged {c.get('messages_acked', 0)}")
                if c.get("messages_redelivered", 0):
                    report.add("ack", "messages were redelivered",
                               detail=f"{c['messages_redelivered']} redeliveries in a run without outages")
                want = collections.Counter(seg_expected)
                want["too_large"] -= seg_too_large - max(0, min(too_large_delivered, seg_too_large))
                want = +want
                have = collections.Counter({k.split(".", 1)[1]: v for k, v in c.items()
                                            if k.startswith("dead_letters.") and v})
                refused = have.pop("rejected_by_server", 0)
                if refused != c.get("lines_refused", 0):
                    report.add("accounting", "dead letters rejected_by_server differ from lines refused",
                               detail=f"{refused} dead letters, {c.get('lines_refused', 0)} lines refused")
                if have != want:
                    diff = {r: have.get(r, 0) - want.get(r, 0) for r in set(have) | set(want)
                            if have.get(r, 0) != want.get(r, 0)}
                    report.add("accounting", "dead letters by reason differ from the reference conversion",
                               detail=f"bridge minus reference: {diff}")
                lines = c.get("lines_written", 0) + c.get("lines_refused", 0)
                if lines != seg_expected_lines:
                    report.add("accounting", "lines written + refused differ from the reference conversion",
                               detail=f"bridge {lines}, reference {seg_expected_lines}")

            def send_sentinel() -> None:
                """The next sentinel into the current segment: two lines the bridge must write."""
                nonlocal k, seg_expected_lines
                s_msg = sentinel(k)
                seg.send(s_msg)
                ring.append(_Sent(-1 - k, s_msg))
                sentinels_sent.add(k + 1)
                seg_sentinels.append(k + 1)
                seg_expected_lines += 2
                k += 1

            seg = new_segment()
            while next_index < inputs or k == 0 or seg.sent == 0:
                batch_end = min(inputs, next_index + window)
                while next_index < batch_end:
                    i = next_index
                    next_index += 1
                    msg = message(seed, i, large=large)
                    report.inputs += 1
                    labels[msg.label] += 1
                    if not publishable(msg.topic):
                        report.not_publishable += 1
                        continue
                    if not delivered(msg.topic):
                        report.not_subscribed += 1
                        continue
                    exp = seg.reference.expect(msg)
                    if exp.crash is not None:
                        what = exp.crash.strip().splitlines()[-1].split(":")[0]
                        f = report.add("convert_raised", f"convert raised {what} at {_innermost(exp.crash)}",
                                       detail=exp.crash[-1500:], index=i, example=msg.describe())
                        if not f.minimized:
                            ref = seg.reference
                            f.minimized = minimize(msg, lambda m: (ref.expect(m).crash or "").strip().endswith(
                                exp.crash.strip().splitlines()[-1]), budget_s=min(5.0, minimize_s)).describe(2000)
                    seg.send(msg)
                    report.published += 1
                    ring.append(_Sent(i, msg))
                    seg_expected.update(exp.rejects)
                    expected.update(exp.rejects)
                    seg_expected_lines += exp.lines
                    seg_too_large += exp.too_large
                    if report.published % sentinel_every == 0:
                        send_sentinel()
                if next_index >= inputs:
                    send_sentinel()  # the last one: its arrival bounds the drain time
                if not seg.sync():
                    report.add("stall", "the broker did not acknowledge the publishes within 60 s")
                last_publish = time.monotonic()
                # Wait for the bridge: at most one window behind (at the end: all of it).
                target = seg.sent if next_index >= inputs else max(0, seg.sent - window)
                target -= _uncertain(seg_too_large, driver)
                waited_from = time.monotonic()
                last_acked, last_move = seg.acked(), time.monotonic()
                problem: tuple[str, str] | None = None
                while True:
                    failure = seg.failure()
                    if failure is not None:
                        failures_seen.add(id(failure))
                        problem = ("writer_died", "writer died: " + signature_of(failure))
                        break
                    acked = seg.acked()
                    if acked >= target:
                        break
                    if acked != last_acked:
                        last_acked, last_move = acked, time.monotonic()
                    elif time.monotonic() - last_move > stall_s:
                        problem = ("stall", f"no acknowledgement for {stall_s:.0f} s with "
                                            f"{seg.sent - acked} messages outstanding")
                        break
                    time.sleep(0.01)
                note_errors()
                if problem is not None:
                    kind, signature = problem
                    acked = seg.acked()
                    lost = [-s.index for pos, s in enumerate(ring) if s.index < 0 and pos >= acked - ring_base[0]]
                    sentinels_lost.update(lost)
                    close_segment(seg, dead=True)
                    locate(kind, signature, acked)
                    seg = new_segment()
                    ring_base[0] = 0
                    continue
                # Keep what may still be unacknowledged for locating a poison; forget the rest.
                acked = seg.acked()
                while ring and ring_base[0] < acked - RING_SLACK:
                    ring.popleft()
                    ring_base[0] += 1
                if progress is not None and time.monotonic() - last_progress > 15:
                    last_progress = time.monotonic()
                    rate = report.inputs / (time.monotonic() - t0)
                    progress(f"bridge path: {report.inputs}/{inputs} messages, {rate:.0f}/s, "
                             f"{len(report.findings)} problems, waited {time.monotonic() - waited_from:.1f} s")
            # The drain: from the last publish until the last sentinel is in the database.
            want_sentinels = sentinels_sent - sentinels_lost
            deadline = last_publish + stall_s
            stored: set[int] = set()
            while True:
                stored = servers.sentinels()
                if want_sentinels <= stored or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            report.drain_s = time.monotonic() - last_publish
            if report.drain_s > stall_s:
                report.add("stall", f"the last sentinel was not stored within {stall_s:.0f} s of the last publish",
                           detail=f"{len(want_sentinels - stored)} sentinels still missing")
            close_segment(seg, dead=False)
            report.elapsed_s = time.monotonic() - t0 - probe_s[0]
            report.probe_s = probe_s[0]
            stored = servers.sentinels()
            missing = want_sentinels - stored
            report.sentinels = len(sentinels_sent)
            report.sentinels_missing = len(missing)
            report.sentinels_blocked = len(sentinels_lost - stored)
            if missing:
                report.add("sentinel", "sentinels of another gateway are missing from the database",
                           detail=f"{len(missing)} of {len(want_sentinels)} missing, e.g. fcnt "
                                  f"{sorted(missing)[:10]}")
            if report.sentinels_blocked:
                report.add("sentinel", "sentinels blocked behind a poison (never stored)",
                           detail=f"{report.sentinels_blocked} sentinels", count=report.sentinels_blocked)
            for problem in servers.schema_problems():
                # One finding per kind of problem (names and values left out), the first as its example.
                report.add("schema", "the database holds what the schema does not have: "
                           + re.sub(r"'[^']*'|\[[^\]]*\]", "…", problem), detail=problem)
        report.dead_letters_by_reason = dict(got_dead.most_common())
        report.expected_by_reason = dict(expected.most_common())
        report.labels = dict(labels)
    finally:
        agent_log.propagate = propagate
        if own_servers and servers is not None:
            servers.close()
        if tmp_owned:
            shutil.rmtree(work, ignore_errors=True)
    return report


def _uncertain(too_large: int, driver: str) -> int:
    """Messages over the size cap may never reach an MQTT bridge (the broker drops a packet past the client's
    Maximum Packet Size), so they are not waited for."""
    return too_large if driver == "mqtt" else 0


def _check_store(report: PathReport, seg: Segment, counters: dict[str, int]) -> None:
    """Read every row of the segment's dead-letter store back (as an operator would, and through the API)."""
    path = seg.dead_path
    if not path.exists():
        if counters.get("dead_letters", 0):
            report.add("dead_letter", "the dead-letter store does not exist although dead letters were counted")
        return
    rows = 0
    internal: tuple[Any, ...] | None = None
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            for reason, detail, topic, rid, kind, content in db.execute(
                    "SELECT reason, detail, topic, reading_id, kind, content FROM dead_letter"):
                rows += 1
                for name, text in (("reason", reason), ("detail", detail), ("topic", topic), ("reading_id", rid)):
                    if text is not None:
                        text.encode()  # raises for a lone surrogate that slipped in
                if reason == "internal_error" and internal is None:
                    internal = (topic, kind, content, detail)
                if not isinstance(content, bytes) or kind not in ("payload", "reading", "line"):
                    report.add("dead_letter", "a dead-letter row has no bytes content or an odd kind",
                               detail=f"kind {kind!r}, content {type(content).__name__}")
        store = DeadLetterStore(path)
        try:
            api_total = store.count()
            store.items(limit=100)
        finally:
            store.close()
    except (sqlite3.Error, UnicodeError, ValueError) as exc:
        report.add("dead_letter", f"the dead-letter store cannot be read back: {type(exc).__name__}",
                   detail=str(exc)[:500])
        return
    if internal is not None:
        topic, kind, content, detail = internal
        report.add("internal_error", "dead letters with reason internal_error: a step raised on a message",
                   detail=str(detail)[-1500:], example=Message(topic or "", bytes(content), kind).describe())
    counted = counters.get("dead_letters", 0)
    evicted = counters.get("dead_letters_evicted", 0)
    lost = counters.get("dead_letters_lost", 0)
    if rows + evicted + lost != counted or api_total != rows:
        report.add("dead_letter", "the dead-letter store holds a different number of items than the bridge counted",
                   detail=f"rows {rows} (API {api_total}), evicted {evicted}, lost {lost}, counted {counted}")


def _refused_examples(path: Path, limit: int) -> list[str]:
    if limit <= 0 or not path.exists():
        return []
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT detail, content FROM dead_letter WHERE reason = 'rejected_by_server' LIMIT ?",
                          (limit,)).fetchall()
    return [f"{bytes(c)[:200]!r}: {d[:200]}" for d, c in rows]


