"""Clock fault: a gateway without RTC boots in 1970 and gets NTP only later.

The whole path is real (simulated RAK3172 on a pty, ``denen run``, Mosquitto, ``denen bridge``, InfluxDB 1.6.7);
only the agent's wall clock is set back, through :mod:`tests.support.fakeclock`, and stepped to the true time at
the "sync". What must hold:

* an SOS pressed before the sync reaches InfluxDB at once, at the bridge's time and with ``clock_ok=0``;
* telemetry stamped before the sync is held in the journal, and after the sync reaches InfluxDB exactly once, at
  its true time (within the test's pace) with ``clock_ok=1``;
* no point before 2020 ever reaches InfluxDB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.dev.devbroker import Mosquitto
from drivers.sim.rak3172 import SimRak3172
from tests.support.fault_rig import (DB, GATEWAY, REPO, AgentProcess, BridgeProcess, Key, frame_key, journal_status,
                                     write_bridge, write_gateway)
from tests.support.field import FieldNode, default_values, start_sim, wait_configured
from tests.support.influx import InfluxDB1
from tests.support.polling import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.broker]

BOOT_WALL_S = 86_400.0 + 3_600.0  # the board's clock at start: 1970-01-02 01:00 UTC
FLOOR_NS = 1_577_836_800 * 10**9  # 2020-01-01T00:00:00Z
TELEMETRY = ("water_level", "rain", "tilt")


class ClockAgent(AgentProcess):
    """``denen run`` with its wall clock under the test's control (see tests.support.fakeclock)."""

    def __init__(self, config: Path, log: Path, control: Path) -> None:
        super().__init__(config, log)
        self.control = control

    def set_clock(self, offset_s: float, synced: bool) -> None:
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(json.dumps({"offset_s": offset_s, "synced": synced}))
        os.replace(tmp, self.control)  # atomic: the agent never reads half a file

    def start(self) -> None:
        self._mark = self.log.stat().st_size if self.log.exists() else 0
        env = {**os.environ, "DENEN_CLOCK": "kernel"}  # ask the (fake) kernel, as on a real board
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.fakeclock", str(self.control), "run", "-c", str(self.config)],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.starts += 1


class SendTimes:
    """The true time each frame went onto the wire (the module's pty write), by (node, fcnt)."""

    def __init__(self, sim: SimRak3172) -> None:
        self.at: dict[Key, float] = {}
        self._lock = threading.Lock()
        port, original = sim.port, sim.port.write

        def write(data: bytes) -> None:
            original(data)
            now = time.time()
            for line in data.split(b"\r\n"):
                if line.startswith(b"+EVT:RXP2P:"):
                    with self._lock:
                        self.at[frame_key(bytes.fromhex(line.rsplit(b":", 1)[1].decode()))] = now

        port.write = write  # type: ignore[method-assign]


def points(influx: InfluxDB1, measurements: tuple[str, ...]) -> dict[Key, list[tuple[int, float]]]:
    """(time in µs, clock_ok) of every point of node readings, by (node, fcnt)."""
    out: dict[Key, list[tuple[int, float]]] = {}
    names = ",".join(f'"{m}"' for m in measurements)
    for row in influx.rows(f'SELECT "fcnt", "clock_ok" FROM {names} WHERE "gateway" = \'{GATEWAY}\' '
                           'GROUP BY "node"', DB):
        out.setdefault((row["node"], int(row["fcnt"])), []).append((int(row["time"]), float(row["clock_ok"])))
    return out


def test_readings_before_ntp_sync_are_held_corrected_and_nothing_before_2020_reaches_influxdb(
        tmp_path: Path, broker: Mosquitto, influx: InfluxDB1, figures: dict[str, Any]) -> None:
    sos = FieldNode(0x0D000001, "sos")
    telemetry = [FieldNode(0x0D000002 + i, k) for i, k in enumerate(TELEMETRY)]
    sim = start_sim(tmp_path, rng_seed=7)
    sent = SendTimes(sim)
    cfg = write_gateway(tmp_path, sim=sim, broker=broker, journal=tmp_path / "journal.db",
                        nodes=[sos, *telemetry], batch=50, window=4)
    bcfg = write_bridge(tmp_path, broker=broker, influx=influx)
    bridge = BridgeProcess(bcfg, tmp_path / "bridge.log")
    agent = ClockAgent(cfg, tmp_path / "agent.log", tmp_path / "clock.json")
    agent.set_clock(BOOT_WALL_S - time.time(), synced=False)
    counter = 0

    def send_telemetry(n: int) -> None:
        nonlocal counter
        for _ in range(n):
            node = telemetry[counter % len(telemetry)]
            assert sim.inject_uplink(node.frame(default_values(node.kind, counter)))
            counter += 1
            time.sleep(0.05)

    try:
        bridge.start()
        agent.start()
        assert wait_configured(sim, 0, 20), agent.run_log()

        # Before the sync: telemetry, then an SOS.
        send_telemetry(30)
        assert sim.inject_uplink(sos.frame(default_values("sos", 0)))
        sos_at = time.time()
        assert wait_until(lambda: points(influx, ("sos",)), 15, interval=0.2), agent.run_log()[-3000:]
        [[(sos_us, sos_clock_ok)]] = points(influx, ("sos",)).values()
        # Written at the bridge's clock, a moment after the press, flagged: not 1970, not lost, not held.
        assert 0 <= sos_us / 1e6 - sos_at < 10 and sos_clock_ok == 0.0
        held = journal_status(tmp_path / "journal.db")["journal"]["unsent"]
        assert points(influx, TELEMETRY) == {} and held >= 30, held  # telemetry waits for the true time

        # NTP arrives: the clock is stepped to the true time.
        agent.set_clock(0.0, synced=True)
        sync_at = time.time()
        send_telemetry(15)
        expected = {k for k in sent.at if k[0] != sos.hex}
        assert len(expected) == 45
        assert wait_until(lambda: set(points(influx, TELEMETRY)) >= expected, 30, interval=0.2), \
            (len(points(influx, TELEMETRY)), agent.run_log()[-3000:])

        found = points(influx, TELEMETRY)
        assert set(found) == expected
        twice = [k for k, v in found.items() if len(v) > 1]
        assert not twice, twice
        errors_ms = []
        for key, [(ts_us, clock_ok)] in found.items():
            errors_ms.append(abs(ts_us / 1e6 - sent.at[key]) * 1000)
            assert clock_ok == 1.0, key
        # The true time of each reading, to within the module-to-journal path (airtime is before the pty write).
        assert max(errors_ms) < 1000, sorted(errors_ms)[-5:]
        before_sync = sum(1 for k in expected if sent.at[k] < sync_at)
        early = influx.rows(f"SELECT * FROM /.*/ WHERE time < {FLOOR_NS}", DB)
        assert early == [], early[:3]
        # The agent writes its counters with the deletions after a drain, else at most every 10 s.
        assert wait_until(lambda: journal_status(tmp_path / "journal.db")["counters"].get("clock.corrected", 0)
                          >= before_sync, 15, interval=0.2)
        counters = journal_status(tmp_path / "journal.db")["counters"]
        assert counters.get("clock.corrected", 0) >= before_sync and counters.get("clock.steps", 0) >= 1
        figures.update(readings_before_sync=before_sync, readings_after_sync=len(expected) - before_sync,
                       corrected=counters.get("clock.corrected", 0), max_time_error_ms=round(max(errors_ms), 1),
                       sos_delay_s=round(sos_us / 1e6 - sos_at, 2), points_before_2020=0)
    finally:
        agent.stop()
        bridge.stop()
        sim.stop()
