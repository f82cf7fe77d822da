"""The gateway core without radios or broker: decoding outcomes, journal failures, bugs in a decoder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.errors import JournalError
from agent.gateway.core import Gateway
from drivers.types import Uplink
from tests.support.field import NODES, FieldNode, config_text, default_values


def _gateway(tmp_path: Path, window_ms: int) -> Gateway:
    nodes = [FieldNode(n.node_id, n.kind) for n in NODES]
    # Port 9 (discard) on loopback: nothing listens, the link never connects; the core does not need it here.
    text = config_text(port="loop://", mqtt_port=9, journal=tmp_path / "j.db", nodes=nodes)
    text = text.replace("\n  quota_mb:", f"\n  commit_window_ms: {window_ms}\n  quota_mb:", 1)
    g = Gateway(parse_config(text), radios=[])
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
    """A core with a 200 ms commit window."""
    g = _gateway(tmp_path, 200)
    yield g
    g.journal.close()


def up(payload: bytes) -> Uplink:
    return Uplink("lora0", payload, -90, 5.0, None, time.time_ns() // 1000)


def kinds_pending(gw: Gateway, lane: int) -> list[str]:
    return [json.loads(b)["kind"] for _, b in gw.journal.pending(lane, after_seq=0, limit=10_000)]


def test_a_failed_commit_keeps_the_batch_and_a_later_commit_stores_it(gw: Gateway, monkeypatch) -> None:
    trap = gw.test_nodes["trap"]  # type: ignore[attr-defined]
    real_commit = gw.journal.commit
    calls = {"n": 0}

    def failing_once(**kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise JournalError("disk I/O error")
        return real_commit(**kw)

    monkeypatch.setattr(gw.journal, "commit", failing_once)
    gw.on_uplinks([up(trap.frame(default_values("trap", 1)))])
    gw._step(0)
    assert kinds_pending(gw, 1) == [] and gw.stats.counters["journal.commit_failed"] == 1
    assert gw._timeout() <= 1.0  # a retry is scheduled, the core does not sleep until the next health report
    gw.on_uplinks([up(trap.frame(default_values("trap", 2)))])
    gw._step(0)
    assert calls["n"] == 1 and kinds_pending(gw, 1) == []  # not retried on every wake-up: kept in memory
    gw._retry_commit_at = time.monotonic() - 0.001  # the retry is due
    gw._step(0)
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
    gw._step(0)
    assert gw.stats.counters["frames.internal_error"] == 1
    [q] = gw.journal.quarantine()
    assert q.reason == "internal_error" and "RuntimeError: bug" in q.detail and q.raw


def test_sos_is_published_before_a_full_window_of_backlog(gw: Gateway) -> None:
    """With the window full of telemetry, a new SOS still goes out in the same wake-up."""
    published: list[str] = []
    gw._session = 1
    gw.link.publish = lambda topic, payload: (published.append(topic), (1, len(published)))[1]  # type: ignore[method-assign]
    rain = gw.test_nodes["rain"]  # type: ignore[attr-defined]
    gw.on_uplinks([up(rain.frame(default_values("rain", i))) for i in range(2000)])
    window = gw.config.mqtt.inflight_window
    for _ in range(window):  # each wake-up publishes a few batches; no PUBACK comes here, so the window fills
        gw._step(0)
    assert len(published) == window and all(t.endswith("/telemetry") for t in published)
    sos = gw.test_nodes["sos"]  # type: ignore[attr-defined]
    gw.on_uplinks([up(sos.frame(default_values("sos", 0)))])
    gw._step(0)
    assert published[window].endswith("/readings/sos")
    assert len(gw._inflight) == window + 1
    # The SOS had its own commit: it was durable before it was published.
    assert [json.loads(b)["kind"] for _, b in gw.journal.pending(0, after_seq=0, limit=10)] == ["sos"]


def test_a_damaged_journal_at_start_is_set_aside_and_alerted(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    path.write_bytes(b"\x00garbage, not a database" * 200)
    g = Gateway(parse_config(config_text(port="loop://", mqtt_port=9, journal=path, nodes=[])), radios=[])
    try:
        assert g.stats.counters["journal.damaged"] == 1
        assert list(tmp_path.glob("j.db.damaged-*"))
        g._step(0)
        alerts = [json.loads(b) for _, b in g.journal.pending(1, after_seq=0, limit=10)]
        assert [a["alert"]["type"] for a in alerts] == ["journal_damaged"]
        assert "journal damaged" in alerts[0]["alert"]["message"]
    finally:
        g.journal.close()


def test_puback_no_matching_subscribers_keeps_the_readings_and_offers_them_again(gw: Gateway, monkeypatch) -> None:
    import agent.gateway.core as gateway_module

    published: list[tuple[str, bytes]] = []
    gw._session = 1
    gw.link.publish = lambda topic, payload: (published.append((topic, payload)), (1, len(published)))[1]  # type: ignore[method-assign]
    trap = gw.test_nodes["trap"]  # type: ignore[attr-defined]
    gw.on_uplinks([up(trap.frame(default_values("trap", 2)))])  # the reading and its battery_low alert
    gw._step(0)
    first = [p for t, p in published if t.endswith("/alarm")]
    assert len(first) == 1
    gw.inbox.put(("ack", 1, len(published), True, "No matching subscribers", 0x10))
    monkeypatch.setattr(gateway_module, "_REWIND_S", 0.0)
    gw._step(0)
    assert sorted(kinds_pending(gw, 1)) == ["alert", "trap"]  # not deleted: nobody received them
    assert gw.stats.counters["mqtt.no_subscribers"] == 1
    gw._step(0)
    again = [p for t, p in published if t.endswith("/alarm")]
    assert len(again) == 2 and json.loads(again[1])["readings"] == json.loads(first[0])["readings"]
    gw.inbox.put(("ack", 1, len(published), True, "Success", 0))
    gw._step(0)
    assert kinds_pending(gw, 1) == []


def test_while_the_disk_is_full_an_sos_goes_out_from_memory_once_and_again_once_journaled(
        gw: Gateway, monkeypatch) -> None:
    published: list[tuple[str, dict]] = []
    gw._session = 1
    gw.link.publish = lambda topic, payload: (published.append((topic, json.loads(payload))), (1, len(published)))[1]  # type: ignore[method-assign]
    real_commit = gw.journal.commit
    full = {"on": True}

    def commit(**kw):
        if full["on"]:
            raise JournalError("database or disk is full")
        return real_commit(**kw)

    monkeypatch.setattr(gw.journal, "commit", commit)
    sos, rain = gw.test_nodes["sos"], gw.test_nodes["rain"]  # type: ignore[attr-defined]
    gw.on_uplinks([up(sos.frame(default_values("sos", 0))), up(rain.frame(default_values("rain", 1)))])
    gw._step(0)
    sos_out = [d for t, d in published if t.endswith("/sos")]
    assert len(sos_out) == 1 and sos_out[0]["readings"][0]["kind"] == "sos"
    assert gw.stats.counters["sos.published_unjournaled"] == 1
    for i in range(3):  # more traffic while the disk stays full: the SOS is not sent again and again
        gw.on_uplinks([up(rain.frame(default_values("rain", 2 + i)))])
        gw._retry_commit_at = 0.0
        gw._step(0)
    assert len([t for t, _ in published if t.endswith("/sos")]) == 1
    full["on"] = False
    gw._retry_commit_at = 0.0
    for _ in range(4):  # the journaled lanes go out a batch per wake-up
        gw._step(0)
    sos_out = [d for t, d in published if t.endswith("/sos")]
    # Journaled now, and published from the journal (same identity: the backend keeps one point).
    assert len(sos_out) == 2 and sos_out[1]["readings"][0]["id"] == sos_out[0]["readings"][0]["id"]
    rain_out = [r for t, d in published if t.endswith("/telemetry") for r in d["readings"] if r["kind"] == "rain"]
    assert sorted(r["fcnt"] for r in rain_out) == [1, 2, 3, 4]


def test_memory_held_while_commits_fail_is_bounded_and_drops_only_the_oldest_telemetry(
        gw: Gateway, monkeypatch) -> None:
    import agent.gateway.core as gateway_module

    monkeypatch.setattr(gateway_module, "UNJOURNALED_MAX", 6)
    monkeypatch.setattr(gw.journal, "commit", lambda **kw: (_ for _ in ()).throw(JournalError("disk I/O error")))
    rain, trap = gw.test_nodes["rain"], gw.test_nodes["trap"]  # type: ignore[attr-defined]
    gw.on_uplinks([up(rain.frame(default_values("rain", i))) for i in range(8)]
                  + [up(trap.frame(default_values("trap", 1)))])
    gw._step(0)
    kept = gw._uncommitted[0]  # type: ignore[index]
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
    published: list[tuple[str, dict, float]] = []
    gw._session = 1
    gw.link.publish = lambda topic, payload: (  # type: ignore[method-assign]
        published.append((topic, json.loads(payload), time.perf_counter())), (1, len(published)))[1]
    return published


def test_telemetry_waits_for_the_window_and_commits_once_with_its_node_states(gww: Gateway, monkeypatch) -> None:
    calls = _counting_commits(gww, monkeypatch)
    rain = gww.test_nodes["rain"]  # type: ignore[attr-defined]
    t0 = time.monotonic()
    for i in range(1, 6):  # five wake-ups, one frame each, as at field rates
        gww.on_uplinks([up(rain.frame(default_values("rain", i)))])
        gww._step(0)
    assert calls == [] and kinds_pending(gww, 2) == []
    assert 0 < gww._timeout() <= 0.2  # the core wakes when the window closes
    time.sleep(max(0.0, t0 + 0.2 - time.monotonic()) + 0.01)
    gww._step(0)
    assert len(calls) == 1 and [e.fcnt for e in calls[0]["entries"]] == [1, 2, 3, 4, 5]
    # The replay window advanced by these frames commits in the same transaction as the readings.
    assert gww.journal.nodes()[rain.hex].last_fcnt == 5
    assert gww.stats.counters["readings.journaled"] == 5 and gww._commit_due == 0.0


def test_an_sos_inside_an_open_window_is_committed_and_published_at_once_with_everything_waiting(
        gww: Gateway, monkeypatch) -> None:
    published = _capture(gww)
    calls = _counting_commits(gww, monkeypatch)
    rain, sos = gww.test_nodes["rain"], gww.test_nodes["sos"]  # type: ignore[attr-defined]
    for i in range(1, 4):
        gww.on_uplinks([up(rain.frame(default_values("rain", i)))])
        gww._step(0)
    assert calls == [] and gww._commit_due > time.monotonic()
    t = time.perf_counter()
    gww.on_uplinks([up(sos.frame(default_values("sos", 0)))])
    gww._step(0)
    sos_out = [(d, at) for topic, d, at in published if topic.endswith("/readings/sos")]
    assert len(sos_out) == 1 and sos_out[0][0]["readings"][0]["kind"] == "sos"
    latency_ms = (sos_out[0][1] - t) * 1e3
    assert latency_ms < 250  # same wake-up, not the window's end (typically ~1-3 ms on a dev machine)
    # The SOS had a commit of its own before it was published; the telemetry waiting committed right after it.
    assert [e.lane for e in calls[0]["entries"]] == [0]
    assert sorted(e.fcnt for e in calls[1]["entries"] if e.node == rain.hex) == [1, 2, 3]
    assert kinds_pending(gww, 0) == ["sos"] and kinds_pending(gww, 2) == ["rain"] * 3
    assert gww._commit_due == 0.0
    print(f"SOS inside an open window: step to publish {latency_ms:.2f} ms")


def test_an_alarm_commits_at_once_with_everything_waiting(gww: Gateway, monkeypatch) -> None:
    calls = _counting_commits(gww, monkeypatch)
    rain, trap = gww.test_nodes["rain"], gww.test_nodes["trap"]  # type: ignore[attr-defined]
    gww.on_uplinks([up(rain.frame(default_values("rain", 1)))])
    gww._step(0)
    assert calls == []
    gww.on_uplinks([up(trap.frame(default_values("trap", 1)))])
    gww._step(0)
    assert len(calls) == 1
    assert kinds_pending(gww, 2) == ["rain"] and "trap" in kinds_pending(gww, 1)


def test_acknowledgements_fold_into_the_next_commit_within_the_window(gww: Gateway, monkeypatch) -> None:
    import agent.gateway.core as gateway_module

    published = _capture(gww)
    rain = gww.test_nodes["rain"]  # type: ignore[attr-defined]
    gww.on_uplinks([up(rain.frame(default_values("rain", 1)))])
    gww._step(0)
    gww._commit_due = time.monotonic() - 0.001  # the window closes
    gww._step(0)
    assert len(published) == 1 and kinds_pending(gww, 2) == ["rain"]
    calls = _counting_commits(gww, monkeypatch)
    gww.inbox.put(("ack", 1, 1, True, "Success", 0))
    gww._step(0)
    # No commit of its own: the deletion waits, bounded by the window; the reading is not offered again meanwhile.
    assert calls == [] and kinds_pending(gww, 2) == ["rain"] and gww._commit_due
    assert gww.stats.counters["readings.acked"] == 1
    # Alone, a deletion waits up to ACK_FOLD_S, to fold into the next frame's commit; a frame brings it to the window.
    assert 0.5 < gww._commit_due - time.monotonic() <= gateway_module.ACK_FOLD_S
    gww.on_uplinks([up(rain.frame(default_values("rain", 2)))])
    gww._step(0)
    assert calls == [] and gww._commit_due - time.monotonic() <= 0.2
    gww._session, gww._sent_upto = 2, [0] * 4  # a new session starts from the journal
    gww._step(0)
    assert len(published) == 1
    gww._commit_due = time.monotonic() - 0.001
    gww._step(0)
    assert len(calls) == 1 and kinds_pending(gww, 2) == ["rain"]  # the first deleted, the second committed
    # Many acknowledgements at once (a drain) commit at once, whatever the window.
    monkeypatch.setattr(gateway_module, "ACK_FOLD_MAX", 3)
    gww._acked = [10_001, 10_002, 10_003]
    gww._step(0)
    assert len(calls) == 2 and gww._acked == []


def test_a_stopping_core_commits_what_waits_in_the_window(gww: Gateway) -> None:
    rain = gww.test_nodes["rain"]  # type: ignore[attr-defined]
    gww.on_uplinks([up(rain.frame(default_values("rain", 1)))])
    gww._step(0)
    assert kinds_pending(gww, 2) == []
    gww._stop.set()
    gww._step(0)
    assert kinds_pending(gww, 2) == ["rain"]


def test_after_a_failed_commit_the_readings_kept_commit_at_the_retry_not_a_window_later(
        gww: Gateway, monkeypatch) -> None:
    real_commit = gww.journal.commit
    calls = {"n": 0}

    def failing_once(**kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise JournalError("disk I/O error")
        return real_commit(**kw)

    monkeypatch.setattr(gww.journal, "commit", failing_once)
    rain = gww.test_nodes["rain"]  # type: ignore[attr-defined]
    gww.on_uplinks([up(rain.frame(default_values("rain", 1)))])
    gww._step(0)
    gww._commit_due = time.monotonic() - 0.001
    gww._step(0)
    assert calls["n"] == 1 and gww._uncommitted
    gww._retry_commit_at = time.monotonic() - 0.001  # the retry is due
    gww._step(0)
    assert calls["n"] == 2 and kinds_pending(gww, 2) == ["rain"]
    assert gww._retry_commit_at == 0.0 and gww._commit_due == 0.0 and gww._timeout() > 0.5  # no busy loop
