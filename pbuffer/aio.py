"""The Buffer contract, awaitable: storage work runs off the event loop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .buffer import Buffer
from .message import DeadLetter, Message, Outgoing, Payload

__all__ = ["AsyncBuffer"]

T = TypeVar("T")


class AsyncBuffer:
    """An awaitable face of a :class:`~pbuffer.Buffer`, with the same promises.

    Blocking backends run each call in a small thread pool owned by this object; non-blocking ones
    (``memory://``) run inline. :meth:`wait_for_messages` lets a relay in the same process sleep until a save.
    """

    def __init__(self, buffer: Buffer, *, max_workers: int = 4) -> None:
        self.buffer = buffer
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
        return await self._run(self.buffer.save, payload, subject=subject, headers=headers)

    async def save_many(self, items: Iterable[Payload | Outgoing], *, subject: str | None = None,
                        headers: Mapping[str, str] | None = None) -> list[Message]:
        return await self._run(self.buffer.save_many, list(items), subject=subject, headers=headers)

    async def get(self) -> Message | None:
        return await self._run(self.buffer.get)

    async def get_all(self, limit: int | None = None, *, after: str | None = None) -> list[Message]:
        return await self._run(self.buffer.get_all, limit, after=after)

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
