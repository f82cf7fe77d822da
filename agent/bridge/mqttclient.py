"""The MQTT v5 client of a backend service (the bridge, the console): reconnect backoff, login and TLS taken from
its config's ``mqtt`` section, the same way for both."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.config.mqtt import apply_login

__all__ = ["new_client"]


def new_client(cfg: Any, client_id: str) -> mqtt.Client:
    """A paho client (MQTT v5) for ``client_id``, configured from ``cfg`` (a bridge's or console's ``mqtt``
    section: ``reconnect_min_s``/``reconnect_max_s`` in seconds, ``username``, ``password_value()``,
    ``tls_settings()``); callbacks are the caller's to set."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
    apply_login(client, cfg)
    return client
