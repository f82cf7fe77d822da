"""What pyproject.toml puts in the wheel, checked against the tree (fast; tests/package builds the real wheel):
every code package is listed, and every file denen reads at run time is matched by a package-data pattern."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest

from agent import assets
from agent.errors import AgentError

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]

#: Files `denen` reads at run time beyond the example configs and schemas of agent.assets.
RUNTIME_FILES = [
    "config/README.md",
    "config/example-keys.env",
    "config/scenarios/demo.yaml",
    "deploy/edge/denen.service",
    "deploy/edge/99-denen-lora.rules",
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "deploy" / "backend" / "grafana").rglob("*") if p.is_file()),
]


def _packaged(path: str) -> bool:
    """Whether a repository file is matched by a package-data pattern of the data package its folder maps to."""
    for package, folder in SETUPTOOLS["package-dir"].items():
        if path.startswith(folder + "/"):
            inner = path[len(folder) + 1:]
            return any(fnmatch.fnmatchcase(inner, pattern) and inner.count("/") == pattern.count("/")
                       for pattern in SETUPTOOLS["package-data"].get(package, []))
    return False


def test_every_code_package_is_listed() -> None:
    found = {".".join(p.parent.relative_to(REPO).parts) for top in ("agent", "drivers")
             for p in (REPO / top).rglob("__init__.py")}
    data = set(SETUPTOOLS["package-dir"])
    assert set(SETUPTOOLS["packages"]) - data == found
    assert data <= set(SETUPTOOLS["packages"])


def test_data_packages_map_to_the_canonical_folders() -> None:
    assert SETUPTOOLS["package-dir"] == {"agent._data.config": "config", "agent._data.deploy": "deploy"}
    assert SETUPTOOLS["include-package-data"] is False  # only what package-data names


def test_every_runtime_file_is_package_data() -> None:
    names = [e.asset for e in assets.EXAMPLES.values()] + list(assets.SCHEMAS.values()) + RUNTIME_FILES
    for name in names:
        assert (REPO / name).is_file(), name
    assert [n for n in names if not _packaged(n)] == []


def test_every_package_data_pattern_matches_a_file() -> None:
    for package, folder in SETUPTOOLS["package-dir"].items():
        for pattern in SETUPTOOLS["package-data"][package]:
            assert list((REPO / folder).glob(pattern)), f"{package}: {pattern} matches nothing in {folder}/"


def test_assets_come_from_the_checkout_here() -> None:
    assert Path(str(assets.root())) == REPO
    assert assets.read_text(assets.DEMO_SCENARIO) == (REPO / assets.DEMO_SCENARIO).read_text(encoding="utf-8")
    with assets.as_file("deploy/edge/denen.service") as path:
        assert path == REPO / "deploy" / "edge" / "denen.service"


def test_a_missing_asset_is_one_line() -> None:
    with pytest.raises(AgentError, match=r"^config/nope\.yaml is missing from this install of denen"):
        assets.find("config/nope.yaml")
