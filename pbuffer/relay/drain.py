"""The relay: drains a buffer into a transport oldest-first, deleting a message only once the server has it.

Delivery rule. Each message is published with ``Nats-Msg-Id`` = its id and deleted from the buffer only after the
server acknowledged it (stored, or reported as a duplicate of a copy it already has). A failed message stays in
the buffer: a transient failure (timeout, no responders, 503, disconnected) is retried with exponential backoff
and jitter, oldest first, with the same id, so a copy the server did store is dropped by its deduplication; a
permanent failure (payload above max_payload, a 400 from the stream, a corrupt row) dead-letters the message and
the messages behind it go on.

Claims. Each window is claimed (:meth:`Buffer.claim`) for ``lease`` seconds before it is published, so relays
competing for one buffer (threads, processes, hosts on one server database) never publish the same message while
the lease lives: each takes the oldest messages nobody else holds. A relay that dies leaves its claims to run out;
then another relay takes those messages over. Re-reading a window renews its claim, so the lease must only outlast
one publish attempt of a window (its timeout) plus one backoff.

Order. Messages are published in windows of ``batch_size`` (fewer for large payloads: ``window_bytes``), oldest
first. When a message in a window fails transiently, the next window starts again from the oldest unacknowledged
message. The one case that can still reorder the stream: a later message of the same window was accepted while an
earlier one failed; the earlier one then lands after it. ``strict_order=True`` rules that out: one publish in flight
per subject, and a subject's next message is sent only after the previous one was acknowledged (subjects still go
in parallel). Order is a promise per subject.

No subject stalls another. A subject whose message failed transiently (no stream covers it, a 503, a timeout) is
held back for its own backoff (exponential with jitter, per subject): windows are read passing over its messages
(:meth:`Buffer.claim` with ``skip_subjects``), so the other subjects flow at full speed behind it; when its backoff
ends, its oldest message is tried again, alone (a probe: :mod:`.publishing`), and the rest of the subject follows
once that one is acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

from .. import ids
from ..aio import AsyncBuffer
from ..buffer import Buffer
from ..buffering.tracing import publish_spans
from ..errors import ConfigurationError, CorruptDatabaseError
from ..message import Message
from .publishing import publish_probing, publish_strictly
from .stats import RelayStats
from .transport import Failure, Outcome, PublishResult, Transport

__all__ = ["Relay", "RelayObserver", "RelayStats"]

_log = logging.getLogger("pbuffer.relay")

#: Messages in a relay's first window, before it knows how large its messages are (see Relay's window_bytes).
_FIRST_WINDOW = 16


RetryCallback = Callable[[Message, Failure, int], object]
DeadLetterCallback = Callable[[Message, str, int], object]


class RelayObserver:
    """What a relay tells an observer (metrics: :mod:`pbuffer.metrics`), window by window. Subclass it and override
    what you need; every method does nothing by default.

    Called in the relay's event loop, so keep them quick and non-blocking; an exception in one is logged and never
    reaches the relay. A relay without observers pays one truth test per window.
    """

    def window_published(self, messages: Sequence[Message], results: Sequence[PublishResult],
                         seconds: float) -> None:
        """A window was published: one result per message, in order (stored, duplicate or failed); ``seconds`` from
        its first publish to its last reply (or the transport's timeout)."""

    def retried(self, message: Message, failure: Failure) -> None:
        """A transient failure of ``message`` will be retried (counted in :attr:`RelayStats.retried`)."""

    def dead_lettered(self, message_id: str, reason: str) -> None:
        """A message was dead-lettered (counted in :attr:`RelayStats.dead_lettered`)."""


class Relay:
    """Drains ``buffer`` into ``transport``. Use ``async with Relay(...) as relay: await relay.drain()``.

    Args:
        buffer: a :class:`~pbuffer.Buffer` or :class:`~pbuffer.AsyncBuffer`.
        transport: where to publish (closed with the relay when ``close_transport`` is true).
        batch_size: messages read and published per window at most (many publishes in flight at once).
        window_bytes: payload bytes a window holds, about: after each window the next one is sized to this many
            bytes at that window's average payload size (at least one message, at most ``batch_size``), so large
            payloads make short windows. The relay holds up to two windows in memory and claimed (the one in
            flight and the next, read ahead). A relay's first window holds at most 16 messages; a window right
            after a jump in payload sizes can still hold ``batch_size`` large ones.
        strict_order: one publish in flight per subject, so the stream can never be reordered.
        backoff_initial, backoff_max: seconds a subject is held back after a transient failure before it is tried
            again; doubles with each failure in a row, with jitter; per subject, so other subjects go on meanwhile.
        poll_interval: how often :meth:`run` looks at the buffer when no save in this process woke it.
        on_retry: ``callback(message, failure, attempts)`` before a transient failure is retried.
        on_dead_letter: ``callback(message, reason, attempts)`` after a message was dead-lettered.
        lease: seconds a claimed window stays this relay's before another relay may take it over; longer than
            one publish attempt (the transport's timeout) plus ``backoff_max``. Default: 30, or twice
            ``backoff_max`` plus 10 when that is longer.
        observer: a :class:`RelayObserver` told about every window, retry and dead letter (more with
            :meth:`add_observer`).
        tracer_provider: the OpenTelemetry tracer provider for the ``pbuffer publish`` span around each window
            that carries producers' trace contexts (see ``propagate_trace`` in :func:`pbuffer.open`); default: the
            global one. Without opentelemetry-api installed nothing is traced.
    """

    def __init__(self, buffer: Buffer | AsyncBuffer, transport: Transport, *, batch_size: int = 500,
                 window_bytes: int = 32 * 1024 * 1024, strict_order: bool = False, backoff_initial: float = 0.05,
                 backoff_max: float = 10.0, poll_interval: float = 1.0, on_retry: RetryCallback | None = None,
                 on_dead_letter: DeadLetterCallback | None = None, close_transport: bool = True,
                 lease: float | None = None, observer: RelayObserver | None = None,
                 tracer_provider: Any = None) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= 1_000_000:
            raise ConfigurationError(f"batch_size must be an int from 1 to 1,000,000, not {batch_size!r}")
        if isinstance(window_bytes, bool) or not isinstance(window_bytes, int) or not 1 <= window_bytes <= 1 << 40:
            raise ConfigurationError(f"window_bytes must be an int from 1 to 2**40, not {window_bytes!r}")
        for name, value in (("backoff_initial", backoff_initial), ("backoff_max", backoff_max),
                            ("poll_interval", poll_interval), ("lease", lease)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 < value <= 1e6):  # nan and inf fail this too
                raise ConfigurationError(f"{name} must be a number of seconds above 0 and at most 1e6, not {value!r}")
        if backoff_initial > backoff_max:
            raise ConfigurationError(f"backoff_initial ({backoff_initial} s) is above backoff_max ({backoff_max} s)")
        if lease is None:
            lease = max(30.0, 2 * backoff_max + 10)
        if not lease > backoff_max:
            raise ConfigurationError(f"lease ({lease} s) must be longer than backoff_max ({backoff_max} s)")
        self.buffer = buffer if isinstance(buffer, AsyncBuffer) else AsyncBuffer(buffer)
        self._owns_buffer_facade = not isinstance(buffer, AsyncBuffer)
        self.transport = transport
        self.batch_size = batch_size
        self.window_bytes = window_bytes
        # How many messages the next window claims (see _size_next_window). The first window, read before any size
        # is known, is a short one: 500 messages of 1 MiB would be half a GB before the first sizing.
        self._window_limit = min(batch_size, _FIRST_WINDOW)
        self.strict_order = strict_order
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.poll_interval = poll_interval
        self.on_retry = on_retry
        self.on_dead_letter = on_dead_letter
        self.close_transport = close_transport
        self.lease = lease
        #: Names this relay's claims; each relay (object) has its own.
        self.owner = ids.new_id()
        self.stats = RelayStats()
        self._attempts: dict[str, int] = {}
        self._first_attempt: dict[str, float] = {}
        self._windows: dict[str, float | None] = {}
        self._warned_no_stream: dict[str, float] = {}
        self._stopping = asyncio.Event()
        #: Subjects held back after a transient failure: until when (time.monotonic()), and their current backoff.
        self._held: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        #: Messages still claimed by this relay after their window settled without them (a transient failure, or
        #: held back unsent). Given back when a drain ends (stop, cancellation, an error): a relay started next
        #: takes them first, instead of finding them claimed and publishing their subjects' later messages ahead.
        self._kept: set[str] = set()
        # A tuple, replaced whole: drain() walks it while add_observer() may run from another task.
        self._observers: tuple[RelayObserver, ...] = () if observer is None else (observer,)
        self._spans = publish_spans(tracer_provider)

    # ------------------------------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Relay:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.close_transport:
            await self.transport.close()
        if self._owns_buffer_facade:
            await self.buffer.close(close_buffer=False)  # the caller's Buffer stays open

    def add_observer(self, observer: RelayObserver) -> None:
        """Tell ``observer`` about every window, retry and dead letter from now on."""
        self._observers = (*self._observers, observer)

    def remove_observer(self, observer: RelayObserver) -> None:
        self._observers = tuple(o for o in self._observers if o is not observer)

    def stop(self) -> None:
        """Ask :meth:`run` (or a drain) to stop after the window in flight; nothing is left half-done."""
        self._stopping.set()

    async def lag(self) -> float | None:
        """Seconds since the oldest pending message was saved (``None`` when the buffer is empty)."""
        oldest = await self.buffer.get()
        return None if oldest is None else max(0.0, time.time() - oldest.created_us / 1e6)

    # ---------------------------------------------------------------------------------------------- drain

    async def drain(self) -> RelayStats:
        """Publish until the buffer is empty (or :meth:`stop`); returns what this call did.

        Messages other relays hold claims on are left to them; this call returns once they are gone too (or
        takes them over when those claims run out).

        Pipelined: while a window's acks are awaited, the next window is already being read, and a settled
        window's deletes run while the next one is published. A window is published only after the previous
        one settled, so a failure never has a later window in flight behind it.
        """
        stats = RelayStats()
        counted = RelayStats()  # what self.stats already includes: it is kept current window by window
        deleting: asyncio.Future[int] | None = None
        prefetch: asyncio.Future[list[Message]] | None = None
        following: list[Message] = []
        limit = self._window_limit
        window: list[Message] = []
        try:
            window = await self._read_from_oldest(stats)
            while window and not self._stopping.is_set():
                await self._check_duplicate_windows(window)
                next_limit = self._size_next_window(window)
                prefetch = asyncio.ensure_future(self._read_window(stats, after=window[-1].id, limit=next_limit))
                started = time.perf_counter() if self._observers else 0.0
                with self._spans.window(window) if self._spans and self._spans.wanted(window) else nullcontext():
                    probed = False
                    if self.strict_order:
                        results = await publish_strictly(self.transport, window)
                    elif self._backoff:  # a subject failed and was not acknowledged since: probe it
                        results, probed = await publish_probing(self.transport, window, self._backoff)
                    else:
                        results = await self.transport.publish(window)
                if self._observers:
                    self._observe("window_published", window, results, time.perf_counter() - started)
                acknowledged, retry = await self._settle(window, results, stats)
                self.stats.add(stats.minus(counted))
                counted = stats.copy()
                if deleting is not None:
                    await deleting
                deleting = (asyncio.ensure_future(self.buffer.delete_many(acknowledged)) if acknowledged
                            else None)
                following = await prefetch
                prefetch = None
                if retry or probed or len(window) < limit or not following or self._hold_ended():
                    # Start again from the oldest unacknowledged message (after a failure, passing over the
                    # subjects now held back; when a hold ran out, to try that subject from its oldest message;
                    # after a probe, for the rest of its subject; for a short window, to find messages saved
                    # meanwhile; with nothing behind this window, because other relays may hold claims there),
                    # once the deletes are done so they are not read again. An unused read-ahead window stays
                    # claimed: this relay's next claim takes it again.
                    if deleting is not None:
                        await deleting
                        deleting = None
                    limit = self._window_limit
                    window = await self._read_from_oldest(stats)
                else:
                    window, limit = following, next_limit
        finally:
            try:
                await self._wind_up(prefetch, deleting, window, following)
            finally:
                self.stats.add(stats.minus(counted))
        return stats

    async def _wind_up(self, prefetch: asyncio.Future[list[Message]] | None, deleting: asyncio.Future[int] | None,
                       window: Sequence[Message], following: Sequence[Message]) -> None:
        """The end of a drain, however it ends: the read-ahead and the deletes awaited, then this relay's claims
        ended on what it read and did not publish: the window not sent (on a stop), the read-ahead, and the
        messages kept after a failure (see ``_kept``). Their leases would otherwise run on, and a relay started
        meanwhile would pass over them to their subjects' later messages. Acknowledged messages among them are
        deleted already, or their delete is done: giving them back changes nothing."""
        try:
            if prefetch is not None:
                # Awaited, not cancelled: a claim already running in the buffer's thread would still commit.
                # (Cancelled with this task when it was cancelled while awaiting it.)
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    following = await prefetch
            if deleting is not None:
                await deleting
        finally:
            await self._give_back([*window, *following])

    async def _give_back(self, read: Sequence[Message]) -> None:
        ids = self._kept.union(m.id for m in read)
        self._kept.clear()
        if not ids:
            return
        try:
            await self.buffer.release(ids, owner=self.owner)
        except Exception as exc:  # (a closed buffer, say) the leases run out by themselves
            _log.debug("giving back %d claims at the end of a drain failed: %r", len(ids), exc)

    async def run(self) -> RelayStats:
        """Drain as messages arrive until :meth:`stop` or cancellation; returns what it did."""
        total = RelayStats()
        while not self._stopping.is_set():
            total.add(await self.drain())
            if self._stopping.is_set():
                break
            waiter = asyncio.ensure_future(self.buffer.wait_for_messages(self.poll_interval))
            stopper = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (waiter, stopper):
                    task.cancel()
        return total

    # ------------------------------------------------------------------------------------------- internals

    async def _read_from_oldest(self, stats: RelayStats) -> list[Message]:
        """The oldest window this relay may claim. When every pending message is claimed by other relays or on a
        subject held back, wait (other relays publish theirs or their leases run out; a hold ends) until the
        buffer is empty."""
        while True:
            window = await self._read_window(stats, after=None, limit=self._window_limit)
            if window or self._stopping.is_set() or (await self.buffer.stats()).pending == 0:
                return window
            # A message may have committed between the claim and the count (a commit wakes no one that was not
            # waiting yet): claim once more before waiting out a poll, or it would wait a whole poll_interval.
            window = await self._read_window(stats, after=None, limit=self._window_limit)
            if window:
                return window
            wait = min(self.poll_interval, self.lease / 4)
            if self._held:
                wait = min(wait, max(min(self._held.values()) - time.monotonic(), 0.0))
            with contextlib.suppress(asyncio.TimeoutError):  # stop() cuts the wait short
                await asyncio.wait_for(self._stopping.wait(), wait)

    def _held_now(self, from_oldest: bool) -> frozenset[str]:
        """The subjects to pass over. A hold ends only at a read from the oldest (``from_oldest``): a read behind
        a window would let the subject in past its older messages, which earlier windows passed over."""
        if from_oldest:
            now = time.monotonic()
            for subject in [s for s, until in self._held.items() if until <= now]:
                del self._held[subject]
        return frozenset(self._held)

    def _hold_ended(self) -> bool:
        """A hold ran out: read from the oldest again (at once, even when every window ahead is full)."""
        return bool(self._held) and min(self._held.values()) <= time.monotonic()

    def _hold(self, subject: str) -> None:
        """Hold ``subject`` back for its next backoff: doubled from its last one, with jitter."""
        backoff = self._backoff[subject] = min(self.backoff_max,
                                               max(self.backoff_initial, self._backoff.get(subject, 0.0) * 2))
        self._held[subject] = time.monotonic() + backoff * random.uniform(0.5, 1.0)

    def _size_next_window(self, window: Sequence[Message]) -> int:
        """How many messages the window after ``window`` claims: ``window_bytes`` at ``window``'s average payload
        size, at least one and at most ``batch_size`` (kept for the next drain's first window too)."""
        payload_bytes = sum(len(message.payload) for message in window)
        fit = self.window_bytes * len(window) // payload_bytes if payload_bytes else self.batch_size
        self._window_limit = max(1, min(self.batch_size, fit))
        return self._window_limit

    async def _read_window(self, stats: RelayStats, after: str | None, limit: int) -> list[Message]:
        """The next window of up to ``limit`` messages, passing over held-back subjects; a corrupt row met on the
        way is dead-lettered (never published) and skipped."""
        while True:
            try:
                return await self.buffer.claim(limit, owner=self.owner, lease=self.lease, after=after,
                                               skip_subjects=self._held_now(from_oldest=after is None))
            except CorruptDatabaseError as exc:
                if exc.message_id is None:
                    raise
                if await self.buffer.mark_dead(exc.message_id, f"corrupt: {exc}", attempts=0):
                    stats.dead_lettered += 1
                    _log.error("dead-lettered message %s: its stored bytes fail their checksum", exc.message_id)
                    if self._observers:
                        self._observe("dead_lettered", exc.message_id, f"corrupt: {exc}")

    async def _settle(self, batch: Sequence[Message], results: Sequence[PublishResult],
                      stats: RelayStats) -> tuple[list[str], bool]:
        """Dead-letter what the server will never take; returns the ids it has (to delete) and whether anything
        must be retried."""
        if len(results) != len(batch):
            raise RuntimeError(f"transport returned {len(results)} results for {len(batch)} messages")
        acknowledged: list[str] = []
        retry = False
        held: set[str] = set()  # a subject's backoff doubles once per window that failed, not once per message
        kept = self._kept
        for message, result in zip(batch, results, strict=True):
            if result.acknowledged:
                acknowledged.append(message.id)
                if kept:
                    kept.discard(message.id)
                if message.subject not in self._held:  # (a failure earlier in this window keeps its backoff)
                    self._backoff.pop(message.subject, None)
                if result.outcome is Outcome.DUPLICATE:
                    stats.duplicates += 1
                else:
                    stats.published += 1
                self._attempts.pop(message.id, None)
                self._first_attempt.pop(message.id, None)
                continue
            failure = result.failure
            assert failure is not None
            attempts = self._attempts.get(message.id, 0) + 1
            self._first_attempt.setdefault(message.id, time.monotonic())
            if not failure.transient:
                kept.discard(message.id)
                await self._dead_letter(message, failure.reason, attempts, stats)
                continue
            kept.add(message.id)
            if not failure.attempted:
                continue  # never published: not an attempt
            retry = True
            if message.subject not in held:
                held.add(message.subject)
                self._hold(message.subject)
            self._attempts[message.id] = attempts
            stats.retried += 1
            self._warn_retry(message, failure, attempts)
            if self.on_retry is not None:
                self.on_retry(message, failure, attempts)
            if self._observers:
                self._observe("retried", message, failure)
        return acknowledged, retry

    async def _dead_letter(self, message: Message, reason: str, attempts: int, stats: RelayStats) -> None:
        self._attempts.pop(message.id, None)
        self._first_attempt.pop(message.id, None)
        if await self.buffer.mark_dead(message.id, reason, attempts=attempts):
            stats.dead_lettered += 1
            _log.error("dead-lettered message %s on %r after %d attempt(s): %s", message.id, message.subject,
                       attempts, reason)
            if self.on_dead_letter is not None:
                self.on_dead_letter(message, reason, attempts)
            if self._observers:
                self._observe("dead_lettered", message.id, reason)

    def _observe(self, event: str, *args: object) -> None:
        """Tell every observer; an observer's bug must never stop delivery."""
        for observer in self._observers:
            try:
                getattr(observer, event)(*args)
            except Exception:
                _log.exception("relay observer %r failed in %s", observer, event)

    def _warn_retry(self, message: Message, failure: Failure, attempts: int) -> None:
        if failure.no_stream:
            # Rate-limited: one warning per subject per minute, never silence.
            now = time.monotonic()
            if now - self._warned_no_stream.get(message.subject, -1e9) >= 60:
                self._warned_no_stream[message.subject] = now
                _log.warning("%s: its messages stay buffered and are retried", failure.reason)
        else:
            _log.info("publish of message %s on %r failed (attempt %d), will retry: %s", message.id,
                      message.subject, attempts, failure.reason)
        window = self._windows.get(message.subject)
        first = self._first_attempt.get(message.id)
        if window and first is not None and time.monotonic() - first > window:
            _log.warning("message %s is retried %.0f s after its first attempt, beyond the stream's duplicate "
                         "window of %.0f s: if that attempt was stored, JetStream may store it twice",
                         message.id, time.monotonic() - first, window)

    async def _check_duplicate_windows(self, batch: Sequence[Message]) -> None:
        for subject in {m.subject for m in batch} - set(self._windows):
            window = self._windows[subject] = await self.transport.duplicate_window(subject)
            if window is not None and self.backoff_max >= window:
                _log.warning("the stream for %r deduplicates for %.0f s, but a retry may wait up to %.0f s: a "
                             "message retried after the window can be stored twice", subject, window,
                             self.backoff_max)
