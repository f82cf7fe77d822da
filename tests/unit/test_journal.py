"""The durable journal: group commits, lanes, acks, quota eviction, persistence."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.errors import JournalError
from agent.gateway.journal import Journal
from agent.gateway.reading import (
    ALARM,
    DIAGNOSTICS,
    SOS,
    TELEMETRY,
    Entry,
    NodeState,
    Quarantined,
)


def entry(lane: int, node: str, fcnt: int, pad: int = 0) -> Entry:
    body = json.dumps({"id": f"gw/{node}/{fcnt}", "pad": "x" * pad})
    return Entry(lane, node, fcnt, 1_764_000_000_000_000 + fcnt, body)


def test_commit_assigns_increasing_seqs_and_pending_is_per_lane_oldest_first(
    open_journal: Callable[..., Journal]
) -> None:
    j = open_journal()
    seqs = j.commit(entries=[entry(TELEMETRY, "a", 1), entry(SOS, "b", 1), entry(TELEMETRY, "a", 2)])
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert [json.loads(b)["id"] for _, b in j.pending(TELEMETRY, after_seq=0, limit=10)] == ["gw/a/1", "gw/a/2"]
    assert [s for s, _ in j.pending(TELEMETRY, after_seq=seqs[0], limit=10)] == [seqs[2]]
    assert j.depth() == {"sos": 1, "alarm": 0, "telemetry": 2, "diagnostics": 0}
    assert j.oldest_ts_us() == 1_764_000_000_000_001


def test_acked_readings_are_deleted_and_the_rest_survive_a_reopen(open_journal: Callable[..., Journal]) -> None:
    j = open_journal()
    seqs = j.commit(entries=[entry(ALARM, "t", i) for i in range(1, 6)])
    j.commit(acked=seqs[:3], counters={"readings.acked": 3})
    j.close()
    j = open_journal()
    assert [s for s, _ in j.pending(ALARM, after_seq=0, limit=10)] == seqs[3:]
    assert j.counters() == {"readings.acked": 3}
    # New seqs never reuse acknowledged ones while rows remain.
    [s6] = j.commit(entries=[entry(ALARM, "t", 6)])
    assert s6 > seqs[-1]


def test_a_commit_refills_the_pages_its_acknowledgements_free(open_journal: Callable[..., Journal]) -> None:
    # At field rates each commit inserts a window's readings and deletes the ones acknowledged since the last:
    # the freed leaf pages are filled again in the same transaction, so none is written to the WAL twice
    # (once freed, once reused by the next commit) and the freelist stays empty.
    j = open_journal()
    acked: list[int] = []
    for c in range(30):
        acked = j.commit(entries=[entry(TELEMETRY, f"n{c}", k, 250) for k in range(6)], acked=acked)
        if c >= 5:
            assert j._db.execute("PRAGMA freelist_count").fetchone()[0] == 0
    assert [s for s, _ in j.pending(TELEMETRY, after_seq=0, limit=10)] == acked


def test_seqs_keep_increasing_after_everything_was_acked_and_after_a_reopen(
    open_journal: Callable[..., Journal]
) -> None:
    j = open_journal()
    first = j.commit(entries=[entry(TELEMETRY, "w", i) for i in range(1, 4)])
    j.commit(acked=first)
    assert j.depth()["telemetry"] == 0
    second = j.commit(entries=[entry(TELEMETRY, "w", 4)])
    assert second[0] > first[-1]
    j.commit(acked=second)
    j.close()
    j = open_journal()
    [third] = j.commit(entries=[entry(TELEMETRY, "w", 5)])
    assert third > second[0]


def test_node_state_and_quarantine_persist(open_journal: Callable[..., Journal]) -> None:
    j = open_journal()
    j.commit(
        nodes=[NodeState(node="00000101", name="sos-1", last_fcnt=41, last_seen_us=5, radio="lora0", rssi=-100.0,
                         snr=-3.5, battery_v=3.7, frames_ok=41, frames_bad=2)],
        quarantined=[Quarantined(7, "lora0", "00000101", "bad_mic", "MIC does not match", b"\x11\x00", -99.0, 2.0)],
    )
    j.close()
    j = open_journal()
    st = j.nodes()["00000101"]
    assert (st.last_fcnt, st.frames_bad, st.battery_v) == (41, 2, 3.7)
    [q] = j.quarantine()
    assert (q.reason, q.raw, q.node) == ("bad_mic", b"\x11\x00", "00000101")


def test_wal_and_full_sync_are_on(open_journal: Callable[..., Journal]) -> None:
    j = open_journal()
    assert j._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert j._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_quota_evicts_diagnostics_then_telemetry_oldest_first_never_sos_or_alarm(
    open_journal: Callable[..., Journal]
) -> None:
    j = open_journal()
    j.commit(entries=[entry(SOS, "s", i, 500) for i in range(1, 51)])
    j.commit(entries=[entry(ALARM, "t", i, 500) for i in range(1, 51)])
    j.commit(entries=[entry(DIAGNOSTICS, "g", i, 500) for i in range(1, 101)])
    j.commit(entries=[entry(TELEMETRY, "w", i, 500) for i in range(1, 401)])
    total = j._live_bytes()
    # Room for about half the data: all diagnostics and the oldest telemetry must go.
    j.quota_bytes = total // 2
    evicted = j.enforce_quota()
    assert j._live_bytes() <= j.quota_bytes
    assert evicted["diagnostics"] == 100 and 0 < evicted["telemetry"] < 400
    assert j.depth()["sos"] == 50 and j.depth()["alarm"] == 50
    remaining = [json.loads(b)["id"] for _, b in j.pending(TELEMETRY, after_seq=0, limit=1000)]
    kept_from = int(remaining[0].rsplit("/", 1)[1])
    assert remaining == [f"gw/w/{i}" for i in range(kept_from, 401)]  # the newest are kept, contiguous


def test_quota_never_evicts_sos_or_alarms_even_when_they_alone_exceed_it(open_journal: Callable[..., Journal]) -> None:
    j = open_journal()
    j.commit(entries=[entry(SOS, "s", i, 2000) for i in range(1, 101)])
    j.commit(entries=[entry(TELEMETRY, "w", i, 2000) for i in range(1, 11)])
    j.quota_bytes = 4096
    evicted = j.enforce_quota()
    assert evicted == {"telemetry": 10}
    assert j.depth()["sos"] == 100


def test_quota_spares_readings_in_flight(open_journal: Callable[..., Journal]) -> None:
    j = open_journal()
    seqs = j.commit(entries=[entry(TELEMETRY, "w", i, 1000) for i in range(1, 201)])
    j.quota_bytes = j._live_bytes() // 4
    j.enforce_quota(protect=seqs[:5])
    left = {s for s, _ in j.pending(TELEMETRY, after_seq=0, limit=1000)}
    assert set(seqs[:5]) <= left


def test_a_journal_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    Journal(tmp_path / "j.db", quota_bytes=1).close()
    db = sqlite3.connect(tmp_path / "j.db")
    db.execute("UPDATE meta SET value='99' WHERE key='schema'")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="schema 99") as refused:
        Journal(tmp_path / "j.db", quota_bytes=1)
    # The refused journal's connection is closed, not left to the garbage collector (the traceback still holds
    # the half-made Journal): a WAL file leaves WAL mode only when no other connection has it open.
    assert refused.value.__traceback__ is not None
    db = sqlite3.connect(tmp_path / "j.db", timeout=0)
    try:
        assert db.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    finally:
        db.close()


def test_a_failed_commit_rolls_back_everything(open_journal: Callable[..., Journal]) -> None:
    j = open_journal()
    j.commit(entries=[entry(TELEMETRY, "w", 1)])
    bad = Entry(TELEMETRY, "w", 2, 1, None)  # type: ignore[arg-type]  # NOT NULL body violates the schema
    with pytest.raises(JournalError, match="commit failed"):
        j.commit(entries=[entry(TELEMETRY, "w", 3), bad], counters={"x": 1})
    assert j.depth()["telemetry"] == 1 and j.counters() == {}
    j.commit(entries=[entry(TELEMETRY, "w", 4)])  # still usable
    assert j.depth()["telemetry"] == 2


def test_a_damaged_journal_is_set_aside_salvaged_and_replaced(
    tmp_path: Path, open_journal: Callable[..., Journal]
) -> None:
    from agent.gateway.journal import open_or_recover

    path = tmp_path / "j.db"
    j = open_journal(path)
    j.commit(entries=[entry(SOS, "s", i, 300) for i in range(1, 201)])
    j.close()
    # Scribble over pages in the middle of the file, as a failing SD card would.
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid: mid + 8192] = b"\xde\xad\xbe\xef" * 2048
    path.write_bytes(bytes(data))
    journal, aside, rescued = open_or_recover(str(path), quota_bytes=1 << 30)
    assert aside is not None and Path(aside).exists() and aside.startswith(str(path) + ".damaged-")
    assert 0 < rescued < 200  # what could be read was carried over; the rest is in the file set aside
    assert journal.depth()["sos"] == rescued
    journal.commit(entries=[entry(SOS, "s", 999)])  # the new journal works
    journal.close()


def test_a_file_that_is_not_a_database_is_set_aside(tmp_path: Path) -> None:
    from agent.gateway.journal import open_or_recover

    path = tmp_path / "j.db"
    path.write_bytes(b"this is not sqlite" * 100)
    journal, aside, rescued = open_or_recover(str(path), quota_bytes=1 << 30)
    assert aside and rescued == 0 and Path(aside).read_bytes().startswith(b"this is not sqlite")
    assert journal.depth() == {"sos": 0, "alarm": 0, "telemetry": 0, "diagnostics": 0}
    journal.close()
