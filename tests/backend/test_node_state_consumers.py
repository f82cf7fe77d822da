"""Consumers beyond the bridge: a gateway's readings → real Mosquitto → `denen bridge` (real InfluxDB 1.6.7) → the
retained per-node state topics → the shipped Node-RED flow (deploy/backend/node-red/denen-node-state.json) in a real
Node-RED, which serves each node's newest document and reports a pressed SOS."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.bridge import Bridge, parse_bridge_config
from agent.dev.devbroker import Mosquitto
from tests.bridge._helpers import (
    Publisher,
    batch,
    bridge_config_text,
    reading,
    topic,
    v1_sink,
)
from tests.support.influx import InfluxDB1
from tests.support.nodered import NodeRed, NodeRedMissing
from tests.support.polling import wait_until

FLOW = Path(__file__).resolve().parents[2] / "deploy" / "backend" / "node-red" / "denen-node-state.json"
GW = "gw-test-01"


@pytest.fixture
def bridge(tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> Iterator[Bridge]:
    text = bridge_config_text(broker=broker, sink=v1_sink(influx.url), dead_letter=tmp_path / "dead.db")
    b = Bridge(parse_bridge_config(text + "node_state:\n  publish: true\n"))
    b.start()
    assert b.wait_subscribed(10), "the bridge did not subscribe"
    yield b
    b.stop()


def retained_states(broker: Mosquitto) -> dict[str, tuple[int, dict]]:
    """Every retained node state the broker holds, by topic, as a new subscriber gets them: (QoS, document)."""
    got: dict[str, tuple[int, dict]] = {}
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="state-reader",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.on_message = lambda c, u, m: got.__setitem__(m.topic, (m.qos, json.loads(m.payload))) if m.retain else None
    client.connect(broker.host, broker.port)
    client.subscribe("denen/v1/+/nodes/+/state", qos=1)
    client.loop_start()
    time.sleep(1.0)
    client.disconnect()
    client.loop_stop()
    return got


def test_the_bridge_keeps_each_nodes_newest_state_retained(broker: Mosquitto, bridge: Bridge) -> None:
    pub = Publisher(broker, "gw-test-01")
    try:
        levels = [reading(GW, 0x301, n, "water_level", {"level_cm": 100.0 + n, "battery_v": 3.6}) for n in (1, 2, 3)]
        pub.publish([(topic(GW), batch(GW, levels))])
        assert wait_until(lambda: bridge.counters().get("node_state_published", 0) >= 1, 10), bridge.counters()
        # A backlog drained after the newer readings does not take the state back.
        pub.publish([(topic(GW), batch(GW, [reading(GW, 0x301, 0, "water_level", {"level_cm": 1.0})]))])
        assert wait_until(lambda: bridge.counters().get("messages_acked", 0) >= 2, 10), bridge.counters()
    finally:
        pub.close()
    states = retained_states(broker)
    qos, doc = states[f"denen/v1/{GW}/nodes/00000301/state"]
    assert doc["schema"] == "denen.node_state/1" and doc["site"] == "testville"
    assert doc["values"] == {"level_cm": 103.0, "battery_v": 3.6} and doc["fcnt"] == 3 and "alerts" not in doc
    # Published at QoS 0 (a subscriber at QoS 1 gets it at 0): the broker queues none for an offline consumer.
    assert qos == 0


def test_the_shipped_node_red_flow_follows_every_node_and_reports_an_sos(
        tmp_path: Path, broker: Mosquitto, bridge: Bridge) -> None:
    try:
        red = NodeRed(tmp_path / "node-red", FLOW, {"DENEN_MQTT_HOST": broker.host,
                                                   "DENEN_MQTT_PORT": str(broker.port),
                                                   "DENEN_MQTT_USER": "", "DENEN_MQTT_PASSWORD": ""})
    except NodeRedMissing as exc:
        pytest.fail(str(exc))
    red.start()
    pub = Publisher(broker, "gw-test-01")
    try:
        assert wait_until(lambda: "Connected to broker" in red.log(), 20), red.log()[-2000:]
        pub.publish([(topic(GW), batch(GW, [reading(GW, 0x301, 5, "water_level", {"level_cm": 182.5})])),
                     (topic(GW, "sos"), batch(GW, [reading(GW, 0x101, 9, "sos",
                                                           {"pressed": 1.0, "lat_deg": 35.8, "lon_deg": 139.1},
                                                           name="hiker-1")]))])
        assert wait_until(lambda: len(red.get_json("/denen/nodes")) == 2, 20), red.get_json("/denen/nodes")
        docs = {d["node"]: d for d in red.get_json("/denen/nodes")}
        assert docs["00000301"]["values"]["level_cm"] == 182.5
        assert docs["00000101"]["kind"] == "sos" and docs["00000101"]["values"]["lat_deg"] == 35.8
        assert wait_until(lambda: "SOS hiker-1" in red.log(), 10), red.log()[-2000:]
        # The node's newer frame attributed to another gateway (de-duplication: the first reception's): the flow
        # keeps one document per node, the newest.
        pub.publish([(topic("gw-test-02"), batch("gw-test-02", [reading("gw-test-02", 0x301, 6, "water_level",
                                                                        {"level_cm": 190.0})]))])
        assert wait_until(lambda: {d["node"]: d["gateway"] for d in red.get_json("/denen/nodes")}.get("00000301")
                          == "gw-test-02", 20), red.get_json("/denen/nodes")
        docs = {d["node"]: d for d in red.get_json("/denen/nodes")}
        assert len(red.get_json("/denen/nodes")) == 2 and docs["00000301"]["values"]["level_cm"] == 190.0
    finally:
        pub.close()
        red.stop()
