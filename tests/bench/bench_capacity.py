"""Capacity steps: the fleet benchmark (tests/bench/bench_fleet.py) at several fleet sizes in a row, one table of
lag and memory per component per step, for docs/capacity.md.

Usage::

    python -m tests.bench.bench_capacity [--steps 100,300,1000] [--field-s 20] [--flood-s 10] [--workers 4]
                                         [--json PATH]

Each step is a whole bench_fleet run (its own Mosquitto with a login per gateway and the shipped ACL, one
``denen bridge`` process, InfluxDB 1.6.7, all on this machine, loopback, no TLS) with two phases and no backlog:

``field``  every gateway sends one reading every 10 s (the field rate of bench_fleet);
``flood``  every gateway sends one reading per second (10x).

Reported per step and phase: readings/s published and written, the lag of every reading (its ``ts_us`` -> InfluxDB
acknowledged the write that carried it) p50 / p99 / max, and at the end of the step the resident memory (VmRSS) of
Mosquitto, the bridge (and its peak, VmHWM) and influxd, the CPU share of each during the flood phase, and loss
(every reading the broker acknowledged, counted in InfluxDB by (gateway, node, fcnt)). The generator runs on the
same 2 cores, so the figures are a lower bound of what the backend alone holds; tests/bench/bench_components.py
measures each part alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any

from tests.bench import _common as c
from tests.bench import bench_fleet


def plan(gateways: int, field_s: int, flood_s: int, workers: int) -> dict[str, Any]:
    return {"gateways": gateways, "workers": workers,
            "phases": [("field", field_s, 10.0), ("flood", flood_s, 1.0)],
            "drain_phase": "flood", "backlog_share": 0.0, "backlog": 0, "drain_timeout_s": 120}


def step(gateways: int, field_s: int, flood_s: int, workers: int) -> dict[str, Any]:
    started = time.monotonic()
    r = bench_fleet.run(plan(gateways, field_s, flood_s, workers))
    r["wall_s"] = time.monotonic() - started
    return r


def rows(r: dict[str, Any]) -> list[list[str]]:
    out = []
    rss = r["rss_mib"]
    loss = r["loss"]
    for ph in r["phases"]:
        live = ph["live"]
        cpu = r["cpu_pct"].get(ph["name"], {})
        out.append([
            str(r["gateways"]), ph["name"], f"{ph['published_per_s']:.0f}", f"{ph['written_per_s']:.0f}",
            c.fmt(live["p50_ms"]), c.fmt(live["p99_ms"]), c.fmt(live["max_ms"]),
            " / ".join(f"{k} {v:.0f}" for k, v in cpu.items()) if cpu else "-",
            (f"mosquitto {c.fmt(rss['mosquitto'])}, bridge {c.fmt(rss['bridge'])} "
             f"(peak {c.fmt(rss['bridge_peak'])}), influxd {c.fmt(rss['influxd'])}"),
            f"{loss['missing']} of {loss['expected']}",
        ])
    return out


HEADER = ["gateways", "phase", "published/s", "written/s", "lag p50 ms", "lag p99 ms", "lag max ms", "CPU % per process",
          "RSS MiB at end", "missing"]


def fleet_sizes(ap: argparse.ArgumentParser, flag: str, text: str) -> list[int]:
    """Fleet sizes from ``flag``'s comma-separated value; a usage error (exit 2) for anything else."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        ap.error(f"{flag} takes numbers separated by commas, got {text!r}")
    if not sizes or min(sizes) < 1:
        ap.error(f"{flag} needs at least one fleet size of 1 or more")
    return sizes


def report(module: str, argv: list[str] | None, started: float, header: list[str], table: list[list[str]]) -> None:
    """Print the command line, its duration and the load average (1 / 5 / 15 min), then ``table`` in Markdown."""
    given = argv if argv is not None else sys.argv[1:]
    print(f"Command: `python -m {module} {' '.join(given)}` ({time.monotonic() - started:.0f} s; "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; load average at end "
          f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())} (1 / 5 / 15 min))")
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in table:
        print("| " + " | ".join(row) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_capacity", description=__doc__.split("\n")[0])
    ap.add_argument("--steps", default="100,300,1000", help="fleet sizes, comma-separated (default 100,300,1000)")
    ap.add_argument("--field-s", type=int, default=20, help="seconds at the field rate per step (default 20)")
    ap.add_argument("--flood-s", type=int, default=10, help="seconds at 10x the field rate per step (default 10)")
    ap.add_argument("--workers", type=int, default=4, help="generator processes (default 4)")
    ap.add_argument("--json", help="also write every figure as JSON to this path")
    args = ap.parse_args(argv)
    sizes = fleet_sizes(ap, "--steps", args.steps)
    started = time.monotonic()
    results = [step(n, args.field_s, args.flood_s, args.workers) for n in sizes]
    report("tests.bench.bench_capacity", argv, started, HEADER, [row for r in results for row in rows(r)])
    if args.json:
        c.write_json(args.json, results)
    return 1 if any(r["loss"]["missing"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
