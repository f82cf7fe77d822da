"""Tests of agent.config: the example configs, and that each kind of mistake is reported at the right place.

Broken configs are made from copies of the real examples with one edit, and the expected line is found by
searching the edited text, so the tests keep working when the examples' comments change.

The examples name their node keys by environment variable (key_env:); every test here runs with the public
example keys of config/example-keys.env set, as a gateway's systemd unit sets its own. Who may read secrets is
tested in test_secrets.py.
"""

from __future__ import annotations

import json
import os
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms
from pydantic import ValidationError

from agent.config import (
    Config,
    config_json_schema,
    config_reference,
    driver_names,
    load_config,
    parse_config,
    write_json_schema,
)
from agent.dev.demo import EXAMPLE_KEYS, read_env_file
from agent.errors import AgentError, ConfigError, ConfigIssue
from tests.support.gateway_config import MINIMAL_YAML as MINIMAL

REPO = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO / "config"
EXAMPLES = ["forest-sos.yaml", "trap-field.yaml", "river-station.yaml", "river-modbus.yaml", "hiker-meshtastic.yaml",
            "demo.yaml"]


@pytest.fixture(autouse=True)
def example_keys(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The examples' key_env variables, set for every test (and restored after)."""
    keys = read_env_file(EXAMPLE_KEYS)
    for name, value in keys.items():
        monkeypatch.setenv(name, value)
    return keys


def edited(tmp_path: Path, example: str, old: str, new: str, *, count: int = 1) -> Path:
    """Copy an example into tmp_path with ``old`` replaced by ``new`` (``old`` must occur ``count`` times)."""
    text = (CONFIG_DIR / example).read_text(encoding="utf-8")
    assert text.count(old) == count, f"{old!r} occurs {text.count(old)} times in {example}"
    path = tmp_path / example
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def line_of(path: Path, needle: str, *, occurrence: int = 1) -> int:
    """1-based number of the line holding the n-th occurrence of ``needle``."""
    hits = [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line]
    assert len(hits) >= occurrence, f"{needle!r} found on lines {hits}"
    return hits[occurrence - 1]


def problems(path: Path) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.issues, "a ConfigError must carry at least one issue"
    return list(info.value.issues)


def only(issues: list[ConfigIssue], key: str) -> ConfigIssue:
    matching = [i for i in issues if i.key == key]
    assert len(matching) == 1, f"expected one issue for {key}, got: {[str(i) for i in issues]}"
    return matching[0]


# ---------------------------------------------------------------------------------------------------------------
# The examples


def test_all_examples_present() -> None:
    assert sorted(p.name for p in CONFIG_DIR.glob("*.yaml")) == sorted(EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_loads_cleanly(example: str) -> None:
    cfg = load_config(CONFIG_DIR / example)
    assert cfg.radios and cfg.nodes
    assert cfg.warnings == ()
    assert set(cfg.node_by_id) == {int(n.id, 16) for n in cfg.nodes}
    for radio in cfg.radios:
        # The driver's own settings section is always filled in, the other one never.
        assert (radio.p2p is not None) == (radio.driver == "rak3172")
        assert (radio.es920 is not None) == (radio.driver == "es920lr")
    for node in cfg.nodes:
        key = node.key_bytes()
        assert key is None or len(key) == 16
        assert key is not None or node.unauthenticated == "flag"


def test_demo_matches_the_demo_scenario() -> None:
    cfg = load_config(CONFIG_DIR / "demo.yaml")
    assert [r.port for r in cfg.radios] == ["/tmp/denen-sim/lora0", "/tmp/denen-sim/lora1"]
    assert cfg.journal.path == "/tmp/denen-demo/journal.db"
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("127.0.0.1", 1883)
    expected = {
        0x101: "sos", 0x201: "trap", 0x202: "trap", 0x301: "water_level", 0x401: "rain", 0x501: "tilt",
        0x601: "weather",
    }
    assert {nid: n.kind for nid, n in cfg.node_by_id.items()} == expected
    for nid, node in cfg.node_by_id.items():
        assert node.key_bytes() == bytes.fromhex(f"{nid:08x}" * 4)
        assert node.unauthenticated == "reject"
    # The simulated nodes sign with the keys the agent gets from config/example-keys.env.
    from ruamel.yaml import YAML

    scenario = YAML(typ="safe").load((CONFIG_DIR / "scenarios" / "demo.yaml").read_text(encoding="utf-8"))
    assert {int(n["id"], 16): bytes.fromhex(n["key"]) for n in scenario["nodes"]} == {
        nid: n.key_bytes() for nid, n in cfg.node_by_id.items()}
    assert {n.kind for n in cfg.nodes} | {"heartbeat"} >= {"sos", "trap", "water_level", "rain", "tilt", "weather"}


def test_field_examples_fit_their_use() -> None:
    forest = load_config(CONFIG_DIR / "forest-sos.yaml")
    assert [(r.driver, r.port) for r in forest.radios] == [("rak3172", "/dev/lora0")]
    assert [n for n in forest.nodes if n.kind == "sos"] and all(n.key_bytes() is not None for n in forest.nodes)
    # Best practice shown: no example holds a key itself.
    assert all(n.key is None and n.key_env is not None for n in forest.nodes)

    traps = load_config(CONFIG_DIR / "trap-field.yaml")
    trap_nodes = [n for n in traps.nodes if n.kind == "trap"]
    assert len(trap_nodes) >= 8 and all(n.interval_s == 86400 for n in trap_nodes)

    river = load_config(CONFIG_DIR / "river-station.yaml")
    assert [r.driver for r in river.radios] == ["es920lr"]
    assert {"water_level", "rain", "tilt"} <= {n.kind for n in river.nodes}


def test_river_station_alerts_at_each_mlit_stage_of_its_gauge() -> None:
    """The river example is one that alerts: its gauge has the four MLIT levels, and each raises its stage."""
    from agent.rules import STAGE_NAMES, RuleEngine, node_infos

    path = CONFIG_DIR / "river-station.yaml"
    river = load_config(path)
    gauges = [n for n in river.nodes if n.kind == "water_level"]
    assert gauges and {r.node for r in river.rules.rivers} == {n.id for n in gauges}
    text = path.read_text(encoding="utf-8")
    [rule] = river.rules.rivers
    for key, name in (("standby", "水防団待機水位"), ("caution", "はん濫注意水位"), ("evacuation", "避難判断水位"),
                      ("danger", "はん濫危険水位")):
        # Each level is written with its MLIT name beside it.
        line = text.split(f"{key}: {getattr(rule.stages_cm, key):g}", 1)[1].splitlines()[0]
        assert name in line
    assert [STAGE_NAMES[k][1] for k in (1, 2, 3, 4)] == ["水防団待機水位", "はん濫注意水位", "避難判断水位", "はん濫危険水位"]
    # Readings of a rising river through the rule engine built from this file: each line raises its stage once.
    gauge = gauges[0]
    engine = RuleEngine(river.rules, node_infos(river.nodes), start_us=1_764_000_000_000_000)
    raised = []
    for i, level in enumerate((100.0, *(v + 1 for v in rule.stages_cm.as_tuple()))):
        reading = {"node": gauge.id, "name": gauge.name, "kind": "water_level", "fcnt": i + 1,
                   "ts_us": 1_764_000_000_000_000 + (i + 1) * 600_000_000, "values": {"level_cm": level}}
        raised += [(a.type, a.level, a.severity) for a in engine.on_reading(reading) if a.type == "river_stage"]
    assert raised == [("river_stage", 1, "info"), ("river_stage", 2, "warning"), ("river_stage", 3, "emergency"),
                      ("river_stage", 4, "emergency")]
    assert engine.siren_wanted()  # 避難判断水位 and above sound the siren (rules.siren)


def test_a_water_level_node_without_a_stage_rule_is_warned_about(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    text = (CONFIG_DIR / "river-station.yaml").read_text(encoding="utf-8")
    start, end = text.index("  rivers:\n"), text.index("  # Slope tilt")
    path = tmp_path / "river-station.yaml"
    path.write_text(text[:start] + text[end:], encoding="utf-8")
    cfg = load_config(path)
    [warning] = cfg.warnings
    assert warning.key == "nodes[0].kind" and warning.line == line_of(path, "kind: water_level")
    assert warning.message.startswith("water_level node 3c000001 (river-kiso-bridge) has no river stage rule")
    assert warning.hint is not None and "rules.rivers" in warning.hint
    for name in ("水防団待機水位", "はん濫注意水位", "避難判断水位", "はん濫危険水位"):
        assert name in warning.hint
    assert f"{path}:{warning.line}:" in str(warning) and "(hint: add it under rules.rivers" in str(warning)
    assert "config warning" in caplog.text
    # A rule for another node does not count; one for this node, in any spelling of its id, does.
    other = tmp_path / "other.yaml"
    other.write_text(text.replace('- node: "3c000001"', '- node: "3c000009"'), encoding="utf-8")
    assert [w.key for w in load_config(other).warnings] == ["nodes[0].kind"]
    upper = tmp_path / "upper.yaml"
    upper.write_text(text.replace('- node: "3c000001"', "- node: 0x3C000001"), encoding="utf-8")
    assert load_config(upper).warnings == ()


def test_config_validate_prints_the_stage_warning_and_succeeds(tmp_path: Path) -> None:
    import subprocess
    import sys

    text = (CONFIG_DIR / "river-station.yaml").read_text(encoding="utf-8")
    path = tmp_path / "river.yaml"
    path.write_text(text[:text.index("rules:\n")] + text[text.index("health:\n"):], encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "config", "validate", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    line = line_of(path, "kind: water_level")
    assert f"{path}:{line}:5: nodes[0].kind: water_level node 3c000001 (river-kiso-bridge) has no river stage " \
           "rule" in proc.stderr
    assert proc.stdout.startswith(f"{path}: ok")


def test_interval_s_and_the_reference_say_when_a_node_is_silent_and_late() -> None:
    from agent.config import NodeConfig

    description = NodeConfig.model_fields["interval_s"].description or ""
    assert "rules.silence_factor x interval_s" in description and "LATE at the same threshold" in description
    text = " ".join(config_reference().split())
    assert "`denen monitor` marks it **LATE** at the same threshold" in text
    assert "the alert does not count time the agent was stopped" in text and "`LATE*` (late, no alert)" in text
    assert "warns, at the node's `kind:` line, about a `water_level` node without one" in text


def test_trap_field_carries_the_protocol_worked_example_key() -> None:
    # docs/protocols.md §9: this frame's MIC under this node's key is F0CE538F. Proves the key survives loading intact.
    node = load_config(CONFIG_DIR / "trap-field.yaml").node_by_id[0x00A1B2C3]
    key = node.key_bytes()
    assert key is not None
    mac = cmac.CMAC(algorithms.AES(key))
    mac.update(bytes.fromhex("1100A1B2C30000002A020100010374014A"))
    assert mac.finalize()[:4] == bytes.fromhex("F0CE538F")


# ---------------------------------------------------------------------------------------------------------------
# File-level problems


def test_yaml_syntax_error_points_at_the_line(tmp_path: Path) -> None:
    path = edited(tmp_path, "forest-sos.yaml", "  site: okutama\n", "  site: okutama: north\n")
    [issue] = problems(path)
    assert issue.file == str(path)
    assert issue.line == line_of(path, "site: okutama: north")
    assert issue.column == len("  site: okutama") + 1
    assert "YAML syntax error" in issue.message and "mapping values" in issue.message
    assert issue.hint and "quotes" in issue.hint


def test_tab_indentation_reports_every_tab_line(tmp_path: Path) -> None:
    path = edited(tmp_path, "forest-sos.yaml", "  site: okutama\n", "\tsite: okutama\n")
    text = path.read_text(encoding="utf-8").replace("  port: 8883\n", "  \tport: 8883\n")
    path.write_text(text, encoding="utf-8")
    issues = problems(path)
    assert [(i.line, i.column) for i in issues] == [
        (line_of(path, "\tsite: okutama"), 1),
        (line_of(path, "\tport: 8883"), 3),
    ]
    assert all("tab" in i.message and i.hint and "spaces" in i.hint for i in issues)


def test_tab_after_a_colon_is_reported_by_the_parser(tmp_path: Path) -> None:
    path = edited(tmp_path, "forest-sos.yaml", "  site: okutama\n", "  site:\tokutama\n")
    [issue] = problems(path)
    assert issue.line == line_of(path, "site:\tokutama")
    assert issue.hint and "spaces" in issue.hint


def test_duplicate_key(tmp_path: Path) -> None:
    path = edited(tmp_path, "forest-sos.yaml", "  port: 8883\n", "  port: 8883\n  keepalive_s: 20\n")
    issue = only(problems(path), "mqtt.keepalive_s")
    assert issue.line == line_of(path, "keepalive_s:", occurrence=2)
    assert issue.column == 3
    assert "duplicate key 'keepalive_s'" in issue.message
    assert f"line {line_of(path, 'keepalive_s: 20')}" in issue.message


def test_duplicate_key_in_a_list_item(tmp_path: Path) -> None:
    path = edited(tmp_path, "demo.yaml", "    name: trap-demo-2\n", "    name: trap-demo-2\n    kind: sos\n")
    issue = only(problems(path), "nodes[2].kind")
    # The second occurrence is the one reported; the message names the first.
    assert issue.line == line_of(path, "kind: trap", occurrence=2)
    assert f"first on line {line_of(path, 'kind: sos', occurrence=2)}" in issue.message


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n\n", encoding="utf-8")
    [issue] = problems(path)
    assert (issue.line, issue.column) == (1, 1) and "empty" in issue.message


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("# a list by mistake\n- gateway: x\n", encoding="utf-8")
    [issue] = problems(path)
    assert issue.line == 2 and "must be a mapping" in issue.message and "a list" in issue.message


def test_missing_file(tmp_path: Path) -> None:
    [issue] = problems(tmp_path / "nope.yaml")
    assert issue.file.endswith("nope.yaml") and "not found" in issue.message


# ---------------------------------------------------------------------------------------------------------------
# Keys and values


def test_unknown_top_level_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = edited(tmp_path, "forest-sos.yaml", "\nhealth:\n", "\nhelth:\n")
    issue = only(problems(path), "helth")
    assert (issue.line, issue.column) == (line_of(path, "helth:"), 1)
    assert issue.message == "unknown key 'helth'"
    assert issue.hint is not None and issue.hint.startswith("did you mean 'health'?")
    for key in Config.model_fields:
        assert key in issue.hint


def test_unknown_nested_key(tmp_path: Path) -> None:
    path = edited(tmp_path, "forest-sos.yaml", "      spreading_factor: 10\n", "      spreading_factr: 10\n")
    issue = only(problems(path), "radios[0].p2p.spreading_factr")
    assert (issue.line, issue.column) == (line_of(path, "spreading_factr"), 7)
    assert issue.hint and "did you mean 'spreading_factor'?" in issue.hint


def test_unknown_driver_lists_the_valid_names(tmp_path: Path) -> None:
    path = edited(tmp_path, "forest-sos.yaml", "driver: rak3172", "driver: rak3127")
    issue = only(problems(path), "radios[0].driver")
    assert issue.line == line_of(path, "driver: rak3127")
    assert "unknown radio driver 'rak3127'" in issue.message
    names = driver_names()
    assert "rak3172" in names
    assert issue.hint and all(name in issue.hint for name in names)
    assert "did you mean 'rak3172'" in issue.hint


@pytest.mark.parametrize(
    ("example", "old", "new", "key", "at", "message", "hint"),
    [
        pytest.param("forest-sos.yaml", 'id: "5e000002"', 'id: "5e00000g"', "nodes[1].id", ("5e00000g", 1),
                     ("8 hex digits", "not hex"), ("quotes",), id="bad hex node id"),
        pytest.param("forest-sos.yaml", 'id: "5e000003"', 'id: "5E000001"', "nodes[2].id", ('id: "5E000001"', 1),
                     ("5e000001", "twice", "nodes[0]"), (), id="duplicate node id"),
        pytest.param("river-station.yaml", '    radio: es0\n  - id: "3c000101"', '    radio: es1\n  - id: "3c000101"',
                     "nodes[0].radio", ("radio: es1", 1), ("'es1' is not defined",), ("did you mean 'es0'",),
                     id="node radio pointing nowhere"),
        pytest.param("river-station.yaml", "    es920:\n", "    p2p:\n      spreading_factor: 10\n    es920:\n",
                     "radios[0].p2p", ("    p2p:", 1), ("only for driver rak3172", "es920lr"), ("remove 'p2p:'",),
                     id="p2p section on an es920lr radio"),
        pytest.param("demo.yaml", "    key_env: DENEN_KEY_RAIN_DEMO_1\n", "", "nodes[4].unauthenticated",
                     ("unauthenticated: reject", 5), ("rain-demo-1", "never be heard"),
                     ("unauthenticated: flag", "key"), id="no key with reject could never be heard"),
    ],
)
def test_one_edit_one_problem(tmp_path: Path, example: str, old: str, new: str, key: str, at: tuple[str, int],
                              message: tuple[str, ...], hint: tuple[str, ...]) -> None:
    """One edit of an example makes exactly one problem at ``key``, on the line of the ``at`` text (its nth
    occurrence), whose message and hint say the given parts."""
    path = edited(tmp_path, example, old, new)
    issue = only(problems(path), key)
    assert issue.line == line_of(path, at[0], occurrence=at[1])
    assert all(part in issue.message for part in message), issue.message
    assert all(part in (issue.hint or "") for part in hint), issue.hint


def test_key_of_wrong_length_does_not_reveal_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DENEN_KEY_SOS_FORESTER_02", "5e0000025e0000025e0000025e0000")
    path = tmp_path / "forest-sos.yaml"
    path.write_text((CONFIG_DIR / "forest-sos.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    issue = only(problems(path), "nodes[1].key_env")
    assert issue.line == line_of(path, "key_env: DENEN_KEY_SOS_FORESTER_02")
    assert "32 hex digits" in issue.message and "30" in issue.message and "DENEN_KEY_SOS_FORESTER_02" in issue.message
    assert "5e000002" not in str(issue)
    # The same for a key written inline (in a file only its owner can read).
    path = edited(tmp_path, "forest-sos.yaml", "key_env: DENEN_KEY_SOS_FORESTER_01",
                  'key: "5e0000015e0000015e0000015e0000"')
    path.chmod(0o600)
    issue = only(problems(path), "nodes[0].key")
    assert issue.line == line_of(path, "5e0000015e0000015e0000015e0000")
    assert "32 hex digits" in issue.message and "30" in issue.message
    assert "5e000001" not in str(issue)


def test_out_of_range_values_with_units(tmp_path: Path) -> None:
    path = edited(tmp_path, "forest-sos.yaml", "      spreading_factor: 10\n", "      spreading_factor: 13\n")
    text = path.read_text(encoding="utf-8")
    text = text.replace("frequency_hz: 920600000", "frequency_hz: 915000000").replace("port: 8883", "port: 70000")
    path.write_text(text, encoding="utf-8")
    issues = problems(path)

    sf = only(issues, "radios[0].p2p.spreading_factor")
    assert sf.line == line_of(path, "spreading_factor: 13")
    assert "13" in sf.message and "between 7 and 12" in sf.message

    freq = only(issues, "radios[0].p2p.frequency_hz")
    assert freq.line == line_of(path, "frequency_hz: 915000000")
    assert "MHz" in freq.message and freq.hint and "ARIB STD-T108" in freq.hint

    port = only(issues, "mqtt.port")
    assert port.line == line_of(path, "port: 70000")
    assert "between 1 and 65535" in port.message


def test_frequency_off_the_channel_grid_names_the_nearest_channel(tmp_path: Path) -> None:
    path = edited(tmp_path, "forest-sos.yaml", "frequency_hz: 920600000", "frequency_hz: 920650000")
    issue = only(problems(path), "radios[0].p2p.frequency_hz")
    assert "200 kHz" in issue.message and "920600000" in issue.message


def test_range_message_states_the_unit(tmp_path: Path) -> None:
    path = edited(tmp_path, "forest-sos.yaml", "  keepalive_s: 30\n", "  keepalive_s: 2\n")
    issue = only(problems(path), "mqtt.keepalive_s")
    assert issue.message == "2 s is out of range: keepalive_s must be between 5 and 3600 s"


def test_duplicate_node_and_radio_names(tmp_path: Path) -> None:
    path = edited(tmp_path, "demo.yaml", "name: trap-demo-2", "name: trap-demo-1")
    path.write_text(path.read_text(encoding="utf-8").replace("name: lora1", "name: lora0"), encoding="utf-8")
    issues = problems(path)
    assert only(issues, "nodes[2].name").line == line_of(path, "name: trap-demo-1", occurrence=2)
    assert only(issues, "radios[1].name").line == line_of(path, "name: lora0", occurrence=2)


def test_wrong_section_is_reported_even_when_the_radio_has_other_errors(tmp_path: Path) -> None:
    path = edited(tmp_path, "river-station.yaml", "    es920:\n", "    p2p: {}\n    es920:\n")
    path.write_text(path.read_text(encoding="utf-8").replace("channel: 5", "channel: 99"), encoding="utf-8")
    issues = problems(path)
    assert only(issues, "radios[0].p2p")
    assert only(issues, "radios[0].es920.channel")


def test_no_key_with_default_reject_points_at_the_node(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL.replace("    unauthenticated: flag\n", ""), encoding="utf-8")
    issue = only(problems(path), "nodes[0].unauthenticated")
    assert issue.line == line_of(path, 'id: "00000001"')  # the key is absent, so the node item itself


def test_es920_channel_must_fit_the_bandwidth(tmp_path: Path) -> None:
    path = edited(tmp_path, "river-station.yaml", "      bandwidth_khz: 125\n", "      bandwidth_khz: 500\n")
    assert load_config(path).radios[0].es920.channel == 5  # type: ignore[union-attr]  # the last one at 500 kHz
    path.write_text(path.read_text(encoding="utf-8").replace("channel: 5", "channel: 6"), encoding="utf-8")
    issue = only(problems(path), "radios[0].es920.channel")
    assert issue.line == line_of(path, "      channel: 6")
    assert "500 kHz" in issue.message and "1..5" in issue.message


def test_reconnect_bounds(tmp_path: Path) -> None:
    path = edited(tmp_path, "forest-sos.yaml", "  reconnect_max_s: 60.0\n", "  reconnect_max_s: 0.5\n")
    issue = only(problems(path), "mqtt.reconnect_max_s")
    assert issue.line == line_of(path, "reconnect_max_s: 0.5")
    assert "0.5 s" in issue.message and "1 s" in issue.message


def test_missing_required_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL.replace("  site: test\n", "").replace("    driver: rak3172\n", ""), encoding="utf-8")
    issues = problems(path)
    site = only(issues, "gateway.site")
    assert site.line == line_of(path, "gateway:") and "required key 'site' is missing" in site.message
    assert only(issues, "radios[0].driver").line == line_of(path, "- name: lora0")


def test_all_problems_are_reported_at_once_in_line_order(tmp_path: Path) -> None:
    path = edited(tmp_path, "demo.yaml", "  id: gw-demo-01\n", "  id: gw/demo\n")
    text = path.read_text(encoding="utf-8")
    for old, new in [
        ("  port: 1883\n", "  port: 0\n"),
        ("driver: es920lr", "driver: es920"),
        ('id: "00000202"', 'id: "00000201"'),
        ('id: "00000601"', 'id: "0000060"'),
        ("unknown_nodes: quarantine", "unknown_nodes: drop"),
        ("  level: info", "  level: loud"),
    ]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")
    issues = problems(path)
    assert [i.key for i in issues] == [
        "gateway.id", "mqtt.port", "radios[1].driver", "nodes[2].id", "nodes[6].id", "unknown_nodes", "log.level",
    ]
    assert [i.line for i in issues] == sorted(i.line for i in issues if i.line is not None)
    # The error text is one compiler-style line per issue.
    assert str(ConfigError(issues)).splitlines() == [str(i) for i in issues]


def test_unquoted_digit_ids_and_keys_keep_their_hex_digits() -> None:
    text = MINIMAL.replace('id: "00000001"', "id: 00000101").replace(
        "    unauthenticated: flag\n", "    key: 00000101000001010000010100000101\n"
    )
    node = parse_config(text).nodes[0]
    assert node.id == "00000101" and node.node_id == 0x101
    assert node.key_bytes() == bytes.fromhex("00000101" * 4)


def test_node_id_as_yaml_hex_number_and_lowercase_normalisation() -> None:
    cfg = parse_config(MINIMAL.replace('id: "00000001"', "id: 0x00A1B2C3"))
    assert cfg.nodes[0].id == "00a1b2c3" and set(cfg.node_by_id) == {0x00A1B2C3}
    assert parse_config(MINIMAL.replace('id: "00000001"', 'id: "00A1B2C3"')).nodes[0].id == "00a1b2c3"


def test_node_id_read_as_a_float_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL.replace('id: "00000001"', "id: 1E000001"))
    assert only(list(info.value.issues), "nodes[0].id").hint


def test_es920_ids_are_normalised() -> None:
    text = MINIMAL.replace("driver: rak3172", "driver: es920lr").replace(
        "    port: loop://\n", "    port: loop://\n    es920:\n      pan_id: 00a1\n      own_id: 0010\n"
    )
    es = parse_config(text).radios[0].es920
    assert es is not None and (es.pan_id, es.own_id) == ("00A1", "0010")


# ---------------------------------------------------------------------------------------------------------------
# Files referred to by the config


def write_minimal_with(tmp_path: Path, node_extra: str, *, mqtt: str = "") -> Path:
    """MINIMAL with the node's last line replaced, in a file only its owner can read (it may hold secrets)."""
    path = tmp_path / "gw.yaml"
    text = MINIMAL.replace("    unauthenticated: flag\n", node_extra) + mqtt
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def write_secret(path: Path, text: str) -> Path:
    """A secret file as it should be: mode 600."""
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def test_key_file_relative_to_the_config_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "keys").mkdir()
    key_path = tmp_path / "keys" / "node-1.key"
    key_path.write_text("# node-1, made with openssl rand -hex 16\nA0A1A2A3A4A5A6A7A8A9AAABACADAEAF\n")
    key_path.chmod(0o600)
    path = write_minimal_with(tmp_path, "    key_file: keys/node-1.key\n")
    monkeypatch.chdir("/")  # the path must not depend on the current directory
    cfg = load_config(path)
    assert cfg.nodes[0].key_file == str(key_path)
    assert cfg.nodes[0].key_bytes() == bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
    assert cfg.warnings == ()


def test_missing_key_file_is_an_error_at_load_time(tmp_path: Path) -> None:
    path = write_minimal_with(tmp_path, "    key_file: keys/nope.key\n")
    issue = only(problems(path), "nodes[0].key_file")
    assert issue.line == line_of(path, "key_file:")
    assert "does not exist" in issue.message and str(tmp_path / "keys" / "nope.key") in issue.message
    assert issue.hint and "directory of the config file" in issue.hint


def test_bad_key_file_content_is_an_error_and_stays_secret(tmp_path: Path) -> None:
    secret = "c0ffee00c0ffee00c0ffee00c0ffee"  # 30 digits: one byte short
    write_secret(tmp_path / "short.key", secret + "\n")
    path = write_minimal_with(tmp_path, "    key_file: short.key\n")
    issue = only(problems(path), "nodes[0].key_file")
    assert "32 hex digits" in issue.message and secret not in str(issue)


def test_key_and_key_file_are_exclusive(tmp_path: Path) -> None:
    write_secret(tmp_path / "k.key", "a0" * 16)
    path = write_minimal_with(tmp_path, f'    key: "{"b1" * 16}"\n    key_file: k.key\n')
    issue = only(problems(path), "nodes[0].key_file")
    assert "give only one of key, key_file and key_env, not key and key_file" in issue.message


def test_key_bytes_reports_a_key_file_that_disappeared(tmp_path: Path) -> None:
    write_secret(tmp_path / "k.key", "a0" * 16)
    cfg = load_config(write_minimal_with(tmp_path, "    key_file: k.key\n"))
    (tmp_path / "k.key").unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        cfg.nodes[0].key_bytes()


def test_tls_files_must_exist(tmp_path: Path) -> None:
    mqtt = "mqtt:\n  port: 8883\n  tls:\n    ca_file: certs/ca.pem\n"
    path = write_minimal_with(tmp_path, "    unauthenticated: flag\n", mqtt=mqtt)
    issue = only(problems(path), "mqtt.tls.ca_file")
    assert issue.line == line_of(path, "ca_file:") and "does not exist" in issue.message
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    tls = load_config(path).mqtt.tls
    assert tls is not None and tls.ca_file == str(tmp_path / "certs" / "ca.pem")


def test_tls_client_certificate_needs_its_key(tmp_path: Path) -> None:
    (tmp_path / "gw.pem").write_text("cert")
    mqtt = "mqtt:\n  tls:\n    cert_file: gw.pem\n"
    issue = only(problems(write_minimal_with(tmp_path, "    unauthenticated: flag\n", mqtt=mqtt)), "mqtt.tls.cert_file")
    assert "key_file" in issue.message


def test_password_file_and_password_value(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret-pw\n")
    (tmp_path / "pw").chmod(0o600)
    mqtt = "mqtt:\n  username: gw-test\n  password_file: pw\n"
    cfg = load_config(write_minimal_with(tmp_path, "    unauthenticated: flag\n", mqtt=mqtt))
    assert cfg.mqtt.password_value() == "s3cret-pw"
    assert cfg.mqtt.effective_client_id("gw-test") == "denen-gw-test"


def test_password_rules(tmp_path: Path) -> None:
    write_secret(tmp_path / "pw", "x\n")
    mqtt = "mqtt:\n  password: \"hunter2-secret\"\n  password_file: pw\n"
    issues = problems(write_minimal_with(tmp_path, "    unauthenticated: flag\n", mqtt=mqtt))
    assert "give only one of" in only(issues, "mqtt.password_file").message
    assert "username" in only(issues, "mqtt.password").message
    assert all("hunter2" not in str(i) for i in issues)


def test_client_id_when_set() -> None:
    cfg = parse_config(MINIMAL + "mqtt:\n  client_id: my-gw\n")
    assert cfg.mqtt.effective_client_id("gw-test") == "my-gw"
    assert cfg.mqtt.password_value() is None


# ---------------------------------------------------------------------------------------------------------------
# Secrets


def test_secrets_absent_from_repr_and_str() -> None:
    node_key = "0123456789abcdef0123456789abcdef"
    text = MINIMAL.replace("    unauthenticated: flag\n", f'    key: "{node_key}"\n') + (
        'mqtt:\n  username: gw\n  password: "correct-horse-battery"\n'
    )
    cfg = parse_config(text)
    assert cfg.mqtt.password_value() == "correct-horse-battery"
    assert cfg.nodes[0].key_bytes() == bytes.fromhex(node_key)
    for obj in (cfg, cfg.mqtt, cfg.nodes[0], cfg.node_by_id):
        for rendered in (repr(obj), str(obj)):
            assert node_key not in rendered and node_key.upper() not in rendered
            assert "correct-horse-battery" not in rendered
    assert "correct-horse-battery" not in cfg.model_dump_json() and node_key not in cfg.model_dump_json()


def test_secrets_absent_from_errors_and_tracebacks() -> None:
    bad_key = "0123456789abcdef0123456789abcdeg"  # 32 characters, one not hex
    text = MINIMAL.replace("    unauthenticated: flag\n", f'    key: "{bad_key}"\n') + (
        'mqtt:\n  password: "correct-horse-battery"\n'  # no username: an error next to the secret
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    rendered = "".join(traceback.format_exception(info.value))
    assert "not hex digits" in rendered and "username" in rendered
    assert bad_key not in rendered and "correct-horse-battery" not in rendered
    # Python-side validation hides input values too.
    with pytest.raises(ValidationError) as direct:
        Config.model_validate({"gateway": {"id": "g", "site": "s"}, "radios": [{"name": "r", "driver": "rak3172",
                               "port": "loop://"}], "mqtt": {"password": 12345678901}})
    assert "12345678901" not in str(direct.value)


# ---------------------------------------------------------------------------------------------------------------
# API details


def test_config_error_is_an_agent_error_and_a_value_error() -> None:
    assert issubclass(ConfigError, AgentError) and issubclass(ConfigError, ValueError)


def test_issue_formatting() -> None:
    full = ConfigIssue("gw.yaml", 12, 5, "radios[0].driver", "unknown radio driver 'x'", "valid drivers: a, b")
    assert str(full) == "gw.yaml:12:5: radios[0].driver: unknown radio driver 'x' (hint: valid drivers: a, b)"
    bare = ConfigIssue("gw.yaml", None, None, "gateway", "required key 'gateway' is missing", None)
    assert str(bare) == "gw.yaml: gateway: required key 'gateway' is missing"
    whole_file = ConfigIssue("gw.yaml", 3, 1, "", "YAML syntax error: x", "y")
    assert str(whole_file) == "gw.yaml:3:1: YAML syntax error: x (hint: y)"


def test_parse_config_uses_source_in_messages() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("gateway: {id: g, site: s}\n", source="<stdin>")
    issue = only(list(info.value.issues), "radios")
    assert issue.file == "<stdin>" and issue.line is None


def test_python_built_config_runs_the_cross_checks() -> None:
    radio = {"name": "r", "driver": "rak3172", "port": "loop://"}
    with pytest.raises(ValidationError, match="used twice"):
        Config.model_validate({"gateway": {"id": "g", "site": "s"}, "radios": [radio, radio]})
    with pytest.raises(ValidationError, match="only for driver es920lr"):
        Config.model_validate({"gateway": {"id": "g", "site": "s"}, "radios": [{**radio, "es920": {}}]})


def test_config_is_read_only() -> None:
    cfg = parse_config(MINIMAL)
    with pytest.raises(ValidationError):
        cfg.mqtt.port = 1  # type: ignore[misc]


def test_ascii_raw_es920_is_a_warning() -> None:
    text = MINIMAL.replace("driver: rak3172", "driver: es920lr").replace(
        "    port: loop://\n", "    port: loop://\n    es920: {format: ascii, payload_encoding: raw}\n"
    )
    [warning] = parse_config(text).warnings
    assert warning.key == "radios[0].es920.payload_encoding" and warning.line == 8


# ---------------------------------------------------------------------------------------------------------------
# JSON Schema and the README


def schema_key_paths(schema: dict, node: dict | None = None, prefix: str = "") -> set[str]:
    """Every key path in the JSON Schema, e.g. ``radios[].p2p.frequency_hz`` (independent of the generator)."""
    defs = schema.get("$defs", {})

    def resolve(n: dict) -> tuple[dict, bool]:
        is_list = False
        while True:
            if "$ref" in n:
                n = defs[n["$ref"].rsplit("/", 1)[1]]
            elif "anyOf" in n and any("$ref" in a or a.get("type") == "array" for a in n["anyOf"]):
                n = next(a for a in n["anyOf"] if "$ref" in a or a.get("type") == "array")
            elif n.get("type") == "array" and "items" in n:
                n, is_list = n["items"], True
            else:
                return n, is_list

    paths: set[str] = set()
    current, _ = resolve(node if node is not None else schema)
    for key, sub in current.get("properties", {}).items():
        path = prefix + key
        paths.add(path)
        inner, is_list = resolve(sub)
        if "properties" in inner:
            paths |= schema_key_paths(schema, inner, path + ("[]." if is_list else "."))
    return paths


def test_json_schema_has_every_top_level_key_and_descriptions(tmp_path: Path) -> None:
    schema = config_json_schema()
    assert set(schema["properties"]) == set(Config.model_fields) == {
        "gateway", "journal", "mqtt", "radios", "nodes", "unknown_nodes", "unknown_nodes_max",
        "unknown_nodes_forget_after_s", "health", "rules", "gpio", "receipts", "log",
    }
    assert set(schema["required"]) == {"gateway", "radios"}
    assert schema["additionalProperties"] is False
    for model in schema["$defs"].values():
        assert model["additionalProperties"] is False
        for key, prop in model["properties"].items():
            assert prop.get("description"), f"{model['title']}.{key} has no description"
    assert "radios[].p2p.frequency_hz" in schema_key_paths(schema)
    assert schema["$defs"]["RadioConfig"]["properties"]["driver"]["enum"] == list(driver_names())

    out = tmp_path / "denen.schema.json"
    write_json_schema(out)
    assert json.loads(out.read_text(encoding="utf-8")) == schema


def test_readme_lists_every_key_and_is_up_to_date() -> None:
    readme = (CONFIG_DIR / "README.md").read_text(encoding="utf-8")
    missing = [p for p in sorted(schema_key_paths(config_json_schema())) if f"`{p}`" not in readme]
    assert not missing, f"config/README.md does not list: {missing}"
    assert readme == config_reference(), (
        "config/README.md is stale; regenerate it with: .venv/bin/python -c "
        "\"from agent.config import write_reference; write_reference('config/README.md')\""
    )


def test_every_example_key_is_documented_in_the_readme() -> None:
    # A cheap guard against examples drifting from the schema: every key the examples use is in the reference.
    readme = (CONFIG_DIR / "README.md").read_text(encoding="utf-8")
    for example in EXAMPLES:
        text = (CONFIG_DIR / example).read_text(encoding="utf-8")
        for line in text.splitlines():
            stripped = line.strip().lstrip("- ")
            if stripped and not stripped.startswith("#") and ":" in stripped and not stripped.startswith("{"):
                key = stripped.split(":", 1)[0]
                assert f".{key}`" in readme or f"`{key}`" in readme, f"{example}: key {key!r} not documented"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_key_file(tmp_path: Path) -> None:
    (tmp_path / "locked.key").write_text("a0" * 16)
    (tmp_path / "locked.key").chmod(0)
    issue = only(problems(write_minimal_with(tmp_path, "    key_file: locked.key\n")), "nodes[0].key_file")
    assert "cannot be read" in issue.message


def test_yaml_anchors_and_merge_keys_keep_line_numbers() -> None:
    text = MINIMAL.replace(
        "  - name: lora0\n    driver: rak3172\n    port: loop://\n",
        "  - &base\n    name: lora0\n    driver: rak3172\n    port: loop://\n    p2p: {spreading_factor: 13}\n"
        "  - <<: *base\n    name: lora1\n",
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    issues = list(info.value.issues)
    assert only(issues, "radios[0].p2p.spreading_factor").line == 9
    # The merged copy has no position of its own: it is reported at its list item.
    assert only(issues, "radios[1].p2p.spreading_factor").line == 10


def test_a_section_with_everything_commented_out_means_defaults() -> None:
    cfg = parse_config(MINIMAL.replace("nodes:\n", "mqtt:\n  # host: mqtt.example.jp\nhealth:\nnodes:\n"))
    assert (cfg.mqtt.host, cfg.health.interval_s) == ("127.0.0.1", 60)
    assert cfg.nodes[0].name == "node-1"
    only_radios = MINIMAL.split("nodes:")[0] + "nodes:\n  # none yet\n"
    cfg = parse_config(only_radios)
    assert cfg.nodes == []
    [warning] = cfg.warnings  # every frame would be quarantined
    assert warning.key == "unknown_nodes"


@pytest.fixture
def extra_driver() -> Iterator[None]:
    """A driver registered by name only (no settings section), as a plugin registers itself; forgotten after. Its
    name is one no shipped driver takes."""
    from drivers import registry

    class Testradio:
        name = ""

    registry.register(registry.DriverSpec(name="testradio", driver=Testradio, section=None,  # type: ignore[arg-type]
                                          settings=None, probe=None, twin="testradio-sim", summary="test driver"))
    yield
    registry.unregister("testradio")


@pytest.mark.usefixtures("extra_driver")
def test_drivers_from_the_registry_are_accepted() -> None:
    assert {"es920lr", "rak3172", "testradio"} <= set(driver_names())
    assert list(driver_names()) == sorted(driver_names())
    cfg = parse_config(MINIMAL.replace("driver: rak3172", "driver: testradio"))
    assert cfg.radios[0].p2p is None and cfg.radios[0].es920 is None
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL.replace("driver: rak3172", "driver: testradoi"))
    hint = only(list(info.value.issues), "radios[0].driver").hint or ""
    assert "did you mean 'testradio'?" in hint and "es920lr" in hint and "rak3172" in hint


# ---------------------------------------------------------------------------------------------------------------
# TLS to a broker on another machine (issue 10, item 6)

FLAG = "    unauthenticated: flag\n"


@pytest.mark.parametrize("host", ["mqtt.example.jp", "10.0.0.5", "192.168.1.10", "::ffff:127.0.0.1", "localhost.example"])
def test_a_remote_broker_without_tls_is_refused_at_the_host_line(tmp_path: Path, host: str) -> None:
    mqtt = f"mqtt:\n  host: \"{host}\"\n  username: gw-test\n  password: \"s3cret\"\n"
    path = write_minimal_with(tmp_path, FLAG, mqtt=mqtt)
    issue = only(problems(path), "mqtt.host")
    assert issue.line == line_of(path, "host:") and issue.file == str(path)
    assert "not on this machine and tls is not set" in issue.message and "in clear" in issue.message
    assert issue.hint is not None and "tls: {ca_file:" in issue.hint and "tls: false" in issue.hint
    assert "s3cret" not in str(issue)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST."])
def test_a_loopback_broker_needs_no_tls(tmp_path: Path, host: str) -> None:
    cfg = load_config(write_minimal_with(tmp_path, FLAG, mqtt=f"mqtt:\n  host: \"{host}\"\n"))
    assert cfg.mqtt.tls is None and cfg.mqtt.tls_settings() is None
    assert not [w for w in cfg.warnings if w.key.startswith("mqtt")]


def test_tls_false_says_plain_tcp_on_purpose_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_minimal_with(tmp_path, FLAG, mqtt="mqtt:\n  host: 10.0.0.5\n  tls: false\n")
    cfg = load_config(path)
    assert cfg.mqtt.tls is False and cfg.mqtt.tls_settings() is None
    [warning] = [w for w in cfg.warnings if w.key == "mqtt.tls"]
    assert warning.line == line_of(path, "tls: false") and "plain TCP to the broker 10.0.0.5" in warning.message
    # The loader logs it, so every start of the agent (which loads its config) says it again.
    assert "config warning" in caplog.text and "plain TCP to the broker 10.0.0.5" in caplog.text
    # tls: {} is TLS with the system's CAs: no warning.
    cfg = load_config(write_minimal_with(tmp_path, FLAG, mqtt="mqtt:\n  host: 10.0.0.5\n  tls: {}\n"))
    assert cfg.mqtt.tls_settings() is not None and not [w for w in cfg.warnings if w.key.startswith("mqtt")]


@pytest.mark.parametrize("value", ["yes", "true", "\"off\"", "[ca.pem]"])
def test_a_tls_value_that_is_neither_a_section_nor_false_gets_one_answer(tmp_path: Path, value: str) -> None:
    path = write_minimal_with(tmp_path, FLAG, mqtt=f"mqtt:\n  host: 10.0.0.5\n  tls: {value}\n")
    issue = only(problems(path), "mqtt.tls")
    assert issue.line == line_of(path, "tls:")
    assert issue.message == "tls must be a section of keys or false", issue
    assert issue.hint is not None and "or write false" in issue.hint


def test_a_tls_section_reports_its_own_keys_without_the_union_noise(tmp_path: Path) -> None:
    path = write_minimal_with(tmp_path, FLAG, mqtt="mqtt:\n  host: 10.0.0.5\n  tls:\n    ca_fil: ca.pem\n")
    [issue] = problems(path)
    assert issue.key == "mqtt.tls.ca_fil" and "ca_file" in (issue.hint or "") + issue.message


def test_a_tls_key_file_others_can_read_is_still_refused_under_the_union(tmp_path: Path) -> None:
    for name in ("c.pem", "k.pem"):
        (tmp_path / name).write_text("-----BEGIN X-----\n")
    (tmp_path / "k.pem").chmod(0o644)
    mqtt = "mqtt:\n  host: 10.0.0.5\n  tls:\n    cert_file: c.pem\n    key_file: k.pem\n"
    issue = only(problems(write_minimal_with(tmp_path, FLAG, mqtt=mqtt)), "mqtt.tls.key_file")
    assert "chmod" in (issue.hint or "") + issue.message


def test_unknown_node_limits_have_sane_defaults_and_bounds(tmp_path: Path) -> None:
    cfg = load_config(write_minimal_with(tmp_path, FLAG))
    assert (cfg.unknown_nodes_max, cfg.unknown_nodes_forget_after_s) == (1000, 604800)
    path = write_minimal_with(tmp_path, FLAG, mqtt="unknown_nodes_max: 0\nunknown_nodes_forget_after_s: 5\n")
    found = problems(path)
    assert {i.key for i in found} == {"unknown_nodes_max", "unknown_nodes_forget_after_s"}


# ---------------------------------------------------------------------------------------------------------------
# One parse of the YAML text per load: positions and data come from the same node tree


@pytest.fixture
def compositions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the YAML documents the loader composes (the parse that dominates loading a large config), by the C
    parser or by ruamel's Python one."""
    from ruamel.yaml import YAML

    calls: list[int] = []
    compose = YAML.compose

    def counting(self: YAML, stream: object) -> object:
        calls.append(1)
        return compose(self, stream)

    monkeypatch.setattr(YAML, "compose", counting)
    return calls


def test_a_valid_config_is_parsed_once(compositions: list[int]) -> None:
    text = MINIMAL.replace('id: "00000001"', "id: 00000101")
    cfg = parse_config(text)
    assert compositions == [1]
    # The data built from the node tree keeps what the loader relies on: the digits of an unquoted hex id.
    assert cfg.nodes[0].id == "00000101"


def test_an_invalid_config_is_parsed_once_and_still_placed(compositions: list[int], tmp_path: Path) -> None:
    path = write_minimal_with(tmp_path, "    unauthenticated: flag\n    kind: trap\n    colour: red\n")
    found = problems(path)
    assert compositions == [1]
    dup = only(found, "nodes[0].kind")
    assert dup.line == line_of(path, "kind: trap", occurrence=2) and "duplicate" in dup.message
    extra = only(found, "nodes[0].colour")
    assert (extra.line, extra.column) == (line_of(path, "colour:"), 5)


def test_aliases_are_built_from_the_one_parse(compositions: list[int]) -> None:
    text = MINIMAL.replace("  site: test\n", "  site: &site test\n  name: *site\n")
    cfg = parse_config(text)
    assert compositions == [1]
    assert cfg.gateway.name == "test"
