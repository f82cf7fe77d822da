"""The serializer against the README's written schema, its trust boundary (site from the registry, timestamps, hostile
text), and its escaping against a real InfluxDB 1.6.7 (both servers: tests/security/test_escaping.py)."""

from __future__ import annotations

import copy
import json
import re
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.bridge.encoding import escape_key, escape_string_field, escape_tag_value
from agent.bridge.lineproto import Serializer
from agent.bridge.registry import GatewayInfo, GatewayRegistry
from agent.bridge.schema import COMMANDS, OUTCOMES, Converted
from agent.gateway.clock import EPOCH_FLOOR_US
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


# -- site: from the registry, never from the payload ---------------------------------------------------------------
def _sites(lines: list[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in lines:
        head = line.split(" ", 1)[0]
        measurement, *tags = head.split(",")
        out.setdefault(measurement, set()).update(t.split("=", 1)[1] for t in tags if t.startswith("site="))
    return out


def _every_kind(gateway: str) -> list[dict]:
    """One node reading, one gateway_health and one alert reading of ``gateway``."""
    health = reading(gateway, 0, 3, "gateway_health", {"uptime_s": 5.0}, name=gateway, rssi=None, snr=None)
    health.update(node="gateway", id=f"{gateway}/gateway/3", lane="telemetry")
    alert = alert_reading("sos", "raised", "emergency", "00000101", {"raised": 1.0}, seq=4)
    alert.update(id=f"{gateway}/gateway/4", lane="telemetry")
    return [reading(gateway, 0x101, 2, "sos", {"pressed": 1.0}), health, alert]


def test_every_point_has_the_registrys_site_and_a_differing_claim_is_noted_and_ignored() -> None:
    conv = serializer().convert(topic(GW), batch(GW, _every_kind(GW), site="victim-town"))
    assert not conv.rejects and conv.readings == 3
    assert _sites(conv.lines) == {"sos": {"testville"}, "node_health": {"testville"},
                                  "gateway_health": {"testville"}, "alert": {"testville"}}
    [(code, detail)] = conv.notes
    assert code == "site_mismatch" and "'victim-town'" in detail and "'testville'" in detail and GW in detail
    # A batch that claims the right site is not noted.
    assert serializer().convert(topic(GW), batch(GW, _every_kind(GW))).notes == []


@pytest.mark.parametrize("unknown", ["accept", "refuse"])
def test_a_gateway_the_registry_does_not_list_follows_the_policy(unknown: str) -> None:
    s = Serializer(registry=GatewayRegistry({GW: GatewayInfo("testville")}, unknown=unknown))  # type: ignore[arg-type]
    other = "gw-stranger-07"
    status = json.dumps({"schema": "denen.status/1", "gateway": other, "state": "online", "ts_us": T0_US}).encode()
    for conv in (s.convert(topic(other), batch(other, _every_kind(other), site="testville")),
                 s.convert(f"denen/v1/{other}/status", status)):
        if unknown == "accept":
            assert conv.lines and not conv.rejects
            assert set().union(*_sites(conv.lines).values()) == {"unknown"}
            assert [code for code, _ in conv.notes] == ["unknown_gateway"] and other in conv.notes[0][1]
        else:
            assert conv.lines == [] and conv.notes == []
            [rej] = conv.rejects
            assert rej.reason == "unknown_gateway" and rej.kind == "payload" and other in rej.detail


def test_without_a_registry_every_gateway_is_unknown_and_accepted() -> None:
    conv = Serializer().convert(topic(GW), batch(GW, [reading(GW, 0x101, 2, "sos", {"pressed": 1.0})]))
    assert _sites(conv.lines) == {"sos": {"unknown"}, "node_health": {"unknown"}}
    assert [code for code, _ in conv.notes] == ["unknown_gateway"]


def test_a_registry_that_changes_changes_the_site_of_the_next_message() -> None:
    # The tag cache is keyed by site, so a gateway moved to another site is written there at once.
    s = Serializer(registry=GatewayRegistry({GW: GatewayInfo("testville")}))
    r = reading(GW, 0x101, 2, "sos", {"pressed": 1.0})
    assert _sites(s.convert(topic(GW), batch(GW, [r])).lines)["sos"] == {"testville"}
    s.registry = GatewayRegistry({GW: GatewayInfo("otherville")})
    assert _sites(s.convert(topic(GW), batch(GW, [r])).lines)["sos"] == {"otherville"}


def test_a_message_rejected_whole_carries_no_notes() -> None:
    conv = serializer().convert(topic(GW), _doc(site="victim-town", readings=[]))
    assert [r.reason for r in conv.rejects] == ["invalid_schema"] and conv.notes == []


# -- timestamps in the future --------------------------------------------------------------------------------------
NOW = T0_US + 3_600_000_000


@pytest.mark.parametrize("clock", ["synced", "corrected"])
@pytest.mark.parametrize(("ahead_us", "written"), [(0, True), (300_000_000, True), (300_000_001, False),
                                                    (5_806_281_600_000_000, False)])  # ~ year 2200
def test_a_reading_stamped_too_far_ahead_of_the_bridges_clock_is_dead_lettered(clock: str, ahead_us: int,
                                                                               written: bool) -> None:
    r = reading(GW, 0x101, 3, "sos", {"pressed": 1.0}, clock=clock, ts_us=NOW + ahead_us)
    conv = serializer(now_us=lambda: NOW).convert(topic(GW), batch(GW, [r]))
    if written:
        assert conv.readings == 1 and not conv.rejects and parse_line(conv.lines[0])[3] == NOW + ahead_us
    else:
        [rej] = conv.rejects
        assert conv.lines == [] and rej.reason == "timestamp_in_future" and rej.kind == "reading"
        assert f"clock {clock}" in rej.detail and "300 s" in rej.detail


def test_the_allowed_skew_is_configurable() -> None:
    r = reading(GW, 0x101, 3, "sos", {"pressed": 1.0}, ts_us=NOW + 10_000_000)
    assert serializer(now_us=lambda: NOW, max_future_s=5).convert(topic(GW), batch(GW, [r])).rejects[0].reason \
        == "timestamp_in_future"
    assert serializer(now_us=lambda: NOW, max_future_s=60).convert(topic(GW), batch(GW, [r])).readings == 1


def test_an_unsynced_clocks_reading_from_the_future_is_written_at_the_bridges_time() -> None:
    # Its stamp is no time at all (the board's clock was never set); an SOS among them must still be seen.
    r = reading(GW, 0x101, 3, "sos", {"pressed": 1.0}, clock="unsynced", ts_us=NOW + 10**15)
    conv = serializer(now_us=lambda: NOW).convert(topic(GW), batch(GW, [r]))
    assert conv.readings == 1 and not conv.rejects
    _, _, fields, ts = parse_line(conv.lines[0])
    assert ts == NOW and fields["clock_ok"] == "0.0"


def test_a_status_document_from_the_future_is_dead_lettered() -> None:
    doc = {"schema": "denen.status/1", "gateway": GW, "state": "online", "ts_us": NOW + 301_000_000}
    conv = serializer(now_us=lambda: NOW).convert(f"denen/v1/{GW}/status", json.dumps(doc).encode())
    assert conv.lines == [] and [r.reason for r in conv.rejects] == ["timestamp_in_future"]


# -- hostile text ----------------------------------------------------------------------------------------------------
def _assert_storable(conv: Converted) -> None:
    """What the bridge does next with a conversion cannot fail on its text: encode, store, log."""
    "\n".join(conv.lines).encode("utf-8")
    for line in conv.lines:
        assert "\n" not in line and "\r" not in line
    for rej in conv.rejects:
        assert isinstance(rej.content, bytes)
        for text in (rej.detail, rej.reading_id or ""):
            text.encode("utf-8")
            assert not UNPRINTABLE.search(text), text
    for _, detail in conv.notes:
        detail.encode("utf-8")
        assert not UNPRINTABLE.search(detail), detail


UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
LONE = "0.1.0\ud800"  # valid JSON ("\ud800" escape), valid UTF-8 bytes; no UTF-8 encoder takes the string


def _status(agent: object) -> bytes:
    return json.dumps({"schema": "denen.status/1", "gateway": GW, "state": "online", "agent": agent,
                       "ts_us": T0_US}).encode()


def _with(r: dict, **changes: object) -> dict:
    return r | changes


GOOD = reading(GW, 0x101, 2, "sos", {"pressed": 1.0})
ALERT = alert_reading("sos", "raised", "emergency", "00000101", {"raised": 1.0}, seq=4)


@pytest.mark.parametrize(("where", "t", "payload", "reason", "kind"), [
    ("status agent", "status", _status(LONE), "invalid_text", "payload"),
    ("reading name", "alarm", batch(GW, [_with(ALERT, name=LONE), GOOD]), "invalid_text", "reading"),
    ("values key", "alarm", batch(GW, [_with(GOOD, values={LONE: 1.0}), ALERT]), "invalid_text", "reading"),
    ("alert message", "alarm", batch(GW, [_with(ALERT, alert=ALERT["alert"] | {"message": LONE}), GOOD]),
     "invalid_text", "reading"),
    ("alert name", "alarm", batch(GW, [_with(ALERT, alert=ALERT["alert"] | {"name": LONE}), GOOD]),
     "invalid_text", "reading"),
    ("a field never written", "alarm", batch(GW, [_with(GOOD, radio=LONE), ALERT]), "invalid_text", "reading"),
    ("unknown batch key", "sos", json.dumps(json.loads(batch(GW, [GOOD])) | {LONE: 1}).encode(),
     "invalid_schema", "payload"),
    ("unknown reading key", "alarm", batch(GW, [_with(GOOD, **{LONE: 1}), ALERT]), "invalid_text", "reading"),
])
def test_a_lone_surrogate_is_refused_where_it_is_and_nothing_else_is_lost(where: str, t: str, payload: bytes,
                                                                           reason: str, kind: str) -> None:
    # The attack of issue 10 (1): each of these stopped the bridge for good at "\n".join(lines).encode() or at
    # the dead-letter store's insert.
    assert b"\\ud800" in payload  # json.dumps writes the escape: the bytes are plain ASCII
    conv = serializer().convert(f"denen/v1/{GW}/status" if t == "status" else topic(GW, t), payload)
    _assert_storable(conv)
    [rej] = conv.rejects
    assert (rej.reason, rej.kind) == (reason, kind), where
    assert "\\ud800" in rej.detail  # said, not carried
    if kind == "reading":
        assert conv.readings == 1  # its neighbour is written
        assert json.loads(rej.content) is not None and b"\\ud800" in rej.content
    else:
        assert rej.content == payload and conv.lines == []


def test_surrogates_as_raw_bytes_and_utf16_are_not_utf8_json() -> None:
    # json.loads(bytes) would take both (it decodes with surrogatepass, and guesses UTF-16/32).
    raw = json.dumps(json.loads(_status(LONE)), ensure_ascii=False).encode("utf-8", "surrogatepass")
    assert b"0.1.0\xed\xa0\x80" in raw
    for payload in (raw, _status("0.1.0").decode().encode("utf-16")):
        conv = serializer().convert(f"denen/v1/{GW}/status", payload)
        assert [r.reason for r in conv.rejects] == ["invalid_json"]
        _assert_storable(conv)


def test_a_valid_surrogate_pair_is_text_like_any_other() -> None:
    # A gateway that writes JSON with ensure_ascii spells an emoji as two escapes: that is not a lone surrogate.
    payload = json.dumps(json.loads(batch(GW, [_with(GOOD, name="川🌊-1")])), ensure_ascii=True).encode()
    assert b"\\ud83c\\udf0a" in payload
    conv = serializer().convert(topic(GW, "sos"), payload)
    assert not conv.rejects and "name=川🌊-1," in conv.lines[0]


def test_control_characters_in_free_text_become_spaces_and_in_a_key_refuse_the_reading() -> None:
    named = _with(GOOD, name="a\tb\nc\x00d\x85e\x7f")
    msg = _with(ALERT, alert=ALERT["alert"] | {"message": "x\ny\r\x00z\x1b[2J"})
    conv = serializer().convert(topic(GW, "alarm"), batch(GW, [named, msg, _with(GOOD, fcnt=9, id=f"{GW}/00000101/9",
                                                                                values={"a\x00": 1.0})]))
    _assert_storable(conv)
    assert "name=a\\ b\\ c\\ d\\ e\\ ," in conv.lines[0]
    assert conv.lines[2].endswith(f',message="x y  z [2J" {ALERT["ts_us"]}')
    [rej] = conv.rejects
    assert rej.reason == "invalid_text" and "\\x00" in rej.detail
    status = serializer().convert(f"denen/v1/{GW}/status", _status("0.1\n\x1b[31m"))
    assert status.lines[0].split(" ")[1] == 'online=1.0,agent="0.1' and '\x1b' not in status.lines[0]


@pytest.mark.parametrize("name", ["a\\,gateway\\=victim", "ends\\", "\\", "a\\\\b", "x\\ y"])
def test_a_backslash_in_a_name_becomes_a_fullwidth_one(name: str) -> None:
    [line, _] = serializer().convert(topic(GW, "sos"), batch(GW, [_with(GOOD, name=name)])).lines
    tags = re.split(r"(?<!\\) ", line)[0]
    assert "\\\\" not in tags and not re.search(r"\\[^,= ]", tags)  # every backslash left escapes , = or space
    expected = escape_tag_value(name.replace("\\", "＼"))
    assert f",name={expected}," in tags


@pytest.mark.parametrize(("key", "reason"), [
    ("a\\b", "invalid_reading"), ('a"b', "invalid_reading"), ("time", "invalid_reading"),
    ("message", "invalid_reading"), ("k" * 201, "invalid_reading"), ("", "invalid_reading"),
    ("a\nb", "invalid_text"), ("\x7f", "invalid_text"),
])
def test_a_values_key_the_servers_would_read_differently_refuses_the_reading(key: str, reason: str) -> None:
    conv = serializer().convert(topic(GW, "sos"), batch(GW, [_with(GOOD, values={key: 1.0})]))
    assert conv.lines == [] and [r.reason for r in conv.rejects] == [reason]
    _assert_storable(conv)


def test_keys_names_and_messages_are_bounded() -> None:
    ok = serializer().convert(topic(GW, "sos"), batch(GW, [_with(GOOD, name="n" * 5000, values={"k" * 200: 1.0})]))
    assert f",name={'n' * 200}," in ok.lines[0] and f" {'k' * 200}=1.0," in ok.lines[0]
    long_msg = serializer().convert(topic(GW, "alarm"), batch(GW, [
        _with(ALERT, alert=ALERT["alert"] | {"message": "あ" * 5000})]))
    assert f'message="{"あ" * 1000}" ' in long_msg.lines[0]
    many = {f"v{i:05d}_{'x' * 150}": float(i) for i in range(300)}  # ~48,000 characters of fields
    conv = serializer().convert(topic(GW, "sos"), batch(GW, [_with(GOOD, values=many), ALERT]))
    [rej] = conv.rejects
    assert rej.reason == "invalid_reading" and "32768" in rej.detail and conv.readings == 1


def test_a_topic_whose_gateway_is_not_an_id_is_outside_the_scheme() -> None:
    # The status document names the same gateway as the topic; without the id check the topic's text went into
    # the gateway tag unescaped: one more tag for every comma.
    gw = "x,site=victim-town"
    doc = json.dumps({"schema": "denen.status/1", "gateway": gw, "state": "online", "ts_us": T0_US}).encode()
    conv = serializer().convert(f"denen/v1/{gw}/status", doc)
    assert conv.lines == [] and [r.reason for r in conv.rejects] == ["invalid_schema"] and conv.gateway is None


def test_details_and_reading_ids_are_printable_and_bounded() -> None:
    hostile = "\x1b[2J\nFAKE LOG LINE\ud800" + "z" * 5000
    bad = _with(GOOD, id=hostile, **{hostile: 1})
    conv = serializer().convert(topic(GW, "sos"), batch(GW, [bad]))
    [rej] = conv.rejects
    _assert_storable(conv)
    assert len(rej.detail) <= 1001 and len(rej.reading_id or "") <= 201 and rej.reading_id.endswith("z…")
    assert "\\x1b[2J\\nFAKE LOG LINE\\ud800" in rej.detail  # shown, not carried
    assert rej.reading_id.startswith("\\x1b[2J\\x0aFAKE LOG LINE\\ud800")


@pytest.mark.parametrize("payload", [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000])
def test_json_nested_too_deeply_is_invalid_json(payload: bytes) -> None:
    conv = serializer().convert(topic(GW), payload)
    assert [r.reason for r in conv.rejects] == ["invalid_json"]


def test_a_reading_nested_almost_too_deeply_is_refused_alone() -> None:
    # Deep enough that json.loads barely takes it: details, checks and the dead letter's JSON must still not raise.
    depth = sys.getrecursionlimit() - 60
    deep = "[" * depth + "]" * depth
    payload = batch(GW, [GOOD, _with(GOOD, fcnt=3, id=f"{GW}/00000101/3", values={"v": 0.0})]).replace(
        b'"v":0.0', b'"v":' + deep.encode())
    conv = serializer().convert(topic(GW, "sos"), payload)
    _assert_storable(conv)
    assert conv.readings == 1 and [r.reason for r in conv.rejects] == ["invalid_reading"]


# -- the alert loop: the gateway's state and the results of the commands it was sent -----------------------------------
def state_doc(*, gateway: str = GW, ts_us: int = T0_US, on: bool = True, why: str | None = "alert",
              alert: str | None = "sos:00a1b2c3", lamp: str = "alarm", held: dict | None = None,
              acknowledged: tuple[str | None, ...] = (None, "山田 太郎")) -> dict:
    """A ``denen.state/1`` document as the contract writes it (issue 11)."""
    return {"schema": "denen.state/1", "gateway": gateway, "ts_us": ts_us,
            "siren": {"configured": True, "on": on, "why": why, "alert": alert, "silenced": ["river_stage:00000301"]},
            "lamp": {"configured": True, "state": lamp}, "relays": [],
            "held": held or {"active": False, "reason": None, "count": 0, "until_us": None},
            "alerts": [{"key": f"sos:0000010{i}", "id": f"{GW}:sos:0000010{i}#4", "type": "sos", "node": f"0000010{i}",
                        "name": "sos-1", "severity": "emergency", "since_us": T0_US - 60_000_000,
                        "message": "SOS", "value": None, "lat_deg": 35.8, "lon_deg": 139.0, "repeating": by is None,
                        "acknowledged_by": by} for i, by in enumerate(acknowledged)]}


def result_doc(*, gateway: str = GW, ts_us: int = T0_US, command: str = "alert-ack",
               results: list | None = None, **changes: object) -> dict:
    """A ``denen.result/1`` document as the contract writes it (issue 11)."""
    doc = {"schema": "denen.result/1", "gateway": gateway, "ts_us": ts_us, "command": command,
           "request_id": "req-7f3a_01", "by": "山田 太郎", "via": "console",
           "results": results if results is not None else [{"target": "sos:00a1b2c3", "outcome": "stopped"},
                                                           {"target": "trap_fired:7a000001", "outcome": "not_active"}]}
    return doc | changes


def _state(doc: dict | bytes, **kwargs: object) -> Converted:
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    gateway = GW if isinstance(doc, bytes) else doc.get("gateway", GW)
    return serializer(**kwargs).convert(f"denen/v1/{gateway if isinstance(gateway, str) else GW}/state", payload)


def _results(doc: dict | bytes, **kwargs: object) -> Converted:
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return serializer(**kwargs).convert(f"denen/v1/{GW}/results", payload)


def test_a_state_document_is_one_gateway_state_point() -> None:
    conv = _state(state_doc())
    assert not conv.rejects and conv.notes == [] and conv.gateway == GW and conv.readings == 0
    assert conv.lines == [
        f'gateway_state,gateway={GW},site=testville siren_on=1.0,siren_why="alert",siren_alert="sos:00a1b2c3",'
        f'lamp="alarm",held_active=0.0,held_count=0.0,alerts_open=2.0,alerts_unacknowledged=1.0 {T0_US}']
    assert conv.sources == [f"state:{GW}"]


def test_a_silent_siren_and_held_readings_are_written_with_every_field() -> None:
    held = {"active": True, "reason": "clock_unsynced", "count": 37, "until_us": T0_US + 600_000_000}
    conv = _state(state_doc(on=False, why=None, alert=None, lamp="no_backhaul", held=held, acknowledged=()))
    assert conv.lines == [
        f'gateway_state,gateway={GW},site=testville siren_on=0.0,siren_why="",siren_alert="",lamp="no_backhaul",'
        f'held_active=1.0,held_count=37.0,alerts_open=0.0,alerts_unacknowledged=0.0 {T0_US}']


def test_command_results_are_one_point_per_target_a_microsecond_apart() -> None:
    conv = _results(result_doc())
    assert not conv.rejects and conv.gateway == GW and conv.sources == [f"results:{GW}"] * 2
    common = 'by="山田 太郎",request_id="req-7f3a_01",via="console"'
    assert conv.lines == [
        f'command_result,command=alert-ack,gateway={GW},outcome=stopped,site=testville '
        f'target="sos:00a1b2c3",{common} {T0_US}',
        f'command_result,command=alert-ack,gateway={GW},outcome=not_active,site=testville '
        f'target="trap_fired:7a000001",{common} {T0_US + 1}']
    chirp = _results(result_doc(command="test-chirp", request_id=None, by=None, via=None,
                                results=[{"target": None, "outcome": "chirped"}]))
    assert chirp.lines == [f'command_result,command=test-chirp,gateway={GW},outcome=chirped,site=testville '
                           f'target="",by="",request_id="",via="" {T0_US}']
    # The gateway says why a command was invalid; that is not written, the outcome is.
    invalid = _results(result_doc(request_id="req-9", results=[
        {"target": None, "outcome": "invalid", "detail": "by must be text of 1-100 characters"}]))
    [line] = invalid.lines
    assert ",outcome=invalid," in line and "detail" not in line and not invalid.rejects
    # A document without the optional keys is the same as one with nulls.
    bare = {k: v for k, v in result_doc(command="test-chirp", results=[{"target": None, "outcome": "chirped"}]).items()
            if k not in ("request_id", "by", "via")}
    assert _results(bare).lines == chirp.lines


def _state_with(**changes: object) -> dict:
    """A state document with ``part.key`` (or a top-level key) changed; the value None under "DELETE" removes."""
    doc = state_doc()
    for path, value in changes.items():
        holder, key = doc, path
        if "__" in path:
            part, key = path.split("__", 1)
            holder = doc[part]
        if value == "DELETE":
            del holder[key]
        else:
            holder[key] = value
    return doc


@pytest.mark.parametrize(("doc", "reason"), [
    (b"{not json", "invalid_json"),
    (b"[]", "invalid_schema"),
    (json.dumps(_state_with(schema="denen.state/2")).encode(), "unknown_schema"),
    (json.dumps(_state_with(schema=None)).encode(), "invalid_schema"),
    (json.dumps(_state_with(gateway="gw-other")).encode(), "wrong_gateway"),
    (json.dumps(_state_with(extra=1)).encode(), "invalid_schema"),
    (json.dumps(_state_with(siren="DELETE")).encode(), "invalid_schema"),
    (json.dumps(_state_with(siren__on="yes")).encode(), "invalid_schema"),
    (json.dumps(_state_with(siren__on=1)).encode(), "invalid_schema"),
    (json.dumps(_state_with(siren__why="angry")).encode(), "invalid_schema"),
    (json.dumps(_state_with(siren__why=["alert"])).encode(), "invalid_schema"),
    (json.dumps(_state_with(siren__alert=5)).encode(), "invalid_schema"),
    (json.dumps(_state_with(siren__silenced="sos:1")).encode(), "invalid_schema"),
    (json.dumps(_state_with(siren__volume=11)).encode(), "invalid_schema"),
    (json.dumps(_state_with(lamp__state="ok,site=victim")).encode(), "invalid_schema"),
    (json.dumps(_state_with(lamp__state="")).encode(), "invalid_schema"),
    (json.dumps(_state_with(lamp__state="x" * 41)).encode(), "invalid_schema"),
    (json.dumps(_state_with(held__count=-1)).encode(), "invalid_schema"),
    (json.dumps(_state_with(held__count=1.5)).encode(), "invalid_schema"),
    (json.dumps(_state_with(held__reason="bored")).encode(), "invalid_schema"),
    (json.dumps(_state_with(held__until_us="soon")).encode(), "invalid_schema"),
    (json.dumps(_state_with(alerts={})).encode(), "invalid_schema"),
    (json.dumps(_state_with(alerts=[1])).encode(), "invalid_schema"),
    (json.dumps(_state_with(alerts=[{"acknowledged_by": 7}])).encode(), "invalid_schema"),
    (json.dumps(_state_with(relays={})).encode(), "invalid_schema"),
    (json.dumps(_state_with(ts_us="now")).encode(), "invalid_schema"),
    (json.dumps(_state_with(ts_us=EPOCH_FLOOR_US - 1)).encode(), "timestamp_before_2020"),
    (json.dumps(_state_with(ts_us=T0_US + 10**15)).encode(), "timestamp_in_future"),
    (json.dumps(_state_with(siren__alert=LONE)).encode(), "invalid_text"),
    (json.dumps(_state_with(alerts=[{"message": LONE, "acknowledged_by": None}])).encode(), "invalid_text"),
])
def test_a_state_document_that_is_not_the_schema_is_dead_lettered_whole(doc: bytes, reason: str) -> None:
    _assert_dead_lettered_whole(_state(doc, now_us=lambda: T0_US), doc, reason)


def _assert_dead_lettered_whole(conv: Converted, doc: bytes, reason: str) -> None:
    """The whole document is one dead letter (``reason``, its payload as sent) and nothing is written."""
    _assert_storable(conv)
    assert conv.lines == [] and conv.sources == []
    [rej] = conv.rejects
    assert (rej.reason, rej.kind, rej.content) == (reason, "payload", doc) and rej.detail


@pytest.mark.parametrize(("doc", "reason"), [
    (json.dumps(result_doc(schema="denen.result/9")).encode(), "unknown_schema"),
    (json.dumps(result_doc(gateway="gw-other")).encode(), "wrong_gateway"),
    (json.dumps(result_doc(extra=1)).encode(), "invalid_schema"),
    (json.dumps(result_doc(command="reboot")).encode(), "invalid_schema"),
    (json.dumps(result_doc(command="alert-ack,site=victim")).encode(), "invalid_schema"),
    (json.dumps(result_doc(command=["alert-ack"])).encode(), "invalid_schema"),
    (json.dumps(result_doc(results=[])).encode(), "invalid_schema"),
    (json.dumps(result_doc(results={"target": "x", "outcome": "stopped"})).encode(), "invalid_schema"),
    (json.dumps(result_doc(results=[{"target": "x", "outcome": "exploded"}])).encode(), "invalid_schema"),
    (json.dumps(result_doc(results=[{"target": "x", "outcome": "stopped", "extra": 1}])).encode(),
     "invalid_schema"),
    (json.dumps(result_doc(results=[{"target": 5, "outcome": "stopped"}])).encode(), "invalid_schema"),
    (json.dumps(result_doc(results=[{"target": None, "outcome": "invalid", "detail": 5}])).encode(),
     "invalid_schema"),
    (json.dumps(result_doc(request_id="has space")).encode(), "invalid_schema"),
    (json.dumps(result_doc(request_id="r" * 65)).encode(), "invalid_schema"),
    (json.dumps(result_doc(request_id="")).encode(), "invalid_schema"),
    (json.dumps(result_doc(by=["x"])).encode(), "invalid_schema"),
    (json.dumps(result_doc(via="telepathy")).encode(), "invalid_schema"),
    (json.dumps({k: v for k, v in result_doc().items() if k != "command"}).encode(), "invalid_schema"),
    (json.dumps(result_doc(ts_us=5)).encode(), "timestamp_before_2020"),
    (json.dumps(result_doc(ts_us=T0_US + 301_000_000)).encode(), "timestamp_in_future"),
    (json.dumps(result_doc(by=LONE)).encode(), "invalid_text"),
    (json.dumps(result_doc(results=[{"target": LONE, "outcome": "stopped"}])).encode(), "invalid_text"),
])
def test_a_result_document_that_is_not_the_schema_is_dead_lettered_whole(doc: bytes, reason: str) -> None:
    _assert_dead_lettered_whole(_results(doc, now_us=lambda: T0_US), doc, reason)


def test_free_text_of_state_and_results_is_one_string_field_each() -> None:
    hostile = 'a"b\\c\n,d=e f\x00g' + "＼ " + "z" * 2000
    assert "\n" in hostile and "\x00" in hostile and '"' in hostile and "\\" in hostile
    state = _state(state_doc(alert=hostile))
    result = _results(result_doc(by=hostile, results=[{"target": hostile, "outcome": "stopped"}]))
    for conv in (state, result):
        _assert_storable(conv)
        [line] = conv.lines
        assert "\x00" not in line and "\n" not in line
        # The tags are the ones the bridge writes (a comma or an equals sign in the text made none).
        head = re.split(r"(?<!\\) ", line, maxsplit=1)[0]
        assert head == (f"gateway_state,gateway={GW},site=testville" if conv is state else
                        f"command_result,command=alert-ack,gateway={GW},outcome=stopped,site=testville")
    cut = escape_string_field(hostile)
    assert f"siren_alert={cut}," in state.lines[0]
    assert f"target={cut},by={cut}," in result.lines[0]


def test_state_and_results_take_the_registrys_site_and_follow_its_policy() -> None:
    for unknown in ("accept", "refuse"):
        s = Serializer(registry=GatewayRegistry({GW: GatewayInfo("testville")},
                                                unknown=unknown))  # type: ignore[arg-type]
        other = "gw-stranger-07"
        for t, doc in (("state", state_doc(gateway=other)), ("results", result_doc(gateway=other))):
            conv = s.convert(f"denen/v1/{other}/{t}", json.dumps(doc).encode())
            if unknown == "accept":
                assert conv.lines and all(",site=unknown " in ln for ln in conv.lines)
                assert [code for code, _ in conv.notes] == ["unknown_gateway"]
            else:
                assert conv.lines == [] and [r.reason for r in conv.rejects] == ["unknown_gateway"]


def test_a_state_from_a_gateway_whose_clock_was_never_set_is_written_at_the_bridges_time() -> None:
    # The gateway holds its readings because its clock is unsynced: its state is the one thing that says so.
    held = {"active": True, "reason": "clock_unsynced", "count": 12, "until_us": None}
    for stamp in (5_000_000, NOW + 10**15):
        conv = _state(state_doc(ts_us=stamp, held=held), now_us=lambda: NOW)
        assert not conv.rejects and parse_line(conv.lines[0])[3] == NOW
    # The same stamps from a gateway that does not say so are dead-lettered, as a synced reading's.
    for stamp, reason in ((5_000_000, "timestamp_before_2020"), (NOW + 10**15, "timestamp_in_future")):
        assert [r.reason for r in _state(state_doc(ts_us=stamp), now_us=lambda: NOW).rejects] == [reason]
    # A result carries no clock state: dead-lettered.
    assert [r.reason for r in _results(result_doc(ts_us=5_000_000), now_us=lambda: NOW).rejects] == [
        "timestamp_before_2020"]


def test_other_topics_of_a_gateway_are_outside_the_scheme() -> None:
    for t in ("state/x", "result", "cmd/alert-ack", "results/", "State"):
        conv = serializer().convert(f"denen/v1/{GW}/{t}", json.dumps(state_doc()).encode())
        assert conv.lines == [] and [r.reason for r in conv.rejects] == ["invalid_schema"] and conv.gateway is None


# -- the property: whatever the topic and the bytes, convert() returns, and everything it returns can be stored ------
_ANY_CHAR = st.characters(codec=None, exclude_categories=())  # every code point, lone surrogates included
_TEXT = st.one_of(st.text(_ANY_CHAR, max_size=12), st.sampled_from(
    [LONE, "\udfff", "a\\,gateway\\=victim", "ends\\", "\n", "\x00", "\u200b", "🌊", "time", "message", ""]))


def _mostly(good: st.SearchStrategy, bad: st.SearchStrategy = _TEXT) -> st.SearchStrategy:
    """``good`` seven times in eight, else ``bad``: enough documents pass the schema for their text to be written."""
    return st.integers(0, 7).flatmap(lambda i: good if i else bad)


@st.composite
def _hostile_message(draw: st.DrawFn) -> tuple[str, bytes]:
    # Mostly well-formed around the hostile strings, so that they get past the schema checks to the lines.
    gw = draw(st.sampled_from([GW, GW, "gw-stranger-07"])) if draw(st.integers(0, 4)) else draw(_TEXT)
    which = draw(st.sampled_from(["status", "readings", "state", "results"]))
    ts = draw(_mostly(st.just(T0_US), st.sampled_from([NOW + 10**15, 5_000_000]) | st.integers()))
    if which == "status":
        state = draw(st.sampled_from(["online", "offline", "x"]))
        doc: dict = {"schema": "denen.status/1", "gateway": gw, "state": state, "agent": draw(_TEXT), "ts_us": ts}
        t = f"denen/v1/{gw}/status"
    elif which == "state":
        held = {"active": draw(st.booleans()), "reason": draw(_mostly(st.sampled_from(["clock_unsynced", None]))),
                "count": draw(_mostly(st.integers(0, 10**20), st.integers())), "until_us": None}
        doc = state_doc(gateway=gw, ts_us=ts, why=draw(_mostly(st.sampled_from(["alert", "offline", "test", None]))),
                        alert=draw(_TEXT | st.none()), lamp=draw(_mostly(st.sampled_from(["ok", "no_backhaul"]))),
                        held=held, acknowledged=tuple(draw(st.lists(_mostly(st.none()), max_size=3))))
        doc["siren"]["silenced"] = draw(st.lists(_TEXT, max_size=2))
        t = f"denen/v1/{gw}/state"
    elif which == "results":
        entries = [{"target": draw(_TEXT | st.none()), "outcome": draw(_mostly(st.sampled_from(sorted(OUTCOMES))))}
                   for _ in range(draw(_mostly(st.integers(1, 3), st.just(0))))]
        doc = result_doc(gateway=gw, ts_us=ts, command=draw(_mostly(st.sampled_from(sorted(COMMANDS)))),
                         request_id=draw(_mostly(st.sampled_from(["req-1", None]))), by=draw(_TEXT | st.none()),
                         via=draw(_mostly(st.sampled_from(["console", "cli", None]))), results=entries)
        t = f"denen/v1/{gw}/results"
    else:
        readings = []
        for i in range(draw(st.integers(1, 3))):
            base = copy.deepcopy(draw(st.sampled_from([GOOD, ALERT])))
            base.update(fcnt=i, id=f"{gw}/{base['node']}/{i}", name=draw(_TEXT),
                        values=base["values"] | draw(st.dictionaries(_TEXT, st.floats() | st.integers(), max_size=2)))
            if "alert" in base:
                base["alert"].update(message=draw(_TEXT), name=draw(_TEXT))
            if draw(st.integers(0, 3)) == 0:
                base[draw(_TEXT)] = draw(_TEXT)
            readings.append(base)
        site = "testville" if draw(st.integers(0, 3)) else draw(_TEXT)
        doc = json.loads(batch(GW, [GOOD])) | {"gateway": gw, "site": site,
                                               "lane": readings[0]["lane"], "readings": readings}
        t = topic(gw, doc["lane"])
    if draw(st.integers(0, 3)) == 0:
        doc[draw(_TEXT)] = draw(_TEXT)
    ascii_only = draw(st.booleans())
    # ensure_ascii: lone surrogates as \ud800 escapes; otherwise as raw (CESU-8) bytes.
    payload = json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        cut = draw(st.integers(0, len(payload)))
        payload = payload[:cut] + draw(st.binary(max_size=8)) + payload[cut:]
    return (t if draw(st.integers(0, 9)) else draw(_TEXT)), payload


@pytest.mark.parametrize("unknown", ["accept", "refuse"])
@settings(max_examples=400, deadline=None, database=None)
@given(message=_hostile_message() | st.tuples(_TEXT, st.binary(max_size=64)))
def test_convert_never_raises_and_everything_it_returns_can_be_stored(unknown: str,
                                                                      message: tuple[str, bytes]) -> None:
    s = Serializer(registry=GatewayRegistry({GW: GatewayInfo("testville")}, unknown=unknown),  # type: ignore[arg-type]
                   now_us=lambda: NOW)
    conv = s.convert(*message)
    _assert_storable(conv)
    assert len(conv.lines) == len(conv.sources)
    for line in conv.lines:  # and no hostile string made a tag or a measurement of its own
        head = re.split(r"(?<!\\) ", line, maxsplit=1)[0]
        measurement, *tags = re.split(r"(?<!\\),", head)
        keys = [re.split(r"(?<!\\)=", tag, maxsplit=1)[0] for tag in tags]
        assert measurement in MEASUREMENTS and set(keys) <= TAG_KEYS and len(keys) == len(set(keys)), line
        assert "\\\\" not in head
        if measurement == "command_result":  # tags, so only the few known values
            values = dict(tag.split("=", 1) for tag in tags)
            assert values["command"] in COMMANDS and values["outcome"] in OUTCOMES, line


MEASUREMENTS = {"sos", "trap", "water_level", "rain", "tilt", "weather", "heartbeat", "node_health", "gateway_health",
                "alert", "gateway_status", "gateway_state", "command_result"}
TAG_KEYS = {"site", "gateway", "node", "name", "kind", "type", "severity", "command", "outcome"}
