"""Group commit across threads: saves that arrive while a commit runs share the next transaction.

With an fsync per commit (sqlite's ``durability="power"``, a server database's commit) many threads then share
each fsync instead of queueing for one each. :class:`~pbuffer.AsyncBuffer` groups an event loop's saves the same
way and shares :func:`commit_each_alone` with this module.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ..errors import BufferFullError
from ..message import Message

__all__ = ["GroupCommit", "commit_each_alone"]

Insert = Callable[[list[Message]], None]


def commit_each_alone(calls: Sequence[list[Message]], insert: Insert) -> list[Exception | None]:
    """Commit each call's messages in a transaction of its own, as if no other call had been grouped with it: the
    fallback when a group does not fit the buffer's limits as a whole. Returns each call's error (``None``: stored).
    """
    errors: list[Exception | None] = []
    for messages in calls:
        try:
            insert(messages)
        except Exception as exc:
            errors.append(exc)
        else:
            errors.append(None)
    return errors


class GroupCommit:
    """Leader and followers around ``insert`` (which stores one list of messages in one transaction, all or nothing).

    A caller that finds no commit running commits its own messages at once (a lone thread pays two lock round
    trips, nothing more). Calls that arrive meanwhile queue up; when the running commit ends, the oldest of them
    leads the next commit, which writes every queued call in one transaction, and the others wait until it is done.
    Each call still gets its own answer: a failed commit fails every call in it (none of them was written), and a
    group over the limits is committed call by call (:func:`commit_each_alone`).
    """

    def __init__(self, insert: Insert) -> None:
        self._insert = insert
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._busy = False

    def commit(self, messages: list[Message]) -> None:
        """Store ``messages`` (one call's), together with the calls queued meanwhile; raise what this call got."""
        mine: _Pending | None = None
        with self._lock:
            if self._busy:
                mine = _Pending(messages)
                self._queue.append(mine)
            else:
                self._busy = True
        if mine is None:
            try:
                self._insert(messages)
            finally:
                self._hand_over()
            return
        mine.done.wait()
        if mine.lead:
            try:
                with self._lock:
                    batch, self._queue = self._queue, []
                self._commit_batch(batch, mine)
            finally:
                self._hand_over()
        if mine.error is not None:
            raise mine.error

    def _hand_over(self) -> None:
        """After a commit: the oldest queued call leads the next one, or nobody is committing any more."""
        with self._lock:
            if self._queue:
                following = self._queue[0]
                following.lead = True  # its own thread commits the next batch
                following.done.set()
            else:
                self._busy = False

    def _commit_batch(self, batch: list[_Pending], leader: _Pending) -> None:
        try:
            if len(batch) == 1:
                self._insert(batch[0].messages)
            else:
                try:
                    self._insert([m for pending in batch for m in pending.messages])
                except BufferFullError:
                    errors = commit_each_alone([pending.messages for pending in batch], self._insert)
                    for pending, error in zip(batch, errors, strict=True):
                        pending.error = error
        except BaseException as exc:
            # Nothing of the batch was written: every call in it fails.
            for pending in batch:
                pending.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            for pending in batch:
                if pending is not leader:
                    pending.done.set()


class _Pending:
    """One save call waiting in a group commit."""

    __slots__ = ("done", "error", "lead", "messages")

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.lead = False
