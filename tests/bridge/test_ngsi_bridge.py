"""``denen bridge`` with an NGSI-LD sink, end to end: gateways' batches through a real Mosquitto, the real bridge,
and tests/support/ngsi_server.py (a broker that checks every request against the NGSI-LD API's rules). Through a
broker outage (503, answers that time out), a partial failure (a 207 refusing some entities) and a bridge killed
with SIGKILL mid-stream: every reading reaches the broker's history, none with two values, one entity per node,
and the refused ones are in the dead-letter store with the broker's reason."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from agent.bridge import Bridge, parse_bridge_config
from agent.bridge.deadletter import DeadLetterStore
from agent.bridge.ngsi_entities import iso_time
from agent.dev.devbroker import Mosquitto
from tests.bridge._helpers import (
    Publisher,
    batch,
    bridge_config_text,
    reading,
    telemetry_readings,
    topic,
)
from tests.bridge.test_bridge_process import BridgeProcess, PacedPublisher
from tests.support.ngsi_server import NgsiServer
from tests.support.polling import wait_until

pytestmark = pytest.mark.broker


def ngsi_sink(url: str) -> str:
    return f"""  type: ngsi-ld
  url: {url}
  token_env: DENEN_TEST_NGSI_TOKEN
  timeout_s: 0.5
  retry_min_s: 0.05
  retry_max_s: 0.3
  ngsi:
    tenants: {{testville: testville}}
    batch_size: 50"""


def config_text(broker: Mosquitto, server: NgsiServer, tmp: Path, client_id: str = "bridge-ngsi-1") -> str:
    return bridge_config_text(broker=broker, sink=ngsi_sink(server.url), dead_letter=tmp / "dead.db",
                              client_id=client_id, max_wait_ms=100)


def level_of(observations: dict[tuple[str, str], Any], node: str) -> dict[str, Any]:
    prefix = f"urn:ngsi-ld:FloodMonitoring:testville:{node}"
    return {at: v for (i, at), v in observations.items() if i == prefix}


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DENEN_TEST_NGSI_TOKEN", "test-token")


def test_outage_then_recovery_and_a_partial_failure(tmp_path: Path, broker: Mosquitto) -> None:
    with NgsiServer(max_batch=50) as server:
        server.fail(6, 503)
        server.stall(1, 1.0)
        server.refuse_entities(lambda e: e["id"] == "urn:ngsi-ld:FloodMonitoring:testville:00000305",
                               detail="currentLevel is above the station's range")
        bridge = Bridge(parse_bridge_config(config_text(broker, server, tmp_path)))
        bridge.start()
        pub = Publisher(broker)
        try:
            assert bridge.wait_subscribed(10)
            readings = telemetry_readings("gw-a", 200, nodes=10)
            sos = reading("gw-a", 0x101, 1, "sos", {"pressed": 1.0, "lat_deg": 35.81, "lon_deg": 139.1})
            pub.publish([(topic("gw-a"), batch("gw-a", readings[i:i + 20])) for i in range(0, 200, 20)]
                        + [(topic("gw-a", "sos"), batch("gw-a", [sos]))])
            assert wait_until(lambda: bridge.counters().get("messages_acked", 0) == 11, 30), bridge.counters()
        finally:
            pub.close()
            bridge.stop()
        assert server.violations == []
        assert server.answers[503] == 6 and server.answers[207] > 0
        seen = server.observations("currentLevel", "testville")
        want = {(f"urn:ngsi-ld:FloodMonitoring:testville:{r['node']}", iso_time(r["ts_us"])): r["values"]["level_cm"]
                for r in readings if r["node"] != "00000305"}
        assert len(want) == 180 and seen == want  # every reading once, its value at its edge time
        assert len(server.ids("testville", "FloodMonitoring")) == 9
        assert len(server.ids("testville", "Device")) == 11  # 10 level gauges and the SOS button
        device = server.entity("urn:ngsi-ld:Device:testville:00000101", "testville")
        assert device is not None and device["location"]["value"]["coordinates"] == [139.1, 35.81]
        store = DeadLetterStore(tmp_path / "dead.db")
        try:
            dead = store.items("rejected_by_server")
        finally:
            store.close()
        assert sorted(d.reading_id or "" for d in dead) == sorted(r["id"] for r in readings
                                                                  if r["node"] == "00000305")
        assert all("currentLevel is above the station's range" in d.detail for d in dead)


def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(tmp_path: Path, broker: Mosquitto) -> None:
    readings = telemetry_readings("gw-k", 4000, nodes=40)
    items = [(topic("gw-k"), batch("gw-k", readings[i:i + 20])) for i in range(0, len(readings), 20)]
    with NgsiServer(max_batch=50) as server:
        config = tmp_path / "bridge.yaml"
        config.write_text(config_text(broker, server, tmp_path, "bridge-ngsi-k"))
        bridge = BridgeProcess(config, tmp_path / "bridge.log")
        bridge.start()
        feeder = PacedPublisher(broker, items, 0.05)  # 10 s of stream
        try:
            for round_ in range(2):
                floor = len(server.observations("currentLevel", "testville"))
                assert wait_until(lambda f=floor: len(server.observations("currentLevel", "testville")) >= f + 400,
                                  30), round_
                assert feeder.sent < len(items), "the stream ended before the kill; the test proved nothing"
                # Killed while the broker holds a batch the bridge wrote but has not acknowledged: the server
                # stores it and answers late, so the restarted bridge is sent it again (redelivered).
                assert server.stall(1, 5.0).wait(10), round_
                bridge.kill9()
                time.sleep(0.2)
                bridge.start()
            feeder.close()
            assert wait_until(lambda: len(server.observations("currentLevel", "testville")) >= len(readings), 60)
            assert bridge.terminate() == 0
        finally:
            feeder.close()
            bridge.stop()
        assert server.violations == []  # among them: an observation stored twice with two values
        seen = server.observations("currentLevel", "testville")
        assert len(seen) == len(readings)
        for node in {r["node"] for r in readings}:
            mine = [r for r in readings if r["node"] == node]
            assert len(level_of(seen, node)) == len(mine) == 100
            entity = server.entity(f"urn:ngsi-ld:FloodMonitoring:testville:{node}", "testville")
            assert entity is not None and entity["currentLevel"]["value"] == mine[-1]["values"]["level_cm"]
        assert len(server.ids("testville")) == 80  # a Device and a FloodMonitoring per node, nothing else
        assert bridge.redelivered_in_batches() > 0
