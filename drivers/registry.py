"""The radio drivers by name: what each one is called in ``radios[].driver``, and everything that belongs to it.

Each driver module defines one :class:`DriverSpec` (``SPEC``). :mod:`drivers.all` lists every built-in driver
as a :class:`Listing` (its name, module, settings section and summary) without importing it, so a gateway loads
only the drivers its config uses: :func:`spec` imports one driver's module on first use, :func:`specs` (and
iterating :data:`DRIVERS`) imports every one, for what enumerates them (config reference, schema, contract
tests)::

    from drivers import registry
    registry.names()                 # ('es920lr', 'meshtastic', ...): no driver module imported
    registry.section("rak3172")      # 'p2p': no driver module imported
    registry.spec("rak3172").driver  # the ModuleDriver class (drivers.rak3172 imported now)

This module imports no driver at its top (no import cycle): driver modules import it for :class:`DriverSpec`.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drivers.errors import DriverError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from drivers.radio import ModuleDriver

__all__ = ["CAPABILITIES", "DRIVERS", "DriverSpec", "Listing", "UnknownDriver", "listings", "names", "register",
           "section", "spec", "specs", "unregister"]


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


@dataclass(frozen=True, slots=True)
class Listing:
    """A built-in driver as :mod:`drivers.all` lists it: what config needs before the driver is loaded.

    Attributes:
        name: the name in ``radios[].driver``.
        module: the module that defines the driver's ``SPEC`` (imported when the driver is first looked up).
        section: the radio's own config key, None if the driver takes no settings.
        summary: one line for docs and help.

    When the module is loaded its ``SPEC`` must say the same (checked), so the two cannot drift apart.
    """

    name: str
    module: str
    section: str | None
    summary: str


class UnknownDriver(DriverError, ValueError):
    """No driver is registered under this name; the message lists the known ones."""


_drivers: dict[str, DriverSpec] = {}
_listed: dict[str, Listing] = {}

_load_lock = threading.RLock()
_listed_loaded = False


def register(driver_spec: DriverSpec) -> DriverSpec:
    """Make a driver available under ``driver_spec.name`` (tests register drivers of their own; a built-in
    driver's spec is registered when :func:`spec` loads its module).

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


def _list_builtins() -> None:
    """Read :mod:`drivers.all`'s listings once (it imports no driver module)."""
    global _listed_loaded
    if _listed_loaded:
        return
    with _load_lock:
        if not _listed_loaded:
            from drivers.all import BUILTIN  # noqa: PLC0415  (imported late: drivers.all imports this module)

            for listing in BUILTIN:
                other = next((o for o in _listed.values() if o.section is not None and o.section == listing.section),
                             None)
                if listing.name in _listed or other is not None:
                    raise ValueError(f"drivers.all lists driver {listing.name!r} or section {listing.section!r} twice")
                _listed[listing.name] = listing
            _listed_loaded = True


def _load_listed(listing: Listing) -> DriverSpec:
    """Import a listed driver's module and register its ``SPEC``, which must agree with the listing."""
    with _load_lock:
        found = _drivers.get(listing.name)
        if found is not None:
            return found
        loaded: DriverSpec = importlib.import_module(listing.module).SPEC
        said = (loaded.name, loaded.section, loaded.summary)
        if said != (listing.name, listing.section, listing.summary):
            raise ValueError(f"{listing.module}.SPEC says (name, section, summary) {said}, drivers.all lists "
                             f"{(listing.name, listing.section, listing.summary)}")
        return register(loaded)


def listings() -> tuple[Listing, ...]:
    """The built-in drivers as :mod:`drivers.all` lists them, in its order (no driver module imported)."""
    _list_builtins()
    return tuple(_listed.values())


def specs() -> tuple[DriverSpec, ...]:
    """Every driver, built-in ones first in :mod:`drivers.all`'s order (imports every driver module)."""
    for listing in listings():
        _load_listed(listing)
    return tuple({**{n: _drivers[n] for n in _listed}, **_drivers}.values())


def names() -> tuple[str, ...]:
    """The driver names, sorted (no driver module imported)."""
    _list_builtins()
    return tuple(sorted({*_listed, *_drivers}))


def section(name: str) -> str | None:
    """The config section of the driver ``name`` (None if it takes none), without loading a listed driver.

    Raises:
        UnknownDriver: no such driver; the message lists the known names.
    """
    _list_builtins()
    listing = _listed.get(name)
    return listing.section if listing is not None else spec(name).section


def spec(name: str) -> DriverSpec:
    """The driver registered under ``name``, its module imported if it was not yet.

    Raises:
        UnknownDriver: no such driver; the message lists the known names.
    """
    _list_builtins()
    found = _drivers.get(name)
    if found is not None:
        return found
    listing = _listed.get(name)
    if listing is None:
        raise UnknownDriver(f"unknown radio driver {name!r}; known: {', '.join(names())}")
    return _load_listed(listing)


class _Drivers(Mapping[str, DriverSpec]):
    """Every driver by name (read-only); looking one up loads it, iterating names every one without loading."""

    def __getitem__(self, name: str) -> DriverSpec:
        try:
            return spec(name)
        except UnknownDriver:
            raise KeyError(name) from None

    def __iter__(self) -> Iterator[str]:
        _list_builtins()
        return iter({**dict.fromkeys(_listed), **dict.fromkeys(_drivers)})

    def __len__(self) -> int:
        return len(names())


#: Every driver by name, built-in ones first in :mod:`drivers.all`'s order (read-only).
DRIVERS: Mapping[str, DriverSpec] = _Drivers()
