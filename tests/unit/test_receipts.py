"""Receipts under ARIB STD-T108: channel rules, the airtime budget and the sender, on a fake clock."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

import pytest
from pydantic import ValidationError

import drivers.sim.rak3172 as sim_rak3172
from agent.errors import AgentError
from agent.receipts import (
    HOUR_S,
    AirtimeBudget,
    ReceiptError,
    ReceiptRefused,
    ReceiptSender,
    ReceiptsConfig,
    build_receipt_sender,
)
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


def rules(frequency_hz: int = F_LONG, **changes: float | None) -> ChannelRules:
    return dataclasses.replace(channel_rules(frequency_hz), **changes)


# -- time on air and channel rules -----------------------------------------------------------------------------


def test_time_on_air_lives_in_drivers_airtime_and_the_sim_uses_it() -> None:
    assert sim_rak3172.time_on_air_ms is time_on_air_ms
    # PROTOCOLS.md §8 table (BW125, CR4/5, preamble 8): 20 B at SF10 and SF12, 51 B at SF7.
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
                budget: AirtimeBudget | None = None, **kw) -> ReceiptSender:
    return ReceiptSender(radio.transmit, sf=sf, bw_khz=125, cr=0, preamble=8, frequency_hz=frequency_hz,
                         budget=budget, clock=clock, rng=random.Random(1), **kw)


def test_receipt_bytes_are_build_receipt_byte_for_byte() -> None:
    clock = FakeClock()
    radio = FakeRadio(clock)
    sender = make_sender(radio, clock)
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
    clock = FakeClock()
    radio = FakeRadio(clock)
    sender = make_sender(radio, clock)
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
    clock = FakeClock()
    radio = FakeRadio(clock)
    sender = make_sender(radio, clock, frequency_hz=F_SHORT, sf=11)  # 577 ms > 400 ms
    with pytest.raises(ReceiptRefused, match="400 ms per-transmission limit") as info:
        sender.request(1, 1, KEY)
    assert isinstance(info.value, ValueError) and isinstance(info.value, AgentError)
    assert sender.pending == 0 and sender.refused == 1 and sender.pump() is None and radio.attempts == []
    # SF12 on the lower channels fits the 4 s limit.
    slow = make_sender(radio, clock, frequency_hz=F_LONG, sf=12)
    slow.request(1, 1, KEY)
    assert slow.pump() is None and len(radio.sent) == 1


def test_busy_module_is_retried_with_backoff_and_no_airtime_is_counted() -> None:
    clock = FakeClock()
    radio = FakeRadio(clock)
    sender = make_sender(radio, clock, retry_min_s=2.0, retry_max_s=8.0)
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
    clock = FakeClock()
    radio = FakeRadio(clock)
    sender = make_sender(radio, clock)
    radio.fail_with = [ModuleTimeout("no +EVT:TXP2P DONE")]
    sender.request(5, 9, None)
    assert sender.pump() is not None
    assert sender.budget.used_last_hour_s > 0 and sender.pending == 1 and sender.retries == 1


def test_receipt_given_up_after_max_attempts_then_the_next_goes() -> None:
    clock = FakeClock()
    radio = FakeRadio(clock)
    sender = make_sender(radio, clock, max_attempts=2, retry_min_s=1.0, retry_max_s=1.0)
    radio.fail_with = [ModuleError("AT+PSEND", "AT_BUSY_ERROR")] * 2
    sender.request(1, 1, None)
    sender.request(1, 2, None)
    while (wait := sender.pump()) is not None:
        clock.advance(wait)
    assert sender.failed == 1 and sender.sent == 1
    assert [p for _, p in radio.sent] == [build_receipt(1, 2, None)]


def test_payload_refused_by_the_module_is_not_retried() -> None:
    clock = FakeClock()
    radio = FakeRadio(clock)
    sender = make_sender(radio, clock)
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
