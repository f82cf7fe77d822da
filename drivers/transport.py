"""Serial transport: opening a port by URL and splitting its byte stream into lines.

Every port is opened through :func:`serial.serial_for_url`, so a device path (``/dev/ttyUSB0``), a udev link
(``/dev/lora0``), a simulator's pty, ``socket://host:port`` and ``loop://`` all take the same code path.

Reading is chunked: callers read ``port.read(port.in_waiting or 1)`` and hand the bytes to a
:class:`LineSplitter`, never ``readline()``. pyserial's ``readline()`` asks the OS for one byte per call, which
tops out around a thousand lines a second on a Pi; the splitter below works on whole chunks with C-level
``bytes`` operations and keeps only the unfinished tail between calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import serial

from drivers.errors import DriverError

__all__ = ["DEFAULT_MAX_LINE", "LineSplitter", "PortError", "open_serial"]

log = logging.getLogger(__name__)

#: Longest line kept, in bytes. RUI3's command buffer is 2048 bytes and an RX event for a 255-byte frame is about
#: 540 bytes; anything far beyond that is a stream without terminators (wrong baud rate, binary noise).
DEFAULT_MAX_LINE = 4096


class PortError(DriverError, OSError):
    """The serial port could not be opened, or failed while in use (unplugged, EIO, EOF)."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(f"{url}: {message}")
        self.url = url


def open_serial(url: str, *, baudrate: int, timeout: float | None, write_timeout: float | None = 2.0
                ) -> serial.SerialBase:
    """Open a serial port given as a pyserial URL.

    Args:
        url: a device path or any URL :func:`serial.serial_for_url` understands (``socket://``, ``loop://``,
            ``spy://``...).
        baudrate: line speed, in bits per second.
        timeout: read timeout, in seconds (None blocks until data arrives, 0 never blocks).
        write_timeout: write timeout, in seconds; a module that stops draining its UART (flow control stuck, device
            wedged) then surfaces as an error instead of hanging the caller forever.

    Returns:
        The open port, 8N1 with no flow control.

    Raises:
        PortError: the port does not exist, is busy, or the URL is not valid; the pyserial or OS error is chained.
    """
    try:
        return serial.serial_for_url(url, baudrate=baudrate, timeout=timeout, write_timeout=write_timeout)
    except (serial.SerialException, OSError, ValueError) as exc:
        # ValueError: unknown URL scheme or bad option; SerialException is an OSError subclass already.
        raise PortError(url, f"cannot open: {exc}") from exc


class LineSplitter:
    """Split a byte stream into lines, chunk by chunk.

    Any of ``terminators`` ends a line. With ``(b"\\r", b"\\n")`` (RUI3) a CR LF pair yields one line and an empty
    line, which ``skip_empty`` drops; with ``(b"\\r\\n",)`` (ES920LR) a lone CR or LF is part of the line.

    A line longer than ``max_line`` bytes is discarded up to its terminator and reported once through
    ``on_overflow`` (and counted in :attr:`overflows`), so a stream without terminators never grows memory
    beyond ``max_line`` plus one chunk.

    Args:
        terminators: byte strings that end a line, checked together (not in order).
        max_line: longest line kept, in bytes, terminator excluded.
        skip_empty: drop empty lines instead of returning ``b""``.
        on_overflow: called with the number of bytes thrown away each time a line overflows; the count covers
            what had arrived when the overflow was noticed.
    """

    __slots__ = ("_discarding", "_norm", "_others", "_tail", "max_line", "on_overflow", "overflows", "skip_empty")

    def __init__(self, terminators: Iterable[bytes] = (b"\r", b"\n"), *, max_line: int = DEFAULT_MAX_LINE,
                 skip_empty: bool = True, on_overflow: Callable[[int], None] | None = None) -> None:
        terms = tuple(terminators)
        if not terms or any(not t for t in terms):
            raise ValueError("terminators must be non-empty byte strings")
        if max_line < 1:
            raise ValueError("max_line must be positive")
        # Every terminator is rewritten to the first one, then one C-level split does the work.
        self._norm = terms[0]
        self._others = terms[1:]
        self._tail = b""
        self._discarding = False
        self.max_line = max_line
        self.skip_empty = skip_empty
        self.on_overflow = on_overflow
        self.overflows = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes from the port and return the lines they complete (terminators removed).

        Args:
            chunk: bytes as read, of any size; may end in the middle of a line or of a terminator.

        Returns:
            The complete lines, oldest first; the unfinished tail is kept for the next call.
        """
        data = self._tail + chunk if self._tail else chunk
        for other in self._others:
            if other in data:
                data = data.replace(other, self._norm)
        parts = data.split(self._norm)
        tail = parts.pop()
        if self._discarding and parts:
            # The first part is the end of a line already reported as overflowing.
            del parts[0]
            self._discarding = False
        if self.skip_empty:
            parts = [p for p in parts if p]
        # Only a chunk longer than the limit can hold an over-long line, so the common case skips the scan.
        if len(data) > self.max_line:
            parts = self._drop_long(parts)
        # The start of a terminator split across reads (the CR of a CR LF) is not line content: it is neither
        # counted against max_line nor thrown away with a discarded line, or the LF that follows would not end it.
        split = self._split_terminator(tail)
        if self._discarding:
            tail = tail[len(tail) - split:] if split else b""  # still inside a reported line: keep only that
        elif len(tail) - split > self.max_line:
            self._overflow(len(tail) - split)
            self._discarding = True
            tail = tail[len(tail) - split:] if split else b""
        # A split terminator (a lone CR of a CR LF, with CR LF as the terminator) stays in the tail, so the next
        # chunk completes it.
        self._tail = tail
        return parts

    def _split_terminator(self, tail: bytes) -> int:
        """Length of the longest proper prefix of the terminator that ``tail`` ends with (0 for one-byte ones)."""
        norm = self._norm
        for k in range(len(norm) - 1, 0, -1):
            if tail.endswith(norm[:k]):
                return k
        return 0

    def take_tail(self) -> bytes:
        """Remove and return the unfinished tail, for a caller that switches to another framing mid-stream."""
        tail, self._tail = self._tail, b""
        self._discarding = False
        return tail

    def reset(self) -> None:
        """Forget any partial line (after a reopen, or when the module rebooted)."""
        self._tail = b""
        self._discarding = False

    @property
    def pending(self) -> int:
        """Number of bytes held for an unfinished line."""
        return len(self._tail)

    def _drop_long(self, parts: list[bytes]) -> list[bytes]:
        limit = self.max_line
        kept = []
        for p in parts:
            if len(p) > limit:
                self._overflow(len(p))
            else:
                kept.append(p)
        return kept

    def _overflow(self, nbytes: int) -> None:
        self.overflows += 1
        log.debug("line overflow: %d bytes discarded (limit %d)", nbytes, self.max_line)
        if self.on_overflow is not None:
            self.on_overflow(nbytes)
