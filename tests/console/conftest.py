"""Servers for the console tests: one real Mosquitto and one InfluxDB 1.6.7 per test module (the tests use their own
gateway ids), so the console suite stays well under a minute. A missing server fails the test, never skips it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.dev.devbroker import Mosquitto
from agent.errors import AgentError
from tests.console._rig import FakeGateway
from tests.support.influx import InfluxDB1, ServerMissing


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mosquitto, InfluxDB1]]:
    tmp = tmp_path_factory.mktemp("servers")
    try:
        broker = Mosquitto(tmp / "broker")
        influx = InfluxDB1(tmp / "influx")
    except (AgentError, ServerMissing) as exc:
        pytest.fail(str(exc))
    broker.start()
    influx.start()
    influx.create_database("denen")
    yield broker, influx
    influx.stop()
    broker.stop()


@pytest.fixture
def gateways(servers: tuple[Mosquitto, InfluxDB1]) -> Iterator[list[FakeGateway]]:
    """Fake gateways a test starts (it appends them); closed after the test, before the servers stop."""
    made: list[FakeGateway] = []
    yield made
    for gw in made:
        gw.close()
