"""The airtime rules SOS receipts are sent under (ARIB STD-T108, docs: agent.gateway.receipts): the ``receipts:``
config section, which picks the channel's limits, and the budget that holds one channel's transmissions to them
over a sliding hour.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.errors import AgentError
from drivers.airtime import ChannelRules, channel_rules
from drivers.settings import N_, Count, Seconds, problem

#: Length of the sliding window of the hourly airtime budget, in seconds.
HOUR_S = 3600.0
_HOUR_US = round(HOUR_S * 1e6)
# A snapshot merges the transmissions that ended within one bin into one entry stamped with the latest end, so it
# stays small (at most about 61 entries per hour) and errs on the safe side by at most this long.
_SNAPSHOT_BIN_US = 60_000_000


class ReceiptError(AgentError):
    """A receipt could not be set up or queued."""


class ReceiptRefused(ReceiptError, ValueError):
    """A receipt can never be sent within the channel's rules (longer than one transmission or the hourly budget)."""


class ReceiptsConfig(BaseModel):
    """The ``receipts:`` section: SOS receipts sent back to the caller's node."""

    # defer_build: as drivers.settings.Section (no validator in the long-running process).
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, defer_build=True)

    enabled: bool = Field(
        default=True,
        description=N_("Send a receipt to an SOS node that asked for one (frame flag bit1), once the broker has "
        "acknowledged its SOS."),
    )
    max_per_hour_s: float | None = Field(
        default=None,
        gt=0,
        le=HOUR_S,
        description=N_("Airtime budget of the gateway's transmissions per channel, in seconds of transmission per "
        "sliding hour. null: the ARIB STD-T108 limit of the channel (360 s on 922.4-923.4 MHz, none on "
        "920.6-922.2 MHz). A value may only be stricter than the channel's limit."),
    )
    carrier_sense: bool = Field(
        default=True,
        description=N_("Whether the radio module does carrier sense (listen before talk, >= 5 ms) before each "
        "send. RUI3 AT+PSEND only runs CAD (when AT+CAD=1), not energy-based LBT, so true relies on the "
        "module's certification for Japan. false applies the no-LBT limits instead: at most 100 ms per "
        "transmission and 3.6 s per hour."),
    )
    retry_min_s: Seconds = Field(
        2.0, description=N_("First wait after a failed send (module busy, timeout), in seconds.")
    )
    retry_max_s: Seconds = Field(300.0, description=N_("Longest wait between retries of a failing send, in seconds."))
    max_attempts: Count = Field(
        10, le=1000, description=N_("Failed sends of one receipt after which it is given up (count)."))
    max_pending: Count = Field(
        64, le=10_000,
        description=N_("Most receipts waiting to be sent (count); a request beyond this is dropped and counted."),
    )
    max_age_s: float = Field(
        default=7200.0,
        ge=60,
        description=N_("A receipt not sent this many seconds after its request is dropped and counted: by then the "
        "node has sent its SOS again (a new counter, with a receipt of its own). Longer than the hourly window, "
        "so that waiting for the hourly budget alone does not drop a receipt."),
    )

    @model_validator(mode="after")
    def _retry_bounds(self) -> ReceiptsConfig:
        if self.retry_min_s > self.retry_max_s:
            raise problem(N_("retry_min_s ({low} s) is larger than retry_max_s ({high} s)"),
                          N_("set retry_min_s <= retry_max_s"), subloc=("retry_min_s",), low=f"{self.retry_min_s:g}",
                          high=f"{self.retry_max_s:g}")
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
