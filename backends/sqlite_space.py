"""Giving a sqlite buffer's free pages back to the filesystem.

The file is made with ``auto_vacuum=INCREMENTAL``: deleted messages leave free pages inside it, which
``PRAGMA incremental_vacuum`` releases. A buffer looks after every so many removed rows and releases them in short
steps, so savers wait at most one step (see :meth:`pbuffer.backends.sql.SQLBuffer.reclaim`).
"""

from __future__ import annotations

import logging

from pbuffer.errors import PBufferError

from .sql_connections import Transactions

__all__ = ["SpaceReclaimer"]

_log = logging.getLogger("pbuffer.backends.sql")

# Look after this many removed rows; act once this many pages (4 MiB) are free; release this many pages per
# transaction.
_RECLAIM_EVERY = 5000
_RECLAIM_MIN_PAGES = 1024
_RECLAIM_STEP = 8192


class SpaceReclaimer:
    """One sqlite buffer's free pages: counted removals, and releasing the pages when enough are free."""

    def __init__(self, transactions: Transactions) -> None:
        self._tx = transactions
        self._removed_since_check = 0

    def removed(self, count: int) -> None:
        """Count removed rows; every so often, see whether space should go back to the filesystem."""
        self._removed_since_check += count
        if self._removed_since_check >= _RECLAIM_EVERY:
            self._removed_since_check = 0
            try:
                self.reclaim()
            except PBufferError as exc:  # the messages were removed; space can wait for the next check
                _log.debug("reclaiming space failed: %s", exc)

    def reclaim(self, *, force: bool = False) -> int:
        """Release the free pages once at least a quarter of the file (and 4 MiB) is free, or whatever is free
        with ``force``; returns how many pages were released."""
        tx = self._tx
        with tx.cursor("reclaim", write=False) as cursor:
            free = int(cursor.execute("PRAGMA freelist_count").fetchone()[0])
            total = int(cursor.execute("PRAGMA page_count").fetchone()[0])
        if not force and (free < _RECLAIM_MIN_PAGES or free * 4 < total):
            return 0
        released = 0
        while released < free:
            step = min(_RECLAIM_STEP, free - released)
            with tx.write_lock:
                conn = tx.connections.take("reclaim")
                try:
                    # executescript steps the pragma to completion; a cursor's execute frees one page per call.
                    conn.executescript(f"BEGIN IMMEDIATE; PRAGMA incremental_vacuum({int(step)}); COMMIT;")
                except BaseException as exc:
                    tx.failed(conn, exc, "reclaim")
                tx.connections.give_back(conn)
            released += step
        # Let the released pages leave the main file now rather than at the next automatic checkpoint; under
        # the write lock (when there is one), so the checkpoint overlaps no write.
        with tx.write_lock, tx.cursor("reclaim", write=False) as cursor:
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        _log.info("released %d free pages of %d", released, total)
        return released
