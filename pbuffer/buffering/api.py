"""The methods applications call on every :class:`~pbuffer.Buffer`, written once: check the arguments, give ids
and times, then call the backend's primitives; group commit, ``overflow="block"``, ``ttl`` re-reads and listeners
around them. The promises these methods keep, and the primitives they call, are written in :mod:`pbuffer.buffer`
(the contract): a backend author reads that file, not this one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .. import ids, validation
from ..errors import BackendError, ValidationError
from ..limits import BufferStats, ClaimStats, Limits, SubjectStats
from ..message import NO_HEADERS, DeadLetter, Message, Outgoing, Payload
from ..validation import check_limit, check_message_id
from . import expiry
from .group_commit import GroupCommit
from .listeners import Listeners, RemovalLog
from .room import Room

__all__ = ["BufferAPI"]

_Self = TypeVar("_Self", bound="BufferAPI")

# Looked up once: save() runs them on every message.
_time_ns = time.time_ns
_new_id = ids.new_id
_known_subjects = validation.valid_subjects


class BufferAPI:
    """The public methods of :class:`~pbuffer.Buffer` (documented there as its own), over its primitives."""

    limits: Limits
    group_commit: bool
    # Set by Buffer (the last by a backend whose server limits a row); save() reads them on its fast path.
    subject: str | None
    _with_trace: Callable[[Mapping[str, str] | None], Mapping[str, str] | None] | None
    _max_message_bytes: int | None

    def __init__(self, limits: Limits) -> None:
        # Limits are frozen and the buffer's never change: whether a save may wait for room is known now.
        self._blocks_for_room = limits.overflow == "block"
        self._listeners = Listeners()
        self._removals = RemovalLog(limits)
        self._room = Room(limits)
        self._grouped = GroupCommit(self._insert_when_room)
        self._close_lock = threading.Lock()
        self._closed = False

    if TYPE_CHECKING:  # What this class calls; pbuffer.buffer.Buffer declares (abstract) and documents each one.
        def _prepare(self, payload: object, subject: str | None, headers: Mapping[str, str] | None,
                     message_id: str, created_us: int) -> Message: ...
        def _insert(self, messages: list[Message]) -> None: ...
        def _insert_in(self, messages: list[Message], connection: object) -> Any: ...
        def _get(self, limit: int | None, after: str | None) -> list[Message]: ...
        def _pop(self, now_us: int) -> Message | None: ...
        def _claim(self, limit: int, after: str | None, owner: str, until_us: int, now_us: int) -> list[Message]: ...
        def _claim_skipping(self, limit: int, after: str | None, owner: str, until_us: int, now_us: int,
                            skip: frozenset[str]) -> list[Message]: ...
        def _release(self, message_ids: list[str], owner: str) -> int: ...
        def _delete(self, message_id: str) -> bool: ...
        def _delete_many(self, message_ids: list[str]) -> int: ...
        def _discard(self, message_ids: list[str], kind: str) -> int: ...
        def _count_removed(self, message: Message, kind: str) -> None: ...
        def _mark_dead(self, message_id: str, reason: str, attempts: int, now_us: int) -> bool: ...
        def _requeue(self, message_id: str) -> bool: ...
        def _dead_letters(self, limit: int | None) -> list[DeadLetter]: ...
        def _count(self) -> int: ...
        def _stats(self, now_us: int) -> BufferStats: ...
        def _subject_stats(self) -> dict[str, SubjectStats]: ...
        def _claim_stats(self, window: int, now_us: int) -> ClaimStats | None: ...
        def _close(self) -> None: ...

    # ----------------------------------------------------------------------------------------------- writing

    def save(self, payload: Payload, *, subject: str | None = None,
             headers: Mapping[str, str] | None = None, connection: object | None = None) -> Message:
        """Store one message and return it (with its id). Returning means it is stored (see Durability).

        ``connection``: a SQLAlchemy ``Connection`` or ORM ``Session`` on this buffer's database, to save in the
        caller's own transaction (see Outbox above): then the message is stored when that transaction commits.
        """
        if self._closed:
            self._check_open()
        now_ns = _time_ns()
        if (type(payload) is bytes and headers is None and type(subject) is str and subject in _known_subjects
                and self.subject is None and self._with_trace is None and self._max_message_bytes is None):
            # The common save, spelled out: what _prepare checks and builds for bytes, no headers and a subject
            # already found valid (an ordinary one: system subjects are never remembered), three calls fewer.
            message = Message(_new_id(now_ns), subject, payload, NO_HEADERS, now_ns // 1000)
        else:
            message = self._prepare(payload, subject, headers, _new_id(now_ns), now_ns // 1000)
        if connection is not None:
            self._save_in([message], connection)
            return message
        self._commit_call([message])
        if self._listeners.callbacks:
            self._notify()
        return message

    def save_many(self, items: Iterable[Payload | Outgoing], *, subject: str | None = None,
                  headers: Mapping[str, str] | None = None, connection: object | None = None) -> list[Message]:
        """Store many messages in one transaction, all or nothing, in the order given.

        Each item is a bytes-like payload (saved with ``subject`` and ``headers``) or an :class:`Outgoing` with
        its own subject and headers (``None`` fields fall back to the call's). ``connection``: as in :meth:`save`.
        """
        self._check_open()
        items = list(items)
        now_ns = _time_ns()
        created_us = now_ns // 1000
        message_ids = ids.new_ids(len(items), now_ns)
        prepare = self._prepare_item
        if (headers is None and type(subject) is str and subject in _known_subjects and self.subject is None
                and self._with_trace is None and self._max_message_bytes is None):
            # As in save(): a bytes payload with the call's known subject and no headers needs no more checking.
            messages = [
                Message(message_id, subject, item, NO_HEADERS, created_us) if type(item) is bytes
                else prepare(item, subject, headers, message_id, created_us)
                for item, message_id in zip(items, message_ids, strict=True)
            ]
        else:
            messages = [prepare(item, subject, headers, message_id, created_us)
                        for item, message_id in zip(items, message_ids, strict=True)]
        if connection is not None:
            if messages:
                self._save_in(messages, connection)
            return messages
        if messages:
            self._commit_call(messages)
            self._notify()
        return messages

    def _prepare_item(self, item: Payload | Outgoing, subject: str | None, headers: Mapping[str, str] | None,
                      message_id: str, created_us: int) -> Message:
        """:meth:`_prepare` for one item of :meth:`save_many`: an :class:`Outgoing`'s fields over the call's."""
        if isinstance(item, Outgoing):
            return self._prepare(item.payload, item.subject or subject,
                                 headers if item.headers is None else item.headers, message_id, created_us)
        return self._prepare(item, subject, headers, message_id, created_us)

    def prepare(self, payload: Payload, *, subject: str | None = None,
                headers: Mapping[str, str] | None = None) -> Message:
        """Validate a message and give it its id without storing it: many producers prepare, :meth:`commit` stores."""
        self._check_open()
        now_ns = time.time_ns()
        return self._prepare(payload, subject, headers, ids.new_id(now_ns), now_ns // 1000)

    def commit(self, messages: list[Message]) -> None:
        """Store prepared messages in one transaction, in the order given, all or nothing."""
        self._check_open()
        if messages:
            self._commit_call(list(messages))
            if self._listeners.callbacks:
                self._notify()

    def delete(self, message_id: str) -> bool:
        """Delete a message, pending or dead. ``False`` if there was none with that id (in this scope)."""
        self._check_open()
        deleted = self._delete(check_message_id(message_id))
        self._room.freed(int(deleted))
        return deleted

    def delete_many(self, message_ids: Iterable[str]) -> int:
        """Delete many messages (pending or dead) in one transaction; returns how many existed."""
        self._check_open()
        checked = list(dict.fromkeys(check_message_id(message_id) for message_id in message_ids))
        return self._room.freed(self._delete_many(checked)) if checked else 0

    def pop(self) -> Message | None:
        """Remove and return the oldest pending message no live claim holds, atomically, or ``None``."""
        if self._closed:
            self._check_open()
        ttl = self.limits.ttl
        while True:
            message = self._pop(_time_ns() // 1000)
            if message is None:
                return None
            if self._blocks_for_room:
                self._room.freed(1)
            if ttl is None or not expiry.is_expired(message, _time_ns() // 1000, ttl):
                return message
            # Too old to hand out: counted as expired in a transaction after the pop's (a crash between the two
            # loses the count of this one message, never a message).
            self._count_removed(message, "expired")
            self._note_removed("expired", 1)

    def mark_dead(self, message_id: str, reason: str, *, attempts: int = 1) -> bool:
        """Move a pending message to the dead letters with ``reason``; ``False`` if it is not pending."""
        self._check_open()
        validation.check_reason(reason)
        moved = self._mark_dead(check_message_id(message_id), reason, validation.check_attempts(attempts),
                                time.time_ns() // 1000)
        self._room.freed(int(moved))
        return moved

    def requeue(self, message_id: str) -> bool:
        """Make a dead letter pending again, at the back of the queue; ``False`` if it is not dead."""
        self._check_open()
        done = self._requeue(check_message_id(message_id))
        if done:
            self._notify()
        return done

    # ----------------------------------------------------------------------------------------------- reading

    def get(self) -> Message | None:
        """The oldest pending message, not removed, or ``None``."""
        self._check_open()
        found = self._read(lambda: self._get(1, None))
        return found[0] if found else None

    def get_all(self, limit: int | None = None, *, after: str | None = None) -> list[Message]:
        """Pending messages, oldest first, at most ``limit`` when given; ``after``: only those queued behind that
        pending message (a relay's next window), from the oldest if it is no longer pending."""
        self._check_open()
        checked_limit, checked_after = check_limit(limit), None if after is None else check_message_id(after)
        return self._read(lambda: self._get(checked_limit, checked_after))

    def claim(self, limit: int, *, owner: str, lease: float, after: str | None = None,
              skip_subjects: Iterable[str] = ()) -> list[Message]:
        """Claim up to ``limit`` of the oldest pending messages that no other owner holds a live claim on, for
        ``owner`` (a UUID string naming the relay: :func:`pbuffer.ids.new_id`) for ``lease`` seconds, oldest first;
        those ``owner`` already holds come again, renewed. ``after``: as in :meth:`get_all`. ``skip_subjects``:
        passed over, neither returned nor claimed (a relay holds back a failing subject this way). On PostgreSQL and
        MariaDB a claim behind ``after`` returns ``[]`` while an older message outside ``skip_subjects`` is free (a
        late commit): the caller then claims from the oldest, so each producer's messages keep their order."""
        self._check_open()
        checked_limit = check_limit(limit)
        if checked_limit is None:
            raise ValidationError("claim() needs a limit")
        checked_owner = check_message_id(owner)
        checked_after = None if after is None else check_message_id(after)
        seconds, skip = validation.check_lease(lease), validation.check_skip_subjects(skip_subjects)

        def claim_now() -> list[Message]:
            now_us = time.time_ns() // 1000
            until_us = now_us + int(seconds * 1e6)
            if skip:
                return self._claim_skipping(checked_limit, checked_after, checked_owner, until_us, now_us, skip)
            return self._claim(checked_limit, checked_after, checked_owner, until_us, now_us)

        return self._read(claim_now)

    def release(self, message_ids: Iterable[str], *, owner: str) -> int:
        """End ``owner``'s claims on these messages (those it did not publish); returns how many it held."""
        self._check_open()
        checked_owner = check_message_id(owner)
        checked = list(dict.fromkeys(check_message_id(message_id) for message_id in message_ids))
        return self._release(checked, checked_owner) if checked else 0

    def stats(self) -> BufferStats:
        """Counts, bytes, the oldest message's age, the dropped and expired totals (:class:`BufferStats`), read from
        counters: fast on any size of buffer."""
        self._check_open()
        return self._stats(time.time_ns() // 1000)

    def subject_stats(self) -> dict[str, SubjectStats]:
        """:meth:`stats` per subject (in scope), read from the same counters: every subject that ever had a
        message, drained ones included at zero, sorted by subject. No oldest age: that would need a walk."""
        self._check_open()
        return dict(sorted(self._subject_stats().items()))

    def claim_stats(self, window: int = 10_000) -> ClaimStats | None:
        """The relays' live claims among the ``window`` oldest pending messages in scope (where relays claim), or
        ``None`` when the backend cannot tell. Reads only: an index range of ``window`` rows on the SQL backends."""
        self._check_open()
        return self._claim_stats(validation.check_window(window), time.time_ns() // 1000)

    def expire(self) -> int:
        """Remove the pending messages older than ``ttl`` now, from the oldest to the first young one (reads do it
        as they meet them); returns how many (0 without a ``ttl``)."""
        self._check_open()
        ttl = self.limits.ttl
        return 0 if ttl is None else expiry.expire_all(lambda n: self._get(n, None), ttl, self._remove_expired)

    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters, in the order they were dead-lettered; at most ``limit`` when given."""
        self._check_open()
        return self._dead_letters(check_limit(limit))

    def __len__(self) -> int:
        """Number of pending messages (in this scope)."""
        self._check_open()
        return self._count()

    # ------------------------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Release connections and files; idempotent. Calls racing it from other threads complete (a save that
        returns is committed) or raise :class:`~pbuffer.BackendError` having written nothing."""
        with self._close_lock:  # two threads closing at once: one of them closes
            if self._closed:
                return
            self._closed = True
        self._close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def add_listener(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` (from the saving thread) after each save, save_many or requeue commits (an outbox
        save's: at the caller's commit; on PostgreSQL also other processes' saves, by LISTEN/NOTIFY from a thread):
        how a relay wakes at once. Keep callbacks tiny; an exception in one is logged, not raised to the saver."""
        self._listeners.add(callback)

    def remove_listener(self, callback: Callable[[], object]) -> None:
        """Stop calling ``callback`` (added with :meth:`add_listener`); nothing happens if it was not added."""
        self._listeners.remove(callback)

    # ------------------------------------------------------------------------------ inherited machinery

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"{type(self).__name__} is closed")

    def _commit_call(self, messages: list[Message]) -> None:
        """Commit one call's messages: grouped with other threads' when enabled, waiting for room if asked to."""
        if self.group_commit:
            self._grouped.commit(messages)
        elif self._blocks_for_room:
            self._room.insert(messages, self._insert)
        else:  # the common case, spelled out: two calls fewer per save (memory save() is ~4 us in all)
            self._insert(messages)

    def _insert_when_room(self, messages: list[Message]) -> None:
        if self._blocks_for_room:
            self._room.insert(messages, self._insert)
        else:  # the group commit's insert on every save: a call fewer
            self._insert(messages)

    def _save_in(self, messages: list[Message], connection: object) -> None:
        """The outbox: write ``messages`` through the caller's transaction; wake listeners at its commit."""
        from ..outbox import after_commit  # SQLAlchemy's ORM, imported only by applications that use the outbox
        after_commit(self._insert_in(messages, connection), id(self), self._notify)

    def _read(self, read: Callable[[], list[Message]]) -> list[Message]:
        """Run a read; with a ``ttl``, remove (and count) the expired messages it met and read again."""
        return expiry.read_fresh(read, self.limits.ttl, self._remove_expired)

    def _remove_expired(self, messages: list[Message]) -> int:
        removed = self._room.freed(self._discard([m.id for m in messages], "expired"))
        self._note_removed("expired", removed)
        return removed

    def _note_removed(self, kind: str, count: int) -> None:
        """Log messages the limits removed (``"dropped"``, ``"expired"``), rate-limited."""
        self._removals.note(kind, count)

    def _notify(self) -> None:
        self._listeners.notify()
