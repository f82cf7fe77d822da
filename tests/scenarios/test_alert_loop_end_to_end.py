"""The alert loop end to end, every part real: a river gauge on a simulated RAK3172 (pty) -> the agent with a
gpiozero MockFactory siren -> Mosquitto -> ``denen bridge`` -> InfluxDB 1.6.7; and back: a signed link opened in
headless Chromium at phone width -> ``denen console`` -> ``cmd/alert-ack`` and ``cmd/siren-silence`` -> the agent.

The story of issue 11: the river rises while the backhaul is down and the siren sounds at once, offline. The
backhaul returns: the retained state topic and the database (the fleet dashboard's ``gateway_state``) show the
siren and for which alert. A person opens the link from the notification on a phone and confirms: the gateway
stops repeating within one ``repeat_s`` and says so; the same person silences the siren from the page. Every
action is audited (``alert_ack``) and the gateway's answers are in the database (``command_result``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.bridge import Bridge
from agent.bridge.config import parse_bridge_config
from agent.console.config import load_console_config
from agent.console.service import ConsoleService
from agent.dev.devbroker import Mosquitto, free_port
from tests.bridge._helpers import bridge_config_text, v1_sink
from tests.console._rig import chromium, console_yaml
from tests.support.influx import InfluxDB1
from tests.support.polling import wait_until
from tests.support.registry import write_registry
from tests.support.gateway_config import mock_gpio, river, rules_yaml
from tests.support.scenario_rig import GATEWAY, PREFIX, WAIT_S, ScenarioNode, ScenarioRig

pytestmark = pytest.mark.broker

DB = "denen"
SITE = "kawa-town"
REPEAT_S = 2.0
KEY = "river_stage:00000301"
RULES = rules_yaml(river("00000301"), repeat_s=REPEAT_S, silence_kinds=[])
GPIO = mock_gpio()


@pytest.fixture
def backend(tmp_path: Path, broker: Mosquitto, influx: InfluxDB1) -> Iterator[dict[str, Any]]:
    """The bridge and the console, both with the gateway registered under SITE."""
    text = bridge_config_text(broker=broker, sink=v1_sink(influx.url), dead_letter=tmp_path / "bridge" / "dead.db")
    # bridge_config_text put the test gateways' registry beside the dead-letter store; this gateway's site instead.
    write_registry(tmp_path / "bridge" / "gateways.yaml", {GATEWAY: SITE})
    bridge = Bridge(parse_bridge_config(text))
    bridge.start()
    assert bridge.wait_subscribed(WAIT_S)
    cfg = console_yaml(tmp_path / "console", broker_port=broker.port, http_port=free_port(), influx_url=influx.url,
                       retry_s=1.0, give_up_s=60.0)
    write_registry(tmp_path / "console" / "gateways.yaml", {GATEWAY: SITE})
    console = ConsoleService(load_console_config(cfg))
    console.start()
    assert console.link.wait_ready(WAIT_S)
    driver = chromium(tmp_path / "chromium")
    driver.set_page_load_timeout(15)
    try:
        yield {"bridge": bridge, "console": console, "browser": driver}
    finally:
        driver.quit()
        console.stop()
        bridge.stop()


def outcome(browser: Any) -> str | None:
    """The result page's outcome, or None while the page is still loading (or is another page)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    try:
        return browser.find_element(By.ID, "result").get_attribute("data-outcome")
    except WebDriverException:
        return None


def last(influx: InfluxDB1, measurement: str, field: str, where: str = "") -> Any:
    rows = influx.rows(f'SELECT last("{field}") FROM "{measurement}" WHERE "gateway" = \'{GATEWAY}\'{where}', DB)
    return rows[0]["last"] if rows else None


def test_river_rises_offline_staff_acknowledge_on_a_phone_and_silence_the_siren(
        tmp_path: Path, broker: Mosquitto, influx: InfluxDB1, backend: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    rig = ScenarioRig(tmp_path / "field", broker)
    try:
        river = ScenarioNode(0x301, "water_level", "river-kawa")
        rig.start(nodes=[river], rules=RULES, gpio=GPIO)

        # The backhaul goes down; the river rises past the evacuation stage: the siren sounds at once, offline.
        broker.stop()
        assert wait_until(lambda: rig.gw is not None and not rig.gw.link.connected, WAIT_S)
        rig.send(river, {"level_cm": 80.0, "battery_v": 3.9})
        rig.send(river, {"level_cm": 262.0, "battery_v": 3.9})
        assert wait_until(rig.siren_sounding, WAIT_S), "the siren did not sound offline"

        # The backhaul returns: the retained state and the database show the siren and its alert.
        broker.start()
        assert wait_until(lambda: last(influx, "gateway_state", "siren_on") == 1.0, 30), "no gateway_state point"
        assert last(influx, "gateway_state", "siren_alert") == KEY
        assert influx.rows(f"SELECT last(siren_on) FROM gateway_state WHERE site = '{SITE}'", DB)
        assert wait_until(lambda: last(influx, "alert", "raised", " AND \"type\" = 'river_stage'") == 1.0, WAIT_S)
        stage_ids = {p.alert["id"] for p in rig.collector.first_alerts() if p.alert["key"].startswith(KEY)}
        assert len(stage_ids) == 3  # standby, caution, evacuation

        # A person opens the notification's signed link on a phone and confirms.
        console: ConsoleService = backend["console"]
        browser = backend["browser"]
        url = console.url_for(GATEWAY, KEY, recipient="山田 太郎")
        browser.get(url)
        assert wait_until(lambda: "避難判断水位" in browser.find_element(By.TAG_NAME, "body").text, WAIT_S)
        assert browser.execute_script("return document.scrollingElement.scrollWidth <= innerWidth")
        confirmed = time.monotonic()
        browser.find_element(By.ID, "confirm").click()
        assert wait_until(lambda: outcome(browser) == "stopped", 30), browser.find_element(By.TAG_NAME, "body").text

        # The gateway stopped repeating within one repeat_s of the confirmation.
        time.sleep(REPEAT_S * 2.5)
        late = [p for p in rig.collector.alerts() if p.alert["id"] in stage_ids and p.at > confirmed + REPEAT_S]
        assert late == [], f"{len(late)} repeats after the acknowledgement"
        assert rig.siren_sounding(), "acknowledging does not silence the siren by itself"

        # The siren is silenced from the same page.
        browser.get(url)
        browser.find_element(By.ID, "silence").click()
        assert wait_until(lambda: outcome(browser) == "silenced", 30), browser.find_element(By.TAG_NAME, "body").text
        assert wait_until(lambda: not rig.siren_sounding(), WAIT_S)
        assert wait_until(lambda: last(influx, "gateway_state", "siren_on") == 0.0, 30)

        # Who did what, and what the gateway answered, is in the database.
        assert wait_until(lambda: len(influx.rows(f"SELECT * FROM alert_ack WHERE gateway = '{GATEWAY}'", DB)) >= 4,
                          30)
        audit = influx.rows(f"SELECT * FROM alert_ack WHERE gateway = '{GATEWAY}'", DB)
        actions = {(r["action"], r["by"] or "", r["result"] or "") for r in audit}
        assert ("ack", "山田 太郎", "") in actions and ("ack", "", "stopped") in actions, audit
        assert ("silence", "山田 太郎", "") in actions and ("silence", "", "silenced") in actions, audit
        assert all(r["site"] == SITE for r in audit)
        results = influx.rows(f"SELECT * FROM command_result WHERE gateway = '{GATEWAY}'", DB)
        assert {(r["command"], r["outcome"]) for r in results} >= {("alert-ack", "stopped"),
                                                                   ("siren-silence", "silenced")}, results
        state = json.loads(next(p for t, p, r in reversed(rig.collector.messages) if t == f"{PREFIX}/{GATEWAY}/state"))
        assert state["alerts"][0]["acknowledged_by"] == "山田 太郎" and state["siren"]["silenced"] == [KEY]
    finally:
        rig.close()
