"""The one builder of gateway config text for tests: keyword arguments for what tests vary, defaults for the rest.

Parsed as text (``parse_config``) the result loads as it is. Written to a file it holds node keys, so the file must be
owner-only: write it with :func:`tests.support.field.write_config`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LAMP_PIN", "MINIMAL_YAML", "ONE_TRAP_YAML", "SIREN_PIN", "STAGES_CM", "NodeEntry", "gateway_yaml",
           "mock_gpio", "node_key", "numbered_names", "river", "rules_yaml", "short_name"]

SIREN_PIN = 17  # BCM pin of the siren in the tests' mock GPIO
LAMP_PIN = 27  # BCM pin of the status lamp
#: A river gauge's four stages in cm (standby, caution, evacuation, danger), as the tests' gauge 00000301 has them.
STAGES_CM = {"standby": 100, "caution": 150, "evacuation": 250, "danger": 300}

#: The smallest config the loader takes, up to its one trap node's key line (the caller adds how the node is keyed).
ONE_TRAP_YAML = """\
gateway:
  id: gw-test
  site: test
radios:
  - name: lora0
    driver: rak3172
    port: loop://
nodes:
  - id: "00000001"
    name: node-1
    kind: trap
"""
#: A whole config for tests that do not need an example: ONE_TRAP_YAML with the node unauthenticated (flagged).
MINIMAL_YAML = ONE_TRAP_YAML + "    unauthenticated: flag\n"


def node_key(node_id: int) -> bytes:
    """Test key of a node: its id repeated to 16 bytes (as in config/demo.yaml)."""
    return node_id.to_bytes(4, "big") * 4


@dataclass(frozen=True, slots=True)
class NodeEntry:
    """One ``nodes:`` entry written as given, for a node a test configures unlike its default (no key, a policy)."""

    node_id: int
    kind: str
    name: str
    key: bytes | None
    interval_s: int = 60
    unauthenticated: str | None = None  # ``reject`` (the config's default), ``flag`` or ``accept``
    receipt: str | None = None  # ``send`` (the config's default) or ``backup``


def short_name(node: Any) -> str:
    """``<kind>-<low byte of the id, decimal>``: ``water-level-1`` for node 00000301."""
    return f"{node.kind.replace('_', '-')}-{node.node_id & 0xFF}"


def numbered_names() -> Callable[[Any], str]:
    """A namer giving each node ``<kind>-<n>``, n counting the nodes of that kind from 1 (for many nodes per kind)."""
    counts: dict[str, int] = {}

    def name(node: Any) -> str:
        base = node.kind.replace("_", "-")
        counts[base] = counts.get(base, 0) + 1
        return f"{base}-{counts[base]}"

    return name


def _entry(node: Any, name: Callable[[Any], str], interval_s: int, unauthenticated: str | None) -> NodeEntry:
    """A node of any test model (FieldNode, ScenarioNode, NodeEntry ...) as its config entry.

    A node's own ``name`` / ``interval_s`` / ``key`` / ``unauthenticated`` attributes win over the builder's namer,
    interval, the test key and policy; a node without a ``key`` attribute gets :func:`node_key`.
    """
    if isinstance(node, NodeEntry):
        return node
    key = node.key if hasattr(node, "key") else node_key(node.node_id)
    return NodeEntry(node.node_id, node.kind, getattr(node, "name", None) or name(node), key,
                     getattr(node, "interval_s", interval_s), getattr(node, "unauthenticated", unauthenticated))


def _node_yaml(e: NodeEntry) -> str:
    key = f'    key: "{e.key.hex()}"\n' if e.key is not None else ""
    policy = f"    unauthenticated: {e.unauthenticated}\n" if e.unauthenticated else ""
    receipt = f"    receipt: {e.receipt}\n" if e.receipt else ""
    return (f'  - id: "{e.node_id:08x}"\n    name: {e.name}\n    kind: {e.kind}\n{key}{policy}{receipt}'
            f"    interval_s: {e.interval_s}\n")


def _block(text: str) -> str:
    """A caller's YAML lines, ending with one newline (callers pass them with or without)."""
    return text if not text or text.endswith("\n") else text + "\n"


def gateway_yaml(*, port: str, mqtt_port: int, journal: Path | str, nodes: Iterable[Any] = (),
                 gateway: str = "gw-test-01", site: str = "testville",
                 quota_mb: float = 64, commit_window_ms: int | None = None,
                 topic_prefix: str | None = None, reconnect_s: tuple[float, float] | None = (0.2, 1.0),
                 batch: int | None = None, window: int | None = None, extra_mqtt: str = "",
                 radio: str = "lora0", driver: str = "rak3172", extra_radios: str = "",
                 name: Callable[[Any], str] = short_name, interval_s: int = 60, unauthenticated: str | None = None,
                 health_s: int | None = 3600,
                 rules: str = "", gpio: str = "", receipts: str = "", extra: str = "") -> str:
    """A gateway config: one radio on ``port``, a broker on 127.0.0.1:``mqtt_port``, ``nodes`` keyed inline.

    journal: ``journal.path``; ``quota_mb`` its quota in MiB; ``commit_window_ms`` ``journal.commit_window_ms`` in
        ms (None: the agent's default; 0 for a test that steps the core by hand and expects each wake-up committed).
    mqtt: ``topic_prefix`` (None: the default ``denen/v1``); ``reconnect_s`` (min, max) backoff in s (None: the
        config's default); ``batch`` / ``window``: ``batch_max_readings`` / ``inflight_window`` (None: default);
        ``extra_mqtt``: more lines of the section, indented two spaces.
    radios: ``radio`` named ``radio`` with ``driver``; ``extra_radios``: more list items, indented two spaces.
    nodes: FieldNode, ScenarioNode or :class:`NodeEntry`; named by ``name`` unless a node has its own name;
        ``interval_s`` (s) and ``unauthenticated`` (policy for frames without MIC; None: the config's default,
        ``reject``) unless a node has its own.
    health_s: ``health.interval_s`` in s (None: no ``health:`` section, the default interval).
    rules / gpio / receipts: the sections' bodies, indented two spaces (empty: section left out).
    extra: raw top-level YAML appended at the end.
    """
    window_ms = "" if commit_window_ms is None else f"  commit_window_ms: {commit_window_ms}\n"
    mqtt = f"  host: 127.0.0.1\n  port: {mqtt_port}\n"
    if topic_prefix is not None:
        mqtt += f"  topic_prefix: {topic_prefix}\n"
    if reconnect_s is not None:
        mqtt += f"  reconnect_min_s: {reconnect_s[0]}\n  reconnect_max_s: {reconnect_s[1]}\n"
    if batch is not None:
        mqtt += f"  batch_max_readings: {batch}\n"
    if window is not None:
        mqtt += f"  inflight_window: {window}\n"
    entries = [_entry(n, name, interval_s, unauthenticated) for n in nodes]
    sections = [("rules", rules), ("gpio", gpio), ("receipts", receipts)]
    return (
        f"gateway:\n  id: {gateway}\n  site: {site}\n"
        f"journal:\n  path: {journal}\n  quota_mb: {quota_mb}\n{window_ms}"
        f"mqtt:\n{mqtt}{_block(extra_mqtt)}"
        f"radios:\n  - name: {radio}\n    driver: {driver}\n    port: {port}\n{_block(extra_radios)}"
        + ("nodes:\n" + "".join(_node_yaml(e) for e in entries) if entries else "nodes: []\n")
        + (f"health:\n  interval_s: {health_s}\n" if health_s is not None else "")
        + "".join(f"{key}:\n{_block(body)}" for key, body in sections if body)
        + _block(extra)
    )


def _flow(value: Any) -> str:
    """A YAML flow scalar, list or mapping (``[]``, ``{trap: 2.2}``) of a plain Python value."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    return str(value)


def river(node: str = "00000301", stages_cm: dict[str, float] | None = None, **settings: Any) -> str:
    """One ``rules.rivers`` item for :func:`rules_yaml`: the gauge ``node`` (8 hex digits), its stages in cm
    (default :data:`STAGES_CM`) and more of the item's keys (``hysteresis_cm=5``)."""
    item = f'    - node: "{node}"\n      stages_cm: {_flow(stages_cm or STAGES_CM)}\n'
    return item + "".join(f"      {k}: {_flow(v)}\n" for k, v in settings.items())


def rules_yaml(*rivers: str, **settings: Any) -> str:
    """The body of ``rules:``: the :func:`river` items given, then ``settings`` as keys (``repeat_s=2``,
    ``silence_kinds=[]``, ``battery_low_v_by_kind={"trap": 2.2}``)."""
    body = "  rivers:\n" + "".join(rivers) if rivers else ""
    return body + "".join(f"  {k}: {_flow(v)}\n" for k, v in settings.items())


def mock_gpio(*, siren: bool = True, siren_off_s: float | None = 0) -> str:
    """The body of ``gpio:`` on gpiozero's MockFactory: the status lamp on :data:`LAMP_PIN` and, when ``siren``, the
    siren on :data:`SIREN_PIN` (``siren_off_s``: its ``off_s`` in s, None for the config's default)."""
    body = f"  pin_factory: mock\n  status_lamp:\n    pin: {LAMP_PIN}\n"
    if siren:
        body += f"  siren:\n    pin: {SIREN_PIN}\n" + ("" if siren_off_s is None else f"    off_s: {siren_off_s}\n")
    return body
