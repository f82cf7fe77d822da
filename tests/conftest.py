"""Shared fixtures: a real Mosquitto broker, InfluxDB 1.6.7 and VictoriaMetrics per test, on free loopback ports.

A missing server binary fails the test with the command that installs it; it is never a skip.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.dev.devbroker import Mosquitto
from agent.errors import AgentError
from tests.support.influx import InfluxDB1, ServerMissing, VictoriaMetrics
from tests.support.servers import DB, serving


# The suite checks English output unless a test asks for Japanese (LANG=ja_JP.UTF-8 in a subprocess's env): a
# developer's or CI machine set to Japanese must not change what the other tests read.
for _name in ("LC_ALL", "LC_MESSAGES", "LANGUAGE"):
    os.environ.pop(_name, None)
os.environ["LANG"] = "C.UTF-8"


@pytest.fixture(autouse=True)
def _process_logging_restored() -> Iterator[None]:
    """A test that runs ``denen`` in-process (cli.main) configures the root logger, its level from the config and
    sys.excepthook; later tests must not inherit that (caplog would see INFO records it never asked for)."""
    root = logging.getLogger()
    handlers, level, hook = list(root.handlers), root.level, sys.excepthook
    yield
    for handler in list(root.handlers):
        # pytest's own capture handlers come and go with each test phase; leave them to pytest.
        if handler not in handlers and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
    root.setLevel(level)
    sys.excepthook = hook
    logging.captureWarnings(False)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running Mosquitto."""
    yield from serving(lambda: Mosquitto(tmp_path / "broker"), AgentError)


@pytest.fixture
def influx(tmp_path: Path) -> Iterator[InfluxDB1]:
    """A running InfluxDB 1.6.7 with the database ``denen`` created."""
    yield from serving(lambda: InfluxDB1(tmp_path / "influx"), ServerMissing, then=lambda s: s.create_database(DB))


@pytest.fixture
def victoria(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A running VictoriaMetrics single node (it accepts InfluxDB line protocol on /write and /api/v2/write)."""
    yield from serving(lambda: VictoriaMetrics(tmp_path / "vm"), ServerMissing)
