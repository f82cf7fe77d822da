"""The gateway registry: its file format, its errors (file:line and key), its reload, and the shipped examples."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from agent.bridge.registry import UNKNOWN_SITE, GatewayInfo, GatewayRegistry
from agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
# the bridge's gateway registry
gateways:
  gw-okutama-01:
    site: okutama
    name: 奥多摩 日原林道
    municipality: 奥多摩町
  gw-tanba-02:
    site: tanba
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o644)
    return path


def test_a_registry_file_gives_each_gateway_its_site_name_and_municipality(tmp_path: Path) -> None:
    reg = GatewayRegistry.load(_write(tmp_path / "gateways.yaml", GOOD), unknown="refuse")
    assert len(reg) == 2 and reg.unknown == "refuse" and reg.path == tmp_path / "gateways.yaml"
    assert reg.lookup("gw-okutama-01") == GatewayInfo("okutama", "奥多摩 日原林道", "奥多摩町")
    assert reg.lookup("gw-tanba-02") == GatewayInfo("tanba")
    assert reg.lookup("gw-other") is None and "gw-tanba-02" in reg


def test_an_empty_registry_accepts_by_default() -> None:
    reg = GatewayRegistry()
    assert len(reg) == 0 and reg.unknown == "accept" and reg.path is None and not reg.refresh()
    assert UNKNOWN_SITE == "unknown"
    with pytest.raises(ValueError, match="accept"):
        GatewayRegistry(unknown="maybe")  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "line", "key", "message"), [
    ("gateways:\n  GW-Upper:\n    site: x\n", 2, "gateways.GW-Upper", "is not a gateway id"),
    ("gateways:\n  gw-a:\n    site: Bad Site\n", 3, "gateways.gw-a.site", "not allowed"),
    ("gateways:\n  gw-a:\n    name: x\n", 2, "gateways.gw-a.site", "missing"),
    ("gateways:\n  gw-a:\n    site: x\n    colour: red\n", 4, "gateways.gw-a.colour", "unknown key"),
    ('gateways:\n  gw-a:\n    site: x\n    name: "bell\\a"\n', 4, "gateways.gw-a.name", "control character"),
    ('gateways:\n  gw-a:\n    site: x\n    municipality: "' + "m" * 201 + '"\n', 4, "gateways.gw-a.municipality",
     "200"),
    ("gateways:\n  gw-a:\n    site: x\n  gw-a:\n    site: y\n", 4, "gateways.gw-a", "duplicate key"),
    ("sites:\n  gw-a: x\n", 1, "sites", "unknown key"),
])
def test_a_bad_registry_file_is_a_config_error_naming_line_and_key(tmp_path: Path, text: str, line: int, key: str,
                                                                    message: str) -> None:
    path = _write(tmp_path / "gateways.yaml", text)
    with pytest.raises(ConfigError) as info:
        GatewayRegistry.load(path)
    issues = [i for i in info.value.issues if i.key == key]
    assert issues, str(info.value)
    assert issues[0].line == line and message in issues[0].message and issues[0].file == str(path)
    assert f"{path}:{line}" in str(info.value)


def test_a_missing_or_world_writable_registry_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        GatewayRegistry.load(tmp_path / "nope.yaml")
    path = _write(tmp_path / "gateways.yaml", GOOD)
    path.chmod(0o666)  # anybody on the machine could move a gateway to another town
    with pytest.raises(ConfigError, match="every user on this machine can change"):
        GatewayRegistry.load(path)


def test_refresh_reloads_a_changed_file_and_keeps_the_old_content_when_the_new_one_is_broken(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path / "gateways.yaml", GOOD)
    reg = GatewayRegistry.load(path)
    assert not reg.refresh()  # unchanged
    _write(path, GOOD + "  gw-new-03:\n    site: newtown\n")
    os.utime(path, ns=(1, 1_000_000_000))  # a change within one mtime tick is still seen (size)
    assert reg.refresh() and reg.lookup("gw-new-03") == GatewayInfo("newtown") and len(reg) == 3
    with caplog.at_level(logging.ERROR, logger="agent.bridge.registry"):
        _write(path, GOOD + "  gw-new-03:\n    site: NOT OK\n")
        assert not reg.refresh() and not reg.refresh()
        path.unlink()
        assert not reg.refresh() and not reg.refresh()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2  # one per change of the file, not one per check
    assert "keeping the 3 gateways" in errors[0].getMessage() and "gateways.gw-new-03.site" in errors[0].getMessage()
    assert reg.lookup("gw-new-03") == GatewayInfo("newtown")  # the last good content
    _write(path, GOOD)
    assert reg.refresh() and len(reg) == 2 and reg.lookup("gw-new-03") is None


def test_the_shipped_registry_lists_two_example_gateways() -> None:
    reg = GatewayRegistry.load(REPO / "deploy/backend/gateways.yaml")
    assert len(reg) == 2
    for gw in ("gw-okutama-01", "gw-tanba-traps-01"):  # the gateways deploy/backend/README.md names
        info = reg.lookup(gw)
        assert info is not None and info.site and info.name and info.municipality


def test_the_example_registry_gives_each_example_gateway_the_site_of_its_own_config() -> None:
    yaml = YAML(typ="safe")
    configs = {}
    for path in sorted((REPO / "config").glob("*.yaml")):
        gateway = (yaml.load(path.read_text(encoding="utf-8")) or {}).get("gateway")
        if isinstance(gateway, dict) and "id" in gateway:
            configs[gateway["id"]] = gateway["site"]
    reg = GatewayRegistry.load(REPO / "config/bridge/gateways.yaml")
    assert configs and len(reg) == len(configs)
    assert {gw: reg.lookup(gw).site for gw in configs} == configs  # type: ignore[union-attr]
