"""`denen bridge` as operators run it: its own process, killed with SIGKILL, stopped with SIGTERM, three of them
sharing one subscription, and its command-line errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.dev.devbroker import Mosquitto
from tests.bridge._helpers import (
    Publisher,
    batches,
    telemetry_readings,
    write_v1_bridge_config,
)
from tests.support import fault_rig
from tests.support.influx import InfluxDB1
from tests.support.paths import REPO
from tests.support.polling import wait_until

pytestmark = pytest.mark.broker

DB = "denen"
SUMMARY_RE = re.compile(r"bridge stopped: (\d+) messages \((\d+) redelivered\), (\d+) readings, (\d+) lines in "
                        r"(\d+) writes, (\d+) acknowledged")
BATCH_RE = re.compile(r"bridge: batch of (\d+) messages \((\d+) redelivered\)")


class BridgeProcess(fault_rig.BridgeProcess):
    """``denen bridge -c CONFIG`` (tests.support.fault_rig), plus what its log says about the messages it wrote."""

    def summary(self) -> dict[str, int]:
        """Counters from the last line a cleanly stopped run logs."""
        found = SUMMARY_RE.findall(self.run_log())
        assert found, self.run_log()
        keys = ("messages", "redelivered", "readings", "lines", "writes", "acked")
        return dict(zip(keys, map(int, found[-1]), strict=True))

    def redelivered_in_batches(self) -> int:
        """Redelivered messages written in every run so far (from the debug line of each batch)."""
        return sum(int(r) for _, r in BATCH_RE.findall(self.log.read_text(errors="replace")))


class PacedPublisher:
    """Publishes reading batches at a steady pace from its own thread, so kills land mid-stream."""

    def __init__(self, broker: Mosquitto, items: list[tuple[str, bytes]], interval_s: float) -> None:
        self.pub = Publisher(broker, client_id="paced-publisher")
        self.items = items
        self.interval_s = interval_s
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for item in self.items:
            self.pub.publish([item])
            self.sent += 1
            time.sleep(self.interval_s)

    def close(self) -> None:
        self.thread.join(60)
        self.pub.close()


def per_node_counts(influx: InfluxDB1) -> dict[str, int]:
    return {r["node"]: r["count"] for r in influx.rows("SELECT count(level_cm) FROM water_level GROUP BY node", DB)}


def test_sigkill_mid_stream_and_restart_loses_nothing_and_duplicates_nothing(tmp_path: Path, broker: Mosquitto,
                                                                             influx: InfluxDB1) -> None:
    readings = telemetry_readings("gw-k", 12_000, nodes=40)
    items = batches("gw-k", readings, 40)
    bridge = BridgeProcess(write_v1_bridge_config(tmp_path, broker, influx.url, "bridge-k", max_wait_ms=200),
                           tmp_path / "bridge.log")
    bridge.start()
    feeder = PacedPublisher(broker, items, 0.01)
    try:
        for round_ in range(3):
            # Kill while messages flow: some are written but not yet acknowledged, some only received.
            floor = influx.count("water_level", "level_cm", DB)
            assert wait_until(lambda f=floor: influx.count("water_level", "level_cm", DB) >= f + 1500, 20), round_
            assert feeder.sent < len(items), "the stream ended before the kill; the test proved nothing"
            bridge.kill9()
            time.sleep(0.2)
            bridge.start()
        feeder.close()
        assert wait_until(lambda: influx.count("water_level", "level_cm", DB) >= len(readings), 30), \
            influx.count("water_level", "level_cm", DB)
        assert bridge.terminate() == 0
    finally:
        feeder.close()
        bridge.stop()
    counts = per_node_counts(influx)
    assert len(counts) == 40 and set(counts.values()) == {300}  # count per series = readings sent, no duplicates
    assert influx.count("node_health", "fcnt", DB) == len(readings)
    # The broker sent again what the killed processes had not acknowledged, and the rewrites overwrote.
    assert bridge.redelivered_in_batches() > 0


def test_sigterm_while_influxdb_is_down_leaves_the_batch_unacknowledged_for_the_next_run(
        tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> None:
    bridge = BridgeProcess(write_v1_bridge_config(tmp_path, broker, influx.url, "bridge-t"), tmp_path / "bridge.log")
    bridge.start()
    pub = Publisher(broker)
    try:
        influx.stop()
        readings = telemetry_readings("gw-t", 200, nodes=4)
        pub.publish(batches("gw-t", readings, 20))
        assert wait_until(lambda: "retrying with backoff" in bridge.run_log(), 10), bridge.run_log()
        started = time.monotonic()
        assert bridge.terminate() == 0
        assert time.monotonic() - started < 5
        first = bridge.summary()
        assert first["messages"] == 10 and first["acked"] == 0 and first["readings"] == 0
        assert "left unacknowledged and will come again" in bridge.run_log()
        influx.start()
        bridge.start()
        assert wait_until(lambda: influx.count("water_level", "level_cm", DB) == 200, 15)
        assert wait_until(lambda: "batch of" in bridge.run_log(), 5)
        assert bridge.terminate() == 0
        second = bridge.summary()
        assert second["redelivered"] == 10 and second["acked"] == 10 and second["readings"] == 200
    finally:
        pub.close()
        bridge.stop()


def test_three_bridges_on_one_shared_subscription_store_every_reading_exactly_once(
        tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> None:
    bridges = [BridgeProcess(write_v1_bridge_config(tmp_path, broker, influx.url, f"bridge-{i}"),
                             tmp_path / f"bridge-{i}.log")
               for i in range(1, 4)]
    threads = [threading.Thread(target=b.start) for b in bridges]  # start them side by side
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pub = Publisher(broker)
    try:
        gateways = ["gw-x", "gw-y", "gw-z"]
        items = []
        for gw in gateways:
            readings = telemetry_readings(gw, 1200, nodes=12)
            items += batches(gw, readings, 20)
        items.sort(key=lambda it: it[1][-40:])  # interleave the gateways
        pub.publish(items)
        total = 3 * 1200
        assert wait_until(lambda: influx.count("water_level", "level_cm", DB) >= total, 20)
        for b in bridges:
            assert b.terminate() == 0
    finally:
        pub.close()
        for b in bridges:
            b.stop()
    summaries = [b.summary() for b in bridges]
    # Each message went to exactly one bridge of the group, and each bridge took a share.
    assert sum(s["messages"] for s in summaries) == sum(s["acked"] for s in summaries) == len(items)
    assert all(s["messages"] > 0 and s["redelivered"] == 0 for s in summaries), summaries
    assert sum(s["readings"] for s in summaries) == total
    rows = influx.rows("SELECT count(level_cm) FROM water_level GROUP BY gateway, node", DB)
    assert len(rows) == 36 and {r["count"] for r in rows} == {100}


def denen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "COLUMNS": "160"})


def test_a_bad_bridge_config_is_one_line_per_problem_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bridge.yaml"
    text = (REPO / "config" / "bridge" / "bridge.yaml").read_text()
    bad.write_text(text.replace("type: v1", "type: v3", 1).replace("max_wait_ms: 200", "max_wait_ms: 0"))
    out = denen("bridge", "-c", str(bad))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith(str(bad))]
    type_line = next(i for i, s in enumerate(text.splitlines(), 1) if "type: v1" in s)
    assert any(ln.startswith(f"{bad}:{type_line}:") and "sink.type" in ln and "v1, v2" in ln for ln in lines), lines
    assert any("batch.max_wait_ms" in ln and "between 1 and 60000" in ln for ln in lines), lines
    # denen config validate recognises a bridge config and checks it with the bridge's schema.
    out = denen("config", "validate", str(REPO / "config" / "bridge" / "bridge.yaml"))
    assert out.returncode == 0 and ": ok (bridge denen-bridge-1" in out.stdout


def test_a_runtime_error_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the dead-letter folder should be")
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text((REPO / "config" / "bridge" / "bridge.yaml").read_text().replace(
        "/var/lib/denen/bridge-dead-letter.db", str(blocker / "dead.db")))
    shutil.copy(REPO / "config" / "bridge" / "gateways.yaml", tmp_path / "gateways.yaml")
    out = denen("bridge", "-c", str(cfg))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    [line] = [ln for ln in out.stderr.splitlines() if ln.startswith("denen: error:")]
    assert "dead-letter store" in line and "dead_letter.path" in line


def test_retiring_a_bridge_drains_its_share_and_removes_its_session(tmp_path: Path, broker: Mosquitto,
                                                                    influx: InfluxDB1) -> None:
    """Mosquitto gives a shared subscription's members their share also while they are away. A bridge taken out
    of service for good must take what its session holds, or it stays there until the session expires."""
    stays = BridgeProcess(write_v1_bridge_config(tmp_path, broker, influx.url, "bridge-stays"), tmp_path / "stays.log")
    leaves = BridgeProcess(write_v1_bridge_config(tmp_path, broker, influx.url, "bridge-leaves"),
                           tmp_path / "leaves.log")
    stays.start()
    leaves.start()
    assert leaves.terminate() == 0  # away: its session keeps receiving a share
    pub = Publisher(broker)
    try:
        readings = telemetry_readings("gw-r", 400, nodes=4)
        pub.publish(batches("gw-r", readings[:200], 10))
        assert wait_until(lambda: influx.count("water_level", "level_cm", DB) > 0, 10)
        time.sleep(0.5)
        held = 200 - influx.count("water_level", "level_cm", DB)
        assert held > 0, "the away bridge's session got no share; the test proved nothing"
        out = subprocess.run([sys.executable, "-m", "agent.cli", "bridge", "-c", str(leaves.config), "--retire"],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "drained and removed" in out.stderr
        assert influx.count("water_level", "level_cm", DB) == 200
        # The session is gone: everything published from now on goes to the bridge that stays.
        pub.publish(batches("gw-r", readings[200:], 10))
        assert wait_until(lambda: influx.count("water_level", "level_cm", DB) == 400, 10)
        assert stays.terminate() == 0
        # Its share of the first 20 messages, and all 20 later ones.
        assert stays.summary()["messages"] == (200 - held) // 10 + 20
    finally:
        pub.close()
        stays.stop()
        leaves.stop()
