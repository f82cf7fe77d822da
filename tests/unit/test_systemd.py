"""sd_notify against a real AF_UNIX datagram socket, as systemd listens for it."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest

from agent import systemd


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    systemd._reset_for_tests()


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket bound to a path, named in $NOTIFY_SOCKET like systemd does."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def _pending(sock: socket.socket) -> list[bytes]:
    """Every datagram already queued on the socket, without waiting."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096))
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(2.0)


def test_ready_status_stopping_arrive_as_datagrams(listener: socket.socket) -> None:
    assert systemd.ready()
    assert listener.recv(4096) == b"READY=1"
    assert systemd.status("3 radios up\n journal 0 unsent")
    assert listener.recv(4096) == b"STATUS=3 radios up  journal 0 unsent"  # one line, as systemctl shows it
    assert systemd.stopping()
    assert listener.recv(4096) == b"STOPPING=1"
    assert systemd.notify("READY=1\nSTATUS=multi")
    assert listener.recv(4096) == b"READY=1\nSTATUS=multi"


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"denen-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_without_notify_socket_everything_is_a_quiet_no_op() -> None:
    assert systemd.notify("READY=1") is False
    assert systemd.ready() is False
    assert systemd.ping() is False
    assert systemd.watchdog_interval_s() is None


def test_a_full_socket_queue_does_not_block_forever(listener: socket.socket,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody reads (systemd stalled): notify gives up after its timeout instead of hanging the core loop."""
    monkeypatch.setattr(systemd, "_SEND_TIMEOUT_S", 0.05)
    results = []
    while len(results) < 1000 and (not results or results[-1]):
        results.append(systemd.notify("STATUS=x"))
    assert results[0] is True
    assert results[-1] is False  # the queue filled up and the send timed out
    assert 2 <= len(results) < 1000


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert systemd.ready() is False


def test_watchdog_interval_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval_s() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval_s() == 30.0
    # Inherited by a child process: the watchdog belongs to the parent.
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_PID", "garbage")
    assert systemd.watchdog_interval_s() is None
    monkeypatch.delenv("WATCHDOG_PID")
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert systemd.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "abc")
    assert systemd.watchdog_interval_s() is None


def test_ping_sends_watchdog_and_throttles_to_a_quarter_interval(listener: socket.socket,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Without a watchdog there is nothing to ping.
    assert systemd.ping() is False
    assert _pending(listener) == []

    monkeypatch.setenv("WATCHDOG_USEC", "40000000")  # 40 s: pings closer than 10 s are dropped
    assert systemd.ping()
    assert listener.recv(4096) == b"WATCHDOG=1"
    for _ in range(50):  # a busy core loop
        assert systemd.ping()
    assert _pending(listener) == []

    # A short interval lets the next ping through once a quarter of it has passed.
    monkeypatch.setenv("WATCHDOG_USEC", "4000")  # 4 ms -> 1 ms throttle
    systemd._reset_for_tests()
    assert systemd.ping()
    assert listener.recv(4096) == b"WATCHDOG=1"
    # Read as we go: the socket queue holds only ~10 datagrams, like systemd's.
    calls = sent = 0
    t_end = time.monotonic() + 0.05
    while time.monotonic() < t_end:
        systemd.ping()
        calls += 1
        sent += len(_pending(listener))
    sent += len(_pending(listener))
    # About 50 ms / 1 ms: more than one, and far fewer than the calls.
    assert 2 <= sent <= 60 < calls


def test_status_line_sends_changes_at_most_every_interval(listener: socket.socket) -> None:
    line = systemd.StatusLine(min_interval_s=5.0)
    built = []

    def text() -> str:
        built.append(1)
        return f"{len(built)} built"

    assert line.update("a\nb", now=100.0)
    assert _pending(listener) == [b"STATUS=a b"]
    assert not line.update(text, now=101.0)  # within the interval: not even built
    assert built == [] and line.pending and line.next_at == 105.0
    assert line.update(text, now=105.0) and not line.pending
    assert _pending(listener) == [b"STATUS=1 built"]
    assert not line.update("1 built", now=111.0)  # unchanged: no datagram
    assert line.update("down", force=True, now=111.5)  # forced: at once
    assert not line.update("down", force=True, now=111.6)  # ...but never the same text twice
    assert _pending(listener) == [b"STATUS=down"]


def test_status_line_without_systemd_builds_but_sends_nothing() -> None:
    line = systemd.StatusLine()
    assert line.update("x") is False and line.text == "x"


# -- the gateway's STATUS= line ------------------------------------------------------------------------------


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Any]:
    from agent.config import parse_config
    from agent.gateway.core import Gateway
    from tests.support.field import NODES, FieldNode, config_text
    from tests.support.publisher import FakePublisher

    nodes = [FieldNode(n.node_id, n.kind) for n in NODES]
    # The broker is a fake: the tests connect it and give the PUBACKs themselves.
    g = Gateway(parse_config(config_text(port="loop://", mqtt_port=9, journal=tmp_path / "j.db", nodes=nodes,
                                      commit_window_ms=0)),
                publisher=FakePublisher(), radios=[])
    g.test_nodes = {n.kind: n for n in nodes}
    yield g
    g.journal.close()


def _uplinks(gw: Any, kind: str, first: int, n: int) -> list[Any]:
    from drivers.types import Uplink
    from tests.support.field import default_values

    node = gw.test_nodes[kind]
    return [Uplink("lora0", node.frame(default_values(kind, i)), -90, 5.0, None, time.time_ns() // 1000)
            for i in range(first, first + n)]


def _wake(gw: Any) -> None:
    """One pass of the core loop (Gateway.run): the wake-up, then the status line."""
    gw.step()


def _statuses(sock: socket.socket) -> list[str]:
    return [d.decode() for d in _pending(sock) if d.startswith(b"STATUS=")]


def test_gateway_status_tells_nodes_backlog_broker_and_sos(gw: Any, listener: socket.socket) -> None:
    from agent.gateway import health

    gw.update_status(force=True)
    assert _statuses(listener) == ["STATUS=broker not reached yet (0 s), 0 readings held, 0/5 nodes heard"]

    # Offline: readings are journaled and held.
    gw.on_uplinks(_uplinks(gw, "rain", 0, 30))
    _wake(gw)
    text = gw.status_text()
    assert text.startswith("broker not reached yet") and "30 readings held" in text and "1/5 nodes heard" in text

    # The broker comes up: sent at once, not after STATUS_MIN_S; the backlog is what is not yet acknowledged.
    gw.link.connect()
    _wake(gw)
    [line] = _statuses(listener)
    assert line.startswith("STATUS=1/5 nodes heard, backlog ") and line.endswith(", broker ok 0 s"), line
    gw.link.ack_all()
    for _ in range(40):
        _wake(gw)
        gw.link.ack_all()
    _wake(gw)
    assert gw.status_text() == "1/5 nodes heard, backlog 0, broker ok 0 s"
    assert gw.backlog() == sum(gw.journal.depth().values()) == 0

    # An SOS: sent at once (it never waits for the rate limit), and first in the line.
    gw.status.line.next_at = time.monotonic() + 3600
    gw.on_uplinks(_uplinks(gw, "sos", 0, 1))
    _wake(gw)
    [line] = _statuses(listener)
    assert line.startswith("STATUS=SOS 1 unacknowledged, "), line
    assert "2/5 nodes heard" in line

    # The broker goes away: at once again, offline with the readings held.
    gw.link.disconnect("connection lost")
    gw.on_uplinks(_uplinks(gw, "rain", 30, 7))
    _wake(gw)
    [line] = _statuses(listener)
    assert line.startswith("STATUS=SOS 1 unacknowledged, offline 0 s, ") and "readings held" in line, line
    held = int(line.split("offline 0 s, ")[1].split(" readings held")[0].replace(",", ""))
    assert held == sum(gw.journal.depth().values()) >= 7
    assert health.duration(2 * 3600 + 60) == "2 h" and health.duration(600) == "10 min"
    assert health.duration(3 * 86400) == "3 d" and health.duration(-1) == "0 s"


def test_gateway_status_is_rate_limited_and_never_left_stale(gw: Any, listener: socket.socket,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy core (a wake-up per chunk of frames) sends at most one STATUS= per STATUS_MIN_S and builds the line
    no more often; a change held back by the limit is sent when the limit allows, without another frame."""
    from agent.gateway import health

    built = []
    real = gw.status_text
    monkeypatch.setattr(gw, "status_text", lambda now=None: (built.append(now), real(now))[1])
    gw.update_status(force=True)
    _pending(listener)
    t0 = time.monotonic()
    for i in range(50):  # 50 wake-ups, 20 frames each
        gw.on_uplinks(_uplinks(gw, "rain", i * 20, 20))
        _wake(gw)
    elapsed = time.monotonic() - t0
    assert len(built) <= 1 + 1 + elapsed / health.STATUS_MIN_S, (len(built), elapsed)
    sent = _statuses(listener)
    assert len(sent) <= len(built) - 1 + 1
    # The last change waits for the limit; the core's timeout wakes it then.
    assert gw.status.line.pending
    assert gw.wait_s() <= health.STATUS_MIN_S
    gw.status.line.next_at = time.monotonic()  # the limit has passed
    _wake(gw)
    [line] = _statuses(listener)
    assert "1,000 readings held" in line, line
    assert not gw.status.line.pending


def test_gateway_status_shows_a_failing_journal_and_the_backlog_survives_a_health_report(
        gw: Any, listener: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.errors import JournalError

    gw.on_uplinks(_uplinks(gw, "rain", 0, 5))
    _wake(gw)
    gw.health_reading()  # re-anchors the backlog on a real count
    assert "5 readings held" in gw.status_text()

    def failing(**kw: Any) -> None:
        raise JournalError("disk I/O error")

    monkeypatch.setattr(gw.journal, "commit", failing)
    gw.on_uplinks(_uplinks(gw, "rain", 5, 3))
    _wake(gw)
    text = gw.status_text()
    assert text.startswith("journal failing, 3 readings in memory, broker not reached yet"), text
    assert "5 readings held" in text  # only what is journaled
