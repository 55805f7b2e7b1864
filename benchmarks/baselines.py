"""Pinned baselines for the core-speed targets: what the same work costs without pbuffer, written once and kept.

The bar a target is judged against must not move when pbuffer's design does, so nothing here imports pbuffer:
the table, the pragmas and the statements are copied out, frozen at schema revision 0002 (the *revision-0002 row*).

- sqlite: ``(seq INTEGER PRIMARY KEY, id BLOB UNIQUE, subject TEXT, payload BLOB, headers TEXT, created_us
  INTEGER, checksum INTEGER)`` with pbuffer's connection pragmas as of revision 0002 (WAL, ``synchronous=NORMAL``
  for durability "process", ``FULL`` for "power"), one ``BEGIN IMMEDIATE`` ... ``COMMIT`` per message. Each row
  gets what a real one needs: a random 16-byte id (``uuid4().bytes``), the time in microseconds and a CRC32.
- memory: a ``deque`` of tuples, one ``uuid4()`` and one ``zlib.crc32`` per message.
- PostgreSQL (psycopg) and MariaDB (PyMySQL): the driver alone running the statements pbuffer's SQL backend runs
  (``backends/sql.py``: the message insert and the counters upsert, the pop, the batch insert), on tables of the
  same shape, in the same fresh database (one per repetition, as pbuffer's side gets).
"""

from __future__ import annotations

import importlib
import random
import sqlite3
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .harness import Context, timed
from .payload import current
from .workloads import SUBJECT, Store

__all__ = [
    "REVISION_0002_PRAGMAS",
    "REVISION_0002_TABLE",
    "deque_loop",
    "server_pop",
    "server_save",
    "server_save_many",
    "sqlite3_rev2_executemany",
    "sqlite3_rev2_insert",
    "sqlite3_rev2_pop",
]

REVISION_0002_TABLE = ("CREATE TABLE messages (seq INTEGER PRIMARY KEY, id BLOB UNIQUE, subject TEXT, payload BLOB, "
                       "headers TEXT, created_us INTEGER, checksum INTEGER)")
#: pbuffer's per-connection pragmas at revision 0002 (backends/sqlite_file.configure_connection), copied: the
#: baseline keeps them even if pbuffer's change. ``{synchronous}`` is NORMAL ("process") or FULL ("power").
REVISION_0002_PRAGMAS = ("auto_vacuum=INCREMENTAL", "journal_mode=WAL", "synchronous={synchronous}",
                         "busy_timeout=30000", "trusted_schema=OFF", "foreign_keys=OFF",
                         "journal_size_limit=16777216")
_REV2_INSERT = "INSERT INTO messages (id, subject, payload, headers, created_us, checksum) VALUES (?, ?, ?, ?, ?, ?)"
_REV2_POP = ("DELETE FROM messages WHERE seq = (SELECT seq FROM messages ORDER BY seq LIMIT 1) "
             "RETURNING id, subject, payload, headers, created_us, checksum")
#: Messages per executemany batch (save_many) and per untimed fill statement.
BATCH = 1_000


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"benchmark sanity check failed: {what}")


def _rev2(directory: Path, synchronous: str) -> sqlite3.Connection:
    connection = sqlite3.connect(directory / "rev2.db", isolation_level=None)
    for pragma in REVISION_0002_PRAGMAS:
        connection.execute(f"PRAGMA {pragma.format(synchronous=synchronous)}")
    connection.execute(REVISION_0002_TABLE)
    return connection


def _rows(count: int, payload: bytes) -> list[tuple[bytes, str, bytes, None, int, int]]:
    now_us = time.time_ns() // 1000
    crc = zlib.crc32(payload)
    return [(uuid.uuid4().bytes, SUBJECT, payload, None, now_us, crc) for _ in range(count)]


def _rev2_count(connection: sqlite3.Connection) -> int:
    return int(connection.execute("SELECT count(*) FROM messages").fetchone()[0])


def sqlite3_rev2_insert(context: Context, directory: Path, n: int, *, synchronous: str = "NORMAL") -> float:
    """The floor under save(): one revision-0002 row per transaction, its id, time and CRC made per message."""
    payload = current()
    connection = _rev2(directory, synchronous)
    try:
        execute, uuid4, time_ns, crc32 = connection.execute, uuid.uuid4, time.time_ns, zlib.crc32

        def run() -> None:
            for _ in range(n):
                execute("BEGIN IMMEDIATE")
                execute(_REV2_INSERT, (uuid4().bytes, SUBJECT, payload, None, time_ns() // 1000, crc32(payload)))
                execute("COMMIT")

        seconds = timed(run)
        _expect(_rev2_count(connection) == n, f"{n} rows inserted")
        return seconds
    finally:
        connection.close()


def sqlite3_rev2_executemany(context: Context, directory: Path, n: int, *, synchronous: str = "NORMAL",
                             batch: int = BATCH) -> float:
    """The floor under save_many(): ``executemany`` of ``batch`` revision-0002 rows, a transaction each, the rows'
    ids, time and CRCs made inside the timed section (save_many makes its own)."""
    payload = current()
    connection = _rev2(directory, synchronous)
    try:
        execute, executemany, uuid4, time_ns, crc32 = (connection.execute, connection.executemany, uuid.uuid4,
                                                       time.time_ns, zlib.crc32)
        sizes = [min(batch, n - start) for start in range(0, n, batch)]

        def run() -> None:
            for size in sizes:
                now_us = time_ns() // 1000
                rows = [(uuid4().bytes, SUBJECT, payload, None, now_us, crc32(payload)) for _ in range(size)]
                execute("BEGIN IMMEDIATE")
                executemany(_REV2_INSERT, rows)
                execute("COMMIT")

        seconds = timed(run)
        _expect(_rev2_count(connection) == n, f"{n} rows inserted")
        return seconds
    finally:
        connection.close()


def sqlite3_rev2_pop(context: Context, directory: Path, n: int, *, synchronous: str = "NORMAL") -> float:
    """The floor under pop(): ``DELETE ... RETURNING`` of the oldest revision-0002 row, a transaction each, from a
    table holding exactly the ``n`` rows (inserted untimed)."""
    payload = current()
    connection = _rev2(directory, synchronous)
    try:
        for start in range(0, n, BATCH):
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(_REV2_INSERT, _rows(min(BATCH, n - start), payload))
            connection.execute("COMMIT")
        execute = connection.execute
        taken: list[Any] = []

        def run() -> None:
            for _ in range(n):
                execute("BEGIN IMMEDIATE")
                row = execute(_REV2_POP).fetchone()
                execute("COMMIT")
                taken.append(row[0])

        seconds = timed(run)
        _expect(len(taken) == n and _rev2_count(connection) == 0, f"{n} rows popped")
        return seconds
    finally:
        connection.close()


def deque_loop(context: Context, directory: Path, n: int) -> float:
    """The floor under memory save(): a uuid4(), a CRC32 and a tuple per message, appended to a deque."""
    payload = current()
    queue: deque[tuple[uuid.UUID, str, bytes, int]] = deque()
    append, uuid4, crc32 = queue.append, uuid.uuid4, zlib.crc32

    def run() -> None:
        for _ in range(n):
            append((uuid4(), SUBJECT, payload, crc32(payload)))

    seconds = timed(run)
    _expect(len(queue) == n, f"{n} tuples appended")
    return seconds


# ------------------------------------------------------------------------------------------ database servers

_COUNTERS = ("pending", "pending_bytes", "dead", "dead_bytes", "dropped", "expired")
_SHARDS = 16
_COLUMNS = "id, subject, payload, headers, created_us, checksum"
_DDL = {
    "postgresql": (
        "CREATE TABLE bench_messages (seq BIGSERIAL PRIMARY KEY, id BYTEA NOT NULL UNIQUE, subject VARCHAR(512) "
        "NOT NULL, payload BYTEA NOT NULL, headers TEXT, created_us BIGINT NOT NULL, checksum BIGINT NOT NULL, "
        "claim_owner BYTEA, claim_until_us BIGINT)",
        "CREATE TABLE bench_counters (subject VARCHAR(512) NOT NULL, shard INTEGER NOT NULL, "
        + ", ".join(f"{c} BIGINT NOT NULL" for c in _COUNTERS) + ", PRIMARY KEY (subject, shard))",
    ),
    "mariadb": (
        "CREATE TABLE bench_messages (seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, id BINARY(16) NOT NULL UNIQUE, "
        "subject VARCHAR(512) COLLATE utf8mb4_bin NOT NULL, payload LONGBLOB NOT NULL, headers MEDIUMTEXT, "
        "created_us BIGINT NOT NULL, checksum BIGINT NOT NULL, claim_owner BINARY(16), claim_until_us BIGINT) "
        "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        "CREATE TABLE bench_counters (subject VARCHAR(512) COLLATE utf8mb4_bin NOT NULL, shard INTEGER NOT NULL, "
        + ", ".join(f"{c} BIGINT NOT NULL" for c in _COUNTERS) + ", PRIMARY KEY (subject, shard)) "
        "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
    ),
}
_INSERT = f"INSERT INTO bench_messages ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)"
_UPSERT = {
    "postgresql": "ON CONFLICT (subject, shard) DO UPDATE SET "
                  + ", ".join(f"{c} = bench_counters.{c} + excluded.{c}" for c in _COUNTERS),
    "mariadb": "ON DUPLICATE KEY UPDATE " + ", ".join(f"{c} = {c} + VALUES({c})" for c in _COUNTERS),
}
_FREE = "(claim_until_us IS NULL OR claim_until_us < %s)"
_OLDEST = f"SELECT seq FROM bench_messages WHERE {_FREE} ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED"
_PG_POP = f"DELETE FROM bench_messages WHERE seq = ({_OLDEST}) RETURNING {_COLUMNS}"
_MARIADB_LOCK = f"SELECT seq, {_COLUMNS} FROM bench_messages WHERE {_FREE} ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED"


def _bump_sql(backend: str) -> str:
    columns = ", ".join(_COUNTERS)
    return (f"INSERT INTO bench_counters (subject, shard, {columns}) VALUES (%s, %s, "
            + ", ".join(["%s"] * len(_COUNTERS)) + f") {_UPSERT[backend]}")


def _connect(backend: str, url: str) -> Any:
    """A plain driver connection to ``url``'s database, at the isolation level pbuffer uses (READ COMMITTED)."""
    parts = sa.make_url(url)
    if backend == "postgresql":
        import psycopg

        connection: Any = psycopg.connect(host=parts.host, port=parts.port, user=parts.username,
                                          password=parts.password, dbname=parts.database)
        connection.isolation_level = psycopg.IsolationLevel.READ_COMMITTED
        return connection
    # Imported by name: PyMySQL ships no type stubs, and the baseline needs only connect().
    pymysql: Any = importlib.import_module("pymysql")
    connection = pymysql.connect(host=parts.host, port=parts.port or 3306, user=parts.username,
                                 password=parts.password or "", database=parts.database, charset="utf8mb4",
                                 autocommit=False)
    with connection.cursor() as cursor:
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
    return connection


@contextmanager
def _server(store: Store, directory: Path) -> Iterator[tuple[Any, Any]]:
    """(connection, cursor) on a fresh database of ``store``'s server holding empty baseline tables."""
    with store.url(directory) as url:
        connection = _connect(store.backend, url)
        try:
            cursor = connection.cursor()
            for ddl in _DDL[store.backend]:
                cursor.execute(ddl)
            connection.commit()
            cursor.execute("SELECT count(*) FROM bench_messages")  # untimed: the connection is warm
            cursor.fetchall()
            yield connection, cursor
        finally:
            connection.close()


def _server_count(cursor: Any) -> int:
    cursor.execute("SELECT count(*) FROM bench_messages")
    return int(cursor.fetchone()[0])


def _fill_server(connection: Any, cursor: Any, backend: str, n: int, payload: bytes) -> None:
    for start in range(0, n, BATCH):
        rows = _rows(min(BATCH, n - start), payload)
        cursor.executemany(_INSERT, rows)
        cursor.execute(_bump_sql(backend), (SUBJECT, 0, len(rows), len(rows) * len(payload), 0, 0, 0, 0))
        connection.commit()


def server_save(context: Context, directory: Path, n: int, *, store: Store) -> float:
    """save()'s statements on the driver alone: the row insert and the counters upsert, a commit per message."""
    payload = current()
    with _server(store, directory) as (connection, cursor):
        execute, commit, bump = cursor.execute, connection.commit, _bump_sql(store.backend)
        uuid4, time_ns, crc32, shard = uuid.uuid4, time.time_ns, zlib.crc32, random.randrange
        size = len(payload)

        def run() -> None:
            for _ in range(n):
                execute(_INSERT, (uuid4().bytes, SUBJECT, payload, None, time_ns() // 1000, crc32(payload)))
                execute(bump, (SUBJECT, shard(_SHARDS), 1, size, 0, 0, 0, 0))
                commit()

        seconds = timed(run)
        _expect(_server_count(cursor) == n, f"{n} rows inserted")
        return seconds


def server_save_many(context: Context, directory: Path, n: int, *, store: Store, batch: int = BATCH) -> float:
    """save_many()'s statements on the driver alone: executemany of ``batch`` rows and one counters upsert per
    transaction (the rows' ids, times and CRCs made inside the timed section, as save_many makes its own)."""
    payload = current()
    with _server(store, directory) as (connection, cursor):
        executemany, execute, commit = cursor.executemany, cursor.execute, connection.commit
        bump, sizes = _bump_sql(store.backend), [min(batch, n - start) for start in range(0, n, batch)]

        def run() -> None:
            for size in sizes:
                executemany(_INSERT, _rows(size, payload))
                execute(bump, (SUBJECT, random.randrange(_SHARDS), size, size * len(payload), 0, 0, 0, 0))
                commit()

        seconds = timed(run)
        _expect(_server_count(cursor) == n, f"{n} rows inserted")
        return seconds


def server_pop(context: Context, directory: Path, n: int, *, store: Store) -> float:
    """pop()'s statements on the driver alone, from a table holding exactly the ``n`` rows (inserted untimed):
    PostgreSQL ``DELETE ... RETURNING`` of the oldest free row (``FOR UPDATE SKIP LOCKED``); MariaDB, which cannot
    return from a DELETE, locks that row with a SELECT and deletes it by seq; then the counters upsert; a commit
    per message."""
    payload = current()
    backend = store.backend
    with _server(store, directory) as (connection, cursor):
        _fill_server(connection, cursor, backend, n, payload)
        execute, fetchone, commit, bump = cursor.execute, cursor.fetchone, connection.commit, _bump_sql(backend)
        shard = random.randrange
        taken: list[Any] = []
        pop: Callable[[], Any]
        if backend == "postgresql":
            def pop() -> Any:
                execute(_PG_POP, (time.time_ns() // 1000,))
                return fetchone()
        else:
            def pop() -> Any:
                execute(_MARIADB_LOCK, (time.time_ns() // 1000,))
                found = fetchone()
                execute("DELETE FROM bench_messages WHERE seq = %s", (found[0],))
                return found[1:]

        def run() -> None:
            for _ in range(n):
                row = pop()
                execute(bump, (row[1], shard(_SHARDS), -1, -len(row[2]), 0, 0, 0, 0))
                commit()
                taken.append(row[0])

        seconds = timed(run)
        _expect(len(taken) == n and _server_count(cursor) == 0, f"{n} rows popped")
        return seconds
