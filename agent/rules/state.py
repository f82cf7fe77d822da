"""The rule engine's state: what it keeps per node, the rate-window histories, and its snapshot format
(``denen.rules/1``), parsed and checked before the engine takes any of it."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.rules.alert import Alert, _is_int, _number

SNAPSHOT_SCHEMA = "denen.rules/1"

# Samples kept per node for a rate window. Nodes send a few frames a minute at most (airtime), so this covers
# hours; a longer window with a chattier node keeps the newest samples and the rate span shrinks accordingly.
_HISTORY_MAX = 1024


@dataclass(slots=True)
class _NodeState:
    silence_base_us: int  # last heard (or engine start), moved by downtime and clock steps; silence counts from it
    last_ts_us: int | None = None  # ts_us of the newest accepted reading (ordering)
    last_fcnt: int | None = None  # fcnt of the newest accepted reading (ordering)


def _rate_reference(history: deque[tuple[Any, ...]], window_us: int) -> tuple[Any, ...] | None:
    """The sample a rate is measured against (package docstring: rate rules), or None when there is none yet.

    ``history`` is trimmed so that at most its first sample lies before the window.
    """
    if len(history) < 2:
        return None
    now_ts = history[-1][0]
    first = history[0]
    if now_ts - first[0] > window_us:
        anchor, inside = first, history[1]
    else:
        anchor, inside = None, first
    if inside is not history[-1] and now_ts - inside[0] >= window_us / 2:
        return inside
    return anchor


def _push_sample(history: deque[tuple[Any, ...]], sample: tuple[Any, ...], window_us: int) -> None:
    history.append(sample)
    cutoff = sample[0] - window_us
    # Keep one sample before the window (the anchor): drop the oldest while the next one is also outside.
    while len(history) >= 2 and history[1][0] <= cutoff:
        history.popleft()


@dataclass(frozen=True, slots=True)
class _Snapshot:
    taken_us: int
    seq: int
    stale: int
    active: list[Alert]
    nodes: dict[str, tuple[int, int | None, int | None]]
    river_history: dict[str, list[list[float]]]
    slope_history: dict[str, list[list[float]]]


def parse_snapshot(snap: Mapping[str, Any]) -> _Snapshot:
    if not isinstance(snap, Mapping) or snap.get("schema") != SNAPSHOT_SCHEMA:
        raise ValueError(f"rules snapshot: not a {SNAPSHOT_SCHEMA} snapshot")

    def int_of(value: object, what: str, *, optional: bool = False) -> Any:
        if value is None and optional:
            return None
        if not _is_int(value):
            raise ValueError(f"rules snapshot: {what} must be an integer")
        return value

    taken = int_of(snap.get("taken_us"), "taken_us")
    seq = int_of(snap.get("seq"), "seq")
    stale = int_of(snap.get("stale", 0), "stale")
    raw_active = snap.get("active")
    if not isinstance(raw_active, list):
        raise ValueError("rules snapshot: active must be a list")
    active = [Alert.from_dict(a) for a in raw_active]
    raw_nodes = snap.get("nodes")
    if not isinstance(raw_nodes, Mapping):
        raise ValueError("rules snapshot: nodes must be an object")
    nodes: dict[str, tuple[int, int | None, int | None]] = {}
    for node, st in raw_nodes.items():
        if not isinstance(st, Mapping):
            raise ValueError(f"rules snapshot: nodes.{node} must be an object")
        nodes[str(node)] = (
            int_of(st.get("silence_base_us"), f"nodes.{node}.silence_base_us"),
            int_of(st.get("last_ts_us"), f"nodes.{node}.last_ts_us", optional=True),
            int_of(st.get("last_fcnt"), f"nodes.{node}.last_fcnt", optional=True),
        )
    histories: list[dict[str, list[list[float]]]] = []
    for field, width in (("river_history", 2), ("slope_history", 3)):
        raw = snap.get(field, {})
        if not isinstance(raw, Mapping):
            raise ValueError(f"rules snapshot: {field} must be an object")
        parsed: dict[str, list[list[float]]] = {}
        for node, samples in raw.items():
            if not isinstance(samples, list) or not all(
                isinstance(s, list) and len(s) == width and _is_int(s[0])
                and all(_number(v) is not None for v in s[1:]) for s in samples
            ):
                raise ValueError(f"rules snapshot: {field}.{node} must be a list of [ts_us, value...] samples")
            parsed[str(node)] = samples
        histories.append(parsed)
    return _Snapshot(taken, seq, stale, active, nodes, histories[0], histories[1])

