"""Scenario tests: the gateway as its users live it, on a simulated module, a real broker and mock GPIO pins."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.dev.devbroker import Mosquitto
from tests.support.scenario_rig import ScenarioRig, rig_fixture


@pytest.fixture
def rig(tmp_path: Path, broker: Mosquitto) -> Iterator[ScenarioRig]:
    """A simulated RAK3172 and a timed backend collector; the test starts the gateway with its own config."""
    yield from rig_fixture(tmp_path, broker)
