"""drivers.portread: the radio thread's one-select-one-read path on a real pty opened by pyserial."""

from __future__ import annotations

import os
import pty
import threading
import time

import pytest
import serial

from drivers.portread import fast_reader


@pytest.fixture
def port():
    master, slave = pty.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    p = serial.Serial(name, baudrate=115200, timeout=None)
    try:
        yield master, p
    finally:
        p.close()
        try:
            os.close(master)
        except OSError:
            pass


def test_reads_everything_waiting_in_one_call(port):
    master, p = port
    read = fast_reader(p)
    assert read is not None
    os.write(master, b"+EVT:RXP2P:-80:7:0102\r\n+EVT:RXP2P:-81:6:0304\r\n")
    time.sleep(0.05)
    assert read(1.0) == b"+EVT:RXP2P:-80:7:0102\r\n+EVT:RXP2P:-81:6:0304\r\n"


def test_times_out_empty(port):
    _, p = port
    read = fast_reader(p)
    t = time.monotonic()
    assert read(0.05) == b""
    assert 0.04 <= time.monotonic() - t < 1.0


def test_cancel_read_wakes_it_empty(port):
    _, p = port
    read = fast_reader(p)
    threading.Timer(0.05, p.cancel_read).start()
    t = time.monotonic()
    assert read(5.0) == b""
    assert time.monotonic() - t < 2.0
    os.write(port[0], b"OK\r\n")  # the cancel was consumed: the next read gets data, not a stale wake-up
    assert read(1.0) == b"OK\r\n"


def test_hang_up_is_a_serial_error(port):
    master, p = port
    read = fast_reader(p)
    os.close(master)
    with pytest.raises(serial.SerialException):
        read(1.0)


def test_other_ports_keep_pyserials_path():
    loop = serial.serial_for_url("loop://", timeout=0)
    try:
        assert fast_reader(loop) is None
    finally:
        loop.close()
    assert fast_reader(object()) is None
