"""``memory://``: an in-process buffer for tests and speed. It keeps the whole contract except durability:
messages live only as long as the process.

``memory://`` makes a private buffer; ``memory://NAME`` opens a store shared by every buffer opened with the same
name in this process (the way several buffers can open one sqlite file).
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pbuffer.buffer import Buffer
from pbuffer.errors import ConfigurationError, ValidationError
from pbuffer.limits import BufferStats, ClaimStats, SubjectStats
from pbuffer.message import DeadLetter, Message, from_micros

from .counters import Counts
from .errors import ALREADY_PENDING, ALREADY_STORED

__all__ = ["MemoryBuffer"]


@dataclass
class _Dead:
    message: Message
    reason: str
    attempts: int
    failed_us: int


# A lane is compacted when it holds more than twice its live messages plus this many entries.
_COMPACT_SLACK = 1024


class _Lane(list[int]):
    """The sequence numbers of one scope's pending messages (all, or one subject's), in queue order.

    Removing a message does not touch its lane: an entry whose sequence number is no longer in ``_Store.pending``
    is dead, and walks pass over it. So a save appends one int, a removal costs nothing here, and a read that
    starts behind a message (``after=``) finds its place by bisection instead of walking from the head. Walks
    remember what they passed over (``head`` for the front, ``skip`` for runs of dead entries further in), so no
    run of dead entries is walked twice, and the lane is rebuilt once the dead outnumber the live
    (:meth:`_Store.remove`): every operation costs the messages it returns, amortized.
    """

    __slots__ = ("head", "skip")

    def __init__(self) -> None:
        super().__init__()
        self.head = 0  # every entry before it is dead
        self.skip: dict[int, int] = {}  # index of a dead entry -> an index at or before the next live entry

    def walk(self, pending: dict[int, Message], behind: int | None, limit: int | None,
             keep: Callable[[Message], bool] | None = None) -> list[tuple[int, Message]]:
        """Up to ``limit`` (all if ``None``) live ``(seq, message)`` pairs, oldest first, that ``keep`` accepts;
        with ``behind``, only those queued behind that sequence number. The caller holds the store's lock."""
        head = self.head
        index = head if behind is None else max(head, bisect_right(self, behind, head))
        at_head = index == head
        found: list[tuple[int, Message]] = []
        if limit == 0:
            return found
        skip, end = self.skip, len(self)
        passed: list[int] = []  # the dead entries since the last live one
        while index < end:
            jump = skip.get(index)
            if jump is not None:
                passed.append(index)
                index = jump
                continue
            seq = self[index]
            message = pending.get(seq)
            if message is None:
                passed.append(index)
                index += 1
                continue
            if passed:
                if at_head:
                    self.head = index
                else:
                    for dead in passed:
                        skip[dead] = index
                passed.clear()
            at_head = False
            if keep is None or keep(message):
                found.append((seq, message))
                if limit is not None and len(found) >= limit:
                    return found
            index += 1
        if passed:
            # Dead up to the end: the next walk starts after them.
            if at_head:
                self.head = end
            else:
                for dead in passed:
                    skip[dead] = end
        return found

    def compact(self, pending: dict[int, Message]) -> None:
        """Drop the dead entries (the caller holds the store's lock)."""
        self[:] = [seq for seq in self[self.head:] if seq in pending]
        self.head = 0
        self.skip.clear()


@dataclass(slots=True)
class _Store:
    """The shared state; every access holds ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    next_seq: int = 1
    # Pending messages by sequence number (dict order is queue order, but a dict cannot start a walk in the middle,
    # nor pop its front without leaving holes to skip: the lanes give the order).
    pending: dict[int, Message] = field(default_factory=dict)
    lane: _Lane = field(default_factory=_Lane)
    lanes_by_subject: dict[str, _Lane] = field(default_factory=dict)
    seq_by_id: dict[str, int] = field(default_factory=dict)
    # Dead letters in the order they died (dicts keep insertion order).
    dead: dict[str, _Dead] = field(default_factory=dict)
    # Claims by message id: (owner, lease end in microseconds).
    claims: dict[str, tuple[str, int]] = field(default_factory=dict)
    # Per subject, as the SQL backends' pbuffer_counters keep them.
    counters: dict[str, Counts] = field(default_factory=dict)

    def counts(self, subject: str) -> Counts:
        """``subject``'s counts, made (at zero) if it has none yet."""
        counts = self.counters.get(subject)
        if counts is None:
            counts = self.counters[subject] = Counts()
        return counts

    def add(self, message: Message) -> None:
        seq = self.next_seq
        self.next_seq = seq + 1
        self.pending[seq] = message
        self.seq_by_id[message.id] = seq
        self.lane.append(seq)
        subject = message.subject
        lane = self.lanes_by_subject.get(subject)
        if lane is None:
            lane = self.lanes_by_subject[subject] = _Lane()
        lane.append(seq)
        counts = self.counters.get(subject)
        if counts is None:
            counts = self.counters[subject] = Counts()
        counts.pending += 1
        counts.pending_bytes += len(message.payload)

    def remove(self, seq: int) -> Message:
        """Remove a pending message. Its lanes keep a dead entry, until there are enough of them to rebuild."""
        pending = self.pending
        message = pending.pop(seq)
        del self.seq_by_id[message.id]
        if self.claims:
            self.claims.pop(message.id, None)
        counts = self.counters[message.subject]
        counts.pending -= 1
        counts.pending_bytes -= len(message.payload)
        left = counts.pending
        if not left:
            del self.lanes_by_subject[message.subject]
        else:
            lane = self.lanes_by_subject[message.subject]
            if len(lane) > 2 * left + _COMPACT_SLACK:
                lane.compact(pending)
        lane = self.lane
        if not pending:
            lane.clear()
            lane.head = 0
            lane.skip.clear()
        elif len(lane) > 2 * len(pending) + _COMPACT_SLACK:
            lane.compact(pending)
        return message

    def delete(self, seq: int) -> Message:
        """Remove a pending message and count it as deleted (``delete``, ``pop``; the limits' removals are
        counted as what they are instead)."""
        message = self.remove(seq)
        self.counters[message.subject].deleted += 1
        return message

    def add_dead(self, dead: _Dead) -> None:
        self.dead[dead.message.id] = dead
        counts = self.counts(dead.message.subject)
        counts.dead += 1
        counts.dead_bytes += len(dead.message.payload)

    def remove_dead(self, message_id: str) -> _Dead:
        dead = self.dead.pop(message_id)
        counts = self.counts(dead.message.subject)
        counts.dead -= 1
        counts.dead_bytes -= len(dead.message.payload)
        return dead

    def claimed_by_other(self, message_id: str, owner: str | None, now_us: int) -> bool:
        claim = self.claims.get(message_id)
        return claim is not None and claim[0] != owner and claim[1] >= now_us


_named_stores: dict[str, _Store] = {}
_named_lock = threading.Lock()


class MemoryBuffer(Buffer):
    """The in-memory backend. Thread-safe; not shared between processes; not durable."""

    schemes = ("memory",)
    blocking = False
    counts_deletions = True

    def __init__(self, name: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        if name:
            with _named_lock:
                self._store = _named_stores.setdefault(name, _Store())
        else:
            self._store = _Store()
        self.name = name
        # Read on every save; the limits are fixed when the buffer is opened.
        self._bounded = self.limits.bounded

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryBuffer:
        parts = urlsplit(url)
        if parts.path not in ("", "/"):
            raise ConfigurationError(f"memory URLs take a name, not a path: memory://NAME, not {url!r}")
        return cls(parts.netloc or None, **options)

    def _insert(self, messages: list[Message]) -> None:
        store = self._store
        # ``with``, not acquire() then try: an interrupt between those two would leave the lock held for good.
        with store.lock:
            # Ids are unique: a message committed twice (prepare(), then commit() retried) is refused whole, as the
            # SQL backends' unique index refuses it. Checked before the limits drop anything.
            seq_by_id = store.seq_by_id
            if len(messages) == 1:
                if messages[0].id in seq_by_id:
                    raise ValidationError(ALREADY_STORED)
            else:
                ids = {message.id for message in messages}
                if len(ids) < len(messages) or not seq_by_id.keys().isdisjoint(ids):
                    raise ValidationError(ALREADY_STORED)
            if self._bounded:
                self._make_room(messages)
            add = store.add
            for message in messages:
                add(message)

    def _make_room(self, messages: list[Message]) -> None:
        """Apply the limits before ``messages`` are added: drop the oldest or raise (the caller holds the lock)."""
        store = self._store
        counts = self._counts()
        lane = self._lane()
        victims = self.limits.make_room(
            counts.pending, counts.pending_bytes, [len(m.payload) for m in messages],
            lambda n: [] if lane is None else [(seq, len(m.payload)) for seq, m in lane.walk(store.pending, None, n)])
        for seq in victims:
            store.counts(store.remove(seq).subject).count_removed("dropped")
        self._note_removed("dropped", len(victims))

    def _counts(self) -> Counts:
        """This scope's counters, a copy (the caller holds the lock)."""
        counters = self._store.counters
        if self.subject is not None:
            subject = counters.get(self.subject)
            return Counts.total(() if subject is None else (subject,))
        return Counts.total(counters.values())

    def _lane(self) -> _Lane | None:
        """This scope's lane, ``None`` when the scope has nothing pending (the caller holds the lock)."""
        if self.subject is None:
            return self._store.lane
        return self._store.lanes_by_subject.get(self.subject)

    def _walk(self, after: str | None, limit: int | None,
              keep: Callable[[Message], bool] | None = None) -> list[tuple[int, Message]]:
        """:meth:`_Lane.walk` over this scope, behind the pending message ``after`` (from the oldest when it is not
        pending); the caller holds the lock."""
        lane = self._lane()
        if lane is None:
            return []
        behind = None if after is None else self._store.seq_by_id.get(after)
        return lane.walk(self._store.pending, behind, limit, keep)

    def _get(self, limit: int | None, after: str | None) -> list[Message]:
        with self._store.lock:
            if limit is None and after is None and self.subject is None:
                return list(self._store.pending.values())
            return [message for _, message in self._walk(after, limit)]

    def _pop(self, now_us: int) -> Message | None:
        store = self._store
        with store.lock:
            free = None if not store.claims else (
                lambda message: not store.claimed_by_other(message.id, None, now_us))
            head = self._walk(None, 1, free)
            return store.delete(head[0][0]) if head else None

    def _claim(self, limit: int, after: str | None, owner: str, until_us: int, now_us: int) -> list[Message]:
        return self._claim_skipping(limit, after, owner, until_us, now_us, frozenset())

    def _claim_skipping(self, limit: int, after: str | None, owner: str, until_us: int, now_us: int,
                        skip: frozenset[str]) -> list[Message]:
        store = self._store
        with store.lock:
            def free(message: Message) -> bool:
                return message.subject not in skip and not store.claimed_by_other(message.id, owner, now_us)

            found = [message for _, message in self._walk(after, limit, free)]
            for message in found:
                store.claims[message.id] = (owner, until_us)
            return found

    def _release(self, message_ids: list[str], owner: str) -> int:
        store = self._store
        with store.lock:
            mine = [i for i in message_ids if (store.claims.get(i) or ("",))[0] == owner]
            for message_id in mine:
                del store.claims[message_id]
            return len(mine)

    def _discard(self, message_ids: list[str], kind: str) -> int:
        store = self._store
        with store.lock:
            found = [seq for seq in (store.seq_by_id.get(i) for i in message_ids)
                     if seq is not None and self._in_scope(store.pending[seq])]
            for seq in found:
                store.counts(store.remove(seq).subject).count_removed(kind)
            return len(found)

    def _count_removed(self, message: Message, kind: str) -> None:
        with self._store.lock:
            counts = self._store.counts(message.subject)
            counts.count_removed(kind)
            counts.deleted -= 1  # _pop counted it as deleted

    def _stats(self, now_us: int) -> BufferStats:
        with self._store.lock:
            counts = self._counts()
            head = self._walk(None, 1)
        oldest = head[0][1] if head else None
        age = None if oldest is None else max(0.0, (now_us - oldest.created_us) / 1e6)
        return counts.buffer_stats(age)

    def _subject_stats(self) -> dict[str, SubjectStats]:
        with self._store.lock:
            return {subject: counts.subject_stats() for subject, counts in self._store.counters.items()
                    if self.subject is None or subject == self.subject}

    def _claim_stats(self, window: int, now_us: int) -> ClaimStats:
        store = self._store
        with store.lock:
            head = [message for _, message in self._walk(None, window)]
            live = [claim for claim in (store.claims.get(m.id) for m in head) if claim is not None
                    and claim[1] >= now_us]
        return ClaimStats(len(live), len({owner for owner, _ in live}), max((u for _, u in live), default=None),
                          len(head))

    def _in_scope(self, message: Message) -> bool:
        return self.subject is None or message.subject == self.subject

    def _delete(self, message_id: str) -> bool:
        with self._store.lock:
            return self._delete_locked(message_id)

    def _delete_locked(self, message_id: str) -> bool:
        store = self._store
        seq = store.seq_by_id.get(message_id)
        if seq is not None and self._in_scope(store.pending[seq]):
            store.delete(seq)
            return True
        dead = store.dead.get(message_id)
        if dead is not None and self._in_scope(dead.message):
            store.remove_dead(message_id)
            store.counters[dead.message.subject].deleted += 1
            return True
        return False

    def _delete_many(self, message_ids: list[str]) -> int:
        with self._store.lock:
            return sum(self._delete_locked(message_id) for message_id in message_ids)

    def _count(self) -> int:
        store = self._store
        with store.lock:
            if self.subject is None:
                return len(store.pending)
            counts = store.counters.get(self.subject)
            return 0 if counts is None else counts.pending

    def _mark_dead(self, message_id: str, reason: str, attempts: int, now_us: int) -> bool:
        store = self._store
        with store.lock:
            seq = store.seq_by_id.get(message_id)
            if seq is None or not self._in_scope(store.pending[seq]):
                return False
            store.add_dead(_Dead(store.remove(seq), reason, attempts, now_us))
            return True

    def _dead_letters(self, limit: int | None) -> list[DeadLetter]:
        with self._store.lock:
            dead = [d for d in self._store.dead.values() if self._in_scope(d.message)]
        return [DeadLetter(d.message, d.reason, d.attempts, from_micros(d.failed_us)) for d in dead[:limit]]

    def _requeue(self, message_id: str) -> bool:
        store = self._store
        with store.lock:
            dead = store.dead.get(message_id)
            if dead is None or not self._in_scope(dead.message):
                return False
            if message_id in store.seq_by_id:  # (the SQL backends' unique index refuses it the same way)
                raise ValidationError(ALREADY_PENDING)
            store.remove_dead(message_id)
            store.add(dead.message)
            return True

    def _close(self) -> None:
        # A private store goes with its buffer; a named one stays for the other buffers sharing it.
        if self.name is None:
            self._store = _Store()


