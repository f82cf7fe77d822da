"""`denen ack` as an operator runs it (a real process), against a real Mosquitto and InfluxDB and a fake gateway."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.console.links import LinkSigner
from agent.dev.devbroker import Mosquitto, free_port
from tests.console._rig import SECRET, FakeGateway, console_yaml, sos_alert
from tests.support.field import write_config
from tests.support.influx import InfluxDB1

pytestmark = pytest.mark.broker
REPO = Path(__file__).resolve().parents[2]


def denen(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def config(servers: tuple[Mosquitto, InfluxDB1], tmp_path_factory: pytest.TempPathFactory) -> Path:
    broker, influx = servers
    return console_yaml(tmp_path_factory.mktemp("cli"), broker_port=broker.port, http_port=free_port(),
                        influx_url=influx.url, retry_s=0.5)


def test_link_prints_a_signed_url(config: Path) -> None:
    out = denen("ack", "link", "gw-a", "sos:00a1b2c3", "--ttl", "2h", "--to", "山田", "-c", str(config))
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip()
    base, token = url.rsplit("/a/", 1)
    assert base.startswith("http://127.0.0.1:")
    link = LinkSigner(SECRET.encode()).verify(token)
    assert (link.gateway, link.key, link.recipient) == ("gw-a", "sos:00a1b2c3", "山田")
    assert abs(link.expires_s - (time.time() + 7200)) < 30
    bad = denen("ack", "link", "gw-a", "sos 1", "-c", str(config))
    assert bad.returncode == 2 and "is not an alert key" in bad.stderr and "Traceback" not in bad.stderr
    bad = denen("ack", "link", "gw-a", "sos:1", "--ttl", "soon", "-c", str(config))
    assert bad.returncode == 2 and "is not a duration" in bad.stderr


def test_ack_waits_for_the_gateway_and_exits_by_its_answer(config: Path, gateways: list[FakeGateway],
                                                           servers: tuple[Mosquitto, InfluxDB1]) -> None:
    broker, influx = servers
    gw = FakeGateway(broker.port, "gw-h", [sos_alert("00a00001")])
    gateways.append(gw)
    out = denen("ack", "ack", "gw-h", "sos:00a00001", "--by", "当直 鈴木", "-c", str(config))
    assert out.returncode == 0, out.stderr
    assert "gw-h: sos:00a00001: stopped" in out.stdout
    (name, doc), = gw.commands
    assert name == "alert-ack" and doc["keys"] == ["sos:00a00001"] and doc["by"] == "当直 鈴木"
    assert doc["via"] == "cli"
    rows = influx.rows("SELECT * FROM alert_ack WHERE gateway = 'gw-h'", "denen")
    first, second = sorted(rows, key=lambda r: r["time"])
    assert first["by"] == "当直 鈴木" and first["from_ip"].startswith("cli:") and first["alert_id"] == "sos:00a00001#7"
    assert first["ack_delay_s"] > 100 and second["result"] == "stopped"

    again = denen("ack", "ack", "gw-h", "sos:00a00001", "--by", "当直 鈴木", "-c", str(config))
    assert again.returncode == 0 and "already_acknowledged" in again.stdout
    cleared = denen("ack", "ack", "gw-h", "sos:00a0dead", "--by", "当直 鈴木", "-c", str(config))
    assert cleared.returncode == 1 and "gw-h: sos:00a0dead: not_active" in cleared.stdout
    nosiren = denen("ack", "silence", "gw-h", "sos:00a00001", "--by", "当直 鈴木", "-c", str(config))
    assert nosiren.returncode == 1 and "not_sounding" in nosiren.stdout


def test_no_answer_and_no_broker_exit_2(config: Path, gateways: list[FakeGateway],
                                        servers: tuple[Mosquitto, InfluxDB1], tmp_path: Path) -> None:
    broker, influx = servers
    mute = FakeGateway(broker.port, "gw-i", [], answer=lambda name, doc: False)
    gateways.append(mute)
    out = denen("ack", "test-chirp", "gw-i", "--by", "installer", "--wait", "1.5s", "-c", str(config))
    assert out.returncode == 2 and "no answer from gw-i" in out.stderr and "Traceback" not in out.stderr
    assert len(mute.commands) >= 2  # sent again within the wait
    assert [r["result"] for r in influx.rows("SELECT result FROM alert_ack WHERE gateway = 'gw-i' AND "
                                              "result != ''", "denen")] == ["timeout"]

    closed = tmp_path / "closed.yaml"
    write_config(closed, config.read_text().replace(f"port: {broker.port}", f"port: {free_port()}"))
    (tmp_path / "link-secret").write_bytes((config.parent / "link-secret").read_bytes())
    (tmp_path / "link-secret").chmod(0o600)
    (tmp_path / "gateways.yaml").write_bytes((config.parent / "gateways.yaml").read_bytes())
    out = denen("ack", "ack", "gw-i", "sos:1", "--by", "x", "--wait", "1s", "-c", str(closed))
    assert out.returncode == 2 and "could not connect to the broker" in out.stderr and "nothing was sent" in out.stderr


def test_config_errors_name_file_line_and_key(tmp_path: Path) -> None:
    write_config(tmp_path / "short", "too short\n")
    bad = write_config(tmp_path / "console.yaml",
                       "http:\n  public_url: ftp://x\nlinks:\n  secret_file: short\nmqtt:\n  host: broker.example.jp\n")
    out = denen("ack", "link", "gw-a", "sos:1", "-c", str(bad))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert any(f"{bad}:2:" in line and "http.public_url" in line for line in lines), out.stderr
    assert any(f"{bad}:4:" in line and "links.secret_file" in line and "shorter than 32 bytes" in line
               for line in lines), out.stderr
    assert any(f"{bad}:6:" in line and "mqtt.host" in line and "tls is not set" in line
               for line in lines), out.stderr
    # Secrets other users can read are refused, as in every denen config.
    write_config(tmp_path / "long", "x" * 40 + "\n")
    (tmp_path / "long").chmod(0o644)
    loose = write_config(tmp_path / "loose.yaml", "http:\n  public_url: https://ack.example.jp\nlinks:\n"
                                                  "  secret_file: long\n")
    out = denen("ack", "link", "gw-a", "sos:1", "-c", str(loose))
    assert out.returncode == 2 and f"{loose}:4:" in out.stderr and "links.secret_file" in out.stderr
    assert "can be read by every user" in out.stderr


def test_trusted_proxies_are_addresses_or_networks(tmp_path: Path) -> None:
    from agent.console.config import load_console_config

    write_config(tmp_path / "secret", "x" * 40 + "\n")
    path = write_config(tmp_path / "c.yaml", "http:\n  public_url: https://ack.example.jp\n  trusted_proxies: "
                                             "[127.0.0.1, 172.16.0.0/12]\nlinks:\n  secret_file: secret\n")
    http_cfg = load_console_config(path).http
    assert http_cfg.is_trusted_proxy("172.18.0.1") and http_cfg.is_trusted_proxy("127.0.0.1")
    assert not http_cfg.is_trusted_proxy("203.0.113.9") and not http_cfg.is_trusted_proxy("not-an-ip")
    write_config(path, path.read_text().replace("172.16.0.0/12", "proxy.local"))
    out = denen("ack", "link", "gw-a", "sos:1", "-c", str(path))
    assert out.returncode == 2 and f"{path}:3:" in out.stderr and "is not an IP address or network" in out.stderr


def test_config_validate_checks_a_console_config_with_the_console_schema(tmp_path: Path) -> None:
    write_config(tmp_path / "secret", "s" * 40 + "\n")
    good = write_config(tmp_path / "console.yaml", "http:\n  public_url: https://ack.example.jp\nlinks:\n"
                                                   "  secret_file: secret\n")
    out = denen("config", "validate", str(good))
    assert out.returncode == 0 and f"{good}: ok (console https://ack.example.jp" in out.stdout, out.stderr
    bad = write_config(tmp_path / "bad.yaml", "http:\n  public_url: ftp://x\nlinks:\n  secret_file: secret\n")
    out = denen("config", "validate", str(bad))
    assert out.returncode == 2 and f"{bad}:2:" in out.stderr and "http.public_url" in out.stderr, out.stderr
