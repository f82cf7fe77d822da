"""`denen run` as systemd runs it: notifications on a datagram socket the test owns, stderr into a stream socket
named by JOURNAL_STREAM (as journald's is), a simulated RAK3172 on a pty and a real Mosquitto that goes away."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.dev.devbroker import Mosquitto
from tests.support.field import NODES, FieldNode, config_text, default_values, start_sim, wait_configured, write_config
from tests.support.polling import wait_until

pytestmark = pytest.mark.broker

REPO = Path(__file__).resolve().parents[2]
_STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


class Notifications:
    """systemd's side of sd_notify: a datagram socket, every message kept in order of arrival."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def _drain(self) -> None:
        try:
            while True:
                self.messages.append(self.sock.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            pass

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> str | None:
        """The first message (already received or arriving within ``timeout`` s) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for m in self.messages[seen:]:
                if predicate(m):
                    return m
            seen = len(self.messages)
            if time.monotonic() >= deadline:
                return None
            self._drain()

    def statuses(self) -> list[str]:
        self._drain()
        return [m.removeprefix("STATUS=") for m in self.messages if m.startswith("STATUS=")]

    def close(self) -> None:
        self.sock.close()


class StreamOutput:
    """The read end of the agent's stderr and stdout: a stream socket like journald's, read in a thread."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        st = os.fstat(self.theirs.fileno())
        self.stream_id = f"{st.st_dev}:{st.st_ino}"
        self.data = bytearray()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while chunk := self.ours.recv(65536):
            self.data += chunk

    def lines(self) -> list[str]:
        return bytes(self.data).decode(errors="replace").splitlines()

    def close(self) -> None:
        self.theirs.close()
        self._thread.join(10)
        self.ours.close()


@pytest.fixture
def rig(tmp_path: Path, broker: Mosquitto) -> Iterator[dict]:
    nodes = [FieldNode(n.node_id, n.kind) for n in NODES]
    sim = start_sim(tmp_path)
    cfg = write_config(tmp_path / "gateway.yaml", config_text(port=sim.path, mqtt_port=broker.port,
                                                             journal=tmp_path / "journal.db", nodes=nodes))
    procs: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str], out: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "-c", str(cfg)], cwd=REPO, env=env,
                                stdout=out, stderr=out)
        procs.append(proc)
        return proc

    yield {"sim": sim, "cfg": cfg, "broker": broker, "nodes": {n.kind: n for n in nodes}, "start": start}
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
    sim.stop()


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID")}
    return env


def test_ready_status_and_journald_priorities(rig: dict, tmp_path: Path) -> None:
    sim, broker, nodes = rig["sim"], rig["broker"], rig["nodes"]
    notes = Notifications(tmp_path / "notify")
    out = StreamOutput()
    try:
        env = {**_base_env(), "NOTIFY_SOCKET": str(notes.path), "JOURNAL_STREAM": out.stream_id,
               "WATCHDOG_USEC": "4000000"}
        proc = rig["start"](env, out.theirs.fileno())
        assert notes.wait_for(lambda m: m == "READY=1", 60), (notes.messages, out.lines())
        assert wait_configured(sim, timeout=30)
        # The core feeds the watchdog (every half interval at the latest).
        assert notes.wait_for(lambda m: m == "WATCHDOG=1", 10), notes.messages

        # Two of the five configured nodes heard, the broker up: said within the status limit (5 s).
        for kind in ("rain", "weather"):
            assert sim.inject_uplink(nodes[kind].frame(default_values(kind, 1)))
        up = notes.wait_for(lambda m: "2/5 nodes heard" in m and "broker ok" in m, 30)
        assert up is not None, notes.statuses()
        assert re.fullmatch(r"STATUS=2/5 nodes heard, backlog \d+, broker ok \d+ (s|min)(, clock .*)?", up), up

        # The broker goes away: at once "offline", then the readings journaled meanwhile are counted as held.
        broker.stop()
        assert notes.wait_for(lambda m: m.startswith("STATUS=offline "), 30), notes.statuses()
        for i in range(2, 5):
            assert sim.inject_uplink(nodes["rain"].frame(default_values("rain", i)))

        def held(m: str) -> bool:
            found = re.match(r"STATUS=offline \d+ (s|min), ([\d,]+) readings held, 2/5 nodes heard", m)
            return found is not None and int(found.group(2).replace(",", "")) >= 3

        assert notes.wait_for(held, 30), notes.statuses()

        broker.start()
        assert notes.wait_for(lambda m: m.startswith("STATUS=2/5 nodes heard, backlog "), 60), notes.statuses()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert notes.wait_for(lambda m: m == "STOPPING=1", 5), notes.messages
    finally:
        notes.close()
        out.close()

    lines = [line for line in out.lines() if line]
    assert lines, "the agent wrote nothing"
    bad = [line for line in lines if not re.match(r"<[2-7]>", line)]
    assert not bad, bad
    assert any(line.startswith("<6>INFO ") and "running" in line for line in lines), lines
    assert any(line.startswith("<4>WARNING ") and "MQTT session" in line for line in lines), lines
    stamped = [line for line in lines if _STAMP.search(line[:40])]
    assert not stamped, stamped  # journald stamps each line itself


def test_without_journal_stream_lines_are_plain_with_timestamps(rig: dict, tmp_path: Path) -> None:
    sim = rig["sim"]
    log = tmp_path / "agent.log"
    with log.open("wb") as f:
        proc = rig["start"](_base_env(), f.fileno())
    assert wait_configured(sim, timeout=60), log.read_text()
    assert wait_until(lambda: "running" in log.read_text(), 30), log.read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    lines = [line for line in log.read_text().splitlines() if line]
    assert lines and all(_STAMP.match(line) and not line.startswith("<") for line in lines), lines
    assert any(" INFO " in line and "running" in line for line in lines), lines
