"""A simulated RAK3172 running RUI3 firmware in LoRa P2P mode, on a real pseudo-terminal.

The agent opens :attr:`SimRak3172.path` exactly as it would open ``/dev/ttyUSB0`` and talks AT commands to it.
Behaviour follows docs/protocols.md §1 and its "Suggested simulator scope" (RAK3172/RUI3 profile), which were taken
from RAKWireless/RAK-STM32-RUI (``service_mode_cli.c``, ``atcmd.c``, ``atcmd_p2p.c``, ``service_lora_p2p.c``):

* the command line: CR *or* LF runs the buffered command (``\\r\\n`` -> the LF meets an empty buffer and is
  ignored), backspace edits, at most 2047 characters are kept, command names are case-insensitive and a name of 32
  characters or more gives ``AT_ERROR``;
* every status is the bare string followed by ``\\r\\n`` (the CLI prompt is empty); a query ``AT+X=?`` prints
  ``AT+X=<value>\\r\\n`` first, ``AT+X?`` prints the help line;
* ``ATE`` toggles echo; with echo on, typed characters come back and ``\\n\\r`` precedes each response;
* the PRECV state machine of ``service_lora_p2p_recv`` (timed windows, one-shot 65535, continuous 65534/65533),
  PSEND with ``+EVT:TXP2P DONE`` after the LoRa time on air, reboots (ATZ, AT+NWM, power cycles) with persistent
  settings, AT+BAUD switching the UART before ``OK``.

Test verbs (``inject_uplink``, ``reboot``, ``unplug`` ...) may be called from any thread; one re-entrant lock
makes their output interleave with command output at line boundaries only.
"""

from __future__ import annotations

import fcntl
import logging
import random
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from drivers.airtime import time_on_air_ms  # the sim's TX timing is the real formula
from drivers.sim._pty import PtyPort
from drivers.sim._twin import PluggedModule
from drivers.sim.faults import ModuleFaults, baud_garble, bauds_match, noise_bytes

log = logging.getLogger(__name__)

__all__ = ["BW_CODES_KHZ", "Profile", "SimRak3172", "Simulator", "air_payload"]

#: RUI3 bandwidth codes (AT+P2P / AT+PBW) -> nominal kHz, as printed in the RUI3 help text.
BW_CODES_KHZ: dict[int, float] = {0: 125, 1: 250, 2: 500, 3: 7.8, 4: 10.4, 5: 15.63, 6: 20.83, 7: 31.25,
                                  8: 41.67, 9: 62.5}
_KHZ_TO_CODE = {125: 0, 250: 1, 500: 2}

_STATUS_OK = "OK"
_P2P_RX_ON_BUSY_LINE = "P2P_RX_ON already, please disable P2P RX before setting."
_RUI_VERSION = "RUI_4.0.6_RAK3172-E"  # the form public RAK3172 logs show for AT+VER=?
_BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)
_CLI_BUFFER_SIZE = 2048  # service_mode_cli.c keeps at most CLI_BUFFER_SIZE-1 characters
_MAX_CMD_LEN = 32  # At_Parser: a name that fills 32 characters without '=', ' ' or end -> AT_ERROR
_MAX_PSEND_BYTES = 239  # RUI3 5.0.0 (older docs say 256)
_HOST_BACKLOG_LIMIT = 4000  # bytes unread by the host beyond which we wait, then drop (see _write_raw)
_HOST_STALL_S = 0.5  # how long a write waits for a host that is not reading, in seconds

# PRECV modes (service_lora_p2p.c flags): None = off.
_RX_TIMED = "timed"
_RX_ONESHOT = "oneshot"  # 65535, isContinue
_RX_CONT_LOCKED = "continuous"  # 65534, isContinue_no_exit: PSEND busy
_RX_CONT_TX = "continuous_tx"  # 65533, isContinue_compatible_tx: TX allowed, back to RX after TX
_CONTINUOUS = (_RX_ONESHOT, _RX_CONT_LOCKED, _RX_CONT_TX)


@dataclass
class _Command:
    handler: Callable[[list[str], bool], str | None]
    usage: str
    p2p: bool = False  # gets AT_MODE_NO_SUPPORT in LoRaWAN mode


class SimRak3172(PluggedModule):
    """A RAK3172 (RUI3, LoRa P2P) on a pty.

    Args:
        name: label for logs and scenarios.
        link: stable symlink path for the device (like udev's ``/dev/lora0``); None uses the bare pty path.
        boot_delay_s: silence after a reset before the boot banner, in seconds (real module: about 1 s).
        legacy_rx: send the pre-RUI3 two-line RX event (``+EVT:RXP2P, RSSI -60, SNR 11`` then ``+EVT:<HEX>``).
        legacy_unknown: unknown commands get ``AT_ERROR`` then ``<cmd>: Command not found!!`` (older RUI3)
            instead of ``AT_COMMAND_NOT_FOUND`` (5.0.0).
        bw_as_khz: ``AT+P2P=?``/``AT+PBW=?`` report the bandwidth in kHz (``125``) as the RUI3 docs show, instead
            of the 5.0.0 code (``0``).
        rng: random source for faults and noise; seed it for reproducible runs.
        baudrate: the module's UART rate at first power-on, in bits per second (pre-RUI3 firmware: 9600).
        initial_nwm: work mode at first power-on. A factory-fresh RUI3 module is in LoRaWAN (1); the default 0
            models a module already provisioned for P2P.

    Attributes:
        port: the underlying :class:`PtyPort`.
        faults: line faults applied to everything the module sends (see :mod:`drivers.sim.faults`).
        transmitted: payloads the host sent with ``AT+PSEND``, in order.
        commands: every command line received, in order (as typed, without terminator).
        event_between_command_and_status: when True, an uplink injected while RX is on is held back and written
            right before the status of the next command (after any query value line), as a radio callback
            landing mid-response would; held events go out on their own after ``event_hold_s``.
        event_hold_s: longest time, in seconds, a held event waits for a command.
        channel_busy: with ``AT+CAD=1``, makes PSEND fail with ``AT_BUSY_ERROR`` (channel activity detected).
        on_transmit: callbacks run with each payload once its ``+EVT:TXP2P DONE`` is out (scenario downlinks).
    """

    model = "rak3172"

    def __init__(self, *, name: str = "lora0", link: str | None = None, boot_delay_s: float = 1.0,
                 legacy_rx: bool = False, legacy_unknown: bool = False, bw_as_khz: bool = False,
                 rng: random.Random | None = None, baudrate: int = 115200, initial_nwm: int = 0) -> None:
        if baudrate not in _BAUD_RATES:
            raise ValueError(f"baudrate must be one of {_BAUD_RATES}, got {baudrate}")
        if initial_nwm not in (0, 1, 2):
            raise ValueError(f"initial_nwm must be 0, 1 or 2, got {initial_nwm}")
        self.name = name
        self.boot_delay_s = boot_delay_s
        self.legacy_rx = legacy_rx
        self.legacy_unknown = legacy_unknown
        self.bw_as_khz = bw_as_khz
        self._rng = rng or random.Random()
        self.faults = ModuleFaults(rng=self._rng)
        self.port = PtyPort(self._on_bytes, link=link, name=name)
        self.transmitted: list[bytes] = []
        self.commands: list[str] = []
        self.event_between_command_and_status = False
        self.event_hold_s = 2.0
        self.channel_busy = False
        self.on_transmit: list[Callable[[bytes], None]] = []
        self.boots = 0  # completed boots, for tests

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        # "Flash": survives reboots.
        self._nvm: dict[str, Any] = {}
        self._factory_defaults(baudrate=baudrate, nwm=initial_nwm)
        # Runtime state, reset at each boot.
        self._p2p: dict[str, int] = dict(self._nvm["p2p"])
        self._awake = False
        self._powered = False
        self._buf = bytearray()
        self._esc = 0  # 0 none, 1 after ESC, 2 after ESC [
        self._rx_mode: str | None = None
        self._tx_busy = False
        self._held: list[bytes] = []
        # Tokens invalidate pending timers: _epoch at each reset, _rx_token/_tx_token when those states change.
        self._epoch = 0
        self._rx_token = 0
        self._tx_token = 0
        self._timers: set[threading.Timer] = set()
        self._stopped = False
        self._host_stalled = False  # the last write found the host not reading: drop at once, do not wait again
        self._table = self._build_table()

    # -- public state --------------------------------------------------------------------------------------
    @property
    def rx_on(self) -> bool:
        """True while the radio listens: awake, a PRECV mode active and no transmission under way."""
        with self._lock:
            return self._awake and self._rx_mode is not None and not self._tx_busy

    @property
    def rx_mode(self) -> str | None:
        """The PRECV mode: None, ``timed``, ``oneshot``, ``continuous`` (65534) or ``continuous_tx`` (65533)."""
        return self._rx_mode

    @property
    def tx_busy(self) -> bool:
        """True between an accepted PSEND and its ``+EVT:TXP2P DONE``."""
        return self._tx_busy

    @property
    def awake(self) -> bool:
        """True once booted and serving commands (False while rebooting or unplugged)."""
        return self._awake

    booted = awake  # what every simulator twin tells a scenario

    @property
    def nwm(self) -> int:
        """Network work mode: 0 LoRa P2P, 1 LoRaWAN, 2 FSK."""
        return int(self._nvm["nwm"])

    @property
    def echo(self) -> bool:
        return bool(self._nvm["echo"])

    @property
    def baudrate(self) -> int:
        """The module's UART rate, in bits per second."""
        return int(self._nvm["baud"])

    @property
    def p2p(self) -> dict[str, Any]:
        """Runtime P2P settings: freq_hz, sf, bw_code, bw_khz, cr (0..3), preamble, txp_dbm."""
        with self._lock:
            d: dict[str, Any] = dict(self._p2p)
            d["bw_khz"] = BW_CODES_KHZ[d["bw_code"]]
            return d

    @property
    def saved_p2p(self) -> dict[str, Any]:
        """P2P settings in flash (what a reboot restores)."""
        with self._lock:
            d: dict[str, Any] = dict(self._nvm["p2p"])
            d["bw_khz"] = BW_CODES_KHZ[d["bw_code"]]
            return d

    # -- life cycle --------------------------------------------------------------------------------------
    def start(self, *, wait: bool = True) -> None:
        """Create the pty, power the module on and (by default) wait until it has booted.

        Args:
            wait: block until the boot banner is out (at most ``boot_delay_s`` + 5 s).
        """
        self._stopped = False
        self.port.start()
        with self._lock:
            self._power_on(noise=False)
        if wait:
            self.wait_for(lambda: self._awake, timeout=self.boot_delay_s + 5.0)

    def stop(self) -> None:
        """Power off and remove the pty."""
        with self._lock:
            self._stopped = True
            self._power_off()
            self._cond.notify_all()
        self.port.stop()

    def reboot(self, *, noise: bool = True) -> None:
        """An unexpected power cycle mid-stream: silence, optional noise bytes, then the boot banner."""
        with self._lock:
            self._power_off()
            self._power_on(noise=noise)

    def _boot_after_replug(self) -> None:
        self._power_on(noise=True)

    # -- test verbs: radio side ----------------------------------------------------------------------------
    def inject_uplink(self, payload: bytes, *, rssi: int = -80, snr: float = 7.0, src: int | None = None) -> bool:
        """A frame heard over the air.

        It is reported as ``+EVT:RXP2P:<rssi>:<snr>:<HEX>`` only while the radio listens (see :attr:`rx_on`);
        a timed window or a one-shot (65535) receive ends with it.

        Args:
            payload: the frame bytes (what the module prints, i.e. after any AT+ENCRY decryption).
            rssi: received signal strength, in dBm.
            snr: signal-to-noise ratio, in dB; printed as an integer, as RUI3 does (its radio reports int8).
            src: ignored: LoRa P2P has no module addresses (the argument every twin takes).

        Returns:
            Whether the module delivered (or, with ``event_between_command_and_status``, queued) the event.
        """
        if len(payload) > 255:
            raise ValueError(f"a LoRa frame holds at most 255 bytes, got {len(payload)}")
        with self._lock:
            if not self.rx_on:
                return False
            evt = "RXFSK" if self.nwm == 2 else "RXP2P"
            snr_i = int(round(snr))
            if self.legacy_rx:
                lines = [f"+EVT:{evt}, RSSI {rssi}, SNR {snr_i}\r\n".encode(),
                         f"+EVT:{payload.hex().upper()}\r\n".encode()]
            else:
                lines = [f"+EVT:{evt}:{rssi}:{snr_i}:{payload.hex().upper()}\r\n".encode()]
            self._after_rx_event()
            if self.event_between_command_and_status:
                self._held.extend(lines)
                self._timer(self.event_hold_s, self._flush_held)
            else:
                for line in lines:
                    self._emit_line(line)
            self._changed()
            return True

    def inject_crc_error(self) -> bool:
        """A packet with a bad CRC: ``+EVT:RXP2P RECEIVE ERROR`` while listening. Returns whether it was sent."""
        with self._lock:
            if not self.rx_on:
                return False
            self._emit_line(f"+EVT:{'RXFSK' if self.nwm == 2 else 'RXP2P'} RECEIVE ERROR\r\n".encode())
            self._after_rx_event()
            self._changed()
            return True

    def inject_garbage(self, data: bytes | None = None) -> None:
        """Write raw bytes to the host between lines (default: a typical noise burst)."""
        with self._lock:
            self._write_raw(data if data is not None else noise_bytes(self._rng))

    # -- power and boot ------------------------------------------------------------------------------------
    def _factory_defaults(self, *, baudrate: int, nwm: int) -> None:
        # RUI3 defaults: AT+P2P=868000000:7:0:0:8:14 (RUI3 AT command manual example), echo off.
        self._nvm.update(
            nwm=nwm, echo=False, baud=baudrate,
            p2p={"freq_hz": 868_000_000, "sf": 7, "bw_code": 0, "cr": 0, "preamble": 8, "txp_dbm": 14},
            encry=0, enckey=bytes(16), crypiv=bytes(16), cad=0, syncword=0x3444, iqinver=0,
        )

    def _power_off(self) -> None:
        self._epoch += 1
        for t in list(self._timers):
            t.cancel()
        self._timers.clear()
        self._awake = False
        self._powered = False
        self._buf.clear()
        self._esc = 0
        self._rx_mode = None
        self._tx_busy = False
        self._held.clear()
        self._changed()

    def _power_on(self, *, noise: bool) -> None:
        if self._stopped:
            return
        self._powered = True
        self._awake = False
        self._p2p = dict(self._nvm["p2p"])  # a ":1" runtime-only setting is lost
        self._timer(self.boot_delay_s, self._boot_done, noise)

    def _boot_done(self, noise: bool) -> None:
        if noise:
            self._write_raw(noise_bytes(self._rng))
        mode = {0: "LoRa P2P", 1: "LoRaWAN", 2: "LoRa FSK"}[self.nwm]  # FSK wording [U]
        # Banner as public RAK3172 logs show it (RUI3 AT command manual, AT+NWM / ATZ examples).
        for line in ("RAKwireless RAK3172-E Example", "-" * 54, f"Version: {_RUI_VERSION}",
                     f"Current Work Mode: {mode}."):
            self._emit_line(f"{line}\r\n".encode())
        self._awake = True
        self.boots += 1
        log.debug("%s booted (nwm=%d)", self.name, self.nwm)
        self._changed()

    def _reboot_now(self) -> None:
        self._power_off()
        self._power_on(noise=False)

    # -- timers ------------------------------------------------------------------------------------------
    def _timer(self, delay_s: float, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` under the lock after ``delay_s``, unless a reset happened meanwhile."""
        epoch = self._epoch

        def fire() -> None:
            try:
                with self._lock:
                    self._timers.discard(timer)
                    if epoch == self._epoch and not self._stopped:
                        fn(*args)
            except Exception:  # thread top level: a simulator bug must show up in the log, not vanish
                log.exception("%s: timer callback %s failed", self.name, getattr(fn, "__name__", fn))

        timer = threading.Timer(max(delay_s, 0.0), fire)
        timer.daemon = True
        self._timers.add(timer)
        timer.start()

    # -- output ------------------------------------------------------------------------------------------
    def _changed(self) -> None:
        self._cond.notify_all()

    def _emit_line(self, line: bytes, *, terminator: bytes = b"\r\n") -> None:
        """Send one logical line through the line faults."""
        self.faults.forward_to(self.port.faults)
        for chunk in self.faults.apply(line, terminator=terminator):
            self._write_raw(chunk)

    def _write_raw(self, data: bytes) -> None:
        """Put bytes on the wire as the module's UART would: garbled if the host listens at another rate."""
        if not data or not self.port.plugged:
            return
        host = self.port.host_baudrate()
        if not bauds_match(self.baudrate, host):
            data = baud_garble(data, self.baudrate, host)  # type: ignore[arg-type]  # host is not None here
        # A host that reads slower than we write gets a moment to catch up (a real UART paces the bytes anyway);
        # a host that does not read at all loses them, as on a real UART, instead of blocking the pty and us.
        deadline = time.monotonic() + (0.0 if self._host_stalled else _HOST_STALL_S)
        while self._host_backlog() > _HOST_BACKLOG_LIMIT:
            if time.monotonic() >= deadline:
                if not self._host_stalled:
                    log.warning("%s: host is not reading; output is lost until it does", self.name)
                self._host_stalled = True
                return
            time.sleep(0.002)
        self._host_stalled = False
        self.port.write(data)

    def _host_backlog(self) -> int:
        # PtyPort keeps the slave end open; the bytes queued on it are the ones the host has not read yet.
        slave = getattr(self.port, "_slave", None)
        if slave is None:
            return 0
        try:
            buf = fcntl.ioctl(slave, termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return 0
        return int.from_bytes(buf, "little")

    def _flush_held(self) -> None:
        held, self._held = self._held, []
        for line in held:
            self._emit_line(line)

    # -- input -------------------------------------------------------------------------------------------
    def _on_bytes(self, data: bytes) -> None:
        with self._lock:
            if not self._awake:
                return  # rebooting or unpowered: the UART is deaf
            host = self.port.host_baudrate()
            if not bauds_match(self.baudrate, host):
                # The host talks at another rate: the module's UART sees framing-error garbage, never CR/LF.
                data = baud_garble(data, host, self.baudrate)  # type: ignore[arg-type]
            for b in data:
                if not self._awake:
                    return  # the command just run rebooted the module; the rest of the chunk is lost
                self._on_byte(b)

    def _on_byte(self, b: int) -> None:
        # service_mode_cli_handler(): ESC [ A / ESC [ B are history keys (no-op here); BS/DEL erase.
        if b == 0x1B:
            self._esc = 1
            return
        if self._esc == 1 and b == 0x5B:
            self._esc = 2
            return
        if self._esc == 2 and b in (0x41, 0x42):
            self._esc = 0
            return
        self._esc = 0
        if b in (0x08, 0x7F):
            if self._buf:
                self._buf.pop()
                self._write_raw(b"\x08\x20\x08")
            return
        if b in (0x0A, 0x0D):
            if self._buf:
                line = self._buf.decode("latin-1")
                self._buf.clear()
                if self.echo:
                    self._write_raw(b"\x0a\x0d")
                self._run(line)
            return
        if len(self._buf) < _CLI_BUFFER_SIZE - 1:
            self._buf.append(b)
            if self.echo:
                self._write_raw(bytes((b,)))

    def _run(self, line: str) -> None:
        """Parse and run one command line, as ``At_Parser`` does, then print its status."""
        self.commands.append(line)
        self._changed()
        log.debug("%s < %r", self.name, line)
        i = 0
        while i < _MAX_CMD_LEN and i < len(line) and line[i] not in "= ":
            i += 1
        if i == _MAX_CMD_LEN:
            self._status("AT_ERROR")
            return
        name, has_op = line[:i], i < len(line)
        help_ = name.endswith("?")
        if help_:
            name = name[:-1]
        key = name.upper()
        cmd = self._table.get(key)
        if cmd is None:
            if self.legacy_unknown:
                self._emit_line(b"AT_ERROR\r\n")
                self._status(f"{line[:i]}: Command not found!!")
            else:
                self._status("AT_COMMAND_NOT_FOUND")
            return
        if help_:
            if key == "AT":
                for text in ("AT+<CMD>?: help on <CMD>", "AT+<CMD>: run <CMD>", "AT+<CMD>=<value>: set the value",
                             "AT+<CMD>=?: get the value"):
                    self._emit_line(f"{text}\r\n".encode())
            else:
                self._emit_line(f"{key}: {cmd.usage}\r\n".encode())
            self._status(_STATUS_OK)
            return
        args = _split_params(line[i + 1:]) if has_op else []
        if cmd.p2p and self.nwm == 1:
            self._status("AT_MODE_NO_SUPPORT")
            return
        status = cmd.handler(args, has_op)
        if status is not None:
            self._status(status)

    def _status(self, status: str, *, crlf: bool = True) -> None:
        if self._held:
            self._flush_held()
        self._emit_line(f"{status}\r\n".encode() if crlf else status.encode(), terminator=b"\r\n" if crlf else b"")
        self._changed()

    def _value(self, key: str, value: object) -> None:
        self._emit_line(f"{key}={value}\r\n".encode())

    # -- command table -----------------------------------------------------------------------------------
    def _build_table(self) -> dict[str, _Command]:
        return {
            "AT": _Command(self._cmd_at, ""),
            "ATZ": _Command(self._cmd_atz, "triggers a reset of the MCU"),
            "ATR": _Command(self._cmd_atr, "restore default parameters"),
            "ATE": _Command(self._cmd_ate, "toggle the At Command echo available"),
            "AT+VER": _Command(self._cmd_ver, "get the version of the firmware"),
            "AT+BAUD": _Command(self._cmd_baud, "get or set the serial port baudrate"),
            "AT+NWM": _Command(self._cmd_nwm,
                               "get or set the network working mode (0 = P2P_LORA, 1 = LoRaWAN, 2 = P2P_FSK)"),
            "AT+PFREQ": _Command(self._cmd_pfreq, "configure P2P Frequency", p2p=True),
            "AT+PSF": _Command(self._cmd_psf, "configure P2P Spreading Factor (5-12)", p2p=True),
            "AT+PBW": _Command(self._cmd_pbw, "configure P2P Bandwidth(LORA:125,250,500 FSK:4800-467000)", p2p=True),
            "AT+PCR": _Command(self._cmd_pcr, "configure P2P Code Rate(0=4/5, 1=4/6, 2=4/7, 3=4/8)", p2p=True),
            "AT+PPL": _Command(self._cmd_ppl, "configure P2P Preamble Length (5-65535)", p2p=True),
            "AT+PTP": _Command(self._cmd_ptp, "configure P2P TX Power(5-22)", p2p=True),
            "AT+PSEND": _Command(self._cmd_psend, "send data in P2P mode", p2p=True),
            "AT+PRECV": _Command(self._cmd_precv, "enter P2P RX mode for a period of time (ms)", p2p=True),
            "AT+P2P": _Command(self._cmd_p2p, "get or set all P2P parameters", p2p=True),
            "AT+CAD": _Command(self._cmd_cad, "get or set the P2P CAD mode (0 = off, 1 = on)", p2p=True),
            "AT+ENCRY": _Command(self._cmd_encry, "get or set the encryption status of P2P mode", p2p=True),
            "AT+ENCKEY": _Command(self._cmd_enckey, "get or set the encryption key of P2P mode", p2p=True),
            "AT+CRYPIV": _Command(self._cmd_crypiv, "get or set the encryption IV of P2P mode", p2p=True),
            "AT+SYNCWORD": _Command(self._cmd_syncword, "get or set P2P syncword (0x0000 - 0xffff)", p2p=True),
            "AT+IQINVER": _Command(self._cmd_iqinver, "get or set P2P IQ inversion (1 = on, 0 = off)", p2p=True),
        }

    # Each handler gets the ':'-separated parameters and whether an operator ('=' or ' ') was present; it prints
    # any value line itself and returns the status string (None: it printed/rebooted on its own).

    def _cmd_at(self, args: list[str], has_op: bool) -> str:
        return _STATUS_OK if not has_op else "AT_PARAM_ERROR"

    def _cmd_atz(self, args: list[str], has_op: bool) -> str | None:
        if args:
            return "AT_PARAM_ERROR"
        # At_Reboot resets before any status is printed.
        self._reboot_now()
        return None

    def _cmd_atr(self, args: list[str], has_op: bool) -> str:
        if args:
            return "AT_PARAM_ERROR"
        baud, nwm = self._nvm["baud"], self._nvm["nwm"]
        self._factory_defaults(baudrate=baud, nwm=nwm)  # [U] whether ATR resets the UART rate and mode: kept
        self._p2p = dict(self._nvm["p2p"])
        return _STATUS_OK

    def _cmd_ate(self, args: list[str], has_op: bool) -> str:
        if has_op:
            return "AT_PARAM_ERROR"
        self._nvm["echo"] = not self._nvm["echo"]
        return _STATUS_OK

    def _cmd_ver(self, args: list[str], has_op: bool) -> str:
        if args == ["?"]:
            self._value("AT+VER", _RUI_VERSION)
            return _STATUS_OK
        return "AT_ERROR" if args else "AT_PARAM_ERROR"  # read-only: a write fails the permission check

    def _cmd_baud(self, args: list[str], has_op: bool) -> str:
        if args == ["?"]:
            self._value("AT+BAUD", self.baudrate)
            return _STATUS_OK
        if len(args) != 1:
            return "AT_PARAM_ERROR"
        rate = _uint(args[0])
        if rate not in _BAUD_RATES:
            return "AT_PARAM_ERROR"
        # The UART switches (and the rate is saved) before OK goes out, so OK arrives at the new rate.
        self._nvm["baud"] = rate
        return _STATUS_OK

    def _cmd_nwm(self, args: list[str], has_op: bool) -> str | None:
        if args == ["?"]:
            self._value("AT+NWM", self.nwm)
            return _STATUS_OK
        if len(args) != 1 or args[0] not in ("0", "1", "2"):
            return "AT_PARAM_ERROR"
        if self._radio_busy():
            return self._busy_with_line()
        self._nvm["nwm"] = int(args[0])
        # OK without CRLF, then the reboot (the CLI's trailing "\r\n" never runs).
        self._status(_STATUS_OK, crlf=False)
        self._reboot_now()
        return None

    def _radio_busy(self) -> bool:
        # service_lora_p2p_get_radio_stat(): any RX mode, or a transmission under way.
        return self._rx_mode is not None or self._tx_busy

    def _busy_with_line(self) -> str:
        self._emit_line(f"{_P2P_RX_ON_BUSY_LINE}\r\n".encode())
        return "AT_BUSY_ERROR"

    def _set_p2p(self, values: dict[str, int], *, save: bool = True) -> str:
        if self._radio_busy():
            return self._busy_with_line()
        self._p2p.update(values)
        if save:
            self._nvm["p2p"] = {**self._nvm["p2p"], **values}
        self._changed()
        return _STATUS_OK

    def _single(self, args: list[str], key: str, field: str, check: Callable[[int], bool],
                show: Callable[[int], object] = lambda v: v) -> str:
        if args == ["?"]:
            self._value(key, show(self._p2p[field]))
            return _STATUS_OK
        if len(args) != 1:
            return "AT_PARAM_ERROR"
        v = _uint(args[0])
        if v is None or not check(v):
            return "AT_PARAM_ERROR"
        return self._set_p2p({field: v})

    def _cmd_pfreq(self, args: list[str], has_op: bool) -> str:
        return self._single(args, "AT+PFREQ", "freq_hz", lambda v: 150_000_000 <= v <= 960_000_000)

    def _cmd_psf(self, args: list[str], has_op: bool) -> str:
        return self._single(args, "AT+PSF", "sf", lambda v: 5 <= v <= 12)

    def _cmd_pcr(self, args: list[str], has_op: bool) -> str:
        return self._single(args, "AT+PCR", "cr", lambda v: 0 <= v <= 3)

    def _cmd_ppl(self, args: list[str], has_op: bool) -> str:
        return self._single(args, "AT+PPL", "preamble", lambda v: 5 <= v <= 65535)

    def _cmd_ptp(self, args: list[str], has_op: bool) -> str:
        return self._single(args, "AT+PTP", "txp_dbm", lambda v: 5 <= v <= 22)

    def _show_bw(self, code: int) -> object:
        if self.bw_as_khz and code in (0, 1, 2):
            return int(BW_CODES_KHZ[code])
        return code

    def _cmd_pbw(self, args: list[str], has_op: bool) -> str:
        if args == ["?"]:
            self._value("AT+PBW", self._show_bw(self._p2p["bw_code"]))
            return _STATUS_OK
        if len(args) != 1:
            return "AT_PARAM_ERROR"
        code = _bw_code(args[0])
        if code is None:
            return "AT_PARAM_ERROR"
        return self._set_p2p({"bw_code": code})

    def _cmd_p2p(self, args: list[str], has_op: bool) -> str:
        p = self._p2p
        if args == ["?"]:
            fields = (p["freq_hz"], p["sf"], self._show_bw(p["bw_code"]), p["cr"], p["preamble"], p["txp_dbm"])
            self._value("AT+P2P", ":".join(str(f) for f in fields))
            return _STATUS_OK
        if len(args) not in (6, 7):
            return "AT_PARAM_ERROR"
        freq, sf, cr, pl, txp = (_uint(a) for a in (args[0], args[1], args[3], args[4], args[5]))
        code = _bw_code(args[2])
        if (freq is None or not 150_000_000 <= freq <= 960_000_000 or sf is None or not 5 <= sf <= 12
                or code is None or cr is None or not 0 <= cr <= 3 or pl is None or not 5 <= pl <= 65535
                or txp is None or not 5 <= txp <= 22):
            # RUI3 applies fields one by one and may keep the ones before a bad field; we validate all first.
            return "AT_PARAM_ERROR"
        save = True
        if len(args) == 7:
            if args[6] not in ("0", "1"):
                return "AT_PARAM_ERROR"
            save = args[6] == "0"  # ":1" = runtime only, not written to flash
        return self._set_p2p({"freq_hz": freq, "sf": sf, "bw_code": code, "cr": cr, "preamble": pl,
                              "txp_dbm": txp}, save=save)

    def _cmd_precv(self, args: list[str], has_op: bool) -> str:
        if args == ["?"]:
            # [U] RUI3 documents the value as "P2P_RX_ON"/"P2P_RX_OFF"; we print it in the usual query form
            # "AT+PRECV=P2P_RX_ON". A reader should look for the substring, which fits either form.
            self._value("AT+PRECV", "P2P_RX_ON" if self._radio_busy() else "P2P_RX_OFF")
            return _STATUS_OK
        if len(args) != 1:
            return "AT_PARAM_ERROR"
        t = _uint(args[0])
        if t is None or t > 65535:
            return "AT_PARAM_ERROR"
        if t != 0 and self._rx_mode in _CONTINUOUS:
            self._emit_line(b"P2P_RX_ON already\r\n")
            return "AT_BUSY_ERROR"
        self._rx_token += 1
        if t == 0:
            self._rx_mode = None
        elif t == 65535:
            self._rx_mode = _RX_ONESHOT
        elif t == 65534:
            self._rx_mode = _RX_CONT_LOCKED
        elif t == 65533:
            # RUI3 5.0.0: continuous with TX allowed. The older Quickstart lists 65533 as a timed window [U];
            # we follow 5.0.0.
            self._rx_mode = _RX_CONT_TX
        else:
            self._rx_mode = _RX_TIMED
            token = self._rx_token
            self._timer(max(t, 15) / 1000.0, self._rx_window_closed, token)
        self._changed()
        return _STATUS_OK

    def _rx_window_closed(self, token: int) -> None:
        if token != self._rx_token or self._rx_mode != _RX_TIMED:
            return
        self._rx_mode = None
        self._rx_token += 1
        self._emit_line(f"+EVT:{'RXFSK' if self.nwm == 2 else 'RXP2P'} RECEIVE TIMEOUT\r\n".encode())
        self._changed()

    def _after_rx_event(self) -> None:
        # OnRxDone/OnRxError: a timed window and the one-shot mode end with the first packet.
        if self._rx_mode in (_RX_TIMED, _RX_ONESHOT):
            self._rx_mode = None
            self._rx_token += 1

    def _cmd_psend(self, args: list[str], has_op: bool) -> str:
        if len(args) != 1 or args == ["?"]:
            return "AT_PARAM_ERROR"
        hex_ = args[0]
        if len(hex_) % 2 or len(hex_) // 2 > _MAX_PSEND_BYTES:
            return "AT_PARAM_ERROR"
        try:
            payload = bytes.fromhex(hex_)
        except ValueError:
            return "AT_PARAM_ERROR"
        if any(c in " \t" for c in hex_):  # bytes.fromhex tolerates spaces; at_check_hex_param does not
            return "AT_PARAM_ERROR"
        # service_lora_p2p_send(): busy unless idle, or in 65533 mode (which may even restart a running TX).
        if self._rx_mode == _RX_CONT_TX:
            pass
        elif self._rx_mode is not None or self._tx_busy:
            return "AT_BUSY_ERROR"
        if self._nvm["cad"] and self.channel_busy:
            return "AT_BUSY_ERROR"
        self.transmitted.append(payload)
        self._tx_busy = True
        self._tx_token += 1
        on_air_len = len(payload)
        if self._nvm["encry"]:
            on_air_len = (len(payload) // 16 + 1) * 16  # AES-CBC with PKCS7 padding
        p = self._p2p
        airtime = time_on_air_ms(min(on_air_len, 255), p["sf"], BW_CODES_KHZ[p["bw_code"]], p["cr"],
                                 p["preamble"])
        self._timer(airtime / 1000.0, self._tx_done, self._tx_token, payload)
        self._changed()
        return _STATUS_OK

    def _tx_done(self, token: int, payload: bytes) -> None:
        if token != self._tx_token:
            return  # superseded by a later PSEND (65533 mode)
        self._tx_busy = False
        self._emit_line(f"+EVT:{'TXFSK' if self.nwm == 2 else 'TXP2P'} DONE\r\n".encode())
        self._changed()
        for cb in list(self.on_transmit):
            try:
                cb(payload)
            except Exception:  # a scenario callback must not kill the timer thread silently
                log.exception("%s: on_transmit callback failed", self.name)

    def _flag(self, args: list[str], key: str, nvm_key: str) -> str:
        if args == ["?"]:
            self._value(key, self._nvm[nvm_key])
            return _STATUS_OK
        if len(args) != 1 or args[0] not in ("0", "1"):
            return "AT_PARAM_ERROR"
        self._nvm[nvm_key] = int(args[0])
        return _STATUS_OK

    def _cmd_cad(self, args: list[str], has_op: bool) -> str:
        return self._flag(args, "AT+CAD", "cad")

    def _cmd_encry(self, args: list[str], has_op: bool) -> str:
        return self._flag(args, "AT+ENCRY", "encry")

    def _cmd_iqinver(self, args: list[str], has_op: bool) -> str:
        return self._flag(args, "AT+IQINVER", "iqinver")

    def _hex_setting(self, args: list[str], key: str, nvm_key: str, lengths: tuple[int, ...]) -> str:
        if args == ["?"]:
            self._value(key, self._nvm[nvm_key].hex().upper())
            return _STATUS_OK
        if len(args) != 1 or len(args[0]) not in [2 * n for n in lengths] or not _is_hex(args[0]):
            return "AT_PARAM_ERROR"
        self._nvm[nvm_key] = bytes.fromhex(args[0])
        return _STATUS_OK

    def _cmd_enckey(self, args: list[str], has_op: bool) -> str:
        # [U] older RUI3 takes an 8-byte key, later versions a 16-byte AES-128 key; both are accepted.
        return self._hex_setting(args, "AT+ENCKEY", "enckey", (8, 16))

    def _cmd_crypiv(self, args: list[str], has_op: bool) -> str:
        return self._hex_setting(args, "AT+CRYPIV", "crypiv", (16,))

    def _cmd_syncword(self, args: list[str], has_op: bool) -> str:
        if args == ["?"]:
            self._value("AT+SYNCWORD", f"{self._nvm['syncword']:04X}")
            return _STATUS_OK
        if len(args) != 1 or len(args[0]) != 4 or not _is_hex(args[0]):
            return "AT_PARAM_ERROR"
        self._nvm["syncword"] = int(args[0], 16)
        return _STATUS_OK


def _split_params(text: str) -> list[str]:
    """``parseBuff2Param``: split on ':'; an empty string gives no parameter, a trailing ':' is ignored."""
    if not text:
        return []
    parts = text.split(":")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    return parts


def _uint(text: str) -> int | None:
    """``at_check_digital_uint32_t``: 1–10 decimal digits, no sign, no leading zero (except "0")."""
    if not text or len(text) > 10 or not text.isascii() or not text.isdigit():
        return None
    if len(text) > 1 and text[0] == "0":
        return None
    v = int(text)
    return v if v <= 0xFFFFFFFF else None


def _bw_code(text: str) -> int | None:
    """A LoRa bandwidth parameter: 125/250/500 kHz or a RUI3 code 0–9."""
    v = _uint(text)
    if v is None:
        return None
    if v in _KHZ_TO_CODE:
        return _KHZ_TO_CODE[v]
    return v if 0 <= v <= 9 else None


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


class Profile(BaseModel):
    """The knobs a scenario file may set under a module's ``profile:`` (keyword arguments of the simulator)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    legacy_rx: bool = False
    legacy_unknown: bool = False
    bw_as_khz: bool = False
    baudrate: int = 115200
    initial_nwm: Literal[0, 1, 2] = 0


def air_payload(frame: bytes, settings: Any) -> bytes:
    """What a node puts on the air to deliver ``frame`` to a gateway with these settings: the frame itself (LoRa
    P2P carries bytes), and what :attr:`SimRak3172.transmitted` records for a frame the gateway sends."""
    return frame


#: The twin of drivers.rak3172 (scenario files: ``model: rak3172``).
Simulator = SimRak3172
