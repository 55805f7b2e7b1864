"""Keeping ``pbuffer_counters`` exact, inside the transactions that change the rows it counts: the SQL backend's
counter writes (one upsert per subject, sharded on server databases), sqlite's lazy count of new messages (the mark
and its folds) and of popped ones (the head, counted in advance), and folding the outbox's own counter rows back
into the shared ones.

So ``stats()`` and the limits read a handful of counter rows instead of counting a table.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import fields
from typing import Any

from .counters import Changes, Counts
from .sql_statements import NO_LIMIT, SHARDS, Statements
from .tables import COUNTER_COLUMNS

__all__ = ["Counting"]

_log = logging.getLogger("pbuffer.backends.sql")

# Counts' fields are pbuffer_counters' columns, in order: Counts.from_row reads the counters' rows by position.
assert tuple(field.name for field in fields(Counts)) == COUNTER_COLUMNS

# sqlite counts new messages lazily (revision 0003): a writer folds the uncounted tail into the counters once it may
# hold this many rows (fewer when limits are set: each limited save reads the tail), so stats() adds up at most
# about that many rows per writing process.
_FOLD_EVERY = 1024
_FOLD_EVERY_LIMITED = 64
# sqlite's pops (revision 0005): a pop past the head moves it over this many counted rows, counting them in advance
# as deleted, so the next pops write no counters page; stats() adds up at most about that many head rows.
_HEAD_EVERY = 1024
_HEAD_EVERY_LIMITED = 64
# Outbox saves on server databases count into a counters row of their own: a shard drawn from this range, which no
# other writer uses, so the row locked until the caller commits is nobody else's (see SQLBuffer._insert_in).
# Relays' deletes fold committed ones back into the shared shards, at most every _FOLD_OUTBOX_EVERY seconds per
# process.
_OUTBOX_SHARDS = (SHARDS, 2**31 - 1)
_FOLD_OUTBOX_EVERY = 1.0
_FOLD_OUTBOX_ROWS = 1000


class Counting:
    """One buffer's writes to the counters. Every method runs in the caller's write transaction (``cursor``).

    sqlite (``lazy``): a save leaves its row uncounted, in the tail above the mark; see :meth:`maybe_fold`.
    Server databases count in every transaction instead (their seqs commit out of order).
    """

    def __init__(self, statements: Statements, *, sqlite: bool, bounded: bool) -> None:
        self._sql = statements
        self._sqlite = self.lazy = sqlite
        # The limits are fixed when the buffer is opened; limited saves read the tail, so it is kept shorter.
        self._bounded = bounded
        self._mark: int | None = None  # the mark as this process last saw it
        self._outbox_folded_at = 0.0

    def bump(self, cursor: Any, changes: Changes, outbox: bool = False, keep: Iterable[str] = ()) -> None:
        """Add a transaction's changes to the counters, in the same transaction (``outbox``: a caller's, whose
        counters row must be no other writer's: see _OUTBOX_SHARDS)."""
        shard = 0 if self._sqlite else random.randrange(*(_OUTBOX_SHARDS if outbox else (0, SHARDS)))
        # Subjects in sorted order: concurrent transactions lock counter rows in one order, so never deadlock.
        for subject in sorted(changes):
            counts = changes[subject]
            if not counts.is_zero() or (subject in keep and not self.lazy):
                cursor.execute(self._sql.bump, {"subject": subject, "shard": shard, **counts.columns()})
            elif self.lazy:
                # Rows that left sqlite's uncounted tail: their subject keeps a counters row (at zero) all the
                # same, as a drained subject does.
                cursor.execute(self._sql.touch, {"subject": subject})

    def popped(self, cursor: Any, seq: int, subject: str, size: int, marks: tuple[int, int]) -> None:
        """sqlite, in a pop's transaction, before its row (``seq``, of ``subject``, ``size`` payload bytes) is
        deleted: count it as deleted. ``marks``: the counted mark and the head's end, as the pop read them.

        A row of the head (``seq <= head_to_seq``) was counted in advance: nothing to write, so the pop's commit
        writes the row's pages and no counters page. A counted row past the head moves the head over the next
        _HEAD_EVERY counted rows, this one among them (:meth:`_move_head`), once the head holds no row: the
        counters are written once per that many pops, and the head never holds more rows than that (stats() adds
        them up). Otherwise (rows left in the head: claimed, or another subject's that a scoped buffer passes; or
        this row too far on) it is counted out of pending here. A row of the uncounted tail was never in pending:
        its subject's ``deleted`` goes up.
        """
        counted_to, head_to = marks
        if seq <= head_to:
            return
        if seq <= counted_to:
            cursor.execute(self._sql.head_ahead, {"head": head_to, "counted": counted_to,
                                                  "limit": _HEAD_EVERY_LIMITED if self._bounded else _HEAD_EVERY})
            oldest, ahead = cursor.fetchone()
            if oldest > head_to and ahead is not None and ahead >= seq:
                self._move_head(cursor, head_to, int(ahead))
                return
            update, counts = self._sql.pop_counted, Counts(-1, -size, deleted=1)
        else:
            update, counts = self._sql.pop_uncounted, Counts(deleted=1)
        cursor.execute(update, {"size": size, "subject": subject})
        if cursor.rowcount != 1:  # sqlite never deletes a counters row: this subject has none yet
            self.bump(cursor, {subject: counts})

    # ---------------------------------------------------------------- sqlite's head, counted in advance
    #
    # Invariant, kept by every writer inside its write transaction: 0 <= head_to_seq <= up_to_seq. A pending row
    # with seq <= head_to_seq is in its subject's counters as deleted and not as pending; stats() adds the head's
    # rows back (pbuffer_counters_0005 alone would say they were deleted). A pop of a head row writes nothing more;
    # every other removal of one counts it out of deleted into where it went (counters.tally_removed; as deleted:
    # nothing). The marks come down together when the newest rows go (removed_pending), so a new row is never in
    # the head.

    def read_marks(self, cursor: Any) -> tuple[int, int]:
        """The counted mark and the head's end, read in the caller's write transaction: a row is in the counters'
        pending when head < seq <= mark. Server databases count every row and have no head."""
        if not self.lazy:
            return NO_LIMIT, 0
        cursor.execute(self._sql.marks)
        counted_to, head_to = cursor.fetchone()
        return int(counted_to), int(head_to)

    def _move_head(self, cursor: Any, head_to: int, new_head: int) -> None:
        """Move the head's end from ``head_to`` on to ``new_head``: the counted rows between them leave pending
        and are counted as deleted in advance, by subject."""
        cursor.execute(self._sql.head_sums, {"low": head_to, "high": new_head})
        self.bump(cursor, {str(subject): Counts(-int(rows), -int(size), deleted=int(rows))
                           for subject, rows, size in cursor.fetchall()})
        cursor.execute(self._sql.set_head, {"head": new_head})

    # ---------------------------------------------------------------- sqlite's lazy count of new messages
    #
    # Invariant, kept by every writer inside its write transaction: a pending row is in the counters exactly when
    # its seq <= the mark (pbuffer_counted.up_to_seq), and every row sqlite will insert next gets a seq above the
    # mark. sqlite gives a new row max(seq) + 1, so the second half holds as long as the mark never exceeds the
    # largest seq present: a removal that takes the newest rows lowers the mark to the largest seq left.

    def maybe_fold(self, cursor: Any, last_seq: int | None) -> None:
        """After a save's insert (in its transaction): fold the tail into the counters once it may hold
        ``_FOLD_EVERY`` rows. ``last_seq``: the inserted row's seq (``None`` after a batch: asked for)."""
        if last_seq is None:
            cursor.execute(self._sql.newest_seq)
            last_seq = int(cursor.fetchone()[0] or 0)
        if self.fold_due(last_seq):
            cursor.execute(self._sql.fold)
            cursor.execute(self._sql.move_mark)
            self._mark = int(cursor.fetchone()[0])

    def fold_due(self, last_seq: int) -> bool:
        """Whether the tail may hold ``_FOLD_EVERY`` rows once a row of seq ``last_seq`` is in it."""
        mark = self._mark
        every = _FOLD_EVERY_LIMITED if self._bounded else _FOLD_EVERY
        # last_seq <= mark: the mark moved since this process saw it (another process folded, or removals
        # lowered it): look again.
        return mark is None or not mark < last_seq < mark + every

    def fold_apart(self, conn: Any, last_seq: int) -> bool:
        """After a save committed by its INSERT alone (sqlite's autocommit): the fold if due, in a transaction of
        its own on ``conn``. A fold is a transaction like any other (the invariant above holds before and after
        it), so it needs no save with it. The save stands whatever happens here: ``False`` if the fold failed (a
        full disk, say; the connection is then unfit for reuse). The tail stays uncounted until a later save folds
        it, and ``stats()`` adds it up meanwhile, exactly."""
        if not self.fold_due(last_seq):
            return True
        try:
            cursor = conn.cursor()
            if self._mark is None:  # this buffer's first save: the mark read (no transaction), not a fold
                self._mark = self.read_marks(cursor)[0]
                if not self.fold_due(last_seq):
                    return True
            cursor.execute("BEGIN IMMEDIATE")
            self.maybe_fold(cursor, last_seq)
            conn.commit()
        except BaseException as exc:
            if not isinstance(exc, Exception):  # an interrupt: no transaction left holding the write lock
                with suppress(Exception):
                    conn.rollback()
                raise
            _log.debug("the fold after a save failed (the save is committed; a later save folds): %r", exc)
            return False
        return True

    def removed_pending(self, cursor: Any) -> None:
        """After pending rows were removed in this transaction: lower the marks if the newest rows went."""
        if self.lazy:
            cursor.execute(self._sql.lower_mark)

    # ------------------------------------------------------------------ the outbox's own rows (server databases)

    def fold_outbox_counters(self, cursor: Any, changes: Changes) -> set[str]:
        """Server databases, in a relay's delete, at most every _FOLD_OUTBOX_EVERY seconds: move the counters rows
        of committed outbox saves (each its own, see _OUTBOX_SHARDS) into ``changes``, so the counters table stays
        about subjects x shards rows. Rows of open transactions are invisible or locked: passed over (SKIP LOCKED),
        never waited for. Returns the subjects folded (each keeps a shared counters row, at zero if need be:
        drained subjects stay listed)."""
        if self._sqlite or time.monotonic() - self._outbox_folded_at < _FOLD_OUTBOX_EVERY:
            return set()
        self._outbox_folded_at = time.monotonic()
        cursor.execute(self._sql.outbox_counters, {"limit": _FOLD_OUTBOX_ROWS})
        rows = cursor.fetchall()
        if not rows:
            return set()
        cursor.executemany(self._sql.delete_counter, [{"subject": row[0], "shard": row[1]} for row in rows])
        for subject, _, *values in rows:
            changes.setdefault(subject, Counts()).add(Counts.from_row(values))
        return {row[0] for row in rows}
