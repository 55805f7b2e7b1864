"""The Buffer contract, awaitable: storage work runs off the event loop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .buffer import Buffer
from .errors import BufferFullError
from .limits import BufferStats
from .message import DeadLetter, Message, Outgoing, Payload

__all__ = ["AsyncBuffer"]

T = TypeVar("T")


class AsyncBuffer:
    """An awaitable face of a :class:`~pbuffer.Buffer`, with the same promises.

    Blocking backends run each call in a small thread pool owned by this object; non-blocking ones
    (``memory://``) run inline. :meth:`wait_for_messages` lets a relay in the same process sleep until a save.
    """

    def __init__(self, buffer: Buffer, *, max_workers: int = 4, group_commit: bool = True) -> None:
        self.buffer = buffer
        # Concurrent saves wait for one transaction together: with an fsync per commit (durability="power")
        # that is the difference between a few thousand saves a second and many times that.
        self.group_commit = group_commit and buffer.blocking
        self._waiting: list[tuple[Message, asyncio.Future[Message]]] = []
        self._committer: asyncio.Future[None] | None = None
        self._executor = (ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="pbuffer")
                          if buffer.blocking else None)
        self._event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: Callable[[], object] | None = None

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._executor is None:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def save(self, payload: Payload, *, subject: str | None = None,
                   headers: Mapping[str, str] | None = None) -> Message:
        """Like :meth:`Buffer.save`: returns once this message is committed.

        With group commit (the default for storage that blocks), saves made while a commit is running are
        committed together in the next transaction; each caller still returns only after its own message is
        durable, and a failed commit fails every save in it (none of them was written).
        """
        if not self.group_commit:
            return await self._run(self.buffer.save, payload, subject=subject, headers=headers)
        message = self.buffer.prepare(payload, subject=subject, headers=headers)  # bad input raises here
        done: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiting.append((message, done))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.ensure_future(self._commit_waiting())
        return await done

    async def _commit_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
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
        for message, done in batch:
            try:
                await self._run(self.buffer.commit, [message])
            except Exception as exc:
                if not done.done():
                    done.set_exception(exc)
            else:
                if not done.done():
                    done.set_result(message)

    async def save_many(self, items: Iterable[Payload | Outgoing], *, subject: str | None = None,
                        headers: Mapping[str, str] | None = None) -> list[Message]:
        return await self._run(self.buffer.save_many, list(items), subject=subject, headers=headers)

    async def get(self) -> Message | None:
        return await self._run(self.buffer.get)

    async def get_all(self, limit: int | None = None, *, after: str | None = None) -> list[Message]:
        return await self._run(self.buffer.get_all, limit, after=after)

    async def claim(self, limit: int, *, owner: str, lease: float, after: str | None = None) -> list[Message]:
        return await self._run(self.buffer.claim, limit, owner=owner, lease=lease, after=after)

    async def release(self, message_ids: Iterable[str], *, owner: str) -> int:
        return await self._run(self.buffer.release, list(message_ids), owner=owner)

    async def stats(self) -> BufferStats:
        return await self._run(self.buffer.stats)

    async def expire(self) -> int:
        return await self._run(self.buffer.expire)

    async def delete(self, message_id: str) -> bool:
        return await self._run(self.buffer.delete, message_id)

    async def delete_many(self, message_ids: Iterable[str]) -> int:
        return await self._run(self.buffer.delete_many, list(message_ids))

    async def pop(self) -> Message | None:
        return await self._run(self.buffer.pop)

    async def mark_dead(self, message_id: str, reason: str, *, attempts: int = 1) -> bool:
        return await self._run(self.buffer.mark_dead, message_id, reason, attempts=attempts)

    async def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        return await self._run(self.buffer.dead_letters, limit)

    async def requeue(self, message_id: str) -> bool:
        return await self._run(self.buffer.requeue, message_id)

    async def count(self) -> int:
        """Number of pending messages (``len()`` of the buffer)."""
        return await self._run(len, self.buffer)

    async def wait_for_messages(self, timeout: float | None = None) -> bool:
        """Wait until a pending message is available; ``True`` if one is, ``False`` after ``timeout`` seconds.

        Wakes at once on a save through this buffer object (from any thread of this process). Saves made by
        other processes or other buffer objects are not signalled: a relay should also poll.
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
        if self._event is None or self._loop is not loop:
            self._remove_listener()
            event = asyncio.Event()

            def listener() -> None:
                loop.call_soon_threadsafe(event.set)

            self._event, self._loop, self._listener = event, loop, listener
            self.buffer.add_listener(listener)
        return self._event

    def _remove_listener(self) -> None:
        if self._listener is not None:
            self.buffer.remove_listener(self._listener)
            self._listener = None

    async def close(self, *, close_buffer: bool = True) -> None:
        """Stop this facade's threads and, unless ``close_buffer`` is false, close the wrapped buffer too."""
        self._remove_listener()
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
