"""PostgreSQL with psycopg 3: wake a buffer's listeners at saves other processes commit.

Every save NOTIFYs at its commit (:attr:`SaveListener.notify_sql`); a buffer with a listener starts a thread that
LISTENs, so saves of other processes wake this one's relay too (``wait_for_messages`` across processes). Other
databases have no such channel: their relays poll.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

from .sql_connections import Connections

__all__ = ["SaveListener"]

_log = logging.getLogger("pbuffer.backends.sql")

# The channel every save NOTIFYs at its commit and buffers LISTEN on; seconds between the listening thread's looks at
# whether the buffer was closed.
_CHANNEL = "pbuffer"
_LISTEN_TICK = 0.5


class SaveListener:
    """One buffer's NOTIFY at each save, and the thread that LISTENs for everyone else's."""

    def __init__(self, connections: Connections, notify: Callable[[], None]) -> None:
        self._connections = connections
        self._notify = notify
        # The NOTIFY names this buffer object, whose own saves already woke its listeners in-process.
        self._token = uuid.uuid4().hex
        #: What a save runs before its commit.
        self.notify_sql = f"NOTIFY {_CHANNEL}, '{self._token}'"
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, closed: Callable[[], bool]) -> None:
        """Start listening, once, unless the buffer is ``closed`` already."""
        with self._lock:
            if self._thread is None and not closed():
                self._thread = threading.Thread(target=self._listen, name="pbuffer-listen", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Stop listening; waits for the thread (unless called from it)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * _LISTEN_TICK + 1)

    def _listen(self) -> None:
        """Wake the buffer's listeners at every save another connection commits (each NOTIFYs, see
        SQLBuffer._insert), until stopped. After (re)connecting it wakes them once: saves may have committed
        unheard."""
        connection: Any = None
        first = True
        while not self._stop.is_set():
            try:
                if connection is None:
                    connection = self._connections.take("listen")
                    connection.autocommit = True
                    connection.execute(f"LISTEN {_CHANNEL}")
                    if not first:
                        self._notify()
                    first = False
                for notification in connection.notifies(timeout=_LISTEN_TICK, stop_after=1):
                    if notification.payload != self._token:
                        self._notify()
            except Exception as exc:  # a lost connection: listen again on a new one (polling covers the gap)
                _log.debug("listening for saves failed, listening again: %s", exc)
                if connection is not None:
                    self._connections.discard(connection)
                    connection = None
                self._stop.wait(_LISTEN_TICK)
        if connection is not None:
            self._connections.discard(connection)
