"""What is left of a damaged journal: set the file aside (never delete it) and read back the unsent readings that
can still be read. agent.gateway.journal.open_or_recover starts a fresh journal with them.

Two passes, because a bad sector can hit any page. Through SQLite, by seq: a key range that hits a damaged page is
stepped over. SQLite cannot get past a damaged interior page of the reading table, which hides every leaf under it
(with 1 KiB pages one interior page holds ~90 leaves, ~2,500 readings), so the file is also read page by page
(:mod:`agent.gateway.sqlite_pages`): every table leaf page whose cells have the reading table's shape gives back its
rows, whatever the pages above it hold. Neither pass writes to the damaged file.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator

from agent.gateway.reading import LANES, Entry
from agent.gateway.sqlite_pages import Image
from agent.i18n import _

log = logging.getLogger("agent.gateway.journal")

CHUNK = 5000  # readings salvaged per chunk: each is committed to the fresh journal before the next is read
_MAX_SEQ = (1 << 63) - 1


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


def salvage_into(path: str, commit: Callable[[list[Entry]], object]) -> int:
    """Hand each chunk :func:`salvage_chunks` reads to ``commit`` (the fresh journal's) before reading the next, so
    a damaged journal of any size is carried over in bounded memory; returns how many readings were salvaged."""
    count = 0
    for chunk in salvage_chunks(path):
        commit(chunk)
        count += len(chunk)
    return count


def salvage(path: str) -> list[Entry]:
    """Every reading :func:`salvage_chunks` gives, in one list."""
    return [entry for chunk in salvage_chunks(path) for entry in chunk]


def salvage_chunks(path: str) -> Iterator[list[Entry]]:
    """Read whatever unsent readings can still be read from a damaged journal, in chunks of at most
    :data:`CHUNK` readings, so that memory stays bounded whatever the size of the file (a journal may hold its
    whole quota, 256 MB by default, on a Pi with 512 MB). Never raises: salvage runs while the gateway starts again.

    First what SQLite reaches, oldest first (by seq); then the rows only the page-by-page pass finds, oldest first
    within each chunk. A row is given only if it is a well-formed reading (known lane, node, frame counter, time,
    and a body that is a JSON object), so garbage on a damaged page never becomes a reading; a row both passes find
    is given once.
    """
    reached = array("q")  # the seqs SQLite gave back, ascending: 8 bytes each
    chunk: list[Entry] = []
    for seq, entry in _guarded(_rows_through_sqlite(path), "sqlite"):
        reached.append(seq)
        chunk.append(entry)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
    extra: dict[int, Entry] = {}
    for seq, entry in _guarded(_rows_in_pages(path), "pages"):
        at = bisect_left(reached, seq)
        if at < len(reached) and reached[at] == seq:
            continue
        extra.setdefault(seq, entry)
        if len(extra) >= CHUNK:
            yield [extra[s] for s in sorted(extra)]
            extra = {}
    if extra:
        yield [extra[s] for s in sorted(extra)]


def _guarded(rows: Iterator[tuple[int, Entry]], part: str) -> Iterator[tuple[int, Entry]]:
    """``rows`` until the pass meets an error nothing expected: what it gave so far is kept, and the log says so."""
    try:
        yield from rows
    except Exception:  # noqa: BLE001 - a damaged file must never stop the gateway from starting again
        log.exception("%s", _("salvage: the {part} pass stopped on an unexpected error; the readings it had read are "
                              "kept").format(part=part))


def _reading(lane: object, node: object, fcnt: object, ts_us: object, body: object) -> Entry | None:
    """The row as an Entry, or None when any of its values is not what the reading table holds."""
    if not (type(lane) is int and 0 <= lane < len(LANES) and isinstance(node, str) and type(fcnt) is int
            and type(ts_us) is int and isinstance(body, str)):
        return None
    try:
        if not isinstance(json.loads(body), dict):
            return None
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        return None
    return Entry(lane, node, fcnt, ts_us, body)


def _rows_through_sqlite(path: str) -> Iterator[tuple[int, Entry]]:
    """(seq, entry) of every reading SQLite can still reach through the table's b-tree, oldest first.

    Read by key, 256 rows at a time. A range that hits a damaged page is stepped over, twice as far at each
    consecutive failure, so that even a damaged key near 2^63 costs some 60 steps; what is stepped over is read by
    the page pass.
    """
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return
    sql = "SELECT seq, lane, node, fcnt, ts_us, body FROM reading WHERE seq > ? ORDER BY seq LIMIT 256"
    try:
        last, step = 0, 256
        while True:
            try:
                rows = db.execute(sql, (last,)).fetchall()
            except sqlite3.Error:
                rows = None
            if rows == []:
                return
            keys = [r[0] for r in rows] if rows is not None else []
            if rows is None or not all(type(k) is int for k in keys) or keys != sorted(set(keys)) or keys[0] <= last:
                # a damaged page under this range, or a damaged tree giving keys out of order
                if last > _MAX_SEQ - step:
                    return
                last, step = last + step, step * 2
                continue
            step = 256
            for seq, *values in rows:
                if (entry := _reading(*values)) is not None:
                    yield seq, entry
            last = keys[-1]
    finally:
        db.close()


def _rows_in_pages(path: str) -> Iterator[tuple[int, Entry]]:
    """(seq, entry) of every cell with the reading table's shape on a table leaf page of the file (the seq is the
    cell's rowid; the record's first column, the seq's alias, is stored as NULL)."""
    with Image(path) as image:
        for seq, values in image.table_leaf_cells():
            if len(values) in (6, 7) and values[0] is None and (entry := _reading(*values[1:6])) is not None:
                yield seq, entry
