"""Meshtastic's serial stream framing: the bytes around every FromRadio/ToRadio protobuf on a USB serial port.

Each protobuf travels as ``0x94 0xC3 <length: 2 bytes big-endian> <protobuf>``, length at most 512 (meshtastic
python ``stream_interface.py``: ``START1``, ``START2``, ``HEADER_LEN = 4``, ``MAX_TO_FROM_RADIO_SIZE = 512``; the
firmware's ``StreamAPI`` reads the same). Bytes outside a frame are the device's debug console text (before a
client has asked for the config) or line noise. A client wakes a sleeping device and resets the device's
frame reader by sending 32 bytes of ``0xC3`` first (``stream_interface.connect``).

The python library drops every byte that does not fit and restarts at the next byte. This parser is stricter
about losing good frames, because a frame may hold a hiker's SOS:

* a header whose length is over 512, or a frame the caller rejects (its protobuf does not parse), is not skipped
  whole: the search for ``0x94 0xC3`` restarts at the byte after its ``0x94``, so a good frame hidden behind a
  truncated one (the device rebooted mid-frame) is still found;
* a partial frame that sees no new byte for :data:`STALE_US` is given up the same way, so a frame cut short is
  not completed with the bytes of the next one arriving seconds later.

Standard library only: the fuzz target and the simulator use it without the protobufs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Generic, TypeVar

__all__ = ["HEADER_LEN", "MAX_PAYLOAD", "STALE_US", "START1", "START2", "WAKE", "StreamParser", "frame"]

START1: Final = 0x94
START2: Final = 0xC3
HEADER_LEN: Final = 4
MAX_PAYLOAD: Final = 512
#: What a client writes before its first frame: wakes the device and resyncs its reader (no START1 in it).
WAKE: Final = bytes([START2]) * 32
#: A partial frame older than this when the next bytes arrive is given up, in microseconds. At 115200 baud a
#: whole 516-byte frame takes 45 ms; a USB serial device writes it in one or a few pieces.
STALE_US: Final = 1_000_000
#: Bytes outside frames kept for the caller to look at (console text), the most recent ones.
OUTSIDE_KEEP: Final = 256

T = TypeVar("T")


def frame(payload: bytes) -> bytes:
    """Wrap one serialized protobuf in the stream header.

    Raises:
        ValueError: the payload is over :data:`MAX_PAYLOAD` bytes.
    """
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a stream frame holds at most {MAX_PAYLOAD} bytes, got {len(payload)}")
    return bytes((START1, START2, len(payload) >> 8, len(payload) & 0xFF)) + payload


class StreamParser(Generic[T]):
    """Finds frames in the bytes read from a port, whatever pieces they arrive in.

    Args:
        accept: turns a frame's payload into a message, or returns None when it is not one (a protobuf that does
            not parse); then the frame's bytes are searched again from the byte after its ``0x94``.
        problem: told about each problem: ``("oversize", detail)``, ``("stale", detail)``,
            ``("rejected", detail)``.

    Attributes:
        outside: bytes seen outside frames since :meth:`take_outside` (at most :data:`OUTSIDE_KEEP`, the newest).
        outside_count: how many bytes outside frames since :meth:`take_outside`.
        frames: frames accepted so far.
    """

    def __init__(self, accept: Callable[[bytes], T | None],
                 problem: Callable[[str, str], None] | None = None) -> None:
        self._accept = accept
        self._problem = problem or (lambda kind, detail: None)
        self._buf = bytearray()  # from a START1 on (a frame in progress), never more than one frame long
        self._last_us: int | None = None
        self.outside = bytearray()
        self.outside_count = 0
        self.frames = 0

    def feed(self, chunk: bytes, now_us: int) -> list[T]:
        """Parse one read's bytes.

        Args:
            chunk: the bytes read.
            now_us: when they were read, in microseconds (any monotonic-enough clock; compared with the last).

        Returns:
            The messages of every frame completed by this chunk, in order.
        """
        out: list[T] = []
        if self._buf and self._last_us is not None and now_us - self._last_us > STALE_US:
            self._problem("stale", f"frame cut short after {len(self._buf)} bytes")
            data = bytes(self._buf[1:]) + chunk
            self._buf.clear()
        else:
            data = bytes(self._buf) + chunk if self._buf else chunk
            self._buf.clear()
        self._last_us = now_us
        self._scan(data, out)
        return out

    def take_outside(self) -> tuple[int, bytes]:
        """How many bytes were seen outside frames, and the newest of them; both reset."""
        result = self.outside_count, bytes(self.outside)
        self.outside_count = 0
        self.outside.clear()
        return result

    def reset(self) -> None:
        """Forget a frame in progress and the outside bytes (a new port, a rebooted device)."""
        self._buf.clear()
        self._last_us = None
        self.take_outside()

    def _skip(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self.outside_count += end - start
            self.outside += data[max(start, end - OUTSIDE_KEEP):end]
            del self.outside[:-OUTSIDE_KEEP]

    def _scan(self, data: bytes, out: list[T]) -> None:
        i, n = 0, len(data)
        while i < n:
            at = data.find(START1, i)
            if at < 0:
                self._skip(data, i, n)
                return
            self._skip(data, i, at)
            if at + 1 >= n:
                self._buf += data[at:]  # a START1 at the end: wait for the next byte
                return
            if data[at + 1] != START2:
                self._skip(data, at, at + 1)
                i = at + 1
                continue
            if at + HEADER_LEN > n:
                self._buf += data[at:]
                return
            length = data[at + 2] << 8 | data[at + 3]
            if length > MAX_PAYLOAD:
                self._problem("oversize", f"frame header says {length} bytes, at most {MAX_PAYLOAD} exist")
                self._skip(data, at, at + 1)
                i = at + 1
                continue
            end = at + HEADER_LEN + length
            if end > n:
                self._buf += data[at:]
                return
            message = self._accept(data[at + HEADER_LEN:end])
            if message is None:
                self._problem("rejected", f"a {length}-byte frame is not a message")
                self._skip(data, at, at + 1)
                i = at + 1
                continue
            self.frames += 1
            out.append(message)
            i = end
