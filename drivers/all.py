"""Every radio driver that ships with denen, registered here (Telegraf's ``all/`` idea).

A new driver is one module that defines its :class:`drivers.registry.DriverSpec` as ``SPEC``, its simulator twin
in ``drivers/sim/``, and its line here. Nothing else imports driver modules to register them:
:mod:`drivers.registry` imports this module on its first look-up. The order here is the order drivers are listed
in where order shows (scenario ``model:`` errors).
"""

from drivers import es920lr, meshtastic, modbus, rak3172
from drivers.registry import register

__all__: list[str] = []

register(rak3172.SPEC)
register(es920lr.SPEC)
register(modbus.SPEC)
register(meshtastic.SPEC)
