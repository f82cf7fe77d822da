"""Real servers for tests (Mosquitto, InfluxDB 1.6.7, VictoriaMetrics) started and stopped around a test or a module.

A server that is not installed fails the test with the command that installs it; it is never a skip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.dev.devbroker import Mosquitto
from agent.errors import AgentError
from tests.support.influx import InfluxDB1, ServerMissing

__all__ = ["DB", "broker_and_influx", "serving"]

DB = "denen"  # the database an InfluxDB for the bridge gets


def serving(make: Callable[[], Any], missing: type[Exception], *, then: Callable[[Any], object] = lambda _: None
            ) -> Iterator[Any]:
    """A server made by ``make``, started (and ``then`` done to it), yielded, stopped after (a generator for a
    fixture's ``yield from``). ``missing`` is what ``make`` raises for a server that is not installed."""
    try:
        server = make()
    except missing as exc:
        pytest.fail(str(exc))
    server.start()
    try:
        then(server)
        yield server
    finally:
        server.stop()


@contextmanager
def broker_and_influx(work: Path) -> Iterator[tuple[Mosquitto, InfluxDB1]]:
    """A Mosquitto and an InfluxDB 1.6.7 with the database :data:`DB`, under ``work``, for the tests of a module."""
    with contextmanager(serving)(lambda: Mosquitto(work / "broker"), AgentError) as broker, \
            contextmanager(serving)(lambda: InfluxDB1(work / "influx"), ServerMissing,
                                    then=lambda s: s.create_database(DB)) as influx:
        yield broker, influx
