"""From a radio frame to a journal entry: envelope, authentication, replay window, body, lane and JSON body.

The JSON object built here is the reading exactly as it is published (README "Payload schema", reading object).
It is built once, at the edge, and stored verbatim in the journal, so every retry carries the same identity
(gateway, node, frame counter) and the same edge timestamp.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.config import Config
from agent.gateway import clock
from agent.gateway.reading import (
    ALARM,
    LANES,
    READING_JSON,
    SOS,
    TELEMETRY,
    Entry,
    NodeState,
    Quarantined,
    reading_body,
    reading_entry,
)
from agent.i18n import N_, _
from agent.ratelog import RateLimitedLog
from drivers.codec import frame as nodeframe
from drivers.codec import kinds
from drivers.codec.lpp import LppUnknownType
from drivers.errors import CodecError
from drivers.settings import Text
from drivers.types import Uplink

log = logging.getLogger(__name__)

READING_SCHEMA = "denen.readings/1"

#: Lane of each kind of frame. Trap frames are events (fired or re-armed), so they travel as alarms; river,
#: rain and slope stages become alarms through the edge rules, not here.
KIND_LANES: dict[str, int] = {
    "sos": SOS,
    "trap": ALARM,
    "water_level": TELEMETRY,
    "rain": TELEMETRY,
    "tilt": TELEMETRY,
    "weather": TELEMETRY,
    "heartbeat": TELEMETRY,
}


@dataclass(slots=True)
class Decoded:
    """The outcome for one uplink: exactly one of ``entry`` and ``quarantined`` is set."""

    entry: Entry | None = None
    quarantined: Quarantined | None = None
    kind: str | None = None
    body: dict[str, Any] | None = None  # the reading object of ``entry`` (for the edge rules)


#: The JSON text of a reading is ``json.dumps(body, **_JSON)``, byte for byte (see FrameDecoder.decode).
_JSON = READING_JSON


def _json_str(text: str) -> str:
    """The JSON string literal of ``text``, quotes included, exactly as json.dumps writes it in a reading."""
    return json.dumps(text, **_JSON)


def _json_number(value: object) -> str:
    """A number (or None) as json.dumps writes it: ints and finite floats by repr, anything else by json.dumps."""
    kind = type(value)
    if kind is int:
        return int.__repr__(value)  # type: ignore[arg-type]
    if kind is float and value - value == 0.0:  # type: ignore[operator]  # finite; NaN and inf differ from repr
        return float.__repr__(value)  # type: ignore[arg-type]
    return json.dumps(value, **_JSON)  # None, bool, NaN, Infinity, subclasses: json.dumps decides


_LANE_JSON: tuple[str, ...] = tuple(_json_str(name) for name in LANES)

# Per kind code of a sensor reading: (kind name, lane, lane name, the reading's JSON from "kind" to "ts_us").
# One lookup in decode() instead of kind_name(), KIND_LANES and two lane tables; other codes take kind_name() for
# their error.
_READING_CODES: dict[int, tuple[str, int, str, str]] = {
    code: (name, KIND_LANES[name], LANES[KIND_LANES[name]],
           f',"kind":{_json_str(name)},"lane":{_LANE_JSON[KIND_LANES[name]]},"ts_us":')
    for code, name in kinds.KINDS.items() if name in KIND_LANES
}
#: Kind codes of telemetry readings. A frame's kind (byte 9) is in clear, readable before anything is checked: the
#: core may gather such frames undecoded for its commit window (agent.gateway.intake.gatherable).
TELEMETRY_KINDS: frozenset[int] = frozenset(code for code, known in _READING_CODES.items() if known[1] == TELEMETRY)
_FLAG_DOWNLINK = nodeframe.FLAG_DOWNLINK
_FLAG_MIC = nodeframe.FLAG_MIC
_FLAG_RECEIPT = nodeframe.FLAG_RECEIPT


def _not_a_reading(kind_code: int) -> tuple[str, int, str, str]:
    """Raise the CodecError for a kind code that is no sensor reading (decode() reaches here only for those)."""
    kind = kinds.kind_name(kind_code)
    raise CodecError(
        "kind_vendor_codec" if kind == "vendor" else "kind_unexpected",
        f"kind 0x{kind_code:02X} ({kind}) is not a sensor reading this gateway decodes",
    )


@dataclass(slots=True)
class _KnownNode:
    """What decode() needs of a configured node, read once from the config (attribute access on the pydantic
    model costs more than the work itself)."""

    hex: str
    name: str
    radio: str | None
    kind: str
    reject_unauthenticated: bool
    key: bytes | None
    check_mic: Callable[[bytes, bytes | None], bool] | None  # built on first use, from ``key``
    json_head: str  # '{"id":"<gateway>/<node>/'
    json_node: str  # '","node":"<node>","name":<name>,"fcnt":'


class FrameDecoder:
    """Turns uplinks into journal entries or quarantine records, and keeps per-node state.

    Replay windows. Each node has two, persisted in the journal's ``node`` table:

    * the signed window (``NodeState.last_fcnt``): the last counter accepted with a verified MIC (and the counters
      the gateway gives its own GPIO readings). A signed frame is accepted only above it, and only a signed frame
      moves it. Nothing without the node's key can move it, so no forged frame can lock a keyed node out.
    * the unsigned window (``NodeState.unsigned_fcnt``): the last counter accepted without MIC (``unauthenticated:
      flag``, or an unknown node under ``unknown_nodes: accept``). A frame without MIC is accepted only above
      **both** windows, and moves only this one. An unsigned frame with counter 0xFFFFFFFF therefore silences
      unsigned frames of that node (anyone can send those anyway), never its signed ones.

    A frame at or below its window is quarantined as ``duplicate`` when its counter equals the last one accepted
    in its own window (the radio heard the same frame twice), else as ``replay``.

    Reading identity. A reading's ``id`` is ``<gateway>/<node>/<fcnt>`` with the frame's own counter (the bridge
    checks exactly that), and two windows mean a signed and an unsigned frame can carry the same counter. Where
    that could matter:

    * the journal keys readings by ``seq`` alone (no constraint on node and counter), so both rows are kept and
      neither replaces the other;
    * InfluxDB keys a point by measurement, tags and ``ts_us``: every reading of a node gets a strictly larger
      ``ts_us`` than the one before, whichever window it passed (``last_seen_us`` is shared), so two readings of
      a node never share a point;
    * a consumer that stores by ``id`` (README "Payload schema"): an unsigned frame must be above the signed
      window too, so it never takes the id of a genuine reading already accepted; a genuine signed frame may
      arrive after an unsigned one took its counter, and then replaces it there. A forged reading can be
      replaced by a genuine one, never the other way round.

    Unknown nodes (not in the config, with no signed window): at most ``unknown_nodes_max`` are tracked, the
    least recently heard is dropped to make room (counted ``nodes.unknown_evicted``), and :meth:`age_out` drops
    those not heard for ``unknown_nodes_forget_after_s`` (``nodes.unknown_aged_out``). Dropped nodes are listed
    in ``forgotten`` until the core has deleted their journal rows. Configured nodes, and any node with a signed
    window, are never dropped.

    Args:
        config: the gateway config (nodes, keys, policies).
        nodes: node state loaded from the journal; updated in place.
        count: adds to one of the core's counters (name, amount).
        warn: where per-frame warnings go, rate-limited; None makes one of its own.
    """

    def __init__(self, config: Config, nodes: dict[str, NodeState], *,
                 count: Callable[[str, int], None] | None = None, warn: RateLimitedLog | None = None) -> None:
        self.config = config
        self.gateway_id = config.gateway.id
        self.nodes = nodes
        self.dirty: set[str] = set()
        self.forgotten: set[str] = set()
        self._count = count if count is not None else (lambda name, n=1: None)
        self._warn = warn if warn is not None else RateLimitedLog(log)
        self._accept_unknown = config.unknown_nodes == "accept"
        self._unknown_max = config.unknown_nodes_max
        self._unknown_age_us = config.unknown_nodes_forget_after_s * 1_000_000
        self._keys: dict[int, bytes | None] = {nid: n.key_bytes() for nid, n in config.node_by_id.items()}
        # The reading's text up to the node: '{"id":"<gateway>/', escaped as json.dumps does it (escaping works
        # character by character, so the escaped parts of a string, joined, are the escaped string).
        self._id_prefix = '{"id":' + _json_str(f"{self.gateway_id}/")[:-1]
        self._known: dict[int, _KnownNode] = {}
        for nid, node in config.node_by_id.items():
            st = self.nodes.setdefault(node.id, NodeState(node=node.id))
            st.name = node.name
            node_hex = f"{nid:08x}"
            self._known[nid] = _KnownNode(
                node_hex, node.name, node.radio, node.kind, node.unauthenticated == "reject", self._keys[nid], None,
                self._id_prefix + node_hex + "/",
                f'","node":"{node_hex}","name":{json.dumps(node.name, **_JSON)},"fcnt":',
            )
        # Unknown nodes tracked, least recently heard first.
        configured = {k.hex for k in self._known.values()}
        strangers = [st for hex_, st in nodes.items() if hex_ not in configured and st.last_fcnt is None]
        strangers.sort(key=lambda st: st.last_seen_us or 0)
        self._unknown: OrderedDict[str, None] = OrderedDict((st.node, None) for st in strangers)
        self._make_room(0)
        # JSON string literals of the radio names and clock states seen (a handful), so each is escaped once.
        self._str_json: dict[str, str] = {}

    def key_for(self, node_id: int) -> bytes | None:
        """The node's AES key (from the config), or None."""
        return self._keys.get(node_id)

    def decode(self, up: Uplink) -> Decoded:
        """Decode one uplink. Never raises for bad input: every failure becomes a quarantine record.

        The checks, in this order, each with its own quarantine reason: frame structure (``frame_*``), downlink
        flag, unknown node, wrong radio, authentication (``no_key``, ``bad_mic``, ``mic_missing``), replay window
        (``duplicate``, ``replay``), kind and body (``kind_*``, ``lpp_*``). Failures from authentication on are
        counted against the node (``frames_bad``).
        """
        try:
            flags, node_id, counter, kind_code, body, mic, signed = nodeframe.split(up.payload)
        except CodecError as exc:
            return self._reject(up, None, exc.reason, str(exc))
        known = self._known.get(node_id)
        node_hex = known.hex if known is not None else f"{node_id:08x}"
        if flags & _FLAG_DOWNLINK or (known is None and not self._accept_unknown) or (
                known is not None and known.radio is not None and known.radio != up.radio):
            return self._misrouted(up, known, node_hex, flags)
        if flags & _FLAG_MIC:
            check_mic = known.check_mic if known is not None else None
            if check_mic is None or not check_mic(signed, mic):
                refused = self._mic_refused(up, known, node_hex, signed, mic)
                if refused is not None:
                    return refused
            auth = "mic"
        elif known is not None and known.reject_unauthenticated:
            return self._count_bad(
                self._reject(up, node_hex, "mic_missing", "frame has no MIC and the node's policy is reject"),
                node_hex)
        else:
            auth = "none"
        st = self.nodes.get(node_hex)
        if st is not None:
            # A signed frame must be above the signed window; an unsigned one above both (class docstring).
            floor = st.last_fcnt
            if auth != "mic" and st.unsigned_fcnt is not None and (floor is None or st.unsigned_fcnt > floor):
                floor = st.unsigned_fcnt
            if floor is not None and counter <= floor:
                return self._replayed(up, st, counter, auth)
        try:
            kind, lane, lane_name, kind_json = _READING_CODES.get(kind_code) or _not_a_reading(kind_code)
            values, values_json = kinds.decode_body_json(kind, body)
        except CodecError as exc:
            return self._count_bad(self._undecodable(up, node_hex, kind_code, exc), node_hex)
        if known is not None and kind not in (known.kind, "heartbeat"):
            self._kind_mismatch(known, kind)
        # Accepted: the replay window moves only now, after authentication and decoding succeeded.
        if st is None:
            st = self._track(node_hex)
        elif known is None and node_hex in self._unknown:
            self._unknown.move_to_end(node_hex)
        return self._reading(up, known, st, node_hex, counter, bool(flags & _FLAG_RECEIPT), auth, kind, lane,
                             lane_name, kind_json, values, values_json)

    def _reading(self, up: Uplink, known: _KnownNode | None, st: NodeState, node_hex: str, counter: int,
                 receipt: bool, auth: str, kind: str, lane: int, lane_name: str, kind_json: str,
                 values: dict[str, float], values_json: str) -> Decoded:
        """An accepted frame: the node's state moves (replay window, last heard), and the reading is written, its
        object and its JSON text, ``json.dumps(body_obj, **_JSON)`` byte for byte, field by field (the generic
        encoder cost about 3 µs a reading, a third of the decode path)."""
        # Frames read in one chunk share a receive time; a node's readings get strictly increasing timestamps,
        # because the backend keys a point by node and time. (Only for ties within a second: after the clock
        # is stepped back, readings take the new time rather than creeping on from the old one.)
        ts_us = up.received_us
        last = st.last_seen_us
        if last is not None and last - 1_000_000 < ts_us <= last:
            ts_us = last + 1
        if auth == "mic":
            st.last_fcnt = counter
        else:
            st.unsigned_fcnt = counter
        st.last_seen_us = ts_us
        radio, rssi, snr = up.radio, up.rssi, up.snr
        st.radio, st.rssi, st.snr = radio, rssi, snr
        battery_v = values.get("battery_v")
        if battery_v is not None:
            st.battery_v = battery_v
        st.frames_ok += 1
        self.dirty.add(node_hex)
        quality = clock.quality(ts_us)
        body_obj = {  # agent.gateway.reading.reading_body, key for key (a test holds them together)
            "id": f"{self.gateway_id}/{node_hex}/{counter}", "node": node_hex,
            "name": known.name if known is not None else None, "fcnt": counter, "kind": kind, "lane": lane_name,
            "ts_us": ts_us, "clock": quality, "radio": radio, "rssi": rssi, "snr": snr, "auth": auth,
            "receipt": receipt, "values": values,
        }
        if known is not None:
            head = known.json_head
            node_part = known.json_node
        else:
            head = self._id_prefix + node_hex + "/"
            node_part = f'","node":"{node_hex}","name":null,"fcnt":'
        str_json = self._str_json
        radio_json = str_json.get(radio) if type(radio) is str else None
        if radio_json is None:
            radio_json = self._remember_json(radio)
        quality_json = str_json.get(quality)
        if quality_json is None:
            quality_json = self._remember_json(quality)
        # Kind and auth are plain constants; an int, and a finite float, format as their JSON (str() of a float is
        # its repr); any other value goes through _json_number.
        text = (
            f'{head}{counter}{node_part}{counter}{kind_json}'
            f'{ts_us if type(ts_us) is int else _json_number(ts_us)},"clock":{quality_json},"radio":{radio_json},'
            f'"rssi":{rssi if type(rssi) is int else _json_number(rssi)},"snr":'
            f'{snr if type(snr) is float and snr - snr == 0.0 else _json_number(snr)},"auth":"{auth}",'
            f'"receipt":{"true" if receipt else "false"},"values":{values_json}}}'
        )
        return Decoded(Entry(lane, node_hex, counter, ts_us, text), None, kind, body_obj)

    def _remember_json(self, value: object) -> str:
        """JSON of a radio name or clock state; strings are kept (a few distinct ones), anything else is not."""
        text = json.dumps(value, **_JSON)
        if type(value) is str and len(self._str_json) < 64:
            self._str_json[value] = text
        return text

    def local_reading(self, node_hex: str, kind: str, values: dict[str, float], *, ts_us: int,
                      source: str) -> tuple[Entry, dict[str, Any]]:
        """A reading measured by the gateway itself (e.g. a rain gauge on GPIO) for node ``node_hex``.

        It gets the node's next frame counter, so its identity is as stable as a radio node's.
        """
        st = self.nodes.get(node_hex)
        if st is None:
            st = self.nodes[node_hex] = NodeState(node=node_hex)
        st.last_fcnt = (st.last_fcnt or 0) + 1
        st.last_seen_us = ts_us
        st.radio = source
        st.frames_ok += 1
        self.dirty.add(node_hex)
        node = self.config.node_by_id.get(int(node_hex, 16))
        lane = KIND_LANES[kind]
        body = reading_body(self.gateway_id, node_hex, node.name if node is not None else None, st.last_fcnt, kind,
                            lane, ts_us, values, radio=source, rssi=None, snr=None, auth="local", receipt=False)
        return reading_entry(lane, body), body

    # -- node state ---------------------------------------------------------------------------------------------
    def _track(self, node_hex: str) -> NodeState:
        """State for a node heard for the first time (configured nodes have theirs from the start)."""
        st = self.nodes[node_hex] = NodeState(node=node_hex)
        self.forgotten.discard(node_hex)
        if int(node_hex, 16) not in self._known:
            self._make_room(1)
            self._unknown[node_hex] = None
        return st

    def _make_room(self, room: int) -> None:
        """Drop the least recently heard unknown nodes until ``room`` more fit under unknown_nodes_max."""
        while self._unknown and len(self._unknown) + room > self._unknown_max:
            node_hex, _state = self._unknown.popitem(last=False)
            self._forget(node_hex)
            self._count("nodes.unknown_evicted", 1)

    def _forget(self, node_hex: str) -> None:
        del self.nodes[node_hex]
        self.dirty.discard(node_hex)
        self.forgotten.add(node_hex)

    def age_out(self, now_us: int) -> int:
        """Drop unknown nodes not heard for unknown_nodes_forget_after_s before ``now_us`` (µs since the epoch).

        Returns:
            How many were dropped.
        """
        cutoff = now_us - self._unknown_age_us
        dropped = 0
        # Least recently heard first: stop at the first one heard since the cutoff.
        while self._unknown:
            node_hex = next(iter(self._unknown))
            seen = self.nodes[node_hex].last_seen_us
            if seen is not None and seen >= cutoff:
                break
            del self._unknown[node_hex]
            self._forget(node_hex)
            dropped += 1
        if dropped:
            self._count("nodes.unknown_aged_out", dropped)
        return dropped

    @property
    def unknown_tracked(self) -> int:
        """Unknown nodes whose state is kept now."""
        return len(self._unknown)

    def reset_windows(self, node_hex: str) -> tuple[int | None, int | None] | None:
        """Forget both replay windows of a node (its firmware was re-flashed and counts from 0 again).

        Returns:
            The old (signed, unsigned) windows, or None when the gateway keeps no state for the node.
        """
        st = self.nodes.get(node_hex)
        if st is None:
            return None
        old = (st.last_fcnt, st.unsigned_fcnt)
        st.last_fcnt = st.unsigned_fcnt = None
        self.dirty.add(node_hex)
        return old

    def _count_bad(self, outcome: Decoded, node_hex: str) -> Decoded:
        st = self.nodes.get(node_hex)
        if st is not None:
            st.frames_bad += 1
            self.dirty.add(node_hex)
        return outcome

    def _reject(self, up: Uplink, node_hex: str | None, reason: str, detail: str) -> Decoded:
        return Decoded(quarantined=Quarantined(up.received_us, up.radio, node_hex, reason, detail, up.payload))

    def _undecodable(self, up: Uplink, node_hex: str, kind_code: int, exc: CodecError) -> Decoded:
        """A frame whose kind or body does not decode (``kind_*``, ``lpp_*``).

        A body that stops at an unknown LPP type keeps the values before it: they end the detail as a JSON object
        after ``values before it: `` (named as in a reading, see kinds.salvage_values), so an operator can still
        read an SOS's position from the quarantine record (``denen status --json``, the gateway's log).
        """
        detail = str(exc)
        if isinstance(exc, LppUnknownType) and exc.records:
            # Only a body raises LppUnknownType, and a body is decoded only once its kind code is a reading's.
            values = kinds.salvage_values(_READING_CODES[kind_code][0], exc.records)
            detail = f"{detail}; values before it: {json.dumps(values, **_JSON)}"
        return self._reject(up, node_hex, exc.reason, detail)

    # -- why a frame is refused (off the accepted path, so decode() stays one straight run for good frames) --------
    def _misrouted(self, up: Uplink, known: _KnownNode | None, node_hex: str, flags: int) -> Decoded:
        """A downlink heard as an uplink, a node not in the config, or a node heard on another radio."""
        if flags & _FLAG_DOWNLINK:
            return self._reject(up, node_hex, "frame_downlink", "downlink flag set on a frame heard as an uplink")
        if known is None:
            return self._reject(
                up, node_hex, "unknown_node",
                f"node {node_hex} is not in the config (add it under nodes: or set unknown_nodes: accept)",
            )
        return self._reject(up, node_hex, "wrong_radio", f"node {node_hex} is configured on radio {known.radio}")

    def _kind_mismatch(self, known: _KnownNode, kind: str) -> None:
        """Warn (rate-limited) that a configured node sent another kind than its own; the reading is kept."""
        self._warn.warning("kind_mismatch", Text(N_("node {node}"), node=known.hex), N_("frames"), "%s", _(
            "node {node} ({name}) is configured as {kind} but sent {sent}; kept").format(
            node=known.hex, name=known.name, kind=known.kind, sent=kind))

    def _mic_refused(self, up: Uplink, known: _KnownNode | None, node_hex: str, signed: bytes,
                     mic: bytes | None) -> Decoded | None:
        """A frame with MIC that decode() could not verify at once: no key for the node, the node's first MIC (its
        checker is built now; None when it matches), or a MIC that does not match."""
        if known is None or known.key is None:
            return self._count_bad(
                self._reject(up, node_hex, "no_key", "frame carries a MIC but no key is configured for the node"),
                node_hex)
        if known.check_mic is None:
            known.check_mic = nodeframe.mic_checker(known.key)
            if known.check_mic(signed, mic):
                return None
        return self._count_bad(
            self._reject(up, node_hex, "bad_mic", "MIC does not match the node key (forged or corrupted)"), node_hex)

    def _replayed(self, up: Uplink, st: NodeState, counter: int, auth: str) -> Decoded:
        """A frame at or below its replay window: ``duplicate`` when it repeats the last counter of its own
        window (heard twice), else ``replay``."""
        node_hex = st.node
        signed_last, unsigned_last = st.last_fcnt, st.unsigned_fcnt
        if auth == "mic":
            return self._count_bad(self._reject(
                up, node_hex, "duplicate" if counter == signed_last else "replay",
                f"counter {counter} not above the last accepted with a MIC ({signed_last})"), node_hex)
        floor = unsigned_last if signed_last is None or (
            unsigned_last is not None and unsigned_last > signed_last) else signed_last
        return self._count_bad(self._reject(
            up, node_hex, "duplicate" if counter == unsigned_last else "replay",
            f"counter {counter} without MIC not above the last accepted ({floor}; without MIC "
            f"{unsigned_last}, with MIC {signed_last})"), node_hex)

