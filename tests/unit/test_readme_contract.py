"""The README is the written contract for topics and payloads: test the code against its text."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from agent.config import parse_config
from agent.gateway.journal import Journal
from agent.gateway.reading import NodeState
from agent.gateway.publisher import Topics, status_payload
from agent.gateway.readings import FrameDecoder
from drivers.codec import kinds
from drivers.types import Uplink
from tests.support.contract import section, readings_schema
from tests.support.field import NODES, FieldNode, config_text, default_values

def test_readme_schema_is_valid_json_schema() -> None:
    schema = readings_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] == "denen.readings/1"


def test_topic_table_matches_the_code() -> None:
    table = section("## MQTT topics")
    topics = Topics("denen/v1", "<gateway>")
    for lane, topic in topics.readings.items():
        assert f"`{topic}`" in table, lane
    assert f"`{topics.status}`" in table
    assert f"`{topics.commands}`" in table


def test_status_document_matches_readme() -> None:
    text = section("### Status schema")
    doc = json.loads(status_payload("gw-a", "online", version="0.1.0", ts_us=1))
    assert set(doc) == {"schema", "gateway", "state", "agent", "ts_us"}
    for key in doc:
        assert f'"{key}"' in text
    assert doc["schema"] == "denen.status/1" and "denen.status/1" in text


def test_every_kind_value_key_is_documented() -> None:
    table = section("### Values by kind")
    for kind in ("sos", "trap", "water_level", "rain", "tilt", "weather", "heartbeat"):
        row = next(line for line in table.splitlines() if line.startswith(f"| `{kind}`"))
        body = kinds.encode_values(kind, default_values(kind, 1))
        from drivers.codec import lpp

        for key in kinds.decode_values(kind, lpp.decode(body)):
            assert f"`{key}`" in row, (kind, key)


@pytest.mark.parametrize("kind", [n.kind for n in NODES])
def test_readings_built_by_the_agent_validate_against_the_readme_schema(kind: str, tmp_path: Path) -> None:
    nodes = [FieldNode(n.node_id, n.kind) for n in NODES]
    cfg = parse_config(config_text(port="loop://", mqtt_port=1883, journal=tmp_path / "j.db", nodes=nodes))
    decoder = FrameDecoder(cfg, {})
    node = next(n for n in nodes if n.kind == kind)
    out = decoder.decode(Uplink("lora0", node.frame(default_values(kind, 3)), -97, 6.5, None, 1_764_000_000_000_000))
    assert out.entry is not None, out.quarantined
    batch = ('{"schema":"denen.readings/1","gateway":"gw-test-01","site":"testville","lane":"' + json.loads(out.entry.body)["lane"]
             + '","sent_us":1764000000000001,"readings":[' + out.entry.body + "]}")
    jsonschema.validate(json.loads(batch), readings_schema())


def test_gateway_health_reading_validates(tmp_path: Path) -> None:
    from agent.gateway.core import Gateway

    cfg = parse_config(config_text(port="loop://", mqtt_port=1883, journal=tmp_path / "j.db", nodes=[]))
    gw = Gateway(cfg, radios=[])
    entry = gw.health_reading()
    batch = json.loads('{"schema":"denen.readings/1","gateway":"gw-test-01","site":"testville","lane":"diagnostics","sent_us":1,'
                       '"readings":[' + entry.body + "]}")
    jsonschema.validate(batch, readings_schema())
    table = section("### Values by kind")
    row = next(line for line in table.splitlines() if line.startswith("| `gateway_health`"))
    for key in batch["readings"][0]["values"]:
        assert f"`{key}`" in row, key
    gw.journal.close()


def test_a_reading_keeps_its_identity_and_timestamp_across_restarts(tmp_path: Path) -> None:
    """The JSON stored in the journal is what is published on every retry, byte for byte."""
    j = Journal(tmp_path / "j.db", quota_bytes=1 << 20)
    nodes = [FieldNode(n.node_id, n.kind) for n in NODES]
    cfg = parse_config(config_text(port="loop://", mqtt_port=1883, journal=tmp_path / "j.db", nodes=nodes))
    out = FrameDecoder(cfg, {}).decode(Uplink("lora0", nodes[1].frame(default_values("trap", 1)), -80, 7.0, None, 42 * 10**15))
    assert out.entry is not None
    [seq] = j.commit(entries=[out.entry], nodes=[NodeState(node=out.entry.node, last_fcnt=1)])
    j.close()
    j2 = Journal(tmp_path / "j.db", quota_bytes=1 << 20)
    [(seq2, body)] = j2.pending(1, after_seq=0, limit=10)
    assert (seq2, body) == (seq, out.entry.body)
    assert json.loads(body)["ts_us"] == 42 * 10**15
    assert j2.nodes()[out.entry.node].last_fcnt == 1
    j2.close()


def test_node_frame_examples_in_the_readme_are_what_the_codec_builds() -> None:
    from drivers.codec import frame as nodeframe

    text = section("## The denen node frame")
    body = kinds.encode_values("trap", {"fired": 1.0, "battery_v": 3.30})
    plain = nodeframe.build(0x00A1B2C3, 42, kinds.KIND_CODES["trap"], body).hex().upper()
    signed = nodeframe.build(0x00A1B2C3, 42, kinds.KIND_CODES["trap"], body,
                             key=bytes.fromhex("000102030405060708090a0b0c0d0e0f")).hex().upper()
    assert f"`{plain}`" in text and f"`{signed}`" in text
    assert plain == "1000A1B2C30000002A020100010374014A"
    for name, code in kinds.KIND_CODES.items():
        assert f"| {name} | 0x{code:02X} |" in text, name
