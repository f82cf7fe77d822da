"""Each node's retained state document (agent/bridge/nodestate.py), built from what the real serializer writes."""

from __future__ import annotations

import json

import pytest

from agent.bridge.errors import SinkUnavailable
from agent.bridge.lineproto import Serializer
from agent.bridge.nodestate import (
    NODE_STATE_SCHEMA,
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
        "auth_ok": True, "clock_ok": True, "alerts": {}}


def test_only_the_newest_reading_of_a_node_is_published_and_a_backlog_never_goes_back() -> None:
    states = NodeStates()
    newer = [reading(GW, 0x301, n, "water_level", {"level_cm": float(n)}, ts_us=T0_US + n) for n in (10, 11, 12)]
    docs = states.update(body(newer))
    assert [d["values"]["level_cm"] for d in docs] == [12.0]
    # A backlog drained later: older readings of the same node change nothing.
    older = [reading(GW, 0x301, n, "water_level", {"level_cm": float(n)}, ts_us=T0_US + n) for n in (3, 4)]
    assert states.update(body(older)) == []
    # Another gateway's reception of the same node is its own document.
    docs = states.update(body([reading("gw-test-02", 0x301, 2, "water_level", {"level_cm": 2.0}, ts_us=T0_US)],
                              "gw-test-02"))
    assert [(d["gateway"], d["values"]["level_cm"]) for d in docs] == [("gw-test-02", 2.0)]


def test_an_alert_is_kept_per_type_on_the_node_it_concerns() -> None:
    states = NodeStates()
    states.update(body([reading(GW, 0x101, 7, "sos", {"pressed": 1.0, "lat_deg": 35.8, "lon_deg": 139.1},
                                ts_us=T0_US + 1, name="hiker-1")]))
    alert = reading(GW, 0x0, 8, "alert", {}, ts_us=T0_US + 2, name="gateway")
    alert.update(id=f"{GW}/gateway/8", node="gateway", lane="sos", values={"raised": 1.0}, alert={
        "id": "a1", "key": "sos:00000101", "type": "sos", "state": "raised", "severity": "emergency",
        "node": "00000101", "name": "hiker-1", "message": "SOS発信 hiker-1"})
    docs = states.update(body([alert]))
    assert len(docs) == 1 and docs[0]["node"] == "00000101"
    assert docs[0]["values"] == {"pressed": 1.0, "lat_deg": 35.8, "lon_deg": 139.1}
    sos = docs[0]["alerts"]["sos"]
    assert sos["raised"] is True and sos["severity"] == "emergency" and sos["message"] == "SOS発信 hiker-1"


def test_memory_is_bounded_by_forgetting_the_least_recently_written_node() -> None:
    states = NodeStates(nodes_max=5)
    states.update(body([reading(GW, 0x300 + i, 1, "heartbeat", {"battery_v": 3.5}) for i in range(12)]))
    assert len(states) == 5


def test_lines_that_are_not_a_nodes_reading_are_ignored() -> None:
    text = ("gateway_health,gateway=gw-test-01,site=testville depth_sos=0 1767225600000000\n"
            "not a line at all\n"
            "water_level,site=testville level_cm=1 1767225600000000\n").encode()
    assert NodeStates().update(text) == []


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


def test_the_readme_example_has_the_documents_keys() -> None:
    text = section("## Consumers")
    example = json.loads(text.split("```json\n", 1)[1].split("```", 1)[0])
    states = NodeStates()
    states.update(body([reading(GW, 0x301, 1042, "water_level", {"level_cm": 182.5, "battery_v": 3.6})]))
    alert = reading(GW, 0x0, 8, "alert", {"raised": 1.0, "level": 3.0}, ts_us=T0_US + 10**9)
    alert.update(id=f"{GW}/gateway/8", node="gateway", lane="alarm", alert={
        "id": "a2", "key": "river_stage:00000301", "type": "river_stage", "state": "raised", "severity": "warning",
        "node": "00000301", "name": "river-1", "message": "避難判断水位"})
    doc = states.update(body([alert]))[0]
    assert set(example) == set(doc)
    assert example["schema"] == NODE_STATE_SCHEMA
    assert set(example["alerts"]["river_stage"]) <= set(doc["alerts"]["river_stage"])
