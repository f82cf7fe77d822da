"""sd_notify against a real AF_UNIX datagram socket, as systemd listens for it."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
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
