"""``denen bridge``: MQTT reading batches -> InfluxDB line protocol, acknowledged only after the write.

Modules:

* :mod:`agent.bridge.config` -- the bridge's YAML config (``config/bridge/bridge.yaml``), loaded like the
  gateway's;
* :mod:`agent.bridge.lineproto` -- the serializer: payload schema -> README "InfluxDB schema" lines, built from
  :mod:`agent.bridge.schema` (the documents' vocabularies, the outcome types, text checks),
  :mod:`agent.bridge.reading_points` (reading batches), :mod:`agent.bridge.document_points` (status, state and
  result documents) and :mod:`agent.bridge.encoding` (line protocol escaping);
* :mod:`agent.bridge.sinks` -- the InfluxDB v1 ``/write`` sink (urllib3) and the v2 sink (influxdb-client);
* :mod:`agent.bridge.policy` -- the one error policy of both sinks (retry, or dead-letter refused lines);
* :mod:`agent.bridge.deadletter` -- the SQLite dead-letter store;
* :mod:`agent.bridge.deadletter_cli` -- ``denen bridge dead-letters list|show|replay|purge``;
* :mod:`agent.bridge.health` -- the bridge's own ``bridge_health`` points and its systemd ``STATUS=``;
* :mod:`agent.bridge.bridge` -- the MQTT consumer and writer that tie them together: its network-thread half in
  :mod:`agent.bridge.receiving`, its writer-thread half in :mod:`agent.bridge.writing`;
* :mod:`agent.bridge.mqttclient` -- the MQTT v5 client of the bridge and the console (login, TLS, backoff);
* :mod:`agent.bridge.errors` -- the error tree.

The names below are re-exported lazily (module ``__getattr__``): importing ``agent.bridge`` (as the CLI does to
reach ``agent.bridge.deadletter_cli``) loads neither paho, urllib3, pydantic nor influxdb-client; the bridge's
optional dependencies (the ``bridge`` extra) are loaded only by the code that uses them.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Abandoned": "policy",
    "Bridge": "bridge",
    "BridgeConfig": "config",
    "BridgeError": "errors",
    "Converted": "lineproto",
    "DeadLetter": "deadletter",
    "DeadLetterStore": "deadletter",
    "Reject": "lineproto",
    "RejectedLine": "policy",
    "Serializer": "lineproto",
    "Sink": "sinks",
    "SinkError": "errors",
    "SinkRefused": "errors",
    "SinkRejected": "errors",
    "SinkUnavailable": "errors",
    "V1Sink": "sinks",
    "V2Sink": "sinks",
    "WritePolicy": "policy",
    "load_bridge_config": "config",
    "make_sink": "sinks",
    "parse_bridge_config": "config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
