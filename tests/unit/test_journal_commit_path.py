"""The journal's commit path at field rates: page size, rows rewritten in place, the per-lane high-water mark."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from agent.gateway.journal import Journal
from agent.gateway.journal_schema import PAGE_SIZE
from agent.gateway.reading import ALARM, SOS, TELEMETRY, Entry, NodeState


def entry(lane: int, node: str, fcnt: int) -> Entry:
    return Entry(lane, node, fcnt, 1_764_000_000_000_000 + fcnt, json.dumps({"id": f"gw/{node}/{fcnt}"}))


def test_a_new_journal_has_small_pages_and_an_existing_one_keeps_its_own(
        tmp_path: Path, open_journal: Callable[..., Journal]) -> None:
    j = open_journal()
    assert j._db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 1024
    old = tmp_path / "old.db"
    db = sqlite3.connect(old)
    db.execute("PRAGMA page_size=4096")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t(x)")
    db.close()
    j4 = open_journal(old)
    assert j4._db.execute("PRAGMA page_size").fetchone()[0] == 4096
    # The WAL is checkpointed at ~1 MiB whatever the page size, by the journal's checkpoint thread, never inside
    # a commit of the owner's connection.
    assert j._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    assert j4._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    assert (j._checkpointer.frames_max, j4._checkpointer.frames_max) == (1024, 256)
    [seq] = j4.commit(entries=[entry(TELEMETRY, "a", 1)])
    assert [s for s, _ in j4.pending(TELEMETRY, after_seq=0, limit=5)] == [seq]


def test_node_and_counter_rows_are_rewritten_in_place(open_journal: Callable[..., Journal]) -> None:
    j = open_journal()
    j.commit(nodes=[NodeState("0000000a", name="a", last_fcnt=1), NodeState("0000000b", last_fcnt=7)],
             counters={"frames.ok": 1, "readings.journaled": 1})
    rowids = dict(j._db.execute("SELECT node, rowid FROM node"))
    counter_ids = dict(j._db.execute("SELECT name, rowid FROM counter"))
    j.commit(nodes=[NodeState("0000000a", name="a", last_fcnt=2, rssi=-80.0, frames_ok=2)],
             counters={"frames.ok": 2})
    assert dict(j._db.execute("SELECT node, rowid FROM node")) == rowids
    assert dict(j._db.execute("SELECT name, rowid FROM counter")) == counter_ids
    nodes = j.nodes()
    assert (nodes["0000000a"].last_fcnt, nodes["0000000a"].rssi, nodes["0000000a"].frames_ok) == (2, -80.0, 2)
    assert nodes["0000000b"].last_fcnt == 7
    assert j.counters() == {"frames.ok": 2, "readings.journaled": 1}


def test_lane_top_is_the_highest_seq_committed_per_lane_also_after_a_reopen(
        open_journal: Callable[..., Journal]) -> None:
    j = open_journal()
    assert j.lane_top == [0, 0, 0, 0]
    seqs = j.commit(entries=[entry(TELEMETRY, "a", 1), entry(SOS, "b", 1), entry(TELEMETRY, "a", 2)])
    assert j.lane_top == [seqs[1], 0, seqs[2], 0]
    j.commit(acked=[seqs[2]])  # a deletion leaves the mark: nothing unsent lies above it
    assert j.lane_top[TELEMETRY] == seqs[2]
    [alarm] = j.commit(entries=[entry(ALARM, "t", 1)])
    j.close()
    j = open_journal()
    # At open: the highest seq still in each lane.
    assert j.lane_top == [seqs[1], alarm, seqs[0], 0]
