"""What the gateway does on site, besides forwarding: edge alert rules, local siren and lamp, the GPIO rain gauge,
the installer test button, and SOS receipts back to the caller's node.

The core (agent/gateway.py) owns the journal and calls :class:`Edge` from its own thread; everything here returns
journal entries for the core to commit, so alerts go through the same durable path as readings. Receipts are
sent from one small thread of their own, because a transmit waits for the module (up to seconds) and the core must
never block on a radio.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent import clock
from agent.journal import ALARM, Entry
from agent.readings import FrameDecoder
from agent.rules import Alert, AlertTracker, RuleEngine, RulesConfig, node_infos

log = logging.getLogger(__name__)

_US = 1_000_000


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
                 count: Callable[..., None], post: Callable[[tuple], None], meta: dict[str, str]) -> None:
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
        try:
            if meta.get("alert_seqs"):
                self._alert_seq = {str(k): (int(v[0]), int(v[1]))
                                   for k, v in json.loads(meta["alert_seqs"]).items()}
            if meta.get("rules_snapshot"):
                self._restored = self.rules.restore(json.loads(meta["rules_snapshot"]))
            if meta.get("alerts_snapshot"):
                self.tracker.restore(json.loads(meta["alerts_snapshot"]))
        except (ValueError, KeyError, TypeError) as exc:
            # A damaged snapshot costs the rule history, never the agent: start the rules afresh.
            log.error("could not restore the edge rules' state (%s); starting them afresh", exc)
            count("edge.restore_failed")
        self._snapshot_dirty = False
        self._expired_seen = self.tracker.expired
        self.io = self._build_io()
        self._lamp: str | None = None
        self._siren: bool | None = None
        gauge = getattr(getattr(config, "gpio", None), "rain_gauge", None)
        self._rain_gauge = gauge if self.io is not None else None
        self._next_rain = time.monotonic() + gauge.report_interval_s if self._rain_gauge else None
        self._senders: dict[str, Any] = {}
        self._receipt_wake = threading.Event()
        self._receipt_thread: threading.Thread | None = None
        self._stop = False

    # -- construction ----------------------------------------------------------------------------------------
    def _build_io(self) -> Any:
        gpio = getattr(self.config, "gpio", None)
        if gpio is None:
            return None
        from agent.fieldio import FieldIO, GpioError  # noqa: PLC0415 - gpiozero only when GPIO is configured

        try:
            return FieldIO(gpio, on_test_button=lambda: self._post(("test_button",)))
        except GpioError as exc:
            # The gateway still forwards readings without its lamp and siren; doctor explains the fix.
            self._count("gpio.unavailable")
            log.error("GPIO unavailable, running without lamp/siren/rain gauge: %s", exc)
            return None

    def attach_radios(self, radios: list[Any]) -> None:
        """Build one receipt sender per radio that can transmit, sharing an airtime budget per channel."""
        receipts = getattr(self.config, "receipts", None)
        if receipts is None or not receipts.enabled:
            return
        from agent.receipts import AirtimeBudget, ReceiptError, build_receipt_sender  # noqa: PLC0415

        budgets: dict[int, AirtimeBudget] = {}
        for radio in radios:
            rc = getattr(radio, "config", None)
            p2p = getattr(rc, "p2p", None)
            if rc is None or p2p is None:
                continue  # ES920LR receipts would need the node's module address; not wired yet
            try:
                budget = budgets.get(p2p.frequency_hz)
                if budget is None:
                    budget = budgets[p2p.frequency_hz] = AirtimeBudget(
                        receipts.rules_for(p2p.frequency_hz, bw_khz=p2p.bandwidth_khz))
                sender = build_receipt_sender(
                    receipts, radio.transmit, frequency_hz=p2p.frequency_hz, sf=p2p.spreading_factor,
                    bw_khz=p2p.bandwidth_khz, cr=p2p.coding_rate, preamble=p2p.preamble, budget=budget,
                    wake=self._receipt_wake.set)
            except ReceiptError as exc:
                log.error("receipts disabled on %s: %s", rc.name, exc)
                continue
            if sender is not None:
                self._senders[rc.name] = sender
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

    def on_command(self, topic: str, payload: bytes) -> None:
        """Commands from the backend on ``<prefix>/<gateway>/cmd/...`` (README "Commands")."""
        name = topic.rsplit("/", 1)[-1]
        try:
            doc = json.loads(payload)
        except ValueError:
            self._count("cmd.bad_json")
            log.warning("command %s: payload is not JSON: %r", topic, payload[:80])
            return
        if name == "alert-ack" and isinstance(doc, dict):
            ids = doc.get("alert_ids", [doc.get("alert_id")])
            confirmed = 0
            for full in ids if isinstance(ids, list) else []:
                if isinstance(full, str):
                    # Published ids carry the gateway (<gateway>:<alert id>); the tracker knows the local part.
                    confirmed += self.tracker.confirm(full.split(":", 1)[1] if ":" in full else full)
            self._count("alerts.confirmed", confirmed)
            self._snapshot_dirty = True
            return
        self._count("cmd.unknown")
        log.warning("unknown command %s (known: alert-ack)", topic)

    def on_sos_acked(self, readings: list[dict[str, Any]]) -> None:
        """The broker acknowledged these SOS readings: send the receipts their nodes asked for."""
        from agent.receipts import ReceiptError  # noqa: PLC0415
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
            try:
                sender.request(node_id, int(r["fcnt"]), key)
            except (ReceiptError, FrameError) as exc:
                self._count("receipts.refused")
                log.error("receipt for %s/%s not sent: %s", r["node"], r["fcnt"], exc)

    def gateway_alert(self, type_: str, severity: str, message: str) -> list[Entry]:
        """An alert about the gateway itself that no rule raises (e.g. its journal was damaged)."""
        now_us = clock.wall_us()
        alert = Alert(id=f"{type_}#{now_us}", key=type_, type=type_, state="raised", severity=severity, node=None,
                      name=self.gateway_id, level=None, value=None, threshold=None, message=message, ts_us=now_us)
        return self._journal_alerts([alert])

    def test_button(self) -> None:
        if self.io is not None:
            self.io.self_test()

    # -- timers ----------------------------------------------------------------------------------------------
    def due(self, *, connected: bool) -> list[Entry]:
        """Everything time-based that is due now: silence checks, alert repeats, rain gauge reports."""
        now_us = clock.wall_us()
        entries: list[Entry] = []
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
        return entries

    def next_deadline(self) -> float | None:
        """Monotonic time (s) of the next timer here, or None."""
        now_us, now = clock.wall_us(), time.monotonic()
        cands = [self._next_rain] if self._next_rain is not None else []
        for us in (self.rules.next_tick_us(), self.tracker.next_due_us()):
            if us is not None:
                cands.append(now + max(0, us - now_us) / _US)
        if self._restored:
            cands.append(now)
        return min(cands) if cands else None

    # -- outputs ---------------------------------------------------------------------------------------------
    def update_outputs(self, *, connected: bool) -> None:
        """Lamp and siren follow the active alerts and the backhaul; both work with no network at all."""
        if self.io is None:
            return
        lamp = self.rules.lamp_state()
        if lamp == "ok" and not connected:
            lamp = "no_backhaul"
        if lamp != self._lamp:
            self.io.set_lamp(lamp)
            self._lamp = lamp
        siren = self.rules.siren_wanted()
        if siren != self._siren:
            self.io.set_siren(siren)
            self._siren = siren

    def snapshot_meta(self) -> dict[str, str] | None:
        """Rule and tracker state to store with the next commit, when it changed."""
        if not self._snapshot_dirty:
            return None
        self._snapshot_dirty = False
        pending = {a.id for a in self.tracker.pending()}
        self._alert_seq = {k: v for k, v in self._alert_seq.items() if k in pending}
        return {"rules_snapshot": json.dumps(self.rules.snapshot(), separators=(",", ":")),
                "alerts_snapshot": json.dumps(self.tracker.snapshot(), separators=(",", ":")),
                "alert_seqs": json.dumps(self._alert_seq, separators=(",", ":"))}

    # -- internals -------------------------------------------------------------------------------------------
    def _journal_alerts(self, alerts: list[Alert]) -> list[Entry]:
        if not alerts:
            return []
        now_us = clock.wall_us()
        out = []
        for alert in alerts:
            log.warning("alert %s %s: %s", alert.type, alert.state, alert.message)
            self._count(f"alerts.{alert.type}.{alert.state}")
            self.tracker.add(alert, now_us)
            out.append(self._alert_entry(alert))
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
        body = {
            "id": f"{self.gateway_id}/gateway/{seq}",
            "node": "gateway",
            "name": self.gateway_id,
            "fcnt": seq,
            "kind": "alert",
            "lane": "alarm",
            "ts_us": ts_us,
            "clock": clock.quality(ts_us),
            "alert": {
                "id": f"{self.gateway_id}:{alert.id}", "key": alert.key, "type": alert.type, "state": alert.state,
                "severity": alert.severity, "node": alert.node, "name": alert.name, "message": alert.message,
                "unit": alert.unit, "reading": alert.reading,
            },
            "values": values,
        }
        return Entry(ALARM, "gateway", seq, ts_us, json.dumps(body, separators=(",", ":"), ensure_ascii=False))

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
                    log.exception("receipt sender %s failed", name)
                    w = 5.0
                if w is not None:
                    waits.append(w)
            self._receipt_wake.wait(min(waits) if waits else None)
            self._receipt_wake.clear()
