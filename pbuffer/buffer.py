"""The Buffer contract: what every backend promises, written once, and the checks every backend inherits. A
backend author reads this file and :mod:`pbuffer.testing` (the conformance suite that checks each promise)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from . import validation
from .buffering import defaults
from .buffering.api import BufferAPI
from .buffering.tracing import trace_injector
from .errors import ConfigurationError, ValidationError
from .limits import BufferStats, ClaimStats, Limits, Overflow, SubjectStats
from .message import NO_HEADERS, DeadLetter, Message
from .validation import check_headers, check_payload, check_subject

__all__ = ["Buffer"]


class Buffer(BufferAPI, ABC):
    """A local, durable queue of messages waiting to be published to NATS JetStream.

    The promises every backend keeps (the conformance suite in :mod:`pbuffer.testing` checks each one):

    **Durability.** When :meth:`save` or :meth:`save_many` returns, the message is committed with the durability
    the backend documents: ``memory://`` keeps it for the life of the process; sqlite with
    ``durability="process"`` (the default) survives a crash or ``kill -9`` of the process, with
    ``durability="power"`` also a power loss or OS crash; PostgreSQL and MariaDB keep what their server's commit
    keeps. If ``save`` raises, nothing was written, except :class:`~pbuffer.CommitUnknownError` (a server
    database's connection lost while it committed: the outcome is unknown). ``save_many`` is all or nothing.

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
    counters kept in the same transactions as the messages: every message saved is counted in exactly one of
    pending, dead, dropped, expired and deleted (``delete``, ``delete_many``, ``pop``).

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

    Backends implement the underscore primitives below and inherit the rest: the validation below, and the public
    methods (:mod:`pbuffer.buffering.api`: arguments checked, ids and times given, group commit, ``overflow="block"``,
    ``ttl`` re-reads and listeners around the primitives).
    """

    #: URL schemes this backend serves (``"memory"``, ``"sqlite"``...), read by :mod:`pbuffer.registry`.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: Whether storage calls block on I/O; the async facade runs blocking calls in a thread.
    blocking: ClassVar[bool] = True
    #: Whether ``stats().deleted`` counts deletions (see :meth:`_delete`); ``pbuffer watch`` shows exact save and
    #: send rates when it does, net ones otherwise. The built-in backends do.
    counts_deletions: ClassVar[bool] = False
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
        super().__init__(self.limits)

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
        """Remove and return the oldest pending message that no live claim (lease ending at or after ``now_us``)
        holds, counted as deleted; ``None`` if there is none. Two callers never get the same message."""

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
        """Remove the message, pending or dead, and count it as deleted; ``False`` if there is none."""

    def _delete_many(self, message_ids: list[str]) -> int:
        """:meth:`_delete` for each of ``message_ids`` (distinct); returns how many existed. This default deletes one
        by one, a transaction each; the built-in backends override it with one transaction."""
        return sum(self._delete(message_id) for message_id in message_ids)

    @abstractmethod
    def _discard(self, message_ids: list[str], kind: str) -> int:
        """Remove these pending messages and count them as ``kind`` (``"expired"``); returns how many existed."""

    @abstractmethod
    def _count_removed(self, message: Message, kind: str) -> None:
        """Move ``message``, already removed (and counted as deleted) by :meth:`_pop`, from the deleted total to the
        ``kind`` total (``"expired"``), in a transaction of its own."""

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

    def _close(self) -> None:  # an optional hook: nothing to release by default
        """Release connections, files and threads; called once, by :meth:`close`."""

    # ------------------------------------------------------------------------------ what backends inherit

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
