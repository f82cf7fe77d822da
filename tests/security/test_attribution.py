"""Attack 3 of issue 10: a gateway writes its readings into another municipality's dashboards.

The bridge used to take ``site`` from the payload, and dashboards and alert rules group by ``site``. Here a gateway
with a valid login publishes, on its own topics, batches that claim the site "victim-town", on a real Mosquitto, to
a real in-process :class:`~agent.bridge.bridge.Bridge` configured with a gateway registry (``gateways: {file:
..., unknown: ...}``) and writing to a real InfluxDB 1.6.7. Every point must carry the registry's site, the claim
is counted (``notes.site_mismatch``); a gateway the registry does not know is written under site ``unknown`` and
counted (``accept``) or dead-lettered (``refuse``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.bridge import Bridge, DeadLetterStore, parse_bridge_config
from agent.dev.devbroker import Mosquitto
from tests.bridge._helpers import T0_US, Publisher, batch, bridge_config_text, reading, topic, v1_sink
from tests.support.polling import wait_until
from tests.support.servers import DB
from tests.support.influx import InfluxDB1

pytestmark = pytest.mark.broker

ATTACKER = "gw-okutama-01"
NEIGHBOUR = "gw-tanba-traps-01"
STRANGER = "gw-stranger-07"  # valid login, not in the registry
REGISTRY = """\
gateways:
  gw-okutama-01:
    site: okutama
    name: 奥多摩 林道ゲートウェイ
    municipality: 奥多摩町
  gw-tanba-traps-01:
    site: tanba
"""


def _every_kind(gateway: str, site: str) -> list[tuple[str, bytes]]:
    """An SOS, a gateway_health and an alert reading, and an online status document, as ``gateway`` publishes them,
    each batch claiming ``site``."""
    sos = reading(gateway, 0x101, 1, "sos", {"pressed": 1.0, "battery_v": 3.7})
    health = reading(gateway, 0, 2, "gateway_health", {"uptime_s": 60.0}, name=gateway, rssi=None, snr=None)
    health.update(node="gateway", id=f"{gateway}/gateway/2", lane="diagnostics")
    alert = reading(gateway, 0, 3, "alert", {"raised": 1.0}, name=gateway, rssi=None, snr=None)
    alert.update(node="gateway", id=f"{gateway}/gateway/3", lane="sos")
    alert["alert"] = {"id": f"{gateway}:sos:00000101#1", "key": "sos:00000101", "type": "sos", "state": "raised",
                      "severity": "emergency", "node": "00000101", "name": "sos-1", "message": "SOS"}
    status = json.dumps({"schema": "denen.status/1", "gateway": gateway, "state": "online", "agent": "0.1.0",
                         "ts_us": T0_US}).encode()
    return [(topic(gateway, "sos"), batch(gateway, [sos, alert], site=site)),
            (topic(gateway, "diagnostics"), batch(gateway, [health], site=site)),
            (f"denen/v1/{gateway}/status", status)]


@pytest.fixture(params=["accept", "refuse"])
def bridge(request: pytest.FixtureRequest, tmp_path: Path, broker: Mosquitto,
           influx: InfluxDB1) -> Iterator[Bridge]:
    text = bridge_config_text(broker=broker, sink=v1_sink(influx.url), dead_letter=tmp_path / "dead.db")
    # This test's own registry and policy, in place of any the helper gives.
    text = re.sub(r"^gateways:\n(?:[ #].*\n)*", "", text, flags=re.M)
    registry = tmp_path / "attribution-gateways.yaml"
    registry.write_text(REGISTRY, encoding="utf-8")
    text += f"gateways:\n  file: {registry}\n  unknown: {request.param}\n"
    b = Bridge(parse_bridge_config(text))
    b.start()
    assert b.wait_subscribed(10), "the bridge did not subscribe"
    yield b
    b.stop()


def _points(influx: InfluxDB1) -> list[dict]:
    out = []
    for m in ("sos", "node_health", "gateway_health", "alert", "gateway_status"):
        out += influx.rows(f'SELECT * FROM "{m}" GROUP BY *', DB)
    return out


def test_a_gateway_cannot_write_into_another_site_and_an_unknown_one_follows_the_policy(
        bridge: Bridge, broker: Mosquitto, influx: InfluxDB1) -> None:
    policy = bridge.registry.unknown
    pub = Publisher(broker, client_id="attacker")
    try:
        pub.publish(_every_kind(ATTACKER, "victim-town") + _every_kind(STRANGER, "tanba")
                    + _every_kind(NEIGHBOUR, "tanba"))
    finally:
        pub.close()
    messages = 9
    assert wait_until(lambda: bridge.counters().get("messages_acked", 0) == messages, 20), bridge.counters()
    # Per gateway: sos + node_health + alert, gateway_health, gateway_status = 5 points.
    expected_points = 5 * (3 if policy == "accept" else 2)
    assert wait_until(lambda: len(_points(influx)) == expected_points, 10), _points(influx)
    points = _points(influx)

    sites = {(p["_name"], p["gateway"]): p["site"] for p in points}
    assert {s for (_, gw), s in sites.items() if gw == ATTACKER} == {"okutama"}  # never "victim-town"
    assert {s for (_, gw), s in sites.items() if gw == NEIGHBOUR} == {"tanba"}
    assert {p["_name"] for p in points if p["gateway"] == ATTACKER} == {"sos", "node_health", "gateway_health",
                                                                         "alert", "gateway_status"}
    assert "victim-town" not in {r["value"] for r in influx.rows('SHOW TAG VALUES WITH KEY = "site"', DB)}
    [status] = [p for p in points if p["_name"] == "gateway_status" and p["gateway"] == ATTACKER]
    assert status["name"] == "奥多摩 林道ゲートウェイ" and status["municipality"] == "奥多摩町"

    counters = bridge.counters()
    # Two batches of the attacker claimed victim-town, and two of the stranger claimed tanba (not its site either,
    # but an unknown gateway is counted as that, once per message).
    assert counters.get("notes.site_mismatch", 0) == 2
    dead = DeadLetterStore(bridge.config.dead_letter.path)
    try:
        if policy == "accept":
            assert {s for (_, gw), s in sites.items() if gw == STRANGER} == {"unknown"}
            assert counters.get("notes.unknown_gateway", 0) == 3
            assert dead.count() == 0
        else:
            assert not any(p["gateway"] == STRANGER for p in points)
            assert counters.get("dead_letters.unknown_gateway", 0) == 3
            items = dead.items("unknown_gateway")
            assert len(items) == 3 and {i.topic.split("/")[2] for i in items} == {STRANGER}
            assert all(i.kind == "payload" and STRANGER in i.detail for i in items)
    finally:
        dead.close()
