"""Limits on what a buffer holds (size, overflow policy, age), and the statistics that describe it.

A buffer on a small device must not fill its disk: ``max_messages`` and ``max_bytes`` cap the pending messages,
``overflow`` says what a save does at the cap, and ``ttl`` drops messages too old to be worth sending. Nothing is
ever dropped silently: every drop is counted in :class:`BufferStats` and logged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from .errors import BufferFullError, ConfigurationError

__all__ = ["MAX_LIMIT", "MAX_SECONDS", "OVERFLOW_POLICIES", "BufferStats", "ClaimStats", "Limits", "Overflow",
           "SubjectStats"]

Overflow = Literal["reject", "drop_oldest", "block"]
#: ``reject``: raise BufferFullError, nothing written (the default). ``drop_oldest``: drop (and count) the oldest
#: pending messages to make room, as Fluent Bit does. ``block``: wait until the relay frees room, up to
#: ``block_timeout`` seconds, then raise BufferFullError.
OVERFLOW_POLICIES: tuple[Overflow, ...] = ("reject", "drop_oldest", "block")

#: The largest ``max_messages`` and ``max_bytes`` (the databases' 64-bit counters hold them).
MAX_LIMIT = 2**63 - 1
#: The longest ``ttl`` and ``block_timeout``, in seconds (about 31 years): finite, so time arithmetic cannot
#: overflow, and beyond any real use.
MAX_SECONDS = 1e9

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class BufferStats:
    """What a buffer holds, read from counters kept in the same transactions as the messages (no table scan).

    ``pending``/``pending_bytes``: messages waiting to be published and their payload bytes. ``dead``/
    ``dead_bytes``: dead letters. ``oldest_age``: seconds since the oldest pending message was saved (``None``
    when there is none). ``dropped``: messages removed by ``overflow="drop_oldest"``; ``expired``: messages
    removed because they outlived ``ttl``; ``deleted``: messages deleted (by :meth:`~pbuffer.Buffer.delete` or
    ``delete_many``, which a relay calls after the PubAck, or by ``pop``), pending or dead (all three totals since
    the buffer was created, or since its upgrade to schema revision 0004 for ``deleted``). Every message ever saved
    is in exactly one of ``pending``, ``dead``, ``dropped``, ``expired`` and ``deleted``, so their sum grows by one
    per save: the difference of two readings gives the saves and the deletions between them (``pbuffer watch``).
    """

    pending: int
    pending_bytes: int
    dead: int
    dead_bytes: int
    oldest_age: float | None
    dropped: int
    expired: int
    deleted: int = 0


@dataclass(frozen=True, slots=True)
class SubjectStats:
    """One subject's share of :class:`BufferStats`, from the same counters: its pending and dead messages and
    bytes, how many of its messages the limits dropped or expired and how many were deleted (totals, as in
    :class:`BufferStats`)."""

    pending: int
    pending_bytes: int
    dead: int
    dead_bytes: int
    dropped: int
    expired: int
    deleted: int = 0


@dataclass(frozen=True, slots=True)
class ClaimStats:
    """Relays' live claims (see :meth:`pbuffer.Buffer.claim_stats`): ``held`` messages claimed by ``owners``
    distinct relays, the latest lease ending at ``until_us`` (Unix microseconds; ``None`` when nothing is held),
    among the ``looked_at`` oldest pending messages."""

    held: int
    owners: int
    until_us: int | None
    looked_at: int


@dataclass(frozen=True, slots=True)
class Limits:
    """A buffer's limits; ``None`` means unlimited. Checked when the buffer is opened."""

    max_messages: int | None = None
    max_bytes: int | None = None
    overflow: Overflow = "reject"
    ttl: float | None = None
    block_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_messages", "max_bytes"):
            value = getattr(self, name)
            # Below 2**63: the counters they are compared with are 64-bit integers in every database.
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or not 1 <= value <= MAX_LIMIT):
                raise ConfigurationError(f"{name} must be an int from 1 to {MAX_LIMIT} or None, not {value!r}")
        if not isinstance(self.overflow, str) or self.overflow not in OVERFLOW_POLICIES:
            raise ConfigurationError(f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}, not {self.overflow!r}")
        for name in ("ttl", "block_timeout"):
            value = getattr(self, name)
            # Finite and bounded: NaN compares false with everything (a block_timeout of NaN waited forever, a ttl
            # of NaN never expired anything), and infinity is what None (ttl) or a large number already says.
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 < value <= MAX_SECONDS):
                raise ConfigurationError(f"{name} must be a number of seconds above 0 and at most {MAX_SECONDS:g}, "
                                         f"not {value!r}")

    @property
    def bounded(self) -> bool:
        """Whether saves must check the size limits."""
        return self.max_messages is not None or self.max_bytes is not None

    def make_room(self, pending: int, pending_bytes: int, adding: Sequence[int],
                  oldest: Callable[[int], Sequence[tuple[K, int]]], *, exact: bool = False) -> list[K]:
        """Decide what a save of messages with payload sizes ``adding`` does, given what is pending now.

        Returns the keys of the oldest messages to drop first (``drop_oldest``; ``[]`` when everything fits).
        Raises :class:`BufferFullError` when the save must not happen (``reject`` and ``block`` at the limit,
        or messages that could never fit). ``oldest(n)`` gives the ``n`` oldest pending messages as
        ``(key, payload size)``, oldest first. ``exact``: never ask ``oldest`` for more messages than may still be
        dropped (one more at a time once the count is met), for an ``oldest`` that locks what it reads until a
        caller's commit (the outbox): a row locked and not dropped would hold a relay back from it.
        """
        count, size = len(adding), sum(adding)
        if (self.max_messages is not None and count > self.max_messages) or (
                self.max_bytes is not None and size > self.max_bytes):
            raise BufferFullError(f"{count} message(s) of {size} bytes can never fit the buffer's limits "
                                  f"(max_messages={self.max_messages}, max_bytes={self.max_bytes})")
        over_count = 0 if self.max_messages is None else pending + count - self.max_messages
        over_bytes = 0 if self.max_bytes is None else pending_bytes + size - self.max_bytes
        if over_count <= 0 and over_bytes <= 0:
            return []
        if self.overflow != "drop_oldest":
            raise BufferFullError(f"the buffer is full: {pending} message(s), {pending_bytes} bytes pending "
                                  f"(max_messages={self.max_messages}, max_bytes={self.max_bytes})")
        wanted = max(over_count, 1) + (0 if exact else 16)
        while True:
            rows = oldest(wanted)
            victims: list[K] = []
            freed_count = freed_bytes = 0
            for key, row_size in rows:
                if freed_count >= over_count and freed_bytes >= over_bytes:
                    return victims
                victims.append(key)
                freed_count += 1
                freed_bytes += row_size
            if (freed_count >= over_count and freed_bytes >= over_bytes) or len(rows) < wanted:
                # Everything pending is dropped, or enough was: the new messages alone fit (checked above).
                return victims
            wanted = wanted + max(over_count - freed_count, 1) if exact else wanted * 4

