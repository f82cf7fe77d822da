"""Shared fixtures: a real Mosquitto broker and a real InfluxDB 1.6.7 per test, on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.devbroker import Mosquitto
from agent.errors import AgentError
from tests.support.influx import InfluxDB1, ServerMissing

DB = "denen"  # the database the influx fixture creates


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


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[InfluxDB1]:
    """A running InfluxDB 1.6.7 with the database ``denen`` created."""
    try:
        server = InfluxDB1(tmp_path / "influx")
    except ServerMissing as exc:
        pytest.fail(str(exc))
    server.start()
    server.create_database(DB)
    yield server
    server.stop()
