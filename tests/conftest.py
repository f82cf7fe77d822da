"""Shared fixtures: a real Mosquitto broker, InfluxDB 1.6.7 and VictoriaMetrics per test, on free loopback ports.

A missing server binary fails the test with the command that installs it; it is never a skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.devbroker import Mosquitto
from agent.errors import AgentError
from tests.support.influx import InfluxDB1, ServerMissing, VictoriaMetrics

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


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A running VictoriaMetrics single node (it accepts InfluxDB line protocol on /write and /api/v2/write)."""
    try:
        server = VictoriaMetrics(tmp_path / "vm")
    except ServerMissing as exc:
        pytest.fail(str(exc))
    server.start()
    yield server
    server.stop()
