"""The rule engine: readings and gateway events in, raised and cleared alerts out. See agent/rules/__init__.py for
the alert table, the rate rule and the handling of duplicate and out-of-order readings."""

from __future__ import annotations

import heapq
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.i18n import _
from agent.rules.alert import (
    _SEVERITY_RANK,
    _STAGE_SEVERITY,
    _US_PER_H,
    _US_PER_S,
    CLEARED,
    EMERGENCY,
    INFO,
    RAISED,
    STAGE_NAMES,
    WARNING,
    Alert,
    NodeInfo,
    _duration,
    _is_int,
    _n,
    _number,
    _siren_names_of,
    lamp_for,
    siren_for,
)
from agent.rules.config import RiverRule, RulesConfig, SlopeRule
from agent.rules.state import (
    _HISTORY_MAX,
    SNAPSHOT_SCHEMA,
    _NodeState,
    _push_sample,
    _rate_reference,
    parse_snapshot,
)

log = logging.getLogger("agent.rules")  # one logger for the package: journal lines keep the name operators filter on


class RuleEngine:
    """Evaluates the edge alert rules. Not thread-safe: owned by the gateway's core thread.

    Args:
        config: the ``rules:`` section.
        nodes: configured nodes by id (8 lowercase hex digits); see :func:`node_infos`.
        start_us: engine start, µs since the Unix epoch; nodes never heard count their silence from here.
    """

    def __init__(self, config: RulesConfig, nodes: Mapping[str, NodeInfo], *, start_us: int) -> None:
        self.config = config
        self._nodes = dict(nodes)
        self._rivers = {r.node: r for r in config.rivers}
        self._slopes = {s.node: s for s in config.slopes}
        self._start_us = start_us
        self._now_us = start_us  # newest time seen (snapshot time)
        self._seq = 0
        self._active: dict[str, Alert] = {}
        self._state: dict[str, _NodeState] = {}
        self._river_hist: dict[str, deque[tuple[int, float]]] = {}
        self._slope_hist: dict[str, deque[tuple[int, float, float]]] = {}
        watched = set(config.silence_kinds)
        self._silence_us: dict[str, int] = {
            node: math.ceil(config.silence_factor * info.interval_s * _US_PER_S)
            for node, info in self._nodes.items()
            if info.kind in watched
        }
        # Silence deadlines: _deadline holds each watched node's true deadline; the heap holds at most one live
        # entry per node (_scheduled), possibly earlier than the true deadline. A reading only moves _deadline
        # (O(1)); when an early entry pops, tick() re-pushes the node at its true deadline. So the heap never
        # holds more than about one entry per node, and tick() touches only nodes whose entry is due.
        self._deadline: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        self._scheduled: dict[str, int] = {}
        #: Readings ignored as duplicates or out of order.
        self.stale = 0
        for node in self._nodes:
            self._state[node] = _NodeState(silence_base_us=start_us)
        self._rebuild_deadlines()
        for rule_node, what, kind in [(r, "rivers", "water_level") for r in self._rivers] + [
            (s, "slopes", "tilt") for s in self._slopes
        ]:
            info = self._nodes.get(rule_node)
            if info is None:
                log.warning("%s", _("rules.{section} names node {node}, which is not in nodes:; its rule applies if "
                                    "it is heard").format(section=what, node=rule_node))
            elif info.kind != kind:
                log.warning("%s", _("rules.{section} names node {node} ({name}), which is configured as {kind}, "
                                    "not {wanted}").format(section=what, node=rule_node, name=info.name,
                                                           kind=info.kind, wanted=kind))

    # -- public API -------------------------------------------------------------------------------------------

    def on_reading(self, reading: Mapping[str, Any]) -> list[Alert]:
        """Evaluate one accepted reading (README "Reading batch schema"). Never raises for bad input.

        Returns:
            Alerts raised or cleared by it, in the order they happened.
        """
        node = reading.get("node")
        ts_us = reading.get("ts_us")
        if not isinstance(node, str) or node == "gateway":
            return []
        if not _is_int(ts_us):
            log.warning("%s", _("reading from node {node} without an integer ts_us ignored by the rules").format(
                node=node))
            return []
        assert isinstance(ts_us, int)
        fcnt_raw = reading.get("fcnt")
        st = self._accept(node, ts_us, fcnt_raw if _is_int(fcnt_raw) else None)
        if st is None:
            return []
        values = reading.get("values")
        if not isinstance(values, Mapping):
            values = {}
        info = self._nodes.get(node)
        raw_name, raw_id = reading.get("name"), reading.get("id")
        name = info.name if info is not None else (raw_name if isinstance(raw_name, str) else None)
        ctx = _Ctx(node, name, ts_us, raw_id if isinstance(raw_id, str) else None)
        kind = reading.get("kind")

        out: list[Alert] = []
        self._heard(ctx, st, out)
        if kind == "sos" and self.config.sos:
            self._sos(ctx, values, out, unsigned=reading.get("auth") not in (None, "mic", "local"))
        if kind == "trap" and self.config.trap:
            self._trap(ctx, values, out)
        node_kind = info.kind if info is not None else (kind if isinstance(kind, str) else None)
        self._measurements(ctx, values, node_kind, out)
        return out

    def _accept(self, node: str, ts_us: int, fcnt: int | None) -> _NodeState | None:
        """Take a reading's order (frame counter, time) into the node's state; None when it is stale (package
        docstring: duplicates and out-of-order readings)."""
        st = self._state.get(node)
        if st is None:
            st = self._state[node] = _NodeState(silence_base_us=ts_us)
        newer_time = st.last_ts_us is None or ts_us > st.last_ts_us
        newer_count = fcnt is not None and st.last_fcnt is not None and fcnt > st.last_fcnt
        if not newer_time and not newer_count:
            self.stale += 1
            log.debug("stale reading from %s ignored by the rules (fcnt %s, ts_us %s)", node, fcnt, ts_us)
            return None
        if not newer_time:
            # Newer frame stamped earlier: the clock was set back. Rates across the step would be nonsense.
            log.info("%s", _("node {node}: reading stamped before the previous one (clock set back?); rate windows "
                             "restart").format(node=node))
            self._river_hist.pop(node, None)
            self._slope_hist.pop(node, None)
        st.last_ts_us = ts_us
        if fcnt is not None:
            st.last_fcnt = fcnt
        self._now_us = max(self._now_us, ts_us)
        return st

    def _measurements(self, ctx: _Ctx, values: Mapping[str, Any], node_kind: str | None, out: list[Alert]) -> None:
        """The rules on measured values: river level, slope tilt, battery voltage."""
        node = ctx.node or ""
        rule = self._rivers.get(node)
        if rule is not None:
            level = _number(values.get("level_cm"))
            if level is not None:
                self._river(ctx, rule, level, out)
        slope = self._slopes.get(node)
        if slope is not None:
            tx, ty = _number(values.get("tilt_x_deg")), _number(values.get("tilt_y_deg"))
            if tx is not None and ty is not None:
                self._slope(ctx, slope, tx - slope.zero_x_deg, ty - slope.zero_y_deg, out)
        battery = _number(values.get("battery_v"))
        if battery is not None:
            self._battery(ctx, self.config.battery_threshold_v(node_kind), battery, out)

    def tick(self, now_us: int) -> list[Alert]:
        """Raise node_silent for every node whose silence deadline has passed. Cost: O(due nodes x log n)."""
        self._now_us = max(self._now_us, now_us)
        out: list[Alert] = []
        while self._heap and self._heap[0][0] <= now_us:
            when, node = heapq.heappop(self._heap)
            if self._scheduled.get(node) != when:
                continue  # superseded entry (an earlier one for this node was pushed after a clock step)
            del self._scheduled[node]
            deadline = self._deadline[node]
            if deadline > now_us:
                self._schedule(node, deadline)  # heard since this entry was pushed
                continue
            key = f"node_silent:{node}"
            if key in self._active:
                continue
            silent_s = (now_us - self._state[node].silence_base_us) / _US_PER_S
            limit_s = self._silence_us[node] / _US_PER_S
            info = self._nodes[node]
            out.append(self._raise(
                key, "node_silent", WARNING, _Ctx(node, info.name, now_us, None),
                f"ノードからの受信途絶 / node silent: no frame for {_duration(silent_s)} "
                f"(expected every {_duration(info.interval_s)})",
                value=silent_s, threshold=limit_s, unit="s",
            ))
        return out

    def next_tick_us(self) -> int | None:
        """When :meth:`tick` must run next (µs since the epoch), or None when nothing is time-based."""
        while self._heap and self._scheduled.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def on_gateway_event(self, kind: str, *, now_us: int, **detail: Any) -> list[Alert]:
        """Evaluate an event of the gateway itself.

        Events:
            ``journal_usage`` (pct: journal size in % of its quota),
            ``module_lost`` (radio: radio name; optional detail: text), ``module_back`` (radio),
            ``clock_step`` (delta_us: how far the clock was stepped, µs; positive = forward).
            Unknown kinds are logged and ignored.

        Args:
            kind: the event name.
            now_us: when it happened, µs since the epoch.
            **detail: the event's fields.

        Raises:
            ValueError: a known event lacks a field or has one of the wrong type (a bug in the caller).
        """
        out: list[Alert] = []
        if kind == "clock_step":
            delta = detail.get("delta_us")
            if not _is_int(delta):
                raise ValueError("clock_step needs delta_us as an integer number of µs")
            self._shift(delta)
            return out
        self._now_us = max(self._now_us, now_us)
        ctx = _Ctx(None, None, now_us, None)
        if kind == "journal_usage":
            pct = _number(detail.get("pct"))
            if pct is None:
                raise ValueError("journal_usage needs pct as a finite number (% of the quota)")
            key = "journal_near_quota"
            limit = self.config.journal_near_quota_pct
            clear_below = limit - self.config.journal_hysteresis_pct
            self._hysteresis(
                out, ctx, key, key, WARNING, pct, limit, clear_below, "%",
                lambda: f"ジャーナル容量が上限に接近 / journal near quota: {_n(pct)} % ≥ {_n(limit)} %",
                lambda: f"ジャーナル容量が回復 / journal usage down: {_n(pct)} % < {_n(clear_below)} %")
        elif kind in ("module_lost", "module_back"):
            radio = detail.get("radio")
            if not isinstance(radio, str) or not radio:
                raise ValueError(f"{kind} needs radio as the radio's name")
            key = f"module_lost:{radio}"
            if kind == "module_lost" and key not in self._active:
                why = detail.get("detail")
                extra = f" ({why})" if isinstance(why, str) and why else ""
                out.append(self._raise(key, "module_lost", WARNING, ctx,
                                       f"無線モジュール喪失 / radio module lost: {radio}{extra}"))
            elif kind == "module_back" and key in self._active:
                out.append(self._clear(key, ctx, f"無線モジュール復帰 / radio module back: {radio}"))
        else:
            log.warning("%s", _("unknown gateway event {event} ignored by the rules").format(event=repr(kind)))
        return out

    def active(self) -> list[Alert]:
        """Raised conditions, most severe first, then oldest first."""
        return sorted(self._active.values(), key=lambda a: (_SEVERITY_RANK[a.severity], a.ts_us, a.id))

    def siren_wanted(self) -> bool:
        """Whether the local siren should sound now (offline too): see :func:`siren_for` and ``config.siren``."""
        return siren_for(self._active.values(), self.config.siren)

    def siren_alerts(self) -> list[Alert]:
        """The active alerts that want the siren (``config.siren``), most severe first, then oldest first."""
        wanted = set(self.config.siren)
        return [a for a in self.active() if _siren_names_of(a) & wanted]

    def lamp_state(self) -> str:
        """``"alarm"`` or ``"ok"``: see :func:`lamp_for`."""
        return lamp_for(self._active.values())

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: active alerts, sequence, per-node ordering and last heard, rate histories."""
        return {
            "schema": SNAPSHOT_SCHEMA,
            "taken_us": self._now_us,
            "seq": self._seq,
            "stale": self.stale,
            "active": [a.to_dict() for a in self._active.values()],
            "nodes": {
                node: {"silence_base_us": st.silence_base_us, "last_ts_us": st.last_ts_us, "last_fcnt": st.last_fcnt}
                for node, st in self._state.items()
            },
            "river_history": {node: [list(s) for s in h] for node, h in self._river_hist.items()},
            "slope_history": {node: [list(s) for s in h] for node, h in self._slope_hist.items()},
        }

    def restore(self, snap: Mapping[str, Any]) -> list[Alert]:
        """Load a :meth:`snapshot` taken before a restart. Call it right after construction.

        Active alerts, the sequence and the stages come back as they were, so nothing is raised twice. Silence
        counts only time the gateway was listening: the outage (``start_us`` minus the snapshot's time) is added
        to every node's last-heard time, so a daily trap is not reported silent because the gateway was off.

        Returns:
            Clears for restored conditions whose rule no longer exists in the config (river or slope rule
            removed, sos/trap turned off, node no longer watched for silence); they would otherwise stay active.

        Raises:
            ValueError: the snapshot is not one of this schema or is malformed; the engine is left unchanged.
        """
        parsed = parse_snapshot(snap)
        downtime = max(0, self._start_us - parsed.taken_us)
        self._seq = max(self._seq, parsed.seq)
        self.stale = parsed.stale
        self._active = {a.key: a for a in parsed.active}
        for node, (base, last_ts, last_fcnt) in parsed.nodes.items():
            self._state[node] = _NodeState(silence_base_us=base + downtime, last_ts_us=last_ts, last_fcnt=last_fcnt)
        self._river_hist = {
            node: deque(((int(s[0]), float(s[1])) for s in h), maxlen=_HISTORY_MAX)
            for node, h in parsed.river_history.items() if node in self._rivers
        }
        self._slope_hist = {
            node: deque(((int(s[0]), float(s[1]), float(s[2])) for s in h), maxlen=_HISTORY_MAX)
            for node, h in parsed.slope_history.items() if node in self._slopes
        }
        self._rebuild_deadlines()

        out: list[Alert] = []
        ctx = _Ctx(None, None, self._start_us, None)
        for alert in sorted(self._active.values(), key=lambda a: a.id):
            node = alert.node or ""
            gone = (
                (alert.type in ("river_stage", "river_rise") and node not in self._rivers)
                or (alert.type in ("slope_tilt", "slope_rate") and node not in self._slopes)
                or (alert.type == "sos" and not self.config.sos)
                or (alert.type == "trap_fired" and not self.config.trap)
                or (alert.type == "node_silent" and node not in self._silence_us)
            )
            if gone:
                out.append(self._clear(alert.key, ctx, "規則が設定から削除された / rule removed from the config"))
        return out

    # -- rules ------------------------------------------------------------------------------------------------

    def _heard(self, ctx: _Ctx, st: _NodeState, out: list[Alert]) -> None:
        assert ctx.node is not None
        silent_for = (ctx.ts_us - st.silence_base_us) / _US_PER_S
        st.silence_base_us = ctx.ts_us
        key = f"node_silent:{ctx.node}"
        if key in self._active:
            out.append(self._clear(key, ctx, f"ノードから再受信 / node heard again after {_duration(silent_for)}",
                                   value=silent_for))
        limit = self._silence_us.get(ctx.node)
        if limit is not None:
            self._deadline[ctx.node] = ctx.ts_us + limit
            self._schedule(ctx.node, ctx.ts_us + limit)

    def _switched(self, value: object, key: str) -> bool | None:
        """What a two-state reading (1 on, 0 off; 0.5 the threshold) does to the alert ``key``: True raises it,
        False clears it, None leaves it (already in that state, or no number)."""
        number = _number(value)
        if number is None or (number >= 0.5) == (key in self._active):
            return None
        return number >= 0.5

    def _sos(self, ctx: _Ctx, values: Mapping[str, Any], out: list[Alert], *, unsigned: bool = False) -> None:
        """``unsigned``: the frame carried no verified MIC (a node under ``unauthenticated: flag``, a Meshtastic
        radio): the message says so, since anyone on the channel could have sent it."""
        key = f"sos:{ctx.node}"
        switched = self._switched(values.get("pressed"), key)
        if switched:
            ja, en = ("SOS発信（未認証）", "SOS pressed (unauthenticated)") if unsigned else ("SOS発信", "SOS pressed")
            lat, lon = _number(values.get("lat_deg")), _number(values.get("lon_deg"))
            if lat is not None and lon is not None:
                alt = _number(values.get("alt_m"))
                where = f"{lat:.5f}, {lon:.5f}" + (f" (alt {_n(alt, 0)} m)" if alt is not None else "")
                text = f"{ja} / {en} at {where}"
            else:
                lat = lon = None
                text = f"{ja}（位置不明） / {en}, no GPS position"
            out.append(self._raise(key, "sos", EMERGENCY, ctx, text, lat_deg=lat, lon_deg=lon))
        elif switched is False:
            out.append(self._clear(key, ctx, "SOS取消 / SOS cancelled by the caller"))

    def _trap(self, ctx: _Ctx, values: Mapping[str, Any], out: list[Alert]) -> None:
        key = f"trap_fired:{ctx.node}"
        switched = self._switched(values.get("fired"), key)
        if switched:
            out.append(self._raise(key, "trap_fired", WARNING, ctx, "わなが作動 / trap fired"))
        elif switched is False:
            out.append(self._clear(key, ctx, "わな再設置 / trap re-armed"))

    def _stage(self, node: str) -> int:
        stage = 0
        for k in range(1, 5):
            if f"river_stage:{node}:{k}" in self._active:
                stage = k
        return stage

    def _river(self, ctx: _Ctx, rule: RiverRule, level: float, out: list[Alert]) -> None:
        node = ctx.node
        thresholds = (0.0, *rule.stages_cm.as_tuple())  # thresholds[k] for stage k = 1..4
        stage = self._stage(node or "")
        raised = False
        while stage < 4 and level >= thresholds[stage + 1]:
            stage += 1
            raised = True
            _key, ja, en = STAGE_NAMES[stage]
            out.append(self._raise(
                f"river_stage:{node}:{stage}", "river_stage", _STAGE_SEVERITY[stage], ctx,
                f"{ja}に到達 / reached {en}: {_n(level)} cm ≥ {_n(thresholds[stage])} cm",
                level=stage, value=level, threshold=thresholds[stage], unit="cm",
            ))
        while not raised and stage > 0 and level < thresholds[stage] - rule.hysteresis_cm:
            _key, ja, en = STAGE_NAMES[stage]
            below = thresholds[stage] - rule.hysteresis_cm
            out.append(self._clear(
                f"river_stage:{node}:{stage}", ctx,
                f"{ja}を下回った / fell below {en}: {_n(level)} cm < {_n(below)} cm "
                f"({_n(thresholds[stage])} cm - {_n(rule.hysteresis_cm)} cm)",
                level=stage - 1, value=level, threshold=below,
            ))
            stage -= 1

        if rule.rise_cm_per_h is None:
            return
        window_us = round(rule.rise_window_s * _US_PER_S)
        hist = self._river_hist.setdefault(node or "", deque(maxlen=_HISTORY_MAX))
        _push_sample(hist, (ctx.ts_us, level), window_us)
        ref = _rate_reference(hist, window_us)
        if ref is None:
            return
        span_us = ctx.ts_us - ref[0]
        rate = (level - ref[1]) * _US_PER_H / span_us
        key = f"river_rise:{node}"
        over = f"over {_duration(span_us / _US_PER_S)}"
        clear_below = rule.rise_cm_per_h * rule.rise_clear_fraction
        self._hysteresis(
            out, ctx, key, "river_rise", WARNING, rate, rule.rise_cm_per_h, clear_below, "cm/h",
            lambda: f"水位が急上昇 / water rising fast: {_n(rate)} cm/h ≥ {_n(rule.rise_cm_per_h)} cm/h ({over})",
            lambda: f"水位上昇が鈍化 / rise slowed: {_n(rate)} cm/h < {_n(clear_below)} cm/h ({over})")

    def _slope(self, ctx: _Ctx, rule: SlopeRule, x: float, y: float, out: list[Alert]) -> None:
        node = ctx.node or ""
        if rule.max_deg is not None:
            axis, tilt = ("x", abs(x)) if abs(x) >= abs(y) else ("y", abs(y))
            key = f"slope_tilt:{node}"
            clear_below = rule.max_deg - rule.hysteresis_deg
            self._hysteresis(
                out, ctx, key, "slope_tilt", EMERGENCY, tilt, rule.max_deg, clear_below, "deg",
                lambda: f"斜面の傾斜が限界を超過 / slope tilt beyond limit: {axis} {_n(tilt, 2)}° ≥ {_n(rule.max_deg, 2)}°",
                lambda: f"傾斜が限界内に戻った / tilt back within limit: {_n(tilt, 2)}° < {_n(clear_below, 2)}°")
        if rule.rate_deg_per_h is None:
            return
        window_us = round(rule.rate_window_s * _US_PER_S)
        hist = self._slope_hist.setdefault(node, deque(maxlen=_HISTORY_MAX))
        _push_sample(hist, (ctx.ts_us, x, y), window_us)
        ref = _rate_reference(hist, window_us)
        if ref is None:
            return
        span_h = (ctx.ts_us - ref[0]) / _US_PER_H
        rate_x, rate_y = abs(x - ref[1]) / span_h, abs(y - ref[2]) / span_h
        axis, rate = ("x", rate_x) if rate_x >= rate_y else ("y", rate_y)
        key = f"slope_rate:{node}"
        clear_below = rule.rate_deg_per_h * rule.rate_clear_fraction
        self._hysteresis(
            out, ctx, key, "slope_rate", EMERGENCY, rate, rule.rate_deg_per_h, clear_below, "deg/h",
            lambda: f"斜面の傾斜が急変 / slope tilting fast: {axis} {_n(rate, 2)}°/h ≥ {_n(rule.rate_deg_per_h, 2)}°/h "
                    f"(over {_duration(span_h * 3600)})",
            lambda: f"傾斜変化が鈍化 / tilting slowed: {_n(rate, 2)}°/h < {_n(clear_below, 2)}°/h")

    def _battery(self, ctx: _Ctx, threshold: float, volts: float, out: list[Alert]) -> None:
        key = f"battery_low:{ctx.node}"
        if threshold <= 0:
            return
        clear_at = threshold + self.config.battery_hysteresis_v
        if key not in self._active and volts < threshold:
            out.append(self._raise(key, "battery_low", INFO, ctx,
                                   f"電池残量低下 / battery low: {_n(volts, 2)} V < {_n(threshold, 2)} V",
                                   value=volts, threshold=threshold, unit="V"))
        elif key in self._active and volts >= clear_at:
            out.append(self._clear(key, ctx,
                                   f"電池電圧回復 / battery recovered: {_n(volts, 2)} V ≥ {_n(clear_at, 2)} V",
                                   value=volts, threshold=clear_at))

    # -- bookkeeping ------------------------------------------------------------------------------------------

    def _raise(self, key: str, type_: str, severity: str, ctx: _Ctx, message: str, *, level: int | None = None,
               value: float | None = None, threshold: float | None = None, unit: str | None = None,
               lat_deg: float | None = None, lon_deg: float | None = None) -> Alert:
        self._seq += 1
        alert = Alert(
            id=f"{key}#{self._seq}", key=key, type=type_, state=RAISED, severity=severity, node=ctx.node,
            name=ctx.name, level=level, value=value, threshold=threshold, message=message, ts_us=ctx.ts_us,
            unit=unit, lat_deg=lat_deg, lon_deg=lon_deg, reading=ctx.reading,
        )
        self._active[key] = alert
        log.warning("%s", _("alert raised: {key} {severity}: {message}").format(key=key, severity=severity,
                                                                                 message=message))
        return alert

    def _hysteresis(self, out: list[Alert], ctx: _Ctx, key: str, type_: str, severity: str, value: float,
                    limit: float, clear_below: float, unit: str, raised: Callable[[], str],
                    cleared: Callable[[], str]) -> None:
        """Raise ``key`` when ``value`` reaches ``limit``; clear it once ``value`` falls below ``clear_below``.

        ``raised`` and ``cleared`` make the message text, called only when the alert changes state.
        """
        if key not in self._active:
            if value >= limit:
                out.append(self._raise(key, type_, severity, ctx, raised(), value=value, threshold=limit, unit=unit))
        elif value < clear_below:
            out.append(self._clear(key, ctx, cleared(), value=value, threshold=clear_below))

    def _clear(self, key: str, ctx: _Ctx, message: str, *, level: int | None = None, value: float | None = None,
               threshold: float | None = None) -> Alert:
        raised = self._active.pop(key)
        self._seq += 1
        alert = Alert(
            id=f"{key}#{self._seq}", key=key, type=raised.type, state=CLEARED, severity=raised.severity,
            node=raised.node, name=raised.name, level=level, value=value, threshold=threshold, message=message,
            ts_us=ctx.ts_us, unit=raised.unit if value is not None else None, reading=ctx.reading,
        )
        log.info("%s", _("alert cleared: {key}: {message}").format(key=key, message=message))
        return alert

    def _schedule(self, node: str, when: int) -> None:
        current = self._scheduled.get(node)
        if current is not None and current <= when:
            return  # an earlier entry is pending; when it pops, tick() re-pushes the node at its true deadline
        self._scheduled[node] = when
        heapq.heappush(self._heap, (when, node))

    def forget(self, node: str) -> None:
        """Drop what the rules remember of a node that is not configured (the decoder aged it out or evicted it:
        ``unknown_nodes: accept``), so forged node ids cannot grow this state. Configured nodes are kept."""
        if node not in self._nodes:
            self._state.pop(node, None)

    def _rebuild_deadlines(self) -> None:
        self._deadline = {}
        self._scheduled = {}
        self._heap = []
        for node, limit in self._silence_us.items():
            st = self._state[node]
            self._deadline[node] = st.silence_base_us + limit
            if f"node_silent:{node}" not in self._active:
                self._scheduled[node] = self._deadline[node]
                self._heap.append((self._deadline[node], node))
        heapq.heapify(self._heap)

    def _shift(self, delta_us: int) -> None:
        """Move every stored time by a clock step, so durations measured across the step stay true."""
        log.info("%s", _("rules: clock stepped by {step} s; silence deadlines and rate windows moved with "
                         "it").format(step=f"{delta_us / _US_PER_S:+.3f}"))
        self._start_us += delta_us
        self._now_us += delta_us
        for st in self._state.values():
            st.silence_base_us += delta_us
            if st.last_ts_us is not None:
                st.last_ts_us += delta_us
        for node, h in self._river_hist.items():
            self._river_hist[node] = deque(((t + delta_us, v) for t, v in h), maxlen=_HISTORY_MAX)
        for node, sh in self._slope_hist.items():
            self._slope_hist[node] = deque(((t + delta_us, x, y) for t, x, y in sh), maxlen=_HISTORY_MAX)
        self._rebuild_deadlines()


@dataclass(frozen=True, slots=True)
class _Ctx:
    """Who and when an alert is about."""

    node: str | None
    name: str | None
    ts_us: int
    reading: str | None

