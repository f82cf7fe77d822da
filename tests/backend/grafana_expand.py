"""Turn Grafana's InfluxQL queries into the exact text Grafana sends to InfluxDB, and evaluate alert rules.

Grafana (10/11, the InfluxDB datasource in backend mode) expands a raw InfluxQL query in two steps:

1. the browser replaces dashboard template variables (``templateSrv.replace(query, vars, 'regex')``): ``$var``,
   ``${var}``, ``[[var]]`` and ``${var:format}``; the default format for InfluxQL is ``regex`` (values escaped,
   several values become ``(a|b)``); unknown names such as ``$timeFilter`` or ``$__interval`` are left alone;
2. the server (``pkg/tsdb/influxdb/models/query.go``) replaces ``$timeFilter`` with
   ``time >= <from>ms and time <= <to>ms``, then ``$interval``, ``$__interval_ms`` and ``$__interval`` from the
   query's interval.

The interval comes from the browser: ``roundInterval((to - from) / maxDataPoints)``, raised to the panel's "Min
interval" (or the datasource's ``timeInterval``), where maxDataPoints is the panel's ``maxDataPoints`` or its
width in pixels. The server formats it with ``gtime.FormatInterval`` (largest whole unit: ``1m``, ``10s``, ``1d``).

Alert rules have no template variables; ``$timeFilter`` comes from each query's ``relativeTimeRange``. The small
evaluator here implements the server-side expressions the provisioned rules use (reduce, math comparisons,
threshold), so a test can check which series a rule fires for.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Series",
    "TimeRange",
    "calculate_interval",
    "evaluate_rule",
    "expand_influxql",
    "format_interval",
    "interval_to_ms",
    "iter_panels",
    "panel_interval_ms",
    "regex_escape",
    "replace_variables",
    "resolve_variables",
    "round_interval",
]

#: Width of a dashboard in pixels used to derive a panel's maxDataPoints (24 grid columns on a 1920 px screen).
SCREEN_WIDTH_PX = 1920


@dataclass(frozen=True)
class TimeRange:
    """An absolute time range in ms since the epoch, as Grafana sends it with every query."""

    from_ms: int
    to_ms: int

    @classmethod
    def relative(cls, raw_from: str, raw_to: str, now_ms: int) -> TimeRange:
        """Resolve ``now-6h`` / ``now`` style bounds (the forms a dashboard's ``time`` uses) against ``now_ms``."""
        return cls(_relative_ms(raw_from, now_ms), _relative_ms(raw_to, now_ms))


def _relative_ms(text: str, now_ms: int) -> int:
    text = text.strip()
    if text == "now":
        return now_ms
    m = re.fullmatch(r"now-(\d+)(ms|[smhdwMy])", text)
    if not m:
        raise ValueError(f"unsupported time expression {text!r} (expected now or now-<n><unit>)")
    return now_ms - int(m.group(1)) * _UNIT_MS[m.group(2)]


_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000,
            "M": 2_592_000_000, "y": 31_536_000_000}


def interval_to_ms(text: str) -> int:
    """``10s`` -> 10000, like Grafana's ``rangeutil.intervalToMs`` (a bare number means seconds)."""
    text = text.strip().lstrip(">")
    if re.fullmatch(r"\d+", text):
        return int(text) * 1000
    m = re.fullmatch(r"(\d+)(ms|[smhdwMy])", text)
    if not m:
        raise ValueError(f"invalid interval {text!r}: a number and one of ms, s, m, h, d, w, M, y")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


# Grafana's rangeutil.roundInterval: (upper bound exclusive, rounded value), both in ms.
_ROUNDING = (
    (10, 1), (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000), (3500, 2000),
    (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000), (90000, 60000),
    (210000, 120000), (450000, 300000), (750000, 600000), (1050000, 900000), (1500000, 1200000),
    (2700000, 1800000), (5400000, 3600000), (9000000, 7200000), (16200000, 10800000), (32400000, 21600000),
    (86400000, 43200000), (604800000, 86400000), (1814400000, 604800000), (3628800000, 2592000000),
)


def round_interval(interval_ms: float) -> int:
    """Round a raw interval to the "nice" value Grafana uses (``rangeutil.roundInterval``)."""
    for bound, value in _ROUNDING:
        if interval_ms < bound:
            return value
    return 31536000000


def calculate_interval(tr: TimeRange, max_data_points: int, low_limit: str | None) -> int:
    """The query interval in ms (``rangeutil.calculateInterval``): rounded range / points, at least the limit."""
    interval = round_interval((tr.to_ms - tr.from_ms) / max_data_points)
    if low_limit:
        interval = max(interval, interval_to_ms(low_limit))
    return interval


def format_interval(interval_ms: int) -> str:
    """The interval as the server writes it into the query (grafana-plugin-sdk-go ``gtime.FormatInterval``)."""
    for unit, ms in (("y", 31_536_000_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000),
                     ("ms", 1)):
        if interval_ms >= ms:
            return f"{interval_ms // ms}{unit}"
    return "1ms"


def regex_escape(value: str) -> str:
    """Grafana's ``kbn.regexEscape``: backslash before regex metacharacters and ``/``."""
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m.group(0), value)


def _format(values: Sequence[str], fmt: str) -> str:
    if fmt == "regex":
        escaped = [regex_escape(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt == "raw":
        return ",".join(values)
    if fmt == "pipe":
        return "|".join(values)
    if fmt == "csv":
        return ",".join(values)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in values)
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in values)
    raise ValueError(f"variable format {fmt!r} is not supported by this expander")


# templateSrv's variable pattern: $name | [[name(:format)]] | ${name(.path)(:format)}
_VAR_RE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")


def replace_variables(text: str, variables: Mapping[str, Sequence[str]], default_format: str = "regex") -> str:
    """Replace template variables like Grafana's ``templateSrv.replace(text, vars, default_format)``.

    Args:
        text: the query text.
        variables: variable name -> its current values (one value for a single-value variable).
        default_format: the format for references without an explicit ``:format`` (``regex`` for InfluxQL).

    Names that are not variables (``$timeFilter``, ``$__interval``) stay as they are, as in Grafana.
    """

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6) or default_format
        if name not in variables:
            return m.group(0)
        values = list(variables[name])
        if not values:
            raise ValueError(f"variable ${name} has no value")
        return _format(values, fmt)

    return _VAR_RE.sub(sub, text)


def expand_influxql(query: str, *, time_range: TimeRange, interval_ms: int,
                    variables: Mapping[str, Sequence[str]] | None = None) -> str:
    """The text Grafana sends to InfluxDB for a raw InfluxQL query (see the module docstring for the steps)."""
    text = replace_variables(query, variables or {}, "regex")
    text = text.replace("$timeFilter", f"time >= {time_range.from_ms}ms and time <= {time_range.to_ms}ms")
    text = text.replace("$interval", format_interval(interval_ms))
    text = text.replace("$__interval_ms", str(interval_ms))
    text = text.replace("$__interval", format_interval(interval_ms))
    return text


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, rows included, and the panels folded inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def panel_interval_ms(panel: Mapping[str, Any], time_range: TimeRange, ds_time_interval: str | None) -> int:
    """The ``$__interval`` of a panel: maxDataPoints (or its width in px) and its min interval (or the DS's)."""
    width_px = max(1, panel.get("gridPos", {}).get("w", 24) * SCREEN_WIDTH_PX // 24)
    max_points = int(panel.get("maxDataPoints") or width_px)
    return calculate_interval(time_range, max_points, panel.get("interval") or ds_time_interval)


RunQuery = Callable[[str], list[dict[str, Any]]]
"""Runs an InfluxQL statement; returns series dicts ``{"name", "tags", "columns", "values"}``."""


def resolve_variables(dashboard: Mapping[str, Any], run: RunQuery) -> dict[str, list[str]]:
    """The current values of a dashboard's variables, resolved in order like Grafana does on load.

    Query variables run their query (after replacing the variables before them) and take the values of the
    ``value`` column (``SHOW TAG VALUES``) or the first column; with "All" selected (``includeAll``) the variable
    stands for every option. Custom, textbox and constant variables take their current (or default) value.

    Raises:
        ValueError: a query variable found no values, or a variable type is not handled.
    """
    out: dict[str, list[str]] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        kind = var.get("type")
        name = var["name"]
        current = var.get("current", {}).get("value")
        if kind == "query":
            query = var["query"] if isinstance(var["query"], str) else var["query"]["query"]
            options: list[str] = []
            for series in run(replace_variables(query, out, "regex")):
                col = series["columns"].index("value") if "value" in series["columns"] else 0
                options.extend(str(row[col]) for row in series["values"])
            if var.get("regex"):
                pattern = re.compile(var["regex"].strip("/"))
                options = [o for o in options if pattern.search(o)]
            options = sorted(set(options)) if var.get("sort", 0) else list(dict.fromkeys(options))
            if not options:
                raise ValueError(f"variable ${name}: query {query!r} returned no values")
            if var.get("includeAll") and (current in (None, "$__all", ["$__all"])):
                out[name] = [var["allValue"]] if var.get("allValue") else options
            elif current and current not in ("$__all", ["$__all"]):
                wanted = current if isinstance(current, list) else [current]
                out[name] = [v for v in wanted if v in options] or options[:1]
            else:
                out[name] = options[:1]
        elif kind in ("textbox", "constant"):
            out[name] = [str(current if current is not None else var.get("query", ""))]
        elif kind == "custom":
            options = [o.strip() for o in str(var.get("query", "")).split(",") if o.strip()]
            value = current if current is not None else options[:1]
            out[name] = value if isinstance(value, list) else [value]
        else:
            raise ValueError(f"variable ${name}: type {kind!r} is not handled by this expander")
    return out


# ---- alert rules (Grafana unified alerting, server-side expressions) ----------------------------------------


@dataclass
class Series:
    """One result series: labels (InfluxDB tags) and (time, value) points."""

    labels: dict[str, str]
    points: list[tuple[int, float | None]] = field(default_factory=list)


def _series_from_influx(result: list[dict[str, Any]]) -> list[Series]:
    """InfluxQL series to Grafana frames: one series per (tag set, value column), like the InfluxDB datasource."""
    out = []
    for s in result:
        for i, col in enumerate(s["columns"]):
            if col == "time":
                continue
            labels = dict(s.get("tags") or {})
            out.append(Series(labels, [(row[0], None if row[i] is None else float(row[i])) for row in s["values"]]))
    return out


def _reduce(points: list[tuple[int, float | None]], reducer: str, mode: str, replace_with: float) -> float:
    values = [v for _, v in points]
    if mode == "dropNN":
        values = [v for v in values if v is not None and not math.isnan(v)]
    elif mode == "replaceNN":
        values = [replace_with if v is None or math.isnan(v) else v for v in values]
    if reducer == "count":
        return float(len(values))
    if not values:
        return math.nan
    if any(v is None for v in values):
        return math.nan  # strict mode: a null anywhere makes the result NaN
    nums = [float(v) for v in values]  # type: ignore[arg-type]
    reducers: dict[str, Callable[[list[float]], float]] = {
        "last": lambda x: x[-1], "max": max, "min": min, "sum": sum, "mean": lambda x: sum(x) / len(x),
    }
    if reducer not in reducers:
        raise ValueError(f"reducer {reducer!r} is not handled by this evaluator")
    return reducers[reducer](nums)


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}
_MATH_RE = re.compile(r"\s*\$\{?([A-Za-z]\w*)\}?\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?)\s*")


def _math(expression: str, data: Mapping[str, list[Series]]) -> list[Series]:
    m = _MATH_RE.fullmatch(expression)
    if not m:
        raise ValueError(f"math expression {expression!r}: only '$REF <op> number' is handled by this evaluator")
    ref, op, number = m.group(1), m.group(2), float(m.group(3))
    out = []
    for s in data[ref]:
        t, v = s.points[-1]
        result = math.nan if v is None or math.isnan(v) else float(_COMPARE[op](v, number))
        out.append(Series(s.labels, [(t, result)]))
    return out


def _threshold(model: Mapping[str, Any], data: Mapping[str, list[Series]]) -> list[Series]:
    evaluator = model["conditions"][0]["evaluator"]
    kind, params = evaluator["type"], [float(p) for p in evaluator["params"]]
    tests: dict[str, Callable[[float], bool]] = {
        "gt": lambda v: v > params[0], "lt": lambda v: v < params[0],
        "within_range": lambda v: params[0] < v < params[1], "outside_range": lambda v: v < params[0] or v > params[1],
    }
    out = []
    for s in data[model["expression"]]:
        t, v = s.points[-1]
        out.append(Series(s.labels, [(t, math.nan if v is None or math.isnan(v) else float(tests[kind](v)))]))
    return out


def evaluate_rule(rule: Mapping[str, Any], run: RunQuery, now_ms: int) -> tuple[dict[str, list[Series]], list[Series]]:
    """Evaluate a provisioned alert rule like Grafana's scheduler at ``now_ms``.

    Returns:
        (results by refId, the series of the condition whose value is non-zero: the firing alert instances).

    Raises:
        ValueError: an expression or query type this evaluator does not implement (so a test fails loudly
            rather than passing a rule it cannot judge).
    """
    data: dict[str, list[Series]] = {}
    for step in rule["data"]:
        ref, model = step["refId"], step["model"]
        if step["datasourceUid"] == "__expr__":
            kind = model["type"]
            if kind == "reduce":
                settings = model.get("settings") or {}
                mode = settings.get("mode", "strict") or "strict"
                data[ref] = [Series(s.labels, [(s.points[-1][0] if s.points else now_ms,
                                                _reduce(s.points, model["reducer"], mode,
                                                        float(settings.get("replaceWithValue", 0))))])
                             for s in data[model["expression"]]]
            elif kind == "math":
                data[ref] = _math(model["expression"], data)
            elif kind == "threshold":
                data[ref] = _threshold(model, data)
            else:
                raise ValueError(f"expression type {kind!r} is not handled by this evaluator")
        else:
            if not model.get("rawQuery"):
                raise ValueError(f"query {ref}: only raw InfluxQL queries are handled")
            rel = step["relativeTimeRange"]
            tr = TimeRange(now_ms - rel["from"] * 1000, now_ms - rel["to"] * 1000)
            text = expand_influxql(model["query"], time_range=tr, interval_ms=int(model.get("intervalMs", 1000)))
            data[ref] = _series_from_influx(run(text))
    firing = [s for s in data[rule["condition"]]
              if s.points and s.points[-1][1] is not None and not math.isnan(s.points[-1][1])
              and s.points[-1][1] != 0]
    return data, firing
