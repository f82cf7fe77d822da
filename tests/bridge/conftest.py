"""Fixtures of the bridge tests: a real InfluxDB 1.6.7 and a real VictoriaMetrics on free loopback ports.

A missing server binary fails the test with the command that installs it; it is never a skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.influx import InfluxDB1, ServerMissing, VictoriaMetrics

DB = "denen"


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[InfluxDB1]:
    """A running InfluxDB 1.x with the database ``denen`` created."""
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
    try:
        server = VictoriaMetrics(tmp_path / "vm")
    except ServerMissing as exc:
        pytest.fail(str(exc))
    server.start()
    yield server
    server.stop()
