"""Benchmark of ``denen bridge`` into a real InfluxDB 1.6.7: against a raw line-protocol HTTP write of the same
points, and one bridge process against two sharing the subscription.

Usage::

    python -m tests.bench.bench_bridge [--readings N] [--repeat R] [--only raw,scaling] [--json PATH] [--quick]

What is measured, in one run, on one InfluxDB and one Mosquitto:

``raw``      the lines the bridge would write for N readings (each reading makes its kind's point and a
             ``node_health`` point), POSTed to ``/write?precision=u`` in batches of ``batch.max_lines`` over one
             keep-alive connection from one Python thread. No MQTT, no JSON, no acknowledgements: the ceiling.
``bridge``   the bridge (in this process, v1 sink, default batching) draining a backlog of the same N readings
             that waits for it in its persistent MQTT session on Mosquitto: JSON decode, schema checks, line
             protocol, the same writes, and a PUBACK for every message after its write. Timed from ``start()`` to
             the last acknowledgement. Raw and bridge trials alternate (raw, bridge, raw, bridge, ...) so machine
             noise hits both; the ratio is taken per pair and its median reported. Target: bridge >= 0.5 x raw.
``scaling``  ``denen bridge`` *processes* (``python -m agent.cli bridge -c ...``, as deployed), first one and then
             two with the same ``mqtt.group``, alternating (1, 2, 1, 2, ...). Each trial starts the processes, waits
             until they subscribed, freezes them (SIGSTOP), publishes the backlog (Mosquitto deals the shared
             subscription's messages round-robin to the members), and resumes them all at once (SIGCONT): the
             clock runs from there to the last ``batch ... written`` line (logged at debug level right after that
             batch's acknowledgements) of any of them; the points are counted in InfluxDB afterwards. Readings/s
             each way, and 2-process / 1-process per pair (median).

Two message shapes each: batches of 100 readings per MQTT message (what a gateway sends while it drains a backlog),
and one reading per message (live traffic, the most MQTT overhead per reading). Every trial writes into a fresh
database, and its MQTT sessions are removed afterwards so they do not collect copies of later trials' messages.

Readings/s are readings (not lines) per second.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.bridge import Bridge, Serializer, parse_bridge_config
from agent.dev.devbroker import Mosquitto
from tests.bench import _common as c
from tests.bridge._helpers import Publisher, batch, reading, topic
from tests.bridge._helpers import bridge_config_text as test_bridge_config

REPO = Path(__file__).resolve().parents[2]

KINDS = (
    ("water_level", lambda i: {"level_cm": 120.0 + (i % 500) * 0.5, "battery_v": 3.6}),
    ("rain", lambda i: {"rain_mm": 0.5 * (i % 4), "tips": float(i), "battery_v": 3.55}),
    ("weather", lambda i: {"temperature_c": 12.3, "humidity_pct": 81.5, "pressure_hpa": 1003.2, "battery_v": 3.6}),
    ("tilt", lambda i: {"tilt_x_deg": 0.25, "tilt_y_deg": -0.5, "battery_v": 3.6}),
)
TARGET_RATIO = 0.5
SECTIONS = ("raw", "scaling")
#: Sizes: readings per trial for (raw vs bridge), per message shape for the scaling trials, and repeats.
PLANS: dict[str, dict[str, Any]] = {
    "full": {"readings": 50_000, "repeat": 3, "scaling_readings": {100: 200_000, 1: 50_000}, "scaling_repeat": 3},
    "quick": {"readings": 10_000, "repeat": 2, "scaling_readings": {100: 50_000, 1: 10_000}, "scaling_repeat": 1},
}


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


def bridge_config_text(broker: Mosquitto, influx_url: str, db: str, client_id: str, group: str, dead: Path, *,
                       level: str = "warning") -> str:
    """The bench's bridge: the default batch limits, a v1 sink with the default timeout and retries, no gateway
    registry."""
    return test_bridge_config(broker=broker, sink=f"  type: v1\n  url: {influx_url}\n  database: {db}",
                              dead_letter=dead, client_id=client_id, group=group, max_wait_ms=200,
                              registry=False, level=level)


def bridge_config(broker: Mosquitto, influx_url: str, db: str, client_id: str, dead: Path) -> Any:
    # A group per trial: Mosquitto hands a shared subscription's messages round-robin to every member session,
    # offline ones included, so an earlier trial's session must not take a share.
    return parse_bridge_config(bridge_config_text(broker, influx_url, db, client_id, client_id, dead))


def create_session(cfg: Any) -> None:
    """Create the bridge's persistent session and shared subscriptions on the broker, and leave it offline."""
    first = Bridge(cfg)
    first.start()
    if not first.wait_subscribed(10):
        raise RuntimeError("the bridge did not subscribe")
    first.stop()


def drop_session(broker: Mosquitto, client_id: str) -> None:
    """Remove a persistent session: connect with clean start (which discards it) and no session expiry."""
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.connect(broker.host, broker.port, clean_start=True)
    client.loop_start()
    c.wait_until(client.is_connected, 10, 0.01)
    client.disconnect()
    client.loop_stop()


def bridge_trial(broker: Mosquitto, influx: Influx, payloads: list[tuple[str, bytes]], db: str, tag: str,
                 work: Path) -> float:
    """Seconds for a bridge to drain ``payloads`` waiting in its persistent session (start to last ack)."""
    cfg = bridge_config(broker, influx.server.url, db, f"bench-{tag}", work / f"dead-{tag}.db")
    create_session(cfg)
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
    drop_session(broker, f"bench-{tag}")
    if counters.get("dead_letters", 0) or counters.get("messages_redelivered", 0):
        raise RuntimeError(f"unexpected bridge counters: {counters}")
    return elapsed


def stored(influx: Influx, db: str) -> int:
    return influx.server.count("node_health", "fcnt", db)


def run(n: int, repeat: int, shapes: list[int], *, work: Path, broker: Mosquitto, influx: Influx) -> dict[str, Any]:
    """Raw writes against the in-process bridge, alternating, per message shape."""
    results: dict[str, Any] = {"readings": n, "repeat": repeat, "shapes": {}}
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
            c.say(f"  {per_message:>3} readings/message, trial {r + 1}: raw {n / raw_s[-1]:,.0f}/s, "
                 f"bridge {n / bridge_s[-1]:,.0f}/s")
        ratios = [rs / bs for rs, bs in zip(raw_s, bridge_s, strict=True)]
        results["shapes"][str(per_message)] = {
            "messages": len(payloads), "lines": len(lines), "max_lines": max_lines,
            "raw_readings_per_s": [n / s for s in raw_s],
            "bridge_readings_per_s": [n / s for s in bridge_s],
            "ratio": ratios,
        }
    return results


# -- 1 against 2 bridge processes ---------------------------------------------------------------------------------
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_BATCH = re.compile(r"bridge: batch of (\d+) messages \((\d+) redelivered\), (\d+) lines written, (\d+) refused")


def _log_time(line: str) -> float | None:
    m = _LOG_TIME.match(line)
    if m is None:
        return None
    # logging's asctime is local time with milliseconds; the same on both processes, so differences are exact.
    return dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def parse_bridge_log(path: Path) -> dict[str, Any]:
    """From a ``denen bridge`` log at debug level: when it connected, when its last batch was acknowledged, and
    how many messages and lines it wrote, refused or got twice."""
    out: dict[str, Any] = {"connected": None, "last_batch": None, "messages": 0, "lines": 0, "refused": 0,
                           "redelivered": 0, "batches": 0, "errors": []}
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        t = _log_time(line)
        if " ERROR " in line or " CRITICAL " in line:
            out["errors"].append(line[:300])
        if "MQTT: connected to" in line and out["connected"] is None:
            out["connected"] = t
            continue
        m = _BATCH.search(line)
        if m:
            out["last_batch"] = t
            out["batches"] += 1
            out["messages"] += int(m.group(1))
            out["redelivered"] += int(m.group(2))
            out["lines"] += int(m.group(3))
            out["refused"] += int(m.group(4))
    return out


def scaling_trial(broker: Mosquitto, influx: Influx, payloads: list[tuple[str, bytes]], n: int, procs: int,
                  tag: str, work: Path, timeout: float = 600) -> dict[str, Any]:
    """``procs`` ``denen bridge`` processes draining ``payloads`` (``n`` readings) that wait for them together.

    The processes start, connect and subscribe (each creates its persistent session in the shared group), and are
    then frozen with SIGSTOP; the backlog is published meanwhile (the broker holds it for the connected, silent
    sessions, dealing it round-robin); then all are resumed with SIGCONT at the same instant, which starts the
    clock. So no process gets a head start from starting faster, and no start-up or import time is counted. The
    clock stops at the last ``batch ... written`` debug line (logged right after that batch's acknowledgements).
    """
    import signal  # noqa: PLC0415

    group = f"scale-{tag}"
    db = f"scale_{tag.replace('-', '_')}"
    influx.server.create_database(db)
    trial_dir = work / group
    trial_dir.mkdir()
    cfg_paths, ids = [], []
    for i in range(procs):
        cid = f"{group}-{i + 1}"
        ids.append(cid)
        path = trial_dir / f"bridge-{i + 1}.yaml"
        path.write_text(bridge_config_text(broker, influx.server.url, db, cid, group, trial_dir / f"dead-{i + 1}.db",
                                           level="debug"))
        cfg_paths.append(path)
    expected_lines = len(lines_of(payloads))
    logs = [trial_dir / f"bridge-{i + 1}.log" for i in range(procs)]
    running: list[subprocess.Popen[bytes]] = []
    tck = os.sysconf("SC_CLK_TCK")
    influx_pid = influx.server.proc.pid if influx.server.proc else 0
    broker_pid = broker.proc.pid if broker.proc else 0
    try:
        for path, log_path in zip(cfg_paths, logs, strict=True):
            with log_path.open("ab") as lf:
                running.append(subprocess.Popen([sys.executable, "-m", "agent.cli", "bridge", "-c", str(path)],
                                                cwd=REPO, stdout=lf, stderr=subprocess.STDOUT))

        def check_alive() -> None:
            for proc, log_path in zip(running, logs, strict=True):
                if proc.poll() is not None:
                    raise RuntimeError(f"a bridge exited with {proc.returncode}: "
                                       f"{log_path.read_text(errors='replace')[-2000:]}")

        def subscribed() -> bool:
            check_alive()
            return all("MQTT: subscribed" in p.read_text(errors="replace") for p in logs if p.exists()) and all(
                p.exists() for p in logs)

        if not c.wait_until(subscribed, 60, 0.05):
            raise RuntimeError("the bridges did not subscribe within 60 s")
        for proc in running:
            proc.send_signal(signal.SIGSTOP)
        pub = Publisher(broker, client_id=f"bench-pub-{group}")
        pub.publish(payloads, timeout=600)
        pub.close()
        ticks0 = [c.cpu_ticks(p.pid) for p in running]
        server0 = (c.cpu_ticks(influx_pid), c.cpu_ticks(broker_pid))
        t0 = time.time()
        for proc in running:
            proc.send_signal(signal.SIGCONT)
        m0 = time.monotonic()
        deadline = m0 + timeout
        while True:
            parsed = [parse_bridge_log(p) for p in logs]
            if sum(x["lines"] for x in parsed) >= expected_lines:
                break
            check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"bridges did not write all {expected_lines} lines within {timeout} s: "
                                   f"{[x['lines'] for x in parsed]}")
            time.sleep(0.05)
        wall = time.monotonic() - m0
        bridge_ticks = [c.cpu_ticks(p.pid) - t for p, t in zip(running, ticks0, strict=True)]
        influx_ticks = c.cpu_ticks(influx_pid) - server0[0]
        broker_ticks = c.cpu_ticks(broker_pid) - server0[1]
    finally:
        for proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a stopped process would not handle SIGTERM
                proc.terminate()
        for proc in running:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for cid in ids:
            drop_session(broker, cid)
    parsed = [parse_bridge_log(p) for p in logs]
    points = stored(influx, db)
    if points != n:
        raise RuntimeError(f"{db}: {points} node_health points, expected {n}")
    errors = [e for x in parsed for e in x["errors"]]
    if errors or any(x["refused"] for x in parsed):
        raise RuntimeError(f"bridge errors or refused lines: {errors[:3]}")
    if any(x["last_batch"] is None for x in parsed):
        raise RuntimeError("a bridge log has no batch line (one process got no share?)")
    t1 = max(x["last_batch"] for x in parsed)
    return {
        "processes": procs, "readings": n, "seconds": t1 - t0, "per_s": n / (t1 - t0),
        "per_process": [{"messages": x["messages"], "lines": x["lines"], "redelivered": x["redelivered"],
                         "seconds": x["last_batch"] - t0, "batches": x["batches"]} for x in parsed],
        # CPU from the resume to the end (polled, so within ~50 ms), in % of one core.
        "bridge_cpu_pct": sum(bridge_ticks) / tck / wall * 100, "influx_cpu_pct": influx_ticks / tck / wall * 100,
        "broker_cpu_pct": broker_ticks / tck / wall * 100,
    }


def run_scaling(readings: dict[int, int], repeat: int, *, work: Path, broker: Mosquitto,
                influx: Influx) -> dict[str, Any]:
    """1 and 2 bridge processes, alternating, per message shape."""
    results: dict[str, Any] = {"repeat": repeat, "shapes": {}}
    for per_message, n in readings.items():
        payloads = make_payloads(n, per_message)
        one, two = [], []
        for r in range(repeat):
            one.append(scaling_trial(broker, influx, payloads, n, 1, f"{per_message}-{r}-1", work))
            two.append(scaling_trial(broker, influx, payloads, n, 2, f"{per_message}-{r}-2", work))
            shares = "/".join(str(x["messages"]) for x in two[-1]["per_process"])
            c.say(f"  scaling, {per_message:>3} readings/message, trial {r + 1}: 1 bridge {one[-1]['per_s']:,.0f}/s, "
                 f"2 bridges {two[-1]['per_s']:,.0f}/s (messages per bridge {shares})")
        results["shapes"][str(per_message)] = {
            "readings": n, "messages": len(payloads), "one": one, "two": two,
            "ratio": [b["per_s"] / a["per_s"] for a, b in zip(one, two, strict=True)],
        }
    return results


# -- entry points -------------------------------------------------------------------------------------------------
def run_all(p: dict[str, Any]) -> dict[str, Any]:
    """Every section asked for in ``p`` (``sections``, ``readings``, ``repeat``, ``scaling_readings``,
    ``scaling_repeat``), on one Mosquitto and one InfluxDB under ``p["workdir"]`` (a temporary folder if none)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "platform": platform.platform()}}
    with tempfile.TemporaryDirectory(prefix="denen-bench-bridge-", dir=p.get("workdir")) as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker")
        broker.start()
        influx = Influx(work / "influx")
        try:
            if "raw" in p["sections"]:
                results["raw"] = run(p["readings"], p["repeat"], [100, 1], work=work, broker=broker, influx=influx)
            if "scaling" in p["sections"]:
                results["scaling"] = run_scaling({int(k): v for k, v in p["scaling_readings"].items()},
                                                 p["scaling_repeat"], work=work, broker=broker, influx=influx)
        finally:
            influx.server.stop()
            broker.stop()
    return results


def add_rows(table: c.Table, results: dict[str, Any]) -> None:
    """The figures of :func:`run_all` as rows of the bench table."""
    for shape, r in results.get("raw", {}).get("shapes", {}).items():
        raw = statistics.median(r["raw_readings_per_s"])
        br = statistics.median(r["bridge_readings_per_s"])
        ratio = statistics.median(r["ratio"])
        what = ("bridge → InfluxDB 1.6.7, 1 reading per message (live traffic)" if shape == "1" else
                f"bridge → InfluxDB 1.6.7, {shape} readings per message (a gateway's backlog batches)")
        table.add("bridge", what, br, "readings/s", spread=c.spread(r["bridge_readings_per_s"]),
                  anchor=f"raw line-protocol write {c.fmt(raw)}/s", ratio=ratio,
                  target=f"≥ {TARGET_RATIO:g}× raw", ok=ratio >= TARGET_RATIO,
                  note=f"{results['raw']['readings']:,} readings, {len(r['ratio'])} alternating pairs, in-process "
                  f"bridge, writes of {r['max_lines']} lines")
    for shape, r in results.get("scaling", {}).get("shapes", {}).items():
        one = [x["per_s"] for x in r["one"]]
        two = [x["per_s"] for x in r["two"]]
        label = "1 reading per message" if shape == "1" else f"{shape} readings per message"
        cpu1 = c.median([x["bridge_cpu_pct"] for x in r["one"]])
        infl1 = c.median([x["influx_cpu_pct"] for x in r["one"]])
        mosq1 = c.median([x["broker_cpu_pct"] for x in r["one"]])
        table.add("bridge", f"1 `denen bridge` process, {label}", c.median(one), "readings/s", spread=c.spread(one),
                  note=f"{r['readings']:,} readings waiting at the broker; CPU in % of a core: bridge {c.fmt(cpu1)}, "
                  f"influxd {c.fmt(infl1)}, mosquitto {c.fmt(mosq1)}")
        cpu2 = c.median([x["bridge_cpu_pct"] for x in r["two"]])
        infl2 = c.median([x["influx_cpu_pct"] for x in r["two"]])
        mosq2 = c.median([x["broker_cpu_pct"] for x in r["two"]])
        shares = "/".join(str(x["messages"]) for x in r["two"][0]["per_process"])
        table.add("bridge", f"2 `denen bridge` processes sharing the subscription, {label}", c.median(two),
                  "readings/s", spread=c.spread(two), anchor=f"1 process {c.fmt(c.median(one))}/s",
                  ratio=c.median(r["ratio"]),
                  note=f"CPU in % of a core: both bridges {c.fmt(cpu2)}, influxd {c.fmt(infl2)}, mosquitto "
                  f"{c.fmt(mosq2)}; messages per process {shares}; ratio = median of per-pair ratios; 2 cores")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_bridge", description=__doc__.split("\n")[0])
    ap.add_argument("--readings", type=int, default=None, help="readings per raw/bridge trial (default 50000)")
    ap.add_argument("--repeat", type=int, default=None, help="alternating pairs per shape (default 3)")
    ap.add_argument("--quick", action="store_true", help="smaller sizes: 10,000 readings, fewer pairs")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {','.join(SECTIONS)}")
    ap.add_argument("--json", help="also write the raw figures as JSON to this path")
    args = ap.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    if set(sections) - set(SECTIONS):
        ap.error(f"unknown section(s): {', '.join(sorted(set(sections) - set(SECTIONS)))}")
    plan = dict(PLANS["quick" if args.quick else "full"])
    if args.readings:
        plan["readings"] = args.readings
    if args.repeat:
        plan["repeat"] = plan["scaling_repeat"] = args.repeat
    started = time.monotonic()
    results = run_all({**plan, "sections": sections})
    table = c.Table()
    add_rows(table, results)
    m = results["machine"]
    given = argv if argv is not None else sys.argv[1:]
    print(f"Command: `python -m tests.bench.bench_bridge {' '.join(given)}` ({time.monotonic() - started:.0f} s; "
          f"{m['cpus']} CPUs, Python {m['python']}; InfluxDB 1.6.7 and Mosquitto on loopback; load average at end "
          f"{os.getloadavg()[0]:.2f})")
    print()
    print(table.markdown())
    if args.json:
        Path(args.json).write_text(json.dumps({**results, "plan": plan, "rows": table.rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
