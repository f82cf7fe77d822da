"""Test-side MQTT helpers: the broker launcher lives in agent.dev.devbroker (the demo uses it too)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.dev.devbroker import Mosquitto, free_port

__all__ = ["Collector", "Mosquitto", "free_port"]


class Collector:
    """A subscriber that records every message (topic, payload bytes, retain flag) for assertions."""

    def __init__(self, broker: Mosquitto, topic: str = "#", *, client_id: str = "test-collector",
                 persistent: bool = False) -> None:
        """Subscribe to ``topic`` with QoS 1.

        With ``persistent`` the broker keeps the session (and queues messages) while the collector is away, across
        broker restarts, and paho reconnects by itself: nothing published meanwhile is missed.
        """
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self._topic = topic
        self._subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self._topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.05, 0.5)
        props = None
        if persistent:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.client.connect(broker.host, broker.port, clean_start=not persistent, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise RuntimeError("collector could not subscribe")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes, bool]]], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
