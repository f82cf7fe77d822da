"""deploy/backend: the compose file, make-credentials.sh and the broker's TLS + password + ACL set-up.

* ``docker-compose config -q`` (Debian's docker-compose 1.29, which checks the file against the Compose schema
  without a Docker engine) accepts the compose file with the .env that make-credentials.sh writes, and refuses it
  without one.
* make-credentials.sh makes a CA, a broker certificate that verifies against it (openssl verify) for the given
  names, hashed logins (one per gateway and per bridge process, and the console's), the broker's dynamic-security
  file from them and mosquitto/acl, and prints each gateway's config lines; a second run changes nothing, -R
  rotates, -b adds bridge logins, -X revokes a gateway.
* The real Mosquitto, run with deploy/backend/mosquitto/mosquitto.conf (paths and port adapted to a temp folder:
  tests/support/shipped_broker.py), speaks TLS with that certificate, takes the logins, and applies the rules:
  gateway A may publish under denen/v1/gw-a/, a publish into gateway B's tree gets PUBACK reason code 135, and the
  bridge reads everything through its shared subscription. The attacks of a stolen gateway login are in
  tests/security/test_broker_identity.py.

A missing docker-compose, openssl, mosquitto or mosquitto_passwd fails the test with the install command.
"""

from __future__ import annotations

import json
import re
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from ruamel.yaml import YAML

from agent.gateway.publisher import close_sockets_left_in
from tests.support.paths import BACKEND, REPO
from tests.support.shipped_broker import (
    ShippedBroker,
    copy_backend,
    make_credentials,
    tool,
)


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """deploy/backend copied to a temp dir, with make-credentials.sh run once for two gateways, two bridge logins
    (the second one is the NGSI bridge of the fiware profile) and two consumer logins."""
    backend = copy_backend(tmp_path_factory.mktemp("deploy"))
    proc = make_credentials(backend, "-n", "localhost", "-n", "127.0.0.1", "-n", "mqtt.example.jp", "-b", "2",
                            "-c", "2", "gw-a", "gw-b")
    assert proc.returncode == 0, proc.stderr
    return backend, proc


# ---- docker-compose -------------------------------------------------------------------------------------------


def test_compose_file_validates_with_the_generated_env(credentials: tuple[Path, Any]) -> None:
    compose = tool("docker-compose", "docker-compose")
    backend, _ = credentials
    proc = subprocess.run([compose, "config", "-q"], cwd=backend, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # The resolved file: the six services, the bridge built from the repository with the Dockerfile here (the
    # console runs the same image), and every file the services mount exists in deploy/backend after
    # make-credentials.sh (the console's link secret among them).
    proc = subprocess.run([compose, "config"], cwd=backend, capture_output=True, text=True, timeout=60)
    resolved = YAML(typ="safe").load(proc.stdout)
    assert set(resolved["services"]) == {"mosquitto", "influxdb", "influxdb-setup", "redis", "bridge", "console",
                                         "grafana", "mongo-orion", "orion-ld",
                                         "bridge-ngsi"}  # the last three: profile fiware
    assert {name for name, service in resolved["services"].items() if "fiware" in service.get("profiles", ())} == {
        "mongo-orion", "orion-ld", "bridge-ngsi"}
    assert resolved["services"]["console"]["image"] == resolved["services"]["bridge"]["image"]
    assert (backend / "secrets" / "console" / "link-secret").stat().st_size >= 48
    assert str(resolved["services"]["console"]["ports"][0]).startswith("127.0.0.1:")
    build = resolved["services"]["bridge"]["build"]
    assert (Path(build["context"]) / build["dockerfile"]).resolve() == (backend / "Dockerfile").resolve()
    for name, service in resolved["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith("/"):
                assert Path(source).exists(), f"{name} mounts {source}, which does not exist"
    assert resolved["services"]["bridge"]["depends_on"]["influxdb-setup"]["condition"] == (
        "service_completed_successfully")
    # The de-duplication store is the bridge's, inside the compose network, and keeps nothing on disk.
    assert "redis" in resolved["services"]["bridge"]["depends_on"]
    assert "ports" not in resolved["services"]["redis"]
    # Staff see JST by default, whatever their browser's zone (the dashboards follow Grafana's default zone).
    assert resolved["services"]["grafana"]["environment"]["GF_DATE_FORMATS_DEFAULT_TIMEZONE"] == "Asia/Tokyo"
    assert set(resolved["services"]["redis"]["networks"]) == {"dedupe"} and resolved["networks"]["dedupe"]["internal"]
    assert {n for n, svc in resolved["services"].items() if "dedupe" in svc.get("networks", {})} == {"redis", "bridge"}
    assert resolved["services"]["redis"]["command"][:5] == ["redis-server", "--save", "", "--appendonly", "no"]


def test_compose_file_refuses_to_start_without_secrets(tmp_path: Path) -> None:
    """Without .env the required secrets are missing: docker-compose stops with the hint, never runs blank."""
    compose = tool("docker-compose", "docker-compose")
    backend = copy_backend(tmp_path)
    proc = subprocess.run([compose, "config", "-q"], cwd=backend, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "make-credentials.sh" in proc.stderr
    # docker-compose really checks the schema (a typo in a key is refused), so the pass above means something.
    text = (backend / "docker-compose.yml").read_text(encoding="utf-8").replace("    image: influxdb:2.7",
                                                                                 "    imagee: influxdb:2.7", 1)
    (backend / "docker-compose.yml").write_text(text, encoding="utf-8")
    (backend / ".env").write_text((BACKEND / ".env.example").read_text(encoding="utf-8"), encoding="utf-8")
    proc = subprocess.run([compose, "config", "-q"], cwd=backend, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "imagee" in proc.stderr


def test_bridge_config_and_dockerfile_fit_the_stack() -> None:
    """bridge.yaml uses the v2 sink with the write-only token influxdb/setup.sh makes, via the broker's TLS name,
    and the secrets the image's entrypoint copies from the mounted secrets/bridge-1."""
    yaml = YAML(typ="safe")
    bridge = yaml.load((BACKEND / "bridge.yaml").read_text(encoding="utf-8"))
    compose = yaml.load((BACKEND / "docker-compose.yml").read_text(encoding="utf-8"))
    service = compose["services"]["bridge"]
    assert bridge["sink"]["type"] == "v2" and bridge["sink"]["bucket"] == "denen" and bridge["sink"]["org"] == "denen"
    assert bridge["sink"]["url"] == "http://influxdb:8086"
    assert bridge["mqtt"]["host"] == "mosquitto" and bridge["mqtt"]["port"] == 8883 and bridge["mqtt"]["tls"]
    # Bridge process 1's own login; the broker makes the client id the login, so both are the same.
    assert bridge["mqtt"]["username"] == bridge["mqtt"]["client_id"] == "denen-bridge-1"
    assert bridge["mqtt"]["group"] == "denen-bridge"  # the group mosquitto/acl lets the bridges share
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
    assert mounts["/etc/denen/bridge.yaml"] == "./bridge.yaml"
    assert mounts["/etc/denen/secrets"] == "./secrets/bridge-1"
    # The gateway registry sits beside bridge.yaml in the container, where its relative file: points.
    assert bridge["gateways"]["file"] == "gateways.yaml" and mounts["/etc/denen/gateways.yaml"] == "./gateways.yaml"
    assert (BACKEND / "gateways.yaml").is_file()
    assert Path(bridge["sink"]["token_file"]).parent == Path("/run/denen/influx")
    assert mounts["/run/denen/influx"] == "bridge-token"
    # The entrypoint copies /etc/denen/secrets/* to /run/denen/secrets (a tmpfs), where bridge.yaml reads them.
    assert "/run/denen/secrets" in service["tmpfs"]
    for key in (bridge["mqtt"]["password_file"], bridge["mqtt"]["tls"]["ca_file"]):
        assert Path(key).parent == Path("/run/denen/secrets")
        assert Path(key).name in ("mqtt-password", "ca.pem")  # the names make-credentials.sh uses
    entrypoint = (BACKEND / "bridge-entrypoint.sh").read_text(encoding="utf-8")
    assert "/etc/denen/secrets/*" in entrypoint and "/run/denen/secrets" in entrypoint and "setpriv" in entrypoint
    dockerfile = (BACKEND / "Dockerfile").read_text(encoding="utf-8")
    assert '".[bridge]"' in dockerfile
    assert 'CMD ["denen", "bridge", "-c", "/etc/denen/bridge.yaml"]' in dockerfile
    assert "COPY deploy/backend/bridge-entrypoint.sh" in dockerfile
    assert "!deploy/backend/bridge-entrypoint.sh" in (BACKEND / "Dockerfile.dockerignore").read_text()
    setup = (BACKEND / "influxdb" / "setup.sh").read_text(encoding="utf-8")
    assert "influx v1 dbrp create" in setup and f"TOKEN_FILE={bridge['sink']['token_file']}" in setup
    assert "chown 10001:10001" in setup and "--uid 10001" in dockerfile


def test_bridge_config_loads_with_the_bridges_own_validator(tmp_path: Path) -> None:
    """deploy/backend/bridge.yaml is a valid `denen bridge` config (the container paths mapped to temp files)."""
    from agent.bridge.config import load_bridge_config

    text = (BACKEND / "bridge.yaml").read_text(encoding="utf-8")
    for container_path in ("/run/denen/secrets/mqtt-password", "/run/denen/secrets/ca.pem", "/run/denen/influx/token"):
        assert container_path in text
        local = tmp_path / Path(container_path).name
        local.write_text("secret\n" if not local.name.endswith(".pem") else (BACKEND / "README.md").read_text())
        local.chmod(0o600)
        text = text.replace(container_path, str(local))
    text = text.replace("/var/lib/denen/", f"{tmp_path}/")
    (tmp_path / "bridge.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "gateways.yaml").write_text((BACKEND / "gateways.yaml").read_text(encoding="utf-8"))
    config = load_bridge_config(tmp_path / "bridge.yaml")
    assert config.sink.type == "v2" and config.sink.token_value() == "secret"
    assert config.gateways is not None and config.gateways.file == str(tmp_path / "gateways.yaml")
    assert config.mqtt.client_id == "denen-bridge-1" and config.mqtt.tls is not None


# ---- make-credentials.sh ---------------------------------------------------------------------------------------


def _gateway_block(stdout: str, gateway: str) -> dict[str, Any]:
    block = stdout.split(f"# ---- gateway {gateway} ----", 1)[1].split("# ---- gateway", 1)[0]
    return YAML(typ="safe").load(block)


def test_make_credentials_makes_a_ca_a_broker_certificate_and_logins(credentials: tuple[Path, Any]) -> None:
    backend, proc = credentials
    secrets = backend / "secrets"
    ca = secrets / "ca" / "ca.crt"
    server = secrets / "mosquitto" / "server.crt"
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(server)], capture_output=True, text=True)
    assert verify.returncode == 0 and ": OK" in verify.stdout, verify.stdout + verify.stderr
    text = subprocess.run(["openssl", "x509", "-in", str(server), "-noout", "-text"], capture_output=True,
                          text=True, check=True).stdout
    for name in ("DNS:localhost", "DNS:mqtt.example.jp", "DNS:mosquitto", "IP Address:127.0.0.1"):
        assert name in text
    assert "TLS Web Server Authentication" in text and "CA:FALSE" in text
    ca_text = subprocess.run(["openssl", "x509", "-in", str(ca), "-noout", "-text"], capture_output=True,
                             text=True, check=True).stdout
    assert "CA:TRUE" in ca_text
    # Hashed logins only, one per user; the plain passwords are in the per-user files.
    entries = dict(line.split(":", 1) for line in (secrets / "mosquitto" / "passwd").read_text().splitlines())
    assert set(entries) == {"denen-bridge-1", "denen-bridge-2", "denen-console", "denen-console-cli",
                            "denen-consumer-1", "denen-consumer-2", "gw-a", "gw-b"}
    assert all(h.startswith("$7$") for h in entries.values())
    for user_file in (secrets / "gateways" / "gw-a" / "mqtt-password", secrets / "bridge-1" / "mqtt-password",
                      secrets / "console" / "mqtt-password", secrets / "console-cli" / "mqtt-password",
                      secrets / "consumer-1" / "mqtt-password", secrets / "consumer-2" / "mqtt-password"):
        assert user_file.read_text().strip() not in (secrets / "mosquitto" / "passwd").read_text()
    # What the broker loads: the same hashes, each login bound to its client id, a role per gateway with its own
    # topics, one role for the bridges, one for the console, everything else denied.
    dynsec = json.loads((secrets / "mosquitto" / "dynamic-security.json").read_text())
    assert dynsec["defaultACLAccess"] == {"publishClientSend": False, "publishClientReceive": False,
                                          "subscribe": False, "unsubscribe": True}
    clients = {c["username"]: c for c in dynsec["clients"]}
    assert set(clients) == set(entries)
    for user, c in clients.items():
        assert c["clientid"] == user
        assert entries[user] == f"$7${c['iterations']}${c['salt']}${c['password']}"
    assert {u: [r["rolename"] for r in c["roles"]] for u, c in clients.items()} == {
        "denen-bridge-1": ["denen-bridge"], "denen-bridge-2": ["denen-bridge"], "denen-console": ["denen-console"],
        "denen-console-cli": ["denen-console"], "denen-consumer-1": ["denen-consumer"],
        "denen-consumer-2": ["denen-consumer"], "gw-a": ["gateway-gw-a"], "gw-b": ["gateway-gw-b"]}
    roles_ = {r["rolename"]: {(a["acltype"], a["topic"]) for a in r["acls"]} for r in dynsec["roles"]}
    # A consumer reads each node's retained state and nothing else.
    assert roles_["denen-consumer"] == {(a, "denen/v1/+/nodes/+/state") for a in (
        "subscribeLiteral", "subscribePattern", "publishClientReceive")}
    roles = {r["rolename"]: {(a["acltype"], a["topic"]) for a in r["acls"]} for r in dynsec["roles"]}
    assert roles["gateway-gw-a"] == {("publishClientSend", f"denen/v1/gw-a/{t}") for t in (
        "status", "state", "results", "readings/sos", "readings/alarm", "readings/telemetry",
        "readings/diagnostics")} | {
        ("subscribeLiteral", "denen/v1/gw-a/cmd/#"), ("publishClientReceive", "denen/v1/gw-a/cmd/#")}
    assert roles["denen-bridge"] == {
        ("subscribeLiteral", f"$share/{group}/denen/v1/+/{t}") for group in ("denen-bridge", "denen-bridge-ngsi")
        for t in ("readings/#", "status", "state", "results")} | {
        ("publishClientReceive", "denen/v1/+/readings/#"), ("publishClientReceive", "denen/v1/+/status"),
        ("publishClientReceive", "denen/v1/+/state"), ("publishClientReceive", "denen/v1/+/results"),
        ("publishClientSend", "denen/v1/+/nodes/+/state")}
    assert roles["denen-console"] == {("publishClientSend", f"denen/v1/+/cmd/{c}") for c in (
        "alert-ack", "siren-silence", "test-chirp")} | {(a, f"denen/v1/+/{t}") for a in (
        "subscribeLiteral", "publishClientReceive") for t in ("state", "results")}
    # Secrets stay private: the folder is owner-only, private keys and gateway passwords are mode 600.
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    for private in (secrets / "ca" / "ca.key", secrets / "mosquitto" / "server.key",
                    secrets / "gateways" / "gw-a" / "mqtt-password", secrets / "mosquitto" / "passwd",
                    secrets / "mosquitto" / "dynamic-security.json", secrets / "bridge-1" / "mqtt-password",
                    secrets / "console" / "mqtt-password", secrets / "console-cli" / "mqtt-password",
                    secrets / "consumer-2" / "mqtt-password"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    # .env: every placeholder replaced by a distinct random secret.
    env = dict(line.split("=", 1) for line in (backend / ".env").read_text().splitlines()
               if line and not line.startswith("#"))
    assert "change-me" not in env.values()
    randoms = [env[k] for k in ("INFLUXDB_ADMIN_PASSWORD", "INFLUXDB_ADMIN_TOKEN", "GRAFANA_ADMIN_PASSWORD",
                                "GRAFANA_INFLUX_PASSWORD")]
    assert len(set(randoms)) == 4 and all(re.fullmatch(r"[0-9a-f]{48}", r) for r in randoms)
    # The lines a gateway's config needs.
    block = _gateway_block(proc.stdout, "gw-a")["mqtt"]
    assert block == {"host": "localhost", "port": 8883, "username": "gw-a",
                     "password_file": "mqtt-password", "tls": {"ca_file": "ca.pem"},
                     "topic_prefix": "denen/v1"}
    assert (secrets / "gateways" / "gw-a" / "ca.pem").read_bytes() == ca.read_bytes()
    assert (secrets / "console" / "ca.pem").read_bytes() == (secrets / "console-cli" / "ca.pem").read_bytes() \
        == ca.read_bytes()


def test_make_credentials_gives_each_consumer_its_own_login(tmp_path: Path) -> None:
    backend = copy_backend(tmp_path)
    assert make_credentials(backend, "-n", "localhost", "gw-a").returncode == 0
    secrets = backend / "secrets"
    passwd = secrets / "mosquitto" / "passwd"
    consumer_1 = (secrets / "consumer-1" / "mqtt-password").read_bytes()
    # The shared login of earlier versions is taken out when the script runs again.
    passwd.write_text(passwd.read_text() + "denen-consumer:" + passwd.read_text().split(":", 1)[1].splitlines()[0]
                      + "\n")
    more = make_credentials(backend, "-c", "3")
    assert more.returncode == 0, more.stderr
    assert "removed the old shared consumer login denen-consumer" in more.stderr
    assert (secrets / "consumer-1" / "mqtt-password").read_bytes() == consumer_1
    assert make_credentials(backend).returncode == 0  # later runs keep all three
    users = sorted(line.split(":")[0] for line in passwd.read_text().splitlines())
    assert [u for u in users if u.startswith("denen-consumer")] == [f"denen-consumer-{n}" for n in (1, 2, 3)]
    passwords = {(secrets / f"consumer-{n}" / "mqtt-password").read_text() for n in (1, 2, 3)}
    assert len(passwords) == 3
    dynsec = json.loads((secrets / "mosquitto" / "dynamic-security.json").read_text())
    assert {c["username"]: [r["rolename"] for r in c["roles"]] for c in dynsec["clients"]
            if c["username"].startswith("denen-consumer")} == {
        f"denen-consumer-{n}": ["denen-consumer"] for n in (1, 2, 3)}
    emqx = (secrets / "emqx" / "users.csv").read_text()
    for n in (1, 2, 3):
        assert f"denen-consumer-{n},{(secrets / f'consumer-{n}' / 'mqtt-password').read_text().strip()}," in emqx
    for bad in ("0", "100", "x", "-1"):
        proc = make_credentials(backend, "-c", bad)
        assert proc.returncode != 0 and "-c needs a number of consumers" in proc.stderr, bad


def test_make_credentials_is_idempotent_rotates_on_request_and_checks_ids(tmp_path: Path) -> None:
    backend = copy_backend(tmp_path)
    first = make_credentials(backend, "-n", "localhost", "gw-a", "gw-b")
    assert first.returncode == 0, first.stderr
    secrets = backend / "secrets"
    snapshot = {p: p.read_bytes() for p in secrets.rglob("*") if p.is_file()} | {
        backend / ".env": (backend / ".env").read_bytes()}
    again = make_credentials(backend, "gw-a", "gw-b")
    assert again.returncode == 0, again.stderr
    assert {p: p.read_bytes() for p in snapshot} == snapshot  # nothing re-issued
    assert _gateway_block(again.stdout, "gw-b")["mqtt"]["host"] == "localhost"
    old_a = (secrets / "gateways" / "gw-a" / "mqtt-password").read_text()
    old_hash_b = [line for line in (secrets / "mosquitto" / "passwd").read_text().splitlines()
                  if line.startswith("gw-b:")]
    rotated = make_credentials(backend, "-R", "gw-a")
    assert rotated.returncode == 0, rotated.stderr
    assert (secrets / "gateways" / "gw-a" / "mqtt-password").read_text() != old_a
    lines = (secrets / "mosquitto" / "passwd").read_text().splitlines()
    assert sum(line.startswith("gw-a:") for line in lines) == 1
    assert [line for line in lines if line.startswith("gw-b:")] == old_hash_b
    for bad in ("GW-Upper", "-dash-first", "denen-bridge", "denen-bridge-2", "denen-console", "denen-console-cli",
                "denen-consumer", "denen-consumer-1", "a" * 64, "gw/slash"):
        proc = make_credentials(backend, bad)
        assert proc.returncode != 0 and "make-credentials.sh:" in proc.stderr, bad
    # -b: more bridge logins, the existing one kept; later runs keep them all.
    bridge_1 = (secrets / "bridge-1" / "mqtt-password").read_bytes()
    assert make_credentials(backend, "-b", "2").returncode == 0
    assert (secrets / "bridge-1" / "mqtt-password").read_bytes() == bridge_1
    assert make_credentials(backend).returncode == 0
    users = [line.split(":")[0] for line in (secrets / "mosquitto" / "passwd").read_text().splitlines()]
    assert sorted(users) == ["denen-bridge-1", "denen-bridge-2", "denen-console", "denen-console-cli",
                             "denen-consumer-1", "gw-a", "gw-b"]
    dynsec = json.loads((secrets / "mosquitto" / "dynamic-security.json").read_text())
    assert [c["username"] for c in dynsec["clients"]] == users
    # -X: a revoked gateway's login, password and rules are gone; the others are untouched.
    revoked = make_credentials(backend, "-X", "gw-b")
    assert revoked.returncode == 0, revoked.stderr
    assert not (secrets / "gateways" / "gw-b").exists()
    dynsec = json.loads((secrets / "mosquitto" / "dynamic-security.json").read_text())
    assert [c["username"] for c in dynsec["clients"]] == ["denen-bridge-1", "denen-console", "denen-console-cli",
                                                          "denen-consumer-1", "gw-a", "denen-bridge-2"]
    assert "gateway-gw-b" not in {r["rolename"] for r in dynsec["roles"]}
    # A broken rule in mosquitto/acl is refused with its line.
    acl = backend / "mosquitto" / "acl"
    acl.write_text(acl.read_text() + "gateway publish denen/v1/%u/x\n")
    proc = make_credentials(backend)
    assert proc.returncode != 0 and "acl:" in proc.stderr and "publish" in proc.stderr
    fresh = copy_backend(tmp_path / "fresh")
    proc = make_credentials(fresh, "gw-a")  # no -n: the broker certificate needs a name
    assert proc.returncode != 0 and "-n" in proc.stderr


# ---- the real broker with the deploy config ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def deploy_broker(credentials: tuple[Path, Any],
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    backend, _ = credentials
    broker = ShippedBroker(backend, tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker.port, backend
    finally:
        broker.stop()


class Probe:
    """A paho 2 MQTT v5 client over TLS that records CONNACK, SUBACK and PUBACK reason codes and messages."""

    def __init__(self, port: int, ca: Path, username: str | None, password: str | None, client_id: str) -> None:
        self.cond = threading.Condition()
        self.connack: int | None = None
        self.pubacks: dict[int, int] = {}
        self.subacks: list[int] | None = None
        self.messages: list[tuple[str, bytes]] = []
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=MQTTProtocolVersion.MQTTv5, reconnect_on_failure=False)
        # The broker must prove it holds the certificate make-credentials.sh issued for "localhost".
        c.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)
        if username is not None:
            c.username_pw_set(username, password)
        c.on_connect = self._on_connect
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self.client = c
        c.connect("localhost", port, keepalive=30)
        c.loop_start()

    def _note(self, fn: Any) -> None:
        with self.cond:
            fn()
            self.cond.notify_all()

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        self._note(lambda: setattr(self, "connack", rc.value))

    def _on_publish(self, c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
        self._note(lambda: self.pubacks.__setitem__(mid, rc.value))

    def _on_subscribe(self, c: Any, u: Any, mid: int, rcs: Any, props: Any) -> None:
        self._note(lambda: setattr(self, "subacks", [r.value for r in rcs]))

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        self._note(lambda: self.messages.append((msg.topic, msg.payload)))

    def wait(self, predicate: Any, what: str, timeout: float = 10.0) -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError(f"timed out waiting for {what}")

    def connected(self) -> int:
        self.wait(lambda: self.connack is not None, "CONNACK")
        assert self.connack is not None
        return self.connack

    def publish(self, topic: str, payload: bytes) -> int:
        info = self.client.publish(topic, payload, qos=1)
        self.wait(lambda: info.mid in self.pubacks, f"PUBACK for {topic}")
        return self.pubacks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _login(backend: Path, user: str) -> str:
    path = (backend / "secrets" / "bridge-1" / "mqtt-password" if user == "denen-bridge-1"
            else backend / "secrets" / "gateways" / user / "mqtt-password")
    return path.read_text().strip()


def test_broker_acl_confines_each_gateway_to_its_own_tree(deploy_broker: tuple[int, Path]) -> None:
    port, backend = deploy_broker
    ca = backend / "secrets" / "gateways" / "gw-a" / "ca.pem"
    bridge = Probe(port, backend / "secrets" / "bridge-1" / "ca.pem", "denen-bridge-1",
                   _login(backend, "denen-bridge-1"), "denen-bridge-1")
    gw_a = Probe(port, ca, "gw-a", _login(backend, "gw-a"), "denen-gw-a")
    try:
        assert bridge.connected() == 0 and gw_a.connected() == 0
        # The bridge reads every gateway's tree through its shared subscription.
        bridge.client.subscribe("$share/denen-bridge/denen/v1/+/readings/#", qos=1)
        bridge.wait(lambda: bridge.subacks is not None, "SUBACK")
        assert bridge.subacks == [1], f"bridge subscription refused: {bridge.subacks}"

        assert gw_a.publish("denen/v1/gw-a/readings/sos", b'{"own": true}') == 0  # Success
        assert gw_a.publish("denen/v1/gw-b/readings/sos", b'{"forged": true}') == 135  # Not authorized
        # (Mosquitto 2.0.11 also closes the connection after refusing a QoS 1 publish, so go on with a new one.)
        gw_a2 = Probe(port, ca, "gw-a", _login(backend, "gw-a"), "denen-gw-a-2")
        try:
            assert gw_a2.connected() == 0
            assert gw_a2.publish("denen/v1/gw-a/readings/telemetry", b'{"own": 2}') == 0
        finally:
            gw_a2.close()
        # The refused message was dropped before the last publish began, so once that one is in, it cannot come.
        bridge.wait(lambda: any(t.endswith("/telemetry") for t, _ in bridge.messages), "the bridge's messages")
        assert sorted(bridge.messages) == [("denen/v1/gw-a/readings/sos", b'{"own": true}'),
                                           ("denen/v1/gw-a/readings/telemetry", b'{"own": 2}')]
        # Gateway B itself may publish in its own tree but not in A's; the bridge may not publish readings at all.
        gw_b = Probe(port, ca, "gw-b", _login(backend, "gw-b"), "denen-gw-b")
        try:
            assert gw_b.connected() == 0
            assert gw_b.publish("denen/v1/gw-b/readings/sos", b"{}") == 0
            assert gw_b.publish("denen/v1/gw-a/status", b"{}") == 135
        finally:
            gw_b.close()
        assert bridge.publish("denen/v1/gw-a/readings/sos", b"{}") == 135
    finally:
        bridge.close()
        gw_a.close()


@pytest.mark.parametrize(("user", "password"), [("gw-a", "wrong-password"), ("gw-z", "whatever"), (None, None)],
                         ids=["wrong-password", "unknown-user", "anonymous"])
def test_broker_refuses_bad_logins(deploy_broker: tuple[int, Path], user: str | None, password: str | None) -> None:
    port, backend = deploy_broker
    probe = Probe(port, backend / "secrets" / "bridge-1" / "ca.pem", user, password, f"probe-{user}")
    try:
        assert probe.connected() >= 0x80  # a CONNACK failure reason code (134 bad login / 135 not authorized)
    finally:
        probe.close()


def test_broker_certificate_is_checked_by_clients(deploy_broker: tuple[int, Path], tmp_path: Path) -> None:
    """A client with another CA refuses the broker: TLS is verified, not merely encrypted."""
    port, backend = deploy_broker
    other = tmp_path / "other"
    proc = make_credentials(copy_backend(other), "-n", "localhost")
    assert proc.returncode == 0, proc.stderr
    try:
        probe = Probe(port, other / "deploy" / "backend" / "secrets" / "ca" / "ca.crt", "gw-a",
                      _login(backend, "gw-a"), "probe-other-ca")
    except ssl.SSLCertVerificationError as exc:
        close_sockets_left_in(exc)  # paho 2.2 leaves the socket of a failed TLS handshake open
        assert "certificate verify failed" in str(exc)
    else:
        probe.close()
        pytest.fail("a client trusting another CA connected to the broker")


def test_console_config_loads_with_the_consoles_own_validator(tmp_path: Path) -> None:
    """deploy/backend/console.yaml is a valid `denen console` config (the container paths mapped to temp files)."""
    from agent.console.config import load_console_config

    text = (BACKEND / "console.yaml").read_text(encoding="utf-8")
    for container_path in ("/run/denen/secrets/mqtt-password", "/run/denen/secrets/ca.pem",
                           "/run/denen/secrets/link-secret", "/run/denen/influx/token"):
        assert container_path in text
        local = tmp_path / Path(container_path).name
        local.write_text("s" * 64 + "\n" if not local.name.endswith(".pem") else (BACKEND / "README.md").read_text())
        local.chmod(0o600)
        text = text.replace(container_path, str(local))
    (tmp_path / "console.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "gateways.yaml").write_text((BACKEND / "gateways.yaml").read_text(encoding="utf-8"))
    config = load_console_config(tmp_path / "console.yaml")
    assert config.mqtt.username == "denen-console" and config.mqtt.host == "mosquitto"
    compose = YAML(typ="safe").load((BACKEND / "docker-compose.yml").read_text(encoding="utf-8"))
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["console"]["volumes"]}
    assert mounts["/etc/denen/console.yaml"] == "./console.yaml" and mounts["/etc/denen/secrets"] == "./secrets/console"
    assert mounts["/etc/denen/gateways.yaml"] == "./gateways.yaml"


def test_an_older_env_gains_the_secrets_added_since_and_keeps_its_own(tmp_path: Path) -> None:
    backend = copy_backend(tmp_path)
    assert make_credentials(backend, "-n", "localhost", "gw-a").returncode == 0
    env = backend / ".env"
    before = env.read_text()
    assert "DENEN_CONSOLE_HOOK_TOKEN=" in before and "=change-me" not in before
    older = "".join(line for line in before.splitlines(keepends=True) if "DENEN_CONSOLE_HOOK_TOKEN" not in line)
    env.write_text(older)
    proc = make_credentials(backend, "gw-a")
    assert proc.returncode == 0 and "added DENEN_CONSOLE_HOOK_TOKEN" in proc.stderr, proc.stderr
    after = env.read_text()
    assert after.startswith(older)  # nothing it had is changed
    [token] = [line.split("=", 1)[1] for line in after.splitlines() if line.startswith("DENEN_CONSOLE_HOOK_TOKEN=")]
    assert len(token) >= 32
    assert make_credentials(backend, "gw-a").returncode == 0 and env.read_text() == after  # added once


# ---------------------------------------------------------------------------------------------------------------
# The bridge's systemd unit (a backend without Docker)


def _unit_settings(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current[key] = value
    return sections


def test_bridge_unit_is_what_systemd_accepts_and_speaks_journald(tmp_path: Path) -> None:
    unit = BACKEND / "denen-bridge.service"
    service = _unit_settings(unit.read_text())["Service"]
    assert service["Type"] == "notify" and service["Restart"] == "always"
    assert service["ExecStart"] == "/opt/denen/venv/bin/denen bridge -c /etc/denen/bridge.yaml"
    assert service["SyslogLevelPrefix"] == "yes" and service["SyslogLevel"] == "err"
    # The example bridge config's dead-letter store lies in the unit's state directory, the only place it may write.
    config = YAML(typ="safe").load((REPO / "config" / "bridge" / "bridge.yaml").read_text())
    assert Path(config["dead_letter"]["path"]).parent == Path("/var/lib") / service["StateDirectory"]
    assert service["ProtectSystem"] == "strict"
    # systemd's own parser: every setting understood (it warns, exit 0, on one it does not know; the control below
    # shows that such a warning is seen). The command must exist for verify, so it points at this venv's denen.
    denen = str(Path(sys.executable).parent / "denen")

    def verify(text: str) -> str:
        path = tmp_path / "denen-bridge.service"
        path.write_text(text.replace("/opt/denen/venv/bin/denen", denen))
        proc = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
        return (proc.stdout + proc.stderr).strip()

    assert verify(unit.read_text()) == ""
    assert "Failed to parse service type" in verify(unit.read_text().replace("Type=notify", "Type=notfy"))
