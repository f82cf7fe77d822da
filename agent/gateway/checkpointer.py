"""The journal's WAL copied back into its database file on a thread and connection of its own.

SQLite's automatic checkpoint runs inside the commit that crosses its threshold, on the committing thread: measured
on 1,000-reading deletions (a drain), it doubles a commit's p90 (1.7 -> 2.8 ms), and an SOS waits behind such a
commit. Here the owner's connection has ``wal_autocheckpoint=0``; after each commit the journal reads how many
frames the WAL holds from the WAL index (the ``-shm`` file's header, ``mxFrame``) and, past the threshold, wakes this
thread, which runs a PASSIVE checkpoint: it never blocks the writer, and what a commit appends meanwhile is copied by
the next one.

While commits keep landing during a checkpoint, the WAL is never entirely copied and so never starts over from its
beginning: it grows. Past ``HARD_FACTOR`` times the threshold the owner runs the checkpoint itself, between two of
its commits, as SQLite's own would: that one copies everything, and the next commit starts the WAL over.
"""

from __future__ import annotations

import logging
import mmap
import sqlite3
import struct
import threading

log = logging.getLogger(__name__)

_MX_FRAME = struct.Struct("=I")  # WalIndexHdr.mxFrame: frames in the WAL, native byte order, at offset 16
HARD_FACTOR = 8  # the owner checkpoints itself once the WAL holds this many times the thread's threshold


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
        self._shm: mmap.mmap | None = None
        self._thread: threading.Thread | None = None

    def after_commit(self, owner: sqlite3.Connection) -> None:
        """Wake the thread if the WAL holds more than the threshold, or checkpoint on ``owner`` past the hard bound.

        Called by the owner's thread right after its commit, outside any transaction.
        """
        frames = self._frames()
        if frames is not None and frames < self.frames_max:
            return
        if frames is not None and frames >= self.frames_hard:
            try:
                busy = owner.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0]
            except sqlite3.Error as exc:
                log.debug("checkpoint by the owner failed: %s", exc)
                return
            if not busy:  # the thread was checkpointing: it is retried after the next commit
                self.by_owner += 1
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="journal-checkpoint", daemon=True)
            self._thread.start()
        self._due.set()

    def _frames(self) -> int | None:
        try:
            if self._shm is None:
                with open(self.path + "-shm", "rb") as f:
                    self._shm = mmap.mmap(f.fileno(), 32, prot=mmap.PROT_READ)
            return _MX_FRAME.unpack_from(self._shm, 16)[0]
        except (OSError, ValueError):
            return None  # no WAL index to read: let a checkpoint look

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
        if self._shm is not None:
            self._shm.close()
            self._shm = None
