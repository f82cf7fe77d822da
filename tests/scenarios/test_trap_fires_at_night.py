"""A trap fires at night, and another trap's sensor dies.

What the hunters' association lives through:

* trap east-1 snaps shut: a ``trap_fired`` warning reaches the backend within seconds and the gateway's status lamp
  blinks the alarm; the siren stays silent (a caught boar is no emergency for the village);
* trap west-2's sensor stops sending (battery dead, or knocked off its post): once it has been silent for
  ``silence_factor`` x its ``interval_s``, a ``node_silent`` warning goes out, because an unchecked trap must be
  patrolled by hand; not a moment earlier;
* the patrol fixes west-2's sensor: it is heard again and ``node_silent`` clears;
* the hunters empty and re-arm east-1: ``trap_fired`` clears and the lamp is steady again.

Trap west-2 reports every second here (``interval_s: 1``, ``silence_factor: 3``), so the silence takes 3 s instead
of three days.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import jsonschema
import pytest

from tests.support.contract import readings_schema
from tests.support.gateway_config import mock_gpio, rules_yaml
from tests.support.polling import wait_until
from tests.support.scenario_rig import GATEWAY, LAMP_PIN, SIREN_PIN, Published, ScenarioNode, ScenarioRig

pytestmark = pytest.mark.broker

PROMPT_S = 2.0  # bound from a frame on the serial line to its alert at the broker, in seconds
SILENCE_FACTOR = 3
WEST_INTERVAL_S = 1
SILENT_AFTER_S = SILENCE_FACTOR * WEST_INTERVAL_S

RULES = rules_yaml(silence_factor=SILENCE_FACTOR, battery_low_v_by_kind={"trap": 2.2})
GPIO = mock_gpio(siren_off_s=None)


def alert_of(type_: str, state: str, node: ScenarioNode) -> Callable[[Published], bool]:
    return lambda p: (p.reading["kind"] == "alert" and p.alert["type"] == type_ and p.alert["state"] == state
                      and p.alert["node"] == node.hex)


def test_a_fired_trap_and_a_dead_trap_sensor_each_alert_and_clear(rig: ScenarioRig) -> None:
    east = ScenarioNode(0x00000201, "trap", "trap-east-1", interval_s=60)
    west = ScenarioNode(0x00000202, "trap", "trap-west-2", interval_s=WEST_INTERVAL_S)
    gw = rig.start(nodes=[east, west], rules=RULES, gpio=GPIO)
    col = rig.collector
    assert wait_until(lambda: rig.lamp_state() == "ok" and rig.pin(LAMP_PIN).state, 5), rig.lamp_state()

    # West-2's last heartbeat: from here on its sensor is dead.
    t_west_last = rig.send(west, {"battery_v": 2.9, "battery_pct": 35.0}, kind="heartbeat")
    west_last = col.wait_reading(lambda p: p.reading["id"] == west.reading_id())
    assert west_last.reading["kind"] == "heartbeat"

    # -- east-1 fires ---------------------------------------------------------------------------------------------
    t_fired = rig.send(east, {"fired": 1.0, "battery_v": 3.0})
    fired = col.wait_reading(alert_of("trap_fired", "raised", east))
    assert fired.at - t_fired < PROMPT_S, f"trap_fired took {fired.at - t_fired:.2f} s"
    assert fired.topic == f"denen/v1/{GATEWAY}/readings/alarm"
    assert fired.alert["severity"] == "warning" and fired.alert["name"] == east.name
    assert fired.alert["reading"] == east.reading_id() and fired.reading["values"]["raised"] == 1.0
    trap = col.wait_reading(lambda p: p.reading["id"] == east.reading_id())
    assert trap.reading["kind"] == "trap" and trap.reading["values"]["fired"] == 1.0
    assert trap.topic == f"denen/v1/{GATEWAY}/readings/alarm"  # a trap frame travels at alarm priority
    assert wait_until(lambda: rig.lamp_state() == "alarm", PROMPT_S), rig.lamp_state()
    assert rig.lamp_blinks(), "the lamp does not blink the alarm"
    assert not rig.siren_sounding()

    # -- west-2 goes silent -----------------------------------------------------------------------------------------
    silent = col.wait_reading(alert_of("node_silent", "raised", west), timeout=SILENT_AFTER_S + 10)
    # Not before silence_factor x interval_s after its last frame (stamped when the gateway read it, which was
    # after t_west_last), and promptly after.
    assert silent.at - t_west_last >= SILENT_AFTER_S, f"raised after only {silent.at - t_west_last:.2f} s"
    assert silent.at - t_west_last < SILENT_AFTER_S + PROMPT_S, f"raised {silent.at - t_west_last:.2f} s after"
    assert silent.alert["severity"] == "warning" and silent.alert["name"] == west.name
    assert silent.reading["values"]["threshold"] == SILENT_AFTER_S
    assert silent.reading["values"]["value"] >= SILENT_AFTER_S
    assert silent.reading["ts_us"] - west_last.reading["ts_us"] >= SILENT_AFTER_S * 1_000_000
    # East-1 spoke a moment ago and reports every minute: it is not silent.
    assert not [p for p in col.alerts() if p.alert["type"] == "node_silent" and p.alert["node"] == east.hex]
    assert rig.lamp_state() == "alarm"

    # -- the patrol revives west-2 ----------------------------------------------------------------------------------
    t_heard = rig.send(west, {"battery_v": 3.1, "battery_pct": 100.0}, kind="heartbeat")
    heard = col.wait_reading(alert_of("node_silent", "cleared", west))
    assert heard.at - t_heard < PROMPT_S, f"node_silent cleared {heard.at - t_heard:.2f} s after the frame"
    assert heard.alert["key"] == silent.alert["key"] and heard.alert["reading"] == west.reading_id()
    assert heard.reading["values"]["raised"] == 0.0 and heard.reading["values"]["value"] >= SILENT_AFTER_S

    # -- the hunters re-arm east-1 ----------------------------------------------------------------------------------
    t_armed = rig.send(east, {"fired": 0.0, "battery_v": 3.0})
    armed = col.wait_reading(alert_of("trap_fired", "cleared", east))
    assert armed.at - t_armed < PROMPT_S, f"trap_fired cleared {armed.at - t_armed:.2f} s after the frame"
    assert armed.alert["key"] == fired.alert["key"] and armed.alert["reading"] == east.reading_id()
    assert wait_until(lambda: rig.lamp_state() == "ok", PROMPT_S), rig.lamp_state()
    assert wait_until(lambda: rig.pin(LAMP_PIN).state, 1), "the lamp is not steady on"

    # The whole night, in order, each event once (repeats are 5 minutes apart by default).
    events = [(p.alert["type"], p.alert["state"], p.alert["node"]) for p in col.alerts()][:4]
    assert events == [
        ("trap_fired", "raised", east.hex),
        ("node_silent", "raised", west.hex),
        ("node_silent", "cleared", west.hex),
        ("trap_fired", "cleared", east.hex),
    ]
    # West-2 may fall silent again after its last frame, which is right; nothing else was alerted.
    later = [(p.alert["type"], p.alert["state"], p.alert["node"]) for p in col.alerts()][4:]
    assert set(later) <= {("node_silent", "raised", west.hex)}, later
    # The siren never sounded: trap alerts are not in rules.siren.
    assert all(not s.state for s in rig.pin(SIREN_PIN).states), "the siren sounded for a trap"
    assert gw.stats.counters["alerts.trap_fired.raised"] == 1 and gw.stats.counters["alerts.node_silent.cleared"] == 1
    schema = readings_schema()
    for topic, payload, _ in col.messages:
        if "/readings/" in topic:
            jsonschema.validate(json.loads(payload), schema)
