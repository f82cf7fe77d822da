"""The gateway core without radios or broker: decoding outcomes, journal failures, bugs in a decoder.

The broker is a FakePublisher that acknowledges nothing by itself: the tests give each PUBACK.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import agent.gateway.core as gateway_module
from agent.config import parse_config
from agent.errors import JournalError
from agent.gateway import inmemory, outbox
from agent.gateway.core import Gateway
from agent.gateway.reading import Quarantined
from drivers.types import Uplink
from tests.support.field import NODES, FieldNode, config_text, default_values
from tests.support.publisher import NO_MATCHING_SUBSCRIBERS, FakePublisher


def _gateway(tmp_path: Path, window_ms: int) -> Gateway:
    nodes = [FieldNode(n.node_id, n.kind) for n in NODES]
    text = config_text(port="loop://", mqtt_port=9, journal=tmp_path / "j.db", nodes=nodes)
    text = text.replace("\n  quota_mb:", f"\n  commit_window_ms: {window_ms}\n  quota_mb:", 1)
    g = Gateway(parse_config(text), publisher=FakePublisher(), radios=[])
    assert g.config.journal.commit_window_ms == window_ms
    g.test_nodes = {n.kind: n for n in nodes}  # type: ignore[attr-defined]
    return g


@pytest.fixture
def gw(tmp_path: Path) -> Gateway:
    """A core that commits at every wake-up (no commit window)."""
    g = _gateway(tmp_path, 0)
    yield g
    g.journal.close()


@pytest.fixture
def gww(tmp_path: Path) -> Gateway:
    """A core with a 200 ms commit window, inside a burst: as if it had just committed, each frame joins the window
    (a frame after a quiet window commits at once: test_a_frame_after_a_quiet_window_commits_at_once)."""
    g = _gateway(tmp_path, 200)
    g.window.taken_at = time.monotonic() + 3600
    yield g
    g.journal.close()


def up(payload: bytes) -> Uplink:
    return Uplink("lora0", payload, -90, 5.0, None, time.time_ns() // 1000)


def kinds_pending(gw: Gateway, lane: int) -> list[str]:
    return [json.loads(b)["kind"] for _, b in gw.journal.pending(lane, after_seq=0, limit=10_000)]


def broker(gw: Gateway) -> FakePublisher:
    fake = gw.link
    assert isinstance(fake, FakePublisher)
    return fake


def close_window(gw: Gateway) -> None:
    """Wait until the commit window closes."""
    assert gw.window.due
    time.sleep(max(0.0, gw.window.due - time.monotonic()) + 0.001)


def fail_first_commit(gw: Gateway, monkeypatch) -> dict[str, int]:
    """Make the gateway's first journal commit fail as a disk I/O error does; ``["n"]`` counts the commits tried."""
    real_commit = gw.journal.commit
    calls = {"n": 0}

    def failing_once(**kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise JournalError("disk I/O error")
        return real_commit(**kw)

    monkeypatch.setattr(gw.journal, "commit", failing_once)
    return calls


def test_a_failed_commit_keeps_the_batch_and_a_later_commit_stores_it(gw: Gateway, monkeypatch) -> None:
    trap = gw.test_nodes["trap"]  # type: ignore[attr-defined]
    calls = fail_first_commit(gw, monkeypatch)
    monkeypatch.setattr(gateway_module, "COMMIT_RETRY_S", 0.3)
    gw.on_uplinks([up(trap.frame(default_values("trap", 1)))])
    gw.step()
    assert kinds_pending(gw, 1) == [] and gw.stats.counters["journal.commit_failed"] == 1
    assert gw.wait_s() <= 0.3  # a retry is scheduled, the core does not sleep until the next health report
    gw.on_uplinks([up(trap.frame(default_values("trap", 2)))])
    gw.step()
    assert calls["n"] == 1 and kinds_pending(gw, 1) == []  # not retried on every wake-up: kept in memory
    time.sleep(0.3)  # the retry is due
    gw.step()
    assert kinds_pending(gw, 1).count("trap") == 2
    # The trap fired (an alert) and was re-armed (its clear); battery 3.2 V is low (another alert).
    assert kinds_pending(gw, 1).count("alert") == 3
    assert gw.stats.counters["readings.journaled"] == 5


def test_a_decoder_bug_quarantines_the_frame_and_the_core_goes_on(gw: Gateway, monkeypatch) -> None:
    trap = gw.test_nodes["trap"]  # type: ignore[attr-defined]

    def boom(u: Uplink):
        raise RuntimeError("bug")

    monkeypatch.setattr(gw.decoder, "decode", boom)
    gw.on_uplinks([up(trap.frame(default_values("trap", 1)))])
    gw.step()
    assert gw.stats.counters["frames.internal_error"] == 1
    [q] = gw.journal.quarantine()
    assert q.reason == "internal_error" and "RuntimeError: bug" in q.detail and q.raw


def test_sos_is_published_before_a_full_window_of_backlog(gw: Gateway) -> None:
    """With the window full of telemetry, a new SOS still goes out in the same wake-up."""
    fake = broker(gw)
    fake.connect()
    rain = gw.test_nodes["rain"]  # type: ignore[attr-defined]
    gw.on_uplinks([up(rain.frame(default_values("rain", i))) for i in range(2000)])
    window = gw.config.mqtt.inflight_window
    for _ in range(window):  # each wake-up publishes a few batches; no PUBACK comes here, so the window fills
        gw.step()
    published = [m.topic for m in fake.messages if m.mid is not None]
    assert len(published) == window and all(t.endswith("/telemetry") for t in published)
    sos = gw.test_nodes["sos"]  # type: ignore[attr-defined]
    gw.on_uplinks([up(sos.frame(default_values("sos", 0)))])
    gw.step()
    published = [m.topic for m in fake.messages if m.mid is not None]
    assert published[window].endswith("/readings/sos")
    assert len(gw.outbox.inflight) == window + 1 == len(fake.unacked)
    # The SOS had its own commit: it was durable before it was published.
    assert [json.loads(b)["kind"] for _, b in gw.journal.pending(0, after_seq=0, limit=10)] == ["sos"]


def test_a_damaged_journal_at_start_is_set_aside_and_alerted(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    path.write_bytes(b"\x00garbage, not a database" * 200)
    g = Gateway(parse_config(config_text(port="loop://", mqtt_port=9, journal=path, nodes=[])),
                publisher=FakePublisher(), radios=[])
    try:
        assert g.stats.counters["journal.damaged"] == 1
        assert list(tmp_path.glob("j.db.damaged-*"))
        g.step()
        alerts = [json.loads(b) for _, b in g.journal.pending(1, after_seq=0, limit=10)]
        assert [a["alert"]["type"] for a in alerts] == ["journal_damaged"]
        assert "journal damaged" in alerts[0]["alert"]["message"]
    finally:
        g.journal.close()


def test_puback_no_matching_subscribers_keeps_the_readings_and_offers_them_again(gw: Gateway, monkeypatch) -> None:
    fake = broker(gw)
    fake.connect()
    trap = gw.test_nodes["trap"]  # type: ignore[attr-defined]
    gw.on_uplinks([up(trap.frame(default_values("trap", 2)))])  # the reading and its battery_low alert
    gw.step()
    first = fake.of("alarm")
    assert len(first) == 1
    fake.ack(outcome=NO_MATCHING_SUBSCRIBERS)
    monkeypatch.setattr(outbox, "REWIND_S", 0.0)
    gw.step()
    assert sorted(kinds_pending(gw, 1)) == ["alert", "trap"]  # not deleted: nobody received them
    assert gw.stats.counters["mqtt.no_subscribers"] == 1
    gw.step()
    again = fake.of("alarm")
    assert len(again) == 2 and again[1]["readings"] == first[0]["readings"]
    fake.ack()
    gw.step()
    assert kinds_pending(gw, 1) == []


def test_while_the_disk_is_full_an_sos_goes_out_from_memory_once_and_again_once_journaled(
        gw: Gateway, monkeypatch) -> None:
    fake = broker(gw)
    fake.connect()
    real_commit = gw.journal.commit
    full = {"on": True}

    def commit(**kw):
        if full["on"]:
            raise JournalError("database or disk is full")
        return real_commit(**kw)

    monkeypatch.setattr(gw.journal, "commit", commit)
    monkeypatch.setattr(gateway_module, "COMMIT_RETRY_S", 0.0)  # every wake-up tries to commit again
    sos, rain = gw.test_nodes["sos"], gw.test_nodes["rain"]  # type: ignore[attr-defined]
    gw.on_uplinks([up(sos.frame(default_values("sos", 0))), up(rain.frame(default_values("rain", 1)))])
    gw.step()
    sos_out = fake.of("sos")
    assert len(sos_out) == 1 and sos_out[0]["readings"][0]["kind"] == "sos"
    assert gw.stats.counters["sos.published_unjournaled"] == 1
    for i in range(3):  # more traffic while the disk stays full: the SOS is not sent again and again
        gw.on_uplinks([up(rain.frame(default_values("rain", 2 + i)))])
        gw.step()
    assert gw.stats.counters["journal.commit_failed"] == 4 and len(fake.of("sos")) == 1
    full["on"] = False
    for _ in range(4):  # the journaled lanes go out a batch per wake-up
        gw.step()
    sos_out = fake.of("sos")
    # Journaled now, and published from the journal (same identity: the backend keeps one point).
    assert len(sos_out) == 2 and sos_out[1]["readings"][0]["id"] == sos_out[0]["readings"][0]["id"]
    rain_out = [r for r in fake.readings("telemetry") if r["kind"] == "rain"]
    assert sorted(r["fcnt"] for r in rain_out) == [1, 2, 3, 4]


def test_memory_held_while_commits_fail_is_bounded_and_drops_only_the_oldest_telemetry(
        gw: Gateway, monkeypatch) -> None:
    monkeypatch.setattr(inmemory, "UNJOURNALED_MAX", 6)
    monkeypatch.setattr(gw.journal, "commit", lambda **kw: (_ for _ in ()).throw(JournalError("disk I/O error")))
    rain, trap = gw.test_nodes["rain"], gw.test_nodes["trap"]  # type: ignore[attr-defined]
    gw.on_uplinks([up(rain.frame(default_values("rain", i))) for i in range(8)]
                  + [up(trap.frame(default_values("trap", 1)))])
    gw.step()
    kept = gw.unjournaled
    assert len(kept) == 6 and any(e.lane == 1 for e in kept)  # the trap (an alarm) is kept
    kept_rain = [e.fcnt for e in kept if e.lane == 2]
    assert kept_rain == sorted(kept_rain) and kept_rain[-1] == 8  # the newest telemetry survives
    # Every rain reading is either still held or counted as dropped: none vanishes unaccounted.
    assert gw.stats.counters["journal.dropped_unjournaled.telemetry"] + len(kept_rain) == 8


# -- the commit window -------------------------------------------------------------------------------------------
def _counting_commits(gw: Gateway, monkeypatch) -> list[dict]:
    calls: list[dict] = []
    real_commit = gw.journal.commit

    def commit(**kw):
        calls.append(kw)
        return real_commit(**kw)

    monkeypatch.setattr(gw.journal, "commit", commit)
    return calls


def _capture(gw: Gateway) -> list[tuple[str, dict, float]]:
    """The reading messages published from now on, with their time (perf_counter s); the broker is connected."""
    published: list[tuple[str, dict, float]] = []
    fake = broker(gw)
    fake.on_publish = lambda m: published.append((m.topic, m.json(), time.perf_counter()))
    fake.connect()
    return published


def test_telemetry_waits_for_the_window_and_commits_once_with_its_node_states(gww: Gateway, monkeypatch) -> None:
    calls = _counting_commits(gww, monkeypatch)
    rain = gww.test_nodes["rain"]  # type: ignore[attr-defined]
    t0 = time.monotonic()
    for i in range(1, 6):  # five wake-ups, one frame each, as at field rates
        gww.on_uplinks([up(rain.frame(default_values("rain", i)))])
        gww.step()
    assert calls == [] and kinds_pending(gww, 2) == []
    assert 0 < gww.wait_s() <= 0.2  # the core wakes when the window closes
    time.sleep(max(0.0, t0 + 0.2 - time.monotonic()) + 0.01)
    gww.step()
    assert len(calls) == 1 and [e.fcnt for e in calls[0]["entries"]] == [1, 2, 3, 4, 5]
    # The replay window advanced by these frames commits in the same transaction as the readings.
    assert gww.journal.nodes()[rain.hex].last_fcnt == 5
    assert gww.stats.counters["readings.journaled"] == 5 and gww.window.due == 0.0


def test_a_frame_after_a_quiet_window_commits_at_once(tmp_path: Path, monkeypatch) -> None:
    """At rates below one frame per window each frame would wait out a window alone, for no fewer commits: a frame
    with nothing committed in the last window commits at once; the frames of a burst after it share one commit."""
    g = _gateway(tmp_path, 200)
    try:
        calls = _counting_commits(g, monkeypatch)
        rain = g.test_nodes["rain"]  # type: ignore[attr-defined]
        g.on_uplinks([up(rain.frame(default_values("rain", 1)))])
        g.step()
        assert [[e.fcnt for e in c["entries"]] for c in calls] == [[1]] and g.window.due == 0.0
        for i in (2, 3):  # within the window of that commit: they wait
            g.on_uplinks([up(rain.frame(default_values("rain", i)))])
            g.step()
        assert len(calls) == 1 and g.window.due
        close_window(g)
        g.step()
        assert [[e.fcnt for e in c["entries"]] for c in calls] == [[1], [2, 3]]
        time.sleep(0.21)  # a quiet window: the next frame commits at once again
        g.on_uplinks([up(rain.frame(default_values("rain", 4)))])
        g.step()
        assert [[e.fcnt for e in c["entries"]] for c in calls] == [[1], [2, 3], [4]]
    finally:
        g.journal.close()


def test_a_window_held_open_by_acknowledgements_alone_holds_no_frame_after_a_quiet_window() -> None:
    """Acknowledgements, node states and counters may wait up to ACK_FOLD_S; a frame after a quiet window does not
    wait with them (it commits at once and takes them along), a frame of a burst does."""
    w = inmemory.CommitWindow(0.2)
    w.wait([], [], held=0, more_waits=False, now=10.0)
    assert w.due == 10.0 + inmemory.ACK_FOLD_S and w.quiet(10.1)
    w.take([], [], 10.1)
    assert not w.quiet(10.2) and w.quiet(10.3)
    w.wait([], [Quarantined(1, "lora0", "00000401", "bad_mic", "MIC does not verify", None)], held=0, more_waits=False, now=10.3)
    assert not w.quiet(11.0)  # a reading waits: what comes joins it


def test_an_sos_inside_an_open_window_is_committed_and_published_at_once_with_everything_waiting(
        gww: Gateway, monkeypatch) -> None:
    published = _capture(gww)
    calls = _counting_commits(gww, monkeypatch)
    rain, sos = gww.test_nodes["rain"], gww.test_nodes["sos"]  # type: ignore[attr-defined]
    for i in range(1, 4):
        gww.on_uplinks([up(rain.frame(default_values("rain", i)))])
        gww.step()
    assert calls == [] and gww.window.due > time.monotonic()
    t = time.perf_counter()
    gww.on_uplinks([up(sos.frame(default_values("sos", 0)))])
    gww.step()
    sos_out = [(d, at) for topic, d, at in published if topic.endswith("/readings/sos")]
    assert len(sos_out) == 1 and sos_out[0][0]["readings"][0]["kind"] == "sos"
    latency_ms = (sos_out[0][1] - t) * 1e3
    assert latency_ms < 250  # same wake-up, not the window's end (typically ~1-3 ms on a dev machine)
    # The SOS had a commit of its own before it was published; the telemetry waiting committed right after it.
    assert [e.lane for e in calls[0]["entries"]] == [0, 1]  # the SOS and the alert it raised, no telemetry
    assert sorted(e.fcnt for e in calls[1]["entries"] if e.node == rain.hex) == [1, 2, 3]
    assert kinds_pending(gww, 0) == ["sos"] and kinds_pending(gww, 2) == ["rain"] * 3
    assert gww.window.due == 0.0
    print(f"SOS inside an open window: step to publish {latency_ms:.2f} ms")


def test_an_alarm_commits_at_once_with_everything_waiting(gww: Gateway, monkeypatch) -> None:
    calls = _counting_commits(gww, monkeypatch)
    rain, trap = gww.test_nodes["rain"], gww.test_nodes["trap"]  # type: ignore[attr-defined]
    gww.on_uplinks([up(rain.frame(default_values("rain", 1)))])
    gww.step()
    assert calls == []
    gww.on_uplinks([up(trap.frame(default_values("trap", 1)))])
    gww.step()
    assert len(calls) == 1
    assert kinds_pending(gww, 2) == ["rain"] and "trap" in kinds_pending(gww, 1)


def test_acknowledgements_fold_into_the_next_commit_within_the_window(gww: Gateway, monkeypatch) -> None:
    published = _capture(gww)
    fake = broker(gww)
    rain = gww.test_nodes["rain"]  # type: ignore[attr-defined]
    gww.on_uplinks([up(rain.frame(default_values("rain", 1)))])
    gww.step()
    close_window(gww)
    gww.step()
    assert len(published) == 1 and kinds_pending(gww, 2) == ["rain"]
    calls = _counting_commits(gww, monkeypatch)
    fake.ack()
    gww.step()
    # No commit of its own: the deletion waits, bounded by the window; the reading is not offered again meanwhile.
    assert calls == [] and kinds_pending(gww, 2) == ["rain"] and gww.window.due
    assert gww.stats.counters["readings.acked"] == 1
    # Alone, a deletion waits up to ACK_FOLD_S, to fold into the next frame's commit; a frame brings it to the window.
    assert 0.5 < gww.window.due - time.monotonic() <= inmemory.ACK_FOLD_S
    gww.on_uplinks([up(rain.frame(default_values("rain", 2)))])
    gww.step()
    assert calls == [] and gww.window.due - time.monotonic() <= 0.2
    fake.connect()  # a new session starts from the journal
    gww.step()
    assert len(published) == 1
    close_window(gww)
    gww.step()
    assert len(calls) == 1 and kinds_pending(gww, 2) == ["rain"]  # the first deleted, the second committed
    assert len(published) == 2 and not gww.window.due  # the second went out after its commit
    # Many acknowledgements at once (a drain) commit at once, whatever the window.
    monkeypatch.setattr(gateway_module, "ACK_FOLD_MAX", 1)
    fake.ack()
    gww.step()
    assert len(calls) == 2 and gww.outbox.acked == [] and kinds_pending(gww, 2) == []


def test_an_sos_commit_carries_no_deletion_and_sos_after_sos_cannot_put_the_deletion_off(
        gww: Gateway, monkeypatch) -> None:
    """A drain's deletions (up to ACK_FOLD_MAX rows) made an SOS wake-up's commit 2-3 ms longer (tests/bench sos):
    they stay out of it, and the window's end that was due for them holds however many SOS follow."""
    fake = broker(gww)
    fake.connect()
    rain, sos = gww.test_nodes["rain"], gww.test_nodes["sos"]  # type: ignore[attr-defined]
    gww.on_uplinks([up(rain.frame(default_values("rain", 1)))])
    gww.step()
    close_window(gww)
    gww.step()
    fake.ack()
    gww.step()
    acked, due = list(gww.outbox.acked), gww.window.due
    assert len(acked) == 1 and due > time.monotonic()
    calls = _counting_commits(gww, monkeypatch)
    for i in range(3):
        gww.on_uplinks([up(sos.frame(default_values("sos", i)))])
        gww.step()
        fake.ack_all()  # the SOS's PUBACK: its row waits for a deletion too
        gww.step()
        time.sleep(0.01)
    sos_wakeups = len(calls)
    assert sos_wakeups >= 3 and all(not c.get("acked") for c in calls)
    assert set(acked) <= set(gww.outbox.acked) and gww.window.due == due  # not moved by the SOS
    assert kinds_pending(gww, 2) == ["rain"]  # still journaled, and not offered again meanwhile:
    assert [r["kind"] for r in fake.readings()].count("rain") == 1
    close_window(gww)
    gww.step()
    assert len(calls) == sos_wakeups + 1 and set(acked) <= set(calls[-1]["acked"]) and gww.outbox.acked == []
    assert gww.journal.pending(2, after_seq=0, limit=10) == [] and gww.journal.pending(0, after_seq=0, limit=10) == []


def test_a_stopping_core_commits_what_waits_in_the_window(gww: Gateway) -> None:
    rain = gww.test_nodes["rain"]  # type: ignore[attr-defined]
    gww.on_uplinks([up(rain.frame(default_values("rain", 1)))])
    gww.step()
    assert kinds_pending(gww, 2) == []
    gww.stop()  # no core thread here: only the flag and a wake-up
    gww.step()
    assert kinds_pending(gww, 2) == ["rain"]


def test_after_a_failed_commit_the_readings_kept_commit_at_the_retry_not_a_window_later(
        gww: Gateway, monkeypatch) -> None:
    calls = fail_first_commit(gww, monkeypatch)
    monkeypatch.setattr(gateway_module, "COMMIT_RETRY_S", 0.05)
    rain = gww.test_nodes["rain"]  # type: ignore[attr-defined]
    gww.on_uplinks([up(rain.frame(default_values("rain", 1)))])
    gww.step()
    close_window(gww)
    gww.step()
    assert calls["n"] == 1 and gww.unjournaled and "journal failing" in gww.status_text()
    time.sleep(0.05)  # the retry is due
    gww.step()
    assert calls["n"] == 2 and kinds_pending(gww, 2) == ["rain"]
    assert "journal failing" not in gww.status_text()
    assert gww.window.due == 0.0 and gww.wait_s() > 0.5  # no busy loop
