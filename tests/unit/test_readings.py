"""FrameDecoder: the reading JSON is json.dumps of the reading object, byte for byte, and every check keeps its
reason, its order and its count.

The decoder writes the reading's JSON text field by field instead of calling json.dumps (it is the hot path of the
gateway); these tests hold it to json.dumps on ordinary and on awkward input (escapes, non-ASCII, NaN, None, a
radio name that is not a string), for configured and for accepted unknown nodes.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import parse_config
from agent.gateway import clock
from agent.gateway.journal import Journal
from agent.gateway.reading import (
    ALARM,
    DIAGNOSTICS,
    TELEMETRY,
    NodeState,
    own_reading,
    reading_body,
)
from agent.gateway.readings import FrameDecoder
from drivers.codec import frame as nodeframe
from drivers.codec import kinds
from drivers.types import Uplink
from tests.support.field import NODES, FieldNode, config_text, default_values, node_key

T0_US = 1_764_000_000_000_000
COMPACT: dict[str, Any] = {"separators": (",", ":"), "ensure_ascii": False}


def _node(node_id: int, kind: str, *, name: str, key: bytes | None, radio: str | None = None,
          unauthenticated: str = "reject") -> SimpleNamespace:
    """A stand-in NodeConfig: what FrameDecoder reads of one (the real one restricts names to a safe alphabet)."""
    return SimpleNamespace(id=f"{node_id:08x}", node_id=node_id, name=name, kind=kind, radio=radio,
                           unauthenticated=unauthenticated, key_bytes=lambda: key)


def _config(gateway: str, nodes: list[SimpleNamespace], *, unknown: str = "quarantine", unknown_max: int = 1000,
            forget_after_s: int = 7 * 86400) -> Any:
    return SimpleNamespace(gateway=SimpleNamespace(id=gateway), unknown_nodes=unknown, unknown_nodes_max=unknown_max,
                           unknown_nodes_forget_after_s=forget_after_s, node_by_id={n.node_id: n for n in nodes})


def _frame(node_id: int, counter: int, kind: str, *, key: bytes | None, receipt: bool = False, i: int = 0) -> bytes:
    body = kinds.encode_values(kind, default_values(kind, i))
    return nodeframe.build(node_id, counter, kinds.KIND_CODES[kind], body, key=key, receipt=receipt)


def _assert_json_of_body(out: Any) -> None:
    assert out.entry is not None, out.quarantined
    assert out.entry.body == json.dumps(out.body, **COMPACT)


def test_the_text_is_json_dumps_of_the_reading_for_every_kind(tmp_path: Path) -> None:
    nodes = [FieldNode(n.node_id, n.kind) for n in NODES]
    cfg = parse_config(config_text(port="loop://", mqtt_port=1883, journal=tmp_path / "j.db", nodes=nodes))
    decoder = FrameDecoder(cfg, {})
    for i in range(3):
        for n in nodes:
            for receipt in (False, True):
                payload = n.frame(default_values(n.kind, i), receipt=receipt)
                out = decoder.decode(Uplink("lora0", payload, -97 - i, 6.5 - i, None, T0_US + i))
                _assert_json_of_body(out)
                body = json.loads(out.entry.body)
                assert body["receipt"] is receipt and body["auth"] == "mic" and body["node"] == n.hex
                assert list(body) == ["id", "node", "name", "fcnt", "kind", "lane", "ts_us", "clock", "radio",
                                      "rssi", "snr", "auth", "receipt", "values"]


AWKWARD_STRINGS = ['gw"quoted"', "gw\\back", "gw/ünï/コード", "gw\ttab\n", "gw\u2028sep", "gw\x7f\x01"]


@pytest.mark.parametrize("text", AWKWARD_STRINGS)
def test_escapes_and_non_ascii_are_written_as_json_dumps_writes_them(text: str) -> None:
    key = node_key(0x0A)
    cfg = _config(text, [_node(0x0A, "weather", name=text + "-name", key=key, radio=None)])
    decoder = FrameDecoder(cfg, {})
    out = decoder.decode(Uplink(text + "-radio", _frame(0x0A, 1, "weather", key=key), -80, 7.25, None, T0_US))
    _assert_json_of_body(out)
    assert json.loads(out.entry.body)["id"] == f"{text}/0000000a/1"


@pytest.mark.parametrize(
    ("rssi", "snr"),
    [(None, None), (-80, float("nan")), (-80, float("inf")), (-80, float("-inf")), (-80, -0.0), (-80.5, 3),
     (True, 1e-7), (-128, 1e22), (0, -12.75)],
)
def test_numbers_are_written_as_json_dumps_writes_them(rssi: Any, snr: Any) -> None:
    key = node_key(0x0B)
    decoder = FrameDecoder(_config("gw-a", [_node(0x0B, "trap", name="trap-1", key=key)]), {})
    out = decoder.decode(Uplink("lora0", _frame(0x0B, 7, "trap", key=key), rssi, snr, None, T0_US))
    _assert_json_of_body(out)


def test_a_radio_name_that_is_not_a_string_is_still_json_dumps() -> None:
    key = node_key(0x0C)
    decoder = FrameDecoder(_config("gw-a", [_node(0x0C, "trap", name="trap-1", key=key)]), {})
    for counter, radio in enumerate([None, 5, "lora0", "lora0"], start=1):
        payload = _frame(0x0C, counter, "trap", key=key)
        out = decoder.decode(Uplink(radio, payload, -80, 1.5, None, T0_US + counter * 10**7))  # type: ignore[arg-type]
        _assert_json_of_body(out)


def test_unknown_nodes_accepted_get_a_null_name_and_the_same_json() -> None:
    decoder = FrameDecoder(_config("gw-a", [], unknown="accept"), {})
    out = decoder.decode(Uplink("lora0", _frame(0xDEADBEEF, 3, "rain", key=None), -90, 2.0, None, T0_US))
    _assert_json_of_body(out)
    body = json.loads(out.entry.body)
    assert (body["name"], body["auth"], body["node"]) == (None, "none", "deadbeef")
    # A MIC from a node without a key is still refused, and counted against the node now that it is known.
    out = decoder.decode(Uplink("lora0", _frame(0xDEADBEEF, 4, "rain", key=node_key(1)), -90, 2.0, None, T0_US))
    assert out.quarantined is not None and out.quarantined.reason == "no_key"
    assert decoder.nodes["deadbeef"].frames_bad == 1


@settings(max_examples=150, deadline=None)
@given(
    gateway=st.text(min_size=1, max_size=12),
    name=st.text(max_size=12),
    radio=st.text(max_size=8),
    rssi=st.one_of(st.none(), st.integers(-200, 50), st.floats(allow_nan=True, allow_infinity=True)),
    snr=st.one_of(st.none(), st.integers(-128, 127), st.floats(allow_nan=True, allow_infinity=True)),
    kind=st.sampled_from(sorted(k for k in kinds.KIND_CODES if k != "receipt")),
    ts_us=st.integers(0, 2**63),
    receipt=st.booleans(),
)
def test_any_text_and_numbers_give_json_dumps(gateway: str, name: str, radio: str, rssi: Any, snr: Any, kind: str,
                                              ts_us: int, receipt: bool) -> None:
    key = node_key(0x0D)
    decoder = FrameDecoder(_config(gateway, [_node(0x0D, kind, name=name, key=key)]), {})
    out = decoder.decode(Uplink(radio, _frame(0x0D, 1, kind, key=key, receipt=receipt), rssi, snr, None, ts_us))
    _assert_json_of_body(out)


def test_the_decoder_writes_the_same_reading_object_as_reading_body() -> None:
    key = node_key(0x0E)
    decoder = FrameDecoder(_config("gw-a", [_node(0x0E, "rain", name="rain-1", key=key)]), {})
    out = decoder.decode(Uplink("lora0", _frame(0x0E, 7, "rain", key=key, receipt=True), -91, 3.5, None, T0_US))
    _assert_json_of_body(out)
    expected = reading_body("gw-a", "0000000e", "rain-1", 7, "rain", TELEMETRY, T0_US, out.body["values"],
                            radio="lora0", rssi=-91, snr=3.5, auth="mic", receipt=True)
    assert out.body == expected and list(out.body) == list(expected)


def test_a_local_reading_is_the_same_envelope_with_auth_local() -> None:
    decoder = FrameDecoder(_config("gw-a", [_node(0x0F, "rain", name="rain-2", key=None)]), {})
    entry, body = decoder.local_reading("0000000f", "rain", {"rain_mm": 0.5, "tips": 2.0}, ts_us=T0_US, source="gpio")
    assert (entry.lane, entry.node, entry.fcnt, entry.ts_us) == (TELEMETRY, "0000000f", 1, T0_US)
    assert entry.body == (
        '{"id":"gw-a/0000000f/1","node":"0000000f","name":"rain-2","fcnt":1,"kind":"rain","lane":"telemetry",'
        f'"ts_us":{T0_US},"clock":"{clock.quality(T0_US)}","radio":"gpio","rssi":null,"snr":null,"auth":"local",'
        '"receipt":false,"values":{"rain_mm":0.5,"tips":2.0}}'
    )
    assert json.loads(entry.body) == body


def test_the_gateways_own_readings_are_named_by_the_gateway_and_keep_non_ascii_text() -> None:
    health = own_reading("gw-a", 12, "gateway_health", DIAGNOSTICS, T0_US, {"depth_sos": 0.0, "uptime_s": 3.5})
    quality = clock.quality(T0_US)
    assert (health.lane, health.node, health.fcnt, health.ts_us) == (DIAGNOSTICS, "gateway", 12, T0_US)
    assert health.body == (
        '{"id":"gw-a/gateway/12","node":"gateway","name":"gw-a","fcnt":12,"kind":"gateway_health",'
        f'"lane":"diagnostics","ts_us":{T0_US},"clock":"{quality}","values":{{"depth_sos":0.0,"uptime_s":3.5}}}}'
    )
    alert = own_reading("gw-a", 13, "alert", ALARM, T0_US + 1, {"raised": 1.0}, alert={"id": "gw-a:k#1",
                                                                                         "message": "水位 警戒"})
    assert alert.body == (
        '{"id":"gw-a/gateway/13","node":"gateway","name":"gw-a","fcnt":13,"kind":"alert","lane":"alarm",'
        f'"ts_us":{T0_US + 1},"clock":"{clock.quality(T0_US + 1)}","alert":{{"id":"gw-a:k#1","message":"水位 警戒"}},'
        '"values":{"raised":1.0}}'
    )


# --- checks: order, reasons and counting -----------------------------------------------------------------------------


def test_each_check_gives_its_reason_in_order_and_failures_after_authentication_are_counted() -> None:
    key = node_key(0x21)
    nodes = [
        _node(0x21, "trap", name="trap-1", key=key, radio="lora0"),
        _node(0x22, "trap", name="trap-2", key=None, unauthenticated="reject"),
        _node(0x23, "trap", name="trap-3", key=None, unauthenticated="flag"),
    ]
    decoder = FrameDecoder(_config("gw-a", nodes), {})

    def reason(payload: bytes, radio: str = "lora0") -> str | None:
        out = decoder.decode(Uplink(radio, payload, -80, 5.0, None, T0_US))
        return out.quarantined.reason if out.quarantined is not None else None

    good = _frame(0x21, 10, "trap", key=key)
    assert reason(good[:9]) == "frame_short"
    assert reason(bytes([0x21]) + good[1:]) == "frame_version"
    assert reason(bytes([0x19]) + good[1:]) == "frame_reserved_flag"
    assert reason(nodeframe.build(0x21, 10, 2, b"", key=key, downlink=True)) == "frame_downlink"
    assert reason(_frame(0x99, 1, "trap", key=key)) == "unknown_node"
    assert reason(good, radio="lora1") == "wrong_radio"
    assert decoder.nodes["00000021"].frames_bad == 0  # nothing so far is the node's fault
    assert reason(_frame(0x21, 10, "trap", key=node_key(0x99))) == "bad_mic"
    assert reason(_frame(0x21, 10, "trap", key=None)) == "mic_missing"
    assert reason(_frame(0x22, 1, "trap", key=key)) == "no_key"
    assert reason(_frame(0x22, 1, "trap", key=None)) == "mic_missing"
    assert reason(good) is None
    assert reason(good) == "duplicate"
    assert reason(_frame(0x21, 9, "trap", key=key)) == "replay"
    assert reason(nodeframe.build(0x21, 11, 0x7F, b"", key=key)) == "kind_unexpected"
    assert reason(nodeframe.build(0x21, 12, 0x80, b"", key=key)) == "kind_vendor_codec"
    assert reason(nodeframe.build(0x21, 13, 0x70, b"", key=key)) == "kind_unknown"
    assert reason(nodeframe.build(0x21, 14, 2, b"\x01\x00", key=key)) == "lpp_truncated"
    assert reason(nodeframe.build(0x21, 15, 2, b"\x01\x00\x01\x01\x00\x01", key=key)) == "kind_duplicate_channel"
    assert reason(nodeframe.build(0x21, 16, 2, b"\x03\x74\x01\x68", key=key)) == "kind_missing_channel"
    assert reason(nodeframe.build(0x21, 17, 2, b"\x01\x01\x01", key=key)) == "kind_bad_type"
    assert decoder.nodes["00000021"].frames_bad == 11
    assert decoder.nodes["00000022"].frames_bad == 2
    # The flag policy takes a frame without MIC, marked so.
    out = decoder.decode(Uplink("lora0", _frame(0x23, 1, "trap", key=None), -80, 5.0, None, T0_US))
    assert out.entry is not None and json.loads(out.entry.body)["auth"] == "none"
    # The replay window moved only with the accepted frame.
    assert decoder.nodes["00000021"].last_fcnt == 10


def test_the_body_is_taken_by_the_same_reader_frame_after_frame(tmp_path: Path) -> None:
    """Frames of one layout with ever new values: each reading holds its own values (no reader state leaks)."""
    nodes = [FieldNode(0x00000301, "water_level")]
    cfg = parse_config(config_text(port="loop://", mqtt_port=1883, journal=tmp_path / "j.db", nodes=nodes))
    decoder = FrameDecoder(cfg, {"00000301": NodeState(node="00000301")})
    rng = random.Random(3)
    for i in range(50):
        level = round(rng.uniform(0, 5000), 1)
        battery = round(rng.uniform(2.5, 4.2), 2)
        out = decoder.decode(Uplink("lora0", nodes[0].frame({"level_cm": level, "battery_v": battery}), -80, 5.0,
                                    None, T0_US + i * 10**7))
        _assert_json_of_body(out)
        values = json.loads(out.entry.body)["values"]
        assert math.isclose(values["level_cm"], level, abs_tol=0.05) and values["battery_v"] == battery
        assert decoder.nodes["00000301"].battery_v == battery


def test_an_sos_cut_short_by_an_unknown_lpp_type_keeps_its_position_in_the_quarantine_record(tmp_path: Path) -> None:
    """The frame is refused as before (lpp_unknown_type, counted bad, the replay window stays), and the values
    before the unknown type end the detail as JSON, in the journal's quarantine row as it is."""
    key = node_key(0x41)
    decoder = FrameDecoder(_config("gw-a", [_node(0x41, "sos", name="hiker-1", key=key)]), {})

    def up(payload: bytes, i: int) -> Uplink:
        return Uplink("lora0", payload, -80, 5.0, None, T0_US + i * 10**7)

    assert decoder.decode(up(_frame(0x41, 5, "sos", key=key), 0)).entry is not None
    body = bytes.fromhex("010001" + "028806765FF2960A0003E8" + "03F1" + "0102")  # pressed, a fix, then type 0xF1
    cut = nodeframe.build(0x41, 6, kinds.KIND_CODES["sos"], body, key=key)
    out = decoder.decode(up(cut, 1))
    q = out.quarantined
    assert out.entry is None and q is not None
    assert (q.reason, q.node, q.raw) == ("lpp_unknown_type", "00000041", cut)
    message, marker, values = q.detail.partition("; values before it: ")
    assert marker and "offset 14" in message and "0xf1" in message
    assert json.loads(values) == {"pressed": 1.0, "lat_deg": 42.3519, "lon_deg": -87.9094, "alt_m": 10.0}
    st = decoder.nodes["00000041"]
    assert (st.last_fcnt, st.unsigned_fcnt, st.frames_ok, st.frames_bad) == (5, None, 1, 1)
    # Its counter was not taken: the node's next frame may carry it; below the window is still a replay.
    assert decoder.decode(up(_frame(0x41, 4, "sos", key=key), 2)).quarantined.reason == "replay"
    assert decoder.decode(up(_frame(0x41, 6, "sos", key=key), 3)).entry is not None
    assert st.last_fcnt == 6
    # An unknown type first, or another body error, has no values to keep: the detail is the error alone.
    first = decoder.decode(up(nodeframe.build(0x41, 7, kinds.KIND_CODES["sos"], bytes.fromhex("03F10102"), key=key),
                              4)).quarantined
    assert first.reason == "lpp_unknown_type" and "values before it" not in first.detail
    cut_short = decoder.decode(up(nodeframe.build(0x41, 8, kinds.KIND_CODES["sos"], body[:5], key=key), 5)).quarantined
    assert cut_short.reason == "lpp_truncated" and "values before it" not in cut_short.detail
    # The journal keeps the detail as it is (no schema change): the row holds the position.
    journal = Journal(tmp_path / "j.db", quota_bytes=1 << 20)
    try:
        journal.commit(quarantined=[q])
        [row] = journal.quarantine()
    finally:
        journal.close()
    assert row.detail == q.detail and row.reason == "lpp_unknown_type"


# -- replay windows (issue 10, attack 4) -------------------------------------------------------------------------------


def _keyed_flag_decoder(nodes: dict[str, NodeState] | None = None) -> tuple[FrameDecoder, bytes]:
    key = node_key(0x31)
    cfg = _config("gw-a", [_node(0x31, "trap", name="trap-1", key=key, unauthenticated="flag")])
    return FrameDecoder(cfg, nodes if nodes is not None else {}), key


def _outcome(decoder: FrameDecoder, payload: bytes, i: int = 0) -> str:
    out = decoder.decode(Uplink("lora0", payload, -80, 5.0, None, T0_US + i))
    return out.quarantined.reason if out.quarantined is not None else json.loads(out.entry.body)["auth"]


def test_an_unsigned_frame_never_moves_the_signed_window() -> None:
    decoder, key = _keyed_flag_decoder()
    assert _outcome(decoder, _frame(0x31, 5, "trap", key=key), 1) == "mic"
    # The attack: one frame without MIC at the top of the counter space.
    assert _outcome(decoder, _frame(0x31, 0xFFFF_FFFF, "trap", key=None), 2) == "none"
    st = decoder.nodes["00000031"]
    assert (st.last_fcnt, st.unsigned_fcnt) == (5, 0xFFFF_FFFF)
    # The node's genuine signed frames go on being accepted.
    for i, fcnt in enumerate((6, 7, 100), start=3):
        assert _outcome(decoder, _frame(0x31, fcnt, "trap", key=key), i) == "mic"
    assert st.last_fcnt == 100 and st.unsigned_fcnt == 0xFFFF_FFFF
    # Unsigned frames are what the attacker locked out, and only them.
    assert _outcome(decoder, _frame(0x31, 101, "trap", key=None), 10) == "replay"
    assert _outcome(decoder, _frame(0x31, 0xFFFF_FFFF, "trap", key=None), 11) == "duplicate"


def test_an_unsigned_frame_must_be_above_both_windows_so_it_never_takes_a_genuine_readings_id() -> None:
    decoder, key = _keyed_flag_decoder()
    assert _outcome(decoder, _frame(0x31, 50, "trap", key=key), 1) == "mic"
    # At or below the signed window: the id <gw>/<node>/<fcnt> may belong to a genuine reading.
    assert _outcome(decoder, _frame(0x31, 50, "trap", key=None), 2) == "replay"
    assert _outcome(decoder, _frame(0x31, 10, "trap", key=None), 3) == "replay"
    assert _outcome(decoder, _frame(0x31, 51, "trap", key=None), 4) == "none"
    assert _outcome(decoder, _frame(0x31, 51, "trap", key=None), 5) == "duplicate"  # the radio heard it twice
    # A signed frame is judged by the signed window alone: 51 is free there, so the genuine one gets in.
    assert _outcome(decoder, _frame(0x31, 51, "trap", key=key), 6) == "mic"
    assert _outcome(decoder, _frame(0x31, 51, "trap", key=key), 7) == "duplicate"
    assert _outcome(decoder, _frame(0x31, 49, "trap", key=key), 8) == "replay"


def test_readings_of_a_node_get_strictly_increasing_timestamps_across_both_windows() -> None:
    """InfluxDB keys a point by measurement, tags and ts_us: a signed and an unsigned reading sharing a counter
    must never share a point."""
    decoder, key = _keyed_flag_decoder()
    stamps = []
    for fcnt, k in ((7, None), (7, key), (8, key), (9, None)):
        out = decoder.decode(Uplink("lora0", _frame(0x31, fcnt, "trap", key=k), -80, 5.0, None, T0_US))
        assert out.entry is not None, out.quarantined
        stamps.append(out.entry.ts_us)
    assert stamps == sorted(set(stamps)) and len(stamps) == 4


def test_reset_windows_forgets_both_and_returns_the_old_ones() -> None:
    decoder, key = _keyed_flag_decoder({"00000031": NodeState(node="00000031", last_fcnt=900, unsigned_fcnt=901)})
    assert _outcome(decoder, _frame(0x31, 3, "trap", key=key)) == "replay"
    decoder.dirty.clear()
    assert decoder.reset_windows("00000031") == (900, 901)
    assert "00000031" in decoder.dirty
    assert _outcome(decoder, _frame(0x31, 3, "trap", key=key), 1) == "mic"  # the re-flashed node counts from 0
    assert _outcome(decoder, _frame(0x31, 1, "trap", key=None), 2) == "replay"  # below the signed window
    assert decoder.reset_windows("0000ffff") is None


def test_unknown_nodes_are_bounded_least_recently_heard_dropped_and_configured_ones_kept() -> None:
    key = node_key(0x41)
    counted: dict[str, int] = {}
    cfg = _config("gw-a", [_node(0x41, "trap", name="trap-1", key=key)], unknown="accept", unknown_max=3)
    decoder = FrameDecoder(cfg, {}, count=lambda name, n=1: counted.__setitem__(name, counted.get(name, 0) + n))
    for i, nid in enumerate((0x1001, 0x1002, 0x1003)):
        assert _outcome(decoder, _frame(nid, 1, "trap", key=None), i) == "none"
    assert _outcome(decoder, _frame(0x1001, 2, "trap", key=None), 10) == "none"  # 0x1001 heard again: not the oldest
    for i, nid in enumerate(range(0x2000, 0x2000 + 500), start=20):  # forged ids at volume
        assert _outcome(decoder, _frame(nid, 1, "trap", key=None), i) == "none"
        assert decoder.unknown_tracked <= 3
    assert set(decoder.nodes) == {"00000041", "000021f1", "000021f2", "000021f3"}
    assert counted == {"nodes.unknown_evicted": 500}
    assert {"00001001", "00001002", "00001003"} <= decoder.forgotten
    assert not decoder.forgotten & decoder.dirty
    # A rejected frame from a new unknown id makes no state.
    assert _outcome(decoder, nodeframe.build(0x3000, 1, 0x70, b""), 900) == "kind_unknown"
    assert "00003000" not in decoder.nodes


def test_unknown_nodes_not_heard_for_the_configured_time_are_aged_out_and_loaded_ones_too() -> None:
    day_us = 86400 * 10**6
    loaded = {
        "00005001": NodeState(node="00005001", unsigned_fcnt=4, last_seen_us=T0_US - 9 * day_us),
        "00005002": NodeState(node="00005002", unsigned_fcnt=4, last_seen_us=T0_US - 1 * day_us),
        # Once configured with a key: a signed window is never dropped (an attacker cannot make such state).
        "00005003": NodeState(node="00005003", last_fcnt=7, last_seen_us=T0_US - 90 * day_us),
        "00000041": NodeState(node="00000041", last_fcnt=2, last_seen_us=T0_US - 90 * day_us),
    }
    cfg = _config("gw-a", [_node(0x41, "trap", name="trap-1", key=node_key(0x41))], unknown="accept",
                  forget_after_s=7 * 86400)
    decoder = FrameDecoder(cfg, loaded)
    assert decoder.unknown_tracked == 2
    assert decoder.age_out(T0_US) == 1
    assert set(decoder.nodes) == {"00005002", "00005003", "00000041"} and decoder.forgotten == {"00005001"}
    assert decoder.age_out(T0_US + 7 * day_us) == 1
    assert set(decoder.nodes) == {"00005003", "00000041"}


def test_a_kind_mismatch_is_logged_once_per_node_and_minute(caplog: pytest.LogCaptureFixture) -> None:
    key = node_key(0x51)
    decoder = FrameDecoder(_config("gw-a", [_node(0x51, "trap", name="trap-1", key=key)]), {})
    for fcnt in range(1, 201):
        assert _outcome(decoder, _frame(0x51, fcnt, "rain", key=key), fcnt) == "mic"
    lines = [r for r in caplog.records if "configured as trap but sent rain" in r.getMessage()]
    assert len(lines) == 1
