"""The parsed config kept between starts (agent/config/parsed.py): a restart with the same text skips the YAML parse,
never a check; anything unexpected parses the YAML again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.config import load_config, loader
from agent.errors import ConfigError
from agent.gateway.boot import parsed_config_cache
from tests.support.field import FieldNode
from tests.support.gateway_config import gateway_yaml


def _config(tmp_path: Path, nodes: int = 20, kind: str = "rain") -> Path:
    """A valid config without warnings (rain gauges; water_level gauges without stage rules warn)."""
    path = tmp_path / "config.yaml"
    path.write_text(gateway_yaml(port="loop://", mqtt_port=1883, journal=tmp_path / "j.db",
                                 nodes=[FieldNode(0x300 + i, kind) for i in range(nodes)]))
    path.chmod(0o600)
    return path


@pytest.fixture
def composes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the YAML parses the loader makes."""
    calls: list[str] = []
    real = loader._compose

    def counted(text: str, source: str) -> object:
        calls.append(source)
        return real(text, source)

    monkeypatch.setattr(loader, "_compose", counted)
    return calls


def test_a_restart_with_the_same_text_validates_the_kept_data_without_parsing(tmp_path: Path,
                                                                             composes: list[str]) -> None:
    cfg, cache = _config(tmp_path), tmp_path / "state" / "config.parsed.json"
    cache.parent.mkdir(mode=0o700)
    first = load_config(cfg, parsed_cache=cache)
    assert len(composes) == 1 and cache.exists() and (cache.stat().st_mode & 0o777) == 0o600
    again = load_config(cfg, parsed_cache=cache)
    assert len(composes) == 1  # no second parse
    assert again.model_dump() == first.model_dump() and again.node_by_id.keys() == first.node_by_id.keys()


def test_another_text_a_foreign_file_or_bad_data_parse_the_yaml_again(tmp_path: Path, composes: list[str]) -> None:
    cfg, cache = _config(tmp_path), tmp_path / "config.parsed.json"
    load_config(cfg, parsed_cache=cache)
    # The config changed: the kept data is not its own.
    cfg.write_text(cfg.read_text().replace("interval_s: 60", "interval_s: 120", 1))
    assert load_config(cfg, parsed_cache=cache).nodes[0].interval_s == 120 and len(composes) == 2
    # Others may read it: not trusted (and it holds node keys).
    cache.chmod(0o644)
    load_config(cfg, parsed_cache=cache)
    assert len(composes) == 3 and (cache.stat().st_mode & 0o777) == 0o600  # rewritten private
    # Data that does not validate (damaged, or written by hand): the YAML decides, the file is rewritten.
    doc = json.loads(cache.read_text())
    doc["data"]["nodes"][0]["id"] = "not-a-node-id"
    cache.write_text(json.dumps(doc))
    assert load_config(cfg, parsed_cache=cache).nodes[0].id == "00000300" and len(composes) == 4
    assert json.loads(cache.read_text())["data"]["nodes"][0]["id"] != "not-a-node-id"
    cache.write_text("{not json")
    load_config(cfg, parsed_cache=cache)
    assert len(composes) == 5


def test_every_check_still_runs_on_kept_data(tmp_path: Path, composes: list[str]) -> None:
    """The kept data saves the parse only: a config other users may now read is refused as before."""
    cfg, cache = _config(tmp_path), tmp_path / "config.parsed.json"
    load_config(cfg, parsed_cache=cache)
    cfg.chmod(0o604)
    with pytest.raises(ConfigError, match="every user on this machine can read it"):
        load_config(cfg, parsed_cache=cache)
    assert len(composes) == 2  # refused with its position from the YAML


def test_nothing_is_kept_for_a_config_with_problems_or_warnings(tmp_path: Path) -> None:
    cfg, cache = _config(tmp_path), tmp_path / "config.parsed.json"
    cfg.write_text(cfg.read_text().replace("interval_s: 60", "interval_s: nope", 1))
    with pytest.raises(ConfigError):
        load_config(cfg, parsed_cache=cache)
    assert not cache.exists()
    # Valid, with warnings (gauges without stage rules): loaded, and the warnings are said at every start.
    warned = load_config(_config(tmp_path / "warns" if (tmp_path / "warns").mkdir() is None else tmp_path,
                                 kind="water_level"), parsed_cache=cache)
    assert warned.warnings and not cache.exists()


def test_the_cache_lives_only_in_a_state_directory_of_this_user_that_no_one_else_writes(tmp_path: Path) -> None:
    assert parsed_config_cache(tmp_path / "missing") is None
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    os.chmod(state, 0o750)
    assert parsed_config_cache(state) == state / "config.parsed.json"
    os.chmod(state, 0o770)
    assert parsed_config_cache(state) is None
