"""Serial faults round for the Modbus RTU driver: requests nobody answers, replies with a bad CRC, exception
replies, a slave that disappears and comes back, the line's power failing, noise and mangled replies on the pair,
and the RS-485 adapter unplugged.

The pymodbus RTU server twin on a real pty, the driver in a RadioWorker, and the gateway's real FrameDecoder.
Two gauges: a river level (slave 1) and a tipping-bucket rain gauge (slave 2, a tip counter reported as rain per
reading). Each round moves the river to a new level, adds tips, injects one fault, clears it, and then requires a
reading of the new level: readings resume after every fault. At the end: every delivered frame is a reading the
decoder accepts (none quarantined: no duplicate counter across the reopens), the rain reported over all readings
adds up to exactly the tips counted (none lost to a fault, none counted twice), and the faults were counted.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.config import parse_config
from agent.gateway.readings import FrameDecoder
from drivers import modbus
from drivers.codec.frame import ClockCounters
from drivers.modbus import ModbusConfig
from drivers.radio import RadioWorker
from drivers.sim.modbus import SimModbus
from tests.drivers.recorder import Events
from tests.support.fault_rig import sized
from tests.support.gateway_config import NodeEntry, gateway_yaml

pytestmark = [pytest.mark.faults]

ROUNDS = sized(7, 21)
RIVER, RAIN = 0x3C000001, 0x3C000101
MM_PER_TIP = 0.5
WAIT_S = 30.0
FAULTS = ("no_answer", "crc", "exception", "gone", "power", "line", "unplug")


class Station:
    """The twin, the worker and the decoder, with what the test injected."""

    def __init__(self, tmp_path: Path, rng: random.Random) -> None:
        self.rng = rng
        self.sim = SimModbus(name="rs485", link=str(tmp_path / "rs485"), boot_delay_s=0.5,
                             rng=random.Random(rng.random()), slaves=[1, 2])
        settings = ModbusConfig.model_validate({"sensors": [
            {"node": f"{RIVER:08x}", "kind": "water_level", "slave": 1, "interval_s": 1, "timeout_s": 0.2,
             "retries": 1, "values": [{"key": "level_cm", "address": 4, "scale": 0.1}]},
            {"node": f"{RAIN:08x}", "kind": "rain", "slave": 2, "interval_s": 1, "timeout_s": 0.2, "retries": 1,
             "values": [{"key": "rain_mm", "address": 10, "table": "input", "type": "u32", "word_order": "little",
                         "scale": MM_PER_TIP, "delta": True},
                        {"key": "tips", "address": 10, "table": "input", "type": "u32", "word_order": "little"}]},
        ]})
        radio = SimpleNamespace(name="rs485", driver="modbus", port=self.sim.path, baudrate=9600, modbus=settings)
        self.events = Events(wait_s=WAIT_S)
        self.worker = RadioWorker(radio, self.events, reopen_min_s=0.05, reopen_max_s=0.3,
                                  rng=random.Random(rng.random()))
        cfg = parse_config(gateway_yaml(port="loop://", mqtt_port=1883, journal=tmp_path / "j.db", nodes=[
            NodeEntry(RIVER, "water_level", "river-1", None, interval_s=60, unauthenticated="flag"),
            NodeEntry(RAIN, "rain", "rain-1", None, interval_s=60, unauthenticated="flag")]))
        self.decoder = FrameDecoder(cfg, {})
        self.readings: list[dict[str, Any]] = []
        self.quarantined: list[Any] = []
        self._decoded = 0
        self.tips = 0
        self.injected = {"no_answer": 0, "crc": 0, "exception": 0}

    def decode(self) -> None:
        """Run what arrived since the last call through the gateway's decoder."""
        uplinks = list(self.events.uplinks)
        for uplink in uplinks[self._decoded:]:
            out = self.decoder.decode(uplink)
            if out.body is not None:
                self.readings.append(out.body)
            else:
                self.quarantined.append(out.quarantined)
        self._decoded = len(uplinks)

    def latest(self, name: str) -> dict[str, float]:
        self.decode()
        found = [r["values"] for r in self.readings if r["name"] == name]
        return found[-1] if found else {}

    def move(self, level_cm: float, tips: int) -> None:
        self.sim.set_value(1, 4, round(level_cm * 10), type="u16")
        self.tips += tips
        self.sim.set_value(2, 10, self.tips, type="u32", word_order="little", table="input")

    def resumed(self, level_cm: float) -> None:
        """Wait until both gauges report what they now hold."""
        self.events.wait(lambda: self.latest("river-1").get("level_cm") == level_cm
                         and self.latest("rain-1").get("tips") == float(self.tips))

    def running(self) -> None:
        self.events.wait(lambda: self.worker.state == "running" and self.sim.booted)


def inject(station: Station, fault: str) -> None:
    """One fault, held until the driver has met it, then cleared."""
    sim, events, rng = station.sim, station.events, station.rng
    if fault in ("no_answer", "crc"):  # n requests unanswered, or n replies with a bad CRC: n incidents
        n = rng.randint(1, 4)
        incident, field = ("module_timeout", "no_answer") if fault == "no_answer" else ("crc_error", "crc_errors")
        before = events.count(incident)
        setattr(sim.line, field, getattr(sim.line, field) + n)
        station.injected[fault] += n
        events.wait(lambda: events.count(incident) >= before + n)
    elif fault == "exception":
        before = sim.line.counts["exception"]
        sim.line.exceptions[rng.choice((1, 2))] = rng.choice((2, 4, 11))
        events.wait(lambda: sim.line.counts["exception"] >= before + 2)
        sim.line.exceptions.clear()
    elif fault == "gone":
        before = sim.line.counts["gone"]
        sim.disappear(rng.choice((1, 2)))
        events.wait(lambda: sim.line.counts["gone"] >= before + 4)  # two polls, each try unanswered
        sim.reappear(1)
        sim.reappear(2)
    elif fault == "power":
        sim.reboot(noise=True)
    elif fault == "line":
        sim.faults.drop_probability, sim.faults.garbage_probability = 0.2, 0.3
        sim.faults.truncate_probability, sim.faults.duplicate_probability = 0.2, 0.2
        sim.inject_garbage()
        time.sleep(2.5)
        sim.faults.drop_probability = sim.faults.garbage_probability = 0.0
        sim.faults.truncate_probability = sim.faults.duplicate_probability = 0.0
    elif fault == "unplug":
        lost = events.count("port_lost")
        sim.unplug()
        events.wait(lambda: events.count("port_lost") == lost + 1)
        time.sleep(0.3)
        sim.replug()
        events.wait(lambda: events.count("reopen") == lost + 1)


def test_readings_resume_after_every_serial_fault_and_the_faults_are_counted(
        tmp_path: Path, rng: random.Random, figures: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(modbus, "_COUNTERS", ClockCounters())  # a fresh agent: nothing remembered from other tests
    monkeypatch.setattr(modbus, "_PREVIOUS_RAW", {})
    station = Station(tmp_path, rng)
    faults = [FAULTS[i % len(FAULTS)] for i in range(ROUNDS)]
    rng.shuffle(faults)
    started = time.monotonic()
    station.sim.start(wait=True)
    try:
        station.worker.start()
        station.running()
        station.move(100.0, 0)
        station.resumed(100.0)
        for n, fault in enumerate(faults, start=1):
            level = 100.0 + 10 * n
            station.move(level, rng.randint(0, 9))
            inject(station, fault)
            station.running()
            station.resumed(level)
    finally:
        station.worker.stop()
        station.sim.stop()
    station.decode()
    events, counts = station.events, station.sim.line.counts
    figures.update({"rounds": len(faults), "readings": len(station.readings), "seconds": time.monotonic() - started,
                    **{f"incidents_{k}": events.count(k) for k in ("module_timeout", "crc_error", "module_error",
                                                                   "garbled_line", "port_lost")}})

    assert station.quarantined == [], station.quarantined[:3]
    rain = [r["values"]["rain_mm"] for r in station.readings if r["name"] == "rain-1"]
    assert sum(rain) == pytest.approx(station.tips * MM_PER_TIP)  # no tip lost to a fault, none counted twice
    assert all(r["auth"] == "none" and r["radio"] == "rs485" for r in station.readings)
    # Every fault was counted as what it is.
    assert events.count("module_timeout") >= station.injected["no_answer"] + counts["gone"]
    assert events.count("crc_error") >= station.injected["crc"]
    assert events.count("module_error") == counts["exception"]
    assert events.count("port_lost") == events.count("reopen") == faults.count("unplug")
    assert events.count("configured") == 1 + faults.count("unplug")
    assert events.count("internal_error") == 0 and station.worker.alive is False
