"""``denen bridge``: MQTT reading batches -> InfluxDB line protocol, acknowledged only after the write.

Modules:

* :mod:`agent.bridge.config` -- the bridge's YAML config (``config/bridge/bridge.yaml``), loaded like the
  gateway's;
* :mod:`agent.bridge.lineproto` -- the serializer: payload schema -> README "InfluxDB schema" lines;
* :mod:`agent.bridge.sinks` -- the InfluxDB v1 ``/write`` sink (urllib3) and the v2 sink (influxdb-client);
* :mod:`agent.bridge.policy` -- the one error policy of both sinks (retry, or dead-letter refused lines);
* :mod:`agent.bridge.deadletter` -- the SQLite dead-letter store;
* :mod:`agent.bridge.bridge` -- the MQTT consumer and writer that tie them together;
* :mod:`agent.bridge.errors` -- the error tree.

influxdb-client is needed only by the v2 sink (``pip install denen-agent[bridge]``) and imported only there.
"""

from agent.bridge.bridge import Bridge
from agent.bridge.config import BridgeConfig, load_bridge_config, parse_bridge_config
from agent.bridge.deadletter import DeadLetter, DeadLetterStore
from agent.bridge.errors import BridgeError, SinkError, SinkRefused, SinkRejected, SinkUnavailable
from agent.bridge.lineproto import Converted, Reject, Serializer
from agent.bridge.policy import Abandoned, RejectedLine, WritePolicy
from agent.bridge.sinks import Sink, V1Sink, V2Sink, make_sink

__all__ = [
    "Abandoned",
    "Bridge",
    "BridgeConfig",
    "BridgeError",
    "Converted",
    "DeadLetter",
    "DeadLetterStore",
    "Reject",
    "RejectedLine",
    "Serializer",
    "Sink",
    "SinkError",
    "SinkRefused",
    "SinkRejected",
    "SinkUnavailable",
    "V1Sink",
    "V2Sink",
    "WritePolicy",
    "load_bridge_config",
    "make_sink",
    "parse_bridge_config",
]
