"""Every entity the NGSI sink can produce, checked against the published Smart Data Models: each kind's and each
alert type's entity validates (in its keyValues form, as the models' JSON Schemas describe) against the model's
schema.json, and expands with pyld against the models' @context and the NGSI-LD core context with every term
resolved to a model's or the core's IRI (none dropped, none left to the core's default @vocab).

The schemas and contexts are vendored in tests/support/ngsi_schemas/ (source and licence in its README.md):
pysmartdatamodels ships only an attribute database, not the schemas, and the machines have no network.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pyld import jsonld
from referencing import Registry, Resource

from agent.bridge.lineproto import Serializer
from agent.bridge.ngsi_config import DEFAULT_CONTEXTS, Position
from agent.bridge.ngsi_entities import (
    ALERT_CATEGORY,
    DEVICE_PROPERTY,
    Fragment,
    fragments,
    parse_line,
    to_v2,
)
from agent.bridge.registry import GatewayInfo, GatewayRegistry
from agent.bridge.schema import NODE_KINDS
from agent.rules.alert import ALERT_TYPES
from tests.bridge._helpers import batch, reading, topic

SCHEMAS = Path(__file__).resolve().parents[1] / "support" / "ngsi_schemas"
GW = "gw-test-01"
BASE = "https://smart-data-models.github.io/"
#: The $id each vendored schema answers to (its $refs name them so).
SCHEMA_FILES = {
    f"{BASE}data-models/common-schema.json": "common-schema.json",
    f"{BASE}dataModel.Alert/alert-schema.json": "alert-schema.json",
    f"{BASE}dataModel.Device/device-schema.json": "device-schema.json",
    f"{BASE}dataModel.Weather/weather-schema.json": "weather-schema.json",
    f"{BASE}dataModel.Environment/Environment-schema.json": "Environment-schema.json",
}
MODEL_SCHEMAS = {"Alert": "Alert.schema.json", "Device": "Device.schema.json",
                 "WeatherObserved": "WeatherObserved.schema.json", "FloodMonitoring": "FloodMonitoring.schema.json"}
CONTEXT_FILES = dict(zip(DEFAULT_CONTEXTS, ("Device.context.jsonld", "Weather.context.jsonld",
                                            "Environment.context.jsonld", "Alert.context.jsonld",
                                            "ngsi-ld-core-context-v1.6.jsonld"), strict=True))
DEFAULT_VOCAB = "https://uri.etsi.org/ngsi-ld/default-context/"
POSITIONS = {f"{n:08x}": Position(lat_deg=35.80, lon_deg=139.09) for n in range(0x100, 0x800)}

#: One reading of every node kind, with every value its kind has (README "Values by kind").
KIND_VALUES: dict[str, dict[str, float]] = {
    "sos": {"pressed": 1.0, "lat_deg": 35.81, "lon_deg": 139.1, "alt_m": 540.0, "battery_v": 3.7,
            "accel_x_g": 0.1, "accel_y_g": 0.0, "accel_z_g": 1.0},
    "trap": {"fired": 1.0, "battery_v": 3.5},
    "water_level": {"level_cm": 352.5, "battery_v": 3.6},
    "rain": {"rain_mm": 4.5, "tips": 1234.0, "battery_v": 3.6},
    "tilt": {"tilt_x_deg": 1.5, "tilt_y_deg": -0.25, "battery_v": 3.6},
    "weather": {"temperature_c": -3.5, "humidity_pct": 87.0, "pressure_hpa": 1008.2, "battery_v": 3.6},
    "heartbeat": {"battery_v": 3.6, "battery_pct": 81.0},
}


def alert_reading(atype: str, state: str, severity: str, node: str | None, values: dict[str, float],
                  seq: int) -> dict[str, Any]:
    r = reading(GW, 0, seq, "alert", values, name=GW, rssi=None, snr=None)
    r.update(node="gateway", id=f"{GW}/gateway/{seq}", lane="alarm")
    for k in ("radio", "rssi", "snr", "auth", "receipt"):
        r.pop(k)
    r["alert"] = {"id": f"{GW}:{atype}:{node}#{seq}", "key": f"{atype}:{node}", "type": atype, "state": state,
                  "severity": severity, "node": node, "name": "river-1" if node else None,
                  "message": "避難判断水位に到達 / reached \"evacuation\" level (3.5 m); a=b", "unit": "cm",
                  "reading": None}
    return r


def lines_of(readings: list[dict[str, Any]]) -> list[str]:
    serializer = Serializer(registry=GatewayRegistry({GW: GatewayInfo("testville")}),
                            now_us=lambda: 1_767_225_600_000_000 + 10**9)
    conv = serializer.convert(topic(GW, readings[0]["lane"]), batch(GW, readings))
    assert not conv.rejects, conv.rejects
    return conv.lines


def all_entities() -> Iterator[tuple[str, Fragment]]:
    """(what it is, fragment) of every kind (with and without a configured position) and every alert type,
    raised and cleared, for every severity."""
    for n, (kind, values) in enumerate(sorted(KIND_VALUES.items())):
        for positions in (POSITIONS, {}):
            frags, _ = fragments(lines_of([reading(GW, 0x300 + n, 5, kind, values)]), positions)
            for f in frags:
                yield f"{kind} {f.type}{' positioned' if positions else ''}", f
    seq = 20
    for atype in sorted(ALERT_CATEGORY):
        for state, severity in (("raised", "emergency"), ("raised", "warning"), ("cleared", "info")):
            seq += 1
            node = None if atype in ("journal_near_quota", "module_lost", "journal_damaged") else "00000301"
            values = {"raised": 1.0 if state == "raised" else 0.0, "value": 352.5, "threshold": 350.0,
                      "level": 3.0 if severity == "emergency" else 1.0}
            if atype == "sos":
                values |= {"lat_deg": 35.81, "lon_deg": 139.1}
            frags, _ = fragments(lines_of([alert_reading(atype, state, severity, node, values, seq)]), {})
            assert len(frags) == 1
            yield f"alert {atype} {state} {severity}", frags[0]


ENTITIES = list(all_entities())


def key_values(entity: dict[str, Any]) -> dict[str, Any]:
    """The keyValues form the models' JSON Schemas describe."""
    out: dict[str, Any] = {}
    for name, a in entity.items():
        if name in ("id", "type"):
            out[name] = a
        elif name != "@context":
            out[name] = a["object"] if a["type"] == "Relationship" else a["value"]
    return out


@pytest.fixture(scope="module")
def registry() -> Registry:
    resources = [(uri, Resource.from_contents(json.loads((SCHEMAS / name).read_text())))
                 for uri, name in SCHEMA_FILES.items()]
    return Registry().with_resources(resources)


def test_every_kind_and_every_alert_type_is_covered() -> None:
    assert set(DEVICE_PROPERTY) == NODE_KINDS
    assert set(ALERT_TYPES) <= set(ALERT_CATEGORY)  # and journal_damaged, which the README's schema lists
    made = {what.split()[0] for what, _ in ENTITIES}
    assert made == NODE_KINDS | {"alert"}
    types = {f.type for _, f in ENTITIES}
    assert types == {"Device", "WeatherObserved", "FloodMonitoring", "Alert"}


@pytest.mark.parametrize(("what", "frag"), ENTITIES, ids=[w for w, _ in ENTITIES])
def test_entity_validates_against_its_smart_data_model(what: str, frag: Fragment, registry: Registry) -> None:
    schema = json.loads((SCHEMAS / MODEL_SCHEMAS[frag.type]).read_text())
    validator = jsonschema.Draft202012Validator(schema, registry=registry,
                                                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(key_values(frag.entity()))]
    if frag.type == "WeatherObserved" and "positioned" not in what:
        # The model requires location; the bridge knows a weather station's only from sink.ngsi.positions.
        assert errors == ["[]: 'location' is a required property"]
    else:
        assert errors == []


def test_a_broken_entity_fails_its_schema(registry: Registry) -> None:
    """The validation can fail: a severity outside the model's vocabulary, a humidity as a percentage."""
    alert = next(f for w, f in ENTITIES if f.type == "Alert").entity()
    alert["severity"]["value"] = "emergency"
    weather = next(f for w, f in ENTITIES if f.type == "WeatherObserved" and "positioned" in w
                   and "relativeHumidity" in f.attrs).entity()
    weather["relativeHumidity"]["value"] = 87.0
    for entity in (alert, weather):
        schema = json.loads((SCHEMAS / MODEL_SCHEMAS[entity["type"]]).read_text())
        validator = jsonschema.Draft202012Validator(schema, registry=registry)
        assert list(validator.iter_errors(key_values(entity)))


def _load(url: str, options: Any = None) -> dict[str, Any]:
    name = CONTEXT_FILES.get(url)
    if name is None:
        raise jsonld.JsonLdError(f"context {url} is not vendored", "loading remote context failed",
                                 code="loading remote context failed")
    return {"contentType": "application/ld+json", "contextUrl": None, "documentUrl": url,
            "document": json.loads((SCHEMAS / name).read_text())}


def _iris(node: Any, out: list[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(k)
            if k == "@type":
                out.extend(v if isinstance(v, list) else [v])
            _iris(v, out)
    elif isinstance(node, list):
        for v in node:
            _iris(v, out)


@pytest.mark.parametrize(("what", "frag"), ENTITIES, ids=[w for w, _ in ENTITIES])
def test_entity_expands_with_every_term_resolved(what: str, frag: Fragment) -> None:
    entity = frag.entity(DEFAULT_CONTEXTS)
    expanded = jsonld.expand(entity, {"documentLoader": _load})
    assert len(expanded) == 1
    node = expanded[0]
    # Nothing dropped: every attribute of the entity is a property of the expanded node.
    assert len([k for k in node if not k.startswith("@")]) == len(frag.attrs)
    iris: list[str] = []
    _iris(expanded, iris)
    unresolved = sorted({i for i in iris if not i.startswith("@") and not i.startswith(("https://", "http://"))})
    assert unresolved == []
    assert sorted({i for i in iris if i.startswith(DEFAULT_VOCAB)}) == []
    assert node["@id"] == frag.id


def test_an_unknown_term_would_be_caught() -> None:
    """The expansion check can fail: a term no model defines lands in the core's default vocabulary."""
    entity = ENTITIES[0][1].entity(DEFAULT_CONTEXTS)
    entity["tipsCumulative"] = {"type": "Property", "value": 3}
    iris: list[str] = []
    _iris(jsonld.expand(entity, {"documentLoader": _load}), iris)
    assert DEFAULT_VOCAB + "tipsCumulative" in iris


def test_observed_at_is_the_edge_time_and_units_are_un_cefact() -> None:
    r = reading(GW, 0x301, 9, "weather", KIND_VALUES["weather"], ts_us=1_767_225_600_123_456)
    frags, skipped = fragments(lines_of([r]), {})
    assert skipped == 1  # node_health: the same values again
    obs = next(f for f in frags if f.type == "WeatherObserved")
    assert obs.attrs["temperature"] == {"type": "Property", "value": -3.5, "observedAt":
                                        "2026-01-01T00:00:00.123456Z", "unitCode": "CEL"}
    assert obs.attrs["relativeHumidity"]["value"] == 0.87 and obs.attrs["relativeHumidity"]["unitCode"] == "C62"
    assert obs.attrs["atmosphericPressure"]["unitCode"] == "A97"
    assert obs.attrs["refDevice"]["object"] == "urn:ngsi-ld:Device:testville:00000301"
    assert obs.id == "urn:ngsi-ld:WeatherObserved:testville:00000301"


def test_a_reported_position_wins_over_the_configured_one() -> None:
    r = reading(GW, 0x301, 9, "sos", KIND_VALUES["sos"])
    frags, _ = fragments(lines_of([r]), {"00000301": Position(lat_deg=1.0, lon_deg=2.0)})
    assert frags[0].attrs["location"]["value"] == {"type": "Point", "coordinates": [139.1, 35.81, 540.0]}
    assert frags[0].attrs["deviceState"]["value"] == "sos pressed"


def test_alert_state_category_and_source() -> None:
    raised = alert_reading("river_stage", "raised", "emergency", "00000301",
                           {"raised": 1.0, "value": 352.5, "threshold": 350.0, "level": 3.0}, 31)
    cleared = alert_reading("river_stage", "cleared", "info", "00000301", {"raised": 0.0, "level": 0.0}, 32)
    (a,), _ = fragments(lines_of([raised]), {})
    (c,), _ = fragments(lines_of([cleared]), {})
    assert a.id == c.id == "urn:ngsi-ld:Alert:testville:river_stage:00000301"
    assert "validFrom" in a.attrs and "validTo" not in a.attrs and "validTo" in c.attrs
    assert (a.attrs["category"]["value"], a.attrs["subCategory"]["value"], a.attrs["severity"]["value"]) == \
        ("naturalDisaster", "flood", "critical")
    assert c.attrs["subCategory"]["value"] == "floodRisk" and c.attrs["severity"]["value"] == "informational"
    assert a.attrs["alertSource"]["object"] == "urn:ngsi-ld:Device:testville:00000301"
    assert a.attrs["description"]["value"].startswith("避難判断水位に到達")


def test_v2_form_carries_time_and_unit_as_metadata_and_no_character_orion_refuses() -> None:
    alert = next(f for w, f in ENTITIES if f.type == "Alert" and "description" in f.attrs)
    v2 = to_v2(alert)
    assert v2["alertSource"] == {"type": "Relationship", "value": alert.attrs["alertSource"]["object"],
                                 "metadata": {"TimeInstant": {"type": "DateTime",
                                                              "value": alert.attrs["alertSource"]["observedAt"]}}}
    assert not set('<>"\'=;()') & set(v2["description"]["value"])
    weather = next(f for w, f in ENTITIES if f.type == "WeatherObserved" and "temperature" in f.attrs)
    assert to_v2(weather)["temperature"]["metadata"]["unitCode"] == {"type": "Text", "value": "CEL"}


def test_every_line_the_serializer_writes_parses_back() -> None:
    name = 'a, b=c "d (3\' 5")'
    lines = lines_of([reading(GW, 0x301, 9, "weather", KIND_VALUES["weather"], name=name)])
    for line in lines:
        measurement, tags, fields, ts = parse_line(line)
        assert tags["name"] == name and measurement in ("weather", "node_health") and ts > 0
        assert fields["battery_v"] == 3.6
    alert = alert_reading("sos", "raised", "emergency", "00000301", {"raised": 1.0}, 40)
    alert["alert"]["name"] = name
    (line,) = lines_of([alert])
    _, tags, fields, _ = parse_line(line)
    assert tags["name"] == name and fields["message"] == alert["alert"]["message"]
