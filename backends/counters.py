"""One subject's counts, as every backend keeps them: pending messages and bytes, dead letters and bytes, and the
messages the limits dropped or expired.

The SQL backends store them in ``pbuffer_counters`` (a column each, ``tables.COUNTER_COLUMNS``, in the order of
the fields here: :mod:`.sql_counting` checks it) and add up each transaction's changes in a :data:`Changes`; the
memory backend keeps one :class:`Counts` per subject. Both read them out as :class:`~pbuffer.BufferStats` and
:class:`~pbuffer.SubjectStats`. A slotted class with named fields rather than a list indexed by position: a save
bumps two fields, which costs the same either way (measured), and the names say which count is which. No
SQLAlchemy here: the memory backend never imports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pbuffer.limits import BufferStats, SubjectStats

__all__ = ["Changes", "Counts", "Removed", "removed_sums", "tally", "tally_removed"]


@dataclass(slots=True)
class Counts:
    """A subject's counts (or a scope's totals, or a transaction's changes to them: negative then)."""

    pending: int = 0
    pending_bytes: int = 0
    dead: int = 0
    dead_bytes: int = 0
    dropped: int = 0
    expired: int = 0
    deleted: int = 0

    @classmethod
    def from_row(cls, row: Iterable[Any]) -> Counts:
        """From database values in the order of ``COUNTER_COLUMNS``."""
        return cls(*(int(value) for value in row))

    @classmethod
    def total(cls, counts: Iterable[Counts]) -> Counts:
        summed = cls()
        for each in counts:
            summed.add(each)
        return summed

    def add(self, other: Counts) -> None:
        self.pending += other.pending
        self.pending_bytes += other.pending_bytes
        self.dead += other.dead
        self.dead_bytes += other.dead_bytes
        self.dropped += other.dropped
        self.expired += other.expired
        self.deleted += other.deleted

    def count_removed(self, kind: str, count: int = 1) -> None:
        """Count ``count`` messages removed: ``kind`` is ``"dropped"`` or ``"expired"`` (by the limits) or
        ``"deleted"``."""
        if kind == "deleted":  # the relay's: first
            self.deleted += count
        elif kind == "dropped":
            self.dropped += count
        elif kind == "expired":
            self.expired += count
        else:
            raise KeyError(kind)

    def is_zero(self) -> bool:
        return not (self.pending or self.pending_bytes or self.dead or self.dead_bytes or self.dropped
                    or self.expired or self.deleted)

    def columns(self) -> dict[str, int]:
        """Bound parameters named for ``pbuffer_counters``' columns."""
        return {"pending": self.pending, "pending_bytes": self.pending_bytes, "dead": self.dead,
                "dead_bytes": self.dead_bytes, "dropped": self.dropped, "expired": self.expired,
                "deleted": self.deleted}

    def subject_stats(self) -> SubjectStats:
        return SubjectStats(self.pending, self.pending_bytes, self.dead, self.dead_bytes, self.dropped, self.expired,
                            self.deleted)

    def buffer_stats(self, oldest_age: float | None) -> BufferStats:
        return BufferStats(self.pending, self.pending_bytes, self.dead, self.dead_bytes, oldest_age, self.dropped,
                           self.expired, self.deleted)


#: A transaction's changes to the counters, by subject.
Changes = dict[str, Counts]


#: Rows removed from one table, of one subject: (subject, rows, their payload bytes, how many of them were in the
#: counters' pending and their bytes, how many were in sqlite's head and their bytes). sqlite's uncounted tail never
#: entered pending, and its head (revision 0005) left pending for deleted in advance; a dead letter counts 1.
Removed = tuple[str, int, int, int, int, int, int]


def removed_sums(rows: Iterable[tuple[str, int, bool, bool]]) -> list[Removed]:
    """Removed rows of (subject, payload size, in pending, in the head), summed by subject."""
    sums: dict[str, list[int]] = {}
    for subject, size, counted, head in rows:
        entry = sums.get(subject)
        if entry is None:
            entry = sums[subject] = [0, 0, 0, 0, 0, 0]
        entry[0] += 1
        entry[1] += size
        if counted:
            entry[2] += 1
            entry[3] += size
        if head:
            entry[4] += 1
            entry[5] += size
    return [(subject, rows, size, counted, counted_size, head, head_size)
            for subject, (rows, size, counted, counted_size, head, head_size) in sums.items()]


def tally_removed(removed: Iterable[Removed], kind: str, into: Changes, *, dead: bool = False) -> None:
    """Counter changes for removed rows, summed by subject (:data:`Removed`), each counted once in ``kind``
    (``"deleted"``, ``"dropped"`` or ``"expired"``): pending rows leave pending if they were in it; ``dead``:
    they were dead letters and leave those. A row of sqlite's head was counted as deleted in advance: as deleted
    it is counted already; as anything else it leaves deleted for it."""
    for subject, rows, size, counted, counted_size, head, _ in removed:
        counts = into.get(subject)
        if counts is None:
            counts = into[subject] = Counts()
        if dead:
            counts.dead -= rows
            counts.dead_bytes -= size
        else:
            counts.pending -= counted
            counts.pending_bytes -= counted_size
        if kind == "deleted":
            counts.deleted += rows - head
        else:
            counts.count_removed(kind, rows)
            counts.deleted -= head


def tally(rows: Iterable[tuple[str, int]], *, pending: int = 0, dead: int = 0, kind: str | None = None,
          into: Changes | None = None) -> Changes:
    """Counter changes for rows of (subject, payload size) that moved by ``pending`` and ``dead`` (+1, -1 or 0),
    each also counted once in ``kind`` (``"dropped"``, ``"expired"`` or ``"deleted"``) when given."""
    changes: Changes = {} if into is None else into
    for subject, size in rows:
        counts = changes.get(subject)
        if counts is None:
            counts = changes[subject] = Counts()
        counts.pending += pending
        counts.pending_bytes += pending * size
        counts.dead += dead
        counts.dead_bytes += dead * size
        if kind is not None:
            counts.count_removed(kind)
    return changes
