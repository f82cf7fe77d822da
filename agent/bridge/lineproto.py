r"""From MQTT messages to InfluxDB line protocol, following README "InfluxDB schema" exactly.

One :class:`Serializer` serves both sinks. :meth:`Serializer.convert` takes one MQTT message (topic and payload)
and returns the lines to write plus the parts that can never be written, each with a reason, for the dead-letter
store. It never raises, whatever the topic and the bytes: this is where a hostile gateway's payload meets the
backend, and every string that reaches a line, a tag, a field key, a dead letter or a log line is checked here.

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

and per ``denen.status/1`` document a ``gateway_status`` point (tags ``gateway, site``; ``online`` 1/0, the
``agent`` version as a string, and the registry's ``name`` and ``municipality`` of the gateway as strings where it
has them), at the document's ``ts_us`` or, for the broker-published Last Will which has none, at the time the
bridge received it.

The gateway's local outputs and the commands it answered (the alert loop, README "Alerts"):

* per ``denen.state/1`` document (``<gateway>/state``, retained) a ``gateway_state`` point: tags ``gateway, site``;
  fields ``siren_on`` 1/0, ``siren_why`` (``alert``, ``offline``, ``test`` or ``""``), ``siren_alert`` (the key of
  the alert it sounds for, or ``""``), ``lamp`` (the lamp's state), ``held_active`` 1/0, ``held_count`` (readings
  held back), ``alerts_open`` (active alerts) and ``alerts_unacknowledged`` (of those, not acknowledged), at the
  document's ``ts_us``. Every field is in every point, so ``last()`` of each comes from the same document;
* per ``denen.result/1`` document (``<gateway>/results``) one ``command_result`` point per entry of ``results``:
  tags ``command, gateway, outcome, site``; string fields ``target`` (alert key or id, ``""`` for a test chirp),
  ``by``, ``request_id``, ``via`` (``""`` where null), at ``ts_us`` plus the entry's index in µs.

``command`` and ``outcome`` are tags, so only the known ones are taken (:data:`COMMANDS`, :data:`OUTCOMES`); a lamp
state must be a state name (``[a-z][a-z0-9_]*``, at most 40), ``request_id`` 1-64 of ``A-Za-z0-9_-``; ``by``,
``target`` and ``siren_alert`` are free text. A document's ``ts_us`` must lie in the window of a synced reading;
a state document that says its readings are held because the clock was never set (``held.reason``
``clock_unsynced``) is written at the bridge's time instead, as an unsynced reading would be.

``site`` comes from the bridge's gateway registry (:mod:`agent.bridge.registry`), never from the payload: the
broker's ACL vouches for the gateway id in the topic, nothing vouches for what the gateway writes. A batch's own
``site`` is still required by the schema, and ignored; where it differs from the registry's, the message is noted
``site_mismatch``. A gateway the registry does not list is written with site ``unknown`` and noted
``unknown_gateway`` (registry policy ``accept``), or dead-lettered ``unknown_gateway`` (policy ``refuse``). Notes
(:attr:`Converted.notes`) are counted and logged by the bridge; they reject nothing.

Every point carries the reading's edge timestamp ``ts_us`` (precision ``u``), so a redelivered reading produces
byte-identical lines and overwrites itself. A synced or corrected clock's ``ts_us`` must lie between 2020-01-01
and ``max_future_s`` (default 300 s) ahead of the bridge's clock; otherwise the reading is dead-lettered
(``timestamp_before_2020``, ``timestamp_in_future``): a point stamped in 2200 would stay every dashboard's
``last()`` value for ever. One exception: a reading of a gateway whose clock was never set (``"clock": "unsynced"``;
an SOS pressed on a board that booted in 1970 goes out at once, before NTP) stamped outside that window is written
at the time the bridge received it, with ``clock_ok=0``, so it is seen where people look; a redelivery of such a
reading may make a second point. ``"clock": "corrected"`` (stamped before the sync, given its true time by the
gateway) counts as a good clock: ``clock_ok=1``. A status document's ``ts_us`` must lie in the same window. Every
number is written as a float (``3.0``, never ``3i``: an integer would fix the field's type and every later float
would conflict); booleans become ``1.0``/``0.0``.

Text, checked at this boundary so that InfluxDB 1.6.7 and VictoriaMetrics store every line identically (both were
tested with hostile names, keys and messages: ``tests/security/test_escaping.py``):

* The payload must be UTF-8 (a leading byte order mark is ignored). JSON can still spell a lone surrogate
  (``"\ud800"``), which no UTF-8 encoder takes: a reading holding one in any string, key or value, is rejected
  ``invalid_text`` (a status, state or result document: the whole document).
* Control characters (Unicode category Cc: U+0000-U+001F, U+007F-U+009F) in free text (a reading's or an alert's
  ``name``, an alert's ``message``, a status document's ``agent``, a state's ``siren.alert``, a result's
  ``target`` and ``by``) become spaces: a line break would end the line, and a name with a tab is still the node's
  name. A values key holding one is rejected ``invalid_text``.
* Tag values (names): a backslash becomes U+FF3C (``＼``, how Japanese fonts draw it anyway). The two servers read a
  backslash before ``,``, ``=``, a space or another backslash differently (the name ``a\,gateway\=x``, written
  ``a\\,gateway\\=x``, is one tag value to InfluxDB and an extra label to VictoriaMetrics), and InfluxDB refuses
  one at the end. Then ``,``, ``=`` and spaces are escaped with a backslash, which both read alike. A name is cut
  to 200 characters (VictoriaMetrics truncates long label values, InfluxDB does not).
* Field keys (a reading's ``values`` keys) are taken as written or the reading is rejected ``invalid_reading``:
  at most 200 characters, no backslash and no ``"`` (read differently: VictoriaMetrics stored ``a"b=1.0`` as 0),
  not ``time`` (InfluxDB refuses it) and not a field the bridge adds (``fcnt``, ``rssi``, ``snr``, ``auth_ok``,
  ``clock_ok``, ``message``). ``,``, ``=`` and spaces are escaped.
* String fields (``message``, ``agent``, the registry's ``name`` and ``municipality``) are cut to 1,000 characters;
  ``\`` and ``"`` are escaped (VictoriaMetrics stores a string field as the number 0; InfluxDB the text).
* A reading whose fields would make a line longer than 32,768 characters is rejected ``invalid_reading``:
  VictoriaMetrics refuses a whole request that holds a line over 256 KiB, InfluxDB takes it.
* A dead letter's ``detail`` and ``reading_id`` and a note's detail are made printable: control characters and lone
  surrogates are written as ``\xNN`` / ``\uNNNN``, and a detail is cut to 1,000 characters. A rejected
  reading's content is its JSON, with ``\u`` escapes where it holds a lone surrogate; a rejected message's
  content is its payload, byte for byte.

Rejected, with a reason code (the dead-letter store keeps the content):

=========================  ===========================================================================
``invalid_json``           the payload is not UTF-8 JSON, or is nested too deeply (the whole message)
``invalid_schema``         not a ``denen.readings/1`` / ``denen.status/1`` / ``denen.state/1`` /
                           ``denen.result/1`` document, or a topic outside the topic scheme (the whole
                           message)
``unknown_schema``         a schema or major version this bridge does not know (the whole message)
``wrong_gateway``          the document names another gateway than its topic (the whole message): the
                           broker's ACL vouches for the topic, so the topic wins
``unknown_gateway``        the registry does not list the gateway and its policy is ``refuse`` (the
                           whole message)
``invalid_reading``        one reading does not follow the schema (only that reading)
``invalid_text``           a lone surrogate anywhere in a reading or a document, or a control character
                           in a values key (that reading; a document whole)
``timestamp_before_2020``  ``ts_us`` before 2020-01-01 on a clock the gateway calls synced or corrected: never a
                           real reading of this product
``timestamp_in_future``    ``ts_us`` more than ``max_future_s`` ahead of the bridge's clock, on a clock the
                           gateway calls synced or corrected (a reading), or in a status, state or result
                           document
``not_finite``             a value is NaN or infinite, which line protocol cannot carry
=========================  ===========================================================================

Noted (:attr:`Converted.notes`: written, and counted): ``site_mismatch``, ``unknown_gateway``.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
import time
from dataclasses import dataclass, field
from typing import Any

from agent.bridge.registry import UNKNOWN_SITE, GatewayRegistry
from agent.gateway.clock import EPOCH_FLOOR_US

__all__ = [
    "COMMANDS",
    "OUTCOMES",
    "READINGS_SCHEMA",
    "RESULT_SCHEMA",
    "STATE_SCHEMA",
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
STATE_SCHEMA = "denen.state/1"
RESULT_SCHEMA = "denen.result/1"
#: The commands a gateway answers (``<prefix>/<gateway>/cmd/<name>``) and every outcome it may report; both are
#: tags of ``command_result``, so they stay these few.
COMMANDS = frozenset({"alert-ack", "siren-silence", "test-chirp"})
OUTCOMES = frozenset({"stopped", "already_acknowledged", "not_active", "silenced", "not_sounding", "no_siren",
                      "chirped", "no_outputs", "invalid"})
#: Why a siren sounds (``siren.why`` of a state document); None: it does not.
SIREN_WHY = frozenset({"alert", "offline", "test", None})
#: Why readings are held (``held.reason``).
HELD_REASONS = frozenset({"clock_unsynced", None})
#: Who sent a command (``via``).
VIAS = frozenset({"console", "cli", None})

NODE_KINDS = frozenset({"sos", "trap", "water_level", "rain", "tilt", "weather", "heartbeat"})
KINDS = NODE_KINDS | {"gateway_health", "alert"}
#: Kinds the gateway makes itself (node ``gateway``).
GATEWAY_KINDS = frozenset({"gateway_health", "alert"})
LANES = frozenset({"sos", "alarm", "telemetry", "diagnostics"})
#: Field names a value cannot have: the fields the bridge adds to a reading's point (``message`` on alerts);
#: ``time``, which InfluxDB refuses as a field key; every tag key the bridge writes (a field named ``gateway``
#: would make InfluxQL's ``WHERE "gateway" = 'x'`` compare the field, so every other point drops out of the
#: dashboards' queries); and the column names Flux gives every record (InfluxDB 2/3).
RESERVED_FIELDS = frozenset({"fcnt", "rssi", "snr", "auth_ok", "clock_ok", "message", "time",
                             "gateway", "site", "node", "name", "kind", "type", "severity",
                             "_field", "_measurement", "_value", "_time", "_start", "_stop", "result", "table"})
#: Longest tag value (a name), in characters; longer ones are cut (module docstring).
TAG_VALUE_MAX = 200
#: Longest field key (a values key), in characters; longer ones reject the reading.
FIELD_KEY_MAX = 200
#: Longest string field value (message, agent), in characters; longer ones are cut.
STRING_FIELD_MAX = 1000
#: Longest field set of one line, in characters: 4 bytes a character at most keeps a line far below the 256 KiB
#: VictoriaMetrics takes.
FIELDS_MAX = 32_768
#: Longest Reject detail, in characters.
DETAIL_MAX = 1000

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
#: Topics of one gateway document each (``<prefix>/<gateway>/<topic>``).
_DOCUMENT_TOPICS = frozenset({"status", "state", "results"})
_STATE_REQUIRED = ("ts_us", "siren", "lamp", "held", "alerts")
_STATE_KEYS = frozenset(_STATE_REQUIRED) | {"schema", "gateway", "relays"}
_SIREN_KEYS = frozenset({"configured", "on", "why", "alert", "silenced"})
_LAMP_KEYS = frozenset({"configured", "state"})
_HELD_KEYS = frozenset({"active", "reason", "count", "until_us"})
#: A lamp state (``ok``, ``no_backhaul``, ``alarm``, ``off``; a newer gateway's own still fits).
_STATE_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,39}\Z")
_RESULT_REQUIRED = ("ts_us", "command", "results")
_RESULT_KEYS = frozenset(_RESULT_REQUIRED) | {"schema", "gateway", "request_id", "by", "via"}
#: ``detail``: why a command was invalid, in the gateway's words (checked as text, not written).
_RESULT_ENTRY_KEYS = frozenset({"target", "outcome", "detail"})
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_FCNT_MAX = 0xFFFFFFFF
#: Control characters (Unicode category Cc): a newline would end the line, and none belongs in a name.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")
_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")
#: What a detail or a reading id must not carry into a log line or the dead-letter store.
_UNPRINTABLE_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: The only way a lone surrogate gets into valid UTF-8 JSON: a \uD800-\uDFFF escape. Payloads without one (nearly
#: all) skip the walk through every string.
_SURROGATE_ESCAPE_RE = re.compile(rb"\\u[dD][89a-fA-F]")
_TAG_CACHE_MAX = 50_000
_MAX_FUTURE_S = 300.0

_show = reprlib.Repr()
_show.maxlevel, _show.maxstring, _show.maxother, _show.maxlist, _show.maxdict = 2, 80, 80, 4, 4


# -- escaping (https://docs.influxdata.com/influxdb/v1/write_protocols/line_protocol_reference/) ------------------
def escape_measurement(name: str) -> str:
    """Escape a measurement name: commas and spaces."""
    return name.replace(",", "\\,").replace(" ", "\\ ") if _needs(name, ", ") else name


def escape_key(key: str) -> str:
    """Escape a tag key or field key: commas, equals signs and spaces.

    The key must pass :func:`valid_key`: InfluxDB and VictoriaMetrics read a backslash in a key differently.
    """
    return key.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ") if _needs(key, ",= ") else key


def valid_key(key: str) -> bool:
    """Whether a field key can be written so that InfluxDB 1.x and VictoriaMetrics read the same key: not empty, at
    most :data:`FIELD_KEY_MAX` characters, no control characters, no backslash and no double quote."""
    return (0 < len(key) <= FIELD_KEY_MAX and not _CONTROL_RE.search(key) and "\\" not in key
            and '"' not in key)


def escape_tag_value(value: str) -> str:
    """Normalise and escape a tag value (a free-text name) so that InfluxDB 1.x and VictoriaMetrics store the same.

    Cut to :data:`TAG_VALUE_MAX` characters; control characters become spaces (a newline would end the line); a
    backslash becomes U+FF3C, because the two servers read a backslash before an escaped character differently and
    InfluxDB refuses one at the end; then commas, equals signs and spaces are escaped. Only free-text names get
    here; ids are checked against the schema's patterns first. The result may be empty (then leave the tag out).
    """
    if len(value) > TAG_VALUE_MAX:
        value = value[:TAG_VALUE_MAX]
    if _CONTROL_RE.search(value):
        value = _CONTROL_RE.sub(" ", value)
    if "\\" in value:
        value = value.replace("\\", "\uff3c")
    if _needs(value, ",= "):
        value = value.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")
    return value


def escape_string_field(value: str) -> str:
    """Quote a string field value: cut to :data:`STRING_FIELD_MAX` characters, control characters become spaces
    (InfluxDB refuses a line break even inside a quoted string), backslashes and double quotes are escaped."""
    if len(value) > STRING_FIELD_MAX:
        value = value[:STRING_FIELD_MAX]
    if _CONTROL_RE.search(value):
        value = _CONTROL_RE.sub(" ", value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_float(value: float) -> str:
    """A float field value: the shortest text that reads back as the same float (``3.0``, ``182.5``,
    ``1e+16``). Never an integer literal. The caller checks that the value is finite."""
    return repr(float(value))


def _needs(text: str, chars: str) -> bool:
    return any(c in text for c in chars)


def _printable(text: str, limit: int = DETAIL_MAX) -> str:
    """``text`` safe for a log line and any UTF-8 store: control characters and lone surrogates written as
    ``\\xNN`` / ``\\uNNNN``, and cut to ``limit`` characters (then an ellipsis marks the cut)."""
    cut = len(text) > limit
    text = text[:limit]
    if _UNPRINTABLE_RE.search(text):
        text = _UNPRINTABLE_RE.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}",
                                   text)
        if len(text) > limit:
            text, cut = text[:limit], True
    return text + "…" if cut else text


def _lone_surrogate(obj: Any) -> str | None:
    """The first string (key or value) of a JSON tree that holds a lone surrogate, or None. Iterative: a tree that
    JSON could parse may still be too deep for recursion from here."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if type(o) is str:
            if _LONE_SURROGATE_RE.search(o):
                return o
        elif type(o) is dict:
            for k, v in o.items():
                if _LONE_SURROGATE_RE.search(k):
                    return k
                stack.append(v)
        elif type(o) is list:
            stack.extend(o)
    return None


def _reading_json(reading: Any) -> bytes:
    """A rejected reading as JSON text for the dead-letter store: UTF-8 as sent, or ``\\u`` escapes where it holds
    a lone surrogate (which UTF-8 cannot carry)."""
    try:
        return json.dumps(reading, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(reading, ensure_ascii=True, separators=(",", ":")).encode()
    except RecursionError:
        return b'"(not kept: nested too deeply to write back as JSON)"'


# -- results ---------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Reject:
    """Something that can never be written, for the dead-letter store.

    Attributes:
        reason: short code (module docstring table), counted per code.
        detail: what exactly is wrong, in plain English; printable, at most :data:`DETAIL_MAX` characters (plus
            an ellipsis).
        content: what is kept: the raw payload (``kind`` "payload") or one reading as JSON text ("reading").
        kind: ``"payload"`` when the whole message is rejected, ``"reading"`` for one reading of it.
        reading_id: the reading's ``id`` when known (printable).
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
        sources: for each line, the id of the reading it comes from, or ``<topic>:<gateway>`` for the points of a
            document (``status:``, ``state:``, ``results:``); a reading id never holds a colon.
        rejects: parts of the message that can never be written.
        notes: (code, detail) of what was written but is worth counting: ``site_mismatch`` (the payload's site
            differs from the registry's, and was ignored), ``unknown_gateway`` (not in the registry: written with
            site ``unknown``). Details are printable.
        readings: readings in the message that produced lines.
        gateway: the gateway named by the topic, or None for a topic outside the scheme.
    """

    lines: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)
    readings: int = 0
    gateway: str | None = None


class _Invalid(Exception):
    """Internal: a document or reading breaks the schema (never leaves this module)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


#: What a check may raise on JSON of a shape nothing expects (a list where a name goes, an integer beyond the float
#: range, a tree too deep to compare).
_SHAPE_ERRORS = (TypeError, OverflowError, ValueError, RecursionError)


def _is_int(v: object) -> bool:
    return type(v) is int


def _is_number(v: object) -> bool:
    return (type(v) is float or type(v) is int) and not isinstance(v, bool)


class Serializer:
    """Converts MQTT messages of the denen topic scheme into line protocol.

    Args:
        topic_prefix: the gateways' ``mqtt.topic_prefix`` (``denen/v1``); topics are
            ``<prefix>/<gateway>/readings/<lane>`` and ``<prefix>/<gateway>/status``, ``.../state``,
            ``.../results``.
        now_us: the bridge's clock, µs since the epoch: the time of status documents without ``ts_us`` (the Last
            Will) and of unsynced readings stamped outside the plausible window, and the reference for
            ``max_future_s``.
        registry: where each gateway's site comes from; None: an empty registry that accepts every gateway with
            site ``unknown``. The attribute :attr:`registry` may be replaced while running.
        max_future_s: how far ahead of ``now_us`` a timestamp may be, in seconds, before it is refused
            (``timestamp_in_future``).
    """

    def __init__(self, topic_prefix: str = "denen/v1", *, now_us: Any = None, registry: GatewayRegistry | None = None,
                 max_future_s: float = _MAX_FUTURE_S) -> None:
        self.prefix = topic_prefix.rstrip("/") + "/"
        self._now_us = now_us or (lambda: time.time_ns() // 1000)
        self.registry = registry if registry is not None else GatewayRegistry()
        self.max_future_us = int(max_future_s * 1_000_000)
        # Tag sets repeat for every reading of a node; escaping them once per node is most of the saving.
        self._tags: dict[tuple[Any, ...], str] = {}
        self._field_keys: dict[str, str] = {}

    # -- entry point -------------------------------------------------------------------------------------------
    def convert(self, topic: str, payload: bytes) -> Converted:
        """Convert one message. Never raises for bad input: it becomes a :class:`Reject`."""
        out = Converted()
        try:
            self._convert(topic, payload, out)
        finally:
            # Whatever the input held, what leaves here can be logged and stored as UTF-8.
            for rej in out.rejects:
                rej.detail = _printable(rej.detail)
                if rej.reading_id is not None:
                    rej.reading_id = _printable(rej.reading_id, 200)
            if out.notes:
                out.notes = [(code, _printable(detail)) for code, detail in out.notes]
        return out

    def _convert(self, topic: str, payload: bytes, out: Converted) -> None:
        rest = topic[len(self.prefix):] if topic.startswith(self.prefix) else None
        parts = rest.split("/") if rest else []
        if len(parts) == 3 and parts[1] == "readings" and _ID_RE.match(parts[0]):
            kind, gateway = "readings", parts[0]
        elif len(parts) == 2 and parts[1] in _DOCUMENT_TOPICS and _ID_RE.match(parts[0]):
            kind, gateway = parts[1], parts[0]
        else:
            out.rejects.append(Reject("invalid_schema", f"topic {topic} is not part of the topic scheme "
                                      f"{self.prefix}<gateway>/readings/<lane>, .../status, .../state or "
                                      ".../results (gateway: an id)", payload))
            return
        out.gateway = gateway
        try:
            # Strict UTF-8: json.loads(bytes) would also take UTF-16 and surrogates encoded as UTF-8 bytes.
            doc = json.loads(payload.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError) as exc:
            # json.JSONDecodeError is a ValueError; a payload that is not UTF-8 raises UnicodeDecodeError.
            out.rejects.append(Reject("invalid_json", f"payload is not UTF-8 JSON: {exc}", payload))
            return
        except RecursionError:
            out.rejects.append(Reject("invalid_json", "payload is nested too deeply", payload))
            return
        # One byte scan first: most payloads hold no backslash at all.
        check_text = b"\\" in payload and _SURROGATE_ESCAPE_RE.search(payload) is not None
        latest = self._now_us() + self.max_future_us
        try:
            try:
                if kind == "readings":
                    self._readings(doc, gateway, topic, out, check_text, latest)
                elif kind == "status":
                    self._status(doc, gateway, out, check_text, latest)
                elif kind == "state":
                    self._state(doc, gateway, out, check_text, latest)
                else:
                    self._results(doc, gateway, out, check_text, latest)
            except _SHAPE_ERRORS as exc:
                raise _Invalid("invalid_schema", f"{type(exc).__name__}: {exc}") from None
        except _Invalid as exc:
            out.lines.clear()
            out.sources.clear()
            out.notes.clear()
            out.readings = 0
            out.rejects.append(Reject(exc.reason, exc.detail, payload))

    def _site(self, gateway: str, claimed: str | None, out: Converted) -> str:
        """The registry's site of ``gateway``; notes a claim that differs, refuses an unknown gateway by policy."""
        registry = self.registry
        info = registry.lookup(gateway)
        if info is None:
            where = f"the gateway registry {registry.path}" if registry.path else "the gateway registry (empty)"
            if registry.unknown == "refuse":
                raise _Invalid("unknown_gateway", f"gateway {gateway} is not in {where}")
            out.notes.append(("unknown_gateway", f"gateway {gateway} is not in {where}: written with site "
                              f"{UNKNOWN_SITE}"))
            return UNKNOWN_SITE
        if claimed is not None and claimed != info.site:
            out.notes.append(("site_mismatch", f"gateway {gateway} sent site {claimed!r}; the registry's site "
                              f"{info.site!r} is written"))
        return info.site

    # -- reading batches ---------------------------------------------------------------------------------------
    def _readings(self, doc: Any, gateway: str, topic: str, out: Converted, check_text: bool, latest: int) -> None:
        if not isinstance(doc, dict):
            raise _Invalid("invalid_schema", "payload is not a JSON object")
        schema = doc.get("schema")
        if schema != READINGS_SCHEMA:
            raise _Invalid("unknown_schema" if isinstance(schema, str) else "invalid_schema",
                           f"schema {_show.repr(schema)} is not {READINGS_SCHEMA!r}; a newer major version needs a "
                           "newer bridge" if isinstance(schema, str) else "'schema' is missing")
        extra = doc.keys() - _BATCH_KEYS
        if extra:
            raise _Invalid("invalid_schema", f"unknown keys in the batch: {', '.join(map(repr, sorted(extra)))}")
        for key in ("gateway", "site"):
            value = doc.get(key)
            if not isinstance(value, str) or not _ID_RE.match(value):
                raise _Invalid("invalid_schema", f"'{key}' is missing or not a valid id: {_show.repr(value)}")
        if doc["gateway"] != gateway:
            raise _Invalid("wrong_gateway", f"the batch names gateway {doc['gateway']!r} but was published under "
                           f"{topic}")
        if doc.get("lane") not in LANES:
            raise _Invalid("invalid_schema", f"'lane' is missing or unknown: {_show.repr(doc.get('lane'))}")
        if not _is_int(doc.get("sent_us")):
            raise _Invalid("invalid_schema", "'sent_us' is missing or not an integer")
        readings = doc.get("readings")
        if not isinstance(readings, list) or not readings:
            raise _Invalid("invalid_schema", "'readings' is missing, not a list, or empty")
        site = self._site(gateway, doc["site"], out)
        for reading in readings:
            try:
                try:
                    if check_text:
                        bad = _lone_surrogate(reading)
                        if bad is not None:
                            raise _Invalid("invalid_text", f"the reading holds a lone surrogate, which is not "
                                           f"text: {_show.repr(bad)}")
                    self._reading(reading, site, gateway, out, latest)
                except _SHAPE_ERRORS as exc:
                    # JSON can hold what no check above expects (a list where a name goes, an integer beyond
                    # the float range): that reading is malformed, the others of the batch are not.
                    raise _Invalid("invalid_reading", f"{type(exc).__name__}: {exc}") from None
            except _Invalid as exc:
                rid = reading.get("id") if isinstance(reading, dict) and isinstance(reading.get("id"), str) else None
                out.rejects.append(Reject(exc.reason, exc.detail, _reading_json(reading), "reading", rid))

    def _reading(self, r: Any, site: str, gateway: str, out: Converted, latest: int) -> None:
        if not isinstance(r, dict):
            raise _Invalid("invalid_reading", "a reading is not a JSON object")
        missing = [k for k in _READING_REQUIRED if k not in r]
        if missing:
            raise _Invalid("invalid_reading", f"reading lacks {', '.join(missing)}")
        if len(r) > len(_READING_REQUIRED):
            extra = r.keys() - _READING_KEYS
            if extra:
                raise _Invalid("invalid_reading", f"unknown keys in the reading: "
                               f"{', '.join(map(repr, sorted(extra)))}")
        node, fcnt, kind, ts = r["node"], r["fcnt"], r["kind"], r["ts_us"]
        if not isinstance(node, str) or not _NODE_RE.match(node):
            raise _Invalid("invalid_reading", f"node {_show.repr(node)} is not 8 lowercase hex digits or 'gateway'")
        if not _is_int(fcnt) or not 0 <= fcnt <= _FCNT_MAX:
            raise _Invalid("invalid_reading", f"fcnt {_show.repr(fcnt)} is not an integer 0..4294967295")
        if kind not in KINDS:
            raise _Invalid("invalid_reading", f"kind {_show.repr(kind)} is unknown")
        if (kind in GATEWAY_KINDS) != (node == "gateway"):
            raise _Invalid("invalid_reading", f"kind {kind} does not fit node {node}")
        if ("alert" in r) != (kind == "alert"):
            raise _Invalid("invalid_reading", "an alert object belongs to readings of kind alert, and only there")
        rid = f"{gateway}/{node}/{fcnt}"
        if r["id"] != rid:
            raise _Invalid("invalid_reading", f"id {_show.repr(r['id'])} is not <gateway>/<node>/<fcnt> = {rid!r}")
        if r["lane"] not in LANES:
            raise _Invalid("invalid_reading", f"lane {_show.repr(r['lane'])} is unknown")
        if not _is_int(ts):
            raise _Invalid("invalid_reading", f"ts_us {_show.repr(ts)} is not an integer")
        clock = r["clock"]
        if clock not in ("synced", "unsynced", "corrected"):
            raise _Invalid("invalid_reading", f"clock {_show.repr(clock)} is not synced, unsynced or corrected")
        if ts < EPOCH_FLOOR_US or ts > latest:
            if clock == "unsynced":
                # A board that booted without a clock: writing its stamp would put the point decades away from where
                # anybody looks (an SOS among them). The bridge's own clock is the best time there is for it.
                ts = self._now_us()
            elif ts < EPOCH_FLOOR_US:
                # A clock that claims to be right yet says 1970: a bug, not a time. The dead-letter store keeps it.
                raise _Invalid("timestamp_before_2020", f"ts_us {ts} is before 2020-01-01 (clock {clock})")
            else:
                # Written, it would be every dashboard's last() value until that day comes.
                ahead_s = (ts - latest + self.max_future_us) / 1e6
                raise _Invalid("timestamp_in_future", f"ts_us {ts} is {ahead_s:.0f} s ahead of the bridge's clock "
                               f"(clock {clock}; at most {self.max_future_us / 1e6:.0f} s)")
        name = r.get("name")
        if name is not None and not isinstance(name, str):
            raise _Invalid("invalid_reading", "name is not text")
        rssi, snr, auth = r.get("rssi"), r.get("snr"), r.get("auth")
        for key, v in (("rssi", rssi), ("snr", snr)):
            if v is not None and not _is_number(v):
                raise _Invalid("invalid_reading", f"{key} {_show.repr(v)} is not a number")
            if v is not None and not math.isfinite(v):
                raise _Invalid("not_finite", f"{key} is {v}")
        if auth is not None and auth not in ("mic", "none", "local"):
            raise _Invalid("invalid_reading", f"auth {_show.repr(auth)} is not mic, none or local")
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
                    raise _Invalid("invalid_reading", f"values.{key} {_show.repr(v)} is not a number")
            if not (v - v == 0.0):  # NaN and ±inf, without a function call per value
                raise _Invalid("not_finite", f"values.{key} is {v}")
            ek = keys.get(key)
            if ek is None:
                ek = keys[key] = self._field_key(key)
            fields.append(f"{ek}={v!r}")

        if kind == "gateway_health":
            if not fields:
                raise _Invalid("invalid_reading", "gateway_health reading without values")
            prefix = self._tag_prefix(("gateway_health", site, gateway))
            out.lines.append(f"{prefix} {_field_set(fields)} {ts}")
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
        field_set = ",".join(fields)
        if len(field_set) > FIELDS_MAX:
            _field_set(fields)  # raises
        lines, sources = out.lines, out.sources
        lines.append(f"{kind},{tags} {field_set} {ts}")
        lines.append(f"node_health,{tags} {','.join(health)} {ts}")
        sources.append(rid)
        sources.append(rid)
        out.readings += 1

    @staticmethod
    def _field_key(key: str) -> str:
        """A values key as a field key, or :class:`_Invalid` (only keys that pass are cached)."""
        if _CONTROL_RE.search(key):
            raise _Invalid("invalid_text", f"values key {_show.repr(key)} holds a control character")
        if key in RESERVED_FIELDS or not valid_key(key):
            raise _Invalid("invalid_reading", f"values key {_show.repr(key)} collides with a field the bridge adds, "
                           f"or cannot be a field key (1-{FIELD_KEY_MAX} characters, no backslash, no '\"', not "
                           "'time', not a tag key such as 'gateway')")
        return escape_key(key)

    def _alert(self, alert: Any, fields: list[str], site: str, gateway: str, name: str | None, ts: int) -> str:
        if not isinstance(alert, dict):
            raise _Invalid("invalid_reading", "alert is not an object")
        missing = [k for k in _ALERT_REQUIRED if k not in alert]
        if missing:
            raise _Invalid("invalid_reading", f"alert lacks {', '.join(missing)}")
        extra = alert.keys() - _ALERT_KEYS
        if extra:
            raise _Invalid("invalid_reading", f"unknown keys in the alert: {', '.join(map(repr, sorted(extra)))}")
        atype, state, severity, node = alert["type"], alert["state"], alert["severity"], alert["node"]
        if not isinstance(atype, str) or not _ALERT_TYPE_RE.match(atype):
            raise _Invalid("invalid_reading", f"alert type {_show.repr(atype)} is not a type name")
        if state not in ("raised", "cleared"):
            raise _Invalid("invalid_reading", f"alert state {_show.repr(state)} is not raised or cleared")
        if severity not in ("emergency", "warning", "info"):
            raise _Invalid("invalid_reading", f"alert severity {_show.repr(severity)} is unknown")
        if node is not None and (not isinstance(node, str) or not _NODE_HEX_RE.match(node)):
            raise _Invalid("invalid_reading", f"alert node {_show.repr(node)} is not 8 lowercase hex digits")
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

    # -- status, state and result documents -------------------------------------------------------------------
    @staticmethod
    def _document(doc: Any, schema: str, keys: frozenset[str], what: str, gateway: str, check_text: bool) -> None:
        """The checks every gateway document passes: an object of ``schema``, text only, known keys, the topic's
        gateway."""
        if not isinstance(doc, dict):
            raise _Invalid("invalid_schema", "payload is not a JSON object")
        found = doc.get("schema")
        if found != schema:
            raise _Invalid("unknown_schema" if isinstance(found, str) else "invalid_schema",
                           f"schema {_show.repr(found)} is not {schema!r}")
        if check_text:
            bad = _lone_surrogate(doc)
            if bad is not None:
                raise _Invalid("invalid_text", f"the {what} holds a lone surrogate, which is not text: "
                               f"{_show.repr(bad)}")
        extra = doc.keys() - keys
        if extra:
            raise _Invalid("invalid_schema", f"unknown keys in the {what}: {', '.join(map(repr, sorted(extra)))}")
        if doc.get("gateway") != gateway:
            raise _Invalid("wrong_gateway", f"the {what} names gateway {_show.repr(doc.get('gateway'))}, its topic "
                           f"{gateway!r}")

    def _document_time(self, ts: Any, latest: int, *, unsynced: bool = False) -> int:
        """A document's ``ts_us``, checked like a reading's: between 2020 and ``max_future_s`` ahead, or, from a
        gateway that says its clock is not set (``unsynced``), the bridge's time instead."""
        if not _is_int(ts):
            raise _Invalid("invalid_schema", f"ts_us {_show.repr(ts)} is not an integer")
        if EPOCH_FLOOR_US <= ts <= latest:
            return ts
        if unsynced:
            return self._now_us()
        if ts < EPOCH_FLOOR_US:
            raise _Invalid("timestamp_before_2020", f"ts_us {ts} is before 2020-01-01")
        ahead_s = (ts - latest + self.max_future_us) / 1e6
        raise _Invalid("timestamp_in_future", f"ts_us {ts} is {ahead_s:.0f} s ahead of the bridge's clock (at "
                       f"most {self.max_future_us / 1e6:.0f} s)")

    def _status(self, doc: Any, gateway: str, out: Converted, check_text: bool, latest: int) -> None:
        self._document(doc, STATUS_SCHEMA, _STATUS_KEYS, "status", gateway, check_text)
        state = doc.get("state")
        if state not in ("online", "offline"):
            raise _Invalid("invalid_schema", f"state {_show.repr(state)} is not online or offline")
        agent = doc.get("agent")
        if agent is not None and not isinstance(agent, str):
            raise _Invalid("invalid_schema", "agent is not text")
        ts = doc.get("ts_us")
        # The Last Will carries no time: the broker sent it when the gateway vanished.
        ts = self._now_us() if ts is None else self._document_time(ts, latest)
        site = self._site(gateway, None, out)
        fields = ["online=1.0" if state == "online" else "online=0.0"]
        if agent is not None:
            fields.append(f"agent={escape_string_field(agent)}")
        info = self.registry.lookup(gateway)
        if info is not None and info.name:
            fields.append(f"name={escape_string_field(info.name)}")
        if info is not None and info.municipality:
            fields.append(f"municipality={escape_string_field(info.municipality)}")
        out.lines.append(f"gateway_status,gateway={gateway},site={site} {','.join(fields)} {ts}")
        out.sources.append(f"status:{gateway}")

    def _state(self, doc: Any, gateway: str, out: Converted, check_text: bool, latest: int) -> None:
        self._document(doc, STATE_SCHEMA, _STATE_KEYS, "state", gateway, check_text)
        missing = [k for k in _STATE_REQUIRED if k not in doc]
        if missing:
            raise _Invalid("invalid_schema", f"the state lacks {', '.join(missing)}")
        siren = _part(doc, "siren", _SIREN_KEYS, ("configured", "on"))
        lamp = _part(doc, "lamp", _LAMP_KEYS, ("configured", "state"))
        held = _part(doc, "held", _HELD_KEYS, ("active", "count"))
        for name, part, key in (("siren", siren, "configured"), ("siren", siren, "on"),
                                ("lamp", lamp, "configured"), ("held", held, "active")):
            if type(part[key]) is not bool:
                raise _Invalid("invalid_schema", f"{name}.{key} {_show.repr(part[key])} is not true or false")
        why = siren.get("why")
        if why not in SIREN_WHY:
            raise _Invalid("invalid_schema", f"siren.why {_show.repr(why)} is not alert, offline, test or null")
        alert = siren.get("alert")
        if alert is not None and not isinstance(alert, str):
            raise _Invalid("invalid_schema", "siren.alert is not text")
        silenced = siren.get("silenced", [])
        if not isinstance(silenced, list) or not all(isinstance(k, str) for k in silenced):
            raise _Invalid("invalid_schema", "siren.silenced is not a list of alert keys")
        lamp_state = lamp["state"]
        if not isinstance(lamp_state, str) or not _STATE_NAME_RE.match(lamp_state):
            raise _Invalid("invalid_schema", f"lamp.state {_show.repr(lamp_state)} is not a state name")
        count, reason, until = held["count"], held.get("reason"), held.get("until_us")
        if not _is_int(count) or count < 0:
            raise _Invalid("invalid_schema", f"held.count {_show.repr(count)} is not a count")
        if reason not in HELD_REASONS:
            raise _Invalid("invalid_schema", f"held.reason {_show.repr(reason)} is not clock_unsynced or null")
        if until is not None and not _is_int(until):
            raise _Invalid("invalid_schema", f"held.until_us {_show.repr(until)} is not an integer")
        relays = doc.get("relays", [])
        if not isinstance(relays, list):
            raise _Invalid("invalid_schema", "relays is not a list")
        alerts = doc["alerts"]
        if not isinstance(alerts, list):
            raise _Invalid("invalid_schema", "alerts is not a list")
        unacknowledged = 0
        for a in alerts:
            if not isinstance(a, dict):
                raise _Invalid("invalid_schema", "an entry of alerts is not an object")
            by = a.get("acknowledged_by")
            if by is None:
                unacknowledged += 1
            elif not isinstance(by, str):
                raise _Invalid("invalid_schema", f"alerts[].acknowledged_by {_show.repr(by)} is not text or null")
        # A gateway that says its clock was never set stamps its state like its unsynced readings: decades off.
        ts = self._document_time(doc["ts_us"], latest, unsynced=reason == "clock_unsynced")
        site = self._site(gateway, None, out)
        # Every field in every point (null as ""), so that last() of each comes from the same document.
        fields = ",".join((
            "siren_on=1.0" if siren["on"] else "siren_on=0.0", f"siren_why={escape_string_field(why or '')}",
            f"siren_alert={escape_string_field(alert or '')}", f"lamp={escape_string_field(lamp_state)}",
            "held_active=1.0" if held["active"] else "held_active=0.0", f"held_count={float(count)!r}",
            f"alerts_open={float(len(alerts))!r}", f"alerts_unacknowledged={float(unacknowledged)!r}"))
        out.lines.append(f"gateway_state,gateway={gateway},site={site} {fields} {ts}")
        out.sources.append(f"state:{gateway}")

    def _results(self, doc: Any, gateway: str, out: Converted, check_text: bool, latest: int) -> None:
        self._document(doc, RESULT_SCHEMA, _RESULT_KEYS, "result", gateway, check_text)
        missing = [k for k in _RESULT_REQUIRED if k not in doc]
        if missing:
            raise _Invalid("invalid_schema", f"the result lacks {', '.join(missing)}")
        command = doc["command"]
        if command not in COMMANDS:
            raise _Invalid("invalid_schema", f"command {_show.repr(command)} is not one of "
                           f"{', '.join(sorted(COMMANDS))}")
        request_id, by, via = doc.get("request_id"), doc.get("by"), doc.get("via")
        if request_id is not None and (not isinstance(request_id, str) or not _REQUEST_ID_RE.match(request_id)):
            raise _Invalid("invalid_schema", f"request_id {_show.repr(request_id)} is not 1-64 of A-Z a-z 0-9 _ -")
        if by is not None and not isinstance(by, str):
            raise _Invalid("invalid_schema", "by is not text")
        if via not in VIAS:
            raise _Invalid("invalid_schema", f"via {_show.repr(via)} is not console, cli or null")
        results = doc["results"]
        if not isinstance(results, list) or not results:
            raise _Invalid("invalid_schema", "results is not a list, or empty")
        entries: list[tuple[str, str]] = []
        for r in results:
            if not isinstance(r, dict):
                raise _Invalid("invalid_schema", "an entry of results is not an object")
            extra = r.keys() - _RESULT_ENTRY_KEYS
            if extra:
                raise _Invalid("invalid_schema", f"unknown keys in a result: {', '.join(map(repr, sorted(extra)))}")
            target, outcome = r.get("target"), r.get("outcome")
            if outcome not in OUTCOMES:
                raise _Invalid("invalid_schema", f"outcome {_show.repr(outcome)} is not one of "
                               f"{', '.join(sorted(OUTCOMES))}")
            if target is not None and not isinstance(target, str):
                raise _Invalid("invalid_schema", "a result's target is not text")
            if r.get("detail") is not None and not isinstance(r["detail"], str):
                raise _Invalid("invalid_schema", "a result's detail is not text")
            entries.append((outcome, target or ""))
        ts = self._document_time(doc["ts_us"], latest)
        site = self._site(gateway, None, out)
        # Who asked, and which request: the same for every entry of the document.
        common = (f"by={escape_string_field(by or '')},request_id={escape_string_field(request_id or '')},"
                  f"via={escape_string_field(via or '')}")
        for i, (outcome, target) in enumerate(entries):
            # One point per target, a microsecond apart, so that none overwrites another.
            out.lines.append(f"command_result,command={command},gateway={gateway},outcome={outcome},site={site} "
                             f"target={escape_string_field(target)},{common} {ts + i}")
            out.sources.append(f"results:{gateway}")


def _part(doc: dict[str, Any], name: str, keys: frozenset[str], required: tuple[str, ...]) -> dict[str, Any]:
    """The object ``doc[name]`` with its required keys and no unknown ones, or :class:`_Invalid`."""
    part = doc[name]
    if not isinstance(part, dict):
        raise _Invalid("invalid_schema", f"{name} is not an object")
    missing = [k for k in required if k not in part]
    if missing:
        raise _Invalid("invalid_schema", f"{name} lacks {', '.join(missing)}")
    extra = part.keys() - keys
    if extra:
        raise _Invalid("invalid_schema", f"unknown keys in {name}: {', '.join(map(repr, sorted(extra)))}")
    return part


def _field_set(fields: list[str]) -> str:
    text = ",".join(fields)
    if len(text) > FIELDS_MAX:
        raise _Invalid("invalid_reading", f"the reading's fields take {len(text)} characters, more than the "
                       f"{FIELDS_MAX} a line may hold")
    return text
