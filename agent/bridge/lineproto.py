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
* with de-duplication on (``dedupe``, :mod:`agent.bridge.dedupe`), a ``node_link`` point per node reading (tags
  as above; ``fcnt``, ``rssi``, ``snr``; at the reading's own time): one per gateway that heard the frame, while the
  two points above are written once per frame, as the first reception registered them;
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

``command`` and ``outcome`` are tags, so only the known ones are taken (schema.py: ``COMMANDS``, ``OUTCOMES``); a lamp
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
import re
import time
from typing import Any

from agent.bridge.document_points import DocumentPoints
from agent.bridge.reading_points import ReadingPoints
from agent.bridge.registry import UNKNOWN_SITE, GatewayRegistry
from agent.bridge.schema import (
    DOCUMENT_TOPICS,
    ID_RE,
    SHAPE_ERRORS,
    Converted,
    Invalid,
    Reject,
    printable,
)
from agent.gateway.clock import EPOCH_FLOOR_US

# The checks and the outcome types are in agent.bridge.schema, the text encoding in agent.bridge.encoding.
__all__ = ["Serializer"]

#: The only way a lone surrogate gets into valid UTF-8 JSON: a \uD800-\uDFFF escape. Payloads without one (nearly
#: all) skip the walk through every string.
_SURROGATE_ESCAPE_RE = re.compile(rb"\\u[dD][89a-fA-F]")
_MAX_FUTURE_S = 300.0


class Serializer(ReadingPoints, DocumentPoints):
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
        dedupe_prefix: with de-duplication on (:mod:`agent.bridge.dedupe`), the key prefix of frame claims: each
            node reading then also gets a claim (:attr:`Converted.claims`) and a ``node_link`` point.
    """

    def __init__(self, topic_prefix: str = "denen/v1", *, now_us: Any = None, registry: GatewayRegistry | None = None,
                 max_future_s: float = _MAX_FUTURE_S, dedupe_prefix: str | None = None) -> None:
        self.prefix = topic_prefix.rstrip("/") + "/"
        self.dedupe_prefix = dedupe_prefix
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
                rej.detail = printable(rej.detail)
                if rej.reading_id is not None:
                    rej.reading_id = printable(rej.reading_id, 200)
            if out.notes:
                out.notes = [(code, printable(detail)) for code, detail in out.notes]
        return out

    def _convert(self, topic: str, payload: bytes, out: Converted) -> None:
        rest = topic[len(self.prefix):] if topic.startswith(self.prefix) else None
        parts = rest.split("/") if rest else []
        if len(parts) == 3 and parts[1] == "readings" and ID_RE.match(parts[0]):
            kind, gateway = "readings", parts[0]
        elif len(parts) == 2 and parts[1] in DOCUMENT_TOPICS and ID_RE.match(parts[0]):
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
            except SHAPE_ERRORS as exc:
                raise Invalid("invalid_schema", f"{type(exc).__name__}: {exc}") from None
        except Invalid as exc:
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
                raise Invalid("unknown_gateway", f"gateway {gateway} is not in {where}")
            out.notes.append(("unknown_gateway", f"gateway {gateway} is not in {where}: written with site "
                              f"{UNKNOWN_SITE}"))
            return UNKNOWN_SITE
        if claimed is not None and claimed != info.site:
            out.notes.append(("site_mismatch", f"gateway {gateway} sent site {claimed!r}; the registry's site "
                              f"{info.site!r} is written"))
        return info.site

    def _outside_window(self, ts: int, latest: int, *, unsynced: bool, clock: str | None = None) -> int:
        """The time to write a reading or document at whose ``ts_us`` lies before 2020 or beyond ``latest`` (µs):
        the bridge's own time for a gateway whose clock was never set (``unsynced``), else :class:`Invalid`.
        ``clock``: a reading's clock state, named in the detail."""
        if unsynced:
            # A board that booted without a clock: writing its stamp would put the point decades away from where
            # anybody looks (an SOS among them). The bridge's own clock is the best time there is for it.
            return self._now_us()
        said = f"clock {clock}" if clock else ""
        if ts < EPOCH_FLOOR_US:
            # A clock that claims to be right yet says 1970: a bug, not a time. The dead-letter store keeps it.
            raise Invalid("timestamp_before_2020", f"ts_us {ts} is before 2020-01-01" + (f" ({said})" if said else ""))
        # Written, it would be every dashboard's last() value until that day comes.
        ahead_s = (ts - latest + self.max_future_us) / 1e6
        raise Invalid("timestamp_in_future", f"ts_us {ts} is {ahead_s:.0f} s ahead of the bridge's clock "
                      f"({said + '; ' if said else ''}at most {self.max_future_us / 1e6:.0f} s)")
