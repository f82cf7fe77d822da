"""The simulated RAK3172 (RUI3, LoRa P2P), driven through a real pyserial port on its pty.

Exact bytes come from docs/protocols.md §1 (the "Examples (echo off)" block and the error strings) and §8 (airtime).
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import serial

from drivers.airtime import time_on_air_ms
from drivers.sim.faults import baud_garble
from drivers.sim.rak3172 import SimRak3172

BOOT = 0.05  # boot delay used in these tests, in seconds
BANNER_TAIL = b"Current Work Mode: LoRa P2P.\r\n"


# -- helpers ---------------------------------------------------------------------------------------------------
def read_exactly(port: serial.Serial, n: int, timeout: float = 3.0) -> bytes:
    """Read n bytes (or what arrived before the timeout)."""
    deadline = time.monotonic() + timeout
    out = b""
    while len(out) < n and time.monotonic() < deadline:
        out += port.read(n - len(out))
    return out


def read_until(port: serial.Serial, marker: bytes, timeout: float = 3.0) -> bytes:
    """Read until the data ends with marker (or the timeout)."""
    deadline = time.monotonic() + timeout
    out = b""
    while not out.endswith(marker) and time.monotonic() < deadline:
        out += port.read(1)
    return out


def quiet(port: serial.Serial, wait: float = 0.15) -> bytes:
    """Whatever else arrives within ``wait`` seconds (expected: nothing)."""
    old = port.timeout
    port.timeout = wait
    out = b""
    try:
        while chunk := port.read(4096):
            out += chunk
        return out
    finally:
        port.timeout = old


def xfer(port: serial.Serial, command: bytes, expected: bytes) -> None:
    """Send a command and assert the exact reply bytes."""
    port.write(command)
    got = read_exactly(port, len(expected))
    assert got == expected, f"{command!r}: expected {expected!r}, got {got!r}"


def make(tmp_path: object, **kw: object) -> SimRak3172:
    kw.setdefault("boot_delay_s", BOOT)
    kw.setdefault("rng", random.Random(1234))
    return SimRak3172(**kw)  # type: ignore[arg-type]


@pytest.fixture
def sim(tmp_path: object) -> Iterator[SimRak3172]:
    s = make(tmp_path)
    s.start()
    yield s
    s.stop()


@pytest.fixture
def host(sim: SimRak3172) -> Iterator[serial.Serial]:
    port = serial.serial_for_url(sim.path, baudrate=115200, timeout=0.5)
    yield port
    port.close()


def open_host(sim: SimRak3172, baudrate: int = 115200) -> serial.Serial:
    return serial.serial_for_url(sim.path, baudrate=baudrate, timeout=0.5)


@contextmanager
def running(tmp_path: object, **kw: object) -> Iterator[tuple[SimRak3172, serial.Serial]]:
    """A simulator made with ``kw`` (a firmware profile), started, and the host's end of its pty; stopped after."""
    sim = make(tmp_path, **kw)
    sim.start()
    try:
        with open_host(sim) as host:
            yield sim, host
    finally:
        sim.stop()


# -- airtime ---------------------------------------------------------------------------------------------------
TOA_TABLE = {  # docs/protocols.md §8: payload -> SF7..SF12, BW125, CR4/5, preamble 8
    20: (56.6, 102.9, 185.3, 370.7, 741.4, 1318.9),
    33: (71.9, 133.6, 246.8, 452.6, 987.1, 1810.4),
    51: (102.7, 184.8, 328.7, 616.4, 1314.8, 2465.8),
    255: (399.6, 707.1, 1250.3, 2295.8, 5001.2, 9019.4),
}


@pytest.mark.parametrize("payload_len", sorted(TOA_TABLE))
def test_time_on_air_matches_protocols_table(payload_len: int) -> None:
    for sf, expected in zip(range(7, 13), TOA_TABLE[payload_len], strict=True):
        assert time_on_air_ms(payload_len, sf, 125, 0, 8) == pytest.approx(expected, abs=0.1), (payload_len, sf)


def test_time_on_air_follows_bandwidth_coding_rate_and_ldro() -> None:
    base = time_on_air_ms(20, 9, 125, 0, 8)
    assert time_on_air_ms(20, 9, 250, 0, 8) == pytest.approx(base / 2)
    assert time_on_air_ms(20, 9, 125, 3, 8) > time_on_air_ms(20, 9, 125, 0, 8)
    # LDRO is on at BW250/SF12 but not at BW250/SF11: the SF12 packet takes more than twice the SF11 one.
    assert time_on_air_ms(51, 12, 250) > 2 * time_on_air_ms(51, 11, 250)
    with pytest.raises(ValueError):
        time_on_air_ms(20, 13, 125)
    with pytest.raises(ValueError):
        time_on_air_ms(20, 7, 125, cr=4)


# -- the docs/protocols.md §1 examples ------------------------------------------------------------------------------
def test_protocols_examples_exact_bytes(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"AT\r\n", b"OK\r\n")
    host.write(b"AT+NWM=0\r\n")
    boot = read_until(host, BANNER_TAIL)
    assert boot.startswith(b"OK") and not boot.startswith(b"OK\r\n"), boot  # OK without CRLF, then the reboot
    assert boot.endswith(BANNER_TAIL)
    assert sim.wait_for(lambda: sim.awake, 2)
    xfer(host, b"AT+P2P=920600000:10:125:0:8:13\r\n", b"OK\r\n")
    xfer(host, b"AT+P2P=?\r\n", b"AT+P2P=920600000:10:0:0:8:13\r\nOK\r\n")
    xfer(host, b"AT+PRECV=65533\r\n", b"OK\r\n")
    assert sim.inject_uplink(b"Hello Rak3172", rssi=-28, snr=5)
    event = b"+EVT:RXP2P:-28:5:48656C6C6F2052616B33313732\r\n"
    assert read_exactly(host, len(event)) == event
    xfer(host, b"AT+PSEND=A1B2C3\r\n", b"OK\r\n+EVT:TXP2P DONE\r\n")
    xfer(host, b"AT+PRECV=65534\r\n", b"P2P_RX_ON already\r\nAT_BUSY_ERROR\r\n")
    xfer(host, b"AT+PSF=13\r\n", b"AT_PARAM_ERROR\r\n")
    xfer(host, b"AT+FOO\r\n", b"AT_COMMAND_NOT_FOUND\r\n")
    assert quiet(host) == b""
    assert sim.transmitted == [bytes.fromhex("A1B2C3")]
    assert sim.commands[-1] == "AT+FOO"


# -- command line ----------------------------------------------------------------------------------------------
def test_cr_or_lf_terminates_and_crlf_runs_once(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"AT\r", b"OK\r\n")
    xfer(host, b"AT\n", b"OK\r\n")
    xfer(host, b"AT\r\n", b"OK\r\n")
    assert quiet(host) == b""
    assert sim.commands == ["AT", "AT", "AT"]


def test_names_are_case_insensitive_and_bytes_may_trickle_in(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"at+psf=9\r\n", b"OK\r\n")
    for b in b"aT+pSf=?\r\n":
        host.write(bytes((b,)))
        host.flush()
    assert read_exactly(host, 14) == b"AT+PSF=9\r\nOK\r\n"  # the value line uses the canonical name


def test_backspace_edits_the_buffer(sim: SimRak3172, host: serial.Serial) -> None:
    host.write(b"AT+PSFX\x08=8\r\n")
    assert read_exactly(host, 3 + 4) == b"\x08 \x08OK\r\n"
    assert sim.p2p["sf"] == 8


def test_buffer_keeps_2047_characters_and_long_names_give_at_error(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"A" * 3000 + b"\r\n", b"AT_ERROR\r\n")
    assert len(sim.commands[-1]) == 2047
    xfer(host, b"AT+" + b"X" * 29 + b"\r\n", b"AT_ERROR\r\n")  # 32-character name
    xfer(host, b"AT+" + b"X" * 28 + b"\r\n", b"AT_COMMAND_NOT_FOUND\r\n")  # 31 characters: looked up


def test_help_and_version(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"AT+PSF?\r\n", b"AT+PSF: configure P2P Spreading Factor (5-12)\r\nOK\r\n")
    host.write(b"AT+VER=?\r\n")
    assert re.fullmatch(rb"AT\+VER=RUI_[0-9.]+_RAK3172\S*\r\nOK\r\n", read_until(host, b"OK\r\n"))
    xfer(host, b"AT+VER=1\r\n", b"AT_ERROR\r\n")


def test_echo_toggles_and_persists(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"ATE\r\n", b"OK\r\n")  # echo was off while typing, so nothing echoed
    xfer(host, b"AT\r\n", b"AT\n\rOK\r\n")
    xfer(host, b"AT+PSF=?\r\n", b"AT+PSF=?\n\rAT+PSF=7\r\nOK\r\n")
    sim.reboot(noise=False)
    assert read_until(host, BANNER_TAIL).endswith(BANNER_TAIL)
    assert sim.wait_for(lambda: sim.awake, 2)
    xfer(host, b"AT\r\n", b"AT\n\rOK\r\n")  # echo survived the reboot
    xfer(host, b"ATE\r\n", b"ATE\n\rOK\r\n")
    xfer(host, b"AT\r\n", b"OK\r\n")


# -- parameters and errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [
    b"AT+PSF=4", b"AT+PSF=13", b"AT+PSF=08", b"AT+PSF=-7", b"AT+PSF=", b"AT+PSF=7:8",
    b"AT+PFREQ=149999999", b"AT+PFREQ=960000001", b"AT+PBW=10", b"AT+PBW=126", b"AT+PCR=4", b"AT+PPL=4",
    b"AT+PPL=65536", b"AT+PTP=4", b"AT+PTP=23",
    b"AT+P2P=920600000:10:125:0:8", b"AT+P2P=920600000:10:125:0:8:13:2", b"AT+P2P=920600000:4:125:0:8:13",
    b"AT+P2P=920600000:10:300:0:8:13", b"AT+P2P=920600000:10:125:4:8:13", b"AT+P2P=920600000:10:125:0:8:30",
    b"AT+P2P=100000000:10:125:0:8:13",
    b"AT+PSEND=ABC", b"AT+PSEND=GG", b"AT+PSEND=" + b"00" * 240, b"AT+PSEND", b"AT+PSEND=?",
    b"AT+PRECV=65536", b"AT+PRECV=x", b"AT+PRECV",
    b"AT+NWM=3", b"AT+NWM=00", b"AT+BAUD=12345", b"AT+ENCRY=2", b"AT+ENCKEY=0011", b"AT+CAD=5",
])
def test_param_errors(sim: SimRak3172, host: serial.Serial, command: bytes) -> None:
    before = sim.p2p
    xfer(host, command + b"\r\n", b"AT_PARAM_ERROR\r\n")
    assert sim.p2p == before
    assert not sim.transmitted


def test_each_p2p_setting_round_trips(sim: SimRak3172, host: serial.Serial) -> None:
    for cmd, value in ((b"AT+PFREQ", b"923200000"), (b"AT+PSF", b"12"), (b"AT+PCR", b"3"), (b"AT+PPL", b"16"),
                       (b"AT+PTP", b"20")):
        xfer(host, cmd + b"=" + value + b"\r\n", b"OK\r\n")
        xfer(host, cmd + b"=?\r\n", cmd + b"=" + value + b"\r\nOK\r\n")
    xfer(host, b"AT+PBW=500\r\n", b"OK\r\n")
    xfer(host, b"AT+PBW=?\r\n", b"AT+PBW=2\r\nOK\r\n")
    xfer(host, b"AT+PBW=9\r\n", b"OK\r\n")
    assert sim.p2p["bw_khz"] == 62.5
    xfer(host, b"AT+P2P=?\r\n", b"AT+P2P=923200000:12:9:3:16:20\r\nOK\r\n")
    xfer(host, b"AT+ENCRY=1\r\n", b"OK\r\n")
    xfer(host, b"AT+ENCRY=?\r\n", b"AT+ENCRY=1\r\nOK\r\n")
    xfer(host, b"AT+ENCKEY=000102030405060708090a0b0c0d0e0f\r\n", b"OK\r\n")
    xfer(host, b"AT+ENCKEY=?\r\n", b"AT+ENCKEY=000102030405060708090A0B0C0D0E0F\r\nOK\r\n")
    xfer(host, b"AT+CAD=?\r\n", b"AT+CAD=0\r\nOK\r\n")


def test_bw_reported_in_khz_profile(tmp_path: object) -> None:
    with running(tmp_path, bw_as_khz=True) as (sim, host):
        xfer(host, b"AT+P2P=920600000:7:250:1:8:13\r\n", b"OK\r\n")
        xfer(host, b"AT+P2P=?\r\n", b"AT+P2P=920600000:7:250:1:8:13\r\nOK\r\n")
        xfer(host, b"AT+PBW=0\r\n", b"OK\r\n")
        xfer(host, b"AT+PBW=?\r\n", b"AT+PBW=125\r\nOK\r\n")


def test_busy_with_rx_on_line_for_settings(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"AT+PRECV=65534\r\n", b"OK\r\n")
    busy = b"P2P_RX_ON already, please disable P2P RX before setting.\r\nAT_BUSY_ERROR\r\n"
    for command in (b"AT+P2P=920600000:10:125:0:8:13", b"AT+PSF=9", b"AT+PFREQ=921000000", b"AT+PBW=125",
                    b"AT+PCR=1", b"AT+PPL=10", b"AT+PTP=10", b"AT+NWM=0"):
        xfer(host, command + b"\r\n", busy)
    xfer(host, b"AT+PSF=?\r\n", b"AT+PSF=7\r\nOK\r\n")  # queries still work
    xfer(host, b"AT+PSEND=00\r\n", b"AT_BUSY_ERROR\r\n")  # busy without the line
    xfer(host, b"AT+PRECV=0\r\n", b"OK\r\n")
    xfer(host, b"AT+PSF=9\r\n", b"OK\r\n")
    assert sim.nwm == 0 and sim.boots == 1


def test_mode_no_support_in_lorawan(sim: SimRak3172, host: serial.Serial) -> None:
    host.write(b"AT+NWM=1\r\n")
    assert read_until(host, b"Current Work Mode: LoRaWAN.\r\n").startswith(b"OK")
    assert sim.wait_for(lambda: sim.awake and sim.nwm == 1, 2)
    for command in (b"AT+P2P=?", b"AT+PSEND=00", b"AT+PRECV=0", b"AT+PSF=7", b"AT+ENCRY=?", b"AT+CAD=?"):
        xfer(host, command + b"\r\n", b"AT_MODE_NO_SUPPORT\r\n")
    xfer(host, b"AT+NWM=?\r\n", b"AT+NWM=1\r\nOK\r\n")
    host.write(b"AT+NWM=0\r\n")
    assert read_until(host, BANNER_TAIL).endswith(BANNER_TAIL)
    assert sim.wait_for(lambda: sim.awake and sim.nwm == 0, 2)
    xfer(host, b"AT+PSF=?\r\n", b"AT+PSF=7\r\nOK\r\n")


def test_factory_fresh_module_boots_in_lorawan(tmp_path: object) -> None:
    with running(tmp_path, initial_nwm=1) as (sim, host):
        xfer(host, b"AT+PRECV=65534\r\n", b"AT_MODE_NO_SUPPORT\r\n")


def test_legacy_unknown_command(tmp_path: object) -> None:
    with running(tmp_path, legacy_unknown=True) as (sim, host):
        xfer(host, b"AT+foo=1\r\n", b"AT_ERROR\r\nAT+foo: Command not found!!\r\n")
        xfer(host, b"AT\r\n", b"OK\r\n")


# -- PRECV state machine ---------------------------------------------------------------------------------------
def test_precv_query_reports_rx_state(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"AT+PRECV=?\r\n", b"AT+PRECV=P2P_RX_OFF\r\nOK\r\n")
    xfer(host, b"AT+PRECV=65535\r\n", b"OK\r\n")
    xfer(host, b"AT+PRECV=?\r\n", b"AT+PRECV=P2P_RX_ON\r\nOK\r\n")
    xfer(host, b"AT+PRECV=0\r\n", b"OK\r\n")
    assert not sim.rx_on
    assert not sim.inject_uplink(b"\x01")
    assert quiet(host) == b""


def test_timed_window_ends_with_timeout_event(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"AT+PRECV=200\r\n", b"OK\r\n")
    t0 = time.monotonic()
    assert sim.rx_on
    assert read_until(host, b"\r\n", timeout=2) == b"+EVT:RXP2P RECEIVE TIMEOUT\r\n"
    elapsed = time.monotonic() - t0
    assert 0.15 <= elapsed <= 0.6, elapsed
    assert not sim.rx_on and not sim.inject_uplink(b"\x01")


def test_timed_window_minimum_is_15_ms_and_packet_closes_it(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"AT+PRECV=1\r\n", b"OK\r\n")
    assert read_until(host, b"\r\n", timeout=2) == b"+EVT:RXP2P RECEIVE TIMEOUT\r\n"
    xfer(host, b"AT+PRECV=300\r\n", b"OK\r\n")
    assert sim.inject_uplink(b"\xAA\xBB", rssi=-100, snr=-7.4)
    assert read_until(host, b"\r\n") == b"+EVT:RXP2P:-100:-7:AABB\r\n"
    assert quiet(host, 0.45) == b""  # the window closed with the packet: no timeout follows
    assert not sim.rx_on


def test_one_shot_receives_exactly_one_packet(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"AT+PRECV=65535\r\n", b"OK\r\n")
    xfer(host, b"AT+PSEND=00\r\n", b"AT_BUSY_ERROR\r\n")
    assert sim.inject_uplink(b"\x01")
    assert not sim.inject_uplink(b"\x02")
    assert read_until(host, b"\r\n") == b"+EVT:RXP2P:-80:7:01\r\n"
    xfer(host, b"AT+PRECV=65535\r\n", b"OK\r\n")  # may be armed again


def test_continuous_65534_keeps_receiving_and_blocks_tx(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"AT+PRECV=65534\r\n", b"OK\r\n")
    for i in range(3):
        assert sim.inject_uplink(bytes([i]))
    assert read_exactly(host, 3 * 21) == b"".join(b"+EVT:RXP2P:-80:7:%02X\r\n" % i for i in range(3))
    xfer(host, b"AT+PSEND=00\r\n", b"AT_BUSY_ERROR\r\n")
    for other in (b"65533", b"65535", b"1000"):
        xfer(host, b"AT+PRECV=" + other + b"\r\n", b"P2P_RX_ON already\r\nAT_BUSY_ERROR\r\n")
    assert sim.rx_mode == "continuous"


def test_65533_transmits_then_returns_to_rx(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"AT+PSF=9\r\n", b"OK\r\n")
    xfer(host, b"AT+PRECV=65533\r\n", b"OK\r\n")
    xfer(host, b"AT+PSEND=" + b"11" * 20 + b"\r\n", b"OK\r\n")
    assert sim.tx_busy and not sim.rx_on
    assert not sim.inject_uplink(b"\x01")  # the radio is transmitting
    assert read_until(host, b"\r\n") == b"+EVT:TXP2P DONE\r\n"
    assert sim.wait_for(lambda: sim.rx_on, 1)
    assert sim.inject_uplink(b"\x02")
    assert read_until(host, b"\r\n") == b"+EVT:RXP2P:-80:7:02\r\n"


def test_psend_done_after_airtime(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"AT+P2P=920600000:9:125:0:8:13\r\n", b"OK\r\n")
    expected_s = time_on_air_ms(20, 9, 125, 0, 8) / 1000.0  # 185.3 ms (§8)
    host.write(b"AT+PSEND=" + bytes(range(20)).hex().encode() + b"\r\n")
    assert read_exactly(host, 4) == b"OK\r\n"
    t0 = time.monotonic()
    xfer(host, b"AT+PSEND=00\r\n", b"AT_BUSY_ERROR\r\n")  # still transmitting
    assert read_until(host, b"\r\n", timeout=3) == b"+EVT:TXP2P DONE\r\n"
    elapsed = time.monotonic() - t0
    assert expected_s - 0.03 <= elapsed <= expected_s + 0.15, (elapsed, expected_s)
    assert sim.transmitted == [bytes(range(20))]
    xfer(host, b"AT+PSEND=" + b"00" * 239 + b"\r\n", b"OK\r\n")  # the 239-byte maximum is accepted


def test_cad_reports_busy_channel(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"AT+CAD=1\r\n", b"OK\r\n")
    sim.channel_busy = True
    xfer(host, b"AT+PSEND=00\r\n", b"AT_BUSY_ERROR\r\n")
    sim.channel_busy = False
    xfer(host, b"AT+PSEND=00\r\n", b"OK\r\n+EVT:TXP2P DONE\r\n")


# -- events ----------------------------------------------------------------------------------------------------
def test_crc_error_and_legacy_two_line_event(tmp_path: object) -> None:
    with running(tmp_path, legacy_rx=True) as (sim, host):
        assert not sim.inject_crc_error()
        xfer(host, b"AT+PRECV=65534\r\n", b"OK\r\n")
        assert sim.inject_crc_error()
        assert read_until(host, b"\r\n") == b"+EVT:RXP2P RECEIVE ERROR\r\n"
        assert sim.inject_uplink(b"\xAA\xBB\xCC\xDD", rssi=-60, snr=11)
        expected = b"+EVT:RXP2P, RSSI -60, SNR 11\r\n+EVT:AABBCCDD\r\n"
        assert read_exactly(host, len(expected)) == expected


def test_event_between_command_and_status(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"AT+PRECV=65534\r\n", b"OK\r\n")
    sim.event_between_command_and_status = True
    assert sim.inject_uplink(b"\x42", rssi=-70, snr=3)
    assert quiet(host, 0.1) == b""  # held until the next command's status
    xfer(host, b"AT+PRECV=?\r\n", b"AT+PRECV=P2P_RX_ON\r\n+EVT:RXP2P:-70:3:42\r\nOK\r\n")
    sim.event_hold_s = 0.1
    assert sim.inject_uplink(b"\x43", rssi=-70, snr=3)
    assert read_until(host, b"\r\n", timeout=2) == b"+EVT:RXP2P:-70:3:43\r\n"  # no command came: sent anyway


def test_injections_from_threads_interleave_at_line_boundaries(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"AT+PRECV=65534\r\n", b"OK\r\n")
    n, queries = 200, 100
    data = bytearray()
    done = threading.Event()

    def reader() -> None:  # a host that keeps reading, as the agent does
        while data.count(b"\r\n") < n + 2 * queries and not done.is_set():
            data.extend(host.read(4096))

    def pump() -> None:
        for i in range(n):
            assert sim.inject_uplink(i.to_bytes(2, "big") * 8, rssi=-90, snr=1)

    threads = [threading.Thread(target=reader), threading.Thread(target=pump)]
    for t in threads:
        t.start()
    for _ in range(queries):
        host.write(b"AT+PSF=?\r\n")
    threads[1].join(10)
    threads[0].join(10)
    done.set()
    lines = bytes(data).split(b"\r\n")[:-1]
    events = [ln for ln in lines if ln.startswith(b"+EVT:")]
    assert events == [b"+EVT:RXP2P:-90:1:" + (i.to_bytes(2, "big") * 8).hex().upper().encode() for i in range(n)]
    assert [ln for ln in lines if not ln.startswith(b"+EVT:")] == [b"AT+PSF=7", b"OK"] * queries


def test_host_that_stops_reading_loses_output_without_blocking(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"AT+PRECV=65534\r\n", b"OK\r\n")
    t0 = time.monotonic()
    for i in range(300):
        assert sim.inject_uplink(bytes([i % 256]) * 100)
    assert time.monotonic() - t0 < 3.0  # the pty never blocks the simulator
    got = quiet(host, 0.3)
    assert 4000 <= len(got) < 300 * 223  # the kernel buffered some, the rest was lost
    xfer(host, b"AT\r\n", b"OK\r\n")  # once the host reads again, output flows


# -- reboots ---------------------------------------------------------------------------------------------------
def test_atz_reboots_before_any_status_and_settings_persist(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"AT+P2P=920600000:10:125:0:8:13\r\n", b"OK\r\n")
    xfer(host, b"AT+PRECV=65534\r\n", b"OK\r\n")
    host.write(b"ATZ\r\n")
    t0 = time.monotonic()
    boot = read_until(host, BANNER_TAIL)
    assert time.monotonic() - t0 >= BOOT * 0.8
    assert boot.startswith(b"RAKwireless") and boot.endswith(BANNER_TAIL)  # no status before the banner
    assert b"OK" not in boot
    assert sim.wait_for(lambda: sim.awake, 2)
    assert not sim.rx_on and sim.rx_mode is None
    xfer(host, b"AT+P2P=?\r\n", b"AT+P2P=920600000:10:0:0:8:13\r\nOK\r\n")
    xfer(host, b"AT+PRECV=?\r\n", b"AT+PRECV=P2P_RX_OFF\r\nOK\r\n")


def test_runtime_only_p2p_setting_is_lost_on_reboot(sim: SimRak3172, host: serial.Serial) -> None:
    xfer(host, b"AT+P2P=920600000:10:125:0:8:13\r\n", b"OK\r\n")
    xfer(host, b"AT+P2P=922000000:12:250:1:8:13:1\r\n", b"OK\r\n")
    xfer(host, b"AT+P2P=?\r\n", b"AT+P2P=922000000:12:1:1:8:13\r\nOK\r\n")
    sim.reboot(noise=False)
    read_until(host, BANNER_TAIL)
    assert sim.wait_for(lambda: sim.awake, 2)
    xfer(host, b"AT+P2P=?\r\n", b"AT+P2P=920600000:10:0:0:8:13\r\nOK\r\n")


def test_power_cycle_is_deaf_then_noisy_then_banner(tmp_path: object) -> None:
    with running(tmp_path, boot_delay_s=0.3) as (sim, host):
        xfer(host, b"AT+PRECV=65534\r\n", b"OK\r\n")
        sim.reboot(noise=True)
        assert not sim.inject_uplink(b"\x01")  # a rebooting module hears nothing
        host.write(b"AT\r\n")  # lost: the UART is deaf while booting
        assert quiet(host, 0.2) == b""
        boot = read_until(host, BANNER_TAIL, timeout=3)
        assert boot.endswith(BANNER_TAIL)
        noise = boot[: boot.index(b"RAKwireless")]
        assert noise and b"\r" not in noise and b"\n" not in noise
        assert sim.commands == ["AT+PRECV=65534"]
        xfer(host, b"AT\r\n", b"OK\r\n")
        assert sim.boots == 2


# -- unplug / replug -------------------------------------------------------------------------------------------
def test_unplug_and_replug(tmp_path: object) -> None:
    link = os.path.join(str(tmp_path), "lora0")
    sim = make(tmp_path, link=link)
    sim.start()
    try:
        assert sim.path == link and os.path.exists(link)
        host = open_host(sim)
        xfer(host, b"AT\r\n", b"OK\r\n")
        sim.unplug()
        assert not os.path.exists(link)
        with pytest.raises(serial.SerialException):
            for _ in range(20):  # the first read after the hang-up may still return b"" on some kernels
                host.read(1)
        host.close()
        with pytest.raises(serial.SerialException):
            open_host(sim)
        sim.replug()
        assert os.path.exists(link)
        assert sim.wait_for(lambda: sim.awake, 2)
        with open_host(sim) as host2:
            xfer(host2, b"AT\r\n", b"OK\r\n")
    finally:
        sim.stop()


# -- baud rate -------------------------------------------------------------------------------------------------
def test_wrong_baud_gives_garbage_both_ways(sim: SimRak3172) -> None:
    with open_host(sim, baudrate=9600) as host:
        host.write(b"AT\r\n")
        got = quiet(host, 0.3)
        # The module heard garbage (never a terminator), so it has not answered at all.
        assert got == b"" and sim.commands == []
        banners = []
        for _ in range(2):
            sim.reboot(noise=False)
            assert sim.wait_for(lambda: sim.awake, 2)
            banners.append(quiet(host, 0.2))
        # The banner arrives as framing-error garbage: nothing readable, and the same garbage every time.
        assert banners[0] and b"RAK" not in banners[0] and b"\r" not in banners[0] and b"\n" not in banners[0]
        assert banners[0] == banners[1]
        assert banners[0].startswith(baud_garble(b"RAKwireless RAK3172-E Example\r\n", 115200, 9600))


def test_baud_switches_before_ok(sim: SimRak3172) -> None:
    with open_host(sim) as host:
        host.write(b"AT+BAUD=9600\r\n")
        got = quiet(host, 0.3)
        assert got == baud_garble(b"OK\r\n", 9600, 115200)  # OK came at the new rate
        assert b"OK" not in got
        host.baudrate = 9600
        xfer(host, b"AT+BAUD=?\r\n", b"AT+BAUD=9600\r\nOK\r\n")
        sim.reboot(noise=False)
        assert read_until(host, BANNER_TAIL).endswith(BANNER_TAIL)  # the rate persists
        assert sim.wait_for(lambda: sim.awake, 2)
        host.write(b"AT+BAUD=115200\r\n")
        assert quiet(host, 0.3) == baud_garble(b"OK\r\n", 115200, 9600)
        host.baudrate = 115200
        xfer(host, b"AT\r\n", b"OK\r\n")


# -- faults ----------------------------------------------------------------------------------------------------
def test_fault_drop(sim: SimRak3172, host: serial.Serial) -> None:
    sim.faults.drop_probability = 1.0
    host.write(b"AT\r\n")
    assert quiet(host, 0.2) == b""
    assert sim.faults.counts["drop"] == 1 and sim.commands == ["AT"]


def test_fault_duplicate(sim: SimRak3172, host: serial.Serial) -> None:
    sim.faults.duplicate_probability = 1.0
    xfer(host, b"AT+PSF=?\r\n", b"AT+PSF=7\r\nAT+PSF=7\r\nOK\r\nOK\r\n")
    assert sim.faults.counts["duplicate"] == 2


def test_fault_garbage_prefix(sim: SimRak3172, host: serial.Serial) -> None:
    sim.faults.garbage_probability = 1.0
    host.write(b"AT\r\n")
    got = read_until(host, b"OK\r\n")
    assert got.endswith(b"OK\r\n") and len(got) > 4
    assert b"\r" not in got[:-4] and b"\n" not in got[:-4]
    assert sim.faults.counts["garbage"] == 1


def test_fault_truncate(sim: SimRak3172, host: serial.Serial) -> None:
    sim.faults.truncate_probability = 1.0
    host.write(b"AT+PSF=?\r\n")
    got = quiet(host, 0.3)
    # Both lines cut short: no terminator at all, each fragment a prefix of its line.
    assert b"\r\n" not in got and got.startswith(b"A") and got.endswith(b"O")
    assert sim.faults.counts["truncate"] == 2
    sim.faults.truncate_probability = 0.0
    xfer(host, b"AT\r\n", b"OK\r\n")


def test_fault_split_keeps_content(sim: SimRak3172, host: serial.Serial) -> None:
    sim.faults.split_probability = 1.0
    xfer(host, b"AT+P2P=?\r\n", b"AT+P2P=868000000:7:0:0:8:14\r\nOK\r\n")
    assert sim.port.faults.split_probability == 1.0


def test_inject_garbage(sim: SimRak3172, host: serial.Serial) -> None:
    sim.inject_garbage(b"\xfc\xfc\xfc")
    xfer(host, b"AT\r\n", b"\xfc\xfc\xfcOK\r\n")
