"""The outbox leaves its backlog batch to the next wake-up when the core is needed at once: after an SOS (for its
PUBACK) and when a radio delivered frames meanwhile (they may hold an SOS), never starving the backlog."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.gateway.core import Gateway
from drivers.types import Uplink
from tests.support.field import NODES, FieldNode, config_text, default_values
from tests.support.publisher import FakePublisher


@pytest.fixture
def gw(tmp_path: Path) -> Gateway:
    """A connected core that commits at every wake-up, with 2,000 rain readings journaled and one batch in flight."""
    nodes = [FieldNode(n.node_id, n.kind) for n in NODES]
    text = config_text(port="loop://", mqtt_port=9, journal=tmp_path / "j.db", nodes=nodes)
    text = text.replace("\n  quota_mb:", "\n  commit_window_ms: 0\n  quota_mb:", 1)
    g = Gateway(parse_config(text), publisher=FakePublisher(), radios=[])
    g.test_nodes = {n.kind: n for n in nodes}  # type: ignore[attr-defined]
    g.link.connect()  # type: ignore[attr-defined]
    rain = g.test_nodes["rain"]  # type: ignore[attr-defined]
    g.on_uplinks([up(rain.frame(default_values("rain", i))) for i in range(2000)])
    g.step()
    assert telemetry_sent(g) == 1
    yield g
    g.journal.close()


def up(payload: bytes) -> Uplink:
    return Uplink("lora0", payload, -90, 5.0, None, time.time_ns() // 1000)


def telemetry_sent(gw: Gateway) -> int:
    return len(gw.link.of("telemetry"))  # type: ignore[attr-defined]


def test_the_wake_up_of_an_sos_sends_no_backlog_batch_and_the_next_puback_resumes_the_drain(gw: Gateway) -> None:
    sos = gw.test_nodes["sos"]  # type: ignore[attr-defined]
    gw.on_uplinks([up(sos.frame(default_values("sos", 0)))])
    gw.step()
    assert len(gw.link.of("sos")) == 1  # type: ignore[attr-defined]
    assert telemetry_sent(gw) == 1  # the core is free at once for the SOS's PUBACK
    gw.link.ack()  # type: ignore[attr-defined]  # the telemetry batch's PUBACK
    gw.step()
    assert telemetry_sent(gw) == 2


def test_after_an_sos_with_nothing_in_flight_a_backlog_batch_still_goes(gw: Gateway) -> None:
    """No PUBACK is due to wake the core: a batch left here would wait for the next timer."""
    gw.outbox.publish(urgent=True, hold=False)
    assert telemetry_sent(gw) == 1  # a batch in flight: its PUBACK wakes the core
    gw.outbox.inflight.clear()
    gw.outbox.publish(urgent=True, hold=False)
    assert telemetry_sent(gw) == 2


def test_frames_waiting_defer_the_backlog_batch_once_never_twice_in_a_row(gw: Gateway) -> None:
    waiting = {"now": True}
    gw.outbox.frames_waiting = lambda: waiting["now"]
    sent = []
    for _ in range(4):  # frames wait at every wake-up (a radio delivering without pause)
        gw.step()
        sent.append(telemetry_sent(gw))
    assert sent == [1, 2, 2, 3]  # skipped, sent, skipped, sent: the backlog still drains
    waiting["now"] = False
    gw.step()
    gw.step()
    assert telemetry_sent(gw) == 5


def test_the_core_tells_its_outbox_of_frames_a_radio_left_waiting(gw: Gateway) -> None:
    """A radio that finds the core's lock taken leaves its frames in ``turn.frames``: the outbox sees them."""
    assert not gw.outbox.frames_waiting()
    rain = gw.test_nodes["rain"]  # type: ignore[attr-defined]
    gw.turn.frames.append([up(rain.frame(default_values("rain", 1)))])
    assert gw.outbox.frames_waiting()
    gw.step()
    assert not gw.outbox.frames_waiting()
