"""The alert loop through the bridge on real parts: gateway state and command results, published on a real
Mosquitto, taken by the bridge's shared subscriptions and written to a real InfluxDB 1.6.7.

A gateway's retained state (siren, lamp, held readings, alerts) and the results of the commands it was sent become
``gateway_state`` and ``command_result`` points, read back exactly; the fleet dashboard's panels read them as
Grafana would. Hostile documents (a lone surrogate, a forged gateway, a stamp in the future, an unknown outcome,
text made to break a line) are dead-lettered with their reason or written as plain text, and a gateway's SOS sent
after them still arrives.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from agent.bridge import Bridge, DeadLetterStore
from agent.dev.devbroker import Mosquitto
from tests.backend.grafana_expand import TimeRange, expand_influxql, iter_panels
from tests.bridge._helpers import Publisher, batch, bridge_config, reading, topic, v1_sink
from tests.support.influx import InfluxDB1
from tests.support.polling import wait_until

pytestmark = pytest.mark.broker

DB = "denen"
FLEET = Path(__file__).resolve().parents[2] / "deploy" / "backend" / "grafana" / "dashboards" / "fleet-health.json"
#: Text made to end a line, add a tag or a field, or break the quoting of a string field.
HOSTILE = 'Ｏ\'Brien, "chief"\\ \n,site=victim x=1 \x00\x1b[2J 山田'


def _state(gateway: str, ts_us: int, *, siren: str | None, held: int = 0, unacknowledged: int = 1,
           **changes: Any) -> tuple[str, bytes]:
    doc = {"schema": "denen.state/1", "gateway": gateway, "ts_us": ts_us,
           "siren": {"configured": True, "on": siren is not None, "why": "alert" if siren else None, "alert": siren,
                     "silenced": []},
           "lamp": {"configured": True, "state": "alarm" if siren else "ok"}, "relays": [],
           "held": {"active": held > 0, "reason": "clock_unsynced" if held else None, "count": held,
                    "until_us": None},
           "alerts": [{"key": f"sos:0000010{i}", "id": f"{gateway}:sos:0000010{i}#1", "type": "sos",
                       "node": f"0000010{i}", "name": "sos-1", "severity": "emergency", "since_us": ts_us - 1000,
                       "message": "SOS", "value": None, "lat_deg": None, "lon_deg": None,
                       "repeating": i < unacknowledged, "acknowledged_by": None if i < unacknowledged else "山田"}
                      for i in range(2)]} | changes
    return f"denen/v1/{gateway}/state", json.dumps(doc, ensure_ascii=False).encode()


def _result(gateway: str, ts_us: int, results: list[dict[str, Any]], **changes: Any) -> tuple[str, bytes]:
    doc = {"schema": "denen.result/1", "gateway": gateway, "ts_us": ts_us, "command": "alert-ack",
           "request_id": "req-01", "by": "山田 太郎", "via": "console", "results": results} | changes
    return f"denen/v1/{gateway}/results", json.dumps(doc, ensure_ascii=False).encode()


def _panel_rows(influx: InfluxDB1, title_start: str, now_ms: int) -> list[dict[str, Any]]:
    dash = json.loads(FLEET.read_text(encoding="utf-8"))
    panel = next(p for p in iter_panels(dash) if p["title"].startswith(title_start))
    query = expand_influxql(panel["targets"][0]["query"], time_range=TimeRange.relative("now-24h", "now", now_ms),
                            interval_ms=60_000, variables={"site": ["testville"], "gateway": ["gw-a", "gw-b"]})
    return [dict(zip(s["columns"], v, strict=True)) | s["tags"] for s in influx.query(query, DB) for v in s["values"]]


def test_state_and_results_reach_influxdb_and_no_hostile_document_stops_anything(
        tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> None:
    bridge = Bridge(bridge_config(broker=broker, sink=v1_sink(influx.url, DB), dead_letter=tmp_path / "dead.db"))
    bridge.start()
    pub = Publisher(broker)
    now = time.time_ns() // 1000 - 60_000_000
    good = [
        _state("gw-a", now, siren=None, unacknowledged=0),
        _state("gw-a", now + 1000, siren="sos:00000101", unacknowledged=2),
        _state("gw-b", now, siren=None, held=37),
        _result("gw-a", now + 2000, [{"target": "sos:00000101", "outcome": "stopped"},
                                     {"target": "sos:00000999", "outcome": "not_active"}]),
        _result("gw-b", now + 3000, [{"target": None, "outcome": "chirped"}], command="test-chirp", request_id=None,
                by=None, via=None),
        _result("gw-a", now + 4000, [{"target": HOSTILE, "outcome": "not_active"}], by=HOSTILE),
    ]
    surrogate = json.loads(_state("gw-a", now, siren="sos:00000101")[1])
    surrogate["siren"]["alert"] = "sos:\ud800"
    hostile = [
        ("denen/v1/gw-a/state", json.dumps(surrogate).encode()),  # a \ud800 escape: UTF-8, yet no text
        ("denen/v1/gw-a/state", _state("gw-b", now + 5000, siren="sos:00000102")[1]),  # gateway A writes B's state
        _state("gw-a", now + 10**12, siren="sos:00000101"),
        _result("gw-a", now + 6000, [{"target": "x", "outcome": "exploded"}]),
        _result("gw-a", now + 7000, [{"target": "x", "outcome": "stopped"}], command="alert-ack,site=victim"),
        ("denen/v1/gw-a/results", b"\xff not json"),
    ]
    reasons = ["invalid_text", "wrong_gateway", "timestamp_in_future", "invalid_schema", "invalid_schema",
               "invalid_json"]
    sos = (topic("gw-b", "sos"), batch("gw-b", [reading("gw-b", 0x101, 1, "sos", {"pressed": 1.0},
                                                         ts_us=now + 8000)]))
    try:
        assert bridge.wait_subscribed(10), "the bridge did not subscribe"
        pub.publish(good[:3], retain=True)
        pub.publish(good[3:] + hostile + [sos])
        total = len(good) + len(hostile) + 1
        assert wait_until(lambda: bridge.counters().get("messages_acked", 0) == total, 15), bridge.counters()
        assert influx.count("sos", "pressed", DB) == 1  # the SOS after every hostile document

        states = influx.rows('SELECT * FROM "gateway_state" GROUP BY *', DB)
        assert [(r["gateway"], r["time"]) for r in states] == [("gw-a", now), ("gw-a", now + 1000), ("gw-b", now)]
        assert {k: v for k, v in states[1].items() if k not in ("time", "_name")} == {
            "gateway": "gw-a", "site": "testville", "siren_on": 1.0, "siren_why": "alert",
            "siren_alert": "sos:00000101", "lamp": "alarm", "held_active": 0.0, "held_count": 0.0,
            "alerts_open": 2.0, "alerts_unacknowledged": 2.0}
        assert (states[2]["held_active"], states[2]["held_count"], states[2]["siren_why"]) == (1.0, 37.0, "")

        results = influx.rows('SELECT * FROM "command_result" GROUP BY *', DB)
        got = [(r["time"] - now, r["gateway"], r["command"], r["outcome"], r["target"], r["by"], r["via"],
                r["request_id"]) for r in sorted(results, key=lambda r: r["time"])]
        plain = HOSTILE.replace("\n", " ").replace("\x00", " ").replace("\x1b", " ")  # control characters: spaces
        assert got == [
            (2000, "gw-a", "alert-ack", "stopped", "sos:00000101", "山田 太郎", "console", "req-01"),
            (2001, "gw-a", "alert-ack", "not_active", "sos:00000999", "山田 太郎", "console", "req-01"),
            (3000, "gw-b", "test-chirp", "chirped", "", "", "", ""),
            (4000, "gw-a", "alert-ack", "not_active", plain, plain, "console", "req-01"),
        ]
        assert {r["site"] for r in states + results} == {"testville"}  # the registry's, never the payload's

        dead = DeadLetterStore(tmp_path / "dead.db")
        items = dead.items()
        dead.close()
        assert [d.reason for d in items] == reasons
        assert [d.content for d in items] == [p for _, p in hostile] and {d.kind for d in items} == {"payload"}
        assert all(d.reading_id is None for d in items)
        c = bridge.counters()
        assert c["dead_letters"] == len(hostile) and c["readings_written"] == 1
        assert c["lines_written"] == len(states) + len(results) + 2  # and the SOS's two points

        # The fleet dashboard reads what the bridge wrote: gateway A's siren sounds for its SOS.
        now_ms = time.time_ns() // 1_000_000
        outputs = {r["gateway"]: r for r in _panel_rows(influx, "現地の出力", now_ms)}
        assert (outputs["gw-a"]["siren_on"], outputs["gw-a"]["siren_alert"]) == (1.0, "sos:00000101")
        assert (outputs["gw-b"]["siren_on"], outputs["gw-b"]["held_count"]) == (0.0, 37.0)
        assert (outputs["gw-a"]["alerts_unacknowledged"], outputs["gw-b"]["alerts_unacknowledged"]) == (2.0, 1.0)
        [sounding] = _panel_rows(influx, "サイレン鳴動中", now_ms)
        [unacknowledged] = _panel_rows(influx, "未確認の警報", now_ms)
        assert (sounding["sum"], unacknowledged["sum"]) == (1.0, 3.0)
        commands = _panel_rows(influx, "コマンドの結果", now_ms)
        assert sorted(r["outcome"] for r in commands) == ["chirped", "not_active", "not_active", "stopped"]
    finally:
        pub.close()
        bridge.stop()
