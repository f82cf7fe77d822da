"""Cayenne LPP codec: PROTOCOLS.md §3 vectors, every type both ways, and every malformed input."""

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


# --- PROTOCOLS.md §3 test vectors -------------------------------------------------------------------------------


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


@FAST
@given(st.binary(max_size=40))
def test_random_bytes_raise_only_lpp_error(data: bytes) -> None:
    try:
        records = lpp.decode(data)
    except LppError as exc:
        assert exc.reason in {"lpp_truncated", "lpp_unknown_type"}
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
        ((1, "colour", 1.0), "lpp_unknown_type"),
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
