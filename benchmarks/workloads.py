"""Workloads for pbuffer itself and for the plain-sqlite3 baselines (see :data:`.harness.Workload`)."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pbuffer

from .harness import Context, timed

__all__ = [
    "PAYLOAD",
    "SUBJECT",
    "buffer_pop",
    "buffer_pop_backlog",
    "buffer_save",
    "buffer_save_many",
    "copy_backlog",
    "fill",
    "open_buffer",
    "sqlite3_executemany",
    "sqlite3_loop",
]

PAYLOAD = b"x" * 100
SUBJECT = "bench.x"
#: Messages per save_many call when a backlog is filled (untimed); bounds memory for a million messages.
FILL_CHUNK = 10_000
FILL_BYTES = 16 * 1024 * 1024
_PLAIN_TABLE = "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL)"


def _open(directory: Path, backend: str, durability: str) -> pbuffer.Buffer:
    if backend == "memory":
        return pbuffer.open("memory://")
    return pbuffer.open(f"sqlite:///{directory / 'buffer.db'}", durability=durability)


def _fill(buffer: pbuffer.Buffer, count: int, payload: bytes = PAYLOAD) -> None:
    # Chunks hold at most FILL_BYTES of payload too, so a 64 KiB fill does not hold 600 MB at once.
    chunk = max(1, min(FILL_CHUNK, FILL_BYTES // max(1, len(payload))))
    for start in range(0, count, chunk):
        buffer.save_many([payload] * min(chunk, count - start), subject=SUBJECT)


#: For the other workload modules (e2e.py): the same buffers and fill as here.
open_buffer = _open
fill = _fill


def _expect(condition: bool, what: str) -> None:
    # A workload that silently did less work would report a flattering rate.
    if not condition:
        raise RuntimeError(f"benchmark sanity check failed: {what}")


def buffer_save(context: Context, directory: Path, n: int, *, backend: str = "sqlite",
                durability: str = "process", payload: bytes = PAYLOAD) -> float:
    buffer = _open(directory, backend, durability)
    try:
        save = buffer.save

        def run() -> None:
            for _ in range(n):
                save(payload, subject=SUBJECT)

        seconds = timed(run)
        _expect(len(buffer) == n, f"{n} messages saved")
        return seconds
    finally:
        buffer.close()


def buffer_save_many(context: Context, directory: Path, n: int, *, backend: str = "sqlite",
                     durability: str = "process", batch: int = 1_000) -> float:
    buffer = _open(directory, backend, durability)
    try:
        save_many = buffer.save_many
        batches = [[PAYLOAD] * min(batch, n - start) for start in range(0, n, batch)]

        def run() -> None:
            for items in batches:
                save_many(items, subject=SUBJECT)

        seconds = timed(run)
        _expect(len(buffer) == n, f"{n} messages saved")
        return seconds
    finally:
        buffer.close()


def buffer_pop(context: Context, directory: Path, n: int, *, backend: str = "sqlite",
               durability: str = "process", payload: bytes = PAYLOAD) -> float:
    buffer = _open(directory, backend, durability)
    try:
        _fill(buffer, n, payload)
        pop = buffer.pop

        def run() -> None:
            for _ in range(n):
                pop()

        seconds = timed(run)
        _expect(len(buffer) == 0, f"{n} messages popped")
        return seconds
    finally:
        buffer.close()


def copy_backlog(context: Context, directory: Path, backlog: int) -> Path:
    """Put a sqlite buffer holding ``backlog`` messages (durability "process") into ``directory`` and return its
    database file: a copy of a file written once per run with save_many, the fill being slower than most timed
    operations."""

    def build(template: Path) -> None:
        buffer = _open(template, "sqlite", "process")
        try:
            _fill(buffer, backlog)
        finally:
            buffer.close()

    template = context.template(f"sqlite-backlog-{backlog}", build)
    for file in template.iterdir():
        shutil.copyfile(file, directory / file.name)
    return directory / "buffer.db"


def buffer_pop_backlog(context: Context, directory: Path, n: int, *, backlog: int) -> float:
    """Pop ``n`` messages from the front of a sqlite buffer holding ``backlog`` messages.

    The backlog is written once per run and copied for each repetition (filling a million messages takes
    longer than all the timed pops). When ``n`` exceeds it, the pops run in rounds of ``backlog``, refilled
    untimed in between, so every round starts with ``backlog`` messages waiting.
    """

    copy_backlog(context, directory, backlog)
    buffer = _open(directory, "sqlite", "process")
    try:
        pop = buffer.pop
        seconds = 0.0
        done = size = 0
        while done < n:
            size = min(backlog, n - done)

            def run(size: int = size) -> None:
                for _ in range(size):
                    pop()

            seconds += timed(run)
            done += size
            if done < n:
                _expect(len(buffer) == backlog - size, f"{size} messages popped")
                _fill(buffer, size)
        _expect(len(buffer) == backlog - size, f"{n} messages popped")
        return seconds
    finally:
        buffer.close()


def _plain(directory: Path, synchronous: str) -> sqlite3.Connection:
    connection = sqlite3.connect(directory / "plain.db", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={synchronous}")
    connection.execute(_PLAIN_TABLE)
    return connection


def _count(connection: sqlite3.Connection) -> int:
    return int(connection.execute("SELECT count(*) FROM messages").fetchone()[0])


def sqlite3_loop(context: Context, directory: Path, n: int, *, synchronous: str = "NORMAL",
                 payload: bytes = PAYLOAD) -> float:
    """The floor under save(): python's sqlite3, one BEGIN IMMEDIATE transaction per message."""
    connection = _plain(directory, synchronous)
    try:
        execute = connection.execute
        insert = "INSERT INTO messages (payload) VALUES (?)"

        def run() -> None:
            for _ in range(n):
                execute("BEGIN IMMEDIATE")
                execute(insert, (payload,))
                execute("COMMIT")

        seconds = timed(run)
        _expect(_count(connection) == n, f"{n} rows inserted")
        return seconds
    finally:
        connection.close()


def sqlite3_executemany(context: Context, directory: Path, n: int, *, synchronous: str = "NORMAL",
                        batch: int = 1_000) -> float:
    """The floor under save_many(): one executemany transaction per batch."""
    connection = _plain(directory, synchronous)
    try:
        execute, executemany = connection.execute, connection.executemany
        insert = "INSERT INTO messages (payload) VALUES (?)"
        batches = [[(PAYLOAD,)] * min(batch, n - start) for start in range(0, n, batch)]

        def run() -> None:
            for rows in batches:
                execute("BEGIN IMMEDIATE")
                executemany(insert, rows)
                execute("COMMIT")

        seconds = timed(run)
        _expect(_count(connection) == n, f"{n} rows inserted")
        return seconds
    finally:
        connection.close()
