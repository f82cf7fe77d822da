"""The denen node frame, version 1 (docs/protocols.md §9): the wire contract for sensor firmware.

Layout, all integers big-endian::

    offset  size  field
    0       1     high nibble version (= 1); low nibble flags: bit0 MIC present, bit1 receipt requested,
                  bit2 downlink (gateway -> node), bit3 reserved (must be 0)
    1       4     node id, uint32
    5       4     frame counter, uint32 (strictly increasing per node; the gateway enforces this, not this module)
    9       1     kind (drivers.codec.kinds)
    10      n     body: Cayenne LPP records
    10+n    4     MIC, only with flag bit0: first 4 bytes of AES-128-CMAC(node key, bytes 0 .. 9+n)

:func:`parse` checks structure only and needs no key; :func:`verify` checks the MIC. Keys are never put in
exception messages or reprs.
"""

from __future__ import annotations

import functools
import hmac
import struct
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Final

from drivers.codec import cmac
from drivers.errors import FrameError

__all__ = [
    "FLAG_DOWNLINK",
    "FLAG_MIC",
    "FLAG_RECEIPT",
    "HEADER_SIZE",
    "KEY_SIZE",
    "KIND_RECEIPT",
    "MIC_SIZE",
    "VERSION",
    "ClockCounters",
    "NodeFrame",
    "build",
    "build_receipt",
    "clock_counter_floor",
    "compute_mic",
    "mic_checker",
    "parse",
    "split",
    "verify",
]

VERSION: Final = 1
FLAG_MIC: Final = 0x1
FLAG_RECEIPT: Final = 0x2
FLAG_DOWNLINK: Final = 0x4
_FLAG_RESERVED: Final = 0x8

HEADER_SIZE: Final = 10
"""Bytes before the body: flags/version, node id, counter, kind."""
MIC_SIZE: Final = 4
KEY_SIZE: Final = 16
KIND_RECEIPT: Final = 0x7F

_HEADER = struct.Struct(">BIIB")
_UINT32_MAX: Final = 0xFFFF_FFFF


@dataclass(frozen=True, slots=True)
class NodeFrame:
    """One parsed denen node frame.

    Attributes:
        version: protocol version from the high nibble of byte 0 (always 1 after :func:`parse`).
        flags: the low nibble of byte 0 (``FLAG_*``).
        node_id: sending (uplink) or addressed (downlink) node, uint32.
        counter: frame counter, uint32.
        kind: kind code (see ``drivers.codec.kinds``).
        body: the LPP body bytes, possibly empty.
        mic: the 4 MIC bytes, or None when the MIC flag is clear.
        signed: the bytes the MIC covers (offset 0 .. 9+n); the whole frame when there is no MIC.
    """

    version: int
    flags: int
    node_id: int
    counter: int
    kind: int
    body: bytes
    mic: bytes | None
    signed: bytes = field(repr=False)

    @property
    def has_mic(self) -> bool:
        """True when the frame carries a MIC (flag bit0)."""
        return bool(self.flags & FLAG_MIC)

    @property
    def receipt_requested(self) -> bool:
        """True when the node asks for a receipt (flag bit1)."""
        return bool(self.flags & FLAG_RECEIPT)

    @property
    def downlink(self) -> bool:
        """True for a gateway -> node frame (flag bit2)."""
        return bool(self.flags & FLAG_DOWNLINK)

    @property
    def node_hex(self) -> str:
        """The node id as 8 lowercase hex digits, e.g. ``00a1b2c3``."""
        return f"{self.node_id:08x}"


def parse(data: bytes | bytearray | memoryview) -> NodeFrame:
    """Split a frame into its fields; checks structure only, no key needed.

    Checks run in this order: length >= 10, version, reserved flag, length >= 14 when the MIC flag is set.

    Args:
        data: the frame as received (bytes, bytearray or memoryview).

    Raises:
        FrameError: ``frame_short`` (under 10 bytes, or under 14 with the MIC flag), ``frame_version`` (high
            nibble of byte 0 is not 1), ``frame_reserved_flag`` (flag bit3 set).
    """
    return NodeFrame(VERSION, *split(data))


def split(data: bytes | bytearray | memoryview) -> tuple[int, int, int, int, bytes, bytes | None, bytes]:
    """:func:`parse` without building a :class:`NodeFrame`, for the gateway's per-frame hot path.

    Same checks, same errors, same field values as :func:`parse` (which is built on it).

    Returns:
        ``(flags, node_id, counter, kind, body, mic, signed)``, as the :class:`NodeFrame` attributes of the same
        names; the version is always :data:`VERSION`.

    Raises:
        FrameError: as :func:`parse`.
    """
    data = bytes(data)
    length = len(data)
    if length < HEADER_SIZE:
        raise FrameError("frame_short", f"frame is {length} bytes, a header needs {HEADER_SIZE}")
    first, node_id, counter, kind = _HEADER.unpack_from(data)
    version = first >> 4
    flags = first & 0x0F
    if version != VERSION:
        raise FrameError("frame_version", f"frame version {version} (byte 0 = 0x{first:02x}), expected {VERSION}")
    if flags & _FLAG_RESERVED:
        raise FrameError("frame_reserved_flag", f"reserved flag bit3 set (byte 0 = 0x{first:02x})")
    if flags & FLAG_MIC:
        if length < HEADER_SIZE + MIC_SIZE:
            raise FrameError(
                "frame_short",
                f"frame is {length} bytes, a header with MIC needs {HEADER_SIZE + MIC_SIZE}",
            )
        signed = data[:-MIC_SIZE]
        return flags, node_id, counter, kind, signed[HEADER_SIZE:], data[-MIC_SIZE:], signed
    # A frame without MIC: the whole frame is "signed" (NodeFrame.signed), so no copy of it is made.
    return flags, node_id, counter, kind, data[HEADER_SIZE:], None, data


def _check_key(key: object) -> bytes:
    # The message names only the type and length: key bytes must never reach a log.
    if not isinstance(key, (bytes, bytearray, memoryview)):
        raise FrameError("frame_bad_key", f"key must be {KEY_SIZE} bytes, got {type(key).__name__}")
    key = bytes(key)
    if len(key) != KEY_SIZE:
        raise FrameError("frame_bad_key", f"key must be {KEY_SIZE} bytes, got {len(key)} bytes")
    return key


# Bound to libcrypto when the codec is imported, which the agent does at start-up: a missing or broken libcrypto
# is a clear CmacUnavailable then, never an error at the first signed frame.
cmac.load()


@functools.lru_cache(maxsize=1024)
def _cmac_template(key: bytes) -> cmac.AesCmac:
    # One keyed libcrypto context per node key, duplicated for every frame (AesCmac.tag): the key schedule is
    # done once, and the context is never written, so sharing it between threads is safe. The bound keeps memory
    # flat even if keys are rotated often; an evicted context is freed when its last checker goes.
    return cmac.AesCmac(key)


def compute_mic(key: bytes | bytearray | memoryview, data: bytes | bytearray | memoryview) -> bytes:
    """Compute the frame MIC: the first 4 bytes of AES-128-CMAC(key, data).

    Args:
        key: the node's 16-byte AES key.
        data: the covered bytes (``NodeFrame.signed``).

    Raises:
        FrameError: ``frame_bad_key`` when the key is not 16 bytes.
    """
    return _cmac_template(_check_key(key)).tag(bytes(data))[:MIC_SIZE]


def verify(frame: NodeFrame, key: bytes) -> bool:
    """Check a frame's MIC under ``key`` in constant time.

    Returns:
        True only when the frame carries a MIC and it matches. A frame without MIC returns False: whether such a
        frame is acceptable is the node policy's decision, not the codec's.

    Raises:
        FrameError: ``frame_bad_key`` when the key is not 16 bytes.
    """
    expected = compute_mic(key, frame.signed)
    if frame.mic is None:
        return False
    return hmac.compare_digest(expected, frame.mic)


def mic_checker(key: bytes | bytearray | memoryview) -> Callable[[bytes, bytes | None], bool]:
    """:func:`verify` bound to one key, for a caller that checks many frames of the same node.

    The key is checked once, here; each call then costs one duplicate of the key's prepared CMAC context (about
    2.5 µs through ctypes on the 2-core dev box; :func:`verify` also validates the key and looks its context up).

    Args:
        key: the node's 16-byte AES key.

    Returns:
        ``check(signed, mic)``: True only when ``mic`` (the frame's 4 MIC bytes, or None when the frame has no
        MIC) is the MIC of ``signed`` (``NodeFrame.signed``, bytes) under the key, compared in constant time; for
        ``mic=None`` it returns False, as :func:`verify` does.

    Raises:
        FrameError: ``frame_bad_key`` when the key is not 16 bytes.
    """
    tag = _cmac_template(_check_key(key)).tag
    compare = hmac.compare_digest

    def check(signed: bytes, mic: bytes | None) -> bool:
        if mic is None:
            return False
        return compare(tag(signed)[:MIC_SIZE], mic)

    return check


def _check_uint(name: str, value: object, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise FrameError("frame_bad_field", f"{name} must be an int in 0..{maximum}, got {value!r}")
    return value


def build(
    node_id: int,
    counter: int,
    kind: int,
    body: bytes = b"",
    *,
    key: bytes | None = None,
    receipt: bool = False,
    downlink: bool = False,
) -> bytes:
    """Assemble a frame; the MIC flag is set and the MIC appended if and only if ``key`` is given.

    Args:
        node_id: uint32 node id.
        counter: uint32 frame counter.
        kind: kind code 0..255.
        body: LPP body bytes.
        key: the node's 16-byte key, or None for a frame without MIC.
        receipt: set flag bit1 (ask the gateway for a receipt).
        downlink: set flag bit2 (gateway -> node).

    Raises:
        FrameError: ``frame_bad_field`` for an out-of-range integer, ``frame_bad_key`` for a key that is not
            16 bytes.
    """
    _check_uint("node_id", node_id, _UINT32_MAX)
    _check_uint("counter", counter, _UINT32_MAX)
    _check_uint("kind", kind, 0xFF)
    flags = (FLAG_MIC if key is not None else 0) | (FLAG_RECEIPT if receipt else 0) | (FLAG_DOWNLINK if downlink else 0)
    frame = _HEADER.pack(VERSION << 4 | flags, node_id, counter, kind) + bytes(body)
    if key is not None:
        frame += compute_mic(key, frame)
    return frame


def build_receipt(node_id: int, counter: int, key: bytes | None = None) -> bytes:
    """Assemble the receipt downlink for an acknowledged uplink (docs/protocols.md §9, gateway rules).

    Args:
        node_id: the node that sent the uplink.
        counter: the acknowledged uplink's counter.
        key: the node's key when it has one (then the receipt carries a MIC).
    """
    return build(node_id, counter, KIND_RECEIPT, b"", key=key, downlink=True)


def clock_counter_floor(received_us: int) -> int:
    """The smallest clock counter for a frame read at ``received_us`` (µs since the Unix epoch): Unix seconds."""
    return max(0, received_us // 1_000_000)


class ClockCounters:
    """Frame counters for frames a driver builds from what it reads (Modbus polls, Meshtastic packets).

    A counter is the Unix time in seconds, or the previous counter of the same key + 1 when frames come faster;
    the previous counters are remembered for the process's lifetime. So the counters keep rising across port
    reopens and agent restarts with no state of their own, as the decoder's window for unsigned frames needs
    (docs/protocols.md §9). A clock stepped back makes a node's frames replays until it passes the last counter.
    Each key belongs to one radio's worker thread.
    """

    def __init__(self) -> None:
        self._last: dict[Hashable, int] = {}

    def next(self, key: Hashable, received_us: int) -> int | None:
        """The counter of ``key``'s next frame, read at ``received_us`` (µs since the epoch); None once it would
        pass the uint32 range (not before 2106), and nothing is remembered then."""
        counter = max(self._last.get(key, -1) + 1, clock_counter_floor(received_us))
        if counter > _UINT32_MAX:
            return None
        self._last[key] = counter
        return counter
