"""A telemetry frame heard just after its commit window closed, while the core's thread is already waking to commit
the window, joins that commit (agent.gateway.inmemory.CommitWindow.gather with ``wake_at``): the radio's thread
does not take a turn of its own for it, and the core's wake-up is not left with nothing to do. An SOS is never
gathered: it is handled at once, as before."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.gateway import inmemory
from agent.gateway.core import Gateway
from agent.gateway.reading import TELEMETRY
from tests.support.field import default_values
from tests.unit.test_gateway_core import _capture, _gateway, up


def test_a_window_over_takes_a_frame_only_while_the_core_is_waking_to_close_it() -> None:
    w = inmemory.CommitWindow(0.25)
    w.take([], [], 10.0)
    assert w.gather(10.05) == pytest.approx(10.30)
    assert w.gather(10.31, wake_at=10.30) == pytest.approx(10.30)  # the core's thread is waking for it
    assert w.gather(10.31, wake_at=10.50) == 0.0  # the core sleeps on: the frame is handled at once
    assert w.gather(10.31) == 0.0


@pytest.fixture
def burst(tmp_path: Path) -> Gateway:
    """A core inside a burst (each frame joins the window), running: a radio's frames are taken inline."""
    g = _gateway(tmp_path, 250)
    g.window.taken_at = time.monotonic() + 3600
    g.turn.inline = True
    yield g
    g.journal.close()


def _telemetry(published: list[tuple[str, dict, float]]) -> list[int]:
    return [r["fcnt"] for topic, body, _ in published if topic.endswith("/readings/telemetry")
            for r in body["readings"]]


def test_a_frame_after_the_windows_end_joins_the_commit_the_core_is_waking_for(burst: Gateway) -> None:
    published = _capture(burst)
    rain = burst.test_nodes["rain"]  # type: ignore[attr-defined]
    burst.on_uplinks([up(rain.frame(default_values("rain", 1)))])
    assert burst.turn.gathered == 1
    now = time.monotonic()
    burst.window.due, burst.turn.wake_at = now - 0.002, now - 0.002  # over, and the core's timer has fired
    burst.on_uplinks([up(rain.frame(default_values("rain", 2)))])
    # Left for the core: nothing decoded, journaled or published on the radio's thread.
    assert burst.turn.gathered == 2 and burst.stats.counters.get("frames.ok", 0) == 0 and not _telemetry(published)
    burst.step()  # the core's wake-up
    assert sorted(_telemetry(published)) == [1, 2]
    assert len(burst.journal.pending(TELEMETRY, after_seq=0, limit=10)) == 2


def test_a_frame_after_the_windows_end_is_handled_at_once_while_the_core_sleeps_on(burst: Gateway) -> None:
    published = _capture(burst)
    rain = burst.test_nodes["rain"]  # type: ignore[attr-defined]
    burst.on_uplinks([up(rain.frame(default_values("rain", 1)))])
    now = time.monotonic()
    burst.window.due, burst.turn.wake_at = now - 0.002, now + 10.0  # over, but the core's thread is not waking
    burst.on_uplinks([up(rain.frame(default_values("rain", 2)))])
    assert burst.turn.gathered == 0 and sorted(_telemetry(published)) == [1, 2]  # on this thread, at once


def test_an_sos_after_the_windows_end_is_never_left_for_the_core(burst: Gateway) -> None:
    published = _capture(burst)
    rain, sos = burst.test_nodes["rain"], burst.test_nodes["sos"]  # type: ignore[attr-defined]
    burst.on_uplinks([up(rain.frame(default_values("rain", 1)))])
    now = time.monotonic()
    burst.window.due, burst.turn.wake_at = now - 0.002, now - 0.002
    burst.on_uplinks([up(sos.frame(default_values("sos", 1)))])
    assert burst.turn.gathered == 0 and any(topic.endswith("/readings/sos") for topic, _, _ in published)
