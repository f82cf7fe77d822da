"""Quick fuzzing of the bridge's payload parser: ``Serializer.convert(topic, payload)`` on mutated reading batches,
status documents and arbitrary bytes; every line it writes must be line protocol InfluxDB can read."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.known import run_or_known
from tests.fuzz.quick import examples, mutated_inputs_test, valid_inputs_test
from tests.fuzz.targets import T0_US, TARGETS, Violation, parse_line_protocol, rejected, run_one

FAST = examples(300)
SOME = 100  # valid inputs per target

lp = TARGETS["lineproto"]
TOPIC = "denen/v1/gw-fuzz-01/readings/sos"

test_convert_mutated_messages = mutated_inputs_test("lineproto", count=FAST.max_examples)
test_convert_accepts_what_gateways_publish = valid_inputs_test("lineproto", count=SOME)


@FAST
@given(st.sampled_from((TOPIC, "denen/v1/gw-fuzz-01/status", "denen/v1/x", "")), st.binary(max_size=80))
def test_convert_arbitrary_payloads(topic: str, payload: bytes) -> None:
    run_or_known(lp, (topic, payload))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@FAST
@given(st.dictionaries(st.sampled_from(("schema", "gateway", "site", "lane", "sent_us", "readings", "x")),
                       json_values, max_size=6))
def test_convert_arbitrary_json_documents(doc: dict) -> None:
    run_or_known(lp, (TOPIC, json.dumps(doc).encode()))


def test_a_reading_before_2020_on_a_clock_called_synced_is_rejected_with_its_reason() -> None:
    reading = {"id": "gw-fuzz-01/00000101/1", "node": "00000101", "fcnt": 1, "kind": "sos", "lane": "sos",
               "ts_us": 1_000_000, "clock": "synced", "values": {"pressed": 1.0}}
    doc = {"schema": "denen.readings/1", "gateway": "gw-fuzz-01", "site": "s", "lane": "sos", "sent_us": T0_US,
           "readings": [reading]}
    assert run_one(lp, (TOPIC, json.dumps(doc).encode())) == rejected("timestamp_before_2020")


def test_line_protocol_reader_follows_influxdb_escaping() -> None:
    m, tags, fields, ts = parse_line_protocol(r'alert,name=a\ b\,c,node=x raised=1.0,message="say \"hi\", ok" 17')
    assert (m, tags, ts) == ("alert", [("name", r"a\ b\,c"), ("node", "x")], "17")
    assert fields == [("raised", "1.0"), ("message", r'"say \"hi\", ok"')]
    for broken in ("m f=1.0", "m 1.0 17", 'm f="open 17', "m f=1.0 1\n7"):
        with pytest.raises(Violation):
            parse_line_protocol(broken)
