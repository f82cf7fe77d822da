"""The credentials hand-off, end to end: what make-credentials.sh gives a gateway is what the installer flashes.

The backend guide (deploy/backend/README.md, step 7) hands the installer the folder
``secrets/gateways/<id>/`` as a tar file; the installer's guide (deploy/edge/README.md, steps 2 to 5) writes
``config.yaml`` into that folder, with the ``mqtt:`` section of its ``mqtt.yaml``, validates it and flashes it.
This test does exactly that, from a folder other than the config's (relative paths must follow the config, not
the shell), with the real make-credentials.sh, the ``denen`` command line and Mosquitto as deploy/backend ships
it:

* the folder keeps its files private (0600) through the tar file, and make-credentials.sh prints no password;
* ``denen config validate`` and ``denen flash`` accept the config as it is;
* the gateway's boot-time pick-up (:func:`agent.gateway.boot.resolve_active_config`) installs the flashed bundle,
  and the config it loads from there, as ``denen run`` does, names the same password and CA, and they log in to
  the shipped broker over TLS as that gateway.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from agent.config import load_config
from agent.gateway import boot
from tests.support.field import example_key_env, example_keys_env
from tests.support.shipped_broker import Mqtt, ShippedBroker, copy_backend, make_credentials, tool

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = "gw-okutama-01"  # gateway.id of config/forest-sos.yaml


def _denen(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **example_key_env(), "PYTHONPATH": str(ROOT)}  # the example's key_env variables
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


def _rt_yaml() -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def _config_from_example(folder: Path) -> str:
    """config/forest-sos.yaml with the mqtt: keys of the folder's mqtt.yaml, as the installer's guide says."""
    y = _rt_yaml()
    config: Any = y.load((ROOT / "config" / "forest-sos.yaml").read_text(encoding="utf-8"))
    snippet: Any = y.load((folder / "mqtt.yaml").read_text(encoding="utf-8"))
    for key, value in snippet["mqtt"].items():
        config["mqtt"][key] = value
    out = StringIO()
    y.dump(config, out)
    return out.getvalue()


def test_the_gateway_folder_from_the_backend_is_flashed_as_it_is(tmp_path: Path) -> None:
    backend = copy_backend(tmp_path / "server")
    made = make_credentials(backend, "-n", "localhost", GATEWAY)
    assert made.returncode == 0, made.stderr
    handed = backend / "secrets" / "gateways" / GATEWAY
    password = (handed / "mqtt-password").read_text().strip()
    assert len(password) >= 32
    assert password not in made.stdout and password not in made.stderr  # never printed
    assert f"{handed}/ (mqtt-password, ca.pem, mqtt.yaml)" in made.stdout
    assert (handed / "mqtt.yaml").read_text() in made.stdout  # the printed lines are the file's
    for name in ("mqtt-password", "ca.pem", "mqtt.yaml"):
        assert stat.S_IMODE((handed / name).stat().st_mode) == 0o600, name

    # The hand-off: a tar file of the folder, unpacked on the installer's laptop (tar keeps the modes).
    tool("tar", "tar")
    archive = tmp_path / f"{GATEWAY}.tar.gz"
    subprocess.run(["tar", "-C", str(handed.parent), "-czf", str(archive), GATEWAY], check=True, timeout=60)
    laptop = tmp_path / "laptop"
    laptop.mkdir()
    subprocess.run(["tar", "-C", str(laptop), "-xzf", str(archive)], check=True, timeout=60)
    folder = laptop / GATEWAY
    assert sorted(p.name for p in folder.iterdir()) == ["ca.pem", "mqtt-password", "mqtt.yaml"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())

    config = folder / "config.yaml"
    config.write_text(_config_from_example(folder), encoding="utf-8")
    config.chmod(0o600)
    # From the laptop's home folder, not the config's: relative paths follow the config file.
    checked = _denen(laptop, "config", "validate", f"{GATEWAY}/config.yaml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    card = tmp_path / "bootfs"
    card.mkdir()
    flashed = _denen(laptop, "flash", f"{GATEWAY}/config.yaml", str(card))
    assert flashed.returncode == 0, flashed.stdout + flashed.stderr
    assert "secrets/mqtt-password" in flashed.stdout and "secrets/mqtt-ca.pem" in flashed.stdout
    assert password not in flashed.stdout + flashed.stderr

    # On the gateway at boot, as `denen run` does without -c: the bundle is verified and installed.
    state = tmp_path / "var-lib-denen"
    with example_keys_env():
        active = boot.resolve_active_config(None, [str(card / "denen")], state_dir=state,
                                            default_config=str(tmp_path / "etc-denen" / "config.yaml"))
        assert active.problems == () and active.source == "flashed", active
        assert Path(active.path) == state / "flashed" / "config.yaml"
        gateway_config = load_config(active.path)
    mqtt = gateway_config.mqtt
    assert gateway_config.gateway.id == mqtt.username == GATEWAY
    assert Path(mqtt.password_file or "").parent == state / "flashed" / "secrets"
    assert mqtt.password_value() == password
    tls = mqtt.tls_settings()
    assert tls is not None and tls.ca_file is not None
    assert Path(tls.ca_file).read_bytes() == (backend / "secrets" / "ca" / "ca.crt").read_bytes()
    assert (mqtt.host, mqtt.port) == ("localhost", 8883)

    # And the login works: the shipped broker takes that password from that gateway over TLS.
    broker = ShippedBroker(backend, tmp_path / "broker")
    broker.start()
    try:
        client = Mqtt(broker, mqtt.username, mqtt.username, secret=mqtt.password_value())
        try:
            assert client.connected() == 0
        finally:
            client.close()
        wrong = Mqtt(broker, mqtt.username, mqtt.username, secret=password[::-1])
        try:
            assert wrong.connected() != 0  # the control: the broker does check the password
        finally:
            wrong.close()
    finally:
        broker.stop()


def test_the_printed_lines_are_the_guides_and_validate_only_beside_their_files(tmp_path: Path) -> None:
    """mqtt.yaml names files relative to its folder: a config elsewhere is refused at that key, with the path."""
    backend = copy_backend(tmp_path / "server")
    made = make_credentials(backend, "-n", "mqtt.example.jp", GATEWAY)
    assert made.returncode == 0, made.stderr
    # The backend guide shows this gateway's lines: they are what the script writes.
    guide = (ROOT / "deploy" / "backend" / "README.md").read_text(encoding="utf-8")
    shown = guide.split("prints each gateway's `mqtt.yaml`", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    written = backend / "secrets" / "gateways" / GATEWAY / "mqtt.yaml"
    assert YAML(typ="safe").load(shown) == YAML(typ="safe").load(written.read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = elsewhere / "config.yaml"
    config.write_text(_config_from_example(backend / "secrets" / "gateways" / GATEWAY), encoding="utf-8")
    config.chmod(0o600)
    refused = _denen(tmp_path, "config", "validate", str(config))
    assert refused.returncode != 0
    assert "mqtt.password_file" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr
