"""Simulated sensor nodes and scenarios: frames decode with the codec, values are plausible, scenarios run."""

from __future__ import annotations

import random
import re
import threading
import time
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from drivers import registry
from drivers.codec import frame as node_frame
from drivers.codec import kinds as node_kinds
from drivers.codec import lpp
from drivers.errors import FrameError
from drivers.sim.nodes import NODE_KINDS, TIP_MM, SimNode, plausibility_problems
from drivers.sim.rak3172 import SimRak3172
from drivers.sim.scenario import Scenario, run_scenario_forever
from drivers.sim.scenario_spec import NodeSpec, ScenarioError

KEY = bytes(range(16))


def _one_of(words: list[str]) -> str:
    """A regex of pydantic's list of allowed literals: ``'a', 'b' or 'c'``."""
    quoted = [re.escape(repr(w)) for w in words]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


#: Every registered driver's simulator twin: the scenario ``model:`` values.
TWINS = [s.twin for s in registry.specs()]


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def decode(payload: bytes, key: bytes | None = None) -> tuple[node_frame.NodeFrame, dict[str, float]]:
    parsed = node_frame.parse(payload)
    if key is not None:
        assert node_frame.verify(parsed, key)
    else:
        assert not parsed.has_mic
    return parsed, node_kinds.decode_values(node_kinds.kind_name(parsed.kind), lpp.decode(parsed.body))


# -- nodes -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", NODE_KINDS)
def test_frames_decode_and_values_are_plausible(kind: str) -> None:
    clock = FakeClock()
    node = SimNode(0x00A1B2C3, kind, key=KEY, counter_start=42, rng=random.Random(3), clock=clock,
                   rain_mm_per_h=12.0)
    for _ in range(150):
        clock.t += node.interval_s
        sent = node.periodic()
        parsed, values = decode(sent.payload, KEY)
        assert parsed.node_id == 0x00A1B2C3 and parsed.counter == sent.counter
        assert node_kinds.kind_name(parsed.kind) == sent.kind
        assert values.keys() == sent.values.keys()
        for k, v in sent.values.items():
            assert values[k] == pytest.approx(v, abs=1e-6), k
        assert plausibility_problems(sent.kind, sent.values) == []
    expected_kind = "heartbeat" if kind in ("sos", "trap") else kind
    assert {s.kind for s in node.sent} == {expected_kind}


def test_counters_start_where_configured_and_strictly_increase() -> None:
    node = SimNode(7, "trap", counter_start=1000)
    frames = [node.periodic(), node.fire_trap(), node.arm_trap(), node.heartbeat(), node.fire_trap()]
    counters = [f.counter for f in frames]
    assert counters == list(range(1000, 1005))
    assert [node_frame.parse(f.payload).counter for f in frames] == counters
    assert node.next_counter == 1005 and node.sent == frames


def test_counter_never_wraps() -> None:
    node = SimNode(7, "heartbeat", counter_start=0xFFFF_FFFF)
    assert node.heartbeat().counter == 0xFFFF_FFFF
    with pytest.raises(FrameError):
        node.heartbeat()
    assert len(node.sent) == 1


def test_sos_press_has_gps_in_japan_and_asks_for_receipt() -> None:
    node = SimNode(0x10, "sos", rng=random.Random(5))
    press = node.press_sos()
    parsed, values = decode(press.payload)
    assert parsed.receipt_requested
    assert values["pressed"] == 1.0
    assert 35.6 < values["lat_deg"] < 36.0 and 138.9 < values["lon_deg"] < 139.3
    assert 0 < values["alt_m"] < 1500 and 3.0 <= values["battery_v"] <= 3.7
    cancel = node.press_sos(pressed=False)
    parsed, values = decode(cancel.payload)
    assert values["pressed"] == 0.0 and not parsed.receipt_requested
    positions = [(f.values["lat_deg"], f.values["lon_deg"]) for f in (press, cancel)]
    assert abs(positions[0][0] - positions[1][0]) < 0.01  # the same place, give or take GPS wander


def test_trap_fires_and_rearms() -> None:
    node = SimNode(0x20, "trap", key=KEY)
    assert decode(node.fire_trap().payload, KEY)[1]["fired"] == 1.0
    assert decode(node.arm_trap().payload, KEY)[1]["fired"] == 0.0


def test_river_level_random_walk_and_scripted_rise() -> None:
    clock = FakeClock()
    node = SimNode(0x30, "water_level", level_cm=50.0, rng=random.Random(9), clock=clock)
    calm = []
    for _ in range(200):
        clock.t += 600
        calm.append(node.periodic().values["level_cm"])
    assert all(40 <= v <= 60 for v in calm)  # wanders, but stays near its base level
    assert len(set(calm)) > 20
    node.set_level(350.0, over_s=3000)
    rising = []
    for _ in range(6):
        clock.t += 600
        rising.append(node.periodic().values["level_cm"])
    assert rising[:5] == sorted(rising[:5])  # rising through the stages until the ramp ends (t=3000 s)
    assert rising[0] == pytest.approx(50 + 300 * 0.2, abs=15)
    assert rising[-1] == pytest.approx(350, abs=3)
    clock.t += 600
    assert node.periodic().values["level_cm"] == pytest.approx(350, abs=5)


def test_rain_frames_add_up_to_cumulative_tips() -> None:
    clock = FakeClock()
    node = SimNode(0x40, "rain", rng=random.Random(2), clock=clock)
    frames = []
    for hour, rate in enumerate([0.0, 6.0, 30.0, 0.0]):
        node.set_rain(rate)
        for _ in range(6):  # six 10-minute frames per hour
            clock.t += 600
            frames.append(node.periodic().values)
    tips = [f["tips"] for f in frames]
    assert tips == sorted(tips)
    assert sum(f["rain_mm"] for f in frames) == pytest.approx(tips[-1] * TIP_MM)
    assert tips[-1] * TIP_MM == pytest.approx(36.0, abs=TIP_MM)  # 6 mm + 30 mm
    assert all(f["rain_mm"] == 0 for f in frames[:6]) and all(f["rain_mm"] == 0 for f in frames[-5:])


def test_tilt_moves_when_scripted() -> None:
    clock = FakeClock()
    node = SimNode(0x50, "tilt", rng=random.Random(4), clock=clock)
    before = node.periodic().values
    assert abs(before["tilt_x_deg"]) < 3 and abs(before["tilt_y_deg"]) < 3
    node.set_tilt(12.0, -4.0)
    after = node.periodic().values
    assert after["tilt_x_deg"] == pytest.approx(12.0, abs=0.2) and after["tilt_y_deg"] == pytest.approx(-4, abs=0.2)


def test_weather_has_a_daily_cycle() -> None:
    clock = FakeClock()
    node = SimNode(0x60, "weather", rng=random.Random(8), clock=clock)
    temps = []
    for _ in range(24 * 6):
        clock.t += 600
        temps.append(node.periodic().values["temperature_c"])
    assert max(temps) - min(temps) > 10  # day and night
    assert all(-30 < t < 45 for t in temps)


def test_link_quality_jitters_around_the_mean() -> None:
    node = SimNode(0x70, "heartbeat", rssi=-100, snr=-3, rng=random.Random(1))
    samples = [node.link_quality() for _ in range(500)]
    rssis = [r for r, _ in samples]
    snrs = [s for _, s in samples]
    assert all(isinstance(r, int) for r in rssis)
    assert sum(rssis) / len(rssis) == pytest.approx(-100, abs=1)
    assert sum(snrs) / len(snrs) == pytest.approx(-3, abs=0.5)
    assert len(set(rssis)) > 5


def test_receipt_downlinks_are_checked() -> None:
    node = SimNode(0x80, "sos", key=KEY)
    press = node.press_sos()
    assert node.receive_downlink(node_frame.build_receipt(0x80, press.counter, KEY))
    assert node.receipts == [press.counter]
    assert not node.receive_downlink(node_frame.build_receipt(0x80, 99, bytes(16)))  # wrong key
    assert not node.receive_downlink(node_frame.build_receipt(0x80, 99))  # MIC missing
    assert not node.receive_downlink(node_frame.build_receipt(0x81, 99, KEY))  # another node
    assert not node.receive_downlink(press.payload)  # an uplink, not a downlink
    assert not node.receive_downlink(b"\x00")
    assert node.receipts == [press.counter]


def test_bad_node_arguments_and_key_not_in_repr() -> None:
    for kwargs in ({"node_id": -1, "kind": "trap"}, {"node_id": 2**32, "kind": "trap"},
                   {"node_id": 1, "kind": "toaster"}, {"node_id": 1, "kind": "trap", "key": b"short"},
                   {"node_id": 1, "kind": "trap", "interval_s": 0}):
        with pytest.raises(ValueError):
            SimNode(**kwargs)  # type: ignore[arg-type]
    assert KEY.hex() not in repr(SimNode(1, "trap", key=KEY))


def test_schema_kinds_match_node_kinds() -> None:
    assert set(typing.get_args(NodeSpec.model_fields["kind"].annotation)) == set(NODE_KINDS)


# -- scenarios -------------------------------------------------------------------------------------------------
SCENARIO = """\
speed: 200
seed: 11
modules:
  - name: lora0
    model: rak3172
    boot_delay_s: 0.05
    profile: {bw_as_khz: true}
nodes:
  - id: "00A1B2C3"
    kind: trap
    module: lora0
    key: "000102030405060708090a0b0c0d0e0f"
    interval_s: 40
    counter_start: 500
    rssi: -95
    snr: -2.5
  - id: "0000BEEF"
    kind: sos
    module: lora0
    interval_s: 1000
    first_at_s: 900
events:
  - {at_s: 10, action: fire_trap, node: "00A1B2C3"}
  - {at_s: 20, action: sos, node: "0000BEEF"}
  - {at_s: 30, action: faults, module: lora0, duplicate_probability: 1.0}
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    s = Scenario.from_file(write(tmp_path, SCENARIO), link_dir=tmp_path / "dev")
    yield s
    s.stop()


def read_events(host: serial.Serial, count: int, timeout: float = 5.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    data = b""
    while data.count(b"\r\n") < count and time.monotonic() < deadline:
        data += host.read(max(1, host.in_waiting))
    return data.split(b"\r\n")[:-1]


def test_scenario_delivers_node_frames_and_events(scenario: Scenario, tmp_path: Path) -> None:
    sim = scenario.modules["lora0"]
    assert isinstance(sim, SimRak3172) and sim.bw_as_khz
    assert sim.path == str(tmp_path / "dev" / "lora0")
    scenario.start()
    with serial.serial_for_url(sim.path, baudrate=115200, timeout=0.2) as host:
        host.write(b"AT+PRECV=65534\r\n")
        assert read_events(host, 1) == [b"OK"]
        assert scenario.wait_until(60, timeout=5)
        lines = read_events(host, 3)
    trap = scenario.nodes[0x00A1B2C3]
    sos = scenario.nodes[0x0000BEEF]
    # The trap fired at t=10 and the SOS at t=20, both heard; periodic trap heartbeats around them.
    assert [f.kind for f in sos.sent] == ["sos"]
    assert "trap" in [f.kind for f in trap.sent]
    heard = [f for f in scenario.sent if f.delivered]
    assert heard and all(f.module == "lora0" for f in heard)
    got = [ln.split(b":")[-1] for ln in lines if ln.startswith(b"+EVT:RXP2P:")]
    for f in heard:
        assert f.payload.hex().upper().encode() in got
    # Counters start where the file says and keep rising.
    assert [f.counter for f in trap.sent] == list(range(500, 500 + len(trap.sent)))
    # Faults switched on at t=30: from then on every line comes twice.
    assert sim.faults.duplicate_probability == 1.0
    assert scenario.log and any("faults set" in text for _, text in scenario.log)


def test_scenario_sends_receipts_back_to_nodes(scenario: Scenario) -> None:
    sim = scenario.modules["lora0"]
    scenario.start()
    node = scenario.nodes[0x0000BEEF]
    with serial.serial_for_url(sim.path, baudrate=115200, timeout=0.2) as host:
        assert scenario.wait_until(25, timeout=5)
        assert [f.kind for f in node.sent] == ["sos"]
        receipt = node_frame.build_receipt(0x0000BEEF, node.sent[0].counter)
        host.write(b"AT+PSEND=" + receipt.hex().encode() + b"\r\n")
        assert sim.wait_for(lambda: bool(node.receipts), timeout=3)
    assert node.receipts == [node.sent[0].counter]


def test_scenario_unplug_and_reboot_events(tmp_path: Path) -> None:
    text = """\
speed: 100
modules:
  - {name: radio, model: rak3172, boot_delay_s: 0.05}
events:
  - {at_s: 5, action: unplug, module: radio, duration_s: 20}
  - {at_s: 40, action: reboot, module: radio, noise: false}
  - {at_s: 50, action: garbage, module: radio, count: 2, hex: "FCFCFC"}
"""
    s = Scenario.from_file(write(tmp_path, text), link_dir=tmp_path)
    try:
        s.start()
        sim = s.modules["radio"]
        link = Path(sim.path)
        assert link.exists()
        assert s.wait_until(10, timeout=5)
        assert not link.exists()
        assert s.wait_until(30, timeout=5)
        assert link.exists() and sim.wait_for(lambda: sim.boots == 2, timeout=3)
        with serial.serial_for_url(sim.path, baudrate=115200, timeout=0.5) as host:
            assert s.wait_until(60, timeout=5)
            assert sim.wait_for(lambda: sim.boots == 3, timeout=3)
            data = host.read(4096)
        assert data.endswith(b"Current Work Mode: LoRa P2P.\r\n\xfc\xfc\xfc\xfc\xfc\xfc")
    finally:
        s.stop()


def test_programmatic_scenario_and_run_forever(tmp_path: Path) -> None:
    s = Scenario(speed=50, rng=random.Random(1))
    sim = s.add_module("m", SimRak3172(boot_delay_s=0.05))
    node = s.add_node(SimNode(1, "weather", interval_s=10), "m", first_at_s=0)
    fired = threading.Event()
    s.at(15, fired.set, label="marker")
    with s:
        assert fired.wait(3)
        assert len(node.sent) >= 2 and not any(f.delivered for f in node.sent)  # RX was never switched on
    assert not sim.awake

    path = write(tmp_path, SCENARIO)
    stop = threading.Event()
    seen: list[str] = []

    def started(scn: Scenario) -> None:
        seen.append(scn.modules["lora0"].path)
        stop.set()

    run_scenario_forever(path, tmp_path / "links", on_started=started, stop=stop)
    assert seen == [str(tmp_path / "links" / "lora0")]
    assert not (tmp_path / "links" / "lora0").exists()  # cleaned up on the way out


def test_es920lr_modules_are_built_lazily(tmp_path: Path) -> None:
    pytest.importorskip("drivers.sim.es920lr")
    text = """\
modules:
  - {name: es, model: es920lr, boot_delay_s: 0.05}
nodes:
  - {id: "00001234", kind: rain, module: es}
"""
    s = Scenario.from_file(write(tmp_path, text), link_dir=tmp_path)
    try:
        assert type(s.modules["es"]).__name__ == "SimEs920lr"
        bad = text.replace("boot_delay_s: 0.05", "boot_delay_s: 0.05, profile: {no_such_knob: 1}")
        with pytest.raises(ScenarioError, match=r"modules\.0\.profile"):
            Scenario.from_file(write(tmp_path, bad, "bad.yaml"))
    finally:
        s.stop()


@pytest.mark.parametrize(("text", "expected"), [
    ("modules: []\n", r"s\.yaml:1: modules: List should have at least 1 item"),
    ("modules:\n  - {name: a, model: rak3173}\n", r"s\.yaml:2: modules\.0\.model: .*" + _one_of(TWINS)),
    ("modules:\n  - {name: a, model: rak3172, profile: {legacy_rxx: true}}\n",
     r"s\.yaml:2: modules\.0\.profile\.legacy_rxx: Extra inputs.*hint: unknown key"),
    ("modules:\n  - {name: a, model: rak3172}\nnodes:\n  - {id: 12345678, kind: trap, module: a}\n",
     r"s\.yaml:4: nodes\.0\.id: must be 8 hex digits in quotes"),
    ("modules:\n  - {name: a, model: rak3172}\nnodes:\n  - {id: \"1234567\", kind: trap, module: a}\n",
     r"nodes\.0\.id: must be exactly 8 hex digits"),
    ("modules:\n  - {name: a, model: rak3172}\nnodes:\n  - {id: \"00000001\", kind: trap, module: b}\n",
     r"s\.yaml:4: nodes\.0\.module: unknown module 'b' \(hint: one of a\)"),
    ("modules:\n  - {name: a, model: rak3172}\nnodes:\n  - {id: \"00000001\", kind: trap, module: a, key: \"00\"}\n",
     r"nodes\.0\.key: must be 32 hex digits"),
    ("modules:\n  - {name: a, model: rak3172}\nnodes:\n  - {id: \"00000001\", kind: trap, module: a,"
     " interval: 5}\n", r"nodes\.0\.interval: Extra inputs"),
    ("modules:\n  - {name: a, model: rak3172}\nnodes:\n  - {id: \"00000001\", kind: trap, module: a}\n"
     "  - {id: \"00000001\", kind: sos, module: a}\n", r"s\.yaml:5: nodes\.1\.id: duplicate node id 00000001"),
    ("modules:\n  - {name: a, model: rak3172}\nevents:\n  - {at_s: 1, action: explode, module: a}\n",
     r"s\.yaml:4: events\.0: .*'explode'.*hint: check the spelling of the action"),
    ("modules:\n  - {name: a, model: rak3172}\nevents:\n  - {at_s: 1, action: reboot, module: z}\n",
     r"events\.0\.module: unknown module 'z'"),
    ("modules:\n  - {name: a, model: rak3172}\nnodes:\n  - {id: \"00000001\", kind: trap, module: a}\n"
     "events:\n  - {at_s: 1, action: sos, node: \"00000001\"}\n",
     r"s\.yaml:6: events\.0\.action: 'sos' does not apply to node 00000001, a trap node"),
    ("modules:\n  - {name: a, model: rak3172}\nevents:\n  - {at_s: 1, action: unplug, module: a}\n",
     r"events\.0\.duration_s: Field required \(hint: this key is required\)"),
    ("modules:\n  - {name: a, model: rak3172, faults: {drop_probability: 2}}\n",
     r"modules\.0\.faults\.drop_probability: Input should be less than or equal to 1"),
    ("modules: [\n", r"s\.yaml: not valid YAML"),
    ("- just\n- a list\n", r"s\.yaml: a scenario must be a mapping"),
])
def test_bad_scenario_files_are_refused_clearly(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ScenarioError, match=expected):
        Scenario.from_file(write(tmp_path, text))


def test_missing_scenario_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"nope\.yaml: cannot read scenario file"):
        Scenario.from_file(tmp_path / "nope.yaml")
