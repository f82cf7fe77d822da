"""The driver contract: every registered driver, against its simulator twin on a real pty, through a RadioWorker.

Parametrised over :func:`drivers.registry.names`, so a new driver (its module, its twin ``drivers.sim.<twin>``
with ``Simulator`` and ``air_payload``, and its line in drivers/all.py) runs this suite without a change here.
Each driver runs with its own settings section at the defaults, as a config without that section gets it, or
with the twin's ``contract_settings()`` where the section has required keys (a Modbus line needs its gauges).
What it must do: configure the module and report ``configured``; deliver an uplink; notice a module reboot and
configure again; survive the port vanishing and coming back; report garbled lines and keep receiving; transmit.
A driver without a capability (``DriverSpec.capabilities``) is held to the honest alternative: no signal
strength in its uplinks, a restart of the module ridden through, a transmit refused with an error.

A twin whose uplinks are not the frames injected (a polled Modbus gauge reports readings, every interval) has a
``heard(uplink)`` method that maps a delivered uplink back to the injected frame (None: not one of them); the
suite then compares the injected frames with the distinct frames heard, in order.
"""

from __future__ import annotations

import importlib
import random
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from drivers import registry
from drivers.errors import ModuleError, ModuleTimeout
from drivers.radio import RadioWorker
from tests.drivers.recorder import Events, running

WAIT_S = 20.0  # generous: the machine running the suite may be loaded


class Rig:
    """One driver, its twin on a pty, and a running worker; frames go through the twin's ``air_payload``."""

    def __init__(self, spec: registry.DriverSpec, tmp_path: Path) -> None:
        self.spec = spec
        self.twin: ModuleType = importlib.import_module(f"drivers.sim.{spec.twin}")
        self.sim: Any = self.twin.Simulator(name="lora0", link=str(tmp_path / "lora0"), boot_delay_s=0.05,
                                            rng=random.Random(7))
        contract_settings = getattr(self.twin, "contract_settings", None)
        if contract_settings is not None:
            self.settings = contract_settings()
        else:
            self.settings = spec.settings.model_validate({}) if spec.settings is not None else None
        sections = {spec.section: self.settings} if spec.section is not None else {}
        self.config = SimpleNamespace(name="lora0", driver=spec.name, port=self.sim.path, baudrate=115200,
                                      **sections)
        self.events = Events(wait_s=WAIT_S)
        self.worker = RadioWorker(self.config, self.events, reopen_min_s=0.05, reopen_max_s=0.3,
                                  rng=random.Random(3))

    def start(self) -> None:
        self.sim.start(wait=True)
        self.worker.start()
        self.running()

    def stop(self) -> None:
        self.worker.stop()
        self.sim.stop()

    def running(self) -> None:
        deadline = time.monotonic() + WAIT_S
        while self.worker.state != "running":
            assert time.monotonic() < deadline, f"worker state {self.worker.state!r}, not running"
            time.sleep(0.01)

    def send(self, frame: bytes) -> None:
        """A node sends ``frame``; retried until the module is ready to hand it over (it refuses while deaf)."""
        air = self.twin.air_payload(frame, self.settings)
        deadline = time.monotonic() + WAIT_S
        while not self.sim.inject_uplink(air, rssi=-80, snr=5.0, src=0x0042):
            assert time.monotonic() < deadline, "module never got ready to receive"
            time.sleep(0.01)

    def can(self, capability: str) -> bool:
        return capability in self.spec.capabilities

    def received(self, *frames: bytes) -> None:
        heard = getattr(self.sim, "heard", None)
        if heard is None:
            self.events.wait(lambda: self.events.payloads() == list(frames))
        else:
            self.events.wait(lambda: self.events.distinct(heard) == list(frames))


@pytest.fixture(params=registry.names())
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    yield from running(Rig(registry.spec(request.param), tmp_path))


def test_every_driver_has_a_twin_that_the_suite_can_drive() -> None:
    assert registry.names(), "no driver registered"
    for name in registry.names():
        spec = registry.spec(name)
        twin = importlib.import_module(f"drivers.sim.{spec.twin}")
        assert callable(twin.Simulator) and callable(twin.air_payload), name
        assert (spec.section is None) == (spec.settings is None), name
        assert spec.driver.name == name
        assert spec.capabilities <= set(registry.CAPABILITIES), name


def test_configures_and_receives(rig: Rig) -> None:
    assert rig.events.count("configured") == 1
    assert rig.worker.module_info, "configure() told nothing about the module"
    frame = b"\x10\x00\xa1\xb2\xc3\x01"
    rig.send(frame)
    rig.received(frame)
    u = rig.events.uplinks[-1]
    assert u.radio == "lora0"
    expected_rssi = -80 if rig.can("link_quality") else None
    assert u.rssi == expected_rssi
    assert abs(u.received_us - time.time_ns() // 1000) < 10_000_000
    assert rig.events.count("module_reboot") == rig.events.count("garbled_line") == 0, rig.events.incidents


def test_module_reboot_is_noticed_and_the_module_configured_again(rig: Rig) -> None:
    rig.send(b"before")
    rig.received(b"before")
    rig.sim.reboot(noise=True)
    if rig.can("reboot_notice"):
        rig.events.wait(lambda: rig.events.count("configured") == 2)
        assert rig.events.count("module_reboot") == 1
    else:  # nothing to notice: the driver rides the restart through and reads on
        rig.sim.wait_for(lambda: rig.sim.booted, WAIT_S)
        assert rig.events.count("configured") == 1 and rig.events.count("module_reboot") == 0
    rig.running()
    rig.send(b"after")
    rig.received(b"before", b"after")


def test_unplug_and_replug(rig: Rig) -> None:
    rig.sim.unplug()
    rig.events.wait(lambda: rig.events.count("port_lost") == 1)
    assert rig.worker.state in ("lost", "opening")
    rig.events.wait(lambda: rig.events.count("port_open_failed") >= 1)  # reopening fails while it is gone
    rig.sim.replug()
    rig.events.wait(lambda: rig.events.count("reopen") == 1)
    rig.events.wait(lambda: rig.events.count("configured") == 2)
    assert rig.worker.reopens == 1
    rig.running()
    rig.send(b"back")
    rig.received(b"back")


def test_garbled_lines_are_reported_and_receiving_goes_on(rig: Rig) -> None:
    rig.send(b"one")
    rig.received(b"one")
    rig.sim.inject_garbage(b"\xfc\xfc\xfc\x00\xff\x13\r\n")
    rig.events.wait(lambda: rig.events.count("garbled_line") + rig.events.count("bad_hex") >= 1)
    rig.send(b"two")
    rig.received(b"one", b"two")
    assert rig.worker.state == "running"
    assert rig.events.count("configured") == 1 and rig.events.count("port_lost") == 0


def test_transmit(rig: Rig) -> None:
    frame = b"\x7f\x00\xa1\xb2"
    if rig.can("transmit"):
        rig.worker.transmit(frame, timeout=WAIT_S)
        assert rig.sim.transmitted[-1] == rig.twin.air_payload(frame, rig.settings)
        with pytest.raises(ValueError):
            rig.worker.transmit(b"", timeout=WAIT_S)
    else:  # refused with an error (never silently dropped), whether the driver or the worker says so
        with pytest.raises((ModuleError, ModuleTimeout)):
            rig.worker.transmit(frame, timeout=1.0)
    rig.send(b"still listening")
    rig.received(b"still listening")
    assert rig.worker.state == "running"
