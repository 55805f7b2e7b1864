"""Workloads for other Python durable queues, measured the way their documentation uses them.

Each peer is imported inside its workload: peers are optional (``pbuffer[bench]``), and a case whose peer is
missing is skipped by the harness before any workload runs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from .harness import Context, timed, timed_threads
from .payload import current

__all__ = [
    "litequeue_pop",
    "litequeue_pragmas",
    "litequeue_put",
    "persistqueue_pop",
    "persistqueue_pragmas",
    "persistqueue_put",
    "persistqueue_thread_put",
]

_SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


def _pragmas(connection: sqlite3.Connection) -> str:
    journal = connection.execute("PRAGMA journal_mode").fetchone()[0]
    synchronous = int(connection.execute("PRAGMA synchronous").fetchone()[0])
    return f"journal_mode={journal}, synchronous={_SYNCHRONOUS.get(synchronous, synchronous)}"


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"benchmark sanity check failed: {what}")


# ------------------------------------------------------------------------------------------------ persist-queue


def _persistqueue(directory: Path, synchronous: str | None) -> Any:
    import persistqueue

    # multithreading=True: a pbuffer Buffer may be shared by threads, so the peer gets the same promise.
    queue: Any = persistqueue.SQLiteAckQueue(str(directory / "pq"), auto_commit=True, multithreading=True)
    if synchronous is not None:
        # persist-queue has no option for this; its connections are private attributes (sqlbase.SQLiteBase).
        for connection in {id(c): c for c in (queue._putter, queue._getter)}.values():
            connection.execute(f"PRAGMA synchronous={synchronous}")
    return queue


def persistqueue_pragmas(directory: Path, *, synchronous: str | None = None) -> str:
    """The pragmas persist-queue's connections really have, read back rather than assumed."""
    queue = _persistqueue(directory / "default", None)
    try:
        found = f"Observed on a persist-queue connection as it opens: {_pragmas(queue._putter)}"
    finally:
        queue.close()
    if synchronous is not None:
        queue = _persistqueue(directory / "adjusted", synchronous)
        try:
            found += f"; as this case sets it up: {_pragmas(queue._putter)} (put), {_pragmas(queue._getter)} (get)"
        finally:
            queue.close()
    return found + "."


def persistqueue_put(context: Context, directory: Path, n: int, *, synchronous: str | None = None) -> float:
    queue = _persistqueue(directory, synchronous)
    try:
        put, payload = queue.put, current()

        def run() -> None:
            for _ in range(n):
                put(payload)

        seconds = timed(run)
        _expect(queue.qsize() == n, f"{n} items put")
        return seconds
    finally:
        queue.close()


def persistqueue_thread_put(context: Context, directory: Path, n: int, *, threads: int = 8,
                            synchronous: str | None = None) -> float:
    """``threads`` threads calling put() on one SQLiteAckQueue (``multithreading=True``), ``n`` items in all."""
    queue = _persistqueue(directory, synchronous)
    try:
        put, payload = queue.put, current()
        seconds = timed_threads(lambda: put(payload), n, threads)
        _expect(queue.qsize() == n, f"{n} items put from {threads} threads")
        return seconds
    finally:
        queue.close()


def persistqueue_pop(context: Context, directory: Path, n: int, *, synchronous: str | None = None,
                     waiting: int | None = None) -> float:
    """get() then ack(): SQLiteAckQueue's way to take an item for good (two transactions); ``n`` items from a
    queue holding ``waiting`` (default: exactly ``n``)."""
    queue = _persistqueue(directory, synchronous)
    try:
        for _ in range(n if waiting is None else max(n, waiting)):
            queue.put(current())
        get, ack = queue.get, queue.ack

        def run() -> None:
            for _ in range(n):
                ack(get(block=False))

        seconds = timed(run)
        _expect(queue.acked_count() == n, f"{n} items acked")
        return seconds
    finally:
        queue.close()


# ---------------------------------------------------------------------------------------------------- litequeue


def _litequeue(directory: Path) -> Any:
    from litequeue import LiteQueue

    return LiteQueue(str(directory / "lq.db"))


def litequeue_pragmas(directory: Path) -> str:
    queue = _litequeue(directory)
    try:
        return f"Observed on a litequeue connection as it opens: {_pragmas(queue.conn)}."
    finally:
        queue.close()


def litequeue_put(context: Context, directory: Path, n: int) -> float:
    queue = _litequeue(directory)
    try:
        # litequeue stores text: the same bytes, as a str.
        put, text = queue.put, current().decode()

        def run() -> None:
            for _ in range(n):
                put(text)

        seconds = timed(run)
        _expect(queue.qsize() == n, f"{n} items put")
        return seconds
    finally:
        queue.close()


def litequeue_pop(context: Context, directory: Path, n: int) -> float:
    """pop() then done(): litequeue's way to take a message for good (two transactions)."""
    queue = _litequeue(directory)
    try:
        with queue.transaction():
            for _ in range(n):
                queue.put(current().decode())
        pop, done = queue.pop, queue.done

        def run() -> None:
            for _ in range(n):
                done(pop().message_id)

        seconds = timed(run)
        _expect(queue.qsize() == 0, f"{n} messages popped")
        return seconds
    finally:
        queue.close()
