"""Readings stamped before the clock synced: flagged, held (telemetry) or sent at once (SOS), corrected at the sync.

A board without RTC boots in the past. The wall clock here is a fake that runs ``offset`` µs behind the real one
until :meth:`FakeClock.sync` steps it; the boot-time clock is the real one, as it is never stepped.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.gateway import clock, clockwatch
from agent.gateway.core import Gateway
from agent.gateway.journal import Journal
from agent.gateway.journal_schema import SCHEMA_VERSION
from agent.gateway.reading import SOS, TELEMETRY, Entry
from drivers.types import Uplink
from tests.support.field import NODES, FieldNode, config_text, default_values
from tests.support.publisher import FakePublisher

FIVE_YEARS_US = 5 * 365 * 86_400 * 1_000_000


class FakeClock:
    """A wall clock ``behind_us`` behind the real one, with the kernel saying "not synchronised" until sync()."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, behind_us: int = FIVE_YEARS_US) -> None:
        self.behind_us = behind_us
        self.kernel_synced = False
        monkeypatch.setattr(clock, "wall_us", lambda: time.time_ns() // 1000 - self.behind_us)
        monkeypatch.setattr(clock, "kernel_synced", lambda: self.kernel_synced)
        monkeypatch.setattr(clock, "_CHECK_EVERY_S", -1.0)  # ask the (fake) kernel every time
        monkeypatch.setattr(clock._state, "assume_synced", False)

    def sync(self) -> None:
        """NTP arrives: the wall clock is stepped to the true time and the kernel says synchronised."""
        self.behind_us = 0
        self.kernel_synced = True


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    return FakeClock(monkeypatch)


def make_gateway(tmp_path: Path) -> Gateway:
    nodes = [FieldNode(n.node_id, n.kind) for n in NODES]
    g = Gateway(parse_config(config_text(port="loop://", mqtt_port=9, journal=tmp_path / "j.db", nodes=nodes)),
                publisher=FakePublisher(), radios=[])
    g.test_nodes = {n.kind: n for n in nodes}  # type: ignore[attr-defined]
    return g


def capture(gw: Gateway) -> list[tuple[str, dict]]:
    """Connect the (fake) broker: every reading message is kept as (lane, document) and 'sent' at once."""
    published: list[tuple[str, dict]] = []
    fake = gw.link
    assert isinstance(fake, FakePublisher)
    fake.on_publish = lambda m: published.append((m.kind, m.json()))
    fake.connect()
    return published


def uplink(payload: bytes) -> Uplink:
    """An uplink stamped the way the radio thread stamps it: on the wall clock of the moment."""
    return Uplink("lora0", payload, -90, 5.0, None, clock.wall_us())


def settle(gw: Gateway, steps: int = 5) -> None:
    """Wake the core a few times, each time as if the commit window had run out (journal.commit_window_ms):
    what waited in memory is committed, and the backlog goes out one batch per wake-up, lanes in priority order."""
    for _ in range(steps):
        if gw.window.due:
            time.sleep(max(0.0, gw.window.due - time.monotonic()))
        gw.step()


def readings(published: list[tuple[str, dict]], lane: str) -> list[dict]:
    return [r for ln, doc in published if ln == lane for r in doc["readings"]]


def test_before_sync_sos_goes_at_once_telemetry_waits_and_after_sync_it_goes_with_its_true_time(
        tmp_path: Path, fake_clock: FakeClock) -> None:
    gw = make_gateway(tmp_path)
    try:
        published = capture(gw)
        rain, sos = gw.test_nodes["rain"], gw.test_nodes["sos"]  # type: ignore[attr-defined]
        true_times = []
        for i in range(5):
            true_times.append(time.time_ns() // 1000)
            gw.on_uplinks([uplink(rain.frame(default_values("rain", i)))])
            gw.step()
        gw.on_uplinks([uplink(sos.frame(default_values("sos", 0)))])
        gw.step()
        [sos_reading] = readings(published, "sos")
        assert sos_reading["clock"] == "unsynced"
        assert sos_reading["ts_us"] < time.time_ns() // 1000 - FIVE_YEARS_US + 60_000_000  # the clock of the time
        assert readings(published, "telemetry") == []  # held: its timestamp is known to be wrong
        assert gw.wait_s() <= clockwatch.CLOCK_CHECK_S  # the core looks again soon, for the sync

        fake_clock.sync()
        settle(gw)
        rain_out = [r for r in readings(published, "telemetry") if r["kind"] == "rain"]
        assert [r["fcnt"] for r in rain_out] == sorted(r["fcnt"] for r in rain_out) and len(rain_out) == 5
        assert {r["clock"] for r in rain_out} == {"corrected"}
        for r, true in zip(rain_out, true_times):
            assert abs(r["ts_us"] - true) < 50_000, (r["ts_us"], true)  # true time, to within the test's pace
        assert gw.stats.counters["clock.corrected"] >= 6  # the 5 rain readings and the SOS still in the journal
        assert gw.stats.counters["clock.steps"] == 1
        # Readings made after the sync are stamped on the synchronised clock and need nothing.
        gw.on_uplinks([uplink(rain.frame(default_values("rain", 9)))])
        settle(gw)
        assert readings(published, "telemetry")[-1]["clock"] == "synced"
    finally:
        gw.journal.close()


def test_a_reading_stamped_just_before_the_step_is_corrected_with_the_offset_it_was_stamped_under(
        tmp_path: Path, fake_clock: FakeClock) -> None:
    gw = make_gateway(tmp_path)
    try:
        published = capture(gw)
        rain = gw.test_nodes["rain"]  # type: ignore[attr-defined]
        gw.step()
        true = time.time_ns() // 1000
        gw.on_uplinks([uplink(rain.frame(default_values("rain", 1)))])  # stamped in the past ...
        fake_clock.sync()  # ... and the clock steps before the core has looked at it
        settle(gw)
        [r] = [r for r in readings(published, "telemetry") if r["kind"] == "rain"]
        assert r["clock"] == "corrected" and abs(r["ts_us"] - true) < 50_000
    finally:
        gw.journal.close()


def test_without_a_sync_telemetry_waits_only_until_the_hold_ends_and_goes_flagged(
        tmp_path: Path, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    gw = make_gateway(tmp_path)
    try:
        published = capture(gw)
        rain = gw.test_nodes["rain"]  # type: ignore[attr-defined]
        gw.on_uplinks([uplink(rain.frame(default_values("rain", 1)))])
        gw.step()
        assert readings(published, "telemetry") == []
        monkeypatch.setattr(gw.clockwatch, "hold_until", time.monotonic() - 1)  # the hold (CLOCK_HOLD_S) is over
        settle(gw)
        [r] = [r for r in readings(published, "telemetry") if r["kind"] == "rain"]
        assert r["clock"] == "unsynced"
    finally:
        gw.journal.close()


def test_readings_of_an_earlier_boot_cannot_be_corrected_and_go_out_flagged(
        tmp_path: Path, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    gw = make_gateway(tmp_path)
    rain = gw.test_nodes["rain"]  # type: ignore[attr-defined]
    gw.on_uplinks([uplink(rain.frame(default_values("rain", 1)))])
    settle(gw, 2)  # the frame is read, then committed when its window ends
    gw.journal.close()
    j = Journal(tmp_path / "j.db", quota_bytes=1 << 20)
    try:
        assert j.unsynced_count() == 1
    finally:
        j.close()
    monkeypatch.setattr(clock, "boot_id", lambda: "another-boot")  # power cut, reboot, still no NTP
    fake_clock.sync()
    gw = make_gateway(tmp_path)
    try:
        assert gw.stats.counters["clock.uncorrectable"] == 1
        published = capture(gw)
        settle(gw)
        [r] = [r for r in readings(published, "telemetry") if r["kind"] == "rain"]
        assert r["clock"] == "unsynced"  # its boot-time stamp counts from a boot that has ended
    finally:
        gw.journal.close()


# -- the journal's part -------------------------------------------------------------------------------------------

def body(fcnt: int, ts_us: int, quality: str) -> str:
    return json.dumps({"id": f"gw/00000101/{fcnt}", "node": "00000101", "name": "ノード", "fcnt": fcnt,
                       "kind": "rain", "lane": "telemetry", "ts_us": ts_us, "clock": quality,
                       "values": {"rain_mm": 0.5}}, separators=(",", ":"), ensure_ascii=False)


def test_correct_clock_rewrites_time_and_flag_only_in_slices(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", quota_bytes=1 << 20)
    try:
        entries = [Entry(TELEMETRY, "00000101", i, 1_000 + i, body(i, 1_000 + i, "unsynced"), boot_us=50_000 + i)
                   for i in range(5)]
        entries.append(Entry(TELEMETRY, "00000101", 9, 2_000_000_000_000_000, body(9, 2_000_000_000_000_000, "synced")))
        j.commit(entries=entries)
        assert j.unsynced_count() == 5
        assert j.correct_clock(1_700_000_000_000_000, limit=3) == 3
        assert j.correct_clock(1_700_000_000_000_000, limit=3) == 2
        assert j.correct_clock(1_700_000_000_000_000, limit=3) == 0 and j.unsynced_count() == 0
        rows = j.pending(TELEMETRY, after_seq=0, limit=10)
        for i, (_, text) in enumerate(rows[:5]):
            doc = json.loads(text)
            assert doc["ts_us"] == 1_700_000_000_000_000 + 50_000 + i and doc["clock"] == "corrected"
            # Only the time and the flag change: key order, names in Japanese, values stay as they were.
            assert text == body(i, 1_700_000_000_000_000 + 50_000 + i, "corrected")
        assert rows[5][1] == body(9, 2_000_000_000_000_000, "synced")
    finally:
        j.close()


def test_pending_with_hold_stops_before_the_first_reading_awaiting_correction(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.db", quota_bytes=1 << 20)
    try:
        j.commit(entries=[Entry(TELEMETRY, "00000101", 1, 1, body(1, 1, "synced")),
                          Entry(TELEMETRY, "00000101", 2, 2, body(2, 2, "unsynced"), boot_us=7),
                          Entry(TELEMETRY, "00000101", 3, 3, body(3, 3, "synced")),
                          Entry(SOS, "00000102", 1, 4, body(1, 4, "unsynced"), boot_us=8)])
        assert [s for s, _ in j.pending(TELEMETRY, after_seq=0, limit=10, hold_unsynced=True)] == [1]
        assert [s for s, _ in j.pending(TELEMETRY, after_seq=0, limit=10)] == [1, 2, 3]
    finally:
        j.close()


def test_a_schema_1_journal_is_migrated_and_keeps_its_readings(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE reading (seq INTEGER PRIMARY KEY AUTOINCREMENT, lane INTEGER NOT NULL, node TEXT NOT NULL,
                              fcnt INTEGER NOT NULL, ts_us INTEGER NOT NULL, body TEXT NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        INSERT INTO meta VALUES ('schema', '1');
    """)
    db.execute("INSERT INTO reading(lane, node, fcnt, ts_us, body) VALUES (2, '00000101', 1, 5, ?)",
               (body(1, 5, "synced"),))
    db.commit()
    db.close()
    j = Journal(path, quota_bytes=1 << 20)
    try:
        assert j.meta()["schema"] == str(SCHEMA_VERSION) and j.unsynced_count() == 0
        assert [s for s, _ in j.pending(TELEMETRY, after_seq=0, limit=10, hold_unsynced=True)] == [1]
    finally:
        j.close()


def test_the_trusted_setting_trusts_a_plausible_clock_but_never_one_before_2020(monkeypatch) -> None:
    monkeypatch.setenv(clock.CLOCK_ENV, "trusted")
    state = clock.ClockState()
    monkeypatch.setattr(clock, "kernel_synced", lambda: False)
    assert state.synced()
    monkeypatch.setattr(clock, "wall_us", lambda: 86_400_000_000)  # 1970-01-02
    assert not state.synced()
    monkeypatch.setenv(clock.CLOCK_ENV, "kernel")
    monkeypatch.setattr(clock, "wall_us", lambda: time.time_ns() // 1000)
    assert not clock.ClockState().synced()


def test_the_sync_check_does_not_search_for_libc(monkeypatch: pytest.MonkeyPatch) -> None:
    """find_library forks `ldconfig -p` from the ~50 MB agent every time; the check runs every 10 s."""
    import ctypes.util

    from agent.gateway import clock

    def forbidden(name: str) -> None:
        raise AssertionError(f"find_library({name!r}) called")

    monkeypatch.setattr(ctypes.util, "find_library", forbidden)
    clock._libc.cache_clear()
    assert clock.kernel_synced() in (True, False)  # adjtimex answered (None: it could not be asked)
    assert clock.kernel_synced() in (True, False)
