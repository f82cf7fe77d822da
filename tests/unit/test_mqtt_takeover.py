"""The MQTT link's answer to a session taken over by another client with its client id: the backoff schedule, and
the one log line, against a stand-in broker that sends DISCONNECT with reason 0x8E (Mosquitto 2.0.11, the broker the
integration tests run, closes the old connection without one: tests/integration/test_duplicate_gateway.py)."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.gateway.events import Disconnected, Event
from agent.gateway.publisher import SESSION_TAKEN_OVER, MqttLink, TakeoverBackoff


def test_takeovers_double_the_wait_up_to_five_minutes() -> None:
    b = TakeoverBackoff()
    waits = [b.session_ended(lived_s=1.0, taken_over=True, lost=False) for _ in range(9)]
    assert waits == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0]


def test_a_stable_session_resets_the_backoff() -> None:
    b = TakeoverBackoff(stable_s=180.0)
    for _ in range(4):
        b.session_ended(lived_s=30.0, taken_over=True, lost=False)
    assert b.level == 4
    # Held the session for three minutes, then taken over again: back to the first wait.
    assert b.session_ended(lived_s=180.0, taken_over=True, lost=False) == 5.0
    # A stable session that ends in an ordinary loss: no backoff at all.
    assert b.session_ended(lived_s=600.0, taken_over=False, lost=True) is None
    assert b.level == 0


def test_one_ordinary_drop_never_delays_the_reconnect() -> None:
    b = TakeoverBackoff(short_s=10.0, suspect_after=2)
    # A working session lost (network, broker restart): the ordinary reconnect delay applies, every time.
    for _ in range(5):
        assert b.session_ended(lived_s=3600.0, taken_over=False, lost=True) is None
    # One short session lost: still ordinary.
    assert b.session_ended(lived_s=2.0, taken_over=False, lost=True) is None
    # A keepalive timeout (lost=False) breaks a streak: it is the network, not another client.
    assert b.session_ended(lived_s=2.0, taken_over=False, lost=False) is None
    assert b.session_ended(lived_s=2.0, taken_over=False, lost=True) is None
    assert b.level == 0


def test_a_failed_connect_between_short_sessions_means_a_restarting_broker() -> None:
    b = TakeoverBackoff(short_s=10.0, suspect_after=2)
    assert b.session_ended(lived_s=1.0, taken_over=False, lost=True) is None
    b.connect_failed()  # connection refused: the broker is restarting
    assert b.session_ended(lived_s=1.0, taken_over=False, lost=True) is None
    assert b.level == 0


def test_sessions_closed_by_the_broker_right_after_connecting_count_as_a_takeover() -> None:
    b = TakeoverBackoff(short_s=10.0, suspect_after=2)
    assert b.session_ended(lived_s=0.8, taken_over=False, lost=True) is None
    assert b.session_ended(lived_s=1.1, taken_over=False, lost=True) == 5.0
    # Backing off: the other gateway held the session meanwhile, so ours lives longer than short_s before it is
    # taken again; still the same pair, so the wait keeps doubling until a session is stable.
    assert b.session_ended(lived_s=25.0, taken_over=False, lost=True) == 10.0
    assert b.session_ended(lived_s=50.0, taken_over=False, lost=True) == 20.0
    assert b.session_ended(lived_s=200.0, taken_over=False, lost=True) is None
    assert b.level == 0


class _TakingOverBroker:
    """Accepts MQTT v5 connections; answers CONNECT with CONNACK, then DISCONNECT 0x8E with a reason string.

    Only what the link needs to see a takeover: it reads the CONNECT, ignores everything after it.
    """

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connects: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(4096)  # the CONNECT
                    self.connects.append(time.monotonic())
                    conn.sendall(bytes([0x20, 0x03, 0x00, 0x00, 0x00]))  # CONNACK: success, no properties
                    time.sleep(0.3)
                    said = b"client gw-dup connected from 192.0.2.7"
                    props = bytes([0x1F]) + len(said).to_bytes(2, "big") + said  # Reason String
                    body = bytes([SESSION_TAKEN_OVER, len(props)]) + props
                    conn.sendall(bytes([0xE0, len(body)]) + body)
                    time.sleep(0.2)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_the_link_names_the_cause_once_and_backs_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = _TakingOverBroker()
    cfg = parse_config(f"""
gateway: {{id: gw-dup, site: testville}}
journal: {{path: {tmp_path / 'j.db'}}}
mqtt: {{host: 127.0.0.1, port: {server.port}, reconnect_min_s: 0.2, reconnect_max_s: 1.0}}
radios: [{{name: lora0, driver: rak3172, port: "loop://"}}]
""")
    events: list[Event] = []
    link = MqttLink(cfg.mqtt, "gw-dup", events.append, version="test")
    # Short waits so that the test sees three sessions soon: 0.5 s, then 1 s.
    link.takeover = TakeoverBackoff(first_s=0.5, max_s=2.0)
    caplog.set_level(logging.INFO, logger="agent.gateway.publisher")
    link.start()
    try:
        deadline = time.monotonic() + 15
        while len(server.connects) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        link.stop()
        server.close()
    assert len(server.connects) >= 3
    gaps = [b - a for a, b in zip(server.connects, server.connects[1:])]
    # Each session lasts 0.3 s before the stand-in takes it over; then the link waits 0.5 s, then 1 s (±10 %),
    # where the ordinary reconnect would wait 0.2 s.
    assert gaps[0] >= 0.3 + 0.45 and gaps[1] >= 0.3 + 0.9, gaps
    lines = [r.getMessage() for r in caplog.records if "two gateways share gateway.id" in r.getMessage()]
    assert len(lines) == 1, lines  # rate-limited: one line, the rest counted
    line = lines[0]
    assert "client id 'denen-gw-dup'" in line and "session taken over" in line
    assert "192.0.2.7" in line  # what the broker said, where it says it
    assert re.search(r"waits 0\.[4-6] s before reconnecting", line), line  # 0.5 s ± 10 % jitter
    assert not [r for r in caplog.records if "MQTT: disconnected" in r.getMessage()]
    downs = [e for e in events if isinstance(e, Disconnected)]
    # Every session but the last ended before the next connect, taken over by the stand-in; the last one may end
    # with link.stop() before the stand-in's DISCONNECT, which is not a takeover.
    assert len(downs) >= 2 and all("taken over" in e.reason for e in downs[:len(server.connects) - 1]), downs
    assert link.takeover.level >= 2
