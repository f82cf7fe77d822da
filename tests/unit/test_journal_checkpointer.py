"""The journal's WAL is copied back into its database by a thread of its own: the owner's commits never run a
checkpoint, and the WAL stays bounded while readings are written and deleted (a drain)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from agent.gateway import checkpointer
from agent.gateway.journal import Journal
from agent.gateway.journal_schema import WAL_CHECKPOINT_BYTES
from agent.gateway.reading import TELEMETRY, Entry
from tests.support.polling import wait_until


def _entries(n: int, start: int) -> list[Entry]:
    body = '{"kind":"rain","values":{"rain_mm":0.5,"battery_v":3.6},"pad":"' + "x" * 120 + '"}'
    return [Entry(TELEMETRY, "0000000a", start + i, 1_765_000_000_000_000 + i, body) for i in range(n)]


def _checkpoint_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "journal-checkpoint")


def test_a_drain_keeps_the_wal_bounded_without_a_checkpoint_in_any_commit(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", quota_bytes=256 << 20)
    try:
        wal = tmp_path / "j.db-wal"
        seqs = j.commit(entries=_entries(20_000, 1))
        # One deletion of 1,000 readings per commit, as a drain's acknowledgements fold (about 180 KiB of WAL each).
        for i in range(0, len(seqs), 1000):
            j.commit(acked=seqs[i:i + 1000])
        assert wait_until(lambda: j._checkpointer.checkpoints >= 1, 10)
        assert j._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        # About 5 MiB went through the WAL; it is reused from its start after each checkpoint.
        assert os.path.getsize(wal) < 4 * WAL_CHECKPOINT_BYTES + (8 << 20), os.path.getsize(wal)
        assert j.depth()["telemetry"] == 0
    finally:
        j.close()


def test_a_checkpoint_by_the_thread_keeps_every_committed_reading(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", quota_bytes=256 << 20)
    try:
        for k in range(12):  # ~1.8 MiB of readings in 12 commits: past the threshold at least once
            j.commit(entries=_entries(800, 1 + k * 800))
        assert wait_until(lambda: j._checkpointer.checkpoints >= 1, 10)
        time.sleep(0.05)
        assert j.depth()["telemetry"] == 9600
    finally:
        j.close()
    again = Journal(tmp_path / "j.db", quota_bytes=256 << 20)
    try:
        assert again.depth()["telemetry"] == 9600
    finally:
        again.close()


def test_the_thread_starts_at_the_first_checkpoint_and_stops_with_the_journal(tmp_path: Path) -> None:
    before = _checkpoint_threads()
    j = Journal(tmp_path / "j.db", quota_bytes=256 << 20)
    j.commit(entries=_entries(10, 1))
    assert _checkpoint_threads() == before  # a short command that commits a little costs no thread
    j.commit(entries=_entries(8000, 11))
    assert _checkpoint_threads() == before + 1
    j.close()
    assert _checkpoint_threads() == before
    assert not (tmp_path / "j.db-wal").exists()  # the last connection to close folded the WAL in


def test_the_owner_checkpoints_itself_past_the_hard_bound(tmp_path: Path, monkeypatch) -> None:
    """A WAL the thread never gets to copy whole (commits land during each of its checkpoints) stays bounded."""
    j = Journal(tmp_path / "j.db", quota_bytes=256 << 20)
    try:
        monkeypatch.setattr(j._checkpointer._due, "set", lambda: None)  # the thread never runs
        seqs = j.commit(entries=_entries(20_000, 1))
        for i in range(0, len(seqs), 1000):
            j.commit(acked=seqs[i:i + 1000])
        assert j._checkpointer.checkpoints == 0
        assert j._checkpointer.by_owner >= 1
        wal_bound = (checkpointer.HARD_FACTOR + 1) * WAL_CHECKPOINT_BYTES + (4 << 20)  # plus one commit's frames
        assert os.path.getsize(tmp_path / "j.db-wal") < wal_bound, os.path.getsize(tmp_path / "j.db-wal")
        assert j.depth()["telemetry"] == 0
    finally:
        j.close()


def test_a_checkpoint_is_not_taken_for_a_change_made_elsewhere(tmp_path: Path) -> None:
    """The core reloads node states when another connection committed (``denen node reset-counter``); the
    thread's checkpoints commit nothing and must not look like such a change."""
    j = Journal(tmp_path / "j.db", quota_bytes=256 << 20)
    try:
        j.changed_elsewhere()
        for k in range(12):
            j.commit(entries=_entries(800, 1 + k * 800))
        assert wait_until(lambda: j._checkpointer.checkpoints >= 1, 10)
        j.commit(entries=_entries(1, 20_000))
        assert not j.changed_elsewhere()
    finally:
        j.close()


def test_the_thread_is_woken_only_past_the_threshold(tmp_path: Path, monkeypatch) -> None:
    j = Journal(tmp_path / "j.db", quota_bytes=256 << 20)
    try:
        woken: list[bool] = []
        real_set = j._checkpointer._due.set
        monkeypatch.setattr(j._checkpointer._due, "set", lambda: (woken.append(True), real_set()))
        j.commit(entries=_entries(10, 1))
        assert woken == []  # a few pages: no checkpoint
        j.commit(entries=_entries(8000, 11))
        assert woken == [True]
    finally:
        j.close()




def test_reading_the_wal_index_keeps_sqlites_locks_on_it(tmp_path: Path) -> None:
    """Closing any descriptor of the -shm file would drop the process's POSIX locks on it: another process could
    then take its DMS byte exclusively and reset the WAL index under the agent (it did: SIGBUS, then a reader's
    reset). While the journal is open no other process may take that byte."""
    j = Journal(tmp_path / "j.db", quota_bytes=256 << 20)
    probe = ("import fcntl, os, sys\n"
             "fd = os.open(sys.argv[1], os.O_RDWR)\n"
             "try:\n"
             "    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)\n"  # WALINDEX_LOCK_OFFSET 120 + 8: DMS
             "    print('taken')\n"
             "except OSError:\n"
             "    print('held')\n")

    def dms() -> str:
        return subprocess.run([sys.executable, "-c", probe, str(tmp_path / "j.db-shm")], capture_output=True,
                              text=True, timeout=30).stdout.strip()

    try:
        for k in range(12):
            j.commit(entries=_entries(800, 1 + k * 800))
        assert wait_until(lambda: j._checkpointer.checkpoints >= 1, 10)
        assert dms() == "held"
        j.commit(entries=_entries(1, 20_000))
        assert dms() == "held"
    finally:
        j.close()
    assert dms() in ("taken", "")  # closed: nothing holds it any more (or SQLite removed the file)
