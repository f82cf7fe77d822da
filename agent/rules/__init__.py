"""Edge alert rules: readings and gateway events in, alerts out, evaluated on the gateway even while offline.

The gateway core feeds every accepted reading (the JSON object of README "Reading batch schema", as a mapping)
to :meth:`RuleEngine.on_reading`, its own events to :meth:`RuleEngine.on_gateway_event`, and calls
:meth:`RuleEngine.tick` when :meth:`RuleEngine.next_tick_us` says so. Each call returns the alerts it raised or
cleared; the core journals them at alarm priority and hands them to an :class:`AlertTracker`, which repeats each one
until the backend confirms it or a deadline passes. The siren and the status lamp follow
:meth:`RuleEngine.siren_wanted` and :meth:`RuleEngine.lamp_state`, pure functions of the active alerts, so they
work without the backhaul.

Public API::

    RulesConfig, RiverRule, RiverStages, SlopeRule      the ``rules:`` config section (pydantic, extra="forbid")
    NodeInfo, node_infos(config_nodes)                  what the engine needs to know of each configured node
    Alert                                               one raise or clear event (frozen; to_dict / from_dict)
    RuleEngine                                          the rules; owned by one thread (the core), not locked
    AlertTracker                                        repeat-until-confirmed bookkeeping
    siren_for(active, names), lamp_for(active)          the offline siren/lamp decision

Alerts. Each condition has a ``key`` (its identity, shared by its raise and its clear) and a ``type``. Every event
gets a new ``id`` = ``<key>#<sequence>`` (the sequence is per gateway, survives restarts through the snapshot), so a
repeat of the same event carries the same id and the backend can deduplicate. A clear carries the type, severity,
node and name of its raise; the cleared condition is known from the key.

=================== ====================== ================= =====================================================
type                key                    severity          raised when / cleared when
=================== ====================== ================= =====================================================
sos                 sos:<node>             emergency         an SOS frame with pressed=1 (lat/lon in the message
                                                             and fields when the node has a fix) / a frame with
                                                             pressed=0 (the caller cancelled). Never times out.
trap_fired          trap_fired:<node>      warning           a trap frame with fired=1 / fired=0 (trap re-armed).
river_stage         river_stage:<node>:<k> k=1 info,         the level reaches stage k's threshold (>=), one alert
                                           k=2 warning,      per stage crossed, lowest first / the level drops
                                           k=3,4 emergency   below threshold_k - hysteresis_cm, highest first.
                                                             k: 1 水防団待機水位 (standby), 2 はん濫注意水位
                                                             (caution), 3 避難判断水位 (evacuation decision),
                                                             4 はん濫危険水位 (danger). ``level`` is the stage
                                                             reached by the crossing: k on a raise, k-1 on a
                                                             clear (0 = below standby).
river_rise          river_rise:<node>      warning           the rise over rise_window_s reaches rise_cm_per_h /
                                                             it falls below rise_clear_fraction x rise_cm_per_h.
slope_tilt          slope_tilt:<node>      emergency         |tilt - zero| on either axis reaches max_deg / both
                                                             axes are below max_deg - hysteresis_deg.
slope_rate          slope_rate:<node>      emergency         the tilt change over rate_window_s on either axis
                                                             reaches rate_deg_per_h / it falls below
                                                             rate_clear_fraction x rate_deg_per_h.
node_silent         node_silent:<node>     warning           no frame for silence_factor x the node's interval_s
                                                             (counted from engine start for a node never heard;
                                                             raised by tick()) / any frame from the node.
battery_low         battery_low:<node>     info              battery_v below the node kind's threshold / battery_v
                                                             at or above threshold + battery_hysteresis_v.
journal_near_quota  journal_near_quota     warning           journal usage reaches journal_near_quota_pct / it is
                                                             below journal_near_quota_pct - journal_hysteresis_pct.
module_lost         module_lost:<radio>    warning           the core reports the radio module lost / back.
=================== ====================== ================= =====================================================

Rate rules compare the newest sample with a reference: the oldest sample inside the window when it is at least half
a window old, else the last sample before the window (an average over a longer span never overstates the peak
rate, and it lets a gauge that drops back to daily reports clear its alert). No reference, no rate: a single
sample never raises a rate alert.

Duplicate and out-of-order readings. A reading is ignored (counted in :attr:`RuleEngine.stale`) when neither its
frame counter nor its timestamp is newer than the node's last accepted reading: a journal replay or a duplicate
never re-raises or clears anything. A reading newer by counter but older by time means the gateway clock was set
back; it is evaluated (an SOS is never dropped), but rate histories restart, so no rate is computed across the step.
A reading newer by time but not by counter means the node's counter restarted; it is evaluated too.

Time. All times are µs since the Unix epoch on the clock that stamps readings (``ts_us``). When that clock is
stepped (NTP sync on a board without RTC), the core reports ``on_gateway_event("clock_step", delta_us=...)`` so
silence deadlines move with it instead of every node turning silent at once.
"""

from agent.rules.alert import (
    ALERT_TYPES,
    CLEARED,
    EMERGENCY,
    INFO,
    RAISED,
    SIREN_NAMES,
    STAGE_NAMES,
    WARNING,
    Alert,
    NodeInfo,
    lamp_for,
    node_infos,
    siren_for,
)
from agent.rules.config import RiverRule, RiverStages, RulesConfig, SlopeRule
from agent.rules.engine import RuleEngine
from agent.rules.state import SNAPSHOT_SCHEMA
from agent.rules.tracker import AlertTracker

__all__ = [
    "ALERT_TYPES",
    "CLEARED",
    "EMERGENCY",
    "INFO",
    "RAISED",
    "SIREN_NAMES",
    "SNAPSHOT_SCHEMA",
    "STAGE_NAMES",
    "WARNING",
    "Alert",
    "AlertTracker",
    "NodeInfo",
    "RiverRule",
    "RiverStages",
    "RuleEngine",
    "RulesConfig",
    "SlopeRule",
    "lamp_for",
    "node_infos",
    "siren_for",
]
