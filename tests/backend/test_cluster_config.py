"""The clustered path (deploy/backend/cluster/): EMQX cluster, three `denen bridge` processes on one shared
subscription, VictoriaMetrics cluster, Grafana. Validated as configuration only (no Docker engine here):

* ``docker-compose config -q`` (Debian's docker-compose 1.29, which checks the file against the Compose schema and
  resolves every ``${...}``), with and without the required secrets;
* structure: what the services mount, which bridge talks to which node and store, and that the EMQX rules say
  what the shipped Mosquitto's rules say (deploy/backend/mosquitto/acl);
* each bridge config loads with the bridge's own validator.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from tests.support.shipped_broker import tool

REPO = Path(__file__).resolve().parents[2]
BACKEND = REPO / "deploy" / "backend"
CLUSTER = BACKEND / "cluster"
BRIDGES = ("bridge-1", "bridge-2", "bridge-3")


def compose(env: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("docker-compose", "docker-compose"), "--env-file", str(env), *args], cwd=CLUSTER,
                          capture_output=True, text=True, timeout=60, check=False)


def env_file(tmp_path: Path, **extra: str) -> Path:
    """The backend's .env.example plus ``extra`` (the values make-credentials.sh would fill in)."""
    text = (BACKEND / ".env.example").read_text(encoding="utf-8")
    text += "".join(f"{k}={v}\n" for k, v in extra.items())
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / ".env"
    path.write_text(text, encoding="utf-8")
    return path


def resolved(tmp_path: Path) -> dict[str, Any]:
    env = env_file(tmp_path, EMQX_NODE_COOKIE="cookie-for-the-test", GRAFANA_ADMIN_PASSWORD="pw")
    proc = compose(env, "config")
    assert proc.returncode == 0, proc.stderr
    return YAML(typ="safe").load(proc.stdout)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source of a resolved service's volumes."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
        else:
            source, target = v["source"], v["target"]
        out[target] = source
    return out


def flags(service: dict[str, Any]) -> dict[str, str]:
    return dict(arg.lstrip("-").split("=", 1) for arg in service["command"] if arg.startswith("-"))


def test_cluster_compose_validates_and_refuses_to_run_without_its_secrets(tmp_path: Path) -> None:
    env = env_file(tmp_path, EMQX_NODE_COOKIE="cookie-for-the-test", GRAFANA_ADMIN_PASSWORD="pw")
    proc = compose(env, "config", "-q")
    assert proc.returncode == 0, proc.stderr
    bare = env_file(tmp_path / "bare")
    proc = compose(bare, "config", "-q")
    assert proc.returncode != 0 and "EMQX_NODE_COOKIE" in proc.stderr


def test_three_bridges_share_one_group_each_with_its_own_login_node_and_store(tmp_path: Path) -> None:
    services = resolved(tmp_path)["services"]
    assert set(services) == {"emqx1", "emqx2", "emqx3", "vmstorage1", "vmstorage2", "vminsert", "vmselect",
                             *BRIDGES, "grafana"}
    yaml = YAML(typ="safe")
    logins, nodes = set(), set()
    for name in BRIDGES:
        service = services[name]
        m = mounts(service)
        assert Path(m["/etc/denen/secrets"]).name == name  # secrets/bridge-N from make-credentials.sh -b 3
        assert Path(m["/etc/denen/bridge.yaml"]).resolve() == (CLUSTER / f"{name}.yaml").resolve()
        assert Path(m["/etc/denen/gateways.yaml"]).resolve() == (BACKEND / "gateways.yaml").resolve()
        assert "/run/denen/secrets" in service["tmpfs"]
        cfg = yaml.load((CLUSTER / f"{name}.yaml").read_text(encoding="utf-8"))
        mqtt = cfg["mqtt"]
        assert mqtt["username"] == mqtt["client_id"] == f"denen-{name}"  # the broker binds the id to the login
        assert mqtt["group"] == "denen-bridge" and mqtt["topic_prefix"] == "denen/v1"
        assert mqtt["session_expiry_s"] >= 86400  # a bridge away for a day finds its share waiting
        logins.add(mqtt["username"])
        node = mqtt["host"].split(".")[0]
        assert node in services and node.startswith("emqx") and node in service["depends_on"]
        nodes.add(node)
        assert cfg["sink"]["type"] == "v1" and cfg["sink"]["url"] == "http://vminsert:8480/insert/0/influx"
    assert len(logins) == 3 and nodes == {"emqx1", "emqx2", "emqx3"}
    # The EMQX nodes form one cluster: same cookie, the same static seeds, each its own node name.
    envs = [services[f"emqx{i}"]["environment"] for i in (1, 2, 3)]
    assert len({e["EMQX_NODE__COOKIE"] for e in envs}) == 1
    assert len({e["EMQX_CLUSTER__STATIC__SEEDS"] for e in envs}) == 1
    seeds = set(re.findall(r"emqx@[\w.]+", envs[0]["EMQX_CLUSTER__STATIC__SEEDS"]))
    assert {e["EMQX_NODE__NAME"] for e in envs} == seeds
    for i in (1, 2, 3):
        assert mounts(services[f"emqx{i}"])["/opt/emqx/etc/acl.conf"].endswith("emqx/acl.conf")
    # VictoriaMetrics cluster: vminsert writes to every vmstorage, vmselect reads all of them, same replication.
    ins, sel = flags(services["vminsert"]), flags(services["vmselect"])
    storages = {n for n in services if n.startswith("vmstorage")}
    assert {s.split(":")[0] for s in ins["storageNode"].split(",")} == storages
    assert {s.split(":")[0] for s in sel["storageNode"].split(",")} == storages
    assert ins["replicationFactor"] == sel["replicationFactor"] == "2"
    assert all(s.endswith(":8400") for s in ins["storageNode"].split(","))  # vminsert's port on vmstorage
    assert all(s.endswith(":8401") for s in sel["storageNode"].split(","))  # vmselect's port on vmstorage


def test_grafana_reads_vmselect_through_the_provisioned_datasource(tmp_path: Path) -> None:
    grafana = resolved(tmp_path)["services"]["grafana"]
    m = mounts(grafana)
    assert Path(m["/etc/grafana/provisioning"]).resolve() == (CLUSTER / "grafana" / "provisioning").resolve()
    ds = YAML(typ="safe").load((CLUSTER / "grafana" / "provisioning" / "datasources" /
                                "denen-victoriametrics.yaml").read_text(encoding="utf-8"))["datasources"]
    [source] = ds
    assert source["type"] == "prometheus" and source["url"] == "${DENEN_VMSELECT_URL}"
    assert grafana["environment"]["DENEN_VMSELECT_URL"] == "http://vmselect:8481/select/0/prometheus"


def acl_rules() -> list[tuple[str, str, str]]:
    """(who, access, topic) of the shipped Mosquitto rules."""
    out = []
    for line in (BACKEND / "mosquitto" / "acl").read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 3 and not line.startswith("#"):
            out.append((parts[0], parts[1], parts[2]))
    return out


def test_emqx_rules_translate_the_mosquitto_logins_client_id_binding_and_acl() -> None:
    conf = (CLUSTER / "emqx" / "emqx.conf").read_text(encoding="utf-8")
    acl = (CLUSTER / "emqx" / "acl.conf").read_text(encoding="utf-8")
    code = "\n".join(ln for ln in acl.splitlines() if not ln.lstrip().startswith("%%"))
    mosquitto = (BACKEND / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8")
    assert "use_username_as_clientid = true" in conf and "use_username_as_clientid true" in mosquitto
    packet = re.search(r"^max_packet_size (\d+)$", mosquitto, re.MULTILINE)
    assert packet and f"max_packet_size = {packet.group(1)}" in conf
    assert "no_match = deny" in conf and "max_mqueue_len = infinity" in conf and "deny_action = ignore" in conf
    assert "listeners.tcp.default { enable = false }" in conf  # TLS only, as the shipped broker
    assert "backend = built_in_database" in conf and 'path = "etc/acl.conf"' in conf
    assert code.rstrip().endswith("{deny, all}.")
    rules = acl_rules()
    # A gateway publishes exactly its own topics, and subscribes only to its own commands.
    for who, access, topic in rules:
        if who == "gateway":
            # A plain pattern: EMQX fills in no ${username} inside {eq, ...} (tests/backend/test_credentials_emqx.py
            # compares every decision with the shipped Mosquitto's).
            needle = f'"{topic.replace("%u", "${username}")}"'
            if access != "publishClientReceive":  # EMQX checks no delivery; the subscription decides
                assert needle in code, (access, topic)
    # Bridges: the filters of their group, without the $share prefix EMQX strips before checking.
    bridge_filters = {t.split("/", 2)[2] for w, a, t in rules
                      if w == "bridge" and a == "subscribeLiteral" and t.startswith("$share/denen-bridge/")}
    assert bridge_filters == {"denen/v1/+/readings/#", "denen/v1/+/status", "denen/v1/+/state",
                              "denen/v1/+/results"}
    bridge_rule = next(ln for ln in code.split("}.") if "denen-bridge-[0-9]+" in ln and "subscribe" in ln)
    assert all(f'{{eq, "{f}"}}' in bridge_rule for f in bridge_filters)
    # Console: its three commands and its two subscriptions.
    console = [t for w, a, t in rules if w == "console" and a in ("publishClientSend", "subscribeLiteral")]
    assert console and all(f'"{t}"' in code for t in console)
    # No login but a gateway's may publish readings: bridge, console and consumer logins are denied before the
    # gateway rules.
    deny_at = code.index(
        '{deny, {username, {re, "^denen-(bridge-[0-9]+|console(-cli)?|consumer-[0-9]+)$"}}, all, ["#"]}')
    assert deny_at < code.index('"denen/v1/${username}/readings/sos"')


def test_cluster_bridge_configs_load_with_the_bridges_own_validator(tmp_path: Path) -> None:
    from agent.bridge.config import load_bridge_config

    (tmp_path / "gateways.yaml").write_text((BACKEND / "gateways.yaml").read_text(encoding="utf-8"))
    for name in BRIDGES:
        text = (CLUSTER / f"{name}.yaml").read_text(encoding="utf-8")
        for container_path in ("/run/denen/secrets/mqtt-password", "/run/denen/secrets/ca.pem"):
            assert container_path in text
            local = tmp_path / Path(container_path).name
            local.write_text("secret\n" if local.name == "mqtt-password" else "ca\n")
            local.chmod(0o600)
            text = text.replace(container_path, str(local))
        text = text.replace("/var/lib/denen/", f"{tmp_path}/")
        (tmp_path / f"{name}.yaml").write_text(text, encoding="utf-8")
        config = load_bridge_config(tmp_path / f"{name}.yaml")
        assert config.mqtt.client_id == f"denen-{name}" and config.mqtt.tls is not None
        assert config.sink.type == "v1" and config.mqtt.subscriptions()[0] == "$share/denen-bridge/denen/v1/+/readings/#"


def test_the_cluster_bridges_v1_sink_writes_into_victoriametrics(tmp_path: Path, broker: Any, victoria: Any) -> None:
    """The one piece of the clustered path run here: the bridges' sink as bridge-N.yaml sets it (InfluxDB 1.x
    ``/write``, database denen, µs precision) into a real VictoriaMetrics single node, whose ``/write`` is what
    vminsert serves under ``/insert/<tenant>/influx``. Every reading once, its value, its edge time in ms."""
    from agent.bridge import Bridge
    from tests.bridge._helpers import (
        Publisher,
        batch,
        bridge_config,
        reading,
        topic,
        v1_sink,
    )
    from tests.support.polling import wait_until

    sink = YAML(typ="safe").load((CLUSTER / "bridge-1.yaml").read_text(encoding="utf-8"))["sink"]
    assert sink["type"] == "v1" and sink["url"].endswith("/insert/0/influx")
    bridge = Bridge(bridge_config(broker=broker, sink=v1_sink(victoria.url, sink["database"]),
                                  dead_letter=tmp_path / "dead.db"))
    bridge.start()
    pub = Publisher(broker)
    try:
        assert bridge.wait_subscribed(10)
        readings = [reading("gw-v2", 0x301 + i % 5, 1 + i // 5, "water_level", {"level_cm": 100.0 + i * 0.25})
                    for i in range(100)]
        pub.publish([(topic("gw-v2"), batch("gw-v2", readings[i:i + 20])) for i in range(0, 100, 20)])
        assert wait_until(lambda: bridge.counters().get("messages_acked", 0) == 5, 15), bridge.counters()
        series = victoria.wait_export('{__name__="water_level_level_cm"}',
                                      lambda s: sum(len(x["values"]) for x in s) >= 100)
    finally:
        pub.close()
        bridge.stop()
    got = {(s["metric"]["node"], ts): v for s in series for v, ts in zip(s["values"], s["timestamps"], strict=True)}
    assert got == {(r["node"], r["ts_us"] // 1000): r["values"]["level_cm"] for r in readings}
    assert all(s["metric"].get("db") == "denen" for s in series)  # the v1 database becomes a label
