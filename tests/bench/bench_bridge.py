"""Benchmark of ``denen bridge`` into a real InfluxDB 1.6.7, against a raw line-protocol HTTP write of the same points.

Usage::

    python -m tests.bench.bench_bridge [--readings N] [--repeat R] [--json PATH] [--quick]

What is measured, in one run, on one InfluxDB:

``raw``     the lines the bridge would write for N readings (each reading makes its kind's point and a
            ``node_health`` point), POSTed to ``/write?precision=u`` in batches of ``batch.max_lines`` over one
            keep-alive connection from one Python thread. No MQTT, no JSON, no acknowledgements: the ceiling.
``bridge``  the bridge (in this process, v1 sink, default batching) draining a backlog of the same N readings
            that waits for it in its persistent MQTT session on Mosquitto: JSON decode, schema checks, line
            protocol, the same writes, and a PUBACK for every message after its write. Timed from ``start()`` to
            the last acknowledgement.

Two message shapes: batches of 100 readings per MQTT message (what a gateway sends while it drains a backlog), and
one reading per message (live traffic, the most MQTT overhead per reading). Raw and bridge trials alternate
(raw, bridge, raw, bridge, ...) so machine noise hits both; each trial writes into a fresh database; the ratio is
taken per pair and its median reported. After each bridge trial the stored point count is checked.

Readings/s are readings (not lines) per second. Target: bridge >= 0.5 x raw.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.bridge import Bridge, Serializer, parse_bridge_config
from agent.devbroker import Mosquitto
from tests.bridge._helpers import Publisher, batch, reading, topic

KINDS = (
    ("water_level", lambda i: {"level_cm": 120.0 + (i % 500) * 0.5, "battery_v": 3.6}),
    ("rain", lambda i: {"rain_mm": 0.5 * (i % 4), "tips": float(i), "battery_v": 3.55}),
    ("weather", lambda i: {"temperature_c": 12.3, "humidity_pct": 81.5, "pressure_hpa": 1003.2, "battery_v": 3.6}),
    ("tilt", lambda i: {"tilt_x_deg": 0.25, "tilt_y_deg": -0.5, "battery_v": 3.6}),
)


def make_payloads(n: int, per_message: int, *, gateways: int = 4, nodes: int = 300) -> list[tuple[str, bytes]]:
    """``n`` readings from ``gateways`` gateways of ``nodes`` nodes each, ``per_message`` readings per message."""
    per_gw: dict[str, list[dict[str, Any]]] = {}
    for i in range(n):
        gw = f"gw-bench-{i % gateways:02d}"
        j = i // gateways
        node = 0x00B00000 + j % nodes
        kind, values = KINDS[node % len(KINDS)]
        fcnt = 1 + j // nodes
        per_gw.setdefault(gw, []).append(reading(gw, node, fcnt, kind, values(j), rssi=-80 - j % 40,
                                                 snr=float(8 - j % 15), ts_us=1_767_225_600_000_000 + j * 997))
    out = []
    for gw, rs in per_gw.items():
        for k in range(0, len(rs), per_message):
            out.append((topic(gw), batch(gw, rs[k:k + per_message], site="bench")))
    return out


def lines_of(payloads: list[tuple[str, bytes]]) -> list[str]:
    s = Serializer()
    lines: list[str] = []
    for t, p in payloads:
        conv = s.convert(t, p)
        assert not conv.rejects, conv.rejects
        lines.extend(conv.lines)
    return lines


class Influx:
    """InfluxDB 1.6.7 from tests/support/influx.py."""

    def __init__(self, workdir: Path) -> None:
        from tests.support.influx import InfluxDB1  # noqa: PLC0415

        self.server = InfluxDB1(workdir)
        self.server.start()

    def raw_write(self, lines: list[str], db: str, batch_lines: int) -> float:
        """Seconds to POST all lines in batches over one keep-alive connection."""
        conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=60)
        started = time.perf_counter()
        for i in range(0, len(lines), batch_lines):
            body = "\n".join(lines[i:i + batch_lines]).encode()
            conn.request("POST", f"/write?db={db}&precision=u", body, {"Content-Type": "text/plain"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 204:
                raise RuntimeError(f"raw write failed: {resp.status}")
        elapsed = time.perf_counter() - started
        conn.close()
        return elapsed


def bridge_config(broker: Mosquitto, influx_url: str, db: str, client_id: str, dead: Path) -> Any:
    # A group per trial: Mosquitto hands a shared subscription's messages round-robin to every member session,
    # offline ones included, so an earlier trial's session must not take a share.
    return parse_bridge_config(f"""
mqtt:
  host: {broker.host}
  port: {broker.port}
  client_id: {client_id}
  group: {client_id}
sink:
  type: v1
  url: {influx_url}
  database: {db}
dead_letter:
  path: {dead}
""")


def bridge_trial(broker: Mosquitto, influx: Influx, payloads: list[tuple[str, bytes]], db: str, tag: str,
                 work: Path) -> float:
    """Seconds for a bridge to drain ``payloads`` waiting in its persistent session (start to last ack)."""
    cfg = bridge_config(broker, influx.server.url, db, f"bench-{tag}", work / f"dead-{tag}.db")
    # First run: only to create the persistent session and its shared subscription on the broker.
    first = Bridge(cfg)
    first.start()
    if not first.wait_subscribed(10):
        raise RuntimeError("the bridge did not subscribe")
    first.stop()
    pub = Publisher(broker, client_id=f"bench-pub-{tag}")
    pub.publish(payloads, timeout=300)
    pub.close()
    bridge = Bridge(cfg)
    started = time.perf_counter()
    bridge.start()
    deadline = time.monotonic() + 600
    while bridge.counters().get("messages_acked", 0) < len(payloads):
        if time.monotonic() > deadline:
            raise RuntimeError(f"bridge did not finish: {bridge.counters()}")
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    counters = bridge.counters()
    bridge.stop()
    if counters.get("dead_letters", 0) or counters.get("messages_redelivered", 0):
        raise RuntimeError(f"unexpected bridge counters: {counters}")
    return elapsed


def stored(influx: Influx, db: str) -> int:
    return influx.server.count("node_health", "fcnt", db)


def run(n: int, repeat: int, shapes: list[int]) -> dict[str, Any]:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results: dict[str, Any] = {"readings": n, "repeat": repeat, "machine": {
        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}, "shapes": {}}
    with tempfile.TemporaryDirectory(prefix="denen-bench-bridge-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker")
        broker.start()
        influx = Influx(work / "influx")
        try:
            max_lines = bridge_config(broker, influx.server.url, "x", "x", work / "x.db").batch.max_lines
            for per_message in shapes:
                payloads = make_payloads(n, per_message)
                lines = lines_of(payloads)
                raw_s, bridge_s = [], []
                for r in range(repeat):
                    db_raw, db_bridge = f"raw_{per_message}_{r}", f"bridge_{per_message}_{r}"
                    influx.server.create_database(db_raw)
                    influx.server.create_database(db_bridge)
                    raw_s.append(influx.raw_write(lines, db_raw, max_lines))
                    bridge_s.append(bridge_trial(broker, influx, payloads, db_bridge, f"{per_message}-{r}", work))
                    for db in (db_raw, db_bridge):
                        if stored(influx, db) != n:
                            raise RuntimeError(f"{db}: {stored(influx, db)} node_health points, expected {n}")
                    print(f"  {per_message:>3} readings/message, trial {r + 1}: raw {n / raw_s[-1]:,.0f}/s, "
                          f"bridge {n / bridge_s[-1]:,.0f}/s", file=sys.stderr, flush=True)
                ratios = [rs / bs for rs, bs in zip(raw_s, bridge_s, strict=True)]
                results["shapes"][str(per_message)] = {
                    "messages": len(payloads), "lines": len(lines),
                    "raw_readings_per_s": [n / s for s in raw_s],
                    "bridge_readings_per_s": [n / s for s in bridge_s],
                    "ratio": ratios,
                }
        finally:
            influx.server.stop()
            broker.stop()
    return results


def table(results: dict[str, Any]) -> str:
    rows = ["| message shape | raw line protocol (readings/s) | bridge (readings/s) | bridge / raw |",
            "|---|---|---|---|"]
    for shape, r in results["shapes"].items():
        raw = statistics.median(r["raw_readings_per_s"])
        br = statistics.median(r["bridge_readings_per_s"])
        ratio = statistics.median(r["ratio"])
        spread = f" ({min(r['ratio']):.2f}..{max(r['ratio']):.2f})" if len(r["ratio"]) > 1 else ""
        label = "1 reading per message (live)" if shape == "1" else f"{shape} readings per message (backlog)"
        rows.append(f"| {label} | {raw:,.0f} | {br:,.0f} | {ratio:.2f}x{spread} |")
    m = results["machine"]
    rows.append("")
    rows.append(f"{results['readings']:,} readings per trial (2 points each), median of {results['repeat']} "
                f"alternating pairs; InfluxDB 1.6.7 and Mosquitto on loopback; {m['cpus']} CPUs, Python "
                f"{m['python']}.")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.bench_bridge", description=__doc__.split("\n")[0])
    p.add_argument("--readings", type=int, default=50_000, help="readings per trial (default 50000)")
    p.add_argument("--repeat", type=int, default=3, help="alternating raw/bridge pairs per shape (default 3)")
    p.add_argument("--quick", action="store_true", help="10000 readings, 2 pairs")
    p.add_argument("--json", help="also write the raw figures as JSON to this path")
    args = p.parse_args(argv)
    n, repeat = (10_000, 2) if args.quick else (args.readings, args.repeat)
    results = run(n, repeat, [100, 1])
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
