"""Cayenne LPP codec: docs/protocols.md §3 vectors, every type of the ElectronicCats set both ways (vectors computed
from that library's encoding rules, and the vectors of its own tests), and every malformed input."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.codec import lpp
from drivers.codec.lpp import LPP_TYPES, TYPE_IDS, LppRecord
from drivers.errors import CodecError, LppError

FAST = settings(max_examples=60, deadline=None)


def _close(actual: object, expected: object, type_name: str) -> None:
    """Compare within half a step of the type's resolution (per field for tuples).

    A relative 1e-9 slack absorbs float representation error on exact ties (1.25 hPa -> 1.2 is a true half step).
    """
    spec = LPP_TYPES[TYPE_IDS[type_name]]
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected)
        for field, a, e in zip(spec.fields, actual, expected, strict=True):
            assert abs(a - e) <= field.step / 2 + 1e-9 * max(1.0, abs(e)), (a, e)
    else:
        assert isinstance(actual, (int, float))
        assert abs(actual - expected) <= spec.fields[0].step / 2 + 1e-9 * max(1.0, abs(expected)), (actual, expected)  # type: ignore[operator, arg-type]


# --- docs/protocols.md §3 test vectors -------------------------------------------------------------------------------


def test_vector_two_temperatures() -> None:
    records = lpp.decode(bytes.fromhex("03670110056700FF"))
    assert [(r.channel, r.type, r.name) for r in records] == [(3, 0x67, "temperature"), (5, 0x67, "temperature")]
    _close(records[0].value, 27.2, "temperature")
    _close(records[1].value, 25.5, "temperature")


def test_vector_negative_temperature() -> None:
    (record,) = lpp.decode(bytes.fromhex("0167FFD7"))
    assert record.channel == 1 and record.name == "temperature"
    _close(record.value, -4.1, "temperature")


def test_vector_accelerometer() -> None:
    (record,) = lpp.decode(bytes.fromhex("067104D2FB2E0000"))
    assert (record.channel, record.type, record.name) == (6, 0x71, "accelerometer")
    _close(record.value, (1.234, -1.234, 0.0), "accelerometer")


def test_vector_gps() -> None:
    (record,) = lpp.decode(bytes.fromhex("018806765FF2960A0003E8"))
    assert (record.channel, record.type, record.name) == (1, 0x88, "gps")
    _close(record.value, (42.3519, -87.9094, 10.0), "gps")


def test_section9_trap_body() -> None:
    records = lpp.decode(bytes.fromhex("0100010374014A"))
    assert records[0] == LppRecord(1, 0x00, "digital_input", 1)
    assert (records[1].channel, records[1].name) == (3, "voltage")
    _close(records[1].value, 3.30, "voltage")


@pytest.mark.parametrize(
    "hex_body",
    ["03670110056700FF", "0167FFD7", "067104D2FB2E0000", "018806765FF2960A0003E8", "0100010374014A"],
)
def test_vectors_reencode_byte_for_byte(hex_body: str) -> None:
    records = lpp.decode(bytes.fromhex(hex_body))
    assert lpp.encode((r.channel, r.name, r.value) for r in records).hex().upper() == hex_body


def test_empty_input_is_empty_list() -> None:
    assert lpp.decode(b"") == []
    assert lpp.encode([]) == b""


# --- every type, hand-checked raw bytes ---------------------------------------------------------------------------

# (type name, data bytes, expected value): one example per type, including sign and unsigned edge cases.
TYPE_EXAMPLES = [
    ("digital_input", "01", 1),
    ("digital_output", "FF", 255),
    ("analog_input", "FF38", -2.0),
    ("analog_output", "04D2", 12.34),
    ("generic_sensor", "FFFFFFFF", 4294967295),
    ("illuminance", "FFFF", 65535),
    ("presence", "01", 1),
    ("temperature", "8000", -3276.8),
    ("humidity", "65", 50.5),
    ("accelerometer", "7FFF8000FFFF", (32.767, -32.768, -0.001)),
    ("barometer", "27BC", 1017.2),
    ("voltage", "FFFF", 655.35),  # unsigned: must not turn negative
    ("current", "0BB8", 3.0),
    ("frequency", "000003E8", 1000),
    ("percentage", "64", 100),
    ("altitude", "FF9C", -100),
    ("concentration", "01A4", 420),
    ("power", "8000", 32768),  # unsigned
    ("distance", "80000000", 2147483.648),  # unsigned uint32
    ("energy", "000004D2", 1.234),
    ("direction", "0167", 359),
    ("unix_time", "65A0BC00", 1705032704),
    ("gyrometer", "0064FF9C0000", (1.0, -1.0, 0.0)),
    ("gps", "7FFFFF800000FFFFFF", (838.8607, -838.8608, -0.01)),
    ("switch", "01", 1),
    ("colour", "FF8000", (255, 128, 0)),  # red, green, blue, unscaled
    ("device_id", "00A1B2C3", 0x00A1B2C3),
]


def test_examples_cover_every_type() -> None:
    assert {name for name, _, _ in TYPE_EXAMPLES} == set(TYPE_IDS)


@pytest.mark.parametrize(("name", "data_hex", "expected"), TYPE_EXAMPLES)
def test_each_type_decodes_and_reencodes(name: str, data_hex: str, expected: object) -> None:
    spec = LPP_TYPES[TYPE_IDS[name]]
    body = bytes([9, spec.id]) + bytes.fromhex(data_hex)
    (record,) = lpp.decode(body)
    assert (record.channel, record.type, record.name) == (9, spec.id, name)
    _close(record.value, expected, name)
    if spec.fields[0].divisor == 1 and not spec.is_tuple:
        assert isinstance(record.value, int)  # unscaled types stay integers (device ids, counters, timestamps)
    assert lpp.encode([(9, name, record.value)]) == body
    assert lpp.encode([(9, spec.id, expected)]) == body  # type: ignore[list-item]  # type id works too


def test_device_id_record_as_rak_sends_it() -> None:
    (record,) = lpp.decode(bytes.fromhex("00FF") + bytes.fromhex("DEADBEEF"))
    assert record == LppRecord(0, 255, "device_id", 0xDEADBEEF)


def test_lpp_type_lookup() -> None:
    assert lpp.lpp_type("temperature") is lpp.lpp_type(0x67)
    for bad in ("nope", 0x99, True, None, 1.0):
        with pytest.raises(LppError) as info:
            lpp.lpp_type(bad)  # type: ignore[arg-type]
        assert info.value.reason == "lpp_unknown_type"


# --- malformed input -----------------------------------------------------------------------------------------------


def test_truncated_header() -> None:
    with pytest.raises(LppError) as info:
        lpp.decode(bytes.fromhex("0167011003"))
    assert info.value.reason == "lpp_truncated"
    assert "offset 4" in str(info.value) and "1 left" in str(info.value)


def test_truncated_data() -> None:
    with pytest.raises(LppError) as info:
        lpp.decode(bytes.fromhex("0100010374" + "01"))
    message = str(info.value)
    assert info.value.reason == "lpp_truncated"
    assert "offset 3" in message and "0x74" in message and "voltage" in message
    assert "needs 2" in message and "1 left" in message


def test_truncated_gps_counts_bytes() -> None:
    with pytest.raises(LppError) as info:
        lpp.decode(bytes.fromhex("0188") + bytes(5))
    assert info.value.reason == "lpp_truncated"
    assert "needs 9" in str(info.value) and "5 left" in str(info.value)


def test_unknown_type_names_offset_and_id() -> None:
    with pytest.raises(LppError) as info:
        lpp.decode(bytes.fromhex("016700FF" + "0299AABB"))
    assert info.value.reason == "lpp_unknown_type"
    assert "offset 4" in str(info.value) and "0x99" in str(info.value)


def test_unknown_type_carries_the_records_before_it() -> None:
    """The position of an SOS survives a type this table lacks after it (the frame is still refused)."""
    body = bytes.fromhex("010001" + "018806765FF2960A0003E8" + "05F1" + "0102")
    with pytest.raises(lpp.LppUnknownType) as info:
        lpp.decode(body)
    assert info.value.reason == "lpp_unknown_type" and isinstance(info.value, LppError)
    assert info.value.offset == 14 and "offset 14" in str(info.value) and "0xf1" in str(info.value)
    assert info.value.records == lpp.decode(body[:14])
    assert [r.name for r in info.value.records] == ["digital_input", "gps"]
    with pytest.raises(lpp.LppUnknownType) as first:
        lpp.decode(bytes.fromhex("01F1"))
    assert first.value.records == [] and first.value.offset == 0


@FAST
@given(st.binary(max_size=40))
def test_random_bytes_raise_only_lpp_error(data: bytes) -> None:
    try:
        records = lpp.decode(data)
    except LppError as exc:
        assert exc.reason in {"lpp_truncated", "lpp_unknown_type", "lpp_bad_polyline"}
        assert isinstance(exc, CodecError) and isinstance(exc, ValueError)
    else:
        # Whatever decodes must be a complete, exact parse: re-encoding gives the same bytes.
        assert lpp.encode((r.channel, r.type, r.value) for r in records) == data


def test_decode_accepts_bytearray_and_memoryview() -> None:
    body = bytes.fromhex("03670110056700FF")
    assert lpp.decode(bytearray(body)) == lpp.decode(body) == lpp.decode(memoryview(body))


# --- encoding: rounding and ranges ---------------------------------------------------------------------------------


def test_encode_rounds_to_nearest_step() -> None:
    assert lpp.encode([(1, "temperature", 21.04)]) == bytes.fromhex("016700D2")  # 21.0
    assert lpp.encode([(1, "temperature", 21.06)]) == bytes.fromhex("016700D3")  # 21.1
    assert lpp.encode([(1, "temperature", -4.14)]) == bytes.fromhex("0167FFD7")  # -4.1
    assert lpp.encode([(1, "voltage", 3.3)]) == bytes.fromhex("0174014A")  # 3.3 * 100 is 329.99999999999994
    assert lpp.encode([(1, "humidity", 50.3)]) == bytes.fromhex("016865")  # 50.5, the nearest 0.5 % step


@pytest.mark.parametrize(
    ("name", "value", "range_text"),
    [
        ("temperature", 3276.8, "-3276.8 .. 3276.7 °C"),
        ("temperature", -3276.9, "-3276.8 .. 3276.7 °C"),
        ("voltage", -0.01, "0.0 .. 655.35 V"),
        ("humidity", 128.0, "0.0 .. 127.5 %"),
        ("digital_input", 256, "0 .. 255"),
        ("generic_sensor", 2**32, "0 .. 4294967295"),
        ("generic_sensor", -1, "0 .. 4294967295"),
        ("gps", (838.9, 0.0, 0.0), "-838.8608 .. 838.8607 °"),
        ("accelerometer", (0.0, 0.0, -32.769), "-32.768 .. 32.767 G"),
    ],
)
def test_encode_rejects_out_of_range(name: str, value: object, range_text: str) -> None:
    with pytest.raises(LppError) as info:
        lpp.encode([(2, name, value)])  # type: ignore[list-item]
    assert info.value.reason == "lpp_out_of_range"
    assert name in str(info.value) and range_text in str(info.value)


def test_encode_accepts_exact_limits() -> None:
    assert lpp.encode([(1, "temperature", 3276.7), (1, "temperature", -3276.8)]) == bytes.fromhex("01677FFF01678000")
    assert lpp.encode([(1, "generic_sensor", 2**32 - 1)]) == bytes.fromhex("0164FFFFFFFF")


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ((1, "temperature", math.nan), "lpp_bad_value"),
        ((1, "temperature", math.inf), "lpp_bad_value"),
        ((1, "temperature", "21.5"), "lpp_bad_value"),
        ((1, "temperature", (1.0, 2.0, 3.0)), "lpp_bad_value"),
        ((1, "digital_input", True), "lpp_bad_value"),
        ((1, "gps", 42.0), "lpp_bad_value"),
        ((1, "gps", (42.0, 1.0)), "lpp_bad_value"),
        ((1, "gps", "abc"), "lpp_bad_value"),
        ((1, "gps", (42.0, 1.0, None)), "lpp_bad_value"),
        ((256, "temperature", 1.0), "lpp_bad_channel"),
        ((-1, "temperature", 1.0), "lpp_bad_channel"),
        (("1", "temperature", 1.0), "lpp_bad_channel"),
        ((1, "polyline", 1.0), "lpp_bad_value"),  # a lpp.Polyline
        ((1, "colour", 1.0), "lpp_bad_value"),  # red, green, blue: a 3-tuple
        ((1, 0x99, 1.0), "lpp_unknown_type"),
        ((1, "temperature"), "lpp_bad_value"),
    ],
)
def test_encode_rejects_bad_records(record: tuple, reason: str) -> None:
    with pytest.raises(LppError) as info:
        lpp.encode([record])
    assert info.value.reason == reason


# --- round-trip properties -----------------------------------------------------------------------------------------


@st.composite
def _value_for(draw: st.DrawFn, name: str) -> object:
    """A value inside the representable range of a type, as int for unscaled and float for scaled fields."""
    spec = LPP_TYPES[TYPE_IDS[name]]
    values: list[float] = []
    for field in spec.fields:
        if field.divisor == 1:
            values.append(draw(st.integers(field.raw_min, field.raw_max)))
        else:
            # Stay half a step inside the limits so that rounding cannot push the value out of range.
            low = field.min_value + field.step / 2
            high = field.max_value - field.step / 2
            values.append(draw(st.floats(low, high, allow_nan=False)))
    return tuple(values) if spec.is_tuple else values[0]


@st.composite
def _records(draw: st.DrawFn) -> list[tuple[int, str, object]]:
    names = draw(st.lists(st.sampled_from(sorted(TYPE_IDS)), max_size=6))
    return [(draw(st.integers(0, 255)), name, draw(_value_for(name))) for name in names]


@FAST
@given(_records())
def test_encode_then_decode_within_half_a_step(records: list[tuple[int, str, object]]) -> None:
    decoded = lpp.decode(lpp.encode(records))  # type: ignore[arg-type]
    assert [(r.channel, r.name) for r in decoded] == [(ch, name) for ch, name, _ in records]
    for record, (_, name, value) in zip(decoded, records, strict=True):
        _close(record.value, value, name)


@FAST
@given(st.lists(st.tuples(st.integers(0, 255), st.sampled_from(sorted(LPP_TYPES))), max_size=6), st.randoms())
def test_well_formed_bytes_survive_decode_encode(headers: list[tuple[int, int]], rng: object) -> None:
    body = b"".join(
        bytes([ch, type_id]) + rng.randbytes(LPP_TYPES[type_id].size)  # type: ignore[attr-defined]
        for ch, type_id in headers
    )
    records = lpp.decode(body)
    assert len(records) == len(headers)
    assert lpp.encode((r.channel, r.name, r.value) for r in records) == body


# --- the ElectronicCats CayenneLPP set (src/CayenneLPP.h, 1.6.0) ----------------------------------------------------
# Written out from the library's header (LPP_*, LPP_*_SIZE, LPP_*_MULT, getTypeSigned) and its decoders/decoder.js,
# not from lpp.py: type id -> (library name, data bytes, multiplier per field, signed). Voltage (116) and current
# (117) are unsigned as in decoder.js, the header comments and the other decoders; the library's C++ getTypeSigned
# lists them as signed since 1.6.0 (docs/protocols.md §3 says which denen follows and why).
# Polyline (240) is variable-length and decodes to points, not to one value per field: see the polyline tests below.
_EC_TABLE = """
  0 digital_in    1 1               u      1 digital_out   1 1               u
  2 analog_in     2 100             s      3 analog_out    2 100             s
100 generic       4 1               u    101 luminosity    2 1               u
102 presence      1 1               u    103 temperature   2 10              s
104 humidity      1 2               u    113 accelerometer 6 1000,1000,1000  s
115 pressure      2 10              u    116 voltage       2 100             u
117 current       2 1000            u    118 frequency     4 1               u
120 percentage    1 1               u    121 altitude      2 1               s
125 concentration 2 1               u    128 power         2 1               u
130 distance      4 1000            u    131 energy        4 1000            u
132 direction     2 1               u    133 time          4 1               u
134 gyrometer     6 100,100,100     s    135 colour        3 1,1,1           u
136 gps           9 10000,10000,100 s    142 switch        1 1               u
"""
_EC_CELLS = _EC_TABLE.split()
# type id -> (library name, data bytes, multiplier per field, signed)
EC_TYPES: dict[int, tuple[str, int, tuple[int, ...], bool]] = {
    int(type_id): (name, int(size), tuple(int(m) for m in mults.split(",")), sign == "s")
    for type_id, name, size, mults, sign in zip(*[iter(_EC_CELLS)] * 5, strict=True)
}


def _reference_value(type_id: int, data: bytes) -> object:
    """The library's getValue for each field: big-endian, two's complement when signed, / multiplier."""
    _, size, mults, signed = EC_TYPES[type_id]
    width = size // len(mults)
    values = []
    for i, mult in enumerate(mults):
        raw = int.from_bytes(data[i * width:(i + 1) * width], "big", signed=signed)
        values.append(raw if mult == 1 else raw / mult)
    return tuple(values) if len(mults) > 1 else values[0]


def _edge_data(size: int, fields: int) -> list[bytes]:
    """Raw data that walks each field through zero, one, the sign boundary and all ones."""
    width = size // fields
    patterns = [b"\x00" * width, b"\x00" * (width - 1) + b"\x01", b"\x7f" + b"\xff" * (width - 1),
                b"\x80" + b"\x00" * (width - 1), b"\xff" * width, bytes(range(0x21, 0x21 + width))]
    return [b"".join(patterns[(k + i) % len(patterns)] for i in range(fields)) for k in range(len(patterns))]


def test_every_type_of_the_electroniccats_set_is_known_with_its_size_and_scale() -> None:
    assert set(EC_TYPES) <= set(LPP_TYPES)
    assert set(LPP_TYPES) - set(EC_TYPES) == {255}  # RAK's device id, not an ElectronicCats type
    for type_id, (_, size, mults, signed) in EC_TYPES.items():
        spec = LPP_TYPES[type_id]
        assert spec.size == size, spec.name
        assert tuple(f.divisor for f in spec.fields) == mults, spec.name
        assert all((f.raw_min < 0) == signed for f in spec.fields), spec.name


@pytest.mark.parametrize("type_id", sorted(EC_TYPES))
def test_every_type_decodes_as_the_library_reads_it(type_id: int) -> None:
    _, size, mults, _ = EC_TYPES[type_id]
    for data in _edge_data(size, len(mults)):
        body = bytes([7, type_id]) + data
        (record,) = lpp.decode(body)
        expected = _reference_value(type_id, data)
        assert (record.channel, record.type) == (7, type_id)
        assert record.value == expected, (type_id, data.hex())
        assert type(record.value) is type(expected)  # ints stay ints, scaled values are floats
        assert lpp.encode([(7, type_id, record.value)]) == body


# Vectors from the library's own tests (test/aunit/main.cpp: what its encoder wrote for the given call) and from the
# myDevices documentation; every type of the set appears at least once. Two of the library's expectations are
# not what its encoder writes, and are given here as the encoder writes them: addColour(7, 24, 239, 15) writes
# r, g, b in that order (its test expects 0F EF 18), and addConcentration(4, 4079) writes channel 4 (its test
# expects 05). addGPS(1, 42.3519, ...) writes 0x06765E, because 42.3519f * 10000 truncates to 423518.
LIBRARY_VECTORS: list[tuple[str, list[tuple[int, str, object]]]] = [
    ("0367011002686C", [(3, "temperature", 27.2), (2, "humidity", 54.0)]),
    ("056700FF", [(5, "temperature", 25.5)]),
    ("0567FFD1", [(5, "temperature", -4.7)]),
    ("0180FFFF", [(1, "power", 65535)]),
    ("0164000003E6", [(1, "generic_sensor", 998)]),
    ("067104D2FB2E0000", [(6, "accelerometer", (1.234, -1.234, 0.0))]),
    ("037457B8", [(3, "voltage", 224.56)]),
    ("017500ED", [(1, "current", 0.237)]),
    ("017633BE27A0", [(1, "frequency", 868100000)]),
    ("0579FFEF", [(5, "altitude", -17)]),
    ("047D0FEF", [(4, "concentration", 4079)]),
    ("078718EF0F", [(7, "colour", (24, 239, 15))]),
    ("05800D7A", [(5, "power", 3450)]),
    ("018200000022", [(1, "distance", 0.034)]),
    ("018300795B30", [(1, "energy", 7953.2)]),
    ("01840100", [(1, "direction", 256)]),
    ("018806765EF2960A0003E8", [(1, "gps", (42.3518, -87.9094, 10.0))]),
    ("058E01", [(5, "switch", 1)]),
    ("03670110056700FF", [(3, "temperature", 27.2), (5, "temperature", 25.5)]),
    ("0167FFD7", [(1, "temperature", -4.1)]),
    ("018806765FF2960A0003E8", [(1, "gps", (42.3519, -87.9094, 10.0))]),
    (("010001" "0201FF" "0302FF38" "040304D2" "0565FFFF" "066601" "077327BC" "087864" "098565A0BC00"
      "0A860064FF9C0000"), [(1, "digital_input", 1), (2, "digital_output", 255), (3, "analog_input", -2.0),
                          (4, "analog_output", 12.34), (5, "illuminance", 65535), (6, "presence", 1),
                          (7, "barometer", 1017.2), (8, "percentage", 100), (9, "unix_time", 1705032704),
                          (10, "gyrometer", (1.0, -1.0, 0.0))]),
]


def test_library_vectors_cover_every_type_of_the_set() -> None:
    names = {name for _, records in LIBRARY_VECTORS for _, name, _ in records}
    assert {TYPE_IDS[name] for name in names} == set(EC_TYPES)


@pytest.mark.parametrize(("hex_body", "expected"), LIBRARY_VECTORS)
def test_library_vectors_decode_and_reencode(hex_body: str, expected: list[tuple[int, str, object]]) -> None:
    records = lpp.decode(bytes.fromhex(hex_body))
    assert [(r.channel, r.name) for r in records] == [(ch, name) for ch, name, _ in expected]
    for record, (_, name, value) in zip(records, expected, strict=True):
        assert record.value == value, name
    assert lpp.encode((r.channel, r.type, r.value) for r in records) == bytes.fromhex(hex_body)


# --- polyline (type 240, ElectronicCats src/CayenneLPPPolyline.cpp) ------------------------------------------------
# Data: size byte (the data bytes, itself included), precision byte, int24 latitude and longitude of the start point
# in grid units, then one byte per further point: latitude steps in the low nibble, longitude steps in the high one,
# each signed 4-bit. tests/unit/lpp_vectors.json holds the bytes the library's own encoder writes.

def _polyline(precision: int, *points: tuple[float, float]) -> lpp.Polyline:
    return lpp.Polyline(precision, tuple(points))


def test_polyline_nibbles_are_latitude_low_longitude_high() -> None:
    # start (35.6812, 139.7671) at 0.0001°, then +3/-6 steps (0xA3) and -6/+7 steps (0x7A)
    (record,) = lpp.decode(bytes.fromhex("07F0" "0A" "E3" "0571CC" "1553A7" "A37A"))
    assert (record.channel, record.type, record.name) == (7, lpp.POLYLINE_TYPE, "polyline")
    assert record.value == _polyline(227, (35.6812, 139.7671), (35.6815, 139.7665), (35.6809, 139.7672))
    assert record.value.step_deg == 0.0001


@pytest.mark.parametrize(("precision", "step"), [(1, 0.0001), (199, 0.0199), (227, 0.0001), (234, 0.02),
                                                 (239, 1.0)])
def test_polyline_precision_scales_every_step(precision: int, step: float) -> None:
    factor = round(step * 10_000)
    body = bytes([1, 240, 10, precision]) + (-5).to_bytes(3, "big", signed=True) + (7).to_bytes(3, "big") + b"\x7f\x88"
    (record,) = lpp.decode(body)
    assert record.value.step_deg == step
    # 0x7F: latitude -1 (low nibble F), longitude +7; 0x88: both -8
    assert record.value.points == ((-5 * factor / 10_000, 7 * factor / 10_000),
                                   (-6 * factor / 10_000, 14 * factor / 10_000),
                                   (-14 * factor / 10_000, 6 * factor / 10_000))
    assert lpp.encode([(1, "polyline", record.value)]) == body


def test_polyline_at_its_size_limit_and_between_other_records() -> None:
    body = bytes.fromhex("016700FF") + bytes([2, 240, 255, 227]) + bytes(6) + bytes([0x11] * 247) + bytes.fromhex("0374014A")
    temperature, line, voltage = lpp.decode(body)
    assert (temperature.name, line.name, voltage.name) == ("temperature", "polyline", "voltage")
    assert len(line.value.points) == 248 and line.value.points[-1] == (0.0247, 0.0247)
    assert lpp.encode((r.channel, r.type, r.value) for r in (temperature, line, voltage)) == body


@pytest.mark.parametrize(("hex_body", "reason", "words"), [
    ("01F0", "lpp_truncated", ["offset 0", "polyline", "size byte, 0 left"]),
    ("016700FF01F007E3000000000000", "lpp_bad_polyline", ["offset 4", "size byte 7", "below 8"]),
    ("01F000", "lpp_bad_polyline", ["size byte 0"]),
    ("01F009E3000000000000", "lpp_truncated", ["needs 9 data bytes", "8 left"]),
    ("01F0FFE3000000000000" + "11" * 200, "lpp_truncated", ["needs 255", "208 left"]),
    ("01F008C8000000000000", "lpp_bad_polyline", ["precision byte 200 is reserved"]),
    ("01F00800000000000000", "lpp_bad_polyline", ["precision byte 0 is reserved"]),
    ("01F008F0000000000000", "lpp_bad_polyline", ["precision byte 240 is reserved"]),
])
def test_polyline_malformed(hex_body: str, reason: str, words: list[str]) -> None:
    with pytest.raises(LppError) as info:
        lpp.decode(bytes.fromhex(hex_body))
    assert info.value.reason == reason and not isinstance(info.value, lpp.LppUnknownType)
    assert all(word in str(info.value) for word in words), str(info.value)


def test_unknown_type_after_a_polyline_keeps_the_polyline() -> None:
    body = bytes.fromhex("010001" "07F0" "0AE30571CC1553A7A37A" "05F1" "0102")
    with pytest.raises(lpp.LppUnknownType) as info:
        lpp.decode(body)
    assert info.value.offset == 15 and info.value.records == lpp.decode(body[:15])
    assert info.value.records[1].value.points[-1] == (35.6809, 139.7672)


@pytest.mark.parametrize(("value", "reason", "words"), [
    ((1.0, 2.0), "lpp_bad_value", ["lpp.Polyline"]),
    (_polyline(200, (1.0, 2.0)), "lpp_bad_value", ["precision 200 is reserved"]),
    (_polyline(227), "lpp_out_of_range", ["1 .. 248 points"]),
    (lpp.Polyline(227, ((0.0, 0.0),) * 249), "lpp_out_of_range", ["1 .. 248 points"]),
    (_polyline(227, (1.0,)), "lpp_bad_value", ["pairs"]),
    (_polyline(227, (math.nan, 1.0)), "lpp_bad_value", ["nan"]),
    (_polyline(227, (1.0, "2")), "lpp_bad_value", ["'2'"]),
    (_polyline(227, (839.0, 0.0)), "lpp_out_of_range", ["start point", "-838.8608 .. 838.8607°"]),
    (_polyline(227, (0.0, 0.0), (0.0008, 0.0)), "lpp_out_of_range", ["point 1", "(8, 0) steps", "-8 .. 7"]),
    (_polyline(233, (0.0, 0.0), (0.0, -0.09)), "lpp_out_of_range", ["(0, -9) steps of 0.01°"]),
])
def test_polyline_encode_refuses(value: object, reason: str, words: list[str]) -> None:
    with pytest.raises(LppError) as info:
        lpp.encode([(3, 240, value)])  # type: ignore[list-item]
    assert info.value.reason == reason and all(word in str(info.value) for word in words), str(info.value)


def test_polyline_encode_rounds_each_point_to_its_grid() -> None:
    line = _polyline(233, (12.004, -12.996), (12.0149, -13.0))
    assert lpp.encode([(2, "polyline", line)]) == bytes.fromhex("02F009E90004B0FFFAEC01")
    (record,) = lpp.decode(bytes.fromhex("02F009E90004B0FFFAEC01"))
    assert record.value.points == ((12.0, -13.0), (12.01, -13.0))


@st.composite
def _polylines(draw: st.DrawFn) -> lpp.Polyline:
    precision = draw(st.sampled_from(sorted(lpp.POLYLINE_PRECISIONS)))
    factor = lpp.POLYLINE_PRECISIONS[precision]
    lat, lon = draw(st.integers(-0x800000, 0x7FFFFF)), draw(st.integers(-0x800000, 0x7FFFFF))
    points = [(lat * factor / 10_000, lon * factor / 10_000)]
    for d_lat, d_lon in draw(st.lists(st.tuples(st.integers(-8, 7), st.integers(-8, 7)), max_size=40)):
        lat, lon = lat + d_lat, lon + d_lon
        points.append((lat * factor / 10_000, lon * factor / 10_000))
    return lpp.Polyline(precision, tuple(points))


@FAST
@given(_polylines(), st.integers(0, 255))
def test_polyline_encode_then_decode_is_exact(line: lpp.Polyline, channel: int) -> None:
    body = lpp.encode([(channel, "polyline", line)])
    assert body[2] == len(body) - 2 == 7 + len(line.points)
    assert lpp.decode(body) == [LppRecord(channel, 240, "polyline", line)]


@FAST
@given(st.binary(min_size=6, max_size=6), st.binary(max_size=60), st.sampled_from(sorted(lpp.POLYLINE_PRECISIONS)))
def test_polyline_any_well_sized_bytes_decode_and_reencode(start: bytes, deltas: bytes, precision: int) -> None:
    body = bytes([4, 240, 8 + len(deltas), precision]) + start + deltas
    (record,) = lpp.decode(body)
    assert len(record.value.points) == 1 + len(deltas)
    assert lpp.encode([(4, 240, record.value)]) == body


# --- polyline values of a reading (drivers/codec/kinds.py) ----------------------------------------------------------


def test_polyline_values_in_a_reading_and_back() -> None:
    from drivers.codec import kinds

    body = bytes.fromhex("010001" "07F0" "0AE30571CC1553A7A37A")
    values = kinds.decode_values("sos", lpp.decode(body))
    assert values == {"pressed": 1.0, "ch7_polyline_step_deg": 0.0001, "ch7_polyline_points": 3.0,
                      "ch7_polyline_lat_deg_0": 35.6812, "ch7_polyline_lon_deg_0": 139.7671,
                      "ch7_polyline_lat_deg_1": 35.6815, "ch7_polyline_lon_deg_1": 139.7665,
                      "ch7_polyline_lat_deg_2": 35.6809, "ch7_polyline_lon_deg_2": 139.7672}
    kinds._forget_layouts()
    assert kinds.decode_body("sos", body) == kinds.decode_body("sos", body) == values
    assert not kinds._LAYOUTS  # variable length: no compiled reader
    # encode_values writes precision 1 for 0.0001° (the same step as the library's 227): the same values come back.
    again = kinds.encode_values("sos", values)
    assert again == bytes.fromhex("010001" "07F0" "0A01" "0571CC1553A7A37A")
    assert kinds.decode_values("sos", lpp.decode(again)) == values
    # On a channel the kind owns, a polyline is the wrong type; kept as an extra when salvaged.
    with pytest.raises(CodecError) as wrong:
        kinds.decode_values("sos", lpp.decode(bytes.fromhex("010001" "02F0" "08E3000000000000")))
    assert wrong.value.reason == "kind_bad_type"
    salvaged = kinds.salvage_values("sos", lpp.decode(bytes.fromhex("010001" "02F0" "08E3000000000000")))
    assert salvaged == {"pressed": 1.0, "ch2_polyline_step_deg": 0.0001, "ch2_polyline_points": 1.0,
                        "ch2_polyline_lat_deg_0": 0.0, "ch2_polyline_lon_deg_0": 0.0}


@pytest.mark.parametrize(("change", "words"), [
    ({"ch7_polyline_step_deg": 0.00015}, ["step_deg 0.00015"]),
    ({"ch7_polyline_step_deg": 0.03}, ["step_deg 0.03"]),
    ({"ch7_polyline_points": 2.5}, ["points 2.5"]),
    ({"ch7_polyline_points": 249.0}, ["points 249.0"]),
    ({"ch7_polyline_points": 2.0}, ["missing or unknown ['ch7_polyline_lat_deg_2'", "lon_deg_2"]),
    ({"ch7_polyline_lon_deg_3": 1.0}, ["lon_deg_3"]),
])
def test_polyline_values_that_do_not_make_a_polyline(change: dict[str, float], words: list[str]) -> None:
    from drivers.codec import kinds

    values = {"pressed": 1.0, "ch7_polyline_step_deg": 0.0001, "ch7_polyline_points": 3.0,
              **{f"ch7_polyline_{axis}_deg_{i}": 0.0 for i in range(3) for axis in ("lat", "lon")}}
    values.update(change)
    with pytest.raises(LppError) as info:
        kinds.encode_values("sos", values)
    assert info.value.reason == "lpp_bad_value"
    assert str(info.value).startswith("sos: ch7_polyline ")
    assert all(word.replace("ch7_polyline_", "") in str(info.value) for word in words), str(info.value)
