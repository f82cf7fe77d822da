"""SOS receipts: the short downlink that tells a caller "your call got through", sent within ARIB STD-T108.

Once the broker has acknowledged an SOS whose frame asked for a receipt (docs/protocols.md §9, flag bit1), the gateway
core calls :meth:`ReceiptSender.request`. The sender queues a receipt frame (``build_receipt``: downlink flag, MIC
when the node has a key, kind 0x7F, empty body) and sends it through the radio as soon as Japan's 920 MHz rules
allow (docs/protocols.md §6, :func:`drivers.airtime.channel_rules`):

* each transmission is at most the channel's per-transmission limit (``max_tx_s``): a receipt whose time on air
  (docs/protocols.md §8, at the radio's SF/BW/CR/preamble) is longer is refused with :class:`ReceiptRefused` and never
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

The channel's rules, the ``receipts:`` section, the airtime budget and the receipt errors (``ReceiptError``,
``ReceiptRefused``: drawn in the error tree in drivers/errors.py) are in agent.gateway.receipt_airtime; the
snapshot's check and the boot clock in agent.gateway.receipt_state.
"""

from __future__ import annotations

import collections
import logging
import math
import random
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.gateway.receipt_airtime import AirtimeBudget, ReceiptRefused, ReceiptsConfig
from agent.gateway.receipt_state import (
    SNAPSHOT_SCHEMA,
    Snapshot,
    boot_clock,
    parse_snapshot,
)
from agent.i18n import N_, _
from agent.ratelog import RateLimitedLog
from drivers.airtime import channel_rules, time_on_air_ms
from drivers.codec.frame import build_receipt
from drivers.errors import DriverError, ModuleError
from drivers.radio import backoff_delay
from drivers.settings import Text

__all__ = ["ReceiptSender", "build_receipt_sender"]

log = logging.getLogger(__name__)

# Module status lines that mean "refused, nothing went on air" (RUI3 §1, ES920LR §2: wrong length, carrier sense
# failed). Any other failure of a send (a timeout, a lost port, an ACK timeout) may have happened after the
# module started transmitting, so its airtime is counted: over-counting only delays the next receipt, while
# under-counting could break the hourly budget.
_NOT_ON_AIR_STATUSES = frozenset({
    "AT_ERROR", "AT_PARAM_ERROR", "AT_BUSY_ERROR", "AT_MODE_NO_SUPPORT", "AT_COMMAND_NOT_FOUND",
    "AT_TEST_PARAM_OVERFLOW", "AT_UNSUPPORTED_BAND", "NG 100", "NG 102",
})
_RECENTLY_SENT = 256  # (node, counter) pairs remembered to ignore a repeated request (at-least-once acks)
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
    not_before: float = 0.0  # clock time before which it is not sent (a backup gateway's delay)


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
            log.error("%s", _("SOS receipts ({size} bytes) cannot be sent with these radio settings: {error}").format(
                size=len(build_receipt(0, 0, bytes(16))), error=exc))

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

    def request(self, node_id: int, counter: int, key: bytes | None, *, delay_s: float = 0.0) -> None:
        """Queue a receipt for an SOS the broker has acknowledged.

        Args:
            node_id: the node that sent the SOS, uint32.
            counter: the acknowledged SOS frame's counter, uint32.
            key: the node's 16-byte key when it has one (the receipt then carries a MIC), else None.
            delay_s: seconds before it may go on air (a backup gateway's wait, :mod:`agent.gateway.receipt_backup`);
                not kept across a restart, where a waiting receipt goes as soon as the rules allow.

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
            log.error("%s", _("receipt for node {node} counter {counter} refused: {error}").format(
                node=f"{node_id:08x}", counter=counter, error=exc))
            raise ReceiptRefused(_("receipt for node {node} counter {counter}: {error}").format(
                node=f"{node_id:08x}", counter=counter, error=exc)) from exc
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
                now = self._clock()
                self._queue.append(_Receipt(node_id, counter, frame, airtime, now, not_before=now + delay_s))
                self.revision += 1
                waiting = 0
        if waiting:
            self._log_drop("queue_full", node_id, N_("receipt for node {node} counter {counter} dropped: {waiting} "
                                                     "receipts already waiting (receipts.max_pending)"),
                           counter=counter, waiting=waiting)
            return
        log.info("%s", _("receipt for node {node} counter {counter} queued ({ms} ms on air)").format(
            node=f"{node_id:08x}", counter=counter, ms=f"{airtime * 1000:.1f}"))
        if self._wake is not None:
            self._wake()

    def pump(self) -> float | None:
        """Send every queued receipt that the rules allow now, oldest first among those whose delay has passed.

        Receipts older than ``max_age_s`` are dropped first (counted in ``expired``).

        Returns:
            None when the queue is empty; otherwise the seconds until the next receipt could go (the rest after
            a send, the hourly budget, a retry backoff, or a backup delay). The caller sleeps that long, or until woken.
        """
        with self._pump_lock:
            with self._log_lock:
                self._drops.tick()
            while True:
                with self._lock:
                    now = self._clock()
                    old = self._drop_old(now)
                    item, wait = self._next_due(now)
                for r, age in old:
                    self._log_drop("too_old", r.node_id, N_("receipt for node {node} counter {counter} dropped: not "
                                                            "sent {age} s after its request (receipts.max_age_s)"),
                                   counter=r.counter, age=f"{age:.0f}")
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
            snap = parse_snapshot(snapshot)
        except Exception as exc:  # noqa: BLE001 - a damaged snapshot must cost its content, never the agent
            with self._lock:
                self.restore_failed += 1
            log.error("%s", _("receipts: snapshot not restored ({error}); the airtime of the last hour and the "
                              "waiting receipts start empty").format(error=exc))
            return
        gap_us = self._time_since(snap)
        if snap.frequency_hz != self.rules.frequency_hz and snap.sends:
            # The hourly limit is per channel, but keeping the airtime can only make a receipt wait longer.
            log.info("%s", _("receipts: the snapshot's airtime was spent on {was} MHz, now {now} MHz; it still "
                             "counts").format(was=f"{snap.frequency_hz / 1e6:.1f}",
                                              now=f"{self.rules.frequency_hz / 1e6:.1f}"))
        gap = gap_us or 0
        sends = [(ago + gap, used) for ago, used in snap.sends]
        restored_airtime = self.budget.restore(sends)
        queued = self._requeue(snap.pending, gap)
        since = (_("time since the snapshot unknown, taken as 0") if gap_us is None
                 else _("{seconds} s since the snapshot").format(seconds=f"{gap_us / 1e6:.1f}"))
        if restored_airtime:
            restored = _("receipts: restored {count} waiting receipt(s) and {seconds} s of airtime in the sliding "
                         "hour ({since})").format(count=queued, seconds=f"{self.budget.used_last_hour_s:.3f}",
                                                  since=since)
        else:
            restored = _("receipts: restored {count} waiting receipt(s) and the shared budget's airtime in the "
                         "sliding hour ({since})").format(count=queued, since=since)
        log.info("%s", restored)
        if queued and self._wake is not None:
            self._wake()

    # -- internals -------------------------------------------------------------------------------------------
    def _time_since(self, snap: Snapshot) -> int | None:
        """µs on CLOCK_BOOTTIME since ``snap`` was taken, or None when that cannot be known (a reboot, no boot id, a
        boot clock that went back); the unknown case is logged and counted in ``restore_unknown_gap``."""
        boot_id, boottime_us = self._boot_clock()
        if snap.boot_id is not None and snap.boot_id == boot_id and boottime_us >= snap.boottime_us:
            return boottime_us - snap.boottime_us
        if snap.sends or snap.pending:
            with self._lock:
                self.restore_unknown_gap += 1
            if snap.boot_id is None or boot_id is None:
                why = _("no boot id to compare")
            elif snap.boot_id != boot_id:
                why = _("the machine rebooted since the snapshot")
            else:
                why = _("the boot clock went back since the snapshot")
            log.warning("%s", _("receipts: {why}, so the time in between is unknown and taken as zero: {seconds} s "
                                "of airtime counts as if it had ended when the snapshot says").format(
                why=why, seconds=f"{sum(u for _ago, u in snap.sends) / 1e6:.3f}"))
        return None

    def _requeue(self, pending: list[tuple[bytes, int, int]], gap_us: int) -> int:
        """Put a snapshot's waiting receipts back ahead of any new ones, ``gap_us`` older than the snapshot says;
        drop (and count) repeats, those too old, those the radio settings can no longer send and those beyond
        ``max_pending``. Returns how many were queued."""
        now = self._clock()
        old: list[tuple[int, int, float]] = []
        full: list[tuple[int, int]] = []
        refused: list[tuple[int, int, str]] = []
        with self._lock:
            idents = {(r.node_id, r.counter) for r in self._queue} | set(self._recent)
            items: list[_Receipt] = []
            for frame, age_us, attempts in pending:
                node_id, counter = struct.unpack_from(">II", frame, 1)
                if (node_id, counter) in idents:
                    self.duplicates += 1
                    continue
                age_s = (age_us + gap_us) / 1e6
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
            self.revision += 1
        for node_id, counter, age_s in old:
            self._log_drop("too_old", node_id, N_("receipt for node {node} counter {counter} dropped at restore: not "
                                                  "sent {age} s after its request (receipts.max_age_s)"),
                           counter=counter, age=f"{age_s:.0f}")
        for node_id, counter in full:
            self._log_drop("queue_full", node_id, N_("receipt for node {node} counter {counter} dropped at restore: "
                                                     "{waiting} receipts already waiting (receipts.max_pending)"),
                           counter=counter, waiting=self._max_pending)
        for node_id, counter, why in refused:
            self._log_drop("refused", node_id, N_("receipt for node {node} counter {counter} dropped at restore: it "
                                                  "can no longer be sent with these radio settings: {error}"),
                           counter=counter, error=why)
        return len(items)

    def _airtime_of(self, frame_len: int) -> float:
        return time_on_air_ms(self._on_air_len(frame_len), self._sf, self._bw_khz, self._cr, self._preamble) / 1e3

    def _log_drop(self, reason: str, node_id: int, msg: str, **params: object) -> None:
        """An error line for a receipt that will not be sent: the first per node and reason in a minute in full.

        Args:
            msg: a message id (marked with N_) with ``{node}`` and the placeholders of ``params``.
        """
        with self._log_lock:
            self._drops.warning(reason, Text(N_("node {node}"), node=f"{node_id:08x}"), N_("receipts"), "%s",
                                _(msg).format(node=f"{node_id:08x}", **params), level=logging.ERROR)

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

    def _next_due(self, now: float) -> tuple[_Receipt | None, float]:
        """The receipt to send next and the seconds until it may go (<= 0: now), or (None, 0) when none is queued.
        Under ``_lock``.

        The oldest receipt whose delay has passed goes first, so a backup gateway's delayed receipt does not hold
        up other nodes' receipts; a retry backoff, the pause and the hourly budget apply to whichever goes."""
        if not self._queue:
            return None, 0.0
        if self._retry_at is not None and now < self._retry_at:
            return self._queue[0], self._retry_at - now
        item = next((r for r in self._queue if r.not_before <= now), None)
        if item is None:
            return self._queue[0], min(r.not_before for r in self._queue) - now
        wait = self.budget.wait_s(item.airtime_s)
        if wait > 0 and not item.deferred:
            item.deferred = True
            self.deferred += 1
            log.info("%s", _("receipt for node {node} counter {counter} waits {seconds} s for the {rules} "
                             "rules").format(node=f"{item.node_id:08x}", counter=item.counter,
                                             seconds=f"{wait:.3f}", rules=self.rules.describe()))
        return item, wait

    def _send(self, item: _Receipt) -> None:
        """One attempt; leaves the queue and counters as the outcome says. Runs under the pump lock."""
        try:
            self._transmit(item.frame)
        except ValueError as exc:
            # The module cannot take this payload at all; trying again cannot help.
            self._finish(item, failed=True)
            self._log_drop("radio_refused", item.node_id, N_("receipt for node {node} counter {counter} dropped: "
                                                             "refused by the radio: {error}"),
                           counter=item.counter, error=exc)
            return
        except DriverError as exc:
            on_air = not (isinstance(exc, ModuleError) and exc.status in _NOT_ON_AIR_STATUSES)
            if on_air:
                # It may have gone out before the failure: count it, so the pause and budget stay safe.
                self.budget.record(item.airtime_s)
            item.attempts += 1
            if item.attempts >= self._max_attempts:
                self._finish(item, failed=True)
                self._log_drop("given_up", item.node_id, N_("receipt for node {node} counter {counter} dropped: "
                                                            "given up after {attempts} failed sends: {error}"),
                               counter=item.counter, attempts=item.attempts, error=exc)
                return
            self._failures += 1
            delay = backoff_delay(self._failures, self._retry_min_s, self._retry_max_s, self._rng)
            with self._lock:
                self.retries += 1
                self.revision += 1
                self._retry_at = self._clock() + delay
            log.warning("%s", _("receipt for node {node} counter {counter} not sent ({error}); retry in {seconds} "
                                "s").format(node=f"{item.node_id:08x}", counter=item.counter, error=exc,
                                            seconds=f"{delay:.1f}"))
            return
        self.budget.record(item.airtime_s)
        self._failures = 0
        self._finish(item, failed=False)
        log.info("%s", _("receipt for node {node} counter {counter} sent after {seconds} s").format(
            node=f"{item.node_id:08x}", counter=item.counter, seconds=f"{self._clock() - item.requested_at:.1f}"))

    def _finish(self, item: _Receipt, *, failed: bool) -> None:
        with self._lock:
            # Only pump() removes items while it runs (_drop_old runs in pump too), so item is still queued; by
            # identity, as two receipts may be equal.
            del self._queue[next(i for i, r in enumerate(self._queue) if r is item)]
            self._retry_at = None
            self.revision += 1
            if failed:
                self.failed += 1
            else:
                self.sent += 1
                self._recent.append((item.node_id, item.counter))


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
