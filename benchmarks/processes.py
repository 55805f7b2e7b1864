"""Several producer processes saving into one store at once: the total msg/s of 1, 4 or 8 processes.

A case starts its producers once (:meth:`.harness.Context.resource`) and reuses them for every repetition, so
process start-up (an interpreter, imports) is never timed. Each repetition:

1. the parent creates the empty store (a fresh sqlite file or server database) and opens it, so the schema exists;
2. each producer opens its own buffer on it (untimed) and answers ``ready``;
3. the parent starts the clock and tells every producer ``go``; each saves its share of the ``n`` messages with
   ``save()`` (one transaction per message) and answers with the count it saved;
4. the clock stops when the last answer arrives (the parent's own clock: no cross-process clocks are compared);
   then the producers close their buffers and the parent checks that the store holds exactly ``n`` messages.

Producers are forked where the platform allows it (they inherit the imports, and open their buffers after the
fork: nothing is shared), spawned elsewhere.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sqlite3
import time
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any

import pbuffer

from .harness import Context
from .payload import current
from .workloads import SQLITE, SUBJECT, Store

__all__ = ["ProducerPool", "save_processes"]

#: Seconds a producer may take to answer before the repetition fails (a hung or crashed producer).
ANSWER_TIMEOUT = 600.0


def _producer(connection: Connection) -> None:
    """A producer's loop: a job (url, options, count, payload size) -> open, ``ready``, wait for ``go``, save,
    answer the count, close, ``closed``. ``None`` (instead of a job or of ``go``) ends it; so does an error, after
    reporting it."""
    while True:
        job = connection.recv()
        if job is None:
            return
        url, options, count, size = job
        payload = b"x" * size
        try:
            buffer = pbuffer.open(url, **options)
            try:
                len(buffer)  # connected before the clock starts (a server connection is made on first use)
                save = buffer.save
                connection.send("ready")
                if connection.recv() is None:
                    return
                for _ in range(count):
                    save(payload, subject=SUBJECT)
                connection.send(count)
            finally:
                buffer.close()
            connection.send("closed")
        except Exception as exc:  # reported to the parent, which fails the repetition (and the case) with it
            connection.send(f"error: {type(exc).__name__}: {exc}")
            return


class ProducerPool:
    """``size`` producer processes, started on entry and stopped on exit."""

    def __init__(self, size: int) -> None:
        methods = multiprocessing.get_all_start_methods()
        self._mp: Any = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.size = size
        self._connections: list[Connection] = []
        self._processes: list[Any] = []

    def __enter__(self) -> ProducerPool:
        try:
            for index in range(self.size):
                parent, child = self._mp.Pipe()
                process = self._mp.Process(target=_producer, args=(child,), name=f"bench-producer-{index}",
                                           daemon=True)
                process.start()
                child.close()
                self._connections.append(parent)
                self._processes.append(process)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for connection in self._connections:
            with contextlib.suppress(OSError):  # a producer that failed has exited already
                connection.send(None)
        for process in self._processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join()
        for connection in self._connections:
            connection.close()

    def _answer(self, connection: Connection, expected: str | None = None) -> Any:
        if not connection.poll(ANSWER_TIMEOUT):
            raise RuntimeError(f"a producer did not answer within {ANSWER_TIMEOUT:g} s")
        answer = connection.recv()
        if isinstance(answer, str) and answer.startswith("error"):
            raise RuntimeError(f"a producer failed: {answer}")
        if expected is not None and answer != expected:
            raise RuntimeError(f"a producer answered {answer!r}, not {expected!r}")
        return answer

    def save(self, url: str, options: dict[str, Any], n: int) -> float:
        """Seconds from ``go`` until every producer has saved its share of ``n`` messages into ``url``.

        Any failure raises; the pool is then out of step and the case ends (its resources are released)."""
        shares = [n // self.size + (1 if index < n % self.size else 0) for index in range(self.size)]
        for connection, share in zip(self._connections, shares, strict=True):
            connection.send((url, options, share, len(current())))
        for connection in self._connections:
            self._answer(connection, "ready")
        start = time.perf_counter()
        for connection in self._connections:
            connection.send("go")
        saved = [self._answer(connection) for connection in self._connections]
        seconds = time.perf_counter() - start
        for connection in self._connections:
            self._answer(connection, "closed")
        if saved != shares:
            raise RuntimeError(f"producers saved {saved}, expected {shares}")
        return seconds


def save_processes(context: Context, directory: Path, n: int, *, processes: int, store: Store = SQLITE) -> float:
    """``processes`` producer processes save ``n`` messages in all (an even share each) into one fresh store."""
    pool: ProducerPool = context.resource(f"producers-{processes}", lambda: ProducerPool(processes))
    with store.url(directory) as url:
        buffer = pbuffer.open(url, **store.options())
        try:
            seconds = pool.save(url, store.options(), n)
            if len(buffer) != n:
                raise RuntimeError(f"benchmark sanity check failed: {n} messages saved by {processes} processes "
                                   f"(found {len(buffer)})")
            return seconds
        finally:
            buffer.close()


def describe_sqlite(directory: Path) -> str:
    """How the sqlite buffer these producers open coordinates its writers (a case's probe)."""
    buffer = pbuffer.open(f"sqlite:///{directory / 'probe.db'}")
    try:
        serialized = getattr(buffer, "serialize_writes", None)
    finally:
        buffer.close()
    if serialized is None:
        return ""
    how = ("one writer at a time across processes, through a lock file beside the database (the default on a "
           "sqlite with the WAL-reset bug)" if serialized else "writers left to sqlite's own locking")
    return f"Observed: serialize_writes={serialized} with sqlite {sqlite3.sqlite_version}: {how}."
