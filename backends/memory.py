"""``memory://``: an in-process buffer for tests and speed. It keeps the whole contract except durability:
messages live only as long as the process.

``memory://`` makes a private buffer; ``memory://NAME`` opens a store shared by every buffer opened with the same
name in this process (the way several buffers can open one sqlite file).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pbuffer.buffer import Buffer
from pbuffer.errors import ConfigurationError
from pbuffer.message import DeadLetter, Message, from_micros

__all__ = ["MemoryBuffer"]


@dataclass
class _Dead:
    message: Message
    reason: str
    attempts: int
    failed_us: int


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

    def add(self, message: Message, seq: int | None = None) -> None:
        if seq is None:
            seq, self.next_seq = self.next_seq, self.next_seq + 1
        self.pending[seq] = message
        self.pending_by_subject.setdefault(message.subject, OrderedDict())[seq] = message
        self.seq_by_id[message.id] = seq

    def remove(self, seq: int) -> Message:
        message = self.pending.pop(seq)
        per_subject = self.pending_by_subject[message.subject]
        del per_subject[seq]
        if not per_subject:
            del self.pending_by_subject[message.subject]
        del self.seq_by_id[message.id]
        return message


_named_stores: dict[str, _Store] = {}
_named_lock = threading.Lock()


class MemoryBuffer(Buffer):
    """The in-memory backend. Thread-safe; not shared between processes; not durable."""

    schemes = ("memory",)
    blocking = False

    def __init__(self, name: str | None = None, *, subject: str | None = None) -> None:
        super().__init__(subject=subject)
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
            for message in messages:
                store.add(message)

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

    def _pop(self) -> Message | None:
        store = self._store
        with store.lock:
            pending = self._pending()
            if not pending:
                return None
            return store.remove(next(iter(pending)))

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
            del store.dead[message_id]
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
            store.dead[message_id] = _Dead(store.remove(seq), reason, attempts, now_us)
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
            del store.dead[message_id]
            store.add(dead.message)
            return True

    def _close(self) -> None:
        # A private store goes with its buffer; a named one stays for the other buffers sharing it.
        if self.name is None:
            self._store = _Store()


