"""What a reading is, wherever it is: the priority lanes, a reading on its way into the journal, what the gateway
remembers of a node, and a frame set aside. Storage (journal), decoding (readings), edge rules and the core all
import these types from here, so none of them depends on another for its vocabulary.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.gateway import clock

#: Priority lanes, highest first. The index is what is stored.
LANES: tuple[str, ...] = ("sos", "alarm", "telemetry", "diagnostics")
SOS, ALARM, TELEMETRY, DIAGNOSTICS = range(4)
#: Lanes the quota may evict from, lowest priority first. SOS and alarms are never evicted.
EVICTABLE: tuple[int, ...] = (DIAGNOSTICS, TELEMETRY)
#: How a reading's JSON text is written: compact, non-ASCII text kept as UTF-8 (README "Payload schema").
READING_JSON: dict[str, Any] = {"separators": (",", ":"), "ensure_ascii": False}
#: The node of the readings the gateway makes about itself (health, alerts); their name is the gateway id.
GATEWAY_NODE = "gateway"


@dataclass(slots=True)
class Entry:
    """A reading on its way into the journal.

    Attributes:
        lane: priority lane index (``SOS`` .. ``DIAGNOSTICS``).
        node: node id, 8 lowercase hex digits (or the gateway id for the gateway's own readings).
        fcnt: frame counter; with ``node`` and the gateway id it is the reading's identity.
        ts_us: edge timestamp, microseconds since the Unix epoch.
        body: the reading as a JSON object text, published verbatim.
        boot_us: for a reading stamped while the wall clock was not synchronised: when it was made, in µs on the
            boot-time clock (``agent.gateway.clock.boot_us``), so its true time can be worked out once the clock syncs.
            None for a reading stamped on a synchronised clock.
    """

    lane: int
    node: str
    fcnt: int
    ts_us: int
    body: str
    boot_us: int | None = None


@dataclass(slots=True)
class NodeState:
    """What the gateway remembers about one node.

    Attributes:
        last_fcnt: the signed window: last counter accepted with a verified MIC (or given to a reading the gateway
            measured itself); None: none yet, any counter is accepted.
        unsigned_fcnt: the unsigned window: last counter accepted without MIC (policy ``flag``, or an unknown node
            under ``unknown_nodes: accept``); None: none yet.
        last_seen_us: edge timestamp of the node's newest reading, µs since the epoch (both windows share it).
    """

    node: str
    name: str | None = None
    last_fcnt: int | None = None
    last_seen_us: int | None = None
    radio: str | None = None
    rssi: float | None = None
    snr: float | None = None
    battery_v: float | None = None
    frames_ok: int = 0
    frames_bad: int = 0
    unsigned_fcnt: int | None = None


@dataclass(slots=True)
class Quarantined:
    """A frame set aside: it failed to decode or authenticate. ``reason`` is a short stable key."""

    ts_us: int
    radio: str | None
    node: str | None
    reason: str
    detail: str
    raw: bytes | None
    rssi: float | None = None
    snr: float | None = None


def reading_body(gateway_id: str, node: str, name: str | None, fcnt: int, kind: str, lane: int, ts_us: int,
                 values: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """The reading object (README "Payload schema"), keys in their published order.

    Identity (``<gateway_id>/<node>/<fcnt>``), kind, lane name, the edge time ``ts_us`` (µs since the epoch) with
    the clock's state at that time, then ``fields`` in the order given (radio, rssi, snr, auth, receipt for a
    node's reading; ``alert`` for an alert), then ``values``. The frame decoder writes the same object and its
    text inline for speed (FrameDecoder.decode); a test holds the two to the same bytes.
    """
    return {"id": f"{gateway_id}/{node}/{fcnt}", "node": node, "name": name, "fcnt": fcnt, "kind": kind,
            "lane": LANES[lane], "ts_us": ts_us, "clock": clock.quality(ts_us), **fields, "values": values}


def reading_entry(lane: int, body: Mapping[str, Any]) -> Entry:
    """The journal entry of a reading object built by :func:`reading_body`: its identity and its JSON text."""
    return Entry(lane, body["node"], body["fcnt"], body["ts_us"], json.dumps(body, **READING_JSON))


def own_reading(gateway_id: str, seq: int, kind: str, lane: int, ts_us: int, values: Mapping[str, float],
                **fields: Any) -> Entry:
    """A reading the gateway makes about itself (``gateway_health``, ``alert``): node ``gateway``, named by the
    gateway id, numbered ``seq`` in the gateway's own sequence, stamped ``ts_us`` (µs since the epoch)."""
    return reading_entry(lane, reading_body(gateway_id, GATEWAY_NODE, gateway_id, seq, kind, lane, ts_us, values,
                                            **fields))
