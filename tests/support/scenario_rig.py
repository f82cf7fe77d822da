"""A rig for scenario tests (tests/scenarios): the whole gateway on real parts, watched from the outside.

What is real: a simulated RAK3172 speaking its exact bytes on a pty, the agent's ``Gateway`` built from config text,
a Mosquitto broker (``broker`` fixture), and gpiozero's ``MockFactory`` pins selected by the config's
``gpio.pin_factory: mock``. What the rig adds is observation:

* :class:`TimedCollector` records each message with its monotonic arrival time, so a test can bound how long an
  alert took from its triggering frame to the broker;
* :class:`ScenarioNode` builds authenticated frames of any kind with one counter per node (a trap sensor that also
  sends heartbeats);
* :class:`WallClock` moves the wall clock (``time.time_ns``, which stamps readings and drives the rules) forward by
  whole minutes, so a two-hour typhoon of 10-minute gauge reports runs in seconds. Monotonic time is untouched.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.gateway import clock as agent_clock
from agent.config import parse_config
from agent.dev.devbroker import Mosquitto
from agent.gateway.core import Gateway
from drivers.codec import frame as nodeframe
from drivers.codec import kinds
from drivers.sim.rak3172 import SimRak3172
from tests.support import gateway_config
from tests.support.gateway_config import LAMP_PIN, SIREN_PIN
from tests.support.broker import Collector
from tests.support.field import node_key, start_sim
from tests.support.polling import wait_until

__all__ = [
    "GATEWAY",
    "LAMP_PIN",
    "PREFIX",
    "SIREN_PIN",
    "Published",
    "ScenarioNode",
    "ScenarioRig",
    "TimedCollector",
    "WallClock",
    "gateway_yaml",
]

GATEWAY = "gw-scenario-01"
PREFIX = "denen/v1"

#: What a test may wait for at most, in seconds: generous against a loaded 2-core machine, never relied upon.
WAIT_S = 10.0


@dataclass(frozen=True)
class Published:
    """One reading as the broker delivered it: when (monotonic s), on which topic, and the reading object."""

    at: float
    topic: str
    reading: dict[str, Any]

    @property
    def alert(self) -> dict[str, Any]:
        return self.reading["alert"]


class TimedCollector(Collector):
    """A :class:`Collector` that also notes the monotonic arrival time of every message."""

    def __init__(self, broker: Mosquitto, topic: str = "#", **kw: Any) -> None:
        self.arrivals: list[float] = []
        super().__init__(broker, topic, **kw)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._cond:
            # Appended under the same lock as the message, so arrivals[i] belongs to messages[i].
            self.arrivals.append(time.monotonic())
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))
            self._cond.notify_all()

    def readings(self) -> list[Published]:
        """Every reading delivered on a ``.../readings/<lane>`` topic, in arrival order (alerts included)."""
        with self._cond:
            return self._readings_locked()

    def alerts(self) -> list[Published]:
        """Readings of kind ``alert``, in arrival order, repeats included."""
        return [p for p in self.readings() if p.reading["kind"] == "alert"]

    def first_alerts(self) -> list[Published]:
        """Each alert event (alert id) once, at its first arrival: repeats left out."""
        seen: set[str] = set()
        out = []
        for p in self.alerts():
            if p.alert["id"] not in seen:
                seen.add(p.alert["id"])
                out.append(p)
        return out

    def wait_reading(self, match: Callable[[Published], bool], timeout: float = WAIT_S) -> Published:
        """The first delivered reading that ``match`` accepts; fails the test after ``timeout`` seconds."""
        found: list[Published] = []

        def seen(_: object) -> bool:
            # Parsing happens under the collector's lock (wait_for holds it); the lists are short in scenarios.
            hits = [p for p in self._readings_locked() if match(p)]
            found[:] = hits[:1]
            return bool(hits)

        if not self.wait_for(seen, timeout):
            kinds_seen = [(p.reading["kind"], p.reading.get("alert", {}).get("key")) for p in self.readings()]
            pytest.fail(f"no matching reading within {timeout} s; delivered: {kinds_seen}")
        return found[0]

    def _readings_locked(self) -> list[Published]:
        """:meth:`readings`, for a caller that holds the collector's lock (a re-entrant one)."""
        out: list[Published] = []
        for at, (topic, payload, _) in zip(self.arrivals, self.messages, strict=True):
            if "/readings/" in topic:
                out.extend(Published(at, topic, r) for r in json.loads(payload)["readings"])
        return out


@dataclass
class ScenarioNode:
    """A keyed sensor node: frames of its own kind (or a heartbeat) with one strictly increasing counter."""

    node_id: int
    kind: str
    name: str
    interval_s: int = 600
    counter: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)

    @property
    def hex(self) -> str:
        return f"{self.node_id:08x}"

    @property
    def key(self) -> bytes:
        return node_key(self.node_id)

    def frame(self, values: dict[str, float], *, kind: str | None = None, receipt: bool = False) -> bytes:
        """The next authenticated frame; remembers its counter in :attr:`sent`."""
        kind = kind or self.kind
        self.counter += 1
        body = kinds.encode_values(kind, values)
        payload = nodeframe.build(self.node_id, self.counter, kinds.KIND_CODES[kind], body, key=self.key,
                                  receipt=receipt)
        self.sent.append({"fcnt": self.counter, "kind": kind, "values": values})
        return payload

    def reading_id(self, fcnt: int | None = None) -> str:
        """The identity the gateway gives this node's reading of counter ``fcnt`` (default: the last one)."""
        return f"{GATEWAY}/{self.hex}/{self.counter if fcnt is None else fcnt}"


def gateway_yaml(**kw: Any) -> str:
    """A gateway config for a scenario (:func:`tests.support.gateway_config.gateway_yaml` with the scenario's
    gateway id, site, topic prefix and a short reconnect backoff); ``rules``, ``gpio`` and ``receipts`` are the
    sections' bodies, indented two spaces."""
    return gateway_config.gateway_yaml(**{"gateway": GATEWAY, "site": "scenario", "topic_prefix": PREFIX,
                                          "reconnect_s": (0.2, 0.5), **kw})


class WallClock:
    """Time passing faster: the wall clock (``time.time_ns``) and the boot-time clock moved forward on demand.

    The gateway stamps readings and evaluates its rules on ``time.time_ns``; moving it forward between frames is
    what a gauge reporting every 10 minutes looks like to the gateway, without waiting 10 minutes. The boot-time
    clock (``agent.gateway.clock.boot_us``) moves with it, so the gateway sees time pass rather than its clock stepped
    (which would shift the rules' windows). ``time.monotonic`` runs true: timeouts stay real.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._real = time.time_ns
        real_boot_us = agent_clock.boot_us
        self.offset_ns = 0
        monkeypatch.setattr(time, "time_ns", self.time_ns)
        monkeypatch.setattr(agent_clock, "boot_us", lambda: real_boot_us() + self.offset_ns // 1000)

    def time_ns(self) -> int:
        return self._real() + self.offset_ns

    def advance(self, seconds: float) -> None:
        self.offset_ns += round(seconds * 1e9)


class ScenarioRig:
    """The simulated module, the gateway and a timed collector, started together and stopped together."""

    def __init__(self, tmp: Path, broker: Mosquitto) -> None:
        self.tmp = tmp
        self.broker = broker
        self.sim: SimRak3172 = start_sim(tmp)
        self.gw: Gateway | None = None
        # A persistent session: the collector misses nothing the broker received while the collector was away
        # (the broker restarts in the SOS scenario).
        self.collector = TimedCollector(broker, f"{PREFIX}/#", client_id="scenario-backend", persistent=True)

    def start(self, *, nodes: list[ScenarioNode], rules: str, gpio: str, receipts: str = "") -> Gateway:
        text = gateway_yaml(port=self.sim.path, mqtt_port=self.broker.port, journal=self.tmp / "journal.db",
                            nodes=nodes, rules=rules, gpio=gpio, receipts=receipts)
        self.gw = Gateway(parse_config(text))
        self.gw.start()
        assert self.sim.wait_for(lambda: self.sim.rx_mode == "continuous_tx", timeout=WAIT_S), self.sim.commands
        assert wait_until(lambda: self.gw is not None and self.gw.link.connected, WAIT_S), "gateway never connected"
        return self.gw

    def close(self) -> None:
        if self.gw is not None:
            self.gw.stop()
        self.collector.close()
        self.sim.stop()

    # -- the field side ------------------------------------------------------------------------------------------
    def send(self, node: ScenarioNode, values: dict[str, float], *, kind: str | None = None, receipt: bool = False,
             rssi: int = -105, snr: float = -3.0) -> float:
        """A node's frame heard over the air; returns the monotonic time it went onto the serial line."""
        payload = node.frame(values, kind=kind, receipt=receipt)
        at = time.monotonic()
        assert self.sim.inject_uplink(payload, rssi=rssi, snr=snr), "the module was not listening"
        return at

    # -- the gateway's pins ------------------------------------------------------------------------------------
    def pin(self, number: int) -> Any:
        """The MockPin behind a configured output: the factory the gateway built from ``gpio.pin_factory: mock``."""
        assert self.gw is not None and self.gw.edge.io is not None, "GPIO was not set up"
        return self.gw.edge.io.pin_factory.pin(number)

    def siren_sounding(self) -> bool:
        return bool(self.pin(SIREN_PIN).state)

    def lamp_state(self) -> str:
        assert self.gw is not None and self.gw.edge.io is not None
        return self.gw.edge.io.lamp_state

    def lamp_blinks(self, *, toggles: int = 4, timeout: float = 3.0) -> bool:
        """Whether the lamp pin changes state at least ``toggles`` times within ``timeout`` seconds."""
        pin = self.pin(LAMP_PIN)
        start = len(pin.states)
        return wait_until(lambda: len(pin.states) - start >= toggles, timeout, interval=0.02)

    # -- the journal ------------------------------------------------------------------------------------------
    def journaled(self) -> list[dict[str, Any]]:
        """Unsent readings in the journal, read through a separate read-only connection (as ``denen status``)."""
        db = sqlite3.connect(f"file:{self.tmp / 'journal.db'}?mode=ro", uri=True, timeout=5)
        try:
            return [json.loads(body) for (body,) in db.execute("SELECT body FROM reading ORDER BY lane, seq")]
        finally:
            db.close()

    # -- the backend side --------------------------------------------------------------------------------------
    def confirm_alerts(self, *alert_ids: str) -> None:
        """What the backend does once it has an alert: publish its id on ``cmd/alert-ack``."""
        info = self.collector.client.publish(f"{PREFIX}/{GATEWAY}/cmd/alert-ack",
                                             json.dumps({"alert_ids": list(alert_ids)}), qos=1)
        info.wait_for_publish(WAIT_S)


def rig_fixture(tmp_path: Path, broker: Mosquitto) -> Iterator[ScenarioRig]:
    """Body of the ``rig`` fixture (tests/scenarios/conftest.py)."""
    rig = ScenarioRig(tmp_path, broker)
    try:
        yield rig
    finally:
        rig.close()
