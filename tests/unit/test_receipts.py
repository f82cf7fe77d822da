"""Receipts under ARIB STD-T108: channel rules, the airtime budget and the sender, on a fake clock."""

from __future__ import annotations

import builtins
import dataclasses
import json
import logging
import math
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import drivers.sim.rak3172 as sim_rak3172
from agent.errors import AgentError
from agent.gateway.receipt_airtime import (
    HOUR_S,
    AirtimeBudget,
    ReceiptError,
    ReceiptRefused,
    ReceiptsConfig,
)
from agent.gateway.receipt_state import SNAPSHOT_SCHEMA, boot_clock
from agent.gateway.receipts import ReceiptSender, build_receipt_sender
from drivers.airtime import ChannelRules, channel_rules, time_on_air_ms
from drivers.codec.frame import build_receipt, parse, verify
from drivers.errors import FrameError, ModuleError, ModuleTimeout

KEY = bytes(range(16))
F_LONG = 920_600_000  # ch24: LBT, TX <= 4 s, no hourly limit
F_SHORT = 922_400_000  # ch33: the stricter reading, TX <= 400 ms and 360 s/h


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeRadio:
    """Records what was sent and when (fake time); can fail the next sends."""

    def __init__(self, clock: FakeClock, airtime_s: float = 0.0) -> None:
        self.clock = clock
        self.airtime_s = airtime_s  # the fake clock moves by this much during each send
        self.sent: list[tuple[float, bytes]] = []
        self.attempts: list[float] = []
        self.fail_with: list[BaseException] = []

    def transmit(self, payload: bytes) -> None:
        self.attempts.append(self.clock())
        if self.fail_with:
            raise self.fail_with.pop(0)
        self.clock.advance(self.airtime_s)
        self.sent.append((self.clock(), payload))


class FakeBoot:
    """``boot_clock`` of a fake machine: a boot id and CLOCK_BOOTTIME in µs, which a restart does not reset."""

    BOOT_A = "6e9a7b8c-4644-46ac-9452-06b798c2f3f3"
    BOOT_B = "0b8a41f2-8f0e-4c55-a7a4-3c2d1e0f9a8b"

    def __init__(self, boot_id: str | None = BOOT_A, us: int = 50_000_000) -> None:
        self.boot_id = boot_id
        self.us = us

    def __call__(self) -> tuple[str | None, int]:
        return self.boot_id, self.us

    def advance(self, seconds: float) -> None:
        self.us += round(seconds * 1e6)


def rules(frequency_hz: int = F_LONG, **changes: float | None) -> ChannelRules:
    return dataclasses.replace(channel_rules(frequency_hz), **changes)


# -- time on air and channel rules -----------------------------------------------------------------------------


def test_time_on_air_lives_in_drivers_airtime_and_the_sim_uses_it() -> None:
    assert sim_rak3172.time_on_air_ms is time_on_air_ms
    # docs/protocols.md §8 table (BW125, CR4/5, preamble 8): 20 B at SF10 and SF12, 51 B at SF7.
    assert time_on_air_ms(20, 10, 125) == pytest.approx(370.7, abs=0.1)
    assert time_on_air_ms(20, 12, 125) == pytest.approx(1318.9, abs=0.1)
    assert time_on_air_ms(51, 7, 125) == pytest.approx(102.7, abs=0.1)
    with pytest.raises(ValueError):
        time_on_air_ms(20, 9, 125, preamble=-1)


def test_channel_rules_920_6_to_922_2_mhz() -> None:
    for f in (920_600_000, 921_400_000, 922_200_000):
        r = channel_rules(f)
        assert (r.regime, r.lbt_min_s, r.max_tx_s, r.min_pause_s, r.max_per_hour_s) == ("lbt", 0.005, 4.0, 0.05, None)
        assert r.frequency_hz == f


def test_channel_rules_922_4_to_923_4_mhz_take_the_stricter_reading() -> None:
    for f in (922_400_000, 923_000_000, 923_400_000):
        r = channel_rules(f)
        # LBT and pause of the long regime, TX limit and hourly budget of the short one.
        assert (r.regime, r.lbt_min_s, r.max_tx_s, r.min_pause_s, r.max_per_hour_s) == (
            "lbt_strictest", 0.005, 0.4, 0.05, 360.0)
    assert "400 ms" in channel_rules(F_SHORT).describe() and "360 s" in channel_rules(F_SHORT).describe()


def test_channel_rules_wide_signal_reaching_ch33_and_no_lbt() -> None:
    assert channel_rules(922_200_000, bw_khz=125).max_per_hour_s is None
    assert channel_rules(922_200_000, bw_khz=250).max_per_hour_s == 360.0  # spills over 922.3 MHz
    r = channel_rules(F_LONG, carrier_sense=False)
    assert (r.regime, r.lbt_min_s, r.max_tx_s, r.max_per_hour_s) == ("no_lbt", None, 0.1, 3.6)


@pytest.mark.parametrize("f", [920_400_000, 923_600_000, 868_100_000, 0])
def test_channel_rules_refuse_frequencies_outside_the_japanese_lora_channels(f: int) -> None:
    with pytest.raises(ValueError, match="ARIB"):
        channel_rules(f)


# -- AirtimeBudget ---------------------------------------------------------------------------------------------


def test_pause_after_each_transmission() -> None:
    clock = FakeClock(100.0)
    budget = AirtimeBudget(channel_rules(F_LONG), clock=clock)
    assert budget.wait_s(0.2) == 0.0  # nothing sent yet
    budget.record(0.2)
    assert budget.wait_s(0.2) == pytest.approx(0.05)
    clock.advance(0.03)
    assert budget.wait_s(0.2) == pytest.approx(0.02)
    clock.now = 100.05  # exactly the pause later
    assert budget.wait_s(0.2) == 0.0
    assert budget.used_last_hour_s == pytest.approx(0.2)


def test_no_hourly_limit_on_the_lower_channels() -> None:
    clock = FakeClock()
    budget = AirtimeBudget(channel_rules(F_LONG), clock=clock)
    for _ in range(2000):  # 2000 × 2 s: more than an hour of airtime, back to back with only the pause
        assert budget.wait_s(2.0) == 0.0
        clock.advance(2.0)
        budget.record(2.0)
        clock.advance(0.05)
    assert budget.used_last_hour_s > 3000.0  # far beyond the 360 s of the upper channels


def test_hourly_budget_sliding_window_and_exact_boundary() -> None:
    clock = FakeClock(0.0)
    budget = AirtimeBudget(rules(F_SHORT, max_per_hour_s=1.0), clock=clock)
    ends = []
    for _ in range(5):  # 5 × 0.2 s fills the 1 s budget
        assert budget.wait_s(0.2) == 0.0
        budget.record(0.2)
        ends.append(clock.now)
        clock.advance(10.0)
    assert budget.used_last_hour_s == pytest.approx(1.0)
    # The sixth must wait until the first send leaves the window, one hour after it ended.
    assert budget.wait_s(0.2) == pytest.approx(ends[0] + HOUR_S - clock.now)
    # A 0.35 s send needs two sends to leave: it waits for the second one.
    assert budget.wait_s(0.35) == pytest.approx(ends[1] + HOUR_S - clock.now)
    clock.now = ends[0] + HOUR_S - 1e-6
    assert 0 < budget.wait_s(0.2) <= 1e-5
    assert budget.used_last_hour_s == pytest.approx(1.0)
    clock.now = ends[0] + HOUR_S  # exactly one hour after: the first send no longer counts
    assert budget.used_last_hour_s == pytest.approx(0.8)
    assert budget.wait_s(0.2) == 0.0
    assert budget.wait_s(0.21) == pytest.approx(10.0)  # 0.01 s too much: wait for the next expiry


def test_budget_sums_are_exact_at_the_limit() -> None:
    clock = FakeClock(0.0)
    budget = AirtimeBudget(rules(F_SHORT, max_per_hour_s=0.3), clock=clock)
    for _ in range(3):  # 0.1 + 0.1 + 0.1 is 0.30000000000000004 in floats; the budget must still admit it
        assert budget.wait_s(0.1) == 0.0
        budget.record(0.1)
        clock.advance(1.0)
    assert budget.wait_s(0.000001) > 0  # but not one microsecond more


def test_budget_refuses_what_can_never_be_sent() -> None:
    budget = AirtimeBudget(rules(F_SHORT, max_per_hour_s=0.3), clock=FakeClock())
    with pytest.raises(ValueError, match="400 ms per-transmission limit"):
        budget.wait_s(0.401)
    with pytest.raises(ValueError, match="whole hourly budget"):
        budget.wait_s(0.35)
    with pytest.raises(ValueError):
        budget.record(-1.0)
    AirtimeBudget(channel_rules(F_LONG), clock=FakeClock()).check(4.0)  # exactly 4 s is allowed


# -- ReceiptSender ---------------------------------------------------------------------------------------------


def make_sender(radio: FakeRadio, clock: FakeClock, *, frequency_hz: int = F_LONG, sf: int = 9,
                budget: AirtimeBudget | None = None, boot: FakeBoot | None = None, **kw) -> ReceiptSender:
    return ReceiptSender(radio.transmit, sf=sf, bw_khz=125, cr=0, preamble=8, frequency_hz=frequency_hz,
                         budget=budget, clock=clock, boot_clock=boot or FakeBoot(), rng=random.Random(1), **kw)


def sending(**kw: Any) -> tuple[FakeClock, FakeRadio, ReceiptSender]:
    """A fake clock, a fake radio on it and a sender (:func:`make_sender` with ``kw``) on both."""
    clock = FakeClock()
    radio = FakeRadio(clock)
    return clock, radio, make_sender(radio, clock, **kw)


def test_receipt_bytes_are_build_receipt_byte_for_byte() -> None:
    clock, radio, sender = sending()
    sender.request(0x00A1B2C3, 42, KEY)
    sender.request(0x00A1B2C4, 7, None)
    while (wait := sender.pump()) is not None:
        clock.advance(wait)
    assert [p for _, p in radio.sent] == [build_receipt(0x00A1B2C3, 42, KEY), build_receipt(0x00A1B2C4, 7, None)]
    keyed = parse(radio.sent[0][1])
    assert keyed.downlink and keyed.has_mic and keyed.kind == 0x7F and keyed.body == b"" and keyed.counter == 42
    verify(keyed, KEY)  # raises on a bad MIC
    plain = parse(radio.sent[1][1])
    assert plain.downlink and not plain.has_mic and len(radio.sent[1][1]) == 10
    assert (sender.sent, sender.pending, sender.deferred) == (2, 0, 1)  # the second waited for the pause


def test_sender_waits_for_the_pause_and_never_sends_early() -> None:
    clock, radio, sender = sending()
    assert sender.pump() is None  # nothing queued: nothing to wait for
    sender.request(1, 1, None)
    sender.request(1, 2, None)
    wait = sender.pump()
    assert len(radio.sent) == 1 and wait == pytest.approx(0.05)
    clock.advance(0.049)
    assert sender.pump() == pytest.approx(0.001)
    assert len(radio.sent) == 1
    clock.advance(0.001)
    assert sender.pump() is None
    assert len(radio.sent) == 2
    assert radio.attempts[1] >= radio.sent[0][0] + 0.05


def test_sender_queues_while_the_hourly_budget_is_spent() -> None:
    clock = FakeClock(0.0)
    airtime = time_on_air_ms(10, 9, 125) / 1000  # 144.4 ms, no MIC
    budget = AirtimeBudget(rules(F_SHORT, max_per_hour_s=2 * airtime + 0.01), clock=clock)
    radio = FakeRadio(clock)
    sender = make_sender(radio, clock, frequency_hz=F_SHORT, budget=budget)
    for counter in (1, 2, 3):
        sender.request(0xA, counter, None)
    wait = sender.pump()
    clock.advance(wait)
    assert sender.pump() is not None
    assert len(radio.sent) == 2
    first_end = radio.sent[0][0]
    # The third waits for the first to leave the hourly window; step through the hour: never sent early.
    wait = sender.pump()
    assert wait == pytest.approx(first_end + HOUR_S - clock.now)
    start = clock.now
    for k in range(1, 10):
        clock.now = start + wait * k / 10
        assert sender.pump() == pytest.approx(first_end + HOUR_S - clock.now)
        assert len(radio.sent) == 2
    clock.now = first_end + HOUR_S - 1e-3
    assert sender.pump() == pytest.approx(1e-3)
    assert len(radio.sent) == 2 and sender.pending == 1 and sender.deferred == 2
    clock.now = first_end + HOUR_S
    assert sender.pump() is None
    assert [build_receipt(0xA, c, None) for c in (1, 2, 3)] == [p for _, p in radio.sent]
    assert budget.used_last_hour_s == pytest.approx(2 * airtime, abs=1e-5)


def test_receipt_too_long_for_one_transmission_is_refused() -> None:
    clock, radio, sender = sending(frequency_hz=F_SHORT, sf=11)  # 577 ms > 400 ms
    with pytest.raises(ReceiptRefused, match="400 ms per-transmission limit") as info:
        sender.request(1, 1, KEY)
    assert isinstance(info.value, ValueError) and isinstance(info.value, AgentError)
    assert sender.pending == 0 and sender.refused == 1 and sender.pump() is None and radio.attempts == []
    # SF12 on the lower channels fits the 4 s limit.
    slow = make_sender(radio, clock, frequency_hz=F_LONG, sf=12)
    slow.request(1, 1, KEY)
    assert slow.pump() is None and len(radio.sent) == 1


def test_busy_module_is_retried_with_backoff_and_no_airtime_is_counted() -> None:
    clock, radio, sender = sending(retry_min_s=2.0, retry_max_s=8.0)
    radio.fail_with = [ModuleError("AT+PSEND=...", "AT_BUSY_ERROR"), ModuleError("AT+PSEND=...", "AT_BUSY_ERROR")]
    sender.request(5, 9, None)
    wait1 = sender.pump()
    assert 1.0 <= wait1 <= 2.0  # equal jitter: between half the ceiling and the ceiling
    assert sender.retries == 1 and sender.budget.used_last_hour_s == 0.0
    clock.advance(wait1 / 2)
    assert sender.pump() == pytest.approx(wait1 / 2)  # not before the backoff ends
    assert len(radio.attempts) == 1
    clock.advance(wait1 / 2)
    wait2 = sender.pump()
    assert 2.0 <= wait2 <= 4.0 and sender.retries == 2
    clock.advance(wait2)
    assert sender.pump() is None
    assert sender.sent == 1 and len(radio.attempts) == 3
    assert sender.budget.used_last_hour_s == pytest.approx(time_on_air_ms(10, 9, 125) / 1000, abs=1e-5)


def test_timeout_counts_the_airtime_because_it_may_have_gone_out() -> None:
    clock, radio, sender = sending()
    radio.fail_with = [ModuleTimeout("no +EVT:TXP2P DONE")]
    sender.request(5, 9, None)
    assert sender.pump() is not None
    assert sender.budget.used_last_hour_s > 0 and sender.pending == 1 and sender.retries == 1


def test_receipt_given_up_after_max_attempts_then_the_next_goes() -> None:
    clock, radio, sender = sending(max_attempts=2, retry_min_s=1.0, retry_max_s=1.0)
    radio.fail_with = [ModuleError("AT+PSEND", "AT_BUSY_ERROR")] * 2
    sender.request(1, 1, None)
    sender.request(1, 2, None)
    while (wait := sender.pump()) is not None:
        clock.advance(wait)
    assert sender.failed == 1 and sender.sent == 1
    assert [p for _, p in radio.sent] == [build_receipt(1, 2, None)]


def test_payload_refused_by_the_module_is_not_retried() -> None:
    clock, radio, sender = sending()
    radio.fail_with = [ValueError("payload too long for this module")]
    sender.request(1, 1, None)
    assert sender.pump() is None
    assert sender.failed == 1 and sender.retries == 0 and len(radio.attempts) == 1


def test_duplicates_bounds_and_wake() -> None:
    clock = FakeClock()
    radio = FakeRadio(clock)
    wakes: list[int] = []
    sender = make_sender(radio, clock, max_pending=2, wake=lambda: wakes.append(1))
    sender.request(1, 1, None)
    sender.request(1, 1, KEY)  # the broker acknowledged the same SOS twice (at-least-once)
    sender.request(1, 2, None)
    sender.request(1, 3, None)  # queue full
    assert (sender.pending, sender.duplicates, sender.dropped, len(wakes)) == (2, 1, 1, 2)
    while (wait := sender.pump()) is not None:
        clock.advance(wait)
    sender.request(1, 1, None)  # already sent: not again
    assert sender.pending == 0 and sender.duplicates == 2
    stats = sender.stats()
    assert stats["sent"] == 2 and stats["dropped"] == 1 and stats["airtime_last_hour_s"] > 0
    with pytest.raises(FrameError):
        sender.request(2**32, 1, None)


def test_one_budget_shared_by_two_senders_on_one_channel() -> None:
    clock = FakeClock()
    budget = AirtimeBudget(channel_rules(F_LONG), clock=clock)
    radio_a, radio_b = FakeRadio(clock), FakeRadio(clock)
    a = make_sender(radio_a, clock, budget=budget)
    b = make_sender(radio_b, clock, budget=budget)
    a.request(1, 1, None)
    assert a.pump() is None
    b.request(2, 1, None)
    assert b.pump() == pytest.approx(0.05)  # the pause after a's send holds b too
    assert radio_b.sent == []
    with pytest.raises(ValueError, match="budget is for"):
        make_sender(radio_a, clock, frequency_hz=F_SHORT, budget=budget)


# -- ReceiptsConfig --------------------------------------------------------------------------------------------


def test_receipts_config_fields_are_described_and_strict() -> None:
    for name, info in ReceiptsConfig.model_fields.items():
        assert info.description and len(info.description) > 15, name
    with pytest.raises(ValidationError, match="extra"):
        ReceiptsConfig(max_per_hour=10)
    with pytest.raises(ValidationError, match="retry_min_s"):
        ReceiptsConfig(retry_min_s=10, retry_max_s=5)
    with pytest.raises(ValidationError):
        ReceiptsConfig(max_per_hour_s=0)


def test_receipts_config_budget_may_only_be_stricter() -> None:
    assert ReceiptsConfig().rules_for(F_SHORT).max_per_hour_s == 360.0
    assert ReceiptsConfig(max_per_hour_s=60).rules_for(F_SHORT).max_per_hour_s == 60.0
    assert ReceiptsConfig(max_per_hour_s=60).rules_for(F_LONG).max_per_hour_s == 60.0  # self-imposed
    with pytest.raises(ReceiptError, match="at most 360 s"):
        ReceiptsConfig(max_per_hour_s=400).rules_for(F_SHORT)
    with pytest.raises(ReceiptError, match="outside"):
        ReceiptsConfig().rules_for(915_000_000)
    assert ReceiptsConfig(carrier_sense=False).rules_for(F_LONG).max_tx_s == 0.1


def test_build_receipt_sender_from_config() -> None:
    clock = FakeClock()
    radio = FakeRadio(clock)
    build: Callable[..., ReceiptSender | None] = build_receipt_sender
    assert build(ReceiptsConfig(enabled=False), radio.transmit, frequency_hz=F_SHORT, sf=9, bw_khz=125, cr=0,
                 preamble=8) is None
    sender = build(ReceiptsConfig(max_per_hour_s=30, retry_min_s=1, retry_max_s=1), radio.transmit,
                   frequency_hz=F_SHORT, sf=9, bw_khz=125, cr=0, preamble=8, clock=clock)
    assert sender is not None
    assert sender.rules.max_per_hour_s == 30 and sender.rules.max_tx_s == 0.4
    sender.request(3, 4, KEY)
    assert sender.pump() is None and radio.sent[0][1] == build_receipt(3, 4, KEY)


# -- across restarts: snapshot and restore ---------------------------------------------------------------------

KEYED_S = time_on_air_ms(14, 9, 125) / 1000  # one keyed receipt at SF9/125 kHz: 164.9 ms
NODE = 0x00A1B2C3


def tight_budget(clock: FakeClock, per_hour_s: float = 0.7) -> AirtimeBudget:
    """0.7 s per sliding hour, as in the field report: four keyed receipts fit (0.660 s), a fifth does not."""
    return AirtimeBudget(rules(F_SHORT, max_per_hour_s=per_hour_s), clock=clock)


def pump_until_blocked(sender: ReceiptSender, clock: FakeClock, *, longer_than_s: float = 60.0) -> float | None:
    """Pump as the core does, advancing the fake clock, until the queue is empty or waits longer than a minute."""
    while (wait := sender.pump()) is not None and wait <= longer_than_s:
        clock.advance(wait)
    return wait


def stored(snapshot: dict) -> Any:
    """The snapshot as the journal keeps it: JSON text, read back."""
    return json.loads(json.dumps(snapshot, separators=(",", ":")))


def before_restart(boot: FakeBoot, n: int = 5) -> tuple[dict, FakeClock, FakeRadio]:
    """A first agent process: n SOS receipts requested at once; four go, the rest wait for the hour."""
    clock = FakeClock(1000.0)
    radio = FakeRadio(clock, airtime_s=KEYED_S)
    sender = make_sender(radio, clock, frequency_hz=F_SHORT, budget=tight_budget(clock), boot=boot)
    for counter in range(1, n + 1):
        sender.request(NODE, counter, KEY)
    assert pump_until_blocked(sender, clock) == pytest.approx(radio.sent[0][0] + HOUR_S - clock.now)
    assert len(radio.sent) == 4 and sender.pending == n - 4
    clock.advance(0.5)
    return stored(sender.snapshot()), clock, radio


def max_in_any_hour(ends_and_airtimes: list[tuple[float, float]]) -> float:
    """The largest airtime total over any sliding hour (window (t - 1 h, t] at each send's end)."""
    return max(sum(a for e, a in ends_and_airtimes if t - HOUR_S < e <= t) for t, _ in ends_and_airtimes)


def test_snapshot_format_is_json_and_says_what_and_when() -> None:
    boot = FakeBoot()
    snap, clock, radio = before_restart(boot)
    assert snap["schema"] == SNAPSHOT_SCHEMA == "denen.receipts/1"
    assert (snap["boot_id"], snap["boottime_us"], snap["frequency_hz"]) == (FakeBoot.BOOT_A, boot.us, F_SHORT)
    # The four sends ended within a second: one 60 s bin, stamped with the latest end, 4 x 164.9 ms on air.
    [[ago_us, airtime_us]] = snap["airtime"]
    assert ago_us == pytest.approx((clock.now - radio.sent[-1][0]) * 1e6, abs=1)
    assert airtime_us == 4 * math.ceil(KEYED_S * 1e6)
    [waiting] = snap["pending"]
    assert waiting["frame"] == build_receipt(NODE, 5, KEY).hex() and waiting["attempts"] == 0
    assert waiting["age_us"] == pytest.approx((clock.now - 1000.0) * 1e6, abs=1)


def test_hourly_budget_holds_across_a_restart_in_the_same_boot() -> None:
    boot = FakeBoot()
    snap, clock1, radio1 = before_restart(boot)
    first_end, last_end = radio1.sent[0][0], radio1.sent[-1][0]
    boot.advance(6.8)  # the restart took 6.8 s; the new process's monotonic clock starts elsewhere
    clock2 = FakeClock(3.0)
    radio2 = FakeRadio(clock2, airtime_s=KEYED_S)
    sender = make_sender(radio2, clock2, frequency_hz=F_SHORT, budget=tight_budget(clock2), boot=boot)
    sender.restore(snap)
    assert sender.restore_failed == 0 and sender.restore_unknown_gap == 0
    assert sender.budget.used_last_hour_s == pytest.approx(4 * KEYED_S, abs=1e-5)
    sender.request(NODE, 6, KEY)  # the caller pressed again after the restart
    # In the first process's time, the restart is at clock1.now + 6.8 s; the first send leaves the hour at
    # first_end + 1 h, and nothing may go before. The snapshot merged the four sends (all within one second)
    # into one stamped with the last end, so the receipt waits until that one leaves: 0.66 s longer, never less.
    wait = sender.pump()
    assert wait >= HOUR_S - (clock1.now + 6.8 - first_end)
    assert wait == pytest.approx(HOUR_S - (clock1.now + 6.8 - last_end), abs=1e-5)
    assert radio2.sent == [] and sender.pending == 2
    clock2.advance(wait - 1e-3)
    assert sender.pump() == pytest.approx(1e-3, abs=1e-5) and radio2.sent == []
    clock2.advance(1e-3)
    pump_until_blocked(sender, clock2, longer_than_s=HOUR_S)
    # The receipt that waited before the restart goes first, then the new one, byte for byte.
    assert [p for _, p in radio2.sent] == [build_receipt(NODE, 5, KEY), build_receipt(NODE, 6, KEY)]
    # Over both processes, on one time line: never more than 0.7 s in any sliding hour.
    offset = clock1.now + 6.8 - 3.0
    timeline = [(t, KEYED_S) for t, _ in radio1.sent] + [(t + offset, KEYED_S) for t, _ in radio2.sent]
    assert max_in_any_hour(timeline) <= 0.7
    # Without the snapshot (the bug), the new process sends at once: 5 receipts, 0.82 s within seconds.
    clock3 = FakeClock(3.0)
    radio3 = FakeRadio(clock3, airtime_s=KEYED_S)
    forgetful = make_sender(radio3, clock3, frequency_hz=F_SHORT, budget=tight_budget(clock3), boot=boot)
    forgetful.request(NODE, 6, KEY)
    assert forgetful.pump() is None
    forgotten = timeline[:4] + [(t + offset, KEYED_S) for t, _ in radio3.sent]
    assert max_in_any_hour(forgotten) == pytest.approx(5 * KEYED_S)
    assert 5 * KEYED_S > 0.7


def test_airtime_older_than_an_hour_at_restore_is_gone() -> None:
    boot = FakeBoot()
    snap, clock1, radio1 = before_restart(boot)
    boot.advance(HOUR_S - (clock1.now - radio1.sent[-1][0]))  # exactly when the last send leaves the hour
    clock2 = FakeClock(0.0)
    radio2 = FakeRadio(clock2, airtime_s=KEYED_S)
    sender = make_sender(radio2, clock2, frequency_hz=F_SHORT, budget=tight_budget(clock2), boot=boot)
    sender.restore(snap)
    assert sender.budget.used_last_hour_s == 0.0
    assert sender.pump() is None and [p for _, p in radio2.sent] == [build_receipt(NODE, 5, KEY)]


@pytest.mark.parametrize("how", ["reboot", "clock_back", "no_boot_id"])
def test_after_a_reboot_or_an_unknown_gap_the_airtime_stays_in_the_hour(how: str,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    boot = FakeBoot(None) if how == "no_boot_id" else FakeBoot()
    snap, clock1, radio1 = before_restart(boot)
    ago = clock1.now - radio1.sent[-1][0]  # age of the (merged) sends when the snapshot was taken
    if how == "reboot":
        boot = FakeBoot(FakeBoot.BOOT_B, us=9_000_000)  # a new boot: its clock starts again near zero
    elif how == "clock_back":
        boot.us -= 1_000_000  # the same boot id but an earlier time: not a clock this machine can have
    else:
        boot.advance(600.0)  # no boot id: the 10 minutes that passed cannot be known
    clock2 = FakeClock(7.0)
    radio2 = FakeRadio(clock2, airtime_s=KEYED_S)
    sender = make_sender(radio2, clock2, frequency_hz=F_SHORT, budget=tight_budget(clock2), boot=boot)
    with caplog.at_level(logging.WARNING, logger="agent.gateway.receipts"):
        sender.restore(snap)
    assert sender.restore_unknown_gap == 1 and sender.restore_failed == 0
    assert "taken as zero" in caplog.text
    assert {"reboot": "rebooted", "clock_back": "went back", "no_boot_id": "no boot id"}[how] in caplog.text
    # The time in between counts as zero: the sends leave the hour a full hour minus `ago` from now.
    assert sender.budget.used_last_hour_s == pytest.approx(4 * KEYED_S, abs=1e-5)
    assert sender.pump() == pytest.approx(HOUR_S - ago, abs=1e-5)
    assert radio2.sent == [] and sender.stats()["restore_unknown_gap"] == 1


def test_waiting_receipts_keep_their_failed_attempts_across_a_restart(caplog: pytest.LogCaptureFixture) -> None:
    boot = FakeBoot()
    clock1 = FakeClock()
    radio1 = FakeRadio(clock1)
    sender1 = make_sender(radio1, clock1, boot=boot, max_attempts=3, retry_min_s=1.0, retry_max_s=1.0)
    radio1.fail_with = [ModuleError("AT+PSEND", "AT_BUSY_ERROR")] * 2
    sender1.request(1, 10, None)
    clock1.advance(sender1.pump())
    assert sender1.pump() is not None and sender1.retries == 2 and radio1.sent == []
    snap = stored(sender1.snapshot())
    assert snap["pending"][0]["attempts"] == 2
    boot.advance(5.0)
    clock2 = FakeClock(50.0)
    radio2 = FakeRadio(clock2)
    sender2 = make_sender(radio2, clock2, boot=boot, max_attempts=3)
    sender2.restore(snap)
    sender2.request(1, 10, None)  # the journal re-published the same SOS and the broker acknowledged it again
    sender2.request(1, 11, None)
    assert sender2.duplicates == 1 and sender2.pending == 2
    radio2.fail_with = [ModuleError("AT+PSEND", "AT_BUSY_ERROR")]
    with caplog.at_level(logging.ERROR, logger="agent.gateway.receipts"):
        pump_until_blocked(sender2, clock2)
    # The third failed send in all gives the receipt up (max_attempts 3 over both processes); the next one goes.
    assert sender2.failed == 1 and [p for _, p in radio2.sent] == [build_receipt(1, 11, None)]
    assert "receipt for node 00000001 counter 10 dropped: given up after 3 failed sends" in caplog.text


def test_restored_receipts_go_before_new_ones_and_respect_max_pending(caplog: pytest.LogCaptureFixture) -> None:
    boot = FakeBoot()
    clock1 = FakeClock()
    sender1 = make_sender(FakeRadio(clock1), clock1, frequency_hz=F_SHORT, boot=boot,
                          budget=AirtimeBudget(rules(F_SHORT, max_per_hour_s=0.15), clock=clock1))
    for counter in range(1, 6):
        sender1.request(2, counter, None)
    pump_until_blocked(sender1, clock1)
    snap = stored(sender1.snapshot())
    assert len(snap["pending"]) == 4
    clock2 = FakeClock()
    radio2 = FakeRadio(clock2)
    sender2 = make_sender(radio2, clock2, boot=boot, max_pending=3)  # moved to ch24: no hourly budget there
    sender2.request(2, 99, None)  # queued before the restore: restored ones are older and go first
    with caplog.at_level(logging.ERROR, logger="agent.gateway.receipts"):
        sender2.restore(snap)
    assert sender2.pending == 3 and sender2.dropped == 2
    assert "counter 4 dropped at restore: 3 receipts already waiting (receipts.max_pending)" in caplog.text
    pump_until_blocked(sender2, clock2)
    assert [p for _, p in radio2.sent] == [build_receipt(2, c, None) for c in (2, 3, 99)]


def test_a_shared_budget_is_restored_once() -> None:
    boot = FakeBoot()
    snap, _, _ = before_restart(boot)
    clock2 = FakeClock()
    budget = tight_budget(clock2)
    a = make_sender(FakeRadio(clock2), clock2, frequency_hz=F_SHORT, budget=budget, boot=boot)
    b = make_sender(FakeRadio(clock2), clock2, frequency_hz=F_SHORT, budget=budget, boot=boot)
    a.restore(snap)
    b.restore(snap)  # the edge restores each radio's sender; both hold the channel's airtime
    assert budget.used_last_hour_s == pytest.approx(4 * KEYED_S, abs=1e-5)  # not twice
    assert a.pending == b.pending == 1


def test_receipts_too_old_are_dropped_counted_and_logged_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    boot = FakeBoot()
    clock = FakeClock()
    radio = FakeRadio(clock)
    budget = AirtimeBudget(rules(F_SHORT, max_per_hour_s=0.15), clock=clock)  # one plain receipt an hour
    sender = make_sender(radio, clock, frequency_hz=F_SHORT, budget=budget, boot=boot, max_age_s=600.0)
    for counter in range(1, 41):
        sender.request(3, counter, None)
    with caplog.at_level(logging.WARNING, logger="agent.gateway.receipts"):  # the summary line is a warning
        assert pump_until_blocked(sender, clock) > 600
        clock.advance(601.0)
        wait = sender.pump()  # 39 waited longer than max_age_s: dropped before anything else
        assert wait is None and sender.expired == 39 and sender.pending == 0 and len(radio.sent) == 1
        lines = [r for r in caplog.records if "receipts.max_age_s" in r.getMessage()]
        assert len(lines) == 1
        assert "receipt for node 00000003 counter 2 dropped: not sent 601 s after its request" in lines[0].getMessage()
        clock.advance(61.0)
        sender.pump()  # the next pump after the window writes the summary of the rest
    assert "... 38 more too_old receipts from node 00000003 in the last" in caplog.text
    assert sender.stats()["expired"] == 39


def test_too_old_at_restore_after_a_long_stop() -> None:
    boot = FakeBoot()
    snap, _, _ = before_restart(boot)
    boot.advance(7200.0)  # stopped two hours: the waiting receipt is older than max_age_s (7200 s by default)
    clock2 = FakeClock()
    radio2 = FakeRadio(clock2)
    sender = make_sender(radio2, clock2, frequency_hz=F_SHORT, budget=tight_budget(clock2), boot=boot)
    sender.restore(snap)
    assert sender.expired == 1 and sender.pending == 0 and sender.pump() is None and radio2.sent == []


def test_queue_full_drops_are_logged_once_per_node_and_window(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    sender = make_sender(FakeRadio(clock), clock, max_pending=1)
    with caplog.at_level(logging.ERROR, logger="agent.gateway.receipts"):
        for counter in range(100):
            sender.request(7, counter, None)
        sender.request(8, 1, None)
    assert sender.dropped == 100
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert lines == ["receipt for node 00000007 counter 1 dropped: 1 receipts already waiting (receipts.max_pending)",
                     "receipt for node 00000008 counter 1 dropped: 1 receipts already waiting (receipts.max_pending)"]


def test_snapshot_is_small_and_merging_only_keeps_airtime_longer() -> None:
    boot = FakeBoot()
    clock = FakeClock(0.0)
    original = AirtimeBudget(rules(F_SHORT), clock=clock)
    ends = []
    for _ in range(9000):  # 9,000 sends of 40 ms in an hour: 360 s, the whole hourly budget of ch33
        clock.advance(0.4)
        original.record(0.04)
        ends.append(clock.now)
    sender = make_sender(FakeRadio(clock), clock, frequency_hz=F_SHORT, budget=original, boot=boot)
    snap = stored(sender.snapshot())
    assert len(snap["airtime"]) <= 61 and len(json.dumps(snap)) < 2000
    restored = AirtimeBudget(rules(F_SHORT), clock=clock)  # the same instant, the same boot: no gap
    assert restored.restore([(a, u) for a, u in snap["airtime"]])

    def truly_used(t: float) -> float:
        """What the original sends really put in the window (t - 1 h, t]."""
        return 0.04 * sum(1 for e in ends if t - HOUR_S < e <= t)

    start = clock.now
    assert restored.used_last_hour_s == pytest.approx(truly_used(start), abs=1e-6)
    for step in range(0, 3700, 7):
        clock.now = start + step
        kept = restored.used_last_hour_s
        # Never less than the truth (the limit holds), and at most one bin (60 s) behind it.
        assert truly_used(clock.now) - 1e-6 <= kept <= truly_used(max(start, clock.now - 60)) + 1e-6, step
    assert restored.used_last_hour_s == 0.0


def test_snapshot_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    sender = ReceiptSender(FakeRadio(clock).transmit, sf=9, bw_khz=125, cr=0, preamble=8, frequency_hz=F_LONG,
                           clock=clock)  # the real boot clock
    sender.request(1, 1, None)

    def no_io(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"snapshot() opened {args[:1]}")

    monkeypatch.setattr(builtins, "open", no_io)
    snap = sender.snapshot()
    assert snap["boot_id"] == boot_clock()[0] and len(snap["pending"]) == 1


def test_boot_clock_is_this_boots_id_and_boottime() -> None:
    boot_id, us = boot_clock()
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
        assert boot_id == f.read().strip()
    boot_id2, us2 = boot_clock()
    assert boot_id2 == boot_id and us2 >= us > 0


def valid_snapshot() -> dict:
    boot = FakeBoot()
    snap, _, _ = before_restart(boot, n=6)
    return snap


DAMAGED: list[tuple[str, Callable[[dict], Any]]] = [
    ("not an object", lambda s: [s]),
    ("None", lambda s: None),
    ("text", lambda s: json.dumps(s)),
    ("schema", lambda s: {**s, "schema": "denen.receipts/2"}),
    ("no schema", lambda s: {k: v for k, v in s.items() if k != "schema"}),
    ("boot_id", lambda s: {**s, "boot_id": "../../etc/passwd"}),
    ("boot_id type", lambda s: {**s, "boot_id": 7}),
    ("boottime negative", lambda s: {**s, "boottime_us": -1}),
    ("boottime float", lambda s: {**s, "boottime_us": 1.5}),
    ("boottime bool", lambda s: {**s, "boottime_us": True}),
    ("boottime huge", lambda s: {**s, "boottime_us": 10**30}),
    ("boottime NaN", lambda s: {**s, "boottime_us": float("nan")}),
    ("frequency missing", lambda s: {k: v for k, v in s.items() if k != "frequency_hz"}),
    ("airtime not a list", lambda s: {**s, "airtime": {"0": 1}}),
    ("airtime entry", lambda s: {**s, "airtime": [[1, 2, 3]]}),
    ("airtime negative age", lambda s: {**s, "airtime": [[-5, 1000]]}),
    ("airtime zero", lambda s: {**s, "airtime": [[5, 0]]}),
    ("airtime longer than an hour", lambda s: {**s, "airtime": [[5, 3_600_000_001]]}),
    ("airtime sums beyond an hour", lambda s: {**s, "airtime": [[5, 2_000_000_000], [6, 2_000_000_000]]}),
    ("airtime too many", lambda s: {**s, "airtime": [[5, 1]] * 5000}),
    ("airtime infinite", lambda s: {**s, "airtime": [[5, float("inf")]]}),
    ("pending not a list", lambda s: {**s, "pending": "x"}),
    ("pending entry", lambda s: {**s, "pending": [7]}),
    ("frame not hex", lambda s: {**s, "pending": [{**s["pending"][0], "frame": "zz"}]}),
    ("frame too long", lambda s: {**s, "pending": [{**s["pending"][0], "frame": "00" * 200}]}),
    ("frame not text", lambda s: {**s, "pending": [{**s["pending"][0], "frame": 12}]}),
    ("frame an uplink", lambda s: {**s, "pending": [{**s["pending"][0],
                                                      "frame": "1000A1B2C30000002A020100010374014A"}]}),
    ("frame kind", lambda s: {**s, "pending": [{**s["pending"][0],
                                                "frame": s["pending"][0]["frame"][:18] + "01"
                                                + s["pending"][0]["frame"][20:]}]}),
    ("frame MIC flag without MIC", lambda s: {**s, "pending": [{**s["pending"][0],
                                                                "frame": s["pending"][0]["frame"][:20]}]}),
    ("frame with a body", lambda s: {**s, "pending": [{**s["pending"][0], "frame": build_receipt(1, 1).hex() + "00"}]}),
    ("age missing", lambda s: {**s, "pending": [{"frame": s["pending"][0]["frame"], "attempts": 0}]}),
    ("attempts", lambda s: {**s, "pending": [{**s["pending"][0], "attempts": 10**6}]}),
    ("pending too many", lambda s: {**s, "pending": [s["pending"][0]] * 10_001}),
]


@pytest.mark.parametrize("what,damage", DAMAGED, ids=[d[0] for d in DAMAGED])
def test_a_damaged_snapshot_never_raises_and_starts_empty(what: str, damage: Callable[[dict], Any],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    snap = valid_snapshot()
    clock = FakeClock()
    radio = FakeRadio(clock)
    sender = make_sender(radio, clock, frequency_hz=F_SHORT, budget=tight_budget(clock))
    with caplog.at_level(logging.ERROR, logger="agent.gateway.receipts"):
        sender.restore(damage(snap))
    assert sender.restore_failed == 1 and sender.stats()["restore_failed"] == 1
    assert sender.pending == 0 and sender.budget.used_last_hour_s == 0.0
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("receipts: snapshot not restored (") and "start empty" in line
    # The sender works on: a new SOS gets its receipt at once.
    sender.request(NODE, 100, KEY)
    assert sender.pump() is None and radio.sent[-1][1] == build_receipt(NODE, 100, KEY)
    # The undamaged snapshot restores (the damage, not the test, is what was refused).
    other = make_sender(FakeRadio(clock), clock, frequency_hz=F_SHORT, budget=tight_budget(clock))
    other.restore(snap)
    assert other.restore_failed == 0 and other.pending == 2


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(junk=json_values, key=st.sampled_from(["schema", "boot_id", "boottime_us", "frequency_hz", "airtime",
                                              "pending", None]))
def test_any_snapshot_content_is_restored_or_refused_never_raised(junk: Any, key: str | None) -> None:
    snap = valid_snapshot()
    hostile = junk if key is None else {**snap, key: junk}
    clock = FakeClock()
    sender = make_sender(FakeRadio(clock), clock, frequency_hz=F_SHORT, budget=tight_budget(clock))
    sender.restore(hostile)
    assert sender.restore_failed in (0, 1)
    assert sender.budget.used_last_hour_s <= HOUR_S and sender.pending <= 64
    json.dumps(sender.snapshot())  # whatever came in, what goes out is JSON


def test_max_age_s_is_configured_and_bounded() -> None:
    assert ReceiptsConfig().max_age_s == 7200.0
    with pytest.raises(ValidationError):
        ReceiptsConfig(max_age_s=10)
    clock = FakeClock()
    radio = FakeRadio(clock)
    sender = build_receipt_sender(ReceiptsConfig(max_age_s=60, max_per_hour_s=0.15), radio.transmit,
                                  frequency_hz=F_SHORT, sf=9, bw_khz=125, cr=0, preamble=8, clock=clock,
                                  boot_clock=FakeBoot())
    assert sender is not None
    sender.request(1, 1, None)
    sender.request(1, 2, None)
    assert sender.pump() > 60
    clock.advance(60.5)
    assert sender.pump() is None and sender.expired == 1 and len(radio.sent) == 1
