"""Shared fixtures: a real Mosquitto broker per test, on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.devbroker import Mosquitto
from agent.errors import AgentError


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running Mosquitto. A missing mosquitto binary fails the test (never a silent skip)."""
    try:
        b = Mosquitto(tmp_path / "broker")
    except AgentError as exc:
        pytest.fail(str(exc))
    b.start()
    yield b
    b.stop()
