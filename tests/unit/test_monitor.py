"""``denen monitor`` on a journal written by the agent's own Journal class."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from agent import monitor
from agent.config import load_config
from agent.errors import AgentError
from agent.journal import Journal, NodeState

NOW_US = 1_764_000_000_000_000


def test_snr_floor_and_sensitivity_follow_the_sf_table() -> None:
    assert monitor.SNR_FLOOR_DB == {7: -7.5, 8: -10.0, 9: -12.5, 10: -15.0, 11: -17.5, 12: -20.0}
    # -174 + 10 log10(125 kHz) + 6 dB NF + floor: the figures in the module docstring.
    assert monitor.sensitivity_dbm(7) == pytest.approx(-124.5, abs=0.05)
    assert monitor.sensitivity_dbm(10) == pytest.approx(-132.0, abs=0.05)
    assert monitor.sensitivity_dbm(12) == pytest.approx(-137.0, abs=0.05)
    # Doubling the bandwidth costs 3 dB of sensitivity.
    assert monitor.sensitivity_dbm(10, 250) - monitor.sensitivity_dbm(10, 125) == pytest.approx(3.01, abs=0.01)
    with pytest.raises(ValueError):
        monitor.sensitivity_dbm(6)


@pytest.mark.parametrize(("snr", "sf", "margin", "rating"), [
    (-5.0, 10, 10.0, "excellent"),   # exactly on the excellent line
    (-5.1, 10, 9.9, "good"),
    (-10.0, 10, 5.0, "good"),
    (-10.5, 10, 4.5, "marginal"),
    (-15.0, 10, 0.0, "marginal"),
    (-16.0, 10, -1.0, "poor"),
    (-16.0, 12, 4.0, "marginal"),    # the same SNR is decodable with room at SF12
    (2.5, 7, 10.0, "excellent"),
    (-7.0, 7, 0.5, "marginal"),
])
def test_snr_margin_and_rating(snr: float, sf: int, margin: float, rating: str) -> None:
    # A strong RSSI so the SNR margin decides.
    m = monitor.link_margin(-60, snr, sf)
    assert m.snr_margin_db == pytest.approx(margin)
    assert m.margin_db == pytest.approx(margin)
    assert m.rating == rating
    assert not m.rssi_near_limit


def test_rssi_near_the_sensitivity_is_flagged_and_limits_the_margin() -> None:
    # SF10/125 kHz sensitivity -132 dBm: -128 dBm is 4 dB above it.
    m = monitor.link_margin(-128, 8.0, 10)
    assert m.rssi_margin_db == pytest.approx(4.0, abs=0.05)
    assert m.snr_margin_db == pytest.approx(23.0)
    assert m.margin_db == pytest.approx(4.0, abs=0.05) and m.rating == "marginal"
    assert m.rssi_near_limit
    assert not monitor.link_margin(-125, 8.0, 10).rssi_near_limit  # 7 dB above
    # No SNR (ES920LR): RSSI alone.
    es = monitor.link_margin(-110, None, 10)
    assert es.snr_margin_db is None and es.margin_db == pytest.approx(22.0, abs=0.05) and es.rating == "excellent"
    assert monitor.link_margin(None, None, 10).rating == "unknown"


def _config(tmp: Path, journal: Path) -> Path:
    cfg = tmp / "gw.yaml"
    cfg.write_text(f"""
gateway: {{id: gw-mon-01, site: testville}}
journal: {{path: {journal}}}
radios:
  - name: lora0
    driver: rak3172
    port: loop://
    p2p: {{spreading_factor: 12}}
  - name: es0
    driver: es920lr
    port: loop://
    es920: {{spreading_factor: 7, bandwidth_khz: 125}}
nodes:
  - {{id: "00000101", name: sos-hiker-1, kind: sos, unauthenticated: flag, interval_s: 3600}}
  - {{id: "00000201", name: trap-1, kind: trap, unauthenticated: flag, interval_s: 600}}
  - {{id: "00000301", name: river-1, kind: water_level, unauthenticated: flag, interval_s: 600, radio: es0}}
  - {{id: "00000401", name: rain-1, kind: rain, unauthenticated: flag, interval_s: 600}}
unknown_nodes: accept
""")
    return cfg


def _journal(path: Path) -> None:
    j = Journal(path, quota_bytes=1 << 20)
    j.commit(nodes=[
        # SF12 radio, SNR -14 -> margin 6 dB: good.
        NodeState("00000101", "sos-hiker-1", 7, NOW_US - 30_000_000, "lora0", -118.0, -14.0, 3.71, 40, 2),
        # SF12, SNR -21 -> -1 dB: poor; last heard 30 min ago with a 10 min interval: late.
        NodeState("00000201", "trap-1", 3, NOW_US - 1_800_000_000, "lora0", -136.0, -21.0, 2.9, 5, 9),
        # ES920LR at SF7: no SNR; RSSI -119 vs -124.5 sensitivity -> 5.5 dB: good, but near the limit.
        NodeState("00000301", "river-1", 12, NOW_US - 5_000_000, "es0", -119.0, None, 3.6, 12, 0),
        # Not in the config, heard anyway (unknown_nodes: accept).
        NodeState("0000ffff", None, 1, NOW_US - 1_000_000, "lora0", -80.0, 9.5, None, 1, 0),
    ])
    j.close()


def test_collect_joins_journal_and_config(tmp_path: Path) -> None:
    journal = tmp_path / "journal.db"
    _journal(journal)
    config = load_config(_config(tmp_path, journal))
    data = monitor.collect(str(journal), config, now_us=NOW_US)
    assert data["schema"] == "denen.monitor/1" and data["gateway"] == "gw-mon-01"
    rows = {r["node"]: r for r in data["nodes"]}
    assert list(rows) == ["00000101", "00000201", "00000301", "00000401", "0000ffff"]

    sos = rows["00000101"]
    assert (sos["name"], sos["kind"], sos["spreading_factor"], sos["snr_floor_db"]) == ("sos-hiker-1", "sos", 12, -20.0)
    assert sos["snr_margin_db"] == pytest.approx(6.0) and sos["rating"] == "good"
    assert sos["last_seen_age_s"] == pytest.approx(30.0) and sos["state"] == "ok"
    assert (sos["frames_ok"], sos["frames_bad"], sos["bad_pct"], sos["battery_v"]) == (40, 2, 4.8, 3.71)

    trap = rows["00000201"]
    assert trap["rating"] == "poor" and trap["link_margin_db"] == pytest.approx(-1.0)
    assert trap["state"] == "late" and trap["rssi_near_limit"]

    river = rows["00000301"]
    assert river["spreading_factor"] == 7 and river["snr_db"] is None
    assert river["rssi_margin_db"] == pytest.approx(5.5, abs=0.05) and river["rating"] == "good"
    assert river["rssi_near_limit"]

    rain = rows["00000401"]
    assert rain["state"] == "never heard" and rain["rating"] == "unknown" and rain["last_seen_us"] is None

    stranger = rows["0000ffff"]
    assert not stranger["configured"] and stranger["kind"] is None and stranger["rating"] == "excellent"


def test_json_once_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = tmp_path / "journal.db"
    _journal(journal)
    cfg = _config(tmp_path, journal)
    parser = argparse.ArgumentParser()
    monitor.add_arguments(parser)
    assert monitor.main(parser.parse_args(["-c", str(cfg), "--json", "--once"])) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [n["rating"] for n in doc["nodes"]] == ["good", "poor", "good", "unknown", "excellent"]
    assert doc["thresholds"]["ratings_db"] == {"excellent": 10.0, "good": 5.0, "marginal": 0.0}

    # Journal only (no config): rated at the SF10 default, names from the journal.
    assert monitor.main(parser.parse_args(["-j", str(journal), "--json", "--once"])) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [n["node"] for n in doc["nodes"]] == ["00000101", "00000201", "00000301", "0000ffff"]
    assert {n["spreading_factor"] for n in doc["nodes"]} == {10}


def test_json_stream_prints_one_document_per_refresh(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = tmp_path / "journal.db"
    _journal(journal)
    parser = argparse.ArgumentParser()
    monitor.add_arguments(parser)
    t0 = time.monotonic()
    assert monitor.main(parser.parse_args(["-j", str(journal), "--json", "--interval", "0.5", "--count", "2"])) == 0
    assert time.monotonic() - t0 >= 0.5
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["schema"] == "denen.monitor/1" for line in lines)


def test_table_view(tmp_path: Path) -> None:
    journal = tmp_path / "journal.db"
    _journal(journal)
    data = monitor.collect(str(journal), load_config(_config(tmp_path, journal)), now_us=NOW_US)
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(monitor.render(data))
    text = console.export_text()
    assert "sos-hiker-1" in text and "good" in text and "poor" in text and "LATE" in text
    assert "RSSI near limit" in text and "never" in text and "30 s ago" in text and "30 min ago" in text
    assert "excellent >= 10 dB" in text


def test_live_view_refreshes_and_waits_for_a_missing_journal(tmp_path: Path) -> None:
    journal = tmp_path / "later.db"
    console = Console(record=True, width=200, file=io.StringIO(), force_terminal=True)
    # The journal appears while the monitor is watching.
    import threading

    timer = threading.Timer(0.2, _journal, args=(journal,))
    timer.start()
    try:
        assert monitor._live(console, str(journal), None, 0.5, 3) == 0
    finally:
        timer.join()
    text = console.export_text()
    assert "waiting: no journal at" in text
    assert "sos-hiker-1" in text


def test_errors_are_one_line(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    monitor.add_arguments(parser)
    with pytest.raises(AgentError, match="no journal at"):
        monitor.main(parser.parse_args(["-j", str(tmp_path / "none.db"), "--once"]))
    with pytest.raises(AgentError, match="too short"):
        monitor.main(parser.parse_args(["-j", str(tmp_path / "none.db"), "--interval", "0.1"]))
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "agent.monitor", "-j", str(tmp_path / "none.db"), "--once"],
                          cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "no journal at" in proc.stderr and "Traceback" not in proc.stderr


def _silence_config(tmp: Path, journal: Path, rules: str) -> Path:
    cfg = tmp / "silence.yaml"
    cfg.write_text(f"""
gateway: {{id: gw-mon-02, site: testville}}
journal: {{path: {journal}}}
radios:
  - name: lora0
    driver: rak3172
    port: loop://
nodes:
  - {{id: "00000101", name: sos-hiker-1, kind: sos, unauthenticated: flag, interval_s: 3600}}
  - {{id: "00000201", name: trap-1, kind: trap, unauthenticated: flag, interval_s: 600}}
{rules}""")
    return cfg


@pytest.mark.parametrize("rules", ["", "rules:\n  silence_factor: 2.5\n  silence_kinds: [trap]\n"])
def test_late_and_the_node_silent_alert_agree_to_the_microsecond(tmp_path: Path, rules: str) -> None:
    from agent.rules import RuleEngine, node_infos

    journal = tmp_path / "journal.db"
    heard_us = NOW_US - 10 * 86_400_000_000
    j = Journal(journal, quota_bytes=1 << 20)
    j.commit(nodes=[NodeState("00000201", "trap-1", 3, heard_us, "lora0", -90.0, 5.0, 3.0, 5, 0),
                    NodeState("00000101", "sos-hiker-1", 3, heard_us, "lora0", -90.0, 5.0, 3.0, 5, 0)])
    j.close()
    config = load_config(_silence_config(tmp_path, journal, rules))
    factor = config.rules.silence_factor
    # The rule engine started when the trap was last heard: its silence counts from there, as the monitor's.
    engine = RuleEngine(config.rules, node_infos(config.nodes), start_us=heard_us)
    limit_us = int(factor * 600 * 1_000_000)
    before = monitor.collect(str(journal), config, now_us=heard_us + limit_us - 1)
    trap = {r["node"]: r for r in before["nodes"]}["00000201"]
    assert trap["state"] == "ok" and trap["late_after_s"] == factor * 600 and trap["silence_alert"]
    assert not [a for a in engine.tick(heard_us + limit_us - 1) if a.node == "00000201"]
    at = monitor.collect(str(journal), config, now_us=heard_us + limit_us)
    assert {r["node"]: r for r in at["nodes"]}["00000201"]["state"] == "late"
    assert [a.type for a in engine.tick(heard_us + limit_us) if a.node == "00000201"] == ["node_silent"]
    assert at["thresholds"]["late_factor"] == factor
    # The SOS button: LATE at the same factor; raises an alert only when sos is a watched kind.
    sos_late_us = heard_us + int(factor * 3600 * 1_000_000)
    sos = {r["node"]: r for r in monitor.collect(str(journal), config, now_us=sos_late_us)["nodes"]}["00000101"]
    alerts = [a.type for a in engine.tick(sos_late_us) if a.node == "00000101"]
    assert sos["state"] == "late"
    assert sos["silence_alert"] == ("sos" in config.rules.silence_kinds) == (alerts == ["node_silent"])
    console = Console(record=True, width=250, file=io.StringIO())
    console.print(monitor.render(monitor.collect(str(journal), config, now_us=sos_late_us)))
    text = " ".join(console.export_text().split())  # the caption wraps at the table's width
    assert f"LATE = silent >= {factor:g} x interval (rules.silence_factor)" in text
    assert "node_silent alert" in text and "does not count time the agent was stopped" in text
    assert ("LATE (no alert)" in text) == (not sos["silence_alert"])


def test_the_help_explains_late(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    monitor.add_arguments(parser)
    text = parser.format_help()
    assert "rules.silence_factor" in text and "node_silent" in text and "LATE (no alert)" in text


def test_without_a_config_late_uses_the_rules_default(tmp_path: Path) -> None:
    from agent.rules import RulesConfig

    journal = tmp_path / "journal.db"
    _journal(journal)
    data = monitor.collect(str(journal), None, now_us=NOW_US)
    assert data["thresholds"]["late_factor"] == RulesConfig().silence_factor == 3.0
