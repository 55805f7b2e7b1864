"""``memory://``: an in-process buffer for tests and speed. It keeps the whole contract except durability:
messages live only as long as the process.

``memory://`` makes a private buffer; ``memory://NAME`` opens a store shared by every buffer opened with the same
name in this process (the way several buffers can open one sqlite file).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import islice
from typing import Any
from urllib.parse import urlsplit

from pbuffer.buffer import Buffer
from pbuffer.errors import ConfigurationError
from pbuffer.limits import BufferStats, ClaimStats, SubjectStats
from pbuffer.message import DeadLetter, Message, from_micros

__all__ = ["MemoryBuffer"]


@dataclass
class _Dead:
    message: Message
    reason: str
    attempts: int
    failed_us: int


# Positions in a subject's counters: the same as the SQL backends' pbuffer_counters columns.
_PENDING, _PENDING_BYTES, _DEAD, _DEAD_BYTES = 0, 1, 2, 3
_KIND = {"dropped": 4, "expired": 5}


@dataclass
class _Store:
    """The shared state; every access holds ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    next_seq: int = 1
    # Pending messages by sequence number; OrderedDict pops from the front in O(1), a plain dict does not.
    pending: OrderedDict[int, Message] = field(default_factory=OrderedDict)
    pending_by_subject: dict[str, OrderedDict[int, Message]] = field(default_factory=dict)
    seq_by_id: dict[str, int] = field(default_factory=dict)
    # Dead letters in the order they died (dicts keep insertion order).
    dead: dict[str, _Dead] = field(default_factory=dict)
    # Claims by message id: (owner, lease end in microseconds).
    claims: dict[str, tuple[str, int]] = field(default_factory=dict)
    # Per subject: pending, pending bytes, dead, dead bytes, dropped, expired.
    counters: dict[str, list[int]] = field(default_factory=dict)

    def count(self, subject: str, position: int, change: int) -> None:
        self.counters.setdefault(subject, [0] * 6)[position] += change

    def add(self, message: Message) -> None:
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        self.pending[seq] = message
        self.pending_by_subject.setdefault(message.subject, OrderedDict())[seq] = message
        self.seq_by_id[message.id] = seq
        self.count(message.subject, _PENDING, 1)
        self.count(message.subject, _PENDING_BYTES, len(message.payload))

    def remove(self, seq: int) -> Message:
        message = self.pending.pop(seq)
        per_subject = self.pending_by_subject[message.subject]
        del per_subject[seq]
        if not per_subject:
            del self.pending_by_subject[message.subject]
        del self.seq_by_id[message.id]
        self.claims.pop(message.id, None)
        self.count(message.subject, _PENDING, -1)
        self.count(message.subject, _PENDING_BYTES, -len(message.payload))
        return message

    def add_dead(self, dead: _Dead) -> None:
        self.dead[dead.message.id] = dead
        self.count(dead.message.subject, _DEAD, 1)
        self.count(dead.message.subject, _DEAD_BYTES, len(dead.message.payload))

    def remove_dead(self, message_id: str) -> _Dead:
        dead = self.dead.pop(message_id)
        self.count(dead.message.subject, _DEAD, -1)
        self.count(dead.message.subject, _DEAD_BYTES, -len(dead.message.payload))
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

    def __init__(self, name: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        if name:
            with _named_lock:
                self._store = _named_stores.setdefault(name, _Store())
        else:
            self._store = _Store()
        self.name = name

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryBuffer:
        parts = urlsplit(url)
        if parts.path not in ("", "/"):
            raise ConfigurationError(f"memory URLs take a name, not a path: memory://NAME, not {url!r}")
        return cls(parts.netloc or None, **options)

    def _insert(self, messages: list[Message]) -> None:
        store = self._store
        with store.lock:
            if self.limits.bounded:
                counts = self._counts()
                pending = self._pending()
                victims = self.limits.make_room(
                    counts[_PENDING], counts[_PENDING_BYTES], [len(m.payload) for m in messages],
                    lambda n: [(seq, len(m.payload)) for seq, m in islice(pending.items(), n)])
                for seq in victims:
                    store.count(store.remove(seq).subject, _KIND["dropped"], 1)
                self._note_removed("dropped", len(victims))
            for message in messages:
                store.add(message)

    def _counts(self) -> list[int]:
        """This scope's counters (the caller holds the lock)."""
        counters = self._store.counters
        if self.subject is not None:
            return list(counters.get(self.subject, [0] * 6))
        return [sum(column) for column in zip(*counters.values(), strict=True)] if counters else [0] * 6

    def _pending(self) -> OrderedDict[int, Message]:
        if self.subject is None:
            return self._store.pending
        return self._store.pending_by_subject.get(self.subject) or OrderedDict()

    def _get(self, limit: int | None, after: str | None) -> list[Message]:
        with self._store.lock:
            pending = self._pending()
            start = self._store.seq_by_id.get(after, 0) if after is not None else 0
            if limit is None and not start:
                return list(pending.values())
            found: list[Message] = []
            for seq, message in pending.items():
                if limit is not None and len(found) >= limit:
                    break
                if seq > start:
                    found.append(message)
            return found

    def _pop(self, now_us: int) -> Message | None:
        store = self._store
        with store.lock:
            for seq, message in self._pending().items():
                if not store.claimed_by_other(message.id, None, now_us):
                    return store.remove(seq)
            return None

    def _claim(self, limit: int, after: str | None, owner: str, until_us: int, now_us: int) -> list[Message]:
        return self._claim_skipping(limit, after, owner, until_us, now_us, frozenset())

    def _claim_skipping(self, limit: int, after: str | None, owner: str, until_us: int, now_us: int,
                        skip: frozenset[str]) -> list[Message]:
        store = self._store
        with store.lock:
            start = store.seq_by_id.get(after, 0) if after is not None else 0
            found: list[Message] = []
            for seq, message in self._pending().items():
                if len(found) >= limit:
                    break
                if seq > start and message.subject not in skip and not store.claimed_by_other(message.id, owner,
                                                                                                now_us):
                    found.append(message)
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
                store.count(store.remove(seq).subject, _KIND[kind], 1)
            return len(found)

    def _count_removed(self, message: Message, kind: str) -> None:
        with self._store.lock:
            self._store.count(message.subject, _KIND[kind], 1)

    def _stats(self, now_us: int) -> BufferStats:
        with self._store.lock:
            counts = self._counts()
            oldest = next(iter(self._pending().values()), None)
        age = None if oldest is None else max(0.0, (now_us - oldest.created_us) / 1e6)
        return BufferStats(counts[0], counts[1], counts[2], counts[3], age, counts[4], counts[5])

    def _subject_stats(self) -> dict[str, SubjectStats]:
        with self._store.lock:
            return {subject: SubjectStats(*counts) for subject, counts in self._store.counters.items()
                    if self.subject is None or subject == self.subject}

    def _claim_stats(self, window: int, now_us: int) -> ClaimStats:
        store = self._store
        with store.lock:
            pending = store.pending if self.subject is None else store.pending_by_subject.get(self.subject)
            head = [] if pending is None else list(islice(pending.values(), window))
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
            store.remove(seq)
            return True
        dead = store.dead.get(message_id)
        if dead is not None and self._in_scope(dead.message):
            store.remove_dead(message_id)
            return True
        return False

    def _delete_many(self, message_ids: list[str]) -> int:
        with self._store.lock:
            return sum(self._delete_locked(message_id) for message_id in message_ids)

    def _count(self) -> int:
        with self._store.lock:
            return len(self._pending())

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
            store.remove_dead(message_id)
            store.add(dead.message)
            return True

    def _close(self) -> None:
        # A private store goes with its buffer; a named one stays for the other buffers sharing it.
        if self.name is None:
            self._store = _Store()


