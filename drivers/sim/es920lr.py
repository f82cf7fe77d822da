"""A simulated EASEL ES920LR (Private LoRa, firmware "VER 1.12") on a real pseudo-terminal.

The agent opens :attr:`SimEs920lr.path` exactly as it would open ``/dev/ttyUSB0``; the simulator answers with the
bytes the module's firmware would send. Tests drive it with verbs (:meth:`SimEs920lr.inject_uplink`,
:meth:`SimEs920lr.reboot`, :meth:`SimEs920lr.unplug`, ...) and read back what the host made the module do
(:attr:`SimEs920lr.transmitted`, :attr:`SimEs920lr.commands`, :attr:`SimEs920lr.settings`).

Firmware facts this simulator follows
=====================================
Checked in the EASEL VER 1.12 sources mirrored in yamanuk/ES920LR_Firmware (``app/Sources/menus.c``,
``usr_tasks.c``, ``message.c``) and in hideakitai/ES920 (``ES920/Parser/AsciiParser.h``, ``Configurator.h``,
``README.md``). [V] = read in that source, [U] = unverified, with the reading assumed here.

Boot and line discipline
    - Boot with ``operation`` = 1 (Configuration) prints ``\\r\\nSelect Mode [1.terminal or 2.processor]\\r\\n``.
      ``1``/``terminal`` and ``2``/``processor`` answer ``OK\\r\\n``; anything else ``NG 002\\r\\n`` and the
      module keeps waiting [V menus.c SelectMode]. With ``operation 2`` saved, the module boots straight into
      operation mode without any prompt [V usr_tasks.c MessageTask].
    - The terminal/processor choice is stored in the same flash block as the settings [V usr_tasks.c].
    - A line ends only at CR immediately followed by LF [V CommRxCallBack]. The buffer is 256 bytes
      (``MAX_COMM_SIZE`` [U: the value is from docs/protocols.md, the header was not read]). On overflow the firmware
      does **not** answer NG: the write index silently wraps to 0, so the *tail* of an over-long line is what
      gets processed (usually ``NG 001`` in configuration mode) [V]. ``\\b`` deletes the previous byte in
      configuration mode [V]. Bytes after a NUL are invisible to the C-string parsing (strcmp/strlen) [V].

Configuration mode (processor)
    - ``<name> <value>`` or a one-letter alias; names are case-sensitive (strcmp); the value starts exactly one
      character after the name [V]. Unknown command (and an empty line) → ``NG 001``; terminal mode prints
      nothing for an unknown command [V].
    - ``node 1|2`` = 1 Coordinator, 2 EndDevice. ``ack``/``rcvid``/``rssi``: **1 = ON, 2 = OFF**
      (``cuOnOffMenu``; hideakitai sends ``ack 1`` for true). ``operation`` 1 Configuration / 2 Operation,
      ``transmode`` 1 Payload / 2 Frame, ``format`` 1 ASCII / 2 BINARY, ``sleep`` 1 No Sleep / 2 Timer / 3 INT
      [V]. Single-digit values look only at the first character, so ``node 1x`` is accepted [V].
    - ``bw`` 3–6, ``sf`` 7–12, ``channel`` 1–15/7/5, ``retry`` 0–10 parse at most 2 decimal digits into a
      uint8 (so ``retry 269`` wraps to 4 and is accepted — reproduced) [V]. ``panid``/``ownid``/``dstid`` take
      1–4 hex digits (lower case accepted [U: ``isAsciiHex`` was not read]). ``power`` −4…13 with an optional
      leading ``-`` [V]. Also present and simulated: ``sleeptime`` (t) 1–864000 [U: limit from the prompt
      text], ``sendtime`` (B) 0–86400, ``senddata`` (C) ≤ 50 chars, ``help`` (?) [V].
    - Firmware quirk reproduced: ``bw`` recomputes the channel limit and resets ``channel`` to 1 if it is above
      it — also when the bw value is **invalid** (limit 0), so ``bw 9`` answers NG 002 *and* resets the
      channel to 1 [V CommExecSelectBandWidth].
    - ``baudrate`` switches the UART right after its reply; ``load`` restores defaults (and 115200) [V].
    - ``version`` → ``VER 1.12\\r\\n`` (no OK). ``save`` → ``OK`` (``NG 003``/``NG 004`` on flash erase/write
      error). ``show`` prints the block in :func:`show_text` and no OK [V].
    - ``start`` and ``z`` print ``OK\\r\\n`` (DoConfiguration) and then DoOperation prints ``\\r\\n`` in
      processor mode or ``\\r\\n ----- operation mode is ready ----- \\r\\n`` in terminal mode [V]. hideakitai/ES920
      documents only the ``\\r\\n`` (docs/protocols.md §2); ``start_reply_ok=False`` gives that reading.
    - Effective bitrate in ``show`` comes from a firmware table (``gDataRate``) that was not read [U]; the
      simulator prints ``floor(SF * BW / 2**SF * 4/5)`` bps. "UART baudrate" is printed as bps [U: the value of
      ``gUARTBaudRate115200_c`` was not read].

Operation mode
    - ASCII: ``<data>\\r\\n``; an empty line is ignored; ``config`` stores Configuration mode (the whole
      current parameter block is written to flash, unsaved changes included) and takes effect at the next reset
      [V]. The firmware prints **nothing** for ``config`` [V usr_tasks.c]; ``config_reply_ok=True`` answers
      ``OK`` instead (the reading in the brief).
    - Payload mode limit 50 bytes; Frame mode needs 9–58 bytes, the first 8 being ASCII hex of destination
      PAN and ID; otherwise ``NG 100`` [V message.c]. A send while the previous one still waits for its
      airtime/ACK → ``NG 101`` at once [V SendPacket]. Carrier sense busy → ``NG 102`` at once; after the
      airtime: ``OK``, ``NG 103`` (ACK timeout) or ``NG 104`` (CCA failure) [V]. Those failures come from
      fault knobs here.
    - Received frames are accepted when (PAN == own PAN and dst == own ID) or dst == FFFF; the firmware's
      broadcast test ignores the PAN [V CheckRouteInfo] (whether the SMAC layer below filters foreign PANs is
      [U]; ``broadcast_any_pan=False`` gives that reading). Frames arriving while a send waits for its
      ACK are dropped [V ReceivePacketProcess].
    - ASCII RX line: ``[RSSI 4 hex][PAN 4 hex][SRC 4 hex]<raw payload>\\r\\n``; RSSI is the int16 printed
      big-endian upper-case hex (``FFB5`` = −75 dBm) [V layout; U upper case, from docs/protocols.md].
    - Binary format: host → module ``[len][len bytes]`` with a 500 ms inter-byte timeout; raw ``config``
      (6 bytes, no length) switches to Configuration [V]. Module → host ``[len][RSSI?][PAN SRC?][payload]``
      where ``len`` counts every byte after it, and **no CR LF** follows [V ReceiveData]. Replies are
      ``02 "OK"`` and ``06 "NG 10x"``, also without CR LF [V SendDoneProcess].
    - ``sleep``/``sleeptime``/``sendtime`` are stored and shown but their behaviour (LLS sleep, periodic auto
      send) is not simulated.

Reset artefacts
    hideakitai treats the last bytes of a line as reset noise: ``FC FC FC`` at 115200, ``E0 E0 E0`` at 230400,
    ``FF FF FF`` at 38400/57600, ``FF`` at 19200, nothing at 9600. :meth:`SimEs920lr.reboot` emits those before
    the boot prompt when ``noise=True``.

Airtime: :func:`time_on_air_s` is the firmware's own estimate from ``SendPacket`` (12.25 preamble symbols, a
12-byte SMAC header [U]); ``airtime_scale`` shrinks it for tests.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from drivers.sim._pty import PtyPort
from drivers.sim.faults import ModuleFaults, baud_garble, bauds_match, noise_bytes

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SETTINGS",
    "BOOT_PROMPT",
    "SendFaults",
    "SentFrame",
    "SimEs920lr",
    "Simulator",
    "air_payload",
    "show_text",
    "time_on_air_s",
]

VERSION = "VER 1.12"
BOOT_PROMPT = b"\r\nSelect Mode [1.terminal or 2.processor]\r\n"
OPERATION_BANNER = b"\r\n ----- operation mode is ready ----- \r\n"
BROADCAST = 0xFFFF
BUFFER_SIZE = 256  # MAX_COMM_SIZE [U: from docs/protocols.md]
MAX_PAYLOAD = 50  # message.c MAX_DATA_LENGTH
FRAME_HEAD = 8  # 4 hex PAN + 4 hex destination ID in Frame mode

#: Factory settings (usr_tasks.c SettingDefaultValue), as the raw values the commands take.
DEFAULT_SETTINGS: dict[str, int | str] = {
    "node": 2,  # EndDevice
    "bw": 4,  # 125 kHz
    "sf": 7,
    "channel": 1,
    "panid": 0x0001,
    "ownid": 0x0001,
    "dstid": 0x0000,
    "ack": 1,  # ON
    "retry": 3,
    "transmode": 1,  # Payload
    "rcvid": 2,  # OFF
    "rssi": 2,  # OFF
    "operation": 1,  # Configuration
    "baudrate": 5,  # 115200
    "sleep": 1,  # No Sleep
    "sleeptime": 50,
    "power": 13,
    "format": 1,  # ASCII
    "sendtime": 0,
    "senddata": "",
}

BW_KHZ = {3: 62.5, 4: 125.0, 5: 250.0, 6: 500.0}
MAX_CHANNEL = {3: 15, 4: 15, 5: 7, 6: 5}
BAUDS = {1: 9600, 2: 19200, 3: 38400, 4: 57600, 5: 115200, 6: 230400}
# hideakitai/ES920 AsciiParser.h reset_char_<baud>: what the host UART sees while the module resets.
RESET_NOISE = {9600: b"", 19200: b"\xff", 38400: b"\xff\xff\xff", 57600: b"\xff\xff\xff",
               115200: b"\xfc\xfc\xfc", 230400: b"\xe0\xe0\xe0"}

Mode = Literal["off", "boot", "config", "operation"]


# -- airtime -------------------------------------------------------------------------------------------------------
def _symbol_ms(sf: int, bw_khz: float) -> float:
    return (2**sf) / bw_khz


def time_on_air_s(payload_len: int, *, sf: int, bw_khz: float) -> float:
    """LoRa time on air of one data frame, as the ES920LR firmware estimates it (message.c ``SendPacket``).

    Args:
        payload_len: user payload in bytes (the SMAC header of 12 bytes is added here [U]).
        sf: spreading factor 7–12.
        bw_khz: bandwidth in kHz.

    Returns:
        Time on air in seconds.
    """
    sym = _symbol_ms(sf, bw_khz)
    symbols = 8 + math.ceil((8 * (12 + payload_len) - 4.0 * sf + 44) / (4.0 * (sf - 2))) * 5
    return math.ceil(sym * 12.25 + sym * symbols) / 1000.0


def _ack_time_s(*, sf: int, bw_khz: float) -> float:
    """Time the firmware allows for one ACK (message.c ``ackTime``), in seconds."""
    sym = _symbol_ms(sf, bw_khz)
    symbols = 8 + math.ceil((80 - 4.0 * sf + 44) / (4.0 * (sf - 2))) * 5
    return (50 + math.ceil(sym * 2.0 + sym * 12.25 + sym * symbols)) / 1000.0


def _effective_bitrate(bw: int, sf: int) -> int:
    # [U] The firmware prints gDataRate[bw][sf-7], a table that was not read; this is the LoRa formula at CR 4/5.
    return int(sf * BW_KHZ[bw] * 1000 / 2**sf * 4 / 5)


# -- firmware number parsers (menus.c), reproduced with their quirks -----------------------------------------------
def _char(v: str, i: int) -> str:
    return v[i] if i < len(v) else "\0"


def _is_dec(c: str) -> bool:
    return "0" <= c <= "9"


def _is_hex(c: str) -> bool:
    # [U] isAsciiHex was not read; lower case is accepted so either host habit works.
    return _is_dec(c) or "A" <= c <= "F" or "a" <= c <= "f"


def _fw_digit(v: str) -> int:
    """``isAsciiHex(buf[0]) ? AsciiToHex(buf[0]) : 0``: only the first character counts."""
    c = _char(v, 0)
    return int(c, 16) if _is_hex(c) else 0


def _fw_dec(v: str, digits: int, fail: int, bits: int) -> int:
    """The firmware's bounded decimal loop, including its unsigned wrap-around."""
    mask = (1 << bits) - 1
    tmp = 0
    for i in range(digits):
        c = _char(v, i)
        if not _is_dec(c):
            return fail
        tmp = (tmp + ord(c) - 48) & mask
        if _char(v, i + 1) == "\0":
            return tmp
        tmp = (tmp * 10) & mask
    return tmp


def _fw_hex4(v: str) -> int | None:
    """1–4 hex digits and nothing after them, else None (``findIndex == 4``)."""
    tmp = 0
    for i in range(4):
        c = _char(v, i)
        if not _is_hex(c):
            return None
        tmp |= int(c, 16)
        if _char(v, i + 1) == "\0":
            return tmp
        tmp = (tmp << 4) & 0xFFFF
    return None


def _fw_power(v: str) -> int:
    tmp = 0
    minus = False
    for i in range(3):
        c = _char(v, i)
        if i == 0 and c == "-":
            minus = True
            continue
        if not _is_dec(c):
            tmp = 0xFF
            break
        tmp += ord(c) - 48
        if _char(v, i + 1) == "\0":
            break
        tmp *= 10
    return -tmp if minus else tmp


def _lenient_hex(text: bytes) -> int:
    # Frame-mode headers go through AsciiToHex without validation; a non-hex digit counts as 0 here [U].
    value = 0
    for b in text:
        c = chr(b)
        value = (value << 4) | (int(c, 16) if _is_hex(c) else 0)
    return value


# -- texts -----------------------------------------------------------------------------------------------------------
_LOGO = "\r\n\r\n\r Software Version : " + VERSION + "\r\n"
_MAIN_MENU = "".join((
    "\r\n\r Configuration Mode\n",
    "\r------------------------------------------\n",
    "\r a. node        select Coordinator or EndDevice\n",
    "\r b. bw          select Band Width\n",
    "\r c. sf          set Spreading Factor\n",
    "\r d. channel     set channel\n",
    "\r e. panid       set PAN ID\n",
    "\r f. ownid       set Own Node ID\n",
    "\r g. dstid       set Destination ID\n",
    "\r l. ack         set Acknowledge Mode\n",
    "\r m. retry       set send retry count\n",
    "\r n. transmode   select Transfer Mode\n",
    "\r o. rcvid       set received Node ID information\n",
    "\r p. rssi        set RSSI information\n",
    "\r q. operation   select Configuration or Operation\n",
    "\r r. baudrate    select UART baudrate\n",
    "\r s. sleep       select Sleep Mode\n",
    "\r t. sleeptime   set Sleep Wakeup Timer value\n",
    "\r u. power       set Output Power\n",
    "\r v. version     software version\n",
    "\r w. save        save parameters\n",
    "\r x. load        load default parameters\n",
    "\r y. show        show parameters\n",
    "\r z. start       Transite Operation\n",
    "\r A. format      set Data Format\n",
    "\r B. sendtime    set test send interval\n",
    "\r C. senddata    set test send data\n",
    "\r ?. help        help\n",
    "\r\n",
))
# CommShowPrompt: erase the old line (20 backspaces, 20 spaces, 20 backspaces), then the prompt.
_TERMINAL_PROMPT = "\b" * 20 + " " * 20 + "\b" * 20 + "LORA > "


def _menu(*items: str) -> str:
    return "".join(f"\r\n  {item}" for item in items) + "\r\n" + "\r\n  select number > "


_ON_OFF = _menu("1. ON", "2. OFF")
# Terminal mode: prompt and per-value messages of the single-digit (menu) settings.
_MENU_SETTINGS: dict[str, tuple[str, dict[int, str]]] = {
    "node": (_menu("1. Coordinator", "2. EndDevice"), {1: "Coordinator is selected.", 2: "EndDevice is selected."}),
    "ack": (_ON_OFF, {1: "Acknowledge is ON.", 2: "Acknowledge is OFF."}),
    "transmode": (_menu("1. Payload", "2. Frame"), {1: "Payload Mode is selected.", 2: "Frame Mode is selected."}),
    "rcvid": (_ON_OFF, {1: "Receive Node ID information is ON.", 2: "Receive Node ID information is OFF."}),
    "rssi": (_ON_OFF, {1: "RSSI information is ON.", 2: "RSSI information is OFF."}),
    "operation": (_menu("1. Configuration", "2. Operation"),
                  {1: "Configuration is selected.", 2: "Operation is selected."}),
    "baudrate": (_menu(*(f"{k}. {v}" for k, v in BAUDS.items())),
                 {k: f"{v} baud is selected." for k, v in BAUDS.items()}),
    "sleep": (_menu("1. No Sleep", "2. Timer Wakeup", "3. INT Wakeup"),
              {1: "No Sleep Mode is selected.", 2: "Timer Wakeup Mode is selected.", 3: "INT Wakeup Mode is selected."}),
    "format": (_menu("1. ASCII", "2. BINARY"), {1: "ASCII format is selected.", 2: "BINARY format is selected."}),
}
_BW_TEXT = {3: "62.5kHz", 4: "125kHz", 5: "250kHz", 6: "500kHz"}
_VALUE_PROMPTS = {
    "sf": "\r\n  please set Spreading Factor (7 - 12) > ",
    "panid": "\r\n  please set PAN ID (0001 - FFFE) > ",
    "ownid": "\r\n  please set Own Node ID (0000 - FFFE) > ",
    "dstid": "\r\n  please set Destination ID (0000 - FFFF) > ",
    "retry": "\r\n  please set retry count (0 - 10) > ",
    "sleeptime": "\r\n  please set sleep time (1 - 864000) > ",
    "power": "\r\n  please set output power (-4 - 13) > ",
    "sendtime": "\r\n  please set send time (0 - 86400) > ",
    "senddata": "\r\n  please set send data > ",
}
_VALUE_RESULTS = {
    "sf": ("spreading factor is {}", "spreading factor is invalid."),
    "channel": ("channel is {}", "channel is invalid."),
    "panid": ("PAN ID is 0x{:04X}", "PAN ID is invalid."),
    "ownid": ("Own Node ID is 0x{:04X}", "Own Node ID is invalid."),
    "dstid": ("Destination ID is 0x{:04X}", "Destination ID is invalid."),
    "retry": ("retry count is {}", "retry count is invalid."),
    "sleeptime": ("sleep time is {}", "sleep time is invalid."),
    "power": ("output power is {}", "output power is invalid."),
    "sendtime": ("send time is {}", "send time is invalid."),
}
# Command table (menus.c command1[]): name -> one-letter alias. "start"/"z" are handled outside the table.
_COMMANDS = {
    "node": "a", "bw": "b", "sf": "c", "channel": "d", "panid": "e", "ownid": "f", "dstid": "g",
    "ack": "l", "retry": "m", "transmode": "n", "rcvid": "o", "rssi": "p", "operation": "q", "baudrate": "r",
    "sleep": "s", "sleeptime": "t", "power": "u", "version": "v", "save": "w", "load": "x", "show": "y",
    "format": "A", "sendtime": "B", "senddata": "C", "help": "?",
}


def show_text(settings: dict[str, int | str]) -> str:
    """The ``show`` block exactly as menus.c ``CommExecShow`` prints it (both interfaces)."""
    s = settings
    on_off = {1: "ON", 2: "OFF"}
    power = int(s["power"])
    rows = [
        ("Node                        : ", "Coordinator" if s["node"] == 1 else "EndDevice"),
        ("Band Width                  : ", _BW_TEXT[int(s["bw"])]),
        ("Spreading Factor            : ", str(s["sf"])),
        ("Effective Bitrate           : ", f"{_effective_bitrate(int(s['bw']), int(s['sf']))}bps"),
        ("Channel                     : ", str(s["channel"])),
        ("PAN ID                      : ", f"{int(s['panid']):04X}"),
        ("Own Node ID                 : ", f"{int(s['ownid']):04X}"),
        ("Destination ID              : ", f"{int(s['dstid']):04X}"),
        ("Acknowledge                 : ", on_off.get(int(s["ack"]), "OFF")),
        ("Retry count                 : ", str(s["retry"])),
        ("Transfer Mode               : ", "Payload" if s["transmode"] == 1 else "Frame"),
        ("Receive Node ID information : ", on_off.get(int(s["rcvid"]), "OFF")),
        ("RSSI information            : ", on_off.get(int(s["rssi"]), "OFF")),
        ("Config/Operation            : ", "Configuration" if s["operation"] == 1 else "Operation"),
        ("UART baudrate               : ", str(BAUDS[int(s["baudrate"])])),
        ("Sleep Mode                  : ", {1: "No Sleep", 2: "Timer Wakeup"}.get(int(s["sleep"]), "INT Wakeup")),
        ("Sleep Time                  : ", str(s["sleeptime"])),
        ("Output Power                : ", f"{power}dBm"),
        ("Format                      : ", "ASCII" if s["format"] == 1 else "BINARY"),
        ("Send Time                   : ", str(s["sendtime"])),
        ("Send Data                   : ", str(s["senddata"])),
    ]
    head = "\r\n  configuration setting is below.\r\n  -------------------------------------"
    return head + "".join(f"\r\n  {label}{value}" for label, value in rows) + "\r\n\r\n"


# -- public helper types ---------------------------------------------------------------------------------------------
@dataclass
class SendFaults:
    """Probabilities (0..1) that one host send fails, drawn in this order; all off by default.

    Attributes:
        send_fail_probability: ``NG 101`` at once (SMAC refused the frame).
        carrier_busy_probability: ``NG 102`` at once (carrier sense found the channel busy).
        ack_timeout_probability: ``NG 103`` after all retries (only when ack is ON and dst is not broadcast).
        cca_fail_probability: ``NG 104`` after the airtime (CCA failure during the send).
    """

    send_fail_probability: float = 0.0
    carrier_busy_probability: float = 0.0
    ack_timeout_probability: float = 0.0
    cca_fail_probability: float = 0.0


@dataclass(frozen=True)
class SentFrame:
    """One frame the module put on the air for the host.

    Attributes:
        pan: destination PAN ID written in the frame header.
        src: own node ID.
        dst: destination node ID (FFFF = broadcast).
        payload: the user bytes (Frame-mode header removed).
    """

    pan: int
    src: int
    dst: int
    payload: bytes


@dataclass
class _OutItem:
    data: bytes
    raw: bool  # raw bytes (noise, garbage): no line faults, no baud garbling
    terminator: bytes
    baud: int  # the module's UART rate when the bytes were produced


class _LineBuffer:
    """The firmware's receive buffer: a line ends only at CR followed by LF; the index wraps at the end.

    Args:
        backspace: honour ``\\b`` like the configuration-mode callback does.
    """

    def __init__(self, *, backspace: bool) -> None:
        self.buf = bytearray(BUFFER_SIZE)
        self.idx = 0
        self.backspace = backspace
        self.overflows = 0

    def clear(self) -> None:
        self.idx = 0

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        buf = self.buf
        for b in data:
            buf[self.idx] = b
            if self.idx > 0 and b == 0x0A and buf[self.idx - 1] == 0x0D:
                lines.append(bytes(buf[: self.idx - 1]))
                self.idx = 0
            elif self.backspace and b == 0x08:
                buf[self.idx] = 0
                if self.idx > 0:
                    self.idx -= 1
                    buf[self.idx] = 0
            else:
                self.idx += 1
                if self.idx >= BUFFER_SIZE:
                    # menus.c/usr_tasks.c: "if( MAX_COMM_SIZE <= CommDataIndex ) CommDataIndex = 0;" -- no NG.
                    self.idx = 0
                    self.overflows += 1
        return lines


# -- the simulator ---------------------------------------------------------------------------------------------------
class SimEs920lr:
    """An ES920LR module on a pty: boot prompt, configuration commands, operation mode, radio frames, faults.

    All public methods are thread-safe. Output to the host goes through one writer thread in the order the
    module produced it, so a line injected from another thread never lands inside another line (unless the
    split fault is on, which cuts single writes on purpose).

    Args:
        name: label for logs and the pty thread.
        link: stable symlink to create for the device (like udev's ``/dev/lora0``); None uses ``/dev/pts/N``.
        boot_delay_s: silence after power-on or reset before the module talks, in seconds.
        rng: random source for faults; seed it for reproducible runs.
        airtime_scale: factor applied to the firmware's airtime estimate (tests use a tiny value).
        start_reply_ok: True (firmware VER 1.12): ``start`` answers ``OK\\r\\n`` before the operation-mode
            ``\\r\\n``; False: only ``\\r\\n`` (hideakitai's reading).
        config_reply_ok: False (firmware): ``config`` in operation mode prints nothing; True: ``OK\\r\\n``.
        broadcast_any_pan: True (firmware application code): a broadcast from any PAN is delivered; False: a
            broadcast must carry our PAN.
        uart_gap_timeout_s: binary format inter-byte timeout that discards a partial frame, in seconds.

    Attributes:
        port: the pty.
        faults: line faults for what the module sends to the host.
        send_faults: failure probabilities for radio sends.
        settings: the parameters in RAM, as raw command values (see :data:`DEFAULT_SETTINGS`).
        flash: the saved parameter block (plus ``"interface"``), or None while the flash is blank.
        interface: ``"processor"``, ``"terminal"`` or None before the mode selection.
        mode: ``"off"`` (unplugged / not started), ``"boot"`` (deaf while booting), ``"config"``,
            ``"operation"``.
        transmitted: payloads put on the air, in order.
        sent_frames: the same with their addressing.
        received: payloads delivered to the host, in order.
        commands: every line the host sent in configuration mode (and ``config`` in operation mode).
        flash_error: set to 3 or 4 to make ``save`` fail with ``NG 003``/``NG 004``.
    """

    model = "es920lr"

    def __init__(self, *, name: str = "lora1", link: str | None = None, boot_delay_s: float = 0.5,
                 rng: random.Random | None = None, airtime_scale: float = 1.0, start_reply_ok: bool = True,
                 config_reply_ok: bool = False, broadcast_any_pan: bool = True,
                 uart_gap_timeout_s: float = 0.5) -> None:
        self.name = name
        self.boot_delay_s = boot_delay_s
        self.rng = rng or random.Random()
        self.airtime_scale = airtime_scale
        self.start_reply_ok = start_reply_ok
        self.config_reply_ok = config_reply_ok
        self.broadcast_any_pan = broadcast_any_pan
        self.uart_gap_timeout_s = uart_gap_timeout_s
        self.port = PtyPort(self._on_bytes, link=link, name=name)
        self.faults = ModuleFaults(rng=self.rng)
        self.send_faults = SendFaults()
        self.flash_error: int | None = None

        self.settings: dict[str, int | str] = dict(DEFAULT_SETTINGS)
        self.flash: dict[str, int | str | None] | None = None
        self.interface: str | None = None
        self.mode: Mode = "off"
        self.transmitted: list[bytes] = []
        self.sent_frames: list[SentFrame] = []
        self.received: list[bytes] = []
        self.commands: list[str] = []
        self.bytes_from_host = 0

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._timers: list[tuple[float, int, int, Callable[[], None]]] = []
        self._timer_seq = itertools.count()
        self._generation = 0  # bumped at every power event; timers of older generations are void
        self._config_buf = _LineBuffer(backspace=True)
        self._op_buf = _LineBuffer(backspace=False)
        self._bin = bytearray()
        self._bin_last = 0.0
        self._awaiting: str | None = None  # terminal mode: the command whose value line comes next
        self._sending = False
        self._forced_results: collections.deque[int] = collections.deque()
        self._outq: queue.Queue[_OutItem | None] = queue.Queue()
        self._out_pending = 0
        self._stopping = False
        self._started = False
        self._timer_thread: threading.Thread | None = None
        self._writer_thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        """The path the host opens (stable link or pty slave)."""
        return self.port.path

    @property
    def overflows(self) -> int:
        """How many times a receive buffer wrapped around (over-long host lines)."""
        return self._config_buf.overflows + self._op_buf.overflows

    @property
    def output_pending(self) -> int:
        """Items produced but not yet written to the pty."""
        with self._lock:
            return self._out_pending

    @property
    def booted(self) -> bool:
        """True once booted (at its mode prompt or past it); False while off or booting."""
        return self.mode not in ("boot", "off")

    def start(self, *, wait: bool = False) -> None:
        """Create the pty and power the module on (it boots after ``boot_delay_s``).

        Args:
            wait: block until it has booted (at most ``boot_delay_s`` + 5 s).
        """
        with self._lock:
            if self._started:
                return
            self._started = True
        self.port.start()
        self._timer_thread = threading.Thread(target=self._timer_loop, name=f"es920-{self.name}-timers", daemon=True)
        self._writer_thread = threading.Thread(target=self._writer_loop, name=f"es920-{self.name}-out", daemon=True)
        self._timer_thread.start()
        self._writer_thread.start()
        self._power_on(noise=False)
        if wait:
            self.wait_for(lambda: self.booted, timeout=self.boot_delay_s + 5.0)

    def stop(self) -> None:
        """Power off, stop the threads and remove the pty."""
        with self._cond:
            self._stopping = True
            self._generation += 1
            self.mode = "off"
            self._cond.notify_all()
        self._outq.put(None)
        for t in (self._timer_thread, self._writer_thread):
            if t is not None:
                t.join(5)
        if self._started:
            self.port.stop()

    def __enter__(self) -> SimEs920lr:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reboot(self, *, noise: bool = True) -> None:
        """An unexpected power-cycle or a pulse on the RESET pin.

        Pending output is lost, RAM settings fall back to the flash, and after ``boot_delay_s`` the module boots
        again. With ``noise`` the host first sees the reset artefact for the current baud rate (``FC FC FC`` at
        115200).
        """
        with self._lock:
            if not self.port.plugged:
                log.debug("%s: reboot ignored, unplugged (no power)", self.name)
                return
        self._power_on(noise=noise)

    def reset(self, *, noise: bool = True) -> None:
        """The RESET pin; same as :meth:`reboot`."""
        self.reboot(noise=noise)

    def unplug(self) -> None:
        """Pull the USB cable: the path disappears, the host sees EIO/EOF and the module loses power."""
        with self._cond:
            self._generation += 1
            self._drain_output()
            self.mode = "off"
            self._sending = False
            self._cond.notify_all()
        self.port.unplug()

    def replug(self) -> None:
        """Plug the cable back: same stable path, new pty, and the module powers on again."""
        self.port.replug()
        self._power_on(noise=False)

    # -- test verbs -----------------------------------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate()`` is true (re-checked at every state change), or ``timeout`` seconds pass.

        Returns:
            The predicate's last value.
        """
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def inject_uplink(self, payload: bytes, *, rssi: int = -80, snr: float = 7.0, src: int = 1,
                      pan: int | None = None, dst: int | None = None) -> bool:
        """A LoRa frame arrives over the air.

        Args:
            payload: the frame's user bytes (raw: an embedded CR LF really breaks the ASCII line).
            rssi: received signal strength in dBm (int16).
            snr: accepted for symmetry with the RAK3172 simulator; the ES920LR does not report it.
            src: sender's node ID.
            pan: the frame's PAN ID; None means ours.
            dst: the frame's destination ID; None means our own ID.

        Returns:
            True if the module passed the frame to the host; False if it was not in operation mode, was waiting
            for an ACK, or the frame was not addressed to it.

        Raises:
            ValueError: a field out of range, or a payload too long for the binary length byte.
        """
        del snr  # not reported by the ES920LR
        if not -32768 <= rssi <= 32767:
            raise ValueError(f"rssi must fit in int16, got {rssi}")
        for label, value in (("src", src), ("pan", pan), ("dst", dst)):
            if value is not None and not 0 <= value <= 0xFFFF:
                raise ValueError(f"{label} must be within 0..0xFFFF, got {value}")
        if len(payload) > 255 - 12:
            raise ValueError(f"payload of {len(payload)} bytes does not fit the length byte")
        with self._cond:
            if self.mode != "operation" or self._sending:
                return False
            s = self.settings
            own_pan, own_id = int(s["panid"]), int(s["ownid"])
            pan = own_pan if pan is None else pan
            dst = own_id if dst is None else dst
            to_us = pan == own_pan and dst == own_id
            broadcast = dst == BROADCAST and (self.broadcast_any_pan or pan == own_pan)
            if not (to_us or broadcast):
                return False
            self._deliver(payload, rssi=rssi, src=src, pan=pan, dst=dst)
            self.received.append(bytes(payload))
            self._cond.notify_all()
            return True

    def inject_garbage(self, data: bytes | None = None) -> None:
        """Put stray bytes on the line to the host, between two lines (never inside one).

        Args:
            data: the bytes; None picks typical noise (``00``, ``FF``, ``FC FC FC`` or random, never CR/LF).
        """
        with self._lock:
            self._emit(noise_bytes(self.rng) if data is None else data, raw=True)

    def fail_next_send(self, code: int) -> None:
        """Force the result of the next radio send: 0 (OK), 101, 102, 103 or 104."""
        if code not in (0, 101, 102, 103, 104):
            raise ValueError(f"unknown send result {code}")
        with self._lock:
            self._forced_results.append(code)

    # -- power ---------------------------------------------------------------------------------------------------
    def _power_on(self, *, noise: bool) -> None:
        with self._cond:
            before_baud = self._module_baud()
            self._generation += 1
            self._drain_output()
            self.mode = "boot"
            self._sending = False
            self._awaiting = None
            self._config_buf.clear()
            self._op_buf.clear()
            self._bin.clear()
            if noise:
                host = self.port.host_baudrate()
                artefact = RESET_NOISE.get(host if host in RESET_NOISE else before_baud, b"")
                if artefact:
                    self._emit(artefact, raw=True)
            self._schedule(self.boot_delay_s, self._boot_done)
            self._cond.notify_all()

    def _boot_done(self) -> None:
        # usr_tasks.c ReadConfigParam: the flash block if it was ever written, else factory defaults.
        if self.flash is None:
            self.settings = dict(DEFAULT_SETTINGS)
            self.interface = None
        else:
            saved = dict(self.flash)
            iface = saved.pop("interface", None)
            self.settings = {k: v for k, v in saved.items() if v is not None}
            self.interface = iface if isinstance(iface, str) else None
        if self.settings["operation"] == 2:
            self._enter_operation()
        else:
            self.mode = "config"
            self.interface = None  # SelectMode asks again
            self._emit(BOOT_PROMPT)
        self._cond.notify_all()

    # -- host input ----------------------------------------------------------------------------------------------
    def _on_bytes(self, data: bytes) -> None:
        host = self.port.host_baudrate()
        with self._cond:
            self.bytes_from_host += len(data)
            module = self._module_baud()
            if host is not None and not bauds_match(module, host):
                data = baud_garble(data, host, module)  # the module's UART reads framing-error garbage
            if self.mode == "config":
                for line in self._config_buf.feed(data):
                    self._config_line(line)
            elif self.mode == "operation":
                if int(self.settings["format"]) == 2:
                    self._binary_bytes(data)
                else:
                    for line in self._op_buf.feed(data):
                        self._operation_line(line)
            # "off"/"boot": nobody is listening
            self._cond.notify_all()

    # -- configuration mode --------------------------------------------------------------------------------------
    def _config_line(self, raw: bytes) -> None:
        line = raw.split(b"\0", 1)[0].decode("latin-1")  # C strings end at NUL
        self.commands.append(line)
        if self.interface is None:
            self._select_mode(line)
            return
        terminal = self.interface == "terminal"
        if terminal and self._awaiting is not None:
            name, self._awaiting = self._awaiting, None
            self._apply(name, line, terminal=True)
            self._emit_text(_TERMINAL_PROMPT)
            return
        head = line[:15].split(" ", 1)[0]  # tmpcmd: up to the first space, at most 15 characters
        name = next((n for n, alias in _COMMANDS.items() if head in (n, alias)), None)
        if name in ("show", "help"):
            # The two interfaces print the same text for these.
            self._emit_text(show_text(self.settings) if name == "show" else _MAIN_MENU)
        elif name is not None:
            name_len = len(head)
            if terminal:
                self._terminal_command(name)
            else:
                self._processor_command(name, line[name_len + 1:])
        elif line in ("start", "z"):
            if self.start_reply_ok:
                self._emit(b"OK\r\n")
            self._enter_operation()
            return
        elif not terminal:
            self._emit(b"NG 001\r\n")
        if terminal and self._awaiting is None:
            self._emit_text(_TERMINAL_PROMPT)

    def _select_mode(self, line: str) -> None:
        if line in ("2", "processor", "1", "terminal"):
            self._emit(b"OK\r\n")
            self.interface = "processor" if line in ("2", "processor") else "terminal"
            if self.interface == "terminal":
                self._emit_text(_LOGO)
                self._emit_text(_MAIN_MENU)
                self._emit_text(_TERMINAL_PROMPT)
        else:
            self._emit(b"NG 002\r\n")

    def _processor_command(self, name: str, value: str) -> None:
        if name == "version":
            self._emit(VERSION.encode() + b"\r\n")
        elif name == "save":
            self._emit(self._save())
        elif name == "load":
            self._emit(b"OK\r\n")  # queued at the old rate; the default 115200 applies right after
            self._load()
        else:
            # baudrate switches the UART only after its reply is out, so the reply goes at the old rate.
            old_baud = self._module_baud()
            reply = b"OK\r\n" if self._apply(name, value, terminal=False) else b"NG 002\r\n"
            self._emit(reply, baud=old_baud)

    def _terminal_command(self, name: str) -> None:
        if name == "version":
            self._emit_text("\r\n" + VERSION + "\r\n\r\n")
        elif name == "save":
            result = self._save()
            text = {b"OK\r\n": " Done\r\n\r\n", b"NG 003\r\n": " FlashROM erase error\r\n\r\n"}.get(
                result, " FlashROM write error\r\n\r\n")
            self._emit_text("\r\nsave parameter ..." + text)
        elif name == "load":
            self._load()
        else:
            self._awaiting = name
            if name in _MENU_SETTINGS:
                self._emit_text(_MENU_SETTINGS[name][0])
            elif name == "bw":
                self._emit_text(_menu(*(f"{k}. {v}" for k, v in _BW_TEXT.items())))
            elif name == "channel":
                self._emit_text(f"\r\n  please set channel (1 - {MAX_CHANNEL[int(self.settings['bw'])]}) > ")
            else:
                self._emit_text(_VALUE_PROMPTS[name])

    def _apply(self, name: str, value: str, *, terminal: bool) -> bool:
        """Parse and store one setting the way menus.c does; in terminal mode also print the result text.

        Returns:
            Whether the value was accepted.
        """
        s = self.settings
        new: int | str | None
        if name in _MENU_SETTINGS:
            digit = _fw_digit(value)
            new = digit if digit in _MENU_SETTINGS[name][1] else None
            if terminal:
                msg = _MENU_SETTINGS[name][1][new] if new is not None else "selected number is invalid."
                self._emit_text(f"\r\n  {msg}\r\n\r\n")  # before the store: baudrate switches after it
            if new is not None:
                s[name] = new
            return new is not None
        if name == "bw":
            bw = _fw_dec(value, 2, 0xFF, 8)
            ok = bw in BW_KHZ
            if ok:
                s["bw"] = bw
            # Quirk: the channel limit is 0 for an invalid bw, so the channel falls back to 1 anyway.
            if (MAX_CHANNEL[bw] if ok else 0) < int(s["channel"]):
                s["channel"] = 1
            if terminal:
                msg = f"{_BW_TEXT[bw]} is selected." if ok else "selected number is invalid."
                rate = _effective_bitrate(int(s["bw"]), int(s["sf"]))
                self._emit_text(f"\r\n  {msg}  Effective Bitrate is {rate}bps.\r\n\r\n")
            return ok
        if name == "senddata":
            s["senddata"] = value[:MAX_PAYLOAD]
            if terminal:
                self._emit_text(f"\r\n  send data is {s['senddata']}\r\n\r\n")
            return True
        parsed: int | None
        if name == "sf":
            n = _fw_dec(value, 2, 0xFF, 8)
            parsed = n if 7 <= n <= 12 else None
        elif name == "channel":
            n = _fw_dec(value, 2, 0, 8)
            parsed = n if 0 < n <= MAX_CHANNEL[int(s["bw"])] else None
        elif name == "retry":
            n = _fw_dec(value, 2, 0xFF, 8)
            parsed = n if n <= 10 else None
        elif name == "sleeptime":
            n = _fw_dec(value, 6, 0, 32)
            parsed = n if 0 < n <= 864000 else None
        elif name == "sendtime":
            n = _fw_dec(value, 5, 0xFFFFFFFF, 32)
            parsed = n if n <= 86400 else None
        elif name == "power":
            n = _fw_power(value)
            parsed = n if -4 <= n <= 13 else None
        elif name in ("panid", "ownid", "dstid"):
            h = _fw_hex4(value)
            invalid = {"panid": (0x0000, 0xFFFF), "ownid": (0xFFFF,), "dstid": ()}[name]
            parsed = h if h is not None and h not in invalid else None
        else:  # pragma: no cover - the command table and this dispatch are kept in step
            raise AssertionError(name)
        if parsed is not None:
            s[name] = parsed
        if terminal:
            good, bad = _VALUE_RESULTS[name]
            msg = good.format(parsed) if parsed is not None else bad
            tail = ""
            if name == "sf":
                tail = f"  Effective Bitrate is {_effective_bitrate(int(s['bw']), int(s['sf']))}bps."
            self._emit_text(f"\r\n  {msg}{tail}\r\n\r\n")
        return parsed is not None

    def _save(self) -> bytes:
        if self.flash_error in (3, 4):
            return f"NG 00{self.flash_error}\r\n".encode()
        self._write_flash()
        return b"OK\r\n"

    def _write_flash(self) -> None:
        block: dict[str, int | str | None] = dict(self.settings)
        block["interface"] = self.interface
        self.flash = block

    def _load(self) -> None:
        # SettingDefaultValue resets every parameter (the interface choice is not one of them) and the UART
        # rate takes effect at once; the OK is produced before, at the old rate.
        self.settings = dict(DEFAULT_SETTINGS)

    # -- operation mode ------------------------------------------------------------------------------------------
    def _enter_operation(self) -> None:
        self.mode = "operation"
        self._op_buf.clear()
        self._bin.clear()
        self._sending = False
        if self.interface == "terminal":
            self._emit(OPERATION_BANNER)
        elif self.interface == "processor":
            self._emit(b"\r\n")
        self._cond.notify_all()

    def _operation_line(self, raw: bytes) -> None:
        data = raw.split(b"\0", 1)[0]  # strcmp/strlen/strcpy: the data ends at the first NUL
        if data == b"config":
            self._config_requested()
        elif data:  # "ignore only enter key"
            self._send(data)

    def _config_requested(self) -> None:
        self.commands.append("config")
        # usr_tasks.c writes the whole parameter block with Operation = CONFIG; no reply is printed.
        self.settings["operation"] = 1
        self._write_flash()
        if self.config_reply_ok:
            self._emit_status(0)

    def _binary_bytes(self, data: bytes) -> None:
        now = time.monotonic()
        for b in data:
            if self._bin and now - self._bin_last > self.uart_gap_timeout_s:
                self._bin.clear()  # UartCheckTimerCallBack: a stalled frame is discarded
            self._bin_last = now
            self._bin.append(b)
            idx = len(self._bin) - 1
            if idx == 0:
                continue  # the length byte
            if idx == 5 and bytes(self._bin) == b"config":
                # [U] the firmware also needs a stale NUL after it and keeps its index; we start afresh.
                self._bin.clear()
                self._config_requested()
            elif idx == self._bin[0]:
                payload = bytes(self._bin[1:])
                self._bin.clear()
                self._send(payload)
            elif len(self._bin) >= BUFFER_SIZE:
                self._bin.clear()

    def _send(self, data: bytes) -> None:
        s = self.settings
        n = len(data)
        frame_mode = int(s["transmode"]) == 2
        terminal = self.interface == "terminal"
        if (not frame_mode and n > MAX_PAYLOAD) or (frame_mode and n > MAX_PAYLOAD + FRAME_HEAD):
            self._emit_status(100, terminal_text="send data length too long\r\n")
            return
        if frame_mode and n <= FRAME_HEAD:
            self._emit_status(100, terminal_text="send data length too short\r\n")
            return
        if self._sending:
            if terminal:
                self._emit_text("send failed bacause now sending packet\r\n")
            self._emit_status(101, terminal_text="send data failed\r\n")
            return
        if frame_mode:
            pan, dst, payload = _lenient_hex(data[:4]), _lenient_hex(data[4:8]), data[FRAME_HEAD:]
        else:
            pan, dst, payload = int(s["panid"]), int(s["dstid"]), data
        src = int(s["ownid"])
        if terminal:
            self._emit_text(f"<-- send data info[panid = {pan:04X}, srcid = {src:04X}, dstid = {dst:04X}, "
                            f"length = {len(payload) & 0xFF:02X}]\r\n")
        ack_wait = int(s["ack"]) == 1 and dst != BROADCAST  # [U] no ACK is awaited for a broadcast
        code = self._draw_send_result(ack_wait=ack_wait)
        if code == 101:
            self._emit_status(101, terminal_text="send data failed\r\n")
            return
        if code == 102:
            self._emit_status(102, terminal_text="carrier sense failed\r\n")
            return
        if code != 104:
            self.transmitted.append(payload)
            self.sent_frames.append(SentFrame(pan=pan, src=src, dst=dst, payload=payload))
        sf, bw_khz = int(s["sf"]), BW_KHZ[int(s["bw"])]
        data_t = time_on_air_s(len(payload), sf=sf, bw_khz=bw_khz)
        ack_t = _ack_time_s(sf=sf, bw_khz=bw_khz) if ack_wait else 0.0
        if code == 103:
            duration = (data_t + ack_t) * (int(s["retry"]) + 1)
        elif code == 104:
            duration = data_t
        else:
            duration = data_t + ack_t
        self._sending = True
        self._schedule(duration * self.airtime_scale, lambda: self._send_done(code))
        self._cond.notify_all()

    def _draw_send_result(self, *, ack_wait: bool) -> int:
        if self._forced_results:
            return self._forced_results.popleft()
        f, r = self.send_faults, self.rng
        if f.send_fail_probability and r.random() < f.send_fail_probability:
            return 101
        if f.carrier_busy_probability and r.random() < f.carrier_busy_probability:
            return 102
        if ack_wait and f.ack_timeout_probability and r.random() < f.ack_timeout_probability:
            return 103
        if f.cca_fail_probability and r.random() < f.cca_fail_probability:
            return 104
        return 0

    def _send_done(self, code: int) -> None:
        self._sending = False
        self._emit_status(code, terminal_text={103: "Ack Timeout\r\n", 104: "Send Failed\r\n"}.get(code, ""))
        self._cond.notify_all()

    def _emit_status(self, code: int, *, terminal_text: str = "") -> None:
        """A send result: ``OK``/``NG 1xx`` (ASCII: with CR LF; binary: length-prefixed, no CR LF)."""
        if self.interface == "terminal":
            if terminal_text:
                self._emit_text(terminal_text)
            return
        word = b"OK" if code == 0 else f"NG {code}".encode()
        if int(self.settings["format"]) == 2:
            self._emit(bytes([len(word)]) + word, terminator=b"")
        else:
            self._emit(word + b"\r\n")

    def _deliver(self, payload: bytes, *, rssi: int, src: int, pan: int, dst: int) -> None:
        s = self.settings
        rssi_on, rcvid_on = int(s["rssi"]) == 1, int(s["rcvid"]) == 1
        if self.interface == "terminal":
            text = (f"--> receive data info[panid = {pan:04X}, srcid = {src:04X}, dstid = {dst:04X}, "
                    f"length = {len(payload) & 0xFF:02X}]\r\n")
            if rssi_on:
                text += f"RSSI({rssi}dBm):"
            if rcvid_on:
                text += f"PAN ID({pan:04X}):Src ID({src:04X}):"
            self._emit(text.encode("latin-1") + b"Receive Data(" + payload + b")\r\n")
            return
        head = b""
        if rssi_on:
            head += f"{rssi & 0xFFFF:04X}".encode()
        if rcvid_on:
            head += f"{pan:04X}{src:04X}".encode()
        if int(s["format"]) == 2:
            body = head + payload
            self._emit(bytes([len(body)]) + body, terminator=b"")
        else:
            self._emit(head + payload + b"\r\n")

    # -- output --------------------------------------------------------------------------------------------------
    def _module_baud(self) -> int:
        return BAUDS.get(int(self.settings.get("baudrate", 5)), 115200)

    def _emit(self, data: bytes, *, raw: bool = False, terminator: bytes = b"\r\n", baud: int | None = None) -> None:
        """Queue bytes for the host (caller holds the lock); the writer thread keeps the order.

        Args:
            data: the bytes.
            raw: noise or garbage: no line faults, no baud garbling.
            terminator: the line terminator, for the truncation fault (b"" for binary frames).
            baud: the UART rate the bytes go out at, in bit/s; None means the current one.
        """
        if not data:
            return
        self._out_pending += 1
        self._outq.put(_OutItem(data=data, raw=raw, terminator=terminator,
                                baud=self._module_baud() if baud is None else baud))

    def _emit_text(self, text: str) -> None:
        self._emit(text.encode("latin-1"))

    def _drain_output(self) -> None:
        # A reset or power loss cuts whatever the UART had not sent yet.
        while True:
            try:
                item = self._outq.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._outq.put(None)  # keep the stop signal
                return
            self._out_pending -= 1

    def _writer_loop(self) -> None:
        while True:
            item = self._outq.get()
            if item is None:
                return
            try:
                self._write(item)
            except Exception:  # thread top level: log, keep serving
                log.exception("%s: writing to the host failed", self.name)
            finally:
                with self._cond:
                    self._out_pending -= 1
                    self._cond.notify_all()

    def _write(self, item: _OutItem) -> None:
        self.faults.forward_to(self.port.faults)
        chunks = [item.data] if item.raw else self.faults.apply(item.data, terminator=item.terminator)
        host = self.port.host_baudrate()
        for chunk in chunks:
            if not item.raw and host is not None and not bauds_match(item.baud, host):
                chunk = baud_garble(chunk, item.baud, host)
            self.port.write(chunk)

    # -- timers --------------------------------------------------------------------------------------------------
    def _schedule(self, delay_s: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` under the lock after ``delay_s`` seconds, unless a power event happens first."""
        heapq.heappush(self._timers, (time.monotonic() + max(0.0, delay_s), next(self._timer_seq),
                                      self._generation, fn))
        self._cond.notify_all()

    def _timer_loop(self) -> None:
        with self._cond:
            while not self._stopping:
                if not self._timers:
                    self._cond.wait()
                    continue
                due, _, generation, fn = self._timers[0]
                now = time.monotonic()
                if due > now:
                    self._cond.wait(due - now)
                    continue
                heapq.heappop(self._timers)
                if generation != self._generation:
                    continue
                try:
                    fn()
                except Exception:  # thread top level: log, keep the clock running
                    log.exception("%s: timer action failed", self.name)
                self._cond.notify_all()


def air_payload(frame: bytes, settings: Any) -> bytes:
    """What a node puts on the air to deliver ``frame`` to a gateway with these settings (its ``es920`` section):
    upper-case hex text with ``format: ascii`` and ``payload_encoding: hex``, else the bytes themselves (the binary
    format carries any byte); also what :attr:`SimEs920lr.transmitted` records for a frame the gateway sends."""
    as_hex = getattr(settings, "format", "binary") == "ascii" and getattr(settings, "payload_encoding", "hex") == "hex"
    return frame.hex().upper().encode() if as_hex else frame


#: The twin of drivers.es920lr (scenario files: ``model: es920lr``); its ``profile:`` keys are its keyword arguments.
Simulator = SimEs920lr
