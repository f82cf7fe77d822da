"""Every radio driver that ships with denen, listed here (Telegraf's ``all/`` idea).

A new driver is one module that defines its :class:`drivers.registry.DriverSpec` as ``SPEC``, its simulator twin
in ``drivers/sim/``, and its line here. Nothing here imports a driver module: :mod:`drivers.registry` reads this
list on its first look-up and imports a driver's module when that driver is first looked up, so a gateway pays
only for the drivers its config names. The order here is the order drivers are listed in where order shows
(scenario ``model:`` errors, the config reference).
"""

from drivers.registry import Listing

__all__ = ["BUILTIN"]

#: The built-in drivers: name, module, settings section, summary (the module's ``SPEC`` must say the same).
BUILTIN: tuple[Listing, ...] = (
    Listing("rak3172", "drivers.rak3172", "p2p", "RAK3172, RUI3 LoRa P2P"),
    Listing("es920lr", "drivers.es920lr", "es920", "EASEL ES920LR"),
    Listing("modbus", "drivers.modbus", "modbus", "Modbus RTU gauges on RS-485"),
    Listing("meshtastic", "drivers.meshtastic", "meshtastic", "Meshtastic device, serial API (protobuf stream)"),
)
