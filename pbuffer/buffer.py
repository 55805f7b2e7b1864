"""The Buffer contract: what every backend promises, written once, and the checks every backend inherits. A
backend author reads this file and :mod:`pbuffer.testing` (the conformance suite that checks each promise)."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from . import ids, validation
from .buffering import defaults, expiry
from .buffering.group_commit import GroupCommit
from .buffering.listeners import Listeners, RemovalLog
from .buffering.room import Room
from .buffering.tracing import trace_injector
from .errors import BackendError, ConfigurationError, ValidationError
from .limits import BufferStats, ClaimStats, Limits, Overflow, SubjectStats
from .message import NO_HEADERS, DeadLetter, Message, Outgoing, Payload
from .validation import check_headers, check_limit, check_message_id, check_payload, check_subject

__all__ = ["Buffer"]


class Buffer(ABC):
    """A local, durable queue of messages waiting to be published to NATS JetStream.

    The promises every backend keeps (the conformance suite in :mod:`pbuffer.testing` checks each one):

    **Durability.** When :meth:`save` or :meth:`save_many` returns, the message is committed with the durability
    the backend documents: ``memory://`` keeps it for the life of the process; sqlite with
    ``durability="process"`` (the default) survives a crash or ``kill -9`` of the process, with
    ``durability="power"`` also a power loss or OS crash; PostgreSQL and MariaDB keep what their server's commit
    keeps. If ``save`` raises, nothing was written. ``save_many`` is all or nothing.

    **States.** A message is *pending* until it is deleted (the relay deletes it after JetStream's PubAck) or
    dead-lettered with :meth:`mark_dead`. :meth:`get`, :meth:`get_all`, :meth:`pop` and ``len()`` see pending
    messages only; :meth:`dead_letters` lists the dead, and :meth:`requeue` makes one pending again *at the back
    of the queue* (it keeps its id, so a copy JetStream already stored is still deduplicated).

    **Order.** Oldest first, by the order in which saves committed, kept by a sequence column in storage (never
    by the id, which sorts by time only within one process). Messages from one producer keep its call order;
    the messages of one ``save_many`` call are consecutive.

    **Empty.** :meth:`get` and :meth:`pop` return ``None`` on an empty buffer; :meth:`get_all` returns ``[]``;
    :meth:`delete`, :meth:`mark_dead` and :meth:`requeue` return ``False`` when there is no such message.

    **Concurrency.** A buffer object may be shared by threads. :meth:`pop` is atomic: two callers (threads, or
    processes on one database) never get the same message. Several processes may open one sqlite file or
    server database.

    **Claims.** :meth:`claim` takes a window of the oldest pending messages for one owner (a relay) for a lease;
    while the lease lives, no other owner's :meth:`claim` and no :meth:`pop` returns them. A lease ends when it
    runs out (its holder died or stalled), when the owner releases the messages, or when they are deleted. Other
    reads (:meth:`get`, :meth:`get_all`, ``len()``, :meth:`stats`) still see claimed messages: they are pending.

    **Limits.** ``max_messages`` and ``max_bytes`` (payload bytes) cap the pending messages; at the cap a save
    follows ``overflow``: ``"reject"`` raises :class:`~pbuffer.BufferFullError` and writes nothing,
    ``"drop_oldest"`` removes the oldest pending messages in the same transaction and counts them as dropped,
    ``"block"`` waits for room up to ``block_timeout`` seconds. With ``ttl``, a message older than ``ttl``
    seconds is removed and counted as expired when a read meets it, and is never returned. :meth:`stats` reads
    counters kept in the same transactions as the messages.

    **Subjects.** Every message has a NATS subject, given at save or by the buffer's scope: a buffer opened with
    ``subject=...`` saves to that subject by default and sees only that subject's messages. System subjects
    (``$JS.``, ``$KV.``, ``$SYS.``...) and inboxes (``_INBOX.``) are refused with :class:`~pbuffer.ValidationError`
    (the server acts on them) unless allowed by whole-token prefix: ``allow_subject_prefixes=("$KV.orders.",)``;
    never ``$JS.API``, ``$JS.ACK``, ``$JS.FC``, ``$JSC``, ``$SYS`` (``pbuffer.validation.check_subject_prefixes``).

    **Integrity.** Backends that store bytes keep a checksum per message and verify it on every read; a damaged
    message raises :class:`~pbuffer.CorruptDatabaseError` naming its id and is never returned.

    **Outbox.** ``save(..., connection=conn)`` and ``save_many(..., connection=conn)`` write through the caller's
    SQLAlchemy ``Connection`` or ORM ``Session``, in its open transaction, on the buffer's own database (same
    server and database name, or the same sqlite file): the message is pending exactly when that transaction
    commits, and never existed if it rolls back; pbuffer never commits, rolls back or closes it, and listeners run
    at the caller's commit. Other storage raises :class:`~pbuffer.ConfigurationError`, writing nothing. A message
    can commit after newer ones were published (a late commit): it is still published once, and each producer's
    messages keep the order of its commits (see :meth:`claim`).

    **Bad input** (a payload that is not bytes-like: ``TypeError``; a bad subject or header:
    :class:`~pbuffer.ValidationError`) is refused before anything is written.

    Backends implement the underscore primitives below; validation, ids and notifications live here once, and
    group commit, ``overflow="block"``, ``ttl`` and listeners in :mod:`pbuffer.buffering`.
    """

    #: URL schemes this backend serves (``"memory"``, ``"sqlite"``...), read by :mod:`pbuffer.registry`.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: Whether storage calls block on I/O; the async facade runs blocking calls in a thread.
    blocking: ClassVar[bool] = True
    #: The largest message (payload plus header names and values, in bytes) the storage takes in one row, and the
    #: limit's explanation for the error; None: no limit beyond memory. Set by a backend whose server has one.
    _max_message_bytes: int | None = None
    _max_message_reason = ""

    def __init__(self, *, subject: str | None = None, max_messages: int | None = None,
                 max_bytes: int | None = None, overflow: Overflow = "reject", ttl: float | None = None,
                 block_timeout: float = 30.0, group_commit: bool = True,
                 allow_subject_prefixes: Iterable[str] = (), propagate_trace: bool = False) -> None:
        #: System subject prefixes (``$KV.orders.``...) this buffer may save to; see Subjects above.
        self.allow_subject_prefixes = validation.check_subject_prefixes(allow_subject_prefixes)
        self.subject = None if subject is None else check_subject(subject, self.allow_subject_prefixes)
        #: Whether saves from several threads share transactions (storage that blocks only).
        self.group_commit = bool(group_commit) and self.blocking
        self.limits = Limits(max_messages, max_bytes, overflow, ttl, block_timeout)
        #: Whether saves carry the current OpenTelemetry trace context in their headers (see pbuffer.buffering.tracing).
        self.propagate_trace = bool(propagate_trace)
        self._with_trace = trace_injector() if self.propagate_trace else None
        self._listeners = Listeners()
        self._removals = RemovalLog(self.limits)
        self._room = Room(self.limits)
        self._grouped = GroupCommit(self._insert_when_room)
        self._close_lock = threading.Lock()
        self._closed = False

    # ----------------------------------------------------------------------------------------------- writing

    def save(self, payload: Payload, *, subject: str | None = None,
             headers: Mapping[str, str] | None = None, connection: object | None = None) -> Message:
        """Store one message and return it (with its id). Returning means it is stored (see Durability).

        ``connection``: a SQLAlchemy ``Connection`` or ORM ``Session`` on this buffer's database, to save in the
        caller's own transaction (see Outbox above): then the message is stored when that transaction commits.
        """
        if self._closed:
            self._check_open()
        now_ns = time.time_ns()
        message = self._prepare(payload, subject, headers, ids.new_id(now_ns), now_ns // 1000)
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
        now_ns = time.time_ns()
        created_us = now_ns // 1000
        prepare = self._prepare
        messages = [
            prepare(item.payload, item.subject or subject, headers if item.headers is None else item.headers,
                    message_id, created_us)
            if isinstance(item, Outgoing) else prepare(item, subject, headers, message_id, created_us)
            for item, message_id in zip(items, ids.new_ids(len(items), now_ns), strict=True)
        ]
        if connection is not None:
            if messages:
                self._save_in(messages, connection)
            return messages
        if messages:
            self._commit_call(messages)
            self._notify()
        return messages

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
        self._check_open()
        while True:
            message = self._pop(time.time_ns() // 1000)
            if message is None:
                return None
            self._room.freed(1)
            if not expiry.is_expired(message, time.time_ns() // 1000, self.limits.ttl):
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

    def __enter__(self) -> Buffer:
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

    # ------------------------------------------------------------------------- what a backend implements

    @classmethod
    def from_url(cls, url: str, **options: Any) -> Buffer:
        """Build the backend from a URL whose pbuffer options were already parsed into ``options``."""
        raise NotImplementedError(f"{cls.__name__} cannot be opened from a URL")

    # Every primitive below is called on an open buffer with checked arguments, and runs in one transaction of its
    # own (its own lock, for storage without transactions) unless it says otherwise: all of it happens, or none.
    # Messages it reads are in scope (the buffer's ``subject``, when it has one) and their checksums verified
    # (CorruptDatabaseError names a damaged one). Ids are lowercase UUID strings; times are microseconds since the
    # epoch. Storage failures raise a PBufferError subclass (StorageFullError, BackendError...), never a driver's.

    @abstractmethod
    def _insert(self, messages: list[Message]) -> None:
        """Store ``messages`` (one or more, validated, with ids) pending, in order, at the back of the queue, and
        count them, in one transaction. Applies the limits in that transaction: ``reject`` raises BufferFullError
        having written nothing; ``drop_oldest`` removes and counts the oldest first (and calls
        ``self._note_removed("dropped", n)`` after the commit); ``block`` raises BufferFullError (the caller waits)."""

    def _insert_in(self, messages: list[Message], connection: object) -> Any:
        """Store ``messages`` as :meth:`_insert` does, in the open transaction of the caller's SQLAlchemy Connection
        or Session, never committing, rolling back or closing it (``block`` raises BufferFullError at once); return
        the Session or Connection whose commit makes them pending. Another database: ConfigurationError (this
        default refuses every connection)."""
        raise ConfigurationError(f"{type(self).__name__} cannot save in your transaction (connection=...): only a "
                                 "SQL buffer (sqlite, PostgreSQL, MariaDB) on the same database as the connection "
                                 "can; nothing was written")

    @abstractmethod
    def _get(self, limit: int | None, after: str | None) -> list[Message]:
        """Up to ``limit`` (all if ``None``) pending messages, oldest first, read-only; with ``after``, only those
        queued behind that pending message (all of them if it is not pending). Expired ones included."""

    @abstractmethod
    def _pop(self, now_us: int) -> Message | None:
        """Remove, uncount and return the oldest pending message that no live claim (lease ending at or after
        ``now_us``) holds; ``None`` if there is none. Two callers never get the same message."""

    @abstractmethod
    def _claim(self, limit: int, after: str | None, owner: str, until_us: int, now_us: int) -> list[Message]:
        """Claim for ``owner`` until ``until_us`` and return, oldest first, up to ``limit`` pending messages (behind
        ``after`` when given) that are unclaimed, already ``owner``'s, or whose lease ended before ``now_us``."""

    def _claim_skipping(self, limit: int, after: str | None, owner: str, until_us: int, now_us: int,
                        skip: frozenset[str]) -> list[Message]:
        """:meth:`_claim` passing over the messages on ``skip``'s subjects (neither returned nor left claimed).
        This default claims and releases through the primitives; override it to filter in the query."""
        return defaults.claim_skipping_by_release(self, limit, after, owner, until_us, now_us, skip)

    @abstractmethod
    def _release(self, message_ids: list[str], owner: str) -> int:
        """End ``owner``'s claims on these messages (others' claims are untouched); returns how many it held."""

    @abstractmethod
    def _delete(self, message_id: str) -> bool:
        """Remove the message, pending or dead, and uncount it; ``False`` if there is none."""

    def _delete_many(self, message_ids: list[str]) -> int:
        """:meth:`_delete` for each of ``message_ids`` (distinct); returns how many existed. This default deletes one
        by one, a transaction each; the built-in backends override it with one transaction."""
        return sum(self._delete(message_id) for message_id in message_ids)

    @abstractmethod
    def _discard(self, message_ids: list[str], kind: str) -> int:
        """Remove these pending messages and count them as ``kind`` (``"expired"``); returns how many existed."""

    @abstractmethod
    def _count_removed(self, message: Message, kind: str) -> None:
        """Add ``message``, already removed (by :meth:`_pop`), to the ``kind`` total, in a transaction of its own."""

    @abstractmethod
    def _mark_dead(self, message_id: str, reason: str, attempts: int, now_us: int) -> bool:
        """Move a pending message to the dead letters with ``reason``, ``attempts`` and the time ``now_us``, and
        move its counts; ``False`` (nothing changed) if it is not pending."""

    @abstractmethod
    def _requeue(self, message_id: str) -> bool:
        """Make a dead letter pending again at the back of the queue, keeping its id; ``False`` if it is not dead."""

    @abstractmethod
    def _dead_letters(self, limit: int | None) -> list[DeadLetter]:
        """Up to ``limit`` (all if ``None``) dead letters in the order they were dead-lettered, read-only."""

    @abstractmethod
    def _count(self) -> int:
        """The number of pending messages, read-only (from counters, not by counting rows, where it can)."""

    @abstractmethod
    def _stats(self, now_us: int) -> BufferStats:
        """:class:`BufferStats` from the counters, read-only: kept in the same transactions as the messages, so
        they agree with the rows; the oldest pending message's age as of ``now_us``."""

    def _subject_stats(self) -> dict[str, SubjectStats]:
        """:class:`SubjectStats` per subject that ever had a message, read-only. This default walks the messages
        (dropped and expired stay 0); the built-in backends read their counters."""
        return defaults.subject_stats_by_walk(self)

    def _claim_stats(self, window: int, now_us: int) -> ClaimStats | None:
        """The live claims (lease ending at or after ``now_us``) among the ``window`` oldest pending messages, in
        one read-only transaction. This default, for backends that cannot tell, returns ``None``."""
        return None

    def _close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections, files and threads; called once, by :meth:`close`."""

    # ------------------------------------------------------------------------------ what backends inherit

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"{type(self).__name__} is closed")

    def _prepare(self, payload: object, subject: str | None, headers: Mapping[str, str] | None,
                 message_id: str, created_us: int) -> Message:
        """Validate one message and build it; raises before anything is stored."""
        data = check_payload(payload)
        if self._with_trace is not None:
            headers = self._with_trace(headers)
        if subject is None:
            if self.subject is None:
                raise ValidationError("no subject: pass subject=... to save() or open the buffer with one")
            subject = self.subject
        elif subject != self.subject:
            if self.subject is not None:
                raise ValidationError(f"this buffer is scoped to subject {self.subject!r}, not {subject!r}")
            check_subject(subject, self.allow_subject_prefixes)
        checked = NO_HEADERS if headers is None else check_headers(headers)
        if self._max_message_bytes is not None:
            validation.check_size(data, checked, self._max_message_bytes, self._max_message_reason)
        return Message(message_id, subject, data, checked, created_us)

    def _commit_call(self, messages: list[Message]) -> None:
        """Commit one call's messages: grouped with other threads' when enabled, waiting for room if asked to."""
        if self.group_commit:
            self._grouped.commit(messages)
        else:
            self._insert_when_room(messages)

    def _insert_when_room(self, messages: list[Message]) -> None:
        self._room.insert(messages, self._insert)

    def _save_in(self, messages: list[Message], connection: object) -> None:
        """The outbox: write ``messages`` through the caller's transaction; wake listeners at its commit."""
        from .outbox import after_commit  # SQLAlchemy's ORM, imported only by applications that use the outbox
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
