"""The journal's schema 3 and 4 (issue 10): two replay windows per node, migrated from one; operator requests and the
audit trail; nodes forgotten; files created private and never through a symbolic link."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from agent.errors import JournalError
from agent.gateway.journal import Audit, Journal, open_or_recover
from agent.gateway.journal_schema import SCHEMA_VERSION

# The journal as schema 2 agents made it (agent/gateway/journal.py before schema 3), and schema 1 (no boot_us).
from agent.gateway.reading import TELEMETRY, Entry, NodeState

_V2_DDL = """
CREATE TABLE reading (seq INTEGER PRIMARY KEY AUTOINCREMENT, lane INTEGER NOT NULL, node TEXT NOT NULL,
    fcnt INTEGER NOT NULL, ts_us INTEGER NOT NULL, body TEXT NOT NULL, boot_us INTEGER);
CREATE INDEX reading_lane ON reading(lane, seq);
CREATE TABLE node (node TEXT PRIMARY KEY, name TEXT, last_fcnt INTEGER, last_seen_us INTEGER, radio TEXT, rssi REAL,
    snr REAL, battery_v REAL, frames_ok INTEGER NOT NULL DEFAULT 0, frames_bad INTEGER NOT NULL DEFAULT 0);
CREATE TABLE counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE quarantine (id INTEGER PRIMARY KEY, ts_us INTEGER NOT NULL, radio TEXT, node TEXT, reason TEXT NOT NULL,
    detail TEXT NOT NULL, raw BLOB, rssi REAL, snr REAL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
"""


def _old_journal(path: Path, version: int) -> None:
    ddl = _V2_DDL if version == 2 else _V2_DDL.replace(", boot_us INTEGER);", ");", 1)
    db = sqlite3.connect(path)
    db.executescript(ddl)
    db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(version),))
    db.execute("INSERT INTO node(node, name, last_fcnt, last_seen_us, frames_ok) VALUES "
               "('00000031', 'trap-1', 4294967295, 5, 9)")  # a window an unsigned frame pushed to the top
    db.execute("INSERT INTO node(node, name, last_fcnt, frames_ok) VALUES ('00000032', 'never-heard', NULL, 0)")
    db.execute("INSERT INTO reading(lane, node, fcnt, ts_us, body) VALUES (2, '00000031', 9, 5, '{}')")
    db.commit()
    db.close()


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_journal_is_migrated_with_its_shared_window_as_both_windows(tmp_path: Path, version: int) -> None:
    _old_journal(tmp_path / "j.db", version)
    j = Journal(tmp_path / "j.db", quota_bytes=1 << 30)
    try:
        assert j.meta()["schema"] == str(SCHEMA_VERSION) == "5"
        nodes = j.nodes()
        # Nothing refused before the upgrade is accepted after it: the old window becomes both.
        assert (nodes["00000031"].last_fcnt, nodes["00000031"].unsigned_fcnt) == (0xFFFF_FFFF, 0xFFFF_FFFF)
        assert (nodes["00000032"].last_fcnt, nodes["00000032"].unsigned_fcnt) == (None, None)
        assert nodes["00000031"].frames_ok == 9
        assert j.pending(TELEMETRY, after_seq=0, limit=10) == [(1, "{}")]
        # The new tables work.
        j.commit(audit=[Audit(1, "pi", "reset_counter", "00000031", "x")])
        assert [a.user for a in j.audit()] == ["pi"]
    finally:
        j.close()
    # Opened again: already the current schema, nothing to migrate.
    Journal(tmp_path / "j.db", quota_bytes=1 << 30).close()


def test_a_schema_3_journal_loses_autoincrement_and_keeps_its_readings_and_windows(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    db = sqlite3.connect(path)
    db.executescript(_V2_DDL.replace("frames_bad INTEGER NOT NULL DEFAULT 0);",
                                     "frames_bad INTEGER NOT NULL DEFAULT 0, unsigned_fcnt INTEGER);"))
    db.execute("INSERT INTO meta VALUES ('schema', '3')")
    db.execute("INSERT INTO node(node, last_fcnt, unsigned_fcnt) VALUES ('00000031', 7, 2)")
    db.executemany("INSERT INTO reading(lane, node, fcnt, ts_us, body, boot_us) VALUES (?, '00000031', ?, 5, ?, ?)",
                   [(TELEMETRY, 1, '{"a":1}', None), (TELEMETRY, 2, '{"a":2}', 99), (TELEMETRY, 3, '{"a":3}', None)])
    db.execute("DELETE FROM reading WHERE seq=3")
    db.commit()
    db.close()
    j = Journal(path, quota_bytes=1 << 30)
    try:
        assert j.meta()["schema"] == str(SCHEMA_VERSION) == "5"
        sql = j._db.execute("SELECT sql FROM sqlite_master WHERE name='reading'").fetchone()[0]
        assert "AUTOINCREMENT" not in sql.upper()
        indexes = {r[0] for r in j._db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"reading_lane", "reading_unsynced"} <= indexes
        # Rows, seqs and the clock-correction mark are kept; a schema 3 journal's two windows are not touched.
        assert j.pending(TELEMETRY, after_seq=0, limit=10) == [(1, '{"a":1}'), (2, '{"a":2}')]
        assert j.unsynced_count() == 1
        st = j.nodes()["00000031"]
        assert (st.last_fcnt, st.unsigned_fcnt) == (7, 2)
        assert j.commit(entries=[Entry(TELEMETRY, "00000031", 4, 6, "{}")]) == [3]
        # A commit no longer writes a high-water mark: the page that held it is not among the commit's pages.
        assert j._db.execute("SELECT COUNT(*) FROM sqlite_sequence WHERE name='reading'").fetchone()[0] == 0
    finally:
        j.close()


def test_both_windows_persist(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", quota_bytes=1 << 30)
    j.commit(nodes=[NodeState(node="00000031", last_fcnt=12, unsigned_fcnt=0xFFFF_FFFF, frames_ok=3)])
    j.close()
    j = Journal(tmp_path / "j.db", quota_bytes=1 << 30)
    try:
        st = j.nodes()["00000031"]
        assert (st.last_fcnt, st.unsigned_fcnt, st.frames_ok) == (12, 0xFFFF_FFFF, 3)
    finally:
        j.close()


def test_requests_are_seen_through_data_version_and_done_with_their_audit_line(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", quota_bytes=1 << 30)
    try:
        assert j.changed_elsewhere()  # the first call: whatever is there must be looked at
        j.commit(nodes=[NodeState(node="00000031", last_fcnt=5)])
        assert not j.changed_elsewhere()  # its own commits do not count
        other = sqlite3.connect(tmp_path / "j.db", isolation_level=None)
        other.execute("INSERT INTO request(ts_us, user, action, node) VALUES (7, 'pi', 'reset_counter', '00000031')")
        other.close()
        assert j.changed_elsewhere()
        [req] = j.pending_requests()
        assert (req.user, req.action, req.node) == ("pi", "reset_counter", "00000031")
        j.commit(done=[(req.id, "node 00000031: windows reset")], audit=[Audit(8, "pi", "reset_counter", "00000031",
                                                                               "with MIC 5 -> none")])
        assert j.pending_requests() == []
        row = j._db.execute("SELECT done_us, result FROM request WHERE id=?", (req.id,)).fetchone()
        assert row[0] is not None and row[1] == "node 00000031: windows reset"
        assert [(a.node, a.detail) for a in j.audit()] == [("00000031", "with MIC 5 -> none")]
    finally:
        j.close()


def test_a_core_not_woken_for_a_request_looks_for_it_at_most_every_second(tmp_path: Path, monkeypatch) -> None:
    import agent.gateway.journal as journal_module

    clock = [1000.0]
    monkeypatch.setattr(journal_module.time, "monotonic", lambda: clock[0])
    j = Journal(tmp_path / "j.db", quota_bytes=1 << 30)
    try:
        assert j.changed_elsewhere(woken=False)  # the first look is never skipped
        other = sqlite3.connect(tmp_path / "j.db", isolation_level=None)
        other.execute("INSERT INTO request(ts_us, user, action, node) VALUES (7, 'pi', 'reset_counter', '00000031')")
        other.close()
        clock[0] += journal_module.LOOK_ELSEWHERE_S / 2
        assert not j.changed_elsewhere(woken=False)  # a frame's wake-up: not looked at yet
        assert j.changed_elsewhere(woken=True)  # SIGUSR1 from the command: looked at at once
        other = sqlite3.connect(tmp_path / "j.db", isolation_level=None)
        other.execute("INSERT INTO request(ts_us, user, action, node) VALUES (8, 'pi', 'reset_counter', '00000032')")
        other.close()
        clock[0] += journal_module.LOOK_ELSEWHERE_S
        assert j.changed_elsewhere(woken=False)  # no signal (another user): seen within LOOK_ELSEWHERE_S
    finally:
        j.close()


def test_forgotten_nodes_are_deleted_and_a_node_forgotten_and_heard_again_in_one_commit_is_kept(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", quota_bytes=1 << 30)
    try:
        j.commit(nodes=[NodeState(node=n, unsigned_fcnt=1) for n in ("00001001", "00001002")])
        j.commit(forget=["00001001", "00001002"], nodes=[NodeState(node="00001002", unsigned_fcnt=9)])
        assert {n: s.unsigned_fcnt for n, s in j.nodes().items()} == {"00001002": 9}
    finally:
        j.close()


def test_the_journal_is_created_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        j = Journal(tmp_path / "j.db", quota_bytes=1 << 30)
        j.commit(entries=[Entry(TELEMETRY, "00000031", 1, 1, "{}")])
        try:
            for suffix in ("", "-wal", "-shm"):
                assert stat.S_IMODE(os.stat(f"{tmp_path / 'j.db'}{suffix}").st_mode) == 0o600, suffix
        finally:
            j.close()
        os.umask(0o277)  # would leave the owner without write: the mode is set exactly, not through the umask
        Journal(tmp_path / "k.db", quota_bytes=1).close()
        assert stat.S_IMODE(os.stat(tmp_path / "k.db").st_mode) == 0o600
    finally:
        os.umask(old)


def test_an_existing_journal_other_users_can_read_is_made_private(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    Journal(tmp_path / "j.db", quota_bytes=1).close()
    os.chmod(tmp_path / "j.db", 0o644)
    Journal(tmp_path / "j.db", quota_bytes=1).close()
    assert stat.S_IMODE(os.stat(tmp_path / "j.db").st_mode) == 0o640
    assert "other users could read it" in caplog.text


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
@pytest.mark.parametrize("dangling", [True, False])
def test_a_symbolic_link_at_the_journal_path_is_refused(tmp_path: Path, suffix: str, dangling: bool) -> None:
    target = tmp_path / "elsewhere" / "victim.db"
    target.parent.mkdir()
    if not dangling:
        Journal(target, quota_bytes=1).close()
        before = target.read_bytes()
    if suffix:
        Journal(tmp_path / "j.db", quota_bytes=1).close()
    os.symlink(target, f"{tmp_path / 'j.db'}{suffix}")
    with pytest.raises(JournalError, match=r"is a symbolic link .* refusing to open the journal through it"):
        Journal(tmp_path / "j.db", quota_bytes=1)
    # Nothing was created or written where the link points.
    assert target.exists() != dangling
    if not dangling:
        assert target.read_bytes() == before
    # The agent's opener says the same, and does not mistake the link for a damaged journal to set aside.
    with pytest.raises(JournalError, match="symbolic link"):
        open_or_recover(str(tmp_path / "j.db"), quota_bytes=1)
    assert os.path.islink(f"{tmp_path / 'j.db'}{suffix}")


def test_anything_but_a_regular_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "j.db").mkdir()
    with pytest.raises(JournalError, match="not a regular file"):
        Journal(tmp_path / "j.db", quota_bytes=1)
