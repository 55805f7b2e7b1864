"""``ttl``: a message older than ``ttl`` seconds is removed, counted as expired, and never returned.

Reads remove the expired messages they meet (:func:`read_fresh`); :func:`expire_all` walks the queue from the
oldest message for :meth:`pbuffer.Buffer.expire`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..message import Message

__all__ = ["expire_all", "is_expired", "read_fresh"]

#: Messages looked at per step of expire_all().
_EXPIRE_PAGE = 500

#: Removes the given messages counting them as expired; returns how many it removed (others may have got there).
Remove = Callable[[list[Message]], int]


def is_expired(message: Message, now_us: int, ttl: float | None) -> bool:
    return ttl is not None and now_us - message.created_us > ttl * 1e6


def read_fresh(read: Callable[[], list[Message]], ttl: float | None, remove: Remove) -> list[Message]:
    """Run ``read``; with a ``ttl``, remove (and count) the expired messages it met and read again."""
    while True:
        found = read()
        if ttl is None:
            return found
        now_us = time.time_ns() // 1000
        old = [m for m in found if is_expired(m, now_us, ttl)]
        if not old:
            return found
        remove(old)


def expire_all(head: Callable[[int], list[Message]], ttl: float, remove: Remove) -> int:
    """Remove the expired messages from the front of the queue (``head(n)``: the ``n`` oldest pending messages);
    returns how many. Stops at the first message still young enough."""
    total = 0
    while True:
        page = head(_EXPIRE_PAGE)
        now_us = time.time_ns() // 1000
        old = [m for m in page if is_expired(m, now_us, ttl)]
        removed = remove(old) if old else 0
        total += removed
        # Done at the first young message, at the end of the queue, or when another remover got there first.
        if len(old) < len(page) or len(page) < _EXPIRE_PAGE or not removed:
            return total
