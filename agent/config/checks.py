"""Checks across list items and sections of the gateway config, and the warnings of a valid config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.config.mqtt import mqtt_tls_warnings
from agent.config.nodes import NODE_KINDS, normalise_node_id
from agent.config.radio import _section_problems, section_warnings
from agent.config.values import Found, _get
from drivers.settings import N_, Loc, Problems, Text, choices_hint

if TYPE_CHECKING:
    from agent.config.models import Config


def _collection_problems(radios: object, nodes: object) -> list[tuple[Loc, str, str | None]]:
    """Find duplicate radio names, drivers' settings sections given for the wrong driver, duplicate node ids/names and
    node.radio references to missing radios.

    Works on raw data (dicts, lists, anything) as well as on validated models; values that are themselves invalid
    are skipped, since their own error is reported elsewhere.
    """
    found: list[tuple[Loc, str, str | None]] = []
    radio_list = list(radios) if isinstance(radios, list | tuple) else []
    node_list = list(nodes) if isinstance(nodes, list | tuple) else []

    radio_names: dict[str, int] = {}
    for i, radio in enumerate(radio_list):
        found.extend((("radios", i, *p.subloc), p.message, p.hint) for p in _section_problems(radio))
        name = _get(radio, "name")
        if not isinstance(name, str):
            continue
        _once(radio_names, name, ("radios", i, "name"), Text(N_("radio name '{name}'"), name=name),
              Text(N_("give each radio a unique name")), found)

    ids: dict[str, int] = {}
    names: dict[str, int] = {}
    for j, node in enumerate(node_list):
        try:
            node_id = normalise_node_id(_get(node, "id"))
        except Problems:
            node_id = None
        if node_id is not None:
            _once(ids, node_id, ("nodes", j, "id"), Text(N_("node id {id}"), id=node_id),
                  Text(N_("each node needs its own id; check the label on the node")), found)
        name = _get(node, "name")
        if isinstance(name, str):
            _once(names, name, ("nodes", j, "name"), Text(N_("node name '{name}'"), name=name),
                  Text(N_("give each node a unique name")), found)
        radio = _get(node, "radio")
        if isinstance(radio, str) and radio not in radio_names:
            defined = list(radio_names)
            found.append(
                (("nodes", j, "radio"), Text(N_("radio '{radio}' is not defined in radios"), radio=radio),
                 choices_hint(radio, defined, Text(N_("radios defined"))) if defined
                 else Text(N_("define the radio under radios:")))
            )
    found.extend(_driver_node_problems(radio_list, node_list))
    return found


#: (location of a sensor's node key below its radio, node id, the kind of its readings, what makes them, how to
#: make the node's kind right).
_DriverNode = tuple[Loc, str, str, Text, Text]


def _driver_nodes(radio: object) -> list[_DriverNode]:
    """The nodes a radio's driver makes frames for without a MIC: each Modbus sensor and Meshtastic device with a
    valid node id (and, for Modbus, a valid kind)."""
    driver = _get(radio, "driver")
    entries = _get(_get(radio, driver), {"modbus": "sensors", "meshtastic": "devices"}.get(driver, "")) \
        if driver in ("modbus", "meshtastic") else None
    out: list[_DriverNode] = []
    for k, entry in enumerate(entries if isinstance(entries, list | tuple) else ()):
        try:
            node_id = normalise_node_id(_get(entry, "node"))
        except Problems:
            continue  # reported by the section's own check
        if driver == "modbus":
            kind, what = _get(entry, "kind"), Text(N_("Modbus sensor at slave {slave}"), slave=_get(entry, "slave"))
            fix = Text(N_("set kind: {want} on the node, or correct the sensor's kind or its node"), want=kind)
        else:  # a Meshtastic device's readings are its SOS calls, or weather for an environment station
            kind = "weather" if _get(entry, "environment") is True else "sos"
            what = Text(N_("Meshtastic device {device}"), device=_get(entry, "device"))
            fix = Text(N_("a Meshtastic device's node is kind sos, or weather with environment: true; set kind: "
                          "{want} on the node"), want=kind)
        if kind in NODE_KINDS:
            out.append(((driver, "sensors" if driver == "modbus" else "devices", k, "node"), node_id, kind, what,
                        fix))
    return out


def _driver_node_problems(radios: list[object], nodes: list[object]) -> list[tuple[Loc, str, str | None]]:
    """Each node a Modbus sensor or a Meshtastic device reports as must be under ``nodes:`` with the kind of its
    readings, no key, ``unauthenticated: flag`` and no other radio: the driver builds its frames without a MIC
    (it never sees node keys), so any other setting quarantines or mislabels every reading, an SOS included."""
    by_id: dict[str, tuple[int, object]] = {}
    for j, node in enumerate(nodes):
        try:
            by_id.setdefault(normalise_node_id(_get(node, "id")), (j, node))
        except Problems:
            continue
    found: list[tuple[Loc, str, str | None]] = []
    for i, radio in enumerate(radios):
        radio_name = _get(radio, "name")
        for subloc, node_id, kind, what, fix in _driver_nodes(radio):
            if node_id not in by_id:
                found.append((("radios", i, *subloc), Text(N_("node {node} ({what}) is not under nodes:"),
                                                           node=node_id, what=what),
                              Text(N_('add it: - {{id: "{node}", name: ..., kind: {kind}, unauthenticated: flag}}'),
                                   node=node_id, kind=kind)))
                continue
            j, node = by_id[node_id]
            found.extend(_driver_node_settings(j, node, (subloc, node_id, kind, what, fix), radio_name))
    return found


def _driver_node_settings(j: int, node: object, made_by: _DriverNode,
                          radio_name: object) -> list[tuple[Loc, str, str | None]]:
    """What is wrong with the ``nodes[j]`` entry of a node whose frames a sensor (``made_by``, on radio
    ``radio_name``) builds without a MIC."""
    _, node_id, kind, what, fix = made_by
    found: list[tuple[Loc, str, str | None]] = []
    if _get(node, "kind") in NODE_KINDS and _get(node, "kind") != kind:
        found.append((("nodes", j, "kind"), Text(N_("node {node} is kind {kind}, but the {what} sends {want} "
                                                    "readings"), node=node_id, kind=_get(node, "kind"), what=what,
                                                 want=kind), fix))
    keys = [k for k in ("key", "key_file", "key_env") if _get(node, k) is not None]
    if keys:
        found.append((("nodes", j, keys[0]), Text(N_("node {node} has a key, but the {what} builds its frames without "
                                                     "a MIC (it never sees node keys)"), node=node_id, what=what),
                      Text(N_("remove {key} from the node and set unauthenticated: flag: its readings are accepted "
                              "and marked unauthenticated"), key=keys[0])))
    if keys and _get(node, "unauthenticated") != "flag":  # with no key the node's own check says this
        found.append((("nodes", j, "unauthenticated"), Text(N_("node {node} would quarantine every frame of the "
                                                              "{what}, SOS included: they carry no MIC"),
                                                           node=node_id, what=what),
                      Text(N_("set unauthenticated: flag on the node (its readings are then marked "
                              "unauthenticated)"))))
    bound = _get(node, "radio")
    if isinstance(bound, str) and isinstance(radio_name, str) and bound != radio_name:
        found.append((("nodes", j, "radio"), Text(N_("node {node} is only accepted through radio '{bound}', but the "
                                                     "{what} is on radio '{radio}'"), node=node_id, bound=bound,
                                                  what=what, radio=radio_name),
                      Text(N_("set radio: {radio} on the node, or remove its radio:"), radio=radio_name)))
    return found


def _once(seen: dict[str, int], value: str, loc: Loc, what: str, hint: str,
          found: list[tuple[Loc, str, str | None]]) -> None:
    """Remember that the list item at ``loc`` (``(list, index, key)``) has ``value``, or note that an earlier one
    has it too."""
    if value in seen:
        found.append((loc, Text(N_("{what} is used twice (also {list}[{index}])"), what=what, list=loc[0],
                                index=seen[value]), hint))
    else:
        seen[value] = int(loc[1])


def _warning_problems(config: Config) -> list[Found]:
    """Valid settings that are probably a mistake."""
    found: list[Found] = section_warnings(config.radios)
    found.extend(mqtt_tls_warnings(config.mqtt, N_("the gateway's MQTT login and every reading cross the network "
                                                   "in clear"),
                                   N_("use tls: {ca_file: ...} unless the path to the broker is a trusted private "
                                      "network")))
    # Who can read secrets is checked by the loader itself (_secret_mode_problems), for every config file.
    rivers = {r.node for r in config.rules.rivers}
    for i, node in enumerate(config.nodes):
        if node.kind == "water_level" and node.id.lower() not in rivers:
            found.append((("nodes", i, "kind"), Text(
                N_("water_level node {id} ({name}) has no river stage rule, so no level it reports raises an alert "
                   "(only its silence does)"), id=node.id, name=node.name), Text(
                N_("add it under rules.rivers: - node: \"{id}\" with stages_cm: standby (水防団待機水位), caution "
                   "(はん濫注意水位), evacuation (避難判断水位), danger (はん濫危険水位) in cm on the gauge's datum, as in "
                   "config/river-station.yaml"), id=node.id)))
    if not config.nodes and config.unknown_nodes == "quarantine":
        found.append((("unknown_nodes",), Text(N_("no nodes are listed and unknown_nodes is quarantine, so every "
                                                  "frame will be set aside")),
                      Text(N_("list the nodes under nodes:, or set unknown_nodes: accept"))))
    return found
