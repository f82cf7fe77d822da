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
    "TYPE_IDS",
    "LppField",
    "LppRecord",
    "LppType",
    "LppUnknownType",
    "LppValue",
    "decode",
    "encode",
    "lpp_type",
]

LppValue: TypeAlias = float | int | tuple[float, ...]
"""A decoded value: int for unscaled types, float for scaled ones, a 3-tuple for vector, colour and gps types."""

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
        name: type name, e.g. ``temperature``, ``gps``, ``device_id``.
        value: scaled into the table's unit; ``gps`` -> (lat °, lon °, alt m); accelerometer/gyrometer -> (x, y, z);
            ``colour`` -> (red, green, blue) ints.
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
"""Every known LPP type, by type id."""

TYPE_IDS: Final[Mapping[str, int]] = MappingProxyType({t.name: t.id for t in _ALL_TYPES})
"""Type id by type name."""

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
            offset, the type and how many bytes were needed and left); ``lpp_unknown_type`` for a type byte that no
            table defines (:class:`LppUnknownType`: the message gives the offset and the type id; the exception
            carries the records before it).
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


def encode(records: Iterable[tuple[int, str | int, LppValue]]) -> bytes:
    """Encode records into a Cayenne LPP body.

    Args:
        records: ``(channel, type name or id, value)`` triples; values in the table's unit (see module doc),
            3-tuples (or other length-3 sequences) for accelerometer, gyrometer, colour and gps.

    Returns:
        The LPP bytes, records in the given order.

    Raises:
        LppError: ``lpp_unknown_type`` for an unknown type; ``lpp_bad_channel`` for a channel outside 0..255;
            ``lpp_bad_value`` for a value of the wrong shape or a non-finite number; ``lpp_out_of_range`` when the
            value, rounded to the nearest step, does not fit the type (the message names the type and the range).
    """
    out = bytearray()
    for index, record in enumerate(records):
        if not isinstance(record, tuple) or len(record) != 3:
            raise LppError("lpp_bad_value", f"record {index}: expected (channel, type, value), got {record!r}")
        channel, type_, value = record
        spec = lpp_type(type_)
        what = f"record {index} (channel {channel!r})"
        if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel <= 255:
            raise LppError("lpp_bad_channel", f"{what}: channel must be an int in 0..255")
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
