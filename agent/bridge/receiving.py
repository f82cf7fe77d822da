"""The bridge's network-thread half: the MQTT v5 client, its callbacks, and each message converted to lines as it
arrives (:meth:`Receiving._on_message`), handed to the writer thread through the inbox as an
:class:`InboxMessage`. Why it is built this way: :mod:`agent.bridge.bridge`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent import systemd
from agent.bridge.config import BridgeConfig
from agent.bridge.health import HealthMonitor
from agent.bridge.lineproto import Serializer
from agent.bridge.mqttclient import new_client
from agent.bridge.schema import Converted, Reject
from agent.i18n import N_, _

__all__ = ["TOO_LARGE_KEEP", "InboxMessage", "Receiving"]

# The bridge's one logger, whichever of its modules writes: operators and tests filter on it.
log = logging.getLogger("agent.bridge.bridge")

#: Bytes of an oversized payload kept in its dead letter (enough to see what it was).
TOO_LARGE_KEEP = 64 * 1024

_CONNECT_HINTS = {
    133: N_("mqtt.client_id was refused by the broker"),
    134: N_("check mqtt.username and mqtt.password / password_file of the bridge"),
    135: N_("the broker does not allow this user to connect: check its ACL and password file"),
    136: N_("the broker is not available"),
}
_SUBSCRIBE_HINTS = {
    0x87: N_("the broker's ACL must let the bridge's login subscribe to {topic}; the shipped one allows the group "
             "denen-bridge only (deploy/backend/mosquitto/acl)"),
    0x8F: N_("the broker rejects this topic filter; check mqtt.group and mqtt.topic_prefix"),
    0x9E: N_("this broker does not support shared subscriptions ($share/...)"),
}


@dataclass(slots=True)
class InboxMessage:
    """One MQTT message as the network thread hands it to the writer."""

    session: int
    mid: int
    qos: int
    topic: str
    converted: Converted
    dup: bool = False
    body: bytes = b""  # the converted lines, encoded and joined by newlines


class Receiving:
    """The network-thread half of :class:`agent.bridge.bridge.Bridge` (which sets these attributes)."""

    config: BridgeConfig
    health: HealthMonitor
    _rx: Counter[str]
    _stop: threading.Event
    _inbox: queue.SimpleQueue[InboxMessage | None]
    _serializer: Serializer
    _ack_lock: threading.Lock
    _session: int
    _unacked: int
    _last_rx: float
    _subscribed: threading.Event
    _unsubscribed: threading.Event
    _health_wake: threading.Event
    _ready_sent: bool
    _retiring: bool
    _broker_unreachable_logged: bool

    def _new_client(self) -> mqtt.Client:
        cfg = self.config.mqtt
        client = new_client(cfg, cfg.effective_client_id())
        client.manual_ack_set(True)
        # The bridge publishes only retained node states, at QoS 0, which this bound does not count (paho counts
        # QoS 1 and 2 only): Bridge._publish_node_state bounds them itself. Kept as a guard: a QoS 1 publish added
        # later waits here for its PUBACK at most 1,000 at a time, the rest refused (MQTT_ERR_QUEUE_SIZE).
        client.max_queued_messages_set(1000)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_message = self._on_message
        return client

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Properties | None) -> None:
        cfg = self.config.mqtt
        if reason.is_failure:
            hint = _CONNECT_HINTS.get(reason.value)
            log.error("%s", _("MQTT: {host}:{port} refused the bridge: {reason}").format(
                host=cfg.host, port=cfg.port, reason=reason) + (f" ({_(hint)})" if hint else ""))
            return
        self._broker_unreachable_logged = False
        self.health.broker_connected = True
        log.info("%s", _("MQTT: connected to {host}:{port} (session present: {present})").format(
            host=cfg.host, port=cfg.port, present=bool(getattr(flags, "session_present", False))))
        if self._retiring:
            client.unsubscribe(list(cfg.subscriptions()))
            return
        # Mosquitto 2.0 restores a persistent session's queue after a restart but not its shared subscriptions
        # (tests/integration/test_bridge_rolling.py): subscribing on every connect covers that and a lost session store.
        options = SubscribeOptions(qos=1)
        client.subscribe([(topic, options) for topic in cfg.subscriptions()])

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if not self._broker_unreachable_logged:
            # Once per outage; paho keeps retrying with backoff (mqtt.reconnect_min_s .. reconnect_max_s).
            self._broker_unreachable_logged = True
            log.warning("%s", _("MQTT: cannot reach the broker at {host}:{port}; retrying (check mqtt.host, "
                                "mqtt.port, mqtt.tls)").format(host=self.config.mqtt.host, port=self.config.mqtt.port))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
                      properties: Properties | None) -> None:
        failed = False
        for topic, rc in zip(self.config.mqtt.subscriptions(), reason_codes, strict=False):
            if rc.is_failure:
                failed = True
                hint = _SUBSCRIBE_HINTS.get(rc.value)
                log.error("%s", _("MQTT: subscription to {topic} refused: {reason}").format(topic=topic, reason=rc)
                          + (f" ({_(hint).format(topic=topic)})" if hint else ""))
        if not failed:
            log.info("%s", _("MQTT: subscribed to {topics}").format(topics=", ".join(self.config.mqtt.subscriptions())))
            self._subscribed.set()
            if not self._ready_sent:
                # systemd (Type=notify) counts the bridge started once it takes messages.
                self._ready_sent = True
                systemd.ready()
            self._health_wake.set()

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
                        properties: Properties | None) -> None:
        log.info("%s", _("MQTT: unsubscribed (retiring): {reasons}").format(
            reasons=", ".join(str(rc) for rc in reason_codes)))
        self._unsubscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                       properties: Properties | None) -> None:
        with self._ack_lock:
            self._session += 1
            self._unacked = 0  # what was not acknowledged comes again on the next connection
        self._subscribed.clear()
        self._unsubscribed.clear()
        self.health.broker_connected = False
        self._health_wake.set()
        if not self._stop.is_set():
            log.warning("%s", _("MQTT: disconnected from {host}:{port} ({reason}); reconnecting, unacknowledged "
                                "messages will come again").format(host=self.config.mqtt.host,
                                                                    port=self.config.mqtt.port, reason=reason))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        rx = self._rx
        rx["messages"] += 1
        self._last_rx = time.monotonic()
        if msg.dup:
            rx["messages_redelivered"] += 1
        if self._stop.is_set():
            return  # not acknowledged: the broker sends it again to the next bridge run
        topic = msg.topic
        converted, body = self._convert(topic, msg.payload)
        self.health.note_message(converted.gateway, converted.readings)
        with self._ack_lock:
            self._unacked += 1
            session = self._session
        self._inbox.put(InboxMessage(session, msg.mid, msg.qos, topic, converted, bool(msg.dup), body))

    def _convert(self, topic: str, payload: bytes) -> tuple[Converted, bytes]:
        """One message to lines and their encoded body; never raises, whatever the bytes."""
        limit = self.config.limits.max_message_bytes
        if len(payload) > limit:
            self._rx["messages_too_large"] += 1
            return Converted(rejects=[Reject(
                "too_large", f"the message has {len(payload)} bytes, more than limits.max_message_kb "
                f"({limit} bytes); its first {min(len(payload), TOO_LARGE_KEEP)} bytes are kept",
                payload[:TOO_LARGE_KEEP])]), b""
        try:
            converted = self._serializer.convert(topic, payload)
        except Exception:  # noqa: BLE001 - a bug in our converter must not kill paho's thread; keep the payload
            self._rx["convert_errors"] += 1
            converted = Converted(rejects=[Reject("internal_error", traceback.format_exc(limit=5), payload)])
            return converted, b""
        try:
            body = "\n".join(converted.lines).encode()
        except UnicodeEncodeError as exc:
            # The converter lets no such text through; if one ever does, the message is kept, not the bridge.
            self._rx["encode_errors"] += 1
            return Converted(rejects=[Reject("invalid_text", f"a line cannot be encoded as UTF-8: {exc!r}",
                                             payload)], gateway=converted.gateway), b""
        return converted, body
