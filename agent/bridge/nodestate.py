"""Each node's latest state, republished retained on the backend broker for consumers beyond the bridge.

Node-RED, a municipal dashboard or a town's own script can follow one node by subscribing to
``denen/v1/<gateway>/nodes/<node>/state`` instead of parsing the gateways' reading batches. The document
(``denen.node_state/1``, README "Consumers") holds the node's newest reading as the bridge wrote it::

    {"schema": "denen.node_state/1", "gateway": "gw-okutama-01", "site": "okutama", "node": "00000301",
     "name": "river-1", "kind": "water_level", "ts_us": 1764130037123456, "time": "2025-11-26T04:07:17.123456Z",
     "values": {"level_cm": 182.5, "battery_v": 3.6}, "fcnt": 1042, "rssi": -95.0, "snr": 4.0,
     "auth_ok": true, "clock_ok": true,
     "alerts": {"river_stage": {"raised": true, "severity": "warning", "level": 3, "message": "...",
                                "ts_us": 1764130037123457}}}

The state is derived from what the sink stored: :class:`NodeStateSink` wraps the sink and looks at a body only after
the sink accepted it, so a refused or dead-lettered line never becomes state, and a reading that is written is
acknowledged whether or not its state could be published (the state is a view, the database the record).

What a consumer can rely on, and what not:

* Within one bridge process the published ``ts_us`` of a node never goes back: a backlog drained after newer
  readings does not replace them. Several bridge processes each publish the newest they wrote, so a retained
  document can be older than one another bridge published a moment before; a consumer that must never go back keeps
  the greatest ``ts_us`` it has seen.
* A node that falls silent keeps its last document; ``ts_us`` says how old it is.
* Publishing is skipped (and counted) while the bridge is not connected: paho would otherwise queue without bound,
  and the next reading of the node publishes a fresh document anyway.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from agent.bridge.ngsi_entities import iso_time, parse_line
from agent.bridge.schema import ID_RE, NODE_KINDS
from agent.bridge.sinks import Sink

__all__ = ["NODE_STATE_SCHEMA", "NodeStateSink", "NodeStates", "state_topic"]

log = logging.getLogger(__name__)

NODE_STATE_SCHEMA = "denen.node_state/1"
#: Nodes remembered (newest ts_us and open alerts), least recently written forgotten first: bounds memory against a
#: registry of any size. About 0.5 KiB each.
NODES_MAX = 100_000
#: Alert types remembered per node (a node has a handful; a hostile gateway could send many types).
ALERTS_PER_NODE_MAX = 16
_LINK_FIELDS = ("fcnt", "rssi", "snr", "auth_ok", "clock_ok")
_ALERT_FIELDS = ("severity", "level", "value", "threshold", "message")


def state_topic(prefix: str, gateway: str, node: str) -> str | None:
    """``<prefix><gateway>/nodes/<node>/state``, or None when a part is not a plain id (a topic must not be
    widened by ``+``, ``#`` or ``/`` in a name)."""
    if not (ID_RE.match(gateway) and ID_RE.match(node)):
        return None
    return f"{prefix}{gateway}/nodes/{node}/state"


class NodeStates:
    """The newest state of each (gateway, node), built from line-protocol bodies the sink stored."""

    def __init__(self, nodes_max: int = NODES_MAX) -> None:
        self._nodes: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._nodes_max = nodes_max

    def __len__(self) -> int:
        return len(self._nodes)

    def update(self, body: bytes) -> list[dict[str, Any]]:
        """Fold one stored body in; returns the documents that changed (one per node at most), oldest node first.
        Lines that are not a node's reading or alert are ignored; a line that does not parse is skipped (the
        sink stored it, so it is ours, but a view must never stop the writer)."""
        changed: dict[tuple[str, str], dict[str, Any]] = {}
        for line in body.decode("utf-8", "replace").split("\n"):
            if not line:
                continue
            try:
                measurement, tags, fields, ts_us = parse_line(line)
            except (ValueError, IndexError):
                continue
            gateway, node = tags.get("gateway"), tags.get("node")
            if gateway is None or node is None:
                continue
            if measurement in NODE_KINDS:
                doc = self._reading(measurement, tags, fields, ts_us)
            elif measurement == "alert" and "type" in tags:
                doc = self._alert(tags, fields, ts_us)
            else:
                continue
            if doc is not None:
                changed[(gateway, node)] = doc
        return list(changed.values())

    def _entry(self, tags: dict[str, str]) -> dict[str, Any]:
        key = (tags["gateway"], tags["node"])
        doc = self._nodes.get(key)
        if doc is None:
            doc = {"schema": NODE_STATE_SCHEMA, "gateway": key[0], "site": tags.get("site", ""), "node": key[1],
                   "name": tags.get("name", ""), "kind": None, "ts_us": None, "time": None, "values": {},
                   "alerts": {}}
            self._nodes[key] = doc
            if len(self._nodes) > self._nodes_max:
                self._nodes.popitem(last=False)
        self._nodes.move_to_end(key)
        return doc

    def _reading(self, kind: str, tags: dict[str, str], fields: dict[str, Any], ts_us: int) -> dict[str, Any] | None:
        doc = self._entry(tags)
        if doc["ts_us"] is not None and ts_us <= doc["ts_us"]:
            return None  # an older reading (a backlog drained after newer ones) does not replace the newest
        values = {k: v for k, v in fields.items() if k not in _LINK_FIELDS}
        doc.update(kind=kind, ts_us=ts_us, time=iso_time(ts_us), values=values, site=tags.get("site", doc["site"]),
                   name=tags.get("name", doc["name"]))
        for k in _LINK_FIELDS:
            doc.pop(k, None)
            if k in fields:
                v = fields[k]
                doc[k] = (v == 1.0) if k in ("auth_ok", "clock_ok") else (int(v) if k == "fcnt" else v)
        return doc

    def _alert(self, tags: dict[str, str], fields: dict[str, Any], ts_us: int) -> dict[str, Any] | None:
        doc = self._entry(tags)
        alerts: dict[str, Any] = doc["alerts"]
        kind = tags["type"]
        old = alerts.get(kind)
        if old is not None and ts_us <= old["ts_us"]:
            return None
        if old is None and len(alerts) >= ALERTS_PER_NODE_MAX:
            return None
        entry: dict[str, Any] = {"raised": fields.get("raised") == 1.0, "ts_us": ts_us}
        if "severity" in tags:
            entry["severity"] = tags["severity"]
        entry.update((k, fields[k]) for k in _ALERT_FIELDS if k in fields)
        alerts[kind] = entry
        return doc


class NodeStateSink:
    """A sink that, after the wrapped sink stored a body, publishes the state of each node the body changed.

    ``publish(topic, payload)`` returns False when it could not hand the message to the broker connection (not
    connected); the document is then skipped and counted, and the node's next reading publishes again."""

    def __init__(self, inner: Sink, publish: Callable[[str, bytes], bool], prefix: str,
                 stats: dict[str, int] | None = None, nodes_max: int = NODES_MAX) -> None:
        self.inner = inner
        self.target = inner.target
        self._publish = publish
        self._prefix = prefix
        self._states = NodeStates(nodes_max)
        self.stats: dict[str, int] = stats if stats is not None else {}

    def write(self, body: bytes) -> None:
        self.inner.write(body)  # raises as the sink does: nothing was stored, nothing is published
        for doc in self._states.update(body):
            topic = state_topic(self._prefix, doc["gateway"], doc["node"])
            if topic is None:
                self._count("node_state_bad_topic")
                continue
            try:
                payload = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
            except ValueError:  # a non-finite value: the sink refuses those, so this is a defect, not input
                self._count("node_state_bad_value")
                continue
            if self._publish(topic, payload):
                self._count("node_state_published")
            else:
                self._count("node_state_skipped")

    def close(self) -> None:
        self.inner.close()

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1
