"""Each node's latest state, republished retained on the backend broker for consumers beyond the bridge.

Node-RED, a municipal dashboard or a town's own script can follow one node by subscribing to
``denen/v1/<gateway>/nodes/<node>/state`` instead of parsing the gateways' reading batches. The document
(``denen.node_state/1``, README "Consumers") holds the node's newest reading as the bridge wrote it::

    {"schema": "denen.node_state/1", "gateway": "gw-okutama-01", "site": "okutama", "node": "00000301",
     "name": "river-1", "kind": "water_level", "ts_us": 1764130037123456, "time": "2025-11-26T04:07:17.123456Z",
     "values": {"level_cm": 182.5, "battery_v": 3.6}, "fcnt": 1042, "rssi": -95.0, "snr": 4.0,
     "auth_ok": true, "clock_ok": true}

Alerts are not part of it: a consumer gets them from the dashboards and the alert rules, which keep them across
bridge restarts and bridges; the node's own values (an SOS's ``pressed`` and position) are.

The state is derived from what the sink stored: :class:`NodeStateSink` wraps the sink and looks at a body only after
the sink accepted it, so a refused or dead-lettered line never becomes state, and a reading that is written is
acknowledged whether or not its state could be published (the state is a view, the database the record).

What a consumer can rely on, and what not:

* Within one bridge process the published ``ts_us`` of a node never goes back: a backlog drained after newer
  readings does not replace them. Several bridge processes each publish the newest they wrote, so a retained
  document can be older than one another bridge published a moment before; a consumer that must never go back keeps
  the greatest ``ts_us`` it has seen.
* With de-duplication (``dedupe``), a frame several gateways heard is written once, attributed to the gateway of its
  first reception, so one node's state can move between ``<gateway>`` topics: subscribe with ``+`` for the gateway
  (as the shipped Node-RED flow does) and treat the topic as a latest view, not an event stream.
* A node that falls silent keeps its last document; ``ts_us`` says how old it is.
* A reading line over :data:`LINE_MAX` bytes, or with more than :data:`VALUES_MAX` values or a values key over
  :data:`VALUE_KEY_MAX` characters, publishes no state (counted ``node_state_too_big``).
* Publishing is skipped (and counted) while the bridge cannot hand the document to its connection; the next
  reading of the node publishes a fresh document anyway.

Cost: only the lines of a node kind are looked at (a prefix test), and of those only the newest line of each node
in a body is parsed, so the writer thread spends a few µs per stored reading.

Memory: only each node's newest ``ts_us`` is kept (documents are published and dropped). Bounded by
:data:`NODES_MAX` nodes in all and :data:`NODES_PER_GATEWAY_MAX` per gateway, the least recently written forgotten
first: about 420 bytes per node with a 63-character gateway id (measured with tracemalloc), so at most about
21 MB for 50,000 nodes, whatever the gateways send. A body in flight adds at most one document per node it holds,
each under :data:`LINE_MAX` of values.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from agent.bridge.encoding import split_line, unescape_tag_value
from agent.bridge.ngsi_entities import iso_time
from agent.bridge.schema import ID_RE, NODE_KINDS
from agent.bridge.sinks import Sink
from agent.i18n import N_, LazyText
from agent.ratelog import RateLimitedLog

__all__ = ["LINE_MAX", "NODE_STATE_SCHEMA", "NODES_MAX", "NODES_PER_GATEWAY_MAX", "NodeStateSink", "NodeStates",
           "VALUES_MAX", "VALUE_KEY_MAX", "state_topic"]

log = logging.getLogger(__name__)

NODE_STATE_SCHEMA = "denen.node_state/1"
#: Nodes remembered in all (their newest ts_us), least recently written forgotten first: a large town's registry.
NODES_MAX = 50_000
#: Nodes remembered per gateway, that gateway's least recently written forgotten first: one hostile gateway cannot
#: push every other gateway's nodes out.
NODES_PER_GATEWAY_MAX = 1_000
#: Values in one document (a node kind has a handful) and the length of a values key, in characters.
VALUES_MAX = 32
VALUE_KEY_MAX = 40
#: A reading line longer than this, in bytes, publishes no state (a real one is a few hundred bytes).
LINE_MAX = 8 * 1024
_LINK_FIELDS = ("fcnt", "rssi", "snr", "auth_ok", "clock_ok")
#: A line of a node's reading starts with its kind and a comma (tags follow; the kinds need no escaping).
_KIND_PREFIXES = tuple(sorted(kind.encode() + b"," for kind in NODE_KINDS))
_BACKSLASH = 0x5C


def state_topic(prefix: str, gateway: str, node: str) -> str | None:
    """``<prefix><gateway>/nodes/<node>/state``, or None when a part is not a plain id (a topic must not be
    widened by ``+``, ``#`` or ``/`` in a name)."""
    if not (ID_RE.match(gateway) and ID_RE.match(node)):
        return None
    return f"{prefix}{gateway}/nodes/{node}/state"


def _tag(head: bytes, key: bytes) -> bytes | None:
    """The value of tag ``key`` (``b",node="``) in a line's measurement-and-tags part; gateway and node ids hold no
    escapes, and a name cannot hold ``,node=`` (its ``=`` is escaped)."""
    start = head.find(key)
    if start < 0:
        return None
    start += len(key)
    end = head.find(b",", start)
    return head[start:] if end < 0 else head[start:end]


def _identity(line: bytes) -> tuple[tuple[bytes, bytes], int] | None:
    """((gateway, node), ts_us) of a node's reading line, read from its tags and timestamp only; None if it has
    none."""
    space = line.find(b" ")
    while space > 0 and line[space - 1] == _BACKSLASH:  # an escaped space in a name
        space = line.find(b" ", space + 1)
    if space < 0:
        return None
    head = line[:space]
    gateway, node = _tag(head, b",gateway="), _tag(head, b",node=")
    if gateway is None or node is None:
        return None
    try:
        return (gateway, node), int(line[line.rfind(b" ") + 1:])
    except ValueError:
        return None


def _parse(line: bytes) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(kind, tags, fields) of one reading line. Raises ValueError if it is not one of the bridge's own lines."""
    parsed = split_line(line.decode("utf-8", "replace"))
    if parsed is None:
        raise ValueError("not a line the bridge writes")
    kind, tags, fields, _ = parsed
    return (kind, {unescape_tag_value(k): unescape_tag_value(v) for k, v in tags.items()},
            {unescape_tag_value(k): float(v) for k, v in fields.items()})


def _document(line: bytes, ts_us: int) -> dict[str, Any] | None:
    """The state document of one reading line, or None when it is over the caps."""
    kind, tags, fields = _parse(line)
    values = {k: v for k, v in fields.items() if k not in _LINK_FIELDS}
    if len(values) > VALUES_MAX or any(len(k) > VALUE_KEY_MAX for k in values):
        return None
    doc: dict[str, Any] = {"schema": NODE_STATE_SCHEMA, "gateway": tags["gateway"], "site": tags.get("site", ""),
                           "node": tags["node"], "name": tags.get("name", ""), "kind": kind, "ts_us": ts_us,
                           "time": iso_time(ts_us), "values": values}
    for k in _LINK_FIELDS:
        if k in fields:
            v = fields[k]
            doc[k] = (v == 1.0) if k in ("auth_ok", "clock_ok") else (int(v) if k == "fcnt" else v)
    return doc


class NodeStates:
    """The newest ``ts_us`` of each (gateway, node), and the documents of the bodies the sink stored."""

    def __init__(self, nodes_max: int = NODES_MAX, per_gateway_max: int = NODES_PER_GATEWAY_MAX,
                 stats: dict[str, int] | None = None) -> None:
        self._newest: OrderedDict[tuple[bytes, bytes], int] = OrderedDict()
        self._gateways: dict[bytes, OrderedDict[bytes, None]] = {}
        self._nodes_max = nodes_max
        self._per_gateway_max = per_gateway_max
        self.stats: dict[str, int] = stats if stats is not None else {}

    def __len__(self) -> int:
        return len(self._newest)

    def update(self, body: bytes) -> list[dict[str, Any]]:
        """Fold one stored body in; returns the documents that changed (one per node at most, the newest of the
        body), in the order the nodes last appear in the body. Lines that are not a node's reading are passed
        over unparsed; a line that does not parse is skipped (the sink stored it, so it is ours, but a view must
        never stop the writer)."""
        newest: dict[tuple[bytes, bytes], tuple[int, bytes]] = {}
        for line in reversed(body.split(b"\n")):  # the last line of a node usually wins: few comparisons
            if not line.startswith(_KIND_PREFIXES):
                continue
            found = _identity(line)
            if found is None:
                continue
            key, ts_us = found
            best = newest.get(key)
            if best is None or ts_us > best[0]:
                newest[key] = (ts_us, line)
        docs: list[dict[str, Any]] = []
        for key, (ts_us, line) in reversed(newest.items()):
            known = self._newest.get(key)
            if known is not None and ts_us <= known:
                continue  # an older reading (a backlog drained after newer ones) does not replace the newest
            doc = self._document(line, ts_us)
            if doc is not None:
                self._remember(key, ts_us)
                docs.append(doc)
        return docs

    def _document(self, line: bytes, ts_us: int) -> dict[str, Any] | None:
        if len(line) > LINE_MAX:
            self._count("node_state_too_big")
            return None
        try:
            doc = _document(line, ts_us)
        except (ValueError, IndexError, KeyError):
            self._count("node_state_unreadable")
            return None
        if doc is None:
            self._count("node_state_too_big")
        return doc

    def _remember(self, key: tuple[bytes, bytes], ts_us: int) -> None:
        gateway, node = key
        nodes = self._gateways.get(gateway)
        if nodes is None:
            nodes = self._gateways[gateway] = OrderedDict()
        nodes[node] = None
        nodes.move_to_end(node)
        if len(nodes) > self._per_gateway_max:
            old, _ = nodes.popitem(last=False)
            del self._newest[(gateway, old)]
        self._newest[key] = ts_us
        self._newest.move_to_end(key)
        if len(self._newest) > self._nodes_max:
            (old_gateway, old_node), _ = self._newest.popitem(last=False)
            others = self._gateways[old_gateway]
            del others[old_node]
            if not others:
                del self._gateways[old_gateway]

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1


class NodeStateSink:
    """A sink that, after the wrapped sink stored a body, publishes the state of each node the body changed.

    ``publish(topic, payload)`` returns False when it could not hand the message to the broker connection (not
    connected, or too much still unsent); the document is then skipped and counted, and the node's next reading
    publishes again. Whatever goes wrong after the body was stored is counted (``node_state_failures``) and
    logged, never raised: the body is stored, and a view must not make the bridge write it again."""

    def __init__(self, inner: Sink, publish: Callable[[str, bytes], bool], prefix: str,
                 stats: dict[str, int] | None = None, nodes_max: int = NODES_MAX,
                 per_gateway_max: int = NODES_PER_GATEWAY_MAX) -> None:
        self.inner = inner
        self.target = inner.target
        self._publish = publish
        self._prefix = prefix
        self.stats: dict[str, int] = stats if stats is not None else {}
        self._states = NodeStates(nodes_max, per_gateway_max, self.stats)
        self._failures = RateLimitedLog(log)

    def write(self, body: bytes) -> None:
        self.inner.write(body)  # raises as the sink does: nothing was stored, nothing is published
        try:
            self._publish_states(body)
        except Exception as exc:  # noqa: BLE001 - the body is stored; the view must not turn that into an error
            self._count("node_state_failures")
            self._failures.warning("node_state_failure", type(exc).__name__, N_("failures"), "%s", LazyText(
                N_("node state: publishing failed after the body was stored: {error_type}: {error}"),
                error_type=type(exc).__name__, error=exc))

    def _publish_states(self, body: bytes) -> None:
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
