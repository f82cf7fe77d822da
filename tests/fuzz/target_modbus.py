"""Fuzz target: byte chunks through ``Modbus.feed``, the reply parser of the Modbus RTU driver (pymodbus's RTU
framer and PDU decoder underneath).

Variants: ``pending`` (a read request is on the line and the bytes are its reply, or noise, or a reply to
something else) and ``idle`` (nothing was asked: every read is noise). Inputs are replies built with pymodbus's
server-side classes (registers or an exception), mutated, and cut into reads.

Adds itself to :data:`tests.fuzz.targets.TARGETS` when imported (targets.py imports it after its own targets).
"""

from __future__ import annotations

import random
from functools import cached_property
from types import SimpleNamespace
from typing import Any

from drivers import modbus
from tests.fuzz import targets
from tests.fuzz.mutate import chunk, mutate_bytes, random_bytes
from tests.fuzz.targets import ACCEPTED, IGNORED, FakeLink, Outcome, check, rejected

__all__ = ["ModbusTarget", "reply_frame"]

#: Bytes worth splicing into a reply: function codes plain and as exceptions, byte counts, slave addresses.
MODBUS_TOKENS = (b"\x01", b"\x03", b"\x04", b"\x83", b"\x84", b"\x02", b"\x04\x00", b"\xc0", b"\xff", b"\x00\x00",
                 b"\xff\xff", b"\x7f\xc0\x00\x00", b"\x01\x03\x02", b"\x01\x83\x02")
_CONFIG = modbus.ModbusConfig.model_validate({"sensors": [{
    "node": "3c000001", "kind": "water_level", "slave": 1, "values": [{"key": "level_cm", "address": 4}]}]})


def reply_frame(slave: int, function: int, registers: list[int] | None = None, exception: int = 0) -> bytes:
    """A slave's RTU reply, built with pymodbus: the registers, or the exception ``exception``."""
    from pymodbus.framer import FramerRTU
    from pymodbus.pdu import DecodePDU, ExceptionResponse
    from pymodbus.pdu.register_message import (
        ReadHoldingRegistersResponse,
        ReadInputRegistersResponse,
    )

    framer = FramerRTU(DecodePDU(is_server=True))
    if exception:
        return framer.buildFrame(ExceptionResponse(function, exception, device_id=slave))
    cls = ReadHoldingRegistersResponse if function == 3 else ReadInputRegistersResponse
    return framer.buildFrame(cls(registers=registers or [0], dev_id=slave))


def _request(rng: random.Random) -> tuple[int, int, int]:
    return rng.choice((1, 1, 2, 192, 247)), rng.choice((3, 4)), rng.choice((1, 1, 2))


class ModbusTarget(targets.Target):
    """Byte chunks through ``Modbus.feed`` with a request pending, or none."""

    name = "modbus"
    error = "never raises (incidents)"
    specific = ("feed() never raises and never writes or waits; with nothing asked every read is one garbled_line "
                "incident; with a request pending the reply is either taken (exactly the registers asked for, from "
                "a frame with a valid CRC that is in the input), refused as crc_error or module_error with a "
                "detail, or still awaited; how the bytes were cut into reads does not change which")
    weight = 6.0
    unit = 1500

    @cached_property
    def pool(self) -> list[bytes]:
        rng = random.Random(11)
        return [self._reply(rng, *_request(rng)) for _ in range(100)]

    @staticmethod
    def _reply(rng: random.Random, slave: int, function: int, count: int) -> bytes:
        if rng.random() < 0.2:
            return reply_frame(slave, function, exception=rng.choice((1, 2, 3, 4, 6, 11, 0x7F)))
        return reply_frame(slave, function, [rng.randrange(65536) for _ in range(count)])

    def valid(self, rng: random.Random) -> tuple[str, tuple[int, int, int], tuple[bytes, ...]]:
        request = _request(rng)
        registers = [rng.randrange(65536) for _ in range(request[2])]
        return "pending", request, tuple(chunk(rng, reply_frame(request[0], request[1], registers)))

    def generate(self, rng: random.Random) -> tuple[str, tuple[int, int, int], tuple[bytes, ...]]:
        request = _request(rng)
        r = rng.random()
        if r < 0.05:
            stream = random_bytes(rng, 300)
        elif r < 0.2:
            stream = self._reply(rng, *request)
        else:
            other = request if rng.random() < 0.7 else _request(rng)
            stream = mutate_bytes(rng, self._reply(rng, *other), tokens=MODBUS_TOKENS, pool=self.pool, max_len=400)
        variant = "idle" if rng.random() < 0.1 else "pending"
        return variant, request, tuple(c for c in chunk(rng, stream) if c) or (b"\x00",)

    @staticmethod
    def _driver(variant: str, request: tuple[int, int, int]) -> tuple[modbus.Modbus, FakeLink]:
        link = FakeLink("rs485")
        d = modbus.Modbus(SimpleNamespace(name="rs485", port="/dev/null", baudrate=9600, modbus=_CONFIG), link)
        if variant == "pending":  # as _ask() leaves it between writing the request and the reply's arrival
            d._pending = modbus._Pending(request[0], request[1], request[2], bytearray())
        return d, link

    def execute(self, data: tuple[str, tuple[int, int, int], tuple[bytes, ...]]) -> Outcome:
        variant, request, chunks = data
        d, link = self._driver(variant, request)
        for i, c in enumerate(chunks):
            d.feed(c, i)
        check(not link.uplinks, "feed() delivered an uplink: only a poll makes readings")
        if variant == "idle":
            check([k for k, _d in link.incidents] == ["garbled_line"] * len(chunks),
                  f"{len(chunks)} unasked reads gave {link.incidents}")
            return rejected("garbled_line")
        pending = d._pending
        assert pending is not None
        whole, _link = self._driver(variant, request)
        whole.feed(b"".join(chunks), 0)
        other = whole._pending
        assert other is not None
        check((pending.registers, pending.failure) == (other.registers, other.failure),
              f"the reply depends on the read boundaries: {pending.registers, pending.failure} in reads, "
              f"{other.registers, other.failure} in one")
        return self._outcome(pending, request, b"".join(chunks))

    @staticmethod
    def _outcome(pending: Any, request: tuple[int, int, int], stream: bytes) -> Outcome:
        slave, function, count = request
        if pending.registers is not None:
            check(len(pending.registers) == count and all(0 <= r <= 0xFFFF for r in pending.registers),
                  f"took {pending.registers} for {count} register(s)")
            check(reply_frame(slave, function, pending.registers) in stream,
                  "took registers that no valid reply in the input carries")
            return ACCEPTED
        if pending.failure is not None:
            check(pending.failure in ("crc_error", "module_error") and pending.detail.strip(),
                  f"failure {pending.failure!r} with detail {pending.detail!r}")
            if pending.failure == "module_error":
                check(reply_frame(slave, function, exception=pending.exception_code) in stream,
                      f"exception {pending.exception_code} that no valid reply in the input carries")
            return rejected(pending.failure)
        return IGNORED


targets.TARGETS.setdefault(ModbusTarget.name, ModbusTarget())
