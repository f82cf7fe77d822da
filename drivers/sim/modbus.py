"""The twin of drivers.modbus: an RS-485 line of Modbus RTU gauges, served by a real pymodbus RTU server on a pty.

::

    agent (drivers.modbus)  <─ pty A (PtyPort: stable link, unplug) ─>  the line  <─ pty B ─>  pymodbus
                                                                        (faults)              ModbusSerialServer

The agent opens pty A's link as it opens ``/dev/rs485``. pymodbus's own ``ModbusSerialServer`` (RTU framer, its
request decoding, its exception replies) listens on pty B, in an asyncio loop on a thread of its own, with one
``SimDevice`` per slave. Between the two, the line forwards whole requests (delimited by pymodbus's RTU framer)
and the server's replies, and is where the faults happen, as they would on a cable:

    no_answer      the next N requests get no reply (a slave that misses a frame)
    crc_errors     the next N replies arrive with a bad CRC (noise on the pair)
    exceptions     slave -> exception code: the slave replies with that Modbus exception (4 = device failure)
    disappear()    a slave stops answering altogether (a cut drop cable), reappear() brings it back
    reboot()       the line's power fails for ``boot_delay_s``: nobody answers, and noise lands on the wire
    unplug()       the USB RS-485 adapter vanishes (PtyPort), replug() brings it back under the same link
    faults         drivers.sim.faults.ModuleFaults applied to each reply (drop, garbage, truncate, duplicate)

Register values live here (:meth:`SimModbus.set_registers`, :meth:`SimModbus.set_value`); the server reads them
through its device's ``action`` on every request, so a test changes a gauge's reading between two polls.

The driver contract suite and scenarios talk to every twin through ``inject_uplink(payload)``: here that means
"the gauge's reading changes". The payload is remembered under a token number, the token becomes the level (cm)
of the contract gauge (:func:`contract_settings`), and :meth:`SimModbus.heard` maps a delivered reading back to
the payload, so the suite can compare what came out with what went in.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import random
import select
import struct
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from drivers.codec import frame as node_frame
from drivers.codec import kinds
from drivers.errors import CodecError
from drivers.sim._pty import PtyPort
from drivers.sim.faults import ModuleFaults, noise_bytes
from drivers.types import Uplink

__all__ = ["CONTRACT_NODE", "LineFaults", "Profile", "SimModbus", "Simulator", "air_payload", "contract_settings",
           "pack_value"]

log = logging.getLogger(__name__)

#: The node id and slave of the gauge the contract suite reads (its level register carries the tokens).
CONTRACT_NODE = "3c00b001"
CONTRACT_SLAVE = 1
CONTRACT_REGISTER = 4
_MAX_REQUEST = 256  # bytes from the host without a request in them are noise, dropped


@dataclass
class LineFaults:
    """Faults of the line between the host and the slaves; see the module docstring. ``counts`` says what was
    injected (keys ``no_answer``, ``crc_error``, ``exception``, ``gone``, ``powered_off``)."""

    no_answer: int = 0
    crc_errors: int = 0
    exceptions: dict[int, int] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)


class Profile(BaseModel):
    """The knobs a scenario file may set under a ``model: modbus`` module's ``profile:``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    baudrate: int = 9600
    slaves: list[int] = Field(default_factory=lambda: [CONTRACT_SLAVE], min_length=1, max_length=32)
    registers: int = Field(128, ge=8, le=1024)


def pack_value(number: float, type_: str, word_order: str = "big") -> list[int]:
    """The registers a gauge holds for ``number`` as ``type_`` (the inverse of drivers.modbus.registers_value)."""
    fmt = {"u16": ">H", "s16": ">h", "u32": ">I", "s32": ">i", "float32": ">f"}[type_]
    raw = struct.pack(fmt, number if type_ == "float32" else int(number))
    words = [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]
    return words if word_order == "big" else list(reversed(words))


class SimModbus:
    """An RS-485 line with pymodbus RTU slaves, on a pty; see the module docstring.

    Args:
        name: label for logs and threads.
        link: stable path of the agent's end (like ``/dev/rs485``); None uses the bare pty path.
        boot_delay_s: how long the slaves stay silent after :meth:`reboot`, in seconds.
        rng: random source for noise and faults.
        baudrate: the line speed the server listens at.
        slaves: the slave addresses on the line.
        registers: how many registers each slave has (holding and input each, addresses from 0).

    Attributes:
        line: the line's faults (:class:`LineFaults`).
        faults: per-reply byte faults (:class:`ModuleFaults`), as the other twins have.
        requests: (slave, function, address, count) of the last requests the server was given.
    """

    def __init__(self, *, name: str = "rs485", link: str | None = None, boot_delay_s: float = 0.2,
                 rng: random.Random | None = None, baudrate: int = 9600, slaves: list[int] | tuple[int, ...] = (1,),
                 registers: int = 128) -> None:
        self.name = name
        self.rng = rng or random.Random()
        self.boot_delay_s = boot_delay_s
        self.baudrate = baudrate
        self.size = registers
        self.holding = {s: [0] * registers for s in slaves}
        self.input = {s: [0] * registers for s in slaves}
        self.line = LineFaults()
        self.faults = ModuleFaults(rng=self.rng)
        self.requests: collections.deque[tuple[int, int, int, int]] = collections.deque(maxlen=1000)
        self.tokens: dict[int, bytes] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._port = PtyPort(self._from_host, link=link, name=name)
        self._request = bytearray()
        self._framer: Any = None
        self._server_fd: int | None = None
        self._server_tty: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._powered = threading.Event()
        self._listening = threading.Event()
        self._idle = threading.Event()  # no request waits for its reply
        self._idle.set()

    # -- SimModule -------------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self._port.path

    @property
    def booted(self) -> bool:
        return self._powered.is_set() and self._listening.is_set()

    def start(self, *, wait: bool = True) -> None:
        """Open both ptys and start the pymodbus server; ``wait`` until it listens."""
        from pymodbus.framer import FramerRTU
        from pymodbus.pdu import DecodePDU

        self._framer = FramerRTU(DecodePDU(is_server=True))
        self._server_fd, self._server_tty = os.openpty()
        tty.setraw(self._server_tty)
        os.set_blocking(self._server_fd, False)
        self._powered.set()
        self._port.start()
        for target, what in ((self._run_server, "server"), (self._from_server, "line")):
            thread = threading.Thread(target=target, name=f"modbus-{what}-{self.name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if wait and not self._listening.wait(10.0):
            raise RuntimeError(f"{self.name}: the pymodbus server did not start")

    def stop(self) -> None:
        self._stopping.set()
        loop, server = self._loop, self._server
        if loop is not None and server is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(5.0)
        for thread in self._threads:
            thread.join(5.0)
        self._port.stop()
        for fd in (self._server_fd, self._server_tty):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._server_fd = self._server_tty = None

    def reboot(self, *, noise: bool = True) -> None:
        """The line's power fails: nobody answers for ``boot_delay_s``; noise lands on the wire."""
        self._powered.clear()
        self.line.counts["powered_off"] += 1
        if noise:
            self._port.write(noise_bytes(self.rng))
        timer = threading.Timer(self.boot_delay_s, self._powered.set)
        timer.daemon = True
        timer.start()

    def unplug(self) -> None:
        self._port.unplug()

    def replug(self) -> None:
        self._port.replug()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.05))
        return True

    def inject_uplink(self, payload: bytes, *, rssi: int = -80, snr: float = 7.0, src: int | None = None) -> bool:
        """The contract gauge's reading changes to a new token standing for ``payload``; False while powered off."""
        if not self.booted:
            return False
        with self._lock:
            token = len(self.tokens) + 1
            self.tokens[token] = bytes(payload)
        self.set_registers(CONTRACT_SLAVE, CONTRACT_REGISTER, [token], table="input")
        return True

    def inject_garbage(self, data: bytes | None = None) -> None:
        """Noise on the pair, between two requests: after the reply in flight (if any), apart from it."""
        if not self._idle.is_set():
            self._idle.wait(1.0)
            time.sleep(0.02)  # not glued to the reply: a host reading both at once would take them for one frame
        self._port.write(data if data is not None else noise_bytes(self.rng))

    def inject_crc_error(self) -> bool:
        """The next reply arrives with a bad CRC."""
        with self._lock:
            self.line.crc_errors += 1
        return True

    # -- the gauges ----------------------------------------------------------------------------------------
    def set_registers(self, slave: int, address: int, values: list[int], *, table: str = "holding") -> None:
        """Put raw 16-bit ``values`` into a slave's registers from ``address`` on."""
        store = (self.holding if table == "holding" else self.input)[slave]
        with self._changed:
            store[address:address + len(values)] = [v & 0xFFFF for v in values]
            self._changed.notify_all()

    def set_value(self, slave: int, address: int, number: float, *, type: str = "u16",
                  word_order: str = "big", table: str = "holding") -> None:
        """Put ``number`` as ``type`` into a slave's registers (see :func:`pack_value`)."""
        self.set_registers(slave, address, pack_value(number, type, word_order), table=table)

    def disappear(self, slave: int) -> None:
        """The slave stops answering (its drop cable is cut)."""
        with self._lock:
            self.line.gone.add(slave)

    def reappear(self, slave: int) -> None:
        with self._lock:
            self.line.gone.discard(slave)

    def heard(self, uplink: Uplink) -> bytes | None:
        """The payload a delivered reading of the contract gauge stands for (None: not a token reading)."""
        try:
            parsed = node_frame.parse(uplink.payload)
            level = kinds.decode_body("water_level", parsed.body).get("level_cm")
        except (CodecError, ValueError):
            return None
        if parsed.node_id != int(CONTRACT_NODE, 16) or level is None:
            return None
        return self.tokens.get(round(level))

    # -- the line ------------------------------------------------------------------------------------------
    def _from_host(self, data: bytes) -> None:
        """Bytes from the agent: forward each complete request to the server, unless a fault swallows it."""
        self._request += data
        while self._request:
            used, slave, _tid, pdu = self._framer.decode(bytes(self._request))
            if not used:
                if len(self._request) > _MAX_REQUEST:
                    self._request.clear()
                return
            request, self._request = bytes(self._request[:used]), bytearray(self._request[used:])
            if pdu and self._deliver_request(slave, pdu):
                self._write_server(request)

    def _deliver_request(self, slave: int, pdu: bytes) -> bool:
        """Whether the request reaches the slaves (False: nobody answers it)."""
        with self._changed:
            if len(pdu) >= 5:
                self.requests.append((slave, pdu[0], *struct.unpack(">HH", pdu[1:5])))
            self._changed.notify_all()
            if not self._powered.is_set():
                self.line.counts["powered_off"] += 1
                return False
            if slave in self.line.gone:
                self.line.counts["gone"] += 1
                return False
            if self.line.no_answer > 0:
                self.line.no_answer -= 1
                self.line.counts["no_answer"] += 1
                return False
            self._idle.clear()
        return True

    def _write_server(self, data: bytes) -> None:
        fd = self._server_fd
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, data)

    def _from_server(self) -> None:
        """Replies from the server: apply the line's faults and hand them to the agent's end."""
        reply = bytearray()
        while not self._stopping.is_set():
            fd = self._server_fd
            if fd is None:
                return
            ready, _, _ = select.select([fd], [], [], 0.005 if reply else 0.1)
            if ready:
                with contextlib.suppress(BlockingIOError, OSError):
                    reply += os.read(fd, 4096)
                continue
            if reply:  # a pause of 5 ms ends the reply, as the RTU silence does
                self._to_host(bytes(reply))
                reply.clear()

    def _to_host(self, reply: bytes) -> None:
        with self._lock:
            corrupt = self.line.crc_errors > 0
            if corrupt:
                self.line.crc_errors -= 1
                self.line.counts["crc_error"] += 1
        if corrupt:
            reply = reply[:-1] + bytes([reply[-1] ^ 0x5A])
        for chunk in self.faults.apply(reply, terminator=b""):
            self._port.write(chunk)
        self._idle.set()

    # -- the pymodbus server -------------------------------------------------------------------------------
    def _run_server(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except Exception:  # a simulator bug must show in the log, not kill the test run silently
            log.exception("%s: the pymodbus server failed", self.name)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        from pymodbus.framer import FramerType
        from pymodbus.server import ModbusSerialServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        devices = [SimDevice(id=slave, simdata=[SimData(0, count=self.size, datatype=DataType.REGISTERS)],
                             action=self._action(slave)) for slave in self.holding]
        assert self._server_tty is not None
        self._server = ModbusSerialServer(devices, framer=FramerType.RTU, port=os.ttyname(self._server_tty),
                                          baudrate=self.baudrate, ignore_missing_devices=True)
        await self._server.serve_forever(background=True)
        self._listening.set()
        await self._server.serving

    def _action(self, slave: int) -> Callable[..., Any]:
        async def action(function_code: int, start_address: int, address: int, count: int,
                         current_registers: list[int], set_values: Any) -> Any:
            from pymodbus.constants import ExcCodes

            with self._lock:
                code = self.line.exceptions.get(slave)
                if code:
                    self.line.counts["exception"] += 1
                    return ExcCodes(code)
                store = self.holding[slave] if function_code == 3 else self.input[slave]
                offset = address - start_address
                current_registers[offset:offset + count] = store[address:address + count]
            return None

        return action


def contract_settings() -> Any:
    """The ``modbus:`` section the driver contract suite runs with: one water-level gauge on slave 1, its level
    in cm in input register 4, polled every second."""
    from drivers.modbus import ModbusConfig

    return ModbusConfig.model_validate({"sensors": [{
        "node": CONTRACT_NODE, "kind": "water_level", "slave": CONTRACT_SLAVE, "interval_s": 1, "timeout_s": 0.3,
        "values": [{"key": "level_cm", "address": CONTRACT_REGISTER, "table": "input"}]}]})


def air_payload(frame: bytes, settings: Any) -> bytes:
    """What a node hands this twin for ``frame``: the frame itself (see :meth:`SimModbus.inject_uplink`)."""
    return frame


#: The twin of drivers.modbus (scenario files: ``model: modbus``).
Simulator = SimModbus
