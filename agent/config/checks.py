"""Checks across list items and sections of the gateway config, and the warnings of a valid config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.config.mqtt import mqtt_tls_warnings
from agent.config.nodes import normalise_node_id
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
