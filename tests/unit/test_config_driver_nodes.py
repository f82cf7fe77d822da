"""The nodes a Modbus sensor or a Meshtastic device reports as: configured under nodes: with the kind of its
readings, no key, unauthenticated: flag and no other radio, else `denen config validate` says which and how to
fix it (the drivers build those frames without a MIC, so any other setting quarantines or mislabels them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import i18n
from agent.config import load_config
from agent.errors import ConfigError, ConfigIssue

KEY = "00112233445566778899aabbccddeeff"

#: Two radios: a Modbus line with two gauges and a Meshtastic radio with a hiker's device and a weather station.
CONFIG = """\
gateway: {id: gw-test, site: test}
radios:
  - name: rs485
    driver: modbus
    port: loop://
    baudrate: 9600
    modbus:
      sensors:
        - node: "3c000001"
          kind: water_level
          slave: 1
          values: [{key: level_cm, address: 4}]
        - node: "3c000101"
          kind: rain
          slave: 2
          values: [{key: rain_mm, address: 8}]
  - name: mesh0
    driver: meshtastic
    port: loop://
    meshtastic:
      devices:
        - {device: "!a1b2c3d4", node: "3e000001"}
        - {device: "!b00c0001", node: "3e000101", environment: true}
nodes:
  - {id: "3c000001", name: river-bank, kind: water_level, unauthenticated: flag, radio: rs485}
  - {id: "3c000101", name: rain-roof, kind: rain, unauthenticated: flag}
  - {id: "3e000001", name: hiker-1, kind: sos, unauthenticated: flag}
  - {id: "3e000101", name: hut-weather, kind: weather, unauthenticated: flag, radio: mesh0}
"""


def _load(tmp_path: Path, text: str) -> list[ConfigIssue]:
    path = tmp_path / "gw.yaml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    try:
        load_config(path)
    except ConfigError as exc:
        return list(exc.issues)
    return []


def _edit(old: str, new: str) -> str:
    assert CONFIG.count(old) == 1, old
    return CONFIG.replace(old, new)


def test_nodes_configured_as_the_drivers_need_load(tmp_path: Path) -> None:
    assert _load(tmp_path, CONFIG) == []


def test_a_sensor_or_device_whose_node_is_not_configured(tmp_path: Path) -> None:
    text = _edit('  - {id: "3c000101", name: rain-roof, kind: rain, unauthenticated: flag}\n', "")
    text = text.replace('  - {id: "3e000001", name: hiker-1, kind: sos, unauthenticated: flag}\n', "")
    found = {(i.key, i.line): (i.message, i.hint) for i in _load(tmp_path, text)}
    assert found == {
        ("radios[0].modbus.sensors[1].node", 13): (
            "node 3c000101 (Modbus sensor at slave 2) is not under nodes:",
            'add it: - {id: "3c000101", name: ..., kind: rain, unauthenticated: flag}'),
        ("radios[1].meshtastic.devices[0].node", 22): (
            "node 3e000001 (Meshtastic device !a1b2c3d4) is not under nodes:",
            'add it: - {id: "3e000001", name: ..., kind: sos, unauthenticated: flag}'),
    }


def test_the_node_of_a_sensor_has_its_kind(tmp_path: Path) -> None:
    text = _edit("name: rain-roof, kind: rain,", "name: rain-roof, kind: water_level,")
    text = text.replace("name: hiker-1, kind: sos,", "name: hiker-1, kind: trap,")
    text = text.replace("name: hut-weather, kind: weather,", "name: hut-weather, kind: sos,")
    found = {i.key: (i.message, i.hint) for i in _load(tmp_path, text)}
    assert found == {
        "nodes[1].kind": ("node 3c000101 is kind water_level, but the Modbus sensor at slave 2 sends rain readings",
                          "set kind: rain on the node, or correct the sensor's kind or its node"),
        "nodes[2].kind": ("node 3e000001 is kind trap, but the Meshtastic device !a1b2c3d4 sends sos readings",
                          "a Meshtastic device's node is kind sos, or weather with environment: true; set kind: sos "
                          "on the node"),
        "nodes[3].kind": ("node 3e000101 is kind sos, but the Meshtastic device !b00c0001 sends weather readings",
                          "a Meshtastic device's node is kind sos, or weather with environment: true; set kind: "
                          "weather on the node"),
    }


def test_a_keyed_node_would_quarantine_or_mislabel_the_unsigned_frames(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DENEN_TEST_NODE_KEY", KEY)
    text = _edit("name: rain-roof, kind: rain, unauthenticated: flag}",
                 "name: rain-roof, kind: rain, key_env: DENEN_TEST_NODE_KEY}")
    text = text.replace("name: hiker-1, kind: sos, unauthenticated: flag}",
                        "name: hiker-1, kind: sos, key_env: DENEN_TEST_NODE_KEY, unauthenticated: flag}")
    found = {i.key: (i.message, i.hint) for i in _load(tmp_path, text)}
    assert found == {
        "nodes[1].key_env": (
            "node 3c000101 has a key, but the Modbus sensor at slave 2 builds its frames without a MIC (it never sees "
            "node keys)",
            "remove key_env from the node and set unauthenticated: flag: its readings are accepted and marked "
            "unauthenticated"),
        "nodes[1].unauthenticated": (
            "node 3c000101 would quarantine every frame of the Modbus sensor at slave 2, SOS included: they carry "
            "no MIC",
            "set unauthenticated: flag on the node (its readings are then marked unauthenticated)"),
        "nodes[2].key_env": (
            "node 3e000001 has a key, but the Meshtastic device !a1b2c3d4 builds its frames without a MIC (it never "
            "sees node keys)",
            "remove key_env from the node and set unauthenticated: flag: its readings are accepted and marked "
            "unauthenticated"),
    }


def test_a_node_bound_to_another_radio(tmp_path: Path) -> None:
    text = _edit("kind: water_level, unauthenticated: flag, radio: rs485}",
                 "kind: water_level, unauthenticated: flag, radio: mesh0}")
    [issue] = _load(tmp_path, text)
    assert (issue.key, issue.message, issue.hint) == (
        "nodes[0].radio",
        "node 3c000001 is only accepted through radio 'mesh0', but the Modbus sensor at slave 1 is on radio 'rs485'",
        "set radio: rs485 on the node, or remove its radio:")


def test_the_problems_in_japanese(tmp_path: Path) -> None:
    text = _edit('  - {id: "3c000101", name: rain-roof, kind: rain, unauthenticated: flag}\n', "")
    text = text.replace("name: hut-weather, kind: weather,", "name: hut-weather, kind: sos,")
    issues = _load(tmp_path, text)
    i18n.set_language("ja")
    try:
        shown = [str(i).split(": ", 1)[1] for i in issues]
    finally:
        i18n.set_language(None)
    assert shown == [
        "radios[0].modbus.sensors[1].node: ノード 3c000101（スレーブ 2 の Modbus センサー）が nodes: にありません"
        '（ヒント: 追加してください: - {id: "3c000101", name: ..., kind: rain, unauthenticated: flag}）',
        "nodes[2].kind: ノード 3e000101 の種類は sos ですが、Meshtastic デバイス !b00c0001 は weather の読み取りを"
        "送ります（ヒント: Meshtastic デバイスのノードの種類は sos、environment: true なら weather です。ノードに kind: "
        "weather を設定してください）",
    ]
