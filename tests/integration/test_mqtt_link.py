"""The MQTT link against a real Mosquitto: Last Will, username/password, TLS with certificate verification,
and an ES920LR radio on the full path."""

from __future__ import annotations

import datetime
import ipaddress
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.config import parse_config
from agent.dev.devbroker import Mosquitto
from agent.gateway.core import Gateway
from drivers.sim.es920lr import SimEs920lr
from tests.support.broker import Collector
from tests.support.field import NODES, FieldNode, config_text, default_values, readings_of
from tests.support.polling import wait_until

pytestmark = pytest.mark.broker


def radioless(journal: Path, mqtt_port: int, extra_mqtt: str) -> Gateway:
    """A started gateway without radios, its broker on ``mqtt_port`` with ``extra_mqtt`` (lines of ``mqtt:``)."""
    gw = Gateway(parse_config(config_text(port="loop://", mqtt_port=mqtt_port, journal=journal, nodes=[],
                                          extra_mqtt=extra_mqtt)), radios=[])
    gw.start()
    return gw


def _status_docs(col: Collector) -> list[dict]:
    return [json.loads(p) for t, p, _ in col.messages if t.endswith("/status")]


def test_retained_online_status_and_last_will_offline_on_a_hard_kill(tmp_path: Path, broker: Mosquitto) -> None:
    """A gateway that dies without a goodbye is shown offline by the broker's Last Will."""
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(config_text(port="loop://", mqtt_port=broker.port, journal=tmp_path / "j.db", nodes=[]))
    col = Collector(broker, "denen/v1/+/status", client_id="status-watch")

    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "-c", str(cfg)],
                            cwd=Path(__file__).resolve().parents[2], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert col.wait_for(lambda m: any(d["state"] == "online" for d in _status_docs(col)), 15)
        proc.kill()
        proc.wait(10)
        assert col.wait_for(lambda m: _status_docs(col)[-1]["state"] == "offline", 15)
        assert _status_docs(col)[-1] == {"schema": "denen.status/1", "gateway": "gw-test-01", "state": "offline",
                                         "agent": "0.1.0"}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        col.close()
    # Retained: a subscriber arriving later still learns the gateway is offline.
    late = Collector(broker, "denen/v1/gw-test-01/status", client_id="late")
    try:
        assert late.wait_for(lambda m: len(m) >= 1, 5)
        topic, payload, retained = late.messages[0]
        assert retained and json.loads(payload)["state"] == "offline"
    finally:
        late.close()


def _password_broker(tmp_path: Path, extra: str = "") -> Mosquitto:
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "gw-test-01", "s3cret-pass"], check=True)
    b = Mosquitto(tmp_path / "authbroker", extra=f"password_file {pw}\n" + extra)
    # The generated config allows anonymous clients; this broker must not.
    b.conf.write_text(b.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    return b


def test_username_password_connects_and_a_wrong_password_is_refused_clearly(tmp_path: Path) -> None:
    b = _password_broker(tmp_path)
    b.start()
    try:
        (tmp_path / "pw").write_text("s3cret-pass\n")
        (tmp_path / "pw").chmod(0o600)  # a password file every user can read is refused
        gw = radioless(tmp_path / "a.db", b.port, f"  username: gw-test-01\n  password_file: {tmp_path / 'pw'}")
        assert wait_until(lambda: gw.link.connected, 10)
        gw.stop()

        gw = radioless(tmp_path / "b.db", b.port, "  username: gw-test-01\n  password: wrong-pass")
        assert wait_until(lambda: gw.stats.counters["mqtt.connect_refused"] >= 1, 10)
        assert not gw.link.connected
        gw.stop()
    finally:
        b.stop()


def _make_ca_and_server(tmp: Path) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "denen test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = tmp / "ca.crt", tmp / "server.crt", tmp / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_file, cert_file, key_file


def test_tls_with_certificate_verification(tmp_path: Path) -> None:
    ca_file, cert_file, key_file = _make_ca_and_server(tmp_path)
    b = Mosquitto(tmp_path / "tlsbroker", extra=f"cafile {ca_file}\ncertfile {cert_file}\nkeyfile {key_file}\n")
    b.start()
    try:
        gw = radioless(tmp_path / "t.db", b.port, f"  tls:\n    ca_file: {ca_file}")
        assert wait_until(lambda: gw.link.connected, 10)
        gw.stop()
        # A CA that did not sign the broker's certificate: refused, counted, never connected.
        other = tmp_path / "other"
        other.mkdir()
        other_ca, _, _ = _make_ca_and_server(other)
        gw = radioless(tmp_path / "u.db", b.port, f"  tls:\n    ca_file: {other_ca}")
        assert wait_until(lambda: gw.stats.counters["mqtt.connect_failed"] >= 1, 10)
        assert not gw.link.connected
        gw.stop()
    finally:
        b.stop()


def test_es920lr_radio_on_the_full_path(tmp_path: Path, broker: Mosquitto) -> None:
    sim = SimEs920lr(name="lora1", link=str(tmp_path / "lora1"), boot_delay_s=0.05, rng=random.Random(3))
    sim.start()
    nodes = [FieldNode(n.node_id, n.kind) for n in NODES]
    text = config_text(port=str(tmp_path / "lora1"), mqtt_port=broker.port, journal=tmp_path / "j.db", nodes=nodes)
    text = text.replace("    driver: rak3172", "    driver: es920lr\n    es920:\n      format: binary")
    gw = Gateway(parse_config(text))
    col = Collector(broker, "denen/v1/+/readings/#", client_id="es920-col")
    gw.start()
    try:
        assert sim.wait_for(lambda: sim.mode == "operation", timeout=15), sim.commands
        sos, trap = nodes[0], nodes[1]
        assert sim.inject_uplink(sos.frame(default_values("sos", 0)), rssi=-75, src=0x0002)
        assert sim.inject_uplink(trap.frame(default_values("trap", 1)), rssi=-101, src=0x0003)
        assert col.wait_for(lambda m: len(readings_of(m)) >= 2, 15)
        got = {r["kind"]: r for r in readings_of(col.messages)}
        assert got["sos"]["rssi"] == -75 and got["sos"]["snr"] is None and got["sos"]["auth"] == "mic"
        assert got["trap"]["values"]["fired"] == 1.0 and got["trap"]["radio"] == "lora0"
        assert got["sos"]["id"] == f"gw-test-01/{sos.hex}/1" and got["trap"]["id"] == f"gw-test-01/{trap.hex}/1"
    finally:
        gw.stop()
        col.close()
        sim.stop()


def test_publish_survives_paho_reporting_a_disconnect_inside_publish(tmp_path: Path, broker: Mosquitto) -> None:
    """paho reports a disconnect while a publish is under way (on_disconnect, which takes the link's lock, runs
    around the publish). That must not deadlock the core (seen: an agent hung for good after a broker kicked it
    mid-publish)."""
    import threading

    from paho.mqtt.reasoncodes import ReasonCode

    from agent.gateway.publisher import MqttLink

    cfg = parse_config(config_text(port="loop://", mqtt_port=broker.port, journal=tmp_path / "j.db", nodes=[]))
    link = MqttLink(cfg.mqtt, "gw-test-01", lambda item: None, version="test")
    link.start()
    try:
        assert wait_until(lambda: link.connected, 10)
        client = link._client
        real_publish = client.publish

        def publish_then_drop(*args, **kwargs):  # what paho does when the inline write fails
            info = real_publish(*args, **kwargs)
            link._on_disconnect(client, None, None, ReasonCode(2, identifier=0x80), None)
            return info

        client.publish = publish_then_drop
        done = threading.Event()
        threading.Thread(target=lambda: (link.publish("denen/v1/gw-test-01/readings/telemetry", b"{}"),
                                         done.set()), daemon=True).start()
        assert done.wait(5), "MqttLink.publish deadlocked on its own lock"
        assert not link.connected
    finally:
        link.stop()


def test_every_socket_write_happens_on_the_link_thread(tmp_path: Path, broker: Mosquitto) -> None:
    """The core publishes from its own thread; the bytes must still go out from the link thread only, which runs
    paho's loop(): two threads writing one socket could interleave the parts of two packets."""
    import threading

    from agent.gateway.publisher import MqttLink

    cfg = parse_config(config_text(port="loop://", mqtt_port=broker.port, journal=tmp_path / "j.db", nodes=[]))
    acked: list[object] = []
    link = MqttLink(cfg.mqtt, "gw-test-01", acked.append, version="test")
    link.start()
    try:
        assert wait_until(lambda: link.connected, 10)
        client = link._client
        writers: list[str] = []
        real_send = client._sock_send

        def noted_send(buf: bytes) -> int:
            writers.append(threading.current_thread().name)
            return real_send(buf)

        client._sock_send = noted_send
        for i in range(50):
            assert link.publish("denen/v1/gw-test-01/readings/telemetry", b'{"n":%d}' % i) is not None
        assert wait_until(lambda: len(writers) >= 50, 10), writers
        link_thread = {t.name for t in threading.enumerate() if t.ident == link._thread.ident}
        assert set(writers) == link_thread, set(writers)
    finally:
        link.stop()
