"""Grafana provisioning (deploy/backend/grafana/) against a real InfluxDB 1.6.7 loaded with a simulated field.

* The datasource is InfluxQL, and every dashboard is valid JSON whose datasource references all resolve to it.
* Every panel query, expanded the way Grafana expands it (tests/backend/grafana_expand.py), returns data from
  the scenario of tests/support/backend_scenario.py, written as line protocol exactly as the README's InfluxDB schema
  says (and, for the alert loop's gateway_state, command_result and alert_ack, as the bridge and the console write
  them); the stat panels that count SOS calls, fired traps, gauges above 避難判断水位, offline gateways, sounding
  sirens, unacknowledged alerts and held readings give the scenario's numbers, and the fleet dashboard's tables
  show which siren sounds for which alert, the open alerts, and who acknowledged which alert after how long.
* Every alert rule runs its queries and expressions and fires for exactly the series the scenario says.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from tests.backend.grafana_expand import (
    TimeRange,
    evaluate_rule,
    expand_influxql,
    iter_panels,
    panel_interval_ms,
    resolve_variables,
)
from tests.support.backend_scenario import STAGES_CM, Scenario, build
from tests.support.influx import InfluxDB1, ServerMissing
from tests.support.paths import BACKEND, REPO

GRAFANA = BACKEND / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULES_FILE = GRAFANA / "provisioning" / "alerting" / "denen-rules.yaml"
DB = "denen"


def _yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text(encoding="utf-8"))


def _datasource() -> dict[str, Any]:
    files = sorted((GRAFANA / "provisioning" / "datasources").glob("*.yaml"))
    sources = [ds for f in files for ds in _yaml(f)["datasources"]]
    assert len(sources) == 1, f"expected one provisioned datasource, found {len(sources)}"
    return sources[0]


DS = _datasource()
DS_UID = DS["uid"]
DS_INTERVAL = DS.get("jsonData", {}).get("timeInterval")


def _dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel_id: int
    title: str
    ref: str


def _panel_queries() -> list[PanelQuery]:
    out = []
    for path in DASHBOARDS:
        for panel in iter_panels(_dashboard(path)):
            for target in panel.get("targets", []):
                out.append(PanelQuery(path.name, panel["id"], panel["title"], target["refId"]))
    return out


PANEL_QUERIES = _panel_queries()


# ---- the database with the scenario ---------------------------------------------------------------------------


@dataclass
class Loaded:
    db: InfluxDB1
    scenario: Scenario
    now_ms: int
    _variables: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def run(self, q: str) -> list[dict[str, Any]]:
        return self.db.query(q, DB)

    def variables(self, dashboard: str) -> dict[str, list[str]]:
        """The dashboard's variables as Grafana resolves them on load (cached: the data does not change)."""
        if dashboard not in self._variables:
            self._variables[dashboard] = resolve_variables(_dashboard(GRAFANA / "dashboards" / dashboard), self.run)
        return self._variables[dashboard]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    """InfluxDB 1.6.7 on a free port with the scenario ending now. A missing influxd fails the tests."""
    try:
        db = InfluxDB1(tmp_path_factory.mktemp("influx"))
    except ServerMissing as exc:
        pytest.fail(str(exc))
    db.start()
    try:
        db.create_database(DB)
        now_us = time.time_ns() // 1000
        scenario = build(now_us)
        for i in range(0, len(scenario.lines), 5000):
            status, body = db.write(scenario.lines[i:i + 5000], DB, precision="u")
            assert status == 204, f"InfluxDB refused the scenario: {status} {body!r}"
        yield Loaded(db, scenario, now_us // 1000)
    finally:
        db.stop()


# ---- static checks ----------------------------------------------------------------------------------------------


def test_datasource_is_influxql() -> None:
    """InfluxQL over the v1 query API: the one language InfluxDB 1.x, 2.x (with DBRP) and 3.x all answer."""
    assert DS["type"] == "influxdb"
    assert DS["access"] == "proxy"
    assert DS["uid"] == "denen-influxdb"
    assert DS["jsonData"].get("version", "InfluxQL") == "InfluxQL"  # not Flux, not SQL
    assert DS["jsonData"]["dbName"] == "denen"
    assert DS["user"] and DS["secureJsonData"]["password"].startswith("${")  # credentials from the environment


#: The alert loop's measurements (tag keys; field -> InfluxDB type), as the bridge writes gateway_state and
#: command_result (agent/bridge/lineproto.py) and the console writes alert_ack.
ALERT_LOOP_SCHEMA: dict[str, tuple[set[str], dict[str, str]]] = {
    "gateway_state": ({"gateway", "site"}, {
        "siren_on": "float", "siren_why": "string", "siren_alert": "string", "lamp": "string", "held_active": "float",
        "held_count": "float", "alerts_open": "float", "alerts_unacknowledged": "float"}),
    "command_result": ({"gateway", "site", "command", "outcome"}, {
        "target": "string", "by": "string", "request_id": "string", "via": "string"}),
    "alert_ack": ({"gateway", "site", "type", "node", "action"}, {
        "by": "string", "from_ip": "string", "request_id": "string", "alert_id": "string", "since_us": "float",
        "ack_delay_s": "float", "result": "string"}),
    # The bridge's report on itself (agent/bridge/health.py): one measurement, a tag per kind of point.
    "bridge_health": ({"client_id", "reason", "gateway"}, {
        "readings": "float", "lines": "float", "messages": "float", "dead_letters": "float",
        "readings_per_min": "float", "broker_connected": "float", "db_write_ok": "float", "interval_s": "float",
        "health_dropped": "float", "lag_p50_ms": "float", "lag_p99_ms": "float", "lag_max_ms": "float",
        "reason_dead_letters": "float", "gateway_messages": "float", "gateway_readings": "float"}),
}


def test_scenario_follows_the_readme_schema(loaded: Loaded) -> None:
    """The generator writes what the README documents: measurements, tags, float fields, µs timestamps."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## InfluxDB schema"):]
    section = section[:section.index("\n## ", 5)]
    documented_values = set(re.findall(r"`([a-z_]+)`", readme[readme.index("### Values by kind"):
                                                               readme.index("### Status schema")]))
    measurements = {r["name"] for r in loaded.db.rows("SHOW MEASUREMENTS", DB)}
    assert measurements == {"sos", "trap", "water_level", "rain", "tilt", "weather", "heartbeat", "node_health",
                            "node_link", "gateway_health", "alert", "gateway_status"} | set(ALERT_LOOP_SCHEMA)
    for m, (tags, fields) in ALERT_LOOP_SCHEMA.items():
        assert {r["tagKey"] for r in loaded.db.rows(f'SHOW TAG KEYS FROM "{m}"', DB)} == tags, m
        found = {r["fieldKey"]: r["fieldType"] for r in loaded.db.rows(f'SHOW FIELD KEYS FROM "{m}"', DB)}
        assert found == fields, m
        row = next(line for line in section.splitlines() if line.startswith(f"| `{m}`"))
        missing = [k for k in (*tags, *fields) if f"`{k}`" not in row]
        assert not missing, f"the README's row of {m} does not name {missing}"
    for m in measurements - set(ALERT_LOOP_SCHEMA):
        assert f"`{m}`" in section, f"measurement {m} is not in the README's schema"
        tag_keys = {r["tagKey"] for r in loaded.db.rows(f'SHOW TAG KEYS FROM "{m}"', DB)}
        expected = ({"site", "gateway"} if m == "gateway_health"
                    else {"gateway"} if m == "gateway_status"
                    else {"site", "gateway", "node", "name", "type", "severity"} if m == "alert"
                    else {"site", "gateway", "node", "name", "kind"})
        assert tag_keys == expected, m
        for row in loaded.db.rows(f'SHOW FIELD KEYS FROM "{m}"', DB):
            if (m, row["fieldKey"]) in (("alert", "message"), ("gateway_status", "agent")):
                assert row["fieldType"] == "string"  # the README's string fields
                continue
            assert row["fieldType"] == "float", f"{m}.{row['fieldKey']} is {row['fieldType']}"
            extra = {"fcnt", "rssi", "snr", "auth_ok", "clock_ok", "battery_v", "online"}
            assert row["fieldKey"] in documented_values | extra, f"{m}.{row['fieldKey']} is not documented"
    # The README's example line loads as the same schema (and at µs precision).
    example = next(line for line in section.splitlines() if line.startswith("water_level,"))
    assert loaded.db.write([example], DB, precision="u")[0] == 204
    got = loaded.db.rows('SELECT level_cm FROM water_level WHERE "node" = \'00000301\'', DB)
    assert got[0]["time"] == int(example.rsplit(" ", 1)[1]) and got[0]["level_cm"] == 182.5


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_json_is_valid(path: Path) -> None:
    dash = _dashboard(path)
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    assert re.fullmatch(r"denen-[a-z]+", dash["uid"])
    assert "denen" in dash["tags"]
    assert "${DS_" not in path.read_text(encoding="utf-8"), "an exported __inputs placeholder was left in"
    # Times follow Grafana's default zone, which the compose stack sets to Asia/Tokyo (test_deploy checks it),
    # not the browser's: a laptop set to UTC still shows JST.
    assert dash["timezone"] == "", f"{path.name}: timezone {dash['timezone']!r}"
    panels = list(iter_panels(dash))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for p in panels:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        # Japanese title with the English alongside: "河川水位 River level".
        assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", p["title"]) and re.search(r"[A-Za-z]{3}", p["title"]), (
            p["title"])
        assert p.get("description"), f"panel {p['title']} has no description"
    for var in dash.get("templating", {}).get("list", []):
        if var.get("hide", 0) != 2:  # a variable shown on the dashboard is labelled in both languages too
            label = var["label"]
            assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", label) and re.search(r"[A-Za-z]{3}", label), label
    refs = list(_datasource_refs(dash))
    assert refs, "no datasource references at all"
    for where, ref in refs:
        assert ref == {"type": "influxdb", "uid": DS_UID}, f"{path.name}: {where} refers to {ref}"
    for p in panels:
        for t in p.get("targets", []):
            assert t.get("rawQuery") is True and t["query"].strip(), f"{p['title']} {t['refId']}: not a raw query"


def _datasource_refs(dash: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for p in iter_panels(dash):
        if "datasource" in p:
            yield f"panel {p['id']}", p["datasource"]
        for t in p.get("targets", []):
            yield f"panel {p['id']} target {t['refId']}", t.get("datasource")
    for v in dash.get("templating", {}).get("list", []):
        if v["type"] == "query":
            yield f"variable {v['name']}", v.get("datasource")
    for a in dash.get("annotations", {}).get("list", []):
        if not a.get("builtIn"):
            yield f"annotation {a.get('name')}", a.get("datasource")


def test_dashboard_uids_are_unique_and_provisioned_from_the_mounted_folder() -> None:
    uids = [_dashboard(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))
    assert {"denen-overview", "denen-sos", "denen-traps", "denen-river", "denen-fleet"} == set(uids)
    provider = _yaml(GRAFANA / "provisioning" / "dashboards" / "denen.yaml")["providers"][0]
    compose = _yaml(BACKEND / "docker-compose.yml")
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in mounts
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(provider["options"]["path"] + "/") and (GRAFANA / "dashboards" / Path(home).name).exists()


def test_geomap_gazetteer_is_served_and_matches_the_example_configs(tmp_path: Path) -> None:
    """The overview map places fixed nodes from public/maps/denen-nodes.json (made by make-gazetteer.py)."""
    overview = _dashboard(GRAFANA / "dashboards" / "overview.json")
    geomap = next(p for p in overview["panels"] if p["type"] == "geomap")
    paths = {layer["location"].get("gazetteer") for layer in geomap["options"]["layers"]} - {None}
    assert paths == {"public/maps/denen-nodes.json"}
    mounts = _yaml(BACKEND / "docker-compose.yml")["services"]["grafana"]["volumes"]
    assert "./grafana/maps/denen-nodes.json:/usr/share/grafana/public/maps/denen-nodes.json:ro" in mounts
    shipped = json.loads((GRAFANA / "maps" / "denen-nodes.json").read_text(encoding="utf-8"))
    for entry in shipped:  # Grafana's worldmap gazetteer format, keyed by the node id as readings carry it
        assert re.fullmatch(r"[0-9a-f]{8}", entry["key"]) and entry["name"]
        assert -90 <= entry["latitude"] <= 90 and -180 <= entry["longitude"] <= 180
    configs = [REPO / "config" / n for n in ("forest-sos.yaml", "trap-field.yaml", "river-station.yaml")]
    proc = subprocess.run([sys.executable, str(BACKEND / "make-gazetteer.py"), *map(str, configs)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    made = json.loads(proc.stdout)
    located = sum(1 for c in configs for n in (_yaml(c)["nodes"] or []) if n.get("location"))
    assert len(made) == located > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  - id: '12345678'\n    location: {lat: 95, lon: 10}\n")
    proc = subprocess.run([sys.executable, str(BACKEND / "make-gazetteer.py"), str(bad)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "outside" in proc.stderr


# ---- every panel query against the loaded database --------------------------------------------------------------


def _expanded(loaded: Loaded, pq: PanelQuery, overrides: dict[str, list[str]] | None = None) -> str:
    dash = _dashboard(GRAFANA / "dashboards" / pq.dashboard)
    variables = {**loaded.variables(pq.dashboard), **(overrides or {})}
    tr = TimeRange.relative(dash["time"]["from"], dash["time"]["to"], loaded.now_ms)
    panel = next(p for p in iter_panels(dash) if p["id"] == pq.panel_id)
    target = next(t for t in panel["targets"] if t["refId"] == pq.ref)
    return expand_influxql(target["query"], time_range=tr, interval_ms=panel_interval_ms(panel, tr, DS_INTERVAL),
                           variables=variables)


def _values(series: list[dict[str, Any]]) -> list[Any]:
    return [v for s in series for row in s["values"] for c, v in zip(s["columns"], row, strict=True)
            if c != "time" and v is not None]


@pytest.mark.parametrize("pq", PANEL_QUERIES, ids=lambda q: f"{q.dashboard}:{q.panel_id}{q.ref}")
def test_panel_query_returns_data(loaded: Loaded, pq: PanelQuery) -> None:
    query = _expanded(loaded, pq)
    assert not re.search(r"\$\w|\$\{|\[\[", query), f"unexpanded variable left in {query}"
    values = _values(loaded.run(query))
    assert values, f"{pq.dashboard} '{pq.title}' {pq.ref} returned no data:\n{query}"


def _single(loaded: Loaded, dashboard: str, title_start: str) -> float:
    dash = _dashboard(GRAFANA / "dashboards" / dashboard)
    panel = next(p for p in iter_panels(dash) if p["title"].startswith(title_start))
    values = _values(loaded.run(_expanded(loaded, PanelQuery(dashboard, panel["id"], panel["title"], "A"))))
    assert len(values) == 1, values
    return values[0]


def test_stat_panels_count_what_the_scenario_holds(loaded: Loaded) -> None:
    firing = loaded.scenario.firing
    assert _single(loaded, "overview.json", "SOS発報中") == len(firing["denen-sos-received"]) == 1
    assert _single(loaded, "overview.json", "発報中のわな") == len(firing["denen-trap-fired"]) == 1
    assert _single(loaded, "overview.json", "避難判断水位以上") == len(firing["denen-river-evacuation"]) == 1
    assert _single(loaded, "overview.json", "オフラインのゲートウェイ") == len(firing["denen-gateway-offline"]) == 1
    assert _single(loaded, "traps.json", "無通信") == len(firing["denen-node-silent"]) == 1
    assert _single(loaded, "traps.json", "発報中") == 1
    gateways = len(loaded.scenario.gateways)
    assert _single(loaded, "fleet-health.json", "オンライン") == gateways - 1
    assert _single(loaded, "fleet-health.json", "オフライン") == 1
    states = loaded.scenario.states.values()
    assert _single(loaded, "fleet-health.json", "サイレン鳴動中") == sum(s[0] for s in states) == 1
    assert _single(loaded, "fleet-health.json", "未確認の警報") == sum(s[3] for s in states) == 4
    assert _single(loaded, "fleet-health.json", "保留中の読み取り") == sum(s[4] for s in states) == 5
    longest = max(delay for *_, delay in loaded.scenario.acks)
    assert _single(loaded, "fleet-health.json", "確認までの時間") == longest == 420.0


def _table(loaded: Loaded, dashboard: str, title_start: str) -> list[dict[str, Any]]:
    """The rows of a table panel's query A: its columns and the series' tags."""
    dash = _dashboard(GRAFANA / "dashboards" / dashboard)
    panel = next(p for p in iter_panels(dash) if p["title"].startswith(title_start))
    series = loaded.run(_expanded(loaded, PanelQuery(dashboard, panel["id"], panel["title"], "A")))
    return [dict(zip(s["columns"], v, strict=True)) | s.get("tags", {}) for s in series for v in s["values"]]


def test_the_fleet_dashboard_shows_which_siren_sounds_for_which_alert(loaded: Loaded) -> None:
    rows = _table(loaded, "fleet-health.json", "現地の出力")
    got = {r["gateway"]: (r["siren_on"] == 1.0, r["siren_alert"], int(r["alerts_open"]),
                          int(r["alerts_unacknowledged"]), int(r["held_count"])) for r in rows}
    assert got == loaded.scenario.states
    assert {g for g, s in got.items() if s[0]} == {"gw-okutama-01"}
    assert next(r for r in rows if r["gateway"] == "gw-okutama-01")["siren_why"] == "alert"
    # The kiso siren sounded for the river until staff silenced it: the history shows both.
    dash = _dashboard(GRAFANA / "dashboards" / "fleet-health.json")
    panel = next(p for p in iter_panels(dash) if p["title"].startswith("サイレン履歴"))
    series = loaded.run(_expanded(loaded, PanelQuery("fleet-health.json", panel["id"], panel["title"], "A")))
    kiso = next(s for s in series if s["tags"]["gateway"] == "gw-kiso-river-02")
    assert [v for _, v in kiso["values"] if v is not None][-1] == 0.0 and 1.0 in {v for _, v in kiso["values"]}


def test_every_gateway_that_heard_a_node_is_listed(loaded: Loaded) -> None:
    """With de-duplication, node_health keeps the first receiver only; the node_link panels show each gateway's
    reception, counted as the scenario wrote them over the dashboard's 24 h."""
    start = loaded.now_ms * 1000 - 24 * 3600 * 1_000_000
    expected: dict[tuple[str, str], int] = {}
    for text in loaded.scenario.lines:
        if text.startswith("node_link,") and int(text.rsplit(" ", 1)[1]) > start:
            tags = dict(kv.split("=", 1) for kv in text.split(" ", 1)[0].split(",")[1:])
            expected[(tags["node"], tags["gateway"])] = expected.get((tags["node"], tags["gateway"]), 0) + 1
    rows = _table(loaded, "fleet-health.json", "受信したゲートウェイ")
    got = {(r["node"], r["gateway"]): int(r["frames"]) for r in rows}
    assert got == expected
    # The east traps are heard by both tanba gateways, the second one weaker (trap-east-1 is silent today).
    assert {g for (node, g) in got if node == "7a000005"} == {"gw-tanba-traps-01", "gw-tanba-traps-02"}
    far = next(r for r in rows if r["node"] == "7a000005" and r["gateway"] == "gw-tanba-traps-02")
    assert far["rssi"] <= -112.0
    series = loaded.run(_expanded(loaded, PanelQuery("fleet-health.json", 35, "ゲートウェイ別 受信強度", "A")))
    assert {(s["tags"]["name"], s["tags"]["gateway"]) for s in series} >= {("trap-east-2", "gw-tanba-traps-02")}


def test_the_open_alerts_are_the_alerts_raised_and_not_cleared(loaded: Loaded) -> None:
    rows = _table(loaded, "fleet-health.json", "発生中の警報 Open")
    assert {(r["gateway"], r["node"], r["type"]) for r in rows} == loaded.scenario.open_alerts
    assert len(rows) == len(loaded.scenario.open_alerts) == 6 and all(r["message"] for r in rows)


def test_acknowledged_alerts_show_who_and_how_long(loaded: Loaded) -> None:
    rows = _table(loaded, "fleet-health.json", "確認済みの警報")
    got = sorted((r["gateway"], r["node"], r["type"], r["by"], r["ack_delay_s"]) for r in rows)
    assert got == sorted(loaded.scenario.acks) and len(got) == 3
    assert all(r["from_ip"] and r["alert_id"] for r in rows)


def test_command_results_and_the_staff_audit_cover_the_time_range(loaded: Loaded) -> None:
    start = loaded.now_ms * 1000 - 24 * 3600 * 1_000_000
    expected = sorted((g, c, o, t, b) for ts, g, c, o, t, b in loaded.scenario.commands if ts > start)
    rows = _table(loaded, "fleet-health.json", "コマンドの結果")
    assert sorted((r["gateway"], r["command"], r["outcome"], r["target"], r["by"]) for r in rows) == expected
    assert {r["outcome"] for r in rows} == {"stopped", "not_active", "silenced"}  # the test chirp was 30 h ago
    audit = _table(loaded, "fleet-health.json", "操作の記録")
    confirms = [r for r in audit if r["by"] is not None]
    results = [r for r in audit if r["result"] is not None]
    assert len(confirms) == len(results) == 4  # three acknowledgements and a silence, each with its outcome
    assert sorted(r["result"] for r in results) == ["silenced", "stopped", "stopped", "stopped"]
    for c in confirms:  # each result a microsecond after its confirm, with the same tags
        assert any(r["time"] == c["time"] + 1 and (r["gateway"], r["node"], r["action"]) ==
                   (c["gateway"], c["node"], c["action"]) for r in results), c


def test_river_stage_is_what_the_gateway_reports(loaded: Loaded) -> None:
    """The stage panel reads the gateways' river_stage alerts, also when one frame crossed two stages at once."""
    river = _dashboard(GRAFANA / "dashboards" / "river-rain.json")
    panel = next(p for p in river["panels"] if p["title"].startswith("水位の段階"))
    series = loaded.run(_expanded(loaded, PanelQuery("river-rain.json", panel["id"], panel["title"], "A")))
    got = {s["tags"]["name"]: s["values"][-1][1] for s in series}
    assert got == loaded.scenario.stages == {"river-kiso-bridge": 3, "river-kiso-upper": 2}
    names = {m["options"][str(k)]["text"] for m in panel["fieldConfig"]["defaults"]["mappings"] for k in range(5)}
    assert {"避難判断水位 evacuation", "はん濫危険水位 danger"} <= names


def test_stage_lines_follow_the_dashboard_variables(loaded: Loaded) -> None:
    """The four stage lines are the variables' values over the whole range, so a site only edits variables."""
    river = _dashboard(GRAFANA / "dashboards" / "river-rain.json")
    panel = river["panels"][0]
    assert panel["title"].startswith("河川水位")
    defaults = {v["name"]: v["query"] for v in river["templating"]["list"] if v["type"] == "textbox"}
    assert [float(defaults[k]) for k in ("stage_standby", "stage_caution", "stage_evac", "stage_danger")] == list(
        STAGES_CM.values())
    for target, var in zip(panel["targets"][1:], ("stage_standby", "stage_caution", "stage_evac", "stage_danger"),
                           strict=True):
        pq = PanelQuery("river-rain.json", panel["id"], panel["title"], target["refId"])
        values = _values(loaded.run(_expanded(loaded, pq, {var: ["263"]})))
        assert values and set(values) == {263.0}, (var, set(values))


# ---- alert rules --------------------------------------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    return [r for g in _yaml(RULES_FILE)["groups"] for r in g["rules"]]


def test_alert_rules_are_well_formed() -> None:
    doc = _yaml(RULES_FILE)
    assert doc["apiVersion"] == 1
    rules = _rules()
    assert {r["uid"] for r in rules} == {"denen-sos-received", "denen-trap-fired", "denen-river-evacuation",
                                         "denen-node-silent", "denen-gateway-offline", "denen-gateway-alert"}
    dashboards = {(d := _dashboard(p))["uid"]: {q["id"] for q in iter_panels(d)} for p in DASHBOARDS}
    for r in rules:
        refs = [d["refId"] for d in r["data"]]
        assert r["condition"] in refs and len(refs) == len(set(refs))
        for d in r["data"]:
            assert d["datasourceUid"] in (DS_UID, "__expr__"), r["uid"]
            assert d["model"]["refId"] == d["refId"]
        assert r["panelId"] in dashboards[r["dashboardUid"]], r["uid"]
        assert re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", r["title"]) and re.search(r"[A-Za-z]{3}", r["title"])
        # Grafana expands $NAME from the environment in labels (not in annotations or query models).
        assert all("$" not in v for v in r["labels"].values()), r["uid"]
        assert r["annotations"]["summary"] and r["annotations"]["description"]


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: r["uid"])
def test_alert_rule_fires_for_exactly_the_scenario_series(loaded: Loaded, rule: dict[str, Any]) -> None:
    data, firing = evaluate_rule(rule, loaded.run, loaded.now_ms)
    for step in rule["data"]:
        if step["datasourceUid"] == DS_UID:
            assert any(s.points for s in data[step["refId"]]), f"{rule['uid']} query {step['refId']} found no data"
    key = "gateway" if rule["uid"] == "denen-gateway-offline" else "node"
    got = {s.labels[key] for s in firing}
    assert got == loaded.scenario.firing[rule["uid"]]
    for s in firing:  # one alert instance per series, labelled so the message can say where
        assert {"site", "gateway"} <= set(s.labels)
    if rule["uid"] != "denen-gateway-offline":
        # Grafana adds the rule's labels to each instance: gateway, node and type rebuild the gateway's alert key
        # (<type>:<node>), which the acknowledgement link names. Offline is the backend's own, nothing to acknowledge.
        for s in firing:
            labels = {**s.labels, **rule["labels"]}
            assert (labels["gateway"], labels["node"], labels["type"]) in loaded.scenario.open_alerts, labels
    if rule["uid"] == "denen-sos-received":
        # The message's last position comes from the same series.
        (active,) = firing
        lat = [s for s in data["LAT"] if s.labels == active.labels]
        assert lat and 35 < lat[0].points[-1][1] < 36
