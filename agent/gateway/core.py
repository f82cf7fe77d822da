"""The gateway core: radios -> decode -> durable journal -> MQTT.

Threads (agent.gateway.events): one per radio (drivers.radio.RadioWorker) reads its port and hands over frames; the
MQTT link (agent.gateway.publisher.MqttLink) posts ``Connected``, ``Ack``, ``Disconnected``, ``Command``; the core
(``Gateway.run``) sleeps on its inbox. The core's work, and the journal, belong to whoever holds the core's lock
(events.CoreTurn): the core's thread for each wake-up, or a radio's thread that delivers frames while it sleeps.

Each wake-up writes what arrived in ONE transaction (group commit; telemetry may wait for the commit window), then
publishes (agent.gateway.outbox). An SOS is committed and published at once, ahead of anything else; the backlog
drains through a bounded window of messages awaiting PUBACK, so a new SOS never queues behind more than that
window. A reading leaves the journal only when its PUBACK arrives.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import sys
import threading
import time
from typing import Any

from agent import __version__, systemd
from agent.config import Config
from agent.errors import JournalError
from agent.gateway import clock, health, heap
from agent.gateway.clockwatch import ClockWatch
from agent.gateway.counters import CounterWrites
from agent.gateway.edge import Edge
from agent.gateway.events import (
    Ack,
    ButtonPressed,
    Command,
    Connected,
    CoreTurn,
    Disconnected,
    Event,
    Incident,
    Publisher,
    Rearm,
    Uplinks,
    Wake,
    drain,
)
from agent.gateway.inmemory import ACK_FOLD_S, CommitWindow, bounded
from agent.gateway.intake import decode_chunk, gatherable, log_incident
from agent.gateway.journal import (
    QUARANTINE_KEEP,
    Audit,
    JournalCorrupt,
    open_or_recover,
)
from agent.gateway.operator_requests import take_requests
from agent.gateway.outbox import Outbox
from agent.gateway.publisher import MqttLink
from agent.gateway.reading import (
    DIAGNOSTICS,
    TELEMETRY,
    Entry,
    Quarantined,
    own_reading,
)
from agent.gateway.readings import FrameDecoder
from agent.gateway.statedoc import StateDocument
from agent.i18n import _
from agent.ratelog import RateLimitedLog
from drivers.types import Uplink

log = logging.getLogger(__name__)

_DRAIN_MAX = 2000  # inbox events handled per transaction, so one wake-up never grows without bound
COMMIT_RETRY_S = 1.0  # while commits fail, they are tried again this often (at once for an SOS), in seconds
#: Acknowledged readings waiting for their deletion that make a commit due at once, whatever the commit window: a
#: drain's deletions go in commits of about this size, which a new SOS may wait behind (here 1.3 ms for 250, 3.2 ms
#: for 1,000; a drain's deletions then write 13 % more bytes, its rate unchanged: tests/bench sos).
ACK_FOLD_MAX = 250


class Gateway:
    """One gateway: its radios, its journal and its publisher.

    Args:
        config: a validated config.
        publisher: the way to the broker; None builds an :class:`~agent.gateway.publisher.MqttLink` from
            ``config.mqtt``. The gateway calls its ``bind(inbox.put)`` here and ``start()`` in :meth:`run`.
        radios: radio workers to start; None builds them from ``config.radios`` (tests may pass their own).
        active_config: how the config in use was found, recorded in the journal for ``denen status``.

    Driving the core by hand (tests, benchmarks): post events into :attr:`inbox` (or call :meth:`on_uplinks`),
    then :meth:`step`; :meth:`wait_s` says how long :meth:`run` would sleep before its next wake-up.
    """

    def __init__(self, config: Config, *, publisher: Publisher | None = None, radios: list[Any] | None = None,
                 active_config: str = "") -> None:
        self.config = config
        self.active_config = active_config
        self.gateway_id = config.gateway.id
        self.inbox: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.turn = CoreTurn(self.inbox)
        self.journal, damaged, rescued = open_or_recover(
            config.journal.path, quota_bytes=int(config.journal.quota_mb * 1024 * 1024))
        self.stats = health.GatewayStats()
        self.stats.counters.update(self.journal.counters())
        self.counters = CounterWrites(self.stats.counters)  # which the journal lacks; written every ~10 s
        self._count = self.counters.count
        # Warnings a hostile node or a garbled module cause at any rate: in full once per (reason, sender) a minute.
        self._warn = RateLimitedLog(log)
        self.decoder = FrameDecoder(config, self.journal.nodes(), count=self._count, warn=self._warn)
        self.decoder.age_out(clock.wall_us())
        self.link: Publisher = publisher if publisher is not None else MqttLink(
            config.mqtt, self.gateway_id, version=__version__)
        self.link.bind(self._post_from_link)
        self.radios = radios if radios is not None else self._build_radios()
        meta = self.journal.meta()
        # One sequence for every reading the gateway itself makes (health reports, alerts): their identity.
        self._gateway_seq = int(meta.get("gateway_seq", meta.get("health_seq", "0")))
        self.edge = Edge(config, self.decoder, next_seq=self._next_gateway_seq, count=self._count,
                         post=self.inbox.put, meta=meta)
        self.edge.attach_radios(self.radios)
        self.outbox = Outbox(config, self.link, self.journal, count=self._count, frames_waiting=self.turn.has_frames,
                             on_sos_acked=lambda sos: self._edge_call(self.edge.on_sos_acked, sos))
        # Clock: readings stamped before NTP sync are held (telemetry, diagnostics) and corrected once it syncs.
        self.clockwatch = ClockWatch(self.journal, count=self._count,
                                     on_step=lambda step_us: self._edge_call(self.edge.on_clock_step, step_us))
        self._stop = threading.Event()
        self.failure: str | None = None  # why the core stopped by itself (the journal lost); None: it did not
        self._thread: threading.Thread | None = None
        self._watchdog_s = systemd.watchdog_interval_s()
        self._init_commit_path(config)
        self._init_state_and_status(config)
        if damaged:
            self._journal_damaged(damaged, rescued)

    def _init_commit_path(self, config: Config) -> None:
        self._audit: list[Audit] = []  # operator requests carried out, not yet committed: audit lines
        self._done: list[tuple[int, str]] = []  # and (request id, result)
        self._carry: list[Entry] = []  # entries made after a commit (quota alerts), committed at the next wake-up
        self._meta: dict[str, str] = {}  # meta rows (edge snapshots, the state document) awaiting a commit
        self._next_health = time.monotonic() + config.health.interval_s
        self._next_quota = 0.0
        self._uncommitted: tuple[list[Entry], list[Quarantined]] | None = None
        self.window = CommitWindow(config.journal.commit_window_ms / 1000)
        self._retry_commit_at = 0.0

    def _init_state_and_status(self, config: Config) -> None:
        self.state = StateDocument(self.link, self.edge, count=self._count, warn=self._warn, build=lambda: (
            self._edge_call(self.edge.state, held=self.clockwatch.held(self.journal))))
        self.status = health.SystemdStatus(self._count)
        self._backlog = health.Backlog(self.stats.counters)
        self._late_after_us = health.late_after_us(config)

    def _build_radios(self) -> list[Any]:
        from drivers.radio import RadioWorker  # noqa: PLC0415 - hardware layer loaded only when a gateway runs

        return [RadioWorker(rc, self) for rc in self.config.radios]

    # -- RadioEvents (called from radio threads) ---------------------------------------------------------
    def on_uplinks(self, uplinks: list[Uplink]) -> None:
        self.turn.deliver(uplinks, self._inline_turn, self._gather)

    def _gather(self, uplinks: list[Uplink], wake_at: float) -> float:
        """The commit window's end if these frames wait for it undecoded (CoreTurn.deliver, CommitWindow.gather); 0: not."""
        return 0.0 if self._retry_commit_at or not gatherable(uplinks) else self.window.gather(time.monotonic(), wake_at)

    def _inline_turn(self) -> None:
        """One wake-up's work on a radio's thread (under the core's lock); see :meth:`CoreTurn.rearm`. Frames that
        only join an open commit window leave the core's deadline as planned (its end)."""
        due = self.window.due
        events = drain(self.inbox, 0, _DRAIN_MAX)
        if self._guarded(self._wakeup, events) and not (due and self.window.due == due):
            self._guarded(lambda: self.turn.rearm(time.monotonic() + self.wait_s()))
        if any(type(e) is Rearm or type(e) is Wake for e in events):
            self.inbox.put(Rearm())  # the core's thread's: else it sleeps to its old deadline, or past stop()

    def _post_from_link(self, event: Event) -> None:
        """The MQTT link's events; a telemetry PUBACK with nothing else to send waits for the core's next wake-up.
        Never takes the core's lock: paho calls this holding its message lock, which a radio's turn may wait for."""
        if type(event) is Ack and self.outbox.ack_may_wait(event) and self.turn.defer_ack(event):
            if self.outbox.quiet:
                return
            event = Rearm()  # a commit since ack_may_wait left readings to send: the core takes it from turn.acks
        self.inbox.put(event)

    def on_incident(self, radio: str, kind: str, detail: str) -> None:
        self.inbox.put(Incident(radio, kind, detail))

    def wake(self) -> None:
        """Make the core look again at once (any thread; e.g. on SIGUSR1)."""
        self.inbox.put(Wake())

    def _next_gateway_seq(self) -> int:
        self._gateway_seq += 1
        return self._gateway_seq

    # -- life cycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start radios, the publisher and the core thread; returns at once."""
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
        log.info("%s", _("gateway {gateway} running: {radios} radios, journal {path}").format(
            gateway=self.gateway_id, radios=len(self.radios), path=self.journal.path))
        heap.trim()
        systemd.ready()
        self.update_status(force=True)
        (turn := self.turn).inline = True
        try:
            while not self._stop.is_set():
                with turn.lock:
                    ok = self._guarded(turn.plan, self.wait_s)
                events = turn.sleep(max(0.0, turn.wake_at - time.monotonic()), _DRAIN_MAX) if ok else None
                if events is not None:  # None: only woken to plan the sleep again, for a sooner deadline
                    with turn.lock:
                        ok = self._guarded(self._wakeup, events)
                if not ok:
                    self._stop.wait(1.0)
        finally:
            with turn.lock:
                turn.inline = False
                self._shutdown()

    def _guarded(self, work: Any, *args: Any) -> bool:
        """``work(*args)``, surviving its failures; False after an unexpected error."""
        try:
            work(*args)
        except JournalCorrupt as exc:
            # Found by a read (publishing, quota, clock correction): what was committed is salvaged.
            self._replace_journal(exc)
        except Exception:  # noqa: BLE001 - the core must outlive its own bugs; nothing is acked on failure
            self._count("core.internal_error")
            log.exception("%s", _("core: unexpected error; carrying on"))
            return False
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the core (its last wake-up commits what waits) and wait up to ``timeout`` s for its thread."""
        self._stop.set()
        self.inbox.put(Wake())
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _shutdown(self) -> None:
        systemd.stopping()
        for r in self.radios:
            try:
                r.stop()
            except Exception:  # noqa: BLE001 - stopping must go on for the others
                log.exception("%s", _("stopping radio {radio} failed").format(radio=getattr(r, "radio", r)))
        self.link.stop()
        self.edge.close()
        if self.failure:
            return  # no journal to write to
        # Handle what is still waiting, so nothing the radios delivered is left only in memory.
        self._handle(drain(self.inbox, 0, _DRAIN_MAX))
        self._warn.flush()
        self.journal.commit(meta={"agent_pid": ""}, counters=self.counters.take(0.0, force=True))
        self.journal.close()

    def wait_s(self) -> float:
        """Seconds the core may sleep: until the next timer, never below 1 s when idle (no busy polling)."""
        now = time.monotonic()
        if self._carry or self.clockwatch.correction_due or self.turn.waiting(self.outbox):
            return 0.0
        deadlines = [self._next_health, *self.clockwatch.deadlines(now)]
        if self._watchdog_s:
            # The watchdog is fed from this loop, so a core that hangs is restarted by systemd.
            deadlines.append(now + self._watchdog_s / 2)
        if self.outbox.inflight or self.turn.acks:
            deadlines.append(now + ACK_FOLD_S)  # PUBACKs may wait for the core (CoreTurn.acks): this long at most
        if self.state.recheck:
            deadlines.append(self.state.next_at)
        if self.status.line.pending:
            deadlines.append(self.status.line.next_at)
        for at in (self._retry_commit_at, self.window.due, self.outbox.rewind_at, self.edge.next_deadline(),
                   self.counters.deadline(planned=self.window.due or self._retry_commit_at)):
            if at:  # 0 or None: no such deadline
                deadlines.append(at)
        return max(0.0, min(deadlines) - now)

    @property
    def unjournaled(self) -> list[Entry]:
        """Readings kept in memory because the journal could not commit them (empty while commits succeed)."""
        return list(self._uncommitted[0]) if self._uncommitted else []

    # -- one wake-up -----------------------------------------------------------------------------------------
    def step(self, timeout: float = 0.0) -> None:
        """One pass of the core loop: wait up to ``timeout`` s for an event, handle everything waiting (commit,
        publish), then send systemd the status line if it is due."""
        self._wakeup(drain(self.inbox, timeout, _DRAIN_MAX))

    def _wakeup(self, events: list[Event]) -> None:
        self._handle(events)
        self.update_status()  # after the wake-up's commit, so the line counts what this wake-up journaled

    def _handle(self, events: list[Event]) -> None:
        """One wake-up's events (with the PUBACKs and frames waiting in :attr:`turn`): decode, commit, publish."""
        if self._watchdog_s:
            systemd.ping()
        events = self.turn.take(events, _DRAIN_MAX)
        entries: list[Entry] = self._carry
        self._carry = []
        quarantined: list[Quarantined] = []
        urgent = False
        self._warn.tick()
        if self.journal.changed_elsewhere(woken=any(type(e) is Wake for e in events)):
            # Before this wake-up's frames: a frame heard after the request is judged by the new window.
            take_requests(self.journal, self.decoder, done=self._done, audit=self._audit, count=self._count)
        for event in events:
            match event:
                case Uplinks(uplinks):
                    urgent = decode_chunk(uplinks, self.decoder, self.edge.on_reading, entries=entries,
                                          quarantined=quarantined, count=self._count, warn=self._warn) or urgent
                case Ack():
                    self.outbox.on_ack(event)
                case Incident(radio, kind, detail):
                    log_incident(radio, kind, detail, count=self._count, warn=self._warn)
                    entries.extend(self._edge_call(self.edge.on_incident, radio, kind))
                case Command(topic, payload):
                    result = self._edge_call(self.edge.on_command, topic, payload)
                    if result:
                        self.state.results.append(result)
                case ButtonPressed():
                    # The installer's button: lamp and siren chirp, and a health report goes out at once, so the
                    # installer sees the whole path work (it shows in the backend within seconds).
                    self._count("gateway.test_button")
                    self._edge_call(self.edge.test_button)
                    entries.append(self.health_reading())
                case Connected(session):
                    self._on_connected(session)
                case Disconnected(session, reason):
                    self._on_disconnected(session, reason)
                case _:
                    pass  # Wake: only a look again
        now = time.monotonic()
        self._timers(entries, now)
        if urgent and self.outbox.session is not None and not self._uncommitted:
            entries = self.outbox.sos_first(entries)
        # Siren and lamp before the commit (they need no disk), then what they show, then the commands' results.
        self._edge_call(self.edge.update_outputs, connected=self.outbox.session is not None)
        online = self.outbox.session is not None
        self.state.update(online=online, meta=self._meta)
        if urgent:
            self.status.force = True
        self.state.publish_results(online=online)
        self._meta.update(self.edge.snapshot_meta() or {})
        self._commit_or_wait(entries, quarantined, urgent, now)

    def _on_connected(self, session: int) -> None:
        self.outbox.session_up(session)
        self._count("mqtt.connects")
        self.state.force = True  # retained, but the broker may have lost it: every session gets it
        self.status.broker_changed(up=True)

    def _on_disconnected(self, session: int, reason: str) -> None:
        if self.outbox.session_down(session):
            self._count("mqtt.disconnects")
            log.warning("%s", _("MQTT session {session} ended: {reason}; readings stay in the journal").format(
                session=session, reason=reason))
            self.status.broker_changed(up=False)

    def _timers(self, entries: list[Entry], now: float) -> None:
        """The health report and the edge's timers when due; the clock's look at this wake-up's entries."""
        if now >= self._next_health:
            entries.append(self.health_reading())
            self._next_health = now + self.config.health.interval_s
            self.decoder.age_out(clock.wall_us())
        entries.extend(self._edge_call(self.edge.due, connected=self.outbox.session is not None))
        self.clockwatch.watch(entries)
        # Counted as the journal counts them (every lane; an SOS or alarm leaves as soon as the broker has it).
        self.clockwatch.fresh_held = self.window.held + sum(
            1 for e in entries if e.boot_us is not None and e.lane >= TELEMETRY)
        self.clockwatch.log_hold(self.journal)

    # -- the commit ------------------------------------------------------------------------------------------
    def _commit_or_wait(self, entries: list[Entry], quarantined: list[Quarantined], urgent: bool,
                        now: float) -> None:
        """Commit this wake-up's work (with what waits in the window or in memory), or let it wait; then publish."""
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
        decoder, meta, window = self.decoder, self._meta, self.window
        if entries or quarantined or window.entries or window.quarantined or self.outbox.acked or decoder.dirty \
                or decoder.forgotten or self.counters.due(now) or self._done or meta:
            if self._may_wait(entries, len(window.entries) + len(entries), urgent, now):
                # Within the commit window: kept in memory (a power cut loses at most this window's frames);
                # the node states, counters and acknowledgements wait with them for the same transaction.
                window.wait(entries, quarantined, held=self.clockwatch.fresh_held, now=now,
                            more_waits=bool(decoder.dirty or decoder.forgotten or meta or self.counters.due(now)))
                self._publish(urgent=urgent)
                return
            entries, quarantined = window.take(entries, quarantined, now, acks_left=urgent and bool(self.outbox.acked))
            if not self._commit(entries, quarantined, now, urgent):
                return
        if self.clockwatch.correction_due:
            self.clockwatch.correct(self.journal)
        self._publish(urgent=urgent)

    def _commit(self, entries: list[Entry], quarantined: list[Quarantined], now: float, urgent: bool) -> bool:
        """One transaction of everything gathered; False when it failed (what it held is kept in memory). The
        counters join it when due (agent.gateway.counters), with an SOS or alarm, when it holds no new reading (the
        deletions after a drain: ``denen status`` is current once the journal is empty), or when stopping. Deletions
        never join an SOS's or alarm's commit (up to ACK_FOLD_MAX made it 2-3 ms longer: tests/bench sos)."""
        decoder, meta = self.decoder, self._meta
        acked = [] if urgent else self.outbox.acked
        try:
            self.journal.commit(
                entries=entries, acked=acked, nodes=[decoder.nodes[n] for n in decoder.dirty], quarantined=quarantined,
                counters=self.counters.take(now, force=urgent or not entries or self._stop.is_set()),
                meta={**meta, "gateway_seq": str(self._gateway_seq)} if (meta or any(
                    e.node == "gateway" for e in entries)) else None,
                forget=decoder.forgotten, audit=self._audit, done=self._done,
            )
        except JournalCorrupt as exc:
            # The file went bad under us: keep this batch, move the damaged file aside, carry on in a new one.
            self._uncommitted = (entries, quarantined)
            self._replace_journal(exc)
            self._retry_commit_at = time.monotonic()
            return False
        except JournalError as exc:
            # Nothing of this batch is durable; it stays in memory and is tried again (the radios keep
            # delivering meanwhile). The journaled backlog still goes out: its PUBACKs free room.
            self._count("journal.commit_failed")
            if not self._retry_commit_at:
                log.error("%s", _("journal commit failed ({count} readings kept in memory, retrying every {seconds} "
                                  "s): {error}").format(count=len(entries), seconds=f"{COMMIT_RETRY_S:.0f}", error=exc))
            self._keep_unjournaled(entries, quarantined)
            self._retry_commit_at = time.monotonic() + COMMIT_RETRY_S
            self._publish(urgent=False)
            return False
        self._committed(entries, now, acked=bool(acked))
        return True

    def _committed(self, entries: list[Entry], now: float, *, acked: bool) -> None:
        """Forget what the commit made durable (``acked``: the acknowledged readings were deleted with it)."""
        if self._retry_commit_at:
            log.warning("%s", _("journal commits again; the readings kept in memory are journaled"))
        self._retry_commit_at = 0.0
        self.counters.written(now)
        self.outbox.journaled(deleted=acked)
        if entries:
            # Counted after the commit; the counter itself becomes durable with a later one.
            self._count("readings.journaled", len(entries))
        decoder = self.decoder
        decoder.dirty.clear()
        for node in decoder.forgotten:
            self._edge_call(self.edge.rules.forget, node)
        decoder.forgotten.clear()
        self._audit, self._done, self._meta = [], [], {}
        self.clockwatch.fresh_held = 0
        if entries and (self._next_quota == 0.0 or now >= self._next_quota):
            self._check_quota()

    def _may_wait(self, entries: list[Entry], total: int, urgent: bool, now: float) -> bool:
        """Whether this wake-up's work (its new ``entries``; ``total`` with those already waiting) may wait for the
        commit window to close instead of committing now.

        Never for an SOS or alarm (nor anything waiting beside one: they commit together at once), an operator's
        request, a core that is stopping, a window already due, more than ACK_FOLD_MAX acknowledgements, while
        commits are failing (what was kept in memory is committed as soon as the disk takes it), or while readings
        stamped before the clock's sync wait for their correction: the correction rewrites journaled rows only, so
        what waits in memory must be committed first, or it would leave later with its unsynchronised stamp.
        """
        if not self.window.window_s or urgent or self._stop.is_set() or self._done or self._audit or self._retry_commit_at:
            return False
        if self.clockwatch.correction_due:
            return False
        if self.window.closed(now) or (entries and self.window.quiet(now)):
            return False  # the window is over, or a frame after a quiet window (it would wait alone)
        if len(self.outbox.acked) >= ACK_FOLD_MAX or total >= _DRAIN_MAX:
            return False
        return all(e.lane >= TELEMETRY for e in entries)

    def _keep_unjournaled(self, entries: list[Entry], quarantined: list[Quarantined]) -> None:
        """Hold what could not be committed, within UNJOURNALED_MAX; an SOS goes out from memory meanwhile."""
        entries = bounded(entries, self._count)
        self._uncommitted = (entries, quarantined[-QUARANTINE_KEEP:])
        self.outbox.publish_unjournaled_sos(entries)

    def _publish(self, *, urgent: bool) -> None:
        self.outbox.publish(urgent=urgent, hold=self.clockwatch.holding())

    # -- what the gateway says about itself ---------------------------------------------------------------------
    def update_status(self, now: float | None = None, *, force: bool = False) -> None:
        """Send systemd the status line if due (see :class:`agent.gateway.health.SystemdStatus`); once per
        wake-up, never per reading; a change held back by the limit wakes the core later (:meth:`wait_s`).

        Args:
            now: ``time.monotonic()`` seconds (default: now).
        """
        now = time.monotonic() if now is None else now
        self.status.update(lambda: self.status_text(now), now=now, force=force)

    def status_text(self, now: float | None = None) -> str:
        """The line ``systemctl status denen`` shows (see :func:`agent.gateway.health.status_text`).

        Built from what the core keeps in memory (the state document, counters, node states): no journal read,
        except one ``depth()`` after start or a journal replacement.

        Args:
            now: ``time.monotonic()`` seconds (default: now).
        """
        now = time.monotonic() if now is None else now
        kept = None
        if self._retry_commit_at:
            kept = len(self._uncommitted[0]) if self._uncommitted else 0
        return health.status_text(
            self.state.doc or {}, unjournaled=kept, backlog=self.backlog(), online=self.outbox.session is not None,
            broker_ever=self.status.broker_ever, broker_for_s=now - self.status.broker_since,
            nodes_heard=health.nodes_heard(self.decoder.nodes, self._late_after_us, clock.wall_us()),
            clock_synced=self.clockwatch.synced)

    def backlog(self) -> int | None:
        """Readings not yet acknowledged by the broker, in the journal or waiting in memory for the commit window;
        None when the journal cannot say (see :class:`agent.gateway.health.Backlog`)."""
        return self._backlog.count(self.journal, acked_waiting=len(self.outbox.acked), in_window=len(self.window.entries))

    def health_reading(self) -> Entry:
        """The ``gateway_health`` reading as of now; it takes the next number of the gateway's own sequence."""
        now_us = clock.wall_us()
        depth = self.journal.depth()
        self._backlog.anchor(sum(depth.values()), len(self.outbox.acked))
        values = health.health_values(
            self.journal, depth, self.stats.counters, self.decoder.nodes, now_us=now_us,
            started_us=self.stats.started_us, siren_on=self.edge.siren_sounding,
            held=self.clockwatch.held(self.journal)["count"])
        return own_reading(self.gateway_id, self._next_gateway_seq(), "gateway_health", DIAGNOSTICS, now_us, values)

    # -- housekeeping ---------------------------------------------------------------------------------------
    def _replace_journal(self, exc: JournalCorrupt) -> None:
        """Set the damaged journal aside, start a fresh one with what can be salvaged, and alert."""
        log.error("%s", exc)
        try:
            self.journal.close()
        except sqlite3.Error:
            pass
        try:
            self.journal, damaged, rescued = open_or_recover(self.journal.path, quota_bytes=self.journal.quota_bytes,
                                                             force=True)
        except Exception as failed:  # noqa: BLE001 - e.g. the card remounted read-only: on any thread, stop
            log.critical("%s", _("the journal is damaged and could not be replaced ({error}); stopping, so that the "
                                 "service restarts").format(error=failed))
            self.failure = str(failed)
            self.stop(timeout=0)
            return
        self.outbox.journal = self.journal
        self.outbox.forget()
        self._backlog.forget()  # counted again in the new file
        self._journal_damaged(damaged, rescued)

    def _journal_damaged(self, aside: str | None, rescued: int) -> None:
        """Count, log and alert: the journal was found damaged and set aside."""
        self._count("journal.damaged")
        self._count("journal.salvaged", rescued)
        self._carry.extend(self._edge_call(
            self.edge.gateway_alert, "journal_damaged", "warning",
            f"ジャーナル破損、新規作成 / journal damaged, set aside as {aside}; {rescued} unsent readings salvaged"))

    def _edge_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call into the edge logic; a bug there is counted and logged, and never stops forwarding."""
        try:
            out = fn(*args, **kwargs)
        except Exception:  # noqa: BLE001
            self._count("edge.internal_error")
            log.exception("%s", _("edge logic failed in {step}").format(step=getattr(fn, "__name__", fn)))
            return []
        return out if out is not None else []

    def _check_quota(self) -> None:
        evicted = self.journal.enforce_quota(protect=self.outbox.protected())
        for lane, n in evicted.items():
            self.counters.count(f"journal.evicted.{lane}", n, at_once=True)
        pct = 100.0 * self.journal.size_bytes() / max(1, self.journal.quota_bytes)
        self._carry.extend(self._edge_call(self.edge.on_journal_usage, pct))
        # The size check reads a few pragmas; under load once a second is plenty.
        self._next_quota = time.monotonic() + 1.0
