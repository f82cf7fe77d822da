"""The core's counters reach the journal at most every COUNTERS_EVERY_S, not with each commit of readings; an SOS's
commit, the deletions after the broker's acknowledgements and the agent's last commit take them at once; without
traffic the core still writes them within that interval, then nothing (agent.gateway.counters)."""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.gateway import counters as counters_module
from agent.gateway.core import Gateway
from agent.gateway.counters import COUNTERS_EVERY_S, CounterWrites
from agent.tools import status
from tests.support.polling import wait_until
from tests.unit.test_wakeups import frame, running_core

EVERY_S = 2.0  # the interval the timing tests use instead of COUNTERS_EVERY_S


def journal_counters(path: Path) -> dict[str, int]:
    """The counters as ``denen status`` reads them, from another connection."""
    return status.collect(str(path))["counters"]


def data_version(db: sqlite3.Connection) -> int:
    """Changes when another connection commits to the journal."""
    return db.execute("PRAGMA data_version").fetchone()[0]


@pytest.fixture
def core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    monkeypatch.setattr(counters_module, "COUNTERS_EVERY_S", EVERY_S)
    interval = sys.getswitchinterval()
    g = running_core(tmp_path)
    yield g
    g.stop()
    sys.setswitchinterval(interval)


def test_the_interval_is_ten_seconds_and_changed_counters_wait_for_it() -> None:
    assert COUNTERS_EVERY_S == 10.0
    c = CounterWrites(counters_module.Counter())
    t0 = c.due_at
    assert c.deadline() == 0.0 and not c.due(t0)  # nothing changed: no deadline
    c.count("frames.ok")
    assert c.due(t0) and c.take(t0) == {"frames.ok": 1}  # the first commit after the start takes them
    c.count("frames.ok")  # counted while that commit was being made: stays changed
    c.written(t0)
    assert c.dirty == {"frames.ok"} and c.deadline() == t0 + COUNTERS_EVERY_S
    assert c.take(t0 + 9.9) is None and c.take(t0 + 9.9, force=True) == {"frames.ok": 2}
    assert c.deadline(planned=t0 + 0.25) == 0.0  # a commit is planned anyway: it takes them
    c.count("journal.evicted.telemetry", 5, at_once=True)  # readings lost to the quota: shown without waiting
    assert c.due(time.monotonic()) and c.deadline() <= time.monotonic()


def test_telemetry_commits_leave_the_counters_to_the_interval_then_an_idle_core_writes_them_once(
        core: Gateway, tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    assert wait_until(lambda: not core.counters.dirty, 5)  # the start's counters (mqtt.connects) are written
    first = journal_counters(path)
    written_at = time.monotonic()
    for i in range(1, 3):  # two commit windows of 250 ms, inside the interval
        core.on_uplinks(frame(core, "rain", i))
        assert wait_until(lambda i=i: core.stats.counters["readings.journaled"] == i, 2)
    assert time.monotonic() - written_at < EVERY_S
    assert core.stats.counters["frames.ok"] == 2
    assert journal_counters(path) == first  # two commits, neither wrote a counter
    # Nothing more arrives: the counters are written within the interval (and the commit window it joins)...
    assert wait_until(lambda: journal_counters(path).get("frames.ok") == 2, EVERY_S + 0.25 + 1.0, interval=0.02)
    assert journal_counters(path)["readings.journaled"] == 2
    assert time.monotonic() - written_at < EVERY_S + 0.25 + 1.0
    # ...and then nothing is written while nothing changes (the unacknowledged readings only wake the core).
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        before = data_version(db)
        time.sleep(EVERY_S * 1.5)
        assert data_version(db) == before
    finally:
        db.close()
    assert not core.counters.dirty and core.counters.deadline() == 0.0


def test_an_sos_commit_takes_the_counters_at_once(core: Gateway, tmp_path: Path) -> None:
    assert wait_until(lambda: not core.counters.dirty, 5)
    core.on_uplinks(frame(core, "rain", 1))
    assert wait_until(lambda: core.stats.counters["readings.journaled"] == 1, 2)
    assert journal_counters(tmp_path / "j.db").get("frames.ok", 0) == 0
    core.on_uplinks(frame(core, "sos", 0))  # committed at once, on this thread, with the counters
    assert journal_counters(tmp_path / "j.db")["frames.ok"] == 2


def test_the_last_commit_takes_the_counters(core: Gateway, tmp_path: Path) -> None:
    assert wait_until(lambda: not core.counters.dirty, 5)
    core.on_uplinks(frame(core, "rain", 1))
    assert wait_until(lambda: core.stats.counters["readings.journaled"] == 1, 2)
    core.stop()
    c = journal_counters(tmp_path / "j.db")
    assert (c["frames.ok"], c["readings.journaled"]) == (1, 1)


def test_the_deletions_after_the_acknowledgements_take_the_counters(core: Gateway, tmp_path: Path) -> None:
    assert wait_until(lambda: not core.counters.dirty, 5)
    core.on_uplinks(frame(core, "rain", 1))
    assert wait_until(lambda: core.stats.counters["readings.journaled"] == 1, 2)
    assert journal_counters(tmp_path / "j.db").get("frames.ok", 0) == 0
    fake = core.link
    assert fake.ack_all() == 1  # type: ignore[attr-defined]
    # The deletion commit (within ACK_FOLD_S, well inside the interval) brings the counters: the journal is drained
    # and `denen status` shows every frame counted.
    assert wait_until(lambda: status.collect(str(tmp_path / "j.db"))["journal"]["unsent"] == 0, 3, interval=0.02)
    c = journal_counters(tmp_path / "j.db")
    assert (c["frames.ok"], c["readings.journaled"], c["readings.acked"]) == (1, 1, 1)
