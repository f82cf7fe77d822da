"""Shared pieces of the benchmark: a field of keyed nodes, its config, pre-built radio lines, statistics."""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.config import Config, parse_config
from agent.gateway.reading import Entry
from agent.gateway.readings import FrameDecoder
from drivers.types import Uplink
from tests.support.field import FieldNode, default_values, write_config  # noqa: F401 - for the trials
from tests.support.gateway_config import gateway_yaml, numbered_names
from tests.support.polling import wait_until  # noqa: F401 - for the trials

GATEWAY_ID = "gw-bench-01"
RADIO = "lora0"
RADIO_ES920 = "lora1"

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


#: The second radio of the two-radio trial: an ES920LR named :data:`RADIO_ES920` with the demo config's settings.
ES920_RADIO = (
    f"  - name: {RADIO_ES920}\n    driver: es920lr\n    port: {{port}}\n    es920:\n"
    "      bandwidth_khz: 125\n      spreading_factor: 10\n      channel: 3\n      pan_id: \"0001\"\n"
    "      own_id: \"0000\"\n      format: binary\n      payload_encoding: hex\n      power_dbm: 13\n"
    "      node: coordinator\n"
)


def config_text(**kw: Any) -> str:
    """A gateway config for the bench (:func:`tests.support.gateway_config.gateway_yaml` with the bench's
    defaults): one RAK3172 radio, every node keyed and named ``<kind>-<n>``, reporting every 600 s.

    The health interval is an hour (``health_s``) so no diagnostics reading lands in the middle of a measurement
    (None keeps the config default, as the idle trial wants); the quota (2 GiB) is far above what a run journals so
    eviction never runs; the reconnect backoff is short (0.1..0.5 s; ``reconnect_s=None`` keeps the config's).
    ``extra_radios=ES920_RADIO.format(port=...)`` adds the ES920LR.
    """
    return gateway_yaml(**{"gateway": GATEWAY_ID, "site": "bench", "quota_mb": 2048, "reconnect_s": (0.1, 0.5),
                           "name": numbered_names(), "interval_s": 600, **kw})


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
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
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


def say(text: str) -> None:
    """A progress line on stderr, at once (the table goes to stdout at the end)."""
    print(text, file=sys.stderr, flush=True)


def cpu_ticks(pid: int | str) -> int:
    """CPU ticks (utime + stime, fields 14 and 15 of /proc/PID/stat) of a process, 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(fields[11]) + int(fields[12])


def reading_payloads(nodes: int, n: int) -> list[bytes]:
    """``n`` reading bodies as the agent publishes them: the agent's own decoder over signed frames of ``nodes``
    telemetry nodes (round-robin)."""
    field = telemetry_nodes(nodes)
    cfg = parse(config_text(port="/dev/null", mqtt_port=1883, journal=Path("/nonexistent/unused.db"), nodes=field))
    entries, _ = decoded_entries(cfg, telemetry_frames(field, n))
    return [e.body.encode() for e in entries]


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


def journal_counter(journal: Path, name: str) -> int:
    """A counter the agent persisted in its journal (0 while the journal or the counter does not exist yet).

    Read-only, so it can be polled while the agent runs (WAL lets a reader in beside the writer).
    """
    import sqlite3  # noqa: PLC0415 - only the trials that watch a running agent need it

    try:
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM counter WHERE name=?", (name,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return 0
    return row[0] if row else 0


def thread_stats(pid: int) -> dict[int, dict[str, Any]]:
    """Per thread of ``pid``: name (``comm``), voluntary and involuntary context switches, CPU ticks (user+system).

    A voluntary switch is the thread blocking (a sleep, a read, a lock); each one is followed by a wakeup, so the
    sum of both counters over a window is the number of times the thread was put back on a CPU. Threads that end
    while the folder is read are skipped.
    """
    out: dict[int, dict[str, Any]] = {}
    for tid_s in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid_s}"
        try:
            with open(f"{base}/comm") as f:
                comm = f.read().strip()
            vol = nonvol = 0
            with open(f"{base}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol = int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        nonvol = int(line.split()[1])
            with open(f"{base}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        out[int(tid_s)] = {"comm": comm, "voluntary": vol, "nonvoluntary": nonvol,
                           "ticks": int(fields[11]) + int(fields[12])}
    return out


# -- the table ----------------------------------------------------------------------------------------------
class Table:
    """The printed result: one row per figure, with its same-run anchor, the ratio, the target and a verdict."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, section: str, what: str, value: float | None, unit: str, *, spread: str = "",
            anchor: str = "", ratio: float | None = None, target: str = "", ok: bool | None = None,
            note: str = "") -> None:
        self.rows.append({"section": section, "what": what, "value": value, "unit": unit, "spread": spread,
                          "anchor": anchor, "ratio": ratio, "target": target,
                          "verdict": None if ok is None else ("met" if ok else "MISSED"), "note": note})

    def markdown(self) -> str:
        head = "| | measurement | value | spread of repeats | anchor (same run) | ratio | target | verdict |"
        lines = [head, "|---|---|---:|---|---|---:|---|---|"]
        for r in self.rows:
            value = f"{fmt(r['value'])} {r['unit']}".strip()
            what = r["what"] + (f" ({r['note']})" if r["note"] else "")
            ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}×"
            lines.append(f"| {r['section']} | {what} | {value} | {r['spread']} | {r['anchor']} | {ratio} | "
                         f"{r['target']} | {r['verdict'] or ''} |")
        return "\n".join(lines)
