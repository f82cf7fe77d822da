"""Reading a damaged SQLite file page by page, in SQLite's documented file format
(https://www.sqlite.org/fileformat2.html, cited by section), without SQLite: what salvage uses when a damaged page
of a b-tree hides the pages below it from SQLite itself.

The file is seen as SQLite would read it (:class:`Image`): the main file's pages, each replaced by its newest copy
in a committed transaction of the WAL, checked by the WAL's own salts and running checksums (§4). Nothing is ever
written: the damaged file is kept as it was, for whoever wants to recover more by hand. Every value read from the
file is bounded before it is used, so a page of garbage costs at most its own cells, never a loop or a large
allocation.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator

_HEADER = b"SQLite format 3\x00"
_TABLE_LEAF = 0x0D
_WAL_MAGIC = (0x377F0682, 0x377F0683)  # checksums over little- / big-endian words (§4.1)
MAX_PAYLOAD = 1 << 20  # bytes: no row of the journal is larger; a larger cell is damage


class Image:
    """The pages of a SQLite file and its WAL. Use as a context manager; both files are mapped, not read, since a
    journal may be as large as its quota (256 MB by default) on a Pi with 512 MB.

    Attributes:
        page_size: bytes per page; 0 when the file is not a SQLite database this can read.
        usable: bytes of a page that hold content (page size less the reserved bytes, §1.3.4).
        pages: the database's size in pages.
    """

    def __init__(self, path: str) -> None:
        self.page_size = self.usable = self.pages = 0
        self._main = _mapped(path)
        self._wal = _mapped(path + "-wal")
        self._in_wal: dict[int, int] = {}
        main = self._main
        if main is None or len(main) < 512 or main[:16] != _HEADER:
            return
        size = int.from_bytes(main[16:18], "big")
        size = 65536 if size == 1 else size
        if size < 512 or size & (size - 1) or size - main[20] < 480:
            return
        self.page_size, self.usable = size, size - main[20]
        committed_pages = 0
        if self._wal is not None:
            self._in_wal, committed_pages = _wal_pages(self._wal, size)
        first = self.page(1)
        pages = len(main) // size
        if committed_pages:
            pages = committed_pages  # the size of the database as of the last commit in the WAL (§4.1)
        elif first[24:28] == first[92:96] and int.from_bytes(first[28:32], "big"):
            pages = min(pages, int.from_bytes(first[28:32], "big"))  # §1.3.7: pages past it are stale
        self.pages = pages

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        for m in (self._main, self._wal):
            if m is not None:
                m.close()

    def page(self, number: int) -> bytes:
        """Page ``number`` (1-based) as SQLite would read it; shorter than a page when it is not in either file."""
        size = self.page_size
        if not 1 <= number <= max(self.pages, 1) or not size:
            return b""
        at = self._in_wal.get(number)
        if at is not None and self._wal is not None:
            return self._wal[at: at + size]
        assert self._main is not None
        return self._main[(number - 1) * size: number * size]

    def freelist(self) -> set[int]:
        """Page numbers on the freelist, trunks and leaves, as far as it can be followed (§1.5)."""
        free: set[int] = set()
        first = self.page(1)
        trunk = int.from_bytes(first[32:36], "big") if len(first) >= 36 else 0
        per_trunk = self.usable // 4 - 2
        while 1 < trunk <= self.pages and trunk not in free:
            free.add(trunk)
            body = self.page(trunk)
            count = min(int.from_bytes(body[4:8], "big"), per_trunk)
            leaves = body[8: 8 + 4 * count]
            free.update(int.from_bytes(leaves[i: i + 4], "big") for i in range(0, len(leaves), 4))
            trunk = int.from_bytes(body[:4], "big")
        return free

    def table_leaf_cells(self) -> Iterator[tuple[int, list[object]]]:
        """(rowid, record values) of every cell that parses on a table leaf page not on the freelist.

        A page freed by a build without secure_delete still holds the cells of rows that were deleted, which must
        not come back, so the freelist is skipped (the journal also turns secure_delete on).
        """
        free = self.freelist()
        for number in range(2, self.pages + 1):  # page 1 is the schema's
            if number in free:
                continue
            body = self.page(number)
            if len(body) == self.page_size and body[0] == _TABLE_LEAF:
                yield from self._cells(body, free)

    def _cells(self, body: bytes, free: set[int]) -> Iterator[tuple[int, list[object]]]:
        count = int.from_bytes(body[3:5], "big")
        for i in range(min(count, (self.usable - 8) // 2)):
            at = int.from_bytes(body[8 + 2 * i: 10 + 2 * i], "big")
            try:
                size, at = _varint(body, at)
                rowid, at = _varint(body, at)
                yield rowid, _record(self._payload(body, at, size, free))
            except (ValueError, IndexError, UnicodeDecodeError, struct.error):
                continue

    def _payload(self, body: bytes, at: int, size: int, free: set[int]) -> bytes:
        """A cell's payload of ``size`` bytes starting at ``at``, followed into overflow pages if it spills (§1.6)."""
        usable = self.usable
        most = usable - 35
        if size <= most:
            if at + size > usable:
                raise ValueError("cell runs off its page")
            return body[at: at + size]
        if size > MAX_PAYLOAD:
            raise ValueError("cell larger than any row")
        least = (usable - 12) * 32 // 255 - 23
        local = least + (size - least) % (usable - 4)
        local = local if local <= most else least
        if at + local + 4 > usable:
            raise ValueError("cell runs off its page")
        parts = [body[at: at + local]]
        left = size - local
        following = int.from_bytes(body[at + local: at + local + 4], "big")
        seen: set[int] = set()
        while left > 0:
            if not 1 < following <= self.pages or following in free or following in seen:
                raise ValueError("overflow chain leaves the table")
            seen.add(following)
            overflow = self.page(following)
            if len(overflow) < usable:
                raise ValueError("overflow page outside the file")
            take = min(left, usable - 4)
            parts.append(overflow[4: 4 + take])
            left -= take
            following = int.from_bytes(overflow[:4], "big")
        return b"".join(parts)


def _mapped(path: str) -> mmap.mmap | None:
    try:
        with open(path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # ValueError: an empty file cannot be mapped
        return None


def _wal_pages(wal: mmap.mmap, page_size: int) -> tuple[dict[int, int], int]:
    """({page number: offset of its newest committed copy in the WAL}, database size in pages after the last
    commit, 0 if none): the frames SQLite itself would read, from a valid header through the last commit frame whose
    salts and running checksum hold (§4.1-4.3). Frames after the first bad one are not read."""
    if len(wal) < 32:
        return {}, 0
    magic, _version, size = struct.unpack(">III", wal[:12])
    if magic not in _WAL_MAGIC or size != page_size:
        return {}, 0
    order = ">" if magic & 1 else "<"
    s1, s2 = _wal_checksum(wal[:24], 0, 0, order)
    if (s1, s2) != struct.unpack(">II", wal[24:32]):
        return {}, 0
    salts = wal[16:24]
    committed: dict[int, int] = {}
    pending: dict[int, int] = {}
    pages = 0
    at = 32
    while at + 24 + page_size <= len(wal):
        header = wal[at: at + 24]
        if header[8:16] != salts:
            break
        s1, s2 = _wal_checksum(header[:8], s1, s2, order)
        s1, s2 = _wal_checksum(wal[at + 24: at + 24 + page_size], s1, s2, order)
        if (s1, s2) != struct.unpack(">II", header[16:24]):
            break
        number, commit = struct.unpack(">II", header[:8])
        pending[number] = at + 24
        if commit:
            committed.update(pending)
            pending.clear()
            pages = commit
        at += 24 + page_size
    return committed, pages


def _wal_checksum(data: bytes, s1: int, s2: int, order: str) -> tuple[int, int]:
    """SQLite's running WAL checksum over ``data`` (a multiple of 8 bytes), continued from (s1, s2) (§4.3)."""
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s1 = (s1 + words[i] + s2) & 0xFFFFFFFF
        s2 = (s2 + words[i + 1] + s1) & 0xFFFFFFFF
    return s1, s2


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
