"""The radio drivers by name: what each one is called in ``radios[].driver``, and everything that belongs to it.

Each driver module defines one :class:`DriverSpec` (``SPEC``); :mod:`drivers.all` imports every driver module and
registers them in a fixed order, and the look-ups here import it on first use, so a reader never needs to know
which modules exist::

    from drivers import registry
    registry.names()                 # ('es920lr', 'rak3172')
    registry.spec("rak3172").driver  # the ModuleDriver class

This module imports no driver at its top (no import cycle): driver modules import it for :class:`DriverSpec`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from drivers.errors import DriverError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from drivers.radio import ModuleDriver

__all__ = ["CAPABILITIES", "DRIVERS", "DriverSpec", "UnknownDriver", "names", "register", "spec", "specs", "unregister"]


#: What a driver may do beyond receiving: ``transmit`` (send frames, e.g. SOS receipts), ``link_quality`` (its
#: uplinks carry RSSI and SNR), ``reboot_notice`` (it notices the module restarting by itself and configures it
#: again).
CAPABILITIES = ("transmit", "link_quality", "reboot_notice")


@dataclass(frozen=True, slots=True)
class DriverSpec:
    """One radio driver and what belongs to it.

    Attributes:
        name: the name in ``radios[].driver``.
        driver: the protocol over a :class:`drivers.radio.Link`.
        section: the radio's own config key (``p2p``, ``es920``), None if the driver takes no settings.
        settings: the pydantic model of that section (it lives in the driver's module), None without a section.
        probe: ``denen doctor``'s probe of a module on an open port (see :mod:`drivers.probe`), None if none.
        twin: the simulator model name scenario files use (``model:``); the simulator lives in
            ``drivers.sim.<twin>`` and is that module's ``Simulator``.
        summary: one line for docs and help (``RAK3172, RUI3 LoRa P2P``).
        capabilities: what of :data:`CAPABILITIES` the driver does; the driver contract suite
            (tests/drivers/test_contract.py) checks exactly these. A Modbus line, for instance, polls gauges: it
            sends no radio frames, reports no signal strength, and its slaves print nothing when they restart.
    """

    name: str
    driver: type[ModuleDriver]
    section: str | None
    settings: type[BaseModel] | None
    probe: Callable[..., Any] | None
    twin: str
    summary: str
    capabilities: frozenset[str] = frozenset({"transmit", "link_quality", "reboot_notice"})

    def __post_init__(self) -> None:
        unknown = sorted(self.capabilities - set(CAPABILITIES))
        if unknown:
            raise ValueError(f"driver {self.name!r}: unknown capabilities {unknown}; known: {', '.join(CAPABILITIES)}")


class UnknownDriver(DriverError, ValueError):
    """No driver is registered under this name; the message lists the known ones."""


_drivers: dict[str, DriverSpec] = {}
#: Every registered driver by name, in registration order (read-only view).
DRIVERS: Mapping[str, DriverSpec] = MappingProxyType(_drivers)

_load_lock = threading.Lock()
_loaded = False


def register(driver_spec: DriverSpec) -> DriverSpec:
    """Make a driver available under ``driver_spec.name`` (drivers/all.py; tests register drivers of their own).

    Also sets the driver class's ``name``. Registering the same spec again is harmless (a module reloaded).

    Raises:
        ValueError: another driver, a section or a twin of another driver has that name already.
    """
    name = driver_spec.name
    old = _drivers.get(name)
    if old is not None and old.driver is not driver_spec.driver:
        raise ValueError(f"driver name {name!r} registered twice")
    for other in _drivers.values():
        if other.name == name:
            continue
        if driver_spec.section is not None and other.section == driver_spec.section:
            raise ValueError(f"config section {driver_spec.section!r} of driver {name!r} is taken by {other.name!r}")
        if other.twin == driver_spec.twin:
            raise ValueError(f"simulator twin {driver_spec.twin!r} of driver {name!r} is taken by {other.name!r}")
    driver_spec.driver.name = name
    _drivers[name] = driver_spec
    return driver_spec


def unregister(name: str) -> None:
    """Forget the driver registered under ``name`` (tests that register a driver of their own)."""
    _drivers.pop(name, None)


def _load() -> None:
    """Import :mod:`drivers.all` once, so every built-in driver is registered before the first look-up."""
    global _loaded
    if _loaded:
        return
    with _load_lock:
        if not _loaded:
            import drivers.all  # noqa: F401,PLC0415  (registration; imported late: the drivers import this module)

            _loaded = True


def specs() -> tuple[DriverSpec, ...]:
    """Every registered driver, in registration order."""
    _load()
    return tuple(_drivers.values())


def names() -> tuple[str, ...]:
    """The registered driver names, sorted."""
    _load()
    return tuple(sorted(_drivers))


def spec(name: str) -> DriverSpec:
    """The driver registered under ``name``.

    Raises:
        UnknownDriver: no such driver; the message lists the known names.
    """
    _load()
    found = _drivers.get(name)
    if found is None:
        raise UnknownDriver(f"unknown radio driver {name!r}; known: {', '.join(sorted(_drivers))}")
    return found
