"""Every radio driver that ships with denen, registered by importing its module (Telegraf's ``all/`` idea).

A new driver is one module that calls :func:`drivers.registry.register`, its simulator twin in ``drivers/sim/``,
and one line here. Nothing else imports driver modules for their registration: :mod:`drivers.registry` imports
this module on its first look-up. The order here is the order drivers are listed in (scenario ``model:`` errors).
"""

from drivers import rak3172  # noqa: F401  (registration)
from drivers import es920lr  # noqa: F401,I001  (registration)

__all__: list[str] = []
