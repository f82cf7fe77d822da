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

Read, replay and purge it with ``denen bridge dead-letters list|show|replay|purge`` (:mod:`agent.bridge.
deadletter_cli`), also while the bridge runs: every connection waits up to :data:`BUSY_TIMEOUT_MS` for another's
transaction, and the bridge notices rows removed by another process (``PRAGMA data_version``) before it evicts.

Bounded: a hostile gateway can send bad messages as fast as the broker lets it, so the store holds at most
``max_bytes`` of content (default 256 MiB); past that the oldest items go first, counted in :attr:`evicted`.
One item keeps at most ``max_item_bytes`` of its content (the rest is cut, and the detail says how much there
was). Every text column is stored as valid UTF-8 whatever the input (a lone surrogate becomes ``\\udXXX``). The
file is created owner-only and never opened through a symlink (:mod:`agent.securefile`).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.bridge.errors import BridgeError
from agent.i18n import N_, _
from agent.securefile import prepare_private_file

__all__ = ["BUSY_TIMEOUT_MS", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_ITEM_BYTES", "DeadLetter", "DeadLetterStore",
           "StoredItem"]

#: Default cap on the content the store holds, in bytes.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
#: Default cap on one item's content, in bytes.
DEFAULT_MAX_ITEM_BYTES = 1024 * 1024

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

#: How long a connection waits for another's write transaction (the bridge's, or a dead-letters command's), in ms.
BUSY_TIMEOUT_MS = 10_000

#: Bytes the WAL file is truncated to after a checkpoint.
_WAL_LIMIT = 4 * 1024 * 1024
#: Rows removed per eviction statement: big enough that a flood costs few statements, small enough to stay quick.
_EVICT_CHUNK = 500


def _text(value: str | None, limit: int = 4096) -> str | None:
    """Valid UTF-8 text for a column, whatever the input: lone surrogates escaped, cut at ``limit`` characters."""
    if value is None:
        return None
    if len(value) > limit:
        value = value[:limit] + f"... ({len(value) - limit} more characters)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One item for the store (see the module docstring for the fields)."""

    reason: str
    detail: str
    kind: str
    content: bytes
    topic: str | None = None
    reading_id: str | None = None


@dataclass(frozen=True, slots=True)
class StoredItem:
    """One row of the store: its id, when it was stored (µs since the epoch), its size in bytes, and the item
    (``content`` is empty when the row was listed without it)."""

    id: int
    stored_us: int
    size: int
    item: DeadLetter


class DeadLetterStore:
    """Owned by one thread (the bridge's writer); open, add in one transaction per batch, close.

    Args:
        path: the SQLite file.
        max_bytes: content held at most, in bytes; the oldest items are evicted past it.
        max_item_bytes: content kept of one item at most, in bytes.

    Raises:
        BridgeError: the file cannot be created or opened.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_item_bytes = max_item_bytes
        self.evicted = 0  # items removed to stay under max_bytes, since open
        self._db: sqlite3.Connection | None = None
        try:
            prepare_private_file(self.path, what=N_("dead-letter store"))
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # Set first: the journal_mode change below takes a lock a concurrent command may hold.
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            # After a checkpoint the WAL file is cut back to this size instead of staying at its largest, so the
            # files on disk stay near max_bytes (pages freed by eviction are reused by later items).
            self._db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT}")
            self._db.executescript(_SCHEMA)
            self._bytes = self._content_bytes()
            self._version = self._db.execute("PRAGMA data_version").fetchone()[0]
        except (sqlite3.Error, OSError) as exc:
            if self._db is not None:
                self._db.close()
            raise BridgeError(_("cannot open the dead-letter store {path}: {error} (check dead_letter.path and "
                                "that the bridge's user may write there)").format(path=self.path, error=exc)) from exc

    def _content_bytes(self) -> int:
        assert self._db is not None
        return self._db.execute("SELECT coalesce(sum(length(content)), 0) FROM dead_letter").fetchone()[0]

    def _sync(self) -> None:
        """Recount the content held when another connection changed the file (a purge or replay command)."""
        assert self._db is not None
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._version = version
            self._bytes = self._content_bytes()

    @property
    def bytes_held(self) -> int:
        """Content bytes in the store."""
        return self._bytes

    def add(self, items: Iterable[DeadLetter]) -> int:
        """Store items durably, in one transaction, evicting the oldest past ``max_bytes``; returns how many.

        Raises:
            BridgeError: the store cannot be written (disk full, file removed): nothing of this call was stored.
        """
        now = time.time_ns() // 1000
        cap = self.max_item_bytes
        rows = []
        for d in items:
            content, detail = bytes(d.content), d.detail
            if len(content) > cap:
                detail = f"{detail} [content cut to its first {cap} of {len(content)} bytes]"
                content = content[:cap]
            rows.append((now, _text(d.reason, 64), _text(detail), _text(d.topic, 1024), _text(d.reading_id, 256),
                         d.kind, content))
        if not rows:
            return 0
        stored = len(rows)
        added = sum(len(r[6]) for r in rows)
        dropped = 0
        while added > self.max_bytes and len(rows) > 1:
            # One batch larger than the whole store: its oldest items are the first to go, never written.
            added -= len(rows[0][6])
            rows = rows[1:]
            dropped += 1
        db = self._db
        assert db is not None
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                self._sync()
                # Room first, then the new items: the file never holds more than max_bytes plus one item.
                evicted, freed = self._evict(db, self._bytes + added - self.max_bytes)
                db.executemany(
                    "INSERT INTO dead_letter (stored_us, reason, detail, topic, reading_id, kind, content) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            raise BridgeError(_("cannot write to the dead-letter store {path}: {error}").format(
                path=self.path, error=exc)) from exc
        self._bytes += added - freed
        self.evicted += evicted + dropped
        return stored

    def _evict(self, db: sqlite3.Connection, excess: int) -> tuple[int, int]:
        """Delete the oldest rows until ``excess`` bytes are freed; returns (rows, bytes) removed."""
        rows = freed = 0
        while excess > freed:
            chunk = db.execute("SELECT id, length(content) FROM dead_letter ORDER BY id LIMIT ?",
                               (_EVICT_CHUNK,)).fetchall()
            if not chunk:
                break
            last = None
            for rid, size in chunk:
                last = rid
                rows += 1
                freed += size
                if freed >= excess:
                    break
            db.execute("DELETE FROM dead_letter WHERE id <= ?", (last,))
        return rows, freed

    def count(self, reason: str | None = None) -> int:
        """Items stored (of one reason, or all)."""
        assert self._db is not None
        if reason is None:
            return self._db.execute("SELECT count(*) FROM dead_letter").fetchone()[0]
        return self._db.execute("SELECT count(*) FROM dead_letter WHERE reason = ?", (reason,)).fetchone()[0]

    def items(self, reason: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        """Stored items, oldest first."""
        assert self._db is not None
        where, args = ("WHERE reason = ?", (reason, limit)) if reason else ("", (limit,))
        rows = self._db.execute(
            f"SELECT reason, detail, kind, content, topic, reading_id FROM dead_letter {where} ORDER BY id LIMIT ?",
            args).fetchall()
        return [DeadLetter(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]

    # -- reading and changing single rows (denen bridge dead-letters) ------------------------------------------
    def rows(self, *, ids: Iterable[int] | None = None, reason: str | None = None, since_us: int | None = None,
             before_us: int | None = None, limit: int | None = None) -> list[StoredItem]:
        """Rows matching every filter given, oldest first, without their content (``size`` says how large).

        Args:
            ids: only these ids.
            reason: only this reason.
            since_us, before_us: only rows stored at or after / before this time, µs since the epoch.
            limit: the newest ``limit`` rows of those (still listed oldest first).
        """
        where, args = self._where(ids, reason, since_us, before_us)
        sql = (f"SELECT id, stored_us, length(content), reason, detail, kind, topic, reading_id FROM dead_letter"
               f"{where} ORDER BY id DESC")
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        assert self._db is not None
        rows = self._db.execute(sql, args).fetchall()
        return [StoredItem(r[0], r[1], r[2], DeadLetter(r[3], r[4], r[5], b"", r[6], r[7])) for r in reversed(rows)]

    def get(self, item_id: int) -> StoredItem | None:
        """One row with its content, or None when there is no such id."""
        assert self._db is not None
        r = self._db.execute("SELECT id, stored_us, length(content), reason, detail, kind, topic, reading_id, "
                             "content FROM dead_letter WHERE id = ?", (item_id,)).fetchone()
        if r is None:
            return None
        return StoredItem(r[0], r[1], r[2], DeadLetter(r[3], r[4], r[5], bytes(r[8]), r[6], r[7]))

    @staticmethod
    def _where(ids: Iterable[int] | None, reason: str | None, since_us: int | None,
               before_us: int | None) -> tuple[str, list[object]]:
        clauses: list[str] = []
        args: list[object] = []
        if ids is not None:
            id_list = sorted(set(ids))
            clauses.append(f"id IN ({','.join('?' * len(id_list))})" if id_list else "0")
            args.extend(id_list)
        if reason is not None:
            clauses.append("reason = ?")
            args.append(reason)
        if since_us is not None:
            clauses.append("stored_us >= ?")
            args.append(since_us)
        if before_us is not None:
            clauses.append("stored_us < ?")
            args.append(before_us)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), args

    def delete(self, *, ids: Iterable[int] | None = None, reason: str | None = None, before_us: int | None = None,
               everything: bool = False) -> int:
        """Delete the rows matching every filter given (at least one filter, or ``everything``); returns how many.

        Raises:
            ValueError: no filter and not ``everything``.
            BridgeError: the store cannot be written.
        """
        if ids is None and reason is None and before_us is None and not everything:
            raise ValueError("delete needs ids, a reason, a time or everything=True")
        where, args = self._where(ids, reason, None, before_us)
        assert self._db is not None
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                freed = self._db.execute(f"SELECT coalesce(sum(length(content)), 0) FROM dead_letter{where}",
                                         args).fetchone()[0]
                count = self._db.execute(f"DELETE FROM dead_letter{where}", args).rowcount
            self._bytes -= freed
        except sqlite3.Error as exc:
            raise BridgeError(_("cannot change the dead-letter store {path}: {error}").format(
                path=self.path, error=exc)) from exc
        return count

    def settle(self, item_id: int, remaining: list[DeadLetter]) -> str:
        """Record the outcome of replaying row ``item_id``, in one transaction.

        Nothing remaining: the row is removed (``"removed"``). One item of the row's kind: the row stays, with that
        item's reason, detail and content (``"kept"``). Otherwise the row is replaced by the remaining items
        (``"split"``: part of a payload was written, the rest is stored as new rows).

        Raises:
            BridgeError: the store cannot be written.
        """
        assert self._db is not None
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute("SELECT kind, length(content) FROM dead_letter WHERE id = ?",
                                       (item_id,)).fetchone()
                change = 0
                if row is None:
                    outcome = "gone"  # purged meanwhile
                elif not remaining:
                    self._db.execute("DELETE FROM dead_letter WHERE id = ?", (item_id,))
                    change = -row[1]
                    outcome = "removed"
                elif len(remaining) == 1 and remaining[0].kind == row[0]:
                    d = remaining[0]
                    content = bytes(d.content)[:self.max_item_bytes]
                    self._db.execute("UPDATE dead_letter SET reason = ?, detail = ?, content = ? WHERE id = ?",
                                     (_text(d.reason, 64), _text(d.detail), content, item_id))
                    change = len(content) - row[1]
                    outcome = "kept"
                else:
                    self._db.execute("DELETE FROM dead_letter WHERE id = ?", (item_id,))
                    now = time.time_ns() // 1000
                    rows = [(now, _text(d.reason, 64), _text(d.detail), _text(d.topic, 1024), _text(d.reading_id, 256),
                             d.kind, bytes(d.content)[:self.max_item_bytes]) for d in remaining]
                    self._db.executemany(
                        "INSERT INTO dead_letter (stored_us, reason, detail, topic, reading_id, kind, content) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                    change = sum(len(r[6]) for r in rows) - row[1]
                    outcome = "split"
            self._bytes += change
        except sqlite3.Error as exc:
            raise BridgeError(_("cannot change the dead-letter store {path}: {error}").format(
                path=self.path, error=exc)) from exc
        return outcome

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
