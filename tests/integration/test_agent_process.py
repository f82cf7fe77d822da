"""The agent as users run it: `denen run` in its own process, killed with SIGKILL, fed bad input, and `denen status`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.dev.devbroker import Mosquitto
from tests.support.agentproc import AgentProcess
from tests.support.broker import Collector
from tests.support.field import NODES, FieldNode, config_text, default_values, readings_of, start_sim, wait_configured
from tests.support.polling import wait_until

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[2]


def frames_ok(rig: dict) -> int:
    """Frames the agent has journaled, read in-process through a read-only connection (cheaper than the CLI)."""
    from agent.tools import status

    path = rig["cfg"].parent / "journal.db"
    return status.collect(str(path))["counters"].get("frames.ok", 0) if path.exists() else 0


def denen_status(config: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "agent.cli", "status", "-c", str(config), "--json"], cwd=REPO,
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


@pytest.fixture
def rig(tmp_path: Path, broker: Mosquitto) -> Iterator[dict]:
    nodes = [FieldNode(n.node_id, n.kind) for n in NODES]
    sim = start_sim(tmp_path)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(config_text(port=sim.path, mqtt_port=broker.port, journal=tmp_path / "journal.db", nodes=nodes,
                               extra_mqtt="  batch_max_readings: 1\n  inflight_window: 1"))
    cfg.chmod(0o600)  # it holds node keys: a config every user can read is refused
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    agent.start()
    assert wait_configured(sim), (tmp_path / "agent.log").read_text()
    yield {"sim": sim, "agent": agent, "cfg": cfg, "broker": broker, "nodes": {n.kind: n for n in nodes},
           "log": tmp_path / "agent.log"}
    agent.stop()
    sim.stop()


def test_sigkill_while_publishing_loses_nothing(rig: dict) -> None:
    sim, agent, broker, cfg, nodes = rig["sim"], rig["agent"], rig["broker"], rig["cfg"], rig["nodes"]
    col = Collector(broker, "denen/v1/+/readings/#", client_id="kill-collector", persistent=True)
    try:
        total = 0
        proved = attempts = 0
        # Three kills must land mid-drain. A kill that lands after the drain proves nothing about the journal, so
        # that round is repeated (a loaded machine may be slow to kill); six rounds without three proofs fail.
        while proved < 3:
            attempts += 1
            assert attempts <= 6, f"only {proved} of {attempts - 1} kills landed while the journal held readings"
            # Journal a backlog while the broker is away, so the agent is mid-drain when it is killed.
            broker.stop()
            for i in range(800):
                kind = ("water_level", "rain", "weather", "trap")[i % 4]
                assert sim.inject_uplink(nodes[kind].frame(default_values(kind, i)))
                if i % 100 == 99:
                    # Pace the radio like a UART would (800 frames are ~6 s at 115200 baud): a module whose host
                    # is slow to read loses bytes, and that loss is not what this test is about.
                    n = total + i + 1
                    assert wait_until(lambda n=n: frames_ok(rig) >= n, 60)
            total += 800
            # Generous bounds: on a loaded 2-core machine the agent may take a while to read 800 frames.
            assert wait_until(lambda: denen_status(cfg)["counters"].get("frames.ok", 0) >= total, 60)
            broker.start()
            have = len(readings_of(col.messages))
            assert col.wait_for(lambda m, h=have: len(readings_of(m)) > h, 60)  # publishing has begun
            agent.kill9()
            proved += denen_status(cfg)["journal"]["unsent"] > 0
            since = len(sim.commands)
            agent.start()
            assert wait_configured(sim, since)
        assert col.wait_for(lambda m: len({r["id"] for r in readings_of(m)}) >= total, 90)
        got = readings_of(col.messages)
        sent = {f"gw-test-01/{n.hex}/{s['fcnt']}" for n in nodes.values() for s in n.sent}
        assert {r["id"] for r in got} == sent
        assert wait_until(lambda: denen_status(cfg)["journal"]["unsent"] == 0, 15)
    finally:
        col.close()


def test_bad_input_is_counted_visible_in_status_and_the_agent_keeps_running(rig: dict) -> None:
    sim, agent, cfg, nodes, broker = rig["sim"], rig["agent"], rig["cfg"], rig["nodes"], rig["broker"]
    col = Collector(broker, "denen/v1/+/readings/#", client_id="bad-collector", persistent=True)
    trap, sos = nodes["trap"], nodes["sos"]
    try:
        assert sim.inject_uplink(trap.frame(default_values("trap", 1)))
        assert sim.inject_uplink(trap.frame(default_values("trap", 2)))
        sim.inject_garbage(b"\x00\xff\xfc\xfc\xfc#!garbage line\r\n")
        # Bad MIC: a frame signed with the wrong key.
        assert sim.inject_uplink(trap.frame(default_values("trap", 3), key=bytes(16)))
        # Replayed (rolled-back) counter, and the last good frame heard twice.
        assert sim.inject_uplink(trap.frame(default_values("trap", 1), counter=1))
        assert sim.inject_uplink(trap.frame(default_values("trap", 2), counter=2))
        # Not a denen frame at all.
        assert sim.inject_uplink(b"\x01\x02")
        since = len(sim.commands)
        sim.reboot(noise=True)
        assert wait_configured(sim, since), "agent did not reconfigure after the module rebooted"
        sim.unplug()
        assert wait_until(lambda: denen_status(cfg)["counters"].get("lora0.port_lost", 0) >= 1, 15)
        since = len(sim.commands)
        sim.replug()
        assert wait_configured(sim, since, 20), "agent did not reopen the port"
        assert sim.inject_uplink(sos.frame(default_values("sos", 0)))
        assert col.wait_for(lambda m: any(r["kind"] == "sos" for r in readings_of(m)), 15)
        assert agent.alive

        st = denen_status(cfg)
        bad = st["bad_frames"]
        assert bad.get("bad_mic") == 1 and bad.get("replay") == 1 and bad.get("duplicate") == 1
        assert bad.get("frame_short") == 1, bad
        c = st["counters"]
        assert c.get("lora0.module_reboot", 0) >= 1, c
        assert c.get("lora0.reopen", 0) >= 1 and st["reopens"]["lora0"] >= 1
        assert c.get("lora0.garbled_line", 0) >= 1, c
        trap_row = next(n for n in st["nodes"] if n["node"] == trap.hex)
        assert trap_row["frames_ok"] == 2 and trap_row["frames_bad"] == 3 and trap_row["last_fcnt"] == 2
        assert trap_row["rssi"] == -80
        reasons = {q["reason"] for q in st["quarantine_recent"]}
        assert {"bad_mic", "replay", "duplicate", "frame_short"} <= reasons
        # The key never reaches the log.
        log_text = rig["log"].read_text()
        assert "00000201000002010000020100000201" not in log_text.lower()
        # And the human view renders.
        out = subprocess.run([sys.executable, "-m", "agent.cli", "status", "-c", str(cfg)], cwd=REPO,
                             capture_output=True, text=True, timeout=30, check=True, env={**os.environ, "COLUMNS": "160"})
        assert "bad_mic 1" in out.stdout and trap.hex in out.stdout
    finally:
        col.close()
