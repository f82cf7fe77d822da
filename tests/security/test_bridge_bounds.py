"""Attack 5 (and the year-2200 stamp of attack 6) against a real bridge: one gateway login floods the bridge with
oversized, malformed or far-future messages. Real Mosquitto, a real in-process bridge, real InfluxDB 1.6.7.

What must hold: memory and the dead-letter store stay bounded, log lines stay bounded (first in full, then one
summary), a dead-letter store that cannot be written does not stop ingestion, and another gateway's readings keep
arriving throughout.
"""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from agent.bridge import Bridge
from agent.bridge.config import parse_bridge_config
from agent.dev.devbroker import Mosquitto
from tests.bridge._helpers import Publisher, batch, bridge_config_text, reading, topic, v1_sink
from tests.support.influx import InfluxDB1
from tests.support.polling import wait_until

pytestmark = pytest.mark.broker

DB = "denen"


def _bridge(broker: Mosquitto, influx: InfluxDB1, dead: Path, extra: str = "") -> Bridge:
    text = bridge_config_text(broker=broker, sink=v1_sink(influx.url), dead_letter=dead) + extra
    text = text.replace("  level: debug", "  level: info")
    bridge = Bridge(parse_bridge_config(text))
    bridge.start()
    assert bridge.wait_subscribed(10), "the bridge did not subscribe"
    return bridge


def _good(gw: str, fcnt: int, *, ts_us: int | None = None) -> tuple[str, bytes]:
    r = reading(gw, 0x0A0B0C0D, fcnt, "sos", {"pressed": 1.0, "lat_deg": 35.6, "lon_deg": 139.1, "battery_v": 3.7},
                ts_us=ts_us if ts_us is not None else int(time.time() * 1e6) - 60_000_000 + fcnt)
    return topic(gw, "sos"), batch(gw, [r])


def _sos_count(influx: InfluxDB1, gw: str) -> int:
    return influx.count("sos", "pressed", DB, f"gateway = '{gw}'")


def test_flood_of_bad_payloads_keeps_the_dead_letter_store_and_the_log_bounded(
        tmp_path: Path, broker: Mosquitto, influx: InfluxDB1, caplog: pytest.LogCaptureFixture) -> None:
    # 200 invalid 100 kB payloads against a 2 MiB store: without the cap the store grows by 20 MB.
    bridge = _bridge(broker, influx, tmp_path / "dead.db", "")
    bridge._dead.max_bytes = 2 * 2**20  # 2 MiB instead of the default 256 keeps the test quick
    hostile = Publisher(broker, "gw-evil")
    honest = Publisher(broker, "gw-honest")
    try:
        with caplog.at_level(logging.INFO, logger="agent.bridge.bridge"):
            for i in range(200):
                hostile.publish([(topic("gw-evil"), b"{" + os.urandom(50_000).hex().encode())])
                if i % 50 == 0:
                    honest.publish([_good("gw-honest", i + 1)])
            honest.publish([_good("gw-honest", 1000)])
            assert wait_until(lambda: _sos_count(influx, "gw-honest") == 5, 30), _sos_count(influx, "gw-honest")
            assert wait_until(lambda: bridge.counters().get("dead_letters.invalid_json", 0) == 200, 30)
            assert wait_until(lambda: bridge.counters().get("messages_acked", 0) == 205, 30), bridge.counters()
            bridge._input_log.flush()
        sizes = {f.name: f.stat().st_size for f in tmp_path.glob("dead.db*")}
        size = sum(sizes.values())
        c = bridge.counters()
        assert bridge._dead.bytes_held <= 2 * 2**20
        assert c["dead_letters_evicted"] > 150, c
        # The file, with its WAL (cut back to 4 MiB after checkpoints), stays near the cap: 20 MB were offered.
        assert size < 10 * 2**20, sizes
        lines = [r.getMessage() for r in caplog.records if "invalid_json" in r.getMessage()]
        full = [r.getMessage() for r in caplog.records if "store" in r.getMessage() and "full" in r.getMessage()]
        assert 1 <= len(full) <= 3, full
        # One line in full and one summary: not 200.
        assert len(lines) == 2, lines
        assert lines[1].startswith("... 199 more invalid_json dead letters from gateway gw-evil"), lines[1]
        assert all(len(line) < 2000 for line in lines)
    finally:
        hostile.close()
        honest.close()
        bridge.stop()


def test_oversized_message_is_dead_lettered_cut_and_memory_stays_bounded(
        tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> None:
    bridge = _bridge(broker, influx, tmp_path / "dead.db", "limits:\n  max_message_kb: 256\n")
    hostile = Publisher(broker, "gw-evil")
    honest = Publisher(broker, "gw-honest")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    try:
        # A valid batch of 3,000 readings (~1 MB): over the bridge's limit, so never converted.
        rs = [reading("gw-evil", 0x100 + i % 50, i, "water_level", {"level_cm": 1.0}) for i in range(3000)]
        big = batch("gw-evil", rs)
        assert 256 * 1024 < len(big) < 4 * 256 * 1024
        # And one far over 4x the limit: the broker drops it for the bridge's session (MQTT v5 Maximum Packet
        # Size), so it never reaches the bridge's memory.
        huge = b"x" * (8 * 2**20)
        hostile.publish([(topic("gw-evil"), big), (topic("gw-evil"), huge)])
        honest.publish([_good("gw-honest", 1)])
        assert wait_until(lambda: _sos_count(influx, "gw-honest") == 1, 20)
        assert wait_until(lambda: bridge.counters().get("dead_letters.too_large", 0) == 1, 10), bridge.counters()
        (item,) = bridge._dead.items("too_large")
        assert len(item.content) == 64 * 1024 and str(len(big)) in item.detail
        assert influx.count("water_level", "level_cm", DB, "gateway = 'gw-evil'") == 0
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert grown_mib < 60, f"the test process grew by {grown_mib:.0f} MiB"
        assert bridge.counters().get("messages", 0) == 2  # the 8 MiB one never arrived
    finally:
        hostile.close()
        honest.close()
        bridge.stop()


def test_a_reading_from_year_2200_is_refused_and_the_last_value_stays_true(
        tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> None:
    bridge = _bridge(broker, influx, tmp_path / "dead.db")
    pub = Publisher(broker, "gw-a")
    try:
        now_us = int(time.time() * 1e6)
        y2200 = 7_258_118_400_000_000  # 2200-01-01T00:00:00Z
        future = reading("gw-a", 0x00A1B2C3, 7, "water_level", {"level_cm": 999.0}, ts_us=y2200)
        true = reading("gw-a", 0x00A1B2C3, 8, "water_level", {"level_cm": 123.0}, ts_us=now_us)
        pub.publish([(topic("gw-a"), batch("gw-a", [future, true]))])
        assert wait_until(lambda: influx.count("water_level", "level_cm", DB) == 1, 20)
        rows = influx.rows("SELECT last(level_cm) FROM water_level", DB)
        assert rows[0]["last"] == 123.0
        assert wait_until(lambda: bridge.counters().get("dead_letters.timestamp_in_future", 0) == 1, 10)
    finally:
        pub.close()
        bridge.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_dead_letter_store_that_cannot_be_written_does_not_stop_ingestion(
        tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    bridge = None
    hostile = Publisher(broker, "gw-evil")
    honest = Publisher(broker, "gw-honest")
    try:
        bridge = _bridge(broker, influx, mnt / "dead.db")
        # 40 bad payloads of 60 kB cannot fit in 1 MiB: the store fails with "database or disk is full".
        for i in range(40):
            hostile.publish([(topic("gw-evil"), b"[" + b"9" * 60_000)])
            if i % 10 == 9:
                honest.publish([_good("gw-honest", i)])
        assert wait_until(lambda: _sos_count(influx, "gw-honest") == 4, 30), bridge.counters()
        # A batch is written first and its dead letters stored after: the failure may follow the readings.
        assert wait_until(lambda: bridge.counters().get("dead_letter_write_failures", 0) >= 1, 10), \
            bridge.counters()
        assert wait_until(lambda: bridge.counters().get("messages_acked", 0) == 44, 10), bridge.counters()
        assert bridge._writer is not None and bridge._writer.is_alive()
        honest.publish([_good("gw-honest", 100)])
        assert wait_until(lambda: _sos_count(influx, "gw-honest") == 5, 10)
    finally:
        hostile.close()
        honest.close()
        if bridge is not None:
            bridge.stop()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_every_message_gets_through_whatever_a_batch_neighbour_does(
        tmp_path: Path, broker: Mosquitto, influx: InfluxDB1, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message whose write raises something unforeseen is isolated and kept; its batch neighbours are written."""
    bridge = _bridge(broker, influx, tmp_path / "dead.db", "")
    real_write = bridge._policy.write

    def write(lines: Any, body: bytes | None = None) -> Any:
        if any("poison-node" in line for line in lines):
            raise RuntimeError("a bug that only this message's lines trigger")
        return real_write(lines, body)

    monkeypatch.setattr(bridge._policy, "write", write)
    pub = Publisher(broker, "gw-a")
    try:
        poison = reading("gw-a", 0x0000BEEF, 1, "water_level", {"level_cm": 1.0}, name="poison-node")
        msgs = [_good("gw-a", 10), (topic("gw-a"), batch("gw-a", [poison])), _good("gw-a", 11)]
        pub.publish(msgs)
        assert wait_until(lambda: _sos_count(influx, "gw-a") == 2, 20)
        assert wait_until(lambda: bridge.counters().get("dead_letters.internal_error", 0) >= 1, 10)
        assert bridge.counters()["messages_failed"] == 1
        kept = bridge._dead.items("internal_error")
        assert any(b"poison-node" in d.content for d in kept)
        assert wait_until(lambda: bridge.counters().get("messages_acked", 0) == 3, 10), bridge.counters()
    finally:
        pub.close()
        bridge.stop()
