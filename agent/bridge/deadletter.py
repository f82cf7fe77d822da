"""The dead-letter store: what the bridge can never write, kept with the reason, before its message is acknowledged.

An SQLite file (WAL, ``synchronous=FULL``), one row per rejected item:

==============  ================================================================================================
``stored_us``   when the bridge stored it, µs since the epoch
``reason``      short code: ``invalid_json``, ``invalid_schema``, ``unknown_schema``, ``wrong_gateway``,
                ``invalid_reading``, ``timestamp_before_2020``, ``not_finite``, ``rejected_by_server``
``detail``      what is wrong: the bridge's own check, or the database's error text
``topic``       the MQTT topic the message came on
``reading_id``  ``<gateway>/<node>/<fcnt>`` when known
``kind``        what ``content`` holds: ``payload`` (the raw MQTT payload), ``reading`` (one reading as JSON) or
                ``line`` (one line of line protocol)
``content``     the bytes themselves, so nothing is lost and an operator can fix and replay them
==============  ================================================================================================

Inspect it with ``sqlite3 <path> 'SELECT reason, detail, reading_id FROM dead_letter'``.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.bridge.errors import BridgeError

__all__ = ["DeadLetter", "DeadLetterStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letter (
    id          INTEGER PRIMARY KEY,
    stored_us   INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    topic       TEXT,
    reading_id  TEXT,
    kind        TEXT NOT NULL CHECK (kind IN ('payload', 'reading', 'line')),
    content     BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letter_reason ON dead_letter (reason);
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One item for the store (see the module docstring for the fields)."""

    reason: str
    detail: str
    kind: str
    content: bytes
    topic: str | None = None
    reading_id: str | None = None


class DeadLetterStore:
    """Owned by one thread (the bridge's writer); open, add in one transaction per batch, close.

    Raises:
        BridgeError: the file cannot be created or written (the bridge must not acknowledge then).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise BridgeError(f"cannot open the dead-letter store {self.path}: {exc} (check dead_letter.path and "
                              "that the bridge's user may write there)") from exc

    def add(self, items: Iterable[DeadLetter]) -> int:
        """Store items durably, in one transaction; returns how many."""
        now = time.time_ns() // 1000
        rows = [(now, d.reason, d.detail, d.topic, d.reading_id, d.kind, d.content) for d in items]
        if not rows:
            return 0
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT INTO dead_letter (stored_us, reason, detail, topic, reading_id, kind, content) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            raise BridgeError(f"cannot write to the dead-letter store {self.path}: {exc}") from exc
        return len(rows)

    def count(self, reason: str | None = None) -> int:
        """Items stored (of one reason, or all)."""
        if reason is None:
            return self._db.execute("SELECT count(*) FROM dead_letter").fetchone()[0]
        return self._db.execute("SELECT count(*) FROM dead_letter WHERE reason = ?", (reason,)).fetchone()[0]

    def items(self, reason: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        """Stored items, oldest first."""
        where, args = ("WHERE reason = ?", (reason, limit)) if reason else ("", (limit,))
        rows = self._db.execute(
            f"SELECT reason, detail, kind, content, topic, reading_id FROM dead_letter {where} ORDER BY id LIMIT ?",
            args).fetchall()
        return [DeadLetter(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]

    def close(self) -> None:
        self._db.close()
