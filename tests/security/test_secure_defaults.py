"""Item 6 of issue 10, gateway side: secure by default.

* A config naming a broker on another machine without ``tls:`` is refused, at the ``mqtt.host`` line, with a hint;
  ``tls: false`` loads, and the agent warns about it at every start.
* ``denen doctor`` reports plain TCP to a broker on another machine as a failure, against a real Mosquitto
  listening on this machine's network address.
* The journal and its -wal/-shm files are created 0600 by ``denen run`` under umask 022, and a symbolic link at
  the journal's path (dangling or not) stops the agent with a clear message, touching nothing where it points.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.dev.devbroker import Mosquitto, free_port
from agent.tools import doctor
from agent.tools.doctor_host import Host
from tests.support.field import FieldNode, config_text, start_sim, wait_configured, write_config
from tests.support.polling import wait_until

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[2]


def _local_address() -> str:
    """This machine's address on its network (not loopback): where a broker "on another machine" is reached."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # UDP connect sends nothing; it picks the outgoing interface
        addr = s.getsockname()[0]
    assert not ipaddress.ip_address(addr).is_loopback, f"no network address besides loopback ({addr})"
    return addr


def _cli(*args: str, timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, **kw)  # type: ignore[call-overload]


def _config(tmp: Path, *, mqtt: str, journal: Path | None = None, port: str = "loop://") -> Path:
    text = config_text(port=port, mqtt_port=1883, journal=journal or tmp / "state" / "journal.db",
                       nodes=[FieldNode(0x00000201, "trap")])
    text = text.replace("  host: 127.0.0.1\n  port: 1883\n", mqtt, 1)
    return write_config(tmp / "gw.yaml", text)


@pytest.fixture
def remote_broker(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A real Mosquitto that also listens on this machine's network address: (address, port)."""
    addr, port = _local_address(), free_port()
    b = Mosquitto(tmp_path / "remote-broker", extra=f"listener {port} {addr}\nallow_anonymous true\n")
    b.start()
    try:
        yield addr, port
    finally:
        b.stop()


def test_a_remote_broker_without_tls_is_refused_with_file_line_key_and_hint(tmp_path: Path) -> None:
    cfg = _config(tmp_path, mqtt="  host: mqtt.example.jp\n  port: 1883\n  username: gw-test-01\n"
                                 "  password: \"hunter2-secret\"\n")
    out = _cli("config", "validate", str(cfg))
    assert out.returncode == 2, (out.stdout, out.stderr)
    line = next(n for n, text in enumerate(cfg.read_text().splitlines(), 1) if "host: mqtt.example.jp" in text)
    assert f"{cfg}:{line}:3: mqtt.host: the broker mqtt.example.jp is not on this machine and tls is not set" \
        in out.stderr, out.stderr
    assert "(hint: add tls: {ca_file:" in out.stderr and "tls: false" in out.stderr
    assert "hunter2-secret" not in out.stdout + out.stderr
    # The agent refuses to start on it, with the same answer.
    run = _cli("run", "-c", str(cfg), timeout=30)
    assert run.returncode == 2 and "mqtt.host" in run.stderr and not (tmp_path / "state").exists(), run.stderr


def test_tls_false_loads_and_the_agent_warns_at_every_start(tmp_path: Path, remote_broker: tuple[str, int]) -> None:
    addr, port = remote_broker
    sim = start_sim(tmp_path)
    try:
        cfg = _config(tmp_path, mqtt=f"  host: {addr}\n  port: {port}\n  tls: false\n", port=sim.path)
        out = _cli("config", "validate", str(cfg))
        assert out.returncode == 0 and ": ok (gateway gw-test-01" in out.stdout, (out.stdout, out.stderr)
        log = tmp_path / "agent.log"
        for start in (1, 2):
            since = len(sim.commands)
            with log.open("ab") as f:
                proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "-c", str(cfg)], cwd=REPO,
                                        stdout=f, stderr=subprocess.STDOUT)
            try:
                assert wait_configured(sim, since), log.read_text()
                # It runs, over plain TCP to the "remote" broker (the config loader said so when it started).
                assert wait_until(lambda: log.read_text().count(f"MQTT: connected to {addr}:{port}") == start, 15), \
                    log.read_text()[-2000:]
            finally:
                proc.terminate()
                assert proc.wait(30) == 0
            warnings = [line for line in log.read_text().splitlines()
                        if "WARNING" in line and f"plain TCP to the broker {addr}" in line]
            assert len(warnings) == start, log.read_text()[-2000:]
    finally:
        sim.stop()


def test_doctor_reports_plain_tcp_to_a_remote_broker_as_a_failure(tmp_path: Path,
                                                                  remote_broker: tuple[str, int]) -> None:
    addr, port = remote_broker
    cfg = _config(tmp_path, mqtt=f"  host: {addr}\n  port: {port}\n  tls: false\n")
    checks = {c.name: c for c in doctor.run_checks(str(cfg), timeout_s=3.0,
                                                    host=Host(clock_synced=lambda: True))}
    broker = checks["broker"]
    assert broker.details.get("connack", {}).get("value") == 0, (broker.summary, broker.details)  # it connected
    assert broker.status == "fail", broker
    assert "plain TCP to a broker on another machine" in broker.summary and f"{addr}:{port}" in broker.summary
    assert broker.hint is not None and "mqtt.tls" in broker.hint
    assert doctor.exit_code(list(checks.values())) == 2
    # Loopback plain TCP stays fine (the demo, a broker on the gateway itself).
    local = Mosquitto(tmp_path / "local-broker")
    local.start()
    try:
        cfg = _config(tmp_path, mqtt=f"  host: 127.0.0.1\n  port: {local.port}\n")
        checks = {c.name: c for c in doctor.run_checks(str(cfg), timeout_s=3.0,
                                                        host=Host(clock_synced=lambda: True))}
        assert checks["broker"].status == "ok", checks["broker"]
    finally:
        local.stop()


def test_the_agent_creates_its_journal_owner_only_under_umask_022(tmp_path: Path, broker: Mosquitto) -> None:
    sim = start_sim(tmp_path)
    journal = tmp_path / "state" / "journal.db"
    cfg = _config(tmp_path, mqtt=f"  host: 127.0.0.1\n  port: {broker.port}\n", journal=journal, port=sim.path)
    try:
        with (tmp_path / "agent.log").open("ab") as f:
            proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "-c", str(cfg)], cwd=REPO, stdout=f,
                                    stderr=subprocess.STDOUT, umask=0o022)
        try:
            assert wait_configured(sim), (tmp_path / "agent.log").read_text()
            assert wait_until(lambda: all(Path(f"{journal}{s}").exists() for s in ("", "-wal", "-shm")), 10)
            modes = {s: stat.S_IMODE(os.stat(f"{journal}{s}").st_mode) for s in ("", "-wal", "-shm")}
            assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}, {k: oct(v) for k, v in modes.items()}
            # A control: the same umask gives an ordinary file 0644, so the mode above is the journal's doing.
            probe = subprocess.run([sys.executable, "-c", f"open({str(tmp_path / 'probe')!r}, 'w').close()"],
                                   umask=0o022, check=True)
            assert probe.returncode == 0 and stat.S_IMODE(os.stat(tmp_path / "probe").st_mode) == 0o644
        finally:
            proc.terminate()
            assert proc.wait(30) == 0
    finally:
        sim.stop()


@pytest.mark.parametrize("dangling", [True, False])
def test_a_symbolic_link_at_the_journal_path_stops_the_agent_with_a_clear_message(tmp_path: Path, dangling: bool,
                                                                                  broker: Mosquitto) -> None:
    target = tmp_path / "victim" / "elsewhere.db"
    target.parent.mkdir()
    if not dangling:
        target.write_bytes(b"someone else's file")
    journal = tmp_path / "state" / "journal.db"
    journal.parent.mkdir()
    journal.symlink_to(target)
    cfg = _config(tmp_path, mqtt=f"  host: 127.0.0.1\n  port: {broker.port}\n", journal=journal)
    started = time.monotonic()
    out = _cli("run", "-c", str(cfg), timeout=60)
    assert out.returncode == 1, (out.stdout, out.stderr[-2000:])
    assert f"denen: error: {journal} is a symbolic link" in out.stderr, out.stderr[-2000:]
    assert "refusing to open the journal through it" in out.stderr and "Traceback" not in out.stderr
    assert time.monotonic() - started < 30
    assert target.exists() != dangling
    if not dangling:
        assert target.read_bytes() == b"someone else's file"
    assert sorted(p.name for p in journal.parent.iterdir()) == ["journal.db"] and journal.is_symlink()
    # denen doctor says the same.
    checks = {c.name: c for c in doctor.run_checks(str(cfg), timeout_s=2.0,
                                                    host=Host(clock_synced=lambda: True))}
    assert checks["journal"].status == "fail" and "symbolic link" in checks["journal"].summary
