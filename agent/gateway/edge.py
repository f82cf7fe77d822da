"""What the gateway does on site, besides forwarding: edge alert rules, local siren and lamp, the GPIO rain gauge,
the installer test button, and SOS receipts back to the caller's node.

The core (agent/gateway/core.py) owns the journal and calls :class:`Edge` from its own thread; everything here returns
journal entries for the core to commit, so alerts go through the same durable path as readings. Receipts are
sent from one small thread of their own, because a transmit waits for the module (up to seconds) and the core must
never block on a radio.

Commands from the backend (README "Commands": ``cmd/alert-ack``, ``cmd/siren-silence``, ``cmd/test-chirp``) are
carried out by :meth:`Edge.on_command` (a command document is read and checked in agent.gateway.edge_commands),
which returns the result document the core publishes on
``<prefix>/<gateway>/results``; :meth:`Edge.state` is the body of the retained ``<prefix>/<gateway>/state``
document (siren, lamp, held readings, open alerts).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.gateway import clock
from agent.gateway.edge_commands import (
    COMMANDS,
    RESULT_SCHEMA,
    CommandRequest,
    InvalidCommand,
    alert_targets,
    read_command,
    silence_key,
)
from agent.gateway.events import ButtonPressed, Event, Wake
from agent.gateway.reading import ALARM, Entry, own_reading
from agent.gateway.readings import FrameDecoder
from agent.gateway.receipt_backup import BackupReceipts
from agent.i18n import N_, _
from agent.ratelog import RateLimitedLog
from agent.rules import Alert, AlertTracker, RuleEngine, RulesConfig, node_infos

__all__ = ["STATE_SCHEMA", "Edge"]

log = logging.getLogger(__name__)

_US = 1_000_000

STATE_SCHEMA = "denen.state/1"
# How long after a self test starts the state shows the siren and lamp as they are again, in seconds (the test
# takes 0.6 s: agent.gateway.fieldio).
_SELF_TEST_STATE_S = 0.8
_SEVERITY_ORDER = {"info": 0, "warning": 1, "emergency": 2}


class Edge:
    """Rules, outputs and receipts of one gateway.

    Args:
        config: the gateway config.
        decoder: the core's frame decoder (node state, keys, local readings).
        next_seq: returns the next gateway sequence number (identity of gateway-made readings such as alerts).
        count: ``count(name, n=1)`` adds to a gateway counter.
        post: puts an event into the core's inbox (thread-safe).
        meta: the journal's meta table at start (rule and tracker snapshots are restored from it).
    """

    def __init__(self, config: Any, decoder: FrameDecoder, *, next_seq: Callable[[], int],
                 count: Callable[..., None], post: Callable[[Event], None], meta: dict[str, str]) -> None:
        self.config = config
        self.gateway_id = config.gateway.id
        self.decoder = decoder
        self._next_seq = next_seq
        self._count = count
        self._post = post
        now_us = clock.wall_us()
        self.rules_config: RulesConfig = getattr(config, "rules", None) or RulesConfig()
        self.rules = RuleEngine(self.rules_config, node_infos(config.nodes), start_us=now_us)
        self.tracker = AlertTracker(repeat_s=self.rules_config.repeat_s, deadline_s=self.rules_config.deadline_s)
        self._restored: list[Alert] = []
        # alert id -> (journal seq, ts_us) it was first journaled with: a repeat is the identical reading.
        self._alert_seq: dict[str, tuple[int, int]] = {}
        self._last_alert_ts = 0
        # Alert ids silenced by cmd/siren-silence and alert ids acknowledged by cmd/alert-ack, each with who did it
        # (None when the command named nobody); both only for active alerts.
        self._silenced: dict[str, str | None] = {}
        self._acked_by: dict[str, str | None] = {}
        self._restore_state(meta)
        self._snapshot_dirty = False
        self._expired_seen = self.tracker.expired
        self._cmd_prefix = f"{config.mqtt.topic_prefix}/{self.gateway_id}/cmd/"
        # Bad commands come at the rate of whoever holds a backend login: the first per reason and minute in full.
        self._warn = RateLimitedLog(log)
        #: Set when something an SOS or a person did changed the state document: the core publishes it at once.
        self.state_urgent = False
        self.io = self._build_io()
        self._lamp: str | None = None
        self._siren: bool | None = None
        self._siren_alert: Alert | None = None  # the alert the siren sounds for
        self._connected = False
        # Monotonic end of a self test (button or remote): the core looks at the state document again then.
        self._test_until: float | None = None
        # Receipt senders' state (airtime used in the sliding hour, receipts waiting): restored in attach_radios,
        # saved whenever the receipts thread has worked.
        self._receipts_meta = meta.get("receipts_snapshot") or None
        self._receipts_saved: str | None = self._receipts_meta
        self._receipts_dirty = False
        gauge = getattr(getattr(config, "gpio", None), "rain_gauge", None)
        self._rain_gauge = gauge if self.io is not None else None
        self._next_rain = time.monotonic() + gauge.report_interval_s if self._rain_gauge else None
        self._senders: dict[str, Any] = {}
        self._backup = BackupReceipts()
        self._receipt_wake = threading.Event()
        self._receipt_thread: threading.Thread | None = None
        self._stop = False

    # -- construction ----------------------------------------------------------------------------------------
    def _build_io(self) -> Any:
        gpio = getattr(self.config, "gpio", None)
        if gpio is None:
            return None
        from agent.gateway.fieldio import FieldIO, GpioError  # noqa: PLC0415 - gpiozero only when GPIO is configured

        try:
            return FieldIO(gpio, on_test_button=lambda: self._post(ButtonPressed()))
        except GpioError as exc:
            # The gateway still forwards readings without its lamp and siren; doctor explains the fix.
            self._count("gpio.unavailable")
            log.error("%s", _("GPIO unavailable, running without lamp/siren/rain gauge: {error}").format(error=exc))
            return None

    def attach_radios(self, radios: list[Any]) -> None:
        """Build one receipt sender per radio that can transmit, sharing an airtime budget per channel."""
        receipts = getattr(self.config, "receipts", None)
        if receipts is None or not receipts.enabled:
            return
        from agent.gateway.receipt_senders import build_senders  # noqa: PLC0415 - only with receipts enabled

        self._senders.update(build_senders(receipts, radios, wake=self._receipt_wake.set))
        self._restore_receipts()
        if self._senders:
            self._receipt_thread = threading.Thread(target=self._receipts_loop, name="receipts", daemon=True)
            self._receipt_thread.start()

    def close(self) -> None:
        self._stop = True
        self._receipt_wake.set()
        if self._receipt_thread is not None:
            self._receipt_thread.join(5)
        if self.io is not None:
            self.io.close()

    # -- inputs from the core -----------------------------------------------------------------------------------
    def on_reading(self, body: dict[str, Any]) -> list[Entry]:
        """Alerts raised or cleared by one accepted reading, as journal entries."""
        return self._journal_alerts(self.rules.on_reading(body))

    def on_incident(self, radio: str, kind: str) -> list[Entry]:
        now_us = clock.wall_us()
        if kind == "port_lost":
            return self._journal_alerts(self.rules.on_gateway_event("module_lost", now_us=now_us, radio=radio))
        if kind in ("configured", "reopen"):
            return self._journal_alerts(self.rules.on_gateway_event("module_back", now_us=now_us, radio=radio))
        return []

    def on_clock_step(self, delta_us: int) -> None:
        """The wall clock was stepped by ``delta_us`` µs (positive: forward): the rules move their stored times."""
        self.rules.on_gateway_event("clock_step", now_us=clock.wall_us(), delta_us=delta_us)

    def on_journal_usage(self, pct: float) -> list[Entry]:
        now_us = clock.wall_us()
        return self._journal_alerts(self.rules.on_gateway_event("journal_usage", now_us=now_us, pct=pct))

    def on_command(self, topic: str, payload: bytes) -> dict[str, Any] | None:
        """Carry out a command from the backend on ``<prefix>/<gateway>/cmd/<name>`` (README "Commands").

        Never raises, whatever the payload: a bad one is counted (``cmd.bad``, ``cmd.unknown``) and logged
        (rate-limited), and changes nothing.

        Returns:
            The result document (``denen.result/1``) for ``<prefix>/<gateway>/results``, or None when there is no
            one to answer: an unknown command, or a payload that is too large, not a JSON object, or whose
            ``request_id`` is unusable.
        """
        name = topic[len(self._cmd_prefix):] if topic.startswith(self._cmd_prefix) else ""
        if name not in COMMANDS:
            self._count("cmd.unknown")
            self._warn.warning("unknown", "command", N_("commands"), "%s", _(
                "unknown command on {topic} ignored (known: {known})").format(topic=repr(topic[:200]),
                                                                               known=", ".join(COMMANDS)))
            return None
        req = CommandRequest(name)
        try:
            req, doc = read_command(name, payload)
            if name == "alert-ack":
                results = self._alert_ack(req, alert_targets(doc))
            elif name == "siren-silence":
                results = self._siren_silence(req, silence_key(doc))
            else:
                results = self._test_chirp(req)
        except InvalidCommand as exc:
            req = exc.request or req
            self._count("cmd.bad")
            self._warn.warning(f"bad {name}", "command", N_("commands"), "%s", _(
                "command {command} refused (request {request}): {error}; payload starts {start}").format(
                command=name, request=req.request_id or "-", error=exc, start=repr(payload[:80])))
            if req.request_id is None:
                return None
            results = [{"target": None, "outcome": "invalid", "detail": str(exc)}]
        else:
            self._count(f"cmd.{name.replace('-', '_')}")
        return {"schema": RESULT_SCHEMA, "gateway": self.gateway_id, "ts_us": clock.wall_us(), "command": name,
                "request_id": req.request_id, "by": req.by, "via": req.via, "results": results}

    def _alert_ack(self, req: CommandRequest, targets: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """``cmd/alert-ack``: stop the repeats of active alerts named by key (``<type>:<node>``) or by id."""
        results = []
        active = self.rules.active()  # an acknowledgement changes the repeats, never what is active
        for field, target in targets:
            if field == "keys":
                hits = [a for a in active if target in (a.ack_key, a.key)]
                repeating = [a.id for a in hits if a.id in self.tracker]
            else:
                # Published ids carry the gateway (<gateway>:<alert id>); the tracker knows the local part. An id
                # may name a clear too: its repeats stop the same way.
                local = target.removeprefix(f"{self.gateway_id}:")
                hits = [a for a in active if a.id == local]
                repeating = [local] if local in self.tracker else []
            for alert_id in repeating:
                self.tracker.confirm(alert_id)
            for a in hits:
                if self._acked_by.get(a.id) is None:
                    self._acked_by[a.id] = req.by
            outcome = "stopped" if repeating else "already_acknowledged" if hits else "not_active"
            if repeating or hits:
                self._snapshot_dirty = True
                self.state_urgent = True
            self._count("alerts.confirmed", len(repeating))
            results.append({"target": target, "outcome": outcome})
        log.info("%s", _("{command} by {by} via {via} (request {request}): {outcome}").format(
            command="alert-ack", by=repr(req.by), via=req.via, request=req.request_id,
            outcome=", ".join(f"{r['target']} {r['outcome']}" for r in results)))
        return results

    def _siren_silence(self, req: CommandRequest, key: str) -> list[dict[str, Any]]:
        """``cmd/siren-silence``: silence the siren for the alerts of one key, until another alert wants it."""
        if self.io is None or not self.io.has_siren:
            outcome = "no_siren"
        else:
            sounding = [a for a in self.rules.siren_alerts()
                        if a.id not in self._silenced and key in (a.ack_key, a.key)]
            if not sounding or not self._siren:
                outcome = "not_sounding"
            else:
                for a in sounding:
                    self._silenced[a.id] = req.by
                self._apply_siren()
                self._count("siren.silenced")
                self._snapshot_dirty = True
                self.state_urgent = True
                outcome = "silenced"
        log.info("%s", _("{command} for {key} by {by} via {via} (request {request}): {outcome}").format(
            command="siren-silence", key=key, by=repr(req.by), via=req.via, request=req.request_id,
            outcome=outcome))
        return [{"target": key, "outcome": outcome}]

    def _test_chirp(self, req: CommandRequest) -> list[dict[str, Any]]:
        """``cmd/test-chirp``: the installer's self test (lamp flicker, siren chirp), started remotely."""
        if self.io is None or not self.io.start_self_test():
            outcome = "no_outputs"
        else:
            self._test_until = time.monotonic() + _SELF_TEST_STATE_S
            self.state_urgent = True
            outcome = "chirped"
        log.info("%s", _("{command} by {by} via {via} (request {request}): {outcome}").format(
            command="test-chirp", by=repr(req.by), via=req.via, request=req.request_id, outcome=outcome))
        return [{"target": None, "outcome": outcome}]

    def on_sos_acked(self, readings: list[dict[str, Any]]) -> None:
        """The broker acknowledged these SOS readings: send the receipts their nodes asked for."""
        from agent.gateway.receipt_airtime import ReceiptError  # noqa: PLC0415
        from drivers.errors import FrameError  # noqa: PLC0415

        for r in readings:
            if not r.get("receipt"):
                continue
            sender = self._senders.get(r.get("radio", ""))
            if sender is None:
                self._count("receipts.no_sender")
                continue
            node_id = int(r["node"], 16)
            key = self.decoder.key_for(node_id)
            if key is not None and r.get("auth") != "mic":
                # An unsigned frame claiming a keyed node (accepted under unauthenticated: flag) must not get a
                # receipt signed with the node's key: a forger could pick the counter of the real caller's SOS and
                # make the caller's device stop resending it.
                self._count("receipts.unauthenticated")
                continue
            delay_s = 0.0
            if getattr(self.config.node_by_id.get(node_id), "receipt", "send") == "backup":
                # Another gateway answers this node; this one only a resend, or any SOS in the first minutes
                # after its start, after a random wait (agent.gateway.receipt_backup).
                wait = self._backup.delay_s(node_id)
                if wait is None:
                    self._count("receipts.left_to_answering_gateway")
                    continue
                delay_s = wait
            try:
                sender.request(node_id, int(r["fcnt"]), key, delay_s=delay_s)
            except (ReceiptError, FrameError) as exc:
                self._count("receipts.refused")
                log.error("%s", _("receipt for node {node} counter {counter} not sent: {error}").format(
                    node=r["node"], counter=r["fcnt"], error=exc))
            self._receipts_dirty = True

    def gateway_alert(self, type_: str, severity: str, message: str) -> list[Entry]:
        """An alert about the gateway itself that no rule raises (e.g. its journal was damaged)."""
        now_us = clock.wall_us()
        alert = Alert(id=f"{type_}#{now_us}", key=type_, type=type_, state="raised", severity=severity, node=None,
                      name=self.gateway_id, level=None, value=None, threshold=None, message=message, ts_us=now_us)
        return self._journal_alerts([alert])

    def test_button(self) -> None:
        """The test button was pressed: FieldIO runs the chirp itself; the state document shows it."""
        if self.io is not None:
            self._test_until = time.monotonic() + _SELF_TEST_STATE_S

    # -- timers ----------------------------------------------------------------------------------------------
    def due(self, *, connected: bool) -> list[Entry]:
        """Everything time-based that is due now: silence checks, alert repeats, rain gauge reports."""
        now_us = clock.wall_us()
        entries: list[Entry] = []
        self._warn.tick()  # the summary of bad commands held back, once their minute has passed
        if self._restored:
            entries += self._journal_alerts(self._restored)
            self._restored = []
        nxt = self.rules.next_tick_us()
        if nxt is not None and nxt <= now_us:
            entries += self._journal_alerts(self.rules.tick(now_us))
        # Repeats only while the link is up: offline, the first copy is still in the journal.
        if connected:
            for alert in self.tracker.due(now_us):
                entries.append(self._alert_entry(alert))
                self._count("alerts.repeated")
                self._snapshot_dirty = True
        if self.tracker.expired != self._expired_seen:
            self._count("alerts.expired", self.tracker.expired - self._expired_seen)
            self._expired_seen = self.tracker.expired
            self._snapshot_dirty = True
        if self._next_rain is not None and time.monotonic() >= self._next_rain:
            entries += self._rain_entries(now_us)
            self._next_rain = time.monotonic() + self._rain_gauge.report_interval_s
        if self._test_until is not None and time.monotonic() >= self._test_until:
            self._test_until = None
        return entries

    def next_deadline(self) -> float | None:
        """Monotonic time (s) of the next timer here, or None."""
        now_us, now = clock.wall_us(), time.monotonic()
        cands = [t for t in (self._next_rain, self._test_until) if t is not None]
        for us in (self.rules.next_tick_us(), self.tracker.next_due_us()):
            if us is not None:
                cands.append(now + max(0, us - now_us) / _US)
        if self._restored:
            cands.append(now)
        return min(cands) if cands else None

    # -- outputs ---------------------------------------------------------------------------------------------
    def update_outputs(self, *, connected: bool) -> None:
        """Lamp and siren follow the active alerts and the backhaul; both work with no network at all."""
        self._connected = connected
        if self.io is None:
            return
        lamp = self._lamp_wanted()
        if lamp != self._lamp:
            self.io.set_lamp(lamp)
            self._lamp = lamp
        self._apply_siren()

    @property
    def siren_sounding(self) -> bool:
        """Whether the siren sounds for an alert now (a configured siren only; a test chirp is not counted)."""
        return bool(self._siren) and self.io is not None and self.io.has_siren

    def state(self, *, held: dict[str, Any]) -> dict[str, Any]:
        """The state document (``denen.state/1``, README "State") without its ``ts_us``.

        Args:
            held: the ``held`` object, from the core (which owns the journal and the clock hold).
        """
        io = self.io
        has_siren = io is not None and io.has_siren
        wanting = self.rules.siren_alerts() if has_siren else []
        live = [a for a in wanting if a.id not in self._silenced]
        sounding = has_siren and bool(self._siren)
        # From the command until the core looks again after the test: the test thread may not have begun yet.
        testing = has_siren and io is not None and (io.testing or self._test_until is not None)
        silenced = sorted({a.ack_key for a in wanting if a.id in self._silenced} - {a.ack_key for a in live})
        groups: dict[str, list[Alert]] = {}
        for a in self.rules.active():
            groups.setdefault(a.ack_key, []).append(a)
        alerts = []
        for key, group in groups.items():
            # One entry per key: the most severe alert of it, at its highest river stage, newest.
            a = max(group, key=lambda x: (_SEVERITY_ORDER.get(x.severity, 0), x.level or 0, x.ts_us))
            alerts.append({
                "key": key, "id": f"{self.gateway_id}:{a.id}", "type": a.type, "node": a.node, "name": a.name,
                "severity": a.severity, "since_us": a.ts_us, "message": a.message, "value": a.value,
                "lat_deg": a.lat_deg, "lon_deg": a.lon_deg,
                "repeating": any(x.id in self.tracker for x in group),
                "acknowledged_by": self._acked_by.get(a.id),
            })
        return {
            "schema": STATE_SCHEMA,
            "gateway": self.gateway_id,
            "siren": {"configured": has_siren, "on": sounding or testing,
                      "why": "alert" if sounding else "test" if testing else None,
                      "alert": live[0].ack_key if sounding and live else None, "silenced": silenced},
            "lamp": {"configured": io is not None and io.has_lamp, "state": self._lamp_wanted()},
            "relays": [],
            "held": held,
            "alerts": alerts,
        }

    def snapshot_meta(self) -> dict[str, str] | None:
        """Rule, tracker, silence and receipt state to store with the next commit, when it changed."""
        out: dict[str, str] = {}
        if self._snapshot_dirty:
            self._snapshot_dirty = False
            pending = {a.id for a in self.tracker.pending()}
            self._alert_seq = {k: v for k, v in self._alert_seq.items() if k in pending}
            out.update({"rules_snapshot": json.dumps(self.rules.snapshot(), separators=(",", ":")),
                        "alerts_snapshot": json.dumps(self.tracker.snapshot(), separators=(",", ":")),
                        "alert_seqs": json.dumps(self._alert_seq, separators=(",", ":")),
                        "edge_outputs": json.dumps({"silenced": self._silenced, "acked_by": self._acked_by},
                                                   separators=(",", ":"), ensure_ascii=False)})
        if self._receipts_dirty:
            self._receipts_dirty = False
            text = self._receipts_snapshot()
            if text is not None and text != self._receipts_saved:
                out["receipts_snapshot"] = self._receipts_saved = text
        return out or None

    def _lamp_wanted(self) -> str:
        lamp = self.rules.lamp_state()
        return "no_backhaul" if lamp == "ok" and not self._connected else lamp

    def _apply_siren(self) -> None:
        """Sound the siren while an active alert that wants it is not silenced; log when it starts and stops."""
        if self.io is None:
            return
        live = [a for a in self.rules.siren_alerts() if a.id not in self._silenced]
        on = bool(live)
        if on == self._siren:
            if on:
                self._siren_alert = live[0]
            return
        self.io.set_siren(on)
        self._siren = on
        before, self._siren_alert = self._siren_alert, live[0] if live else None
        if not self.io.has_siren:
            return
        if on:
            a = live[0]
            log.info("%s", _("siren on: alert {alert} ({severity}, {id}): {message}").format(
                alert=a.ack_key, severity=a.severity, id=a.id, message=a.message))
        elif before is not None:
            if before.id in self._silenced:
                why = _("siren off: silenced for alert {alert} by {by}").format(alert=before.ack_key,
                                                                               by=repr(self._silenced[before.id]))
            elif before.id not in {a.id for a in self.rules.active()}:
                why = _("siren off: alert {alert} cleared").format(alert=before.ack_key)
            else:
                why = _("siren off: alert {alert} no longer wants it").format(alert=before.ack_key)
            log.info("%s", why)

    def _restore_state(self, meta: dict[str, str]) -> None:
        """Rules, tracker, alert sequences, silences and acknowledgements from the journal's meta at start; a
        damaged snapshot costs its part of the history (counted ``edge.restore_failed``), never the agent."""
        try:
            if meta.get("alert_seqs"):
                self._alert_seq = {str(k): (int(v[0]), int(v[1]))
                                   for k, v in json.loads(meta["alert_seqs"]).items()}
            if meta.get("rules_snapshot"):
                self._restored = self.rules.restore(json.loads(meta["rules_snapshot"]))
            if meta.get("alerts_snapshot"):
                self.tracker.restore(json.loads(meta["alerts_snapshot"]))
        except (ValueError, KeyError, TypeError) as exc:
            log.error("%s", _("could not restore the edge rules' state ({error}); starting them afresh").format(
                error=exc))
            self._count("edge.restore_failed")
        try:
            if meta.get("edge_outputs"):
                self._restore_outputs(json.loads(meta["edge_outputs"]))
        except (ValueError, TypeError, KeyError) as exc:
            log.error("%s", _("could not restore which alerts were silenced and acknowledged ({error}); starting "
                              "afresh").format(error=exc))
            self._count("edge.restore_failed")
            self._silenced, self._acked_by = {}, {}

    def _restore_outputs(self, snap: Any) -> None:
        silenced, acked = snap["silenced"], snap["acked_by"]
        if not (isinstance(silenced, dict) and isinstance(acked, dict)) or not all(
                isinstance(k, str) and (v is None or isinstance(v, str))
                for d in (silenced, acked) for k, v in d.items()):
            raise ValueError("edge_outputs: silenced and acked_by must map alert ids to who (text or null)")
        active = {a.id for a in self.rules.active()}
        self._silenced = {k: v for k, v in silenced.items() if k in active}
        self._acked_by = {k: v for k, v in acked.items() if k in active}

    def _restore_receipts(self) -> None:
        """Give each receipt sender back its state from before the restart; a bad snapshot costs only it."""
        text, self._receipts_meta = self._receipts_meta, None
        if text and self._senders:
            from agent.gateway.receipt_senders import restore_senders  # noqa: PLC0415

            restore_senders(self._senders, text, self._count)

    def _receipts_snapshot(self) -> str | None:
        """Every receipt sender's state as one JSON text (by radio), or None when no sender can snapshot."""
        from agent.gateway.receipt_senders import senders_snapshot  # noqa: PLC0415

        return senders_snapshot(self._senders, self._count)

    # -- internals -------------------------------------------------------------------------------------------
    def _journal_alerts(self, alerts: list[Alert]) -> list[Entry]:
        if not alerts:
            return []
        now_us = clock.wall_us()
        out = []
        for alert in alerts:
            log.warning("%s", _("alert {type} {state}: {message}").format(type=alert.type, state=alert.state,
                                                                           message=alert.message))
            self._count(f"alerts.{alert.type}.{alert.state}")
            self.tracker.add(alert, now_us)
            out.append(self._alert_entry(alert))
            if alert.type == "sos":
                self.state_urgent = True
        if self._silenced or self._acked_by:
            active = {a.id for a in self.rules.active()}
            self._silenced = {k: v for k, v in self._silenced.items() if k in active}
            self._acked_by = {k: v for k, v in self._acked_by.items() if k in active}
        self._snapshot_dirty = True
        return out

    def _alert_entry(self, alert: Alert) -> Entry:
        """An alert as a reading of kind ``alert`` (README "Alerts"); repeats reuse the identical body."""
        # A repeat must be the same reading (same identity), so each alert event keeps the sequence it got first.
        first = self._alert_seq.get(alert.id)
        if first is None:
            # Alerts decided by one reading share its time; InfluxDB keys points by tags and time, so each alert
            # point gets its own microsecond (two stages crossed at once must stay two points).
            ts = max(alert.ts_us, self._last_alert_ts + 1)
            self._last_alert_ts = ts
            first = self._alert_seq[alert.id] = (self._next_seq(), ts)
        seq, ts_us = first
        values: dict[str, float] = {"raised": 1.0 if alert.state == "raised" else 0.0}
        for key in ("value", "threshold", "level", "lat_deg", "lon_deg"):
            v = getattr(alert, key)
            if v is not None:
                values[key] = float(v)
        return own_reading(self.gateway_id, seq, "alert", ALARM, ts_us, values, alert={
            "id": f"{self.gateway_id}:{alert.id}", "key": alert.key, "type": alert.type, "state": alert.state,
            "severity": alert.severity, "node": alert.node, "name": alert.name, "message": alert.message,
            "unit": alert.unit, "reading": alert.reading,
        })

    def _rain_entries(self, now_us: int) -> list[Entry]:
        gauge = self._rain_gauge
        since, total = self.io.take_rain()
        node_hex = f"{gauge.node_uint:08x}"
        values = {"rain_mm": round(gauge.tips_to_mm(since), 3), "tips": float(total)}
        entry, body = self.decoder.local_reading(node_hex, "rain", values, ts_us=now_us, source="gpio")
        return [entry, *self.on_reading(body)]

    def _receipts_loop(self) -> None:
        while not self._stop:
            waits = []
            for name, sender in self._senders.items():
                try:
                    w = sender.pump()
                except Exception:  # noqa: BLE001 - a radio failure must not end receipts for everyone
                    log.exception("%s", _("receipt sender on radio {radio} failed").format(radio=name))
                    w = 5.0
                if w is not None:
                    waits.append(w)
            # The airtime used and the queue may have changed: the core saves them with its next commit.
            self._receipts_dirty = True
            self._post(Wake())
            self._receipt_wake.wait(min(waits) if waits else None)
            self._receipt_wake.clear()
