"""``denen doctor`` against real parts: simulated modules on ptys, a real Mosquitto, real folders."""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from agent.gateway import clock
from agent.tools import doctor, doctor_checks, doctor_host
from agent.dev.devbroker import Mosquitto
from agent.tools.doctor_host import Host
from agent.gateway.journal import Journal
from drivers.sim.es920lr import SimEs920lr
from drivers.sim.rak3172 import SimRak3172
from tests.support.field import start_sim

pytestmark = pytest.mark.broker

SYNCED = Host(clock_synced=lambda: True)


def _config(tmp: Path, *, port: str, mqtt_port: int, driver: str = "rak3172", extra_mqtt: str = "",
            quota_mb: float = 16, journal: Path | None = None) -> Path:
    cfg = tmp / "gw.yaml"
    cfg.write_text(f"""
gateway: {{id: gw-doc-01, site: testville}}
journal:
  path: {journal or tmp / "state" / "journal.db"}
  quota_mb: {quota_mb}
mqtt:
  host: 127.0.0.1
  port: {mqtt_port}
{extra_mqtt}
radios:
  - name: lora0
    driver: {driver}
    port: {port}
unknown_nodes: accept
""")
    return cfg


@pytest.fixture
def rak(tmp_path: Path) -> Iterator[SimRak3172]:
    sim = start_sim(tmp_path, rng_seed=1)
    yield sim
    sim.stop()


def _by_name(checks: list[doctor_checks.Check]) -> dict[str, doctor_checks.Check]:
    return {c.name: c for c in checks}


def test_everything_ok_against_a_simulated_rak3172_and_a_real_broker(tmp_path: Path, rak: SimRak3172,
                                                                     broker: Mosquitto) -> None:
    cfg = _config(tmp_path, port=rak.path, mqtt_port=broker.port)
    checks = doctor.run_checks(str(cfg), timeout_s=2.0, host=SYNCED)
    got = _by_name(checks)
    assert [c.name for c in checks] == ["config", "radio lora0", "broker", "clock", "journal", "gpio", "permissions"]
    assert {c.name: c.status for c in checks} == {
        "config": "ok", "radio lora0": "ok", "broker": "ok", "clock": "ok", "journal": "ok", "gpio": "skip",
        "permissions": "ok"}, [(c.name, c.summary, c.hint) for c in checks]
    radio = got["radio lora0"]
    assert radio.details["firmware"] == "RUI_4.0.6_RAK3172-E"
    assert radio.details["mode"] == "LoRa P2P"
    assert "RUI_4.0.6_RAK3172-E" in radio.summary and "LoRa P2P" in radio.summary
    # A factory-fresh module still has other P2P settings than the config; the agent sets them on start.
    assert radio.details["p2p"].split(":")[0] == str(rak.p2p["freq_hz"]) != "920600000"
    assert "applies the config's P2P settings" in radio.summary
    # Only queries: the module's settings and RX state are untouched.
    assert [c.upper() for c in rak.commands] == ["AT", "AT+VER=?", "AT+NWM=?", "AT+P2P=?"]
    assert f"127.0.0.1:{broker.port}" in got["broker"].summary and "plain TCP" in got["broker"].summary
    assert got["broker"].details["connack"]["value"] == 0
    assert got["config"].details["source"] == "explicit" and got["config"].details["sha256"]
    assert got["gpio"].summary.startswith("not configured")
    assert doctor.exit_code(checks) == 0


def test_json_output_and_exit_code_from_main(tmp_path: Path, rak: SimRak3172, broker: Mosquitto,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(clock, "kernel_synced", lambda: True)
    parser = argparse.ArgumentParser()
    doctor.add_arguments(parser)
    cfg = _config(tmp_path, port=rak.path, mqtt_port=broker.port)
    assert doctor.main(parser.parse_args(["-c", str(cfg), "--json", "--timeout", "2"])) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "denen.doctor/1" and doc["status"] == "ok" and doc["exit_code"] == 0
    assert [c["name"] for c in doc["checks"]][:3] == ["config", "radio lora0", "broker"]
    # The clock is not synchronised: a warning, exit code 1, shown on the one-screen table.
    monkeypatch.setattr(clock, "kernel_synced", lambda: False)
    assert doctor.main(parser.parse_args(["-c", str(cfg), "--timeout", "2"])) == 1
    assert "timedatectl" in capsys.readouterr().out


def test_a_missing_port_fails_with_a_hint(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = _config(tmp_path, port=str(tmp_path / "lora9"), mqtt_port=broker.port)
    checks = doctor.run_checks(str(cfg), timeout_s=1.0, host=SYNCED)
    radio = _by_name(checks)["radio lora0"]
    assert radio.status == "fail"
    assert radio.summary == f"{tmp_path / 'lora9'} is not present"
    assert "plug in the module" in (radio.hint or "") and "/dev/lora0" in (radio.hint or "")
    assert doctor.exit_code(checks) == 2
    console = Console(record=True, width=220)
    doctor.render(checks, console)
    text = console.export_text()
    assert "FAIL" in text and "plug in the module" in text and "exit code 2" in text


def _password_broker(tmp_path: Path) -> Mosquitto:
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "gw-doc-01", "right-pass"], check=True)
    b = Mosquitto(tmp_path / "authbroker", extra=f"password_file {pw}\n")
    b.conf.write_text(b.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    return b


def test_a_wrong_password_fails_with_the_brokers_reason(tmp_path: Path, rak: SimRak3172) -> None:
    b = _password_broker(tmp_path)
    b.start()
    try:
        (tmp_path / "pw").write_text("wrong-pass\n")
        (tmp_path / "pw").chmod(0o600)
        auth = f"  username: gw-doc-01\n  password_file: {tmp_path / 'pw'}"
        cfg = _config(tmp_path, port=rak.path, mqtt_port=b.port, extra_mqtt=auth)
        broker_check = _by_name(doctor.run_checks(str(cfg), timeout_s=2.0, host=SYNCED))["broker"]
        assert broker_check.status == "fail"
        assert "the broker refused the connection" in broker_check.summary
        # Mosquitto's CONNACK reason for MQTT v5 (134 Bad user name or password, or 135 Not authorized).
        assert broker_check.details["connack"]["value"] in (134, 135)
        assert broker_check.details["connack"]["reason"] in broker_check.summary
        assert "mqtt.username" in (broker_check.hint or "")
        assert "wrong-pass" not in json.dumps(doctor.to_json([broker_check]))  # never shown

        (tmp_path / "pw").write_text("right-pass\n")
        assert _by_name(doctor.run_checks(str(cfg), timeout_s=2.0, host=SYNCED))["broker"].status == "ok"
    finally:
        b.stop()


def test_broker_not_listening(tmp_path: Path, rak: SimRak3172) -> None:
    from agent.dev.devbroker import free_port

    cfg = _config(tmp_path, port=rak.path, mqtt_port=free_port())
    check = _by_name(doctor.run_checks(str(cfg), timeout_s=1.0, host=SYNCED))["broker"]
    assert check.status == "fail" and "connection refused" in check.summary
    assert "mqtt.port" in (check.hint or "")


def test_es920lr_reports_firmware_and_mode(tmp_path: Path, broker: Mosquitto) -> None:
    with SimEs920lr(name="lora1", link=str(tmp_path / "lora1"), boot_delay_s=0.01) as sim:
        assert sim.wait_for(lambda: sim.mode == "config", 5)
        cfg = _config(tmp_path, port=sim.path, mqtt_port=broker.port, driver="es920lr")
        radio = _by_name(doctor.run_checks(str(cfg), timeout_s=2.0, host=SYNCED))["radio lora0"]
        assert radio.status == "ok", (radio.summary, radio.hint)
        assert radio.details == {"module": "ES920LR", "firmware": "VER 1.12", "mode": "configuration"}
        assert sim.transmitted == []  # nothing went over the air
        # Asked again, the module is in processor configuration mode and answers `version` at once.
        again = _by_name(doctor.run_checks(str(cfg), timeout_s=2.0, host=SYNCED))["radio lora0"]
        assert again.status == "ok" and again.details["firmware"] == "VER 1.12"


def test_a_silent_port_and_a_wrong_baud_rate(tmp_path: Path, broker: Mosquitto) -> None:
    master, slave = os.openpty()  # a port with nothing behind it
    try:
        cfg = _config(tmp_path, port=os.ttyname(slave), mqtt_port=broker.port)
        radio = _by_name(doctor.run_checks(str(cfg), timeout_s=0.3, host=SYNCED))["radio lora0"]
        assert radio.status == "fail" and "no answer to AT" in radio.summary
        assert "power" in (radio.hint or "")
    finally:
        os.close(master)
        os.close(slave)
    sim = SimRak3172(name="slow", link=str(tmp_path / "slow"), boot_delay_s=0.05, baudrate=9600,
                     rng=random.Random(2))
    sim.start()
    try:
        cfg = _config(tmp_path, port=sim.path, mqtt_port=broker.port)  # config says 115200
        radio = _by_name(doctor.run_checks(str(cfg), timeout_s=0.4, host=SYNCED))["radio lora0"]
        assert radio.status == "fail"
        assert "answers at 9600 baud, not at 115200" in radio.summary
        assert radio.hint == "set radios[].baudrate: 9600"
    finally:
        sim.stop()


def _sleeper(code: str) -> subprocess.Popen[str]:
    """A helper process that prints one line when it is ready; end it with _end()."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc


def _end(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_a_port_held_by_another_program_is_busy_and_not_probed(tmp_path: Path, rak: SimRak3172,
                                                               broker: Mosquitto) -> None:
    holder = _sleeper(f"import time\nf = open({rak.path!r}, 'rb', buffering=0)\nprint('ready', flush=True)\n"
                      "time.sleep(60)")
    try:
        cfg = _config(tmp_path, port=rak.path, mqtt_port=broker.port)
        radio = _by_name(doctor.run_checks(str(cfg), timeout_s=1.0, host=SYNCED))["radio lora0"]
        assert radio.status == "warn" and "busy" in radio.summary
        assert radio.details["holders"] == [holder.pid]
        assert rak.commands == []  # not disturbed
    finally:
        _end(holder)


def test_a_simulator_in_another_process_is_the_device_not_a_competitor() -> None:
    """`denen sim` holds the master side of its ptys (and the slave, to avoid EIO): that is the device itself."""
    sim = _sleeper("import os, time, tty\nm, s = os.openpty()\nprint(os.ttyname(s), flush=True)\ntime.sleep(60)")
    # _sleeper consumed the line; ask /proc for the pty instead.
    try:
        pts = [os.readlink(f"/proc/{sim.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{sim.pid}/fd")]
        slave = next(p for p in pts if p.startswith("/dev/pts/"))
        assert doctor_host.port_holders(slave) == []
        other = _sleeper(f"import time\nf = open({slave!r}, 'rb', buffering=0)\nprint('ready', flush=True)\n"
                         "time.sleep(60)")
        try:
            assert doctor_host.port_holders(slave) == [other.pid]
        finally:
            _end(other)
    finally:
        _end(sim)


def test_the_running_agents_radios_are_not_probed(tmp_path: Path, rak: SimRak3172, broker: Mosquitto) -> None:
    agent = _sleeper("import time\nprint('ready', flush=True)\ntime.sleep(60)")
    try:
        journal = tmp_path / "state" / "journal.db"
        j = Journal(journal, quota_bytes=1 << 20)
        j.commit(meta={"agent_pid": str(agent.pid)})
        j.close()
        cfg = _config(tmp_path, port=rak.path, mqtt_port=broker.port, journal=journal)
        radio = _by_name(doctor.run_checks(str(cfg), timeout_s=1.0, host=SYNCED))["radio lora0"]
        assert radio.status == "skip" and f"running agent (pid {agent.pid})" in radio.summary
        assert "systemctl stop denen" in (radio.hint or "")
        assert rak.commands == []
    finally:
        _end(agent)


def test_an_invalid_config_is_one_failing_check(tmp_path: Path) -> None:
    cfg = _config(tmp_path, port="loop://", mqtt_port=1883, driver="rak3127")
    checks = doctor.run_checks(str(cfg), host=SYNCED)
    assert len(checks) == 1 and checks[0].name == "config" and checks[0].status == "fail"
    assert "radios[0].driver" in (checks[0].hint or "")
    assert doctor.exit_code(checks) == 2


def test_clock_checks() -> None:
    assert doctor_checks.check_clock(Host(now_us=lambda: 0, clock_synced=lambda: True)).status == "fail"
    unsynced = doctor_checks.check_clock(Host(clock_synced=lambda: False))
    assert unsynced.status == "warn" and "set-ntp" in (unsynced.hint or "")
    assert doctor_checks.check_clock(Host(clock_synced=lambda: None)).status == "warn"
    assert doctor_checks.check_clock(Host(clock_synced=lambda: True)).status == "ok"


def test_journal_space_checks(tmp_path: Path) -> None:
    from agent.config import load_config

    cfg = load_config(_config(tmp_path, port="loop://", mqtt_port=1883))
    ok = doctor_checks.check_journal(cfg)
    assert ok.status == "ok" and "will be created" in ok.summary

    j = Journal(cfg.journal.path, quota_bytes=1 << 20)
    j.close()
    size = doctor_checks.journal_bytes(cfg.journal.path)
    assert size > 0
    # A quota just above the current size: near the quota.
    near = load_config(_config(tmp_path, port="loop://", mqtt_port=1883, quota_mb=size / (1024 * 1024) * 1.05))
    check = doctor_checks.check_journal(near)
    assert check.status == "warn" and "near its quota" in (check.hint or "")
    assert check.details["journal_bytes"] == size
    # A quota the disk cannot hold.
    huge = load_config(_config(tmp_path, port="loop://", mqtt_port=1883, quota_mb=1e9))
    check = doctor_checks.check_journal(huge)
    assert check.status == "warn" and "lower journal.quota_mb" in (check.hint or "")
    # A journal folder that cannot be made.
    (tmp_path / "afile").write_text("x")
    bad = load_config(_config(tmp_path, port="loop://", mqtt_port=1883, journal=tmp_path / "afile" / "j.db"))
    assert doctor_checks.check_journal(bad).status == "fail"


def test_gpio_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpiozero import Device

    from agent.gateway.fieldio_config import GpioConfig

    before = Device.pin_factory
    assert doctor_checks.check_gpio(types.SimpleNamespace(gpio=None)).status == "skip"
    assert doctor_checks.check_gpio(types.SimpleNamespace()).status == "skip"  # a config without the section at all
    assert doctor_checks.check_gpio(types.SimpleNamespace(gpio=GpioConfig())).status == "skip"  # section, no devices

    mock = doctor_checks.check_gpio(types.SimpleNamespace(
        gpio=GpioConfig.model_validate({"pin_factory": "mock", "siren": {"pin": 17}, "status_lamp": {"pin": 22}})))
    assert mock.status == "warn" and mock.details["pin_factory"] == "MockFactory"
    assert mock.details["devices"] == {"status_lamp": "22", "siren": "17"}
    assert "as the config asks" in mock.summary
    assert Device.pin_factory is before  # no global left behind

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    env = doctor_checks.check_gpio(types.SimpleNamespace(gpio=GpioConfig.model_validate({"siren": {"pin": 17}})))
    assert env.status == "warn" and "GPIOZERO_PIN_FACTORY" in env.summary
    assert Device.pin_factory is before
    if not os.path.exists("/proc/device-tree/model"):  # not a Raspberry Pi: no real pin factory can work
        monkeypatch.delenv("GPIOZERO_PIN_FACTORY")
        none = doctor_checks.check_gpio(types.SimpleNamespace(gpio=GpioConfig.model_validate({"siren": {"pin": 17}})))
        assert none.status == "fail" and "python3-lgpio" in (none.hint or "")
        assert Device.pin_factory is before


def test_permission_checks_for_a_normal_user(tmp_path: Path, rak: SimRak3172) -> None:
    from agent.config import load_config

    cfg = load_config(_config(tmp_path, port=rak.path, mqtt_port=1883))
    outsider = Host(euid=lambda: 1000, user=lambda: "installer", groups=lambda: {"installer"})
    check = doctor_checks.check_permissions(cfg, outsider)
    assert check.status == "warn" and "dialout" in check.summary
    assert check.hint == "sudo usermod -aG dialout installer (then log out and in)"
    member = Host(euid=lambda: 1000, user=lambda: "installer", groups=lambda: {"installer", "dialout"})
    assert doctor_checks.check_permissions(cfg, member).status == "ok"
    assert doctor_checks.check_permissions(cfg, Host(euid=lambda: 0)).status == "ok"


def test_doctor_without_config_checks_the_flashed_one(tmp_path: Path, rak: SimRak3172, broker: Mosquitto) -> None:
    from agent.tools import flash

    card = tmp_path / "card"
    card.mkdir()
    flash.flash(_config(tmp_path, port=rak.path, mqtt_port=broker.port), card)
    checks = doctor.run_checks(None, timeout_s=2.0, host=SYNCED, search=[str(card / "denen")],
                               state_dir=str(tmp_path / "state-dir"))
    config = _by_name(checks)["config"]
    assert config.status == "ok" and config.details["source"] == "flashed"
    assert config.details["path"] == str(card / "denen" / "config.yaml")
    assert not (tmp_path / "state-dir").exists()  # doctor only looks
    assert _by_name(checks)["radio lora0"].status == "ok"


def test_standalone_module_exit_code(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = _config(tmp_path, port=str(tmp_path / "nothing"), mqtt_port=1, driver="rak3172")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "agent.tools.doctor", "-c", str(cfg), "--json", "--timeout", "1"],
                          cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 2 and "Traceback" not in proc.stderr
    assert time.monotonic() - t0 < 30


def test_a_refused_flash_is_a_warning_naming_the_config_still_running(tmp_path: Path, rak: SimRak3172,
                                                                     broker: Mosquitto) -> None:
    from agent.gateway import boot
    from agent.tools import flash

    card = tmp_path / "card"
    card.mkdir()
    cfg = _config(tmp_path, port=rak.path, mqtt_port=broker.port)
    flash.flash(cfg, card)
    state = tmp_path / "state-dir"
    first = boot.resolve_active_config(None, [str(card / "denen")], state_dir=state)  # the agent's boot
    cfg.write_text(cfg.read_text().replace("site: testville", "site: otherville"))
    flash.flash(cfg, card)
    key = card / "denen" / "config.yaml"
    key.write_bytes(key.read_bytes().replace(b"otherville", b"otherwille"))  # one flipped letter on the card

    check = _by_name(doctor.run_checks(None, timeout_s=2.0, host=SYNCED, search=[str(card / "denen")],
                                       state_dir=str(state)))["config"]
    assert check.status == "warn"
    assert check.details["source"] == "installed" and check.details["sha256"] == first.sha256
    assert "config.yaml is corrupt" in check.summary and "flash the config again" in (check.hint or "")
