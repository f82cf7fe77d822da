"""SOS receipts: the short downlink that tells a caller "your call got through", sent within ARIB STD-T108.

Once the broker has acknowledged an SOS whose frame asked for a receipt (PROTOCOLS.md §9, flag bit1), the gateway
core calls :meth:`ReceiptSender.request`. The sender queues a receipt frame (``build_receipt``: downlink flag, MIC
when the node has a key, kind 0x7F, empty body) and sends it through the radio as soon as Japan's 920 MHz rules
allow (PROTOCOLS.md §6, :func:`drivers.airtime.channel_rules`):

* each transmission is at most the channel's per-transmission limit (``max_tx_s``): a receipt whose time on air
  (PROTOCOLS.md §8, at the radio's SF/BW/CR/preamble) is longer is refused with :class:`ReceiptRefused` and never
  sent;
* after each transmission the channel rests at least ``min_pause_s``;
* on channels with an hourly budget, the transmission time in any sliding hour stays within it.

Carrier sense (LBT) itself is done, or not, by the radio module; :func:`~drivers.airtime.channel_rules` documents
the assumption and ``receipts.carrier_sense`` selects the stricter no-LBT limits when the module does none.

The sender never sleeps and never polls: :meth:`ReceiptSender.pump` sends what is allowed now and returns how long
until the next receipt could go; the core sleeps on that (and is woken by the ``wake`` callback when a new receipt
is requested from another thread).

Errors::

    AgentError
     └── ReceiptError                   a receipt could not be set up or queued
          └── ReceiptRefused (ValueError)  a receipt can never be sent within the rules (too long)
"""

from __future__ import annotations

import collections
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.errors import AgentError
from drivers.airtime import ChannelRules, channel_rules, time_on_air_ms
from drivers.codec.frame import build_receipt
from drivers.errors import DriverError, ModuleError
from drivers.radio import backoff_delay

__all__ = [
    "HOUR_S",
    "AirtimeBudget",
    "ReceiptError",
    "ReceiptRefused",
    "ReceiptSender",
    "ReceiptsConfig",
    "build_receipt_sender",
]

log = logging.getLogger(__name__)

#: Length of the sliding window of the hourly airtime budget, in seconds.
HOUR_S = 3600.0

# Module status lines that mean "refused, nothing went on air" (RUI3 §1, ES920LR §2: wrong length, carrier sense
# failed). Any other failure of a send (a timeout, a lost port, an ACK timeout) may have happened after the
# module started transmitting, so its airtime is counted: over-counting only delays the next receipt, while
# under-counting could break the hourly budget.
_NOT_ON_AIR_STATUSES = frozenset({
    "AT_ERROR", "AT_PARAM_ERROR", "AT_BUSY_ERROR", "AT_MODE_NO_SUPPORT", "AT_COMMAND_NOT_FOUND",
    "AT_TEST_PARAM_OVERFLOW", "AT_UNSUPPORTED_BAND", "NG 100", "NG 102",
})
_RECENTLY_SENT = 256  # (node, counter) pairs remembered to ignore a repeated request (at-least-once acks)


class ReceiptError(AgentError):
    """A receipt could not be set up or queued."""


class ReceiptRefused(ReceiptError, ValueError):
    """A receipt can never be sent within the channel's rules (longer than one transmission or the hourly budget)."""


# ---------------------------------------------------------------------------------------------------------------
# Config


class ReceiptsConfig(BaseModel):
    """The ``receipts:`` section: SOS receipts sent back to the caller's node."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    enabled: bool = Field(
        default=True,
        description="Send a receipt to an SOS node that asked for one (frame flag bit1), once the broker has "
        "acknowledged its SOS.",
    )
    max_per_hour_s: float | None = Field(
        default=None,
        gt=0,
        le=HOUR_S,
        description="Airtime budget of the gateway's transmissions per channel, in seconds of transmission per "
        "sliding hour. null: the ARIB STD-T108 limit of the channel (360 s on 922.4-923.4 MHz, none on "
        "920.6-922.2 MHz). A value may only be stricter than the channel's limit.",
    )
    carrier_sense: bool = Field(
        default=True,
        description="Whether the radio module does carrier sense (listen before talk, >= 5 ms) before each "
        "send. RUI3 AT+PSEND only runs CAD (when AT+CAD=1), not energy-based LBT, so true relies on the "
        "module's certification for Japan. false applies the no-LBT limits instead: at most 100 ms per "
        "transmission and 3.6 s per hour.",
    )
    retry_min_s: float = Field(
        default=2.0, gt=0, description="First wait after a failed send (module busy, timeout), in seconds."
    )
    retry_max_s: float = Field(
        default=300.0, gt=0, description="Longest wait between retries of a failing send, in seconds."
    )
    max_attempts: int = Field(
        default=10, ge=1, le=1000, description="Failed sends of one receipt after which it is given up (count)."
    )
    max_pending: int = Field(
        default=64,
        ge=1,
        le=10_000,
        description="Most receipts waiting to be sent (count); a request beyond this is dropped and counted.",
    )

    @model_validator(mode="after")
    def _retry_bounds(self) -> ReceiptsConfig:
        if self.retry_min_s > self.retry_max_s:
            raise ValueError(
                f"retry_min_s ({self.retry_min_s:g} s) is larger than retry_max_s ({self.retry_max_s:g} s); "
                "set retry_min_s <= retry_max_s"
            )
        return self

    def rules_for(self, frequency_hz: int, *, bw_khz: float = 125.0) -> ChannelRules:
        """The channel rules for the radio's frequency, with this section's own budget applied.

        Args:
            frequency_hz: the radio's channel centre, in Hz.
            bw_khz: the radio's LoRa bandwidth, in kHz.

        Raises:
            ReceiptError: the frequency is outside the Japanese LoRa channels, or ``max_per_hour_s`` is more than
                the channel allows.
        """
        try:
            rules = channel_rules(frequency_hz, bw_khz=bw_khz, carrier_sense=self.carrier_sense)
        except ValueError as exc:
            raise ReceiptError(f"receipts: {exc}") from exc
        if self.max_per_hour_s is None:
            return rules
        if rules.max_per_hour_s is not None and self.max_per_hour_s > rules.max_per_hour_s:
            raise ReceiptError(
                f"receipts.max_per_hour_s is {self.max_per_hour_s:g} s, but {rules.frequency_hz / 1e6:.1f} MHz "
                f"allows at most {rules.max_per_hour_s:g} s of transmission per hour (ARIB STD-T108); lower it "
                "or leave it out"
            )
        return replace(rules, max_per_hour_s=self.max_per_hour_s)


# ---------------------------------------------------------------------------------------------------------------
# Airtime budget


def _us(seconds: float) -> int:
    """Airtime in whole microseconds, rounded up: sums are exact, and never under-count."""
    return math.ceil(round(seconds * 1e6, 3))


class AirtimeBudget:
    """Tracks one channel's transmissions: the pause after each, and the hourly budget over a sliding window.

    Share one budget between every sender that transmits on the same channel. Thread-safe.

    A transmission is recorded when it has ended (``record`` is called after the module reported it sent); its
    airtime then counts until one hour after that moment. Counting it from its end rather than its start keeps it
    in the window slightly longer than it was on air, which errs on the safe side.

    Args:
        rules: the channel's limits (:func:`drivers.airtime.channel_rules`).
        clock: monotonic time source, in seconds (tests pass a fake).
    """

    def __init__(self, rules: ChannelRules, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = rules
        self._clock = clock
        self._lock = threading.Lock()
        self._sends: collections.deque[tuple[float, int]] = collections.deque()  # (end time s, airtime µs)
        self._used_us = 0
        self._last_end: float | None = None
        self._budget_us = None if rules.max_per_hour_s is None else math.floor(round(rules.max_per_hour_s * 1e6, 3))

    @property
    def used_last_hour_s(self) -> float:
        """Transmission time recorded in the last hour, in seconds."""
        with self._lock:
            self._expire(self._clock())
            return self._used_us / 1e6

    def check(self, airtime_s: float) -> None:
        """Refuse a transmission that could never be allowed.

        Raises:
            ValueError: ``airtime_s`` is negative, longer than one transmission may last, or longer than the
                whole hourly budget.
        """
        if airtime_s < 0:
            raise ValueError(f"airtime must be >= 0 s, got {airtime_s}")
        if airtime_s > self.rules.max_tx_s:
            raise ValueError(
                f"{airtime_s * 1000:.1f} ms on air exceeds the {self.rules.max_tx_s * 1000:g} ms per-transmission "
                f"limit at {self.rules.frequency_hz / 1e6:.1f} MHz (ARIB STD-T108)"
            )
        if self._budget_us is not None and _us(airtime_s) > self._budget_us:
            raise ValueError(
                f"{airtime_s * 1000:.1f} ms on air exceeds the whole hourly budget of "
                f"{self._budget_us / 1e6:g} s at {self.rules.frequency_hz / 1e6:.1f} MHz"
            )

    def wait_s(self, airtime_s: float) -> float:
        """How long a transmission of ``airtime_s`` seconds must wait before it may start.

        Returns:
            0.0 when it may start now; otherwise the seconds until both the pause after the previous
            transmission has passed and the hourly window has room for it.

        Raises:
            ValueError: the transmission could never be allowed (see :meth:`check`).
        """
        self.check(airtime_s)
        with self._lock:
            now = self._clock()
            self._expire(now)
            wait = 0.0
            if self._last_end is not None:
                wait = max(wait, self._last_end + self.rules.min_pause_s - now)
            if self._budget_us is not None:
                excess = self._used_us + _us(airtime_s) - self._budget_us
                if excess > 0:
                    # Oldest first: the send whose expiry frees enough room decides the wait. check() made sure
                    # the airtime alone fits, so freeing everything is always enough.
                    freed = 0
                    for end, used_us in self._sends:
                        freed += used_us
                        if freed >= excess:
                            wait = max(wait, end + HOUR_S - now)
                            break
            return max(wait, 0.0)

    def record(self, airtime_s: float) -> None:
        """Record a transmission of ``airtime_s`` seconds that has just ended (or may have happened).

        Raises:
            ValueError: ``airtime_s`` is negative.
        """
        if airtime_s < 0:
            raise ValueError(f"airtime must be >= 0 s, got {airtime_s}")
        with self._lock:
            now = self._clock()
            self._expire(now)
            used_us = _us(airtime_s)
            self._sends.append((now, used_us))
            self._used_us += used_us
            self._last_end = now

    def _expire(self, now: float) -> None:
        # A send that ended exactly one hour ago no longer counts: the window is (now - 1 h, now].
        while self._sends and now - self._sends[0][0] >= HOUR_S:
            _, used_us = self._sends.popleft()
            self._used_us -= used_us


# ---------------------------------------------------------------------------------------------------------------
# Sender


@dataclass
class _Receipt:
    node_id: int
    counter: int
    frame: bytes
    airtime_s: float
    requested_at: float
    attempts: int = 0
    deferred: bool = False


class ReceiptSender:
    """Queues receipts and sends each through the radio when the rules allow; never outside them.

    ``request`` may be called from any thread; ``pump`` from one thread at a time (a second caller waits).

    Args:
        transmit: sends one payload over the air and returns once the module reports it sent (e.g.
            :meth:`drivers.radio.RadioWorker.transmit`). Raises ``ModuleError``/``ModuleTimeout`` on failure, or
            ``ValueError`` for a payload the module cannot take.
        sf: the radio's spreading factor, 5–12.
        bw_khz: the radio's bandwidth, in kHz.
        cr: the radio's coding rate as RUI3 numbers it, 0–3 (4/5…4/8).
        preamble: the radio's preamble length, in symbols.
        frequency_hz: the radio's channel centre, in Hz.
        budget: the channel's airtime budget; share one between senders on the same channel. Default: a new
            budget for ``channel_rules(frequency_hz, bw_khz=bw_khz)``.
        clock: monotonic time source, in seconds; must be the budget's clock.
        retry_min_s: first wait after a failed send, in seconds.
        retry_max_s: longest wait between retries, in seconds.
        max_attempts: failed sends after which one receipt is given up.
        max_pending: most receipts queued; more are dropped and counted.
        on_air_len: bytes on air for a frame of n bytes (default: n, as RAK3172 ``AT+PSEND`` sends raw bytes; a
            link that hex-encodes frames passes ``lambda n: 2 * n``).
        wake: called after a request was queued, so the core's loop can pump without polling.
        rng: random source for the retry jitter.

    Attributes (counts since start):
        sent: receipts the module reported sent.
        deferred: receipts that had to wait for the rules (pause or hourly budget) at least once.
        retries: failed sends that will be tried again.
        failed: receipts given up (``max_attempts`` failures, or the module refused the payload).
        refused: requests refused because the receipt could never be sent within the rules.
        dropped: requests dropped because ``max_pending`` receipts were already waiting.
        duplicates: requests ignored because that receipt was already queued or recently sent.
    """

    def __init__(self, transmit: Callable[[bytes], None], *, sf: int, bw_khz: float, cr: int, preamble: int,
                 frequency_hz: int, budget: AirtimeBudget | None = None, clock: Callable[[], float] = time.monotonic,
                 retry_min_s: float = 2.0, retry_max_s: float = 300.0, max_attempts: int = 10,
                 max_pending: int = 64, on_air_len: Callable[[int], int] | None = None,
                 wake: Callable[[], None] | None = None, rng: random.Random | None = None) -> None:
        if not 0 < retry_min_s <= retry_max_s:
            raise ValueError("need 0 < retry_min_s <= retry_max_s")
        if max_attempts < 1 or max_pending < 1:
            raise ValueError("max_attempts and max_pending must be >= 1")
        time_on_air_ms(0, sf, bw_khz, cr, preamble)  # validates the radio settings now, not at the first SOS
        self._transmit = transmit
        self._sf, self._bw_khz, self._cr, self._preamble = sf, bw_khz, cr, preamble
        self.budget = budget if budget is not None else AirtimeBudget(
            channel_rules(frequency_hz, bw_khz=bw_khz), clock=clock)
        if self.budget.rules.frequency_hz != frequency_hz:
            raise ValueError(
                f"the budget is for {self.budget.rules.frequency_hz} Hz but the radio sends on {frequency_hz} Hz")
        self.rules = self.budget.rules
        self._clock = clock
        self._retry_min_s, self._retry_max_s = retry_min_s, retry_max_s
        self._max_attempts, self._max_pending = max_attempts, max_pending
        self._on_air_len = on_air_len or (lambda n: n)
        self._wake = wake
        self._rng = rng or random.Random()
        self._lock = threading.Lock()  # queue, counters
        self._pump_lock = threading.Lock()  # one pump at a time
        self._queue: collections.deque[_Receipt] = collections.deque()
        self._recent: collections.deque[tuple[int, int]] = collections.deque(maxlen=_RECENTLY_SENT)
        self._failures = 0
        self._retry_at: float | None = None
        self.sent = 0
        self.deferred = 0
        self.retries = 0
        self.failed = 0
        self.refused = 0
        self.dropped = 0
        self.duplicates = 0
        longest = self.airtime_s(mic=True)
        try:
            self.budget.check(longest)
        except ValueError as exc:
            # Not fatal: receipts without a MIC may still fit; each request is checked on its own.
            log.error("SOS receipts (%d bytes) cannot be sent with these radio settings: %s",
                      len(build_receipt(0, 0, bytes(16))), exc)

    # -- public API ------------------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Receipts queued, including one being sent."""
        with self._lock:
            return len(self._queue)

    def airtime_s(self, *, mic: bool) -> float:
        """Time on air of one receipt at the radio's settings, in seconds (with or without the 4-byte MIC)."""
        frame_len = len(build_receipt(0, 0, bytes(16) if mic else None))
        return self._airtime_of(frame_len)

    def stats(self) -> dict[str, float | int]:
        """Counters and budget use, for the gateway's status."""
        with self._lock:
            counts: dict[str, float | int] = {
                "pending": len(self._queue), "sent": self.sent, "deferred": self.deferred,
                "retries": self.retries, "failed": self.failed, "refused": self.refused,
                "dropped": self.dropped, "duplicates": self.duplicates,
            }
        counts["airtime_last_hour_s"] = round(self.budget.used_last_hour_s, 6)
        return counts

    def request(self, node_id: int, counter: int, key: bytes | None) -> None:
        """Queue a receipt for an SOS the broker has acknowledged.

        Args:
            node_id: the node that sent the SOS, uint32.
            counter: the acknowledged SOS frame's counter, uint32.
            key: the node's 16-byte key when it has one (the receipt then carries a MIC), else None.

        Raises:
            ReceiptRefused: the receipt is longer on air than one transmission may last (or than the whole hourly
                budget) at the radio's settings; it is never sent.
            FrameError: ``node_id``/``counter`` out of range or a key that is not 16 bytes.
        """
        frame = build_receipt(node_id, counter, key)
        airtime = self._airtime_of(len(frame))
        try:
            self.budget.check(airtime)
        except ValueError as exc:
            with self._lock:
                self.refused += 1
            log.error("receipt for node %08x counter %d refused: %s", node_id, counter, exc)
            raise ReceiptRefused(f"receipt for node {node_id:08x} counter {counter}: {exc}") from exc
        with self._lock:
            ident = (node_id, counter)
            if ident in self._recent or any((r.node_id, r.counter) == ident for r in self._queue):
                self.duplicates += 1
                log.debug("receipt for node %08x counter %d already queued or sent", node_id, counter)
                return
            if len(self._queue) >= self._max_pending:
                self.dropped += 1
                log.error("receipt for node %08x counter %d dropped: %d receipts already waiting", node_id,
                          counter, len(self._queue))
                return
            self._queue.append(_Receipt(node_id, counter, frame, airtime, self._clock()))
        log.info("receipt for node %08x counter %d queued (%.1f ms on air)", node_id, counter, airtime * 1000)
        if self._wake is not None:
            self._wake()

    def pump(self) -> float | None:
        """Send every queued receipt that the rules allow now, oldest first.

        Returns:
            None when the queue is empty; otherwise the seconds until the next receipt could go (the rest after
            a send, the hourly budget, or a retry backoff). The caller sleeps that long, or until woken.
        """
        with self._pump_lock:
            while True:
                with self._lock:
                    if not self._queue:
                        return None
                    item = self._queue[0]
                    now = self._clock()
                    if self._retry_at is not None and now < self._retry_at:
                        return self._retry_at - now
                    wait = self.budget.wait_s(item.airtime_s)
                    if wait > 0:
                        if not item.deferred:
                            item.deferred = True
                            self.deferred += 1
                            log.info("receipt for node %08x counter %d waits %.3f s for the %s rules",
                                     item.node_id, item.counter, wait, self.rules.describe())
                        return wait
                self._send(item)

    # -- internals -------------------------------------------------------------------------------------------
    def _airtime_of(self, frame_len: int) -> float:
        return time_on_air_ms(self._on_air_len(frame_len), self._sf, self._bw_khz, self._cr, self._preamble) / 1e3

    def _send(self, item: _Receipt) -> None:
        """One attempt; leaves the queue and counters as the outcome says. Runs under the pump lock."""
        try:
            self._transmit(item.frame)
        except ValueError as exc:
            # The module cannot take this payload at all; trying again cannot help.
            self._finish(item, failed=True)
            log.error("receipt for node %08x counter %d refused by the radio: %s", item.node_id, item.counter, exc)
            return
        except DriverError as exc:
            on_air = not (isinstance(exc, ModuleError) and exc.status in _NOT_ON_AIR_STATUSES)
            if on_air:
                # It may have gone out before the failure: count it, so the pause and budget stay safe.
                self.budget.record(item.airtime_s)
            item.attempts += 1
            if item.attempts >= self._max_attempts:
                self._finish(item, failed=True)
                log.error("receipt for node %08x counter %d given up after %d failed sends: %s", item.node_id,
                          item.counter, item.attempts, exc)
                return
            self._failures += 1
            delay = backoff_delay(self._failures, self._retry_min_s, self._retry_max_s, self._rng)
            with self._lock:
                self.retries += 1
                self._retry_at = self._clock() + delay
            log.warning("receipt for node %08x counter %d not sent (%s); retry in %.1f s", item.node_id,
                        item.counter, exc, delay)
            return
        self.budget.record(item.airtime_s)
        self._failures = 0
        self._finish(item, failed=False)
        log.info("receipt for node %08x counter %d sent after %.1f s", item.node_id, item.counter,
                 self._clock() - item.requested_at)

    def _finish(self, item: _Receipt, *, failed: bool) -> None:
        with self._lock:
            self._queue.popleft()  # only pump() removes items, and item is the head it took
            self._retry_at = None
            if failed:
                self.failed += 1
            else:
                self.sent += 1
                self._recent.append((item.node_id, item.counter))


def build_receipt_sender(config: ReceiptsConfig, transmit: Callable[[bytes], None], *, frequency_hz: int, sf: int,
                         bw_khz: float, cr: int, preamble: int, budget: AirtimeBudget | None = None,
                         clock: Callable[[], float] = time.monotonic, on_air_len: Callable[[int], int] | None = None,
                         wake: Callable[[], None] | None = None) -> ReceiptSender | None:
    """A sender for one radio from the ``receipts:`` section, or None when receipts are disabled.

    Args:
        config: the ``receipts:`` section.
        transmit: the radio's transmit function (see :class:`ReceiptSender`).
        frequency_hz: the radio's channel centre, in Hz.
        sf: spreading factor. bw_khz: bandwidth in kHz. cr: RUI3 coding rate 0–3. preamble: symbols.
        budget: a budget shared with other senders on the same channel; default: a new one from the config.
        clock: monotonic time source, in seconds.
        on_air_len: see :class:`ReceiptSender`.
        wake: see :class:`ReceiptSender`.

    Raises:
        ReceiptError: the frequency or the configured budget is outside the rules.
    """
    if not config.enabled:
        return None
    if budget is None:
        budget = AirtimeBudget(config.rules_for(frequency_hz, bw_khz=bw_khz), clock=clock)
    return ReceiptSender(transmit, sf=sf, bw_khz=bw_khz, cr=cr, preamble=preamble, frequency_hz=frequency_hz,
                         budget=budget, clock=clock, retry_min_s=config.retry_min_s, retry_max_s=config.retry_max_s,
                         max_attempts=config.max_attempts, max_pending=config.max_pending, on_air_len=on_air_len,
                         wake=wake)
