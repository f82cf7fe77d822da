"""Fault injection shared by the simulated radio modules.

A real module on a real cable does not always deliver clean lines: bytes arrive in odd pieces, a reset leaves
``00``/``FF``/``FC FC FC`` on the wire, a brown-out cuts a line short, a UART at the wrong baud rate turns every
byte into framing-error garbage. The simulators push every line they send through :class:`ModuleFaults` so a
test can switch each of these on with a probability and then compare what it injected (``counts``) with what the
agent says it saw.

Counter keys in :attr:`ModuleFaults.counts` (stable, tests use them): ``garbage``, ``truncate``, ``duplicate``,
``drop``. Splitting is done by :class:`drivers.sim._pty.PtyPort` itself and is not counted here.
"""

from __future__ import annotations

import collections
import hashlib
import random
from dataclasses import dataclass, field

from drivers.sim._pty import WriteFaults

__all__ = [
    "FAULT_KEYS",
    "ModuleFaults",
    "baud_garble",
    "bauds_match",
    "noise_bytes",
]

#: The keys ``ModuleFaults.counts`` uses, one per injectable line fault.
FAULT_KEYS = ("garbage", "truncate", "duplicate", "drop")

# What a UART commonly produces around a reset or a glitch (docs/protocols.md "Suggested simulator scope";
# hideakitai/ES920 treats FC FC FC at 115200 as a reset artefact).
_TYPICAL_GARBAGE = (b"\x00", b"\xff", b"\xfc\xfc\xfc", b"\x00\x00", b"\xff\xff")

# Bytes a host UART typically sees when the line runs at another rate than the one it listens at: mostly
# framing errors that read as runs of zeros or ones in the high bits. None of them is printable ASCII or a line
# terminator, so garbled output can never be mistaken for a status such as "OK\r\n".
_WRONG_BAUD_BYTES = bytes((0x00, 0x80, 0xC0, 0xE0, 0xF0, 0xF8, 0xFC, 0xFE, 0xFF, 0x86, 0x98, 0xE6, 0x9E))


def _random_garbage(rng: random.Random, *, max_len: int = 8) -> bytes:
    """Random bytes without CR or LF, so one garbage burst corrupts exactly one line (counts stay comparable)."""
    n = rng.randint(1, max_len)
    return bytes(rng.choice([b for b in range(256) if b not in (0x0A, 0x0D)]) for _ in range(n))


def noise_bytes(rng: random.Random) -> bytes:
    """A short burst of the noise a module leaves on the line around a reset or glitch.

    Args:
        rng: random source.

    Returns:
        1–8 bytes, never containing CR or LF.
    """
    if rng.random() < 0.75:
        return rng.choice(_TYPICAL_GARBAGE)
    return _random_garbage(rng)


@dataclass
class ModuleFaults:
    """Probabilities (0..1) applied per line the module sends to the host; all off by default.

    Attributes:
        split_probability: chance that one write is cut at random offsets; forwarded to ``PtyPort.faults``
            (see :meth:`forward_to`), which does the cutting.
        garbage_probability: chance of random garbage bytes (``00``, ``FF``, ``FC FC FC`` or random, never CR/LF)
            written just before the line, so the host sees them glued to the line's start.
        truncate_probability: chance the line is cut short: its tail, including the terminator, is lost, so the
            next line the module sends follows directly after the fragment.
        duplicate_probability: chance the line is sent twice.
        drop_probability: chance the line is lost entirely.
        rng: random source; seed it for reproducible runs.
        counts: how many of each fault were injected, keyed by :data:`FAULT_KEYS`.
    """

    split_probability: float = 0.0
    garbage_probability: float = 0.0
    truncate_probability: float = 0.0
    duplicate_probability: float = 0.0
    drop_probability: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    counts: collections.Counter[str] = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        for name in ("split_probability", "garbage_probability", "truncate_probability",
                     "duplicate_probability", "drop_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {value!r}")

    @property
    def active(self) -> bool:
        """True when any fault has a non-zero probability."""
        return any((self.split_probability, self.garbage_probability, self.truncate_probability,
                    self.duplicate_probability, self.drop_probability))

    def forward_to(self, port_faults: WriteFaults) -> None:
        """Copy the split probability and random source onto a PtyPort's write faults.

        Simulators call this before each write so a test may change ``split_probability`` at any time.
        """
        port_faults.split_probability = self.split_probability
        port_faults.rng = self.rng

    def apply(self, line: bytes, *, terminator: bytes = b"\r\n") -> list[bytes]:
        """Decide what actually goes on the wire for one logical line.

        Faults are drawn in this order: drop (then nothing else applies), garbage prefix, truncation,
        duplication (a truncated line is not duplicated: the cut models the module losing the rest).

        Args:
            line: the complete line as the module would send it, terminator included.
            terminator: the line terminator, so truncation knows what the tail is.

        Returns:
            The chunks to write, in order (empty when the line is dropped). Each chunk is one write, so the
            port's split fault applies to each separately.
        """
        if not self.active or not line:
            return [line] if line else []
        rng = self.rng
        if self.drop_probability and rng.random() < self.drop_probability:
            self.counts["drop"] += 1
            return []
        chunks: list[bytes] = []
        if self.garbage_probability and rng.random() < self.garbage_probability:
            self.counts["garbage"] += 1
            chunks.append(noise_bytes(rng))
        body_len = len(line) - len(terminator) if line.endswith(terminator) else len(line)
        # A line with fewer than 2 bytes before its terminator cannot be cut "short" without becoming a drop.
        if body_len >= 2 and self.truncate_probability and rng.random() < self.truncate_probability:
            self.counts["truncate"] += 1
            chunks.append(line[: rng.randint(1, body_len - 1)])
            return chunks
        chunks.append(line)
        if self.duplicate_probability and rng.random() < self.duplicate_probability:
            self.counts["duplicate"] += 1
            chunks.append(line)
        return chunks


def bauds_match(module_baud: int, host_baud: int | None) -> bool:
    """Whether the host can read what the module sends.

    An unknown host rate (None: unplugged, or termios not readable) counts as a match, because then the bytes
    are lost anyway or we cannot tell; treating it as a mismatch would invent garbage.
    """
    return host_baud is None or host_baud == module_baud


def baud_garble(data: bytes, module_baud: int, host_baud: int) -> bytes:
    """What the host reads when the module sends ``data`` at ``module_baud`` but the host listens at ``host_baud``.

    Deterministic (same input, same output) but meaningless, like a real UART: when the host is faster, each
    module byte spans several host character times and shows up as one or two framing-error bytes; when the
    host is slower, several module bytes merge into one. The output never contains printable ASCII, CR or LF.

    Args:
        data: the bytes the module meant to send.
        module_baud: the module's UART rate, in bits per second.
        host_baud: the host's UART rate, in bits per second.

    Returns:
        The garbled bytes (empty only when ``data`` is empty).
    """
    if not data:
        return b""
    seed = hashlib.blake2b(f"{module_baud}/{host_baud}".encode(), digest_size=8).digest()
    table = _WRONG_BAUD_BYTES
    out = bytearray()
    if host_baud >= module_baud:
        per_byte = 2 if host_baud >= 2 * module_baud else 1
        for i, b in enumerate(data):
            k = b ^ seed[i % len(seed)]
            out.append(table[k % len(table)])
            if per_byte == 2 and (k >> 4) & 1:
                out.append(table[(k >> 3) % len(table)])
    else:
        group = max(1, round(module_baud / host_baud))
        for i in range(0, len(data), group):
            k = 0
            for b in data[i : i + group]:
                k = (k * 31 + b) & 0xFF
            out.append(table[(k ^ seed[(i // group) % len(seed)]) % len(table)])
    return bytes(out)
