"""End to end on real parts: simulated RAK3172 on a pty -> agent -> real Mosquitto -> subscriber."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from agent.config import parse_config
from agent.dev.devbroker import Mosquitto
from agent.gateway.core import Gateway
from tests.support.broker import Collector
from tests.support.contract import readings_schema
from tests.support.field import NODES, FieldNode, config_text, default_values, journal_unsent, readings_of, start_sim
from tests.support.polling import wait_until

pytestmark = pytest.mark.broker


@pytest.fixture
def field(tmp_path: Path, broker: Mosquitto) -> Iterator[dict]:
    nodes = [FieldNode(n.node_id, n.kind) for n in NODES]
    sim = start_sim(tmp_path)
    cfg = parse_config(config_text(port=sim.path, mqtt_port=broker.port, journal=tmp_path / "journal.db",
                                   nodes=nodes))
    collector = Collector(broker, "denen/v1/#", client_id="collector-1", persistent=True)
    gw = Gateway(cfg)
    gw.start()
    assert sim.wait_for(lambda: sim.rx_mode == "continuous_tx", timeout=10), sim.commands
    assert wait_until(lambda: gw.link.connected, 10)
    yield {"sim": sim, "gw": gw, "collector": collector, "nodes": {n.kind: n for n in nodes}, "broker": broker,
           "tmp": tmp_path}
    gw.stop()
    collector.close()
    sim.stop()


def test_sos_press_reaches_the_sos_topic_with_its_gps_position(field: dict) -> None:
    sim, col, sos = field["sim"], field["collector"], field["nodes"]["sos"]
    assert sim.inject_uplink(sos.frame(default_values("sos", 0), receipt=True), rssi=-112, snr=-4.0)
    assert col.wait_for(lambda m: any(t.endswith("/readings/sos") for t, _, _ in m), 10)
    topic, payload, retained = next(x for x in col.messages if x[0].endswith("/readings/sos"))
    assert topic == "denen/v1/gw-test-01/readings/sos" and not retained
    doc = json.loads(payload)
    assert doc["schema"] == "denen.readings/1" and doc["gateway"] == "gw-test-01" and doc["lane"] == "sos"
    [r] = doc["readings"]
    assert r["id"] == "gw-test-01/00000101/1"
    assert r["kind"] == "sos" and r["auth"] == "mic" and r["receipt"] is True
    assert r["values"]["pressed"] == 1.0
    assert r["values"]["lat_deg"] == pytest.approx(35.8123, abs=1e-4)
    assert r["values"]["lon_deg"] == pytest.approx(139.0987, abs=1e-4)
    assert r["rssi"] == -112 and r["snr"] == -4
    # The retained online status is there too.
    assert col.wait_for(lambda m: any(t.endswith("/status") and b'"online"' in p for t, p, _ in m), 5)


def test_every_reading_arrives_exactly_once_in_order_per_node(field: dict) -> None:
    sim, col, nodes = field["sim"], field["collector"], field["nodes"]
    per_node = 40
    for i in range(per_node):
        for kind in ("trap", "water_level", "rain", "weather"):
            assert sim.inject_uplink(nodes[kind].frame(default_values(kind, i)), rssi=-90, snr=5.0)
    expected = 4 * per_node
    assert col.wait_for(lambda m: len(readings_of(m)) >= expected, 20), len(readings_of(col.messages))
    got = readings_of(col.messages)
    schema = readings_schema()
    for topic, payload, _ in col.messages:
        if "/readings/" in topic:
            jsonschema.validate(json.loads(payload), schema)  # as written in the README
    ids = [r["id"] for r in got]
    assert len(ids) == len(set(ids)) == expected
    for kind in ("trap", "water_level", "rain", "weather"):
        n = nodes[kind]
        arrived = [r for r in got if r["node"] == n.hex]
        assert [r["fcnt"] for r in arrived] == [s["fcnt"] for s in n.sent]  # in order, none missing
        for r, s in zip(arrived, n.sent, strict=True):
            for key, value in s["values"].items():
                assert r["values"][key] == pytest.approx(value, abs=0.011), (kind, key)


def test_broker_outage_loses_nothing_and_sos_goes_first(field: dict) -> None:
    sim, gw, broker, nodes, col = field["sim"], field["gw"], field["broker"], field["nodes"], field["collector"]
    broker.stop()
    assert wait_until(lambda: not gw.link.connected, 10)
    # The core learns that the session ended (it stops counting on it, the lamp shows no backhaul).
    assert wait_until(lambda: gw.stats.counters["mqtt.disconnects"] == 1 and gw.outbox.session is None, 10)
    before = len(readings_of(col.messages))
    for i in range(300):
        assert sim.inject_uplink(nodes["water_level"].frame(default_values("water_level", i)))
    assert sim.inject_uplink(nodes["sos"].frame(default_values("sos", 0)))
    # Everything is journaled while the broker is away.
    assert wait_until(lambda: journal_unsent(field["tmp"] / "journal.db") >= 301, 10)
    broker.start()
    # The collector's session survived the restart: it sees what the broker received, in order.
    assert col.wait_for(lambda m: len(readings_of(m)) - before >= 301, 20), len(readings_of(col.messages))
    got = readings_of(col.messages)[before:]
    assert got[0]["kind"] == "sos", [r["kind"] for r in got[:3]]
    assert len({r["id"] for r in got}) == 301
    assert wait_until(lambda: journal_unsent(field["tmp"] / "journal.db") == 0, 10)


def test_split_writes_garbage_and_duplicated_lines_lose_nothing_and_add_nothing(field: dict) -> None:
    """Faults the module link really has: every frame still arrives exactly once; duplicates are counted."""
    sim, col, gw, nodes = field["sim"], field["collector"], field["gw"], field["nodes"]
    sim.faults.split_probability = 0.3
    sim.faults.duplicate_probability = 0.1
    sim.faults.forward_to(sim.port.faults)
    sent = 0
    for i in range(150):
        for kind in ("water_level", "weather"):
            assert sim.inject_uplink(nodes[kind].frame(default_values(kind, i)), rssi=-100, snr=-2.0)
            sent += 1
        if i % 15 == 0:
            # Noise between lines (noise inside a line is a lost frame on real hardware too).
            sim.inject_garbage()
    assert col.wait_for(lambda m: len(readings_of(m)) >= sent, 20), len(readings_of(col.messages))
    got = readings_of(col.messages)
    assert len(got) == sent == len({r["id"] for r in got})
    duplicated = sim.faults.counts["duplicate"]
    assert duplicated > 0
    assert wait_until(lambda: gw.stats.counters["frames.duplicate"] == duplicated, 5), (
        gw.stats.counters["frames.duplicate"], duplicated)
    assert gw.stats.counters["lora0.garbled_line"] >= 1


def test_a_backlog_goes_out_in_messages_within_batch_max_kb(tmp_path: Path, broker: Mosquitto) -> None:
    """mqtt.batch_max_kb bounds every message (the backend refuses larger ones); a backlog is split, none lost."""
    nodes = [FieldNode(n.node_id, n.kind) for n in NODES]
    sim = start_sim(tmp_path)
    text = config_text(port=sim.path, mqtt_port=broker.port, journal=tmp_path / "journal.db", nodes=nodes,
                       extra_mqtt="  batch_max_kb: 4\n  batch_max_readings: 5000")
    cfg = parse_config(text)
    assert cfg.mqtt.batch_max_kb == 4
    broker.stop()  # a backlog builds up while the broker is away
    gw = Gateway(cfg)
    gw.start()
    collector = None
    try:
        assert sim.wait_for(lambda: sim.rx_mode == "continuous_tx", timeout=10), sim.commands
        by_kind = {n.kind: n for n in nodes}
        for i in range(60):
            for kind in ("water_level", "rain"):
                assert sim.inject_uplink(by_kind[kind].frame(default_values(kind, i)), rssi=-90, snr=5.0)
        assert wait_until(lambda: journal_unsent(tmp_path / "journal.db") >= 120, 20)
        broker.start()
        collector = Collector(broker, "denen/v1/+/readings/#", client_id="collector-kb")
        assert collector.wait_for(lambda m: len(readings_of(m)) >= 120, 30), len(readings_of(collector.messages))
        sizes = [len(p) for t, p, _ in collector.messages if t.endswith("/readings/telemetry")]
        assert max(sizes) <= 4096, max(sizes)
        assert len(sizes) >= 120 * 250 // 4096  # readings are ~250 bytes: split into many messages, not one
        ids = [r["id"] for r in readings_of(collector.messages)]
        assert len(ids) == len(set(ids)) == 120
    finally:
        gw.stop()
        if collector is not None:
            collector.close()
        sim.stop()
