"""The hourly receipt budget holds across a restart, on real parts and real clocks.

Two levels. First, each "agent" is a separate Python process that opens the simulated RAK3172 (a real pty, driven
by the real RAK3172 driver through a RadioWorker), sends SOS receipts with a ReceiptSender under a 0.7 s per sliding
hour budget (the field report's figure), and hands its snapshot on as the journal would (JSON text in a file); the
next process restores it. Then end to end: ``denen run`` with a real Mosquitto (and mosquitto_sub standing in for
the bridge), SOS frames on the simulated module, the agent stopped (SIGTERM, or SIGKILL as a power cut) between
receipts and started again on the same journal. What went on air is what the simulated module saw, timed in this
process. Nothing is faked: the monotonic clock, CLOCK_BOOTTIME and the boot id are the machine's own.

Run as a module, this file is that agent process: ``python -m tests.integration.test_receipts_restart ARGS``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from drivers.airtime import time_on_air_ms
from drivers.codec.frame import build_receipt
from tests.support.agentproc import AgentProcess
from tests.support.field import (FieldNode, config_text, default_values, node_key, start_sim, wait_configured,
                                 write_config)
from tests.support.polling import wait_until
from tests.support.radio import radio_config

REPO = Path(__file__).resolve().parents[2]
KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
NODE = 0x00A1B2C3
BUDGET_S = 0.7  # receipts.max_per_hour_s in the field report
FREQUENCY_HZ = 922_400_000  # ch33: the channel group with an hourly budget
KEYED_S = time_on_air_ms(14, 9, 125) / 1000  # one keyed receipt at SF9/125 kHz: 164.9 ms; four fit in 0.7 s


# -- the agent process ------------------------------------------------------------------------------------------


class _Events:
    def on_uplinks(self, uplinks: list) -> None:
        pass

    def on_incident(self, radio: str, kind: str, detail: str) -> None:
        pass


def agent_main(argv: list[str]) -> int:
    """One agent life: restore (optional), request receipts, pump for a while, print the outcome as JSON."""
    from agent.gateway.receipt_airtime import ReceiptsConfig
    from agent.gateway.receipts import build_receipt_sender
    from drivers.radio import RadioWorker

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", required=True)
    parser.add_argument("--restore", default=None, help="file with the snapshot JSON text of the previous life")
    parser.add_argument("--counters", default="", help="SOS counters to send receipts for, comma separated")
    parser.add_argument("--pump-s", type=float, default=3.0, help="how long to keep pumping")
    args = parser.parse_args(argv)
    config = radio_config("lora0", "rak3172", port=args.port,
                          p2p={"frequency_hz": FREQUENCY_HZ, "spreading_factor": 9})
    worker = RadioWorker(config, _Events(), reopen_min_s=0.05, reopen_max_s=0.3, rng=random.Random(3))
    worker.start()
    try:
        deadline = time.monotonic() + 20.0
        while worker.state != "running":
            if time.monotonic() > deadline:
                raise SystemExit(f"radio never ran: {worker.state}")
            time.sleep(0.01)
        p = config.p2p
        sender = build_receipt_sender(ReceiptsConfig(max_per_hour_s=BUDGET_S), worker.transmit,
                                      frequency_hz=p.frequency_hz, sf=p.spreading_factor, bw_khz=p.bandwidth_khz,
                                      cr=p.coding_rate, preamble=p.preamble)
        assert sender is not None
        if args.restore:
            sender.restore(json.loads(Path(args.restore).read_text(encoding="utf-8")))
        restored_s = sender.budget.used_last_hour_s
        for counter in filter(None, args.counters.split(",")):
            sender.request(NODE, int(counter), KEY)
        # As the core's receipts thread: pump, sleep as long as pump says (here at most until the end), again.
        end = time.monotonic() + args.pump_s
        pumps = 0
        while True:
            wait = sender.pump()
            pumps += 1
            left = end - time.monotonic()
            if wait is None or left <= 0:
                break
            time.sleep(min(wait, left, 0.5))
        print(json.dumps({"snapshot": sender.snapshot(), "stats": sender.stats(), "wait_s": wait, "pumps": pumps,
                          "restored_airtime_s": restored_s}), flush=True)
    finally:
        worker.stop()
    return 0


# -- the test ---------------------------------------------------------------------------------------------------


class OnAir:
    """What the simulated module transmitted, with the time (this process's monotonic clock) it finished."""

    def __init__(self, sim) -> None:
        self.sent: list[tuple[float, bytes]] = []
        self._lock = threading.Lock()
        sim.on_transmit.append(self._on)

    def _on(self, payload: bytes) -> None:
        with self._lock:
            self.sent.append((time.monotonic(), payload))

    def frames(self) -> list[bytes]:
        with self._lock:
            return [p for _, p in self.sent]

    def max_airtime_in_any_hour_s(self) -> float:
        with self._lock:
            ends = [t for t, _ in self.sent]
        return max((sum(KEYED_S for e in ends if t - 3600 < e <= t) for t in ends), default=0.0)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator:
    s = start_sim(tmp_path, rng_seed=5)
    yield s
    s.stop()


def run_agent(port: str, *, counters: list[int], restore: Path | None = None, pump_s: float = 3.0) -> dict:
    cmd = [sys.executable, "-m", "tests.integration.test_receipts_restart", "--port", port,
           "--counters", ",".join(map(str, counters)), "--pump-s", str(pump_s)]
    if restore is not None:
        cmd += ["--restore", str(restore)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"log": proc.stderr}


def test_the_sliding_hour_holds_across_an_agent_restart(sim, tmp_path: Path) -> None:
    on_air = OnAir(sim)
    # First life: five SOS acknowledged at once; four receipts fit in 0.7 s, the fifth waits for the hour.
    first = run_agent(sim.path, counters=[1, 2, 3, 4, 5])
    assert on_air.frames() == [build_receipt(NODE, c, KEY) for c in (1, 2, 3, 4)]
    assert first["stats"]["sent"] == 4 and first["stats"]["pending"] == 1 and first["wait_s"] > 3500
    journal_text = json.dumps(first["snapshot"], separators=(",", ":"))
    assert len(journal_text) < 400  # cheap enough to store with every commit
    snapshot = tmp_path / "receipts_snapshot.json"
    snapshot.write_text(journal_text, encoding="utf-8")
    restart_at = time.monotonic()

    # Second life, a new process: restored, then a caller presses again. Nothing may go on air for an hour.
    second = run_agent(sim.path, counters=[6], restore=snapshot, pump_s=3.0)
    assert second["stats"]["restore_failed"] == 0 and second["stats"]["restore_unknown_gap"] == 0
    assert second["restored_airtime_s"] == pytest.approx(4 * KEYED_S, abs=1e-5)
    assert len(on_air.frames()) == 4, "a receipt went on air after the restart, beyond the hourly budget"
    assert second["stats"]["pending"] == 2 and second["stats"]["sent"] == 0 and second["pumps"] >= 6
    # It waits until the last of the four (merged into one snapshot entry, stamped with the latest end) leaves
    # the hour: an hour after it ended, minus the time since then, within the run's own scheduling slack.
    since_last = time.monotonic() - on_air.sent[-1][0]
    assert second["wait_s"] == pytest.approx(3600 - since_last, abs=3.0)
    assert on_air.max_airtime_in_any_hour_s() == pytest.approx(4 * KEYED_S)
    assert 4 * KEYED_S <= BUDGET_S
    # The pending receipts are carried on: oldest first, byte for byte.
    pending = [bytes.fromhex(p["frame"]) for p in second["snapshot"]["pending"]]
    assert pending == [build_receipt(NODE, 5, KEY), build_receipt(NODE, 6, KEY)]
    print(f"\nairtime kept across the restart: {second['restored_airtime_s']:.4f} s of {BUDGET_S} s; "
          f"restart to end of second life {time.monotonic() - restart_at:.1f} s; next receipt in "
          f"{second['wait_s']:.0f} s")

    # The field report's failure, for contrast: a restart that forgets sends at once.
    forgetful = run_agent(sim.path, counters=[7], pump_s=1.0)
    assert forgetful["stats"]["sent"] == 1 and on_air.frames()[-1] == build_receipt(NODE, 7, KEY)
    assert on_air.max_airtime_in_any_hour_s() == pytest.approx(5 * KEYED_S)
    assert 5 * KEYED_S > BUDGET_S


def test_a_damaged_snapshot_in_the_journal_costs_only_itself(sim, tmp_path: Path) -> None:
    on_air = OnAir(sim)
    snapshot = tmp_path / "receipts_snapshot.json"
    snapshot.write_text(json.dumps({"schema": "denen.receipts/1", "boot_id": None, "boottime_us": 1,
                                    "frequency_hz": FREQUENCY_HZ, "airtime": [[0, -1]], "pending": []}),
                        encoding="utf-8")
    out = run_agent(sim.path, counters=[1], restore=snapshot, pump_s=1.0)
    assert out["stats"]["restore_failed"] == 1 and out["stats"]["sent"] == 1
    assert "receipts: snapshot not restored (airtime[0] airtime_us must be a whole number" in out["log"]
    assert on_air.frames() == [build_receipt(NODE, 1, KEY)]


# -- end to end: `denen run`, restarted between receipts -------------------------------------------------------


def _journal_receipts(journal: Path) -> dict | None:
    """The receipt senders' snapshot the agent last committed (journal meta ``receipts_snapshot``), read-only."""
    import sqlite3

    if not journal.exists():
        return None
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5)
    try:
        row = db.execute("SELECT value FROM meta WHERE key='receipts_snapshot'").fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        db.close()
    return json.loads(row[0]) if row else None


@contextmanager
def _subscriber(broker) -> Iterator[subprocess.Popen]:
    """A mosquitto_sub on the readings, standing in for the bridge: an SOS is acknowledged (and its receipt
    requested) only when the broker has a subscriber for it."""
    # Line-buffered: its debug lines (the SUBACK) must reach the pipe as they happen.
    proc = subprocess.Popen(["stdbuf", "-oL", "mosquitto_sub", "-h", broker.host, "-p", str(broker.port),
                             "-V", "mqttv5", "-q", "1", "-i", "receipts-bridge", "-t", "denen/v1/+/readings/#", "-d"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    subscribed = threading.Event()

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr] - drained to the end, so it never blocks on a full pipe
            if "SUBACK" in line:
                subscribed.set()

    reader = threading.Thread(target=read, name="mosquitto_sub", daemon=True)
    reader.start()
    try:
        assert subscribed.wait(10), "mosquitto_sub never subscribed"
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()


def _inject(sim, payload: bytes) -> None:
    deadline = time.monotonic() + 10.0
    while not sim.inject_uplink(payload, rssi=-90, snr=5.0):
        assert time.monotonic() < deadline, "module never got ready to receive"
        time.sleep(0.02)


@pytest.mark.broker
@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_denen_run_restarted_between_receipts_keeps_the_sliding_hour(tmp_path: Path, broker, stop: str) -> None:
    """A real agent process, a real Mosquitto, the simulated RAK3172 on a pty: SOS presses before and after a
    restart (a clean stop, or a power cut), and the 0.7 s per hour of receipts holds over both lives."""
    sim = start_sim(tmp_path)
    on_air = OnAir(sim)
    sos = FieldNode(0x00000101, "sos")
    journal = tmp_path / "journal.db"
    text = config_text(port=sim.path, mqtt_port=broker.port, journal=journal, nodes=[sos])
    text = text.replace(f"    port: {sim.path}\n",
                        f"    port: {sim.path}\n    p2p: {{frequency_hz: {FREQUENCY_HZ}, spreading_factor: 9}}\n")
    text += f"receipts:\n  max_per_hour_s: {BUDGET_S}\n"
    cfg = write_config(tmp_path / "gateway.yaml", text)
    agent = AgentProcess(cfg, tmp_path / "agent.log")
    with _subscriber(broker):
        try:
            _two_lives(agent, sim, on_air, sos, journal, stop)
        finally:
            agent.stop()
            sim.stop()


def _two_lives(agent: AgentProcess, sim, on_air: OnAir, sos: FieldNode, journal: Path, stop: str) -> None:
    key = node_key(sos.node_id)
    agent.start()
    assert wait_configured(sim), agent.text()
    # First life: five presses (five SOS frames, each asking for a receipt). Four receipts fit in 0.7 s.
    for i in range(5):
        _inject(sim, sos.frame(default_values("sos", i), receipt=True))
    # Each receipt is requested once the broker has acknowledged its SOS (PUBACK).
    assert wait_until(lambda: len(on_air.frames()) >= 4, 15), agent.text()[-3000:]
    # The agent keeps the airtime and the waiting receipt in its journal with its next commit.
    assert wait_until(lambda: (s := _journal_receipts(journal)) is not None and
                           sum(u for _, u in s["lora0"]["airtime"]) >= 4 * round(KEYED_S * 1e6)
                           and len(s["lora0"]["pending"]) == 1, 15), _journal_receipts(journal)
    commands = len(sim.commands)
    if stop == "sigkill":
        agent.kill9()
    else:
        assert agent.stop() == 0
    down_at = time.monotonic()

    # Second life: the same journal. Two more presses; their receipts (and the one left waiting) must wait
    # for the hour, however often the agent pumps.
    agent.start()
    assert wait_configured(sim, since=commands), agent.text()[-3000:]
    for i in range(5, 7):
        _inject(sim, sos.frame(default_values("sos", i), receipt=True))
    assert wait_until(lambda: (s := _journal_receipts(journal)) is not None
                           and len(s["lora0"]["pending"]) == 3, 15), _journal_receipts(journal)
    time.sleep(3.0)  # real time passes in the second life; the module gets nothing more
    assert on_air.frames() == [build_receipt(sos.node_id, c, key) for c in (1, 2, 3, 4)]
    assert on_air.max_airtime_in_any_hour_s() == pytest.approx(4 * KEYED_S)
    snap = _journal_receipts(journal)["lora0"]
    kept_s = sum(u for _, u in snap["airtime"]) / 1e6
    assert kept_s == pytest.approx(4 * KEYED_S, abs=1e-5)
    assert [bytes.fromhex(p["frame"]) for p in snap["pending"]] == [
        build_receipt(sos.node_id, c, key) for c in (5, 6, 7)]
    log_text = agent.text()
    [restored] = re.findall(r"receipts: restored 1 waiting receipt\(s\) and ([0-9.]+) s of airtime in the "
                            r"sliding hour \(([0-9.]+) s since the snapshot\)", log_text)
    assert float(restored[0]) == pytest.approx(4 * KEYED_S, abs=1e-3) and float(restored[1]) < 60
    assert "taken as zero" not in log_text  # same boot: the time between the lives is known
    print(f"\n{stop}: airtime kept across the restart {kept_s:.4f} s of {BUDGET_S} s (restored "
          f"{restored[0]} s, {restored[1]} s after the snapshot); {time.monotonic() - down_at:.1f} s after the "
          "stop, 3 receipts wait, none sent")


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(agent_main(sys.argv[1:]))
