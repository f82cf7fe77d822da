"""A river rises through all four stages in a typhoon, with rain, and falls again.

What the river station and the town's disaster office live through:

* the gauge reports every 10 minutes, the rain gauge beside it too; the water climbs through 水防団待機水位
  (standby), はん濫注意水位 (caution), 避難判断水位 (evacuation decision) and はん濫危険水位 (danger): one
  ``river_stage`` alert per stage, in order, each within seconds of the gauge's frame;
* the water rises faster than ``rise_cm_per_h``: a ``river_rise`` warning, cleared when the rise slows;
* from the evacuation level the station's siren sounds (``rules.siren`` defaults), with or without backhaul;
* on the way down each stage clears only once the water is ``hysteresis_cm`` below its line, highest stage first,
  and the siren stops when the water is back below the evacuation level;
* the rain readings arrive alongside, on the telemetry lane.

Two hours of typhoon run in seconds: :class:`WallClock` moves the wall clock 10 minutes forward before each report,
which is what the gateway sees of a gauge reporting every 10 minutes.
"""

from __future__ import annotations

import json
import time

import jsonschema
import pytest

from tests.support.contract import readings_schema
from tests.support.gateway_config import mock_gpio, river, rules_yaml
from tests.support.polling import wait_until
from tests.support.scenario_rig import (
    GATEWAY,
    LAMP_PIN,
    SIREN_PIN,
    Published,
    ScenarioNode,
    ScenarioRig,
    WallClock,
)

pytestmark = pytest.mark.broker

PROMPT_S = 2.0  # bound from the gauge's frame on the serial line to its alert at the broker / the siren, in s
REPORT_S = 600  # the gauge and the rain gauge report every 10 minutes during the flood
STANDBY, CAUTION, EVACUATION, DANGER = 100.0, 150.0, 250.0, 300.0
HYSTERESIS_CM = 5.0
RISE_CM_PER_H = 120.0  # 20 cm per 10-minute report

RULES = rules_yaml(river("00000301", {"standby": STANDBY, "caution": CAUTION, "evacuation": EVACUATION,
                                     "danger": DANGER},
                         hysteresis_cm=HYSTERESIS_CM, rise_cm_per_h=RISE_CM_PER_H, rise_window_s=REPORT_S),
                   repeat_s=43200)
GPIO = mock_gpio()

# (level cm, rain mm in the last 10 minutes, alerts the gauge's frame must raise or clear: (type, state, level)).
# The rise rate is measured over the 10 minutes before each report: (level - previous level) x 6 per hour.
TYPHOON: list[tuple[float, float, list[tuple[str, str, int | None]]]] = [
    (80.0, 4.0, []),
    (92.0, 6.5, []),                                           # +72 cm/h: rising, not fast
    (104.0, 9.0, [("river_stage", "raised", 1)]),              # standby (info: the lamp stays steady)
    (135.0, 14.5, [("river_rise", "raised", None)]),           # +186 cm/h
    (165.0, 18.0, [("river_stage", "raised", 2)]),             # caution
    (210.0, 22.5, []),
    (255.0, 25.0, [("river_stage", "raised", 3)]),             # evacuation decision: the siren sounds
    (302.0, 19.0, [("river_stage", "raised", 4)]),             # danger
    (310.0, 12.0, [("river_rise", "cleared", None)]),          # +48 cm/h < half of 120: the rise slowed
    (298.0, 8.0, []),                                          # below danger, not by 5 cm: hysteresis holds
    (290.0, 5.5, [("river_stage", "cleared", 3)]),             # danger cleared (level now 3)
    (248.0, 3.0, []),                                          # below evacuation, not by 5 cm
    (240.0, 1.5, [("river_stage", "cleared", 2)]),             # evacuation cleared: the siren stops
    (190.0, 0.5, []),
    (140.0, 0.0, [("river_stage", "cleared", 1)]),             # caution cleared
    (90.0, 0.0, [("river_stage", "cleared", 0)]),              # standby cleared
]


def siren_wanted(level_cm: float, was_on: bool) -> bool:
    """The siren from the evacuation stage up, off again below the stage's line minus the hysteresis."""
    return level_cm >= EVACUATION or (was_on and level_cm >= EVACUATION - HYSTERESIS_CM)


def test_river_stages_rise_and_clear_in_order_with_the_siren_from_evacuation(
        rig: ScenarioRig, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = WallClock(monkeypatch)
    gauge = ScenarioNode(0x00000301, "water_level", "river-tama-1", interval_s=REPORT_S)
    rain = ScenarioNode(0x00000401, "rain", "rain-tama-1", interval_s=REPORT_S)
    gw = rig.start(nodes=[gauge, rain], rules=RULES, gpio=GPIO)
    col = rig.collector
    assert wait_until(lambda: rig.lamp_state() == "ok", 5), rig.lamp_state()

    tips = 0.0
    siren = False
    seen_alerts = 0
    active: set[str] = set()
    for step, (level, rain_mm, expected) in enumerate(TYPHOON):
        clock.advance(REPORT_S)
        tips += rain_mm / 0.5  # a 0.5 mm bucket
        rig.send(rain, {"rain_mm": rain_mm, "tips": tips, "battery_v": 3.6})
        t_frame = rig.send(gauge, {"level_cm": level, "battery_v": 3.6})
        reading_id = gauge.reading_id()
        # The gauge's reading reaches the broker; the alerts it decided were published before it (alarm lane).
        col.wait_reading(lambda p, rid=reading_id: p.reading["id"] == rid)
        alerts = col.first_alerts()
        new, seen_alerts = alerts[seen_alerts:], len(alerts)
        got = [(p.alert["type"], p.alert["state"],
                int(p.reading["values"]["level"]) if p.alert["type"] == "river_stage" else None) for p in new]
        assert got == expected, f"step {step} ({level} cm): {got} != {expected}"
        for p in new:
            assert p.at - t_frame < PROMPT_S, f"step {step}: {p.alert['key']} took {p.at - t_frame:.2f} s"
            assert p.alert["reading"] == reading_id and p.alert["node"] == gauge.hex
            assert p.topic == f"denen/v1/{GATEWAY}/readings/alarm"
            check_alert(p, level)
        # The siren follows the stage at once, offline-capable (it is set by the gateway, not the backend).
        want = siren_wanted(level, siren)
        changed = want != siren
        siren = want
        assert wait_until(lambda w=want: rig.siren_sounding() == w, PROMPT_S, interval=0.01), (
            f"step {step} ({level} cm): siren {'off' if want else 'on'}, want {'on' if want else 'off'}")
        if changed:
            assert time.monotonic() - t_frame < PROMPT_S
        # The lamp: alarm while a warning or worse is active (river_rise, caution and up); standby is info only.
        for type_, state, lvl in expected:
            key = type_ if type_ == "river_rise" else f"stage{lvl if state == 'raised' else lvl + 1}"
            active.add(key) if state == "raised" else active.discard(key)
        alarm = bool(active - {"stage1"})
        assert wait_until(lambda a=alarm: rig.lamp_state() == ("alarm" if a else "ok"), PROMPT_S), (
            f"step {step} ({level} cm): lamp {rig.lamp_state()}, active {sorted(active)}")

    # Four stages up in order, the rise, and four clears in reverse order.
    assert [(p.alert["type"], p.alert["state"], p.alert["key"]) for p in col.first_alerts()] == [
        ("river_stage", "raised", "river_stage:00000301:1"),
        ("river_rise", "raised", "river_rise:00000301"),
        ("river_stage", "raised", "river_stage:00000301:2"),
        ("river_stage", "raised", "river_stage:00000301:3"),
        ("river_stage", "raised", "river_stage:00000301:4"),
        ("river_rise", "cleared", "river_rise:00000301"),
        ("river_stage", "cleared", "river_stage:00000301:4"),
        ("river_stage", "cleared", "river_stage:00000301:3"),
        ("river_stage", "cleared", "river_stage:00000301:2"),
        ("river_stage", "cleared", "river_stage:00000301:1"),
    ]
    assert len(col.alerts()) == len(col.first_alerts()), "an alert was repeated although repeat_s is 12 h"
    # The siren sounded once, steadily, from evacuation until the water fell back below it.
    assert [s.state for s in rig.pin(SIREN_PIN).states] == [False, True, False]
    assert rig.lamp_state() == "ok" and rig.pin(LAMP_PIN).state

    # The rain arrived alongside, every report, on the telemetry lane, its edge time 10 minutes apart.
    rains = [p for p in col.readings() if p.reading["node"] == rain.hex]
    assert [p.reading["fcnt"] for p in rains] == [s["fcnt"] for s in rain.sent]
    assert all(p.topic == f"denen/v1/{GATEWAY}/readings/telemetry" for p in rains)
    for p, (_, rain_mm, _) in zip(rains, TYPHOON, strict=True):
        assert p.reading["values"]["rain_mm"] == pytest.approx(rain_mm, abs=0.011)
    gaps_s = [(b.reading["ts_us"] - a.reading["ts_us"]) / 1e6 for a, b in zip(rains, rains[1:])]
    assert all(REPORT_S <= g < REPORT_S + 5 for g in gaps_s), gaps_s
    assert sum(p.reading["values"]["rain_mm"] for p in rains) == pytest.approx(sum(r for _, r, _ in TYPHOON), abs=0.1)
    assert gw.stats.counters["alerts.river_stage.raised"] == 4
    schema = readings_schema()
    for topic, payload, _ in col.messages:
        if "/readings/" in topic:
            jsonschema.validate(json.loads(payload), schema)


def check_alert(p: Published, level_cm: float) -> None:
    """Fields of one river alert, as README "Alerts" describes them."""
    a, values = p.alert, p.reading["values"]
    if a["type"] == "river_stage":
        k = int(a["key"].rsplit(":", 1)[1])
        line = (STANDBY, CAUTION, EVACUATION, DANGER)[k - 1]
        assert a["severity"] == {1: "info", 2: "warning", 3: "emergency", 4: "emergency"}[k]
        assert a["unit"] == "cm" and values["value"] == pytest.approx(level_cm, abs=0.05)
        if a["state"] == "raised":
            assert values["raised"] == 1.0 and values["level"] == k and values["threshold"] == line
        else:
            assert values["raised"] == 0.0 and values["level"] == k - 1
            assert values["threshold"] == line - HYSTERESIS_CM
    else:
        assert a["type"] == "river_rise" and a["severity"] == "warning" and a["unit"] == "cm/h"
        if a["state"] == "raised":
            assert values["value"] >= RISE_CM_PER_H and values["threshold"] == RISE_CM_PER_H
        else:
            assert values["value"] < RISE_CM_PER_H / 2 and values["threshold"] == RISE_CM_PER_H / 2
