"""The parts every fault scenario drives: the agent and the bridge as processes, a wire recorder on the simulated
module, the journal as `denen status` reads it, and InfluxDB counted by (node, frame counter).

Everything runs as users run it: ``python -m agent.cli run -c CONFIG`` and ``python -m agent.cli bridge -c ...`` in
their own processes (so SIGKILL is a real power cut of the process), the simulated RAK3172 on a real pty, a real
Mosquitto and a real InfluxDB 1.6.7.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.dev.devbroker import Mosquitto
from agent.tools import status as agent_status
from drivers.sim.rak3172 import SimRak3172
from tests.support.broker import Collector
from tests.support.field import FieldNode, write_config
from tests.support.gateway_config import gateway_yaml
from tests.support.influx import InfluxDB1
from tests.support.paths import REPO
from tests.support.polling import wait_until
from tests.support.registry import write_registry

GATEWAY = "gw-fault-01"
DB = "denen"
#: Measurements the bridge writes node readings to (the reading's kind), README "InfluxDB schema".
NODE_MEASUREMENTS = ("sos", "trap", "water_level", "rain", "tilt", "weather", "heartbeat")
FULL = os.environ.get("DENEN_FAULTS_FULL") == "1"

Key = tuple[str, int]  # (node id as 8 lowercase hex digits, frame counter): a reading's identity


def sized(ci: int, full: int) -> int:
    """A figure of the CI variant, or of the full variant when ``DENEN_FAULTS_FULL=1``."""
    return full if FULL else ci


# -- configs ------------------------------------------------------------------------------------------------------
def fault_name(node: Any) -> str:
    """``<kind>-<low 16 bits of the id, hex>``: node names of the fault rig."""
    return f"{node.kind.replace('_', '-')}-{node.node_id & 0xFFFF:x}"


def gateway_config(*, batch: int = 200, window: int = 8, interval_s: int = 600, **kw: Any) -> str:
    """A gateway config for one simulated RAK3172 and keyed nodes (keys as in tests.support.field): the fault rig's
    gateway, site and names on :func:`tests.support.gateway_config.gateway_yaml`, which takes the other arguments.

    DENEN_FAULTS_COMMIT_WINDOW_MS sets journal.commit_window_ms (else the agent's default), to measure what a power
    cut loses with and without the commit window.
    """
    window_ms = os.environ.get("DENEN_FAULTS_COMMIT_WINDOW_MS", "")
    return gateway_yaml(**{"gateway": GATEWAY, "site": "faultville", "name": fault_name, "batch": batch,
                           "window": window, "interval_s": interval_s,
                           "commit_window_ms": int(window_ms) if window_ms else None, **kw})


def bridge_config(*, broker: Mosquitto, influx: InfluxDB1, dead_letter: Path, client_id: str = "fault-bridge-1"
                  ) -> str:
    """A ``denen bridge`` config: persistent shared subscription on ``broker``, v1 sink into ``influx``; the test
    gateways registered with their site (tests.support.registry)."""
    registry = write_registry(Path(dead_letter).parent / "gateways.yaml", {GATEWAY: "faultville"})
    return f"""mqtt:
  host: {broker.host}
  port: {broker.port}
  client_id: {client_id}
  group: denen-bridge
  topic_prefix: denen/v1
  reconnect_min_s: 0.1
  reconnect_max_s: 0.5
sink:
  type: v1
  url: {influx.url}
  database: {DB}
  timeout_s: 5
  retry_min_s: 0.05
  retry_max_s: 0.5
batch:
  max_lines: 5000
  max_messages: 500
  max_wait_ms: 100
dead_letter:
  path: {dead_letter}
gateways:
  file: {registry}
log:
  level: info
"""


def write_gateway(tmp: Path, *, sim: SimRak3172, broker: Mosquitto, journal: Path, nodes: Iterable[FieldNode],
                  config: Callable[..., str] = gateway_config, **kw: Any) -> Path:
    """``tmp/gateway.yaml`` for ``nodes`` on the simulated module and ``broker``, owner-only (it holds node keys);
    ``config`` builds the text (default :func:`gateway_config`, which takes ``kw``)."""
    text = config(port=sim.path, mqtt_port=broker.port, journal=journal, nodes=nodes, **kw)
    return write_config(tmp / "gateway.yaml", text)


def write_bridge(tmp: Path, *, broker: Mosquitto, influx: InfluxDB1) -> Path:
    """``tmp/bridge.yaml``: :func:`bridge_config` with its dead-letter store at ``tmp/dead.db``."""
    return write_config(tmp / "bridge.yaml", bridge_config(broker=broker, influx=influx, dead_letter=tmp / "dead.db"))


def readings_collector(broker: Mosquitto, client_id: str) -> Collector:
    """A persistent subscriber to every gateway's readings: it misses nothing published while it is away."""
    return Collector(broker, "denen/v1/+/readings/#", client_id=client_id, persistent=True)


# -- processes ------------------------------------------------------------------------------------------------
class _Process:
    """``python -m agent.cli <args>`` with its output appended to one log file across restarts."""

    args: tuple[str, ...] = ()

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._mark = 0

    def start(self) -> None:
        self._mark = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", *self.args, "-c", str(self.config)],
                                         cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.starts += 1

    def kill9(self) -> None:
        """SIGKILL and reap: the process dies between any two instructions, as at a power cut."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """Teardown: whatever state it is in, it is gone afterwards."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def diagnose(self) -> str:
        """For a failure message: is it alive, its kernel state, and its threads' stacks (if py-spy is installed)."""
        if self.proc is None:
            return "never started"
        if self.proc.poll() is not None:
            return f"exited with {self.proc.returncode}; log tail:\n{self.run_log()[-2000:]}"
        try:
            state = next(ln for ln in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
                         if ln.startswith("State:"))
        except (OSError, StopIteration):
            state = "State: ?"
        dump = ""
        if shutil.which("py-spy"):
            out = subprocess.run(["py-spy", "dump", "--pid", str(self.proc.pid)], capture_output=True, text=True,
                                 timeout=30)
            dump = out.stdout or out.stderr
        return f"pid {self.proc.pid} {state}\n{dump}\nlog tail:\n{self.run_log()[-2000:]}"

    def run_log(self) -> str:
        """Output of the current run only."""
        return self.log.read_bytes()[self._mark:].decode(errors="replace") if self.log.exists() else ""

    def full_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class AgentProcess(_Process):
    """``denen run -c CONFIG``."""

    args = ("run",)


class BridgeProcess(_Process):
    """``denen bridge -c CONFIG``; :meth:`start` returns once it has subscribed."""

    args = ("bridge",)

    def start(self, timeout: float = 20.0) -> None:  # type: ignore[override]
        super().start()
        assert wait_until(lambda: self.subscriptions() or not self.alive, timeout), self.run_log()
        assert self.alive, self.run_log()

    def subscriptions(self) -> int:
        """How often the current run has (re)subscribed: once per connection to the broker."""
        return self.run_log().count("MQTT: subscribed")

    def wait_resubscribed(self, before: int, timeout: float = 20.0) -> None:
        """Wait until the bridge has subscribed again after ``before`` subscriptions (e.g. after a broker restart)."""
        assert wait_until(lambda: self.subscriptions() > before, timeout), self.run_log()[-3000:]


def denen_status_json(config: Path) -> dict[str, Any]:
    """``denen status -c CONFIG --json``, through the command line as an operator runs it."""
    out = subprocess.run([sys.executable, "-m", "agent.cli", "status", "-c", str(config), "--json"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def journal_status(journal: Path) -> dict[str, Any]:
    """What ``denen status --json`` shows, read in-process (same code, read-only connection): cheap to poll."""
    return agent_status.collect(str(journal))


def last_fcnt(journal: Path) -> dict[str, int]:
    """The replay window per node as the journal holds it durably: the highest frame counter committed per node.

    The core writes a node's ``last_fcnt`` in the same transaction as the reading that advanced it, so after a
    crash this is exactly the newest committed reading of each node. No journal yet (an agent killed before it
    created one): nothing committed.
    """
    if not journal.exists():
        return {}
    return {n["node"]: n["last_fcnt"] for n in journal_status(journal)["nodes"] if n["last_fcnt"] is not None}


# -- what the module put on the wire --------------------------------------------------------------------------------
_RX_LINE = re.compile(rb"\+EVT:RXP2P:-?\d+:-?\d+:([0-9A-F]+)\r\n")


def frame_key(payload: bytes) -> Key:
    """(node, fcnt) of a denen node frame: ``ver|flags (1) · node id (4) · frame counter (4) ...``."""
    return payload[1:5].hex(), int.from_bytes(payload[5:9], "big")


class WireRecorder:
    """Records every RX event the simulated module actually wrote into the pty, in order.

    It wraps the module's port ``write``, which the simulator calls only for bytes it really puts on the wire: a
    line the module drops because the host stopped reading (a real UART overruns the same way) never reaches it.
    Use it with the line faults off (each RX line is then exactly one write).
    """

    def __init__(self, sim: SimRak3172) -> None:
        self.keys: list[Key] = []
        self.payloads: list[bytes] = []  # the whole frames, for tests whose frames share (node, fcnt): forgeries
        self._lock = threading.Lock()
        port = sim.port
        original = port.write

        def write(data: bytes) -> None:
            original(data)
            found = [bytes.fromhex(h.decode()) for h in _RX_LINE.findall(data)]
            if found:
                with self._lock:
                    self.payloads.extend(found)
                    self.keys.extend(frame_key(p) for p in found)

        port.write = write  # type: ignore[method-assign]

    def __len__(self) -> int:
        with self._lock:
            return len(self.keys)

    def snapshot(self) -> list[Key]:
        with self._lock:
            return list(self.keys)

    def payloads_snapshot(self) -> list[bytes]:
        with self._lock:
            return list(self.payloads)


class LineRecorder:
    """Records, per RX line the module sends, whether it went out whole or was cut short by a line fault.

    It wraps the module's ``faults.apply`` (the one place every line passes through): ``intact`` lists frames whose
    complete line was among the chunks written, ``truncated`` those whose line was cut (the frame is lost on the
    wire, as with a brown-out mid-line). Splitting happens later, in the port, and keeps lines whole.
    """

    def __init__(self, sim: SimRak3172) -> None:
        self.intact: list[Key] = []
        self.truncated: list[Key] = []
        self.duplicated: list[Key] = []
        faults = sim.faults
        original = faults.apply

        def apply(line: bytes, *, terminator: bytes = b"\r\n") -> list[bytes]:
            chunks = original(line, terminator=terminator)
            m = _RX_LINE.fullmatch(line)
            if m is not None:
                key = frame_key(bytes.fromhex(m.group(1).decode()))
                whole = sum(1 for c in chunks if c == line)
                if whole:
                    self.intact.append(key)
                    if whole > 1:
                        self.duplicated.append(key)
                elif chunks:
                    self.truncated.append(key)
            return chunks

        faults.apply = apply  # type: ignore[method-assign]


# -- a paced feeder ---------------------------------------------------------------------------------------------------
@dataclass
class Feeder:
    """Injects frames from a thread at ``rate_hz`` while resumed; :meth:`pause` returns once no injection runs.

    Attributes:
        offered: frames handed to the module (inject_uplink returned True: the radio was listening).
        refused: frames the module did not take (radio not listening: rebooting, reconfiguring, unpowered).
    """

    sim: SimRak3172
    make: Callable[[int], bytes]  # i -> frame bytes (the i-th frame of the run)
    rate_hz: float
    offered: int = 0
    refused: int = 0
    _i: int = 0
    _run: threading.Event = field(default_factory=threading.Event)
    _idle: threading.Event = field(default_factory=threading.Event)
    _stop: bool = False
    _thread: threading.Thread | None = None
    error: BaseException | None = None

    def start(self) -> None:
        self._idle.set()
        self._thread = threading.Thread(target=self._loop, name="feeder", daemon=True)
        self._thread.start()

    def resume(self) -> None:
        self._idle.clear()
        self._run.set()

    def pause(self) -> None:
        self._run.clear()
        assert self._idle.wait(10), "feeder did not pause"

    def close(self) -> None:
        self._stop = True
        self._run.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        period = 1.0 / self.rate_hz
        next_at = time.monotonic()
        try:
            while not self._stop:
                if not self._run.is_set():
                    self._idle.set()
                    self._run.wait()
                    next_at = time.monotonic()
                    continue
                self._idle.clear()
                if not self._run.is_set():  # paused between the check and the clear: re-check before injecting
                    continue
                frame = self.make(self._i)
                self._i += 1
                if self.sim.inject_uplink(frame):
                    self.offered += 1
                else:
                    self.refused += 1
                next_at += period
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                elif delay < -1.0:
                    next_at = time.monotonic()  # fell behind (machine busy): do not burst to catch up
        except BaseException as exc:  # thread top level: the test reads it  # noqa: BLE001
            self.error = exc
        finally:
            self._idle.set()


# -- InfluxDB by identity -------------------------------------------------------------------------------------------
def influx_keys(influx: InfluxDB1) -> Counter[Key]:
    """How many points InfluxDB holds per (node, fcnt) across the node measurements.

    InfluxDB overwrites a point with the same measurement, tags and timestamp, so a redelivered reading (same
    identity, same edge timestamp) stays one point; a reading that entered the journal twice (a new timestamp)
    would show up here as 2.
    """
    found: Counter[Key] = Counter()
    measurements = ",".join(f'"{m}"' for m in NODE_MEASUREMENTS)
    for row in influx.rows(f'SELECT "fcnt" FROM {measurements} WHERE "gateway" = \'{GATEWAY}\' GROUP BY "node"', DB):
        found[(row["node"], int(row["fcnt"]))] += 1
    return found


def influx_total(influx: InfluxDB1) -> int:
    return sum(influx.count(m, "fcnt", DB) for m in NODE_MEASUREMENTS)


def readings_in(messages: list[tuple[str, bytes, bool]]) -> list[tuple[str, dict[str, Any]]]:
    """(lane, reading) for every reading in the collected batch messages, in arrival order."""
    out = []
    for topic, payload, _ in messages:
        if "/readings/" in topic:
            doc = json.loads(payload)
            out.extend((doc["lane"], r) for r in doc["readings"])
    return out


def journaled_once(readings: Iterable[dict[str, Any]]) -> list[Key]:
    """(node, fcnt) of node readings that arrived with two different edge timestamps.

    MQTT delivery is at least once: after a broker restart or a reconnect the same message may come again, and the
    README's contract makes that harmless (same ``id``, same ``ts_us``: an overwrite). A reading that entered the
    journal twice would carry a second ``ts_us``; that is the duplicate a consumer cannot undo.
    """
    stamps: dict[Key, set[int]] = {}
    for r in readings:
        if r["node"] != "gateway":
            stamps.setdefault((r["node"], r["fcnt"]), set()).add(r["ts_us"])
    return sorted(k for k, ts in stamps.items() if len(ts) > 1)
