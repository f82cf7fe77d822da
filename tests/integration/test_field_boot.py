"""A gateway as it boots in the field: the config comes from a flashed SD card, systemd is told it is ready and
the watchdog is fed from the core loop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent.dev.devbroker import Mosquitto
from tests.support.field import NODES, FieldNode, config_text, start_sim, wait_configured

pytestmark = pytest.mark.broker
REPO = Path(__file__).resolve().parents[2]


def test_boot_from_a_flashed_card_with_systemd_notify_and_watchdog(tmp_path: Path, broker: Mosquitto) -> None:
    sim = start_sim(tmp_path)
    laptop = tmp_path / "laptop.yaml"
    nodes = [FieldNode(n.node_id, n.kind) for n in NODES]
    laptop.write_text(config_text(port=sim.path, mqtt_port=broker.port, journal=tmp_path / "var" / "journal.db",
                                  nodes=nodes))
    laptop.chmod(0o600)  # it holds node keys: a config every user can read is refused
    card = tmp_path / "boot"
    card.mkdir()
    out = subprocess.run([sys.executable, "-m", "agent.cli", "flash", str(laptop), str(card)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (card / "denen" / "config.yaml").exists()

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(20)
    env = {**os.environ, "DENEN_FLASH_SEARCH": str(card / "denen"), "STATE_DIRECTORY": str(tmp_path / "state"),
           "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        got: list[bytes] = []
        while not any(b"WATCHDOG=1" in m for m in got):
            got.append(notify.recv(4096))
        assert any(b"READY=1" in m for m in got)
        assert wait_configured(sim)
        # The watchdog keeps being fed while idle (interval 2 s -> a ping at least every second or so).
        pings = 0
        while pings < 2:
            if b"WATCHDOG=1" in notify.recv(4096):
                pings += 1
        st = subprocess.run([sys.executable, "-m", "agent.cli", "status", "-j", str(tmp_path / "var" / "journal.db"),
                             "--json"], cwd=REPO, capture_output=True, text=True, timeout=30, check=True)
        agent = json.loads(st.stdout)["agent"]
        assert agent["running"] and "flashed" in agent["config"] and str(card / "denen") in agent["config"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        notify.close()
        sim.stop()
    assert proc.returncode == 0
