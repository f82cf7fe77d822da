"""The bridge on real parts with the v1 sink: simulated RAK3172 -> agent -> Mosquitto -> bridge -> InfluxDB 1.6.7.

Every reading is queried back with InfluxQL and compared with what the gateway published (exact floats, exact
timestamps) and what the simulated nodes sent. Then the failures: the database stopped mid-stream, a field type
conflict, payloads that are not ours, a missing database, and redelivery.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from agent.bridge import Bridge, DeadLetterStore
from agent.config import parse_config
from agent.dev.devbroker import Mosquitto
from agent.gateway.core import Gateway
from agent.gateway.events import ButtonPressed
from tests.bridge._helpers import (
    T0_US,
    Publisher,
    batch,
    bridge_config,
    reading,
    telemetry_readings,
    topic,
    v1_sink,
)
from tests.support.broker import Collector
from tests.support.contract import readings_schema
from tests.support.field import NODES, FieldNode, config_text, default_values, readings_of, start_sim
from tests.support.influx import InfluxDB1
from tests.support.polling import wait_until

pytestmark = pytest.mark.broker

DB = "denen"
GW = "gw-test-01"
_SCHEMA = readings_schema()
#: The README's JSON Schema of one reading object.
README_READING = jsonschema.Draft202012Validator({"$ref": "#/$defs/reading", "$defs": _SCHEMA["$defs"]})


def start_bridge(broker: Mosquitto, influx: InfluxDB1, tmp: Path, **kwargs: Any) -> Bridge:
    cfg = bridge_config(broker=broker, sink=v1_sink(influx.url, kwargs.pop("database", DB)),
                        dead_letter=tmp / "dead.db", **kwargs)
    bridge = Bridge(cfg)
    bridge.start()
    assert bridge.wait_subscribed(10), "the bridge did not subscribe"
    return bridge


def by_node_fcnt(rows: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault((row["node"], int(row["fcnt"])), []).append(row)
    return out


@pytest.fixture
def field(tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> Iterator[dict[str, Any]]:
    nodes = [FieldNode(n.node_id, n.kind) for n in NODES]
    sim = start_sim(tmp_path)
    cfg = parse_config(config_text(port=sim.path, mqtt_port=broker.port, journal=tmp_path / "journal.db",
                                   nodes=nodes))
    # The ground truth: exactly what the gateway published, recorded by a plain (not shared) subscriber.
    collector = Collector(broker, "denen/v1/#", client_id="truth", persistent=True)
    bridge = start_bridge(broker, influx, tmp_path)
    gw = Gateway(cfg)
    gw.start()
    assert sim.wait_for(lambda: sim.rx_mode == "continuous_tx", timeout=10), sim.commands
    assert wait_until(lambda: gw.link.connected, 10)
    yield {"sim": sim, "gw": gw, "collector": collector, "bridge": bridge, "influx": influx,
           "nodes": {n.kind: n for n in nodes}}
    gw.stop()
    bridge.stop()
    collector.close()
    sim.stop()


def test_full_path_every_reading_once_with_exact_values_and_timestamps(field: dict[str, Any]) -> None:
    sim, gw, col, influx, nodes = field["sim"], field["gw"], field["collector"], field["influx"], field["nodes"]
    # One gateway health reading in the stream too (the gateway's own timer is an hour in this config): the
    # installer's test button sends one at once.
    gw.inbox.put(ButtonPressed())
    per_kind = 12
    for i in range(per_kind):
        for kind in ("sos", "trap", "water_level", "rain", "weather"):
            values = default_values(kind, i)
            if kind == "sos":
                values = {**values, "pressed": float(i % 3 != 2)}  # presses and cancellations
            assert sim.inject_uplink(nodes[kind].frame(values), rssi=-90 - i, snr=float(i % 7 - 3))
        # A node sends a few frames a minute at most. The gateway stamps every frame of one serial read with the
        # same time, so frames of one node injected faster than the air allows would share a timestamp (and
        # overwrite each other in InfluxDB); let each round arrive before the next.
        assert col.wait_for(lambda m, n=5 * (i + 1): len([r for r in readings_of(m) if r["node"] != "gateway"]) >= n,
                            10)
    expected = 5 * per_kind
    assert col.wait_for(lambda m: len([r for r in readings_of(m) if r["node"] != "gateway"]) >= expected, 20)
    # The bridge implements the README: what its schema allows is stored, anything else is dead-lettered.
    published = [r for r in readings_of(col.messages) if not list(README_READING.iter_errors(r))]
    node_readings = [r for r in published if r["node"] != "gateway"]
    health = [r for r in published if r["kind"] == "gateway_health"]
    assert len(node_readings) == expected and len(health) == 1
    # Distinct edge timestamps per node, as on air (see the pacing above): each reading is its own point.
    assert len({(r["node"], r["ts_us"]) for r in node_readings}) == expected

    assert wait_until(lambda: influx.count("node_health", "fcnt", DB) >= expected, 20), \
        (field["bridge"].counters(), influx.count("node_health", "fcnt", DB),
         influx.rows("SELECT count(*) FROM /.*/", DB))
    for kind in ("sos", "trap", "water_level", "rain", "weather"):
        node = nodes[kind]
        rows = influx.rows(f'SELECT * FROM "{kind}" GROUP BY *', DB)
        stored = by_node_fcnt(rows)
        mine = {(r["node"], r["fcnt"]): r for r in node_readings if r["kind"] == kind}
        assert set(stored) == set(mine), kind  # nothing missing, nothing extra
        assert all(len(v) == 1 for v in stored.values()), kind  # exactly once
        sent = {s["fcnt"]: s["values"] for s in node.sent}
        for key, r in mine.items():
            [row] = stored[key]
            assert row["time"] == r["ts_us"]  # the edge timestamp, to the microsecond
            assert row["site"] == "testville" and row["gateway"] == GW and row["kind"] == kind
            assert row["name"] == r["name"]
            for vkey, value in r["values"].items():
                assert row[vkey] == value, (kind, vkey)  # exactly what the gateway published
                assert row[vkey] == pytest.approx(sent[r["fcnt"]][vkey], abs=0.011)  # what the node sent
            assert row["rssi"] == r["rssi"] and row["snr"] == r["snr"]
            assert row["auth_ok"] == 1 and row["clock_ok"] == (1 if r["clock"] == "synced" else 0)

    health_rows = by_node_fcnt(influx.rows("SELECT * FROM node_health GROUP BY *", DB))
    assert len(health_rows) == expected and all(len(v) == 1 for v in health_rows.values())
    for r in node_readings:
        [row] = health_rows[(r["node"], r["fcnt"])]
        assert row["time"] == r["ts_us"] and row["rssi"] == r["rssi"] and row["snr"] == r["snr"]
        assert row["battery_v"] == r["values"]["battery_v"]


    [h] = health
    assert wait_until(lambda: influx.count("gateway_health", "uptime_s", DB) == 1, 10)
    [hrow] = influx.rows("SELECT * FROM gateway_health GROUP BY *", DB)
    assert hrow["time"] == h["ts_us"] and hrow["site"] == "testville"
    assert {k: hrow[k] for k in h["values"]} == h["values"]

    # The gateway's retained "online" status arrived live (the bridge subscribed first).
    status = influx.rows("SELECT * FROM gateway_status GROUP BY *", DB)
    assert [(s["gateway"], s["online"]) for s in status] == [(GW, 1)]
    # Everything the gateway published went through the bridge (acknowledged), and the only dead letters are the
    # readings the README's schema does not hold.
    bridge = field["bridge"]
    mine_topics = ("/readings/", "/status", "/state", "/results")
    assert wait_until(lambda: bridge.counters().get("messages_acked", 0)
                      == len([t for t, _, _ in col.messages if any(x in t for x in mine_topics)]), 10)
    outside = [r for r in readings_of(col.messages, alerts=True) if list(README_READING.iter_errors(r))]

    # The gateway's edge rules raise and clear alerts (SOS pressed and cancelled, trap fired and re-armed, low
    # battery); each alert reading is one point of the alert measurement. Repeats of an unconfirmed alert are the
    # same reading (same id and timestamp), so they overwrite.
    alert_readings = {r["id"]: r for r in readings_of(col.messages, alerts=True) if r["kind"] == "alert"
                      and not list(README_READING.iter_errors(r))}
    assert {a["alert"]["type"] for a in alert_readings.values()} >= {"sos", "trap_fired"}
    rows = influx.rows("SELECT * FROM alert GROUP BY *", DB)
    assert sorted((a["type"], a["node"], a["severity"], a["time"], a["raised"]) for a in rows) == sorted(
        (r["alert"]["type"], r["alert"]["node"] or GW, r["alert"]["severity"], r["ts_us"], r["values"]["raised"])
        for r in alert_readings.values())
    for row in rows:
        [r] = [r for r in alert_readings.values() if r["ts_us"] == row["time"]
               and r["alert"]["type"] == row["type"] and (r["alert"]["node"] or GW) == row["node"]]
        assert row["message"] == r["alert"]["message"] and row["site"] == "testville"
        assert {k: row[k] for k in r["values"]} == r["values"]
    counters = bridge.counters()
    assert counters.get("dead_letters", 0) == counters.get("dead_letters.invalid_reading", 0) == len(outside)


def test_influxdb_stopped_mid_stream_and_restarted_loses_nothing(tmp_path: Path, broker: Mosquitto,
                                                                 influx: InfluxDB1) -> None:
    bridge = start_bridge(broker, influx, tmp_path)
    pub = Publisher(broker)
    try:
        readings = telemetry_readings("gw-a", 3000, nodes=30)
        chunks = [readings[i:i + 50] for i in range(0, len(readings), 50)]
        pub.publish((topic("gw-a"), batch("gw-a", c)) for c in chunks[:20])
        assert wait_until(lambda: influx.count("water_level", "level_cm", DB) > 0, 10)
        influx.stop()
        pub.publish((topic("gw-a"), batch("gw-a", c)) for c in chunks[20:])
        assert wait_until(lambda: bridge.counters().get("write_failures.unavailable", 0) >= 3, 10)
        time.sleep(0.3)
        influx.start()
        assert wait_until(lambda: influx.count("water_level", "level_cm", DB) == 3000, 20), \
            (influx.count("water_level", "level_cm", DB), bridge.counters())
        per_series = influx.rows('SELECT count(level_cm) FROM water_level GROUP BY node', DB)
        assert len(per_series) == 30 and all(r["count"] == 100 for r in per_series)
        assert influx.count("node_health", "fcnt", DB) == 3000
        assert bridge.counters().get("dead_letters", 0) == 0
    finally:
        pub.close()
        bridge.stop()


def test_field_type_conflict_dead_letters_the_bad_lines_stores_the_rest_and_keeps_going(
        tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> None:
    # Someone wrote rain.tips as an integer before: every float tips line now conflicts (for this shard).
    assert influx.write([f"rain,node=99999999 tips=7i {T0_US}"], DB)[0] == 204
    bridge = start_bridge(broker, influx, tmp_path)
    pub = Publisher(broker)
    try:
        mixed = []
        for i in range(40):
            mixed.append(reading("gw-a", 0x301 + i % 4, 1 + i, "water_level", {"level_cm": 50.0 + i,
                                                                              "battery_v": 3.6}))
            mixed.append(reading("gw-a", 0x401 + i % 2, 1 + i, "rain", {"rain_mm": 0.5, "tips": float(i),
                                                                       "battery_v": 3.5}))
        pub.publish((topic("gw-a"), batch("gw-a", mixed[i:i + 10])) for i in range(0, 80, 10))
        assert wait_until(lambda: bridge.counters().get("messages_acked", 0) == 8, 15), bridge.counters()
        assert influx.count("water_level", "level_cm", DB) == 40
        assert influx.count("node_health", "fcnt", DB) == 80  # the rain readings' health points are fine
        assert influx.count("rain", "tips", DB) == 1  # only the seed
        # ... and it keeps going.
        later = [reading("gw-a", 0x305, 100 + i, "water_level", {"level_cm": 1.0 + i}) for i in range(5)]
        pub.publish([(topic("gw-a"), batch("gw-a", later))])
        assert wait_until(lambda: influx.count("water_level", "level_cm", DB) == 45, 10)
    finally:
        pub.close()
        bridge.stop()
    dead = DeadLetterStore(tmp_path / "dead.db")
    items = dead.items()
    dead.close()
    assert len(items) == 40 and {d.reason for d in items} == {"rejected_by_server"}
    assert all(d.kind == "line" and d.content.startswith(b"rain,") for d in items)
    assert all("field type conflict" in d.detail and d.topic == topic("gw-a") for d in items)
    assert sorted(d.reading_id for d in items) == sorted(r["id"] for r in mixed if r["kind"] == "rain")


def test_payloads_that_are_not_ours_are_dead_lettered_acked_and_never_come_back(
        tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> None:
    bridge = start_bridge(broker, influx, tmp_path)
    pub = Publisher(broker)
    good = reading("gw-a", 0x301, 1, "water_level", {"level_cm": 12.5})
    early = reading("gw-a", 0x302, 1, "water_level", {"level_cm": 13.5}, ts_us=86_400_000_000)  # 1970-01-02
    messages = [
        (topic("gw-a"), b"\x00\x01 not json"),
        (topic("gw-a"), json.dumps({"schema": "denen.readings/9", "gateway": "gw-a"}).encode()),
        (topic("gw-a"), batch("gw-b", [reading("gw-b", 0x301, 1, "water_level", {"level_cm": 1.0})])),
        (topic("gw-a"), json.dumps(json.loads(batch("gw-a", [good])) | {"readings": [good, early]}).encode()),
        ("denen/v1/gw-a/status", b'{"schema":"denen.status/1","gateway":"gw-a","state":"sleeping"}'),
    ]
    try:
        pub.publish(messages)
        assert wait_until(lambda: bridge.counters().get("messages_acked", 0) == len(messages), 10), \
            bridge.counters()
        assert influx.count("water_level", "level_cm", DB) == 1
        c = bridge.counters()
        assert c["dead_letters.invalid_json"] == 1 and c["dead_letters.unknown_schema"] == 1
        assert c["dead_letters.wrong_gateway"] == 1 and c["dead_letters.timestamp_before_2020"] == 1
        assert c["dead_letters.invalid_schema"] == 1
    finally:
        bridge.stop()
    dead = DeadLetterStore(tmp_path / "dead.db")
    items = dead.items()
    dead.close()
    assert [d.reason for d in items] == ["invalid_json", "unknown_schema", "wrong_gateway",
                                         "timestamp_before_2020", "invalid_schema"]
    assert items[0].content == b"\x00\x01 not json" and items[0].kind == "payload"
    assert items[3].kind == "reading" and json.loads(items[3].content)["ts_us"] == 86_400_000_000
    # Acknowledged: the same client id reconnecting to its persistent session gets nothing again.
    again = start_bridge(broker, influx, tmp_path)
    try:
        pub.publish([(topic("gw-a"), batch("gw-a", [reading("gw-a", 0x303, 1, "water_level",
                                                            {"level_cm": 1.0})]))])
        assert wait_until(lambda: again.counters().get("messages_acked", 0) >= 1, 10)
        assert again.counters()["messages"] == 1 and again.counters().get("messages_redelivered", 0) == 0
    finally:
        pub.close()
        again.stop()


def test_a_redelivered_reading_overwrites_itself(tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> None:
    bridge = start_bridge(broker, influx, tmp_path)
    pub = Publisher(broker)
    try:
        readings = telemetry_readings("gw-a", 30, nodes=3)
        payload = batch("gw-a", readings)
        retry = json.loads(payload)
        retry["sent_us"] += 60_000_000  # the gateway's retry after a reconnect: same readings, later send time
        pub.publish([(topic("gw-a"), payload)])
        assert wait_until(lambda: influx.count("water_level", "level_cm", DB) == 30, 10)
        before = influx.rows("SELECT * FROM water_level GROUP BY *", DB)
        pub.publish([(topic("gw-a"), payload), (topic("gw-a"), json.dumps(retry).encode())])
        assert wait_until(lambda: bridge.counters().get("messages_acked", 0) == 3, 10)
        assert influx.rows("SELECT * FROM water_level GROUP BY *", DB) == before
        assert influx.count("node_health", "fcnt", DB) == 30
        assert bridge.counters()["readings_written"] == 90  # written three times, stored once
    finally:
        pub.close()
        bridge.stop()


def test_a_missing_database_is_retried_with_a_clear_log_line_until_it_exists(
        tmp_path: Path, broker: Mosquitto, influx: InfluxDB1, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.bridge")
    bridge = start_bridge(broker, influx, tmp_path, database="town")
    pub = Publisher(broker)
    try:
        pub.publish([(topic("gw-a"), batch("gw-a", telemetry_readings("gw-a", 20)))])
        assert wait_until(lambda: bridge.counters().get("write_failures.refused", 0) >= 3, 10)
        assert bridge.counters().get("messages_acked", 0) == 0
        [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert "404" in line and "database not found" in line and "CREATE DATABASE" in line
        influx.create_database("town")
        assert wait_until(lambda: influx.count("water_level", "level_cm", "town") == 20, 10)
        assert wait_until(lambda: bridge.counters().get("messages_acked", 0) == 1, 5)
        assert any("work again" in r.getMessage() for r in caplog.records)
    finally:
        pub.close()
        bridge.stop()


def test_a_write_goes_out_at_max_lines_even_with_a_long_max_wait(tmp_path: Path, broker: Mosquitto,
                                                                 influx: InfluxDB1) -> None:
    bridge = start_bridge(broker, influx, tmp_path, max_lines=100, max_wait_ms=60_000)
    pub = Publisher(broker)
    try:
        readings = telemetry_readings("gw-a", 100, nodes=5)  # 2 lines each: 200 lines, 10 messages
        pub.publish((topic("gw-a"), batch("gw-a", readings[i:i + 10])) for i in range(0, 100, 10))
        assert wait_until(lambda: influx.count("water_level", "level_cm", DB) == 100, 5)
        assert bridge.counters()["batches"] == 2 and bridge.counters()["messages_acked"] == 10
    finally:
        pub.close()
        bridge.stop()


def test_a_steady_stream_is_written_every_max_wait_ms_not_when_the_batch_is_full(
        tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> None:
    bridge = start_bridge(broker, influx, tmp_path, max_wait_ms=100)
    pub = Publisher(broker)
    try:
        readings = telemetry_readings("gw-a", 60, nodes=3)
        started = time.monotonic()
        for i, r in enumerate(readings):
            pub.publish([(topic("gw-a"), batch("gw-a", [r]))])
            time.sleep(0.02)
            if i == 30:
                # Half-way through the stream the first readings are already stored: latency ~ max_wait_ms.
                assert influx.count("water_level", "level_cm", DB) >= 20, time.monotonic() - started
        assert wait_until(lambda: influx.count("water_level", "level_cm", DB) == 60, 5)
        assert bridge.counters()["batches"] >= 8
    finally:
        pub.close()
        bridge.stop()


def test_the_broker_stops_sending_at_the_receive_maximum_while_the_database_is_down(
        tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> None:
    bridge = start_bridge(broker, influx, tmp_path, max_messages=5)  # Receive Maximum 10
    pub = Publisher(broker)
    try:
        influx.stop()
        readings = telemetry_readings("gw-a", 50, nodes=5)
        pub.publish((topic("gw-a"), batch("gw-a", [r])) for r in readings)
        assert wait_until(lambda: bridge.counters().get("write_failures.unavailable", 0) >= 3, 10)
        time.sleep(0.3)
        assert bridge.counters()["messages"] == 10  # the rest waits at the broker, not in the bridge's memory
        influx.start()
        assert wait_until(lambda: influx.count("water_level", "level_cm", DB) == 50, 15)
        assert bridge.counters()["messages"] == 50 and bridge.counters()["messages_acked"] == 50
    finally:
        pub.close()
        bridge.stop()
