"""RAK3172 (RUI3 firmware) in LoRa P2P mode, over AT commands (docs/protocols.md §1).

Configuration on every start, reopen and unexpected reboot::

    AT                      sync; repeated while the module boots or noise is on the line
    AT+VER=?                -> module_info["firmware"]
    AT+NWM=?                if not 0: AT+NWM=0 (prints OK without CR LF, then reboots), wait for the banner, sync
    AT+PRECV=0              RX off, or P2P parameters cannot be set
    AT+P2P=f:sf:bw:cr:pre:txp
    AT+P2P=?                verified field by field (BW may come back as a code 0-9 or in kHz)
    AT+PRECV=65533          continuous RX that still allows AT+PSEND

Lines from the module fall in three groups, told apart by their text alone because RUI3 does not tag replies:
``+EVT:`` events (radio callbacks, which can arrive between a command and its status), replies to the pending
command (``AT+X=value`` and a status string), and boot output. ``+EVT:RXP2P:<rssi>:<snr>:<HEX>`` is by far the
most frequent line and takes a short path with no regular expressions.
"""

from __future__ import annotations

import binascii
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from drivers.errors import ModuleError, ModuleTimeout
from drivers.probe import FAIL, N_, OK, OTHER_BAUDS, WARN, Finding, ProbeLink, Say, noise_hint
from drivers.radio import Link, ModuleDriver, ModuleRebooted
from drivers.rak3172_settings import P2pConfig
from drivers.registry import DriverSpec
from drivers.transport import LineSplitter
from drivers.types import Uplink

__all__ = ["BW_CODES_KHZ", "STATUSES", "Rak3172", "SPEC", "parse_p2p", "probe"]

log = logging.getLogger(__name__)

#: Every status string RUI3 ends a command with (docs/protocols.md §1 "Response framing").
STATUSES = frozenset({
    "OK", "AT_ERROR", "AT_PARAM_ERROR", "AT_BUSY_ERROR", "AT_TEST_PARAM_OVERFLOW", "AT_NO_CLASSB_ENABLE",
    "AT_NO_NETWORK_JOINED", "AT_RX_ERROR", "AT_MODE_NO_SUPPORT", "AT_COMMAND_NOT_FOUND", "AT_UNSUPPORTED_BAND",
})
_STATUS_BYTES = frozenset(s.encode() for s in STATUSES)

#: AT+P2P bandwidth codes (RUI 5.0.0 reports the code in AT+P2P=?), in kHz.
BW_CODES_KHZ = {0: 125.0, 1: 250.0, 2: 500.0, 3: 7.8, 4: 10.4, 5: 15.63, 6: 20.83, 7: 31.25, 8: 41.67, 9: 62.5}

_RX = b"+EVT:RXP2P:"
_EVT = b"+EVT:"
# Boot output. "Current Work Mode: LoRa P2P." is documented and ends the boot output; RUI3 builds print a
# "RAKwireless ..." banner before it (public logs show a dashed rule and a version line in between) [U]. Either
# marker starts a boot; lines between the two belong to the same banner.
_BOOT_MARKERS = (b"Current Work Mode", b"RAKwireless")
_BOOT_END = b"Current Work Mode"
# Bytes that cannot start a RUI3 line: controls and non-ASCII (UART noise such as 00, FF, FC FC FC at a reset).
_NOISE = bytes(range(0x00, 0x20)) + bytes(range(0x7F, 0x100))
_LEGACY_HEADER = re.compile(rb"RSSI\s*(-?\d+)\s*,\s*SNR\s*(-?\d+(?:\.\d+)?)")
_MAX_PSEND = 239  # bytes, RUI 5.0.0 (older firmware documents up to 256) [docs/protocols.md §1]
#: AT+NWM work modes.
MODES = {"0": "LoRa P2P", "1": "LoRaWAN", "2": "FSK"}


@dataclass
class _Pending:
    """The command waiting for its status."""

    command: str
    name: bytes  # upper-case command name, "AT+P2P", for matching "AT+P2P=<value>" replies
    echo: bytes  # the command as echoed when echo is on
    values: list[str] = field(default_factory=list)
    status: str | None = None
    rx_on: bool = False  # "P2P_RX_ON already ..." came before the status
    rebooted: bool = False


def parse_p2p(value: str) -> tuple[int, int, float, int, int, int]:
    """Parse an ``AT+P2P=?`` value.

    Args:
        value: ``freq:sf:bw:cr:preamble:txp``, BW either a code 0–9 or 125/250/500 (kHz).

    Returns:
        (frequency Hz, SF, bandwidth kHz, coding rate 0–3, preamble symbols, TX power dBm).

    Raises:
        ValueError: not six integer fields, or an unknown bandwidth.
    """
    fields = value.strip().split(":")
    if len(fields) < 6:
        raise ValueError(f"expected 6 fields, got {value!r}")
    freq, sf, bw, cr, pre, txp = (int(f) for f in fields[:6])
    # 125/250/500 are never codes (codes stop at 9), so the two forms cannot be confused.
    if bw in (125, 250, 500):
        bw_khz = float(bw)
    elif bw in BW_CODES_KHZ:
        bw_khz = BW_CODES_KHZ[bw]
    else:
        raise ValueError(f"unknown bandwidth {bw} in {value!r}")
    return freq, sf, bw_khz, cr, pre, txp


class Rak3172(ModuleDriver):
    """RAK3172 with RUI3 firmware as a LoRa P2P receiver (and occasional sender).

    Config section ``config.p2p``: ``frequency_hz``, ``spreading_factor``, ``bandwidth_khz`` (125|250|500),
    ``coding_rate`` (0–3), ``preamble``, ``tx_power_dbm``.

    Class attributes are the timing knobs (seconds); tests shorten them.
    """

    command_timeout_s = 2.0
    #: AT+NWM=0 answers OK and then reboots; the banner follows after about a second of silence.
    boot_timeout_s = 6.0
    sync_attempts = 12
    sync_timeout_s = 0.5
    busy_retries = 3
    busy_backoff_s = 0.2

    def __init__(self, config: Any, link: Link) -> None:
        super().__init__(config, link)
        self._radio = link.radio
        self._splitter = LineSplitter((b"\r", b"\n"), on_overflow=self._on_overflow)
        self._pending: _Pending | None = None
        self._legacy: tuple[int, float] | None = None  # header of a pre-RUI3 two-line RX event
        self._expect_boot = False  # a boot now is one we caused (NWM) or are waiting out (sync)
        self._boot_seen = False
        self._in_banner = False  # between "RAKwireless ..." and "Current Work Mode: ..."
        self._boot_noise = 0  # unparseable lines while syncing, for the diagnosis of a failed sync
        self._rearm = False
        self._tx_done = False

    # -- parsing -------------------------------------------------------------------------------------------
    def feed(self, chunk: bytes, received_us: int) -> None:
        uplinks: list[Uplink] = []
        for line in self._splitter.feed(chunk):
            # Fast path: one well-formed RX event (and nothing glued in front of a second one).
            if line.startswith(_RX) and line.find(_EVT, 5) < 0 and self._legacy is None:
                self._rx_event(line, uplinks, received_us)
            else:
                self._line(line, uplinks, received_us)
        if uplinks:
            self.link.deliver(uplinks)

    def _rx_event(self, line: bytes, uplinks: list[Uplink], received_us: int) -> None:
        # +EVT:RXP2P:<rssi>:<snr>:<HEX>; the payload is the LAST field (docs/protocols.md §1), rssi/snr are signed.
        parts = line.split(b":")
        if len(parts) < 5:
            self._garbled(line, "short RX event")
            return
        try:
            rssi = int(parts[2])
            snr = float(parts[3])
            # float() takes "nan" and "inf"; RUI3 prints an int8. Anything else is line noise, not a measurement.
            if not -128.0 <= snr <= 127.0 or not -200 <= rssi <= 50:
                raise ValueError("out of range")
        except ValueError:
            self._garbled(line, "RX event with bad rssi/snr")
            return
        hex_payload = parts[-1]
        try:
            if not hex_payload:
                raise ValueError("empty payload")
            payload = binascii.a2b_hex(hex_payload)
        except ValueError:  # binascii.Error is a ValueError: odd length or a non-hex digit
            self.link.incident("bad_hex", f"RX payload is not hex: {bytes(line[:80])!r}")
            return
        uplinks.append(Uplink(self._radio, payload, rssi, snr, None, received_us))

    def _line(self, line: bytes, uplinks: list[Uplink], received_us: int) -> None:
        at = line.rfind(_EVT)
        if at > 0:
            # Noise or the cut-off rest of an earlier line glued in front of an event: keep the event.
            self._garbled(line[:at], "bytes before +EVT")
            line = line[at:]
        if at >= 0:
            self._event(line, uplinks, received_us)
            return
        self._drop_legacy()
        stripped = line.lstrip(_NOISE)
        if len(stripped) != len(line):
            self._garbled(line[: len(line) - len(stripped)], "noise before line")
            if not stripped:
                return
        self._reply(stripped)

    def _event(self, line: bytes, uplinks: list[Uplink], received_us: int) -> None:
        if line.startswith(_RX):
            self._drop_legacy()
            self._rx_event(line, uplinks, received_us)
        elif line.startswith(b"+EVT:RXP2P RECEIVE TIMEOUT"):
            # Only a timed RX window ends like this; with PRECV=65533 it means this firmware treats 65533 as a
            # window (older RUI3, [U]), so switch RX back on.
            self._drop_legacy()
            if not self.configuring:
                self._rearm = True
        elif line.startswith(b"+EVT:RXP2P RECEIVE ERROR"):
            self._drop_legacy()
            self.link.incident("crc_error", "RX CRC error (+EVT:RXP2P RECEIVE ERROR)")
        elif line.startswith(b"+EVT:TXP2P DONE"):
            self._drop_legacy()
            self._tx_done = True
        elif line.startswith(b"+EVT:RXP2P,"):
            # Pre-RUI3 two-line form: "+EVT:RXP2P, RSSI -60, SNR 11" then "+EVT:<HEX>".
            self._drop_legacy()
            m = _LEGACY_HEADER.search(line)
            if m is None:
                self._garbled(line, "RX header without RSSI/SNR")
            else:
                self._legacy = (int(m.group(1)), float(m.group(2)))
        else:
            body = line[len(_EVT):]
            header, self._legacy = self._legacy, None
            try:
                payload = binascii.a2b_hex(body) if body else None
            except ValueError:
                payload = None
            if payload is not None:
                # Payload line of the legacy form. Without its header line (lost), still deliver the frame: its
                # integrity is checked downstream, and losing an SOS is worse than not knowing its RSSI.
                rssi, snr = header if header is not None else (None, None)
                uplinks.append(Uplink(self._radio, payload, rssi, snr, None, received_us))
            elif header is not None:
                self.link.incident("bad_hex", f"RX payload is not hex: {bytes(line[:80])!r}")
            else:
                self._garbled(line, "unknown event")

    def _reply(self, line: bytes) -> None:
        p = self._pending
        if line in _STATUS_BYTES:
            self._in_banner = False
            if p is not None and p.status is None:
                p.status = line.decode()
            else:
                log.debug("%s: status %r with no command pending (duplicate?)", self._radio, line)
            return
        if line.startswith(b"OK"):
            # AT+NWM prints "OK" without CR LF and reboots, so the boot output is glued to it.
            self._reply(b"OK")
            rest = line[2:]
            stripped = rest.lstrip(_NOISE)
            if len(stripped) != len(rest):
                self._garbled(rest[: len(rest) - len(stripped)], "noise after OK")
            if stripped:
                self._reply(stripped)
            return
        for marker in _BOOT_MARKERS:
            if marker in line:
                self._boot(line)
                return
        if self._in_banner:
            log.debug("%s: boot banner: %r", self._radio, line)  # "-----...", "Version: RUI_4.0.6_RAK3172-E"
            return
        if line.startswith(b"P2P_RX_ON already"):
            if p is not None and p.status is None:
                p.rx_on = True
            return
        if line.endswith(b"Command not found!!"):
            # Older RUI3: "AT_ERROR" then "<cmd>: Command not found!!"; the status already failed the command.
            log.debug("%s: %r", self._radio, line)
            return
        if p is not None and p.status is None:
            upper = line.upper()
            if upper == p.echo:
                return  # echo is on (ATE toggles it); the reply follows
            if upper.startswith(p.name + b"="):
                p.values.append(line[len(p.name) + 1:].decode("ascii", "replace"))
                return
            if p.name == b"AT+PRECV" and upper in (b"P2P_RX_ON", b"P2P_RX_OFF"):
                p.values.append(line.decode())  # AT+PRECV=? may answer with the bare state [U]
                return
        if line.startswith(b"AT+"):
            log.debug("%s: value %r with no query pending (duplicate?)", self._radio, line)
            return
        self._garbled(line, "unparseable line")

    def _boot(self, line: bytes) -> None:
        self._legacy = None
        same_banner = self._in_banner
        self._in_banner = _BOOT_END not in line
        if same_banner:
            return  # the rest of a boot already handled
        if self._expect_boot:
            self._boot_seen = True
            return
        self.link.incident("module_reboot", f"unexpected boot output: {bytes(line[:60])!r}")
        p = self._pending
        if p is not None and p.status is None:
            p.rebooted = True
            p.status = "module rebooted"
        self.module_rebooted()

    def _drop_legacy(self) -> None:
        if self._legacy is not None:
            self._legacy = None
            self._garbled(b"+EVT:RXP2P, ...", "legacy RX header without payload line")

    def _garbled(self, data: bytes, why: str) -> None:
        if self._expect_boot:
            # Syncing, or waiting out a reboot we caused: the rest of whatever the module printed before we
            # listened (the OS flushes input on open, but not always all of it) and reset noise are expected.
            self._boot_noise += 1
            log.debug("%s: while (re)booting: %s: %r", self._radio, why, bytes(data[:60]))
            return
        self.link.incident("garbled_line", f"{why}: {bytes(data[:60])!r}")

    def _on_overflow(self, nbytes: int) -> None:
        self.link.incident("line_overflow", f"{nbytes} bytes without a line end discarded")

    # -- commands ------------------------------------------------------------------------------------------
    def _exchange(self, command: str, timeout: float | None = None) -> _Pending:
        """Send one command and pump until its status arrives. Raises ModuleTimeout (unreported), ModuleRebooted."""
        self.check_not_rebooted(command)
        name = command.split("=", 1)[0].upper().encode()
        p = _Pending(command, name, command.upper().encode())
        self._in_banner = False  # the module talks to us again: any banner is over
        self._pending = p
        try:
            self.link.write(command.encode("ascii") + b"\r\n")
            self.wait_until(lambda: p.status is not None, timeout or self.command_timeout_s, command)
        finally:
            self._pending = None
        if p.rebooted:
            raise ModuleRebooted(command, "module rebooted")
        return p

    def ask(self, command: str, timeout: float) -> tuple[str | None, list[str]]:
        """Send one command and return what came back, reporting and retrying nothing (doctor's probe).

        Returns:
            (the status, or None when none came within ``timeout`` seconds or the module rebooted; the values of
            ``AT+X=<value>`` lines).
        """
        try:
            p = self._exchange(command, timeout)
        except (ModuleTimeout, ModuleRebooted):
            return None, []
        return p.status, p.values

    def _run(self, command: str, timeout: float | None = None) -> list[str]:
        """Send a command until OK; handles AT_BUSY_ERROR; reports and raises every other outcome.

        Returns:
            The values of ``AT+X=<value>`` lines that came with the OK.
        """
        for attempt in range(self.busy_retries + 1):
            try:
                p = self._exchange(command, timeout)
            except ModuleTimeout as exc:
                self.link.incident("module_timeout", str(exc))
                raise
            if p.status == "OK":
                return p.values
            status = p.status or "?"
            detail = f"{command} -> {status}" + (" (P2P_RX_ON already)" if p.rx_on else "")
            self.link.incident("module_error", detail)
            if status == "AT_BUSY_ERROR" and attempt < self.busy_retries:
                if p.rx_on and not command.upper().startswith("AT+PRECV"):
                    # P2P settings (and NWM) cannot change while RX is on.
                    self._run("AT+PRECV=0")
                else:
                    self.pause(self.busy_backoff_s * (attempt + 1))
                continue
            raise ModuleError(command, status)
        raise AssertionError("unreachable")  # pragma: no cover

    def _query(self, name: str) -> str:
        values = self._run(f"{name}=?")
        if not values:
            self.link.incident("module_error", f"{name}=? -> OK without a value")
            raise ModuleError(f"{name}=?", "no value in reply")
        return values[-1].strip()

    # -- configuration -------------------------------------------------------------------------------------
    def configure(self) -> None:
        # The shared mechanism (ModuleDriver.configure) runs configure_once and starts over after a reboot; this
        # driver adds its own state: a pending RX re-arm is moot, and no boot is expected once it is over.
        self._rearm = False
        try:
            super().configure()
        finally:
            self._expect_boot = False

    def configure_once(self) -> None:
        p2p = self.config.p2p
        self._sync()
        info = {"firmware": self._query("AT+VER")}
        if self._query("AT+NWM") != "0":
            self._switch_to_p2p()
        self._run("AT+PRECV=0")
        bw = int(p2p.bandwidth_khz)
        want = (int(p2p.frequency_hz), int(p2p.spreading_factor), float(bw), int(p2p.coding_rate),
                int(p2p.preamble), int(p2p.tx_power_dbm))
        self._run(f"AT+P2P={want[0]}:{want[1]}:{bw}:{want[3]}:{want[4]}:{want[5]}")
        value = self._query("AT+P2P")
        try:
            got = parse_p2p(value)
        except ValueError as exc:
            self.link.incident("module_error", f"AT+P2P=? -> unparseable {value!r}")
            raise ModuleError("AT+P2P=?", f"unparseable value {value!r}") from exc
        if got != want:
            self.link.incident("module_error", f"AT+P2P=? -> {value} (wanted {want})")
            raise ModuleError("AT+P2P=?", f"module kept {value!r}, wanted {want}")
        self._rx_on()
        info.update(mode="LoRa P2P", p2p=value, rx="continuous (PRECV=65533)")
        self.module_info = info

    def _sync(self) -> None:
        """Send AT until OK, riding out a boot in progress and noise on the line."""
        self._expect_boot = True
        self._boot_noise = 0
        try:
            for _attempt in range(self.sync_attempts):
                try:
                    p = self._exchange("AT", self.sync_timeout_s)
                except ModuleTimeout:
                    continue
                if p.status == "OK":
                    return
                self.pause(self.busy_backoff_s)
            msg = f"no OK to AT after {self.sync_attempts} tries"
            if self._boot_noise:
                msg += f" ({self._boot_noise} unparseable lines meanwhile: wrong baud rate?)"
            self.link.incident("module_timeout", msg)
            raise ModuleTimeout(f"{self._radio}: {msg}")
        finally:
            self._expect_boot = False

    def _switch_to_p2p(self) -> None:
        """AT+NWM=0: OK (no CR LF), a reboot, the boot banner; then sync again and check."""
        self._expect_boot = True
        self._boot_seen = False
        try:
            try:
                self._run("AT+NWM=0", timeout=self.boot_timeout_s)
            except ModuleTimeout:
                if not self._boot_seen:  # the OK may be lost in boot noise; the banner is what counts
                    raise
            self.wait_until(lambda: self._boot_seen, self.boot_timeout_s, "boot after AT+NWM=0")
        except ModuleTimeout as exc:
            self.link.incident("module_timeout", str(exc))
            raise
        finally:
            self._expect_boot = False
        self._sync()
        mode = self._query("AT+NWM")
        if mode != "0":
            self.link.incident("module_error", f"AT+NWM=0 -> still in mode {mode}")
            raise ModuleError("AT+NWM=0", f"still in mode {mode}")

    def _rx_on(self) -> None:
        """AT+PRECV=65533; "P2P_RX_ON already" with AT_BUSY_ERROR means RX is on, which is what we want."""
        command = "AT+PRECV=65533"
        try:
            p = self._exchange(command)
        except ModuleTimeout as exc:
            self.link.incident("module_timeout", str(exc))
            raise
        if p.status == "OK" or (p.status == "AT_BUSY_ERROR" and p.rx_on):
            return
        self.link.incident("module_error", f"{command} -> {p.status}")
        raise ModuleError(command, p.status or "?")

    def service(self) -> None:
        if self._rearm:
            self._rearm = False
            self._rx_on()

    # -- transmit ------------------------------------------------------------------------------------------
    def transmit(self, payload: bytes, timeout: float) -> None:
        """Send with AT+PSEND; RX stays on because PRECV=65533 returns to RX after TX [V 5.0.0]."""
        if not payload or len(payload) > _MAX_PSEND:
            raise ValueError(f"RAK3172 payload must be 1..{_MAX_PSEND} bytes, got {len(payload)}")
        deadline = time.monotonic() + timeout
        self._tx_done = False
        self._run(f"AT+PSEND={payload.hex().upper()}", timeout=min(self.command_timeout_s, max(timeout, 0.05)))
        try:
            self.wait_until(lambda: self._tx_done, max(deadline - time.monotonic(), 0.0), "+EVT:TXP2P DONE")
        except ModuleTimeout as exc:
            self.link.incident("module_timeout", str(exc))
            raise


# -- doctor's probe --------------------------------------------------------------------------------------------
def _answers_at(port: Any, radio: Any, timeout_s: float) -> int | None:
    """The usual speed other than the configured one at which the module answers AT, if any."""
    for baud in OTHER_BAUDS:
        if baud == radio.baudrate:
            continue
        port.baudrate = baud
        port.reset_input_buffer()
        driver, _link = ProbeLink.driver(Rak3172, port, radio)
        # Twice: the garbage received at the wrong speed may still sit in the module's line buffer, and spoils
        # the first AT (AT_ERROR); that reply already proves the speed, but the second is cleaner.
        if "OK" in [driver.ask("AT", min(timeout_s, 0.3))[0] for _attempt in range(2)]:
            return baud
    return None


def _p2p_matches(value: str, p2p: Any) -> bool:
    """Whether the module's ``AT+P2P=?`` value already has the config's frequency, SF, bandwidth and coding rate."""
    if p2p is None:
        return True
    try:
        freq, sf, bw, cr, _pre, _txp = parse_p2p(value)
    except ValueError:
        return False
    return (freq, sf, bw, cr) == (p2p.frequency_hz, p2p.spreading_factor, float(p2p.bandwidth_khz), p2p.coding_rate)


def probe(port: Any, radio: Any, timeout_s: float, say: Say) -> Finding:
    """Ask ``AT``, ``AT+VER=?``, ``AT+NWM=?`` and (in P2P mode) ``AT+P2P=?``; see :mod:`drivers.probe`."""
    driver, link = ProbeLink.driver(Rak3172, port, radio)  # the same AT parser the agent uses
    status = None
    # A module that is booting or has noise on the line needs a few tries, as the driver's sync does.
    for _attempt in range(3):
        status, _values = driver.ask("AT", min(timeout_s, 0.7))
        if status == "OK":
            break
    if status != "OK":
        return _no_answer(port, radio, timeout_s, say, status, bytes(link.raw))
    _status, ver = driver.ask("AT+VER=?", timeout_s)
    nwm_status, nwm = driver.ask("AT+NWM=?", timeout_s)
    firmware = ver[-1].strip() if ver else "unknown"
    mode_code = nwm[-1].strip() if nwm else None
    mode = MODES.get(mode_code or "", f"unknown ({nwm_status})")
    details: dict[str, Any] = {"module": "RAK3172", "firmware": firmware, "mode": mode}
    if mode_code == "0":
        _status, p2p = driver.ask("AT+P2P=?", timeout_s)
        if p2p:
            details["p2p"] = p2p[-1].strip()
    summary = say(N_("{port}: RAK3172 answers, firmware {firmware}, mode {mode}")).format(
        port=radio.port, firmware=firmware, mode=mode)
    if "p2p" in details:
        summary += f" ({details['p2p']})"
        if not _p2p_matches(details["p2p"], getattr(radio, "p2p", None)):
            summary += say(N_("; the agent applies the config's P2P settings on start"))
    if mode_code not in ("0", None):
        # The driver switches the work mode itself (AT+NWM=0 and one reboot) when the agent starts.
        return Finding(OK, summary + say(N_("; the agent switches it to LoRa P2P on start")), None, details)
    if mode_code is None:
        return Finding(WARN, summary, say(N_("the module did not report its work mode (AT+NWM=?); update RUI3")),
                       details)
    return Finding(OK, summary, None, details)


def _no_answer(port: Any, radio: Any, timeout_s: float, say: Say, status: str | None, raw: bytes) -> Finding:
    if b"NG 00" in raw:
        return Finding(FAIL, say(N_("{port}: the module answers like an ES920LR, not a RAK3172")).format(
            port=radio.port), say(N_("set radios[].driver: es920lr for this port")))
    # A module at another speed reads our bytes as garbage and stays silent: try the usual speeds once, since
    # "set baudrate: 9600" is a far better hint than "no answer".
    baud = _answers_at(port, radio, timeout_s)
    if baud is not None:
        return Finding(FAIL, say(N_("{port}: the module answers at {baud} baud, not at {configured}")).format(
            port=radio.port, baud=baud, configured=radio.baudrate),
            say(N_("set radios[].baudrate: {baud}")).format(baud=baud), {"answers_at_baud": baud})
    text = say(N_("{port}: no answer to AT (got {status})")) if status else say(N_("{port}: no answer to AT"))
    return Finding(FAIL, text.format(port=radio.port, status=status), noise_hint(raw, radio.baudrate, say),
                   {"received": raw[:64].hex()})


#: This driver in the registry (drivers/all.py registers it).
SPEC = DriverSpec(
    name="rak3172", driver=Rak3172, section="p2p", settings=P2pConfig, probe=probe, twin="rak3172",
    summary="RAK3172, RUI3 LoRa P2P")
