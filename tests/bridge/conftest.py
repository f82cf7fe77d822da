"""Fixtures of the bridge tests: a real VictoriaMetrics on a free loopback port (InfluxDB: tests/conftest.py).

A missing server binary fails the test with the command that installs it; it is never a skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.influx import ServerMissing, VictoriaMetrics


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    try:
        server = VictoriaMetrics(tmp_path / "vm")
    except ServerMissing as exc:
        pytest.fail(str(exc))
    server.start()
    yield server
    server.stop()
