"""Each node's retained state document (agent/bridge/nodestate.py), built from what the real serializer writes."""

from __future__ import annotations

import json

import pytest

from agent.bridge import Bridge, nodestate
from agent.bridge.errors import SinkUnavailable
from agent.bridge.lineproto import Serializer
from agent.bridge.nodestate import (
    LINE_MAX,
    NODE_STATE_SCHEMA,
    VALUE_KEY_MAX,
    VALUES_MAX,
    NodeStates,
    NodeStateSink,
    state_topic,
)
from agent.bridge.registry import GatewayInfo, GatewayRegistry
from tests.bridge._helpers import T0_US, batch, reading, topic
from tests.support.contract import section

GW = "gw-test-01"
REGISTRY = GatewayRegistry({GW: GatewayInfo("testville"), "gw-test-02": GatewayInfo("testville")})


def body(readings: list[dict], gateway: str = GW) -> bytes:
    conv = Serializer(registry=REGISTRY).convert(topic(gateway, readings[0]["lane"]), batch(gateway, readings))
    assert not conv.rejects, conv.rejects
    return "\n".join(conv.lines).encode()


class RecordingSink:
    target = "memory"

    def __init__(self, fail: bool = False) -> None:
        self.bodies: list[bytes] = []
        self.fail = fail
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.fail:
            raise SinkUnavailable("database down")
        self.bodies.append(data)

    def close(self) -> None:
        self.closed = True


def test_a_reading_becomes_the_documented_state_with_values_link_and_trust() -> None:
    docs = NodeStates().update(body([reading(GW, 0x301, 1042, "water_level", {"level_cm": 182.5, "battery_v": 3.6},
                                             ts_us=T0_US + 5, name="river-1")]))
    assert len(docs) == 1
    doc = docs[0]
    assert doc == {
        "schema": NODE_STATE_SCHEMA, "gateway": GW, "site": "testville", "node": "00000301", "name": "river-1",
        "kind": "water_level", "ts_us": T0_US + 5, "time": "2026-01-01T00:00:00.000005Z",
        "values": {"level_cm": 182.5, "battery_v": 3.6}, "fcnt": 1042, "rssi": -97.0, "snr": 6.5,
        "auth_ok": True, "clock_ok": True}


def test_a_name_with_escaped_characters_reads_back_as_written() -> None:
    docs = NodeStates().update(body([reading(GW, 0x301, 1, "water_level", {"level_cm": 1.0}, name="川 1,x=y")]))
    assert [(d["name"], d["node"], d["values"]) for d in docs] == [("川 1,x=y", "00000301", {"level_cm": 1.0})]


def test_only_the_newest_reading_of_a_node_is_published_and_a_backlog_never_goes_back() -> None:
    states = NodeStates()
    newer = [reading(GW, 0x301, n, "water_level", {"level_cm": float(n)}, ts_us=T0_US + n) for n in (10, 12, 11)]
    docs = states.update(body(newer))
    assert [d["values"]["level_cm"] for d in docs] == [12.0]  # the newest by ts_us, wherever it is in the body
    # A backlog drained later: older readings of the same node change nothing.
    older = [reading(GW, 0x301, n, "water_level", {"level_cm": float(n)}, ts_us=T0_US + n) for n in (3, 4)]
    assert states.update(body(older)) == []
    # Another gateway's reception of the same node is its own document.
    docs = states.update(body([reading("gw-test-02", 0x301, 2, "water_level", {"level_cm": 2.0}, ts_us=T0_US)],
                              "gw-test-02"))
    assert [(d["gateway"], d["values"]["level_cm"]) for d in docs] == [("gw-test-02", 2.0)]


def test_only_the_winning_line_of_each_node_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    real = nodestate._parse
    monkeypatch.setattr(nodestate, "_parse", lambda line: parsed.append(line) or real(line))
    readings = [reading(GW, 0x300 + i % 10, i, "water_level", {"level_cm": float(i)}) for i in range(100)]
    docs = NodeStates().update(body(readings))
    # 200 lines (a reading and its node_health each): one parse per node, none for node_health.
    assert len(docs) == 10 and len(parsed) == 10
    assert all(line.startswith(b"water_level,") for line in parsed)
    assert {d["node"]: d["fcnt"] for d in docs} == {f"{0x300 + i:08x}": 90 + i for i in range(10)}


def test_an_alert_does_not_change_the_nodes_state_but_an_sos_carries_its_own_values() -> None:
    states = NodeStates()
    docs = states.update(body([reading(GW, 0x101, 7, "sos", {"pressed": 1.0, "lat_deg": 35.8, "lon_deg": 139.1},
                                       ts_us=T0_US + 1, name="hiker-1")]))
    assert docs[0]["values"] == {"pressed": 1.0, "lat_deg": 35.8, "lon_deg": 139.1} and "alerts" not in docs[0]
    alert = reading(GW, 0x0, 8, "alert", {}, ts_us=T0_US + 2, name="gateway")
    alert.update(id=f"{GW}/gateway/8", node="gateway", lane="sos", values={"raised": 1.0}, alert={
        "id": "a1", "key": "sos:00000101", "type": "sos", "state": "raised", "severity": "emergency",
        "node": "00000101", "name": "hiker-1", "message": "SOS発信 hiker-1"})
    assert states.update(body([alert])) == []


def test_memory_is_bounded_in_all_and_per_gateway_by_forgetting_the_least_recently_written() -> None:
    states = NodeStates(nodes_max=8, per_gateway_max=5)
    states.update(body([reading("gw-test-02", 0x200 + i, 1, "heartbeat", {"battery_v": 3.5}) for i in range(3)],
                       "gw-test-02"))
    # One gateway flooding with 12 nodes keeps 5 of its own and pushes none of the other gateway's out.
    states.update(body([reading(GW, 0x300 + i, 1, "heartbeat", {"battery_v": 3.5}) for i in range(12)]))
    assert len(states) == 8
    first = body([reading(GW, 0x300, 2, "heartbeat", {"battery_v": 3.5}, ts_us=T0_US)])
    assert len(states.update(first)) == 1  # forgotten: a reading older than the forgotten one publishes again
    other = body([reading("gw-test-02", 0x200, 1, "heartbeat", {"battery_v": 3.5})], "gw-test-02")
    assert states.update(other) == []  # remembered: the same reading is not newer
    # The total bound forgets the least recently written of all gateways.
    states.update(body([reading("gw-test-02", 0x210 + i, 1, "heartbeat", {"battery_v": 3.5}) for i in range(3)],
                       "gw-test-02"))
    assert len(states) == 8


def test_a_document_over_the_caps_is_not_published_and_is_counted() -> None:
    stats: dict[str, int] = {}
    states = NodeStates(stats=stats)
    many = {f"v{i}": float(i) for i in range(VALUES_MAX + 1)}
    long_key = {"k" * (VALUE_KEY_MAX + 1): 1.0}
    huge = {f"value_{i:04d}": 1.0 for i in range(800)}
    huge_body = body([reading(GW, 0x303, 1, "weather", huge)])
    assert len(huge_body.split(b"\n")[0]) > LINE_MAX
    for node, values, b in ((0x301, many, None), (0x302, long_key, None), (0x303, huge, huge_body)):
        assert states.update(b or body([reading(GW, node, 1, "weather", values)])) == []
    assert stats == {"node_state_too_big": 3}
    at_cap = {f"{i:02d}".rjust(VALUE_KEY_MAX, "k"): float(i) for i in range(VALUES_MAX)}
    [doc] = states.update(body([reading(GW, 0x301, 2, "weather", at_cap)]))
    assert doc["values"] == at_cap


def test_lines_that_are_not_a_nodes_reading_are_ignored() -> None:
    text = ("gateway_health,gateway=gw-test-01,site=testville depth_sos=0 1767225600000000\n"
            "not a line at all\n"
            "water_level,site=testville level_cm=1 1767225600000000\n"
            "water_level,gateway=gw-test-01,node=00000301 level_cm=x 1767225600000000\n"
            "water_level,gateway=gw-test-01,node=00000302 level_cm=1 soon\n").encode()
    stats: dict[str, int] = {}
    assert NodeStates(stats=stats).update(text) == []
    assert stats == {"node_state_unreadable": 1}


@pytest.mark.parametrize(("gateway", "node"), [("gw/../x", "00000101"), ("gw-a", "+"), ("gw-a", "#"),
                                               ("", "00000101"), ("GW", "00000101")])
def test_a_topic_is_never_widened_by_a_name(gateway: str, node: str) -> None:
    assert state_topic("denen/v1/", gateway, node) is None


def test_the_sink_publishes_after_the_store_accepted_and_not_when_it_refused() -> None:
    published: list[tuple[str, bytes]] = []
    inner = RecordingSink()
    sink = NodeStateSink(inner, lambda t, p: published.append((t, p)) is None, "denen/v1/")
    assert sink.target == "memory"
    sink.write(body([reading(GW, 0x301, 1, "water_level", {"level_cm": 1.0})]))
    assert inner.bodies and [t for t, _ in published] == [f"denen/v1/{GW}/nodes/00000301/state"]
    assert json.loads(published[0][1])["values"]["level_cm"] == 1.0
    assert sink.stats == {"node_state_published": 1}

    failing = NodeStateSink(RecordingSink(fail=True), lambda t, p: published.append((t, p)) is None, "denen/v1/")
    with pytest.raises(SinkUnavailable):
        failing.write(body([reading(GW, 0x302, 1, "water_level", {"level_cm": 1.0})]))
    assert len(published) == 1  # nothing stored, nothing published
    sink.close()
    assert inner.closed


def test_a_document_the_connection_cannot_take_is_skipped_and_counted() -> None:
    stats: dict[str, int] = {}
    sink = NodeStateSink(RecordingSink(), lambda t, p: False, "denen/v1/", stats)
    sink.write(body([reading(GW, 0x301, 1, "water_level", {"level_cm": 1.0}),
                     reading(GW, 0x302, 1, "water_level", {"level_cm": 2.0})]))
    assert stats == {"node_state_skipped": 2}


def test_a_failure_after_the_body_was_stored_is_counted_never_raised() -> None:
    def broken(topic: str, payload: bytes) -> bool:
        raise RuntimeError("connection object gone")

    inner = RecordingSink()
    sink = NodeStateSink(inner, broken, "denen/v1/")
    sink.write(body([reading(GW, 0x301, 1, "water_level", {"level_cm": 1.0})]))
    sink.write(body([reading(GW, 0x301, 2, "water_level", {"level_cm": 2.0})]))
    assert len(inner.bodies) == 2 and sink.stats == {"node_state_failures": 2}


def test_the_readme_example_has_the_documents_keys() -> None:
    text = section("## Consumers")
    example = json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])
    [doc] = NodeStates().update(body([reading(GW, 0x301, 1042, "water_level", {"level_cm": 182.5,
                                                                                "battery_v": 3.6})]))
    assert set(example) == set(doc)
    assert example["schema"] == NODE_STATE_SCHEMA
    assert set(example["values"]) == set(doc["values"])


class _Sent:
    """What paho's publish returns: rc, and whether the packet was written (or dropped with the connection)."""

    def __init__(self) -> None:
        self.rc = 0
        self.written = False

    def is_published(self) -> bool:
        return self.written


class _Connection:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bool, _Sent]] = []

    def is_connected(self) -> bool:
        return True

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> _Sent:
        info = _Sent()
        self.sent.append((topic, qos, retain, info))
        return info


def test_the_bridge_publishes_qos_0_retained_and_bounds_what_is_not_yet_written() -> None:
    bridge = object.__new__(Bridge)
    bridge._client = _Connection()  # type: ignore[assignment]
    unsent: list = []
    publish = [Bridge._publish_node_state(bridge, unsent, f"t/{i}", b"{}", unsent_max=2) for i in range(3)]
    assert publish == [True, True, False]  # two still unwritten: the third is skipped, not queued
    assert [(t, qos, retain) for t, qos, retain, _ in bridge._client.sent] == [("t/0", 0, True), ("t/1", 0, True)]
    bridge._client.sent[0][3].written = True
    assert Bridge._publish_node_state(bridge, unsent, "t/3", b"{}", unsent_max=2)
    assert len(unsent) == 2
