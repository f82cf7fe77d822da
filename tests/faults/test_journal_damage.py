"""Disk fault: the journal file is damaged (a bad SD card sector, a torn write the card's controller lied about).

Two ways, each with the agent as a real process, a simulated RAK3172 on a pty and a real Mosquitto:

1. **Damaged between runs.** Readings pile up in the journal during a broker outage; the agent is killed; pages in
   the middle of the file are overwritten with garbage. At the next start the agent must set the damaged file
   aside (never delete it), start a fresh journal, salvage what can still be read, raise a ``journal_damaged``
   alert, and then forward the salvaged readings and new traffic.
2. **Damaged under a running agent.** The same garbage is written into the file while the agent runs with a
   backlog; the next time the core touches a damaged page it must do the same, without stopping.

Accounting by (node, frame counter): every reading that reaches the subscriber is one the nodes sent, none twice
with two timestamps; what was on the damaged pages is reported (salvaged / lost), since no software can read it.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from agent.dev.devbroker import Mosquitto
from tests.support.fault_rig import (
    AgentProcess,
    WireRecorder,
    journal_status,
    journaled_once,
    readings_collector,
    readings_in,
    sized,
    write_gateway,
)
from tests.support.field import FieldNode, default_values, start_sim, wait_configured
from tests.support.polling import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.broker]

BACKLOG = sized(3000, 20000)  # readings journaled during the outage, before the damage
PAGE = 4096


def _damage(path: Path, rng: random.Random, pages: int = 3) -> list[int]:
    """Overwrite ``pages`` whole pages in the middle of the file (never page 1, the header) with random bytes."""
    size = path.stat().st_size
    total = size // PAGE
    assert total > 10, f"journal too small to damage ({size} bytes)"
    hit = sorted(rng.sample(range(total // 4, total - 2), pages))
    with path.open("r+b") as f:
        for p in hit:
            f.seek(p * PAGE)
            f.write(rng.randbytes(PAGE))
    return hit


def copy_journal(path: Path, copy: Path) -> Path:
    """A copy of the journal and its WAL, checkpointed: the pages the damaged file will be read with."""
    copy.mkdir()
    for suffix in ("", "-wal"):
        if Path(f"{path}{suffix}").exists():
            shutil.copyfile(f"{path}{suffix}", copy / f"journal.db{suffix}")
    db = sqlite3.connect(copy / "journal.db")
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        db.close()
    return copy / "journal.db"


def readings_on_damaged_leaves(before: Path, hit: list[int]) -> tuple[int, int]:
    """(readings in the journal, readings on reading-table leaf pages inside the damaged blocks), counted in the
    copy taken before the damage: the second is the most a salvage may lose, since interior and index pages hold
    no reading of their own. Needs SQLite's dbstat table (Debian's libsqlite3 has it)."""
    db = sqlite3.connect(before)
    try:
        size = db.execute("PRAGMA page_size").fetchone()[0]
        damaged = {b * PAGE // size + 1 + k for b in hit for k in range(max(1, PAGE // size))}
        leaves = db.execute("SELECT pageno, ncell FROM dbstat WHERE name='reading' AND pagetype='leaf'").fetchall()
        total = db.execute("SELECT COUNT(*) FROM reading").fetchone()[0]
    finally:
        db.close()
    return total, sum(cells for page, cells in leaves if page in damaged)


class Field:
    """Nodes on a simulated module, the agent, a persistent subscriber."""

    def __init__(self, tmp: Path, broker: Mosquitto, seed: int) -> None:
        self.tmp, self.broker = tmp, broker
        kinds = ["water_level", "rain", "tilt", "weather", "sos"]
        self.nodes = [FieldNode(0x0E200000 + i, k) for i, k in enumerate(kinds)]
        self.sim = start_sim(tmp, rng_seed=seed)
        self.wire = WireRecorder(self.sim)
        self.journal = tmp / "journal.db"
        self.cfg = write_gateway(tmp, sim=self.sim, broker=broker, journal=self.journal,
                                 nodes=self.nodes, health_s=3600)
        self.agent = AgentProcess(self.cfg, tmp / "agent.log")
        self.col = readings_collector(broker, "damage-collector")
        self.i = 0

    def send(self, n: int, *, rate_hz: float = 400.0) -> None:
        for _ in range(n):
            node = self.nodes[self.i % 4]  # telemetry only; the SOS node is pressed on purpose
            assert self.sim.inject_uplink(node.frame(default_values(node.kind, self.i)))
            self.i += 1
            time.sleep(1.0 / rate_hz)

    def journaled(self) -> int:
        return journal_status(self.journal)["counters"].get("frames.ok", 0)

    def damaged_alerts(self) -> list[dict[str, Any]]:
        return [r for _, r in readings_in(self.col.messages)
                if r["kind"] == "alert" and r["alert"]["type"] == "journal_damaged"]

    def check_delivery(self) -> dict[str, Any]:
        """Nothing invented, nothing twice; how many of the readings on the wire arrived."""
        got = [(r["node"], r["fcnt"]) for _, r in readings_in(self.col.messages) if r["node"] != "gateway"]
        wire = set(self.wire.snapshot())
        invented = set(got) - wire
        assert not invented, f"readings no node sent: {sorted(invented)[:5]}"
        twice = journaled_once([r for _, r in readings_in(self.col.messages)])
        assert not twice, f"readings with two timestamps: {twice[:5]}"
        return {"on_wire": len(wire), "arrived": len(set(got))}

    def close(self) -> None:
        self.agent.stop()
        self.col.close()
        self.sim.stop()


def test_a_journal_damaged_between_runs_is_set_aside_salvaged_and_alerted(
        tmp_path: Path, broker: Mosquitto, rng: random.Random, figures: dict[str, Any]) -> None:
    f = Field(tmp_path, broker, rng.randrange(2**31))
    try:
        broker.stop()  # an outage: the readings stay in the journal
        f.agent.start()
        assert wait_configured(f.sim, 0, 20), f.agent.run_log()
        f.send(BACKLOG)
        assert wait_until(lambda: f.journaled() >= BACKLOG, 60), f.agent.run_log()[-2000:]
        f.agent.kill9()
        before_damage = copy_journal(f.journal, tmp_path / "before-damage")
        hit = _damage(f.journal, rng)
        journaled, on_damaged_leaves = readings_on_damaged_leaves(before_damage, hit)

        broker.start()
        f.agent.start()
        assert wait_configured(f.sim, 0, 20), f.agent.run_log()
        assert wait_until(lambda: f.damaged_alerts(), 30), f.agent.run_log()[-3000:]
        aside = list(tmp_path.glob("journal.db.damaged-*"))
        assert any(p.name.endswith(tuple("0123456789")) for p in aside), aside  # the main file kept, not deleted
        counters = journal_status(f.journal)["counters"]
        assert counters.get("journal.damaged") == 1
        salvaged = counters.get("journal.salvaged", 0)
        # After the damage the agent forwards: new readings and an SOS arrive.
        before = f.i
        f.send(200)
        assert f.sim.inject_uplink(f.nodes[4].frame(default_values("sos", 0)))
        new_keys = {(n.hex, n.counter) for n in f.nodes}  # each node's latest frame
        assert f.col.wait_for(lambda m: new_keys <= {(r["node"], r["fcnt"]) for _, r in readings_in(m)}, 30), \
            f.agent.run_log()[-3000:]
        assert wait_until(lambda: journal_status(f.journal)["journal"]["unsent"] == 0, 60)
        assert f.agent.alive, f.agent.run_log()[-3000:]
        out = f.check_delivery()
        backlog_arrived = out["arrived"] - (f.i - before) - 1
        # Only readings on damaged leaf pages may be missing; a damaged interior page of the table costs none.
        assert journaled - on_damaged_leaves <= salvaged <= journaled, (salvaged, journaled, on_damaged_leaves)
        assert backlog_arrived >= salvaged - 5, (backlog_arrived, salvaged)
        figures.update(backlog=BACKLOG, damaged_pages=len(hit), journaled=journaled, salvaged=salvaged,
                       on_damaged_leaves=on_damaged_leaves, lost=journaled - salvaged,
                       alert=f.damaged_alerts()[0]["alert"]["message"], **out)
    finally:
        f.close()


def test_a_journal_damaged_under_the_running_agent_is_replaced_and_forwarding_goes_on(
        tmp_path: Path, broker: Mosquitto, rng: random.Random, figures: dict[str, Any]) -> None:
    f = Field(tmp_path, broker, rng.randrange(2**31))
    try:
        broker.stop()
        f.agent.start()
        assert wait_configured(f.sim, 0, 20), f.agent.run_log()
        f.send(BACKLOG)
        assert wait_until(lambda: f.journaled() >= BACKLOG, 60), f.agent.run_log()[-2000:]
        time.sleep(1.5)  # the WAL is checkpointed into the main file, where the damage goes
        hit = _damage(f.journal, rng)
        broker.start()  # the drain reads the damaged pages
        f.send(100)
        assert wait_until(lambda: f.damaged_alerts(), 30), f.agent.run_log()[-3000:]
        assert f.agent.alive, f.agent.run_log()[-3000:]
        before = f.i
        f.send(200)
        assert f.sim.inject_uplink(f.nodes[4].frame(default_values("sos", 0)))
        new_keys = {(n.hex, n.counter) for n in f.nodes}
        assert f.col.wait_for(lambda m: new_keys <= {(r["node"], r["fcnt"]) for _, r in readings_in(m)}, 30), \
            f.agent.run_log()[-3000:]
        assert f.agent.alive and f.agent.starts == 1, f.agent.run_log()[-3000:]  # never restarted
        counters = journal_status(f.journal)["counters"]
        assert counters.get("journal.damaged", 0) >= 1, counters
        assert "core: unexpected error" not in f.agent.run_log(), f.agent.run_log()[-3000:]  # handled, not a bug
        out = f.check_delivery()
        figures.update(backlog=BACKLOG, damaged_pages=len(hit), salvaged=counters.get("journal.salvaged", 0),
                       new_after_damage=f.i - before + 1, **out)
    finally:
        f.close()
