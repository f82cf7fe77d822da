"""A simulated field, written as the line protocol that ``denen bridge`` writes (README, "InfluxDB schema").

Four days of data for four gateways on three sites, ending at a chosen moment (normally "now", so that the
dashboards' ``now() - ...`` queries and the alert rules see it as live). The ``alert`` points are what the gateways'
edge rules (agent/rules/) would raise and clear for it:

* ``okutama`` (forest SOS, gateway ``gw-okutama-01``): one SOS pressed and cancelled, one SOS still active, idle
  buttons with an hourly heartbeat, a ridge beacon.
* ``tanba`` (wildlife traps, ``gw-tanba-traps-01`` and ``gw-tanba-traps-02``): one trap fired and re-armed, one
  trap fired and still fired, traps with a daily heartbeat, one trap silent for 80 h (node_silent after
  3 x 24 h), one trap with a low battery; ``gw-tanba-traps-02`` stops reporting 40 minutes before the end.
* ``kiso`` (river station, ``gw-kiso-river-02``): a gauge rising through three of the four stage levels to above
  避難判断水位 (a river_stage alert per stage), a second gauge jumping past two stages in one frame (two alerts
  for one reading) to はん濫注意水位, two rain gauges in a downpour, two slope tilt sensors; a backhaul outage
  10 h ago fills the journal (journal_near_quota raised, then cleared).

The alert loop (issue 11) runs through it too: each gateway's ``gateway_state`` (siren, lamp, held readings, open
and unacknowledged alerts) as the bridge writes it from the retained state topic, the ``command_result`` points of
the commands staff sent, and the console's ``alert_ack`` audit (a point when a person confirms, and its result a
microsecond later). At the end the okutama siren sounds for the active SOS, the kiso siren has been silenced after
its river alert was acknowledged, the tanba trap fired 15 minutes ago has been acknowledged, and
``gw-tanba-traps-02`` went offline holding readings (its clock was not synchronised after a reboot).

Node ids and names follow the example gateway configs in ``config/``. :attr:`Scenario.firing` says which series
each provisioned alert rule must fire for, so the rules are checked against known answers, not just for "some data".

Every numeric field is a float written with a decimal point or an exponent (string fields: the alert's
``message``, the status's ``agent``, and the text fields of ``gateway_state``, ``command_result`` and
``alert_ack``), tags are sorted (as the README's example line), timestamps are µs since the epoch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["STAGES_CM", "Node", "Scenario", "build", "escape_key", "escape_measurement", "line"]

US = 1_000_000
HOUR_US = 3600 * US
MIN_US = 60 * US

#: The stage levels of the example dashboard and alert rule (cm): 水防団待機水位, はん濫注意水位, 避難判断水位,
#: はん濫危険水位. The scenario's rising gauge ends between the third and the fourth.
STAGES_CM = {"standby": 150.0, "caution": 200.0, "evacuation": 250.0, "danger": 300.0}


def escape_measurement(text: str) -> str:
    """Escape a measurement name for line protocol (commas and spaces)."""
    return text.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def escape_key(text: str) -> str:
    """Escape a tag key, tag value or field key for line protocol (commas, equals signs and spaces)."""
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _float(value: float) -> str:
    """A float field value; ``repr`` always carries ``.`` or an exponent, so InfluxDB never sees an integer."""
    text = repr(float(value))
    if not math.isfinite(value):
        raise ValueError(f"line protocol has no {text}")
    return text


def _field(value: float | str) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return _float(value)


def line(measurement: str, tags: dict[str, str], fields: dict[str, float | str], ts_us: int) -> str:
    """One point in line protocol: tags sorted by key (empty values dropped), float (or string) fields, µs."""
    tag_text = "".join(f",{escape_key(k)}={escape_key(v)}" for k, v in sorted(tags.items()) if v)
    field_text = ",".join(f"{escape_key(k)}={_field(v)}" for k, v in fields.items())
    if not field_text:
        raise ValueError(f"a point of {measurement} needs at least one field")
    return f"{escape_measurement(measurement)}{tag_text} {field_text} {ts_us}"


@dataclass(frozen=True)
class Node:
    """A sensor node as the backend sees it: the tags of its points."""

    site: str
    gateway: str
    node: str
    name: str
    lat: float | None = None
    lon: float | None = None


@dataclass
class Scenario:
    """The generated points and what the dashboards and alert rules must find in them."""

    end_us: int
    start_us: int
    lines: list[str] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    gateways: dict[str, str] = field(default_factory=dict)  # gateway -> site
    gateway_names: dict[str, str] = field(default_factory=dict)  # gateway -> its name (gateway.name)
    #: alert rule uid -> the values of the rule's identifying label ("node" or "gateway") that must fire.
    firing: dict[str, set[str]] = field(default_factory=dict)
    #: gauge name -> the river stage (0-4) its gateway reports at the end.
    stages: dict[str, int] = field(default_factory=dict)
    #: gateway -> its last state: (siren_on, siren_alert, alerts_open, alerts_unacknowledged, held_count).
    states: dict[str, tuple[bool, str, int, int, int]] = field(default_factory=dict)
    #: acknowledgements (action ack) in the last 24 h: (gateway, node, type, by, ack_delay_s).
    acks: list[tuple[str, str, str, str, float]] = field(default_factory=list)
    #: command results: (ts_us, gateway, command, outcome, target, by).
    commands: list[tuple[int, str, str, str, str, str]] = field(default_factory=list)
    #: alerts raised and not cleared at the end: (gateway, node, type).
    open_alerts: set[tuple[str, str, str]] = field(default_factory=set)
    _fcnt: dict[str, int] = field(default_factory=dict)
    _last_alert_us: dict[str, int] = field(default_factory=dict)

    # -- writers following the README schema ----------------------------------------------------------------
    def reading(self, n: Node, kind: str, ts_us: int, values: dict[str, float], *, rssi: float | None,
                snr: float | None, auth_ok: bool = True, clock_ok: bool = True,
                links: tuple[tuple[str, float, float], ...] | None = None) -> None:
        """A node reading: the point of its kind, its node_health point and, for SOS and traps, an alert point.

        ``links``: the site's bridge de-duplicates (``dedupe``), so every reception is a ``node_link`` point: the
        reading's own gateway's, then one per (gateway, rssi, snr) given, 0.2 s later each.
        """
        fcnt = self._fcnt.get(n.node, 100) + 1
        self._fcnt[n.node] = fcnt
        tags = {"site": n.site, "gateway": n.gateway, "node": n.node, "name": n.name, "kind": kind}
        fields = dict(values)
        fields["fcnt"] = float(fcnt)
        if rssi is not None:
            fields["rssi"] = rssi
        if snr is not None:
            fields["snr"] = snr
        fields["auth_ok"] = 1.0 if auth_ok else 0.0
        fields["clock_ok"] = 1.0 if clock_ok else 0.0
        self.lines.append(line(kind, tags, fields, ts_us))
        health: dict[str, float] = {}
        if rssi is not None:
            health["rssi"] = rssi
        if snr is not None:
            health["snr"] = snr
        if "battery_v" in values:
            health["battery_v"] = values["battery_v"]
        health["fcnt"] = float(fcnt)
        self.lines.append(line("node_health", tags, health, ts_us))
        if links is None:
            return
        for k, (gateway, link_rssi, link_snr) in enumerate(((n.gateway, rssi, snr), *links)):
            link: dict[str, float] = {"fcnt": float(fcnt)}
            if link_rssi is not None:
                link["rssi"] = link_rssi
            if link_snr is not None:
                link["snr"] = link_snr
            self.lines.append(line("node_link", {**tags, "gateway": gateway}, link, ts_us + k * 200_000))

    def alert(self, n: Node | None, gateway: str, ts_us: int, type_: str, severity: str, raised: bool, message: str,
              **values: float) -> None:
        """An alert the gateway's edge rules raised or cleared, as the bridge writes it (node None: the gateway).

        A gateway's alerts have strictly increasing timestamps (README): two alerts of one reading (a frame that
        crosses two river stages) are a microsecond apart.
        """
        ts_us = max(ts_us, self._last_alert_us.get(gateway, 0) + 1)
        self._last_alert_us[gateway] = ts_us
        key = (gateway, n.node if n else gateway, type_)
        if raised:
            self.open_alerts.add(key)
        else:
            self.open_alerts.discard(key)
        tags = {"site": self.gateways[gateway], "gateway": gateway, "node": n.node if n else gateway,
                "name": n.name if n else self.gateway_names[gateway], "type": type_, "severity": severity}
        fields: dict[str, float | str] = {"raised": 1.0 if raised else 0.0, **values, "message": message}
        self.lines.append(line("alert", tags, fields, ts_us))

    def gateway_status(self, gateway: str, ts_us: int, online: bool) -> None:
        """A gateway_status point: the retained status document (online) or the broker's Last Will (offline)."""
        self.lines.append(line("gateway_status", {"gateway": gateway},
                               {"online": 1.0 if online else 0.0, "agent": "0.1.0"}, ts_us))

    def gateway_state(self, gateway: str, ts_us: int, *, siren: str | None = None, lamp: str = "ok", held: int = 0,
                      open_: int = 0, unacknowledged: int = 0) -> None:
        """A gateway_state point, from the gateway's retained state document; ``siren``: the key of the alert the
        siren sounds for, None when it is silent."""
        self.lines.append(line("gateway_state", {"site": self.gateways[gateway], "gateway": gateway}, {
            "siren_on": 1.0 if siren else 0.0, "siren_why": "alert" if siren else "", "siren_alert": siren or "",
            "lamp": lamp, "held_active": 1.0 if held else 0.0, "held_count": float(held),
            "alerts_open": float(open_), "alerts_unacknowledged": float(unacknowledged)}, ts_us))
        self.states[gateway] = (siren is not None, siren or "", open_, unacknowledged, held)

    def command(self, gateway: str, ts_us: int, command: str, outcome: str, target: str | None, by: str,
                via: str, request_id: str) -> None:
        """A command_result point: what the gateway answered to one command for one target."""
        self.lines.append(line("command_result", {"site": self.gateways[gateway], "gateway": gateway,
                                                  "command": command, "outcome": outcome},
                               {"target": target or "", "by": by, "request_id": request_id, "via": via}, ts_us))
        self.commands.append((ts_us, gateway, command, outcome, target or "", by))

    def alert_ack(self, gateway: str, ts_us: int, action: str, n: Node | None, type_: str | None, by: str,
                  request_id: str, result: str, *, since_us: int | None = None, alert_id: str | None = None) -> None:
        """The console's audit of one staff action (``action``: ack, silence, test): the confirm, then the
        gateway's outcome (or ``timeout``) a microsecond later, with the same tags."""
        tags = {"site": self.gateways[gateway], "gateway": gateway, "node": n.node if n else "",
                "type": type_ or "", "action": action}
        fields: dict[str, float | str] = {"by": by, "from_ip": "203.0.113.24", "request_id": request_id}
        if alert_id is not None:
            fields["alert_id"] = alert_id
        if since_us is not None:
            fields["since_us"] = float(since_us)
            fields["ack_delay_s"] = (ts_us - since_us) / US
        self.lines.append(line("alert_ack", tags, fields, ts_us))
        self.lines.append(line("alert_ack", tags, {"result": result}, ts_us + 1))
        if action == "ack" and n is not None and type_ is not None and ts_us > self.end_us - 24 * HOUR_US:
            self.acks.append((gateway, n.node, type_, by, (ts_us - (since_us or ts_us)) / US))

    def gateway_health(self, gateway: str, ts_us: int, values: dict[str, float]) -> None:
        """A gateway_health point (tags site and gateway only)."""
        self.lines.append(line("gateway_health", {"site": self.gateways[gateway], "gateway": gateway}, values,
                               ts_us))


def _times(start_us: int, end_us: int, step_us: int, offset_us: int = 0) -> Iterator[int]:
    t = start_us + offset_us
    while t <= end_us:
        yield t
        t += step_us


def build(end_us: int, *, seed: int = 20240607) -> Scenario:
    """Generate the scenario ending at ``end_us`` (µs since the epoch); 96 h of history, deterministic per seed."""
    rnd = random.Random(seed)
    start = end_us - 96 * HOUR_US
    sc = Scenario(end_us=end_us, start_us=start)
    E = end_us

    def radio() -> tuple[float, float]:
        return float(rnd.randint(-118, -82)), round(rnd.uniform(-6.0, 9.0), 1)

    # ---- okutama: forest SOS ---------------------------------------------------------------------------------
    gw = "gw-okutama-01"
    sc.gateways[gw] = "okutama"
    sc.gateway_names[gw] = "奥多摩 林道ゲートウェイ"
    sos1 = Node("okutama", gw, "5e000001", "sos-forester-01")
    sos2 = Node("okutama", gw, "5e000002", "sos-forester-02")
    sos3 = Node("okutama", gw, "5e000003", "sos-forester-03")
    beacon = Node("okutama", gw, "5e00f001", "ridge-beacon", 35.8257, 139.0433)
    sc.nodes += [sos1, sos2, sos3, beacon]
    for n, batt in ((sos1, 3.55), (sos2, 3.48), (sos3, 3.61)):
        for i, t in enumerate(_times(start, E, HOUR_US, offset_us=rnd.randint(0, 59) * MIN_US)):
            v = round(batt - i * 0.0005, 3)
            sc.reading(n, "heartbeat", t, {"battery_v": v, "battery_pct": round(min(100.0, (v - 3.0) * 166.0), 1)},
                       rssi=radio()[0], snr=radio()[1])
    for t in _times(start, E, 15 * MIN_US, offset_us=7 * MIN_US):
        sc.reading(beacon, "heartbeat", t, {"battery_v": 3.58, "battery_pct": 96.0}, rssi=-91.0, snr=6.5)

    # A forester walks down the valley after pressing SOS; the call is cancelled 30 minutes later.
    lat, lon = 35.8102, 139.0301
    for i, t in enumerate(_times(E - 90 * MIN_US, E - 62 * MIN_US, 2 * MIN_US)):
        r, s = radio()
        la, lo = round(lat - i * 0.0004, 6), round(lon + i * 0.0003, 6)
        sc.reading(sos1, "sos", t, {"pressed": 1.0, "lat_deg": la, "lon_deg": lo, "alt_m": 612.0 - i * 3,
                                    "battery_v": 3.52}, rssi=r, snr=s)
        if i == 0:
            sc.alert(sos1, gw, t, "sos", "emergency", True, f"SOS発信 / SOS pressed at {la:.5f}, {lo:.5f}",
                     lat_deg=la, lon_deg=lo)
    sc.reading(sos1, "sos", E - 60 * MIN_US, {"pressed": 0.0, "battery_v": 3.52}, rssi=-101.0, snr=2.0)
    sc.alert(sos1, gw, E - 60 * MIN_US, "sos", "emergency", False, "SOS取消 / SOS cancelled by the caller")
    # A second SOS, still active at the end, with positions every 2 minutes; one frame without a GPS fix.
    lat, lon = 35.8311, 139.0518
    for i, t in enumerate(_times(E - 20 * MIN_US, E - MIN_US, 2 * MIN_US)):
        r, s = radio()
        values = {"pressed": 1.0, "battery_v": 3.45, "accel_x_g": 0.02, "accel_y_g": -0.01, "accel_z_g": 0.98}
        if i != 3:
            values.update(lat_deg=round(lat + i * 0.0001, 6), lon_deg=round(lon - i * 0.0001, 6), alt_m=780.0)
        sc.reading(sos2, "sos", t, values, rssi=r, snr=s)
        if i == 0:
            sc.alert(sos2, gw, t, "sos", "emergency", True, f"SOS発信 / SOS pressed at {lat:.5f}, {lon:.5f}",
                     lat_deg=lat, lon_deg=lon)
    sc.firing["denen-sos-received"] = {sos2.node}

    # ---- tanba: wildlife traps (daily heartbeats) --------------------------------------------------------------
    gw, gw2 = "gw-tanba-traps-01", "gw-tanba-traps-02"
    sc.gateways[gw] = sc.gateways[gw2] = "tanba"
    sc.gateway_names[gw] = "丹波 わな監視ゲートウェイ"
    sc.gateway_names[gw2] = "丹波 わな監視ゲートウェイ 2"
    t_n3 = Node("tanba", gw, "00a1b2c3", "trap-north-3", 35.1780, 135.0421)
    t_n1 = Node("tanba", gw, "7a000001", "trap-north-1", 35.1783, 135.0410)
    t_n2 = Node("tanba", gw, "7a000002", "trap-north-2", 35.1786, 135.0415)
    t_e1 = Node("tanba", gw, "7a000004", "trap-east-1", 35.1752, 135.0502)
    t_e2 = Node("tanba", gw, "7a000005", "trap-east-2", 35.1748, 135.0511)
    t_w2 = Node("tanba", gw2, "7a000011", "trap-west-2")
    shed = Node("tanba", gw, "7a00f001", "shed-weather")
    sc.nodes += [t_n3, t_n1, t_n2, t_e1, t_e2, t_w2, shed]
    battery_low_at = 0
    for k, n in enumerate((t_n3, t_n1, t_n2, t_e1, t_e2, t_w2)):
        # Installed (armed) four days ago, then a heartbeat once a day.
        sc.reading(n, "trap", start + (30 + k) * MIN_US, {"fired": 0.0, "battery_v": 3.6}, rssi=radio()[0],
                   snr=radio()[1])
        last_hb = E - 80 * HOUR_US if n is t_e1 else E - 35 * MIN_US if n is t_w2 else E
        low = False
        for i, t in enumerate(_times(start, last_hb, 24 * HOUR_US, offset_us=(2 + k * 3) * HOUR_US)):
            v = round(3.58 - 0.01 * i - 0.3 * (n is t_e2), 3)
            # The two tanba gateways overlap: the east traps are heard by the second one too, weaker.
            far = ((gw2, -112.0 - i, -4.5),) if n in (t_e1, t_e2) else ()
            sc.reading(n, "heartbeat", t, {"battery_v": v, "battery_pct": round((v - 3.0) * 166.0, 1)},
                       rssi=radio()[0], snr=radio()[1], links=far)
            if v < 3.3 and not low:  # the edge's default battery_low_v
                low = True
                battery_low_at = t
                sc.alert(n, n.gateway, t, "battery_low", "info", True,
                         f"電池残量低下 / battery low: {v:.2f} V < 3.30 V", value=v, threshold=3.3)
        if n is t_w2:  # its last heartbeat comes shortly before its gateway drops off
            sc.reading(n, "heartbeat", E - 35 * MIN_US, {"battery_v": 3.51, "battery_pct": 85.0}, rssi=-99.0,
                       snr=3.0)
    # Silent after 3 x its 24 h interval (the edge's default silence_factor), counted from its last frame.
    sc.alert(t_e1, gw, E - 8 * HOUR_US, "node_silent", "warning", True,
             "ノード無通信 / node silent for 3 d", value=72.0 * 3600, threshold=72.0 * 3600)
    sc.reading(t_n3, "trap", E - 2 * HOUR_US, {"fired": 1.0, "battery_v": 3.55}, rssi=-97.0, snr=4.5)
    sc.alert(t_n3, gw, E - 2 * HOUR_US, "trap_fired", "warning", True, "わなが作動 / trap fired")
    sc.reading(t_n3, "trap", E - 1 * HOUR_US, {"fired": 0.0, "battery_v": 3.55}, rssi=-96.0, snr=4.0)
    sc.alert(t_n3, gw, E - 1 * HOUR_US, "trap_fired", "warning", False, "わな再設置 / trap re-armed")
    sc.reading(t_n1, "trap", E - 15 * MIN_US, {"fired": 1.0, "battery_v": 3.54}, rssi=-104.0, snr=1.5)
    sc.alert(t_n1, gw, E - 15 * MIN_US, "trap_fired", "warning", True, "わなが作動 / trap fired")
    sc.firing["denen-trap-fired"] = {t_n1.node}
    sc.firing["denen-node-silent"] = {t_e1.node}
    for i, t in enumerate(_times(start, E, 30 * MIN_US, offset_us=11 * MIN_US)):
        sc.reading(shed, "weather", t, {"temperature_c": round(8.0 + 6.0 * math.sin(i / 48 * 2 * math.pi), 2),
                                        "humidity_pct": 70.0 + rnd.randint(-8, 8),
                                        "pressure_hpa": 1004.0 + rnd.uniform(-2, 2), "battery_v": 3.6},
                   rssi=-88.0, snr=8.0)

    # ---- kiso: river, rain and slope ---------------------------------------------------------------------------
    gw = "gw-kiso-river-02"
    sc.gateways[gw] = "kiso"
    sc.gateway_names[gw] = "木曽川 水位・雨量・傾斜 観測局"
    gauge = Node("kiso", gw, "3c000001", "river-kiso-bridge", 35.6931, 137.7170)
    gauge2 = Node("kiso", gw, "3c000002", "river-kiso-upper")
    rain1 = Node("kiso", gw, "3c000101", "rain-upstream", 35.7410, 137.6950)
    rain2 = Node("kiso", gw, "3c000102", "rain-station-roof")
    slope1 = Node("kiso", gw, "3c000201", "slope-r19-upper", 35.6902, 137.7211)
    slope2 = Node("kiso", gw, "3c000202", "slope-r19-lower", 35.6897, 137.7206)
    sc.nodes += [gauge, gauge2, rain1, rain2, slope1, slope2]
    rise_start = E - 8 * HOUR_US
    stages = list(STAGES_CM.values())
    stage_names = ("水防団待機水位 / flood-fighting standby level", "はん濫注意水位 / flood caution level",
                   "避難判断水位 / evacuation judgement level", "はん濫危険水位 / flood danger level")
    reached = reached2 = 0
    stage_at: dict[tuple[str, int], int] = {}  # (node, stage) -> when the gateway raised it
    for t in _times(start, E, 10 * MIN_US, offset_us=3 * MIN_US):
        frac = max(0.0, (t - rise_start) / (E - rise_start))
        level = round(120.0 + 165.0 * frac**1.5 + rnd.uniform(-1.5, 1.5), 1)
        sc.reading(gauge, "water_level", t, {"level_cm": level, "battery_v": 12.6}, rssi=-93.0, snr=5.5)
        while reached < 4 and level >= stages[reached]:
            reached += 1  # the edge raises one river_stage alert per stage crossed
            stage_at[(gauge.node, reached)] = t
            sc.alert(gauge, gw, t, "river_stage", ("info", "warning", "emergency", "emergency")[reached - 1], True,
                     f"{stage_names[reached - 1]}: {level} cm ≥ {stages[reached - 1]} cm", level=float(reached),
                     value=level, threshold=stages[reached - 1])
        # The upper gauge jumps from 92 cm past two stages in one frame 3 h before the end (a flash flood
        # upstream): the edge raises stages 1 and 2 for one reading, the backend must say stage 2.
        level2 = round((92.0 if t < E - 3 * HOUR_US else 212.0) + rnd.uniform(-1, 1), 1)
        sc.reading(gauge2, "water_level", t, {"level_cm": level2, "battery_v": 12.4}, rssi=-108.0, snr=-1.0)
        while reached2 < 4 and level2 >= stages[reached2]:
            reached2 += 1
            stage_at[(gauge2.node, reached2)] = t
            sc.alert(gauge2, gw, t, "river_stage", ("info", "warning", "emergency", "emergency")[reached2 - 1], True,
                     f"{stage_names[reached2 - 1]}: {level2} cm ≥ {stages[reached2 - 1]} cm", level=float(reached2),
                     value=level2, threshold=stages[reached2 - 1])
    assert reached == 3, "the rising gauge must end between 避難判断水位 and はん濫危険水位"
    assert reached2 == 2, "the upper gauge must end at はん濫注意水位"
    sc.stages = {gauge.name: reached, gauge2.name: reached2}
    sc.firing["denen-river-evacuation"] = {gauge.node}
    tips = {rain1.node: 0.0, rain2.node: 0.0}
    for t in _times(start, E, 10 * MIN_US, offset_us=5 * MIN_US):
        downpour = t >= E - 12 * HOUR_US
        for n in (rain1, rain2):
            mm = round(rnd.uniform(1.0, 9.0), 1) if downpour else (0.5 if rnd.random() < 0.05 else 0.0)
            tips[n.node] += mm / 0.5
            r, s = radio()
            sc.reading(n, "rain", t, {"rain_mm": mm, "tips": tips[n.node], "battery_v": 3.6}, rssi=r, snr=s,
                       auth_ok=n is not rain2)
    for t in _times(start, E, 10 * MIN_US, offset_us=8 * MIN_US):
        creep = max(0.0, (t - (E - 6 * HOUR_US)) / HOUR_US) * 0.05
        for n, base in ((slope1, 0.12), (slope2, -0.05)):
            sc.reading(n, "tilt", t, {"tilt_x_deg": round(base + creep + rnd.uniform(-0.01, 0.01), 3),
                                      "tilt_y_deg": round(0.03 + rnd.uniform(-0.01, 0.01), 3), "battery_v": 3.59},
                       rssi=-99.0, snr=3.5)
    # The river station's backhaul dropped for an hour 10 h ago: its journal filled up, then drained.
    sc.alert(None, gw, E - 9 * HOUR_US - 20 * MIN_US, "journal_near_quota", "warning", True,
             "ジャーナル容量 / journal near quota: 91 %", value=91.0, threshold=90.0)
    sc.alert(None, gw, E - 9 * HOUR_US + 5 * MIN_US, "journal_near_quota", "warning", False,
             "ジャーナル容量回復 / journal below 85 %", value=40.0, threshold=85.0)
    sc.firing["denen-gateway-alert"] = {t_e2.node}  # battery_low; the journal alert was cleared

    # ---- gateway health ------------------------------------------------------------------------------------------
    intervals = {"gw-okutama-01": 60, "gw-tanba-traps-01": 300, "gw-tanba-traps-02": 300, "gw-kiso-river-02": 60}
    ends = {"gw-tanba-traps-02": E - 40 * MIN_US}
    for g, interval in intervals.items():
        ok = bad = 0.0
        for i, t in enumerate(_times(start, ends.get(g, E), interval * US, offset_us=rnd.randint(0, 59) * US)):
            ok += rnd.randint(0, 6)
            bad += 1.0 if rnd.random() < 0.03 else 0.0
            outage = g == "gw-kiso-river-02" and E - 10 * HOUR_US <= t < E - 9 * HOUR_US
            age = (t - (E - 10 * HOUR_US)) / US if outage else rnd.uniform(0.0, 2.0)
            sc.gateway_health(g, t, {
                "uptime_s": float(i * interval), "depth_sos": 0.0, "depth_alarm": 0.0,
                "depth_telemetry": float(int(age / 60) * 2) if outage else 0.0,
                "depth_diagnostics": float(int(age / 60)) if outage else 0.0,
                "oldest_unsent_s": round(age, 1), "journal_mb": 1.5, "disk_free_mb": 9000.0 - i * 0.01,
                "cpu_temp_c": 48.0 + rnd.uniform(-3, 3), "frames_ok": ok, "frames_bad": bad, "reopens": 0.0,
                "nodes_heard": float(sum(1 for n in sc.nodes if n.gateway == g)),
            })
        sc.gateway_status(g, start + interval * US // 2, True)  # connected (retained status, online)
    sc.gateway_status("gw-tanba-traps-02", E - 38 * MIN_US, False)  # the broker's Last Will
    sc.firing["denen-gateway-offline"] = {"gw-tanba-traps-02"}

    # ---- the alert loop: each gateway's state, the commands staff sent, the console's audit -------------------
    S = US
    for g in sc.gateways:  # connected four days ago: nothing sounds, nothing is held
        sc.gateway_state(g, start + MIN_US)
    # okutama: the first SOS is acknowledged after 5 minutes (repeats stop, the siren sounds until the caller
    # cancels); an acknowledgement after the cancel changes nothing; the second SOS sounds now, unacknowledged.
    gw, t1 = "gw-okutama-01", E - 90 * MIN_US
    sc.gateway_state(gw, t1 + 1, siren="sos:5e000001", lamp="alarm", open_=1, unacknowledged=1)
    sc.alert_ack(gw, t1 + 300 * S, "ack", sos1, "sos", "山田 太郎", "ack-3f2a01", "stopped", since_us=t1,
                 alert_id="gw-okutama-01:sos:5e000001#1")
    sc.command(gw, t1 + 300 * S + 200_000, "alert-ack", "stopped", "sos:5e000001", "山田 太郎", "console",
               "ack-3f2a01")
    sc.gateway_state(gw, t1 + 300 * S + 300_000, siren="sos:5e000001", lamp="alarm", open_=1)
    sc.gateway_state(gw, E - 60 * MIN_US + 1)
    sc.command(gw, E - 55 * MIN_US, "alert-ack", "not_active", "sos:5e000001", "山田 太郎", "cli", "cli-77b1")
    sc.gateway_state(gw, E - 20 * MIN_US + 1, siren="sos:5e000002", lamp="alarm", open_=1, unacknowledged=1)
    # tanba: no siren. The installer's remote test chirp yesterday; the trap fired 15 minutes ago is acknowledged
    # after 3 minutes; the battery and the silent trap are not.
    gw = "gw-tanba-traps-01"
    sc.alert_ack(gw, E - 30 * HOUR_US, "test", None, None, "設置業者 田中", "chirp-0c9e", "chirped")
    sc.command(gw, E - 30 * HOUR_US + 150_000, "test-chirp", "chirped", None, "設置業者 田中", "console",
               "chirp-0c9e")
    sc.gateway_state(gw, battery_low_at + 1, open_=1, unacknowledged=1)
    sc.gateway_state(gw, E - 8 * HOUR_US + 1, lamp="alarm", open_=2, unacknowledged=2)
    sc.gateway_state(gw, E - 2 * HOUR_US + 1, lamp="alarm", open_=3, unacknowledged=3)
    sc.gateway_state(gw, E - 1 * HOUR_US + 1, lamp="alarm", open_=2, unacknowledged=2)
    sc.gateway_state(gw, E - 15 * MIN_US + 1, lamp="alarm", open_=3, unacknowledged=3)
    sc.alert_ack(gw, E - 12 * MIN_US, "ack", t_n1, "trap_fired", "鈴木 花子", "ack-9d04c7", "stopped",
                 since_us=E - 15 * MIN_US, alert_id="gw-tanba-traps-01:trap_fired:7a000001#3")
    sc.command(gw, E - 12 * MIN_US + 250_000, "alert-ack", "stopped", "trap_fired:7a000001", "鈴木 花子", "console",
               "ack-9d04c7")
    sc.gateway_state(gw, E - 12 * MIN_US + 300_000, lamp="alarm", open_=3, unacknowledged=2)
    # The second trap gateway rebooted without a time source before it went offline: its readings are held.
    sc.gateway_state("gw-tanba-traps-02", E - 50 * MIN_US, held=5)
    # kiso: the journal alert of the outage (readings held after the reboot that ended it), then the river: the
    # siren sounds at 避難判断水位, staff acknowledge after 7 minutes and silence it 3 minutes later.
    gw = "gw-kiso-river-02"
    sc.gateway_state(gw, E - 10 * HOUR_US, lamp="no_backhaul")
    sc.gateway_state(gw, E - 9 * HOUR_US, lamp="alarm", held=37, open_=1, unacknowledged=1)
    sc.gateway_state(gw, E - 9 * HOUR_US + 5 * MIN_US + 1, held=37)
    sc.gateway_state(gw, E - 9 * HOUR_US + 10 * MIN_US)
    river = "river_stage:" + gauge.node
    t_river, t_upper, t3 = stage_at[(gauge.node, 1)], stage_at[(gauge2.node, 1)], stage_at[(gauge.node, 3)]
    assert t_river < t_upper < t3, "the scenario's river events are out of order"
    sc.gateway_state(gw, t_river + 1, open_=1, unacknowledged=1)
    sc.gateway_state(gw, t_upper + 1, lamp="alarm", open_=2, unacknowledged=2)
    sc.gateway_state(gw, t3 + 1, siren=river, lamp="alarm", open_=2, unacknowledged=2)
    sc.alert_ack(gw, t3 + 420 * S, "ack", gauge, "river_stage", "河川課 佐藤", "ack-51e8aa", "stopped", since_us=t3,
                 alert_id="gw-kiso-river-02:river_stage:3c000001#3")
    sc.command(gw, t3 + 420 * S + 180_000, "alert-ack", "stopped", river, "河川課 佐藤", "console", "ack-51e8aa")
    sc.gateway_state(gw, t3 + 420 * S + 200_000, siren=river, lamp="alarm", open_=2, unacknowledged=1)
    sc.alert_ack(gw, t3 + 600 * S, "silence", gauge, "river_stage", "河川課 佐藤", "sil-0b77e2", "silenced",
                 since_us=t3, alert_id="gw-kiso-river-02:river_stage:3c000001#3")
    sc.command(gw, t3 + 600 * S + 150_000, "siren-silence", "silenced", river, "河川課 佐藤", "console",
               "sil-0b77e2")
    sc.gateway_state(gw, t3 + 600 * S + 200_000, lamp="alarm", open_=2, unacknowledged=1)
    for g, (_, _, open_, _, _) in sc.states.items():
        assert open_ == sum(1 for a in sc.open_alerts if a[0] == g), f"{g}: open alerts and its state disagree"
    bridge_health(sc, rnd)
    return sc


def bridge_health(sc: Scenario, rnd: random.Random, *, interval_us: int = 5 * MIN_US) -> None:
    """The bridge's own ``bridge_health`` points over the scenario, made by the bridge's code
    (:class:`agent.bridge.health.HealthMonitor`) from what it would have seen: each gateway's messages until it
    went quiet, readings written with their edge timestamps, a few dead letters, and a broker outage 20 h ago."""
    from agent.bridge.health import HealthMonitor  # noqa: PLC0415 - only this scenario needs the bridge

    now = [sc.start_us]
    monitor = HealthMonitor("denen-bridge-backend-1", clock_us=lambda: now[0], monotonic=lambda: now[0] / US)
    counters = {"readings_written": 0, "lines_written": 0, "messages": 0, "dead_letters": 0}
    quiet_after = {"gw-tanba-traps-02": sc.end_us - 40 * MIN_US}
    monitor.report(counters, db_write_ok=True)
    for t in _times(sc.start_us + interval_us, sc.end_us, interval_us):
        for gateway in sc.gateways:
            if t <= quiet_after.get(gateway, sc.end_us + 1):
                readings = rnd.randint(3, 30)
                now[0] = t - rnd.randint(1, interval_us // US - 1) * US
                monitor.note_message(gateway, readings)
                edge = [now[0] - rnd.randint(200_000, 2_000_000) for _ in range(readings)]
                monitor.note_written([f"heartbeat battery_v=3.5 {ts}" for ts in edge],
                                     [f"{gateway}/5e000001/{i}" for i in range(readings)], set())
                counters["readings_written"] += readings
                counters["lines_written"] += 2 * readings
                counters["messages"] += 1
        if rnd.random() < 0.05:
            reason = rnd.choice(["invalid_json", "rejected_by_server", "timestamp_in_future"])
            counters[f"dead_letters.{reason}"] = counters.get(f"dead_letters.{reason}", 0) + 1
            counters["dead_letters"] += 1
        monitor.broker_connected = not sc.end_us - 20 * HOUR_US <= t < sc.end_us - 20 * HOUR_US + 15 * MIN_US
        now[0] = t
        sc.lines.extend(monitor.report(counters, db_write_ok=True).lines)
