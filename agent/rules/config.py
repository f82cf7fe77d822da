"""The ``rules:`` config section (pydantic, extra="forbid"): river, slope, silence, battery, journal and siren
settings. See agent/rules/__init__.py for what each alert means."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.rules.alert import SIREN_NAMES
from drivers.settings import N_, Period, problem

_NODE_KINDS: tuple[str, ...] = ("sos", "trap", "water_level", "rain", "tilt", "weather", "heartbeat")
NodeKind = Literal["sos", "trap", "water_level", "rain", "tilt", "weather", "heartbeat"]


#: How to write a node id in a rule, for each of its problems.
_NODE_HINT = N_("write it in quotes as 8 hex digits, as in nodes[].id, e.g. \"00000301\"")


def _node_id(value: object) -> str:
    """Normalise a node id to 8 lowercase hex digits (text, or an int written in YAML hex such as 0x00000301)."""
    if isinstance(value, bool):
        raise problem(N_("node id must be 8 hex digits, not true/false"), _NODE_HINT)
    if isinstance(value, int):
        if not 0 <= value <= 0xFFFFFFFF:
            raise problem(N_("node id {value} does not fit in 32 bits (0..4294967295)"), _NODE_HINT, value=value)
        return f"{value:08x}"
    if not isinstance(value, str):
        raise problem(N_("node id must be 8 hex digits in quotes"), _NODE_HINT)
    text = value.strip()
    if len(text) != 8 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise problem(N_("node id '{text}' is not 8 hex digits"), _NODE_HINT, text=text)
    return text.lower()


#: How far a value must fall back past a threshold before its alert clears, in the threshold's unit: 0 or more.
Hysteresis = Annotated[float, Field(ge=0)]
#: The window a rate of change is measured over, in seconds: at least a minute, so one reading is not a rate.
RateWindow = Annotated[float, Field(ge=60)]
#: The fraction of a rate threshold the rate must fall below before its alert clears (0-1, ratio).
ClearFraction = Annotated[float, Field(gt=0, le=1)]


class _RulesSection(BaseModel):
    # Same conventions as agent.config's sections: unknown keys are errors, the config is shared read-only.
    # defer_build: as drivers.settings.Section (no validator in the long-running process).
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True, validate_default=True,
                              defer_build=True)


class RiverStages(_RulesSection):
    """The four Japanese river levels of one gauge, in cm on the gauge's own datum (the datum of ``level_cm``)."""

    standby: float = Field(
        description=N_("水防団待機水位 (flood-fighting standby level), cm on the gauge datum."))
    caution: float = Field(description=N_("はん濫注意水位 (flood caution level), cm; above standby."))
    evacuation: float = Field(description=N_("避難判断水位 (evacuation decision level), cm; above caution."))
    danger: float = Field(description=N_("はん濫危険水位 (flood danger level), cm; above evacuation."))

    @model_validator(mode="after")
    def _increasing(self) -> RiverStages:
        values = self.as_tuple()
        if not all(math.isfinite(v) for v in values):
            raise problem(N_("river stages must be finite numbers of cm"))
        names = ("standby", "caution", "evacuation", "danger")
        for i in range(1, 4):
            if values[i] <= values[i - 1]:
                raise problem(N_("river stages must increase strictly: {stage} ({cm} cm) is not above {below} "
                                 "({below_cm} cm)"), N_("standby < caution < evacuation < danger, as the river "
                                                        "administrator sets them for this gauge"),
                              stage=names[i], cm=f"{values[i]:g}", below=names[i - 1], below_cm=f"{values[i - 1]:g}")
        return self

    def as_tuple(self) -> tuple[float, float, float, float]:
        """Thresholds of stages 1..4 in cm."""
        return (self.standby, self.caution, self.evacuation, self.danger)


class _NodeRule(_RulesSection):
    # Every rule names its node by the id written as in nodes[].id; each subclass declares the field itself.

    @field_validator("node", mode="before", check_fields=False)
    @classmethod
    def _node(cls, value: object) -> str:
        return _node_id(value)


class RiverRule(_NodeRule):
    """Stage and rate-of-rise alerts for one water_level node."""

    node: str = Field(description=N_("Node id of the water_level gauge: 8 hex digits in quotes, as in nodes[].id."))
    stages_cm: RiverStages = Field(
        description=N_("The four river levels in cm on the gauge datum, strictly increasing."))
    hysteresis_cm: Hysteresis = Field(
        default=5.0,
        description=N_("cm the level must fall below a stage's threshold before that stage clears (stops alerts "
        "chattering while the water hovers at a line)."),
    )
    rise_cm_per_h: float | None = Field(
        default=None,
        gt=0,
        description=N_("Rate of rise in cm per hour that raises river_rise, measured over rise_window_s. "
        "Optional: null turns the rate-of-rise alert off."),
    )
    rise_window_s: RateWindow = Field(
        default=3600.0, description=N_("Window in seconds over which the rate of rise is measured (at least 60 s).")
    )
    rise_clear_fraction: ClearFraction = Field(
        default=0.5,
        description=N_("river_rise clears when the rate falls below this fraction of rise_cm_per_h (0-1, ratio)."),
    )


class SlopeRule(_NodeRule):
    """Tilt and tilt-rate alerts for one tilt node."""

    node: str = Field(description=N_("Node id of the tilt sensor: 8 hex digits in quotes, as in nodes[].id."))
    max_deg: float | None = Field(
        default=None,
        gt=0,
        description=N_("Tilt in degrees from the installation zero, on either axis, that raises slope_tilt. "
        "Optional: null turns the tilt alert off."),
    )
    hysteresis_deg: Hysteresis = Field(
        default=0.1, description=N_("Degrees the tilt must fall below max_deg before slope_tilt clears.")
    )
    zero_x_deg: float = Field(default=0.0, description=N_("Installation zero of the x axis in degrees (subtracted)."))
    zero_y_deg: float = Field(default=0.0, description=N_("Installation zero of the y axis in degrees (subtracted)."))
    rate_deg_per_h: float | None = Field(
        default=None,
        gt=0,
        description=N_("Tilt change in degrees per hour, on either axis, over rate_window_s, that raises slope_rate. "
        "Optional: null turns the tilt-rate alert off."),
    )
    rate_window_s: RateWindow = Field(
        default=3600.0, description=N_("Window in seconds over which the tilt rate is measured (at least 60 s).")
    )
    rate_clear_fraction: ClearFraction = Field(
        default=0.5,
        description=N_("slope_rate clears when the rate falls below this fraction of rate_deg_per_h (0-1, ratio)."),
    )

    @model_validator(mode="after")
    def _something(self) -> SlopeRule:
        if self.max_deg is None and self.rate_deg_per_h is None:
            raise problem(N_("slope rule for node {node} sets neither max_deg nor rate_deg_per_h, so it would never "
                             "alert"), N_("set at least one of them"), node=self.node)
        return self


class RulesConfig(_RulesSection):
    """Edge alert rules (the ``rules:`` section). Every default is usable: an empty section works."""

    sos: bool = Field(default=True, description=N_("Raise an emergency on SOS pressed; clear it when cancelled."))
    trap: bool = Field(default=True, description=N_("Raise an alert when a trap fires; clear it when re-armed."))
    rivers: list[RiverRule] = Field(
        default_factory=list, description=N_("River stage and rate-of-rise rules, one per water_level node.")
    )
    slopes: list[SlopeRule] = Field(
        default_factory=list, description=N_("Tilt and tilt-rate rules, one per tilt node.")
    )
    silence_factor: float = Field(
        default=3.0,
        ge=1,
        description=N_("A node is silent once silence_factor x its interval_s seconds pass without a frame (ratio)."),
    )
    silence_kinds: list[NodeKind] = Field(
        default_factory=lambda: list(_NODE_KINDS),
        description=N_("Node kinds watched for silence (e.g. drop sos for buttons that are switched off when not "
        "carried)."),
    )
    battery_low_v: float = Field(
        default=3.3, ge=0, description=N_("Battery voltage in V below which battery_low is raised (0 turns it off).")
    )
    battery_low_v_by_kind: dict[NodeKind, float] = Field(
        default_factory=dict,
        description=N_("Per node kind override of battery_low_v in V, e.g. {trap: 2.2} for 2 x AA cells "
        "(0 turns it off for that kind)."),
    )
    battery_hysteresis_v: Hysteresis = Field(
        default=0.1, description=N_("V above the threshold the battery must reach before battery_low clears.")
    )
    journal_near_quota_pct: float = Field(
        default=90.0, gt=0, le=100,
        description=N_("Journal usage in percent of its quota that raises journal_near_quota.")
    )
    journal_hysteresis_pct: Hysteresis = Field(
        default=5.0, description=N_("Percentage points below the threshold before journal_near_quota clears.")
    )
    repeat_s: Period = Field(
        default=300.0,
        description=N_("Seconds between re-sends of an alert the backend has not confirmed (at least 1 s)."),
    )
    deadline_s: Period = Field(
        default=86400.0,
        description=N_("Seconds after which an unconfirmed alert stops being re-sent (it is counted as expired)."),
    )
    siren: list[str] = Field(
        default_factory=lambda: ["sos", "river_evacuation", "river_danger", "slope"],
        description=N_("Alerts that sound the local siren while active, offline too: alert types (sos, trap_fired, "
        "river_stage, river_rise, slope_tilt, slope_rate, node_silent, battery_low, journal_near_quota, "
        "module_lost), a river stage (river_standby, river_caution, river_evacuation, river_danger: that stage "
        "or higher) or slope (slope_tilt or slope_rate)."),
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_keys(cls, data: object) -> object:
        # A list key left empty in YAML (every item commented out) reads as null: it means "none", not an error.
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items()
                    if not (v is None and k in ("rivers", "slopes", "siren", "battery_low_v_by_kind"))}
        return data

    @field_validator("rivers")
    @classmethod
    def _unique_rivers(cls, rivers: list[RiverRule]) -> list[RiverRule]:
        _unique_nodes("rivers", [r.node for r in rivers])
        return rivers

    @field_validator("slopes")
    @classmethod
    def _unique_slopes(cls, slopes: list[SlopeRule]) -> list[SlopeRule]:
        _unique_nodes("slopes", [s.node for s in slopes])
        return slopes

    @field_validator("siren")
    @classmethod
    def _siren_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in SIREN_NAMES:
                raise problem(N_("unknown siren alert '{name}'"), N_("known: {names}"), name=name,
                              names=", ".join(SIREN_NAMES))
        return names

    @field_validator("battery_low_v_by_kind")
    @classmethod
    def _battery_values(cls, by_kind: dict[str, float]) -> dict[str, float]:
        for kind, volts in by_kind.items():
            if not (math.isfinite(volts) and volts >= 0):
                raise problem(N_("battery_low_v_by_kind.{kind} must be a voltage >= 0 V (0 turns it off)"), kind=kind)
        return by_kind

    def battery_threshold_v(self, kind: str | None) -> float:
        """The battery_low threshold in V for a node kind (0 = off)."""
        if kind is not None and kind in self.battery_low_v_by_kind:
            return self.battery_low_v_by_kind[kind]  # type: ignore[index]
        return self.battery_low_v


def _unique_nodes(section: str, nodes: list[str]) -> None:
    first: dict[str, int] = {}
    for i, node in enumerate(nodes):
        if node in first:
            raise problem(N_("{section}[{index}]: node {node} already has a rule at {section}[{first}]"),
                          N_("give each node one rule"), section=section, index=i, node=node, first=first[node])
        first[node] = i

