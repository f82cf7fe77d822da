"""Start-up as the field sees it: from ``denen run`` to its first reading at the broker, with 200 and 2,000 keyed
nodes, beside ``python -c pass`` measured in the same run.

Usage::

    python -m tests.bench.bench_first_reading [--nodes 200,2000] [--runs N] [--first-starts N]
        [--commit-window-ms MS] [--json PATH]

Per node count: a Mosquitto and a subscriber on it, then runs of a simulated RAK3172 on a pty and ``denen run``
started as systemd starts it (its console script, ``$STATE_DIRECTORY`` set). A frame of one configured node is
offered on the radio every 20 ms from the moment the module listens. Measured from the process start (monotonic):
the radio configured (the module listening), and the first reading received by the subscriber. The first run is a
first start (nothing kept in the state directory); the next ones are restarts of the same config, whose parsed YAML
the first run kept (agent/config/parsed.py). The journal is removed between runs. Median and spread, load average
beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.bench.bench_field import Subscriber
from tests.support.process import end

REPO = Path(__file__).resolve().parents[2]
OFFER_EVERY_S = 0.02


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def anchor_s(runs: int) -> float:
    """``python -c pass`` with this interpreter, median wall seconds."""
    times = []
    for _ in range(runs):
        t = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.monotonic() - t)
    return statistics.median(times)


class Valley:
    """A Mosquitto and a subscriber kept across runs, so that the config text (broker port, module path) is the
    same every run, as on a gateway that restarts."""

    def __init__(self, work: Path, nodes: int, commit_window_ms: int | None = None) -> None:
        from agent.dev.devbroker import Mosquitto  # noqa: PLC0415

        self.work = work
        self.nodes = nodes
        self.commit_window_ms = commit_window_ms  # None: the config's default
        work.mkdir(parents=True)
        self.state = work / "state"  # the gateway's state directory ($STATE_DIRECTORY under systemd)
        self.state.mkdir(mode=0o750)
        self.broker = Mosquitto(work / "broker")
        self.broker.start()
        self.sub = Subscriber(self.broker.host, self.broker.port)

    def close(self) -> None:
        self.sub.close()
        self.broker.stop()

    def run(self) -> dict[str, float]:
        """Seconds from ``denen run`` starting to the module listening and to the first reading received."""
        import random  # noqa: PLC0415

        from drivers.sim.rak3172 import SimRak3172  # noqa: PLC0415
        from tests.bench import _common as c  # noqa: PLC0415
        from tests.bench.bench_startup import denen_command  # noqa: PLC0415
        from tests.support.field import FieldNode  # noqa: PLC0415

        for old in self.work.glob("journal.db*"):
            old.unlink()
        sim = SimRak3172(name=c.RADIO, link=str(self.work / "lora0"), boot_delay_s=0.02, rng=random.Random(7))
        sim.start()
        proc = None
        stop = threading.Event()
        try:
            kinds = ("rain", "weather", "tilt", "trap", "sos")
            field = [FieldNode(c.TELEMETRY_BASE + i, kinds[i % len(kinds)]) for i in range(self.nodes)]
            cfg = c.write_config(self.work / "gateway.yaml", c.config_text(
                port=str(self.work / "lora0"), mqtt_port=self.broker.port, journal=self.work / "journal.db",
                nodes=field, commit_window_ms=self.commit_window_ms))
            frames = iter(c.telemetry_frames(field[:1], 10_000))
            listening: list[float] = []
            seen = len(self.sub.snapshot())
            t0 = time.monotonic()
            with (self.work / "agent.log").open("ab") as log:
                proc = subprocess.Popen([*denen_command(), "run", "-c", str(cfg)], cwd=REPO,
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "STATE_DIRECTORY": str(self.state)})

            def offer() -> None:
                frame = next(frames)
                while not stop.is_set():
                    if sim.inject_uplink(frame):
                        if not listening:
                            listening.append(time.monotonic() - t0)
                        frame = next(frames)
                    time.sleep(OFFER_EVERY_S)

            threading.Thread(target=offer, daemon=True).start()
            deadline = t0 + 60
            while time.monotonic() < deadline:
                got = [t for t, _, readings in self.sub.snapshot()[seen:] if readings]
                if got:
                    return {"listening_s": listening[0] if listening else float("nan"),
                            "first_reading_s": got[0] - t0}
                if proc.poll() is not None:
                    raise RuntimeError(f"denen run exited: {(self.work / 'agent.log').read_text()[-1500:]}")
                time.sleep(0.005)
            raise RuntimeError(f"no reading within 60 s: {(self.work / 'agent.log').read_text()[-1500:]}")
        finally:
            stop.set()
            end(proc, 30)
            sim.stop()


def _summary(samples: list[dict[str, float]]) -> dict[str, Any]:
    firsts = [s["first_reading_s"] for s in samples]
    return {"first_reading_s_median": round(statistics.median(firsts), 3),
            "first_reading_s_min_max": [round(min(firsts), 3), round(max(firsts), 3)],
            "listening_s_median": round(statistics.median(s["listening_s"] for s in samples), 3),
            "runs": len(samples)}


def run(node_counts: list[int], runs: int, first_starts: int = 1,
        commit_window_ms: int | None = None) -> dict[str, Any]:
    """Per node count: ``first_starts`` first starts (no parsed config kept: a gateway's first boot after
    flashing), then ``runs`` restarts with the same config (its parsed YAML kept in the state directory)."""
    out: dict[str, Any] = {"load_before": _loadavg(), "anchor_python_pass_s": anchor_s(max(5, runs)), "nodes": {},
                           "commit_window_ms": "default" if commit_window_ms is None else commit_window_ms}
    with tempfile.TemporaryDirectory(prefix="denen-bench-first-", dir=os.environ.get("DENEN_BENCH_DIR")) as tmp:
        for n in node_counts:
            valley = Valley(Path(tmp) / str(n), n, commit_window_ms)
            try:
                first = []
                for _ in range(first_starts):
                    (valley.state / "config.parsed.json").unlink(missing_ok=True)
                    first.append(valley.run())
                kept = (valley.state / "config.parsed.json").exists()
                restarts = [valley.run() for _ in range(runs)]
            finally:
                valley.close()
            out["nodes"][n] = {"first_start": _summary(first), "restart": _summary(restarts),
                               "parsed_config_kept": kept}
    out["load_after"] = _loadavg()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="200,2000", help="node counts, comma-separated (default 200,2000)")
    ap.add_argument("--runs", type=int, default=5, help="runs per node count (default 5)")
    ap.add_argument("--first-starts", type=int, default=1, help="first starts per node count (default 1)")
    ap.add_argument("--commit-window-ms", type=int, help="journal.commit_window_ms (default: the config's, 250); "
                    "the first reading is telemetry, which waits for the window")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    result = run([int(x) for x in args.nodes.split(",")], args.runs, args.first_starts, args.commit_window_ms)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
