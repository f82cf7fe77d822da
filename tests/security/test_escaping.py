"""Attack 6 of issue 10: hostile names, keys and strings, written through the converter to BOTH real servers.

A gateway chooses its node names, value keys and alert messages. InfluxDB 1.6.7 and VictoriaMetrics parse line
protocol escapes differently (VictoriaMetrics read ``name=a\\,gateway\\=victim`` as two labels; a line with a
backslash before an escaped comma was accepted with 204 and not stored), so every hostile string here goes through
:meth:`Serializer.convert` and the bridge's own sinks (v1 to InfluxDB, v2 to VictoriaMetrics), and is read back:

* no extra tags, points or measurements, on either server;
* the same measurements, tag sets and field keys on both, and the same values;
* each name stored as the converter's documented rule says (``lineproto`` module docstring), computed here
  independently;
* nothing silently lost: every line the converter gave is stored on both, everything else was refused before
  sending, with a reason.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from typing import Any

import pytest

from agent.bridge.config import SinkConfig
from agent.bridge.lineproto import Serializer
from agent.bridge.registry import GatewayInfo, GatewayRegistry
from agent.bridge.schema import Converted
from agent.bridge.sinks import make_sink
from tests.bridge._helpers import T0_US, batch, reading, topic
from tests.support.influx import InfluxDB1, VictoriaMetrics
from tests.support.servers import DB

GW = "gw-hostile-01"
SITE = "hostile-town"

HOSTILE_NAMES = [
    "a\\,gateway\\=victim", "a\\\\,b", "ends\\", "\\", "\\\\", "x\\ y", "x\\=y", "\\,", "a\\b", "c:\\data\\",
    "river 1, upper=left", "=,  ", " lead", "trail ", ",", "=", " ", "name=x,site=victim-town", "gateway=gw-other",
    '"quoted"', "it's", "#hash", 'a"b\\"c', "川上 ゲージ", "奥多摩 日原林道", "🌊🐗", "zero\u200bwidth", "\ufeffbom",
    "zw\u200djoiner", "line\u2028sep", "nb\u00a0sp", "tab\there\nnewline\r", "\x00nul", "nel\x85", "\x1b[31mred",
    "n" * 300, "あ" * 300, "\\" * 250,
]
GOOD_KEYS = ["level cm,x=y", "a=b", "a,b", " lead", "trail ", "川", "🌊", "zero\u200bw", "#", "a.b/c", "_fieldx",
             "__name__", "it's", "k" * 200]
# A key named like a tag or a Flux column is refused too: InfluxQL's WHERE "gateway" = 'x' would compare the field.
REFUSED_KEYS = ["a\\b", 'a"b', "time", "message", "x\\", "\\", "k" * 201, "gateway", "_field"]
MESSAGES = ['say "hi" \\o/', "ends\\", "\\", '"', 'a\\"b', "tab\tnl\n", "避難判断水位に到達 / reached \"evacuation\" level",
            "x" * 2000, "🌊 \u200b", "a,b=c d", "\\\\,x"]
AGENTS = ['v"1\\2\\', "0.1\n0"]

MEASUREMENTS = ["water_level", "node_health", "alert", "gateway_status"]


def expected_tag(text: str) -> str:
    """The converter's rule for a tag value (lineproto module docstring), written out independently: cut to 200
    characters, control characters become spaces, a backslash becomes U+FF3C."""
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in text[:200])
    return text.replace("\\", "\uff3c")


def expected_string(text: str) -> str:
    """The converter's rule for a string field: cut to 1,000 characters, control characters become spaces."""
    return "".join(" " if unicodedata.category(c) == "Cc" else c for c in text[:1000])


def _sink(spec: dict[str, Any]) -> Any:
    return make_sink(SinkConfig.model_validate({"timeout_s": 10, **spec}))


def _convert() -> tuple[list[Converted], dict[str, Any]]:
    """Every hostile message converted, and what each server must then hold."""
    s = Serializer(registry=GatewayRegistry({GW: GatewayInfo(SITE, "敵 ゲートウェイ", "どこか町")}))
    names = {f"{0x500 + i:08x}": name for i, name in enumerate(HOSTILE_NAMES)}
    readings = [reading(GW, int(node, 16), 1, "water_level", {"level_cm": float(i)}, name=name)
                for i, (node, name) in enumerate(names.items())]
    key_node = f"{0x600:08x}"
    readings.append(reading(GW, 0x600, 1, "water_level", {k: float(i) for i, k in enumerate(GOOD_KEYS)},
                            name="keys"))
    refused = [reading(GW, 0x700 + i, 1, "water_level", {"level_cm": 1.0, key: 2.0}, name="refused")
               for i, key in enumerate(REFUSED_KEYS)]
    alerts = []
    for i, message in enumerate(MESSAGES):
        a = reading(GW, 0, 10 + i, "alert", {"raised": 1.0, "value": float(i)}, name=GW, rssi=None, snr=None)
        node = f"{0x800 + i:08x}"
        a.update(node="gateway", id=f"{GW}/gateway/{10 + i}", lane="alarm")
        a["alert"] = {"id": f"{GW}:x#{i}", "key": "x", "type": "river_stage", "state": "raised",
                      "severity": "warning", "node": node, "name": HOSTILE_NAMES[i], "message": message}
        alerts.append(a)
    convs = [s.convert(topic(GW), batch(GW, readings + refused, site="victim-town")),
             s.convert(topic(GW, "alarm"), batch(GW, alerts))]
    for i, agent in enumerate(AGENTS):
        doc = {"schema": "denen.status/1", "gateway": GW, "state": "online", "agent": agent, "ts_us": T0_US + i * 1000}
        convs.append(s.convert(f"denen/v1/{GW}/status", json.dumps(doc).encode()))
    expected = {"names": names, "key_node": key_node, "refused": len(refused), "alerts": alerts}
    return convs, expected


def _influx_points(influx: InfluxDB1) -> list[dict[str, Any]]:
    points = []
    for m in [r["name"] for r in influx.rows("SHOW MEASUREMENTS", DB)]:
        for series in influx.query(f'SELECT * FROM "{m}" GROUP BY *', DB):
            for values in series["values"]:
                row = dict(zip(series["columns"], values, strict=True))
                fields = {k: v for k, v in row.items() if k != "time" and v is not None}
                points.append({"measurement": m, "tags": series["tags"], "fields": fields, "time": row["time"]})
    return points


def _split_metric(name: str) -> tuple[str, str]:
    for m in sorted(MEASUREMENTS, key=len, reverse=True):
        if name.startswith(m + "_"):
            return m, name[len(m) + 1:]
    raise AssertionError(f"VictoriaMetrics holds a metric of no known measurement: {name!r}")


def test_hostile_names_keys_and_messages_are_stored_alike_by_influxdb_and_victoriametrics(
        influx: InfluxDB1, victoria: VictoriaMetrics) -> None:
    convs, exp = _convert()
    lines = [line for c in convs for line in c.lines]
    rejects = [r for c in convs for r in c.rejects]
    # Refused before sending, each for a reason: the keys no two servers read alike.
    assert Counter(r.reason for r in rejects) == {"invalid_reading": exp["refused"]}
    assert all(r.reading_id and r.reading_id.split("/")[1].startswith("000007") for r in rejects)
    assert [n for c in convs for n, _ in c.notes] == ["site_mismatch"] * 2  # the batches claim other sites
    body = "\n".join(lines).encode()

    v1 = _sink({"type": "v1", "url": influx.url, "database": DB})
    v2 = _sink({"type": "v2", "url": victoria.url, "org": "denen", "bucket": DB, "token": "unused"})
    try:
        v1.write(body)  # raise on anything but 204: no line is refused by either server
        v2.write(body)
    finally:
        v1.close()
        v2.close()

    # -- InfluxDB: exactly the points, tags and fields the lines say -------------------------------------------
    points = _influx_points(influx)
    assert len(points) == len(lines)  # nothing lost, nothing extra
    assert {p["measurement"] for p in points} == set(MEASUREMENTS)
    influx_series = Counter((p["measurement"], tuple(sorted(p["tags"].items()))) for p in points)
    # One point per series (each name, node and alert its own), but the two status documents of the gateway.
    assert {k: n for k, n in influx_series.items() if n != 1} == {
        ("gateway_status", (("gateway", GW), ("site", SITE))): len(AGENTS)}
    for p in points:
        allowed = {"gateway_status": {"gateway", "site"}}.get(
            p["measurement"], {"site", "gateway", "node", "name", "kind", "type", "severity"})
        assert set(p["tags"]) <= allowed, p  # no tag a name smuggled in
        assert p["tags"]["site"] == SITE and p["tags"]["gateway"] == GW
    by_node = {(p["measurement"], p["tags"].get("node")): p for p in points}
    for i, (node, name) in enumerate(exp["names"].items()):
        want = expected_tag(name)
        for m in ("water_level", "node_health"):
            p = by_node[(m, node)]
            assert p["tags"].get("name", "") == want, (name, p["tags"])
        assert by_node[("water_level", node)]["fields"]["level_cm"] == float(i)
    keys = by_node[("water_level", exp["key_node"])]["fields"]
    assert {k: keys[k] for k in GOOD_KEYS} == {k: float(i) for i, k in enumerate(GOOD_KEYS)}
    alerts = {p["tags"]["node"]: p for p in points if p["measurement"] == "alert"}
    assert len(alerts) == len(MESSAGES)
    for a in exp["alerts"]:
        p = alerts[a["alert"]["node"]]
        assert p["fields"]["message"] == expected_string(a["alert"]["message"])
        assert p["fields"]["value"] == a["values"]["value"] and p["fields"]["raised"] == 1.0
        assert p["tags"]["name"] == expected_tag(a["alert"]["name"])
    status = sorted((p for p in points if p["measurement"] == "gateway_status"), key=lambda p: p["time"])
    assert [p["fields"]["agent"] for p in status] == [expected_string(a) for a in AGENTS]
    assert all(p["fields"]["name"] == "敵 ゲートウェイ" and p["fields"]["municipality"] == "どこか町" for p in status)

    # -- VictoriaMetrics: the same series, tag sets, fields and values -----------------------------------------
    fields_sent = sum(len(p["fields"]) for p in points)  # every field of every point, strings too (stored as 0)
    series = victoria.wait_export('{__name__=~".+"}', lambda s: sum(len(x["values"]) for x in s) >= fields_sent)
    assert sum(len(x["values"]) for x in series) == fields_sent
    vm_series: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    vm_values: dict[tuple[str, str, tuple[tuple[str, str], ...], int], float] = {}
    for x in series:
        labels = {k: v for k, v in x["metric"].items() if k not in ("__name__", "db")}
        m, f = _split_metric(x["metric"]["__name__"])
        key = tuple(sorted(labels.items()))
        vm_series.add((m, key))  # a series per measurement and tag set, whatever its fields
        for ts_ms, v in zip(x["timestamps"], x["values"], strict=True):
            assert (m, f, key, ts_ms) not in vm_values, x
            vm_values[(m, f, key, ts_ms)] = v
    assert vm_series == set(influx_series)  # same measurements with the same tag sets, none extra
    for p in points:
        key = tuple(sorted(p["tags"].items()))
        for f, v in p["fields"].items():
            stored = vm_values[(p["measurement"], f, key, p["time"] // 1000)]
            assert stored == (v if isinstance(v, float | int) else 0), (p, f)  # a string field is stored as 0


@pytest.mark.parametrize("name", ["a\\,gateway\\=victim", "a\\\\,b", "x\\ y"])
def test_the_raw_escapes_that_split_the_servers_are_what_the_converter_avoids(
        influx: InfluxDB1, victoria: VictoriaMetrics, name: str) -> None:
    """The evidence for the normalisation: written with only ``, = space`` escaped (the old converter), these names
    reach the two servers as different tag sets. Through the converter, they do not (test above)."""
    old_style = name.replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")
    line = f"water_level,gateway={GW},name={old_style},node=00000501,site={SITE} level_cm=1.0 {T0_US}"
    assert influx.write([line], DB)[0] == 204
    status, _ = victoria._post("/write", {"db": DB, "precision": "u"}, line.encode())
    assert status == 204
    [ix] = influx.query('SELECT level_cm FROM water_level GROUP BY *', DB)
    vm = victoria.wait_export('{__name__="water_level_level_cm"}', lambda s: bool(s))
    vm_labels = {k: v for k, v in vm[0]["metric"].items() if k not in ("__name__", "db")} if vm else {}
    assert ix["tags"] != vm_labels  # the two servers disagree on raw escapes: the reason for the rule
    assert re.search(r"\\[\\,= ]", old_style)  # a backslash before an escaped character
