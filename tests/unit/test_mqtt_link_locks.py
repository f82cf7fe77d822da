"""The MQTT link never waits for paho's locks while holding its own: paho calls on_disconnect with its message lock
held (a CONNACK whose resends fail to write), and on_disconnect takes the link's lock. A core publishing in that
moment while holding the link's lock deadlocked both threads for good (seen once under load: the agent neither
read frames nor stopped on SIGTERM)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import parse_config
from agent.gateway.publisher import MqttLink
from tests.support.gateway_config import gateway_yaml


def test_a_publish_during_pahos_on_disconnect_under_its_message_lock_does_not_deadlock(tmp_path: Path) -> None:
    cfg = parse_config(gateway_yaml(port="loop://", mqtt_port=1883, journal=tmp_path / "j.db"))
    link = MqttLink(cfg.mqtt, cfg.gateway.id, version="test")
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="lock-test",
                         protocol=MQTTProtocolVersion.MQTTv5)
    link._client, link._connected = client, True  # a session as the link thread sets it up
    holding = threading.Event()

    def paho_connack_resend_fails() -> None:
        # What paho's _handle_connack does: its message lock held, a write fails, on_disconnect is called.
        with client._out_message_mutex:
            holding.set()
            time.sleep(0.3)  # the core publishes meanwhile
            link._on_disconnect(client, None, mqtt.DisconnectFlags(False),
                                ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"), None)

    paho = threading.Thread(target=paho_connack_resend_fails, daemon=True)
    core = threading.Thread(target=lambda: link.publish_best_effort("denen/v1/gw/state", b"{}"), daemon=True)
    paho.start()
    assert holding.wait(5)
    core.start()
    paho.join(5)
    core.join(5)
    assert not paho.is_alive() and not core.is_alive(), "the core and the MQTT thread deadlocked"
    assert link._connected is False
