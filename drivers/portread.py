"""One wake-up, one read: what a POSIX serial port holds, read with one ``select`` and one ``read`` system call.

pyserial's ``read(in_waiting or 1)`` then ``read(in_waiting)`` costs two ``select`` calls, two ``TIOCINQ`` ioctls and
two ``read`` calls per frame, and setting ``timeout`` reconfigures termios; at field rates (one frame per wake-up)
that is most of the radio thread's work. Ports other than pyserial's POSIX ``Serial`` (``socket://``, test
doubles) keep pyserial's path: :func:`fast_reader` returns None for them.
"""

from __future__ import annotations

import errno
import os
import select
from collections.abc import Callable
from typing import Any

import serial

READ_MAX = 4096  # bytes taken per read: more than a burst of frames at 115,200 baud between two wake-ups

_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


def fast_reader(port: Any) -> Callable[[float], bytes] | None:
    """A ``read(timeout_s) -> bytes`` for ``port`` that waits up to ``timeout_s`` for data or ``cancel_read()``
    and returns what is there (b"" on timeout or cancel); None when ``port`` is not a pyserial POSIX port opened
    non-blocking with its cancel pipe.

    The reader raises ``serial.SerialException`` where pyserial's ``read`` would: a read error, or a device that
    reports readiness but returns nothing (unplugged).
    """
    posix = getattr(serial, "serialposix", None)
    if posix is None or type(port) is not posix.Serial:
        return None
    fd, abort = getattr(port, "fd", None), getattr(port, "pipe_abort_read_r", None)
    if not isinstance(fd, int) or not isinstance(abort, int) or os.get_blocking(fd):
        return None
    watch = [fd, abort]

    def read(timeout_s: float) -> bytes:
        try:
            ready, _, _ = select.select(watch, [], [], timeout_s)
            if abort in ready:
                os.read(abort, 1000)  # cancel_read(): the caller looks at its stop flag and transmit queue
                return b""
            if not ready:
                return b""
            data = os.read(fd, READ_MAX)
        except OSError as exc:
            if exc.errno in _AGAIN:
                return b""
            raise serial.SerialException(f"read failed: {exc}") from exc
        if not data:
            raise serial.SerialException("device reports readiness to read but returned no data "
                                         "(device disconnected or multiple access on port?)")
        return data

    return read
