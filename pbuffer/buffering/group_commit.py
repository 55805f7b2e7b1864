"""Group commit across threads: saves that arrive while a commit runs share the next transaction.

With an fsync per commit (sqlite's ``durability="power"``, a server database's commit) many threads then share
each fsync instead of queueing for one each; with sqlite's ``durability="process"`` a transaction of many rows
costs little more than one of a single row, so threads sharing them beat threads taking turns.
:class:`~pbuffer.AsyncBuffer` groups an event loop's saves the same way and shares :func:`commit_each_alone`
with this module.
"""

from __future__ import annotations

import threading
import time
from _thread import allocate_lock, get_ident
from collections.abc import Callable, Sequence

from ..errors import BackendError, BufferFullError, ValidationError
from ..message import Message

__all__ = ["GroupCommit", "commit_each_alone"]

Insert = Callable[[list[Message]], None]

#: Seconds a committing thread goes on writing the calls queued behind it (after the first such transaction,
#: always written) before it hands the committing over to the oldest call still queued: how much longer than its
#: own commit one call may wait for others'. With an fsync per commit that is one transaction, as before.
COMBINE_SECONDS = 0.001


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
    """A committing thread around ``insert`` (which stores one list of messages in one transaction, all or
    nothing), and the calls queued behind it.

    A caller that finds no commit running commits its own messages at once (a lone thread pays two lock round
    trips, nothing more). Calls that arrive meanwhile queue up, each blocked on a lock of its own (taken when it
    is made, released to wake it: cheaper than an Event). When a commit ends, the committing thread goes on: it
    writes every call queued meanwhile in one transaction, releases each of them, and again, until nothing is
    queued or ``combine_for`` seconds have passed; then the oldest queued call is woken to commit in its turn.
    So the next transaction starts at once, by a thread already running, instead of after a woken thread has
    been scheduled (in CPython: after it has won the GIL from the threads just released). Each call still gets
    its own answer: a failed commit fails every call in it (none of them was written), and a group over the
    limits, or holding a message already stored, is committed call by call (:func:`commit_each_alone`).
    """

    def __init__(self, insert: Insert, *, combine_for: float = COMBINE_SECONDS) -> None:
        self._insert = insert
        self._combine_for = combine_for
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._busy = False  # a thread is committing (or has been woken to): the others queue
        # Who holds the committing: the ident of the thread that took it, or the queued call it was handed to.
        # Only the holder hands it over, so a thread interrupted after its hand-over never wakes a second call.
        self._leader: object = None

    # A KeyboardInterrupt (Ctrl-C, in the main thread) can land between any two calls. Every step that holds the
    # committing is inside a try that hands it over, and every call taken out of the queue is answered, so no
    # thread is left waiting for a commit nobody runs (found with real signals: every later save waited for ever).

    def commit(self, messages: list[Message]) -> None:
        """Store ``messages`` (one call's), together with the calls queued meanwhile; raise what this call got."""
        mine: _Pending | None = None
        me = get_ident()
        lead = False
        try:
            with self._lock:
                if self._busy:
                    mine = _Pending(messages)
                    self._queue.append(mine)
                else:
                    # One statement each, no call between: no interrupt lands between taking and knowing.
                    self._busy = lead = True
                    self._leader = me
            if lead:
                self._insert(messages)
                with self._lock:  # the lone thread's way out, spelled out: nothing queued meanwhile
                    if not self._queue:
                        self._busy = lead = False
                        self._leader = None
                        return
                self._commit_queued(me)
                return
        except BaseException:
            if lead:
                self._hand_over(me)
            elif mine is not None:
                self._withdraw(mine)
            raise
        assert mine is not None
        try:
            mine.done.acquire()  # released once this call is answered, or handed the committing
            if mine.lead:
                self._commit_queued(mine)
        except BaseException:  # KeyboardInterrupt (in the main thread) while it waited or committed
            self._withdraw(mine)
            raise
        if mine.error is not None:
            raise mine.error

    def _withdraw(self, mine: _Pending) -> None:
        """A call stops waiting: out of the queue (nothing of it is written), and if it holds the committing, the
        next queued call gets it, so no call is left waiting for a thread that has gone. A call already taken into
        a transaction stays in it: its outcome is unknown to its caller, as that of any save interrupted while it
        commits."""
        with self._lock:
            if any(pending is mine for pending in self._queue):
                self._queue.remove(mine)
            if self._leader is mine:
                self._hand_over_locked()

    def _commit_queued(self, me: object) -> None:
        """Commit what is queued, one transaction at a time, for up to ``combine_for`` seconds (one transaction at
        least); then hand the committing over, or go idle once nothing is queued. ``me``: the holder's token."""
        batch: list[_Pending] = []
        try:
            deadline = time.monotonic() + self._combine_for
            while True:
                with self._lock:
                    if not self._queue:
                        self._busy = False
                        self._leader = None
                        return
                    batch, self._queue = self._queue, []
                self._commit_batch(batch)
                if time.monotonic() >= deadline:
                    break
        except BaseException as exc:  # not an Exception (those are answers): someone else goes on
            _answer_the_rest(batch, exc)
            self._hand_over(me)
            raise
        self._hand_over(me)

    def _hand_over(self, me: object) -> None:
        """If ``me`` holds the committing: the oldest queued call commits next, or nobody is committing any more."""
        with self._lock:
            if self._leader == me:
                self._hand_over_locked()

    def _hand_over_locked(self) -> None:
        if self._queue:
            # The oldest queued call stays in the queue: its thread commits the queue, it included.
            following = self._queue[0]
            following.lead = True
            self._leader = following
            following.done.release()
        else:
            self._busy = False
            self._leader = None

    def _commit_batch(self, batch: list[_Pending]) -> None:
        """Write the calls of ``batch`` in one transaction (or call by call if they do not fit together) and
        release each call's waiting thread (not this thread's own call, if it is one of them)."""
        try:
            if len(batch) == 1:
                self._insert(batch[0].messages)
            else:
                try:
                    self._insert([m for pending in batch for m in pending.messages])
                except (BufferFullError, ValidationError):  # (the limits; an id already stored): one call's own
                    errors = commit_each_alone([pending.messages for pending in batch], self._insert)
                    for pending, error in zip(batch, errors, strict=True):
                        pending.error = error
        except BaseException as exc:
            # Nothing of the batch was written: every call in it fails. An interrupt of this thread is this
            # thread's: the other calls get an error of their own (a KeyboardInterrupt raised in a worker thread
            # would end it), which cannot say whether the commit went through.
            error = exc if isinstance(exc, Exception) else _interrupted(exc)
            for pending in batch:
                pending.error = error
            if not isinstance(exc, Exception):
                raise
        finally:
            for pending in batch:
                if not pending.lead and not pending.answered:  # (the committing thread's own call is running)
                    pending.answered = True
                    pending.done.release()


def _interrupted(exc: BaseException) -> BackendError:
    return BackendError(f"the thread committing this save was interrupted ({type(exc).__name__}) before it "
                        "answered: whether the save was written is unknown")


def _answer_the_rest(batch: list[_Pending], exc: BaseException) -> None:
    """After an interrupt of the thread committing ``batch``: wake the calls it had not answered yet. Whether they
    were written is unknown to them (taken out of the queue; written, or not yet)."""
    for pending in batch:
        if not pending.lead and not pending.answered:
            if pending.error is None:
                pending.error = _interrupted(exc)
            pending.answered = True
            pending.done.release()


class _Pending:
    """One save call waiting in a group commit: ``done`` is taken at creation, released to wake its thread."""

    __slots__ = ("answered", "done", "error", "lead", "messages")

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.done = allocate_lock()
        self.done.acquire()
        self.error: BaseException | None = None
        self.lead = False
        self.answered = False
