"""``overflow="block"``: a save into a full buffer waits for room, up to ``block_timeout`` seconds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..errors import BufferFullError
from ..limits import Limits
from ..message import Message

__all__ = ["Room"]

#: Seconds between looks for room: removals by other processes (or buffer objects) are only seen by looking.
_BLOCK_POLL = 0.05


class Room:
    """Inserts that wait while the buffer is full (``overflow="block"`` only), and the wake-up when room is freed."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        # Savers blocked by overflow="block" wait on this; every removal in this process wakes them.
        self._freed = threading.Condition()

    def insert(self, messages: list[Message], insert: Callable[[list[Message]], None]) -> None:
        """``insert(messages)``; with ``overflow="block"``, retried while it raises BufferFullError, until the
        deadline (then BufferFullError says so). Messages that could never fit raise at once."""
        limits = self._limits
        if limits.overflow != "block":
            insert(messages)
            return
        limits.make_room(0, 0, [len(m.payload) for m in messages], lambda _n: [])  # never fits: raises now
        deadline = time.monotonic() + limits.block_timeout
        while True:
            try:
                insert(messages)
                return
            except BufferFullError as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BufferFullError(f"{exc}; no room within block_timeout={limits.block_timeout} s") from None
                with self._freed:
                    # A removal in this process wakes us at once; other processes' are seen by the next look.
                    self._freed.wait(min(remaining, _BLOCK_POLL))

    def freed(self, count: int) -> int:
        """Wake the savers waiting for room after ``count`` messages left the queue; returns ``count``."""
        if count and self._limits.overflow == "block":
            with self._freed:
                self._freed.notify_all()
        return count
