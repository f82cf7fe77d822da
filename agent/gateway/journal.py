"""The durable journal: every reading is committed here before it is published, and leaves only after PUBACK.

One SQLite file in WAL mode with ``synchronous=FULL``. One writer (the gateway's core thread) groups everything
that arrived since the last commit into one transaction, so under load one fsync covers many readings, while a
lone SOS still gets its own commit at once. Readers (``denen status``) open the file read-only beside it.

Tables:
    reading     unsent readings; ``body`` is the reading's JSON object exactly as it will be published, so its
                identity (gateway, node, frame counter) and edge timestamp never change on a retry. The one
                exception: a reading stamped before the clock synced carries ``boot_us`` (when it was made on the
                boot-time clock) and is rewritten once, with its true time, when the clock syncs.
    node        per-node state: the two replay windows (``last_fcnt``: last counter accepted with a verified MIC or
                measured by the gateway itself; ``unsigned_fcnt``: last counter accepted without MIC, see
                agent.gateway.readings), last seen, RSSI, SNR, battery.
    counter     monotonically increasing event counters (bad frames by reason, reopens, evictions ...).
    quarantine  frames that failed to decode or authenticate, with the reason, kept for inspection (bounded).
    request     operator requests for the running agent (``denen node reset-counter``): written by the command,
                carried out and marked done by the core, which owns the node state.
    audit       what was done on an operator's request: who, when, what, before and after (bounded).
    meta        schema version and small facts about the running agent.

Files: the journal is created mode 0600 whatever the umask (SQLite gives its -wal and -shm files the mode of the
database), and a symbolic link, or anything but a regular file, at the journal's path or its -wal/-shm path is
refused: the journal holds node windows and readings nobody else should read or redirect.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.errors import JournalError
from agent.gateway.checkpointer import Checkpointer, free_wal
from agent.gateway.journal_recovery import salvage_into, set_aside
from agent.gateway.journal_schema import (
    WAL_CHECKPOINT_BYTES,
    configure,
    lane_counts,
    lane_is,
    lane_tops,
    upgrade,
)
from agent.gateway.reading import (
    EVICTABLE,
    LANES,
    READING_JSON,
    SOS,
    Entry,
    NodeState,
    Quarantined,
)
from agent.i18n import N_, _
from agent.securefile import PrivateFileError, check_no_links, prepare_private_file

log = logging.getLogger(__name__)

QUARANTINE_KEEP = 10_000  # rows kept for inspection; older ones are dropped (their counts stay in `counter`)
AUDIT_KEEP = 10_000  # audit rows kept; older ones are dropped (the log has them too)
REQUEST_KEEP = 1_000  # done requests kept; pending ones are never dropped
LOOK_ELSEWHERE_S = 1.0  # longest a request another process wrote waits for a core that was not woken for it, in s

_NODE_COLUMNS = ("node, name, last_fcnt, last_seen_us, radio, rssi, snr, battery_v, frames_ok, frames_bad, "
                 "unsigned_fcnt")
_NODE_UPSERT = (
    f"INSERT INTO node({_NODE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(node) DO UPDATE SET "
    + ", ".join(f"{c}=excluded.{c}" for c in _NODE_COLUMNS.split(", ")[1:])
)


@dataclass(slots=True)
class Request:
    """An operator's request to the running agent (a row of table ``request``).

    Attributes:
        id: row id.
        ts_us: when it was made, µs since the epoch.
        user: who made it (the OS user of the command).
        action: what to do (``reset_counter``).
        node: the node concerned, 8 lowercase hex digits.
    """

    id: int
    ts_us: int
    user: str
    action: str
    node: str


@dataclass(slots=True)
class Audit:
    """One line of the audit trail: what was done on whose request."""

    ts_us: int
    user: str
    action: str
    node: str | None
    detail: str


class JournalCorrupt(JournalError):
    """The journal file is damaged (not a database, malformed, failed its integrity check)."""


_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(method: _F) -> _F:
    """SQLite errors of a journal method become JournalCorrupt (damaged file) or JournalError (anything else).

    Damage is usually found by whatever first reads a bad page (a publish, a quota check), not by a commit; the
    core replaces the journal whichever call it was.
    """

    @functools.wraps(method)
    def wrapper(self: Journal, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except JournalError:
            raise
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if _is_corruption(exc):
                raise JournalCorrupt(_("{path}: the journal is damaged: {error}").format(path=self.path,
                                                                                       error=exc)) from exc
            raise JournalError(_("{path}: {operation} failed: {error}").format(
                path=self.path, operation=method.__name__, error=exc)) from exc

    return wrapper  # type: ignore[return-value]


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    text = str(exc).lower()
    return any(t in text for t in ("malformed", "not a database", "corrupt", "file is encrypted"))


def check_files(path: str) -> None:
    """Refuse a journal path (or its -wal/-shm) that is a symbolic link or not a regular file
    (:func:`agent.securefile.check_no_links`): SQLite follows links.

    Raises:
        JournalError: with the path and what is wrong.
    """
    try:
        check_no_links(path, what=N_("journal"), fix=N_("set journal.path to the real file"))
    except PrivateFileError as exc:
        raise JournalError(str(exc)) from None


def _create_private(path: str) -> None:
    """Create the journal file empty with mode 0600 (whatever the umask), unless it exists; never through a link.
    An existing journal keeps its group's read bit (the service's group) and loses other users'."""
    prepare_private_file(path, what=N_("journal"), group_readable=True, fix=N_("set journal.path to the real file"))


def open_or_recover(path: str, *, quota_bytes: int, force: bool = False) -> tuple[Journal, str | None, int]:
    """Open the journal; if it is damaged, set it aside, start a fresh one and carry over what can be read.

    Args:
        force: set the file aside without trying to open it (it was found damaged while in use).

    Returns:
        (journal, path the damaged file was moved to or None, readings salvaged from it)
    """
    if not force:
        try:
            return Journal(path, quota_bytes=quota_bytes), None, 0
        except JournalCorrupt as exc:
            log.error("%s", _("{error}; setting it aside and starting a fresh journal").format(error=exc))
    aside = set_aside(path, now_us=time.time_ns() // 1000)
    journal = Journal(path, quota_bytes=quota_bytes)
    rescued = salvage_into(aside, lambda chunk: journal.commit(entries=chunk))
    log.error("%s", _("damaged journal kept at {path}; {count} unsent readings salvaged from it").format(
        path=aside, count=rescued))
    return journal, aside, rescued


def _runs(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted seqs -> [(first, last), ...] of consecutive runs."""
    runs: list[tuple[int, int]] = []
    start = prev = seqs[0]
    for s in seqs[1:]:
        if s != prev + 1:
            runs.append((start, prev))
            start = s
        prev = s
    runs.append((start, prev))
    return runs


def _write_records(db: sqlite3.Connection, *, nodes: Iterable[NodeState], forget: Iterable[str],
                   quarantined: list[Quarantined], counters: Mapping[str, int] | None, meta: Mapping[str, str] | None,
                   audit: Iterable[Audit], done: Iterable[tuple[int, str]]) -> None:
    """Everything of a commit but the readings, inside its transaction: node states, set-aside frames, counters,
    meta, audit lines and done requests, each table trimmed to its bound. Arguments as in Journal.commit."""
    forget = list(forget)
    if forget:
        db.executemany("DELETE FROM node WHERE node=?", [(n,) for n in forget])
    nodes = [(n.node, n.name, n.last_fcnt, n.last_seen_us, n.radio, n.rssi, n.snr, n.battery_v, n.frames_ok,
              n.frames_bad, n.unsigned_fcnt) for n in nodes]
    if nodes:
        # An upsert rewrites the row where it is; INSERT OR REPLACE would delete it and insert it anew
        # under a new rowid, writing its old page, the table's last page and the key's index page.
        db.executemany(_NODE_UPSERT, nodes)
    audit = list(audit)
    if audit:
        db.executemany("INSERT INTO audit(ts_us, user, action, node, detail) VALUES (?,?,?,?,?)",
                       [(a.ts_us, a.user, a.action, a.node, a.detail) for a in audit])
        db.execute("DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?", (AUDIT_KEEP,))
    done = list(done)
    if done:
        now_us = time.time_ns() // 1000
        db.executemany("UPDATE request SET done_us=?, result=? WHERE id=?",
                       [(now_us, result, rid) for rid, result in done])
        db.execute("DELETE FROM request WHERE done_us IS NOT NULL AND id <= (SELECT MAX(id) FROM request) - ?",
                   (REQUEST_KEEP,))
    if quarantined:
        db.executemany(
            "INSERT INTO quarantine(ts_us, radio, node, reason, detail, raw, rssi, snr) VALUES (?,?,?,?,?,?,?,?)",
            [(q.ts_us, q.radio, q.node, q.reason, q.detail, q.raw, q.rssi, q.snr) for q in quarantined],
        )
        db.execute(
            "DELETE FROM quarantine WHERE id <= (SELECT MAX(id) FROM quarantine) - ?", (QUARANTINE_KEEP,)
        )
    if counters:
        db.executemany(
            "INSERT INTO counter(name, value) VALUES (?,?) ON CONFLICT(name) DO UPDATE SET value=excluded.value",
            list(counters.items()),
        )
    if meta:
        db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)", list(meta.items()))


class Journal:
    """The gateway's durable store. Not thread-safe: one owner thread writes.

    Attributes:
        lane_top: per lane, the highest ``seq`` ever committed to it by this connection or found at open (0: none):
            no unsent reading of the lane lies above it, so a publisher that has sent up to it need not query.

    Args:
        path: the SQLite file; its folder is created.
        quota_bytes: disk quota for the journal, in bytes; above it the lowest lanes are evicted, oldest first.
    """

    def __init__(self, path: str | os.PathLike[str], *, quota_bytes: int) -> None:
        self.path = os.fspath(path)
        self.quota_bytes = quota_bytes
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise JournalError(_("{path}: cannot create the journal's folder: {error}").format(
                path=self.path, error=exc.strerror)) from exc
        check_files(self.path)
        try:
            _create_private(self.path)
        except PrivateFileError as exc:
            raise JournalError(_("{path}: cannot create the journal: {error}").format(path=self.path,
                                                                                      error=exc)) from exc
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            configure(self._db)
            check = self._db.execute("PRAGMA quick_check(1)").fetchone()[0]
            if check != "ok":
                raise JournalCorrupt(_("{path}: integrity check failed: {check}").format(path=self.path, check=check))
            upgrade(self._db, self.path)
            self._page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
            # seq never goes back while the journal is open, even when every reading has been acknowledged and
            # deleted: the publisher remembers how far it has sent by seq. Across a close and reopen the top is
            # kept in meta by close() (after a power cut it may start lower: nothing outside an open journal
            # refers to a seq, see agent.gateway.journal_schema).
            top = self._db.execute("SELECT MAX(seq) FROM reading").fetchone()[0] or 0
            kept = self._db.execute("SELECT value FROM meta WHERE key='seq_top'").fetchone()
            self._last_seq = max(top, int(kept[0]) if kept and str(kept[0]).isdigit() else 0)
            self.lane_top = lane_tops(self._db)
            # No commit of this connection runs a checkpoint (an SOS would wait behind it): see Checkpointer.
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = Checkpointer(self.path, page_size=self._page_size, wal_bytes=WAL_CHECKPOINT_BYTES)
        except sqlite3.DatabaseError as exc:
            self._close_after_failed_open()
            if _is_corruption(exc):
                raise JournalCorrupt(_("{path}: the journal is damaged: {error}").format(path=self.path,
                                                                                       error=exc)) from exc
            raise JournalError(_("{path}: cannot open the journal: {error}").format(path=self.path,
                                                                                    error=exc)) from exc
        except BaseException:
            # A damaged file, a schema from a newer agent, a failed migration, an interrupt: the caller gets no
            # Journal to close, so the connection (its file descriptors and WAL lock) is closed here.
            self._close_after_failed_open()
            raise
        self._in_txn = False
        self._data_version: int | None = None
        self._look_at = 0.0  # monotonic s of the next look for others' commits when not woken (changed_elsewhere)

    def _close_after_failed_open(self) -> None:
        db = getattr(self, "_db", None)  # absent when sqlite3.connect itself failed
        if db is not None:
            db.close()

    def close(self) -> None:
        """Keep the seq high-water mark for the next open (best effort: a damaged file is closed all the same)."""
        try:
            self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('seq_top', ?)", (str(self._last_seq),))
        except sqlite3.Error:
            pass
        self._checkpointer.stop()
        self._db.close()
        self._checkpointer.release()

    # -- the one write path ------------------------------------------------------------------------
    @_guarded
    def commit(
        self,
        *,
        entries: list[Entry] = (),  # type: ignore[assignment]
        acked: Iterable[int] = (),
        nodes: Iterable[NodeState] = (),
        quarantined: list[Quarantined] = (),  # type: ignore[assignment]
        counters: Mapping[str, int] | None = None,
        meta: Mapping[str, str] | None = None,
        forget: Iterable[str] = (),
        audit: Iterable[Audit] = (),
        done: Iterable[tuple[int, str]] = (),
    ) -> list[int]:
        """Write everything in one transaction and commit it (one fsync).

        Args:
            entries: new readings to keep until acknowledged.
            acked: ``seq`` of readings the broker acknowledged; they are deleted.
            nodes: node states that changed (replay windows, last seen ...).
            quarantined: frames set aside.
            counters: counter name -> new absolute value.
            meta: small facts to store (agent start time, MQTT state ...).
            forget: nodes whose state is dropped (unknown nodes evicted or aged out).
            audit: lines for the audit trail.
            done: requests carried out: (request id, result text).

        Returns:
            The ``seq`` assigned to each entry, in order.
        """
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            acked = sorted(acked)
            if acked:
                # One range delete per run of consecutive seqs (a batch per message), before the inserts: they
                # refill the leaf pages it frees, each written to the WAL once instead of once freed and once
                # reused (tests/bench/bench_field.py at 20 frames/s: 8 pages per commit instead of 11).
                db.executemany("DELETE FROM reading WHERE seq BETWEEN ? AND ?", _runs(acked))
            seqs: list[int] = []
            if entries:
                first = self._last_seq + 1
                db.executemany(
                    "INSERT INTO reading(seq, lane, node, fcnt, ts_us, body, boot_us) VALUES (?,?,?,?,?,?,?)",
                    [(first + i, e.lane, e.node, e.fcnt, e.ts_us, e.body, e.boot_us) for i, e in enumerate(entries)],
                )
                seqs = list(range(first, first + len(entries)))
            _write_records(db, nodes=nodes, forget=forget, quarantined=quarantined, counters=counters, meta=meta,
                           audit=audit, done=done)
            db.execute("COMMIT")
            if seqs:
                self._last_seq = seqs[-1]
                top = self.lane_top
                for e, seq in zip(entries, seqs):
                    top[e.lane] = seq
            self._checkpointer.after_commit(db)
            return seqs
        except sqlite3.Error as exc:
            if "full" in str(exc).lower():
                free_wal(db)
            raise

    # -- reads ---------------------------------------------------------------------------------------
    @_guarded
    def pending(self, lane: int, *, after_seq: int, limit: int, hold_unsynced: bool = False) -> list[tuple[int, str]]:
        """Unacknowledged readings of one lane with ``seq > after_seq``, oldest first: ``[(seq, body), ...]``.

        Args:
            hold_unsynced: stop before the first reading that awaits clock correction, so the lane goes out in
                order once it is corrected.
        """
        where = f"WHERE {lane_is(lane)} AND seq>? ORDER BY seq LIMIT ?"
        if not hold_unsynced:
            return self._db.execute(f"SELECT seq, body FROM reading {where}", (after_seq, limit)).fetchall()
        rows = self._db.execute(f"SELECT seq, body, boot_us FROM reading {where}", (after_seq, limit)).fetchall()
        out: list[tuple[int, str]] = []
        for seq, body, boot in rows:
            if boot is not None:
                break
            out.append((seq, body))
        return out

    # -- clock correction -----------------------------------------------------------------------------
    @_guarded
    def unsynced_count(self, min_lane: int = SOS) -> int:
        """Readings stamped on an unsynchronised clock that still await correction, in ``min_lane`` and below in
        priority (``TELEMETRY``: the ones held back; SOS and alarms go out at once, flagged)."""
        return self._db.execute("SELECT COUNT(*) FROM reading WHERE boot_us IS NOT NULL AND lane >= ?",
                                (min_lane,)).fetchone()[0]

    @_guarded
    def adopt_boot(self, boot_id: str) -> int:
        """Record the current boot; readings awaiting correction from an earlier boot can never be corrected.

        Their boot-time stamps count from a boot that has ended, so they keep their edge timestamp and their
        ``"clock": "unsynced"`` flag and are published as they are.

        Returns:
            How many readings of an earlier boot were given up on.
        """
        if self.meta().get("boot_id") == boot_id:
            return 0
        self._db.execute("BEGIN IMMEDIATE")
        n = self._db.execute("UPDATE reading SET boot_us=NULL WHERE boot_us IS NOT NULL").rowcount
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('boot_id', ?)", (boot_id,))
        self._db.execute("COMMIT")
        return max(0, n)

    @_guarded
    def correct_clock(self, offset_us: int, *, limit: int = 1000) -> int:
        """Give readings stamped before the clock synced their true time: ``boot_us + offset_us``.

        The body's ``ts_us`` becomes the true time and its ``clock`` becomes ``"corrected"``; key order and
        everything else stay as they were. At most ``limit`` readings per call (one transaction), so a long
        unsynced spell is corrected in slices and an SOS never waits for all of it.

        Args:
            offset_us: ``wall - boottime`` on the synchronised clock, µs (``agent.gateway.clock.offset_us()``).

        Returns:
            How many readings were corrected (fewer than ``limit``: none are left).
        """
        rows = self._db.execute(
            "SELECT seq, boot_us, body FROM reading WHERE boot_us IS NOT NULL ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        if not rows:
            return 0
        updates = []
        for seq, boot, body in rows:
            ts = boot + offset_us
            try:
                doc = json.loads(body)
                doc["ts_us"] = ts
                doc["clock"] = "corrected"
                body = json.dumps(doc, **READING_JSON)
            except (ValueError, TypeError):
                pass  # not ours to judge here; it is published as it is and the bridge says what is wrong
            updates.append((ts, body, seq))
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # a failure rolls back in _guarded
        db.executemany("UPDATE reading SET ts_us=?, body=?, boot_us=NULL WHERE seq=?", updates)
        db.execute("COMMIT")
        return len(rows)

    @_guarded
    def has_pending(self, lane: int, *, after_seq: int) -> bool:
        return self._db.execute(
            f"SELECT 1 FROM reading WHERE {lane_is(lane)} AND seq>? LIMIT 1", (after_seq,)
        ).fetchone() is not None

    @_guarded
    def depth(self) -> dict[str, int]:
        """Unsent readings per lane name (reads every leaf of the reading table: at each health report, not per
        reading)."""
        return lane_counts(self._db)

    @_guarded
    def oldest_ts_us(self) -> int | None:
        """Edge timestamp of the oldest unsent reading, in µs since the epoch, or None when empty."""
        row = self._db.execute("SELECT MIN(ts_us) FROM reading").fetchone()
        return row[0]

    @_guarded
    def nodes(self) -> dict[str, NodeState]:
        rows = self._db.execute(f"SELECT {_NODE_COLUMNS} FROM node")
        return {r[0]: NodeState(*r) for r in rows}

    # -- operator requests ---------------------------------------------------------------------------------
    @_guarded
    def changed_elsewhere(self, *, woken: bool = True) -> bool:
        """Whether another connection (``denen node reset-counter``) committed since the last look.

        ``PRAGMA data_version`` reads no table, yet it was measured at ~50 µs of a core wake-up at field rates
        (tests/bench/bench_field.py), one wake-up per frame. So it looks when ``woken`` (the command wakes the core
        with SIGUSR1) and otherwise at most every LOOK_ELSEWHERE_S seconds.
        """
        now = time.monotonic()
        if not woken and now < self._look_at:
            return False
        self._look_at = now + LOOK_ELSEWHERE_S
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        changed = version != self._data_version
        self._data_version = version
        return changed

    @_guarded
    def pending_requests(self) -> list[Request]:
        """Requests not yet carried out, oldest first."""
        rows = self._db.execute(
            "SELECT id, ts_us, user, action, node FROM request WHERE done_us IS NULL ORDER BY id").fetchall()
        return [Request(*r) for r in rows]

    @_guarded
    def audit(self, limit: int = 20) -> list[Audit]:
        """The newest lines of the audit trail, newest first."""
        rows = self._db.execute(
            "SELECT ts_us, user, action, node, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [Audit(*r) for r in rows]

    @_guarded
    def counters(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT name, value FROM counter"))

    @_guarded
    def meta(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT key, value FROM meta"))

    @_guarded
    def quarantine(self, limit: int = 20) -> list[Quarantined]:
        rows = self._db.execute(
            "SELECT ts_us, radio, node, reason, detail, raw, rssi, snr FROM quarantine ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [Quarantined(*r) for r in rows]

    # -- quota ---------------------------------------------------------------------------------------
    @_guarded
    def size_bytes(self) -> int:
        """Bytes the journal occupies: live pages of the database plus the WAL file."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        try:
            wal = os.path.getsize(self.path + "-wal")
        except OSError:
            wal = 0
        return (pages - free) * self._page_size + wal

    @_guarded
    def enforce_quota(self, *, protect: Iterable[int] = ()) -> dict[str, int]:
        """Evict the lowest lanes, oldest first, until the live data fits the quota.

        SOS and alarm readings are never evicted, even when they alone exceed the quota.

        Args:
            protect: ``seq`` values that must not be evicted (readings in flight to the broker).

        Returns:
            Evicted reading count per lane name (empty when nothing was evicted).
        """
        evicted: dict[str, int] = {}
        live = self._live_bytes()
        if live <= self.quota_bytes:
            return evicted
        protect = set(protect)
        # Average row size tells how many rows to drop per round; a few rounds converge.
        total_rows = self._db.execute("SELECT COUNT(*) FROM reading").fetchone()[0] or 1
        per_row = max(64, live // total_rows)
        for lane in EVICTABLE:
            while live > self.quota_bytes:
                excess_rows = max(1, (live - self.quota_bytes) // per_row + 1)
                seqs = [
                    s for (s,) in self._db.execute(
                        f"SELECT seq FROM reading WHERE {lane_is(lane)} ORDER BY seq LIMIT ?",
                        (excess_rows + len(protect),),
                    ) if s not in protect
                ][:excess_rows]
                if not seqs:
                    break
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("DELETE FROM reading WHERE seq=?", [(s,) for s in seqs])
                self._db.execute("COMMIT")
                evicted[LANES[lane]] = evicted.get(LANES[lane], 0) + len(seqs)
                live = self._live_bytes()
        if evicted:
            log.warning("%s", _("journal quota {quota} bytes reached: evicted {evicted}").format(
                quota=self.quota_bytes, evicted=evicted))
        return evicted

    def _live_bytes(self) -> int:
        """Bytes held by live rows (excluding free pages and the WAL), the figure the quota applies to."""
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * self._page_size
