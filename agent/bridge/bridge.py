"""The bridge process: MQTT shared subscription in, InfluxDB writes out, acknowledgements only after the write.

Threads and hand-offs::

    paho network thread                          writer thread
    ───────────────────                          ─────────────
    on_message: convert to lines ──inbox──▶  batch (max_lines / max_messages / max_wait_ms)
                                              → WritePolicy.write (retries, dead-letters refused lines)
                                              → DeadLetterStore.add (one transaction)
                                              → client.ack(mid) for every message of the batch, in order

Converting in the network thread lets it run while the writer thread waits for the database's answer (the HTTP
wait releases the GIL), so both halves of the work overlap on two cores.

Why nothing is lost:

* The session is persistent (MQTT v5 ``clean_start=False`` and a session expiry), QoS 1, and paho's automatic
  acknowledgement is off (``manual_ack_set(True)``). A message is acknowledged only after the database accepted its
  lines, or after what can never be written sits in the dead-letter store. Whatever the bridge holds when it dies
  (SIGKILL, power cut) or the database fails is still unacknowledged, and the broker sends it again.
* An acknowledgement goes only to the connection that delivered the message: message ids are per connection, so a
  message of an earlier connection is written (harmless) but not acknowledged; the broker sends it again on the new
  connection, and the second write overwrites the first.
* The broker stops sending when ``2 * batch.max_messages`` messages are unacknowledged (Receive Maximum, sent in
  CONNECT), which bounds memory while the database is down.

Why no gateway can stop it (every gateway login is assumed to be in hostile hands):

* A message larger than ``limits.max_message_kb`` is not converted: it is dead-lettered (content cut) and
  acknowledged; the broker is asked not to send such packets at all (MQTT v5 Maximum Packet Size). So memory is
  bounded per message, and in total by Receive Maximum times that size (the config refuses a product above
  ``limits.max_inflight_mb``).
* Every step one message passes (convert, encode, write, dead-letter) fails for that message alone: a message whose
  lines cannot be encoded, or whose write raises something unforeseen, is retried alone and then dead-lettered with
  the traceback; a dead-letter store that cannot be written (disk full) does not stop ingestion: its items wait in a
  bounded memory buffer and the loss beyond it is counted and logged. The writer thread never dies on data.
* Site (and the gateway's name) come from the server-side registry (``gateways.file``), never from the payload.
* Warnings caused by input are rate-limited per (reason, gateway): the first in full, then one summary line a
  minute (:class:`agent.ratelog.RateLimitedLog`).

Several bridge processes with the same ``mqtt.group`` share the subscription; each message goes to one of them.
Mosquitto hands each member session its share also while that member is away, and keeps it there until the
session expires. So a ``client_id`` is taken out of service with :meth:`Bridge.retire` (``denen bridge --retire``):
it drains what its session holds, stops taking a share and removes the session.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
import traceback
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent import systemd
from agent.bridge.config import BridgeConfig
from agent.bridge.deadletter import DeadLetter, DeadLetterStore
from agent.bridge.errors import BridgeError, SinkError
from agent.bridge.health import HealthMonitor
from agent.bridge.lineproto import LANES, READINGS_SCHEMA, Converted, Reject, Serializer
from agent.bridge.policy import Abandoned, WritePolicy
from agent.bridge.registry import GatewayRegistry
from agent.bridge.sinks import Sink, make_sink
from agent.ratelog import RateLimitedLog

__all__ = ["Bridge"]

log = logging.getLogger(__name__)

#: Seconds between the summary log lines (only when something happened).
SUMMARY_INTERVAL_S = 60.0
#: Seconds between checks whether the gateway registry file changed.
REGISTRY_CHECK_S = 10.0
#: Dead letters held in memory while the store cannot be written (disk full); beyond that they are counted lost.
DEAD_LETTER_BACKLOG_MAX = 10_000
#: The largest packet MQTT can express (a four-byte variable length), in bytes.
_MQTT_PACKET_MAX = 268_435_455
#: Bytes of an oversized payload kept in its dead letter (enough to see what it was).
TOO_LARGE_KEEP = 64 * 1024

_CONNECT_HINTS = {
    133: "mqtt.client_id was refused by the broker",
    134: "check mqtt.username and mqtt.password / password_file of the bridge",
    135: "the broker does not allow this user to connect: check its ACL and password file",
    136: "the broker is not available",
}
_SUBSCRIBE_HINTS = {
    0x87: "the broker's ACL must let the bridge's login subscribe to {topic}; the shipped one allows the group "
          "denen-bridge only (deploy/backend/mosquitto/acl)",
    0x8F: "the broker rejects this topic filter; check mqtt.group and mqtt.topic_prefix",
    0x9E: "this broker does not support shared subscriptions ($share/...)",
}


@dataclass(slots=True)
class _Message:
    session: int
    mid: int
    qos: int
    topic: str
    converted: Converted
    dup: bool = False
    body: bytes = b""  # the converted lines, encoded and joined by newlines


class Bridge:
    """Runs the bridge: ``start()`` / ``stop()``, or ``run()`` until ``request_stop()``.

    Args:
        config: the bridge configuration.
        sink: where lines go; default: the sink ``config.sink`` describes (tests may pass their own).

    Raises:
        BridgeError: the dead-letter store cannot be opened.
    """

    def __init__(self, config: BridgeConfig, *, sink: Sink | None = None) -> None:
        self.config = config
        self.stats: Counter[str] = Counter()
        self._rx: Counter[str] = Counter()  # touched only by the network thread
        self._stop = threading.Event()
        self._inbox: queue.SimpleQueue[_Message | None] = queue.SimpleQueue()
        if config.gateways is not None:
            self.registry = GatewayRegistry.load(config.gateways.file, unknown=config.gateways.unknown)
        else:
            self.registry = GatewayRegistry()
        self._serializer = Serializer(config.mqtt.topic_prefix, registry=self.registry,
                                      max_future_s=config.limits.max_future_s)
        self._dead = DeadLetterStore(config.dead_letter.path, max_bytes=config.dead_letter.max_bytes,
                                     max_item_bytes=config.dead_letter.max_item_bytes)
        self._dead_backlog: list[DeadLetter] = []  # waiting for a store that failed to write
        self._input_log = RateLimitedLog(log, interval_s=SUMMARY_INTERVAL_S)
        try:
            self._sink = sink if sink is not None else make_sink(config.sink)
        except BaseException:
            self._dead.close()
            raise
        # Health points go through a sink of their own, from their own thread, so a batch being retried does not
        # hold them up (an injected sink is shared: both of ours are safe to call from two threads).
        self._health_sink: Sink | None = None
        if config.health.enabled:
            try:
                self._health_sink = sink if sink is not None else make_sink(config.sink)
            except BaseException:
                self._sink.close()
                self._dead.close()
                raise
        self.health = HealthMonitor(config.mqtt.effective_client_id(), max_gateways=config.health.max_gateways)
        self._health_thread: threading.Thread | None = None
        self._health_write_ok = True
        self._health_wake = threading.Event()  # set: update the status line now (connection change, stop)
        self._ready_sent = False
        self._policy = WritePolicy(self._sink, stop=self._stop, retry_min_s=config.sink.retry_min_s,
                                   retry_max_s=config.sink.retry_max_s, stats=self.stats)
        self._client: mqtt.Client | None = None
        # Bumped on every disconnect; a message is acknowledged only if it arrived in the current session.
        self._session = 0
        self._ack_lock = threading.Lock()
        self._subscribed = threading.Event()
        self._writer: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._last_summary: dict[str, int] = {}
        self._broker_unreachable_logged = False
        self._closed = False
        # Retiring (see retire()): unsubscribe instead of subscribing, remove the session when drained.
        self._retiring = False
        self._unsubscribed = threading.Event()
        self._remove_session = False
        self._last_rx = time.monotonic()
        self._unacked = 0  # messages of the current connection not acknowledged yet (under _ack_lock)

    # -- life cycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect (retrying in the background until the broker answers) and start writing."""
        self._writer = threading.Thread(target=self._writer_main, name="bridge-writer", daemon=True)
        self._writer.start()
        self._health_thread = threading.Thread(target=self._health_main, name="bridge-health", daemon=True)
        self._health_thread.start()
        self._client = self._new_client()
        cfg = self.config.mqtt
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = cfg.session_expiry_s
        props.ReceiveMaximum = self.config.batch.receive_maximum
        # Messages a little over the limit still arrive, so they are dead-lettered and counted here; absurd ones
        # the broker drops for this session (and the shipped broker's max_packet_size refuses at ingress). paho
        # holds one packet at a time while reading it, so the margin costs memory only transiently.
        props.MaximumPacketSize = min(_MQTT_PACKET_MAX, 4 * self.config.limits.max_message_bytes + 64 * 1024)
        self._client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s, clean_start=False,
                                   properties=props)
        self._client.loop_start()
        log.info("bridge: %s:%d as %s, group %s, prefix %s -> %s (%s); receive maximum %d; %s", cfg.host,
                 cfg.port, cfg.effective_client_id(), cfg.group, cfg.topic_prefix, self._sink.target,
                 self.config.sink.type, self.config.batch.receive_maximum, self._registry_text())
        if self.registry.path is None:
            log.warning("bridge: no gateway registry (gateways.file): every gateway's readings are written with site "
                        "'unknown'; see deploy/backend/gateways.yaml")
        if cfg.tls is False:
            log.warning("MQTT: plain TCP to %s:%d (mqtt.tls: false): the bridge's login and every reading travel "
                        "in clear", cfg.host, cfg.port)

    def _registry_text(self) -> str:
        reg = self.registry
        if reg.path is None:
            return "no gateway registry: every site is 'unknown'"
        return f"{len(reg)} gateways registered in {reg.path} (unknown gateways: {reg.unknown})"

    def request_stop(self) -> None:
        """Ask the bridge to stop (safe from a signal handler's thread); ``run()`` then returns."""
        self._stop.set()
        self._health_wake.set()
        self._inbox.put(None)

    def run(self) -> None:
        """Start, then block until :meth:`request_stop`; then stop cleanly.

        Raises:
            BridgeError: the writer failed (e.g. the dead-letter store cannot be written); nothing unwritten was
                acknowledged.
        """
        self.start()
        assert self._writer is not None
        self._writer.join()
        self.stop()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop: the batch being written is finished if the database takes it at once, or abandoned without
        acknowledgement; then disconnect (the broker keeps the session and everything unacknowledged).

        Raises:
            BridgeError: the writer had failed.
        """
        if self._closed:
            return
        self._closed = True
        self.request_stop()
        systemd.stopping()
        if self._writer is not None:
            self._writer.join(timeout)
        if self._health_thread is not None:
            self._health_thread.join(timeout)
        client = self._client
        if client is not None:
            props = None
            if self._remove_session:
                props = Properties(PacketTypes.DISCONNECT)
                props.SessionExpiryInterval = 0  # the broker deletes the session now
            # Queued after the last acknowledgements, so they reach the broker first.
            client.disconnect(properties=props)
            client.loop_stop()
        self._sink.close()
        if self._health_sink is not None and self._health_sink is not self._sink:
            self._health_sink.close()
        self._dead.close()
        self._log_summary(final=True)
        if self._failure is not None:
            raise BridgeError(f"the bridge stopped after an error: {self._failure}") from self._failure

    def close(self) -> None:
        """Release the sinks and the dead-letter store of a bridge that was never started (one used for
        :meth:`replay`); a started bridge is ended with :meth:`stop`."""
        if self._closed or self._writer is not None:
            return
        self._closed = True
        self._sink.close()
        if self._health_sink is not None and self._health_sink is not self._sink:
            self._health_sink.close()
        self._dead.close()

    def retire(self, *, idle_s: float = 2.0, timeout: float | None = None) -> bool:
        """Take this bridge's ``client_id`` out of service without losing what its session holds.

        Connect to the persistent session, unsubscribe (the broker stops giving it a share), write and acknowledge
        everything that arrives until nothing has come for ``idle_s`` seconds, then disconnect with session
        expiry 0, which removes the session from the broker.

        Args:
            idle_s: quiet time, in seconds, after which the session counts as drained.
            timeout: give up after this many seconds (None: until drained or :meth:`request_stop`).

        Returns:
            True when the session was drained and removed; False when stopped or timed out first (the session
            stays, with whatever it still holds: nothing is lost).

        Raises:
            BridgeError: the writer failed.
        """
        self._retiring = True
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.wait(0.1):
            if deadline is not None and time.monotonic() > deadline:
                break
            with self._ack_lock:
                unacked = self._unacked
            if self._unsubscribed.is_set() and unacked == 0 and time.monotonic() - self._last_rx >= idle_s:
                self._remove_session = True
                break
        removed = self._remove_session
        self.stop()
        if removed:
            log.info("bridge: session of %s drained and removed from the broker; this client id is retired",
                     self.config.mqtt.effective_client_id())
        return removed

    def wait_subscribed(self, timeout: float) -> bool:
        """Wait until the broker confirmed the subscriptions of the current connection."""
        return self._subscribed.wait(timeout)

    def counters(self) -> dict[str, int]:
        """A snapshot of every counter (network and writer side)."""
        for _ in range(10):
            try:
                merged = Counter(self.stats)
                merged.update(self._rx)
                return dict(merged)
            except RuntimeError:  # read from the health thread while another thread added a key: read again
                continue
        return dict(self.stats)

    # -- replaying dead letters -------------------------------------------------------------------------------
    def replay(self, items: list[DeadLetter], *, timeout_s: float = 60.0) -> list[list[DeadLetter]]:
        """Write stored dead letters again through the live write path (converter, sink, write policy, dead-letter
        rules); nothing is acknowledged and nothing is stored here: the caller updates the store.

        A ``payload`` goes through the converter as if it had just arrived on its topic; a ``reading`` goes
        through it inside a batch of one (its topic names gateway and lane); a ``line`` is written as it is.

        Args:
            items: the stored items.
            timeout_s: give up after this many seconds while the database cannot be written (:class:`Abandoned`).

        Returns:
            For each item, what can still never be written (empty: it is in the database now).

        Raises:
            Abandoned: the database stayed unreachable or refusing for ``timeout_s``; nothing is known written.
        """
        self._stop.clear()
        batch = [_Message(-1, 0, 0, d.topic or "", *self._replayed(d)) for d in items]
        timer = threading.Timer(timeout_s, self._stop.set)
        timer.daemon = True
        timer.start()
        try:
            out: list[list[DeadLetter]] = []
            size = self.config.batch.max_messages
            for i in range(0, len(batch), size):
                out.extend(self._write(batch[i:i + size]))
            return out
        finally:
            timer.cancel()

    def _replayed(self, d: DeadLetter) -> tuple[Converted, bool, bytes]:
        """What a stored item converts to now: (converted, dup, encoded lines)."""
        topic = d.topic or ""
        if d.kind == "line":
            try:
                line = d.content.decode("utf-8")
            except UnicodeDecodeError as exc:
                return Converted(rejects=[Reject("invalid_text", f"the stored line is not UTF-8: {exc}", d.content,
                                                 "line", d.reading_id)]), False, b""
            source = d.reading_id if d.reading_id else "line:replay"
            return Converted(lines=[line], sources=[source], readings=1 if d.reading_id else 0), False, d.content
        if d.kind == "reading":
            converted, body = self._convert(topic, self._batch_of_one(topic, d.content))
        else:
            converted, body = self._convert(topic, d.content)
        return converted, False, body

    def _batch_of_one(self, topic: str, reading: bytes) -> bytes:
        """A readings batch holding one stored reading, as its gateway would have sent it on ``topic``."""
        prefix = self._serializer.prefix
        parts = topic[len(prefix):].split("/") if topic.startswith(prefix) else []
        gateway = parts[0] if parts else ""
        lane = parts[2] if len(parts) == 3 and parts[2] in LANES else "telemetry"
        info = self.registry.lookup(gateway) if gateway else None
        head = json.dumps({"schema": READINGS_SCHEMA, "gateway": gateway, "site": info.site if info else "unknown",
                           "lane": lane, "sent_us": time.time_ns() // 1000})
        # The reading's own bytes go in unchanged: the converter judges them as it did the first time.
        return head[:-1].encode() + b', "readings": [' + reading + b"]}"

    # -- health -----------------------------------------------------------------------------------------------
    def _db_ok(self) -> bool:
        return not self._policy.failing and self._health_write_ok

    def status_text(self) -> str:
        """The systemd status line: broker and database state, readings/min, lag p99, dead letters."""
        return self.health.status_line(self.counters(), db_ok=self._db_ok(),
                                       db_name="influx" if self.config.sink.type == "v1" else "database")

    def _health_main(self) -> None:
        """The status line (every ``health.status_interval_s`` when it changed, at once on a connection change)
        and, when enabled, the health points every ``health.interval_s``."""
        cfg = self.config.health
        line = systemd.StatusLine(cfg.status_interval_s)
        next_point = time.monotonic() + cfg.interval_s
        while True:
            now = time.monotonic()
            self._health_wake.wait(max(0.0, min(next_point, now + cfg.status_interval_s) - now))
            forced = self._health_wake.is_set()
            self._health_wake.clear()
            if self._stop.is_set():
                return
            try:
                if time.monotonic() >= next_point:
                    next_point += cfg.interval_s
                    if next_point <= time.monotonic():  # a stall (suspend, a slow database): count from now
                        next_point = time.monotonic() + cfg.interval_s
                    if cfg.enabled:
                        self._write_health()
                if self._ready_sent:
                    line.update(self.status_text, force=forced)
            except Exception:  # noqa: BLE001 - the report must never stop the bridge
                log.exception("bridge: the health report failed")

    def _write_health(self) -> None:
        """One interval's points, written once: a failing database drops them (counted), nothing is queued."""
        try:
            report = self.health.report(self.counters(), db_write_ok=not self._policy.failing)
        except Exception:  # noqa: BLE001 - a bug here must not stop the readings
            log.exception("bridge: building the health points failed")
            return
        if self._health_sink is None:
            return
        try:
            self._health_sink.write("\n".join(report.lines).encode())
        except SinkError as exc:
            self.health.dropped += len(report.lines)
            if self._health_write_ok:
                log.warning("bridge: health points not written (%s); they are dropped until the database works",
                            exc)
            self._health_write_ok = False
            return
        except Exception:  # noqa: BLE001 - same: count it and go on
            self.health.dropped += len(report.lines)
            self._health_write_ok = False
            log.exception("bridge: writing the health points failed")
            return
        self._health_write_ok = True

    # -- MQTT -------------------------------------------------------------------------------------------------
    def _new_client(self) -> mqtt.Client:
        cfg = self.config.mqtt
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=cfg.effective_client_id(),
                             protocol=MQTTProtocolVersion.MQTTv5)
        client.manual_ack_set(True)
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)  # type: ignore[arg-type]
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password_value())
        tls = cfg.tls_settings()
        if tls is not None:
            client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                           cert_reqs=ssl.CERT_REQUIRED)
            client.tls_insecure_set(tls.insecure)
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
            hint = _CONNECT_HINTS.get(reason.value, "")
            log.error("MQTT: %s:%d refused the bridge: %s%s", cfg.host, cfg.port, reason,
                      f" ({hint})" if hint else "")
            return
        self._broker_unreachable_logged = False
        self.health.broker_connected = True
        log.info("MQTT: connected to %s:%d (session present: %s)", cfg.host, cfg.port,
                 bool(getattr(flags, "session_present", False)))
        if self._retiring:
            client.unsubscribe(list(cfg.subscriptions()))
            return
        # Subscribing again on a present session is harmless and covers a broker that lost its session store.
        options = SubscribeOptions(qos=1)
        client.subscribe([(topic, options) for topic in cfg.subscriptions()])

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if not self._broker_unreachable_logged:
            # Once per outage; paho keeps retrying with backoff (mqtt.reconnect_min_s .. reconnect_max_s).
            self._broker_unreachable_logged = True
            log.warning("MQTT: cannot reach the broker at %s:%d; retrying (check mqtt.host, mqtt.port, mqtt.tls)",
                        self.config.mqtt.host, self.config.mqtt.port)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
                      properties: Properties | None) -> None:
        failed = False
        for topic, rc in zip(self.config.mqtt.subscriptions(), reason_codes, strict=False):
            if rc.is_failure:
                failed = True
                hint = _SUBSCRIBE_HINTS.get(rc.value, "").format(topic=topic)
                log.error("MQTT: subscription to %s refused: %s%s", topic, rc, f" ({hint})" if hint else "")
        if not failed:
            log.info("MQTT: subscribed to %s", ", ".join(self.config.mqtt.subscriptions()))
            self._subscribed.set()
            if not self._ready_sent:
                # systemd (Type=notify) counts the bridge started once it takes messages.
                self._ready_sent = True
                systemd.ready()
            self._health_wake.set()

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
                        properties: Properties | None) -> None:
        log.info("MQTT: unsubscribed (retiring): %s", ", ".join(str(rc) for rc in reason_codes))
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
            log.warning("MQTT: disconnected from %s:%d (%s); reconnecting, unacknowledged messages will come again",
                        self.config.mqtt.host, self.config.mqtt.port, reason)

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
        self._inbox.put(_Message(session, msg.mid, msg.qos, topic, converted, bool(msg.dup), body))

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

    # -- writing ----------------------------------------------------------------------------------------------
    def _writer_main(self) -> None:
        try:
            self._write_loop()
        except Exception as exc:  # noqa: BLE001 - thread top level: log, and make run()/stop() report it
            log.exception("bridge: the writer failed; stopping without acknowledging what was not written")
            self._failure = exc
            self._stop.set()

    def _write_loop(self) -> None:
        batch_cfg = self.config.batch
        max_wait = batch_cfg.max_wait_ms / 1000
        batch: list[_Message] = []
        lines = 0
        deadline = 0.0
        next_summary = time.monotonic() + SUMMARY_INTERVAL_S
        next_registry = time.monotonic() + REGISTRY_CHECK_S
        while True:
            now = time.monotonic()
            timeout = (deadline - now) if batch else (next_summary - now)
            try:
                item = self._inbox.get(timeout=max(0.0, timeout))
            except queue.Empty:
                item = False
            if item is None:  # stop requested: one last try for what is here, no retries
                self._flush(batch)
                return
            if item is not False:
                if not batch:
                    deadline = time.monotonic() + max_wait
                batch.append(item)
                lines += len(item.converted.lines)
                if (lines < batch_cfg.max_lines and len(batch) < batch_cfg.max_messages
                        and time.monotonic() < deadline):
                    continue
            if batch and (item is not False or time.monotonic() >= deadline):
                self._flush(batch)
                batch, lines = [], 0
            now = time.monotonic()
            if now >= next_registry:
                self._refresh_registry()
                next_registry = now + REGISTRY_CHECK_S
            if now >= next_summary:
                self._input_log.flush()
                self._log_summary()
                next_summary = time.monotonic() + SUMMARY_INTERVAL_S
            if self._stop.is_set() and not batch:
                # A stop while idle: the None sentinel is in the inbox, but do not wait for it behind new messages.
                return

    def _refresh_registry(self) -> None:
        try:
            if self.registry.refresh():
                log.info("bridge: gateway registry reloaded: %s", self._registry_text())
        except Exception:  # noqa: BLE001 - a registry bug keeps the registry it had, never the writer
            log.exception("bridge: checking the gateway registry %s failed; keeping the one loaded",
                          self.registry.path)

    def _flush(self, batch: list[_Message]) -> None:
        """Write a batch; a failure that is not the database's is isolated to the message that causes it."""
        if not batch:
            return
        try:
            self._flush_batch(batch)
        except Abandoned as exc:
            log.warning("bridge: stopping while the database fails (%s); %d messages are left unacknowledged and "
                        "will come again", exc, len(batch))
            self.stats["messages_abandoned"] += len(batch)
        except Exception:  # noqa: BLE001 - data must never stop the writer: find the message, keep it, go on
            log.exception("bridge: writing a batch of %d messages failed unexpectedly; writing them one by one",
                          len(batch))
            self.stats["batches_isolated"] += 1
            for m in batch:
                try:
                    self._flush_batch([m])
                except Abandoned:
                    self.stats["messages_abandoned"] += 1
                except Exception:  # noqa: BLE001 - this message is the cause: dead-letter what it became
                    self._dead_letter_failed(m, traceback.format_exc(limit=5))

    def _dead_letter_failed(self, m: _Message, trace: str) -> None:
        """Keep a message whose write raised an unforeseen error (its lines and rejects) and acknowledge it."""
        self.stats["messages_failed"] += 1
        items = [DeadLetter("internal_error", f"writing this message raised: {trace}", "line", line.encode(
            "utf-8", "backslashreplace"), m.topic, _reading_id(sid))
            for line, sid in zip(m.converted.lines, m.converted.sources, strict=False)]
        items += [DeadLetter(r.reason, r.detail, r.kind, r.content, m.topic, r.reading_id)
                  for r in m.converted.rejects]
        if not items:
            items = [DeadLetter("internal_error", f"writing this message raised: {trace}", "payload", b"", m.topic)]
        for d in items:  # every stored row counted, as _flush_batch counts its rows
            self.stats[f"dead_letters.{d.reason}"] += 1
        self.stats["dead_letters"] += len(items)
        self._input_log.warning("internal_error", self._sender(m.topic), "messages",
                                "bridge: writing a message on %s raised %s; its %d items are kept in the dead-letter "
                                "store %s", _printable(m.topic), _printable(trace.strip().splitlines()[-1]),
                                len(items), self.config.dead_letter.path)
        self._store_dead(items)
        self._ack([m])

    def _store_dead(self, dead: list[DeadLetter]) -> None:
        """Durable before the acknowledgement when the store works; when it cannot be written (disk full), the items
        wait in memory (bounded) and ingestion goes on: a broken store must not stop every gateway's readings."""
        if self._dead_backlog:
            dead = self._dead_backlog + dead
            self._dead_backlog = []
        if not dead:
            return
        try:
            self._dead.add(dead)
        except BridgeError as exc:
            self.stats["dead_letter_write_failures"] += 1
            keep = dead[-DEAD_LETTER_BACKLOG_MAX:]
            lost = len(dead) - len(keep)
            self._dead_backlog = keep
            if lost:
                self.stats["dead_letters_lost"] += lost
            self._input_log.warning("dead_letter_write_failed", str(self._dead.path), "failures",
                                    "bridge: %s; %d dead letters wait in memory (at most %d), %d lost so far; "
                                    "readings are still written", exc, len(keep), DEAD_LETTER_BACKLOG_MAX,
                                    self.stats["dead_letters_lost"], level=logging.ERROR)
        else:
            evicted = self._dead.evicted - self.stats["dead_letters_evicted"]
            if evicted > 0:
                self.stats["dead_letters_evicted"] += evicted
                self._input_log.warning("store_full", str(self._dead.path), "evictions",
                                        "bridge: the dead-letter store %s is full (dead_letter.max_mb); its oldest "
                                        "items are removed (%d so far)", self._dead.path, self._dead.evicted)

    def _flush_batch(self, batch: list[_Message]) -> None:
        dead = self._write(batch)
        self._store_dead([d for items in dead for d in items])
        self._ack(batch)

    def _write(self, batch: list[_Message]) -> list[list[DeadLetter]]:
        """Write a batch's lines; returns, per message, what can never be written (its dead letters).

        Raises:
            Abandoned: the bridge is stopping while the database fails; nothing of the batch is known written.
        """
        per_message: list[list[DeadLetter]] = [[] for _ in batch]
        all_lines: list[str] = []
        sources: list[str] = []
        bounds: list[int] = []
        bodies: list[bytes] = []
        for k, m in enumerate(batch):
            conv = m.converted
            dead = per_message[k]
            all_lines.extend(conv.lines)
            sources.extend(conv.sources)
            bounds.append(len(all_lines))
            if m.body:
                bodies.append(m.body)
            for rej in conv.rejects:
                dead.append(DeadLetter(rej.reason, rej.detail, rej.kind, rej.content, m.topic, rej.reading_id))
                self._note_reject(rej.reason, rej.detail, m.topic, rej.reading_id)
            for code, detail in conv.notes:
                self.stats[f"notes.{code}"] += 1
                self._input_log.warning(code, f"gateway {conv.gateway}", "messages", "bridge: %s on %s: %s",
                                        code, m.topic, detail[:500])
        started = time.monotonic()
        refused = self._policy.write(all_lines, b"\n".join(bodies)) if all_lines else []
        for r in refused:
            k = bisect_right(bounds, r.index)
            owner, dead = batch[k], per_message[k]
            rid = sources[r.index]
            dead.append(DeadLetter("rejected_by_server", r.error, "line", all_lines[r.index].encode(), owner.topic,
                                   _reading_id(rid)))
            self._note_reject("rejected_by_server", r.error, owner.topic, _reading_id(rid))
        if all_lines:
            self.health.note_written(all_lines, sources, {r.index for r in refused})
        stats = self.stats
        stats["batches"] += 1
        stats["lines_written"] += len(all_lines) - len(refused)
        stats["lines_refused"] += len(refused)
        stats["readings_written"] += sum(m.converted.readings for m in batch)
        stats["dead_letters"] += sum(len(d) for d in per_message)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("bridge: batch of %d messages (%d redelivered), %d lines written, %d refused, in %.1f ms",
                      len(batch), sum(m.dup for m in batch), len(all_lines) - len(refused), len(refused),
                      (time.monotonic() - started) * 1000)
        return per_message

    def _ack(self, batch: list[_Message]) -> None:
        client = self._client
        acked = stale = 0
        with self._ack_lock:
            session = self._session
            for m in batch:
                if m.session != session or client is None:
                    stale += 1
                    continue
                if m.qos > 0:
                    client.ack(m.mid, m.qos)
                acked += 1
            self._unacked -= acked
        self.stats["messages_acked"] += acked
        if stale:
            # Message ids belong to the connection that delivered them; the broker sends these again.
            self.stats["messages_not_acked_stale"] += stale
            log.debug("bridge: %d messages of an earlier connection written but not acknowledged", stale)

    def _note_reject(self, reason: str, detail: str, topic: str, reading_id: str | None) -> None:
        self.stats[f"dead_letters.{reason}"] += 1
        # The first per reason and sender a minute in full; the rest in one summary line (the store has them all).
        self._input_log.warning(reason, self._sender(topic), "dead letters",
                                "bridge: %s on %s%s: %s (kept in the dead-letter store %s)", reason,
                                _printable(topic), f" reading {_printable(reading_id)}" if reading_id else "",
                                _printable(detail[:500]), self.config.dead_letter.path)

    def _sender(self, topic: str) -> str:
        prefix = self._serializer.prefix
        if topic.startswith(prefix):
            gateway = topic[len(prefix):].split("/", 1)[0]
            return f"gateway {_printable(gateway[:64])}"
        return "a topic outside the scheme"

    def _log_summary(self, *, final: bool = False) -> None:
        if final:
            self._input_log.flush()
        c = self.counters()
        if c == self._last_summary and not final:
            return  # nothing happened since the last line
        self._last_summary = c
        dead = ", ".join(f"{k.split('.', 1)[1]} {v}" for k, v in sorted(c.items()) if k.startswith("dead_letters."))
        notes = ", ".join(f"{k.split('.', 1)[1]} {v}" for k, v in sorted(c.items()) if k.startswith("notes."))
        log.info(
            "bridge%s: %d messages (%d redelivered), %d readings, %d lines in %d writes, %d acknowledged, "
            "%d dead letters%s, %d failed write attempts%s%s",
            " stopped" if final else "", c.get("messages", 0), c.get("messages_redelivered", 0),
            c.get("readings_written", 0), c.get("lines_written", 0), c.get("batches", 0), c.get("messages_acked", 0),
            c.get("dead_letters", 0), f" ({dead})" if dead else "",
            c.get("write_failures.unavailable", 0) + c.get("write_failures.refused", 0),
            f"; noted: {notes}" if notes else "",
            f"; dead-letter store: {c.get('dead_letters_evicted', 0)} evicted, {c.get('dead_letters_lost', 0)} lost"
            if c.get("dead_letters_evicted") or c.get("dead_letters_lost") else "",
        )


def _reading_id(source: str) -> str | None:
    """The reading id of a line's source, or None for the points of a document (``status:<gateway>``, ...)."""
    return None if ":" in source else source


def _printable(text: str) -> str:
    """Text safe for a log line: control characters, line breaks and lone surrogates escaped (a hostile gateway
    chooses these strings). Japanese and other printable text is kept as it is."""
    if text.isprintable():  # lone surrogates and control characters are not printable
        return text
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
