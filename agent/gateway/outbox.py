"""The publish/ack path: journaled readings out to the broker in batches, and their PUBACKs back.

The core owns one :class:`Outbox`, used under the core's lock (``events.CoreTurn``); the MQTT link's thread only asks
:meth:`Outbox.ack_may_wait`. Within an MQTT session the outbox knows
what it handed to the publisher (``sent_upto`` per lane) and what is in flight (``inflight``, by message id, at
most ``mqtt.inflight_window`` messages besides SOS); a PUBACK moves a message's sequence numbers to ``acked``, and
the core deletes those rows with its next commit. A new session starts again from the journal.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.config import Config
from agent.errors import JournalError
from agent.gateway import clock
from agent.gateway.events import Ack, Publisher
from agent.gateway.journal import Journal, JournalCorrupt
from agent.gateway.reading import LANES, SOS, TELEMETRY, Entry
from agent.gateway.readings import READING_SCHEMA
from agent.i18n import _

log = logging.getLogger(__name__)

_BATCHES_PER_STEP = 1  # backlog messages published per wake-up
_NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT v5 PUBACK reason code
REWIND_S = 2.0  # wait before offering again readings the broker had no subscriber for, in seconds


@dataclass(slots=True)
class Inflight:
    """One batch message awaiting its PUBACK."""

    lane: int
    seqs: list[int]
    sent: float  # monotonic seconds
    bodies: list[str] | None = None  # SOS lane only


def batch_room(config: Config) -> int:
    """Bytes of reading bodies one message may carry: ``mqtt.batch_max_kb`` less the envelope
    :meth:`Outbox.send_bodies` writes around them (schema, lane, sent_us, brackets: at most 150 bytes besides
    the gateway id and site)."""
    return config.mqtt.batch_max_kb * 1024 - 150 - len(config.gateway.id.encode()) - len(config.gateway.site.encode())


def fit_batch(rows: list[tuple[int, str]], room: int) -> list[tuple[int, str]]:
    """The first rows whose bodies, comma-separated, fit in ``room`` bytes (at least one row); the rest go in the
    next message."""
    for i, (_seq, body) in enumerate(rows):
        # A body is ASCII unless a name holds other text; only then is its UTF-8 length computed.
        room -= (len(body) if body.isascii() else len(body.encode())) + 1
        if room < 0:
            return rows[:max(1, i)]
    return rows


class Outbox:
    """What the current MQTT session has in flight and what the broker acknowledged.

    Args:
        config: the gateway config (``mqtt`` batch and window sizes, gateway id and site for the envelope).
        publisher: where messages go.
        journal: where pending readings are read from; the core sets :attr:`journal` again when it replaces a
            damaged journal (and calls :meth:`forget`).
        count: adds to one of the core's counters.
        on_sos_acked: called with the SOS readings (parsed bodies) of each acknowledged SOS message.
        frames_waiting: whether a radio delivered frames while this wake-up held the core (``CoreTurn.frames``):
            they may hold an SOS, so the wake-up leaves its backlog batch to the next one.
    """

    def __init__(self, config: Config, publisher: Publisher, journal: Journal, *,
                 count: Callable[..., None], on_sos_acked: Callable[[list[dict[str, Any]]], Any],
                 frames_waiting: Callable[[], bool] = lambda: False) -> None:
        self.config = config
        self.publisher = publisher
        self.journal = journal
        self._count = count
        self._on_sos_acked = on_sos_acked
        self.frames_waiting = frames_waiting
        self._yielded = False  # the last wake-up left its backlog batch to frames that were waiting
        self._room = batch_room(config)
        self._head = (f'{{"schema":"{READING_SCHEMA}","gateway":"{config.gateway.id}",'
                      f'"site":"{config.gateway.site}",')
        self.session: int | None = None  # the MQTT session up now, None while offline
        self.inflight: dict[int, Inflight] = {}
        self.sent_upto = [0] * len(LANES)  # highest seq handed to the current session, per lane
        self.acked: list[int] = []  # acknowledged, deleted with the core's next commit
        self._acked_hi = 0  # highest seq in acked: rows above it cannot be among them
        self._rewind: dict[int, int] = {}  # lane -> first seq to offer again (PUBACK "no matching subscribers")
        self.rewind_at = 0.0  # monotonic s when readings without a subscriber are offered again; 0: none
        # SOS published before they could be journaled, by (node, fcnt, ts_us): a signed and an unsigned frame
        # may share a counter, never a timestamp (agent.gateway.readings).
        self._sos_from_memory: set[tuple[str, int, int]] = set()

    # -- sessions ----------------------------------------------------------------------------------------------
    def session_up(self, session: int) -> None:
        """A new session: everything journaled is offered again, SOS first."""
        self.session = session
        self._rewind.clear()
        self.rewind_at = 0.0
        self.sent_upto = [0] * len(LANES)
        self.inflight.clear()

    def session_down(self, session: int) -> bool:
        """Session ``session`` ended; False if it was not the current one (already replaced)."""
        if self.session != session:
            return False
        self.session = None
        self.inflight.clear()
        return True

    def forget(self) -> None:
        """Forget what is in flight: seqs of a new journal file mean nothing to the current session."""
        self.inflight.clear()
        self.sent_upto = [0] * len(LANES)
        self.acked = []

    def journaled(self, *, deleted: bool) -> None:
        """The core's commit succeeded: SOS kept in memory are journaled; ``deleted``: with the acknowledged
        readings' deletion."""
        if deleted:
            self.acked = []
        self._sos_from_memory.clear()

    def protected(self) -> list[int]:
        """Seqs in flight: the quota must not evict them before their PUBACK."""
        return [s for f in self.inflight.values() for s in f.seqs]

    # -- publishing --------------------------------------------------------------------------------------------
    def publish(self, *, urgent: bool, hold: bool) -> None:
        """SOS first, whatever the window holds; then backlog batches within the window.

        Args:
            urgent: this wake-up brought an SOS or an alarm: no backlog batch while a PUBACK is due to wake the
                core for it, so the wake-up ends at once and the core is free for that SOS's PUBACK.
            hold: telemetry and diagnostics stamped on an unsynchronised clock wait (see agent.gateway.clockwatch).
        """
        if self.session is None:
            return
        if self.rewind_at and time.monotonic() >= self.rewind_at:
            self._do_rewind()
        window = self.config.mqtt.inflight_window
        batch = self.config.mqtt.batch_max_readings
        if not self.publish_lane(SOS):
            return
        # Backlog batches per wake-up are capped, so a wake-up stays short and an SOS arriving meanwhile waits
        # for little; the next PUBACK wakes the core to send more.
        budget = _BATCHES_PER_STEP
        leave = self._leave_backlog(urgent)
        for lane in range(SOS + 1, len(LANES)):
            if leave and lane >= TELEMETRY:
                break
            while budget and len(self.inflight) < window and self.journal.lane_top[lane] > self.sent_upto[lane]:
                rows = self.journal.pending(lane, after_seq=self.sent_upto[lane], limit=batch,
                                            hold_unsynced=hold and lane >= TELEMETRY)
                if not rows:
                    break
                if not self._send(lane, rows):
                    return
                budget -= 1

    def _leave_backlog(self, urgent: bool) -> bool:
        """Whether this wake-up leaves its telemetry and diagnostics batch to the next one, so the core is free
        at once: after an SOS or alarm, for its PUBACK (measured in tests/bench sos: the batch and the deletion
        commit it causes made the slowest SOS wait 2-8 ms more), when a PUBACK already in flight is sure to wake
        the core; and when a radio delivered frames meanwhile (they may hold an SOS; the core looks again at once),
        but never two wake-ups in a row, so frames arriving without pause cannot starve the backlog."""
        if urgent and self.inflight:
            return True
        leave = not self._yielded and self.frames_waiting()
        self._yielded = leave
        return leave

    def _do_rewind(self) -> None:
        for lane, first in self._rewind.items():
            # Messages of this lane still in flight are forgotten: their rows are offered again with the rest
            # (a late PUBACK for them is ignored; at worst a reading arrives twice, with the same identity).
            for mid in [m for m, f in self.inflight.items() if f.lane == lane and max(f.seqs) >= first]:
                del self.inflight[mid]
            self.sent_upto[lane] = min(self.sent_upto[lane], first - 1)
        self._rewind.clear()
        self.rewind_at = 0.0

    def sos_first(self, entries: list[Entry]) -> list[Entry]:
        """Commit and publish the SOS among ``entries`` ahead of everything else; the entries left to commit.

        An SOS does not wait for the rest of this wake-up's work (acks to delete, backlog to read): it gets a
        commit of its own and goes out first. One extra fsync, only when an SOS arrives. The alarms among
        ``entries`` (the alert an SOS raises) share that commit, so what is left is telemetry and diagnostics only,
        which need not hold up the SOS's PUBACK with the commit of a drain's deletions (tests/bench sos).
        """
        first = [e for e in entries if e.lane < TELEMETRY]
        try:
            self.journal.commit(entries=first)
        except JournalError:
            return entries  # the normal commit keeps them and handles the failure
        self._count("readings.journaled", len(first))
        try:
            self.publish_lane(SOS)
        except JournalCorrupt:
            pass  # this wake-up's other entries are committed first; the damage is met again then
        return [e for e in entries if e.lane >= TELEMETRY]

    def publish_lane(self, lane: int) -> bool:
        """Send everything pending in ``lane``, whatever the window holds (used for SOS). False if offline."""
        batch = self.config.mqtt.batch_max_readings
        while True:
            if self.journal.lane_top[lane] <= self.sent_upto[lane]:
                return True  # nothing committed to the lane since it was last sent: no query
            rows = self.journal.pending(lane, after_seq=self.sent_upto[lane], limit=batch)
            if not rows:
                return True
            if not self._send(lane, rows):
                return False

    def publish_unjournaled_sos(self, entries: list[Entry]) -> None:
        """Publish the SOS among ``entries`` (which the journal could not take) not yet published from memory.

        An SOS must not wait for a disk to be cleared: it goes out as it is (counted as
        ``sos.published_unjournaled``) and again, same identity, once it is journaled.
        """
        if self.session is None:
            return
        unsent = [e for e in entries if e.lane == SOS and (e.node, e.fcnt, e.ts_us) not in self._sos_from_memory]
        if unsent and self.send_bodies(SOS, [e.body for e in unsent]):
            self._sos_from_memory.update((e.node, e.fcnt, e.ts_us) for e in unsent)
            self._count("sos.published_unjournaled", len(unsent))
            log.error("%s", _("journal cannot commit: {count} SOS published from memory").format(count=len(unsent)))

    def send_bodies(self, lane: int, bodies: list[str]) -> tuple[int, int] | None:
        """Publish one batch message of reading bodies; (session, mid), or None when offline."""
        payload = (self._head + f'"lane":"{LANES[lane]}","sent_us":{clock.wall_us()},"readings":['
                   + ",".join(bodies) + "]}").encode()
        return self.publisher.publish(self.publisher.topics.readings[LANES[lane]], payload)

    def _send(self, lane: int, rows: list[tuple[int, str]]) -> bool:
        if self.acked and rows[0][0] <= self._acked_hi:
            # Acknowledged but not yet deleted (the delete commits with the next batch, or the disk is full):
            # the broker has them, so a new session does not send them again.
            acked = set(self.acked)
            kept = [r for r in rows if r[0] not in acked]
            if not kept:
                self.sent_upto[lane] = rows[-1][0]
                return True
            rows = kept
        rows = fit_batch(rows, self._room)
        bodies = [body for _seq, body in rows]
        sent = self.send_bodies(lane, bodies)
        if sent is None:
            return False
        session, mid = sent
        # SOS bodies are kept until their PUBACK, which triggers the receipts the callers asked for.
        seqs = [seq for seq, _body in rows]
        self.inflight[mid] = Inflight(lane, seqs, time.monotonic(), bodies if lane == SOS else None)
        self.sent_upto[lane] = rows[-1][0]
        return True

    # -- acknowledgements ----------------------------------------------------------------------------------------
    @property
    def quiet(self) -> bool:
        """Nothing journaled waits to be sent (any thread may ask): a PUBACK then frees room nobody waits for."""
        return not self._rewind and all(top <= sent for top, sent in zip(self.journal.lane_top, self.sent_upto))

    def ack_may_wait(self, ack: Ack) -> bool:
        """Whether ``ack`` may wait for the core's next wake-up instead of waking it (called on the MQTT link's
        thread): a plain success for telemetry or diagnostics of the current session while nothing else waits to be
        sent. Its rows are deleted with a later commit either way; an SOS's PUBACK (receipts), a refusal or "no
        subscribers", and a PUBACK that frees room for a backlog wake the core at once."""
        if not (self.quiet and ack.ok and ack.code == 0 and ack.session == self.session):
            return False
        flight = self.inflight.get(ack.mid)
        return flight is not None and flight.lane >= TELEMETRY
    def on_ack(self, ack: Ack) -> None:
        if ack.session != self.session:
            return
        flight = self.inflight.pop(ack.mid, None)
        if flight is None:
            return  # the retained status message, or a session already forgotten
        if ack.code == _NO_MATCHING_SUBSCRIBERS:
            # The broker took the message but nobody was subscribed (the bridge not back yet after a broker
            # restart): nobody has the readings, so they stay journaled and are offered again shortly.
            self._count("mqtt.no_subscribers")
            lane_first = min(flight.seqs)
            self._rewind[flight.lane] = min(self._rewind.get(flight.lane, lane_first), lane_first)
            if not self.rewind_at:
                self.rewind_at = time.monotonic() + REWIND_S
                log.warning("%s", _("broker has no subscriber for {lane} readings; keeping them, retrying in "
                                    "{seconds} s").format(lane=LANES[flight.lane], seconds=f"{REWIND_S:.0f}"))
            return
        if not ack.ok:
            # The broker refused the message (v5 PUBACK failure, e.g. not authorised by its ACL). The readings
            # stay journaled; they are offered again on the next session.
            self._count("mqtt.publish_refused")
            log.error("%s", _("broker refused a {lane} batch of {count} readings: {reason}").format(
                lane=LANES[flight.lane], count=len(flight.seqs), reason=ack.reason))
            return
        self.acked.extend(flight.seqs)
        self._acked_hi = max(self._acked_hi, flight.seqs[-1])
        self._count("readings.acked", len(flight.seqs))
        if flight.bodies:
            readings = [json.loads(b) for b in flight.bodies]
            self._on_sos_acked([r for r in readings if r.get("kind") == "sos"])
