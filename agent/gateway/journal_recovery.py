"""What is left of a damaged journal: set the file aside (never delete it) and read back the unsent readings that
can still be read. agent.gateway.journal.open_or_recover starts a fresh journal with them.

Two passes, because a bad sector can hit any page. Through SQLite, by seq ranges: a range that hits a damaged page
is read again row by row. That cannot get past a damaged interior page of the reading table, which hides every leaf
under it (with 1 KiB pages one interior page holds ~90 leaves, ~2,500 readings). So the file is also read page by
page in SQLite's documented format (https://www.sqlite.org/fileformat2.html, §1.3, §1.6, §2.1, §4): every table
leaf page whose cells have the reading table's shape gives back its rows, whatever the pages above it hold.
"""

from __future__ import annotations

import json
import mmap
import os
import sqlite3
import struct
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator

from agent.gateway.reading import LANES, Entry

_HEADER = b"SQLite format 3\x00"
_TABLE_LEAF = 0x0D
CHUNK = 5000  # readings salvaged per chunk: each is committed to the fresh journal before the next is read
_MAX_OVERFLOW_PAGES = 1 << 12  # a chain longer than any reading body could need is damage, not data


def set_aside(path: str, *, now_us: int) -> str:
    """Move a damaged journal (and its WAL and shared-memory files) aside; returns the new name of the main file.

    The damaged file is kept, never deleted: someone may want to recover more from it by hand.
    """
    aside = f"{path}.damaged-{now_us}"
    for suffix in ("", "-wal", "-shm"):
        try:
            os.replace(path + suffix, aside + suffix)
        except FileNotFoundError:
            pass
    return aside


def salvage(path: str) -> list[Entry]:
    """Every reading :func:`salvage_chunks` gives, in one list."""
    return [entry for chunk in salvage_chunks(path) for entry in chunk]


def salvage_chunks(path: str) -> Iterator[list[Entry]]:
    """Read whatever unsent readings can still be read from a damaged journal, in chunks of at most
    :data:`CHUNK` readings, so that memory stays bounded whatever the size of the file (a journal may hold its
    whole quota, 256 MB by default, on a Pi with 512 MB).

    First what SQLite reaches, oldest first (by seq); then the rows only the page-by-page pass finds, oldest first
    within each chunk. A row is given only if it is a well-formed reading (known lane, node, frame counter, time,
    and a body that is a JSON object), so garbage on a damaged page never becomes a reading; a row both passes find
    is given once.
    """
    _checkpoint(path)
    reached = array("q")  # the seqs SQLite gave back, ascending: 8 bytes each
    chunk: list[Entry] = []
    for seq, entry in _rows_through_sqlite(path):
        reached.append(seq)
        chunk.append(entry)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
    extra: dict[int, Entry] = {}
    for seq, entry in _rows_in_pages(path):
        at = bisect_left(reached, seq)
        if at < len(reached) and reached[at] == seq:
            continue
        extra.setdefault(seq, entry)
        if len(extra) >= CHUNK:
            yield [extra[s] for s in sorted(extra)]
            extra = {}
    if extra:
        yield [extra[s] for s in sorted(extra)]


def _checkpoint(path: str) -> None:
    """Copy the committed frames of the set-aside file's WAL into it, so that reading its pages sees every commit.

    SQLite checks each frame's checksum and takes only whole transactions. The content of the database does not
    change. If this fails (the schema page is damaged), the SQLite pass still reads through the WAL.
    """
    if not os.path.exists(path + "-wal"):
        return
    try:
        db = sqlite3.connect(path, timeout=0)
    except sqlite3.Error:
        return
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.Error:
        pass
    finally:
        db.close()


def _reading(lane: object, node: object, fcnt: object, ts_us: object, body: object) -> Entry | None:
    """The row as an Entry, or None when any of its values is not what the reading table holds."""
    if not (type(lane) is int and 0 <= lane < len(LANES) and isinstance(node, str) and type(fcnt) is int
            and type(ts_us) is int and isinstance(body, str)):
        return None
    try:
        if not isinstance(json.loads(body), dict):
            return None
    except ValueError:
        return None
    return Entry(lane, node, fcnt, ts_us, body)


def _rows_through_sqlite(path: str) -> Iterator[tuple[int, Entry]]:
    """(seq, entry) of every reading SQLite can still reach through the table's b-tree."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return
    sql = "SELECT seq, lane, node, fcnt, ts_us, body FROM reading WHERE seq BETWEEN ? AND ? ORDER BY seq"
    try:
        top = 0
        for query in ("SELECT seq FROM sqlite_sequence WHERE name='reading'", "SELECT MAX(seq) FROM reading"):
            try:
                row = db.execute(query).fetchone()
            except sqlite3.Error:
                continue
            top = max(top, (row[0] or 0) if row else 0)
        for start in range(1, top + 1, 256):
            stop = min(top, start + 255)
            try:
                rows = db.execute(sql, (start, stop)).fetchall()
            except sqlite3.Error:
                rows = []
                for seq in range(start, stop + 1):
                    try:
                        rows += db.execute(sql, (seq, seq)).fetchall()
                    except sqlite3.Error:
                        continue  # this row sits on a damaged page
            for seq, *values in rows:
                if (entry := _reading(*values)) is not None:
                    yield seq, entry
    except sqlite3.Error:
        pass
    finally:
        db.close()


def _rows_in_pages(path: str) -> Iterator[tuple[int, Entry]]:
    """(seq, entry) of every cell with the reading table's shape on a table leaf page of the file.

    Pages on the freelist are skipped: a page freed by a build without secure_delete still holds the cells of
    readings that were sent and deleted, which must not come back.
    """
    try:
        with open(path, "rb") as f:
            # mapped, not read: a journal may be as large as its quota (256 MB by default) on a Pi with 512 MB
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # ValueError: an empty file cannot be mapped
        return
    try:
        yield from _rows_in_mapped(data)
    finally:
        data.close()


def _rows_in_mapped(data: mmap.mmap) -> Iterator[tuple[int, Entry]]:
    """_rows_in_pages over the mapped file."""
    if len(data) < 512 or data[:16] != _HEADER:
        return
    page_size = int.from_bytes(data[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return
    usable = page_size - data[20]
    if usable < 480:
        return
    pages = len(data) // page_size
    if data[24:28] == data[92:96]:  # the header's page count is current (§1.3.7): pages past it are stale
        pages = min(pages, int.from_bytes(data[28:32], "big") or pages)
    free = _freelist(data, page_size, pages)

    def page(number: int) -> bytes:
        return data[(number - 1) * page_size: number * page_size]

    for number in range(2, pages + 1):  # page 1 is the schema's
        if number in free:
            continue
        body = page(number)
        if body[0] != _TABLE_LEAF:
            continue
        for seq, values in _leaf_cells(body, usable, page):
            if len(values) in (6, 7) and values[0] is None and (entry := _reading(*values[1:6])) is not None:
                yield seq, entry


def _freelist(data: mmap.mmap, page_size: int, pages: int) -> set[int]:
    """Page numbers on the freelist (trunk and leaf pages), as far as it can be followed (file format §1.5)."""
    free: set[int] = set()
    trunk = int.from_bytes(data[32:36], "big")
    while 1 < trunk <= pages and trunk not in free:
        free.add(trunk)
        at = (trunk - 1) * page_size
        count = int.from_bytes(data[at + 4: at + 8], "big")
        leaves = data[at + 8: at + 8 + 4 * min(count, page_size // 4 - 2)]
        free.update(int.from_bytes(leaves[i: i + 4], "big") for i in range(0, len(leaves), 4))
        trunk = int.from_bytes(data[at: at + 4], "big")
    return free


def _leaf_cells(body: bytes, usable: int, page: Callable[[int], bytes]) -> Iterator[tuple[int, list[object]]]:
    """(rowid, record values) of each cell of a table leaf page that parses; a cell that does not is skipped."""
    count = int.from_bytes(body[3:5], "big")
    for i in range(min(count, (usable - 8) // 2)):
        at = int.from_bytes(body[8 + 2 * i: 10 + 2 * i], "big")
        try:
            size, at = _varint(body, at)
            rowid, at = _varint(body, at)
            payload = _payload(body, at, size, usable, page)
            yield rowid, _record(payload)
        except (ValueError, IndexError, UnicodeDecodeError, struct.error):
            continue


def _payload(body: bytes, at: int, size: int, usable: int, page: Callable[[int], bytes]) -> bytes:
    """A cell's payload of ``size`` bytes starting at ``at``, followed into overflow pages if it spills (§1.6)."""
    most = usable - 35
    if size <= most:
        if at + size > usable:
            raise ValueError("cell runs off its page")
        return body[at: at + size]
    least = (usable - 12) * 32 // 255 - 23
    local = least + (size - least) % (usable - 4)
    local = local if local <= most else least
    if at + local + 4 > usable:
        raise ValueError("cell runs off its page")
    parts = [body[at: at + local]]
    left = size - local
    following = int.from_bytes(body[at + local: at + local + 4], "big")
    for _ in range(_MAX_OVERFLOW_PAGES):
        if left <= 0:
            break
        overflow = page(following)
        if len(overflow) < usable:
            raise ValueError("overflow page outside the file")
        take = min(left, usable - 4)
        parts.append(overflow[4: 4 + take])
        left -= take
        following = int.from_bytes(overflow[:4], "big")
    if left > 0:
        raise ValueError("overflow chain too long")
    return b"".join(parts)


def _varint(buf: bytes, at: int) -> tuple[int, int]:
    """SQLite's big-endian variable-length integer at ``at`` (1 to 9 bytes); returns (value, next offset)."""
    value = 0
    for i in range(8):
        byte = buf[at + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    return (value << 8) | buf[at + 8], at + 9


_INT_WIDTH = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


def _record(payload: bytes) -> list[object]:
    """The values of a record (§2.1): integers, floats, text (UTF-8) and blobs by their serial types."""
    header, at = _varint(payload, 0)
    if header > len(payload):
        raise ValueError("record header runs off its payload")
    types = []
    while at < header:
        kind, at = _varint(payload, at)
        types.append(kind)
    values: list[object] = []
    at = header
    for kind in types:
        if kind == 0:
            width, value = 0, None
        elif kind in _INT_WIDTH:
            width = _INT_WIDTH[kind]
            value = int.from_bytes(payload[at: at + width], "big", signed=True)
        elif kind == 7:
            width, value = 8, struct.unpack(">d", payload[at: at + 8])[0]
        elif kind in (8, 9):
            width, value = 0, kind - 8
        elif kind >= 12:
            width = (kind - 12) // 2
            raw = payload[at: at + width]
            value = raw.decode("utf-8") if kind & 1 else raw
        else:
            raise ValueError(f"reserved serial type {kind}")
        if at + width > len(payload):
            raise ValueError("record value runs off its payload")
        values.append(value)
        at += width
    return values
