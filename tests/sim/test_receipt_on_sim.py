"""SOS receipts on the real path: ReceiptSender -> RadioWorker -> RAK3172 driver -> pty -> simulated RAK3172.

The receipt must arrive at the module as ``AT+PSEND=<hex>`` byte for byte, receive must stay on (PRECV=65533),
the pause and the hourly budget must hold, and a busy channel (CAD) must be retried without counting airtime.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import serial

from agent.gateway.receipt_airtime import ReceiptsConfig
from agent.gateway.receipts import ReceiptSender, build_receipt_sender
from drivers.airtime import time_on_air_ms
from drivers.codec.frame import build_receipt
from drivers.radio import RadioWorker
from drivers.sim.rak3172 import SimRak3172
from tests.drivers.recorder import Events
from tests.support.field import start_sim
from tests.support.radio import radio_config

KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
NODE, COUNTER = 0x00A1B2C3, 42


#: ch33, where the strict rules hold (TX <= 400 ms, 360 s/h).
P2P = {"frequency_hz": 922_400_000, "spreading_factor": 9}


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimRak3172]:
    s = start_sim(tmp_path, rng_seed=5)
    yield s
    s.stop()


@pytest.fixture
def radio(sim: SimRak3172) -> Iterator[tuple[RadioWorker, Events, Any]]:
    config = radio_config("lora0", "rak3172", port=sim.path, p2p=P2P)
    events = Events()
    worker = RadioWorker(config, events, reopen_min_s=0.05, reopen_max_s=0.3, rng=random.Random(3))
    worker.start()
    deadline = time.monotonic() + 10.0
    while worker.state != "running":
        assert time.monotonic() < deadline, f"worker state {worker.state!r}, not running"
        time.sleep(0.01)
    yield worker, events, config
    worker.stop()
    assert not worker.alive


def sender_for(worker: RadioWorker, config: Any, **kw) -> ReceiptSender:
    p = config.p2p
    return ReceiptSender(worker.transmit, sf=p.spreading_factor, bw_khz=p.bandwidth_khz, cr=p.coding_rate,
                         preamble=p.preamble, frequency_hz=p.frequency_hz, **kw)


def drain(sender: ReceiptSender, timeout: float = 10.0) -> None:
    """What the core does: pump, sleep as long as pump says, until the queue is empty."""
    deadline = time.monotonic() + timeout
    while (wait := sender.pump()) is not None:
        assert time.monotonic() + wait < deadline, f"still {sender.pending} receipt(s) after {timeout} s"
        time.sleep(wait)


def inject_when_listening(sim: SimRak3172, payload: bytes) -> None:
    deadline = time.monotonic() + 5.0
    while not sim.inject_uplink(payload, rssi=-70, snr=6.0):
        assert time.monotonic() < deadline, "module never got ready to receive"
        time.sleep(0.01)


def psends(sim: SimRak3172) -> list[str]:
    return [c for c in sim.commands if c.upper().startswith("AT+PSEND")]


def test_receipt_arrives_at_the_module_and_rx_stays_on(sim, radio) -> None:
    worker, events, config = radio
    sender = sender_for(worker, config)
    sender.request(NODE, COUNTER, KEY)
    assert sender.pump() is None
    receipt = build_receipt(NODE, COUNTER, KEY)
    assert sim.transmitted == [receipt]
    assert psends(sim) == [f"AT+PSEND={receipt.hex().upper()}"]
    assert sender.sent == 1 and sender.pending == 0
    # Receive is still on after the send: the module listens (65533) and the next uplink reaches the agent.
    assert sim.rx_mode == "continuous_tx"
    inject_when_listening(sim, b"\x10after")
    events.wait(lambda: len(events.uplinks) >= 1, 5.0)
    assert events.uplinks[-1].payload == b"\x10after"
    assert sender.budget.used_last_hour_s == pytest.approx(time_on_air_ms(len(receipt), 9, 125) / 1000, abs=1e-5)


def test_pause_between_receipts_holds_on_air(sim, radio) -> None:
    worker, _, config = radio
    spans: list[tuple[float, float]] = []  # (PSEND asked, +EVT:TXP2P DONE seen by the host)

    def transmit(payload: bytes) -> None:
        start = time.monotonic()
        worker.transmit(payload)
        spans.append((start, time.monotonic()))

    p = config.p2p
    sender = ReceiptSender(transmit, sf=p.spreading_factor, bw_khz=p.bandwidth_khz, cr=p.coding_rate,
                           preamble=p.preamble, frequency_hz=p.frequency_hz)
    sender.request(NODE, 1, None)
    sender.request(NODE, 2, None)
    drain(sender)
    assert sim.transmitted == [build_receipt(NODE, 1, None), build_receipt(NODE, 2, None)]
    # Each send lasted at least its airtime (the module reports DONE after it), and the second was asked for no
    # earlier than 50 ms after the first had ended.
    airtime = time_on_air_ms(10, 9, 125) / 1000
    assert [end - start >= airtime for start, end in spans] == [True, True]
    assert spans[1][0] - spans[0][1] >= 0.05
    assert sender.deferred == 1


def test_tiny_hourly_budget_makes_the_second_receipt_wait(sim, radio) -> None:
    worker, _, config = radio
    clock = FakeClock()
    airtime = time_on_air_ms(14, 9, 125) / 1000  # one keyed receipt: 164.9 ms
    p = config.p2p
    sender = build_receipt_sender(ReceiptsConfig(max_per_hour_s=airtime + 0.05), worker.transmit,
                                  frequency_hz=p.frequency_hz, sf=p.spreading_factor, bw_khz=p.bandwidth_khz,
                                  cr=p.coding_rate, preamble=p.preamble, clock=clock)
    assert sender is not None
    sender.request(NODE, 1, KEY)
    sender.request(NODE, 2, KEY)
    first_end = clock.now
    wait = sender.pump()
    assert sim.transmitted == [build_receipt(NODE, 1, KEY)]
    assert wait == pytest.approx(3600.0)
    # Real time passes, the budget's hour does not: the module gets nothing more, however often we pump.
    for _ in range(5):
        time.sleep(0.05)
        assert sender.pump() == pytest.approx(3600.0)
    clock.now = first_end + 3599.9
    assert sender.pump() == pytest.approx(0.1)
    assert len(psends(sim)) == 1 and sender.pending == 1 and sender.deferred == 1
    clock.now = first_end + 3600.0
    assert sender.pump() is None
    assert sim.transmitted == [build_receipt(NODE, 1, KEY), build_receipt(NODE, 2, KEY)]
    assert sim.rx_mode == "continuous_tx"


def test_busy_channel_is_retried_later_without_counting_airtime(sim, radio) -> None:
    worker, _, config = radio
    # Switch the module's CAD on the way an operator would (the driver does not touch it): the channel is busy.
    worker.stop()
    with serial.serial_for_url(sim.path, baudrate=115200, timeout=2.0) as port:
        port.write(b"AT+CAD=1\r\n")
        assert port.read_until(b"OK\r\n").endswith(b"OK\r\n")
    sim.channel_busy = True
    events = Events()
    worker = RadioWorker(config, events, reopen_min_s=0.05, reopen_max_s=0.3, rng=random.Random(4))
    worker.start()
    try:
        deadline = time.monotonic() + 10.0
        while worker.state != "running":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sender = sender_for(worker, config, retry_min_s=0.05, retry_max_s=0.1)
        sender.request(NODE, COUNTER, None)
        wait = sender.pump()  # the driver retries AT_BUSY_ERROR itself, then gives up: the sender backs off
        assert wait is not None and 0 < wait <= 0.1
        assert sender.retries == 1 and sim.transmitted == []
        assert sender.budget.used_last_hour_s == 0.0  # refused by the module: nothing went on air
        sim.channel_busy = False
        drain(sender)
        assert sim.transmitted == [build_receipt(NODE, COUNTER, None)]
        assert sender.sent == 1 and sender.budget.used_last_hour_s > 0
    finally:
        worker.stop()
