"""The bridge process: MQTT shared subscription in, InfluxDB writes out, acknowledgements only after the write.

Threads and hand-offs (the network thread's half: :mod:`agent.bridge.receiving`; the writer's:
:mod:`agent.bridge.writing`)::

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
With ``dedupe`` configured they also share a redis, so a node frame heard by several gateways is one point whichever
bridges handle its copies (:mod:`agent.bridge.dedupe`; the claims are made by the writer, per batch, just before
the write).
Mosquitto hands each member session its share also while that member is away, and keeps it there until the
session expires. So a ``client_id`` is taken out of service with :meth:`Bridge.retire` (``denen bridge --retire``):
it drains what its session holds, stops taking a share and removes the session.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import systemd
from agent.bridge.config import BridgeConfig
from agent.bridge.deadletter import DeadLetter, DeadLetterStore
from agent.bridge.dedupe import FrameClaims
from agent.bridge.errors import BridgeError, SinkError
from agent.bridge.health import HealthMonitor
from agent.bridge.lineproto import Serializer
from agent.bridge.nodestate import NodeStateSink
from agent.bridge.policy import WritePolicy
from agent.bridge.receiving import InboxMessage, Receiving
from agent.bridge.registry import GatewayRegistry
from agent.bridge.schema import Converted, Reject
from agent.bridge.sinks import Sink, make_sink
from agent.bridge.writing import SUMMARY_INTERVAL_S, Writing
from agent.i18n import _
from agent.ratelog import RateLimitedLog

__all__ = ["Bridge"]

log = logging.getLogger(__name__)

#: The largest packet MQTT can express (a four-byte variable length), in bytes.
_MQTT_PACKET_MAX = 268_435_455


class Bridge(Receiving, Writing):
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
        self._inbox: queue.SimpleQueue[InboxMessage | None] = queue.SimpleQueue()
        if config.gateways is not None:
            self.registry = GatewayRegistry.load(config.gateways.file, unknown=config.gateways.unknown)
        else:
            self.registry = GatewayRegistry()
        dedupe = config.dedupe
        self._serializer = Serializer(config.mqtt.topic_prefix, registry=self.registry,
                                      max_future_s=config.limits.max_future_s,
                                      dedupe_prefix=dedupe.key_prefix if dedupe is not None else None)
        self._claims: FrameClaims | None = None
        if dedupe is not None:
            self._claims = FrameClaims(dedupe.redis_url, window_s=dedupe.window_s, timeout_s=dedupe.timeout_s,
                                       key_prefix=dedupe.key_prefix, stats=self.stats)
        self._dead = DeadLetterStore(config.dead_letter.path, max_bytes=config.dead_letter.max_bytes,
                                     max_item_bytes=config.dead_letter.max_item_bytes)
        self._dead_backlog: list[DeadLetter] = []  # waiting for a store that failed to write
        self._input_log = RateLimitedLog(log, interval_s=SUMMARY_INTERVAL_S)
        self._sink, self._health_sink = self._sinks(config, sink)
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
        log.info("%s", _("bridge: {host}:{port} as {client_id}, group {group}, prefix {prefix} -> {target} "
                         "({sink_type}); receive maximum {receive_maximum}; {registry}").format(
            host=cfg.host, port=cfg.port, client_id=cfg.effective_client_id(), group=cfg.group,
            prefix=cfg.topic_prefix, target=self._sink.target, sink_type=self.config.sink.type,
            receive_maximum=self.config.batch.receive_maximum, registry=self._registry_text()))
        if self.registry.path is None:
            log.warning("%s", _("bridge: no gateway registry (gateways.file): every gateway's readings are written "
                                "with site 'unknown'; see deploy/backend/gateways.yaml"))
        if cfg.tls is False:
            log.warning("%s", _("MQTT: plain TCP to {host}:{port} (mqtt.tls: false): the bridge's login and every "
                                "reading travel in clear").format(host=cfg.host, port=cfg.port))

    def _sinks(self, config: BridgeConfig, injected: Sink | None) -> tuple[Sink, Sink | None]:
        """The readings' sink (wrapped to publish node states when configured) and the health points' own one.

        Health points go through a sink of their own, from their own thread, so a batch being retried does not
        hold them up (an injected sink is shared: both of ours are safe to call from two threads)."""
        try:
            sink = injected if injected is not None else make_sink(config.sink)
        except BaseException:
            self._dead.close()
            raise
        if config.node_state.publish:
            unsent: list[mqtt.MQTTMessageInfo] = []  # node states handed to paho, oldest first
            sink = NodeStateSink(sink, lambda topic, payload: self._publish_node_state(unsent, topic, payload),
                                 config.mqtt.topic_prefix + "/", stats=self.stats)
        health: Sink | None = None
        if config.health.enabled:
            try:
                health = injected if injected is not None else make_sink(config.sink)
            except BaseException:
                sink.close()
                self._dead.close()
                raise
        return sink, health

    def _publish_node_state(self, unsent: list[mqtt.MQTTMessageInfo], topic: str, payload: bytes,
                            unsent_max: int = 1000) -> bool:
        """Hand one node state to the broker connection (the writer thread), QoS 0 and retained: a retained
        document needs no queue, and the broker queues no QoS 0 message for a consumer's offline session, so a
        consumer that went away cannot make it queue without bound.

        False when not connected, or when ``unsent_max`` documents handed over earlier are not yet written to the
        socket: paho's outgoing packets have no bound of their own for QoS 0 (``max_queued_messages`` counts QoS 1
        and 2 only). paho writes them in order and marks the ones a lost connection drops as published too, so
        the written ones are always at the front of ``unsent``."""
        client = self._client
        if client is None or not client.is_connected():
            return False
        written = 0
        while written < len(unsent) and unsent[written].is_published():
            written += 1
        del unsent[:written]
        if len(unsent) >= unsent_max:
            return False
        info = client.publish(topic, payload, qos=0, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        unsent.append(info)
        return True

    def _registry_text(self) -> str:
        reg = self.registry
        if reg.path is None:
            return _("no gateway registry: every site is 'unknown'")
        return _("{count} gateways registered in {path} (unknown gateways: {unknown})").format(
            count=len(reg), path=reg.path, unknown=reg.unknown)

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
        self._release()
        self._log_summary(final=True)
        if self._failure is not None:
            stopped = _("the bridge stopped after an error: {error}").format(error=self._failure)
            raise BridgeError(stopped) from self._failure

    def close(self) -> None:
        """Release the sinks and the dead-letter store of a bridge that was never started (one used for
        :meth:`replay`); a started bridge is ended with :meth:`stop`."""
        if self._closed or self._writer is not None:
            return
        self._closed = True
        self._release()

    def _release(self) -> None:
        """Close the sinks (a shared injected one once), the redis claims and the dead-letter store."""
        self._sink.close()
        if self._health_sink is not None and self._health_sink not in (self._sink, getattr(self._sink, "inner", None)):
            self._health_sink.close()
        if self._claims is not None:
            self._claims.close()
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
            log.info("%s", _("bridge: session of {client_id} drained and removed from the broker; this client id "
                             "is retired").format(client_id=self.config.mqtt.effective_client_id()))
        return removed

    def wait_subscribed(self, timeout: float) -> bool:
        """Wait until the broker confirmed the subscriptions of the current connection."""
        return self._subscribed.wait(timeout)

    def counters(self) -> dict[str, int]:
        """A snapshot of every counter (network and writer side)."""
        for _attempt in range(10):
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
        batch = [InboxMessage(-1, 0, 0, d.topic or "", *self._replayed(d)) for d in items]
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
            converted, body = self._convert(topic, self._serializer.batch_of_one(topic, d.content))
        else:
            converted, body = self._convert(topic, d.content)
        return converted, False, body

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
                log.exception("%s", _("bridge: the health report failed"))

    def _write_health(self) -> None:
        """One interval's points, written once: a failing database drops them (counted), nothing is queued."""
        try:
            report = self.health.report(self.counters(), db_write_ok=not self._policy.failing)
        except Exception:  # noqa: BLE001 - a bug here must not stop the readings
            log.exception("%s", _("bridge: building the health points failed"))
            return
        if self._health_sink is None:
            return
        try:
            self._health_sink.write("\n".join(report.lines).encode())
        except SinkError as exc:
            self.health.dropped += len(report.lines)
            if self._health_write_ok:
                log.warning("%s", _("bridge: health points not written ({error}); they are dropped until the "
                                    "database works").format(error=exc))
            self._health_write_ok = False
            return
        except Exception:  # noqa: BLE001 - same: count it and go on
            self.health.dropped += len(report.lines)
            self._health_write_ok = False
            log.exception("%s", _("bridge: writing the health points failed"))
            return
        self._health_write_ok = True
