"""Helpers of the bridge tests: reading batches as the gateways publish them, a publisher, a bridge config."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.bridge import BridgeConfig, parse_bridge_config
from agent.dev.devbroker import Mosquitto
from tests.support.registry import write_registry

PREFIX = "denen/v1"
#: 2026-01-01T00:00:00Z in µs: test timestamps are fixed, so expected values never depend on the clock.
T0_US = 1_767_225_600_000_000


def reading(gateway: str, node: int, fcnt: int, kind: str, values: dict[str, Any], *, ts_us: int | None = None,
            name: str | None = "auto", rssi: int | None = -97, snr: float | None = 6.5, auth: str = "mic",
            clock: str = "synced") -> dict[str, Any]:
    """One reading object of the payload schema (README "Reading batch schema")."""
    node_hex = f"{node:08x}"
    lane = {"sos": "sos", "trap": "alarm"}.get(kind, "telemetry")
    r: dict[str, Any] = {
        "id": f"{gateway}/{node_hex}/{fcnt}", "node": node_hex,
        "name": f"{kind.replace('_', '-')}-{node & 0xFFFF}" if name == "auto" else name,
        "fcnt": fcnt, "kind": kind, "lane": lane,
        "ts_us": ts_us if ts_us is not None else T0_US + fcnt * 1000 + (node & 0xFF),
        "clock": clock, "radio": "lora0", "rssi": rssi, "snr": snr, "auth": auth, "receipt": False,
        "values": values,
    }
    return r


def batch(gateway: str, readings: list[dict[str, Any]], *, site: str = "testville") -> bytes:
    lane = readings[0]["lane"]
    doc = {"schema": "denen.readings/1", "gateway": gateway, "site": site, "lane": lane,
           "sent_us": T0_US, "readings": readings}
    return json.dumps(doc, separators=(",", ":")).encode()


def batches(gateway: str, readings: list[dict[str, Any]], size: int) -> list[tuple[str, bytes]]:
    """The messages ``gateway`` publishes for ``readings`` (all telemetry): batches of ``size`` readings, in order,
    each with its topic."""
    return [(topic(gateway), batch(gateway, readings[i:i + size])) for i in range(0, len(readings), size)]


def telemetry_readings(gateway: str, count: int, *, nodes: int = 10, start_fcnt: int = 1) -> list[dict[str, Any]]:
    """``count`` water_level readings round-robin over ``nodes`` nodes, each with its own increasing counter."""
    out = []
    for i in range(count):
        node = 0x300 + i % nodes
        fcnt = start_fcnt + i // nodes
        out.append(reading(gateway, node, fcnt, "water_level",
                           {"level_cm": 100.0 + (i % 997) * 0.5, "battery_v": 3.6}))
    return out


def topic(gateway: str, lane: str = "telemetry") -> str:
    return f"{PREFIX}/{gateway}/readings/{lane}"


class Publisher:
    """A QoS 1 publisher that waits for every PUBACK (so the broker holds what it sent)."""

    def __init__(self, broker: Mosquitto, client_id: str = "test-publisher") -> None:
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def publish(self, items: Iterable[tuple[str, bytes]], *, retain: bool = False, timeout: float = 30.0) -> None:
        infos = [self.client.publish(t, p, qos=1, retain=retain) for t, p in items]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            assert info.is_published(), "the broker did not acknowledge a test message"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def bridge_config_text(*, broker: Mosquitto, sink: str, dead_letter: Path, client_id: str = "bridge-test-1",
                       max_lines: int = 5000, max_messages: int = 500, max_wait_ms: int = 50,
                       group: str = "denen-bridge", registry: bool = True, level: str = "debug") -> str:
    """A bridge config for the test broker; its gateway registry (beside the dead-letter store; none when
    ``registry`` is false) lists the test gateways with site "testville" (tests.support.registry)."""
    gateways = f"gateways:\n  file: {write_registry(Path(dead_letter).parent / 'gateways.yaml')}\n" if registry else ""
    return f"""
mqtt:
  host: {broker.host}
  port: {broker.port}
  client_id: {client_id}
  group: {group}
  topic_prefix: {PREFIX}
  reconnect_min_s: 0.1
  reconnect_max_s: 0.5
sink:
{sink}
batch:
  max_lines: {max_lines}
  max_messages: {max_messages}
  max_wait_ms: {max_wait_ms}
dead_letter:
  path: {dead_letter}
{gateways}log:
  level: {level}
"""


def write_v1_bridge_config(work: Path, broker: Mosquitto, influx_url: str, client_id: str, *,
                           sites: Mapping[str, str] | None = None, more: str = "", **settings: Any) -> Path:
    """Write ``<client_id>.yaml`` in ``work``: :func:`bridge_config_text` with ``settings``, writing to the InfluxDB
    1.x at ``influx_url`` (:func:`v1_sink`), dead letters in ``<client_id>.db``, then the YAML sections ``more``.
    ``sites`` (gateway id -> site) replaces the test gateways in ``work/gateways.yaml``, the registry every config
    written to ``work`` names."""
    path = work / f"{client_id}.yaml"
    path.write_text(bridge_config_text(broker=broker, sink=v1_sink(influx_url), dead_letter=work / f"{client_id}.db",
                                       client_id=client_id, **settings) + more)
    if sites is not None:
        write_registry(work / "gateways.yaml", sites)
    return path


def v1_sink(url: str, database: str = "denen") -> str:
    return f"""  type: v1
  url: {url}
  database: {database}
  timeout_s: 5
  retry_min_s: 0.05
  retry_max_s: 0.3"""


def v2_sink(url: str) -> str:
    return f"""  type: v2
  url: {url}
  org: test-org
  bucket: denen
  token: test-token
  timeout_s: 5
  retry_min_s: 0.05
  retry_max_s: 0.3"""


def bridge_config(**kwargs: Any) -> BridgeConfig:
    return parse_bridge_config(bridge_config_text(**kwargs))



