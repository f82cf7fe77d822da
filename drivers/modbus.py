"""Modbus RTU gauges on an RS-485 line at the gateway, polled by the radio worker (docs/protocols.md §5).

Design. A Modbus line is a radio in the config (``radios[].driver: modbus``, its ``port`` the RS-485 adapter)
so it gets what every radio gets from :class:`drivers.radio.RadioWorker`: one thread that owns the port,
reopens it with backoff when the adapter is unplugged, and counts incidents. The protocol differs: nothing
arrives unasked, the gateway is the Modbus client (master) and asks each configured slave in turn::

    RadioWorker (thread, owns the port)        Modbus (this driver; pymodbus encodes and decodes)
      driver.configure()  ───────────────────>   no bus traffic: a dead slave must not stop the others
      driver.service()    ───────────────────>   the poll loop: for each sensor whose interval_s is due,
                                                 read its registers (FC03 holding / FC04 input), one request
                                                 at a time: link.write(request), pump until the reply has
                                                 been parsed, timeout_s per try, retries more tries
      driver.feed(chunk)  <─── bytes read ──     pymodbus FramerRTU + DecodePDU turn bytes into a reply PDU
      link.deliver([Uplink])                     one denen node frame per sensor and poll

pymodbus (3.x) does the RTU framing, the CRC and the PDU encoding and decoding; its client is not used, so the
port stays the worker's and every byte is read on the worker's thread like any radio's. :meth:`Modbus.service`
is the poll loop and returns only through the worker's stop (``pump`` unwinds it) or a port error: the worker
pumps up to 10 s between two ``service()`` calls, longer than a short ``interval_s``. A Modbus line cannot send
radio frames, so :meth:`Modbus.transmit` refuses (SOS receipts go out on the LoRa radios).

Readings take the radio nodes' path. Each sensor is configured with the id of a node in ``nodes:`` and its kind
(``water_level``, ``rain``, ``tilt``, ``weather``). Its register values are encoded with the project's own codec
(:func:`drivers.codec.kinds.encode_values`, :func:`drivers.codec.frame.build`) into a denen node frame (§9) and
delivered as an :class:`~drivers.types.Uplink`, so the gateway's decoder, journal and edge rules treat it as a
frame from that node: a Modbus water-level gauge raises the same river-stage alerts as a LoRa one.

Authentication. The frames are built without a MIC: this driver sees only its radio's config, never the node
keys, and a wire from the adapter to the gauge has physical trust. Modbus nodes are therefore configured without
a key and with ``unauthenticated: flag``; the decoder accepts them as it accepts any unsigned frame, marked
``auth: none`` on the dashboard. There is no bypass of the decoder's checks.

Frame counters. The decoder accepts an unsigned frame only above the node's last counter (persisted in the
journal), so a counter must keep rising across gateway restarts without state of its own: it is the Unix time in
seconds, or the previous counter + 1 when polls come faster (``interval_s`` is at least 1 s, so it never runs
ahead of the clock for long). A gateway clock stepped back (no RTC, no NTP yet) makes readings ``replay`` until
the clock passes the last counter; the gateway's clock check reports such a clock.

Incidents (:data:`drivers.radio.INCIDENT_KINDS`): no reply within ``timeout_s`` is ``module_timeout``; a reply
with a bad CRC, cut short or from another slave is ``crc_error``; a Modbus exception reply (illegal address,
device failure ...) is ``module_error``; bytes on the line while no request is pending are ``garbled_line``.
Each counts once per try; :attr:`Modbus.stats` keeps them per node.

Values. A register value is ``raw * scale + offset`` in the unit of its key (``level_cm``); with ``delta`` it is
the change of the raw value since the previous poll times ``scale`` (a tipping bucket's tip count -> ``rain_mm``
per frame; the first poll after the agent starts reports 0, a reopened port loses nothing, and a counter wrap is
taken modulo the type's range). The cumulative count itself can be sent too (``tips``) for a consumer that
wants to recompute.
"""

from __future__ import annotations

import logging
import math
import re
import struct
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from drivers.codec import frame as node_frame
from drivers.codec import kinds
from drivers.errors import CodecError, FrameError, LppError, ModuleError, ModuleTimeout
from drivers.probe import FAIL, N_, OK, Finding, ProbeLink, Say, noise_hint
from drivers.radio import Link, ModuleDriver
from drivers.registry import DriverSpec
from drivers.settings import Section, Text, choices_hint, problem
from drivers.types import Uplink

__all__ = ["KINDS", "REGISTER_TYPES", "SPEC", "Modbus", "ModbusConfig", "ModbusSensor", "ModbusValue", "probe",
           "registers_value"]

log = logging.getLogger(__name__)

#: The node kinds a Modbus gauge may report as (a wired gauge is never an SOS button or a trap).
KINDS = ("water_level", "rain", "tilt", "weather")
#: Register data types: registers read, struct format of the big-endian value, modulus of a counter.
REGISTER_TYPES = {"u16": (1, ">H"), "s16": (1, ">h"), "u32": (2, ">I"), "s32": (2, ">i"), "float32": (2, ">f")}
_FUNCTION = {"holding": 3, "input": 4}
#: Exception codes worth another try: the slave is busy, or acknowledged and still working.
_TRANSIENT = frozenset({5, 6})
_EXCEPTIONS = {1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "device failure",
               5: "acknowledge", 6: "device busy", 8: "memory parity error", 10: "gateway path unavailable",
               11: "gateway target failed to respond"}
_MAX_REPLY = 256  # an RTU frame is at most 256 bytes; more without a frame is noise
_NODE_ID = re.compile(r"^[0-9a-fA-F]{8}$")
#: The value keys of each kind (docs/protocols.md §9), for a hint on a misspelt key; the codec has the last word.
_KIND_KEYS = {"water_level": ("level_cm", "battery_v"), "rain": ("rain_mm", "tips", "battery_v"),
              "tilt": ("tilt_x_deg", "tilt_y_deg", "battery_v"),
              "weather": ("temperature_c", "humidity_pct", "pressure_hpa", "battery_v")}
_EXTRA_KEY = re.compile(r"^ch\d{1,3}_[a-z_]+$")
# What must outlive one driver instance (one open port) for the agent's lifetime, per (radio, node[, key]): the
# frame counters, so a reopen within the same second cannot repeat one (the decoder would refuse the reading as a
# duplicate), and the raw value of each delta register, so the rain that fell while the adapter was unplugged is
# reported after it comes back instead of lost. Each radio's worker thread touches only its own keys.
_COUNTERS = node_frame.ClockCounters()
_PREVIOUS_RAW: dict[tuple[str, str, str], int] = {}
#: Counters of :attr:`Modbus.stats`, per node.
STAT_KEYS = ("polls", "readings", "timeouts", "crc_errors", "exceptions", "failed_polls")


class ModbusValue(Section):
    """One value of a sensor: where it is in the slave's registers and how it becomes a reading."""

    key: str = Field(description=N_("The value's name in the reading, as the kind names it (level_cm, rain_mm, tips, "
                     "tilt_x_deg, tilt_y_deg, temperature_c, humidity_pct, pressure_hpa, battery_v), or "
                     "ch<N>_analog_input for a generic analog value on channel N (6..99)."))
    address: int = Field(ge=0, le=65535, description=N_("Register address as sent on the wire, 0..65535 (a "
                          "datasheet's 40001 or 30001 is address 0)."))
    table: Literal["holding", "input"] = Field("holding", description=N_("holding (function 03) or input (04)."))
    type: Literal["u16", "s16", "u32", "s32", "float32"] = Field("u16", description=N_("Data type: u16, s16 (one "
                                                                  "register), u32, s32, float32 (two)."))
    word_order: Literal["big", "little"] = Field("big", description=N_("For two-register types: big = high word "
                                                 "first (Modbus convention), little = low word first (DFRobot)."))
    scale: float = Field(1.0, description=N_("Reading = raw x scale + offset, in the key's unit (e.g. 0.1 for a "
                         "level in mm when the key is level_cm; 0.2 for 0.2 mm per bucket tip)."))
    offset: float = Field(0.0, description=N_("Added after scale, in the key's unit (gauge zero correction)."))
    delta: bool = Field(False, description=N_("Report the change of the raw value since the previous poll, times "
                        "scale (a tip counter as rain_mm per reading); the first poll after a start reports 0."))

    @field_validator("scale", "offset")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise problem(N_("must be a finite number"))
        return value


class ModbusSensor(Section):
    """One gauge (a Modbus slave) reported as one node."""

    node: str = Field(description=N_("The node id its readings carry, 8 hex digits in quotes; the node must be in "
                      "nodes: with this kind, no key and unauthenticated: flag."), examples=["3c000001"])
    kind: Literal["water_level", "rain", "tilt", "weather"] = Field(description=N_("The node's kind."))
    slave: int = Field(ge=1, le=247, description=N_("Modbus slave address on the line, 1..247."))
    interval_s: int = Field(60, ge=1, le=86400, description=N_("Seconds between two polls of this gauge."))
    timeout_s: float = Field(1.0, gt=0.0, le=10.0, description=N_("Seconds to wait for a reply, per try."))
    retries: int = Field(2, ge=0, le=5, description=N_("Further tries after a timeout, a bad CRC or a busy reply."))
    values: list[ModbusValue] = Field(min_length=1, max_length=16, description=N_("The registers to read."))

    @field_validator("node", mode="before")
    @classmethod
    def _node_id(cls, value: object) -> str:
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFFFFFFFF:
            return f"{value:08x}"
        if not isinstance(value, str) or not _NODE_ID.match(value):
            raise problem(N_("must be 8 hex digits in quotes"), N_("e.g. node: \"3c000001\" (the node's id in nodes:)"))
        return value.lower()

    @model_validator(mode="after")
    def _values_fit_kind(self) -> ModbusSensor:
        keys = [v.key for v in self.values]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise problem(N_("value {key} is read twice"), subloc=("values",), key=repr(twice[0]))
        for i, key in enumerate(keys):
            if key not in _KIND_KEYS[self.kind] and not _EXTRA_KEY.match(key):
                hint = choices_hint(key, [*_KIND_KEYS[self.kind], "ch<N>_analog_input"],
                                    Text(N_("{kind} values"), kind=self.kind))
                raise problem(N_("{key} is not a value of a {kind} reading"), hint, subloc=("values", i, "key"),
                              key=repr(key), kind=self.kind)
        try:
            kinds.encode_values(self.kind, dict.fromkeys(keys, 0.0))
        except CodecError as exc:
            raise problem(N_("these values do not make a {kind} reading: {error}"),
                          N_("see docs/protocols.md §9 for the values of each kind"), subloc=("values",),
                          kind=self.kind, error=str(exc)) from None
        return self

    @property
    def node_id(self) -> int:
        return int(self.node, 16)


class ModbusConfig(Section):
    """Modbus RTU gauges on an RS-485 line (8 data bits, no parity, 1 stop bit; the speed is the radio's baudrate)."""

    #: What the radio's ``modbus:`` key holds, for the config reference.
    section_doc: ClassVar[str] = "Modbus RTU gauges"

    sensors: list[ModbusSensor] = Field(min_length=1, max_length=64, description=N_("The gauges on this line."))

    @model_validator(mode="after")
    def _unique(self) -> ModbusConfig:
        for what in ("node", "slave"):
            seen = [getattr(s, what) for s in self.sensors]
            twice = sorted({x for x in seen if seen.count(x) > 1})
            if twice:
                raise problem(N_("two sensors have {key} {value}"), N_("each gauge is one node and one slave address"),
                              subloc=("sensors",), key=what, value=twice[0])
        return self


def registers_value(registers: list[int], type_: str, word_order: str) -> float:
    """The number that ``registers`` (16-bit each) hold as ``type_``; two-register types in ``word_order``.

    Raises:
        ValueError: the wrong number of registers, or a float32 that is NaN or infinite.
    """
    count, fmt = REGISTER_TYPES[type_]
    if len(registers) != count:
        raise ValueError(f"{type_} needs {count} register(s), got {len(registers)}")
    words = registers if word_order == "big" else list(reversed(registers))
    value = struct.unpack(fmt, b"".join((w & 0xFFFF).to_bytes(2, "big") for w in words))[0]
    if not math.isfinite(value):
        raise ValueError(f"{type_} value is {value}")
    return float(value)


@dataclass
class _Pending:
    """The request on the line, and what came back for it."""

    slave: int
    function: int
    count: int
    buffer: bytearray
    registers: list[int] | None = None
    failure: str | None = None  # "crc_error" | "module_error", with ``detail``
    detail: str = ""
    exception_code: int = 0

    @property
    def done(self) -> bool:
        return self.registers is not None or self.failure is not None


class Modbus(ModuleDriver):
    """Polls the gauges of one RS-485 line; see the module docstring.

    Attributes:
        stats: per node id (8 hex digits), counters named in :data:`STAT_KEYS`.
    """

    def __init__(self, config: Any, link: Link) -> None:
        super().__init__(config, link)
        # pymodbus is imported here: the registry imports this module for every CLI command that reads it.
        from pymodbus.framer import FramerRTU
        from pymodbus.pdu import DecodePDU

        self.settings: ModbusConfig = config.modbus
        self._framer = FramerRTU(DecodePDU(is_server=False))
        self._quiet_s = max(0.002, 3.5 * 11 / int(getattr(config, "baudrate", 9600) or 9600))
        self._pending: _Pending | None = None
        self._due: dict[str, float] = {}
        self.stats: dict[str, Counter[str]] = {s.node: Counter() for s in self.settings.sensors}

    # -- ModuleDriver ----------------------------------------------------------------------------------
    def configure_once(self) -> None:
        """No bus traffic: a gauge that does not answer is reported by its polls and must not stop the others."""
        self._pending = None
        now = time.monotonic()
        self._due = {s.node: now for s in self.settings.sensors}
        slaves = ",".join(str(s.slave) for s in self.settings.sensors)
        self.module_info = {"bus": f"modbus-rtu {getattr(self.config, 'baudrate', '?')} 8N1",
                            "sensors": str(len(self.settings.sensors)), "slaves": slaves}

    def feed(self, chunk: bytes, received_us: int) -> None:
        pending = self._pending
        if pending is None or pending.done:
            # Nothing was asked: another master on the line, a slave answering late, or noise.
            self.link.incident("garbled_line", f"{len(chunk)} byte(s) while no request was pending: {chunk[:16].hex()}")
            return
        pending.buffer += chunk
        self._parse(pending)

    def service(self) -> None:
        """The poll loop: poll every sensor that is due, then wait (still reading) until the next is due."""
        sensors = {s.node: s for s in self.settings.sensors}
        while True:
            now = time.monotonic()
            for node, due in sorted(self._due.items(), key=lambda item: item[1]):
                if due <= now:
                    sensor = sensors[node]
                    self._due[node] = max(due + sensor.interval_s, now)
                    self.poll(sensor)
            self.pause(max(0.0, min(self._due.values()) - time.monotonic()))

    def transmit(self, payload: bytes, timeout: float) -> None:
        if not payload:
            raise ValueError("empty payload")
        raise ModuleError("transmit", "a Modbus line cannot send radio frames")

    # -- polling -----------------------------------------------------------------------------------------
    def poll(self, sensor: ModbusSensor) -> Uplink | None:
        """Read one sensor's registers and deliver its reading; None (and incidents) when it could not be read."""
        stats = self.stats[sensor.node]
        stats["polls"] += 1
        raw: dict[str, int | float] = {}
        for value in sensor.values:
            got = self.read(sensor, value)
            if got is None:
                stats["failed_polls"] += 1
                return None
            raw[value.key] = got
        now_us = time.time_ns() // 1000
        try:
            payload = self._frame(sensor, raw, now_us)
        except (CodecError, LppError, FrameError, ValueError) as exc:
            stats["failed_polls"] += 1
            self.link.incident("module_error", f"slave {sensor.slave} (node {sensor.node}): {exc}")
            return None
        stats["readings"] += 1
        uplink = Uplink(self.link.radio, payload, None, None, f"{sensor.slave:04X}", now_us)
        self.link.deliver([uplink])
        return uplink

    def _frame(self, sensor: ModbusSensor, raw: dict[str, int | float], now_us: int) -> bytes:
        values: dict[str, float] = {}
        for value in sensor.values:
            number = raw[value.key]
            if value.delta:
                memory = (self.link.radio, sensor.node, value.key)
                previous = _PREVIOUS_RAW.get(memory)
                _PREVIOUS_RAW[memory] = int(number)
                modulus = 1 << (16 * REGISTER_TYPES[value.type][0])
                change = 0 if previous is None else (int(number) - previous) % modulus
                values[value.key] = round(change * value.scale, 6)
            else:
                values[value.key] = round(number * value.scale + value.offset, 6)
        body = kinds.encode_values(sensor.kind, values)
        counter = _COUNTERS.next((self.link.radio, sensor.node), now_us)
        if counter is None:
            raise ValueError("frame counter past 2**32 - 1: the gateway clock is wrong")
        return node_frame.build(sensor.node_id, counter, kinds.KIND_CODES[sensor.kind], body)

    def read(self, sensor: ModbusSensor, value: ModbusValue) -> int | float | None:
        """One value, with ``retries`` further tries; None when every try failed (each reported)."""
        count = REGISTER_TYPES[value.type][0]
        function = _FUNCTION[value.table]
        where = f"slave {sensor.slave} (node {sensor.node}) {value.table} register {value.address}"
        tries = sensor.retries + 1
        for attempt in range(1, tries + 1):
            registers = self._ask(sensor, function, value.address, count, f"{where}, try {attempt}/{tries}")
            if isinstance(registers, list):
                try:
                    number = registers_value(registers, value.type, value.word_order)
                except ValueError as exc:
                    self.link.incident("module_error", f"{where}: {exc}")
                    return None
                return int(number) if value.delta else number
            if registers == "final":
                return None
        return None

    def _ask(self, sensor: ModbusSensor, function: int, address: int, count: int, where: str) -> list[int] | str:
        """One request and its reply: the registers, ``"retry"`` or ``"final"`` (a definite exception reply)."""
        from pymodbus.pdu.register_message import (
            ReadHoldingRegistersRequest,
            ReadInputRegistersRequest,
        )

        request_cls = ReadHoldingRegistersRequest if function == 3 else ReadInputRegistersRequest
        request = self._framer.buildFrame(request_cls(address=address, count=count, dev_id=sensor.slave))
        self.pause(self._quiet_s)  # RTU: at least 3.5 character times of silence before a frame
        self._pending = pending = _Pending(sensor.slave, function, count, bytearray())
        stats = self.stats[sensor.node]
        try:
            self.link.write(request)
            self.wait_until(lambda: pending.done, sensor.timeout_s, where)
        except ModuleTimeout:
            stats["timeouts"] += 1
            self.link.incident("module_timeout", f"{where}: no reply within {sensor.timeout_s:g} s"
                               + (f" ({len(pending.buffer)} byte(s) of one)" if pending.buffer else ""))
            return "retry"
        finally:
            self._pending = None  # bytes after this are noise (a reply too late)
        if pending.failure == "crc_error":
            stats["crc_errors"] += 1
            self.link.incident("crc_error", f"{where}: {pending.detail}")
            return "retry"
        if pending.failure == "module_error":
            stats["exceptions"] += 1
            self.link.incident("module_error", f"{where}: {pending.detail}")
            return "retry" if pending.exception_code in _TRANSIENT else "final"
        return pending.registers or []

    def _parse(self, pending: _Pending) -> None:
        """Decode the reply in ``pending.buffer`` once it is complete (pymodbus's RTU framer and PDU decoder)."""
        data = bytes(pending.buffer)
        used, slave, _tid, pdu_bytes = self._framer.decode(data)
        if not used:
            if len(data) > _MAX_REPLY:
                pending.failure, pending.detail = "crc_error", f"{len(data)} bytes without a valid frame"
            return
        if not pdu_bytes:
            pending.failure, pending.detail = "crc_error", f"bad CRC in reply {data[:16].hex()}"
            return
        pdu = self._framer.decoder.decode(pdu_bytes)
        if pdu is None or slave != pending.slave or (pdu.function_code & 0x7F) != pending.function:
            pending.failure = "crc_error"
            pending.detail = f"reply from slave {slave} function {pdu_bytes[0]} to a request to slave " \
                             f"{pending.slave} function {pending.function}"
            return
        if pdu.function_code & 0x80:
            code = int(getattr(pdu, "exception_code", 0))
            pending.failure, pending.exception_code = "module_error", code
            pending.detail = f"exception {code} ({_EXCEPTIONS.get(code, 'unknown')})"
            return
        registers = list(pdu.registers)
        if len(registers) != pending.count:
            pending.failure, pending.detail = "crc_error", f"{len(registers)} registers for {pending.count} asked"
            return
        pending.registers = registers


# -- doctor's probe --------------------------------------------------------------------------------------------
def probe(port: Any, radio: Any, timeout_s: float, say: Say) -> Finding:
    """Read the first value of every configured gauge once; see :mod:`drivers.probe`. Only reads."""
    settings = getattr(radio, "modbus", None)
    if settings is None or not settings.sensors:
        return Finding(FAIL, say(N_("{port}: no Modbus sensors configured")).format(port=radio.port),
                       say(N_("list the gauges under radios[].modbus.sensors")))
    driver, link = ProbeLink.driver(Modbus, port, radio)
    driver.configure()
    answered, silent = [], []
    for sensor in settings.sensors:
        quick = sensor.model_copy(update={"retries": 0, "timeout_s": min(sensor.timeout_s, timeout_s)})
        value = driver.read(quick, sensor.values[0])
        (answered if value is not None else silent).append(f"{sensor.slave}")
        if value is not None:
            log.debug("probe: slave %d %s = %s", sensor.slave, sensor.values[0].key, value)
    details: dict[str, Any] = {"module": "Modbus RTU", "answered": answered, "silent": silent,
                               "incidents": [kind for kind, _detail in link.incidents]}
    if not silent:
        return Finding(OK, say(N_("{port}: every Modbus gauge answers (slaves {slaves})")).format(
            port=radio.port, slaves=", ".join(answered)), None, details)
    summary = say(N_("{port}: no valid reply from Modbus slave(s) {slaves}")).format(
        port=radio.port, slaves=", ".join(silent))
    if answered or any(kind in ("crc_error", "module_error") for kind, _d in link.incidents):
        hint = say(N_("check each silent gauge's slave address, power and its A/B pair; exception replies mean "
                      "a wrong register address or type"))
    elif link.raw:
        hint = noise_hint(bytes(link.raw), radio.baudrate, say)
    else:
        hint = say(N_("check the RS-485 wiring (A to A, B to B, common ground), the 120 ohm termination at both "
                      "ends, the gauge's power, and that radios[].baudrate is the gauge's speed"))
    return Finding(FAIL, summary, hint, details)


#: This driver in the registry (drivers/all.py registers it).
SPEC = DriverSpec(
    name="modbus", driver=Modbus, section="modbus", settings=ModbusConfig, probe=probe, twin="modbus",
    summary="Modbus RTU gauges on RS-485", capabilities=frozenset())
