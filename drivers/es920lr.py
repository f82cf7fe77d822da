"""EASEL ES920LR (private LoRa) in processor mode (docs/protocols.md §2).

Configuration on every start, reopen and module reboot::

    (boot)  "\\r\\nSelect Mode [1.terminal or 2.processor]\\r\\n"
    > 2                 -> OK                     processor mode: no prompt, no echo
    > node 1|2, bw 3-6, sf, channel, panid, ownid, dstid FFFF, rcvid 1, rssi 1, transmode 1, format 1|2, power
                        -> OK | NG 001 (unknown command) | NG 002 (bad value)
    > version           -> VER 1.12
    > start             -> "\\r\\n" (firmware 1.12 prints "OK\\r\\n" first; both are accepted)

Facts checked in public code, and the assumptions made where they were not:

- ``1`` is ON and ``2`` is OFF for on/off settings (``rcvid``, ``rssi``, ``ack``); ``node 1`` is Coordinator and
  ``node 2`` EndDevice; ``format 1`` ASCII, ``2`` BINARY (hideakitai/ES920 ``Configurator.h``/``Constants.h``).
- ``bw`` must come before ``channel``: the firmware checks the channel against the current bandwidth and resets
  the channel when the bandwidth changes (yamanuk/ES920LR_Firmware ``menus.c``).
- Received frames always carry RSSI and PAN/SRC here (``rssi 1``, ``rcvid 1``): that fixed 12-character header is
  what tells a received line from a status line, and it gives Uplink.src.
- Binary format: every module output in operation is ``[len][len bytes]``; ``len`` counts the 4 RSSI and 8 ID
  characters plus the payload (``message.c`` ``ReceiveData``), replies are ``02 "OK"`` and ``06 "NG 10x"``. The
  host sends ``[len][payload]`` (hideakitai ``Operator.h``). Configuration mode stays line-based ASCII.
- ``dstid FFFF`` (broadcast) so transmit() reaches any node; the denen frame carries the node id itself.

**Limitation of the ASCII format with ``payload_encoding: raw``:** the payload is raw bytes ended by CR LF, so a
payload that contains CR LF is cut in two (the first part arrives as a short frame, the rest as a garbled line).
Use ``payload_encoding: hex`` (nodes send hex text) or the binary format when payloads are arbitrary bytes.

The module cannot be reset from the serial line (that needs its RESET pin). If the port is opened after the boot
prompt went by (the OS discards input received before the port was opened), the driver probes with ``version``:
at the mode prompt it gets ``NG 002``, in configuration mode ``VER ...``, and in operation mode the word is sent
over the air and answered with ``OK``/``NG 10x``; then the module keeps its previous settings, which cannot be
verified, and ``module_info["mode"]`` says so.
"""

from __future__ import annotations

import binascii
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from drivers.errors import ModuleError, ModuleTimeout
from drivers.es920lr_settings import BW_CODES, Es920Config
from drivers.probe import (
    FAIL,
    N_,
    OK,
    WARN,
    Finding,
    PortLines,
    Say,
    noise_hint,
    printable,
)
from drivers.radio import Link, ModuleDriver, ModuleRebooted
from drivers.registry import DriverSpec
from drivers.settings import Text
from drivers.transport import LineSplitter
from drivers.types import Uplink

__all__ = ["Es920lr", "SPEC", "parse_rx_header", "probe"]

log = logging.getLogger(__name__)

_PROMPT = b"Select Mode"
_HEX12 = re.compile(rb"[0-9A-Fa-f]{12}")
_NG = re.compile(rb"NG \d{3}")
_NOISE = bytes(range(0x00, 0x20)) + bytes(range(0x7F, 0x100))
_HEADER = 12  # RSSI (4) + PAN (4) + SRC (4) characters


@dataclass
class _Pending:
    command: str
    status: str | None = None  # "OK" or "NG nnn"
    values: list[str] = field(default_factory=list)  # "VER 1.12"
    empty_line: bool = False  # the "\r\n" that ends `start`
    rebooted: bool = False


def parse_rx_header(header: bytes) -> tuple[int, str, str]:
    """Decode the 12-character header of a received frame.

    Args:
        header: ``RRRRPPPPSSSS``: RSSI as int16 two's complement, PAN id and source id, 4 hex digits each.

    Returns:
        (RSSI in dBm, PAN id, source id), ids as 4 upper-case hex digits.

    Raises:
        ValueError: not 12 hex digits.
    """
    if not _HEX12.fullmatch(header):
        raise ValueError(f"not a 12-hex-digit RX header: {header!r}")
    rssi = int(header[0:4], 16)
    if rssi >= 0x8000:
        rssi -= 0x10000
    return rssi, header[4:8].decode().upper(), header[8:12].decode().upper()


class Es920lr(ModuleDriver):
    """EASEL ES920LR as a receiver (and occasional sender) in processor mode.

    Config section ``config.es920``: ``bandwidth_khz`` (62.5|125|250|500), ``spreading_factor``, ``channel``,
    ``pan_id`` and ``own_id`` (4 hex), ``format`` (ascii|binary), ``payload_encoding`` (hex|raw, ASCII only),
    ``power_dbm``, ``node`` (coordinator|end_device).

    Class attributes are the timing knobs (seconds); tests shorten them.
    """

    command_timeout_s = 1.5
    #: How long to wait for the boot prompt on a fresh port before probing.
    prompt_timeout_s = 2.5
    #: A probe that went out over the air is answered after the airtime, ACK and retries.
    probe_timeout_s = 8.0
    #: Wait for a reply that may or may not follow (the OK after VER, a late answer to the probe).
    grace_s = 0.3
    #: Payload limit in Payload mode (VER 1.12), bytes; also bounds a valid binary length byte.
    max_payload = 50
    #: A partial binary frame older than this, in seconds, started with a noise byte, not a length.
    stale_frame_s = 0.5

    def __init__(self, config: Any, link: Link) -> None:
        super().__init__(config, link)
        es = config.es920
        self._radio = link.radio
        self._binary = es.format == "binary"
        self._hex = es.payload_encoding == "hex"
        self._splitter = LineSplitter((b"\r\n",), skip_empty=False, max_line=1024, on_overflow=self._on_overflow)
        self._framing = "line"  # "line" or "binary"
        self._buf = bytearray()  # binary framing
        self._buf_since_us = 0
        self._in_noise = False
        self._phase = "boot"  # boot | config | operation
        self._prompt_seen = False
        self._pending: _Pending | None = None

    # -- parsing -------------------------------------------------------------------------------------------
    def feed(self, chunk: bytes, received_us: int) -> None:
        uplinks: list[Uplink] = []
        if self._framing == "binary":
            self._feed_binary(chunk, uplinks, received_us)
        else:
            self._feed_lines(chunk, uplinks, received_us)
        if uplinks:
            self.link.deliver(uplinks)

    def _feed_lines(self, chunk: bytes, uplinks: list[Uplink], received_us: int) -> None:
        lines = self._splitter.feed(chunk)
        for i, line in enumerate(lines):
            self._line(line, uplinks, received_us)
            if self._framing == "binary":
                # `start` was just acknowledged in binary format: what follows is length-prefixed. Only CR LF
                # splits lines here and empty lines are kept, so the rest is rebuilt byte for byte.
                rest = b"".join(x + b"\r\n" for x in lines[i + 1:]) + self._splitter.take_tail()
                if rest:
                    self._feed_binary(rest, uplinks, received_us)
                return

    def _line(self, line: bytes, uplinks: list[Uplink], received_us: int) -> None:
        if not line:
            p = self._pending
            if p is not None and p.command == "start":
                p.empty_line = True
                self._enter_operation()
            return
        stripped = line.lstrip(_NOISE)
        if len(stripped) != len(line):
            self._garbled(line[: len(line) - len(stripped)], "noise before line")
            if not stripped:
                return
            line = stripped
        if line.startswith(_PROMPT):
            self._boot(line)
            return
        if line == b"OK" or _NG.fullmatch(line):
            self._status(line.decode())
            return
        if self._phase == "operation" or (self._phase == "boot" and _HEX12.match(line)):
            # In "boot" too: a module found already operating keeps receiving while we probe it, and nothing the
            # configuration mode prints starts with 12 hex digits.
            self._rx_line(line, uplinks, received_us)
            return
        p = self._pending
        if p is not None and line.startswith(b"VER"):
            p.values.append(line.decode("ascii", "replace"))
            return
        self._garbled(line, "unparseable line")

    def _rx_line(self, line: bytes, uplinks: list[Uplink], received_us: int) -> None:
        try:
            rssi, _pan, src = parse_rx_header(line[:_HEADER])
        except ValueError:
            self._garbled(line, "not a received frame")
            return
        body = line[_HEADER:]
        if self._hex:
            try:
                if not body:
                    raise ValueError("empty payload")
                payload = binascii.a2b_hex(body)
            except ValueError:
                self.link.incident("bad_hex", f"RX payload is not hex: {bytes(line[:80])!r}")
                return
        elif body:
            payload = bytes(body)
        else:
            self._garbled(line, "received frame without payload")
            return
        uplinks.append(Uplink(self._radio, payload, rssi, None, src, received_us))

    def _feed_binary(self, data: bytes, uplinks: list[Uplink], received_us: int) -> None:
        buf = self._buf
        old = len(buf)
        stale = old > 0 and received_us - self._buf_since_us > self.stale_frame_s * 1e6
        if old == 0:
            self._buf_since_us = received_us
        buf += data
        n = len(buf)
        pos = 0
        while pos < n:
            length = buf[pos]
            if self._valid_length(length):
                end = pos + 1 + length
                if end > n and not (stale and pos < old):
                    ahead = self._complete_frame_after(buf, pos, n)
                    if ahead < 0:
                        break  # wait for the rest of the frame
                    # The "length" was a noise byte: a whole, valid frame already sits behind it. Without this
                    # look-ahead that frame (maybe the last SOS for hours) would wait for the next byte to arrive.
                    if not self._in_noise:
                        self._in_noise = True
                        self._garbled(bytes(buf[pos:ahead]), "binary stream out of step")
                    pos = ahead
                    continue
                if end <= n and self._frame(bytes(buf[pos + 1:end]), uplinks, received_us):
                    pos = end
                    self._in_noise = False
                    continue
            if buf.startswith(_PROMPT, pos):
                # The module rebooted: its boot prompt is ASCII. Hand everything from here to the line framing.
                rest = bytes(buf[pos:])
                buf.clear()
                self._in_noise = False
                self._framing = "line"
                self._splitter.reset()
                self._feed_lines(rest, uplinks, received_us)
                return
            if n - pos < len(_PROMPT) and _PROMPT.startswith(bytes(buf[pos:])) and not stale:
                break  # maybe the start of a boot prompt; wait for more
            if not self._in_noise:
                self._in_noise = True
                self._garbled(bytes(buf[pos:pos + 16]), "binary stream out of step")
            pos += 1
        del buf[:pos]
        if pos:
            self._buf_since_us = received_us

    def _valid_length(self, length: int) -> bool:
        return length == 2 or length == 6 or _HEADER < length <= _HEADER + self.max_payload

    @staticmethod
    def _plausible(body: bytes) -> bool:
        """Whether ``body`` (what a length byte announced) is a reply or a received frame."""
        if len(body) == 2:
            return body == b"OK"
        if len(body) == 6:
            return _NG.fullmatch(body) is not None
        return _HEX12.fullmatch(body[:_HEADER]) is not None

    def _complete_frame_after(self, buf: bytearray, pos: int, n: int) -> int:
        """Start of a complete, plausible frame after ``pos`` that ends the buffer or is followed by a plausible
        length byte; -1 if there is none."""
        for q in range(pos + 1, n):
            length = buf[q]
            end = q + 1 + length
            if (self._valid_length(length) and end <= n and self._plausible(bytes(buf[q + 1:end]))
                    and (end == n or self._valid_length(buf[end]))):
                return q
        return -1

    def _frame(self, body: bytes, uplinks: list[Uplink], received_us: int) -> bool:
        """One length-prefixed frame; False if it does not look like one (then the length byte was noise)."""
        if not self._plausible(body):
            return False
        if len(body) == 2 or len(body) == 6:
            self._status(body.decode())
            return True
        rssi, _pan, src = parse_rx_header(body[:_HEADER])
        uplinks.append(Uplink(self._radio, body[_HEADER:], rssi, None, src, received_us))
        return True

    def _status(self, status: str) -> None:
        p = self._pending
        if p is not None and p.status is None:
            p.status = status
        else:
            log.debug("%s: status %r with no command pending (duplicate?)", self._radio, status)

    def _boot(self, line: bytes) -> None:
        self._prompt_seen = True
        if self._phase == "boot":
            return  # the prompt we are waiting for
        self.link.incident("module_reboot", f"boot prompt mid-stream: {bytes(line[:60])!r}")
        self._phase = "boot"
        self._framing = "line"
        self._buf.clear()
        p = self._pending
        if p is not None and p.status is None:
            p.rebooted = True
            p.status = "module rebooted"
        self.module_rebooted()

    def _enter_operation(self) -> None:
        self._phase = "operation"
        if self._binary:
            self._framing = "binary"

    def _garbled(self, data: bytes, why: str) -> None:
        if self._phase == "boot" and self.configuring:
            # Waiting for the prompt or probing: leftovers of what the module printed before we listened, and
            # reset noise, are expected here.
            log.debug("%s: while booting: %s: %r", self._radio, why, bytes(data[:60]))
            return
        self.link.incident("garbled_line", f"{why}: {bytes(data[:60])!r}")

    def _on_overflow(self, nbytes: int) -> None:
        self.link.incident("line_overflow", f"{nbytes} bytes without CR LF discarded")

    # -- commands ------------------------------------------------------------------------------------------
    def _send(self, command: str, data: bytes | None = None) -> _Pending:
        self.check_not_rebooted(command)
        p = _Pending(command)
        self._pending = p
        self.link.write(data if data is not None else command.encode("ascii") + b"\r\n")
        return p

    def _await(self, p: _Pending, predicate: Any, timeout: float) -> None:
        """Pump until predicate(); reports a timeout. The pending command stays registered until done()."""
        try:
            self.wait_until(lambda: p.rebooted or predicate(), timeout, p.command)
        except ModuleTimeout as exc:
            self._pending = None
            self.link.incident("module_timeout", str(exc))
            raise
        if p.rebooted:
            self._pending = None
            raise ModuleRebooted(p.command, "module rebooted")

    def _set(self, command: str) -> None:
        p = self._send(command)
        self._await(p, lambda: p.status is not None, self.command_timeout_s)
        self._pending = None
        if p.status != "OK":
            self.link.incident("module_error", f"{command} -> {p.status}")
            raise ModuleError(command, p.status or "?")

    # -- configuration -------------------------------------------------------------------------------------
    def configure(self) -> None:
        # The shared mechanism (ModuleDriver.configure) runs configure_once and starts over after a reboot; no
        # command of this driver stays pending once it is over, whatever happened.
        try:
            super().configure()
        finally:
            self._pending = None

    def configure_once(self) -> None:
        es = self.config.es920
        if self._phase != "boot":
            self._phase = "boot"
            self._framing = "line"
            self._buf.clear()
        if not self._prompt_seen:
            try:
                self.wait_until(lambda: self._prompt_seen, self.prompt_timeout_s, "boot prompt")
            except ModuleTimeout:
                pass  # the prompt went by before the port was opened, or the module is past it: probe
        where = "prompt" if self._prompt_seen else self._probe()
        if where == "operation":
            self._enter_operation()
            self.module_info = {
                "firmware": "unknown",
                "mode": "operation (was already running; settings not verified, reset the module to apply them)",
            }
            log.warning("%s", Text(N_("{radio}: ES920LR was already in operation mode; running with its previous "
                                      "settings"), radio=self._radio))
            return
        if where == "prompt":
            self._prompt_seen = False
            self._set("2")  # processor mode
        self._phase = "config"
        for command in self._settings(es):
            self._set(command)
        firmware = self._version()
        self._start()
        self.module_info = {
            "firmware": firmware,
            "mode": f"processor, {es.node}, {es.format}"
                    + (f"/{es.payload_encoding}" if es.format == "ascii" else ""),
            "radio": f"bw {es.bandwidth_khz} kHz, sf {es.spreading_factor}, channel {es.channel}, "
                     f"pan {es.pan_id.upper()}, own {es.own_id.upper()}",
        }

    @staticmethod
    def _settings(es: Any) -> list[str]:
        try:
            bw = BW_CODES[float(es.bandwidth_khz)]
        except KeyError:
            raise ModuleError("bw", f"unsupported bandwidth {es.bandwidth_khz} kHz") from None
        return [
            f"node {1 if es.node == 'coordinator' else 2}",
            f"bw {bw}",  # before channel: the channel range depends on the bandwidth
            f"sf {int(es.spreading_factor)}",
            f"channel {int(es.channel)}",
            f"panid {es.pan_id.upper()}",
            f"ownid {es.own_id.upper()}",
            "dstid FFFF",
            "rcvid 1",
            "rssi 1",
            "transmode 1",  # Payload mode: what we write is the payload, not a destination header
            f"format {2 if es.format == 'binary' else 1}",
            f"power {int(es.power_dbm)}",
        ]

    def _probe(self) -> str:
        """Find out where a silent module is: 'prompt', 'config' or 'operation'."""
        p = self._send("version")
        self._await(p, lambda: p.status is not None or bool(p.values) or self._prompt_seen, self.probe_timeout_s)
        if p.status is None and not p.values:
            # The prompt came (the module was booting and ignored us); give a late answer a moment to arrive so it
            # is not taken for the answer to the next command.
            self.pause(self.grace_s)
        self._pending = None
        if p.values:
            return "config"
        if p.status == "NG 002":
            return "prompt"  # the mode prompt rejected "version"
        if p.status is not None and (p.status == "OK" or p.status.startswith("NG 1")):
            return "operation"  # "version" went out over the air
        if p.status is not None and p.status.startswith("NG"):
            return "config"
        return "prompt"

    def _version(self) -> str:
        p = self._send("version")
        self._await(p, lambda: p.status is not None or bool(p.values), self.command_timeout_s)
        if p.status is not None and p.status != "OK":
            self._pending = None
            self.link.incident("module_error", f"version -> {p.status}")
            raise ModuleError("version", p.status)
        if not p.values:
            self.pause(self.grace_s)  # OK came first; the VER line may follow
        self._pending = None
        return p.values[-1] if p.values else "unknown"

    def _start(self) -> None:
        p = self._send("start")
        try:
            self.wait_until(lambda: p.rebooted or p.empty_line or (p.status is not None and p.status != "OK"),
                            self.command_timeout_s, "start")
        except ModuleTimeout as exc:
            if p.status != "OK":
                self._pending = None
                self.link.incident("module_timeout", str(exc))
                raise
            # "OK" without the "\r\n" that should follow: accept, the module is in operation.
            log.debug("%s: start answered OK without the empty line", self._radio)
        self._pending = None
        if p.rebooted:
            raise ModuleRebooted("start", "module rebooted")
        if p.status is not None and p.status != "OK":
            self.link.incident("module_error", f"start -> {p.status}")
            raise ModuleError("start", p.status)
        if self._phase != "operation":
            self._enter_operation()
            if self._binary:
                tail = self._splitter.take_tail()
                if tail:
                    uplinks: list[Uplink] = []
                    self._feed_binary(tail, uplinks, time.time_ns() // 1000)
                    if uplinks:
                        self.link.deliver(uplinks)

    # -- transmit ------------------------------------------------------------------------------------------
    def transmit(self, payload: bytes, timeout: float) -> None:
        """Send one payload (Payload mode, to dstid FFFF); waits for the module's OK after airtime and ACK."""
        if self._phase != "operation":
            raise ModuleError("transmit", "module not in operation mode")
        if self._binary:
            data = payload
            wire = bytes([len(payload)]) + payload
        elif self._hex:
            data = payload.hex().upper().encode()
            wire = data + b"\r\n"
        else:
            if b"\r\n" in payload:
                raise ValueError("a raw ASCII payload cannot contain CR LF; use hex encoding or the binary format")
            data = payload
            wire = data + b"\r\n"
        if not payload or len(data) > self.max_payload:
            raise ValueError(f"ES920LR payload must be 1..{self.max_payload} bytes on the wire, got {len(data)}")
        p = self._send("transmit", wire)
        try:
            self._await(p, lambda: p.status is not None, max(timeout, 0.05))
        except ModuleRebooted:
            self.link.incident("module_error", "transmit -> module rebooted")
            raise ModuleError("transmit", "module rebooted") from None
        finally:
            self._pending = None
        if p.status != "OK":
            self.link.incident("module_error", f"transmit -> {p.status}")
            raise ModuleError("transmit", p.status or "?")


# -- doctor's probe --------------------------------------------------------------------------------------------
def _is_prompt(line: bytes) -> bool:
    return line.startswith(_PROMPT)


def _is_answer(line: bytes) -> bool:  # to `version`, wherever the module is
    return line.startswith((b"VER", b"NG ", _PROMPT)) or line == b"OK"


def probe(port: Any, radio: Any, timeout_s: float, say: Say) -> Finding:
    """Ask ``version`` (and select processor mode, ``2``, at the mode prompt); see :mod:`drivers.probe`.

    Selecting processor mode is not saved, and is what the agent does on start anyway.
    """
    lines = PortLines(port, (b"\r\n",))
    # The boot prompt only shows if the module was reset just now; usually it went by long ago.
    at_prompt = any(_is_prompt(ln) for ln in lines.until(_is_prompt, min(timeout_s, 0.3)))
    if not at_prompt:
        port.write(b"version\r\n")
        heard = lines.until(_is_answer, timeout_s)
        at_prompt = any(_is_prompt(ln) or ln == b"NG 002" for ln in heard)
        if not at_prompt:
            found = _answer_in_operation(heard, bytes(lines.raw), radio.port, say)
            if found is not None:
                return found
    if at_prompt:
        port.write(b"2\r\n")
        lines.until(lambda ln: ln == b"OK" or ln.startswith(b"NG"), timeout_s)
        port.write(b"version\r\n")
        got = lines.until(lambda ln: ln.startswith(b"VER") or ln.startswith(b"NG"), timeout_s)
        ver = next((ln.decode("ascii", "replace") for ln in got if ln.startswith(b"VER")), None)
        if ver is not None:
            return Finding(OK, say(N_("{port}: ES920LR answers, firmware {firmware}, was at its mode prompt "
                                      "(processor mode selected)")).format(port=radio.port, firmware=ver), None,
                           {"module": "ES920LR", "firmware": ver, "mode": "configuration"})
        return Finding(WARN, say(N_("{port}: ES920LR shows its mode prompt but did not report a version")).format(
            port=radio.port), say(N_("reset the module and run doctor again")), {"module": "ES920LR", "mode": "prompt"})
    raw = bytes(lines.raw)
    if _HEX12.search(raw):
        # RSSI, PAN and source id as 12 hex digits: frames received in operation mode (either format).
        return Finding(OK, say(N_("{port}: ES920LR is in operation mode and receiving frames; firmware not "
                                  "shown in this mode")).format(port=radio.port), None,
                       {"module": "ES920LR", "firmware": "unknown", "mode": "operation"})
    if raw and not printable(raw):
        return Finding(FAIL, say(N_("{port}: no sensible answer to `version`")).format(port=radio.port),
                       noise_hint(raw, radio.baudrate, say), {"received": raw[:64].hex()})
    return Finding(WARN, say(N_("{port}: no answer to `version`")).format(port=radio.port),
                   say(N_("a module in operation mode with the binary format ignores text: power-cycle it (it then "
                          "shows its mode prompt) and run doctor again; otherwise {hint}")).format(
                       hint=noise_hint(raw, radio.baudrate, say)), {"module": "ES920LR"})


def _answer_in_operation(heard: list[bytes], raw: bytes, port: str, say: Say) -> Finding | None:
    """What the answer to ``version`` says when the module is not at its mode prompt, if it says anything."""
    if any(ln.startswith(b"VER") for ln in heard):
        firmware = next(ln for ln in heard if ln.startswith(b"VER")).decode("ascii", "replace")
        return Finding(OK, say(N_("{port}: ES920LR answers, firmware {firmware}, configuration mode "
                                  "(processor)")).format(port=port, firmware=firmware), None,
                       {"module": "ES920LR", "firmware": firmware, "mode": "configuration"})
    if any(ln == b"OK" or ln.startswith(b"NG 1") for ln in heard):
        # Operation mode, ASCII format: the word went out over the air, as the agent's own probe does.
        return Finding(OK, say(N_("{port}: ES920LR answers in operation mode (ascii); firmware not shown "
                                  "in this mode")).format(port=port), None,
                       {"module": "ES920LR", "firmware": "unknown", "mode": "operation"})
    if b"\x02OK" in raw or b"\x06NG 1" in raw:
        return Finding(OK, say(N_("{port}: ES920LR answers in operation mode (binary)")).format(port=port), None,
                       {"module": "ES920LR", "firmware": "unknown", "mode": "operation (binary)"})
    return None


#: This driver in the registry (drivers/all.py registers it).
SPEC = DriverSpec(
    name="es920lr", driver=Es920lr, section="es920", settings=Es920Config, probe=probe, twin="es920lr",
    summary="EASEL ES920LR")
