"""The gateway core: radios -> decode -> durable journal -> MQTT, in one owner thread.

Threads:
    one per radio (drivers.radio.RadioWorker)   reads the port, posts ``("up", [Uplink, ...])`` per chunk
    mqtt-link (agent.gateway.publisher.MqttLink)        the broker connection, posts ``mqtt_up`` / ``ack`` / ``mqtt_down``
    core (this module, ``Gateway.run``)         owns the journal; nothing else touches SQLite

The core blocks on its inbox. Each wake-up drains whatever is waiting and writes it in ONE transaction (group
commit: one fsync for everything that arrived meanwhile), then publishes. An SOS is published right after its
commit, ahead of anything else; the backlog drains in batches through a bounded window of messages awaiting
PUBACK, so a new SOS never queues behind more than that window. A reading leaves the journal only when its
PUBACK arrives.
"""

from __future__ import annotations

import datetime
import gc
import json
import logging
import math
import os
import queue
import shutil
import sqlite3
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from agent import __version__, systemd
from agent.gateway import clock
from agent.config import Config
from agent.gateway.edge import Edge
from agent.errors import JournalError
from agent.gateway.journal import QUARANTINE_KEEP, Audit, JournalCorrupt, open_or_recover
from agent.gateway.reading import DIAGNOSTICS, EVICTABLE, LANES, SOS, TELEMETRY, Entry, Quarantined
from agent.gateway.publisher import MqttLink
from agent.ratelog import RateLimitedLog
from agent.gateway.readings import READING_SCHEMA, Decoded, FrameDecoder
from drivers.types import Uplink

log = logging.getLogger(__name__)

_DRAIN_MAX = 2000  # inbox items handled per transaction, so one wake-up never grows without bound
_BATCHES_PER_STEP = 1  # backlog messages published per wake-up
_NO_MATCHING_SUBSCRIBERS = 0x10  # MQTT v5 PUBACK reason code
_REWIND_S = 2.0  # wait before offering again readings the broker had no subscriber for, in seconds
#: How long telemetry and diagnostics stamped on an unsynchronised clock wait for the clock to sync before they go
#: out flagged ``unsynced`` anyway, in seconds from the agent's start. (SOS and alarms never wait.)
CLOCK_HOLD_S = 900.0
_CLOCK_STEP_US = 1_000_000  # a change of wall - boottime above this is a step, not drift
_CLOCK_CHECK_S = 10.0  # while the clock is unsynchronised, the core looks at least this often, in seconds
_CORRECT_PER_STEP = 2000  # readings corrected per wake-up, so an SOS never waits behind a long correction
_UNSYNCED_MARK = '"clock":"unsynced"'
_STATE_MIN_S = 1.0  # the state document is published at most this often, unless an SOS or a person changed it, in s
#: Readings kept in memory while the journal cannot commit (disk full, I/O errors). Above this, telemetry and
#: diagnostics are dropped oldest first, as the quota would; SOS and alarms are always kept.
UNJOURNALED_MAX = 20_000
_COMMIT_RETRY_S = 1.0  # while commits fail, they are tried again this often (at once for an SOS), in seconds
#: Acknowledged readings waiting for their deletion that make a commit due at once, whatever the commit window: a
#: drain's deletions go in commits of about this size, so a new SOS never waits behind a large one.
ACK_FOLD_MAX = 1000
#: How long the deletion of acknowledged readings (and counters) may wait for a commit when nothing else waits, in
#: seconds (at least the commit window): at a few frames per second it folds into the next frame's commit instead
#: of taking a commit of its own. After a power cut, readings acknowledged this long before it may be sent again
#: (same id and timestamp: an overwrite at the backend).
ACK_FOLD_S = 1.0
#: systemd's STATUS= line is sent at most this often, in seconds, unless the broker connection or an SOS changed it
#: (one datagram each; the text is built from figures the core already keeps, with no journal read).
STATUS_MIN_S = 5.0


@dataclass(slots=True)
class _Inflight:
    lane: int
    seqs: list[int]
    sent: float  # monotonic seconds
    bodies: list[str] | None = None  # SOS lane only


def batch_room(config: Config) -> int:
    """Bytes of reading bodies one message may carry: ``mqtt.batch_max_kb`` less the envelope
    :meth:`Gateway._send_bodies` writes around them (schema, lane, sent_us, brackets: at most 150 bytes besides
    the gateway id and site)."""
    return config.mqtt.batch_max_kb * 1024 - 150 - len(config.gateway.id.encode()) - len(config.gateway.site.encode())


def fit_batch(rows: list[tuple[int, str]], room: int) -> list[tuple[int, str]]:
    """The first rows whose bodies, comma-separated, fit in ``room`` bytes (at least one row); the rest go in the
    next message."""
    for i, (_, body) in enumerate(rows):
        # A body is ASCII unless a name holds other text; only then is its UTF-8 length computed.
        room -= (len(body) if body.isascii() else len(body.encode())) + 1
        if room < 0:
            return rows[:max(1, i)]
    return rows


@dataclass
class GatewayStats:
    """Live figures the core keeps in memory (persisted as counters at each commit)."""

    counters: Counter[str] = field(default_factory=Counter)
    started_us: int = field(default_factory=clock.wall_us)


class Gateway:
    """One gateway: its radios, its journal and its MQTT link.

    Args:
        config: a validated config.
        radios: radio workers to start; None builds them from ``config.radios`` (tests may pass their own).
    """

    def __init__(self, config: Config, *, radios: list[Any] | None = None, active_config: str = "") -> None:
        self.config = config
        self.active_config = active_config
        self.gateway_id = config.gateway.id
        self._batch_room = batch_room(config)
        self.inbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self.journal, damaged, rescued = open_or_recover(
            config.journal.path, quota_bytes=int(config.journal.quota_mb * 1024 * 1024))
        self.stats = GatewayStats()
        self.stats.counters.update(self.journal.counters())
        self._dirty_counters: set[str] = set()
        # Warnings a hostile node or a garbled module can cause at any rate: the first per (reason, sender) and
        # minute in full, then one summary line.
        self._warn = RateLimitedLog(log)
        self.decoder = FrameDecoder(config, self.journal.nodes(), count=self._count, warn=self._warn)
        self.decoder.age_out(clock.wall_us())
        # Operator requests carried out but not yet committed: audit lines and (request id, result).
        self._audit: list[Audit] = []
        self._done: list[tuple[int, str]] = []
        self.link = MqttLink(config.mqtt, self.gateway_id, self.inbox.put, version=__version__)
        self.radios = radios if radios is not None else self._build_radios()
        meta = self.journal.meta()
        # One sequence for every reading the gateway itself makes (health reports, alerts): their identity.
        self._gateway_seq = int(meta.get("gateway_seq", meta.get("health_seq", "0")))
        self.edge = Edge(config, self.decoder, next_seq=self._next_gateway_seq, count=self._count,
                         post=self.inbox.put, meta=meta)
        self.edge.attach_radios(self.radios)
        self._carry: list[Entry] = []  # entries made after a commit (quota alerts), committed at the next wake-up
        # Meta rows (edge snapshots, the state document) waiting for a commit that succeeds.
        self._meta: dict[str, str] = {}
        # Result documents of the commands carried out in this wake-up, published after the state document.
        self._results: list[dict[str, Any]] = []
        # The state document: the last one recorded (without ts_us), when it may go out next, and whether it must
        # go out whatever the limit (a new session).
        self._state_doc: dict[str, Any] | None = None
        self._state_next = 0.0
        self._state_recheck = False
        self._state_force = False
        self._held_count = 0
        self._held_fresh = 0  # readings of this wake-up that will be held, not committed yet
        if damaged:
            self._journal_damaged(damaged, rescued)
        self._stop = threading.Event()
        self._session: int | None = None
        self._inflight: dict[int, _Inflight] = {}
        self._sent_upto = [0] * len(LANES)  # highest seq handed to the current session, per lane
        self._acked: list[int] = []
        self._acked_hi = 0  # highest seq in _acked: rows above it cannot be among them
        self._next_health = time.monotonic() + config.health.interval_s
        self._next_quota = 0.0
        self._uncommitted: tuple[list[Entry], list[Quarantined]] | None = None
        # The commit window: telemetry and diagnostics (and acknowledgements to delete) gathered over several
        # wake-ups, committed together when the window closes or at once with an SOS or alarm.
        self._window_s = config.journal.commit_window_ms / 1000
        self._deferred: tuple[list[Entry], list[Quarantined]] = ([], [])
        self._deferred_held = 0  # readings among the deferred ones that will be held (see _held_fresh)
        self._commit_due = 0.0  # monotonic s when what waits must be committed; 0: nothing waits
        # SOS published before they could be journaled, by (node, fcnt, ts_us): a signed and an unsigned frame
        # may share a counter, never a timestamp (agent.gateway.readings).
        self._sos_from_memory: set[tuple[str, int, int]] = set()
        self._retry_commit_at = 0.0
        self._rewind: dict[int, int] = {}  # lane -> first seq to offer again (PUBACK "no matching subscribers")
        self._rewind_at = 0.0
        self._watchdog_s = systemd.watchdog_interval_s()
        self._thread: threading.Thread | None = None
        # Clock: readings stamped before NTP sync are held (telemetry, diagnostics) and corrected once it syncs.
        self._clock_synced = clock.synced()
        self._clock_offset = clock.offset_us()
        self._clock_boot = clock.boot_us()
        self._clock_hold_until = time.monotonic() + CLOCK_HOLD_S
        self._clock_hold_until_us = clock.wall_us() + int(CLOCK_HOLD_S * 1e6)  # the same, for people
        self._held_was = False  # whether readings were held at the last wake-up (for the log lines)
        given_up = self.journal.adopt_boot(clock.boot_id())
        if given_up:
            self._count("clock.uncorrectable", given_up)
            log.warning("%d readings were stamped before the clock synced in an earlier boot; they cannot be "
                        "corrected and go out flagged unsynced", given_up)
        self._to_correct = self.journal.unsynced_count() > 0
        self._status = systemd.StatusLine(STATUS_MIN_S)
        self._status_force = False  # the broker connection changed or an SOS came: sent without waiting
        self._broker_since = time.monotonic()  # when the broker connection last came up or went down
        self._broker_ever = False
        # Backlog without a COUNT(*) per status (160 ms at 1 M rows): the last depth() the health report read,
        # moved on by the counters the core keeps anyway. (total, journaled, acked, evicted) at that read.
        self._backlog_base: tuple[int, int, int, int] | None = None
        factor = config.rules.silence_factor
        # A configured node counts as heard while it is not late: the node_silent alert's threshold, in µs.
        self._late_after_us = {n.id: math.ceil(factor * n.interval_s * 1_000_000) for n in config.nodes}

    def _build_radios(self) -> list[Any]:
        from drivers.radio import RadioWorker  # noqa: PLC0415 - hardware layer loaded only when a gateway runs

        return [RadioWorker(rc, self) for rc in self.config.radios]

    # -- RadioEvents (called from radio threads) ---------------------------------------------------------
    def on_uplinks(self, uplinks: list[Uplink]) -> None:
        self.inbox.put(("up", uplinks))

    def on_incident(self, radio: str, kind: str, detail: str) -> None:
        self.inbox.put(("incident", radio, kind, detail))

    def _next_gateway_seq(self) -> int:
        self._gateway_seq += 1
        return self._gateway_seq

    # -- life cycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start radios, the MQTT link and the core thread; returns at once."""
        self._thread = threading.Thread(target=self.run, name="core", daemon=True)
        self._thread.start()

    def run(self) -> None:
        """The core loop; returns after :meth:`stop`."""
        # A short GIL switch interval lets the MQTT thread send an SOS promptly while the core is busy.
        sys.setswitchinterval(0.001)
        self.journal.commit(meta={"agent_pid": str(os.getpid()), "agent_started_us": str(self.stats.started_us),
                                  "agent_version": __version__, "gateway": self.gateway_id,
                                  "active_config": self.active_config})
        for r in self.radios:
            r.start()
        self.link.start()
        log.info("gateway %s running: %d radios, journal %s", self.gateway_id, len(self.radios), self.journal.path)
        _return_free_memory()
        systemd.ready()
        self._update_status(time.monotonic(), force=True)
        try:
            while not self._stop.is_set():
                try:
                    self._step(self._timeout())
                    # After the wake-up's commit, so the line counts what this wake-up journaled.
                    self._update_status(time.monotonic())
                except JournalCorrupt as exc:
                    # Found by a read (publishing, quota, clock correction): what was committed is salvaged.
                    self._replace_journal(exc)
                except Exception:  # noqa: BLE001 - the core must outlive its own bugs; nothing is acked on failure
                    self._count("core.internal_error")
                    log.exception("core: unexpected error; carrying on")
                    self._stop.wait(1.0)
        finally:
            self._shutdown()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.inbox.put(("wake",))
        if self._thread is not None:
            self._thread.join(timeout)

    def _shutdown(self) -> None:
        systemd.stopping()
        for r in self.radios:
            try:
                r.stop()
            except Exception:  # noqa: BLE001 - stopping must go on for the others
                log.exception("stopping radio failed")
        self.link.stop()
        self.edge.close()
        # Handle what is still waiting, so nothing the radios delivered is left only in memory.
        self._step(0)
        self._warn.flush()
        self.journal.commit(meta={"agent_pid": ""})
        self.journal.close()

    def _timeout(self) -> float:
        """Seconds the core may sleep: until the next timer, never below 1 s when idle (no busy polling)."""
        now = time.monotonic()
        if self._carry or (self._to_correct and self._clock_synced):
            return 0.0
        deadlines = [self._next_health]
        if not self._clock_synced:
            deadlines.append(now + _CLOCK_CHECK_S)  # to notice the sync soon after it happens
            if self._to_correct and now < self._clock_hold_until:
                deadlines.append(self._clock_hold_until)
        if self._watchdog_s:
            # The watchdog is fed from this loop, so a core that hangs is restarted by systemd.
            deadlines.append(now + self._watchdog_s / 2)
        if self._retry_commit_at:
            deadlines.append(self._retry_commit_at)
        if self._commit_due:
            deadlines.append(self._commit_due)
        if self._rewind_at:
            deadlines.append(self._rewind_at)
        if self._state_recheck:
            deadlines.append(self._state_next)
        if self._status.pending:
            deadlines.append(self._status.next_at)
        edge = self.edge.next_deadline()
        if edge is not None:
            deadlines.append(edge)
        return max(0.0, min(deadlines) - now)

    # -- one wake-up -----------------------------------------------------------------------------------------
    def _step(self, timeout: float) -> None:
        if self._watchdog_s:
            systemd.ping()
        items: list[tuple] = []
        try:
            items.append(self.inbox.get(timeout=timeout) if timeout > 0 else self.inbox.get_nowait())
        except queue.Empty:
            pass
        while len(items) < _DRAIN_MAX:
            try:
                items.append(self.inbox.get_nowait())
            except queue.Empty:
                break

        entries: list[Entry] = self._carry
        self._carry = []
        quarantined: list[Quarantined] = []
        urgent = False
        self._warn.tick()
        if self.journal.changed_elsewhere():
            # Before this wake-up's frames: a frame heard after the request is judged by the new window.
            self._take_requests()
        for item in items:
            tag = item[0]
            if tag == "up":
                # The per-frame path: names bound once per chunk, frames.ok counted once per chunk.
                decode, on_reading, ok = self.decoder.decode, self.edge.on_reading, 0
                for up in item[1]:
                    try:
                        out = decode(up)
                    except Exception as exc:  # noqa: BLE001 - a decoder bug must not lose the frame or stop the core
                        log.exception("decoding a frame from %s failed", up.radio)
                        out = Decoded(quarantined=Quarantined(up.received_us, up.radio, None, "internal_error",
                                                              f"decoder raised {type(exc).__name__}: {exc}",
                                                              up.payload, up.rssi, up.snr))
                    entry = out.entry
                    if entry is not None:
                        entries.append(entry)
                        if entry.lane == SOS:
                            urgent = True
                        ok += 1
                        try:
                            alerts = on_reading(out.body)
                        except Exception:  # noqa: BLE001 - as in _edge_call: a rules bug never stops forwarding
                            self._count("edge.internal_error")
                            log.exception("edge logic failed in on_reading")
                        else:
                            if alerts:
                                entries.extend(alerts)
                    else:
                        q = out.quarantined
                        assert q is not None
                        quarantined.append(q)
                        self._count(f"frames.{q.reason}")
                        self._warn.warning(q.reason, f"node {q.node or '?'}", "frames",
                                           "frame quarantined from %s via %s: %s: %s (rssi %s)",
                                           q.node or "?", q.radio, q.reason, q.detail, q.rssi)
                if ok:
                    self._count("frames.ok", ok)
            elif tag == "ack":
                self._on_ack(item[1], item[2], item[3], item[4], item[5] if len(item) > 5 else 0)
            elif tag == "incident":
                _, radio, kind, detail = item
                self._count(f"{radio}.{kind}")
                if kind == "configured":
                    log.info("%s: %s: %s", radio, kind, detail)
                else:
                    # Garbled lines, CRC errors and bad hex come at the rate of the noise or of a hostile sender.
                    self._warn.warning(kind, f"radio {radio}", "incidents", "%s: %s: %s", radio, kind, detail)
                entries.extend(self._edge_call(self.edge.on_incident, radio, kind))
            elif tag == "cmd":
                result = self._edge_call(self.edge.on_command, item[1], item[2])
                if result:
                    self._results.append(result)
            elif tag == "test_button":
                # The installer's button: lamp and siren chirp, and a health report goes out at once, so the
                # installer sees the whole path work (it shows in the backend within seconds).
                self._count("gateway.test_button")
                self._edge_call(self.edge.test_button)
                entries.append(self._health_entry())
            elif tag == "mqtt_up":
                self._session = item[1]
                self._rewind.clear()
                self._rewind_at = 0.0
                self._sent_upto = [0] * len(LANES)
                self._inflight.clear()
                self._count("mqtt.connects")
                self._state_force = True  # retained, but the broker may have lost it: every session gets it
                self._broker_since, self._broker_ever = time.monotonic(), True
                self._status_force = True
            elif tag == "mqtt_down":
                if self._session == item[1]:
                    self._session = None
                    self._inflight.clear()
                    self._count("mqtt.disconnects")
                    log.warning("MQTT session %s ended: %s; readings stay in the journal", item[1], item[2])
                    self._broker_since = time.monotonic()
                    self._status_force = True

        now = time.monotonic()
        if now >= self._next_health:
            entries.append(self._health_entry())
            self._next_health = now + self.config.health.interval_s
            self.decoder.age_out(clock.wall_us())
        entries.extend(self._edge_call(self.edge.due, connected=self._session is not None))
        self._watch_clock(entries)
        # Counted as the journal counts them (every lane; an SOS or alarm leaves as soon as the broker has it).
        self._held_fresh = self._deferred_held + sum(
            1 for e in entries if e.boot_us is not None and e.lane >= TELEMETRY)
        self._watch_hold()

        if urgent and self._session is not None and not self._uncommitted:
            # An SOS does not wait for the rest of this wake-up's work (acks to delete, backlog to read): it
            # gets a commit of its own and goes out first. One extra fsync, only when an SOS arrives.
            sos = [e for e in entries if e.lane == SOS]
            try:
                self.journal.commit(entries=sos)
            except JournalError:
                pass  # the normal commit below keeps them and handles the failure
            else:
                entries = [e for e in entries if e.lane != SOS]
                self._count("readings.journaled", len(sos))
                try:
                    self._publish_lane(SOS)
                except JournalCorrupt:
                    pass  # this wake-up's other entries are committed first; the damage is met again below
        # Siren and lamp before the commit (they need no disk), then what they show, then the commands' results.
        self._edge_call(self.edge.update_outputs, connected=self._session is not None)
        self._update_state()
        if urgent:
            self._status_force = True
        self._publish_results()
        self._meta.update(self.edge.snapshot_meta() or {})
        meta = self._meta
        # A batch that could not be committed last time (disk full, I/O error) goes first, in order.
        if self._uncommitted:
            entries = self._uncommitted[0] + entries
            quarantined = self._uncommitted[1] + quarantined
            self._uncommitted = None
            if not urgent and now < self._retry_commit_at:
                # Commits are failing: do not hammer the disk on every wake-up; keep gathering in memory.
                self._keep_unjournaled(entries, quarantined)
                self._publish(urgent=False)
                return
        # Acknowledged readings are deleted with the next commit, at most a commit window later and in commits of
        # at most about ACK_FOLD_MAX deletions: deferring them without bound was measured (tests/bench sos) to
        # make one commit of tens of thousands of deletions that a new SOS then waits behind (p99 85 ms against
        # 4.7 ms).
        decoder = self.decoder
        waiting, waiting_q = self._deferred
        if entries or quarantined or waiting or waiting_q or self._acked or decoder.dirty or decoder.forgotten \
                or self._dirty_counters or self._done or meta:
            if self._may_wait(entries, len(waiting) + len(entries), urgent, now):
                # Within the commit window: kept in memory (a power cut loses at most this window's frames);
                # the node states, counters and acknowledgements wait with them for the same transaction.
                waiting.extend(entries)
                waiting_q.extend(quarantined)
                self._deferred_held = self._held_fresh
                readings_wait = waiting or waiting_q or decoder.dirty or decoder.forgotten or meta
                due = now + (self._window_s if readings_wait else max(self._window_s, ACK_FOLD_S))
                self._commit_due = min(self._commit_due, due) if self._commit_due else due
                self._publish(urgent=urgent)
                return
            if waiting or waiting_q:
                entries = waiting + entries
                quarantined = waiting_q + quarantined
                self._deferred, self._deferred_held = ([], []), 0
            self._commit_due = 0.0
            try:
                self.journal.commit(
                    entries=entries,
                    acked=self._acked,
                    nodes=[decoder.nodes[n] for n in decoder.dirty],
                    quarantined=quarantined,
                    counters={k: self.stats.counters[k] for k in self._dirty_counters},
                    meta={**meta, "gateway_seq": str(self._gateway_seq)} if (meta or any(
                        e.node == "gateway" for e in entries)) else None,
                    forget=decoder.forgotten,
                    audit=self._audit,
                    done=self._done,
                )
            except JournalCorrupt as exc:
                # The file went bad under us: keep this batch, move the damaged file aside, carry on in a new one.
                self._uncommitted = (entries, quarantined)
                self._replace_journal(exc)
                self._retry_commit_at = time.monotonic()
                return
            except JournalError as exc:
                # Nothing of this batch is durable; it stays in memory and is tried again (the radios keep
                # delivering meanwhile). The journaled backlog still goes out: its PUBACKs free room.
                self._count("journal.commit_failed")
                if not self._retry_commit_at:
                    log.error("journal commit failed (%d readings kept in memory, retrying every %.0f s): %s",
                              len(entries), _COMMIT_RETRY_S, exc)
                self._keep_unjournaled(entries, quarantined)
                self._retry_commit_at = time.monotonic() + _COMMIT_RETRY_S
                self._publish(urgent=False)
                return
            if self._retry_commit_at:
                log.warning("journal commits again; the readings kept in memory are journaled")
            self._retry_commit_at = 0.0
            self._sos_from_memory.clear()
            if entries:
                # Counted after the commit; the counter itself becomes durable with the next commit.
                self._count("readings.journaled", len(entries))
            self._acked = []
            decoder.dirty.clear()
            for node in decoder.forgotten:
                self._edge_call(self.edge.rules.forget, node)
            decoder.forgotten.clear()
            self._audit = []
            self._done = []
            self._meta = {}
            self._held_fresh = 0
            self._dirty_counters.clear()
            if entries and (self._next_quota == 0.0 or now >= self._next_quota):
                self._check_quota()
        if self._to_correct and self._clock_synced:
            self._correct_clock()
        self._publish(urgent=urgent)

    def _may_wait(self, entries: list[Entry], total: int, urgent: bool, now: float) -> bool:
        """Whether this wake-up's work (its new ``entries``; ``total`` with those already waiting) may wait for the
        commit window to close instead of committing now.

        Never for an SOS or alarm (nor anything waiting beside one: they commit together at once), an operator's
        request, a core that is stopping, a window already due, more than ACK_FOLD_MAX acknowledgements, while
        commits are failing (what was kept in memory is committed as soon as the disk takes it), or while readings
        stamped before the clock's sync wait for their correction: the correction rewrites journaled rows only, so
        what waits in memory must be committed first, or it would leave later with its unsynchronised stamp.
        """
        if not self._window_s or urgent or self._stop.is_set() or self._done or self._audit or self._retry_commit_at:
            return False
        if self._to_correct and self._clock_synced:
            return False
        if self._commit_due and now >= self._commit_due:
            return False
        if len(self._acked) >= ACK_FOLD_MAX or total >= _DRAIN_MAX:
            return False
        return all(e.lane >= TELEMETRY for e in entries)

    def _keep_unjournaled(self, entries: list[Entry], quarantined: list[Quarantined]) -> None:
        """Hold what could not be committed, within UNJOURNALED_MAX; an SOS goes out from memory meanwhile.

        An SOS must not wait for a disk to be cleared: it is published as it is (counted as
        ``sos.published_unjournaled``) and published again, same identity, once it is journaled.
        """
        excess = len(entries) - UNJOURNALED_MAX
        if excess > 0:
            drop: set[int] = set()
            for lane in EVICTABLE:
                for i, e in enumerate(entries):
                    if len(drop) >= excess:
                        break
                    if e.lane == lane:
                        drop.add(i)
            if drop:
                for i in drop:
                    self._count(f"journal.dropped_unjournaled.{LANES[entries[i].lane]}")
                log.error("journal cannot commit and %d readings wait in memory: dropped the %d oldest "
                          "telemetry/diagnostics readings", len(entries), len(drop))
                entries = [e for i, e in enumerate(entries) if i not in drop]
        quarantined = quarantined[-QUARANTINE_KEEP:]
        self._uncommitted = (entries, quarantined)
        if self._session is None:
            return
        unsent = [e for e in entries if e.lane == SOS and (e.node, e.fcnt, e.ts_us) not in self._sos_from_memory]
        if unsent and self._send_bodies(SOS, [e.body for e in unsent]):
            self._sos_from_memory.update((e.node, e.fcnt, e.ts_us) for e in unsent)
            self._count("sos.published_unjournaled", len(unsent))
            log.error("journal cannot commit: %d SOS published from memory", len(unsent))

    # -- operator requests ---------------------------------------------------------------------------------------
    def _take_requests(self) -> None:
        """Carry out the requests ``denen node reset-counter`` left in the journal; the audit line and the
        request's result commit with this wake-up's transaction (until then they are not taken again)."""
        taken = {rid for rid, _ in self._done}
        for req in self.journal.pending_requests():
            if req.id in taken:
                continue
            when = _iso(req.ts_us)
            if req.action != "reset_counter":
                self._done.append((req.id, f"refused: unknown action {req.action!r}"))
                log.error("request %d from %s: unknown action %r; ignored", req.id, req.user, req.action)
                continue
            old = self.decoder.reset_windows(req.node)
            if old is None:
                result = f"refused: the gateway keeps no state for node {req.node}"
                log.error("request %d from %s (%s): reset-counter of node %s refused: no such node", req.id,
                          req.user, when, req.node)
            else:
                name = self.decoder.nodes[req.node].name
                result = (f"node {req.node}{f' ({name})' if name else ''}: windows reset: with MIC "
                          f"{_window(old[0])} -> none, without MIC {_window(old[1])} -> none")
                # Audit: who asked, when, what it was and what it is now (the journal's audit table keeps it too).
                log.warning("audit: reset-counter by user %s (asked %s): %s", req.user, when, result)
                self._audit.append(Audit(clock.wall_us(), req.user, "reset_counter", req.node, result))
                self._count("nodes.window_resets")
            self._done.append((req.id, result))

    # -- clock -------------------------------------------------------------------------------------------------
    def _watch_clock(self, entries: list[Entry]) -> None:
        """Notice clock steps and the sync; give entries stamped on an unsynchronised clock their boot-time stamp."""
        synced = clock.synced()
        boot = clock.boot_us()
        offset = clock.wall_us() - boot
        old_offset, prev_boot = self._clock_offset, self._clock_boot
        stepped = abs(offset - old_offset) > _CLOCK_STEP_US
        if stepped:
            self._count("clock.steps")
            log.warning("the wall clock was stepped by %+.3f s%s", (offset - old_offset) / 1e6,
                        " (synchronised now)" if synced and not self._clock_synced else "")
            self._edge_call(self.edge.on_clock_step, offset - old_offset)
            self._clock_hold_until_us += offset - old_offset
        if not synced or not self._clock_synced or stepped:
            for e in entries:
                if e.boot_us is None and _UNSYNCED_MARK in e.body:
                    # Stamped at ts_us on the wall clock of the time: if the clock was stepped since the last
                    # wake-up, the entry was made under the old offset or the new one, and only one of the two
                    # puts it between the last wake-up and now on the boot-time clock.
                    made = e.ts_us - offset
                    if stepped and not prev_boot - _CLOCK_STEP_US <= made <= boot:
                        made = e.ts_us - old_offset
                    e.boot_us = made
                    self._to_correct = True
        if synced and not self._clock_synced:
            log.info("clock synchronised; readings stamped before are corrected and then published")
        self._clock_synced, self._clock_offset, self._clock_boot = synced, offset, boot

    def _correct_clock(self) -> None:
        """Rewrite a slice of the readings stamped before the sync with their true time."""
        try:
            n = self.journal.correct_clock(self._clock_offset, limit=_CORRECT_PER_STEP)
        except JournalError as exc:
            self._count("clock.correction_failed")
            log.error("%s; trying again at the next wake-up", exc)
            return
        if n:
            self._count("clock.corrected", n)
            log.info("clock: %d readings stamped before the sync got their true time", n)
        if n < _CORRECT_PER_STEP:
            self._to_correct = False

    def _holding(self) -> bool:
        """Whether telemetry and diagnostics stamped on an unsynchronised clock wait (for the sync or a correction)."""
        return self._to_correct and (self._clock_synced or time.monotonic() < self._clock_hold_until)

    def _held(self) -> dict[str, Any]:
        """The ``held`` object of the state document: readings held back because the clock is unsynchronised."""
        if not self._holding():
            return {"active": False, "reason": None, "count": 0, "until_us": None}
        try:
            self._held_count = self.journal.unsynced_count(TELEMETRY) + self._held_fresh
        except JournalError as exc:
            log.error("counting the held readings failed: %s", exc)  # the last count stands meanwhile
        # Synchronised, they wait only for their correction, which takes a few wake-ups.
        until = None if self._clock_synced else self._clock_hold_until_us
        return {"active": True, "reason": "clock_unsynced", "count": self._held_count, "until_us": until}

    def _watch_hold(self) -> None:
        """Log when readings start and stop being held (the state document shows it too)."""
        holding = self._holding()
        if holding == self._held_was:
            return
        self._held_was = holding
        if holding:
            held = self._held()
            log.info("readings held: %d stamped before the clock synchronised wait for the sync, until %s at the "
                     "latest; SOS and alarms go out at once", held["count"], _local(self._clock_hold_until_us))
        elif self._clock_synced:
            log.info("readings no longer held: the clock synchronised and their timestamps are corrected")
        else:
            log.info("readings no longer held: the clock did not synchronise within %.0f s; they go out flagged "
                     "unsynced", CLOCK_HOLD_S)

    # -- state and results --------------------------------------------------------------------------------------
    def _update_state(self) -> None:
        """Record the state document when it changed (journal meta, for ``denen status``) and publish it retained:
        at every connect, and on change at most every _STATE_MIN_S, at once when an SOS or a person changed it."""
        now = time.monotonic()
        urgent = self.edge.state_urgent or self._state_force
        if not urgent and now < self._state_next:
            self._state_recheck = True  # _timeout wakes the core then, so a change is never left unpublished
            return
        self._state_recheck = False
        self.edge.state_urgent = False
        # Looked at no more often than published: a busy core does not build the document at every wake-up.
        self._state_next = now + _STATE_MIN_S
        doc = self._edge_call(self.edge.state, held=self._held())
        if not doc:
            return
        changed = doc != self._state_doc
        if not changed and not self._state_force:
            return
        full = {"schema": doc["schema"], "gateway": doc["gateway"], "ts_us": clock.wall_us(), **doc}
        payload = json.dumps(full, separators=(",", ":"), ensure_ascii=False)
        if changed:
            self._state_doc = doc
            self._meta["gateway_state"] = payload
            self._count("state.changes")
        if self._session is None:
            return  # the next session publishes it
        if not self.link.publish_best_effort(self.link.topics.state, payload.encode(), retain=True):
            self._count("state.unpublished")
            return
        self._state_force = False
        self._count("state.published")

    def _publish_results(self) -> None:
        """Publish the results of the commands carried out in this wake-up; offline, they are dropped (the
        sender retries a command until it sees its result)."""
        for doc in self._results:
            payload = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
            if self._session is None or not self.link.publish_best_effort(self.link.topics.results, payload):
                self._count("cmd.results_dropped")
                self._warn.warning("result_dropped", "mqtt", "results",
                                   "result of %s (request %s) dropped: not connected; the sender retries",
                                   doc["command"], doc["request_id"] or "-")
            else:
                self._count("cmd.results_sent")
        self._results.clear()

    # -- systemd status ---------------------------------------------------------------------------------------
    def _update_status(self, now: float, *, force: bool = False) -> None:
        """Send systemd the status line when it changed: at most every STATUS_MIN_S, at once when ``force`` or
        when the wake-up saw the broker connection change or an SOS.

        Called once per wake-up (never per reading); a change held back by the limit wakes the core later
        (see :meth:`_timeout`), so the line never stays stale.
        """
        force, self._status_force = force or self._status_force, False
        try:
            self._status.update(lambda: self.status_text(now), force=force, now=now)
        except Exception:  # noqa: BLE001 - a status line is never worth stopping the core for
            self._count("status.internal_error")
            log.exception("building the systemd status line failed")

    def status_text(self, now: float | None = None) -> str:
        """The line ``systemctl status denen`` shows, most urgent first, e.g. ``12/15 nodes heard, backlog 0,
        broker ok 3 h`` or ``SOS 1 unacknowledged, offline 2 h, 3,120 readings held, 12/15 nodes heard``.

        Built from what the core keeps in memory (the state document, counters, node states): no journal read,
        except one ``depth()`` after start or a journal replacement.

        Args:
            now: ``time.monotonic()`` seconds (default: now).
        """
        now = time.monotonic() if now is None else now
        doc = self._state_doc or {}
        parts: list[str] = []
        waiting = [a for a in doc.get("alerts", ()) if not a.get("acknowledged_by")]
        sos = sum(1 for a in waiting if a.get("type") == "sos")
        if sos:
            parts.append(f"SOS {sos} unacknowledged")
        if len(waiting) > sos:
            n = len(waiting) - sos
            parts.append(f"{n} alert{'' if n == 1 else 's'} unacknowledged")
        if (doc.get("siren") or {}).get("on"):
            parts.append("siren on")
        if self._retry_commit_at:
            kept = len(self._uncommitted[0]) if self._uncommitted else 0
            parts.append(f"journal failing, {kept:,} readings in memory")
        backlog = self._backlog()
        count = "?" if backlog is None else f"{backlog:,}"
        since = _duration(now - self._broker_since)
        if self._session is None:
            parts.append(f"offline {since}" if self._broker_ever else f"broker not reached yet ({since})")
            parts.append(f"{count} readings held")
            parts.append(self._nodes_heard())
        else:
            parts += [self._nodes_heard(), f"backlog {count}", f"broker ok {since}"]
        held = doc.get("held") or {}
        if not self._clock_synced:
            parts.append("clock unsynced" + (f", {held.get('count', 0):,} readings wait for it"
                                             if held.get("active") else ""))
        elif held.get("active"):
            parts.append(f"clock synced, correcting {held.get('count', 0):,} readings")
        return ", ".join(parts)

    def _nodes_heard(self) -> str:
        """``12/15 nodes heard``: configured nodes not late (the node_silent threshold); without configured
        nodes, every node heard at least once."""
        nodes = self.decoder.nodes
        if not self._late_after_us:
            return f"{sum(1 for st in nodes.values() if st.last_seen_us)} nodes heard"
        now_us = clock.wall_us()
        heard = 0
        for node, late_us in self._late_after_us.items():
            st = nodes.get(node)
            if st is not None and st.last_seen_us and now_us < st.last_seen_us + late_us:
                heard += 1
        return f"{heard}/{len(self._late_after_us)} nodes heard"

    def _backlog(self) -> int | None:
        """Readings not yet acknowledged by the broker: in the journal, and waiting in memory for the commit window
        (journal.commit_window_ms); None when the journal cannot say.

        The last ``depth()`` read (at each health report) moved on by the counters of readings journaled,
        acknowledged and evicted since; so it costs no SQL per status, and any drift lasts one health interval.
        """
        c = self.stats.counters
        evicted = sum(v for k, v in c.items() if k.startswith("journal.evicted."))
        if self._backlog_base is None:
            try:
                total = sum(self.journal.depth().values())
            except JournalError:
                return None
            self._set_backlog_base(total)
            assert self._backlog_base is not None
        total, journaled, acked, evicted0 = self._backlog_base
        return max(0, total + (c["readings.journaled"] - journaled) - (c["readings.acked"] - acked)
                   - (evicted - evicted0)) + len(self._deferred[0])

    def _set_backlog_base(self, depth_total: int) -> None:
        """Anchor :meth:`_backlog` on a journal count just read (``depth_total`` readings)."""
        c = self.stats.counters
        # Acknowledged readings are deleted with the next commit: still counted by depth(), already in acked.
        self._backlog_base = (depth_total - len(self._acked), c["readings.journaled"], c["readings.acked"],
                              sum(v for k, v in c.items() if k.startswith("journal.evicted.")))

    def _replace_journal(self, exc: JournalCorrupt) -> None:
        """Set the damaged journal aside, start a fresh one with what can be salvaged, and alert."""
        log.error("%s", exc)
        try:
            self.journal.close()
        except sqlite3.Error:
            pass
        self.journal, damaged, rescued = open_or_recover(self.journal.path, quota_bytes=self.journal.quota_bytes,
                                                         force=True)
        self._session_reset()
        self._backlog_base = None  # counted again in the new file
        self._journal_damaged(damaged, rescued)

    def _journal_damaged(self, aside: str | None, rescued: int) -> None:
        """Count, log and alert: the journal was found damaged and set aside."""
        self._count("journal.damaged")
        self._count("journal.salvaged", rescued)
        self._carry.extend(self._edge_call(
            self.edge.gateway_alert, "journal_damaged", "warning",
            f"ジャーナル破損、新規作成 / journal damaged, set aside as {aside}; {rescued} unsent readings salvaged"))

    def _session_reset(self) -> None:
        """Forget what is in flight: seqs of a new journal file mean nothing to the current session."""
        self._inflight.clear()
        self._sent_upto = [0] * len(LANES)
        self._acked = []

    def _edge_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call into the edge logic; a bug there is counted and logged, and never stops forwarding."""
        try:
            out = fn(*args, **kwargs)
        except Exception:  # noqa: BLE001
            self._count("edge.internal_error")
            log.exception("edge logic failed in %s", getattr(fn, "__name__", fn))
            return []
        return out if out is not None else []

    # -- publishing --------------------------------------------------------------------------------------------
    def _publish(self, *, urgent: bool) -> None:
        if self._session is None:
            return
        if self._rewind_at and time.monotonic() >= self._rewind_at:
            for lane, first in self._rewind.items():
                # Messages of this lane still in flight are forgotten: their rows are offered again with the rest
                # (a late PUBACK for them is ignored; at worst a reading arrives twice, with the same identity).
                for mid in [m for m, f in self._inflight.items() if f.lane == lane and max(f.seqs) >= first]:
                    del self._inflight[mid]
                self._sent_upto[lane] = min(self._sent_upto[lane], first - 1)
            self._rewind.clear()
            self._rewind_at = 0.0
        window = self.config.mqtt.inflight_window
        batch = self.config.mqtt.batch_max_readings
        if not self._publish_lane(SOS):
            return
        # Backlog batches per wake-up are capped, so a wake-up stays short and an SOS arriving meanwhile waits
        # for little; the next PUBACK wakes the core to send more.
        budget = 1 if urgent else _BATCHES_PER_STEP
        hold = self._holding()
        for lane in range(SOS + 1, len(LANES)):
            while budget and len(self._inflight) < window and self.journal.lane_top[lane] > self._sent_upto[lane]:
                rows = self.journal.pending(lane, after_seq=self._sent_upto[lane], limit=batch,
                                            hold_unsynced=hold and lane >= TELEMETRY)
                if not rows:
                    break
                if not self._send(lane, rows):
                    return
                budget -= 1

    def _publish_lane(self, lane: int) -> bool:
        """Send everything pending in ``lane``, whatever the window holds (used for SOS). False if offline."""
        batch = self.config.mqtt.batch_max_readings
        while True:
            if self.journal.lane_top[lane] <= self._sent_upto[lane]:
                return True  # nothing committed to the lane since it was last sent: no query
            rows = self.journal.pending(lane, after_seq=self._sent_upto[lane], limit=batch)
            if not rows:
                return True
            if not self._send(lane, rows):
                return False

    def _send_bodies(self, lane: int, bodies: list[str]) -> tuple[int, int] | None:
        """Publish one batch message of reading bodies; (session, mid), or None when offline."""
        payload = (
            f'{{"schema":"{READING_SCHEMA}","gateway":"{self.gateway_id}","site":"{self.config.gateway.site}",'
            f'"lane":"{LANES[lane]}",'
            f'"sent_us":{clock.wall_us()},"readings":[' + ",".join(bodies) + "]}"
        ).encode()
        return self.link.publish(self.link.topics.readings[LANES[lane]], payload)

    def _send(self, lane: int, rows: list[tuple[int, str]]) -> bool:
        if self._acked and rows[0][0] <= self._acked_hi:
            # Acknowledged but not yet deleted (the delete commits with the next batch, or the disk is full):
            # the broker has them, so a new session does not send them again.
            acked = set(self._acked)
            kept = [r for r in rows if r[0] not in acked]
            if not kept:
                self._sent_upto[lane] = rows[-1][0]
                return True
            rows = kept
        rows = fit_batch(rows, self._batch_room)
        sent = self._send_bodies(lane, [body for _, body in rows])
        if sent is None:
            return False
        session, mid = sent
        # SOS bodies are kept until their PUBACK, which triggers the receipts the callers asked for.
        bodies = [body for _, body in rows] if lane == SOS else None
        self._inflight[mid] = _Inflight(lane, [seq for seq, _ in rows], time.monotonic(), bodies)
        self._sent_upto[lane] = rows[-1][0]
        return True

    def _on_ack(self, session: int, mid: int, ok: bool, reason: str, code: int = 0) -> None:
        if session != self._session:
            return
        flight = self._inflight.pop(mid, None)
        if flight is None:
            return  # the retained status message, or a session already forgotten
        if code == _NO_MATCHING_SUBSCRIBERS:
            # The broker took the message but nobody was subscribed (the bridge not back yet after a broker
            # restart): nobody has the readings, so they stay journaled and are offered again shortly.
            self._count("mqtt.no_subscribers")
            lane_first = min(flight.seqs)
            self._rewind[flight.lane] = min(self._rewind.get(flight.lane, lane_first), lane_first)
            if not self._rewind_at:
                self._rewind_at = time.monotonic() + _REWIND_S
                log.warning("broker has no subscriber for %s readings; keeping them, retrying in %.0f s",
                            LANES[flight.lane], _REWIND_S)
            return
        if not ok:
            # The broker refused the message (v5 PUBACK failure, e.g. not authorised by its ACL). The readings
            # stay journaled; they are offered again on the next session.
            self._count("mqtt.publish_refused")
            log.error("broker refused a %s batch of %d readings: %s", LANES[flight.lane], len(flight.seqs), reason)
            return
        self._acked.extend(flight.seqs)
        self._acked_hi = max(self._acked_hi, flight.seqs[-1])
        self._count("readings.acked", len(flight.seqs))
        if flight.bodies:
            readings = [json.loads(b) for b in flight.bodies]
            self._edge_call(self.edge.on_sos_acked, [r for r in readings if r.get("kind") == "sos"])

    # -- housekeeping ---------------------------------------------------------------------------------------
    def _check_quota(self) -> None:
        protect = [s for f in self._inflight.values() for s in f.seqs]
        evicted = self.journal.enforce_quota(protect=protect)
        for lane, n in evicted.items():
            self._count(f"journal.evicted.{lane}", n)
        pct = 100.0 * self.journal.size_bytes() / max(1, self.journal.quota_bytes)
        self._carry.extend(self._edge_call(self.edge.on_journal_usage, pct))
        # The size check reads a few pragmas; under load once a second is plenty.
        self._next_quota = time.monotonic() + 1.0

    def _count(self, name: str, n: int = 1) -> None:
        self.stats.counters[name] += n
        self._dirty_counters.add(name)

    def _health_entry(self) -> Entry:
        now_us = clock.wall_us()
        depth = self.journal.depth()
        self._set_backlog_base(sum(depth.values()))
        oldest = self.journal.oldest_ts_us()
        c = self.stats.counters
        values: dict[str, float] = {f"depth_{k}": float(v) for k, v in depth.items()}
        values.update(
            uptime_s=round((now_us - self.stats.started_us) / 1e6, 1),
            oldest_unsent_s=round((now_us - oldest) / 1e6, 1) if oldest else 0.0,
            journal_mb=round(self.journal.size_bytes() / 1048576, 3),
            frames_ok=float(c["frames.ok"]),
            frames_bad=float(sum(v for k, v in c.items() if k.startswith("frames.") and k != "frames.ok")),
            reopens=float(sum(v for k, v in c.items() if k.endswith(".reopen"))),
            nodes_heard=float(sum(1 for n in self.decoder.nodes.values() if n.last_seen_us)),
            siren_on=1.0 if self.edge.siren_sounding else 0.0,
            held_readings=float(self._held()["count"]),
        )
        try:
            values["disk_free_mb"] = round(shutil.disk_usage(os.path.dirname(os.path.abspath(self.journal.path))).free / 1048576, 1)
        except OSError:
            pass
        temp = _cpu_temp_c()
        if temp is not None:
            values["cpu_temp_c"] = temp
        seq = self._next_gateway_seq()
        body = {
            "id": f"{self.gateway_id}/gateway/{seq}",
            "node": "gateway",
            "name": self.gateway_id,
            "fcnt": seq,
            "kind": "gateway_health",
            "lane": "diagnostics",
            "ts_us": now_us,
            "clock": clock.quality(now_us),
            "values": values,
        }
        return Entry(DIAGNOSTICS, "gateway", seq, now_us, json.dumps(body, separators=(",", ":")))


def _window(fcnt: int | None) -> str:
    return "none" if fcnt is None else str(fcnt)


def _duration(seconds: float) -> str:
    """A span for people, in its largest sensible unit: ``45 s``, ``12 min``, ``3 h``, ``4 d``."""
    if seconds < 90:
        return f"{max(0.0, seconds):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def _local(ts_us: int) -> str:
    """µs since the epoch as local time with its zone, to the second (for people reading the log)."""
    return datetime.datetime.fromtimestamp(ts_us / 1e6).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _iso(ts_us: int) -> str:
    """µs since the epoch as an ISO 8601 UTC time, to the second."""
    return datetime.datetime.fromtimestamp(ts_us / 1e6, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _return_free_memory() -> None:
    """Give the heap pages freed after start-up (config validation, schema building) back to the OS.

    Measured: about 1 MiB of RSS on a gateway that runs for months in 512 MiB or less. glibc only; elsewhere a no-op.
    """
    import ctypes  # noqa: PLC0415 - once, at start

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _cpu_temp_c() -> float | None:
    try:
        with open("/sys/class/thermal/thermal_zone0/temp") as f:
            return round(int(f.read().strip()) / 1000, 1)
    except (OSError, ValueError):
        return None
