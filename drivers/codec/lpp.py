"""Cayenne LPP: decode and encode sensor records (docs/protocols.md §3).

A body is a sequence of ``[channel][type][data]`` records, all integers big-endian. This module knows every type in
both tables of §3 (the myDevices originals and the ElectronicCats/RAK extensions) plus RAKwireless' type 255, a
4-byte device id that WisBlock P2P examples put on channel 0 (``WB_DEV_ID`` in ``wisblock_cayenne.h``; the four
bytes are copied in order, so they are read here as one big-endian uint32).

Values are scaled into the unit of the table: ``temperature`` in °C, ``humidity`` in %, ``barometer`` in hPa,
``voltage`` in V, ``distance`` in m, ``accelerometer`` in G, ``gyrometer`` in °/s, ``gps`` as
``(latitude °, longitude °, altitude m)``, ``colour`` as ``(red, green, blue)`` 0..255. Types whose scale is 1 decode
to ``int``, scaled types to ``float`` (computed as ``raw / divisor`` so that ``0x0110`` gives exactly the float
nearest 27.2, not ``272 * 0.1``).

Polyline (type 240, ElectronicCats) is the one variable-length type: its data starts with its own size byte, and it
decodes to a :class:`Polyline` (a track of (latitude °, longitude °) points); it is not in :data:`LPP_TYPES`, whose
types all have a fixed size and struct layout.

An unknown type ends the body (its length is unknown): :class:`LppUnknownType` carries the records read before it,
so that a caller can keep them (an SOS's position before a type this table lacks).

Decoding runs on every received frame, so it is table driven: one dict lookup per record and one precompiled
:class:`struct.Struct` call.
"""

from __future__ import annotations

import math
import numbers
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, TypeAlias

from drivers.errors import LppError

__all__ = [
    "LPP_TYPES",
    "POLYLINE_PRECISIONS",
    "POLYLINE_TYPE",
    "TYPE_IDS",
    "LppField",
    "LppRecord",
    "LppType",
    "LppUnknownType",
    "LppValue",
    "Polyline",
    "decode",
    "encode",
    "lpp_type",
]



@dataclass(frozen=True, slots=True)
class Polyline:
    """The value of a polyline record (type 240): a track of points, e.g. the path a tracker walked.

    Attributes:
        precision: the precision byte as sent: 1..199 means a step of that many 0.0001°, 227..239 the library's
            named steps (:data:`POLYLINE_PRECISIONS`).
        points: ``(latitude °, longitude °)`` per point, in wire order (the start point first).
    """

    precision: int
    points: tuple[tuple[float, float], ...]

    @property
    def step_deg(self) -> float:
        """Grid of the points, in degrees (0.0001° times the precision's factor)."""
        return POLYLINE_PRECISIONS[self.precision] / 10_000

    def values(self) -> list[tuple[str, float]]:
        """The polyline as named floats: ``step_deg``, ``points`` (the count), then ``lat_deg_<i>``, ``lon_deg_<i>``
        per point (``i`` from 0, wire order)."""
        named = [("step_deg", self.step_deg), ("points", float(len(self.points)))]
        for index, (lat, lon) in enumerate(self.points):
            named += ((f"lat_deg_{index}", float(lat)), (f"lon_deg_{index}", float(lon)))
        return named

    @classmethod
    def from_values(cls, values: Mapping[str, float], what: str = "polyline") -> Polyline:
        """The polyline that :meth:`values` names (the precision byte is the step's own: 1..199, else 234..239).

        ``what`` starts each error message (e.g. ``sos: ch7_polyline``).

        Raises:
            LppError: ``lpp_bad_value`` when the step is no precision's, the count is not 1..248, or a name is
                missing or left over.
        """
        step, count = values.get("step_deg"), values.get("points")
        units = step * 10_000 if isinstance(step, (int, float)) and math.isfinite(step) else 0.5
        precision = _PRECISION_OF_FACTOR.get(round(units)) if abs(units - round(units)) < 1e-6 else None
        if precision is None:
            raise LppError("lpp_bad_value", f"{what} step_deg {step!r} is not 0.0001 x a precision's factor "
                                            "(1..199, 200, 500, 1000, 2000, 5000, 10000)")
        if not isinstance(count, (int, float)) or count not in range(1, _POLYLINE_MAX_POINTS + 1):
            raise LppError("lpp_bad_value", f"{what} points {count!r} is not a count 1..{_POLYLINE_MAX_POINTS}")
        names = [f"{axis}_deg_{index}" for index in range(int(count)) for axis in ("lat", "lon")]
        if set(values) != {"step_deg", "points", *names}:
            odd = sorted(set(values).symmetric_difference({"step_deg", "points", *names}))
            raise LppError("lpp_bad_value", f"{what} of {int(count)} points: missing or unknown {odd}")
        return cls(precision, tuple((values[names[i]], values[names[i + 1]]) for i in range(0, len(names), 2)))


LppValue: TypeAlias = float | int | tuple[float, ...] | Polyline
"""A decoded value: int for unscaled types, float for scaled ones, a 3-tuple for vector, colour and gps types, a
:class:`Polyline` for type 240."""

# Value shapes of an LPP type.
_SCALAR: Final = 0
_VECTOR: Final = 1  # three fields of the same scale (accelerometer, gyrometer)
_GPS: Final = 2  # three int24 fields, read as (int8 high, uint16 low) pairs because struct has no 24-bit code
_TRIPLE: Final = 3  # three unscaled fields, read as they are (colour: red, green, blue)


@dataclass(frozen=True, slots=True)
class LppField:
    """One numeric field of an LPP type.

    Attributes:
        divisor: raw integer / divisor = value in ``unit`` (1 for unscaled types).
        raw_min: smallest raw integer the field can carry.
        raw_max: largest raw integer the field can carry.
        unit: unit of the scaled value ('' when dimensionless).
    """

    divisor: int
    raw_min: int
    raw_max: int
    unit: str

    @property
    def step(self) -> float:
        """Resolution of the field, in ``unit``."""
        return 1 / self.divisor

    @property
    def min_value(self) -> float | int:
        """Smallest encodable value, in ``unit``."""
        return self.raw_min if self.divisor == 1 else self.raw_min / self.divisor

    @property
    def max_value(self) -> float | int:
        """Largest encodable value, in ``unit``."""
        return self.raw_max if self.divisor == 1 else self.raw_max / self.divisor


@dataclass(frozen=True, slots=True)
class LppType:
    """Description of one LPP type.

    Attributes:
        id: the type byte (IPSO object id - 3200), e.g. 0x67 for temperature.
        name: stable snake_case name, e.g. ``temperature``.
        size: number of data bytes after the channel and type bytes.
        fields: one field for scalar types, three for accelerometer, gyrometer, colour and gps.
        codec: precompiled big-endian struct for the data bytes.
        shape: internal value shape (scalar, vector, gps).
    """

    id: int
    name: str
    size: int
    fields: tuple[LppField, ...]
    codec: struct.Struct
    shape: int

    @property
    def is_tuple(self) -> bool:
        """True when the value is a 3-tuple (accelerometer, gyrometer, colour, gps)."""
        return self.shape != _SCALAR


@dataclass(frozen=True, slots=True)
class LppRecord:
    """One decoded LPP record.

    Attributes:
        channel: LPP channel, 0..255.
        type: LPP type id, e.g. 0x67.
        name: type name, e.g. ``temperature``, ``gps``, ``device_id``, ``polyline``.
        value: scaled into the table's unit; ``gps`` -> (lat °, lon °, alt m); accelerometer/gyrometer -> (x, y, z);
            ``colour`` -> (red, green, blue) ints; ``polyline`` -> :class:`Polyline`.
    """

    channel: int
    type: int
    name: str
    value: LppValue


class LppUnknownType(LppError):
    """``lpp_unknown_type``: a record's type byte is in no table, so the body cannot be read past it.

    Attributes:
        offset: where the unknown record starts in the body (its channel byte).
        records: the records before it, decoded (empty when the unknown record comes first).
    """

    def __init__(self, message: str, offset: int, records: list[LppRecord]) -> None:
        super().__init__("lpp_unknown_type", message)
        self.offset = offset
        self.records = records


_U8 = (0, 0xFF)
_U16 = (0, 0xFFFF)
_S16 = (-0x8000, 0x7FFF)
_U32 = (0, 0xFFFF_FFFF)
_S24 = (-0x80_0000, 0x7F_FFFF)


def _scalar(type_id: int, name: str, fmt: str, raw_range: tuple[int, int], divisor: int, unit: str) -> LppType:
    codec = struct.Struct(">" + fmt)
    return LppType(type_id, name, codec.size, (LppField(divisor, *raw_range, unit),), codec, _SCALAR)


def _vector(type_id: int, name: str, divisor: int, unit: str) -> LppType:
    field = LppField(divisor, *_S16, unit)
    return LppType(type_id, name, 6, (field, field, field), struct.Struct(">hhh"), _VECTOR)


_COLOUR_TYPE = LppType(
    135, "colour", 3, (LppField(1, *_U8, ""),) * 3, struct.Struct(">BBB"), _TRIPLE
)

_GPS_TYPE = LppType(
    0x88,
    "gps",
    9,
    (LppField(10_000, *_S24, "°"), LppField(10_000, *_S24, "°"), LppField(100, *_S24, "m")),
    struct.Struct(">bHbHbH"),
    _GPS,
)

_ALL_TYPES: tuple[LppType, ...] = (
    # myDevices Cayenne LPP (docs/protocols.md §3, first table)
    _scalar(0, "digital_input", "B", _U8, 1, ""),
    _scalar(1, "digital_output", "B", _U8, 1, ""),
    _scalar(2, "analog_input", "h", _S16, 100, ""),
    _scalar(3, "analog_output", "h", _S16, 100, ""),
    _scalar(101, "illuminance", "H", _U16, 1, "lux"),
    _scalar(102, "presence", "B", _U8, 1, ""),
    _scalar(103, "temperature", "h", _S16, 10, "°C"),
    _scalar(104, "humidity", "B", _U8, 2, "%"),
    _vector(113, "accelerometer", 1000, "G"),
    _scalar(115, "barometer", "H", _U16, 10, "hPa"),
    _vector(134, "gyrometer", 100, "°/s"),
    _GPS_TYPE,
    # ElectronicCats / RAK_LPP extended types (§3, second table)
    _scalar(100, "generic_sensor", "I", _U32, 1, ""),
    _scalar(116, "voltage", "H", _U16, 100, "V"),
    _scalar(117, "current", "H", _U16, 1000, "A"),
    _scalar(118, "frequency", "I", _U32, 1, "Hz"),
    _scalar(120, "percentage", "B", _U8, 1, "%"),
    _scalar(121, "altitude", "h", _S16, 1, "m"),
    _scalar(125, "concentration", "H", _U16, 1, "ppm"),
    _scalar(128, "power", "H", _U16, 1, "W"),
    _scalar(130, "distance", "I", _U32, 1000, "m"),
    _scalar(131, "energy", "I", _U32, 1000, "kWh"),
    _scalar(132, "direction", "H", _U16, 1, "°"),
    _scalar(133, "unix_time", "I", _U32, 1, "s"),
    _COLOUR_TYPE,
    # The table says "uint8 0/1"; any uint8 is accepted both ways so that decode and encode stay exact inverses.
    _scalar(142, "switch", "B", _U8, 1, ""),
    # RAKwireless WisBlock P2P device id (WB_DEV_ID = 255, 4 bytes).
    _scalar(255, "device_id", "I", _U32, 1, ""),
)

LPP_TYPES: Final[Mapping[int, LppType]] = MappingProxyType({t.id: t for t in _ALL_TYPES})
"""Every known fixed-size LPP type, by type id (all but :data:`POLYLINE_TYPE`)."""

TYPE_IDS: Final[Mapping[str, int]] = MappingProxyType({t.name: t.id for t in _ALL_TYPES})
"""Type id by type name."""

POLYLINE_TYPE: Final = 240
"""ElectronicCats' polyline type (``LPP_POLYLINE``): variable length, decoded to a :class:`Polyline`."""

POLYLINE_PRECISIONS: Final[Mapping[int, int]] = MappingProxyType({
    **{byte: byte for byte in range(1, 200)},
    227: 1, 228: 2, 229: 5, 230: 10, 231: 20, 232: 50, 233: 100, 234: 200, 235: 500, 236: 1000, 237: 2000,
    238: 5000, 239: 10_000,
})
"""Polyline precision byte -> grid factor (step = factor x 0.0001°), as ElectronicCats' ``getFactor``; the other
bytes (0, 200..226, 240..255) are reserved."""

# Factor -> the precision byte that says it (1..199 themselves; the larger factors only by a named byte).
_PRECISION_OF_FACTOR: Final = {factor: byte for byte, factor in sorted(POLYLINE_PRECISIONS.items(), reverse=True)}

_POLYLINE_HEAD: Final = 8  # size byte, precision byte, int24 latitude, int24 longitude (LPP_MIN_POLYLINE_SIZE)
_POLYLINE_MAX_POINTS: Final = 0xFF - _POLYLINE_HEAD + 1  # the size byte counts the head and one byte per next point
_POLYLINE_START: Final = struct.Struct(">BbHbH")  # precision, then two int24 as (int8 high, uint16 low)
# Delta byte -> (latitude, longitude) steps. The library copies a C struct {int8_t dLat:4; int8_t dLon:4;} into the
# byte; on the little-endian ABIs it builds for (x86, ARM, ESP32) dLat is the low nibble and dLon the high one,
# each a signed 4-bit number (-8..7).
_NIBBLE_PAIRS: Final = tuple(((b & 0xF) - ((b & 0x8) << 1), (b >> 4) - ((b & 0x80) >> 3)) for b in range(256))

# Hot-path table: type id -> (name, size, unpack_from, divisor of field 0, shape).
_DECODE: Final[dict[int, tuple[str, int, Callable[..., tuple[int, ...]], int, int]]] = {
    t.id: (t.name, t.size, t.codec.unpack_from, t.fields[0].divisor, t.shape) for t in _ALL_TYPES
}


def lpp_type(type_: str | int) -> LppType:
    """Look up an LPP type by name (``'temperature'``) or id (``0x67``).

    Raises:
        LppError: ``lpp_unknown_type`` when no such type is known.
    """
    found: LppType | None = None
    if isinstance(type_, str):
        found = LPP_TYPES.get(TYPE_IDS.get(type_, -1))
    elif isinstance(type_, int) and not isinstance(type_, bool):
        found = LPP_TYPES.get(type_)
    if found is None:
        raise LppError("lpp_unknown_type", f"unknown LPP type {type_!r}")
    return found


def decode(data: bytes | bytearray | memoryview) -> list[LppRecord]:
    """Decode a Cayenne LPP body.

    Args:
        data: the LPP bytes (bytes, bytearray or memoryview).

    Returns:
        The records in wire order; an empty list for empty input.

    Raises:
        LppError: ``lpp_truncated`` when a record header or its data runs past the end (the message gives the
            offset, the type and how many bytes were needed and left); ``lpp_bad_polyline`` for a polyline whose
            size byte is below its 8-byte head or whose precision byte is reserved; ``lpp_unknown_type`` for a
            type byte in no table (:class:`LppUnknownType`, with the offset, the type id and the records before it).
    """
    records: list[LppRecord] = []
    end = len(data)
    pos = 0
    while pos < end:
        if pos + 2 > end:
            raise LppError(
                "lpp_truncated",
                f"LPP record at offset {pos}: header needs 2 bytes (channel, type), {end - pos} left",
            )
        channel = data[pos]
        type_id = data[pos + 1]
        spec = _DECODE.get(type_id)
        if spec is None:
            if type_id == POLYLINE_TYPE:
                pos = _read_polyline(data, pos, end, records)
                continue
            raise LppUnknownType(
                f"LPP record at offset {pos}: unknown type 0x{type_id:02x} ({type_id}) on channel {channel}",
                pos, records,
            )
        name, size, unpack, divisor, shape = spec
        start = pos + 2
        pos = start + size
        if pos > end:
            raise LppError(
                "lpp_truncated",
                f"LPP record at offset {start - 2}: type 0x{type_id:02x} ({name}) needs {size} data bytes, "
                f"{end - start} left",
            )
        raw = unpack(data, start)
        value: LppValue
        if shape == _SCALAR:
            value = raw[0] if divisor == 1 else raw[0] / divisor
        elif shape == _VECTOR:
            value = (raw[0] / divisor, raw[1] / divisor, raw[2] / divisor)
        elif shape == _TRIPLE:
            value = raw
        else:  # _GPS: int24 = signed high byte * 65536 + unsigned low 16 bits
            value = (
                (raw[0] * 65536 + raw[1]) / 10_000,
                (raw[2] * 65536 + raw[3]) / 10_000,
                (raw[4] * 65536 + raw[5]) / 100,
            )
        records.append(LppRecord(channel, type_id, name, value))
    return records


def _read_polyline(data: bytes | bytearray | memoryview, at: int, end: int, records: list[LppRecord]) -> int:
    """Append the polyline record whose channel byte is at ``at``; return where the next record starts.

    Each point is ``grid units x factor / 10000`` degrees, as the library's ``CayenneLPPPolyline::decode`` computes it
    (in exact integers here, where the library's int32 would overflow for the coarsest steps).
    """
    start = at + 2
    where = f"LPP record at offset {at}: type 0x{POLYLINE_TYPE:02x} (polyline)"
    if start >= end:
        raise LppError("lpp_truncated", f"{where} needs a size byte, 0 left")
    size = data[start]
    if size < _POLYLINE_HEAD:
        raise LppError("lpp_bad_polyline", f"{where}: size byte {size} is below {_POLYLINE_HEAD} (size, precision, "
                                           "3-byte latitude and longitude of the start point)")
    if start + size > end:
        raise LppError("lpp_truncated", f"{where} needs {size} data bytes (its size byte), {end - start} left")
    precision, lat_high, lat_low, lon_high, lon_low = _POLYLINE_START.unpack_from(data, start + 1)
    factor = POLYLINE_PRECISIONS.get(precision)
    if factor is None:
        raise LppError("lpp_bad_polyline", f"{where}: precision byte {precision} is reserved (known: 1..199, 227..239)")
    lat = (lat_high * 65536 + lat_low) * factor
    lon = (lon_high * 65536 + lon_low) * factor
    points = [(lat / 10_000, lon / 10_000)]
    for byte in data[start + _POLYLINE_HEAD:start + size]:
        d_lat, d_lon = _NIBBLE_PAIRS[byte]
        lat += d_lat * factor
        lon += d_lon * factor
        points.append((lat / 10_000, lon / 10_000))
    records.append(LppRecord(data[at], POLYLINE_TYPE, "polyline", Polyline(precision, tuple(points))))
    return start + size


def _value_source(type_id: int, raw: Sequence[str]) -> list[tuple[str, bool]]:
    """The arithmetic of :func:`decode` for one record, as Python source, for compiled readers of whole bodies.

    ``drivers.codec.kinds`` compiles a reader for each body layout it sees; it takes the value formulas from here
    so that they stay next to the loop above, which they must match exactly (the tests compare both on random
    bodies).

    Args:
        type_id: a known LPP type id.
        raw: the names of the type's raw struct fields (one per field of its :attr:`LppType.codec`), in order.

    Returns:
        ``(expression, is_float)`` once for a scalar type, three times (x, y, z; r, g, b; lat, lon, alt) for
        vector, colour and gps types; each expression evaluates to exactly the value (or tuple item) :func:`decode` gives, and
        ``is_float`` says that it is a float already (an int otherwise).
    """
    _, _, _, divisor, shape = _DECODE[type_id]
    if shape == _SCALAR:
        return [(raw[0], False) if divisor == 1 else (f"({raw[0]} / {divisor})", True)]
    if shape == _VECTOR:
        return [(f"({name} / {divisor})", True) for name in raw]
    if shape == _TRIPLE:
        return [(name, False) for name in raw]
    return [
        (f"(({raw[0]} * 65536 + {raw[1]}) / 10_000)", True),
        (f"(({raw[2]} * 65536 + {raw[3]}) / 10_000)", True),
        (f"(({raw[4]} * 65536 + {raw[5]}) / 100)", True),
    ]


def _to_raw(spec: LppType, field: LppField, value: object, what: str) -> int:
    """Scale one value to its raw integer, rounding to the nearest step and checking the range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise LppError("lpp_bad_value", f"{what}: {spec.name} needs a number, got {type(value).__name__}")
    if isinstance(value, numbers.Integral):
        raw = int(value) * field.divisor  # exact, also for uint32 values beyond float precision
    else:
        number = float(value)
        if not math.isfinite(number):
            raise LppError("lpp_bad_value", f"{what}: {spec.name} value {number!r} is not a finite number")
        # round() is round-half-even; any tie is equally near both steps, so either answer is the nearest step.
        raw = round(number * field.divisor)
    if not field.raw_min <= raw <= field.raw_max:
        unit = f" {field.unit}" if field.unit else ""
        raise LppError(
            "lpp_out_of_range",
            f"{what}: {spec.name} (type 0x{spec.id:02x}) value {value!r} outside "
            f"{field.min_value} .. {field.max_value}{unit}",
        )
    return raw


def _grid_units(value: object, factor: int, what: str) -> int:
    """A polyline coordinate in degrees -> whole grid steps (rounded to the nearest)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise LppError("lpp_bad_value", f"{what}: polyline coordinate {value!r} is not a finite number")
    return round(float(value) * 10_000 / factor)


def _polyline_bytes(value: object, what: str) -> bytes:
    """The data bytes of a polyline record (size byte first), as ``CayenneLPPPolyline::encode`` lays them out."""
    if not isinstance(value, Polyline):
        raise LppError("lpp_bad_value", f"{what}: polyline needs a lpp.Polyline, got {type(value).__name__}")
    factor = POLYLINE_PRECISIONS.get(value.precision) if type(value.precision) is int else None
    if factor is None:
        raise LppError("lpp_bad_value", f"{what}: polyline precision {value.precision!r} is reserved (known: 1..199, "
                                        "227..239)")
    points = value.points
    if not isinstance(points, Sequence) or not 1 <= len(points) <= _POLYLINE_MAX_POINTS:
        raise LppError("lpp_out_of_range", f"{what}: a polyline holds 1 .. {_POLYLINE_MAX_POINTS} points")
    if not all(isinstance(p, Sequence) and not isinstance(p, (str, bytes)) and len(p) == 2 for p in points):
        raise LppError("lpp_bad_value", f"{what}: polyline points must be (latitude, longitude) pairs")
    grid = [(_grid_units(lat, factor, what), _grid_units(lon, factor, what)) for lat, lon in points]
    if not all(_S24[0] <= raw <= _S24[1] for raw in grid[0]):
        raise LppError("lpp_out_of_range", f"{what}: polyline start point {tuple(points[0])!r} outside "
                                           f"{_S24[0] * factor / 10_000} .. {_S24[1] * factor / 10_000}°")
    out = bytearray((_POLYLINE_HEAD + len(grid) - 1, value.precision))
    for raw in grid[0]:
        out += (raw & 0xFF_FFFF).to_bytes(3, "big")
    for index in range(1, len(grid)):
        d_lat, d_lon = grid[index][0] - grid[index - 1][0], grid[index][1] - grid[index - 1][1]
        if not (-8 <= d_lat <= 7 and -8 <= d_lon <= 7):
            raise LppError("lpp_out_of_range", f"{what}: polyline point {index} is ({d_lat}, {d_lon}) steps of "
                                               f"{value.step_deg}° from the one before; a step holds -8 .. 7")
        out.append((d_lat & 0xF) | (d_lon & 0xF) << 4)
    return bytes(out)


def encode(records: Iterable[tuple[int, str | int, LppValue]]) -> bytes:
    """Encode records into a Cayenne LPP body.

    Args:
        records: ``(channel, type name or id, value)`` triples; values in the table's unit (see module doc),
            3-tuples (or other length-3 sequences) for accelerometer, gyrometer, colour and gps, a
            :class:`Polyline` for ``polyline`` (each point rounded to its grid; a point at most 7 steps (8 down)
            from the one before, as the library's encoder would have split a longer step).

    Returns:
        The LPP bytes, records in the given order.

    Raises:
        LppError: ``lpp_unknown_type`` for an unknown type; ``lpp_bad_channel`` for a channel outside 0..255;
            ``lpp_bad_value`` for a value of the wrong shape, a non-finite number or a reserved polyline precision;
            ``lpp_out_of_range`` when the value, rounded to the nearest step, does not fit the type (the message
            names the type and the range), or a polyline's point count or step does not fit.
    """
    out = bytearray()
    for index, record in enumerate(records):
        if not isinstance(record, tuple) or len(record) != 3:
            raise LppError("lpp_bad_value", f"record {index}: expected (channel, type, value), got {record!r}")
        channel, type_, value = record
        polyline = type_ == "polyline" or (type(type_) is int and type_ == POLYLINE_TYPE)
        spec = None if polyline else lpp_type(type_)
        what = f"record {index} (channel {channel!r})"
        if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel <= 255:
            raise LppError("lpp_bad_channel", f"{what}: channel must be an int in 0..255")
        if spec is None:
            out += bytes((channel, POLYLINE_TYPE)) + _polyline_bytes(value, what)
            continue
        if spec.shape == _SCALAR:
            raws: tuple[int, ...] = (_to_raw(spec, spec.fields[0], value, what),)
        else:
            if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) != 3:
                raise LppError("lpp_bad_value", f"{what}: {spec.name} needs a 3-tuple, got {value!r}")
            raws = tuple(_to_raw(spec, f, v, what) for f, v in zip(spec.fields, value, strict=True))
        out += bytes((channel, spec.id))
        if spec.shape == _GPS:
            # Split each int24 into (signed high byte, unsigned low 16 bits); >> is arithmetic for negative ints.
            out += spec.codec.pack(*(part for raw in raws for part in (raw >> 16, raw & 0xFFFF)))
        else:
            out += spec.codec.pack(*raws)
    return bytes(out)
