"""What is left of a damaged journal: set the file aside (never delete it) and read back the unsent readings that
can still be read. agent.gateway.journal.open_or_recover starts a fresh journal with them.
"""

from __future__ import annotations

import os
import sqlite3

from agent.gateway.reading import LANES, Entry


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
    """Read whatever unsent readings can still be read from a damaged journal, oldest first.

    Rows are read by seq ranges through the primary key; a range that hits a damaged page is read again row by
    row, so one bad page costs only the rows on it.
    """
    out: list[Entry] = []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return out
    sql = "SELECT lane, node, fcnt, ts_us, body FROM reading WHERE seq BETWEEN ? AND ? ORDER BY seq"
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
            for lane, node, fcnt, ts_us, body in rows:
                if isinstance(body, str) and lane in range(len(LANES)):
                    out.append(Entry(lane, node, fcnt, ts_us, body))
    except sqlite3.Error:
        pass
    finally:
        db.close()
    return out
