"""The MQTT v5 client of a backend service (the bridge, the console): reconnect backoff, login and TLS taken from
its config's ``mqtt`` section, the same way for both."""

from __future__ import annotations

import ssl
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

__all__ = ["new_client"]


def new_client(cfg: Any, client_id: str) -> mqtt.Client:
    """A paho client (MQTT v5) for ``client_id``, configured from ``cfg`` (a bridge's or console's ``mqtt``
    section: ``reconnect_min_s``/``reconnect_max_s`` in seconds, ``username``, ``password_value()``,
    ``tls_settings()``); callbacks are the caller's to set."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
    if cfg.username is not None:
        client.username_pw_set(cfg.username, cfg.password_value())
    tls = cfg.tls_settings()
    if tls is not None:
        client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                       cert_reqs=ssl.CERT_REQUIRED)
        client.tls_insecure_set(tls.insecure)
    return client
