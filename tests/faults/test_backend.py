"""Backend faults on the full path: the bridge killed and restarted, InfluxDB stopped, killed and restarted, the
broker restarted with persistence; zero loss and zero duplicates in InfluxDB 1.6.7, counted by (node, fcnt).

The agent (``denen run``) is never disturbed here, so every frame the simulated module wrote into the pty must
arrive: the expected set is exactly what :class:`WireRecorder` saw, and InfluxDB must hold each of those readings
as one point and nothing else.

A broker restart has one trap: Mosquitto 2.0 restores a persistent session from its persistence file but not the
session's *shared* subscriptions (``$share/denen-bridge/...``, the bridge's), and answers a publish that matches no
subscription with PUBACK 0x10 "No matching subscribers". Until the bridge has subscribed again, whatever the
gateway publishes reaches nobody. The agent keeps such readings journaled and offers them again (counted as
``mqtt.no_subscribers``); the restarts here run with the gateway publishing throughout, and the last test keeps
the bridge away across a restart so that every reading of that time depends on it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.dev.devbroker import Mosquitto
from tests.support.fault_rig import (AgentProcess, BridgeProcess, Feeder, WireRecorder, influx_keys, influx_total,
                                     journal_status, sized, write_bridge, write_gateway)
from tests.support.field import FieldNode, default_values, start_sim, wait_configured
from tests.support.influx import InfluxDB1
from tests.support.polling import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.broker]

ROUNDS = sized(1, 5)  # times the whole sequence of backend faults is repeated
RATE_HZ = 150


class Pipeline:
    """The full path of one test: module on a pty -> agent -> broker -> bridge -> InfluxDB, with traffic."""

    def __init__(self, tmp: Path, broker: Mosquitto, influx: InfluxDB1, rng: random.Random) -> None:
        kinds = ["sos", "trap", "water_level", "water_level", "rain", "rain", "weather", "tilt", "heartbeat"]
        self.nodes = [FieldNode(0x0C000000 + i, k) for i, k in enumerate(kinds)]
        self.broker, self.influx = broker, influx
        self.sim = start_sim(tmp, rng_seed=rng.random())
        self.wire = WireRecorder(self.sim)
        self.journal = tmp / "journal.db"
        cfg = write_gateway(tmp, sim=self.sim, broker=broker, journal=self.journal,
                            nodes=self.nodes, batch=50, window=4)
        bcfg = write_bridge(tmp, broker=broker, influx=influx)
        self.bridge = BridgeProcess(bcfg, tmp / "bridge.log")
        self.agent = AgentProcess(cfg, tmp / "agent.log")
        self.feeder = Feeder(self.sim, self._make, RATE_HZ)

    def _make(self, i: int) -> bytes:
        n = self.nodes[i % len(self.nodes)]
        return n.frame(default_values(n.kind, i))

    def start(self) -> None:
        self.bridge.start()
        self.agent.start()
        assert wait_configured(self.sim, 0, 20), self.agent.run_log()
        self.feeder.start()
        self.feeder.resume()

    def close(self) -> None:
        self.feeder.close()
        self.agent.stop()
        self.bridge.stop()
        self.sim.stop()

    def restart_broker(self) -> None:
        """Broker restart (SIGTERM: Mosquitto writes its persistence file) under traffic; returns once the bridge
        has subscribed again (the gateway reconnects on its own, before or after it)."""
        subscribed = self.bridge.subscriptions()
        self.broker.stop()
        self.broker.start()
        self.bridge.wait_resubscribed(subscribed)

    def settle(self, timeout: float = 120.0) -> None:
        """Stop the traffic and wait until every reading on the wire is journaled, published and written."""
        self.feeder.pause()
        assert self.feeder.error is None, self.feeder.error
        n = len(self.wire)
        assert wait_until(lambda: journal_status(self.journal)["counters"].get("frames.ok", 0) >= n, 30)
        assert wait_until(lambda: journal_status(self.journal)["journal"]["unsent"] == 0, timeout), \
            journal_status(self.journal)["journal"]
        wait_until(lambda: influx_total(self.influx) >= n, timeout, interval=0.5)

    def check(self) -> dict[str, Any]:
        """Every frame on the wire is one point in InfluxDB, and nothing else is."""
        sent = self.wire.snapshot()
        found = influx_keys(self.influx)
        twice = sorted(k for k, c in found.items() if c > 1)
        assert not twice, f"{len(twice)} readings have two points, e.g. {twice[:5]}"
        missing = sorted(set(sent) - set(found))
        assert not missing, f"{len(missing)} of {len(sent)} readings never reached InfluxDB, e.g. {missing[:10]}"
        invented = set(found) - set(sent)
        assert not invented, f"InfluxDB holds readings no node sent: {sorted(invented)[:5]}"
        return {"readings": len(sent), "influx_points": sum(found.values()), "duplicates": 0, "missing": 0}


@pytest.fixture
def pipeline(tmp_path: Path, broker: Mosquitto, influx: InfluxDB1, rng: random.Random) -> Iterator[Pipeline]:
    p = Pipeline(tmp_path, broker, influx, rng)
    try:
        p.start()
        yield p
    finally:
        p.close()


def _flowing(p: Pipeline, seconds: float = 1.5) -> None:
    """Let traffic run and make sure it gets journaled meanwhile (the agent is alive and reading)."""
    before = journal_status(p.journal)["counters"].get("frames.ok", 0)
    time.sleep(seconds)
    assert wait_until(lambda: journal_status(p.journal)["counters"].get("frames.ok", 0) > before, 10), \
        f"the agent journals nothing (feeder offered {p.feeder.offered}, refused {p.feeder.refused}): " \
        f"{p.agent.diagnose()}"


def test_bridge_influxdb_and_broker_outages_lose_nothing_and_duplicate_nothing(
        pipeline: Pipeline, figures: dict[str, Any]) -> None:
    p = pipeline
    events: dict[str, int] = {}

    def did(name: str) -> None:
        events[name] = events.get(name, 0) + 1

    started = time.monotonic()
    for _ in range(ROUNDS):
        _flowing(p)
        p.bridge.kill9()  # SIGKILL mid-stream: written but unacknowledged messages come again
        _flowing(p, 1.0)
        p.bridge.start()
        did("bridge_sigkill")
        _flowing(p)
        assert p.bridge.terminate() == 0  # SIGTERM: what is not written stays with the broker
        p.bridge.start()
        did("bridge_sigterm")
        _flowing(p)
        p.influx.stop()  # the bridge retries with backoff, acknowledges nothing
        _flowing(p, 3.0)
        p.influx.start()
        did("influxdb_stop")
        _flowing(p)
        assert p.influx.proc is not None
        p.influx.proc.kill()  # SIGKILL: InfluxDB answers a write only once it is in its WAL
        p.influx.proc.wait(10)
        _flowing(p, 1.0)
        p.influx.start()
        did("influxdb_sigkill")
        _flowing(p)
        p.restart_broker()
        did("broker_restart")
        _flowing(p)
        # The bridge's session holds messages it could not write (InfluxDB down) across a broker restart.
        p.influx.stop()
        _flowing(p, 2.0)
        p.restart_broker()
        _flowing(p, 1.0)
        p.influx.start()
        did("broker_restart_with_influxdb_down")
    p.settle()
    assert p.agent.alive and p.bridge.alive
    figures.update(p.check(), events=events, seconds=round(time.monotonic() - started, 1))


def test_readings_published_after_a_broker_restart_before_the_bridge_returns_reach_influxdb(
        pipeline: Pipeline, figures: dict[str, Any]) -> None:
    p = pipeline
    _flowing(p)
    p.bridge.kill9()
    p.broker.stop()
    p.broker.start()
    # The gateway reconnects and publishes while the bridge is away and its shared subscription is gone: the
    # broker has no subscriber for these readings, so the journal must keep them.
    _flowing(p, 3.0)
    c = journal_status(p.journal)
    assert c["counters"].get("mqtt.no_subscribers", 0) >= 1, c["counters"]
    assert c["journal"]["unsent"] > 0, "readings nobody subscribed to left the journal"
    p.bridge.start()
    p.settle(timeout=60)
    figures.update(p.check(), no_subscribers_pubacks=journal_status(p.journal)["counters"]["mqtt.no_subscribers"])
