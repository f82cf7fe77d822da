"""Who wakes for a frame: a running core, its radios' hand-off and the PUBACKs that wait (agent.gateway.events.CoreTurn).

The core runs on its own thread (``Gateway.start``); the test's thread plays the radio (``on_uplinks``) and the MQTT
link (the FakePublisher's PUBACKs). The broker acknowledges nothing by itself: the tests give each PUBACK.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import systemd
from agent.config import parse_config
from agent.gateway.core import Gateway
from agent.gateway.events import GATHERED_MAX
from agent.gateway.intake import gatherable
from agent.gateway.reading import SOS, TELEMETRY
from drivers.types import Uplink
from tests.support.field import NODES, FieldNode, config_text, default_values
from tests.support.polling import wait_until
from tests.support.publisher import FakePublisher

WINDOW_MS = 250


def running_core(tmp_path: Path, *, window_ms: int = WINDOW_MS, inflight_window: int | None = None) -> Gateway:
    """A running core (its own thread) with a commit window of ``window_ms`` and a connected broker."""
    nodes = [FieldNode(n.node_id, n.kind) for n in NODES]
    text = config_text(port="loop://", mqtt_port=9, journal=tmp_path / "j.db", nodes=nodes)
    text = text.replace("\n  quota_mb:", f"\n  commit_window_ms: {window_ms}\n  quota_mb:", 1)
    if inflight_window is not None:
        text = text.replace("\n  reconnect_min_s:", f"\n  inflight_window: {inflight_window}\n  reconnect_min_s:", 1)
    g = Gateway(parse_config(text), publisher=FakePublisher(), radios=[])
    g.test_nodes = {n.kind: n for n in nodes}  # type: ignore[attr-defined]
    fake = g.link
    assert isinstance(fake, FakePublisher)
    fake.connect()
    g.start()
    assert wait_until(lambda: g.outbox.session == 1 and not g.window.due, 5)
    time.sleep(0.05)  # the start-up wake-ups are over: the core's thread sleeps
    return g


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Gateway]:
    interval = sys.getswitchinterval()
    g = running_core(tmp_path)
    yield g
    g.stop()
    sys.setswitchinterval(interval)


def frame(g: Gateway, kind: str, i: int = 0) -> list[Uplink]:
    node = g.test_nodes[kind]  # type: ignore[attr-defined]
    return [Uplink("lora0", node.frame(default_values(kind, i)), -90, 5.0, None, time.time_ns() // 1000)]


def wakeups(g: Gateway, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads that do the core's wake-ups from now on, in order."""
    names: list[str] = []
    real = g.update_status  # the last step of every wake-up

    def counted(*args, **kwargs):
        names.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(g, "update_status", counted)
    return names


def readings(g: Gateway, lane: str) -> list[dict]:
    fake = g.link
    assert isinstance(fake, FakePublisher)
    return [r for m in list(fake.messages) if m.topic.endswith(f"/readings/{lane}") for r in m.json()["readings"]]


def quiet(g: Gateway) -> None:
    """As if nothing had been committed for longer than the commit window (a frame then commits at once)."""
    with g.turn.lock:
        g.window.taken_at = float("-inf")


def test_a_frame_delivered_while_the_core_sleeps_is_handled_on_the_radios_thread(
        core: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    names = wakeups(core, monkeypatch)
    quiet(core)
    core.on_uplinks(frame(core, "rain", 1))
    # Decoded, committed and published before on_uplinks returned, on the caller's thread (after a quiet window).
    assert names == [threading.current_thread().name] and readings(core, "telemetry")
    # Telemetry within the window of that commit waits for the window's end undecoded: the core's thread (told once
    # that its deadline moved) decodes, commits and publishes it then.
    core.on_uplinks(frame(core, "weather", 1))
    assert names == [threading.current_thread().name] and core.turn.gathered == 1
    assert core.stats.counters["frames.ok"] == 1
    assert wait_until(lambda: len(readings(core, "telemetry")) == 2, 2)
    assert names[1:] == ["core"]


def test_an_sos_delivered_while_the_core_sleeps_is_journaled_and_published_before_the_radio_goes_on(
        core: Gateway) -> None:
    core.on_uplinks(frame(core, "rain", 1))  # telemetry waiting in the window
    core.on_uplinks(frame(core, "sos", 0))
    [sos] = readings(core, "sos")
    assert sos["kind"] == "sos"
    assert [json.loads(b)["kind"] for _, b in core.journal.pending(SOS, after_seq=0, limit=10)] == ["sos"]


def test_frames_that_find_the_core_busy_wait_in_order(core: Gateway) -> None:
    with core.turn.lock:  # the core (or another radio) is at work
        for i in range(5):
            core.on_uplinks(frame(core, "weather", i))
        assert len(core.turn.frames) == 5
    for i in range(5, 200):  # some handled on this thread, some waiting for the core's thread
        core.on_uplinks(frame(core, "weather", i))
    assert wait_until(lambda: core.stats.counters["frames.ok"] == 200, 5), core.stats.counters
    assert core.stats.counters["frames.duplicate"] == 0  # a counter behind the last accepted one would be


def test_a_telemetry_puback_waits_for_the_next_frame_and_an_sos_puback_wakes_the_core(
        core: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = core.link
    assert isinstance(fake, FakePublisher)
    core.on_uplinks(frame(core, "rain", 1))
    assert wait_until(lambda: fake.unacked, 2)
    names = wakeups(core, monkeypatch)
    fake.ack()
    assert len(core.turn.acks) == 1 and core.inbox.empty() and names == []
    quiet(core)
    core.on_uplinks(frame(core, "rain", 2))  # the next frame's wake-up takes it; its commit deletes the row
    assert not core.turn.acks
    assert wait_until(lambda: core.stats.counters["readings.acked"] == 1 and not core.outbox.acked, 2)
    core.on_uplinks(frame(core, "sos", 0))
    [sos_message] = [m for m in fake.unacked if m.topic.endswith("/readings/sos")]
    names.clear()
    fake.ack(sos_message)
    assert not core.turn.acks
    assert wait_until(lambda: names and names[0] == "core" and core.stats.counters["readings.acked"] == 2, 2)


def test_a_waiting_puback_is_taken_within_a_second_without_frames(core: Gateway) -> None:
    fake = core.link
    assert isinstance(fake, FakePublisher)
    core.on_uplinks(frame(core, "rain", 1))
    assert wait_until(lambda: fake.unacked, 2)
    fake.ack()
    assert len(core.turn.acks) == 1
    t = time.monotonic()
    assert wait_until(lambda: not core.turn.acks and not core.journal.pending(TELEMETRY, after_seq=0, limit=5), 3)
    assert time.monotonic() - t < 2.5  # ACK_FOLD_S (1 s) to take it, then its deletion waits up to 1 s more


def test_the_watchdog_is_fed_by_the_core_thread_while_nothing_arrives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pings: list[str] = []
    monkeypatch.setattr(systemd, "ping", lambda: pings.append(threading.current_thread().name) or True)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    g = running_core(tmp_path)
    try:
        assert wait_until(lambda: pings.count("core") >= 4, 3)
    finally:
        g.stop()


def test_a_bug_in_a_wakeup_on_the_radios_thread_is_counted_and_the_radio_goes_on(
        core: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(**kw):
        raise RuntimeError("bug")

    monkeypatch.setattr(core.state, "update", boom)
    quiet(core)  # the frame is handled at once, on this thread
    core.on_uplinks(frame(core, "rain", 1))  # must not raise into the radio's thread
    assert core.stats.counters["core.internal_error"] == 1


def test_stop_is_prompt_and_commits_what_waits(core: Gateway) -> None:
    core.on_uplinks(frame(core, "rain", 1))
    t = time.monotonic()
    core.stop()
    assert time.monotonic() - t < 2.0
    assert not core_thread_alive()
    assert core.stats.counters["readings.journaled"] >= 1
    core.on_uplinks(frame(core, "rain", 2))  # after the stop: left in memory, never handled on this thread
    assert core.turn.frames


def core_thread_alive() -> bool:
    return any(t.name == "core" and t.is_alive() for t in threading.enumerate())


def test_a_window_opened_by_two_radios_at_once_still_commits_at_its_end(core: Gateway) -> None:
    """Radio A opens the window and wakes the core's thread (Rearm); radio B's turn, in the same instant, takes
    that Rearm from the inbox: the core's thread must still wake at the window's end, not at its old deadline."""
    core.wake()
    assert wait_until(lambda: core.turn.wake_at - time.monotonic() > 5, 10)  # idle: the core sleeps long
    sys.setswitchinterval(5.0)  # this thread keeps the GIL from one frame to the next: the race made certain
    try:
        core.on_uplinks(frame(core, "rain", 1))
        core.on_uplinks(frame(core, "weather", 1))
    finally:
        sys.setswitchinterval(0.001)
    t = time.monotonic()
    assert wait_until(lambda: len(readings(core, "telemetry")) == 2, 5)
    assert time.monotonic() - t < 1.0  # the 250 ms window, not the core's old deadline


def test_stop_is_not_lost_when_a_frame_arrives_in_the_same_instant(core: Gateway) -> None:
    """stop()'s wake-up can be taken by a radio's turn that moves no deadline (a node's resent frame, only
    counted): the core's thread must still see it and end."""
    fake = core.link
    assert isinstance(fake, FakePublisher)
    resent = frame(core, "rain", 1)
    core.on_uplinks(resent)
    assert wait_until(lambda: fake.unacked, 2)
    fake.ack_all()
    assert wait_until(lambda: core.turn.wake_at - time.monotonic() > 5 and not core.outbox.inflight, 15)
    sys.setswitchinterval(5.0)  # this thread keeps the GIL from stop() to the frame: the race made certain
    try:
        core.stop(timeout=0)  # what SIGTERM's thread does: the flag and a wake-up, no wait
        core.on_uplinks(resent)
    finally:
        sys.setswitchinterval(0.001)
    assert wait_until(lambda: not core_thread_alive(), 3)


def test_a_puback_that_makes_room_while_a_radio_commits_sends_the_next_batch_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The link judges a PUBACK may wait (nothing to send); before it is kept for the core, a radio's turn commits a
    reading that only this PUBACK's free slot lets out (a window of one message): it must go at once, not after
    ACK_FOLD_S."""
    g = running_core(tmp_path, window_ms=0, inflight_window=1)
    fake = g.link
    assert isinstance(fake, FakePublisher)
    try:
        g.on_uplinks(frame(g, "rain", 1))
        assert wait_until(lambda: len(fake.unacked) == 1, 2)
        time.sleep(0.3)  # the core's thread sleeps
        judged = g.outbox.ack_may_wait

        def racing(ack):
            may = judged(ack)
            g.on_uplinks(frame(g, "weather", 1))  # the window (one message) is full: this reading waits for room
            return may

        monkeypatch.setattr(g.outbox, "ack_may_wait", racing)
        t = time.monotonic()
        fake.ack()
        assert wait_until(lambda: len(fake.unacked) == 1 and fake.unacked[0].json()["readings"][0]["kind"] == "weather",
                          3)
        assert time.monotonic() - t < 0.5
    finally:
        g.stop()


def test_the_links_events_never_wait_for_the_cores_lock(core: Gateway) -> None:
    """paho reports a PUBACK holding its message lock, which a radio's turn holding the core's lock may wait for
    (tests/unit/test_mqtt_link_locks.py): reporting must not take the core's lock."""
    fake = core.link
    assert isinstance(fake, FakePublisher)
    core.on_uplinks(frame(core, "rain", 1))
    assert wait_until(lambda: fake.unacked, 2)
    done = threading.Event()
    with core.turn.lock:
        threading.Thread(target=lambda: (fake.ack(), done.set()), daemon=True).start()
        assert done.wait(2)


def test_a_journal_that_cannot_be_replaced_stops_the_agent_from_a_radios_thread(
        core: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal is found damaged and a new one cannot be made (the card went read-only): on a radio's thread
    too, the agent stops (systemd restarts it) instead of running on without a journal."""
    from agent.gateway import core as core_module
    from agent.gateway.journal import JournalCorrupt

    def damaged(**kwargs):
        raise JournalCorrupt("database disk image is malformed")

    def unwritable(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(core.journal, "commit", damaged)
    monkeypatch.setattr(core_module, "open_or_recover", unwritable)
    core.on_uplinks(frame(core, "sos", 0))  # committed at once, on this thread
    assert wait_until(lambda: not core_thread_alive(), 5)
    assert core.failure and "Read-only" in core.failure


def test_a_journal_that_cannot_be_replaced_stops_the_agent_from_the_cores_thread(
        core: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.gateway import core as core_module
    from agent.gateway.journal import JournalCorrupt

    def damaged(**kwargs):
        raise JournalCorrupt("database disk image is malformed")

    monkeypatch.setattr(core.journal, "commit", damaged)
    def unwritable(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(core_module, "open_or_recover", unwritable)
    with core.turn.lock:  # the frame waits for the core's thread
        core.on_uplinks(frame(core, "sos", 0))
    assert wait_until(lambda: not core_thread_alive(), 5)
    assert core.failure


def test_gathered_telemetry_is_journaled_at_the_windows_end_and_an_sos_never_waits_for_it(core: Gateway) -> None:
    """Telemetry within an open commit window waits undecoded (CoreTurn.gathered) and the core's thread journals it
    when the window closes; an SOS heard meanwhile is handled at once, after the telemetry heard before it (a node's
    frames keep their order), and a forged frame that claims to be telemetry only waits itself."""
    fake = core.link
    assert isinstance(fake, FakePublisher)
    quiet(core)
    core.on_uplinks(frame(core, "rain", 1))  # after a quiet window: committed at once, the window starts
    forged = frame(core, "weather", 1)
    forged = [Uplink("lora0", forged[0].payload[:-1] + bytes([forged[0].payload[-1] ^ 1]), -90, 5.0, None,
                     forged[0].received_us)]
    for uplinks in (frame(core, "rain", 2), forged, frame(core, "weather", 2)):
        core.on_uplinks(uplinks)
    with core.turn.lock:
        assert core.turn.gathered == 3 and core.stats.counters["frames.ok"] == 1
        assert 0 < core.turn.wake_at <= core.window.due  # the core's thread looks again when the window closes
    core.on_uplinks(frame(core, "sos", 0))
    # Published before on_uplinks returned, on this thread; the gathered frames decoded before it, in its wake-up.
    [sos] = readings(core, "sos")
    assert sos["kind"] == "sos" and core.turn.gathered == 0
    assert core.stats.counters["frames.ok"] == 4 and core.stats.counters["frames.bad_mic"] == 1
    assert {(2, "00000401"), (2, "00000601")} <= journaled(core)  # in the SOS's wake-up
    # Within a window of the SOS's commit: gathered again, journaled and published by the core at the window's end.
    for i in (3, 4):
        core.on_uplinks(frame(core, "rain", i))
    assert core.turn.gathered == 2
    t = time.monotonic()
    assert wait_until(lambda: len(readings(core, "telemetry")) == 5, 5)
    assert time.monotonic() - t < 1.0  # the 250 ms window, not a later deadline
    assert {(3, "00000401"), (4, "00000401")} <= journaled(core)


def journaled(g: Gateway) -> set[tuple[int, str]]:
    """(frame counter, node) of the telemetry readings in the journal."""
    return {(json.loads(b)["fcnt"], json.loads(b)["node"]) for _, b in g.journal.pending(TELEMETRY, after_seq=0,
                                                                                         limit=100)}


def test_gathered_telemetry_is_bounded(core: Gateway) -> None:
    """At most GATHERED_MAX frames wait undecoded (what an SOS may have to decode first); the next one is handled
    at once, with them."""
    quiet(core)
    core.on_uplinks(frame(core, "weather", 0))
    for i in range(1, GATHERED_MAX + 1):
        core.on_uplinks(frame(core, "weather", i))
    assert core.turn.gathered == GATHERED_MAX and core.stats.counters["frames.ok"] == 1
    core.on_uplinks(frame(core, "weather", GATHERED_MAX + 1))
    assert core.turn.gathered == 0 and core.stats.counters["frames.ok"] == GATHERED_MAX + 2


def test_only_frames_that_say_telemetry_and_ask_no_receipt_are_gathered() -> None:
    rain, sos = FieldNode(0x00000401, "rain"), FieldNode(0x00000101, "sos")

    def chunk(*payloads: bytes) -> list[Uplink]:
        return [Uplink("lora0", p, -90, 5.0, None, 0) for p in payloads]

    telemetry = rain.frame(default_values("rain", 1))
    assert gatherable(chunk(telemetry, telemetry))
    assert not gatherable(chunk(telemetry, sos.frame(default_values("sos", 1))))  # an SOS in the chunk: at once
    assert not gatherable(chunk(rain.frame(default_values("rain", 2), receipt=True)))  # its node waits a receipt
    assert not gatherable(chunk(telemetry[:9]))  # too short to say: decoded (and refused) at once


def test_gathered_frames_decoded_before_the_windows_end_still_wait_for_it(tmp_path: Path) -> None:
    """A wake-up before the window's end (a timer, a PUBACK) decodes the gathered frames; they still wait for the
    window's commit, even if the last commit is by then older than a window (the window is not quiet)."""
    g = running_core(tmp_path, window_ms=1000)
    try:
        quiet(g)
        g.on_uplinks(frame(g, "rain", 1))  # committed at once
        g.on_uplinks(frame(g, "rain", 2))  # gathered for the window's end, a second from now
        with g.turn.lock:
            assert g.turn.gathered == 1
            g.window.taken_at -= 5.0  # as if the last commit were long ago
        g.wake()
        assert wait_until(lambda: g.stats.counters["frames.ok"] == 2, 2)
        with g.turn.lock:
            assert len(g.window.entries) == 1 and (2, "00000401") not in journaled(g)
        assert wait_until(lambda: (2, "00000401") in journaled(g), 3)
    finally:
        g.stop()


def test_gathered_frames_wait_at_most_a_window_when_acknowledgements_held_it_open_longer(core: Gateway) -> None:
    """Acknowledgements alone may wait up to ACK_FOLD_S (1 s); a frame gathered meanwhile brings the window's end to
    at most a window (250 ms) from its arrival, as a decoded frame would (a power cut loses at most a window)."""
    with core.turn.lock:
        now = time.monotonic()
        core.window.taken_at = now  # just committed: not quiet
        core.window.wait([], [], held=0, more_waits=False, now=now)  # only acknowledgements wait, up to 1 s
        assert core.window.due > now + 0.9
    core.on_uplinks(frame(core, "rain", 1))
    with core.turn.lock:
        assert core.turn.gathered == 1 and core.window.due <= time.monotonic() + WINDOW_MS / 1000
