"""The Buffer contract, awaitable: storage work runs off the event loop."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any, TypeVar

from .buffer import Buffer
from .buffering.group_commit import commit_each_alone
from .errors import BufferFullError, ConfigurationError
from .limits import BufferStats, ClaimStats, SubjectStats
from .message import DeadLetter, Message, Outgoing, Payload

__all__ = ["AsyncBuffer"]

T = TypeVar("T")


class AsyncBuffer:
    """An awaitable face of a :class:`~pbuffer.Buffer`, with the same promises.

    Blocking backends run each call in a small thread pool owned by this object; non-blocking ones
    (``memory://``) run inline. :meth:`wait_for_messages` lets a relay in the same process sleep until a save.
    One object may be used from several event loops (each in its own thread): every loop groups its own saves
    and is woken by its own listener, since an asyncio future or event belongs to one loop.
    """

    def __init__(self, buffer: Buffer, *, max_workers: int = 4, group_commit: bool = True) -> None:
        self.buffer = buffer
        # Concurrent saves wait for one transaction together: with an fsync per commit (durability="power")
        # that is the difference between a few thousand saves a second and many times that.
        self.group_commit = group_commit and buffer.blocking
        # Per event loop: the saves waiting for the next group commit, present while that loop's committer runs.
        # Each loop touches only its own entry, from its own thread.
        self._groups: dict[asyncio.AbstractEventLoop, _LoopGroup] = {}
        self._executor = (ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="pbuffer")
                          if buffer.blocking else None)
        # Per event loop: the event a save sets (through the buffer's listener) for wait_for_messages.
        self._wakers: dict[asyncio.AbstractEventLoop, tuple[asyncio.Event, Callable[[], object]]] = {}
        self._wakers_lock = threading.Lock()

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._executor is None:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        # In the caller's context (contextvars: an OpenTelemetry span, for propagate_trace), as asyncio.to_thread.
        context = contextvars.copy_context()
        return await loop.run_in_executor(self._executor, functools.partial(context.run, fn, *args, **kwargs))

    async def save(self, payload: Payload, *, subject: str | None = None,
                   headers: Mapping[str, str] | None = None, connection: object | None = None) -> Message:
        """Like :meth:`Buffer.save`: returns once this message is committed.

        With group commit (the default for storage that blocks), saves made while a commit is running are
        committed together in the next transaction; each caller still returns only after its own message is
        durable, and a failed commit fails every save in it (none of them was written).

        ``connection``: a SQLAlchemy ``AsyncConnection`` or ``AsyncSession`` in a transaction on the buffer's
        database: the message is written in that transaction (the outbox, see :class:`~pbuffer.Buffer`), through
        the caller's async driver, and is stored when the caller commits.
        """
        if connection is not None:
            return await _in_caller(connection, functools.partial(
                _save_in, self.buffer, payload, subject=subject, headers=headers))
        if not self.group_commit:
            return await self._run(self.buffer.save, payload, subject=subject, headers=headers)
        message = self.buffer.prepare(payload, subject=subject, headers=headers)  # bad input raises here
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Message] = loop.create_future()
        group = self._groups.get(loop)
        if group is None:
            group = self._groups[loop] = _LoopGroup()
            group.committer = loop.create_task(self._commit_waiting(loop, group))
        group.waiting.append((message, done))
        return await done

    async def _commit_waiting(self, loop: asyncio.AbstractEventLoop, group: _LoopGroup) -> None:
        try:
            await self._commit_group(group)
        finally:
            # No await between the last look at group.waiting and this: a save arriving later starts a new group.
            if self._groups.get(loop) is group:
                del self._groups[loop]
            for _, done in group.waiting:  # only if the committer itself was cancelled
                if not done.done():
                    done.cancel()

    async def _commit_group(self, group: _LoopGroup) -> None:
        while group.waiting:
            batch, group.waiting = group.waiting, []
            try:
                try:
                    await self._run(self.buffer.commit, [message for message, _ in batch])
                except BufferFullError:
                    if len(batch) == 1:
                        raise
                    # The batch does not fit as a whole; each save gets its own answer, as without group commit.
                    await self._commit_one_by_one(batch)
                    continue
            except BaseException as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                for message, done in batch:
                    if not done.done():
                        done.set_result(message)

    async def _commit_one_by_one(self, batch: list[tuple[Message, asyncio.Future[Message]]]) -> None:
        errors = await self._run(commit_each_alone, [[message] for message, _ in batch], self.buffer.commit)
        for (message, done), error in zip(batch, errors, strict=True):
            if done.done():
                continue
            if error is None:
                done.set_result(message)
            else:
                done.set_exception(error)

    async def save_many(self, items: Iterable[Payload | Outgoing], *, subject: str | None = None,
                        headers: Mapping[str, str] | None = None, connection: object | None = None) -> list[Message]:
        """Like :meth:`Buffer.save_many`; ``connection`` as in :meth:`save`."""
        if connection is not None:
            return await _in_caller(connection, functools.partial(
                _save_many_in, self.buffer, list(items), subject=subject, headers=headers))
        return await self._run(self.buffer.save_many, list(items), subject=subject, headers=headers)

    async def get(self) -> Message | None:
        """:meth:`Buffer.get`, run off the event loop."""
        return await self._run(self.buffer.get)

    async def get_all(self, limit: int | None = None, *, after: str | None = None) -> list[Message]:
        """:meth:`Buffer.get_all`, run off the event loop."""
        return await self._run(self.buffer.get_all, limit, after=after)

    async def claim(self, limit: int, *, owner: str, lease: float, after: str | None = None,
                    skip_subjects: Iterable[str] = ()) -> list[Message]:
        """:meth:`Buffer.claim`, run off the event loop."""
        return await self._run(self.buffer.claim, limit, owner=owner, lease=lease, after=after,
                               skip_subjects=frozenset(skip_subjects))

    async def release(self, message_ids: Iterable[str], *, owner: str) -> int:
        """:meth:`Buffer.release`, run off the event loop."""
        return await self._run(self.buffer.release, list(message_ids), owner=owner)

    async def stats(self) -> BufferStats:
        """:meth:`Buffer.stats`, run off the event loop."""
        return await self._run(self.buffer.stats)

    async def subject_stats(self) -> dict[str, SubjectStats]:
        """:meth:`Buffer.subject_stats`, run off the event loop."""
        return await self._run(self.buffer.subject_stats)

    async def claim_stats(self, window: int = 10_000) -> ClaimStats | None:
        """:meth:`Buffer.claim_stats`, run off the event loop."""
        return await self._run(self.buffer.claim_stats, window)

    async def expire(self) -> int:
        """:meth:`Buffer.expire`, run off the event loop."""
        return await self._run(self.buffer.expire)

    async def delete(self, message_id: str) -> bool:
        """:meth:`Buffer.delete`, run off the event loop."""
        return await self._run(self.buffer.delete, message_id)

    async def delete_many(self, message_ids: Iterable[str]) -> int:
        """:meth:`Buffer.delete_many`, run off the event loop."""
        return await self._run(self.buffer.delete_many, list(message_ids))

    async def pop(self) -> Message | None:
        """:meth:`Buffer.pop`, run off the event loop."""
        return await self._run(self.buffer.pop)

    async def mark_dead(self, message_id: str, reason: str, *, attempts: int = 1) -> bool:
        """:meth:`Buffer.mark_dead`, run off the event loop."""
        return await self._run(self.buffer.mark_dead, message_id, reason, attempts=attempts)

    async def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        """:meth:`Buffer.dead_letters`, run off the event loop."""
        return await self._run(self.buffer.dead_letters, limit)

    async def requeue(self, message_id: str) -> bool:
        """:meth:`Buffer.requeue`, run off the event loop."""
        return await self._run(self.buffer.requeue, message_id)

    async def count(self) -> int:
        """Number of pending messages (``len()`` of the buffer)."""
        return await self._run(len, self.buffer)

    async def wait_for_messages(self, timeout: float | None = None) -> bool:
        """Wait until a pending message is available; ``True`` if one is, ``False`` after ``timeout`` seconds.

        Wakes at once on a save through this buffer object (from any thread of this process), and for an outbox
        save when its caller commits. On PostgreSQL (psycopg 3) it also wakes at the commit of a save by any
        other process or buffer object on the database (LISTEN/NOTIFY). Elsewhere, saves made by other processes
        or other buffer objects are not signalled: a relay should also poll.
        """
        event = self._ensure_listener()
        event.clear()  # cleared before looking, so a save between the look and the wait still wakes us
        if await self.get() is not None:
            return True
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def _ensure_listener(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        with self._wakers_lock:
            for old in [other for other in self._wakers if other.is_closed()]:  # loops that ended
                self.buffer.remove_listener(self._wakers.pop(old)[1])
            waker = self._wakers.get(loop)
            if waker is None:
                event = asyncio.Event()

                def listener() -> None:
                    with suppress(RuntimeError):  # the loop was closed meanwhile: nobody is waiting on it
                        loop.call_soon_threadsafe(event.set)

                waker = self._wakers[loop] = (event, listener)
                self.buffer.add_listener(listener)
        return waker[0]

    def _remove_listeners(self) -> None:
        with self._wakers_lock:
            for _, listener in self._wakers.values():
                self.buffer.remove_listener(listener)
            self._wakers.clear()

    async def close(self, *, close_buffer: bool = True) -> None:
        """Stop this facade's threads and, unless ``close_buffer`` is false, close the wrapped buffer too."""
        self._remove_listeners()
        if close_buffer:
            await self._run(self.buffer.close)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def closed(self) -> bool:
        return self.buffer.closed

    async def __aenter__(self) -> AsyncBuffer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def _in_caller(connection: object, work: Callable[[Any], T]) -> T:
    """Run ``work(sync_connection_or_session)`` inside the caller's AsyncConnection or AsyncSession, through its
    async driver (SQLAlchemy's ``run_sync``), on this event loop."""
    run_sync = getattr(connection, "run_sync", None)
    if run_sync is None:
        raise ConfigurationError(f"AsyncBuffer takes an AsyncConnection or AsyncSession as connection=, not "
                                 f"{type(connection).__name__} (a Connection or Session goes to Buffer.save)")
    result: T = await run_sync(work)
    return result


def _save_in(buffer: Buffer, payload: Payload, sync: object, *, subject: str | None,
             headers: Mapping[str, str] | None) -> Message:
    return buffer.save(payload, subject=subject, headers=headers, connection=sync)


def _save_many_in(buffer: Buffer, items: list[Payload | Outgoing], sync: object, *, subject: str | None,
                  headers: Mapping[str, str] | None) -> list[Message]:
    return buffer.save_many(items, subject=subject, headers=headers, connection=sync)


class _LoopGroup:
    """One event loop's saves waiting for their group commit, and the task committing them."""

    __slots__ = ("committer", "waiting")

    def __init__(self) -> None:
        self.waiting: list[tuple[Message, asyncio.Future[Message]]] = []
        self.committer: asyncio.Task[None] | None = None  # referenced here so the task is not collected
