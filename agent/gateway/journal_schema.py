"""The journal's SQLite schema: its tables, the settings of a connection to it, and the migrations that bring a
journal written by an older agent to the current version. What each table holds: agent.gateway.journal.
"""

from __future__ import annotations

import logging
import sqlite3

from agent.errors import JournalError
from agent.gateway.reading import LANES, TELEMETRY
from agent.i18n import _

log = logging.getLogger("agent.gateway.journal")  # the journal's log: a migration is part of opening it

#: 2: reading.boot_us (clock correction). 3: node.unsigned_fcnt (a separate replay window for frames without MIC),
#: tables request and audit. 4: reading.seq without AUTOINCREMENT. 5: the lane index leaves telemetry out. Older
#: journals are migrated on open.
SCHEMA_VERSION = 5

PAGE_SIZE = 1024  # bytes per database page of a new journal
WAL_CHECKPOINT_BYTES = 1 << 20  # the WAL is checkpointed into the database once it holds about this many bytes

# seq is given by the journal (Journal._last_seq + 1, kept in memory while it is open), so it needs no
# AUTOINCREMENT: that keeps a high-water mark in sqlite_sequence, one more page written by every commit of a
# reading (measured at 20 and 2 frames/s, tests/bench/bench_field.py). Nothing outside an open journal refers to a
# seq: the publisher starts again from the journal in a new process and after a journal is replaced.
READING_COLUMNS = """(
    seq   INTEGER PRIMARY KEY,
    lane  INTEGER NOT NULL,
    node  TEXT NOT NULL,
    fcnt  INTEGER NOT NULL,
    ts_us INTEGER NOT NULL,
    body  TEXT NOT NULL,
    boot_us INTEGER
)"""
# The lane index holds every lane but telemetry: a telemetry commit's inserts and its acknowledged rows' deletions
# then dirty no index page (one page of about 8 per commit at 20 frames/s, tests/bench/bench_field.py). Telemetry is
# found in seq order, the table's own order, where it is nearly every row. SQLite uses a partial index only for a
# query that spells out the index's condition: use lane_is().
INDEXED_LANES = f"lane <> {TELEMETRY}"
READING_INDEX = f"CREATE INDEX IF NOT EXISTS reading_lane ON reading(lane, seq) WHERE {INDEXED_LANES}"

DDL = f"""
CREATE TABLE IF NOT EXISTS reading {READING_COLUMNS};
{READING_INDEX};
CREATE TABLE IF NOT EXISTS node (
    node         TEXT PRIMARY KEY,
    name         TEXT,
    last_fcnt    INTEGER,
    last_seen_us INTEGER,
    radio        TEXT,
    rssi         REAL,
    snr          REAL,
    battery_v    REAL,
    frames_ok    INTEGER NOT NULL DEFAULT 0,
    frames_bad   INTEGER NOT NULL DEFAULT 0,
    unsigned_fcnt INTEGER
);
CREATE TABLE IF NOT EXISTS counter (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (
    id     INTEGER PRIMARY KEY,
    ts_us  INTEGER NOT NULL,
    radio  TEXT,
    node   TEXT,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    raw    BLOB,
    rssi   REAL,
    snr    REAL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS request (
    id      INTEGER PRIMARY KEY,
    ts_us   INTEGER NOT NULL,
    user    TEXT NOT NULL,
    action  TEXT NOT NULL,
    node    TEXT NOT NULL,
    done_us INTEGER,
    result  TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    id     INTEGER PRIMARY KEY,
    ts_us  INTEGER NOT NULL,
    user   TEXT NOT NULL,
    action TEXT NOT NULL,
    node   TEXT,
    detail TEXT NOT NULL
);
"""


def configure(db: sqlite3.Connection) -> None:
    """Set a new connection up (page size, WAL, fsync on commit, cache, checkpoints) and create missing tables."""
    # 1 KiB pages for a new journal (an existing one keeps its size): a commit at field rates changes a few
    # rows scattered over the node, reading and counter tables, and SQLite writes each changed page whole
    # to the WAL; measured at 20 frames/s (tests/bench/bench_field.py), 3.6 KiB written per reading
    # instead of 5.4 KiB with 4 KiB pages.
    db.execute(f"PRAGMA page_size={PAGE_SIZE}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    # Keep the WAL from growing without bound during a long outage with a busy reader.
    db.execute("PRAGMA journal_size_limit=67108864")
    # A small page cache: the journal is written once and read once, in order; RAM is scarce on a Pi.
    db.execute("PRAGMA cache_size=-1024")
    # Freed pages are zeroed (Debian's build does this by default; others may not): a page freed after its readings
    # were sent must never hold them again, or salvaging a damaged journal could bring a sent SOS back.
    db.execute("PRAGMA secure_delete=ON")
    # Checkpoint the WAL every ~1 MiB instead of SQLite's ~4 MB, so a small or nearly full card can still
    # hold it; a failed commit for lack of space also forces a checkpoint (checkpointer.free_wal). Counted in pages
    # of this file's size (1,024 of 1 KiB; 256 of 4 KiB in a journal made before): measured at 20 frames/s,
    # checkpointing every 256 KiB wrote 3.6 KiB per reading, every 1 MiB 3.4 KiB, every 4 MiB 3.2 KiB. The
    # running agent's journal turns this off on its own connection and leaves the same threshold to its
    # checkpoint thread (agent.gateway.checkpointer); short-lived connections keep it.
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_BYTES // page_size}")
    db.executescript(DDL)


def upgrade(db: sqlite3.Connection, path: str) -> None:
    """Stamp a new journal with SCHEMA_VERSION or migrate an older one; refuse one from a newer agent.

    Raises:
        JournalError: the journal's schema is newer than this agent reads.
    """
    row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    if row is None:
        db.execute("INSERT INTO meta(key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
    elif row[0] in ("1", "2", "3", "4"):
        migrate(db, path, int(row[0]))
    elif row[0] != str(SCHEMA_VERSION):
        raise JournalError(_("{path}: journal schema {schema}, this agent reads {reads}").format(
            path=path, schema=row[0], reads=SCHEMA_VERSION))
    # Readings awaiting clock correction are few and found through this partial index.
    db.execute("CREATE INDEX IF NOT EXISTS reading_unsynced ON reading(seq) WHERE boot_us IS NOT NULL")


def migrate(db: sqlite3.Connection, path: str, version: int) -> None:
    """Bring a journal of schema ``version`` (1 to 4) to SCHEMA_VERSION, in one transaction."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if version < 2:
            # Version 1 lacks boot_us; its readings were all published as stamped, so NULL is right for them.
            db.execute("ALTER TABLE reading ADD COLUMN boot_us INTEGER")
        if version < 3:
            # Up to version 2 one window served frames with and without MIC. It becomes both windows: nothing
            # refused before is accepted after the upgrade. (A window an unsigned frame pushed up stays up until
            # `denen node reset-counter`.)
            # A journal made before the node table existed gets it from the current DDL, column included.
            if "unsigned_fcnt" not in {r[1] for r in db.execute("PRAGMA table_info(node)")}:
                db.execute("ALTER TABLE node ADD COLUMN unsigned_fcnt INTEGER")
            db.execute("UPDATE node SET unsigned_fcnt = last_fcnt")
        if version < 4:
            _rebuild_reading(db)
        else:
            db.execute("DROP INDEX IF EXISTS reading_lane")  # over every lane; rebuilt without telemetry
            db.execute(READING_INDEX)
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION),))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    log.info("%s", _("{path}: journal schema {schema} migrated to {reads}").format(path=path, schema=version,
                                                                                   reads=SCHEMA_VERSION))


def _rebuild_reading(db: sqlite3.Connection) -> None:
    """The reading table as READING_COLUMNS (no AUTOINCREMENT), every row kept with its seq; inside the
    migration's transaction. Dropping the old table drops its indexes and its sqlite_sequence row."""
    db.execute(f"CREATE TABLE reading_new {READING_COLUMNS}")
    db.execute("INSERT INTO reading_new(seq, lane, node, fcnt, ts_us, body, boot_us) "
               "SELECT seq, lane, node, fcnt, ts_us, body, boot_us FROM reading")
    db.execute("DROP TABLE reading")
    db.execute("ALTER TABLE reading_new RENAME TO reading")
    db.execute(READING_INDEX)


def lane_is(lane: int) -> str:
    """The SQL condition "in lane ``lane``" (one of agent.gateway.reading's lanes), with the lane index's own
    condition beside it for the lanes it holds, so SQLite uses the index for them."""
    lane = int(lane)
    return f"lane={lane}" if lane == TELEMETRY else f"lane={lane} AND {INDEXED_LANES}"


def lane_tops(db: sqlite3.Connection) -> list[int]:
    """Per lane, the highest seq in table reading (0: none): through the index, and for telemetry from the table's
    end backwards (not a scan of every row)."""
    tops = [0] * len(LANES)
    for lane, top in db.execute(f"SELECT lane, MAX(seq) FROM reading WHERE {INDEXED_LANES} GROUP BY lane"):
        if lane in range(len(LANES)):
            tops[lane] = top
    row = db.execute(f"SELECT seq FROM reading WHERE {lane_is(TELEMETRY)} ORDER BY seq DESC LIMIT 1").fetchone()
    tops[TELEMETRY] = row[0] if row else 0
    return tops


def lane_counts(db: sqlite3.Connection) -> dict[str, int]:
    """Readings per lane name in table reading. Telemetry is the total less the other lanes: counting the total reads
    every leaf of the table (about 10-35 ms for 100,000 readings), the other lanes only their index."""
    out = dict.fromkeys(LANES, 0)
    for lane, n in db.execute(f"SELECT lane, COUNT(*) FROM reading WHERE {INDEXED_LANES} GROUP BY lane"):
        if lane in range(len(LANES)):
            out[LANES[lane]] = n
    total = db.execute("SELECT COUNT(*) FROM reading").fetchone()[0]
    out[LANES[TELEMETRY]] = total - sum(out.values())
    return out
