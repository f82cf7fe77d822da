"""The Grafana expander used by the dashboard tests: intervals, $timeFilter, template variables, rule evaluation.

The expected strings are what Grafana 10/11 sends to InfluxDB for the same input (rangeutil.roundInterval,
gtime.FormatInterval, templateSrv's regex format, pkg/tsdb/influxdb/models/query.go).
"""

from __future__ import annotations

import math

import pytest

from tests.backend.grafana_expand import (
    TimeRange,
    calculate_interval,
    evaluate_rule,
    expand_influxql,
    format_interval,
    interval_to_ms,
    iter_panels,
    panel_interval_ms,
    regex_escape,
    replace_variables,
    resolve_variables,
    round_interval,
)

NOW_MS = 1_764_130_037_123


@pytest.mark.parametrize(("raw_ms", "rounded"), [
    (5, 1), (12, 10), (400, 500), (1499, 1000), (11_250, 10_000), (44_999, 30_000), (45_000, 60_000),
    (200_000, 120_000), (3_000_000, 3_600_000), (100_000_000, 86_400_000), (5_000_000_000, 31_536_000_000),
])
def test_round_interval_matches_grafana(raw_ms: float, rounded: int) -> None:
    assert round_interval(raw_ms) == rounded


@pytest.mark.parametrize(("ms", "text"), [
    (1, "1ms"), (500, "500ms"), (1000, "1s"), (10_000, "10s"), (60_000, "1m"), (90_000, "1m"), (600_000, "10m"),
    (3_600_000, "1h"), (86_400_000, "1d"), (604_800_000, "7d"), (31_536_000_000, "1y"), (0, "1ms"),
])
def test_format_interval_like_the_server(ms: int, text: str) -> None:
    assert format_interval(ms) == text


def test_interval_strings() -> None:
    assert interval_to_ms("10s") == 10_000
    assert interval_to_ms(">5m") == 300_000
    assert interval_to_ms("30") == 30_000
    with pytest.raises(ValueError):
        interval_to_ms("10 parsecs")


def test_calculate_interval_respects_the_low_limit() -> None:
    six_hours = TimeRange(NOW_MS - 6 * 3_600_000, NOW_MS)
    # 21 600 000 ms / 1920 points = 11 250 ms -> 10 s
    assert calculate_interval(six_hours, 1920, None) == 10_000
    assert calculate_interval(six_hours, 1920, "1m") == 60_000
    assert calculate_interval(six_hours, 100, "1s") == 300_000  # 216 s rounds to 5 m


def test_relative_time_range() -> None:
    tr = TimeRange.relative("now-6h", "now", NOW_MS)
    assert tr == TimeRange(NOW_MS - 21_600_000, NOW_MS)
    assert TimeRange.relative("now-7d", "now", NOW_MS).from_ms == NOW_MS - 7 * 86_400_000
    with pytest.raises(ValueError):
        TimeRange.relative("yesterday", "now", NOW_MS)


def test_panel_interval_uses_width_and_min_interval() -> None:
    day = TimeRange(NOW_MS - 86_400_000, NOW_MS)
    half_width = {"gridPos": {"w": 12}}
    # 86 400 000 / 960 px = 90 000 ms -> 2 m (>= 1.5 m)
    assert panel_interval_ms(half_width, day, "10s") == 120_000
    assert panel_interval_ms({**half_width, "interval": "10m"}, day, "10s") == 600_000
    assert panel_interval_ms({**half_width, "maxDataPoints": 24}, day, None) == 3_600_000


def test_regex_escape() -> None:
    assert regex_escape("gw-okutama-01") == "gw-okutama-01"
    assert regex_escape("a.b/c(d)") == r"a\.b\/c\(d\)"


def test_replace_variables_all_syntaxes_and_formats() -> None:
    variables = {"site": ["kiso", "okutama"], "gauge": ["river.1"], "stage": ["250"]}
    q = 'WHERE "site" =~ /^$site$/ AND "name" =~ /^${gauge}$/ AND x > ${stage:raw} AND y =~ /[[site]]/'
    assert replace_variables(q, variables) == (
        'WHERE "site" =~ /^(kiso|okutama)$/ AND "name" =~ /^river\\.1$/ AND x > 250 AND y =~ /(kiso|okutama)/')
    # Grafana's default InfluxQL format escapes even a single value: a decimal textbox needs :raw.
    assert replace_variables("x > $stage", {"stage": ["2.5"]}) == "x > 2\\.5"
    assert replace_variables("x > ${stage:raw}", {"stage": ["2.5"]}) == "x > 2.5"
    # Built-ins and unknown names are left for the server.
    assert replace_variables("$timeFilter $__interval $nosuch", variables) == "$timeFilter $__interval $nosuch"


def test_expand_influxql_end_to_end() -> None:
    tr = TimeRange(1_000_000, 2_000_000)
    q = ('SELECT mean("level_cm") FROM "water_level" WHERE "site" =~ /^$site$/ AND $timeFilter '
         'GROUP BY time($__interval), "name" fill(none) -- $__interval_ms $interval')
    out = expand_influxql(q, time_range=tr, interval_ms=60_000, variables={"site": ["kiso"]})
    assert out == ('SELECT mean("level_cm") FROM "water_level" WHERE "site" =~ /^kiso$/ AND '
                   'time >= 1000000ms and time <= 2000000ms GROUP BY time(1m), "name" fill(none) -- 60000 1m')


def test_iter_panels_includes_panels_inside_collapsed_rows() -> None:
    dash = {"panels": [{"id": 1, "type": "stat"},
                       {"id": 2, "type": "row", "collapsed": True, "panels": [{"id": 3, "type": "table"}]}]}
    assert [p["id"] for p in iter_panels(dash)] == [1, 2, 3]


def test_resolve_variables_in_order_with_all_and_textbox() -> None:
    seen: list[str] = []

    def run(q: str) -> list[dict]:
        seen.append(q)
        if 'KEY = "site"' in q:
            return [{"name": "m1", "tags": {}, "columns": ["key", "value"], "values": [["site", "tanba"]]},
                    {"name": "m2", "tags": {}, "columns": ["key", "value"],
                     "values": [["site", "kiso"], ["site", "tanba"]]}]
        return [{"name": "trap", "tags": {}, "columns": ["key", "value"], "values": [["node", "7a000001"]]}]

    dash = {"templating": {"list": [
        {"name": "site", "type": "query", "query": 'SHOW TAG VALUES WITH KEY = "site"', "includeAll": True,
         "multi": True, "sort": 1, "current": {"value": ["$__all"]}},
        {"name": "trap", "type": "query",
         "query": 'SHOW TAG VALUES FROM "trap" WITH KEY = "node" WHERE "site" =~ /^$site$/', "includeAll": True,
         "current": {"value": ["$__all"]}},
        {"name": "silent_h", "type": "textbox", "query": "48", "current": {"value": "48"}},
    ]}}
    values = resolve_variables(dash, run)
    assert values == {"site": ["kiso", "tanba"], "trap": ["7a000001"], "silent_h": ["48"]}
    assert seen[1].endswith('WHERE "site" =~ /^(kiso|tanba)$/')


def test_resolve_variables_refuses_an_empty_query_variable() -> None:
    dash = {"templating": {"list": [{"name": "site", "type": "query", "query": "SHOW TAG VALUES"}]}}
    with pytest.raises(ValueError, match="no values"):
        resolve_variables(dash, lambda q: [])


def _rule(expression: str, query: str = "SELECT last(x) FROM m WHERE $timeFilter GROUP BY node") -> dict:
    return {"condition": "C", "data": [
        {"refId": "A", "datasourceUid": "ds", "relativeTimeRange": {"from": 600, "to": 0},
         "model": {"rawQuery": True, "query": query}},
        {"refId": "B", "datasourceUid": "__expr__",
         "model": {"type": "reduce", "expression": "A", "reducer": "last", "settings": {"mode": "dropNN"}}},
        {"refId": "C", "datasourceUid": "__expr__", "model": {"type": "math", "expression": expression}},
    ]}


def test_evaluate_rule_fires_per_series() -> None:
    queries: list[str] = []

    def run(q: str) -> list[dict]:
        queries.append(q)
        return [{"name": "m", "tags": {"node": "a"}, "columns": ["time", "last"], "values": [[1, 240.0], [2, 260.0]]},
                {"name": "m", "tags": {"node": "b"}, "columns": ["time", "last"], "values": [[1, 100.0], [2, None]]},
                {"name": "m", "tags": {"node": "c"}, "columns": ["time", "last"], "values": [[1, 250.0]]}]

    data, firing = evaluate_rule(_rule("$B >= 250"), run, NOW_MS)
    assert sorted(s.labels["node"] for s in firing) == ["a", "c"]
    assert queries == [f"SELECT last(x) FROM m WHERE time >= {NOW_MS - 600_000}ms and time <= {NOW_MS}ms "
                       "GROUP BY node"]
    # dropNN: node b's trailing null is skipped, so its last value is 100
    assert {s.labels["node"]: s.points[-1][1] for s in data["B"]} == {"a": 260.0, "b": 100.0, "c": 250.0}
    _, firing = evaluate_rule(_rule("$B == 0"), run, NOW_MS)
    assert firing == []


def test_evaluate_rule_strict_reduce_and_unknown_expressions() -> None:
    def run(q: str) -> list[dict]:
        return [{"name": "m", "tags": {}, "columns": ["time", "v"], "values": [[1, 1.0], [2, None]]}]

    rule = _rule("$B >= 1")
    rule["data"][1]["model"]["settings"] = {"mode": "strict"}
    data, firing = evaluate_rule(rule, run, NOW_MS)
    assert math.isnan(data["B"][0].points[-1][1]) and firing == []
    with pytest.raises(ValueError, match="only"):
        evaluate_rule(_rule("$B > 1 && $B < 5"), run, NOW_MS)
