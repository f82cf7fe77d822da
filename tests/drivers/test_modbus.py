"""The Modbus RTU driver: register decoding, its settings, its poll logic against a scripted slave, and the whole
path on a pty: pymodbus RTU server twin -> driver in a RadioWorker -> the gateway's real FrameDecoder -> the edge
rules, with the shipped example config/river-modbus.yaml.
"""

from __future__ import annotations

import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from agent.config import parse_config
from agent.gateway.readings import FrameDecoder
from agent.rules import RuleEngine, node_infos
from drivers.codec import frame as node_frame
from drivers.codec import kinds
from drivers.codec.frame import ClockCounters
from drivers.errors import ModuleError
from drivers.modbus import Modbus, ModbusConfig, probe, registers_value
from drivers.probe import FAIL, OK
from drivers.radio import RadioWorker
from drivers.sim.modbus import SimModbus, pack_value
from drivers.types import Uplink
from tests.drivers.recorder import Events

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "river-modbus.yaml"
WAIT_S = 20.0


@pytest.fixture(autouse=True)
def fresh_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test is a fresh agent process: no frame counter or tip count remembered from another test."""
    from drivers import modbus

    monkeypatch.setattr(modbus, "_COUNTERS", ClockCounters())
    monkeypatch.setattr(modbus, "_PREVIOUS_RAW", {})


def gauge(**sensor: Any) -> ModbusConfig:
    base: dict[str, Any] = {"node": "3c000001", "kind": "water_level", "slave": 1, "timeout_s": 0.05, "retries": 2,
                            "values": [{"key": "level_cm", "address": 4, "scale": 0.1}]}
    return ModbusConfig.model_validate({"sensors": [{**base, **sensor}]})


# -- registers -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("number", "type_", "order"), [
    (0, "u16", "big"), (65535, "u16", "big"), (-32768, "s16", "big"), (-1, "s16", "little"),
    (4_000_000_000, "u32", "big"), (4_000_000_000, "u32", "little"), (-123456, "s32", "little"),
    (12.5, "float32", "big"), (-0.25, "float32", "little"),
])
def test_register_values_round_trip_through_the_twin_packing(number: float, type_: str, order: str) -> None:
    assert registers_value(pack_value(number, type_, order), type_, order) == number


def test_word_order_is_the_gauges_not_a_guess() -> None:
    # DFRobot SEN0575: low word first. 0x0001_0002 read big-endian would be 65538, little-endian 131073.
    assert registers_value([0x0001, 0x0002], "u32", "big") == 0x00010002
    assert registers_value([0x0001, 0x0002], "u32", "little") == 0x00020001


def test_a_float_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(ValueError, match="nan"):
        registers_value([0x7FC0, 0x0000], "float32", "big")
    with pytest.raises(ValueError, match="needs 2"):
        registers_value([1], "u32", "big")


# -- settings ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "message"), [
    ({"values": [{"key": "level_mm", "address": 4}]}, r"'level_mm' is not a value of a water_level reading.*level_cm"),
    ({"kind": "rain"}, r"'level_cm' is not a value of a rain reading"),
    ({"kind": "sos"}, r"kind"),
    ({"slave": 0}, r"slave"),
    ({"slave": 248}, r"slave"),
    ({"node": "xyz"}, r"8 hex digits"),
    ({"values": []}, r"values"),
    ({"values": [{"key": "level_cm", "address": 4}, {"key": "level_cm", "address": 5}]}, r"read twice"),
    ({"values": [{"key": "level_cm", "address": 70000}]}, r"address"),
    ({"values": [{"key": "level_cm", "address": 4, "type": "u64"}]}, r"type"),
    ({"values": [{"key": "level_cm", "address": 4, "scale": float("nan")}]}, r"finite"),
    ({"kind": "tilt", "values": [{"key": "tilt_x_deg", "address": 0}]}, r"tilt_y_deg"),
])
def test_bad_sensor_settings_are_refused_with_the_reason(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.compile(message, re.DOTALL)):
        gauge(**change)


def test_two_gauges_on_one_slave_address_are_refused() -> None:
    sensor = {"kind": "water_level", "interval_s": 60, "values": [{"key": "level_cm", "address": 4}]}
    with pytest.raises(ValidationError, match="two sensors have slave 1"):
        ModbusConfig.model_validate({"sensors": [{**sensor, "node": "3c000001", "slave": 1},
                                                 {**sensor, "node": "3c000002", "slave": 1}]})
    with pytest.raises(ValidationError, match="sensors"):
        ModbusConfig.model_validate({})


def test_generic_analog_values_ride_on_spare_channels() -> None:
    config = gauge(values=[{"key": "level_cm", "address": 4}, {"key": "ch6_analog_input", "address": 7}])
    assert [v.key for v in config.sensors[0].values] == ["level_cm", "ch6_analog_input"]


# -- the poll logic, against a scripted slave ---------------------------------------------------------------------
class ScriptedLine:
    """A Link whose slave answers each request as the next scripted step says: registers, "silent", "crc",
    or an exception code (int). Replies are built with pymodbus's server-side classes."""

    def __init__(self, steps: list[Any]) -> None:
        from pymodbus.framer import FramerRTU
        from pymodbus.pdu import DecodePDU

        self.radio = "rs485"
        self.steps = deque(steps)
        self.requests: list[tuple[int, int, int, int]] = []
        self.uplinks: list[Uplink] = []
        self.incidents: list[tuple[str, str]] = []
        self.feed: Callable[[bytes, int], None] | None = None
        self._reply = b""
        self._server = FramerRTU(DecodePDU(is_server=True))

    def write(self, data: bytes) -> None:
        from pymodbus.pdu import ExceptionResponse
        from pymodbus.pdu.register_message import (
            ReadHoldingRegistersResponse,
            ReadInputRegistersResponse,
        )

        _used, slave, _tid, pdu = self._server.decode(data)
        request = self._server.decoder.decode(pdu)
        self.requests.append((slave, request.function_code, request.address, request.count))
        step = self.steps.popleft()
        if step == "silent":
            return
        if isinstance(step, int):
            reply = self._server.buildFrame(ExceptionResponse(request.function_code, step, device_id=slave))
        else:
            cls = ReadHoldingRegistersResponse if request.function_code == 3 else ReadInputRegistersResponse
            reply = self._server.buildFrame(cls(registers=[0] * request.count if step == "crc" else step,
                                                dev_id=slave))
        self._reply = reply[:-1] + bytes([reply[-1] ^ 0xFF]) if step == "crc" else reply

    def pump(self, timeout: float) -> bool:
        if not self._reply:
            time.sleep(min(timeout, 0.01))
            return False
        reply, self._reply = self._reply, b""
        assert self.feed is not None
        self.feed(reply[:3], 0)  # in two reads, as a UART delivers it
        self.feed(reply[3:], 0)
        return True

    def deliver(self, uplinks: list[Uplink]) -> None:
        self.uplinks.extend(uplinks)

    def incident(self, kind: str, detail: str) -> None:
        self.incidents.append((kind, detail))


def scripted(config: ModbusConfig, steps: list[Any]) -> tuple[Modbus, ScriptedLine]:
    line = ScriptedLine(steps)
    driver = Modbus(SimpleNamespace(name="rs485", port="/dev/null", baudrate=9600, modbus=config), line)
    line.feed = driver.feed
    driver.configure()
    return driver, line


def level_of(uplink: Uplink) -> float:
    parsed = node_frame.parse(uplink.payload)
    return kinds.decode_body("water_level", parsed.body)["level_cm"]


def test_a_reading_becomes_an_unsigned_node_frame_with_a_clock_counter() -> None:
    config = gauge(values=[{"key": "level_cm", "address": 4, "scale": 0.1, "offset": -35.0}])
    driver, line = scripted(config, [[3350], [3360]])
    before = int(time.time())
    first = driver.poll(config.sensors[0])
    second = driver.poll(config.sensors[0])
    assert first is not None and second is not None and line.uplinks == [first, second]
    assert line.requests == [(1, 3, 4, 1), (1, 3, 4, 1)]
    a, b = node_frame.parse(first.payload), node_frame.parse(second.payload)
    assert (a.node_id, a.kind, a.has_mic) == (0x3C000001, kinds.KIND_CODES["water_level"], False)
    assert before <= a.counter <= int(time.time()) + 1 and b.counter == a.counter + 1  # same second: +1
    assert (level_of(first), level_of(second)) == (300.0, 301.0)
    assert (first.rssi, first.snr, first.src) == (None, None, "0001")
    assert line.incidents == []


def test_timeouts_and_bad_crcs_are_retried_and_counted() -> None:
    config = gauge()
    driver, line = scripted(config, ["silent", "crc", [1000]])
    assert driver.poll(config.sensors[0]) is not None
    assert [kind for kind, _detail in line.incidents] == ["module_timeout", "crc_error"]
    assert "try 1/3" in line.incidents[0][1] and "slave 1" in line.incidents[0][1]
    stats = driver.stats["3c000001"]
    assert (stats["timeouts"], stats["crc_errors"], stats["readings"], stats["failed_polls"]) == (1, 1, 1, 0)


def test_a_slave_that_never_answers_costs_retries_plus_one_tries_and_no_reading() -> None:
    config = gauge(retries=1)
    driver, line = scripted(config, ["silent", "silent"])
    assert driver.poll(config.sensors[0]) is None
    assert [kind for kind, _d in line.incidents] == ["module_timeout", "module_timeout"]
    assert line.uplinks == [] and driver.stats["3c000001"]["failed_polls"] == 1


def test_an_exception_reply_is_final_unless_the_slave_is_busy() -> None:
    config = gauge()
    driver, line = scripted(config, [2])  # illegal data address: asking again cannot help
    assert driver.poll(config.sensors[0]) is None
    assert line.incidents == [("module_error", line.incidents[0][1])]
    assert "exception 2 (illegal data address)" in line.incidents[0][1] and len(line.requests) == 1
    driver, line = scripted(config, [6, [1234]])  # device busy: the next try gets the value
    assert driver.poll(config.sensors[0]) is not None and len(line.requests) == 2
    assert driver.stats["3c000001"]["exceptions"] == 1


def test_rain_is_the_tip_count_difference_and_survives_the_counter_wrapping() -> None:
    config = ModbusConfig.model_validate({"sensors": [{
        "node": "3c000101", "kind": "rain", "slave": 192, "timeout_s": 0.05,
        "values": [{"key": "rain_mm", "address": 10, "table": "input", "type": "u16", "scale": 0.5, "delta": True},
                   {"key": "tips", "address": 10, "table": "input", "type": "u16"}]}]})
    driver, line = scripted(config, [[65534], [65534], [65535], [65535], [3], [3]])
    rain = []
    for _ in range(3):
        uplink = driver.poll(config.sensors[0])
        assert uplink is not None
        rain.append(kinds.decode_body("rain", node_frame.parse(uplink.payload).body))
    assert [r["rain_mm"] for r in rain] == [0.0, 0.5, 2.0]  # first poll: no previous count; 65535 -> 3 is 4 tips
    assert [r["tips"] for r in rain] == [65534.0, 65535.0, 3.0]
    assert line.requests[0] == (192, 4, 10, 1)


def test_a_value_that_does_not_fit_its_reading_is_reported_not_sent() -> None:
    config = gauge(values=[{"key": "level_cm", "address": 4, "type": "float32"}])
    driver, line = scripted(config, [pack_value(float("inf"), "float32")])
    assert driver.poll(config.sensors[0]) is None
    assert line.uplinks == [] and line.incidents[0][0] == "module_error" and "inf" in line.incidents[0][1]


def test_a_reopened_port_neither_repeats_a_counter_nor_loses_the_rain_meanwhile() -> None:
    config = ModbusConfig.model_validate({"sensors": [{
        "node": "3c000101", "kind": "rain", "slave": 192, "timeout_s": 0.05,
        "values": [{"key": "rain_mm", "address": 10, "table": "input", "scale": 0.5, "delta": True}]}]})
    driver, _line = scripted(config, [[100]])
    first = driver.poll(config.sensors[0])
    driver, _line = scripted(config, [[104]])  # the adapter was unplugged; a new driver on the reopened port
    second = driver.poll(config.sensors[0])
    assert first is not None and second is not None
    a, b = node_frame.parse(first.payload), node_frame.parse(second.payload)
    assert b.counter > a.counter
    assert kinds.decode_body("rain", b.body)["rain_mm"] == 2.0


def test_bytes_nobody_asked_for_are_noise_and_transmit_is_refused() -> None:
    driver, line = scripted(gauge(), [])
    driver.feed(b"\x00\xff\xfc", 0)
    assert line.incidents[0][0] == "garbled_line"
    with pytest.raises(ModuleError, match="cannot send radio frames"):
        driver.transmit(b"\x01", 1.0)
    with pytest.raises(ValueError):
        driver.transmit(b"", 1.0)


# -- on a pty: twin -> driver -> decoder -> rules ----------------------------------------------------------------
@pytest.fixture
def station(tmp_path: Path) -> Iterator[tuple[SimModbus, Any, Events, RadioWorker]]:
    """The shipped example's line on a pty, its polls every second, and a worker on it."""
    sim = SimModbus(name="rs485", link=str(tmp_path / "rs485"), boot_delay_s=0.1, rng=random.Random(5),
                    slaves=[1, 192, 3])
    text = EXAMPLE.read_text(encoding="utf-8").replace("/dev/rs485", sim.path)
    text = re.sub(r"(?m)^(          interval_s:) \d+", r"\1 1", text)  # the sensors' polls, not the nodes' or health's
    cfg = parse_config(text, base_dir=tmp_path)
    events = Events(wait_s=WAIT_S)
    worker = RadioWorker(cfg.radios[0], events, reopen_min_s=0.05, reopen_max_s=0.3, rng=random.Random(3))
    sim.start(wait=True)
    try:
        worker.start()
        yield sim, cfg, events, worker
    finally:
        worker.stop()
        sim.stop()


def set_river(sim: SimModbus, level_cm: float) -> None:
    sim.set_value(1, 4, round((level_cm + 35.0) * 10), type="u16")  # the example: 0.1 cm, gauge zero -35 cm


def test_gauges_on_a_pty_feed_the_decoder_and_raise_the_river_stage_alerts(station: Any) -> None:
    sim, cfg, events, _worker = station
    set_river(sim, 120.0)
    sim.set_value(1, 7, -25, type="s16")  # -2.5 degC water
    sim.set_value(192, 8, 12_345, type="u32", word_order="little", table="input")
    sim.set_value(192, 10, 7, type="u32", word_order="little", table="input")
    sim.set_value(3, 0, -12, type="s16", table="input")
    sim.set_value(3, 1, 34, type="s16", table="input")
    decoder = FrameDecoder(cfg, {})
    rules = RuleEngine(cfg.rules, node_infos(cfg.nodes), start_us=time.time_ns() // 1000)
    readings: dict[str, list[dict[str, Any]]] = {}
    alerts: list[Any] = []
    done = 0

    def take() -> None:
        nonlocal done
        for uplink in list(events.uplinks)[done:]:
            out = decoder.decode(uplink)
            assert out.entry is not None and out.body is not None, out.quarantined
            readings.setdefault(out.body["name"], []).append(out.body)
            alerts.extend(rules.on_reading(out.body))
        done = len(events.uplinks)

    events.wait(lambda: {"river-tenryu-bank", "rain-hut-roof", "slope-r152"} <= _names(events))
    take()
    river, rain, slope = (readings[n][-1] for n in ("river-tenryu-bank", "rain-hut-roof", "slope-r152"))
    assert river["values"] == {"level_cm": 120.0, "ch6_analog_input": -2.5}
    assert river["auth"] == "none" and river["radio"] == "rs485" and river["kind"] == "water_level"
    assert rain["values"] == {"rain_mm": 0.0, "tips": 7.0}
    assert slope["values"] == {"tilt_x_deg": -0.12, "tilt_y_deg": 0.34}
    assert not [a for a in alerts if a.type == "river_stage"]

    set_river(sim, 360.0)  # above 避難判断水位 (350)
    sim.set_value(192, 8, 12_345 + 25_000, type="u32", word_order="little", table="input")  # 2.5 mm more
    events.wait(lambda: _latest(events, 0x3C000001, "water_level").get("level_cm") == 360.0
                and _latest(events, 0x3C000101, "rain").get("rain_mm", 0.0) > 0)
    take()
    raised = sorted(a.level for a in alerts if a.type == "river_stage" and a.state == "raised")
    assert raised == [1, 2, 3]
    assert any(r["values"]["rain_mm"] == 2.5 for r in readings["rain-hut-roof"])
    assert events.count("module_timeout") == events.count("crc_error") == events.count("garbled_line") == 0


def _names(events: Events) -> set[str]:
    names = {"3c000001": "river-tenryu-bank", "3c000101": "rain-hut-roof", "3c000201": "slope-r152"}
    return {names.get(f"{node_frame.parse(u.payload).node_id:08x}", "?") for u in list(events.uplinks)}


def _latest(events: Events, node_id: int, kind: str) -> dict[str, float]:
    """The values of the node's last reading so far ({} before its first)."""
    for uplink in reversed(list(events.uplinks)):
        parsed = node_frame.parse(uplink.payload)
        if parsed.node_id == node_id:
            return kinds.decode_body(kind, parsed.body)
    return {}


def test_doctor_probe_reads_each_gauge_and_names_the_silent_one(tmp_path: Path) -> None:
    import serial

    sim = SimModbus(name="rs485", link=str(tmp_path / "rs485"), rng=random.Random(1), slaves=[1, 192, 3])
    text = EXAMPLE.read_text(encoding="utf-8").replace("/dev/rs485", str(tmp_path / "rs485"))
    radio = parse_config(text, base_dir=tmp_path).radios[0]
    sim.start(wait=True)
    try:
        with serial.Serial(sim.path, 9600, timeout=0.05) as port:
            found = probe(port, radio, 0.5, lambda text: text)
            assert found.status == OK and found.details["answered"] == ["1", "192", "3"], found
            sim.disappear(192)
            found = probe(port, radio, 0.3, lambda text: text)
            assert found.status == FAIL and "192" in found.summary and found.details["silent"] == ["192"]
            assert found.hint is not None and "slave address" in found.hint
    finally:
        sim.stop()


# -- the reply parser under fuzzing (tests/fuzz/target_modbus.py; the dedicated run takes it from TARGETS) ------
def test_reply_parser_keeps_its_contract_on_valid_and_mutated_replies() -> None:
    from tests.fuzz.target_modbus import ModbusTarget
    from tests.fuzz.targets import ACCEPTED, run_one

    target = ModbusTarget()
    for i in range(200):
        assert run_one(target, target.valid(random.Random(i))) == ACCEPTED
    outcomes = {run_one(target, target.generate(random.Random(f"m{i}"))).status for i in range(1500)}
    assert outcomes == {"accepted", "rejected", "ignored"}
