"""The broker exactly as deploy/backend ships it, on a free loopback port, for attack tests.

deploy/backend is copied to a temp dir and its make-credentials.sh makes the CA, the broker certificate, the logins
and the dynamic-security file. :class:`ShippedBroker` runs the real ``mosquitto`` with the shipped mosquitto.conf;
only the paths (secrets, persistence, log, the plugin's location on this machine), the port and, when running as
root, ``user root`` are rewritten. A test that needs a broker *without* one of the shipped defences (its control)
passes ``variant``, which changes the rewritten text and says so.

Also: :class:`Mqtt`, a paho 2 MQTT v5 client over TLS that records every reason code, and :func:`largest_batch`,
the biggest reading batch a gateway can legitimately publish, built with the agent's own frame decoder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.dev.devbroker import free_port
from tests.support.paths import BACKEND
from tests.support.process import end

#: Where Debian installs the dynamic-security plugin (the shipped path is the eclipse-mosquitto image's).
PLUGIN_PATHS = ("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
                "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so")


def tool(name: str, package: str) -> str:
    """Path of a program the tests need; a missing one fails the test with the install command."""
    path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)),
                                      None)
    if path is None:
        pytest.fail(f"{name} is not installed; the tests need it. Install it with: apt-get install -y {package} "
                    "(bash deploy/dev.sh test does this when run as root)")
    return path


def copy_backend(dest: Path) -> Path:
    """A copy of deploy/backend at <dest>/deploy/backend, without secrets or .env of a developer's own run."""
    target = dest / "deploy" / "backend"
    shutil.copytree(BACKEND, target, ignore=shutil.ignore_patterns("secrets", ".env", "__pycache__"))
    return target


def make_credentials(backend: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the shipped make-credentials.sh of ``backend``."""
    tool("openssl", "openssl")
    tool("mosquitto_passwd", "mosquitto")
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin"}
    return subprocess.run(["sh", str(backend / "make-credentials.sh"), *args], capture_output=True, text=True,
                          timeout=60, env=env)


def password(backend: Path, user: str) -> str:
    """The plain password make-credentials.sh made for a gateway, bridge, console or consumer login."""
    if user.startswith("denen-bridge-"):
        path = backend / "secrets" / f"bridge-{user.removeprefix('denen-bridge-')}" / "mqtt-password"
    elif user.startswith("denen-consumer-"):
        path = backend / "secrets" / f"consumer-{user.removeprefix('denen-consumer-')}" / "mqtt-password"
    elif user in ("denen-console", "denen-console-cli"):
        path = backend / "secrets" / user.removeprefix("denen-") / "mqtt-password"
    else:
        path = backend / "secrets" / "gateways" / user / "mqtt-password"
    return path.read_text().strip()


def plugin_path() -> str:
    found = next((p for p in PLUGIN_PATHS if os.path.exists(p)), None)
    if found is None:
        pytest.fail("mosquitto_dynamic_security.so is not installed; install it with: apt-get install -y mosquitto")
    return found


class ShippedBroker:
    """deploy/backend/mosquitto/mosquitto.conf on 127.0.0.1:``port``, with the secrets of ``backend``.

    Args:
        backend: a deploy/backend copy on which make-credentials.sh has run.
        workdir: persistence, log and the rewritten config go here.
        variant: for a control only: changes the rewritten config text (and may write files into ``workdir``).
    """

    def __init__(self, backend: Path, workdir: Path, *, variant: Callable[[str, Path], str] | None = None) -> None:
        self.binary = tool("mosquitto", "mosquitto")
        self.backend = backend
        self.workdir = workdir
        self.port = free_port()
        self.log = workdir / "mosquitto.log"
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        text = self.shipped_text()
        if variant is not None:
            text = variant(text, workdir)
        self.conf.write_text(text, encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    def shipped_text(self) -> str:
        """The shipped config with paths, port and (as root) the user rewritten, nothing else."""
        text = (self.backend / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8")
        secrets = self.backend / "secrets" / "mosquitto"
        replacements = [
            (r"^listener 8883$", f"listener {self.port} 127.0.0.1"),
            (r"/mosquitto/secrets/", f"{secrets}/"),
            (r"^plugin /usr/lib/mosquitto_dynamic_security\.so$", f"plugin {plugin_path()}"),
            (r"^persistence_location .*$", f"persistence_location {self.workdir / 'data'}/"),
            (r"^log_dest stdout$", f"log_dest file {self.log}"),
        ]
        for pattern, new in replacements:
            text, n = re.subn(pattern, new, text, flags=re.M)
            assert n, f"mosquitto.conf no longer has {pattern!r}; update tests/support/shipped_broker.py"
        if os.geteuid() == 0:
            text = "user root\n" + text  # as root, mosquitto would drop to user 'mosquitto', who cannot read tmp files
        return text

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.proc.stderr and self.proc.stderr.close()  # type: ignore[func-returns-value]
                self.proc = None
                pytest.fail(f"mosquitto refused the shipped config: {err}{self.read_log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"mosquitto did not listen within {timeout} s: {self.read_log()}")
                time.sleep(0.02)

    def reload(self) -> None:
        """SIGHUP: Mosquitto re-reads its config (what the operator gets from ``kill -HUP``)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)

    def restart(self) -> None:
        """A clean stop (sessions and queues saved) and a start: ``docker compose restart mosquitto``."""
        self.stop()
        self.start()

    def stop(self) -> None:
        end(self.proc, 10.0)
        self.proc = None

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


# ---- controls: the shipped config without one defence ------------------------------------------------------------


def without_clientid_binding(text: str, workdir: Path) -> str:
    """No use_username_as_clientid and no per-login client id in the dynamic-security file: a login may use any
    client id (the broker as it was shipped before)."""
    dynsec = re.search(r"^plugin_opt_config_file (.*)$", text, flags=re.M)
    assert dynsec is not None
    doc = json.loads(Path(dynsec.group(1)).read_text())
    for client in doc["clients"]:
        client.pop("clientid", None)
    unbound = workdir / "dynamic-security-unbound.json"
    unbound.write_text(json.dumps(doc))
    text, n = re.subn(r"^use_username_as_clientid true\n", "", text, flags=re.M)
    assert n == 1
    return text.replace(dynsec.group(0), f"plugin_opt_config_file {unbound}")


def with_acl_file(text: str, workdir: Path) -> str:
    """password_file + acl_file instead of the dynamic-security plugin, with rules that say the same as the shipped
    ones (Mosquitto's acl_file has no notion of subscribe rights: it only has read and write)."""
    dynsec = re.search(r"^plugin_opt_config_file (.*)$", text, flags=re.M)
    assert dynsec is not None
    passwd = Path(dynsec.group(1)).with_name("passwd")
    acl = workdir / "acl"
    acl.write_text("pattern write denen/v1/%u/status\npattern write denen/v1/%u/readings/+\n"
                   "pattern read denen/v1/%u/cmd/#\n"
                   "user denen-bridge-1\ntopic read denen/v1/+/readings/#\ntopic read denen/v1/+/status\n")
    text, n = re.subn(r"^plugin .*\nplugin_opt_config_file .*\n", f"password_file {passwd}\nacl_file {acl}\n", text,
                      flags=re.M)
    assert n == 1
    return text


def without_max_packet_size(text: str, workdir: Path) -> str:
    text, n = re.subn(r"^max_packet_size \d+\n", "", text, flags=re.M)
    assert n == 1
    return text


# ---- a recording MQTT client --------------------------------------------------------------------------------------


class Mqtt:
    """A paho 2 MQTT v5 client over TLS (the broker's certificate checked against the CA of ``backend``) that
    records CONNACK, SUBACK, PUBACK and DISCONNECT reason codes and the messages it receives.

    Args:
        auto_ack: False keeps received QoS 1 messages unacknowledged (a bridge that has not written them yet).
        secret: the password to send, instead of the one make-credentials.sh made for ``user``.
    """

    def __init__(self, broker: ShippedBroker, user: str, client_id: str, *, clean_start: bool = True,
                 session_expiry_s: int | None = None, will: str | None = None, auto_ack: bool = True,
                 secret: str | None = None) -> None:
        self.cond = threading.Condition()
        self.connack: int | None = None
        self.session_present: bool | None = None
        self.assigned_id: str | None = None
        self.subacks: list[int] | None = None
        self.pubacks: dict[int, int] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.disconnects: list[int] = []
        self.user = user
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=MQTTProtocolVersion.MQTTv5, reconnect_on_failure=False)
        c.tls_set(ca_certs=str(broker.backend / "secrets" / "ca" / "ca.crt"), cert_reqs=ssl.CERT_REQUIRED)
        c.username_pw_set(user, secret if secret is not None else password(broker.backend, user))
        c.manual_ack_set(not auto_ack)
        c.max_inflight_messages_set(0)
        c.max_queued_messages_set(0)
        if will is not None:
            c.will_set(will, b'{"state":"offline"}', qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_disconnect = self._on_disconnect
        self.client = c
        self._props = None
        if session_expiry_s is not None:
            self._props = Properties(PacketTypes.CONNECT)
            self._props.SessionExpiryInterval = session_expiry_s
        c.connect("localhost", broker.port, keepalive=30, clean_start=clean_start, properties=self._props)
        c.loop_start()

    def _note(self, fn: Callable[[], Any]) -> None:
        with self.cond:
            fn()
            self.cond.notify_all()

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        def note() -> None:
            self.connack = rc.value
            self.session_present = bool(getattr(flags, "session_present", False))
            self.assigned_id = getattr(props, "AssignedClientIdentifier", None)
        self._note(note)

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: Any, props: Any) -> None:
        self._note(lambda: setattr(self, "subacks", [r.value for r in rcs]))

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
        self._note(lambda: self.pubacks.__setitem__(mid, rc.value))

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        self._note(lambda: self.messages.append((msg.topic, bytes(msg.payload))))

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        self._note(lambda: self.disconnects.append(rc.value))

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError(f"timed out waiting for {what}")

    def connected(self) -> int:
        """The CONNACK reason code (0 = accepted)."""
        self.wait(lambda: self.connack is not None or bool(self.disconnects), "CONNACK")
        return self.connack if self.connack is not None else self.disconnects[0]

    def subscribe(self, topic: str) -> int:
        """Subscribe with QoS 1; the SUBACK reason code (1 = granted QoS 1, 135 = not authorized)."""
        with self.cond:
            self.subacks = None
        self.client.subscribe(topic, qos=1)
        self.wait(lambda: self.subacks is not None or bool(self.disconnects), f"SUBACK for {topic}")
        assert self.subacks is not None, f"disconnected instead of a SUBACK: {self.disconnects}"
        return self.subacks[0]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int | None:
        """Publish with QoS 1; the PUBACK reason code, or None when the broker closed the connection instead."""
        before = len(self.disconnects)
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        self.wait(lambda: info.mid in self.pubacks or len(self.disconnects) > before, f"PUBACK for {topic}")
        return self.pubacks.get(info.mid)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---- the largest legitimate batch ---------------------------------------------------------------------------------


def largest_batch() -> tuple[str, bytes]:
    """(topic, payload) of the biggest reading batch a gateway publishes with a valid config (see the derivation
    in deploy/backend/mosquitto/mosquitto.conf, max_packet_size).

    The reading is made by the agent's own FrameDecoder from the longest frame a LoRa module delivers (255 bytes,
    no MIC, so a 245-byte body) filled with the LPP record that makes the most JSON per byte; every name is at its
    longest; as many as the agent's own batching (fit_batch under mqtt.batch_max_kb at its upper bound, 1024)
    puts into one message go into the envelope the gateway writes.
    """
    from agent.config import parse_config  # noqa: PLC0415 - only this helper needs the agent's decoder
    from agent.gateway.readings import READING_SCHEMA, FrameDecoder  # noqa: PLC0415
    from drivers.codec import frame, lpp  # noqa: PLC0415
    from drivers.types import Uplink  # noqa: PLC0415

    gateway, site, radio, name = "g" * 63, "s" * 63, "r" * 32, "n" * 64
    config = parse_config(f"""
gateway: {{id: {gateway}, site: {site}}}
journal: {{path: /nonexistent/journal.db}}
mqtt: {{batch_max_readings: 5000, batch_max_kb: 1024}}
radios: [{{name: {radio}, driver: rak3172, port: /dev/null}}]
nodes: [{{id: "ffffffff", name: {name}, kind: heartbeat, unauthenticated: flag}}]
""")
    body = lpp.encode([(3, "voltage", 655.35)] + [(100 + i, "accelerometer", (-32.768,) * 3) for i in range(30)])
    wire = frame.build(0xFFFFFFFF, 0xFFFFFFFE, 0x0F, body)
    assert len(wire) == 254  # one byte short of a full LoRa frame: no LPP record is 1 byte long
    ts_us = time.time_ns() // 1000
    decoded = FrameDecoder(config, {}).decode(Uplink(radio, wire, -128, -20.25, None, ts_us))
    assert decoded.entry is not None, decoded.quarantined
    # The longer clock state, as a gateway writes it before NTP sync (this machine's clock may be synced).
    reading = decoded.entry.body.replace('"clock":"synced"', '"clock":"unsynced"')
    assert len(reading.encode()) == 3292, reading
    from agent.gateway.outbox import batch_room, fit_batch  # noqa: PLC0415

    # As agent/gateway/outbox.py cuts a backlog (fit_batch) and wraps it (Gateway._send_bodies).
    rows = fit_batch([(i, reading) for i in range(config.mqtt.batch_max_readings)], batch_room(config))
    payload = (
        f'{{"schema":"{READING_SCHEMA}","gateway":"{gateway}","site":"{site}","lane":"telemetry",'
        f'"sent_us":{ts_us},"readings":[' + ",".join(body for _, body in rows) + "]}"
    ).encode()
    assert len(payload) <= config.mqtt.batch_max_kb * 1024
    return f"denen/v1/{gateway}/readings/telemetry", payload
