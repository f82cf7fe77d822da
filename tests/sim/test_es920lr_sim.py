"""The simulated ES920LR, driven through a real pyserial port on its pty, byte for byte."""

from __future__ import annotations

import os
import pathlib
import random
import threading
import time
from collections.abc import Iterator

import pytest
import serial

from drivers.sim.es920lr import DEFAULT_SETTINGS, SentFrame, SimEs920lr, time_on_air_s

PROMPT = b"\r\nSelect Mode [1.terminal or 2.processor]\r\n"
ERASE_AND_PROMPT = b"\b" * 20 + b" " * 20 + b"\b" * 20 + b"LORA > "


# -- helpers ---------------------------------------------------------------------------------------------------------
def open_host(sim: SimEs920lr, *, timeout: float = 2.0) -> serial.Serial:
    """Open the port like the agent would, then pulse RESET so the boot prompt arrives on an open port.

    pyserial flushes the input when it opens, so whatever the module said before is gone; the prompt read here
    is the one the reset produced.
    """
    assert sim.wait_for(lambda: sim.mode in ("config", "operation") and sim.output_pending == 0)
    ser = serial.serial_for_url(sim.path, baudrate=115200, timeout=timeout)
    sim.reboot(noise=False)
    assert ser.read_until(PROMPT).endswith(PROMPT)
    return ser


def cmd(ser: serial.Serial, line: bytes | str) -> bytes:
    data = line.encode() if isinstance(line, str) else line
    ser.write(data + b"\r\n")
    return ser.read_until(b"\r\n")


def silent(ser: serial.Serial, *, wait_s: float = 0.15) -> bool:
    """Nothing more arrives within ``wait_s`` seconds."""
    old, ser.timeout = ser.timeout, wait_s
    try:
        return ser.read(1) == b""
    finally:
        ser.timeout = old


def to_processor(ser: serial.Serial) -> None:
    assert cmd(ser, "2") == b"OK\r\n"


def start_operation(sim: SimEs920lr, ser: serial.Serial, *setup: str) -> None:
    for line in setup:
        assert cmd(ser, line) == b"OK\r\n", line
    ser.write(b"start\r\n")
    assert ser.read(6) == b"OK\r\n\r\n"
    assert sim.mode == "operation"


@pytest.fixture
def sim() -> Iterator[SimEs920lr]:
    s = SimEs920lr(boot_delay_s=0.01, airtime_scale=0.01, rng=random.Random(7))
    s.start()
    yield s
    s.stop()


@pytest.fixture
def ser(sim: SimEs920lr) -> Iterator[serial.Serial]:
    port = open_host(sim)
    yield port
    port.close()


@pytest.fixture
def proc(sim: SimEs920lr, ser: serial.Serial) -> serial.Serial:
    """A host that has selected processor mode."""
    to_processor(ser)
    return ser


# -- boot and mode selection -----------------------------------------------------------------------------------------
def test_boot_prompt_is_exact_and_module_is_deaf_while_booting(sim: SimEs920lr, ser: serial.Serial) -> None:
    sim.boot_delay_s = 0.2
    sim.reboot(noise=False)
    ser.write(b"2\r\n")  # lands while the module boots: lost
    assert sim.wait_for(lambda: sim.bytes_from_host >= 3)
    assert ser.read(len(PROMPT)) == PROMPT
    assert silent(ser)
    assert sim.interface is None and sim.mode == "config"


@pytest.mark.parametrize("choice", ["2", "processor"])
def test_processor_selection(ser: serial.Serial, sim: SimEs920lr, choice: str) -> None:
    assert cmd(ser, choice) == b"OK\r\n"
    assert sim.interface == "processor"
    assert cmd(ser, "version") == b"VER 1.12\r\n"  # processor mode: no prompt, bare reply


def test_bad_selection_is_ng_002_and_module_keeps_asking(ser: serial.Serial, sim: SimEs920lr) -> None:
    for bad in ("3", "Processor", "", "2 "):
        assert cmd(ser, bad) == b"NG 002\r\n", bad
    assert sim.interface is None
    assert cmd(ser, "2") == b"OK\r\n"


def test_only_cr_lf_ends_a_line(ser: serial.Serial, sim: SimEs920lr) -> None:
    ser.write(b"2\n")
    assert sim.wait_for(lambda: sim.bytes_from_host >= 2)
    assert silent(ser)
    ser.write(b"2\r")
    assert silent(ser)
    ser.write(b"\n")  # the buffer now holds "2\n2" + CR LF: one unknown selection
    assert ser.read_until(b"\r\n") == b"NG 002\r\n"
    ser.write(b"2\r")
    assert silent(ser)
    ser.write(b"\n")  # CR and LF in separate writes still make one terminator
    assert ser.read_until(b"\r\n") == b"OK\r\n"


def test_terminal_mode_banner_prompt_and_value_dialogue(ser: serial.Serial, sim: SimEs920lr) -> None:
    ser.write(b"1\r\n")
    got = ser.read_until(ERASE_AND_PROMPT)
    assert got.startswith(b"OK\r\n\r\n\r\n\r Software Version : VER 1.12\r\n\r\n\r Configuration Mode\n")
    assert b"\r z. start       Transite Operation\n" in got
    assert got.endswith(b"\r\n" + ERASE_AND_PROMPT)
    assert sim.interface == "terminal"

    ser.write(b"sf\r\n")
    assert ser.read_until(b"> ") == b"\r\n  please set Spreading Factor (7 - 12) > "
    ser.write(b"9\r\n")
    assert ser.read_until(ERASE_AND_PROMPT) == (
        b"\r\n  spreading factor is 9  Effective Bitrate is 1757bps.\r\n\r\n" + ERASE_AND_PROMPT)
    assert sim.settings["sf"] == 9

    ser.write(b"ack\r\n")
    assert ser.read_until(b"> ") == b"\r\n  1. ON\r\n  2. OFF\r\n\r\n  select number > "
    ser.write(b"7\r\n")
    assert ser.read_until(ERASE_AND_PROMPT) == b"\r\n  selected number is invalid.\r\n\r\n" + ERASE_AND_PROMPT

    ser.write(b"nonsense\r\n")  # terminal mode prints no NG, just the prompt again
    assert ser.read_until(ERASE_AND_PROMPT) == ERASE_AND_PROMPT

    ser.write(b"start\r\n")
    assert ser.read_until(b"ready ----- \r\n") == b"OK\r\n\r\n ----- operation mode is ready ----- \r\n"
    assert sim.mode == "operation"


# -- configuration commands ------------------------------------------------------------------------------------------
RANGE_CASES = [
    # node: 1 Coordinator, 2 EndDevice
    ("node 0", b"NG 002"), ("node 1", b"OK"), ("node 2", b"OK"), ("node 3", b"NG 002"), ("node", b"NG 002"),
    # bw 3..6 = 62.5/125/250/500 kHz
    ("bw 2", b"NG 002"), ("bw 3", b"OK"), ("bw 6", b"OK"), ("bw 7", b"NG 002"), ("bw 4", b"OK"),
    ("sf 6", b"NG 002"), ("sf 7", b"OK"), ("sf 12", b"OK"), ("sf 13", b"NG 002"), ("sf x", b"NG 002"),
    ("channel 0", b"NG 002"), ("channel 1", b"OK"), ("channel 15", b"OK"), ("channel 16", b"NG 002"),
    ("panid 0000", b"NG 002"), ("panid 0001", b"OK"), ("panid FFFE", b"OK"), ("panid FFFF", b"NG 002"),
    ("panid 12345", b"NG 002"), ("panid 12G4", b"NG 002"), ("panid", b"NG 002"), ("panid 1", b"OK"),
    ("ownid 0000", b"OK"), ("ownid FFFE", b"OK"), ("ownid FFFF", b"NG 002"),
    ("dstid 0000", b"OK"), ("dstid FFFF", b"OK"), ("dstid 10000", b"NG 002"),
    ("ack 0", b"NG 002"), ("ack 1", b"OK"), ("ack 2", b"OK"), ("ack 3", b"NG 002"),
    ("retry 0", b"OK"), ("retry 10", b"OK"), ("retry 11", b"NG 002"),
    ("transmode 1", b"OK"), ("transmode 2", b"OK"), ("transmode 3", b"NG 002"), ("transmode 1", b"OK"),
    ("rcvid 1", b"OK"), ("rcvid 2", b"OK"), ("rcvid 0", b"NG 002"),
    ("rssi 1", b"OK"), ("rssi 2", b"OK"), ("rssi 3", b"NG 002"),
    ("operation 0", b"NG 002"), ("operation 1", b"OK"), ("operation 3", b"NG 002"),
    ("baudrate 0", b"NG 002"), ("baudrate 7", b"NG 002"), ("baudrate 5", b"OK"),
    ("sleep 0", b"NG 002"), ("sleep 1", b"OK"), ("sleep 3", b"OK"), ("sleep 4", b"NG 002"), ("sleep 1", b"OK"),
    ("power -5", b"NG 002"), ("power -4", b"OK"), ("power 13", b"OK"), ("power 14", b"NG 002"),
    ("power 0", b"OK"), ("power -", b"NG 002"),
    ("format 0", b"NG 002"), ("format 2", b"OK"), ("format 1", b"OK"), ("format 3", b"NG 002"),
    ("sleeptime 0", b"NG 002"), ("sleeptime 1", b"OK"), ("sendtime 86400", b"OK"), ("sendtime 86401", b"NG 002"),
    ("senddata hello", b"OK"),
]


def test_every_command_range_edges(proc: serial.Serial) -> None:
    for line, expected in RANGE_CASES:
        assert cmd(proc, line) == expected + b"\r\n", line


def test_accepted_values_are_stored(proc: serial.Serial, sim: SimEs920lr) -> None:
    for line in ("node 1", "bw 3", "sf 12", "channel 15", "panid ABCD", "ownid 0002", "dstid FFFF", "ack 2",
                 "retry 0", "transmode 2", "rcvid 1", "rssi 1", "operation 2", "sleep 2", "power -4", "format 2"):
        assert cmd(proc, line) == b"OK\r\n", line
    expected = dict(DEFAULT_SETTINGS, node=1, bw=3, sf=12, channel=15, panid=0xABCD, ownid=2, dstid=0xFFFF,
                    ack=2, retry=0, transmode=2, rcvid=1, rssi=1, operation=2, sleep=2, power=-4, format=2)
    assert sim.settings == expected


def test_one_letter_aliases(proc: serial.Serial, sim: SimEs920lr) -> None:
    for line in ("a 1", "b 5", "c 9", "d 7", "e 0002", "f 0003", "g 0004", "l 2", "m 5", "n 2", "o 1", "p 1",
                 "q 2", "s 3", "u -2", "A 2"):
        assert cmd(proc, line) == b"OK\r\n", line
    assert cmd(proc, "d 8") == b"NG 002\r\n"  # channel 8 does not exist at 250 kHz
    assert cmd(proc, "v") == b"VER 1.12\r\n"
    s = sim.settings
    assert (s["node"], s["bw"], s["sf"], s["channel"], s["panid"], s["ownid"], s["dstid"]) == (1, 5, 9, 7, 2, 3, 4)
    assert (s["ack"], s["retry"], s["transmode"], s["rcvid"], s["rssi"], s["operation"]) == (2, 5, 2, 1, 1, 2)
    assert (s["sleep"], s["power"], s["format"]) == (3, -2, 2)


def test_unknown_commands_are_ng_001(proc: serial.Serial) -> None:
    for line in ("foo", "NODE 1", "node1", "", " node 1", "start 1", "sf9"):
        assert cmd(proc, line) == b"NG 001\r\n", repr(line)


def test_channel_limits_follow_bandwidth(proc: serial.Serial, sim: SimEs920lr) -> None:
    assert cmd(proc, "bw 5") == b"OK\r\n"
    assert cmd(proc, "channel 7") == b"OK\r\n"
    assert cmd(proc, "channel 8") == b"NG 002\r\n"
    assert cmd(proc, "bw 6") == b"OK\r\n"
    assert sim.settings["channel"] == 1  # 7 is above the 500 kHz limit: the firmware falls back to 1
    assert cmd(proc, "channel 5") == b"OK\r\n"
    assert cmd(proc, "channel 6") == b"NG 002\r\n"
    # Firmware quirk: an invalid bw is refused but still resets the channel.
    assert cmd(proc, "bw 4") == b"OK\r\n"
    assert cmd(proc, "channel 9") == b"OK\r\n"
    assert cmd(proc, "bw 9") == b"NG 002\r\n"
    assert (sim.settings["bw"], sim.settings["channel"]) == (4, 1)


def test_firmware_parsing_quirks(proc: serial.Serial, sim: SimEs920lr) -> None:
    assert cmd(proc, "node 1x") == b"OK\r\n"  # single-digit values look at the first character only
    assert cmd(proc, "retry 269") == b"OK\r\n"  # uint8 wrap: 260 + ... -> 4
    assert sim.settings["retry"] == 4
    assert cmd(proc, "sf 07") == b"OK\r\n"
    assert cmd(proc, "sf 7 ") == b"NG 002\r\n"  # a trailing space is not a digit
    assert cmd(proc, "node  1") == b"NG 002\r\n"  # the value starts right after one space


def test_version_show_and_help(proc: serial.Serial) -> None:
    assert cmd(proc, "version") == b"VER 1.12\r\n"
    assert silent(proc)  # no OK after the version line
    proc.write(b"show\r\n")
    expected = (
        "\r\n  configuration setting is below."
        "\r\n  -------------------------------------"
        "\r\n  Node                        : EndDevice"
        "\r\n  Band Width                  : 125kHz"
        "\r\n  Spreading Factor            : 7"
        "\r\n  Effective Bitrate           : 5468bps"
        "\r\n  Channel                     : 1"
        "\r\n  PAN ID                      : 0001"
        "\r\n  Own Node ID                 : 0001"
        "\r\n  Destination ID              : 0000"
        "\r\n  Acknowledge                 : ON"
        "\r\n  Retry count                 : 3"
        "\r\n  Transfer Mode               : Payload"
        "\r\n  Receive Node ID information : OFF"
        "\r\n  RSSI information            : OFF"
        "\r\n  Config/Operation            : Configuration"
        "\r\n  UART baudrate               : 115200"
        "\r\n  Sleep Mode                  : No Sleep"
        "\r\n  Sleep Time                  : 50"
        "\r\n  Output Power                : 13dBm"
        "\r\n  Format                      : ASCII"
        "\r\n  Send Time                   : 0"
        "\r\n  Send Data                   : "
        "\r\n\r\n"
    ).encode()
    assert proc.read(len(expected)) == expected
    assert silent(proc)
    proc.write(b"?\r\n")
    assert proc.read_until(b"\r ?. help        help\n\r\n").startswith(b"\r\n\r Configuration Mode\n")


def test_start_and_z(sim: SimEs920lr, proc: serial.Serial) -> None:
    proc.write(b"start\r\n")
    assert proc.read(6) == b"OK\r\n\r\n"
    assert sim.mode == "operation"
    sim.reboot(noise=False)
    assert proc.read(len(PROMPT)) == PROMPT
    to_processor(proc)
    proc.write(b"z\r\n")
    assert proc.read(6) == b"OK\r\n\r\n"
    assert silent(proc)
    assert sim.mode == "operation"


def test_start_reply_without_ok_variant() -> None:
    with SimEs920lr(boot_delay_s=0.01, start_reply_ok=False) as sim:
        ser = open_host(sim)
        to_processor(ser)
        ser.write(b"start\r\n")
        assert ser.read(2) == b"\r\n"
        assert silent(ser)
        ser.close()


def test_backspace_and_buffer_wrap(proc: serial.Serial, sim: SimEs920lr) -> None:
    assert cmd(proc, b"sf 8\b9") == b"OK\r\n"
    assert sim.settings["sf"] == 9
    # 256 bytes fill the buffer exactly; the index wraps and only the tail is parsed (no NG for the overflow).
    assert cmd(proc, b"x" * 256 + b"sf 10") == b"OK\r\n"
    assert sim.settings["sf"] == 10 and sim.overflows == 1
    assert cmd(proc, b"y" * 300) == b"NG 001\r\n"  # the 44-byte tail is an unknown command
    assert sim.overflows == 2


# -- persistence ------------------------------------------------------------------------------------------------------
def test_settings_survive_reset_only_after_save(sim: SimEs920lr, proc: serial.Serial) -> None:
    assert cmd(proc, "sf 9") == b"OK\r\n"
    sim.reboot(noise=False)
    assert proc.read(len(PROMPT)) == PROMPT
    to_processor(proc)
    assert sim.settings["sf"] == 7  # not saved: lost

    assert cmd(proc, "sf 9") == b"OK\r\n"
    assert cmd(proc, "save") == b"OK\r\n"
    sim.reboot(noise=False)
    assert proc.read(len(PROMPT)) == PROMPT
    to_processor(proc)
    assert sim.settings["sf"] == 9

    assert cmd(proc, "load") == b"OK\r\n"  # factory defaults in RAM, flash untouched
    assert sim.settings == DEFAULT_SETTINGS
    sim.reboot(noise=False)
    assert proc.read(len(PROMPT)) == PROMPT
    to_processor(proc)
    assert sim.settings["sf"] == 9


def test_save_flash_errors(sim: SimEs920lr, proc: serial.Serial) -> None:
    sim.flash_error = 3
    assert cmd(proc, "save") == b"NG 003\r\n"
    sim.flash_error = 4
    assert cmd(proc, "w") == b"NG 004\r\n"
    assert sim.flash is None


def test_saved_operation_mode_boots_without_prompt_and_config_returns(sim: SimEs920lr, proc: serial.Serial) -> None:
    assert cmd(proc, "operation 2") == b"OK\r\n"
    assert cmd(proc, "rssi 1") == b"OK\r\n"
    assert cmd(proc, "save") == b"OK\r\n"
    sim.reboot(noise=False)
    assert proc.read(2) == b"\r\n"  # processor mode, straight into operation
    assert silent(proc)
    assert sim.mode == "operation"

    assert cmd(proc, "sf") == b"OK\r\n"  # in operation mode a line is data to send, not a command
    assert sim.transmitted == [b"sf"]
    proc.write(b"config\r\n")
    assert sim.wait_for(lambda: "config" in sim.commands)
    assert silent(proc)  # the firmware prints nothing for config
    assert sim.flash is not None and sim.flash["operation"] == 1 and sim.flash["rssi"] == 1
    assert sim.mode == "operation"  # takes effect at the next reset only
    sim.reboot(noise=False)
    assert proc.read(len(PROMPT)) == PROMPT


def test_config_reply_ok_variant() -> None:
    with SimEs920lr(boot_delay_s=0.01, config_reply_ok=True) as sim:
        ser = open_host(sim)
        to_processor(ser)
        start_operation(sim, ser)
        assert cmd(ser, "config") == b"OK\r\n"
        ser.close()


# -- operation mode: sending ------------------------------------------------------------------------------------------
def test_send_ok_after_airtime(sim: SimEs920lr, proc: serial.Serial) -> None:
    start_operation(sim, proc, "ack 2")
    sim.airtime_scale = 1.0
    expected_s = time_on_air_s(5, sf=7, bw_khz=125.0)
    t0 = time.monotonic()
    proc.write(b"hello\r\n")
    assert proc.read_until(b"\r\n") == b"OK\r\n"
    assert time.monotonic() - t0 >= expected_s * 0.95
    assert sim.transmitted == [b"hello"]
    assert sim.sent_frames == [SentFrame(pan=1, src=1, dst=0, payload=b"hello")]


def test_send_length_limits_and_line_rules(sim: SimEs920lr, proc: serial.Serial) -> None:
    start_operation(sim, proc)
    assert cmd(proc, b"a" * 50) == b"OK\r\n"
    assert cmd(proc, b"a" * 51) == b"NG 100\r\n"
    assert cmd(proc, b"ab\x00cd") == b"OK\r\n"  # the firmware's strcpy stops at NUL
    proc.write(b"\r\n")  # an empty line is ignored
    assert sim.wait_for(lambda: sim.output_pending == 0)
    assert silent(proc)
    assert sim.transmitted == [b"a" * 50, b"ab"]


def test_send_while_busy_is_ng_101_and_rx_is_dropped(sim: SimEs920lr, proc: serial.Serial) -> None:
    start_operation(sim, proc, "ack 2")
    sim.airtime_scale = 1.0  # ~60 ms on air
    proc.write(b"first\r\nsecond\r\n")
    assert proc.read_until(b"\r\n") == b"NG 101\r\n"
    assert sim.inject_uplink(b"while-busy") is False
    assert proc.read_until(b"\r\n") == b"OK\r\n"
    assert sim.transmitted == [b"first"]
    assert sim.inject_uplink(b"after") is True
    assert proc.read_until(b"\r\n") == b"after\r\n"


@pytest.mark.parametrize(("code", "on_air"), [(101, False), (102, False), (103, True), (104, False), (0, True)])
def test_forced_send_results(sim: SimEs920lr, proc: serial.Serial, code: int, on_air: bool) -> None:
    start_operation(sim, proc)
    sim.fail_next_send(code)
    expected = b"OK\r\n" if code == 0 else f"NG {code}\r\n".encode()
    assert cmd(proc, "data") == expected
    assert sim.transmitted == ([b"data"] if on_air else [])
    assert cmd(proc, "again") == b"OK\r\n"  # one-shot


def test_send_fault_probabilities(sim: SimEs920lr, proc: serial.Serial) -> None:
    start_operation(sim, proc)
    sim.send_faults.carrier_busy_probability = 1.0
    assert cmd(proc, "x") == b"NG 102\r\n"
    sim.send_faults.carrier_busy_probability = 0.0
    sim.send_faults.ack_timeout_probability = 1.0
    assert cmd(proc, "x") == b"NG 103\r\n"
    assert sim.transmitted == [b"x"]  # NG 103: sent, but never acknowledged
    sim.send_faults.ack_timeout_probability = 0.0
    sim.send_faults.cca_fail_probability = 1.0
    assert cmd(proc, "y") == b"NG 104\r\n"
    assert sim.transmitted == [b"x"]


def test_no_ack_wait_for_broadcast(sim: SimEs920lr, proc: serial.Serial) -> None:
    start_operation(sim, proc, "dstid FFFF")
    sim.send_faults.ack_timeout_probability = 1.0
    assert cmd(proc, "x") == b"OK\r\n"


def test_frame_mode_header(sim: SimEs920lr, proc: serial.Serial) -> None:
    start_operation(sim, proc, "transmode 2", "ownid 0007")
    assert cmd(proc, "0002000Ahello") == b"OK\r\n"
    assert sim.sent_frames[-1] == SentFrame(pan=2, src=7, dst=0x000A, payload=b"hello")
    assert cmd(proc, "00020003") == b"NG 100\r\n"  # header only: too short
    assert cmd(proc, b"0002FFFF" + b"z" * 50) == b"OK\r\n"
    assert sim.sent_frames[-1].payload == b"z" * 50
    assert cmd(proc, b"0002FFFF" + b"z" * 51) == b"NG 100\r\n"


# -- operation mode: receiving ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("rssi_on", "rcvid_on", "line"), [
    (False, False, b"hello\r\n"),
    (True, False, b"FFB5hello\r\n"),
    (False, True, b"00010002hello\r\n"),
    (True, True, b"FFB500010002hello\r\n"),
])
def test_ascii_rx_line_formats(sim: SimEs920lr, proc: serial.Serial, rssi_on: bool, rcvid_on: bool,
                               line: bytes) -> None:
    start_operation(sim, proc, f"rssi {1 if rssi_on else 2}", f"rcvid {1 if rcvid_on else 2}")
    assert sim.inject_uplink(b"hello", rssi=-75, src=2) is True
    assert proc.read(len(line)) == line
    assert silent(proc)


def test_rssi_is_int16_twos_complement(sim: SimEs920lr, proc: serial.Serial) -> None:
    start_operation(sim, proc, "rssi 1")
    for rssi, text in ((-1, b"FFFF"), (-128, b"FF80"), (-120, b"FF88"), (5, b"0005")):
        assert sim.inject_uplink(b"p", rssi=rssi)
        assert proc.read_until(b"\r\n") == text + b"p\r\n"


def test_raw_payload_with_crlf_breaks_the_line(sim: SimEs920lr, proc: serial.Serial) -> None:
    start_operation(sim, proc)
    assert sim.inject_uplink(b"ab\r\ncd\x00\xff")
    assert proc.read_until(b"\r\n") == b"ab\r\n"
    assert proc.read_until(b"\r\n") == b"cd\x00\xff\r\n"


def test_pan_and_id_filtering(sim: SimEs920lr, proc: serial.Serial) -> None:
    assert sim.inject_uplink(b"too-early") is False  # configuration mode: radio not running
    start_operation(sim, proc, "panid 0010", "ownid 0005", "rcvid 1")
    assert sim.inject_uplink(b"other-id", pan=0x10, dst=0x6) is False
    assert sim.inject_uplink(b"other-pan", pan=0x11, dst=0x5) is False
    assert sim.inject_uplink(b"to-us", pan=0x10, dst=0x5, src=3) is True
    assert sim.inject_uplink(b"bcast", pan=0x10, dst=0xFFFF, src=4) is True
    assert sim.inject_uplink(b"bcast-foreign", pan=0x99, dst=0xFFFF, src=9) is True  # firmware ignores PAN here
    assert proc.read_until(b"\r\n") == b"00100003to-us\r\n"
    assert proc.read_until(b"\r\n") == b"00100004bcast\r\n"
    assert proc.read_until(b"\r\n") == b"00990009bcast-foreign\r\n"
    assert silent(proc)
    assert sim.received == [b"to-us", b"bcast", b"bcast-foreign"]


def test_broadcast_pan_filter_variant() -> None:
    with SimEs920lr(boot_delay_s=0.01, broadcast_any_pan=False) as sim:
        ser = open_host(sim)
        to_processor(ser)
        start_operation(sim, ser)
        assert sim.inject_uplink(b"x", pan=0x99, dst=0xFFFF) is False
        assert sim.inject_uplink(b"y", dst=0xFFFF) is True
        assert ser.read_until(b"\r\n") == b"y\r\n"
        ser.close()


def test_inject_uplink_validates_fields(sim: SimEs920lr) -> None:
    with pytest.raises(ValueError):
        sim.inject_uplink(b"x", rssi=-40000)
    with pytest.raises(ValueError):
        sim.inject_uplink(b"x", src=0x10000)
    with pytest.raises(ValueError):
        sim.inject_uplink(b"x" * 250)


# -- binary format ----------------------------------------------------------------------------------------------------
def test_binary_rx_has_length_prefix_and_no_crlf(sim: SimEs920lr, proc: serial.Serial) -> None:
    start_operation(sim, proc, "format 2")
    assert sim.inject_uplink(b"hi\r\n", rssi=-75, src=2)
    assert proc.read(5) == b"\x04hi\r\n"
    sim.settings.update(rssi=1, rcvid=1)  # same as configuring them before start
    assert sim.inject_uplink(b"hello", rssi=-75, src=2)
    assert proc.read(18) == b"\x11FFB500010002hello"
    assert silent(proc)


def test_binary_send_and_replies(sim: SimEs920lr, proc: serial.Serial) -> None:
    start_operation(sim, proc, "format 2")
    proc.write(b"\x05hello")
    assert proc.read(3) == b"\x02OK"
    proc.write(b"\x33" + b"a" * 51)
    assert proc.read(7) == b"\x06NG 100"
    sim.fail_next_send(103)
    proc.write(b"\x02\r\n")  # CR LF is just data in binary format
    assert proc.read(7) == b"\x06NG 103"
    assert silent(proc)
    assert sim.transmitted == [b"hello", b"\r\n"]


def test_binary_partial_frame_is_discarded_after_gap(sim: SimEs920lr, proc: serial.Serial) -> None:
    sim.uart_gap_timeout_s = 0.05
    start_operation(sim, proc, "format 2")
    proc.write(b"\x05he")
    assert sim.wait_for(lambda: sim.bytes_from_host >= len(b"2\r\nformat 2\r\nstart\r\n") + 3)
    time.sleep(0.1)  # longer than the module's inter-byte timeout
    proc.write(b"\x02hi")
    assert proc.read(3) == b"\x02OK"
    assert sim.transmitted == [b"hi"]


def test_binary_config(sim: SimEs920lr, proc: serial.Serial) -> None:
    start_operation(sim, proc, "format 2")
    proc.write(b"config")
    assert sim.wait_for(lambda: sim.flash is not None and sim.flash["operation"] == 1)
    assert sim.transmitted == []


# -- resets, faults, baud rate, cable ---------------------------------------------------------------------------------
def test_reset_noise_before_prompt(sim: SimEs920lr, proc: serial.Serial) -> None:
    start_operation(sim, proc)
    sim.reboot(noise=True)
    assert proc.read(3 + len(PROMPT)) == b"\xfc\xfc\xfc" + PROMPT
    assert sim.mode == "config" and sim.interface is None
    sim.reset(noise=False)
    assert proc.read(len(PROMPT)) == PROMPT


def test_reset_cuts_pending_send_result(sim: SimEs920lr, proc: serial.Serial) -> None:
    start_operation(sim, proc)
    sim.airtime_scale = 1.0
    proc.write(b"hello\r\n")
    assert sim.wait_for(lambda: sim.transmitted == [b"hello"])
    sim.reboot(noise=False)
    assert proc.read(len(PROMPT)) == PROMPT  # no OK: the module was reset before its send finished
    assert silent(proc)


def test_line_faults_apply_to_module_output(sim: SimEs920lr, proc: serial.Serial) -> None:
    sim.faults.duplicate_probability = 1.0
    assert cmd(proc, "version") == b"VER 1.12\r\n"
    assert proc.read_until(b"\r\n") == b"VER 1.12\r\n"
    sim.faults.duplicate_probability = 0.0
    sim.faults.drop_probability = 1.0
    proc.write(b"version\r\n")
    assert silent(proc)
    sim.faults.drop_probability = 0.0
    sim.faults.split_probability = 1.0
    assert cmd(proc, "version") == b"VER 1.12\r\n"
    assert (sim.faults.counts["duplicate"], sim.faults.counts["drop"]) == (1, 1)


def test_inject_garbage_between_lines(sim: SimEs920lr, proc: serial.Serial) -> None:
    start_operation(sim, proc)
    sim.inject_garbage(b"\x00\xff")
    assert sim.inject_uplink(b"x")
    assert proc.read_until(b"\r\n") == b"\x00\xffx\r\n"


def test_injected_lines_never_interleave(sim: SimEs920lr, proc: serial.Serial) -> None:
    start_operation(sim, proc, "rssi 1", "rcvid 1")
    n_threads, per_thread = 4, 25

    def worker(t: int) -> None:
        for i in range(per_thread):
            assert sim.inject_uplink(f"t{t}-{i:02d}".encode() * 3, rssi=-60 - t, src=t)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    lines = [proc.read_until(b"\r\n") for _ in range(n_threads * per_thread)]
    expected = {f"{(-60 - t) & 0xFFFF:04X}0001{t:04X}".encode() + f"t{t}-{i:02d}".encode() * 3 + b"\r\n"
                for t in range(n_threads) for i in range(per_thread)}
    assert set(lines) == expected
    assert silent(proc)


def test_baudrate_switches_after_reply(sim: SimEs920lr, proc: serial.Serial) -> None:
    assert cmd(proc, "baudrate 1") == b"OK\r\n"  # the reply still goes at 115200
    proc.write(b"version\r\n")  # the module now listens at 9600: it reads garbage, no line ends
    assert silent(proc)
    proc.baudrate = 9600
    # The garbage still sits in the module's buffer: a bare CR LF flushes it as one unknown command.
    assert cmd(proc, "") == b"NG 001\r\n"
    assert cmd(proc, "version") == b"VER 1.12\r\n"
    assert cmd(proc, "save") == b"OK\r\n"

    proc.baudrate = 115200
    sim.reboot(noise=False)  # boots at the saved 9600 while the host listens at 115200
    garbled = proc.read(len(PROMPT))
    assert garbled and b"Select" not in garbled and b"\r\n" not in garbled
    proc.baudrate = 9600
    proc.reset_input_buffer()
    sim.reboot(noise=True)  # no reset artefact at 9600 (hideakitai's table is empty there)
    assert proc.read(len(PROMPT)) == PROMPT
    assert cmd(proc, "2") == b"OK\r\n"
    assert cmd(proc, "load") == b"OK\r\n"  # OK at 9600, then defaults switch the UART to 115200
    proc.baudrate = 115200
    assert cmd(proc, "version") == b"VER 1.12\r\n"


def test_unplug_and_replug(tmp_path: pathlib.Path) -> None:
    link = str(tmp_path / "lora0")
    with SimEs920lr(boot_delay_s=0.01, link=link) as sim:
        ser = open_host(sim)
        to_processor(ser)
        assert os.path.islink(link)
        sim.unplug()
        assert not os.path.exists(link)
        assert sim.mode == "off"
        with pytest.raises(serial.SerialException):
            ser.read(1)
        ser.close()
        assert sim.inject_uplink(b"lost") is False
        sim.reboot()  # no power: nothing happens
        assert sim.mode == "off"

        sim.replug()
        assert os.path.islink(link)
        ser = open_host(sim)  # the same path works again
        assert cmd(ser, "processor") == b"OK\r\n"
        assert cmd(ser, "version") == b"VER 1.12\r\n"
        ser.close()


def test_wait_for_times_out(sim: SimEs920lr) -> None:
    t0 = time.monotonic()
    assert sim.wait_for(lambda: sim.mode == "operation", timeout=0.05) is False
    assert time.monotonic() - t0 < 1.0
