"""The bridge's config: the documented example loads, and problems point at file, line, key, with a hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.bridge.config import load_bridge_config, looks_like_bridge_config, parse_bridge_config
from agent.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "bridge" / "bridge.yaml"


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_bridge_config(text, source="b.yaml")
    return [str(i) for i in err.value.issues]


def test_the_documented_example_loads_cleanly() -> None:
    cfg = load_bridge_config(EXAMPLE)
    assert cfg.sink.type == "v1" and cfg.sink.database == "denen" and cfg.mqtt.client_id == "denen-bridge-1"
    assert cfg.mqtt.subscriptions() == ("$share/denen-bridge/denen/v1/+/readings/#",
                                        "$share/denen-bridge/denen/v1/+/status")
    assert cfg.batch.receive_maximum == 2 * cfg.batch.max_messages
    assert looks_like_bridge_config(EXAMPLE.read_text())
    assert not looks_like_bridge_config((EXAMPLE.parent.parent / "demo.yaml").read_text())


def test_problems_point_at_the_line_with_a_hint() -> None:
    text = "mqtt:\n  hots: broker\n  group: 'a b'\nsink:\n  type: v2\n  url: ftp://x\n  database: d\n"
    found = issues(text)
    assert any(i.startswith("b.yaml:2:3: mqtt.hots: unknown key 'hots'") and "did you mean 'host'" in i
               for i in found), found
    assert any(i.startswith("b.yaml:3:3: mqtt.group:") for i in found), found
    assert any(i.startswith("b.yaml:6:3: sink.url:") and "http://" in i for i in found), found


def test_each_sink_type_takes_its_own_keys() -> None:
    found = issues("sink:\n  type: v2\n  database: d\n  org: o\n")
    assert any("sink.database" in i and "not used by a v2 sink" in i for i in found), found
    assert any("sink.bucket" in i and "needs 'bucket'" in i for i in found), found
    assert any("sink.token" in i and "token or token_file" in i for i in found), found
    found = issues("sink:\n  type: v1\n  password: hunter22\n")
    assert any("sink.database" in i for i in found) and any("sink.user" in i for i in found), found
    assert not any("hunter22" in i for i in found)  # secrets never in messages


def test_secret_files_and_dead_letter_paths_are_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("abc:def\n")
    (tmp_path / "token").chmod(0o600)
    cfg_path = tmp_path / "bridge.yaml"
    cfg_path.write_text("mqtt:\n  client_id: b1\nsink:\n  type: v2\n  org: o\n  bucket: b\n  token_file: token\n"
                        "dead_letter:\n  path: data/dead.db\n")
    cfg = load_bridge_config(cfg_path)
    assert cfg.sink.token_value() == "abc:def"
    assert cfg.dead_letter.path == str(tmp_path / "data" / "dead.db")
    found = issues("sink:\n  type: v2\n  org: o\n  bucket: b\n  token_file: /nonexistent/token\n")
    assert any("sink.token_file" in i and "does not exist" in i for i in found), found
