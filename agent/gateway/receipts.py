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

Across restarts. :meth:`ReceiptSender.snapshot` returns the airtime spent in the sliding hour (how long before the
snapshot each transmission ended) and the receipts still waiting, stamped with ``CLOCK_BOOTTIME`` and the boot id;
the edge stores it in the journal with every commit, and :meth:`ReceiptSender.restore` loads it at start. Within
one boot the time between snapshot and restore is known exactly; after a reboot (or with no boot id) it is not, so
it is taken as zero: every transmission counts as if it had ended no earlier than the snapshot says, which can only
keep airtime in the window longer than needed, never shorter. A damaged or hostile snapshot is refused whole
(counted in ``restore_failed``, logged) and the sender starts empty. A receipt that is dropped (queue full, given up,
refused by the radio, older than ``max_age_s``) is counted and logged, rate-limited.

Errors::

    AgentError
     └── ReceiptError                   a receipt could not be set up or queued
          └── ReceiptRefused (ValueError)  a receipt can never be sent within the rules (too long)
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import random
import re
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.errors import AgentError
from agent.ratelog import RateLimitedLog
from drivers.airtime import ChannelRules, channel_rules, time_on_air_ms
from drivers.codec.frame import build_receipt
from drivers.errors import DriverError, ModuleError
from drivers.radio import backoff_delay

__all__ = [
    "HOUR_S",
    "SNAPSHOT_SCHEMA",
    "AirtimeBudget",
    "ReceiptError",
    "ReceiptRefused",
    "ReceiptSender",
    "ReceiptsConfig",
    "boot_clock",
    "build_receipt_sender",
]

log = logging.getLogger(__name__)

#: Length of the sliding window of the hourly airtime budget, in seconds.
HOUR_S = 3600.0
#: ``schema`` of :meth:`ReceiptSender.snapshot`.
SNAPSHOT_SCHEMA = "denen.receipts/1"

# Module status lines that mean "refused, nothing went on air" (RUI3 §1, ES920LR §2: wrong length, carrier sense
# failed). Any other failure of a send (a timeout, a lost port, an ACK timeout) may have happened after the
# module started transmitting, so its airtime is counted: over-counting only delays the next receipt, while
# under-counting could break the hourly budget.
_NOT_ON_AIR_STATUSES = frozenset({
    "AT_ERROR", "AT_PARAM_ERROR", "AT_BUSY_ERROR", "AT_MODE_NO_SUPPORT", "AT_COMMAND_NOT_FOUND",
    "AT_TEST_PARAM_OVERFLOW", "AT_UNSUPPORTED_BAND", "NG 100", "NG 102",
})
_RECENTLY_SENT = 256  # (node, counter) pairs remembered to ignore a repeated request (at-least-once acks)
_HOUR_US = round(HOUR_S * 1e6)
# A snapshot merges the transmissions that ended within one bin into one entry stamped with the latest end, so it
# stays small (at most about 61 entries per hour) and errs on the safe side by at most this long.
_SNAPSHOT_BIN_US = 60_000_000
_SNAPSHOT_MAX_SENDS = 4096  # entries a snapshot may hold; more is damage
_SNAPSHOT_MAX_PENDING = 10_000  # the largest max_pending
_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
_BOOT_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


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
    max_age_s: float = Field(
        default=7200.0,
        ge=60,
        description="A receipt not sent this many seconds after its request is dropped and counted: by then the "
        "node has sent its SOS again (a new counter, with a receipt of its own). Longer than the hourly window, "
        "so that waiting for the hourly budget alone does not drop a receipt.",
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
# Time that survives a restart


@functools.cache
def _boot_id() -> str | None:
    try:
        with open(_BOOT_ID_PATH, encoding="ascii") as f:
            text = f.read(64).strip()
    except (OSError, ValueError):
        return None
    return text if _BOOT_ID_RE.fullmatch(text) else None


def boot_clock() -> tuple[str | None, int]:
    """This boot's id and ``CLOCK_BOOTTIME``, in µs: a time that runs on across process restarts (and suspend).

    Returns:
        ``(boot_id, boottime_us)``; the boot id (``/proc/sys/kernel/random/boot_id``, read once) is None where the
        kernel offers none, and then no time can be carried across a restart.
    """
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return None, time.monotonic_ns() // 1000
    return _boot_id(), time.clock_gettime_ns(boottime) // 1000


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
        self._restored = False

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

    def snapshot(self) -> list[list[int]]:
        """The transmissions in the window as ``[[ago_us, airtime_us], ...]``, oldest first.

        ``ago_us`` is how long before now a transmission ended, in µs, rounded down. Transmissions that ended within
        one 60 s bin are merged into one entry with the bin's latest end: the snapshot stays small, and merging only
        keeps airtime in the window longer. No I/O.
        """
        with self._lock:
            now = self._clock()
            self._expire(now)
            bins: dict[int, list[int]] = {}
            for end, used_us in self._sends:
                ago_us = max(0, math.floor((now - end) * 1e6))
                entry = bins.setdefault(ago_us // _SNAPSHOT_BIN_US, [ago_us, 0])
                entry[0] = min(entry[0], ago_us)
                entry[1] += used_us
        return [bins[k] for k in sorted(bins, reverse=True)]

    def restore(self, sends: list[tuple[int, int]]) -> bool:
        """Count transmissions from before a restart: ``(ago_us, airtime_us)`` pairs, ``ago_us`` from now.

        Pairs an hour old or older are left out. A budget shared by several senders takes the first restore only
        (their snapshots hold the same transmissions); later calls change nothing.

        Returns:
            Whether the transmissions were added (False: this budget was restored before).
        """
        with self._lock:
            if self._restored:
                return False
            self._restored = True
            now = self._clock()
            merged = list(self._sends)
            for ago_us, used_us in sends:
                if 0 <= ago_us < _HOUR_US and used_us > 0:
                    merged.append((now - ago_us / 1e6, used_us))
            merged.sort(key=lambda s: s[0])
            self._sends = collections.deque(merged)
            self._used_us = sum(u for _, u in merged)
            if merged:
                self._last_end = max(merged[-1][0], self._last_end if self._last_end is not None else -math.inf)
            self._expire(now)
            return True

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


@dataclass(frozen=True)
class _Snapshot:
    boot_id: str | None
    boottime_us: int
    frequency_hz: int
    sends: list[tuple[int, int]]  # (µs before the snapshot the transmission ended, µs on air)
    pending: list[tuple[bytes, int, int]]  # (frame, µs since its request, failed attempts)


class ReceiptSender:
    """Queues receipts and sends each through the radio when the rules allow; never outside them.

    ``request`` may be called from any thread; ``pump`` from one thread at a time (a second caller waits);
    ``snapshot`` from any thread; ``restore`` once, right after construction.

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
        boot_clock: ``() -> (boot id, µs)`` on a clock that runs on across process restarts within one boot
            (default :func:`boot_clock`, ``CLOCK_BOOTTIME``); stamps snapshots. Tests pass a fake.
        retry_min_s: first wait after a failed send, in seconds.
        retry_max_s: longest wait between retries, in seconds.
        max_attempts: failed sends after which one receipt is given up.
        max_pending: most receipts queued; more are dropped and counted.
        max_age_s: seconds after its request at which a receipt not yet sent is dropped and counted; None: never.
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
        expired: receipts dropped because they were not sent within ``max_age_s`` of their request.
        duplicates: requests ignored because that receipt was already queued or recently sent.
        restore_failed: snapshots refused as damaged (the sender started empty instead).
        restore_unknown_gap: restores after a reboot or without a usable boot clock, where the time since the
            snapshot was unknown and taken as zero.
        revision: grows whenever what :meth:`snapshot` returns changes other than by time passing (a receipt
            queued, sent, dropped or restored; airtime recorded): the owner saves a snapshot when it moved.
    """

    def __init__(self, transmit: Callable[[bytes], None], *, sf: int, bw_khz: float, cr: int, preamble: int,
                 frequency_hz: int, budget: AirtimeBudget | None = None, clock: Callable[[], float] = time.monotonic,
                 boot_clock: Callable[[], tuple[str | None, int]] = boot_clock,
                 retry_min_s: float = 2.0, retry_max_s: float = 300.0, max_attempts: int = 10,
                 max_pending: int = 64, max_age_s: float | None = 7200.0,
                 on_air_len: Callable[[int], int] | None = None,
                 wake: Callable[[], None] | None = None, rng: random.Random | None = None) -> None:
        if not 0 < retry_min_s <= retry_max_s:
            raise ValueError("need 0 < retry_min_s <= retry_max_s")
        if max_attempts < 1 or max_pending < 1:
            raise ValueError("max_attempts and max_pending must be >= 1")
        if max_age_s is not None and not max_age_s > 0:
            raise ValueError("max_age_s must be > 0 or None")
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
        self._boot_clock = boot_clock
        boot_clock()  # the boot id is read once, here, so that snapshot() does no I/O
        self._retry_min_s, self._retry_max_s = retry_min_s, retry_max_s
        self._max_attempts, self._max_pending = max_attempts, max_pending
        self._max_age_s = max_age_s
        self._on_air_len = on_air_len or (lambda n: n)
        self._wake = wake
        self._rng = rng or random.Random()
        self._lock = threading.Lock()  # queue, counters
        self._pump_lock = threading.Lock()  # one pump at a time
        self._log_lock = threading.Lock()  # the rate-limited log is used from request() and pump() threads
        self._drops = RateLimitedLog(log, clock=clock)
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
        self.expired = 0
        self.duplicates = 0
        self.restore_failed = 0
        self.restore_unknown_gap = 0
        self.revision = 0
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
                "dropped": self.dropped, "expired": self.expired, "duplicates": self.duplicates,
                "restore_failed": self.restore_failed, "restore_unknown_gap": self.restore_unknown_gap,
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
                waiting = len(self._queue)
            else:
                self._queue.append(_Receipt(node_id, counter, frame, airtime, self._clock()))
                self.revision += 1
                waiting = 0
        if waiting:
            self._log_drop("queue_full", node_id, "receipt for node %08x counter %d dropped: %d receipts already "
                           "waiting (receipts.max_pending)", node_id, counter, waiting)
            return
        log.info("receipt for node %08x counter %d queued (%.1f ms on air)", node_id, counter, airtime * 1000)
        if self._wake is not None:
            self._wake()

    def pump(self) -> float | None:
        """Send every queued receipt that the rules allow now, oldest first.

        Receipts older than ``max_age_s`` are dropped first (counted in ``expired``).

        Returns:
            None when the queue is empty; otherwise the seconds until the next receipt could go (the rest after
            a send, the hourly budget, or a retry backoff). The caller sleeps that long, or until woken.
        """
        with self._pump_lock:
            with self._log_lock:
                self._drops.tick()
            while True:
                with self._lock:
                    now = self._clock()
                    old = self._drop_old(now)
                    item = self._queue[0] if self._queue else None
                    wait = None
                    if item is not None:
                        if self._retry_at is not None and now < self._retry_at:
                            wait = self._retry_at - now
                        else:
                            wait = self.budget.wait_s(item.airtime_s)
                            if wait > 0 and not item.deferred:
                                item.deferred = True
                                self.deferred += 1
                                log.info("receipt for node %08x counter %d waits %.3f s for the %s rules",
                                         item.node_id, item.counter, wait, self.rules.describe())
                for r, age in old:
                    self._log_drop("too_old", r.node_id, "receipt for node %08x counter %d dropped: not sent "
                                   "%.0f s after its request (receipts.max_age_s)", r.node_id, r.counter, age)
                if item is None:
                    return None
                if wait > 0:
                    return wait
                self._send(item)

    def snapshot(self) -> dict[str, Any]:
        """What must outlive a restart, as a JSON-able dict; no I/O, cheap (about 61 airtime entries at most).

        Format (``schema`` :data:`SNAPSHOT_SCHEMA`)::

            {"schema": "denen.receipts/1",
             "boot_id": "<this boot's id, or null>", "boottime_us": <CLOCK_BOOTTIME when taken, µs>,
             "frequency_hz": <the radio's channel>,
             "airtime": [[ago_us, airtime_us], ...],      # transmissions in the sliding hour, oldest first:
                                                           #   ended ago_us before the snapshot, airtime_us on air
             "pending": [{"frame": "<hex>", "age_us": <since its request>, "attempts": <failed sends>}, ...]}

        The airtime is the channel's budget (shared with other senders on the channel), merged into 60 s bins.
        """
        airtime = self.budget.snapshot()
        with self._lock:
            now = self._clock()
            boot_id, boottime_us = self._boot_clock()
            pending = [{"frame": r.frame.hex(), "age_us": max(0, math.floor((now - r.requested_at) * 1e6)),
                        "attempts": r.attempts} for r in self._queue]
        return {"schema": SNAPSHOT_SCHEMA, "boot_id": boot_id, "boottime_us": boottime_us,
                "frequency_hz": self.rules.frequency_hz, "airtime": airtime, "pending": pending}

    def restore(self, snapshot: Any) -> None:
        """Load a :meth:`snapshot` taken before a restart. Call it once, right after construction. Never raises.

        The airtime goes back into the budget (once per budget: senders sharing one hold the same airtime), so
        the sliding hour holds across the restart; waiting receipts go back into the queue ahead of any new
        ones, with their age and failed attempts. The time between snapshot and restore is measured on
        ``CLOCK_BOOTTIME`` when the boot id is the same; otherwise (a reboot, no boot id, a clock that went
        back) it is taken as zero, which keeps airtime in the window at least as long as it really is
        (counted in ``restore_unknown_gap``). A snapshot that is not exactly of this format, or whose values
        are impossible, is refused whole: logged, counted in ``restore_failed``, and the sender stays empty.
        Receipts older than ``max_age_s`` or beyond ``max_pending`` are dropped and counted.
        """
        try:
            snap = _parse_snapshot(snapshot)
        except Exception as exc:  # noqa: BLE001 - a damaged snapshot must cost its content, never the agent
            with self._lock:
                self.restore_failed += 1
            log.error("receipts: snapshot not restored (%s); the airtime of the last hour and the waiting receipts "
                      "start empty", exc)
            return
        boot_id, boottime_us = self._boot_clock()
        if snap.boot_id is not None and snap.boot_id == boot_id and boottime_us >= snap.boottime_us:
            gap_us: int | None = boottime_us - snap.boottime_us
        else:
            gap_us = None
            if snap.sends or snap.pending:
                with self._lock:
                    self.restore_unknown_gap += 1
                if snap.boot_id is None or boot_id is None:
                    why = "no boot id to compare"
                elif snap.boot_id != boot_id:
                    why = "the machine rebooted since the snapshot"
                else:
                    why = "the boot clock went back since the snapshot"
                log.warning("receipts: %s, so the time in between is unknown and taken as "
                            "zero: %.3f s of airtime counts as if it had ended when the snapshot says", why,
                            sum(u for _, u in snap.sends) / 1e6)
        if snap.frequency_hz != self.rules.frequency_hz and snap.sends:
            # The hourly limit is per channel, but keeping the airtime can only make a receipt wait longer.
            log.info("receipts: the snapshot's airtime was spent on %.1f MHz, now %.1f MHz; it still counts",
                     snap.frequency_hz / 1e6, self.rules.frequency_hz / 1e6)
        gap = gap_us or 0
        sends = [(ago + gap, used) for ago, used in snap.sends]
        restored_airtime = self.budget.restore(sends)
        now = self._clock()
        old: list[tuple[int, int, float]] = []
        full: list[tuple[int, int]] = []
        refused: list[tuple[int, int, str]] = []
        queued = 0
        with self._lock:
            idents = {(r.node_id, r.counter) for r in self._queue} | set(self._recent)
            items: list[_Receipt] = []
            for frame, age_us, attempts in snap.pending:
                node_id, counter = struct.unpack_from(">II", frame, 1)
                if (node_id, counter) in idents:
                    self.duplicates += 1
                    continue
                age_s = (age_us + gap) / 1e6
                if self._max_age_s is not None and age_s > self._max_age_s:
                    self.expired += 1
                    old.append((node_id, counter, age_s))
                    continue
                airtime = self._airtime_of(len(frame))
                try:
                    self.budget.check(airtime)
                except ValueError as exc:
                    self.refused += 1
                    refused.append((node_id, counter, str(exc)))
                    continue
                if len(items) + len(self._queue) >= self._max_pending:
                    self.dropped += 1
                    full.append((node_id, counter))
                    continue
                idents.add((node_id, counter))
                items.append(_Receipt(node_id, counter, frame, airtime, now - age_s, attempts=attempts))
            self._queue.extendleft(reversed(items))
            queued = len(items)
            self.revision += 1
        for node_id, counter, age_s in old:
            self._log_drop("too_old", node_id, "receipt for node %08x counter %d dropped at restore: not sent %.0f s "
                           "after its request (receipts.max_age_s)", node_id, counter, age_s)
        for node_id, counter in full:
            self._log_drop("queue_full", node_id, "receipt for node %08x counter %d dropped at restore: %d receipts "
                           "already waiting (receipts.max_pending)", node_id, counter, self._max_pending)
        for node_id, counter, why in refused:
            self._log_drop("refused", node_id, "receipt for node %08x counter %d dropped at restore: it can no "
                           "longer be sent with these radio settings: %s", node_id, counter, why)
        log.info("receipts: restored %d waiting receipt(s) and %s s of airtime in the sliding hour (%s)", queued,
                 f"{self.budget.used_last_hour_s:.3f}" if restored_airtime else "the shared budget's",
                 "time since the snapshot unknown, taken as 0" if gap_us is None
                 else f"{gap_us / 1e6:.1f} s since the snapshot")
        if queued and self._wake is not None:
            self._wake()

    # -- internals -------------------------------------------------------------------------------------------
    def _airtime_of(self, frame_len: int) -> float:
        return time_on_air_ms(self._on_air_len(frame_len), self._sf, self._bw_khz, self._cr, self._preamble) / 1e3

    def _log_drop(self, reason: str, node_id: int, msg: str, *args: object) -> None:
        """An error line for a receipt that will not be sent: the first per node and reason in a minute in full."""
        with self._log_lock:
            self._drops.warning(reason, f"node {node_id:08x}", "receipts", msg, *args, level=logging.ERROR)

    def _drop_old(self, now: float) -> list[tuple[_Receipt, float]]:
        """Remove receipts older than max_age_s from the head of the queue (oldest first). Under ``_lock``."""
        out = []
        while self._queue and self._max_age_s is not None:
            head = self._queue[0]
            age = now - head.requested_at
            if age <= self._max_age_s:
                break
            self._queue.popleft()
            self._retry_at = None
            self.expired += 1
            self.revision += 1
            out.append((head, age))
        return out

    def _send(self, item: _Receipt) -> None:
        """One attempt; leaves the queue and counters as the outcome says. Runs under the pump lock."""
        try:
            self._transmit(item.frame)
        except ValueError as exc:
            # The module cannot take this payload at all; trying again cannot help.
            self._finish(item, failed=True)
            self._log_drop("radio_refused", item.node_id, "receipt for node %08x counter %d dropped: refused by "
                           "the radio: %s", item.node_id, item.counter, exc)
            return
        except DriverError as exc:
            on_air = not (isinstance(exc, ModuleError) and exc.status in _NOT_ON_AIR_STATUSES)
            if on_air:
                # It may have gone out before the failure: count it, so the pause and budget stay safe.
                self.budget.record(item.airtime_s)
            item.attempts += 1
            if item.attempts >= self._max_attempts:
                self._finish(item, failed=True)
                self._log_drop("given_up", item.node_id, "receipt for node %08x counter %d dropped: given up "
                               "after %d failed sends: %s", item.node_id, item.counter, item.attempts, exc)
                return
            self._failures += 1
            delay = backoff_delay(self._failures, self._retry_min_s, self._retry_max_s, self._rng)
            with self._lock:
                self.retries += 1
                self.revision += 1
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
            # Only pump() removes items while it runs, and item is the head it took (_drop_old runs in pump too).
            self._queue.popleft()
            self._retry_at = None
            self.revision += 1
            if failed:
                self.failed += 1
            else:
                self.sent += 1
                self._recent.append((item.node_id, item.counter))


def _int(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{what} must be a whole number {low}..{high}, got {str(value)[:40]!r}")
    return value


def _parse_snapshot(snap: object) -> _Snapshot:
    """Check a snapshot field by field; ValueError naming the first problem. Unknown keys are ignored."""
    if not isinstance(snap, Mapping):
        raise ValueError(f"not an object but {type(snap).__name__}")
    if snap.get("schema") != SNAPSHOT_SCHEMA:
        raise ValueError(f"schema is {str(snap.get('schema'))[:40]!r}, expected {SNAPSHOT_SCHEMA!r}")
    boot_id = snap.get("boot_id")
    if boot_id is not None and not (isinstance(boot_id, str) and _BOOT_ID_RE.fullmatch(boot_id)):
        raise ValueError(f"boot_id {str(boot_id)[:40]!r} is not a boot id")
    boottime_us = _int(snap.get("boottime_us"), "boottime_us", 0, 2**63 - 1)
    frequency_hz = _int(snap.get("frequency_hz"), "frequency_hz", 1, 10**10)
    sends_in = snap.get("airtime")
    if not isinstance(sends_in, list) or len(sends_in) > _SNAPSHOT_MAX_SENDS:
        raise ValueError(f"airtime must be a list of at most {_SNAPSHOT_MAX_SENDS} entries")
    sends: list[tuple[int, int]] = []
    for i, entry in enumerate(sends_in):
        if not isinstance(entry, list) or len(entry) != 2:
            raise ValueError(f"airtime[{i}] must be [ago_us, airtime_us]")
        sends.append((_int(entry[0], f"airtime[{i}] ago_us", 0, 2**63 - 1),
                      _int(entry[1], f"airtime[{i}] airtime_us", 1, _HOUR_US)))
    if sum(u for _, u in sends) > _HOUR_US:
        raise ValueError("airtime adds up to more than an hour of transmission in one hour")
    pending_in = snap.get("pending")
    if not isinstance(pending_in, list) or len(pending_in) > _SNAPSHOT_MAX_PENDING:
        raise ValueError(f"pending must be a list of at most {_SNAPSHOT_MAX_PENDING} entries")
    pending: list[tuple[bytes, int, int]] = []
    for i, entry in enumerate(pending_in):
        if not isinstance(entry, Mapping):
            raise ValueError(f"pending[{i}] must be an object")
        text = entry.get("frame")
        if not isinstance(text, str) or len(text) > 64:
            raise ValueError(f"pending[{i}].frame must be hex text")
        try:
            frame = bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"pending[{i}].frame is not hex: {text[:40]!r}") from None
        # Only a receipt can come back: the header must be exactly the one build_receipt makes for its node and
        # counter; the MIC (when the flag says there is one) cannot be checked without the key.
        if len(frame) not in (10, 14):
            raise ValueError(f"pending[{i}].frame is {len(frame)} bytes, a receipt is 10 or 14")
        node_id, counter = struct.unpack_from(">II", frame, 1)
        expected = build_receipt(node_id, counter, bytes(16) if len(frame) == 14 else None)
        if frame[:10] != expected[:10] or len(frame) != len(expected):
            raise ValueError(f"pending[{i}].frame {text[:40]} is not a receipt frame")
        pending.append((frame, _int(entry.get("age_us"), f"pending[{i}].age_us", 0, 2**63 - 1),
                        _int(entry.get("attempts"), f"pending[{i}].attempts", 0, 1000)))
    return _Snapshot(boot_id, boottime_us, frequency_hz, sends, pending)


def build_receipt_sender(config: ReceiptsConfig, transmit: Callable[[bytes], None], *, frequency_hz: int, sf: int,
                         bw_khz: float, cr: int, preamble: int, budget: AirtimeBudget | None = None,
                         clock: Callable[[], float] = time.monotonic,
                         boot_clock: Callable[[], tuple[str | None, int]] = boot_clock,
                         on_air_len: Callable[[int], int] | None = None,
                         wake: Callable[[], None] | None = None) -> ReceiptSender | None:
    """A sender for one radio from the ``receipts:`` section, or None when receipts are disabled.

    Args:
        config: the ``receipts:`` section.
        transmit: the radio's transmit function (see :class:`ReceiptSender`).
        frequency_hz: the radio's channel centre, in Hz.
        sf: spreading factor. bw_khz: bandwidth in kHz. cr: RUI3 coding rate 0–3. preamble: symbols.
        budget: a budget shared with other senders on the same channel; default: a new one from the config.
        clock: monotonic time source, in seconds.
        boot_clock: see :class:`ReceiptSender`.
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
                         budget=budget, clock=clock, boot_clock=boot_clock, retry_min_s=config.retry_min_s,
                         retry_max_s=config.retry_max_s, max_attempts=config.max_attempts,
                         max_pending=config.max_pending, max_age_s=config.max_age_s, on_air_len=on_air_len,
                         wake=wake)
