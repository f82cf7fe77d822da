"""What of the receipt sender outlives a restart: the boot clock its snapshot is stamped with, and the check of a
snapshot read back from the journal (agent.gateway.receipts, "Across restarts"). A snapshot is hostile input: it is
checked field by field and refused whole at the first problem.
"""

from __future__ import annotations

import functools
import re
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass

from agent.gateway.receipt_airtime import _HOUR_US
from drivers.codec.frame import build_receipt

#: ``schema`` of :meth:`ReceiptSender.snapshot`.
SNAPSHOT_SCHEMA = "denen.receipts/1"
_SNAPSHOT_MAX_SENDS = 4096  # entries a snapshot may hold; more is damage
_SNAPSHOT_MAX_PENDING = 10_000  # the largest max_pending
_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
_BOOT_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@functools.cache
def _boot_id() -> str | None:
    try:
        with open(_BOOT_ID_PATH, encoding="ascii") as f:
            text = f.read(64).strip()
    except (OSError, ValueError):
        return None
    return text if _BOOT_ID_RE.fullmatch(text) else None


def boot_clock() -> tuple[str | None, int]:
    """This boot's id and ``CLOCK_BOOTTIME``, in µs: a time that runs on across process restarts (and suspend).

    Returns:
        ``(boot_id, boottime_us)``; the boot id (``/proc/sys/kernel/random/boot_id``, read once) is None where the
        kernel offers none, and then no time can be carried across a restart.
    """
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:
        return None, time.monotonic_ns() // 1000
    return _boot_id(), time.clock_gettime_ns(boottime) // 1000


@dataclass(frozen=True)
class Snapshot:
    """A snapshot that passed :func:`parse_snapshot`."""

    boot_id: str | None
    boottime_us: int
    frequency_hz: int
    sends: list[tuple[int, int]]  # (µs before the snapshot the transmission ended, µs on air)
    pending: list[tuple[bytes, int, int]]  # (frame, µs since its request, failed attempts)


def _int(value: object, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{what} must be a whole number {low}..{high}, got {str(value)[:40]!r}")
    return value


def parse_snapshot(snap: object) -> Snapshot:
    """Check a snapshot field by field; ValueError naming the first problem. Unknown keys are ignored."""
    if not isinstance(snap, Mapping):
        raise ValueError(f"not an object but {type(snap).__name__}")
    if snap.get("schema") != SNAPSHOT_SCHEMA:
        raise ValueError(f"schema is {str(snap.get('schema'))[:40]!r}, expected {SNAPSHOT_SCHEMA!r}")
    boot_id = snap.get("boot_id")
    if boot_id is not None and not (isinstance(boot_id, str) and _BOOT_ID_RE.fullmatch(boot_id)):
        raise ValueError(f"boot_id {str(boot_id)[:40]!r} is not a boot id")
    boottime_us = _int(snap.get("boottime_us"), "boottime_us", 0, 2**63 - 1)
    frequency_hz = _int(snap.get("frequency_hz"), "frequency_hz", 1, 10**10)
    sends_in = snap.get("airtime")
    if not isinstance(sends_in, list) or len(sends_in) > _SNAPSHOT_MAX_SENDS:
        raise ValueError(f"airtime must be a list of at most {_SNAPSHOT_MAX_SENDS} entries")
    sends: list[tuple[int, int]] = []
    for i, entry in enumerate(sends_in):
        if not isinstance(entry, list) or len(entry) != 2:
            raise ValueError(f"airtime[{i}] must be [ago_us, airtime_us]")
        sends.append((_int(entry[0], f"airtime[{i}] ago_us", 0, 2**63 - 1),
                      _int(entry[1], f"airtime[{i}] airtime_us", 1, _HOUR_US)))
    if sum(u for _, u in sends) > _HOUR_US:
        raise ValueError("airtime adds up to more than an hour of transmission in one hour")
    pending_in = snap.get("pending")
    if not isinstance(pending_in, list) or len(pending_in) > _SNAPSHOT_MAX_PENDING:
        raise ValueError(f"pending must be a list of at most {_SNAPSHOT_MAX_PENDING} entries")
    pending: list[tuple[bytes, int, int]] = []
    for i, entry in enumerate(pending_in):
        if not isinstance(entry, Mapping):
            raise ValueError(f"pending[{i}] must be an object")
        text = entry.get("frame")
        if not isinstance(text, str) or len(text) > 64:
            raise ValueError(f"pending[{i}].frame must be hex text")
        try:
            frame = bytes.fromhex(text)
        except ValueError:
            raise ValueError(f"pending[{i}].frame is not hex: {text[:40]!r}") from None
        # Only a receipt can come back: the header must be exactly the one build_receipt makes for its node and
        # counter; the MIC (when the flag says there is one) cannot be checked without the key.
        if len(frame) not in (10, 14):
            raise ValueError(f"pending[{i}].frame is {len(frame)} bytes, a receipt is 10 or 14")
        node_id, counter = struct.unpack_from(">II", frame, 1)
        expected = build_receipt(node_id, counter, bytes(16) if len(frame) == 14 else None)
        if frame[:10] != expected[:10] or len(frame) != len(expected):
            raise ValueError(f"pending[{i}].frame {text[:40]} is not a receipt frame")
        pending.append((frame, _int(entry.get("age_us"), f"pending[{i}].age_us", 0, 2**63 - 1),
                        _int(entry.get("attempts"), f"pending[{i}].attempts", 0, 1000)))
    return Snapshot(boot_id, boottime_us, frequency_hz, sends, pending)
