"""The console's MQTT side: commands out to gateways, states and results in.

One paho client (MQTT v5, clean session: the retained states come again at every subscribe, and a command that is
not answered is sent again) subscribes to exactly ``<prefix>/+/state`` and ``<prefix>/+/results`` and publishes
only ``<prefix>/<gw>/cmd/{alert-ack,siren-silence,test-chirp}`` at QoS 1, what the shipped ACL allows the
``denen-console`` login.

A command is a :class:`Pending`: sent at once when connected, then again every ``commands.retry_s`` and at every
reconnect until the gateway's ``results`` message with its ``request_id`` arrives, or ``commands.give_up_s`` has
passed (outcome ``timeout``). The gateway's session is clean, so a command sent while it was offline is lost: the
retries are what carries it. A gateway that gets it twice answers the second ``already_acknowledged`` (or
``not_sounding``); the first answer that arrives is kept.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from agent.bridge.mqttclient import new_client
from agent.console.config import CommandsConfig, ConsoleMqttConfig
from agent.console.state import (
    BadMessage,
    Result,
    StateBook,
    gateway_of,
    parse_result,
    parse_state,
)
from agent.i18n import N_, LazyText, _
from agent.ratelog import RateLimitedLog

__all__ = ["COMMANDS", "CommandLink", "Pending", "new_request_id"]

log = logging.getLogger(__name__)

COMMANDS = ("alert-ack", "siren-silence", "test-chirp")
#: Finished commands kept for their result pages (oldest forgotten first).
FINISHED_MAX = 10_000


def new_request_id() -> str:
    """A fresh request id: 22 characters of [A-Za-z0-9_-], unguessable (it also names the result page)."""
    return secrets.token_urlsafe(16)


@dataclass
class Pending:
    """One command on its way. ``outcome`` is ``pending``, ``answered`` (see ``result``) or ``timeout``.

    ``context`` is the caller's (the audit's alert and who), handed back in ``on_done``.
    """

    request_id: str
    gateway: str
    command: str
    payload: bytes
    deadline: float
    context: dict[str, Any] = field(default_factory=dict)
    sends: int = 0
    next_send: float = 0.0
    outcome: str = "pending"
    result: Result | None = None
    done: threading.Event = field(default_factory=threading.Event)


class CommandLink:
    """The MQTT client of the console and of ``denen ack``.

    Args:
        mqtt_cfg: broker, login and topic prefix.
        commands: retry interval and give-up time.
        states: where the gateways' states go.
        on_done: called (from a background thread) once per command when it is answered or given up.
        clock: monotonic seconds.
    """

    def __init__(self, mqtt_cfg: ConsoleMqttConfig, commands: CommandsConfig, *, states: StateBook,
                 on_done: Callable[[Pending], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 client_id: str | None = None) -> None:
        self.cfg = mqtt_cfg
        self.commands = commands
        self.states = states
        self.on_done = on_done
        self._clock = clock
        self.stats: Counter[str] = Counter()
        self._badlog = RateLimitedLog(log)
        self._lock = threading.Condition()
        self._pending: dict[str, Pending] = {}
        self._finished: OrderedDict[str, Pending] = OrderedDict()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = self._new_client(client_id or mqtt_cfg.effective_client_id())
        prefix = mqtt_cfg.topic_prefix
        self.subscriptions = (f"{prefix}/+/state", f"{prefix}/+/results")

    def _new_client(self, client_id: str) -> mqtt.Client:
        client = new_client(self.cfg, client_id)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    # -- life cycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect (in the background; paho reconnects by itself) and start the retry thread."""
        self._client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s, clean_start=True)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._retry_loop, name="console-commands", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float) -> bool:
        """Whether the client connected and its subscriptions were granted within ``timeout`` seconds."""
        return self._subscribed.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(5)
        self._client.disconnect()
        self._client.loop_stop()

    # -- commands ---------------------------------------------------------------------------------------------
    def submit(self, gateway: str, command: str, doc: dict[str, Any], *, request_id: str | None = None,
               context: dict[str, Any] | None = None) -> Pending:
        """Send ``command`` with ``doc`` (``request_id`` is added) to ``gateway`` until it answers or is given up."""
        if command not in COMMANDS:
            raise ValueError(f"unknown command {command}")
        request_id = request_id or new_request_id()
        payload = json.dumps({**doc, "request_id": request_id}, separators=(",", ":"), ensure_ascii=False).encode()
        now = self._clock()
        item = Pending(request_id, gateway, command, payload, deadline=now + self.commands.give_up_s,
                       context=dict(context or {}), next_send=now)
        with self._lock:
            self._pending[request_id] = item
            self._lock.notify_all()
        return item

    def get(self, request_id: str) -> Pending | None:
        with self._lock:
            return self._pending.get(request_id) or self._finished.get(request_id)

    def _send(self, item: Pending) -> None:
        topic = f"{self.cfg.topic_prefix}/{item.gateway}/cmd/{item.command}"
        info = self._client.publish(topic, item.payload, qos=1)
        item.sends += 1
        self.stats["cmd_sends"] += 1
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("%s", _("command {command} to {gateway} (request {request}): publish failed ({error}); "
                                "sending again in {seconds} s").format(
                command=item.command, gateway=item.gateway, request=item.request_id,
                error=mqtt.error_string(info.rc), seconds=f"{self.commands.retry_s:g}"))
        elif item.sends > 1:
            log.info("%s", _("command {command} to {gateway} (request {request}): no answer yet, sent again "
                             "({sends})").format(command=item.command, gateway=item.gateway,
                                                 request=item.request_id, sends=item.sends))

    def _retry_loop(self) -> None:
        while not self._stop.is_set():
            due: list[Pending] = []
            expired: list[Pending] = []
            with self._lock:
                now = self._clock()
                wait = self.commands.retry_s
                for item in list(self._pending.values()):
                    if now >= item.deadline:
                        expired.append(self._finish(item, "timeout"))
                    elif now >= item.next_send and self._connected.is_set():
                        item.next_send = now + self.commands.retry_s
                        due.append(item)
                    else:
                        # Not connected: the connect callback wakes this thread; the deadline still counts.
                        next_send = item.next_send - now if self._connected.is_set() else wait
                        wait = min(wait, max(0.0, next_send), item.deadline - now)
                if not due and not expired:
                    self._lock.wait(max(0.01, wait) if self._pending else None)
                    continue
            for item in due:
                self._send(item)
            for item in expired:
                log.warning("%s", _("command {command} to {gateway} (request {request}): no answer after {sends} "
                                    "sends in {seconds} s; given up").format(
                    command=item.command, gateway=item.gateway, request=item.request_id, sends=item.sends,
                    seconds=f"{self.commands.give_up_s:g}"))
                self._done(item)

    def _finish(self, item: Pending, outcome: str, result: Result | None = None) -> Pending:
        """Move ``item`` from pending to finished (caller holds the lock)."""
        item.outcome = outcome
        item.result = result
        self._pending.pop(item.request_id, None)
        self._finished[item.request_id] = item
        while len(self._finished) > FINISHED_MAX:
            self._finished.popitem(last=False)
        self.stats[f"cmd_{outcome}"] += 1
        return item

    def _done(self, item: Pending) -> None:
        item.done.set()
        if self.on_done is not None:
            try:
                self.on_done(item)
            except Exception:  # noqa: BLE001 - the audit failing must not stop the command thread
                log.exception("%s", _("console: handling the end of request {request} failed").format(
                    request=item.request_id))

    # -- paho callbacks ---------------------------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Any) -> None:
        if reason.is_failure:
            log.error("%s", _("MQTT: the broker {host}:{port} refused the console: {reason}").format(
                host=self.cfg.host, port=self.cfg.port, reason=reason))
            return
        log.info("%s", _("MQTT: console connected to {host}:{port}").format(host=self.cfg.host, port=self.cfg.port))
        client.subscribe([(t, 1) for t in self.subscriptions])
        self._connected.set()
        with self._lock:
            for item in self._pending.values():
                item.next_send = self._clock()  # what was not answered goes again now
            self._lock.notify_all()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                       properties: Any) -> None:
        self._connected.clear()
        self._subscribed.clear()
        if not self._stop.is_set():
            log.warning("%s", _("MQTT: console disconnected ({reason}); reconnecting").format(reason=reason))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode],
                      properties: Any) -> None:
        refused = [f"{t} ({r})" for t, r in zip(self.subscriptions, reasons, strict=False) if r.is_failure]
        if refused:
            log.error("%s", _("MQTT: the broker refused the console's subscriptions {topics}: check the console "
                              "login's ACL (deploy/backend/mosquitto/acl, role console)").format(
                topics=", ".join(refused)))
            return
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._take(msg.topic, bytes(msg.payload))
        except BadMessage as exc:
            self.stats[f"bad.{exc.reason}"] += 1
            self._badlog.warning(exc.reason, msg.topic[:200], N_("messages"), "%s", LazyText(
                N_("console: {reason} on {topic}: {error}"), reason=exc.reason, topic=msg.topic[:200], error=exc))
        except Exception:  # noqa: BLE001 - no message may stop paho's thread
            self.stats["bad.unexpected"] += 1
            log.exception("%s", _("console: message on {topic} could not be handled").format(topic=msg.topic[:200]))

    def _take(self, topic: str, payload: bytes) -> None:
        prefix = self.cfg.topic_prefix
        gateway = gateway_of(topic, prefix, "state")
        if gateway is not None:
            if not payload:
                self.states.drop(gateway)  # its retained state was removed
                return
            if not self.states.put(parse_state(gateway, payload)):
                raise BadMessage("too_many_gateways", f"more than {self.states.max_gateways} gateways")
            self.stats["states"] += 1
            return
        gateway = gateway_of(topic, prefix, "results")
        if gateway is None:
            raise BadMessage("invalid_topic", "not <prefix>/<gateway>/state or /results")
        result = parse_result(gateway, payload)
        self.stats["results"] += 1
        with self._lock:
            item = self._pending.get(result.request_id or "")
            if item is None or item.gateway != gateway or item.command != result.command:
                # Another console's or a CLI's, or one already answered.
                self.stats["results_not_ours"] += 1
                return
            self._finish(item, "answered", result)
        log.info("%s", _("command {command} to {gateway} (request {request} by {by}): {result}").format(
            command=item.command, gateway=gateway, request=item.request_id, by=item.context.get("by"),
            result=result.summary()))
        self._done(item)
