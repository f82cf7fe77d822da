"""A small simulated field for integration tests: a RAK3172 simulator on a pty, a few keyed nodes, a config."""

from __future__ import annotations

import functools
import json
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.codec import frame as nodeframe
from drivers.codec import kinds
from drivers.sim.rak3172 import SimRak3172
from tests.support.gateway_config import gateway_yaml, node_key

__all__ = ["NODES", "FieldNode", "config_text", "default_values", "example_key_env", "example_keys_env",
           "journal_unsent", "node_key", "readings_of", "start_sim", "wait_configured",
           "write_config"]


@dataclass
class FieldNode:
    """A sensor node that builds authenticated denen frames with strictly increasing counters."""

    node_id: int
    kind: str
    keyed: bool = True
    counter: int = 0
    sent: list[dict[str, Any]] = field(default_factory=list)

    @property
    def hex(self) -> str:
        return f"{self.node_id:08x}"

    def frame(self, values: dict[str, float], *, receipt: bool = False, counter: int | None = None,
              key: bytes | None = None) -> bytes:
        if counter is None:
            self.counter += 1
            counter = self.counter
        body = kinds.encode_values(self.kind, values)
        k = key if key is not None else (node_key(self.node_id) if self.keyed else None)
        payload = nodeframe.build(self.node_id, counter, kinds.KIND_CODES[self.kind], body, key=k, receipt=receipt)
        self.sent.append({"fcnt": counter, "values": values})
        return payload


def default_values(kind: str, i: int) -> dict[str, float]:
    return {
        "sos": {"pressed": 1.0, "lat_deg": 35.8123, "lon_deg": 139.0987, "alt_m": 812.5, "battery_v": 3.71},
        "trap": {"fired": float(i % 2), "battery_v": 3.2},
        "water_level": {"level_cm": 120.0 + i, "battery_v": 3.6},
        "rain": {"rain_mm": 0.5 * (i % 4), "tips": float(i), "battery_v": 3.6},
        "tilt": {"tilt_x_deg": 0.25, "tilt_y_deg": -0.5, "battery_v": 3.6},
        "weather": {"temperature_c": 12.3, "humidity_pct": 81.5, "pressure_hpa": 1003.2, "battery_v": 3.6},
        "heartbeat": {"battery_v": 3.3},
    }[kind]


NODES = [
    FieldNode(0x00000101, "sos"),
    FieldNode(0x00000201, "trap"),
    FieldNode(0x00000301, "water_level"),
    FieldNode(0x00000401, "rain"),
    FieldNode(0x00000601, "weather"),
]


#: The gateway config builder under the name the integration tests import it by.
config_text = gateway_yaml


def write_config(path: Path, text: str) -> Path:
    """Write a config that may hold secrets as a gateway keeps it: readable by its owner only (mode 600).

    The file is created owner-only, so it is never readable by others even for a moment.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


@functools.cache
def _example_keys() -> tuple[tuple[str, str], ...]:
    from agent.dev.demo import EXAMPLE_KEYS, read_env_file

    return tuple(read_env_file(EXAMPLE_KEYS).items())


def example_key_env() -> dict[str, str]:
    """The public example keys of config/example-keys.env, which the example configs name with ``key_env:``."""
    return dict(_example_keys())


@contextmanager
def example_keys_env() -> Iterator[dict[str, str]]:
    """Set the example keys in ``os.environ`` for the block, as a gateway's systemd unit (EnvironmentFile=) sets
    its own, and restore the environment after. A config loaded inside keeps the keys it read."""
    keys = example_key_env()
    saved = {name: os.environ.get(name) for name in keys}
    os.environ.update(keys)
    try:
        yield keys
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def start_sim(tmp: Path, *, rng_seed: float = 7) -> SimRak3172:
    """The simulated RAK3172 ``lora0`` on a pty in ``tmp``, started; ``rng_seed`` seeds its random behaviour."""
    sim = SimRak3172(name="lora0", link=str(tmp / "lora0"), boot_delay_s=0.05, rng=random.Random(rng_seed))
    sim.start()
    return sim


def readings_of(messages: list[tuple[str, bytes, bool]], *, alerts: bool = False) -> list[dict[str, Any]]:
    """Reading objects in the order they arrived, from batch messages on .../readings/<lane>.

    Alerts (kind ``alert``, made by the gateway's rules) are left out unless ``alerts`` is true.
    """
    out: list[dict[str, Any]] = []
    for topic, payload, _ in messages:
        if "/readings/" in topic:
            out.extend(r for r in json.loads(payload)["readings"] if alerts or r["kind"] != "alert")
    return out


def journal_unsent(path: Path) -> int:
    """Unsent readings in a journal, read through a separate read-only connection (as `denen status` does)."""
    from agent.tools import status

    return status.collect(str(path))["journal"]["unsent"]


def wait_configured(sim: SimRak3172, since: int = 0, timeout: float = 15.0) -> bool:
    """Wait until the host has (re)configured the module after command number ``since`` and RX is on."""
    return sim.wait_for(
        lambda: any(c.upper() == "AT+PRECV=65533" for c in sim.commands[since:]) and sim.rx_mode == "continuous_tx",
        timeout=timeout,
    )
