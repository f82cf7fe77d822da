"""Secrets in the gateway config: inline, in a file or in an environment variable, and who may read them.

Every test uses real files in tmp_path with real modes (os.chmod); nothing about the file system is mocked. The
modes are set explicitly, so the tests do not depend on the umask. Running as root changes nothing: the loader
judges the mode bits, not whether this user could open the file.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from agent.config import Config, load_config, parse_config
from agent.errors import ConfigError, ConfigIssue
from tests.support.gateway_config import ONE_TRAP_YAML

REPO = Path(__file__).resolve().parents[2]

KEY = "c0ffee11c0ffee22c0ffee33c0ffee44"  # the node key used throughout; must never be shown
PASSWORD = "correct-horse-battery-staple"
ENV_KEY = "DENEN_TEST_KEY_NODE_1"
ENV_PASSWORD = "DENEN_TEST_MQTT_PASSWORD"

BASE = ONE_TRAP_YAML + "{node}"


def gateway_text(node: str = f'    key: "{KEY}"\n', mqtt: str = "") -> str:
    return BASE.format(node=node) + mqtt


def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def issues_of(path: Path) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return list(info.value.issues)


def line_of(path: Path, needle: str) -> int:
    return next(n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line)


def only(issues: list[ConfigIssue], key: str) -> ConfigIssue:
    found = [i for i in issues if i.key == key]
    assert len(found) == 1, [str(i) for i in issues]
    return found[0]


def shown(error: BaseException) -> str:
    """Everything a user or a log could see of an error: its text and its formatted traceback."""
    return str(error) + "".join(traceback.format_exception(error))


@pytest.fixture
def no_test_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (ENV_KEY, ENV_PASSWORD):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ---------------------------------------------------------------------------------------------------------------
# Environment variables


def test_key_from_the_environment(tmp_path: Path, no_test_env: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture) -> None:
    no_test_env.setenv(ENV_KEY, KEY.upper())
    path = write(tmp_path / "gw.yaml", gateway_text(f"    key_env: {ENV_KEY}\n"), 0o644)  # no secret in the file
    with caplog.at_level(logging.DEBUG):
        cfg = load_config(path)
    node = cfg.nodes[0]
    assert node.key_env == ENV_KEY and node.key is None and node.key_file is None
    assert node.key_bytes() == bytes.fromhex(KEY)
    assert cfg.warnings == ()
    # Read when the config was loaded: the running agent does not depend on the variable afterwards.
    no_test_env.delenv(ENV_KEY)
    assert node.key_bytes() == bytes.fromhex(KEY)
    for rendered in (repr(cfg), str(cfg), cfg.model_dump_json(), caplog.text):
        assert KEY not in rendered.lower()


@pytest.mark.parametrize(("value", "expected"), [
    (None, f"environment variable {ENV_KEY} is not set"),
    ("", f"environment variable {ENV_KEY} is empty"),
    ("   ", f"environment variable {ENV_KEY} is empty"),
])
def test_key_env_must_be_set_and_not_empty(tmp_path: Path, no_test_env: pytest.MonkeyPatch, value: str | None,
                                           expected: str) -> None:
    if value is not None:
        no_test_env.setenv(ENV_KEY, value)
    path = write(tmp_path / "gw.yaml", gateway_text(f"    key_env: {ENV_KEY}\n"), 0o600)
    issue = only(issues_of(path), "nodes[0].key_env")
    assert (issue.file, issue.line) == (str(path), line_of(path, "key_env:"))
    assert issue.message == expected
    assert issue.hint is not None and f"set {ENV_KEY}" in issue.hint and "EnvironmentFile=" in issue.hint


@pytest.mark.parametrize(("value", "expected"), [
    (KEY[:30], "must be 32 hex digits (16 bytes), but has 30"),
    (KEY[:31] + "g", "contains characters that are not hex digits"),
])
def test_a_key_from_the_environment_is_checked_like_an_inline_key(tmp_path: Path, no_test_env: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture, value: str,
                                                                  expected: str) -> None:
    no_test_env.setenv(ENV_KEY, value)
    path = write(tmp_path / "gw.yaml", gateway_text(f"    key_env: {ENV_KEY}\n"), 0o600)
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError) as info:
        load_config(path)
    issue = only(list(info.value.issues), "nodes[0].key_env")
    assert expected in issue.message and f"environment variable {ENV_KEY}" in issue.message
    assert issue.line == line_of(path, "key_env:")
    assert value not in shown(info.value) and value not in caplog.text


def test_a_secret_pasted_where_the_variable_name_belongs_is_not_echoed(tmp_path: Path) -> None:
    path = write(tmp_path / "gw.yaml", gateway_text(f'    key_env: "{KEY}"\n',
                                                    f"mqtt:\n  username: gw\n  password_env: {PASSWORD}\n"), 0o600)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    issues = list(info.value.issues)
    assert "name of an environment variable" in only(issues, "nodes[0].key_env").message
    password = only(issues, "mqtt.password_env")
    assert "name of an environment variable" in password.message
    assert password.hint is not None and "DENEN_MQTT_PASSWORD" in password.hint
    assert KEY not in shown(info.value) and PASSWORD not in shown(info.value)


def test_mqtt_password_from_the_environment(tmp_path: Path, no_test_env: pytest.MonkeyPatch) -> None:
    no_test_env.setenv(ENV_PASSWORD, PASSWORD)
    mqtt = f"mqtt:\n  username: gw-test\n  password_env: {ENV_PASSWORD}\n"
    path = write(tmp_path / "gw.yaml", gateway_text("    unauthenticated: flag\n", mqtt), 0o644)
    cfg = load_config(path)
    assert cfg.mqtt.password_value() == PASSWORD and cfg.mqtt.password is None
    assert PASSWORD not in repr(cfg) and PASSWORD not in cfg.model_dump_json()
    # Like any password, it needs a user name.
    write(path, gateway_text("    unauthenticated: flag\n", f"mqtt:\n  password_env: {ENV_PASSWORD}\n"), 0o600)
    assert "username" in only(issues_of(path), "mqtt.password_env").message
    no_test_env.delenv(ENV_PASSWORD)
    write(path, gateway_text("    unauthenticated: flag\n", mqtt), 0o600)
    issue = only(issues_of(path), "mqtt.password_env")
    assert issue.message == f"environment variable {ENV_PASSWORD} is not set"
    assert issue.line == line_of(path, "password_env:")


@pytest.mark.parametrize(("node", "mqtt", "key", "given"), [
    (f'    key: "{KEY}"\n    key_env: {ENV_KEY}\n', "", "nodes[0].key_env", "key and key_env"),
    (f"    key_file: node.key\n    key_env: {ENV_KEY}\n", "", "nodes[0].key_env", "key_file and key_env"),
    (f'    key: "{KEY}"\n    key_file: node.key\n    key_env: {ENV_KEY}\n', "", "nodes[0].key_env",
     "key and key_file and key_env"),
    ("    unauthenticated: flag\n", f'mqtt:\n  username: u\n  password: "{PASSWORD}"\n  password_env: {ENV_PASSWORD}\n',
     "mqtt.password_env", "password and password_env"),
    ("    unauthenticated: flag\n", f"mqtt:\n  username: u\n  password_file: pw\n  password_env: {ENV_PASSWORD}\n",
     "mqtt.password_env", "password_file and password_env"),
])
def test_only_one_way_per_secret(tmp_path: Path, no_test_env: pytest.MonkeyPatch, node: str, mqtt: str, key: str,
                                 given: str) -> None:
    no_test_env.setenv(ENV_KEY, KEY)
    no_test_env.setenv(ENV_PASSWORD, PASSWORD)
    write(tmp_path / "node.key", KEY + "\n", 0o600)
    write(tmp_path / "pw", PASSWORD + "\n", 0o600)
    path = write(tmp_path / "gw.yaml", gateway_text(node, mqtt), 0o600)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    issue = only(list(info.value.issues), key)
    assert issue.message.startswith("give only one of") and issue.message.endswith(f"not {given}")
    assert issue.line == line_of(path, key.rsplit(".", 1)[1] + ":")
    assert issue.hint is not None and "_file or" in issue.hint and "_env" in issue.hint
    assert KEY not in shown(info.value) and PASSWORD not in shown(info.value)


# ---------------------------------------------------------------------------------------------------------------
# A config file that holds a secret


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o666, 0o444])
def test_a_config_holding_a_key_that_every_user_can_read_is_refused(tmp_path: Path, mode: int,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "gw.yaml", gateway_text(), mode)
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError) as info:
        load_config(path)
    issue = only(list(info.value.issues), "nodes[0].key")
    assert (issue.file, issue.line, issue.column) == (str(path), line_of(path, "key:"), 5)
    assert issue.message == (f"this file holds a secret (nodes[0].key) and every user on this machine can read it "
                             f"(mode {mode:o})")
    assert issue.hint == f"chmod 600 {path}, or move the secret to key_file / key_env"
    text = shown(info.value)
    assert f"{path}:{issue.line}:5: nodes[0].key: this file holds a secret" in text
    assert KEY not in text and KEY not in caplog.text


def test_an_inline_mqtt_password_points_at_password_file_and_password_env(tmp_path: Path) -> None:
    mqtt = f'mqtt:\n  username: gw-test\n  password: "{PASSWORD}"\n'
    path = write(tmp_path / "gw.yaml", gateway_text("    unauthenticated: flag\n", mqtt), 0o644)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    issue = only(list(info.value.issues), "mqtt.password")
    assert issue.line == line_of(path, "password:") and "(mode 644)" in issue.message
    assert issue.hint == f"chmod 600 {path}, or move the secret to password_file / password_env"
    assert PASSWORD not in shown(info.value)


def test_every_inline_secret_is_reported_with_the_other_problems(tmp_path: Path) -> None:
    text = gateway_text(f'    key: "{KEY}"\n    interval_s: 0\n', f'mqtt:\n  username: gw\n  password: "{PASSWORD}"\n')
    path = write(tmp_path / "gw.yaml", text, 0o644)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [i.key for i in info.value.issues] == ["nodes[0].key", "nodes[0].interval_s", "mqtt.password"]
    assert KEY not in shown(info.value) and PASSWORD not in shown(info.value)


def test_a_config_holding_a_key_that_its_group_can_read_loads_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "gw.yaml", gateway_text(), 0o640)
    with caplog.at_level(logging.WARNING, logger="agent.config"):
        cfg = load_config(path)
    assert cfg.nodes[0].key_bytes() == bytes.fromhex(KEY)
    [warning] = cfg.warnings
    assert (warning.key, warning.line) == ("nodes[0].key", line_of(path, "key:"))
    assert warning.message == "this file holds a secret (nodes[0].key) and its group can read it (mode 640)"
    assert warning.hint is not None and f"chmod 600 {path}" in warning.hint and "denen" in warning.hint
    assert "its group can read it" in caplog.text and KEY not in caplog.text


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_a_config_only_its_owner_can_read_loads_cleanly(tmp_path: Path, mode: int) -> None:
    cfg = load_config(write(tmp_path / "gw.yaml", gateway_text(), mode))
    assert cfg.nodes[0].key_bytes() == bytes.fromhex(KEY) and cfg.warnings == ()


def test_a_world_readable_config_without_secrets_is_fine(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "gw.yaml", gateway_text("    unauthenticated: flag\n"), 0o644))
    assert cfg.warnings == ()


def test_text_that_comes_from_no_file_has_no_mode_to_check() -> None:
    cfg = parse_config(gateway_text(mqtt=f'mqtt:\n  username: gw\n  password: "{PASSWORD}"\n'), source="<stdin>")
    assert cfg.nodes[0].key_bytes() == bytes.fromhex(KEY) and cfg.mqtt.password_value() == PASSWORD
    assert cfg.warnings == ()


def test_a_medium_without_modes_can_be_checked_with_check_modes_off(tmp_path: Path) -> None:
    # A FAT card shows every file as readable by all; denen flash checks its copy there this way.
    write(tmp_path / "node.key", KEY + "\n", 0o755)
    path = write(tmp_path / "gw.yaml", gateway_text(mqtt=f'mqtt:\n  username: gw\n  password: "{PASSWORD}"\n'), 0o755)
    cfg = load_config(path, check_modes=False)
    assert cfg.nodes[0].key_bytes() == bytes.fromhex(KEY) and cfg.warnings == ()
    write(path, gateway_text("    key_file: node.key\n"), 0o755)
    assert load_config(path, check_modes=False).nodes[0].key_bytes() == bytes.fromhex(KEY)
    with pytest.raises(ConfigError, match="every user on this machine"):
        load_config(path)


# ---------------------------------------------------------------------------------------------------------------
# Secret files


@pytest.mark.parametrize(("node", "mqtt", "secret", "key"), [
    ("    key_file: keys/node-1.key\n", "", "keys/node-1.key", "nodes[0].key_file"),
    ("    unauthenticated: flag\n", "mqtt:\n  username: gw\n  password_file: mqtt-password\n", "mqtt-password",
     "mqtt.password_file"),
    ("    unauthenticated: flag\n", "mqtt:\n  tls:\n    cert_file: gw.crt\n    key_file: gw.key\n", "gw.key",
     "mqtt.tls.key_file"),
])
def test_a_secret_file_every_user_can_read_is_refused_and_the_group_is_warned(
        tmp_path: Path, node: str, mqtt: str, secret: str, key: str, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "keys").mkdir()
    secret_path = write(tmp_path / secret, KEY + "\n", 0o644)
    write(tmp_path / "gw.crt", "-----BEGIN CERTIFICATE-----\n", 0o644)  # a certificate is public
    path = write(tmp_path / "gw.yaml", gateway_text(node, mqtt), 0o600)
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError) as info:
        load_config(path)
    issue = only(list(info.value.issues), key)
    assert len(info.value.issues) == 1
    assert issue.line == line_of(path, key.rsplit(".", 1)[1] + ":")
    assert issue.message == f"secret file {secret_path} can be read by every user on this machine (mode 644)"
    assert issue.hint == f"chmod 600 {secret_path}, owned by the agent's user"
    assert KEY not in shown(info.value) and KEY not in caplog.text

    # The same applies to config text from no file: the secret file is a file.
    with pytest.raises(ConfigError, match="can be read by every user"):
        parse_config(gateway_text(node, mqtt), base_dir=tmp_path)

    secret_path.chmod(0o640)
    cfg = load_config(path)
    [warning] = cfg.warnings
    assert warning.key == key and warning.message == f"secret file {secret_path} can be read by its group (mode 640)"
    assert warning.hint is not None and f"chmod 600 {secret_path}" in warning.hint

    secret_path.chmod(0o600)
    assert load_config(path).warnings == ()
    assert KEY not in caplog.text


def test_a_config_file_and_its_key_file_both_open_are_both_reported(tmp_path: Path) -> None:
    write(tmp_path / "other.key", KEY + "\n", 0o604)
    text = BASE.format(node=f'    key: "{KEY}"\n') + (
        '  - id: "00000002"\n    name: node-2\n    kind: trap\n    key_file: other.key\n')
    path = write(tmp_path / "gw.yaml", text, 0o644)
    issues = issues_of(path)
    assert [i.key for i in issues] == ["nodes[0].key", "nodes[1].key_file"]
    assert "(mode 644)" in issues[0].message and "(mode 604)" in issues[1].message


# ---------------------------------------------------------------------------------------------------------------
# As an operator meets it


def test_config_validate_refuses_a_world_readable_config_with_one_clear_line(tmp_path: Path) -> None:
    path = write(tmp_path / "gw.yaml", gateway_text(), 0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DENEN_")}
    out = subprocess.run([sys.executable, "-m", "agent.cli", "config", "validate", str(path)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and KEY not in out.stdout + out.stderr
    [line] = [ln for ln in out.stderr.splitlines() if ln.startswith(str(path))]
    assert line == (f"{path}:{line_of(path, 'key:')}:5: nodes[0].key: this file holds a secret (nodes[0].key) and "
                    f"every user on this machine can read it (mode 644) (hint: chmod 600 {path}, or move the secret "
                    f"to key_file / key_env)")


def test_a_python_built_config_reads_the_environment_too(no_test_env: pytest.MonkeyPatch) -> None:
    no_test_env.setenv(ENV_KEY, KEY)
    cfg = Config.model_validate({
        "gateway": {"id": "g", "site": "s"}, "radios": [{"name": "r", "driver": "rak3172", "port": "loop://"}],
        "nodes": [{"id": "00000001", "name": "n", "kind": "trap", "key_env": ENV_KEY}],
    })
    assert cfg.nodes[0].key_bytes() == bytes.fromhex(KEY)


@pytest.mark.parametrize("mode", [0o646, 0o602, 0o666])
def test_a_config_every_user_can_change_is_refused_secrets_or_not(tmp_path: Path, mode: int) -> None:
    # Whoever can write the config can point the gateway at another broker or add a node key.
    path = write(tmp_path / "gw.yaml", gateway_text("    unauthenticated: flag\n"), mode)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [issue] = [i for i in info.value.issues if "can change this file" in i.message]
    assert issue.file == str(path) and f"(mode {mode:03o})" in issue.message
    assert issue.hint == f"chmod o-w {path}"
    load_config(write(tmp_path / "ok.yaml", gateway_text("    unauthenticated: flag\n"), 0o664))  # group: fine
