"""A forester presses SOS in a valley while the gateway's backhaul is down.

What the people involved live through:

* the forester's button sends SOS (asking for a receipt); the gateway has no backhaul, yet it raises the SOS
  alert at once and sounds its local siren, so anyone near the gateway hears it;
* nothing can reach the broker, and no receipt goes back: the call is not yet through;
* the backhaul returns: the SOS is the first reading the broker gets, ahead of the telemetry that piled up during
  the outage; its alert follows; only after the broker acknowledged the SOS does the receipt frame go back to the
  forester's button through the module (``AT+PSEND``);
* the alert is repeated until the town hall's backend confirms it on ``cmd/alert-ack``, and not after;
* the forester cancels (pressed=0): the alert clears and the siren falls silent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import jsonschema
import pytest

from drivers.codec.frame import build_receipt
from tests.support.contract import readings_schema
from tests.support.gateway_config import mock_gpio, rules_yaml
from tests.support.polling import wait_until
from tests.support.scenario_rig import GATEWAY, LAMP_PIN, Published, ScenarioNode, ScenarioRig

pytestmark = pytest.mark.broker

#: Bound on "at once": from the frame on the serial line to the alert at the broker or the siren on the pin (s).
PROMPT_S = 2.0
REPEAT_S = 1  # rules.repeat_s: the smallest the config allows, so a repeat shows within the test

RULES = rules_yaml(repeat_s=REPEAT_S, deadline_s=3600)
GPIO = mock_gpio()
POSITION = {"lat_deg": 35.7861, "lon_deg": 139.0402, "alt_m": 642.0}


def is_sos_alert(state: str, node: ScenarioNode) -> Callable[[Published], bool]:
    return lambda p: (p.reading["kind"] == "alert" and p.alert["type"] == "sos" and p.alert["state"] == state
                      and p.alert["node"] == node.hex)


def test_sos_pressed_while_offline_sounds_locally_goes_first_on_return_and_is_confirmed(rig: ScenarioRig) -> None:
    caller = ScenarioNode(0x00000101, "sos", "sos-forester-1", interval_s=3600)
    gauge = ScenarioNode(0x00000601, "weather", "weather-valley-1", interval_s=600)
    gw = rig.start(nodes=[caller, gauge], rules=RULES, gpio=GPIO)
    sim, col = rig.sim, rig.collector

    # The PUBACK of the SOS is what triggers the receipt: note what the module had sent at that moment.
    transmitted_at_ack: list[list[bytes]] = []
    on_sos_acked = gw.edge.on_sos_acked

    def spy(readings: list[dict]) -> None:
        transmitted_at_ack.append(list(sim.transmitted))
        on_sos_acked(readings)

    gw.edge.on_sos_acked = spy  # type: ignore[method-assign]

    assert wait_until(lambda: rig.lamp_state() == "ok" and rig.pin(LAMP_PIN).state, 5), rig.lamp_state()
    assert not rig.siren_sounding()

    # -- the backhaul goes down -----------------------------------------------------------------------------
    rig.broker.stop()
    assert wait_until(lambda: not gw.link.connected, 10), "the gateway did not notice the broker was gone"
    weather = {"temperature_c": 14.5, "humidity_pct": 97.0, "pressure_hpa": 996.1, "battery_v": 3.6}
    for _ in range(12):
        rig.send(gauge, weather)
    assert wait_until(lambda: len(rig.journaled()) >= 12, 10), "the telemetry backlog was not journaled"

    # -- SOS in the valley -------------------------------------------------------------------------------------
    t_sos = rig.send(caller, {"pressed": 1.0, **POSITION, "battery_v": 3.7}, receipt=True, rssi=-121, snr=-11.0)
    sos_id = caller.reading_id()
    assert wait_until(rig.siren_sounding, PROMPT_S, interval=0.01), "the siren did not sound while offline"
    siren_after = time.monotonic() - t_sos
    assert siren_after < PROMPT_S
    assert rig.lamp_state() == "alarm" and rig.lamp_blinks(), "the lamp does not blink the alarm"
    # Raised at once, offline: the SOS and its alert are durable in the journal, the alert decided by the SOS.
    journaled = rig.journaled()
    alert_rows = [r for r in journaled if r["kind"] == "alert"]
    assert alert_rows, "the SOS alert was not journaled while offline"
    assert {r["alert"]["id"] for r in alert_rows} == {alert_rows[0]["alert"]["id"]}  # one event (no repeats journaled offline)
    assert alert_rows[0]["alert"]["type"] == "sos" and alert_rows[0]["alert"]["state"] == "raised"
    assert alert_rows[0]["alert"]["reading"] == sos_id
    assert [r["id"] for r in journaled if r["kind"] == "sos"] == [sos_id]
    # Telemetry after the SOS joins the backlog too.
    for _ in range(3):
        rig.send(gauge, weather)
    assert wait_until(lambda: len(rig.journaled()) >= 12 + 2 + 3, 10)
    # Nothing went out: no reading reached the broker, and no receipt was sent for an SOS the broker lacks.
    assert col.readings() == []
    assert sim.transmitted == []
    assert rig.siren_sounding()

    # -- the backhaul returns ----------------------------------------------------------------------------------
    rig.broker.start()
    t_back = time.monotonic()
    col.wait_reading(lambda p: p.reading["id"] == gauge.reading_id(), timeout=15)  # the whole backlog is through
    got = col.readings()
    assert got[0].reading["id"] == sos_id, [p.reading["id"] for p in got[:3]]
    assert got[0].topic == f"denen/v1/{GATEWAY}/readings/sos"
    assert got[0].at - t_back < 5.0, "the SOS took too long after the broker returned"
    first_telemetry = next(i for i, p in enumerate(got) if p.reading["kind"] == "weather")
    raised = [i for i, p in enumerate(got) if is_sos_alert("raised", caller)(p)]
    assert raised and raised[0] < first_telemetry, "the SOS alert came after the backlog"
    assert {p.reading["id"] for p in got if p.reading["kind"] == "weather"} == {
        gauge.reading_id(s["fcnt"]) for s in gauge.sent}
    sos = got[0].reading
    assert sos["receipt"] is True and sos["values"]["pressed"] == 1.0
    assert sos["values"]["lat_deg"] == pytest.approx(POSITION["lat_deg"], abs=1e-4)
    alert = got[raised[0]]
    assert alert.topic == f"denen/v1/{GATEWAY}/readings/alarm"
    assert alert.alert["severity"] == "emergency" and alert.alert["name"] == caller.name
    assert alert.alert["reading"] == sos_id and alert.reading["ts_us"] == sos["ts_us"]
    assert alert.reading["values"]["lat_deg"] == pytest.approx(POSITION["lat_deg"], abs=1e-4)
    assert alert.alert["id"].startswith(f"{GATEWAY}:sos:{caller.hex}#")

    # The receipt goes back to the forester's button, through the module, once the broker acknowledged the SOS.
    receipt = build_receipt(caller.node_id, 1, caller.key)
    assert sim.wait_for(lambda: receipt in sim.transmitted, 5), sim.transmitted
    assert sim.transmitted == [receipt]
    assert transmitted_at_ack and transmitted_at_ack[0] == [], "a receipt went out before the broker's PUBACK"
    assert sim.wait_for(lambda: not sim.tx_busy and sim.rx_mode == "continuous_tx", 5), "receive did not stay on"

    # -- repeated until the backend confirms ---------------------------------------------------------------------
    alert_id = alert.alert["id"]
    # A repeat is a copy sent a repeat period after the first one reached the backend (copies journaled
    # while offline arrive together with the first, so they do not count).
    def repeated(_: object) -> bool:
        copies = [p for p in col.alerts() if p.alert["id"] == alert_id]
        return any(p.at >= copies[0].at + 0.5 * REPEAT_S for p in copies)

    assert col.wait_for(repeated, 5 * REPEAT_S), "the unconfirmed alert was not repeated"
    copies = [p for p in col.alerts() if p.alert["id"] == alert_id]
    assert all(p.reading == copies[0].reading for p in copies), "a repeat differs from the first copy"
    rig.confirm_alerts(alert_id)
    assert wait_until(lambda: gw.stats.counters["alerts.confirmed"] >= 1, 5), "the confirmation was not taken"
    t_confirmed = time.monotonic()

    # -- the forester cancels ---------------------------------------------------------------------------------------
    t_cancel = rig.send(caller, {"pressed": 0.0, **POSITION, "battery_v": 3.7})
    cleared = col.wait_reading(is_sos_alert("cleared", caller))
    assert cleared.at - t_cancel < PROMPT_S
    assert cleared.alert["key"] == alert.alert["key"] and cleared.alert["severity"] == "emergency"
    assert cleared.reading["values"]["raised"] == 0.0 and cleared.alert["reading"] == caller.reading_id()
    assert wait_until(lambda: not rig.siren_sounding(), PROMPT_S, interval=0.01), "the siren kept sounding"
    assert wait_until(lambda: rig.lamp_state() == "ok", PROMPT_S)
    # The clear is repeated in its turn (it is unconfirmed), which takes at least one repeat period; by then a
    # repeat of the confirmed raise would have shown.
    cleared_id = cleared.alert["id"]
    assert col.wait_for(lambda _: len([p for p in col.alerts() if p.alert["id"] == cleared_id]) >= 2, 5 * REPEAT_S)
    assert time.monotonic() - t_confirmed > REPEAT_S
    late = [p.at - t_confirmed for p in col.alerts() if p.alert["id"] == alert_id and p.at > t_confirmed + 0.5]
    assert late == [], f"the confirmed alert was repeated {len(late)} more time(s)"
    rig.confirm_alerts(cleared_id)
    assert wait_until(lambda: gw.stats.counters["alerts.confirmed"] >= 2, 5)

    # One SOS, one raise, one clear (each possibly repeated), one receipt; every message as the README says.
    assert [p.alert["state"] for p in col.first_alerts()] == ["raised", "cleared"]
    assert sim.transmitted == [receipt]
    schema = readings_schema()
    for topic, payload, _ in col.messages:
        if "/readings/" in topic:
            jsonschema.validate(json.loads(payload), schema)


def test_while_offline_the_lamp_shows_no_backhaul_and_alerts_are_not_repeated_into_the_journal(
        rig: ScenarioRig) -> None:
    caller = ScenarioNode(0x00000101, "sos", "sos-forester-1", interval_s=3600)
    gw = rig.start(nodes=[caller], rules=RULES, gpio=GPIO)
    assert wait_until(lambda: rig.lamp_state() == "ok", 5)
    rig.broker.stop()
    assert wait_until(lambda: not gw.link.connected, 10)
    # The installer sees the backhaul is down: the lamp blinks slowly (README / agent/gateway/edge.py update_outputs).
    assert wait_until(lambda: rig.lamp_state() == "no_backhaul", 3), (
        f"lamp {rig.lamp_state()!r}, mqtt.disconnects={gw.stats.counters['mqtt.disconnects']}")
    # Offline the first copy of an alert waits in the journal; repeats are for an unconfirmed *delivered* alert
    # (agent/gateway/edge.py due(): "Repeats only while the link is up").
    rig.send(caller, {"pressed": 1.0, **POSITION, "battery_v": 3.7}, receipt=True)
    assert wait_until(rig.siren_sounding, PROMPT_S)
    deadline = time.monotonic() + 2.5 * REPEAT_S
    wait_until(lambda: time.monotonic() >= deadline, 5 * REPEAT_S)  # a negative check needs time to pass
    assert len([r for r in rig.journaled() if r["kind"] == "alert"]) == 1
