"""Three gateways hear the same node frames; three `denen bridge` processes share one subscription and one redis:
InfluxDB gets exactly one point per frame and measurement, one node_link point per reception, and each SOS once,
also when a bridge is SIGKILLed mid-stream (agent/bridge/dedupe.py).

Real parts only: Mosquitto, InfluxDB 1.6.7, redis-server, the bridges as their own processes. Each gateway publishes
its own copy of every frame (own identity ``<gateway>/<node>/<fcnt>``, own receive time, RSSI and SNR), in batches
of its own size and its own order, with jitter, from its own MQTT connection at the same time as the others.

``DENEN_MULTI_GATEWAY_FRAMES`` sets the number of frames (default 10,000, the issue's size).
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agent.bridge.dedupe import BACKOFF_MAX_S
from agent.dev.devbroker import Mosquitto
from tests.bridge._helpers import (
    T0_US,
    Publisher,
    batch,
    reading,
    topic,
    write_v1_bridge_config,
)
from tests.support.fault_rig import BridgeProcess
from tests.support.influx import InfluxDB1
from tests.support.polling import wait_until
from tests.support.redis_server import RedisServer, redis_server  # noqa: F401 - the fixture

pytestmark = pytest.mark.broker

DB = "denen"
GATEWAYS = ("gw-valley-a", "gw-valley-b", "gw-relay-c")
BATCH_SIZES = (40, 50, 64)  # per gateway: the copies of one frame travel in different messages
NODES = 50
#: The one site of every gateway: copies merge within one site only (agent/bridge/dedupe.py, rule 2).
SITE = "okutama"
SUMMARY_RE = re.compile(r"bridge stopped: \d+ messages \((\d+) redelivered\).*; frames: (\d+) first receptions, "
                        r"(\d+) merged into an earlier one, (\d+) written unmerged")
FRAMES = int(os.environ.get("DENEN_MULTI_GATEWAY_FRAMES", "10000"))


def sos_alert(gw: str, seq: int, node: str, fcnt: int, *, ts_us: int) -> dict[str, Any]:
    """The alert gateway ``gw`` raises (its own id, its own sequence) for the SOS frame ``fcnt`` of ``node``."""
    r = reading(gw, 0, seq, "alert", {"raised": 1.0}, ts_us=ts_us, rssi=None, snr=None)
    r.update(id=f"{gw}/gateway/{seq}", node="gateway", lane="alarm", alert={
        "id": f"{gw}:sos:{node}#{seq}", "key": f"sos:{node}", "type": "sos", "state": "raised",
        "severity": "emergency", "node": node, "name": "hiker", "message": "SOS", "reading": f"{gw}/{node}/{fcnt}"})
    return r


def frame(i: int) -> tuple[int, int, str, dict[str, float]]:
    """Frame i: (node, fcnt, kind, values); every 10th an SOS press."""
    node, fcnt = 0xA00 + i % NODES, i // NODES + 1
    if i % 10 == 7:
        return node, fcnt, "sos", {"pressed": 1.0, "battery_v": 3.4}
    return node, fcnt, "water_level", {"level_cm": 100.0 + (i % 89) * 0.5, "battery_v": 3.6}


def gateway_messages(g: int, gw: str, rng: random.Random, frames: range, *, alerts: bool = True
                     ) -> list[tuple[str, bytes]]:
    """Gateway g's copies of every frame: its receive time (the frame's air time plus 0-300 ms), RSSI and SNR,
    in batches of its own size per lane, neighbouring batches swapped at random."""
    by_lane: dict[str, list[dict[str, Any]]] = {"sos": [], "telemetry": [], "alarm": []}
    for i in frames:
        node, fcnt, kind, values = frame(i)
        r = reading(gw, node, fcnt, kind, values, ts_us=T0_US + i * 100_000 + rng.randrange(300_000),
                    rssi=rng.randrange(-120, -60), snr=round(rng.uniform(-10, 10), 1))
        by_lane[r["lane"]].append(r)
        if kind == "sos" and alerts:  # each gateway's rules raise their own SOS alert for the press they heard
            by_lane["alarm"].append(sos_alert(gw, i, f"{node:08x}", fcnt, ts_us=r["ts_us"] + 1))
    size = BATCH_SIZES[g]
    out = [(topic(gw, lane), batch(gw, rs[k:k + size], site=SITE)) for lane, rs in by_lane.items()
           for k in range(0, len(rs), size)]
    out.sort(key=lambda m: rng.random())  # each gateway's own order: no copy is reliably first
    return out


def publish_all(broker: Mosquitto, plans: list[list[tuple[str, bytes]]]) -> None:
    """Every gateway publishes its plan at once from its own connection, in groups of a few messages with random
    pauses, and waits for every PUBACK."""
    errors: list[BaseException] = []

    def run(g: int) -> None:
        pub = Publisher(broker, client_id=f"{GATEWAYS[g]}-out")
        rng = random.Random(100 + g)
        try:
            plan = plans[g]
            k = 0
            while k < len(plan):
                n = rng.randrange(1, 6)
                pub.publish(plan[k:k + n], timeout=60)
                k += n
                time.sleep(rng.random() * 0.004)
        except BaseException as exc:  # noqa: BLE001 - thread top level: the test reads it
            errors.append(exc)
        finally:
            pub.close()

    threads = [threading.Thread(target=run, args=(g,)) for g in range(len(GATEWAYS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors


def start_bridges(tmp_path: Path, broker: Mosquitto, influx: InfluxDB1, redis: RedisServer) -> list[BridgeProcess]:
    """Three bridges of one group, sharing ``redis``; the registry puts the three gateways in one site."""
    bridges = []
    for i in range(1, 4):
        cid = f"bridge-dd-{i}"
        cfg = write_v1_bridge_config(tmp_path, broker, influx.url, cid, sites=dict.fromkeys(GATEWAYS, SITE),
                                     more=f"dedupe:\n  redis_url: {redis.url}\n  window_s: 600\n",
                                     max_wait_ms=50, max_messages=50, level="info")
        bridges.append(BridgeProcess(cfg, tmp_path / f"{cid}.log"))
    for b in bridges:
        b.start()
    return bridges


def plans(frames: range, *, alerts: bool = True) -> list[list[tuple[str, bytes]]]:
    return [gateway_messages(g, gw, random.Random(g * 7919 + frames.start), frames, alerts=alerts)
            for g, gw in enumerate(GATEWAYS)]


def stopped(bridges: list[BridgeProcess]) -> list[tuple[str, ...]]:
    """Stop every bridge cleanly; their final summary counts (redelivered, first, merged, unmerged)."""
    time.sleep(0.5)  # anything still on its way would show up as an extra point
    for b in bridges:
        assert b.terminate() == 0, b.run_log()[-2000:]
    summaries = [m for b in bridges for m in SUMMARY_RE.findall(b.run_log())]
    assert len(summaries) == 3, [b.run_log()[-1000:] for b in bridges]
    return summaries


def points(influx: InfluxDB1) -> Counter[tuple[str, int]]:
    """Points per frame (node, fcnt) in the frames' measurements; each must be one reception's, whole: its
    gateway, the gateways' site, and that gateway's receive time (its node_link point's)."""
    receptions: dict[tuple[str, str, int], int] = {}
    for row in influx.rows('SELECT "fcnt" FROM "node_link" GROUP BY "gateway", "node"', DB):
        receptions[(row["gateway"], row["node"], int(row["fcnt"]))] = row["time"]
    seen: Counter[tuple[str, int]] = Counter()
    for row in influx.rows('SELECT "fcnt", "rssi" FROM "water_level", "sos" GROUP BY "gateway", "node", "site"',
                           DB):
        key = (row["node"], int(row["fcnt"]))
        seen[key] += 1
        assert receptions[(row["gateway"], *key)] == row["time"], row
        assert row["site"] == SITE
    return seen


def frame_ids(frames: range) -> set[tuple[str, int]]:
    return {(f"{frame(i)[0]:08x}", frame(i)[1]) for i in frames}


def test_three_gateways_three_bridges_one_point_per_frame(tmp_path: Path, broker: Mosquitto, influx: InfluxDB1,
                                                          redis_server: RedisServer) -> None:  # noqa: F811
    n_sos = sum(1 for i in range(FRAMES) if frame(i)[2] == "sos")
    links = lambda: influx.count("node_link", "fcnt", DB)  # noqa: E731
    bridges = start_bridges(tmp_path, broker, influx, redis_server)
    try:
        load = threading.Thread(target=publish_all, args=(broker, plans(range(FRAMES))))
        load.start()
        # A bridge dies with claims made and points not yet written or acknowledged: the broker sends its share
        # again, and whoever writes it writes the registered points.
        assert wait_until(lambda: links() >= FRAMES // 2, 120), links()
        bridges[1].kill9()
        time.sleep(0.3)
        bridges[1].start()
        load.join(600)
        assert wait_until(lambda: links() >= 3 * FRAMES, 180), (links(), 3 * FRAMES)
        assert wait_until(lambda: influx.count("alert", "raised", DB) >= n_sos, 60)
        summaries = stopped(bridges)
        # The restarted bridge was given again what the killed one held unacknowledged, claims made or not.
        assert int(SUMMARY_RE.findall(bridges[1].run_log())[-1][0]) > 0, bridges[1].run_log()[-2000:]
        assert sum(int(m[2]) for m in summaries) > 0
        assert sum(int(m[3]) for m in summaries) == 0  # redis answered every claim
    finally:
        for b in bridges:
            b.stop()

    assert influx.count("sos", "pressed", DB) == n_sos  # each SOS once, though three gateways heard it
    assert influx.count("alert", "raised", DB) == n_sos  # and one alert per SOS, though three gateways raised it
    assert influx.count("water_level", "level_cm", DB) == FRAMES - n_sos
    assert influx.count("node_health", "fcnt", DB) == FRAMES
    assert links() == 3 * FRAMES
    gateways = Counter(row["gateway"] for row in influx.rows('SELECT "fcnt" FROM "node_link" GROUP BY "gateway"', DB))
    assert gateways == {gw: FRAMES for gw in GATEWAYS}
    seen = points(influx)
    assert set(seen) == frame_ids(range(FRAMES)) and set(seen.values()) == {1}
    # No copy was always first: the first reception of a frame is whichever reached redis first.
    firsts = Counter(row["gateway"] for row in influx.rows('SELECT "fcnt" FROM "node_health" GROUP BY "gateway"', DB))
    assert len(firsts) >= 2, firsts


def test_redis_outage_duplicates_frames_and_loses_none(tmp_path: Path, broker: Mosquitto, influx: InfluxDB1,
                                                        redis_server: RedisServer) -> None:  # noqa: F811
    """Frames before the outage are merged; frames while redis is down are written as each gateway sent them (three
    points each, none held back); after redis is back (empty: it keeps nothing on disk) they are merged again."""
    before, during, after = range(0, 600), range(600, 1200), range(1200, 1800)
    links = lambda: influx.count("node_link", "fcnt", DB)  # noqa: E731
    bridges = start_bridges(tmp_path, broker, influx, redis_server)
    try:
        outage = 0.0
        for part, redis_up in ((before, True), (during, False), (after, True)):
            if redis_up and redis_server.proc is None:
                redis_server.start()
                # Every bridge asks redis again by then: a back-off doubles from 1 s after each failure, so the
                # one pending now ends at most (time since the outage began) + 1 s from now, and never later
                # than BACKOFF_MAX_S.
                time.sleep(min(BACKOFF_MAX_S, time.monotonic() - outage + 1) + 0.5)
            elif not redis_up:
                redis_server.stop()
                outage = time.monotonic()
            publish_all(broker, plans(part, alerts=False))  # frames only: the counts below are the frames'
            assert wait_until(lambda p=part: links() >= 3 * p.stop, 120), (links(), 3 * part.stop)
        summaries = stopped(bridges)
        assert sum(int(m[3]) for m in summaries) == 3 * len(during)
    finally:
        for b in bridges:
            b.stop()
    assert links() == 3 * after.stop
    seen = points(influx)
    assert set(seen) == frame_ids(range(after.stop))  # nothing lost
    assert {k: n for k, n in seen.items() if n != 1} == {k: 3 for k in frame_ids(during)}
    assert influx.count("node_health", "fcnt", DB) == len(before) + 3 * len(during) + len(after)
