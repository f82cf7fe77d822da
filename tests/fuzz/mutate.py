"""Structure-aware mutation: small edits of valid inputs, the kind of damage a radio link, a UART or an editor does.

Everything takes a :class:`random.Random`, so an input is a pure function of its seed and can be regenerated from
(seed, target, index) alone -- that is how the dedicated run reports and replays an input without storing it.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

__all__ = [
    "INTERESTING_BYTES",
    "INTERESTING_NUMBERS",
    "chunk",
    "mutate_bytes",
    "mutate_text",
    "random_bytes",
    "shrink",
    "small",
]

T = TypeVar("T")

#: Bytes that sit on boundaries: NUL, sign bits, all-ones, the terminators and separators of the AT protocols.
INTERESTING_BYTES = (0x00, 0x01, 0x02, 0x06, 0x0A, 0x0D, 0x20, 0x2C, 0x3A, 0x7F, 0x80, 0xFE, 0xFF)

#: Numbers as text that break naive parsers: signs, overflow, float specials, digit separators, other bases.
INTERESTING_NUMBERS = (
    "0", "-0", "1", "-1", "7", "255", "256", "-129", "32767", "-32768", "65535", "65536", "2147483647",
    "4294967295", "4294967296", "18446744073709551616", "9" * 40, "-" + "9" * 40, "1e400", "-1e400", "1e-400",
    "nan", "NaN", "inf", "-inf", "Infinity", ".nan", ".inf", "-.inf", "1_000", "0x1F", "0o17", "0b101", "1.5",
    "-0.0", "1e3", "٣", "",
)


def small(rng: random.Random, mean: float, cap: int) -> int:
    """A small non-negative int, exponentially distributed with ``mean``, at most ``cap``. (Hypothesis' Random
    may return the extremes of ``random()``, which make ``expovariate`` infinite, hence the clamp.)"""
    value = rng.expovariate(1 / mean)
    return cap if not value < cap else max(0, int(value))


def random_bytes(rng: random.Random, max_len: int = 64) -> bytes:
    """Uniform random bytes, length 0..max_len (short lengths more likely)."""
    n = small(rng, 12, max_len)
    return rng.randbytes(n)


def _span(rng: random.Random, n: int) -> tuple[int, int]:
    """A random [start, end) inside 0..n, short spans more likely."""
    start = rng.randrange(n + 1)
    length = min(small(rng, 4, n) + 1, n - start)
    return start, start + length


_DIGITS = re.compile(rb"-?\d+(?:\.\d+)?")


def mutate_bytes(rng: random.Random, data: bytes, *, tokens: Sequence[bytes] = (), pool: Sequence[bytes] = (),
                 rounds: int | None = None, max_len: int = 4096) -> bytes:
    """Apply 1..n random edits to ``data``.

    Args:
        rng: the input's random source.
        data: a (usually valid) input.
        tokens: protocol words to insert or overwrite with (``+EVT:``, ``OK``, ``\\r\\n`` ...).
        pool: other valid inputs to splice from.
        rounds: number of edits; default 1..8, one or two most likely.
        max_len: the result is cut to this length.
    """
    buf = bytearray(data)
    n_rounds = rounds if rounds is not None else 1 + small(rng, 1.4, 7)
    for _ in range(n_rounds):
        op = rng.randrange(16)
        n = len(buf)
        if op == 0 and n:  # flip one bit
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # overwrite a byte with a boundary value
            buf[rng.randrange(n)] = rng.choice(INTERESTING_BYTES)
        elif op == 2 and n:  # overwrite a byte with anything
            buf[rng.randrange(n)] = rng.randrange(256)
        elif op == 3:  # insert random bytes
            i = rng.randrange(n + 1)
            buf[i:i] = random_bytes(rng, 16)
        elif op == 4 and n:  # delete a span
            a, b = _span(rng, n)
            del buf[a:b]
        elif op == 5 and n:  # duplicate a span in place
            a, b = _span(rng, n)
            buf[b:b] = buf[a:b]
        elif op == 6 and n:  # truncate
            del buf[rng.randrange(n):]
        elif op == 7 and tokens:  # insert a protocol word
            i = rng.randrange(n + 1)
            buf[i:i] = rng.choice(tokens)
        elif op == 8 and tokens and n:  # overwrite with a protocol word
            tok = rng.choice(tokens)
            i = rng.randrange(n)
            buf[i:i + len(tok)] = tok
        elif op == 9 and pool:  # splice: our head, another input's tail
            other = rng.choice(pool)
            buf = buf[: rng.randrange(n + 1)] + bytearray(other[rng.randrange(len(other) + 1):])
        elif op == 10 and n:  # small arithmetic on a byte (off-by-one lengths, counters, flags)
            i = rng.randrange(n)
            buf[i] = (buf[i] + rng.choice((-2, -1, 1, 2, 16, -16))) & 0xFF
        elif op == 11 and n >= 2:  # swap two bytes
            i, j = rng.randrange(n), rng.randrange(n)
            buf[i], buf[j] = buf[j], buf[i]
        elif op == 12:  # replace a decimal number with a troublesome one
            matches = list(_DIGITS.finditer(buf))
            if matches:
                m = rng.choice(matches)
                buf[m.start():m.end()] = rng.choice(INTERESTING_NUMBERS).encode()
            else:
                buf[rng.randrange(n + 1):0] = rng.choice(INTERESTING_NUMBERS).encode()
        elif op == 13 and n:  # repeat a span many times (long lines, length fields that lie)
            a, b = _span(rng, n)
            buf[b:b] = bytes(buf[a:b]) * rng.randrange(2, 64)
        elif op == 14 and n:  # case flip of ASCII letters in a span (hex digits, keywords)
            a, b = _span(rng, n)
            buf[a:b] = bytes(buf[a:b]).swapcase()
        else:  # append random bytes
            buf += random_bytes(rng, 8)
    return bytes(buf[:max_len])


def mutate_text(rng: random.Random, text: str, *, tokens: Sequence[str] = (), pool: Sequence[str] = (),
                rounds: int | None = None, max_len: int = 20_000) -> str:
    """Apply 1..n random edits to text: line edits (delete, duplicate, move, re-indent), word and number swaps,
    protocol tokens, and character damage (always valid ``str``: what a UTF-8 file decodes to)."""
    n_rounds = rounds if rounds is not None else 1 + small(rng, 1.7, 9)
    lines = text.split("\n")
    for _ in range(n_rounds):
        op = rng.randrange(14)
        n = len(lines)
        i = rng.randrange(n)
        line = lines[i]
        if op == 0 and n > 1:
            del lines[i]
        elif op == 1:
            lines.insert(rng.randrange(n + 1), line)
        elif op == 2 and n > 1:
            j = rng.randrange(n)
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3:  # re-indent: YAML structure hangs on spaces
            stripped = line.lstrip(" ")
            lines[i] = " " * max(0, len(line) - len(stripped) + rng.choice((-4, -2, -1, 1, 2, 4))) + stripped
        elif op == 4:  # a token (YAML syntax, keys, values) somewhere in the line
            pos = rng.randrange(len(line) + 1)
            lines[i] = line[:pos] + rng.choice(tokens or ("x",)) + line[pos:]
        elif op == 5:  # replace the value after "key:" with a token or a troublesome number
            k, sep, _ = line.partition(":")
            if sep:
                new = rng.choice(tokens) if tokens and rng.random() < 0.5 else rng.choice(INTERESTING_NUMBERS)
                lines[i] = f"{k}: {new}"
        elif op == 6:  # replace a number
            nums = list(re.finditer(r"-?\d+(?:\.\d+)?", line))
            if nums:
                m = rng.choice(nums)
                lines[i] = line[: m.start()] + rng.choice(INTERESTING_NUMBERS) + line[m.end():]
        elif op == 7 and line:  # delete characters
            a = rng.randrange(len(line))
            lines[i] = line[:a] + line[a + 1 + small(rng, 2, 40):]
        elif op == 8:  # insert odd characters: tab, quotes, colon, NUL, non-ASCII, a lone CR
            pos = rng.randrange(len(line) + 1)
            ch = rng.choice(("\t", '"', "'", ":", ": ", "#", "\x00", "\r", "\u3000", "é", "\ufeff", "\\", "{", "[",
                             "&a ", "*a", "- ", "? ", "|", ">", "%", "@", "`", "!!str ", "<<: "))
            lines[i] = line[:pos] + ch + line[pos:]
        elif op == 9 and pool:  # splice a run of lines from another valid document
            other = rng.choice(pool).split("\n")
            a = rng.randrange(len(other))
            lines[i:i] = other[a:a + 1 + small(rng, 3, 40)]
        elif op == 10:  # typo in a key
            k, sep, rest = line.partition(":")
            if sep and k.strip():
                chars = list(k)
                j = rng.randrange(len(chars))
                chars[j] = rng.choice("abcdefghijklmnopqrstuvwxyz_")
                lines[i] = "".join(chars) + sep + rest
        elif op == 11:  # truncate the document
            del lines[i + 1:]
            lines[i] = line[: rng.randrange(len(line) + 1)]
        elif op == 12:  # a very long or repeated value
            lines[i] = line + rng.choice(("x", "0", " ", "[", "- a")) * rng.randrange(1, 300)
        else:  # random printable or not
            pos = rng.randrange(len(line) + 1)
            lines[i] = line[:pos] + "".join(chr(rng.randrange(0x20, 0x7F)) for _ in range(rng.randrange(1, 6))) \
                + line[pos:]
    return "\n".join(lines)[:max_len]


def chunk(rng: random.Random, data: bytes) -> list[bytes]:
    """Cut a byte stream into the reads a serial port might return: one read, a few, or byte by byte."""
    n = len(data)
    mode = rng.random()
    if n == 0:
        return [data]
    if mode < 0.3:
        return [data]
    if mode < 0.4 and n <= 64:
        return [data[i:i + 1] for i in range(n)]
    cuts = sorted(rng.randrange(1, n) for _ in range(min(n - 1, 1 + small(rng, 2.5, 64))))
    pieces, prev = [], 0
    for c in cuts:
        pieces.append(data[prev:c])
        prev = c
    pieces.append(data[prev:])
    return [p for p in pieces if p] or [data]


def shrink(start: T, smaller: Callable[[T], Iterable[T]], keeps: Callable[[T, T], bool], deadline: float) -> T:
    """Greedy minimisation of a failing input: the first candidate of ``smaller(best)`` that ``keeps(candidate,
    best)`` accepts becomes the best, and again, until no candidate is accepted or ``time.monotonic()`` passes
    ``deadline``."""
    best = start
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        for candidate in smaller(best):
            if time.monotonic() > deadline:
                break
            if keeps(candidate, best):
                best = candidate
                improved = True
                break
    return best
