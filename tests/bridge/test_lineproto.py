"""The serializer against the README's written schema, its trust boundary (site from the registry, timestamps, hostile
text), and its escaping against a real InfluxDB 1.6.7 (both servers: tests/security/test_escaping.py)."""

from __future__ import annotations

import json
import re

import pytest

from agent.bridge.lineproto import Serializer, escape_key, escape_string_field, escape_tag_value
from agent.bridge.registry import GatewayInfo, GatewayRegistry
from agent.clock import EPOCH_FLOOR_US
from tests.bridge._helpers import T0_US, batch, reading, topic
from tests.support.contract import section
from tests.support.influx import InfluxDB1

GW = "gw-test-01"
#: The sites the batches of these tests claim are the registry's, except where a test says otherwise.
REGISTRY = GatewayRegistry({GW: GatewayInfo("testville"),
                            "gw-okutama-01": GatewayInfo("okutama", "奥多摩 日原林道", "奥多摩町")})


def serializer(**kwargs: object) -> Serializer:
    return Serializer(registry=REGISTRY, **kwargs)  # type: ignore[arg-type]


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def _names(cell: str) -> list[str]:
    """Backticked names of a table cell, leaving out what is in parentheses (explanations, examples)."""
    depth, kept = 0, []
    for ch in cell:
        depth += ch == "("
        if depth == 0:
            kept.append(ch)
        depth -= ch == ")" and depth > 0
    return re.findall(r"`([a-z_0-9]+)`", "".join(kept))


def readme_values_by_kind() -> dict[str, list[str]]:
    rows = [r for r in section("### Values by kind").splitlines() if r.startswith("| `")]
    return {_names(_cells(r)[0])[0]: re.findall(r"`([a-z_0-9]+)`", _cells(r)[1]) for r in rows}


def readme_influx_schema() -> dict[str, tuple[list[str], list[str]]]:
    """measurement -> (tags, fields) from README "InfluxDB schema"; the kind row is expanded per kind."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for row in section("## InfluxDB schema").splitlines():
        if not row.startswith("| `"):
            continue
        measurements, tags, fields = _cells(row)
        for m in _names(measurements):
            out[m] = (_names(tags), _names(fields))
    return out


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, str], int]:
    """Split one line of our output (no escapes inside) into measurement, tags, fields, timestamp."""
    head, fields, ts = line.split(" ")
    measurement, *tag_parts = head.split(",")
    tags = dict(t.split("=", 1) for t in tag_parts)
    return measurement, tags, dict(f.split("=", 1) for f in fields.split(",")), int(ts)


def convert(readings: list[dict], *, gateway: str = GW) -> list[str]:
    conv = serializer().convert(topic(gateway, readings[0]["lane"]), batch(gateway, readings))
    assert not conv.rejects, conv.rejects
    return conv.lines


def full_values(kind: str) -> dict[str, float]:
    """Every value key of a kind as the README lists it, with distinct values."""
    return {k: float(i) + 0.25 for i, k in enumerate(readme_values_by_kind()[kind], start=1)}


# -- the README contract -----------------------------------------------------------------------------------------
def test_the_readme_example_line_is_exactly_what_the_serializer_writes() -> None:
    text = section("## InfluxDB schema")
    [example] = re.findall(r"```\n(water_level,.*?)\n```", text, re.S)
    r = reading("gw-okutama-01", 0x301, 1042, "water_level", {"level_cm": 182.5, "battery_v": 3.6},
                ts_us=1764130037123456, name="river-1", rssi=-95, snr=4.0)
    lines = serializer().convert(topic("gw-okutama-01"), batch("gw-okutama-01", [r], site="okutama")).lines
    assert lines[0] == example


@pytest.mark.parametrize("kind", ["sos", "trap", "water_level", "rain", "tilt", "weather", "heartbeat"])
def test_every_node_kind_has_the_readme_tags_and_fields(kind: str) -> None:
    schema = readme_influx_schema()
    values = full_values(kind)
    lines = convert([reading(GW, 0x101, 7, kind, values)])
    by_measurement = {parse_line(ln)[0]: parse_line(ln) for ln in lines}
    tags, fields = schema[kind]
    m, got_tags, got_fields, ts = by_measurement[kind]
    assert sorted(got_tags) == sorted(tags)
    assert got_tags["kind"] == kind and got_tags["site"] == "testville" and got_tags["node"] == "00000101"
    extra = [f for f in fields if f != "values"]
    assert list(got_fields) == list(values) + extra  # values first, in order, then the README's extras
    for key, value in values.items():
        assert float(got_fields[key]) == value
    # node_health: one point per reading, the README's fields only
    health_tags, health_fields = schema["node_health"]
    _, nh_tags, nh_fields, nh_ts = by_measurement["node_health"]
    assert sorted(nh_tags) == sorted(health_tags) and nh_ts == ts
    assert sorted(nh_fields) == sorted(health_fields if "battery_v" in values else
                                       [f for f in health_fields if f != "battery_v"])
    assert len(lines) == 2 and set(by_measurement) == {kind, "node_health"}  # alerts come from the gateway


def test_gateway_health_has_the_readme_tags_and_every_value_and_nothing_else() -> None:
    schema = readme_influx_schema()
    values = full_values("gateway_health")
    r = reading(GW, 0, 3, "gateway_health", values, name=GW, rssi=None, snr=None)
    r.update(node="gateway", id=f"{GW}/gateway/3", lane="diagnostics")
    for k in ("radio", "rssi", "snr", "auth", "receipt"):
        r.pop(k)
    [line] = convert([r])
    m, tags, fields, ts = parse_line(line)
    assert m == "gateway_health" and sorted(tags) == sorted(schema["gateway_health"][0])
    assert list(fields) == list(values) and ts == r["ts_us"]
    [row] = [r for r in section("## InfluxDB schema").splitlines() if r.startswith("| `gateway_health`")]
    examples = set(re.findall(r"`([a-z_]+)`", _cells(row)[2])) - {"gateway_health"}
    assert examples and examples <= set(values)  # the README's examples are real keys


def alert_reading(atype: str, state: str, severity: str, node: str | None, values: dict[str, float],
                  *, seq: int = 11, name: str | None = "river-1") -> dict:
    """A reading of kind alert as the gateway's edge rules publish it (README "Alerts")."""
    r = reading(GW, 0, seq, "alert", values, name=GW, rssi=None, snr=None)
    r.update(node="gateway", id=f"{GW}/gateway/{seq}", lane="alarm")
    for k in ("radio", "rssi", "snr", "auth", "receipt"):
        r.pop(k)
    r["alert"] = {"id": f"{GW}:{atype}:{node}#{seq}", "key": f"{atype}:{node}", "type": atype, "state": state,
                  "severity": severity, "node": node, "name": name if node else None,
                  "message": "避難判断水位に到達 / reached \"evacuation\" level, 3.5 m", "unit": "cm",
                  "reading": f"{GW}/{node}/7" if node else None}
    return r


@pytest.mark.parametrize(("atype", "state", "severity", "node", "values"), [
    ("river_stage", "raised", "emergency", "00000301", {"raised": 1.0, "value": 352.5, "threshold": 350.0,
                                                        "level": 3.0}),
    ("sos", "raised", "emergency", "00000101", {"raised": 1.0, "lat_deg": 35.8123, "lon_deg": 139.0987}),
    ("trap_fired", "cleared", "warning", "00000201", {"raised": 0.0}),
    ("journal_near_quota", "raised", "warning", None, {"raised": 1.0, "value": 91.0, "threshold": 90.0}),
])
def test_an_alert_reading_is_one_alert_point_as_the_readme_says(atype: str, state: str, severity: str,
                                                                node: str | None, values: dict) -> None:
    schema = readme_influx_schema()
    r = alert_reading(atype, state, severity, node, values)
    [line] = convert([r])
    head, rest = line.split(" ", 1)
    measurement, *tag_parts = head.split(",")
    tags = dict(t.split("=", 1) for t in tag_parts)
    fields_text, ts = rest.rsplit(" ", 1)
    numbers, message = fields_text.split(",message=")
    fields = dict(f.split("=", 1) for f in numbers.split(","))
    assert measurement == "alert" and int(ts) == r["ts_us"]
    tag_names, field_names = schema["alert"]
    assert sorted(tags) == sorted(tag_names)
    assert tags["type"] == atype and tags["severity"] == severity and tags["site"] == "testville"
    assert tags["node"] == (node or GW)  # the node concerned, or the gateway id
    assert tags["name"] == ("river-1" if node else GW)
    assert {k: float(v) for k, v in fields.items()} == values
    assert set(fields) | {"message"} <= set(field_names)
    assert message == '"避難判断水位に到達 / reached \\"evacuation\\" level, 3.5 m"'


def test_sos_and_trap_readings_make_no_alert_point_of_their_own() -> None:
    lines = convert([reading(GW, 0x101, 3, "sos", {"pressed": 1.0, "battery_v": 3.7}),
                     reading(GW, 0x201, 4, "trap", {"fired": 1.0, "battery_v": 3.2})])
    assert sorted(ln.split(",", 1)[0] for ln in lines) == ["node_health", "node_health", "sos", "trap"]


@pytest.mark.parametrize("change", [
    {"alert": None}, {"alert": {"type": "sos"}}, {"node": "00000301"}, {"values": {"value": 1.0}},
    {"alert_extra": True},
])
def test_a_malformed_alert_reading_is_rejected(change: dict) -> None:
    r = alert_reading("sos", "raised", "emergency", "00000101", {"raised": 1.0})
    if "alert_extra" in change:
        r["alert"]["colour"] = "red"
    else:
        r.update(change)
    conv = serializer().convert(topic(GW, "alarm"), batch(GW, [r]))
    assert conv.lines == [] and [j.reason for j in conv.rejects] == ["invalid_reading"]


def test_every_number_is_a_float_and_booleans_become_one_and_zero() -> None:
    r = reading(GW, 0x401, 4294967295, "rain", {"rain_mm": 0, "tips": 12, "battery_v": 3, "flag": True,
                                                 "off": False, "big": 1e22})
    lines = convert([r])
    for line in lines:
        for value in parse_line(line)[2].values():
            assert not value.endswith("i")
            float(value)  # never a string or boolean literal
    fields = parse_line(lines[0])[2]
    assert fields["rain_mm"] == "0.0" and fields["tips"] == "12.0" and fields["fcnt"] == "4294967295.0"
    assert fields["flag"] == "1.0" and fields["off"] == "0.0" and float(fields["big"]) == 1e22
    assert fields["rssi"] == "-97.0" and fields["auth_ok"] == "1.0" and fields["clock_ok"] == "1.0"


def test_a_reading_the_gateway_measured_itself_has_no_auth_ok_and_no_radio_fields() -> None:
    r = reading(GW, 0x401, 8, "rain", {"rain_mm": 0.5, "tips": 3.0}, rssi=None, snr=None, auth="local")
    fields = parse_line(convert([r])[0])[2]
    assert list(fields) == ["rain_mm", "tips", "fcnt", "clock_ok"]


def test_unsynced_clock_keeps_its_timestamp_with_clock_ok_zero_and_flagged_auth() -> None:
    r = reading(GW, 0x301, 5, "water_level", {"level_cm": 1.5}, clock="unsynced", auth="none",
                ts_us=EPOCH_FLOOR_US + 17)
    line = convert([r])[0]
    _, _, fields, ts = parse_line(line)
    assert ts == EPOCH_FLOOR_US + 17
    assert fields["clock_ok"] == "0.0" and fields["auth_ok"] == "0.0"


def test_a_reading_a_clockless_board_stamped_before_2020_is_written_at_the_bridges_time() -> None:
    # An SOS pressed before NTP on a board that booted in 1970: dead-lettering it would hide it from the dashboards.
    r = reading(GW, 0x101, 3, "sos", {"pressed": 1.0}, clock="unsynced", ts_us=86_400_000_000)
    conv = serializer(now_us=lambda: EPOCH_FLOOR_US + 5_000).convert(topic(GW), batch(GW, [r]))
    assert conv.rejects == [] and conv.readings == 1
    _, _, fields, ts = parse_line(conv.lines[0])
    assert ts == EPOCH_FLOOR_US + 5_000 and fields["clock_ok"] == "0.0"


@pytest.mark.parametrize("clock", ["synced", "corrected"])
def test_a_reading_before_2020_on_a_clock_the_gateway_trusts_is_dead_lettered(clock: str) -> None:
    r = reading(GW, 0x101, 3, "sos", {"pressed": 1.0}, clock=clock, ts_us=86_400_000_000)
    [rej] = serializer(now_us=lambda: EPOCH_FLOOR_US + 5_000).convert(topic(GW), batch(GW, [r])).rejects
    assert rej.reason == "timestamp_before_2020" and f"clock {clock}" in rej.detail


def test_a_corrected_clock_keeps_its_timestamp_and_counts_as_good() -> None:
    r = reading(GW, 0x301, 5, "water_level", {"level_cm": 1.5}, clock="corrected", ts_us=EPOCH_FLOOR_US + 99)
    _, _, fields, ts = parse_line(convert([r])[0])
    assert ts == EPOCH_FLOOR_US + 99 and fields["clock_ok"] == "1.0"


def test_a_redelivered_reading_gives_byte_identical_lines() -> None:
    r = reading(GW, 0x301, 5, "water_level", {"level_cm": 1.5})
    a = serializer().convert(topic(GW), batch(GW, [r]))
    doc = json.loads(batch(GW, [r]))
    doc["sent_us"] += 5_000_000  # a retry is sent later; only sent_us changes
    b = serializer().convert(topic(GW), json.dumps(doc).encode())
    assert a.lines == b.lines and len(a.lines) == 2


def test_status_documents_become_gateway_status_points() -> None:
    s = serializer(now_us=lambda: T0_US + 99)
    online = json.dumps({"schema": "denen.status/1", "gateway": GW, "state": "online", "agent": "0.1.0",
                         "ts_us": T0_US}).encode()
    will = json.dumps({"schema": "denen.status/1", "gateway": GW, "state": "offline", "agent": "0.1.0"}).encode()
    assert s.convert(f"denen/v1/{GW}/status", online).lines == [
        f'gateway_status,gateway={GW},site=testville online=1.0,agent="0.1.0" {T0_US}']
    assert s.convert(f"denen/v1/{GW}/status", will).lines == [
        f'gateway_status,gateway={GW},site=testville online=0.0,agent="0.1.0" {T0_US + 99}']


def test_a_status_point_carries_the_registrys_site_name_and_municipality() -> None:
    doc = {"schema": "denen.status/1", "gateway": "gw-okutama-01", "state": "online", "agent": "0.1.0",
           "ts_us": T0_US}
    conv = serializer().convert("denen/v1/gw-okutama-01/status", json.dumps(doc).encode())
    assert conv.lines == ['gateway_status,gateway=gw-okutama-01,site=okutama online=1.0,agent="0.1.0",'
                          f'name="奥多摩 日原林道",municipality="奥多摩町" {T0_US}'] and conv.notes == []


# -- what can never be written -------------------------------------------------------------------------------------
def _doc(**changes: object) -> bytes:
    doc = json.loads(batch(GW, [reading(GW, 0x301, 5, "water_level", {"level_cm": 1.5})]))
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\xff\xfe not utf-8", "invalid_json"),
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_schema"),
    (_doc(schema="denen.readings/2"), "unknown_schema"),
    (_doc(schema=None), "invalid_schema"),
    (_doc(gateway="gw-other"), "wrong_gateway"),
    (_doc(readings=[]), "invalid_schema"),
    (_doc(extra_key=1), "invalid_schema"),
    (_doc(lane="urgent"), "invalid_schema"),
])
def test_a_message_that_is_not_our_schema_is_rejected_whole_with_its_payload(payload: bytes, reason: str) -> None:
    conv = serializer().convert(topic(GW), payload)
    assert conv.lines == [] and conv.readings == 0
    [rej] = conv.rejects
    assert rej.reason == reason and rej.kind == "payload" and rej.content == payload and rej.detail


@pytest.mark.parametrize(("change", "reason"), [
    ({"ts_us": EPOCH_FLOOR_US - 1}, "timestamp_before_2020"),
    ({"ts_us": 5_000_000}, "timestamp_before_2020"),
    ({"values": {"level_cm": float("nan")}}, "not_finite"),
    ({"values": {"level_cm": float("inf")}}, "not_finite"),
    ({"values": {"level_cm": "high"}}, "invalid_reading"),
    ({"values": {"fcnt": 3.0}}, "invalid_reading"),
    ({"fcnt": -1}, "invalid_reading"),
    ({"fcnt": 1.5}, "invalid_reading"),
    ({"node": "XYZ"}, "invalid_reading"),
    ({"kind": "volcano"}, "invalid_reading"),
    ({"id": "gw-test-01/00000301/6"}, "invalid_reading"),
    ({"unexpected": 1}, "invalid_reading"),
    ({"clock": "maybe"}, "invalid_reading"),
])
def test_a_bad_reading_is_rejected_alone_and_its_neighbours_are_written(change: dict, reason: str) -> None:
    good1 = reading(GW, 0x301, 5, "water_level", {"level_cm": 1.5})
    bad = reading(GW, 0x302, 6, "water_level", {"level_cm": 2.5})
    bad.update(change)
    good2 = reading(GW, 0x303, 7, "water_level", {"level_cm": 3.5})
    payload = json.dumps(json.loads(batch(GW, [good1, good2])) | {"readings": [good1, bad, good2]}).encode()
    conv = serializer().convert(topic(GW), payload)
    assert conv.readings == 2 and len(conv.lines) == 4
    assert {parse_line(ln)[1]["node"] for ln in conv.lines} == {"00000301", "00000303"}
    [rej] = conv.rejects
    assert rej.reason == reason and rej.kind == "reading"
    assert json.loads(rej.content) == json.loads(json.dumps(bad, allow_nan=True))


# -- escaping, checked by the real server -----------------------------------------------------------------------
def test_escaping_round_trips_through_influxdb(influx: InfluxDB1) -> None:
    assert escape_key("a b,c=d") == "a\\ b\\,c\\=d"
    assert escape_tag_value("x,y=z w") == "x\\,y\\=z\\ w"
    assert escape_string_field('say "hi" \\o/') == '"say \\"hi\\" \\\\o/"'
    names = {0x501: "river 1, upper=left", 0x502: "川上 ゲージ", 0x503: "tab\there\nnewline", 0x504: "ends\\",
             0x505: "=,  ", 0x506: "a\\,gateway\\=victim"}
    readings = [reading(GW, node, 1, "water_level", {"level cm,x=y": 1.5, "ch7_temperature": 21.25}, name=name)
                for node, name in names.items()]
    lines = convert(readings)
    status = serializer().convert(f"denen/v1/{GW}/status", json.dumps(
        {"schema": "denen.status/1", "gateway": GW, "state": "online", "agent": 'v"1\\2', "ts_us": T0_US}).encode())
    assert influx.write(lines + status.lines, "denen") == (204, b"")
    rows = influx.rows('SELECT "level cm,x=y", ch7_temperature, fcnt FROM water_level GROUP BY "name", node',
                       "denen")
    stored = {r["node"]: r["name"] for r in rows}
    assert stored == {"00000501": "river 1, upper=left", "00000502": "川上 ゲージ",
                      "00000503": "tab here newline", "00000504": "ends＼", "00000505": "=,  ",
                      "00000506": "a＼,gateway＼=victim"}
    assert all(r["level cm,x=y"] == 1.5 and r["ch7_temperature"] == 21.25 and r["fcnt"] == 1 for r in rows)
    [st] = influx.rows("SELECT agent, online FROM gateway_status", "denen")
    assert st["agent"] == 'v"1\\2' and st["online"] == 1 and st["time"] == T0_US
