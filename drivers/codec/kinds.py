"""Sensor kinds of the denen node frame (docs/protocols.md §9): which LPP channel carries which value, in which unit.

Each kind maps LPP channels to named values whose key says the unit (``battery_v``, ``level_cm``)::

    kind         channel  LPP type        value keys                                   presence
    sos          1        digital_input   pressed (1.0 pressed / 0.0 cancelled)        required
                 2        gps             lat_deg, lon_deg, alt_m                      optional (no fix)
                 3        voltage         battery_v                                    optional
                 4        accelerometer   accel_x_g, accel_y_g, accel_z_g              optional (fall detection)
    trap         1        digital_input   fired (1.0 fired / 0.0 armed)                required
                 3        voltage         battery_v                                    optional
    water_level  1        distance        level_cm (LPP metres x 100)                  required
                 3        voltage         battery_v                                    optional
    rain         1        analog_input    rain_mm (since the previous frame)           required
                 2        generic_sensor  tips (cumulative tip count)                  optional
                 3        voltage         battery_v                                    optional
    tilt         1        analog_input    tilt_x_deg                                   required
                 2        analog_input    tilt_y_deg                                   required
                 3        voltage         battery_v                                    optional
    weather      1        temperature     temperature_c                                at least one of ch1/ch2/ch4
                 2        humidity        humidity_pct
                 4        barometer       pressure_hpa
                 3        voltage         battery_v                                    optional
    heartbeat    3        voltage         battery_v                                    required
                 5        percentage      battery_pct                                  optional
    receipt      -        (empty body)                                                 downlink only
    vendor       0x80-0xFE: decoded by a codec named in the node's config, not here

Channels that a kind does not list are kept, never dropped: a scalar as ``ch<N>_<lpp name>`` (``ch7_temperature``),
a 3-tuple as ``ch<N>_<lpp name>_0`` .. ``_2`` (``ch6_colour_0`` .. ``_2`` are red, green, blue), a polyline as
``ch<N>_polyline_step_deg``, ``ch<N>_polyline_points`` and ``ch<N>_polyline_lat_deg_<i>`` / ``_lon_deg_<i>`` per
point (:meth:`drivers.codec.lpp.Polyline.values`). The RAK type-255 device id record becomes ``device_id``.
All values are floats; booleans are 1.0/0.0.
"""

from __future__ import annotations

import json
import operator
import re
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from drivers.codec import lpp
from drivers.codec.lpp import LppRecord
from drivers.errors import CodecError

__all__ = [
    "KINDS",
    "KIND_CODES",
    "VENDOR_CODES",
    "decode_body",
    "decode_body_json",
    "decode_values",
    "encode_values",
    "kind_name",
    "salvage_values",
]

KINDS: Final[Mapping[int, str]] = MappingProxyType(
    {
        0x01: "sos",
        0x02: "trap",
        0x03: "water_level",
        0x04: "rain",
        0x05: "tilt",
        0x06: "weather",
        0x0F: "heartbeat",
        0x7F: "receipt",
    }
)
"""Kind name by kind code (byte 9 of the frame)."""

KIND_CODES: Final[Mapping[str, int]] = MappingProxyType({name: code for code, name in KINDS.items()})
"""Kind code by kind name."""

VENDOR_CODES: Final = range(0x80, 0xFF)
"""Codes 0x80..0xFE: vendor kinds, decoded by a codec named in the node's config."""

_DEVICE_ID: Final = "device_id"
_DEVICE_ID_TYPE: Final = lpp.TYPE_IDS["device_id"]


@dataclass(frozen=True, slots=True)
class _Channel:
    """How one LPP channel of a kind maps to named values."""

    channel: int
    lpp_name: str
    keys: tuple[str, ...]  # one key for scalar types, three for gps/accelerometer
    required: bool = False
    boolean: bool = False  # digital input read as 1.0/0.0
    factor: int = 1  # value = LPP value * factor (water level: m -> cm)
    ndigits: int | None = None  # round after scaling, to drop float noise from the factor (exact to the step)

    @property
    def type_id(self) -> int:
        return lpp.TYPE_IDS[self.lpp_name]


@dataclass(frozen=True, slots=True)
class _Kind:
    channels: tuple[_Channel, ...]
    any_of: tuple[int, ...] = ()  # at least one of these channels must be present


_BATTERY = _Channel(3, "voltage", ("battery_v",))

_TABLE: Final[Mapping[str, _Kind]] = MappingProxyType(
    {
        "sos": _Kind(
            (
                _Channel(1, "digital_input", ("pressed",), required=True, boolean=True),
                _Channel(2, "gps", ("lat_deg", "lon_deg", "alt_m")),
                _BATTERY,
                _Channel(4, "accelerometer", ("accel_x_g", "accel_y_g", "accel_z_g")),
            )
        ),
        "trap": _Kind((_Channel(1, "digital_input", ("fired",), required=True, boolean=True), _BATTERY)),
        # distance has a 1 mm step, so level_cm is exact to 1 decimal.
        "water_level": _Kind((_Channel(1, "distance", ("level_cm",), required=True, factor=100, ndigits=1), _BATTERY)),
        "rain": _Kind(
            (
                _Channel(1, "analog_input", ("rain_mm",), required=True),
                _Channel(2, "generic_sensor", ("tips",)),
                _BATTERY,
            )
        ),
        "tilt": _Kind(
            (
                _Channel(1, "analog_input", ("tilt_x_deg",), required=True),
                _Channel(2, "analog_input", ("tilt_y_deg",), required=True),
                _BATTERY,
            )
        ),
        "weather": _Kind(
            (
                _Channel(1, "temperature", ("temperature_c",)),
                _Channel(2, "humidity", ("humidity_pct",)),
                _Channel(4, "barometer", ("pressure_hpa",)),
                _BATTERY,
            ),
            any_of=(1, 2, 4),
        ),
        # §9 lists ch3 voltage as the heartbeat's content and only ch5 as optional, so ch3 is required here.
        "heartbeat": _Kind(
            (_Channel(3, "voltage", ("battery_v",), required=True), _Channel(5, "percentage", ("battery_pct",)))
        ),
        "receipt": _Kind(()),
    }
)

# Keys of the extra channels: ch<N>_<lpp name> or ch<N>_<lpp name>_<0..2>.
_PLAIN_KEY = re.compile(r"[a-z0-9_]+").fullmatch
_EXTRA_KEY = re.compile(r"ch(\d{1,3})_([a-z_]+?)(?:_([012]))?")
_POLYLINE_KEY = re.compile(r"ch(\d{1,3})_polyline_([a-z_]+(?:_\d{1,3})?)")


def kind_name(code: int) -> str:
    """Name of a kind code.

    Args:
        code: byte 9 of the frame.

    Returns:
        The name from :data:`KINDS`, or ``'vendor'`` for 0x80..0xFE.

    Raises:
        CodecError: ``kind_unknown`` for any other code.
    """
    name = KINDS.get(code)
    if name is not None:
        return name
    if code in VENDOR_CODES:
        return "vendor"
    raise CodecError("kind_unknown", f"unknown kind code {code!r} (known: {_known_codes()}, vendor 0x80..0xfe)")


def _known_codes() -> str:
    return ", ".join(f"0x{code:02x} {name}" for code, name in KINDS.items())


def _kind(kind: str) -> _Kind:
    if kind == "vendor":
        raise CodecError(
            "kind_vendor_codec", "vendor kinds (0x80..0xfe) are decoded by the codec named in the node's config"
        )
    table = _TABLE.get(kind)
    if table is None:
        raise CodecError("kind_unknown", f"unknown kind {kind!r} (known: {', '.join(KIND_CODES)}, vendor)")
    return table


def _describe(spec: _Channel) -> str:
    return f"ch{spec.channel} {spec.lpp_name} (type 0x{spec.type_id:02x})"


def _put(out: dict[str, float], key: str, value: float, kind: str, channel: int) -> None:
    if key in out:
        # A second record for the same value makes the frame ambiguous; refuse rather than guess which one counts.
        raise CodecError("kind_duplicate_channel", f"{kind}: ch{channel} gives {key!r} twice")
    out[key] = value


def _table_values(spec: _Channel, value: lpp.LppValue) -> list[tuple[str, float]]:
    """The named values of a record on a channel of the kind's table (of the table's type)."""
    if spec.boolean:
        # Any non-zero digital input counts as 1 (C's notion of true): firmware that sends 0xFF for "pressed" must
        # still raise the alarm rather than have its SOS quarantined.
        return [(spec.keys[0], 1.0 if value else 0.0)]
    if isinstance(value, tuple):
        return [(key, float(item)) for key, item in zip(spec.keys, value, strict=True)]
    scaled = float(value) * spec.factor
    if spec.ndigits is not None:
        scaled = round(scaled, spec.ndigits)
    return [(spec.keys[0], scaled)]


def _extra_values(record: LppRecord) -> list[tuple[str, float]]:
    """The named values of a record on a channel the kind's table does not list (or of the RAK device id)."""
    if record.type == _DEVICE_ID_TYPE:
        return [(_DEVICE_ID, float(record.value))]  # type: ignore[arg-type]
    if isinstance(record.value, lpp.Polyline):
        return [(f"ch{record.channel}_polyline_{name}", value) for name, value in record.value.values()]
    if isinstance(record.value, tuple):
        return [(f"ch{record.channel}_{record.name}_{index}", float(item)) for index, item in enumerate(record.value)]
    return [(f"ch{record.channel}_{record.name}", float(record.value))]


def decode_values(kind: str, records: list[LppRecord]) -> dict[str, float]:
    """Turn the LPP records of a frame body into named values (see the module table).

    Args:
        kind: kind name, e.g. ``'trap'`` (from :func:`kind_name`).
        records: the decoded body (:func:`drivers.codec.lpp.decode`).

    Returns:
        Values by key, all floats, in the unit the key names; extra channels as ``ch<N>_<lpp name>[_i]`` and
        the RAK device id as ``device_id``.

    Raises:
        CodecError: ``kind_unknown`` for an unknown kind name; ``kind_vendor_codec`` for ``'vendor'``;
            ``kind_missing_channel`` when a required channel is absent (naming kind, channel and expected type);
            ``kind_bad_type`` when a known channel carries another LPP type; ``kind_duplicate_channel`` when the
            same value arrives twice.
    """
    table = _kind(kind)
    by_channel = {spec.channel: spec for spec in table.channels}
    out: dict[str, float] = {}
    seen: set[int] = set()
    for record in records:
        spec = by_channel.get(record.channel)
        if spec is not None:
            if record.type != spec.type_id:
                raise CodecError(
                    "kind_bad_type",
                    f"{kind}: ch{record.channel} is {record.name} (type 0x{record.type:02x}), "
                    f"expected {_describe(spec)}",
                )
            seen.add(record.channel)
            named = _table_values(spec, record.value)
        else:
            named = _extra_values(record)
        for key, value in named:
            _put(out, key, value, kind, record.channel)
    for spec in table.channels:
        if spec.required and spec.channel not in seen:
            raise CodecError("kind_missing_channel", f"{kind}: required {_describe(spec)} is missing")
    if table.any_of and seen.isdisjoint(table.any_of):
        wanted = ", ".join(_describe(by_channel[ch]) for ch in table.any_of)
        raise CodecError("kind_missing_channel", f"{kind}: needs at least one of {wanted}; none present")
    return out


def salvage_values(kind: str, records: list[LppRecord]) -> dict[str, float]:
    """Named values of records that could not all be decoded, for the record a frame is quarantined with.

    When a body stops at an unknown LPP type (:class:`drivers.codec.lpp.LppUnknownType`), the records before it
    still say something an operator needs (an SOS's position). They are named as :func:`decode_values` names
    them, but nothing is refused: a table channel of another type is named as an extra channel, a value that
    arrives twice keeps its first, and missing channels are not checked.

    Args:
        kind: kind name; a vendor or unknown kind names every record as an extra channel.
        records: the records decoded before the failure.

    Returns:
        Values by key, all floats, in decode order.
    """
    table = _TABLE.get(kind)
    by_channel = {spec.channel: spec for spec in table.channels} if table is not None else {}
    out: dict[str, float] = {}
    for record in records:
        spec = by_channel.get(record.channel)
        named = (_table_values(spec, record.value) if spec is not None and record.type == spec.type_id
                 else _extra_values(record))
        for key, value in named:
            out.setdefault(key, value)
    return out


def decode_body(kind: str, body: bytes | bytearray | memoryview) -> dict[str, float]:
    """Decode a frame body straight into named values: ``decode_values(kind, lpp.decode(body))`` in one step.

    Same values (same floats, same key order), same errors in the same order; faster for the bodies a field sends
    all day (see :func:`decode_body_json`).

    Args:
        kind: kind name, e.g. ``'trap'`` (from :func:`kind_name`).
        body: the frame body (Cayenne LPP bytes).

    Raises:
        LppError: as :func:`drivers.codec.lpp.decode`.
        CodecError: as :func:`decode_values`.
    """
    return decode_body_json(kind, body)[0]


def decode_body_json(kind: str, body: bytes | bytearray | memoryview) -> tuple[dict[str, float], str]:
    """:func:`decode_body`, and the values as a JSON object text, for a caller that stores them as JSON.

    The text is ``json.dumps(values, separators=(",", ":"), ensure_ascii=False)``, byte for byte: decoded values
    are finite floats, whose JSON is their repr, under plain ``[a-z0-9_]`` keys.

    It is fast for the bodies a field sends all day: a node's firmware sends the same channels with the same types
    in the same order, frame after frame. The first body of each such layout goes through
    :func:`drivers.codec.lpp.decode` and :func:`decode_values`; when it decodes, a reader for the layout is compiled
    (one struct call, one dict literal and one format string), and later bodies of the same kind, length and
    record headers take it. Any other body, valid or not, takes the general path, so errors are always those of
    the general path.

    Args:
        kind: kind name, e.g. ``'trap'`` (from :func:`kind_name`).
        body: the frame body (Cayenne LPP bytes).

    Returns:
        ``(values, json_text)``.

    Raises:
        LppError: as :func:`drivers.codec.lpp.decode`.
        CodecError: as :func:`decode_values`.
    """
    layouts = _LAYOUTS.get((kind, len(body)))
    if layouts is not None:
        for layout in layouts:
            if layout.headers(body) == layout.expected:
                return layout.read(body)
    records = lpp.decode(body)
    values = decode_values(kind, records)
    if records and _layout_count < _MAX_LAYOUTS:
        _learn(kind, len(body), records)
    return values, json.dumps(values, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class _Layout:
    """A compiled reader for the bodies of one kind with one sequence of record headers.

    Attributes:
        headers: returns the channel and type bytes of every record of a body of this layout's length.
        expected: what ``headers`` returns for this layout.
        read: body -> (values, JSON text), exactly as :func:`decode_body_json` gives them on the general path.
        source: the Python source of ``read`` (for tests and debugging).
    """

    headers: Callable[[bytes | bytearray | memoryview], tuple[int, ...]]
    expected: tuple[int, ...]
    read: Callable[[bytes | bytearray | memoryview], tuple[dict[str, float], str]]
    source: str


#: Compiled layouts by (kind, body length). A field has a handful of layouts; the bound keeps memory flat when a
#: source keeps sending new ones (an accepted unknown node, a firmware sending varied extras): beyond it, new
#: layouts simply take the general path.
_LAYOUTS: dict[tuple[str, int], tuple[_Layout, ...]] = {}
_MAX_LAYOUTS: Final = 128
_MAX_PER_LENGTH: Final = 4
_layout_count = 0
_learn_lock = threading.Lock()


def _learn(kind: str, length: int, records: list[LppRecord]) -> None:
    """Compile a reader for the layout of ``records`` (a body of ``kind`` that decoded without error)."""
    global _layout_count
    layout = _compile(kind, records)
    if layout is None:
        return
    with _learn_lock:  # the cache is shared by every decoder; learning is rare, so one lock is enough
        known = _LAYOUTS.get((kind, length), ())
        if (_layout_count < _MAX_LAYOUTS and len(known) < _MAX_PER_LENGTH
                and all(k.expected != layout.expected for k in known)):
            _LAYOUTS[(kind, length)] = (*known, layout)
            _layout_count += 1


def _forget_layouts() -> None:
    """Drop every compiled reader (tests)."""
    global _layout_count
    with _learn_lock:
        _LAYOUTS.clear()
        _layout_count = 0


def _float(expr: str, is_float: bool) -> str:
    """``float(expr)`` as decode_values applies it; float() of a float is that float, so it is left out then."""
    return expr if is_float else f"float({expr})"


def _compile(kind: str, records: list[LppRecord]) -> _Layout | None:
    """Build the reader of one layout as Python source mirroring :func:`decode_values`, line for line."""
    if any(record.type == lpp.POLYLINE_TYPE for record in records):
        return None  # variable length: its bodies take the general path
    by_channel = {spec.channel: spec for spec in _TABLE[kind].channels}
    positions: list[int] = []
    expected: list[int] = []
    fmt = ">"
    names: list[str] = []
    items: list[tuple[str, str]] = []  # (key, expression), in wire order as decode_values inserts them
    pos = 0
    for record in records:
        spec_type = lpp.LPP_TYPES[record.type]
        positions += (pos, pos + 1)
        expected += (record.channel, record.type)
        fmt += "xx" + spec_type.codec.format.lstrip("<>!=@")  # the header bytes are checked, not read
        raw = [f"r{len(names) + i}" for i in range(len(spec_type.codec.unpack(bytes(spec_type.size))))]
        names += raw
        exprs = lpp._value_source(record.type, raw)
        value = [_float(expr, is_float) for expr, is_float in exprs]  # float(record.value), float(item)
        pos += 2 + spec_type.size
        spec = by_channel.get(record.channel)
        if spec is not None:
            if spec.boolean:
                items.append((spec.keys[0], f"(1.0 if {exprs[0][0]} else 0.0)"))
            elif spec_type.is_tuple:
                items += zip(spec.keys, value, strict=True)
            else:
                # float(value) * factor; x * 1 is x for every float, so a factor of 1 is left out.
                scaled = value[0] if spec.factor == 1 else f"{value[0]} * {spec.factor}"
                if spec.ndigits is not None:
                    scaled = f"round({scaled}, {spec.ndigits})"
                items.append((spec.keys[0], scaled))
        elif record.type == _DEVICE_ID_TYPE:
            items.append((_DEVICE_ID, value[0]))
        elif spec_type.is_tuple:
            items += ((f"ch{record.channel}_{record.name}_{i}", item) for i, item in enumerate(value))
        else:
            items.append((f"ch{record.channel}_{record.name}", value[0]))
    # Each value is computed once, into v0, v1 ...; the JSON text formats those same floats with repr (their JSON
    # spelling: the values are finite, from integers) under keys that need no escaping. Every key of the tables is
    # plain; should one ever not be, its layout stays on the general path.
    if not all(_PLAIN_KEY(key) for key, _ in items):
        return None
    values = [f"v{i}" for i in range(len(items))]
    source = (
        "def read(body):\n"
        f"    {', '.join(names)}, = unpack(body)\n"
        + "".join(f"    {value} = {expr}\n" for value, (_, expr) in zip(values, items, strict=True))
        + "    return {" + ", ".join(f"{key!r}: {value}" for value, (key, _) in zip(values, items, strict=True)) + "}, "
        + repr("{" + ",".join(f'"{key}":%r' for key, _ in items) + "}") + f" % ({', '.join(values)},)\n"
    )
    namespace: dict[str, Any] = {"unpack": struct.Struct(fmt).unpack}
    # The source is built above from the module's own tables and integers; no input byte reaches it.
    exec(compile(source, f"<layout {kind} {bytes(expected).hex()}>", "exec"), namespace)  # noqa: S102
    return _Layout(operator.itemgetter(*positions), tuple(expected), namespace["read"], source)


def encode_values(kind: str, values: Mapping[str, float]) -> bytes:
    """Build an LPP body that :func:`decode_values` turns back into ``values`` (within one step).

    Meant for simulators and firmware authors. Keys follow the module table; extra keys ``ch<N>_<lpp name>``,
    ``ch<N>_<lpp name>_0..2``, ``ch<N>_polyline_*`` and ``device_id`` (sent on channel 0, as RAK does) are encoded
    too.

    Args:
        kind: kind name, e.g. ``'sos'``.
        values: values by key, in the unit the key names; booleans as 1.0/0.0.

    Returns:
        The LPP body: table channels in table order, then ``device_id``, then extra channels by channel number.

    Raises:
        CodecError: ``kind_unknown``/``kind_vendor_codec`` for the kind; ``kind_missing_value`` when a required
            value (or one coordinate of a tuple) is missing; ``kind_bad_value`` for a boolean other than 0/1;
            ``kind_unknown_value`` for a key that is neither in the table nor a valid extra key.
        LppError: when a value does not fit its LPP type (``lpp_out_of_range``, ``lpp_bad_value``).
    """
    table = _kind(kind)
    remaining = dict(values)
    records: list[tuple[int, str | int, lpp.LppValue]] = []
    present: set[int] = set()
    for spec in table.channels:
        found = [key for key in spec.keys if key in remaining]
        if not found:
            if spec.required:
                raise CodecError("kind_missing_value", f"{kind}: {spec.keys[0]!r} ({_describe(spec)}) is required")
            continue
        if len(found) != len(spec.keys):
            missing = [key for key in spec.keys if key not in remaining]
            raise CodecError("kind_missing_value", f"{kind}: {_describe(spec)} also needs {missing}")
        items = [remaining.pop(key) for key in spec.keys]
        present.add(spec.channel)
        value: lpp.LppValue
        if spec.boolean:
            if items[0] not in (0, 1):
                raise CodecError("kind_bad_value", f"{kind}: {spec.keys[0]!r} must be 1.0 or 0.0, got {items[0]!r}")
            value = int(items[0])
        elif len(items) == 3:
            value = (items[0], items[1], items[2])
        else:
            # A non-number passes through unscaled so that lpp.encode reports it as lpp_bad_value.
            scalable = spec.factor != 1 and isinstance(items[0], (int, float))
            value = items[0] / spec.factor if scalable else items[0]
        records.append((spec.channel, spec.lpp_name, value))
    if table.any_of and present.isdisjoint(table.any_of):
        wanted = ", ".join(f"{spec.keys[0]!r}" for spec in table.channels if spec.channel in table.any_of)
        raise CodecError("kind_missing_value", f"{kind}: needs at least one of {wanted}")

    if _DEVICE_ID in remaining:
        records.insert(0, (0, _DEVICE_ID_TYPE, remaining.pop(_DEVICE_ID)))
    records.extend(_extra_records(kind, table, remaining))
    return lpp.encode(records)


def _extra_records(kind: str, table: _Kind, extras: Mapping[str, float]) -> list[tuple[int, str | int, lpp.LppValue]]:
    """Encode the ``ch<N>_<lpp name>[_i]`` keys, checking that decode_values would read them back as extras."""
    scalars: dict[tuple[int, str], float] = {}
    parts: dict[tuple[int, str], dict[int, float]] = {}
    lines: dict[int, dict[str, float]] = {}
    table_channels = {spec.channel for spec in table.channels}
    for key, value in extras.items():
        line = _POLYLINE_KEY.fullmatch(key)
        if line and int(line.group(1)) <= 255 and int(line.group(1)) not in table_channels:
            lines.setdefault(int(line.group(1)), {})[line.group(2)] = value
            continue
        match = _EXTRA_KEY.fullmatch(key)
        channel = int(match.group(1)) if match else -1
        name = match.group(2) if match else ""
        spec = lpp.LPP_TYPES.get(lpp.TYPE_IDS.get(name, -1))
        index = match.group(3) if match else None
        if spec is None or spec.is_tuple != (index is not None) or not 0 <= channel <= 255 or name == _DEVICE_ID:
            raise CodecError("kind_unknown_value", f"{kind}: unknown value key {key!r}")
        if channel in table_channels:
            # decode_values reads a table channel as the table says, so an extra there could never come back.
            raise CodecError("kind_unknown_value", f"{kind}: {key!r} uses ch{channel}, which the {kind} table owns")
        if index is None:
            scalars[(channel, name)] = value
        else:
            parts.setdefault((channel, name), {})[int(index)] = value
    records: list[tuple[int, str | int, lpp.LppValue]] = [(ch, name, value) for (ch, name), value in scalars.items()]
    for (channel, name), items in parts.items():
        if len(items) != 3:
            missing = [f"ch{channel}_{name}_{i}" for i in range(3) if i not in items]
            raise CodecError("kind_missing_value", f"{kind}: also needs {missing}")
        records.append((channel, name, (items[0], items[1], items[2])))
    records += [(channel, lpp.POLYLINE_TYPE, lpp.Polyline.from_values(named, f"{kind}: ch{channel}_polyline"))
                for channel, named in lines.items()]
    records.sort(key=lambda record: (record[0], lpp.TYPE_IDS.get(str(record[1]), lpp.POLYLINE_TYPE)))
    return records
