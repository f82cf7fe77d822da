"""RAK3172 (RUI3, LoRa P2P) driver and the RadioWorker around it, against fakes.

Three levels:
- the parser alone: bytes in through ``feed``, uplinks and incidents out (``RecordingLink``);
- configuration and transmit against ``FakeRak``, a scripted module answering each command line the way
  docs/protocols.md §1 describes, behind ``ScriptLink`` (no threads, no port);
- the RadioWorker thread on ``FakePort`` (a thread-safe fake pyserial port carrying ``FakeRak``), for open/
  reopen/backoff/stop/transmit behaviour.
"""

from __future__ import annotations

import collections
import random
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
import serial

from drivers import registry
from drivers.errors import ModuleError, ModuleTimeout
from drivers.radio import ModuleDriver, ModuleRebooted, RadioWorker, backoff_delay
from drivers.rak3172 import STATUSES, Rak3172, parse_p2p
from drivers.transport import PortError
from drivers.types import Uplink
from tests.support import driver_link
from tests.support.driver_link import RecordingLink
from tests.support.radio import radio_config

# -- config: the radio as the config loader makes it ---------------------------------------------------------------


def lora0(**p2p: Any) -> Any:
    """The radio ``lora0`` on a RAK3172 (a RadioConfig); ``p2p``: its ``p2p:`` settings other than the defaults."""
    return radio_config("lora0", "rak3172", port="fake://lora0", p2p=p2p)


BW_CODE = {125: 0, 250: 1, 500: 2}


# -- fakes ---------------------------------------------------------------------------------------------------


class FakeRak:
    """A scripted RUI3 module: ``handle(command)`` returns the chunks the module would send back.

    ``overrides`` maps an upper-case command to a list of replies (each a list of chunks), consumed one per use,
    so a test can make exactly the n-th occurrence of a command fail.
    """

    def __init__(self, *, nwm: int = 0, bw_as_khz: bool = False) -> None:
        self.nwm = nwm
        self.rx = False
        self.p2p = "868000000:7:0:1:8:14"
        self.bw_as_khz = bw_as_khz
        self.overrides: dict[str, list[list[bytes]]] = collections.defaultdict(list)
        self.commands: list[str] = []
        self.deaf = 0  # ignore this many next commands (booting)
        self.nwm_glued = False  # AT+NWM=0: OK and the banner in one chunk

    def handle(self, command: str) -> list[bytes]:
        self.commands.append(command)
        if self.deaf:
            self.deaf -= 1
            return []
        key = command.upper()
        if self.overrides.get(key):
            return self.overrides[key].pop(0)
        ok = [b"OK\r\n"]
        if key == "AT":
            return ok
        if key == "AT+VER=?":
            return [b"AT+VER=4.0.6\r\n", b"OK\r\n"]
        if key == "AT+NWM=?":
            return [f"AT+NWM={self.nwm}\r\n".encode(), b"OK\r\n"]
        if key == "AT+NWM=0":
            if self.rx:
                return [b"P2P_RX_ON already, please disable P2P RX before setting.\r\n", b"AT_BUSY_ERROR\r\n"]
            self.nwm = 0
            self.rx = False
            if self.nwm_glued:
                return [b"OKCurrent Work Mode: LoRa P2P.\r\n"]
            # OK without CR LF, then the reboot; the boot banner arrives in a later chunk.
            return [b"OK", b"\xfc\xfc\xfcCurrent Work Mode: LoRa P2P.\r\n"]
        if key == "AT+PRECV=0":
            self.rx = False
            return ok
        if key.startswith("AT+P2P=") and key != "AT+P2P=?":
            if self.rx:
                return [b"P2P_RX_ON already\r\n", b"AT_BUSY_ERROR\r\n"]
            f, sf, bw, cr, pre, txp = key[len("AT+P2P="):].split(":")[:6]
            self.p2p = f"{f}:{sf}:{bw if self.bw_as_khz else BW_CODE[int(bw)]}:{cr}:{pre}:{txp}"
            return ok
        if key == "AT+P2P=?":
            return [f"AT+P2P={self.p2p}\r\n".encode(), b"OK\r\n"]
        if key == "AT+PRECV=65533":
            if self.rx:
                return [b"P2P_RX_ON already\r\n", b"AT_BUSY_ERROR\r\n"]
            self.rx = True
            return ok
        if key.startswith("AT+PSEND="):
            return [b"OK\r\n", b"+EVT:TXP2P DONE\r\n"]
        return [b"AT_COMMAND_NOT_FOUND\r\n"]


class ScriptLink(driver_link.ScriptLink):
    """Link whose writes go to a FakeRak; pump() feeds the module's answers to the driver, one chunk per call."""

    def __init__(self, module: FakeRak) -> None:
        super().__init__("lora0")
        self.module = module

    def write(self, data: bytes) -> None:
        super().write(data)
        for line in self.lines(data):
            self.inbox.extend(self.module.handle(line.decode()))


def fast(driver: Rak3172) -> Rak3172:
    """Shorten the driver's waits so timeouts in tests cost milliseconds."""
    driver.command_timeout_s = 0.1
    driver.sync_timeout_s = 0.05
    driver.boot_timeout_s = 0.3
    driver.busy_backoff_s = 0.001
    return driver


def make(module: FakeRak | None = None, config: Any = None) -> tuple[Rak3172, ScriptLink]:
    link = ScriptLink(module or FakeRak())
    driver = fast(Rak3172(config or lora0(), link))
    link.driver = driver
    return driver, link


def parser() -> tuple[Rak3172, RecordingLink]:
    link = RecordingLink()
    return Rak3172(lora0(), link), link


# -- parsing: RX events --------------------------------------------------------------------------------------


def test_rx_event_gives_uplink_with_signed_rssi_snr_and_decoded_payload():
    d, link = parser()
    d.feed(b"+EVT:RXP2P:-28:5:48656C6C6F2052616B33313732\r\n", 1_700_000_000_000_000)
    assert link.uplinks == [Uplink("lora0", b"Hello Rak3172", -28, 5.0, None, 1_700_000_000_000_000)]
    d.feed(b"+EVT:RXP2P:-120:-7:00\r\n", 2)
    assert link.uplinks[-1].rssi == -120 and link.uplinks[-1].snr == -7.0
    assert link.incidents == []


def test_all_uplinks_of_one_chunk_are_delivered_in_one_call():
    d, link = parser()
    d.feed(b"+EVT:RXP2P:-61:7:01\r\n+EVT:RXP2P:-62:6:02\r\n+EVT:RXP2P:-6", 5)
    assert [[u.payload for u in b] for b in link.deliveries] == [[b"\x01", b"\x02"]]
    d.feed(b"3:5:03\r\n", 6)
    assert link.deliveries[-1] == [Uplink("lora0", b"\x03", -63, 5.0, None, 6)]


def test_payload_is_taken_from_the_last_field():
    d, link = parser()
    d.feed(b"+EVT:RXP2P:-61:7:extra:A1B2\r\n", 1)
    assert link.uplinks[0].payload == b"\xa1\xb2"


@pytest.mark.parametrize("line", [b"+EVT:RXP2P:-61:7:ABC", b"+EVT:RXP2P:-61:7:GG", b"+EVT:RXP2P:-61:7:"])
def test_bad_hex_is_reported_not_delivered(line):
    d, link = parser()
    d.feed(line + b"\r\n", 1)
    assert link.uplinks == []
    assert link.kinds() == ["bad_hex"]


def test_rx_event_with_unparseable_rssi_is_garbled():
    d, link = parser()
    d.feed(b"+EVT:RXP2P:xx:7:AB\r\n+EVT:RXP2P:-61\r\n", 1)
    assert link.uplinks == []
    assert link.kinds() == ["garbled_line", "garbled_line"]


@pytest.mark.parametrize(("stream", "delivered", "kinds"), [
    # Older firmware: the header (RSSI, SNR) and the payload on two event lines.
    (b"+EVT:RXP2P, RSSI -60, SNR 11\r\n+EVT:AABBCCDD\r\n", (b"\xaa\xbb\xcc\xdd", -60, 11.0), []),
    # A legacy header whose payload line never came is garbled, and not reused for the next frame.
    (b"+EVT:RXP2P, RSSI -60, SNR 11\r\n+EVT:RXP2P:-50:3:0102\r\n", (b"\x01\x02", -50, 3.0), ["garbled_line"]),
    # A legacy payload line without its header is still delivered, without RSSI and SNR.
    (b"+EVT:0A0B\r\n", (b"\x0a\x0b", None, None), []),
    # An event cut short and glued to the next one: only the complete one is kept.
    (b"+EVT:RXP2P:-61:7:A1B2+EVT:RXP2P:-40:9:C3D4\r\n", (b"\xc3\xd4", -40, 9.0), ["garbled_line"]),
])
def test_one_frame_is_delivered_from_each_stream(stream, delivered, kinds):
    d, link = parser()
    d.feed(stream, 9)
    payload, rssi, snr = delivered
    assert link.uplinks == [Uplink("lora0", payload, rssi, snr, None, 9)]
    assert link.kinds() == kinds


@pytest.mark.parametrize(("line", "kind"), [
    (b"+EVT:RXP2P RECEIVE ERROR", "crc_error"),  # the module's CRC check failed: reported, nothing delivered
    (b"+EVT:SOMETHING ELSE", "garbled_line"),  # an event this firmware does not send
    (b"\xfc\xfc\xfc", "garbled_line"),  # noise only
])
def test_a_line_without_a_frame_is_one_incident_and_no_uplink(line, kind):
    d, link = parser()
    d.feed(line + b"\r\n", 1)
    assert link.kinds() == [kind]
    assert link.uplinks == []


# -- parsing: noise, truncation, overflow ----------------------------------------------------------------------


def test_noise_before_an_event_is_counted_and_the_event_kept():
    d, link = parser()
    d.feed(b"\x00\xff\xfc\xfc\xfc+EVT:RXP2P:-61:7:0102\r\n", 1)
    assert [u.payload for u in link.uplinks] == [b"\x01\x02"]
    assert link.kinds() == ["garbled_line"]
    assert "bytes before +EVT" in link.incidents[0][1]


def test_unparseable_line_is_garbled_with_a_short_repr():
    d, link = parser()
    d.feed(b"hello there\r\n", 1)
    assert link.incidents == [("garbled_line", "unparseable line: b'hello there'")]


def test_overlong_line_reports_line_overflow():
    d, link = parser()
    d.feed(b"\xfe" * 5000, 1)
    d.feed(b"\r\n+EVT:RXP2P:-61:7:01\r\n", 2)
    assert link.kinds() == ["line_overflow"]
    assert [u.payload for u in link.uplinks] == [b"\x01"]


def test_cr_alone_or_lf_alone_ends_a_line():
    d, link = parser()
    d.feed(b"+EVT:RXP2P:-1:1:01\r+EVT:RXP2P:-2:2:02\n", 1)
    assert [u.payload for u in link.uplinks] == [b"\x01", b"\x02"]


def test_boot_banner_while_running_is_a_module_reboot():
    d, link = parser()
    d.feed(b"\x00Current Work Mode: LoRa P2P.\r\n", 1)
    assert "module_reboot" in link.kinds()
    assert d.reboot_detected


def test_driver_feed_is_fast():
    d, link = parser()
    line = b"+EVT:RXP2P:-61:7:" + b"A1" * 30 + b"\r\n"
    chunk = line * 60
    t0 = time.perf_counter()
    for _ in range(500):
        d.feed(chunk, 1)
    rate = 30_000 / (time.perf_counter() - t0)
    print(f"\nRak3172.feed: {rate:,.0f} RX lines/s")
    assert len(link.uplinks) == 30_000
    assert rate >= 20_000


# -- parse_p2p -----------------------------------------------------------------------------------------------


def test_parse_p2p_accepts_bw_code_and_khz():
    assert parse_p2p("920600000:10:0:0:8:13") == (920600000, 10, 125.0, 0, 8, 13)
    assert parse_p2p("920600000:10:125:0:8:13") == (920600000, 10, 125.0, 0, 8, 13)
    assert parse_p2p("920600000:7:2:1:12:22") == (920600000, 7, 500.0, 1, 12, 22)
    assert parse_p2p("920600000:7:9:1:12:22")[2] == 62.5
    with pytest.raises(ValueError):
        parse_p2p("920600000:7:77:1:12:22")
    with pytest.raises(ValueError):
        parse_p2p("920600000:7")


# -- configuration ---------------------------------------------------------------------------------------------


def test_configure_sends_the_documented_sequence_and_verifies():
    d, link = make()
    d.configure()
    assert link.module.commands == [
        "AT", "AT+VER=?", "AT+NWM=?", "AT+PRECV=0", "AT+P2P=920600000:10:125:0:8:13", "AT+P2P=?",
        "AT+PRECV=65533",
    ]
    assert link.module.rx
    assert d.module_info["firmware"] == "4.0.6"
    assert d.module_info["mode"] == "LoRa P2P"
    assert link.incidents == []


def test_configure_accepts_bw_reported_in_khz():
    d, link = make(FakeRak(bw_as_khz=True), lora0(bandwidth_khz=250, spreading_factor=7))
    d.configure()
    assert link.module.p2p == "920600000:7:250:0:8:13"


def test_configure_switches_lorawan_module_to_p2p_through_its_reboot():
    d, link = make(FakeRak(nwm=1))
    d.configure()
    cmds = link.module.commands
    assert cmds[:5] == ["AT", "AT+VER=?", "AT+NWM=?", "AT+NWM=0", "AT"]
    assert cmds[5] == "AT+NWM=?"
    assert link.module.nwm == 0 and link.module.rx
    # The reboot we caused is not an incident; the noise glued to its banner is garbage on the line.
    assert "module_reboot" not in link.kinds()
    assert set(link.kinds()) <= {"garbled_line"}


def test_ok_glued_to_boot_line_in_one_chunk():
    module = FakeRak(nwm=1)
    module.nwm_glued = True
    d, link = make(module)
    d.configure()
    assert link.incidents == []


def test_events_between_command_and_status_are_delivered_not_taken_as_answers():
    module = FakeRak()
    module.overrides["AT+P2P=?"].append([b"+EVT:RXP2P:-70:3:0102\r\n", b"AT+P2P=920600000:10:0:0:8:13\r\n",
                                         b"+EVT:RXP2P RECEIVE ERROR\r\n", b"OK\r\n"])
    d, link = make(module)
    d.configure()
    assert [u.payload for u in link.uplinks] == [b"\x01\x02"]
    assert link.kinds() == ["crc_error"]


def test_busy_with_rx_on_stops_rx_and_retries():
    module = FakeRak()
    module.overrides["AT+P2P=920600000:10:125:0:8:13"].append([b"P2P_RX_ON already\r\n", b"AT_BUSY_ERROR\r\n"])
    d, link = make(module)
    d.configure()
    cmds = module.commands
    i = cmds.index("AT+P2P=920600000:10:125:0:8:13")
    assert cmds[i + 1:i + 3] == ["AT+PRECV=0", "AT+P2P=920600000:10:125:0:8:13"]
    assert link.incidents == [("module_error", "AT+P2P=920600000:10:125:0:8:13 -> AT_BUSY_ERROR (P2P_RX_ON already)")]


def test_plain_busy_is_retried_after_a_backoff():
    module = FakeRak()
    module.overrides["AT+PRECV=0"].append([b"AT_BUSY_ERROR\r\n"])
    d, link = make(module)
    d.configure()
    assert module.commands.count("AT+PRECV=0") == 2
    assert link.kinds() == ["module_error"]


def test_busy_forever_gives_up_with_module_error():
    module = FakeRak()
    module.overrides["AT+PRECV=0"].extend([[b"AT_BUSY_ERROR\r\n"]] * 10)
    d, link = make(module)
    with pytest.raises(ModuleError) as info:
        d.configure()
    assert (info.value.command, info.value.status) == ("AT+PRECV=0", "AT_BUSY_ERROR")
    assert module.commands.count("AT+PRECV=0") == d.busy_retries + 1


@pytest.mark.parametrize("status", sorted(STATUSES - {"OK", "AT_BUSY_ERROR"}))
def test_every_error_status_raises_module_error_and_is_reported(status):
    module = FakeRak()
    module.overrides["AT+P2P=920600000:10:125:0:8:13"].append([status.encode() + b"\r\n"])
    d, link = make(module)
    with pytest.raises(ModuleError) as info:
        d.configure()
    assert info.value.status == status
    assert info.value.command == "AT+P2P=920600000:10:125:0:8:13"
    assert link.incidents == [("module_error", f"AT+P2P=920600000:10:125:0:8:13 -> {status}")]


def test_older_at_error_with_command_not_found_line():
    module = FakeRak()
    module.overrides["AT+VER=?"].append([b"AT_ERROR\r\n", b"\r\nAT+VER: Command not found!!\r\n"])
    d, link = make(module)
    with pytest.raises(ModuleError) as info:
        d.configure()
    assert info.value.status == "AT_ERROR"
    link.pump(0)  # the trailing explanation line is consumed quietly
    assert "garbled_line" not in link.kinds()


def test_p2p_verification_mismatch_is_a_module_error():
    module = FakeRak()
    module.overrides["AT+P2P=?"].append([b"AT+P2P=920600000:12:0:0:8:13\r\n", b"OK\r\n"])
    d, link = make(module)
    with pytest.raises(ModuleError, match="wanted"):
        d.configure()
    assert link.kinds() == ["module_error"]


def test_no_status_is_a_module_timeout():
    module = FakeRak()
    module.overrides["AT+P2P=?"].append([])
    d, link = make(module)
    with pytest.raises(ModuleTimeout):
        d.configure()
    assert link.kinds() == ["module_timeout"]


def test_sync_rides_out_a_booting_module_and_its_noise():
    module = FakeRak()
    module.deaf = 3  # still booting: three ATs go unanswered
    module.overrides["AT"].append([b"\x00\xff", b"Current Work Mode: LoRa P2P.\r\n", b"OK\r\n"])
    d, link = make(module)
    d.configure()
    assert module.commands[:5] == ["AT", "AT", "AT", "AT", "AT+VER=?"]
    assert "module_reboot" not in link.kinds()


def test_silent_module_is_a_module_timeout_after_all_sync_attempts():
    module = FakeRak()
    module.deaf = 1000
    d, link = make(module)
    with pytest.raises(ModuleTimeout):
        d.configure()
    assert module.commands == ["AT"] * d.sync_attempts
    assert link.kinds() == ["module_timeout"]


def test_reboot_during_configuration_restarts_it():
    module = FakeRak()
    # The module resets right after accepting the P2P settings: banner instead of the value of AT+P2P=?.
    module.overrides["AT+P2P=?"].append([b"Current Work Mode: LoRa P2P.\r\n"])
    d, link = make(module)
    d.configure()
    assert link.kinds() == ["module_reboot"]
    assert module.commands.count("AT+VER=?") == 2  # started over from sync
    assert module.rx


def test_module_that_keeps_rebooting_during_configuration_is_a_module_error_after_three_attempts():
    module = FakeRak()
    for _ in range(5):
        module.overrides["AT+P2P=?"].append([b"Current Work Mode: LoRa P2P.\r\n"])
    d, link = make(module)
    with pytest.raises(ModuleError, match="kept rebooting"):
        d.configure()
    assert d.configure_attempts == 3
    assert module.commands.count("AT+VER=?") == 3
    assert link.kinds() == ["module_reboot"] * 3 + ["module_error"]
    assert not d.configuring and not d.reboot_detected
    # The mechanism is reset: the next configuration starts clean and succeeds once the module behaves.
    module.overrides["AT+P2P=?"].clear()
    before = len(link.incidents)
    d.configure()
    assert module.rx and len(link.incidents) == before


class _Flaky(ModuleDriver):
    """A driver whose module reboots during the first ``reboots`` configuration attempts."""

    def __init__(self, reboots: int) -> None:
        super().__init__(lora0(), RecordingLink())
        self.reboots = reboots
        self.attempts = 0
        self.commands: list[str] = []

    def configure_once(self) -> None:
        self.attempts += 1
        self.check_not_rebooted("first")
        self.commands.append("first")
        if self.attempts <= self.reboots:
            self.module_rebooted()  # as feed() does when it sees the boot output
        self.check_not_rebooted("second")
        self.commands.append("second")

    def feed(self, chunk: bytes, received_us: int) -> None:
        pass


@pytest.mark.parametrize("reboots", [0, 1, 2])
def test_shared_configure_starts_over_after_a_reboot(reboots: int):
    d = _Flaky(reboots)
    d.configure()
    assert d.attempts == reboots + 1
    assert d.commands == ["first"] * reboots + ["first", "second"]
    assert not d.configuring and not d.reboot_detected
    assert d.link.kinds() == []  # the driver reports module_reboot itself; configure adds nothing when it succeeds


def test_shared_configure_gives_up_after_configure_attempts():
    d = _Flaky(10)
    d.configure_attempts = 2  # type: ignore[misc]
    with pytest.raises(ModuleError, match="kept rebooting") as info:
        d.configure()
    assert not isinstance(info.value, ModuleRebooted)  # never leaves configure()
    assert d.attempts == 2 and d.link.kinds() == ["module_error"]


def test_a_reboot_outside_configuration_asks_the_worker_to_configure_again():
    d = _Flaky(0)
    d.module_rebooted()
    assert d.reboot_detected
    d.check_not_rebooted("AT")  # only a reboot during a configuration attempt stops commands
    d.configure()
    assert not d.reboot_detected


def test_echo_is_ignored():
    module = FakeRak()
    module.overrides["AT+VER=?"].append([b"\n\rAT+VER=?\r\n", b"\n\rAT+VER=4.1.0\r\n", b"\n\rOK\r\n"])
    d, link = make(module)
    d.configure()
    assert d.module_info["firmware"] == "4.1.0"
    assert link.incidents == []


def test_receive_timeout_event_rearms_rx_in_service():
    d, link = make()
    d.configure()
    link.module.rx = False  # a firmware that treats 65533 as a timed window has stopped listening
    d.feed(b"+EVT:RXP2P RECEIVE TIMEOUT\r\n", 1)
    d.service()
    assert link.module.commands[-1] == "AT+PRECV=65533"
    assert link.module.rx


# -- transmit --------------------------------------------------------------------------------------------------


def test_transmit_sends_upper_hex_and_waits_for_tx_done():
    d, link = make()
    d.configure()
    d.transmit(b"\xa1\xb2\xc3", timeout=1.0)
    assert link.module.commands[-1] == "AT+PSEND=A1B2C3"


def test_transmit_without_tx_done_times_out():
    module = FakeRak()
    module.overrides["AT+PSEND=01"].append([b"OK\r\n"])
    d, link = make(module)
    d.configure()
    with pytest.raises(ModuleTimeout):
        d.transmit(b"\x01", timeout=0.1)
    assert link.kinds() == ["module_timeout"]


def test_transmit_busy_is_retried():
    module = FakeRak()
    module.overrides["AT+PSEND=01"].append([b"AT_BUSY_ERROR\r\n"])
    d, link = make(module)
    d.configure()
    d.transmit(b"\x01", timeout=1.0)
    assert module.commands.count("AT+PSEND=01") == 2


@pytest.mark.parametrize("payload", [b"", bytes(240)])
def test_transmit_refuses_empty_or_too_long_payload(payload):
    d, _ = make()
    with pytest.raises(ValueError):
        d.transmit(payload, timeout=1.0)


# -- RadioWorker on a fake port ----------------------------------------------------------------------------------


class FakePort:
    """Thread-safe stand-in for a pyserial port with a FakeRak behind it."""

    def __init__(self, module: FakeRak, *, cancellable: bool = True) -> None:
        self.module = module
        self._cond = threading.Condition()
        self._data = bytearray()
        self._cancelled = False
        self._partial = b""
        self.timeout: float | None = None
        self.is_open = True
        self.reads = 0
        self.fail: Exception | None = None
        if not cancellable:
            self.cancel_read = None  # type: ignore[assignment]

    def push(self, data: bytes) -> None:
        with self._cond:
            self._data += data
            self._cond.notify_all()

    @property
    def in_waiting(self) -> int:
        with self._cond:
            if self.fail:
                raise self.fail
            return len(self._data)

    def read(self, size: int = 1) -> bytes:
        with self._cond:
            self.reads += 1
            end = None if self.timeout is None else time.monotonic() + self.timeout
            while not self._data and not self._cancelled and self.fail is None:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            if self.fail is not None:
                raise self.fail
            self._cancelled = False
            out = bytes(self._data[:size])
            del self._data[:size]
            return out

    def write(self, data: bytes) -> int:
        if self.fail is not None:
            raise self.fail
        buf = self._partial + data
        *lines, self._partial = buf.split(b"\r\n")
        for line in lines:
            for chunk in self.module.handle(line.decode()):
                self.push(chunk)
        return len(data)

    def cancel_read(self) -> None:
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def break_(self, exc: Exception) -> None:
        with self._cond:
            self.fail = exc
            self._cond.notify_all()

    def close(self) -> None:
        self.is_open = False


class Events:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.uplinks: list[Uplink] = []
        self.incidents: list[tuple[str, str, str]] = []

    def on_uplinks(self, uplinks: list[Uplink]) -> None:
        with self.lock:
            self.uplinks.extend(uplinks)

    def on_incident(self, radio: str, kind: str, detail: str) -> None:
        with self.lock:
            self.incidents.append((radio, kind, detail))

    def count(self, kind: str) -> int:
        with self.lock:
            return sum(1 for _, k, _ in self.incidents if k == kind)


def wait_for(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


class Opener:
    """Hands out FakePorts; can fail a number of times first."""

    def __init__(self, *, failures: int = 0, cancellable: bool = True) -> None:
        self.failures = failures
        self.cancellable = cancellable
        self.ports: list[FakePort] = []
        self.calls = 0
        self.module = FakeRak()

    def __call__(self, url: str, *, baudrate: int, timeout: float | None) -> FakePort:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise PortError(url, "cannot open: [Errno 2] No such file or directory")
        port = FakePort(self.module, cancellable=self.cancellable)
        self.ports.append(port)
        return port


@pytest.fixture
def fast_rak(monkeypatch):
    monkeypatch.setattr(Rak3172, "command_timeout_s", 0.2)
    monkeypatch.setattr(Rak3172, "sync_timeout_s", 0.05)
    monkeypatch.setattr(Rak3172, "busy_backoff_s", 0.001)


def start_worker(opener: Opener, events: Events, **kw) -> RadioWorker:
    kw.setdefault("reopen_min_s", 0.01)
    kw.setdefault("reopen_max_s", 0.05)
    w = RadioWorker(lora0(), events, opener=opener, **kw)
    w.start()
    return w


def test_worker_configures_receives_and_stops_promptly(fast_rak):
    opener, events = Opener(), Events()
    w = start_worker(opener, events)
    try:
        wait_for(lambda: w.state == "running")
        assert events.count("configured") == 1
        assert "firmware=4.0.6" in next(d for _, k, d in events.incidents if k == "configured")
        assert w.module_info["firmware"] == "4.0.6"
        before = time.time_ns() // 1000
        opener.ports[0].push(b"+EVT:RXP2P:-61:7:CAFE\r\n")
        wait_for(lambda: events.uplinks)
        u = events.uplinks[0]
        assert (u.radio, u.payload, u.rssi, u.snr) == ("lora0", b"\xca\xfe", -61, 7.0)
        assert before <= u.received_us <= time.time_ns() // 1000
    finally:
        t0 = time.monotonic()
        w.stop()
    # The idle read timeout is 10 s: only cancel_read() can make stop() this quick.
    assert time.monotonic() - t0 < 1.0
    assert w.state == "stopped" and not w.alive
    assert not opener.ports[0].is_open


def test_idle_worker_does_not_poll(fast_rak):
    opener, events = Opener(), Events()
    w = start_worker(opener, events)
    try:
        wait_for(lambda: w.state == "running")
        port = opener.ports[0]
        reads = port.reads
        time.sleep(1.0)
        assert port.reads - reads <= 1
        assert port.timeout >= 2.0
    finally:
        w.stop()


def test_port_without_cancel_read_uses_a_two_second_idle_timeout(fast_rak):
    opener, events = Opener(cancellable=False), Events()
    w = start_worker(opener, events)
    try:
        wait_for(lambda: w.state == "running")
        wait_for(lambda: opener.ports[0].timeout == 2.0)
    finally:
        w.stop()


def test_port_lost_then_reopened_and_receiving_again(fast_rak):
    opener, events = Opener(), Events()
    w = start_worker(opener, events)
    try:
        wait_for(lambda: w.state == "running")
        opener.ports[0].break_(serial.SerialException("read failed: [Errno 5] Input/output error"))
        wait_for(lambda: events.count("reopen") == 1)
        wait_for(lambda: w.state == "running")
        assert events.count("port_lost") == 1
        assert w.reopens == 1
        assert events.count("configured") == 2
        opener.ports[1].push(b"+EVT:RXP2P:-50:2:01\r\n")
        wait_for(lambda: events.uplinks)
        assert not opener.ports[0].is_open
    finally:
        w.stop()


def test_open_failures_back_off_exponentially_and_are_not_reopens(fast_rak):
    delays: list[float] = []
    opener, events = Opener(failures=4), Events()
    w = RadioWorker(lora0(), events, opener=opener, reopen_min_s=1.0, reopen_max_s=4.0,
                    rng=random.Random(1), wait=lambda s: delays.append(s) or False)
    w.start()
    try:
        wait_for(lambda: w.state == "running")
        assert events.count("port_open_failed") == 4
        assert events.count("reopen") == 0 and w.reopens == 0
        # Ceilings 1, 2, 4, 4 s with jitter in [ceiling/2, ceiling], never below the minimum.
        assert len(delays) == 4
        for delay, ceiling in zip(delays, [1.0, 2.0, 4.0, 4.0], strict=True):
            assert max(1.0, ceiling / 2) <= delay <= ceiling
    finally:
        w.stop()


def test_backoff_delay_bounds():
    rng = random.Random(7)
    for failures in range(1, 40):
        ceiling = min(30.0, 0.5 * 2 ** (failures - 1))
        for _ in range(20):
            d = backoff_delay(failures, 0.5, 30.0, rng)
            assert max(0.5, ceiling / 2) <= d <= ceiling
    assert backoff_delay(1, 0.5, 30.0, rng) == 0.5
    assert backoff_delay(10_000, 0.5, 30.0, rng) <= 30.0


def test_module_error_during_configure_is_retried_after_backoff(fast_rak):
    opener, events = Opener(), Events()
    opener.module.overrides["AT+P2P=?"].append([b"AT_ERROR\r\n"])
    w = start_worker(opener, events)
    try:
        wait_for(lambda: w.state == "running")
        assert events.count("module_error") == 1
        assert events.count("configured") == 1
        assert len(opener.ports) == 1  # a module error is not a port problem: no reopen
    finally:
        w.stop()


def test_module_reboot_while_running_reconfigures(fast_rak):
    opener, events = Opener(), Events()
    w = start_worker(opener, events)
    try:
        wait_for(lambda: w.state == "running")
        opener.module.rx = False
        opener.ports[0].push(b"\xfc\xfc\xfcCurrent Work Mode: LoRa P2P.\r\n")
        wait_for(lambda: events.count("configured") == 2)
        assert events.count("module_reboot") == 1
        wait_for(lambda: w.state == "running")
        assert opener.module.rx
    finally:
        w.stop()


def test_transmit_through_the_worker(fast_rak):
    opener, events = Opener(), Events()
    w = start_worker(opener, events)
    try:
        wait_for(lambda: w.state == "running")
        w.transmit(b"\x7f\x01", timeout=2.0)
        assert opener.module.commands[-1] == "AT+PSEND=7F01"
        opener.module.overrides["AT+PSEND=02"].append([b"AT_PARAM_ERROR\r\n"])
        with pytest.raises(ModuleError):
            w.transmit(b"\x02", timeout=2.0)
        with pytest.raises(ValueError):
            w.transmit(b"", timeout=2.0)
        assert w.state == "running"
    finally:
        w.stop()


def test_transmit_while_port_missing_times_out_and_is_never_sent(fast_rak):
    opener, events = Opener(failures=10_000), Events()
    w = start_worker(opener, events)
    try:
        with pytest.raises(ModuleTimeout, match="not running"):
            w.transmit(b"\x01", timeout=0.2)
    finally:
        w.stop()
    with pytest.raises(ModuleError):
        w.transmit(b"\x01", timeout=0.2)


def test_failing_uplink_handler_is_reported_and_radio_keeps_listening(fast_rak):
    class Boom(Events):
        def on_uplinks(self, uplinks):
            super().on_uplinks(uplinks)
            if len(self.uplinks) == 1:
                raise RuntimeError("journal full")

    opener, events = Opener(), Boom()
    w = start_worker(opener, events)
    try:
        wait_for(lambda: w.state == "running")
        opener.ports[0].push(b"+EVT:RXP2P:-50:2:01\r\n")
        wait_for(lambda: events.count("internal_error") == 1)
        opener.ports[0].push(b"+EVT:RXP2P:-50:2:02\r\n")
        wait_for(lambda: len(events.uplinks) == 2)
        assert w.state == "running"
    finally:
        w.stop()


@pytest.fixture
def broken_driver():
    class Broken(ModuleDriver):
        calls = 0

        def configure(self) -> None:
            Broken.calls += 1
            if Broken.calls == 1:
                raise KeyError("bug in configure")

        def feed(self, chunk: bytes, received_us: int) -> None:
            pass

    registry.register(registry.DriverSpec(name="test_broken", driver=Broken, section=None, settings=None, probe=None,
                                          twin="test_broken", summary="a driver whose configure fails once"))
    yield Broken
    registry.unregister("test_broken")


def test_unexpected_exception_is_reported_and_the_thread_carries_on(broken_driver):
    opener, events = Opener(), Events()
    radio = radio_config("lora0", "test_broken", port="fake://lora0")
    w = RadioWorker(radio, events, opener=opener, reopen_min_s=0.01, reopen_max_s=0.02)
    w.start()
    try:
        wait_for(lambda: w.state == "running")
        assert events.count("internal_error") == 1
        assert broken_driver.calls == 2
        assert w.alive
    finally:
        w.stop()


def test_unknown_driver_name_lists_known_ones():
    unknown = lora0().model_copy(update={"driver": "sx1262"})  # model_copy skips the check the loader would make
    assert {"rak3172", "es920lr"} <= set(registry.names())
    with pytest.raises(ValueError, match=f"known: {', '.join(registry.names())}$"):
        RadioWorker(unknown, Events())


def test_registry_loads_only_the_driver_looked_up():
    # A fresh interpreter: this one has loaded every driver already.
    code = ("import sys; from drivers import registry; "
            "loaded = lambda: sorted(m for m in ('drivers.rak3172', 'drivers.es920lr', 'drivers.modbus', "
            "'drivers.meshtastic') if m in sys.modules); "
            "print(registry.names(), registry.section('modbus'), loaded()); "
            "registry.spec('es920lr'); print(loaded()); "
            "registry.specs(); print(loaded())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.splitlines() == [
        "('es920lr', 'meshtastic', 'modbus', 'rak3172') modbus []",
        "['drivers.es920lr']",
        "['drivers.es920lr', 'drivers.meshtastic', 'drivers.modbus', 'drivers.rak3172']",
    ]


def test_registry_refuses_a_listing_its_module_contradicts(monkeypatch):
    listing = registry.Listing("rak3172", "drivers.rak3172", "p2p", "RAK3172, RUI3 LoRa P2P")
    assert registry._load_listed(listing) is registry.spec("rak3172")
    wrong = registry.Listing("rak3172", "drivers.rak3172", "lora", "RAK3172, RUI3 LoRa P2P")
    monkeypatch.delitem(registry._drivers, "rak3172")
    with pytest.raises(ValueError, match="drivers.rak3172.SPEC says"):
        registry._load_listed(wrong)


def test_full_boot_banner_is_one_reboot_and_not_garbled():
    d, link = parser()
    d.feed(b"\xfc\xfcRAKwireless RAK3172-E Example\r\n" + b"-" * 54 + b"\r\nVersion: RUI_4.0.6_RAK3172-E\r\n"
           b"Current Work Mode: LoRa P2P.\r\n", 1)
    assert link.kinds() == ["garbled_line", "module_reboot"]  # the noise, then one reboot
    assert d.reboot_detected


def test_stop_interrupts_a_configuration_waiting_for_a_silent_module(monkeypatch):
    monkeypatch.setattr(Rak3172, "sync_timeout_s", 5.0)  # one AT would wait 5 s
    opener, events = Opener(), Events()
    opener.module.deaf = 1000
    w = start_worker(opener, events)
    wait_for(lambda: opener.module.commands)
    t0 = time.monotonic()
    w.stop()
    assert time.monotonic() - t0 < 1.0
    assert w.state == "stopped"
    assert events.count("internal_error") == 0
