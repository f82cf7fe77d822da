"""The gateway's side of the alert loop on real parts: a simulated RAK3172 on a pty, the agent, a real Mosquitto and
gpiozero MockFactory pins for the lamp and the siren.

A river rises past the evacuation stage: the siren sounds, and the retained state topic shows it with the alert's
key. The backend (here a plain MQTT client, as the console would) silences the siren for that alert and
acknowledges it by key: each command is answered on the results topic, the siren stops, and the repeats stop
within one ``repeat_s``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.dev.devbroker import Mosquitto
from tests.support.broker import Collector
from tests.support.gateway_config import mock_gpio, river, rules_yaml
from tests.support.polling import wait_until
from tests.support.scenario_rig import (
    GATEWAY,
    PREFIX,
    WAIT_S,
    ScenarioNode,
    ScenarioRig,
    rig_fixture,
)

pytestmark = pytest.mark.broker

REPEAT_S = 2.0
KEY = "river_stage:00000301"
RULES = rules_yaml(river("00000301"), repeat_s=REPEAT_S, silence_kinds=[])
GPIO = mock_gpio()


@pytest.fixture
def rig(tmp_path: Path, broker: Mosquitto) -> Iterator[ScenarioRig]:
    yield from rig_fixture(tmp_path, broker)


def docs(rig: ScenarioRig, what: str) -> list[tuple[float, dict[str, Any]]]:
    """Documents the backend received on ``<prefix>/<gateway>/<what>``, with their monotonic arrival times."""
    with rig.collector._cond:
        pairs = list(zip(rig.collector.arrivals, rig.collector.messages, strict=True))
    return [(at, json.loads(payload)) for at, (topic, payload, _) in pairs if topic == f"{PREFIX}/{GATEWAY}/{what}"]


def wait_doc(rig: ScenarioRig, what: str, match: Any, *, after: float = 0.0,
             timeout: float = WAIT_S) -> tuple[float, dict[str, Any]]:
    """The first ``what`` document that arrived after ``after`` (monotonic s) and that ``match`` accepts."""
    found: list[tuple[float, dict[str, Any]]] = []

    def seen(_: object) -> bool:
        found[:] = [(at, d) for at, d in docs(rig, what) if at > after and match(d)][:1]
        return bool(found)

    assert wait_until(lambda: seen(None), timeout), f"no matching {what} document; got {docs(rig, what)}"
    return found[0]


def command(rig: ScenarioRig, name: str, doc: dict[str, Any]) -> float:
    """Publish a command as the console does (QoS 1); returns the monotonic time it was sent."""
    at = time.monotonic()
    info = rig.collector.client.publish(f"{PREFIX}/{GATEWAY}/cmd/{name}", json.dumps(doc), qos=1)
    info.wait_for_publish(WAIT_S)
    return at


def test_river_siren_shows_in_state_is_silenced_and_acknowledged_remotely(rig: ScenarioRig,
                                                                          broker: Mosquitto) -> None:
    river = ScenarioNode(0x301, "water_level", "river-kawa")
    rig.start(nodes=[river], rules=RULES, gpio=GPIO)
    at_connect, first = wait_doc(rig, "state", lambda d: True)
    assert first["schema"] == "denen.state/1" and first["siren"]["on"] is False and first["alerts"] == []

    rig.send(river, {"level_cm": 80.0, "battery_v": 3.9})
    rig.send(river, {"level_cm": 262.0, "battery_v": 3.9})  # standby, caution and evacuation at once
    _, sounding = wait_doc(rig, "state", lambda d: d["siren"]["on"])
    assert sounding["siren"] == {"configured": True, "on": True, "why": "alert", "alert": KEY, "silenced": []}
    assert sounding["lamp"] == {"configured": True, "state": "alarm"}
    [alert] = sounding["alerts"]
    assert alert["key"] == KEY and alert["severity"] == "emergency" and alert["value"] == 262.0
    assert alert["repeating"] is True and alert["acknowledged_by"] is None
    assert rig.siren_sounding()

    # The state is retained: a backend that connects now gets it at once.
    late = Collector(broker, f"{PREFIX}/{GATEWAY}/state", client_id="late-console")
    try:
        assert late.wait_for(lambda m: any(r and json.loads(p)["siren"]["on"] for _, p, r in m), WAIT_S)
    finally:
        late.close()

    # The alerts repeat every repeat_s while nobody acknowledges them.
    stage_ids = {p.alert["id"] for p in rig.collector.first_alerts() if p.alert["key"].startswith(KEY)}
    assert len(stage_ids) == 3
    assert wait_until(lambda: len([p for p in rig.collector.alerts() if p.alert["id"] in stage_ids]) >= 6,
                      REPEAT_S * 3), "the stage alerts did not repeat"

    silenced_at = command(rig, "siren-silence", {"key": KEY, "request_id": "s-1", "by": "duty officer",
                                                 "via": "console"})
    _, result = wait_doc(rig, "results", lambda d: d["request_id"] == "s-1")
    assert result["command"] == "siren-silence" and result["by"] == "duty officer" and result["via"] == "console"
    assert result["results"] == [{"target": KEY, "outcome": "silenced"}]
    assert not rig.siren_sounding()
    _, quiet = wait_doc(rig, "state", lambda d: d["siren"]["silenced"] == [KEY], after=silenced_at)
    assert quiet["siren"]["on"] is False and quiet["siren"]["why"] is None

    sent = command(rig, "alert-ack", {"keys": [KEY], "request_id": "a-1", "by": "duty officer", "via": "console"})
    answered, ack = wait_doc(rig, "results", lambda d: d["request_id"] == "a-1")
    assert ack["results"] == [{"target": KEY, "outcome": "stopped"}]
    time.sleep(REPEAT_S * 2.5)
    late_repeats = [p for p in rig.collector.alerts() if p.alert["id"] in stage_ids and p.at > sent + REPEAT_S]
    assert late_repeats == [], "repeats went on after the acknowledgement"
    _, acked = wait_doc(rig, "state", lambda d: d["alerts"][0]["acknowledged_by"] == "duty officer", after=sent)
    assert acked["alerts"][0]["repeating"] is False

    # Asked again, the gateway says so and changes nothing; an unknown key is answered as such.
    command(rig, "alert-ack", {"keys": [KEY, "sos:0badc0de"], "request_id": "a-2"})
    _, again = wait_doc(rig, "results", lambda d: d["request_id"] == "a-2")
    assert again["results"] == [{"target": KEY, "outcome": "already_acknowledged"},
                                {"target": "sos:0badc0de", "outcome": "not_active"}]
    command(rig, "siren-silence", {"key": KEY, "request_id": "s-2"})
    _, not_sounding = wait_doc(rig, "results", lambda d: d["request_id"] == "s-2")
    assert not_sounding["results"] == [{"target": KEY, "outcome": "not_sounding"}]

    # The danger stage is a new alert: the siren sounds again.
    rose = rig.send(river, {"level_cm": 305.0, "battery_v": 3.9})
    _, danger = wait_doc(rig, "state", lambda d: d["siren"]["on"], after=rose)
    assert danger["siren"] == {"configured": True, "on": True, "why": "alert", "alert": KEY, "silenced": []}
    assert danger["alerts"][0]["repeating"] and danger["alerts"][0]["value"] == 305.0 and rig.siren_sounding()

    # A hostile command is answered as invalid and counted; the gateway carries on.
    rig.collector.client.publish(f"{PREFIX}/{GATEWAY}/cmd/alert-ack", b'{"keys": "x", "request_id": "h-1"}',
                                 qos=1).wait_for_publish(WAIT_S)
    rig.collector.client.publish(f"{PREFIX}/{GATEWAY}/cmd/alert-ack", b"\xff" * 5000, qos=1).wait_for_publish(WAIT_S)
    command(rig, "test-chirp", {"request_id": "t-1"})
    _, bad = wait_doc(rig, "results", lambda d: d["request_id"] == "h-1")
    assert bad["results"][0]["outcome"] == "invalid"
    _, chirp = wait_doc(rig, "results", lambda d: d["request_id"] == "t-1")
    assert chirp["results"] == [{"target": None, "outcome": "chirped"}]
    assert rig.gw is not None and rig.gw.stats.counters["cmd.bad"] == 2
    assert at_connect < answered
