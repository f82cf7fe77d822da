"""The fault-injection suite (issue 4): outside the quick default run, on demand.

Run it with ``pytest tests/faults --faults`` or ``DENEN_FAULTS=1 pytest tests/faults`` (the env var also works
from the repository root without a path, where pytest never loads this file early enough to know ``--faults``).
``DENEN_FAULTS_FULL=1`` selects the full variant (the figures in the README); ``DENEN_FAULTS_SEED`` fixes the
random kill moments; ``DENEN_FAULTS_REPORT=PATH`` writes the figures as JSON.

Every module marks itself ``pytest.mark.faults``; without the option or the variable those tests are skipped,
the one skip this project allows. The marker is registered here, so ``--strict-markers`` accepts it.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.fault_rig import FULL

ENV = "DENEN_FAULTS"
_FIGURES: dict[str, dict[str, Any]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--faults", action="store_true", default=False,
                     help="run the fault-injection suite in tests/faults (or set DENEN_FAULTS=1)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: fault-injection suite (tests/faults), runs only with --faults or "
                                       "DENEN_FAULTS=1")


def _enabled(config: pytest.Config) -> bool:
    try:
        asked = bool(config.getoption("--faults"))
    except ValueError:  # this conftest was loaded too late for its option to exist: only the env var counts
        asked = False
    return asked or os.environ.get(ENV) == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _enabled(config):
        return
    skip = pytest.mark.skip(reason="fault-injection suite: run `pytest tests/faults --faults` or set DENEN_FAULTS=1")
    for item in items:
        if item.get_closest_marker("faults") is not None:
            item.add_marker(skip)


@pytest.fixture
def rng(request: pytest.FixtureRequest, figures: dict[str, Any]) -> random.Random:
    """The test's random source; the seed is printed with the figures, so a failing run can be replayed."""
    seed = int(os.environ.get("DENEN_FAULTS_SEED", "0")) or random.SystemRandom().randrange(1, 2**31)
    figures["seed"] = seed
    return random.Random(seed)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A dict a test fills with its figures (kills survived, readings checked ...), reported at the end."""
    found: dict[str, Any] = {}
    yield found
    found["variant"] = "full" if FULL else "ci"
    _FIGURES[request.node.nodeid] = found


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("fault-injection figures")
    for test, found in _FIGURES.items():
        terminalreporter.write_line(f"{test}: {json.dumps(found, sort_keys=True)}")
    path = os.environ.get("DENEN_FAULTS_REPORT")
    if path:
        Path(path).write_text(json.dumps(_FIGURES, indent=2, sort_keys=True) + "\n")
