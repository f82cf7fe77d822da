"""The `denen` command as an installer or developer runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.field import example_key_env

REPO = Path(__file__).resolve().parents[2]


def denen(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "160"})


def test_config_validate_accepts_every_example(monkeypatch: pytest.MonkeyPatch) -> None:
    files = sorted(str(p) for p in (REPO / "config").glob("*.yaml") )
    assert len(files) >= 4
    for name, value in example_key_env().items():  # the examples name their keys by environment variable
        monkeypatch.setenv(name, value)
    out = denen("config", "validate", *files)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(": ok") == len(files)


def test_a_bad_config_is_one_line_per_problem_with_file_line_key_and_hint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (REPO / "config" / "demo.yaml").read_text().replace("driver: rak3172", "driver: rak3127", 1)
    bad.write_text(text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "rak3127" in s)
    out = denen("config", "validate", str(bad))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    [msg] = [s for s in out.stderr.splitlines() if "rak3127" in s]
    assert msg.startswith(f"{bad}:{line}:")
    assert "radios[0].driver" in msg and "es920lr" in msg and "rak3172" in msg


def test_run_with_a_bad_config_refuses_to_start(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway:\n  id: Bad/Id\n")
    out = denen("run", "-c", str(bad))
    assert out.returncode == 2 and "gateway.id" in out.stderr and "Traceback" not in out.stderr


def test_status_without_a_journal_is_one_clear_line(tmp_path: Path) -> None:
    out = denen("status", "-j", str(tmp_path / "nope.db"))
    assert out.returncode == 1
    assert out.stderr.strip().startswith("denen: error: no journal at") and "Traceback" not in out.stderr


def test_status_shows_the_siren_lamp_held_readings_and_alerts_the_gateway_last_published(tmp_path: Path) -> None:
    """A gateway whose siren sounds for an SOS and was silenced for a river stage, stopped: `denen status` reads
    what it last published from the journal, without a broker."""
    from agent.config import parse_config
    from agent.gateway.core import Gateway
    from agent.gateway.events import Command
    from drivers.types import Uplink
    from tests.support.scenario_rig import LAMP_PIN, SIREN_PIN, ScenarioNode, gateway_yaml

    river, sos = ScenarioNode(0x301, "water_level", "river-kawa"), ScenarioNode(0x101, "sos", "sos-1")
    rules = ('  rivers:\n    - node: "00000301"\n      stages_cm: {standby: 100, caution: 150, evacuation: 250, '
             'danger: 300}\n')
    gpio = f"  pin_factory: mock\n  status_lamp:\n    pin: {LAMP_PIN}\n  siren:\n    pin: {SIREN_PIN}\n"
    journal = tmp_path / "j.db"
    gw = Gateway(parse_config(gateway_yaml(port="loop://", mqtt_port=9, journal=journal, nodes=[river, sos],
                                           rules=rules, gpio=gpio)), radios=[])
    try:
        gw.on_uplinks([Uplink("lora0", river.frame({"level_cm": 260, "battery_v": 3.9}), -90, 5.0, None,
                              time.time_ns() // 1000)])
        gw.step()
        gw.inbox.put(Command("denen/v1/gw-scenario-01/cmd/siren-silence",
                      json.dumps({"key": "river_stage:00000301", "by": "山田 [b]x[/b]"}).encode()))
        gw.inbox.put(Command("denen/v1/gw-scenario-01/cmd/alert-ack",
                      json.dumps({"keys": ["river_stage:00000301"], "by": "山田 [b]x[/b]"}).encode()))
        gw.step()
        gw.on_uplinks([Uplink("lora0", sos.frame({"pressed": 1, "battery_v": 3.9}), -90, 5.0, None,
                              time.time_ns() // 1000)])
        gw.step()
    finally:
        gw.edge.close()
        gw.journal.close()

    out = denen("status", "-j", str(journal), "--json")
    assert out.returncode == 0, out.stderr
    state = json.loads(out.stdout)["gateway_state"]
    assert state["schema"] == "denen.state/1" and state["age_s"] >= 0
    assert state["siren"] == {"configured": True, "on": True, "why": "alert", "alert": "sos:00000101",
                              "silenced": ["river_stage:00000301"]}
    assert state["lamp"] == {"configured": True, "state": "alarm"}
    assert state["held"] == {"active": False, "reason": None, "count": 0, "until_us": None}
    assert [(a["key"], a["repeating"], a["acknowledged_by"]) for a in state["alerts"]] == [
        ("river_stage:00000301", False, "山田 [b]x[/b]"), ("sos:00000101", True, None)]  # most severe, oldest

    text = denen("status", "-j", str(journal))
    assert text.returncode == 0, text.stderr
    assert "the agent is not running, so this is its last state" in text.stdout
    assert "siren: SOUNDING for alert sos:00000101   silenced for: river_stage:00000301" in text.stdout
    assert "lamp: alarm" in text.stdout and "held readings: none" in text.stdout
    assert "acknowledged by 山田 [b]x[/b]" in text.stdout  # names are text, never rich markup
    assert "sos:00000101  emergency" in text.stdout and "repeating until acknowledged" in text.stdout


def test_status_without_a_recorded_state_says_so(tmp_path: Path) -> None:
    from agent.gateway.journal import Journal

    Journal(tmp_path / "j.db", quota_bytes=1 << 20).close()
    out = denen("status", "-j", str(tmp_path / "j.db"))
    assert out.returncode == 0, out.stderr
    assert "outputs: no state recorded yet" in out.stdout
    assert json.loads(denen("status", "-j", str(tmp_path / "j.db"), "--json").stdout)["gateway_state"] is None


def test_config_schema_is_written(tmp_path: Path) -> None:
    target = tmp_path / "schema.json"
    out = denen("config", "schema", "-o", str(target))
    assert out.returncode == 0, out.stderr
    schema = json.loads(target.read_text())
    assert {"gateway", "journal", "mqtt", "radios", "nodes"} <= set(schema["properties"])


def test_committed_schema_is_current() -> None:
    from agent.config import config_json_schema

    committed = json.loads((REPO / "config" / "denen.schema.json").read_text())
    assert committed == json.loads(json.dumps(config_json_schema())), "run: denen config schema"


def test_sim_prints_the_pty_paths_to_open(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "sim", str(REPO / "config" / "scenarios" / "demo.yaml"),
         "--link-dir", str(tmp_path), "--duration", "3"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"lora0: {tmp_path / 'lora0'} -> /dev/pts/" in out
    assert f"lora1: {tmp_path / 'lora1'} -> /dev/pts/" in out


@pytest.mark.broker
def test_demo_runs_and_shows_readings_and_the_sos_alert(tmp_path: Path) -> None:
    out = denen("demo", "--duration", "14", "--workdir", str(tmp_path), timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "gw-demo-01: online" in out.stdout
    assert "sos-hiker-1: SOS発信 / SOS pressed at" in out.stdout
    assert "trap-demo-1: わなが作動 / trap fired" in out.stdout
