"""Edge alert rules: every rule with explicit timestamps (no sleeping, no wall clock)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.rules import (
    CLEARED,
    EMERGENCY,
    INFO,
    RAISED,
    WARNING,
    Alert,
    AlertTracker,
    NodeInfo,
    RiverRule,
    RiverStages,
    RuleEngine,
    RulesConfig,
    SlopeRule,
    lamp_for,
    node_infos,
    siren_for,
)

T0 = 1_764_000_000_000_000  # µs since the epoch, late 2025
S = 1_000_000  # µs per second
MIN = 60 * S
H = 3600 * S

RIVER = "00000301"
SLOPE = "00000401"
SOS = "00000101"
TRAP = "00000201"
TRAP2 = "00000202"

STAGES = {"standby": 100, "caution": 200, "evacuation": 350, "danger": 400}

NODES = {
    RIVER: NodeInfo("river-kawa", "water_level", 600),
    SLOPE: NodeInfo("slope-1", "tilt", 600),
    SOS: NodeInfo("sos-1", "sos", 3600),
    TRAP: NodeInfo("trap-north", "trap", 86400),
    TRAP2: NodeInfo("trap-south", "trap", 86400),
}


class Feed:
    """Builds readings as the gateway publishes them, with a frame counter per node."""

    def __init__(self, engine: RuleEngine) -> None:
        self.engine = engine
        self.fcnt: dict[str, int] = {}

    def reading(self, node: str, kind: str, ts_us: int, fcnt: int | None = None, **values: float) -> dict[str, Any]:
        if fcnt is None:
            fcnt = self.fcnt.get(node, 0) + 1
        self.fcnt[node] = max(fcnt, self.fcnt.get(node, 0))
        return {
            "id": f"gw-test/{node}/{fcnt}", "node": node, "name": None, "fcnt": fcnt, "kind": kind,
            "lane": "telemetry", "ts_us": ts_us, "clock": "synced", "radio": "lora0", "rssi": -90, "snr": 7.5,
            "auth": "mic", "receipt": False, "values": values,
        }

    def __call__(self, node: str, kind: str, ts_us: int, fcnt: int | None = None, **values: float) -> list[Alert]:
        return self.engine.on_reading(self.reading(node, kind, ts_us, fcnt, **values))

    def level(self, ts_us: int, level_cm: float, fcnt: int | None = None) -> list[Alert]:
        return self(RIVER, "water_level", ts_us, fcnt, level_cm=level_cm, battery_v=3.6)


def engine_with(start_us: int = T0, nodes: dict[str, NodeInfo] | None = None, **rules: Any) -> tuple[RuleEngine, Feed]:
    rules.setdefault("rivers", [{"node": RIVER, "stages_cm": STAGES, "hysteresis_cm": 5}])
    engine = RuleEngine(RulesConfig.model_validate(rules), NODES if nodes is None else nodes, start_us=start_us)
    return engine, Feed(engine)


def keys(alerts: list[Alert]) -> list[tuple[str, str]]:
    return [(a.key, a.state) for a in alerts]


# ---------------------------------------------------------------------------------------------------------------
# Config


def test_an_empty_section_gives_usable_defaults() -> None:
    config = RulesConfig.model_validate({})
    assert config.sos and config.trap and config.rivers == [] and config.slopes == []
    assert config.silence_factor == 3.0 and config.battery_low_v == 3.3 and config.repeat_s == 300
    assert config.siren == ["sos", "river_evacuation", "river_danger", "slope"]
    # Keys left empty in YAML (null) mean "none".
    assert RulesConfig.model_validate({"rivers": None, "slopes": None}).rivers == []
    # Every field states what it is (the lead mounts this section in the gateway config reference).
    for model in (RulesConfig, RiverRule, RiverStages, SlopeRule):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"


@pytest.mark.parametrize(
    ("rules", "fragment"),
    [
        ({"sirens": ["sos"]}, "sirens"),
        ({"rivers": [{"node": RIVER, "stages_cm": {**STAGES, "danger": 350}}]}, "increase strictly"),
        ({"rivers": [{"node": RIVER, "stages_cm": {**STAGES, "cautoin": 1}}]}, "cautoin"),
        ({"rivers": [{"node": RIVER, "stages_cm": STAGES}, {"node": RIVER.upper(), "stages_cm": STAGES}]},
         "already has a rule"),
        ({"rivers": [{"node": "301", "stages_cm": STAGES}]}, "8 hex digits"),
        ({"slopes": [{"node": SLOPE}]}, "neither max_deg nor rate_deg_per_h"),
        ({"siren": ["sos", "river_evac"]}, "unknown siren alert 'river_evac'"),
        ({"battery_low_v_by_kind": {"toaster": 2.0}}, "toaster"),
        ({"repeat_s": 0.2}, "repeat_s"),
    ],
)
def test_bad_rules_are_refused_with_a_message_naming_the_problem(rules: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        RulesConfig.model_validate(rules)
    assert fragment in str(info.value)


def test_node_ids_are_normalised_like_nodes_ids() -> None:
    config = RulesConfig.model_validate({
        "rivers": [{"node": "00000ABC", "stages_cm": STAGES}],
        "slopes": [{"node": 0x401, "max_deg": 5}],  # YAML hex 0x00000401 arrives as an int
    })
    assert config.rivers[0].node == "00000abc" and config.slopes[0].node == SLOPE


def test_node_infos_reads_config_nodes() -> None:
    class N:
        def __init__(self, id: str, name: str, kind: str, interval_s: int) -> None:  # noqa: A002
            self.id, self.name, self.kind, self.interval_s = id, name, kind, interval_s

    assert node_infos([N(TRAP, "trap-north", "trap", 86400)]) == {TRAP: NodeInfo("trap-north", "trap", 86400.0)}


# ---------------------------------------------------------------------------------------------------------------
# River stages


def test_rising_through_each_level_raises_one_alert_per_crossing_naming_the_japanese_level() -> None:
    engine, feed = engine_with()
    assert feed.level(T0, 80) == []
    seen: list[Alert] = []
    for i, (level, japanese) in enumerate(
        [(100, "水防団待機水位"), (200, "はん濫注意水位"), (352, "避難判断水位"), (400, "はん濫危険水位")], start=1
    ):
        [alert] = feed.level(T0 + i * 10 * MIN, level)
        assert (alert.type, alert.state, alert.level, alert.node) == ("river_stage", RAISED, i, RIVER)
        assert alert.key == f"river_stage:{RIVER}:{i}" and alert.id.startswith(alert.key + "#")
        assert japanese in alert.message and alert.value == level and alert.unit == "cm"
        assert alert.ts_us == T0 + i * 10 * MIN and alert.reading == f"gw-test/{RIVER}/{i + 1}"
        assert alert.name == "river-kawa"
        seen.append(alert)
    assert [a.severity for a in seen] == [INFO, WARNING, EMERGENCY, EMERGENCY]
    assert seen[2].message == "避難判断水位に到達 / reached evacuation decision level: 352 cm ≥ 350 cm"
    assert seen[2].threshold == 350
    assert len({a.id for a in seen}) == 4
    assert [a.key for a in engine.active()][:2] == [f"river_stage:{RIVER}:3", f"river_stage:{RIVER}:4"]


def test_a_jump_raises_every_stage_crossed_lowest_first_and_a_fall_clears_highest_first() -> None:
    engine, feed = engine_with()
    up = feed.level(T0, 401)
    assert [(a.level, a.state) for a in up] == [(1, RAISED), (2, RAISED), (3, RAISED), (4, RAISED)]
    down = feed.level(T0 + 10 * MIN, 50)
    assert [(a.key.rsplit(":", 1)[1], a.level, a.state) for a in down] == [
        ("4", 3, CLEARED), ("3", 2, CLEARED), ("2", 1, CLEARED), ("1", 0, CLEARED)
    ]
    # A clear shares its raise's key, type and severity.
    assert [(a.key, a.type, a.severity) for a in down[::-1]] == [(a.key, a.type, a.severity) for a in up]
    assert engine.active() == []


def test_hovering_at_a_threshold_does_not_chatter_and_clears_only_hysteresis_below() -> None:
    engine, feed = engine_with()
    feed.level(T0, 300)  # stages 1 and 2
    out: list[Alert] = []
    for i, level in enumerate([350, 349, 351, 346, 350.5, 345, 352, 345.1], start=1):
        out += feed.level(T0 + i * 10 * MIN, level)
    assert keys(out) == [(f"river_stage:{RIVER}:3", RAISED)]
    [cleared] = feed.level(T0 + 9 * 10 * MIN, 344.9)
    assert (cleared.key, cleared.state, cleared.level, cleared.threshold) == (f"river_stage:{RIVER}:3", CLEARED, 2, 345)
    assert "避難判断水位" in cleared.message
    # Back at exactly the line: raised again, as a new event with a new id.
    [again] = feed.level(T0 + 10 * 10 * MIN, 350)
    assert again.state == RAISED and again.id != out[0].id


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=500, allow_nan=False), min_size=1, max_size=60),
       st.floats(min_value=0, max_value=30))
def test_stage_state_always_matches_the_level_with_hysteresis(levels: list[float], hysteresis: float) -> None:
    engine, feed = engine_with(rivers=[{"node": RIVER, "stages_cm": STAGES, "hysteresis_cm": hysteresis}])
    thresholds = [0, 100, 200, 350, 400]
    last_state: dict[str, str] = {}
    for i, level in enumerate(levels):
        for alert in feed.level(T0 + i * MIN, level):
            # Raise and clear alternate per key, starting with a raise.
            assert last_state.get(alert.key, CLEARED) != alert.state
            last_state[alert.key] = alert.state
        active = {a.key for a in engine.active()}
        for k in range(1, 5):
            if level >= thresholds[k]:
                assert f"river_stage:{RIVER}:{k}" in active
            if level < thresholds[k] - hysteresis:
                assert f"river_stage:{RIVER}:{k}" not in active
            if f"river_stage:{RIVER}:{k}" in active and k > 1:
                assert f"river_stage:{RIVER}:{k - 1}" in active


def test_river_rules_ignore_other_nodes_and_readings_without_a_level() -> None:
    engine, feed = engine_with()
    assert feed("00000999", "water_level", T0, level_cm=999) == []
    assert feed(RIVER, "heartbeat", T0, battery_v=3.6) == []
    assert engine.active() == []


# ---------------------------------------------------------------------------------------------------------------
# Rate of rise


def river_with_rise(**extra: Any) -> dict[str, Any]:
    return {"node": RIVER, "stages_cm": STAGES, "rise_cm_per_h": 30, "rise_window_s": 3600, **extra}


def rising(feed: Any, t: int, level: float, step_cm: float) -> tuple[list[Alert], int, float]:
    """Eight reports 10 min apart, the level rising ``step_cm`` each time: the ``river_rise`` alerts they gave and
    the time and level after them."""
    out: list[Alert] = []
    for _ in range(8):
        out += [a for a in feed.level(t, level) if a.type == "river_rise"]
        t += 10 * MIN
        level += step_cm
    return out, t, level


def test_rate_of_rise_raises_over_the_window_and_clears_below_the_clear_fraction() -> None:
    engine, feed = engine_with(rivers=[river_with_rise(rise_clear_fraction=0.5)])
    # Rising 4 cm per 10 min = 24 cm/h: below 30 cm/h.
    slow, t, level = rising(feed, T0, 20.0, 4)
    assert slow == []
    # Now 6 cm per 10 min = 36 cm/h: raised once the hour-long window holds the faster rise.
    rise, t, level = rising(feed, t, level, 6)
    [raised] = rise
    assert raised.state == RAISED and raised.severity == WARNING and raised.unit == "cm/h"
    assert raised.value is not None and raised.value >= 30 and raised.threshold == 30
    assert "急上昇" in raised.message
    # 3 cm per 10 min = 18 cm/h: below 30 cm/h but above the clear line (0.5 x 30 = 15 cm/h): stays active.
    hold, t, level = rising(feed, t, level, 3)
    assert hold == []
    assert f"river_rise:{RIVER}" in {a.key for a in engine.active()}
    # 1 cm per 10 min = 6 cm/h: below 15 cm/h, clears.
    fall, t, level = rising(feed, t, level, 1)
    [cleared] = fall
    assert cleared.state == CLEARED and cleared.key == raised.key and cleared.value is not None
    assert cleared.value < 15


def test_a_noisy_jump_between_two_close_samples_is_not_a_rate() -> None:
    engine, feed = engine_with(rivers=[river_with_rise()])
    # 20 cm in one minute would be 1200 cm/h, but a minute is far less than half the hour-long window.
    assert feed.level(T0, 50) == []
    assert feed.level(T0 + MIN, 70) == []
    assert feed.level(T0 + 2 * MIN, 52) == []
    assert engine.active() == []


def test_a_gauge_back_on_daily_reports_clears_its_rise_alert() -> None:
    engine, feed = engine_with(rivers=[river_with_rise()])
    feed.level(T0, 50)
    feed.level(T0 + 30 * MIN, 90)
    assert f"river_rise:{RIVER}" in {a.key for a in engine.active()}
    # The next report a day later: measured against the last sample before the window (the only one there is).
    [cleared] = feed.level(T0 + 30 * MIN + 24 * H, 60)
    assert (cleared.type, cleared.state) == ("river_rise", CLEARED)


# ---------------------------------------------------------------------------------------------------------------
# Duplicates and out-of-order readings


def test_duplicate_and_older_readings_produce_no_alerts() -> None:
    engine, feed = engine_with(rivers=[river_with_rise()])
    first = feed.reading(RIVER, "water_level", T0, level_cm=120)
    [raised] = engine.on_reading(first)
    assert raised.level == 1
    assert engine.on_reading(first) == []  # exact duplicate (journal replay)
    assert feed.level(T0 + 60 * MIN, 360)  # stages 2 and 3
    # A late, older reading of a low level must not clear anything ...
    assert feed.level(T0 + 30 * MIN, 10, fcnt=1) == []
    # ... and an older high one must not raise anything (danger is 400 cm).
    assert feed.level(T0 + 45 * MIN, 405, fcnt=2) == []
    assert engine.stale == 3
    assert {a.key for a in engine.active()} == {f"river_stage:{RIVER}:{k}" for k in (1, 2, 3)} | {
        f"river_rise:{RIVER}"
    }


def test_a_clock_set_back_still_evaluates_new_frames_but_computes_no_rate_across_the_step() -> None:
    engine, feed = engine_with(rivers=[river_with_rise()])
    feed.level(T0, 50)
    feed.level(T0 + 40 * MIN, 55)
    # Newer frame, earlier time stamp: evaluated (stage 1 raised), but the rate window restarts, so the rise of
    # 75 cm is not divided by a negative or tiny time.
    out = feed.level(T0 - 10 * H, 130)
    assert keys(out) == [(f"river_stage:{RIVER}:1", RAISED)]
    assert feed.level(T0 - 10 * H + 10 * MIN, 131) == []
    # And an SOS on the stepped-back clock is never dropped.
    [sos] = feed(SOS, "sos", T0 - 10 * H, pressed=1)
    assert sos.type == "sos" and sos.state == RAISED


def test_a_node_whose_counter_restarted_is_still_heard() -> None:
    engine, feed = engine_with()
    feed(TRAP, "trap", T0, fcnt=5000, fired=0)
    [fired] = feed(TRAP, "trap", T0 + H, fcnt=1, fired=1)
    assert fired.type == "trap_fired"


# ---------------------------------------------------------------------------------------------------------------
# Slope


def test_tilt_beyond_max_on_either_axis_from_the_installation_zero_and_clear_with_hysteresis() -> None:
    engine, feed = engine_with(slopes=[{"node": SLOPE, "max_deg": 5, "hysteresis_deg": 0.5, "zero_y_deg": 2}])

    def tilt(ts: int, x: float, y: float) -> list[Alert]:
        return feed(SLOPE, "tilt", ts, tilt_x_deg=x, tilt_y_deg=y)

    assert tilt(T0, 4.9, 6.9) == []  # y is 4.9 from its zero
    [raised] = tilt(T0 + 10 * MIN, -1, -3.2)  # y is -5.2 from its zero: the sign does not matter
    assert (raised.type, raised.state, raised.severity, raised.unit) == ("slope_tilt", RAISED, EMERGENCY, "deg")
    assert raised.value == pytest.approx(5.2) and raised.threshold == 5 and " y " in raised.message
    assert tilt(T0 + 20 * MIN, 4.6, 0) == []  # 4.6 is above 5 - 0.5
    assert tilt(T0 + 30 * MIN, -5.0, 2) == []  # still (not re-raised)
    [cleared] = tilt(T0 + 40 * MIN, 4.4, 2)
    assert (cleared.key, cleared.state) == (raised.key, CLEARED)
    assert engine.siren_wanted() is False


def test_tilt_rate_over_the_window() -> None:
    engine, feed = engine_with(slopes=[{"node": SLOPE, "rate_deg_per_h": 1.0, "rate_window_s": 3600}])
    out: list[Alert] = []
    for i in range(7):  # 0.1° per 10 min = 0.6°/h on x
        out += feed(SLOPE, "tilt", T0 + i * 10 * MIN, tilt_x_deg=0.1 * i, tilt_y_deg=0)
    assert out == []
    for i in range(7, 14):  # y now moves 0.3° per 10 min = 1.8°/h
        out += feed(SLOPE, "tilt", T0 + i * 10 * MIN, tilt_x_deg=0.6, tilt_y_deg=-0.3 * (i - 6))
    [raised] = out
    assert (raised.type, raised.severity, raised.unit) == ("slope_rate", EMERGENCY, "deg/h")
    assert raised.value is not None and raised.value >= 1.0 and " y " in raised.message
    assert engine.siren_wanted()  # "slope" is in the default siren list
    rest: list[Alert] = []
    for i in range(14, 22):  # steady again
        rest += feed(SLOPE, "tilt", T0 + i * 10 * MIN, tilt_x_deg=0.6, tilt_y_deg=-2.1)
    assert keys(rest) == [(raised.key, CLEARED)]


# ---------------------------------------------------------------------------------------------------------------
# SOS and traps


def test_sos_pressed_is_an_emergency_with_the_position_and_cancel_clears_it() -> None:
    engine, feed = engine_with()
    [sos] = feed(SOS, "sos", T0, pressed=1, lat_deg=35.8123456, lon_deg=139.0987654, alt_m=812.4, battery_v=3.9)
    assert (sos.type, sos.state, sos.severity, sos.key) == ("sos", RAISED, EMERGENCY, f"sos:{SOS}")
    assert "35.81235" in sos.message and "139.09877" in sos.message and "SOS" in sos.message
    assert (sos.lat_deg, sos.lon_deg) == (35.8123456, 139.0987654)
    assert engine.siren_wanted() and engine.lamp_state() == "alarm"
    # Periodic positions while active are not new alerts.
    assert feed(SOS, "sos", T0 + MIN, pressed=1, lat_deg=35.8124, lon_deg=139.0988) == []
    [cancel] = feed(SOS, "sos", T0 + 5 * MIN, pressed=0)
    assert (cancel.key, cancel.type, cancel.state, cancel.severity) == (sos.key, "sos", CLEARED, EMERGENCY)
    assert "取消" in cancel.message and cancel.id != sos.id
    assert not engine.siren_wanted() and engine.lamp_state() == "ok"
    # A cancel with nothing active is not an alert.
    assert feed(SOS, "sos", T0 + 6 * MIN, pressed=0) == []


def test_sos_without_a_fix_says_so_and_sos_off_in_config_raises_nothing() -> None:
    _, feed = engine_with()
    [sos] = feed(SOS, "sos", T0, pressed=1)
    assert sos.lat_deg is None and "no GPS" in sos.message
    _, feed_off = engine_with(sos=False)
    assert feed_off(SOS, "sos", T0, pressed=1) == []


@pytest.mark.parametrize(("auth", "unsigned"), [("mic", False), ("local", False), ("none", True)])
def test_an_sos_without_a_verified_mic_says_unauthenticated(auth: str, unsigned: bool) -> None:
    """A Meshtastic radio or a node under unauthenticated: flag: anyone on the channel could have sent it, and the
    person reading the alert must know."""
    engine, feed = engine_with()
    reading = feed.reading(SOS, "sos", T0, pressed=1, lat_deg=35.8, lon_deg=139.1)
    reading["auth"] = auth
    [sos] = engine.on_reading(reading)
    assert ("未認証" in sos.message and "unauthenticated" in sos.message) is unsigned
    assert ("未認証" in sos.message or "unauthenticated" in sos.message) is unsigned
    assert sos.message.startswith("SOS発信") and "35.80000" in sos.message


def test_trap_fired_and_re_armed() -> None:
    engine, feed = engine_with()
    assert feed(TRAP, "trap", T0, fired=0) == []
    [fired] = feed(TRAP, "trap", T0 + H, fired=1, battery_v=3.5)
    assert (fired.type, fired.state, fired.severity, fired.name) == ("trap_fired", RAISED, WARNING, "trap-north")
    assert feed(TRAP, "trap", T0 + 2 * H, fired=1) == []
    assert not engine.siren_wanted() and engine.lamp_state() == "alarm"
    [armed] = feed(TRAP, "trap", T0 + 3 * H, fired=0)
    assert (armed.key, armed.state) == (fired.key, CLEARED) and "再設置" in armed.message
    _, feed_off = engine_with(trap=False)
    assert feed_off(TRAP, "trap", T0, fired=1) == []


# ---------------------------------------------------------------------------------------------------------------
# Silence


def test_a_node_never_heard_goes_silent_from_engine_start_and_clears_when_heard() -> None:
    nodes = {TRAP: NODES[TRAP], RIVER: NODES[RIVER]}
    engine, feed = engine_with(nodes=nodes, rivers=[])
    river_deadline = T0 + 3 * 600 * S
    assert engine.next_tick_us() == river_deadline
    assert engine.tick(river_deadline - 1) == []
    [silent] = engine.tick(river_deadline)
    assert (silent.type, silent.state, silent.severity, silent.node) == ("node_silent", RAISED, WARNING, RIVER)
    assert silent.value == 1800 and silent.threshold == 1800 and silent.unit == "s"
    assert silent.ts_us == river_deadline and "30 min" in silent.message
    assert engine.tick(river_deadline + H) == []  # raised once
    assert engine.next_tick_us() == T0 + 3 * 86400 * S  # the trap is next
    [back] = feed.level(river_deadline + H, 10)
    assert (back.key, back.state) == (silent.key, CLEARED) and "90 min" in back.message
    assert engine.next_tick_us() == river_deadline + H + 30 * MIN  # watched again from this frame


def test_each_frame_pushes_the_silence_deadline_and_the_deadline_heap_stays_one_entry_per_node() -> None:
    nodes = {f"{i:08x}": NodeInfo(f"n{i}", "weather", 600) for i in range(300)}
    engine, feed = engine_with(nodes=nodes, rivers=[])
    t = T0
    for minute in range(0, 120, 5):  # every node reports every 5 minutes for two hours
        t = T0 + minute * MIN
        for node in nodes:
            feed(node, "weather", t, temperature_c=20.0)
        assert engine.tick(t) == []
    # Only heap entries whose time has come are touched; re-pushed, never duplicated per frame.
    assert len(engine._heap) <= len(nodes)  # noqa: SLF001 - the bound is the point of this test
    last = t
    node0 = "00000000"
    feed(node0, "weather", last + 10 * MIN, temperature_c=20.0)  # one node keeps talking
    silent = engine.tick(last + 30 * MIN)
    assert len(silent) == 299 and node0 not in {a.node for a in silent}
    assert engine.next_tick_us() == last + 40 * MIN


def test_silence_kinds_limit_which_nodes_are_watched() -> None:
    engine, _ = engine_with(rivers=[], silence_kinds=["trap"])
    assert engine.next_tick_us() == T0 + 3 * 86400 * S
    assert {a.node for a in engine.tick(T0 + 3 * 86400 * S)} == {TRAP, TRAP2}
    assert engine.next_tick_us() is None


def test_a_trap_fires_at_night_and_another_traps_sensor_dies() -> None:
    engine, feed = engine_with(rivers=[], silence_kinds=["trap"])
    day = 86400 * S
    out: list[Alert] = []
    for d in range(3):  # both heartbeat daily
        out += feed(TRAP, "heartbeat", T0 + d * day, battery_v=3.6)
        out += feed(TRAP2, "heartbeat", T0 + d * day + H, battery_v=3.6)
    out += feed(TRAP, "trap", T0 + 2 * day + 20 * H, fired=1)
    for d in range(3, 7):  # TRAP keeps its heartbeat, TRAP2 is dead
        out += feed(TRAP, "heartbeat", T0 + d * day, battery_v=3.6)
        while (when := engine.next_tick_us()) is not None and when <= T0 + d * day:
            out += engine.tick(when)
    assert keys(out) == [(f"trap_fired:{TRAP}", RAISED), (f"node_silent:{TRAP2}", RAISED)]
    assert out[1].ts_us == T0 + 2 * day + H + 3 * day


# ---------------------------------------------------------------------------------------------------------------
# Battery and gateway events


def test_battery_low_with_hysteresis_and_per_kind_threshold() -> None:
    engine, feed = engine_with(rivers=[], battery_low_v_by_kind={"trap": 2.2})
    [low] = feed(SOS, "heartbeat", T0, battery_v=3.25)
    assert (low.type, low.severity, low.value, low.threshold, low.unit) == ("battery_low", INFO, 3.25, 3.3, "V")
    assert feed(SOS, "heartbeat", T0 + H, battery_v=3.35) == []  # not yet 3.3 + 0.1
    assert engine.lamp_state() == "ok"  # info does not light the alarm lamp
    [ok] = feed(SOS, "heartbeat", T0 + 2 * H, battery_v=3.4)
    assert (ok.key, ok.state) == (low.key, CLEARED)
    # A trap on 2 x AA: 2.5 V is fine for it, 2.1 V is low (the heartbeat kind uses the node's configured kind).
    assert feed(TRAP, "heartbeat", T0, battery_v=2.5) == []
    assert [a.type for a in feed(TRAP, "heartbeat", T0 + H, battery_v=2.1)] == ["battery_low"]


def test_journal_near_quota_with_hysteresis_and_module_lost_and_back() -> None:
    engine, _ = engine_with(rivers=[])
    assert engine.on_gateway_event("journal_usage", now_us=T0, pct=89.9) == []
    [near] = engine.on_gateway_event("journal_usage", now_us=T0 + 1, pct=93.1)
    assert (near.key, near.severity, near.node, near.ts_us) == ("journal_near_quota", WARNING, None, T0 + 1)
    assert "93.1 % ≥ 90 %" in near.message
    assert engine.on_gateway_event("journal_usage", now_us=T0 + 2, pct=86) == []
    [down] = engine.on_gateway_event("journal_usage", now_us=T0 + 3, pct=84.9)
    assert down.state == CLEARED

    [lost] = engine.on_gateway_event("module_lost", now_us=T0, radio="lora0", detail="port vanished")
    assert (lost.key, lost.type, lost.state) == ("module_lost:lora0", "module_lost", RAISED)
    assert "lora0" in lost.message and "port vanished" in lost.message
    assert engine.on_gateway_event("module_lost", now_us=T0 + 1, radio="lora0") == []
    assert engine.on_gateway_event("module_back", now_us=T0 + 2, radio="lora1") == []
    [back] = engine.on_gateway_event("module_back", now_us=T0 + 3, radio="lora0")
    assert (back.key, back.state) == (lost.key, CLEARED)
    assert engine.on_gateway_event("moon_phase", now_us=T0) == []
    with pytest.raises(ValueError, match="pct"):
        engine.on_gateway_event("journal_usage", now_us=T0)
    with pytest.raises(ValueError, match="radio"):
        engine.on_gateway_event("module_lost", now_us=T0)


def test_a_clock_step_moves_silence_deadlines_instead_of_silencing_every_node() -> None:
    engine, feed = engine_with(nodes={RIVER: NODES[RIVER]}, rivers=[])
    feed.level(T0, 10)
    step = 400 * 86400 * S  # NTP sync after booting with a stale clock
    engine.on_gateway_event("clock_step", now_us=T0 + step, delta_us=step)
    assert engine.tick(T0 + step + 29 * MIN) == []
    assert engine.next_tick_us() == T0 + step + 30 * MIN
    assert [a.type for a in engine.tick(T0 + step + 30 * MIN)] == ["node_silent"]


# ---------------------------------------------------------------------------------------------------------------
# Siren and lamp


def test_siren_and_lamp_are_pure_functions_of_the_active_alerts() -> None:
    engine, feed = engine_with()
    feed.level(T0, 210)  # standby (info) and caution (warning)
    assert not engine.siren_wanted() and engine.lamp_state() == "alarm"
    assert siren_for(engine.active(), ["river_caution"]) and not siren_for(engine.active(), ["river_evacuation"])
    feed.level(T0 + 10 * MIN, 351)
    assert engine.siren_wanted()
    # The stage names mean "this stage or higher": at danger, evacuation is still wanted.
    feed.level(T0 + 20 * MIN, 420)
    assert siren_for(engine.active(), ["river_evacuation"])
    active = engine.active()
    assert lamp_for([]) == "ok" and siren_for([], ["sos"]) is False
    assert lamp_for([a for a in active if a.severity == INFO]) == "ok"
    assert siren_for(active, ["river_stage"])
    feed.level(T0 + 30 * MIN, 344)
    assert not engine.siren_wanted()


def test_siren_alerts_are_the_active_alerts_that_want_it_most_severe_first() -> None:
    engine, feed = engine_with(siren=["sos", "river_caution"])
    feed.level(T0, 120)  # standby only
    assert engine.siren_alerts() == []
    feed.level(T0 + 10 * MIN, 210)  # caution
    assert [a.key for a in engine.siren_alerts()] == [f"river_stage:{RIVER}:2"]
    feed(SOS, "sos", T0 + 11 * MIN, pressed=1)
    assert [a.key for a in engine.siren_alerts()] == [f"sos:{SOS}", f"river_stage:{RIVER}:2"]
    assert engine.siren_wanted() == bool(engine.siren_alerts())


def test_a_higher_stage_wants_the_siren_by_itself_when_a_lower_stage_is_named() -> None:
    """Silencing is per alert: the danger stage must sound the siren on its own when only evacuation is named,
    or a siren silenced for the evacuation stage would stay silent at danger."""
    engine, feed = engine_with(siren=["river_evacuation"])
    feed.level(T0, 360)  # up to evacuation
    feed.level(T0 + 10 * MIN, 420)  # danger
    assert [a.level for a in engine.siren_alerts()] == [3, 4]
    danger = max(engine.active(), key=lambda a: a.level or 0)
    assert danger.level == 4 and siren_for([danger], ["river_evacuation"]) and not siren_for([danger], ["sos"])


def test_the_ack_key_is_type_and_node_so_every_stage_of_one_gauge_shares_it() -> None:
    engine, feed = engine_with()
    feed.level(T0, 360)
    assert {a.ack_key for a in engine.active()} == {f"river_stage:{RIVER}"}
    assert {a.key for a in engine.active()} == {f"river_stage:{RIVER}:{k}" for k in (1, 2, 3)}
    [lost] = engine.on_gateway_event("module_lost", now_us=T0, radio="lora0")
    assert lost.node is None and lost.ack_key == lost.key == "module_lost:lora0"
    [sos] = feed(SOS, "sos", T0 + 1, pressed=1)
    assert sos.ack_key == sos.key == f"sos:{SOS}"


# ---------------------------------------------------------------------------------------------------------------
# Snapshot and restore


def restart(engine: RuleEngine, start_us: int, **rules: Any) -> tuple[RuleEngine, Feed, list[Alert]]:
    snap = json.loads(json.dumps(engine.snapshot()))  # it must survive JSON
    fresh, feed = engine_with(start_us=start_us, **rules)
    orphans = fresh.restore(snap)
    return fresh, feed, orphans


def test_a_restart_neither_re_raises_nor_forgets() -> None:
    engine, feed = engine_with(rivers=[river_with_rise()])
    feed(SOS, "sos", T0, pressed=1, lat_deg=35.0, lon_deg=139.0)
    feed.level(T0, 300)
    feed.level(T0 + 30 * MIN, 360)
    before = engine.active()
    ids_before = {a.id for a in before}
    fresh, feed2, orphans = restart(engine, T0 + 31 * MIN, rivers=[river_with_rise()])
    feed2.fcnt = dict(feed.fcnt)
    assert orphans == []
    assert fresh.active() == before and fresh.siren_wanted()
    # The replayed last reading is a duplicate; the same SOS still active is not raised again.
    assert fresh.on_reading(feed.reading(RIVER, "water_level", T0 + 30 * MIN, fcnt=feed.fcnt[RIVER],
                                         level_cm=360)) == []
    assert feed2(SOS, "sos", T0 + 32 * MIN, pressed=1) == []
    # The stage carries on from 3 and the sequence continues: new ids never collide with old ones.
    [danger] = feed2.level(T0 + 40 * MIN, 400)
    assert danger.level == 4 and danger.id not in ids_before
    assert int(danger.id.rsplit("#", 1)[1]) > max(int(i.rsplit("#", 1)[1]) for i in ids_before)
    # The rate history survived too: the rise from 300 to 400 cm in 40 min is still seen as such.
    assert f"river_rise:{RIVER}" in {a.key for a in fresh.active()}


def test_silence_after_a_restart_counts_only_time_the_gateway_was_listening() -> None:
    engine, feed = engine_with(nodes={TRAP: NODES[TRAP]}, rivers=[])
    feed(TRAP, "heartbeat", T0, battery_v=3.6)
    engine.tick(T0 + 12 * H)  # the snapshot is as of the last time the engine saw
    outage = 2 * 86400 * S
    fresh, _, _ = restart(engine, T0 + 12 * H + outage, nodes={TRAP: NODES[TRAP]}, rivers=[])
    assert fresh.next_tick_us() == T0 + 3 * 86400 * S + outage
    assert fresh.tick(T0 + 3 * 86400 * S + outage - 1) == []


def test_conditions_whose_rule_was_removed_are_cleared_on_restore() -> None:
    engine, feed = engine_with(slopes=[{"node": SLOPE, "max_deg": 5}])
    feed.level(T0, 120)
    feed(SLOPE, "tilt", T0, tilt_x_deg=6, tilt_y_deg=0)
    feed(TRAP, "trap", T0, fired=1)
    fresh, _, orphans = restart(engine, T0 + MIN, rivers=[])
    assert sorted((a.key, a.state) for a in orphans) == [
        (f"river_stage:{RIVER}:1", CLEARED), (f"slope_tilt:{SLOPE}", CLEARED)
    ]
    assert "removed" in orphans[0].message
    assert [a.key for a in fresh.active()] == [f"trap_fired:{TRAP}"]


@pytest.mark.parametrize(
    "broken",
    [
        {"schema": "other/1"},
        {"schema": "denen.rules/1", "taken_us": T0, "seq": 1, "active": [{"id": "x"}], "nodes": {}},
        {"schema": "denen.rules/1", "taken_us": "now", "seq": 1, "active": [], "nodes": {}},
        {"schema": "denen.rules/1", "taken_us": T0, "seq": 1, "active": [], "nodes": {RIVER: {"last_ts_us": 1}}},
        {"schema": "denen.rules/1", "taken_us": T0, "seq": 1, "active": [], "nodes": {},
         "river_history": {RIVER: [[T0]]}},
    ],
)
def test_a_malformed_snapshot_is_refused_and_leaves_the_engine_unchanged(broken: dict[str, Any]) -> None:
    engine, feed = engine_with()
    feed.level(T0, 150)
    before = engine.snapshot()
    with pytest.raises(ValueError, match="snapshot|alert"):
        engine.restore(broken)
    assert engine.snapshot() == before


# ---------------------------------------------------------------------------------------------------------------
# AlertTracker


def alert(n: int, severity: str = WARNING) -> Alert:
    return Alert(id=f"k{n}#{n}", key=f"k{n}", type="trap_fired", state=RAISED, severity=severity, node=TRAP,
                 name="trap-north", level=None, value=None, threshold=None, message="わなが作動 / trap fired",
                 ts_us=T0)


@pytest.fixture
def tracker() -> Iterator[AlertTracker]:
    yield AlertTracker(repeat_s=300, deadline_s=1000)


def test_tracker_repeats_until_confirmed(tracker: AlertTracker) -> None:
    tracker.add(alert(1), T0)
    tracker.add(alert(1), T0 + 10)  # same id again: no change
    assert len(tracker) == 1 and tracker.next_due_us() == T0 + 300 * S
    assert tracker.due(T0 + 300 * S - 1) == []
    assert tracker.due(T0 + 300 * S) == [alert(1)]
    assert tracker.next_due_us() == T0 + 600 * S
    assert "k1#1" in tracker and "nope" not in tracker
    assert tracker.confirm("k1#1") is True
    assert "k1#1" not in tracker
    assert tracker.confirm("k1#1") is False and tracker.confirm("nope") is False
    assert tracker.due(T0 + 600 * S) == [] and tracker.next_due_us() is None and tracker.expired == 0


def test_tracker_drops_and_counts_an_alert_at_its_deadline(tracker: AlertTracker) -> None:
    tracker.add(alert(1), T0)
    assert tracker.due(T0 + 300 * S) == [alert(1)]
    assert tracker.due(T0 + 600 * S) == [alert(1)]
    assert tracker.due(T0 + 900 * S) == [alert(1)]
    assert tracker.next_due_us() == T0 + 1000 * S  # the deadline, not 1200 s
    assert tracker.due(T0 + 1000 * S) == []
    assert tracker.expired == 1 and len(tracker) == 0 and tracker.next_due_us() is None


def test_tracker_after_a_long_sleep_sends_once_and_most_severe_first(tracker: AlertTracker) -> None:
    tracker.add(alert(1, INFO), T0)
    tracker.add(alert(2, EMERGENCY), T0 + S)
    tracker.add(alert(3, WARNING), T0 + 2 * S)
    assert [a.id for a in tracker.due(T0 + 800 * S)] == ["k2#2", "k3#3", "k1#1"]
    assert tracker.next_due_us() == T0 + 1000 * S  # min(800 + 300, deadline 1000)


def test_tracker_snapshot_round_trips_through_json(tracker: AlertTracker) -> None:
    tracker.add(alert(1), T0)
    tracker.add(alert(2), T0 + S)
    tracker.due(T0 + 300 * S)
    tracker.confirm("k1#1")
    tracker.add(alert(3), T0 + 400 * S)
    tracker.add(alert(4), T0 + 401 * S)
    tracker.due(T0 + 1001 * S)  # k2 expires
    snap = json.loads(json.dumps(tracker.snapshot()))
    again = AlertTracker(repeat_s=300, deadline_s=1000)
    again.restore(snap)
    assert again.expired == 1 and again.pending() == [alert(3), alert(4)]
    assert again.next_due_us() == tracker.next_due_us() == T0 + 1001 * S + 300 * S
    with pytest.raises(ValueError):
        again.restore({"schema": "denen.alert_tracker/1", "expired": 0, "entries": [{"alert": {}}]})
    assert again.pending() == [alert(3), alert(4)]


def test_alerts_round_trip_through_dicts() -> None:
    a = alert(7)
    assert Alert.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    with pytest.raises(ValueError, match="unknown"):
        Alert.from_dict({**a.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="state"):
        Alert.from_dict({**a.to_dict(), "state": "maybe"})


def test_forget_drops_an_unknown_nodes_state_and_keeps_configured_ones() -> None:
    """Forged node ids under unknown_nodes: accept must not grow the rules' state once the decoder drops them."""
    engine, feed = engine_with()
    for i in range(500):
        feed(f"7{i:07x}", "trap", T0 + i, fired=0.0, battery_v=3.3)
    feed.level(T0 + 1000, 100.0)
    assert len(engine._state) >= 500
    for i in range(500):
        engine.forget(f"7{i:07x}")
    engine.forget(RIVER)
    assert set(engine._state) == set(NODES)  # only the configured nodes remain
    assert engine._state[RIVER].last_ts_us == T0 + 1000
