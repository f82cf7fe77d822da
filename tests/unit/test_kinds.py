"""Sensor kinds (docs/protocols.md §9 table): names, channel mapping, units, errors and the encode/decode round trip."""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.codec import frame, lpp
from drivers.codec import kinds as kinds_mod
from drivers.codec.kinds import KIND_CODES, KINDS, decode_body, decode_values, encode_values, kind_name
from drivers.codec.lpp import LppRecord
from drivers.errors import CodecError, LppError

FAST = settings(max_examples=40, deadline=None)


def _decode(kind: str, hex_body: str) -> dict[str, float]:
    return decode_values(kind, lpp.decode(bytes.fromhex(hex_body)))


# --- codes and names ----------------------------------------------------------------------------------------------


def test_kind_table_matches_section9() -> None:
    # The table as docs/protocols.md §9 prints it.
    assert dict(KINDS) == {0x01: "sos", 0x02: "trap", 0x03: "water_level", 0x04: "rain", 0x05: "tilt",
                           0x06: "weather", 0x0F: "heartbeat", 0x7F: "receipt"}
    assert {name: code for code, name in KINDS.items()} == dict(KIND_CODES)


@pytest.mark.parametrize("code", [0x80, 0x81, 0xC0, 0xFE])
def test_vendor_range(code: int) -> None:
    assert kind_name(code) == "vendor"


@pytest.mark.parametrize("code", [0x00, 0x07, 0x0E, 0x10, 0x7E, 0xFF, -1, 256])
def test_unknown_codes(code: int) -> None:
    with pytest.raises(CodecError) as info:
        kind_name(code)
    assert info.value.reason == "kind_unknown"


def test_every_named_code_resolves() -> None:
    for code, name in KINDS.items():
        assert kind_name(code) == name


# --- decoding -----------------------------------------------------------------------------------------------------


def test_section9_trap_body() -> None:
    values = _decode("trap", "0100010374014A")
    assert set(values) == {"fired", "battery_v"}
    assert values["fired"] == 1.0
    assert values["battery_v"] == pytest.approx(3.30, abs=0.005)
    assert all(isinstance(v, float) for v in values.values())


def test_section9_full_path_from_wire() -> None:
    data = bytes.fromhex("1100A1B2C30000002A020100010374014AF0CE538F")
    parsed = frame.parse(data)
    assert frame.verify(parsed, bytes(range(16)))
    assert decode_values(kind_name(parsed.kind), lpp.decode(parsed.body)) == {"fired": 1.0, "battery_v": 3.3}


def test_trap_armed() -> None:
    assert _decode("trap", "010000") == {"fired": 0.0}


def test_sos_full() -> None:
    body = "010001" + "018806765FF2960A0003E8".replace("0188", "0288", 1) + "03740172" + "0471000AFFEC03D4"
    values = _decode("sos", body)
    assert values["pressed"] == 1.0
    assert values["lat_deg"] == pytest.approx(42.3519, abs=5e-5)
    assert values["lon_deg"] == pytest.approx(-87.9094, abs=5e-5)
    assert values["alt_m"] == pytest.approx(10.0, abs=0.005)
    assert values["battery_v"] == pytest.approx(3.70, abs=0.005)
    assert (values["accel_x_g"], values["accel_y_g"], values["accel_z_g"]) == pytest.approx((0.01, -0.02, 0.98))


def test_sos_without_fix_is_fine() -> None:
    assert _decode("sos", "010001") == {"pressed": 1.0}


def test_sos_nonzero_digital_input_counts_as_pressed() -> None:
    # Firmware writing C "true" as 0xFF must still raise the alarm.
    assert _decode("sos", "0100FF")["pressed"] == 1.0


def test_water_level_in_cm() -> None:
    # 1.234 m above gauge zero = 123.4 cm
    assert _decode("water_level", "0182000004D2") == {"level_cm": 123.4}


def test_rain_with_tips() -> None:
    values = _decode("rain", "010200FA" + "02640000012C" + "0374014A")
    assert values == {"rain_mm": 2.5, "tips": 300.0, "battery_v": 3.3}


def test_tilt() -> None:
    assert _decode("tilt", "0102FF38" + "02020064") == {"tilt_x_deg": -2.0, "tilt_y_deg": 1.0}


def test_weather_any_subset() -> None:
    assert _decode("weather", "016700D2") == {"temperature_c": 21.0}
    assert _decode("weather", "02688C") == {"humidity_pct": 70.0}
    assert _decode("weather", "047327BC" + "0374014A") == {"pressure_hpa": 1017.2, "battery_v": 3.3}


def test_heartbeat() -> None:
    assert _decode("heartbeat", "0374014A" + "057855") == {"battery_v": 3.3, "battery_pct": 85.0}


def test_receipt_empty() -> None:
    assert decode_values("receipt", []) == {}


def test_extra_channels_are_kept() -> None:
    body = "00FF00A1B2C3" + "0100010374014A" + "07670110" + "0986" + "0064FF9C0000" + "0A8500000001"
    values = _decode("trap", body)
    assert values == {
        "device_id": float(0x00A1B2C3),
        "fired": 1.0,
        "battery_v": 3.3,
        "ch7_temperature": 27.2,
        "ch9_gyrometer_0": 1.0,
        "ch9_gyrometer_1": -1.0,
        "ch9_gyrometer_2": 0.0,
        "ch10_unix_time": 1.0,
    }


def test_a_colour_is_kept_as_red_green_blue_on_its_channel() -> None:
    values = _decode("weather", "01670110" + "0687FF8000")
    assert values == {"temperature_c": 27.2, "ch6_colour_0": 255.0, "ch6_colour_1": 128.0, "ch6_colour_2": 0.0}
    assert all(type(v) is float for v in values.values())
    assert encode_values("weather", values) == bytes.fromhex("01670110" + "0687FF8000")
    # The compiled reader of the layout gives the same values and text as the general path.
    kinds_mod._forget_layouts()
    first = kinds_mod.decode_body_json("weather", bytes.fromhex("016700FA" + "06870A141E"))
    again = kinds_mod.decode_body_json("weather", bytes.fromhex("016700FA" + "06870A141E"))
    assert first == again == ({"temperature_c": 25.0, "ch6_colour_0": 10.0, "ch6_colour_1": 20.0,
                               "ch6_colour_2": 30.0},
                              '{"temperature_c":25.0,"ch6_colour_0":10.0,"ch6_colour_1":20.0,"ch6_colour_2":30.0}')
    assert ("weather", 9) in kinds_mod._LAYOUTS


def test_salvaged_values_are_named_as_in_a_reading_and_refuse_nothing() -> None:
    records = lpp.decode(bytes.fromhex("010001" + "028806765FF2960A0003E8"))
    assert kinds_mod.salvage_values("sos", records) == {"pressed": 1.0, "lat_deg": 42.3519, "lon_deg": -87.9094,
                                                        "alt_m": 10.0}
    # No required channel, a table channel of another type, a value twice, a vendor kind: named, never refused.
    odd = lpp.decode(bytes.fromhex("0374014A" + "02670110" + "0374014B" + "0687010203"))
    assert kinds_mod.salvage_values("sos", odd) == {"battery_v": 3.3, "ch2_temperature": 27.2, "ch6_colour_0": 1.0,
                                                    "ch6_colour_1": 2.0, "ch6_colour_2": 3.0}
    assert kinds_mod.salvage_values("vendor", odd[:2]) == {"ch3_voltage": 3.3, "ch2_temperature": 27.2}
    assert kinds_mod.salvage_values("sos", []) == {}


@pytest.mark.parametrize(
    ("kind", "hex_body", "needle"),
    [
        ("sos", "0374014A", "ch1 digital_input"),
        ("trap", "0374014A", "ch1 digital_input"),
        ("water_level", "0374014A", "ch1 distance"),
        ("rain", "02640000012C", "ch1 analog_input"),
        ("tilt", "010200FA", "ch2 analog_input"),
        ("tilt", "020200FA", "ch1 analog_input"),
        ("weather", "0374014A", "ch1 temperature"),
        ("heartbeat", "057855", "ch3 voltage"),
    ],
)
def test_missing_required_channel(kind: str, hex_body: str, needle: str) -> None:
    with pytest.raises(CodecError) as info:
        _decode(kind, hex_body)
    assert info.value.reason == "kind_missing_channel"
    assert kind in str(info.value) and needle in str(info.value)


@pytest.mark.parametrize(
    ("kind", "hex_body", "needle"),
    [
        ("trap", "01670110", "ch1 is temperature"),
        ("sos", "010001" + "0367FFD7", "expected ch3 voltage"),
        ("water_level", "01020001", "expected ch1 distance"),
        ("weather", "01680A", "expected ch1 temperature"),
        ("trap", "01FF00000001", "expected ch1 digital_input"),  # device id on a table channel is still wrong
    ],
)
def test_wrong_type_on_known_channel(kind: str, hex_body: str, needle: str) -> None:
    with pytest.raises(CodecError) as info:
        _decode(kind, hex_body)
    assert info.value.reason == "kind_bad_type"
    assert needle in str(info.value)


def test_duplicate_channel_is_refused() -> None:
    with pytest.raises(CodecError) as info:
        _decode("trap", "010001" + "010000")
    assert info.value.reason == "kind_duplicate_channel"
    with pytest.raises(CodecError) as info:
        _decode("trap", "010001" + "07670110" + "07670111")
    assert info.value.reason == "kind_duplicate_channel"


def test_vendor_and_unknown_kind() -> None:
    with pytest.raises(CodecError) as info:
        decode_values("vendor", [])
    assert info.value.reason == "kind_vendor_codec"
    with pytest.raises(CodecError) as info:
        encode_values("vendor", {})
    assert info.value.reason == "kind_vendor_codec"
    for call in (lambda: decode_values("flood", []), lambda: encode_values("flood", {})):
        with pytest.raises(CodecError) as info:
            call()
        assert info.value.reason == "kind_unknown"


# --- encoding -----------------------------------------------------------------------------------------------------


def test_encode_section9_trap_body_exactly() -> None:
    assert encode_values("trap", {"fired": 1.0, "battery_v": 3.3}) == bytes.fromhex("0100010374014A")


def test_encode_receipt_is_empty() -> None:
    assert encode_values("receipt", {}) == b""


@pytest.mark.parametrize(
    ("kind", "values", "reason"),
    [
        ("trap", {"battery_v": 3.3}, "kind_missing_value"),
        ("tilt", {"tilt_x_deg": 1.0}, "kind_missing_value"),
        ("weather", {"battery_v": 3.3}, "kind_missing_value"),
        ("heartbeat", {"battery_pct": 50.0}, "kind_missing_value"),
        ("sos", {"pressed": 1.0, "lat_deg": 35.0, "lon_deg": 139.0}, "kind_missing_value"),
        ("trap", {"fired": 0.5}, "kind_bad_value"),
        ("trap", {"fired": 2.0}, "kind_bad_value"),
        ("trap", {"fired": 1.0, "battery_mv": 3300.0}, "kind_unknown_value"),
        ("trap", {"fired": 1.0, "ch1_temperature": 20.0}, "kind_unknown_value"),  # ch1 is the trap's
        ("trap", {"fired": 1.0, "ch7_gps": 1.0}, "kind_unknown_value"),  # tuple type without index
        ("trap", {"fired": 1.0, "ch7_temperature_0": 1.0}, "kind_unknown_value"),  # scalar type with index
        ("trap", {"fired": 1.0, "ch300_temperature": 1.0}, "kind_unknown_value"),
        ("trap", {"fired": 1.0, "ch7_device_id": 1.0}, "kind_unknown_value"),
        ("trap", {"fired": 1.0, "ch7_gyrometer_0": 1.0, "ch7_gyrometer_2": 1.0}, "kind_missing_value"),
        ("trap", {"fired": 1.0, "battery_v": -1.0}, "lpp_out_of_range"),
        ("water_level", {"level_cm": -5.0}, "lpp_out_of_range"),
        ("water_level", {"level_cm": math.nan}, "lpp_bad_value"),
        ("rain", {"rain_mm": "2.5"}, "lpp_bad_value"),
    ],
)
def test_encode_errors(kind: str, values: Mapping[str, float], reason: str) -> None:
    with pytest.raises(CodecError) as info:
        encode_values(kind, values)
    assert info.value.reason == reason
    if reason.startswith("lpp_"):
        assert isinstance(info.value, LppError)


# --- round trip per kind ------------------------------------------------------------------------------------------

_STEP = {
    "pressed": 1.0, "fired": 1.0, "lat_deg": 1e-4, "lon_deg": 1e-4, "alt_m": 0.01, "battery_v": 0.01,
    "accel_x_g": 0.001, "accel_y_g": 0.001, "accel_z_g": 0.001, "level_cm": 0.1, "rain_mm": 0.01, "tips": 1.0,
    "tilt_x_deg": 0.01, "tilt_y_deg": 0.01, "temperature_c": 0.1, "humidity_pct": 0.5, "pressure_hpa": 0.1,
    "battery_pct": 1.0, "device_id": 1.0,
}  # fmt: skip


def _f(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high, allow_nan=False)


_bool = st.sampled_from([0.0, 1.0])
_battery = _f(0.0, 6.0)
_SCHEMAS: dict[str, tuple[dict[str, st.SearchStrategy[float]], list[tuple[str, ...]]]] = {
    # kind: (required keys, optional groups that appear together)
    "sos": (
        {"pressed": _bool},
        [("lat_deg", "lon_deg", "alt_m"), ("battery_v",), ("accel_x_g", "accel_y_g", "accel_z_g")],
    ),
    "trap": ({"fired": _bool}, [("battery_v",)]),
    "water_level": ({"level_cm": _f(0.0, 5000.0)}, [("battery_v",)]),
    "rain": ({"rain_mm": _f(0.0, 300.0)}, [("tips",), ("battery_v",)]),
    "tilt": ({"tilt_x_deg": _f(-90.0, 90.0), "tilt_y_deg": _f(-90.0, 90.0)}, [("battery_v",)]),
    "weather": ({}, [("temperature_c",), ("humidity_pct",), ("pressure_hpa",), ("battery_v",)]),
    "heartbeat": ({"battery_v": _battery}, [("battery_pct",)]),
    "receipt": ({}, []),
}  # fmt: skip
_OPTIONAL = {
    "lat_deg": _f(-90.0, 90.0), "lon_deg": _f(-180.0, 180.0), "alt_m": _f(-500.0, 4000.0), "battery_v": _battery,
    "accel_x_g": _f(-16.0, 16.0), "accel_y_g": _f(-16.0, 16.0), "accel_z_g": _f(-16.0, 16.0),
    "tips": st.integers(0, 2**32 - 1).map(float), "temperature_c": _f(-40.0, 60.0), "humidity_pct": _f(0.0, 100.0),
    "pressure_hpa": _f(800.0, 1100.0), "battery_pct": st.integers(0, 100).map(float),
}  # fmt: skip


@st.composite
def _values(draw: st.DrawFn, kind: str) -> dict[str, float]:
    required, groups = _SCHEMAS[kind]
    values = {key: draw(strategy) for key, strategy in required.items()}
    for group in groups:
        if draw(st.booleans()):
            values.update({key: draw(_OPTIONAL[key]) for key in group})
    if kind == "weather" and not values.keys() & {"temperature_c", "humidity_pct", "pressure_hpa"}:
        values["temperature_c"] = draw(_OPTIONAL["temperature_c"])
    if draw(st.booleans()):
        values["device_id"] = float(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        values["ch20_temperature"] = draw(_OPTIONAL["temperature_c"])
        values.update({f"ch21_accelerometer_{i}": draw(_OPTIONAL["accel_x_g"]) for i in range(3)})
    return values


def test_schemas_cover_every_kind() -> None:
    assert set(_SCHEMAS) == set(KIND_CODES)


@pytest.mark.parametrize("kind", sorted(KIND_CODES))
@FAST
@given(data=st.data())
def test_encode_decode_round_trip(kind: str, data: st.DataObject) -> None:
    values = data.draw(_values(kind))
    body = encode_values(kind, values)
    decoded = decode_values(kind, lpp.decode(body))
    assert set(decoded) == set(values)
    for key, value in values.items():
        step = _STEP.get(key) or (0.1 if key.endswith("temperature") else 0.001)
        assert abs(decoded[key] - value) <= step, (key, value, decoded[key])
        assert isinstance(decoded[key], float)
    # decoding is a fixed point: the decoded values encode to the same body
    assert encode_values(kind, decoded) == body


# --- malformed input never escapes as another exception -----------------------------------------------------------


@FAST
@given(kind=st.sampled_from([*sorted(KIND_CODES), "vendor", "bogus"]), data=st.binary(max_size=30))
def test_random_bodies_raise_only_codec_errors(kind: str, data: bytes) -> None:
    try:
        values = decode_values(kind, lpp.decode(data))
    except CodecError as exc:
        assert exc.reason.startswith(("lpp_", "kind_"))
    else:
        assert all(isinstance(v, float) and math.isfinite(v) for v in values.values())


@FAST
@given(
    kind=st.sampled_from(sorted(KIND_CODES)),
    records=st.lists(
        st.builds(
            lambda ch, type_id, raw: lpp.decode(bytes([ch, type_id]) + raw[: lpp.LPP_TYPES[type_id].size])[0],
            st.integers(0, 6),
            st.sampled_from(sorted(lpp.LPP_TYPES)),
            st.binary(min_size=9, max_size=9),
        ),
        max_size=5,
    ),
)
def test_random_records_raise_only_codec_errors(kind: str, records: list[LppRecord]) -> None:
    try:
        decode_values(kind, records)
    except CodecError as exc:
        assert exc.reason in {"kind_missing_channel", "kind_bad_type", "kind_duplicate_channel"}


# --- decode_body: the compiled readers give exactly what the general path gives ------------------------------------


def _record_bytes(channel: int, type_id: int, raw: bytes) -> bytes:
    return bytes([channel, type_id]) + raw[: lpp.LPP_TYPES[type_id].size]


def _outcome(fn: object, *args: object) -> tuple[str, object]:
    try:
        values = fn(*args)  # type: ignore[operator]
    except CodecError as exc:
        return ("error", (type(exc), exc.reason, str(exc)))
    # Same keys in the same order, and the same floats bit for bit (repr tells 0.1 from 0.1000000001, -0.0 from 0.0).
    return ("values", [(key, type(value), repr(value)) for key, value in values.items()])


# Bodies near the kinds' own layouts: records mostly on the kind's channels with the type the kind expects there,
# some extras and device ids, some wrong types, duplicates and truncations, so that both valid and invalid bodies
# are common.
@st.composite
def _bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from([*sorted(KIND_CODES), "vendor"]))
    table = kinds_mod._TABLE.get(kind)
    expected = {spec.channel: spec.type_id for spec in table.channels} if table is not None else {}
    body = b""
    for _ in range(draw(st.integers(0, 5))):
        if expected and draw(st.integers(0, 9)) < 7:
            channel = draw(st.sampled_from(sorted(expected)))
        else:
            channel = draw(st.integers(0, 9))
        if channel in expected and draw(st.integers(0, 9)) < 8:
            type_id = expected[channel]
        else:
            type_id = draw(st.sampled_from(sorted(lpp.LPP_TYPES)))
        body += _record_bytes(channel, type_id, draw(st.binary(min_size=9, max_size=9)))
    if draw(st.integers(0, 9)) == 0:
        body = body[: draw(st.integers(0, len(body)))]  # truncated
    return kind, body


@settings(max_examples=400, deadline=None)
@given(case=_bodies(), other_raw=st.binary(min_size=60, max_size=60))
def test_decode_body_equals_the_general_path(case: tuple[str, bytes], other_raw: bytes) -> None:
    kind, body = case
    kinds_mod._forget_layouts()
    general = _outcome(lambda k, b: decode_values(k, lpp.decode(b)), kind, body)
    assert _outcome(decode_body, kind, body) == general  # first time: general path, learns the layout
    assert _outcome(decode_body, kind, body) == general  # second time: the compiled reader if it learned one
    if general[0] == "values" and body:
        assert kinds_mod._LAYOUTS, "a decodable body teaches its layout"
        # Same layout, other values: only the record headers are kept, every data byte comes from other_raw.
        same_layout = bytearray(body)
        layout = kinds_mod._LAYOUTS[(kind, len(body))][0]
        header_at = set(layout.headers(range(len(body))))  # type: ignore[arg-type]
        data_at = [i for i in range(len(body)) if i not in header_at]
        for i, value in zip(data_at, other_raw, strict=False):
            same_layout[i] = value
        assert _outcome(decode_body, kind, bytes(same_layout)) == _outcome(
            lambda k, b: decode_values(k, lpp.decode(b)), kind, bytes(same_layout))


def test_decode_body_compiles_one_reader_per_layout_and_checks_every_header() -> None:
    kinds_mod._forget_layouts()
    trap = encode_values("trap", {"fired": 1.0, "battery_v": 3.6})
    assert decode_body("trap", trap) == {"fired": 1.0, "battery_v": 3.6}
    [layout] = kinds_mod._LAYOUTS[("trap", len(trap))]
    assert layout.expected == (1, 0x00, 3, 0x74)
    # A body of the same length whose second record is on another channel is not read by that reader: the
    # general path decides, and here it keeps ch4 as an extra value.
    moved = bytearray(trap)
    moved[3] = 4
    assert decode_body("trap", bytes(moved)) == {"fired": 1.0, "ch4_voltage": 3.6}
    # The same layout as another kind is another reader (the kind decides what a channel means).
    assert decode_body("sos", trap) == {"pressed": 1.0, "battery_v": 3.6}
    assert ("sos", len(trap)) in kinds_mod._LAYOUTS


def test_decode_body_errors_are_those_of_the_general_path() -> None:
    kinds_mod._forget_layouts()
    trap = encode_values("trap", {"fired": 0.0, "battery_v": 3.3})
    decode_body("trap", trap)  # learned
    with pytest.raises(LppError) as truncated:
        decode_body("trap", trap[:-1])
    assert truncated.value.reason == "lpp_truncated"
    wrong_type = bytearray(trap)
    wrong_type[1] = 0x01  # digital_output on ch1: same size, so the same length as the learned layout
    with pytest.raises(CodecError) as bad_type:
        decode_body("trap", bytes(wrong_type))
    assert bad_type.value.reason == "kind_bad_type"
    with pytest.raises(CodecError) as vendor:
        decode_body("vendor", trap)
    assert vendor.value.reason == "kind_vendor_codec"


def test_decode_body_learns_a_bounded_number_of_layouts(monkeypatch: pytest.MonkeyPatch) -> None:
    kinds_mod._forget_layouts()
    monkeypatch.setattr(kinds_mod, "_MAX_LAYOUTS", 3)
    body = encode_values("heartbeat", {"battery_v": 3.6})
    for channel in range(10, 20):  # ten valid layouts of ever more extras, so of ten lengths
        body += _record_bytes(channel, 0x67, b"\x00\x10")
        assert decode_body("heartbeat", body)[f"ch{channel}_temperature"] == 1.6
        assert decode_body("heartbeat", body)[f"ch{channel}_temperature"] == 1.6  # compiled or not, same
    assert sum(map(len, kinds_mod._LAYOUTS.values())) == 3
    # Four layouts of one length at most, whatever the total bound.
    monkeypatch.setattr(kinds_mod, "_MAX_LAYOUTS", 100)
    kinds_mod._forget_layouts()
    for channel in range(10, 20):
        body = encode_values("heartbeat", {"battery_v": 3.6}) + _record_bytes(channel, 0x67, b"\x00\x10")
        assert decode_body("heartbeat", body)[f"ch{channel}_temperature"] == 1.6
    assert sum(map(len, kinds_mod._LAYOUTS.values())) == kinds_mod._MAX_PER_LENGTH
