"""Scenario files: the YAML format and its validation, apart from the runtime that plays them (drivers.sim.scenario).

:func:`read_scenario_file` reads and parses a file, :func:`validate_scenario` checks the data against the
schema and the cross-references (node -> module, event -> node or module, event -> node kind); a bad file raises
:class:`ScenarioError` naming the file, the line, the key and a hint. A module's ``model`` is the simulator twin
name of a registered driver (:attr:`drivers.registry.DriverSpec.twin`), so a new driver's twin is a valid model
without a change here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from drivers import registry
from drivers.errors import DriverError

__all__ = [
    "FAULT_FIELDS",
    "EventSpec",
    "FaultsSpec",
    "ModuleEvent",
    "ModuleSpec",
    "NodeEvent",
    "NodeSpec",
    "ScenarioError",
    "ScenarioSpec",
    "format_errors",
    "line_of",
    "read_scenario_file",
    "validate_scenario",
]


class ScenarioError(DriverError, ValueError):
    """A scenario file or definition is invalid; the message names the file, the key and a hint."""


# -- file schema ---------------------------------------------------------------------------------------------------
FAULT_FIELDS = ("split_probability", "garbage_probability", "truncate_probability", "duplicate_probability",
                 "drop_probability")
_Prob = Annotated[float, Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FaultsSpec(_Strict):
    split_probability: _Prob = 0.0
    garbage_probability: _Prob = 0.0
    truncate_probability: _Prob = 0.0
    duplicate_probability: _Prob = 0.0
    drop_probability: _Prob = 0.0


#: The simulator twins of the registered drivers, in registration order (``model:`` values).
TwinName = Literal[tuple(s.twin for s in registry.specs())]  # type: ignore[valid-type]


class ModuleSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")]
    model: TwinName
    link: str | None = None
    boot_delay_s: Annotated[float, Field(ge=0.0, le=30.0)] | None = None
    profile: dict[str, Any] = Field(default_factory=dict)
    faults: FaultsSpec = FaultsSpec()


def _hex_id(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be 8 hex digits in quotes (YAML reads unquoted digits as a number)")
    if len(value) != 8 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise ValueError("must be exactly 8 hex digits, e.g. \"00A1B2C3\"")
    return value.upper()


class NodeSpec(_Strict):
    # kind mirrors drivers.sim.nodes.NODE_KINDS (a test keeps them equal).
    id: str
    kind: Literal["sos", "trap", "water_level", "rain", "tilt", "weather", "heartbeat"]
    module: str
    key: str | None = None
    interval_s: Annotated[float, Field(gt=0.0)] | None = None
    rssi: Annotated[float, Field(ge=-140.0, le=-20.0)] = -85.0
    snr: Annotated[float, Field(ge=-20.0, le=15.0)] = 6.0
    counter_start: Annotated[int, Field(ge=0, le=0xFFFF_FFFF)] = 1
    battery_v: Annotated[float, Field(ge=2.5, le=4.3)] = 3.6
    receipt: bool = True
    lat_deg: Annotated[float, Field(ge=-90.0, le=90.0)] | None = None
    lon_deg: Annotated[float, Field(ge=-180.0, le=180.0)] | None = None
    level_cm: Annotated[float, Field(ge=0.0)] = 60.0
    rain_mm_per_h: Annotated[float, Field(ge=0.0)] = 0.0
    first_at_s: Annotated[float, Field(ge=0.0)] | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _check_id(cls, value: object) -> str:
        return _hex_id(value)

    @field_validator("key", mode="before")
    @classmethod
    def _check_key(cls, value: object) -> object:
        if value is None:
            return None
        if not isinstance(value, str) or len(value) != 32 or any(c not in "0123456789abcdefABCDEF" for c in value):
            raise ValueError("must be 32 hex digits (a 16-byte AES-128 key) in quotes")
        return value


class _EventBase(_Strict):
    at_s: Annotated[float, Field(ge=0.0)]


class NodeEvent(_EventBase):
    node: str

    @field_validator("node", mode="before")
    @classmethod
    def _check_node(cls, value: object) -> str:
        return _hex_id(value)


class ModuleEvent(_EventBase):
    module: str


class SosEvent(NodeEvent):
    action: Literal["sos"]
    pressed: bool = True


class TrapEvent(NodeEvent):
    action: Literal["fire_trap", "arm_trap"]


class LevelEvent(NodeEvent):
    action: Literal["river_level"]
    level_cm: Annotated[float, Field(ge=0.0)]
    over_s: Annotated[float, Field(ge=0.0)] = 0.0


class RainEvent(NodeEvent):
    action: Literal["rain"]
    mm_per_h: Annotated[float, Field(ge=0.0)]


class TiltEvent(NodeEvent):
    action: Literal["tilt"]
    x_deg: Annotated[float, Field(ge=-90.0, le=90.0)]
    y_deg: Annotated[float, Field(ge=-90.0, le=90.0)]
    over_s: Annotated[float, Field(ge=0.0)] = 0.0


class SendEvent(NodeEvent):
    action: Literal["send"]


class RebootEvent(ModuleEvent):
    action: Literal["reboot"]
    noise: bool = True


class UnplugEvent(ModuleEvent):
    action: Literal["unplug"]
    duration_s: Annotated[float, Field(gt=0.0)]


class GarbageEvent(ModuleEvent):
    action: Literal["garbage"]
    count: Annotated[int, Field(ge=1, le=10_000)] = 1
    hex: str | None = None


class FaultsEvent(ModuleEvent):
    action: Literal["faults"]
    split_probability: _Prob | None = None
    garbage_probability: _Prob | None = None
    truncate_probability: _Prob | None = None
    duplicate_probability: _Prob | None = None
    drop_probability: _Prob | None = None


class CrcErrorEvent(ModuleEvent):
    action: Literal["crc_error"]


EventSpec = Annotated[
    Union[SosEvent, TrapEvent, LevelEvent, RainEvent, TiltEvent, SendEvent, RebootEvent, UnplugEvent, GarbageEvent,
          FaultsEvent, CrcErrorEvent],
    Field(discriminator="action"),
]
_ACTIONS = ("sos", "fire_trap", "arm_trap", "river_level", "rain", "tilt", "send", "reboot", "unplug", "garbage",
            "faults", "crc_error")


class ScenarioSpec(_Strict):
    speed: Annotated[float, Field(gt=0.0, le=100_000.0)] = 1.0
    seed: int | None = None
    modules: Annotated[list[ModuleSpec], Field(min_length=1)]
    nodes: list[NodeSpec] = Field(default_factory=list)
    events: list[EventSpec] = Field(default_factory=list)


_HINTS = {
    "extra_forbidden": "unknown key; check its spelling",
    "union_tag_invalid": "check the spelling of the action",
    "union_tag_not_found": f"every event needs an 'action' ({', '.join(_ACTIONS)})",
    "literal_error": "use one of the listed values",
    "missing": "this key is required",
}


def read_scenario_file(path: str | os.PathLike[str]) -> Any:
    """The YAML data of a scenario file, with ruamel's line numbers (for :func:`validate_scenario`'s messages).

    Raises:
        ScenarioError: the file cannot be read or is not valid YAML.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{source}: cannot read scenario file: {exc.strerror or exc}") from exc
    try:
        return YAML(typ="rt").load(text)
    except YAMLError as exc:
        raise ScenarioError(f"{source}: not valid YAML: {exc}") from exc


def validate_scenario(data: object, source: str = "<scenario>") -> ScenarioSpec:
    """Check scenario data (as a YAML file holds it) against the schema and its cross-references.

    Raises:
        ScenarioError: the data does not match the schema or refers to unknown names.
    """
    if not isinstance(data, Mapping):
        raise ScenarioError(f"{source}: a scenario must be a mapping with 'modules', 'nodes' and 'events'")
    try:
        spec = ScenarioSpec.model_validate(_plain(data))
    except ValidationError as exc:
        raise ScenarioError(format_errors(source, data, exc)) from None
    _check_references(source, data, spec)
    return spec


def _check_references(source: str, data: Mapping[str, Any], spec: ScenarioSpec) -> None:
    names = [m.name for m in spec.modules]
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ScenarioError(f"{source}{line_of(data, ('modules', i, 'name'))}: modules.{i}.name: "
                                f"duplicate module name {name!r} (hint: each module needs its own name)")
        seen.add(name)
    ids: set[str] = set()
    for i, n in enumerate(spec.nodes):
        if n.id in ids:
            raise ScenarioError(f"{source}{line_of(data, ('nodes', i, 'id'))}: nodes.{i}.id: duplicate node id "
                                f"{n.id} (hint: node ids are unique per gateway)")
        ids.add(n.id)
        if n.module not in seen:
            raise ScenarioError(f"{source}{line_of(data, ('nodes', i, 'module'))}: nodes.{i}.module: unknown "
                                f"module {n.module!r} (hint: one of {', '.join(names)})")
    for i, e in enumerate(spec.events):
        if isinstance(e, NodeEvent) and e.node not in ids:
            raise ScenarioError(f"{source}{line_of(data, ('events', i, 'node'))}: events.{i}.node: unknown node "
                                f"{e.node} (hint: one of {', '.join(sorted(ids)) or 'none defined'})")
        if isinstance(e, ModuleEvent) and e.module not in seen:
            raise ScenarioError(f"{source}{line_of(data, ('events', i, 'module'))}: events.{i}.module: unknown "
                                f"module {e.module!r} (hint: one of {', '.join(names)})")
        if isinstance(e, GarbageEvent) and e.hex is not None:
            try:
                bytes.fromhex(e.hex)
            except ValueError:
                raise ScenarioError(f"{source}{line_of(data, ('events', i, 'hex'))}: events.{i}.hex: not hex "
                                    f"(hint: e.g. \"FCFCFC\")") from None
        if isinstance(e, (SosEvent, TrapEvent, LevelEvent, RainEvent, TiltEvent)):
            kind = next(n.kind for n in spec.nodes if n.id == e.node)
            wanted = {SosEvent: ("sos",), TrapEvent: ("trap",), LevelEvent: ("water_level",), RainEvent: ("rain",),
                      TiltEvent: ("tilt",)}[type(e)]
            if kind not in wanted:
                raise ScenarioError(f"{source}{line_of(data, ('events', i, 'action'))}: events.{i}.action: "
                                    f"{e.action!r} does not apply to node {e.node}, a {kind} node "
                                    f"(hint: it needs a {' or '.join(wanted)} node)")


def _plain(data: object) -> object:
    """ruamel's round-trip containers as plain dicts and lists (pydantic wants plain types)."""
    if isinstance(data, Mapping):
        return {str(k): _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(v) for v in data]
    return data


def line_of(data: object, loc: Iterable[object]) -> str:
    """``:<line>`` of the deepest YAML node on ``loc`` that ruamel recorded a position for ('' if none)."""
    line: int | None = None
    node = data
    for key in loc:
        lc = getattr(node, "lc", None)
        try:
            if lc is not None:
                if isinstance(node, Mapping) and key in node:
                    line = lc.key(key)[0]
                elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
                    line = lc.item(key)[0]
        except (KeyError, IndexError, TypeError):
            pass
        if isinstance(node, Mapping) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            node = node[key]
        else:
            break
    return "" if line is None else f":{line + 1}"


def format_errors(source: str, data: object, exc: ValidationError, prefix: tuple[object, ...] = ()) -> str:
    lines = []
    for err in exc.errors():
        # Discriminated unions put the tag name in the path ("events.0.sos.node"); drop it for the reader.
        raw = err["loc"]
        loc = [*prefix, *(p for j, p in enumerate(raw)
                          if not (j == 2 and raw[0] == "events" and isinstance(p, str) and p in _ACTIONS))]
        where = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        hint = _HINTS.get(err["type"])
        lines.append(f"{source}{line_of(data, loc)}: {where}: {msg}" + (f" (hint: {hint})" if hint else ""))
    return "invalid scenario:\n  " + "\n  ".join(lines)
