"""Shared pieces of the benchmark: a field of keyed nodes, its config, pre-built radio lines, statistics."""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.config import Config, parse_config
from agent.journal import Entry
from agent.readings import FrameDecoder
from drivers.types import Uplink
from tests.support.field import FieldNode, default_values, node_key

GATEWAY_ID = "gw-bench-01"
RADIO = "lora0"

#: Telemetry kinds the field cycles through (all in the telemetry lane, as a river/rain station field would be).
TELEMETRY_KINDS = ("water_level", "rain", "weather", "tilt")

#: Ids of bench nodes: telemetry nodes count up from here, SOS buttons from SOS_BASE.
TELEMETRY_BASE = 0x00B00000
SOS_BASE = 0x00C00000


def telemetry_nodes(count: int) -> list[FieldNode]:
    """``count`` keyed telemetry nodes with distinct ids and kinds cycling through :data:`TELEMETRY_KINDS`."""
    return [FieldNode(TELEMETRY_BASE + i, TELEMETRY_KINDS[i % len(TELEMETRY_KINDS)]) for i in range(count)]


def sos_nodes(count: int) -> list[FieldNode]:
    return [FieldNode(SOS_BASE + i, "sos") for i in range(count)]


def config_text(*, port: str, mqtt_port: int, journal: Path, nodes: Sequence[FieldNode],
                batch: int | None = None, window: int | None = None, quota_mb: float = 2048) -> str:
    """A gateway config for the bench: one RAK3172 radio, every node keyed (``unauthenticated: reject``).

    ``batch`` / ``window`` set ``mqtt.batch_max_readings`` / ``mqtt.inflight_window``; None keeps the config
    default. The health interval is an hour so no diagnostics reading lands in the middle of a measurement, and the
    quota is far above what a run journals so eviction never runs.
    """
    names: dict[str, int] = {}
    node_lines = []
    for n in nodes:
        base = n.kind.replace("_", "-")
        names[base] = names.get(base, 0) + 1
        node_lines.append(
            f'  - id: "{n.hex}"\n'
            f"    name: {base}-{names[base]}\n"
            f"    kind: {n.kind}\n"
            f'    key: "{node_key(n.node_id).hex()}"\n'
            f"    interval_s: 600"
        )
    mqtt_extra = ""
    if batch is not None:
        mqtt_extra += f"  batch_max_readings: {batch}\n"
    if window is not None:
        mqtt_extra += f"  inflight_window: {window}\n"
    return (
        f"gateway:\n  id: {GATEWAY_ID}\n  site: bench\n"
        f"journal:\n  path: {journal}\n  quota_mb: {quota_mb}\n"
        f"mqtt:\n  host: 127.0.0.1\n  port: {mqtt_port}\n  reconnect_min_s: 0.1\n  reconnect_max_s: 0.5\n{mqtt_extra}"
        f"radios:\n  - name: {RADIO}\n    driver: rak3172\n    port: {port}\n"
        f"nodes:\n" + "\n".join(node_lines) + "\n"
        "health:\n  interval_s: 3600\n"
    )


def rx_line(payload: bytes, *, rssi: int = -97, snr: int = 6) -> bytes:
    """The RUI3 line a RAK3172 prints for a received P2P frame."""
    return b"+EVT:RXP2P:%d:%d:%s\r\n" % (rssi, snr, payload.hex().upper().encode())


def telemetry_frames(nodes: Sequence[FieldNode], count: int) -> list[bytes]:
    """``count`` authenticated frames, round-robin over ``nodes`` (so every node's counter keeps increasing)."""
    out = []
    for i in range(count):
        n = nodes[i % len(nodes)]
        out.append(n.frame(default_values(n.kind, i)))
        n.sent.clear()  # FieldNode keeps a record per frame; the bench does not need it
    return out


def telemetry_lines(nodes: Sequence[FieldNode], count: int) -> bytes:
    """``count`` radio lines of valid frames, concatenated, with a little spread in RSSI and SNR."""
    frames = telemetry_frames(nodes, count)
    return b"".join(rx_line(f, rssi=-80 - (i % 40), snr=8 - (i % 15)) for i, f in enumerate(frames))


def decoded_entries(config: Config, frames: Sequence[bytes]) -> tuple[list[Entry], FrameDecoder]:
    """Entries exactly as the agent journals them, through the real decode path (MIC, replay window, LPP)."""
    decoder = FrameDecoder(config, {})
    entries: list[Entry] = []
    now_us = time.time_ns() // 1000
    for i, f in enumerate(frames):
        out = decoder.decode(Uplink(RADIO, f, -80 - (i % 40), float(8 - (i % 15)), None, now_us + i))
        if out.entry is None:
            raise RuntimeError(f"bench frame {i} did not decode: {out.quarantined}")
        entries.append(out.entry)
    return entries, decoder


def parse(text: str) -> Config:
    return parse_config(text)


# -- statistics -----------------------------------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation): the smallest value with at least ``p`` % of samples <= it."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, math.ceil(p / 100 * len(s)) - 1)
    return s[k]


def median(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def spread(values: Sequence[float]) -> str:
    """``min..max`` of repeated figures, for the table."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if len(vals) < 2:
        return ""
    return f"{fmt(min(vals))}..{fmt(max(vals))}"


def fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed (for states no event signals)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def proc_status_kib(pid: int | str, field: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM ...) of /proc/PID/status, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
