"""The bridge's config: the documented example loads, and problems point at file, line, key, with a hint."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.bridge.config import load_bridge_config, looks_like_bridge_config, parse_bridge_config
from agent.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "bridge" / "bridge.yaml"


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_bridge_config(text, source="b.yaml")
    return [str(i) for i in err.value.issues]


def test_the_documented_example_loads_cleanly() -> None:
    cfg = load_bridge_config(EXAMPLE)
    assert cfg.sink.type == "v1" and cfg.sink.database == "denen" and cfg.mqtt.client_id == "denen-bridge-1"
    assert cfg.mqtt.subscriptions() == ("$share/denen-bridge/denen/v1/+/readings/#",
                                        "$share/denen-bridge/denen/v1/+/status",
                                        "$share/denen-bridge/denen/v1/+/state",
                                        "$share/denen-bridge/denen/v1/+/results")
    assert cfg.batch.receive_maximum == 2 * cfg.batch.max_messages
    assert looks_like_bridge_config(EXAMPLE.read_text())
    assert not looks_like_bridge_config((EXAMPLE.parent.parent / "demo.yaml").read_text())


def test_problems_point_at_the_line_with_a_hint() -> None:
    text = "mqtt:\n  hots: broker\n  group: 'a b'\nsink:\n  type: v2\n  url: ftp://x\n  database: d\n"
    found = issues(text)
    assert any(i.startswith("b.yaml:2:3: mqtt.hots: unknown key 'hots'") and "did you mean 'host'" in i
               for i in found), found
    assert any(i.startswith("b.yaml:3:3: mqtt.group:") for i in found), found
    assert any(i.startswith("b.yaml:6:3: sink.url:") and "http://" in i for i in found), found


def test_each_sink_type_takes_its_own_keys() -> None:
    found = issues("sink:\n  type: v2\n  database: d\n  org: o\n")
    assert any("sink.database" in i and "not used by a v2 sink" in i for i in found), found
    assert any("sink.bucket" in i and "needs 'bucket'" in i for i in found), found
    assert any("sink.token" in i and "token, token_file or token_env" in i for i in found), found
    found = issues("sink:\n  type: v1\n  password: hunter22\n")
    assert any("sink.database" in i for i in found) and any("sink.user" in i for i in found), found
    assert not any("hunter22" in i for i in found)  # secrets never in messages


def test_secret_files_and_dead_letter_paths_are_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("abc:def\n")
    (tmp_path / "token").chmod(0o600)
    cfg_path = tmp_path / "bridge.yaml"
    cfg_path.write_text("mqtt:\n  client_id: b1\nsink:\n  type: v2\n  org: o\n  bucket: b\n  token_file: token\n"
                        "dead_letter:\n  path: data/dead.db\n")
    cfg = load_bridge_config(cfg_path)
    assert cfg.sink.token_value() == "abc:def"
    assert cfg.dead_letter.path == str(tmp_path / "data" / "dead.db")
    found = issues("sink:\n  type: v2\n  org: o\n  bucket: b\n  token_file: /nonexistent/token\n")
    assert any("sink.token_file" in i and "does not exist" in i for i in found), found


# ---------------------------------------------------------------------------------------------------------------
# Secrets: inline, in a file or in an environment variable, and who may read them (the loader is the gateway's)

TOKEN = "bridge-token-0123456789abcdef"
V2 = "mqtt:\n  client_id: b1\n{mqtt}sink:\n  type: v2\n  org: o\n  bucket: b\n{sink}"


def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_token_and_passwords_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("DENEN_TEST_INFLUX_TOKEN", TOKEN)
    monkeypatch.setenv("DENEN_TEST_BRIDGE_MQTT_PASSWORD", "mqtt-" + TOKEN)
    monkeypatch.setenv("DENEN_TEST_INFLUX_PASSWORD", "influx-" + TOKEN)
    text = V2.format(mqtt="  username: bridge\n  password_env: DENEN_TEST_BRIDGE_MQTT_PASSWORD\n",
                     sink="  token_env: DENEN_TEST_INFLUX_TOKEN\n")
    with caplog.at_level(logging.DEBUG):
        cfg = load_bridge_config(write(tmp_path / "bridge.yaml", text, 0o644))  # no secret in the file itself
    assert cfg.sink.token_value() == TOKEN and cfg.mqtt.password_value() == "mqtt-" + TOKEN
    v1 = parse_bridge_config("sink:\n  type: v1\n  database: d\n  user: u\n  password_env: DENEN_TEST_INFLUX_PASSWORD\n")
    assert v1.sink.password_value() == "influx-" + TOKEN
    for rendered in (repr(cfg), str(cfg), cfg.model_dump_json(), repr(v1), caplog.text):
        assert TOKEN not in rendered


def test_environment_variables_must_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DENEN_TEST_INFLUX_TOKEN", raising=False)
    found = issues(V2.format(mqtt="", sink="  token_env: DENEN_TEST_INFLUX_TOKEN\n"))
    assert found == ["b.yaml:7:3: sink.token_env: environment variable DENEN_TEST_INFLUX_TOKEN is not set (hint: set "
                     "DENEN_TEST_INFLUX_TOKEN in the service's environment (systemd: EnvironmentFile=/etc/denen/"
                     "secrets.env, mode 600); to check the file with denen config validate, export it in your shell "
                     "too)"]
    monkeypatch.setenv("DENEN_TEST_INFLUX_TOKEN", "")
    assert "is empty" in issues(V2.format(mqtt="", sink="  token_env: DENEN_TEST_INFLUX_TOKEN\n"))[0]


def test_one_way_per_secret_and_each_sink_type_its_own(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DENEN_TEST_INFLUX_TOKEN", TOKEN)
    found = issues(V2.format(mqtt="", sink=f'  token: "{TOKEN}"\n  token_env: DENEN_TEST_INFLUX_TOKEN\n'))
    assert found == ["b.yaml:8:3: sink.token_env: give only one of token, token_file and token_env, not token and "
                     "token_env (hint: keep token_file or token_env, which keep the token out of this file)"]
    found = issues("sink:\n  type: v1\n  database: d\n  token_env: DENEN_TEST_INFLUX_TOKEN\n")
    assert any("sink.token_env" in i and "not used by a v1 sink" in i for i in found), found
    found = issues("sink:\n  type: v1\n  database: d\n  password_env: DENEN_TEST_INFLUX_TOKEN\n")
    assert any("sink.user" in i and "a password is set but user is not" in i for i in found), found
    assert all(TOKEN not in i for i in found)


def test_a_bridge_config_holding_a_token_every_user_can_read_is_refused(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "bridge.yaml", V2.format(mqtt="", sink=f'  token: "{TOKEN}"\n'), 0o644)
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError) as err:
        load_bridge_config(path)
    assert [str(i) for i in err.value.issues] == [
        f"{path}:7:3: sink.token: this file holds a secret (sink.token) and every user on this machine can read it "
        f"(mode 644) (hint: chmod 600 {path}, or move the secret to token_file / token_env)"]
    assert TOKEN not in str(err.value) and TOKEN not in caplog.text
    path.chmod(0o640)
    [warning] = _warnings_logged(path, caplog)
    assert f"{path}:7:3: sink.token: this file holds a secret (sink.token) and its group can read it (mode 640)" \
        in warning
    path.chmod(0o600)
    assert _warnings_logged(path, caplog) == []
    assert TOKEN not in caplog.text
    assert load_bridge_config(path).sink.token_value() == TOKEN
    # Text from no file has no mode to check.
    assert parse_bridge_config(path.read_text()).sink.token_value() == TOKEN


def _warnings_logged(path: Path, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Load the file and return the config warnings the loader logged (the bridge config keeps none)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agent.config"):
        load_bridge_config(path)
    return [r.getMessage() for r in caplog.records if r.name == "agent.config"]


def test_secret_files_every_user_can_read_are_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    token = write(tmp_path / "token", TOKEN + "\n", 0o644)
    password = write(tmp_path / "mqtt-password", "pw\n", 0o604)
    text = V2.format(mqtt="  username: bridge\n  password_file: mqtt-password\n", sink="  token_file: token\n")
    path = write(tmp_path / "bridge.yaml", text, 0o600)
    with pytest.raises(ConfigError) as err:
        load_bridge_config(path)
    assert [(i.key, i.message, i.hint) for i in err.value.issues] == [
        ("mqtt.password_file", f"secret file {password} can be read by every user on this machine (mode 604)",
         f"chmod 600 {password}, owned by the bridge's user"),
        ("sink.token_file", f"secret file {token} can be read by every user on this machine (mode 644)",
         f"chmod 600 {token}, owned by the bridge's user"),
    ]
    token.chmod(0o600)
    password.chmod(0o640)  # the group: a warning
    [warning] = _warnings_logged(path, caplog)
    assert f"mqtt.password_file: secret file {password} can be read by its group (mode 640)" in warning
    assert load_bridge_config(path).sink.token_value() == TOKEN


def test_a_remote_broker_needs_tls_or_an_explicit_false(caplog: pytest.LogCaptureFixture) -> None:
    found = issues("mqtt:\n  host: mqtt.example.jp\n  client_id: b1\nsink:\n  type: v1\n  database: d\n")
    assert any(i.startswith("b.yaml:2:3: mqtt.host:") and "tls" in i and "tls: false" in i for i in found), found
    for host in ("127.0.0.1", "127.8.9.1", "localhost", "::1"):
        parse_bridge_config(f"mqtt:\n  host: '{host}'\n  client_id: b1\nsink:\n  type: v1\n  database: d\n")
    with caplog.at_level(logging.WARNING):
        cfg = parse_bridge_config("mqtt:\n  host: 10.0.0.5\n  tls: false\n  client_id: b1\nsink:\n  type: v1\n"
                                  "  database: d\n", source="b.yaml")
    assert cfg.mqtt.tls is False and cfg.mqtt.tls_settings() is None
    assert any("plain TCP to the broker 10.0.0.5" in r.getMessage() for r in caplog.records)


def test_memory_in_flight_is_bounded_by_the_config() -> None:
    found = issues("mqtt:\n  client_id: b1\nsink:\n  type: v1\n  database: d\nbatch:\n  max_messages: 5000\n"
                   "limits:\n  max_message_kb: 1024\n  max_inflight_mb: 1024\n")
    assert any("limits.max_inflight_mb" in i and "10000 messages in flight" in i for i in found), found
    cfg = parse_bridge_config("mqtt:\n  client_id: b1\nsink:\n  type: v1\n  database: d\nbatch:\n"
                              "  max_messages: 5000\nlimits:\n  max_message_kb: 64\n")
    assert cfg.limits.max_message_bytes == 65536
    assert cfg.batch.receive_maximum * cfg.limits.max_message_bytes <= cfg.limits.max_inflight_mb * 2**20


def test_gateway_registry_file_is_relative_and_must_exist(tmp_path: Path) -> None:
    (tmp_path / "gateways.yaml").write_text("gateways:\n  gw-a:\n    site: town-a\n")
    cfg_path = tmp_path / "bridge.yaml"
    cfg_path.write_text("mqtt:\n  client_id: b1\nsink:\n  type: v1\n  database: d\ngateways:\n"
                        "  file: gateways.yaml\n  unknown: refuse\n")
    cfg_path.chmod(0o600)
    cfg = load_bridge_config(cfg_path)
    assert cfg.gateways is not None and cfg.gateways.file == str(tmp_path / "gateways.yaml")
    assert cfg.gateways.unknown == "refuse"
    found = issues("mqtt:\n  client_id: b1\nsink:\n  type: v1\n  database: d\ngateways:\n  file: /nonexistent.yaml\n"
                   "  unknown: maybe\n")
    assert any("gateways.file" in i for i in found) and any("gateways.unknown" in i for i in found), found
