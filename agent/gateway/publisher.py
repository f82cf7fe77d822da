"""MQTT link to the broker: QoS 1 publishing, PUBACK reporting, reconnect with backoff, online status with Last Will.

Each connection is a fresh paho ``Client`` (one *session*). paho re-sends its own queued messages after a
reconnect, in the order they were first published; that would put a telemetry backlog in front of an SOS that
arrived during the outage. So when a session ends its client is thrown away with whatever it had queued, and the
journal, which still holds every unacknowledged reading, decides what goes first on the next session.

Two gateways with one client id (a copy-pasted ``gateway.id``, or one login where the broker uses the user name as
client id) take the session from each other on every connect. The link recognises that (:class:`TakeoverBackoff`),
says so in one line naming the cause and the fix, and waits longer after each takeover instead of reconnecting at
once, so the pair does not flap.

Everything the link learns is posted to the gateway's inbox as an event (agent.gateway.events), in order:

    Connected(session)                          CONNACK accepted
    Ack(session, mid, ok, reason, code)         PUBACK for message ``mid`` (``ok`` False for a v5 failure code)
    Disconnected(session, reason)               the session ended (reason is a human sentence)
    Incident("mqtt", kind, detail)              connect failures and refusals, counted by the gateway
    Command(topic, payload)                     a command from the backend on <prefix>/<gateway>/cmd/...

:class:`MqttLink` is the gateway's :class:`~agent.gateway.events.Publisher`.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import ssl
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import MqttConfig
from agent.config.mqtt import apply_login
from agent.gateway.events import Ack, Command, Connected, Disconnected, Incident, Post
from agent.i18n import _
from agent.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

STATUS_SCHEMA = "denen.status/1"

#: MQTT v5 DISCONNECT reason: another client connected with this client id and took the session over.
SESSION_TAKEN_OVER = 0x8E
#: Reason paho reports when the connection closed without a DISCONNECT (EOF or reset), "Unspecified error".
_CONNECTION_LOST = 0x80


def status_payload(gateway_id: str, state: str, *, version: str, ts_us: int | None = None) -> bytes:
    """The retained status document: ``state`` is ``online`` or ``offline``."""
    doc: dict[str, Any] = {"schema": STATUS_SCHEMA, "gateway": gateway_id, "state": state, "agent": version}
    if ts_us is not None:
        doc["ts_us"] = ts_us
    return json.dumps(doc, separators=(",", ":")).encode()


class Topics:
    """The topic scheme (README "MQTT topics"): everything of a gateway lives under ``<prefix>/<gateway>/``."""

    def __init__(self, prefix: str, gateway_id: str) -> None:
        self.base = f"{prefix}/{gateway_id}"
        self.status = f"{self.base}/status"
        self.state = f"{self.base}/state"  # retained state document (siren, lamp, held readings, open alerts)
        self.results = f"{self.base}/results"  # one result document per command received
        self.readings = {lane: f"{self.base}/readings/{lane}" for lane in ("sos", "alarm", "telemetry", "diagnostics")}
        self.commands = f"{self.base}/cmd/#"


class TakeoverBackoff:
    """How long to wait before reconnecting after a session was taken over by a client with the same client id.

    Two gateways sharing ``gateway.id`` (or one login, where the broker uses the user name as client id) kick each
    other off the broker: each connect ends the other's session. Reconnecting at once makes the pair flap about once
    a second, with the retained status flapping as fast. Waiting longer after each takeover lets one of the two hold
    the session for a while (its messages get through) until someone fixes the config.

    A takeover is certain when the broker says so: an MQTT v5 DISCONNECT with reason 0x8E. Mosquitto 2.0.11 (Debian
    12's) sends none: it closes the old connection, exactly as when it shuts down. So ``suspect_after`` sessions in
    a row that ended without a DISCONNECT within ``short_s`` of their CONNACK are taken as a takeover too, unless
    a connect failed in between (a restarting broker refuses connects for a moment; a broker that hands the session
    to another client never does). One ordinary drop of a working session never starts the backoff: the ordinary
    reconnect delay (``mqtt.reconnect_min_s``) applies, so an SOS waits no longer than before.

    Args:
        first_s: the first wait after a takeover, in seconds; doubled after each further takeover.
        max_s: the longest wait, in seconds.
        stable_s: a session that lasted this long (seconds) ends the takeover backoff.
        short_s: a session closed by the broker sooner than this (seconds) after its CONNACK counts as suspect.
        suspect_after: suspect sessions in a row that count as a takeover.

    Not thread-safe: the link thread owns it.
    """

    def __init__(self, *, first_s: float = 5.0, max_s: float = 300.0, stable_s: float = 180.0,
                 short_s: float = 10.0, suspect_after: int = 2) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.stable_s = stable_s
        self.short_s = short_s
        self.suspect_after = suspect_after
        self.level = 0  # takeovers in a row; 0 when the link is not backing off
        self.short_streak = 0  # sessions in a row closed by the broker within short_s

    def session_ended(self, *, lived_s: float, taken_over: bool, lost: bool) -> float | None:
        """Record how an accepted session ended.

        Args:
            lived_s: seconds from CONNACK to the end of the session.
            taken_over: the broker sent DISCONNECT with reason 0x8E.
            lost: the connection closed without a DISCONNECT (not a keepalive timeout, not our own stop).

        Returns:
            Seconds to wait before reconnecting (before jitter) when the session counts as taken over; None when
            the ordinary reconnect delay applies.
        """
        if lived_s >= self.stable_s:
            self.level = 0
            self.short_streak = 0
        if taken_over:
            return self._next()
        if not lost:
            self.short_streak = 0
            return None
        if self.level > 0:
            # Already backing off and no stable session since: the same pair is at it again.
            return self._next()
        if lived_s < self.short_s:
            self.short_streak += 1
            if self.short_streak >= self.suspect_after:
                return self._next()
        else:
            self.short_streak = 0
        return None

    def connect_failed(self) -> None:
        """A connect was refused or failed: the broker is away or restarting, which explains the sessions it closed
        (a takeover never stops the next connect), so they no longer count as suspect."""
        self.short_streak = 0

    def _next(self) -> float:
        self.level += 1
        self.short_streak = 0
        return min(self.max_s, self.first_s * 2 ** (self.level - 1))


class MqttLink:
    """Owns the connection to the broker in its own thread.

    Args:
        config: the ``mqtt`` section of the gateway config.
        gateway_id: the gateway's id, used in topics and the default client id.
        post: puts one event into the gateway's inbox (thread-safe); or given later with :meth:`bind`, before
            :meth:`start`.
        version: agent version string for the status document.
    """

    def __init__(self, config: MqttConfig, gateway_id: str, post: Post | None = None, *, version: str) -> None:
        self.config = config
        self.gateway_id = gateway_id
        self.topics = Topics(config.topic_prefix, gateway_id)
        self._post: Post = post if post is not None else _unbound
        self._version = version
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._session = 0
        self._connected = False
        # Guards the client, session and connected flag; never held across a paho call (see _publish), since paho
        # calls on_disconnect, which takes it, from inside its own calls and under its own locks.
        self._lock = threading.RLock()
        self.takeover = TakeoverBackoff()
        # A takeover repeats for as long as both gateways run: one full line per 10 min, the rest counted.
        self._takeover_log = RateLimitedLog(log, interval_s=600.0, max_keys=4)
        # How the current session ended, set by _on_disconnect: (DISCONNECT from the broker, reason code,
        # the broker's reason string).
        self._ended: tuple[bool, int, str | None] | None = None
        self._up_at = 0.0  # time.monotonic() of the current session's CONNACK

    # -- life cycle -----------------------------------------------------------------------------------------
    def bind(self, post: Post) -> None:
        """Post events to ``post`` from now on (the gateway's ``inbox.put``); called before :meth:`start`."""
        self._post = post

    def start(self) -> None:
        if self._post is _unbound:
            raise RuntimeError("MqttLink.start: no inbox to post to (call bind(post) first)")
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Publish the offline status (best effort), disconnect cleanly and stop the thread."""
        client = self._client
        if client is not None and self._connected:
            # The link thread is still looping here, so the PUBACK of the offline status is read.
            try:
                info = client.publish(
                    self.topics.status, status_payload(self.gateway_id, "offline", version=self._version),
                    qos=1, retain=True,
                )
                info.wait_for_publish(timeout=min(2.0, timeout))
            except (RuntimeError, ValueError, OSError):
                pass
        self._stop.set()
        if client is not None:
            # A clean DISCONNECT: the broker discards the Last Will, so "offline" is published once.
            client.disconnect()
        if self._thread:
            self._thread.join(timeout)

    @property
    def connected(self) -> bool:
        return self._connected

    # -- publishing (any thread) ------------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes) -> tuple[int, int] | None:
        """Publish with QoS 1.

        Returns:
            ``(session, mid)`` to match the PUBACK later, or None when there is no connection (the caller keeps
            the readings in the journal and tries again after ``mqtt_up``).
        """
        return self._publish(topic, payload, retain=False)

    def publish_best_effort(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish a document that is not journaled (the state, command results) with QoS 1.

        Nothing waits for its PUBACK (the core ignores a PUBACK it does not know): within the session the broker
        gets it; a session that ends first loses it, and the next session publishes the state again.

        Returns:
            False when there is no connection (the document is dropped).
        """
        return self._publish(topic, payload, retain=retain) is not None

    def _publish(self, topic: str, payload: bytes, *, retain: bool) -> tuple[int, int] | None:
        with self._lock:
            client, session = self._client, self._session
            if client is None or not self._connected:
                return None
        # Published outside the lock: paho calls on_disconnect while it holds its own message lock (a CONNACK whose
        # resends fail), and on_disconnect takes ours; holding ours while paho's publish waits for its lock would
        # deadlock the core and the link thread. A session that ends meanwhile loses the message, as any message
        # of an ending session: its PUBACK never comes and the journal sends it again.
        info = client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return session, info.mid

    # -- the connection thread ------------------------------------------------------------------------------
    def _new_client(self) -> mqtt.Client:
        cfg = self.config
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=cfg.effective_client_id(self.gateway_id),
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        # Our own window bounds what is in flight; paho must never hold messages back in its own queue.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.will_set(
            self.topics.status, status_payload(self.gateway_id, "offline", version=self._version), qos=1, retain=True
        )
        apply_login(client, cfg)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        # Every socket write on the link thread: without this, paho's publish() writes at once from the caller's
        # thread (the core) while the link thread's loop() may be writing too, since the link drives loop() itself
        # rather than paho's thread; two partial writes (a large batch over slow TLS) could interleave packets. paho
        # then only queues and wakes loop() through its socket pair.
        client.on_socket_register_write = lambda client, userdata, sock: None
        return client

    def _run(self) -> None:
        cfg = self.config
        delay = cfg.reconnect_min_s
        # The loop wakes at least this often to send keepalive pings; publishing wakes it at once.
        loop_timeout = max(1.0, cfg.keepalive_s / 4)
        while not self._stop.is_set():
            client = self._new_client()
            with self._lock:
                self._session += 1
                self._client = client
            session = self._session
            self._connack_ok = False
            self._connect_and_loop(client, loop_timeout)
            # paho's on_disconnect has already cleared _connected inside loop(); whether this session was up is
            # whether its CONNACK was accepted.
            was_up = self._connack_ok
            with self._lock:
                self._connected = False
                self._client = None
            try:
                client.socket() and client.socket().close()  # type: ignore[union-attr]
            except OSError:
                pass
            if self._stop.is_set():
                if was_up:
                    self._post(Disconnected(session, "connection lost"))
                break
            if self._connack_ok:
                delay = cfg.reconnect_min_s
            self._stop.wait(self._session_over(session, was_up, delay))
            delay = min(cfg.reconnect_max_s, delay * 2)

    def _connect_and_loop(self, client: mqtt.Client, loop_timeout: float) -> None:
        """One connection: connect, then run paho's loop until the connection ends or the link stops."""
        cfg = self.config
        try:
            client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive_s, clean_start=True)
        except (OSError, ssl.SSLError, ValueError) as exc:
            close_sockets_left_in(exc)
            self.takeover.connect_failed()
            self._post(Incident("mqtt", "connect_failed", f"{cfg.host}:{cfg.port}: {_describe(exc)}"))
            return
        try:
            sock = client.socket()
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        while not self._stop.is_set():
            rc = client.loop(timeout=loop_timeout)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                break

    def _session_over(self, session: int, was_up: bool, delay: float) -> float:
        """Tell the core how session ``session`` ended (if it was up) and log it; seconds to wait before the next
        connect (``delay``, the ordinary reconnect delay, or the takeover backoff), with jitter."""
        cfg = self.config
        takeover_wait = None
        if was_up:
            from_broker, code, broker_says = self._ended or (False, _CONNECTION_LOST, None)
            taken_over = from_broker and code == SESSION_TAKEN_OVER
            takeover_wait = self.takeover.session_ended(
                lived_s=time.monotonic() - self._up_at, taken_over=taken_over,
                lost=not from_broker and code == _CONNECTION_LOST,
            )
            if takeover_wait is None:
                self._post(Disconnected(session, "connection lost"))
            elif taken_over:
                self._post(Disconnected(session, "session taken over by another client with this client id"))
            else:
                self._post(Disconnected(session, "closed by the broker right after connecting, again: most "
                                        "likely another client with this client id"))
        if takeover_wait is not None:
            # Jitter too, so that the two gateways drift apart instead of taking turns in lockstep.
            wait = takeover_wait * random.uniform(0.9, 1.1)
            self._report_takeover(certain=taken_over, broker_says=broker_says, wait_s=wait)
            return wait
        if was_up:
            self._report_disconnect()
        # Jitter keeps a town's gateways from reconnecting in lockstep after a broker restart.
        wait = delay * random.uniform(0.8, 1.2)
        log.info("%s", _("MQTT: reconnecting to {host}:{port} in {wait} s").format(host=cfg.host, port=cfg.port,
                                                                                  wait=f"{wait:.1f}"))
        return wait

    def _who(self) -> str:
        """How the broker knows this gateway: its login (the shipped broker uses it as client id) and client id."""
        cfg = self.config
        client_id = cfg.effective_client_id(self.gateway_id)
        if cfg.username is not None and cfg.username != client_id:
            return f"login {cfg.username!r} / client id {client_id!r}"
        return f"client id {client_id!r}"

    def _report_disconnect(self) -> None:
        from_broker, code, broker_says = self._ended or (False, _CONNECTION_LOST, None)
        if not from_broker and code == _CONNECTION_LOST:
            what = _("connection lost")
        else:
            try:
                what = ReasonCode(PacketTypes.DISCONNECT, identifier=code).getName()
            except (KeyError, ValueError):
                what = f"reason 0x{code:02X}"
            if from_broker:
                what = _("the broker sent DISCONNECT: {reason}").format(reason=what)
        said = f" ({broker_says})" if broker_says else ""
        log.warning("%s", _("MQTT: disconnected from {host}:{port}: {what}").format(
            host=self.config.host, port=self.config.port, what=what) + said)

    def _report_takeover(self, *, certain: bool, broker_says: str | None, wait_s: float) -> None:
        """One line naming the cause and the fix, at most once per window; the rest are counted."""
        cfg = self.config
        who = self._who()
        said = f" (broker: {broker_says})" if broker_says else ""
        if certain:
            cause = (f"another client connected to {cfg.host}:{cfg.port} with this gateway's {who} and the broker "
                     f"gave it the session (reason 0x8E, session taken over){said}")
        else:
            cause = (f"the broker at {cfg.host}:{cfg.port} closed this gateway's connection "
                     f"{self.takeover.suspect_after} times in a row within {self.takeover.short_s:g} s of accepting "
                     f"it: most likely another client connected with this gateway's {who} (Mosquitto logs "
                     f"'Client ... already connected, closing old connection')")
        self._takeover_log.warning(
            "session_taken_over", who, "session takeovers",
            "MQTT: %s: two gateways share gateway.id or MQTT credentials; give each gateway its own gateway.id and "
            "login. The agent waits %s s before reconnecting (doubling up to %s s while it goes on)",
            cause, f"{wait_s:.1f}" if wait_s < 10 else f"{wait_s:.0f}", f"{self.takeover.max_s:g}",
        )

    # paho callbacks run in this link's thread.
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Properties | None) -> None:
        if reason.is_failure:
            hint = ""
            if reason.value in (134, 135):
                hint = " (check mqtt.username and mqtt.password / password_file for this gateway)"
            self.takeover.connect_failed()
            self._post(Incident("mqtt", "connect_refused", f"broker refused the connection: {reason}{hint}"))
            client.disconnect()
            return
        self._connack_ok = True
        self._up_at = time.monotonic()
        self._ended = None
        client.publish(
            self.topics.status,
            status_payload(self.gateway_id, "online", version=self._version, ts_us=time.time_ns() // 1000),
            qos=1, retain=True,
        )
        # Commands from the backend (alert confirmations ...). The session is clean, so subscribe on every connect.
        client.subscribe(self.topics.commands, qos=1)
        with self._lock:
            self._connected = True
        log.info("%s", _("MQTT: connected to {host}:{port}").format(host=self.config.host, port=self.config.port))
        self._post(Connected(self._session))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                       properties: Properties | None) -> None:
        with self._lock:
            self._connected = False
        # Logged by the link thread once the session is over, when it knows whether this was a takeover.
        said = getattr(properties, "ReasonString", None) if properties is not None else None
        from_broker = bool(getattr(flags, "is_disconnect_packet_from_server", False))
        self._ended = (from_broker, int(reason.value), str(said)[:200] if said else None)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._post(Command(msg.topic, bytes(msg.payload)))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode,
                    properties: Properties | None) -> None:
        self._post(Ack(self._session, mid, not reason.is_failure, str(reason), int(reason.value)))


def _unbound(event: object) -> None:
    """Where events would go before :meth:`MqttLink.bind` (:meth:`MqttLink.start` refuses to start with it)."""


def close_sockets_left_in(exc: BaseException) -> None:
    """Close sockets paho opened but did not close before raising.

    paho 2.2 ``Client._ssl_wrap_socket`` does not close the socket when the TLS handshake fails; it would be closed
    only by the garbage collector, and a gateway retrying every few seconds against a misconfigured broker should
    not depend on that.
    """
    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, socket.socket):
                try:
                    value.close()
                except OSError:
                    pass
        tb = tb.tb_next


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the broker running and listening on this port?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name ({exc.strerror})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message} (check mqtt.tls.ca_file)"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"
