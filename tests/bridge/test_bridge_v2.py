"""The v2 sink (influxdb-client, InfluxDB v2 write API) against a real VictoriaMetrics.

VictoriaMetrics stores each field as its own series ``<measurement>_<field>`` with the tags as labels, and keeps
millisecond timestamps; it shows new samples after a flush (the helper polls). It validates nothing, so these tests
are about the v2 path itself: every reading arrives once with its value and edge timestamp, and a database that
goes away (a refused connection: a urllib3 error, not an ApiException) costs nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from agent.bridge import Bridge
from agent.dev.devbroker import Mosquitto
from tests.bridge._helpers import Publisher, batch, bridge_config, reading, topic, v2_sink
from tests.support.influx import VictoriaMetrics
from tests.support.polling import wait_until

pytestmark = pytest.mark.broker


def start_bridge(broker: Mosquitto, vm: VictoriaMetrics, tmp: Path) -> Bridge:
    bridge = Bridge(bridge_config(broker=broker, sink=v2_sink(vm.url), dead_letter=tmp / "dead.db"))
    bridge.start()
    assert bridge.wait_subscribed(10)
    return bridge


def samples(series: list[dict[str, Any]], label: str = "node") -> dict[tuple[str, int], list[float]]:
    """(label value, timestamp ms) -> values, over every series."""
    out: dict[tuple[str, int], list[float]] = {}
    for s in series:
        for value, ts in zip(s["values"], s["timestamps"], strict=True):
            out.setdefault((s["metric"][label], ts), []).append(value)
    return out


def test_v2_sink_writes_every_reading_once_with_values_and_timestamps(tmp_path: Path, broker: Mosquitto,
                                                                      victoria: VictoriaMetrics) -> None:
    bridge = start_bridge(broker, victoria, tmp_path)
    pub = Publisher(broker)
    try:
        readings = [reading("gw-v2", 0x301 + i % 5, 1 + i // 5, "water_level",
                            {"level_cm": 100.0 + i * 0.25, "battery_v": 3.5 + (i % 3) * 0.1}) for i in range(100)]
        readings += [reading("gw-v2", 0x101, 1, "sos", {"pressed": 1.0, "lat_deg": 35.8123, "lon_deg": 139.0987})]
        pub.publish([(topic("gw-v2"), batch("gw-v2", readings[i:i + 20])) for i in range(0, 100, 20)]
                    + [(topic("gw-v2", "sos"), batch("gw-v2", readings[100:]))])
        assert wait_until(lambda: bridge.counters().get("messages_acked", 0) == 6, 15), bridge.counters()
        series = victoria.wait_export('{__name__="water_level_level_cm"}',
                                      lambda s: sum(len(x["values"]) for x in s) >= 100)
        got = samples(series)
        want = {(r["node"], r["ts_us"] // 1000): [r["values"]["level_cm"]] for r in readings[:100]}
        assert got == want  # every reading once, its value, its edge time (VictoriaMetrics keeps ms)
        labels = series[0]["metric"]
        assert {k for k in labels if k != "__name__"} == {"site", "gateway", "node", "name", "kind"}
        assert labels["gateway"] == "gw-v2" and labels["kind"] == "water_level"
        health = samples(victoria.wait_export('{__name__="node_health_battery_v"}',
                                              lambda s: sum(len(x["values"]) for x in s) >= 100))
        assert health == {(r["node"], r["ts_us"] // 1000): [r["values"].get("battery_v")] for r in readings[:100]}
        sos = victoria.wait_export('{__name__="sos_lat_deg"}', lambda s: bool(s))
        assert sos[0]["values"] == [35.8123] and sos[0]["timestamps"] == [readings[100]["ts_us"] // 1000]
    finally:
        pub.close()
        bridge.stop()


def test_v2_sink_database_stopped_mid_stream_loses_nothing(tmp_path: Path, broker: Mosquitto,
                                                           victoria: VictoriaMetrics) -> None:
    bridge = start_bridge(broker, victoria, tmp_path)
    pub = Publisher(broker)
    try:
        readings = [reading("gw-v2", 0x301 + i % 4, 1 + i // 4, "water_level", {"level_cm": float(i)})
                    for i in range(400)]
        chunks = [readings[i:i + 20] for i in range(0, 400, 20)]
        pub.publish((topic("gw-v2"), batch("gw-v2", c)) for c in chunks[:10])
        assert wait_until(lambda: bridge.counters().get("messages_acked", 0) == 10, 10)
        victoria.stop()
        pub.publish((topic("gw-v2"), batch("gw-v2", c)) for c in chunks[10:])
        # The refused connection surfaces from influxdb-client as a urllib3 error; the policy retries it.
        assert wait_until(lambda: bridge.counters().get("write_failures.unavailable", 0) >= 3, 10)
        assert bridge.counters()["messages_acked"] == 10  # nothing acknowledged while the database is away
        time.sleep(0.2)
        victoria.start()
        assert wait_until(lambda: bridge.counters().get("messages_acked", 0) == 20, 15), bridge.counters()
        series = victoria.wait_export('{__name__="water_level_level_cm"}',
                                      lambda s: sum(len(x["values"]) for x in s) >= 400)
        got = samples(series)
        assert got == {(r["node"], r["ts_us"] // 1000): [r["values"]["level_cm"]] for r in readings}
    finally:
        pub.close()
        bridge.stop()
