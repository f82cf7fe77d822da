"""Long outage: 72 simulated hours without a broker fill a 1 MB journal; the quota evicts only telemetry and
diagnostics, oldest first, keeps every SOS and alarm, and when the link returns SOS goes first, then alarms.

Time is compressed by the frame counters, not the clock: every telemetry node sends one frame per simulated
10 minutes, so 72 hours are 432 rounds of frames, injected as fast as the agent journals them (the test waits for
``frames.ok`` to catch up after every block, so the module never drops a line for a host that is not reading).
SOS presses and trap events fall on chosen simulated times, the first SOS in the first hour (the oldest reading of
the outage, which a wrong eviction would take first). The rounds are spread over 30 real seconds (120 in the
full variant, which also has 72 telemetry nodes instead of 24), so the gateway's own health readings
(diagnostics lane, every 10 real seconds) are made meanwhile.

Checked, by (node, frame counter) and by the counters ``denen status --json`` prints:

* every SOS and trap frame of the outage arrives exactly once, and so does every alert the gateway raised;
  ``journal.evicted.sos`` and ``journal.evicted.alarm`` do not exist;
* the telemetry that arrives is exactly the newest ``n`` frames injected (a contiguous newest tail of the lane,
  hence of every node), the rest is counted in ``journal.evicted.telemetry``: arrived + evicted = injected;
* the gateway readings that never arrive are exactly ``journal.evicted.diagnostics`` health readings, all older
  than the surviving ones of the outage;
* after the broker returns, the first reading message the subscriber receives is on the SOS topic, every SOS of
  the backlog comes before anything else, and every alarm of the backlog before any telemetry or diagnostics.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from agent.dev.devbroker import Mosquitto
from agent.gateway.reading import GATEWAY_NODE, LANES
from tests.support.fault_rig import (GATEWAY, AgentProcess, Key, WireRecorder, denen_status_json, journal_status,
                                     journaled_once, readings_collector, readings_in, sized, write_gateway)
from tests.support.field import FieldNode, default_values, start_sim, wait_configured
from tests.support.polling import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.broker]

HOURS = 72
STEP_MIN = 10  # simulated minutes between two frames of a telemetry node
ROUNDS = HOURS * 60 // STEP_MIN
TELEMETRY_NODES = sized(24, 72)
QUOTA_MB = 1.0
OUTAGE_REAL_S = sized(30, 120)  # real seconds the 72 simulated hours take
BLOCK = 400  # frames injected before waiting for the journal to catch up


def test_72_hour_outage_evicts_only_the_oldest_telemetry_and_diagnostics_and_sos_goes_first(
        tmp_path: Path, broker: Mosquitto, rng: random.Random, figures: dict[str, Any]) -> None:
    kinds = ("water_level", "rain", "weather", "tilt")
    telemetry = [FieldNode(0x0B000000 + i, kinds[i % len(kinds)]) for i in range(TELEMETRY_NODES)]
    traps = [FieldNode(0x0B100000 + i, "trap") for i in range(4)]
    buttons = [FieldNode(0x0B200000 + i, "sos") for i in range(3)]
    # Simulated rounds (10 min each) with an SOS press; the first one in the first hour.
    sos_rounds = {3: buttons[0], 70: buttons[1], 180: buttons[2], 250: buttons[0], 330: buttons[1],
                  ROUNDS - 2: buttons[2]}
    trap_rounds = {r: traps[r % len(traps)] for r in sorted(rng.sample(range(ROUNDS), 40))}

    sim = start_sim(tmp_path, rng_seed=rng.random())
    wire = WireRecorder(sim)
    journal = tmp_path / "journal.db"
    cfg = write_gateway(tmp_path, sim=sim, broker=broker, journal=journal,
                        nodes=[*telemetry, *traps, *buttons], quota_mb=QUOTA_MB, health_s=10)
    col = readings_collector(broker, "outage-collector")
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    injected: list[tuple[str, Key]] = []  # (lane, key) in injection order
    started = time.monotonic()
    try:
        agent.start()
        assert wait_configured(sim, 0, 20), agent.run_log()
        assert wait_until(lambda: journal_status(journal)["counters"].get("mqtt.connects", 0) >= 1, 20)
        broker.stop()
        assert wait_until(lambda: journal_status(journal)["counters"].get("mqtt.disconnects", 0) >= 1, 20)
        before = len(col.messages)
        outage_started = time.monotonic()

        def inject(node: FieldNode, i: int, lane: str) -> None:
            assert sim.inject_uplink(node.frame(default_values(node.kind, i)))
            injected.append((lane, (node.hex, node.counter)))

        for r in range(ROUNDS):
            # Spread the rounds over OUTAGE_REAL_S, so the gateway makes health reports (every 10 s) meanwhile.
            ahead = outage_started + r * OUTAGE_REAL_S / ROUNDS - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            if r in sos_rounds:
                inject(sos_rounds[r], r, "sos")
            if r in trap_rounds:
                inject(trap_rounds[r], r, "alarm")
            for n in telemetry:
                inject(n, r, "telemetry")
                if len(injected) % BLOCK == 0:
                    _caught_up(journal, len(injected))
        _caught_up(journal, len(injected))
        assert len(wire) == len(injected), "the module dropped lines: the accounting below would not hold"
        # Let one more quota check run (at most once a second, after a commit with readings: health is one).
        time.sleep(11)
        assert agent.alive, agent.run_log()[-3000:]
        live = _live_bytes(journal)
        backlog = _journal_rows(journal)
        status = denen_status_json(cfg)
        outage_s = time.monotonic() - outage_started

        subscribed_before = len(col.messages)
        broker.start()
        assert wait_until(lambda: journal_status(journal)["journal"]["unsent"] == 0, 60), \
            journal_status(journal)["journal"]
        want = {k for lane, k in injected if lane != "telemetry"}
        assert col.wait_for(lambda m: want <= {(r["node"], r["fcnt"]) for _, r in readings_in(m)}, 30)
        time.sleep(0.5)  # late duplicates, if any, would arrive now
        assert agent.alive, agent.run_log()[-3000:]
        final_status = denen_status_json(cfg)
        assert agent.terminate() == 0
        # Every gateway reading (health, alerts) has its number in one sequence, kept in the journal's meta.
        gateway_seq = int(_meta(journal)["gateway_seq"])
        left = {ident for _, ident, node in _journal_rows(journal) if node == "gateway"}
    finally:
        agent.stop()
        col.close()
        sim.stop()

    assert before == subscribed_before  # nothing reached the subscriber during the outage
    after = col.messages[before:]
    arrived = readings_in(after)
    ids = [r["id"] for _, r in arrived]
    # Alerts may be sent again until confirmed (same id); node readings must come exactly once.
    twice = journaled_once(r for _, r in arrived)
    assert not twice, f"readings journaled twice (two timestamps): {twice[:10]}"
    got = {(r["node"], r["fcnt"]) for _, r in arrived if r["node"] != "gateway"}
    c = status["counters"]

    # SOS and alarms: all kept, none evicted.
    for lane in ("sos", "alarm"):
        sent = {k for ln, k in injected if ln == lane}
        assert sent <= got, f"{lane}: {len(sent - got)} readings lost"
        assert c.get(f"journal.evicted.{lane}", 0) == 0
    alerts_backlog = {ident for lane, ident, node in backlog if node == "gateway" and lane == "alarm"}
    assert alerts_backlog <= set(ids), "an alert journaled during the outage never arrived"

    # Telemetry: exactly the newest tail survived; the rest is counted as evicted.
    tel = [k for ln, k in injected if ln == "telemetry"]
    tel_got = [k for k in tel if k in got]
    evicted_tel = c.get("journal.evicted.telemetry", 0)
    assert evicted_tel > 0, "the journal never reached its quota: the test proved nothing"
    assert len(tel_got) + evicted_tel == len(tel), (len(tel_got), evicted_tel, len(tel))
    assert tel_got == tel[len(tel) - len(tel_got):], "evicted telemetry was not the oldest"
    assert final_status["counters"].get("journal.evicted.telemetry") == evicted_tel  # nothing evicted while draining

    # Diagnostics: the gateway readings that never arrived are the evicted health reports, older than the rest.
    evicted_diag = c.get("journal.evicted.diagnostics", 0)
    gw = {r["fcnt"]: lane for lane, r in arrived if r["node"] == "gateway"}
    gw.update({r["fcnt"]: lane for lane, r in readings_in(col.messages[:before]) if r["node"] == "gateway"})
    unsent = {int(ident.rsplit("/", 1)[1]) for ident in left}  # made after the last publish (at the stop)
    missing = sorted(set(range(1, gateway_seq + 1)) - set(gw) - unsent)
    assert evicted_diag > 0 and len(missing) == evicted_diag, (evicted_diag, missing)
    # Diagnostics are evicted before any telemetry, so while the journal is over its quota every health report is
    # evicted at the next check; the ones that survive were made after the last eviction.
    survivors = [f for f, lane in gw.items() if lane == "diagnostics" and f > missing[0]]
    assert all(m < s for m in missing for s in survivors), (missing, survivors)

    # Order after the link returned: SOS first, then the backlog's alarms, then the rest.
    lanes = [doc_lane for doc_lane, _ in _messages(after)]
    assert lanes[0] == "sos", lanes[:5]
    first_other = next(i for i, ln in enumerate(lanes) if ln != "sos")
    assert all(ln != "sos" for ln in lanes[first_other:]) or _only_new_sos(after, first_other, injected)
    first_low = next(i for i, ln in enumerate(lanes) if ln in ("telemetry", "diagnostics"))
    alarms_before_low = {r["id"] for lane, r in readings_in(after[:first_low]) if lane == "alarm"}
    backlog_alarm_ids = {ident for lane, ident, _ in backlog if lane == "alarm"}
    assert backlog_alarm_ids <= alarms_before_low, "an alarm of the backlog came after telemetry"

    figures.update(
        simulated_hours=HOURS, real_outage_s=round(outage_s, 1), telemetry_nodes=TELEMETRY_NODES,
        frames=len(injected), sos=sum(1 for ln, _ in injected if ln == "sos"),
        trap=sum(1 for ln, _ in injected if ln == "alarm"), quota_mb=QUOTA_MB, live_bytes_at_end=live,
        evicted_telemetry=evicted_tel, evicted_diagnostics=evicted_diag, telemetry_survived=len(tel_got),
        backlog_at_reconnect=len(backlog), first_lanes=lanes[:6], seconds=round(time.monotonic() - started, 1),
    )
    assert live <= QUOTA_MB * 1048576 * 1.05, f"the journal holds {live} bytes, quota {QUOTA_MB} MB"


def _caught_up(journal: Path, n: int) -> None:
    """Wait until the agent has journaled ``n`` frames: the nodes' readings in the journal and the telemetry evicted
    for the quota (``frames.ok`` would do, but the agent writes that counter at most every 10 s; evictions at once)."""
    assert wait_until(lambda: _journaled(journal) >= n, 30, interval=0.02), (journal_status(journal)["counters"], n)


def _journaled(journal: Path) -> int:
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT COUNT(*) FROM reading WHERE node != ?", (GATEWAY_NODE,)).fetchone()[0]
        evicted = db.execute("SELECT value FROM counter WHERE name='journal.evicted.telemetry'").fetchone()
    finally:
        db.close()
    return rows + (evicted[0] if evicted else 0)


def _journal_rows(journal: Path) -> list[tuple[str, str, str]]:
    """(lane, reading id, node) of every unsent reading, oldest first, through a read-only connection."""
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        return [(LANES[lane], json.loads(body)["id"], node)
                for lane, node, body in db.execute("SELECT lane, node, body FROM reading ORDER BY seq")]
    finally:
        db.close()


def _meta(journal: Path) -> dict[str, str]:
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT key, value FROM meta"))
    finally:
        db.close()


def _live_bytes(journal: Path) -> int:
    """Bytes of live pages (the figure the quota applies to), through a read-only connection."""
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        return (pages - free) * size
    finally:
        db.close()


def _messages(messages: list[tuple[str, bytes, bool]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(lane, readings) per reading batch message, in arrival order."""
    out = []
    for topic, payload, _ in messages:
        if "/readings/" in topic:
            doc = json.loads(payload)
            assert doc["gateway"] == GATEWAY
            out.append((doc["lane"], doc["readings"]))
    return out


def _only_new_sos(after: list[tuple[str, bytes, bool]], first_other: int, injected: list[tuple[str, Key]]) -> bool:
    """True if every SOS message after the first non-SOS one holds only SOS readings not in the backlog."""
    backlog_sos = {k for ln, k in injected if ln == "sos"}
    late = [r for lane, rs in _messages(after)[first_other:] if lane == "sos" for r in rs]
    return not any((r["node"], r["fcnt"]) in backlog_sos for r in late)
