"""The journal's commit window in a real ``denen run``: telemetry waits up to ``journal.commit_window_ms`` to share
a commit, an SOS never waits, and a SIGKILL inside the window loses at most the frames read in that window.

Path: simulated RAK3172 on a pty -> ``denen run`` (its own process) -> real Mosquitto -> a subscriber. What was
committed is read from the journal itself (read-only, as ``denen status`` does): ``node.last_fcnt`` is written in
the same transaction as the readings that advanced it.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.dev.devbroker import Mosquitto
from tests.support.agentproc import AgentProcess
from tests.support.broker import Collector
from tests.support.field import NODES, FieldNode, config_text, default_values, readings_of, start_sim, wait_configured
from tests.support.polling import wait_until

pytestmark = pytest.mark.broker

WINDOW_MS = 1000  # the largest window the config allows: the frames inside it are easy to catch in the act


def committed_fcnt(journal: Path) -> dict[str, int]:
    """Per node, the newest frame counter committed (the replay window, written with the readings)."""
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        return {n: f for n, f in db.execute("SELECT node, last_fcnt FROM node") if f is not None}
    finally:
        db.close()


@pytest.fixture
def rig(tmp_path: Path, broker: Mosquitto) -> Iterator[dict]:
    nodes = [FieldNode(n.node_id, n.kind) for n in NODES]
    sim = start_sim(tmp_path)
    cfg = tmp_path / "gateway.yaml"
    text = config_text(port=sim.path, mqtt_port=broker.port, journal=tmp_path / "journal.db", nodes=nodes)
    cfg.write_text(text.replace("\n  quota_mb:", f"\n  commit_window_ms: {WINDOW_MS}\n  quota_mb:", 1))
    cfg.chmod(0o600)
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    agent.start()
    assert wait_configured(sim), (tmp_path / "agent.log").read_text()
    col = Collector(broker, "denen/v1/+/readings/#", client_id="window-collector", persistent=True)
    yield {"sim": sim, "agent": agent, "nodes": {n.kind: n for n in nodes}, "journal": tmp_path / "journal.db",
           "col": col, "log": tmp_path / "agent.log"}
    col.close()
    agent.stop()
    sim.stop()


def test_sigkill_inside_the_window_loses_only_its_frames_never_an_sos_nor_a_committed_reading(rig: dict) -> None:
    sim, agent, col, journal = rig["sim"], rig["agent"], rig["col"], rig["journal"]
    rain, sos = rig["nodes"]["rain"], rig["nodes"]["sos"]

    def ids(kind: str | None = None) -> Counter[str]:
        return Counter(r["id"] for r in readings_of(col.messages) if kind is None or r["kind"] == kind)

    # 1. Telemetry that has had its window: committed, published, acknowledged, and its deletion committed.
    for i in range(1, 6):
        assert sim.inject_uplink(rain.frame(default_values("rain", i)))
    assert col.wait_for(lambda m: len(ids("rain")) >= 5, 15), rig["log"].read_text()[-2000:]
    old = set(ids("rain"))
    assert wait_until(lambda: committed_fcnt(journal).get(rain.hex) == 5, 5)
    time.sleep(2 * WINDOW_MS / 1000 + 0.5)  # the acknowledgements' deletion commits within one window

    # 2. A window opens: telemetry waits in memory, uncommitted.
    for i in range(6, 9):
        assert sim.inject_uplink(rain.frame(default_values("rain", i)))
    time.sleep(0.15)
    assert committed_fcnt(journal).get(rain.hex) == 5, "telemetry committed before its window closed"

    # 3. An SOS inside the open window: committed and published at once, with everything waiting.
    t = time.perf_counter()
    assert sim.inject_uplink(sos.frame(default_values("sos", 0)))
    assert col.wait_for(lambda m: len(ids("sos")) == 1, 5)
    latency_ms = (time.perf_counter() - t) * 1e3
    assert latency_ms < WINDOW_MS / 2, f"SOS took {latency_ms:.0f} ms: it waited for the window"
    # The SOS commits alone and goes out; what waited commits in the same wake-up, right after it.
    t_sos = time.monotonic()
    assert wait_until(lambda: committed_fcnt(journal).get(rain.hex) == 8, 0.3, interval=0.005), \
        "the telemetry waiting did not commit with the SOS"
    assert time.monotonic() - t_sos < WINDOW_MS / 2000
    assert sos.hex in committed_fcnt(journal)

    # 4. A new window opens with two more frames; the power goes before it closes.
    for i in range(9, 11):
        assert sim.inject_uplink(rain.frame(default_values("rain", i)))
    time.sleep(0.2)
    agent.kill9()
    after_kill = committed_fcnt(journal)
    assert after_kill.get(rain.hex) == 8, "frames of the open window were committed before it closed"
    assert after_kill.get(sos.hex) is not None

    # 5. Restart: every committed reading arrives; only the killed window's frames (9, 10) may be missing.
    since = len(sim.commands)
    agent.start()
    assert wait_configured(sim, since), rig["log"].read_text()[-2000:]
    want = {f"gw-test-01/{rain.hex}/{s['fcnt']}" for s in rain.sent if s["fcnt"] <= 8}
    assert col.wait_for(lambda m: want <= set(ids("rain")), 15), sorted(want - set(ids("rain")))
    time.sleep(1.0)  # anything the new agent would send twice has had time to arrive
    got = ids()
    lost = {f"gw-test-01/{rain.hex}/{s['fcnt']}" for s in rain.sent} - set(got)
    assert lost <= {f"gw-test-01/{rain.hex}/{s['fcnt']}" for s in rain.sent if s["fcnt"] > 8}
    assert len(lost) <= 2
    assert ids("sos") and max(ids("sos").values()) <= 2  # the SOS may come again once (acked inside the window)
    # Readings acknowledged more than a window before the kill were deleted then: never sent again.
    assert all(got[i] == 1 for i in old), {i: got[i] for i in old if got[i] != 1}
    print(f"SOS pty -> subscriber inside an open {WINDOW_MS} ms window: {latency_ms:.1f} ms; "
          f"lost at the kill: {len(lost)} frame(s) of the open window")
