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

from agent.tools import linkmargin, monitor
from agent.config import load_config
from agent.errors import AgentError
from agent.gateway.journal import Journal
from agent.gateway.reading import NodeState

NOW_US = 1_764_000_000_000_000


def test_snr_floor_and_sensitivity_follow_the_sf_table() -> None:
    assert linkmargin.SNR_FLOOR_DB == {7: -7.5, 8: -10.0, 9: -12.5, 10: -15.0, 11: -17.5, 12: -20.0}
    # -174 + 10 log10(125 kHz) + 6 dB NF + floor: the figures in the module docstring.
    assert linkmargin.sensitivity_dbm(7) == pytest.approx(-124.5, abs=0.05)
    assert linkmargin.sensitivity_dbm(10) == pytest.approx(-132.0, abs=0.05)
    assert linkmargin.sensitivity_dbm(12) == pytest.approx(-137.0, abs=0.05)
    # Doubling the bandwidth costs 3 dB of sensitivity.
    assert linkmargin.sensitivity_dbm(10, 250) - linkmargin.sensitivity_dbm(10, 125) == pytest.approx(3.01, abs=0.01)
    with pytest.raises(ValueError):
        linkmargin.sensitivity_dbm(6)


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
    m = linkmargin.link_margin(-60, snr, sf)
    assert m.snr_margin_db == pytest.approx(margin)
    assert m.margin_db == pytest.approx(margin)
    assert m.rating == rating
    assert not m.rssi_near_limit


def test_rssi_near_the_sensitivity_is_flagged_and_limits_the_margin() -> None:
    # SF10/125 kHz sensitivity -132 dBm: -128 dBm is 4 dB above it.
    m = linkmargin.link_margin(-128, 8.0, 10)
    assert m.rssi_margin_db == pytest.approx(4.0, abs=0.05)
    assert m.snr_margin_db == pytest.approx(23.0)
    assert m.margin_db == pytest.approx(4.0, abs=0.05) and m.rating == "marginal"
    assert m.rssi_near_limit
    assert not linkmargin.link_margin(-125, 8.0, 10).rssi_near_limit  # 7 dB above
    # No SNR (ES920LR): RSSI alone.
    es = linkmargin.link_margin(-110, None, 10)
    assert es.snr_margin_db is None and es.margin_db == pytest.approx(22.0, abs=0.05) and es.rating == "excellent"
    assert linkmargin.link_margin(None, None, 10).rating == "unknown"


def _head(gateway_id: str, journal: Path) -> str:
    """The start of a test config: the gateway, the journal, and radios: with the RAK3172 lora0 first."""
    return f"""
gateway: {{id: {gateway_id}, site: testville}}
journal: {{path: {journal}}}
radios:
  - name: lora0
    driver: rak3172
    port: loop://
"""


def _config(tmp: Path, journal: Path) -> Path:
    cfg = tmp / "gw.yaml"
    cfg.write_text(_head("gw-mon-01", journal) + """\
    p2p: {spreading_factor: 12}
  - name: es0
    driver: es920lr
    port: loop://
    es920: {spreading_factor: 7, bandwidth_khz: 125}
nodes:
  - {id: "00000101", name: sos-hiker-1, kind: sos, unauthenticated: flag, interval_s: 3600}
  - {id: "00000201", name: trap-1, kind: trap, unauthenticated: flag, interval_s: 600}
  - {id: "00000301", name: river-1, kind: water_level, unauthenticated: flag, interval_s: 600, radio: es0}
  - {id: "00000401", name: rain-1, kind: rain, unauthenticated: flag, interval_s: 600}
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


def _render(data: dict, width: int, *, wide: bool = False) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(monitor.render(data, wide=wide))
    return console.export_text()


def test_table_view(tmp_path: Path) -> None:
    journal = tmp_path / "journal.db"
    _journal(journal)
    data = monitor.collect(str(journal), load_config(_config(tmp_path, journal)), now_us=NOW_US)
    text = _render(data, 160, wide=True)
    _lines_fit(text, 160)
    assert "sos-hiker-1" in text and "good" in text and "poor!" in text and "LATE" in text
    assert "never" in text and "30s" in text and "30m LATE" in text
    caption = " ".join(text.split())  # the caption wraps at the table's width
    assert "excellent >= 10 dB" in caption and "! = RSSI within 6 dB of the sensitivity" in caption
    # The last frame's columns: RSSI/SNR, SF, both margins; the gateway's time of the last frame; ok/bad.
    heard = time.strftime("%H:%M:%S", time.localtime((NOW_US - 30_000_000) / 1e6))
    sos = next(line for line in text.splitlines() if line.startswith("00000101"))
    assert heard in sos and "-118/-14.0" in sos and " 12 " in sos and "6.0/19.0" in sos and "40/2" in sos
    assert "3.71" in sos
    narrow = _render(data, 80)
    _lines_fit(narrow, 80)
    assert "30s" in narrow and "30m LATE" in narrow and "good 5.5!" in narrow  # river-1: near the limit
    assert "6.0/19.0" not in narrow and "--wide" in narrow


def _lines_fit(text: str, width: int) -> None:
    from rich.cells import cell_len

    wide = [line for line in text.splitlines() if cell_len(line) > width]
    assert not wide, wide


# Config node names are a-z0-9_-; a journal (a card's copy, an older agent, another tool) may hold any name, and the
# gateway's display name is free text: both are shown, and must not break the layout.
JP_NAMES = {
    "00000101": "北の沢トラップ３号（杉林の奥）",   # 15 wide characters: 30 cells
    "00000201": "水位計・上流",                     # 12 cells
    "00000301": "rain-1",
}


def _jp_journal(path: Path) -> None:
    j = Journal(path, quota_bytes=1 << 20)
    j.commit(nodes=[
        NodeState(node, name, 3, NOW_US - 40_000_000, "lora0", -121.5, -13.25, 3.3, 12, 1)
        for node, name in JP_NAMES.items()
    ] + [NodeState("0000ffff", None, 1, NOW_US - 1_000_000, "lora0", -80.0, 9.5, None, 1, 0)])
    j.close()


def test_80_columns_with_japanese_names_keeps_ids_whole_and_cuts_names_with_an_ellipsis(tmp_path: Path) -> None:
    from rich.cells import cell_len

    journal = tmp_path / "journal.db"
    _jp_journal(journal)
    data = monitor.collect(str(journal), None, now_us=NOW_US)
    text = _render(data, 80)
    _lines_fit(text, 80)
    rows = [line.strip() for line in text.splitlines() if line.strip().startswith("0000")]
    assert [r.split()[0] for r in rows] == [*JP_NAMES, "0000ffff"]  # every id whole, in order
    long_row = rows[0]
    # The long name is cut to NAME_CELLS cells ending in an ellipsis, never through a character.
    shown = long_row.split()[1]
    assert shown.endswith("…") and "北の沢トラップ３号（杉林の奥）".startswith(shown[:-1])
    assert cell_len(shown) <= monitor.NAME_CELLS and len(shown) >= 6
    assert "水位計・上流" in rows[1]  # 12 cells: whole
    # The history columns fit at 80: min/median RSSI and SNR, frames in 5/15 min, worst link (SF10 default:
    # SNR -13.25 is 1.75 dB above the -15 dB floor).
    assert "-122/-122" in long_row and "-13/-13" in long_row and "1/1" in long_row and "marginal 1.8" in long_row
    _lines_fit(_render(data, 100), 100)
    wide = _render(data, 160, wide=True)
    _lines_fit(wide, 160)
    wide_name = next(line for line in wide.splitlines() if line.startswith("00000101")).split()[1]
    assert wide_name.endswith("…") and cell_len(wide_name) <= monitor.NAME_CELLS_WIDE
    assert len(wide_name) > len(shown)


def test_the_gateway_display_name_is_in_the_title(tmp_path: Path) -> None:
    journal = tmp_path / "journal.db"
    _journal(journal)
    cfg = _config(tmp_path, journal)
    cfg.write_text(cfg.read_text().replace("gateway: {id: gw-mon-01, site: testville}",
                                           "gateway: {id: gw-mon-01, site: testville, name: 奥多摩 林道ゲートウェイ}"),
                   encoding="utf-8")
    data = monitor.collect(str(journal), load_config(cfg), now_us=NOW_US)
    assert data["gateway_name"] == "奥多摩 林道ゲートウェイ"
    text = _render(data, 80)
    _lines_fit(text, 80)
    assert "gw-mon-01" in text and "奥多摩" in text


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
    proc = subprocess.run([sys.executable, "-m", "agent.tools.monitor", "-j", str(tmp_path / "none.db"), "--once"],
                          cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "no journal at" in proc.stderr and "Traceback" not in proc.stderr


def _silence_config(tmp: Path, journal: Path, rules: str) -> Path:
    cfg = tmp / "silence.yaml"
    cfg.write_text(_head("gw-mon-02", journal) + f"""\
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
    for wide in (False, True):
        console = Console(record=True, width=160 if wide else 80, file=io.StringIO())
        console.print(monitor.render(monitor.collect(str(journal), config, now_us=sos_late_us), wide=wide))
        text = " ".join(console.export_text().split())  # the caption wraps at the table's width
        assert f"LATE = silent >= {factor:g} x interval (rules.silence_factor)" in text
        assert "node_silent alert" in text and "does not count time the agent was stopped" in text
        assert "LATE* = no alert for this kind" in text
        assert ("LATE* " in text.split("history:")[0]) == (not sos["silence_alert"])


def test_the_help_explains_late(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    monitor.add_arguments(parser)
    text = parser.format_help()
    assert "rules.silence_factor" in text and "node_silent" in text and "LATE* (LATE, no alert)" in text


def test_the_help_has_examples_laid_out_by_hand() -> None:
    parser = argparse.ArgumentParser(prog="denen monitor")
    monitor.add_arguments(parser)
    text = parser.format_help()
    assert "\nExamples:\n  denen monitor  " in text
    assert "\n  denen monitor --wide  " in text and "\n  denen monitor --once --json  " in text
    assert "--wide" in text.split("Examples:")[0]  # the option itself


def test_importing_the_module_stays_light() -> None:
    # `denen --help` imports agent.tools.monitor to build its parser: no rich, no pydantic models, no sqlite.
    root = Path(__file__).resolve().parents[2]
    code = ("import sys, agent.tools.monitor; heavy = [m for m in ('rich', 'agent.config', 'pydantic', 'sqlite3', "
            "'agent.tools.status') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def _frames(node: str, frames: list[tuple[int, float, float, int]]) -> list[tuple[int, NodeState]]:
    """(seconds before NOW, rssi, snr, frames since the previous one) -> node rows as the agent writes them."""
    rows, ok = [], 0
    for ago_s, rssi, snr, count in frames:
        ok += count
        rows.append((NOW_US - ago_s * 1_000_000,
                     NodeState(node, "sos-hiker-1", ok, NOW_US - ago_s * 1_000_000, "lora0", rssi, snr, 3.7, ok, 0)))
    return rows


def test_history_min_median_and_frame_counts_from_known_frames(tmp_path: Path) -> None:
    journal = tmp_path / "journal.db"
    config = load_config(_config(tmp_path, journal))  # lora0 at SF12: SNR floor -20 dB, sensitivity -137 dBm
    j = Journal(journal, quota_bytes=1 << 20)
    history = monitor.History()
    # The monitor refreshes after each journal write. At -4 min, three frames arrived within one refresh: counted
    # as three, with the last one's RSSI and SNR.
    known = [(20 * 60, -100.0, 5.0, 1),      # 20 min ago: out of the 15 min window by the end
             (14 * 60, -110.0, -3.0, 1),
             (10 * 60, -120.0, -12.0, 1),    # the worst RSSI and SNR
             (4 * 60, -105.0, 2.0, 3),
             (60, -108.0, 0.0, 1)]
    try:
        for at_us, state in _frames("00000101", known):
            j.commit(nodes=[state])
            monitor.collect(str(journal), config, now_us=at_us + 500_000, history=history)
            # A refresh with nothing new counts nothing.
            monitor.collect(str(journal), config, now_us=at_us + 2_500_000, history=history)
    finally:
        j.close()
    data = monitor.collect(str(journal), config, now_us=NOW_US, history=history)
    h = {r["node"]: r for r in data["nodes"]}["00000101"]["history"]
    assert h["samples"] == 4
    assert (h["rssi_min_dbm"], h["rssi_median_dbm"]) == (-120.0, -109.0)   # of -110, -120, -105, -108
    assert (h["snr_min_db"], h["snr_median_db"]) == (-12.0, -1.5)          # of -3, -12, 2, 0
    assert (h["frames_5min"], h["frames_15min"]) == (4, 6)
    # Worst case from the lowest SNR (-12 at SF12: 8 dB) and RSSI (-120: 17 dB): good, while the last frame
    # alone (SNR 0: 20 dB) says excellent.
    assert h["link_margin_min_db"] == pytest.approx(8.0) and h["rating_worst"] == "good"
    assert {r["node"]: r for r in data["nodes"]}["00000101"]["rating"] == "excellent"
    assert data["history_s"] == 900 and data["history_since_us"] == NOW_US - 20 * 60 * 1_000_000 + 500_000
    # Nodes without frames in the window have no statistics.
    rain = {r["node"]: r for r in data["nodes"]}["00000401"]["history"]
    assert rain["samples"] == 0 and rain["rssi_min_dbm"] is None and rain["rating_worst"] == "unknown"
    narrow = _render(data, 80)
    row = next(line for line in narrow.splitlines() if line.startswith("00000101"))
    assert "-120/-109" in row and "-12/-2" in row and "4/6" in row and "good 8.0" in row
    assert "history: the last 15 min" in narrow


def test_history_is_bounded() -> None:
    h = monitor.History(max_frames=8, max_nodes=3)
    for i in range(100):
        h.observe([{"node": f"{n:08x}", "last_seen_us": NOW_US + i, "frames_ok": i, "rssi": -90.0 - i, "snr": 1.0}
                   for n in range(10)], NOW_US + i)
    assert len(h._last) == 3 and len(h._frames) == 3
    assert all(len(f) == 8 for f in h._frames.values())
    assert h.stats("00000009", NOW_US + 100)["samples"] == 0
    assert h.stats("00000000", NOW_US + 100)["rssi_min_dbm"] == -189.0  # the newest eight: -182 .. -189


def test_without_a_config_late_uses_the_rules_default(tmp_path: Path) -> None:
    from agent.rules import RulesConfig

    journal = tmp_path / "journal.db"
    _journal(journal)
    data = monitor.collect(str(journal), None, now_us=NOW_US)
    assert data["thresholds"]["late_factor"] == RulesConfig().silence_factor == 3.0
