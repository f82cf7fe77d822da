"""From a radio frame to a journal entry: envelope, authentication, replay window, body, lane and JSON body.

The JSON object built here is the reading exactly as it is published (README "Payload schema", reading object).
It is built once, at the edge, and stored verbatim in the journal, so every retry carries the same identity
(gateway, node, frame counter) and the same edge timestamp.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from agent import clock
from agent.config import Config, NodeConfig
from agent.journal import ALARM, LANES, SOS, TELEMETRY, Entry, NodeState, Quarantined
from drivers.codec import frame as nodeframe
from drivers.codec import kinds, lpp
from drivers.errors import CodecError
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


class FrameDecoder:
    """Turns uplinks into journal entries or quarantine records, and keeps per-node state.

    Args:
        config: the gateway config (nodes, keys, policies).
        nodes: node state loaded from the journal; updated in place. ``last_fcnt`` is the replay window.
    """

    def __init__(self, config: Config, nodes: dict[str, NodeState]) -> None:
        self.config = config
        self.gateway_id = config.gateway.id
        self.nodes = nodes
        self.dirty: set[str] = set()
        # Plain dicts read once: attribute access on the pydantic config costs more than the lookup itself.
        self._node_by_id: dict[int, NodeConfig] = dict(config.node_by_id)
        self._accept_unknown = config.unknown_nodes == "accept"
        self._keys: dict[int, bytes | None] = {nid: n.key_bytes() for nid, n in self._node_by_id.items()}
        for node in config.node_by_id.values():
            st = self.nodes.setdefault(node.id, NodeState(node=node.id))
            st.name = node.name

    def key_for(self, node_id: int) -> bytes | None:
        """The node's AES key (from the config), or None."""
        return self._keys.get(node_id)

    def decode(self, up: Uplink) -> Decoded:
        """Decode one uplink. Never raises for bad input: every failure becomes a quarantine record."""
        try:
            frame = nodeframe.parse(up.payload)
        except CodecError as exc:
            return self._reject(up, None, exc.reason, str(exc))
        node_hex = frame.node_hex
        if frame.downlink:
            return self._reject(up, node_hex, "frame_downlink", "downlink flag set on a frame heard as an uplink")
        node = self._node_by_id.get(frame.node_id)
        if node is None and not self._accept_unknown:
            return self._reject(
                up, node_hex, "unknown_node",
                f"node {node_hex} is not in the config (add it under nodes: or set unknown_nodes: accept)",
            )
        if node is not None and node.radio is not None and node.radio != up.radio:
            return self._reject(up, node_hex, "wrong_radio", f"node {node_hex} is configured on radio {node.radio}")

        auth = self._authenticate(up, frame, node)
        if isinstance(auth, Decoded):
            return self._count_bad(auth, node_hex)

        st = self.nodes.get(node_hex)
        if st is None:
            st = self.nodes[node_hex] = NodeState(node=node_hex)
        last = st.last_fcnt
        if last is not None and frame.counter <= last:
            reason = "duplicate" if frame.counter == last else "replay"
            return self._count_bad(
                self._reject(up, node_hex, reason, f"counter {frame.counter} not above last accepted {last}"),
                node_hex,
            )
        try:
            kind = kinds.kind_name(frame.kind)
            if kind not in KIND_LANES:
                raise CodecError(
                    "kind_vendor_codec" if kind == "vendor" else "kind_unexpected",
                    f"kind 0x{frame.kind:02X} ({kind}) is not a sensor reading this gateway decodes",
                )
            values = kinds.decode_values(kind, lpp.decode(frame.body))
        except CodecError as exc:
            return self._count_bad(self._reject(up, node_hex, exc.reason, str(exc)), node_hex)
        if node is not None and kind not in (node.kind, "heartbeat"):
            log.warning("node %s (%s) is configured as %s but sent %s; kept", node_hex, node.name, node.kind, kind)

        # Accepted: the replay window moves only now, after authentication and decoding succeeded.
        # Frames read in one chunk share a receive time; a node's readings get strictly increasing timestamps,
        # because the backend keys a point by node and time. (Only for ties within a second: after the clock
        # is stepped back, readings take the new time rather than creeping on from the old one.)
        ts_us = up.received_us
        last = st.last_seen_us
        if last is not None and last - 1_000_000 < ts_us <= last:
            ts_us = last + 1
        st.last_fcnt = frame.counter
        st.last_seen_us = ts_us
        st.radio = up.radio
        st.rssi = up.rssi
        st.snr = up.snr
        if "battery_v" in values:
            st.battery_v = values["battery_v"]
        st.frames_ok += 1
        self.dirty.add(node_hex)

        lane = KIND_LANES[kind]
        body = {
            "id": f"{self.gateway_id}/{node_hex}/{frame.counter}",
            "node": node_hex,
            "name": node.name if node is not None else None,
            "fcnt": frame.counter,
            "kind": kind,
            "lane": LANES[lane],
            "ts_us": ts_us,
            "clock": clock.quality(ts_us),
            "radio": up.radio,
            "rssi": up.rssi,
            "snr": up.snr,
            "auth": auth,
            "receipt": frame.receipt_requested,
            "values": values,
        }
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        return Decoded(entry=Entry(lane, node_hex, frame.counter, ts_us, text), kind=kind, body=body)

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
        body = {
            "id": f"{self.gateway_id}/{node_hex}/{st.last_fcnt}", "node": node_hex,
            "name": node.name if node is not None else None, "fcnt": st.last_fcnt, "kind": kind,
            "lane": LANES[lane], "ts_us": ts_us, "clock": clock.quality(ts_us), "radio": source, "rssi": None,
            "snr": None, "auth": "local", "receipt": False, "values": values,
        }
        return Entry(lane, node_hex, st.last_fcnt, ts_us, json.dumps(body, separators=(",", ":"))), body

    def _authenticate(self, up: Uplink, frame: nodeframe.NodeFrame, node: NodeConfig | None) -> str | Decoded:
        """Returns ``"mic"`` or ``"none"`` (accepted, flagged), or a quarantine outcome."""
        key = self._keys.get(frame.node_id) if node is not None else None
        if frame.has_mic:
            if key is None:
                return self._reject(up, frame.node_hex, "no_key", "frame carries a MIC but no key is configured for the node")
            if not nodeframe.verify(frame, key):
                return self._reject(up, frame.node_hex, "bad_mic", "MIC does not match the node key (forged or corrupted)")
            return "mic"
        if node is not None and node.unauthenticated == "reject":
            return self._reject(up, frame.node_hex, "mic_missing", "frame has no MIC and the node's policy is reject")
        return "none"

    def _count_bad(self, outcome: Decoded, node_hex: str) -> Decoded:
        st = self.nodes.get(node_hex)
        if st is not None:
            st.frames_bad += 1
            self.dirty.add(node_hex)
        return outcome

    def _reject(self, up: Uplink, node_hex: str | None, reason: str, detail: str) -> Decoded:
        return Decoded(quarantined=Quarantined(up.received_us, up.radio, node_hex, reason, detail, up.payload))
