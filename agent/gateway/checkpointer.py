"""The journal's WAL copied back into its database file on a thread and connection of its own.

SQLite's automatic checkpoint runs inside the commit that crosses its threshold, on the committing thread: measured
on 1,000-reading deletions (a drain), it doubles a commit's p90 (1.7 -> 2.8 ms), and an SOS waits behind such a
commit. Here the owner's connection has ``wal_autocheckpoint=0``; after each commit the journal reads how many
frames the WAL holds from the WAL index (the ``-shm`` file's header, ``mxFrame``) and, past the threshold, wakes this
thread, which runs a PASSIVE checkpoint: it never blocks the writer, and what a commit appends meanwhile is copied by
the next one.

The WAL index is read with ``pread`` on a descriptor kept open until the owner's connection is closed: closing
any descriptor of a file drops every POSIX lock this process holds on it, SQLite's included, and another process
could then take the ``-shm`` over (reset it under the running agent).

While commits keep landing during a checkpoint, the WAL is never entirely copied and so never starts over from its
beginning: it grows. Past ``HARD_FACTOR`` times the threshold the owner runs the checkpoint itself, between two of
its commits, as SQLite's own would: that one copies everything, and the next commit starts the WAL over.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import struct
import threading

log = logging.getLogger(__name__)

# The WAL index's start, native byte order: WalIndexHdr.mxFrame (frames in the WAL) at offset 16, and after the
# header's two copies (2 x 48 bytes) WalCkptInfo.nBackfill (frames already copied into the database) at offset 96.
_WAL_INDEX = struct.Struct("=16xI76xI")
# The owner checkpoints itself past this many times the threshold: 4 MiB, SQLite's own default with 4 KiB pages.
HARD_FACTOR = 4


class Checkpointer:
    """Runs PASSIVE checkpoints of the journal at ``path`` once its WAL holds ``wal_bytes`` (bytes of pages).

    The thread starts at the first checkpoint due, so a journal opened by a short command costs no thread.

    Attributes:
        checkpoints: checkpoints the thread has run.
        by_owner: checkpoints the owner ran itself because the WAL passed the hard bound.
    """

    def __init__(self, path: str, *, page_size: int, wal_bytes: int) -> None:
        self.path = path
        self.frames_max = max(1, wal_bytes // page_size)
        self.frames_hard = self.frames_max * HARD_FACTOR
        self.checkpoints = 0
        self.by_owner = 0
        self._due = threading.Event()
        self._stopping = False
        self._shm: int | None = None  # descriptor of the -shm file, see the module's docstring
        self._thread: threading.Thread | None = None

    def after_commit(self, owner: sqlite3.Connection) -> None:
        """Wake the thread while the WAL holds more than the threshold and frames not yet copied, or checkpoint on
        ``owner`` past the hard bound.

        Called by the owner's thread right after its commit, outside any transaction. Once past the threshold the
        thread is woken for any frame left to copy, not only for a threshold's worth: each checkpoint it runs is
        then shorter, so one soon ends with nothing committed meanwhile, and the next commit starts the WAL over.
        """
        wal = self._wal()
        if wal is not None:
            frames, copied = wal
            if frames < self.frames_max or frames == copied:
                return
            if frames >= self.frames_hard:
                self._checkpoint_on(owner)
                return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="journal-checkpoint", daemon=True)
            self._thread.start()
        self._due.set()

    def _checkpoint_on(self, owner: sqlite3.Connection) -> None:
        try:
            busy = owner.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0]
        except sqlite3.Error as exc:
            log.debug("checkpoint by the owner failed: %s", exc)
            return
        if not busy:  # busy: the thread was checkpointing; tried again after the next commit
            self.by_owner += 1

    def _wal(self) -> tuple[int, int] | None:
        """(frames in the WAL, frames of it already copied into the database), from the WAL index."""
        try:
            if self._shm is None:
                self._shm = os.open(self.path + "-shm", os.O_RDONLY | os.O_CLOEXEC)
            index = os.pread(self._shm, _WAL_INDEX.size, 0)
        except OSError:
            return None  # no WAL index to read: let a checkpoint look
        return _WAL_INDEX.unpack(index) if len(index) == _WAL_INDEX.size else None

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            while True:
                self._due.wait()
                if self._stopping:
                    return
                self._due.clear()
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                except sqlite3.Error as exc:
                    log.debug("checkpoint failed: %s", exc)
        finally:
            db.close()

    def stop(self) -> None:
        """Stop the thread (after the checkpoint it may be running) and close its connection."""
        self._stopping = True
        self._due.set()
        if self._thread is not None:
            self._thread.join(10)

    def release(self) -> None:
        """Close the WAL index's descriptor: only once the owner's connection is closed (see the module)."""
        if self._shm is not None:
            os.close(self._shm)
            self._shm = None


def free_wal(db: sqlite3.Connection) -> None:
    """After a commit failed for a full disk: the WAL may be what fills it, so its pages are moved into the
    database and it is truncated, which frees the room for the next try (outside the failed transaction). A
    checkpoint the thread is running is waited for (the connection's busy timeout)."""
    try:
        if db.in_transaction:
            db.execute("ROLLBACK")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error:
        pass  # the commit's own error is what the journal reports
