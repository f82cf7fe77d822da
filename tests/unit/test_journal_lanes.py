"""The lane index leaves telemetry out (journal schema 5): a telemetry commit writes no index page, every query by
lane still finds its rows the fast way, and a schema 4 journal is migrated with every reading kept."""

from __future__ import annotations

import json
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path

from agent.gateway.journal import Journal
from agent.gateway.journal_schema import SCHEMA_VERSION, lane_is
from agent.gateway.reading import ALARM, DIAGNOSTICS, LANES, SOS, TELEMETRY, Entry

_V4_READING = """
CREATE TABLE reading (seq INTEGER PRIMARY KEY, lane INTEGER NOT NULL, node TEXT NOT NULL, fcnt INTEGER NOT NULL,
    ts_us INTEGER NOT NULL, body TEXT NOT NULL, boot_us INTEGER);
CREATE INDEX reading_lane ON reading(lane, seq);
CREATE INDEX reading_unsynced ON reading(seq) WHERE boot_us IS NOT NULL;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
INSERT INTO meta VALUES ('schema', '4');
"""


def entry(lane: int, fcnt: int) -> Entry:
    return Entry(lane, f"{fcnt % 7:08x}", fcnt, 1_764_000_000_000_000 + fcnt, json.dumps({"fcnt": fcnt}))


def plan(j: Journal, sql: str, args: tuple = ()) -> str:
    return "; ".join(r[3] for r in j._db.execute("EXPLAIN QUERY PLAN " + sql, args))


def wal_pages(path: Path, start: int) -> set[int]:
    """Page numbers of the WAL frames from byte ``start`` on (frame: 24-byte header, page number first)."""
    data = (path.parent / (path.name + "-wal")).read_bytes()
    page_size = struct.unpack(">I", data[8:12])[0]
    return {struct.unpack(">I", data[off:off + 4])[0] for off in range(max(32, start), len(data), 24 + page_size)}


def test_a_schema_4_journal_is_migrated_keeps_every_reading_and_rebuilds_the_index(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    db = sqlite3.connect(path)
    db.executescript(_V4_READING)
    lanes = [TELEMETRY, SOS, TELEMETRY, DIAGNOSTICS, ALARM, TELEMETRY, TELEMETRY, DIAGNOSTICS]
    db.executemany("INSERT INTO reading VALUES (?, ?, 'n', ?, 5, ?, NULL)",
                   [(seq, lane, seq, f'{{"seq":{seq}}}') for seq, lane in enumerate(lanes, start=1)])
    db.execute("DELETE FROM reading WHERE seq=3")  # a hole, as acknowledgements leave them
    db.commit()
    db.close()
    j = Journal(path, quota_bytes=1 << 30)
    try:
        assert j.meta()["schema"] == str(SCHEMA_VERSION) == "5"
        sql = j._db.execute("SELECT sql FROM sqlite_master WHERE name='reading_lane'").fetchone()[0]
        assert sql.endswith(f"WHERE lane <> {TELEMETRY}")
        assert j._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for lane in range(len(LANES)):
            want = [seq for seq, ln in enumerate(lanes, start=1) if ln == lane and seq != 3]
            assert [s for s, _ in j.pending(lane, after_seq=0, limit=100)] == want
            assert j.lane_top[lane] == want[-1]
        assert j.depth() == {"sos": 1, "alarm": 1, "telemetry": 3, "diagnostics": 2}
        assert j.commit(entries=[entry(SOS, 9)]) == [9]
    finally:
        j.close()
    j = Journal(path, quota_bytes=1 << 30)  # already schema 5: opened as it is
    try:
        assert [s for s, _ in j.pending(SOS, after_seq=0, limit=10)] == [2, 9]
    finally:
        j.close()


def test_a_telemetry_commit_writes_no_page_of_the_lane_index(
        tmp_path: Path, open_journal: Callable[..., Journal]) -> None:
    j = open_journal()
    j.commit(entries=[entry(SOS, 1), entry(ALARM, 2), entry(DIAGNOSTICS, 3)])
    index_page = j._db.execute("SELECT rootpage FROM sqlite_master WHERE name='reading_lane'").fetchone()[0]
    wal = tmp_path / "j.db-wal"
    size = wal.stat().st_size
    seqs = j.commit(entries=[entry(TELEMETRY, n) for n in range(10, 20)])
    assert index_page not in wal_pages(tmp_path / "j.db", size)
    size = wal.stat().st_size
    j.commit(acked=seqs[:5], entries=[entry(TELEMETRY, n) for n in range(20, 25)])
    assert index_page not in wal_pages(tmp_path / "j.db", size)
    # An SOS still goes through the index.
    size = wal.stat().st_size
    j.commit(entries=[entry(SOS, 30)])
    assert index_page in wal_pages(tmp_path / "j.db", size)


def test_every_lane_query_finds_its_rows_the_fast_way(open_journal: Callable[..., Journal]) -> None:
    j = open_journal()
    lanes = [TELEMETRY] * 50 + [SOS, ALARM, DIAGNOSTICS] + [TELEMETRY] * 50 + [DIAGNOSTICS, SOS]
    seqs = j.commit(entries=[entry(lane, i) for i, lane in enumerate(lanes)])
    for lane in (SOS, ALARM, DIAGNOSTICS):
        where = f"WHERE {lane_is(lane)} AND seq>? ORDER BY seq LIMIT ?"
        assert "USING INDEX reading_lane (lane=? AND seq>?)" in plan(j, f"SELECT seq, body FROM reading {where}",
                                                                      (0, 10))
        assert "USING COVERING INDEX reading_lane" in plan(j, f"SELECT seq FROM reading WHERE {lane_is(lane)}")
    # Telemetry is nearly every row: read in the table's own order from the seq sent so far.
    assert "USING INTEGER PRIMARY KEY (rowid>?)" in plan(
        j, f"SELECT seq, body FROM reading WHERE {lane_is(TELEMETRY)} AND seq>? ORDER BY seq LIMIT ?", (0, 10))
    # Each lane's rows, oldest first, and the publisher's "anything left?" look.
    for lane in range(len(LANES)):
        want = [s for s, ln in zip(seqs, lanes) if ln == lane]
        assert [s for s, _ in j.pending(lane, after_seq=0, limit=1000)] == want
        assert [s for s, _ in j.pending(lane, after_seq=want[0], limit=2)] == want[1:3]
        assert j.has_pending(lane, after_seq=want[-1] - 1) and not j.has_pending(lane, after_seq=want[-1])
    assert j.depth() == {"sos": 2, "alarm": 1, "telemetry": 100, "diagnostics": 2}


def test_lane_tops_at_open_with_the_telemetry_lane_empty_and_full(
        tmp_path: Path, open_journal: Callable[..., Journal]) -> None:
    j = open_journal()
    s = j.commit(entries=[entry(TELEMETRY, 1), entry(SOS, 2), entry(TELEMETRY, 3), entry(DIAGNOSTICS, 4)])
    j.close()
    j = open_journal()
    assert j.lane_top == [s[1], 0, s[2], s[3]]
    j.commit(acked=[s[0], s[2]])
    j.close()
    j = open_journal()
    assert j.lane_top == [s[1], 0, 0, s[3]]
