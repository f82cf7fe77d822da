"""The bridge reports on itself: ``bridge_health`` points, the fleet dashboard's bridge row, systemd READY/STATUS.

Unit tests check the report's arithmetic (per-interval counts, lag percentiles, the bound on gateway points, the
status line). The integration tests run a real bridge between a real Mosquitto and a real InfluxDB 1.6.7 under a
test-owned ``$NOTIFY_SOCKET``: the points add up to what was published, each new panel of the fleet dashboard
returns data from them (expanded the way Grafana expands it), and with the database stopped health points are
dropped and counted, not queued. Also: a v2 sink without influxdb-client says which extra to install.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import systemd
from agent.bridge import Bridge, BridgeError, parse_bridge_config
from agent.bridge.health import LAG_LINES_PER_WRITE, LAG_SAMPLE_MAX, HealthMonitor
from agent.bridge.sinks import make_sink
from agent.dev.devbroker import Mosquitto
from tests.backend.grafana_expand import TimeRange, expand_influxql, iter_panels, panel_interval_ms
from tests.bridge._helpers import Publisher, batch, bridge_config_text, reading, topic, v1_sink, v2_sink
from tests.support.influx import InfluxDB1
from tests.support.polling import wait_until

DB = "denen"
ROOT = Path(__file__).resolve().parents[2]
FLEET = ROOT / "deploy" / "backend" / "grafana" / "dashboards" / "fleet-health.json"


# ---- the report's arithmetic -------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.us = 1_800_000_000_000_000
        self.mono = 1000.0

    def advance(self, s: float) -> None:
        self.us += int(s * 1_000_000)
        self.mono += s


def _fields(line: str) -> tuple[str, dict[str, float], int]:
    """(measurement and tags, fields, timestamp) of one of our own lines (no spaces inside values)."""
    head, fields, ts = line.split(" ")
    return head, {k: float(v) for k, v in (f.split("=") for f in fields.split(","))}, int(ts)


def test_report_counts_the_interval_and_measures_lag() -> None:
    clock = Clock()
    mon = HealthMonitor("bridge,a=1", clock_us=lambda: clock.us, monotonic=lambda: clock.mono)
    mon.broker_connected = True
    counters = {"readings_written": 10, "lines_written": 20, "messages": 3, "dead_letters": 1,
                "dead_letters.invalid_json": 1}
    mon.report(counters, db_write_ok=True)  # the first interval: what happened before is not counted again
    clock.advance(30)
    # 100 readings with lags 1..100 ms, and a document's point and a refused line, which are not readings written.
    lines = [f"water_level level_cm=1 {clock.us - lag * 1000}" for lag in range(1, 101)]
    lines += [f"gateway_status online=1 {clock.us - 5_000_000}", f"water_level level_cm=1 {clock.us - 9_000_000}"]
    sources = [f"gw-1/00000301/{i}" for i in range(100)] + ["status:gw-1", "gw-1/00000301/999"]
    mon.note_written(lines, sources, {101})
    mon.note_message("gw-1", 60)
    mon.note_message("gw-2", 40)
    mon.note_message("gw-1", 0)
    mon.note_message(None, 5)
    counters = {"readings_written": 110, "lines_written": 220, "messages": 6, "dead_letters": 4,
                "dead_letters.invalid_json": 1, "dead_letters.rejected_by_server": 3}
    report = mon.report(counters, db_write_ok=False)
    by_head = {}
    for line in report.lines:
        head, fields, ts = _fields(line)
        by_head[head] = (fields, ts)
    main, ts = by_head["bridge_health,client_id=bridge\\,a\\=1"]
    assert ts == clock.us
    assert main["readings"] == 100 and main["lines"] == 200 and main["messages"] == 3 and main["dead_letters"] == 3
    assert main["readings_per_min"] == pytest.approx(200.0)
    assert main["interval_s"] == pytest.approx(30.0)
    assert main["broker_connected"] == 1 and main["db_write_ok"] == 0
    assert main["lag_p50_ms"] == pytest.approx(50.0) and main["lag_p99_ms"] == pytest.approx(99.0)
    assert main["lag_max_ms"] == pytest.approx(100.0)  # not the refused line's 9 s, not the document's 5 s
    # Only the reason that occurred in this interval, with its count in the interval.
    assert by_head["bridge_health,client_id=bridge\\,a\\=1,reason=rejected_by_server"][0] == {
        "reason_dead_letters": 3.0}
    assert not any("invalid_json" in h for h in by_head)
    gw1, gw1_ts = by_head["bridge_health,client_id=bridge\\,a\\=1,gateway=gw-1"]
    assert gw1 == {"gateway_messages": 2.0, "gateway_readings": 60.0} and gw1_ts == clock.us
    assert by_head["bridge_health,client_id=bridge\\,a\\=1,gateway=gw-2"][0]["gateway_readings"] == 40
    assert len(report.lines) == 4
    # The next interval starts empty: no lag fields, no gateway points.
    clock.advance(30)
    quiet = mon.report(counters, db_write_ok=True).lines
    assert len(quiet) == 1 and "lag_" not in quiet[0] and " readings=0," in quiet[0]


def test_gateway_points_are_bounded_and_lag_is_a_bounded_sample() -> None:
    clock = Clock()
    mon = HealthMonitor("b", max_gateways=3, clock_us=lambda: clock.us, monotonic=lambda: clock.mono)
    for i in range(50):
        mon.note_message(f"gw-{i}", 1)
    for w in range(3 * LAG_SAMPLE_MAX // LAG_LINES_PER_WRITE):
        lines = [f"m f=1 {clock.us - (i % 1000) * 1000}" for i in range(LAG_LINES_PER_WRITE * w,
                                                                      LAG_LINES_PER_WRITE * (w + 1))]
        mon.note_written(lines, [f"gw-0/00000001/{i}" for i in range(len(lines))], set())
    assert len(mon._lags) == LAG_SAMPLE_MAX  # the reservoir holds no more, whatever the traffic
    # A larger write is sampled: its lines are not all parsed, its oldest sampled one still counts.
    big = [f"m f=1 {clock.us - 5_000_000}"] + [f"m f=1 {clock.us}" for _ in range(100 * LAG_LINES_PER_WRITE)]
    mon.note_written(big, [f"gw-0/00000002/{i}" for i in range(len(big))], set())
    clock.advance(10)
    report = mon.report({}, db_write_ok=True).lines
    gateway_lines = [line for line in report if ",gateway=" in line]
    assert len(gateway_lines) == 3
    main = _fields(report[0])[1]
    assert main["gateways_over_limit"] == 47
    assert main["lag_max_ms"] == pytest.approx(5000.0)
    assert 400 < main["lag_p50_ms"] < 600  # sampled, so near the true 499.5


def test_status_line_says_what_matters() -> None:
    clock = Clock()
    mon = HealthMonitor("b", clock_us=lambda: clock.us, monotonic=lambda: clock.mono)
    assert mon.status_line({}, db_ok=True) == "broker down, influx ok, 0 readings/min, dead letters 0"
    mon.broker_connected = True
    mon.note_written([f"m f=1 {clock.us - 400_000}"], ["gw/00000001/1"], set())
    clock.advance(30)
    mon.status_line({"readings_written": 0}, db_ok=True)
    clock.advance(30)
    line = mon.status_line({"readings_written": 1204, "dead_letters": 3}, db_ok=True)
    assert line == "broker ok, influx ok, 1,204 readings/min, lag p99 0.4 s, dead letters 3"
    mon.dropped = 2
    assert mon.status_line({"readings_written": 1204, "dead_letters": 3}, db_ok=False).startswith(
        "broker ok, influx failing, ")


# ---- the v2 sink without its extra -------------------------------------------------------------------------------


def test_v2_sink_without_influxdb_client_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "influxdb_client", None)  # what `import influxdb_client` meets uninstalled
    text = f"""
mqtt:
  client_id: bridge-no-extra
sink:
{v2_sink("http://127.0.0.1:9")}
dead_letter:
  path: {tmp_path / "dead.db"}
"""
    cfg = parse_bridge_config(text)
    with pytest.raises(BridgeError, match=r"pip install 'denen-agent\[bridge\]'"):
        make_sink(cfg.sink)
    with pytest.raises(BridgeError, match="influxdb-client"):
        Bridge(cfg)  # and the store it opened first is closed again (no ResourceWarning)
    path = tmp_path / "bridge.yaml"
    path.write_text(text)
    path.chmod(0o600)  # an inline token
    from agent.cli import main

    code = main(["bridge", "-c", str(path)])
    err = capsys.readouterr().err
    assert code != 0
    assert "pip install 'denen-agent[bridge]'" in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if "influxdb-client" in line]) == 1


# ---- a real bridge ---------------------------------------------------------------------------------------------


@pytest.fixture
def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket named in $NOTIFY_SOCKET, as systemd gives a Type=notify service."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def _datagrams(sock: socket.socket, until: float) -> list[str]:
    """Every notification that arrives until the monotonic time ``until``."""
    out = []
    sock.settimeout(0.05)
    while time.monotonic() < until:
        try:
            out.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
    return out


def health_bridge(broker: Mosquitto, influx_url: str, tmp: Path, *, interval_s: float = 1.0,
                  status_interval_s: float = 1.0, client_id: str = "bridge-health-1") -> Bridge:
    text = bridge_config_text(broker=broker, sink=v1_sink(influx_url), dead_letter=tmp / "dead.db",
                              client_id=client_id)
    text += f"health:\n  interval_s: {interval_s}\n  status_interval_s: {status_interval_s}\n"
    return Bridge(parse_bridge_config(text))


def _rows(influx: InfluxDB1, q: str) -> list[dict[str, Any]]:
    return influx.rows(q, DB)


def _sum(influx: InfluxDB1, field: str, where: str = "") -> float:
    rows = _rows(influx, f'SELECT sum("{field}") FROM "bridge_health"{where}')
    return rows[0]["sum"] if rows else 0.0


def _bridge_panels() -> list[dict[str, Any]]:
    dash = json.loads(FLEET.read_text(encoding="utf-8"))
    panels = [p for p in iter_panels(dash) if any("bridge_health" in t.get("query", "")
                                                  for t in p.get("targets", []))]
    return panels


def test_health_points_add_up_and_every_bridge_panel_shows_them(tmp_path: Path, broker: Mosquitto,
                                                                influx: InfluxDB1, notify: socket.socket) -> None:
    systemd._reset_for_tests()
    now_us = time.time_ns() // 1000
    bridge = health_bridge(broker, influx.url, tmp_path)
    bridge.start()
    pub = Publisher(broker)
    try:
        assert bridge.wait_subscribed(10)
        items = []
        for gw, n in (("gw-test-01", 30), ("gw-test-02", 12)):
            rs = [reading(gw, 0x301, i, "water_level", {"level_cm": 100.0 + i}, ts_us=now_us - 2_000_000 + i)
                  for i in range(1, n + 1)]
            items += [(topic(gw), batch(gw, rs[i:i + 6])) for i in range(0, n, 6)]
        items.append((topic("gw-test-01"), b"{not json"))
        pub.publish(items)
        assert wait_until(lambda: _sum(influx, "readings") >= 42, 20), _rows(influx, 'SELECT * FROM "bridge_health"')
        assert wait_until(lambda: _sum(influx, "reason_dead_letters") >= 1, 10)
        time.sleep(1.5)  # one more interval: nothing is counted twice
        assert _sum(influx, "readings") == 42
        assert _sum(influx, "messages") == 8
        assert _sum(influx, "dead_letters") == 1
        reasons = _rows(influx, 'SELECT sum("reason_dead_letters") FROM "bridge_health" GROUP BY "reason"')
        assert {r["reason"]: r["sum"] for r in reasons} == {"invalid_json": 1}
        gateways = _rows(influx, 'SELECT sum("gateway_readings") AS "r", sum("gateway_messages") AS "m" '
                                 'FROM "bridge_health" GROUP BY "gateway"')
        assert {g["gateway"]: (g["r"], g["m"]) for g in gateways} == {"gw-test-01": (30, 6), "gw-test-02": (12, 2)}
        lag = _rows(influx, 'SELECT max("lag_max_ms") AS "max", min("lag_p50_ms") AS "p50" FROM "bridge_health"')[0]
        # Stamped 2 s before the publish: every lag is at least that, and no more than the test took.
        assert 2000 <= lag["p50"] <= lag["max"] < 2000 + 30_000
        states = _rows(influx, 'SELECT last("broker_connected") AS "b", last("db_write_ok") AS "d", '
                               'max("health_dropped") AS "x" FROM "bridge_health" WHERE "client_id" = '
                               "'bridge-health-1'")
        assert [(s["b"], s["d"], s["x"]) for s in states] == [(1, 1, 0)]

        # Every panel of the bridge row returns data from what this bridge wrote, as Grafana would ask.
        dash = json.loads(FLEET.read_text(encoding="utf-8"))
        now_ms = time.time_ns() // 1_000_000
        tr = TimeRange.relative(dash["time"]["from"], dash["time"]["to"], now_ms)
        variables = {"site": ["testville"], "gateway": ["gw-test-01", "gw-test-02"]}
        panels = _bridge_panels()
        assert {p["id"] for p in panels} == {29, 30, 31, 32, 33, 34}
        for panel in panels:
            for target in panel["targets"]:
                q = expand_influxql(target["query"], time_range=tr, interval_ms=panel_interval_ms(panel, tr, None),
                                    variables=variables)
                series = influx.query(q, DB)
                values = [v for s in series for row in s["values"] for c, v in zip(s["columns"], row, strict=True)
                          if c != "time" and v is not None]
                assert values, f"panel {panel['id']} '{panel['title']}' returned nothing:\n{q}"
        # systemd heard READY=1 once subscribed and a status line that says what matters.
        got = _datagrams(notify, time.monotonic() + 1.5)
        assert "READY=1" in got
        statuses = [d.removeprefix("STATUS=") for d in got if d.startswith("STATUS=")]
        assert statuses, got
        assert statuses[-1].startswith("broker ok, influx ok, ") and "dead letters 1" in statuses[-1], statuses
    finally:
        pub.close()
        bridge.stop()
    assert "STOPPING=1" in _datagrams(notify, time.monotonic() + 0.5)


def test_database_down_drops_health_points_and_counts_them(tmp_path: Path, broker: Mosquitto, influx: InfluxDB1,
                                                           notify: socket.socket) -> None:
    systemd._reset_for_tests()
    bridge = health_bridge(broker, influx.url, tmp_path, client_id="bridge-health-2")
    bridge.start()
    try:
        assert bridge.wait_subscribed(10)
        assert wait_until(lambda: _sum(influx, "interval_s") > 0, 10)
        influx.stop()
        assert wait_until(lambda: bridge.health.dropped >= 3, 15)
        assert wait_until(lambda: "influx failing" in bridge.status_text(), 5)
        _datagrams(notify, time.monotonic() + 0.1)
        assert wait_until(lambda: any("influx failing" in d for d in _datagrams(notify, time.monotonic() + 0.3)), 5)
        dropped = bridge.health.dropped
        time.sleep(2.2)
        # One point per interval tried and dropped: nothing waits in memory for the database.
        assert dropped + 1 <= bridge.health.dropped <= dropped + 3
        influx.start()
        assert wait_until(lambda: _rows(influx, 'SELECT max("health_dropped") FROM "bridge_health"') and
                          _rows(influx, 'SELECT max("health_dropped") FROM "bridge_health"')[0]["max"] >= 3, 20)
        assert wait_until(lambda: bridge.status_text().startswith("broker ok, influx ok"), 10)
    finally:
        bridge.stop()
