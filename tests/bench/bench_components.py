"""Each backend component alone on this machine: how many readings/s and gateways one Mosquitto, one ``denen bridge``
process, one InfluxDB 1.6.7 and one VictoriaMetrics single node hold, for docs/capacity.md.

Usage::

    python -m tests.bench.bench_components store  [--store influx|vm] [--gateways 1000,3000,10000] [--json PATH]
    python -m tests.bench.bench_components broker [--gateways 1000,3000,10000] [--json PATH]
    python -m tests.bench.bench_components bridge [--store influx|vm] [--gateways 1000,3000,10000] [--backlog N]

Every step uses a fresh server and ``gateways`` x 10 nodes, so the store holds as many series as a fleet of that
size. Phases: ``field`` (one reading per gateway every 10 s, 20 s), ``flood`` (one per gateway per second, 10 s),
then what the part under test needs to show its ceiling:

``store``   One writer (as one bridge: one connection, one write in flight) sends the line protocol the bridge makes
            for these readings (the bridge's own serializer) to ``/write?precision=u``, every 200 ms whatever is due,
            at most 2,000 readings (about the bridge's 5,000-line batch) a write. ``max``: 10 s unpaced, write after
            write. Lag: the reading's time -> the store acknowledged the write.
``broker``  Mosquitto with one login per gateway and the shipped ACL (bench_fleet's broker), the gateways of
            bench_fleet's generator (5 % of them drain a 600-reading backlog at the start of the flood), and instead
            of the bridge a plain subscriber (``mosquitto_sub``, C, on the bridge's shared subscription). Lag: the
            reading's ``ts_us`` -> the subscriber received it.
``bridge``  An anonymous Mosquitto and one generator process that publishes each gateway's readings as the agent
            does at these rates (one reading a message), the ``denen bridge`` with its default batching, and the
            store behind bench_fleet's relay (which notes when each write was acknowledged). ``backlog``: the bridge
            is stopped, ``--backlog`` readings are queued for its session in 200-reading messages (a gateway's
            journal after an outage), and the time from its restart to the last of them written is taken.

Reported per phase: readings/s offered and done, lag p50/p99/max, the CPU share of every process, and the resident
memory (VmRSS) of the part under test at the end of the step. Everything shares the 2 cores with the generator, so
each ceiling says which process was busiest when it was reached.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench import _common as c
from tests.bench import bench_capacity as capacity
from tests.bench import bench_fleet as fleet
from tests.support.process import end, end_workers

NODES = fleet.NODES_PER_GATEWAY
TICK_S = 0.2  # the bridge's batch.max_wait_ms
BATCH_READINGS = 2000  # about batch.max_lines 5,000 at 2.5 lines a reading
PREFIX = fleet.PREFIX


def _stats(values_ms: list[float]) -> dict[str, float]:
    return {"n": len(values_ms), "p50_ms": c.percentile(values_ms, 50), "p99_ms": c.percentile(values_ms, 99),
            "max_ms": max(values_ms) if values_ms else float("nan")}


def _rss(pid: int | None, field: str = "VmRSS") -> float | None:
    return fleet._rss_mib(pid, field) if pid else None


class CpuMeter:
    """CPU share (% of one core) of named processes between two calls of :meth:`lap`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.tck = os.sysconf("SC_CLK_TCK")
        self._prev, self._t = self._sample(), time.monotonic()

    def _sample(self) -> dict[str, int]:
        out = {}
        for name, pid in self.pids.items():
            try:
                out[name] = c.cpu_ticks(pid)
            except (FileNotFoundError, ProcessLookupError):
                out[name] = 0
        return out

    def lap(self) -> dict[str, float]:
        now, t = self._sample(), time.monotonic()
        dt = max(1e-9, t - self._t)
        out = {k: (now[k] - self._prev.get(k, 0)) / self.tck / dt * 100 for k in now}
        self._prev, self._t = now, t
        return out


def reading(tpl: dict[str, list[dict[str, Any]]], gw: int, k: int, fcnt: int, ts_us: int) -> dict[str, Any]:
    """One reading object of gateway ``gw``'s node ``k`` (a decoded template with this identity)."""
    kinds = list(c.TELEMETRY_KINDS)
    kind = kinds[k % len(kinds)]
    body = dict(tpl[kind][fcnt % len(tpl[kind])])
    gid, nh = fleet.gateway_id(gw), fleet.node_hex(gw, k)
    body.update(id=f"{gid}/{nh}/{fcnt}", node=nh, fcnt=fcnt, ts_us=ts_us)
    return body


def envelope(gw: int, bodies: list[dict[str, Any]]) -> bytes:
    from agent.gateway.readings import READING_SCHEMA  # noqa: PLC0415

    return json.dumps({"schema": READING_SCHEMA, "gateway": fleet.gateway_id(gw), "site": fleet.SITE,
                       "lane": "telemetry", "sent_us": time.time_ns() // 1000, "readings": bodies},
                      separators=(",", ":")).encode()


def topic(gw: int) -> str:
    return f"{PREFIX}/{fleet.gateway_id(gw)}/readings/telemetry"


# -- the store alone ------------------------------------------------------------------------------------------------
def line_stems(gateways: int) -> list[list[tuple[str, str]]]:
    """For every (gateway, node): the lines the bridge writes for one of its readings, without the timestamp, cut
    around the frame counter (which rises from reading to reading, as in the field)."""
    from agent.bridge.lineproto import Serializer  # noqa: PLC0415

    ser, tpl, now = Serializer(PREFIX), fleet.templates(), time.time_ns() // 1000
    out = []
    for gw in range(gateways):
        for k in range(NODES):
            conv = ser.convert(topic(gw), envelope(gw, [reading(tpl, gw, k, 1, now)]))
            out.append([tuple(ln.rpartition(" ")[0].split("fcnt=1.0", 1)) for ln in conv.lines])
    return out


def _post(conn: http.client.HTTPConnection, path: str, body: bytes) -> None:
    conn.request("POST", path, body=body, headers={"Content-Type": "text/plain"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 204:
        raise RuntimeError(f"write refused: {resp.status} {data[:300]!r}")


def store_phase(conn: http.client.HTTPConnection, path: str, stems: list[list[tuple[str, str]]], rate: float | None,
                seconds: float) -> dict[str, Any]:
    """Write readings at ``rate`` per second for ``seconds`` (None: unpaced), round robin over the series."""
    n = len(stems)
    start = time.time()
    stop = start + seconds
    total = int(rate * seconds) if rate else None
    done = 0
    lags: list[float] = []
    write_ms: list[float] = []
    while True:
        now = time.time()
        if rate:
            due = min(total, int((now - start) * rate))
            if done >= total:
                break
            if due == done:
                time.sleep(TICK_S - (now - start) % TICK_S)
                continue
        else:
            if now >= stop:
                break
            due = done + BATCH_READINGS
        take = range(done, min(due, done + BATCH_READINGS))
        times_us = [int((start + j / rate) * 1e6) if rate else int(start * 1e6) + j for j in take]
        body = "\n".join(f"{a}fcnt={j // n + 1}.0{b} {ts}" for j, ts in zip(take, times_us, strict=True)
                         for a, b in stems[j % n])
        t0 = time.time()
        _post(conn, path, body.encode())
        t1 = time.time()
        write_ms.append((t1 - t0) * 1000)
        if rate:
            lags.extend(t1 * 1000 - ts / 1000 for ts in times_us)
        done = take.stop
    wall = time.time() - start
    return {"offered_per_s": rate or float("nan"), "done_per_s": done / wall, "readings": done,
            "lag": _stats(lags), "write": _stats(write_ms), "wall_s": wall}


def store_step(kind: str, gateways: int, work: Path) -> dict[str, Any]:
    from tests.support.influx import InfluxDB1, VictoriaMetrics  # noqa: PLC0415

    stems = line_stems(gateways)
    server = InfluxDB1(work / "influx") if kind == "influx" else VictoriaMetrics(work / "vm")
    server.start(60)
    try:
        if kind == "influx":
            server.create_database("denen")
        conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
        path = "/write?db=denen&precision=u"
        cpu = CpuMeter({"store": server.proc.pid, "writer (this process)": os.getpid()})
        phases = []
        for name, rate, secs in (("field", gateways / 10, 20), ("flood", float(gateways), 10), ("max", None, 10)):
            r = store_phase(conn, path, stems, rate, secs)
            phases.append({"name": name, **r, "cpu": cpu.lap()})
            c.say(f"store {kind} {gateways}: {name} {r['done_per_s']:.0f}/s")
        conn.close()
        return {"part": f"store {kind}", "gateways": gateways, "phases": phases, "rss_mib": {kind: _rss(server.proc.pid)}}
    finally:
        server.stop()


# -- the broker alone -----------------------------------------------------------------------------------------------
def _spawn_workers(broker: fleet.FleetBroker, gids: list[str], backlog_idx: list[int], backlog: int,
                   workers: int) -> tuple[list[Any], list[Any]]:
    ctx = mp.get_context("spawn")
    tpl = fleet.templates()
    procs, pipes = [], []
    for w in range(workers):
        idxs = list(range(w, len(gids), workers))
        parent, child = ctx.Pipe()
        spec = {"host": broker.host, "port": broker.port, "gateway_indices": idxs,
                "passwords": {gids[i]: broker.passwords[gids[i]] for i in idxs}, "templates": tpl,
                "backlog_indices": [i for i in idxs if i in set(backlog_idx)], "backlog": backlog,
                "drain_phase": "flood", "drain_timeout_s": 120, "seed": 2000 + w}
        proc = ctx.Process(target=fleet.worker_main, args=(child, spec), name=f"components-worker-{w}")
        proc.start()
        procs.append(proc)
        pipes.append(parent)
    fleet.workers_ready(pipes, 300)
    return procs, pipes


def _received(path: Path) -> list[tuple[str, int, float]]:
    """(id, ts_us, received at in ms since the epoch) of every reading in mosquitto_sub's output (``<unix time with
    ns> <payload>`` a line)."""
    out = []
    with path.open("rb") as f:
        for raw in f:
            t, _, payload = raw.partition(b" ")
            if not payload.strip():
                continue
            t_ms = float(t) * 1000
            for r in json.loads(payload)["readings"]:
                out.append((r["id"], r["ts_us"], t_ms))
    return out


def broker_step(gateways: int, work: Path, workers: int = 4) -> dict[str, Any]:
    gids = [fleet.gateway_id(i) for i in range(gateways)]
    backlog_idx = list(range(19, gateways, 20))
    broker = fleet.FleetBroker(work / "broker", gids)
    broker.start()
    sub = None
    procs: list[Any] = []
    pipes: list[Any] = []
    try:
        out_path = work / "received.txt"
        # The subscriber's throwaway password of a loopback run is on its command line (mosquitto_sub has no file
        # option); the broker lives only for this step.
        with out_path.open("wb") as out:
            sub = subprocess.Popen(["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-V", "mqttv5",
                                    "-q", "1", "-i", fleet.BRIDGE_USER, "-u", fleet.BRIDGE_USER, "-P",
                                    broker.passwords[fleet.BRIDGE_USER], "-F", "%U %p",
                                    "-t", f"$share/denen-bridge/{PREFIX}/+/readings/#"], stdout=out)
        procs, pipes = _spawn_workers(broker, gids, backlog_idx, 600, workers)
        start_at = time.time() + 1.0
        phases = [{"name": "field", "start": start_at, "end": start_at + 20, "interval": 10.0},
                  {"name": "flood", "start": start_at + 20, "end": start_at + 30, "interval": 1.0}]
        for pipe in pipes:
            pipe.send({"phases": phases})
        cpu = CpuMeter({"mosquitto": broker.proc.pid, "subscriber": sub.pid,
                        **{f"generator {i}": p.pid for i, p in enumerate(procs)}})
        laps = {}
        for ph in phases:
            time.sleep(max(0.0, ph["end"] - time.time()))
            lap = cpu.lap()
            lap["generators"] = sum(lap.pop(f"generator {i}") for i in range(len(procs)))
            laps[ph["name"]] = lap
        acked = 0
        for pipe in pipes:
            if not pipe.poll(240):
                raise RuntimeError("a worker did not report its records")
            msg = pipe.recv()
            acked += sum(1 for code in msg["records"][7] if code == 0)
        rss = _rss(broker.proc.pid)
        time.sleep(1.0)
        end(sub, 10)
        got = _received(out_path)
        # Live readings of the gateways that never had a backlog (the others' wait behind it by design).
        draining = {gids[i] for i in backlog_idx}
        live = [g for g in got if g[0].split("/", 1)[0] not in draining]
        phase_rows = _broker_phases(live, phases, laps, gateways - len(draining))
        backlog_rows = _broker_phases([g for g in got if g[0].split("/", 1)[0] in draining], phases, laps,
                                      len(draining))[2:]
        return {"part": "broker", "gateways": gateways, "phases": phase_rows[:2] + backlog_rows,
                "rss_mib": {"mosquitto": rss}, "acked": acked, "received": len(got),
                "missing": acked - len({rid for rid, _, _ in got})}
    finally:
        end_workers(pipes, procs)
        end(sub, 10)
        broker.stop()


def _broker_phases(got: list[tuple[str, int, float]], phases: list[dict[str, Any]], laps: dict[str, Any],
                   gateways: int) -> list[dict[str, Any]]:
    out = []
    for ph in phases:
        lo, hi = ph["start"] * 1e6, ph["end"] * 1e6
        lags = [t_ms - ts / 1000 for _, ts, t_ms in got if lo <= ts < hi]
        secs = ph["end"] - ph["start"]
        out.append({"name": ph["name"], "offered_per_s": gateways / ph["interval"], "done_per_s": len(lags) / secs,
                    "lag": _stats(lags), "cpu": laps[ph["name"]]})
    backlog = [t_ms for _, ts, t_ms in got if ts < phases[0]["start"] * 1e6]
    if backlog:
        secs = max(backlog) / 1000 - phases[1]["start"]
        out.append({"name": f"backlog: {len(backlog):,} readings of {gateways} gateways, flood start -> last "
                    "received", "offered_per_s": float("nan"), "done_per_s": len(backlog) / secs, "seconds": secs,
                    "lag": _stats([]), "cpu": {}})
    return out


# -- the bridge with each store ---------------------------------------------------------------------------------------
def generator_main(conn: Any, spec: dict[str, Any]) -> None:
    """The generator process: one MQTT client publishing every gateway's readings (one a message, QoS 1) on the
    schedule it is sent, then a backlog of 200-reading messages when asked; reports what the broker acknowledged."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion  # noqa: PLC0415

    tpl = fleet.templates()
    n_series = spec["gateways"] * NODES
    acked = collections.Counter()
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="components-generator",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = lambda cl, ud, mid, rc, props: acked.update([not rc.is_failure])
    client.connect(spec["host"], spec["port"])
    # One thread runs the client (client.loop between publishes): with paho's own thread beside a publishing one,
    # messages beyond the inflight window were left unsent at 10,000/s.
    deadline = time.monotonic() + 30
    while not client.is_connected() and time.monotonic() < deadline:
        client.loop(0.05)
    try:
        j = msgs = 0
        while True:
            cmd = conn.recv()
            if cmd["do"] == "stop":
                break
            sent = 0
            if cmd["do"] == "phase":
                start, rate, secs = cmd["start"], cmd["rate"], cmd["seconds"]
                total = int(rate * secs)
                while sent < total:
                    due = min(total, int((time.time() - start) * rate))
                    if due <= sent:
                        client.loop(0.002)
                        continue
                    for i in range(sent, due):
                        s = (j + i) % n_series
                        ts = int((start + i / rate) * 1e6)
                        client.publish(topic(s // NODES), envelope(s // NODES, [reading(tpl, s // NODES, s % NODES,
                                       (j + i) // n_series + 1, ts)]), qos=1)
                        client.loop(0)
                    msgs += due - sent
                    sent = due
                j += total
            else:  # a backlog: 200 readings a message, each gateway's journal after an outage, an hour old
                t_old = int((time.time() - 3600) * 1e6)
                for m in range(0, cmd["readings"], 200):
                    gw = (m // 200) % spec["gateways"]
                    bodies = [reading(tpl, gw, i % NODES, 1_000_000 + i, t_old + i)
                              for i in range(m, min(m + 200, cmd["readings"]))]
                    client.publish(topic(gw), envelope(gw, bodies), qos=1)
                    client.loop(0)
                    sent += len(bodies)
                    msgs += 1
            deadline = time.monotonic() + 120
            while acked[True] + acked[False] < msgs and time.monotonic() < deadline:
                client.loop(0.01)
            conn.send({"sent": sent, "acked_messages": acked[True], "refused_messages": acked[False]})
    finally:
        client.disconnect()
        client.loop(0.1)


def _start_bridge(work: Path, broker: Any, relay: fleet.Relay) -> tuple[subprocess.Popen[bytes], Path]:
    """``denen bridge`` with its defaults (batching, persistent session, shared group) into the relay; returns once
    it has subscribed (again, on a restart: the log is appended to)."""
    cfg = work / "bridge.yaml"
    settings = {"mqtt": {"host": broker.host, "port": broker.port, "client_id": "denen-bridge-1",
                         "group": "denen-bridge", "topic_prefix": PREFIX},
                "sink": {"type": "v1", "url": relay.url, "database": "denen"},
                "dead_letter": {"path": str(work / "dead-letter.db")}, "log": {"level": "info"}}
    cfg.write_text(json.dumps(settings, indent=1))  # JSON is YAML
    log_path = work / "bridge.log"

    def subscribed() -> int:
        return log_path.read_text(errors="replace").count("MQTT: subscribed") if log_path.exists() else 0

    before = subscribed()
    with log_path.open("ab") as lf:
        bridge = subprocess.Popen([sys.executable, "-m", "agent.cli", "bridge", "-c", str(cfg)], cwd=fleet.REPO,
                                  stdout=lf, stderr=subprocess.STDOUT)
    c.wait_until(lambda: subscribed() > before or bridge.poll() is not None, 60, 0.05)
    if subscribed() <= before or bridge.poll() is not None:
        end(bridge, 10)
        raise RuntimeError(f"the bridge did not subscribe: {log_path.read_text(errors='replace')[-2000:]}")
    return bridge, log_path


def bridge_step(kind: str, gateways: int, work: Path, backlog: int) -> dict[str, Any]:
    from agent.dev.devbroker import Mosquitto  # noqa: PLC0415
    from tests.support.influx import InfluxDB1, VictoriaMetrics  # noqa: PLC0415

    broker = Mosquitto(work / "broker")
    server = InfluxDB1(work / "influx") if kind == "influx" else VictoriaMetrics(work / "vm")
    relay = bridge = gen = None
    pipe = None
    try:
        broker.start()
        server.start(60)
        if kind == "influx":
            server.create_database("denen")
        relay = fleet.Relay(server.host, server.port)
        relay.start()
        bridge, _ = _start_bridge(work, broker, relay)
        pipe, child = mp.get_context("spawn").Pipe()
        proc = mp.get_context("spawn").Process(target=generator_main, args=(child, {
            "host": broker.host, "port": broker.port, "gateways": gateways}), name="components-generator")
        proc.start()
        gen = proc
        pids = {"bridge": bridge.pid, "store": server.proc.pid, "mosquitto": broker.proc.pid, "generator": gen.pid,
                "relay (this process)": os.getpid()}
        phases, laps, sent = [], {}, 0
        cpu = CpuMeter(pids)
        for name, rate, secs in (("field", gateways / 10, 20), ("flood", float(gateways), 10)):
            start = time.time() + 0.5
            pipe.send({"do": "phase", "start": start, "rate": rate, "seconds": secs})
            got = pipe.recv()
            sent += got["sent"]
            c.wait_until(lambda: relay.node_health_lines >= sent, 180, 0.1)
            laps[name] = cpu.lap()
            phases.append({"name": name, "start": start, "end": start + secs, "rate": rate, "sent": got["sent"],
                           "drained_at": time.time()})
        rss_live = _rss(bridge.pid)
        end(bridge, 30)
        pipe.send({"do": "backlog", "readings": backlog})
        pipe.recv()
        cpu.lap()
        # From the restart, start-up included: the broker hands the queued messages over right after CONNACK,
        # before the bridge's SUBSCRIBE is answered.
        phases[-1]["backlog_from"] = time.time()
        bridge, _ = _start_bridge(work, broker, relay)
        cpu.pids["bridge"] = bridge.pid
        c.wait_until(lambda: relay.node_health_lines >= sent + backlog, 300, 0.1)
        laps["backlog"] = cpu.lap()
        rss = {"bridge": rss_live, "bridge after the backlog": _rss(bridge.pid),
               "bridge peak": _rss(bridge.pid, "VmHWM"), kind: _rss(server.proc.pid)}
        pipe.send({"do": "stop"})
        return {"part": f"bridge -> {kind}", "gateways": gateways, "rss_mib": rss,
                "phases": _bridge_phases(relay.written(), phases, laps, backlog, sent)}
    finally:
        if pipe is not None:
            pipe.close()
        if gen is not None:
            gen.join(15)
            if gen.is_alive():
                gen.terminate()
                gen.join(5)
        end(bridge, 30)
        if relay is not None:
            relay.stop()
        server.stop()
        broker.stop()


def _bridge_phases(written: dict[tuple[str, str, int], int], phases: list[dict[str, Any]], laps: dict[str, Any],
                   backlog: int, live: int) -> list[dict[str, Any]]:
    out = []
    first = int(phases[0]["start"] * 1e6)
    for ph in phases:
        lo, hi = int(ph["start"] * 1e6), int(ph["end"] * 1e6)  # as the generator stamps them
        lags = [(t - ts) / 1000 for (_, _, ts), t in written.items() if lo <= ts < hi]
        secs = ph["end"] - ph["start"]
        out.append({"name": ph["name"], "offered_per_s": ph["rate"], "published_per_s": ph["sent"] / secs,
                    "done_per_s": sum(1 for t in written.values() if lo <= t < hi) / secs, "lag": _stats(lags),
                    "cpu": laps[ph["name"]], "missing": ph["sent"] - len(lags)})
    acks = sorted(t for (_, _, ts), t in written.items() if ts < first)
    if acks:
        secs = acks[-1] / 1e6 - phases[-1]["backlog_from"]
        out.append({"name": f"backlog: {backlog:,} readings queued in 200-reading messages, bridge started -> "
                    "last written",
                    "offered_per_s": float("nan"), "done_per_s": len(acks) / max(secs, 1e-9), "seconds": secs,
                    "lag": _stats([]), "cpu": laps["backlog"], "missing": backlog - len(acks)})
    return out


# -- the table ------------------------------------------------------------------------------------------------------
HEADER = ["part", "gateways (series)", "phase", "offered/s", "done/s", "lag p50 ms", "lag p99 ms", "lag max ms",
          "CPU % of a core", "RSS MiB at end"]


def rows(r: dict[str, Any]) -> list[list[str]]:
    out = []
    rss = ", ".join(f"{k} {c.fmt(v)}" for k, v in r["rss_mib"].items())
    for ph in r["phases"]:
        lag = ph["lag"]
        cpu = " / ".join(f"{k} {v:.0f}" for k, v in ph.get("cpu", {}).items()) or "-"
        out.append([r["part"], f"{r['gateways']:,} ({r['gateways'] * NODES:,})", ph["name"],
                    c.fmt(ph["offered_per_s"]), c.fmt(ph["done_per_s"]), c.fmt(lag["p50_ms"]), c.fmt(lag["p99_ms"]),
                    c.fmt(lag["max_ms"]), cpu, rss])
        if "write" in ph:
            out[-1][2] += f" (write p50 {c.fmt(ph['write']['p50_ms'])} / p99 {c.fmt(ph['write']['p99_ms'])} ms)"
        if ph.get("missing"):
            out[-1][2] += f" ({ph['missing']} missing)"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_components", description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=("store", "broker", "bridge"))
    ap.add_argument("--store", choices=("influx", "vm"), default="influx", help="store and bridge: which store")
    ap.add_argument("--gateways", default="1000,3000,10000", help="fleet sizes, comma-separated")
    ap.add_argument("--backlog", type=int, default=100_000, help="bridge: readings queued while it is stopped")
    ap.add_argument("--json", help="also write every figure as JSON to this path")
    args = ap.parse_args(argv)
    sizes = capacity.fleet_sizes(ap, "--gateways", args.gateways)
    if args.backlog < 1:
        ap.error("--backlog needs 1 or more readings")
    if args.part == "broker" and shutil.which("mosquitto_sub") is None:
        ap.error("the broker part needs mosquitto_sub (apt-get install mosquitto-clients)")
    started = time.monotonic()
    results = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="denen-bench-components-") as tmp:
            work = Path(tmp)
            if args.part == "store":
                results.append(store_step(args.store, n, work))
            elif args.part == "broker":
                results.append(broker_step(n, work))
            else:
                results.append(bridge_step(args.store, n, work, args.backlog))
        c.say(f"components: {args.part} {n} done, load average {os.getloadavg()[0]:.2f}")
    capacity.report("tests.bench.bench_components", argv, started, HEADER, [row for r in results for row in rows(r)])
    if args.json:
        c.write_json(args.json, results)
    return 1 if any(ph.get("missing") for r in results for ph in r["phases"]) or any(
        r.get("missing") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
