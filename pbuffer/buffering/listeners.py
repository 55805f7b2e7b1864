"""Callbacks after each committed save (how a relay wakes at once instead of polling), and the rate-limited log of
messages the limits removed without sending them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..limits import Limits

__all__ = ["Listeners", "RemovalLog"]

_log = logging.getLogger("pbuffer.buffer")

#: Seconds between warnings about removed (dropped or expired) messages, per kind.
_LOG_EVERY = 10.0


class Listeners:
    """The callbacks to run after a commit. ``callbacks`` is replaced, never changed in place, so :meth:`notify`
    (and a saver's ``if listeners.callbacks``) reads it without a lock."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], object]] = []
        self._lock = threading.Lock()

    def add(self, callback: Callable[[], object]) -> None:
        with self._lock:
            self.callbacks = [*self.callbacks, callback]

    def remove(self, callback: Callable[[], object]) -> None:
        with self._lock:
            self.callbacks = [cb for cb in self.callbacks if cb is not callback]

    def notify(self) -> None:
        for callback in self.callbacks:
            try:
                callback()
            except Exception:  # a listener's bug must not turn a committed save into a failure
                _log.exception("buffer listener failed")


class RemovalLog:
    """A WARNING for messages the limits removed (``"dropped"``, ``"expired"``): at most one every 10 s per kind,
    with the count since the last one."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._lock = threading.Lock()
        self._unlogged: dict[str, int] = {}
        self._logged_at: dict[str, float] = {}

    def note(self, kind: str, count: int) -> None:
        if not count:
            return
        with self._lock:
            unlogged = self._unlogged[kind] = self._unlogged.get(kind, 0) + count
            now = time.monotonic()
            if now - self._logged_at.get(kind, -1e9) < _LOG_EVERY:
                return
            self._logged_at[kind], self._unlogged[kind] = now, 0
        limits = self._limits
        why = f"older than ttl={limits.ttl} s" if kind == "expired" else (
            f"the oldest, to make room (max_messages={limits.max_messages}, max_bytes={limits.max_bytes})")
        _log.warning("removed %d message(s) %s without sending them; stats().%s counts them all", unlogged, why,
                     kind)
